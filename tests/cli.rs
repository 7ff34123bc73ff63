//! The `caravan` command line, run as a user runs it.

mod util;

use assert_cmd::Command;
use serde_json::Value;
use util::{require_root, Daemon, Scratch};

fn caravan(d: &Daemon) -> Command {
    let mut c = Command::cargo_bin("caravan").unwrap();
    c.arg("--socket").arg(&d.socket);
    c
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn help_lists_the_commands() {
    let out = Command::cargo_bin("caravan")
        .unwrap()
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = stdout(&out);
    for cmd in [
        "daemon", "create", "delete", "list", "inspect", "mount", "umount", "info",
    ] {
        assert!(text.contains(cmd), "--help does not mention {cmd}:\n{text}");
    }
}

#[test]
fn completions_and_the_man_page_need_no_daemon() {
    let run = |args: &[&str]| {
        let out = Command::cargo_bin("caravan")
            .unwrap()
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        stdout(&out)
    };
    let bash = run(&["completions", "bash"]);
    assert!(
        bash.contains("_caravan()") && bash.contains("takeover"),
        "{bash}"
    );
    // The script is valid bash.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("caravan.bash");
    std::fs::write(&f, &bash).unwrap();
    let check = std::process::Command::new("bash")
        .arg("-n")
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(run(&["completions", "zsh"]).starts_with("#compdef caravan"));
    assert!(run(&["completions", "fish"]).contains("complete -c caravan"));
    let man = run(&["manpage"]);
    assert!(
        man.contains(".TH caravan 1") && man.contains("completions"),
        "{man}"
    );
    let out = Command::cargo_bin("caravan")
        .unwrap()
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_stopped_daemon_is_reported_with_how_to_start_it() {
    let out = Command::cargo_bin("caravan")
        .unwrap()
        .args(["--socket", "/nonexistent/caravan.sock", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("not running") && err.contains("caravan daemon"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn daemon_flags_are_validated_before_anything_starts() {
    for (args, expect) in [
        (vec!["--timeout", "90s"], "out of range"),
        (vec!["--timeout", "soon"], "duration"),
        (vec!["--node", "bad/node"], "invalid node name"),
        (vec!["--driver-name", "../x"], "invalid driver name"),
        (vec!["--log-level", "loud"], "invalid log level"),
        (vec!["--nfs", "nfs.example.com"], "expected SERVER:/EXPORT"),
        (vec!["--nfs", "[fd00::1:/x"], "expected SERVER:/EXPORT"),
        (
            vec!["--nfs", "h:/x", "--root", "/srv"],
            "cannot be used with",
        ),
        (vec!["--nfs-options", "vers=4.2"], "--nfs"),
        (
            vec!["--nfs", "h:/x", "--nfs-options", "nolock"],
            "locks shared between hosts",
        ),
        (vec!["--nfs", "h:/x", "--nfs-options", "vers=3"], "NFSv4"),
    ] {
        let out = Command::cargo_bin("caravan")
            .unwrap()
            .arg("daemon")
            .args(["--config", "/dev/null", "--socket", "/nonexistent/x.sock"])
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = stderr(&out);
        assert!(err.contains(expect), "{args:?}: {err}");
    }
}

/// The `--nfs` start-up errors that this machine can reach, in the order the daemon meets
/// them: a name that does not resolve, a server that does not answer on 2049, and (with
/// something listening there) a kernel without an NFS client.
#[test]
fn nfs_export_errors_say_what_is_wrong() {
    if !require_root("nfs_export_errors_say_what_is_wrong") {
        return;
    }
    let s = Scratch::new();
    let daemon = |export: &str| {
        let out = Command::cargo_bin("caravan")
            .unwrap()
            .arg("daemon")
            .args(["--config", "/dev/null", "--node", "n1", "--nfs", export])
            .arg("--state-dir")
            .arg(s.path().join("state"))
            .arg("--socket")
            .arg(s.path().join("c.sock"))
            .arg("--spec-dir")
            .arg(s.path().join("spec"))
            .timeout(std::time::Duration::from_secs(30))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{export}");
        stderr(&out)
    };
    let err = daemon("no-such-host.invalid:/srv/caravan");
    assert!(
        err.contains("cannot resolve") || err.contains("resolves to no address"),
        "{err}"
    );
    // 127.0.0.3: nothing listens on its port 2049.
    let err = daemon("127.0.0.3:/srv/caravan");
    assert!(err.contains("does not answer on port 2049"), "{err}");
    let listener = std::net::TcpListener::bind("127.0.0.4:2049").unwrap();
    if caravan::export::nfs::kernel_has_nfs4() {
        eprintln!("this kernel has an NFSv4 client: the no-client error cannot be shown here");
    } else {
        let err = daemon("127.0.0.4:/srv/caravan");
        assert!(
            err.contains("no NFSv4 client") && err.contains("--root"),
            "{err}"
        );
    }
    drop(listener);
    assert!(!s.path().join("spec").join("caravan.spec").exists());
}

#[test]
fn a_bad_config_file_is_refused_with_its_line() {
    let s = Scratch::new();
    let cfg = s.path().join("caravan.toml");
    std::fs::write(&cfg, "root = \"/x\"\nnodes = \"typo\"\n").unwrap();
    let out = Command::cargo_bin("caravan")
        .unwrap()
        .arg("daemon")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("nodes") && err.contains("line 2") && err.contains("accepted keys"),
        "{err}"
    );
}

#[test]
fn create_list_inspect_mount_umount_delete_info() {
    if !require_root("create_list_inspect_mount_umount_delete_info") {
        return;
    }
    let s = Scratch::new();
    let d = Daemon::start(s.path(), &s.path().join("root"), "cli1");

    let out = caravan(&d)
        .args([
            "create",
            "db",
            "--size",
            "10G",
            "--mode",
            "0700",
            "--on-delete",
            "archive",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "db");
    caravan(&d).args(["create", "cache"]).assert().success();

    let out = caravan(&d).arg("list").output().unwrap();
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("MOUNTED ON"),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("db ") && l.contains("10G") && l.contains("cli1")),
        "{text}"
    );
    assert!(lines.iter().any(|l| l.starts_with("cache ")), "{text}");

    let out = caravan(&d).args(["list", "--json"]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["cache", "db"]);

    let out = caravan(&d).args(["mount", "db"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let mp = stdout(&out).trim().to_string();
    assert_eq!(mp, d.mountpoint("db").display().to_string());
    assert!(util::is_mountpoint(std::path::Path::new(&mp)));
    std::fs::write(format!("{mp}/data.bin"), vec![7u8; 64 * 1024]).unwrap();

    let out = caravan(&d).args(["inspect", "db"]).output().unwrap();
    let text = stdout(&out);
    assert!(text.contains("Size:        10G"), "{text}");
    assert!(text.contains("cli1: 1 mount(s)"), "{text}");
    assert!(
        text.contains("on_delete=archive") && text.contains("mode=0700"),
        "{text}"
    );
    assert!(text.contains("KiB in 1 files"), "{text}");
    let out = caravan(&d)
        .args(["inspect", "db", "--json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["usage"]["bytes"].as_u64().unwrap() >= 64 * 1024, "{v}");
    assert_eq!(v["mounted_here"], true);

    // Deleting a mounted volume fails with the node named, and nothing changes.
    let out = caravan(&d).args(["delete", "db"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("mounted on cli1"), "{}", stderr(&out));

    let out = caravan(&d).args(["info"]).output().unwrap();
    let text = stdout(&out);
    assert!(
        text.contains("Node:         cli1") && text.contains("Volumes:      2"),
        "{text}"
    );
    assert!(
        text.contains("Mounted here: 1 volume(s), 1 mount(s)"),
        "{text}"
    );
    let out = caravan(&d).args(["info", "--json"]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["mounts_here"], 1);

    caravan(&d).args(["umount", "db"]).assert().success();
    assert!(!util::is_mountpoint(std::path::Path::new(&mp)));
    caravan(&d).args(["delete", "db"]).assert().success();
    caravan(&d).args(["rm", "cache"]).assert().success();
    let out = caravan(&d).args(["inspect", "db"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no such volume: db"));
}

#[test]
fn bad_names_and_options_fail_with_one_line() {
    if !require_root("bad_names_and_options_fail_with_one_line") {
        return;
    }
    let s = Scratch::new();
    let d = Daemon::start(s.path(), &s.path().join("root"), "cli2");
    for (args, expect) in [
        (vec!["create", "../etc"], "invalid volume name \"../etc\""),
        (vec!["create", "ok1", "--size", "12Q"], "invalid size"),
        (vec!["create", "ok1", "--uid", "root"], "option uid"),
        (
            vec!["create", "ok1", "--on-delete", "burn"],
            "delete, retain, archive",
        ),
        (vec!["inspect", "a/b"], "invalid volume name \"a/b\""),
        (vec!["mount", "nosuch"], "no such volume"),
        (vec!["delete", "nosuch"], "no such volume"),
        (vec!["umount", "nosuch"], "no such volume"),
        (vec!["inspect", ""], "a volume name is required"),
        (vec!["delete", ""], "a volume name is required"),
        (vec!["umount", ""], "a volume name is required"),
    ] {
        let out = caravan(&d).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(err.contains(expect), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    let out = caravan(&d).args(["list", "--json"]).output().unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        Value::Array(vec![])
    );
    // Usage errors are clap's: exit 2, as README says.
    for args in [vec!["frobnicate"], vec!["create"], vec!["list", "--bogus"]] {
        let out = caravan(&d).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
}

/// Docker is told a mountpoint only where the volume is mounted: Get and List on another
/// host (or before the first mount) answer none.
#[test]
fn a_volume_not_mounted_here_has_no_mountpoint() {
    if !require_root("a_volume_not_mounted_here_has_no_mountpoint") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let a = Daemon::start(s.path(), &root, "a");
    let b = Daemon::start(s.path(), &root, "b");
    a.ok("VolumeDriver.Create", r#"{"Name":"web"}"#);
    let mp = a.ok("VolumeDriver.Mount", r#"{"Name":"web","ID":"c1"}"#)["Mountpoint"].clone();
    let get =
        |d: &Daemon| d.ok("VolumeDriver.Get", r#"{"Name":"web"}"#)["Volume"]["Mountpoint"].clone();
    let listed = |d: &Daemon| d.ok("VolumeDriver.List", "{}")["Volumes"][0]["Mountpoint"].clone();
    assert_eq!(get(&a), mp);
    assert_eq!(listed(&a), mp);
    assert_eq!(get(&b), "");
    assert_eq!(listed(&b), "");
    let out = caravan(&b).args(["inspect", "web"]).output().unwrap();
    assert!(
        stdout(&out).contains("none (not mounted on this node)"),
        "{}",
        stdout(&out)
    );
    a.ok("VolumeDriver.Unmount", r#"{"Name":"web","ID":"c1"}"#);
    assert_eq!(get(&a), "");
    assert_eq!(listed(&a), "");
}

/// A metadata folder deleted under a running daemon: every mutation names it, and `caravan
/// info` does not call such an export healthy.
#[test]
fn a_deleted_metadata_folder_is_reported_not_hidden() {
    if !require_root("a_deleted_metadata_folder_is_reported_not_hidden") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let d = Daemon::start(s.path(), &root, "a");
    std::fs::remove_dir_all(root.join(".caravan")).unwrap();
    // A hold of the lock begun before the deletion (the start-up's own) may still commit;
    // every one after it fails, naming the folder.
    let mut last = String::new();
    util::eventually(
        std::time::Duration::from_secs(5),
        "a create to fail",
        || {
            let out = caravan(&d).args(["create", "vv"]).output().unwrap();
            last = stderr(&out);
            out.status.code() == Some(1)
        },
    );
    assert!(
        last.contains(".caravan") && last.contains("deleted by hand"),
        "{last}"
    );
    let out = caravan(&d).arg("info").output().unwrap();
    let text = stdout(&out);
    let export = text
        .lines()
        .find(|l| l.starts_with("Export:"))
        .unwrap_or_default();
    assert!(
        export.contains("FAILING") && export.contains(".caravan"),
        "{text}"
    );
}

/// Another user: with `--socket-group`, members of the group may connect and read, and
/// every change is refused (SO_PEERCRED); without it, they cannot connect at all.
#[test]
fn other_users_may_read_through_the_socket_group_and_change_nothing() {
    if !require_root("other_users_may_read_through_the_socket_group_and_change_nothing") {
        return;
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    const GROUP: u32 = 4242;
    const NOBODY: u32 = 65534;
    let s = Scratch::new();
    let d = Daemon::start_with(
        s.path(),
        &s.path().join("root"),
        "a",
        s.path().join("spec"),
        "caravan",
        &["--socket-group", &GROUP.to_string()],
    );
    d.ok("VolumeDriver.Create", r#"{"Name":"web"}"#);
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), GROUP);
    // The scratch folder must be reachable for the other user.
    std::fs::set_permissions(s.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_user = |gid: u32, args: &[&str]| {
        let mut c = std::process::Command::new(util::caravan_bin());
        c.arg("--socket").arg(&d.socket).args(args);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            c.pre_exec(move || {
                let g = nix::unistd::Gid::from_raw(gid);
                nix::unistd::setgroups(&[g])?;
                nix::unistd::setgid(g)?;
                nix::unistd::setuid(nix::unistd::Uid::from_raw(NOBODY))?;
                Ok(())
            });
        }
        c.output().unwrap()
    };
    for args in [&["list"][..], &["inspect", "web"], &["info"], &["nodes"]] {
        let out = as_user(GROUP, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    assert!(stdout(&as_user(GROUP, &["list"])).contains("web"));
    for args in [
        &["create", "evil"][..],
        &["delete", "web"],
        &["mount", "web"],
        &["takeover", "web"],
    ] {
        let out = as_user(GROUP, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains("permission denied") && err.contains("uid 65534"),
            "{args:?}: {err}"
        );
    }
    // The same check whatever the spelling of the path (issue 24, 12): a percent-encoded
    // segment, an absolute request target. Doctor is root's; so is every change.
    for target in [
        "/v1/%64octor",
        "/v1/doctor",
        "http://localhost/v1/%64octor",
        "/%76%31/doctor",
    ] {
        let mut c = std::process::Command::new("curl");
        c.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--unix-socket",
        ])
        .arg(&d.socket)
        .args(["--request-target", target, "http://localhost/"]);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            c.pre_exec(move || {
                let g = nix::unistd::Gid::from_raw(GROUP);
                nix::unistd::setgroups(&[g])?;
                nix::unistd::setgid(g)?;
                nix::unistd::setuid(nix::unistd::Uid::from_raw(NOBODY))?;
                Ok(())
            });
        }
        let out = c.output().unwrap();
        assert_eq!(stdout(&out), "403", "GET {target} as uid {NOBODY}");
    }
    // Not in the group: no connection at all.
    let out = as_user(NOBODY, &["list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("permission denied on"),
        "{}",
        stderr(&out)
    );
    // Nothing changed.
    let list = d.ok("VolumeDriver.List", "{}");
    assert_eq!(list["Volumes"].as_array().unwrap().len(), 1, "{list}");
}
