//! End to end with the machine's real dockerd: restarts of caravan and of dockerd itself.
//! These tests restart shared processes, so they run one at a time (the shared daemon's
//! write lock, and a lock of their own for dockerd).

mod util;

use std::fs;
use std::sync::Mutex;
use std::time::Duration;

use util::docker::{available, docker_ok, restart_dockerd, Env};
use util::eventually;
use util::is_mountpoint;

static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn restarting_caravan_under_a_running_container_keeps_its_volume() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !available("restart_caravan_running") {
        return;
    }
    let env = Env::new("restart_caravan_running");
    let vol = env.volume("live");
    docker_ok(&["volume", "create", "-d", &env.driver, &vol]);
    let c = env.run_sleeper("c", &vol, &[]);

    let data = env.data(&vol);
    let mut daemon = util::docker::shared_daemon()
        .write()
        .unwrap_or_else(|p| p.into_inner());
    let status = daemon.stop();
    assert!(status.success(), "caravan exited with {status}");
    // The container keeps working on the shared root while caravan is down.
    docker_ok(&["exec", &c, "sh", "-c", "echo while-down > /data/f"]);
    assert_eq!(fs::read_to_string(data.join("f")).unwrap(), "while-down\n");

    daemon.spawn();
    drop(daemon);
    assert_eq!(
        env.count(&vol),
        1,
        "the restart forgot a mount still in use"
    );
    assert!(is_mountpoint(&env.mountpoint(&vol)));
    // dockerd does not re-activate the plugin; calls must work all the same.
    let ls = docker_ok(&["volume", "ls", "-q"]);
    assert!(ls.lines().any(|l| l == vol), "{ls}");
    docker_ok(&["exec", &c, "sh", "-c", "echo after-restart > /data/g"]);
    docker_ok(&["stop", "-t", "1", &c]);
    eventually(
        Duration::from_secs(10),
        "the unmount after the container stopped",
        || env.count(&vol) == 0,
    );
    assert!(!is_mountpoint(&env.mountpoint(&vol)));
    assert_eq!(
        fs::read_to_string(env.data(&vol).join("g")).unwrap(),
        "after-restart\n"
    );
}

#[test]
fn restarting_dockerd_remounts_restarted_containers_and_balances_counts() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !available("restart_dockerd") {
        return;
    }
    let env = Env::new("restart_dockerd");
    let vol = env.volume("vol");
    docker_ok(&["volume", "create", "-d", &env.driver, &vol]);
    let c = env.run_sleeper("c", &vol, &["--restart", "always"]);
    docker_ok(&["exec", &c, "sh", "-c", "echo before > /data/f"]);
    assert_eq!(env.count(&vol), 1);

    restart_dockerd();
    eventually(
        Duration::from_secs(60),
        "the container to run again",
        || docker_ok(&["inspect", "-f", "{{.State.Running}}", &c]) == "true",
    );
    // The old mount was unmounted at shutdown and the restart mounted a new ID: one mount.
    eventually(Duration::from_secs(10), "one mount", || {
        env.count(&vol) == 1
    });
    assert_eq!(docker_ok(&["exec", &c, "cat", "/data/f"]), "before");
    docker_ok(&["exec", &c, "sh", "-c", "echo after > /data/g"]);
    assert_eq!(
        fs::read_to_string(env.data(&vol).join("g")).unwrap(),
        "after\n"
    );
    let inspect = env.inspect(&vol);
    assert_eq!(inspect["Driver"], env.driver.as_str());

    docker_ok(&["rm", "-f", &c]);
    eventually(Duration::from_secs(10), "the unmount", || {
        env.count(&vol) == 0
    });
    assert!(!is_mountpoint(&env.mountpoint(&vol)));
}
