//! Backups through the CLI and Docker's API, as a user makes them: two daemons on one
//! root (two hosts sharing an export), backups made on one to a folder and to a real S3
//! server (moto) and restored on the other, compared entry by entry; a second backup that
//! sends only what changed; deletion; and the faults: a daemon killed during a backup and
//! during a restore, the CLI interrupted, a damaged chunk.

mod util;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use util::s3::S3Server;
use util::{require_root, Daemon, Scratch};

fn ok(d: &Daemon, args: &[&str]) -> String {
    util::cli_ok(&d.socket, args)
}

fn fails(d: &Daemon, args: &[&str]) -> String {
    let out = Command::new(util::caravan_bin())
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "caravan {} should fail",
        args.join(" ")
    );
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

fn json(d: &Daemon, args: &[&str]) -> Value {
    serde_json::from_str(&ok(d, args)).unwrap()
}

fn data(root: &Path, v: &str) -> PathBuf {
    root.join("volumes").join(v).join("data")
}

/// A daemon with the S3 server's settings in its environment.
fn daemon(s: &Scratch, root: &Path, node: &str, s3: &S3Server) -> Daemon {
    let mut d = Daemon::new(
        s.path(),
        root,
        node,
        s.path().join(format!("spec-{node}")),
        "caravan",
        &[],
    );
    d.env = s3.env.clone();
    d.spawn();
    d
}

