//! The process kubelet: registers a Node and runs every pod bound to it as local processes.
//!
//! It watches pods with `spec.nodeName == <node>` (the real kube-scheduler binds them), gives
//! each new pod a loopback IP (see `podips`) and a worker task (see `pods`) fed with the latest
//! pod object. A pod that disappears from the API stops its worker. On shutdown every worker
//! stops its processes (SIGTERM, short grace, SIGKILL — by PID), the node turns NotReady,
//! and empty mount-point directories the kubelet created on the host are removed.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::images::ImageTable;
use crate::node;
use crate::podips::PodIps;
use crate::pods::{self, Desired, PodContext};

/// How the kubelet runs.
#[derive(Clone, Debug)]
pub struct KubeletConfig {
    pub node_name: String,
    /// Pod volumes, logs: `<state-dir>/pods/…`.
    pub state_dir: PathBuf,
    pub images: ImageTable,
    /// Port of the API server on 127.0.0.1 (given to pods as `KUBERNETES_SERVICE_PORT`).
    pub apiserver_port: u16,
    /// `127.N.0.0/16` pod addresses come from.
    pub pod_subnet: String,
    /// Grace for pod processes when the kubelet stops.
    pub shutdown_grace: Duration,
}

/// The API server port of `config`, which must be a loopback URL (`https://127.0.0.1:PORT`).
pub fn loopback_apiserver_port(config: &kube::Config) -> Result<u16> {
    let url = &config.cluster_url;
    let host = url.host().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        return Err(Error::Invalid(format!(
            "the API server {url} is not on loopback; the process kubelet only talks to 127.0.0.0/8"
        )));
    }
    Ok(url.port_u16().unwrap_or(443))
}

struct PodHandle {
    desired: watch::Sender<Desired>,
    task: JoinHandle<()>,
    ip: Ipv4Addr,
}

/// PIDs of running container processes, shared with the embedding program (tests).
pub type Pids = Arc<Mutex<BTreeMap<String, u32>>>;

/// Runs the kubelet until `shutdown` completes; then stops every pod's processes. `client`
/// makes its requests, `watches` its watch of the node's pods (see [`crate::api_clients`]).
pub async fn run(
    client: Client,
    watches: Client,
    config: KubeletConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    std::fs::create_dir_all(config.state_dir.join("pods"))
        .map_err(crate::error::io(format!("creating {:?}", config.state_dir)))?;
    let ips = Arc::new(Mutex::new(PodIps::new(&config.pod_subnet)?));
    let node_obj = node::register(&client, &config.node_name).await?;
    tracing::info!(node = %config.node_name, "node registered and Ready");
    let heartbeat = tokio::spawn(node::heartbeat(
        client.clone(),
        config.node_name.clone(),
        node_obj,
    ));
    let ctx = Arc::new(PodContext {
        client: client.clone(),
        state_dir: config.state_dir.clone(),
        images: config.images.clone(),
        apiserver_port: config.apiserver_port,
        created_mount_points: Mutex::new(Vec::new()),
        restart_backoff: Duration::from_secs(1),
        restart_backoff_cap: Duration::from_secs(60),
        shutdown_grace: config.shutdown_grace,
        pids: Mutex::new(BTreeMap::new()),
    });

    let api: Api<Pod> = Api::all(watches);
    let wc = watcher::Config::default().fields(&format!("spec.nodeName={}", config.node_name));
    let mut events = watcher(api, wc).boxed();
    let mut handles: BTreeMap<String, PodHandle> = BTreeMap::new();
    let mut relisted: Option<Vec<String>> = None;
    tokio::pin!(shutdown);
    loop {
        // Reap finished workers (their pod was deleted) and free their IPs.
        let done: Vec<String> = handles
            .iter()
            .filter(|(_, h)| h.task.is_finished())
            .map(|(k, _)| k.clone())
            .collect();
        for uid in done {
            if let Some(h) = handles.remove(&uid) {
                ips.lock().expect("ips lock").release(h.ip);
            }
        }
        let event = tokio::select! {
            _ = &mut shutdown => break,
            e = events.try_next() => e,
            _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
        };
        let event = match event {
            Ok(Some(e)) => e,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "pod watch error (retrying)");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        match event {
            watcher::Event::Init => relisted = Some(Vec::new()),
            watcher::Event::InitApply(pod) => {
                if let Some(list) = relisted.as_mut() {
                    list.push(pod.metadata.uid.clone().unwrap_or_default());
                }
                upsert(&ctx, &ips, &mut handles, pod);
            }
            watcher::Event::InitDone => {
                if let Some(seen) = relisted.take() {
                    for (uid, h) in &handles {
                        if !seen.contains(uid) {
                            let _ = h.desired.send(Desired::Gone);
                        }
                    }
                }
            }
            watcher::Event::Apply(pod) => upsert(&ctx, &ips, &mut handles, pod),
            watcher::Event::Delete(pod) => {
                if let Some(h) = handles.get(pod.metadata.uid.as_deref().unwrap_or_default()) {
                    let _ = h.desired.send(Desired::Gone);
                }
            }
        }
    }

    tracing::info!(
        pods = handles.len(),
        "kubelet stopping: terminating pod processes"
    );
    for h in handles.values() {
        let _ = h.desired.send(Desired::Shutdown);
    }
    for (_, h) in std::mem::take(&mut handles) {
        let _ = h.task.await;
    }
    heartbeat.abort();
    if let Err(e) = node::post_status(&client, &config.node_name, false, "KubeletStopped").await {
        tracing::warn!(error = %e, "could not mark the node NotReady");
    }
    let mut created = ctx
        .created_mount_points
        .lock()
        .expect("mount points lock")
        .clone();
    created.sort();
    created.dedup();
    for dir in created.iter().rev() {
        let _ = std::fs::remove_dir(dir); // only succeeds if empty
    }
    tracing::info!("kubelet stopped; no pod process left");
    Ok(())
}

fn upsert(
    ctx: &Arc<PodContext>,
    ips: &Arc<Mutex<PodIps>>,
    handles: &mut BTreeMap<String, PodHandle>,
    pod: Pod,
) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    if let Some(h) = handles.get(&uid) {
        let _ = h.desired.send(Desired::Pod(Box::new(pod)));
        return;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return; // finished before we saw it (e.g. by a previous kubelet): nothing to run
    }
    let existing = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
    let mut pool = ips.lock().expect("ips lock");
    let adopted = existing.filter(|ip| pool.reserve(*ip));
    if let (Some(ip), None) = (existing, adopted) {
        tracing::warn!(pod = ?pod.metadata.name, %ip, "pod has an IP this kubelet cannot keep; not running it");
        return;
    }
    let ip = match adopted.map_or_else(|| pool.allocate(), Ok) {
        Ok(ip) => ip,
        Err(e) => {
            tracing::error!(error = %e, "no pod IP left");
            return;
        }
    };
    drop(pool);
    let (desired, rx) = watch::channel(Desired::Pod(Box::new(pod.clone())));
    let task = tokio::spawn(pods::run(ctx.clone(), pod, ip, rx));
    handles.insert(uid, PodHandle { desired, task, ip });
}
