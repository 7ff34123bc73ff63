//! End to end on a real Docker Swarm: the test bed's hosts (scripts/testbed), each with its
//! own dockerd in its own network namespace, form a Swarm over the test bed's links, and
//! services with caravan volumes are rescheduled by Swarm itself.
//!
//! Networks: the hosts' dockerds run without a bridge (`--bridge=none`: no iptables rules
//! on this machine), so tasks use `--network host`, which is the host's own namespace of
//! the test bed; Compose containers use `network_mode: none`. Tasks trap SIGTERM, so a
//! stop is not Docker's 10 s grace period.

mod util;

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use util::testbed::{dk, dk_ok, ok, script};

static SERIAL: Mutex<()> = Mutex::new(());

const BED: &str = "/var/lib/caravan-testbed";
/// The image each host's dockerd loaded from the machine's.
const IMAGE: &str = util::docker::IMAGE;
/// Swarm's dispatcher heartbeat in these tests (default 5 s): a node is down after
/// missing about three.
const DISPATCHER_HEARTBEAT: &str = "2s";
/// caravan's default `--dead-after`, which these tests keep.
const DEAD_AFTER: Duration = Duration::from_secs(15);
/// caravan's default `--heartbeat`, which these tests keep.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// The earliest a lost node's exclusive volume can be taken over, counted from the kill:
/// silence is counted from the node's last beat that others saw, which can come up to one
/// heartbeat interval before the kill.
const EARLIEST_TAKEOVER: Duration = DEAD_AFTER
    .saturating_add(FENCE_WAIT)
    .saturating_sub(HEARTBEAT);
/// The test bed's GlusterFS timeouts here (`scripts/testbed timeouts`, lowered from 42 s):
/// the brick drops a silent client 10.5 s after a cut.
const GLUSTER_TIMEOUTS: &str = "10";
/// The fence wait the daemons are given for it: how long a lost host's in-flight writes
/// may still land (the timeouts + 2 s, a timing test's value, not the safe one). A takeover
/// waits dead-after + this.
const FENCE_WAIT: Duration = Duration::from_secs(12);

/// A task's command: records the node that first wrote the volume, then waits, leaving at
/// once on SIGTERM.
const FIRST_WRITER: &str =
    "trap 'exit 0' TERM; [ -e /data/first ] || echo \"$NODE\" > /data/first; sleep 3600 & wait";

/// A Swarm of test-bed hosts; tears the whole test bed down when dropped.
struct Swarm {
    hosts: Vec<u32>,
}

impl Swarm {
    /// Hosts 1..=managers+workers: the first `managers` are managers (host 1 starts the
    /// Swarm), the rest workers. Each host's caravan starts before its dockerd and before
    /// the host joins, as on a host whose units start caravan first.
    fn start(managers: u32, workers: u32) -> Swarm {
        let n = managers + workers;
        let swarm = Swarm::hosts_only(n);
        ok(&[
            "testbed",
            "swarm",
            "init",
            "1",
            "--dispatcher-heartbeat",
            DISPATCHER_HEARTBEAT,
        ]);
        for k in 2..=n {
            let role = if k <= managers { "manager" } else { "worker" };
            ok(&["testbed", "swarm", "join", &k.to_string(), role]);
        }
        poll("every node Ready", Duration::from_secs(60), || {
            let ls = dk_ok(1, &["node", "ls", "--format", "{{.Hostname}} {{.Status}}"]);
            (ls.lines().filter(|l| l.ends_with(" Ready")).count() == n as usize).then_some(())
        });
        swarm
    }

    /// Hosts 1..=n, each with its caravan and dockerd, in no Swarm.
    fn hosts_only(n: u32) -> Swarm {
        ok(&["docker-up"]);
        let _ = script(&["testbed", "down"]);
        ok(&["testbed", "up", &n.to_string()]);
        ok(&["testbed", "timeouts", GLUSTER_TIMEOUTS]);
        let swarm = Swarm {
            hosts: (1..=n).collect(),
        };
        let fence_wait = format!("{}s", FENCE_WAIT.as_secs());
        for k in 1..=n {
            ok(&[
                "testbed",
                "host",
                &k.to_string(),
                "up",
                "--fence-wait",
                &fence_wait,
            ]);
        }
        swarm
    }

