//! The volume model: names, options and the record kept in the cluster metadata.
//!
//! Everything here is pure: validation happens before anything touches the disk, so a bad
//! name or option is refused without side effects.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::core::error::{shown, Error, Result};
use crate::core::names::{parse_snapshot_ref, validate_name, validate_snapshot_name};

/// What happens to a volume's data when the volume is removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDelete {
    /// Delete the data (without following symlinks out of the volume).
    #[default]
    Delete,
    /// Keep the data where it is; creating a volume of the same name adopts it again.
    Retain,
    /// Rename the data aside to `<root>/archive/<name>.<unix time>`; restore it by hand.
    Archive,
}

impl OnDelete {
    pub const ACCEPTED: &'static str = "delete, retain, archive";

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "delete" => Ok(OnDelete::Delete),
            "retain" => Ok(OnDelete::Retain),
            "archive" => Ok(OnDelete::Archive),
            _ => Err(Error::invalid(format!(
                "invalid value {} for option on_delete: accepted values are {}",
                shown(s),
                Self::ACCEPTED
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OnDelete::Delete => "delete",
            OnDelete::Retain => "retain",
            OnDelete::Archive => "archive",
        }
    }
}

/// The options a volume is created with (`docker volume create -o k=v`, or CLI flags).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeOptions {
    /// Size in bytes. Recorded and reported; not yet enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// Permission bits of the volume root, for example `0o755`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    #[serde(default)]
    pub on_delete: OnDelete,
    #[serde(default, skip_serializing_if = "Access::is_shared")]
    pub access: Access,
    /// Made as a copy of this snapshot (`VOLUME@SNAPSHOT`): a restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_snapshot: Option<String>,
    /// Made as a copy of this volume: a clone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_volume: Option<String>,
    /// Restored from this backup (its URL, `DESTINATION?backup=NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_backup: Option<String>,
    /// A copy (restore or clone) carries over set-id bits, privileged extended attributes
    /// and the source's top-folder owner and mode: the user trusts the source (see
    /// [`crate::export::treecopy::Privileges`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_privileges: bool,
    /// Options this version does not know, kept as they were stored (a newer node wrote
    /// them) so that rewriting the record loses nothing. See [`VolumeRecord::format`].
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

/// Who may mount a volume at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Any number of nodes at once.
    #[default]
    Shared,
    /// One node at a time: the holder. Another node gets it only when the holder is dead
    /// (or by an operator's takeover).
    Exclusive,
}

impl Access {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "shared" => Ok(Access::Shared),
            "exclusive" => Ok(Access::Exclusive),
            _ => Err(Error::invalid(format!(
                "invalid value {} for option access: accepted values are shared, exclusive",
                shown(s)
            ))),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Shared => "shared",
            Access::Exclusive => "exclusive",
        }
    }
    fn is_shared(&self) -> bool {
        *self == Access::Shared
    }
}

/// The node allowed to mount an exclusive volume, and the fencing token of its grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub node: String,
    /// Bumped at every grant and takeover; a node whose grant is older has been fenced.
    pub generation: u64,
    /// The incarnation (boot id) of `node` the grant was made to; `None` in records from
    /// versions that did not record it. Liveness is judged on this incarnation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

/// One change of holder that did not go through a release: the old holder was dead or
/// an operator forced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Takeover {
    pub from: String,
    pub to: String,
    pub generation: u64,
    /// Unix seconds by the new holder's clock (for display only).
    pub at: u64,
    pub forced: bool,
}

/// How many takeovers a record keeps.
pub const TAKEOVER_HISTORY: usize = 32;

/// Options as a request carries them: strings by key. A key given twice is refused
/// (serde's maps keep the last, which would let a second `size` silently win).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct OptionMap(pub BTreeMap<String, String>);

impl<'de> Deserialize<'de> for OptionMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = OptionMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of option names to string values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<OptionMap, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    if out.contains_key(&k) {
                        return Err(serde::de::Error::custom(format_args!(
                            "option {} is given twice",
                            shown(&k)
                        )));
                    }
                    out.insert(k, v);
                }
                Ok(OptionMap(out))
            }
        }
        d.deserialize_map(Visitor)
    }
}

