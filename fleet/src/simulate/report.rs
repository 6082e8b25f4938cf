//! The figures of a run, per strategy: what a person needs to compare them side by side.

use serde::Serialize;

use super::config::{Scenario, SimConfig};

/// What one strategy did in one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct StrategyResult {
    pub strategy: &'static str,
    /// Agents disconnected longer than the offline threshold at least once.
    pub false_offline: u64,
    pub longest_gap_seconds: f64,
    pub p99_gap_seconds: f64,
    /// From the event until every pod stays within tolerance of the mean; null if never.
    pub time_to_balance_seconds: Option<f64>,
    /// Connections closed: planned closes plus connections cut by pods going down.
    pub connections_moved: u64,
    /// Most handshakes one pod computed in one second (wasted ones included).
    pub peak_handshakes_per_pod: u64,
    pub refused: u64,
    /// Handshakes computed for agents that had already given up.
    pub wasted_handshakes: u64,
    /// Connected agents at the end.
    pub connected_at_end: u64,
    /// Ballast only: the largest reconnect budget the planner allowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_per_second: Option<f64>,
}

/// A scenario's results, one row per strategy.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub scenario: Scenario,
    pub agents: u64,
    pub pods: usize,
    pub offline_threshold_seconds: f64,
    pub handshake_capacity_per_pod: f64,
    /// Connections that must move for the event, and the floor for balancing again:
    /// (connections that must move) ÷ (the budget), where there is one.
    pub must_move: Option<u64>,
    pub floor_seconds: Option<f64>,
    pub strategies: Vec<StrategyResult>,
}

/// One second of a run, for the plots.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub connections: Vec<u32>,
    pub reconnects: u64,
    pub planned_closes: u64,
}

/// `p`-quantile of `values` (sorted in place).
pub fn quantile(values: &mut [f32], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let i = ((values.len() - 1) as f64 * p).round() as usize;
    f64::from(values[i])
}

/// Seconds from `event_at` until every pod stays within `tolerance` of the mean for the rest
/// of the run (all pods up); `None` if it is not so at the end. Samples are one per second.
pub fn time_to_balance(
    samples: &[Sample],
    ready: &[bool],
    event_at: f64,
    tolerance: f64,
) -> Option<f64> {
    let balanced = |s: &Sample, r: bool| {
        if !r || s.connections.is_empty() {
            return false;
        }
        let sum: u64 = s.connections.iter().map(|&c| u64::from(c)).sum();
        let mean = sum as f64 / s.connections.len() as f64;
        if mean < 100.0 {
            // Too few agents for a share to mean anything: count as balanced.
            return true;
        }
        s.connections
            .iter()
            .all(|&c| (f64::from(c) - mean).abs() <= mean * tolerance)
    };
    let mut since: Option<usize> = None;
    for (i, s) in samples.iter().enumerate() {
        if balanced(s, ready[i]) {
            since.get_or_insert(i);
        } else {
            since = None;
        }
    }
    let i = since?;
    Some((i as f64 + 1.0 - event_at).max(0.0))
}

/// The connections that must move for the scenario's event, known when it happens.
pub fn must_move(cfg: &SimConfig, connected_at_event: u64) -> Option<u64> {
    let mean = connected_at_event as f64 / cfg.pods as f64;
    match cfg.scenario {
        // Every pod restarts, so every connection leaves its pod once; the first pod's
        // connections can only go to pods that restart later and so move twice; the pod
        // restarted last comes back empty and needs its share moved back: (pods + 2) shares.
        Scenario::Incident | Scenario::RenewalRolling => {
            Some(connected_at_event + (2.0 * mean).round() as u64)
        }
        Scenario::RenewalHotReload | Scenario::MorningSurge => None,
        Scenario::ScaleUp => {
            let after = connected_at_event as f64 / (cfg.pods + cfg.pods_changed) as f64;
            Some((after * cfg.pods_changed as f64).round() as u64)
        }
        Scenario::PodCrash => Some(mean.round() as u64),
        Scenario::NodeDrain => Some((mean * (cfg.pods_changed + 1) as f64).round() as u64),
    }
}

/// Prints the table a person reads.
pub fn print_table(r: &ScenarioReport) -> String {
    let mut out = String::new();
    let floor = match (r.must_move, r.floor_seconds) {
        (Some(m), Some(f)) => format!("; {m} connections must move, floor {f:.0} s at the budget"),
        _ => String::new(),
    };
    out.push_str(&format!(
        "scenario {:?}: {} agents on {} pods, offline after {:.0} s, {:.0} handshakes/s per pod{}\n",
        r.scenario, r.agents, r.pods, r.offline_threshold_seconds, r.handshake_capacity_per_pod, floor
    ));
    out.push_str(&format!(
        "{:<9} {:>13} {:>11} {:>9} {:>16} {:>11} {:>15} {:>9} {:>9}\n",
        "strategy",
        "false offline",
        "longest gap",
        "p99 gap",
        "time to balance",
        "moved",
        "peak hs/s/pod",
        "refused",
        "wasted hs"
    ));
    for s in &r.strategies {
        let ttb = s
            .time_to_balance_seconds
            .map_or("never".to_string(), |t| format!("{t:.0} s"));
        out.push_str(&format!(
            "{:<9} {:>13} {:>9.1} s {:>7.1} s {:>16} {:>11} {:>9} / {:<3.0} {:>9} {:>9}\n",
            s.strategy,
            s.false_offline,
            s.longest_gap_seconds,
            s.p99_gap_seconds,
            ttb,
            s.connections_moved,
            s.peak_handshakes_per_pod,
            r.handshake_capacity_per_pod,
            s.refused,
            s.wasted_handshakes
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(c: &[u32]) -> Sample {
        Sample {
            connections: c.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn balance_is_counted_from_the_event_and_must_hold_to_the_end() {
        let s = vec![
            sample(&[1000, 1000]),
            sample(&[2000, 0]),
            sample(&[1500, 500]),
            sample(&[1050, 950]),
            sample(&[1000, 1000]),
        ];
        let ready = vec![true; 5];
        assert_eq!(time_to_balance(&s, &ready, 1.0, 0.1), Some(3.0));
        let mut unbalanced_end = s.clone();
        unbalanced_end.push(sample(&[1500, 500]));
        assert_eq!(time_to_balance(&unbalanced_end, &[true; 6], 1.0, 0.1), None);
        assert_eq!(
            time_to_balance(&s, &[true, true, true, true, false], 1.0, 0.1),
            None
        );
    }

    #[test]
    fn quantiles() {
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(quantile(&mut v, 0.0), 1.0);
        assert_eq!(quantile(&mut v, 1.0), 5.0);
        assert_eq!(quantile(&mut v, 0.5), 3.0);
        assert_eq!(quantile(&mut [], 0.99), 0.0);
    }
}
