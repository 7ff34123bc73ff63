//! The export is hostile input: another machine can plant links where caravan works. Each
//! test plants links to canary files and folders outside the root and checks that the
//! daemon, running as root, never deletes, overwrites, chmods or mounts them (issue 12's
//! defects 1 to 4).

mod util;

use std::fs;
use std::path::Path;
use std::time::Duration;

use util::{require_root, Daemon, Scratch};

/// A canary folder outside the root with a file and a subfolder in it.
fn canary_tree(s: &Scratch) -> std::path::PathBuf {
    let c = s.path().join("canary");
    fs::create_dir_all(c.join("sub")).unwrap();
    fs::write(c.join("file"), "host data").unwrap();
    fs::write(c.join("sub/file"), "host data").unwrap();
    c
}

fn assert_canary_intact(c: &Path) {
    assert_eq!(fs::read_to_string(c.join("file")).unwrap(), "host data");
    assert_eq!(fs::read_to_string(c.join("sub/file")).unwrap(), "host data");
}

/// Defect 1: a trash replaced by a link to a host folder is never emptied; removes are
/// refused with a message naming it, and the host folder survives.
#[test]
fn a_trash_replaced_by_a_link_is_never_emptied() {
    if !require_root("a_trash_replaced_by_a_link_is_never_emptied") {
        return;
    }
    let s = Scratch::new();
    let canary = canary_tree(&s);
    let root = s.path().join("root");
    let mut d = Daemon::start(s.path(), &root, "a");
    d.ok("VolumeDriver.Create", r#"{"Name":"vol","Opts":{}}"#);
    assert!(d.stop().success());
    let trash = root.join(".caravan/trash");
    fs::remove_dir(&trash).unwrap();
    std::os::unix::fs::symlink(&canary, &trash).unwrap();
    // A start refuses the root, naming the link.
    let (status, err) = util::daemon_that_must_exit(
        &s.path().join("second"),
        &root,
        "a",
        "a start on a root whose trash is a link",
    );
    assert!(!status.success(), "{err}");
    assert!(
        err.contains(".caravan/trash") && err.contains("symlink"),
        "{err}"
    );
    assert_canary_intact(&canary);
    // Planted under a running daemon: removes fail, naming it; nothing is deleted.
    fs::remove_file(&trash).unwrap();
    fs::create_dir(&trash).unwrap();
    d.spawn();
    d.ok("VolumeDriver.Create", r#"{"Name":"vol2","Opts":{}}"#);
    fs::remove_dir(&trash).unwrap();
    std::os::unix::fs::symlink(&canary, &trash).unwrap();
    util::eventually(Duration::from_secs(5), "removes to be refused", || {
        let v = d.plugin("VolumeDriver.Remove", r#"{"Name":"vol2"}"#);
        v["Err"].as_str().unwrap_or("").contains("symlink")
    });
    assert_canary_intact(&canary);
    assert!(
        root.join("volumes/vol2/data").is_dir(),
        "the volume's data stays"
    );
}

/// Defect 3: a volume folder replaced by a link to a host folder is not mounted, not
/// created through, and not chmod-ed or written into.
#[test]
fn a_volume_folder_replaced_by_a_link_is_refused() {
    if !require_root("a_volume_folder_replaced_by_a_link_is_refused") {
        return;
    }
    let s = Scratch::new();
    let canary = canary_tree(&s);
    let root = s.path().join("root");
    let d = Daemon::start(s.path(), &root, "a");
    d.ok("VolumeDriver.Create", r#"{"Name":"vol","Opts":{}}"#);
    let vdir = root.join("volumes/vol");
    fs::remove_dir_all(&vdir).unwrap();
    fs::create_dir(canary.join("data")).unwrap();
    std::os::unix::fs::symlink(&canary, &vdir).unwrap();
    let err = d.err("VolumeDriver.Mount", r#"{"Name":"vol","ID":"m1"}"#);
    assert!(err.contains("never works through links"), "{err}");
    assert!(!util::is_mountpoint(&d.mountpoint("vol")));
    // A create of a new name whose folder another machine made a link first.
    std::os::unix::fs::symlink(&canary, root.join("volumes/planted")).unwrap();
    let before = fs::metadata(&canary).unwrap().permissions();
    let err = d.err(
        "VolumeDriver.Create",
        r#"{"Name":"planted","Opts":{"mode":"0777","uid":"1234"}}"#,
    );
    assert!(err.contains("never works through links"), "{err}");
    assert!(
        !canary.join("volume.json").exists(),
        "no record written outside"
    );
    assert_eq!(fs::metadata(&canary).unwrap().permissions(), before);
    use std::os::unix::fs::MetadataExt;
    assert_ne!(fs::metadata(canary.join("data")).unwrap().uid(), 1234);
    assert_canary_intact(&canary);
}

/// Defects 2 and 4: temporary names and the generation file planted as links to a host
/// file: the host file is never overwritten or truncated.
#[test]
fn planted_temporary_names_and_a_linked_generation_file_overwrite_nothing() {
    if !require_root("planted_temporary_names_and_a_linked_generation_file_overwrite_nothing") {
        return;
    }
    let s = Scratch::new();
    let canary = canary_tree(&s);
    let root = s.path().join("root");
    let d = Daemon::start(s.path(), &root, "a");
    // The old predictable names, for the next writes of this daemon.
    let pid = d.pid();
    for n in 0..200 {
        for f in [
            format!(".caravan/nodes/a.tmp.{pid}.{n}"),
            format!("volumes/vol.tmp.{pid}.{n}"),
        ] {
            let _ = std::os::unix::fs::symlink(canary.join("file"), root.join(f));
        }
    }
    d.ok("VolumeDriver.Create", r#"{"Name":"vol","Opts":{}}"#);
    d.ok("VolumeDriver.Create", r#"{"Name":"vol","Opts":{}}"#);
    // Heartbeats keep being written (two more rounds), the host file is untouched.
    let seq = || -> u64 {
        fs::read(root.join(".caravan/nodes/a.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["seq"].as_u64())
            .unwrap_or(0)
    };
    let first = seq();
    util::eventually(Duration::from_secs(10), "two more heartbeats", || {
        seq() >= first + 2
    });
    assert_canary_intact(&canary);
    // A link planted at the generation hint is replaced under the lock, never written
    // through (issue 24: before, every commit failed on it).
    let generation = root.join(".caravan/generation");
    fs::remove_file(&generation).unwrap();
    std::os::unix::fs::symlink(canary.join("file"), &generation).unwrap();
    d.ok("VolumeDriver.Create", r#"{"Name":"other","Opts":{}}"#);
    assert_canary_intact(&canary);
    assert!(fs::symlink_metadata(&generation).unwrap().is_file());
}

/// Issue 24, 1: a block device planted at the generation hint (a loop device standing for
/// a host disk) is never opened: the next commit replaces it, the disk is untouched, and
/// the log says what was there. A FIFO there is reported by `caravan doctor` before that,
/// and reads do not block on it.
#[test]
fn a_device_or_fifo_planted_at_the_hint_is_never_opened_and_is_replaced() {
    if !require_root("a_device_or_fifo_planted_at_the_hint_is_never_opened_and_is_replaced") {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let s = Scratch::new();
    let disk = s.path().join("disk.img");
    fs::write(&disk, vec![0xA5u8; 1 << 20]).unwrap();
    let out = std::process::Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&disk)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let loopdev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &self.0])
                .status();
        }
    }
    let _detach = Detach(loopdev.clone());
    let rdev = fs::metadata(&loopdev).unwrap().rdev();

    let root = s.path().join("root");
    let d = Daemon::start(s.path(), &root, "a");
    d.ok("VolumeDriver.Create", r#"{"Name":"one","Opts":{}}"#);
    let generation = root.join(".caravan/generation");
    fs::remove_file(&generation).unwrap();
    nix::sys::stat::mknod(
        &generation,
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        rdev,
    )
    .unwrap();
    // Commits go on; the first hold that opens the hint after the plant replaces it (a
    // hold already under way writes through the handle it opened before).
    let mut n = 0;
    util::eventually(
        Duration::from_secs(10),
        "a hold to replace the device",
        || {
            n += 1;
            let body = format!(r#"{{"Name":"after-{n}","Opts":{{}}}}"#);
            d.ok("VolumeDriver.Create", &body);
            fs::symlink_metadata(&generation).is_ok_and(|m| m.is_file())
        },
    );
    let disk_now = fs::read(&loopdev).unwrap();
    assert!(
        disk_now.iter().all(|b| *b == 0xA5),
        "the block device planted at the hint was written"
    );
    assert!(fs::symlink_metadata(&generation).unwrap().is_file());
    assert!(
        d.log_text()
            .contains("the generation hint is a block device"),
        "{}",
        d.log_text()
    );

    // A FIFO: doctor names it; reads answer (never blocked on it); a commit replaces it.
    fs::remove_file(&generation).unwrap();
    nix::unistd::mkfifo(&generation, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let (status, report) = d.api("GET", "/v1/doctor", "");
    assert_eq!(status, 200, "{report}");
    let finding = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "control_file_refused")
        .unwrap_or_else(|| panic!("{report}"))
        .clone();
    assert!(
        finding["detail"]
            .as_str()
            .unwrap()
            .contains("generation is a FIFO"),
        "{finding}"
    );
    d.ok("VolumeDriver.Get", r#"{"Name":"one"}"#);
    util::eventually(
        Duration::from_secs(10),
        "a hold to replace the FIFO",
        || {
            n += 1;
            let body = format!(r#"{{"Name":"after-{n}","Opts":{{}}}}"#);
            d.ok("VolumeDriver.Create", &body);
            fs::symlink_metadata(&generation).is_ok_and(|m| m.is_file())
        },
    );
    let (_, report) = d.api("GET", "/v1/doctor", "");
    assert!(
        !report.to_string().contains("control_file_refused"),
        "{report}"
    );
}

/// Issue 24, 2: one false hint (the largest number there is) does not stop the cluster:
/// commits on every node go on with numbers next to the metadata's own, and the hint is
/// put back.
#[test]
fn a_false_hint_does_not_stop_the_cluster() {
    if !require_root("a_false_hint_does_not_stop_the_cluster") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let a = Daemon::start(s.path(), &root, "a");
    let b = Daemon::start(s.path(), &root, "b");
    a.ok("VolumeDriver.Create", r#"{"Name":"one","Opts":{}}"#);
    let generation = root.join(".caravan/generation");
    fs::write(&generation, format!("{}\n", u64::MAX)).unwrap();
    for (d, v) in [(&a, "two"), (&b, "three"), (&a, "four")] {
        util::eventually(Duration::from_secs(10), "a create", || {
            d.plugin(
                "VolumeDriver.Create",
                &format!(r#"{{"Name":"{v}","Opts":{{}}}}"#),
            )["Err"]
                == ""
        });
        d.ok(
            "VolumeDriver.Mount",
            &format!(r#"{{"Name":"{v}","ID":"x"}}"#),
        );
    }
    let hint: u64 = fs::read_to_string(&generation)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(hint < 1000, "the hint was not put back: {hint}");
    let listed = b.ok("VolumeDriver.List", "{}");
    assert_eq!(listed["Volumes"].as_array().unwrap().len(), 4, "{listed}");
}

/// Issue 24, 1: device nodes on the export are not honoured through a volume's mount
/// (another machine can create one in a volume's folder): the bind mount is `nodev`.
#[test]
fn a_device_node_in_a_volume_is_not_honoured_through_its_mount() {
    if !require_root("a_device_node_in_a_volume_is_not_honoured_through_its_mount") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let d = Daemon::start(s.path(), &root, "a");
    d.ok("VolumeDriver.Create", r#"{"Name":"vol","Opts":{}}"#);
    // Planted by another machine: /dev/zero's numbers.
    nix::sys::stat::mknod(
        &root.join("volumes/vol/data/zero"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 5),
    )
    .unwrap();
    let mp = d.ok("VolumeDriver.Mount", r#"{"Name":"vol","ID":"c1"}"#)["Mountpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let e = fs::File::open(Path::new(&mp).join("zero")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(nix::libc::EACCES), "{e}");
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(mp.as_str()))
        .unwrap();
    assert!(line.split(' ').nth(5).unwrap().contains("nodev"), "{line}");
    d.ok("VolumeDriver.Unmount", r#"{"Name":"vol","ID":"c1"}"#);
}

/// The start-up write check never writes through a link planted at its name.
#[test]
fn the_start_up_write_check_never_writes_through_a_planted_link() {
    if !require_root("the_start_up_write_check_never_writes_through_a_planted_link") {
        return;
    }
    let s = Scratch::new();
    let canary = canary_tree(&s);
    let root = s.path().join("root");
    fs::create_dir_all(root.join(".caravan/nodes")).unwrap();
    std::os::unix::fs::symlink(canary.join("file"), root.join(".caravan/nodes/.probe-a")).unwrap();
    let d = Daemon::start(s.path(), &root, "a");
    d.ok("VolumeDriver.Create", r#"{"Name":"vol","Opts":{}}"#);
    assert_canary_intact(&canary);
}

/// Defect 6: records in the store that another machine wrote, with absurd times, counts
/// and keys: they never panic a call, never wrap, never break the listing of the other
/// volumes, and `caravan info` reports the ones it skips.
#[test]
fn absurd_records_from_another_machine_break_nothing() {
    if !require_root("absurd_records_from_another_machine_break_nothing") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let mut d = Daemon::start(s.path(), &root, "a");
    d.ok("VolumeDriver.Create", r#"{"Name":"good"}"#);
    assert!(d.stop().success());
    {
        // As another machine would, straight into the store.
        let (db, t) = util::volumes_tree(&root);
        let rec = |name: &str, rest: &str| {
            format!(r#"{{"name":"{name}","created_by":"x","options":{{}},{rest}}}"#)
        };
        let max = u32::MAX;
        for (key, value) in [
            ("../../outside", rec("../../outside", r#""created_at":1"#)),
            ("notjson", "{nope".to_string()),
            ("wrongkey", rec("other", r#""created_at":1"#)),
            (
                "future",
                rec("future", &format!(r#""created_at":{}"#, u64::MAX)),
            ),
            ("year10k", rec("year10k", r#""created_at":253402300800"#)),
            (
                "zero",
                rec("zero", r#""created_at":1,"mounts":{"a":{"c1":0}}"#),
            ),
            (
                "huge",
                rec(
                    "huge",
                    &format!(r#""created_at":1,"mounts":{{"b":{{"x":{max},"y":{max}}}}}"#),
                ),
            ),
        ] {
            t.insert(key, value.as_bytes()).unwrap();
        }
        db.flush().unwrap();
    }
    d.spawn();
    let list = d.ok("VolumeDriver.List", "{}");
    let mut names: Vec<&str> = list["Volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["Name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["future", "good", "huge", "year10k", "zero"],
        "{list}"
    );
    for name in ["future", "year10k"] {
        let v = d.ok("VolumeDriver.Get", &format!(r#"{{"Name":"{name}"}}"#));
        assert_eq!(v["Volume"]["CreatedAt"], "1970-01-01T00:00:00Z", "{v}");
    }
    // A stored count of 0 never wraps: the unmount leaves the volume removable.
    d.ok("VolumeDriver.Unmount", r#"{"Name":"zero","ID":"c1"}"#);
    d.ok("VolumeDriver.Remove", r#"{"Name":"zero"}"#);
    // Counts past u32::MAX still count as mounted, never as 0.
    let err = d.err("VolumeDriver.Remove", r#"{"Name":"huge"}"#);
    assert!(err.contains("in use"), "{err}");
    let (status, info) = d.api("GET", "/v1/info", "");
    assert_eq!(status, 200, "{info}");
    let skipped = info["skipped_records"].as_object().unwrap();
    assert_eq!(skipped.len(), 3, "{info}");
    assert!(skipped["\"../../outside\""]
        .as_str()
        .unwrap()
        .contains("not a valid volume name"));
    assert!(skipped["\"wrongkey\""]
        .as_str()
        .unwrap()
        .contains("names volume"));
    assert!(d.log_text().contains("skipping a stored record"));
}

/// Defect 5: a FIFO and a 300 MB sparse file planted as heartbeats in `.caravan/nodes/`:
/// neither blocks nor bloats the heartbeat, every mutation still works, and the log names
/// both.
#[test]
fn a_fifo_and_a_huge_file_planted_as_heartbeats_are_skipped() {
    if !require_root("a_fifo_and_a_huge_file_planted_as_heartbeats_are_skipped") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let a = Daemon::start(s.path(), &root, "a");
    let nodes = root.join(".caravan/nodes");
    nix::unistd::mkfifo(
        &nodes.join("fifo.json"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let huge = fs::File::create(nodes.join("huge.json")).unwrap();
    huge.set_len(300 << 20).unwrap();
    // Three heartbeat rounds read (or skip) them.
    util::eventually(
        Duration::from_secs(10),
        "warnings naming both files",
        || {
            let log = a.log_text();
            log.contains("fifo.json") && log.contains("huge.json")
        },
    );
    let t = std::time::Instant::now();
    a.ok("VolumeDriver.Create", r#"{"Name":"after"}"#);
    a.ok("VolumeDriver.Remove", r#"{"Name":"after"}"#);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "mutations took {:?}",
        t.elapsed()
    );
    let status = fs::read_to_string(format!("/proc/{}/status", a.pid())).unwrap();
    let hwm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(hwm_kib < 128 << 10, "peak memory {hwm_kib} KiB");
    let (_, info) = a.api("GET", "/v1/info", "");
    assert!(info["standing"]["cut_off"].is_null(), "{info}");
}

/// Issue 24, 4: change-journal entries are not authenticated (anyone who can write the
/// export can write one): what one says only answers reads until sled confirms it. A
/// forged removal never makes Docker's Get answer "no such volume" (dockerd would forget
/// the volume), forged mounts of a killed node's incarnation never keep it alive, and the
/// listing is put back from sled within the confirmation delay.
#[test]
fn forged_journal_entries_never_decide_nor_keep_a_dead_node_alive() {
    if !require_root("forged_journal_entries_never_decide_nor_keep_a_dead_node_alive") {
        return;
    }
    use caravan::core::volume::{VolumeOptions, VolumeRecord};
    let s = Scratch::new();
    let root = s.path().join("root");
    let fast = ["--heartbeat", "200ms", "--dead-after", "2s"];
    let start = |node: &str| {
        let spec = s.path().join(format!("spec-{node}"));
        Daemon::start_with(s.path(), &root, node, spec, "caravan", &fast)
    };
    let a = start("a");
    let b = start("b");
    let mut c = start("c");
    a.ok("VolumeDriver.Create", r#"{"Name":"keep","Opts":{}}"#);
    c.ok("VolumeDriver.Create", r#"{"Name":"cv","Opts":{}}"#);
    c.ok("VolumeDriver.Mount", r#"{"Name":"cv","ID":"c1"}"#);
    b.ok("VolumeDriver.Get", r#"{"Name":"keep"}"#);
    let heartbeat: serde_json::Value =
        serde_json::from_slice(&fs::read(root.join(".caravan/nodes/c.json")).unwrap()).unwrap();
    let c_boot = heartbeat["boot_id"].as_str().unwrap().to_string();
    let store_id = fs::read_to_string(root.join(".caravan/store-id"))
        .unwrap()
        .trim()
        .to_string();
    let hint = root.join(".caravan/generation");
    // Writes the next commit's entry and moves the hint, as a commit would.
    let forge = |changes: std::collections::BTreeMap<String, Option<VolumeRecord>>| {
        let g: u64 = fs::read_to_string(&hint).unwrap().trim().parse().unwrap();
        let next = g + 1;
        fs::write(
            root.join(format!(".caravan/journal/{next:020}")),
            caravan::cluster::store::journal::encode(&store_id, next, &changes),
        )
        .unwrap();
        fs::write(&hint, format!("{next:020}\n")).unwrap();
    };

    // A forged removal: b's Get still answers the volume (sled is asked first).
    forge([("keep".to_string(), None)].into());
    let got = b.ok("VolumeDriver.Get", r#"{"Name":"keep"}"#);
    assert_eq!(got["Volume"]["Name"], "keep", "{got}");

    // c is killed; forged entries keep showing its incarnation mounting `cv` anew.
    c.kill9();
    let killed = std::time::Instant::now();
    let mut n = 0;
    while killed.elapsed() < Duration::from_secs(5) {
        n += 1;
        let mut r = VolumeRecord::new("cv", "c", VolumeOptions::default(), 0);
        r.mounts.insert(
            "c".into(),
            [(format!("forged-{n}"), 1)].into_iter().collect(),
        );
        r.incarnations.insert("c".into(), c_boot.clone());
        forge([("cv".to_string(), Some(r))].into());
        std::thread::sleep(Duration::from_millis(100));
        let nodes = a.api("GET", "/v1/nodes", "").1;
        let state = nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["node"] == "c")
            .map(|v| v["state"].clone());
        if state == Some(serde_json::json!("dead")) {
            break;
        }
    }
    let judged = killed.elapsed();
    eprintln!(
        "c judged dead {:.1} s after the kill, with {n} forged entries meanwhile",
        judged.as_secs_f64()
    );
    // Dead after 2 s of silence, plus a heartbeat of slack: forged mounts never count as
    // beats.
    assert!(
        judged < Duration::from_millis(2000 + 400 + 200),
        "{judged:?}"
    );
    // a removes `cv`: sled has c's (dead) mount only; the forged ones never decided.
    a.ok("VolumeDriver.Remove", r#"{"Name":"cv"}"#);

    // A forged ghost in the listing is served for a while (entries answer reads, for
    // speed), and gone once sled confirms (within 10 s and a beat).
    let listed = |d: &Daemon| -> Vec<String> {
        d.ok("VolumeDriver.List", "{}")["Volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["Name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(listed(&b), ["keep"]);
    forge(
        [(
            "ghost".to_string(),
            Some(VolumeRecord::new("ghost", "x", VolumeOptions::default(), 0)),
        )]
        .into(),
    );
    assert_eq!(listed(&b), ["ghost", "keep"]);
    let forged_at = std::time::Instant::now();
    // Within the confirmation delay (10 s), a heartbeat (the loop that confirms runs every
    // one) and a poll.
    let confirmed = (0..120).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        listed(&b) == ["keep"]
    });
    assert!(
        confirmed,
        "the ghost was not confirmed away: {:?}\n{}",
        listed(&b),
        b.log_text()
    );
    eprintln!(
        "the ghost was confirmed away after {:.1} s",
        forged_at.elapsed().as_secs_f64()
    );
}
