//! The operator's side of the planner: a PresenceCluster, its pods and their reports put in
//! the planner's plain terms, and the plan put back as what each pod is asked to do, which
//! pods restart, and what to tell people.
//!
//! Pure: no I/O and no clock (`now` comes in, on the wall clock, so that the planner's state
//! stays meaningful to another replica after a failover). The observer runs [`step`] every
//! tick for every cluster and carries out its [`Carried`] result; the decisions themselves are
//! all in `ballast-planner`.

use std::collections::HashMap;

use ballast_contract::duration::parse_duration;
use ballast_contract::Report;
use ballast_planner::{
    plan, Action, Observation, Plan, PodObservation, PodReport, Spec, State, Tuning, Why,
};

use crate::crd::PresenceCluster;
use crate::hub::{PlannedDrain, Wanted};

/// One pod as the observer saw it this tick.
pub struct PodInput<'a> {
    pub name: &'a str,
    pub uid: &'a str,
    pub ready: bool,
    pub up_to_date: bool,
    pub terminating: bool,
    /// Kubernetes routes new connections to it: its Ready condition, which is what the
    /// endpoints controller publishes (steering fails readiness, so this follows steering
    /// a probe period late).
    pub routed: bool,
    /// The pod's latest believed report and how old it is, in seconds.
    pub report: Option<(&'a Report, f64)>,
}

/// The spec in the planner's units. Durations that do not parse (the schema prevents it)
/// fall back to the CRD's defaults.
pub fn spec_of(prc: &PresenceCluster, interval_seconds: f64) -> Spec {
    let s = &prc.spec;
    let seconds = |text: &str, default: f64| {
        parse_duration(text)
            .map(|d| d.as_secs_f64())
            .unwrap_or(default)
    };
    Spec {
        max_connections_per_pod: s.capacity.max_connections_per_pod.max(1) as u64,
        max_handshakes_per_second_per_pod: f64::from(
            s.capacity.max_handshakes_per_second_per_pod.max(1),
        ),
        max_reconnects_per_second: f64::from(s.migration.max_reconnects_per_second.max(1)),
        max_unavailable: s.migration.max_unavailable.max(1) as usize,
        drain_timeout: seconds(&s.migration.drain_timeout, 600.0),
        rebalance: s.rebalance.enabled,
        tolerance: f64::from(s.rebalance.tolerance_percent) / 100.0,
        offline_threshold: seconds(&s.presence.offline_threshold, 60.0),
        reconnect_within: s
            .tls
            .rotation
            .reconnect_existing
            .as_ref()
            .map(|r| seconds(&r.within, 0.0))
            .filter(|w| *w > 0.0),
        tuning: Tuning {
            interval: interval_seconds,
            ..Tuning::default()
        },
    }
}

