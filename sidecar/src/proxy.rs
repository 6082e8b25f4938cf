//! One agent connection, from TLS handshake to close: handshake under a deadline, dial the
//! gateway, then move bytes both ways until either side finishes or a drain asks to close.
//!
//! Memory is the constraint that shapes this module. Presence connections are idle almost all
//! of the time, so a connection holds no copy buffer while it waits: it waits for socket
//! readiness, and only then borrows a buffer for the burst of bytes that is ready (its TLS
//! session, `agent_tls`, likewise keeps none). What only the handshake, the gateway dial or
//! the close needs is boxed while it runs, so an idle connection's task stays small.
//!
//! No peer can hold a connection's task forever: every write has a deadline
//! (`--write-timeout`, a peer that stops reading is cut with cause `timeout`), a close a drain
//! asks for interrupts a blocked write, the graceful close itself is bounded, and with
//! `--idle-timeout` a connection that moved no byte either way for that long is closed.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Notify;

use ballast_contract::events::RefusedReason;

use crate::admission::Ticket;
use crate::agent_tls::{poll_now, AgentTls};
use crate::events;
use crate::hint::{Hint, Hints, WEBSOCKET_SERVICE_RESTART};
use crate::metrics::CloseCause;
use crate::proxy_protocol;
use crate::server::Shared;

