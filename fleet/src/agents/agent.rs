//! One agent's life: connect, handshake, HELLO, heartbeat, and come back after every loss.
//!
//! The agent behaves like the field devices Ballast exists for: a close_notify from the server
//! is a planned close and it reconnects at once; anything else is a failure and it backs off
//! with full jitter. Every attempt picks its target from the fleet's [`Targets`] as they are at
//! that moment, so a changed list steers the next attempts and never an established
//! connection. Each agent keeps its state in its own task and touches shared state only
//! through the [`Tally`](super::tally::Tally), so 50 000 of them cost a task and a TLS session
//! each, with no per-agent buffers beyond a few hundred bytes.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::backoff::{backoff_delay, Rng};
use super::tally::{Close, FailureKind, Tally};
use super::{FleetConfig, Targets};
use crate::certs::sha256_hex;

/// Longest line an agent accepts from the gateway.
const MAX_LINE: usize = 256;
/// Heartbeats without a PONG after which the connection is declared dead.
const MISSED_PONGS_FATAL: u32 = 3;
/// Upper bound of the pause before reconnecting after a graceful close.
const GRACEFUL_JITTER: Duration = Duration::from_millis(50);
/// How long a polite close_notify of ours may take before we just drop the socket.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an attempt waits for an empty target list to fill before it counts as a
/// `no_target` failure: long enough to ride out a Service whose endpoints are replaced at once,
/// short enough that a Service with none shows up in the live stats within a second.
const NO_TARGET_WAIT: Duration = Duration::from_millis(100);

/// What every agent shares: configuration, TLS client and ledger.
pub struct Context {
    pub config: FleetConfig,
    /// The shared TLS client (no resumption).
    pub client: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
    /// Sources to bind to for targets on loopback when `config.source_ips` is empty.
    pub loopback_source_ips: Vec<IpAddr>,
    pub tally: Arc<Tally>,
}

impl Context {
    /// One agent's TLS connector: the shared client, or with [`super::FleetConfig::resume`]
    /// a copy with the agent's own session cache (a shared cache keeps only a few tickets per
    /// server name, so most agents would find none).
    fn connector(&self) -> TlsConnector {
        if !self.config.resume {
            return TlsConnector::from(self.client.clone());
        }
        let mut own = (*self.client).clone();
        own.resumption = rustls::client::Resumption::in_memory_sessions(2);
        TlsConnector::from(Arc::new(own))
    }
}

/// An established connection, after WELCOME.
struct Session {
    tls: TlsStream<TcpStream>,
    target: SocketAddr,
    fingerprint: String,
    lines: Lines,
}

enum End {
    /// The fleet is stopping.
    Stopped,
    /// The server closed with close_notify, or otherwise, as counted by the tally.
    Lost(Close),
}

/// Runs agent `id` until `stop` turns true (or the fleet is dropped).
pub async fn run(
    ctx: Arc<Context>,
    id: usize,
    start_delay: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut rng = Rng::new(seed_for(id));
    let connector = ctx.connector();
    if !pause(start_delay, &mut stop).await {
        return;
    }
    let mut first = true;
    let mut attempt: u32 = 0;
    loop {
        let mut target = choose(&ctx.config.targets, id, first, &mut rng);
        if target.is_none() {
            if !pause(NO_TARGET_WAIT, &mut stop).await {
                return;
            }
            target = choose(&ctx.config.targets, id, first, &mut rng);
        }
        first = false;
        let established = match target {
            None => Ok(Err(FailureKind::NoTarget)),
            Some(addr) => tokio::select! {
                biased;
                _ = stopped(&mut stop) => return,
                r = timeout(ctx.config.connect_timeout, establish(&ctx, &connector, id, addr)) => r,
            },
        };
        let mut session = match established {
            Ok(Ok(session)) => session,
            failed => {
                let kind = match failed {
                    Err(_elapsed) => FailureKind::Timeout,
                    Ok(Err(kind)) => kind,
                    Ok(Ok(_)) => unreachable!(),
                };
                ctx.tally.on_failure(kind);
                attempt = attempt.saturating_add(1);
                let delay = backoff_delay(
                    ctx.config.backoff_base,
                    ctx.config.backoff_cap,
                    attempt,
                    &mut rng,
                );
                if !pause(delay, &mut stop).await {
                    return;
                }
                continue;
            }
        };
        ctx.tally
            .on_welcome(id, session.target, &session.fingerprint);
        attempt = 0;
        let end = heartbeat(&ctx, &mut session, &mut rng, &mut stop).await;
        let delay = match end {
            End::Stopped => {
                // Say goodbye properly: the server should see a graceful close from us too.
                let _ = timeout(GOODBYE_TIMEOUT, session.tls.shutdown()).await;
                return;
            }
            End::Lost(close) => {
                ctx.tally
                    .on_loss(id, session.target, &session.fingerprint, close);
                match close {
                    Close::Graceful => {
                        let _ = timeout(GOODBYE_TIMEOUT, session.tls.shutdown()).await;
                        rng.duration_below(GRACEFUL_JITTER)
                    }
                    Close::Abrupt => {
                        backoff_delay(ctx.config.backoff_base, ctx.config.backoff_cap, 0, &mut rng)
                    }
                }
            }
        };
        drop(session);
        if !pause(delay, &mut stop).await {
            return;
        }
    }
}

