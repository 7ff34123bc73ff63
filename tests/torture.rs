//! Torture: three daemons on one root, concurrent random creates, removes, mounts,
//! unmounts and takeovers for a bounded time, with daemons SIGKILLed and restarted at
//! random points; then invariants.
//!
//! `CARAVAN_TORTURE_SECS` (default 12) sets the duration; `CARAVAN_TORTURE_ROOTS` (three
//! paths separated by `:`, e.g. the test bed's GlusterFS mounts) runs it on a real shared
//! filesystem, one root per daemon.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use util::{require_root, Daemon, Scratch};

/// A tiny xorshift generator: reproducible from the printed seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a worker knows for sure about the names and mounts it owns.
#[derive(Default)]
struct Ledger {
    /// Owned volume -> exists (only while the last operation on it was acknowledged).
    exists: BTreeMap<String, Option<bool>>,
    /// (shared volume, mount id) -> acknowledged count, or None once uncertain.
    mounts: BTreeMap<(String, String), Option<u32>>,
}

/// A failed call: never sent (the daemon is down: nothing changed), or cut off after it
/// was sent (it may or may not have been applied).
#[derive(Debug, PartialEq)]
enum Lost {
    NotSent,
    Unknown,
}

fn call(socket: &std::path::Path, method: &str, body: &str) -> Result<String, Lost> {
    let path = format!("/VolumeDriver.{method}");
    match util::try_http(socket, "POST", &path, body, false) {
        Ok((200, v)) => Ok(v["Err"].as_str().unwrap_or("").to_string()),
        Ok(_) => Err(Lost::Unknown),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Err(Lost::NotSent)
        }
        Err(_) => Err(Lost::Unknown),
    }
}

