//! Faults on the real control plane, with real agents: the data plane never depends on it.
//!
//! 1. The API server and etcd frozen (SIGSTOP) for 60 s, 1,000 agents connected and a move
//!    in flight (scale 3 → 4 at 20 reconnects/s): every agent stays served — no abrupt close,
//!    nobody offline — the directives lapse by themselves, and when the control plane returns
//!    (SIGCONT) the operator recovers on its own (it cannot renew its lease meanwhile, so it
//!    gives up leading within the renew deadline and its restarted process waits the lease
//!    out) and finishes the move.
//! 2. A sidecar killed with SIGKILL (the planner paused, so nothing else moves): its agents
//!    come back on the other pods, and no agent of another pod is disconnected.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use ballast_fleet::agents::{Fleet, FleetConfig};
use common::*;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::json;

const AGENTS: usize = 1_000;
const FROZEN: Duration = Duration::from_secs(60);

fn signal(pid: u32, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_plane_outlives_a_frozen_control_plane_and_a_killed_sidecar() {
    let lc = start(
        "chaos",
        &["ballast-sidecar", "ballast-fleet", "ballast-operator"],
    )
    .await;
    install_operator(&lc, 1);
    let ca_pem = apply_examples(&lc).await;
    let edge = example("presencecluster.yaml")
        .replace("maxReconnectsPerSecond: 500", "maxReconnectsPerSecond: 20");
    assert!(edge.contains("maxReconnectsPerSecond: 20"));
    let (ok, out) = apply(&lc, "edge.yaml", &edge);
    assert!(ok, "{out}");
    wait_ready(&lc, "edge", 3, Duration::from_secs(90)).await;
    let (targets, _follower) = follow_edge(&lc).await;
    wait_endpoints(&lc, &targets, 3).await;
    let mut config = FleetConfig::new(targets.clone(), AGENTS, ca_pem);
    config.duration = Duration::from_secs(900);
    config.ramp = Duration::from_secs(5);
    let fleet = Fleet::start(config).unwrap();
    fleet
        .wait_connected(AGENTS, Duration::from_secs(90))
        .await
        .unwrap();
    step!("{AGENTS} agents on 3 pods: {:?}", fleet.stats().per_target);

    // ------------------------------------------------- a move in flight, then the freeze
    prc_api(&lc)
        .patch(
            "edge",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 4}})),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(lc.client.clone(), NS);
    let new_addr = eventually("edge-3 Ready", Duration::from_secs(60), || async {
        let pod = pods.get("edge-3").await.map_err(|e| e.to_string())?;
        match pod.status.as_ref().and_then(|s| s.pod_ip.clone()) {
            Some(ip) if pod_ready(&pod) => Ok(format!("{ip}:8443")),
            _ => Err("not Ready".to_string()),
        }
    })
    .await;
    eventually("the move under way", Duration::from_secs(60), || async {
        let n = fleet
            .stats()
            .per_target
            .get(&new_addr)
            .copied()
            .unwrap_or(0);
        if n >= 20 {
            Ok(())
        } else {
            Err(format!("{n} on edge-3"))
        }
    })
    .await;
    let apiserver = lc.cluster.plane.pid_of("kube-apiserver").unwrap();
    let etcd = lc.cluster.plane.pid_of("etcd").unwrap();
    let before = fleet.stats();
    let frozen_at = Instant::now();
    signal(etcd, "STOP");
    signal(apiserver, "STOP");
    step!(
        "API server and etcd frozen with {} on edge-3; every second for {FROZEN:?}: nobody offline, no abrupt close",
        before.per_target.get(&new_addr).copied().unwrap_or(0)
    );
    let mut worst_offline = 0;
    while frozen_at.elapsed() < FROZEN {
        let s = fleet.stats();
        worst_offline = worst_offline.max(s.offline_now);
        assert_eq!(
            s.offline_now, 0,
            "an agent offline with the API server frozen: {s:?}"
        );
        assert_eq!(
            s.abrupt_closes, before.abrupt_closes,
            "an agent lost abruptly with the API server frozen"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let during = fleet.stats();
    signal(apiserver, "CONT");
    signal(etcd, "CONT");
    let thawed_at = Instant::now();
    step!(
        "thawed: {} connected, {} planned closes and {} abrupt during the freeze, longest gap {:?}",
        during.connected,
        during.graceful_closes - before.graceful_closes,
        during.abrupt_closes - before.abrupt_closes,
        during.longest_gap
    );

    // The operator recovers by itself and finishes the move.
    let mean = AGENTS as f64 / 4.0;
    let filled = eventually(
        "edge-3 within 10% of its share after the thaw",
        Duration::from_secs(180),
        || async {
            let n = fleet
                .stats()
                .per_target
                .get(&new_addr)
                .copied()
                .unwrap_or(0) as f64;
            if (n - mean).abs() <= 0.1 * mean {
                Ok(thawed_at.elapsed())
            } else {
                // What the operator says it waits for, should the move not finish.
                let s = prc_status(&lc, "edge").await.unwrap_or_default();
                Err(format!(
                    "{n} on edge-3; fleet {:?}; targets {:?}; waiting {}; budget {}; pods {}",
                    fleet.stats(),
                    targets.snapshot(),
                    s["waiting"],
                    s["reconnectBudgetPerSecond"],
                    s["pods"]
                ))
            }
        },
    )
    .await;
    wait_ready(&lc, "edge", 4, Duration::from_secs(60)).await;
    step!(
        "operator back on its own: edge-3 at its share {:.0}s after the thaw, edge Ready 4/4",
        filled.as_secs_f64()
    );

    // ------------------------------------------------- a sidecar killed
    prc_api(&lc)
        .patch(
            "edge",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"ballast.dev/paused": "true"}}})),
        )
        .await
        .unwrap();
    // Paused, and every agent where it is: nothing else moves from here on.
    eventually(
        "all connected, nobody moving",
        Duration::from_secs(60),
        || async {
            let a = fleet.stats();
            tokio::time::sleep(Duration::from_secs(3)).await;
            let b = fleet.stats();
            if b.connected == AGENTS && a.disconnects == b.disconnects {
                Ok(())
            } else {
                Err(format!(
                    "{} connected, {} disconnects in 3 s",
                    b.connected,
                    b.disconnects - a.disconnects
                ))
            }
        },
    )
    .await;
    let victim = pods.get("edge-0").await.unwrap();
    let victim_addr = format!(
        "{}:8443",
        victim.status.as_ref().unwrap().pod_ip.as_deref().unwrap()
    );
    let sidecar = *pids(&victim)
        .get("ballast-sidecar")
        .expect("edge-0's sidecar runs");
    let before = fleet.stats();
    let held = before.per_target.get(&victim_addr).copied().unwrap_or(0);
    assert!(held > 0, "edge-0 holds agents: {:?}", before.per_target);
    let killed_at = Instant::now();
    signal(sidecar, "KILL");
    let back = eventually(
        "every agent connected again",
        Duration::from_secs(60),
        || async {
            let s = fleet.stats();
            if s.connected == AGENTS && s.disconnects > before.disconnects {
                Ok(killed_at.elapsed())
            } else {
                Err(format!("{} connected", s.connected))
            }
        },
    )
    .await;
    let after = fleet.stats();
    step!(
        "edge-0's sidecar killed holding {held}: all back {:.1}s later; {} abrupt closes, {} planned",
        back.as_secs_f64(),
        after.abrupt_closes - before.abrupt_closes,
        after.graceful_closes - before.graceful_closes
    );
    assert!(
        after.disconnects - before.disconnects <= held as u64,
        "agents of other pods were disconnected: {} disconnects, edge-0 held {held}",
        after.disconnects - before.disconnects
    );
    assert_eq!(
        after.graceful_closes, before.graceful_closes,
        "nothing planned while paused"
    );
    let summary = fleet.stop().await;
    assert_eq!(summary.false_offline, 0, "{summary:?}");
    assert_eq!(worst_offline, 0);
}
