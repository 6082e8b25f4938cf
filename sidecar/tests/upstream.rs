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
