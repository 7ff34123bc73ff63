//! Mounting the NFS export itself (`caravan daemon --nfs SERVER:/EXPORT`).
//!
//! The kernel's NFS client takes its options as one string and, called through mount(2)
//! directly (no `mount.nfs` helper), needs the server's numeric address in `addr=`. So:
//! parse `SERVER:/EXPORT`, resolve the server, check it answers on port 2049 (an
//! unreachable server would otherwise block the mount for minutes), check the kernel has
//! an NFS client, then mount with sys-mount under `<state-dir>/export`.
//!
//! Defaults (each can be overridden with `--nfs-options`): `vers=4.2`, `proto=tcp`,
//! `hard` (I/O waits for the server instead of failing a container's write half-way; the
//! daemon itself never waits on it unboundedly, see [`crate::export::health`]), `timeo=600`
//! (60 s per retry), `retrans=2`. Only NFSv4 can be mounted this way: v3 needs the
//! `mount.nfs` helper for its side protocols; mount it yourself and pass `--root`.

use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::core::error::{Error, Result};

/// The NFS port every NFSv4 server listens on.
pub const NFS_PORT: u16 = 2049;
/// Options used unless `--nfs-options` sets them.
pub const DEFAULT_OPTIONS: &str = "vers=4.2,proto=tcp,hard,timeo=600,retrans=2";

/// `SERVER:/EXPORT`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfsExport {
    /// Host name or address (IPv6 without its brackets).
    pub server: String,
    pub path: String,
}

impl NfsExport {
    /// Accepts `host:/path`, `10.0.0.1:/path` and `[fd00::1]:/path`.
    pub fn parse(spec: &str) -> Result<NfsExport> {
        let bad = |why: &str| {
            Error::invalid(format!(
                "invalid --nfs {spec:?}: {why}; expected SERVER:/EXPORT, e.g. nfs.example.com:/srv/caravan or [fd00::1]:/srv/caravan"
            ))
        };
        let (server, path) = if let Some(rest) = spec.strip_prefix('[') {
            let (v6, rest) = rest.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            let path = rest
                .strip_prefix(':')
                .ok_or_else(|| bad("missing : after ]"))?;
            v6.parse::<std::net::Ipv6Addr>()
                .map_err(|_| bad("not an IPv6 address inside [ ]"))?;
            (v6, path)
        } else {
            spec.split_once(':').ok_or_else(|| bad("missing :"))?
        };
        if server.is_empty() {
            return Err(bad("empty server"));
        }
        if !server
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
        {
            return Err(bad(
                "the server may hold letters, digits, '.', '-' (or an address)",
            ));
        }
        if !path.starts_with('/') {
            return Err(bad("the export path must start with /"));
        }
        if path.contains(',') || path.chars().any(char::is_whitespace) {
            return Err(bad("the export path may not contain commas or spaces"));
        }
        Ok(NfsExport {
            server: server.to_string(),
            path: path.to_string(),
        })
    }

    /// The source string mount(2) gets.
    pub fn source(&self) -> String {
        if self.server.contains(':') {
            format!("[{}]:{}", self.server, self.path)
        } else {
            format!("{}:{}", self.server, self.path)
        }
    }
}

/// Resolves the server to one address, within `limit` (a resolver that does not answer
/// must not hang the start).
pub fn resolve(server: &str, limit: Duration) -> Result<IpAddr> {
    if let Ok(ip) = server.parse::<IpAddr>() {
        return Ok(ip);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let name = server.to_string();
    std::thread::spawn(move || {
        let r = (name.as_str(), NFS_PORT)
            .to_socket_addrs()
            .map(|mut a| a.next());
        let _ = tx.send(r);
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(Some(addr))) => Ok(addr.ip()),
        Ok(Ok(None)) => Err(Error::invalid(format!(
            "the NFS server name {server:?} resolves to no address"
        ))),
        Ok(Err(e)) => Err(Error::invalid(format!(
            "cannot resolve the NFS server name {server:?}: {e}; check the name, or pass its address"
        ))),
        Err(_) => Err(Error::invalid(format!(
            "resolving the NFS server name {server:?} took over {}s; check the resolver, or pass its address",
            limit.as_secs()
        ))),
    }
}

/// The kernel mount options: the defaults, overridden key by key by `user`, plus `addr=`.
/// Returns the filesystem type and the option string.
pub fn mount_options(user: Option<&str>, addr: IpAddr) -> Result<(&'static str, String)> {
    let mut opts: Vec<(String, Option<String>)> = Vec::new();
    let mut set = |k: &str, v: Option<&str>| {
        // Later settings win; `hard`/`soft` and similar pairs replace each other.
        let opposite = match k {
            "hard" => Some("soft"),
            "soft" => Some("hard"),
            _ => None,
        };
        opts.retain(|(key, _)| key != k && Some(key.as_str()) != opposite);
        opts.push((k.to_string(), v.map(str::to_string)));
    };
    for part in DEFAULT_OPTIONS.split(',') {
        let (k, v) = split_option(part);
        set(k, v);
    }
    for part in user.unwrap_or("").split(',').filter(|p| !p.is_empty()) {
        let (k, v) = split_option(part);
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Error::invalid(format!(
                "invalid NFS option {part:?} in --nfs-options: expected key or key=value, separated by commas"
            )));
        }
        if crate::export::root::local_lock_problem(part).is_some() {
            return Err(Error::invalid(format!(
                "--nfs-options {part}: caravan needs locks shared between hosts; leave out {part}"
            )));
        }
        match (k, v) {
            ("vers" | "nfsvers", Some(v)) if !v.starts_with('4') => {
                return Err(Error::invalid(format!(
                    "--nfs-options {part}: only NFSv4 (vers=4, 4.1, 4.2) can be mounted by caravan itself; mount an NFSv3 export yourself (fstab) and pass --root"
                )))
            }
            ("soft", _) => tracing::warn!(
                "--nfs-options soft: a slow server can then fail a container's write half-way (EIO)"
            ),
            _ => {}
        }
        set(k, v);
    }
    set("addr", Some(&addr.to_string()));
    let text = opts
        .iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => k.clone(),
        })
        .collect::<Vec<_>>()
        .join(",");
    Ok(("nfs4", text))
}

