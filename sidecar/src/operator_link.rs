//! The report channel to the operator: one kept-alive HTTPS connection, a [`Report`] every
//! interval, and the [`Answer`]'s directives handed to [`crate::directives`].
//!
//! The sidecar proves who it is with its pod's projected ServiceAccount token (audience
//! [`ballast_contract::TOKEN_AUDIENCE`]), re-read before every report because the kubelet
//! rotates it; it checks who it talks to against the operator's CA bundle. A replica that is
//! not the leader answers `not_leader`: the connection is dropped and the next report opens a
//! new one, which the Service may send to another replica.
//!
//! It must never hold up the data plane: every failure is logged, counted and retried on the
//! next tick; nothing the data plane waits on is locked across network I/O; and when answers
//! stop, the directives lapse on their own (`server` runs that clock, not this task).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;

use ballast_contract::clock;
use ballast_contract::report::{ConnectionCounts, RefusedCertificate, ServedCertificate};
use ballast_contract::{Answer, Report, PROTOCOL_VERSION, REPORT_PATH};

use crate::metrics::{CloseCause, Refusal};
use crate::server::Shared;

/// One exchange (connect, TLS, request, answer) may take this long before it counts as failed.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(3);
/// An answer is a few hundred bytes; anything much larger is not the operator.
const MAX_ANSWER: usize = 64 * 1024;

/// Where and how to report.
pub struct Link {
    /// `host:port`, resolved on every new connection (a Service name may move).
    address: String,
    server_name: ServerName<'static>,
    ca: PathBuf,
    token_file: PathBuf,
    interval: Duration,
    /// Reports leave from this address (the pod's own) when the sidecar listens on one.
    source: Option<IpAddr>,
}

impl Link {
    /// From the configuration; `None` when no operator is configured.
    pub fn from_config(config: &crate::Config) -> anyhow::Result<Option<Link>> {
        let Some(address) = config.operator.clone() else {
            return Ok(None);
        };
        let (Some(ca), Some(token_file)) = (
            config.operator_ca.clone(),
            config.operator_token_file.clone(),
        ) else {
            bail!("--operator needs --operator-ca and --operator-token-file");
        };
        let host = match &config.operator_server_name {
            Some(name) => name.clone(),
            None => host_of(&address)
                .with_context(|| format!("--operator {address:?}: expected host:port"))?,
        };
        let server_name = ServerName::try_from(host.clone())
            .with_context(|| format!("{host:?} is not a DNS name or an IP address"))?;
        crate::tls::load_roots(&ca)?;
        let ip = config.listen.ip();
        Ok(Some(Link {
            address,
            server_name,
            ca,
            token_file,
            interval: config.report_interval,
            source: (!ip.is_unspecified()).then_some(ip),
        }))
    }
}

/// `host` of `host:port` or `[v6]:port`.
fn host_of(address: &str) -> Option<String> {
    let (host, port) = address.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| host.to_owned())
}

/// What the operator has already been told, so each report carries only what is new. It
/// moves on only when the leader answered: a report that failed or reached a replica that is
/// not the leader is folded into the next one, so no close goes uncounted.
#[derive(Default)]
struct Counted {
    refused: BTreeMap<String, u64>,
    closed: BTreeMap<String, u64>,
}

