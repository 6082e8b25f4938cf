//! Status: what the fleet looks like, computed from what was observed, and which changes a
//! person should hear about as Events.
//!
//! Pure functions of (spec, observations, previous status, now): the observer gathers the
//! observations, this module decides what they mean. The rule it keeps: never claim what is
//! not known. A pod without a fresh report contributes no figure; a condition that cannot be
//! judged is `Unknown`, with a reason saying why.

use ballast_certs::CertificateFacts;
use ballast_contract::{clock, Report};

use crate::crd::{
    CertificateStatus, Condition, MigrationStatus, Phase, PodStatus, PresenceCluster,
    PresenceClusterStatus,
};
use crate::validate::Problem;
use crate::workload;

/// One gateway pod as observed.
#[derive(Clone, Debug, PartialEq)]
pub struct PodView {
    pub name: String,
    /// The pod's Ready condition.
    pub ready: bool,
    /// This operator has seen the pod Ready before (a successor starting has not).
    pub been_ready: bool,
    /// It has a deletion timestamp.
    pub terminating: bool,
    /// It runs the StatefulSet's current revision.
    pub up_to_date: bool,
    /// Its sidecar's latest report, if fresh.
    pub report: Option<Report>,
}

impl PodView {
    /// Able to serve agents: Ready; or not Ready only because the operator steers new
    /// connections away (its sidecar says so, and that it is otherwise fine); or Ready before
    /// and its sidecar fine now. The last is the moment after steering is lifted: the sidecar
    /// is ready again, the kubelet's Ready condition follows at its next probe. Judged
    /// unavailable there, a pod on an old revision was restarted at once as "not Ready",
    /// undrained, with its 900 agents (found by the RollingRestart e2e).
    pub fn available(&self) -> bool {
        let fine = |r: &Report| r.upstream_reachable && !r.terminating;
        !self.terminating
            && (self.ready
                || self
                    .report
                    .as_ref()
                    .is_some_and(|r| fine(r) && (r.steered_away || self.been_ready)))
    }

    /// While its sidecar drains: when the drain window ends, and that plus `offline` (until
    /// when its agents should not be taken for offline), Unix seconds.
    pub fn planned_window(&self, offline: u64) -> Option<(i64, i64)> {
        let drain = self.report.as_ref()?.draining.as_ref()?;
        let started = clock::parse_rfc3339(&drain.started_at)?;
        let until = started + drain.over_seconds.max(0.0).ceil() as i64;
        Some((until, until + offline as i64))
    }

    fn state(&self) -> &'static str {
        match &self.report {
            None => "Silent",
            Some(r) if r.terminating || self.terminating => "Terminating",
            Some(r) if r.draining.is_some() => "Draining",
            Some(r) if r.steered_away => "Steered",
            Some(_) if !self.ready => "NotReady",
            Some(_) => "Serving",
        }
    }
}

/// Everything one tick observed.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The first problem found by validation, if any.
    pub problem: Option<Problem>,
    /// The Secret's certificate when it is servable (its facts: the operator holds no key).
    pub certificate: Option<CertificateFacts>,
    pub pods: Vec<PodView>,
    /// The migration running or last finished, and whether one is running.
    pub migration: Option<MigrationStatus>,
    pub migrating: bool,
    /// The planner's adaptive budget, reconnects per second.
    pub budget: Option<f64>,
    /// What a rotation or rebalance waits for, in words.
    pub waiting: Option<String>,
    /// The planner's memory, serialized.
    pub planner: Option<String>,
    /// Other clusters whose certificates renew at about the same time (`namespace/name`).
    pub renewals_aligned: Vec<String>,
}

/// A change worth an Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

