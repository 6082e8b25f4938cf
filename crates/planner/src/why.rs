//! Reasons a person can read: every action and every wait carries one; the operator turns
//! them into Events and status messages.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why the planner did, or could not do, something.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Why {
    /// A pod holds more than its share.
    Rebalance { connections: u64, target: u64 },
    /// A pod runs an old revision and is drained before its restart.
    DrainForRestart { connections: u64 },
    /// Connections on an older certificate are moved before the window ends.
    Rehandshake { older: u64, seconds_left: f64 },
    /// A drained pod is empty and may restart.
    RestartDrained,
    /// A pod's drain reached `drainTimeout`; it restarts with what it still holds.
    RestartAfterTimeout { remaining: u64 },
    /// A pod that is not Ready runs an old revision: it restarts first, nothing to drain.
    RestartUnready,
    /// Not enough room on the other pods for a pod's connections.
    NoHeadroom { pod: String, needed: u64, room: u64 },
    /// A restarted pod's successor is not Ready yet.
    WaitingForSuccessor { pod: String, seconds: f64 },
    /// Already `max_unavailable` pods restarting.
    AtMaxUnavailable { restarting: usize },
    /// The budget cannot finish the re-handshake window.
    BudgetTooLow { needed_per_second: f64, budget: f64 },
    /// A pod has not reported recently; it is neither drained nor counted.
    NoReport { pod: String },
    /// The load balancer does not follow the plan's steering yet: pods that should take no
    /// new connections are still routed to, or no pod that should is. Nothing is closed until
    /// it does, so no agent is sent where it would be refused or moved again.
    SteeringPending { routed_against_plan: Vec<String> },
    /// Steering: this pod is below its target and takes new connections.
    BelowTarget,
    /// Steering: this pod sheds, restarts or is full, and takes no new connections.
    NotAccepting,
    /// Steering: nothing to steer.
    Default,
    /// A person paused the planner (the operator's `ballast.dev/paused` annotation); the
    /// planner itself never decides this.
    Paused,
}

impl Why {
    /// The kinds a plan can wait for (the `kind` of [`Why::kind`]), for a metric's labels.
    pub const WAIT_KINDS: [&'static str; 7] = [
        "noHeadroom",
        "waitingForSuccessor",
        "atMaxUnavailable",
        "budgetTooLow",
        "noReport",
        "steeringPending",
        "paused",
    ];

    /// The reason's kind, as it is serialized (`kind`): a short stable name for metrics and
    /// condition reasons, without the figures.
    pub fn kind(&self) -> &'static str {
        match self {
            Why::Rebalance { .. } => "rebalance",
            Why::DrainForRestart { .. } => "drainForRestart",
            Why::Rehandshake { .. } => "rehandshake",
            Why::RestartDrained => "restartDrained",
            Why::RestartAfterTimeout { .. } => "restartAfterTimeout",
            Why::RestartUnready => "restartUnready",
            Why::NoHeadroom { .. } => "noHeadroom",
            Why::WaitingForSuccessor { .. } => "waitingForSuccessor",
            Why::AtMaxUnavailable { .. } => "atMaxUnavailable",
            Why::BudgetTooLow { .. } => "budgetTooLow",
            Why::NoReport { .. } => "noReport",
            Why::SteeringPending { .. } => "steeringPending",
            Why::BelowTarget => "belowTarget",
            Why::NotAccepting => "notAccepting",
            Why::Default => "default",
            Why::Paused => "paused",
        }
    }
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Rebalance { connections, target } => write!(
                f,
                "holds {connections} connections against a target of {target}: shedding the excess"
            ),
            Why::DrainForRestart { connections } => write!(
                f,
                "runs an old revision: draining its {connections} connections before the restart"
            ),
            Why::Rehandshake { older, seconds_left } => write!(
                f,
                "{older} connections still on the previous certificate, {seconds_left:.0}s left in the window"
            ),
            Why::RestartDrained => write!(f, "drained: restarting"),
            Why::RestartAfterTimeout { remaining } => write!(
                f,
                "drain timeout reached: restarting with {remaining} connections still open"
            ),
            Why::RestartUnready => write!(f, "not Ready and on an old revision: restarting first"),
            Why::NoHeadroom { pod, needed, room } => write!(
                f,
                "waiting: {pod} holds {needed} connections but the other pods have room for {room}"
            ),
            Why::WaitingForSuccessor { pod, seconds } => write!(
                f,
                "waiting {seconds:.0}s so far for {pod}'s successor to become Ready"
            ),
            Why::AtMaxUnavailable { restarting } => write!(
                f,
                "waiting: {restarting} pods restarting already (maxUnavailable)"
            ),
            Why::BudgetTooLow {
                needed_per_second,
                budget,
            } => write!(
                f,
                "the re-handshake window needs {needed_per_second:.0} reconnects/s but the budget is {budget:.0}/s: it will overrun"
            ),
            Why::NoReport { pod } => write!(f, "{pod} has not reported: not planned for"),
            Why::SteeringPending {
                routed_against_plan,
            } if routed_against_plan.is_empty() => write!(
                f,
                "waiting for the load balancer to route to the pods that accept"
            ),
            Why::SteeringPending {
                routed_against_plan,
            } => write!(
                f,
                "waiting for the load balancer to stop routing to {}",
                routed_against_plan.join(", ")
            ),
            Why::BelowTarget => write!(f, "below its target: accepting"),
            Why::NotAccepting => write!(f, "shedding, restarting or full: not accepting"),
            Why::Default => write!(f, "accepting"),
            Why::Paused => write!(
                f,
                "paused by annotation ballast.dev/paused: nothing is drained or restarted until it is removed"
            ),
        }
    }
}
