//! `caravan`: the daemon (`caravan daemon`) and the client commands in one binary.

use clap::Parser;

use caravan::cli::{self, Cli, Command};

fn main() {
    let cli = Cli::parse();
    if let Some(code) = cli::print_generated(&cli.command) {
        std::process::exit(code);
    }
    let code = match cli.command {
        Command::Daemon(args) => run_daemon(args.resolve()),
        Command::Plugin(args) => run_daemon(args.resolve()),
        Command::FenceKeeper { state_dir } => {
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .init();
            match caravan::host::fence::keep(&state_dir) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("caravan fence-keeper: {e}");
                    1
                }
            }
        }
        command => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match rt {
                Ok(rt) => rt.block_on(cli::run(cli.socket, command)),
                Err(e) => {
                    eprintln!("caravan: cannot start the runtime: {e}");
                    1
                }
            }
        }
    };
    std::process::exit(code);
}

fn run_daemon(cfg: caravan::Result<caravan::daemon::config::DaemonConfig>) -> i32 {
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            eprintln!("caravan daemon: {e}");
            return 2;
        }
    };
    tracing_subscriber::fmt()
        .with_max_level(cfg.log_level)
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .init();
    let run = async {
        let signal = caravan::daemon::shutdown_signal()?;
        caravan::daemon::run(cfg, signal).await
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("caravan")
        .build()
        .map_err(|e| caravan::Error::io("starting the runtime", e))
        .and_then(|rt| {
            let result = rt.block_on(run);
            // A thread still blocked on a stalled export (the start-up check that gave up,
            // a call that timed out) would keep a plain drop of the runtime waiting until
            // the export answers: the daemon's work is done, so do not wait for it.
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            result
        });
    match result {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("caravan daemon: {e}");
            1
        }
    }
}
