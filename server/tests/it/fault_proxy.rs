//! A TCP fault proxy of our own between a runner and the server: passes bytes, black-holes
//! them (both ends' sockets stay open, nothing arrives: a half-open link), or cuts every
//! connection and refuses new ones. Shared by the server's fault tests (protocol-level runner)
//! and the runner's (the real runner), which includes this file by path.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const PASS: u8 = 0;
/// Bytes are read and dropped in both directions; both ends' sockets stay open.
pub const BLACK_HOLE: u8 = 1;
/// Every proxied connection is closed, and new ones are refused.
pub const CUT: u8 = 2;

/// A TCP proxy to `upstream` whose behaviour can be switched at any time.
pub struct FaultProxy {
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(PASS));
        let m = mode.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if m.load(Ordering::SeqCst) == CUT {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, m.clone()));
                tokio::spawn(pipe(sr, cw, m.clone()));
            }
        });
        Self { addr, mode, accept }
    }

    pub fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copy `from` → `to` while the mode allows; drop bytes when black-holed; stop when cut.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: Arc<AtomicU8>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            r = from.read(&mut buf) => r,
            // Notice a cut even while the peer is silent.
            _ = async {
                while mode.load(Ordering::SeqCst) != CUT {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            } => return,
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        match mode.load(Ordering::SeqCst) {
            PASS => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            BLACK_HOLE => {}
            _ => return,
        }
    }
}
