//! `dap-server`: the DAP coordinator as a library, so tests and the binary start the same thing.
//!
//! [`build_state`] opens the store and wires the parts; [`app`] is the axum router (tests call it
//! with `oneshot`); [`serve`] runs it on a listener until a shutdown future resolves. The binary
//! (`main.rs`) only parses the command line and calls these.

pub mod auth;
pub mod blobs;
pub mod cluster;
pub mod config;
pub mod dispatcher;
pub mod events;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod socket;
pub mod store;
pub mod tls;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, Method};
use axum::Router;
use tokio::sync::watch;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

pub use config::ServeConfig;
use dispatcher::Dispatcher;

/// Tunables the handlers read.
#[derive(Debug, Clone)]
pub struct Settings {
    pub heartbeat: Duration,
    pub max_artifact_bytes: u64,
    pub webhooks: webhooks::WebhookSettings,
    pub limits: limits::Limits,
    /// Bearer token `/metrics` requires, if any.
    pub metrics_token: Option<config::Secret>,
}

/// Everything a handler can reach.
pub struct Shared {
    pub store: store::Store,
    pub bus: events::EventBus,
    pub dispatcher: Arc<Dispatcher>,
    pub jwt: auth::JwtKeys,
    pub keys: auth::ApiKeyVerifier,
    pub blobs: blobs::FsBlobStore,
    pub settings: Settings,
    /// Open runner sockets per runner credential.
    pub runner_conns: limits::ConnectionCounter,
    /// Open SSE streams per ticket.
    pub sse_conns: limits::ConnectionCounter,
    pub metrics: Arc<metrics::Metrics>,
    /// Flips to `true` when the server is shutting down; long-lived streams end on it.
    pub shutdown: watch::Receiver<bool>,
    /// Runner socket sessions. Upgraded connections are invisible to axum's graceful shutdown,
    /// so [`serve`] waits on these itself: each sends its close frame (1001) before the process
    /// exits, instead of the runner seeing a reset.
    pub sockets: tokio_util::task::TaskTracker,
    shutdown_tx: watch::Sender<bool>,
    cors_origins: Vec<String>,
}

pub type AppState = Arc<Shared>;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
}

/// Opens the store (applying migrations) and rebuilds the dispatcher from it: the queue, and
/// the tasks runners held when the previous process stopped.
pub async fn build_state(config: &ServeConfig) -> Result<AppState, ServerError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| ServerError::Io(format!("creating {}", config.data_dir.display()), e))?;
    let bus = events::EventBus::new();
    // A cluster node's writer publishes nothing: its events, like every other node's, reach
    // the bus through the cluster feed, from the log.
    let (store, node_id) = if config.cluster {
        let store =
            store::Store::open_with(&config.database_url, store::EventRoute::Cluster).await?;
        (store, Some(cluster::new_node_id()))
    } else {
        (
            store::Store::open(&config.database_url, bus.clone()).await?,
            None,
        )
    };
    // Events up to here are history (served from the log); the feed publishes what follows.
    // Read before the queue is loaded, so a task created in between is seen by one or both.
    let log_end = match node_id {
        Some(_) => store.last_event_id().await?,
        None => 0,
    };
    let jwt = auth::JwtKeys::load_or_create(&config.data_dir)?;
    let blob_dir = config.data_dir.join("blobs");
    let blobs = blobs::FsBlobStore::new(&blob_dir)
        .map_err(|e| ServerError::Io(format!("creating {}", blob_dir.display()), e))?;
    let metrics = Arc::new(metrics::Metrics::new()?);
    let dispatcher = Dispatcher::new(
        store.clone(),
        metrics.clone(),
        dispatcher::Leases {
            grace: config.runner_grace,
            max_attempts: config.max_attempts,
        },
        node_id.clone(),
    );
    let (queued, in_flight) = dispatcher.load().await?;
    tracing::info!(
        queued,
        in_flight,
        grace_s = config.runner_grace.as_secs_f64(),
        "store open; runners holding in-flight tasks have their grace period to resume them"
    );
    webhooks::spawn_worker(
        store.clone(),
        config.webhooks,
        metrics.clone(),
        node_id.is_some(),
    );
    let (shutdown_tx, shutdown) = watch::channel(false);
    if let Some(node_id) = &node_id {
        tracing::info!(%node_id, "cluster mode: this server is one node of several on its database");
        cluster::spawn(
            store.clone(),
            bus.clone(),
            dispatcher.clone(),
            log_end,
            config.runner_grace,
            shutdown.clone(),
        );
    }
    Ok(Arc::new(Shared {
        keys: auth::ApiKeyVerifier::new(store.clone()),
        blobs,
        store,
        bus,
        dispatcher,
        jwt,
        settings: Settings {
            heartbeat: config.heartbeat,
            max_artifact_bytes: config.max_artifact_bytes,
            webhooks: config.webhooks,
            limits: config.limits,
            metrics_token: config.metrics_token.clone(),
        },
        runner_conns: limits::ConnectionCounter::new(config.limits.runner_max_connections),
        sse_conns: limits::ConnectionCounter::new(config.limits.sse_max_per_ticket),
        metrics,
        shutdown,
        shutdown_tx,
        sockets: tokio_util::task::TaskTracker::new(),
        cors_origins: config.cors_origins.clone(),
    }))
}

