//! The strategies compared in every scenario, as controllers that act on the world once per
//! simulated second. `ballast` runs `ballast-planner` itself, the code the operator runs:
//! the simulator builds the planner's observation from the world and carries out its plan.

use std::collections::VecDeque;

use ballast_planner::{Action, Observation, PodObservation, PodReport, Spec, State, Tuning};

use super::config::{Scenario, SimConfig, Strategy};
use super::world::World;

/// A controller for one strategy.
pub struct Controller {
    strategy: Strategy,
    event_done: bool,
    rolling: Rolling,
    emqx: Option<EmqxRebalance>,
    /// EMQX rebalances once the event is over (an operator triggers it by hand; this is the
    /// most generous timing).
    emqx_pending: bool,
    planner: Option<(Spec, State)>,
    /// The last budget the planner set, for the plots.
    pub budget: f64,
    /// The largest budget ceiling seen: the rate the fleet could absorb.
    pub ceiling: f64,
}

#[derive(Default)]
struct Rolling {
    queue: VecDeque<usize>,
    current: Option<usize>,
}

struct EmqxRebalance {
    donors: Vec<usize>,
    evict_from: f64,
}

impl Controller {
    pub fn new(strategy: Strategy, cfg: &SimConfig, world: &mut World) -> Self {
        world.admission = strategy == Strategy::Ballast;
        world.max_age = strategy == Strategy::MaxAge;
        let planner =
            (strategy == Strategy::Ballast).then(|| (planner_spec(cfg), State::default()));
        Self {
            strategy,
            event_done: false,
            rolling: Rolling::default(),
            emqx: None,
            emqx_pending: false,
            planner,
            budget: 0.0,
            ceiling: 0.0,
        }
    }

    /// Whether the strategy is still carrying out the event (for "time to balance").
    pub fn busy(&self) -> bool {
        !self.rolling.queue.is_empty() || self.rolling.current.is_some() || self.emqx.is_some()
    }

    /// Called at the end of every simulated second.
    pub fn tick(&mut self, w: &mut World) {
        if !self.event_done && w.now >= w.cfg.event_at {
            self.event_done = true;
            self.event(w);
        }
        self.roll(w);
        if self.strategy == Strategy::Emqx {
            self.emqx_tick(w);
        }
        if self.strategy == Strategy::Ballast {
            self.plan(w);
        }
    }

    fn event(&mut self, w: &mut World) {
        let cfg = w.cfg.clone();
        let all: Vec<usize> = (0..w.pods.len()).collect();
        match (cfg.scenario, self.strategy) {
            (Scenario::MorningSurge, _) => {}
            // A renewal: the gateways restart, or reload in place with the sidecar.
            (Scenario::RenewalHotReload, Strategy::Ballast) => w.hot_reload(),
            (
                Scenario::Incident | Scenario::RenewalRolling | Scenario::RenewalHotReload,
                Strategy::Reloader,
            ) => {
                for p in all {
                    w.restart_pod(p, false);
                }
            }
            (Scenario::Incident | Scenario::RenewalRolling, Strategy::Ballast) => {
                for p in &mut w.pods {
                    p.up_to_date = false;
                }
            }
            (Scenario::Incident | Scenario::RenewalRolling | Scenario::RenewalHotReload, _) => {
                self.rolling.queue.extend(all);
                self.emqx_pending = true;
            }
            (Scenario::ScaleUp, _) => {
                for _ in 0..cfg.pods_changed {
                    w.add_pod(false);
                }
                self.emqx_pending = true;
            }
            (Scenario::PodCrash, _) => {
                w.restart_pod(0, false);
                self.emqx_pending = true;
            }
            // A node drain evicts its pods; the PodDisruptionBudget lets one go at a time.
            (Scenario::NodeDrain, Strategy::Ballast) => {
                for p in &mut w.pods[..cfg.pods_changed] {
                    p.up_to_date = false;
                }
            }
            (Scenario::NodeDrain, _) => {
                self.rolling.queue.extend(0..cfg.pods_changed);
                self.emqx_pending = true;
            }
        }
    }

    /// A Kubernetes rolling restart: the next pod goes when the previous one is Ready.
    fn roll(&mut self, w: &mut World) {
        if let Some(p) = self.rolling.current {
            if !w.pods[p].ready {
                return;
            }
            self.rolling.current = None;
        }
        if let Some(p) = self.rolling.queue.pop_front() {
            w.restart_pod(p, false);
            self.rolling.current = Some(p);
        }
    }

