//! The export's own faults, on this machine's kernel (no network filesystem needed): an
//! export that is full or mounted read-only, and one mounted again under the daemon (by a
//! bind mount, which makes a new mount of the same filesystem), or replaced by another
//! cluster's. The GlusterFS versions, with a dead client, are in tests/testbed.rs.

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use util::{require_root, Daemon, Scratch};

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Unmounts (lazily) what a test mounted, whatever happened.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = sys_mount::unmount(&self.0, sys_mount::UnmountFlags::DETACH);
    }
}

fn bind(from: &Path, to: &Path) -> Mounted {
    std::fs::create_dir_all(to).unwrap();
    run(
        "mount",
        &["--bind", from.to_str().unwrap(), to.to_str().unwrap()],
    );
    Mounted(to.to_path_buf())
}

/// A full export and a read-only one: every write the daemon would make is refused with
/// an error that names the cause and what to do, reads keep answering, and everything
/// works again once space is freed or the export is writable again.
#[test]
fn a_full_or_read_only_export_refuses_writes_by_name_and_loses_nothing() {
    if !require_root("a_full_or_read_only_export_refuses_writes_by_name_and_loses_nothing") {
        return;
    }
    let s = Scratch::new();
    let (img, fs, root) = (
        s.path().join("export.img"),
        s.path().join("fs"),
        s.path().join("root"),
    );
    run("truncate", &["-s", "64M", img.to_str().unwrap()]);
    run("mkfs.ext4", &["-q", "-F", img.to_str().unwrap()]);
    std::fs::create_dir_all(&fs).unwrap();
    run(
        "mount",
        &["-o", "loop", img.to_str().unwrap(), fs.to_str().unwrap()],
    );
    let _fs = Mounted(fs.clone());
    // The root is a mount of its own of that filesystem, so that it can be mounted again
    // read-only (a remount of a mount with files open for writing is refused as busy).
    let mounted = bind(&fs, &root);
    let d = Daemon::start(s.path(), &root, "a");
    d.ok("VolumeDriver.Create", r#"{"Name":"v1","Opts":{}}"#);
    let mp = d.ok("VolumeDriver.Mount", r#"{"Name":"v1","ID":"c1"}"#)["Mountpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let mp = PathBuf::from(mp);
    std::fs::write(mp.join("keep"), "kept").unwrap();

    // A container fills the volume, and so the export.
    let filler = mp.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![7u8; 1 << 20];
        let e = loop {
            if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_all()) {
                break e;
            }
        };
        assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC), "{e}");
        // ext4 keeps some blocks for metadata after data is refused: folders until those
        // are gone too.
        let dirs = mp.join("filler-dirs");
        std::fs::create_dir(&dirs).unwrap();
        let full = (0..1_000_000).find_map(|i| std::fs::create_dir(dirs.join(i.to_string())).err());
        assert_eq!(full.and_then(|e| e.raw_os_error()), Some(nix::libc::ENOSPC));
    }
    let err = d.err("VolumeDriver.Create", r#"{"Name":"v2","Opts":{}}"#);
    eprintln!("a Create on a full export: {err}");
    assert!(
        err.contains("full (ENOSPC)") && err.contains("free space"),
        "{err}"
    );
    assert_reads_answer(&d, &mp);
    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_dir_all(mp.join("filler-dirs")).unwrap();
    util::eventually(Duration::from_secs(10), "a Create to work again", || {
        d.plugin("VolumeDriver.Create", r#"{"Name":"v2","Opts":{}}"#)["Err"] == ""
    });

    // Mounted again read-only (the daemon follows the new mount: see the next test).
    drop(mounted);
    std::fs::create_dir_all(&root).unwrap();
    run(
        "mount",
        &[
            "--bind",
            "-o",
            "ro",
            fs.to_str().unwrap(),
            root.to_str().unwrap(),
        ],
    );
    let mounted = Mounted(root.clone());
    let err = d.err("VolumeDriver.Create", r#"{"Name":"v3","Opts":{}}"#);
    eprintln!("a Create on a read-only export: {err}");
    assert!(
        err.contains("read-only (EROFS)") && err.contains("read-write"),
        "{err}"
    );
    assert_reads_answer(&d, &mp);
    drop(mounted);
    let _mounted = bind(&fs, &root);
    util::eventually(Duration::from_secs(10), "a Create to work again", || {
        d.plugin("VolumeDriver.Create", r#"{"Name":"v3","Opts":{}}"#)["Err"] == ""
    });
    let listed = d.ok("VolumeDriver.List", "{}");
    let names: Vec<&str> = listed["Volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["Name"].as_str())
        .collect();
    assert_eq!(names, ["v1", "v2", "v3"], "{listed}");
    d.ok("VolumeDriver.Unmount", r#"{"Name":"v1","ID":"c1"}"#);
}

fn assert_reads_answer(d: &Daemon, mp: &Path) {
    let get = d.ok("VolumeDriver.Get", r#"{"Name":"v1"}"#);
    assert_eq!(get["Volume"]["Name"], "v1", "{get}");
    let listed = d.ok("VolumeDriver.List", "{}");
    assert!(
        !listed["Volumes"].as_array().unwrap().is_empty(),
        "{listed}"
    );
    assert_eq!(std::fs::read_to_string(mp.join("keep")).unwrap(), "kept");
}

/// The export mounted again under a running daemon (a new mount of the same filesystem):
/// the daemon notices the new mount at its next heartbeat, checks that it holds the same
/// cluster, and goes on; another cluster's export mounted there instead is refused, with
/// what to do, and nothing of this daemon is written into it; the right one mounted back
/// is served again. No restart in between.
#[test]
fn a_remounted_export_is_followed_and_another_clusters_is_refused() {
    if !require_root("a_remounted_export_is_followed_and_another_clusters_is_refused") {
        return;
    }
    let s = Scratch::new();
    let (a_fs, b_fs, root) = (
        s.path().join("cluster-a"),
        s.path().join("cluster-b"),
        s.path().join("root"),
    );
    // Cluster b: another daemon made it (its own store id).
    std::fs::create_dir_all(&b_fs).unwrap();
    std::fs::create_dir_all(s.path().join("b")).unwrap();
    {
        let mut b = Daemon::start(&s.path().join("b"), &b_fs, "b1");
        b.ok("VolumeDriver.Create", r#"{"Name":"bvol","Opts":{}}"#);
        assert!(b.stop().success());
    }
    std::fs::create_dir_all(&a_fs).unwrap();
    let mounted = bind(&a_fs, &root);
    let flags = ["--heartbeat", "200ms", "--dead-after", "2s"];
    let spec = s.path().join("spec-a1");
    let d = Daemon::start_with(s.path(), &root, "a1", spec, "caravan", &flags);
    d.ok("VolumeDriver.Create", r#"{"Name":"vv","Opts":{}}"#);
    let mp = PathBuf::from(
        d.ok("VolumeDriver.Mount", r#"{"Name":"vv","ID":"c1"}"#)["Mountpoint"]
            .as_str()
            .unwrap(),
    );
    let beat = |fs: &Path| -> Option<u64> {
        let text = std::fs::read(fs.join(".caravan/nodes/a1.json")).ok()?;
        serde_json::from_slice::<serde_json::Value>(&text).ok()?["seq"].as_u64()
    };
    let info = |d: &Daemon| d.api("GET", "/v1/info", "").1;

    // The same filesystem mounted again at the root.
    drop(mounted);
    let mounted = bind(&a_fs, &root);
    util::eventually(Duration::from_secs(5), "the reconnect", || {
        info(&d)["connection"]["reconnects"] == 1
    });
    let seq = beat(&a_fs).unwrap();
    util::eventually(Duration::from_secs(2), "heartbeats after it", || {
        beat(&a_fs) > Some(seq)
    });
    d.ok("VolumeDriver.Create", r#"{"Name":"ww","Opts":{}}"#);
    // The bind mount of `vv` shows the same folder (same filesystem): nothing to redo.
    let again = d.ok("VolumeDriver.Mount", r#"{"Name":"vv","ID":"c2"}"#);
    assert_eq!(again["Mountpoint"], mp.to_str().unwrap());
    assert!(!d.log_text().contains("did not reach the live export"));

    // Another cluster's export mounted there.
    drop(mounted);
    let mounted = bind(&b_fs, &root);
    util::eventually(Duration::from_secs(5), "the refusal", || {
        !info(&d)["connection"]["refused"].is_null()
    });
    let refused = info(&d)["connection"]["refused"].to_string();
    assert!(refused.contains("another cluster"), "{refused}");
    for (method, body) in [
        ("VolumeDriver.Create", r#"{"Name":"xx","Opts":{}}"#),
        ("VolumeDriver.Mount", r#"{"Name":"ww","ID":"c3"}"#),
    ] {
        let err = d.err(method, body);
        assert!(err.contains("another cluster"), "{method}: {err}");
    }
    // Nothing of this daemon was written into cluster b.
    assert!(!b_fs.join(".caravan/nodes/a1.json").exists());
    assert!(!b_fs.join("volumes/xx").exists());
    let cli = util::cli_ok(&d.socket, &["info"]);
    assert!(cli.contains("REFUSED"), "{cli}");

    // Cluster a back: served again, without a restart.
    drop(mounted);
    let _mounted = bind(&a_fs, &root);
    util::eventually(Duration::from_secs(5), "cluster a served again", || {
        d.plugin("VolumeDriver.Create", r#"{"Name":"xx","Opts":{}}"#)["Err"] == ""
    });
    assert!(info(&d)["connection"]["refused"].is_null());
    assert!(info(&d)["connection"]["reconnects"].as_u64() >= Some(2));
    let seq = beat(&a_fs).unwrap();
    util::eventually(Duration::from_secs(2), "heartbeats again", || {
        beat(&a_fs) > Some(seq)
    });
    d.ok("VolumeDriver.Unmount", r#"{"Name":"vv","ID":"c1"}"#);
    d.ok("VolumeDriver.Unmount", r#"{"Name":"vv","ID":"c2"}"#);
}
