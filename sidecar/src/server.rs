//! The sidecar's lifecycle: bind, accept under admission control, reload certificates, serve
//! the admin API, and on SIGTERM go lame duck and drain.
//!
//! The data plane runs on its own limits and its mounted Secret. With `--operator`, a
//! separate task reports to the operator and applies its directives (`operator_link`,
//! `directives`); those lapse by themselves, so the operator's absence changes nothing here.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ballast_contract::DrainSize;
use tokio::io::ReadBuf;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

use crate::accept_errors::AcceptErrors;
use crate::admission::{Admission, Turn};
use crate::config::Config;
use crate::connections::Connections;
use crate::directives::Directed;
use crate::drain::{Drainer, Origin};
use crate::events::Journal;
use crate::metrics::{Metrics, Refusal};
use crate::recent::RecentHandshakes;
use crate::tls::TlsState;
use crate::{admin, operator_link, proxy};

/// How often directives are checked for expiry: a lapse takes effect within this much.
const LAPSE_CHECK: Duration = Duration::from_millis(250);

/// Everything the accept loop, the connections and the admin API share.
pub struct Shared {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    upstream_sources: Vec<IpAddr>,
    next_source: AtomicUsize,
    pub upstream_connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub proxy_protocol: bool,
    pub tls: Arc<TlsState>,
    /// Admission limits and the connections waiting for a handshake.
    pub admission: Admission<(TcpStream, SocketAddr)>,
    pub connections: Arc<Connections>,
    pub drainer: Drainer,
    /// The operator's directives in force (none without `--operator`).
    pub directed: Directed,
    /// Handshakes since the last report.
    pub handshakes: RecentHandshakes,
    pub metrics: Arc<Metrics>,
    /// The MQTT 5 DISCONNECT a planned close sends (with the Server Reference, if any).
    pub mqtt5_disconnect: Vec<u8>,
    /// Lifecycle events for presence backends (none with `--events-buffer 0`).
    pub events: Option<Arc<Journal>>,
    pub config: Config,
    upstream_reachable: AtomicBool,
    /// Dials to the gateway that failed in a row. One failure only makes the probe look at
    /// once; readiness fails when the probe cannot connect either, or after
    /// [`UPSTREAM_FAILURES_IN_A_ROW`] failures, never on a single refused or slow dial.
    upstream_failures: AtomicU32,
    /// False from SIGTERM on: readiness fails and no connection is accepted.
    accepting: AtomicBool,
}

/// Failed dials in a row that mark the gateway unreachable without waiting for the probe.
pub const UPSTREAM_FAILURES_IN_A_ROW: u32 = 3;

impl Shared {
    pub fn new(config: Config, tls: Arc<TlsState>, metrics: Arc<Metrics>) -> Self {
        let connections = Arc::new(Connections::default());
        metrics
            .certificate_not_after_seconds
            .set(tls.current().certificate.facts.not_after);
        if let Some(tickets) = tls.tickets() {
            metrics.ticket_keys_loaded.set(tickets.loaded() as i64);
        }
        let events = (config.events_buffer > 0).then(|| {
            Arc::new(Journal::new(
                pod_name(&config),
                config.events_buffer,
                config.planned_reconnect_window,
                metrics.clone(),
            ))
        });
        Self {
            events,
            mqtt5_disconnect: crate::hint::mqtt5_disconnect(
                config.mqtt_server_reference.as_deref(),
            ),
            listen: config.listen,
            upstream: config.upstream,
            upstream_sources: config.upstream_sources.clone(),
            next_source: AtomicUsize::new(0),
            upstream_connect_timeout: config.upstream_connect_timeout,
            handshake_timeout: config.handshake_timeout,
            proxy_protocol: config.proxy_protocol,
            tls,
            admission: Admission::new(
                config.max_connections,
                config.max_handshakes_per_second,
                config.max_concurrent_handshakes,
                // A client that waited this long has spent half its handshake's time.
                config.handshake_timeout / 2,
            ),
            drainer: Drainer::new(connections.clone(), metrics.clone()),
            directed: Directed::default(),
            handshakes: RecentHandshakes::default(),
            connections,
            metrics,
            config,
            upstream_reachable: AtomicBool::new(true),
            upstream_failures: AtomicU32::new(0),
            accepting: AtomicBool::new(true),
        }
    }

    pub fn next_upstream_source(&self) -> Option<IpAddr> {
        if self.upstream_sources.is_empty() {
            return None;
        }
        let i = self.next_source.fetch_add(1, Ordering::Relaxed);
        Some(self.upstream_sources[i % self.upstream_sources.len()])
    }

