//! The real daemon on temporary folders, driven through its plugin API exactly as dockerd
//! drives it.

mod util;

use std::fs;

use util::{is_mountpoint, mount_id, node_count, require_root, Daemon, Scratch};

#[test]
fn create_get_list_mount_unmount_remove() {
    if !require_root("create_get_list_mount_unmount_remove") {
        return;
    }
    let s = Scratch::new();
    let d = Daemon::start(s.path(), &s.path().join("root"), "a");

    let act = d.plugin("Plugin.Activate", "");
    assert_eq!(act["Implements"][0], "VolumeDriver");
    assert_eq!(
        d.ok("VolumeDriver.Capabilities", "{}")["Capabilities"]["Scope"],
        "global"
    );

    d.ok(
        "VolumeDriver.Create",
        r#"{"Name":"web","Opts":{"size":"1G","mode":"0770"}}"#,
    );
    // Create is idempotent (dockerd may send it again, and another host may race it).
    d.ok(
        "VolumeDriver.Create",
        r#"{"Name":"web","Opts":{"size":"1G","mode":"0770"}}"#,
    );
    d.ok("VolumeDriver.Create", r#"{"Name":"web","Opts":null}"#);

    let got = d.ok("VolumeDriver.Get", r#"{"Name":"web"}"#);
    let vol = &got["Volume"];
    assert_eq!(vol["Name"], "web");
    let created = vol["CreatedAt"].as_str().unwrap();
    assert!(
        humantime::parse_rfc3339(created).is_ok(),
        "CreatedAt {created} is not RFC 3339"
    );
    assert_eq!(vol["Status"]["created_by"], "a");
    assert_eq!(vol["Status"]["size"], "1G");
    assert_eq!(vol["Status"]["options"]["mode"], "0770");
    assert_eq!(vol["Status"]["usage"]["bytes"], 0);

    let list = d.ok("VolumeDriver.List", "{}");
    let names: Vec<&str> = list["Volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["web"]);

    // Path before any mount: an error, not a path that does not exist.
    d.err("VolumeDriver.Path", r#"{"Name":"web"}"#);

    let id = mount_id(1);
    let m = d.ok(
        "VolumeDriver.Mount",
        &format!(r#"{{"Name":"web","ID":"{id}"}}"#),
    );
    let mp = std::path::PathBuf::from(m["Mountpoint"].as_str().unwrap());
    assert!(mp.is_absolute() && mp.is_dir(), "{mp:?}");
    assert!(is_mountpoint(&mp), "{mp:?} is not mounted");
    assert_eq!(
        d.ok("VolumeDriver.Path", r#"{"Name":"web"}"#)["Mountpoint"],
        m["Mountpoint"]
    );
    // What a container writes lands on the shared root.
    fs::write(mp.join("hello"), b"hi").unwrap();
    assert_eq!(
        fs::read(d.root.join("volumes/web/data/hello")).unwrap(),
        b"hi"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&mp).unwrap().permissions());
    assert_eq!(mode & 0o7777, 0o770);
    assert_eq!(node_count(&d, "web", "a"), 1);

    let err = d.err("VolumeDriver.Remove", r#"{"Name":"web"}"#);
    assert!(
        err.contains("in use") && err.contains("a (1 mount"),
        "{err}"
    );

    d.ok(
        "VolumeDriver.Unmount",
        &format!(r#"{{"Name":"web","ID":"{id}"}}"#),
    );
    assert!(!is_mountpoint(&mp), "still mounted after the last unmount");
    d.ok("VolumeDriver.Remove", r#"{"Name":"web"}"#);
    let err = d.err("VolumeDriver.Get", r#"{"Name":"web"}"#);
    assert!(err.contains("no such volume"), "{err}");
    assert!(
        !d.root.join("volumes/web").exists(),
        "data left behind after remove"
    );
    assert!(d.ok("VolumeDriver.List", "{}")["Volumes"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn mounts_are_counted_per_id() {
    if !require_root("mounts_are_counted_per_id") {
        return;
    }
    let s = Scratch::new();
    let d = Daemon::start(s.path(), &s.path().join("root"), "a");
    d.ok("VolumeDriver.Create", r#"{"Name":"shared","Opts":{}}"#);
    let (a, b) = (mount_id(1), mount_id(2));
    let mount = |id: &str| {
        d.ok(
            "VolumeDriver.Mount",
            &format!(r#"{{"Name":"shared","ID":"{id}"}}"#),
        )
    };
    let unmount = |id: &str| {
        d.ok(
            "VolumeDriver.Unmount",
            &format!(r#"{{"Name":"shared","ID":"{id}"}}"#),
        )
    };
    let mp = d.mountpoint("shared");

    mount(&a);
    mount(&a); // docker cp into a running container repeats the container's ID
    mount(&b);
    assert_eq!(node_count(&d, "shared", "a"), 3);
    unmount(&a);
    unmount(&b);
    assert!(
        is_mountpoint(&mp),
        "unmounted while ID a still holds one mount"
    );
    // An unknown ID succeeds and changes nothing (dockerd repeats unmounts after a crash).
    unmount(&mount_id(99));
    assert!(is_mountpoint(&mp));
    assert_eq!(node_count(&d, "shared", "a"), 1);
    unmount(&a);
    assert!(!is_mountpoint(&mp));
    assert_eq!(node_count(&d, "shared", "a"), 0);
    assert!(d
        .log_text()
        .contains("unmount for an ID this node does not hold"));
}

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() {
    if !require_root("bad_requests_get_clear_errors_and_change_nothing") {
        return;
    }
    let s = Scratch::new();
    let d = Daemon::start(s.path(), &s.path().join("root"), "a");
    let long = "x".repeat(300);
    for (body, expect) in [
        (r#"{"Name":"../x"}"#.to_string(), "invalid volume name"),
        (r#"{"Name":"a/b"}"#.to_string(), "invalid volume name"),
        (
            "{\"Name\":\"a\\u0000b\"}".to_string(),
            "invalid volume name",
        ),
        (format!(r#"{{"Name":"{long}"}}"#), "300 bytes"),
        (
            r#"{"Name":"ok1","Opts":{"sise":"1G"}}"#.to_string(),
            "accepted options are size, uid, gid, mode, on_delete",
        ),
        (
            r#"{"Name":"ok1","Opts":{"size":"lots"}}"#.to_string(),
            "invalid size",
        ),
        (
            r#"{"Name":"ok1","Opts":{"on_delete":"shred"}}"#.to_string(),
            "delete, retain, archive",
        ),
        (
            r#"{"Name":"ok1","Opts":{"mode":"99"}}"#.to_string(),
            "octal",
        ),
        (
            r#"{"Name":"ok1","Opts":{"size":5}}"#.to_string(),
            "invalid request body",
        ),
        ("not json".to_string(), "invalid request body"),
    ] {
        let err = d.err("VolumeDriver.Create", &body);
        assert!(err.contains(expect), "{body}: {err}");
    }
    // A resend after a partial write arrives empty: an error, not a guess.
    let err = d.err("VolumeDriver.Mount", "");
    assert!(err.contains("empty request body"), "{err}");
    let err = d.err("VolumeDriver.Mount", r#"{"Name":"nosuch","ID":"x1"}"#);
    assert!(err.contains("no such volume"), "{err}");
    let err = d.err("VolumeDriver.Mount", r#"{"Name":"ok1","ID":"../../etc"}"#);
    assert!(err.contains("invalid mount ID"), "{err}");
    let err = d.err("VolumeDriver.Frobnicate", "{}");
    assert!(err.contains("unknown method"), "{err}");

    // Nothing above touched the disk.
    assert!(d.ok("VolumeDriver.List", "{}")["Volumes"]
        .as_array()
        .unwrap()
        .is_empty());
    let entries: Vec<_> = fs::read_dir(d.root.join("volumes")).unwrap().collect();
    assert!(entries.is_empty(), "{entries:?}");
    assert!(!s.path().join("x").exists());
}

/// Strict where dockerd is strict (issue 12, defect 9): POST only, a JSON object, no key
/// given twice, option values taken exactly, permission bits only, short echoes.
#[test]
fn the_protocol_is_as_strict_as_dockerd() {
    if !require_root("the_protocol_is_as_strict_as_dockerd") {
        return;
    }
    let s = Scratch::new();
    let d = Daemon::start(s.path(), &s.path().join("root"), "a");
    d.ok("VolumeDriver.Create", r#"{"Name":"keep"}"#);
    // Any method but POST is refused, and removes nothing.
    for method in ["GET", "PUT", "DELETE"] {
        let (status, v) = util::http(
            &d.socket,
            method,
            "/VolumeDriver.Remove",
            r#"{"Name":"keep"}"#,
            false,
        );
        assert_eq!(status, 405, "{method}: {v}");
        assert!(v["Err"].as_str().unwrap().contains("POST only"), "{v}");
    }
    let (status, _) = util::http(&d.socket, "GET", "/Plugin.Activate", "", false);
    assert_eq!(status, 405);
    let huge = "y".repeat(100_000);
    for (body, expect) in [
        (
            r#"["arr1","",{"size":"1G"}]"#.to_string(),
            "not a JSON object",
        ),
        (
            r#"{"Name":"dup1","Name":"dup2"}"#.to_string(),
            "duplicate field `Name`",
        ),
        (
            r#"{"Name":"dup1","Opts":{"size":"1G","size":"2G"}}"#.to_string(),
            "option \"size\" is given twice",
        ),
        (r#"{"Opts":{}}"#.to_string(), "Name is required"),
        (
            r#"{"Name":"m1","Opts":{"mode":"4755"}}"#.to_string(),
            "0 to 777",
        ),
        (
            r#"{"Name":"m1","Opts":{"mode":"7777"}}"#.to_string(),
            "0 to 777",
        ),
        (
            r#"{"Name":"m1","Opts":{"mode":"+777"}}"#.to_string(),
            "0 to 777",
        ),
        (
            r#"{"Name":"m1","Opts":{"mode":" 7 "}}"#.to_string(),
            "0 to 777",
        ),
        (
            r#"{"Name":"m1","Opts":{"uid":"+5"}}"#.to_string(),
            "numeric id",
        ),
        (
            r#"{"Name":"m1","Opts":{"size":" 1G "}}"#.to_string(),
            "invalid size",
        ),
        (
            r#"{"Name":"m1","Opts":{"on_delete":"retain "}}"#.to_string(),
            "delete, retain, archive",
        ),
        (
            format!(r#"{{"Name":"m1","Opts":{{"size":"{huge}"}}}}"#),
            "(100000 bytes)",
        ),
        (
            format!(r#"{{"Name":"m1","Opts":{{"{huge}":"1"}}}}"#),
            "(100000 bytes)",
        ),
    ] {
        let err = d.err("VolumeDriver.Create", &body);
        assert!(
            err.contains(expect),
            "{}: {err}",
            &body[..body.len().min(80)]
        );
        assert!(
            err.len() < 400,
            "an error echoed {} bytes of input",
            err.len()
        );
    }
    let err = d.err("VolumeDriver.Mount", r#"{"ID":"x1"}"#);
    assert!(err.contains("Name is required"), "{err}");
    assert!(
        !d.log_text().contains(&huge[..1000]),
        "a long value was logged whole"
    );
    // Fields dockerd may add in a newer version are ignored, as its own helpers do.
    d.ok("VolumeDriver.Get", r#"{"Name":"keep","Future":1}"#);
    // Only "keep" exists.
    let list = d.ok("VolumeDriver.List", "{}");
    assert_eq!(list["Volumes"].as_array().unwrap().len(), 1, "{list}");

    // The control API: 404 for a route it does not serve, 201 only for a new volume.
    let (status, v) = d.api("GET", "/v1/nonsense", "");
    assert_eq!(status, 404, "{v}");
    let (status, _) = d.api("POST", "/v1/volumes", r#"{"name":"fresh"}"#);
    assert_eq!(status, 201);
    let (status, _) = d.api("POST", "/v1/volumes", r#"{"name":"fresh"}"#);
    assert_eq!(status, 200);
    let (status, v) = d.api("POST", "/v1/volumes", r#"["fresh2"]"#);
    assert_eq!(status, 400, "{v}");
}

#[test]
fn create_with_other_options_is_refused_not_changed() {
    if !require_root("create_with_other_options_is_refused_not_changed") {
        return;
    }
    let s = Scratch::new();
    let d = Daemon::start(s.path(), &s.path().join("root"), "a");
    d.ok(
        "VolumeDriver.Create",
        r#"{"Name":"db","Opts":{"size":"1G"}}"#,
    );
    let err = d.err(
        "VolumeDriver.Create",
        r#"{"Name":"db","Opts":{"size":"2G"}}"#,
    );
    assert!(
        err.contains("already exists with different options") && err.contains("size=1G"),
        "{err}"
    );
    assert_eq!(util::status(&d, "db")["size"], "1G");
}

#[test]
fn on_delete_archive_and_retain_keep_the_data() {
    if !require_root("on_delete_archive_and_retain_keep_the_data") {
        return;
    }
    let s = Scratch::new();
    let d = Daemon::start(s.path(), &s.path().join("root"), "a");
    for (name, mode) in [("arch", "archive"), ("keep", "retain")] {
        d.ok(
            "VolumeDriver.Create",
            &format!(r#"{{"Name":"{name}","Opts":{{"on_delete":"{mode}"}}}}"#),
        );
        fs::write(d.root.join(format!("volumes/{name}/data/file")), name).unwrap();
        d.ok("VolumeDriver.Remove", &format!(r#"{{"Name":"{name}"}}"#));
        d.err("VolumeDriver.Get", &format!(r#"{{"Name":"{name}"}}"#));
    }
    // archive: moved aside with its record, restorable by hand.
    let archived: Vec<_> = fs::read_dir(d.root.join("archive"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(archived.len(), 1, "{archived:?}");
    assert_eq!(
        fs::read_to_string(archived[0].join("data/file")).unwrap(),
        "arch"
    );
    assert!(archived[0].join("volume.json").exists());
    // retain: left in place; creating the name again adopts the data.
    assert_eq!(
        fs::read_to_string(d.root.join("volumes/keep/data/file")).unwrap(),
        "keep"
    );
    d.ok("VolumeDriver.Create", r#"{"Name":"keep","Opts":{}}"#);
    let mp = d.ok("VolumeDriver.Mount", r#"{"Name":"keep","ID":"x1"}"#)["Mountpoint"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(fs::read_to_string(format!("{mp}/file")).unwrap(), "keep");
    d.ok("VolumeDriver.Unmount", r#"{"Name":"keep","ID":"x1"}"#);
}

#[test]
fn remove_never_follows_symlinks_out_of_the_volume() {
    if !require_root("remove_never_follows_symlinks_out_of_the_volume") {
        return;
    }
    let s = Scratch::new();
    let outside = s.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("precious"), b"keep").unwrap();
    let d = Daemon::start(s.path(), &s.path().join("root"), "a");
    d.ok("VolumeDriver.Create", r#"{"Name":"evil","Opts":{}}"#);
    let mp = d.ok("VolumeDriver.Mount", r#"{"Name":"evil","ID":"c1"}"#)["Mountpoint"]
        .as_str()
        .unwrap()
        .to_string();
    std::os::unix::fs::symlink(&outside, format!("{mp}/link-dir")).unwrap();
    std::os::unix::fs::symlink(outside.join("precious"), format!("{mp}/link-file")).unwrap();
    std::os::unix::fs::symlink("/", format!("{mp}/root")).unwrap();
    d.ok("VolumeDriver.Unmount", r#"{"Name":"evil","ID":"c1"}"#);
    d.ok("VolumeDriver.Remove", r#"{"Name":"evil"}"#);
    assert_eq!(fs::read(outside.join("precious")).unwrap(), b"keep");
    assert!(!d.root.join("volumes/evil").exists());
    // The trash is emptied after the reply; give it a moment.
    let t = std::time::Instant::now();
    while fs::read_dir(d.root.join(".caravan/trash")).unwrap().count() > 0 {
        assert!(t.elapsed().as_secs() < 10, "trash not emptied");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        std::path::Path::new("/etc/hostname").exists()
            || std::path::Path::new("/etc/passwd").exists()
    );
}

#[test]
fn mount_refuses_a_data_folder_replaced_by_a_symlink() {
    if !require_root("mount_refuses_a_data_folder_replaced_by_a_symlink") {
        return;
    }
    let s = Scratch::new();
    let outside = s.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let d = Daemon::start(s.path(), &s.path().join("root"), "a");
    d.ok("VolumeDriver.Create", r#"{"Name":"swapped","Opts":{}}"#);
    // Someone with access to the export puts a symlink where the data folder was: a
    // mount must not follow it to a folder of the host.
    let data = d.root.join("volumes/swapped/data");
    fs::remove_dir(&data).unwrap();
    std::os::unix::fs::symlink(&outside, &data).unwrap();
    let err = d.err("VolumeDriver.Mount", r#"{"Name":"swapped","ID":"c1"}"#);
    assert!(err.contains("never works through links"), "{err}");
    let mountpoint = d.state.join("mounts/swapped");
    assert!(!is_mountpoint(&mountpoint), "{}", mountpoint.display());
    // The refused mount is not counted: the volume can still be removed.
    d.ok("VolumeDriver.Remove", r#"{"Name":"swapped"}"#);
    assert!(outside.is_dir());
}

#[test]
fn sigterm_stops_cleanly_and_keeps_mounts_in_use() {
    if !require_root("sigterm_stops_cleanly_and_keeps_mounts_in_use") {
        return;
    }
    let s = Scratch::new();
    let mut d = Daemon::start(s.path(), &s.path().join("root"), "a");
    let spec = d.spec_dir.join("caravan.spec");
    assert_eq!(
        fs::read_to_string(&spec).unwrap(),
        format!("unix://{}\n", d.socket.display())
    );
    let sock_mode =
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&d.socket).unwrap().permissions());
    assert_eq!(sock_mode & 0o777, 0o600);

    d.ok("VolumeDriver.Create", r#"{"Name":"busy","Opts":{}}"#);
    d.ok("VolumeDriver.Mount", r#"{"Name":"busy","ID":"c1"}"#);
    let status = d.stop();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        d.log_text()
    );
    assert!(!d.socket.exists(), "socket left behind");
    assert!(
        !spec.exists(),
        "a spec pointing at a dead socket costs every `docker volume ls` 15 s"
    );
    // The container's mount survives the daemon.
    assert!(is_mountpoint(&d.mountpoint("busy")));

    d.spawn();
    // The daemon writes the spec just after it starts listening (dockerd must find a
    // socket that answers), so it may lag the socket by a moment.
    util::eventually(std::time::Duration::from_secs(5), "the spec file", || {
        spec.exists()
    });
    // Calls work without a new Activate (dockerd never re-activates).
    assert_eq!(
        node_count(&d, "busy", "a"),
        1,
        "the restart must keep a mount still in use"
    );
    d.ok("VolumeDriver.Unmount", r#"{"Name":"busy","ID":"c1"}"#);
    assert!(!is_mountpoint(&d.mountpoint("busy")));
}

#[test]
fn restart_after_reboot_drops_records_of_mounts_that_are_gone() {
    if !require_root("restart_after_reboot_drops_records_of_mounts_that_are_gone") {
        return;
    }
    let s = Scratch::new();
    let mut d = Daemon::start(s.path(), &s.path().join("root"), "a");
    d.ok("VolumeDriver.Create", r#"{"Name":"gone","Opts":{}}"#);
    d.ok("VolumeDriver.Mount", r#"{"Name":"gone","ID":"c1"}"#);
    d.kill9();
    // A reboot takes the bind mounts (and the containers) away.
    sys_mount::unmount(d.mountpoint("gone"), sys_mount::UnmountFlags::DETACH).unwrap();
    d.spawn();
    assert_eq!(node_count(&d, "gone", "a"), 0);
    d.ok("VolumeDriver.Remove", r#"{"Name":"gone"}"#);
}

#[test]
fn a_second_daemon_refuses_the_same_socket() {
    if !require_root("a_second_daemon_refuses_the_same_socket") {
        return;
    }
    let s = Scratch::new();
    let d = Daemon::start(s.path(), &s.path().join("root"), "a");
    let out = std::process::Command::new(util::caravan_bin())
        .args(["daemon", "--node", "a2", "--config", "/dev/null"])
        .arg("--root")
        .arg(&d.root)
        .arg("--state-dir")
        .arg(s.path().join("state-a2"))
        .arg("--spec-dir")
        .arg(s.path().join("spec-a2"))
        .arg("--socket")
        .arg(&d.socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already serving"), "{err}");
    // The first daemon still serves.
    d.ok("VolumeDriver.List", "{}");
}

#[test]
fn the_daemon_keeps_serving_past_its_call_timeout() {
    if !require_root("the_daemon_keeps_serving_past_its_call_timeout") {
        return;
    }
    // Regression: the shutdown drain deadline once bounded the whole serving time.
    let s = Scratch::new();
    let mut d = Daemon::new(
        s.path(),
        &s.path().join("root"),
        "a",
        s.path().join("spec"),
        "caravan",
        &["--timeout", "1s"],
    );
    d.spawn();
    std::thread::sleep(std::time::Duration::from_secs(8));
    d.ok("VolumeDriver.List", "{}");
    assert!(d.stop().success());
}

/// `--socket` pointing at something that is not a stale socket (a regular file, a path
/// too long for a socket) is refused before anything is deleted or started.
#[test]
fn a_socket_path_that_is_not_a_socket_is_refused_and_left_alone() {
    if !require_root("a_socket_path_that_is_not_a_socket_is_refused_and_left_alone") {
        return;
    }
    let s = Scratch::new();
    let file = s.path().join("precious");
    fs::write(&file, "keep me").unwrap();
    let too_long = s.path().join("x".repeat(120));
    for (socket, expect) in [
        (file.clone(), "is not a socket"),
        (too_long, "at most 107 bytes"),
    ] {
        let out = std::process::Command::new(util::caravan_bin())
            .args(["daemon", "--node", "a", "--config", "/dev/null"])
            .arg("--root")
            .arg(s.path().join("root"))
            .arg("--state-dir")
            .arg(s.path().join("state"))
            .arg("--spec-dir")
            .arg(s.path().join("spec"))
            .arg("--socket")
            .arg(&socket)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(expect), "{err}");
    }
    assert_eq!(fs::read_to_string(&file).unwrap(), "keep me");
    assert!(
        !s.path().join("root/.caravan").exists(),
        "refused before anything started"
    );
}
