//! The fast loop: every second, for every PresenceCluster, what its pods report, what its
//! Secret holds, what a person asked of its pods — turned into a plan (the planner's drains,
//! steering and restarts), the status, the Events, the metrics, and the directives the
//! report server hands out.
//!
//! The planner's memory is kept in `status.planner`, so a new leader resumes a rollout where
//! the previous one left it: no pod drained or restarted twice, none forgotten. Restarts go
//! through the Eviction API, so PodDisruptionBudgets hold.
//!
//! The reconcile (slow, on spec changes) builds and applies objects; this loop only observes,
//! plans and writes `status`, at most once a second per cluster and only when it changed, so fast
//! figures never retrigger a reconcile (the controller ignores status-only changes). A Secret
//! whose resourceVersion changed triggers a reconcile at once, so a renewal is validated
//! within a second or two with nothing more than `get` on that one Secret.
//!
//! People steer through pod annotations, which the operator turns into directives:
//! `ballast.dev/accepting: "false"` keeps new connections away from a pod (its readiness
//! fails while the directive is in force) and `ballast.dev/drain-per-second: "N"` closes N of
//! its connections per second, paced. The fleet is never left with no pod taking new agents:
//! steering that would leave none is refused with a Warning Event. Runs on the leader only.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::channel::mpsc::UnboundedSender;
use futures::FutureExt as _;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Secret};
use kube::api::{EvictParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};

use crate::crd::PresenceCluster;
use crate::hub::{Hub, PodKey, Wanted};
use crate::metrics::Metrics;
use crate::migration::{Change, Tick, Tracker};
use crate::planning::{self, PodInput};
use crate::reconcile::MANAGER;
use crate::renewals::{self, Expiry};
use crate::report_server::gateway_of;
use crate::status::{self, Observed, PodView};
use crate::validate;

/// Annotation: `"false"` steers new connections away from the pod.
pub const ACCEPTING_ANNOTATION: &str = "ballast.dev/accepting";
/// Annotation: close this many of the pod's connections per second.
pub const DRAIN_ANNOTATION: &str = "ballast.dev/drain-per-second";
/// PresenceCluster annotation: `"true"` pauses the planner (no drains, steering or
/// restarts; a rotation under way resumes where it was when the annotation goes).
pub const PAUSED_ANNOTATION: &str = "ballast.dev/paused";
/// A report older than this is not believed.
pub const FRESH: Duration = Duration::from_secs(3);

/// What the loop needs.
pub struct Observer {
    pub client: Client,
    pub hub: Arc<Hub>,
    pub pods: Store<Pod>,
    pub statefulsets: Store<StatefulSet>,
    pub clusters: Store<PresenceCluster>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// Asks the controller to reconcile a cluster now.
    pub reconcile: UnboundedSender<ObjectRef<PresenceCluster>>,
    pub interval: Duration,
}

#[derive(Default)]
struct ClusterMemory {
    /// The planner's memory; `None` until read back from the status (a new leader resumes
    /// where the previous one was).
    planner: Option<ballast_planner::State>,
    /// Plans made, numbering each plan's drains.
    plans: u64,
    /// What the planner waits for now, in words, and the kind of the wait last announced.
    waiting: Option<String>,
    wait_kind: Option<std::mem::Discriminant<ballast_planner::Why>>,
    secret_version: Option<String>,
    /// The migration signal; `None` until read back from the status (a new leader goes on
    /// with a migration under way).
    tracker: Option<Tracker>,
    /// The hub's close sums at the previous tick.
    counted: crate::hub::Closes,
    steering_refused: bool,
    /// Pods (uids) seen Ready: see [`PodView::available`].
    been_ready: BTreeSet<String>,
    /// The certificate's expiry, and the clusters whose renewals line up with it (announced).
    not_after: Option<i64>,
    renewals_aligned: Vec<String>,
    /// The planned-window document last written to the ConfigMap.
    planned_written: Option<String>,
    /// This leader has written the status at least once (stamping `observedAt`).
    confirmed: bool,
}

