//! The simulated world: agents, pods, the load balancer in front of them, and time.
//!
//! Time advances in steps of 0.1 s. An agent is disconnected, connecting (its handshake
//! waits in a pod's queue) or connected. A pod completes `handshakes_per_second` handshakes in
//! queue order; a handshake whose agent already gave up is still paid for (the client's
//! ClientHello sits in the socket buffer), which is what makes an overloaded pod without
//! admission control collapse into a metastable storm. With admission control a pod refuses
//! before the handshake once its queue holds more than a bounded wait.
//!
//! It owns only mechanics; what to restart, drain or steer is decided by a strategy
//! ([`super::strategy`]) calling the methods here. It never reads a clock or does I/O, so a
//! run is a function of its configuration and seed.

use std::collections::VecDeque;
use std::time::Duration;

use ballast_contract::pacing::close_offset;

use super::config::{Arrival, Balancer, SimConfig};

/// Simulation step, seconds.
pub const DT: f64 = 0.1;
/// Slots in the timing wheel: every delay scheduled must be shorter (about 100 s).
const WHEEL: usize = 1024;
const NO_POD: u16 = u16::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AgentState {
    /// Not yet arrived (the ramp has not reached it).
    Absent,
    Disconnected,
    Connecting,
    Connected,
}

#[derive(Debug, Clone, Copy)]
enum Due {
    /// Try to connect.
    Attempt,
    /// The handshake of attempt `n` must have finished by now.
    Timeout(u32),
}

/// One pod: its process, its connections and its handshake queue.
#[derive(Debug)]
pub struct Pod {
    /// The process runs and holds connections.
    pub up: bool,
    /// Passes its readiness probe (Kubernetes' Ready).
    pub ready: bool,
    /// When a starting pod becomes Ready.
    ready_at: f64,
    pub uid: u64,
    /// Runs the current pod template.
    pub up_to_date: bool,
    /// Steering: whether the load balancer should send new connections here.
    pub accepting: bool,
    /// Refuses every new connection (EMQX donors).
    pub refusing: bool,
    current: Vec<u32>,
    older: Vec<u32>,
    queue: VecDeque<(u32, u32, f32)>,
    credit: f64,
    drain: Option<Drain>,
    /// This second's figures, and the last complete second's.
    pub second: PodSecond,
    pub last_second: PodSecond,
}

/// What a pod did during one second.
#[derive(Debug, Clone, Default)]
pub struct PodSecond {
    /// Handshakes computed, wasted ones included.
    pub handshakes: u64,
    /// Handshakes computed for agents that had already given up.
    pub wasted: u64,
    /// Refused by admission control or capacity.
    pub refused: u64,
    /// Longest wait in the handshake queue, seconds.
    pub max_wait: f64,
}

/// A drain in progress, paced as the sidecar paces it (`ballast_contract::pacing`).
#[derive(Debug)]
struct Drain {
    target: u64,
    done: u64,
    window: Duration,
    steps: u64,
}

impl Pod {
    pub fn connections(&self) -> u64 {
        (self.current.len() + self.older.len()) as u64
    }
    pub fn on_older_certificate(&self) -> u64 {
        self.older.len() as u64
    }
}

/// Counters for the whole run.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    /// Closes the pods or the strategy initiated gracefully (planned).
    pub planned_closes: u64,
    /// Connections cut by a pod going down.
    pub cut: u64,
    pub refused: u64,
    pub wasted_handshakes: u64,
    /// Connections made by agents that had been connected before (reconnects).
    pub reconnects: u64,
}

/// The fleet and its pods.
pub struct World {
    pub cfg: SimConfig,
    pub now: f64,
    step: u64,
    rng: fastrand::Rng,
    state: Vec<AgentState>,
    pod_of: Vec<u16>,
    slot: Vec<u32>,
    in_older: Vec<bool>,
    attempt: Vec<u32>,
    failures: Vec<u8>,
    /// When an agent that had been online lost its connection (NaN: connected or never).
    disconnected_at: Vec<f32>,
    pub false_offline: Vec<bool>,
    wheel: Vec<Vec<(u32, Due)>>,
    arrivals: Vec<(f32, u32)>,
    next_arrival: usize,
    pub pods: Vec<Pod>,
    /// The endpoint sets the load balancer has seen, oldest first: (since, pods).
    lb_history: VecDeque<(f64, Vec<u16>)>,
    rr: usize,
    /// Connections per max-age second bucket: (agent, attempt).
    age_buckets: Vec<Vec<(u32, u32)>>,
    pub max_age: bool,
    /// Pods refuse before the handshake beyond a bounded queue (Ballast's sidecar); without
    /// it they queue up to the accept backlog.
    pub admission: bool,
    pub totals: Totals,
    /// Gaps of agents that came back, seconds.
    pub gaps: Vec<f32>,
    uid_next: u64,
}

