//! Artifacts: runners upload (streamed, capped, checksummed, fenced by attempt); clients list and
//! download with an API key or a signed URL.

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::common::*;

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn put(
    srv: &TestServer,
    jwt: &str,
    task: &str,
    name: &str,
    attempt: u32,
    body: Vec<u8>,
    checksum: Option<String>,
) -> (u16, serde_json::Value) {
    let mut req = srv
        .http
        .put(srv.url(&format!(
            "/api/v1/tasks/{task}/artifacts/{name}?attempt={attempt}"
        )))
        .bearer_auth(jwt)
        .header("content-type", "text/csv")
        .body(body);
    if let Some(c) = checksum {
        req = req.header("x-dap-sha256", c);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

#[tokio::test]
async fn upload_list_download_and_signed_url() {
    let srv = TestServer::start_with(|c| c.max_artifact_bytes = 64 * 1024).await;
    let (_, cred) = srv.enrol("r").await;
    let jwt = runner_jwt(&srv.url(""), &cred).await.unwrap();
    let mut r = ProtoRunner::connect(srv.addr, &cred, 1, &[]).await;
    let (_, v) = srv.create_task(json!({"operation_code": 1})).await;
    let id = v["task_id"].as_str().unwrap().to_owned();
    let a = r.next_assignment(5).await;

    let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let (st, v) = put(
        &srv,
        &jwt,
        &id,
        "output.csv",
        1,
        data.clone(),
        Some(sha(&data)),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["size"], 50_000);
    assert_eq!(v["sha256"], sha(&data).as_str());

    // Refusals, none of which stores anything.
    let (st, v) = put(
        &srv,
        &jwt,
        &id,
        "bad.csv",
        1,
        data.clone(),
        Some(sha(b"other")),
    )
    .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (422, Some("checksum_mismatch"))
    );
    let (st, v) = put(&srv, &jwt, &id, "nosum.csv", 1, data.clone(), None).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("missing_checksum"))
    );
    let big = vec![7u8; 70 * 1024];
    let (st, v) = put(&srv, &jwt, &id, "big.bin", 1, big.clone(), Some(sha(&big))).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (413, Some("artifact_too_large"))
    );
    // Without a Content-Length (chunked) the cap is enforced while streaming.
    let stream = futures_util::stream::iter(
        big.chunks(8192)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let resp = srv
        .http
        .put(srv.url(&format!("/api/v1/tasks/{id}/artifacts/big2.bin?attempt=1")))
        .bearer_auth(&jwt)
        .header("x-dap-sha256", sha(&big))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let (st, v) = put(&srv, &jwt, &id, "x.csv", 2, data.clone(), Some(sha(&data))).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("stale_attempt"))
    );
    let (st, _) = put(
        &srv,
        &jwt,
        &id,
        "../escape",
        1,
        data.clone(),
        Some(sha(&data)),
    )
    .await;
    assert!(
        st == 404 || st == 422,
        "a path in the name is refused ({st})"
    );
    let (st, _) = put(
        &srv,
        &srv.admin_key,
        &id,
        "y.csv",
        1,
        data.clone(),
        Some(sha(&data)),
    )
    .await;
    assert_eq!(st, 401, "an API key is not a runner token");

    let (st, list) = srv
        .get(&format!("/api/v1/tasks/{id}/artifacts"), &srv.read_key)
        .await;
    assert_eq!(st, 200);
    let names: Vec<&str> = list["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["output.csv"]);

    // Download with a read key: same bytes, checksum and type.
    let resp = srv
        .http
        .get(srv.url(&format!("/api/v1/tasks/{id}/artifacts/output.csv")))
        .bearer_auth(&srv.read_key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/csv");
    assert_eq!(resp.headers()["x-dap-sha256"].to_str().unwrap(), sha(&data));
    assert_eq!(resp.bytes().await.unwrap().to_vec(), data);
    let resp = srv
        .http
        .get(srv.url(&format!("/api/v1/tasks/{id}/artifacts/output.csv")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // A signed URL works without a key, only for that artifact, and not once expired.
    let (st, u) = srv
        .post(
            &format!("/api/v1/tasks/{id}/artifacts/output.csv/signed-url"),
            &srv.read_key,
            json!({}),
        )
        .await;
    assert_eq!(st, 200, "{u}");
    let url = u["url"].as_str().unwrap();
    let resp = srv.http.get(srv.url(url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().len(), 50_000);
    let other = url.replace("output.csv?", "other.csv?");
    assert_eq!(
        srv.http.get(srv.url(&other)).send().await.unwrap().status(),
        403
    );
    let expired = srv.state.jwt.issue(
        dap_server::auth::TokenKind::ArtifactDownload,
        &format!("{id}/output.csv"),
        -100,
        None,
    );
    let resp = srv
        .http
        .get(srv.url(&format!(
            "/api/v1/tasks/{id}/artifacts/output.csv?token={expired}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // The result lists the artifact; once the task is finished, uploads are refused.
    r.complete(&a, json!({"rows": 3})).await;
    srv.wait_status(&id, "completed", 5).await;
    let (_, res) = srv.result(&id).await;
    assert_eq!(res["artifacts"][0]["name"], "output.csv");
    assert_eq!(res["artifacts"][0]["size"], 50_000);
    let (st, _) = put(
        &srv,
        &jwt,
        &id,
        "late.csv",
        1,
        data.clone(),
        Some(sha(&data)),
    )
    .await;
    assert_eq!(st, 409);
    // Nothing half-written is left behind in the blob store's temp area.
    let tmp = srv.dir.join("blobs").join("tmp");
    assert_eq!(std::fs::read_dir(tmp).unwrap().count(), 0);
}