/// Reports until the task is dropped. A message on `flush` sends one report at once and
/// answers when it went (or failed): the last report of a terminating pod carries the closes
/// of its drain's final second, which would otherwise never reach the operator.
pub async fn run(
    link: Link,
    shared: Arc<Shared>,
    mut flush: tokio::sync::mpsc::Receiver<tokio::sync::oneshot::Sender<()>>,
) {
    let mut tick = tokio::time::interval(link.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    let mut counted = Counted::default();
    let mut sequence = 0u64;
    let mut last_problem = String::new();
    tracing::info!(operator = %link.address, "reporting to the operator");
    let mut flushed: Option<tokio::sync::oneshot::Sender<()>> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(done) = flush.recv() => flushed = Some(done),
        }
        sequence += 1;
        let (report, totals) = build_report(&shared, &counted, sequence);
        let outcome =
            tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(&link, &mut sender, &report)).await;
        let problem = match outcome {
            Ok(Ok(Answer::Directives(directives))) => {
                shared.metrics.report("answered").inc();
                counted = totals;
                match shared.directed.apply(
                    &directives,
                    Instant::now(),
                    &shared.drainer,
                    &shared.metrics,
                ) {
                    Ok(()) => String::new(),
                    Err(why) => format!("directives {} ignored: {why}", directives.id),
                }
            }
            Ok(Ok(Answer::NotLeader { leader })) => {
                shared.metrics.report("not_leader").inc();
                sender = None;
                // A new connection next time, at a moment of our own: the Service may route it
                // to the leader, and a fleet of sidecars does not arrive at once.
                tokio::time::sleep(Duration::from_millis(fastrand::u64(50..400))).await;
                tick.reset_immediately();
                format!(
                    "reached an operator replica that is not the leader (leader: {})",
                    leader.as_deref().unwrap_or("unknown")
                )
            }
            Ok(Err(Failure::Refused(code, message))) => {
                shared.metrics.report("refused").inc();
                format!("the operator refused the report ({code}): {message}")
            }
            Ok(Err(Failure::Broken(err))) => {
                shared.metrics.report("failed").inc();
                sender = None;
                format!("report failed: {err:#}")
            }
            Err(_) => {
                shared.metrics.report("failed").inc();
                sender = None;
                format!("report timed out after {EXCHANGE_TIMEOUT:?}")
            }
        };
        // Say each problem once, and say when it is over: a sidecar that cannot reach the
        // operator every second for an hour should not write 3,600 lines.
        if problem != last_problem {
            if problem.is_empty() {
                tracing::info!(operator = %link.address, "reports answered");
            } else {
                tracing::warn!(operator = %link.address, "{problem}");
            }
            last_problem = problem;
        }
        if let Some(done) = flushed.take() {
            let _ = done.send(());
        }
    }
}

enum Failure {
    /// The operator answered and said no (401/403/4xx): the token or the pod is the problem.
    Refused(StatusCode, String),
    /// No answer: connection, TLS or protocol trouble.
    Broken(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self::Broken(e)
    }
}

async fn exchange(
    link: &Link,
    sender: &mut Option<SendRequest<Full<Bytes>>>,
    report: &Report,
) -> Result<Answer, Failure> {
    let token = std::fs::read_to_string(&link.token_file)
        .map_err(|e| anyhow!("token {}: {e}", link.token_file.display()))?;
    let token = token.trim();
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        *sender = Some(connect(link).await?);
    }
    let s = sender.as_mut().expect("connected above");
    s.ready().await.map_err(|e| anyhow!("connection: {e}"))?;
    let body = serde_json::to_vec(report).expect("a report serializes");
    let request = Request::builder()
        .method(Method::POST)
        .uri(REPORT_PATH)
        .header(HOST, &link.address)
        .header(CONTENT_TYPE, "application/json")
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| anyhow!("request: {e}"))?;
    let response = s
        .send_request(request)
        .await
        .map_err(|e| anyhow!("request: {e}"))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| anyhow!("answer: {e}"))?
        .to_bytes();
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
        return Err(Failure::Refused(status, message));
    }
    serde_json::from_slice(&body).map_err(|e| Failure::Broken(anyhow!("answer: {e}")))
}

