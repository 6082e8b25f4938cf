//! The simulator's promises: the incident replayed with its defaults shows what the issue
//! says it must, runs are deterministic, the output has the documented shape, plots are
//! written, and the command line refuses bad parameters with a clear error.

use std::process::Command;

use ballast_fleet::simulate::config::{Scenario, SimConfig, Strategy};
use ballast_fleet::simulate::{recommend, run_scenario, run_strategy};

fn small(scenario: Scenario) -> SimConfig {
    SimConfig {
        agents: 20_000,
        pods: 5,
        capacity: 8_000,
        duration: 900.0,
        ..SimConfig::for_scenario(scenario)
    }
}

#[test]
fn the_incident_with_its_defaults_reloader_against_ballast() {
    let cfg = SimConfig::for_scenario(Scenario::Incident);
    assert_eq!(
        (cfg.agents, cfg.pods, cfg.offline_threshold),
        (200_000, 10, 60.0)
    );
    let cfg = SimConfig {
        strategies: vec![Strategy::Reloader, Strategy::Ballast],
        ..cfg
    };
    let (report, _) = run_scenario(&cfg, true);
    let reloader = &report.strategies[0];
    let ballast = &report.strategies[1];
    assert_eq!(
        (reloader.strategy, ballast.strategy),
        ("reloader", "ballast")
    );
    assert!(
        reloader.false_offline > 1_000,
        "restarting every pod at once must show false offline agents: {reloader:?}"
    );
    assert!(
        reloader
            .time_to_balance_seconds
            .is_none_or(|t| t >= 3_600.0),
        "reloader must balance in hours or never: {reloader:?}"
    );
    assert_eq!(ballast.false_offline, 0, "{ballast:?}");
    let floor = report.floor_seconds.expect("the incident has a floor");
    let ttb = ballast
        .time_to_balance_seconds
        .expect("ballast balances the fleet");
    // Above the floor: each of the 10 pods' drains waits for the load balancer to stop
    // routing to it (2 s of propagation here) before it closes anything, and each successor
    // for the load balancer to route to it — about 4 s a pod, 40 s over the rollout, in
    // exchange for no agent sent where it would be moved again or refused.
    assert!(
        ttb <= 1.3 * floor,
        "ballast balanced in {ttb} s, more than 1.3x the floor of {floor} s"
    );
    assert!(ballast.peak_handshakes_per_pod <= 201, "{ballast:?}");
    assert_eq!(ballast.wasted_handshakes, 0);
}

#[test]
fn a_run_is_a_function_of_its_configuration_and_seed() {
    let cfg = small(Scenario::PodCrash);
    let a = run_strategy(&cfg, Strategy::Ballast, &|_| {});
    let b = run_strategy(&cfg, Strategy::Ballast, &|_| {});
    assert_eq!(
        serde_json::to_string(&a.result).unwrap(),
        serde_json::to_string(&b.result).unwrap()
    );
    let other = SimConfig { seed: 2, ..cfg };
    let c = run_strategy(&other, Strategy::Ballast, &|_| {});
    assert_ne!(a.gaps, c.gaps, "another seed is another run");
}

#[test]
fn every_scenario_runs_and_ballast_never_leaves_anyone_offline() {
    for scenario in [
        Scenario::RenewalHotReload,
        Scenario::RenewalRolling,
        Scenario::ScaleUp,
        Scenario::PodCrash,
        Scenario::NodeDrain,
        Scenario::MorningSurge,
    ] {
        let cfg = SimConfig {
            strategies: vec![Strategy::Ballast, Strategy::Rolling],
            ..small(scenario)
        };
        let (report, runs) = run_scenario(&cfg, true);
        let ballast = &report.strategies[0];
        assert_eq!(ballast.false_offline, 0, "{scenario:?}: {ballast:?}");
        assert_eq!(
            runs[0].samples.len(),
            900,
            "one sample per simulated second"
        );
        // Nobody is lost: everyone who arrived is connected at the end.
        assert_eq!(ballast.connected_at_end, cfg.agents, "{scenario:?}");
    }
}

