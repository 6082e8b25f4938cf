//! What a simulation runs: the fleet, the pods, the load balancer, the event and the
//! strategies, with defaults for each scenario. Read from flags or a YAML file.

use serde::{Deserialize, Serialize};

/// The events a scenario replays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// A renewal restarts the fleet on a quiet Sunday; then the Monday-morning ramp brings
    /// the whole fleet back (the outage in INCIDENT.md).
    Incident,
    /// A renewal every pod can load in place (the sidecar terminates TLS).
    RenewalHotReload,
    /// A renewal for gateways that must restart.
    RenewalRolling,
    /// Pods added to a loaded fleet.
    ScaleUp,
    /// One pod's processes die.
    PodCrash,
    /// A node with several pods is drained (the pods are evicted and rescheduled).
    NodeDrain,
    /// Agents arriving much faster than usual (10x the steady rate) on a full fleet.
    MorningSurge,
}

/// How a strategy handles the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Restart every pod at once on renewal (Stakater Reloader): the incident.
    Reloader,
    /// A Kubernetes rolling restart, one pod at a time, no rebalancing.
    Rolling,
    /// A rolling restart, then connections recycled at a maximum age with ±10% jitter
    /// (gRPC MAX_CONNECTION_AGE).
    MaxAge,
    /// A rolling restart, then an EMQX-style rebalance: donors fail their health check,
    /// refuse new connections and evict at a fixed rate each.
    Emqx,
    /// Ballast: the planner decides every drain, steer and restart.
    Ballast,
}

impl Strategy {
    pub const ALL: [Strategy; 5] = [
        Strategy::Reloader,
        Strategy::Rolling,
        Strategy::MaxAge,
        Strategy::Emqx,
        Strategy::Ballast,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::Reloader => "reloader",
            Strategy::Rolling => "rolling",
            Strategy::MaxAge => "max-age",
            Strategy::Emqx => "emqx",
            Strategy::Ballast => "ballast",
        }
    }
}

/// How the load balancer picks a pod for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Balancer {
    /// kube-proxy: uniformly at random among ready endpoints.
    Random,
    RoundRobin,
    LeastConnections,
}

/// How the agents arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Arrival {
    /// Everyone is connected when the simulation starts.
    Flat,
    /// `online_at_start` of the fleet is connected; the rest arrive over `ramp_seconds`
    /// from `ramp_start_seconds`, fastest in the middle (a Monday morning).
    Ramp,
}

/// Every parameter of a run. Times in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    pub scenario: Scenario,
    pub seed: u64,
    pub agents: u64,
    pub pods: usize,
    /// Connections one pod holds at most.
    pub capacity: u64,
    /// TLS handshakes one pod completes per second.
    pub handshakes_per_second: f64,
    /// Kernel accept backlog of a pod without admission control.
    pub accept_backlog: usize,
    /// With Ballast's admission control, handshakes a pod lets wait, in seconds of its rate;
    /// beyond that it refuses before the handshake. Default: 8 s, under the agents' 10 s
    /// handshake timeout, so that no handshake is computed for an agent that gave up.
    pub admission_queue_seconds: f64,
    /// Terminate + start + ready of a restarted pod.
    pub restart_seconds: f64,
    pub balancer: Balancer,
    /// Endpoint changes reach the load balancer after this long.
    pub propagation_seconds: f64,
    pub offline_threshold: f64,
    /// An agent gives up a handshake that has not finished after this long.
    pub handshake_timeout: f64,
    /// Reconnect after an error or refusal: capped exponential backoff with full jitter.
    pub backoff_base: f64,
    pub backoff_cap: f64,
    pub arrival: Arrival,
    pub online_at_start: f64,
    pub ramp_start_seconds: f64,
    pub ramp_seconds: f64,
    /// When the scenario's event happens.
    pub event_at: f64,
    /// How long the simulation runs.
    pub duration: f64,
    /// Pods added (scale-up) or taken down (node-drain).
    pub pods_changed: usize,
    /// Ballast's PresenceCluster settings.
    pub max_reconnects_per_second: f64,
    pub max_unavailable: usize,
    pub tolerance: f64,
    /// Ballast: re-handshake older-certificate connections within this window (hot reload).
    pub reconnect_within: Option<f64>,
    /// gRPC-style maximum connection age.
    pub max_age_seconds: f64,
    /// EMQX: evictions per second per donor, and the health-check wait before them.
    pub emqx_evict_rate: f64,
    pub emqx_wait_health_check: f64,
    pub strategies: Vec<Strategy>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self::for_scenario(Scenario::Incident)
    }
}

