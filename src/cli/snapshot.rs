//! `caravan snapshot create | list | inspect | delete`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use clap::Subcommand;
use serde_json::json;

use super::{decode, path_segment, print_json, table};
use crate::core::names::parse_snapshot_ref;
use crate::core::volume::human_bytes;
use crate::host::client::{Client, ClientError};
use crate::ops::service::{CopyProgress, SnapshotView};

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Snapshot a volume (a copy of its data on the shared export); waits until it is
    /// complete, showing progress, and prints its name
    Create {
        volume: String,
        /// The snapshot's name [default: snap-<UTC time>-<suffix>]
        name: Option<String>,
        /// Print the snapshot as JSON, and progress as JSON lines on stderr
        #[arg(long)]
        json: bool,
    },
    /// List the complete snapshots of a volume, or of every volume
    List {
        volume: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one snapshot: VOLUME@SNAPSHOT
    Inspect {
        snapshot: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete one snapshot: VOLUME@SNAPSHOT; waits until its files are gone
    Delete { snapshot: String },
}

/// How often a running snapshot is asked how far it got.
const POLL: Duration = Duration::from_millis(200);

/// The wait before the `n`th look (from 0): short at first, so that quick work is
/// answered quickly, then [`POLL`].
pub(super) fn poll_wait(n: u32) -> Duration {
    Duration::from_millis(10u64.saturating_mul(1 << n.min(5))).min(POLL)
}

/// Ctrl-C, caught from before a command starts its job until it ends. tokio's `ctrl_c()`
/// installs its handler only when first polled, so a Ctrl-C that came before that (while
/// the first progress line was shown) killed the CLI outright and left the job running to
/// the end; caught here, it always stops the job.
pub(super) struct Interrupt(tokio::signal::unix::Signal);

impl Interrupt {
    pub(super) fn catch() -> Result<Interrupt, ClientError> {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .map(Interrupt)
            .map_err(|e| ClientError::Api(format!("cannot catch Ctrl-C: {e}")))
    }

    /// Returns once Ctrl-C was pressed (at once, if it was before this call).
    pub(super) async fn pressed(&mut self) {
        self.0.recv().await;
    }
}

fn snapshot_path(volume: &str, name: &str) -> String {
    format!(
        "/v1/volumes/{}/snapshots/{}",
        path_segment(volume),
        path_segment(name)
    )
}

fn bad(e: crate::Error) -> ClientError {
    ClientError::Api(e.to_string())
}

pub async fn execute(
    client: &Client,
    command: SnapshotCommand,
    out: &mut impl Write,
) -> Result<(), ClientError> {
    match command {
        SnapshotCommand::Create { volume, name, json } => {
            let path = format!("/v1/volumes/{}/snapshots", path_segment(&volume));
            let mut interrupt = Interrupt::catch()?;
            let v = client
                .request("POST", &path, Some(&json!({ "name": name })))
                .await?;
            let begun: SnapshotView = decode(v)?;
            let view = wait_complete(client, &begun, &mut interrupt, json).await?;
            if json {
                print_json(out, &serde_json::to_value(&view).unwrap_or_default());
            } else {
                let _ = writeln!(out, "{}", view.name);
            }
        }
        SnapshotCommand::List { volume, json } => {
            let path = match &volume {
                Some(v) => format!("/v1/volumes/{}/snapshots", path_segment(v)),
                None => "/v1/snapshots".to_string(),
            };
            let v = client.request("GET", &path, None).await?;
            if json {
                print_json(out, &v);
            } else {
                let list: Vec<SnapshotView> = decode(v)?;
                let _ = write!(out, "{}", list_table(&list));
            }
        }
        SnapshotCommand::Inspect { snapshot, json } => {
            let (volume, name) = parse_snapshot_ref(&snapshot).map_err(bad)?;
            let v = client
                .request("GET", &snapshot_path(&volume, &name), None)
                .await?;
            if json {
                print_json(out, &v);
            } else {
                let view: SnapshotView = decode(v)?;
                let _ = write!(out, "{}", inspect_text(&view));
            }
        }
        SnapshotCommand::Delete { snapshot } => {
            let (volume, name) = parse_snapshot_ref(&snapshot).map_err(bad)?;
            let path = snapshot_path(&volume, &name);
            client.request("DELETE", &path, None).await?;
            // Gone once the daemon no longer knows it; a delete that cannot finish (the
            // files cannot be removed) is reported, not waited for forever.
            let t = Instant::now();
            let mut looks = 0;
            while let (200, v) = client.call("GET", &path, None).await? {
                if t.elapsed() > Duration::from_secs(600) {
                    return Err(ClientError::Api(format!(
                        "{volume}@{name} is still {} after 10 minutes; `caravan snapshot inspect {volume}@{name}` and the daemon's log say why",
                        v["state"].as_str().unwrap_or("there")
                    )));
                }
                tokio::time::sleep(poll_wait(looks)).await;
                looks += 1;
            }
            let _ = writeln!(out, "deleted {volume}@{name}");
        }
    }
    Ok(())
}

/// Polls a snapshot being made until it is complete, showing progress on stderr; Ctrl-C
/// stops it (the daemon deletes what was copied).
async fn wait_complete(
    client: &Client,
    begun: &SnapshotView,
    interrupt: &mut Interrupt,
    json: bool,
) -> Result<SnapshotView, ClientError> {
    let path = snapshot_path(&begun.volume, &begun.name);
    let mut shown = Shown::new(json);
    let mut looks = 0;
    loop {
        let (status, v) = client.call("GET", &path, None).await?;
        if status != 200 {
            shown.end();
            let msg = v
                .get("error")
                .and_then(|m| m.as_str())
                .unwrap_or("the snapshot is gone")
                .to_string();
            return Err(ClientError::Api(msg));
        }
        let view: SnapshotView = decode(v)?;
        if view.state == "complete" {
            shown.end();
            return Ok(view);
        }
        if let Some(p) = &view.progress {
            shown.show(&format!("snapshot {}@{}", view.volume, view.name), p);
        }
        tokio::select! {
            _ = tokio::time::sleep(poll_wait(looks)) => looks += 1,
            _ = interrupt.pressed() => {
                let _ = client.request("DELETE", &path, None).await;
                return Err(ClientError::Api(format!(
                    "stopped; snapshot {}@{} is being deleted",
                    view.volume, view.name
                )));
            }
        }
    }
}

/// Progress of long work on stderr: a bar (indicatif) on a terminal, with an ETA when the
/// daemon knows how much there is to copy; JSON lines with `--json`; nothing otherwise.
pub(super) struct Shown {
    json: bool,
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    /// Whether the bar has its length (the style with an ETA) yet.
    sized: bool,
}

/// Seconds left at the rate so far, when the total is known and something moved.
fn eta(done: u64, total: Option<u64>, secs: f64) -> Option<f64> {
    let total = total?;
    if done == 0 || secs <= 0.0 {
        return None;
    }
    let rate = done as f64 / secs;
    Some(total.saturating_sub(done) as f64 / rate)
}

impl Shown {
    pub(super) fn new(json: bool) -> Shown {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(style("{spinner} {msg}, {pos} files ({elapsed})"));
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Shown {
            json,
            bar,
            started: Instant::now(),
            sized: false,
        }
    }

    /// The bar counts files: both the volume's usage and a snapshot's own copy count them
    /// the way the copy does, whereas a volume's usage counts bytes on disk, not data.
    pub(super) fn show(&mut self, what: &str, p: &CopyProgress) {
        let secs = self.started.elapsed().as_secs_f64();
        if self.json {
            let line = json!({
                "what": what, "files": p.files, "bytes": p.bytes,
                "total_files": p.total_files, "total_bytes": p.total_bytes,
                "seconds": secs, "eta_seconds": eta(p.files, p.total_files, secs),
            });
            let _ = writeln!(std::io::stderr(), "{line}");
            return;
        }
        let Some(bar) = &self.bar else { return };
        if let (Some(total), false) = (p.total_files, self.sized) {
            bar.set_length(total);
            bar.set_style(style("{msg} [{bar:30}] {pos}/{len} files (ETA {eta})"));
            self.sized = true;
        }
        let rate = if secs > 0.0 {
            (p.bytes as f64 / secs) as u64
        } else {
            0
        };
        bar.set_message(format!(
            "{what}: {} at {}/s",
            human_bytes(p.bytes),
            human_bytes(rate)
        ));
        bar.set_position(p.total_files.map_or(p.files, |t| p.files.min(t)));
    }

    pub(super) fn end(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

fn style(template: &str) -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
        .progress_chars("=> ")
}

/// Starts a copy into a new volume (`POST /v1/copies`) and follows it until it is done,
/// showing progress; Ctrl-C stops it (the daemon deletes the copy).
pub async fn follow_copy(
    client: &Client,
    body: &serde_json::Value,
    json: bool,
) -> Result<(), ClientError> {
    let mut interrupt = Interrupt::catch()?;
    let v = client.request("POST", "/v1/copies", Some(body)).await?;
    let begun: crate::ops::service::CopyView = decode(v)?;
    if begun.state == "done" {
        say_dropped(&begun, json);
        return Ok(());
    }
    let path = format!("/v1/copies/{}", path_segment(&begun.volume));
    let mut shown = Shown::new(json);
    let mut looks = 0;
    loop {
        let view: crate::ops::service::CopyView =
            decode(client.request("GET", &path, None).await?)?;
        match view.state.as_str() {
            "done" => {
                shown.end();
                say_dropped(&view, json);
                return Ok(());
            }
            "failed" => {
                shown.end();
                return Err(ClientError::Api(
                    view.error.unwrap_or_else(|| "the copy failed".into()),
                ));
            }
            _ => shown.show(
                &format!("copying {} into {}", view.source, view.volume),
                &view.progress,
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(poll_wait(looks)) => looks += 1,
            _ = interrupt.pressed() => {
                let _ = client.request("DELETE", &path, None).await;
                shown.end();
                return Err(ClientError::Api(format!(
                    "stopped; the copy into {} is being deleted",
                    view.volume
                )));
            }
        }
    }
}

/// Says on stderr what a copy did not carry over (set-id bits, privileged attributes),
/// and how to keep them.
fn say_dropped(view: &crate::ops::service::CopyView, json: bool) {
    let Some(c) = view
        .copy
        .as_ref()
        .filter(|c| c.dropped_setid + c.dropped_xattrs > 0)
    else {
        return;
    };
    if !json {
        eprintln!(
            "note: {} set-id bit(s) and {} security./trusted. attribute(s) from {} were not carried over; create with --keep-privileges to keep them, if you trust the source",
            c.dropped_setid, c.dropped_xattrs, view.source
        );
    }
}

pub fn list_table(list: &[SnapshotView]) -> String {
    let rows: Vec<[String; 6]> = list
        .iter()
        .map(|s| {
            let copy = s.copy.as_ref();
            [
                s.volume.clone(),
                s.name.clone(),
                s.created_at.clone(),
                s.created_by.clone(),
                copy.map(|c| human_bytes(c.bytes)).unwrap_or_default(),
                copy.map(|c| c.method().to_string()).unwrap_or_default(),
            ]
        })
        .collect();
    table(
        ["VOLUME", "SNAPSHOT", "CREATED", "BY", "DATA", "COPIED BY"],
        &rows,
    )
}

pub fn inspect_text(s: &SnapshotView) -> String {
    let mut t = format!(
        "Snapshot:    {}@{}\nState:       {}\nCreated:     {} by {}\nConsistency: {}\n",
        s.volume, s.name, s.state, s.created_at, s.created_by, s.consistency
    );
    if let Some(c) = &s.copy {
        t.push_str(&format!(
            "Copy:        {} in {} ms: {} files, {} dirs, {} symlinks, {} hard links, {} of data\n",
            c.method(),
            c.millis,
            c.files,
            c.dirs,
            c.symlinks,
            c.hard_links,
            human_bytes(c.bytes)
        ));
        if c.skipped
            .saturating_add(c.vanished)
            .saturating_add(c.xattr_errors)
            > 0
        {
            t.push_str(&format!(
                "Not copied:  {} device nodes or sockets, {} entries gone while copying, {} extended attributes\n",
                c.skipped, c.vanished, c.xattr_errors
            ));
        }
    }
    if let Some(p) = &s.progress {
        t.push_str(&format!(
            "Progress:    {} files, {} so far\n",
            p.files,
            human_bytes(p.bytes)
        ));
    }
    if let Some(f) = &s.failed {
        t.push_str(&format!("Failed:      {f}\n"));
    }
    t.push_str(&format!("Path:        {}\n", s.path));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eta_is_what_is_left_at_the_rate_so_far() {
        assert_eq!(eta(25, Some(100), 5.0), Some(15.0));
        assert_eq!(eta(100, Some(100), 5.0), Some(0.0));
        assert_eq!(
            eta(150, Some(100), 5.0),
            Some(0.0),
            "past the estimate: no negative ETA"
        );
        assert_eq!(eta(0, Some(100), 5.0), None);
        assert_eq!(eta(25, None, 5.0), None);
        assert_eq!(eta(25, Some(100), 0.0), None);
    }

    #[test]
    fn looks_come_quickly_at_first_then_every_poll() {
        let waits: Vec<u64> = (0..8).map(|n| poll_wait(n).as_millis() as u64).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 200, 200, 200]);
        assert_eq!(poll_wait(u32::MAX), POLL);
    }
}
