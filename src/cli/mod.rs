//! The `caravan` command line: the daemon and the Convoy-like client commands.
//!
//! Client commands talk to the daemon's control API. Output is for people by default and
//! JSON with `--json`. Exit code 0 on success; otherwise 1 with one line on stderr.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use crate::daemon::config::{DaemonArgs, DEFAULT_SOCKET};
use crate::export::health::HealthReport;
use crate::host::client::{Client, ClientError};
use crate::ops::service::{DoctorReport, Info, NodeInfo, VolumeView};

mod backup;
mod snapshot;

/// The mount ID `caravan mount` uses when none is given.
pub const CLI_MOUNT_ID: &str = "caravan-cli";

#[derive(Debug, Parser)]
#[command(
    name = "caravan",
    version,
    about = "Docker volumes that follow containers across hosts"
)]
pub struct Cli {
    /// The daemon's socket
    #[arg(long, env = "CARAVAN_SOCKET", default_value = DEFAULT_SOCKET, global = true)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (one per host)
    Daemon(Box<DaemonArgs>),
    /// Run the daemon as Docker's managed plugin (the plugin's entrypoint; see
    /// docs/managed-plugin.md)
    #[command(hide = true)]
    Plugin(crate::daemon::config::PluginArgs),
    /// The fence keeper the daemon starts (see docs/semantics.md, "One writer")
    #[command(hide = true)]
    FenceKeeper {
        #[arg(long)]
        state_dir: std::path::PathBuf,
    },
    /// Create a volume
    Create {
        name: String,
        /// Size, for example 512M or 10G (recorded and reported)
        #[arg(long)]
        size: Option<String>,
        /// Owner of the volume root
        #[arg(long)]
        uid: Option<String>,
        /// Group of the volume root
        #[arg(long)]
        gid: Option<String>,
        /// Permission bits of the volume root, in octal (for example 0770)
        #[arg(long)]
        mode: Option<String>,
        /// What removing the volume does to its data: delete, retain or archive
        #[arg(long)]
        on_delete: Option<String>,
        /// shared (any number of nodes) or exclusive (one node at a time, with failover)
        #[arg(long)]
        access: Option<String>,
        /// Make it a copy of a snapshot, VOLUME@SNAPSHOT (a restore); waits for the copy
        #[arg(long, conflicts_with_all = ["from_volume", "from_backup"])]
        from_snapshot: Option<String>,
        /// Make it a copy of another volume (a clone); waits for the copy
        #[arg(long, conflicts_with = "from_backup")]
        from_volume: Option<String>,
        /// Restore it from a backup, BACKUP_URL (as `caravan backup create` prints it);
        /// waits for the restore
        #[arg(long)]
        from_backup: Option<String>,
        /// With a copy: carry over set-user-ID and set-group-ID bits, `security.` and
        /// `trusted.` extended attributes and the source's top-folder owner and mode, which
        /// are dropped by default (only when you trust the source)
        #[arg(long)]
        keep_privileges: bool,
        #[arg(long)]
        json: bool,
    },
    /// Delete a volume (refused while any node has it mounted)
    #[command(alias = "rm")]
    Delete { name: String },
    /// List volumes
    #[command(alias = "ls")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one volume in detail
    Inspect {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Mount a volume on this host and print its mountpoint (for use outside Docker)
    Mount {
        name: String,
        /// Mount ID; each ID counts separately
        #[arg(long, default_value = CLI_MOUNT_ID)]
        id: String,
    },
    /// Undo one `caravan mount`
    #[command(alias = "unmount")]
    Umount {
        name: String,
        #[arg(long, default_value = CLI_MOUNT_ID)]
        id: String,
    },
    /// List the nodes sharing the root: state (alive, dead, left), last seen, mounts
    Nodes {
        #[arg(long)]
        json: bool,
    },
    /// Make this node the holder of an exclusive volume: waits for the holder to be
    /// declared dead, or takes it at once with --force
    Takeover {
        name: String,
        #[arg(long)]
        force: bool,
    },
    /// Snapshots of volumes, kept on the shared export (every host sees them)
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// Backups of volumes to a folder (vfs:///path) or S3 (s3://bucket/prefix):
    /// deduplicated, compressed, checked; restore with `caravan create NEW --from-backup`
    #[command(subcommand)]
    Backup(backup::BackupCommand),
    /// Show the daemon's version, node, root and counts
    Info {
        #[arg(long)]
        json: bool,
    },
    /// Compare the metadata with the export and this host; --repair fixes what is safe.
    /// Exit code 1 when something is left to fix
    Doctor {
        #[arg(long)]
        repair: bool,
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script: caravan completions bash > /etc/bash_completion.d/caravan
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): caravan manpage > /usr/share/man/man1/caravan.1
    #[command(hide = true)]
    Manpage,
}

/// Writes the completion script or the man page, which need no daemon.
pub fn print_generated(command: &Command) -> Option<i32> {
    use clap::CommandFactory;
    // Rendered whole first: clap_complete panics on a write error (`| head`).
    let mut text = Vec::new();
    let rendered = match command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "caravan", &mut text);
            Ok(())
        }
        Command::Manpage => clap_mangen::Man::new(Cli::command()).render(&mut text),
        _ => return None,
    };
    let written = rendered.and_then(|()| std::io::stdout().lock().write_all(&text));
    match written {
        Ok(()) => Some(0),
        // A reader that stopped early (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Some(0),
        Err(e) => {
            eprintln!("caravan: writing to stdout: {e}");
            Some(1)
        }
    }
}