impl SimConfig {
    /// The defaults of a scenario (stated in the README).
    pub fn for_scenario(scenario: Scenario) -> Self {
        let base = Self {
            scenario,
            seed: 1,
            agents: 200_000,
            pods: 10,
            capacity: 30_000,
            handshakes_per_second: 200.0,
            accept_backlog: 4_096,
            admission_queue_seconds: 8.0,
            restart_seconds: 15.0,
            balancer: Balancer::Random,
            propagation_seconds: 2.0,
            offline_threshold: 60.0,
            handshake_timeout: 10.0,
            backoff_base: 1.0,
            backoff_cap: 30.0,
            arrival: Arrival::Flat,
            online_at_start: 1.0,
            ramp_start_seconds: 0.0,
            ramp_seconds: 0.0,
            event_at: 30.0,
            duration: 1_200.0,
            pods_changed: 0,
            max_reconnects_per_second: 200.0,
            max_unavailable: 1,
            tolerance: 0.1,
            reconnect_within: None,
            max_age_seconds: 1_800.0,
            // EMQX's default is 500/s per donor, sized for brokers on large nodes; here it is
            // scaled so that the donors together evict at about Ballast's budget.
            emqx_evict_rate: 25.0,
            emqx_wait_health_check: 60.0,
            strategies: Strategy::ALL.to_vec(),
        };
        match scenario {
            Scenario::Incident => Self {
                arrival: Arrival::Ramp,
                online_at_start: 0.3,
                event_at: 60.0,
                ramp_start_seconds: 1_800.0,
                ramp_seconds: 3_600.0,
                duration: 7_200.0,
                ..base
            },
            Scenario::RenewalHotReload => Self {
                reconnect_within: Some(1_200.0),
                duration: 1_500.0,
                ..base
            },
            Scenario::RenewalRolling => Self {
                duration: 2_400.0,
                ..base
            },
            Scenario::ScaleUp => Self {
                pods: 8,
                pods_changed: 2,
                ..base
            },
            Scenario::PodCrash => base,
            Scenario::NodeDrain => Self {
                pods_changed: 3,
                ..base
            },
            Scenario::MorningSurge => Self {
                arrival: Arrival::Ramp,
                online_at_start: 0.5,
                ramp_start_seconds: 30.0,
                ramp_seconds: 30.0,
                duration: 900.0,
                ..base
            },
        }
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("handshakes_per_second", self.handshakes_per_second),
            ("max_reconnects_per_second", self.max_reconnects_per_second),
            ("offline_threshold", self.offline_threshold),
            ("handshake_timeout", self.handshake_timeout),
            ("backoff_base", self.backoff_base),
            ("backoff_cap", self.backoff_cap),
            ("duration", self.duration),
        ];
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{name} must be a positive number, not {v}"));
            }
        }
        if self.pods == 0 || self.pods > 1_000 {
            return Err(format!("pods must be 1 to 1000, not {}", self.pods));
        }
        if self.agents == 0 || self.agents > 20_000_000 {
            return Err(format!(
                "agents must be 1 to 20,000,000, not {}",
                self.agents
            ));
        }
        if !(0.0..=1.0).contains(&self.online_at_start) {
            return Err("online_at_start must be between 0 and 1".into());
        }
        if self.backoff_cap > 90.0 || self.handshake_timeout > 90.0 {
            return Err("backoff_cap and handshake_timeout must be at most 90 s".into());
        }
        if self.scenario == Scenario::ScaleUp && self.pods_changed == 0 {
            return Err("scale-up needs pods_changed > 0".into());
        }
        if self.scenario == Scenario::NodeDrain && !(1..self.pods).contains(&self.pods_changed) {
            return Err("node-drain needs 1 <= pods_changed < pods".into());
        }
        if self.strategies.is_empty() {
            return Err("no strategy to run".into());
        }
        Ok(())
    }
}
