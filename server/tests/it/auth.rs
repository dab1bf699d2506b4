//! Who may do what: runner socket upgrades, REST scopes, and refusals that store nothing.

use std::time::Duration;

use base64::Engine;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::*;
use dap_server::auth::TokenKind;

#[tokio::test]
async fn socket_upgrade_refuses_every_bad_token_with_401() {
    let srv = TestServer::start().await;
    let (runner_id, cred) = srv.enrol("r1").await;
    let base = srv.url("");
    let good = runner_jwt(&base, &cred).await.unwrap();

    assert_eq!(
        ws_connect(srv.addr, None).await.err(),
        Some(401),
        "no token"
    );
    let expired = srv
        .state
        .jwt
        .issue(TokenKind::Runner, &runner_id, -300, None);
    assert_eq!(
        ws_connect(srv.addr, Some(&expired)).await.err(),
        Some(401),
        "expired"
    );

    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = good.split('.').collect();
    let mut payload: serde_json::Value =
        serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    payload["exp"] = json!(payload["exp"].as_i64().unwrap() + 100_000);
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(payload.to_string()),
        parts[2]
    );
    assert_eq!(
        ws_connect(srv.addr, Some(&tampered)).await.err(),
        Some(401),
        "tampered"
    );

    let none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        parts[1]
    );
    assert_eq!(
        ws_connect(srv.addr, Some(&none)).await.err(),
        Some(401),
        "alg none"
    );

    let ticket = srv
        .state
        .jwt
        .issue(TokenKind::SseTicket, &runner_id, 60, None);
    assert_eq!(
        ws_connect(srv.addr, Some(&ticket)).await.err(),
        Some(401),
        "SSE ticket"
    );
    assert_eq!(
        ws_connect(srv.addr, Some(&srv.admin_key)).await.err(),
        Some(401),
        "API key"
    );
    assert_eq!(
        ws_connect(srv.addr, Some(&cred)).await.err(),
        Some(401),
        "raw credential"
    );

    // A browser (Origin header) is refused even with a good token.
    let mut req = format!("ws://{}{}", srv.addr, dap_protocol::CONNECT_PATH)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {good}").parse().unwrap());
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("browser origin accepted: {:?}", other.map(|_| ())),
    }

    // The good token works; after revocation the same (unexpired) token does not.
    assert!(ws_connect(srv.addr, Some(&good)).await.is_ok());
    let r = srv
        .http
        .delete(srv.url(&format!("/api/v1/runners/{runner_id}")))
        .bearer_auth(&srv.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        ws_connect(srv.addr, Some(&good)).await.err(),
        Some(401),
        "revoked"
    );
    assert_eq!(
        runner_jwt(&base, &cred).await.err(),
        Some(401),
        "revoked credential"
    );
}