impl OptionMap {
    pub fn options(&self) -> Result<VolumeOptions> {
        VolumeOptions::from_map(self.0.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

impl VolumeOptions {
    pub const ACCEPTED_KEYS: &'static str =
        "size, uid, gid, mode, on_delete, access, from_snapshot, from_volume, from_backup (or backup), keep_privileges";

    /// Parses Docker's `Opts` map. Unknown keys and bad values are refused with a message
    /// that names them and lists what is accepted.
    pub fn from_map<'a>(opts: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self> {
        let mut o = VolumeOptions::default();
        for (key, value) in opts {
            match key {
                "size" => o.size = Some(parse_size(value)?),
                "uid" => o.uid = Some(parse_id("uid", value)?),
                "gid" => o.gid = Some(parse_id("gid", value)?),
                "mode" => o.mode = Some(parse_mode(value)?),
                "on_delete" => o.on_delete = OnDelete::parse(value)?,
                "access" => o.access = Access::parse(value)?,
                "from_snapshot" => {
                    parse_snapshot_ref(value)?;
                    o.from_snapshot = Some(value.to_string());
                }
                "from_volume" => {
                    validate_name(value)?;
                    o.from_volume = Some(value.to_string());
                }
                // `backup` is Convoy's name for it.
                "from_backup" | "backup" => {
                    if o.from_backup.is_some() {
                        return Err(Error::invalid("give from_backup (or backup) once"));
                    }
                    crate::core::backup_url::BackupUrl::parse(value)
                        .map_err(|e| Error::invalid(format!("option {key}: {e}")))?;
                    o.from_backup = Some(value.to_string());
                }
                "keep_privileges" => {
                    o.keep_privileges = match value {
                        "true" | "yes" => true,
                        "false" | "no" => false,
                        _ => {
                            return Err(Error::invalid(format!(
                                "invalid value {} for option keep_privileges: accepted values are true, false (yes, no)",
                                shown(value)
                            )))
                        }
                    }
                }
                _ => {
                    return Err(Error::invalid(format!(
                        "unknown option {}: accepted options are {}",
                        shown(key),
                        Self::ACCEPTED_KEYS
                    )))
                }
            }
        }
        let sources = [
            o.from_snapshot.is_some(),
            o.from_volume.is_some(),
            o.from_backup.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() > 1 {
            return Err(Error::invalid(
                "give one of from_snapshot, from_volume and from_backup, not several",
            ));
        }
        if o.keep_privileges && !sources.contains(&true) {
            return Err(Error::invalid(
                "keep_privileges is for copies: give it with from_backup, from_volume or from_snapshot",
            ));
        }
        Ok(o)
    }

    /// What the volume is made as a copy of, if anything.
    pub fn source(&self) -> Option<Source> {
        if let Some(s) = &self.from_snapshot {
            let (volume, snapshot) = parse_snapshot_ref(s).ok()?;
            return Some(Source::Snapshot { volume, snapshot });
        }
        if let Some(b) = &self.from_backup {
            return Some(Source::Backup(b.clone()));
        }
        self.from_volume.clone().map(Source::Volume)
    }

    /// The options as `key=value` strings, the way a user would have typed them.
    pub fn to_map(&self) -> BTreeMap<&'static str, String> {
        let mut m = BTreeMap::new();
        if let Some(s) = self.size {
            m.insert("size", format_size(s));
        }
        if let Some(u) = self.uid {
            m.insert("uid", u.to_string());
        }
        if let Some(g) = self.gid {
            m.insert("gid", g.to_string());
        }
        if let Some(mode) = self.mode {
            m.insert("mode", format!("{mode:04o}"));
        }
        m.insert("on_delete", self.on_delete.as_str().to_string());
        if self.access != Access::Shared {
            m.insert("access", self.access.as_str().to_string());
        }
        if let Some(f) = &self.from_snapshot {
            m.insert("from_snapshot", f.clone());
        }
        if let Some(f) = &self.from_volume {
            m.insert("from_volume", f.clone());
        }
        if let Some(f) = &self.from_backup {
            m.insert("from_backup", f.clone());
        }
        if self.keep_privileges {
            m.insert("keep_privileges", "true".into());
        }
        m
    }
}

/// What a new volume is a copy of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Snapshot {
        volume: String,
        snapshot: String,
    },
    Volume(String),
    /// A backup's URL.
    Backup(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Snapshot { volume, snapshot } => write!(f, "snapshot {volume}@{snapshot}"),
            Source::Volume(v) => write!(f, "volume {v}"),
            Source::Backup(u) => write!(f, "backup {u}"),
        }
    }
}