#[test]
fn hot_reload_moves_older_certificates_within_the_window() {
    let cfg = SimConfig {
        reconnect_within: Some(300.0),
        strategies: vec![Strategy::Ballast],
        ..small(Scenario::RenewalHotReload)
    };
    let (report, runs) = run_scenario(&cfg, true);
    let b = &report.strategies[0];
    assert_eq!(b.false_offline, 0);
    assert_eq!(
        b.connections_moved, 20_000,
        "every connection re-handshakes once"
    );
    // All moves happen within the window (plus a tick), none before the renewal.
    let planned: Vec<u64> = runs[0].samples.iter().map(|s| s.planned_closes).collect();
    let event = cfg.event_at as usize;
    assert_eq!(planned[..event - 1].iter().sum::<u64>(), 0);
    assert_eq!(planned[event + 302..].iter().sum::<u64>(), 0);
    // Spread: no second holds more than the budget.
    assert!(planned
        .iter()
        .all(|&n| n as f64 <= cfg.max_reconnects_per_second));
}

#[test]
fn the_json_has_the_documented_fields() {
    let cfg = SimConfig {
        strategies: vec![Strategy::Reloader, Strategy::Ballast],
        ..small(Scenario::ScaleUp)
    };
    let (report, _) = run_scenario(&cfg, true);
    let v = serde_json::to_value(&report).unwrap();
    assert_eq!(v["scenario"], "scale-up");
    assert_eq!(v["agents"], 20_000);
    assert_eq!(v["pods"], 5);
    for s in v["strategies"].as_array().unwrap() {
        for field in [
            "strategy",
            "false_offline",
            "longest_gap_seconds",
            "p99_gap_seconds",
            "time_to_balance_seconds",
            "connections_moved",
            "peak_handshakes_per_pod",
            "refused",
        ] {
            assert!(s.get(field).is_some(), "{field} missing in {s}");
        }
    }
    assert!(
        v["strategies"][0]["time_to_balance_seconds"].is_null(),
        "reloader never rebalances a scale-up"
    );
    assert!(v["strategies"][1]["time_to_balance_seconds"].is_number());
}

#[test]
fn the_command_prints_json_writes_plots_and_refuses_bad_input() {
    let exe = env!("CARGO_BIN_EXE_ballast-fleet");
    let dir = std::env::temp_dir().join(format!("ballast-sim-{}", std::process::id()));
    let out = Command::new(exe)
        .args([
            "simulate",
            "--scenario",
            "pod-crash",
            "--agents",
            "5000",
            "--pods",
            "4",
        ])
        .args([
            "--duration",
            "300",
            "--strategies",
            "rolling,ballast",
            "--json",
            "--plot",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["strategies"].as_array().unwrap().len(), 2);
    for f in [
        "podcrash-ballast-connections.svg",
        "podcrash-rolling-connections.svg",
        "podcrash-reconnects.svg",
        "podcrash-gaps.svg",
    ] {
        let svg = std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(
            svg.starts_with("<svg") && svg.contains("<text"),
            "{f} is an SVG with labels"
        );
    }
    std::fs::remove_dir_all(&dir).ok();

    let yaml = std::env::temp_dir().join(format!("ballast-sim-{}.yaml", std::process::id()));
    let with_file = |contents: &str, extra: &[&str]| {
        std::fs::write(&yaml, contents).unwrap();
        Command::new(exe)
            .arg("simulate")
            .args(extra)
            .arg("--config")
            .arg(&yaml)
            .output()
            .unwrap()
    };
    let out = with_file("scenario: scale-up\npods: 0\n", &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pods must be 1 to 1000"), "{err}");
    let out = with_file("scenario: scale-up\nagent: 5\n", &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown field `agent`"),
        "a typo is an error: {err}"
    );
    let out = with_file(
        "scenario: scale-up\nagents: 5000\npods: 3\npods_changed: 1\nduration: 200\n",
        &["--print-config"],
    );
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("agents: 5000") && text.contains("scenario: scale-up"),
        "{text}"
    );
    std::fs::remove_file(&yaml).ok();
}

#[test]
fn the_recommendation_finds_enough_pods() {
    let cfg = SimConfig {
        agents: 12_000,
        capacity: 3_000,
        pods: 2,
        duration: 400.0,
        ..SimConfig::for_scenario(Scenario::PodCrash)
    };
    let r = recommend::recommend(&cfg, &|_| {}).expect("some pod count works");
    // 12,000 agents at 3,000 per pod need 4 pods; a crash needs room on the others: 5+.
    assert!(r.pods >= 5, "{r:?}");
    assert!(r.max_reconnects_per_second >= 100.0);
}
