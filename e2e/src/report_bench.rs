//! The report-channel benchmark: one operator (the release binary, run as a local process
//! against a real control plane) receiving a report every second from each of N sidecars,
//! and what that costs it: resident memory, CPU, and the time from a report to its answer.
//!
//! Everything the operator checks is real: a PresenceCluster of N replicas, its StatefulSet
//! and N pods made by kube-controller-manager, a pod-bound token per pod minted by the API
//! server (TokenRequest) and reviewed by the operator (TokenReview), reports arriving from
//! each pod's own address. Only the pods' processes are missing: no kubelet runs them (their
//! `schedulerName` is one no scheduler serves), and this module writes what a kubelet would
//! (`phase`, `podIP`, `Ready`) into their status, then plays their sidecars
//! ([`crate::report_load`]).
//!
//! It owns the benchmark's setup, measurement window and figures. It never judges: the
//! figures are printed against the goals, and a run only fails when the setup does or when a
//! report is refused (the figures would then be about something else).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use ballast_contract::report::{ConnectionCounts, Handshakes, ServedCertificate};
use ballast_contract::Report;
use ballast_fleet::certs::{Ca, Validity};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, Client};
use serde_json::json;

use crate::control_plane::{free_port, ControlPlane};
use crate::report_load::{self, quantile, Sidecar, Tally};

const NS: &str = "presence";
const OPERATOR_NS: &str = "ballast-system";
const CLUSTER: &str = "bench";
/// No scheduler serves this name, so the pods stay unbound and no kubelet runs them.
const NO_SCHEDULER: &str = "ballast-bench-unscheduled";
/// The most replicas a PresenceCluster allows (the CRD's maximum).
pub const MAX_SIDECARS: usize = 1000;
/// Linux reports CPU time in clock ticks of 1/100 s (USER_HZ) on every mainstream ABI.
const TICKS_PER_SECOND: f64 = 100.0;

pub struct Options {
    pub sidecars: usize,
    /// Reports answered before the window opens (connections made, tokens reviewed).
    pub warmup: Duration,
    /// The measurement window.
    pub window: Duration,
    /// How often each sidecar reports (the sidecar's default is 1 s).
    pub every: Duration,
    /// The operator binary to measure (a release build).
    pub operator: PathBuf,
    pub workspace: PathBuf,
}

/// What one run measured.
#[derive(Debug)]
pub struct Figures {
    pub sidecars: usize,
    pub window: Duration,
    pub every: Duration,
    pub answered: u64,
    pub not_leader: u64,
    pub failed: u64,
    /// Report → answer, as the sidecars saw it (TLS, HTTP, the operator's work, and the
    /// generator's own scheduling on the same cores).
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// The operator's own histogram over the window: the bucket bound its p99 falls under.
    pub server_p99_at_most: Option<f64>,
    pub server_mean: Option<f64>,
    pub rss_mb: f64,
    pub rss_peak_mb: f64,
    /// With every pod cached, before the first report.
    pub rss_before_reports: f64,
    /// In cores (1.0 = one core busy all the time).
    pub operator_cpu: f64,
    pub generator_cpu: f64,
    pub apiserver_cpu: f64,
    pub etcd_cpu: f64,
    pub reporting_in_status: u64,
    pub setup: Duration,
}

