//! The operator end to end, on the real control plane with the process kubelet: installed
//! with helm and running under its chart's ServiceAccount, reconciling the project's
//! examples into Ready gateway pods, scaling, refusing bad specs, reporting a missing Secret
//! and recovering, cleaning up on delete, and holding no more RBAC than it uses.

#[macro_use]
mod common;

use std::time::Duration;

use ballast_fleet::agents::{Fleet, FleetConfig};
use ballast_fleet::certs::{Ca, Validity};
use common::*;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::Api;
use serde_json::json;

const NS: &str = "presence";
const OPERATOR_NS: &str = "ballast-system";
const SA: &str = "system:serviceaccount:ballast-system:ballast";

fn prc_api(lc: &LocalCluster) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("ballast.dev", "v1alpha1", "PresenceCluster");
    Api::namespaced_with(lc.client.clone(), NS, &ApiResource::from_gvk(&gvk))
}

/// The PresenceCluster's status, as JSON.
async fn prc_status(lc: &LocalCluster, name: &str) -> Result<serde_json::Value, String> {
    let prc = prc_api(lc).get(name).await.map_err(|e| e.to_string())?;
    Ok(prc.data["status"].clone())
}

fn condition<'a>(status: &'a serde_json::Value, type_: &str) -> &'a serde_json::Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or(&serde_json::Value::Null)
}

async fn wait_ready(lc: &LocalCluster, name: &str, pods: usize, timeout: Duration) {
    eventually(
        &format!("{name} Ready with {pods} pods"),
        timeout,
        || async {
            let s = prc_status(lc, name).await?;
            let ready = condition(&s, "Ready");
            if ready["status"] == "True" && s["readyReplicas"] == pods && s["replicas"] == pods {
                Ok(())
            } else {
                Err(format!("status: {s}"))
            }
        },
    )
    .await;
}

/// Writes `text` to a file in the cluster's dir and `kubectl apply`s it.
fn apply(lc: &LocalCluster, name: &str, text: &str) -> (bool, String) {
    let path = lc.dir.join(name);
    std::fs::write(&path, text).unwrap();
    lc.run("kubectl", &["apply", "-f", path.to_str().unwrap()])
}

fn example(file: &str) -> String {
    std::fs::read_to_string(workspace().join("examples").join(file)).unwrap()
}

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
    let (ok, out) = lc.run(
        "helm",
        &[
            "install",
            "ballast",
            chart.to_str().unwrap(),
            "--namespace",
            OPERATOR_NS,
            "--create-namespace",
            "--set",
            "bindPodIP=true",
            "--set",
            "replicas=2",
            "--set",
            "resync=2s",
            "--set",
            "logFormat=text",
            "--wait",
            "--timeout",
            "120s",
        ],
    );
    assert!(ok, "helm install failed:\n{out}");
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
    for file in ["namespace.yaml", "issuer.yaml", "certificate.yaml"] {
        let (ok, out) = apply(&lc, file, &example(file));
        assert!(ok, "{file}: {out}");
    }
    let secrets: Api<Secret> = Api::namespaced(lc.client.clone(), NS);
    eventually(
        "cert-manager issues agents-tls",
        Duration::from_secs(60),
        || async {
            secrets
                .get_opt("agents-tls")
                .await
                .map_err(|e| e.to_string())?
                .filter(|s| s.data.as_ref().is_some_and(|d| d.contains_key("tls.crt")))
                .map(|_| ())
                .ok_or_else(|| "no Secret yet".to_string())
        },
    )
    .await;
    // The example, with a short drain so that scaling down is quick in a test.
    let edge = example("presencecluster.yaml").replace("drainTimeout: 30s", "drainTimeout: 3s");
    assert!(edge.contains("drainTimeout: 3s"));
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
        let reconciles: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("ballast_operator_reconciles_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
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

    // Agents through the Service; the printer columns must show what the sidecars report.
    let targets = ballast_e2e::endpoints::targets(&lc.client, NS, "edge", Some("tls"))
        .await
        .unwrap();
    assert_eq!(targets.len(), 3);
    let ca_pem = String::from_utf8(
        secrets.get("agents-tls").await.unwrap().data.unwrap()["ca.crt"]
            .0
            .clone(),
    )
    .unwrap();
    let mut config = FleetConfig::new(targets, 150, ca_pem);
    config.duration = Duration::from_secs(600);
    let fleet = Fleet::start(config).unwrap();
    fleet
        .wait_connected(150, Duration::from_secs(30))
        .await
        .unwrap();
    eventually(
        "status counts 150 connections",
        Duration::from_secs(30),
        || async {
            let s = prc_status(&lc, "edge").await?;
            if s["connections"] == 150 && s["phase"] == "Stable" {
                Ok(())
            } else {
                Err(format!("status: {s}"))
            }
        },
    )
    .await;
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
        "AGE",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let row = table.lines().nth(1).unwrap();
    assert!(
        row.contains("Stable") && row.contains("3/3") && row.contains("150"),
        "{row}"
    );
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
    let events: Api<Event> = Api::namespaced(lc.client.clone(), NS);
    eventually(
        "a SecretNotFound Event",
        Duration::from_secs(30),
        || async {
            let list = events
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .iter()
                .find(|e| {
                    e.reason.as_deref() == Some("SecretNotFound")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("broken")
                        && e.type_.as_deref() == Some("Warning")
                })
                .map(|_| ())
                .ok_or_else(|| format!("{} events, none for broken", list.items.len()))
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
    let reconciles: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ballast_operator_reconciles_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
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
