//! The `.spec` file through which dockerd finds a legacy (v1) plugin.
//!
//! dockerd looks for `<spec-dir>/<driver>.spec` on the first use of the driver name and
//! reads one URL from it. The file is written atomically at every start, so a dockerd that
//! looks while caravan starts sees the old file or the new one, never half of one.
//!
//! A clean shutdown removes the file (if it still points at this daemon's socket). While
//! caravan is stopped, dockerd's lookup of the driver by name then retries for about 15 s
//! ("Unable to locate plugin") and fails; a caravan restarted within that window is found
//! again without any error reaching the user. A spec left pointing at a dead socket would
//! be worse: `docker volume ls` tries to activate every plugin it finds, and each stale
//! one costs about 15 s of retries. A driver dockerd already activated is reached through
//! the socket it remembers; the spec no longer matters to it.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::layout::write_atomically;

/// Checks a driver name: it becomes a file name and the `-d` value users type.
pub fn validate_driver_name(name: &str) -> Result<()> {
    if crate::volume::is_safe_token(name, 1, 64, true) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid driver name {name:?}: use 1 to 64 characters of a-z A-Z 0-9 _ . -, starting with a letter or digit"
        )))
    }
}

/// The spec file's content for a unix socket.
pub fn content(socket: &Path) -> Result<String> {
    let s = socket.to_str().unwrap_or("");
    if !socket.is_absolute()
        || s.is_empty()
        || s.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Error::invalid(format!(
            "invalid socket path {socket:?}: it must be an absolute path without spaces"
        )));
    }
    Ok(format!("unix://{s}\n"))
}

/// Writes `<spec_dir>/<driver>.spec` pointing at `socket`; returns its path.
pub fn write(spec_dir: &Path, driver: &str, socket: &Path) -> Result<PathBuf> {
    validate_driver_name(driver)?;
    let text = content(socket)?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(spec_dir)
        .ctx(|| format!("creating {}", spec_dir.display()))?;
    let path = spec_dir.join(format!("{driver}.spec"));
    write_atomically(&path, text.as_bytes())?;
    Ok(path)
}

/// Removes the spec file if it still points at `socket` (another daemon may have taken the
/// driver name over since).
pub fn remove(spec_dir: &Path, driver: &str, socket: &Path) -> Result<()> {
    let path = spec_dir.join(format!("{driver}.spec"));
    match fs::read_to_string(&path) {
        Ok(text) if text.trim() == content(socket)?.trim() => {
            fs::remove_file(&path).ctx(|| format!("removing {}", path.display()))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_unix_url_with_three_slashes() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            &d.path().join("plugins"),
            "caravan",
            Path::new("/run/caravan/caravan.sock"),
        )
        .unwrap();
        assert_eq!(p.file_name().unwrap(), "caravan.spec");
        assert_eq!(
            fs::read_to_string(p).unwrap(),
            "unix:///run/caravan/caravan.sock\n"
        );
    }

    #[test]
    fn remove_leaves_a_spec_that_points_elsewhere() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "caravan", Path::new("/run/a.sock")).unwrap();
        remove(d.path(), "caravan", Path::new("/run/b.sock")).unwrap();
        assert!(d.path().join("caravan.spec").exists());
        remove(d.path(), "caravan", Path::new("/run/a.sock")).unwrap();
        assert!(!d.path().join("caravan.spec").exists());
        remove(d.path(), "caravan", Path::new("/run/a.sock")).unwrap();
    }

    #[test]
    fn refuses_bad_names_and_sockets() {
        for bad in ["", "../x", "a/b", "-x", "a b"] {
            assert!(validate_driver_name(bad).is_err(), "{bad:?}");
        }
        assert!(content(Path::new("relative.sock")).is_err());
        assert!(content(Path::new("/a b.sock")).is_err());
    }
}
