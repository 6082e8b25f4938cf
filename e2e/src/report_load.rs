//! Simulated sidecars on the report channel, for the operator's benchmark: each holds one TLS
//! connection to the operator from its pod's own address, presents its pod's real, bound
//! ServiceAccount token, and POSTs a report every interval, timing each answer.
//!
//! It owns only the client side of the wire protocol (the same path, headers and JSON as the
//! sidecar's operator link, from `ballast-contract`). It never talks to the cluster, never to
//! anything but loopback, and never retries faster than its interval: it is load, not a storm.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use ballast_contract::{Answer, Report, REPORT_PATH};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

/// An answer is a few hundred bytes.
const MAX_ANSWER: usize = 64 * 1024;
/// A report not answered by then counts as failed (and the connection is replaced).
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// One simulated sidecar: who it is and what it says.
pub struct Sidecar {
    /// Its pod's IP: reports leave from it, as a real pod's would.
    pub source: IpAddr,
    /// Its pod's bound token (audience `ballast.dev/report`).
    pub token: String,
    /// The report it sends; `sequence` and the connection count move with every send.
    pub report: Report,
}

/// Where the operator listens and how it is verified.
#[derive(Clone)]
pub struct Operator {
    pub address: SocketAddr,
    pub server_name: ServerName<'static>,
    pub tls: Arc<rustls::ClientConfig>,
}

/// What the simulated sidecars saw, shared with whoever measures.
#[derive(Default)]
pub struct Tally {
    pub answered: AtomicU64,
    pub not_leader: AtomicU64,
    /// Refused with 4xx/5xx: the operator did not believe or could not check a report.
    pub refused: AtomicU64,
    /// Connection, TLS, HTTP or timeout failures.
    pub failed: AtomicU64,
    /// Sidecars that have had at least one report answered with directives.
    pub reporting: AtomicUsize,
    /// The first refusal's message, to say why when things go wrong.
    pub first_refusal: Mutex<Option<String>>,
    /// The latest failure's message.
    pub last_failure: Mutex<Option<String>>,
    recording: AtomicBool,
    samples: Mutex<Vec<Duration>>,
}

impl Tally {
    /// From now on every answered report's latency is kept.
    pub fn start_recording(&self) {
        self.samples.lock().expect("samples").clear();
        self.recording.store(true, Ordering::SeqCst);
    }

    /// Stops keeping latencies and hands over those kept, sorted.
    pub fn stop_recording(&self) -> Vec<Duration> {
        self.recording.store(false, Ordering::SeqCst);
        let mut samples = std::mem::take(&mut *self.samples.lock().expect("samples"));
        samples.sort_unstable();
        samples
    }
}

/// Starts every sidecar's report loop; they run until `stop` turns true. Their first reports
/// are spread evenly over one interval, as independent pods' would be.
pub fn spawn(
    sidecars: Vec<Sidecar>,
    operator: Operator,
    every: Duration,
    stop: watch::Receiver<bool>,
) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let n = sidecars.len().max(1);
    for (i, sidecar) in sidecars.into_iter().enumerate() {
        let offset = every.mul_f64(i as f64 / n as f64);
        tokio::spawn(report_loop(
            sidecar,
            operator.clone(),
            every,
            offset,
            tally.clone(),
            stop.clone(),
        ));
    }
    tally
}

async fn report_loop(
    mut sidecar: Sidecar,
    operator: Operator,
    every: Duration,
    offset: Duration,
    tally: Arc<Tally>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    let mut counted = false;
    let base = sidecar.report.connections.total;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = ticks.tick() => {}
        }
        let report = &mut sidecar.report;
        report.sequence += 1;
        // Agents come and go a little, so the figures (and the status) move every second.
        let total = base + fastrand::u64(0..=20);
        report.connections.total = total;
        report.connections.on_current_certificate = total;
        let started = Instant::now();
        let outcome = tokio::time::timeout(
            EXCHANGE_TIMEOUT,
            exchange(
                &operator,
                &mut sender,
                sidecar.source,
                &sidecar.token,
                report,
            ),
        )
        .await
        .unwrap_or_else(|_| Err(Outcome::Failed("no answer within 10 s".into())));
        match outcome {
            Ok(Answer::Directives(_)) => {
                let took = started.elapsed();
                tally.answered.fetch_add(1, Ordering::Relaxed);
                if !counted {
                    counted = true;
                    tally.reporting.fetch_add(1, Ordering::Relaxed);
                }
                if tally.recording.load(Ordering::Relaxed) {
                    tally.samples.lock().expect("samples").push(took);
                }
            }
            Ok(Answer::NotLeader { .. }) => {
                tally.not_leader.fetch_add(1, Ordering::Relaxed);
                sender = None;
            }
            Err(Outcome::Refused(message)) => {
                tally.refused.fetch_add(1, Ordering::Relaxed);
                tally
                    .first_refusal
                    .lock()
                    .expect("first refusal")
                    .get_or_insert(message);
            }
            Err(Outcome::Failed(message)) => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                *tally.last_failure.lock().expect("last failure") = Some(message);
                sender = None;
            }
        }
    }
}

enum Outcome {
    Refused(String),
    Failed(String),
}

impl From<anyhow::Error> for Outcome {
    fn from(e: anyhow::Error) -> Self {
        Outcome::Failed(format!("{e:#}"))
    }
}

async fn exchange(
    operator: &Operator,
    sender: &mut Option<SendRequest<Full<Bytes>>>,
    source: IpAddr,
    token: &str,
    report: &Report,
) -> Result<Answer, Outcome> {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        *sender = Some(connect(operator, source).await?);
    }
    let s = sender.as_mut().expect("connected above");
    s.ready().await.map_err(|e| anyhow!("connection: {e}"))?;
    let body = serde_json::to_vec(report).expect("a report serializes");
    let request = Request::builder()
        .method(Method::POST)
        .uri(REPORT_PATH)
        .header(HOST, operator.address.to_string())
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
        return Err(Outcome::Refused(format!(
            "{status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    serde_json::from_slice(&body).map_err(|e| Outcome::Failed(format!("answer: {e}")))
}

async fn connect(operator: &Operator, source: IpAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let addr = operator.address;
    anyhow::ensure!(
        addr.ip().is_loopback() && source.is_loopback(),
        "the report load talks to loopback only"
    );
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(source, 0))?;
    let tcp = socket
        .connect(addr)
        .await
        .with_context(|| format!("connecting to {addr} from {source}"))?;
    let _ = tcp.set_nodelay(true);
    let tls = TlsConnector::from(operator.tls.clone())
        .connect(operator.server_name.clone(), tcp)
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

/// The `q` quantile (0..=1) of sorted samples; zero when there are none.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let ms = |n| Duration::from_millis(n);
        let sorted: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(quantile(&sorted, 0.5), ms(50));
        assert_eq!(quantile(&sorted, 0.99), ms(99));
        assert_eq!(quantile(&sorted, 1.0), ms(100));
        assert_eq!(quantile(&sorted[..1], 0.99), ms(1));
        assert_eq!(quantile(&[], 0.99), Duration::ZERO);
    }
}