impl fmt::Display for VolumeOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .to_map()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        f.write_str(&parts.join(" "))
    }
}

/// Parses a size such as `512M`, `10G`, `1T`, `4096` or `1GiB` (binary units, case-insensitive).
///
/// Every option value is taken exactly as given, by one rule: digits are ASCII digits
/// only (no sign, no spaces), words are matched exactly. Nothing is trimmed.
pub fn parse_size(s: &str) -> Result<u64> {
    let bad = || {
        Error::invalid(format!(
            "invalid size {}: use a whole number of bytes with an optional unit K, M, G, T or P (powers of 1024), for example 512M or 10G",
            shown(s)
        ))
    };
    let t = s;
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        _ => return Err(bad()),
    };
    let bytes = n.checked_mul(1u64 << shift).ok_or_else(bad)?;
    if bytes == 0 {
        return Err(Error::invalid(format!(
            "invalid size {}: a size must be larger than 0",
            shown(s)
        )));
    }
    Ok(bytes)
}

/// Formats bytes with the largest binary unit that divides them exactly (`1G`, `1536M`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u32, &str); 5] = [(50, "P"), (40, "T"), (30, "G"), (20, "M"), (10, "K")];
    for (shift, unit) in UNITS {
        let base = 1u64 << shift;
        if bytes >= base && bytes % base == 0 {
            return format!("{}{unit}", bytes / base);
        }
    }
    bytes.to_string()
}

/// Formats bytes for people, rounded to one decimal (`1.5 GiB`).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

fn all_digits(s: &str, radix: u32) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_digit(radix))
}

fn parse_id(key: &str, s: &str) -> Result<u32> {
    match s.parse::<u32>() {
        Ok(v) if v != u32::MAX && all_digits(s, 10) => Ok(v),
        _ => Err(Error::invalid(format!(
            "invalid value {} for option {key}: use a numeric id from 0 to 4294967294",
            shown(s)
        ))),
    }
}

/// Permission bits only: setuid, setgid and sticky on a volume's root would apply to a
/// folder every container and host shares, so they are refused.
fn parse_mode(s: &str) -> Result<u32> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(v) if v <= 0o777 && all_digits(digits, 8) => Ok(v),
        _ => Err(Error::invalid(format!(
            "invalid value {} for option mode: use octal permission bits from 0 to 777, for example 755 or 0770 (setuid, setgid and sticky bits are not accepted)",
            shown(s)
        ))),
    }
}

/// A volume as the cluster knows it. Stored in sled (JSON) and, without the mount table,
/// beside the data as `volume.json` so that the index can be rebuilt from the export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub name: String,
    /// Node that created the volume.
    pub created_by: String,
    /// Creation time, seconds since the Unix epoch (by the creating node's clock; display only).
    pub created_at: u64,
    pub options: VolumeOptions,
    /// Mount counts per node and per Docker mount ID.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mounts: BTreeMap<String, BTreeMap<String, u32>>,
    /// For exclusive volumes: the current holder, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<Holder>,
    /// The fencing token: bumped at every grant and takeover, never reset.
    #[serde(default)]
    pub generation: u64,
    /// The latest takeovers, oldest first (at most [`TAKEOVER_HISTORY`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub takeovers: Vec<Takeover>,
    /// For each node in `mounts`: the boot id of the incarnation that last changed that
    /// node's mounts. A node's mounts are stale only when *that* incarnation is dead.
    /// Missing for mounts recorded by versions that did not record it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub incarnations: BTreeMap<String, String>,
    /// The volume's snapshots by name, complete or being made or deleted (see
    /// [`SnapshotRecord`]). A record with snapshots is of format [`SNAPSHOT_FORMAT`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub snapshots: BTreeMap<String, SnapshotRecord>,
    /// The record format that wrote this record ([`RECORD_FORMAT`]; 0 before formats were
    /// numbered). A node refuses to change a record of a newer format than its own.
    #[serde(default)]
    pub format: u32,
    /// Fields this version does not know, kept as stored (see `format`).
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

