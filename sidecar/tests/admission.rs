//! Admission control under a reconnect storm, and clients that misbehave.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ballast_fleet::agents::Fleet;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_beyond_max_connections_is_refused_before_any_handshake() {
    let _serial = serial().await;
    let pod = TestPod::start(&["--max-connections", "5"]).await;
    let TestPod { pki, sidecar, .. } = &pod;
    let fleet = Fleet::start(fleet_config(sidecar.listen, 5, &pki.ca.cert_pem())).unwrap();
    fleet
        .wait_connected(5, Duration::from_secs(20))
        .await
        .unwrap();

    // The sixth connection is closed before it sends a byte: no handshake was attempted.
    let mut extra = TcpStream::connect(sidecar.listen).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 16];
    let started = Instant::now();
    let n = extra.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the sidecar should close without sending anything");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        sidecar.metric("ballast_sidecar_connections_refused_total{reason=\"max_connections\"}"),
        1.0
    );
    let summary = fleet.stop().await;
    assert_eq!(summary.disconnects, 0);
}

/// Without the queue, 230 of these 300 were refused (a 0.1 s burst of the default 500/s) and,
/// as real clients do, would have backed off and come back seconds later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_agents_arriving_at_once_at_default_limits_all_get_in_without_retrying() {
    let _serial = serial().await;
    let pod = TestPod::start(&[]).await;
    let TestPod { pki, sidecar, .. } = &pod;
    let dir = TempDir::new("burst");
    let ca = dir.0.join("ca.crt");
    std::fs::write(&ca, pki.ca.cert_pem()).unwrap();
    let args = vec![
        sidecar.listen.ip().to_string(),
        sidecar.listen.port().to_string(),
        path_str(&ca).to_owned(),
        "300".to_owned(),
    ];
    let stdout = python_client("burst.py", args).await;
    let outcome: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    eprintln!("300 at once: {outcome}");
    assert_eq!(outcome["ok"], 300, "{outcome}");
    let refused: f64 = ["max_connections", "handshake_rate"]
        .iter()
        .map(|r| {
            sidecar.metric(&format!(
                "ballast_sidecar_connections_refused_total{{reason=\"{r}\"}}"
            ))
        })
        .sum();
    assert_eq!(refused, 0.0);
    // They waited their turn: all 300 went through the queue, at the pace of the rate.
    assert_eq!(
        sidecar.metric("ballast_sidecar_handshake_wait_seconds_count"),
        300.0
    );
    assert_eq!(sidecar.metric("ballast_sidecar_waiting_for_handshake"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_at_10x_the_handshake_rate_is_admitted_at_that_rate_and_heartbeats_keep_flowing() {
    let _serial = serial().await;
    let rate = 100.0;
    let pod = TestPod::start(&["--max-handshakes-per-second", "100"]).await;
    let TestPod { pki, sidecar, .. } = &pod;

    // Established agents, heartbeating every 100 ms; their round trips are what we protect.
    let mut steady = fleet_config(sidecar.listen, 50, &pki.ca.cert_pem());
    steady.heartbeat = Duration::from_millis(100);
    let steady = Fleet::start(steady).unwrap();
    steady
        .wait_connected(50, Duration::from_secs(20))
        .await
        .unwrap();
    let steady_before = steady.stats();

    // The storm: 3,000 agents arriving over 3 s, i.e. 1,000 handshakes/s against a limit of 100.
    let mut storm = fleet_config(sidecar.listen, 3000, &pki.ca.cert_pem());
    storm.ramp = Duration::from_secs(3);
    storm.backoff_base = Duration::from_millis(200);
    storm.backoff_cap = Duration::from_secs(2);
    let accepted_before = sidecar.metric("ballast_sidecar_connections_accepted_total");
    // The storm's clients get a runtime (a thread) of their own: on the test's runtime their
    // thousands of connect attempts would queue ahead of the steady agents' heartbeats, and
    // the p99 below would measure this test process instead of the sidecar.
    let storm_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let storm = {
        let _on_storm_runtime = storm_runtime.enter();
        Fleet::start(storm).unwrap()
    };
    let window = Duration::from_secs(6);
    tokio::time::sleep(window).await;
    let accepted = sidecar.metric("ballast_sidecar_connections_accepted_total") - accepted_before;
    let refused =
        sidecar.metric("ballast_sidecar_connections_refused_total{reason=\"handshake_rate\"}");
    let admitted_rate = accepted / window.as_secs_f64();
    eprintln!("storm: {accepted} admitted in {window:?} ({admitted_rate:.0}/s), {refused} refused");
    // The bucket allows its rate plus a 0.1 s burst; clients that back off may leave a little
    // of the budget unused.
    assert!(
        admitted_rate <= rate * 1.15,
        "admitted {admitted_rate:.0}/s"
    );
    assert!(
        admitted_rate >= rate * 0.7,
        "admitted only {admitted_rate:.0}/s"
    );
    assert!(
        refused > 1000.0,
        "only {refused} refused: the storm did not hit the limit"
    );

    let storm_summary = storm.stop().await;
    let steady_summary = steady.stop().await;
    eprintln!(
        "steady agents' heartbeat RTT during the storm: p50 {} ms, p99 {} ms, max {} ms",
        steady_summary.heartbeat_rtt_ms.p50,
        steady_summary.heartbeat_rtt_ms.p99,
        steady_summary.heartbeat_rtt_ms.max
    );
    assert_eq!(steady_summary.disconnects, 0, "{}", brief(&steady_summary));
    assert!(steady_summary.pongs > steady_before.pongs + 50 * 50);
    assert!(
        steady_summary.heartbeat_rtt_ms.p99 < 50.0,
        "p99 {} ms",
        steady_summary.heartbeat_rtt_ms.p99
    );
    assert!(storm_summary.total_handshake_failures() > 0);
    storm_runtime.shutdown_background();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_garbage_clients_are_cut_and_nobody_else_notices() {
    let _serial = serial().await;
    let pod = TestPod::start(&["--handshake-timeout", "1s"]).await;
    let TestPod { pki, sidecar, .. } = &pod;
    let fleet = Fleet::start(fleet_config(sidecar.listen, 100, &pki.ca.cert_pem())).unwrap();
    fleet
        .wait_connected(100, Duration::from_secs(20))
        .await
        .unwrap();

    // Slowloris: a valid-looking TLS record header, then a byte every 300 ms, forever.
    let listen = sidecar.listen;
    let slow = std::thread::spawn(move || {
        let mut s = TcpStream::connect(listen).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let started = Instant::now();
        let _ = s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]);
        loop {
            if s.write_all(&[0x01]).is_err() {
                break started.elapsed();
            }
            let mut b = [0u8; 64];
            match s.read(&mut b) {
                Ok(0) => break started.elapsed(),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break started.elapsed(),
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "slowloris never cut"
            );
        }
    });

    // Garbage: plain HTTP at a TLS port.
    let mut g = TcpStream::connect(sidecar.listen).unwrap();
    g.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    g.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut sink = Vec::new();
    let started = Instant::now();
    let _ = g.read_to_end(&mut sink);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "garbage client not cut promptly"
    );
    // Whatever came back is at most a TLS alert, never gateway data.
    assert!(sink.len() <= 7, "garbage client got {} bytes", sink.len());

    let slow_cut_after = slow.join().unwrap();
    assert!(
        slow_cut_after >= Duration::from_millis(900) && slow_cut_after < Duration::from_secs(3),
        "slowloris cut after {slow_cut_after:?}"
    );
    assert_eq!(
        sidecar.metric("ballast_sidecar_connections_closed_total{cause=\"timeout\"}"),
        1.0
    );
    assert_eq!(
        sidecar.metric("ballast_sidecar_connections_closed_total{cause=\"error\"}"),
        1.0
    );
    let summary = fleet.stop().await;
    assert_eq!(summary.disconnects, 0, "{}", brief(&summary));
    assert!(summary.pongs > 0);
}

