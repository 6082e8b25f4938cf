//! `ballast-fleet simulate`: a deterministic fleet simulator that replays the incident and
//! other events at a scale no test cluster reaches, side by side for the strategies people
//! use today and for Ballast — whose row runs `ballast-planner`, the operator's own code.
//!
//! - [`config`]: scenarios, strategies and every parameter, with stated defaults.
//! - [`world`]: agents, pods, handshake queues, the load balancer and time (0.1 s steps).
//! - [`strategy`]: what each strategy does once per simulated second.
//! - [`report`]: the figures and the table; [`plot`]: SVG plots; [`recommend`]: a search
//!   over the simulator for the pods and budget that keep false offline at 0.
//!
//! It never reads the wall clock inside a run (only for progress lines), and a run is a
//! function of its configuration and seed.

pub mod cli;
pub mod config;
pub mod plot;
pub mod recommend;
pub mod report;
pub mod strategy;
pub mod world;

use std::time::Instant;

use config::{SimConfig, Strategy};
use report::{Sample, ScenarioReport, StrategyResult};
use strategy::Controller;
use world::World;

/// One strategy's run: its figures and its per-second samples.
pub struct Run {
    pub result: StrategyResult,
    pub samples: Vec<Sample>,
    pub gaps: Vec<f32>,
    pub connected_at_event: u64,
}

/// Runs one strategy through the scenario. `progress` is called about every simulated minute.
pub fn run_strategy(cfg: &SimConfig, strategy: Strategy, progress: &dyn Fn(f64)) -> Run {
    let mut w = World::new(cfg);
    let mut ctl = Controller::new(strategy, cfg, &mut w);
    let seconds = cfg.duration.ceil() as usize;
    let mut samples = Vec::with_capacity(seconds);
    let mut ready = Vec::with_capacity(seconds);
    let mut peak = 0u64;
    let (mut last_reconnects, mut last_planned) = (0u64, 0u64);
    let mut connected_at_event = None;
    while w.now < cfg.duration - 1e-9 {
        if !w.advance() {
            continue;
        }
        if connected_at_event.is_none() && w.now >= cfg.event_at {
            connected_at_event = Some(w.connected());
        }
        ctl.tick(&mut w);
        peak = peak.max(
            w.pods
                .iter()
                .map(|p| p.last_second.handshakes)
                .max()
                .unwrap_or(0),
        );
        samples.push(Sample {
            connections: w.pods.iter().map(|p| p.connections() as u32).collect(),
            reconnects: w.totals.reconnects - last_reconnects,
            planned_closes: w.totals.planned_closes - last_planned,
        });
        ready.push(w.pods.iter().all(|p| p.ready) && !ctl.busy());
        last_reconnects = w.totals.reconnects;
        last_planned = w.totals.planned_closes;
        if samples.len() % 60 == 0 {
            progress(w.now);
        }
    }
    w.finish();
    let mut gaps = std::mem::take(&mut w.gaps);
    let result = StrategyResult {
        strategy: strategy.name(),
        false_offline: w.false_offline.iter().filter(|&&f| f).count() as u64,
        longest_gap_seconds: gaps.iter().copied().fold(0.0f32, f32::max).into(),
        p99_gap_seconds: report::quantile(&mut gaps, 0.99),
        time_to_balance_seconds: report::time_to_balance(
            &samples,
            &ready,
            cfg.event_at,
            cfg.tolerance,
        ),
        connections_moved: w.totals.planned_closes + w.totals.cut,
        peak_handshakes_per_pod: peak,
        refused: w.totals.refused,
        wasted_handshakes: w.totals.wasted_handshakes,
        connected_at_end: w.connected(),
        budget_per_second: (strategy == Strategy::Ballast).then_some(ctl.ceiling),
    };
    Run {
        result,
        samples,
        gaps,
        connected_at_event: connected_at_event.unwrap_or_else(|| w.connected()),
    }
}

/// Runs every strategy of `cfg`, two at a time (one per core), with progress on stderr for
/// runs that take more than a moment.
pub fn run_scenario(cfg: &SimConfig, quiet: bool) -> (ScenarioReport, Vec<Run>) {
    let started = Instant::now();
    let strategies = cfg.strategies.clone();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(strategies.len());
    let mut runs: Vec<Option<Run>> = (0..strategies.len()).map(|_| None).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&strategy) = strategies.get(i) else {
                    break;
                };
                let report_progress = |t: f64| {
                    if !quiet && started.elapsed().as_secs_f64() > 3.0 {
                        eprintln!(
                            "[simulate] {:?} {:<8} {:>5.0}/{:.0} simulated s ({:.0} s elapsed)",
                            cfg.scenario,
                            strategy.name(),
                            t,
                            cfg.duration,
                            started.elapsed().as_secs_f64()
                        );
                    }
                };
                let run = run_strategy(cfg, strategy, &report_progress);
                done.lock().expect("results").push((i, run));
            });
        }
    });
    for (i, run) in done.into_inner().expect("results") {
        runs[i] = Some(run);
    }
    let runs: Vec<Run> = runs
        .into_iter()
        .map(|r| r.expect("every strategy ran"))
        .collect();
    let connected = runs.first().map_or(0, |r| r.connected_at_event);
    let must_move = report::must_move(cfg, connected);
    let budget = runs
        .iter()
        .find_map(|r| r.result.budget_per_second)
        .unwrap_or(cfg.max_reconnects_per_second);
    let report = ScenarioReport {
        scenario: cfg.scenario,
        agents: cfg.agents,
        pods: cfg.pods,
        offline_threshold_seconds: cfg.offline_threshold,
        handshake_capacity_per_pod: cfg.handshakes_per_second,
        must_move,
        floor_seconds: must_move
            .filter(|_| budget > 0.0)
            .map(|m| m as f64 / budget),
        strategies: runs.iter().map(|r| r.result.clone()).collect(),
    };
    (report, runs)
}