    fn emqx_tick(&mut self, w: &mut World) {
        let cfg = w.cfg.clone();
        if self.emqx_pending && self.rolling.current.is_none() && self.rolling.queue.is_empty() {
            if w.pods.iter().all(|p| p.ready) {
                self.emqx_pending = false;
                let mean = w.connected() as f64 / w.pods.len() as f64;
                let donors: Vec<usize> = (0..w.pods.len())
                    .filter(|&p| w.pods[p].connections() as f64 > mean)
                    .collect();
                for &d in &donors {
                    // Donors fail the load balancer's health check and refuse new clients.
                    w.pods[d].accepting = false;
                    w.pods[d].refusing = true;
                }
                w.publish_endpoints();
                self.emqx = Some(EmqxRebalance {
                    donors,
                    evict_from: w.now + cfg.emqx_wait_health_check,
                });
            }
            return;
        }
        let Some(r) = &self.emqx else { return };
        if w.now < r.evict_from {
            return;
        }
        let avg = |ps: &mut dyn Iterator<Item = usize>| {
            let v: Vec<u64> = ps.map(|p| w.pods[p].connections()).collect();
            v.iter().sum::<u64>() as f64 / v.len().max(1) as f64
        };
        let donors = r.donors.clone();
        let donor_avg = avg(&mut donors.iter().copied());
        let recipient_avg = avg(&mut (0..w.pods.len()).filter(|p| !donors.contains(p)));
        // EMQX's stop rule: donors within abs_conn_threshold (1000) or rel_conn_threshold
        // (1.1) of the recipients.
        if donor_avg <= recipient_avg + 1_000.0 || donor_avg <= recipient_avg * 1.1 {
            for &d in &donors {
                w.pods[d].accepting = true;
                w.pods[d].refusing = false;
                w.set_drain(d, 0, 1.0);
            }
            w.publish_endpoints();
            self.emqx = None;
            return;
        }
        for &d in &donors {
            if w.pods[d].connections() as f64 > recipient_avg {
                w.set_drain(d, cfg.emqx_evict_rate as u64, 1.0);
            }
        }
    }

    fn plan(&mut self, w: &mut World) {
        let Some((spec, state)) = self.planner.as_mut() else {
            return;
        };
        let obs = observe(w);
        let plan = ballast_planner::plan(spec, &obs, state);
        *state = plan.state.clone();
        if std::env::var_os("BALLAST_SIM_TRACE").is_some() {
            eprintln!("t={:.0} {}", w.now, plan.trace(&obs));
        }
        self.budget = plan.budget;
        self.ceiling = self.ceiling.max(plan.budget_ceiling);
        let mut steering_changed = false;
        for a in &plan.actions {
            match a {
                Action::Drain {
                    pod,
                    connections,
                    over_seconds,
                    ..
                } => w.set_drain(index(pod), *connections, *over_seconds),
                Action::Steer { pod, accepting, .. } => {
                    let p = &mut w.pods[index(pod)];
                    steering_changed |= p.accepting != *accepting;
                    p.accepting = *accepting;
                }
                Action::Restart { pod, .. } => w.restart_pod(index(pod), true),
                Action::Wait { .. } => {}
            }
        }
        // Drains not renewed by this plan lapse, as a sidecar's directive does.
        for (i, p) in plan.pods.iter().enumerate() {
            if p.closes == 0 {
                w.set_drain(i, 0, 1.0);
            }
        }
        if steering_changed {
            w.publish_endpoints();
        }
    }
}

/// The PresenceCluster the simulated fleet would have.
fn planner_spec(cfg: &SimConfig) -> Spec {
    Spec {
        max_connections_per_pod: cfg.capacity,
        max_handshakes_per_second_per_pod: cfg.handshakes_per_second,
        max_reconnects_per_second: cfg.max_reconnects_per_second,
        max_unavailable: cfg.max_unavailable,
        drain_timeout: 600.0,
        rebalance: true,
        tolerance: cfg.tolerance,
        offline_threshold: cfg.offline_threshold,
        reconnect_within: cfg.reconnect_within,
        tuning: Tuning::default(),
    }
}

fn index(pod: &str) -> usize {
    pod.trim_start_matches("gw-")
        .parse()
        .expect("simulated pod names are gw-N")
}

/// What the sidecars would report and Kubernetes would show.
fn observe(w: &World) -> Observation {
    Observation {
        now: w.now,
        pods: w
            .pods
            .iter()
            .enumerate()
            .map(|(i, p)| PodObservation {
                name: format!("gw-{i}"),
                uid: p.uid.to_string(),
                ready: p.ready,
                up_to_date: p.up_to_date,
                terminating: false,
                routed: Some(w.routed(i)),
                report: p.up.then(|| PodReport {
                    at: w.now,
                    connections: p.connections(),
                    on_older_certificate: p.on_older_certificate(),
                    handshakes_per_second: p.last_second.handshakes as f64,
                    handshake_p99_seconds: p.last_second.max_wait,
                    rate_refusals: p.last_second.refused,
                    failed_handshakes: p.last_second.wasted,
                    max_connections: None,
                }),
            })
            .collect(),
    }
}
