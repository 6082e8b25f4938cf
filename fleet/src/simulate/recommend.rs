//! "What keeps false offline at 0?": a search over the simulator for projected traffic.
//!
//! For the scenario as configured, it finds the fewest pods with which Ballast keeps every
//! agent under the offline threshold and the fleet within capacity, then the largest budget
//! (`maxReconnectsPerSecond`) that still does, which is the one that balances fastest.

use super::config::{SimConfig, Strategy};
use super::run_strategy;

/// The answer, for printing.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Recommendation {
    pub pods: usize,
    pub max_reconnects_per_second: f64,
    pub time_to_balance_seconds: Option<f64>,
    pub runs: usize,
}

fn fine(cfg: &SimConfig) -> (bool, Option<f64>) {
    let run = run_strategy(cfg, Strategy::Ballast, &|_| {});
    let r = run.result;
    (
        r.false_offline == 0 && r.connected_at_end * 100 >= cfg.agents * 99,
        r.time_to_balance_seconds,
    )
}

/// Searches pods (doubling, then bisecting), then budgets from a ladder.
pub fn recommend(base: &SimConfig, progress: &dyn Fn(&str)) -> Option<Recommendation> {
    let mut runs = 0;
    let mut try_pods = |pods: usize| {
        let cfg = SimConfig {
            pods,
            ..base.clone()
        };
        runs += 1;
        progress(&format!("trying {pods} pods"));
        fine(&cfg).0
    };
    // Fewest pods that hold everyone at capacity is the lower bound.
    let mut lo = (base.agents.div_ceil(base.capacity) as usize).max(1);
    let mut hi = lo;
    while !try_pods(hi) {
        lo = hi + 1;
        hi *= 2;
        if hi > 1_000 {
            return None;
        }
    }
    while lo < hi {
        let mid = (lo + hi) / 2;
        if try_pods(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let pods = hi;
    let mut best: Option<(f64, Option<f64>)> = None;
    for budget in [100.0, 200.0, 500.0, 1_000.0, 2_000.0, 5_000.0] {
        let cfg = SimConfig {
            pods,
            max_reconnects_per_second: budget,
            ..base.clone()
        };
        runs += 1;
        progress(&format!("trying {pods} pods at {budget:.0} reconnects/s"));
        let (ok, ttb) = fine(&cfg);
        if ok {
            best = Some((budget, ttb));
        }
    }
    let (budget, ttb) = best?;
    Some(Recommendation {
        pods,
        max_reconnects_per_second: budget,
        time_to_balance_seconds: ttb,
        runs,
    })
}