#[tokio::test]
async fn revoking_a_connected_runner_closes_its_socket_within_5s() {
    let srv = TestServer::start().await;
    let (runner_id, cred) = srv.enrol("r1").await;
    let mut runner = ProtoRunner::connect(srv.addr, &cred, 1, &[]).await;
    let (st, runners) = srv.get("/api/v1/runners", &srv.read_key).await;
    assert_eq!(st, 200);
    assert_eq!(runners["runners"][0]["state"], "idle");

    let started = std::time::Instant::now();
    let r = srv
        .http
        .delete(srv.url(&format!("/api/v1/runners/{runner_id}")))
        .bearer_auth(&srv.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The socket ends with close code 4001.
    let code = loop {
        use futures_util::StreamExt;
        match tokio::time::timeout(Duration::from_secs(5), runner.ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(f)))) => {
                break f.map(|f| u16::from(f.code))
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("socket not closed by a close frame: {other:?}"),
        }
    };
    assert_eq!(code, Some(dap_protocol::close_code::REVOKED));
    assert!(started.elapsed() < Duration::from_secs(5));
    let (_, runners) = srv.get("/api/v1/runners", &srv.read_key).await;
    assert!(runners["runners"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn rest_auth_and_validation_errors_are_typed_and_store_nothing() {
    let srv = TestServer::start().await;
    let before = srv.task_total().await;

    // No key, bad key → 401; read key on a write route → 403.
    let r = srv
        .http
        .post(srv.url("/api/v1/tasks"))
        .json(&json!({"operation_code": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let (st, _) = srv
        .post(
            "/api/v1/tasks",
            "dap_0000_notakeynotakeynotakey",
            json!({"operation_code": 1}),
        )
        .await;
    assert_eq!(st, 401);
    let (st, v) = srv
        .post("/api/v1/tasks", &srv.read_key, json!({"operation_code": 1}))
        .await;
    assert_eq!((st, v["error"]["code"].as_str()), (403, Some("forbidden")));
    let (st, _) = srv
        .post("/api/v1/runners", &srv.write_key, json!({"name": "x"}))
        .await;
    assert_eq!(st, 403, "enrolling runners needs admin");

    // Malformed JSON → 400.
    let r = srv
        .http
        .post(srv.url("/api/v1/tasks"))
        .bearer_auth(&srv.write_key)
        .header("content-type", "application/json")
        .body("{\"operation_code\": 1,,}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_json");
    assert!(body["error"]["message"].as_str().unwrap().len() > 5);

    let cases = [
        (
            json!({"operation_code": 150, "params": {"dataset": "a"}}),
            "unknown_operation",
        ),
        (json!({"operation_code": 70000}), "unknown_operation"),
        (
            json!({"operation_code": 100, "params": {}}),
            "missing_dataset",
        ),
        (json!({"operation_code": 200}), "missing_dataset"),
        (
            json!({"operation_code": 100, "params": {"dataset": "../etc/passwd"}}),
            "path_not_allowed",
        ),
        (
            json!({"operation_code": 100, "params": {"dataset": "/etc/passwd"}}),
            "path_not_allowed",
        ),
        (
            json!({"operation_code": 100, "params": {"dataset": "file:///etc/passwd"}}),
            "path_not_allowed",
        ),
        (
            json!({"operation_code": 100, "params": {"dataset": 5}}),
            "invalid_params",
        ),
        (
            json!({"operation_code": 100, "params": [1, 2]}),
            "invalid_params",
        ),
        (json!({"operation_code": "x"}), "invalid_request"),
        (json!({"params": {}}), "invalid_request"),
        (
            json!({"operation_code": 1, "bogus": true}),
            "invalid_request",
        ),
    ];
    for (body, code) in cases {
        let (st, v) = srv
            .post("/api/v1/tasks", &srv.write_key, body.clone())
            .await;
        assert_eq!(st, 422, "{body} → {v}");
        assert_eq!(v["error"]["code"], code, "{body} → {v}");
        assert!(v["error"]["message"].is_string());
    }
    // Unknown or offline target runner: typed, nothing stored.
    let (st, v) = srv
        .post(
            "/api/v1/tasks",
            &srv.write_key,
            json!({"operation_code": 1, "runner_id": "nope"}),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("runner_not_found"))
    );
    let (rid, _) = srv.enrol("offline-one").await;
    let (st, v) = srv
        .post(
            "/api/v1/tasks",
            &srv.write_key,
            json!({"operation_code": 1, "runner_id": rid}),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("runner_offline"))
    );

    assert_eq!(
        srv.task_total().await,
        before,
        "refused requests stored nothing"
    );
    assert_eq!(
        srv.state.store.last_event_id().await.unwrap(),
        0,
        "and logged no event"
    );

    // Unknown task → 404 typed; unknown route → 404 typed.
    let (st, v) = srv.get("/api/v1/tasks/nope", &srv.read_key).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("task_not_found"))
    );
    let (st, v) = srv.get("/api/v1/nothing-here", &srv.read_key).await;
    assert_eq!((st, v["error"]["code"].as_str()), (404, Some("not_found")));
    let (st, v) = srv.get("/api/v1/tasks?status=weird", &srv.read_key).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("invalid_query"))
    );
}