/// Runs a client command; returns the process exit code.
pub async fn run(socket: PathBuf, command: Command) -> i32 {
    // The daemon bounds its own calls (20 s by default); the margin covers its answer.
    let client = Client::new(socket, Duration::from_secs(60));
    match execute(&client, command).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("caravan: {e}");
            1
        }
    }
}

async fn execute(client: &Client, command: Command) -> Result<(), ClientError> {
    let mut out = std::io::stdout().lock();
    match command {
        Command::Doctor { repair, json } => {
            let v = if repair {
                client.request("POST", "/v1/doctor/repair", None).await?
            } else {
                client.request("GET", "/v1/doctor", None).await?
            };
            let report: DoctorReport = decode(v.clone())?;
            if json {
                print_json(&mut out, &v);
            } else {
                let _ = write!(out, "{}", doctor_text(&report, repair));
            }
            let left = report
                .findings
                .iter()
                .filter(|f| !matches!(f.repaired, Some(Ok(()))))
                .count();
            if left > 0 {
                return Err(ClientError::Api(format!(
                    "{left} finding(s) left{}",
                    if repair {
                        ""
                    } else {
                        "; caravan doctor --repair fixes those marked \"repair:\""
                    }
                )));
            }
        }
        Command::Daemon(_)
        | Command::Plugin(_)
        | Command::FenceKeeper { .. }
        | Command::Completions { .. }
        | Command::Manpage => {
            unreachable!("started or printed by main")
        }
        Command::Create {
            name,
            size,
            uid,
            gid,
            mode,
            on_delete,
            access,
            from_snapshot,
            from_volume,
            from_backup,
            keep_privileges,
            json,
        } => {
            let copy = from_snapshot.is_some() || from_volume.is_some() || from_backup.is_some();
            let keep_privileges = keep_privileges.then(|| "true".to_string());
            let mut options = BTreeMap::new();
            for (k, v) in [
                ("size", size),
                ("uid", uid),
                ("gid", gid),
                ("mode", mode),
                ("on_delete", on_delete),
                ("access", access),
                ("from_snapshot", from_snapshot),
                ("from_volume", from_volume),
                ("from_backup", from_backup),
                ("keep_privileges", keep_privileges),
            ] {
                if let Some(v) = v {
                    options.insert(k, v);
                }
            }
            if copy {
                let body = json!({ "name": name, "options": options });
                snapshot::follow_copy(client, &body, json).await?;
            }
            let v = client
                .request(
                    "POST",
                    "/v1/volumes",
                    Some(&json!({ "name": name, "options": options })),
                )
                .await?;
            if json {
                print_json(&mut out, &v);
            } else {
                let _ = writeln!(out, "{name}");
            }
        }
        Command::Delete { name } => {
            client
                .request(
                    "DELETE",
                    &format!("/v1/volumes/{}", path_segment(&name)),
                    None,
                )
                .await?;
        }
        Command::List { json } => {
            let v = client.request("GET", "/v1/volumes", None).await?;
            if json {
                print_json(&mut out, &v);
            } else {
                let volumes: Vec<VolumeView> = decode(v)?;
                let _ = write!(out, "{}", list_table(&volumes));
            }
        }
        Command::Inspect { name, json } => {
            let v = client
                .request("GET", &format!("/v1/volumes/{}", path_segment(&name)), None)
                .await?;
            if json {
                print_json(&mut out, &v);
            } else {
                let view: VolumeView = decode(v)?;
                let _ = write!(out, "{}", inspect_text(&view));
            }
        }
        Command::Mount { name, id } => {
            let v = client
                .request(
                    "POST",
                    &format!("/v1/volumes/{}/mount", path_segment(&name)),
                    Some(&json!({ "id": id })),
                )
                .await?;
            let _ = writeln!(
                out,
                "{}",
                v.get("mountpoint")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            );
        }
        Command::Umount { name, id } => {
            client
                .request(
                    "POST",
                    &format!("/v1/volumes/{}/unmount", path_segment(&name)),
                    Some(&json!({ "id": id })),
                )
                .await?;
        }
        Command::Takeover { name, force } => {
            let path = format!("/v1/volumes/{}/takeover", path_segment(&name));
            let v = client
                .request("POST", &path, Some(&json!({ "force": force })))
                .await?;
            let view: VolumeView = decode(v)?;
            let holder = view
                .holder
                .map(|h| format!("{} (generation {})", h.node, h.generation));
            let _ = writeln!(
                out,
                "{name}: held by {}",
                holder.unwrap_or_else(|| "nobody".into())
            );
        }
        Command::Snapshot(cmd) => snapshot::execute(client, cmd, &mut out).await?,
        Command::Backup(cmd) => backup::execute(client, cmd, &mut out).await?,
        Command::Nodes { json } => {
            let v = client.request("GET", "/v1/nodes", None).await?;
            if json {
                print_json(&mut out, &v);
            } else {
                let nodes: Vec<NodeInfo> = decode(v)?;
                let _ = write!(out, "{}", nodes_table(&nodes));
            }
        }
        Command::Info { json } => {
            let v = client.request("GET", "/v1/info", None).await?;
            if json {
                print_json(&mut out, &v);
            } else {
                let info: Info = decode(v)?;
                let _ = write!(out, "{}", info_text(&info));
            }
        }
    }
    Ok(())
}

