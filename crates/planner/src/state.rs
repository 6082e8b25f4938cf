//! What the planner remembers between two plans. Everything here survives an operator
//! restart: the operator stores it in the cluster and hands it back, and a planner given the
//! same state and observation plans the same next step.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The planner's memory.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// The adaptive budget in force (reconnects per second); `None` before the first plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<f64>,
    /// Planned closes of recent plans, whose agents may not be back yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_flight: Vec<Spent>,
    /// The planned closes per second of the previous plan: reported handshake rates include
    /// these arrivals, which are not organic load.
    #[serde(default)]
    pub last_rate: f64,
    /// Connections held or in flight at the previous plan. Agents are conserved between two
    /// plans (but for organic arrivals and departures), so what is missing from the pods'
    /// counts now is what is still reconnecting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_total: Option<u64>,
    /// A rolling restart under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// A rebalance under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance: Option<Episode>,
    /// A re-handshake window under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rehandshake: Option<Window>,
    /// Totals since the planner first ran, for status and metrics.
    #[serde(default)]
    pub totals: Totals,
}

/// Closes planned at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spent {
    pub at: f64,
    pub closes: u64,
    /// The same closes by pod, so that a pod whose report predates them is not asked to
    /// close its excess twice.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_pod: BTreeMap<String, u64>,
}

/// A rolling restart: which pods are being drained, which restart, which are done.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    pub started_at: f64,
    /// Pod name → when its drain began.
    pub draining: BTreeMap<String, f64>,
    /// Pod name → the restart under way.
    pub restarting: BTreeMap<String, Restarting>,
    /// Pods replaced in this rollout: never drained or restarted again by it.
    pub restarted: BTreeSet<String>,
}

/// A pod whose restart was ordered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Restarting {
    pub since: f64,
    /// The uid of the pod that was restarted: its successor has another.
    pub old_uid: String,
}

/// A rebalance episode: donors and receivers are fixed when it starts, so a connection moved
/// from a donor to a receiver is never planned back.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Episode {
    pub started_at: f64,
    pub donors: BTreeSet<String>,
}

/// A re-handshake window: connections on an older certificate must be gone by `deadline`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Window {
    pub started_at: f64,
    pub deadline: f64,
}

/// Running totals.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub planned_closes: u64,
    pub restarts: u64,
}

impl State {
    /// Planned closes that may still be reconnecting at `now`.
    pub fn in_flight_at(&self, now: f64, settle: f64) -> u64 {
        self.in_flight
            .iter()
            .filter(|s| now - s.at < settle)
            .map(|s| s.closes)
            .sum()
    }
}
