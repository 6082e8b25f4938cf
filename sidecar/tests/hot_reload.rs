//! Certificate hot reload: a kubelet-style Secret update reaches new handshakes at once and
//! never touches established connections; a bad update is refused and the old pair serves on.

mod common;

use std::time::Duration;

use ballast_fleet::agents::Fleet;
use ballast_fleet::certs::{sha256_hex, Validity};
use common::*;

/// The poll is set to an hour: only the directory watch can bring the new pair in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_swap_is_served_without_waiting_for_the_poll() {
    let _serial = serial().await;
    let pod = TestPod::start(&["--reload-interval", "1h"]).await;
    let TestPod {
        pki,
        volume,
        sidecar,
        ..
    } = &pod;
    let new = pki.issue();
    let new_sha = sha256_hex(&new.leaf_der);
    let swapped = std::time::Instant::now();
    volume.update(&new.cert_pem, &new.key_pem);
    while handshake_fingerprint(sidecar.listen, &pki.ca.cert_pem()).await != new_sha {
        assert!(
            swapped.elapsed() < Duration::from_secs(10),
            "the swap was not seen without the poll; log:\n{}",
            sidecar.log_text()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Informative (2 busy cores make timings loose): `make bench` measures the latency.
    eprintln!(
        "swap to a handshake presenting the new certificate: {:?}",
        swapped.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_secret_swap_keeps_1000_agents_and_serves_the_new_certificate() {
    let _serial = serial().await;
    let pod = TestPod::start(&["--max-handshakes-per-second", "5000"]).await;
    let TestPod {
        pki,
        cert: old,
        volume,
        sidecar,
        ..
    } = &pod;
    let new = pki.issue();
    assert_eq!(sidecar.served_sha256(), sha256_hex(&old.leaf_der));

    let fleet = Fleet::start(fleet_config(sidecar.listen, 1000, &pki.ca.cert_pem())).unwrap();
    fleet
        .wait_connected(1000, Duration::from_secs(60))
        .await
        .unwrap();
    let pongs_before = fleet.stats().pongs;

    volume.update(&new.cert_pem, &new.key_pem);
    let new_sha = sha256_hex(&new.leaf_der);
    let wait_start = std::time::Instant::now();
    while sidecar.served_sha256() != new_sha {
        assert!(
            wait_start.elapsed() < Duration::from_secs(10),
            "reload not seen; log:\n{}",
            sidecar.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        handshake_fingerprint(sidecar.listen, &pki.ca.cert_pem()).await,
        new_sha
    );

    // Two more heartbeats per connection after the reload (on 2 busy cores, however long
    // that takes), with every agent still connected.
    let wait_start = std::time::Instant::now();
    while fleet.stats().pongs < pongs_before + 2000 {
        assert!(
            wait_start.elapsed() < Duration::from_secs(20),
            "heartbeats stalled: {} -> {}",
            pongs_before,
            fleet.stats().pongs
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = fleet.stats();
    assert_eq!(stats.connected, 1000);
    assert_eq!(stats.disconnects, 0);
    let status = sidecar.status();
    assert_eq!(status["certificate"]["connections_on_older"], 1000);
    assert_eq!(status["certificate"]["last_error"], serde_json::Value::Null);
    assert_eq!(
        sidecar.metric("ballast_sidecar_certificate_reloads_total{result=\"success\"}"),
        1.0
    );

    let summary = fleet.stop().await;
    assert_eq!(summary.disconnects, 0, "{}", brief(&summary));
    assert_eq!(summary.graceful_closes + summary.abrupt_closes, 0);
    assert_eq!(summary.false_offline, 0);
    for cause in ["drain", "upstream", "timeout", "error"] {
        assert_eq!(
            sidecar.metric(&format!(
                "ballast_sidecar_connections_closed_total{{cause=\"{cause}\"}}"
            )),
            0.0,
            "cause {cause}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificates_are_refused_and_the_old_one_keeps_serving() {
    let _serial = serial().await;
    let pki = Pki::new();
    let good = pki.issue();
    let other = pki.issue();
    let expired = pki.issue_with(Validity::Expired);
    // Issued by another CA: chains, but not to this Secret's ca.crt.
    let foreign = Pki::new().issue();
    // The same CA, but without the IP address agents connect to.
    let narrower = pki
        .ca
        .issue_server(&["localhost".into()], Validity::Current)
        .unwrap();
    let volume = SecretVolume::with_ca(&good.cert_pem, &good.key_pem, &pki.ca.cert_pem());
    let gateway = Gateway::start("pod-0").await;
    let ca_path = volume.ca_path();
    let sidecar = Sidecar::start(&volume, gateway.addr, &["--ca", path_str(&ca_path)]);
    let good_sha = sha256_hex(&good.leaf_der);
    let fleet = Fleet::start(fleet_config(sidecar.listen, 50, &pki.ca.cert_pem())).unwrap();
    fleet
        .wait_connected(50, Duration::from_secs(30))
        .await
        .unwrap();

    let cases: [(&str, String, String, &str); 5] = [
        (
            "malformed",
            "this is not a certificate\n".into(),
            good.key_pem.clone(),
            "holds no PEM certificate",
        ),
        (
            "key_mismatch",
            good.cert_pem.clone(),
            other.key_pem.clone(),
            "does not match",
        ),
        (
            "expired",
            expired.cert_pem.clone(),
            expired.key_pem.clone(),
            "expired",
        ),
        (
            "untrusted_chain",
            foreign.cert_pem.clone(),
            foreign.key_pem.clone(),
            "does not chain to the CA bundle",
        ),
        (
            "names_dropped",
            narrower.cert_pem.clone(),
            narrower.key_pem.clone(),
            "no longer covers 127.0.0.1",
        ),
    ];
    for (reason, cert, key, message) in cases {
        volume.update(&cert, &key);
        sidecar.wait_for(Duration::from_secs(10), |s| {
            s.status()["certificate"]["last_error_reason"] == reason
        });
        let status = sidecar.status();
        let error = status["certificate"]["last_error"].as_str().unwrap();
        assert!(error.contains(message), "{reason}: {error}");
        assert_eq!(status["certificate"]["sha256"], good_sha.as_str());
        assert_eq!(
            sidecar.metric(&format!(
                "ballast_sidecar_certificate_reloads_total{{result=\"{reason}\"}}"
            )),
            1.0
        );
        assert_eq!(
            handshake_fingerprint(sidecar.listen, &pki.ca.cert_pem()).await,
            good_sha,
            "{reason}: the old certificate must keep serving"
        );
    }
    assert!(sidecar
        .log_text()
        .contains("still serving the previous one"));

    // Fixing the Secret recovers without a restart and clears the error.
    volume.update(&other.cert_pem, &other.key_pem);
    sidecar.wait_for(Duration::from_secs(10), |s| {
        s.served_sha256() == sha256_hex(&other.leaf_der)
    });
    assert_eq!(
        sidecar.status()["certificate"]["last_error"],
        serde_json::Value::Null
    );
    let summary = fleet.stop().await;
    assert_eq!(summary.disconnects, 0, "{}", brief(&summary));
}

/// A key written before its certificate (outside the kubelet's atomic swap) is not called a
/// mismatch: the sidecar looks again, and serves the pair once the certificate follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_written_before_its_certificate_raises_no_false_alarm() {
    let _serial = serial().await;
    let pki = Pki::new();
    let old = pki.issue();
    let new = pki.issue();
    let volume = SecretVolume::with_ca(&old.cert_pem, &old.key_pem, &pki.ca.cert_pem());
    let gateway = Gateway::start("pod-0").await;
    let ca_path = volume.ca_path();
    // Polls 2 s apart: the test writes the certificate well before the second look.
    let sidecar = Sidecar::start(
        &volume,
        gateway.addr,
        &["--ca", path_str(&ca_path), "--reload-interval", "2s"],
    );
    volume.write_key_in_place(&new.key_pem);
    // The sidecar has seen the new key beside the old certificate...
    sidecar.wait_for(Duration::from_secs(10), |s| {
        s.log_text().contains("do not match yet")
    });
    // ...and the certificate follows before its next look.
    volume.write_cert_in_place(&new.cert_pem);
    sidecar.wait_for(Duration::from_secs(10), |s| {
        s.served_sha256() == sha256_hex(&new.leaf_der)
    });
    assert_eq!(
        sidecar.metric("ballast_sidecar_certificate_reloads_total{result=\"key_mismatch\"}"),
        0.0
    );
    assert_eq!(
        sidecar.status()["certificate"]["last_error"],
        serde_json::Value::Null
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_sees_the_new_certificate_after_a_reload() {
    let _serial = serial().await;
    let pod = TestPod::start(&[]).await;
    let TestPod {
        pki,
        cert: old,
        volume,
        sidecar,
        ..
    } = &pod;
    let new = pki.issue();
    let ca = TempDir::new("ca");
    let ca_file = ca.0.join("ca.crt");
    std::fs::write(&ca_file, pki.ca.cert_pem()).unwrap();

    let openssl_sha = |listen: std::net::SocketAddr| {
        let script = format!(
            "openssl s_client -connect {listen} -servername localhost -CAfile {} -verify_return_error </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256",
            path_str(&ca_file)
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .expect("openssl is installed");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.trim()
            .rsplit('=')
            .next()
            .unwrap_or("")
            .replace(':', "")
            .to_lowercase()
    };
    assert_eq!(openssl_sha(sidecar.listen), sha256_hex(&old.leaf_der));
    volume.update(&new.cert_pem, &new.key_pem);
    let new_sha = sha256_hex(&new.leaf_der);
    sidecar.wait_for(Duration::from_secs(10), |s| s.served_sha256() == new_sha);
    assert_eq!(openssl_sha(sidecar.listen), new_sha);
}