    /// The docker CLI of a live manager other than `not`.
    fn manager(&self, not: &[u32]) -> u32 {
        *self
            .hosts
            .iter()
            .find(|k| !not.contains(k) && dk(**k, &["node", "ls", "-q"]).status.success())
            .expect("a live manager")
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let _ = script(&["testbed", "down"]);
    }
}

/// Calls `f` every 100 ms until it gives a value, for at most `limit`; the value and the
/// time it took.
fn poll<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> (T, Duration) {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return (v, t.elapsed());
        }
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `docker service create -d` on manager `m`, with `args` before the image and `cmd`.
fn service_create(m: u32, name: &str, args: &[&str], cmd: &str) {
    let mut all = vec![
        "service",
        "create",
        "-d",
        "-q",
        "--name",
        name,
        "--network",
        "host",
        "--env",
        "NODE={{.Node.Hostname}}",
    ];
    all.extend_from_slice(args);
    all.extend_from_slice(&[IMAGE, "sh", "-c", cmd]);
    dk_ok(m, &all);
}

/// The running container of `service` on host K, if any.
fn container_on(k: u32, service: &str) -> Option<String> {
    let label = format!("label=com.docker.swarm.service.name={service}");
    let out = dk(k, &["ps", "-q", "--filter", &label]);
    let ids = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !ids.is_empty()).then(|| ids.lines().next().unwrap().to_string())
}

