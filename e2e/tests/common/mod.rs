//! The e2e harness shared by the suites: build what is missing, bring up a real control plane
//! on fresh ports and a fresh state dir, start the process kubelet, wait for the Node — and
//! tear all of it down in Drop, even when a test fails.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::ListParams;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, Client};

pub use ballast_e2e::control_plane::ControlPlane;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

pub fn elapsed() -> f64 {
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

#[allow(unused_macros)]
macro_rules! step {
    ($($arg:tt)*) => {
        eprintln!("[e2e {:>6.1}s] {}", elapsed(), format!($($arg)*))
    };
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn newest_mtime(path: &Path) -> std::time::SystemTime {
    let meta = std::fs::metadata(path).unwrap();
    let own = meta.modified().unwrap();
    if !meta.is_dir() {
        return own;
    }
    std::fs::read_dir(path)
        .unwrap()
        .map(|e| newest_mtime(&e.unwrap().path()))
        .fold(own, std::cmp::max)
}

/// The control plane of this test; `down.sh` runs on drop (after the operator's log tails
/// are printed, when the test failed).
pub struct Cluster {
    pub dir: PathBuf,
    pub plane: ControlPlane,
}

impl Cluster {
    pub fn down(&self) -> bool {
        self.plane.down()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // `BALLAST_E2E_KEEP_LOGS=DIR` keeps every pod's logs and the kubelet's, pass or fail,
        // in DIR/<this run's state directory name> (down.sh removes the state directory).
        if let Some(keep) = std::env::var_os("BALLAST_E2E_KEEP_LOGS") {
            let to = Path::new(&keep).join(self.dir.file_name().unwrap_or_default());
            let kept = std::fs::create_dir_all(&to).is_ok()
                && ["kubelet/pods", "logs"].iter().all(|from| {
                    Command::new("cp")
                        .arg("-r")
                        .arg(self.dir.join(from))
                        .arg(&to)
                        .status()
                        .is_ok_and(|s| s.success())
                });
            eprintln!(
                "logs kept in {} ({})",
                to.display(),
                if kept {
                    "complete"
                } else {
                    "partly: a copy failed"
                }
            );
        }
        // A failed test leaves what the operator said: the tail of its pods' logs.
        if std::thread::panicking() {
            let pods = self.dir.join("kubelet/pods");
            for entry in std::fs::read_dir(&pods).into_iter().flatten().flatten() {
                if !entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with("ballast-system_")
                {
                    continue;
                }
                for log in std::fs::read_dir(entry.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if let Ok(text) = std::fs::read_to_string(log.path()) {
                        let lines: Vec<&str> = text.lines().collect();
                        for (i, l) in lines.iter().enumerate() {
                            if l.contains("panicked") {
                                eprintln!("----- a panic in {}:", log.path().display());
                                for l in lines.iter().skip(i).take(4) {
                                    eprintln!("{l}");
                                }
                            }
                        }
                        let tail: Vec<&str> = text.lines().rev().take(25).collect();
                        eprintln!("----- last lines of {}:", log.path().display());
                        for l in tail.iter().rev() {
                            eprintln!("{l}");
                        }
                    }
                }
            }
        }
    }
}

/// The kubelet process; SIGTERM (then SIGKILL) on drop.
pub struct Kubelet {
    pub child: Child,
    pub log: PathBuf,
}

impl Kubelet {
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            if let Ok(log) = std::fs::read_to_string(&self.log) {
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("----- last kubelet log lines ({}):", self.log.display());
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// Waits until an Event in `namespace` matches `wanted` (Events are written a moment after the
/// status that reports the same thing, so they are waited for, never listed once).
pub async fn wait_for_event(
    client: &Client,
    namespace: &str,
    what: &str,
    timeout: Duration,
    wanted: impl Fn(&k8s_openapi::api::events::v1::Event) -> bool,
) {
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), namespace);
    eventually(what, timeout, || async {
        let list = events
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        list.items
            .iter()
            .any(&wanted)
            .then_some(())
            .ok_or_else(|| format!("{} Events, none matching", list.items.len()))
    })
    .await
}

pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match f().await {
            Ok(v) => return v,
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}: {last}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// GET http://addr/path → (status, body), loopback only.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    assert!(addr.ip().is_loopback());
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timeout".to_string())?
        .map_err(|e| e.to_string())?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf))
        .await
        .map_err(|_| "read timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("bad response")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

pub async fn sidecar_sha256(pod_ip: &str) -> Result<String, String> {
    let (code, body) = http_get(format!("{pod_ip}:9901").parse().unwrap(), "/status").await?;
    if code != 200 {
        return Err(format!("/status answered {code}"));
    }
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    v["certificate"]["sha256"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("no certificate.sha256 in {body}"))
}

/// The value of one series in Prometheus text (`name{labels}` exactly as exposed); 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

pub fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Container name → PID, from the kubelet's `process://PID` container IDs.
pub fn pids(p: &Pod) -> BTreeMap<String, u32> {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
        .filter_map(|c| {
            let pid = c
                .container_id
                .as_deref()?
                .strip_prefix("process://")?
                .parse()
                .ok()?;
            Some((c.name.clone(), pid))
        })
        .collect()
}

pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

pub async fn ready_pods(pods: &Api<Pod>, n: usize) -> Result<Vec<Pod>, String> {
    let list = pods
        .list(&ListParams::default().labels("app=gateway"))
        .await
        .map_err(|e| e.to_string())?;
    let ready: Vec<Pod> = list
        .items
        .iter()
        .filter(|p| pod_ready(p) && p.metadata.deletion_timestamp.is_none())
        .cloned()
        .collect();
    if ready.len() == n {
        return Ok(ready);
    }
    let states: Vec<String> = list
        .items
        .iter()
        .map(|p| {
            let s = p.status.clone().unwrap_or_default();
            format!(
                "{} phase={:?} containers={:?}",
                p.metadata.name.clone().unwrap_or_default(),
                s.phase,
                s.container_statuses
                    .unwrap_or_default()
                    .iter()
                    .map(|c| (c.name.clone(), c.ready, c.state.clone()))
                    .collect::<Vec<_>>()
            )
        })
        .collect();
    Err(format!("{} of {n} pods Ready: {states:#?}", ready.len()))
}

/// A running local cluster: control plane, kubelet, admin client. Fields drop in order:
/// the kubelet (stopping every pod process) before the control plane.
pub struct LocalCluster {
    pub kubelet: Kubelet,
    pub cluster: Cluster,
    pub client: Client,
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    /// Where this workspace's binaries are (the kubelet's image table points here).
    pub bin_dir: PathBuf,
    /// Where kubectl and helm are.
    pub tools: PathBuf,
    /// The operator's report address: the process kubelet has no Service proxy, so every
    /// operator replica listens on this one loopback address with SO_REUSEPORT and the kernel
    /// spreads the sidecars' connections over them, as a Service's virtual IP would.
    pub report_address: String,
}

/// Brings a cluster up for the test `tag`; `pod_binaries` are the workspace packages whose
/// binaries pods will run (built here if missing or stale).
pub async fn start(tag: &str, pod_binaries: &[&str]) -> LocalCluster {
    let _ = rustls::crypto::ring::default_provider().install_default();
    elapsed();
    let ws = workspace();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());

    // ---------------------------------------------------------------- binaries
    let t = Instant::now();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_ballast-e2e"))
        .parent()
        .unwrap()
        .to_path_buf();
    // `cargo test --workspace` (CI) has built them already; a lone `cargo test -p ballast-e2e`
    // builds them here when missing or older than their sources.
    let sources_mtime = [
        "sidecar/src",
        "fleet/src",
        "operator/src",
        "crates",
        "Cargo.lock",
    ]
    .iter()
    .map(|p| newest_mtime(&ws.join(p)))
    .max()
    .unwrap();
    let stale = pod_binaries.iter().any(|b| {
        std::fs::metadata(bin_dir.join(b))
            .and_then(|m| m.modified())
            .map_or(true, |t| t < sources_mtime)
    });
    if stale {
        step!("building {pod_binaries:?} (missing or older than their sources)");
        let built = Command::new(&cargo)
            .arg("build")
            .args(pod_binaries.iter().flat_map(|b| ["-p", b]))
            .arg("--bins")
            .current_dir(&ws)
            .status()
            .expect("running cargo build");
        assert!(built.success(), "cargo build of the pod binaries failed");
    }
    for b in pod_binaries {
        assert!(
            bin_dir.join(b).is_file(),
            "{b} not in {}",
            bin_dir.display()
        );
    }
    step!("pod binaries ready in {:.1}s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let dir = std::env::temp_dir().join(format!("ballast-e2e-{tag}-{}", std::process::id()));
    step!(
        "up.sh (state {}; control-plane binaries built once, then cached)",
        dir.display()
    );
    let plane = ControlPlane::up(&ws, &dir, true).expect("bringing up the control plane");
    let t_up = t.elapsed().as_secs_f64();
    step!(
        "control plane up in {t_up:.1}s (apiserver 127.0.0.1:{})",
        plane.apiserver_port
    );
    let tools = plane.tools.clone();
    let cluster = Cluster {
        dir: dir.clone(),
        plane,
    };

    let kubeconfig = dir.join("kubeconfig");
    let client = ballast_e2e::api_clients::client_from(&kubeconfig)
        .await
        .unwrap();

    // ---------------------------------------------------------------- kubelet
    let node_name = format!("{tag}-node");
    let kubelet_state = dir.join("kubelet");
    std::fs::create_dir_all(&kubelet_state).unwrap();
    let second = 100 + std::process::id() % 100;
    let subnet = format!("127.{second}.0.0/16");
    // Far from the pod addresses, which are handed out from the bottom of the /16.
    let report_address = format!("127.{second}.250.1:9443");
    let log = dir.join("logs/kubelet.log");
    let t = Instant::now();
    let kubelet = Kubelet {
        child: Command::new(env!("CARGO_BIN_EXE_ballast-e2e"))
            .args(["kubelet", "--node", &node_name, "--pod-subnet", &subnet])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--state-dir")
            .arg(&kubelet_state)
            .arg("--bin-dir")
            .arg(&bin_dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting the kubelet"),
        log,
    };
    step!(
        "kubelet started (pid {}, pods on {subnet})",
        kubelet.child.id()
    );
    let nodes: Api<Node> = Api::all(client.clone());
    eventually("Node Ready", Duration::from_secs(30), || async {
        let n = nodes.get(&node_name).await.map_err(|e| e.to_string())?;
        let s = n.status.unwrap_or_default();
        let ready = s
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let taints = n.spec.and_then(|s| s.taints).unwrap_or_default();
        if ready && taints.is_empty() {
            Ok(())
        } else {
            Err(format!("ready={ready} taints={taints:?}"))
        }
    })
    .await;
    step!("node Ready in {:.1}s", t.elapsed().as_secs_f64());

    LocalCluster {
        kubelet,
        cluster,
        client,
        dir,
        kubeconfig,
        bin_dir,
        tools,
        report_address,
    }
}

impl LocalCluster {
    /// `helm install` values that reach the report channel on this cluster.
    pub fn report_values(&self) -> Vec<String> {
        vec![
            "--set".into(),
            format!("report.listen={}", self.report_address),
            "--set".into(),
            format!("report.address={}", self.report_address),
        ]
    }

    /// Runs kubectl or helm (`tool`) against this cluster; returns (success, stdout+stderr).
    pub fn run(&self, tool: &str, args: &[&str]) -> (bool, String) {
        let out = Command::new(self.tools.join(tool))
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .unwrap_or_else(|e| panic!("running {tool}: {e}"));
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }
}

/// The namespace the examples use.
pub const NS: &str = "presence";
/// Where the chart installs the operator.
pub const OPERATOR_NS: &str = "ballast-system";

/// `helm install` of the chart as the suites use it: `replicas` operator replicas, pods bound
/// to their own address, a 2 s resync, the report channel on this cluster's loopback address.
pub fn install_operator(lc: &LocalCluster, replicas: usize) {
    install_operator_with(lc, replicas, &[]);
}

/// [`install_operator`] with more `helm install` arguments (`--set key=value`…).
pub fn install_operator_with(lc: &LocalCluster, replicas: usize, extra: &[&str]) {
    let chart = workspace().join("charts/ballast");
    let replicas = format!("replicas={replicas}");
    let mut args = vec![
        "install",
        "ballast",
        chart.to_str().unwrap(),
        "--namespace",
        OPERATOR_NS,
        "--create-namespace",
        "--set",
        "bindPodIP=true",
        "--set",
        &replicas,
        "--set",
        "resync=2s",
        "--set",
        "logFormat=text",
        "--wait",
        "--timeout",
        "120s",
    ];
    let report = lc.report_values();
    args.extend(report.iter().map(String::as_str));
    // `BALLAST_E2E_OPERATOR_LOG=info,ballast_operator::plan=debug` logs every plan's trace
    // line in the operator's log (printed when a test fails).
    let level = std::env::var("BALLAST_E2E_OPERATOR_LOG")
        .map(|l| format!("logLevel={}", l.replace(',', "\\,")))
        .ok();
    if let Some(level) = &level {
        args.extend(["--set", level.as_str()]);
    }
    args.extend(extra);
    let (ok, out) = lc.run("helm", &args);
    assert!(ok, "helm install failed:\n{out}");
}

/// The examples' namespace, CA Issuer and Certificate; returns the CA once cert-manager has
/// issued `agents-tls`.
pub async fn apply_examples(lc: &LocalCluster) -> String {
    // In the order cert-manager can issue them, each waited for: the CA (its Secret), the
    // Issuer that signs with it (NotReady while that Secret is missing), the serving
    // certificate.
    for (file, ready) in [
        ("namespace.yaml", None),
        ("ca.yaml", Some("certificate/presence-ca")),
        ("issuer.yaml", Some("issuer/presence-ca")),
        ("certificate.yaml", Some("certificate/agents-tls")),
    ] {
        let (ok, out) = apply(lc, file, &example(file));
        assert!(ok, "{file}: {out}");
        if let Some(what) = ready {
            cert_manager_ready(lc, what);
        }
    }
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(lc.client.clone(), NS);
    eventually(
        "cert-manager issues agents-tls",
        Duration::from_secs(60),
        || async {
            secrets
                .get_opt("agents-tls")
                .await
                .map_err(|e| e.to_string())?
                .and_then(|s| s.data?.get("ca.crt").cloned())
                .map(|ca| String::from_utf8_lossy(&ca.0).into_owned())
                .ok_or_else(|| "no Secret yet".to_string())
        },
    )
    .await
}

/// Waits for cert-manager's `what` (`certificate/NAME`, `issuer/NAME`) to be Ready; on a
/// timeout, fails with its description and cert-manager's last log lines.
pub fn cert_manager_ready(lc: &LocalCluster, what: &str) {
    let t = Instant::now();
    let (ok, out) = lc.run(
        "kubectl",
        &[
            "-n",
            NS,
            "wait",
            "--for=condition=Ready",
            what,
            "--timeout=90s",
        ],
    );
    if ok {
        step!(
            "cert-manager: {what} Ready in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        return;
    }
    let (_, described) = lc.run("kubectl", &["-n", NS, "describe", what]);
    let (_, requests) = lc.run(
        "kubectl",
        &["-n", NS, "get", "certificaterequests", "-o", "wide"],
    );
    let log = std::fs::read_to_string(lc.dir.join("logs/cert-manager.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    panic!(
        "cert-manager: {what} not Ready after 90s: {out}\n{described}\n{requests}\n--- cert-manager's log:\n{}",
        tail.join("\n")
    );
}

pub fn prc_api(lc: &LocalCluster) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("ballast.dev", "v1alpha1", "PresenceCluster");
    Api::namespaced_with(lc.client.clone(), NS, &ApiResource::from_gvk(&gvk))
}

/// The PresenceCluster's status, as JSON.
pub async fn prc_status(lc: &LocalCluster, name: &str) -> Result<serde_json::Value, String> {
    let prc = prc_api(lc).get(name).await.map_err(|e| e.to_string())?;
    Ok(prc.data["status"].clone())
}

pub fn condition<'a>(status: &'a serde_json::Value, type_: &str) -> &'a serde_json::Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or(&serde_json::Value::Null)
}

pub async fn wait_ready(lc: &LocalCluster, name: &str, pods: usize, timeout: Duration) {
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
pub fn apply(lc: &LocalCluster, name: &str, text: &str) -> (bool, String) {
    let path = lc.dir.join(name);
    std::fs::write(&path, text).unwrap();
    lc.run("kubectl", &["apply", "-f", path.to_str().unwrap()])
}

pub fn example(file: &str) -> String {
    std::fs::read_to_string(workspace().join("examples").join(file)).unwrap()
}

/// Renews the examples' Certificate `agents-tls` the way `cmctl renew` does (the Certificate
/// gets the status condition Issuing=True; cert-manager issues a new pair, a new key under
/// rotationPolicy Always) and returns the moment the new pair is visible in the Secret.
pub async fn renew_certificate(lc: &LocalCluster) -> Instant {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(lc.client.clone(), NS);
    let crt = |s: k8s_openapi::api::core::v1::Secret| s.data.unwrap_or_default().remove("tls.crt");
    let old = crt(secrets.get("agents-tls").await.unwrap());
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let trigger = serde_json::json!([{"op": "add", "path": "/status/conditions/-", "value": {
        "type": "Issuing", "status": "True", "reason": "ManuallyTriggered",
        "message": "renewal requested by the e2e test", "lastTransitionTime": now}}]);
    let (ok, out) = lc.run(
        "kubectl",
        &[
            "patch",
            "certificate",
            "agents-tls",
            "-n",
            NS,
            "--subresource=status",
            "--type=json",
            "-p",
            &trigger.to_string(),
        ],
    );
    assert!(ok, "triggering the renewal: {out}");
    eventually(
        "cert-manager writes the renewed pair",
        Duration::from_secs(60),
        || async {
            let now = crt(secrets.get("agents-tls").await.map_err(|e| e.to_string())?);
            if now.is_some() && now != old {
                Ok(Instant::now())
            } else {
                Err("the Secret still holds the old pair".to_string())
            }
        },
    )
    .await
}

/// The pods the operator restarted in the examples' namespace, one entry per restart, from its
/// `PodRestarted` Events: one Event per pod (its `related`), a repeat counted in the series.
pub async fn restarted_pods(lc: &LocalCluster) -> Vec<String> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(lc.client.clone(), NS);
    let list = events.list(&ListParams::default()).await.unwrap();
    list.items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("PodRestarted"))
        .flat_map(|e| {
            let n = e.series.as_ref().map_or(1, |s| s.count.max(1)) as usize;
            let pod = e
                .related
                .as_ref()
                .and_then(|r| r.name.clone())
                .unwrap_or_default();
            std::iter::repeat_n(pod, n)
        })
        .collect()
}