impl Observer {
    pub async fn run(self) {
        let mut memory: HashMap<(String, String), ClusterMemory> = HashMap::new();
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mut wanted: HashMap<PodKey, Wanted> = HashMap::new();
            let clusters = self.clusters.state();
            // Every cluster's certificate expiry as last seen: whose renewals line up.
            let expiries: Vec<Expiry> = memory
                .iter()
                .filter_map(|((namespace, name), m)| {
                    Some(Expiry {
                        namespace: namespace.clone(),
                        name: name.clone(),
                        not_after: m.not_after?,
                    })
                })
                .collect();
            for prc in &clusters {
                let (Some(ns), name) = (prc.namespace(), prc.name_any()) else {
                    continue;
                };
                let mem = memory.entry((ns.clone(), name.clone())).or_default();
                // A bug met by one cluster's observation must not freeze every cluster's
                // status: it is logged, that cluster gets no directives this tick (so they
                // lapse), and the loop goes on.
                let observed = std::panic::AssertUnwindSafe(self.observe(
                    prc,
                    &ns,
                    &name,
                    mem,
                    &mut wanted,
                    &expiries,
                ))
                .catch_unwind()
                .await;
                let Ok(observed) = observed else {
                    tracing::error!(namespace = %ns, %name, "observation panicked; no directives for this cluster this tick");
                    wanted.retain(|(pod_ns, _), _| pod_ns != &ns);
                    continue;
                };
                if let Err(err) = observed {
                    tracing::warn!(namespace = %ns, %name, error = %err, "observation incomplete: status not written this tick");
                }
            }
            memory.retain(|(ns, name), _| {
                clusters
                    .iter()
                    .any(|p| p.namespace().as_deref() == Some(ns) && &p.name_any() == name)
            });
            self.hub.set_wanted(wanted);
            let pods = self.pods.clone();
            self.hub
                .forget(|(ns, pod)| pods.get(&ObjectRef::new(pod).within(ns)).is_some());
        }
    }

    async fn observe(
        &self,
        prc: &PresenceCluster,
        ns: &str,
        name: &str,
        mem: &mut ClusterMemory,
        wanted: &mut HashMap<PodKey, Wanted>,
        expiries: &[Expiry],
    ) -> Result<(), kube::Error> {
        let secret_name = &prc.spec.tls.secret_name;
        let secret = Api::<Secret>::namespaced(self.client.clone(), ns)
            .get_opt(secret_name)
            .await?;
        let version = secret.as_ref().and_then(|s| s.resource_version());
        if mem.secret_version.is_some() && version != mem.secret_version {
            tracing::info!(namespace = %ns, %name, secret = %secret_name, "Secret changed: reconciling now");
            let _ = self.reconcile.unbounded_send(ObjectRef::from_obj(prc));
        }
        mem.secret_version = version.or(Some(String::new()));
        let now = Instant::now();
        let reports = self
            .hub
            .reports_of(ns, name, now.checked_sub(FRESH).unwrap_or(now));
        let certificate = validate::renewal(
            secret.as_ref(),
            secret_name,
            SystemTime::now(),
            reports.values().map(|r| &r.report),
        );
        mem.not_after = certificate.as_ref().ok().map(|c| c.not_after);
        let aligned = mem.not_after.map_or_else(Vec::new, |not_after| {
            renewals::aligned_with(
                &Expiry {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                    not_after,
                },
                expiries,
            )
        });
        if aligned != mem.renewals_aligned {
            if !aligned.is_empty() {
                self.event(prc, true, "RenewalsAligned", renewals::message(&aligned))
                    .await;
            }
            mem.renewals_aligned = aligned;
        }
        let problem = validate::template(prc)
            .err()
            .or_else(|| certificate.as_ref().err().cloned());

        let revision = self
            .statefulsets
            .get(&ObjectRef::new(name).within(ns))
            .and_then(|s| s.status.as_ref()?.update_revision.clone());
        let mut pods: Vec<Arc<Pod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| {
                p.namespace().as_deref() == Some(ns) && gateway_of(p).as_deref() == Some(name)
            })
            .collect();
        pods.sort_by_key(|p| p.name_any());
        let uid_of = |p: &Pod| p.metadata.uid.clone().unwrap_or_default();
        mem.been_ready
            .retain(|uid| pods.iter().any(|p| uid_of(p) == *uid));
        mem.been_ready
            .extend(pods.iter().filter(|p| is_ready(p)).map(|p| uid_of(p)));
        let views: Vec<PodView> = pods
            .iter()
            .map(|p| PodView {
                name: p.name_any(),
                ready: is_ready(p),
                been_ready: mem.been_ready.contains(&uid_of(p)),
                terminating: p.metadata.deletion_timestamp.is_some(),
                up_to_date: revision.is_some()
                    && p.labels().get("controller-revision-hash") == revision.as_ref(),
                report: reports
                    .get(&p.name_any())
                    .filter(|r| Some(r.uid.as_str()) == p.metadata.uid.as_deref())
                    .map(|r| r.report.clone()),
            })
            .collect();

        // What people asked of the pods, kept safe.
        let mut asked: HashMap<String, Wanted> = pods
            .iter()
            .map(|p| (p.name_any(), wanted_of(p)))
            .filter(|(_, w)| *w != Wanted::default())
            .collect();
        let takers = views.iter().filter(|v| v.available()).count();
        let steered = views
            .iter()
            .filter(|v| {
                v.available()
                    && asked
                        .get(&v.name)
                        .is_some_and(|w| w.accepting == Some(false))
            })
            .count();
        let refuse = takers > 0 && steered >= takers;
        if refuse {
            for w in asked.values_mut() {
                w.accepting = None;
            }
        }
        if refuse != mem.steering_refused {
            mem.steering_refused = refuse;
            if refuse {
                self.event(prc, true, "SteeringRefused", format!(
                    "every available pod is annotated {ACCEPTING_ANNOTATION}=false; steering none of them, so new agents still have somewhere to go"
                )).await;
            }
        }
        // The plan: drains, steering and restarts for this tick; a person's annotations come
        // first for their pod.
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        // A pod a person steered away is theirs: the planner sees it as a pod whose figures it
        // does not know, so it neither fills, drains nor restarts it (a rollout waits for it).
        let person_steered = |pod: &str| asked.get(pod).is_some_and(|w| w.accepting == Some(false));
        let inputs: Vec<PodInput<'_>> = pods
            .iter()
            .zip(&views)
            .map(|(p, v)| PodInput {
                name: &v.name,
                uid: p.metadata.uid.as_deref().unwrap_or(""),
                // Steering fails a pod's readiness on purpose: to the plan, a pod that is
                // not Ready only because it is steered is as ready as it was (else every
                // rebalance would end the moment its donors are steered, and start again).
                ready: v.ready || v.available(),
                up_to_date: v.up_to_date,
                terminating: v.terminating,
                routed: v.ready && !v.terminating,
                report: reports
                    .get(&v.name)
                    .filter(|r| Some(r.uid.as_str()) == p.metadata.uid.as_deref())
                    .filter(|_| !person_steered(&v.name))
                    .map(|r| (&r.report, now.saturating_duration_since(r.at).as_secs_f64())),
            })
            .collect();
        let state = mem.planner.take().unwrap_or_else(|| {
            prc.status
                .as_ref()
                .and_then(|s| s.planner.as_deref())
                .and_then(|text| serde_json::from_str(text).ok())
                .unwrap_or_default()
        });
        mem.plans += 1;
        let spec = planning::spec_of(prc, self.interval.as_secs_f64());
        let observation = planning::observation_of(wall, &inputs);
        let (mut plan, mut carried) = planning::step(&spec, &observation, &state, mem.plans);
        tracing::debug!(
            target: "ballast_operator::plan",
            namespace = ns,
            name,
            "{}",
            plan.trace(&observation)
        );
        let paused = prc
            .annotations()
            .get(PAUSED_ANNOTATION)
            .is_some_and(|v| v == "true");
        if paused {
            // Nothing is drained, steered or restarted, and the planner's memory stands still,
            // so resuming picks up exactly where the rotation was.
            plan.state = state;
            carried = planning::Carried {
                waits: vec![ballast_planner::Why::Paused],
                ..planning::Carried::default()
            };
        }
        let mut reasons: Vec<&'static str> = if paused {
            vec![ballast_planner::Why::Paused.kind()]
        } else {
            plan.waits().map(ballast_planner::Why::kind).collect()
        };
        reasons.sort_unstable();
        reasons.dedup();
        self.metrics.plan_waited(ns, name, &reasons);
        let mut planned = carried.wanted;
        planning::merge(&mut planned, asked);
        let uids: HashMap<String, Option<String>> = pods
            .iter()
            .map(|p| (p.name_any(), p.metadata.uid.clone()))
            .collect();
        for (pod, mut w) in planned {
            w.pod_uid = uids.get(&pod).cloned().flatten();
            wanted.insert((ns.to_owned(), pod), w);
        }
        for (pod, why) in &carried.restarts {
            if let Err(err) = self.restart(prc, ns, pod, why).await {
                // Not restarted: forget the order so that the next plan tries again.
                if let Some(rollout) = plan.state.rollout.as_mut() {
                    rollout.restarting.remove(pod);
                    rollout.restarted.remove(pod);
                }
                self.pod_event(
                    prc,
                    pod,
                    true,
                    "RestartRefused",
                    format!("could not evict {pod} ({err}); the planner will try again"),
                )
                .await;
            }
        }
        // One Event when the kind of wait changes (its figures change every tick).
        let wait = carried.waits.first();
        let kind = wait.map(std::mem::discriminant);
        if kind != mem.wait_kind {
            if let Some(why) = wait {
                let warning = planning::needs_a_person(why);
                let reason = if warning { "CannotProceed" } else { "Waiting" };
                self.event(prc, warning, reason, why.to_string()).await;
            }
            mem.wait_kind = kind;
        }
        mem.waiting = wait.map(ToString::to_string);
        let planner_text = serde_json::to_string(&plan.state).ok();
        let budget = plan.budget;
        mem.planner = Some(plan.state);

        // Closes since the last tick, from the hub's running sums.
        let sums = self.hub.closes_of(ns, name);
        let closes = sums.since(&mem.counted);
        mem.counted = sums;
        self.metrics.closes(
            ns,
            name,
            closes.planned + closes.earlier_planned,
            closes.unplanned + closes.earlier_unplanned,
        );
        let draining: BTreeSet<String> = reports
            .iter()
            .filter(|(_, r)| r.report.draining.is_some())
            .map(|(p, _)| p.clone())
            .collect();
        let connections: u64 = views
            .iter()
            .filter_map(|v| v.report.as_ref())
            .map(|r| r.connections.total)
            .sum();
        let offline =
            ballast_contract::duration::parse_duration(&prc.spec.presence.offline_threshold)
                .unwrap_or(Duration::from_secs(60));
        tracing::debug!(
            target: "ballast_operator::migration",
            namespace = ns,
            name,
            connections,
            planned = closes.planned,
            unplanned = closes.unplanned,
            earlier_planned = closes.earlier_planned,
            pods = ?views
                .iter()
                .map(|v| (v.name.as_str(), v.report.as_ref().map(|r| r.connections.total)))
                .collect::<Vec<_>>(),
            ?draining,
            "tick"
        );
        let now_unix = ballast_contract::clock::unix_now();
        let tracker = mem.tracker.get_or_insert_with(|| {
            Tracker::resume(
                prc.status.as_ref().and_then(|s| s.migration.as_ref()),
                now_unix,
            )
        });
        let change = tracker.update(
            &Tick {
                now: now_unix,
                connections: connections as i64,
                // A pod never Ready holds no agents, so a successor still starting does not
                // make the total short; one that was Ready and has no fresh report does.
                complete: views.iter().any(|v| v.report.is_some())
                    && views.iter().all(|v| v.report.is_some() || !v.been_ready),
                draining,
                planned: closes.planned,
                unplanned: closes.unplanned,
                earlier_planned: closes.earlier_planned,
                earlier_unplanned: closes.earlier_unplanned,
                budget_per_second: budget.round() as i64,
            },
            offline,
        );

        let observed = Observed {
            problem,
            certificate: certificate.ok(),
            pods: views,
            migration: tracker.status().cloned(),
            migrating: tracker.active(),
            budget: Some(budget),
            waiting: mem.waiting.clone(),
            planner: planner_text,
            renewals_aligned: mem.renewals_aligned.clone(),
        };
        let now_text = ballast_contract::clock::rfc3339(now_unix);
        let mut new = status::compute(prc, &observed, prc.status.as_ref(), &now_text);
        if status::confirm(&mut new, prc.status.as_ref(), !mem.confirmed, now_unix) {
            let patch = serde_json::json!({
                "apiVersion": "ballast.dev/v1alpha1",
                "kind": "PresenceCluster",
                "status": new,
            });
            Api::<PresenceCluster>::namespaced(self.client.clone(), ns)
                .patch_status(
                    name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await?;
            mem.confirmed = true;
        }
        let planned = crate::planned::document(prc, &new);
        if mem.planned_written.as_ref() != Some(&planned) {
            let map = crate::planned::configmap(prc, ns, planned.clone());
            crate::reconcile::apply(&self.client, ns, &map).await?;
            mem.planned_written = Some(planned);
        }
        for notice in status::notices(prc.status.as_ref(), &new) {
            self.event(prc, notice.warning, &notice.reason, notice.message)
                .await;
        }
        match change {
            Some(Change::Started(m)) => {
                self.event(prc, false, "MigrationStarted", format!(
                    "planned disconnects started with {} agents connected; budget {}/s; offline alerts should hold (Migrating=True)",
                    m.connections_before, m.budget_per_second
                )).await;
            }
            Some(Change::Finished(m)) => {
                self.event(prc, false, "MigrationFinished", format!(
                    "{} planned closes, {} agents back, {} unplanned closes, {} of {} pods drained",
                    m.planned_closes, m.connections_moved, m.unplanned_closes, m.pods_done, m.pods_total
                )).await;
            }
            None => {}
        }
        self.metrics.observe(ns, name, &new);
        Ok(())
    }

    /// Restarts a pod the planner drained, through the Eviction API, so that
    /// PodDisruptionBudgets hold; the StatefulSet brings its successor up.
    async fn restart(
        &self,
        prc: &PresenceCluster,
        ns: &str,
        pod: &str,
        why: &str,
    ) -> Result<(), kube::Error> {
        Api::<Pod>::namespaced(self.client.clone(), ns)
            .evict(pod, &EvictParams::default())
            .await?;
        tracing::info!(namespace = %ns, %pod, %why, "pod evicted for its restart");
        self.pod_event(prc, pod, false, "PodRestarted", format!("{pod}: {why}"))
            .await;
        Ok(())
    }

    async fn event(&self, prc: &PresenceCluster, warning: bool, reason: &str, note: String) {
        self.publish(prc, warning, reason, note, None).await;
    }

    /// An Event about one of the cluster's pods: `related` names the pod, which also keeps
    /// the recorder from folding two pods' Events into one series with the first one's note.
    async fn pod_event(
        &self,
        prc: &PresenceCluster,
        pod: &str,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let related = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: prc.namespace(),
            name: Some(pod.into()),
            ..ObjectReference::default()
        };
        self.publish(prc, warning, reason, note, Some(related))
            .await;
    }

    async fn publish(
        &self,
        prc: &PresenceCluster,
        warning: bool,
        reason: &str,
        note: String,
        related: Option<ObjectReference>,
    ) {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: "Observe".into(),
            secondary: related,
        };
        if let Err(err) = self.recorder.publish(&event, &prc.object_ref(&())).await {
            tracing::warn!(error = %err, "could not publish an Event");
        }
    }
}

