//! Notification hooks against a real HTTP receiver on port 0: exactly one signed delivery per
//! event (verified with the reference `standardwebhooks` library), retries with the same
//! webhook-id, 410 disables, SSRF refusals, and the delivery log.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use crate::common::*;

#[derive(Clone, Default)]
pub struct Receiver {
    /// (headers, body) of every request received.
    pub got: Arc<Mutex<Vec<(HeaderMap, String)>>>,
    /// Status codes to answer with, in order; 200 once empty.
    script: Arc<Mutex<VecDeque<u16>>>,
    /// How long each answer takes.
    delay: Duration,
}

impl Receiver {
    pub async fn start(script: &[u16]) -> (Self, String) {
        let r = Receiver::default();
        r.script.lock().unwrap().extend(script.iter().copied());
        Self::start_on(r, "127.0.0.1:0").await
    }

    /// A receiver that takes `delay` to answer each request (200), so that deliveries stay in
    /// flight for a while.
    pub async fn start_slow(delay: Duration) -> (Self, String) {
        let r = Receiver {
            delay,
            ..Receiver::default()
        };
        Self::start_on(r, "127.0.0.1:0").await
    }

    /// Starts a receiver on a given address (to bring one up on a port chosen earlier).
    pub async fn start_on(r: Receiver, addr: &str) -> (Self, String) {
        let state = r.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let state = state.clone();
                async move {
                    state.got.lock().unwrap().push((headers, body));
                    tokio::time::sleep(state.delay).await;
                    let code = state.script.lock().unwrap().pop_front().unwrap_or(200);
                    StatusCode::from_u16(code).unwrap()
                }
            }),
        );
        let l = tokio::net::TcpListener::bind(addr).await.unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        (r, url)
    }

    pub fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    pub async fn wait_for(&self, n: usize, secs: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        while self.count() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {n} deliveries",
                self.count()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.webhooks.allow_private = true;
        c.webhooks.retry_scale = 0.01; // 5 s → 50 ms
    })
    .await
}

async fn run_noop(srv: &TestServer, runner: &mut ProtoRunner) -> String {
    let (_, v) = srv.create_task(json!({"operation_code": 1})).await;
    let id = v["task_id"].as_str().unwrap().to_owned();
    let a = runner.next_assignment(5).await;
    runner
        .complete(&a, json!({"row_count": 7, "rows": [[1]]}))
        .await;
    srv.wait_status(&id, "completed", 5).await;
    id
}

