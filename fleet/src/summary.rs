//! The outcome of a fleet run, as the JSON a benchmark or test reads.
//!
//! The mission's figures — false offline agents, dropped connections, time to rebalance,
//! behaviour under a reconnect storm — are each computed from these fields, so the names say
//! exactly what was counted. Times are seconds since the fleet started unless named `_ms`.

use std::collections::BTreeMap;

use serde::Serialize;

/// Everything a run measured.
#[derive(Serialize, Clone, Debug, Default)]
pub struct FleetSummary {
    /// Agents in the fleet.
    pub agents: usize,
    /// Wall time from start to stop.
    pub duration_seconds: f64,
    /// Agents holding a connection (WELCOME received) when the fleet stopped.
    pub connected_at_end: usize,
    /// Agents that never completed a first connection.
    pub never_connected: usize,
    /// Connections re-established after a loss (not counting each agent's first).
    pub reconnects: u64,
    /// Established connections lost, for any reason other than the fleet stopping.
    pub disconnects: u64,
    /// Losses where the server sent TLS close_notify: a planned close.
    pub graceful_closes: u64,
    /// Losses without close_notify: reset, bare EOF, dead heartbeat, protocol error.
    pub abrupt_closes: u64,
    /// Failed connection attempts by kind: `connect`, `tls`, `timeout`, `protocol`, and
    /// `no_target` (the target list was empty: no endpoint to try).
    pub handshake_failures: BTreeMap<String, u64>,
    /// Agents disconnected longer than the offline threshold at least once (including
    /// agents still disconnected that long when the fleet stopped).
    pub false_offline: usize,
    /// The threshold used for `false_offline`.
    pub offline_threshold_seconds: f64,
    /// Longest gap of any agent, ongoing gaps at the stop included.
    pub longest_gap_seconds: f64,
    /// Completed gaps: from losing a connection to the next WELCOME.
    pub gaps_seconds: GapStats,
    /// PING → PONG round trips.
    pub heartbeat_rtt_ms: RttStats,
    /// PONGs received.
    pub pongs: u64,
    /// Per-agent detail; empty unless asked for (it is large).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub per_agent: Vec<AgentSummary>,
    /// Connections per target, sampled every second.
    pub distribution: Vec<DistributionSample>,
    /// Leaf fingerprint (SHA-256 hex) of each agent's current connection → agents.
    pub server_cert_sha256: BTreeMap<String, usize>,
    /// When each graceful (close_notify) close happened, sorted.
    pub graceful_close_times_seconds: Vec<f64>,
    /// When each abrupt close happened, sorted.
    pub abrupt_close_times_seconds: Vec<f64>,
}

/// Distribution of completed disconnect gaps, in seconds.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct GapStats {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Distribution of heartbeat round trips, in milliseconds.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct RttStats {
    pub count: u64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// One agent's history.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct AgentSummary {
    pub id: usize,
    pub disconnects: u64,
    pub reconnects: u64,
    pub longest_gap_seconds: f64,
    pub false_offline: bool,
}

/// Connections per target at one moment.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct DistributionSample {
    pub at_seconds: f64,
    pub per_target: BTreeMap<String, usize>,
}

impl FleetSummary {
    /// Every server-initiated close (graceful and abrupt), sorted.
    pub fn close_times_seconds(&self) -> Vec<f64> {
        let mut all: Vec<f64> = self
            .graceful_close_times_seconds
            .iter()
            .chain(&self.abrupt_close_times_seconds)
            .copied()
            .collect();
        all.sort_by(f64::total_cmp);
        all
    }

    /// Failed connection attempts of every kind.
    pub fn total_handshake_failures(&self) -> u64 {
        self.handshake_failures.values().sum()
    }
}

impl GapStats {
    /// Summarises gaps given in seconds, in any order.
    pub fn from_seconds(mut gaps: Vec<f64>) -> GapStats {
        gaps.sort_by(f64::total_cmp);
        GapStats {
            count: gaps.len(),
            p50: percentile(&gaps, 0.50),
            p99: percentile(&gaps, 0.99),
            max: gaps.last().copied().unwrap_or(0.0),
        }
    }
}

/// Nearest-rank percentile of an ascending slice (`p` in 0..=1); 0 when empty.
///
/// Nearest rank rather than interpolation: a reported p99 is always a gap some agent really
/// had, which is what an on-call engineer reading the figure assumes.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.50), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 0.5), 2.0);
    }

    #[test]
    fn gap_stats_sort_their_input() {
        let g = GapStats::from_seconds(vec![3.0, 1.0, 2.0]);
        assert_eq!(
            g,
            GapStats {
                count: 3,
                p50: 2.0,
                p99: 3.0,
                max: 3.0
            }
        );
        assert_eq!(GapStats::from_seconds(vec![]), GapStats::default());
    }

    #[test]
    fn close_times_merge_sorted() {
        let s = FleetSummary {
            graceful_close_times_seconds: vec![1.0, 3.0],
            abrupt_close_times_seconds: vec![2.0],
            ..Default::default()
        };
        assert_eq!(s.close_times_seconds(), vec![1.0, 2.0, 3.0]);
    }

    #[test]
    fn per_agent_is_omitted_when_empty() {
        let json = serde_json::to_value(FleetSummary::default()).unwrap();
        assert!(json.get("per_agent").is_none());
        assert!(json.get("false_offline").is_some());
    }
}