/// Where the next attempt goes, from the list as it is now: an agent's first attempt takes
/// `targets[id % len]` so a fleet starts evenly spread; every later one picks at random, as
/// kube-proxy does per connection. None when the list is empty.
fn choose(targets: &Targets, id: usize, first: bool, rng: &mut Rng) -> Option<SocketAddr> {
    let now = targets.snapshot();
    if now.is_empty() {
        return None;
    }
    let i = if first {
        id % now.len()
    } else {
        rng.below(now.len() as u64) as usize
    };
    Some(now[i])
}

/// Connect, handshake, HELLO → WELCOME. Errors say which step failed.
async fn establish(
    ctx: &Context,
    connector: &TlsConnector,
    id: usize,
    addr: SocketAddr,
) -> Result<Session, FailureKind> {
    let tcp = connect_tcp(ctx, id, addr)
        .await
        .map_err(|_| FailureKind::Connect)?;
    let _ = tcp.set_nodelay(true);
    let mut tls = connector
        .connect(ctx.server_name.clone(), tcp)
        .await
        .map_err(|_| FailureKind::Tls)?;
    let fingerprint = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| sha256_hex(leaf))
        .unwrap_or_default();
    let hello = format!("HELLO agent-{id}\n");
    tls.write_all(hello.as_bytes())
        .await
        .map_err(|_| FailureKind::Protocol)?;
    tls.flush().await.map_err(|_| FailureKind::Protocol)?;
    let mut lines = Lines::default();
    let mut chunk = [0u8; 128];
    loop {
        let n = tls
            .read(&mut chunk)
            .await
            .map_err(|_| FailureKind::Protocol)?;
        if n == 0 || !lines.push(&chunk[..n]) {
            return Err(FailureKind::Protocol);
        }
        match lines.next_line() {
            Some(Line::Welcome) => break,
            Some(_) => return Err(FailureKind::Protocol),
            None => continue,
        }
    }
    Ok(Session {
        tls,
        target: addr,
        fingerprint,
        lines,
    })
}

async fn connect_tcp(ctx: &Context, id: usize, addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // Decided per attempt: a followed Service may move between loopback and routable
    // addresses, and a loopback source cannot reach a routable target.
    let sources: &[IpAddr] = if !ctx.config.source_ips.is_empty() {
        &ctx.config.source_ips
    } else if addr.ip().is_loopback() {
        &ctx.loopback_source_ips
    } else {
        &[]
    };
    if !sources.is_empty() {
        let source = sources[id % sources.len()];
        if source.is_ipv4() == addr.is_ipv4() {
            socket.bind(SocketAddr::new(source, 0))?;
        }
    }
    socket.connect(addr).await
}