/// A name as one URL path segment. Names the daemon accepts need no escaping; anything
/// else is percent-encoded so that the daemon sees it whole and refuses it by name.
pub(crate) fn path_segment(name: &str) -> String {
    /// Every byte but the ones a valid name is made of.
    const NOT_NAME: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'_')
        .remove(b'.')
        .remove(b'-');
    percent_encoding::utf8_percent_encode(name, NOT_NAME).to_string()
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ClientError> {
    serde_json::from_value(v).map_err(|e| {
        ClientError::Api(format!(
            "unexpected answer from the daemon ({e}); is it the same version as this CLI?"
        ))
    })
}

pub(crate) fn print_json(out: &mut impl Write, v: &Value) {
    let _ = writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(v).expect("JSON values serialize")
    );
}

/// `caravan list`: one line per volume.
pub fn list_table(volumes: &[VolumeView]) -> String {
    let rows: Vec<[String; 5]> = volumes
        .iter()
        .map(|v| {
            let mounted = if v.mounts.is_empty() {
                "-".to_string()
            } else {
                v.mounts
                    .iter()
                    .map(|(node, m)| format!("{node}({})", m.count))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            [
                v.name.clone(),
                v.size.clone().unwrap_or_else(|| "-".into()),
                v.created_by.clone(),
                v.created_at.clone(),
                mounted,
            ]
        })
        .collect();
    table(
        ["NAME", "SIZE", "CREATED BY", "CREATED", "MOUNTED ON"],
        &rows,
    )
}

pub(crate) fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut width: [usize; N] = header.map(str::len);
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut s = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == N {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}   ", w = width[i]));
            }
        }
        s.push_str(l.trim_end());
        s.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    s
}

