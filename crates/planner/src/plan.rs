//! One planning step: observation in, actions and the next state out.
//!
//! The order of a step, each part reading what the previous one decided:
//! 1. forget planned closes whose agents are back (in flight for `tuning.settle`);
//! 2. the rolling restart: successors that are Ready, drained pods that may restart, pods
//!    that may start draining (headroom check first);
//! 3. targets: each serving pod's share of every connection, in-flight ones included;
//! 4. the rebalance episode: started when a pod is out of tolerance, donors fixed for it;
//! 5. steering: which pods accept new connections, and how much room they have;
//! 6. the budget (AIMD within the spare handshake capacity of the accepting pods);
//! 7. closes for this interval, within the budget and the room: restart drains first, then
//!    re-handshakes of older certificates, then rebalancing.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::allocate::proportional;
use crate::budget::{self, Budget};
use crate::observe::{Observation, PodObservation, PodReport};
use crate::spec::Spec;
use crate::state::{Episode, Restarting, Rollout, Spent, State, Window};
use crate::why::Why;

/// What to do now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum Action {
    /// Close `connections` of `pod`'s connections spread evenly over `over_seconds` (the pacing
    /// rule of `ballast-contract`), older certificates first. Replaces the previous drain.
    #[serde(rename_all = "camelCase")]
    Drain {
        pod: String,
        connections: u64,
        over_seconds: f64,
        older_certificate_first: bool,
        why: Why,
    },
    /// Let new connections reach `pod`, or stop them.
    Steer {
        pod: String,
        accepting: bool,
        why: Why,
    },
    /// Restart `pod` (through the Eviction API, so PodDisruptionBudgets hold).
    Restart { pod: String, why: Why },
    /// Something cannot proceed now; say why (an Event, a status message).
    Wait { why: Why },
}

/// Per-pod outcome, in the observation's order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodPlan {
    pub name: String,
    pub accepting: bool,
    /// Closes planned for this interval.
    pub closes: u64,
    /// The share of all connections this pod should hold (0 when it is not serving).
    pub target: u64,
}

/// The outcome of one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub actions: Vec<Action>,
    pub pods: Vec<PodPlan>,
    /// Reconnects per second in force.
    pub budget: f64,
    /// The most the budget could be now.
    pub budget_ceiling: f64,
    /// Planned closes this interval.
    pub closes: u64,
    /// Planned closes whose agents may still be reconnecting.
    pub in_flight: u64,
    /// max/mean of the serving pods' connections (1.0 when even, 0 with no connections).
    pub imbalance: f64,
    /// The state to hand to the next step.
    pub state: State,
}

impl Plan {
    /// Whether `pod` accepts new connections under this plan.
    pub fn accepting(&self, pod: &str) -> bool {
        self.pods.iter().any(|p| p.name == pod && p.accepting)
    }

    /// The waits of this plan.
    pub fn waits(&self) -> impl Iterator<Item = &Why> {
        self.actions.iter().filter_map(|a| match a {
            Action::Wait { why } => Some(why),
            _ => None,
        })
    }

    /// One line a person can follow a rotation by, plan after plan: the budget, the closes,
    /// what is in flight, and per pod whether it accepts (`+`/`-`), is routed to (`>`, when
    /// known), not Ready (`!`), not on the current revision (`~`), its reported connections,
    /// its target and its closes. The operator logs it at
    /// debug level and the simulator prints it with `BALLAST_SIM_TRACE`, so a real roll and a
    /// simulated one read alike.
    pub fn trace(&self, obs: &Observation) -> String {
        let pods: Vec<String> = self
            .pods
            .iter()
            .zip(&obs.pods)
            .map(|(p, o)| {
                let held = o
                    .report
                    .as_ref()
                    .map_or("?".to_owned(), |r| r.connections.to_string());
                format!(
                    "{}{}{}{}{} {held}/{} -{}",
                    if p.accepting { '+' } else { '-' },
                    match o.routed {
                        Some(true) => ">",
                        Some(false) => " ",
                        None => "",
                    },
                    p.name,
                    if o.ready { "" } else { "!" },
                    if o.up_to_date { "" } else { "~" },
                    p.target,
                    p.closes,
                )
            })
            .collect();
        let waits: Vec<String> = self.waits().map(ToString::to_string).collect();
        format!(
            "budget {:.0}/{:.0}/s closes {} in flight {} [{}]{}",
            self.budget,
            self.budget_ceiling,
            self.closes,
            self.in_flight,
            pods.join(", "),
            if waits.is_empty() {
                String::new()
            } else {
                format!(" waits: {}", waits.join("; "))
            }
        )
    }
}