/// PING every heartbeat and read PONGs until the connection ends or the fleet stops.
async fn heartbeat(
    ctx: &Context,
    session: &mut Session,
    rng: &mut Rng,
    stop: &mut watch::Receiver<bool>,
) -> End {
    let every = ctx.config.heartbeat;
    // A random first offset spreads the fleet's pings over the whole interval.
    let mut next_ping = Instant::now() + rng.duration_below(every);
    let mut in_flight: VecDeque<Instant> = VecDeque::with_capacity(MISSED_PONGS_FATAL as usize + 1);
    let mut chunk = [0u8; 128];
    loop {
        tokio::select! {
            biased;
            _ = stopped(stop) => return End::Stopped,
            read = session.tls.read(&mut chunk) => match read {
                // tokio-rustls reports EOF as Ok(0) only after close_notify; a bare TCP EOF
                // is an UnexpectedEof error.
                Ok(0) => return End::Lost(Close::Graceful),
                Ok(n) => {
                    if !session.lines.push(&chunk[..n]) {
                        return End::Lost(Close::Abrupt);
                    }
                    while let Some(line) = session.lines.next_line() {
                        match line {
                            Line::Pong => {
                                if let Some(sent) = in_flight.pop_front() {
                                    ctx.tally.on_pong(sent.elapsed());
                                }
                            }
                            _ => return End::Lost(Close::Abrupt),
                        }
                    }
                }
                Err(_) => return End::Lost(Close::Abrupt),
            },
            _ = sleep_until(next_ping) => {
                let now = Instant::now();
                if in_flight
                    .front()
                    .is_some_and(|sent| now.duration_since(*sent) >= every * MISSED_PONGS_FATAL)
                {
                    return End::Lost(Close::Abrupt);
                }
                let sent = timeout(every * MISSED_PONGS_FATAL, async {
                    session.tls.write_all(b"PING\n").await?;
                    session.tls.flush().await
                })
                .await;
                if !matches!(sent, Ok(Ok(()))) {
                    return End::Lost(Close::Abrupt);
                }
                in_flight.push_back(now);
                next_ping += every;
                if next_ping < now {
                    next_ping = now + every;
                }
            }
        }
    }
}

/// Resolves once the fleet is stopping (or has been dropped).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopping| *stopping).await;
}

/// Sleeps `d` unless the fleet stops first; false means "stop now".
async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return false;
    }
    if d.is_zero() {
        return true;
    }
    tokio::select! {
        biased;
        _ = stopped(stop) => false,
        _ = sleep(d) => true,
    }
}

fn seed_for(id: usize) -> u64 {
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    clock ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// A line from the gateway, classified.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Welcome,
    Pong,
    Other,
}

/// Reassembles the gateway's lines from TLS records without keeping more than one line.
#[derive(Default)]
struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    /// Appends received bytes; false if a line grew past [`MAX_LINE`].
    fn push(&mut self, bytes: &[u8]) -> bool {
        self.partial.extend_from_slice(bytes);
        match self.partial.iter().position(|b| *b == b'\n') {
            Some(end) => end <= MAX_LINE,
            None => self.partial.len() <= MAX_LINE,
        }
    }

    fn next_line(&mut self) -> Option<Line> {
        let end = self.partial.iter().position(|b| *b == b'\n')?;
        let line = &self.partial[..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let kind = if line.starts_with(b"PONG ") || line == b"PONG" {
            Line::Pong
        } else if line.starts_with(b"WELCOME ") {
            Line::Welcome
        } else {
            Line::Other
        };
        self.partial.drain(..=end);
        Some(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_reads_and_batched() {
        let mut l = Lines::default();
        assert!(l.push(b"WELC"));
        assert_eq!(l.next_line(), None);
        assert!(l.push(b"OME pod-a\nPONG pod-a\r\nPO"));
        assert_eq!(l.next_line(), Some(Line::Welcome));
        assert_eq!(l.next_line(), Some(Line::Pong));
        assert_eq!(l.next_line(), None);
        assert!(l.push(b"NG pod-a\nERR unknown\n"));
        assert_eq!(l.next_line(), Some(Line::Pong));
        assert_eq!(l.next_line(), Some(Line::Other));
    }

    #[test]
    fn first_attempts_spread_by_id_later_ones_at_random_and_none_when_empty() {
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let targets = Targets::fixed(vec![addr(1), addr(2), addr(3)]);
        let mut rng = Rng::new(7);
        assert_eq!(choose(&targets, 4, true, &mut rng), Some(addr(2)));
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..100 {
            seen.insert(choose(&targets, 4, false, &mut rng).unwrap());
        }
        assert_eq!(seen.len(), 3);
        targets.set(vec![addr(9)]);
        assert_eq!(choose(&targets, 4, false, &mut rng), Some(addr(9)));
        targets.set(vec![]);
        assert_eq!(choose(&targets, 4, true, &mut rng), None);
        assert_eq!(choose(&targets, 4, false, &mut rng), None);
    }

    #[test]
    fn overlong_line_is_refused() {
        let mut l = Lines::default();
        assert!(!l.push(&[b'x'; MAX_LINE + 1]));
    }
}
