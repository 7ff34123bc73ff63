//! End to end with the machine's real dockerd: what a Docker user does, checked the way a
//! Docker user would check it.

mod util;

use std::fs;

use util::docker::{available, docker_err, docker_ok, run_rm, Env, IMAGE};
use util::is_mountpoint;

#[test]
fn volume_create_run_ls_inspect_rm() {
    if !available("volume_create_run_ls_inspect_rm") {
        return;
    }
    let env = Env::new("volume_create_run_ls_inspect_rm");
    let vol = env.volume("web");
    docker_ok(&[
        "volume",
        "create",
        "-d",
        &env.driver,
        "-o",
        "size=1G",
        "-o",
        "mode=0775",
        &vol,
    ]);

    let mount = format!("{vol}:/data");
    let out = run_rm(&mount, &["sh", "-c", "echo hi > /data/f && cat /data/f"]);
    assert_eq!(out, "hi");
    assert_eq!(
        fs::read_to_string(env.data(&vol).join("f")).unwrap(),
        "hi\n"
    );
    // `run --rm` unmounted it again.
    assert_eq!(env.count(&vol), 0);
    assert!(!is_mountpoint(&env.mountpoint(&vol)));

    let ls = docker_ok(&["volume", "ls", "--format", "{{.Driver}} {{.Name}}"]);
    assert!(
        ls.lines().any(|l| l == format!("{} {vol}", env.driver)),
        "{ls}"
    );

    let mut inspect = env.inspect(&vol);
    assert_eq!(inspect["Driver"], env.driver.as_str());
    assert_eq!(inspect["Scope"], "global");
    assert_eq!(inspect["Status"]["size"], "1G");
    assert_eq!(inspect["Status"]["created_by"], "h1");
    assert_eq!(inspect["Status"]["options"]["mode"], "0775");
    // Usage is measured in the background (a Get never waits for a walk of the
    // volume): the data written shows within a few seconds.
    let t = std::time::Instant::now();
    while inspect["Status"]["usage"]["bytes"].as_u64().unwrap_or(0) == 0 {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(20),
            "{inspect}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
        inspect = env.inspect(&vol);
    }

    docker_ok(&["volume", "rm", &vol]);
    assert!(!env.data(&vol).exists(), "data left behind");
    let ls = docker_ok(&["volume", "ls", "-q"]);
    assert!(!ls.lines().any(|l| l == vol), "{ls}");
    let err = env
        .daemon()
        .err("VolumeDriver.Get", &format!(r#"{{"Name":"{vol}"}}"#));
    assert!(err.contains("no such volume"));
}

#[test]
fn bad_options_and_names_reach_the_docker_user() {
    if !available("bad_options_and_names_reach_the_docker_user") {
        return;
    }
    let env = Env::new("bad_options_and_names_reach_the_docker_user");
    let vol = env.volume("bad");
    let err = docker_err(&["volume", "create", "-d", &env.driver, "-o", "sise=1G", &vol]);
    assert!(
        err.contains("unknown option \"sise\"") && err.contains("size, uid, gid, mode, on_delete"),
        "{err}"
    );
    let err = docker_err(&[
        "volume",
        "create",
        "-d",
        &env.driver,
        "-o",
        "size=huge",
        &vol,
    ]);
    assert!(err.contains("invalid size"), "{err}");
    assert!(!env.daemon().root.join("volumes").join(&vol).exists());
}

#[test]
fn two_containers_share_a_volume_and_stopping_one_keeps_the_other_mounted() {
    if !available("two_containers_share") {
        return;
    }
    let env = Env::new("two_containers_share");
    let vol = env.volume("shared");
    docker_ok(&["volume", "create", "-d", &env.driver, &vol]);
    let c1 = env.run_sleeper("c1", &vol, &[]);
    let c2 = env.run_sleeper("c2", &vol, &[]);
    assert_eq!(env.count(&vol), 2);
    docker_ok(&["exec", &c1, "sh", "-c", "echo from-c1 > /data/one"]);
    assert_eq!(docker_ok(&["exec", &c2, "cat", "/data/one"]), "from-c1");

    docker_ok(&["stop", "-t", "1", &c1]);
    assert_eq!(env.count(&vol), 1);
    assert!(
        is_mountpoint(&env.mountpoint(&vol)),
        "stopping c1 unmounted c2's volume"
    );
    docker_ok(&["exec", &c2, "sh", "-c", "echo from-c2 > /data/two"]);
    assert_eq!(
        fs::read_to_string(env.data(&vol).join("two")).unwrap(),
        "from-c2\n"
    );

    // A volume in use by a container: docker refuses, and so would caravan.
    let err = docker_err(&["volume", "rm", &vol]);
    assert!(err.contains("in use"), "{err}");

    docker_ok(&["stop", "-t", "1", &c2]);
    assert_eq!(env.count(&vol), 0);
    assert!(!is_mountpoint(&env.mountpoint(&vol)));
}

/// One writer (issue 29): a second container of an exclusive volume is refused on the
/// same host, naming the container that has it; once that one stops, the second runs.
#[test]
fn a_second_container_of_an_exclusive_volume_is_refused_naming_the_first() {
    if !available("second_exclusive_container") {
        return;
    }
    let env = Env::new("second_exclusive_container");
    let vol = env.volume("one-writer");
    docker_ok(&[
        "volume",
        "create",
        "-d",
        &env.driver,
        "-o",
        "access=exclusive",
        &vol,
    ]);
    let c1 = env.run_sleeper("c1", &vol, &[]);
    let c2 = env.container("c2");
    let mount = format!("{vol}:/data");
    let err = docker_err(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        &c2,
        "-v",
        &mount,
        IMAGE,
        "sleep",
        "3600",
    ]);
    assert!(
        err.contains("one writer at a time")
            && err.contains(&format!("container {c1}"))
            && err.contains("stop-first"),
        "{err}"
    );
    // The first container goes on with the volume.
    assert_eq!(env.count(&vol), 1);
    docker_ok(&["exec", &c1, "sh", "-c", "echo still > /data/mine"]);
    docker_ok(&["rm", "-f", &c2]);
    docker_ok(&["stop", "-t", "1", &c1]);
    let c3 = env.run_sleeper("c3", &vol, &[]);
    assert_eq!(docker_ok(&["exec", &c3, "cat", "/data/mine"]), "still");
    docker_ok(&["stop", "-t", "1", &c3]);
}

#[test]
fn docker_cp_into_a_running_container_lands_on_the_volume() {
    if !available("docker_cp_into_running") {
        return;
    }
    let env = Env::new("docker_cp_into_running");
    let vol = env.volume("cp");
    docker_ok(&["volume", "create", "-d", &env.driver, &vol]);
    let c = env.run_sleeper("c", &vol, &[]);
    let src = env.scratch.path().join("upload.txt");
    fs::write(&src, "copied in").unwrap();
    // docker cp mounts the volume again with the container's own mount ID.
    docker_ok(&[
        "cp",
        src.to_str().unwrap(),
        &format!("{c}:/data/upload.txt"),
    ]);
    assert_eq!(
        fs::read_to_string(env.data(&vol).join("upload.txt")).unwrap(),
        "copied in"
    );
    assert_eq!(
        docker_ok(&["exec", &c, "cat", "/data/upload.txt"]),
        "copied in"
    );
    assert_eq!(
        env.count(&vol),
        1,
        "docker cp's mount and unmount must balance"
    );
    docker_ok(&["stop", "-t", "1", &c]);
    assert_eq!(env.count(&vol), 0);
    assert!(!is_mountpoint(&env.mountpoint(&vol)));
}

#[test]
fn a_second_node_sees_docker_volumes_and_blocks_their_removal_while_it_mounts_them() {
    if !available("second_node_blocks") {
        return;
    }
    let env = Env::new("second_node_blocks");
    let vol = env.volume("multi");
    docker_ok(&["volume", "create", "-d", &env.driver, "-o", "size=2G", &vol]);
    // Node b: another daemon on the same root (its own dockerd comes with the test bed).
    let b = util::Daemon::start(env.scratch.path(), &env.daemon().root, "b");
    let got = b.ok("VolumeDriver.Get", &format!(r#"{{"Name":"{vol}"}}"#));
    assert_eq!(got["Volume"]["Status"]["size"], "2G");
    b.ok(
        "VolumeDriver.Mount",
        &format!(r#"{{"Name":"{vol}","ID":"b1"}}"#),
    );

    let err = docker_err(&["volume", "rm", &vol]);
    assert!(err.contains("mounted on b"), "{err}");
    // The failed remove must not make dockerd forget the volume.
    assert_eq!(env.inspect(&vol)["Status"]["mounts"]["b"]["count"], 1);

    b.ok(
        "VolumeDriver.Unmount",
        &format!(r#"{{"Name":"{vol}","ID":"b1"}}"#),
    );
    docker_ok(&["volume", "rm", &vol]);
    b.err("VolumeDriver.Get", &format!(r#"{{"Name":"{vol}"}}"#));
}