/// Decodes a record from the store, where another machine may have written anything:
/// the key must be a valid volume name (it becomes a path) and the record must name it.
/// Counts and times are checked where they are used (no wrap, no panic). Pure, so that
/// it can be fuzzed; the error says why the record is skipped.
pub fn decode_stored(key: &[u8], value: &[u8]) -> std::result::Result<VolumeRecord, String> {
    let name = std::str::from_utf8(key).map_err(|_| "its key is not UTF-8".to_string())?;
    if validate_name(name).is_err() {
        return Err("its key is not a valid volume name".into());
    }
    let rec: VolumeRecord = serde_json::from_slice(value).map_err(|e| e.to_string())?;
    if rec.name != name {
        return Err(format!("it names volume {}", shown(&rec.name)));
    }
    // A snapshot's name becomes a path component.
    if let Some(bad) = rec
        .snapshots
        .keys()
        .find(|s| validate_snapshot_name(s).is_err())
    {
        return Err(format!(
            "it has a snapshot with an invalid name {}",
            shown(bad)
        ));
    }
    Ok(rec)
}

/// The newest record format this version reads and writes. 1: mounts and holds record the
/// boot id of the incarnation that made them (`incarnations`, `holder.boot_id`). 2: the
/// record has snapshots, which a version of format 1 would not keep when it removes the
/// volume; so only records with snapshots are written as 2, and an older node refuses to
/// change those (and only those) until it is upgraded.
pub const RECORD_FORMAT: u32 = SNAPSHOT_FORMAT;
/// What a record without snapshots is written as: every node since format 1 can change it.
pub const BASE_FORMAT: u32 = 1;
/// A record with snapshots.
pub const SNAPSHOT_FORMAT: u32 = 2;

/// A snapshot: a copy of the volume's data at one moment, kept on the export beside the
/// volume (`volumes/<name>/snapshots/<snapshot>/`), so every host sees, restores and
/// deletes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// When it was begun, seconds since the epoch by the making node's clock (display).
    pub created_at: u64,
    /// The node and incarnation making it: a snapshot left `making` by an incarnation that
    /// is gone was interrupted, and is cleaned up.
    pub node: String,
    pub boot_id: String,
    pub state: SnapshotState,
    /// Nodes that had the volume mounted when the copy began: the copy is then only as
    /// consistent as a crash would leave the data (docs/semantics.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounted_on: Vec<String>,
    /// What the copy did, once complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<crate::core::copy_report::CopyReport>,
    /// Incarnations restoring from it now (node, boot id): it is not deleted while one of
    /// them is alive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readers: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotState {
    /// Being copied: never listed as a snapshot, never restored from.
    Making,
    Complete,
    /// Its files are being deleted.
    Deleting,
}

impl SnapshotState {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotState::Making => "making",
            SnapshotState::Complete => "complete",
            SnapshotState::Deleting => "deleting",
        }
    }
}

/// Seconds since the epoch as RFC 3339. Stored by another node: a time past what RFC 3339
/// can show is not trusted, and shown as the epoch.
pub fn rfc3339(secs: u64) -> String {
    const YEAR_10000: u64 = 253_402_300_800;
    match UNIX_EPOCH.checked_add(Duration::from_secs(secs)) {
        Some(t) if secs < YEAR_10000 => humantime::format_rfc3339_seconds(t).to_string(),
        _ => "1970-01-01T00:00:00Z".to_string(),
    }
}

impl VolumeRecord {
    /// A new volume's record; `created_at` is the creating node's wall clock in Unix
    /// seconds (display only), read by the shell.
    pub fn new(name: &str, node: &str, options: VolumeOptions, created_at: u64) -> Self {
        VolumeRecord {
            name: name.to_string(),
            created_by: node.to_string(),
            created_at,
            options,
            mounts: BTreeMap::new(),
            holder: None,
            generation: 0,
            takeovers: Vec::new(),
            incarnations: BTreeMap::new(),
            snapshots: BTreeMap::new(),
            format: BASE_FORMAT,
            unknown: BTreeMap::new(),
        }
    }

    /// Refuses a change to a record that a newer version wrote: rewriting it could drop
    /// what that version relies on.
    pub fn check_writable(&self) -> Result<()> {
        if self.format > RECORD_FORMAT {
            return Err(Error::invalid(format!(
                "volume {} was last written by a newer caravan (record format {}; this daemon writes format {RECORD_FORMAT}); upgrade this node before changing it (docs/configuration.md, \"Upgrades\")",
                self.name, self.format
            )));
        }
        Ok(())
    }

