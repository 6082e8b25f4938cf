//! The admin HTTP API: probes, metrics, status, drains, and `/drained` (the gateway's preStop
//! hook waits on it).
//!
//! Reads are open (the kubelet probes, Prometheus scrapes). Mutations — starting or
//! cancelling a drain — close agents' connections, so with `--admin-token-file` (which the
//! operator always mounts: inside a pod every container shares loopback, so loopback proves
//! nothing) only callers presenting that bearer token pass; a standalone sidecar without one
//! answers loopback callers only. This API is for people: the operator steers through the
//! report channel (`operator_link`), never through here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use ballast_contract::clock;
use ballast_contract::{
    CertificateStatus, Counters, DrainProgress, DrainRequest, EventsStatus, Limits, SessionTickets,
    Status, UpstreamStatus, PROTOCOL_VERSION,
};

use crate::accept_errors::AcceptErrors;
use crate::drain::Origin;
use crate::events::EventStream;
use crate::metrics::{CloseCause, Refusal};
use crate::server::Shared;

/// Largest request body accepted (a drain request is a few dozen bytes).
const MAX_BODY: usize = 4096;
/// Longest a caller may take to send its request headers, and then its body. The kubelet's
/// probes and Prometheus send at once; a caller that trickles would hold a descriptor the
/// agents need.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin connections open at once (each request has its own: no keep-alive); a connection
/// beyond it is closed at once and counted. `/drained` waits hold one each, for a few pods'
/// preStop hooks at most.
const MAX_CONNECTIONS: usize = 64;
/// Bytes an admin connection may hold unsent, in the kernel and in hyper's buffer. Small, so
/// that an event consumer that stops reading falls behind the journal (and is told of a gap)
/// instead of the sidecar buffering for it; every other answer fits.
const SEND_BUFFER: usize = 64 * 1024;
const HYPER_BUFFER: usize = 16 * 1024;

/// A fixed body, or the endless one of `GET /events`.
type Reply = Response<Either<Full<Bytes>, EventStream>>;

/// Serves the admin API until the task is dropped.
///
/// Slow or idle callers cannot pile up: the headers must arrive within
/// [`REQUEST_READ_TIMEOUT`] (then the body, within as long again), a connection serves one
/// request, and at most [`MAX_CONNECTIONS`] are open at once.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut errors = AcceptErrors::new("admin", shared.metrics.accept_errors("admin"));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(pair) => {
                errors.recovered();
                pair
            }
            Err(err) => {
                tokio::time::sleep(errors.failed(&err, Instant::now())).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            shared.metrics.admin_connections_refused.inc();
            drop(stream);
            continue;
        };
        // The kernel doubles it; a refusal only means the default buffer.
        let _ =
            nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::SndBuf, &SEND_BUFFER);
        let shared = shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(route(req, peer, &shared).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_READ_TIMEOUT)
                .keep_alive(false)
                .max_buf_size(HYPER_BUFFER)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn route(req: Request<Incoming>, peer: SocketAddr, shared: &Shared) -> Reply {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            if !shared.accepting() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining: not accepting\n")
            } else if !shared.upstream_reachable() {
                text(StatusCode::SERVICE_UNAVAILABLE, "gateway unreachable\n")
            } else if shared.directed.steered_away(Instant::now()) {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "steered away by the operator: serving established agents, not attracting new ones; lapses if the operator falls silent\n",
                )
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        (&Method::GET, "/metrics") => Response::builder()
            .header(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")
            .body(Either::Left(Full::new(Bytes::from(
                shared.metrics.encode(),
            ))))
            .expect("static response"),
        (&Method::GET, "/events") => {
            let token = shared.config.events_token_file.as_deref();
            if let Err(reply) = authorize(&req, peer, token, "events") {
                return reply;
            }
            events(&req, shared)
        }
        (&Method::GET, "/status") => json(StatusCode::OK, &status(shared)),
        (&Method::GET, "/drained") => drained(shared).await,
        (&Method::POST, "/drain") | (&Method::DELETE, "/drain") => {
            let token = shared.config.admin_token_file.as_deref();
            if let Err(reply) = authorize(&req, peer, token, "drains") {
                return reply;
            }
            if req.method() == Method::DELETE {
                return match shared.drainer.cancel() {
                    Some(progress) => json(StatusCode::OK, &progress),
                    None => error(StatusCode::NOT_FOUND, "no drain is running"),
                };
            }
            start_drain(req, shared).await
        }
        (
            _,
            "/healthz" | "/readyz" | "/metrics" | "/status" | "/drain" | "/drained" | "/events",
        ) => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => error(
            StatusCode::NOT_FOUND,
            "not found; endpoints: /healthz /readyz /metrics /status /drain /drained /events",
        ),
    }
}

