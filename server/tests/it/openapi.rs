//! The OpenAPI document at `/api/v1/openapi.json` against the routes the app really serves:
//! every (method, path) the router answers is documented and every documented one is served,
//! and the error schema `{error: {code, message}}` is in it.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

use crate::common::TestServer;

const METHODS: [&str; 7] = ["get", "put", "post", "delete", "patch", "options", "head"];

/// The route paths of the router, read from its `Debug` output (axum lists the path of every
/// route there; it has no other public listing). Paths are the quoted strings that start with
/// `/`, less axum's internal fallback route.
fn served_paths(app: &axum::Router) -> BTreeSet<String> {
    let dbg = format!("{app:?}");
    let mut out = BTreeSet::new();
    for quoted in dbg.split('"').skip(1).step_by(2) {
        // axum registers its own catch-all for the fallback; it is not an API route.
        if quoted.starts_with('/') && !quoted.contains(' ') && !quoted.contains("__private__") {
            out.insert(quoted.to_owned());
        }
    }
    out
}

/// The methods `path` answers: a TRACE request (which no route serves) gets 405 with the
/// `Allow` header listing them. Path parameters are filled with a placeholder.
async fn served_methods(app: &axum::Router, path: &str) -> BTreeSet<String> {
    let concrete: String = path
        .split('/')
        .map(|seg| if seg.starts_with('{') { "x" } else { seg })
        .collect::<Vec<_>>()
        .join("/");
    let resp = app
        .clone()
        .oneshot(
            Request::builder()
                .method(Method::TRACE)
                .uri(&concrete)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::METHOD_NOT_ALLOWED,
        "TRACE {concrete} should be 405 (is {path} a route?)"
    );
    resp.headers()["allow"]
        .to_str()
        .unwrap()
        .split(',')
        .map(|m| m.trim().to_ascii_lowercase())
        // axum adds HEAD wherever there is GET.
        .filter(|m| !m.is_empty() && m != "head")
        .collect()
}

#[tokio::test]
async fn document_matches_the_routes() {
    let srv = TestServer::start().await;
    // Served without a key, as JSON.
    let r = srv
        .http
        .get(srv.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let doc: Value = r.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));

    let mut documented = BTreeSet::new();
    let mut operation_ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            if let Some(op) = item.get(m) {
                documented.insert((m.to_owned(), path.clone()));
                let id = op["operationId"].as_str().unwrap().to_owned();
                assert!(operation_ids.insert(id.clone()), "operationId {id} twice");
            }
        }
    }

    let app = dap_server::app(srv.state.clone());
    let paths = served_paths(&app);
    assert!(
        paths.contains("/api/v1/tasks") && paths.contains("/api/v1/runners/connect"),
        "could not read the routes from the router: {paths:?}"
    );
    let mut served = BTreeSet::new();
    for p in &paths {
        for m in served_methods(&app, p).await {
            served.insert((m, p.clone()));
        }
    }
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not documented: {undocumented:?}\ndocumented but not served: {unserved:?}"
    );
    assert!(served.len() >= 30, "{served:?}");
    assert!(served.contains(&("post".into(), "/api/v1/tasks".into())));

    // The error schema, and every 4xx of the task routes answering with it.
    let schemas = &doc["components"]["schemas"];
    let detail = &schemas["ErrorDetail"];
    for field in ["code", "message"] {
        assert_eq!(detail["properties"][field]["type"], "string", "{detail}");
        assert!(detail["required"]
            .as_array()
            .unwrap()
            .contains(&Value::from(field)));
    }
    assert_eq!(
        schemas["ErrorBody"]["properties"]["error"]["$ref"],
        "#/components/schemas/ErrorDetail"
    );
    let create = &doc["paths"]["/api/v1/tasks"]["post"];
    for status in ["400", "401", "403", "404", "409", "422"] {
        assert_eq!(
            create["responses"][status]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody",
            "POST /api/v1/tasks {status}"
        );
    }
    assert_eq!(
        create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/CreateTask"
    );
    assert!(doc["components"]["securitySchemes"]["api_key"].is_object());
}
