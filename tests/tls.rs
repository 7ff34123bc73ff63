//! The plugin API over TCP with mutual TLS: certificates made here with the openssl CLI, a
//! client with the right certificate served, clients without one, with another CA's, or
//! speaking plain HTTP refused and logged; and a real dockerd using the `.json` spec.

mod util;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use util::docker::{docker, docker_ok, run_rm};
use util::pki::Pki;
use util::{require_root, Daemon, Scratch};

/// A plugin call with curl over HTTPS, as `client` (a name in the PKI) or with no
/// certificate; `None` when the TLS handshake or the connection fails.
fn call(
    pki: &Pki,
    port: u16,
    client: Option<&str>,
    method: &str,
    body: &str,
) -> Option<serde_json::Value> {
    let mut c = Command::new("curl");
    c.args([
        "-sS",
        "--max-time",
        "20",
        "--cacert",
        &pki.path("ca.pem"),
        "-X",
        "POST",
        "--data-binary",
        body,
    ]);
    if let Some(name) = client {
        c.args([
            "--cert",
            &pki.path(&format!("{name}.pem")),
            "--key",
            &pki.path(&format!("{name}.key")),
        ]);
    }
    let out = c
        .arg(format!("https://127.0.0.1:{port}/{method}"))
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

#[test]
fn only_clients_with_a_certificate_from_the_client_ca_are_served() {
    if !require_root("only_clients_with_a_certificate_from_the_client_ca_are_served") {
        return;
    }
    let s = Scratch::new();
    let pki = Pki::new(s.path());
    let port = util::free_port();
    let flags = pki.flags(port);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let d = Daemon::start_with(
        s.path(),
        &s.path().join("root"),
        "a",
        s.path().join("spec"),
        "caravan-tls",
        &flags,
    );
    // The .json spec, and no .spec beside it. (The socket accepts once bound, a moment
    // before the spec is written.)
    util::eventually(Duration::from_secs(10), "the .json spec", || {
        s.path().join("spec/caravan-tls.json").exists()
    });
    let spec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(s.path().join("spec/caravan-tls.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(spec["Addr"], format!("https://127.0.0.1:{port}"));
    assert_eq!(spec["TLSConfig"]["CertFile"], pki.path("docker.pem"));
    assert_eq!(spec["TLSConfig"]["CAFile"], pki.path("ca.pem"));
    assert!(!s.path().join("spec/caravan-tls.spec").exists());

    let v = call(&pki, port, Some("docker"), "Plugin.Activate", "")
        .expect("served with the right certificate");
    assert_eq!(v["Implements"][0], "VolumeDriver");
    let v = call(
        &pki,
        port,
        Some("docker"),
        "VolumeDriver.Create",
        r#"{"Name":"tlsvol"}"#,
    )
    .unwrap();
    assert_eq!(v["Err"], "", "{v}");
    let v = call(
        &pki,
        port,
        Some("docker"),
        "VolumeDriver.Mount",
        r#"{"Name":"tlsvol","ID":"t1"}"#,
    )
    .unwrap();
    assert!(
        util::is_mountpoint(Path::new(v["Mountpoint"].as_str().unwrap())),
        "{v}"
    );
    call(
        &pki,
        port,
        Some("docker"),
        "VolumeDriver.Unmount",
        r#"{"Name":"tlsvol","ID":"t1"}"#,
    )
    .unwrap();
    // The control API stays on the unix socket.
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            &pki.path("ca.pem"),
        ])
        .args([
            "--cert",
            &pki.path("docker.pem"),
            "--key",
            &pki.path("docker.key"),
        ])
        .arg(format!("https://127.0.0.1:{port}/v1/volumes"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");

    // Refused: no certificate, another CA's certificate, plain HTTP.
    assert!(call(
        &pki,
        port,
        None,
        "VolumeDriver.Remove",
        r#"{"Name":"tlsvol"}"#
    )
    .is_none());
    assert!(call(
        &pki,
        port,
        Some("stranger"),
        "VolumeDriver.Remove",
        r#"{"Name":"tlsvol"}"#
    )
    .is_none());
    let plain = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-X",
            "POST",
            "--data-binary",
            r#"{"Name":"tlsvol"}"#,
        ])
        .arg(format!("http://127.0.0.1:{port}/VolumeDriver.Remove"))
        .output()
        .unwrap();
    assert!(
        !plain.status.success() || !String::from_utf8_lossy(&plain.stdout).contains("\"Err\":\"\"")
    );
    util::eventually(Duration::from_secs(5), "three refusals in the log", || {
        d.log_text().matches("TLS handshake refused").count() >= 3
    });
    // Still there.
    assert_eq!(
        d.ok("VolumeDriver.List", "{}")["Volumes"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// Issue 24, 11: peers that connect and never complete a handshake (30 idle TCP
/// connections, from another address, against --max-connections 8) never keep a client
/// with a valid certificate waiting: handshakes have slots of their own, at most 16 per
/// address, and time out after 3 s.
#[test]
fn idle_handshakes_never_keep_an_authenticated_client_waiting() {
    if !require_root("idle_handshakes_never_keep_an_authenticated_client_waiting") {
        return;
    }
    let s = Scratch::new();
    let pki = Pki::new(s.path());
    let port = util::free_port();
    let mut flags = pki.flags(port);
    flags.extend(["--max-connections".to_string(), "8".to_string()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let _d = Daemon::start_with(
        s.path(),
        &s.path().join("root"),
        "a",
        s.path().join("spec"),
        "caravan-tls",
        &flags,
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // 30 connections from 127.0.0.2 that send nothing, kept open.
    let idle: Vec<tokio::net::TcpStream> = rt.block_on(async {
        let mut idle = Vec::new();
        for _ in 0..30 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            idle.push(
                socket
                    .connect(format!("127.0.0.1:{port}").parse().unwrap())
                    .await
                    .unwrap(),
            );
        }
        idle
    });
    for i in 0..5 {
        let t = std::time::Instant::now();
        let v = call(&pki, port, Some("docker"), "Plugin.Activate", "")
            .expect("an authenticated client is served");
        let took = t.elapsed();
        assert_eq!(v["Implements"][0], "VolumeDriver");
        eprintln!(
            "call {i} beside 30 idle connections: {:.0} ms",
            took.as_secs_f64() * 1e3
        );
        assert!(took < Duration::from_secs(2), "call {i} waited {took:?}");
    }
    drop(idle);
}

#[test]
fn tls_settings_that_do_not_fit_are_refused_before_anything_starts() {
    let s = Scratch::new();
    let pki = Pki::new(s.path());
    let run = |extra: &[&str]| {
        let out = Command::new(util::caravan_bin())
            .args(["daemon", "--config", "/dev/null", "--node", "x", "--root"])
            .arg(s.path())
            .arg("--state-dir")
            .arg(s.path().join("state"))
            .arg("--socket")
            .arg(s.path().join("sock"))
            .arg("--spec-dir")
            .arg(s.path().join("spec"))
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let (cert, key, ca) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    assert!(run(&["--listen", "tcp://127.0.0.1:1"]).contains("needs --tls-cert"));
    assert!(run(&["--tls-cert", &cert]).contains("go with --listen"));
    assert!(run(&["--listen", "127.0.0.1:1", "--insecure-tcp"]).contains("tcp://IP:PORT"));
    let wrong_key = pki.path("docker.key");
    let e = run(&[
        "--listen",
        "tcp://127.0.0.1:1",
        "--tls-cert",
        &cert,
        "--tls-key",
        &wrong_key,
        "--tls-client-ca",
        &ca,
    ]);
    assert!(e.contains("do not make a usable pair"), "{e}");
    let e = run(&[
        "--listen",
        "tcp://127.0.0.1:1",
        "--tls-cert",
        "/nonexistent.pem",
        "--tls-key",
        &key,
        "--tls-client-ca",
        &ca,
    ]);
    assert!(e.contains("--tls-cert /nonexistent.pem"), "{e}");
    assert!(!s.path().join("spec").exists(), "a spec file was written");
}

/// A real dockerd reaching caravan through `<driver>.json` over TLS.
#[test]
fn dockerd_creates_mounts_and_removes_a_volume_over_tls() {
    if !util::docker::available("dockerd_creates_mounts_and_removes_a_volume_over_tls") {
        return;
    }
    let s = Scratch::new();
    let pki = Pki::new(s.path());
    let port = util::free_port();
    let flags = pki.flags(port);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    // A driver name of its own (the e2e one is known to dockerd by its unix socket);
    // dockerd is restarted at the end so that it forgets it.
    let driver = "caravan-tls-e2e";
    let mut d = Daemon::start_with(
        s.path(),
        &s.path().join("root"),
        "h1",
        "/etc/docker/plugins".into(),
        driver,
        &flags,
    );
    struct Forget(&'static str);
    impl Drop for Forget {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(format!("/etc/docker/plugins/{}.json", self.0));
            util::docker::restart_dockerd();
        }
    }
    let _forget = Forget(driver);
    let vol = "tls-e2e-vol";
    docker_ok(&["volume", "create", "-d", driver, vol]);
    let mount = format!("{vol}:/data");
    let out = run_rm(
        &mount,
        &["sh", "-c", "echo over-tls > /data/f && cat /data/f"],
    );
    assert_eq!(out, "over-tls");
    assert_eq!(
        std::fs::read_to_string(d.root.join("volumes").join(vol).join("data/f")).unwrap(),
        "over-tls\n"
    );
    docker_ok(&["volume", "rm", vol]);
    assert!(
        !d.log_text().contains("TLS handshake refused"),
        "{}",
        d.log_text()
    );
    let _ = docker(&["volume", "ls"]);
    assert!(d.stop().success());
}
