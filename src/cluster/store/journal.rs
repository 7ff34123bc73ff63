//! The change journal: `<root>/.caravan/journal/<generation>`, what each commit changed.
//!
//! A reader on any node that finds the generation hint moved reads the entries between
//! its state and the hint and applies them, without the cluster lock and without opening
//! sled; only when an entry is missing or does not check does it reload under the lock.
//!
//! What makes an entry safe to apply (docs/semantics.md, "Reads"):
//! - Under the lock, a commit writes its entry under its generation only **after** sled
//!   has the commit durably, and the hint moves after that. So a number a reader finds in
//!   the hint is committed, and the entry under that number, if there is one, is the
//!   commit's own: a commit that died before sled wrote no entry, and one whose entry
//!   could not be written deleted whatever was under the number. A write cut short by a
//!   crash fails the entry's hash.
//! - Each entry names the store it belongs to (a random id kept in sled): entries of a
//!   metadata store deleted and started over by hand never pass for the new one's.
//! - Everything read is hostile input: opened below the root without following links,
//!   regular files only, bounded in size, checked against the hash in its first line,
//!   and every record decoded and checked as sled's are ([`crate::core::volume::decode_stored`]).
//!
//! Entries need not be durable: one lost to a crash of the file server is missing or
//! fails its hash, and the reader reloads. The newest [`KEEP`] entries are kept.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};

use crate::core::error::Result;
use crate::core::volume::VolumeRecord;
use crate::export::layout::SharedLayout;

/// The folder, relative to the root.
pub(super) const DIR: &str = ".caravan/journal";
/// An entry is at most this big (a batch of 512 mutations of large records is a few
/// MiB); a commit whose entry would be bigger writes none, and readers reload.
pub(super) const MAX_ENTRY: u64 = 32 << 20;
/// Entries kept behind the newest; a reader further behind reloads.
pub(super) const KEEP: u64 = 1024;
// A reader MAX_CATCH_UP generations behind or more reloads instead (core::freshness):
// past that, reading the entries one by one costs more than one open of sled.
const MAGIC: &str = "caravan-journal 1";

/// What one entry changes, in commit order: a name and its new record (or why the record
/// cannot be read by this version), or `None` for a removal.
pub type Changes = Vec<(String, Option<std::result::Result<VolumeRecord, String>>)>;

#[derive(Serialize)]
struct BodyOut<'a> {
    store: &'a str,
    generation: u64,
    changes: Vec<ChangeOut<'a>>,
}

#[derive(Serialize)]
struct ChangeOut<'a> {
    name: &'a str,
    record: Option<&'a VolumeRecord>,
}

#[derive(Deserialize)]
struct BodyIn {
    store: String,
    generation: u64,
    changes: Vec<ChangeIn>,
}

#[derive(Deserialize)]
struct ChangeIn {
    name: String,
    record: Option<Box<serde_json::value::RawValue>>,
}

