//! Notification hooks: the worker that sends outbox deliveries as signed HTTP POSTs in the
//! Standard Webhooks format, retries them on a schedule, and refuses targets on private
//! networks (checked after DNS, on every connect, with redirects never followed).
//!
//! Outbox rows are written by the store writer in the transaction of their event; this module
//! only sends them and records the outcome. It knows no HTTP status codes of our own API.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, Mac};
use rand::Rng;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::metrics::Metrics;
use crate::store::webhooks::{Attempt, AttemptOutcome, Delivery, Webhook};
use crate::store::{now_ms, Store};

/// Delay before each retry (after attempt 1, 2, …): about 5 s, 5 min, 30 min, 2 h, 5 h, 10 h,
/// then daily until three days have passed.
pub const RETRY_SCHEDULE_S: [u64; 9] = [
    5,
    5 * 60,
    30 * 60,
    2 * 3600,
    5 * 3600,
    10 * 3600,
    24 * 3600,
    24 * 3600,
    24 * 3600,
];
const TIMEOUT: Duration = Duration::from_secs(10);
const CONCURRENCY: usize = 16;
/// Deliveries claimed at once.
const BATCH: u32 = 64;
/// How long a claim lasts: longer than a whole batch can take (BATCH / CONCURRENCY rounds of
/// at most TIMEOUT each, 40 s), so a live worker never loses a claim it is still working on.
/// It is also how long the deliveries of a node that died holding them wait for another node.
const CLAIM_LEASE: Duration = Duration::from_secs(60);

/// How the worker behaves; tests shrink the schedule.
#[derive(Debug, Clone, Copy)]
pub struct WebhookSettings {
    /// Allow targets on loopback/private networks (local development and tests only).
    pub allow_private: bool,
    /// Multiplies every retry delay (1.0 in production).
    pub retry_scale: f64,
}

/// Creates a new signing secret (`whsec_` + base64 of 32 random bytes).
pub fn new_secret() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill(&mut b);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(b)
    )
}

/// The HMAC key of a secret: the base64 after `whsec_`, or the raw bytes of any other string.
pub fn secret_key(secret: &str) -> Vec<u8> {
    match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_else(|_| secret.as_bytes().to_vec()),
        None => secret.as_bytes().to_vec(),
    }
}

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret_key(secret))
        .expect("HMAC accepts keys of any length");
    mac.update(format!("{msg_id}.{timestamp}.{body}").as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// True for addresses a webhook must not reach unless private targets are allowed.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10 CGNAT
                || o[0] == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00 // fc00::/7 unique local
                || (seg[0] & 0xffc0) == 0xfe80 // fe80::/10 link local
        }
    }
}

/// DNS resolution that drops private addresses, so the check holds for whatever the name
/// resolves to at connect time (no TOCTOU between a check and the connect).
struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| !is_private(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!(
                    "{host} resolves only to private or loopback addresses; refused"
                )
                .into());
            }
            let it: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(it)
        })
    }
}

/// Checks a target URL's shape (and, for IP literals, its address).
pub fn check_target(url: &str, allow_private: bool) -> Result<reqwest::Url, String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("invalid URL: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err("webhook URLs must be http or https".into());
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("webhook URLs must not carry credentials".into());
    }
    let host = u.host().ok_or("webhook URL has no host")?;
    if !allow_private {
        let ip = match host {
            url::Host::Ipv4(a) => Some(IpAddr::V4(a)),
            url::Host::Ipv6(a) => Some(IpAddr::V6(a)),
            // Names are checked after DNS, at connect time (see `GuardedResolver`).
            url::Host::Domain(_) => None,
        };
        if ip.is_some_and(is_private) {
            return Err(
                "private, loopback and link-local addresses are not allowed webhook targets".into(),
            );
        }
    }
    Ok(u)
}