pub async fn run(opts: &Options) -> anyhow::Result<Figures> {
    ensure!(
        (1..=MAX_SIDECARS).contains(&opts.sidecars),
        "--sidecars must be 1..={MAX_SIDECARS} (one PresenceCluster's most replicas)"
    );
    ensure!(
        opts.operator.is_file(),
        "no operator binary at {} (build it: cargo build --release -p ballast-operator)",
        opts.operator.display()
    );
    let started = Instant::now();
    let say = |msg: String| {
        eprintln!(
            "[bench-reports {:>6.1}s] {msg}",
            started.elapsed().as_secs_f64()
        )
    };
    let n = opts.sidecars;

    let dir = std::env::temp_dir().join(format!("ballast-bench-reports-{}", std::process::id()));
    say(format!("control plane up (state {})", dir.display()));
    let plane = ControlPlane::up(&opts.workspace, &dir, false)?;
    let client = plane.client().await?;
    kubectl(
        &plane,
        &[
            "apply",
            "-f",
            &path(&opts.workspace.join("crds/presencecluster.yaml")),
        ],
    )?;
    kubectl(
        &plane,
        &[
            "wait",
            "--for=condition=Established",
            "crd/presenceclusters.ballast.dev",
            "--timeout=60s",
        ],
    )?;
    for ns in [OPERATOR_NS, NS] {
        kubectl(&plane, &["create", "namespace", ns])?;
    }
    let ca = Ca::new("bench")?;
    let cert = ca.issue_server(&["localhost".into()], Validity::Current)?;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "bench-tls"},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": cert.cert_pem, "tls.key": cert.key_pem, "ca.crt": ca.cert_pem()},
    }))?;
    Api::<Secret>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &secret)
        .await?;

    let report_port = free_port();
    let metrics_port = free_port();
    let operator = OperatorProcess::start(&opts.operator, &plane, report_port, metrics_port)?;
    say(format!(
        "operator started (pid {}, log {})",
        operator.pid(),
        operator.log.display()
    ));
    wait_for(
        "the operator's /readyz",
        Duration::from_secs(60),
        || async {
            let (code, _) = http_get(metrics_port, "/readyz").await?;
            (code == 200)
                .then_some(())
                .ok_or(format!("/readyz answered {code}"))
        },
    )
    .await?;

    let prc = json!({
        "apiVersion": "ballast.dev/v1alpha1", "kind": "PresenceCluster",
        "metadata": {"name": CLUSTER, "namespace": NS},
        "spec": {
            "replicas": n,
            "template": {"spec": {"schedulerName": NO_SCHEDULER, "containers": [
                {"name": "gateway", "image": "ballast/fleet:0.1.0", "args": ["gateway"]}]}},
            "gateway": {"port": 8080},
            "listener": {"port": 8443},
            "tls": {"secretName": "bench-tls"},
        },
    });
    let file = dir.join("bench-prc.json");
    std::fs::write(&file, prc.to_string())?;
    kubectl(&plane, &["apply", "-f", &path(&file)])?;
    say(format!(
        "PresenceCluster {CLUSTER} with {n} replicas applied"
    ));

    let pods = play_kubelet(&client, n, &say).await?;
    let sidecars = mint_tokens(&client, &pods, &cert, &say).await?;
    let ca_pem = wait_for(
        "the operator's CA ConfigMap",
        Duration::from_secs(60),
        || async {
            let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
            cms.get_opt(&format!("{CLUSTER}-operator-ca"))
                .await
                .map_err(|e| e.to_string())?
                .and_then(|c| c.data?.get("ca.crt").cloned())
                .ok_or("not yet".to_string())
        },
    )
    .await?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile_certs(&ca_pem)? {
        roots.add(c)?;
    }
    let target = report_load::Operator {
        address: format!("127.0.0.1:{report_port}").parse()?,
        server_name: rustls::pki_types::ServerName::try_from("127.0.0.1")?.to_owned(),
        tls: Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        ),
    };
    // What the pods alone cost it: caches and status, before the first report.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_before_reports = memory_kb(operator.pid(), "VmRSS:").unwrap_or(0) as f64 / 1024.0;
    say(format!(
        "operator RSS {rss_before_reports:.1} MB with {n} pods and no report yet"
    ));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let tally = report_load::spawn(sidecars, target, opts.every, stopped);
    wait_for(
        &format!("all {n} sidecars answered"),
        Duration::from_secs(180),
        || async {
            let reporting = tally.reporting.load(Ordering::Relaxed);
            say(format!("reporting {reporting}/{n} {}", counters(&tally)));
            if let Some(refusal) = tally.first_refusal.lock().expect("refusal").clone() {
                return Err(format!("a report was refused: {refusal}"));
            }
            (reporting == n)
                .then_some(())
                .ok_or(format!("{reporting}/{n}"))
        },
    )
    .await?;
    let gvk = GroupVersionKind::gvk("ballast.dev", "v1alpha1", "PresenceCluster");
    let prcs: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NS, &ApiResource::from_gvk(&gvk));
    let reporting_in_status = wait_for(
        "status counts every pod as reporting",
        Duration::from_secs(60),
        || async {
            let prc = prcs.get(CLUSTER).await.map_err(|e| e.to_string())?;
            let reporting = prc.data["status"]["reportingPods"].as_u64().unwrap_or(0);
            (reporting == n as u64)
                .then_some(reporting)
                .ok_or(format!("status reportingPods {reporting}"))
        },
    )
    .await?;
    let setup = started.elapsed();
    say(format!(
        "status: reportingPods {reporting_in_status}/{n}; warming up for {:?}",
        opts.warmup
    ));
    tokio::time::sleep(opts.warmup).await;

    // ------------------------------------------------------------ the window
    let pids = [
        Some(operator.pid()),
        Some(std::process::id()),
        plane.pid_of("kube-apiserver"),
        plane.pid_of("etcd"),
    ];
    let cpu_before = pids.map(|p| p.and_then(cpu_ticks));
    let metrics_before = scrape(metrics_port).await?;
    let answered_before = tally.answered.load(Ordering::Relaxed);
    let not_leader_before = tally.not_leader.load(Ordering::Relaxed);
    let failed_before = tally.failed.load(Ordering::Relaxed);
    let window_started = Instant::now();
    tally.start_recording();
    let mut rss_max = 0.0f64;
    let mut last_line = Instant::now();
    while window_started.elapsed() < opts.window {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss = memory_kb(operator.pid(), "VmRSS:").unwrap_or(0) as f64 / 1024.0;
        rss_max = rss_max.max(rss);
        if last_line.elapsed() >= Duration::from_secs(5) {
            last_line = Instant::now();
            say(format!(
                "window {:>3.0}/{}s: operator RSS {rss:.1} MB {}",
                window_started.elapsed().as_secs_f64(),
                opts.window.as_secs(),
                counters(&tally)
            ));
        }
    }
    let samples = tally.stop_recording();
    let elapsed = window_started.elapsed().as_secs_f64();
    let cpu_after = pids.map(|p| p.and_then(cpu_ticks));
    let metrics_after = scrape(metrics_port).await?;
    let cores = |i: usize| match (cpu_before[i], cpu_after[i]) {
        (Some(a), Some(b)) => (b - a) as f64 / TICKS_PER_SECOND / elapsed,
        _ => f64::NAN,
    };
    let answer = "ballast_operator_report_answer_seconds";
    let figures = Figures {
        sidecars: n,
        window: opts.window,
        every: opts.every,
        answered: tally.answered.load(Ordering::Relaxed) - answered_before,
        not_leader: tally.not_leader.load(Ordering::Relaxed) - not_leader_before,
        failed: tally.failed.load(Ordering::Relaxed) - failed_before,
        p50: quantile(&samples, 0.50),
        p99: quantile(&samples, 0.99),
        max: samples.last().copied().unwrap_or_default(),
        server_p99_at_most: histogram_quantile(&metrics_before, &metrics_after, answer, 0.99),
        server_mean: {
            let d = |s: &str| sample(&metrics_after, s) - sample(&metrics_before, s);
            let count = d(&format!("{answer}_count"));
            (count > 0.0).then(|| d(&format!("{answer}_sum")) / count)
        },
        rss_mb: memory_kb(operator.pid(), "VmRSS:").unwrap_or(0) as f64 / 1024.0,
        rss_peak_mb: rss_max,
        rss_before_reports,
        operator_cpu: cores(0),
        generator_cpu: cores(1),
        apiserver_cpu: cores(2),
        etcd_cpu: cores(3),
        reporting_in_status,
        setup,
    };
    let _ = stop.send(true);
    drop(operator);
    drop(plane);
    Ok(figures)
}