/// `cat FILES` in the running container of `service` on host K.
fn read_on(k: u32, service: &str, files: &[&str]) -> Option<String> {
    let c = container_on(k, service)?;
    let mut args = vec!["exec", &c, "cat"];
    args.extend_from_slice(files);
    let out = dk(k, &args);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The host among `hosts` whose task of `service` reads `file`, and what it read.
fn reader(hosts: &[u32], service: &str, file: &str) -> Option<(u32, String)> {
    hosts
        .iter()
        .find_map(|&k| read_on(k, service, &[file]).map(|s| (k, s)))
}

/// Every task error Swarm recorded for `service`.
fn task_errors(m: u32, service: &str) -> Vec<String> {
    dk_ok(
        m,
        &[
            "service",
            "ps",
            service,
            "--no-trunc",
            "--format",
            "{{.Error}}",
        ],
    )
    .lines()
    .filter(|l| !l.trim().is_empty())
    .map(str::to_string)
    .collect()
}

/// The caravan record of a volume as dockerd shows it on host K (`.Status`).
fn volume_status(k: u32, volume: &str) -> Value {
    serde_json::from_str(&dk_ok(
        k,
        &["volume", "inspect", volume, "--format", "{{json .Status}}"],
    ))
    .unwrap()
}

fn caravan_log(k: u32) -> String {
    std::fs::read_to_string(Path::new(BED).join(format!("h{k}/caravan.log"))).unwrap_or_default()
}

/// No caravan on `hosts` ever judged one of `alive` dead.
fn assert_never_judged_dead(hosts: &[u32], alive: &[u32]) {
    for &k in hosts {
        let log = caravan_log(k);
        for &a in alive {
            let needle = format!("node judged dead node=h{a} ");
            assert!(!log.contains(&needle), "h{k} judged the live h{a} dead");
        }
    }
}

/// Polls, from `since`, until both the task without a volume runs (`plain`) and the
/// volume's task reads its data (`volume`); when each first did.
fn both_times(
    since: Instant,
    what: &str,
    mut plain: impl FnMut() -> bool,
    mut volume: impl FnMut() -> Option<()>,
) -> (Duration, Duration) {
    let (mut plain_at, mut volume_at) = (None, None);
    while plain_at.is_none() || volume_at.is_none() {
        assert!(
            since.elapsed() < Duration::from_secs(90),
            "not {what} within 90 s: without a volume {plain_at:?}, with one {volume_at:?}"
        );
        if plain_at.is_none() && plain() {
            plain_at = Some(since.elapsed());
        }
        if volume_at.is_none() && volume().is_some() {
            volume_at = Some(since.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (plain_at.unwrap(), volume_at.unwrap())
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

#[test]
fn a_lost_nodes_tasks_come_back_elsewhere_with_their_data() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !util::docker::available("swarm_lost_node") {
        return;
    }
    let swarm = Swarm::start(1, 2);
    let m = 1;

    // An exclusive volume's task and a task without a volume, both on h2 (h3 drained
    // while they are placed), so that one kill measures both.
    dk_ok(m, &["node", "update", "--availability", "drain", "h3"]);
    let created = Instant::now();
    service_create(
        m,
        "db",
        &[
            "--constraint",
            "node.role==worker",
            "--mount",
            "type=volume,source=db,target=/data,volume-driver=caravan,volume-opt=access=exclusive",
        ],
        FIRST_WRITER,
    );
    service_create(
        m,
        "plain",
        &["--constraint", "node.role==worker"],
        "trap 'exit 0' TERM; sleep 3600 & wait",
    );
    let (first, _) = poll("db running on h2", Duration::from_secs(60), || {
        read_on(2, "db", &["/data/first"])
    });
    assert_eq!(first, "h2");
    poll("plain running on h2", Duration::from_secs(30), || {
        container_on(2, "plain")
    });
    // A freshly started caravan host is eligible at once: no "missing plugin".
    let errors = task_errors(m, "db");
    assert!(errors.is_empty(), "db's tasks failed: {errors:?}");
    eprintln!(
        "swarm: a task with a caravan volume ran on a fresh host {} ms after it was created",
        ms(created.elapsed())
    );
    dk_ok(m, &["node", "update", "--availability", "active", "h3"]);

    // A shared volume, one task on each node, each writing its own file.
    service_create(
        m,
        "shared",
        &[
            "--replicas",
            "3",
            "--replicas-max-per-node",
            "1",
            "--mount",
            "type=volume,source=shared,target=/data,volume-driver=caravan",
        ],
        "trap 'exit 0' TERM; echo \"written by $NODE\" > /data/$NODE; sleep 3600 & wait",
    );
    let (all, _) = poll(
        "three files in the shared volume",
        Duration::from_secs(60),
        || read_on(1, "shared", &["/data/h1", "/data/h2", "/data/h3"]),
    );
    assert_eq!(all, "written by h1\nwritten by h2\nwritten by h3");
    let before: Vec<String> = [1, 3]
        .iter()
        .map(|&k| container_on(k, "shared").expect("a shared task"))
        .collect();

    // h2 is lost: its dockerd, containers and caravan SIGKILLed at once.
    ok(&["testbed", "host", "2", "kill"]);
    let killed = Instant::now();
    let (plain_at, db_at) = both_times(
        killed,
        "rescheduled",
        || container_on(3, "plain").is_some(),
        || {
            read_on(3, "db", &["/data/first"]).map(|first| {
                assert_eq!(first, "h2", "the new task must find the data h2 wrote");
            })
        },
    );
    let added = db_at.saturating_sub(plain_at);
    eprintln!(
        "swarm: kill of h2 -> task without a volume running on h3 {} ms; exclusive volume's task reading h2's data on h3 {} ms; caravan added {} ms (dead-after {} s, fence wait {} s, dispatcher heartbeat {DISPATCHER_HEARTBEAT})",
        ms(plain_at),
        ms(db_at),
        ms(added),
        DEAD_AFTER.as_secs(),
        FENCE_WAIT.as_secs()
    );
    assert!(
        added <= DEAD_AFTER + FENCE_WAIT + Duration::from_secs(3),
        "caravan added more than the fence bound (dead-after + fence wait) + 3 s to Swarm's own rescheduling: {added:?}"
    );
    assert!(
        db_at >= EARLIEST_TAKEOVER,
        "taken over before h2 could be declared dead: {db_at:?}"
    );
    let st = volume_status(3, "db");
    assert_eq!(st["holder"]["node"], "h3", "{st}");
    assert_eq!(st["takeovers"][0]["from"], "h2", "{st}");
    assert_eq!(st["takeovers"][0]["forced"], false, "{st}");

    // The shared volume: the tasks on h1 and h3 never stopped, all three files are
    // readable, and they can still write; nothing was taken over or removed.
    for (&k, id) in [1u32, 3].iter().zip(&before) {
        assert_eq!(
            container_on(k, "shared").as_ref(),
            Some(id),
            "h{k}'s task was replaced"
        );
        let all = read_on(k, "shared", &["/data/h1", "/data/h2", "/data/h3"]).unwrap();
        assert_eq!(all, "written by h1\nwritten by h2\nwritten by h3", "h{k}");
        dk_ok(
            k,
            &["exec", id, "sh", "-c", "echo still > /data/$NODE.after"],
        );
    }
    let st = volume_status(1, "shared");
    assert!(st["holder"].is_null(), "{st}");
    assert!(
        st["takeovers"].as_array().is_none_or(|t| t.is_empty()),
        "{st}"
    );
    for k in ["h1", "h3"] {
        assert_eq!(st["mounts"][k]["node_state"], "alive", "{st}");
    }
    assert_never_judged_dead(&[1, 3], &[1, 3]);
    drop(swarm);
}

/// `docker stack deploy` of a Compose file declaring a caravan volume.
const STACK: &str = r#"version: "3.8"
services:
  db:
    image: caravan-test/busybox:latest
    command: ["sh", "-c", "trap 'exit 0' TERM; [ -e /data/first ] || echo \"$$NODE\" > /data/first; sleep 3600 & wait"]
    environment:
      NODE: "{{.Node.Hostname}}"
    volumes:
      - db:/data
    networks: [hostnet]
    deploy:
      placement:
        constraints: [node.role == worker]
networks:
  hostnet:
    external: true
    name: host
volumes:
  db:
    driver: caravan
    driver_opts:
      access: exclusive
      size: 1G
"#;

/// `docker service update --force --update-order start-first ARGS SERVICE`, whose
/// outcome the caller polls for (the CLI reports a paused update as a failure).
fn start_first_update(m: u32, service: &str, args: &[&str]) {
    let mut all = vec![
        "service",
        "update",
        "--force",
        "--update-order",
        "start-first",
    ];
    all.extend_from_slice(args);
    all.push(service);
    let _ = dk(m, &all);
}

fn update_state(m: u32, service: &str) -> String {
    dk_ok(
        m,
        &[
            "service",
            "inspect",
            service,
            "--format",
            "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}",
        ],
    )
}

#[test]
fn planned_moves_updates_and_stacks_keep_the_data_without_a_takeover() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !util::docker::available("swarm_planned_moves") {
        return;
    }
    let swarm = Swarm::start(1, 2);
    let m = 1;
    let workers = [2, 3];
    let scratch = util::Scratch::new();
    let file = scratch.path().join("stack.yml");
    std::fs::write(&file, STACK).unwrap();
    let file = file.to_str().unwrap();

    // A stack with an exclusive, sized caravan volume, and a service without a volume
    // (the baseline), both on h2: h3 is drained while they are placed.
    dk_ok(m, &["node", "update", "--availability", "drain", "h3"]);
    dk_ok(m, &["stack", "deploy", "-c", file, "app"]);
    service_create(
        m,
        "plain",
        &["--constraint", "node.role==worker"],
        "trap 'exit 0' TERM; sleep 3600 & wait",
    );
    let (first, _) = poll(
        "the stack's task running on h2",
        Duration::from_secs(60),
        || read_on(2, "app_db", &["/data/first"]),
    );
    assert_eq!(first, "h2");
    poll("plain running on h2", Duration::from_secs(30), || {
        container_on(2, "plain")
    });
    let c = container_on(2, "app_db").unwrap();
    dk_ok(2, &["exec", &c, "sh", "-c", "echo kept > /data/keep"]);
    let st = volume_status(2, "app_db");
    assert_eq!(st["options"]["access"], "exclusive", "{st}");
    assert_eq!(st["size"], "1G", "{st}");
    dk_ok(m, &["node", "update", "--availability", "active", "h3"]);

    // Drain h2: Swarm stops the tasks (the old one's Unmount releases the hold) and starts
    // them on h3, where the exclusive volume mounts at once: no takeover, no wait for
    // --dead-after.
    dk_ok(m, &["node", "update", "--availability", "drain", "h2"]);
    let drained = Instant::now();
    let (plain_at, db_at) = both_times(
        drained,
        "moved",
        || container_on(3, "plain").is_some(),
        || read_on(3, "app_db", &["/data/keep"]).map(|kept| assert_eq!(kept, "kept")),
    );
    eprintln!(
        "swarm: drain of h2 -> task without a volume running on h3 {} ms; exclusive volume's task reading its data on h3 {} ms (dead-after {} s)",
        ms(plain_at),
        ms(db_at),
        DEAD_AFTER.as_secs()
    );
    assert!(
        db_at <= plain_at + Duration::from_secs(3),
        "caravan added more than 3 s to a planned move: {db_at:?} against {plain_at:?}"
    );
    let st = volume_status(3, "app_db");
    assert_eq!(st["holder"]["node"], "h3", "{st}");
    assert!(
        st["takeovers"].as_array().is_none_or(|t| t.is_empty()),
        "a drain is a release, not a takeover: {st}"
    );
    assert!(
        task_errors(m, "app_db").is_empty(),
        "{:?}",
        task_errors(m, "app_db")
    );
    dk_ok(m, &["service", "rm", "plain"]);
    dk_ok(m, &["node", "update", "--availability", "active", "h2"]);
    // The task now runs on h3.
    let other = 3;

    // A start-first update cannot work across nodes on an exclusive volume: the new task
    // (kept off the old one's node by one replica per node) is refused, naming the
    // holder, the update pauses, and the old task keeps running with its data.
    let old = container_on(other, "app_db").unwrap();
    start_first_update(m, "app_db", &["--replicas-max-per-node", "1"]);
    poll(
        "the start-first update paused",
        Duration::from_secs(60),
        || (update_state(m, "app_db") == "paused").then_some(()),
    );
    let errors = task_errors(m, "app_db");
    let holder = format!("held by node h{other}, which is alive");
    assert!(
        errors
            .iter()
            .any(|e| e.contains(&holder) && e.contains("--update-order stop-first")),
        "the refused task should name the holder and stop-first: {errors:?}"
    );
    assert_eq!(container_on(other, "app_db"), Some(old.clone()));
    assert_eq!(
        read_on(other, "app_db", &["/data/keep"]).as_deref(),
        Some("kept")
    );

    // Nor on the old task's own node: one writer is one container, not one node. The new
    // task is refused naming the node and stop-first, and the old one keeps running.
    start_first_update(
        m,
        "app_db",
        &[
            "--replicas-max-per-node",
            "0",
            "--constraint-add",
            &format!("node.hostname==h{other}"),
        ],
    );
    let in_use = format!("another container has it mounted on node h{other}");
    let (errors, _) = poll(
        "the start-first task on the same node refused",
        Duration::from_secs(60),
        || {
            let errors = task_errors(m, "app_db");
            errors.iter().any(|e| e.contains(&in_use)).then_some(errors)
        },
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains(&in_use) && e.contains("--update-order stop-first")),
        "{errors:?}"
    );
    poll(
        "the same-node start-first update paused",
        Duration::from_secs(60),
        || (update_state(m, "app_db") == "paused").then_some(()),
    );
    assert_eq!(container_on(other, "app_db"), Some(old.clone()));
    let label = "label=com.docker.swarm.service.name=app_db";
    let running: Vec<String> = dk_ok(other, &["ps", "-q", "--filter", label])
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        running.len(),
        1,
        "one container of app_db on h{other}: {running:?}"
    );

    // The recommendation: stop-first (Swarm's default order). It completes, and the
    // restarted task has the data.
    let t = Instant::now();
    let out = dk(
        m,
        &[
            "service",
            "update",
            "--force",
            "--update-order",
            "stop-first",
            "app_db",
        ],
    );
    assert!(
        out.status.success(),
        "the stop-first update: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        dk_ok(m, &["service", "ps", "app_db", "--no-trunc"])
    );
    poll(
        "the stop-first update completed",
        Duration::from_secs(60),
        || (update_state(m, "app_db") == "completed").then_some(()),
    );
    let ((_, kept), _) = poll("the updated task reading", Duration::from_secs(30), || {
        reader(&workers, "app_db", "/data/keep")
    });
    assert_eq!(kept, "kept");
    eprintln!(
        "swarm: stop-first rolling update of the exclusive volume's service {} ms",
        ms(t.elapsed())
    );

    // The stack removed and deployed again: the same volume, the same data.
    dk_ok(m, &["stack", "rm", "app"]);
    poll(
        "the stack's containers gone",
        Duration::from_secs(60),
        || {
            workers
                .iter()
                .all(|&k| container_on(k, "app_db").is_none())
                .then_some(())
        },
    );
    dk_ok(m, &["stack", "deploy", "-c", file, "app"]);
    let ((_, again), _) = poll(
        "the redeployed stack reading",
        Duration::from_secs(60),
        || reader(&workers, "app_db", "/data/keep"),
    );
    assert_eq!(again, "kept");
    dk_ok(m, &["stack", "rm", "app"]);
    drop(swarm);
}

#[test]
fn losing_the_leader_loses_no_volume() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !util::docker::available("swarm_leader_lost") {
        return;
    }
    let swarm = Swarm::start(3, 1);
    // The task on the leader, h1: the others drained while it is placed.
    for k in 2..=4 {
        dk_ok(
            1,
            &[
                "node",
                "update",
                "--availability",
                "drain",
                &format!("h{k}"),
            ],
        );
    }
    service_create(
        1,
        "db",
        &[
            "--mount",
            "type=volume,source=db,target=/data,volume-driver=caravan,volume-opt=access=exclusive",
        ],
        FIRST_WRITER,
    );
    service_create(1, "plain", &[], "trap 'exit 0' TERM; sleep 3600 & wait");
    let (first, _) = poll("db running on h1", Duration::from_secs(60), || {
        read_on(1, "db", &["/data/first"])
    });
    assert_eq!(first, "h1");
    poll("plain running on h1", Duration::from_secs(30), || {
        container_on(1, "plain")
    });
    for k in 2..=4 {
        dk_ok(
            1,
            &[
                "node",
                "update",
                "--availability",
                "active",
                &format!("h{k}"),
            ],
        );
    }

    // The leader is lost with the task; the other managers elect a leader, see h1 down
    // and reschedule the task, which takes the volume over.
    ok(&["testbed", "host", "1", "kill"]);
    let killed = Instant::now();
    let mut plain_at = None;
    let ((k, first), at) = poll("db back on another node", Duration::from_secs(120), || {
        if plain_at.is_none()
            && [2, 3, 4]
                .iter()
                .any(|&k| container_on(k, "plain").is_some())
        {
            plain_at = Some(killed.elapsed());
        }
        reader(&[2, 3, 4], "db", "/data/first")
    });
    let (plain_at, _) = poll(
        "plain back on another node",
        Duration::from_secs(60),
        || {
            plain_at.or_else(|| {
                [2, 3, 4]
                    .iter()
                    .any(|&k| container_on(k, "plain").is_some())
                    .then(|| killed.elapsed())
            })
        },
    );
    assert_eq!(first, "h1", "h{k} must find h1's data");
    let m = swarm.manager(&[1]);
    let leader = dk_ok(
        m,
        &[
            "node",
            "ls",
            "--filter",
            "role=manager",
            "--format",
            "{{.Hostname}} {{.ManagerStatus}}",
        ],
    );
    eprintln!(
        "swarm: kill of the leader h1 (running the tasks) -> task without a volume running elsewhere {} ms; exclusive volume's task reading its data on h{k} {} ms; managers now: {}",
        ms(plain_at),
        ms(at),
        leader.replace('\n', ", ")
    );
    assert!(
        leader
            .lines()
            .any(|l| l.ends_with("Leader") && !l.starts_with("h1 ")),
        "{leader}"
    );
    assert!(
        at >= EARLIEST_TAKEOVER,
        "taken over before h1 could be declared dead: {at:?}"
    );
    let st = volume_status(k, "db");
    assert_eq!(st["holder"]["node"], format!("h{k}"), "{st}");
    assert_eq!(st["takeovers"][0]["from"], "h1", "{st}");
    assert_never_judged_dead(&[2, 3, 4], &[2, 3, 4]);
    drop(swarm);
}