/// What the planner is told: every pod, and for each believed report its figures, dated on
/// `now`'s clock.
pub fn observation_of(now: f64, pods: &[PodInput<'_>]) -> Observation {
    Observation {
        now,
        pods: pods
            .iter()
            .map(|p| PodObservation {
                name: p.name.to_owned(),
                uid: p.uid.to_owned(),
                ready: p.ready,
                up_to_date: p.up_to_date,
                terminating: p.terminating,
                routed: Some(p.routed),
                report: p.report.map(|(r, age)| PodReport {
                    at: now - age,
                    connections: r.connections.total,
                    on_older_certificate: r.connections.on_older_certificate,
                    handshakes_per_second: r.handshakes.per_second,
                    handshake_p99_seconds: r.handshakes.p99_seconds,
                    rate_refusals: ["handshake_rate", "concurrent_handshakes"]
                        .iter()
                        .filter_map(|k| r.refused.get(*k))
                        .sum(),
                    failed_handshakes: r.handshakes.failed,
                    max_connections: (r.max_connections > 0).then_some(r.max_connections),
                }),
            })
            .collect(),
    }
}

/// A plan turned into what the operator does.
#[derive(Debug, Default, PartialEq)]
pub struct Carried {
    /// What each pod is asked to do (pods not named: nothing).
    pub wanted: HashMap<String, Wanted>,
    /// Pods to restart now, through the Eviction API.
    pub restarts: Vec<(String, String)>,
    /// Why something waits, for an Event and the status.
    pub waits: Vec<Why>,
}

/// Runs one planning step. `plan_id` numbers the plans, so that a sidecar reporting twice
/// within one plan gets the same drain (renewed, not repeated) and a new plan a new one.
pub fn step(spec: &Spec, obs: &Observation, state: &State, plan_id: u64) -> (Plan, Carried) {
    let plan = plan(spec, obs, state);
    let carried = carry(&plan, obs, plan_id);
    (plan, carried)
}

fn carry(plan: &Plan, obs: &Observation, plan_id: u64) -> Carried {
    // Steering fails a pod's readiness: a pod that is not Ready yet (a successor starting)
    // is never steered, or it would never become Ready and its rollout would wait forever.
    let starting = |pod: &str| obs.pods.iter().any(|p| p.name == pod && !p.ready);
    let mut out = Carried::default();
    for action in &plan.actions {
        match action {
            Action::Drain {
                pod,
                connections,
                over_seconds,
                older_certificate_first,
                why,
            } => {
                let w = out.wanted.entry(pod.clone()).or_default();
                w.drain = Some(PlannedDrain {
                    plan: plan_id,
                    connections: *connections,
                    over_seconds: *over_seconds,
                    older_certificate_first: *older_certificate_first,
                });
                w.why = why.to_string();
            }
            Action::Steer { pod, accepting, .. } => {
                if !accepting && !starting(pod) {
                    out.wanted.entry(pod.clone()).or_default().accepting = Some(false);
                }
            }
            Action::Restart { pod, why } => out.restarts.push((pod.clone(), why.to_string())),
            Action::Wait { why } => {
                // Transient by nature (a probe period at each change of steering): not
                // worth an Event each time.
                if !matches!(why, Why::NoReport { .. } | Why::SteeringPending { .. }) {
                    out.waits.push(why.clone());
                }
            }
        }
    }
    for w in out.wanted.values_mut() {
        if w.why.is_empty() {
            w.why = Why::NotAccepting.to_string();
        }
    }
    out
}

/// Whether a wait needs a person (no headroom, a budget too low for the window) rather than
/// time (a successor coming up, `maxUnavailable` pods restarting).
pub fn needs_a_person(why: &Why) -> bool {
    matches!(why, Why::NoHeadroom { .. } | Why::BudgetTooLow { .. })
}

/// People first: what a pod's annotations ask replaces the plan for that pod.
pub fn merge(planned: &mut HashMap<String, Wanted>, asked: HashMap<String, Wanted>) {
    for (pod, wish) in asked {
        planned.insert(pod, wish);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballast_contract::report::ConnectionCounts;

    fn report(total: u64) -> Report {
        Report {
            connections: ConnectionCounts {
                total,
                on_current_certificate: total,
                on_older_certificate: 0,
            },
            accepting: true,
            upstream_reachable: true,
            ..Default::default()
        }
    }

    fn spec() -> Spec {
        let mut s = Spec::with_defaults();
        s.max_reconnects_per_second = 100.0;
        s
    }

    #[test]
    fn an_empty_new_pod_is_filled_from_the_others_and_only_it_is_steered_to() {
        let r = [report(1000), report(1000), report(1000), report(0)];
        let names = ["edge-0", "edge-1", "edge-2", "edge-3"];
        let pods: Vec<PodInput<'_>> = names
            .iter()
            .zip(&r)
            .map(|(n, r)| PodInput {
                name: n,
                uid: n,
                ready: true,
                up_to_date: true,
                terminating: false,
                routed: true,
                report: Some((r, 0.2)),
            })
            .collect();
        let obs = observation_of(1000.0, &pods);
        assert_eq!(obs.pods[3].report.as_ref().unwrap().at, 999.8);
        // First the donors are steered away; nothing is closed while Kubernetes still routes
        // to them (their readiness fails a probe period later).
        let (first, carried) = step(&spec(), &obs, &State::default(), 6);
        assert_eq!(first.closes, 0, "{first:?}");
        for donor in &names[..3] {
            assert_eq!(carried.wanted[*donor].accepting, Some(false));
            assert!(carried.wanted[*donor].drain.is_none());
        }
        let unrouted: Vec<PodInput<'_>> = pods
            .iter()
            .map(|p| PodInput {
                routed: p.name == "edge-3",
                ..*p
            })
            .collect();
        let obs = observation_of(1001.0, &unrouted);
        let (plan, carried) = step(&spec(), &obs, &first.state, 7);
        assert!(plan.closes > 0, "{plan:?}");
        for donor in &names[..3] {
            let w = &carried.wanted[*donor];
            assert_eq!(w.accepting, Some(false), "{donor} sheds and takes no one");
            let drain = w.drain.as_ref().expect("a drain");
            assert_eq!(drain.plan, 7);
            assert!(drain.connections > 0 && drain.over_seconds > 0.0);
            assert!(w.why.contains("target"), "{}", w.why);
        }
        assert!(
            !carried.wanted.contains_key("edge-3"),
            "the new pod is left to fill"
        );
        assert!(carried.restarts.is_empty());
    }

    #[test]
    fn a_pod_on_an_old_revision_is_drained_then_restarted_and_people_come_first() {
        let r = [report(0), report(500), report(500)];
        let names = ["edge-0", "edge-1", "edge-2"];
        let pods: Vec<PodInput<'_>> = names
            .iter()
            .zip(&r)
            .enumerate()
            .map(|(i, (n, r))| PodInput {
                name: n,
                uid: n,
                ready: true,
                up_to_date: i != 0,
                terminating: false,
                routed: true,
                report: Some((r, 0.1)),
            })
            .collect();
        let obs = observation_of(50.0, &pods);
        // First the drain starts (the pod is already empty), then the restart is ordered.
        let (first, _) = step(&spec(), &obs, &State::default(), 1);
        let (_, carried) = step(&spec(), &observation_of(51.0, &pods), &first.state, 2);
        assert_eq!(
            carried
                .restarts
                .iter()
                .map(|(p, _)| p.as_str())
                .collect::<Vec<_>>(),
            ["edge-0"]
        );

        // Its successor starts (another uid, not Ready yet): it is not steered, or it would
        // never become Ready.
        let successor = [PodInput {
            name: "edge-0",
            uid: "edge-0-successor",
            ready: false,
            up_to_date: true,
            terminating: false,
            routed: false,
            report: None,
        }];
        let during: Vec<PodInput<'_>> = successor
            .into_iter()
            .chain(pods.iter().skip(1).map(|p| PodInput { ..*p }))
            .collect();
        let (third, then) = step(
            &spec(),
            &observation_of(52.0, &during),
            &{
                let (second, _) = step(&spec(), &observation_of(51.0, &pods), &first.state, 2);
                second.state
            },
            3,
        );
        assert!(third
            .state
            .rollout
            .as_ref()
            .unwrap()
            .restarting
            .contains_key("edge-0"));
        assert!(!then.wanted.contains_key("edge-0"), "{:?}", then.wanted);

        let mut planned = carried.wanted.clone();
        let asked = HashMap::from([(
            "edge-1".to_owned(),
            Wanted {
                accepting: Some(false),
                drain_per_second: Some(5),
                drain: None,
                why: "annotated".into(),
                pod_uid: None,
            },
        )]);
        merge(&mut planned, asked);
        assert_eq!(planned["edge-1"].drain_per_second, Some(5));
        assert_eq!(planned["edge-1"].why, "annotated");
    }

    #[test]
    fn the_spec_is_read_in_the_planners_units() {
        let mut prc = crate::testing::example();
        prc.spec.migration.drain_timeout = "90s".into();
        prc.spec.rebalance.tolerance_percent = 20;
        prc.spec.tls.rotation.reconnect_existing = Some(crate::crd::ReconnectExisting {
            within: "10m".into(),
        });
        let s = spec_of(&prc, 1.0);
        assert_eq!(s.drain_timeout, 90.0);
        assert_eq!(s.tolerance, 0.2);
        assert_eq!(s.reconnect_within, Some(600.0));
        assert_eq!(s.tuning.interval, 1.0);
    }
}

#[cfg(test)]
mod quiet {
    use super::*;

    #[test]
    fn an_empty_steady_fleet_is_asked_nothing() {
        let r = Report {
            accepting: true,
            upstream_reachable: true,
            ..Default::default()
        };
        let names = ["edge-0", "edge-1", "edge-2"];
        let pods: Vec<PodInput<'_>> = names
            .iter()
            .map(|n| PodInput {
                name: n,
                uid: n,
                ready: true,
                up_to_date: true,
                terminating: false,
                routed: true,
                report: Some((&r, 0.1)),
            })
            .collect();
        let mut prc = crate::testing::example();
        prc.spec.capacity.max_connections_per_pod = 10_000;
        prc.spec.migration.max_reconnects_per_second = 50;
        let spec = spec_of(&prc, 1.0);
        let mut state = State::default();
        for t in 0..5 {
            let (plan, carried) = step(&spec, &observation_of(100.0 + t as f64, &pods), &state, t);
            assert!(carried.wanted.is_empty(), "{plan:#?}");
            state = plan.state;
        }
    }

    #[test]
    fn pods_that_are_starting_are_never_steered_away() {
        // Steering a starting pod would fail its readiness, and it would never start.
        let names = ["edge-0", "edge-1", "edge-2"];
        let pods: Vec<PodInput<'_>> = names
            .iter()
            .map(|n| PodInput {
                name: n,
                uid: n,
                ready: false,
                up_to_date: true,
                terminating: false,
                routed: false,
                report: None,
            })
            .collect();
        let spec = spec_of(&crate::testing::example(), 1.0);
        let (plan, carried) = step(&spec, &observation_of(5.0, &pods), &State::default(), 1);
        assert!(carried.wanted.is_empty(), "{plan:#?}");
    }
}
