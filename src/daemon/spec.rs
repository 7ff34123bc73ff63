//! The spec file through which dockerd finds a legacy (v1) plugin.
//!
//! dockerd looks for `<spec-dir>/<driver>.spec` on the first use of the driver name and
//! reads one URL from it; for a plugin over TCP with TLS, `<driver>.json` with the address
//! and the client certificate dockerd presents ([`Endpoint::Tls`]). dockerd reads a
//! `.spec` before a `.json` of the same name, so writing one removes the other. The file is written atomically at every start, so a dockerd that
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

use crate::core::error::{Error, IoContext, Result};
use crate::export::layout::write_atomically;

/// Checks a driver name: it becomes a file name and the `-d` value users type.
pub fn validate_driver_name(name: &str) -> Result<()> {
    if crate::core::names::is_safe_token(name, 1, 64, true) {
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

/// Where dockerd reaches the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// The unix socket: `<driver>.spec`.
    Unix(PathBuf),
    /// TCP with mutual TLS: `<driver>.json`.
    Tls {
        /// `https://HOST:PORT`, a name the server's certificate carries.
        addr: String,
        /// The CA that signed the server's certificate.
        ca: PathBuf,
        /// The client certificate and key dockerd presents.
        cert: PathBuf,
        key: PathBuf,
    },
}

impl Endpoint {
    fn file_name(&self, driver: &str) -> String {
        match self {
            Endpoint::Unix(_) => format!("{driver}.spec"),
            Endpoint::Tls { .. } => format!("{driver}.json"),
        }
    }

    /// The other kind's file, which must not stay beside this one.
    fn other_file_name(&self, driver: &str) -> String {
        match self {
            Endpoint::Unix(_) => format!("{driver}.json"),
            Endpoint::Tls { .. } => format!("{driver}.spec"),
        }
    }

    fn content(&self, driver: &str) -> Result<String> {
        match self {
            Endpoint::Unix(socket) => content(socket),
            Endpoint::Tls {
                addr,
                ca,
                cert,
                key,
            } => {
                let v = serde_json::json!({
                    "Name": driver,
                    "Addr": addr,
                    "TLSConfig": {
                        "InsecureSkipVerify": false,
                        "CAFile": ca,
                        "CertFile": cert,
                        "KeyFile": key,
                    },
                });
                Ok(format!("{v:#}\n"))
            }
        }
    }
}

/// Writes the spec file for `endpoint` and removes one of the other kind; returns its
/// path.
pub fn write(spec_dir: &Path, driver: &str, endpoint: &Endpoint) -> Result<PathBuf> {
    validate_driver_name(driver)?;
    let text = endpoint.content(driver)?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(spec_dir)
        .ctx(|| format!("creating {}", spec_dir.display()))?;
    let other = spec_dir.join(endpoint.other_file_name(driver));
    match fs::remove_file(&other) {
        Ok(()) => {
            tracing::info!(removed = %other.display(), "removed the spec file of the other kind: dockerd must find only one")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("removing {}", other.display()), e)),
    }
    let path = spec_dir.join(endpoint.file_name(driver));
    write_atomically(&path, text.as_bytes())?;
    Ok(path)
}

/// Removes the spec file if it still says what this daemon wrote (another daemon may have
/// taken the driver name over since).
pub fn remove(spec_dir: &Path, driver: &str, endpoint: &Endpoint) -> Result<()> {
    let path = spec_dir.join(endpoint.file_name(driver));
    match fs::read_to_string(&path) {
        Ok(text) if text.trim() == endpoint.content(driver)?.trim() => {
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
            &Endpoint::Unix("/run/caravan/caravan.sock".into()),
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
        let a = Endpoint::Unix("/run/a.sock".into());
        write(d.path(), "caravan", &a).unwrap();
        remove(d.path(), "caravan", &Endpoint::Unix("/run/b.sock".into())).unwrap();
        assert!(d.path().join("caravan.spec").exists());
        remove(d.path(), "caravan", &a).unwrap();
        assert!(!d.path().join("caravan.spec").exists());
        remove(d.path(), "caravan", &a).unwrap();
    }

    #[test]
    fn a_tls_spec_is_json_and_replaces_the_unix_one() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "caravan", &Endpoint::Unix("/run/a.sock".into())).unwrap();
        let tls = Endpoint::Tls {
            addr: "https://127.0.0.1:9443".into(),
            ca: "/etc/caravan/ca.pem".into(),
            cert: "/etc/caravan/docker.pem".into(),
            key: "/etc/caravan/docker-key.pem".into(),
        };
        let p = write(d.path(), "caravan", &tls).unwrap();
        assert!(!d.path().join("caravan.spec").exists());
        let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(p).unwrap()).unwrap();
        assert_eq!(v["Addr"], "https://127.0.0.1:9443");
        assert_eq!(v["TLSConfig"]["CAFile"], "/etc/caravan/ca.pem");
        assert_eq!(v["TLSConfig"]["KeyFile"], "/etc/caravan/docker-key.pem");
        write(d.path(), "caravan", &Endpoint::Unix("/run/a.sock".into())).unwrap();
        assert!(!d.path().join("caravan.json").exists());
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
