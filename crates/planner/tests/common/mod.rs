//! A closed model of a fleet for the planner's tests: connections are conserved, a planned
//! close comes back on an accepting pod at the next step (spread evenly, as a load balancer
//! spreads in expectation), a restarted pod comes back empty, up to date and Ready after a
//! few steps. Deliberately simple: the simulator in `ballast-fleet` is the realistic one.

#![allow(dead_code)]

use ballast_contract::pacing::close_offset;
use ballast_planner::{plan, Action, Observation, Plan, PodObservation, PodReport, Spec, State};

#[derive(Debug, Clone)]
pub struct ModelPod {
    pub name: String,
    pub uid: u64,
    pub connections: u64,
    pub older: u64,
    pub ready: bool,
    pub up_to_date: bool,
    /// Steps until a restarted pod is Ready again.
    pub starting: u32,
}

#[derive(Debug, Clone)]
pub struct Model {
    pub pods: Vec<ModelPod>,
    pub now: f64,
    /// Closed connections that reconnect at the next step.
    pub reconnecting: u64,
    pub restart_steps: u32,
    pub state: State,
    /// Every close instant planned, for the 1 s window check: (time, budget of its plan).
    pub close_times: Vec<(f64, f64)>,
    pub restarts: Vec<String>,
    /// Steps the load balancer lags behind the plan's steering (0: it follows at once and
    /// the planner is not told where it routes, as before the planner knew of routing).
    pub routing_lag: usize,
    /// Per plan, newest last, the pods it let take connections (a pod not yet Ready cannot
    /// be steered): the load balancer routes by the one `routing_lag` steps old.
    pub steered: std::collections::VecDeque<Vec<bool>>,
    /// Agents that landed on a pod being drained for its restart: each will move again.
    pub landed_on_draining: u64,
}

impl Model {
    pub fn new(counts: &[u64]) -> Self {
        Self {
            pods: counts
                .iter()
                .enumerate()
                .map(|(i, &c)| ModelPod {
                    name: format!("gw-{i}"),
                    uid: i as u64,
                    connections: c,
                    older: 0,
                    ready: true,
                    up_to_date: true,
                    starting: 0,
                })
                .collect(),
            now: 1_000.0,
            reconnecting: 0,
            restart_steps: 3,
            state: State::default(),
            close_times: Vec::new(),
            restarts: Vec::new(),
            routing_lag: 0,
            steered: std::collections::VecDeque::new(),
            landed_on_draining: 0,
        }
    }

    /// Whether the load balancer routes to pod `i` now: Ready, and accepting under the plan
    /// of `routing_lag` steps ago (every pod before the first plans).
    pub fn routed(&self, i: usize) -> bool {
        let lagged = self
            .steered
            .len()
            .checked_sub(self.routing_lag)
            .and_then(|n| n.checked_sub(1))
            .and_then(|k| self.steered.get(k));
        self.pods[i].ready && lagged.is_none_or(|a| a[i])
    }

    pub fn total(&self) -> u64 {
        self.pods.iter().map(|p| p.connections).sum::<u64>() + self.reconnecting
    }

    pub fn observe(&self) -> Observation {
        let mut obs = self.observe_plain();
        if self.routing_lag > 0 {
            for (i, p) in obs.pods.iter_mut().enumerate() {
                p.routed = Some(self.routed(i));
            }
        }
        obs
    }

    fn observe_plain(&self) -> Observation {
        Observation {
            now: self.now,
            pods: self
                .pods
                .iter()
                .map(|p| PodObservation {
                    name: p.name.clone(),
                    uid: p.uid.to_string(),
                    ready: p.ready,
                    up_to_date: p.up_to_date,
                    terminating: false,
                    routed: None,
                    report: p.ready.then_some(PodReport {
                        at: self.now,
                        connections: p.connections,
                        on_older_certificate: p.older,
                        handshakes_per_second: 0.0,
                        handshake_p99_seconds: 0.01,
                        rate_refusals: 0,
                        failed_handshakes: 0,
                        max_connections: None,
                    }),
                })
                .collect(),
        }
    }