impl World {
    pub fn new(cfg: &SimConfig) -> Self {
        let n = cfg.agents as usize;
        let mut w = Self {
            cfg: cfg.clone(),
            now: 0.0,
            step: 0,
            rng: fastrand::Rng::with_seed(cfg.seed),
            state: vec![AgentState::Absent; n],
            pod_of: vec![NO_POD; n],
            slot: vec![0; n],
            in_older: vec![false; n],
            attempt: vec![0; n],
            failures: vec![0; n],
            disconnected_at: vec![f32::NAN; n],
            false_offline: vec![false; n],
            wheel: (0..WHEEL).map(|_| Vec::new()).collect(),
            arrivals: Vec::new(),
            next_arrival: 0,
            pods: Vec::new(),
            lb_history: VecDeque::new(),
            rr: 0,
            age_buckets: Vec::new(),
            max_age: false,
            admission: false,
            totals: Totals::default(),
            gaps: Vec::new(),
            uid_next: 1,
        };
        for _ in 0..cfg.pods {
            w.add_pod(true);
        }
        // Agents online at the start are placed as the load balancer would have placed them.
        let online = match cfg.arrival {
            Arrival::Flat => n,
            Arrival::Ramp => (n as f64 * cfg.online_at_start).round() as usize,
        };
        for a in 0..online as u32 {
            let p = w.pick_from(&(0..cfg.pods as u16).collect::<Vec<_>>());
            w.connect(a, p);
        }
        // The rest arrive on a raised-cosine ramp: slow, fastest in the middle, slow.
        let mut times: Vec<(f32, u32)> = (online as u32..n as u32)
            .map(|a| {
                let u = w.rng.f64();
                let x = (1.0 - (std::f64::consts::PI * u).cos()) / 2.0;
                let x = (x + u) / 2.0; // half cosine, half uniform: a broad morning
                ((cfg.ramp_start_seconds + x * cfg.ramp_seconds) as f32, a)
            })
            .collect();
        times.sort_by(|a, b| a.0.total_cmp(&b.0));
        w.arrivals = times;
        // The load balancer has always known the pods that exist at the start.
        w.lb_history.clear();
        w.publish_endpoints();
        w
    }

    /// A new pod: Ready at once (`already_up`) or after `restart_seconds`.
    pub fn add_pod(&mut self, already_up: bool) -> usize {
        let uid = self.uid_next;
        self.uid_next += 1;
        let ready_at = if already_up {
            0.0
        } else {
            self.now + self.restart_time()
        };
        self.pods.push(Pod {
            up: already_up,
            ready: already_up,
            ready_at,
            uid,
            up_to_date: true,
            accepting: true,
            refusing: false,
            current: Vec::new(),
            older: Vec::new(),
            queue: VecDeque::new(),
            credit: 0.0,
            drain: None,
            second: PodSecond::default(),
            last_second: PodSecond::default(),
        });
        self.publish_endpoints();
        self.pods.len() - 1
    }

    fn restart_time(&mut self) -> f64 {
        self.cfg.restart_seconds * (0.8 + 0.4 * self.rng.f64())
    }

    /// Connected agents, and how many agents exist.
    pub fn connected(&self) -> u64 {
        self.pods.iter().map(|p| p.connections()).sum()
    }

