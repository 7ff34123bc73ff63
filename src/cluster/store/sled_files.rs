//! sled's files on the shared export: opening under the cluster lock, making a commit
//! durable, and repairing what a crash during sled's own open leaves behind.

use std::fs;
use std::time::{Duration, Instant};

use crate::core::error::{Error, Result};
use crate::export::layout::SharedLayout;

/// sled's segment size (see [`open_db`]).
const SEGMENT_SIZE: usize = 64 << 10;
pub(super) const VOLUMES_TREE: &str = "volumes";
pub(super) const GENERATION_KEY: &str = "generation";
/// The metadata store's random id (see [`super::journal`]).
pub(super) const STORE_ID_KEY: &str = "store_id";

/// An error of sled's, with what was being done: an I/O error the filesystem gave (full,
/// read-only, the connection gone) keeps its kind, so that it is named as such and told
/// apart; anything else is the store's.
pub(super) fn sled_error(what: impl std::fmt::Display, e: sled::Error) -> Error {
    match e {
        sled::Error::Io(io) if io.raw_os_error().is_some() => Error::io(what.to_string(), io),
        e => Error::Store(format!("{what}: {e}")),
    }
}

pub(super) fn read_generation(db: &sled::Db) -> Result<u64> {
    match db.get(GENERATION_KEY) {
        Ok(Some(v)) if v.len() == 8 => {
            Ok(u64::from_be_bytes(v.as_ref().try_into().expect("8 bytes")))
        }
        Ok(Some(v)) => Err(Error::Store(format!(
            "the stored generation has {} bytes instead of 8; the metadata needs a repair",
            v.len()
        ))),
        Ok(None) => Ok(0),
        Err(e) => Err(sled_error("reading the generation", e)),
    }
}

/// Opens sled, retrying while the previous holder's file lock is still being released
/// (sled's background threads, or a network filesystem releasing locks asynchronously).
pub(super) fn open_db(layout: &SharedLayout, deadline: Instant) -> Result<(sled::Db, sled::Tree)> {
    refuse_planted_files(layout)?;
    let mut backoff = Duration::from_millis(1);
    let mut repaired = false;
    loop {
        // Small segments: sled allocates its I/O buffers per open, in segment-sized pieces,
        // and does not give all of it back on close. With the default 512 KiB segments a
        // daemon that opens sled for every commit grew past 100 MiB within a few thousand
        // commits; with 64 KiB it stays near 25 MiB. The metadata is small (a few hundred
        // bytes per volume), so nothing is lost. This is fixed when the database is
        // created (sled keeps it in `conf`).
        let config = sled::Config::new()
            .path(layout.at(&layout.meta_dir()))
            .segment_size(SEGMENT_SIZE)
            .cache_capacity(4 << 20)
            .mode(sled::Mode::LowSpace)
            .flush_every_ms(None);
        match config.open() {
            Ok(db) => {
                let tree = db
                    .open_tree(VOLUMES_TREE)
                    .map_err(|e| sled_error("opening the volumes tree", e))?;
                return Ok((db, tree));
            }
            Err(sled::Error::Corruption { .. })
                if !repaired && remove_unfinished_snapshots(layout)? > 0 =>
            {
                repaired = true;
            }
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(sled_error(
                    format!("opening {}", layout.meta_dir().display()),
                    e,
                ))
            }
        }
    }
}

/// sled opens its own files by path and follows links: before it does, every entry of its
/// folder must be a regular file (or its `blobs` folder). A link, FIFO or device there was
/// planted by another machine; sled would write through it.
fn refuse_planted_files(layout: &SharedLayout) -> Result<()> {
    let meta = layout.meta_dir();
    let entries = match fs::read_dir(layout.at(&meta)) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("reading {}", meta.display()), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("reading {}", meta.display()), e))?;
        let ft = entry
            .file_type()
            .map_err(|e| Error::io(format!("reading {}", meta.display()), e))?;
        let blobs = entry.file_name() == "blobs" && ft.is_dir();
        if !(ft.is_file() || blobs) {
            return Err(Error::invalid(format!(
                "{} is not a regular file (a symlink, or another kind of file put there by another machine?); refusing to open the metadata through it: remove it",
                meta.join(entry.file_name()).display()
            )));
        }
    }
    Ok(())
}

/// sled 0.34 writes a snapshot while it opens (`snap.<lsn>.generating`, then a rename),
/// but when it looks for the latest snapshot it does not skip `.generating` files. A kill
/// during that write leaves a partial file that makes every later open fail with
/// "Read corrupted data". Such a file is by definition unfinished, and the log it
/// summarizes is still there, so it is safe to delete. Only called under the cluster lock,
/// so no other process can be writing one. Called only when sled reports corruption;
/// returns how many it removed.
fn remove_unfinished_snapshots(layout: &SharedLayout) -> Result<usize> {
    let meta = layout.meta_dir();
    let entries = match fs::read_dir(layout.at(&meta)) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(format!("reading {}", meta.display()), e)),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            let path = meta.join(&*name);
            tracing::warn!(file = %path.display(), "removing a snapshot left unfinished by a crash");
            fs::remove_file(entry.path())
                .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// sled's log file, opened once per hold of the lock so that each commit's fsync costs
/// one round trip on a network filesystem instead of an open, an fsync and a close.
pub(super) struct LogFile {
    meta: std::path::PathBuf,
    /// Where a system call reaches `meta` (see [`SharedLayout::at`]).
    meta_at: std::path::PathBuf,
    db: fs::File,
}

impl LogFile {
    pub(super) fn open(layout: &SharedLayout) -> Result<LogFile> {
        let meta = layout.meta_dir();
        let meta_at = layout.at(&meta).into_owned();
        use std::os::unix::fs::OpenOptionsExt;
        let db = fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(meta_at.join("db"))
            .map_err(|e| Error::io(format!("opening {}", meta.join("db").display()), e))?;
        Ok(LogFile { meta, meta_at, db })
    }

    /// Makes the commit durable: fsyncs sled's log (`db`), and on this process's first
    /// commit its folder too (the log file may just have been created). sled's own flush
    /// uses `sync_file_range`, which does not make NFS send the data to the server; an
    /// fsync through any descriptor of the file does. The snapshot sled writes while
    /// opening is fsynced by sled itself, and `conf` never changes.
    pub(super) fn fsync(&self, with_folder: bool) -> Result<()> {
        let err = |p: &std::path::Path, e| Error::io(format!("fsync {}", p.display()), e);
        self.db
            .sync_all()
            .map_err(|e| err(&self.meta.join("db"), e))?;
        if with_folder {
            fs::File::open(&self.meta_at)
                .and_then(|f| f.sync_all())
                .map_err(|e| err(&self.meta, e))?;
        }
        Ok(())
    }
}
