//! Session tickets sealed with a cluster's shared keys: an agent resumes on another sidecar of
//! the same cluster, not on another cluster's, not across a certificate renewal, and a bad key
//! file changes nothing. The client is Python's own TLS stack (OpenSSL), not ours.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ballast_contract::clock;
use ballast_contract::ticket_keys::{KeyBytes, TicketKeys, NAME_LEN, SECRET_LEN};
use common::*;

/// A fresh ticket-key file, as the operator makes it (random keys, one-hour rotation).
fn key_file(dir: &Path, name: &str) -> PathBuf {
    let keys = TicketKeys::rotate(None, clock::unix_now(), 3600, || {
        let mut bytes = KeyBytes {
            name: [0; NAME_LEN],
            secret: [0; SECRET_LEN],
        };
        fastrand::fill(&mut bytes.name);
        fastrand::fill(&mut bytes.secret);
        bytes
    })
    .unwrap();
    let path = dir.join(name);
    std::fs::write(&path, keys.to_json()).unwrap();
    path
}

#[derive(Debug, serde::Deserialize)]
struct Outcome {
    to: String,
    resumed: bool,
    sha256: Option<String>,
    pong: bool,
}

/// Runs `resume.py`: a full handshake to `first`, then the same session offered to each of
/// `tries`.
async fn resume(ca: &Path, first: &Sidecar, tries: &[&Sidecar]) -> Vec<Outcome> {
    let mut args = vec![path_str(ca).to_owned(), first.listen.to_string()];
    args.extend(tries.iter().map(|s| s.listen.to_string()));
    let stdout = python_client("resume.py", args).await;
    let outcomes: Vec<Outcome> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(outcomes.len(), 1 + tries.len(), "{stdout}");
    assert!(
        outcomes.iter().all(|o| o.pong),
        "every connection works: {outcomes:?}"
    );
    assert!(!outcomes[0].resumed, "the first handshake is a full one");
    outcomes
}

#[tokio::test]
async fn an_agent_resumes_on_another_pod_of_its_cluster_only() {
    let _serial = serial().await;
    let pki = Pki::new();
    let cert = pki.issue();
    let dir = TempDir::new("tickets");
    let ca = dir.0.join("ca.crt");
    std::fs::write(&ca, pki.ca.cert_pem()).unwrap();
    let ours = key_file(&dir.0, "ours.json");
    let theirs = key_file(&dir.0, "theirs.json");
    let gateway = Gateway::start("pod").await;
    // Three pods serving the same certificate: a and b share keys, c is another cluster's.
    let volumes: Vec<SecretVolume> = (0..3)
        .map(|_| SecretVolume::new(&cert.cert_pem, &cert.key_pem))
        .collect();
    let start = |volume: &SecretVolume, keys: &Path| {
        Sidecar::start(volume, gateway.addr, &["--ticket-keys", path_str(keys)])
    };
    let a = start(&volumes[0], &ours);
    let b = start(&volumes[1], &ours);
    let c = start(&volumes[2], &theirs);
    assert_eq!(b.status()["session_tickets"]["keys_loaded"], 2);

    let outcomes = resume(&ca, &a, &[&b, &c]).await;
    assert!(
        outcomes[1].resumed,
        "same cluster's keys: resumed on b: {outcomes:?}"
    );
    assert!(
        !outcomes[2].resumed,
        "another cluster's keys: full handshake on c: {outcomes:?}"
    );
    let fingerprint = ballast_fleet::certs::sha256_hex(&cert.leaf_der);
    assert_eq!(outcomes[2].sha256.as_deref(), Some(fingerprint.as_str()));
    let resumed = "ballast_sidecar_handshakes_total{kind=\"resumed\"}";
    assert_eq!(b.metric(resumed), 1.0);
    assert_eq!(c.metric(resumed), 0.0);
    assert_eq!(
        c.metric("ballast_sidecar_handshakes_total{kind=\"full\"}"),
        1.0
    );

    // A bad key file on b is refused; the keys b loaded before keep working.
    std::fs::write(&ours, b"{\"version\":1,\"keys\":[]}").unwrap();
    b.wait_for(Duration::from_secs(10), |s| {
        s.metric("ballast_sidecar_ticket_key_reloads_total{result=\"refused\"}") == 1.0
    });
    let status = b.status();
    assert!(
        status["session_tickets"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("0 keys")),
        "{status}"
    );
    assert_eq!(status["session_tickets"]["keys_loaded"], 2);
    let outcomes = resume(&ca, &a, &[&b]).await;
    assert!(
        outcomes[1].resumed,
        "old keys still work on b: {outcomes:?}"
    );
}

