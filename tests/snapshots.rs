//! Snapshots through the CLI, as a user makes them: two daemons on one root (two hosts
//! sharing an export), snapshots made on one and listed, inspected and deleted on the
//! other, compared with the volume entry by entry; a daemon killed while copying, a copy
//! stopped with Ctrl-C, and a link planted where the snapshots go.

mod util;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use util::{require_root, Daemon, Scratch};

fn caravan(d: &Daemon, args: &[&str]) -> Output {
    Command::new(util::caravan_bin())
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .output()
        .unwrap()
}

fn ok(d: &Daemon, args: &[&str]) -> String {
    util::cli_ok(&d.socket, args)
}

fn fails(d: &Daemon, args: &[&str]) -> String {
    let out = caravan(d, args);
    assert!(
        !out.status.success(),
        "caravan {} should fail",
        args.join(" ")
    );
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

/// A tree with what a volume may hold: folders, odd names, a symlink pointing outside,
/// hard links, a sparse file, owners and modes.
fn fill(data: &Path) {
    std::fs::create_dir_all(data.join("a/b/c")).unwrap();
    for i in 0..200 {
        std::fs::write(data.join(format!("a/b/f{i}")), format!("file {i}")).unwrap();
    }
    std::fs::write(data.join("a/b/c/deep"), "deep").unwrap();
    std::fs::write(data.join("name with spaces\nand a newline"), "odd").unwrap();
    std::os::unix::fs::symlink("/etc/shadow", data.join("outside")).unwrap();
    std::fs::write(data.join("one"), "linked").unwrap();
    std::fs::hard_link(data.join("one"), data.join("a/also-one")).unwrap();
    let f = std::fs::File::create(data.join("sparse")).unwrap();
    f.set_len(256 << 20).unwrap();
    std::fs::write(data.join("owned"), "by 1234").unwrap();
    std::os::unix::fs::chown(data.join("owned"), Some(1234), Some(5678)).unwrap();
    std::fs::set_permissions(data.join("owned"), std::fs::Permissions::from_mode(0o640)).unwrap();
}

fn volume_data(root: &Path, v: &str) -> PathBuf {
    root.join("volumes").join(v).join("data")
}

fn snapshot_dir(root: &Path, v: &str, s: &str) -> PathBuf {
    root.join("volumes").join(v).join("snapshots").join(s)
}

#[test]
fn a_snapshot_made_on_one_host_is_listed_inspected_and_deleted_on_another() {
    if !require_root("snapshots_across_hosts") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let a = Daemon::start(s.path(), &root, "a");
    let b = Daemon::start(s.path(), &root, "b");
    ok(&a, &["create", "web"]);
    fill(&volume_data(&root, "web"));

    // Mounted nowhere: a consistent copy.
    assert_eq!(ok(&a, &["snapshot", "create", "web", "before"]), "before");
    let list = ok(&b, &["snapshot", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("web") && l.contains("before") && l.contains(" a ")),
        "{list}"
    );
    let v: Value =
        serde_json::from_str(&ok(&b, &["snapshot", "inspect", "web@before", "--json"])).unwrap();
    assert_eq!(v["state"], "complete", "{v}");
    assert!(
        v["consistency"].as_str().unwrap().starts_with("consistent"),
        "{v}"
    );
    assert_eq!(v["copy"]["symlinks"], 1, "{v}");
    assert_eq!(v["copy"]["hard_links"], 1, "{v}");
    // This machine's ext4 has no reflinks: every file's data was copied.
    assert_eq!(v["method"], "copy", "{v}");
    assert_eq!(v["copy"]["reflinked"], 0, "{v}");
    let text = ok(&b, &["snapshot", "inspect", "web@before"]);
    assert!(text.contains("Copy:") && text.contains(" ms: "), "{text}");
    assert_eq!(
        util::tree_listing(&snapshot_dir(&root, "web", "before")),
        util::tree_listing(&volume_data(&root, "web")),
        "the snapshot is the volume, entry by entry"
    );
    let sparse = std::fs::metadata(snapshot_dir(&root, "web", "before").join("sparse")).unwrap();
    assert!(
        sparse.blocks() < 2048,
        "a hole stays a hole: {} blocks",
        sparse.blocks()
    );
    // The link was copied, not followed.
    assert_eq!(
        std::fs::read_link(snapshot_dir(&root, "web", "before").join("outside")).unwrap(),
        Path::new("/etc/shadow")
    );

    // Mounted on a: the snapshot says what it is. A generated name is printed.
    let mp = a.ok("VolumeDriver.Mount", r#"{"Name":"web","ID":"c1"}"#)["Mountpoint"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(format!("{mp}/later"), "after the first snapshot").unwrap();
    let generated = ok(&b, &["snapshot", "create", "web"]);
    assert!(generated.starts_with("snap-"), "{generated}");
    let v: Value = serde_json::from_str(&ok(
        &a,
        &["snapshot", "inspect", &format!("web@{generated}"), "--json"],
    ))
    .unwrap();
    assert!(
        v["consistency"]
            .as_str()
            .unwrap()
            .contains("crash-consistent"),
        "{v}"
    );
    assert_eq!(v["mounted_on"], serde_json::json!(["a"]), "{v}");
    assert!(snapshot_dir(&root, "web", &generated)
        .join("later")
        .exists());
    assert!(!snapshot_dir(&root, "web", "before").join("later").exists());

    // Names: taken, bad, missing; a volume with snapshots cannot be removed.
    let e = fails(&a, &["snapshot", "create", "web", "before"]);
    assert!(e.contains("already has a snapshot before"), "{e}");
    let e = fails(&a, &["snapshot", "create", "web", "../x"]);
    assert!(e.contains("invalid snapshot name"), "{e}");
    let e = fails(&a, &["snapshot", "inspect", "web"]);
    assert!(e.contains("VOLUME@SNAPSHOT"), "{e}");
    let e = fails(&a, &["snapshot", "inspect", "web@nosuch"]);
    assert!(e.contains("has no snapshot nosuch"), "{e}");
    a.ok("VolumeDriver.Unmount", r#"{"Name":"web","ID":"c1"}"#);
    let e = b.err("VolumeDriver.Remove", r#"{"Name":"web"}"#);
    assert!(
        e.contains("has 2 snapshot(s)") && e.contains("before"),
        "{e}"
    );

    // Deleted on b: gone from every list, and its files.
    assert_eq!(
        ok(&b, &["snapshot", "delete", "web@before"]),
        "deleted web@before"
    );
    assert!(!snapshot_dir(&root, "web", "before").exists());
    let list = ok(&a, &["snapshot", "list", "web", "--json"]);
    let list: Vec<Value> = serde_json::from_str(&list).unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    ok(&a, &["snapshot", "delete", &format!("web@{generated}")]);
    b.ok("VolumeDriver.Remove", r#"{"Name":"web"}"#);
}

/// Many small files: long enough a copy to be interrupted.
fn fill_many(data: &Path, n: usize) {
    for d in 0..n / 500 {
        let dir = data.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..500 {
            std::fs::write(dir.join(format!("f{i}")), [b'x'; 512]).unwrap();
        }
    }
}

fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_interrupted_snapshot_is_never_listed_and_leaves_nothing() {
    if !require_root("interrupted_snapshots") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    // Quick liveness: b judges a killed a dead within 2 s.
    let fast = ["--dead-after", "2s", "--heartbeat", "200ms"];
    let node = |name: &str| {
        let spec = s.path().join(format!("spec-{name}"));
        Daemon::start_with(s.path(), &root, name, spec, "caravan", &fast)
    };
    let mut a = node("a");
    let b = node("b");
    ok(&a, &["create", "big"]);
    fill_many(&volume_data(&root, "big"), 20_000);

    // The daemon killed while copying: never listed, kept while a might be alive, then
    // deleted by `caravan doctor --repair` on b.
    let (status, v) = a.api("POST", "/v1/volumes/big/snapshots", r#"{"name":"gone"}"#);
    assert_eq!(status, 202, "{v}");
    wait_for(Duration::from_secs(30), "the copy under way", || {
        snapshot_dir(&root, "big", "gone").join("d0").exists()
    });
    a.kill9();
    assert_eq!(ok(&b, &["snapshot", "list", "--json"]), "[]");
    wait_for(Duration::from_secs(20), "the doctor's repair", || {
        let out = caravan(&b, &["doctor", "--repair", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["findings"].as_array().is_some_and(|f| {
            f.iter().any(|f| {
                f["kind"] == "abandoned_snapshot"
                    && f["item"] == "gone"
                    && f["repaired"]["Ok"].is_null()
                    && f["repaired"].get("Ok").is_some()
            })
        })
    });
    wait_for(
        Duration::from_secs(30),
        "the abandoned snapshot deleted",
        || {
            !snapshot_dir(&root, "big", "gone").exists()
                && caravan(&b, &["snapshot", "inspect", "big@gone"])
                    .status
                    .code()
                    == Some(1)
        },
    );
    a.spawn();

    // Killed again while copying: its next start deletes it.
    let (status, v) = a.api("POST", "/v1/volumes/big/snapshots", r#"{"name":"cut"}"#);
    assert_eq!(status, 202, "{v}");
    wait_for(Duration::from_secs(30), "the copy under way", || {
        snapshot_dir(&root, "big", "cut").join("d0").exists()
    });
    a.kill9();
    let list = ok(&b, &["snapshot", "list", "--json"]);
    assert_eq!(list, "[]", "a half-made snapshot is never listed");
    let v: Value =
        serde_json::from_str(&ok(&b, &["snapshot", "inspect", "big@cut", "--json"])).unwrap();
    assert_eq!(v["state"], "making", "{v}");
    a.spawn();
    wait_for(Duration::from_secs(30), "the leftover deleted", || {
        !snapshot_dir(&root, "big", "cut").exists()
            && caravan(&b, &["snapshot", "inspect", "big@cut"])
                .status
                .code()
                == Some(1)
    });
    assert!(a.log_text().contains("left unfinished"), "{}", a.log_text());

    // Ctrl-C on the CLI: it stops the copy, and the daemon deletes what was copied.
    let cli = Command::new(util::caravan_bin())
        .arg("--socket")
        .arg(&a.socket)
        .args(["snapshot", "create", "big", "stopped"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(30), "the copy under way", || {
        snapshot_dir(&root, "big", "stopped").join("d0").exists()
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(cli.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = cli.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stopped"), "{err}");
    wait_for(Duration::from_secs(30), "the stopped copy deleted", || {
        !snapshot_dir(&root, "big", "stopped").exists()
            && caravan(&b, &["snapshot", "inspect", "big@stopped"])
                .status
                .code()
                == Some(1)
    });
    assert_eq!(ok(&b, &["snapshot", "list", "--json"]), "[]");

    // A complete one, then the volume can be removed once it is deleted.
    let t = Instant::now();
    ok(&a, &["snapshot", "create", "big", "whole"]);
    eprintln!("snapshot of 20 000 files of 512 B: {:?}", t.elapsed());
    assert_eq!(
        util::tree_listing(&snapshot_dir(&root, "big", "whole")),
        util::tree_listing(&volume_data(&root, "big"))
    );
    // While a restore reads it (on a, through the CLI with JSON progress), no host
    // deletes it.
    let restore = Command::new(util::caravan_bin())
        .arg("--socket")
        .arg(&a.socket)
        .args([
            "create",
            "from-whole",
            "--from-snapshot",
            "big@whole",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(30), "the restore under way", || {
        std::fs::read_dir(root.join(".caravan/staging")).is_ok_and(|mut d| d.next().is_some())
    });
    let e = fails(&b, &["snapshot", "delete", "big@whole"]);
    assert!(e.contains("being restored from on a"), "{e}");
    let out = restore.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // Progress as JSON lines, with the totals from the snapshot's own copy, and an ETA.
    let lines: Vec<Value> = err
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["total_files"] == 20_000 && l["eta_seconds"].is_number()),
        "{err}"
    );
    assert_eq!(
        util::tree_listing(&volume_data(&root, "from-whole")),
        util::tree_listing(&snapshot_dir(&root, "big", "whole"))
    );
    ok(&b, &["snapshot", "delete", "big@whole"]);
    b.ok("VolumeDriver.Remove", r#"{"Name":"big"}"#);
}

#[test]
fn a_link_planted_where_snapshots_go_is_refused_and_nothing_is_written_outside() {
    if !require_root("planted_snapshot_link") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let a = Daemon::start(s.path(), &root, "a");
    ok(&a, &["create", "v1"]);
    std::fs::write(volume_data(&root, "v1").join("f"), "data").unwrap();
    let outside = s.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("volumes/v1/snapshots")).unwrap();
    let out = caravan(&a, &["snapshot", "create", "v1", "s1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("link") || err.contains("symbolic"), "{err}");
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written through the link"
    );
    assert_eq!(ok(&a, &["snapshot", "list", "--json"]), "[]");
}

fn staging(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join(".caravan/staging"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn restores_and_clones_are_made_on_any_host_and_never_overwrite() {
    if !require_root("restores_and_clones") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let a = Daemon::start(s.path(), &root, "a");
    let b = Daemon::start(s.path(), &root, "b");
    ok(&a, &["create", "src", "--mode", "0750"]);
    fill(&volume_data(&root, "src"));
    ok(&a, &["snapshot", "create", "src", "s1"]);
    let at_snapshot = util::tree_listing(&snapshot_dir(&root, "src", "s1"));
    std::fs::remove_file(volume_data(&root, "src").join("a/b/f7")).unwrap();
    std::fs::write(volume_data(&root, "src").join("after"), "later").unwrap();

    // Restored on b from the snapshot made on a: the snapshot's tree, not today's.
    assert_eq!(
        ok(
            &b,
            &[
                "create",
                "restored",
                "--from-snapshot",
                "src@s1",
                "--keep-privileges"
            ]
        ),
        "restored"
    );
    assert_eq!(
        util::tree_listing(&volume_data(&root, "restored")),
        at_snapshot
    );
    let v: Value = serde_json::from_str(&ok(&a, &["inspect", "restored", "--json"])).unwrap();
    assert_eq!(v["options"]["from_snapshot"], "src@s1", "{v}");
    let mode = std::fs::metadata(volume_data(&root, "restored"))
        .unwrap()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o750,
        "a copy that keeps privileges keeps the source's root mode"
    );
    // The same create again is answered with the volume; another source or no source
    // for an existing name is refused, and nothing is overwritten.
    assert_eq!(
        ok(
            &a,
            &[
                "create",
                "restored",
                "--from-snapshot",
                "src@s1",
                "--keep-privileges"
            ]
        ),
        "restored"
    );
    let e = fails(&a, &["create", "src", "--from-snapshot", "src@s1"]);
    assert!(e.contains("already exists with different options"), "{e}");
    assert!(volume_data(&root, "src").join("after").exists());
    let e = fails(&a, &["create", "x2", "--from-snapshot", "src@nosuch"]);
    assert!(e.contains("no complete snapshot nosuch"), "{e}");
    let e = fails(&a, &["create", "x2", "--from-volume", "nosuch"]);
    assert!(e.contains("no such volume"), "{e}");
    let e = a.err(
        "VolumeDriver.Create",
        r#"{"Name":"x3","Opts":{"backup":"s3://b/p"}}"#,
    );
    assert!(
        e.contains("not a backup URL"),
        "a Convoy-style URL without a backup name: {e}"
    );

    // A clone of the volume as it is now, on a; and through Docker's Create, on b.
    assert_eq!(ok(&a, &["create", "copy", "--from-volume", "src"]), "copy");
    assert_eq!(
        util::tree_listing(&volume_data(&root, "copy")),
        util::tree_listing(&volume_data(&root, "src"))
    );
    b.ok(
        "VolumeDriver.Create",
        r#"{"Name":"viadocker","Opts":{"from_snapshot":"src@s1"}}"#,
    );
    assert_eq!(
        util::tree_listing(&volume_data(&root, "viadocker")),
        at_snapshot
    );
    let list = ok(&a, &["list"]);
    for v in ["restored", "copy", "viadocker"] {
        assert!(list.contains(v), "{list}");
    }
    assert!(staging(&root).is_empty(), "{:?}", staging(&root));
}

#[test]
fn an_interrupted_or_too_slow_copy_leaves_no_volume() {
    if !require_root("interrupted_copies") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let mut a = Daemon::start(s.path(), &root, "a");
    let spec = s.path().join("spec-c");
    let c = Daemon::start_with(s.path(), &root, "c", spec, "caravan", &["--timeout", "2s"]);
    ok(&a, &["create", "big"]);
    // Enough files that a copy takes well over the 2 s a call has, on any machine here.
    fill_many(&volume_data(&root, "big"), 80_000);

    // Docker's Create gives up with its call: the copy is stopped and discarded.
    let t = Instant::now();
    let e = c.err(
        "VolumeDriver.Create",
        r#"{"Name":"slow","Opts":{"from_volume":"big"}}"#,
    );
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "answered within the call: {:?}",
        t.elapsed()
    );
    assert!(
        e.contains("stopped and discarded") && e.contains("caravan create slow"),
        "{e}"
    );
    wait_for(
        Duration::from_secs(30),
        "the discarded copy deleted",
        || staging(&root).is_empty(),
    );
    assert!(!ok(&a, &["list"]).contains("slow"));

    // The daemon killed while copying: no volume; its next start deletes the copy.
    let (status, v) = a.api(
        "POST",
        "/v1/copies",
        r#"{"name":"cut","options":{"from_volume":"big"}}"#,
    );
    assert_eq!(status, 202, "{v}");
    wait_for(Duration::from_secs(30), "the copy under way", || {
        staging(&root).iter().any(|t| t.starts_with("cut@a@"))
    });
    a.kill9();
    assert!(!ok(&c, &["list"]).contains("cut"));
    a.spawn();
    wait_for(Duration::from_secs(30), "the leftover copy deleted", || {
        staging(&root).is_empty()
    });
    assert!(!ok(&a, &["list"]).contains("cut"));
    assert!(a.log_text().contains("left unfinished"));
}