/// `caravan nodes`: one line per node.
pub fn nodes_table(nodes: &[NodeInfo]) -> String {
    let rows: Vec<[String; 6]> = nodes
        .iter()
        .map(|n| {
            let mounts = if n.mounts.is_empty() {
                "-".to_string()
            } else {
                n.mounts
                    .iter()
                    .map(|(v, c)| format!("{v}({c})"))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let boot: String = n.view.boot_id.chars().take(8).collect();
            [
                n.view.node.clone(),
                n.view.state.as_str().to_string(),
                format!("{:.1}s ago", n.view.last_seen_secs),
                if boot.is_empty() { "-".into() } else { boot },
                if n.view.version.is_empty() {
                    "-".into()
                } else {
                    n.view.version.clone()
                },
                mounts,
            ]
        })
        .collect();
    table(
        ["NODE", "STATE", "LAST SEEN", "BOOT ID", "VERSION", "MOUNTS"],
        &rows,
    )
}

/// `caravan inspect`: key and value lines.
pub fn inspect_text(v: &VolumeView) -> String {
    let mut s = String::new();
    let mut kv = |k: &str, val: String| s.push_str(&format!("{k:<12} {val}\n"));
    kv("Name:", v.name.clone());
    kv("Created:", format!("{} by {}", v.created_at, v.created_by));
    kv("Size:", v.size.clone().unwrap_or_else(|| "not set".into()));
    if let Some(u) = &v.usage {
        let partial = if u.complete {
            ""
        } else {
            " (counting stopped early: at least)"
        };
        kv(
            "Usage:",
            format!("{} in {} files{partial}", u.human, u.files),
        );
    }
    kv(
        "Options:",
        v.options
            .iter()
            .map(|(k, val)| format!("{k}={val}"))
            .collect::<Vec<_>>()
            .join(" "),
    );
    kv("Data:", v.data.clone());
    if v.access == "exclusive" {
        let holder = v
            .holder
            .as_ref()
            .map(|h| format!("held by {} (generation {})", h.node, h.generation));
        kv(
            "Access:",
            format!("exclusive, {}", holder.unwrap_or_else(|| "free".into())),
        );
        for t in &v.takeovers {
            let how = if t.forced {
                "forced takeover"
            } else {
                "takeover"
            };
            kv(
                "",
                format!(
                    "{how} {} -> {} (generation {}, at {})",
                    t.from, t.to, t.generation, t.at
                ),
            );
        }
    }
    kv(
        "Mountpoint:",
        if v.mounted_here {
            v.mountpoint.clone()
        } else {
            "none (not mounted on this node)".to_string()
        },
    );
    if v.mounts.is_empty() {
        kv("Mounts:", "none".into());
    } else {
        for (i, (node, m)) in v.mounts.iter().enumerate() {
            let label = if i == 0 { "Mounts:" } else { "" };
            let stale = if m.stale {
                format!(" (stale: node {})", m.node_state.as_str())
            } else {
                String::new()
            };
            kv(
                label,
                format!("{node}: {} mount(s), {} ID(s){stale}", m.count, m.ids),
            );
        }
    }
    if v.stale {
        kv(
            "Note:",
            "the export did not answer; this is the last known state".into(),
        );
    }
    s
}

fn info_text(i: &Info) -> String {
    let mut text = format!(
        "Version:      {}\nNode:         {}\nRoot:         {}\nState dir:    {}\nVolumes:      {}\nMounted here: {} volume(s), {} mount(s)\nMounts total: {}\nGeneration:   {}\nUptime:       {}\nCommits:      {} ({} mutations)\nLock wait:    last {:.1} ms, max {:.1} ms\n",
        i.version,
        i.node,
        i.root,
        i.state_dir,
        i.volumes,
        i.mounted_here,
        i.mounts_here,
        i.mounts_total,
        i.generation,
        humantime::format_duration(Duration::from_secs(i.uptime_secs)),
        i.store.commits,
        i.store.mutations,
        i.store.last_lock_wait_ms,
        i.store.max_lock_wait_ms,
    );
    text.push_str(&health_text(&i.health, i.stale.as_deref()));
    if let Some(why) = &i.standing.cut_off {
        text.push_str(&format!("Cut off:      {why}\n"));
    }
    if let Some(why) = &i.standing.revalidating {
        text.push_str(&format!(
            "Re-validating: {why}; mounts of exclusive volumes wait until it is done\n"
        ));
    }
    if let Some(e) = &i.standing.last_error {
        text.push_str(&format!("Heartbeat:    failing: {e}\n"));
    }
    text.push_str(&crate::host::fence::fencing_text(&i.fencing));
    if let Some(why) = &i.connection.refused {
        text.push_str(&format!("Export:       REFUSED: {why}\n"));
    }
    if i.connection.reconnects > 0 {
        text.push_str(&format!(
            "Reconnects:   {}, last {:.0} s ago: {}\n",
            i.connection.reconnects,
            i.connection.last_reconnect_secs_ago.unwrap_or_default(),
            i.connection.last_reconnect.as_deref().unwrap_or("?")
        ));
    }
    if !i.store.thread_running {
        text.push_str("Store:        STOPPED: nothing can be committed; restart the daemon\n");
    }
    if i.store.session_failures > 0 {
        text.push_str(&format!(
            "Store:        {} hold(s) of the lock ended in a panic, last: {}\n",
            i.store.session_failures,
            i.store.last_failure.as_deref().unwrap_or("?")
        ));
    }
    for (key, why) in &i.skipped_records {
        text.push_str(&format!(
            "Skipped:      stored record {key}, left untouched: {why}\n"
        ));
    }
    if let Some(why) = &i.stale {
        text.push_str(&format!(
            "Stale:        figures above are the last known ({why})\n"
        ));
    }
    text
}

fn doctor_text(r: &DoctorReport, repaired: bool) -> String {
    let mut text = format!(
        "Checked {} volume(s) on node {}: {} finding(s)\n",
        r.volumes_checked,
        r.node,
        r.findings.len()
    );
    for f in &r.findings {
        text.push_str(&format!("\n{}: {}\n", f.kind, f.detail));
        match (&f.repair, &f.repaired) {
            (Some(how), Some(Ok(()))) => text.push_str(&format!("  repaired: {how}\n")),
            (Some(how), Some(Err(e))) => text.push_str(&format!("  repair FAILED ({how}): {e}\n")),
            (Some(how), None) if !repaired => text.push_str(&format!("  repair: {how}\n")),
            (Some(_), None) => {}
            (None, _) => text.push_str("  left to the operator\n"),
        }
    }
    text
}

/// `unreadable`: why the metadata could not be read just now, if it could not (an export
/// that answers with errors, or a metadata folder deleted under the daemon, is not a
/// healthy one).
fn health_text(h: &HealthReport, unreadable: Option<&str>) -> String {
    let ago = |s: Option<f64>| s.map_or("never".to_string(), |s| format!("{s:.1} s ago"));
    let mut text = String::new();
    if let Some(r) = &h.root {
        text.push_str(&format!(
            "Filesystem:   {} from {}{}\n",
            r.fs_type,
            r.source,
            if r.shared {
                ""
            } else {
                " (local: volumes are not shared with other hosts)"
            }
        ));
    }
    text.push_str(&format!(
        "Export:       {}\nLast success: {}\n",
        if let (true, Some(why)) = (h.export_responding, unreadable) {
            format!("responding, but FAILING: {why}")
        } else if h.export_responding {
            "responding".to_string()
        } else {
            format!(
                "NOT RESPONDING (an operation has waited over {:.0} s)",
                h.stall_after_secs
            )
        },
        ago(h.last_success_secs_ago),
    ));
    if let Some(e) = &h.last_error {
        text.push_str(&format!(
            "Last error:   {e} ({})\n",
            ago(h.last_error_secs_ago)
        ));
    }
    for op in &h.stuck {
        text.push_str(&format!("Waiting:      {} for {:.1} s\n", op.what, op.secs));
    }
    text.push_str(&format!(
        "Blocking ops: {} of at most {}\n",
        h.blocking_in_flight, h.blocking_cap
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::service::NodeMounts;

    fn view(name: &str) -> VolumeView {
        VolumeView {
            name: name.into(),
            mountpoint: format!("/var/lib/caravan/mounts/{name}"),
            mounted_here: false,
            created_at: "2026-11-22T05:00:00Z".into(),
            created_by: "h1".into(),
            options: BTreeMap::from([("on_delete".to_string(), "delete".to_string())]),
            size: Some("1G".into()),
            usage: None,
            mounts: BTreeMap::new(),
            data: format!("/srv/volumes/{name}/data"),
            stale: false,
            access: "shared".into(),
            holder: None,
            generation: 0,
            takeovers: Vec::new(),
        }
    }

    #[test]
    fn list_aligns_columns() {
        let mut b = view("a-much-longer-name");
        b.mounts.insert(
            "h2".into(),
            NodeMounts {
                count: 2,
                ids: 1,
                node_state: crate::core::liveness::Liveness::Alive,
                stale: false,
            },
        );
        let t = list_table(&[view("web"), b]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        let col = lines[0].find("SIZE").unwrap();
        assert_eq!(lines[1].find("1G"), Some(col));
        assert_eq!(lines[2].find("1G"), Some(col));
        assert!(lines[2].ends_with("h2(2)"), "{t}");
        assert!(lines[1].ends_with('-'), "{t}");
    }

    #[test]
    fn path_segments_escape_what_names_cannot_hold() {
        assert_eq!(path_segment("web.1_x-y"), "web.1_x-y");
        assert_eq!(path_segment("../x"), "..%2Fx");
        assert_eq!(path_segment("a b"), "a%20b");
    }
}