/// What a pod's annotations ask.
fn wanted_of(pod: &Pod) -> Wanted {
    let a = pod.annotations();
    let accepting = match a.get(ACCEPTING_ANNOTATION).map(String::as_str) {
        Some("false") => Some(false),
        _ => None,
    };
    let drain_per_second = a
        .get(DRAIN_ANNOTATION)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|n| *n > 0);
    let why = match (accepting, drain_per_second) {
        (Some(false), Some(n)) => format!("annotated: steered away, draining {n}/s"),
        (Some(false), None) => "annotated: steered away".into(),
        (_, Some(n)) => format!("annotated: draining {n}/s"),
        _ => String::new(),
    };
    Wanted {
        accepting,
        drain_per_second,
        why,
        drain: None,
        pod_uid: None,
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn annotated(pairs: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                annotations: Some(
                    pairs
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    #[test]
    fn annotations_become_wishes_and_nonsense_is_ignored() {
        assert_eq!(wanted_of(&annotated(&[])), Wanted::default());
        let w = wanted_of(&annotated(&[
            (ACCEPTING_ANNOTATION, "false"),
            (DRAIN_ANNOTATION, "20"),
        ]));
        assert_eq!((w.accepting, w.drain_per_second), (Some(false), Some(20)));
        let w = wanted_of(&annotated(&[
            (ACCEPTING_ANNOTATION, "maybe"),
            (DRAIN_ANNOTATION, "-3"),
        ]));
        assert_eq!(w, Wanted::default());
    }
}
