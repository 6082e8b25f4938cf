//! The fleet's shared ledger: what every agent reports as it connects, loses and retries.
//!
//! Agents only ever add to it, with relaxed atomics on the per-heartbeat path; the few events
//! that carry data (a gap's length, a close's timestamp, a certificate fingerprint) happen once
//! per connection and go behind short mutexes. Connections per target are keyed by address, not
//! by position in the target list, because that list may change under a running fleet. Readers take snapshots: the live stats every
//! second and the summary once at the end. Nothing here does I/O.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::{LiveStats, Targets};
use crate::latency::Histogram;
use crate::summary::{AgentSummary, DistributionSample, FleetSummary, GapStats, RttStats};

/// Why a connection attempt failed; the keys of `handshake_failures`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// TCP bind or connect failed (refused, unreachable, no local port left).
    Connect,
    /// The TLS handshake failed (bad certificate, reset or EOF mid-handshake).
    Tls,
    /// Connect + handshake + WELCOME took longer than `connect_timeout`.
    Timeout,
    /// The gateway did not answer HELLO with WELCOME.
    Protocol,
    /// The target list stayed empty for the whole attempt: no endpoint to connect to, as
    /// behind a Service with no ready pod.
    NoTarget,
}

impl FailureKind {
    const ALL: [FailureKind; 5] = [
        FailureKind::Connect,
        FailureKind::Tls,
        FailureKind::Timeout,
        FailureKind::Protocol,
        FailureKind::NoTarget,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::Tls => "tls",
            FailureKind::Timeout => "timeout",
            FailureKind::Protocol => "protocol",
            FailureKind::NoTarget => "no_target",
        }
    }
}

/// How an established connection ended, seen from the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// The server sent TLS close_notify: a planned drain.
    Graceful,
    /// Anything else: reset, EOF without close_notify, dead heartbeat, protocol error.
    Abrupt,
}

/// One agent's row of the ledger.
#[derive(Default)]
struct AgentSlot {
    /// Microseconds since start, plus one, when the agent lost its connection; 0 while it is
    /// connected or before its first connection.
    lost_at: AtomicU64,
    ever_connected: AtomicBool,
    disconnects: AtomicU64,
    reconnects: AtomicU64,
    longest_gap_us: AtomicU64,
    false_offline: AtomicBool,
}

#[derive(Default)]
struct Events {
    gaps_seconds: Vec<f64>,
    graceful_times: Vec<f64>,
    abrupt_times: Vec<f64>,
}

pub struct Tally {
    start: Instant,
    offline_threshold: Duration,
    /// Listed in `per_target` even with no connection.
    targets: Targets,
    /// Established connections per address; an address leaves the map at zero.
    per_target: Mutex<BTreeMap<SocketAddr, usize>>,
    connected: AtomicUsize,
    reconnects: AtomicU64,
    disconnects: AtomicU64,
    graceful: AtomicU64,
    abrupt: AtomicU64,
    pongs: AtomicU64,
    failures: [AtomicU64; FailureKind::ALL.len()],
    agents: Box<[AgentSlot]>,
    fingerprints: Mutex<BTreeMap<String, usize>>,
    events: Mutex<Events>,
    distribution: Mutex<Vec<DistributionSample>>,
    rtt: Histogram,
}

impl Tally {
    pub fn new(
        start: Instant,
        agents: usize,
        targets: Targets,
        offline_threshold: Duration,
    ) -> Tally {
        Tally {
            start,
            offline_threshold,
            targets,
            per_target: Mutex::new(BTreeMap::new()),
            connected: AtomicUsize::new(0),
            reconnects: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            graceful: AtomicU64::new(0),
            abrupt: AtomicU64::new(0),
            pongs: AtomicU64::new(0),
            failures: Default::default(),
            agents: (0..agents).map(|_| AgentSlot::default()).collect(),
            fingerprints: Mutex::new(BTreeMap::new()),
            events: Mutex::new(Events::default()),
            distribution: Mutex::new(Vec::new()),
            rtt: Histogram::new(),
        }
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    fn micros_since_start(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_micros()).unwrap_or(u64::MAX)
    }

