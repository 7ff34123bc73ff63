//! End to end on the multi-host test bed (scripts/testbed): GlusterFS shared by three
//! simulated hosts, each with its own dockerd (in its own namespaces) and caravan.

mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use std::time::{Duration, Instant};
use util::testbed::{dk, dk_err, dk_ok, ok, script, stdout_ok, three_hosts, ThreeHosts};

/// `docker run -d --name NAME -v VOLUME:/data` of a container that sleeps, on host K.
fn run_sleeper(k: u32, name: &str, volume: &str) -> Output {
    let v = format!("{volume}:/data");
    dk(
        k,
        &[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "none",
            "-v",
            &v,
            util::docker::IMAGE,
            "sleep",
            "3600",
        ],
    )
}

/// `docker run --rm -v VOLUME:/data` of `cmd`, on host K.
fn run_once(k: u32, volume: &str, cmd: &[&str]) -> Output {
    let v = format!("{volume}:/data");
    let mut args = vec![
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &v,
        util::docker::IMAGE,
    ];
    args.extend_from_slice(cmd);
    dk(k, &args)
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Tears the test bed down (its dockerds, containers and daemons too), whatever happened.
struct Bed;

impl Bed {
    /// The machine's dockerd is the source of the test image each host's dockerd loads.
    fn start() -> Bed {
        ok(&["docker-up"]);
        Bed
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = script(&["testbed", "down"]);
    }
}

#[test]
fn three_hosts_share_volumes_refuse_conflicts_and_fail_over() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !util::docker::available("three_hosts") {
        return;
    }
    let bed = Bed::start();
    ok(&["testbed", "up", "3"]);
    // GlusterFS timeouts at 10 s (the brick drops a silent client 10.5 s after a cut):
    // takeovers wait 12 s.
    ok(&["testbed", "timeouts", "10"]);
    for k in ["1", "2", "3"] {
        ok(&[
            "testbed",
            "host",
            k,
            "up",
            "--dead-after",
            "5s",
            "--heartbeat",
            "500ms",
            "--fence-wait",
            "12s",
        ]);
    }

    // Created on h1, listed and inspected on h2 and h3.
    dk_ok(
        1,
        &[
            "volume",
            "create",
            "-d",
            "caravan",
            "-o",
            "size=2G",
            "tb-shared",
        ],
    );
    for k in [2, 3] {
        let ls = dk_ok(k, &["volume", "ls", "--format", "{{.Driver}} {{.Name}}"]);
        assert!(ls.lines().any(|l| l == "caravan tb-shared"), "h{k}: {ls}");
        let st = dk_ok(
            k,
            &[
                "volume",
                "inspect",
                "tb-shared",
                "--format",
                "{{.Status.created_by}} {{.Status.size}}",
            ],
        );
        assert_eq!(st, "h1 2G", "h{k}");
    }

    // h1 holds a mount: a remove on h2 is refused, naming h1.
    stdout_ok(1, "run tb-c1", run_sleeper(1, "tb-c1", "tb-shared"));
    dk_ok(1, &["exec", "tb-c1", "sh", "-c", "echo from-h1 > /data/f"]);
    assert_eq!(
        stdout_ok(2, "cat", run_once(2, "tb-shared", &["cat", "/data/f"])),
        "from-h1"
    );
    let err = dk_err(2, &["volume", "rm", "tb-shared"]);
    assert!(err.contains("mounted on h1"), "{err}");

    // An exclusive volume held by h1: a container on h2 is refused at once.
    dk_ok(
        1,
        &[
            "volume",
            "create",
            "-d",
            "caravan",
            "-o",
            "access=exclusive",
            "tb-excl",
        ],
    );
    stdout_ok(1, "run tb-c2", run_sleeper(1, "tb-c2", "tb-excl"));
    let t = Instant::now();
    let run = run_once(2, "tb-excl", &["true"]);
    assert!(!run.status.success(), "h2 ran on h1's exclusive volume");
    let err = String::from_utf8_lossy(&run.stderr).to_string();
    assert!(err.contains("held by node h1"), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the refusal took {:?}",
        t.elapsed()
    );

    // h1 dies. Once it is declared dead its mounts stop blocking, and h2 takes over.
    ok(&["testbed", "host", "1", "kill"]);
    let killed = Instant::now();
    let mut taken = None;
    while killed.elapsed() < Duration::from_secs(30) {
        let _ = dk(2, &["rm", "-f", "tb-c3"]);
        let run = run_sleeper(2, "tb-c3", "tb-excl");
        if run.status.success() {
            taken = Some(killed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let taken = taken.expect("h2 could not take the exclusive volume over within 30 s");
    eprintln!("takeover on h2 {taken:?} after the kill of h1 (dead-after 5s)");
    assert!(
        taken >= Duration::from_secs(4),
        "taken over before h1 could be dead: {taken:?}"
    );
    let holder = dk_ok(
        3,
        &[
            "volume",
            "inspect",
            "tb-excl",
            "--format",
            "{{.Status.holder.node}} {{(index .Status.takeovers 0).from}}",
        ],
    );
    assert_eq!(holder, "h2 h1");
    dk_ok(2, &["volume", "rm", "tb-shared"]);
    let ls = dk_ok(3, &["volume", "ls", "-q"]);
    assert!(!ls.lines().any(|l| l == "tb-shared"), "{ls}");
    dk_ok(2, &["rm", "-f", "tb-c3"]);
    dk_ok(2, &["volume", "rm", "tb-excl"]);
    drop(bed);
}

#[test]
fn the_failover_demo_serves_the_same_page_on_host_2() {
    if !util::docker::available("failover_demo") {
        return;
    }
    // Every test here uses the one test bed: one at a time.
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let out = script(&[
        "demo-failover",
        "--dead-after",
        "5s",
        "--ping-timeout",
        "10",
    ]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("failover: "))
        .unwrap_or_else(|| panic!("{text}"));
    let ms: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    eprintln!("{line}");
    // The fence bound: dead-after 5 s + the fence wait (GlusterFS timeouts 10 s + 2 s), less one
    // heartbeat (silence counts from the last beat seen), + at most 3 s.
    assert!(
        (16000..20000).contains(&ms),
        "failover should take the fence bound (dead-after 5 s + fence wait 12 s) + at most 3 s: {line}"
    );
}

/// Runs `f`, returns its result and how long it took.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

/// Starts a second daemon on host 1's mount, with `--timeout 4s`, and waits (at most
/// `bound`) for the one-line error it must print. Returns the process, still to be reaped.
fn start_fails_clearly(outage: &Outage, bound: Duration) -> std::process::Child {
    use std::io::BufRead;
    let base = PathBuf::from("/var/lib/caravan-testbed");
    let state = PathBuf::from("/tmp/caravan-testbed-late");
    let _ = std::fs::remove_dir_all(&state);
    let mut child = Command::new(util::caravan_bin())
        .args([
            "daemon",
            "--config",
            "/dev/null",
            "--node",
            "late",
            "--timeout",
            "4s",
        ])
        .arg("--root")
        .arg(base.join("h1/export"))
        .arg("--state-dir")
        .arg(state.join("state"))
        .arg("--socket")
        .arg(state.join("late.sock"))
        .arg("--spec-dir")
        .arg(state.join("spec"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start caravan daemon");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(|l| l.ok())
        {
            if line.starts_with("caravan daemon:") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx.recv_timeout(bound).unwrap_or_else(|_| {
        panic!(
            "{}: a new daemon printed no error within {bound:?}",
            outage.name
        )
    });
    eprintln!("{}: a new daemon said: {line}", outage.name);
    assert!(
        ["did not finish within 4s", "not connected"]
            .iter()
            .any(|e| line.contains(e)),
        "{}: {line}",
        outage.name
    );
    child
}

fn caravan_h1(args: &[&str]) -> Output {
    Command::new(util::caravan_bin())
        .args(["--socket", "/run/caravan-testbed/h1.sock"])
        .args(args)
        .output()
        .expect("run caravan")
}

/// How the export goes away in [`export_outage`], and what the calls made meanwhile may
/// say.
struct Outage {
    name: &'static str,
    /// `scripts/testbed export ...` arguments that take it away and bring it back.
    stop: &'static str,
    restore: &'static str,
    /// A refused mutation's message contains one of these.
    errors: &'static [&'static str],
}

/// The export frozen (GlusterFS brick SIGSTOPped) with a container running on a volume
/// and Docker users calling: every call returns within the bound, with a cached answer or
/// a clear error, and dockerd stays responsive; once the export is thawed, everything
/// works again without restarting caravan.
#[test]
fn a_stalled_export_never_hangs_docker() {
    export_outage(&Outage {
        name: "frozen",
        stop: "freeze",
        restore: "thaw",
        errors: &["not responding", "did not finish"],
    });
}

/// The same with the GlusterFS brick SIGKILLed and started again: the clients' calls fail
/// at once (ENOTCONN) instead of blocking.
#[test]
fn a_killed_export_never_hangs_docker_and_comes_back() {
    export_outage(&Outage {
        name: "killed",
        stop: "kill",
        restore: "start",
        errors: &["not connected", "not responding", "did not finish"],
    });
}

fn export_outage(outage: &Outage) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !util::docker::available(outage.name) {
        return;
    }
    let name = outage.name;
    let bed = Bed::start();
    ok(&["testbed", "up", "1"]);
    // --timeout 8s: calls give up after at most 8 s, and the export counts as stalled
    // once an operation has waited 2 s (a quarter of it).
    ok(&["testbed", "host", "1", "up", "--timeout", "8s"]);
    let bound = Duration::from_secs(12);
    for v in ["tb-fz", "tb-fz-rm", "tb-fz-un"] {
        dk_ok(1, &["volume", "create", "-d", "caravan", v]);
    }
    stdout_ok(1, "run tb-c1", run_sleeper(1, "tb-c1", "tb-fz"));
    stdout_ok(1, "run tb-c2", run_sleeper(1, "tb-c2", "tb-fz-un"));
    dk_ok(1, &["exec", "tb-c1", "sh", "-c", "echo before > /data/f"]);

    ok(&["testbed", "export", outage.stop]);
    let mut report = Vec::new();
    let (ls, t) = timed(|| dk(1, &["volume", "ls", "--format", "{{.Name}}"]));
    report.push(("docker volume ls", t));
    let (run, t) = timed(|| run_once(1, "tb-fz", &["true"]));
    report.push(("docker run -v", t));
    let (rm, t) = timed(|| dk(1, &["volume", "rm", "tb-fz-rm"]));
    report.push(("docker volume rm", t));
    let (list, t) = timed(|| caravan_h1(&["list", "--json"]));
    report.push(("caravan list", t));
    let (ps, t) = timed(|| dk(1, &["ps"]));
    report.push(("docker ps", t));
    // A container removed meanwhile: dockerd sends its Unmount once, now.
    let (_, t) = timed(|| dk(1, &["rm", "-f", "tb-c2"]));
    report.push(("docker rm -f (an Unmount)", t));
    // A daemon starting now gives up with a clear error instead of hanging in its
    // start-up. (Its process may still only end once the export answers: a FUSE request
    // the server has received cannot be interrupted.)
    let (starting, t) = timed(|| start_fails_clearly(outage, bound));
    report.push(("a new daemon's start", t));
    let info = caravan_h1(&["info"]);
    for (what, t) in &report {
        eprintln!("{name}: {what} returned in {:.2} s", t.as_secs_f64());
        assert!(*t < bound, "{name}: {what} took {t:?}");
    }
    eprintln!(
        "{name}: caravan info:\n{}",
        String::from_utf8_lossy(&info.stdout)
    );
    // Reads answer from the last known metadata.
    assert!(stdout_ok(1, "docker volume ls", ls).contains("tb-fz"));
    let volumes: serde_json::Value =
        serde_json::from_str(&stdout_ok(1, "caravan list", list)).unwrap();
    assert!(volumes
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["name"] == "tb-fz"));
    stdout_ok(1, "docker ps", ps);
    // Mutations fail, clearly.
    for (what, out) in [("docker run -v", &run), ("docker volume rm", &rm)] {
        assert!(!out.status.success(), "{name}: {what} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            outage.errors.iter().any(|e| err.contains(e)),
            "{name}: {what}: {err}"
        );
    }

    ok(&["testbed", "export", outage.restore]);
    let mut starting = starting;
    let _ = starting.kill();
    let _ = starting.wait();
    let t = Instant::now();
    util::eventually(
        Duration::from_secs(60),
        "the export to answer again",
        || run_once(1, "tb-fz", &["cat", "/data/f"]).status.success(),
    );
    eprintln!(
        "{name}, then `testbed export {}`: docker run -v works again after {:.1} s",
        outage.restore,
        t.elapsed().as_secs_f64()
    );
    // The running container's data is still there, the refused remove can be done now,
    // and the metadata is consistent.
    assert_eq!(dk_ok(1, &["exec", "tb-c1", "cat", "/data/f"]), "before");
    // The Unmount sent during the outage was recorded and applied once it ended: the
    // volume is no longer counted as mounted on h1, and can be removed.
    util::eventually(Duration::from_secs(30), "the recorded unmount", || {
        dk(1, &["volume", "rm", "tb-fz-un"]).status.success()
    });
    dk_ok(1, &["volume", "rm", "tb-fz-rm"]);
    dk_ok(1, &["volume", "create", "-d", "caravan", "tb-fz-rm"]);
    let list = caravan_h1(&["list", "--json"]);
    let volumes: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let names: Vec<&str> = volumes
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(
        names.contains(&"tb-fz") && names.contains(&"tb-fz-rm"),
        "{names:?}"
    );
    assert!(
        volumes
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["stale"] != true),
        "{volumes}"
    );
    let inspect = caravan_h1(&["inspect", "tb-fz", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(v["mounts"]["h1"]["count"], 1, "one container uses it: {v}");

    dk_ok(1, &["rm", "-f", "tb-c1"]);
    for v in ["tb-fz", "tb-fz-rm"] {
        dk_ok(1, &["volume", "rm", v]);
    }
    drop(bed);
}

/// The heartbeat under load: three hosts on the GlusterFS export, 16 clients each mixing
/// creates, mounts, unmounts and removes for 60 s (`CARAVAN_SOAK_SECS`), with
/// `--dead-after 3s`: no node is ever judged dead by another (each daemon logs every
/// change of its verdicts), and the longest gap between two beats of each node, read
/// through another host's mount every 20 ms, stays under twice the 1 s interval.
#[test]
fn no_live_node_is_judged_dead_under_load() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !util::require_root("no_live_node_is_judged_dead_under_load") {
        return;
    }
    let secs = util::env_num("CARAVAN_SOAK_SECS", 60) as u64;
    let bed = three_hosts("s", "soak", &["--dead-after", "3s", "--heartbeat", "1s"]);
    let (roots, daemons) = (&bed.roots, &bed.daemons);
    let stop = Instant::now() + Duration::from_secs(secs);
    let (calls, failures, gaps) = std::thread::scope(|scope| {
        // Each node's beats as seen through the next host's mount.
        let watcher = scope.spawn(|| {
            let mut last: Vec<(Option<u64>, Instant, Duration)> =
                vec![(None, Instant::now(), Duration::ZERO); 3];
            while Instant::now() < stop {
                for (i, l) in last.iter_mut().enumerate() {
                    let file = roots[(i + 1) % 3].join(format!(".caravan/nodes/s{}.json", i + 1));
                    let seq = std::fs::read(&file)
                        .ok()
                        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                        .and_then(|v| v["seq"].as_u64());
                    if seq.is_some() && seq != l.0 {
                        let now = Instant::now();
                        if l.0.is_some() {
                            l.2 = l.2.max(now - l.1);
                        }
                        *l = (seq, now, l.2);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            last.into_iter().map(|l| l.2).collect::<Vec<_>>()
        });
        let clients: Vec<_> = (0..48)
            .map(|c| {
                let d = &daemons[c % 3];
                scope.spawn(move || {
                    let (mut calls, mut failures) = (0u64, Vec::new());
                    let mut i = 0;
                    while Instant::now() < stop {
                        let name = format!("soak-{c}-{i}");
                        i += 1;
                        for (method, body) in [
                            ("Create", format!(r#"{{"Name":"{name}","Opts":{{}}}}"#)),
                            ("Mount", format!(r#"{{"Name":"{name}","ID":"c{c}"}}"#)),
                            ("Unmount", format!(r#"{{"Name":"{name}","ID":"c{c}"}}"#)),
                            ("Remove", format!(r#"{{"Name":"{name}"}}"#)),
                        ] {
                            let v = d.plugin(&format!("VolumeDriver.{method}"), &body);
                            calls += 1;
                            let err = v["Err"].as_str().unwrap_or("").to_string();
                            if !err.is_empty() {
                                failures.push(format!("{method} {name}: {err}"));
                            }
                        }
                    }
                    (calls, failures)
                })
            })
            .collect();
        let (mut calls, mut failures) = (0, Vec::new());
        for c in clients {
            let (n, f) = c.join().unwrap();
            calls += n;
            failures.extend(f);
        }
        (calls, failures, watcher.join().unwrap())
    });
    eprintln!(
        "soak: {calls} calls in {secs} s from 3 hosts x 16 clients ({:.0}/s), {} failed",
        calls as f64 / secs as f64,
        failures.len()
    );
    for (i, gap) in gaps.iter().enumerate() {
        eprintln!(
            "soak: longest gap between beats of s{}: {:.0} ms",
            i + 1,
            gap.as_secs_f64() * 1e3
        );
    }
    assert!(
        calls > 1000,
        "too little load to prove anything: {calls} calls"
    );
    util::assert_nobody_judged_dead(daemons);
    for (i, gap) in gaps.iter().enumerate() {
        assert!(
            *gap < Duration::from_secs(2),
            "s{}'s heartbeat paused {gap:?} under load",
            i + 1
        );
    }
    assert!(
        failures.len() * 100 <= calls as usize,
        "more than 1% of the calls failed: {:?}",
        &failures[..failures.len().min(10)]
    );
}

/// A partitioned exclusive holder comes back to its senses: host 3 holds volume `pv`,
/// is busy committing, and its link to everyone is cut for longer than the GlusterFS
/// client's ping timeout (set to 10 s), so its calls inside sled fail with ENOTCONN;
/// host 2 takes `pv` over once host 3 has been silent for --dead-after and the file
/// server has freed the cluster lock host 3 held; when the link comes back, host 3 (its
/// store still working, whatever sled did) drops its bind mount of `pv`, refuses to
/// mount it, and serves on.
#[test]
fn a_partitioned_holder_drops_its_claim_when_the_link_comes_back() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !util::require_root("a_partitioned_holder_drops_its_claim_when_the_link_comes_back") {
        return;
    }
    // Takeovers wait for the GlusterFS timeouts set below (10 s), + 2 s.
    let flags = [
        "--dead-after",
        "5s",
        "--heartbeat",
        "1s",
        "--timeout",
        "8s",
        "--fence-wait",
        "12s",
    ];
    let bed = three_hosts("p", "part", &flags);
    ok(&["testbed", "timeouts", "10"]);
    let daemons = &bed.daemons;
    struct LinkUp;
    impl Drop for LinkUp {
        fn drop(&mut self) {
            let _ = script(&["testbed", "link", "3", "up"]);
        }
    }
    let (h2, h3) = (&daemons[1], &daemons[2]);
    h3.ok(
        "VolumeDriver.Create",
        r#"{"Name":"pv","Opts":{"access":"exclusive"}}"#,
    );
    let mp3 = h3.ok("VolumeDriver.Mount", r#"{"Name":"pv","ID":"c3"}"#)["Mountpoint"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(format!("{mp3}/written-by-h3"), "before the cut").unwrap();
    // A commit through host 2 proves host 3's hold of the cluster lock ended: a lock held
    // by a host that is cut off is freed only when the file server gives up on it
    // (GlusterFS: about 42 s), which would only measure the server here.
    h2.ok("VolumeDriver.Create", r#"{"Name":"probe","Opts":{}}"#);

    // Host 3 is busy committing when the link goes: its store is inside sled when the
    // client's calls start failing with ENOTCONN (where sled 0.34 unwraps I/O errors).
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let committer = {
        let (busy, socket) = (busy.clone(), h3.socket.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while busy.load(std::sync::atomic::Ordering::SeqCst) {
                let body = format!(r#"{{"Name":"busy-{i}","Opts":{{}}}}"#);
                let _ = util::try_http(&socket, "POST", "/VolumeDriver.Create", &body, false);
                i += 1;
            }
        })
    };
    util::eventually(
        Duration::from_secs(10),
        "host 3 to be busy committing",
        || {
            let v = h3.plugin("VolumeDriver.Get", r#"{"Name":"busy-3"}"#);
            v["Err"].as_str().is_some_and(str::is_empty)
        },
    );
    ok(&["testbed", "link", "3", "down"]);
    let _link_up = LinkUp;
    let cut = Instant::now();
    let mut last = String::new();
    loop {
        let v = h2.plugin("VolumeDriver.Mount", r#"{"Name":"pv","ID":"c2"}"#);
        if v["Err"].as_str().is_some_and(str::is_empty) {
            break;
        }
        last = v["Err"].as_str().unwrap_or("").to_string();
        // Host 3 was inside a hold of the cluster lock when it was cut off: the file
        // server frees that lock only when it gives up on host 3 (about 42 s here).
        assert!(
            cut.elapsed() < Duration::from_secs(120),
            "host 2 did not take pv over within 120 s; last error: {last}\nhost 2's log:\n{}",
            h2.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("partition: host 2's last refusal before the takeover: {last}");
    let took_over = cut.elapsed();
    eprintln!(
        "partition: host 2 took pv over {:.1} s after the cut",
        took_over.as_secs_f64()
    );
    // Silence is counted from host 3's last beat, up to one interval (1 s) before the cut.
    assert!(
        took_over >= Duration::from_secs(5 - 1),
        "taken over before --dead-after: {took_over:?}"
    );
    let mp2 = h2.mountpoint("pv");
    assert_eq!(
        std::fs::read_to_string(mp2.join("written-by-h3")).unwrap(),
        "before the cut"
    );
    let v = h3.plugin("VolumeDriver.Mount", r#"{"Name":"pv","ID":"c3b"}"#);
    let err = v["Err"].as_str().unwrap_or("").to_string();
    assert!(!err.is_empty(), "the cut-off holder mounted pv: {v}");
    eprintln!("partition: host 3's Mount while cut off: {err}");

    drop(_link_up);
    let back = Instant::now();
    busy.store(false, std::sync::atomic::Ordering::SeqCst);
    committer.join().unwrap();
    util::eventually(
        Duration::from_secs(90),
        "host 3 to drop its bind mount of pv",
        || !util::is_mountpoint(&h3.mountpoint("pv")),
    );
    eprintln!(
        "partition: host 3 dropped pv {:.1} s after the link came back",
        back.elapsed().as_secs_f64()
    );
    let log = h3.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("unmounting it") && l.contains("pv")),
        "host 3 says why it unmounted pv:\n{}",
        log.lines()
            .filter(|l| l.contains("pv") || l.contains("WARN") || l.contains("ERROR"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    util::eventually(
        Duration::from_secs(60),
        "host 3's store to work again",
        || {
            let v = h3.plugin("VolumeDriver.Create", r#"{"Name":"after","Opts":{}}"#);
            v["Err"].as_str().is_some_and(str::is_empty)
        },
    );
    let v = h3.plugin("VolumeDriver.Mount", r#"{"Name":"pv","ID":"c3c"}"#);
    let err = v["Err"].as_str().unwrap_or("").to_string();
    let events = |d: &util::Daemon| {
        d.log_text()
            .lines()
            .filter(|l| {
                [
                    "exclusive",
                    "judged",
                    "taken",
                    "lost",
                    "re-valid",
                    "cut off",
                    "sled",
                    "alive",
                ]
                .iter()
                .any(|k| l.contains(k))
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        err.contains("held by node p2"),
        "host 3 mounted pv again ({v}):\nhost 3:\n{}\nhost 2:\n{}",
        events(h3),
        events(h2)
    );
    let st = util::status(h2, "pv");
    assert_eq!(st["holder"]["node"], "p2", "{st}");
    let info = h3.api("GET", "/v1/info", "").1;
    eprintln!(
        "partition: host 3's store after the partition: {} failed holds ({})",
        info["store"]["session_failures"], info["store"]["last_failure"]
    );
    assert!(info["standing"]["revalidating"].is_null(), "{info}");
}

/// An export that every host loses for a while (the GlusterFS brick frozen for four
/// times --dead-after) sets off no wave of takeovers or removes when it answers again:
/// time nobody could see counts for nobody, so nobody is judged dead, an exclusive volume
/// stays with its holder, and a volume mounted on another host cannot be removed.
#[test]
fn an_export_stall_every_host_saw_kills_nobody() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !util::require_root("an_export_stall_every_host_saw_kills_nobody") {
        return;
    }
    let flags = ["--dead-after", "3s", "--heartbeat", "1s", "--timeout", "8s"];
    let bed = three_hosts("q", "stall", &flags);
    let daemons = &bed.daemons;
    let (q1, q2, q3) = (&daemons[0], &daemons[1], &daemons[2]);
    q1.ok(
        "VolumeDriver.Create",
        r#"{"Name":"sx","Opts":{"access":"exclusive"}}"#,
    );
    q1.ok("VolumeDriver.Mount", r#"{"Name":"sx","ID":"one"}"#);
    q2.ok("VolumeDriver.Create", r#"{"Name":"ss","Opts":{}}"#);
    q2.ok("VolumeDriver.Mount", r#"{"Name":"ss","ID":"two"}"#);

    // The stall is the stimulus here, so it lasts a fixed time: 12 s, four dead-afters.
    ok(&["testbed", "export", "freeze"]);
    std::thread::sleep(Duration::from_secs(12));
    ok(&["testbed", "export", "thaw"]);

    // Right after, and for a few heartbeats, another host keeps trying.
    let until = Instant::now() + Duration::from_secs(6);
    let mut refusals = 0;
    while Instant::now() < until {
        let m = q3.plugin("VolumeDriver.Mount", r#"{"Name":"sx","ID":"three"}"#);
        assert!(
            !m["Err"].as_str().is_some_and(str::is_empty),
            "q3 took sx over from q1 right after the stall"
        );
        let r = q3.plugin("VolumeDriver.Remove", r#"{"Name":"ss"}"#);
        assert!(
            !r["Err"].as_str().is_some_and(str::is_empty),
            "q3 removed ss under q2's mount right after the stall"
        );
        refusals += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let err = q3.err("VolumeDriver.Mount", r#"{"Name":"sx","ID":"three"}"#);
    assert!(err.contains("held by node q1"), "{err}");
    let st = util::status(q1, "sx");
    assert_eq!(st["holder"]["node"], "q1", "{st}");
    assert!(
        st["takeovers"].as_array().is_none_or(|t| t.is_empty()),
        "{st}"
    );
    util::assert_nobody_judged_dead(daemons);
    eprintln!("stall: {refusals} takeover and remove attempts after the thaw, all refused");
}

/// The export goes away under a host and comes back, three ways, while host 3 holds an
/// exclusive volume and has a shared one mounted (--dead-after 5s):
///
/// 1. host 3's GlusterFS client is killed (as an OOM kill would) and the export mounted
///    again at the same path: nobody is judged dead, nothing is taken over, host 3's
///    heartbeat resumes within about an interval of the remount, and a new Mount there
///    reaches the live export (a file written through host 1 is read through it);
/// 2. the same, with host 3's daemon restarted while the client is dead: the start fails
///    with a clear error, and once the export is mounted again, the next start mounts
///    again the bind mounts it finds on the dead connection instead of keeping them;
/// 3. the export lazily unmounted for longer than --dead-after, then mounted again:
///    host 3 is cut off meanwhile, then recovers by itself, without a restart.
#[test]
fn the_export_goes_away_and_comes_back() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !util::require_root("the_export_goes_away_and_comes_back") {
        return;
    }
    let (interval, dead_after) = (Duration::from_secs(1), Duration::from_secs(5));
    let flags = ["--dead-after", "5s", "--heartbeat", "1s", "--timeout", "8s"];
    let mut bed = three_hosts("r", "remount", &flags);
    let h1_root = bed.roots[0].clone();
    // Host 3's heartbeat as host 1 reads it (boot id, sequence number).
    let beat = move || -> Option<(String, u64)> {
        let text = std::fs::read(h1_root.join(".caravan/nodes/r3.json")).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
        Some((v["boot_id"].as_str()?.to_string(), v["seq"].as_u64()?))
    };
    // Polls, from `since`, until host 3's heartbeat moves past what it was at `since`;
    // returns how long after `since` it did.
    let beats_again = |since: Instant, limit: Duration| {
        let beat = beat.clone();
        let before = beat();
        std::thread::spawn(move || loop {
            let now = beat();
            if now.is_some() && now != before {
                return since.elapsed();
            }
            assert!(
                since.elapsed() < limit,
                "host 3's heartbeat did not move within {limit:?} (still {before:?})"
            );
            std::thread::sleep(Duration::from_millis(20));
        })
    };
    let from_h1 = bed.roots[0].join("volumes/rs/data/from-h1");
    let reaches_live_export = |mp: &Path, expected: &str| {
        std::fs::write(&from_h1, expected).unwrap();
        std::fs::read_to_string(mp.join("from-h1")).ok().as_deref() == Some(expected)
    };
    {
        let r3 = &bed.daemons[2];
        r3.ok(
            "VolumeDriver.Create",
            r#"{"Name":"rx","Opts":{"access":"exclusive"}}"#,
        );
        r3.ok("VolumeDriver.Mount", r#"{"Name":"rx","ID":"x1"}"#);
        r3.ok("VolumeDriver.Create", r#"{"Name":"rs","Opts":{}}"#);
        let mp = r3.mountpoint("rs");
        r3.ok("VolumeDriver.Mount", r#"{"Name":"rs","ID":"s1"}"#);
        assert!(reaches_live_export(&mp, "before"));
    }
    let still_held_and_in_use = |bed: &ThreeHosts, phase: &str| {
        let (r1, r2) = (&bed.daemons[0], &bed.daemons[1]);
        let err = r2.err("VolumeDriver.Mount", r#"{"Name":"rx","ID":"x2"}"#);
        assert!(err.contains("held by node r3"), "{phase}: {err}");
        let err = r1.err("VolumeDriver.Remove", r#"{"Name":"rs"}"#);
        assert!(err.contains("r3"), "{phase}: {err}");
        let st = util::status(r1, "rx");
        assert!(
            st["takeovers"].as_array().is_none_or(|t| t.is_empty()),
            "{phase}: {st}"
        );
    };

    // 1. The client dies and the export is mounted again.
    ok(&["testbed", "client", "3", "kill"]);
    let mp = bed.daemons[2].mountpoint("rs");
    // FUSE fails calls on a dead client with ECONNABORTED, then ENOTCONN.
    let e = std::fs::read_dir(&mp).err();
    assert!(
        matches!(
            e.as_ref().and_then(|e| e.raw_os_error()),
            Some(nix::libc::ENOTCONN | nix::libc::ECONNABORTED)
        ),
        "the bind mount on the dead client: {e:?}"
    );
    ok(&["testbed", "client", "3", "remount"]);
    let remounted = Instant::now();
    // (A limit far past the bound asserted below, so that a build that never resumes
    // says so.)
    let beat_back = beats_again(remounted, Duration::from_secs(30));
    let r3 = &bed.daemons[2];
    let mounted = r3.ok("VolumeDriver.Mount", r#"{"Name":"rs","ID":"s2"}"#);
    let mount_back = remounted.elapsed();
    let mp = PathBuf::from(mounted["Mountpoint"].as_str().unwrap());
    let live = reaches_live_export(&mp, "after the remount");
    let beat_back = beat_back.join().unwrap();
    assert!(
        live,
        "a Mount after the remount answered a mountpoint that does not reach the live export"
    );
    eprintln!(
        "remount: host 3's heartbeat moved {:.2} s after the remount, a Mount reaching the live export was answered after {:.2} s",
        beat_back.as_secs_f64(),
        mount_back.as_secs_f64()
    );
    // Within one interval of the export answering, with a round's work and a poll.
    assert!(beat_back < interval * 3, "{beat_back:?}");
    still_held_and_in_use(&bed, "after the remount");
    util::assert_nobody_judged_dead(&bed.daemons);
    let info = r3.api("GET", "/v1/info", "").1;
    assert!(
        info["connection"]["reconnects"].as_u64() >= Some(1),
        "{}",
        info["connection"]
    );
    let log = r3.log_text();
    assert!(
        log.contains("now resolves to another mount")
            && log.contains("did not reach the live export"),
        "host 3 says what happened:\n{log}"
    );

    // 2. The daemon restarted while the client is dead: it refuses to start, clearly;
    // once the export is back it starts, and what it finds mounted from the dead
    // connection is mounted again, not kept as in use.
    ok(&["testbed", "client", "3", "kill"]);
    bed.daemons[2].stop();
    let (status, said) = bed.daemons[2].spawn_must_fail();
    assert!(!status.success());
    assert!(said.contains("not connected"), "{said}");
    ok(&["testbed", "client", "3", "remount"]);
    bed.daemons[2].spawn();
    let r3 = &bed.daemons[2];
    let log = r3.log_text();
    let start = log.rfind("shared root checked").unwrap_or(0);
    let started = &log[start..];
    for v in ["rs", "rx"] {
        assert!(
            started
                .lines()
                .any(|l| l.contains("did not reach the live export") && l.contains(v)),
            "{v} is mounted again at start:\n{started}"
        );
    }
    assert!(
        !started
            .lines()
            .any(|l| l.contains("kept mounts still in use") && l.contains("rs")),
        "{started}"
    );
    assert!(
        reaches_live_export(&r3.mountpoint("rs"), "after the restart"),
        "the mountpoint kept from before the restart does not reach the live export"
    );
    let mounted = r3.ok("VolumeDriver.Mount", r#"{"Name":"rs","ID":"s3"}"#);
    assert!(reaches_live_export(
        Path::new(mounted["Mountpoint"].as_str().unwrap()),
        "after the restart, mounted"
    ));
    still_held_and_in_use(&bed, "after the restart");

    // 3. The export unmounted for longer than --dead-after: host 3 is cut off, then
    // recovers by itself once it is mounted again.
    ok(&["testbed", "client", "3", "umount"]);
    let unmounted = Instant::now();
    let r3 = &bed.daemons[2];
    util::eventually(
        dead_after + interval * 3,
        "host 3 to call itself cut off",
        || !r3.api("GET", "/v1/info", "").1["standing"]["cut_off"].is_null(),
    );
    let cut_off_after = unmounted.elapsed();
    let r3_is = |d: &util::Daemon, state: &str| {
        d.api("GET", "/v1/nodes", "")
            .1
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n["node"] == "r3" && n["state"] == state))
    };
    // Longer than --dead-after as the others see it: they judge host 3 dead.
    util::eventually(
        dead_after + interval * 3,
        "host 1 to judge host 3 dead",
        || r3_is(&bed.daemons[0], "dead"),
    );
    let err = r3.err("VolumeDriver.Create", r#"{"Name":"while-away","Opts":{}}"#);
    eprintln!(
        "unmounted: host 3 cut off after {:.1} s; a Create there: {err}",
        cut_off_after.as_secs_f64()
    );
    ok(&["testbed", "client", "3", "mount"]);
    let mounted_again = Instant::now();
    let beat_back = beats_again(mounted_again, dead_after).join().unwrap();
    util::eventually(interval * 5, "host 3 to see the others again", || {
        r3.api("GET", "/v1/info", "").1["standing"]["cut_off"].is_null()
    });
    let uncut = mounted_again.elapsed();
    r3.ok("VolumeDriver.Create", r#"{"Name":"after","Opts":{}}"#);
    let mounted = r3.ok("VolumeDriver.Mount", r#"{"Name":"rs","ID":"s4"}"#);
    assert!(reaches_live_export(
        Path::new(mounted["Mountpoint"].as_str().unwrap()),
        "after the unmount"
    ));
    eprintln!(
        "unmounted for {:.1} s: heartbeat again {:.2} s and judging again {:.2} s after the export was mounted again",
        (mounted_again - unmounted).as_secs_f64(),
        beat_back.as_secs_f64(),
        uncut.as_secs_f64()
    );
    assert!(beat_back < interval * 3, "{beat_back:?}");
    util::eventually(interval * 5, "host 1 to see host 3 alive", || {
        r3_is(&bed.daemons[0], "alive")
    });
    still_held_and_in_use(&bed, "after the unmount");
}

#[test]
fn a_snapshot_made_on_h1_is_restored_on_h2_and_deleted_on_h3() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !util::require_root("snapshots_on_glusterfs") {
        return;
    }
    let bed = three_hosts("s", "snaps", &[]);
    let (s1, s2, s3) = (&bed.daemons[0], &bed.daemons[1], &bed.daemons[2]);
    util::cli_ok(&s1.socket, &["create", "site"]);
    // Written through host 1's mount of the export.
    let data = bed.roots[0].join("volumes/site/data");
    std::fs::create_dir_all(data.join("img/2026")).unwrap();
    for i in 0..300 {
        std::fs::write(data.join(format!("img/2026/p{i}.txt")), format!("page {i}")).unwrap();
    }
    std::os::unix::fs::symlink("../../etc/passwd", data.join("escape")).unwrap();
    std::fs::hard_link(data.join("img/2026/p1.txt"), data.join("p1-again")).unwrap();
    let t = Instant::now();
    util::cli_ok(&s1.socket, &["snapshot", "create", "site", "v1"]);
    let made = t.elapsed();
    // Listed and inspected on h2 at once: the record is the cluster's.
    let list = util::cli_ok(&s2.socket, &["snapshot", "list", "site"]);
    assert!(list.contains("v1"), "{list}");
    std::fs::write(data.join("img/2026/p1.txt"), "changed after the snapshot").unwrap();
    let t = Instant::now();
    util::cli_ok(
        &s2.socket,
        &[
            "create",
            "site-v1",
            "--from-snapshot",
            "site@v1",
            "--keep-privileges",
        ],
    );
    let restored = t.elapsed();
    // Read through host 3's mount: what the snapshot holds, byte for byte.
    let r3 = &bed.roots[2];
    assert_eq!(
        util::tree_listing(&r3.join("volumes/site-v1/data")),
        util::tree_listing(&r3.join("volumes/site/snapshots/v1"))
    );
    assert_eq!(
        std::fs::read_to_string(r3.join("volumes/site-v1/data/img/2026/p1.txt")).unwrap(),
        "page 1"
    );
    assert_eq!(
        std::fs::read_link(r3.join("volumes/site-v1/data/escape")).unwrap(),
        Path::new("../../etc/passwd")
    );
    util::cli_ok(&s3.socket, &["snapshot", "delete", "site@v1"]);
    assert!(util::cli_ok(&s1.socket, &["snapshot", "list", "--json"]) == "[]");
    assert!(!r3.join("volumes/site/snapshots/v1").exists());
    eprintln!("glusterfs: snapshot of 300 files on h1 {made:?}; restore on h2 {restored:?}");
    for v in ["site", "site-v1"] {
        s3.ok("VolumeDriver.Remove", &format!(r#"{{"Name":"{v}"}}"#));
    }
}

#[test]
fn a_backup_made_on_h1_to_a_folder_and_to_s3_is_restored_on_h3() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !util::require_root("backups_on_glusterfs") {
        return;
    }
    let mut bed = three_hosts("b", "backups", &[]);
    let scratch = util::Scratch::new();
    let s3 = util::s3::S3Server::local(&scratch.path().join("s3"));
    for d in [0, 2] {
        let d = &mut bed.daemons[d];
        d.stop();
        d.env = s3.env.clone();
        d.spawn();
    }
    let (h1, h3) = (&bed.daemons[0], &bed.daemons[2]);
    util::cli_ok(&h1.socket, &["create", "site"]);
    // Written through host 1's mount of the export: 10 000 small files, a 1 GiB sparse
    // file, deep folders, links, xattrs, odd names.
    let data = bed.roots[0].join("volumes/site/data");
    let t = Instant::now();
    util::rich_tree(&data, 10_000, 1 << 30);
    eprintln!(
        "glusterfs: the tree written through h1 in {:?}",
        t.elapsed()
    );
    let vfs = format!("vfs://{}", scratch.path().join("backups").display());
    let bucket = format!("s3://{}/site", s3.bucket);
    // Both backups at once, then both restores at once: each is a walk of FUSE round trips
    // that leaves the CPU idle, and the two destinations have locks of their own.
    let t = Instant::now();
    let urls: Vec<String> = std::thread::scope(|scope| {
        let backups: Vec<_> = [&vfs, &bucket]
            .map(|dest| {
                scope.spawn(move || {
                    let made: serde_json::Value = serde_json::from_str(&util::cli_ok(
                        &h1.socket,
                        &["backup", "create", "site", "--dest", dest, "--json"],
                    ))
                    .unwrap();
                    eprintln!(
                        "glusterfs: backup on h1 to {dest}: {:?}, {}",
                        t.elapsed(),
                        made["sent"]
                    );
                    assert_eq!(made["tree"]["files"], 10_000 + 7, "{made}");
                    made["url"].as_str().unwrap().to_string()
                })
            })
            .into();
        backups.into_iter().map(|b| b.join().unwrap()).collect()
    });
    // Restored on h3, read back through h3's mount.
    let t = Instant::now();
    std::thread::scope(|scope| {
        for (name, url) in ["site-vfs", "site-s3"].iter().zip(&urls) {
            scope.spawn(move || {
                util::cli_ok(
                    &h3.socket,
                    &["create", name, "--from-backup", url, "--keep-privileges"],
                );
                eprintln!("glusterfs: restore on h3 as {name}: {:?}", t.elapsed());
            });
        }
    });
    let r3 = &bed.roots[2];
    let t = Instant::now();
    let [original, from_vfs, from_s3] = std::thread::scope(|scope| {
        ["site", "site-vfs", "site-s3"]
            .map(|v| {
                let dir = r3.join(format!("volumes/{v}/data"));
                scope.spawn(move || util::tree_listing(&dir))
            })
            .map(|listing| listing.join().unwrap())
    });
    eprintln!("glusterfs: three trees listed on h3: {:?}", t.elapsed());
    for (v, copy) in [("site-vfs", from_vfs), ("site-s3", from_s3)] {
        util::assert_same_listing(&original, &copy);
        util::assert_rich_tree_details(&r3.join(format!("volumes/{v}/data")));
    }
    let verified = util::cli_ok(&h3.socket, &["backup", "verify", &urls[1]]);
    assert!(verified.starts_with("checked "), "{verified}");
}
