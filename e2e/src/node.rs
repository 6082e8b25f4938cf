//! The Node object this kubelet stands for: registration, Lease renewal and status heartbeat.
//!
//! The node registers with a `Ready` condition, capacity/allocatable (this machine's CPUs and
//! memory, 110 pods), address 127.0.0.1 and no taints. Every 10 s it renews its Lease in
//! `kube-node-lease` (what the node-lifecycle controller watches) and re-posts its status
//! (the `Ready` heartbeat), so the control plane never marks it unreachable while the
//! kubelet runs. On stop, `Ready` turns `False` (`KubeletStopped`).

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{json, Value};

use crate::error::Result;

/// How often the Lease and the status heartbeat are renewed.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// Lease duration announced (the kubelet's default).
pub const LEASE_SECONDS: i32 = 40;

fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(8 << 30, |kb| kb * 1024)
}

fn status(ready: bool, reason: &str, since: Timestamp) -> Value {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let resources = json!({
        "cpu": cpus.to_string(),
        "memory": format!("{}Ki", memory_bytes() / 1024),
        "pods": "110",
        "ephemeral-storage": "100Gi",
    });
    let now = Timestamp::now().to_string();
    let cond = |t: &str, s: bool, r: &str, msg: &str| {
        json!({
            "type": t,
            "status": if s { "True" } else { "False" },
            "reason": r,
            "message": msg,
            "lastHeartbeatTime": now,
            "lastTransitionTime": since.to_string(),
        })
    };
    json!({
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            cond("Ready", ready, reason, if ready { "process kubelet is posting ready status" } else { "process kubelet stopped" }),
            cond("MemoryPressure", false, "KubeletHasSufficientMemory", "not measured"),
            cond("DiskPressure", false, "KubeletHasNoDiskPressure", "not measured"),
            cond("PIDPressure", false, "KubeletHasSufficientPID", "not measured"),
        ],
        "addresses": [
            { "type": "InternalIP", "address": "127.0.0.1" },
            { "type": "Hostname", "address": "localhost" },
        ],
        "daemonEndpoints": { "kubeletEndpoint": { "Port": 0 } },
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "",
            "kernelVersion": "", "osImage": "ballast-e2e process kubelet",
            "containerRuntimeVersion": "process://ballast-e2e",
            "kubeletVersion": "v1.37.2-ballast-e2e", "kubeProxyVersion": "",
            "operatingSystem": "linux", "architecture": std::env::consts::ARCH,
        },
    })
}

/// Registers (or re-registers) node `name` as Ready, and creates its Lease.
pub async fn register(client: &Client, name: &str) -> Result<Node> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": std::env::consts::ARCH,
                "ballast.dev/process-kubelet": "true",
            },
        },
        "spec": {},
    }))
    .expect("static node object");
    let created = match nodes.create(&PostParams::default(), &node).await {
        Ok(n) => n,
        Err(kube::Error::Api(e)) if e.code == 409 => nodes.get(name).await?,
        Err(e) => return Err(e.into()),
    };
    post_status(client, name, true, "KubeletReady").await?;
    renew_lease(client, name, &created).await?;
    Ok(created)
}

/// Posts the node's status with `Ready` = `ready`.
pub async fn post_status(client: &Client, name: &str, ready: bool, reason: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let since = Timestamp::now();
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Strategic(json!({ "status": status(ready, reason, since) })),
        )
        .await?;
    Ok(())
}

/// Creates or renews the node's Lease (owned by the Node, like the kubelet's).
pub async fn renew_lease(client: &Client, name: &str, node: &Node) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "Node", "name": name,
                "uid": node.metadata.uid.clone().unwrap_or_default(),
            }],
        },
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string(),
        },
    });
    leases
        .patch(
            name,
            &PatchParams::apply("ballast-e2e-kubelet").force(),
            &Patch::Apply(lease),
        )
        .await?;
    Ok(())
}

/// Renews Lease and status every [`HEARTBEAT`] until the task is dropped.
pub async fn heartbeat(client: Client, name: String, node: Node) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = renew_lease(&client, &name, &node).await {
            tracing::warn!(error = %e, "lease renewal failed");
        }
        if let Err(e) = post_status(&client, &name, true, "KubeletReady").await {
            tracing::warn!(error = %e, "node status heartbeat failed");
        }
    }
}
