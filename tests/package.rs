//! The Debian package (`scripts/package-deb`, cargo-deb): built from this build's binary,
//! installed on this machine with dpkg, its files where Debian puts them, and its socket
//! unit's socket served through `systemd-socket-activate`; then purged.

mod util;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use util::{require_root, Scratch};

struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "caravan"]).output();
    }
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_debian_package_installs_and_its_socket_unit_is_served() {
    if !require_root("the_debian_package_installs_and_its_socket_unit_is_served") {
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/package-deb");
    let deb = ok(Command::new(script).arg(util::caravan_bin()));
    let deb = deb.lines().last().unwrap().trim().to_string();
    let deb = Path::new(env!("CARGO_MANIFEST_DIR")).join(deb);
    let listing = ok(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for f in [
        "./usr/bin/caravan",
        "./lib/systemd/system/caravan.service",
        "./lib/systemd/system/caravan.socket",
        "./etc/caravan/caravan.toml",
        "./usr/share/man/man1/caravan.1.gz",
        "./usr/share/bash-completion/completions/caravan",
        "./usr/share/zsh/vendor-completions/_caravan",
        "./usr/share/fish/vendor_completions.d/caravan.fish",
    ] {
        assert!(listing.contains(f), "{f} is not in the package:\n{listing}");
    }
    let _purge = Purge;
    ok(Command::new("dpkg")
        .arg("-i")
        .arg(&deb)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    let version = ok(Command::new("/usr/bin/caravan").arg("--version"));
    assert!(version.starts_with("caravan "), "{version}");
    assert!(Path::new("/usr/share/man/man1/caravan.1.gz").exists());
    let conffiles = ok(Command::new("dpkg-query").args(["-W", "-f", "${Conffiles}", "caravan"]));
    assert!(
        conffiles.contains("/etc/caravan/caravan.toml"),
        "{conffiles}"
    );
    let service = std::fs::read_to_string("/lib/systemd/system/caravan.service").unwrap();
    assert!(
        service.contains("ExecStart=/usr/bin/caravan daemon") && service.contains("Type=notify")
    );

    // The socket unit's socket, held by systemd-socket-activate as systemd would hold it,
    // serves the installed binary's first call.
    let unit = std::fs::read_to_string("/lib/systemd/system/caravan.socket").unwrap();
    let socket = unit
        .lines()
        .find_map(|l| l.strip_prefix("ListenStream="))
        .expect("ListenStream= in caravan.socket")
        .trim()
        .to_string();
    let s = Scratch::new();
    std::fs::create_dir_all(s.path().join("root")).unwrap();
    std::fs::create_dir_all(Path::new(&socket).parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&socket);
    let p = |f: &str| s.path().join(f).display().to_string();
    let mut child = Command::new("systemd-socket-activate")
        .args([
            "-l",
            &socket,
            "/usr/bin/caravan",
            "daemon",
            "--config",
            "/dev/null",
            "--node",
            "deb1",
        ])
        .args([
            "--root",
            &p("root"),
            "--state-dir",
            &p("state"),
            "--socket",
            &socket,
            "--spec-dir",
            &p("spec"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(s.path().join("log")).unwrap())
        .spawn()
        .unwrap();
    util::eventually(Duration::from_secs(10), "the activation socket", || {
        Path::new(&socket).exists()
    });
    let (status, v) = util::http(Path::new(&socket), "POST", "/Plugin.Activate", "", false);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["Implements"][0], "VolumeDriver");
    let out = ok(Command::new("/usr/bin/caravan").args(["--socket", &socket, "info"]));
    assert!(out.contains("Node:         deb1"), "{out}");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&socket);
    ok(Command::new("dpkg").args(["--purge", "caravan"]));
    assert!(!Path::new("/usr/bin/caravan").exists());
}