async fn connect(link: &Link) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let roots = crate::tls::load_roots(&link.ca)?;
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&link.address)
        .await
        .with_context(|| format!("resolving {}", link.address))?
        .collect();
    let addr =
        *fastrand::choice(&addrs).ok_or_else(|| anyhow!("{} resolves to nothing", link.address))?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(source) = link.source.filter(|s| s.is_ipv4() == addr.is_ipv4()) {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    let tcp = socket
        .connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let _ = tcp.set_nodelay(true);
    let tls = TlsConnector::from(Arc::new(config))
        .connect(link.server_name.clone(), tcp)
        .await
        .with_context(|| format!("TLS with the operator at {addr}"))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .context("HTTP handshake")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// The sidecar's account of itself now; refusals and closes since the previous report.
fn build_report(shared: &Shared, counted: &Counted, sequence: u64) -> (Report, Counted) {
    let now = Instant::now();
    let served = shared.tls.current();
    let by_generation = shared.connections.by_generation();
    let total: usize = by_generation.values().sum();
    let on_current = by_generation.get(&served.generation).copied().unwrap_or(0);
    let m = &shared.metrics;
    let refused: BTreeMap<String, u64> = Refusal::ALL
        .iter()
        .map(|r| (r.as_str().to_owned(), m.refused(*r).get()))
        .collect();
    let closed: BTreeMap<String, u64> = CloseCause::ALL
        .iter()
        .map(|c| (c.as_str().to_owned(), m.closed(*c).get()))
        .collect();
    let totals = Counted {
        refused: refused.clone(),
        closed: closed.clone(),
    };
    let refused = since(&counted.refused, refused);
    let closed = since(&counted.closed, closed);
    let steered_away = shared.directed.steered_away(now);
    let report = Report {
        protocol_version: PROTOCOL_VERSION,
        sidecar_version: env!("CARGO_PKG_VERSION").into(),
        sequence,
        applied_directives: shared.directed.applied_id(now),
        connections: ConnectionCounts {
            total: total as u64,
            on_current_certificate: on_current as u64,
            on_older_certificate: (total - on_current) as u64,
        },
        accepting: shared.accepting() && !steered_away,
        terminating: !shared.accepting(),
        upstream_reachable: shared.upstream_reachable(),
        steered_away,
        draining: shared.drainer.progress().filter(|p| !p.finished),
        handshakes: shared.handshakes.take(now),
        refused,
        closed,
        certificate: ServedCertificate {
            sha256: served.certificate.facts.sha256.clone(),
            not_after: clock::rfc3339(served.certificate.facts.not_after),
            generation: served.generation,
            dns_names: served.certificate.facts.dns_names.clone(),
            ip_addresses: served.certificate.facts.ip_addresses.clone(),
            refused: shared.tls.last_failure().map(|f| RefusedCertificate {
                reason: f.reason.to_owned(),
                message: f.message,
            }),
        },
        max_connections: shared.config.max_connections as u64,
        max_handshakes_per_second: u64::from(shared.config.max_handshakes_per_second),
    };
    (report, totals)
}

/// `now - before` per key (only the non-zero ones).
fn since(before: &BTreeMap<String, u64>, now: BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    now.into_iter()
        .filter_map(|(k, v)| {
            let d = v.saturating_sub(before.get(&k).copied().unwrap_or(0));
            (d > 0).then_some((k, d))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_come_from_addresses() {
        assert_eq!(
            host_of("ballast-operator.ballast-system.svc:9443").as_deref(),
            Some("ballast-operator.ballast-system.svc")
        );
        assert_eq!(host_of("127.0.77.1:9443").as_deref(), Some("127.0.77.1"));
        assert_eq!(host_of("[::1]:9443").as_deref(), Some("::1"));
        assert_eq!(host_of("no-port"), None);
        assert_eq!(host_of(":9443"), None);
    }

    #[test]
    fn each_report_carries_what_the_operator_has_not_been_told() {
        let told = BTreeMap::new();
        let totals = BTreeMap::from([("drain".into(), 5), ("client".into(), 0)]);
        assert_eq!(
            since(&told, totals.clone()),
            BTreeMap::from([("drain".into(), 5)])
        );
        // That report was answered: the next one carries only what is new.
        let told = totals;
        let now = BTreeMap::from([("drain".into(), 7), ("client".into(), 1)]);
        assert_eq!(
            since(&told, now.clone()),
            BTreeMap::from([("drain".into(), 2), ("client".into(), 1)])
        );
        // Not answered (not_leader, failure): `told` stays, the next report carries both.
        let later = BTreeMap::from([("drain".into(), 9), ("client".into(), 1)]);
        assert_eq!(
            since(&told, later),
            BTreeMap::from([("drain".into(), 4), ("client".into(), 1)])
        );
    }
}