impl Figures {
    /// The figures, against the goals (under 100 MB, p99 under 200 ms at 1,000 pods).
    pub fn print(&self) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let verdict = |ok: bool| if ok { "goal met" } else { "GOAL MISSED" };
        let expected = self.sidecars as f64 * self.window.as_secs_f64() / self.every.as_secs_f64();
        println!(
            "report channel: {} sidecars, one report each every {:?}; window {:?} after setup ({:.0} s)",
            self.sidecars,
            self.every,
            self.window,
            self.setup.as_secs_f64()
        );
        println!(
            "  reports answered      {} ({:.0}/s, {:.1}% of those due); not_leader {}, failed {}",
            self.answered,
            self.answered as f64 / self.window.as_secs_f64(),
            100.0 * self.answered as f64 / expected,
            self.not_leader,
            self.failed
        );
        println!(
            "  report → answer       p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms   (p99 < 200 ms: {})",
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            verdict(self.p99 < Duration::from_millis(200))
        );
        if let (Some(p99), Some(mean)) = (self.server_p99_at_most, self.server_mean) {
            println!(
                "  inside the operator   mean {:.2} ms, p99 ≤ {:.1} ms (its own histogram)",
                mean * 1000.0,
                p99 * 1000.0
            );
        }
        println!(
            "  operator RSS          {:.1} MB at the end, {:.1} MB at most, {:.1} MB before the first report   (< 100 MB: {})",
            self.rss_mb,
            self.rss_peak_mb,
            self.rss_before_reports,
            verdict(self.rss_peak_mb < 100.0)
        );
        println!(
            "  CPU (cores of 2)      operator {:.2}, the simulated sidecars {:.2}, kube-apiserver {:.2}, etcd {:.2}",
            self.operator_cpu, self.generator_cpu, self.apiserver_cpu, self.etcd_cpu
        );
        println!(
            "  status                reportingPods {}/{}",
            self.reporting_in_status, self.sidecars
        );
    }
}

