//! `dap-server` binary: parses the command line and runs a subcommand. All behaviour lives in
//! the library; this file only wires arguments, logging and signals to it.

use std::process::ExitCode;

use clap::Parser;
use dap_server::config::{ApikeyCommand, Cli, Command, LogFormat, RunnerCommand, ServeConfig};
use dap_server::store::{Scope, Store};
use dap_server::{auth, build_state, events::EventBus, http, serve};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's malloc: the push loop allocates and frees many small buffers
/// per task on several threads; measured in `dap-bench` (see ARCHITECTURE.md, Decisions).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.serve.log_format);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    // PostgreSQL's notices (e.g. "relation _sqlx_migrations already exists, skipping" at every
    // start) are not news.
    let filter = EnvFilter::try_from_env("DAP_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx::postgres::notice=warn"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn open_store(cli: &Cli) -> Result<Store, Box<dyn std::error::Error>> {
    std::fs::create_dir_all(&cli.store.data_dir)?;
    Ok(Store::open(&cli.store.database_url(), EventBus::new()).await?)
}

fn fmt_ts(ms: Option<i64>) -> String {
    match http::ts(ms) {
        serde_json::Value::String(s) => s,
        _ => "-".into(),
    }
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match &cli.command {
        None | Some(Command::Serve) => {
            let config = ServeConfig::from_args(&cli.store, &cli.serve);
            // Unusable certificate files fail here, before the store is opened.
            let tls = match &config.tls {
                Some(files) => Some(dap_server::tls::server_config(&files.cert, &files.key)?),
                None => None,
            };
            let state = build_state(&config).await?;
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
            let addr = listener.local_addr()?;
            match tls {
                Some(tls) => {
                    let listener = dap_server::tls::TlsListener::new(listener, tls)?;
                    tracing::info!(%addr, "dap-server listening (HTTPS, runners use wss://)");
                    serve(listener, state, shutdown_signal()).await?;
                }
                None => {
                    tracing::info!(%addr, "dap-server listening");
                    serve(dap_server::no_delay(listener), state, shutdown_signal()).await?;
                }
            }
            tracing::info!("dap-server stopped");
            Ok(())
        }
        Some(Command::Migrate) => {
            std::fs::create_dir_all(&cli.store.data_dir)?;
            Store::migrate(&cli.store.database_url()).await?;
            eprintln!("migrations applied");
            Ok(())
        }
        Some(Command::Apikey(cmd)) => {
            let store = open_store(&cli).await?;
            match cmd {
                ApikeyCommand::Create { name, scope } => {
                    let scope = Scope::parse(scope).ok_or("scope must be read, write or admin")?;
                    let (_, key) = auth::api_keys::create_api_key(&store, name, scope).await?;
                    println!("{key}");
                }
                ApikeyCommand::List => {
                    println!(
                        "{:<18} {:<6} {:<25} {:<25} NAME",
                        "ID", "SCOPE", "CREATED", "REVOKED"
                    );
                    for k in store.list_api_keys().await? {
                        println!(
                            "{:<18} {:<6} {:<25} {:<25} {}",
                            k.id,
                            k.scope.as_str(),
                            fmt_ts(Some(k.created_at)),
                            fmt_ts(k.revoked_at),
                            k.name
                        );
                    }
                }
                ApikeyCommand::Revoke { id } => {
                    if !store.revoke_api_key(id).await? {
                        return Err(format!("no active API key {id}").into());
                    }
                    eprintln!("revoked {id} (servers forget cached keys within 30 s)");
                }
            }
            store.close().await;
            Ok(())
        }
        Some(Command::Runner(cmd)) => {
            let store = open_store(&cli).await?;
            match cmd {
                RunnerCommand::Create { name } => {
                    let (_, token) = http::runners::enrol_runner(&store, name)
                        .await
                        .map_err(|e| e.to_string())?;
                    println!("{token}");
                }
                RunnerCommand::List => {
                    println!("{:<38} {:<25} NAME", "ID", "LAST SEEN");
                    for r in store.list_runners().await? {
                        println!("{:<38} {:<25} {}", r.id, fmt_ts(r.last_seen_at), r.name);
                    }
                }
                RunnerCommand::Revoke { id } => {
                    if !store.revoke_runner(id).await? {
                        return Err(format!("no active runner {id}").into());
                    }
                    eprintln!("revoked runner {id}");
                }
            }
            store.close().await;
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
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
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown requested");
}
