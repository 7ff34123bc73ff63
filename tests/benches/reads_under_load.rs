//! Reads while the cluster commits: Docker's Get measured alone and beside clients that
//! create, mount, unmount and remove volumes, on the node that commits and on another one.
//!
//! `cargo bench --bench reads_under_load` (as root; see docs/benchmarks.md). Under `cargo
//! test` (no `--bench` argument) it runs a short smoke version, so CI keeps it working.
//!
//! With one root (default: a temporary local folder, or `CARAVAN_BENCH_ROOT`):
//! 1. one node: 64 Get clients alone; 64 lifecycle clients alone (each creates, mounts,
//!    unmounts and removes one volume after another); then both at once. Get's p50 and
//!    p99 loaded, and the mutations' throughput loaded against alone.
//! 2. two nodes on the root: 2 Get clients on the second node alone, then beside 16
//!    lifecycle clients on the first. The second node's loaded Get p99 and mean against
//!    its idle ones.
//!
//! With `CARAVAN_BENCH_ROOTS=r1:r2:r3` (one daemon per root, each root that host's mount
//! of one export): 16 lifecycle and 16 Get clients on every host at once, Get's p50 and
//! p99 per host; then how long a volume created on the first host takes to be seen by a
//! Get on the second.
//!
//! Environment: `CARAVAN_BENCH_SECS` (length of each phase, default 10; smoke 1),
//! `CARAVAN_BENCH_GET_EVERY_MS` (each Get client calls once per this many ms, default 10;
//! 0 calls back to back; the clients start spread over one period) and
//! `CARAVAN_BENCH_BASELINE_BIN` (another build of caravan: every scenario then runs with
//! it and with this build, alternating, `CARAVAN_BENCH_ROUNDS` times each, default 2).
//! The Get clients are paced because they run on the same cores as the daemon: 64 clients
//! calling back to back would measure the contest for the CPU, not the store.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The build a scenario runs: its label in the output, and its binary.
type Build = (&'static str, PathBuf);

#[path = "../util/mod.rs"]
mod util;
use util::env_num;
mod support;
use support::{BenchDaemon, Conn};

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    if !util::require_root("reads_under_load benchmark") {
        return;
    }
    let secs = env_num("CARAVAN_BENCH_SECS", if full { 10 } else { 1 });
    let every = Duration::from_millis(env_num("CARAVAN_BENCH_GET_EVERY_MS", 10) as u64);
    let phase = Duration::from_secs(secs as u64);
    let scratch = tempfile::Builder::new()
        .prefix("caravan-bench-")
        .tempdir_in("/tmp")
        .unwrap();
    let this: Build = ("this build", util::caravan_bin());
    let runs: Vec<Build> = match std::env::var_os("CARAVAN_BENCH_BASELINE_BIN") {
        Some(base) => {
            let rounds = env_num("CARAVAN_BENCH_ROUNDS", 2);
            (0..rounds)
                .flat_map(|_| [("baseline", PathBuf::from(&base)), this.clone()])
                .collect()
        }
        None => vec![this],
    };
    for (round, build) in runs.iter().enumerate() {
        let at = scratch.path().join(format!("round{round}"));
        std::fs::create_dir_all(&at).unwrap();
        println!("\n===== {} ({})", build.0, build.1.display());
        let probes = if full { 20 } else { 3 };
        match std::env::var("CARAVAN_BENCH_ROOTS") {
            Ok(list) => {
                let roots: Vec<PathBuf> = list
                    .split(':')
                    .map(|r| PathBuf::from(r).join(format!("round{round}")))
                    .collect();
                hosts(build, &at, &roots, phase, every, probes);
            }
            Err(_) => {
                let root = std::env::var_os("CARAVAN_BENCH_ROOT")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| at.join("root"))
                    .join(format!("round{round}"));
                let clients = if full { 64 } else { 4 };
                let writers = if full { 16 } else { 2 };
                one_node(build, &at, &root.join("one"), phase, every, clients);
                two_nodes(build, &at, &root.join("two"), phase, writers);
            }
        }
    }
}

/// Scenario 1: Get on the node that commits.
fn one_node(
    build: &Build,
    scratch: &Path,
    root: &Path,
    phase: Duration,
    every: Duration,
    clients: usize,
) {
    std::fs::create_dir_all(root).unwrap();
    let d = BenchDaemon::start_of(&build.1, scratch, root, "one");
    let targets = make_targets(&d.socket, 16);
    println!(
        "\none node, root {}: {clients} Get clients (one Get per {every:?} each), {clients} lifecycle clients, {phase:?} per phase",
        root.display()
    );
    let gets = |run: &mut Run| run.gets(&d.socket, clients, &targets, every);
    let muts = |run: &mut Run| run.lifecycles(&d.socket, clients, "one");
    let alone_get = Run::during(phase, |run| gets(run));
    let alone_mut = Run::during(phase, |run| muts(run));
    let both = Run::during(phase, |run| {
        gets(run);
        muts(run);
    });
    println!("{}", Figures::HEADER);
    println!("{}", alone_get.figures("Get alone"));
    println!("{}", alone_mut.figures("mutations alone"));
    println!("{}", both.figures("both at once"));
    let (g, m) = (both.figures(""), alone_mut.figures(""));
    println!(
        "loaded Get p50 {:.3} ms (target <= 1), p99 {:.3} ms (target <= 5); mutations loaded/alone {:.2} (target >= 0.90)",
        g.get.p50,
        g.get.p99,
        g.mutation_ops_per_sec / m.mutation_ops_per_sec
    );
}

