//! The reports' meeting point: the latest report of every gateway pod, and what the operator
//! wants of each pod, turned into the directives of the next answer.
//!
//! The report server writes reports in and reads directives out; the observer reads reports
//! and writes what it wants. Only plain data and short locks: nothing here waits on I/O.
//! It must never invent a figure: a pod without a fresh report has none here, and the status
//! says Unknown rather than zero.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ballast_contract::{Directives, DrainDirective, Report, PROTOCOL_VERSION};

/// `(namespace, pod name)`.
pub type PodKey = (String, String);

/// A report as received.
#[derive(Clone, Debug)]
pub struct Received {
    pub report: Report,
    pub at: Instant,
    /// The PresenceCluster the pod belongs to (from the pod, not from the report).
    pub cluster: String,
    pub uid: String,
}

/// What the operator wants of one pod now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Wanted {
    /// `Some(false)`: steer new connections away.
    pub accepting: Option<bool>,
    /// Close this many connections per second, paced, while it is wanted (a person's wish,
    /// from an annotation).
    pub drain_per_second: Option<u64>,
    /// The planner's drain for this interval.
    pub drain: Option<PlannedDrain>,
    /// Why, for the sidecar's log.
    pub why: String,
    /// The pod this is wanted of, when known. A StatefulSet's successor has its
    /// predecessor's name: a wish made for a pod being drained must not reach the successor,
    /// which would start steered away and never become Ready.
    pub pod_uid: Option<String>,
}

/// A drain the planner decided: handed out once per plan (every answer within one plan
/// renews the same directive; the next plan replaces it).
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedDrain {
    /// Which plan decided it.
    pub plan: u64,
    pub connections: u64,
    pub over_seconds: f64,
    pub older_certificate_first: bool,
}

struct Issued {
    wanted: Wanted,
    id: u64,
    at: Instant,
}

/// Closes a cluster's sidecars reported to this operator, running sums.
///
/// A sidecar holds its deltas until a report is answered, so a pod's first report to a new
/// leader carries every close since the previous leader last answered it: seconds ago after a
/// failover, hours ago after an outage of the operator. Those are kept apart as `earlier`:
/// they count (metrics, a migration under way) but are no sign that one starts now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Closes {
    pub planned: u64,
    pub unplanned: u64,
    pub earlier_planned: u64,
    pub earlier_unplanned: u64,
}

impl Closes {
    /// What was added since `before` (an earlier look at the same sums).
    pub fn since(&self, before: &Closes) -> Closes {
        Closes {
            planned: self.planned.saturating_sub(before.planned),
            unplanned: self.unplanned.saturating_sub(before.unplanned),
            earlier_planned: self.earlier_planned.saturating_sub(before.earlier_planned),
            earlier_unplanned: self
                .earlier_unplanned
                .saturating_sub(before.earlier_unplanned),
        }
    }
}

/// Shared between the report server and the observer.
pub struct Hub {
    reports: Mutex<HashMap<PodKey, Received>>,
    /// What the observer last wanted, and when: wishes older than a directive's lifetime are
    /// not handed out (an observer that stopped must not keep pods steered forever).
    wanted: Mutex<(Option<Instant>, HashMap<PodKey, Wanted>)>,
    issued: Mutex<HashMap<PodKey, Issued>>,
    /// Closes per `(namespace, cluster)`, summed as reports arrive, so no report's deltas are
    /// lost however often the observer looks.
    closes: Mutex<HashMap<(String, String), Closes>>,
    next_id: AtomicU64,
    /// This replica holds the Lease: only the leader answers with directives.
    pub leader: AtomicBool,
    /// Lifetime of every directive issued.
    pub lifetime: Duration,
}

