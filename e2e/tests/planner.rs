//! The planner on the real control plane with real agents: the operator acts on the reports.
//!
//! Scale 3 → 4 with agents connected: only the excess moves, from the loaded pods to the new
//! one, within the budget; the new pod reaches its share within 1.5 × (connections to move ÷
//! budget) plus the endpoint propagation delay; no other pod is drained below its share;
//! nobody is dropped.
//!
//! The propagation delay is measured, not assumed: from edge-3's Ready until the followed
//! endpoints route new connections only where the plan wants them (edge-3 listed, every donor
//! steered out). It holds the sidecar's readiness period (2 s), the kubelet's status write, the
//! endpoint update and the follower's poll, and on a loaded machine each of them stretches.
//! So can reports: a plan that held because a routed pod's report was missing (counted by the
//! operator's `plan_waits` metric) adds its interval to the bound.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ballast_fleet::agents::{Fleet, FleetConfig};
use common::*;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::json;

const AGENTS: usize = 2_000;
/// Planned reconnects per second: low enough that the move takes seconds, not a blink.
const BUDGET: f64 = 50.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_rebalances_within_the_budget() {
    let lc = start(
        "planner",
        &["ballast-sidecar", "ballast-fleet", "ballast-operator"],
    )
    .await;
    // Confined to the examples' namespace: the chart grants Roles there, not cluster-wide, and
    // everything below (reports, planning, steering, status) must work with them alone.
    // (The namespace exists first: the chart puts its Role there.)
    let (ok, out) = apply(&lc, "namespace.yaml", &example("namespace.yaml"));
    assert!(ok, "{out}");
    install_operator_with(&lc, 1, &["--set", &format!("watchNamespace={NS}")]);
    let sa = "system:serviceaccount:ballast-system:ballast";
    for (verb, resource, ns, allowed) in [
        ("list", "statefulsets.apps", NS, true),
        ("list", "statefulsets.apps", "default", false),
        ("get", "secrets", NS, true),
        ("get", "secrets", "default", false),
        ("create", "tokenreviews.authentication.k8s.io", NS, true),
    ] {
        let (_, out) = lc.run(
            "kubectl",
            &["auth", "can-i", verb, resource, "-n", ns, "--as", sa],
        );
        assert_eq!(
            out.trim().starts_with("yes"),
            allowed,
            "can-i {verb} {resource} -n {ns}: {out}"
        );
    }
    let ca_pem = apply_examples(&lc).await;
    let edge = example("presencecluster.yaml")
        .replace("drainTimeout: 30s", "drainTimeout: 5s")
        .replace(
            "maxReconnectsPerSecond: 500",
            &format!("maxReconnectsPerSecond: {BUDGET}"),
        );
    assert!(edge.contains(&format!("maxReconnectsPerSecond: {BUDGET}")));
    let (ok, out) = apply(&lc, "edge.yaml", &edge);
    assert!(ok, "{out}");
    wait_ready(&lc, "edge", 3, Duration::from_secs(90)).await;
    step!("edge Ready with 3 pods, budget {BUDGET}/s");

    let (targets, _follower) = follow_edge(&lc).await;
    wait_endpoints(&lc, &targets, 3).await;
    let mut config = FleetConfig::new(targets.clone(), AGENTS, ca_pem);
    config.duration = Duration::from_secs(600);
    config.ramp = Duration::from_secs(10);
    let fleet = Fleet::start(config).unwrap();
    fleet
        .wait_connected(AGENTS, Duration::from_secs(90))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(lc.client.clone(), NS);
    let addr_of = |pod: &Pod| {
        format!(
            "{}:8443",
            pod.status.as_ref().unwrap().pod_ip.as_deref().unwrap()
        )
    };
    let mut old = BTreeMap::new();
    for name in ["edge-0", "edge-1", "edge-2"] {
        old.insert(name, addr_of(&pods.get(name).await.unwrap()));
    }
    let spread: Vec<usize> = old
        .values()
        .map(|a| fleet.stats().per_target.get(a).copied().unwrap_or(0))
        .collect();
    step!("{AGENTS} agents on 3 pods: {spread:?}");
    // However the agents first landed, the planner evens them out before anything else.
    let t = Instant::now();
    eventually("3 pods balanced", Duration::from_secs(120), || async {
        let stats = fleet.stats();
        let counts: Vec<usize> = old
            .values()
            .map(|a| stats.per_target.get(a).copied().unwrap_or(0))
            .collect();
        let mean = AGENTS as f64 / 3.0;
        if counts
            .iter()
            .all(|&c| (c as f64 - mean).abs() <= 0.1 * mean)
        {
            Ok(())
        } else {
            Err(format!("{counts:?}"))
        }
    })
    .await;
    step!("3 pods balanced {:.1}s later", t.elapsed().as_secs_f64());

    prc_api(&lc)
        .patch(
            "edge",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 4}})),
        )
        .await
        .unwrap();
    let new_addr = eventually("edge-3 Ready", Duration::from_secs(60), || async {
        let pod = pods.get("edge-3").await.map_err(|e| e.to_string())?;
        if pod_ready(&pod) {
            Ok(addr_of(&pod))
        } else {
            Err("not Ready".to_string())
        }
    })
    .await;
    let ready_at = Instant::now();
    let blind_before = plans_without_a_report(&lc).await;
    let mean = AGENTS as f64 / 4.0;
    let tolerance = 0.10;
    let to_move = AGENTS as f64 - 3.0 * mean;
    let move_bound = Duration::from_secs_f64(1.5 * to_move / BUDGET);
    let new_ip = new_addr.parse::<std::net::SocketAddr>().unwrap();
    let old_ips: Vec<std::net::SocketAddr> = old.values().map(|a| a.parse().unwrap()).collect();
    // When the endpoints first listed edge-3, and first routed to it alone.
    let (mut listed, mut routed) = (None::<Duration>, None::<Duration>);
    // Sampled every 250 ms over the whole move: the new pod's count, and the lowest each old
    // pod reached.
    let mut lowest: BTreeMap<&str, usize> = old.keys().map(|k| (*k, usize::MAX)).collect();
    let mut budgets = (i64::MAX, i64::MIN);
    let mut last_line = Instant::now();
    let mut waits = std::collections::BTreeSet::new();
    let filled = loop {
        let stats = fleet.stats();
        for (name, addr) in &old {
            let n = stats.per_target.get(addr).copied().unwrap_or(0);
            let low = lowest.get_mut(name).unwrap();
            *low = (*low).min(n);
        }
        if let Ok(s) = prc_status(&lc, "edge").await {
            let b = s["reconnectBudgetPerSecond"].as_i64().unwrap_or(-1);
            budgets.0 = budgets.0.min(b);
            budgets.1 = budgets.1.max(b);
            if let Some(w) = s["waiting"].as_str() {
                waits.insert(w.split(':').next().unwrap_or(w).to_owned());
            }
        }
        let routing = targets.snapshot();
        if listed.is_none() && routing.contains(&new_ip) {
            listed = Some(ready_at.elapsed());
        }
        if routed.is_none()
            && routing.contains(&new_ip)
            && !routing.iter().any(|a| old_ips.contains(a))
        {
            routed = Some(ready_at.elapsed());
        }
        let on_new = stats.per_target.get(&new_addr).copied().unwrap_or(0) as f64;
        if last_line.elapsed() >= Duration::from_secs(2) {
            last_line = Instant::now();
            let counts: Vec<usize> = old
                .values()
                .chain([&new_addr])
                .map(|a| stats.per_target.get(a).copied().unwrap_or(0))
                .collect();
            step!(
                "  t={:.0}s {counts:?} endpoints {} reconnects {}",
                ready_at.elapsed().as_secs_f64(),
                targets.snapshot().len(),
                stats.reconnects
            );
        }
        if (on_new - mean).abs() <= tolerance * mean {
            break ready_at.elapsed();
        }
        assert!(
            ready_at.elapsed() < move_bound * 3 + Duration::from_secs(30),
            "edge-3 holds {on_new} of a mean {mean} after {:?}",
            ready_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let propagation = routed
        .or(listed)
        .expect("edge-3 holds agents, so it was listed");
    // Plans held because a routed pod's reports stopped arriving (a loaded machine can delay
    // them past the operator's freshness window): the planner moves nothing it cannot see,
    // which is right but not its pace. Each is one report interval (1 s).
    let blind = plans_without_a_report(&lc).await - blind_before;
    let bound = move_bound + propagation + Duration::from_secs_f64(blind);
    // Keep watching a little longer: the donors must stop at their share.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(5) {
        let stats = fleet.stats();
        for (name, addr) in &old {
            let n = stats.per_target.get(addr).copied().unwrap_or(0);
            let low = lowest.get_mut(name).unwrap();
            *low = (*low).min(n);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let stats = fleet.stats();
    let finally: Vec<usize> = old
        .values()
        .chain([&new_addr])
        .map(|a| stats.per_target.get(a).copied().unwrap_or(0))
        .collect();
    step!(
        "budget in status between {} and {}/s during the move; waits {waits:?}; reconnects {}",
        budgets.0,
        budgets.1,
        fleet.stats().reconnects
    );
    step!(
        "scale 3 → 4: edge-3 within {:.0}% of the mean {mean} {:.1}s after Ready (bound {:.1}s = 1.5 × {to_move} ÷ {BUDGET}/s + propagation {:.1}s: listed at {listed:.1?}, donors steered out at {routed:.1?}, + {blind} plans held for a missing report); lowest on the old pods {lowest:?}; now {finally:?}",
        tolerance * 100.0,
        filled.as_secs_f64(),
        bound.as_secs_f64(),
        propagation.as_secs_f64(),
    );
    assert!(filled <= bound, "filled in {filled:?}, bound {bound:?}");
    for (name, low) in &lowest {
        assert!(
            *low as f64 >= mean * (1.0 - tolerance),
            "{name} was drained to {low}, below its share {mean}"
        );
    }
    let s = prc_status(&lc, "edge").await.unwrap();
    assert!(
        s["reconnectBudgetPerSecond"].as_i64().unwrap_or(0) > 0,
        "the budget shows in status: {s}"
    );
    let summary = fleet.stop().await;
    assert_eq!(summary.abrupt_closes, 0, "{summary:?}");
    step!(
        "budget in status {}/s; {summary:?}",
        s["reconnectBudgetPerSecond"]
    );
}

/// Plans so far that held rebalancing because a Ready pod had no fresh report, from the
/// operator's `ballast_operator_plan_waits_total` (one operator replica in this suite).
async fn plans_without_a_report(lc: &LocalCluster) -> f64 {
    let pods: Api<Pod> = Api::namespaced(lc.client.clone(), OPERATOR_NS);
    let list = pods.list(&Default::default()).await.unwrap();
    let ip = list
        .items
        .iter()
        .find_map(|p| p.status.as_ref()?.pod_ip.clone())
        .expect("the operator pod has an address");
    let (_, text) = http_get(format!("{ip}:8080").parse().unwrap(), "/metrics")
        .await
        .unwrap();
    metric(
        &text,
        &format!(
            "ballast_operator_plan_waits_total{{namespace=\"{NS}\",name=\"edge\",reason=\"noReport\"}}"
        ),
    )
}
