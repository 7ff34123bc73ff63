//! Where backups are kept, and the few operations on it that backups need.
//!
//! Two kinds of destination: `vfs:///path`, any mounted folder (another NFS export, a
//! local disk), and `s3://bucket/prefix` (also Convoy's `s3://bucket@region/prefix`), any
//! S3-compatible service. S3 goes through `object_store` (request signing, retries,
//! credentials from the `AWS_*` variables); the `~/.aws/credentials` and `~/.aws/config`
//! files are read here, for what the variables leave unset. A folder is written through
//! handles, the way the shared root is ([`crate::export::beneath`]): the destination can be
//! another machine's export, and caravan runs as root, so no path below it is ever
//! resolved through a link, and objects are written to a temporary name, synced, then
//! renamed, so that a reader never sees half an object.
//!
//! The interface is blocking: backups run on blocking threads, and S3 calls are driven
//! on the runtime's handle from there.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::core::backup_url::Dest;
use crate::core::error::{Error, Result};

impl Dest {
    /// Refuses a folder whose path is on the shared root `root`, by its path or through a
    /// link on the way (the part of the path that exists, resolved as the kernel would):
    /// checked before anything is made there. [`Backend::open`] checks the folder it opened
    /// again, by its handle (the path may change in between).
    fn check_path_outside(&self, root: &Path) -> Result<()> {
        let Dest::Vfs { path } = self else {
            return Ok(());
        };
        let mut existing = path.as_path();
        while !existing.exists() {
            match existing.parent() {
                Some(p) => existing = p,
                None => break,
            }
        }
        let resolved = |p: &Path| std::fs::canonicalize(p).ok();
        let under = path.starts_with(root)
            || matches!((resolved(existing), resolved(root)), (Some(e), Some(r)) if e.starts_with(&r));
        if under {
            return Err(self.on_the_root(root));
        }
        Ok(())
    }

    fn on_the_root(&self, root: &Path) -> Error {
        Error::invalid(format!(
            "backup destination {}: it is on the shared root {}; keep backups outside the export (another mount, a local disk, S3)",
            self.url(),
            root.display()
        ))
    }
}

/// One object listed: its name within the listed folder, size and time of last change
/// (by the destination's clock).
#[derive(Debug, Clone)]
pub struct Listed {
    pub name: String,
    pub size: u64,
    pub modified: Option<SystemTime>,
}

enum Inner {
    /// The destination folder, as an `O_PATH` handle.
    Vfs(File),
    S3 {
        store: Arc<dyn ObjectStore>,
        prefix: String,
    },
}

/// An open destination.
pub struct Backend {
    inner: Inner,
    rt: tokio::runtime::Handle,
    url: String,
}

/// S3 calls give up after this, and their retries after `S3_RETRY_TIMEOUT`.
const S3_TIMEOUT: Duration = Duration::from_secs(30);
const S3_RETRY_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether a destination is opened to be written or only read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Write,
    Read,
}

