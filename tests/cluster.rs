//! Two daemons (two nodes) on one shared root: they see the same volumes at once, never
//! lose an update under concurrency, and survive a kill -9 in the middle of commits.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use util::{is_mountpoint, node_count, require_root, Daemon, Scratch};

#[test]
fn a_second_node_sees_volumes_at_once_and_its_mounts_block_removal() {
    if !require_root("a_second_node_sees_volumes_at_once_and_its_mounts_block_removal") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let a = Daemon::start(s.path(), &root, "a");
    let b = Daemon::start(s.path(), &root, "b");
    // b renders its List once per generation: an empty one first, which a's create must
    // not leave behind.
    assert_eq!(
        b.ok("VolumeDriver.List", "{}")["Volumes"],
        serde_json::json!([])
    );

    a.ok(
        "VolumeDriver.Create",
        r#"{"Name":"web","Opts":{"size":"10G"}}"#,
    );
    // No sync step: b's very next call sees it.
    let got = b.ok("VolumeDriver.Get", r#"{"Name":"web"}"#);
    assert_eq!(got["Volume"]["Status"]["created_by"], "a");
    assert_eq!(got["Volume"]["Status"]["size"], "10G");
    assert_eq!(b.ok("VolumeDriver.List", "{}")["Volumes"][0]["Name"], "web");

    let mp = b.ok("VolumeDriver.Mount", r#"{"Name":"web","ID":"c1"}"#)["Mountpoint"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(format!("{mp}/from-b"), "b was here").unwrap();
    let err = a.err("VolumeDriver.Remove", r#"{"Name":"web"}"#);
    assert!(err.contains("mounted on b"), "{err}");
    assert_eq!(node_count(&a, "web", "b"), 1);

    // a mounts too: each node has its own bind mount and its own count.
    let mpa = a.ok("VolumeDriver.Mount", r#"{"Name":"web","ID":"c2"}"#)["Mountpoint"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        std::fs::read_to_string(format!("{mpa}/from-b")).unwrap(),
        "b was here"
    );
    a.ok("VolumeDriver.Unmount", r#"{"Name":"web","ID":"c2"}"#);
    assert!(!is_mountpoint(std::path::Path::new(&mpa)));
    assert!(
        is_mountpoint(std::path::Path::new(&mp)),
        "a's unmount must not touch b's mount"
    );
    let err = a.err("VolumeDriver.Remove", r#"{"Name":"web"}"#);
    assert!(err.contains("mounted on b"), "{err}");

    b.ok("VolumeDriver.Unmount", r#"{"Name":"web","ID":"c1"}"#);
    a.ok("VolumeDriver.Remove", r#"{"Name":"web"}"#);
    let err = b.err("VolumeDriver.Get", r#"{"Name":"web"}"#);
    assert!(err.contains("no such volume"), "{err}");
}

/// Concurrent creates, mounts, unmounts and removes from both nodes; afterwards every
/// count must match the operations that were acknowledged.
#[test]
fn concurrent_mutations_from_two_nodes_lose_no_update() {
    if !require_root("concurrent_mutations_from_two_nodes_lose_no_update") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let nodes = [
        Arc::new(Daemon::start(s.path(), &root, "a")),
        Arc::new(Daemon::start(s.path(), &root, "b")),
    ];
    const THREADS: usize = 6;
    const COMMON: usize = 4;
    const ROUNDS: usize = 6;

    let mut handles = Vec::new();
    for (n, d) in nodes.iter().enumerate() {
        for t in 0..THREADS {
            let d = d.clone();
            handles.push(std::thread::spawn(move || {
                // Every thread creates the common volumes (idempotent, racing the others)
                // and a few of its own.
                for c in 0..COMMON {
                    d.ok(
                        "VolumeDriver.Create",
                        &format!(r#"{{"Name":"common{c}","Opts":{{"size":"1G"}}}}"#),
                    );
                }
                let own: Vec<String> = (0..ROUNDS).map(|r| format!("own-{n}-{t}-{r}")).collect();
                for v in &own {
                    d.ok(
                        "VolumeDriver.Create",
                        &format!(r#"{{"Name":"{v}","Opts":{{}}}}"#),
                    );
                }
                // Mount every common volume ROUNDS times with this thread's ID, unmount
                // all but one; mount and unmount own volumes fully.
                let id = format!("{n}{t}{}", "0".repeat(62));
                for own_volume in &own {
                    for c in 0..COMMON {
                        d.ok(
                            "VolumeDriver.Mount",
                            &format!(r#"{{"Name":"common{c}","ID":"{id}"}}"#),
                        );
                    }
                    d.ok(
                        "VolumeDriver.Mount",
                        &format!(r#"{{"Name":"{own_volume}","ID":"{id}"}}"#),
                    );
                }
                for _ in 0..ROUNDS - 1 {
                    for c in 0..COMMON {
                        d.ok(
                            "VolumeDriver.Unmount",
                            &format!(r#"{{"Name":"common{c}","ID":"{id}"}}"#),
                        );
                    }
                }
                for v in &own {
                    d.ok(
                        "VolumeDriver.Unmount",
                        &format!(r#"{{"Name":"{v}","ID":"{id}"}}"#),
                    );
                }
                // Remove every second own volume.
                for v in own.iter().step_by(2) {
                    d.ok("VolumeDriver.Remove", &format!(r#"{{"Name":"{v}"}}"#));
                }
            }));
        }
    }
    for h in handles {
        h.join().expect("worker panicked");
    }

    let mut expected: BTreeSet<String> = (0..COMMON).map(|c| format!("common{c}")).collect();
    for n in 0..nodes.len() {
        for t in 0..THREADS {
            for r in (1..ROUNDS).step_by(2) {
                expected.insert(format!("own-{n}-{t}-{r}"));
            }
        }
    }
    for d in &nodes {
        let listed: BTreeSet<String> = d.ok("VolumeDriver.List", "{}")["Volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["Name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(listed, expected, "node {} lists a different set", d.node);
        for c in 0..COMMON {
            let st = util::status(d, &format!("common{c}"));
            for other in &nodes {
                // One mount left per thread, each under its own ID.
                assert_eq!(
                    st["mounts"][&other.node]["count"], THREADS as u64,
                    "common{c} on {}: {st}",
                    other.node
                );
                assert_eq!(
                    st["mounts"][&other.node]["ids"], THREADS as u64,
                    "common{c} on {}: {st}",
                    other.node
                );
            }
        }
        for v in expected.iter().filter(|v| v.starts_with("own-")) {
            assert_eq!(
                util::status(d, v)["mounts"],
                Value::Object(Default::default()),
                "{v} still counted as mounted"
            );
        }
    }
    // The bind mounts match the counts: common volumes mounted on both nodes, own ones not.
    for d in &nodes {
        for c in 0..COMMON {
            assert!(is_mountpoint(&d.mountpoint(&format!("common{c}"))));
        }
        assert!(!is_mountpoint(&d.mountpoint("own-0-0-1")));
    }
    let commits: BTreeMap<String, u64> = nodes
        .iter()
        .map(|d| {
            (
                d.node.clone(),
                d.api("GET", "/v1/info", "").1["store"]["commits"]
                    .as_u64()
                    .unwrap(),
            )
        })
        .collect();
    eprintln!("commits per node: {commits:?}");
}

/// kill -9 while commits are under way, again and again: every acknowledged create
/// survives and the metadata opens cleanly each time.
#[test]
fn kill_9_during_commits_loses_no_acknowledged_create() {
    if !require_root("kill_9_during_commits_loses_no_acknowledged_create") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let mut d = Daemon::start(s.path(), &root, "a");
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let mut seed: u64 = 0x9e3779b97f4a7c15 ^ std::process::id() as u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..10 {
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..4)
            .map(|t| {
                let (stop, acked, socket) = (stop.clone(), acked.clone(), d.socket.clone());
                std::thread::spawn(move || {
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let name = format!("r{round}-t{t}-{i}");
                        i += 1;
                        // The connection dies with the daemon: that create is not acknowledged.
                        let body = format!(r#"{{"Name":"{name}","Opts":{{}}}}"#);
                        match util::try_http(&socket, "POST", "/VolumeDriver.Create", &body, false)
                        {
                            Ok((200, v)) if v["Err"] == "" => {
                                acked.lock().unwrap().insert(name);
                            }
                            _ => break,
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(5 + next() % 150));
        d.kill9();
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            let _ = w.join();
        }
        let t = Instant::now();
        d.spawn();
        let listed: BTreeSet<String> = d.ok("VolumeDriver.List", "{}")["Volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["Name"].as_str().unwrap().to_string())
            .collect();
        let acked = acked.lock().unwrap();
        let lost: Vec<_> = acked.difference(&listed).collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged creates lost after kill -9: {lost:?}"
        );
        eprintln!(
            "round {round}: {} acknowledged, {} listed, restart in {:?}",
            acked.len(),
            listed.len(),
            t.elapsed()
        );
    }
    assert!(
        acked.lock().unwrap().len() > 20,
        "too few creates to prove anything"
    );
}

/// Liveness: a node killed with its mounts is declared dead after --dead-after, and then
/// its mounts are stale and no longer block a remove; a node that stops cleanly is
/// "left" at once.
#[test]
fn mounts_of_dead_or_left_nodes_do_not_block_removal() {
    if !require_root("mounts_of_dead_or_left_nodes_do_not_block_removal") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let a = fast_node(&s, &root, "a");
    let mut b = fast_node(&s, &root, "b");
    let mut c = fast_node(&s, &root, "c");
    for v in ["v1", "v2"] {
        a.ok(
            "VolumeDriver.Create",
            &format!(r#"{{"Name":"{v}","Opts":{{}}}}"#),
        );
    }
    b.ok("VolumeDriver.Mount", r#"{"Name":"v1","ID":"b1"}"#);
    c.ok("VolumeDriver.Mount", r#"{"Name":"v2","ID":"c1"}"#);
    std::thread::sleep(Duration::from_millis(500));
    let nodes = a.api("GET", "/v1/nodes", "").1;
    let find = |nodes: &Value, n: &str| {
        nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["node"] == n)
            .cloned()
            .unwrap()
    };
    assert_eq!(find(&nodes, "b")["state"], "alive", "{nodes}");
    assert_eq!(find(&nodes, "b")["mounts"]["v1"], 1, "{nodes}");

    // b dies with its mount: still blocking until dead-after has passed on a's clock.
    b.kill9();
    let killed = Instant::now();
    let err = a.err("VolumeDriver.Remove", r#"{"Name":"v1"}"#);
    assert!(err.contains("mounted on b"), "{err}");
    // c stops cleanly: left, at once (within a heartbeat or two).
    assert!(c.stop().success());
    util::eventually(Duration::from_secs(5), "a to see c leave", || {
        util::status(&a, "v2")["mounts"]["c"]["node_state"] == "left"
    });
    let st = util::status(&a, "v2");
    assert_eq!(st["mounts"]["c"]["node_state"], "left", "{st}");
    assert_eq!(st["mounts"]["c"]["stale"], true, "{st}");
    a.ok("VolumeDriver.Remove", r#"{"Name":"v2"}"#);

    util::eventually(Duration::from_secs(8), "a to declare b dead", || {
        find(&a.api("GET", "/v1/nodes", "").1, "b")["state"] == "dead"
    });
    // Dead means silent for dead-after (2 s) on a's clock, give or take one heartbeat.
    assert!(
        killed.elapsed() >= Duration::from_millis(1600),
        "b declared dead too early: {:?}",
        killed.elapsed()
    );
    let nodes = a.api("GET", "/v1/nodes", "").1;
    assert_eq!(find(&nodes, "b")["state"], "dead", "{nodes}");
    let st = util::status(&a, "v1");
    assert_eq!(st["mounts"]["b"]["stale"], true, "{st}");
    a.ok("VolumeDriver.Remove", r#"{"Name":"v1"}"#);
    let out = std::process::Command::new(util::caravan_bin())
        .arg("--socket")
        .arg(&a.socket)
        .arg("nodes")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("b ") && l.contains("dead")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("c ") && l.contains("left")),
        "{table}"
    );

    // b comes back: alive again, and its restart reconciles its own records.
    b.spawn();
    std::thread::sleep(Duration::from_millis(500));
    let nodes = a.api("GET", "/v1/nodes", "").1;
    assert_eq!(find(&nodes, "b")["state"], "alive", "{nodes}");
}

/// A daemon that is declared dead after 2 s of silence (heartbeat every 200 ms).
fn fast_node(s: &Scratch, root: &std::path::Path, node: &str) -> Daemon {
    let spec = s.path().join(format!("spec-{node}"));
    let fast = ["--dead-after", "2s", "--heartbeat", "200ms"];
    Daemon::start_with(s.path(), root, node, spec, "caravan", &fast)
}

fn signal(d: &Daemon, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(d.pid()), sig).unwrap();
}

/// A stop-first update on one node: the new task's Mount can reach caravan a moment
/// before the old task's Unmount. The Mount waits (the release grace) and must not keep
/// the volume's lock while it does, or the Unmount it waits for queues behind it and the
/// new task is refused (seen in CI: the update paused).
#[test]
fn a_mount_waiting_for_the_old_container_on_its_node_lets_that_container_unmount() {
    if !require_root(
        "a_mount_waiting_for_the_old_container_on_its_node_lets_that_container_unmount",
    ) {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let a = Daemon::start(s.path(), &root, "a");
    a.ok(
        "VolumeDriver.Create",
        r#"{"Name":"db","Opts":{"access":"exclusive"}}"#,
    );
    a.ok("VolumeDriver.Mount", r#"{"Name":"db","ID":"old"}"#);
    let socket = a.socket.clone();
    let new_task = std::thread::spawn(move || {
        let t = Instant::now();
        let answer = util::http(
            &socket,
            "POST",
            "/VolumeDriver.Mount",
            r#"{"Name":"db","ID":"new"}"#,
            false,
        )
        .1;
        (answer, t.elapsed())
    });
    // The new Mount is waiting for the old container (it says so in the log) ...
    util::eventually(Duration::from_secs(5), "the new Mount waiting", || {
        a.log_text().contains("waiting for it to unmount")
    });
    // ... whose Unmount goes through at once, and the new Mount then succeeds.
    let t = Instant::now();
    a.ok("VolumeDriver.Unmount", r#"{"Name":"db","ID":"old"}"#);
    let unmount_took = t.elapsed();
    let (answer, mount_took) = new_task.join().unwrap();
    assert_eq!(answer["Err"], "", "the new task's Mount: {answer}");
    assert!(
        unmount_took < caravan::ops::service::RELEASE_GRACE / 2,
        "the old container's Unmount waited {unmount_took:?} behind the new Mount"
    );
    assert!(
        mount_took < caravan::ops::service::RELEASE_GRACE,
        "the new Mount took {mount_took:?}: it should follow the Unmount at once"
    );
    let st = util::status(&a, "db");
    assert_eq!(st["mounts"]["a"]["count"], 1, "{st}");
}

/// An exclusive volume: one holder at a time; a frozen holder is taken over once it is
/// dead, and when it wakes up it finds itself fenced and unmounts.
#[test]
fn exclusive_volumes_fail_over_and_fence_the_old_holder() {
    if !require_root("exclusive_volumes_fail_over_and_fence_the_old_holder") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let mut a = fast_node(&s, &root, "a");
    let mut b = fast_node(&s, &root, "b");
    a.ok(
        "VolumeDriver.Create",
        r#"{"Name":"ex","Opts":{"access":"exclusive"}}"#,
    );
    let mpa = a.ok("VolumeDriver.Mount", r#"{"Name":"ex","ID":"a1"}"#)["Mountpoint"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(format!("{mpa}/page"), "v1").unwrap();
    let st = util::status(&a, "ex");
    assert_eq!(st["holder"]["node"], "a", "{st}");
    assert_eq!(st["generation"], 1, "{st}");

    // The holder is alive: refused once it has had its moment to release (a moved task's
    // Mount can come just before the old one's Unmount), naming it and the way out.
    let t = Instant::now();
    let err = b.err("VolumeDriver.Mount", r#"{"Name":"ex","ID":"b1"}"#);
    let refused = t.elapsed();
    assert!(
        refused >= caravan::ops::service::RELEASE_GRACE
            && refused < caravan::ops::service::RELEASE_GRACE + Duration::from_secs(1),
        "refused after {refused:?}: the holder is given the release grace, then refused"
    );
    assert!(
        err.contains("held by node a")
            && err.contains("takeover ex --force")
            && err.contains("silent for 2s"),
        "{err}"
    );

    // a freezes (a hung host, a cut cable): after dead-after b takes it over on Mount.
    signal(&a, nix::sys::signal::Signal::SIGSTOP);
    let frozen = Instant::now();
    util::eventually(Duration::from_secs(6), "b's takeover", || {
        util::try_http(
            &b.socket,
            "POST",
            "/VolumeDriver.Mount",
            r#"{"Name":"ex","ID":"b1"}"#,
            false,
        )
        .map(|(_, v)| v["Err"] == "")
        .unwrap_or(false)
    });
    let waited = frozen.elapsed();
    // Dead means silent for 2 s on b's clock since b last saw a's heartbeat move, which
    // was up to one heartbeat (plus one observation round) before the freeze.
    assert!(
        waited >= Duration::from_millis(1500),
        "taken over before a was dead: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "failover slower than dead-after + 3 s: {waited:?}"
    );
    let mpb = b.mountpoint("ex");
    assert_eq!(
        std::fs::read_to_string(mpb.join("page")).unwrap(),
        "v1",
        "same data after failover"
    );
    let st = util::status(&b, "ex");
    assert_eq!(st["holder"]["node"], "b", "{st}");
    assert_eq!(st["generation"], 2, "{st}");
    assert_eq!(st["takeovers"][0]["from"], "a", "{st}");
    assert_eq!(st["takeovers"][0]["to"], "b", "{st}");
    assert_eq!(st["takeovers"][0]["forced"], false, "{st}");
    assert!(
        st["mounts"].get("a").is_none(),
        "the old holder's mounts are void: {st}"
    );

    // a wakes up: it notices the generation moved, drops its claim and unmounts.
    signal(&a, nix::sys::signal::Signal::SIGCONT);
    util::eventually(Duration::from_secs(5), "a to fence itself", || {
        !util::is_mountpoint(std::path::Path::new(&mpa))
    });
    assert!(
        a.log_text().contains("lost the exclusive volume"),
        "{}",
        a.log_text()
    );
    // Its container's later Unmount succeeds; its new Mount is refused while b holds it.
    a.ok("VolumeDriver.Unmount", r#"{"Name":"ex","ID":"a1"}"#);
    let err = a.err("VolumeDriver.Mount", r#"{"Name":"ex","ID":"a2"}"#);
    assert!(err.contains("held by node b"), "{err}");

    // A planned move: b's last unmount releases it, and a gets it without a takeover.
    b.ok("VolumeDriver.Unmount", r#"{"Name":"ex","ID":"b1"}"#);
    a.ok("VolumeDriver.Mount", r#"{"Name":"ex","ID":"a2"}"#);
    let st = util::status(&a, "ex");
    assert_eq!(st["holder"]["node"], "a", "{st}");
    assert_eq!(st["generation"], 3, "{st}");
    assert_eq!(st["takeovers"].as_array().unwrap().len(), 1, "{st}");

    // An operator's forced takeover from a live holder, then a killed holder restarting:
    // its restart finds the volume taken and drops its bind mount.
    // (b must have seen a's heartbeat move again since a was frozen, or a is still dead
    // to b and the takeover is not a forced one.)
    util::eventually(Duration::from_secs(5), "b to see a alive again", || {
        let nodes = b.api("GET", "/v1/nodes", "").1;
        nodes
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["node"] == "a" && n["state"] == "alive")
    });
    let out = std::process::Command::new(util::caravan_bin())
        .arg("--socket")
        .arg(&b.socket)
        .args(["takeover", "ex", "--force"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("held by b (generation 4)"));
    a.kill9();
    assert!(
        util::is_mountpoint(&a.mountpoint("ex")),
        "a's bind mount outlives its daemon"
    );
    a.spawn();
    assert!(
        !util::is_mountpoint(&a.mountpoint("ex")),
        "a restarted and kept a volume it lost"
    );
    let st = util::status(&a, "ex");
    let forced = st["takeovers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["forced"] == true && t["to"] == "b");
    assert!(
        forced,
        "the forced takeover is not recorded: {st}\n--- a:\n{}\n--- b:\n{}",
        a.log_text(),
        b.log_text()
    );

    // Without --force, takeover waits for the holder to be declared dead.
    let t = Instant::now();
    b.kill9();
    let out = std::process::Command::new(util::caravan_bin())
        .arg("--socket")
        .arg(&a.socket)
        .args(["takeover", "ex"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "took over a holder that was not dead yet"
    );
    let st = util::status(&a, "ex");
    assert_eq!(st["holder"]["node"], "a", "{st}");
    assert_eq!(st["takeovers"][2]["from"], "b", "{st}");
}

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// One writer, whatever fails (issue 29): a daemon restarted within its lease keeps its
/// container writing; a daemon frozen past it has its container stopped by the fence
/// keeper before another node may take the volume over, and no line of the old writer
/// follows the new writer's first.
#[test]
fn a_holder_that_cannot_renew_its_lease_stops_its_container_before_a_takeover() {
    if !require_root("a_holder_that_cannot_renew_its_lease_stops_its_container_before_a_takeover") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    // Lease: dead-after less one heartbeat, 2.5 s.
    let timing = ["--dead-after", "3s", "--heartbeat", "500ms"];
    let start = |node: &str| {
        let spec = s.path().join(format!("spec-{node}"));
        Daemon::start_with(s.path(), &root, node, spec, "caravan", &timing)
    };
    let mut a = start("a");
    let b = start("b");
    a.ok(
        "VolumeDriver.Create",
        r#"{"Name":"ex","Opts":{"access":"exclusive"}}"#,
    );
    let mpa = a.ok("VolumeDriver.Mount", r#"{"Name":"ex","ID":"a1"}"#)["Mountpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let log = std::path::Path::new(&mpa).join("log");
    let mut writer = util::line_writer(
        std::path::Path::new(&mpa),
        &s.path().join("container-a"),
        "a",
        20,
        false,
    );
    util::eventually(Duration::from_secs(5), "the container to write", || {
        lines(&log).len() > 3
    });
    let info = a.api("GET", "/v1/info", "").1;
    assert_eq!(
        info["fencing"]["volumes"],
        serde_json::json!(["ex"]),
        "{info}"
    );
    assert_eq!(info["fencing"]["keeper_running"], true, "{info}");

    // A restart (an upgrade) within the lease: the container goes on writing past it.
    let stopped = Instant::now();
    a.stop();
    a.spawn();
    let before = lines(&log).len();
    while stopped.elapsed() < Duration::from_secs(4) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        writer.0.try_wait().unwrap().is_none(),
        "a restart within the lease stopped the container"
    );
    assert!(lines(&log).len() > before, "the container stopped writing");
    assert_eq!(util::status(&b, "ex")["holder"]["node"], "a");

    // Frozen past the lease (SIGSTOP: no beat, no unmount, nothing the daemon does).
    signal(&a, nix::sys::signal::Signal::SIGSTOP);
    let frozen = Instant::now();
    util::eventually(Duration::from_secs(3 + 3), "b's takeover", || {
        util::try_http(
            &b.socket,
            "POST",
            "/VolumeDriver.Mount",
            r#"{"Name":"ex","ID":"b1"}"#,
            false,
        )
        .map(|(_, v)| v["Err"] == "")
        .unwrap_or(false)
    });
    let taken = frozen.elapsed();
    // The keeper stopped the container before b could take over.
    let status = writer
        .0
        .try_wait()
        .unwrap()
        .expect("the old container still runs after the takeover");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(nix::libc::SIGKILL), "{status:?}");
    assert!(
        taken >= Duration::from_millis(2500),
        "taken over within the old holder's lease: {taken:?}"
    );
    let mpb = b.mountpoint("ex");
    for i in 0..20 {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(mpb.join("log"))
            .unwrap();
        writeln!(f, "b {i}").unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let all = lines(&mpb.join("log"));
    let first_b = all.iter().position(|l| l.starts_with("b ")).unwrap();
    let late: Vec<&String> = all[first_b..]
        .iter()
        .filter(|l| l.starts_with("a "))
        .collect();
    assert!(
        late.is_empty(),
        "old writer's lines after the new writer's first: {late:?}"
    );
    assert!(first_b > 10, "the old writer's lines are kept: {all:?}");

    // a wakes: it learns what its keeper did, counts it and shows it.
    signal(&a, nix::sys::signal::Signal::SIGCONT);
    util::eventually(Duration::from_secs(5), "a to report the fence", || {
        a.api("GET", "/v1/info", "").1["fencing"]["fences"] == 1
    });
    let info = a.api("GET", "/v1/info", "").1;
    let killed = info["fencing"]["last_fence"]["killed"].as_array().unwrap();
    assert!(!killed.is_empty(), "{info}");
    assert!(a.log_text().contains("lease ran out"), "{}", a.log_text());
    let cli = util::cli_ok(&a.socket, &["info"]);
    assert!(cli.contains("Fenced:") && cli.contains("ex"), "{cli}");
}