    /// One step of 0.1 s. Returns true at the end of each whole second.
    pub fn advance(&mut self) -> bool {
        self.step += 1;
        self.now = self.step as f64 * DT;
        // Arrivals of the ramp.
        while self.next_arrival < self.arrivals.len()
            && f64::from(self.arrivals[self.next_arrival].0) <= self.now
        {
            let a = self.arrivals[self.next_arrival].1;
            self.next_arrival += 1;
            self.state[a as usize] = AgentState::Disconnected;
            self.attempt_connect(a);
        }
        // Due events.
        let slot = (self.step as usize) % WHEEL;
        let due = std::mem::take(&mut self.wheel[slot]);
        for (a, what) in &due {
            match what {
                Due::Attempt => {
                    if self.state[*a as usize] == AgentState::Disconnected {
                        self.attempt_connect(*a);
                    }
                }
                Due::Timeout(n) => {
                    if self.attempt[*a as usize] == *n
                        && self.state[*a as usize] == AgentState::Connecting
                    {
                        self.state[*a as usize] = AgentState::Disconnected;
                        self.fail(*a);
                    }
                }
            }
        }
        let mut recycled = due;
        recycled.clear();
        if self.wheel[slot].is_empty() {
            self.wheel[slot] = recycled;
        }
        // Pods that finished starting.
        let mut changed = false;
        for p in &mut self.pods {
            if !p.up && p.ready_at > 0.0 && p.ready_at <= self.now {
                p.up = true;
                p.ready = true;
                changed = true;
            }
        }
        if changed {
            self.publish_endpoints();
        }
        self.run_drains();
        if self.max_age {
            self.recycle_old_connections();
        }
        self.handshakes();
        let whole_second = self.step % 10 == 0;
        if whole_second {
            for p in &mut self.pods {
                p.last_second = std::mem::take(&mut p.second);
            }
        }
        whole_second
    }

    fn schedule(&mut self, after: f64, agent: u32, what: Due) {
        let steps = ((after / DT).ceil() as usize).clamp(1, WHEEL - 1);
        let slot = (self.step as usize + steps) % WHEEL;
        self.wheel[slot].push((agent, what));
    }

    /// Backoff after an error or refusal: capped exponential with full jitter.
    fn fail(&mut self, a: u32) {
        self.fail_after(a, 0.0);
    }

    /// Backoff, but not before `at_least` seconds.
    fn fail_after(&mut self, a: u32, at_least: f64) {
        let f = self.failures[a as usize];
        self.failures[a as usize] = f.saturating_add(1);
        let ceiling =
            (self.cfg.backoff_base * 2f64.powi(i32::from(f.min(20)))).min(self.cfg.backoff_cap);
        let wait = self.rng.f64() * ceiling;
        self.schedule(wait.max(at_least).max(DT), a, Due::Attempt);
    }

    fn attempt_connect(&mut self, a: u32) {
        let Some(p) = self.balance() else {
            // No endpoint at all: connection refused.
            self.totals.refused += 1;
            self.fail(a);
            return;
        };
        let cfg = &self.cfg;
        let pod = &mut self.pods[p];
        if !pod.up || pod.refusing {
            // A stale endpoint (the pod is gone) or a donor refusing: reset at once.
            pod.second.refused += 1;
            self.totals.refused += 1;
            self.fail(a);
            return;
        }
        let held = pod.current.len() + pod.older.len() + pod.queue.len();
        let admission = self.admission;
        let queue_limit = if admission {
            (cfg.admission_queue_seconds * cfg.handshakes_per_second).ceil() as usize
        } else {
            cfg.accept_backlog
        };
        if held as u64 >= cfg.capacity || pod.queue.len() >= queue_limit {
            pod.second.refused += 1;
            self.totals.refused += 1;
            if admission || held as u64 >= cfg.capacity {
                // Refused before the handshake: the agent learns at once.
                self.fail(a);
            } else {
                // The accept backlog overflowed: the SYN is dropped. The kernel retransmits
                // it after 1 s; the agent's attempt fails when that does not get in either,
                // and it backs off as after any failure (never sooner than the 1 s).
                self.fail_after(a, 1.0);
            }
            return;
        }
        self.attempt[a as usize] = self.attempt[a as usize].wrapping_add(1);
        let n = self.attempt[a as usize];
        self.state[a as usize] = AgentState::Connecting;
        let now = self.now as f32;
        self.pods[p].queue.push_back((a, n, now));
        let timeout = self.cfg.handshake_timeout;
        self.schedule(timeout, a, Due::Timeout(n));
    }