impl Backend {
    /// Opens a destination, to write to it (`Access::Write`: a folder is made if missing,
    /// its path being the operator's) or only to read it (`Access::Read`: nothing is ever
    /// made; a missing folder is an error). A folder is opened once, by its configured
    /// path, and everything below it is reached from that handle without following links;
    /// one that is on the shared root `shared_root` (another machine could plant links
    /// below it) is refused, checked on the handle opened, not on a path resolved again.
    /// Must be called from a blocking thread with `rt` the runtime's handle.
    pub fn open(
        dest: &Dest,
        rt: tokio::runtime::Handle,
        shared_root: &Path,
        access: Access,
    ) -> Result<Backend> {
        let url = dest.url();
        let inner = match dest {
            Dest::Vfs { path } => {
                dest.check_path_outside(shared_root)?;
                if access == Access::Write {
                    std::fs::create_dir_all(path).map_err(|e| {
                        Error::io(format!("making the backup folder {}", path.display()), e)
                    })?;
                }
                let root = crate::export::beneath::open_root(path).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound if access == Access::Read => Error::NoSuchBackup(
                        format!("{url} holds no caravan backups (the folder does not exist)"),
                    ),
                    _ => Error::io(format!("opening the backup folder {}", path.display()), e),
                })?;
                // Where the folder opened really is (the kernel's own path of the handle).
                let opened =
                    std::fs::read_link(crate::export::beneath::proc_path(&root)).map_err(|e| {
                        Error::io(format!("opening the backup folder {}", path.display()), e)
                    })?;
                let shared =
                    std::fs::canonicalize(shared_root).unwrap_or(shared_root.to_path_buf());
                if opened.starts_with(&shared) {
                    return Err(dest.on_the_root(shared_root));
                }
                Inner::Vfs(root)
            }
            Dest::S3 {
                bucket,
                region,
                prefix,
            } => {
                let store = s3_store(bucket, region.as_deref())?;
                Inner::S3 {
                    store: Arc::new(store),
                    prefix: prefix.clone(),
                }
            }
        };
        Ok(Backend { inner, rt, url })
    }

    /// The destination's URL (for messages).
    pub fn url(&self) -> &str {
        &self.url
    }

    fn fail(&self, what: &str, key: &str, e: impl std::fmt::Display) -> Error {
        Error::Backup(format!("{what} {key} at {}: {e}", self.url))
    }

    /// An object store error with its causes (the HTTP client's own message is often
    /// just "builder error" or "error sending request", the cause says which).
    fn fail_s3(&self, what: &str, key: &str, e: object_store::Error) -> Error {
        let mut msg = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            let text = c.to_string();
            if !msg.contains(&text) {
                msg.push_str(": ");
                msg.push_str(&text);
            }
            cause = c.source();
        }
        self.fail(what, key, msg)
    }

    fn s3_path(prefix: &str, key: &str) -> object_store::path::Path {
        if prefix.is_empty() {
            object_store::path::Path::from(key)
        } else {
            object_store::path::Path::from(format!("{prefix}/{key}"))
        }
    }

    /// Writes the object `key` (`dir/name`), whole: readers see all of it or nothing.
    pub fn put(&self, key: &str, data: Bytes) -> Result<()> {
        match &self.inner {
            Inner::Vfs(root) => vfs_put(root, key, &data).map_err(|e| self.fail("writing", key, e)),
            Inner::S3 { store, prefix } => {
                let path = Self::s3_path(prefix, key);
                self.rt
                    .block_on(store.put(&path, data.into()))
                    .map(|_| ())
                    .map_err(|e| self.fail_s3("writing", key, e))
            }
        }
    }

    /// Reads the object `key`; `None` when there is none. One larger than `max` bytes is
    /// refused (whatever is stored there, it is not something this version wrote).
    pub fn get(&self, key: &str, max: u64) -> Result<Option<Vec<u8>>> {
        let too_big = |size: u64| {
            self.fail(
                "reading",
                key,
                format!("{size} bytes, more than the {max} an object of this kind may have: not written by caravan, or damaged"),
            )
        };
        match &self.inner {
            Inner::Vfs(root) => {
                // Looked at before it is opened: a device or FIFO planted there is never
                // opened (opening a device can act on it; a FIFO could block).
                let (f, st) = match crate::export::beneath::open_regular(root, Path::new(key), 0) {
                    Ok(opened) => opened,
                    Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => return Ok(None),
                    Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
                        return Err(self.fail(
                            "reading",
                            key,
                            "not a regular file (a link, a FIFO or a device)",
                        ))
                    }
                    Err(e) => return Err(self.fail("opening", key, e)),
                };
                let len = crate::export::beneath::size_of(&st);
                if len > max {
                    return Err(too_big(len));
                }
                let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
                use std::io::Read;
                f.take(max + 1)
                    .read_to_end(&mut buf)
                    .map_err(|e| self.fail("reading", key, e))?;
                if buf.len() as u64 > max {
                    return Err(too_big(buf.len() as u64));
                }
                Ok(Some(buf))
            }
            Inner::S3 { store, prefix } => {
                let path = Self::s3_path(prefix, key);
                self.rt.block_on(async {
                    let got = match store.get(&path).await {
                        Ok(g) => g,
                        Err(object_store::Error::NotFound { .. }) => return Ok(None),
                        Err(e) => return Err(self.fail_s3("reading", key, e)),
                    };
                    if got.meta.size > max {
                        return Err(too_big(got.meta.size));
                    }
                    let b = got
                        .bytes()
                        .await
                        .map_err(|e| self.fail("reading", key, e))?;
                    if b.len() as u64 > max {
                        return Err(too_big(b.len() as u64));
                    }
                    Ok(Some(b.to_vec()))
                })
            }
        }
    }

    /// Reads `len` bytes at `offset` of the object `key` (exactly that many, or an error).
    pub fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let end = offset
            .checked_add(len)
            .ok_or_else(|| self.fail("reading", key, "range past the end"))?;
        let short = |n: usize| {
            self.fail("reading", key, format!("{n} bytes where {len} were expected at offset {offset}: the object is shorter than its index says (damaged?)"))
        };
        match &self.inner {
            Inner::Vfs(root) => {
                let f = crate::export::beneath::open(
                    root,
                    Path::new(key),
                    OFlag::O_RDONLY | OFlag::O_NONBLOCK,
                    Mode::empty(),
                )
                .map_err(|e| self.fail("opening", key, e))?;
                if !f.metadata().map(|m| m.is_file()).unwrap_or(false) {
                    return Err(self.fail("reading", key, "not a regular file"));
                }
                let mut buf = vec![0u8; len as usize];
                let mut done = 0usize;
                while done < buf.len() {
                    let n = nix::sys::uio::pread(
                        f.as_fd(),
                        &mut buf[done..],
                        i64::try_from(offset + done as u64).unwrap_or(i64::MAX),
                    )
                    .map_err(|e| self.fail("reading", key, e))?;
                    if n == 0 {
                        return Err(short(done));
                    }
                    done += n;
                }
                Ok(buf)
            }
            Inner::S3 { store, prefix } => {
                let path = Self::s3_path(prefix, key);
                let b = self
                    .rt
                    .block_on(store.get_range(&path, offset..end))
                    .map_err(|e| self.fail_s3("reading", key, e))?;
                if b.len() as u64 != len {
                    return Err(short(b.len()));
                }
                Ok(b.to_vec())
            }
        }
    }

    /// The objects in the folder `dir` (one level; folders and other kinds of file are
    /// left out). A folder that does not exist lists nothing.
    pub fn list(&self, dir: &str) -> Result<Vec<Listed>> {
        match &self.inner {
            Inner::Vfs(root) => vfs_list(root, dir).map_err(|e| self.fail("listing", dir, e)),
            Inner::S3 { store, prefix } => {
                let path = Self::s3_path(prefix, dir);
                self.rt.block_on(async {
                    let listed = store
                        .list_with_delimiter(Some(&path))
                        .await
                        .map_err(|e| self.fail_s3("listing", dir, e))?;
                    Ok(listed
                        .objects
                        .into_iter()
                        .filter_map(|m| {
                            Some(Listed {
                                name: m.location.filename()?.to_string(),
                                size: m.size,
                                modified: Some(m.last_modified.into()),
                            })
                        })
                        .collect())
                })
            }
        }
    }

    /// Deletes the object `key`; one already gone is not an error.
    pub fn delete(&self, key: &str) -> Result<()> {
        match &self.inner {
            Inner::Vfs(root) => vfs_delete(root, key).map_err(|e| self.fail("deleting", key, e)),
            Inner::S3 { store, prefix } => {
                let path = Self::s3_path(prefix, key);
                match self.rt.block_on(store.delete(&path)) {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(self.fail_s3("deleting", key, e)),
                }
            }
        }
    }
}

