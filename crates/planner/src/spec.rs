//! The planner's view of a `PresenceCluster` spec: plain numbers in plain units (seconds,
//! connections, per second), parsed and defaulted by the caller.

use serde::{Deserialize, Serialize};

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    /// Connections one pod holds at most.
    pub max_connections_per_pod: u64,
    /// New TLS handshakes one pod can take per second.
    pub max_handshakes_per_second_per_pod: f64,
    /// The fleet-wide ceiling on planned reconnects per second.
    pub max_reconnects_per_second: f64,
    /// Pods that may be restarting (not Ready) at once, and pods drained for a restart at once.
    pub max_unavailable: usize,
    /// Longest a pod's drain before its restart may take, seconds.
    pub drain_timeout: f64,
    /// Move connections from over-loaded to under-loaded pods.
    pub rebalance: bool,
    /// A pod is over-loaded above target × (1 + tolerance); e.g. 0.1.
    pub tolerance: f64,
    /// Agents disconnected longer than this are reported offline, seconds.
    pub offline_threshold: f64,
    /// Re-handshake connections still on an older certificate within this many seconds.
    pub reconnect_within: Option<f64>,
    /// Knobs with defaults that few people should need to touch.
    #[serde(default)]
    pub tuning: Tuning,
}

/// Internal knobs, documented so that their effect can be reasoned about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tuning {
    /// How often [`crate::plan`] runs, seconds. Drains are issued over this window and
    /// replaced by the next plan, so a directive that is not renewed lapses by itself.
    pub interval: f64,
    /// A planned close may be in flight (its agent not yet back) for this long, seconds; how
    /// many really are is what is missing from the pods' counts since the previous plan.
    /// Nothing is planned on top of in-flight closes that the accepting pods could not absorb.
    pub settle: f64,
    /// Any pod whose handshake p99 is above this (seconds) halves the budget.
    pub latency_threshold: f64,
    /// Multiplicative decrease on trouble (latency, rate refusals, failed handshakes).
    pub decrease_factor: f64,
    /// Additive increase per healthy interval, as a fraction of the budget's ceiling.
    pub increase_fraction: f64,
    /// The budget never falls below this many reconnects per second.
    pub min_budget: f64,
    /// In-flight planned reconnects are kept below the accepting pods' spare handshake rate
    /// times this fraction of the offline threshold, so no planned gap comes near it.
    pub offline_safety: f64,
    /// A rebalance starts only when a pod is further than this many connections from its
    /// target (besides the tolerance): EMQX calls it `abs_conn_threshold`.
    pub min_move: u64,
    /// A report older than this many intervals is stale: the pod is treated as unknown.
    pub stale_after_intervals: f64,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            interval: 1.0,
            settle: 2.0,
            latency_threshold: 0.5,
            decrease_factor: 0.5,
            increase_fraction: 0.1,
            min_budget: 1.0,
            offline_safety: 0.25,
            stale_after_intervals: 5.0,
            min_move: 10,
        }
    }
}

impl Spec {
    /// The defaults of the `PresenceCluster` CRD, handy for tests and the simulator.
    pub fn with_defaults() -> Self {
        Self {
            max_connections_per_pod: 50_000,
            max_handshakes_per_second_per_pod: 500.0,
            max_reconnects_per_second: 2_000.0,
            max_unavailable: 1,
            drain_timeout: 600.0,
            rebalance: true,
            tolerance: 0.1,
            offline_threshold: 60.0,
            reconnect_within: None,
            tuning: Tuning::default(),
        }
    }
}
