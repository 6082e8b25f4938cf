//! Reconnect hints to real MQTT 5 clients through a real broker: mosquitto (Debian's) is the
//! gateway behind the sidecar, paho-mqtt (Eclipse's, from PyPI) the agents, each with a Last
//! Will on its presence topic. A paced drain of half of them: each drained agent receives
//! DISCONNECT 0x9C (use another server) with the configured Server Reference, reconnects, and the broker publishes no will over the
//! whole Will Delay window; a certificate hot reload disconnects nobody.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Agents in the test, half of them drained.
const AGENTS: usize = 20;
/// Where the DISCONNECT sends the drained agents (`--mqtt-server-reference`).
const SERVER_REFERENCE: &str = "eu-2.presence.example:8883";
/// The agents' Will Delay Interval, seconds: the window in which no will may fire.
const WILL_DELAY: u64 = 30;

/// A mosquitto broker on a free loopback port (scripts/ensure-tools.sh installs it).
struct Mosquitto {
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
    _dir: TempDir,
}

impl Mosquitto {
    fn start() -> Self {
        let dir = TempDir::new("mosquitto");
        let addr = free_addr();
        let conf = dir.0.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} {}\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n",
                addr.port(),
                addr.ip()
            ),
        )
        .unwrap();
        let log = dir.0.join("mosquitto.log");
        let binary = ["/usr/sbin/mosquitto", "mosquitto"]
            .into_iter()
            .find(|b| !b.starts_with('/') || std::path::Path::new(b).exists())
            .unwrap();
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("mosquitto runs (scripts/ensure-tools.sh installs it)");
        let broker = Self {
            child,
            addr,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen:\n{}",
                broker.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        broker
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 100 ms (without blocking the runtime) until true, or panics.
async fn until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "not within {timeout:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_mqtt5_agents_are_told_to_use_another_server_and_no_will_fires() {
    let _serial = serial().await;
    let broker = Mosquitto::start();
    let pki = Pki::new();
    let (cert, renewed) = (pki.issue(), pki.issue());
    let volume = SecretVolume::new(&cert.cert_pem, &cert.key_pem);
    let sidecar = Sidecar::start(
        &volume,
        broker.addr,
        &[
            "--protocol",
            "mqtt",
            "--mqtt-server-reference",
            SERVER_REFERENCE,
        ],
    );
    let dir = TempDir::new("mqtt");
    let ca = dir.0.join("ca.crt");
    std::fs::write(&ca, pki.ca.cert_pem()).unwrap();

    let mut agents = Driven::python(
        "mqtt_agents.py",
        &[
            sidecar.listen.ip().to_string(),
            sidecar.listen.port().to_string(),
            path_str(&ca).to_owned(),
            broker.addr.ip().to_string(),
            broker.addr.port().to_string(),
            AGENTS.to_string(),
            WILL_DELAY.to_string(),
        ],
    );
    let first = agents.read_json();
    assert_eq!(first["connected"], AGENTS, "{first}\n{}", broker.log_text());

    // A paced drain of half the agents.
    let body = Some(r#"{"connections": 10, "over_seconds": 2}"#);
    let (code, answer) = http(sidecar.admin, "POST", "/drain", body, None).unwrap();
    assert_eq!(code, 202, "{answer}");
    let hints = "ballast_sidecar_reconnect_hints_total{protocol=\"mqtt5\"}";
    until(
        "10 hints sent and everyone back",
        Duration::from_secs(60),
        || sidecar.metric(hints) == 10.0 && sidecar.status()["connections"] == AGENTS,
    )
    .await;
    let back = Instant::now();

    // A hot reload: nobody disconnected, new handshakes see the new certificate.
    volume.update(&renewed.cert_pem, &renewed.key_pem);
    let new_sha = ballast_fleet::certs::sha256_hex(&renewed.leaf_der);
    until("the renewal served", Duration::from_secs(10), || {
        sidecar.served_sha256() == new_sha
    })
    .await;

    // No will may fire during the whole Will Delay window after the last reconnect.
    tokio::time::sleep(
        (back + Duration::from_secs(WILL_DELAY + 2)).saturating_duration_since(Instant::now()),
    )
    .await;
    agents.say("report");
    let report = agents.read_json();
    let context = format!(
        "{report}\nsidecar log:\n{}\nbroker log:\n{}",
        sidecar.log_text(),
        broker.log_text()
    );
    assert_eq!(report["connected"], AGENTS, "{context}");
    assert_eq!(report["agents_hinted"], 10, "{context}");
    assert_eq!(
        report["disconnects"],
        serde_json::json!({"156": 10}),
        "{context}"
    );
    assert_eq!(report["connects"], AGENTS + 10, "{context}");
    // Each DISCONNECT said where to go (paho hands the property to the application).
    assert_eq!(
        report["server_references"],
        serde_json::json!({ SERVER_REFERENCE: 10 }),
        "{context}"
    );
    assert_eq!(report["wills"], 0, "{context}");
    assert_eq!(
        sidecar.metric("ballast_sidecar_connections_closed_total{cause=\"drain\"}"),
        10.0
    );
}