    fn handshakes(&mut self) {
        let rate = self.cfg.handshakes_per_second;
        for p in 0..self.pods.len() {
            if !self.pods[p].up {
                continue;
            }
            let pod = &mut self.pods[p];
            pod.credit = (pod.credit + rate * DT).min(rate * DT * 2.0);
            while self.pods[p].credit >= 1.0 {
                let Some((a, n, enq)) = self.pods[p].queue.pop_front() else {
                    break;
                };
                let pod = &mut self.pods[p];
                pod.credit -= 1.0;
                pod.second.handshakes += 1;
                let wait = self.now - f64::from(enq);
                pod.second.max_wait = pod.second.max_wait.max(wait);
                if self.attempt[a as usize] == n && self.state[a as usize] == AgentState::Connecting
                {
                    self.connect(a, p);
                } else {
                    pod.second.wasted += 1;
                    self.totals.wasted_handshakes += 1;
                }
            }
            let pod = &mut self.pods[p];
            if pod.queue.is_empty() {
                pod.credit = pod.credit.min(1.0);
            }
        }
    }

    fn connect(&mut self, a: u32, p: usize) {
        let i = a as usize;
        let since = self.disconnected_at[i];
        if !since.is_nan() {
            let gap = self.now as f32 - since;
            self.gaps.push(gap);
            self.totals.reconnects += 1;
            if f64::from(gap) > self.cfg.offline_threshold {
                self.false_offline[i] = true;
            }
            self.disconnected_at[i] = f32::NAN;
        }
        self.state[i] = AgentState::Connected;
        self.failures[i] = 0;
        self.pod_of[i] = p as u16;
        self.in_older[i] = false;
        let pod = &mut self.pods[p];
        self.slot[i] = pod.current.len() as u32;
        pod.current.push(a);
        if self.max_age {
            let age = self.cfg.max_age_seconds * (0.9 + 0.2 * self.rng.f64());
            let bucket = (self.now + age) as usize;
            if bucket >= self.age_buckets.len() {
                self.age_buckets.resize_with(bucket + 1, Vec::new);
            }
            self.age_buckets[bucket].push((a, self.attempt[i]));
        }
    }

    /// Removes `a` from its pod's lists.
    fn detach(&mut self, a: u32) {
        let i = a as usize;
        let p = self.pod_of[i] as usize;
        let list = if self.in_older[i] {
            &mut self.pods[p].older
        } else {
            &mut self.pods[p].current
        };
        let s = self.slot[i] as usize;
        list.swap_remove(s);
        if let Some(&moved) = list.get(s) {
            self.slot[moved as usize] = s as u32;
        }
        self.pod_of[i] = NO_POD;
    }

    /// Closes `a`'s connection. Graceful: the agent reconnects at once; otherwise it backs
    /// off as after an error.
    fn disconnect(&mut self, a: u32, graceful: bool) {
        self.detach(a);
        let i = a as usize;
        self.state[i] = AgentState::Disconnected;
        self.disconnected_at[i] = self.now as f32;
        if graceful {
            self.failures[i] = 0;
            let jitter = self.rng.f64() * 0.2;
            self.schedule(jitter.max(DT), a, Due::Attempt);
        } else {
            self.failures[i] = 0;
            self.fail(a);
        }
    }

    /// The pod's process stops now: its connections are cut (gracefully when it was drained
    /// on purpose), and it comes back empty, up to date and Ready after `restart_seconds`.
    pub fn restart_pod(&mut self, p: usize, graceful: bool) {
        let members: Vec<u32> = self.pods[p]
            .older
            .iter()
            .chain(&self.pods[p].current)
            .copied()
            .collect();
        for a in members {
            if graceful {
                self.totals.planned_closes += 1;
            } else {
                self.totals.cut += 1;
            }
            self.disconnect(a, graceful);
        }
        // Handshakes waiting in the queue are reset.
        let queued: Vec<(u32, u32, f32)> = self.pods[p].queue.drain(..).collect();
        for (a, n, _) in queued {
            if self.attempt[a as usize] == n && self.state[a as usize] == AgentState::Connecting {
                self.state[a as usize] = AgentState::Disconnected;
                self.fail(a);
            }
        }
        let ready_at = self.now + self.restart_time();
        let uid = self.uid_next;
        self.uid_next += 1;
        let pod = &mut self.pods[p];
        pod.up = false;
        pod.ready = false;
        pod.ready_at = ready_at;
        pod.uid = uid;
        pod.up_to_date = true;
        pod.drain = None;
        pod.refusing = false;
        pod.credit = 0.0;
        self.publish_endpoints();
    }