/// What a pod is doing, as far as the plan is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Ready, reporting, not part of a restart: holds and takes connections.
    Serving,
    /// Drained before its restart.
    Draining,
    /// Its restart was ordered; waiting for the successor.
    Restarting,
    /// Not Ready, terminating, or not reporting: neither drained nor counted.
    Unknown,
}

/// One planning step. Pure: the same arguments give the same plan.
pub fn plan(spec: &Spec, obs: &Observation, state: &State) -> Plan {
    let t = &spec.tuning;
    let now = obs.now;
    let mut st = state.clone();
    let mut actions = Vec::new();

    // 1. In flight.
    st.in_flight.retain(|s| now - s.at < t.settle);
    let planned_recently = st.in_flight_at(now, t.settle);

    let fresh = |p: &PodObservation| -> Option<PodReport> {
        p.report
            .clone()
            .filter(|r| now - r.at <= t.stale_after_intervals * t.interval)
    };
    let reports: Vec<Option<PodReport>> = obs.pods.iter().map(fresh).collect();
    // In flight: what was held or in flight at the previous plan and is not held now, but
    // never more than recent plans closed (organic departures are not ours to wait for).
    let held_everywhere: u64 = reports.iter().flatten().map(|r| r.connections).sum();
    let missing = st.last_total.map_or(planned_recently, |before| {
        before.saturating_sub(held_everywhere)
    });
    // Closes planned after a pod's report was taken cannot show in it: however the counts
    // add up, those are in flight (a late report would otherwise hide a whole plan's worth
    // of agents on their way to the receivers).
    let oldest_report = reports.iter().flatten().map(|r| r.at).fold(now, f64::min);
    let unreflected: u64 = st
        .in_flight
        .iter()
        .filter(|s| s.at > oldest_report)
        .map(|s| s.closes)
        .sum();
    let in_flight = planned_recently.min(missing).max(unreflected);
    st.last_total = Some(held_everywhere + in_flight);
    let capacity = |i: usize| {
        reports[i]
            .as_ref()
            .and_then(|r| r.max_connections)
            .unwrap_or(spec.max_connections_per_pod)
    };
    let connections = |i: usize| reports[i].as_ref().map_or(0, |r| r.connections);

    // 2. The rolling restart.
    rollout(spec, obs, &reports, in_flight, &mut st, &mut actions);

    let roles: Vec<Role> = obs
        .pods
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let r = st.rollout.as_ref();
            if r.is_some_and(|r| r.restarting.contains_key(&p.name)) {
                Role::Restarting
            } else if r.is_some_and(|r| r.draining.contains_key(&p.name)) {
                Role::Draining
            } else if p.ready && !p.terminating && reports[i].is_some() {
                Role::Serving
            } else {
                Role::Unknown
            }
        })
        .collect();
    for (i, p) in obs.pods.iter().enumerate() {
        if p.ready && !p.terminating && reports[i].is_none() {
            actions.push(Action::Wait {
                why: Why::NoReport {
                    pod: p.name.clone(),
                },
            });
        }
    }

    // 3. Targets over the serving pods, by capacity.
    let serving: Vec<usize> = (0..obs.pods.len())
        .filter(|&i| roles[i] == Role::Serving)
        .collect();
    let draining: Vec<usize> = (0..obs.pods.len())
        .filter(|&i| roles[i] == Role::Draining)
        .collect();
    let held: u64 = serving
        .iter()
        .chain(&draining)
        .map(|&i| connections(i))
        .sum();
    let total = held + in_flight;
    // Shares are of every pod that will serve once the rollout is through (pods drained or
    // restarting included): filling the serving pods beyond that would only move the same
    // connections again when the others return.
    let returning: Vec<usize> = (0..obs.pods.len())
        .filter(|&i| matches!(roles[i], Role::Draining | Role::Restarting))
        .collect();
    // Split exactly (largest remainder): targets that add up to more than there is would
    // leave donors at their target while a receiver still lacks a few.
    let sharing: Vec<usize> = serving.iter().chain(&returning).copied().collect();
    let shares = proportional(
        total,
        &sharing.iter().map(|&i| capacity(i)).collect::<Vec<_>>(),
    );
    let mut target = vec![0u64; obs.pods.len()];
    for (&i, share) in sharing.iter().zip(shares) {
        if roles[i] == Role::Serving {
            target[i] = share;
        }
    }
    let imbalance = imbalance_of(serving.iter().map(|&i| connections(i)));

    // 4. The rebalance episode.
    // Out of band: further from target than the tolerance, and than a few connections (so
    // that a tolerance of 0 does not chase single connections).
    let out_of_band = |i: usize, tol: f64, slack: f64| {
        let (c, tg) = (connections(i) as f64, target[i] as f64);
        (c - tg).abs() > (tg * tol).max(slack)
    };
    let slack = t.min_move as f64;
    // While a reconnectExisting window moves every connection on the older certificate, the
    // reconnecting agents spread over the pods as the load balancer sends them: a small
    // imbalance evens out by itself, and steering them all to the one or two pods below target
    // would leave room for only a fraction of the window's pace (a CI run fell behind, then
    // caught up at twice its share). Only an imbalance beyond twice the tolerance (a new or
    // refilled pod) starts an episode then.
    let rehandshaking = spec.reconnect_within.is_some()
        && serving.iter().any(|&i| {
            reports[i]
                .as_ref()
                .is_some_and(|r| r.on_older_certificate > 0)
        });
    let start_tolerance = if rehandshaking {
        spec.tolerance * 2.0
    } else {
        spec.tolerance
    };
    if !spec.rebalance {
        st.rebalance = None;
    } else {
        let settled = serving
            .iter()
            .all(|&i| !out_of_band(i, spec.tolerance / 2.0, slack));
        match &mut st.rebalance {
            Some(episode) => {
                // Donors only ever leave an episode: once at or below target, or gone.
                episode.donors.retain(|d| {
                    serving
                        .iter()
                        .any(|&i| obs.pods[i].name == *d && connections(i) > target[i])
                });
                if episode.donors.is_empty() || settled {
                    st.rebalance = None;
                }
            }
            None => {
                if serving
                    .iter()
                    .any(|&i| out_of_band(i, start_tolerance, slack))
                {
                    let donors: BTreeSet<String> = serving
                        .iter()
                        .filter(|&&i| connections(i) > target[i])
                        .map(|&i| obs.pods[i].name.clone())
                        .collect();
                    if !donors.is_empty() {
                        st.rebalance = Some(Episode {
                            started_at: now,
                            donors,
                        });
                    }
                }
            }
        }
    }
    let donors: BTreeSet<String> = st
        .rebalance
        .as_ref()
        .map(|e| e.donors.clone())
        .unwrap_or_default();

    // 5. Steering. Connections that move need somewhere to go: while pods drain or donors
    // shed, only pods below their target accept, the ones with the most room first, as many
    // as maximise what can be moved in an interval: the room that can be filled evenly (a
    // load balancer spreads evenly) and the handshakes those pods can do.
    // Only a rebalance restricts who accepts: a pod drained for its restart may hand its
    // connections to every serving pod (the headroom check made room for them).
    let moving = !donors.is_empty();
    // Handshakes the pods do for agents that are not ours to move (new arrivals, crashes):
    // whoever accepts takes these too.
    let organic = budget::organic_rate(reports.iter().flatten(), st.last_rate);
    let room = |i: usize| capacity(i).saturating_sub(connections(i));
    let candidates: Vec<usize> = serving
        .iter()
        .copied()
        .filter(|&i| !donors.contains(&obs.pods[i].name) && room(i) > 0)
        .collect();
    let mut accepting: Vec<usize>;
    let mut per_pod_room: u64;
    let deficits: Vec<(usize, u64)> = candidates
        .iter()
        .map(|&i| (i, target[i].saturating_sub(connections(i)).min(room(i))))
        .filter(|&(_, d)| d > 0)
        .collect();
    if moving && !deficits.is_empty() {
        let mut sorted = deficits;
        sorted.sort_by_key(|&(i, d)| (std::cmp::Reverse(d), i));
        // k receivers can take k × (smallest deficit among them) without overshooting,
        // and k × their handshake rate per interval: take the k that moves the most.
        let per_pod = spec.max_handshakes_per_second_per_pod * t.interval;
        // Agents still in flight land on whoever accepts now: the set must have room for
        // them (k × smallest deficit ≥ in flight) whenever some set does.
        let holds_in_flight = |k: usize| k as u64 * sorted[k - 1].1 >= in_flight;
        let any_holds = (1..=sorted.len()).any(holds_in_flight);
        let best_k = (1..=sorted.len())
            .filter(|&k| !any_holds || holds_in_flight(k))
            .max_by_key(|&k| {
                let k64 = k as u64;
                let handshakes = (k as f64 * per_pod - organic * t.interval).max(1.0) as u64;
                (
                    (k64 * sorted[k - 1].1).min(handshakes),
                    std::cmp::Reverse(k),
                )
            })
            .unwrap_or(1);
        accepting = sorted[..best_k].iter().map(|&(i, _)| i).collect();
        per_pod_room = sorted[best_k - 1].1;
    } else if !draining.is_empty() {
        // A restart drain: prefer pods already on the current revision (a connection moved to
        // a pod that restarts later would move twice); add the emptiest others only until the
        // set has the handshake rate of the budget's ceiling and room for what is drained.
        let per_pod_rate = spec.max_handshakes_per_second_per_pod;
        let need_room: u64 = draining.iter().map(|&i| connections(i)).sum::<u64>() + in_flight;
        let mut ordered = candidates.clone();
        ordered.sort_by_key(|&i| (!obs.pods[i].up_to_date, connections(i), i));
        accepting = Vec::new();
        for i in ordered {
            let rate = accepting.len() as f64 * per_pod_rate;
            // Room up to the target: a pod filled beyond its share would shed it again.
            let room_now: u64 = accepting
                .iter()
                .map(|&j| target[j].saturating_sub(connections(j)).min(room(j)))
                .sum();
            if !accepting.is_empty()
                && rate >= spec.max_reconnects_per_second + organic
                && room_now >= need_room
            {
                break;
            }
            accepting.push(i);
        }
        per_pod_room = accepting.iter().map(|&i| room(i)).min().unwrap_or(0);
    } else {
        accepting = candidates.clone();
        per_pod_room = accepting.iter().map(|&i| room(i)).min().unwrap_or(0);
    }
    accepting.sort_unstable();
    if accepting.is_empty() {
        // Never no accepting pod: every serving pod, else every Ready one.
        accepting = serving.clone();
        if accepting.is_empty() {
            accepting = (0..obs.pods.len())
                .filter(|&i| obs.pods[i].ready && !obs.pods[i].terminating)
                .collect();
        }
        if accepting.is_empty() {
            accepting = (0..obs.pods.len()).filter(|&i| obs.pods[i].ready).collect();
        }
        per_pod_room = accepting.iter().map(|&i| room(i)).min().unwrap_or(0);
    }
    // Where a close lands now: pods the load balancer routes to, which is what the plan
    // steered some seconds ago (probe period, endpoint propagation). While a pod that should
    // take nothing is still routed to, closes would send agents to a pod that sheds or
    // restarts (to move again) or past a receiver's target; while no accepting pod is routed
    // to, they would find nowhere to go. Either way nothing is closed until routing follows.
    let accepting_set: BTreeSet<usize> = accepting.iter().copied().collect();
    // A pod that is not Ready (a successor starting, a pod coming up) or that the plan
    // cannot see is left as it is: steering fails readiness, so steering a pod that is
    // starting would keep it from ever becoming Ready.
    // So is a restarted pod's successor until the rollout counts it (it must become routed
    // for that, and steering it away would prevent it).
    let successor = |i: usize| {
        let p = &obs.pods[i];
        st.rollout
            .as_ref()
            .and_then(|r| r.restarting.get(&p.name))
            .is_some_and(|r| r.old_uid != p.uid)
    };
    let accepts = |i: usize| {
        let p = &obs.pods[i];
        accepting_set.contains(&i)
            || (!p.terminating && (roles[i] == Role::Unknown || !p.ready || successor(i)))
    };
    let routed = |i: usize| obs.pods[i].routed.unwrap_or_else(|| accepts(i));
    let routed_against_plan: Vec<String> = (0..obs.pods.len())
        .filter(|&i| routed(i) && !accepts(i))
        .map(|i| obs.pods[i].name.clone())
        .collect();
    let receiving: Vec<usize> = accepting.iter().copied().filter(|&i| routed(i)).collect();
    let steering_pending = !routed_against_plan.is_empty() || receiving.is_empty();
    let room_for_moves = (receiving.len() as u64 * per_pod_room).saturating_sub(in_flight);

    // 6. The budget: the spare handshakes of the pods that really receive.
    let accepting_serving = receiving
        .iter()
        .filter(|&&i| roles[i] == Role::Serving)
        .count();
    let spare = budget::spare_capacity(spec, accepting_serving, organic);
    let trouble = reports
        .iter()
        .flatten()
        .any(|r| budget::shows_trouble(spec, r));
    let Budget {
        rate: budget_rate,
        ceiling,
    } = budget::next(spec, st.budget, spare, trouble);
    st.budget = Some(budget_rate);

    // 7. Closes for this interval.
    let absorbable = (spare * spec.offline_threshold * t.offline_safety) as u64;
    // Each sidecar paces its own drain from the instant it receives it, so a 1 s window that
    // straddles two intervals can hold one close more per draining pod than the rate. One
    // close per draining pod is kept back, and no more pods drain than were kept back for:
    // no 1 s window, across two intervals, holds more closes than the budget.
    let budget_closes = (budget_rate * t.interval).floor() as u64;
    let (reserve, max_draining_pods) = if budget_closes <= 1 {
        // A single close per interval falls at its start: one per window whatever happens.
        (0, budget_closes as usize)
    } else {
        let r = (obs.pods.len() as u64).min(budget_closes / 2);
        (r, r as usize)
    };
    let wanted_closes = budget_closes.saturating_sub(reserve);
    let mut left = if steering_pending { 0 } else { wanted_closes }
        .min(absorbable.saturating_sub(in_flight))
        .min(room_for_moves);
    let mut closes = vec![0u64; obs.pods.len()];
    let mut why: Vec<Option<Why>> = vec![None; obs.pods.len()];
    let mut older_first = vec![false; obs.pods.len()];

    // 7a. Pods drained before their restart.
    let parts = proportional(
        left,
        &draining.iter().map(|&i| connections(i)).collect::<Vec<_>>(),
    );
    for (&i, n) in draining.iter().zip(parts) {
        closes[i] += n;
        left -= n;
        why[i] = Some(Why::DrainForRestart {
            connections: connections(i),
        });
    }

    // 7b. Rebalancing: donors shed their excess over target, no more than receivers lack. It
    // comes before re-handshakes: a donor closes its older connections first, so its closes
    // serve both, and a rebalance that is almost done ends instead of holding steering.
    // Not while a Ready pod that the load balancer routes to has no fresh report: it takes
    // agents the plan cannot see, and the targets, shared out over the pods that report,
    // would drain the donors below their real share (its `NoReport` wait says why).
    let unseen_routed = (0..obs.pods.len()).any(|i| {
        let p = &obs.pods[i];
        p.ready && !p.terminating && reports[i].is_none() && routed(i)
    });
    if !donors.is_empty() && !unseen_routed {
        let givers: Vec<usize> = serving
            .iter()
            .copied()
            .filter(|&i| donors.contains(&obs.pods[i].name))
            .collect();
        // Closes asked of a donor after its report was taken are not in its count yet.
        let unreported = |i: usize| -> u64 {
            let since = reports[i].as_ref().map_or(now, |r| r.at);
            st.in_flight
                .iter()
                .filter(|s| s.at > since)
                .filter_map(|s| s.by_pod.get(&obs.pods[i].name))
                .sum()
        };
        let excess: Vec<u64> = givers
            .iter()
            .map(|&i| {
                connections(i)
                    .saturating_sub(target[i])
                    .saturating_sub(closes[i])
                    .saturating_sub(unreported(i))
            })
            .collect();
        // What the pods that receive lack, less what is already on its way to them (restart
        // drains of this interval included): with no pod below its target to receive, agents
        // closed by one donor would only land on another and be moved back.
        let lack: u64 = receiving
            .iter()
            .filter(|&&i| !donors.contains(&obs.pods[i].name))
            .map(|&i| target[i].saturating_sub(connections(i)))
            .sum::<u64>()
            .saturating_sub(in_flight + closes.iter().sum::<u64>());
        // Half of it per interval: counts arrive late on a loaded node, and a loop that
        // closes the whole gap at once overshoots and swings around the mean; halving the
        // gap each interval converges, and costs nothing while the budget is the limit.
        let lack = lack.div_ceil(2);
        let parts = proportional(left.min(lack), &excess);
        for (&i, n) in givers.iter().zip(parts) {
            if n > 0 {
                closes[i] += n;
                left -= n;
                why[i].get_or_insert(Why::Rebalance {
                    connections: connections(i),
                    target: target[i],
                });
            }
        }
    }

    // 7c. Connections still on an older certificate (less what donors close already).
    if let Some(within) = spec.reconnect_within {
        let older: Vec<u64> = serving
            .iter()
            .map(|&i| {
                reports[i]
                    .as_ref()
                    .map_or(0, |r| r.on_older_certificate.saturating_sub(closes[i]))
            })
            .collect();
        let older_total: u64 = older.iter().sum();
        if older_total == 0 {
            st.rehandshake = None;
        } else {
            let window = st.rehandshake.get_or_insert(Window {
                started_at: now,
                deadline: now + within,
            });
            let seconds_left = (window.deadline - now).max(t.interval);
            let needed = older_total as f64 / seconds_left;
            if needed > budget_rate {
                actions.push(Action::Wait {
                    why: Why::BudgetTooLow {
                        needed_per_second: needed,
                        budget: budget_rate,
                    },
                });
            }
            let want = ((needed * t.interval).ceil() as u64)
                .min(older_total)
                .min(left);
            let parts = proportional(want, &older);
            for ((&i, n), &o) in serving.iter().zip(parts).zip(&older) {
                if n > 0 {
                    closes[i] += n;
                    left = left.saturating_sub(n);
                    older_first[i] = true;
                    why[i] = Some(Why::Rehandshake {
                        older: o,
                        seconds_left,
                    });
                }
            }
        }
    } else {
        st.rehandshake = None;
    }

    // Keep only as many draining pods as the reserve covers: those with the most to close.
    let mut busy: Vec<usize> = (0..closes.len()).filter(|&i| closes[i] > 0).collect();
    if busy.len() > max_draining_pods {
        busy.sort_by_key(|&i| (std::cmp::Reverse(closes[i]), i));
        for &i in &busy[max_draining_pods..] {
            closes[i] = 0;
        }
    }
    let planned: u64 = closes.iter().sum();
    let work_left = !draining.is_empty() || moving || st.rehandshake.is_some();
    if steering_pending && work_left && wanted_closes > 0 {
        actions.push(Action::Wait {
            why: Why::SteeringPending {
                routed_against_plan,
            },
        });
    }
    for (i, p) in obs.pods.iter().enumerate() {
        if closes[i] > 0 {
            actions.push(Action::Drain {
                pod: p.name.clone(),
                connections: closes[i],
                over_seconds: t.interval,
                older_certificate_first: older_first[i],
                why: why[i].clone().unwrap_or(Why::Default),
            });
        }
    }
    let steering_restricted = moving && accepting.len() < serving.len();
    let mut pods = Vec::with_capacity(obs.pods.len());
    for (i, p) in obs.pods.iter().enumerate() {
        let accepts = accepts(i);
        let why = if !accepts {
            Why::NotAccepting
        } else if steering_restricted {
            Why::BelowTarget
        } else {
            Why::Default
        };
        actions.push(Action::Steer {
            pod: p.name.clone(),
            accepting: accepts,
            why,
        });
        pods.push(PodPlan {
            name: p.name.clone(),
            accepting: accepts,
            closes: closes[i],
            target: target[i],
        });
    }

    if planned > 0 {
        st.in_flight.push(Spent {
            at: now,
            closes: planned,
            by_pod: obs
                .pods
                .iter()
                .zip(&closes)
                .filter(|(_, &n)| n > 0)
                .map(|(p, &n)| (p.name.clone(), n))
                .collect(),
        });
    }
    st.last_rate = planned as f64 / t.interval;
    st.totals.planned_closes += planned;
    Plan {
        actions,
        pods,
        budget: budget_rate,
        budget_ceiling: ceiling,
        closes: planned,
        in_flight,
        imbalance,
        state: st,
    }
}

