//! Never judge a live host by a stale view: restarts, duplicate names, holders that come
//! back, bind mounts that vanish, removes whose data cannot move. Several daemons share
//! one local root (the multi-host GlusterFS versions of these run in tests/testbed.rs).

mod util;

use std::time::{Duration, Instant};

use serde_json::Value;
use util::{require_root, Daemon, Scratch};

/// A daemon that is declared dead after 2 s of silence (heartbeat every 200 ms).
fn fast_node(s: &Scratch, root: &std::path::Path, node: &str) -> Daemon {
    let spec = s.path().join(format!("spec-{node}"));
    let fast = ["--dead-after", "2s", "--heartbeat", "200ms"];
    Daemon::start_with(s.path(), root, node, spec, "caravan", &fast)
}

fn state_of(d: &Daemon, node: &str) -> String {
    d.api("GET", "/v1/nodes", "")
        .1
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["node"] == node)
        .map(|x| x["state"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

fn wait_dead(observer: &Daemon, node: &str) {
    util::eventually(
        Duration::from_secs(10),
        "the node to be declared dead",
        || state_of(observer, node) == "dead",
    );
}

/// Defect 1: a host killed, seen dead, restarted, and at once mounting a volume. Before,
/// the other host's cached view (dead, by name) let its Remove delete the data under the
/// new mount. Now the mount records the new boot id, which nobody has seen silent.
#[test]
fn a_restarted_hosts_new_mount_blocks_a_remove_elsewhere() {
    if !require_root("a_restarted_hosts_new_mount_blocks_a_remove_elsewhere") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let a = fast_node(&s, &root, "a");
    let mut b = fast_node(&s, &root, "b");
    for round in 0..3 {
        let v = format!("v{round}");
        a.ok(
            "VolumeDriver.Create",
            &format!(r#"{{"Name":"{v}","Opts":{{}}}}"#),
        );
        b.kill9();
        wait_dead(&a, "b");
        b.spawn();
        let mp = b.ok(
            "VolumeDriver.Mount",
            &format!(r#"{{"Name":"{v}","ID":"b{round}"}}"#),
        )["Mountpoint"]
            .as_str()
            .unwrap()
            .to_string();
        std::fs::write(format!("{mp}/data"), "in use").unwrap();
        let err = a.err("VolumeDriver.Remove", &format!(r#"{{"Name":"{v}"}}"#));
        assert!(err.contains("mounted on b"), "round {round}: {err}");
        assert_eq!(
            std::fs::read_to_string(format!("{mp}/data")).unwrap(),
            "in use"
        );
        b.ok(
            "VolumeDriver.Unmount",
            &format!(r#"{{"Name":"{v}","ID":"b{round}"}}"#),
        );
        a.ok("VolumeDriver.Remove", &format!(r#"{{"Name":"{v}"}}"#));
    }
}

/// Defect 2: an exclusive holder killed, seen dead, restarted and mounting its volume
/// again. Before, the other host's Mount then took it over from the live holder.
#[test]
fn a_restarted_exclusive_holder_keeps_its_volume() {
    if !require_root("a_restarted_exclusive_holder_keeps_its_volume") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let a = fast_node(&s, &root, "a");
    let mut b = fast_node(&s, &root, "b");
    a.ok(
        "VolumeDriver.Create",
        r#"{"Name":"ex","Opts":{"access":"exclusive"}}"#,
    );
    b.ok("VolumeDriver.Mount", r#"{"Name":"ex","ID":"b1"}"#);
    b.kill9();
    wait_dead(&a, "b");
    b.spawn();
    // dockerd mounts its container's volume again (one container: the same mount ID;
    // another container would be refused while b1 is mounted).
    b.ok("VolumeDriver.Mount", r#"{"Name":"ex","ID":"b1"}"#);
    let other = b.err("VolumeDriver.Mount", r#"{"Name":"ex","ID":"b2"}"#);
    assert!(other.contains("Docker mount ID b1"), "{other}");
    let err = a.err("VolumeDriver.Mount", r#"{"Name":"ex","ID":"a1"}"#);
    assert!(err.contains("held by node b"), "{err}");
    let st = util::status(&a, "ex");
    assert_eq!(st["holder"]["node"], "b", "{st}");
    assert!(
        st["takeovers"].as_array().is_none_or(|t| t.is_empty()),
        "{st}"
    );
    // Still refused a few heartbeats later: b beats with its new boot id.
    std::thread::sleep(Duration::from_millis(600));
    let err = a.err("VolumeDriver.Mount", r#"{"Name":"ex","ID":"a1"}"#);
    assert!(err.contains("held by node b"), "{err}");
    // And once b really is gone, a takes it over.
    b.kill9();
    wait_dead(&a, "b");
    a.ok("VolumeDriver.Mount", r#"{"Name":"ex","ID":"a1"}"#);
    assert_eq!(util::status(&a, "ex")["holder"]["node"], "a");
}

/// A restarted holder that kept its bind mount (its container still runs) but has not
/// mounted again is alive too: its restart moved the hold to its new boot id.
#[test]
fn a_restarted_holder_with_a_kept_bind_mount_is_not_taken_over() {
    if !require_root("a_restarted_holder_with_a_kept_bind_mount_is_not_taken_over") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let a = fast_node(&s, &root, "a");
    let mut b = fast_node(&s, &root, "b");
    a.ok(
        "VolumeDriver.Create",
        r#"{"Name":"ex","Opts":{"access":"exclusive"}}"#,
    );
    b.ok("VolumeDriver.Mount", r#"{"Name":"ex","ID":"b1"}"#);
    b.kill9();
    wait_dead(&a, "b");
    b.spawn();
    assert!(
        util::is_mountpoint(&b.mountpoint("ex")),
        "the bind mount stays"
    );
    let err = a.err("VolumeDriver.Mount", r#"{"Name":"ex","ID":"a1"}"#);
    assert!(err.contains("held by node b"), "{err}");
}

/// Defect 3: a second daemon with a live node's name refuses to start, naming the node
/// and the way out; once the first is gone the name is free again.
#[test]
fn a_second_daemon_with_a_live_nodes_name_refuses_to_start() {
    if !require_root("a_second_daemon_with_a_live_nodes_name_refuses_to_start") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let mut first = fast_node(&s, &root, "h3");
    let other = s.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let started = Instant::now();
    let (status, stderr) =
        util::daemon_that_must_exit(&other, &root, "h3", "a second daemon named h3");
    assert!(!status.success(), "a duplicate must not serve: {stderr}");
    assert!(
        stderr.contains("node name \"h3\"") && stderr.contains("--node"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!other.join("sock").exists(), "it never served");
    // The first one is untouched.
    first.ok("VolumeDriver.Create", r#"{"Name":"ok","Opts":{}}"#);
    first.kill9();
    first.spawn();
    first.ok("VolumeDriver.Get", r#"{"Name":"ok"}"#);
}

/// A daemon started under a dead daemon's name on another machine (a cloned host, a
/// standby started by hand): the first machine's containers may still write until its
/// keeper fences them, so the new daemon takes nothing of the name's over before the
/// takeover wait, and a restart of it during the wait waits again. Taken at once (its
/// start's reconcile dropped the hold it did not find bound on its own machine), the
/// volume was granted elsewhere 110 ms after the first daemon died: found by the
/// simulation (tests/sim/, `NameTakenWithoutWaiting`).
#[test]
fn a_name_taken_over_on_another_machine_waits_before_taking_its_volumes() {
    if !require_root("a_name_taken_over_on_another_machine_waits_before_taking_its_volumes") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let (dead_after, interval) = (Duration::from_secs(6), Duration::from_millis(200));
    let args = ["--dead-after", "6s", "--heartbeat", "200ms"];
    // Each daemon as on a machine of its own: a mount namespace where /etc/machine-id is
    // its own file.
    let on_machine = |scratch: &std::path::Path, name: &str, id: char| {
        std::fs::create_dir_all(scratch).unwrap();
        let file = scratch.join(format!("machine-id-{name}"));
        std::fs::write(&file, format!("{}\n", id.to_string().repeat(32))).unwrap();
        let spec = scratch.join(format!("spec-{name}"));
        let mut d = Daemon::new(scratch, &root, name, spec, "caravan", &args);
        d.machine_id = Some(file);
        d
    };
    let mut a = on_machine(s.path(), "a", 'a');
    a.spawn();
    let mut b = on_machine(s.path(), "b", 'b');
    b.spawn();
    a.ok(
        "VolumeDriver.Create",
        r#"{"Name":"ex","Opts":{"access":"exclusive"}}"#,
    );
    b.ok("VolumeDriver.Mount", r#"{"Name":"ex","ID":"b1"}"#);
    b.kill9();
    let killed = Instant::now();
    // The same name on machine c: it waits; killed during the wait and started again
    // there, it waits again (it still owes the wait).
    let other = s.path().join("other");
    let mut clone = on_machine(&other, "b", 'c');
    let waiting = |d: &Daemon, times: usize| {
        util::eventually(
            Duration::from_secs(10),
            "the daemon named b on machine c to wait",
            || d.log_text().matches("another machine").count() >= times,
        )
    };
    clone.launch();
    waiting(&clone, 1);
    clone.kill9();
    clone.launch();
    waiting(&clone, 2);
    let asked = killed.elapsed();
    assert!(
        asked < Duration::from_secs(4),
        "too slow to tell: {asked:?} after the kill, b's old incarnation may rightly be dead"
    );
    // a's Mount waits for the holder (core::timing::wait_for_holder): it is granted once
    // b's old incarnation has been silent for --dead-after (a takeover), or once the new b
    // has waited as long and let go of what it did not find bound (a grant): never at
    // once. (Its last beat may have landed up to an interval or two before the kill on a
    // busy machine.)
    a.ok("VolumeDriver.Mount", r#"{"Name":"ex","ID":"a1"}"#);
    let granted = killed.elapsed();
    let st = util::status(&a, "ex");
    assert!(
        granted >= dead_after - interval * 3,
        "granted {granted:?} after the first b died, before --dead-after: {st}; the new b's log:\n{}",
        clone.log_text()
    );
    assert_eq!(st["holder"]["node"], "a", "{st}");
}

/// A bind mount unmounted behind the daemon's back: the next Mount binds again instead of
/// answering a path with nothing mounted there (the container would write to local disk).
#[test]
fn a_bind_mount_that_vanished_is_made_again() {
    if !require_root("a_bind_mount_that_vanished_is_made_again") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let a = fast_node(&s, &root, "a");
    a.ok("VolumeDriver.Create", r#"{"Name":"vol","Opts":{}}"#);
    let mp = a.mountpoint("vol");
    a.ok("VolumeDriver.Mount", r#"{"Name":"vol","ID":"one"}"#);
    sys_mount::unmount(&mp, sys_mount::UnmountFlags::empty()).unwrap();
    assert!(!util::is_mountpoint(&mp));
    a.ok("VolumeDriver.Mount", r#"{"Name":"vol","ID":"two"}"#);
    assert!(util::is_mountpoint(&mp), "mounted again");
    std::fs::write(mp.join("f"), "x").unwrap();
    assert!(
        root.join("volumes/vol/data/f").exists(),
        "writes reach the export"
    );
    assert!(a.log_text().contains("vanished"), "and it says so");
}

/// A remove whose data cannot be moved aside fails and keeps the volume, instead of
/// reporting success and leaving the data for the next create of the name to adopt.
#[test]
fn a_remove_whose_data_cannot_move_fails_and_keeps_the_volume() {
    if !require_root("a_remove_whose_data_cannot_move_fails_and_keeps_the_volume") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let a = fast_node(&s, &root, "a");
    a.ok("VolumeDriver.Create", r#"{"Name":"vol","Opts":{}}"#);
    std::fs::write(root.join("volumes/vol/data/keep"), "old").unwrap();
    let trash = root.join(".caravan/trash");
    std::fs::remove_dir(&trash).unwrap();
    let err = a.err("VolumeDriver.Remove", r#"{"Name":"vol"}"#);
    assert!(
        err.contains("the volume is kept") || err.contains("restarting the daemon creates it"),
        "{err}"
    );
    let listed: Value = a.ok("VolumeDriver.List", "");
    assert!(listed.to_string().contains("\"vol\""), "{listed}");
    assert!(root.join("volumes/vol/data/keep").exists());
    std::fs::create_dir(&trash).unwrap();
    // As the error says, try again: a hold of the lock that began before the trash came
    // back still sees the old one, the next hold sees the new one.
    util::eventually(Duration::from_secs(5), "the remove to go through", || {
        let v = a.plugin("VolumeDriver.Remove", r#"{"Name":"vol"}"#);
        v["Err"].as_str().is_some_and(str::is_empty)
    });
    a.ok("VolumeDriver.Create", r#"{"Name":"vol","Opts":{}}"#);
    assert!(
        !root.join("volumes/vol/data/keep").exists(),
        "a new volume starts empty"
    );
}

/// An Unmount that could not be committed (the export stalled) is recorded on the node;
/// a daemon that stops before the export answers applies it at its next start, so the
/// mount ID never stays counted forever. Here the record is written as a stopped daemon
/// leaves it; tests/testbed.rs makes a real stall.
#[test]
fn a_recorded_unmount_is_applied_at_the_next_start() {
    if !require_root("a_recorded_unmount_is_applied_at_the_next_start") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let mut a = fast_node(&s, &root, "a");
    let b = fast_node(&s, &root, "b");
    a.ok("VolumeDriver.Create", r#"{"Name":"vol","Opts":{}}"#);
    a.ok("VolumeDriver.Mount", r#"{"Name":"vol","ID":"gone"}"#);
    assert!(a.stop().success());
    std::fs::write(
        a.state.join("pending-unmounts.json"),
        r#"[{"name":"vol","id":"gone"},{"name":"../etc","id":"x"}]"#,
    )
    .unwrap();
    a.spawn();
    assert_eq!(util::node_count(&b, "vol", "a"), 0, "applied at start");
    assert!(!util::is_mountpoint(&a.mountpoint("vol")), "and unbound");
    let left: Value =
        serde_json::from_slice(&std::fs::read(a.state.join("pending-unmounts.json")).unwrap())
            .unwrap();
    assert_eq!(left, serde_json::json!([]), "nothing left recorded");
    b.ok("VolumeDriver.Remove", r#"{"Name":"vol"}"#);
    assert!(a.log_text().contains("recorded before the restart"));
}