    /// A renewal loaded in place: every established connection is now on the older one.
    pub fn hot_reload(&mut self) {
        for p in 0..self.pods.len() {
            let moved = std::mem::take(&mut self.pods[p].current);
            for &a in &moved {
                self.in_older[a as usize] = true;
                self.slot[a as usize] += self.pods[p].older.len() as u32;
            }
            self.pods[p].older.extend(moved);
        }
    }

    /// Close `n` connections of pod `p` evenly over `seconds`, older certificates first;
    /// replaces any running drain.
    pub fn set_drain(&mut self, p: usize, n: u64, seconds: f64) {
        self.pods[p].drain = (n > 0).then(|| Drain {
            target: n,
            done: 0,
            window: Duration::from_secs_f64(seconds.max(0.0)),
            steps: 0,
        });
    }

    fn run_drains(&mut self) {
        for p in 0..self.pods.len() {
            let Some(d) = self.pods[p].drain.as_mut() else {
                continue;
            };
            // The closes whose instant falls before the end of this step.
            d.steps += 1;
            let until = Duration::from_secs_f64(d.steps as f64 * DT);
            let (n, start) = (d.target as usize, d.done);
            while d.done < d.target && close_offset(d.done as usize, n, d.window) < until {
                d.done += 1;
            }
            let due = d.done - start;
            if d.done >= d.target {
                self.pods[p].drain = None;
            }
            for _ in 0..due {
                let pod = &self.pods[p];
                let victim = if let Some(&a) = pod.older.last() {
                    a
                } else if !pod.current.is_empty() {
                    pod.current[self.rng.usize(..pod.current.len())]
                } else {
                    self.pods[p].drain = None;
                    break;
                };
                self.totals.planned_closes += 1;
                self.disconnect(victim, true);
            }
        }
    }

    fn recycle_old_connections(&mut self) {
        let bucket = self.now as usize;
        if bucket >= self.age_buckets.len() || self.step % 10 != 0 {
            return;
        }
        let due = std::mem::take(&mut self.age_buckets[bucket]);
        for (a, n) in due {
            if self.state[a as usize] == AgentState::Connected && self.attempt[a as usize] == n {
                self.totals.planned_closes += 1;
                self.disconnect(a, true);
            }
        }
    }

    /// Endpoints as they are now: Ready pods that accept. The load balancer sees them after
    /// `propagation_seconds`.
    pub fn publish_endpoints(&mut self) {
        let set: Vec<u16> = (0..self.pods.len())
            .filter(|&i| self.pods[i].ready && self.pods[i].accepting)
            .map(|i| i as u16)
            .collect();
        if self.lb_history.back().is_some_and(|(_, s)| *s == set) {
            return;
        }
        self.lb_history.push_back((self.now, set));
    }

    /// Whether the load balancer routes new connections to pod `i` now (what it has seen of
    /// the endpoints, `propagation_seconds` late): what the operator reads from the pod's
    /// Ready condition.
    pub fn routed(&self, i: usize) -> bool {
        let seen = self.now - self.cfg.propagation_seconds;
        self.lb_history
            .iter()
            .take_while(|(since, _)| *since <= seen)
            .last()
            .or(self.lb_history.front())
            .is_some_and(|(_, set)| set.contains(&(i as u16)))
    }

    fn balance(&mut self) -> Option<usize> {
        let seen = self.now - self.cfg.propagation_seconds;
        while self.lb_history.len() > 1 && self.lb_history[1].0 <= seen {
            self.lb_history.pop_front();
        }
        // Borrowed out and put back: this runs for every connection attempt.
        let set = std::mem::take(&mut self.lb_history.front_mut()?.1);
        let picked = (!set.is_empty()).then(|| self.pick_from(&set));
        self.lb_history[0].1 = set;
        picked
    }

