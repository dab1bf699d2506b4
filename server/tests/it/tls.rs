//! HTTPS served by the server itself (`--tls-cert/--tls-key`): a self-signed certificate made
//! with rcgen, a client trusting it, clients that do not, a stalled handshake that must not hold
//! up others, and typed errors for unusable PEM files. (The real runner over `wss://` is tested in
//! the runner's e2e suite.)

use std::time::Duration;

use dap_server::tls::{server_config, TlsError, TlsListener};
use dap_server::{build_state, serve, ServeConfig};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use crate::common::temp_dir;

#[tokio::test]
async fn serves_https_and_a_stalled_handshake_does_not_block_others() {
    let dir = temp_dir("tls");
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let (cert_pem, key_pem) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_pem, cert.cert.pem()).unwrap();
    std::fs::write(&key_pem, cert.key_pair.serialize_pem()).unwrap();
    let state = build_state(&ServeConfig::for_dir(&dir)).await.unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = TlsListener::new(tcp, server_config(&cert_pem, &key_pem).unwrap()).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state.clone(), async {
        let _ = stopped.await;
    }));

    // A client that connects and never says anything (nor finishes a handshake).
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap();

    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let r = https
        .get(format!("https://127.0.0.1:{}/healthz", addr.port()))
        .send()
        .await
        .expect("served while another handshake stalls");
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], "ok");

    // Not trusted without the CA.
    let e = reqwest::Client::new()
        .get(format!("https://127.0.0.1:{}/healthz", addr.port()))
        .send()
        .await
        .unwrap_err();
    assert!(e.is_connect(), "{e:?}");

    drop(stalled);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("stops")
        .unwrap()
        .unwrap();
    state.store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unusable_pem_files_are_typed_errors() {
    let dir = temp_dir("tls-bad");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_pem, key_pem) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_pem, cert.cert.pem()).unwrap();
    std::fs::write(&key_pem, cert.key_pair.serialize_pem()).unwrap();

    let missing = dir.join("missing.pem");
    let e = server_config(&missing, &key_pem).unwrap_err();
    assert!(matches!(e, TlsError::Read { .. }), "{e}");
    assert!(e.to_string().contains("missing.pem"), "{e}");

    // The key file has no certificate; the certificate file has no key.
    let e = server_config(&key_pem, &key_pem).unwrap_err();
    assert!(matches!(e, TlsError::NoCertificate(_)), "{e}");
    let e = server_config(&cert_pem, &cert_pem).unwrap_err();
    assert!(matches!(e, TlsError::Read { .. }), "{e}");

    // A key that does not belong to the certificate.
    let other = rcgen::KeyPair::generate().unwrap();
    let other_pem = dir.join("other.pem");
    std::fs::write(&other_pem, other.serialize_pem()).unwrap();
    let e = server_config(&cert_pem, &other_pem).unwrap_err();
    assert!(matches!(e, TlsError::Config(_)), "{e}");

    assert!(server_config(&cert_pem, &key_pem).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}
