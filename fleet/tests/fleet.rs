//! End-to-end: real agents → a TLS terminator written here → the sample gateway, all on
//! loopback. The terminator stands in for the sidecar so the fleet's measurements can be
//! checked against closes we cause ourselves.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ballast_fleet::agents::{Fleet, FleetConfig, LiveStats, Targets};
use ballast_fleet::certs::{Ca, IssuedCert, Validity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::{sleep, timeout, Instant};
use tokio_rustls::TlsAcceptor;

const HEARTBEAT: Duration = Duration::from_millis(200);

#[derive(Clone, Copy)]
enum Kill {
    /// close_notify, then FIN: a planned drain.
    Graceful,
    /// Drop the socket without a TLS goodbye.
    Abrupt,
}

/// A minimal TLS terminator: accepts agents, proxies to the gateway, and closes connections
/// on demand.
struct Terminator {
    addr: SocketAddr,
    open: Arc<Mutex<Vec<oneshot::Sender<Kill>>>>,
    /// TCP connections accepted so far, handshake or not.
    accepted: Arc<AtomicUsize>,
}

impl Terminator {
    async fn start(cert: &IssuedCert, upstream: SocketAddr) -> Terminator {
        let acceptor = TlsAcceptor::from(cert.server_config().unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open: Arc<Mutex<Vec<oneshot::Sender<Kill>>>> = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let registry = open.clone();
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, Relaxed);
                let acceptor = acceptor.clone();
                let registry = registry.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut gateway = TcpStream::connect(upstream).await.unwrap();
                    let (kill_tx, kill_rx) = oneshot::channel();
                    registry.lock().unwrap().push(kill_tx);
                    let kill = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut tls, &mut gateway) => None,
                        kill = kill_rx => kill.ok(),
                    };
                    match kill {
                        Some(Kill::Graceful) => {
                            tls.shutdown().await.unwrap();
                            // Wait for the agent's own goodbye so no reset races our close_notify.
                            let mut sink = [0u8; 256];
                            let _ = timeout(Duration::from_secs(2), async {
                                while matches!(tls.read(&mut sink).await, Ok(n) if n > 0) {}
                            })
                            .await;
                        }
                        Some(Kill::Abrupt) | None => {}
                    }
                });
            }
        });
        Terminator {
            addr,
            open,
            accepted,
        }
    }

    /// Closes up to `n` live connections; returns how many it closed.
    fn close(&self, n: usize, how: Kill) -> usize {
        let mut open = self.open.lock().unwrap();
        let mut closed = 0;
        while closed < n {
            let Some(tx) = open.pop() else { break };
            if tx.send(how).is_ok() {
                closed += 1;
            }
        }
        closed
    }
}

async fn start_gateway(name: &str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(ballast_fleet::gateway::serve(listener, name.to_owned()));
    addr
}

fn pki(validity: Validity) -> (Ca, IssuedCert) {
    let ca = Ca::new("fleet test CA").unwrap();
    let issued = ca
        .issue_server(&["localhost".into(), "127.0.0.1".into()], validity)
        .unwrap();
    (ca, issued)
}

