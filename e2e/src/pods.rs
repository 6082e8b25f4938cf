//! One pod's life on the process kubelet: volumes, containers as processes, probes, status,
//! and graceful deletion.
//!
//! A [`run`] task owns everything of one pod and is driven by the latest pod object the
//! kubelet's watch delivered ([`Desired`]). Every 250 ms it: refreshes volumes (once a second),
//! starts init containers in order (each must exit 0) then the regular containers, applies the
//! restart policy with backoff, acts on liveness/startup failures, and patches
//! `pods/status` (strategic merge, so conditions owned by others, such as readiness gates,
//! survive) whenever what it would report changes. It only reports what the processes do: a
//! container is `running` while its PID runs, `ready` only after its readiness probe passed.
//!
//! Deletion (`metadata.deletionTimestamp` set): each running container gets its `preStop`
//! (`sleep` and `httpGet` are run; `exec` is logged as unsupported) then SIGTERM, all in
//! parallel, and SIGKILL when `deletionGracePeriodSeconds` is over; exit codes are recorded in
//! the status, then the pod is deleted with `gracePeriodSeconds=0`, which removes it from the
//! API.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::env;
use crate::images::ImageTable;
use crate::probes::{self, ProbeTask};
use crate::processes::{self, Launch, Mount, Process, RunAs};
use crate::volumes::PodVolumes;

/// What the kubelet wants of a pod worker.
#[derive(Clone, Debug)]
pub enum Desired {
    /// Run this (latest) version of the pod.
    Pod(Box<Pod>),
    /// The pod object is gone from the API: stop everything now.
    Gone,
    /// The kubelet is stopping: stop the processes (short grace), report them terminated.
    Shutdown,
}

/// Shared by every pod worker.
pub struct PodContext {
    pub client: Client,
    pub state_dir: PathBuf,
    pub images: ImageTable,
    pub apiserver_port: u16,
    /// Mount-point directories the kubelet created on the host (removed, if empty, at stop).
    pub created_mount_points: Mutex<Vec<PathBuf>>,
    /// First restart delay; doubles per crash up to `restart_backoff_cap`.
    pub restart_backoff: Duration,
    pub restart_backoff_cap: Duration,
    /// Grace for pod processes when the kubelet itself stops.
    pub shutdown_grace: Duration,
    /// PIDs of every running container process (uid/container → pid), for tests and logs.
    pub pids: Mutex<BTreeMap<String, u32>>,
}

#[derive(Clone, Debug)]
struct Terminated {
    exit_code: i32,
    signal: Option<i32>,
    reason: String,
    message: Option<String>,
    started_at: Timestamp,
    finished_at: Timestamp,
    container_id: String,
}

enum State {
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        process: Process,
        started_at: Timestamp,
        since: Instant,
        probes: Probes,
    },
    Terminated(Terminated),
}

struct Probes {
    startup: Option<ProbeTask>,
    readiness: Option<ProbeTask>,
    liveness: Option<ProbeTask>,
    gate: watch::Sender<bool>,
}

struct Ctr {
    spec: Container,
    init: bool,
    state: State,
    last: Option<Terminated>,
    restart_count: i32,
    backoff: Duration,
    next_start: Option<Instant>,
    /// SIGTERM was sent (liveness/startup failure) and SIGKILL is due at this instant.
    kill_at: Option<Instant>,
    kill_reason: Option<String>,
}

impl Ctr {
    fn started(&self) -> bool {
        match &self.state {
            State::Running { probes, .. } => *probes.gate.borrow(),
            _ => false,
        }
    }
    fn ready(&self) -> bool {
        match &self.state {
            State::Running { probes, .. } => {
                *probes.gate.borrow()
                    && probes
                        .readiness
                        .as_ref()
                        .is_none_or(|p| p.verdict.borrow().ok)
            }
            _ => false,
        }
    }
    fn succeeded(&self) -> bool {
        matches!(&self.state, State::Terminated(t) if t.exit_code == 0)
    }
}

/// Where a pod's files live.
pub fn pod_dir(state_dir: &Path, uid: &str) -> PathBuf {
    state_dir.join("pods").join(uid)
}

/// Where a container's log goes: `<state-dir>/pods/<ns>_<name>/<container>.log`.
pub fn log_path(state_dir: &Path, namespace: &str, name: &str, container: &str) -> PathBuf {
    state_dir
        .join("pods")
        .join(format!("{namespace}_{name}"))
        .join(format!("{container}.log"))
}

