//! One reconcile of one PresenceCluster: validate → build → apply → status.
//!
//! Wrong input never deletes anything: when validation finds a problem, nothing is applied,
//! the status says why (Ready=False, reason, message), an Event is emitted once, and the
//! reconcile retries on the resync period — fixing the Secret or the spec recovers without
//! restarting anything. Owned objects carry owner references, so deleting the PresenceCluster
//! lets Kubernetes' garbage collector remove them; the operator needs no finalizer.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::crd::PresenceCluster;
use crate::metrics::Metrics;
use crate::status::{self, Observed, PodView};
use crate::workload::{self, Environment};
use crate::{reports, validate};

/// Field manager name for server-side apply.
pub const MANAGER: &str = "ballast-operator";

/// Why a reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API call failed: {0}")]
    Kube(#[source] kube::Error),
    #[error("PresenceCluster {0} has no namespace")]
    NoNamespace(String),
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Self::Kube(e)
    }
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(kube::Error::Api(s)) if s.code == 403 => "forbidden",
            Self::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Self::Kube(kube::Error::Api(_)) => "api",
            Self::Kube(_) => "transport",
            Self::NoNamespace(_) => "no_namespace",
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub env: Environment,
    pub metrics: Arc<Metrics>,
    /// How often a healthy cluster is looked at again (connection counts, certificate).
    pub resync: Duration,
}

pub async fn reconcile(prc: Arc<PresenceCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let name = prc.name_any();
    let namespace = prc
        .namespace()
        .ok_or_else(|| Error::NoNamespace(name.clone()))?;
    // The controller's cache can lag a deletion by a moment, and a reconcile triggered by an
    // owned object's removal would then re-create what the garbage collector just deleted.
    // One GET settles it: only a live PresenceCluster with the same uid is reconciled.
    let live = Api::<PresenceCluster>::namespaced(ctx.client.clone(), &namespace)
        .get_opt(&name)
        .await?;
    let gone = match &live {
        None => true,
        Some(p) => p.metadata.uid != prc.metadata.uid || p.metadata.deletion_timestamp.is_some(),
    };
    if gone {
        ctx.metrics.forget(&namespace, &name);
        return Ok(Action::await_change());
    }

    // 1. Validate.
    let secret_name = &prc.spec.tls.secret_name;
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), &namespace)
        .get_opt(secret_name)
        .await?;
    let certificate = validate::secret(secret.as_ref(), secret_name, SystemTime::now());
    let problem = validate::template(&prc)
        .err()
        .or_else(|| certificate.as_ref().err().cloned());

    // 2 + 3. Build and apply, only with nothing wrong.
    if problem.is_none() {
        let built = workload::build(&prc, &ctx.env);
        apply(&ctx.client, &namespace, &built.statefulset).await?;
        apply(&ctx.client, &namespace, &built.service).await?;
        apply(&ctx.client, &namespace, &built.headless).await?;
        apply(&ctx.client, &namespace, &built.pdb).await?;
    }

    // 4. Status.
    let pods = observe_pods(&ctx.client, &namespace, &name, prc.spec.sidecar.admin_port).await?;
    let observed = Observed {
        problem,
        certificate: certificate.ok(),
        pods,
    };
    let now = ballast_contract::clock::rfc3339(ballast_contract::clock::unix_now());
    let new = status::compute(&prc, &observed, prc.status.as_ref(), &now);
    if prc.status.as_ref() != Some(&new) {
        let patch = serde_json::json!({
            "apiVersion": "ballast.dev/v1alpha1",
            "kind": "PresenceCluster",
            "status": new,
        });
        Api::<PresenceCluster>::namespaced(ctx.client.clone(), &namespace)
            .patch_status(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
    }
    for notice in status::notices(prc.status.as_ref(), &new) {
        let event = Event {
            type_: if notice.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: notice.reason,
            note: Some(notice.message),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(err) = ctx.recorder.publish(&event, &prc.object_ref(&())).await {
            tracing::warn!(error = %err, "could not publish an Event");
        }
    }
    ctx.metrics.observe(&namespace, &name, &new);
    ctx.metrics
        .reconcile_seconds
        .observe(started.elapsed().as_secs_f64());
    tracing::debug!(%namespace, %name, phase = ?new.phase, ready = %new.ready, connections = new.connections, "reconciled");
    Ok(Action::requeue(ctx.resync))
}

/// Backs off on errors; the error is counted and logged once per attempt.
pub fn error_policy(prc: Arc<PresenceCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(error.metric_label());
    tracing::warn!(name = %prc.name_any(), namespace = ?prc.namespace(), %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

async fn apply<K>(client: &Client, namespace: &str, object: &K) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    Api::<K>::namespaced(client.clone(), namespace)
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(object),
        )
        .await?;
    Ok(())
}

/// Lists the cluster's pods and asks each ready one's sidecar for its report, all at once.
async fn observe_pods(
    client: &Client,
    namespace: &str,
    name: &str,
    admin_port: i32,
) -> Result<Vec<PodView>, Error> {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&workload::selector_string(name)))
        .await?;
    let mut tasks = tokio::task::JoinSet::new();
    for (index, pod) in pods.items.iter().enumerate() {
        let ready = is_ready(pod);
        let admin = pod_ip(pod).map(|ip| SocketAddr::new(ip, admin_port as u16));
        tasks.spawn(async move {
            let report = match (ready, admin) {
                (true, Some(addr)) => reports::fetch(addr).await,
                _ => None,
            };
            (index, report)
        });
    }
    let mut views: Vec<PodView> = pods
        .items
        .iter()
        .map(|p| PodView {
            name: p.name_any(),
            ready: is_ready(p),
            report: None,
        })
        .collect();
    while let Some(joined) = tasks.join_next().await {
        if let Ok((index, report)) = joined {
            views[index].report = report;
        }
    }
    Ok(views)
}

fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ip(pod: &Pod) -> Option<IpAddr> {
    pod.status.as_ref()?.pod_ip.as_ref()?.parse().ok()
}