async fn wait_for(fleet: &Fleet, what: &str, ok: impl Fn(&LiveStats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let stats = fleet.stats();
        if ok(&stats) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {stats:?}"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_drain_reconnects_everyone_without_false_offline() {
    let gateway = start_gateway("pod-0").await;
    let (ca, cert) = pki(Validity::Current);
    let terminator = Terminator::start(&cert, gateway).await;

    let mut config = FleetConfig::new(vec![terminator.addr], 200, ca.cert_pem());
    config.heartbeat = HEARTBEAT;
    config.offline_threshold = Duration::from_secs(2);
    let fleet = Fleet::start(config).unwrap();
    fleet
        .wait_connected(200, Duration::from_secs(20))
        .await
        .unwrap();
    sleep(HEARTBEAT * 3).await;
    assert!(fleet.stats().pongs > 0, "{:?}", fleet.stats());

    assert_eq!(terminator.close(50, Kill::Graceful), 50);
    wait_for(&fleet, "50 graceful closes and reconnects", |s| {
        s.graceful_closes >= 50 && s.reconnects >= 50 && s.connected == 200
    })
    .await;
    sleep(HEARTBEAT * 2).await;
    // At least one distribution sample (taken every second) must exist.
    tokio::time::sleep_until(fleet.started_at() + Duration::from_millis(1500)).await;
    let summary = fleet.stop().await;

    assert_eq!(summary.agents, 200);
    assert_eq!(summary.graceful_closes, 50, "{summary:#?}");
    assert_eq!(summary.abrupt_closes, 0, "{summary:#?}");
    assert_eq!(summary.reconnects, 50);
    assert_eq!(summary.disconnects, 50);
    assert_eq!(summary.connected_at_end, 200);
    assert_eq!(summary.never_connected, 0);
    assert_eq!(summary.false_offline, 0);
    assert_eq!(summary.total_handshake_failures(), 0, "{summary:#?}");
    assert!(summary.pongs > 0);
    assert!(summary.heartbeat_rtt_ms.count > 0);
    assert!(summary.heartbeat_rtt_ms.p50 > 0.0);
    assert_eq!(summary.gaps_seconds.count, 50);
    assert!(summary.gaps_seconds.max < 1.0, "{:?}", summary.gaps_seconds);
    assert_eq!(summary.graceful_close_times_seconds.len(), 50);
    assert_eq!(summary.close_times_seconds().len(), 50);
    assert_eq!(
        summary.server_cert_sha256.get(&cert.fingerprint()),
        Some(&200)
    );
    assert_eq!(summary.server_cert_sha256.len(), 1);
    assert_eq!(summary.per_agent.len(), 200);
    assert_eq!(
        summary.per_agent.iter().map(|a| a.disconnects).sum::<u64>(),
        50
    );
    assert_eq!(
        summary.distribution.last().unwrap().per_target[&terminator.addr.to_string()],
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abrupt_closes_are_told_apart_from_graceful_ones() {
    let gateway = start_gateway("pod-0").await;
    let (ca, cert) = pki(Validity::Current);
    let terminator = Terminator::start(&cert, gateway).await;

    let mut config = FleetConfig::new(vec![terminator.addr], 20, ca.cert_pem());
    config.heartbeat = HEARTBEAT;
    config.backoff_base = Duration::from_millis(20);
    let fleet = Fleet::start(config).unwrap();
    fleet
        .wait_connected(20, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(terminator.close(5, Kill::Abrupt), 5);
    wait_for(&fleet, "5 abrupt closes and reconnects", |s| {
        s.abrupt_closes >= 5 && s.connected == 20
    })
    .await;
    let summary = fleet.stop().await;
    assert_eq!(summary.abrupt_closes, 5, "{summary:#?}");
    assert_eq!(summary.graceful_closes, 0, "{summary:#?}");
    assert_eq!(summary.abrupt_close_times_seconds.len(), 5);
    assert_eq!(summary.reconnects, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_target_list_steers_new_connections_only() {
    let (ca, cert) = pki(Validity::Current);
    let a = Terminator::start(&cert, start_gateway("pod-a").await).await;
    let b = Terminator::start(&cert, start_gateway("pod-b").await).await;
    let (a_name, b_name) = (a.addr.to_string(), b.addr.to_string());
    let targets = Targets::fixed(vec![a.addr]);
    let mut config = FleetConfig::new(targets.clone(), 20, ca.cert_pem());
    config.heartbeat = HEARTBEAT;
    let fleet = Fleet::start(config).unwrap();
    fleet
        .wait_connected(20, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(a.accepted.load(Relaxed), 20);

    // A leaves the list (its readiness failed, say) and B joins: nothing moves by itself.
    assert!(targets.set(vec![b.addr]));
    let stats = fleet.stats();
    assert_eq!(stats.per_target[&a_name], 20, "{stats:?}");
    assert_eq!(stats.per_target[&b_name], 0, "{stats:?}");

    // A drains; every reconnect must land on B, and A must see no new connection.
    assert_eq!(a.close(20, Kill::Graceful), 20);
    wait_for(&fleet, "all 20 agents reconnected to B", |s| {
        s.graceful_closes == 20 && s.connected == 20 && s.per_target.get(&b_name) == Some(&20)
    })
    .await;
    let stats = fleet.stats();
    // A holds nothing and is no longer a target, so it is no longer listed.
    assert!(!stats.per_target.contains_key(&a_name), "{stats:?}");
    assert_eq!(a.accepted.load(Relaxed), 20);
    assert_eq!(b.accepted.load(Relaxed), 20);
    let summary = fleet.stop().await;
    assert_eq!(summary.total_handshake_failures(), 0, "{summary:#?}");
    assert_eq!(summary.reconnects, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_target_list_counts_no_target_until_it_fills() {
    let (ca, cert) = pki(Validity::Current);
    let terminator = Terminator::start(&cert, start_gateway("pod-0").await).await;
    let targets = Targets::fixed(vec![]);
    let mut config = FleetConfig::new(targets.clone(), 5, ca.cert_pem());
    config.backoff_base = Duration::from_millis(20);
    config.backoff_cap = Duration::from_millis(100);
    let fleet = Fleet::start(config).unwrap();
    wait_for(&fleet, "no_target failures", |s| s.handshake_failures >= 10).await;
    assert_eq!(fleet.stats().connected, 0);

    targets.set(vec![terminator.addr]);
    fleet
        .wait_connected(5, Duration::from_secs(10))
        .await
        .unwrap();
    let summary = fleet.stop().await;
    let no_target = summary.handshake_failures["no_target"];
    assert!(no_target >= 10, "{summary:#?}");
    // Each empty attempt waits 100 ms first: an agent cannot fail more than ~10 times a second.
    assert!(
        no_target <= 5 * 10 * (summary.duration_seconds.ceil() as u64 + 1),
        "{summary:#?}"
    );
    assert_eq!(
        summary.total_handshake_failures(),
        no_target,
        "{summary:#?}"
    );
    assert_eq!(summary.connected_at_end, 5);
}

/// A gateway that welcomes agents and then never answers a PING.
async fn start_mute_gateway() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                let mut welcomed = false;
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    if !welcomed && buf[..n].starts_with(b"HELLO ") {
                        welcomed = true;
                        tcp.write_all(b"WELCOME mute\n").await.unwrap();
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_pongs_make_a_dead_connection() {
    let gateway = start_mute_gateway().await;
    let (ca, cert) = pki(Validity::Current);
    let terminator = Terminator::start(&cert, gateway).await;
    let mut config = FleetConfig::new(vec![terminator.addr], 2, ca.cert_pem());
    config.heartbeat = Duration::from_millis(100);
    let fleet = Fleet::start(config).unwrap();
    fleet
        .wait_connected(2, Duration::from_secs(10))
        .await
        .unwrap();
    let connected_at = Instant::now();
    wait_for(&fleet, "dead heartbeats", |s| s.abrupt_closes >= 2).await;
    // Three missed heartbeats, not fewer.
    assert!(connected_at.elapsed() >= Duration::from_millis(200));
    let summary = fleet.stop().await;
    assert_eq!(summary.pongs, 0);
    assert_eq!(summary.graceful_closes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_counts_connect_failures_and_backs_off() {
    let vacant = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let (ca, _) = pki(Validity::Current);
    let mut config = FleetConfig::new(vec![vacant], 5, ca.cert_pem());
    config.backoff_base = Duration::from_millis(20);
    config.backoff_cap = Duration::from_millis(50);
    let fleet = Fleet::start(config).unwrap();
    sleep(Duration::from_secs(1)).await;
    let summary = fleet.stop().await;

    let connect = summary.handshake_failures["connect"];
    assert!(connect >= 5, "{summary:#?}");
    // Refused connects take microseconds: without backoff this would be tens of thousands.
    // With full jitter under a 50 ms cap each agent averages one try per ~25 ms.
    assert!(
        connect <= 5 * 120,
        "backoff not applied: {connect} attempts"
    );
    assert_eq!(summary.handshake_failures["tls"], 0);
    assert_eq!(summary.connected_at_end, 0);
    assert_eq!(summary.never_connected, 5);
    assert_eq!(summary.false_offline, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificate_is_a_tls_failure() {
    let gateway = start_gateway("pod-0").await;
    let (ca, cert) = pki(Validity::Expired);
    let terminator = Terminator::start(&cert, gateway).await;
    let mut config = FleetConfig::new(vec![terminator.addr], 3, ca.cert_pem());
    config.backoff_base = Duration::from_millis(20);
    config.backoff_cap = Duration::from_millis(100);
    let fleet = Fleet::start(config).unwrap();
    wait_for(&fleet, "TLS failures", |s| s.handshake_failures >= 3).await;
    let summary = fleet.stop().await;
    assert!(summary.handshake_failures["tls"] >= 3, "{summary:#?}");
    assert_eq!(summary.connected_at_end, 0);
}

/// A heavier run for manual checks: `cargo test -p ballast-fleet --release --test fleet -- --ignored`
/// (`BALLAST_FLEET_SCALE_AGENTS`, default 4000; each agent costs four descriptors here).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "load test; run by hand"]
async fn scale_smoke() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let agents: usize = std::env::var("BALLAST_FLEET_SCALE_AGENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4000);
    let gateway = start_gateway("pod-0").await;
    let (ca, cert) = pki(Validity::Current);
    let terminator = Terminator::start(&cert, gateway).await;
    let mut config = FleetConfig::new(vec![terminator.addr], agents, ca.cert_pem());
    config.ramp = Duration::from_secs(2);
    let started = Instant::now();
    let fleet = Fleet::start(config).unwrap();
    fleet
        .wait_connected(agents, Duration::from_secs(60))
        .await
        .unwrap();
    eprintln!("{agents} agents connected in {:?}", started.elapsed());
    sleep(Duration::from_secs(3)).await;
    let drained = terminator.close(agents / 4, Kill::Graceful);
    wait_for(&fleet, "drained agents back", |s| s.connected == agents).await;
    sleep(Duration::from_secs(2)).await;
    let rss = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .map(str::to_owned)
        .unwrap_or_default();
    let mut summary = fleet.stop().await;
    summary.per_agent.clear();
    summary.distribution.clear();
    summary.graceful_close_times_seconds.clear();
    eprintln!("{rss}\n{}", serde_json::to_string_pretty(&summary).unwrap());
    assert_eq!(summary.graceful_closes, drained as u64);
    assert_eq!(summary.false_offline, 0);
    assert_eq!(summary.connected_at_end, agents);
}
