//! Peers that stop reading, fall silent or trickle: none of them can wedge a connection, a
//! drain or the admin API.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_fleet::agents::Fleet;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A gateway that writes to every connection as fast as it is read, counting the bytes.
struct Flood {
    addr: SocketAddr,
    written: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Flood {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let written = Arc::new(AtomicU64::new(0));
        let counter = written.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let chunk = vec![b'x'; 64 * 1024];
                    while socket.write_all(&chunk).await.is_ok() {
                        counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    }
                });
            }
        });
        Self {
            addr,
            written,
            task,
        }
    }

    /// Waits until the bytes written stop growing: every buffer between the gateway and the
    /// client that does not read is full.
    async fn wait_stalled(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = u64::MAX;
        loop {
            let now = self.written.load(Ordering::Relaxed);
            if now > 1 << 20 && now == last {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the flood never stalled ({now} bytes)"
            );
            last = now;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn closed(sidecar: &Sidecar, cause: &str) -> f64 {
    sidecar.metric(&format!(
        "ballast_sidecar_connections_closed_total{{cause=\"{cause}\"}}"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_finishes_on_time_with_a_peer_that_stopped_reading() {
    let _serial = serial().await;
    let pki = Pki::new();
    let cert = pki.issue();
    let volume = SecretVolume::new(&cert.cert_pem, &cert.key_pem);
    let flood = Flood::start().await;
    // The default write timeout (30 s) is far beyond this test's wait: only the drain's own
    // close can end the connection in time.
    let sidecar = Sidecar::start(&volume, flood.addr, &[]);
    let _stalled = tls_connect(sidecar.listen, &pki.ca.cert_pem()).await;
    flood.wait_stalled().await;
    assert_eq!(sidecar.metric("ballast_sidecar_connections"), 1.0);

    let asked = Instant::now();
    let (code, body) = http(
        sidecar.admin,
        "POST",
        "/drain",
        Some(r#"{"connections": "all", "over_seconds": 1}"#),
        None,
    )
    .unwrap();
    assert_eq!(code, 202, "{body}");
    sidecar.wait_for(Duration::from_secs(10), |s| {
        s.metric("ballast_sidecar_connections") == 0.0
    });
    let took = asked.elapsed();
    assert_eq!(closed(&sidecar, "drain"), 1.0);
    let status = sidecar.status();
    assert_eq!(status["draining"], serde_json::Value::Null, "{status}");
    // The close waits at most its linger (2 s) on a peer that does not answer.
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_is_cut_after_the_write_timeout() {
    let _serial = serial().await;
    let pki = Pki::new();
    let cert = pki.issue();
    let volume = SecretVolume::new(&cert.cert_pem, &cert.key_pem);
    let flood = Flood::start().await;
    let sidecar = Sidecar::start(&volume, flood.addr, &["--write-timeout", "2s"]);
    let _stalled = tls_connect(sidecar.listen, &pki.ca.cert_pem()).await;
    let start = Instant::now();
    sidecar.wait_for(Duration::from_secs(30), |s| closed(s, "timeout") == 1.0);
    // Not before the writes could have stalled for 2 s.
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(sidecar.metric("ballast_sidecar_connections"), 0.0);
    // Nobody else was touched: a new agent is served.
    assert_eq!(closed(&sidecar, "error"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_the_idle_timeout_and_heartbeats_are_not() {
    let _serial = serial().await;
    let pod = TestPod::start(&["--idle-timeout", "2s"]).await;
    let TestPod { pki, sidecar, .. } = &pod;
    // Agents that PING every 500 ms are never idle for 2 s.
    let fleet = Fleet::start(fleet_config(sidecar.listen, 20, &pki.ca.cert_pem())).unwrap();
    fleet
        .wait_connected(20, Duration::from_secs(30))
        .await
        .unwrap();
    let mut silent = tls_connect(sidecar.listen, &pki.ca.cert_pem()).await;
    let start = Instant::now();
    // The sidecar closes it with close_notify: a clean end of stream for the client.
    let mut sink = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(15), silent.read(&mut sink))
        .await
        .expect("closed within 15 s");
    assert!(matches!(read, Ok(0)), "{read:?}");
    let after = start.elapsed();
    assert!(
        after >= Duration::from_millis(1_900),
        "closed after {after:?}"
    );
    // Counted once the close is over (the sidecar lingers for the client's own close).
    sidecar.wait_for(Duration::from_secs(5), |s| closed(s, "timeout") == 1.0);
    // Over that whole window, no heartbeating agent was closed.
    let summary = fleet.stop().await;
    assert_eq!(summary.disconnects, 0, "{}", brief(&summary));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_admin_callers_are_capped_and_cut() {
    let _serial = serial().await;
    let pod = TestPod::start(&[]).await;
    let sidecar = &pod.sidecar;
    // 64 callers that connect and send nothing take every admin slot...
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(TcpStream::connect(sidecar.admin).await.unwrap());
    }
    // ...so the next one is closed at once, without an answer.
    let mut extra = TcpStream::connect(sidecar.admin).await.unwrap();
    let _ = extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), extra.read_to_end(&mut answer)).await;
    assert!(
        matches!(read, Ok(Ok(_)) | Ok(Err(_))) && answer.is_empty(),
        "{read:?} {answer:?}"
    );
    // The header-read timeout (10 s) cuts every idle caller.
    let start = Instant::now();
    for mut conn in idle {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut buf))
            .await
            .expect("an idle admin caller is cut");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    assert!(start.elapsed() < Duration::from_secs(20));
    // Then the API answers again, and says how many it turned away.
    let (code, _) = sidecar.get("/healthz").unwrap();
    assert_eq!(code, 200);
    assert!(sidecar.metric("ballast_sidecar_admin_connections_refused_total") >= 1.0);
}