    fn set_upstream_reachable(&self, reachable: bool) {
        let was = self.upstream_reachable.swap(reachable, Ordering::Relaxed);
        self.metrics.upstream_up.set(i64::from(reachable));
        if was != reachable {
            if reachable {
                tracing::info!(upstream = %self.upstream, "gateway reachable again");
            } else {
                tracing::error!(upstream = %self.upstream, "gateway unreachable; agents are being closed until it returns");
            }
        }
    }

    /// What an agent's dial to the gateway found. A failure that says nothing about the
    /// gateway (this process out of file descriptors) is not for this.
    pub fn upstream_dialed(&self, ok: bool) {
        if ok {
            self.upstream_failures.store(0, Ordering::Relaxed);
            self.set_upstream_reachable(true);
        } else if self.upstream_failures.fetch_add(1, Ordering::Relaxed) + 1
            >= UPSTREAM_FAILURES_IN_A_ROW
        {
            self.set_upstream_reachable(false);
        }
    }

    /// A dial failed since the last success: the probe should look now.
    fn upstream_suspect(&self) -> bool {
        self.upstream_failures.load(Ordering::Relaxed) > 0
    }

    pub fn upstream_reachable(&self) -> bool {
        self.upstream_reachable.load(Ordering::Relaxed)
    }

    /// Counts a refusal before the handshake, and tells the event consumers.
    pub fn refused(&self, peer: SocketAddr, refusal: Refusal) {
        self.metrics.refused(refusal).inc();
        if let Some(events) = &self.events {
            events.refused_before_handshake(peer, refusal);
        }
    }

    pub fn accepting(&self) -> bool {
        self.accepting.load(Ordering::Relaxed)
    }

    /// Ready to receive agents: accepting, the gateway answers, and the operator is not
    /// steering new connections away.
    pub fn ready(&self) -> bool {
        self.accepting() && self.upstream_reachable() && !self.directed.steered_away(Instant::now())
    }
}

/// `--pod-name`, else the host name (a pod's host name is its name).
fn pod_name(config: &Config) -> String {
    config.pod_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned())
    })
}

/// Binds the agents' listener with the configured backlog.
pub fn bind_listener(addr: SocketAddr, backlog: u32) -> anyhow::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    // Accepted sockets inherit it (Linux copies the listener's options into each one): one
    // setsockopt per listener instead of one per agent.
    socket.set_nodelay(true)?;
    socket
        .bind(addr)
        .with_context(|| format!("cannot listen on {addr}"))?;
    Ok(socket.listen(backlog)?)
}

/// Runs the sidecar until SIGTERM/SIGINT has been handled and every connection drained.
pub async fn run(config: Config, tls: Arc<TlsState>) -> anyhow::Result<()> {
    let link = operator_link::Link::from_config(&config).context("--operator")?;
    let metrics = Arc::new(Metrics::new());
    let listener = bind_listener(config.listen, config.listen_backlog)?;
    let admin_listener = TcpListener::bind(config.admin)
        .await
        .with_context(|| format!("cannot serve the admin API on {}", config.admin))?;
    let reload_interval = config.reload_interval;
    let shutdown_drain = config.shutdown_drain;
    let shared = Arc::new(Shared::new(config, tls.clone(), metrics.clone()));
    tracing::info!(
        listen = %listener.local_addr()?,
        admin = %admin_listener.local_addr()?,
        upstream = %shared.upstream,
        sha256 = %tls.current().certificate.facts.sha256,
        "ballast-sidecar serving"
    );

    let watcher = tokio::spawn(tls.watch(metrics.clone(), reload_interval));
    let prober = tokio::spawn(probe_upstream(shared.clone()));
    tokio::spawn(admin::serve(admin_listener, shared.clone()));
    let lapses = tokio::spawn(lapse_directives(shared.clone()));
    let (flush, flushes) = tokio::sync::mpsc::channel(1);
    let reporter = link.map(|link| tokio::spawn(operator_link::run(link, shared.clone(), flushes)));

    let (stop_tx, stop_rx) = watch::channel(false);
    let acceptor = tokio::spawn(accept_loop(listener, shared.clone(), stop_rx));
    let pacer = tokio::spawn(admit_in_turn(shared.clone()));

    wait_for_termination().await;
    tracing::info!(
        connections = shared.connections.len(),
        window_seconds = shutdown_drain.as_secs_f64(),
        "termination requested: readiness now fails, no new connections, draining"
    );
    shared.accepting.store(false, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let _ = acceptor.await;
    pacer.abort();
    for (_, peer) in shared.admission.take_waiting() {
        shared.refused(peer, Refusal::NotAccepting);
    }
    shared.metrics.waiting_for_handshake.set(0);
    // The shutdown drain replaces any other; the pod keeps reporting while it runs.
    shared
        .drainer
        .start(Origin::Shutdown, DrainSize::ALL, shutdown_drain);
    // The drain paces the closes; allow a little more for the last closes to complete.
    let deadline = Instant::now() + shutdown_drain + Duration::from_secs(5);
    while !shared.connections.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = shared.connections.len();
    if left > 0 {
        tracing::warn!(
            left,
            "drain window over; exiting with connections still open"
        );
    } else {
        tracing::info!("all connections drained; exiting");
    }
    if let Some(events) = &shared.events {
        // The shutdown's last disconnects are what a presence backend most needs to read.
        events.wait_until_read(Duration::from_secs(2)).await;
    }
    watcher.abort();
    prober.abort();
    lapses.abort();
    if let Some(reporter) = reporter {
        // One last report: the drain's final closes, so the operator's count adds up.
        let (done, sent) = tokio::sync::oneshot::channel();
        if flush.send(done).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(4), sent).await;
        }
        reporter.abort();
    }
    Ok(())
}

