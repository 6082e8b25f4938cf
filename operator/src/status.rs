//! Status: what the fleet looks like, computed from what was observed, and which changes a
//! person should hear about as Events.
//!
//! Pure functions of (spec, observations, previous status, now): the reconcile gathers the
//! observations, this module decides what they mean.

use ballast_certs::CertificateFacts;

use crate::crd::{CertificateStatus, Condition, Phase, PresenceCluster, PresenceClusterStatus};
use crate::validate::Problem;
use crate::workload;

/// What one sidecar says about itself (`GET /status`), reduced to what the operator uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarReport {
    pub connections: u64,
    pub sha256: String,
    pub draining: bool,
}

/// One gateway pod as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    pub ready: bool,
    /// None when the sidecar could not be reached.
    pub report: Option<SidecarReport>,
}

/// Everything a reconcile observed.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The first problem found by validation, if any.
    pub problem: Option<Problem>,
    /// The Secret's certificate when it is servable (its facts: the operator holds no key).
    pub certificate: Option<CertificateFacts>,
    pub pods: Vec<PodView>,
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
    let ready_pods: Vec<&PodView> = observed.pods.iter().filter(|p| p.ready).collect();
    let ready = ready_pods.len() as i32;
    let reports: Vec<&SidecarReport> = ready_pods
        .iter()
        .filter_map(|p| p.report.as_ref())
        .collect();
    let connections: u64 = reports.iter().map(|r| r.connections).sum();
    let imbalance = imbalance(&reports);
    let tolerance = 1.0 + f64::from(prc.spec.rebalance.tolerance_percent) / 100.0;
    let served = observed
        .certificate
        .as_ref()
        .map(|c| reports.iter().filter(|r| r.sha256 == c.sha256).count());
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
    let served_condition = match (&observed.certificate, served) {
        (Some(c), Some(n)) if n == ready_pods.len() && n == reports.len() => condition(
            "CertificateServed",
            Some(true),
            "AllPodsServe",
            format!(
                "{n} of {ready} ready pods serve sha256 {}",
                short(&c.sha256)
            ),
        ),
        (Some(c), Some(n)) => condition(
            "CertificateServed",
            Some(false),
            "RotationInProgress",
            format!(
                "{n} of {ready} ready pods serve sha256 {} ({} reported)",
                short(&c.sha256),
                reports.len()
            ),
        ),
        _ => condition(
            "CertificateServed",
            None,
            "CertificateUnusable",
            "the Secret's certificate is not servable; see the Ready condition".into(),
        ),
    };
    let balanced_condition = if connections == 0 {
        condition(
            "Balanced",
            Some(true),
            "NoConnections",
            "no agents connected".into(),
        )
    } else if imbalance <= tolerance {
        condition(
            "Balanced",
            Some(true),
            "WithinTolerance",
            format!("busiest pod at {imbalance:.2}× the mean (tolerance {tolerance:.2}×)"),
        )
    } else {
        condition(
            "Balanced",
            Some(false),
            "Imbalanced",
            format!("busiest pod at {imbalance:.2}× the mean (tolerance {tolerance:.2}×)"),
        )
    };
    let draining = reports.iter().filter(|r| r.draining).count();
    let migrating_condition = if draining > 0 {
        condition(
            "Migrating",
            Some(true),
            "Draining",
            format!("{draining} pod(s) draining: disconnects are planned, hold offline alerts"),
        )
    } else {
        condition(
            "Migrating",
            Some(false),
            "Idle",
            "no migration in progress".into(),
        )
    };

    let phase = if observed.problem.is_some() {
        Phase::Degraded
    } else if draining > 0 {
        Phase::Draining
    } else if ready < desired {
        if ready == 0 {
            Phase::Pending
        } else {
            Phase::Degraded
        }
    } else if served_condition.status != "True" {
        Phase::Rotating
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
        ],
        replicas: observed.pods.len() as i32,
        ready_replicas: ready,
        ready: format!("{ready}/{desired}"),
        selector: workload::selector_string(&name),
        connections: connections as i64,
        imbalance: (imbalance * 100.0).round() / 100.0,
        certificate: observed.certificate.as_ref().map(|c| CertificateStatus {
            sha256: c.sha256.clone(),
            not_after: ballast_contract::clock::rfc3339(c.not_after),
            served: format!("{}/{ready}", served.unwrap_or(0)),
        }),
    }
}