    /// The agent got WELCOME on `target`, serving a leaf with `fingerprint`.
    pub fn on_welcome(&self, agent: usize, target: SocketAddr, fingerprint: &str) {
        let now = Instant::now();
        let slot = &self.agents[agent];
        let lost_at = slot.lost_at.swap(0, Relaxed);
        if lost_at != 0 {
            let gap_us = self.micros_since_start(now).saturating_sub(lost_at - 1);
            slot.reconnects.fetch_add(1, Relaxed);
            slot.longest_gap_us.fetch_max(gap_us, Relaxed);
            if Duration::from_micros(gap_us) > self.offline_threshold {
                slot.false_offline.store(true, Relaxed);
            }
            self.reconnects.fetch_add(1, Relaxed);
            lock(&self.events).gaps_seconds.push(gap_us as f64 / 1e6);
        }
        slot.ever_connected.store(true, Relaxed);
        self.connected.fetch_add(1, Relaxed);
        *lock(&self.per_target).entry(target).or_default() += 1;
        *lock(&self.fingerprints)
            .entry(fingerprint.to_owned())
            .or_default() += 1;
    }

    /// The agent's established connection to `target` ended by the server's doing.
    pub fn on_loss(&self, agent: usize, target: SocketAddr, fingerprint: &str, close: Close) {
        let now = Instant::now();
        let slot = &self.agents[agent];
        slot.lost_at
            .store(self.micros_since_start(now).saturating_add(1), Relaxed);
        slot.disconnects.fetch_add(1, Relaxed);
        self.connected.fetch_sub(1, Relaxed);
        self.disconnects.fetch_add(1, Relaxed);
        decrement(&mut lock(&self.per_target), &target);
        decrement(&mut lock(&self.fingerprints), fingerprint);
        let at = now.saturating_duration_since(self.start).as_secs_f64();
        let mut events = lock(&self.events);
        match close {
            Close::Graceful => {
                self.graceful.fetch_add(1, Relaxed);
                events.graceful_times.push(at);
            }
            Close::Abrupt => {
                self.abrupt.fetch_add(1, Relaxed);
                events.abrupt_times.push(at);
            }
        }
    }

    pub fn on_failure(&self, kind: FailureKind) {
        self.failures[kind as usize].fetch_add(1, Relaxed);
    }