/// Scenario 2: Get on a node while another one commits.
fn two_nodes(build: &Build, scratch: &Path, root: &Path, phase: Duration, writers: usize) {
    std::fs::create_dir_all(root).unwrap();
    let a = BenchDaemon::start_of(&build.1, scratch, root, "two-a");
    let b = BenchDaemon::start_of(&build.1, scratch, root, "two-b");
    let targets = make_targets(&a.socket, 16);
    println!(
        "\ntwo nodes, root {}: 2 Get clients on b (back to back), {writers} lifecycle clients on a, {phase:?} per phase",
        root.display()
    );
    let idle = Run::during(phase, |run| {
        run.gets(&b.socket, 2, &targets, Duration::ZERO)
    });
    let loaded = Run::during(phase, |run| {
        run.gets(&b.socket, 2, &targets, Duration::ZERO);
        run.lifecycles(&a.socket, writers, "two");
    });
    println!("{}", Figures::HEADER);
    let (i, l) = (
        idle.figures("b's Get, a idle"),
        loaded.figures("b's Get, a busy"),
    );
    println!("{i}\n{l}");
    println!(
        "b's Get loaded/idle: p99 {:.2} (target <= 3), mean {:.2} (target <= 1.5)",
        l.get.p99 / i.get.p99,
        l.get.mean / i.get.mean
    );
}