/// Size of the transient buffer the gateway's bytes are read into (one TLS record's plaintext).
const BURST_BUFFER: usize = 16 * 1024;
/// After one side finished, how long the other may take to finish too.
const HALF_CLOSE_GRACE: Duration = Duration::from_secs(5);
/// After our close_notify, how long we wait for the agent to close its side, so that the
/// connection ends with a clean FIN rather than a reset over unread bytes.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Runs one admitted connection to its end and records how it ended.
pub async fn serve(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, mut ticket: Ticket) {
    let served = shared.tls.current();
    // The PROXY header's destination, the only use of our own address (a syscall otherwise).
    let local = match shared.proxy_protocol {
        true => tcp.local_addr().unwrap_or(shared.listen),
        false => shared.listen,
    };
    let metrics = &shared.metrics;

    metrics.handshakes_in_flight.inc();
    let started = Instant::now();
    // Boxed, here and below, so that what only a handshake, a dial or a close needs is not
    // carried by the task of every idle connection.
    let handshake = tokio::time::timeout(
        shared.handshake_timeout,
        Box::pin(AgentTls::accept(
            served.config.clone(),
            tcp,
            shared.events.is_some(),
        )),
    )
    .await;
    metrics.handshakes_in_flight.dec();
    ticket.handshake_done();
    let client = match handshake {
        Err(_) => {
            tracing::debug!(%peer, "handshake timed out; connection cut");
            metrics.closed(CloseCause::Timeout).inc();
            shared.handshakes.failed();
            if let Some(events) = &shared.events {
                events.refused(events::address_only(peer), RefusedReason::HandshakeTimeout);
            }
            return;
        }
        Ok(Err(err)) => {
            tracing::debug!(%peer, error = %err, "handshake failed; connection cut");
            metrics.closed(CloseCause::Error).inc();
            shared.handshakes.failed();
            if let Some(events) = &shared.events {
                events.refused(events::address_only(peer), RefusedReason::HandshakeFailed);
            }
            return;
        }
        Ok(Ok(stream)) => stream,
    };
    let handshake_seconds = started.elapsed().as_secs_f64();
    metrics.handshake_seconds.observe(handshake_seconds);
    // The planner hears the latency the agent saw, queue included: waiting is how a pod at
    // its handshake rate shows it is saturated now that it no longer refuses at once.
    shared
        .handshakes
        .completed(ticket.queued.as_secs_f64() + handshake_seconds);
    metrics.accepted.inc();
    let resumed = matches!(
        client.session().handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    metrics
        .handshake(if resumed { "resumed" } else { "full" })
        .inc();
    // Only with events on: the identity is kept for the connection's life.
    let agent = shared
        .events
        .as_ref()
        .map(|_| events::identify(peer, &client));

    let upstream = match Box::pin(dial_upstream(&shared, peer, local)).await {
        Ok(stream) => {
            shared.upstream_dialed(true);
            stream
        }
        Err(err) => {
            // Out of descriptors here says nothing about the gateway.
            let local_shortage =
                matches!(err.raw_os_error(), Some(24 /* EMFILE */ | 23 /* ENFILE */));
            if !local_shortage {
                shared.upstream_dialed(false);
            }
            metrics.upstream_connect_failures.inc();
            metrics.closed(CloseCause::Upstream).inc();
            tracing::warn!(%peer, upstream = %shared.upstream, error = %err,
                "gateway unreachable; closing the agent's connection");
            if let (Some(events), Some(agent)) = (&shared.events, agent) {
                events.refused(agent, RefusedReason::GatewayUnreachable);
            }
            // No close_notify: the agent must back off rather than reconnect at once.
            drop(client);
            return;
        }
    };

    let registration = shared.connections.register(served.generation);
    if !shared.accepting() {
        // Finished its handshake after SIGTERM's drain took its list: close it the same way.
        registration.close.notify_one();
    }
    metrics.connections.inc();
    let connected_at = Instant::now();
    if let (Some(events), Some(agent)) = (&shared.events, &agent) {
        events.connected(registration.id(), agent.clone(), served.generation, resumed);
    }
    let deadlines = Deadlines {
        write: shared.config.write_timeout,
        idle: Some(shared.config.idle_timeout).filter(|d| !d.is_zero()),
    };
    let hints = Hints::new(shared.config.protocol);
    let cause = pump(
        client,
        upstream,
        &registration.close,
        deadlines,
        hints,
        metrics,
        &shared.mqtt5_disconnect,
    )
    .await;
    let id = registration.id();
    drop(registration);
    metrics.connections.dec();
    metrics.closed(cause).inc();
    if let (Some(events), Some(agent)) = (&shared.events, agent) {
        events.disconnected(id, agent, served.generation, cause, connected_at.elapsed());
    }
    tracing::trace!(%peer, cause = cause.as_str(), "connection closed");
}

/// Connects to the gateway, from the next configured source address if any, and sends the
/// PROXY header when asked.
async fn dial_upstream(
    shared: &Shared,
    peer: SocketAddr,
    local: SocketAddr,
) -> io::Result<TcpStream> {
    let target = shared.upstream;
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(source) = shared.next_upstream_source() {
        // The port is then chosen at connect(), by the whole 4-tuple. A plain bind to port 0
        // searches the ephemeral range for a port no socket of that address holds, a search
        // that grows with TIME_WAIT sockets: after a storm it cost ~6 ms of CPU per dial, and
        // the sidecar's handshake rate fell to an eighth. (HAProxy sets it for `source` too.)
        if let Err(err) = nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::IpBindAddressNoPort,
            &true,
        ) {
            tracing::debug!(error = %err, "IP_BIND_ADDRESS_NO_PORT not set");
        }
        socket.bind(SocketAddr::new(source, 0))?;
    }
    let mut stream = tokio::time::timeout(shared.upstream_connect_timeout, socket.connect(target))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    if shared.proxy_protocol {
        stream
            .write_all(&proxy_protocol::v2_header(peer, local))
            .await?;
    }
    Ok(stream)
}

/// What one pass over the ready bytes of one direction found.
enum Flow {
    /// Nothing more is ready right now.
    Idle,
    /// The sending side finished (EOF or close_notify).
    Finished,
    /// A drain asked to close while a write was waiting on the peer.
    CloseAsked,
    /// The connection cannot go on; the cause says whose fault.
    Broken(CloseCause),
}

/// The deadlines of one connection.
#[derive(Clone, Copy)]
struct Deadlines {
    /// Longest a write may wait for the peer to take bytes.
    write: Duration,
    /// Longest a connection may move no byte either way (none: no limit).
    idle: Option<Duration>,
}

/// How a write ended.
enum Written {
    /// Every byte was written.
    Whole,
    /// Every byte was written, and a drain asked to close meanwhile.
    WholeThenClose,
    /// The write did not finish (how much of it went out is unknown).
    Cut(Flow),
}

/// How long a write already under way may go on after a drain asks to close: long enough for
/// a healthy peer to take it (so the stream ends between two messages and a reconnect hint can
/// follow), short enough that a stalled peer cannot hold the drain.
const CLOSE_WRITE_GRACE: Duration = Duration::from_millis(100);