#[test]
fn torture_three_nodes_with_kills() {
    if !require_root("torture_three_nodes_with_kills") {
        return;
    }
    let secs: u64 = std::env::var("CARAVAN_TORTURE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let seed = 0x2545F4914F6CDD1D ^ (std::process::id() as u64) << 20;
    eprintln!("torture: {secs} s, seed {seed:#x}");
    let s = Scratch::new();
    let roots: Vec<PathBuf> = match std::env::var("CARAVAN_TORTURE_ROOTS") {
        Ok(v) => v.split(':').map(PathBuf::from).collect(),
        Err(_) => vec![s.path().join("root"); 3],
    };
    let fast = ["--dead-after", "2s", "--heartbeat", "200ms"];
    let names = ["a", "b", "c"];
    let daemons: Vec<Arc<RwLock<Daemon>>> = names
        .iter()
        .zip(&roots)
        .map(|(n, root)| {
            let spec = s.path().join(format!("spec-{n}"));
            Arc::new(RwLock::new(Daemon::start_with(
                s.path(),
                root,
                n,
                spec,
                "caravan",
                &fast,
            )))
        })
        .collect();
    let socket = |i: usize| daemons[i].read().unwrap().socket.clone();
    for v in ["s0", "s1", "s2"] {
        assert_eq!(
            call(
                &socket(0),
                "Create",
                &format!(r#"{{"Name":"{v}","Opts":{{}}}}"#)
            ),
            Ok(String::new())
        );
    }
    for v in ["e0", "e1"] {
        let body = format!(r#"{{"Name":"{v}","Opts":{{"access":"exclusive"}}}}"#);
        assert_eq!(call(&socket(0), "Create", &body), Ok(String::new()));
    }
    // One volume per node that the killer mounts through it right after each restart.
    for v in ["r0", "r1", "r2"] {
        let body = format!(r#"{{"Name":"{v}","Opts":{{}}}}"#);
        assert_eq!(call(&socket(0), "Create", &body), Ok(String::new()));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let ledgers: Vec<Arc<Mutex<Ledger>>> = (0..6).map(|_| Arc::default()).collect();
    let acked = Arc::new(Mutex::new(0u64));
    let mut workers = Vec::new();
    for (w, ledger) in ledgers.iter().enumerate() {
        let node = w % 3;
        let (stop, ledger, acked) = (stop.clone(), ledger.clone(), acked.clone());
        let sock = socket(node);
        let mut rng = Rng(seed ^ (w as u64 + 1).wrapping_mul(0x9E3779B97F4A7C15));
        workers.push(std::thread::spawn(move || {
            let id = format!("w{w}");
            while !stop.load(Ordering::Relaxed) {
                let mut l = ledger.lock().unwrap();
                match rng.below(10) {
                    0..=2 => {
                        let name = format!("own-{w}-{}", rng.below(8));
                        let create = rng.below(2) == 0;
                        let r = if create {
                            call(
                                &sock,
                                "Create",
                                &format!(r#"{{"Name":"{name}","Opts":{{}}}}"#),
                            )
                        } else {
                            call(&sock, "Remove", &format!(r#"{{"Name":"{name}"}}"#))
                        };
                        let state = match r {
                            Ok(e) if e.is_empty() => Some(create),
                            Ok(e) if e.contains("no such volume") => Some(false),
                            Ok(e) => panic!("worker {w}: unexpected error on {name}: {e}"),
                            Err(Lost::NotSent) => {
                                drop(l);
                                std::thread::sleep(Duration::from_millis(20));
                                continue;
                            }
                            Err(Lost::Unknown) => None,
                        };
                        l.exists.insert(name, state);
                    }
                    3..=6 => {
                        let v = format!("s{}", rng.below(3));
                        let mount = rng.below(2) == 0
                            || l.mounts.get(&(v.clone(), id.clone())).copied().flatten() == Some(0);
                        let method = if mount { "Mount" } else { "Unmount" };
                        let r = call(&sock, method, &format!(r#"{{"Name":"{v}","ID":"{id}"}}"#));
                        let entry = l.mounts.entry((v.clone(), id.clone())).or_insert(Some(0));
                        match r {
                            Ok(e) if e.is_empty() => {
                                *entry =
                                    entry.map(|c| if mount { c + 1 } else { c.saturating_sub(1) });
                            }
                            Ok(e) => panic!("worker {w}: {method} {v}: {e}"),
                            Err(Lost::NotSent) => {
                                drop(l);
                                std::thread::sleep(Duration::from_millis(20));
                                continue;
                            }
                            Err(Lost::Unknown) => *entry = None,
                        }
                    }
                    7..=8 => {
                        let v = format!("e{}", rng.below(2));
                        let method = if rng.below(2) == 0 {
                            "Mount"
                        } else {
                            "Unmount"
                        };
                        match call(&sock, method, &format!(r#"{{"Name":"{v}","ID":"{id}"}}"#)) {
                            // Refused while another node holds it, while another
                            // container (worker) has it mounted, or while this node
                            // re-validates after a freeze.
                            Ok(e)
                                if e.is_empty()
                                    || e.contains("held by node")
                                    || e.contains("one writer at a time")
                                    || e.contains("re-validating") => {}
                            Ok(e) => panic!("worker {w}: {method} {v}: {e}"),
                            Err(_) => {}
                        }
                    }
                    _ => {
                        let v = format!("e{}", rng.below(2));
                        let body = r#"{"force":true}"#;
                        let _ = util::try_http(
                            &sock,
                            "POST",
                            &format!("/v1/volumes/{v}/takeover"),
                            body,
                            true,
                        );
                    }
                }
                drop(l);
                *acked.lock().unwrap() += 1;
            }
        }));
    }

    // The killer: SIGKILL a random node, leave it down a moment, start it again, and
    // at once mount a volume through it while another node tries to remove that volume
    // (it must refuse: the mount is a new incarnation's). Every fourth round freezes the
    // node with SIGSTOP for longer than --dead-after instead (its exclusive volumes may be
    // taken over meanwhile; it must drop them before mounting them again). Once, a second
    // daemon with a live node's name tries to start (it must refuse).
    let mut rng = Rng(seed);
    let until = Instant::now() + Duration::from_secs(secs);
    let (mut kills, mut freezes, mut refused_removes) = (0, 0, 0);
    let mut removed_under_a_mount = Vec::new();
    let mut duplicate_tried = false;
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(400 + rng.below(1200)));
        let i = rng.below(3) as usize;
        if rng.below(4) == 0 {
            let d = daemons[i].read().unwrap();
            signal(&d, nix::sys::signal::Signal::SIGSTOP);
            std::thread::sleep(Duration::from_millis(2600 + rng.below(600)));
            signal(&d, nix::sys::signal::Signal::SIGCONT);
            freezes += 1;
            continue;
        }
        {
            let mut d = daemons[i].write().unwrap();
            d.kill9();
            std::thread::sleep(Duration::from_millis(rng.below(600)));
            d.spawn();
        }
        kills += 1;
        let (v, id) = (format!("r{i}"), format!("k{kills}"));
        let mounted = call(
            &socket(i),
            "Mount",
            &format!(r#"{{"Name":"{v}","ID":"{id}"}}"#),
        );
        if mounted == Ok(String::new()) {
            let other = (i + 1 + rng.below(2) as usize) % 3;
            match call(&socket(other), "Remove", &format!(r#"{{"Name":"{v}"}}"#)) {
                Ok(e) if e.is_empty() => removed_under_a_mount.push(format!(
                    "{v} removed through {} right after {} restarted and mounted it",
                    names[other], names[i]
                )),
                Ok(_) => refused_removes += 1,
                Err(_) => {}
            }
            let _ = call(
                &socket(i),
                "Unmount",
                &format!(r#"{{"Name":"{v}","ID":"{id}"}}"#),
            );
        }
        if !duplicate_tried && kills >= 2 {
            duplicate_tried = true;
            assert_duplicate_refused(&s, &roots[i], names[i]);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("a worker panicked");
    }
    eprintln!(
        "torture: {} operations, {kills} kills, {freezes} freezes, {refused_removes} removes refused under a restarted node's mount",
        acked.lock().unwrap()
    );
    assert!(
        removed_under_a_mount.is_empty(),
        "removes acknowledged under a live mount: {removed_under_a_mount:?}"
    );
    assert!(
        kills < 3 || refused_removes > 0,
        "no remove was tried under a restarted node's mount: the check checked nothing"
    );

    // 1. The metadata opens cleanly on every node, and every node lists the same.
    let lists: Vec<BTreeSet<String>> = (0..3)
        .map(|i| {
            let d = daemons[i].read().unwrap();
            let v = d.ok("VolumeDriver.List", "{}");
            v["Volumes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["Name"].as_str().unwrap().to_string())
                .collect()
        })
        .collect();
    assert!(
        lists.iter().all(|l| l == &lists[0]),
        "nodes disagree: {lists:?}"
    );
    let a = daemons[0].read().unwrap();
    // Every volume has its data: no record was committed without its folder, and no
    // remove moved the folder of a volume created again since.
    for name in &lists[0] {
        let data = roots[0].join("volumes").join(name).join("data");
        assert!(data.is_dir(), "{name} is listed but {data:?} is missing");
    }

    // 2. Acknowledged creates and removes hold.
    for l in &ledgers {
        for (name, state) in &l.lock().unwrap().exists {
            if let Some(exists) = state {
                assert_eq!(
                    lists[0].contains(name),
                    *exists,
                    "{name}: acknowledged {} lost",
                    if *exists { "create" } else { "remove" }
                );
            }
        }
    }
    // 3. Exclusive volumes: mounted by at most the holder; takeover generations grow.
    for v in ["e0", "e1"] {
        let st = util::status(&a, v);
        let mounted: Vec<&String> = st["mounts"].as_object().unwrap().keys().collect();
        assert!(mounted.len() <= 1, "{v} mounted on several nodes: {st}");
        if let Some(n) = mounted.first() {
            assert_eq!(
                st["holder"]["node"],
                n.as_str(),
                "{v}: mounted by a node that is not the holder: {st}"
            );
        }
        let gens: Vec<u64> = st["takeovers"]
            .as_array()
            .map(|t| {
                t.iter()
                    .map(|x| x["generation"].as_u64().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            gens.windows(2).all(|g| g[0] < g[1]),
            "{v}: takeover generations not increasing: {gens:?}"
        );
        assert!(
            gens.last().copied().unwrap_or(0) <= st["generation"].as_u64().unwrap(),
            "{st}"
        );
    }
    // 4. Shared volumes: per node, the recorded count is the sum of the acknowledged
    //    counts of that node's workers, wherever all of them are certain.
    let mut expected: BTreeMap<(String, &str), Option<u32>> = BTreeMap::new();
    for (w, l) in ledgers.iter().enumerate() {
        for ((v, _id), count) in &l.lock().unwrap().mounts {
            let e = expected.entry((v.clone(), names[w % 3])).or_insert(Some(0));
            *e = match (*e, count) {
                (Some(a), Some(b)) => Some(a + b),
                _ => None,
            };
        }
    }
    let mut checked = 0;
    for ((v, node), count) in &expected {
        let Some(count) = count else { continue };
        let st = util::status(&a, v);
        let recorded = st["mounts"][*node]["count"].as_u64().unwrap_or(0);
        assert_eq!(
            recorded, *count as u64,
            "{v} on {node}: recorded {recorded}, acknowledged {count}: {st}"
        );
        checked += 1;
    }
    eprintln!(
        "torture: {checked} of {} (volume, node) mount counts were certain and match",
        expected.len()
    );
    drop(a);

    // 5. Over the whole run, no exclusive volume was held by two nodes at once. Every
    //    node logs each grant, takeover and exclusive mount once its commit is durable,
    //    with the commit's cluster-wide generation; merged in that order (no clocks), each
    //    mount must be by the latest holder and under its generation.
    let mut events: Vec<Exclusive> = Vec::new();
    for d in &daemons {
        events.extend(
            d.read()
                .unwrap()
                .log_text()
                .lines()
                .filter_map(Exclusive::parse),
        );
    }
    events.sort_by_key(|e| e.commit);
    let mut holders: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let (mut grants, mut mounts) = (0, 0);
    for e in &events {
        let current = holders.get(&e.volume).cloned();
        if let Some((node, generation)) = &current {
            if e.grant {
                assert!(e.generation > *generation, "{e:?} after {current:?}");
            } else if e.generation == *generation {
                assert_eq!(
                    &e.node, node,
                    "two nodes mounted under one generation: {e:?}"
                );
            } else {
                // A newer generation whose grant line was lost with a killed daemon is
                // fine; an older one means a node mounted after losing the volume.
                assert!(
                    e.generation > *generation,
                    "{e:?} mounted under an old generation after {current:?}"
                );
            }
        }
        if e.grant {
            grants += 1;
        } else {
            mounts += 1;
        }
        holders.insert(e.volume.clone(), (e.node.clone(), e.generation));
    }
    assert!(
        mounts > 0,
        "no exclusive mount was logged: the check checked nothing"
    );
    eprintln!("torture: {grants} grants and {mounts} exclusive mounts in commit order, one holder at a time");
}

/// One line of a daemon's log about an exclusive volume.
#[derive(Debug)]
struct Exclusive {
    commit: u64,
    volume: String,
    node: String,
    generation: u64,
    grant: bool,
}

impl Exclusive {
    fn parse(line: &str) -> Option<Exclusive> {
        let grant = line.contains("exclusive volume taken over")
            || line.contains("exclusive volume granted");
        if !grant && !line.contains("exclusive mount committed") {
            return None;
        }
        let field = |k: &str| {
            let start = line.find(&format!(" {k}="))? + k.len() + 2;
            line[start..].split_whitespace().next().map(str::to_string)
        };
        Some(Exclusive {
            commit: field("commit")?.parse().ok()?,
            volume: field("volume")?,
            node: field("node")?,
            generation: field("generation")?.parse().ok()?,
            grant,
        })
    }
}

/// A second daemon with `node`'s name on `root` must exit with an error naming the name,
/// within 10 s, without serving.
fn assert_duplicate_refused(s: &Scratch, root: &std::path::Path, node: &str) {
    let dir = s.path().join(format!("duplicate-{node}"));
    let (status, err) =
        util::daemon_that_must_exit(&dir, root, node, "a second daemon with a live name");
    assert!(
        !status.success() && err.contains(&format!("node name \"{node}\"")),
        "{err}"
    );
}

fn signal(d: &Daemon, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(d.pid()), sig).unwrap();
}