/// The bytes of the entry for commit `generation` of store `store`, which wrote `overlay`.
pub fn encode(
    store: &str,
    generation: u64,
    overlay: &BTreeMap<String, Option<VolumeRecord>>,
) -> Vec<u8> {
    let body = BodyOut {
        store,
        generation,
        changes: overlay
            .iter()
            .map(|(name, record)| ChangeOut {
                name,
                record: record.as_ref(),
            })
            .collect(),
    };
    let body = serde_json::to_vec(&body).expect("a record always encodes");
    let mut out = format!("{MAGIC} {}\n", blake3::hash(&body).to_hex()).into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Decodes an entry read from the export, which must be the one of commit `generation`
/// of store `store`. Pure, so that it can be fuzzed; the error says what is wrong.
pub fn decode(bytes: &[u8], generation: u64, store: &str) -> std::result::Result<Changes, String> {
    if bytes.len() as u64 > MAX_ENTRY {
        return Err(format!("it is larger than {MAX_ENTRY} bytes"));
    }
    let newline = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or("it has no header line")?;
    let (header, body) = (&bytes[..newline], &bytes[newline + 1..]);
    let hash = std::str::from_utf8(header)
        .ok()
        .and_then(|h| h.strip_prefix(MAGIC))
        .and_then(|h| h.strip_prefix(' '))
        .ok_or("its header is not a caravan journal header of format 1")?;
    if hash != blake3::hash(body).to_hex().as_str() {
        return Err("its content does not match its hash (torn or damaged)".into());
    }
    let body: BodyIn =
        serde_json::from_slice(body).map_err(|e| format!("it does not decode: {e}"))?;
    if body.store != store {
        return Err("it belongs to another metadata store".into());
    }
    if body.generation != generation {
        return Err(format!(
            "it is the entry of generation {}, not {generation}",
            body.generation
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut changes = Vec::with_capacity(body.changes.len());
    for change in body.changes {
        if !seen.insert(change.name.clone()) {
            return Err(format!(
                "it changes {} twice",
                crate::core::error::shown(&change.name)
            ));
        }
        let record = change.record.map(|raw| {
            crate::core::volume::decode_stored(change.name.as_bytes(), raw.get().as_bytes())
        });
        changes.push((change.name, record));
    }
    Ok(changes)
}

fn entry_name(generation: u64) -> String {
    format!("{generation:020}")
}

/// Opens the journal folder below the root, without following a link on the way.
fn open_dir(layout: &SharedLayout) -> Result<File> {
    crate::export::beneath::open_dir(layout.root_dir()?, Path::new(DIR))
        .map_err(|e| crate::export::beneath::refused_or_io(&layout.root.join(DIR), e))
}

/// The entries of generations `from..=to` of store `store`, in order. An error (a missing
/// entry, one that does not check, an I/O error) says why; the caller reloads instead.
pub(super) fn read_entries(
    layout: &SharedLayout,
    from: u64,
    to: u64,
    store: &str,
) -> std::result::Result<Vec<Changes>, String> {
    let dir = open_dir(layout).map_err(|e| e.to_string())?;
    // All the entries of one catch-up together: planted entries with valid hashes must
    // not make a reader hold gigabytes.
    let mut budget = MAX_ENTRY;
    (from..=to)
        .map(|generation| {
            let name = entry_name(generation);
            let shown = || format!("{DIR}/{name}");
            // Never a device or a FIFO planted here (see beneath::open_regular).
            let (file, st) = crate::export::beneath::open_regular(&dir, Path::new(&name), 0)
                .map_err(|e| match e.raw_os_error() {
                    Some(nix::libc::ELOOP) => format!("{} is not a regular file", shown()),
                    _ => format!("{}: {e}", shown()),
                })?;
            let len = crate::export::beneath::size_of(&st);
            if len > budget {
                return Err(format!(
                    "{} would take the catch-up past {MAX_ENTRY} bytes",
                    shown()
                ));
            }
            let mut bytes = Vec::new();
            file.take(budget + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| format!("{}: {e}", shown()))?;
            budget = budget
                .checked_sub(bytes.len() as u64)
                .ok_or_else(|| format!("{} grew past the catch-up's {MAX_ENTRY} bytes", shown()))?;
            decode(&bytes, generation, store).map_err(|why| format!("{}: {why}", shown()))
        })
        .collect()
}

/// The journal as the lock holder writes it, for one hold of the cluster lock. Nothing it
/// does can fail a commit: an entry that could not be written is one readers do without.
pub(super) struct JournalWriter {
    dir: File,
}

impl JournalWriter {
    pub(super) fn open(layout: &SharedLayout) -> Result<JournalWriter> {
        let dir = open_dir(layout)?;
        Ok(JournalWriter { dir })
    }

    /// Writes `entry`, commit `generation`'s, under its number: once sled has the commit
    /// durably, before the hint moves. When it cannot, whatever is under the number is
    /// deleted (planted by another machine, left by a metadata store started over by
    /// hand, or this write's own torn start), so that readers find nothing and reload.
    pub(super) fn write(&self, generation: u64, entry: &[u8]) {
        if entry.len() as u64 > MAX_ENTRY {
            tracing::debug!(
                generation,
                "no journal entry: {} bytes is too large",
                entry.len()
            );
            self.forget(generation);
            return;
        }
        if let Err(e) = self.create(&entry_name(generation), entry) {
            tracing::warn!(
                generation,
                "no journal entry for this commit (readers elsewhere reload instead): {e}"
            );
            self.forget(generation);
        }
    }

    fn create(&self, name: &str, entry: &[u8]) -> std::io::Result<()> {
        // A new file every time (`O_EXCL`): whatever is at the name (a FIFO, a device, a
        // link, a forged entry) is never written through, only unlinked.
        let create = || {
            crate::export::beneath::open(
                &self.dir,
                Path::new(name),
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW,
                Mode::from_bits_truncate(0o600),
            )
        };
        let mut file = match create() {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                self.unlink(name)?;
                create()?
            }
            r => r?,
        };
        // No fsync: an entry is only ever a shortcut (see the module's comment); closing
        // it is what makes it visible to other NFS clients.
        file.write_all(entry)
    }

    /// Deletes whatever is under `generation`'s number (a commit that wrote no entry of
    /// its own, or a number no commit will have).
    pub(super) fn forget(&self, generation: u64) {
        match self.unlink(&entry_name(generation)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // Not a file this could unlink (a folder?): readers refuse what is not a
            // regular file, and reload.
            Err(e) => tracing::warn!(generation, "clearing the journal's entry: {e}"),
        }
    }

    /// Deletes the entry of `generation` (one [`KEEP`] behind a commit of this node).
    pub(super) fn prune(&self, generation: u64) {
        match self.unlink(&entry_name(generation)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::debug!(generation, "pruning the journal: {e}"),
        }
    }

    fn unlink(&self, name: &str) -> std::io::Result<()> {
        nix::unistd::unlinkat(&self.dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir)
            .map_err(std::io::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::volume::VolumeOptions;

    fn record(name: &str) -> VolumeRecord {
        VolumeRecord::new(name, "n1", VolumeOptions::default(), 0)
    }

    #[test]
    fn an_entry_round_trips_and_every_damage_is_refused() {
        let overlay = BTreeMap::from([
            ("web".to_string(), Some(record("web"))),
            ("gone".to_string(), None),
        ]);
        let bytes = encode("store-a", 7, &overlay);
        let changes = decode(&bytes, 7, "store-a").unwrap();
        assert_eq!(changes.len(), 2);
        assert!(changes.iter().any(|(n, r)| n == "gone" && r.is_none()));
        assert!(changes
            .iter()
            .any(|(n, r)| n == "web" && r.as_ref().unwrap().as_ref().unwrap().name == "web"));

        let e = decode(&bytes, 8, "store-a").unwrap_err();
        assert!(e.contains("generation 7, not 8"), "{e}");
        let e = decode(&bytes, 7, "store-b").unwrap_err();
        assert!(e.contains("another metadata store"), "{e}");
        for cut in [0, 10, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode(&bytes[..cut], 7, "store-a").is_err(), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 1;
        let e = decode(&flipped, 7, "store-a").unwrap_err();
        assert!(e.contains("does not match its hash"), "{e}");
    }

    #[test]
    fn a_record_that_does_not_check_is_kept_as_unreadable_and_a_name_twice_is_refused() {
        let body = br#"{"store":"s","generation":1,"changes":[{"name":"../etc","record":{"name":"../etc"}}]}"#;
        let entry = |body: &[u8]| {
            let mut out = format!("{MAGIC} {}\n", blake3::hash(body).to_hex()).into_bytes();
            out.extend_from_slice(body);
            out
        };
        let changes = decode(&entry(body), 1, "s").unwrap();
        let why = changes[0].1.as_ref().unwrap().as_ref().unwrap_err();
        assert!(why.contains("not a valid volume name"), "{why}");
        let twice = br#"{"store":"s","generation":1,"changes":[{"name":"a","record":null},{"name":"a","record":null}]}"#;
        let e = decode(&entry(twice), 1, "s").unwrap_err();
        assert!(e.contains("twice"), "{e}");
    }
}