    /// One step: plan, carry out, advance the clock by the interval.
    pub fn step(&mut self, spec: &Spec) -> Plan {
        // Agents closed in the previous step come back on pods that accept now.
        let p = plan(spec, &self.observe(), &self.state);
        let landing: Vec<usize> = if self.routing_lag > 0 {
            // Where the load balancer routes, whatever the plan steers now; none routed:
            // the agents retry at the next step.
            (0..self.pods.len()).filter(|&i| self.routed(i)).collect()
        } else {
            let accepting: Vec<usize> = (0..self.pods.len())
                .filter(|&i| p.pods[i].accepting && self.pods[i].ready)
                .collect();
            if accepting.is_empty() {
                (0..self.pods.len())
                    .filter(|&i| self.pods[i].ready)
                    .collect()
            } else {
                accepting
            }
        };
        if !landing.is_empty() {
            let n = landing.len() as u64;
            let (each, extra) = (self.reconnecting / n, self.reconnecting % n);
            let draining = self.state.rollout.as_ref().map(|r| &r.draining);
            for (k, &i) in landing.iter().enumerate() {
                let n = each + u64::from((k as u64) < extra);
                self.pods[i].connections += n;
                if draining.is_some_and(|d| d.contains_key(&self.pods[i].name)) {
                    self.landed_on_draining += n;
                }
            }
            self.reconnecting = 0;
        }
        for a in &p.actions {
            match a {
                Action::Drain {
                    pod,
                    connections,
                    over_seconds,
                    ..
                } => {
                    let pod = self.pods.iter_mut().find(|x| &x.name == pod).unwrap();
                    let n = (*connections).min(pod.connections);
                    pod.connections -= n;
                    pod.older = pod.older.saturating_sub(n);
                    self.reconnecting += n;
                    let window = std::time::Duration::from_secs_f64(*over_seconds);
                    let n = *connections as usize;
                    for i in 0..n {
                        let offset = close_offset(i, n, window).as_secs_f64();
                        self.close_times.push((self.now + offset, p.budget));
                    }
                }
                Action::Restart { pod, .. } => {
                    let restart_steps = self.restart_steps;
                    let pod = self.pods.iter_mut().find(|x| &x.name == pod).unwrap();
                    self.reconnecting += pod.connections;
                    pod.connections = 0;
                    pod.older = 0;
                    pod.ready = false;
                    pod.up_to_date = true;
                    pod.uid += 1_000;
                    pod.starting = restart_steps;
                    self.restarts.push(pod.name.clone());
                }
                _ => {}
            }
        }
        for pod in &mut self.pods {
            if !pod.ready {
                pod.starting = pod.starting.saturating_sub(1);
                if pod.starting == 0 {
                    pod.ready = true;
                }
            }
        }
        // Steering reaches a pod's readiness only once it runs: a pod starting is routed to
        // as soon as it is Ready, as it would be on Kubernetes.
        let steered: Vec<bool> = (0..self.pods.len())
            .map(|i| p.pods[i].accepting || !self.pods[i].ready)
            .collect();
        self.steered.push_back(steered);
        if self.steered.len() > self.routing_lag + 1 {
            self.steered.pop_front();
        }
        self.state = p.state.clone();
        self.now += spec.tuning.interval;
        p
    }

    pub fn imbalance(&self) -> f64 {
        let sum: u64 = self.pods.iter().map(|p| p.connections).sum();
        let max = self.pods.iter().map(|p| p.connections).max().unwrap_or(0);
        if sum == 0 {
            return 0.0;
        }
        max as f64 * self.pods.len() as f64 / sum as f64
    }
}

/// The most closes any 1 s window holds, compared with the smallest budget of the plans
/// whose closes fall in it: returns the worst (closes, budget) pair by excess.
pub fn worst_window(close_times: &[(f64, f64)]) -> Option<(usize, f64)> {
    let mut times = close_times.to_vec();
    times.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut worst: Option<(usize, f64)> = None;
    let mut lo = 0;
    for hi in 0..times.len() {
        while times[hi].0 - times[lo].0 >= 1.0 - 1e-9 {
            lo += 1;
        }
        let count = hi - lo + 1;
        let budget = times[lo..=hi]
            .iter()
            .map(|t| t.1)
            .fold(f64::NEG_INFINITY, f64::max);
        let excess = count as f64 - budget.floor();
        if worst.is_none_or(|(c, b)| excess > c as f64 - b.floor()) {
            worst = Some((count, budget));
        }
    }
    worst
}