/// Follows the examples' Service `edge`, port `tls`, as kube-proxy would route (re-resolved
/// every 500 ms); the targets feed a fleet. Stops when the follower is dropped.
pub async fn follow_edge(
    lc: &LocalCluster,
) -> (
    ballast_fleet::agents::Targets,
    ballast_e2e::endpoints::Follower,
) {
    ballast_e2e::endpoints::follow(
        lc.client.clone(),
        NS,
        "edge",
        Some("tls"),
        ballast_e2e::endpoints::FOLLOW_EVERY,
    )
    .await
    .unwrap()
}

/// Waits until the followed `targets` list `n` endpoints; the failure says what edge-0's
/// sidecar and the status said.
pub async fn wait_endpoints(lc: &LocalCluster, targets: &ballast_fleet::agents::Targets, n: usize) {
    eventually(
        &format!("{n} endpoints"),
        Duration::from_secs(30),
        || async {
            let listed = targets.snapshot().len();
            if listed == n {
                return Ok(());
            }
            let pod = Api::<Pod>::namespaced(lc.client.clone(), NS)
                .get("edge-0")
                .await
                .map_err(|e| e.to_string())?;
            let ip = pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .unwrap_or_default();
            let sidecar = http_get(format!("{ip}:9901").parse().unwrap(), "/status").await;
            let prc = prc_status(lc, "edge").await?;
            Err(format!(
                "{listed} endpoints; edge-0 sidecar {sidecar:?}; status {prc}"
            ))
        },
    )
    .await;
}
