//! The gateway going away and coming back.

mod common;

use std::time::Duration;

use ballast_fleet::agents::Fleet;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_logged_counted_and_agents_recover_when_it_returns() {
    let _serial = serial().await;
    let pki = Pki::new();
    let cert = pki.issue();
    let volume = SecretVolume::new(&cert.cert_pem, &cert.key_pem);
    let gateway_addr = free_addr(); // nothing listens here yet
    let sidecar = Sidecar::start(&volume, gateway_addr, &[]);
    sidecar.wait_for(Duration::from_secs(5), |s| {
        s.get("/readyz").map(|(c, _)| c == 503).unwrap_or(false)
    });
    let (_, why) = sidecar.get("/readyz").unwrap();
    assert!(why.contains("gateway unreachable"), "{why}");

    let mut config = fleet_config(sidecar.listen, 20, &pki.ca.cert_pem());
    config.backoff_base = Duration::from_millis(100);
    config.backoff_cap = Duration::from_millis(500);
    let fleet = Fleet::start(config).unwrap();
    // Every agent tried at least once and was closed for the gateway's absence.
    sidecar.wait_for(Duration::from_secs(15), |s| {
        s.metric("ballast_sidecar_connections_closed_total{cause=\"upstream\"}") >= 20.0
    });
    assert_eq!(fleet.stats().connected, 0);
    assert!(sidecar.metric("ballast_sidecar_upstream_connect_failures_total") >= 20.0);
    assert_eq!(sidecar.metric("ballast_sidecar_upstream_up"), 0.0);
    assert!(sidecar.log_text().contains("gateway unreachable"));
    // Closed without close_notify, so agents back off instead of hammering.
    assert_eq!(fleet.stats().graceful_closes, 0);

    let _gateway = Gateway::start_at(gateway_addr, "pod-0").await;
    fleet
        .wait_connected(20, Duration::from_secs(15))
        .await
        .unwrap();
    sidecar.wait_for(Duration::from_secs(5), |s| {
        s.get("/readyz").map(|(c, _)| c == 200).unwrap_or(false)
    });
    assert_eq!(sidecar.metric("ballast_sidecar_upstream_up"), 1.0);
    assert!(sidecar.log_text().contains("gateway reachable again"));
    let summary = fleet.stop().await;
    assert!(summary.pongs > 0);
    assert_eq!(summary.connected_at_end, 20);
}

/// A dial that fails while the gateway answers (here: every other dial, from a source address
/// of the wrong family) does not take the pod out of the Service: readiness stays 200 for the
/// whole run, because the probe finds the gateway at once and the failures never come three
/// in a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_failed_dials_do_not_fail_readiness() {
    let _serial = serial().await;
    let pki = Pki::new();
    let cert = pki.issue();
    let volume = SecretVolume::new(&cert.cert_pem, &cert.key_pem);
    let gateway = Gateway::start("pod-0").await;
    // `::1` cannot be the source of a connection to an IPv4 gateway: that dial fails locally,
    // before any packet; `127.0.0.1` works.
    let sidecar = Sidecar::start(
        &volume,
        gateway.addr,
        &["--upstream-sources", "127.0.0.1,::1"],
    );
    sidecar.wait_for(Duration::from_secs(5), |s| {
        s.get("/readyz").map(|(c, _)| c == 200).unwrap_or(false)
    });
    let mut config = fleet_config(sidecar.listen, 20, &pki.ca.cert_pem());
    // One agent every 100 ms: dials one at a time, so they alternate between the sources.
    config.ramp = Duration::from_secs(2);
    config.backoff_base = Duration::from_millis(50);
    config.backoff_cap = Duration::from_millis(200);
    let fleet = Fleet::start(config).unwrap();
    // Readiness, sampled every 20 ms until every agent is in.
    let start = std::time::Instant::now();
    let mut samples = 0;
    while fleet.stats().connected < 20 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "agents never all connected"
        );
        let (code, body) = sidecar.get("/readyz").unwrap();
        assert_eq!(
            code, 200,
            "readiness failed on single dial failures: {body}"
        );
        samples += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let failed = sidecar.metric("ballast_sidecar_upstream_connect_failures_total");
    assert!(failed >= 1.0, "no dial failed: the test proved nothing");
    assert_eq!(sidecar.metric("ballast_sidecar_upstream_up"), 1.0);
    assert!(samples > 0);
    fleet.stop().await;
}