/// Computes the new status. `now` is RFC 3339; it stamps conditions whose status changed.
pub fn compute(
    prc: &PresenceCluster,
    observed: &Observed,
    previous: Option<&PresenceClusterStatus>,
    now: &str,
) -> PresenceClusterStatus {
    let name = prc.metadata.name.clone().unwrap_or_default();
    let desired = prc.spec.replicas;
    let offline = ballast_contract::duration::parse_duration(&prc.spec.presence.offline_threshold)
        .map_or(60, |d| d.as_secs());
    let available: Vec<&PodView> = observed.pods.iter().filter(|p| p.available()).collect();
    let ready = available.len() as i32;
    let reporting: Vec<&Report> = observed
        .pods
        .iter()
        .filter_map(|p| p.report.as_ref())
        .collect();
    let connections: u64 = reporting.iter().map(|r| r.connections.total).sum();
    // Balance is judged among pods that take agents; a draining pod is meant to empty.
    let serving: Vec<u64> = available
        .iter()
        .filter_map(|p| p.report.as_ref())
        .filter(|r| r.draining.is_none())
        .map(|r| r.connections.total)
        .collect();
    let imbalance = imbalance(&serving);
    let tolerance = 1.0 + f64::from(prc.spec.rebalance.tolerance_percent) / 100.0;
    let available_reports: Vec<&Report> =
        available.iter().filter_map(|p| p.report.as_ref()).collect();
    let served = observed.certificate.as_ref().map(|c| {
        available_reports
            .iter()
            .filter(|r| r.certificate.sha256 == c.sha256)
            .count()
    });
    let updated = observed
        .pods
        .iter()
        .filter(|p| p.up_to_date && !p.terminating)
        .count() as i32;
    let generation = prc.metadata.generation;
    let previous_conditions = previous.map(|p| p.conditions.as_slice()).unwrap_or(&[]);
    let condition = |type_: &str, ok: Option<bool>, reason: &str, message: String| {
        let status = match ok {
            Some(true) => "True",
            Some(false) => "False",
            None => "Unknown",
        };
        let since = previous_conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.to_owned());
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time: since,
            observed_generation: generation,
        }
    };

    let ready_condition = match &observed.problem {
        Some(p) => condition("Ready", Some(false), p.reason, p.message.clone()),
        None if ready < desired => condition(
            "Ready",
            Some(false),
            "PodsNotReady",
            format!("{ready} of {desired} gateway pods ready"),
        ),
        None => condition(
            "Ready",
            Some(true),
            "AllPodsReady",
            format!("{ready} of {desired} gateway pods ready"),
        ),
    };
    let mut served_condition = match (&observed.certificate, served) {
        (None, _) | (_, None) => condition(
            "CertificateServed",
            None,
            "CertificateUnusable",
            "the Secret's certificate is not servable; see the Ready condition".into(),
        ),
        (Some(_), Some(_)) if ready == 0 => condition(
            "CertificateServed",
            None,
            "NoReadyPods",
            "no ready pod to serve it".into(),
        ),
        (Some(c), Some(n)) if n < available_reports.len() => condition(
            "CertificateServed",
            Some(false),
            "RotationInProgress",
            format!(
                "{n} of {ready} ready pods serve sha256 {} ({} reported)",
                short(&c.sha256),
                available_reports.len()
            ),
        ),
        (Some(c), Some(n)) if n < available.len() => condition(
            "CertificateServed",
            None,
            "NotAllPodsReport",
            format!(
                "{n} of {ready} ready pods serve sha256 {}; {} have not reported",
                short(&c.sha256),
                available.len() - available_reports.len()
            ),
        ),
        (Some(c), Some(n)) => condition(
            "CertificateServed",
            Some(true),
            "AllPodsServe",
            format!(
                "{n} of {ready} ready pods serve sha256 {}",
                short(&c.sha256)
            ),
        ),
    };
    // A sidecar that refused the Secret's certificate says so in its report: never call a
    // rotation "in progress" that the pods have refused.
    let refusals: Vec<String> = available
        .iter()
        .filter_map(|p| {
            let r = p.report.as_ref()?;
            let refused = r.certificate.refused.as_ref()?;
            let serves_the_secret = observed
                .certificate
                .as_ref()
                .is_some_and(|c| c.sha256 == r.certificate.sha256);
            (!serves_the_secret)
                .then(|| format!("{} ({}): {}", p.name, refused.reason, refused.message))
        })
        .collect();
    if let Some(first) = refusals.first() {
        served_condition = condition(
            "CertificateServed",
            Some(false),
            "RefusedByPods",
            format!(
                "{} of {ready} ready pods refused the Secret's certificate and keep serving the previous one; {first}",
                refusals.len()
            ),
        );
    }
    if !observed.renewals_aligned.is_empty() {
        served_condition.message = format!(
            "{}; {}",
            served_condition.message,
            crate::renewals::message(&observed.renewals_aligned)
        );
    }
    let balance_message =
        format!("busiest pod at {imbalance:.2}× the mean (tolerance {tolerance:.2}×)");
    let balanced_condition = if serving.is_empty() {
        condition(
            "Balanced",
            None,
            "NoReports",
            "no serving pod has reported".into(),
        )
    } else if serving.iter().sum::<u64>() == 0 {
        condition(
            "Balanced",
            Some(true),
            "NoConnections",
            "no agents connected".into(),
        )
    } else if imbalance <= tolerance {
        condition("Balanced", Some(true), "WithinTolerance", balance_message)
    } else {
        condition("Balanced", Some(false), "Imbalanced", balance_message)
    };
    let migrating_condition = match (&observed.migration, observed.migrating) {
        (Some(m), true) => condition(
            "Migrating",
            Some(true),
            "Draining",
            format!(
                "planned disconnects under way since {}: {} closed on purpose, {} back; hold offline alerts",
                m.started, m.planned_closes, m.connections_moved
            ),
        ),
        _ => condition("Migrating", Some(false), "Idle", "no migration in progress".into()),
    };
    let pods_total = observed.pods.iter().filter(|p| !p.terminating).count() as i32;
    let up_to_date_condition = if updated >= pods_total && pods_total >= desired {
        condition(
            "UpToDate",
            Some(true),
            "CurrentRevision",
            format!("{updated} of {pods_total} pods run the current spec"),
        )
    } else {
        condition(
            "UpToDate",
            Some(false),
            "RevisionPending",
            format!(
                "{updated} of {pods_total} pods run the current spec; the planner replaces the others one by one, drained first"
            ),
        )
    };
    let phase = if observed.problem.is_some() || served_condition.reason == "RefusedByPods" {
        Phase::Degraded
    } else if observed.migrating {
        Phase::Draining
    } else if ready < desired {
        if ready == 0 {
            Phase::Pending
        } else {
            Phase::Degraded
        }
    } else if served_condition.status != "True" {
        Phase::Rotating
    } else if up_to_date_condition.status != "True" {
        Phase::Updating
    } else {
        Phase::Stable
    };

    PresenceClusterStatus {
        observed_generation: generation,
        phase,
        conditions: vec![
            ready_condition,
            served_condition,
            balanced_condition,
            migrating_condition,
            up_to_date_condition,
        ],
        replicas: observed.pods.len() as i32,
        ready_replicas: ready,
        ready: format!("{ready}/{desired}"),
        selector: workload::selector_string(&name),
        connections: connections as i64,
        reporting_pods: reporting.len() as i32,
        updated_replicas: updated,
        pods: observed
            .pods
            .iter()
            .map(|p| {
                let window = p.planned_window(offline);
                PodStatus {
                    name: p.name.clone(),
                    draining_until: window.map(|(until, _)| clock::rfc3339(until)),
                    hold_offline_until: window.map(|(_, hold)| clock::rfc3339(hold)),
                    connections: p.report.as_ref().map(|r| r.connections.total as i64),
                    state: p.state().into(),
                    certificate: p
                        .report
                        .as_ref()
                        .map(|r| short(&r.certificate.sha256).to_owned())
                        .unwrap_or_default(),
                    up_to_date: p.up_to_date,
                }
            })
            .collect(),
        migration: observed.migration.clone(),
        reconnect_budget_per_second: observed.budget.map(|b| b.round() as i64),
        waiting: observed.waiting.clone(),
        observed_at: previous.and_then(|p| p.observed_at.clone()),
        planner: observed.planner.clone(),
        imbalance: (imbalance * 100.0).round() / 100.0,
        certificate: observed.certificate.as_ref().map(|c| CertificateStatus {
            sha256: c.sha256.clone(),
            not_after: ballast_contract::clock::rfc3339(c.not_after),
            served: format!("{}/{ready}", served.unwrap_or(0)),
        }),
    }
}