    /// RFC 3339, as Docker's `CreatedAt` wants it.
    pub fn created_at_rfc3339(&self) -> String {
        rfc3339(self.created_at)
    }

    /// Total mount count of one node.
    pub fn node_mount_count(&self, node: &str) -> u32 {
        // Counts come from the export: add them without wrapping.
        self.mounts
            .get(node)
            .map(|ids| ids.values().fold(0u32, |a, c| a.saturating_add(*c)))
            .unwrap_or(0)
    }

    /// Nodes holding at least one mount, sorted.
    pub fn mounted_on(&self) -> Vec<&str> {
        self.mounts
            .iter()
            .filter(|(_, ids)| ids.values().any(|c| *c > 0))
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// Records one Mount call for (node, id) by the incarnation `boot_id`; returns the
    /// node's total afterwards.
    pub fn add_mount(&mut self, node: &str, boot_id: &str, id: &str) -> u32 {
        let count = self
            .mounts
            .entry(node.to_string())
            .or_default()
            .entry(id.to_string())
            .or_insert(0);
        *count = count.saturating_add(1);
        self.incarnations
            .insert(node.to_string(), boot_id.to_string());
        self.node_mount_count(node)
    }

    /// Records one Unmount call for (node, id). Returns `None` when the ID was not mounted
    /// on that node, else the node's total afterwards.
    pub fn remove_mount(&mut self, node: &str, id: &str) -> Option<u32> {
        let ids = self.mounts.get_mut(node)?;
        let count = ids.get_mut(id)?;
        // A stored 0 (another node wrote it) counts as the last one, never wraps.
        if *count <= 1 {
            ids.remove(id);
        } else {
            *count -= 1;
        }
        if ids.is_empty() {
            self.mounts.remove(node);
            self.incarnations.remove(node);
        }
        Some(self.node_mount_count(node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("10g").unwrap(), 10 << 30);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("2T").unwrap(), 2 << 40);
        for bad in [
            "",
            "G",
            "0",
            "0G",
            "1.5G",
            "-1G",
            "10X",
            "99999999999P",
            "1 0G",
        ] {
            let err = parse_size(bad).unwrap_err().to_string();
            assert!(err.contains("invalid size"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn sizes_format_back() {
        assert_eq!(format_size(1 << 30), "1G");
        assert_eq!(format_size(1536 << 20), "1536M");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(human_bytes(1536 << 20), "1.5 GiB");
        assert_eq!(human_bytes(10), "10 B");
    }

    #[test]
    fn options_parse_and_refuse_unknown_keys() {
        let o = VolumeOptions::from_map([
            ("size", "1G"),
            ("uid", "1000"),
            ("gid", "100"),
            ("mode", "0750"),
            ("on_delete", "archive"),
        ])
        .unwrap();
        assert_eq!(o.size, Some(1 << 30));
        assert_eq!(o.uid, Some(1000));
        assert_eq!(o.gid, Some(100));
        assert_eq!(o.mode, Some(0o750));
        assert_eq!(o.on_delete, OnDelete::Archive);
        assert_eq!(
            o.to_string(),
            "gid=100 mode=0750 on_delete=archive size=1G uid=1000"
        );

        let err = VolumeOptions::from_map([("sise", "1G")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"sise\"") && err.contains("size, uid, gid, mode, on_delete"),
            "{err}"
        );
        for (k, v) in [
            ("mode", "999"),
            ("mode", "17777"),
            ("mode", ""),
            ("uid", "-1"),
            ("gid", "x"),
        ] {
            let err = VolumeOptions::from_map([(k, v)]).unwrap_err().to_string();
            assert!(err.contains(k), "{k}={v}: {err}");
        }
        let err = VolumeOptions::from_map([("on_delete", "keep")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("delete, retain, archive"), "{err}");
    }

    #[test]
    fn mount_counts_per_node_and_id() {
        let mut v = VolumeRecord::new("web", "a", VolumeOptions::default(), 0);
        assert_eq!(v.add_mount("a", "a1", "id1"), 1);
        assert_eq!(v.add_mount("a", "a1", "id1"), 2);
        assert_eq!(v.add_mount("b", "b1", "id2"), 1);
        assert_eq!(v.incarnations.get("b").map(String::as_str), Some("b1"));
        assert_eq!(v.mounted_on(), vec!["a", "b"]);
        assert_eq!(v.remove_mount("a", "unknown"), None);
        assert_eq!(v.remove_mount("c", "id1"), None);
        assert_eq!(v.remove_mount("a", "id1"), Some(1));
        assert_eq!(v.remove_mount("a", "id1"), Some(0));
        assert_eq!(v.mounted_on(), vec!["b"]);
        assert_eq!(v.remove_mount("b", "id2"), Some(0));
        assert!(v.mounts.is_empty());
        assert!(v.incarnations.is_empty(), "no mounts, no incarnation");
    }

    #[test]
    fn stored_counts_and_times_from_another_node_never_wrap_or_panic() {
        let mut v = VolumeRecord::new("web", "a", VolumeOptions::default(), 0);
        v.mounts
            .entry("a".into())
            .or_default()
            .insert("zero".into(), 0);
        assert_eq!(
            v.remove_mount("a", "zero"),
            Some(0),
            "a stored 0 is the last"
        );
        v.mounts
            .entry("b".into())
            .or_default()
            .extend([("x".to_string(), u32::MAX), ("y".to_string(), 5)]);
        assert_eq!(v.node_mount_count("b"), u32::MAX);
        for t in [u64::MAX, 253_402_300_800] {
            v.created_at = t;
            assert_eq!(v.created_at_rfc3339(), "1970-01-01T00:00:00Z");
        }
    }

    #[test]
    fn fields_of_a_newer_version_survive_a_rewrite_and_its_format_is_refused() {
        let newer = r#"{"name":"web","created_by":"a","created_at":1,
            "options":{"on_delete":"delete","quota_mode":"hard"},
            "format":7,"replicas":["s1"]}"#;
        let r: VolumeRecord = serde_json::from_str(newer).unwrap();
        assert_eq!(r.options.unknown["quota_mode"], "hard");
        let again: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(again["replicas"][0], "s1");
        assert_eq!(again["options"]["quota_mode"], "hard");
        let e = r.check_writable().unwrap_err().to_string();
        assert!(e.contains("format 7") && e.contains("upgrade"), "{e}");
        let old = r#"{"name":"web","created_by":"a","created_at":1,"options":{}}"#;
        let r: VolumeRecord = serde_json::from_str(old).unwrap();
        assert_eq!(r.format, 0);
        r.check_writable().unwrap();
    }

    #[test]
    fn a_stored_snapshot_with_a_name_that_is_not_one_path_component_is_refused() {
        let snap = r#""created_at":1,"node":"a","boot_id":"b","state":"complete""#;
        for bad in ["../../etc", "a/b", "x", ""] {
            let stored = format!(
                r#"{{"name":"web","created_by":"a","created_at":1,"options":{{}},"snapshots":{{"{bad}":{{{snap}}}}}}}"#
            );
            let e = decode_stored(b"web", stored.as_bytes()).unwrap_err();
            assert!(e.contains("invalid name"), "{bad}: {e}");
        }
        let good = format!(
            r#"{{"name":"web","created_by":"a","created_at":1,"options":{{}},"snapshots":{{"s1":{{{snap}}}}}}}"#
        );
        let r = decode_stored(b"web", good.as_bytes()).unwrap();
        assert_eq!(r.snapshots["s1"].state, SnapshotState::Complete);
    }

    /// Found by the `stored_record` fuzz target: without correctly rounded float parsing
    /// a large number in an unknown field changed at every rewrite.
    #[test]
    fn numbers_in_unknown_fields_are_stable_across_rewrites() {
        let stored = br#"{"name":"web","created_by":"a","created_at":1,"options":{},
            "big":32222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222,
            "f":0.1,"n":18446744073709551615}"#;
        let once = decode_stored(b"web", stored).unwrap();
        let bytes = serde_json::to_vec(&once).unwrap();
        let twice = decode_stored(b"web", &bytes).unwrap();
        assert_eq!(once, twice);
        assert_eq!(serde_json::to_vec(&twice).unwrap(), bytes);
        assert_eq!(twice.unknown["n"], u64::MAX);
    }

    #[test]
    fn records_round_trip_as_json() {
        let mut v = VolumeRecord::new(
            "web",
            "a",
            VolumeOptions::from_map([("size", "1G")]).unwrap(),
            0,
        );
        v.add_mount("a", "a1", "x");
        let back: VolumeRecord = serde_json::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(back, v);
        assert!(v.created_at_rfc3339().ends_with('Z'));
    }
}
