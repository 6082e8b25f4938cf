//! The fleet-wide reconnect budget: how many planned closes per second the fleet may absorb.
//!
//! Its ceiling is the smaller of the user's `maxReconnectsPerSecond` and the spare handshake
//! capacity of the pods that accept new connections (their capacity minus the organic
//! handshake rate they report). Within it the budget adapts like TCP's congestion window:
//! multiplicative decrease when any pod shows trouble (handshake latency above a threshold,
//! rate refusals, failed handshakes), additive increase for every healthy interval. It starts
//! at the ceiling: the ceiling is already derived from what the pods say they can take.

use crate::observe::PodReport;
use crate::spec::Spec;

/// The budget in force and the most it may be now.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// Reconnects per second in force.
    pub rate: f64,
    /// The most it may be now.
    pub ceiling: f64,
}

/// Handshakes per second the pods do for agents we did not move (arrivals, crashes): what
/// they report less the planned rate of the previous interval, whose arrivals it includes.
pub fn organic_rate<'a>(
    reports: impl IntoIterator<Item = &'a PodReport>,
    last_planned_rate: f64,
) -> f64 {
    let reported: f64 = reports.into_iter().map(|r| r.handshakes_per_second).sum();
    (reported - last_planned_rate).max(0.0)
}

/// Spare handshake capacity of `accepting` pods, which take the organic load too.
pub fn spare_capacity(spec: &Spec, accepting: usize, organic: f64) -> f64 {
    (accepting as f64 * spec.max_handshakes_per_second_per_pod - organic).max(0.0)
}

/// Whether a report shows a pod struggling with handshakes.
pub fn shows_trouble(spec: &Spec, report: &PodReport) -> bool {
    let t = &spec.tuning;
    // A few failed handshakes are normal on the internet (scanners, broken clients); more
    // than 1% of an interval's handshakes is not.
    let normal_failures = (report.handshakes_per_second * t.interval * 0.01).max(1.0);
    report.handshake_p99_seconds > t.latency_threshold
        || report.rate_refusals > 0
        || report.failed_handshakes as f64 > normal_failures
}

/// The next budget from the previous one.
pub fn next(spec: &Spec, previous: Option<f64>, spare: f64, trouble: bool) -> Budget {
    let t = &spec.tuning;
    let ceiling = spec.max_reconnects_per_second.min(spare).max(0.0);
    let floor = t.min_budget.min(ceiling);
    let rate = match previous {
        None => ceiling,
        Some(prev) if trouble => prev * t.decrease_factor,
        Some(prev) => prev + t.increase_fraction * ceiling,
    }
    .clamp(floor, ceiling);
    Budget { rate, ceiling }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_the_ceiling_halves_on_trouble_and_climbs_back() {
        let spec = Spec::with_defaults();
        let b = next(&spec, None, 10_000.0, false);
        assert_eq!(b.rate, 2_000.0, "capped by maxReconnectsPerSecond");
        let b = next(&spec, Some(b.rate), 10_000.0, true);
        assert_eq!(b.rate, 1_000.0);
        let b = next(&spec, Some(b.rate), 10_000.0, false);
        assert_eq!(b.rate, 1_200.0, "additive: 10% of the ceiling");
        let b = next(&spec, Some(b.rate), 900.0, false);
        assert_eq!(b.rate, 900.0, "capped by spare handshake capacity");
        let b = next(&spec, Some(0.01), 900.0, true);
        assert_eq!(b.rate, 1.0, "never below the floor");
        let b = next(&spec, Some(500.0), 0.0, false);
        assert_eq!(b.rate, 0.0, "no spare capacity: nothing may move");
    }

    #[test]
    fn organic_load_is_what_the_pods_see_minus_our_own_moves() {
        let spec = Spec::with_defaults();
        let r = PodReport {
            handshakes_per_second: 300.0,
            ..Default::default()
        };
        // 3 pods × 500/s capacity; they see 900/s of which 600/s were our planned moves.
        let organic = organic_rate([&r, &r, &r], 600.0);
        assert_eq!(organic, 300.0);
        assert_eq!(spare_capacity(&spec, 3, organic), 1_200.0);
        assert_eq!(
            spare_capacity(&spec, 3, organic_rate([&r, &r, &r], 0.0)),
            600.0
        );
    }

    #[test]
    fn trouble_signals() {
        let spec = Spec::with_defaults();
        let calm = PodReport {
            handshakes_per_second: 400.0,
            handshake_p99_seconds: 0.05,
            failed_handshakes: 3,
            ..Default::default()
        };
        assert!(!shows_trouble(&spec, &calm));
        assert!(shows_trouble(
            &spec,
            &PodReport {
                handshake_p99_seconds: 0.8,
                ..calm.clone()
            }
        ));
        assert!(shows_trouble(
            &spec,
            &PodReport {
                rate_refusals: 1,
                ..calm.clone()
            }
        ));
        assert!(shows_trouble(
            &spec,
            &PodReport {
                failed_handshakes: 20,
                ..calm
            }
        ));
    }
}