    pub fn on_pong(&self, rtt: Duration) {
        self.pongs.fetch_add(1, Relaxed);
        self.rtt
            .record(u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX));
    }

    /// Every current target (0 if idle) and every address still holding connections.
    fn per_target(&self) -> BTreeMap<String, usize> {
        let mut out: BTreeMap<String, usize> = self
            .targets
            .snapshot()
            .iter()
            .map(|addr| (addr.to_string(), 0))
            .collect();
        for (addr, n) in lock(&self.per_target).iter() {
            out.insert(addr.to_string(), *n);
        }
        out
    }

    /// Records one sample of the per-target distribution.
    pub fn sample_distribution(&self) {
        let sample = DistributionSample {
            at_seconds: self.start.elapsed().as_secs_f64(),
            per_target: self.per_target(),
        };
        lock(&self.distribution).push(sample);
    }

    /// The gap an agent has been in since losing its connection, if it is in one.
    fn ongoing_gap(&self, slot: &AgentSlot, now_us: u64) -> Option<Duration> {
        match slot.lost_at.load(Relaxed) {
            0 => None,
            lost => Some(Duration::from_micros(now_us.saturating_sub(lost - 1))),
        }
    }

    pub fn live(&self) -> LiveStats {
        let now_us = self.micros_since_start(Instant::now());
        let mut offline_now = 0;
        let mut longest_gap = Duration::ZERO;
        for slot in self.agents.iter() {
            longest_gap = longest_gap.max(Duration::from_micros(slot.longest_gap_us.load(Relaxed)));
            if let Some(gap) = self.ongoing_gap(slot, now_us) {
                longest_gap = longest_gap.max(gap);
                if gap > self.offline_threshold {
                    offline_now += 1;
                }
            }
        }
        LiveStats {
            connected: self.connected.load(Relaxed),
            per_target: self.per_target(),
            reconnects: self.reconnects.load(Relaxed),
            disconnects: self.disconnects.load(Relaxed),
            graceful_closes: self.graceful.load(Relaxed),
            abrupt_closes: self.abrupt.load(Relaxed),
            handshake_failures: self.failures.iter().map(|f| f.load(Relaxed)).sum(),
            offline_now,
            longest_gap,
            pongs: self.pongs.load(Relaxed),
            server_cert_sha256: lock(&self.fingerprints).clone(),
        }
    }

    /// The run's outcome as of `end`; gaps still open at `end` count as if they closed then.
    pub fn summarize(&self, end: Instant) -> FleetSummary {
        let end_us = self.micros_since_start(end);
        let threshold = self.offline_threshold;
        let per_agent: Vec<AgentSummary> = self
            .agents
            .iter()
            .enumerate()
            .map(|(id, slot)| {
                let completed = Duration::from_micros(slot.longest_gap_us.load(Relaxed));
                let longest = self
                    .ongoing_gap(slot, end_us)
                    .map_or(completed, |open| open.max(completed));
                AgentSummary {
                    id,
                    disconnects: slot.disconnects.load(Relaxed),
                    reconnects: slot.reconnects.load(Relaxed),
                    longest_gap_seconds: longest.as_secs_f64(),
                    false_offline: slot.false_offline.load(Relaxed) || longest > threshold,
                }
            })
            .collect();
        let events = lock(&self.events);
        let mut graceful = events.graceful_times.clone();
        let mut abrupt = events.abrupt_times.clone();
        graceful.sort_by(f64::total_cmp);
        abrupt.sort_by(f64::total_cmp);
        let rtt_ms = |us: u64| us as f64 / 1000.0;
        FleetSummary {
            agents: self.agents.len(),
            duration_seconds: end.saturating_duration_since(self.start).as_secs_f64(),
            connected_at_end: self.connected.load(Relaxed),
            never_connected: self
                .agents
                .iter()
                .filter(|s| !s.ever_connected.load(Relaxed))
                .count(),
            reconnects: self.reconnects.load(Relaxed),
            disconnects: self.disconnects.load(Relaxed),
            graceful_closes: self.graceful.load(Relaxed),
            abrupt_closes: self.abrupt.load(Relaxed),
            handshake_failures: FailureKind::ALL
                .iter()
                .map(|k| {
                    (
                        k.label().to_owned(),
                        self.failures[*k as usize].load(Relaxed),
                    )
                })
                .collect(),
            false_offline: per_agent.iter().filter(|a| a.false_offline).count(),
            offline_threshold_seconds: threshold.as_secs_f64(),
            longest_gap_seconds: per_agent
                .iter()
                .map(|a| a.longest_gap_seconds)
                .fold(0.0, f64::max),
            gaps_seconds: GapStats::from_seconds(events.gaps_seconds.clone()),
            heartbeat_rtt_ms: RttStats {
                count: self.rtt.count(),
                p50: rtt_ms(self.rtt.percentile(0.50)),
                p99: rtt_ms(self.rtt.percentile(0.99)),
                max: rtt_ms(self.rtt.max()),
            },
            pongs: self.pongs.load(Relaxed),
            per_agent,
            distribution: lock(&self.distribution).clone(),
            server_cert_sha256: lock(&self.fingerprints).clone(),
            graceful_close_times_seconds: graceful,
            abrupt_close_times_seconds: abrupt,
        }
    }
}

