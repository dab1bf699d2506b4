//! `GET /metrics`: scraped from a real server, parsed as Prometheus text, and checked to follow
//! what really happens (runners connecting, tasks created, queued, completed, SSE streams,
//! failing webhooks), plus the optional bearer token.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;

use crate::common::{ProtoRunner, TestServer};

/// `metric{labels}` → value, from the text exposition format (comments skipped). Panics on a
/// line that is not `name[{labels}] value`, so a malformed exposition fails the test.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(
            key.chars().next().is_some_and(|c| c.is_ascii_alphabetic()),
            "bad name in {line:?}"
        );
        out.insert(key.to_owned(), value);
    }
    out
}

async fn scrape(srv: &TestServer, token: Option<&str>) -> (u16, String, Option<String>) {
    let mut req = srv.http.get(srv.url("/metrics"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    (r.status().as_u16(), r.text().await.unwrap(), ct)
}

async fn metrics(srv: &TestServer) -> HashMap<String, f64> {
    let (st, body, ct) = scrape(srv, None).await;
    assert_eq!(st, 200, "{body}");
    assert!(ct.unwrap().starts_with("text/plain; version=0.0.4"));
    parse(&body)
}

fn tasks(m: &HashMap<String, f64>, status: &str) -> f64 {
    m[&format!("dap_tasks{{status=\"{status}\"}}")]
}

#[tokio::test]
async fn metrics_follow_runners_tasks_queue_and_sse() {
    let srv = TestServer::start().await;
    let m = metrics(&srv).await;
    for s in [
        "queued",
        "assigned",
        "running",
        "completed",
        "failed",
        "cancelled",
    ] {
        assert_eq!(tasks(&m, s), 0.0, "{s}");
    }
    assert_eq!(m["dap_runners_connected"], 0.0);
    assert_eq!(m["dap_queue_depth"], 0.0);
    assert_eq!(m["dap_dispatch_latency_seconds_count"], 0.0);
    assert_eq!(m["dap_sse_subscribers"], 0.0);

    let (_, cred) = srv.enrol("m").await;
    let mut runner = ProtoRunner::connect(srv.addr, &cred, 1, &[]).await;
    let (st, first) = srv.create_task(json!({"operation_code": 1})).await;
    assert_eq!(st, 201, "{first}");
    assert_eq!(first["status"], "assigned");
    let a1 = runner.next_assignment(5).await;
    // The runner's only slot is taken: the second task waits in the queue.
    let (st, second) = srv.create_task(json!({"operation_code": 1})).await;
    assert_eq!(st, 201, "{second}");
    assert_eq!(second["status"], "queued");

    let m = metrics(&srv).await;
    assert_eq!(m["dap_runners_connected"], 1.0);
    assert_eq!(m["dap_queue_depth"], 1.0);
    assert_eq!(tasks(&m, "assigned"), 1.0);
    assert_eq!(tasks(&m, "queued"), 1.0);
    assert_eq!(m["dap_dispatch_latency_seconds_count"], 1.0);
    let sum = m["dap_dispatch_latency_seconds_sum"];
    assert!(sum > 0.0 && sum < 5.0, "latency sum {sum}");
    // Cumulative buckets: the +Inf bucket holds every observation.
    assert_eq!(m["dap_dispatch_latency_seconds_bucket{le=\"+Inf\"}"], 1.0);

    // Completing the first frees the slot: the queued task is pushed (second dispatch).
    runner.complete(&a1, json!({"ok": true})).await;
    let a2 = runner.next_assignment(5).await;
    assert_eq!(a2.task_id, second["task_id"].as_str().unwrap());
    srv.wait_status(first["task_id"].as_str().unwrap(), "completed", 5)
        .await;
    let m = metrics(&srv).await;
    assert_eq!(tasks(&m, "completed"), 1.0);
    assert_eq!(tasks(&m, "assigned"), 1.0);
    assert_eq!(tasks(&m, "queued"), 0.0);
    assert_eq!(m["dap_queue_depth"], 0.0);
    assert_eq!(m["dap_dispatch_latency_seconds_count"], 2.0);

    // An open SSE stream is a subscriber until it closes.
    let sse = srv
        .http
        .get(srv.url("/api/v1/events"))
        .bearer_auth(&srv.read_key)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    assert_eq!(sse.headers()["x-accel-buffering"], "no");
    assert_eq!(metrics(&srv).await["dap_sse_subscribers"], 1.0);
    drop(sse);

    drop(runner);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = metrics(&srv).await;
        if m["dap_runners_connected"] == 0.0 && m["dap_sse_subscribers"] == 0.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{m:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn failed_webhook_attempts_are_counted() {
    let srv = TestServer::start_with(|c| {
        c.webhooks.allow_private = true;
        c.webhooks.retry_scale = 0.0001;
    })
    .await;
    // A port nobody listens on: every attempt is refused.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (st, hook) = srv
        .post(
            "/api/v1/webhooks",
            &srv.admin_key,
            json!({"url": format!("http://{closed}/hook"), "events": ["task.completed"]}),
        )
        .await;
    assert_eq!(st, 201, "{hook}");
    let m = metrics(&srv).await;
    assert_eq!(
        m["dap_webhook_delivery_failures_total{outcome=\"retry\"}"],
        0.0
    );

    let (_, cred) = srv.enrol("w").await;
    let mut runner = ProtoRunner::connect(srv.addr, &cred, 1, &[]).await;
    let (_, v) = srv.create_task(json!({"operation_code": 1})).await;
    let a = runner.next_assignment(5).await;
    runner.complete(&a, json!({})).await;
    srv.wait_status(v["task_id"].as_str().unwrap(), "completed", 5)
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics(&srv).await;
        if m["dap_webhook_delivery_failures_total{outcome=\"retry\"}"] >= 2.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{m:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_token_is_required_when_configured() {
    let srv = TestServer::start_with(|c| {
        c.metrics_token = Some("prom-secret-123".parse().unwrap());
    })
    .await;
    let (st, body, _) = scrape(&srv, None).await;
    assert_eq!(st, 401, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "unauthorized");
    assert_eq!(scrape(&srv, Some("prom-secret-124")).await.0, 401);
    // An admin API key is not the metrics token.
    assert_eq!(scrape(&srv, Some(&srv.admin_key.clone())).await.0, 401);
    let (st, body, _) = scrape(&srv, Some("prom-secret-123")).await;
    assert_eq!(st, 200);
    assert!(parse(&body).contains_key("dap_queue_depth"));
    assert!(!body.contains("prom-secret"));
}
