//! The migration signal: when connections are being moved on purpose, from the first planned
//! close until the last moved agent is back, so whoever alerts on offline agents can wait.
//!
//! Pure bookkeeping over the figures of one status tick (no clock but the one passed in, no
//! I/O). A migration starts at the first planned close (or the first pod seen draining),
//! remembers the fleet's connections just before, and ends when no pod drains any more, no
//! planned close came for [`QUIET`] seconds, and the fleet has its agents back (all of them
//! but those lost without a plan) — or, if agents stay away, when the presence offline threshold has passed since the last planned close: beyond
//! it they are offline by anyone's definition and the alert should fire.
//!
//! "Just before" is the lowest total of the complete ticks of the last [`LOOKBACK`] seconds,
//! not the previous tick's: pods report a second apart, not at once, so the tick before the
//! first planned close is reported may add a draining pod's older report (still counting the
//! agents it has closed) to its neighbours' newer ones (already counting those agents back).
//! That total is too high by the agents counted twice, the fleet never gets "back" to it, and
//! the migration would last until the offline threshold. A tick missing the report of a pod
//! that holds agents counts too few and would end a migration early, so only complete ticks
//! are remembered: those outside a migration, and the one that ends it (the fleet at rest), so
//! that a drain starting a second after a migration ended has a total to go by.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::crd::MigrationStatus;

/// How far back the fleet's total before a migration is looked for: a report is believed for
/// 3 s (the observer's `FRESH`), so a draining pod's last report before its first planned
/// close may be that old, and one more second covers the tick's own interval.
pub const LOOKBACK: i64 = 4;

/// Seconds without a planned close before a migration may end. Paced drains (a window of
/// `reconnectExisting`, a rebalance, a person's `drain-per-second`) close a few agents every
/// second, who are back within the second: without it, each second was a migration of its
/// own (65 started and finished in one 60 s window, two Events each, `Migrating` flapping).
pub const QUIET: i64 = 3;

/// One tick's figures for a cluster.
#[derive(Clone, Debug, Default)]
pub struct Tick {
    /// Unix seconds.
    pub now: i64,
    /// Connections across every reporting pod, terminating ones included.
    pub connections: i64,
    /// Every pod of the cluster that has been Ready reported (a fresh report): `connections`
    /// counts every agent. (A pod never Ready yet holds none.)
    pub complete: bool,
    /// Pods draining now.
    pub draining: BTreeSet<String>,
    /// Closes since the previous tick.
    pub planned: u64,
    pub unplanned: u64,
    /// Closes in pods' first reports to this leader, made at some time while no leader
    /// answered: added to a migration under way, but they start none (a new leader would
    /// otherwise announce one for closes of an hour ago).
    pub earlier_planned: u64,
    pub earlier_unplanned: u64,
    pub budget_per_second: i64,
}

/// What changed, for an Event.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Started(MigrationStatus),
    Finished(MigrationStatus),
}

/// One cluster's migration, across ticks.
#[derive(Clone, Debug, Default)]
pub struct Tracker {
    current: Option<MigrationStatus>,
    last: Option<MigrationStatus>,
    /// (unix seconds, connections) of the complete ticks of the last [`LOOKBACK`] seconds
    /// outside a migration, oldest first.
    recent: Vec<(i64, i64)>,
    drained: BTreeSet<String>,
    /// Pods done and in all of a migration resumed from the previous leader's status, which
    /// has counts, not names: the pods this tracker sees drain are added to them.
    resumed_pods: (i32, i32),
    last_planned_at: i64,
}

impl Tracker {
    /// A new leader's tracker, from the `status.migration` the previous one wrote: a migration
    /// under way goes on with its figures ("before", the closes counted so far) instead of
    /// starting again from a tick that may miss pods or count agents twice, and the last one
    /// stays visible. Its last planned close is taken to be `now`, the earliest the offline
    /// threshold may run from without ending it too soon.
    pub fn resume(status: Option<&MigrationStatus>, now: i64) -> Self {
        let Some(m) = status else {
            return Self::default();
        };
        let mut t = Self {
            last_planned_at: now,
            ..Self::default()
        };
        if m.finished.is_some() {
            t.last = Some(m.clone());
        } else {
            t.current = Some(m.clone());
            t.resumed_pods = (m.pods_done, m.pods_total);
        }
        t
    }

    /// The migration running, or the last one.
    pub fn status(&self) -> Option<&MigrationStatus> {
        self.current.as_ref().or(self.last.as_ref())
    }

    pub fn active(&self) -> bool {
        self.current.is_some()
    }