/// Waits until `n` pods of the cluster exist, writing into each what a kubelet would once its
/// containers run: phase Running, a pod IP (its own loopback address), Ready.
async fn play_kubelet(
    client: &Client,
    n: usize,
    say: &impl Fn(String),
) -> anyhow::Result<Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    let second = 200 + std::process::id() % 50;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last_line = Instant::now() - Duration::from_secs(60);
    loop {
        let list = api
            .list(&ListParams::default().labels(&format!("ballast.dev/presencecluster={CLUSTER}")))
            .await?
            .items;
        let pending: Vec<&Pod> = list
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_none())
            .collect();
        let running = list.len() - pending.len();
        if last_line.elapsed() >= Duration::from_secs(5) || running == n {
            last_line = Instant::now();
            say(format!(
                "pods: {}/{n} created, {running}/{n} running",
                list.len()
            ));
        }
        if running == n {
            return Ok(list);
        }
        ensure!(
            Instant::now() < deadline,
            "only {running} of {n} pods running after 10 minutes"
        );
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        futures::stream::iter(pending)
            .map(|pod| {
                let name = pod.metadata.name.clone().unwrap_or_default();
                let ordinal: u32 = name
                    .rsplit('-')
                    .next()
                    .and_then(|o| o.parse().ok())
                    .unwrap_or(0);
                let ip = format!("127.{second}.{}.{}", ordinal / 250, ordinal % 250 + 1);
                let ready =
                    |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now});
                let status = json!({"status": {
                    "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "startTime": now,
                    "conditions": [ready("Initialized"), ready("ContainersReady"), ready("Ready")],
                }});
                let api = api.clone();
                async move {
                    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                        .await
                }
            })
            .buffer_unordered(16)
            .try_collect::<Vec<_>>()
            .await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One simulated sidecar per pod, each with its pod's own bound token, as the kubelet would
/// project it (audience `ballast.dev/report`).
async fn mint_tokens(
    client: &Client,
    pods: &[Pod],
    cert: &ballast_fleet::certs::IssuedCert,
    say: &impl Fn(String),
) -> anyhow::Result<Vec<Sidecar>> {
    let not_after = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_hours(24 * 300))?
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let report = Report {
        protocol_version: ballast_contract::PROTOCOL_VERSION,
        sidecar_version: "bench".into(),
        connections: ConnectionCounts {
            total: 5_000,
            ..Default::default()
        },
        accepting: true,
        upstream_reachable: true,
        handshakes: Handshakes {
            per_second: 2.0,
            p50_seconds: 0.002,
            p99_seconds: 0.01,
            failed: 0,
        },
        certificate: ServedCertificate {
            sha256: cert.fingerprint(),
            not_after,
            generation: 1,
            ..Default::default()
        },
        max_connections: 10_000,
        max_handshakes_per_second: 500,
        ..Default::default()
    };
    let sidecars: Vec<Sidecar> = futures::stream::iter(pods)
        .map(|pod| {
            let client = client.clone();
            let report = report.clone();
            async move {
                let spec = pod.spec.as_ref().context("a pod without spec")?;
                let sa = spec
                    .service_account_name
                    .clone()
                    .unwrap_or_else(|| "default".into());
                let api: Api<ServiceAccount> = Api::namespaced(client, NS);
                let body = json!({
                    "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                    "spec": {
                        "audiences": [ballast_contract::TOKEN_AUDIENCE],
                        "expirationSeconds": 3600,
                        "boundObjectRef": {"kind": "Pod", "apiVersion": "v1",
                            "name": pod.metadata.name, "uid": pod.metadata.uid},
                    },
                });
                let granted: TokenRequest = api
                    .create_subresource("token", &sa, &PostParams::default(), &body)
                    .await?;
                let token = granted
                    .status
                    .and_then(|s| s.token)
                    .filter(|t| !t.is_empty())
                    .context("TokenRequest answered without a token")?;
                let source = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ip.as_deref())
                    .context("a pod without IP")?
                    .parse()?;
                anyhow::Ok(Sidecar {
                    source,
                    token,
                    report,
                })
            }
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    say(format!("{} pod-bound tokens minted", sidecars.len()));
    Ok(sidecars)
}

