//! Lifecycle events as a presence backend consumes them: `GET /events` on two real sidecars
//! in front of one gateway, with a fleet of real TLS agents moved from one to the other.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use ballast_fleet::agents::{Fleet, Targets};
use common::*;

/// A drain of N agents on pod A while the load balancer sends new connections to pod B: A's
/// stream says exactly N planned disconnects (each with when the agent is expected back), B's
/// says exactly N connects, each sidecar's events in order with nothing missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_of_n_agents_is_n_planned_disconnects_on_one_pod_and_n_connects_on_another() {
    let _serial = serial().await;
    const AGENTS: usize = 60;
    const DRAINED: usize = 30;
    let pki = Pki::new();
    let cert = pki.issue();
    let volume = SecretVolume::new(&cert.cert_pem, &cert.key_pem);
    let gateway = Gateway::start("gateway").await;
    let dir = TempDir::new("events-token");
    let token_file = dir.0.join("token");
    std::fs::write(&token_file, "s3cret-events-token\n").unwrap();
    let events_args = |pod: &'static str| {
        vec![
            "--events-buffer",
            "4096",
            "--pod-name",
            pod,
            "--events-token-file",
            path_str(&token_file),
            "--planned-reconnect-window",
            "45s",
        ]
    };
    let a = Sidecar::start(&volume, gateway.addr, &events_args("pod-a"));
    let b = Sidecar::start(&volume, gateway.addr, &events_args("pod-b"));
    let token = Some("s3cret-events-token");

    // The token is required, even from loopback, once a token file is set.
    let refused = EventConsumer::open(a.admin, None, "", None)
        .await
        .err()
        .map(|e| e.to_string());
    assert!(
        refused.as_deref().unwrap_or("").contains(" 401 "),
        "{refused:?}"
    );
    let refused = EventConsumer::open(a.admin, Some("wrong"), "", None)
        .await
        .err()
        .map(|e| e.to_string());
    assert!(
        refused.as_deref().unwrap_or("").contains(" 401 "),
        "{refused:?}"
    );
    let mut from_a = EventConsumer::open(a.admin, token, "", None).await.unwrap();
    let mut from_b = EventConsumer::open(b.admin, token, "", None).await.unwrap();

    let targets = Targets::fixed(vec![a.listen]);
    let mut config = fleet_config(a.listen, AGENTS, &pki.ca.cert_pem());
    config.targets = targets.clone();
    let fleet = Fleet::start(config).unwrap();
    fleet
        .wait_connected(AGENTS, Duration::from_secs(30))
        .await
        .unwrap();
    let mut seen_a = Vec::new();
    from_a
        .read_until_seen(&mut seen_a, Duration::from_secs(10), "connected", AGENTS)
        .await
        .unwrap();

    // The Service's endpoints now lead to pod B only, as while A drains before a restart.
    targets.set(vec![b.listen]);
    let body = format!(r#"{{"connections": {DRAINED}, "over_seconds": 2}}"#);
    let (code, answer) = http(a.admin, "POST", "/drain", Some(&body), None).unwrap();
    assert_eq!(code, 202, "{answer}");
    from_a
        .read_until_seen(
            &mut seen_a,
            Duration::from_secs(30),
            "disconnected",
            DRAINED,
        )
        .await
        .unwrap();
    let mut seen_b = Vec::new();
    from_b
        .read_until_seen(&mut seen_b, Duration::from_secs(30), "connected", DRAINED)
        .await
        .unwrap();
    // Nothing more arrives while the fleet keeps running: exactly N, not N and then some.
    while let Some(extra) = from_a.next(Duration::from_millis(1500)).await {
        seen_a.push(extra);
    }
    while let Some(extra) = from_b.next(Duration::from_millis(200)).await {
        seen_b.push(extra);
    }
    let summary = fleet.stop().await;
    assert_eq!(summary.abrupt_closes, 0, "{}", brief(&summary));

    assert_accounted_in_order(&seen_a);
    assert_accounted_in_order(&seen_b);
    assert_eq!(seen_a.len(), AGENTS + DRAINED, "{seen_a:#?}");
    assert_eq!(seen_b.len(), DRAINED, "{seen_b:#?}");
    assert_eq!(seen_a[0]["seq"], 1, "the consumer was there from the start");
    assert!(seen_a.iter().all(|e| e["pod"] == "pod-a"));
    assert!(seen_b.iter().all(|e| e["pod"] == "pod-b"));
    assert_ne!(seen_a[0]["boot"], seen_b[0]["boot"]);

    let connected_on_a: BTreeSet<u64> = events_of(&seen_a, "connected")
        .map(|e| e["connection"].as_u64().unwrap())
        .collect();
    assert_eq!(connected_on_a.len(), AGENTS, "one id per connection");
    let mut last_planned = String::new();
    for e in events_of(&seen_a, "disconnected") {
        assert_eq!(e["cause"], "planned", "{e}");
        assert!(connected_on_a.contains(&e["connection"].as_u64().unwrap()));
        assert_eq!(e["agent"]["sni"], "localhost", "{e}");
        assert!(e["agent"]["address"].as_str().unwrap().starts_with("127."));
        let time = e["time"].as_str().unwrap();
        let by = e["expected_back_by"].as_str().unwrap();
        assert!(by > time, "{e}");
        last_planned = last_planned.max(time.to_owned());
    }
    // Each of B's connects is a drained agent coming back, after the drain began.
    let first_planned = events_of(&seen_a, "disconnected")
        .map(|e| e["time"].as_str().unwrap().to_owned())
        .min()
        .unwrap();
    for e in &seen_b {
        assert_eq!(e["event"], "connected", "{e}");
        assert!(e["time"].as_str().unwrap() >= first_planned.as_str(), "{e}");
        assert_eq!(e["resumed"], false);
    }
    assert_eq!(
        b.metric("ballast_sidecar_events_published_total{event=\"connected\"}"),
        DRAINED as f64
    );
    assert!(!last_planned.is_empty());
}