#[tokio::test]
async fn sse_needs_a_ticket_or_key_and_tickets_are_scoped() {
    let srv = TestServer::start().await;
    let r = srv
        .http
        .get(srv.url("/api/v1/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = srv
        .http
        .get(srv.url("/api/v1/events?ticket=garbage"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A runner socket token is not a ticket.
    let (rid, _) = srv.enrol("r").await;
    let jwt = srv.state.jwt.issue(TokenKind::Runner, &rid, 60, None);
    let r = srv
        .http
        .get(srv.url(&format!("/api/v1/events?ticket={jwt}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let expired = srv.state.jwt.issue(TokenKind::SseTicket, "k", -100, None);
    let r = srv
        .http
        .get(srv.url(&format!("/api/v1/events?ticket={expired}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A ticket scoped to one task may not read another's feed.
    let (_, t) = srv
        .post(
            "/api/v1/sse-tickets",
            &srv.read_key,
            json!({"task_id": "a"}),
        )
        .await;
    let tk = t["ticket"].as_str().unwrap();
    let r = srv
        .http
        .get(srv.url(&format!("/api/v1/events?ticket={tk}&task_id=b")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = srv
        .http
        .get(srv.url(&format!("/api/v1/events?ticket={tk}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = srv
        .http
        .get(srv.url("/api/v1/events"))
        .header("Last-Event-ID", "abc")
        .bearer_auth(&srv.read_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn root_and_health() {
    let srv = TestServer::start().await;
    let v: serde_json::Value = srv
        .http
        .get(srv.url("/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["name"], "dap-server");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let r = srv.http.get(srv.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// A cached API key is re-checked against its row when its entry is stale (so a revocation by
/// another process applies), without running argon2 again for the same key and hash.
#[tokio::test]
async fn a_stale_cached_api_key_is_rechecked_against_its_row_not_rehashed() {
    use dap_server::auth::{api_keys, ApiKeyVerifier, AuthError};
    use dap_server::events::EventBus;
    use dap_server::store::{Scope, Store};

    let dir = temp_dir("key-cache");
    let url = format!("sqlite://{}", dir.join("dap.db").display());
    let store = Store::open(&url, EventBus::new()).await.unwrap();
    let ttl = Duration::from_millis(50);
    let keys = ApiKeyVerifier::with_ttl(store.clone(), ttl);
    let (id, key) = api_keys::create_api_key(&store, "k", Scope::Write)
        .await
        .unwrap();

    assert_eq!(keys.verify(&key).await.unwrap().scope, Scope::Write);
    assert_eq!(keys.argon2_checks(), 1);
    keys.verify(&key).await.unwrap();
    tokio::time::sleep(ttl * 2).await;
    assert_eq!(
        keys.verify(&key).await.unwrap().key_id,
        id,
        "stale: row read"
    );
    assert_eq!(
        keys.argon2_checks(),
        1,
        "the same key and hash are not hashed again"
    );

    // Another secret under the same id is hashed, and refused.
    let mut wrong = key.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'a' { 'b' } else { 'a' });
    assert!(matches!(keys.verify(&wrong).await, Err(AuthError::Invalid)));
    assert_eq!(keys.argon2_checks(), 2);

    // Revoked behind the verifier's back (as the CLI does): refused once the entry is stale.
    assert!(store.revoke_api_key(&id).await.unwrap());
    tokio::time::sleep(ttl * 2).await;
    assert!(matches!(keys.verify(&key).await, Err(AuthError::Revoked)));
    assert!(matches!(keys.verify(&key).await, Err(AuthError::Revoked)));
    let _ = std::fs::remove_dir_all(&dir);
}
