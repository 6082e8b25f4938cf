//! The migration signal: when connections are being moved on purpose, from the first planned
//! close until the last moved agent is back, so whoever alerts on offline agents can wait.
//!
//! Pure bookkeeping over the figures of one status tick (no clock but the one passed in, no
//! I/O). A migration starts at the first planned close (or the first pod seen draining),
//! remembers the fleet's connections just before, and ends when no pod drains any more and the
//! fleet has its agents back (all of them but those lost without a plan) — or, if agents stay
//! away, when the presence offline threshold has passed since the last planned close: beyond
//! it they are offline by anyone's definition and the alert should fire.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::crd::MigrationStatus;

/// One tick's figures for a cluster.
#[derive(Clone, Debug, Default)]
pub struct Tick {
    /// Unix seconds.
    pub now: i64,
    /// Connections across every reporting pod, terminating ones included.
    pub connections: i64,
    /// Pods draining now.
    pub draining: BTreeSet<String>,
    /// Closes since the previous tick.
    pub planned: u64,
    pub unplanned: u64,
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
    previous_connections: Option<i64>,
    drained: BTreeSet<String>,
    last_planned_at: i64,
}

impl Tracker {
    /// The migration running, or the last one.
    pub fn status(&self) -> Option<&MigrationStatus> {
        self.current.as_ref().or(self.last.as_ref())
    }

    pub fn active(&self) -> bool {
        self.current.is_some()
    }

    pub fn update(&mut self, tick: &Tick, offline_threshold: Duration) -> Option<Change> {
        let before = self.previous_connections.unwrap_or(tick.connections);
        self.previous_connections = Some(tick.connections);
        let mut change = None;
        if self.current.is_none() && (tick.planned > 0 || !tick.draining.is_empty()) {
            self.drained.clear();
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
        let m = self.current.as_mut()?;
        if tick.planned > 0 {
            self.last_planned_at = tick.now;
        }
        self.drained.extend(tick.draining.iter().cloned());
        m.pods_total = self.drained.len() as i32;
        m.pods_done = self.drained.difference(&tick.draining).count() as i32;
        m.planned_closes += tick.planned as i64;
        m.unplanned_closes += tick.unplanned as i64;
        m.budget_per_second = tick.budget_per_second;
        // Agents that came back: what the fleet regained since the planned closes took it
        // below where it started.
        let low = m.connections_before - m.planned_closes;
        m.connections_moved = (tick.connections - low).clamp(0, m.planned_closes);
        let everyone_back = m.connections_moved >= m.planned_closes - m.unplanned_closes;
        let gave_up = tick.now - self.last_planned_at > offline_threshold.as_secs() as i64;
        if tick.draining.is_empty() && (everyone_back || gave_up) {
            m.finished = Some(ballast_contract::clock::rfc3339(tick.now));
            let done = self.current.take().expect("current");
            self.last = Some(done.clone());
            change = Some(Change::Finished(done));
        }
        change
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(now: i64, connections: i64, draining: &[&str], planned: u64) -> Tick {
        Tick {
            now,
            connections,
            draining: draining.iter().map(|s| s.to_string()).collect(),
            planned,
            unplanned: 0,
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
        let Some(Change::Finished(m)) = t.update(&tick(4, 1500, &[], 0), threshold) else {
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
