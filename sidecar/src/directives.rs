//! The operator's directives in force, and their lapse.
//!
//! Owns what the operator has asked of this pod — stop attracting new connections (readiness
//! fails), admit at most a quota per second, close some connections over a short window — and
//! the moment each request stops counting. Every directive arrives with a lifetime and is
//! renewed by each answer; when answers stop (operator gone, network cut, a replica that is not
//! the leader) the directives lapse by themselves: readiness comes back, the quota goes, and a
//! drain the operator started is stopped. The data plane then runs on its own limits alone.
//!
//! It must never make the pod less available than its own limits allow once a directive has
//! lapsed, and never act on a directive that fails [`ballast_contract::Directives::validate`].

use std::sync::Mutex;
use std::time::{Duration, Instant};

use ballast_contract::{Directives as Wire, DrainSize};

use crate::admission::TokenBucket;
use crate::drain::{Drainer, Origin};
use crate::metrics::Metrics;

/// What is in force now.
struct InForce {
    id: u64,
    expires_at: Instant,
    accepting: Option<bool>,
    quota: Option<TokenBucket>,
}

/// The directives of the latest answer, until they lapse.
#[derive(Default)]
pub struct Directed {
    in_force: Mutex<Option<InForce>>,
}

impl Directed {
    /// Applies an answer's directives at `now`. The same id again only renews the lifetime; a
    /// new id replaces everything and starts its drain, if it carries one.
    pub fn apply(
        &self,
        wire: &Wire,
        now: Instant,
        drainer: &Drainer,
        metrics: &Metrics,
    ) -> Result<(), String> {
        wire.validate()?;
        let expires_at = now + Duration::from_secs_f64(wire.expires_in_seconds);
        let mut slot = self.in_force.lock().expect("directives lock");
        if let Some(current) = slot.as_mut().filter(|c| c.id == wire.id) {
            current.expires_at = expires_at;
            return Ok(());
        }
        if let Some(drain) = &wire.drain {
            let window = Duration::from_secs_f64(drain.over_seconds);
            let size = DrainSize::Count(usize::try_from(drain.connections).unwrap_or(usize::MAX));
            tracing::debug!(id = wire.id, connections = drain.connections, why = %drain.why, "operator drain");
            drainer.start(Origin::Directive(wire.id), size, window);
            metrics.directive_drains.inc();
        }
        if wire.accepting == Some(false) && slot.as_ref().and_then(|c| c.accepting) != Some(false) {
            tracing::info!(
                id = wire.id,
                "the operator steers new connections away: readiness fails until it says otherwise or its directive lapses"
            );
        }
        metrics.directives_applied.inc();
        metrics
            .steered_away
            .set(i64::from(wire.accepting == Some(false)));
        *slot = Some(InForce {
            id: wire.id,
            expires_at,
            accepting: wire.accepting,
            quota: wire
                .admission_quota
                .map(|q| TokenBucket::per_second(u32::try_from(q).unwrap_or(u32::MAX))),
        });
        Ok(())
    }

    /// Lets expired directives go, stopping the operator's drain. True if they lapsed now.
    pub fn lapse_if_expired(&self, now: Instant, drainer: &Drainer, metrics: &Metrics) -> bool {
        let mut slot = self.in_force.lock().expect("directives lock");
        let Some(current) = slot.as_ref() else {
            return false;
        };
        if current.expires_at > now {
            return false;
        }
        let id = current.id;
        *slot = None;
        drop(slot);
        let stopped = drainer.cancel_directed();
        metrics.directive_lapses.inc();
        metrics.steered_away.set(0);
        tracing::warn!(
            id,
            stopped_drain = stopped.is_some(),
            "the operator's directives lapsed (no answer renewed them): back to local limits"
        );
        true
    }

    /// The id of the directives in force; 0 for none.
    pub fn applied_id(&self, now: Instant) -> u64 {
        self.live(now, |c| c.id).unwrap_or(0)
    }

    /// New connections are being steered away (readiness fails).
    pub fn steered_away(&self, now: Instant) -> bool {
        self.live(now, |c| c.accepting == Some(false))
            .unwrap_or(false)
    }

    /// One more connection fits the operator's admission quota (always, without one).
    pub fn admit(&self, now: Instant) -> bool {
        self.live(now, |c| c.quota.as_ref().is_none_or(|q| q.try_take(now)))
            .unwrap_or(true)
    }

    fn live<T>(&self, now: Instant, f: impl FnOnce(&InForce) -> T) -> Option<T> {
        let slot = self.in_force.lock().expect("directives lock");
        slot.as_ref().filter(|c| c.expires_at > now).map(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connections::Connections;
    use ballast_contract::DrainDirective;
    use std::sync::Arc;

    fn wire(id: u64, accepting: Option<bool>, drain: Option<u64>) -> Wire {
        Wire {
            protocol_version: ballast_contract::PROTOCOL_VERSION,
            id,
            expires_in_seconds: 5.0,
            accepting,
            admission_quota: None,
            drain: drain.map(|n| DrainDirective {
                connections: n,
                over_seconds: 4.0,
                older_certificate_first: true,
                why: "test".into(),
            }),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn directives_lapse_by_themselves_and_stop_the_operators_drain() {
        let connections = Arc::new(Connections::default());
        let metrics = Metrics::new();
        let _regs: Vec<_> = (0..10).map(|_| connections.register(1)).collect();
        let drainer = Drainer::new(connections.clone(), Arc::new(Metrics::new()));
        let directed = Directed::default();
        let t0 = Instant::now();
        directed
            .apply(&wire(3, Some(false), Some(8)), t0, &drainer, &metrics)
            .unwrap();
        assert!(directed.steered_away(t0));
        assert_eq!(drainer.running_origin(), Some(Origin::Directive(3)));
        // The same id renews the lifetime without restarting the drain.
        let t1 = t0 + Duration::from_secs(3);
        directed
            .apply(&wire(3, Some(false), Some(8)), t1, &drainer, &metrics)
            .unwrap();
        assert_eq!(
            metrics.directive_drains.get(),
            1,
            "a renewal is not a second drain"
        );
        assert!(!directed.lapse_if_expired(t0 + Duration::from_secs(7), &drainer, &metrics));
        assert!(directed.steered_away(t0 + Duration::from_secs(7)));
        // Silence past the renewed expiry: everything lapses.
        let late = t1 + Duration::from_secs(5);
        assert!(!directed.steered_away(late), "expired is not in force");
        assert!(directed.lapse_if_expired(late, &drainer, &metrics));
        assert_eq!(drainer.running_origin(), None, "the operator's drain stops");
        assert_eq!(directed.applied_id(late), 0);
        assert_eq!(
            (metrics.directive_lapses.get(), metrics.steered_away.get()),
            (1, 0)
        );
    }

    #[tokio::test]
    async fn invalid_directives_are_ignored_whole_and_quotas_bound_admission() {
        let drainer = Drainer::new(Arc::new(Connections::default()), Arc::new(Metrics::new()));
        let metrics = Metrics::new();
        let directed = Directed::default();
        let now = Instant::now();
        let mut bad = wire(1, Some(false), None);
        bad.expires_in_seconds = 3_600.0;
        assert!(directed.apply(&bad, now, &drainer, &metrics).is_err());
        assert!(!directed.steered_away(now));
        let mut quota = wire(2, None, None);
        quota.admission_quota = Some(10);
        directed.apply(&quota, now, &drainer, &metrics).unwrap();
        let admitted = (0..100).filter(|_| directed.admit(now)).count();
        assert_eq!(
            admitted, 1,
            "a tenth of a second's worth, at least one, at once"
        );
    }
}