/// Busiest pod ÷ mean; 1.0 when there is nothing to compare.
fn imbalance(connections: &[u64]) -> f64 {
    let total: u64 = connections.iter().sum();
    if connections.is_empty() || total == 0 {
        return 1.0;
    }
    let mean = total as f64 / connections.len() as f64;
    let max = connections.iter().max().copied().unwrap_or(0) as f64;
    max / mean
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// How often the leader writes an unchanged status anyway, refreshing `observedAt`, so that a
/// reader can tell figures someone is still observing from figures left by an operator that
/// is gone.
pub const CONFIRM_EVERY_SECONDS: i64 = 30;

/// Whether `new`, this tick's status, must be written: when it differs from `previous`, when
/// this leader has not written it yet (`first`), or when `previous` was confirmed
/// [`CONFIRM_EVERY_SECONDS`] ago or more. Stamps `observedAt` with `now` when it must; an
/// unchanged status keeps the previous stamp and is not written (a write a second per
/// cluster would load the apiserver for nothing).
pub fn confirm(
    new: &mut PresenceClusterStatus,
    previous: Option<&PresenceClusterStatus>,
    first: bool,
    now: i64,
) -> bool {
    let confirmed_at = previous
        .and_then(|p| p.observed_at.as_deref())
        .and_then(clock::parse_rfc3339);
    let fresh = confirmed_at.is_some_and(|at| now - at < CONFIRM_EVERY_SECONDS);
    if !first && fresh && previous == Some(&*new) {
        return false;
    }
    new.observed_at = Some(clock::rfc3339(now));
    true
}

/// Events for conditions whose reason changed since the previous status.
pub fn notices(
    previous: Option<&PresenceClusterStatus>,
    new: &PresenceClusterStatus,
) -> Vec<Notice> {
    let before = previous.map(|p| p.conditions.as_slice()).unwrap_or(&[]);
    new.conditions
        .iter()
        // Migrations get their own Events, with figures (see the observer).
        .filter(|c| c.type_ != "Migrating")
        .filter(|c| {
            !before
                .iter()
                .any(|b| b.type_ == c.type_ && b.status == c.status && b.reason == c.reason)
        })
        // The first report of a healthy fleet is noise; problems and recoveries are not.
        .filter(|c| !(before.is_empty() && c.status != "False" && c.type_ != "Ready"))
        .map(|c| Notice {
            warning: c.status == "False"
                && matches!(c.type_.as_str(), "Ready" | "CertificateServed"),
            reason: c.reason.clone(),
            message: format!("{}: {}", c.type_, c.message),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::example;
    use ballast_contract::report::{ConnectionCounts, ServedCertificate};

    fn cert(sha: &str) -> CertificateFacts {
        CertificateFacts {
            sha256: sha.into(),
            not_before: 1_795_478_400,
            not_after: 1_803_254_400,
            dns_names: vec!["edge.example.com".into()],
            ip_addresses: vec![],
        }
    }

    fn pod(name: &str, connections: u64, sha: &str) -> PodView {
        PodView {
            been_ready: true,
            name: name.into(),
            ready: true,
            terminating: false,
            up_to_date: true,
            report: Some(Report {
                connections: ConnectionCounts {
                    total: connections,
                    on_current_certificate: connections,
                    on_older_certificate: 0,
                },
                accepting: true,
                upstream_reachable: true,
                certificate: ServedCertificate {
                    sha256: sha.into(),
                    ..ServedCertificate::default()
                },
                ..Report::default()
            }),
        }
    }

    fn observed(pods: Vec<PodView>, sha: &str) -> Observed {
        Observed {
            problem: None,
            certificate: Some(cert(sha)),
            pods,
            ..Observed::default()
        }
    }

    fn find<'a>(s: &'a PresenceClusterStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn a_pod_between_steering_and_its_next_probe_is_available_a_starting_one_is_not() {
        let mut p = pod("edge-0", 100, "aaa");
        p.ready = false;
        assert!(p.available(), "Ready before, its sidecar fine now");
        p.been_ready = false;
        assert!(!p.available(), "a successor starting: not until Ready");
        p.report.as_mut().unwrap().steered_away = true;
        assert!(p.available(), "steered away and otherwise fine");
        p.report.as_mut().unwrap().upstream_reachable = false;
        assert!(!p.available(), "its gateway is gone");
    }

    #[test]
    fn renewals_that_line_up_are_said_in_the_certificate_condition() {
        let mut o = observed(vec![pod("edge-0", 100, "aaa")], "aaa");
        o.renewals_aligned = vec!["iot/edge".into()];
        let s = compute(&example(), &o, None, "2026-11-24T10:00:00Z");
        let c = find(&s, "CertificateServed");
        assert_eq!(c.reason, "AllPodsServe", "a warning, not a failure");
        assert!(c.message.contains("iot/edge"), "{}", c.message);
    }

    #[test]
    fn a_healthy_fleet_is_stable_with_true_figures() {
        let o = observed(
            vec![
                pod("edge-0", 100, "aaa"),
                pod("edge-1", 100, "aaa"),
                pod("edge-2", 160, "aaa"),
            ],
            "aaa",
        );
        let s = compute(&example(), &o, None, "2026-11-24T10:00:00Z");
        assert_eq!(s.phase, Phase::Stable);
        assert_eq!(
            (s.ready.as_str(), s.connections, s.reporting_pods),
            ("3/3", 360, 3)
        );
        assert_eq!(s.imbalance, 1.33);
        assert_eq!(find(&s, "Ready").status, "True");
        assert_eq!(find(&s, "Balanced").reason, "Imbalanced");
        assert_eq!(s.certificate.as_ref().unwrap().served, "3/3");
        assert_eq!(s.pods[2].connections, Some(160));
        assert_eq!(s.observed_generation, Some(4));
    }

    #[test]
    fn an_unchanged_status_is_confirmed_every_30_s_and_by_a_new_leader_at_once() {
        let o = observed(vec![pod("edge-0", 100, "aaa")], "aaa");
        let t0 = 1_796_000_000;
        // The first tick of a leader writes, and stamps the time.
        let mut first = compute(&example(), &o, None, "2026-11-24T10:00:00Z");
        assert!(confirm(&mut first, None, true, t0));
        assert_eq!(first.observed_at, Some(clock::rfc3339(t0)));
        // Unchanged: not written for 29 s, the stamp kept; written at 30 s, stamped again.
        for later in [1, 29] {
            let mut same = compute(&example(), &o, Some(&first), "2026-11-24T10:00:00Z");
            assert!(!confirm(&mut same, Some(&first), false, t0 + later));
            assert_eq!(same, first);
        }
        let mut same = compute(&example(), &o, Some(&first), "2026-11-24T10:00:00Z");
        assert!(confirm(&mut same, Some(&first), false, t0 + 30));
        assert_eq!(same.observed_at, Some(clock::rfc3339(t0 + 30)));
        // A change is written at once; so is an unchanged status by a leader new to it.
        let moved = observed(vec![pod("edge-0", 101, "aaa")], "aaa");
        let mut changed = compute(&example(), &moved, Some(&first), "2026-11-24T10:00:00Z");
        assert!(confirm(&mut changed, Some(&first), false, t0 + 1));
        assert_eq!(changed.observed_at, Some(clock::rfc3339(t0 + 1)));
        let mut taken_over = compute(&example(), &o, Some(&first), "2026-11-24T10:00:00Z");
        assert!(confirm(&mut taken_over, Some(&first), true, t0 + 1));
        // A stamp that does not parse is no confirmation.
        let mut garbled = first.clone();
        garbled.observed_at = Some("yesterday".into());
        let mut again = compute(&example(), &o, Some(&garbled), "2026-11-24T10:00:00Z");
        assert!(confirm(&mut again, Some(&garbled), false, t0 + 1));
    }

    #[test]
    fn without_reports_nothing_is_claimed() {
        let mut silent = pod("edge-0", 0, "aaa");
        silent.report = None;
        let o = observed(vec![silent], "aaa");
        let s = compute(&example(), &o, None, "2026-11-24T10:00:00Z");
        assert_eq!(find(&s, "Balanced").status, "Unknown");
        assert_eq!(find(&s, "CertificateServed").status, "Unknown");
        assert_eq!(s.pods[0].connections, None);
        assert_eq!(s.pods[0].state, "Silent");
        let none = observed(vec![], "aaa");
        let s = compute(&example(), &none, None, "2026-11-24T10:00:00Z");
        assert_eq!(find(&s, "CertificateServed").reason, "NoReadyPods");
        assert_eq!(find(&s, "CertificateServed").status, "Unknown");
    }

    #[test]
    fn a_problem_degrades_with_its_reason_and_warns_once() {
        let o = Observed {
            problem: Some(Problem {
                reason: "SecretNotFound",
                message: "Secret \"agents-tls\" does not exist".into(),
            }),
            certificate: None,
            pods: vec![],
            ..Observed::default()
        };
        let first = compute(&example(), &o, None, "2026-11-24T10:00:00Z");
        assert_eq!(first.phase, Phase::Degraded);
        let ready = find(&first, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "SecretNotFound")
        );
        assert!(notices(None, &first)
            .iter()
            .any(|n| n.warning && n.reason == "SecretNotFound"));
        let again = compute(&example(), &o, Some(&first), "2026-11-24T10:05:00Z");
        assert_eq!(
            find(&again, "Ready").last_transition_time,
            "2026-11-24T10:00:00Z"
        );
        assert!(notices(Some(&first), &again).is_empty());
    }

    #[test]
    fn pods_that_refused_the_certificate_are_not_a_rotation_in_progress() {
        let mut refusing = pod("edge-1", 10, "old");
        refusing.report.as_mut().unwrap().certificate.refused =
            Some(ballast_contract::report::RefusedCertificate {
                reason: "untrusted_chain".into(),
                message: "the certificate does not chain to the CA bundle (ca.crt)".into(),
            });
        let o = observed(
            vec![pod("edge-0", 10, "new"), refusing, pod("edge-2", 10, "new")],
            "new",
        );
        let s = compute(&example(), &o, None, "2026-11-24T10:00:00Z");
        let c = find(&s, "CertificateServed");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "RefusedByPods")
        );
        assert!(
            c.message.contains("edge-1 (untrusted_chain)"),
            "{}",
            c.message
        );
        assert_eq!(s.phase, Phase::Degraded);
        // A refusal of an older Secret, by a pod that now serves the current one: not news.
        let mut over = pod("edge-1", 10, "new");
        over.report.as_mut().unwrap().certificate.refused =
            Some(ballast_contract::report::RefusedCertificate::default());
        let o = observed(vec![pod("edge-0", 10, "new"), over], "new");
        let s = compute(&example(), &o, None, "2026-11-24T10:00:00Z");
        assert_ne!(find(&s, "CertificateServed").reason, "RefusedByPods");
    }

    #[test]
    fn pods_on_the_old_certificate_mean_a_rotation_in_progress() {
        let o = observed(
            vec![
                pod("edge-0", 10, "new"),
                pod("edge-1", 10, "old"),
                pod("edge-2", 10, "new"),
            ],
            "new",
        );
        let s = compute(&example(), &o, None, "2026-11-24T10:00:00Z");
        assert_eq!(s.phase, Phase::Rotating);
        assert_eq!(find(&s, "CertificateServed").reason, "RotationInProgress");
        assert_eq!(s.certificate.unwrap().served, "2/3");
    }

    #[test]
    fn a_spec_change_not_yet_on_the_pods_is_not_stable() {
        let mut old = pod("edge-1", 10, "a");
        old.up_to_date = false;
        let o = observed(
            vec![pod("edge-0", 10, "a"), old, pod("edge-2", 10, "a")],
            "a",
        );
        let s = compute(&example(), &o, None, "2026-11-24T10:00:00Z");
        assert_eq!((s.phase, s.updated_replicas), (Phase::Updating, 2));
        assert_eq!(find(&s, "UpToDate").reason, "RevisionPending");
    }

    #[test]
    fn draining_and_steered_pods_are_still_seen() {
        let mut terminating = pod("edge-0", 10, "a");
        terminating.terminating = true;
        terminating.ready = false;
        terminating.report.as_mut().unwrap().terminating = true;
        terminating.report.as_mut().unwrap().draining = Some(ballast_contract::DrainProgress {
            target: 10,
            asked: 4,
            closed: 3,
            over_seconds: 29.5,
            started_at: "2026-11-24T10:00:00Z".into(),
            finished: false,
        });
        let mut steered = pod("edge-1", 10, "a");
        steered.ready = false;
        steered.report.as_mut().unwrap().steered_away = true;
        let mut o = observed(vec![terminating, steered, pod("edge-2", 10, "a")], "a");
        o.migrating = true;
        o.migration = Some(MigrationStatus {
            started: "2026-11-24T10:00:00Z".into(),
            planned_closes: 5,
            ..MigrationStatus::default()
        });
        let s = compute(&example(), &o, None, "2026-11-24T10:00:00Z");
        assert_eq!(s.phase, Phase::Draining);
        assert_eq!(
            s.connections, 30,
            "the terminating pod's agents are still counted"
        );
        assert_eq!(s.ready, "2/3", "steered is available, terminating is not");
        assert_eq!(find(&s, "Migrating").status, "True");
        let states: Vec<&str> = s.pods.iter().map(|p| p.state.as_str()).collect();
        assert_eq!(states, ["Terminating", "Steered", "Serving"]);
        // The planned window: the drain's end, and that plus the offline threshold (60s).
        assert_eq!(
            s.pods[0].draining_until.as_deref(),
            Some("2026-11-24T10:00:30Z")
        );
        assert_eq!(
            s.pods[0].hold_offline_until.as_deref(),
            Some("2026-11-24T10:01:30Z")
        );
        assert_eq!(s.pods[1].draining_until, None, "steered is not draining");
    }
}