async fn wait_for_termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Accepts until told to stop; dropping the listener then closes the socket so new
/// connections are refused by the kernel and retried elsewhere.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut errors = AcceptErrors::new("agents", shared.metrics.accept_errors("agents"));
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => {
                errors.recovered();
                pair
            }
            Err(err) => {
                let pause = errors.failed(&err, Instant::now());
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                continue;
            }
        };
        if !shared.accepting() {
            shared.refused(peer, Refusal::NotAccepting);
            continue;
        }
        let now = Instant::now();
        if !shared.directed.admit(now) {
            shared.refused(peer, Refusal::Quota);
            continue;
        }
        match shared.admission.arrive((tcp, peer), now) {
            Ok(()) => {}
            Err((reason, (tcp, peer))) => {
                shared.refused(peer, reason);
                tracing::trace!(%peer, reason = reason.as_str(), "connection refused");
                drop(tcp);
            }
        }
        shared
            .metrics
            .waiting_for_handshake
            .set(shared.admission.waiting() as i64);
    }
}

/// Starts queued connections' handshakes in turn, at the pace admission allows.
async fn admit_in_turn(shared: Arc<Shared>) {
    loop {
        let turn = shared.admission.next(|(tcp, _)| left_already(tcp)).await;
        let metrics = &shared.metrics;
        metrics
            .waiting_for_handshake
            .set(shared.admission.waiting() as i64);
        match turn {
            Turn::Admitted((tcp, peer), ticket) => {
                metrics
                    .handshake_wait_seconds
                    .observe(ticket.queued.as_secs_f64());
                tokio::spawn(proxy::serve(shared.clone(), tcp, peer, ticket));
            }
            Turn::TooLate((_, peer), waited) => {
                shared.refused(peer, Refusal::HandshakeRate);
                tracing::debug!(%peer, waited_seconds = waited.as_secs_f64(),
                    "waited too long for a handshake slot; closed");
            }
        }
    }
}

/// The client closed while it waited (end of stream or an error, nothing buffered): no
/// handshake is worth starting. Looks without waiting and without consuming a byte.
fn left_already(tcp: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(Waker::noop());
    matches!(
        tcp.poll_peek(&mut cx, &mut buf),
        Poll::Ready(Ok(0) | Err(_))
    )
}

/// Lets the operator's directives go when nothing renewed them, whatever the report task is
/// doing (it may be stuck connecting to an operator that is gone).
async fn lapse_directives(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(LAPSE_CHECK);
    loop {
        tick.tick().await;
        shared
            .directed
            .lapse_if_expired(Instant::now(), &shared.drainer, &shared.metrics);
    }
}

/// Checks the gateway every 100 ms while an agent's dial failed since the last success (so
/// one failure is confirmed or cleared at once), and every second while it is marked
/// unreachable (so readiness recovers without waiting for an agent to try).
async fn probe_upstream(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None::<Instant>;
    loop {
        tick.tick().await;
        let due = if !shared.upstream_reachable() {
            last.is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        } else {
            last.is_none() || shared.upstream_suspect()
        };
        if !due {
            continue;
        }
        last = Some(Instant::now());
        let ok = tokio::time::timeout(
            shared.upstream_connect_timeout,
            tokio::net::TcpStream::connect(shared.upstream),
        )
        .await
        .map(|r| r.is_ok())
        .unwrap_or(false);
        if ok {
            shared.upstream_dialed(true);
        } else {
            shared.set_upstream_reachable(false);
        }
    }
}