/// Starts the delivery worker; it runs until the process ends. `clustered`: other servers on
/// the database run workers too (`--cluster`); otherwise this one is alone and first ends the
/// claims its previous process may have left, so they are sent now rather than when they lapse.
pub fn spawn_worker(
    store: Store,
    settings: WebhookSettings,
    metrics: Arc<Metrics>,
    clustered: bool,
) {
    let mut builder = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("dap-server/", env!("CARGO_PKG_VERSION")));
    if !settings.allow_private {
        builder = builder.dns_resolver(Arc::new(GuardedResolver));
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhook client could not be built; webhooks disabled");
            return;
        }
    };
    tokio::spawn(async move {
        if !clustered {
            if let Err(e) = store.release_delivery_claims().await {
                tracing::error!(error = %e, "releasing old webhook delivery claims failed");
            }
        }
        loop {
            let now = now_ms();
            let lease_ms = CLAIM_LEASE.as_millis() as i64;
            match store.claim_due_deliveries(now, lease_ms, BATCH).await {
                Ok(due) if !due.is_empty() => {
                    let mut set = tokio::task::JoinSet::new();
                    for (d, w) in due {
                        while set.len() >= CONCURRENCY {
                            set.join_next().await;
                        }
                        let (store, client, metrics) =
                            (store.clone(), client.clone(), metrics.clone());
                        set.spawn(async move {
                            deliver(&store, &client, settings, &metrics, d, w).await
                        });
                    }
                    while set.join_next().await.is_some() {}
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "reading the webhook outbox failed"),
            }
            let wait = match store.next_delivery_due().await {
                Ok(Some(t)) => Duration::from_millis((t - now_ms()).clamp(10, 60_000) as u64),
                _ => Duration::from_secs(60),
            };
            tokio::select! {
                _ = store.outbox().notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    });
}

/// The body of a delivery: event type, time and a small summary of the task (never its full
/// result).
async fn build_payload(store: &Store, d: &Delivery) -> Value {
    let event = store
        .event_data(d.event_id)
        .await
        .ok()
        .flatten()
        .unwrap_or(json!({}));
    let at = event
        .get("at")
        .and_then(Value::as_i64)
        .unwrap_or_else(now_ms);
    let mut data = event.clone();
    if let Some(o) = data.as_object_mut() {
        o.remove("type");
        o.remove("at");
    }
    if let Some(task_id) = &d.task_id {
        if let Ok(Some(t)) = store.get_task(task_id).await {
            let summary = t.result_data.as_ref().map(|r| {
                let mut s = serde_json::Map::new();
                for k in ["row_count", "input_row_count", "dataset", "metrics"] {
                    if let Some(v) = r.get(k) {
                        if v.to_string().len() <= 4096 {
                            s.insert(k.into(), v.clone());
                        }
                    }
                }
                Value::Object(s)
            });
            if let Some(o) = data.as_object_mut() {
                o.insert(
                    "operation".into(),
                    dap_protocol::op::name(t.operation_code).into(),
                );
                o.insert("created_at".into(), crate::http::ts(Some(t.created_at)));
                o.insert("started_at".into(), crate::http::ts(t.started_at));
                o.insert("finished_at".into(), crate::http::ts(t.finished_at));
                if let (Some(s), Some(f)) = (t.started_at, t.finished_at) {
                    o.insert("duration_ms".into(), (f - s).into());
                }
                if let Some(s) = summary {
                    o.insert("result_summary".into(), s);
                }
            }
        }
    }
    json!({ "type": d.event_type, "timestamp": crate::http::ts(Some(at)), "data": data })
}

async fn deliver(
    store: &Store,
    client: &reqwest::Client,
    settings: WebhookSettings,
    metrics: &Metrics,
    d: Delivery,
    w: Webhook,
) {
    let body = match &d.payload {
        Some(p) => p.clone(),
        None => {
            let p = build_payload(store, &d).await.to_string();
            if let Err(e) = store.set_delivery_payload(d.id, &p).await {
                tracing::error!(error = %e, "storing a webhook payload failed");
                return;
            }
            p
        }
    };
    let msg_id = format!("msg_{}", d.event_id);
    let ts = now_ms() / 1000;
    let attempt_no = d.attempts + 1;
    let started = Instant::now();
    let result = match check_target(&w.url, settings.allow_private) {
        Err(e) => Err(e),
        Ok(url) => client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &msg_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sign(&w.secret, &msg_id, ts, &body))
            .body(body)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| {
                // The error chain names the cause (refused address, timeout, TLS…); the URL is
                // stripped in case its query carries a token.
                let e = e.without_url();
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg.push_str(": ");
                    msg.push_str(&s.to_string());
                    src = s.source();
                }
                msg
            }),
    };
    let latency_ms = started.elapsed().as_millis() as i64;
    let (status_code, error) = match &result {
        Ok(code) => (Some(*code), None),
        Err(e) => (None, Some(e.chars().take(500).collect::<String>())),
    };
    let gone = status_code == Some(410);
    let outcome = match status_code {
        Some(c) if (200..300).contains(&c) => AttemptOutcome::Delivered,
        _ if gone => AttemptOutcome::Failed,
        _ => match RETRY_SCHEDULE_S.get(d.attempts as usize) {
            Some(delay_s) => {
                let jitter = rand::thread_rng().gen_range(0.9..1.1);
                let delay_ms = (*delay_s as f64 * 1000.0 * settings.retry_scale * jitter) as i64;
                AttemptOutcome::RetryAt(now_ms() + delay_ms.max(1))
            }
            None => AttemptOutcome::Failed,
        },
    };
    let attempt = Attempt {
        attempt: attempt_no,
        at: now_ms(),
        status_code,
        latency_ms,
        error: error.clone(),
    };
    match outcome {
        AttemptOutcome::Delivered => {}
        AttemptOutcome::RetryAt(_) => metrics.webhook_failed(false),
        AttemptOutcome::Failed => metrics.webhook_failed(true),
    }
    match store.record_delivery_attempt(&d, &attempt, outcome).await {
        Ok(true) => {}
        // Our claim lapsed (the attempt took longer than CLAIM_LEASE) and another claim holds
        // it now: that one records. The receiver may see this message id twice.
        Ok(false) => {
            tracing::warn!(webhook = %w.id, %msg_id, "webhook claim lapsed during the attempt; not recorded")
        }
        Err(e) => tracing::error!(error = %e, "recording a webhook attempt failed"),
    }
    if gone {
        let disabled = Webhook {
            enabled: false,
            disabled_reason: Some("receiver answered 410 Gone".into()),
            ..w.clone()
        };
        if let Err(e) = store.update_webhook(&disabled).await {
            tracing::error!(error = %e, "disabling a gone webhook failed");
        }
    }
    match outcome {
        AttemptOutcome::Delivered => {
            tracing::debug!(webhook = %w.id, %msg_id, latency_ms, "webhook delivered")
        }
        _ => tracing::info!(webhook = %w.id, %msg_id, attempt = attempt_no, status = ?status_code,
                            error = ?error, "webhook delivery failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_private(a.parse().unwrap()), "{a}");
        }
        for a in [
            "8.8.8.8",
            "100.128.0.1",
            "2001:4860:4860::8888",
            "172.32.0.1",
        ] {
            assert!(!is_private(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn targets() {
        assert!(check_target("http://127.0.0.1:9/x", false).is_err());
        assert!(check_target("http://[::1]/x", false).is_err());
        assert!(check_target("ftp://example.com/", false).is_err());
        assert!(check_target("https://user:pw@example.com/", false).is_err());
        assert!(check_target("https://example.com/hook", false).is_ok());
        assert!(check_target("http://127.0.0.1:9/x", true).is_ok());
    }

    #[test]
    fn signature_matches_the_reference_library() {
        let secret = new_secret();
        let body = r#"{"type":"task.completed"}"#;
        let ts = now_ms() / 1000;
        let sig = sign(&secret, "msg_1", ts, body);
        let wh = standardwebhooks::Webhook::new(&secret).unwrap();
        let mut h = axum::http::HeaderMap::new();
        h.insert("webhook-id", "msg_1".parse().unwrap());
        h.insert("webhook-timestamp", ts.to_string().parse().unwrap());
        h.insert("webhook-signature", sig.parse().unwrap());
        wh.verify(body.as_bytes(), &h).unwrap();
        h.insert(
            "webhook-signature",
            sign("whsec_AAAA", "msg_1", ts, body).parse().unwrap(),
        );
        assert!(wh.verify(body.as_bytes(), &h).is_err());
    }
}