/// Answers 200 once the sidecar is terminating and holds no agent connection; 503 if that has
/// not happened within the shutdown drain window + 5 s (the sidecar's own exit deadline).
///
/// The operator makes it the gateway's preStop hook: the kubelet signals every container of a
/// terminating pod at once, and the gateway must keep serving until the sidecar has moved its
/// agents away — then no longer. It may be called before the sidecar has seen its own SIGTERM
/// (the kubelet runs hooks and signals concurrently), so it waits for both conditions. When the
/// sidecar exits first, the caller's connection drops, which also ends the hook.
async fn drained(shared: &Shared) -> Reply {
    let deadline = Instant::now() + shared.config.shutdown_drain + Duration::from_secs(5);
    loop {
        if !shared.accepting() && shared.connections.is_empty() {
            return text(StatusCode::OK, "drained\n");
        }
        if Instant::now() >= deadline {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "not drained: {} connections, {}",
                    shared.connections.len(),
                    if shared.accepting() {
                        "not terminating"
                    } else {
                        "terminating"
                    }
                ),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start_drain(req: Request<Incoming>, shared: &Shared) -> Reply {
    let read = Limited::new(req.into_body(), MAX_BODY).collect();
    let body = match tokio::time::timeout(REQUEST_READ_TIMEOUT, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(_)) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body too large or unreadable",
            )
        }
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "the body did not arrive in time",
            )
        }
    };
    let request: DrainRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"connections\": N or \"all\", \"over_seconds\": S}}: {e}"),
            )
        }
    };
    let window = match request.validate() {
        Ok(w) => w,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let progress: DrainProgress = shared
        .drainer
        .start(Origin::Admin, request.connections, window);
    json(StatusCode::ACCEPTED, &progress)
}

/// `GET /events`: the lifecycle-event stream, newline-delimited JSON, or Server-Sent Events
/// when the caller accepts `text/event-stream`. Starts with the next event; `?after=SEQ`
/// (with `&boot=ID`, or SSE's `Last-Event-ID`) resumes after the last one read.
fn events(req: &Request<Incoming>, shared: &Shared) -> Reply {
    let Some(journal) = &shared.events else {
        return error(
            StatusCode::NOT_FOUND,
            "lifecycle events are off (--events-buffer 0)",
        );
    };
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let sse = header("accept").is_some_and(|a| a.contains("text/event-stream"));
    let mut after = header("last-event-id");
    let mut boot = None;
    for pair in req.uri().query().unwrap_or("").split('&') {
        match pair.split_once('=') {
            Some(("after", v)) => after = Some(v.to_owned()),
            Some(("boot", v)) => boot = Some(v.to_owned()),
            _ => {}
        }
    }
    let resume = match after.map(|a| a.parse::<u64>()) {
        None => None,
        Some(Ok(seq)) => Some((boot, seq)),
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "after (or Last-Event-ID) must be a seq number",
            )
        }
    };
    let Some(stream) = journal.subscribe(resume, sse) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many event consumers already",
        );
    };
    let content_type = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    Response::builder()
        .header(CONTENT_TYPE, content_type)
        .header("cache-control", "no-store")
        .body(Either::Right(stream))
        .expect("static response")
}