/// Runs `write` within `deadlines.write`; a drain's close interrupts it after
/// [`CLOSE_WRITE_GRACE`] if it is still not done.
async fn write_within(
    write: impl Future<Output = io::Result<()>>,
    deadlines: Deadlines,
    close: &Notify,
    peer_cause: CloseCause,
) -> Written {
    let ended = |written: Result<io::Result<()>, tokio::time::error::Elapsed>| match written {
        Ok(Ok(())) => None,
        Ok(Err(e)) if peer_cause == CloseCause::Client && !is_peer_gone(&e) => {
            Some(Flow::Broken(CloseCause::Error))
        }
        Ok(Err(_)) => Some(Flow::Broken(peer_cause)),
        Err(_) => Some(Flow::Broken(CloseCause::Timeout)),
    };
    let mut write = pin!(tokio::time::timeout(deadlines.write, write));
    tokio::select! {
        // The write first: a close asked while nothing was pending lets it complete.
        biased;
        written = &mut write => return match ended(written) {
            None => Written::Whole,
            Some(flow) => Written::Cut(flow),
        },
        _ = close.notified() => {}
    }
    match tokio::time::timeout(CLOSE_WRITE_GRACE, &mut write).await {
        Ok(written) => match ended(written) {
            None => Written::WholeThenClose,
            Some(flow) => Written::Cut(flow),
        },
        Err(_) => Written::Cut(Flow::CloseAsked),
    }
}

