//! The operator end to end, on the real control plane with the process kubelet: installed
//! with helm and running under its chart's ServiceAccount, reconciling the project's
//! examples into Ready gateway pods, scaling, refusing bad specs, reporting a missing Secret
//! and recovering, cleaning up on delete, and holding no more RBAC than it uses.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use ballast_contract::ticket_keys::{self, TicketKeys};
use ballast_fleet::agents::{Fleet, FleetConfig};
use ballast_fleet::certs::{Ca, Validity};
use common::*;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;

const SA: &str = "system:serviceaccount:ballast-system:ballast";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_end_to_end() {
    let lc = start(
        "operator",
        &["ballast-sidecar", "ballast-fleet", "ballast-operator"],
    )
    .await;

    // ------------------------------------------------------------ helm install
    let chart = workspace().join("charts/ballast");
    let (ok, out) = lc.run("helm", &["lint", chart.to_str().unwrap()]);
    assert!(ok && out.contains("0 chart(s) failed"), "helm lint:\n{out}");
    install_operator(&lc, 2);
    step!("helm install: operator Deployment ready");
    let operator_pods: Api<Pod> = Api::namespaced(lc.client.clone(), OPERATOR_NS);
    let operator = operator_pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=ballast-operator"))
        .await
        .unwrap()
        .items;
    assert_eq!(operator.len(), 2, "two replicas, one leader");
    for pod in &operator {
        assert!(pod_ready(pod));
        let account = pod.spec.as_ref().unwrap().service_account_name.as_deref();
        assert_eq!(
            account,
            Some("ballast"),
            "runs under the chart's ServiceAccount"
        );
        assert!(
            pids(pod).values().all(|pid| pid_alive(*pid)),
            "the operator pod's process is running"
        );
    }

    // ------------------------------------------------------------ the examples
    apply_examples(&lc).await;
    let secrets: Api<Secret> = Api::namespaced(lc.client.clone(), NS);
    // The example, with a short drain so that scaling down is quick in a test.
    // Rebalancing is off here: this suite counts every planned close of one deleted pod's
    // migration; e2e/tests/planner.rs shows rebalancing.
    let edge = example("presencecluster.yaml")
        .replace("drainTimeout: 30s", "drainTimeout: 3s")
        .replace(
            "  presence: {offlineThreshold: 60s, events: {enabled: true}}",
            "  presence: {offlineThreshold: 60s, events: {enabled: true}}\n  rebalance: {enabled: false}",
        );
    assert!(edge.contains("drainTimeout: 3s") && edge.contains("rebalance: {enabled: false}"));
    let (ok, out) = apply(&lc, "edge.yaml", &edge);
    assert!(ok, "{out}");
    wait_ready(&lc, "edge", 3, Duration::from_secs(90)).await;
    step!("examples applied: edge Ready with 3 pods");

    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(lc.client.clone(), OPERATOR_NS);
    let holder = leases
        .get("ballast-operator")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    let mut reconciling = Vec::new();
    for pod in &operator {
        let ip = pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
        let (_, metrics) = http_get(format!("{ip}:8080").parse().unwrap(), "/metrics")
            .await
            .unwrap();
        let reconciles = metric(&metrics, "ballast_operator_reconciles_total");
        if reconciles > 0.0 {
            reconciling.push(pod.metadata.name.clone().unwrap());
        }
    }
    assert_eq!(
        reconciling,
        vec![holder.clone()],
        "only the Lease holder reconciles"
    );
    step!("leader election: {holder} holds the Lease and is the only one reconciling");

    // Failover: the leader's pod goes; it releases the Lease on SIGTERM and another replica
    // (the follower, or the Deployment's replacement pod if it asks first) takes over and
    // goes on reconciling: every step below runs under the new leader.
    let old = holder.clone();
    let deleted_at = std::time::Instant::now();
    operator_pods
        .delete(&old, &DeleteParams::default())
        .await
        .unwrap();
    let holder = eventually(
        "another replica takes the Lease",
        Duration::from_secs(30),
        || async {
            let now = leases
                .get("ballast-operator")
                .await
                .map_err(|e| e.to_string())?
                .spec
                .and_then(|s| s.holder_identity)
                .unwrap_or_default();
            if !now.is_empty() && now != old {
                Ok(now)
            } else {
                Err(format!("holder {now:?}"))
            }
        },
    )
    .await;
    step!(
        "failover: {holder} took the Lease {:.1}s after {old}'s pod was deleted",
        deleted_at.elapsed().as_secs_f64()
    );

    let sts: Api<StatefulSet> = Api::namespaced(lc.client.clone(), NS);
    let set = sts.get("edge").await.unwrap();
    let containers = &set.spec.template.spec.as_ref().unwrap().containers;
    assert_eq!(
        containers
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["gateway", "ballast-sidecar"]
    );
    let services: Api<Service> = Api::namespaced(lc.client.clone(), NS);
    assert!(services.get_opt("edge").await.unwrap().is_some());
    assert!(services.get_opt("edge-pods").await.unwrap().is_some());
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(lc.client.clone(), NS);
    assert!(pdbs.get_opt("edge").await.unwrap().is_some());

    // Agents through the Service, as kube-proxy would route them: every attempt picks among
    // the endpoints that are ready now (followed every 500 ms).
    let (targets, _follower) = follow_edge(&lc).await;
    assert_eq!(targets.snapshot().len(), 3);
    let ca_pem = String::from_utf8(
        secrets.get("agents-tls").await.unwrap().data.unwrap()["ca.crt"]
            .0
            .clone(),
    )
    .unwrap();
    const AGENTS: usize = 1_500;
    let mut config = FleetConfig::new(targets.clone(), AGENTS, ca_pem.clone());
    config.duration = Duration::from_secs(900);
    config.ramp = Duration::from_secs(10);
    let fleet = Fleet::start(config).unwrap();
    fleet
        .wait_connected(AGENTS, Duration::from_secs(90))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(lc.client.clone(), NS);
    let ip_of = |pod: &Pod| pod.status.as_ref().unwrap().pod_ip.clone().unwrap();

    // Shared session-ticket keys: one Secret owned by the cluster with a current and a next
    // key, loaded by every pod's sidecar (so an agent a drain moves resumes on the next pod).
    let keys = secrets.get("edge-ticket-keys").await.unwrap();
    assert!(keys
        .metadata
        .owner_references
        .as_ref()
        .unwrap()
        .iter()
        .any(|o| o.kind == "PresenceCluster" && o.name == "edge"));
    let file = TicketKeys::parse(&keys.data.unwrap()[ticket_keys::FILE_NAME].0).unwrap();
    assert_eq!(file.keys.len(), 2, "{file:?}");
    let edge_pods = pods
        .list(&ListParams::default().labels("ballast.dev/presencecluster=edge"))
        .await
        .unwrap();
    for pod in &edge_pods.items {
        let (_, body) = http_get(format!("{}:9901", ip_of(pod)).parse().unwrap(), "/status")
            .await
            .unwrap();
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status["session_tickets"]["keys_loaded"], 2, "{body}");
    }
    step!(
        "session tickets: Secret edge-ticket-keys with 2 keys, loaded by {} sidecars",
        edge_pods.items.len()
    );
    // Status equals the fleet's own count, in total and per pod, from the reports alone.
    let per_pod = eventually(
        "status matches the fleet's count per pod",
        Duration::from_secs(30),
        || async {
            let s = prc_status(&lc, "edge").await?;
            let live = fleet.stats();
            let mut per_pod = Vec::new();
            for entry in s["pods"].as_array().cloned().unwrap_or_default() {
                let name = entry["name"].as_str().unwrap_or("").to_owned();
                let pod = pods.get(&name).await.map_err(|e| e.to_string())?;
                let seen = live
                    .per_target
                    .get(&format!("{}:8443", ip_of(&pod)))
                    .copied()
                    .unwrap_or(0) as i64;
                let reported = entry["connections"].as_i64().unwrap_or(-1);
                if (reported - seen).abs() as f64 > 0.01 * seen.max(1) as f64 {
                    return Err(format!("{name}: status {reported}, fleet {seen}"));
                }
                per_pod.push((name, reported));
            }
            let total = s["connections"].as_i64().unwrap_or(0);
            if per_pod.len() == 3
                && s["reportingPods"] == 3
                && (total - live.connected as i64).abs() as f64 <= 0.01 * live.connected as f64
                && s["phase"] == "Stable"
            {
                Ok(per_pod)
            } else {
                Err(format!("fleet {} connected; status: {s}", live.connected))
            }
        },
    )
    .await;
    step!("{AGENTS} agents: status per pod {per_pod:?} equals the fleet's own count, from authenticated reports");

    // ------------------------------------------------------------ a cert-manager renewal
    // Renewed the way `cmctl renew` does it: the Certificate gets Issuing=True and cert-manager
    // issues a new pair (new key: rotationPolicy Always) into agents-tls. Timed from the moment
    // the new Secret is visible in the API to status showing its fingerprint served by 3/3.
    let before = prc_status(&lc, "edge").await.unwrap()["certificate"]["sha256"].clone();
    let renewed_at = renew_certificate(&lc).await;
    let renewed = eventually(
        "status shows the renewed certificate served by every pod",
        Duration::from_secs(30),
        || async {
            let s = prc_status(&lc, "edge").await?;
            let c = &s["certificate"];
            if c["sha256"] != before && c["served"] == "3/3" {
                Ok(c.clone())
            } else {
                Err(format!("certificate status {c}, before {before}"))
            }
        },
    )
    .await;
    let reflected = renewed_at.elapsed().as_secs_f64();
    // Status tells the truth: the fingerprint it names is what every pod now serves.
    for pod in pods
        .list(&ListParams::default().labels("ballast.dev/presencecluster=edge"))
        .await
        .unwrap()
        .items
    {
        assert_eq!(
            sidecar_sha256(&ip_of(&pod)).await.unwrap(),
            renewed["sha256"].as_str().unwrap(),
            "{} serves another certificate than status says",
            pod.metadata.name.unwrap_or_default()
        );
    }
    assert!(
        reflected <= 5.0,
        "status showed the renewal {reflected:.1}s after the Secret changed (goal: 5 s)"
    );
    step!(
        "cert-manager renewal: status showed the new fingerprint served 3/3 {reflected:.1}s after the Secret changed"
    );
    // Refreshed at least every 2 s: connections on one pod move, status follows.
    let operator_ca = {
        let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
            Api::namespaced(lc.client.clone(), NS);
        let cm = cms.get("edge-operator-ca").await.unwrap();
        let path = lc.dir.join("operator-ca.pem");
        std::fs::write(&path, &cm.data.unwrap()["ca.crt"]).unwrap();
        path
    };

    // ------------------------------------------------------------ refusals
    let edge0 = pods.get("edge-0").await.unwrap();
    let token_for = |pod: Pod, audience: &'static str| {
        let client = lc.client.clone();
        async move {
            let ns = pod.metadata.namespace.clone().unwrap();
            let sa = pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into());
            let api: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client, &ns);
            let body = json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {
                    "audiences": [audience],
                    "expirationSeconds": 600,
                    "boundObjectRef": {"kind": "Pod", "apiVersion": "v1",
                        "name": pod.metadata.name, "uid": pod.metadata.uid},
                },
            });
            let granted: k8s_openapi::api::authentication::v1::TokenRequest = api
                .create_subresource("token", &sa, &PostParams::default(), &body)
                .await
                .unwrap();
            granted.status.unwrap().token.expect("a token")
        }
    };
    let report_as = |token: Option<String>, source: Option<String>| {
        let mut args = vec![
            "-s".to_owned(),
            "-w".into(),
            "\n%{http_code}".into(),
            "--max-time".into(),
            "5".into(),
            "--cacert".into(),
            operator_ca.display().to_string(),
            "-H".into(),
            "content-type: application/json".into(),
            "--data".into(),
            "{}".into(),
        ];
        if let Some(t) = token {
            args.extend(["-H".into(), format!("Authorization: Bearer {t}")]);
        }
        if let Some(ip) = source {
            args.extend(["--interface".into(), ip]);
        }
        args.push(format!("https://{}/v1/report", lc.report_address));
        // Each curl is a new connection, which the kernel gives to either replica; a replica
        // that is not the leader answers not_leader to anyone: ask again, as a sidecar would.
        let mut code = String::new();
        for _ in 0..40 {
            let out = std::process::Command::new("curl")
                .args(&args)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
            code = status.to_owned();
            if !body.contains("not_leader") {
                break;
            }
        }
        code
    };
    let good = token_for(edge0.clone(), ballast_contract::TOKEN_AUDIENCE).await;
    let wrong_audience = token_for(edge0.clone(), "https://kubernetes.default.svc").await;
    let operator_pod = operator_pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=ballast-operator"))
        .await
        .unwrap()
        .items
        .into_iter()
        .next()
        .unwrap();
    let outsider = token_for(operator_pod.clone(), ballast_contract::TOKEN_AUDIENCE).await;
    // The pod's own token from its own address: answered by the leader.
    assert_eq!(report_as(Some(good.clone()), Some(ip_of(&edge0))), "200");
    assert_eq!(report_as(None, None), "401", "no token");
    assert_eq!(
        report_as(Some(wrong_audience), Some(ip_of(&edge0))),
        "401",
        "wrong audience"
    );
    assert_eq!(
        report_as(Some(good.clone()), None),
        "403",
        "edge-0's token from elsewhere"
    );
    assert_eq!(
        report_as(Some(outsider), Some(ip_of(&operator_pod))),
        "403",
        "a pod no PresenceCluster owns"
    );
    let leader_metrics = || {
        let leases = leases.clone();
        let operator_pods = operator_pods.clone();
        async move {
            let holder = leases
                .get("ballast-operator")
                .await
                .unwrap()
                .spec
                .unwrap()
                .holder_identity
                .unwrap();
            let ip = operator_pods
                .get(&holder)
                .await
                .unwrap()
                .status
                .unwrap()
                .pod_ip
                .unwrap();
            http_get(format!("{ip}:8080").parse().unwrap(), "/metrics")
                .await
                .unwrap()
                .1
        }
    };
    let metrics = leader_metrics().await;
    for reason in ["no_token", "invalid_token", "wrong_source", "unknown_pod"] {
        let n = metric(
            &metrics,
            &format!("ballast_operator_report_refusals_total{{reason=\"{reason}\"}}"),
        );
        assert!(n >= 1.0, "{reason} not counted:\n{metrics}");
    }
    // /drain without the admin token, from inside the pod (its own address): refused.
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--interface",
            &ip_of(&edge0),
            "-X",
            "POST",
            "--data",
            r#"{"connections": 1, "over_seconds": 1}"#,
            &format!("http://{}:9901/drain", ip_of(&edge0)),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "401",
        "drain without the admin token"
    );
    step!("refused and counted: no token, wrong audience, another pod's token, a pod outside any PresenceCluster; /drain without the admin token refused from inside the pod");

    // ------------------------------------------------------------ steering
    let annotate = |pod: &str, kv: &[&str]| {
        let mut args = vec!["annotate", "pod", pod, "-n", NS, "--overwrite"];
        args.extend(kv);
        let (ok, out) = lc.run("kubectl", &args);
        assert!(ok, "{out}");
    };
    let edge0_addr = format!("{}:8443", ip_of(&edge0));
    annotate("edge-0", &["ballast.dev/accepting=false"]);
    let t = std::time::Instant::now();
    eventually(
        "edge-0 leaves the Service's endpoints",
        Duration::from_secs(20),
        || async {
            if targets
                .snapshot()
                .iter()
                .any(|a| a.to_string() == edge0_addr)
            {
                Err("still an endpoint".to_string())
            } else {
                Ok(())
            }
        },
    )
    .await;
    step!(
        "steered away: edge-0 left the endpoints {:.1}s after the annotation",
        t.elapsed().as_secs_f64()
    );
    let before = fleet
        .stats()
        .per_target
        .get(&edge0_addr)
        .copied()
        .unwrap_or(0);
    let mut more = FleetConfig::new(targets.clone(), 150, ca_pem.clone());
    more.duration = Duration::from_secs(600);
    let newcomers = Fleet::start(more).unwrap();
    newcomers
        .wait_connected(150, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        newcomers
            .stats()
            .per_target
            .get(&edge0_addr)
            .copied()
            .unwrap_or(0),
        0,
        "new agents land only on the others"
    );
    assert!(
        fleet
            .stats()
            .per_target
            .get(&edge0_addr)
            .copied()
            .unwrap_or(0)
            >= before.saturating_sub(5),
        "steering moved no one"
    );
    // The pod's next report says it is steered, not broken; status follows within a tick.
    eventually(
        "a steered pod counts as available",
        Duration::from_secs(10),
        || async {
            let s = prc_status(&lc, "edge").await?;
            let state = s["pods"]
                .as_array()
                .and_then(|p| p.iter().find(|p| p["name"] == "edge-0"))
                .map(|p| p["state"].clone());
            if s["ready"] == "3/3" && state == Some(json!("Steered")) {
                Ok(())
            } else {
                Err(format!("status {s}"))
            }
        },
    )
    .await;
    annotate("edge-0", &["ballast.dev/accepting-"]);
    eventually(
        "edge-0 back in the endpoints",
        Duration::from_secs(20),
        || async {
            if targets
                .snapshot()
                .iter()
                .any(|a| a.to_string() == edge0_addr)
            {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        },
    )
    .await;
    let mut again = FleetConfig::new(targets.clone(), 150, ca_pem.clone());
    again.duration = Duration::from_secs(600);
    let latecomers = Fleet::start(again).unwrap();
    latecomers
        .wait_connected(150, Duration::from_secs(60))
        .await
        .unwrap();
    let on_edge0 = latecomers
        .stats()
        .per_target
        .get(&edge0_addr)
        .copied()
        .unwrap_or(0);
    assert!(
        on_edge0 > 0,
        "steering resumed: new agents reach edge-0 again"
    );
    step!(
        "steering: 0 of 150 new agents on edge-0 while steered; {on_edge0} of 150 after it resumed"
    );

    // ------------------------------------------------------------ the operator gone
    let edge1 = pods.get("edge-1").await.unwrap();
    let edge1_admin: SocketAddr = format!("{}:9901", ip_of(&edge1)).parse().unwrap();
    let sidecar_metric = |name: &'static str| async move {
        let (_, text) = http_get(edge1_admin, "/metrics").await.unwrap();
        metric(&text, name)
    };
    annotate(
        "edge-1",
        &[
            "ballast.dev/accepting=false",
            "ballast.dev/drain-per-second=3",
        ],
    );
    eventually(
        "edge-1 steered and draining",
        Duration::from_secs(20),
        || async {
            let steered = sidecar_metric("ballast_sidecar_steered_away").await;
            let drained =
                sidecar_metric("ballast_sidecar_connections_closed_total{cause=\"drain\"}").await;
            if steered == 1.0 && drained >= 3.0 {
                Ok(())
            } else {
                Err(format!("steered {steered}, drained {drained}"))
            }
        },
    )
    .await;
    let (ok, out) = lc.run(
        "kubectl",
        &[
            "scale",
            "deployment",
            "ballast",
            "-n",
            OPERATOR_NS,
            "--replicas=0",
        ],
    );
    assert!(ok, "{out}");
    let t = std::time::Instant::now();
    eventually(
        "edge-1's directives lapse",
        Duration::from_secs(30),
        || async {
            let lapses = sidecar_metric("ballast_sidecar_directive_lapses_total").await;
            if lapses >= 1.0 {
                Ok(())
            } else {
                Err("no lapse yet".to_string())
            }
        },
    )
    .await;
    let lapsed_after = t.elapsed().as_secs_f64();
    let drained = sidecar_metric("ballast_sidecar_connections_closed_total{cause=\"drain\"}").await;
    // The whole next 5 s: no planned close, readiness back, serving.
    let window = std::time::Instant::now();
    while window.elapsed() < Duration::from_secs(5) {
        let now = sidecar_metric("ballast_sidecar_connections_closed_total{cause=\"drain\"}").await;
        assert!(
            now <= drained + 1.0,
            "the drain went on after the lapse: {drained} → {now}"
        );
        assert_eq!(sidecar_metric("ballast_sidecar_steered_away").await, 0.0);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (code, _) = http_get(edge1_admin, "/readyz").await.unwrap();
    assert_eq!(code, 200, "readiness back without the operator");
    // Reports the operator answered, per sidecar, while there is no operator to answer: the
    // status keeps the last leader's figures, so only these say when a new leader has heard
    // from every pod.
    let answered = |admin: SocketAddr| async move {
        let (_, text) = http_get(admin, "/metrics").await?;
        Ok::<f64, String>(metric(
            &text,
            "ballast_sidecar_reports_total{result=\"answered\"}",
        ))
    };
    let mut unanswered = Vec::new();
    for pod in ["edge-0", "edge-1", "edge-2"] {
        let p = pods.get(pod).await.unwrap();
        let admin: SocketAddr = format!("{}:9901", ip_of(&p)).parse().unwrap();
        unanswered.push((pod, admin, answered(admin).await.unwrap()));
    }
    annotate(
        "edge-1",
        &["ballast.dev/accepting-", "ballast.dev/drain-per-second-"],
    );
    // The status was last confirmed by the leader that is gone (its figures are as of then).
    let status_left = prc_status(&lc, "edge").await.unwrap();
    let left_at = observed_at(&status_left);
    let scaled_up_at = jiff::Timestamp::now().as_second();
    assert!(
        left_at < scaled_up_at,
        "no operator, yet observedAt is {left_at}, scale-up at {scaled_up_at}"
    );
    let (ok, out) = lc.run(
        "kubectl",
        &[
            "scale",
            "deployment",
            "ballast",
            "-n",
            OPERATOR_NS,
            "--replicas=2",
        ],
    );
    assert!(ok, "{out}");
    step!("operator scaled to 0: edge-1's directives lapsed {lapsed_after:.1}s later, its drain stopped at {drained} closes, readiness back, serving");
    eventually(
        "reports answered again",
        Duration::from_secs(90),
        || async {
            // Three answers each: the new leader holds a report of every pod and has planned
            // with all of them at least once (it ticks every second; reports come every second).
            for (pod, admin, before) in &unanswered {
                let now = answered(*admin).await?;
                if now < before + 3.0 {
                    return Err(format!(
                        "{pod}: {} reports answered by the new leader",
                        now - before
                    ));
                }
            }
            let s = prc_status(&lc, "edge").await?;
            let live = fleet.stats().connected
                + newcomers.stats().connected
                + latecomers.stats().connected;
            let total = s["connections"].as_i64().unwrap_or(0);
            // No migration under way: the new leader may resume edge-1's stopped drain from
            // status.migration and end it a few seconds later; edge-2's must be a new one.
            // The new leader confirms the status at once, even where nothing changed.
            if s["reportingPods"] == 3
                && observed_at(&s) >= scaled_up_at
                && (total - live as i64).abs() as f64 <= 0.01 * live as f64
                && condition(&s, "Migrating")["status"] == "False"
            {
                Ok(())
            } else {
                Err(format!("fleet {live}; status {s}"))
            }
        },
    )
    .await;

    // ------------------------------------------------------------ a pod deleted with agents
    let s = prc_status(&lc, "edge").await.unwrap();
    let earlier = s["migration"]["started"].clone();
    // The closes edge-1 made while no operator ran reach the new leader in its first reports:
    // they count, but announce no migration of their own now (the last one is still the one
    // the previous leader left, finished by now if it was under way).
    assert_eq!(
        earlier, status_left["migration"]["started"],
        "a migration started by the new leader for closes made before it: {s}"
    );
    let holding = s["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "edge-2")
        .unwrap()["connections"]
        .as_i64()
        .unwrap();
    pods.delete("edge-2", &DeleteParams::default())
        .await
        .unwrap();
    let during = eventually(
        "Migrating=True during edge-2's drain",
        Duration::from_secs(20),
        || async {
            let s = prc_status(&lc, "edge").await?;
            if condition(&s, "Migrating")["status"] == "True"
                && s["migration"]["started"] != earlier
                && s["migration"]["plannedCloses"].as_i64().unwrap_or(0) > 0
            {
                Ok(s)
            } else {
                Err(format!("status {s}"))
            }
        },
    )
    .await;
    let after = eventually(
        "Migrating=False once the agents are back",
        Duration::from_secs(60),
        || async {
            let s = prc_status(&lc, "edge").await?;
            if condition(&s, "Migrating")["status"] == "False"
                && s["migration"]["started"] != earlier
                && s["migration"]["finished"].is_string()
            {
                Ok(s)
            } else {
                Err(format!("status {s}"))
            }
        },
    )
    .await;
    let m = &after["migration"];
    let planned = m["plannedCloses"].as_i64().unwrap();
    assert!(
        (planned - holding).abs() as f64 <= 0.02 * holding as f64 + 2.0,
        "planned closes {planned} vs {holding} agents on edge-2"
    );
    assert_eq!(
        m["connectionsMoved"], m["plannedCloses"],
        "every moved agent came back: {m}"
    );
    assert_eq!(m["unplannedCloses"], 0);
    for reason in ["MigrationStarted", "MigrationFinished"] {
        wait_for_event(&lc.client, NS, reason, Duration::from_secs(10), |e| {
            e.reason.as_deref() == Some(reason)
        })
        .await;
    }
    step!("edge-2 deleted holding {holding} agents: Migrating=True during the drain ({}), then False: {m}", during["migration"]);

    // ------------------------------------------------------------ a spec change, rolled
    // The planner replaces every pod once, drained first, through the Eviction API; until the
    // last one runs the new revision the status does not read Stable.
    let uids = |list: Vec<Pod>| -> std::collections::BTreeMap<String, String> {
        list.into_iter()
            .map(|p| {
                (
                    p.metadata.name.unwrap_or_default(),
                    p.metadata.uid.unwrap_or_default(),
                )
            })
            .collect()
    };
    let gateways = ListParams::default().labels("ballast.dev/presencecluster=edge");
    let before = uids(pods.list(&gateways).await.unwrap().items);
    let restarts_before = restarted_pods(&lc).await.len();
    let revisions = || async {
        let set = sts.get("edge").await.unwrap();
        let status = set.status.unwrap_or_default();
        let pods_now: Vec<(String, String)> = pods
            .list(&gateways)
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|p| {
                let rev = p
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("controller-revision-hash").cloned())
                    .unwrap_or_default();
                (p.metadata.name.unwrap_or_default(), rev)
            })
            .collect();
        format!(
            "sts current {:?} update {:?}; pods {pods_now:?}",
            status.current_revision, status.update_revision
        )
    };
    let revisions_before = revisions().await;
    let rolled_at = std::time::Instant::now();
    prc_api(&lc)
        .patch("edge", &PatchParams::default(), &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {"example.com/revision": "2"}}}}})))
        .await
        .unwrap();
    let s = eventually(
        "status says the pods run the old spec",
        Duration::from_secs(30),
        || async {
            let s = prc_status(&lc, "edge").await?;
            if condition(&s, "UpToDate")["status"] == "False" && s["phase"] != "Stable" {
                Ok(s)
            } else {
                Err(format!("status {s}"))
            }
        },
    )
    .await;
    step!(
        "spec change: phase {}, {} of 3 pods up to date",
        s["phase"],
        s["updatedReplicas"]
    );
    let done = eventually(
        "every pod replaced, drained first",
        Duration::from_secs(180),
        || async {
            let s = prc_status(&lc, "edge").await?;
            if condition(&s, "UpToDate")["status"] == "True"
                && s["updatedReplicas"] == 3
                && s["ready"] == "3/3"
            {
                Ok(s)
            } else {
                let mut pods_now = Vec::new();
                for p in pods.list(&gateways).await.map_err(|e| e.to_string())?.items {
                    let ip = p
                        .status
                        .as_ref()
                        .and_then(|s| s.pod_ip.clone())
                        .unwrap_or_default();
                    let sidecar = match format!("{ip}:9901").parse() {
                        Ok(admin) => http_get(admin, "/readyz").await,
                        Err(_) => Err("no pod IP yet".into()),
                    };
                    pods_now.push(format!(
                        "{} ready={} /readyz={sidecar:?} conditions={:?}",
                        p.metadata.name.clone().unwrap_or_default(),
                        pod_ready(&p),
                        p.status.as_ref().and_then(|s| s.conditions.clone())
                    ));
                }
                Err(format!("status {s}; pods {pods_now:#?}"))
            }
        },
    )
    .await;
    let after = uids(pods.list(&gateways).await.unwrap().items);
    for (name, uid) in &before {
        assert_ne!(after.get(name), Some(uid), "{name} was not replaced");
    }
    let notes = restarted_pods(&lc).await;
    let restarted = &notes[restarts_before.min(notes.len())..];
    // Every pod runs the new revision; none was restarted twice. (A pod the StatefulSet
    // recreated with the new revision on its own, such as the one deleted above, needs no
    // restart.)
    for name in before.keys() {
        let n = restarted.iter().filter(|n| *n == name).count();
        assert!(
            n <= 1,
            "{name} restarted {n} times: {restarted:?}; before: {revisions_before}; after: {}",
            revisions().await
        );
    }
    step!(
        "template change rolled by the planner in {:.0}s: each pod replaced exactly once ({restarted:?}), phase {}",
        rolled_at.elapsed().as_secs_f64(),
        done["phase"]
    );
    let summaries = [newcomers.stop().await, latecomers.stop().await];
    for summary in &summaries {
        assert_eq!(summary.abrupt_closes, 0);
    }
    // Later steps need the current leader.
    let holder = leases
        .get("ballast-operator")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    let (ok, table) = lc.run("kubectl", &["get", "prc", "-n", NS]);
    assert!(ok, "{table}");
    step!("kubectl get prc:\n{table}");
    let header = table.lines().next().unwrap();
    for column in [
        "PHASE",
        "READY",
        "CONNECTIONS",
        "IMBALANCE",
        "CERT-EXPIRY",
        "OBSERVED",
        "AGE",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let row = table.lines().nth(1).unwrap();
    assert!(row.contains("3/3"), "{row}");
    assert!(!row.contains("<invalid>"), "{row}");
    let (ok, explain) = lc.run("kubectl", &["explain", "presencecluster.spec"]);
    assert!(
        ok && explain.contains("Number of gateway pods"),
        "{explain}"
    );
    assert!(explain.contains("tls"), "{explain}");
    let summary = fleet.stop().await;
    assert_eq!(summary.abrupt_closes, 0);

    // ------------------------------------------------------------ scaling 3 → 5 → 2
    let prcs = prc_api(&lc);
    for replicas in [5usize, 2] {
        prcs.patch(
            "edge",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .unwrap();
        wait_ready(&lc, "edge", replicas, Duration::from_secs(90)).await;
        let pods: Api<Pod> = Api::namespaced(lc.client.clone(), NS);
        eventually(
            &format!("{replicas} pods exist"),
            Duration::from_secs(60),
            || async {
                let n = pods
                    .list(&ListParams::default().labels("ballast.dev/presencecluster=edge"))
                    .await
                    .map_err(|e| e.to_string())?
                    .items
                    .len();
                if n == replicas {
                    Ok(())
                } else {
                    Err(format!("{n} pods"))
                }
            },
        )
        .await;
        step!("scaled to {replicas}");
    }

    // ------------------------------------------------------------ bad input
    let invalid = edge
        .replace("name: edge", "name: invalid")
        .replace("replicas: 3", "replicas: 1")
        .replace("maxUnavailable: 1", "maxUnavailable: 2");
    let (ok, out) = apply(&lc, "invalid.yaml", &invalid);
    assert!(!ok, "an invalid spec was accepted");
    assert!(
        out.contains("migration.maxUnavailable must not exceed replicas"),
        "{out}"
    );
    let negative = edge
        .replace("name: edge", "name: negative")
        .replace("replicas: 3", "replicas: -1");
    let (ok, out) = apply(&lc, "negative.yaml", &negative);
    assert!(!ok && out.contains("spec.replicas"), "{out}");
    let stall_forever = edge
        .replace("name: edge", "name: zero-write-timeout")
        .replace(
            "  presence: {offlineThreshold: 60s, events: {enabled: true}}",
            "  presence: {offlineThreshold: 60s, events: {enabled: true}}\n  sidecar: {writeTimeout: 0s}",
        );
    let (ok, out) = apply(&lc, "zero-write-timeout.yaml", &stall_forever);
    assert!(
        !ok && out.contains("writeTimeout must be above zero"),
        "{out}"
    );
    let hasty_rotation = edge.replace("name: edge", "name: hasty-rotation").replace(
        "secretName: agents-tls",
        "secretName: agents-tls\n    sessionTickets: {rotationInterval: 1m}",
    );
    assert_ne!(
        hasty_rotation,
        edge.replace("name: edge", "name: hasty-rotation")
    );
    let (ok, out) = apply(&lc, "hasty-rotation.yaml", &hasty_rotation);
    assert!(
        !ok && out.contains("rotationInterval must be at least 5m"),
        "{out}"
    );
    let tiny_journal = edge.replace("name: edge", "name: tiny-journal").replace(
        "events: {enabled: true}",
        "events: {enabled: true, buffer: 8}",
    );
    assert!(tiny_journal.contains("buffer: 8"));
    let (ok, out) = apply(&lc, "tiny-journal.yaml", &tiny_journal);
    assert!(!ok && out.contains("spec.presence.events.buffer"), "{out}");
    step!("invalid specs refused by the apiserver");

    let broken = edge
        .replace("name: edge", "name: broken")
        .replace("secretName: agents-tls", "secretName: not-yet")
        .replace("replicas: 3", "replicas: 1");
    let (ok, out) = apply(&lc, "broken.yaml", &broken);
    assert!(ok, "{out}");
    eventually(
        "broken reports SecretNotFound",
        Duration::from_secs(30),
        || async {
            let s = prc_status(&lc, "broken").await?;
            let ready = condition(&s, "Ready");
            if ready["status"] == "False"
                && ready["reason"] == "SecretNotFound"
                && s["phase"] == "Degraded"
            {
                Ok(ready["message"].as_str().unwrap_or("").to_owned())
            } else {
                Err(format!("status: {s}"))
            }
        },
    )
    .await;
    wait_for_event(
        &lc.client,
        NS,
        "a SecretNotFound Event",
        Duration::from_secs(30),
        |e| {
            e.reason.as_deref() == Some("SecretNotFound")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("broken")
                && e.type_.as_deref() == Some("Warning")
        },
    )
    .await;
    assert!(
        sts.get_opt("broken").await.unwrap().is_none(),
        "nothing is built while the Secret is missing"
    );
    // Fix it: create the Secret; the operator recovers on its own.
    let ca = Ca::new("fix").unwrap();
    let cert = ca
        .issue_server(&["localhost".into()], Validity::Current)
        .unwrap();
    let fixed: Secret = serde_json::from_value(json!({
        "metadata": {"name": "not-yet"},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": cert.cert_pem, "tls.key": cert.key_pem},
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &fixed)
        .await
        .unwrap();
    wait_ready(&lc, "broken", 1, Duration::from_secs(60)).await;
    step!("missing Secret: Ready=False SecretNotFound + Warning Event; fixed → Ready");

    // A renewal gone wrong on a running cluster: the Secret now holds an expired certificate.
    // The operator says so and deletes nothing; the sidecar refuses it and keeps serving.
    let expired = ca
        .issue_server(&["localhost".into()], Validity::Expired)
        .unwrap();
    secrets
        .patch(
            "not-yet",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"stringData": {"tls.crt": expired.cert_pem, "tls.key": expired.key_pem}}),
            ),
        )
        .await
        .unwrap();
    let message = eventually(
        "broken reports CertificateExpired",
        Duration::from_secs(30),
        || async {
            let s = prc_status(&lc, "broken").await?;
            let ready = condition(&s, "Ready");
            if ready["reason"] == "CertificateExpired" {
                Ok(ready["message"].as_str().unwrap_or("").to_owned())
            } else {
                Err(format!("status: {s}"))
            }
        },
    )
    .await;
    assert!(message.contains("expired at"), "{message}");
    assert!(
        sts.get_opt("broken").await.unwrap().is_some(),
        "nothing deleted"
    );
    let pods: Api<Pod> = Api::namespaced(lc.client.clone(), NS);
    let running = pods.get("broken-0").await.unwrap();
    assert!(pod_ready(&running), "the gateway pod keeps running");
    let ip = running.status.unwrap().pod_ip.unwrap();
    let admin: std::net::SocketAddr = format!("{ip}:9901").parse().unwrap();
    let sidecar = eventually(
        "the sidecar refuses the expired pair",
        Duration::from_secs(30),
        || async {
            let (_, body) = http_get(admin, "/status").await?;
            let status: serde_json::Value =
                serde_json::from_str(&body).map_err(|e| e.to_string())?;
            if status["certificate"]["last_error_reason"] == "expired" {
                Ok(status)
            } else {
                Err(format!("sidecar status: {status}"))
            }
        },
    )
    .await;
    assert_eq!(
        sidecar["certificate"]["sha256"],
        cert.fingerprint().as_str()
    );
    step!("expired certificate in the Secret: Ready=False CertificateExpired, nothing deleted, old certificate still served");

    // ------------------------------------------------------------ delete removes everything
    prcs.delete("edge", &DeleteParams::default()).await.unwrap();
    eventually(
        "edge's objects garbage-collected",
        Duration::from_secs(90),
        || async {
            let left = (
                sts.get_opt("edge")
                    .await
                    .map_err(|e| e.to_string())?
                    .is_some(),
                services
                    .get_opt("edge")
                    .await
                    .map_err(|e| e.to_string())?
                    .is_some(),
                services
                    .get_opt("edge-pods")
                    .await
                    .map_err(|e| e.to_string())?
                    .is_some(),
                pdbs.get_opt("edge")
                    .await
                    .map_err(|e| e.to_string())?
                    .is_some(),
            );
            if left == (false, false, false, false) {
                Ok(())
            } else {
                Err(format!("left (sts, svc, headless, pdb): {left:?}"))
            }
        },
    )
    .await;
    step!("deleting the PresenceCluster removed everything it owned");

    // ------------------------------------------------------------ RBAC: enough, and no wider
    // The leader has done all of the above; none of its calls was refused.
    let leader = operator_pods.get(&holder).await.unwrap();
    let leader_ip = leader.status.unwrap().pod_ip.unwrap();
    let (_, metrics) = http_get(format!("{leader_ip}:8080").parse().unwrap(), "/metrics")
        .await
        .unwrap();
    let reconciles = metric(&metrics, "ballast_operator_reconciles_total");
    assert!(
        reconciles > 0.0,
        "the new leader has not reconciled:\n{metrics}"
    );
    assert!(
        !metrics.contains("error=\"forbidden\""),
        "the operator hit a forbidden call:\n{metrics}"
    );
    assert!(metrics.contains("ballast_operator_reconciles_total"));
    for (verb, resource, allowed) in [
        ("get", "secrets", true),
        ("list", "secrets", false),
        ("watch", "secrets", false),
        ("delete", "statefulsets.apps", false),
        ("delete", "pods", false),
        ("create", "pods", false),
        (
            "patch",
            "presenceclusters.ballast.dev --subresource=status",
            true,
        ),
        ("update", "presenceclusters.ballast.dev", false),
        ("create", "statefulsets.apps", true),
        ("create", "tokenreviews.authentication.k8s.io", true),
        // Updated only to rotate the shared ticket keys.
        ("update", "secrets", true),
        ("patch", "secrets", false),
        ("delete", "secrets", false),
        ("watch", "pods", true),
        ("create", "pods --subresource=eviction", true),
    ] {
        let mut args = vec!["auth", "can-i", verb];
        args.extend(resource.split(' '));
        args.extend(["-n", NS, "--as", SA]);
        let (_, out) = lc.run("kubectl", &args);
        let answer = out.trim().starts_with("yes");
        assert_eq!(answer, allowed, "can-i {verb} {resource}: {out}");
    }
    step!("RBAC: what the operator uses and nothing more");
}

/// `status.observedAt` in Unix seconds (0 when absent).
fn observed_at(status: &serde_json::Value) -> i64 {
    status["observedAt"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map_or(0, |t| t.as_second())
}