    pub fn update(&mut self, tick: &Tick, offline_threshold: Duration) -> Option<Change> {
        let mut change = None;
        self.recent.retain(|(at, _)| tick.now - at <= LOOKBACK);
        if self.current.is_none() && (tick.planned > 0 || !tick.draining.is_empty()) {
            // With no complete tick to go by (a new leader's first), this tick's own total.
            let before = self
                .recent
                .iter()
                .map(|&(_, connections)| connections)
                .min()
                .unwrap_or(tick.connections);
            self.recent.clear();
            self.drained.clear();
            self.resumed_pods = (0, 0);
            let started = MigrationStatus {
                kind: "Drain".into(),
                started: ballast_contract::clock::rfc3339(tick.now),
                finished: None,
                pods_done: 0,
                pods_total: 0,
                connections_moved: 0,
                planned_closes: 0,
                unplanned_closes: 0,
                budget_per_second: tick.budget_per_second,
                connections_before: before,
            };
            self.last_planned_at = tick.now;
            self.current = Some(started.clone());
            change = Some(Change::Started(started));
        }
        let Some(m) = self.current.as_mut() else {
            self.remember(tick);
            return None;
        };
        if tick.planned > 0 {
            self.last_planned_at = tick.now;
        }
        self.drained.extend(tick.draining.iter().cloned());
        // A pod that was draining when the leader changed is in both the resumed total and
        // `drained`: the larger of the two totals counts it once.
        let (done_before, total_before) = self.resumed_pods;
        let done = self.drained.difference(&tick.draining).count() as i32;
        m.pods_done = done_before + done;
        m.pods_total = total_before.max(done_before + self.drained.len() as i32);
        m.planned_closes += (tick.planned + tick.earlier_planned) as i64;
        m.unplanned_closes += (tick.unplanned + tick.earlier_unplanned) as i64;
        m.budget_per_second = tick.budget_per_second;
        // Agents that came back: what the fleet regained since the planned closes took it
        // below where it started.
        let low = m.connections_before - m.planned_closes;
        m.connections_moved = (tick.connections - low).clamp(0, m.planned_closes);
        let everyone_back = m.connections_moved >= m.planned_closes - m.unplanned_closes;
        let since_planned = tick.now - self.last_planned_at;
        let gave_up = since_planned > offline_threshold.as_secs() as i64;
        if tick.draining.is_empty() && since_planned >= QUIET && (everyone_back || gave_up) {
            // No pod drains any more: every pod that drained is done, including one that
            // finished while no leader watched (a resumed migration never saw it stop).
            m.pods_done = m.pods_total;
            m.finished = Some(ballast_contract::clock::rfc3339(tick.now));
            let done = self.current.take().expect("current");
            self.last = Some(done.clone());
            change = Some(Change::Finished(done));
            // The fleet at rest (no close for QUIET seconds, its agents back): a drain that
            // starts a second later has this to go by, not only its own first tick, whose
            // total may count its first closed agents twice.
            self.remember(tick);
        }
        change
    }

