//! Readiness, liveness and startup probes, run for real against the pod's IP.
//!
//! `httpGet` (scheme HTTP) opens a TCP connection to `podIP:port` and sends an HTTP/1.1 GET;
//! any status 200–399 is success. `tcpSocket` succeeds when the connection opens. Each probe
//! runs in its own task with the spec's `initialDelaySeconds`, `periodSeconds`,
//! `timeoutSeconds`, `successThreshold` and `failureThreshold`, and publishes its verdict on a
//! watch channel. Like the kubelet, readiness starts as failed, liveness as passing, and neither
//! runs before the startup probe (if any) has succeeded. `exec`, `grpc` and HTTPS probes are
//! not supported: they report failure with a message saying so, never success. A probe is
//! only ever sent to a loopback address.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a probe checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Http {
        addr: SocketAddr,
        path: String,
        headers: Vec<(String, String)>,
    },
    Tcp {
        addr: SocketAddr,
    },
    /// A probe type this kubelet does not run; it always fails with this reason.
    Unsupported(String),
}

/// A probe's schedule and thresholds (Kubernetes defaults applied).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// A probe ready to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    pub action: Action,
    pub schedule: Schedule,
}

/// Resolves `probe` of `container` against the pod's IP (named ports looked up in the
/// container's ports).
pub fn resolve(probe: &Probe, container: &Container, pod_ip: IpAddr) -> ProbeSpec {
    let secs =
        |v: Option<i32>, default: u64| Duration::from_secs(v.map_or(default, |v| v.max(0) as u64));
    let schedule = Schedule {
        initial_delay: secs(probe.initial_delay_seconds, 0),
        period: secs(probe.period_seconds, 10).max(Duration::from_secs(1)),
        timeout: secs(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
        success_threshold: probe.success_threshold.unwrap_or(1).max(1) as u32,
        failure_threshold: probe.failure_threshold.unwrap_or(3).max(1) as u32,
    };
    let port = |p: &IntOrString| -> Result<u16, String> {
        match p {
            IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("bad port {n}")),
            IntOrString::String(name) => container
                .ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                .and_then(|cp| u16::try_from(cp.container_port).ok())
                .ok_or_else(|| format!("named port {name:?} not found in the container")),
        }
    };
    let host = |h: Option<&String>| -> Result<IpAddr, String> {
        match h {
            None => Ok(pod_ip),
            Some(h) => match h.parse::<IpAddr>() {
                Ok(ip) if ip.is_loopback() => Ok(ip),
                _ => Err(format!(
                    "probe host {h:?} is not a loopback address; refused"
                )),
            },
        }
    };
    let action = if let Some(http) = &probe.http_get {
        let scheme = http.scheme.as_deref().unwrap_or("HTTP");
        if !scheme.eq_ignore_ascii_case("HTTP") {
            Action::Unsupported(format!(
                "httpGet scheme {scheme} is not supported (HTTP only)"
            ))
        } else {
            match (host(http.host.as_ref()), port(&http.port)) {
                (Ok(ip), Ok(port)) => Action::Http {
                    addr: SocketAddr::new(ip, port),
                    path: http.path.clone().unwrap_or_else(|| "/".into()),
                    headers: http
                        .http_headers
                        .iter()
                        .flatten()
                        .map(|h| (h.name.clone(), h.value.clone()))
                        .collect(),
                },
                (Err(e), _) | (_, Err(e)) => Action::Unsupported(e),
            }
        }
    } else if let Some(tcp) = &probe.tcp_socket {
        match (host(tcp.host.as_ref()), port(&tcp.port)) {
            (Ok(ip), Ok(port)) => Action::Tcp {
                addr: SocketAddr::new(ip, port),
            },
            (Err(e), _) | (_, Err(e)) => Action::Unsupported(e),
        }
    } else if probe.exec.is_some() {
        Action::Unsupported("exec probes are not supported by the process kubelet".into())
    } else {
        Action::Unsupported("probe type not supported by the process kubelet".into())
    };
    ProbeSpec { action, schedule }
}