/// max/mean of connection counts; 0 with none.
pub(crate) fn imbalance_of(counts: impl Iterator<Item = u64>) -> f64 {
    let (mut n, mut sum, mut max) = (0u64, 0u64, 0u64);
    for c in counts {
        n += 1;
        sum += c;
        max = max.max(c);
    }
    if sum == 0 {
        0.0
    } else {
        max as f64 * n as f64 / sum as f64
    }
}

/// Advances the rolling restart: successors, restarts of drained pods, new drains.
fn rollout(
    spec: &Spec,
    obs: &Observation,
    reports: &[Option<PodReport>],
    in_flight: u64,
    st: &mut State,
    actions: &mut Vec<Action>,
) {
    let now = obs.now;
    let by_name: BTreeMap<&str, usize> = obs
        .pods
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str(), i))
        .collect();
    let stale: Vec<usize> = (0..obs.pods.len())
        .filter(|&i| !obs.pods[i].up_to_date && !obs.pods[i].terminating)
        .collect();
    if st.rollout.is_none() {
        if stale.is_empty() {
            return;
        }
        st.rollout = Some(Rollout {
            started_at: now,
            ..Default::default()
        });
    }
    let r = st.rollout.as_mut().expect("set above");

    // Successors.
    let restarting: Vec<(String, Restarting)> = r
        .restarting
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (name, rs) in restarting {
        match by_name.get(name.as_str()).map(|&i| &obs.pods[i]) {
            // Ready and routed to: until the load balancer sends it agents, the pods it
            // should relieve get them instead.
            Some(p)
                if p.uid != rs.old_uid && p.ready && !p.terminating && p.routed != Some(false) =>
            {
                r.restarting.remove(&name);
                r.restarted.insert(name);
            }
            _ => actions.push(Action::Wait {
                why: Why::WaitingForSuccessor {
                    pod: name,
                    seconds: now - rs.since,
                },
            }),
        }
    }

    // Pods not Ready count against maxUnavailable whether or not we restarted them.
    let unavailable = |r: &Rollout| -> usize {
        let mut names: BTreeSet<&str> = r.restarting.keys().map(String::as_str).collect();
        for p in &obs.pods {
            if !p.ready || p.terminating {
                names.insert(p.name.as_str());
            }
        }
        names.len()
    };

    // Drained pods restart when empty or at the drain timeout, one restart slot each.
    let draining: Vec<(String, f64)> = r.draining.iter().map(|(k, v)| (k.clone(), *v)).collect();
    for (name, since) in draining {
        let Some(&i) = by_name.get(name.as_str()) else {
            r.draining.remove(&name);
            continue;
        };
        let p = &obs.pods[i];
        if p.up_to_date {
            // Replaced behind our back (crashed, deleted by hand): nothing left to do.
            r.draining.remove(&name);
            r.restarted.insert(name);
            continue;
        }
        let left = reports[i].as_ref().map(|r| r.connections);
        let why = match left {
            Some(0) => Why::RestartDrained,
            _ if now - since >= spec.drain_timeout => Why::RestartAfterTimeout {
                remaining: left.unwrap_or(0),
            },
            _ => continue,
        };
        let adds = usize::from(p.ready && !p.terminating);
        if r.restarting.len() < spec.max_unavailable
            && unavailable(r) + adds <= spec.max_unavailable
        {
            r.draining.remove(&name);
            r.restarting.insert(
                name.clone(),
                Restarting {
                    since: now,
                    old_uid: p.uid.clone(),
                },
            );
            st.totals.restarts += 1;
            actions.push(Action::Restart { pod: name, why });
        } else {
            actions.push(Action::Wait {
                why: Why::AtMaxUnavailable {
                    restarting: r.restarting.len(),
                },
            });
        }
    }

    // New drains, pods that are not Ready first (they hold nothing we can move).
    let mut candidates: Vec<usize> = stale
        .iter()
        .copied()
        .filter(|&i| {
            let n = &obs.pods[i].name;
            !r.draining.contains_key(n) && !r.restarting.contains_key(n) && !r.restarted.contains(n)
        })
        .collect();
    candidates.sort_by_key(|&i| (obs.pods[i].ready, i));
    for i in candidates {
        let p = &obs.pods[i];
        if !p.ready {
            if r.restarting.len() < spec.max_unavailable && unavailable(r) <= spec.max_unavailable {
                r.restarting.insert(
                    p.name.clone(),
                    Restarting {
                        since: now,
                        old_uid: p.uid.clone(),
                    },
                );
                st.totals.restarts += 1;
                actions.push(Action::Restart {
                    pod: p.name.clone(),
                    why: Why::RestartUnready,
                });
            }
            continue;
        }
        if r.draining.len() >= spec.max_unavailable {
            break;
        }
        let Some(report) = reports[i].as_ref() else {
            actions.push(Action::Wait {
                why: Why::NoReport {
                    pod: p.name.clone(),
                },
            });
            break;
        };
        // Headroom: the pods that keep serving can take this pod's connections.
        let room: u64 = (0..obs.pods.len())
            .filter(|&j| {
                j != i
                    && obs.pods[j].ready
                    && !obs.pods[j].terminating
                    && !r.draining.contains_key(&obs.pods[j].name)
                    && !r.restarting.contains_key(&obs.pods[j].name)
            })
            .filter_map(|j| {
                let rep = reports[j].as_ref()?;
                let cap = rep.max_connections.unwrap_or(spec.max_connections_per_pod);
                Some(cap.saturating_sub(rep.connections))
            })
            .sum::<u64>()
            .saturating_sub(in_flight);
        let draining_now: u64 = r
            .draining
            .keys()
            .filter_map(|n| by_name.get(n.as_str()))
            .filter_map(|&j| reports[j].as_ref().map(|r| r.connections))
            .sum();
        let needed = report.connections + draining_now;
        if needed > room {
            actions.push(Action::Wait {
                why: Why::NoHeadroom {
                    pod: p.name.clone(),
                    needed,
                    room,
                },
            });
            break;
        }
        r.draining.insert(p.name.clone(), now);
    }

    if stale.is_empty() && r.draining.is_empty() && r.restarting.is_empty() {
        st.rollout = None;
    }
}
