//! `dap-runner` binary: parse the command line, set up logging, run until Ctrl-C / SIGTERM
//! (the first one drains per `--on-stop`, a second one hands back what still runs).
//! Everything else lives in the library (`dap_runner::run`).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use dap_runner::config::{self, Cli};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match config::load(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal, not in journald or a log file.
    let ansi = std::io::stderr().is_terminal();
    if config.show_progress_bars {
        // Log lines are printed above the bars instead of through them.
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(ansi)
            .with_writer(dap_runner::terminal::LogWriter::new)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .init();
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let (count_tx, count) = tokio::sync::watch::channel(0u32);
        tokio::spawn(async move {
            loop {
                stop_signal().await;
                count_tx.send_modify(|n| *n += 1);
            }
        });
        let after = |n: u32| {
            let mut count = count.clone();
            async move {
                let _ = count.wait_for(|c| *c >= n).await;
            }
        };
        dap_runner::run_until(config, after(1), after(2)).await
    });
    // A task interrupted by shutdown may still be inside a blocking polars call; do not let it
    // hold the process open.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}

/// Completes on Ctrl-C or (on Unix) SIGTERM, the signal service managers send.
async fn stop_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No Ctrl-C handler available: only SIGTERM (or nothing) can stop us.
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
