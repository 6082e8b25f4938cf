//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator replicas are safe:
//! only the holder reconciles. A replica that loses the lease exits (its Deployment restarts
//! it as a follower) rather than risk two leaders acting at once.
//!
//! Optimistic concurrency does the arbitration: every write carries the resourceVersion that
//! was read, so of two replicas racing for an expired lease exactly one write succeeds.
//!
//! Clocks never have to agree. A follower does not compare the holder's `renewTime` with its
//! own clock: it notes, on its own monotonic clock, when it last saw the lease record change,
//! and calls the lease expired only when it has not changed for a whole `leaseDurationSeconds`
//! (client-go's leader election does the same). The holder gives up when it has not renewed
//! for [`renew_deadline`] — two thirds of the duration, each attempt bounded by what is left
//! of it — so it stops acting before any follower can see the lease expire. Errors while
//! waiting to lead (the API server restarting, a timeout) are retried, never fatal.

use std::time::{Duration, Instant};

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

/// How long the holder may go without a successful renewal before it gives up: two thirds
/// of the lease, so it stops before a follower, a whole lease after its last renewal, takes
/// over.
pub fn renew_deadline(duration: Duration) -> Duration {
    duration * 2 / 3
}

/// How often the lease is tried (taken, renewed or looked at).
fn retry_period(duration: Duration) -> Duration {
    duration / 6
}

/// What identifies one version of the lease record: any change means its holder is alive.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<String>,
    resource_version: Option<String>,
}

/// When this replica last saw the record change, on its own clock.
#[derive(Clone, Debug)]
struct Seen {
    record: Record,
    at: Instant,
}

/// Whether a lease record held by someone else has expired, judged only by how long it has
/// stayed unchanged on this replica's clock. Returns the updated observation.
fn expired(seen: Option<Seen>, record: Record, now: Instant, duration: Duration) -> (bool, Seen) {
    match seen {
        Some(s) if s.record == record => {
            let expired = now.duration_since(s.at) > duration;
            (expired, s)
        }
        // New to us, or changed since: alive as of now.
        _ => (false, Seen { record, at: now }),
    }
}

/// One replica's view of the lease.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    seen: Option<Seen>,
}

impl Elector {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            seen: None,
        }
    }

    /// Blocks until this replica holds the lease. API errors are logged and retried.
    pub async fn acquire(&mut self) {
        let mut announced = false;
        let period = retry_period(self.config.duration);
        loop {
            match tokio::time::timeout(period.max(Duration::from_secs(1)), self.try_take()).await {
                Ok(Ok(true)) => {
                    tracing::info!(lease = %self.config.name, identity = %self.config.identity, "leader: reconciling");
                    return;
                }
                Ok(Ok(false)) => {
                    if !announced {
                        tracing::info!(lease = %self.config.name, "another replica leads; waiting as a follower");
                        announced = true;
                    }
                }
                Ok(Err(err)) => {
                    tracing::warn!(lease = %self.config.name, error = %err, "cannot read or take the lease yet; retrying");
                }
                Err(_) => {
                    tracing::warn!(lease = %self.config.name, "the API server did not answer in time; retrying");
                }
            }
            tokio::time::sleep(period).await;
        }
    }

    /// Renews the lease until it is lost or cannot be renewed within [`renew_deadline`];
    /// returns only then.
    pub async fn hold(mut self) {
        let deadline = renew_deadline(self.config.duration);
        let period = retry_period(self.config.duration);
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(period).await;
            let left = deadline.saturating_sub(renewed.elapsed());
            if left.is_zero() {
                tracing::error!(lease = %self.config.name, "lease not renewed within its deadline; giving it up");
                return;
            }
            match tokio::time::timeout(left, self.try_take()).await {
                Ok(Ok(true)) => renewed = Instant::now(),
                Ok(Ok(false)) => {
                    tracing::error!(lease = %self.config.name, "lease taken by another replica");
                    return;
                }
                Ok(Err(err)) => {
                    tracing::warn!(lease = %self.config.name, error = %err, left = ?left, "lease renewal failed; retrying within the deadline");
                }
                Err(_) => {
                    tracing::error!(lease = %self.config.name, "lease renewal did not finish within its deadline; giving it up");
                    return;
                }
            }
        }
    }

    /// Takes or renews the lease if it is free (never held or released), expired, or ours.
    async fn try_take(&mut self) -> Result<bool, kube::Error> {
        let config = &self.config;
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
        let Some(mut lease) = self.api.get_opt(&config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(config.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec_for(None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let ours = spec.holder_identity.as_deref() == Some(config.identity.as_str());
        let released = spec.holder_identity.as_deref().is_none_or(str::is_empty);
        // The holder's own duration, not ours: replicas of different versions may disagree.
        let duration = spec
            .lease_duration_seconds
            .map_or(config.duration, |d| Duration::from_secs(d.max(1) as u64));
        let record = Record {
            holder: spec.holder_identity.clone(),
            renew_time: spec.renew_time.as_ref().map(|t| t.0.to_string()),
            resource_version: lease.metadata.resource_version.clone(),
        };
        let (expired, seen) = expired(self.seen.take(), record, Instant::now(), duration);
        self.seen = Some(seen);
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
        match self
            .api
            .replace(&config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(renew: &str, version: &str) -> Record {
        Record {
            holder: Some("other".into()),
            renew_time: Some(renew.into()),
            resource_version: Some(version.into()),
        }
    }

    #[test]
    fn a_lease_expires_only_after_a_whole_duration_unchanged_on_our_clock() {
        let d = Duration::from_secs(15);
        let t0 = Instant::now();
        // The holder's clock is an hour behind ours: its renewTime means nothing here.
        let first = record("2026-11-25T06:00:00Z", "1");
        let (gone, seen) = expired(None, first.clone(), t0, d);
        assert!(!gone, "first sight: alive");
        let (gone, seen) = expired(Some(seen), first.clone(), t0 + Duration::from_secs(10), d);
        assert!(!gone);
        // Renewed (by its clock, still far in our past): alive again from now.
        let renewed = record("2026-11-25T06:00:05Z", "2");
        let (gone, seen) = expired(Some(seen), renewed.clone(), t0 + Duration::from_secs(14), d);
        assert!(!gone);
        assert_eq!(seen.at, t0 + Duration::from_secs(14));
        let (gone, _) = expired(
            Some(seen.clone()),
            renewed.clone(),
            t0 + Duration::from_secs(29),
            d,
        );
        assert!(!gone, "15 s unchanged is not yet more than the duration");
        let (gone, _) = expired(Some(seen), renewed, t0 + Duration::from_secs(30), d);
        assert!(gone, "unchanged for more than the duration");
    }

    #[test]
    fn the_holder_gives_up_before_a_follower_can_take_over() {
        let d = Duration::from_secs(15);
        assert_eq!(renew_deadline(d), Duration::from_secs(10));
        assert!(renew_deadline(d) + retry_period(d) < d);
    }
}