/// The S3 client: settings from the `AWS_*` variables, then from the shared files for what
/// they leave unset; a plain-HTTP endpoint (a local test server) is allowed as such.
fn s3_store(bucket: &str, region: Option<&str>) -> Result<object_store::aws::AmazonS3> {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey as K};
    let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".to_string());
    let home = env("HOME").unwrap_or_else(|| "/root".to_string());
    if env("AWS_ACCESS_KEY_ID").is_none() {
        let file = env("AWS_SHARED_CREDENTIALS_FILE")
            .unwrap_or_else(|| format!("{home}/.aws/credentials"));
        let section = ini_section(&file, &profile);
        for (key, k) in [
            ("aws_access_key_id", K::AccessKeyId),
            ("aws_secret_access_key", K::SecretAccessKey),
            ("aws_session_token", K::Token),
        ] {
            if let Some(v) = section.iter().find(|(n, _)| n == key) {
                b = b.with_config(k, v.1.clone());
            }
        }
    }
    let config = env("AWS_CONFIG_FILE").unwrap_or_else(|| format!("{home}/.aws/config"));
    let section = if profile == "default" {
        ini_section(&config, "default")
    } else {
        ini_section(&config, &format!("profile {profile}"))
    };
    let from_file = |key: &str| {
        section
            .iter()
            .find(|(n, _)| n == key)
            .map(|(_, v)| v.clone())
    };
    let region = region
        .map(str::to_string)
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .or_else(|| from_file("region"));
    if let Some(r) = region {
        b = b.with_region(r);
    }
    let endpoint = env("AWS_ENDPOINT_URL")
        .or_else(|| env("AWS_ENDPOINT"))
        .or_else(|| from_file("endpoint_url"));
    let mut client = object_store::ClientOptions::new()
        .with_timeout(S3_TIMEOUT)
        .with_connect_timeout(Duration::from_secs(5));
    if let Some(e) = &endpoint {
        b = b.with_endpoint(e.clone());
        if e.starts_with("http://") {
            client = client.with_allow_http(true);
        }
    }
    let retry = object_store::RetryConfig {
        max_retries: 4,
        retry_timeout: S3_RETRY_TIMEOUT,
        ..Default::default()
    };
    // The client options first: they hold `allow_http` too, which the builder's own
    // setting must not be overwritten by.
    b.with_client_options(client)
        .with_retry(retry)
        .build()
        .map_err(|e| Error::invalid(format!("the S3 destination s3://{bucket}: {e} (endpoint, region and credentials come from the AWS_* variables and ~/.aws/credentials, ~/.aws/config)")))
}