#[tokio::test]
async fn a_completion_is_delivered_once_signed_and_logged() {
    let srv = server().await;
    let (recv, url) = Receiver::start(&[]).await;
    let (st, hook) = srv
        .post(
            "/api/v1/webhooks",
            &srv.admin_key,
            json!({"url": url, "events": ["task.completed", "task.failed"]}),
        )
        .await;
    assert_eq!(st, 201, "{hook}");
    let secret = hook["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let hook_id = hook["id"].as_str().unwrap().to_owned();
    let (st, _) = srv
        .post("/api/v1/webhooks", &srv.write_key, json!({"url": url}))
        .await;
    assert_eq!(st, 403, "webhooks need the admin scope");

    let (_, cred) = srv.enrol("r").await;
    let mut runner = ProtoRunner::connect(srv.addr, &cred, 1, &[]).await;
    let t1 = run_noop(&srv, &mut runner).await;
    let t2 = run_noop(&srv, &mut runner).await;
    recv.wait_for(2, 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(recv.count(), 2, "exactly one delivery per completion");

    let wh = standardwebhooks::Webhook::new(&secret).unwrap();
    let got = recv.got.lock().unwrap().clone();
    let mut ids = Vec::new();
    for (headers, body) in &got {
        wh.verify(body.as_bytes(), headers)
            .expect("signature verifies with the reference library");
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["type"], "task.completed");
        assert_eq!(v["data"]["status"], "completed");
        assert_eq!(v["data"]["result_summary"]["row_count"], 7);
        assert!(
            v["data"].get("rows").is_none() && v["data"]["result_summary"].get("rows").is_none(),
            "no large payloads"
        );
        ids.push((
            headers["webhook-id"].to_str().unwrap().to_owned(),
            v["data"]["task_id"].as_str().unwrap().to_owned(),
        ));
    }
    let tasks: Vec<&str> = ids.iter().map(|i| i.1.as_str()).collect();
    assert!(tasks.contains(&t1.as_str()) && tasks.contains(&t2.as_str()));
    assert_ne!(ids[0].0, ids[1].0, "one webhook-id per event");

    // A tampered body does not verify.
    let (h, b) = &got[0];
    assert!(wh
        .verify(b.replace("completed", "failed").as_bytes(), h)
        .is_err());

    let (st, log) = srv
        .get(
            &format!("/api/v1/webhooks/{hook_id}/deliveries"),
            &srv.admin_key,
        )
        .await;
    assert_eq!(st, 200);
    let d = &log["deliveries"][0];
    assert_eq!(d["status"], "delivered");
    assert_eq!(d["attempt_log"][0]["status_code"], 200);
    assert!(d["attempt_log"][0]["latency_ms"].is_number());

    // Redeliver sends the same message id again.
    let did = d["id"].as_i64().unwrap();
    let msg = d["message_id"].as_str().unwrap().to_owned();
    let (st, _) = srv
        .post(
            &format!("/api/v1/webhooks/{hook_id}/deliveries/{did}/redeliver"),
            &srv.admin_key,
            json!({}),
        )
        .await;
    assert_eq!(st, 202);
    recv.wait_for(3, 10).await;
    let (st, v) = srv
        .post(
            &format!("/api/v1/webhooks/{hook_id}/deliveries/not-a-number/redeliver"),
            &srv.admin_key,
            json!({}),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("invalid_path")),
        "{v}"
    );
    assert_eq!(
        recv.got.lock().unwrap()[2].0["webhook-id"]
            .to_str()
            .unwrap(),
        msg
    );
}