/// Moves bytes both ways until both directions finish, one breaks, a deadline passes, or a
/// drain closes it.
async fn pump(
    mut client: AgentTls,
    mut upstream: TcpStream,
    close: &Notify,
    deadlines: Deadlines,
    mut hints: Hints,
    metrics: &crate::metrics::Metrics,
    mqtt5_disconnect: &[u8],
) -> CloseCause {
    // A drain's close: the agent's protocol hint first (MQTT 5: use another server), if any.
    let planned = |hints: &Hints| {
        let hint = hints.on_planned_close()?;
        metrics.reconnect_hint(hints.agent_protocol()).inc();
        Some(match hint {
            Hint::Mqtt5 => mqtt5_disconnect,
            Hint::WebSocket => &WEBSOCKET_SERVICE_RESTART[..],
        })
    };
    let mut client_sending = true;
    let mut upstream_sending = true;
    let mut first_to_finish: Option<CloseCause> = None;
    let mut grace_deadline: Option<tokio::time::Instant> = None;
    let mut last_moved = tokio::time::Instant::now();
    loop {
        let mut buffer: Vec<u8> = Vec::new();
        let mut moved = false;
        if client_sending {
            match client_to_upstream(
                &mut client,
                &mut upstream,
                &mut buffer,
                close,
                deadlines,
                &mut moved,
                &mut hints,
            )
            .await
            {
                Flow::Idle => {}
                Flow::CloseAsked => {
                    Box::pin(close_gracefully(
                        &mut client,
                        &mut upstream,
                        planned(&hints),
                    ))
                    .await;
                    return CloseCause::Drain;
                }
                Flow::Finished => {
                    client_sending = false;
                    first_to_finish.get_or_insert(CloseCause::Client);
                    let _ = upstream.shutdown().await;
                }
                Flow::Broken(cause) => return cause,
            }
        }
        if upstream_sending {
            match upstream_to_client(
                &mut upstream,
                &mut client,
                &mut buffer,
                close,
                deadlines,
                &mut moved,
                &mut hints,
            )
            .await
            {
                Flow::Idle => {}
                Flow::CloseAsked => {
                    Box::pin(close_gracefully(
                        &mut client,
                        &mut upstream,
                        planned(&hints),
                    ))
                    .await;
                    return CloseCause::Drain;
                }
                Flow::Finished => {
                    upstream_sending = false;
                    first_to_finish.get_or_insert(CloseCause::Upstream);
                    // close_notify + FIN: the gateway ended the session on purpose.
                    let _ = client.shutdown().await;
                }
                Flow::Broken(cause) => return cause,
            }
        }
        drop(buffer);
        if !client_sending && !upstream_sending {
            return first_to_finish.unwrap_or(CloseCause::Client);
        }
        if client_sending && client.has_pending_plaintext() {
            continue;
        }
        if first_to_finish.is_some() && grace_deadline.is_none() {
            grace_deadline = Some(tokio::time::Instant::now() + HALF_CLOSE_GRACE);
        }
        let grace = async {
            match grace_deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        if moved {
            last_moved = tokio::time::Instant::now();
        }
        let idle = async {
            match deadlines.idle {
                Some(limit) => tokio::time::sleep_until(last_moved + limit).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = close.notified() => {
                Box::pin(close_gracefully(&mut client, &mut upstream, planned(&hints))).await;
                return CloseCause::Drain;
            }
            _ = idle => {
                // close_notify all the same: an agent that was only quiet reconnects at once.
                Box::pin(close_gracefully(&mut client, &mut upstream, None)).await;
                return CloseCause::Timeout;
            }
            ready = client.tcp().readable(), if client_sending => {
                if ready.is_err() { return CloseCause::Error; }
            }
            ready = upstream.readable(), if upstream_sending => {
                if ready.is_err() { return CloseCause::Upstream; }
            }
            _ = grace => return first_to_finish.unwrap_or(CloseCause::Client),
        }
    }
}

async fn client_to_upstream(
    client: &mut AgentTls,
    upstream: &mut TcpStream,
    buffer: &mut Vec<u8>,
    close: &Notify,
    deadlines: Deadlines,
    moved: &mut bool,
    hints: &mut Hints,
) -> Flow {
    loop {
        buffer.clear();
        match client.read_ready(buffer) {
            None => return Flow::Idle,
            Some(Ok(0)) => return Flow::Finished,
            Some(Ok(_)) => {
                *moved = true;
                hints.agent_sent(buffer);
                let write = upstream.write_all(buffer);
                match write_within(write, deadlines, close, CloseCause::Upstream).await {
                    Written::Whole => {}
                    Written::WholeThenClose => return Flow::CloseAsked,
                    Written::Cut(flow) => return flow,
                }
            }
            // A TCP EOF without close_notify: the agent went away without saying goodbye.
            Some(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Flow::Finished,
            Some(Err(e)) if is_peer_gone(&e) => return Flow::Broken(CloseCause::Client),
            Some(Err(_)) => return Flow::Broken(CloseCause::Error),
        }
    }
}

async fn upstream_to_client(
    upstream: &mut TcpStream,
    client: &mut AgentTls,
    buffer: &mut Vec<u8>,
    close: &Notify,
    deadlines: Deadlines,
    moved: &mut bool,
    hints: &mut Hints,
) -> Flow {
    loop {
        buffer.resize(BURST_BUFFER, 0);
        // Polled once rather than `try_read`: a short read clears the socket's readiness, so
        // the next pass waits for the gateway instead of paying a read that finds nothing.
        let read = match poll_now(upstream.read(buffer)) {
            None => return Flow::Idle,
            Some(read) => read,
        };
        match read {
            Ok(0) => return Flow::Finished,
            Ok(n) => {
                *moved = true;
                let written = client.write_all(&buffer[..n]);
                match write_within(written, deadlines, close, CloseCause::Client).await {
                    Written::Whole => hints.gateway_sent(&buffer[..n]),
                    Written::WholeThenClose => {
                        hints.gateway_sent(&buffer[..n]);
                        return Flow::CloseAsked;
                    }
                    Written::Cut(flow) => {
                        // How much of it reached the agent is unknown: no hint can follow.
                        hints.lost();
                        return flow;
                    }
                }
            }
            Err(_) => return Flow::Broken(CloseCause::Upstream),
        }
    }
}

fn is_peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

/// The agent's reconnect hint if there is one, TLS close_notify, then FIN, then a short wait
/// for the agent to close its side.
async fn close_gracefully(client: &mut AgentTls, upstream: &mut TcpStream, hint: Option<&[u8]>) {
    let _ = upstream.shutdown().await;
    if let Some(hint) = hint {
        let _ = tokio::time::timeout(CLOSE_LINGER, client.write_all(hint)).await;
    }
    if tokio::time::timeout(CLOSE_LINGER, client.shutdown())
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        let mut sink = Vec::new();
        while let Ok(n) = client.read(&mut sink).await {
            if n == 0 {
                break;
            }
            sink.clear();
        }
    })
    .await;
}
