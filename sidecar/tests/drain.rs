//! Paced drains through the admin API and on SIGTERM.

mod common;

use std::time::{Duration, Instant};

use ballast_fleet::agents::Fleet;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_500_of_1000_over_5_seconds_closes_exactly_500_gracefully_and_evenly() {
    let _serial = serial().await;
    let pod = TestPod::start(&["--max-handshakes-per-second", "5000"]).await;
    let TestPod { pki, sidecar, .. } = &pod;
    let fleet = Fleet::start(fleet_config(sidecar.listen, 1000, &pki.ca.cert_pem())).unwrap();
    fleet
        .wait_connected(1000, Duration::from_secs(60))
        .await
        .unwrap();

    // A drain from a non-loopback-looking caller is not possible here; check the API refuses
    // nonsense with a clear message first.
    let (code, body) = http(
        sidecar.admin,
        "POST",
        "/drain",
        Some(r#"{"connections":"half"}"#),
        None,
    )
    .unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("over_seconds"), "{body}");
    // Everything at once is the storm a drain exists to prevent.
    let (code, body) = http(
        sidecar.admin,
        "POST",
        "/drain",
        Some(r#"{"connections": 500, "over_seconds": 0}"#),
        None,
    )
    .unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("at least 1"), "{body}");
    assert_eq!(fleet.stats().graceful_closes, 0, "nothing closed");

    let started = fleet.stats();
    let (code, body) = http(
        sidecar.admin,
        "POST",
        "/drain",
        Some(r#"{"connections": 500, "over_seconds": 5}"#),
        None,
    )
    .unwrap();
    assert_eq!(code, 202, "{body}");
    let drain_start = Instant::now();
    let accepted: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(accepted["target"], 500);

    // Paced: the 500th close comes about 5 s after the first, not sooner.
    let drained = "ballast_sidecar_connections_closed_total{cause=\"drain\"}";
    sidecar.wait_for(Duration::from_secs(30), |s| s.metric(drained) >= 500.0);
    let took = drain_start.elapsed();
    assert!(
        took >= Duration::from_millis(4_500),
        "500 closes in {took:?}"
    );
    fleet
        .wait_connected(1000, Duration::from_secs(30))
        .await
        .unwrap();
    let summary = fleet.stop().await;

    assert_eq!(started.graceful_closes, 0);
    assert_eq!(summary.graceful_closes, 500, "{}", brief(&summary));
    assert_eq!(summary.abrupt_closes, 0);
    assert_eq!(summary.false_offline, 0);
    assert!(summary.reconnects >= 500);
    assert_eq!(
        sidecar.metric("ballast_sidecar_connections_closed_total{cause=\"drain\"}"),
        500.0
    );

    // Even spread over the whole window: every 1 s window that starts at a close holds at
    // most twice its share (100 per second), and every one that fits in the span at least
    // 40 % of it.
    let times = &summary.graceful_close_times_seconds;
    let first = times[0];
    let last = times[times.len() - 1];
    let span = last - first;
    assert!((4.0..6.0).contains(&span), "closes spanned {span:.2}s");
    for &lo in times {
        let n = times.iter().filter(|t| **t >= lo && **t < lo + 1.0).count();
        assert!(n <= 200, "{n} closes in the second after {lo:.2}s");
        if lo + 1.0 <= last {
            assert!(n >= 40, "only {n} closes in the second after {lo:.2}s");
        }
    }
    let status = sidecar.status();
    assert_eq!(status["draining"], serde_json::Value::Null);
    assert_eq!(sidecar.metric("ballast_sidecar_draining"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_drain_cancels_and_nothing_more_closes() {
    let _serial = serial().await;
    let pod = TestPod::start(&[]).await;
    let TestPod { pki, sidecar, .. } = &pod;
    let fleet = Fleet::start(fleet_config(sidecar.listen, 100, &pki.ca.cert_pem())).unwrap();
    fleet
        .wait_connected(100, Duration::from_secs(30))
        .await
        .unwrap();
    let (code, _) = http(
        sidecar.admin,
        "POST",
        "/drain",
        Some(r#"{"connections": "all", "over_seconds": 10}"#),
        None,
    )
    .unwrap();
    assert_eq!(code, 202);
    let drained = "ballast_sidecar_connections_closed_total{cause=\"drain\"}";
    sidecar.wait_for(Duration::from_secs(10), |s| s.metric(drained) >= 10.0);
    let (code, body) = http(sidecar.admin, "DELETE", "/drain", None, None).unwrap();
    assert_eq!(code, 200, "{body}");
    let progress: serde_json::Value = serde_json::from_str(&body).unwrap();
    let asked = progress["asked"].as_u64().unwrap();
    assert!(
        (10..50).contains(&asked),
        "asked {asked} when cancelled, about a second into a 100-over-10s drain"
    );
    assert!(progress["closed"].as_u64().unwrap() <= asked, "{progress}");
    // The whole window in which the drain would have gone on closing: 2 s, 20 more closes.
    // Those it asked for close; nothing more does.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sidecar.metric(drained), asked as f64);
    let (code, _) = http(sidecar.admin, "DELETE", "/drain", None, None).unwrap();
    assert_eq!(code, 404);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_require_the_token_when_one_is_configured() {
    let _serial = serial().await;
    let pki = Pki::new();
    let cert = pki.issue();
    let volume = SecretVolume::new(&cert.cert_pem, &cert.key_pem);
    let dir = TempDir::new("token");
    let token_file = dir.0.join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let gateway = Gateway::start("pod-0").await;
    let sidecar = Sidecar::start(
        &volume,
        gateway.addr,
        &["--admin-token-file", path_str(&token_file)],
    );
    let body = Some(r#"{"connections": 1, "over_seconds": 1}"#);
    let (code, _) = http(sidecar.admin, "POST", "/drain", body, None).unwrap();
    assert_eq!(code, 401);
    let (code, _) = http(sidecar.admin, "POST", "/drain", body, Some("wrong")).unwrap();
    assert_eq!(code, 401);
    let (code, _) = http(sidecar.admin, "POST", "/drain", body, Some("s3cret")).unwrap();
    assert_eq!(code, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_readiness_at_once_drains_over_the_window_and_exits_zero() {
    let _serial = serial().await;
    let mut pod = TestPod::start(&["--shutdown-drain", "3s"]).await;
    let TestPod { pki, sidecar, .. } = &mut pod;
    let mut config = fleet_config(sidecar.listen, 300, &pki.ca.cert_pem());
    // Nowhere else to go: keep retries slow so the test measures the drain, not the retries.
    config.backoff_base = Duration::from_secs(5);
    let fleet = Fleet::start(config).unwrap();
    fleet
        .wait_connected(300, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(sidecar.get("/readyz").unwrap().0, 200);

    // The gateway's preStop hook, asked before the sidecar sees SIGTERM (the kubelet runs
    // hooks and signals concurrently): it must wait out the drain, then answer (or see the
    // sidecar exit, which also ends the hook).
    let admin = sidecar.admin;
    let hook = std::thread::spawn(move || {
        let r = http(admin, "GET", "/drained", None, None);
        (Instant::now(), r)
    });
    std::thread::sleep(Duration::from_millis(200));
    let term = Instant::now();
    sidecar.signal("TERM");
    sidecar.wait_for(Duration::from_millis(500), |s| {
        s.get("/readyz").map(|(c, _)| c == 503).unwrap_or(false)
    });
    let not_ready_after = term.elapsed();

    let exit = loop {
        if let Some(status) = sidecar.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            term.elapsed() < Duration::from_secs(15),
            "sidecar did not exit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let exited_after = term.elapsed();
    assert_eq!(exit.code(), Some(0), "log:\n{}", sidecar.log_text());
    assert!(not_ready_after < Duration::from_millis(500));
    assert!(
        exited_after >= Duration::from_millis(2500) && exited_after < Duration::from_secs(8),
        "exited after {exited_after:?}"
    );

    let (answered, reply) = hook.join().unwrap();
    let waited = answered.duration_since(term);
    assert!(
        waited >= Duration::from_millis(2500) && waited <= exited_after + Duration::from_secs(1),
        "/drained answered {waited:?} after SIGTERM ({reply:?}); the sidecar exited after {exited_after:?}"
    );
    // 200, or the connection closed unanswered because the sidecar exited first.
    if let Ok((code, body)) = &reply {
        assert!(
            matches!((*code, body.as_str()), (200, "drained\n") | (0, "")),
            "{reply:?}"
        );
    }

    let summary = fleet.stop().await;
    assert_eq!(summary.graceful_closes, 300, "{}", brief(&summary));
    assert_eq!(summary.abrupt_closes, 0);
    let times = &summary.graceful_close_times_seconds;
    let span = times[times.len() - 1] - times[0];
    assert!((2.0..3.5).contains(&span), "closes spanned {span:.2}s");
    assert!(sidecar.log_text().contains("all connections drained"));
}