/// Busiest pod ÷ mean; 1.0 when there is nothing to compare.
fn imbalance(reports: &[&SidecarReport]) -> f64 {
    let total: u64 = reports.iter().map(|r| r.connections).sum();
    if reports.is_empty() || total == 0 {
        return 1.0;
    }
    let mean = total as f64 / reports.len() as f64;
    let max = reports.iter().map(|r| r.connections).max().unwrap_or(0) as f64;
    max / mean
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// Events for conditions whose reason changed since the previous status.
pub fn notices(
    previous: Option<&PresenceClusterStatus>,
    new: &PresenceClusterStatus,
) -> Vec<Notice> {
    let before = previous.map(|p| p.conditions.as_slice()).unwrap_or(&[]);
    new.conditions
        .iter()
        .filter(|c| {
            !before
                .iter()
                .any(|b| b.type_ == c.type_ && b.status == c.status && b.reason == c.reason)
        })
        // The first report of a healthy fleet is noise; problems and recoveries are not.
        .filter(|c| !(before.is_empty() && c.status == "True" && c.type_ != "Ready"))
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
            name: name.into(),
            ready: true,
            report: Some(SidecarReport {
                connections,
                sha256: sha.into(),
                draining: false,
            }),
        }
    }

    fn find<'a>(s: &'a PresenceClusterStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn a_healthy_fleet_is_stable_with_true_figures() {
        let observed = Observed {
            problem: None,
            certificate: Some(cert("aaa")),
            pods: vec![
                pod("edge-0", 100, "aaa"),
                pod("edge-1", 100, "aaa"),
                pod("edge-2", 160, "aaa"),
            ],
        };
        let s = compute(&example(), &observed, None, "2026-11-24T10:00:00Z");
        assert_eq!(s.phase, Phase::Stable);
        assert_eq!((s.ready.as_str(), s.connections), ("3/3", 360));
        assert_eq!(s.imbalance, 1.33);
        assert_eq!(find(&s, "Ready").status, "True");
        assert_eq!(find(&s, "Balanced").reason, "Imbalanced");
        assert_eq!(s.certificate.as_ref().unwrap().served, "3/3");
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!(s.selector, "ballast.dev/presencecluster=edge");
    }

    #[test]
    fn a_problem_degrades_with_its_reason_and_warns_once() {
        let observed = Observed {
            problem: Some(Problem {
                reason: "SecretNotFound",
                message: "Secret \"agents-tls\" does not exist".into(),
            }),
            certificate: None,
            pods: vec![],
        };
        let first = compute(&example(), &observed, None, "2026-11-24T10:00:00Z");
        assert_eq!(first.phase, Phase::Degraded);
        let ready = find(&first, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "SecretNotFound")
        );
        let notices = notices(None, &first);
        assert!(notices
            .iter()
            .any(|n| n.warning && n.reason == "SecretNotFound"));
        // Same state later: same transition time, no new Event.
        let again = compute(&example(), &observed, Some(&first), "2026-11-24T10:05:00Z");
        assert_eq!(
            find(&again, "Ready").last_transition_time,
            "2026-11-24T10:00:00Z"
        );
        assert!(super::notices(Some(&first), &again).is_empty());
    }

    #[test]
    fn pods_on_the_old_certificate_mean_a_rotation_in_progress() {
        let observed = Observed {
            problem: None,
            certificate: Some(cert("new")),
            pods: vec![
                pod("edge-0", 10, "new"),
                pod("edge-1", 10, "old"),
                pod("edge-2", 10, "new"),
            ],
        };
        let s = compute(&example(), &observed, None, "2026-11-24T10:00:00Z");
        assert_eq!(s.phase, Phase::Rotating);
        assert_eq!(find(&s, "CertificateServed").reason, "RotationInProgress");
        assert_eq!(s.certificate.unwrap().served, "2/3");
    }

    #[test]
    fn missing_pods_are_not_ready_and_draining_is_announced() {
        let mut draining = pod("edge-0", 10, "a");
        draining.report.as_mut().unwrap().draining = true;
        let observed = Observed {
            problem: None,
            certificate: Some(cert("a")),
            pods: vec![draining, pod("edge-1", 10, "a")],
        };
        let s = compute(&example(), &observed, None, "2026-11-24T10:00:00Z");
        assert_eq!(s.phase, Phase::Draining);
        assert_eq!(find(&s, "Ready").reason, "PodsNotReady");
        assert_eq!(find(&s, "Migrating").status, "True");
    }
}
