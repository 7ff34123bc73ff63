//! `caravan backup create | list | inspect | verify | delete`.

use std::io::Write;

use clap::Subcommand;
use serde_json::{json, Value};

use super::snapshot::{poll_wait, Interrupt, Shown};
use super::{decode, path_segment, print_json, table};
use crate::core::volume::human_bytes;
use crate::host::client::{Client, ClientError};
use crate::ops::backup::{format::Summary, DeleteReport, VerifyReport};
use crate::ops::service::{BackupJobView, BackupView};

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Back up a volume, or one of its snapshots (VOLUME@SNAPSHOT, a consistent point in
    /// time), to DEST; waits until it is complete, showing progress, and prints its URL
    Create {
        source: String,
        /// vfs:///path (any mounted folder) or s3://bucket/prefix (s3://bucket@region/prefix);
        /// S3 settings come from the daemon's AWS_* variables and ~/.aws files
        #[arg(long)]
        dest: String,
        /// Print the backup as JSON, and progress as JSON lines on stderr
        #[arg(long)]
        json: bool,
    },
    /// List the complete backups at a destination
    List {
        dest: String,
        /// Only the backups of this volume
        #[arg(long)]
        volume: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one backup: BACKUP_URL
    Inspect {
        url: String,
        #[arg(long)]
        json: bool,
    },
    /// Read back every chunk of a backup and check it; names the damaged files and fails
    /// if there are any
    Verify {
        url: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a backup, and free the stored data no other backup uses
    Delete {
        url: String,
        #[arg(long)]
        json: bool,
    },
}

pub async fn execute(
    client: &Client,
    command: BackupCommand,
    out: &mut impl Write,
) -> Result<(), ClientError> {
    match command {
        BackupCommand::Create { source, dest, json } => {
            let mut interrupt = Interrupt::catch()?;
            let v = client
                .request(
                    "POST",
                    "/v1/backups",
                    Some(&json!({ "source": source, "dest": dest })),
                )
                .await?;
            let result = follow(client, decode(v)?, &mut interrupt, json).await?;
            let view: BackupView = decode(result.clone())?;
            if json {
                print_json(out, &result);
            } else {
                let _ = writeln!(out, "{}", view.url);
            }
        }
        BackupCommand::List { dest, volume, json } => {
            let v = client
                .request(
                    "POST",
                    "/v1/backups/list",
                    Some(&json!({ "dest": dest, "volume": volume })),
                )
                .await?;
            if json {
                print_json(out, &v);
            } else {
                let list: Vec<BackupView> = decode(v)?;
                let _ = write!(out, "{}", list_table(&list));
            }
        }
        BackupCommand::Inspect { url, json } => {
            let v = client
                .request("POST", "/v1/backups/inspect", Some(&json!({ "url": url })))
                .await?;
            if json {
                print_json(out, &v);
            } else {
                let view: BackupView = decode(v)?;
                let _ = write!(out, "{}", inspect_text(&view));
            }
        }
        BackupCommand::Verify { url, json } => {
            let mut interrupt = Interrupt::catch()?;
            let v = client
                .request("POST", "/v1/backups/verify", Some(&json!({ "url": url })))
                .await?;
            let result = follow(client, decode(v)?, &mut interrupt, json).await?;
            let report: VerifyReport = decode(result.clone())?;
            if json {
                print_json(out, &result);
            } else {
                let _ = writeln!(
                    out,
                    "checked {} chunks ({}) in {} packs in {} ms",
                    report.chunks,
                    human_bytes(report.bytes),
                    report.packs,
                    report.millis
                );
                for d in &report.damaged {
                    let _ = writeln!(out, "DAMAGED {}: {}", d.path, d.reason);
                }
            }
            if report.damaged_files > 0 {
                return Err(ClientError::Api(format!(
                    "backup {} is damaged: {} files cannot be restored as they were backed up{}",
                    report.backup,
                    report.damaged_files,
                    report
                        .damaged
                        .first()
                        .map(|d| format!(" (the first: {})", d.path))
                        .unwrap_or_default()
                )));
            }
        }
        BackupCommand::Delete { url, json } => {
            let mut interrupt = Interrupt::catch()?;
            let v = client
                .request("POST", "/v1/backups/delete", Some(&json!({ "url": url })))
                .await?;
            let result = follow(client, decode(v)?, &mut interrupt, json).await?;
            if json {
                print_json(out, &result);
            } else {
                let r: DeleteReport = decode(result)?;
                let _ = writeln!(
                    out,
                    "deleted {}; freed {} ({} packs deleted, {} rewritten)",
                    r.backup,
                    human_bytes(r.bytes_freed),
                    r.packs_deleted,
                    r.packs_rewritten
                );
            }
        }
    }
    Ok(())
}

/// Follows a job until it is done, showing progress; its result. Ctrl-C stops it (a
/// backup stopped is not listed, and what it sent is reused by the next one).
async fn follow(
    client: &Client,
    begun: BackupJobView,
    interrupt: &mut Interrupt,
    json: bool,
) -> Result<Value, ClientError> {
    let path = format!("/v1/backup-jobs/{}", path_segment(&begun.id));
    let mut shown = Shown::new(json);
    let mut looks = 0;
    loop {
        let view: BackupJobView = decode(client.request("GET", &path, None).await?)?;
        match view.state.as_str() {
            "done" => {
                shown.end();
                return Ok(view.result.unwrap_or_default());
            }
            "failed" => {
                shown.end();
                return Err(ClientError::Api(
                    view.error
                        .unwrap_or_else(|| format!("the {} failed", view.kind)),
                ));
            }
            _ => shown.show(&format!("{} {}", view.kind, view.target), &view.progress),
        }
        tokio::select! {
            _ = tokio::time::sleep(poll_wait(looks)) => looks += 1,
            _ = interrupt.pressed() => {
                let _ = client.request("DELETE", &path, None).await;
                shown.end();
                return Err(ClientError::Api(format!("stopped the {} ({})", view.kind, view.target)));
            }
        }
    }
}

fn list_table(list: &[BackupView]) -> String {
    let rows: Vec<[String; 5]> = list
        .iter()
        .map(|b| {
            let s = &b.summary;
            [
                match &s.snapshot {
                    Some(snap) => format!("{}@{snap}", s.volume),
                    None => s.volume.clone(),
                },
                s.started_at.clone(),
                human_bytes(s.tree.bytes),
                human_bytes(s.sent.new_bytes),
                b.url.clone(),
            ]
        })
        .collect();
    table(["SOURCE", "STARTED", "DATA", "SENT", "URL"], &rows)
}

fn inspect_text(b: &BackupView) -> String {
    let s: &Summary = &b.summary;
    let mut t = format!("Backup:      {}\nURL:         {}\n", s.id, b.url);
    t.push_str(&format!(
        "Source:      {}{} on {}\n",
        s.volume,
        s.snapshot
            .as_ref()
            .map(|x| format!("@{x}"))
            .unwrap_or_default(),
        s.node
    ));
    t.push_str(&format!(
        "Made:        {} to {} ({} ms)\nConsistency: {}\n",
        s.started_at, s.finished_at, s.millis, s.consistency
    ));
    let tr = &s.tree;
    t.push_str(&format!(
        "Tree:        {} files, {} dirs, {} symlinks, {} hard links, {} FIFOs, {} of data\n",
        tr.files,
        tr.dirs,
        tr.symlinks,
        tr.hard_links,
        tr.fifos,
        human_bytes(tr.bytes)
    ));
    if tr
        .skipped
        .saturating_add(tr.vanished)
        .saturating_add(tr.xattr_errors)
        > 0
    {
        t.push_str(&format!(
            "Not backed up: {} device nodes or sockets, {} entries gone while read, {} extended attributes\n",
            tr.skipped, tr.vanished, tr.xattr_errors
        ));
    }
    let se = &s.sent;
    t.push_str(&format!(
        "Sent:        {} new chunks of {} ({} stored), {} already there, in {} packs\n",
        se.new_chunks,
        se.chunks,
        human_bytes(se.new_bytes),
        human_bytes(se.reused_bytes),
        se.packs
    ));
    t
}