/// Takes one off `key`'s count, forgetting the key at zero so addresses and certificates
/// that come and go over a long run do not pile up.
fn decrement<K, Q>(counts: &mut BTreeMap<K, usize>, key: &Q)
where
    K: std::borrow::Borrow<Q> + Ord,
    Q: Ord + ?Sized,
{
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// A poisoned ledger is still a correct ledger: every update is a single push or add.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test(start_paused = true)]
    async fn gaps_reconnects_and_false_offline() {
        let start = Instant::now();
        let (a, b) = (addr(1), addr(2));
        let t = Tally::new(
            start,
            3,
            Targets::fixed(vec![a, b]),
            Duration::from_secs(60),
        );
        t.on_welcome(0, a, "fp1");
        t.on_welcome(1, b, "fp1");
        assert_eq!(t.live().connected, 2);
        tokio::time::advance(Duration::from_secs(1)).await;
        t.on_loss(0, a, "fp1", Close::Graceful);
        t.on_loss(1, b, "fp1", Close::Abrupt);
        tokio::time::advance(Duration::from_secs(2)).await;
        t.on_welcome(0, b, "fp2");
        tokio::time::advance(Duration::from_secs(70)).await;
        let live = t.live();
        assert_eq!(live.connected, 1);
        assert_eq!(live.offline_now, 1);
        assert_eq!(live.per_target["127.0.0.1:1"], 0);
        assert_eq!(live.per_target["127.0.0.1:2"], 1);
        assert_eq!(live.server_cert_sha256.len(), 1);
        assert_eq!(live.server_cert_sha256["fp2"], 1);
        let s = t.summarize(Instant::now());
        assert_eq!(s.reconnects, 1);
        assert_eq!(s.disconnects, 2);
        assert_eq!((s.graceful_closes, s.abrupt_closes), (1, 1));
        assert_eq!(s.graceful_close_times_seconds, vec![1.0]);
        assert_eq!(s.gaps_seconds.count, 1);
        assert!((s.gaps_seconds.max - 2.0).abs() < 1e-6);
        // Agent 1 is still disconnected after 72 s; agent 2 never connected.
        assert_eq!(s.false_offline, 1);
        assert!(s.per_agent[1].false_offline);
        assert!((s.longest_gap_seconds - 72.0).abs() < 1e-6);
        assert_eq!(s.never_connected, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn per_target_follows_a_changing_list_by_address() {
        let (a, b, c) = (addr(1), addr(2), addr(3));
        let targets = Targets::fixed(vec![a, b]);
        let t = Tally::new(Instant::now(), 3, targets.clone(), Duration::from_secs(60));
        t.on_welcome(0, a, "fp");
        t.on_welcome(1, b, "fp");
        // `a` leaves the list but keeps its connection; `c` joins empty.
        targets.set(vec![b, c]);
        let per_target = t.live().per_target;
        let expected = [("127.0.0.1:1", 1), ("127.0.0.1:2", 1), ("127.0.0.1:3", 0)];
        assert_eq!(per_target, expected.map(|(k, n)| (k.to_owned(), n)).into());
        t.on_loss(0, a, "fp", Close::Graceful);
        t.on_welcome(0, c, "fp");
        t.on_welcome(2, c, "fp");
        let per_target = t.live().per_target;
        let expected = [("127.0.0.1:2", 1), ("127.0.0.1:3", 2)];
        assert_eq!(per_target, expected.map(|(k, n)| (k.to_owned(), n)).into());
        assert_eq!(t.live().connected, 3);
    }

    #[test]
    fn no_target_is_its_own_failure_kind() {
        let t = Tally::new(
            Instant::now(),
            1,
            Targets::default(),
            Duration::from_secs(60),
        );
        t.on_failure(FailureKind::NoTarget);
        let s = t.summarize(Instant::now());
        assert_eq!(s.handshake_failures["no_target"], 1);
        assert_eq!(s.handshake_failures["connect"], 0);
        assert_eq!(s.total_handshake_failures(), 1);
        assert!(t.live().per_target.is_empty());
    }
}
