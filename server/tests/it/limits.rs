//! Abuse limits: an oversized frame is closed with 1009 and a flood with 1008 (the client really
//! receives the close frame, not a reset), a third socket per credential is refused with 429,
//! a silent socket is closed with 4005, SSE tickets are capped per ticket and forged or expired
//! ones refused — and meanwhile the server keeps serving other runners and REST.

use std::time::Duration;

use base64::Engine;
use dap_protocol::{close_code, Progress, RunnerMessage, ServerMessage, PROTOCOL_VERSION};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;
use dap_server::auth::TokenKind;

/// Reads until the server's close frame and returns its code. Panics on a reset, on EOF
/// without a close frame, or after `secs`.
async fn close_code_of(ws: &mut Ws, secs: u64) -> u16 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("no close frame within {secs} s"),
            Ok(None) => panic!("connection ended without a close frame"),
            Ok(Some(Err(e))) => panic!("connection broke without a close frame: {e}"),
            Ok(Some(Ok(Message::Close(Some(f))))) => return u16::from(f.code),
            Ok(Some(Ok(Message::Close(None)))) => panic!("close frame without a code"),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

fn progress_for(task: &str, text: String) -> RunnerMessage {
    RunnerMessage::Progress(Progress {
        task_id: task.into(),
        attempt: 1,
        percent: 1,
        stage: None,
        message: Some(text),
    })
}

/// A second runner does a whole task while the first one misbehaves; REST answers too.
async fn others_still_served(srv: &TestServer, good: &mut ProtoRunner) {
    let (st, v) = srv
        .create_task(json!({"operation_code": 1, "runner_id": good.runner_id}))
        .await;
    assert_eq!(st, 201, "{v}");
    let a = good.next_assignment(5).await;
    good.complete(&a, json!({"ok": true})).await;
    srv.wait_status(&a.task_id, "completed", 5).await;
    let (st, _) = srv.get("/healthz", &srv.read_key).await;
    assert_eq!(st, 200);
}