impl Hub {
    pub fn new(lifetime: Duration) -> Self {
        // Ids start from the clock so that a restarted operator never repeats an id a sidecar
        // still holds (a repeated id would only renew, not apply).
        let seed = ballast_contract::clock::unix_now().max(0) as u64 * 1000;
        Self {
            reports: Mutex::default(),
            wanted: Mutex::default(),
            issued: Mutex::default(),
            closes: Mutex::default(),
            next_id: AtomicU64::new(seed),
            leader: AtomicBool::new(false),
            lifetime,
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// Stores a report and returns the directives for its pod.
    pub fn receive(&self, key: PodKey, received: Received) -> Directives {
        let now = received.at;
        let received_uid = received.uid.clone();
        // Its first report to this operator: see [`Closes`].
        let first = !self.reports.lock().expect("hub lock").contains_key(&key);
        {
            let closed = &received.report.closed;
            let (planned, unplanned) = (
                closed.get("drain").copied().unwrap_or(0),
                closed.get("upstream").copied().unwrap_or(0),
            );
            let mut closes = self.closes.lock().expect("hub lock");
            let sums = closes
                .entry((key.0.clone(), received.cluster.clone()))
                .or_default();
            if first {
                sums.earlier_planned += planned;
                sums.earlier_unplanned += unplanned;
            } else {
                sums.planned += planned;
                sums.unplanned += unplanned;
            }
        }
        self.reports
            .lock()
            .expect("hub lock")
            .insert(key.clone(), received);
        self.directives_for(&key, &received_uid, now)
    }

    /// The latest report of every pod of `namespace/cluster`, received after `since`.
    pub fn reports_of(
        &self,
        namespace: &str,
        cluster: &str,
        since: Instant,
    ) -> HashMap<String, Received> {
        self.reports
            .lock()
            .expect("hub lock")
            .iter()
            .filter(|((ns, _), r)| ns == namespace && r.cluster == cluster && r.at >= since)
            .map(|((_, pod), r)| (pod.clone(), r.clone()))
            .collect()
    }

    /// The closes of a cluster reported to this operator since it started.
    pub fn closes_of(&self, namespace: &str, cluster: &str) -> Closes {
        self.closes
            .lock()
            .expect("hub lock")
            .get(&(namespace.to_owned(), cluster.to_owned()))
            .copied()
            .unwrap_or_default()
    }

    /// Replaces what is wanted of every pod (pods not named want nothing).
    pub fn set_wanted(&self, pods: HashMap<PodKey, Wanted>) {
        *self.wanted.lock().expect("hub lock") = (
            Some(Instant::now()),
            pods.into_iter()
                .filter(|(_, w)| *w != Wanted::default())
                .collect(),
        );
    }

    /// Forgets pods that are gone (their reports and directives).
    pub fn forget(&self, keep: impl Fn(&PodKey) -> bool) {
        self.reports
            .lock()
            .expect("hub lock")
            .retain(|k, _| keep(k));
        self.issued.lock().expect("hub lock").retain(|k, _| keep(k));
    }

    fn directives_for(&self, key: &PodKey, uid: &str, now: Instant) -> Directives {
        let wanted = {
            let (set_at, wanted) = &*self.wanted.lock().expect("hub lock");
            let fresh = set_at.is_some_and(|t| t.elapsed() <= self.lifetime);
            wanted
                .get(key)
                .filter(|_| fresh)
                .filter(|w| w.pod_uid.as_deref().is_none_or(|u| u == uid))
                .cloned()
                .unwrap_or_default()
        };
        let lifetime = self.lifetime.as_secs_f64();
        let mut issued = self.issued.lock().expect("hub lock");
        let previous = issued.get(key);
        // A drain is issued as slices: each answer closes what one interval's worth of the rate
        // is (the time since the previous answer, bounded), under a new id so it is applied.
        let sliced = wanted.drain_per_second.filter(|r| *r > 0).map(|rate| {
            let since = previous
                .map(|p| now.saturating_duration_since(p.at).as_secs_f64())
                .unwrap_or(1.0)
                .clamp(0.5, 2.0);
            DrainDirective {
                connections: (rate as f64 * since).ceil() as u64,
                over_seconds: since.min(lifetime),
                older_certificate_first: true,
                why: wanted.why.clone(),
            }
        });
        let planned = wanted.drain.as_ref().map(|d| DrainDirective {
            connections: d.connections,
            over_seconds: d.over_seconds.clamp(0.1, lifetime),
            older_certificate_first: d.older_certificate_first,
            why: wanted.why.clone(),
        });
        let drain = sliced.clone().or(planned);
        let id = match previous {
            Some(p) if p.wanted == wanted && sliced.is_none() => p.id,
            _ => self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
        };
        issued.insert(
            key.clone(),
            Issued {
                wanted: wanted.clone(),
                id,
                at: now,
            },
        );
        Directives {
            protocol_version: PROTOCOL_VERSION,
            id,
            expires_in_seconds: lifetime,
            accepting: wanted.accepting,
            admission_quota: None,
            drain,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(at: Instant) -> Received {
        Received {
            report: Report::default(),
            at,
            cluster: "edge".into(),
            uid: "u".into(),
        }
    }

    #[test]
    fn unchanged_wishes_keep_their_id_and_drains_come_in_valid_slices() {
        let hub = Hub::new(Duration::from_secs(5));
        let key: PodKey = ("ns".into(), "edge-0".into());
        let t0 = Instant::now();
        let first = hub.receive(key.clone(), received(t0));
        let again = hub.receive(key.clone(), received(t0 + Duration::from_secs(1)));
        assert_eq!(first.id, again.id, "nothing new: same id, only renewed");
        assert_eq!((again.accepting, again.drain.clone()), (None, None));

        hub.set_wanted(HashMap::from([(
            key.clone(),
            Wanted {
                accepting: Some(false),
                drain_per_second: Some(20),
                why: "test".into(),
                ..Wanted::default()
            },
        )]));
        let a = hub.receive(key.clone(), received(t0 + Duration::from_secs(2)));
        let b = hub.receive(key.clone(), received(t0 + Duration::from_secs(3)));
        assert_ne!(a.id, b.id, "every slice is a new directive");
        assert_eq!(b.accepting, Some(false));
        assert_eq!(b.drain.as_ref().unwrap().connections, 20);
        assert_eq!(b.validate(), Ok(()));

        // Every report's closes count, however many arrive between two looks.
        let mut closing = received(t0 + Duration::from_secs(4));
        closing.report.closed.insert("drain".into(), 5);
        hub.receive(key.clone(), closing.clone());
        hub.receive(key.clone(), closing);
        assert_eq!(
            hub.closes_of("ns", "edge"),
            Closes {
                planned: 10,
                ..Closes::default()
            }
        );
        // A pod's first report carries what it closed while no leader answered: earlier.
        let mut first = received(t0 + Duration::from_secs(5));
        first.report.closed.insert("drain".into(), 4);
        first.report.closed.insert("upstream".into(), 1);
        hub.receive(("ns".into(), "edge-1".into()), first);
        let sums = hub.closes_of("ns", "edge");
        assert_eq!(
            (sums.planned, sums.earlier_planned, sums.earlier_unplanned),
            (10, 4, 1)
        );
        assert_eq!(
            sums.since(&Closes {
                planned: 7,
                ..Closes::default()
            }),
            Closes {
                planned: 3,
                unplanned: 0,
                earlier_planned: 4,
                earlier_unplanned: 1
            }
        );
        let reports = hub.reports_of("ns", "edge", t0);
        assert!(reports.contains_key("edge-0"));
        assert!(hub.reports_of("ns", "other", t0).is_empty());
        hub.forget(|_| false);
        assert!(hub.reports_of("ns", "edge", t0).is_empty());
    }

    #[test]
    fn a_planned_drain_is_applied_once_per_plan() {
        let hub = Hub::new(Duration::from_secs(5));
        let key: PodKey = ("ns".into(), "edge-0".into());
        let t0 = Instant::now();
        let plan = |id: u64| {
            HashMap::from([(
                key.clone(),
                Wanted {
                    accepting: Some(false),
                    drain: Some(PlannedDrain {
                        plan: id,
                        connections: 12,
                        over_seconds: 1.0,
                        older_certificate_first: false,
                    }),
                    why: "rebalance".into(),
                    ..Wanted::default()
                },
            )])
        };
        hub.set_wanted(plan(1));
        let a = hub.receive(key.clone(), received(t0));
        let a_again = hub.receive(key.clone(), received(t0 + Duration::from_millis(300)));
        assert_eq!(
            a.id, a_again.id,
            "the same plan's drain is renewed, not repeated"
        );
        let drain = a.drain.clone().unwrap();
        assert_eq!((drain.connections, drain.over_seconds), (12, 1.0));
        assert_eq!(a.validate(), Ok(()));
        hub.set_wanted(plan(2));
        let b = hub.receive(key.clone(), received(t0 + Duration::from_secs(1)));
        assert_ne!(a.id, b.id, "the next plan's drain is a new directive");
        hub.set_wanted(HashMap::new());
        let c = hub.receive(key.clone(), received(t0 + Duration::from_secs(2)));
        assert_eq!(
            (c.accepting, c.drain),
            (None, None),
            "nothing planned, nothing asked"
        );
    }

    #[test]
    fn a_wish_for_a_pod_never_reaches_its_successor_of_the_same_name() {
        let hub = Hub::new(Duration::from_secs(5));
        let key: PodKey = ("ns".into(), "edge-0".into());
        hub.set_wanted(HashMap::from([(
            key.clone(),
            Wanted {
                accepting: Some(false),
                pod_uid: Some("u".into()),
                ..Wanted::default()
            },
        )]));
        let t0 = Instant::now();
        assert_eq!(
            hub.receive(key.clone(), received(t0)).accepting,
            Some(false)
        );
        let mut successor = received(t0);
        successor.uid = "v".into();
        assert_eq!(
            hub.receive(key, successor).accepting,
            None,
            "the successor starts free to become Ready"
        );
    }
}