/// Under an open-file limit too small for `--max-connections`, the sidecar clamps it (two
/// descriptors per agent, 128 kept for the rest) and says so: agents beyond it are refused
/// cleanly before the handshake instead of running the process out of descriptors, and the
/// agents it holds keep heartbeating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_is_clamped_to_the_open_file_limit() {
    let _serial = serial().await;
    let pki = Pki::new();
    let cert = pki.issue();
    let volume = SecretVolume::new(&cert.cert_pem, &cert.key_pem);
    let gateway = Gateway::start("pod-0").await;
    // (256 − 128) / 2 = 64 agents.
    let sidecar = Sidecar::start_with_open_files(&volume, gateway.addr, &[], Some(256));
    assert!(
        sidecar.log_text().contains("clamped"),
        "{}",
        sidecar.log_text()
    );
    assert_eq!(sidecar.status()["limits"]["max_connections"], 64);
    let mut config = fleet_config(sidecar.listen, 100, &pki.ca.cert_pem());
    config.backoff_base = Duration::from_millis(500);
    config.backoff_cap = Duration::from_secs(2);
    let fleet = Fleet::start(config).unwrap();
    sidecar.wait_for(Duration::from_secs(30), |s| {
        s.metric("ballast_sidecar_connections_refused_total{reason=\"max_connections\"}") >= 10.0
    });
    let connected = fleet.stats().connected;
    assert!(connected <= 64, "{connected} connected past the clamp");
    // The ones it holds keep heartbeating.
    let pongs = fleet.stats().pongs;
    let start = std::time::Instant::now();
    while fleet.stats().pongs < pongs + 2 * connected as u64 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "heartbeats stalled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, _) = sidecar.get("/healthz").unwrap();
    assert_eq!(code, 200);
    fleet.stop().await;
}