/// The router with its middleware.
pub fn app(state: AppState) -> Router {
    let mut router = http::router()
        .layer(axum::extract::DefaultBodyLimit::max(1 << 20))
        .layer(
            // Log method and path only: query strings can carry SSE tickets.
            TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
                tracing::debug_span!("http", method = %req.method(), path = %req.uri().path())
            }),
        );
    let origins: Vec<HeaderValue> = state
        .cors_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    if !origins.is_empty() {
        router = router.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([Method::GET, Method::POST, Method::DELETE])
                .allow_headers([
                    axum::http::header::AUTHORIZATION,
                    axum::http::header::CONTENT_TYPE,
                    axum::http::HeaderName::from_static("last-event-id"),
                ]),
        );
    }
    router.with_state(state)
}

/// `listener` with Nagle's algorithm off on every accepted connection. The runner socket sends
/// small messages back to back (an `ack`, then the next `assign`); with Nagle on, the second
/// waits for the peer's delayed ACK, ~40 ms. [`tls::TlsListener`] does the same itself.
pub fn no_delay(
    listener: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    use axum::serve::ListenerExt;
    listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    })
}

/// Serves `state` on `listener` until `shutdown` resolves, then closes runner sockets and SSE
/// streams and waits (up to 5 s) for in-flight requests. `listener` is a `TcpListener`, or a
/// [`tls::TlsListener`] wrapping one for HTTPS.
pub async fn serve<L>(
    listener: L,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let tx = state.shutdown_tx.clone();
    let mut done = state.shutdown.clone();
    let dispatcher = state.dispatcher.clone();
    let sockets = state.sockets.clone();
    let app = app(state);
    let signal = async move {
        shutdown.await;
        // Leases and timeouts are the next process's business from here on.
        dispatcher.stop_timers();
        let _ = tx.send(true);
    };
    let server = axum::serve(listener, app).with_graceful_shutdown(signal);
    let deadline = async {
        let _ = done.wait_for(|v| *v).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    };
    tokio::pin!(deadline);
    let served = tokio::select! {
        r = server => r,
        _ = &mut deadline => {
            tracing::warn!("connections still open 5 s after shutdown; exiting anyway");
            return Ok(());
        }
    };
    // Runner sockets close themselves on the shutdown signal (1001, then a short drain).
    sockets.close();
    tokio::select! {
        _ = sockets.wait() => {}
        _ = &mut deadline => tracing::warn!(
            open = sockets.len(),
            "runner sockets still closing 5 s after shutdown; exiting anyway"
        ),
    }
    served
}
