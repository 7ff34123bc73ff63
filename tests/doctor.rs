//! `caravan doctor`: each disagreement between the metadata, the export and the host is
//! planted by hand, found, and (where safe) repaired.

mod util;

use std::fs;
use std::time::Duration;

use serde_json::Value;
use util::{is_mountpoint, require_root, Daemon, Scratch};

fn doctor(d: &Daemon, repair: bool) -> (std::process::Output, Value) {
    let mut args = vec!["--socket", d.socket.to_str().unwrap(), "doctor", "--json"];
    if repair {
        args.push("--repair");
    }
    let out = std::process::Command::new(util::caravan_bin())
        .args(&args)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out, v)
}

fn found<'a>(report: &'a Value, kind: &str, volume: &str) -> Option<&'a Value> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == kind && f["volume"] == volume)
}

#[test]
fn a_healthy_node_has_no_findings_and_exits_0() {
    if !require_root("a_healthy_node_has_no_findings_and_exits_0") {
        return;
    }
    let s = Scratch::new();
    let d = Daemon::start(s.path(), &s.path().join("root"), "a");
    d.ok("VolumeDriver.Create", r#"{"Name":"web"}"#);
    d.ok("VolumeDriver.Mount", r#"{"Name":"web","ID":"c1"}"#);
    d.ok(
        "VolumeDriver.Create",
        r#"{"Name":"kept","Opts":{"on_delete":"retain"}}"#,
    );
    d.ok("VolumeDriver.Remove", r#"{"Name":"kept"}"#);
    let (out, v) = doctor(&d, false);
    assert!(out.status.success(), "{v}");
    assert_eq!(v["findings"], serde_json::json!([]), "{v}");
    d.ok("VolumeDriver.Unmount", r#"{"Name":"web","ID":"c1"}"#);
}

#[test]
fn planted_problems_are_found_and_the_safe_ones_repaired() {
    if !require_root("planted_problems_are_found_and_the_safe_ones_repaired") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let mut d = Daemon::start(s.path(), &root, "a");
    for name in ["orphan", "lost", "counted", "stray"] {
        d.ok(
            "VolumeDriver.Create",
            &format!(r#"{{"Name":"{name}","Opts":{{"mode":"0750"}}}}"#),
        );
    }
    fs::write(root.join("volumes/orphan/data/keep.txt"), "precious").unwrap();
    d.ok("VolumeDriver.Mount", r#"{"Name":"counted","ID":"c1"}"#);
    assert!(d.stop().success());
    // The store loses the record of "orphan" (its folder and volume.json stay).
    {
        let (db, tree) = util::volumes_tree(&root);
        tree.remove("orphan").unwrap();
        db.flush().unwrap();
    }
    d.spawn();
    // "lost" loses its folder; "counted" loses its bind mount behind the daemon's back;
    // "stray" gets a bind mount nobody counts; the trash gets a leftover.
    fs::remove_dir_all(root.join("volumes/lost")).unwrap();
    let counted_mp = d.mountpoint("counted");
    d.ok("VolumeDriver.Mount", r#"{"Name":"counted","ID":"c1"}"#);
    let st = std::process::Command::new("umount")
        .arg(&counted_mp)
        .status()
        .unwrap();
    assert!(st.success());
    let stray_mp = d.mountpoint("stray");
    fs::create_dir_all(&stray_mp).unwrap();
    let st = std::process::Command::new("mount")
        .args(["--bind"])
        .arg(root.join("volumes/stray/data"))
        .arg(&stray_mp)
        .status()
        .unwrap();
    assert!(st.success());
    fs::create_dir_all(root.join(".caravan/trash/left-by-a-crash")).unwrap();

    let (out, v) = doctor(&d, false);
    assert_eq!(out.status.code(), Some(1), "{v}");
    for (kind, volume, repairable) in [
        ("data_without_record", "orphan", true),
        ("record_without_data", "lost", false),
        ("counted_not_mounted", "counted", true),
        ("mounted_not_counted", "stray", true),
    ] {
        let f = found(&v, kind, volume).unwrap_or_else(|| panic!("no {kind} for {volume}: {v}"));
        assert_eq!(f["repair"].is_string(), repairable, "{f}");
    }
    assert!(v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["kind"] == "trash_leftovers"));
    // Read-only: nothing changed.
    assert!(is_mountpoint(&stray_mp));
    let (_, again) = doctor(&d, false);
    assert_eq!(again["findings"], v["findings"]);

    let (out, r) = doctor(&d, true);
    assert_eq!(
        out.status.code(),
        Some(1),
        "record_without_data is left: {r}"
    );
    for (kind, volume) in [
        ("data_without_record", "orphan"),
        ("counted_not_mounted", "counted"),
        ("mounted_not_counted", "stray"),
    ] {
        let f = found(&r, kind, volume).unwrap();
        assert_eq!(f["repaired"], serde_json::json!({ "Ok": null }), "{f}");
    }
    // The orphan is a volume again, with its options and its data.
    let get = d.ok("VolumeDriver.Get", r#"{"Name":"orphan"}"#);
    assert_eq!(get["Volume"]["Status"]["options"]["mode"], "0750", "{get}");
    let mp = d.ok("VolumeDriver.Mount", r#"{"Name":"orphan","ID":"c2"}"#)["Mountpoint"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        fs::read_to_string(format!("{mp}/keep.txt")).unwrap(),
        "precious"
    );
    d.ok("VolumeDriver.Unmount", r#"{"Name":"orphan","ID":"c2"}"#);
    // "counted" is no longer counted here, so it can be removed; "stray" is unmounted.
    d.ok("VolumeDriver.Remove", r#"{"Name":"counted"}"#);
    assert!(!is_mountpoint(&stray_mp));
    assert!(d.log_text().contains("doctor repaired"));
    let (_, after) = doctor(&d, false);
    let kinds: Vec<&str> = after["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert!(
        !kinds.contains(&"data_without_record") && !kinds.contains(&"mounted_not_counted"),
        "{after}"
    );
}

#[test]
fn a_dead_holder_and_its_mounts_are_reported() {
    if !require_root("a_dead_holder_and_its_mounts_are_reported") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let fast = ["--dead-after", "3s", "--heartbeat", "1s"];
    let a = Daemon::start_with(
        s.path(),
        &root,
        "a",
        s.path().join("spec-a"),
        "caravan",
        &fast,
    );
    let mut b = Daemon::start_with(
        s.path(),
        &root,
        "b",
        s.path().join("spec-b"),
        "caravan",
        &fast,
    );
    a.ok(
        "VolumeDriver.Create",
        r#"{"Name":"ex","Opts":{"access":"exclusive"}}"#,
    );
    b.ok("VolumeDriver.Mount", r#"{"Name":"ex","ID":"b1"}"#);
    b.kill9();
    util::eventually(Duration::from_secs(15), "b judged dead", || {
        let (_, v) = doctor(&a, false);
        found(&v, "dead_holder", "ex").is_some()
    });
    let (_, v) = doctor(&a, false);
    let f = found(&v, "dead_node_mounts", "ex").unwrap();
    assert!(f["detail"].as_str().unwrap().contains("node b"), "{f}");
    assert!(found(&v, "dead_holder", "ex").unwrap()["detail"]
        .as_str()
        .unwrap()
        .contains("caravan takeover ex"));
}

/// The metadata database lost whole: the daemon starts on an empty one, and `--repair`
/// rebuilds the index from the volumes' `volume.json` files.
#[test]
fn a_lost_database_is_rebuilt_from_the_volume_records() {
    if !require_root("a_lost_database_is_rebuilt_from_the_volume_records") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let mut d = Daemon::start(s.path(), &root, "a");
    d.ok(
        "VolumeDriver.Create",
        r#"{"Name":"one","Opts":{"size":"1G"}}"#,
    );
    d.ok(
        "VolumeDriver.Create",
        r#"{"Name":"two","Opts":{"access":"exclusive"}}"#,
    );
    fs::write(root.join("volumes/two/data/f"), "kept").unwrap();
    assert!(d.stop().success());
    fs::remove_dir_all(root.join(".caravan/meta")).unwrap();
    d.spawn();
    assert_eq!(
        d.ok("VolumeDriver.List", "{}")["Volumes"],
        serde_json::json!([])
    );
    let (out, r) = doctor(&d, true);
    assert!(out.status.success(), "{r}");
    let get = d.ok("VolumeDriver.Get", r#"{"Name":"one"}"#);
    assert_eq!(get["Volume"]["Status"]["size"], "1G", "{get}");
    let get = d.ok("VolumeDriver.Get", r#"{"Name":"two"}"#);
    assert_eq!(get["Volume"]["Status"]["access"], "exclusive", "{get}");
    let mp = d.ok("VolumeDriver.Mount", r#"{"Name":"two","ID":"c1"}"#)["Mountpoint"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(fs::read_to_string(format!("{mp}/f")).unwrap(), "kept");
    d.ok("VolumeDriver.Unmount", r#"{"Name":"two","ID":"c1"}"#);
}

/// The mounts folder itself a mount point (the managed plugin's PropagatedMount is one):
/// not a volume, not a finding, and never unmounted by a repair.
#[test]
fn a_mounts_folder_that_is_itself_a_mount_point_is_no_finding() {
    if !require_root("a_mounts_folder_that_is_itself_a_mount_point_is_no_finding") {
        return;
    }
    let s = Scratch::new();
    let d = Daemon::start(s.path(), &s.path().join("root"), "a");
    d.ok("VolumeDriver.Create", r#"{"Name":"web"}"#);
    let mounts = d.state.join("mounts");
    fs::create_dir_all(&mounts).unwrap();
    let st = std::process::Command::new("mount")
        .arg("--bind")
        .arg(&mounts)
        .arg(&mounts)
        .status()
        .unwrap();
    assert!(st.success());
    let (out, r) = doctor(&d, true);
    let still = is_mountpoint(&mounts);
    let _ = std::process::Command::new("umount").arg(&mounts).status();
    assert!(out.status.success(), "{r}");
    assert_eq!(r["findings"], serde_json::json!([]), "{r}");
    assert!(still, "the repair unmounted the mounts folder");
}

/// Issue 24, 5: a `volume.json` planted by another machine that names a source (here a
/// backup in a folder) steers nothing: the repair adopts the data that is there, never
/// restores from the source, and never makes the source's folder.
#[test]
fn a_planted_volume_json_never_makes_the_repair_restore() {
    if !require_root("a_planted_volume_json_never_makes_the_repair_restore") {
        return;
    }
    use caravan::core::volume::{VolumeOptions, VolumeRecord};
    let s = Scratch::new();
    let root = s.path().join("root");
    let d = Daemon::start(s.path(), &root, "a");
    let made_by_root = s.path().join("made-by-root/deep");
    let url = format!("vfs://{}?backup=backup-1&volume=xx", made_by_root.display());
    let options = VolumeOptions::from_map([("from_backup", url.as_str())]).unwrap();
    let record = VolumeRecord::new("planted", "elsewhere", options, 0);
    fs::create_dir_all(root.join("volumes/planted/data")).unwrap();
    fs::write(root.join("volumes/planted/data/there"), "already").unwrap();
    fs::write(
        root.join("volumes/planted/volume.json"),
        serde_json::to_vec(&record).unwrap(),
    )
    .unwrap();
    let (_, report) = doctor(&d, true);
    let f = found(&report, "data_without_record", "planted").unwrap();
    assert_eq!(f["repaired"], serde_json::json!({"Ok": null}), "{f}");
    assert!(
        !s.path().join("made-by-root").exists(),
        "the repair made the planted source's folder"
    );
    let get = d.ok("VolumeDriver.Get", r#"{"Name":"planted"}"#);
    assert!(
        !get.to_string().contains("from_backup"),
        "the adopted volume keeps the planted source: {get}"
    );
    let mp = d.ok("VolumeDriver.Mount", r#"{"Name":"planted","ID":"c1"}"#)["Mountpoint"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        fs::read_to_string(format!("{mp}/there")).unwrap(),
        "already"
    );
    d.ok("VolumeDriver.Unmount", r#"{"Name":"planted","ID":"c1"}"#);
    // Reading a destination never makes it either.
    let out = std::process::Command::new(util::caravan_bin())
        .args(["--socket", d.socket.to_str().unwrap(), "backup", "list"])
        .arg(format!("vfs://{}", made_by_root.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!s.path().join("made-by-root").exists());
}