/// Scenario 3: several hosts on one export, all busy at once; then how soon a create on
/// one host shows in a Get on another.
fn hosts(
    build: &Build,
    scratch: &Path,
    roots: &[PathBuf],
    phase: Duration,
    every: Duration,
    probes: usize,
) {
    let daemons: Vec<BenchDaemon> = roots
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let r = r.join("reads");
            std::fs::create_dir_all(&r).unwrap();
            BenchDaemon::start_of(&build.1, scratch, &r, &format!("h{}", i + 1))
        })
        .collect();
    let targets = make_targets(&daemons[0].socket, 16);
    println!(
        "\n{} hosts, roots {}: on each, 16 Get clients (one Get per {every:?} each) and 16 lifecycle clients, {phase:?}",
        roots.len(),
        roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ")
    );
    let runs = Run::during_each(phase, daemons.len(), |run, h| {
        run.gets(&daemons[h].socket, 16, &targets, every);
        run.lifecycles(&daemons[h].socket, 16, &format!("h{h}"));
    });
    println!("{}", Figures::HEADER);
    for (h, run) in runs.iter().enumerate() {
        println!("{}", run.figures(&format!("host {}", h + 1)));
    }
    if daemons.len() < 2 {
        return;
    }
    // Visibility: a create on host 1, then Gets on host 2 until it answers.
    let (mut on1, mut on2) = (
        Conn::open(&daemons[0].socket),
        Conn::open(&daemons[1].socket),
    );
    let mut seen = Vec::new();
    for k in 0..probes {
        let name = format!("seen-{k}");
        on1.call("Create", &format!(r#"{{"Name":"{name}","Opts":{{}}}}"#));
        let t = Instant::now();
        let mut gets = 0;
        loop {
            gets += 1;
            let (_, answer) = on2.try_call("Get", &format!(r#"{{"Name":"{name}"}}"#));
            if answer.is_ok() {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "{name} never seen on host 2"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        seen.push((t.elapsed(), gets));
        on1.call("Remove", &format!(r#"{{"Name":"{name}"}}"#));
    }
    let first_try = seen.iter().filter(|(_, g)| *g == 1).count();
    let mut times: Vec<Duration> = seen.iter().map(|(t, _)| *t).collect();
    let stats = Stats::of(&mut times);
    println!(
        "created on host 1, seen by a Get on host 2 after: p50 {:.3} ms, max {:.3} ms ({first_try} of {probes} by the first Get; target: within one heartbeat interval, 1 s)",
        stats.p50, stats.max
    );
}

/// Volumes the Get clients read, made before the clock starts.
fn make_targets(socket: &Path, n: usize) -> Vec<String> {
    let mut conn = Conn::open(socket);
    (0..n)
        .map(|i| {
            let name = format!("target-{i}");
            conn.call("Create", &format!(r#"{{"Name":"{name}","Opts":{{}}}}"#));
            name
        })
        .collect()
}

/// Clients started for one phase; each runs until the phase ends.
struct Run {
    until: Instant,
    gets: Vec<std::thread::JoinHandle<Vec<Duration>>>,
    mutations: Vec<std::thread::JoinHandle<Vec<Duration>>>,
}

/// What one phase measured.
struct Measured {
    gets: Vec<Duration>,
    mutations: Vec<Duration>,
    wall: Duration,
}

impl Run {
    /// Runs the clients `start` adds for `phase`, and collects their latencies.
    fn during(phase: Duration, start: impl FnOnce(&mut Run)) -> Measured {
        let mut one = Some(start);
        Self::during_each(phase, 1, |run, _| (one.take().unwrap())(run)).remove(0)
    }

    /// The same with `groups` groups of clients at once, measured apart.
    fn during_each(
        phase: Duration,
        groups: usize,
        mut start: impl FnMut(&mut Run, usize),
    ) -> Vec<Measured> {
        let began = Instant::now();
        let until = began + phase;
        let runs: Vec<Run> = (0..groups)
            .map(|g| {
                let mut run = Run {
                    until,
                    gets: Vec::new(),
                    mutations: Vec::new(),
                };
                start(&mut run, g);
                run
            })
            .collect();
        let join = |hs: Vec<std::thread::JoinHandle<Vec<Duration>>>| -> Vec<Duration> {
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        };
        runs.into_iter()
            .map(|run| Measured {
                gets: join(run.gets),
                mutations: join(run.mutations),
                wall: began.elapsed(),
            })
            .collect()
    }

    /// `clients` connections calling Get on `targets` in turn, one call per `every`.
    fn gets(&mut self, socket: &Path, clients: usize, targets: &[String], every: Duration) {
        let until = self.until;
        for c in 0..clients {
            let (socket, targets) = (socket.to_path_buf(), targets.to_vec());
            self.gets.push(std::thread::spawn(move || {
                let mut conn = Conn::open(&socket);
                let mut samples = Vec::new();
                // Spread over one period: clients started together would call in bursts.
                let mut next = Instant::now() + every * c as u32 / clients as u32;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                while Instant::now() < until {
                    let name = &targets[(c + samples.len()) % targets.len()];
                    samples.push(conn.call("Get", &format!(r#"{{"Name":"{name}"}}"#)));
                    next += every;
                    // Pacing, not waiting for a state: a client that fell behind goes on at once.
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                samples
            }));
        }
    }

    /// `clients` connections each creating, mounting, unmounting and removing one volume
    /// after another; every call is a sample.
    fn lifecycles(&mut self, socket: &Path, clients: usize, tag: &str) {
        let until = self.until;
        for c in 0..clients {
            let (socket, tag) = (socket.to_path_buf(), tag.to_string());
            self.mutations.push(std::thread::spawn(move || {
                let mut conn = Conn::open(&socket);
                let mut samples = Vec::new();
                let mut i = 0;
                while Instant::now() < until {
                    let name = format!("{tag}-life-{c}-{i}");
                    let id = format!("bench{c}");
                    samples
                        .push(conn.call("Create", &format!(r#"{{"Name":"{name}","Opts":{{}}}}"#)));
                    samples
                        .push(conn.call("Mount", &format!(r#"{{"Name":"{name}","ID":"{id}"}}"#)));
                    samples
                        .push(conn.call("Unmount", &format!(r#"{{"Name":"{name}","ID":"{id}"}}"#)));
                    samples.push(conn.call("Remove", &format!(r#"{{"Name":"{name}"}}"#)));
                    i += 1;
                }
                samples
            }));
        }
    }
}

/// Latency figures of one set of samples, in ms.
#[derive(Default, Clone, Copy)]
struct Stats {
    n: usize,
    p50: f64,
    p99: f64,
    mean: f64,
    max: f64,
}

impl Stats {
    fn of(samples: &mut [Duration]) -> Stats {
        if samples.is_empty() {
            return Stats::default();
        }
        samples.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let at = |q: f64| ms(samples[((samples.len() - 1) as f64 * q).round() as usize]);
        Stats {
            n: samples.len(),
            p50: at(0.5),
            p99: at(0.99),
            mean: samples.iter().map(|d| ms(*d)).sum::<f64>() / samples.len() as f64,
            max: at(1.0),
        }
    }
}

/// One printed row: Get's figures and the mutations' throughput and p50.
struct Figures {
    label: String,
    get: Stats,
    mutation: Stats,
    mutation_ops_per_sec: f64,
}

impl Figures {
    const HEADER: &'static str = "phase                     Gets  Get p50 ms  Get p99 ms  Get mean ms   mutations  mut. ops/s  mut. p50 ms";
}

impl Measured {
    fn figures(&self, label: &str) -> Figures {
        let (mut g, mut m) = (self.gets.clone(), self.mutations.clone());
        let mutation = Stats::of(&mut m);
        Figures {
            label: label.to_string(),
            get: Stats::of(&mut g),
            mutation,
            mutation_ops_per_sec: mutation.n as f64 / self.wall.as_secs_f64(),
        }
    }
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<22} {:>8} {:>11.3} {:>11.3} {:>12.3} {:>11} {:>11.0} {:>12.3}",
            self.label,
            self.get.n,
            self.get.p50,
            self.get.p99,
            self.get.mean,
            self.mutation.n,
            self.mutation_ops_per_sec,
            self.mutation.p50
        )
    }
}
