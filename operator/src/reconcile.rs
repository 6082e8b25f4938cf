//! One reconcile of one PresenceCluster: validate → build → apply. Status is the observer's
//! (`crate::observer`), so the operator's own status writes never retrigger this.
//!
//! Wrong input never deletes anything: when validation finds a problem, nothing is applied,
//! the observer's status says why (Ready=False, reason, message) with one Event, and the
//! reconcile runs again when the Secret changes (the observer notices within a second) or on
//! the resync period — fixing the Secret or the spec recovers without restarting anything. Owned objects carry owner references, so deleting the PresenceCluster
//! lets Kubernetes' garbage collector remove them; the operator needs no finalizer.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use ballast_contract::ticket_keys::{self, KeyBytes, TicketKeys};

use crate::crd::PresenceCluster;
use crate::metrics::Metrics;
use crate::workload::{self, Environment};
use crate::{secrets, validate};

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
    pub env: Environment,
    pub metrics: Arc<Metrics>,
    /// The sidecars' latest reports (what the pods serve).
    pub hub: Arc<crate::hub::Hub>,
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
    // A renewal keeps the names the pods serve now: judged here too, so that a RollingRestart
    // never rolls the pods onto a certificate the sidecars would refuse.
    let now = std::time::Instant::now();
    let reports = ctx.hub.reports_of(
        &namespace,
        &name,
        now.checked_sub(crate::observer::FRESH).unwrap_or(now),
    );
    let certificate = validate::renewal(
        secret.as_ref(),
        secret_name,
        SystemTime::now(),
        reports.values().map(|r| &r.report),
    );
    let problem = validate::template(&prc)
        .err()
        .or_else(|| certificate.as_ref().err().cloned());

    // 2 + 3. Build and apply, only with nothing wrong.
    if problem.is_none() {
        let mut built = workload::build(&prc, &ctx.env);
        if let Ok(facts) = &certificate {
            workload::restart_on_renewal(&prc, &mut built.statefulset, &facts.sha256);
        }
        let admin = workload::admin_token_name(&name);
        ensure_token(&ctx.client, &prc, &namespace, &admin).await?;
        if prc.spec.presence.events.enabled {
            let events = workload::events_token_name(&name);
            ensure_token(&ctx.client, &prc, &namespace, &events).await?;
        }
        if prc.spec.tls.session_tickets.enabled {
            ensure_ticket_keys(&ctx.client, &prc, &namespace).await?;
        }
        if let Some(ca) = &built.operator_ca {
            apply(&ctx.client, &namespace, ca).await?;
        }
        apply(&ctx.client, &namespace, &built.statefulset).await?;
        apply(&ctx.client, &namespace, &built.service).await?;
        apply(&ctx.client, &namespace, &built.headless).await?;
        apply(&ctx.client, &namespace, &built.pdb).await?;
    }

    ctx.metrics
        .reconcile_seconds
        .observe(started.elapsed().as_secs_f64());
    tracing::debug!(%namespace, %name, problem = ?problem.as_ref().map(|p| p.reason), "reconciled");
    Ok(Action::requeue(ctx.resync))
}

/// Backs off on errors; the error is counted and logged once per attempt.
pub fn error_policy(prc: Arc<PresenceCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(error.metric_label());
    tracing::warn!(name = %prc.name_any(), namespace = ?prc.namespace(), %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Server-side applies `object` as the operator's field manager (forced: these objects are
/// the operator's own).
pub async fn apply<K>(client: &Client, namespace: &str, object: &K) -> kube::Result<()>
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

/// Creates a token Secret of the cluster once (the admin token, the events token; never
/// rewritten: people and presence backends may hold them). Only `create` is needed; an
/// existing Secret is left alone.
async fn ensure_token(
    client: &Client,
    prc: &PresenceCluster,
    namespace: &str,
    name: &str,
) -> Result<(), Error> {
    let mut bytes = [0u8; 32];
    random_fill(&mut bytes);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let secret = secrets::managed(
        namespace,
        name,
        prc.controller_owner_ref(&()),
        None,
        [("token".to_owned(), token.into_bytes())].into(),
    );
    secrets::create_or_existing(&Api::namespaced(client.clone(), namespace), &secret).await?;
    Ok(())
}

/// Keeps the cluster's shared session-ticket keys current: creates the Secret with a current
/// and a next key, then at each reconcile adds the next key once the current one hands over
/// and drops keys past their overlap (`ballast_contract::ticket_keys` has the schedule). A
/// Secret whose file no longer parses is replaced with fresh keys, with a warning.
async fn ensure_ticket_keys(
    client: &Client,
    prc: &PresenceCluster,
    namespace: &str,
) -> Result<(), Error> {
    let name = workload::ticket_keys_name(&prc.name_any());
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let interval = prc.spec.tls.session_tickets.rotation_seconds();
    let now = ballast_contract::clock::unix_now();
    let existing = api.get_opt(&name).await?;
    let current = existing
        .as_ref()
        .and_then(|s| secrets::data(s, ticket_keys::FILE_NAME))
        .map(TicketKeys::parse);
    if let Some(Err(why)) = &current {
        tracing::warn!(%namespace, secret = %name, %why, "ticket-key file unreadable; replacing it with fresh keys");
    }
    let current = current.and_then(Result::ok);
    let Some(next) = TicketKeys::rotate(current.as_ref(), now, interval, fresh_ticket_key) else {
        return Ok(());
    };
    let data = [(
        ticket_keys::FILE_NAME.to_owned(),
        next.to_json().into_bytes(),
    )]
    .into();
    match &existing {
        None => {
            let secret =
                secrets::managed(namespace, &name, prc.controller_owner_ref(&()), None, data);
            secrets::create_or_existing(&api, &secret).await?;
        }
        Some(read) => {
            let ours = read
                .owner_references()
                .iter()
                .any(|o| Some(&o.uid) == prc.metadata.uid.as_ref());
            if !ours {
                // Someone else's Secret under our name: never overwrite it. Pods still serve
                // (a bad file means full handshakes); say so once per reconcile.
                tracing::warn!(%namespace, secret = %name,
                    "a Secret of this name exists but is not owned by this PresenceCluster; not rotating its keys");
                return Ok(());
            }
            secrets::replace_data(&api, read, data).await?;
        }
    }
    let names: Vec<&str> = next.keys.iter().map(|k| &k.name[..8]).collect();
    tracing::info!(%namespace, secret = %name, keys = ?names, "session-ticket keys rotated");
    Ok(())
}

fn fresh_ticket_key() -> KeyBytes {
    let mut key = KeyBytes {
        name: [0; ticket_keys::NAME_LEN],
        secret: [0; ticket_keys::SECRET_LEN],
    };
    random_fill(&mut key.name);
    random_fill(&mut key.secret);
    key
}

/// Fills `bytes` from the system's secure random source (tokens and keys).
fn random_fill(bytes: &mut [u8]) {
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), bytes)
        .expect("the system's random source works");
}