    /// Keeps a complete tick's total, outside a migration, as a candidate "before".
    fn remember(&mut self, tick: &Tick) {
        if tick.complete {
            self.recent.push((tick.now, tick.connections));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(now: i64, connections: i64, draining: &[&str], planned: u64) -> Tick {
        Tick {
            now,
            connections,
            complete: true,
            draining: draining.iter().map(|s| s.to_string()).collect(),
            planned,
            unplanned: 0,
            earlier_planned: 0,
            earlier_unplanned: 0,
            budget_per_second: 100,
        }
    }

    #[test]
    fn a_drain_is_a_migration_until_its_agents_are_back() {
        let mut t = Tracker::default();
        let threshold = Duration::from_secs(60);
        assert_eq!(t.update(&tick(0, 1500, &[], 0), threshold), None);
        let Some(Change::Started(m)) = t.update(&tick(1, 1400, &["edge-0"], 100), threshold) else {
            panic!("started")
        };
        assert_eq!(m.connections_before, 1500);
        assert!(t.active());
        // Agents come back on the other pods while edge-0 still drains.
        assert_eq!(t.update(&tick(2, 1450, &["edge-0"], 100), threshold), None);
        assert_eq!(t.status().unwrap().connections_moved, 150);
        // Drain over, 50 still away: still migrating.
        assert_eq!(t.update(&tick(3, 1450, &[], 0), threshold), None);
        // All back, but planned closes came 2 s ago: a paced drain may still be going.
        assert_eq!(t.update(&tick(4, 1500, &[], 0), threshold), None);
        let Some(Change::Finished(m)) = t.update(&tick(5, 1500, &[], 0), threshold) else {
            panic!("finished")
        };
        assert_eq!(
            (
                m.planned_closes,
                m.connections_moved,
                m.pods_done,
                m.pods_total
            ),
            (200, 200, 1, 1)
        );
        assert!(!t.active());
        assert!(
            t.status().unwrap().finished.is_some(),
            "the last one stays visible"
        );
    }

    #[test]
    fn a_neighbour_counting_returned_agents_before_the_drain_is_reported_does_not_raise_the_bar() {
        let mut t = Tracker::default();
        let threshold = Duration::from_secs(60);
        for now in 0..3 {
            assert_eq!(t.update(&tick(now, 1800, &[], 0), threshold), None);
        }
        // edge-2 has closed 40 and they are back on edge-0, whose report is newer than
        // edge-2's: the fleet looks 40 larger than it is, for one tick.
        assert_eq!(t.update(&tick(3, 1840, &[], 0), threshold), None);
        let Some(Change::Started(m)) = t.update(&tick(4, 1400, &["edge-2"], 628), threshold) else {
            panic!("started")
        };
        assert_eq!(
            m.connections_before, 1800,
            "the lowest complete total before"
        );
        assert_eq!(t.update(&tick(5, 1700, &["edge-2"], 0), threshold), None);
        let Some(Change::Finished(m)) = t.update(&tick(7, 1800, &[], 0), threshold) else {
            panic!("finished once all 628 are back, not at the offline threshold")
        };
        assert_eq!((m.planned_closes, m.connections_moved), (628, 628));
    }

    #[test]
    fn ticks_missing_a_pod_or_too_old_are_not_the_fleet_before() {
        let mut t = Tracker::default();
        let threshold = Duration::from_secs(60);
        t.update(&tick(0, 900, &[], 0), threshold);
        // A pod's report missing: 1200 of the 1800 counted.
        let partial = Tick {
            complete: false,
            ..tick(7, 1200, &[], 0)
        };
        t.update(&partial, threshold);
        t.update(&tick(8, 1800, &[], 0), threshold);
        let Some(Change::Started(m)) = t.update(&tick(9, 1700, &["edge-0"], 100), threshold) else {
            panic!("started")
        };
        assert_eq!(
            m.connections_before, 1800,
            "neither the incomplete tick nor the one {LOOKBACK}+ s old"
        );
        // A new leader's first tick, with nothing before it: that tick's own total.
        let mut fresh = Tracker::default();
        let Some(Change::Started(m)) = fresh.update(&tick(0, 1700, &["edge-0"], 100), threshold)
        else {
            panic!("started")
        };
        assert_eq!(m.connections_before, 1700);
    }

    #[test]
    fn a_new_leader_goes_on_with_the_migration_the_previous_one_wrote() {
        let threshold = Duration::from_secs(60);
        let mut old = Tracker::default();
        for now in 0..3 {
            old.update(&tick(now, 1800, &[], 0), threshold);
        }
        old.update(&tick(3, 1700, &["edge-2"], 300), threshold);
        let written = old.status().cloned();
        // The new leader's first tick: edge-0 not heard from yet, edge-2 still draining.
        let mut new = Tracker::resume(written.as_ref(), 10);
        assert!(new.active());
        assert_eq!(written.as_ref().map(|m| m.pods_total), Some(1));
        let first = Tick {
            complete: false,
            ..tick(10, 1100, &["edge-2"], 200)
        };
        assert_eq!(new.update(&first, threshold), None);
        assert_eq!(new.status().unwrap().connections_before, 1800);
        assert_eq!(new.update(&tick(11, 1750, &[], 0), threshold), None);
        let Some(Change::Finished(m)) = new.update(&tick(13, 1800, &[], 0), threshold) else {
            panic!("finished when all 500 are back")
        };
        assert_eq!((m.planned_closes, m.connections_moved), (500, 500));
        assert_eq!(
            (m.pods_done, m.pods_total),
            (1, 1),
            "edge-2, counted once though both leaders saw it drain"
        );
        // A rollout resumed with edge-0 done and edge-1 draining; edge-2 drains afterwards.
        let rolling = MigrationStatus {
            pods_done: 1,
            pods_total: 2,
            finished: None,
            ..m.clone()
        };
        let mut roll = Tracker::resume(Some(&rolling), 30);
        roll.update(&tick(30, 1800, &["edge-1"], 0), threshold);
        roll.update(&tick(31, 1800, &["edge-2"], 0), threshold);
        let s = roll.status().unwrap();
        assert_eq!((s.pods_done, s.pods_total), (2, 3));
        // edge-1 finished while no leader watched: done all the same once nothing drains.
        let mut unseen = Tracker::resume(Some(&rolling), 40);
        assert_eq!(unseen.update(&tick(40, 1800, &[], 0), threshold), None);
        let Some(Change::Finished(f)) = unseen.update(&tick(43, 1800, &[], 0), threshold) else {
            panic!("finished once nothing drains and the agents are back")
        };
        assert_eq!((f.pods_done, f.pods_total), (2, 2));
        // And the one after that keeps the finished migration visible.
        let after = Tracker::resume(Some(&m), 20);
        assert!(!after.active());
        assert_eq!(after.status(), Some(&m));
        assert_eq!(Tracker::resume(None, 20).status(), None);
    }

    #[test]
    fn a_drain_right_after_a_migration_counts_from_the_fleet_at_rest() {
        // A new leader resumes a migration, which ends 3 s later; a pod is deleted at once.
        // Its first draining tick adds its older report to its neighbours' newer ones (32
        // agents counted twice): "before" is the finishing tick's total, not that one.
        let threshold = Duration::from_secs(60);
        let resumed = MigrationStatus {
            kind: "Drain".into(),
            started: ballast_contract::clock::rfc3339(0),
            connections_before: 1800,
            planned_closes: 4,
            connections_moved: 4,
            ..MigrationStatus::default()
        };
        let mut t = Tracker::resume(Some(&resumed), 10);
        for now in 10..13 {
            assert_eq!(t.update(&tick(now, 1800, &[], 0), threshold), None);
        }
        assert!(matches!(
            t.update(&tick(13, 1800, &[], 0), threshold),
            Some(Change::Finished(_))
        ));
        let Some(Change::Started(m)) = t.update(&tick(14, 1832, &["edge-2"], 80), threshold) else {
            panic!("started")
        };
        assert_eq!(m.connections_before, 1800);
    }

    #[test]
    fn closes_made_while_no_leader_answered_start_no_migration_but_count_in_one() {
        let threshold = Duration::from_secs(60);
        // A new leader's first reports: 4 closes from the operator's absence, agents back.
        let mut t = Tracker::resume(None, 100);
        let first = Tick {
            earlier_planned: 4,
            ..tick(100, 1800, &[], 0)
        };
        assert_eq!(t.update(&first, threshold), None);
        assert!(!t.active(), "nothing moves now");
        // A failover mid-drain: the closes of the gap belong to the migration resumed.
        let under_way = MigrationStatus {
            kind: "Drain".into(),
            connections_before: 1800,
            planned_closes: 100,
            connections_moved: 100,
            ..MigrationStatus::default()
        };
        let mut t = Tracker::resume(Some(&under_way), 100);
        let first = Tick {
            earlier_planned: 50,
            ..tick(100, 1750, &["edge-2"], 10)
        };
        t.update(&first, threshold);
        let m = t.status().unwrap();
        assert_eq!((m.planned_closes, m.connections_moved), (160, 110));
    }

    #[test]
    fn a_paced_drain_is_one_migration_not_one_a_second() {
        let mut t = Tracker::default();
        let threshold = Duration::from_secs(60);
        for now in 0..4 {
            t.update(&tick(now, 1000, &[], 0), threshold);
        }
        // 10 closes a second for a minute, each agent back within the second.
        let mut changes = Vec::new();
        for now in 4..64 {
            changes.extend(t.update(&tick(now, 1000, &[], 10), threshold));
        }
        assert!(
            matches!(changes.as_slice(), [Change::Started(_)]),
            "{changes:?}"
        );
        assert!(t.active(), "still under way while closes come");
        assert_eq!(t.update(&tick(65, 1000, &[], 0), threshold), None);
        let Some(Change::Finished(m)) = t.update(&tick(66, 1000, &[], 0), threshold) else {
            panic!("finished 3 s after the last planned close")
        };
        assert_eq!((m.planned_closes, m.connections_moved), (600, 600));
    }

    #[test]
    fn agents_that_never_come_back_end_it_at_the_offline_threshold() {
        let mut t = Tracker::default();
        let threshold = Duration::from_secs(60);
        t.update(&tick(0, 100, &[], 0), threshold);
        t.update(&tick(1, 50, &[], 50), threshold);
        assert_eq!(t.update(&tick(30, 60, &[], 0), threshold), None);
        let Some(Change::Finished(m)) = t.update(&tick(62, 60, &[], 0), threshold) else {
            panic!("gave up")
        };
        assert_eq!(m.connections_moved, 10);
    }
}