/// Bytes that do not compress.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn a_backup_made_on_one_host_is_restored_on_another_from_a_folder_and_from_s3() {
    if !require_root("backups_across_hosts") {
        return;
    }
    let s = Scratch::new();
    let s3 = S3Server::local(&s.path().join("s3"));
    let root = s.path().join("root");
    let a = daemon(&s, &root, "a", &s3);
    let b = daemon(&s, &root, "b", &s3);
    ok(&a, &["create", "web"]);
    util::rich_tree(&data(&root, "web"), 2000, 256 << 20);
    for i in 0..20 {
        std::fs::write(
            data(&root, "web").join(format!("blob{i}")),
            noise(i, 1 << 20),
        )
        .unwrap();
    }
    let vfs = format!("vfs://{}", s.path().join("backups").display());
    let bucket = format!("s3://{}/caravan/prod", s3.bucket);

    let to_vfs = ok(&a, &["backup", "create", "web", "--dest", &vfs]);
    assert!(
        to_vfs.starts_with(&format!("{vfs}?backup=")) && to_vfs.ends_with("&volume=web"),
        "{to_vfs}"
    );
    let made: Value = json(
        &a,
        &["backup", "create", "web", "--dest", &bucket, "--json"],
    );
    let to_s3 = made["url"].as_str().unwrap().to_string();
    assert_eq!(made["tree"]["files"], 2000 + 20 + 7, "{made}");
    assert_eq!(
        made["consistency"].as_str().unwrap(),
        "consistent: the volume was mounted nowhere when the backup began"
    );

    // The other host lists and inspects them, and restores each.
    let listed = json(&b, &["backup", "list", &vfs, "--json"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["url"].as_str().unwrap(), to_vfs);
    let table = ok(&b, &["backup", "list", &bucket]);
    assert!(table.contains(&to_s3), "{table}");
    let shown = ok(&b, &["backup", "inspect", &to_s3]);
    assert!(
        shown.contains("2027 files") && shown.contains("Source:      web on a"),
        "{shown}"
    );

    // Trusted sources (this test's own backups): restored with everything they hold.
    ok(
        &b,
        &[
            "create",
            "from-folder",
            "--from-backup",
            &to_vfs,
            "--keep-privileges",
        ],
    );
    let web = util::tree_listing(&data(&root, "web"));
    util::assert_same_rich_tree(&web, &data(&root, "from-folder"));
    // Through Docker's API with Convoy's option name, from S3.
    b.ok(
        "VolumeDriver.Create",
        &format!(r#"{{"Name":"from-s3","Opts":{{"backup":"{to_s3}","keep_privileges":"true"}}}}"#),
    );
    util::assert_same_rich_tree(&web, &data(&root, "from-s3"));
    let inspect = json(&a, &["inspect", "from-s3", "--json"]);
    assert_eq!(
        inspect["options"]["from_backup"].as_str(),
        Some(to_s3.as_str()),
        "{inspect}"
    );

    // Into a name that exists: refused, nothing overwritten.
    let e = fails(&b, &["create", "web", "--from-backup", &to_vfs]);
    assert!(e.contains("already exists"), "{e}");
    // The same create again is answered with the volume (Create is idempotent).
    ok(
        &b,
        &[
            "create",
            "from-folder",
            "--from-backup",
            &to_vfs,
            "--keep-privileges",
        ],
    );

    // A second backup after 1 of 20 blobs changed sends about that much.
    std::fs::write(data(&root, "web").join("blob7"), noise(99, 1 << 20)).unwrap();
    let second: Value = json(&a, &["backup", "create", "web", "--dest", &vfs, "--json"]);
    let sent = second["sent"]["new_bytes"].as_u64().unwrap();
    assert!(
        sent < 3 << 20,
        "a second backup sent {sent} bytes: {second}"
    );
    assert!(
        second["sent"]["reused_bytes"].as_u64().unwrap() >= 19 << 20,
        "{second}"
    );

    // Deleting the first keeps what the second needs; the second still restores whole.
    let deleted = ok(&b, &["backup", "delete", &to_vfs]);
    assert!(deleted.starts_with("deleted "), "{deleted}");
    assert_eq!(
        json(&a, &["backup", "list", &vfs, "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let second_url = second["url"].as_str().unwrap();
    let verified = ok(&a, &["backup", "verify", second_url]);
    assert!(verified.starts_with("checked "), "{verified}");
    ok(
        &b,
        &[
            "create",
            "second",
            "--from-backup",
            second_url,
            "--keep-privileges",
        ],
    );
    let web = util::tree_listing(&data(&root, "web"));
    util::assert_same_rich_tree(&web, &data(&root, "second"));

    // A snapshot is backed up as the point in time it is.
    ok(&a, &["snapshot", "create", "web", "s1"]);
    std::fs::write(data(&root, "web").join("after-the-snapshot"), "not in it").unwrap();
    let of_snap: Value = json(
        &a,
        &["backup", "create", "web@s1", "--dest", &bucket, "--json"],
    );
    assert_eq!(of_snap["snapshot"], "s1");
    ok(
        &b,
        &[
            "create",
            "from-snap",
            "--from-backup",
            of_snap["url"].as_str().unwrap(),
        ],
    );
    assert!(!data(&root, "from-snap").join("after-the-snapshot").exists());
    assert!(data(&root, "from-snap").join("blob7").exists());
}

#[test]
fn bad_urls_and_sources_are_refused_with_what_is_accepted() {
    if !require_root("backup_input") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let a = Daemon::start(s.path(), &root, "a");
    ok(&a, &["create", "web"]);
    let e = fails(&a, &["backup", "create", "web", "--dest", "ftp://x"]);
    assert!(e.contains("accepted: vfs:///"), "{e}");
    // Not on the shared root, by its path or through a link to it.
    let on_root = format!("vfs://{}/backups", root.display());
    let e = fails(&a, &["backup", "create", "web", "--dest", &on_root]);
    assert!(e.contains("on the shared root"), "{e}");
    std::os::unix::fs::symlink(&root, s.path().join("to-root")).unwrap();
    let via_link = format!("vfs://{}/backups", s.path().join("to-root").display());
    let e = fails(&a, &["backup", "list", &via_link]);
    assert!(e.contains("on the shared root"), "{e}");
    assert!(
        !root.join("backups").exists(),
        "nothing written on the root"
    );
    let e = fails(
        &a,
        &["backup", "create", "nothere", "--dest", "vfs:///tmp/x"],
    );
    assert!(e.contains("no such volume"), "{e}");
    let e = fails(
        &a,
        &["backup", "create", "web@nosnap", "--dest", "vfs:///tmp/x"],
    );
    assert!(e.contains("no complete snapshot"), "{e}");
    let e = fails(&a, &["create", "new", "--from-backup", "vfs:///tmp/x"]);
    assert!(e.contains("not a backup URL"), "{e}");
    let e = a.err(
        "VolumeDriver.Create",
        r#"{"Name":"new","Opts":{"from_backup":"vfs:///tmp/x?backup=../../etc"}}"#,
    );
    assert!(e.contains("backup name"), "{e}");
    let dest = s.path().join("empty");
    let e = fails(
        &a,
        &[
            "create",
            "new",
            "--from-backup",
            &format!("vfs://{}?backup=b1", dest.display()),
        ],
    );
    assert!(e.contains("holds no caravan backups"), "{e}");
    assert!(!data(&root, "new").exists());
    assert_eq!(
        ok(
            &a,
            &["backup", "list", &format!("vfs://{}", dest.display())]
        )
        .lines()
        .count(),
        1,
        "a header, no backups"
    );
}

/// Waits until the destination folder holds at least one whole pack index (a pack sent;
/// the index being written is a hidden temporary name until it is complete).
fn wait_for_a_pack(dest: &Path) {
    util::eventually(Duration::from_secs(60), "a pack sent", || {
        std::fs::read_dir(dest.join("index"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .any(|e| !e.file_name().to_string_lossy().starts_with('.'))
            })
            .unwrap_or(false)
    });
}

#[test]
fn a_backup_or_restore_interrupted_by_a_kill_or_ctrl_c_is_never_listed_or_left_half_made() {
    if !require_root("backup_faults") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let mut a = Daemon::start(s.path(), &root, "a");
    ok(&a, &["create", "big"]);
    for i in 0..12 {
        std::fs::write(
            data(&root, "big").join(format!("blob{i:02}")),
            noise(i, 16 << 20),
        )
        .unwrap();
    }
    let dest_dir = s.path().join("backups");
    let dest = format!("vfs://{}", dest_dir.display());

    // The daemon killed during a backup: nothing listed; the next backup reuses what was
    // sent.
    let mut cli = Command::new(util::caravan_bin())
        .arg("--socket")
        .arg(&a.socket)
        .args(["backup", "create", "big", "--dest", &dest])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_a_pack(&dest_dir);
    a.kill9();
    assert!(!cli.wait().unwrap().success());
    a.spawn();
    assert_eq!(
        json(&a, &["backup", "list", &dest, "--json"]),
        Value::Array(vec![])
    );
    let made: Value = json(&a, &["backup", "create", "big", "--dest", &dest, "--json"]);
    let reused = made["sent"]["reused_bytes"].as_u64().unwrap();
    assert!(
        reused >= 16 << 20,
        "the chunks sent before the kill are reused: {made}"
    );
    let url = made["url"].as_str().unwrap().to_string();

    // Ctrl-C on the CLI: the backup stops, is not listed, and its lock is released.
    let mut cli = Command::new(util::caravan_bin())
        .arg("--socket")
        .arg(&a.socket)
        .args([
            "backup",
            "create",
            "big",
            "--dest",
            &format!("{dest}-2"),
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(cli.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(
        first.contains("\"bytes\""),
        "progress as JSON lines: {first}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(cli.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert!(!cli.wait().unwrap().success());
    let second = PathBuf::from(format!("{}-2", dest_dir.display()));
    util::eventually(
        Duration::from_secs(30),
        "the stopped backup's lock released",
        || {
            std::fs::read_dir(second.join("locks"))
                .map(|d| d.count() == 0)
                .unwrap_or(true)
        },
    );
    assert_eq!(
        json(&a, &["backup", "list", &format!("{dest}-2"), "--json"]),
        Value::Array(vec![])
    );

    // Ctrl-C as soon as the CLI has connected to ask for the backup, before it first looks
    // at the job: the backup stops all the same. (The CLI used to catch Ctrl-C only from its
    // first look at the job; before that, Ctrl-C killed it, and a backup already begun ran
    // on to the end and was listed: seen once in CI.) The connection is the third socket
    // the CLI holds: its runtime's signal pipe is the first two.
    let third = PathBuf::from(format!("{}-3", dest_dir.display()));
    let mut cli = Command::new(util::caravan_bin())
        .arg("--socket")
        .arg(&a.socket)
        .args(["backup", "create", "big", "--dest", &format!("{dest}-3")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Distinct sockets: the runtime keeps a second descriptor of one end of its pipe.
    let sockets = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                    .filter(|l| l.to_string_lossy().starts_with("socket:"))
                    .collect::<std::collections::BTreeSet<_>>()
                    .len()
            })
            .unwrap_or(0)
    };
    let pid = cli.id();
    let asked = Instant::now();
    while sockets(pid) < 3 {
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "the CLI never connected to the daemon"
        );
        std::hint::spin_loop();
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(cli.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = cli.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(1),
        "the CLI caught Ctrl-C and said the backup stopped (not killed by it): {status}"
    );
    util::eventually(
        Duration::from_secs(30),
        "the stopped backup's lock released",
        || {
            std::fs::read_dir(third.join("locks"))
                .map(|d| d.count() == 0)
                .unwrap_or(true)
        },
    );
    assert_eq!(
        json(&a, &["backup", "list", &format!("{dest}-3"), "--json"]),
        Value::Array(vec![])
    );

    // The daemon killed during a restore: no volume, and its staging copy is deleted at
    // the next start; the restore then works.
    let mut cli = Command::new(util::caravan_bin())
        .arg("--socket")
        .arg(&a.socket)
        .args(["create", "restored", "--from-backup", &url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let staging = root.join(".caravan/staging");
    // Looked at every millisecond: the restore of 192 MiB takes about a second.
    let t = Instant::now();
    while !std::fs::read_dir(&staging)
        .map(|d| d.count() > 0)
        .unwrap_or(false)
    {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the restore did not begin"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    a.kill9();
    assert!(
        !data(&root, "restored").exists(),
        "killed before the restore was done"
    );
    let _ = cli.wait();
    a.spawn();
    util::eventually(
        Duration::from_secs(30),
        "the interrupted restore deleted",
        || {
            std::fs::read_dir(&staging)
                .map(|d| d.count() == 0)
                .unwrap_or(false)
        },
    );
    assert!(!data(&root, "restored").exists());
    let t = Instant::now();
    ok(&a, &["create", "restored", "--from-backup", &url]);
    println!("restore of 192 MiB: {} ms", t.elapsed().as_millis());
    for i in [0, 11] {
        let name = format!("blob{i:02}");
        assert_eq!(
            std::fs::read(data(&root, "restored").join(&name)).unwrap(),
            noise(i, 16 << 20),
            "{name}"
        );
    }

    // A damaged chunk: verify names the file, and so does a restore (which leaves nothing).
    let packs: Vec<_> = std::fs::read_dir(dest_dir.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let index: Value = serde_json::from_slice(
        &std::fs::read(dest_dir.join("index").join(packs[0].file_name().unwrap())).unwrap(),
    )
    .unwrap();
    let at = index["chunks"][0]["offset"].as_u64().unwrap() + 100;
    let mut bytes = std::fs::read(&packs[0]).unwrap();
    bytes[at as usize] ^= 0x55;
    std::fs::write(&packs[0], bytes).unwrap();
    let e = fails(&a, &["backup", "verify", &url]);
    assert!(e.contains("is damaged") && e.contains("/blob"), "{e}");
    let out = Command::new(util::caravan_bin())
        .arg("--socket")
        .arg(&a.socket)
        .args(["backup", "verify", &url])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("DAMAGED /blob"), "{report}");
    let e = fails(&a, &["create", "damaged", "--from-backup", &url]);
    assert!(
        e.contains("/blob") && e.contains("is damaged in backup"),
        "{e}"
    );
    assert!(!data(&root, "damaged").exists());
}

/// Issue 24, 6: a restore carries over no set-id bits, no `security.`/`trusted.`
/// attributes and not the backed-up top folder's mode unless asked: a backup store that
/// another machine can write must not give root-owned set-uid programs to a volume.
#[test]
fn a_restore_gives_no_set_id_programs_unless_asked() {
    if !require_root("a_restore_gives_no_set_id_programs_unless_asked") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new();
    let root = s.path().join("root");
    let a = Daemon::start(s.path(), &root, "a");
    ok(&a, &["create", "src-vol"]);
    let src = data(&root, "src-vol");
    std::fs::write(src.join("tool"), "#!/bin/sh\nid -u\n").unwrap();
    std::fs::set_permissions(src.join("tool"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o7777)).unwrap();
    let dest = format!("vfs://{}", s.path().join("backups").display());
    let url = ok(&a, &["backup", "create", "src-vol", "--dest", &dest]);
    let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;

    let out = Command::new(util::caravan_bin())
        .arg("--socket")
        .arg(&a.socket)
        .args(["create", "plain", "--from-backup", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("--keep-privileges"),
        "the CLI says what was dropped: {said}"
    );
    assert_eq!(mode(data(&root, "plain").join("tool")), 0o755);
    assert_eq!(
        mode(data(&root, "plain")),
        0o755,
        "the new volume's own mode"
    );

    ok(
        &a,
        &[
            "create",
            "trusted",
            "--from-backup",
            &url,
            "--keep-privileges",
        ],
    );
    assert_eq!(mode(data(&root, "trusted").join("tool")), 0o4755);
    assert_eq!(mode(data(&root, "trusted")), 0o7777);

    // Docker's way, and a clone, the same.
    a.ok(
        "VolumeDriver.Create",
        &format!(r#"{{"Name":"docker-made","Opts":{{"from_backup":"{url}"}}}}"#),
    );
    assert_eq!(mode(data(&root, "docker-made").join("tool")), 0o755);
    ok(&a, &["create", "cloned", "--from-volume", "src-vol"]);
    assert_eq!(mode(data(&root, "cloned").join("tool")), 0o755);
    let e = fails(&a, &["create", "lonely", "--keep-privileges"]);
    assert!(e.contains("keep_privileges is for copies"), "{e}");
}