/// The operator as a child process of this benchmark; SIGTERM on drop, SIGKILL if it lingers.
struct OperatorProcess {
    child: Child,
    log: PathBuf,
}

impl OperatorProcess {
    fn start(
        binary: &Path,
        plane: &ControlPlane,
        report_port: u16,
        metrics_port: u16,
    ) -> anyhow::Result<OperatorProcess> {
        let log = plane.dir.join("logs/operator.log");
        let report = format!("127.0.0.1:{report_port}");
        let child = Command::new(binary)
            .env("KUBECONFIG", &plane.kubeconfig)
            .env("POD_NAMESPACE", OPERATOR_NS)
            .env("POD_NAME", "bench-operator")
            .env("BALLAST_METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
            .env("BALLAST_REPORT_LISTEN", &report)
            .env("BALLAST_REPORT_ADDRESS", &report)
            .env("BALLAST_LOG_FORMAT", "text")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(OperatorProcess { child, log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn kubectl(plane: &ControlPlane, args: &[&str]) -> anyhow::Result<()> {
    let (ok, out) = plane.run("kubectl", args);
    if !ok {
        bail!("kubectl {}: {out}", args.join(" "));
    }
    Ok(())
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn counters(tally: &Tally) -> String {
    let last_failure = tally.last_failure.lock().expect("last failure").clone();
    format!(
        "(answered {}, not_leader {}, refused {}, failed {}{})",
        tally.answered.load(Ordering::Relaxed),
        tally.not_leader.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        last_failure
            .map(|f| format!(", last: {f}"))
            .unwrap_or_default()
    )
}

async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(last) if Instant::now() >= deadline => {
                bail!("timed out after {timeout:?} waiting for {what}: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

fn rustls_pemfile_certs(
    pem: &str,
) -> anyhow::Result<Vec<rustls_pki_types::CertificateDer<'static>>> {
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the operator's CA is not PEM")?;
    ensure!(
        !certs.is_empty(),
        "the operator's CA ConfigMap holds no certificate"
    );
    Ok(certs)
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are fixed.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// A `/proc/<pid>/status` memory line (`VmRSS:`, `VmHWM:`), in kB.
fn memory_kb(pid: u32, key: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// GET http://127.0.0.1:port/path → (status, body).
async fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    use http_body_util::{BodyExt, Empty};
    let get = async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, format!("127.0.0.1:{port}"))
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let code = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok((code, String::from_utf8_lossy(&body.to_bytes()).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), get)
        .await
        .map_err(|_| "no answer within 5 s".to_string())?
}

async fn scrape(port: u16) -> anyhow::Result<String> {
    let (code, body) = http_get(port, "/metrics")
        .await
        .map_err(|e| anyhow::anyhow!("scraping the operator: {e}"))?;
    ensure!(code == 200, "/metrics answered {code}");
    Ok(body)
}

/// One series' value in Prometheus text (`name{labels}` exactly as exposed); 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The upper bound of the histogram bucket the `q` quantile of the observations made between
/// two scrapes falls into.
fn histogram_quantile(before: &str, after: &str, name: &str, q: f64) -> Option<f64> {
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets: Vec<(f64, f64)> = after
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, _) = rest.split_once('"')?;
            let series = format!("{prefix}{le}\"}}");
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, sample(after, &series) - sample(before, &series)))
        })
        .collect();
    let total = buckets.last()?.1;
    (total > 0.0).then(|| {
        buckets
            .iter()
            .find(|(_, count)| *count >= q * total)
            .map(|(bound, _)| *bound)
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_quantile_is_taken_over_the_window_only() {
        let scrape = |a: u32, b: u32, inf: u32| {
            format!(
                "x_bucket{{le=\"0.001\"}} {a}\nx_bucket{{le=\"0.01\"}} {b}\nx_bucket{{le=\"+Inf\"}} {inf}\n"
            )
        };
        // Before the window: 1,000 slow observations; during it: 100, of which 99 fast.
        let before = scrape(0, 0, 1000);
        let after = scrape(99, 100, 1100);
        assert_eq!(histogram_quantile(&before, &after, "x", 0.99), Some(0.001));
        assert_eq!(histogram_quantile(&before, &after, "x", 1.0), Some(0.01));
        assert_eq!(histogram_quantile(&after, &after, "x", 0.99), None);
    }

    #[test]
    fn cpu_ticks_read_past_a_command_name_with_spaces() {
        let own = cpu_ticks(std::process::id());
        assert!(own.is_some(), "our own /proc/self/stat parses");
    }
}