/// The `key = value` lines of `[section]` in an INI-style AWS file (none if it is missing).
fn ini_section(file: &str, section: &str) -> Vec<(String, String)> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Vec::new();
    };
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines().take(10_000) {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
        } else if inside {
            if let Some((k, v)) = line.split_once('=') {
                out.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
    }
    out
}

/// The folder of `key` below the destination, made if missing (no link followed), and
/// the object's own name.
fn vfs_dir<'k>(root: &File, key: &'k str, make: bool) -> std::io::Result<(File, &'k str)> {
    let (dir, name) = key.rsplit_once('/').unwrap_or(("", key));
    if dir.is_empty() {
        // A handle of its own that can be synced (the root's is `O_PATH`).
        let d = nix::fcntl::openat(
            root.as_fd(),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        return Ok((File::from(d), name));
    }
    if make {
        let mut at = PathBuf::new();
        for part in dir.split('/') {
            at.push(part);
            let parent = if at.parent() == Some(Path::new("")) {
                root.try_clone()?
            } else {
                crate::export::beneath::open_dir(root, at.parent().unwrap_or(Path::new("")))?
            };
            match nix::sys::stat::mkdirat(parent.as_fd(), part, Mode::from_bits_truncate(0o700)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let d = crate::export::beneath::open(
        root,
        Path::new(dir),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY,
        Mode::empty(),
    )?;
    Ok((d, name))
}

fn vfs_put(root: &File, key: &str, data: &[u8]) -> std::io::Result<()> {
    let (dir, name) = vfs_dir(root, key, true)?;
    let tmp = format!(".{name}.tmp-{}-{}", std::process::id(), nanos());
    let fd = nix::fcntl::openat(
        dir.as_fd(),
        tmp.as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )?;
    let mut f = File::from(fd);
    let written = f.write_all(data).and_then(|()| f.sync_all());
    let renamed = written.and_then(|()| {
        nix::fcntl::renameat(dir.as_fd(), tmp.as_str(), dir.as_fd(), name).map_err(Into::into)
    });
    if renamed.is_err() {
        let _ = nix::unistd::unlinkat(
            dir.as_fd(),
            tmp.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
    renamed?;
    // The rename itself, durable before anything that depends on this object is written.
    nix::unistd::fsync(dir.as_fd())?;
    Ok(())
}

fn vfs_list(root: &File, dir: &str) -> std::io::Result<Vec<Listed>> {
    let d = match crate::export::beneath::open(
        root,
        Path::new(dir),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY,
        Mode::empty(),
    ) {
        Ok(d) => d,
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    // The names read from the folder's handle (bounded: treecopy's folder limit).
    for name in crate::export::treecopy::list(d.as_fd())? {
        let name = name.as_bytes();
        if name.starts_with(b".") {
            continue; // temporary names
        }
        let Ok(st) = nix::sys::stat::fstatat(
            d.as_fd(),
            std::ffi::OsStr::from_bytes(name),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) else {
            continue;
        };
        if st.st_mode & nix::libc::S_IFMT != nix::libc::S_IFREG {
            continue;
        }
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        let modified = SystemTime::UNIX_EPOCH.checked_add(Duration::new(
            u64::try_from(st.st_mtime).unwrap_or(0),
            u32::try_from(st.st_mtime_nsec).unwrap_or(0),
        ));
        out.push(Listed {
            name: name.to_string(),
            size: u64::try_from(st.st_size).unwrap_or(0),
            modified,
        });
    }
    Ok(out)
}

fn vfs_delete(root: &File, key: &str) -> std::io::Result<()> {
    let (dir, name) = match vfs_dir(root, key, false) {
        Ok(x) => x,
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    match nix::unistd::unlinkat(dir.as_fd(), name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_aws_files_are_read_by_section() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("credentials");
        std::fs::write(
            &f,
            "[default]\naws_access_key_id = A\n[other]\naws_access_key_id=B\naws_secret_access_key = S\n",
        )
        .unwrap();
        let f = f.to_str().unwrap();
        assert_eq!(
            ini_section(f, "default"),
            [("aws_access_key_id".into(), "A".into())]
        );
        assert_eq!(ini_section(f, "other").len(), 2);
        assert!(ini_section(f, "none").is_empty());
        assert!(ini_section("/nonexistent", "default").is_empty());
    }

    #[test]
    fn a_folder_destination_writes_whole_objects_and_refuses_links() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let dest = Dest::Vfs {
            path: d.path().join("b"),
        };
        let b = Backend::open(
            &dest,
            rt.handle().clone(),
            Path::new("/nonexistent-root"),
            Access::Write,
        )
        .unwrap();
        b.put("packs/abc", Bytes::from_static(b"hello")).unwrap();
        assert_eq!(b.get("packs/abc", 100).unwrap().unwrap(), b"hello");
        assert_eq!(b.get_range("packs/abc", 1, 3).unwrap(), b"ell");
        assert!(b.get_range("packs/abc", 3, 5).is_err(), "past the end");
        assert!(b.get("packs/abc", 4).is_err(), "larger than allowed");
        assert!(b.get("packs/none", 100).unwrap().is_none());
        let l = b.list("packs").unwrap();
        assert_eq!((l.len(), l[0].name.as_str(), l[0].size), (1, "abc", 5));
        assert!(b.list("nothing").unwrap().is_empty());
        // A link planted where a folder of the destination goes is refused, not followed.
        std::os::unix::fs::symlink(&outside, d.path().join("b/index")).unwrap();
        assert!(b.put("index/x", Bytes::from_static(b"x")).is_err());
        assert!(b.get("index/x", 10).is_err());
        assert!(
            std::fs::read_dir(&outside).unwrap().next().is_none(),
            "nothing written outside"
        );
        b.delete("packs/abc").unwrap();
        b.delete("packs/abc").unwrap();
        assert!(b.list("packs").unwrap().is_empty());
        // A FIFO (or a device) planted as an object is refused without being opened.
        let fifo = d.path().join("b/packs/fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (opened, got) =
            crate::export::beneath::probe::opens(&fifo, || b.get("packs/fifo", 100));
        let e = got.unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        assert!(!opened, "the FIFO was opened");
    }
}
