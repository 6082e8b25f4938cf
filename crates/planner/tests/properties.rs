//! Properties that hold for every fleet: proptest draws random fleets and specs, runs the
//! planner against the closed model, and checks every step.

mod common;

use ballast_planner::{plan, Spec, State};
use common::{worst_window, Model};
use proptest::prelude::*;

fn fleets() -> impl Strategy<Value = (Vec<u64>, Spec, bool, u32)> {
    (
        prop::collection::vec(0u64..5_000, 2..8),
        5u64..400,                    // budget
        1usize..3,                    // maxUnavailable
        0u64..30,                     // tolerance percent
        any::<bool>(),                // rolling restart of every pod
        1u32..5,                      // restart steps
        prop::option::of(10u64..200), // re-handshake window
    )
        .prop_map(
            |(counts, budget, max_unavailable, tol, roll, restart, within)| {
                let mut spec = Spec::with_defaults();
                spec.max_reconnects_per_second = budget as f64;
                spec.max_unavailable = max_unavailable;
                spec.tolerance = tol as f64 / 100.0;
                spec.reconnect_within = within.map(|w| w as f64);
                // Room for everyone even with one pod out.
                let total: u64 = counts.iter().sum();
                spec.max_connections_per_pod = (total / counts.len().max(2) as u64 * 3).max(6_000);
                (counts, spec, roll, restart)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn every_step_keeps_every_promise((counts, spec, roll, restart) in fleets()) {
        let mut m = Model::new(&counts);
        m.restart_steps = restart;
        let total = m.total();
        for p in &mut m.pods {
            p.up_to_date = !roll;
            p.older = if spec.reconnect_within.is_some() { p.connections } else { 0 };
        }
        // Enough steps to move every connection twice at the usable budget (the budget less
        // the one-close-per-pod rounding reserve), plus every restart and the re-handshake window.
        let usable = (spec.max_reconnects_per_second as u64).saturating_sub(m.pods.len() as u64).max(1);
        let window = spec.reconnect_within.unwrap_or(0.0) as u64;
        let max_steps = 60 + window + 3 * total / usable + m.pods.len() as u64 * (u64::from(restart) + 3);
        // Balanced: every pod within the tolerance of the mean, or within the planner's
        // `min_move` (it does not chase a handful of connections).
        let balanced = |m: &Model| {
            let mean = total as f64 / m.pods.len() as f64;
            let band = (mean * spec.tolerance).max(spec.tuning.min_move as f64) + 1.0;
            m.pods.iter().all(|p| (p.connections as f64 - mean).abs() <= band)
        };
        for _ in 0..max_steps {
            if m.state.rollout.is_none() && m.pods.iter().all(|p| p.up_to_date && p.ready && p.older == 0) && balanced(&m) {
                break;
            }
            let before: Vec<u64> = m.pods.iter().map(|p| p.connections).collect();
            let any_ready = m.pods.iter().any(|x| x.ready);
            let p = m.step(&spec);
            // The budget: never above the spec, and this step's closes within it.
            prop_assert!(p.budget <= spec.max_reconnects_per_second + 1e-9);
            prop_assert!(p.closes as f64 <= (p.budget * spec.tuning.interval).floor());
            // Never more restarting (not Ready) than maxUnavailable.
            let not_ready = m.pods.iter().filter(|x| !x.ready).count();
            prop_assert!(not_ready <= spec.max_unavailable, "{} not ready", not_ready);
            // Never no accepting pod while any pod is Ready.
            if any_ready {
                prop_assert!(p.pods.iter().any(|x| x.accepting), "nobody accepts");
            }
            // Never planned over capacity: what moves this step, spread evenly over the
            // accepting pods, fits each of them.
            let accepting: Vec<usize> = (0..m.pods.len()).filter(|&i| p.pods[i].accepting).collect();
            if p.closes > 0 {
                let share = (p.closes + p.in_flight).div_ceil(accepting.len() as u64);
                for &i in &accepting {
                    prop_assert!(before[i] + share <= spec.max_connections_per_pod,
                        "pod {} at {} would take {} over capacity {}", i, before[i], share, spec.max_connections_per_pod);
                }
            }
            // Nothing is lost.
            prop_assert_eq!(m.total(), total);
        }
        // In any 1 s window, the closes laid out by the sidecars' pacing stay within budget.
        if let Some((count, budget)) = worst_window(&m.close_times) {
            prop_assert!(count as f64 <= budget.floor(), "{} closes in 1 s against a budget of {}", count, budget);
        }
        // And it got somewhere: every pod up to date, within tolerance.
        prop_assert!(m.pods.iter().all(|p| p.up_to_date && p.ready));
        prop_assert!(m.state.rollout.is_none(), "rollout unfinished: {:?}", m.state.rollout);
        prop_assert!(balanced(&m), "imbalance {} > tolerance {} after {} steps: {:?}", m.imbalance(), spec.tolerance, max_steps, m.pods);
        prop_assert!(m.pods.iter().all(|p| p.older == 0), "older certificates left: {:?}", m.pods);
        // Each pod restarted at most once by a rollout, and all of them if they were stale.
        let mut restarted = m.restarts.clone();
        restarted.sort();
        restarted.dedup();
        prop_assert_eq!(restarted.len(), m.restarts.len(), "a pod restarted twice");
        if roll { prop_assert_eq!(m.restarts.len(), m.pods.len()); }
    }

    #[test]
    fn rebalancing_converges_in_bounded_steps(counts in prop::collection::vec(0u64..20_000, 2..10), budget in 50u64..2_000) {
        let mut spec = Spec::with_defaults();
        spec.max_reconnects_per_second = budget as f64;
        let mut m = Model::new(&counts);
        let total = m.total();
        let n = counts.len() as u64;
        prop_assume!(total >= 100 * n);
        let mean = total / n;
        let must_move: u64 = counts.iter().map(|&c| mean.saturating_sub(c)).sum();
        // The floor is must_move / budget; allow twice that plus a few steps for the
        // rounding reserve and the in-flight accounting.
        let usable = (budget.saturating_sub(n)).max(1);
        let bound = 2 * must_move.div_ceil(usable) + 10;
        let mut steps = 0;
        while m.imbalance() > 1.0 + spec.tolerance {
            m.step(&spec);
            steps += 1;
            prop_assert!(steps <= bound, "not within tolerance after {} steps (bound {}): {:?}", steps, bound, m.pods);
        }
        // And it stays there: no ping-pong.
        for _ in 0..50 {
            let p = m.step(&spec);
            prop_assert!(m.imbalance() <= 1.0 + spec.tolerance, "left tolerance again: {:?} {:?}", m.pods, p.actions);
        }
    }

    #[test]
    fn a_planner_restored_from_its_serialized_state_plans_the_same_next_step(
        (counts, spec, roll, restart) in fleets(), steps in 0usize..60,
    ) {
        let mut m = Model::new(&counts);
        m.restart_steps = restart;
        for p in &mut m.pods { p.up_to_date = !roll; p.older = p.connections / 2; }
        for _ in 0..steps { m.step(&spec); }
        let obs = m.observe();
        let live = plan(&spec, &obs, &m.state);
        let json = serde_json::to_string(&m.state).unwrap();
        let restored: State = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&restored, &m.state);
        let again = plan(&spec, &obs, &restored);
        prop_assert_eq!(live, again);
    }
}
