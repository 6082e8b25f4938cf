//! The TLS agent fleet: thousands of long-lived connections that behave like real devices.
//!
//! A [`Fleet`] owns one task per agent (see `agent`), a shared ledger (`tally`) and a sampler
//! that records the per-target distribution every second. Where agents connect is a
//! [`Targets`] list that may change while the fleet runs (see `targets`), so the fleet can see
//! a Service the way a load balancer does. It measures what Ballast promises to keep at zero
//! or near the floor: gaps longer than the offline threshold, abrupt closes, failed
//! handshakes, and how connections spread over the targets. It never judges a run; the
//! [`FleetSummary`] is for tests and benchmarks to judge.
//!
//! TLS session resumption is off by default: every reconnect is a full handshake, which is the
//! cost a reconnect storm puts on a gateway whose agents do not resume, and it makes the
//! certificate fingerprint each agent reports the one the server serves *now*. With
//! [`FleetConfig::resume`] each agent keeps its own session and offers it on every reconnect,
//! as a real device with a session cache does (the fingerprint is then the one the resumed
//! session was made with).

mod agent;
mod backoff;
mod tally;
mod targets;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use backoff::{backoff_delay, Rng};
pub use tally::FailureKind;
pub use targets::Targets;

use crate::summary::FleetSummary;
use tally::Tally;

/// Connections per source address at most: the kernel hands out ~28 000 ephemeral ports per
/// local address when we bind before connecting, and churn leaves some in TIME_WAIT.
pub const CONNECTIONS_PER_SOURCE_IP: usize = 20_000;

/// How long [`Fleet::stop`] waits for agents to send their close_notify.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What the fleet does.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// Where agents connect, read afresh at every connection attempt: agent `i` first picks
    /// `targets[i % len]`, every later attempt one at random, like a load balancer. It may
    /// change while the fleet runs, and may be empty: an attempt then waits 100 ms, looks
    /// again and, still finding none, counts as a `no_target` failure and backs off.
    pub targets: Targets,
    /// Number of agents.
    pub agents: usize,
    /// Agents start evenly spread over this time.
    pub ramp: Duration,
    /// Interval between PINGs.
    pub heartbeat: Duration,
    /// An agent disconnected longer than this is "falsely offline".
    pub offline_threshold: Duration,
    /// Length of the run from start (ramp included), for [`Fleet::run_to_end`].
    pub duration: Duration,
    /// PEM trust anchor(s) for the servers' certificates.
    pub ca_pem: String,
    /// Name sent as SNI and verified in the certificate (DNS name or IP address).
    pub server_name: String,
    /// Local addresses to connect from, round-robin by agent index. Empty: for a target on
    /// loopback, [`default_source_ips`]; otherwise the kernel's choice (decided per attempt,
    /// since the targets may change).
    pub source_ips: Vec<IpAddr>,
    /// Base of the exponential backoff after failures.
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_cap: Duration,
    /// Limit on TCP connect + TLS handshake + HELLO/WELCOME.
    pub connect_timeout: Duration,
    /// Each agent resumes its TLS session on reconnect (its own session cache).
    pub resume: bool,
}

impl FleetConfig {
    /// A fleet of `agents` against `targets` (a fixed `Vec<SocketAddr>` or a shared
    /// [`Targets`]), trusting `ca_pem`, with defaults: no ramp, 1 s heartbeat, 60 s offline
    /// threshold, 30 s run, name `localhost`, backoff 100 ms doubling up to 10 s, 10 s connect
    /// timeout.
    pub fn new(targets: impl Into<Targets>, agents: usize, ca_pem: String) -> Self {
        FleetConfig {
            targets: targets.into(),
            agents,
            ramp: Duration::ZERO,
            heartbeat: Duration::from_secs(1),
            offline_threshold: Duration::from_secs(60),
            duration: Duration::from_secs(30),
            ca_pem,
            server_name: "localhost".into(),
            source_ips: Vec::new(),
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            resume: false,
        }
    }
}

/// Enough loopback source addresses (127.0.0.2, 127.0.0.3, …) that none carries more than
/// [`CONNECTIONS_PER_SOURCE_IP`] agents. 127.0.0.1 is left to the gateways and sidecars, whose
/// own upstream connections draw from its ports.
pub fn default_source_ips(agents: usize) -> Vec<IpAddr> {
    let wanted = agents.div_ceil(CONNECTIONS_PER_SOURCE_IP).max(1);
    (u32::from(Ipv4Addr::new(127, 0, 0, 2))..u32::from(Ipv4Addr::new(127, 255, 255, 255)))
        .map(Ipv4Addr::from)
        .filter(|ip| !matches!(ip.octets()[3], 0 | 255))
        .take(wanted)
        .map(IpAddr::V4)
        .collect()
}

/// A cheap snapshot of the running fleet.
#[derive(Serialize, Clone, Debug, Default)]
pub struct LiveStats {
    /// Agents holding an established connection (WELCOME received).
    pub connected: usize,
    /// Established connections per target address: every address in the current target list
    /// (0 if none), and any other address still holding connections.
    pub per_target: BTreeMap<String, usize>,
    pub reconnects: u64,
    pub disconnects: u64,
    /// Server-initiated closes with TLS close_notify.
    pub graceful_closes: u64,
    /// Server-side losses without close_notify.
    pub abrupt_closes: u64,
    /// Failed connection attempts, all kinds.
    pub handshake_failures: u64,
    /// Agents currently disconnected for longer than the offline threshold.
    pub offline_now: usize,
    /// Longest gap so far, open gaps included.
    pub longest_gap: Duration,
    pub pongs: u64,
    /// Leaf fingerprint of each agent's current connection → agents.
    pub server_cert_sha256: BTreeMap<String, usize>,
}

