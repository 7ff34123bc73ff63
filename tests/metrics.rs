//! `--metrics`: the Prometheus endpoint, scraped as Prometheus does, with values that move
//! with the calls made.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use util::{require_root, Daemon, Scratch};

fn scrape(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// The value of the sample whose line starts with `series` (name and labels as written).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_show_calls_commits_heartbeats_and_state_and_move_with_calls() {
    if !require_root("metrics_show_calls_commits_heartbeats_and_state_and_move_with_calls") {
        return;
    }
    let s = Scratch::new();
    let root = s.path().join("root");
    let port = util::free_port();
    let a = Daemon::start_with(
        s.path(),
        &root,
        "a",
        s.path().join("spec-a"),
        "caravan",
        &["--metrics", &port.to_string()],
    );
    let _b = Daemon::start(s.path(), &root, "b");
    let creates = r#"caravan_calls_total{api="plugin",method="Create",outcome="ok"}"#;
    let (status, before) = scrape(port, "/metrics");
    assert_eq!(status, 200, "{before}");
    assert_eq!(sample(&before, creates), None, "{before}");
    assert_eq!(sample(&before, "caravan_volumes"), Some(0.0), "{before}");

    a.ok("VolumeDriver.Create", r#"{"Name":"web"}"#);
    a.ok("VolumeDriver.Mount", r#"{"Name":"web","ID":"c1"}"#);
    a.err("VolumeDriver.Get", r#"{"Name":"nosuch"}"#);
    // Two heartbeats of b seen by a give one gap.
    util::eventually(Duration::from_secs(10), "a heartbeat gap of b", || {
        sample(
            &scrape(port, "/metrics").1,
            r#"caravan_heartbeat_gap_seconds_count{node="b"}"#,
        )
        .is_some_and(|n| n >= 1.0)
    });
    let (_, after) = scrape(port, "/metrics");
    assert_eq!(sample(&after, creates), Some(1.0), "{after}");
    assert_eq!(
        sample(
            &after,
            r#"caravan_calls_total{api="plugin",method="Get",outcome="not_found"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &after,
            r#"caravan_call_duration_seconds_count{api="plugin",method="Mount"}"#
        ),
        Some(1.0)
    );
    assert!(
        sample(&after, "caravan_commit_batch_size_count").unwrap() >= 2.0,
        "{after}"
    );
    assert!(sample(&after, "caravan_commit_duration_seconds_sum").unwrap() > 0.0);
    assert!(sample(&after, "caravan_lock_wait_seconds_count").unwrap() >= 1.0);
    assert_eq!(sample(&after, "caravan_volumes"), Some(1.0));
    assert_eq!(sample(&after, r#"caravan_mounts{scope="here"}"#), Some(1.0));
    assert_eq!(sample(&after, "caravan_volumes_mounted_here"), Some(1.0));
    assert_eq!(sample(&after, "caravan_export_responding"), Some(1.0));
    assert_eq!(
        sample(&after, r#"caravan_node_state{node="b",state="alive"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&after, r#"caravan_node_state{node="b",state="dead"}"#),
        Some(0.0)
    );
    assert!(sample(&after, r#"caravan_node_silent_seconds{node="b"}"#).unwrap() < 5.0);
    // Every series the Grafana dashboard queries exists.
    let exposed: std::collections::BTreeSet<&str> = after
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/etc/grafana/caravan.json"
    ))
    .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("caravan_"))
            {
                assert!(
                    exposed.contains(name),
                    "the dashboard's {name} ({}) is not exported",
                    panel["title"]
                );
            }
        }
    }
    // Only GET /metrics is served there; the plugin API is not.
    assert_eq!(scrape(port, "/VolumeDriver.List").0, 404);
    a.ok("VolumeDriver.Unmount", r#"{"Name":"web","ID":"c1"}"#);
}

#[test]
fn a_metrics_port_in_use_fails_the_start_before_anything_else() {
    if !require_root("a_metrics_port_in_use_fails_the_start_before_anything_else") {
        return;
    }
    let s = Scratch::new();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let out = std::process::Command::new(util::caravan_bin())
        .args([
            "daemon",
            "--config",
            "/dev/null",
            "--node",
            "x",
            "--metrics",
            &port,
            "--root",
        ])
        .arg(s.path())
        .arg("--state-dir")
        .arg(s.path().join("state"))
        .arg("--socket")
        .arg(s.path().join("sock"))
        .arg("--spec-dir")
        .arg(s.path().join("spec"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("binding the metrics address") && err.contains("--metrics"),
        "{err}"
    );
    assert!(!s.path().join("spec").exists(), "a spec file was written");
}