async fn still_open(ws: &mut Ws) {
    ws.send(Message::Ping(b"alive?".to_vec().into()))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Pong(p)))) if p.as_ref() == b"alive?" => return,
            Ok(Some(Ok(Message::Close(f)))) => panic!("closed: {f:?}"),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no pong: {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_oversized_message_is_closed_with_1009_and_others_keep_working() {
    let srv = TestServer::start().await;
    let (_, cred_a) = srv.enrol("big").await;
    let (_, cred_b) = srv.enrol("good").await;
    let mut a = ProtoRunner::connect(srv.addr, &cred_a, 1, &[]).await;
    let mut b = ProtoRunner::connect(srv.addr, &cred_b, 1, &[]).await;

    // Just under the 1 MiB default is fine (a large inline result must fit)...
    a.send(progress_for("none", "x".repeat((1 << 20) - 200)))
        .await;
    still_open(&mut a.ws).await;
    // ...2 MiB is not: the client gets a 1009 close frame, not a dropped connection.
    a.send(progress_for("none", "x".repeat(2 << 20))).await;
    assert_eq!(close_code_of(&mut a.ws, 10).await, close_code::TOO_BIG);
    others_still_served(&srv, &mut b).await;

    // A smaller configured limit applies, also to the greeting itself.
    let srv = TestServer::start_with(|c| c.limits.runner_max_message_bytes = 4096).await;
    let (_, cred) = srv.enrol("r").await;
    let jwt = runner_jwt(&srv.url(""), &cred).await.unwrap();
    let mut ws = ws_connect(srv.addr, Some(&jwt)).await.unwrap();
    ws.send(Message::Text("{".repeat(5000).into()))
        .await
        .unwrap();
    assert_eq!(close_code_of(&mut ws, 10).await, close_code::TOO_BIG);
}

/// The server reads runner sockets through a small buffer (4 KiB, so idle runners cost little
/// memory): a result close to the 1 MiB cap must still arrive whole and intact, between small
/// messages on the same socket, and the socket must keep working after it.
#[tokio::test]
async fn a_result_near_the_message_cap_arrives_whole_through_the_small_read_buffer() {
    let srv = TestServer::start().await;
    let (_, cred) = srv.enrol("big-result").await;
    let mut r = ProtoRunner::connect(srv.addr, &cred, 1, &[]).await;
    // Not one repeated byte: a misplaced or lost 4 KiB chunk would change the text.
    let blob: String = (0..(1 << 20) - 4096)
        .map(|i: usize| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    for round in 0..2 {
        let (st, v) = srv
            .create_task(json!({"operation_code": 1, "runner_id": r.runner_id}))
            .await;
        assert_eq!(st, 201, "{v}");
        let a = r.next_assignment(5).await;
        r.progress(&a, 10, "small before").await;
        r.complete(&a, json!({ "round": round, "blob": blob }))
            .await;
        r.wait_ack(&a.task_id, a.attempt, 10).await;
        let (st, v) = srv.result(&a.task_id).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["result_data"]["round"], round);
        assert!(
            v["result_data"]["blob"].as_str() == Some(blob.as_str()),
            "round {round}: the large result was not stored intact"
        );
    }
    still_open(&mut r.ws).await;
}

#[tokio::test]
async fn a_message_flood_is_closed_with_1008_and_others_keep_working() {
    // Defaults: 100 messages/s sustained, bursts of 200.
    let srv = TestServer::start().await;
    let (_, cred_a) = srv.enrol("flood").await;
    let (_, cred_b) = srv.enrol("good").await;
    let mut a = ProtoRunner::connect(srv.addr, &cred_a, 1, &[]).await;
    let mut b = ProtoRunner::connect(srv.addr, &cred_b, 1, &[]).await;

    // A burst below the limit is fine.
    for i in 0..150 {
        a.send(progress_for("none", format!("{i}"))).await;
    }
    still_open(&mut a.ws).await;
    let started = std::time::Instant::now();
    let flood = tokio::spawn(async move {
        for i in 0..2000 {
            if a.ws
                .feed(Message::Text(
                    progress_for("none", format!("{i}")).to_json().into(),
                ))
                .await
                .is_err()
            {
                break;
            }
        }
        let _ = a.ws.flush().await;
        a
    });
    others_still_served(&srv, &mut b).await;
    let mut a = flood.await.unwrap();
    assert_eq!(close_code_of(&mut a.ws, 10).await, close_code::POLICY);
    println!("flood closed after {:?}", started.elapsed());
    others_still_served(&srv, &mut b).await;

    // Rate 0 turns the limit off.
    let srv = TestServer::start_with(|c| c.limits.runner_rate_per_s = 0).await;
    let (_, cred) = srv.enrol("fast").await;
    let mut r = ProtoRunner::connect(srv.addr, &cred, 1, &[]).await;
    for i in 0..2000 {
        r.ws.feed(Message::Text(
            progress_for("none", format!("{i}")).to_json().into(),
        ))
        .await
        .unwrap();
    }
    r.ws.flush().await.unwrap();
    still_open(&mut r.ws).await;
}

#[tokio::test]
async fn a_third_connection_per_credential_is_refused_with_429_before_the_upgrade() {
    let srv = TestServer::start().await;
    let (_, cred) = srv.enrol("r").await;
    let jwt = runner_jwt(&srv.url(""), &cred).await.unwrap();
    let first = ws_connect(srv.addr, Some(&jwt)).await.unwrap();
    let _second = ws_connect(srv.addr, Some(&jwt)).await.unwrap();

    let mut req = format!("ws://{}{}", srv.addr, dap_protocol::CONNECT_PATH)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {jwt}").parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 429);
            assert!(resp.headers().contains_key("retry-after"));
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "too_many_connections", "{body}");
        }
        other => panic!("third connection accepted: {:?}", other.map(|_| ())),
    }
    // Another runner is not affected.
    let (_, other) = srv.enrol("other").await;
    let _o = ProtoRunner::connect(srv.addr, &other, 1, &[]).await;

    // Closing one frees its place.
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match ws_connect(srv.addr, Some(&jwt)).await {
            Ok(_) => break,
            Err(429) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(st) => panic!("not freed: {st}"),
        }
    }
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_idle_timeout() {
    // A long heartbeat (no pings to answer) so only the idle timeout can end the link.
    let srv = TestServer::start_with(|c| {
        c.heartbeat = Duration::from_secs(60);
        c.limits.runner_idle_timeout = Duration::from_secs(1);
    })
    .await;
    let (_, cred) = srv.enrol("quiet").await;
    let jwt = runner_jwt(&srv.url(""), &cred).await.unwrap();

    // Silent before the greeting: 4003 after the (shorter) idle timeout.
    let mut ws = ws_connect(srv.addr, Some(&jwt)).await.unwrap();
    let t = std::time::Instant::now();
    assert_eq!(close_code_of(&mut ws, 5).await, close_code::EXPECTED_HELLO);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    // Silent after it: 4005.
    let mut ws = ws_connect(srv.addr, Some(&jwt)).await.unwrap();
    let hello = RunnerMessage::Hello(dap_protocol::Hello {
        protocol_version: PROTOCOL_VERSION,
        name: "quiet".into(),
        version: "test".into(),
        slots: 1,
        operations: vec![1],
        datasets: vec![],
        running: vec![],
    });
    ws.send(Message::Text(hello.to_json().into()))
        .await
        .unwrap();
    assert!(matches!(
        next_server_message(&mut ws, 5).await,
        Some(ServerMessage::Welcome { .. })
    ));
    let t = std::time::Instant::now();
    assert_eq!(close_code_of(&mut ws, 5).await, close_code::IDLE_TIMEOUT);
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

#[tokio::test]
async fn sse_tickets_are_capped_per_ticket_and_forged_ones_refused() {
    let srv = TestServer::start().await;
    let ticket = |srv: &TestServer| {
        let srv_key = srv.read_key.clone();
        let url = srv.url("/api/v1/sse-tickets");
        async move {
            let v: Value = reqwest::Client::new()
                .post(url)
                .bearer_auth(srv_key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["ticket"].as_str().unwrap().to_owned()
        }
    };
    let tk = ticket(&srv).await;
    let open = |tk: &str| {
        srv.http
            .get(srv.url(&format!("/api/v1/events?ticket={tk}")))
            .send()
    };
    let mut streams = Vec::new();
    for _ in 0..4 {
        let r = open(&tk).await.unwrap();
        assert_eq!(r.status(), 200);
        streams.push(r);
    }
    let r = open(&tk).await.unwrap();
    assert_eq!(r.status(), 429);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_connections", "{body}");
    // Another ticket (and an API key) still get in.
    let other = ticket(&srv).await;
    assert_eq!(open(&other).await.unwrap().status(), 200);
    let r = srv
        .http
        .get(srv.url("/api/v1/events"))
        .bearer_auth(&srv.read_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Closing a stream gives its place back.
    drop(streams.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let started = std::time::Instant::now();
    loop {
        let r = open(&tk).await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert_eq!(r.status(), 429);
        assert!(
            tokio::time::Instant::now() < deadline,
            "place not given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("SSE place freed after {:?}", started.elapsed());

    // Forged tickets: payload edited (signature no longer matches), alg none, other key.
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = tk.split('.').collect();
    let mut payload: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    payload["exp"] = json!(payload["exp"].as_i64().unwrap() + 100_000);
    let edited = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(payload.to_string()),
        parts[2]
    );
    let none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        parts[1]
    );
    let foreign = {
        let other_srv = TestServer::start().await;
        other_srv
            .state
            .jwt
            .issue(TokenKind::SseTicket, "k", 60, None)
    };
    let expired = srv.state.jwt.issue(TokenKind::SseTicket, "k", -100, None);
    for (what, bad) in [
        ("edited", edited),
        ("alg none", none),
        ("other server's key", foreign),
        ("expired", expired),
    ] {
        let r = open(&bad).await.unwrap();
        assert_eq!(r.status(), 401, "{what}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
    }
}