/// A consumer that stops reading while the agents keep coming and going: the sidecar does not
/// wait for it; when it reads again it gets one gap marker whose count is exactly what it
/// missed, then the events kept; and the agents connected throughout noticed nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_consumer_gets_a_gap_with_the_exact_count_and_the_agents_notice_nothing() {
    let _serial = serial().await;
    const CAPACITY: u64 = 64;
    const STEADY: usize = 40;
    let pod = TestPod::start(&["--events-buffer", &CAPACITY.to_string()]).await;
    let sidecar = &pod.sidecar;
    let ca = pod.pki.ca.cert_pem();
    // A tiny receive window, and no reading: whatever the socket buffers hold, the journal
    // moves on without this consumer.
    let mut stalled = EventConsumer::open(sidecar.admin, None, "", Some(4096))
        .await
        .unwrap();
    let mut config = fleet_config(sidecar.listen, STEADY, &ca);
    config.heartbeat = Duration::from_millis(200);
    let fleet = Fleet::start(config).unwrap();
    fleet
        .wait_connected(STEADY, Duration::from_secs(30))
        .await
        .unwrap();

    // Agents come and go (two events each) until the stalled consumer is more than the
    // journal's capacity behind. Bounded: at most 40 rounds of 50.
    let mut churned = 0;
    let behind = |s: &Sidecar| {
        s.status()["events"]["consumers_behind"][0]
            .as_u64()
            .unwrap()
    };
    for _ in 0..40 {
        if behind(sidecar) > CAPACITY * 3 {
            break;
        }
        for _ in 0..50 {
            drop(tls_connect(sidecar.listen, &ca).await);
            churned += 1;
        }
    }
    let lag = behind(sidecar);
    assert!(
        lag > CAPACITY * 3,
        "still only {lag} behind after {churned} agents"
    );

    // Reading again: everything up to the newest event, accounted for.
    let last_seq = sidecar.status()["events"]["last_seq"].as_u64().unwrap();
    let mut read = Vec::new();
    stalled
        .read_until(&mut read, Duration::from_secs(30), |e| {
            e.last().and_then(|l| l["seq"].as_u64()) >= Some(last_seq)
        })
        .await
        .unwrap();
    assert_accounted_in_order(&read);
    let gaps: Vec<_> = events_of(&read, "gap").collect();
    assert_eq!(
        gaps.len(),
        1,
        "one gap marker for one fall behind: {gaps:#?}"
    );
    let missed = gaps[0]["missed"].as_u64().unwrap();
    let delivered = read.len() as u64 - 1;
    let first = read[0]["seq"].as_u64().unwrap();
    assert_eq!(
        delivered + missed,
        read.last().unwrap()["seq"].as_u64().unwrap() - first + 1,
        "every event was either delivered or counted as missed"
    );
    assert!(missed > 0);
    eprintln!(
        "stalled consumer: {churned} agents came and went, {lag} events behind; on reading: \
         {delivered} delivered, one gap of {missed}"
    );
    assert_eq!(
        sidecar.metric("ballast_sidecar_events_missed_total"),
        missed as f64
    );

    let stats = fleet.stats();
    let summary = fleet.stop().await;
    assert_eq!(stats.connected, STEADY, "{}", brief(&summary));
    assert_eq!(summary.disconnects, 0, "{}", brief(&summary));
    let failures: u64 = summary.handshake_failures.values().sum();
    assert_eq!(failures, 0, "{}", brief(&summary));
    // The churning agents all got in: none waited so long it was turned away.
    assert_eq!(
        sidecar.metric("ballast_sidecar_connections_refused_total{reason=\"handshake_rate\"}"),
        0.0
    );
}

/// Events are off unless asked for; refusals before the handshake carry their reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_off_by_default_and_refusals_say_why() {
    let _serial = serial().await;
    let pod = TestPod::start(&[]).await;
    let off = EventConsumer::open(pod.sidecar.admin, None, "", None)
        .await
        .err()
        .map(|e| e.to_string());
    assert!(off.as_deref().unwrap_or("").contains(" 404 "), "{off:?}");

    let pod = TestPod::start(&["--events-buffer", "100", "--max-connections", "1"]).await;
    let sidecar = &pod.sidecar;
    let ca = pod.pki.ca.cert_pem();
    let mut events = EventConsumer::open(sidecar.admin, None, "", None)
        .await
        .unwrap();
    let _held = tls_connect(sidecar.listen, &ca).await;
    // The second is refused before its handshake: the pod holds its maximum.
    let second = tokio::net::TcpStream::connect(sidecar.listen)
        .await
        .unwrap();
    let mut read = Vec::new();
    events
        .read_until(&mut read, Duration::from_secs(10), |e| e.len() == 2)
        .await
        .unwrap();
    drop(second);
    // In either order: the first agent's connect is published once its gateway answered.
    assert_eq!(events_of(&read, "connected").count(), 1, "{read:#?}");
    let refused = events_of(&read, "refused").next().unwrap();
    assert_eq!(refused["reason"], "max_connections");
    assert!(
        refused["agent"]["sni"].is_null(),
        "unknown before the handshake"
    );
    // A consumer that comes back later resumes after the last seq it read.
    let mut again = EventConsumer::open(sidecar.admin, None, "?after=1", None)
        .await
        .unwrap();
    let replay = again.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(replay, read[1]);
}
