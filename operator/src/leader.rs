//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator replicas are safe:
//! only the holder reconciles. A replica that loses the lease exits (its Deployment restarts
//! it as a follower) rather than risk two leaders acting at once.
//!
//! Optimistic concurrency does the arbitration: every write carries the resourceVersion that
//! was read, so of two replicas racing for an expired lease exactly one write succeeds.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};

/// Where and as whom to hold the lease.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

/// Blocks until this replica holds the lease.
pub async fn acquire(client: &Client, config: &LeaseConfig) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
    let mut announced = false;
    loop {
        if try_take(&api, config).await? {
            tracing::info!(lease = %config.name, identity = %config.identity, "leader: reconciling");
            return Ok(());
        }
        if !announced {
            tracing::info!(lease = %config.name, "another replica leads; waiting as a follower");
            announced = true;
        }
        tokio::time::sleep(config.duration / 3).await;
    }
}

/// Renews the lease until it is lost; returns only then.
pub async fn hold(client: Client, config: LeaseConfig) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut failures = 0u32;
    loop {
        tokio::time::sleep(config.duration / 3).await;
        match try_take(&api, &config).await {
            Ok(true) => failures = 0,
            Ok(false) => {
                tracing::error!(lease = %config.name, "lease taken by another replica");
                return;
            }
            Err(err) => {
                failures += 1;
                tracing::warn!(error = %err, failures, "lease renewal failed");
                // Give up before the lease can expire under us.
                if failures >= 2 {
                    return;
                }
            }
        }
    }
}

/// Gives the lease up on a clean shutdown, so a follower takes over at its next attempt
/// instead of waiting for the lease to expire. Best effort: if it fails, expiry still works.
pub async fn release(client: &Client, config: &LeaseConfig) {
    let api: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
    let Ok(Some(mut lease)) = api.get_opt(&config.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => tracing::info!(lease = %config.name, "lease released"),
        Err(err) => tracing::warn!(error = %err, "could not release the lease; it will expire"),
    }
}

/// Takes or renews the lease if it is free (never held or released), expired, or ours.
async fn try_take(api: &Api<Lease>, config: &LeaseConfig) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let seconds = config.duration.as_secs() as i32;
    let spec_for = |acquired: Option<MicroTime>, transitions: i32| LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(seconds),
        acquire_time: acquired.or(Some(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    };
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(spec_for(None, 0)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let ours = spec.holder_identity.as_deref() == Some(config.identity.as_str());
    let released = spec.holder_identity.as_deref().is_none_or(str::is_empty);
    let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(MicroTime(renewed)), Some(d)) => now.as_second() > renewed.as_second() + i64::from(d),
        _ => true,
    };
    if !ours && !expired && !released {
        return Ok(false);
    }
    let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
    let acquired = if ours {
        spec.acquire_time.clone()
    } else {
        None
    };
    lease.spec = Some(spec_for(acquired, transitions));
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