fn split_option(part: &str) -> (&str, Option<&str>) {
    match part.split_once('=') {
        Some((k, v)) => (k.trim(), Some(v.trim())),
        None => (part.trim(), None),
    }
}

/// Whether the running kernel has an NFSv4 client (built in or loaded).
pub fn kernel_has_nfs4() -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|t| {
            t.lines()
                .any(|l| l.split_whitespace().last() == Some("nfs4"))
        })
        .unwrap_or(false)
}

/// Mounts the export on `target` (created if needed), unless it is already mounted there
/// from an earlier run. Returns whether this call mounted it.
pub fn mount(export: &NfsExport, user_options: Option<&str>, target: &Path) -> Result<bool> {
    let addr = resolve(&export.server, Duration::from_secs(5))?;
    // Fail fast on an unreachable server: mount(2) would retry for minutes.
    let to = SocketAddr::new(addr, NFS_PORT);
    TcpStream::connect_timeout(&to, Duration::from_secs(5)).map_err(|e| {
        Error::invalid(format!(
            "the NFS server {} ({addr}) does not answer on port {NFS_PORT}: {e}; check the address, that the server runs, and firewalls",
            export.server
        ))
    })?;
    if !kernel_has_nfs4() {
        return Err(Error::invalid(format!(
            "this kernel has no NFSv4 client (no nfs4 in /proc/filesystems): load it with `modprobe nfs` (package linux-modules-extra or similar), or mount {} yourself and pass --root",
            export.source()
        )));
    }
    if already_mounted(target, &export.source()) {
        tracing::info!(target = %target.display(), "the export is already mounted there; using it");
        return Ok(false);
    }
    let (fstype, options) = mount_options(user_options, addr)?;
    std::fs::create_dir_all(target)
        .map_err(|e| Error::io(format!("creating {}", target.display()), e))?;
    tracing::info!(source = %export.source(), target = %target.display(), %options, "mounting the NFS export");
    sys_mount::Mount::builder()
        .fstype(fstype)
        .data(&options)
        .mount(export.source(), target)
        .map(drop)
        .map_err(|e| {
            Error::invalid(format!(
                "mounting {} on {} failed: {e}; options were {options}",
                export.source(),
                target.display()
            ))
        })?;
    Ok(true)
}

fn already_mounted(target: &Path, source: &str) -> bool {
    crate::export::mounts::mount_table()
        .unwrap_or_default()
        .iter()
        .any(|m| m.mount_point == target && m.source == source)
}

/// Where the daemon mounts the export: `<state-dir>/export`.
pub fn export_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("export")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_specs_parse_or_say_what_is_expected() {
        let e = NfsExport::parse("nfs.example.com:/srv/caravan").unwrap();
        assert_eq!(
            (e.server.as_str(), e.path.as_str()),
            ("nfs.example.com", "/srv/caravan")
        );
        assert_eq!(e.source(), "nfs.example.com:/srv/caravan");
        let e = NfsExport::parse("[fd00::1]:/x").unwrap();
        assert_eq!(e.server, "fd00::1");
        assert_eq!(e.source(), "[fd00::1]:/x");
        for bad in [
            "nfs.example.com",
            "host:relative",
            ":/x",
            "[fd00::1:/x",
            "[zz]:/x",
            "a b:/x",
            "h:/a,b",
        ] {
            let msg = NfsExport::parse(bad).unwrap_err().to_string();
            assert!(msg.contains("expected SERVER:/EXPORT"), "{bad}: {msg}");
        }
    }

    #[test]
    fn addresses_resolve_without_a_resolver_and_bad_names_fail_clearly() {
        let t = Duration::from_secs(5);
        assert_eq!(
            resolve("10.77.0.1", t).unwrap(),
            "10.77.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            resolve("fd00::1", t).unwrap(),
            "fd00::1".parse::<IpAddr>().unwrap()
        );
        assert!(resolve("localhost", t).unwrap().is_loopback());
        let e = resolve("no-such-host.invalid", t).unwrap_err().to_string();
        assert!(e.contains("no-such-host.invalid"), "{e}");
    }

    #[test]
    fn options_are_defaults_overridden_plus_the_numeric_address() {
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        let (fstype, o) = mount_options(None, ip).unwrap();
        assert_eq!(fstype, "nfs4");
        assert_eq!(
            o,
            "vers=4.2,proto=tcp,hard,timeo=600,retrans=2,addr=10.0.0.5"
        );
        let (_, o) = mount_options(Some("vers=4.1,soft,timeo=100,rsize=65536"), ip).unwrap();
        assert_eq!(
            o,
            "proto=tcp,retrans=2,vers=4.1,soft,timeo=100,rsize=65536,addr=10.0.0.5"
        );
        for (bad, says) in [
            ("nolock", "locks shared"),
            ("local_lock=posix", "locks shared"),
            ("vers=3", "NFSv4"),
            ("bad key=1", "invalid NFS option"),
        ] {
            let e = mount_options(Some(bad), ip).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
