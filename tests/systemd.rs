//! systemd socket activation and readiness, with Debian's `systemd-socket-activate`
//! standing in for systemd: it listens on the socket, and on the first connection execs
//! the daemon with the listening socket passed (`LISTEN_FDS`, `LISTEN_PID`).

mod util;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use util::docker::{docker, docker_ok, DRIVER, IMAGE};
use util::{require_root, Scratch};

/// The activator, and then the daemon it became; killed if a test fails before stopping it.
struct Activated(Child);

impl Drop for Activated {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `systemd-socket-activate` listening on `socket`, ready to exec `caravan daemon ARGS`
/// with `NOTIFY_SOCKET` set to `notify`. Returns once the socket listens.
fn activate(socket: &Path, notify: &Path, log: &Path, args: &[&str]) -> Activated {
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(socket)
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", notify.display()))
        .args(["-E", "NO_COLOR=1"])
        .arg(util::caravan_bin())
        .arg("daemon")
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("systemd-socket-activate (Debian's systemd package)");
    util::eventually(Duration::from_secs(10), "the activation socket", || {
        socket.exists()
    });
    Activated(child)
}

/// Waits for one sd_notify datagram containing `what`.
fn notified(sock: &UnixDatagram, what: &str) -> String {
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no {what} from the daemon: {e}"));
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.lines().any(|l| l == what) {
            return msg;
        }
    }
}

fn sigterm_and_wait(Activated(child): &mut Activated) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the daemon did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_first_call_on_an_activated_socket_starts_the_daemon_and_is_served() {
    if !require_root("the_first_call_on_an_activated_socket_starts_the_daemon_and_is_served") {
        return;
    }
    let s = Scratch::new();
    let p = |n: &str| s.path().join(n);
    std::fs::create_dir_all(p("root")).unwrap();
    let socket = p("caravan.sock");
    let notify = UnixDatagram::bind(p("notify.sock")).unwrap();
    let (root, state, spec, sock) = (p("root"), p("state"), p("spec"), socket.clone());
    let mut child = activate(
        &socket,
        &p("notify.sock"),
        &p("log"),
        &[
            "--root",
            root.to_str().unwrap(),
            "--node",
            "a",
            "--state-dir",
            state.to_str().unwrap(),
            "--socket",
            sock.to_str().unwrap(),
            "--spec-dir",
            spec.to_str().unwrap(),
            "--config",
            "/dev/null",
        ],
    );
    let log = || std::fs::read_to_string(p("log")).unwrap_or_default();
    assert!(
        !log().contains("caravan daemon serving"),
        "started before any call:\n{}",
        log()
    );
    // The first call starts the daemon; it waits in the socket's backlog meanwhile.
    let t = Instant::now();
    let (status, v) = util::http(&socket, "POST", "/Plugin.Activate", "", false);
    let first = t.elapsed();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["Implements"][0], "VolumeDriver");
    let ready = notified(&notify, "READY=1");
    assert!(ready.contains("STATUS=serving"), "{ready}");
    let (_, v) = util::http(
        &socket,
        "POST",
        "/VolumeDriver.Create",
        r#"{"Name":"web"}"#,
        false,
    );
    assert_eq!(v["Err"], "", "{v}");
    eprintln!("socket activation: first call answered {first:.0?} after it was sent (daemon start included)");
    assert!(log().contains("socket_activated=true"), "{}", log());
    assert!(spec.join("caravan.spec").exists());
    sigterm_and_wait(&mut child);
    notified(&notify, "STOPPING=1");
    // The socket is systemd's, and the spec names it: both stay for the next start.
    assert!(socket.exists(), "the activated socket was removed");
    assert!(
        spec.join("caravan.spec").exists(),
        "the spec file was removed"
    );
}

/// A dockerd that runs `docker run -v` while caravan is not running yet, as after a host
/// reboot with `docker.service` up first: the plugin call waits on the activated socket
/// until caravan serves it, instead of failing.
#[test]
fn dockerd_calls_wait_on_the_activated_socket_until_caravan_serves() {
    if !util::docker::available("dockerd_calls_wait_on_the_activated_socket_until_caravan_serves") {
        return;
    }
    // The end-to-end driver name and socket (see util::docker): dockerd remembers every
    // plugin it activated, and this leaves it no new one.
    let socket = util::docker::SOCKET;
    let base = Path::new(util::docker::BASE);
    util::unmount_below(base);
    let _ = std::fs::remove_dir_all(base);
    std::fs::create_dir_all(base.join("root")).unwrap();
    std::fs::create_dir_all(Path::new(socket).parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(socket);
    let notify_path = base.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    // The spec is in place before caravan ever runs, as the package installs it.
    std::fs::write(
        format!("/etc/docker/plugins/{DRIVER}.spec"),
        format!("unix://{socket}\n"),
    )
    .unwrap();
    let (root, state) = (base.join("root"), base.join("state"));
    let mut child = activate(
        Path::new(socket),
        &notify_path,
        &base.join("log"),
        &[
            "--root",
            root.to_str().unwrap(),
            "--node",
            "h1",
            "--state-dir",
            state.to_str().unwrap(),
            "--socket",
            socket,
            "--spec-dir",
            "/etc/docker/plugins",
            "--driver-name",
            DRIVER,
            "--config",
            "/dev/null",
        ],
    );
    let vol = "sysd-activated";
    let mount = format!("{vol}:/data");
    let t = Instant::now();
    let out = docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--volume-driver",
        DRIVER,
        "-v",
        &mount,
        IMAGE,
        "sh",
        "-c",
        "echo from-activation > /data/f && cat /data/f",
    ]);
    eprintln!(
        "docker run with a socket-activated caravan: {:.1?}",
        t.elapsed()
    );
    assert_eq!(out, "from-activation");
    notified(&notify, "READY=1");
    assert_eq!(
        std::fs::read_to_string(root.join("volumes").join(vol).join("data/f")).unwrap(),
        "from-activation\n"
    );
    let _ = docker(&["volume", "rm", vol]);
    sigterm_and_wait(&mut child);
}
