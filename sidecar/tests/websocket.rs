//! Reconnect hints to real WebSocket clients: a WebSocket gateway and its clients from the
//! `websockets` library (PyPI), the clients over TLS through the sidecar with Python's own TLS
//! stack. The gateway streams numbered messages to every client every 10 ms; a paced drain of
//! half of them: each drained client receives a close frame with code 1012 (service restart)
//! and reconnects at once, and every stream carried its messages whole and in order right up
//! to the close.

mod common;

use std::time::{Duration, Instant};

use common::*;

const AGENTS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_websocket_agents_get_close_1012_and_their_streams_stay_intact() {
    let _serial = serial().await;
    let pki = Pki::new();
    let cert = pki.issue();
    let volume = SecretVolume::new(&cert.cert_pem, &cert.key_pem);
    let gateway = free_addr();
    let sidecar = Sidecar::start(&volume, gateway, &["--protocol", "auto"]);
    let dir = TempDir::new("websocket");
    let ca = dir.0.join("ca.crt");
    std::fs::write(&ca, pki.ca.cert_pem()).unwrap();

    let mut fleet = Driven::python(
        "ws_fleet.py",
        &[
            gateway.port().to_string(),
            sidecar.listen.ip().to_string(),
            sidecar.listen.port().to_string(),
            path_str(&ca).to_owned(),
            AGENTS.to_string(),
        ],
    );
    let first = fleet.read_json();
    assert_eq!(
        first["connected"],
        AGENTS,
        "{first}\n{}",
        sidecar.log_text()
    );

    let body = Some(r#"{"connections": 10, "over_seconds": 2}"#);
    let (code, answer) = http(sidecar.admin, "POST", "/drain", body, None).unwrap();
    assert_eq!(code, 202, "{answer}");
    let hints = "ballast_sidecar_reconnect_hints_total{protocol=\"websocket\"}";
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(sidecar.metric(hints) == 10.0 && sidecar.status()["connections"] == AGENTS) {
        assert!(
            Instant::now() < deadline,
            "{} hints, status {}",
            sidecar.metric(hints),
            sidecar.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    fleet.say("report");
    let report = fleet.read_json();
    let context = format!("{report}\nsidecar log:\n{}", sidecar.log_text());
    assert_eq!(report["agents_hinted"], 10, "{context}");
    assert_eq!(
        report["closes"],
        serde_json::json!({"1012": 10}),
        "{context}"
    );
    assert_eq!(report["errors"], serde_json::json!({}), "{context}");
    assert_eq!(report["out_of_order"], 0, "{context}");
    assert_eq!(report["connects"], AGENTS + 10, "{context}");
    assert_eq!(report["connected"], AGENTS, "{context}");
    assert!(
        report["messages"].as_u64().unwrap() > 10 * AGENTS as u64,
        "{context}"
    );
    assert_eq!(
        sidecar.metric("ballast_sidecar_connections_closed_total{cause=\"drain\"}"),
        10.0
    );
}