/// A running fleet. Dropping it stops the agents too, but only [`Fleet::stop`] returns what
/// they measured.
pub struct Fleet {
    config: FleetConfig,
    tally: Arc<Tally>,
    stop: watch::Sender<bool>,
    agents: Vec<JoinHandle<()>>,
    sampler: JoinHandle<()>,
}

impl Fleet {
    /// Spawns every agent on the current tokio runtime and returns at once.
    pub fn start(config: FleetConfig) -> Result<Fleet> {
        tokio::runtime::Handle::try_current()
            .context("Fleet::start must be called inside a tokio runtime")?;
        if config.heartbeat.is_zero() {
            bail!("the heartbeat interval must be positive");
        }
        let client = client_config(&config.ca_pem)?;
        let server_name = ServerName::try_from(config.server_name.clone())
            .with_context(|| format!("invalid server name {:?}", config.server_name))?;
        let start = Instant::now();
        let tally = Arc::new(Tally::new(
            start,
            config.agents,
            config.targets.clone(),
            config.offline_threshold,
        ));
        let (stop, stop_rx) = watch::channel(false);
        let ctx = Arc::new(agent::Context {
            config: config.clone(),
            client,
            server_name,
            loopback_source_ips: default_source_ips(config.agents),
            tally: tally.clone(),
        });
        let agents = (0..config.agents)
            .map(|id| {
                let delay = config.ramp.mul_f64(id as f64 / config.agents.max(1) as f64);
                tokio::spawn(agent::run(ctx.clone(), id, delay, stop_rx.clone()))
            })
            .collect();
        let sampler = tokio::spawn(sample_every_second(tally.clone(), stop_rx));
        Ok(Fleet {
            config,
            tally,
            stop,
            agents,
            sampler,
        })
    }

    /// The configuration the fleet runs with.
    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    /// When the fleet started.
    pub fn started_at(&self) -> Instant {
        self.tally.start()
    }

    /// When [`Fleet::run_to_end`] will stop it.
    pub fn deadline(&self) -> Instant {
        self.tally.start() + self.config.duration
    }

    /// A snapshot of the counters; cost is one pass over the agents' slots.
    pub fn stats(&self) -> LiveStats {
        self.tally.live()
    }

    /// Waits until at least `n` agents are connected; the error carries the live stats.
    pub async fn wait_connected(&self, n: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let stats = self.stats();
            if stats.connected >= n {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "only {} of {n} agents connected after {timeout:?}: {stats:?}",
                    stats.connected
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops every agent now (each sends close_notify) and returns the summary as of this
    /// moment; the agents' own goodbyes are not counted as closes.
    pub async fn stop(self) -> FleetSummary {
        let _ = self.stop.send(true);
        let summary = self.tally.summarize(Instant::now());
        self.sampler.abort();
        let deadline = Instant::now() + STOP_GRACE;
        for agent in self.agents {
            let abort = agent.abort_handle();
            if tokio::time::timeout_at(deadline, agent).await.is_err() {
                abort.abort();
            }
        }
        summary
    }

    /// Lets the fleet run until `config.duration` after its start, then stops it.
    pub async fn run_to_end(self) -> FleetSummary {
        tokio::time::sleep_until(self.deadline()).await;
        self.stop().await
    }

    pub(crate) fn tally(&self) -> Arc<Tally> {
        self.tally.clone()
    }

    pub(crate) fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }
}

/// The agents' TLS client: ring provider, the given trust anchors, no resumption (an agent
/// that resumes makes its own copy with a session cache, [`agent::Context::connector`]).
pub(crate) fn client_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.context("parsing CA PEM")?)
            .context("adding CA certificate")?;
    }
    if roots.is_empty() {
        bail!("no CA certificate found in the CA PEM");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("choosing TLS versions")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

async fn sample_every_second(tally: Arc<Tally>, mut stop: watch::Receiver<bool>) {
    let mut next = tally.start();
    loop {
        next += Duration::from_secs(1);
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep_until(next) => tally.sample_distribution(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_sources_keep_each_address_under_the_port_budget() {
        assert_eq!(
            default_source_ips(10),
            vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))]
        );
        assert_eq!(default_source_ips(0).len(), 1);
        assert_eq!(default_source_ips(20_000).len(), 1);
        assert_eq!(default_source_ips(20_001).len(), 2);
        let many = default_source_ips(1_000_000);
        assert_eq!(many.len(), 50);
        assert!(many.iter().all(|ip| ip.is_loopback()));
        let big = default_source_ips(300 * CONNECTIONS_PER_SOURCE_IP);
        assert_eq!(big.len(), 300);
        assert!(big.iter().all(|ip| match ip {
            IpAddr::V4(v4) => !matches!(v4.octets()[3], 0 | 255),
            IpAddr::V6(_) => false,
        }));
    }

    #[test]
    fn bad_configs_are_refused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let target: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
            assert!(Fleet::start(FleetConfig::new(vec![target], 1, String::new())).is_err());
            assert!(Fleet::start(FleetConfig::new(vec![target], 1, "junk".into())).is_err());
        });
        assert!(Fleet::start(FleetConfig::new(vec![], 1, String::new())).is_err());
    }
}