    fn pick_from(&mut self, set: &[u16]) -> usize {
        match self.cfg.balancer {
            Balancer::Random => set[self.rng.usize(..set.len())] as usize,
            Balancer::RoundRobin => {
                self.rr = self.rr.wrapping_add(1);
                set[self.rr % set.len()] as usize
            }
            Balancer::LeastConnections => *set
                .iter()
                .min_by_key(|&&p| self.pods[p as usize].connections())
                .expect("non-empty") as usize,
        }
    }

    /// Agents still disconnected at the end whose gap is over the threshold count too.
    pub fn finish(&mut self) {
        for i in 0..self.disconnected_at.len() {
            let since = self.disconnected_at[i];
            if !since.is_nan() {
                let gap = self.now as f32 - since;
                self.gaps.push(gap);
                if f64::from(gap) > self.cfg.offline_threshold {
                    self.false_offline[i] = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::config::Scenario;

    fn world(agents: u64, pods: usize) -> World {
        let cfg = SimConfig {
            agents,
            pods,
            ..SimConfig::for_scenario(Scenario::PodCrash)
        };
        World::new(&cfg)
    }

    fn run(w: &mut World, seconds: f64) {
        let until = w.now + seconds;
        while w.now < until - 1e-9 {
            w.advance();
        }
    }

    #[test]
    fn a_drain_closes_exactly_n_paced_like_the_sidecar() {
        let mut w = world(1_000, 2);
        let before = w.pods[0].connections();
        w.set_drain(0, 100, 1.0);
        w.advance();
        // Closes at i/100 s: the first step (0.1 s) holds closes 0..=9.
        assert_eq!(w.totals.planned_closes, 10);
        run(&mut w, 0.9);
        assert_eq!(w.totals.planned_closes, 100);
        run(&mut w, 2.0);
        assert_eq!(w.totals.planned_closes, 100, "no more than asked");
        assert!(before >= 100);
        // Everyone is back (on either pod): nothing lost.
        assert_eq!(w.connected(), 1_000);
    }

    #[test]
    fn a_single_close_happens_at_once() {
        let mut w = world(100, 2);
        w.set_drain(0, 1, 1.0);
        w.advance();
        assert_eq!(w.totals.planned_closes, 1);
    }

    #[test]
    fn steering_reaches_the_load_balancer_after_the_propagation_delay() {
        let mut w = world(0, 2);
        w.pods[1].accepting = false;
        w.publish_endpoints();
        // Agents arriving now still see both pods for `propagation_seconds` (2 s).
        let mut hits_before = 0;
        for _ in 0..200 {
            let p = w.balance().unwrap();
            hits_before += usize::from(p == 1);
        }
        assert!(hits_before > 50, "the old endpoint set is still in use");
        run(&mut w, 2.1);
        for _ in 0..200 {
            assert_eq!(
                w.balance(),
                Some(0),
                "only the accepting pod after the delay"
            );
        }
    }

    #[test]
    fn a_restart_cuts_everyone_and_they_come_back_elsewhere() {
        let mut w = world(2_000, 4);
        let held = w.pods[2].connections();
        assert!(held > 0);
        w.restart_pod(2, false);
        assert_eq!(w.totals.cut, held);
        assert!(!w.pods[2].ready);
        run(&mut w, 60.0);
        assert_eq!(w.connected(), 2_000, "everyone reconnected");
        assert!(w.pods[2].ready, "the pod is back after its restart time");
        assert!(w.false_offline.iter().all(|&f| !f));
    }

    #[test]
    fn without_admission_an_overloaded_pod_wastes_handshakes() {
        let mut w = world(20_000, 2);
        // 20,000 agents onto one pod that does 200 handshakes/s: its queue waits longer
        // than the agents' 10 s handshake timeout, so handshakes are computed in vain.
        w.restart_pod(0, false);
        w.restart_pod(1, false);
        run(&mut w, 120.0);
        assert!(w.totals.wasted_handshakes > 0);
        let mut admitted = world(20_000, 2);
        admitted.admission = true;
        admitted.restart_pod(0, false);
        admitted.restart_pod(1, false);
        run(&mut admitted, 120.0);
        assert_eq!(
            admitted.totals.wasted_handshakes, 0,
            "refused before the handshake instead"
        );
    }
}