struct Worker {
    ctx: Arc<PodContext>,
    pod: Pod,
    ip: Ipv4Addr,
    uid: String,
    ns: String,
    name: String,
    volumes: PodVolumes,
    volumes_ready: Result<(), String>,
    last_volume_sync: Option<Instant>,
    ctrs: Vec<Ctr>,
    start_time: Timestamp,
    conditions: BTreeMap<&'static str, (bool, Timestamp, Option<String>)>,
    ever_running: bool,
    last_patched: Option<Value>,
}

/// Runs pod `pod` on `ip` until it is deleted, gone, or the kubelet stops.
pub async fn run(
    ctx: Arc<PodContext>,
    pod: Pod,
    ip: Ipv4Addr,
    mut desired: watch::Receiver<Desired>,
) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let volumes = PodVolumes::new(&pod, &pod_dir(&ctx.state_dir, &uid).join("volumes"));
    let spec = pod.spec.clone().unwrap_or_default();
    let mut ctrs: Vec<Ctr> = Vec::new();
    for (init, list) in [
        (true, spec.init_containers.unwrap_or_default()),
        (false, spec.containers),
    ] {
        for c in list {
            ctrs.push(Ctr {
                spec: c,
                init,
                state: State::Waiting {
                    reason: "ContainerCreating".into(),
                    message: String::new(),
                },
                last: None,
                restart_count: 0,
                backoff: ctx.restart_backoff,
                next_start: None,
                kill_at: None,
                kill_reason: None,
            });
        }
    }
    let mut w = Worker {
        ctx,
        pod,
        ip,
        uid,
        ns,
        name,
        volumes,
        volumes_ready: Err("volumes not mounted yet".into()),
        last_volume_sync: None,
        ctrs,
        start_time: Timestamp::now(),
        conditions: BTreeMap::new(),
        ever_running: false,
        last_patched: None,
    };
    tracing::info!(pod = %w.key(), ip = %ip, "pod admitted");
    loop {
        let next = desired.borrow_and_update().clone();
        match next {
            Desired::Pod(p) => w.pod = *p,
            Desired::Gone => {
                tracing::info!(pod = %w.key(), "pod object gone; stopping its processes");
                w.stop_all(Duration::from_secs(2)).await;
                break;
            }
            Desired::Shutdown => {
                w.stop_all(w.ctx.shutdown_grace).await;
                w.patch_status(Some("kubelet stopped; processes terminated"))
                    .await;
                break;
            }
        }
        if w.pod.metadata.deletion_timestamp.is_some() {
            w.graceful_delete().await;
            break;
        }
        w.step().await;
        w.patch_status(None).await;
        tokio::select! {
            _ = desired.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
    let _ = std::fs::remove_dir_all(pod_dir(&w.ctx.state_dir, &w.uid));
    tracing::info!(pod = %w.key(), "pod worker done");
}

impl Worker {
    fn key(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }

    fn restart_policy(&self) -> &str {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            .unwrap_or("Always")
    }

    async fn step(&mut self) {
        // Volumes: mounted before anything starts, then refreshed every second.
        if self
            .last_volume_sync
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.last_volume_sync = Some(Instant::now());
            let pod = self.pod.clone();
            match self
                .volumes
                .sync(&self.ctx.client, &pod, &self.ip.to_string())
                .await
            {
                Ok(changed) => {
                    if !changed.is_empty() && self.volumes_ready.is_ok() {
                        tracing::info!(pod = %self.key(), volumes = ?changed, "volumes refreshed");
                    }
                    self.volumes_ready = Ok(());
                }
                Err(e) => {
                    if self.volumes_ready.is_ok() {
                        tracing::warn!(pod = %self.key(), error = %e, "volume refresh failed");
                    } else {
                        let msg = e.to_string();
                        if self.volumes_ready.as_ref().err() != Some(&msg) {
                            tracing::warn!(pod = %self.key(), error = %msg, "volumes not ready");
                        }
                        self.volumes_ready = Err(msg);
                    }
                }
            }
        }
        if let Err(e) = &self.volumes_ready {
            let msg = e.clone();
            for c in &mut self.ctrs {
                c.state = State::Waiting {
                    reason: "ContainerCreating".into(),
                    message: msg.clone(),
                };
            }
            return;
        }

        self.reap_and_probe();

        // Init containers in order, then every regular container.
        let policy = self.restart_policy().to_owned();
        let first_pending_init = self.ctrs.iter().position(|c| c.init && !c.succeeded());
        let to_start: Vec<usize> = match first_pending_init {
            Some(i) => vec![i],
            None => (0..self.ctrs.len())
                .filter(|&i| !self.ctrs[i].init)
                .collect(),
        };
        for i in to_start {
            let c = &self.ctrs[i];
            let startable = match &c.state {
                State::Waiting { .. } => c.next_start.is_none_or(|t| Instant::now() >= t),
                State::Running { .. } => false,
                State::Terminated(t) => {
                    let restart = match policy.as_str() {
                        "Never" => false,
                        "OnFailure" => t.exit_code != 0,
                        _ => !c.init || t.exit_code != 0,
                    };
                    restart && c.next_start.is_none_or(|t| Instant::now() >= t)
                }
            };
            if startable {
                self.start(i).await;
            }
        }
    }

    /// Reaps exited processes, applies backoff, acts on startup/liveness failures.
    fn reap_and_probe(&mut self) {
        let policy = self.restart_policy().to_owned();
        let (base, cap) = (self.ctx.restart_backoff, self.ctx.restart_backoff_cap);
        for c in &mut self.ctrs {
            let State::Running {
                process,
                started_at,
                since,
                probes,
            } = &mut c.state
            else {
                continue;
            };
            if let Some(exit) = process.exited() {
                let t = Terminated {
                    exit_code: exit.code,
                    signal: exit.signal,
                    reason: if exit.code == 0 {
                        "Completed".into()
                    } else {
                        "Error".into()
                    },
                    message: c.kill_reason.take(),
                    started_at: *started_at,
                    finished_at: Timestamp::now(),
                    container_id: format!("process://{}", process.pid()),
                };
                tracing::info!(container = %c.spec.name, pid = process.pid(), code = exit.code, "container exited");
                if since.elapsed() > cap {
                    c.backoff = base;
                }
                let will_restart = match policy.as_str() {
                    "Never" => false,
                    "OnFailure" => exit.code != 0,
                    _ => !c.init || exit.code != 0,
                };
                if will_restart {
                    c.next_start = Some(Instant::now() + c.backoff);
                    c.backoff = (c.backoff * 2).min(cap);
                }
                c.kill_at = None;
                c.state = State::Terminated(t);
                continue;
            }
            if let Some(startup) = &probes.startup {
                let v = startup.verdict.borrow().clone();
                if v.ok && !*probes.gate.borrow() {
                    let _ = probes.gate.send(true);
                }
                if v.failed && c.kill_at.is_none() {
                    c.kill_reason = Some(format!(
                        "startup probe failed: {}",
                        v.last_error.unwrap_or_default()
                    ));
                }
            }
            if *probes.gate.borrow() {
                probes.startup = None;
            }
            if let Some(l) = &probes.liveness {
                let v = l.verdict.borrow().clone();
                if v.failed && c.kill_at.is_none() {
                    c.kill_reason = Some(format!(
                        "liveness probe failed: {}",
                        v.last_error.unwrap_or_default()
                    ));
                }
            }
            if c.kill_reason.is_some() && c.kill_at.is_none() {
                tracing::warn!(container = %c.spec.name, reason = ?c.kill_reason, "killing container");
                process.signal(Signal::SIGTERM);
                probes.liveness = None;
                probes.readiness = None;
                c.kill_at = Some(Instant::now() + Duration::from_secs(10));
            }
            if c.kill_at.is_some_and(|t| Instant::now() >= t) {
                process.signal(Signal::SIGKILL);
            }
        }
    }

    async fn start(&mut self, i: usize) {
        let pod = self.pod.clone();
        let ip = self.ip.to_string();
        let spec = self.ctrs[i].spec.clone();
        let result = self.launch(&pod, &spec, &ip).await;
        let c = &mut self.ctrs[i];
        match result {
            Err((reason, message)) => {
                if !matches!(&c.state, State::Waiting { message: m, .. } if *m == message) {
                    tracing::warn!(container = %spec.name, %reason, %message, "container cannot start");
                }
                c.state = State::Waiting { reason, message };
                c.next_start = Some(Instant::now() + Duration::from_secs(1));
            }
            Ok((process, probes)) => {
                if let State::Terminated(t) = &c.state {
                    c.last = Some(t.clone());
                    c.restart_count += 1;
                }
                self.ctx
                    .pids
                    .lock()
                    .expect("pids lock")
                    .insert(format!("{}/{}", self.uid, spec.name), process.pid());
                tracing::info!(pod = %format!("{}/{}", self.ns, self.name), container = %spec.name, pid = process.pid(), "container started");
                c.next_start = None;
                c.state = State::Running {
                    process,
                    started_at: Timestamp::now(),
                    since: Instant::now(),
                    probes,
                };
                self.ever_running = true;
            }
        }
    }

    async fn launch(
        &self,
        pod: &Pod,
        spec: &Container,
        ip: &str,
    ) -> Result<(Process, Probes), (String, String)> {
        let image = spec.image.clone().unwrap_or_default();
        let table_binary = self
            .ctx
            .images
            .resolve(&image)
            .map_err(|e| (e.reason.to_owned(), e.message))?;
        let config_err = |m: String| ("CreateContainerConfigError".to_owned(), m);
        let environment =
            env::container_env(&self.ctx.client, pod, spec, ip, self.ctx.apiserver_port)
                .await
                .map_err(|e| config_err(e.to_string()))?;
        let (command, mut args) = env::command_line(spec, &environment);
        let program = match command.split_first() {
            None => table_binary,
            Some((first, rest)) => {
                let p = Path::new(first);
                let candidate = if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    table_binary
                        .parent()
                        .map(|d| d.join(first))
                        .unwrap_or_else(|| p.to_path_buf())
                };
                if !candidate.is_file() {
                    return Err(config_err(format!(
                        "command {first:?}: no such binary ({})",
                        candidate.display()
                    )));
                }
                let mut all = rest.to_vec();
                all.append(&mut args);
                args = all;
                candidate
            }
        };
        let mut mounts = Vec::new();
        for m in spec.volume_mounts.iter().flatten() {
            if m.sub_path.as_deref().is_some_and(|s| !s.is_empty())
                || m.sub_path_expr.as_deref().is_some_and(|s| !s.is_empty())
            {
                return Err(config_err(format!(
                    "volumeMount {:?}: subPath is not supported by the process kubelet",
                    m.name
                )));
            }
            let Some(source) = self.volumes.dir(&m.name) else {
                return Err(config_err(format!(
                    "volumeMount {:?}: no such volume",
                    m.name
                )));
            };
            let target = PathBuf::from(&m.mount_path);
            let created =
                processes::ensure_mount_point(&target).map_err(|e| config_err(e.to_string()))?;
            self.ctx
                .created_mount_points
                .lock()
                .expect("mount points lock")
                .extend(created);
            mounts.push(Mount {
                source: source.to_path_buf(),
                target,
                read_only: m.read_only.unwrap_or(false) || self.volumes.always_read_only(&m.name),
            });
        }
        let mut vars = environment.vars().to_vec();
        if !vars.iter().any(|(k, _)| k == "HOSTNAME") {
            vars.push(("HOSTNAME".into(), self.name.clone()));
        }
        let log = log_path(&self.ctx.state_dir, &self.ns, &self.name, &spec.name);
        let launch = Launch {
            program,
            args,
            env: vars,
            mounts,
            working_dir: spec.working_dir.clone(),
            log,
            run_as: run_as(pod, spec).map_err(config_err)?,
        };
        let process =
            Process::spawn(&launch).map_err(|e| ("RunContainerError".to_owned(), e.to_string()))?;

        let pod_ip: IpAddr = IpAddr::V4(self.ip);
        let (gate, gate_rx) = watch::channel(spec.startup_probe.is_none());
        let startup = spec.startup_probe.as_ref().map(|p| {
            let (_, open) = watch::channel(true);
            probes::start(probes::resolve(p, spec, pod_ip), false, open)
        });
        let readiness = spec
            .readiness_probe
            .as_ref()
            .map(|p| probes::start(probes::resolve(p, spec, pod_ip), false, gate_rx.clone()));
        let liveness = spec
            .liveness_probe
            .as_ref()
            .map(|p| probes::start(probes::resolve(p, spec, pod_ip), true, gate_rx.clone()));
        Ok((
            process,
            Probes {
                startup,
                readiness,
                liveness,
                gate,
            },
        ))
    }

    /// Stops every running process: SIGTERM, `grace`, SIGKILL, in parallel.
    async fn stop_all(&mut self, grace: Duration) {
        let waits = self.ctrs.iter().filter_map(|c| match &c.state {
            State::Running { process, .. } => Some(process.terminate(grace)),
            _ => None,
        });
        join_all(waits).await;
        self.reap_and_probe();
        self.forget_pids();
    }

    fn forget_pids(&self) {
        let prefix = format!("{}/", self.uid);
        self.ctx
            .pids
            .lock()
            .expect("pids lock")
            .retain(|k, _| !k.starts_with(&prefix));
    }

    /// preStop + SIGTERM, grace, SIGKILL; status with the exit codes; delete with grace 0.
    async fn graceful_delete(&mut self) {
        let grace = Duration::from_secs(
            self.pod
                .metadata
                .deletion_grace_period_seconds
                .or_else(|| {
                    self.pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.termination_grace_period_seconds)
                })
                .unwrap_or(30)
                .max(0) as u64,
        );
        tracing::info!(pod = %self.key(), ?grace, "pod deleted: terminating its containers");
        let deadline = Instant::now() + grace;
        for c in &mut self.ctrs {
            if let State::Running { probes, .. } = &mut c.state {
                probes.liveness = None;
                probes.startup = None;
            }
        }
        let ip = self.ip;
        let stops = self.ctrs.iter().filter_map(|c| match &c.state {
            State::Running { process, .. } => Some(async move {
                if let Some(pre) = c.spec.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
                    pre_stop(pre, &c.spec, ip, deadline).await;
                }
                process
                    .terminate(deadline.saturating_duration_since(Instant::now()))
                    .await
            }),
            _ => None,
        });
        join_all(stops).await;
        self.reap_and_probe();
        self.forget_pids();
        self.patch_status(None).await;
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&self.name, &params).await {
            Ok(_) => tracing::info!(pod = %self.key(), "pod deleted from the API"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => tracing::warn!(pod = %self.key(), error = %e, "final delete failed"),
        }
    }

    fn condition(&mut self, kind: &'static str, ok: bool, reason: Option<String>) -> Value {
        let entry = self
            .conditions
            .entry(kind)
            .or_insert((ok, Timestamp::now(), reason.clone()));
        if entry.0 != ok {
            *entry = (ok, Timestamp::now(), reason.clone());
        }
        let mut v = json!({
            "type": kind,
            "status": if ok { "True" } else { "False" },
            "lastProbeTime": null,
            "lastTransitionTime": entry.1.to_string(),
        });
        if let Some(r) = reason.filter(|_| !ok) {
            v["reason"] = json!(r);
        }
        v
    }

    fn container_status(&self, c: &Ctr) -> Value {
        let image = c.spec.image.clone().unwrap_or_default();
        let terminated = |t: &Terminated| {
            let mut v = json!({
                "exitCode": t.exit_code,
                "reason": t.reason,
                "startedAt": t.started_at.to_string(),
                "finishedAt": t.finished_at.to_string(),
                "containerID": t.container_id,
            });
            if let Some(s) = t.signal {
                v["signal"] = json!(s);
            }
            if let Some(m) = &t.message {
                v["message"] = json!(m);
            }
            json!({ "terminated": v })
        };
        let (state, container_id) = match &c.state {
            State::Waiting { reason, message } => {
                let mut w = json!({ "reason": reason });
                if !message.is_empty() {
                    w["message"] = json!(message);
                }
                (json!({ "waiting": w }), None)
            }
            State::Running {
                process,
                started_at,
                ..
            } => (
                json!({ "running": { "startedAt": started_at.to_string() } }),
                Some(format!("process://{}", process.pid())),
            ),
            State::Terminated(t) => {
                if c.next_start.is_some() {
                    let w = json!({ "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": format!("back-off restarting failed container {}", c.spec.name),
                    }});
                    (w, None)
                } else {
                    (terminated(t), Some(t.container_id.clone()))
                }
            }
        };
        let last = match (&c.state, &c.last) {
            (State::Terminated(t), _) if c.next_start.is_some() => terminated(t),
            (_, Some(t)) => terminated(t),
            _ => json!({}),
        };
        let binary = crate::images::repository(&image).to_owned();
        let mut v = json!({
            "name": c.spec.name,
            "image": image,
            "imageID": format!("ballast-e2e://{binary}"),
            "ready": c.ready(),
            "started": c.started(),
            "restartCount": c.restart_count,
            "state": state,
            "lastState": last,
        });
        if let Some(id) = container_id {
            v["containerID"] = json!(id);
        }
        v
    }

    async fn patch_status(&mut self, shutdown: Option<&str>) {
        let inits_done = self.ctrs.iter().filter(|c| c.init).all(Ctr::succeeded);
        let regular: Vec<&Ctr> = self.ctrs.iter().filter(|c| !c.init).collect();
        let containers_ready = inits_done && regular.iter().all(|c| c.ready());
        let gates_ok = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.readiness_gates.clone())
            .unwrap_or_default()
            .iter()
            .all(|g| {
                self.pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|cs| cs.iter().find(|c| c.type_ == g.condition_type))
                    .is_some_and(|c| c.status == "True")
            });
        let policy = self.restart_policy().to_owned();
        let init_failed_for_good = policy == "Never"
            && self
                .ctrs
                .iter()
                .any(|c| c.init && matches!(&c.state, State::Terminated(t) if t.exit_code != 0));
        let all_terminated = !regular.is_empty()
            && regular
                .iter()
                .all(|c| matches!(c.state, State::Terminated(_)) && c.next_start.is_none());
        let phase = if init_failed_for_good {
            "Failed"
        } else if all_terminated && (self.ever_running || shutdown.is_some()) {
            if regular.iter().all(|c| c.succeeded()) {
                "Succeeded"
            } else {
                "Failed"
            }
        } else if self.ever_running && inits_done {
            "Running"
        } else {
            "Pending"
        };
        let volumes_ok = self.volumes_ready.is_ok();
        let conditions = vec![
            self.condition("PodReadyToStartContainers", volumes_ok, None),
            self.condition(
                "Initialized",
                inits_done,
                Some("ContainersNotInitialized".into()),
            ),
            self.condition(
                "ContainersReady",
                containers_ready,
                Some("ContainersNotReady".into()),
            ),
            self.condition(
                "Ready",
                containers_ready && gates_ok && shutdown.is_none(),
                Some(if containers_ready {
                    "ReadinessGatesNotReady".into()
                } else {
                    "ContainersNotReady".into()
                }),
            ),
        ];
        let (inits, regs): (Vec<&Ctr>, Vec<&Ctr>) = self.ctrs.iter().partition(|c| c.init);
        let ip = self.ip.to_string();
        let mut status = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": "127.0.0.1",
            "hostIPs": [{ "ip": "127.0.0.1" }],
            "podIP": ip,
            "podIPs": [{ "ip": ip }],
            "startTime": self.start_time.to_string(),
            "containerStatuses": regs.iter().map(|c| self.container_status(c)).collect::<Vec<_>>(),
        });
        if !inits.is_empty() {
            status["initContainerStatuses"] = json!(inits
                .iter()
                .map(|c| self.container_status(c))
                .collect::<Vec<_>>());
        }
        if let Some(g) = self.pod.metadata.generation {
            status["observedGeneration"] = json!(g);
        }
        // null removes a reason/message left by an earlier kubelet's shutdown.
        status["message"] = json!(shutdown);
        status["reason"] = json!(shutdown.map(|_| "NodeShutdown"));
        if self.last_patched.as_ref() == Some(&status) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        // The uid makes the patch land on this pod only: a StatefulSet's successor has the
        // same name, and this worker's last patches (containers terminating) may come after
        // it was created. Merged into the successor, they would leave it two podIPs, which
        // the apiserver then refuses in every patch of the successor's own worker.
        let patch = Patch::Strategic(json!({ "metadata": { "uid": self.uid }, "status": status }));
        match api
            .patch_status(&self.name, &PatchParams::default(), &patch)
            .await
        {
            Ok(updated) => {
                self.pod.status = updated.status;
                self.last_patched = Some(status);
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(kube::Error::Api(e)) if e.message.contains("metadata.uid") => {
                tracing::info!(pod = %self.key(), "status not written: the pod of this name is now a newer one");
            }
            Err(e) => tracing::warn!(pod = %self.key(), error = %e, "status patch failed"),
        }
    }
}