/// One attempt: `Ok(())` on success, `Err(why)` otherwise.
pub async fn check(action: &Action, timeout: Duration) -> Result<(), String> {
    match action {
        Action::Unsupported(why) => Err(why.clone()),
        Action::Tcp { addr } => match tokio::time::timeout(timeout, TcpStream::connect(addr)).await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {addr}: {e}")),
            Err(_) => Err(format!("dial tcp {addr}: timeout after {timeout:?}")),
        },
        Action::Http {
            addr,
            path,
            headers,
        } => match tokio::time::timeout(timeout, http_get(*addr, path, headers)).await {
            Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
            Ok(Ok(code)) => Err(format!("HTTP probe failed with statuscode: {code}")),
            Ok(Err(e)) => Err(format!("Get \"http://{addr}{path}\": {e}")),
            Err(_) => Err(format!(
                "Get \"http://{addr}{path}\": timeout after {timeout:?}"
            )),
        },
    }
}

async fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
) -> std::io::Result<u16> {
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::other(
            "refusing a non-loopback probe target",
        ));
    }
    let mut stream = TcpStream::connect(addr).await?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.37\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 8192 {
            break;
        }
    }
    let line = String::from_utf8_lossy(&buf);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::other(format!("malformed HTTP response {:?}", line.lines().next()))
        })
}

/// A probe's current verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    /// Last failure's message, for events/logs.
    pub last_error: Option<String>,
    /// Whether the failure threshold has just been crossed (liveness restarts on this).
    pub failed: bool,
}

/// A running probe; dropping it stops the task.
pub struct ProbeTask {
    pub verdict: watch::Receiver<Verdict>,
    task: JoinHandle<()>,
}

impl Drop for ProbeTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts probing `spec` once `gate` is true (the startup probe's success, or `true`).
/// `initial_ok` is the verdict before the first result (readiness: false; liveness: true).
pub fn start(spec: ProbeSpec, initial_ok: bool, mut gate: watch::Receiver<bool>) -> ProbeTask {
    let (tx, verdict) = watch::channel(Verdict {
        ok: initial_ok,
        last_error: None,
        failed: false,
    });
    let task = tokio::spawn(async move {
        if gate.wait_for(|open| *open).await.is_err() {
            return;
        }
        tokio::time::sleep(spec.schedule.initial_delay).await;
        let (mut successes, mut failures) = (0u32, 0u32);
        let mut ticker = tokio::time::interval(spec.schedule.period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let result = check(&spec.action, spec.schedule.timeout).await;
            let mut v = tx.borrow().clone();
            match result {
                Ok(()) => {
                    failures = 0;
                    successes += 1;
                    if successes >= spec.schedule.success_threshold {
                        v.ok = true;
                        v.failed = false;
                    }
                }
                Err(e) => {
                    successes = 0;
                    failures += 1;
                    v.last_error = Some(e);
                    if failures >= spec.schedule.failure_threshold {
                        v.ok = false;
                        v.failed = true;
                    }
                }
            }
            if tx.send(v).is_err() {
                return;
            }
        }
    });
    ProbeTask { verdict, task }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn http_server(status: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn http_probe_reads_the_status_code() {
        let ok = http_server("200 OK").await;
        let bad = http_server("503 Service Unavailable").await;
        let http = |addr| Action::Http {
            addr,
            path: "/readyz".into(),
            headers: vec![],
        };
        let t = Duration::from_secs(1);
        assert_eq!(check(&http(ok), t).await, Ok(()));
        let err = check(&http(bad), t).await.unwrap_err();
        assert!(err.contains("503"), "{err}");
        assert_eq!(check(&Action::Tcp { addr: ok }, t).await, Ok(()));
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(check(&Action::Tcp { addr: closed }, t).await.is_err());
        assert!(check(&http(closed), t).await.is_err());
    }

    #[tokio::test]
    async fn thresholds_govern_the_verdict() {
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let spec = ProbeSpec {
            action: Action::Tcp { addr: closed },
            schedule: Schedule {
                initial_delay: Duration::ZERO,
                period: Duration::from_millis(50),
                timeout: Duration::from_millis(200),
                success_threshold: 1,
                failure_threshold: 3,
            },
        };
        let (_gate_tx, gate) = watch::channel(true);
        let mut probe = start(spec, true, gate);
        // Liveness-style: passing until three consecutive failures.
        let v = tokio::time::timeout(Duration::from_secs(2), probe.verdict.wait_for(|v| v.failed))
            .await
            .unwrap()
            .unwrap()
            .clone();
        assert!(!v.ok);
        assert!(v.last_error.unwrap().contains("dial tcp"));
    }
}