#[tokio::test]
async fn a_renewal_ends_resumption_so_the_agent_sees_the_new_certificate() {
    let _serial = serial().await;
    let pki = Pki::new();
    let (old, new) = (pki.issue(), pki.issue());
    let dir = TempDir::new("tickets-renewal");
    let ca = dir.0.join("ca.crt");
    std::fs::write(&ca, pki.ca.cert_pem()).unwrap();
    let keys = key_file(&dir.0, "keys.json");
    let gateway = Gateway::start("pod").await;
    let renewed = SecretVolume::new(&old.cert_pem, &old.key_pem);
    let steady = SecretVolume::new(&old.cert_pem, &old.key_pem);
    let a = Sidecar::start(&steady, gateway.addr, &["--ticket-keys", path_str(&keys)]);
    let b = Sidecar::start(&renewed, gateway.addr, &["--ticket-keys", path_str(&keys)]);
    // Before the renewal a session from a resumes on b; after it, b makes a full handshake
    // and presents the new certificate.
    assert!(resume(&ca, &a, &[&b]).await[1].resumed);
    renewed.update(&new.cert_pem, &new.key_pem);
    let new_sha = ballast_fleet::certs::sha256_hex(&new.leaf_der);
    b.wait_for(Duration::from_secs(10), |s| s.served_sha256() == new_sha);
    let outcomes = resume(&ca, &a, &[&b]).await;
    assert!(!outcomes[1].resumed, "{outcomes:?}");
    assert_eq!(outcomes[1].sha256.as_deref(), Some(new_sha.as_str()));
    assert_eq!(outcomes[1].to, b.listen.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_agents_that_resume_skip_the_full_handshake_after_a_drain() {
    let _serial = serial().await;
    let dir = TempDir::new("tickets-fleet");
    let keys = key_file(&dir.0, "keys.json");
    let pod = TestPod::start(&["--ticket-keys", path_str(&keys)]).await;
    let sidecar = &pod.sidecar;
    const AGENTS: usize = 100;
    let mut config = fleet_config(sidecar.listen, AGENTS, &pod.pki.ca.cert_pem());
    config.resume = true;
    let fleet = ballast_fleet::agents::Fleet::start(config).unwrap();
    fleet
        .wait_connected(AGENTS, Duration::from_secs(30))
        .await
        .unwrap();
    let full = "ballast_sidecar_handshakes_total{kind=\"full\"}";
    let resumed = "ballast_sidecar_handshakes_total{kind=\"resumed\"}";
    assert_eq!(sidecar.metric(full), AGENTS as f64);
    // Every agent is drained (close_notify) and reconnects at once, offering its session.
    let body = Some(r#"{"connections": "all", "over_seconds": 1}"#);
    let (code, answer) = http(sidecar.admin, "POST", "/drain", body, None).unwrap();
    assert_eq!(code, 202, "{answer}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sidecar.metric(resumed) < AGENTS as f64 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {AGENTS} resumed; log:\n{}",
            sidecar.metric(resumed),
            sidecar.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fleet
        .wait_connected(AGENTS, Duration::from_secs(30))
        .await
        .unwrap();
    let summary = fleet.stop().await;
    assert_eq!(
        sidecar.metric(full),
        AGENTS as f64,
        "no reconnect was a full handshake"
    );
    let failures: u64 = summary.handshake_failures.values().sum();
    assert_eq!(
        (failures, summary.abrupt_closes),
        (0, 0),
        "{}",
        brief(&summary)
    );
}

/// The benchmark's rate client (`ballast-fleet handshakes`) measures what it says: full
/// handshakes without `--resume`, resumed ones with it, each a round trip to the gateway, and
/// the sidecar's own counters agree with its counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_rate_client_counts_full_and_resumed_handshakes() {
    let _serial = serial().await;
    let dir = TempDir::new("tickets-rate");
    let keys = key_file(&dir.0, "keys.json");
    let pod = TestPod::start(&["--ticket-keys", path_str(&keys)]).await;
    let sidecar = &pod.sidecar;
    let run = |resume| {
        ballast_fleet::handshakes::run(ballast_fleet::handshakes::RateConfig {
            target: sidecar.listen,
            ca_pem: pod.pki.ca.cert_pem(),
            server_name: "localhost".into(),
            clients: 2,
            duration: Duration::from_millis(500),
            resume,
        })
    };
    let full = run(false).await.unwrap();
    assert!(full.connections > 0 && full.per_second > 0.0, "{full:?}");
    assert_eq!((full.resumed, full.failures), (0, 0), "{full:?}");
    let resumed = run(true).await.unwrap();
    assert_eq!(resumed.failures, 0, "{resumed:?}");
    // Only each client's first connection may be a full handshake.
    assert!(
        resumed.resumed + 2 >= resumed.connections && resumed.resumed > 0,
        "{resumed:?}"
    );
    let counted = |kind: &str| {
        sidecar.metric(&format!(
            "ballast_sidecar_handshakes_total{{kind=\"{kind}\"}}"
        ))
    };
    assert_eq!(
        counted("full") + counted("resumed"),
        (full.connections + resumed.connections) as f64
    );
    assert_eq!(counted("resumed"), resumed.resumed as f64);
}