/// Loopback callers pass unless a token file is configured; then only its token passes.
/// `what` names what is guarded, for the refusal.
#[allow(clippy::result_large_err)]
fn authorize(
    req: &Request<Incoming>,
    peer: SocketAddr,
    token_file: Option<&std::path::Path>,
    what: &str,
) -> Result<(), Reply> {
    let Some(path) = token_file else {
        return if peer.ip().is_loopback() {
            Ok(())
        } else {
            Err(error(
                StatusCode::FORBIDDEN,
                &format!("{what} are served to loopback only without a token file (see --help)"),
            ))
        };
    };
    let expected = match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_owned(),
        _ => {
            tracing::error!(path = %path.display(), "token file unreadable or empty; refusing {what}");
            return Err(error(StatusCode::SERVICE_UNAVAILABLE, "token unavailable"));
        }
    };
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token",
        ))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `GET /status`: what the operator and a person debugging want to know at a glance, in the
/// contract's shape.
pub fn status(shared: &Shared) -> Status {
    let served = shared.tls.current();
    let failure = shared.tls.last_failure();
    let by_generation = shared.connections.by_generation();
    let on_current = by_generation.get(&served.generation).copied().unwrap_or(0);
    let total: usize = by_generation.values().sum();
    let m = &shared.metrics;
    let c = &shared.config;
    Status {
        protocol_version: PROTOCOL_VERSION,
        connections: total,
        accepting: shared.accepting(),
        ready: shared.ready(),
        draining: shared.drainer.progress().filter(|p| !p.finished),
        upstream: UpstreamStatus {
            address: shared.upstream.to_string(),
            reachable: shared.upstream_reachable(),
        },
        certificate: CertificateStatus {
            sha256: served.certificate.facts.sha256.clone(),
            not_before: clock::rfc3339(served.certificate.facts.not_before),
            not_after: clock::rfc3339(served.certificate.facts.not_after),
            loaded_at: clock::rfc3339(served.loaded_at),
            generation: served.generation,
            connections_on_current: on_current,
            connections_on_older: total - on_current,
            last_error: failure.as_ref().map(|f| f.message.clone()),
            last_error_reason: failure.as_ref().map(|f| f.reason.to_owned()),
            last_error_at: failure.as_ref().map(|f| clock::rfc3339(f.at)),
        },
        limits: Limits {
            max_connections: c.max_connections,
            max_handshakes_per_second: c.max_handshakes_per_second,
            max_concurrent_handshakes: c.max_concurrent_handshakes,
            handshake_timeout_seconds: c.handshake_timeout.as_secs_f64(),
            shutdown_drain_seconds: c.shutdown_drain.as_secs_f64(),
        },
        counters: Counters {
            accepted: m.accepted.get(),
            refused: Refusal::ALL
                .iter()
                .map(|r| (r.as_str().to_owned(), m.refused(*r).get()))
                .collect(),
            closed: CloseCause::ALL
                .iter()
                .map(|c| (c.as_str().to_owned(), m.closed(*c).get()))
                .collect(),
            certificate_reloads: m
                .reload_counts()
                .into_iter()
                .map(|(result, n)| (result.to_owned(), n))
                .collect(),
            handshakes_in_flight: m.handshakes_in_flight.get(),
            waiting_for_handshake: m.waiting_for_handshake.get(),
            handshakes: ["full", "resumed"]
                .into_iter()
                .map(|kind| (kind.to_owned(), m.handshake(kind).get()))
                .collect(),
        },
        session_tickets: shared.tls.tickets().map(|t| SessionTickets {
            keys_loaded: t.loaded(),
            last_error: t.last_failure(),
        }),
        events: shared.events.as_ref().map(|journal| {
            let state = journal.state();
            EventsStatus {
                capacity: state.capacity,
                buffered: state.buffered,
                last_seq: state.last_seq,
                consumers_behind: state.consumers_behind,
            }
        }),
    }
}

fn text(status: StatusCode, body: &'static str) -> Reply {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Either::Left(Full::new(Bytes::from_static(body.as_bytes()))))
        .expect("static response")
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Reply {
    let body = serde_json::to_vec_pretty(value).expect("status serializes");
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Either::Left(Full::new(Bytes::from(body))))
        .expect("static response")
}

fn error(status: StatusCode, message: &str) -> Reply {
    json(status, &serde_json::json!({ "error": message }))
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secrets"));
    }
}