#[tokio::test]
async fn failures_are_retried_with_the_same_id_and_410_disables() {
    let srv = server().await;
    let (recv, url) = Receiver::start(&[500, 503, 502]).await;
    let (_, hook) = srv
        .post("/api/v1/webhooks", &srv.admin_key, json!({"url": url}))
        .await;
    let hook_id = hook["id"].as_str().unwrap().to_owned();
    let (_, cred) = srv.enrol("r").await;
    let mut runner = ProtoRunner::connect(srv.addr, &cred, 1, &[]).await;
    run_noop(&srv, &mut runner).await;
    // Retry delays are scaled by 0.01 here (5 s → 50 ms, then 3 s): wait for the first retry.
    recv.wait_for(2, 10).await;
    let got = recv.got.lock().unwrap().clone();
    assert_eq!(
        got[0].0["webhook-id"], got[1].0["webhook-id"],
        "a retry keeps its webhook-id"
    );
    // The receiver answers before the attempt is recorded: poll the log.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let log = loop {
        let (_, log) = srv
            .get(
                &format!("/api/v1/webhooks/{hook_id}/deliveries"),
                &srv.admin_key,
            )
            .await;
        if log["deliveries"][0]["attempts"].as_u64().unwrap_or(0) >= 2 {
            break log;
        }
        assert!(tokio::time::Instant::now() < deadline, "{log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let d = &log["deliveries"][0];
    assert_eq!(d["status"], "pending", "still to be retried");
    assert_eq!(d["attempt_log"][0]["status_code"], 500);
    assert_eq!(d["attempt_log"][1]["status_code"], 503);

    // A receiver that answers 410 Gone disables the subscription.
    let (recv2, url2) = Receiver::start(&[410]).await;
    let (_, hook2) = srv
        .post(
            "/api/v1/webhooks",
            &srv.admin_key,
            json!({"url": url2, "events": ["task.completed"]}),
        )
        .await;
    let id2 = hook2["id"].as_str().unwrap().to_owned();
    run_noop(&srv, &mut runner).await;
    recv2.wait_for(1, 10).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, h) = srv
            .get(&format!("/api/v1/webhooks/{id2}"), &srv.admin_key)
            .await;
        if h["enabled"] == false {
            assert!(h["disabled_reason"].as_str().unwrap().contains("410"));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{h}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    run_noop(&srv, &mut runner).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(recv2.count(), 1, "a disabled webhook gets nothing more");
}

#[tokio::test]
async fn four_attempts_until_success_with_a_fast_schedule() {
    let srv = TestServer::start_with(|c| {
        c.webhooks.allow_private = true;
        c.webhooks.retry_scale = 0.0001; // 5 s → 0.5 ms, 5 min → 30 ms, 30 min → 180 ms
    })
    .await;
    let (recv, url) = Receiver::start(&[500, 500, 500]).await;
    let (_, hook) = srv
        .post(
            "/api/v1/webhooks",
            &srv.admin_key,
            json!({"url": url, "events": ["*"]}),
        )
        .await;
    let secret = hook["secret"].as_str().unwrap().to_owned();
    let (_, cred) = srv.enrol("r").await;
    let mut runner = ProtoRunner::connect(srv.addr, &cred, 1, &[]).await;
    run_noop(&srv, &mut runner).await;
    recv.wait_for(4, 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = recv.got.lock().unwrap().clone();
    assert_eq!(got.len(), 4, "delivered on the 4th attempt and not again");
    let id = got[0].0["webhook-id"].clone();
    assert!(got.iter().all(|(h, _)| h["webhook-id"] == id));
    let wh = standardwebhooks::Webhook::new(&secret).unwrap();
    wh.verify(got[3].1.as_bytes(), &got[3].0).unwrap();
    assert_eq!(got[0].1, got[3].1, "the body is fixed at the first attempt");
}

#[tokio::test]
async fn private_targets_are_refused_without_the_operator_flag() {
    let srv = TestServer::start().await;
    for url in [
        "http://127.0.0.1:9/x",
        "http://[::1]/x",
        "http://10.0.0.1/x",
        "http://169.254.169.254/x",
        "http://[::ffff:127.0.0.1]/x",
        "ftp://example.com/",
    ] {
        let (st, v) = srv
            .post("/api/v1/webhooks", &srv.admin_key, json!({"url": url}))
            .await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (422, Some("target_not_allowed")),
            "{url}: {v}"
        );
    }
    let (st, v) = srv
        .post(
            "/api/v1/webhooks",
            &srv.admin_key,
            json!({"url": "https://example.com/h", "events": ["task.started"]}),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (422, Some("invalid_request"))
    );

    // A name that resolves to loopback passes the shape check but is refused at connect time.
    let (recv, url) = Receiver::start(&[]).await;
    let port = url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let sneaky = format!("http://localhost:{port}/hook");
    let (st, hook) = srv
        .post("/api/v1/webhooks", &srv.admin_key, json!({"url": sneaky}))
        .await;
    assert_eq!(st, 201, "{hook}");
    let hook_id = hook["id"].as_str().unwrap().to_owned();
    let (_, cred) = srv.enrol("r").await;
    let mut runner = ProtoRunner::connect(srv.addr, &cred, 1, &[]).await;
    run_noop(&srv, &mut runner).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, log) = srv
            .get(
                &format!("/api/v1/webhooks/{hook_id}/deliveries"),
                &srv.admin_key,
            )
            .await;
        if let Some(err) = log["deliveries"][0]["last_error"].as_str() {
            assert!(err.contains("refused") || err.contains("private"), "{err}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(recv.count(), 0, "nothing reached the loopback receiver");
}