/// `docker-compose -p PROJECT -f FILE ARGS` against host K's dockerd (Debian's
/// docker-compose 1.29).
fn compose(k: u32, project: &str, file: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("docker-compose")
        .args(["-p", project, "-f"])
        .arg(file)
        .args(args)
        .env("DOCKER_HOST", format!("unix://{BED}/h{k}/docker.sock"))
        .output()
        .expect("run docker-compose (scripts/test installs it)");
    assert!(
        out.status.success(),
        "h{k}: docker-compose {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

const COMPOSE_SHARED: &str = r#"version: "3.8"
services:
  web:
    image: caravan-test/busybox:latest
    command: ["sh", "-c", "trap 'exit 0' TERM; [ -e /data/first ] || hostname > /data/first; sleep 3600 & wait"]
    network_mode: none
    volumes:
      - site:/data
volumes:
  site:
    driver: caravan
"#;

/// An exclusive volume made beforehand (`caravan create`), named in the file as external:
/// Compose 1.x compares a declared volume's driver_opts with what the local dockerd
/// recorded at create, which a dockerd that did not create it never has.
const COMPOSE_EXTERNAL: &str = r#"version: "3.8"
services:
  web:
    image: caravan-test/busybox:latest
    command: ["sh", "-c", "trap 'exit 0' TERM; [ -e /data/first ] || hostname > /data/first; sleep 3600 & wait"]
    network_mode: none
    volumes:
      - db:/data
volumes:
  db:
    external: true
    name: shop-db
"#;

#[test]
fn compose_up_down_and_up_again_on_another_host() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !util::docker::available("compose_two_hosts") {
        return;
    }
    let bed = Swarm::hosts_only(2);
    let scratch = util::Scratch::new();
    for (name, text, volume) in [
        ("shared", COMPOSE_SHARED, "shop_site"),
        ("external", COMPOSE_EXTERNAL, "shop-db"),
    ] {
        let file = scratch.path().join(format!("{name}.yml"));
        std::fs::write(&file, text).unwrap();
        if name == "external" {
            util::cli_ok(
                Path::new("/run/caravan-testbed/h1.sock"),
                &["create", "shop-db", "--access", "exclusive"],
            );
        }
        compose(1, "shop", &file, &["up", "-d"]);
        let first = compose(
            1,
            "shop",
            &file,
            &["exec", "-T", "web", "cat", "/data/first"],
        );
        compose(
            1,
            "shop",
            &file,
            &["exec", "-T", "web", "sh", "-c", "echo from-h1 > /data/note"],
        );
        compose(1, "shop", &file, &["down"]);
        // The same file on host 2: the same volume and its data.
        compose(2, "shop", &file, &["up", "-d"]);
        let seen = compose(
            2,
            "shop",
            &file,
            &["exec", "-T", "web", "cat", "/data/first", "/data/note"],
        );
        assert_eq!(seen, format!("{first}\nfrom-h1"), "{name}");
        let st = volume_status(2, volume);
        assert_eq!(st["created_by"], "h1", "{name}: {st}");
        compose(2, "shop", &file, &["down"]);
        eprintln!("compose ({name} volume {volume}): up on h1, down, up on h2: the same data");
    }
    drop(bed);
}

#[test]
fn the_swarm_demo_serves_the_same_page_after_its_node_is_lost() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !util::docker::available("swarm_demo") {
        return;
    }
    let out = script(&[
        "demo-swarm",
        "--dead-after",
        "5s",
        "--dispatcher-heartbeat",
        DISPATCHER_HEARTBEAT,
    ]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("swarm failover: "))
        .unwrap_or_else(|| panic!("{text}"));
    eprintln!("{line}");
    let ms: u64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(
        ms >= 5000,
        "served before the lost node could be declared dead: {line}"
    );
}
