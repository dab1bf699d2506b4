//! The `dap-runner` binary's behaviour on bad input and on a refused credential: a clear
//! message on stderr, the documented exit code, and never the token in any output.
//! (The WebSocket session itself is tested end-to-end against the real server elsewhere.)

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

const TOKEN: &str = "dapr_test_SECRET_do_not_print";

fn runner(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dap-runner"));
    for var in [
        "DAP_SERVER",
        "DAP_RUNNER_TOKEN",
        "DAP_RUNNER_DATASETS",
        "DAP_RUNNER_SLOTS",
        "DAP_RUNNER_NAME",
        "DAP_RUNNER_CONFIG",
        "DAP_RUNNER_CA_CERT",
    ] {
        cmd.env_remove(var);
    }
    cmd.args(args).output().expect("run dap-runner")
}

fn sample_csv() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/data/sales.csv")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_no_token(o: &Output) {
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(o));
    assert!(!all.contains(TOKEN), "token leaked: {all}");
}

#[test]
fn missing_server_is_a_usage_error() {
    let o = runner(&["--token", TOKEN]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("error: no server URL"),
        "{}",
        stderr(&o)
    );
    assert_no_token(&o);
}

/// Start a runner with one `--dataset` declaration; it must refuse it before connecting:
/// exit 2, a message holding every one of `needles`, no token printed.
fn refused_declaration(declaration: &str, needles: &[&str]) {
    let o = runner(&[
        "--server",
        "http://127.0.0.1:9",
        "--token",
        TOKEN,
        "--dataset",
        declaration,
    ]);
    assert_eq!(o.status.code(), Some(2), "{declaration}: {}", stderr(&o));
    for needle in needles {
        assert!(stderr(&o).contains(needle), "{declaration}: {}", stderr(&o));
    }
    assert_no_token(&o);
}

#[test]
fn bad_dataset_declarations_fail_before_connecting() {
    refused_declaration("sales=/definitely/not/here.csv", &["dataset `sales`"]);
    refused_declaration("sales=./x.csv:xlsx", &["unknown format `xlsx`"]);
    // A decimal comma in a comma-separated file cannot be read: refused at start.
    refused_declaration(
        &format!("sales={}:decimal=comma", sample_csv().display()),
        &["dataset `sales`", "decimal comma"],
    );
}

#[test]
fn a_bad_ca_cert_is_a_usage_error() {
    let o = runner(&[
        "--server",
        "https://127.0.0.1:9",
        "--token",
        TOKEN,
        "--ca-cert",
        "/definitely/not/here.pem",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--ca-cert"), "{}", stderr(&o));
    assert_no_token(&o);

    // A file without a certificate in it.
    let o = runner(&[
        "--server",
        "https://127.0.0.1:9",
        "--token",
        TOKEN,
        "--ca-cert",
        sample_csv().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no PEM certificate"), "{}", stderr(&o));

    // A CA for a plain-http server is a mistake worth pointing out.
    let o = runner(&[
        "--server",
        "http://127.0.0.1:9",
        "--token",
        TOKEN,
        "--ca-cert",
        sample_csv().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("https://"), "{}", stderr(&o));
}

#[test]
fn help_does_not_show_the_token_from_the_environment() {
    let o = Command::new(env!("CARGO_BIN_EXE_dap-runner"))
        .arg("--help")
        .env("DAP_RUNNER_TOKEN", TOKEN)
        .output()
        .expect("run dap-runner");
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("DAP_RUNNER_TOKEN"));
    assert_no_token(&o);
}

/// A plain HTTP responder that refuses the token exchange with 401: the runner must stop with
/// exit code 3 and not retry, and must have sent the credential only as a bearer header.
#[test]
fn a_refused_credential_stops_the_runner() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        // Read the head (the POST has no body).
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        conn.write_all(
            b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        )
        .ok();
        String::from_utf8_lossy(&request).into_owned()
    });

    let data = sample_csv();
    let dataset = format!("sales={}", data.display());
    let o = runner(&[
        "--server",
        &format!("http://{addr}"),
        "--token",
        TOKEN,
        "--dataset",
        &dataset,
    ]);
    let request = server.join().expect("server thread");
    assert!(
        request.starts_with("POST /api/v1/runners/token HTTP/1.1"),
        "{request}"
    );
    assert!(
        request.to_ascii_lowercase().contains(&format!(
            "authorization: bearer {}",
            TOKEN.to_ascii_lowercase()
        )),
        "{request}"
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("refused the runner token"),
        "{}",
        stderr(&o)
    );
    assert_no_token(&o);
}