/// Runs a preStop handler until it finishes or `deadline`.
async fn pre_stop(
    handler: &k8s_openapi::api::core::v1::LifecycleHandler,
    container: &Container,
    ip: Ipv4Addr,
    deadline: Instant,
) {
    let remaining = deadline.saturating_duration_since(Instant::now());
    if let Some(sleep) = &handler.sleep {
        let d = Duration::from_secs(sleep.seconds.max(0) as u64).min(remaining);
        tracing::info!(container = %container.name, ?d, "preStop: sleep");
        tokio::time::sleep(d).await;
    } else if let Some(http) = &handler.http_get {
        let probe = k8s_openapi::api::core::v1::Probe {
            http_get: Some(http.clone()),
            ..Default::default()
        };
        let spec = probes::resolve(&probe, container, IpAddr::V4(ip));
        let r = probes::check(&spec.action, remaining).await;
        tracing::info!(container = %container.name, result = ?r, "preStop: httpGet");
    } else {
        tracing::warn!(container = %container.name, "preStop: only sleep and httpGet are supported; skipped");
    }
}

/// Who a container runs as: `runAsUser`/`runAsGroup` (the container's over the pod's), with
/// the pod's `fsGroup` and `supplementalGroups`. None runs it as root, as an image without a
/// USER would; `runAsNonRoot` then refuses to start it, as a kubelet does.
fn run_as(pod: &Pod, c: &Container) -> std::result::Result<Option<RunAs>, String> {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let c_sc = c.security_context.as_ref();
    let uid = c_sc
        .and_then(|s| s.run_as_user)
        .or(pod_sc.and_then(|s| s.run_as_user));
    let non_root = c_sc
        .and_then(|s| s.run_as_non_root)
        .or(pod_sc.and_then(|s| s.run_as_non_root))
        .unwrap_or(false);
    let Some(uid) = uid.filter(|&u| u != 0) else {
        return if non_root {
            Err(format!(
                "container {:?} has runAsNonRoot and would run as root (set runAsUser)",
                c.name
            ))
        } else {
            Ok(None)
        };
    };
    let gid = c_sc
        .and_then(|s| s.run_as_group)
        .or(pod_sc.and_then(|s| s.run_as_group))
        .unwrap_or(0);
    let mut groups: Vec<u32> = pod_sc
        .and_then(|s| s.fs_group)
        .into_iter()
        .chain(
            pod_sc
                .and_then(|s| s.supplemental_groups.clone())
                .into_iter()
                .flatten(),
        )
        .map(|g| g as u32)
        .collect();
    groups.sort_unstable();
    groups.dedup();
    Ok(Some(RunAs {
        uid: uid as u32,
        gid: gid as u32,
        groups,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSecurityContext, PodSpec, SecurityContext};

    fn pod(sc: PodSecurityContext) -> Pod {
        Pod {
            spec: Some(PodSpec {
                security_context: Some(sc),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn a_container_runs_as_its_user_with_the_pods_fs_group() {
        let p = pod(PodSecurityContext {
            run_as_user: Some(1000),
            fs_group: Some(2000),
            supplemental_groups: Some(vec![3000, 2000]),
            ..PodSecurityContext::default()
        });
        let sidecar = Container {
            name: "ballast-sidecar".into(),
            security_context: Some(SecurityContext {
                run_as_user: Some(65532),
                run_as_group: Some(65532),
                ..SecurityContext::default()
            }),
            ..Container::default()
        };
        assert_eq!(
            run_as(&p, &sidecar).unwrap(),
            Some(RunAs {
                uid: 65532,
                gid: 65532,
                groups: vec![2000, 3000],
            })
        );
        let plain = Container {
            name: "gateway".into(),
            ..Container::default()
        };
        assert_eq!(run_as(&p, &plain).unwrap().unwrap().uid, 1000);
        assert_eq!(run_as(&p, &plain).unwrap().unwrap().gid, 0);
        assert_eq!(
            run_as(&pod(PodSecurityContext::default()), &plain).unwrap(),
            None
        );
        let refused = pod(PodSecurityContext {
            run_as_non_root: Some(true),
            ..PodSecurityContext::default()
        });
        assert!(run_as(&refused, &plain)
            .unwrap_err()
            .contains("runAsNonRoot"));
    }
}
