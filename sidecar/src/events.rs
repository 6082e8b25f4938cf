//! Lifecycle events (connected, disconnected with its cause, refused) for presence backends,
//! kept in a bounded journal and streamed from `GET /events`.
//!
//! Publishing never waits for a consumer: an event is serialized once, appended under a short
//! lock, and the oldest event is dropped when the journal is full. Each consumer reads at its
//! own pace from its own cursor; one that fell behind the journal's start gets a gap marker
//! saying how many events it missed, then carries on from the oldest one kept. So a slow or
//! stalled consumer costs the agents nothing but the journal's fixed memory.
//!
//! The format is `ballast_contract::events`. This module owns the journal, the cursors and the
//! stream's framing (newline-delimited JSON, or Server-Sent Events with `id:` = `seq`); it
//! never decides anything about a connection.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use ballast_contract::clock;
use ballast_contract::events::{Agent, DisconnectCause, Event, EventKind, RefusedReason};
use bytes::{BufMut, Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};

use crate::metrics::{CloseCause, Metrics, Refusal};

/// Consumers streaming at once; more are answered 503 (a presence backend needs one or two).
pub const MAX_CONSUMERS: usize = 8;
/// Most bytes handed to the connection in one frame (the admin server buffers one at a time).
const MAX_CHUNK: usize = 8 * 1024;
/// An idle Server-Sent Events stream gets a comment this often, so proxies keep it open and a
/// consumer that went away is noticed.
const SSE_HEARTBEAT: Duration = Duration::from_secs(15);

/// The journal of one sidecar process.
pub struct Journal {
    pod: String,
    boot: String,
    /// How long after a planned close the agent is expected back.
    reconnect_window: Duration,
    capacity: usize,
    ring: Mutex<Ring>,
    metrics: Arc<Metrics>,
}

struct Ring {
    /// `seq` of `lines[0]`; the next event gets `first + lines.len()`.
    first: u64,
    /// Serialized events, oldest first, without their newline.
    lines: VecDeque<Bytes>,
    /// Consumers waiting for the next event.
    wakers: Vec<Waker>,
    /// Each consumer's cursor (the next `seq` it wants).
    cursors: Vec<Arc<AtomicU64>>,
}

impl Ring {
    fn next_seq(&self) -> u64 {
        self.first + self.lines.len() as u64
    }
}

/// What `/status` shows of the journal.
pub struct JournalState {
    pub capacity: usize,
    pub buffered: usize,
    pub last_seq: u64,
    /// How many events each consumer has still to read (kept or not).
    pub consumers_behind: Vec<u64>,
}

impl Journal {
    pub fn new(
        pod: String,
        capacity: usize,
        reconnect_window: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut boot = [0u8; 8];
        fastrand::fill(&mut boot);
        Self {
            pod,
            boot: boot.iter().map(|b| format!("{b:02x}")).collect(),
            reconnect_window,
            capacity: capacity.max(1),
            ring: Mutex::new(Ring {
                first: 1,
                lines: VecDeque::with_capacity(capacity.min(1024)),
                wakers: Vec::new(),
                cursors: Vec::new(),
            }),
            metrics,
        }
    }

    /// Appends an event, dropping the oldest when full, and wakes the consumers.
    pub fn publish(&self, kind: EventKind) {
        let name = kind.name();
        let time = clock::rfc3339_millis(SystemTime::now());
        let wakers = {
            let mut ring = self.ring.lock().expect("journal lock");
            let event = Event {
                seq: ring.next_seq(),
                boot: self.boot.clone(),
                time,
                pod: self.pod.clone(),
                kind,
            };
            let line = serde_json::to_vec(&event).expect("events serialize");
            ring.lines.push_back(Bytes::from(line));
            if ring.lines.len() > self.capacity {
                ring.lines.pop_front();
                ring.first += 1;
            }
            std::mem::take(&mut ring.wakers)
        };
        self.metrics.event_published(name).inc();
        for waker in wakers {
            waker.wake();
        }
    }

    pub fn connected(&self, connection: u64, agent: Agent, generation: u64, resumed: bool) {
        self.publish(EventKind::Connected {
            connection,
            agent,
            certificate_generation: generation,
            resumed,
        });
    }

    pub fn disconnected(
        &self,
        connection: u64,
        agent: Agent,
        generation: u64,
        cause: CloseCause,
        connected_for: Duration,
    ) {
        let cause = match cause {
            CloseCause::Drain => DisconnectCause::Planned,
            CloseCause::Client => DisconnectCause::ClientClose,
            CloseCause::Upstream => DisconnectCause::GatewayClose,
            CloseCause::Timeout => DisconnectCause::Timeout,
            CloseCause::Error => DisconnectCause::Error,
        };
        let expected_back_by = (cause == DisconnectCause::Planned)
            .then(|| clock::rfc3339_millis(SystemTime::now() + self.reconnect_window));
        self.publish(EventKind::Disconnected {
            connection,
            agent,
            certificate_generation: generation,
            cause,
            connected_seconds: connected_for.as_secs_f64(),
            expected_back_by,
        });
    }

    pub fn refused(&self, agent: Agent, reason: RefusedReason) {
        self.publish(EventKind::Refused { agent, reason });
    }

    /// A refusal before the handshake, where the address is all that is known.
    pub fn refused_before_handshake(&self, peer: std::net::SocketAddr, refusal: Refusal) {
        let reason = match refusal {
            Refusal::MaxConnections => RefusedReason::MaxConnections,
            Refusal::HandshakeRate => RefusedReason::HandshakeRate,
            Refusal::NotAccepting => RefusedReason::NotAccepting,
            Refusal::Quota => RefusedReason::Quota,
        };
        self.refused(address_only(peer), reason);
    }

    /// A stream for one consumer. `resume` is the `(boot, seq)` it read last: the same boot
    /// resumes after that `seq`; another boot (this sidecar restarted) starts at this boot's
    /// first event; `None` starts with the next event. `None` if [`MAX_CONSUMERS`] are
    /// streaming already.
    pub fn subscribe(
        self: &Arc<Self>,
        resume: Option<(Option<String>, u64)>,
        sse: bool,
    ) -> Option<EventStream> {
        let mut ring = self.ring.lock().expect("journal lock");
        if ring.cursors.len() >= MAX_CONSUMERS {
            return None;
        }
        let next = ring.next_seq();
        let cursor = match resume {
            None => next,
            Some((Some(boot), _)) if boot != self.boot => 1,
            Some((_, after)) => after.saturating_add(1).min(next),
        };
        let cursor = Arc::new(AtomicU64::new(cursor));
        ring.cursors.push(cursor.clone());
        self.metrics.event_consumers.set(ring.cursors.len() as i64);
        Some(EventStream {
            journal: self.clone(),
            cursor,
            sse,
            heartbeat: None,
        })
    }

    /// True once every consumer has read every event (or `within` has passed): the sidecar
    /// waits for it before exiting, so the last disconnects of a shutdown reach the backend.
    pub async fn wait_until_read(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let behind = {
                let ring = self.ring.lock().expect("journal lock");
                let next = ring.next_seq();
                ring.cursors
                    .iter()
                    .any(|c| c.load(Ordering::Relaxed) < next)
            };
            if !behind {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn state(&self) -> JournalState {
        let ring = self.ring.lock().expect("journal lock");
        let next = ring.next_seq();
        JournalState {
            capacity: self.capacity,
            buffered: ring.lines.len(),
            last_seq: next - 1,
            consumers_behind: ring
                .cursors
                .iter()
                .map(|c| next.saturating_sub(c.load(Ordering::Relaxed)))
                .collect(),
        }
    }

    /// The next chunk for the consumer at `cursor`, or `None` after registering to be woken.
    fn read(&self, cursor: &AtomicU64, sse: bool, waker: &Waker) -> Option<Bytes> {
        let mut ring = self.ring.lock().expect("journal lock");
        let mut at = cursor.load(Ordering::Relaxed);
        let mut chunk = BytesMut::new();
        if at < ring.first {
            let missed = ring.first - at;
            self.metrics.events_missed.inc_by(missed);
            let gap = Event {
                seq: ring.first - 1,
                boot: self.boot.clone(),
                time: clock::rfc3339_millis(SystemTime::now()),
                pod: self.pod.clone(),
                kind: EventKind::Gap { missed },
            };
            frame(
                &mut chunk,
                gap.seq,
                &serde_json::to_vec(&gap).expect("events serialize"),
                sse,
            );
            at = ring.first;
        }
        let start = (at - ring.first) as usize;
        for line in ring.lines.range(start..) {
            if chunk.len() >= MAX_CHUNK {
                break;
            }
            frame(&mut chunk, at, line, sse);
            at += 1;
        }
        cursor.store(at, Ordering::Relaxed);
        if chunk.is_empty() {
            ring.wakers.push(waker.clone());
            return None;
        }
        Some(chunk.freeze())
    }

    fn unsubscribe(&self, cursor: &Arc<AtomicU64>) {
        let mut ring = self.ring.lock().expect("journal lock");
        ring.cursors.retain(|c| !Arc::ptr_eq(c, cursor));
        self.metrics.event_consumers.set(ring.cursors.len() as i64);
    }
}

/// What is known of an agent before its handshake: where it connects from.
pub fn address_only(peer: std::net::SocketAddr) -> Agent {
    Agent {
        address: peer.to_string(),
        ..Agent::default()
    }
}

/// Who the agent of an established connection is: SNI and address, and under mutual TLS its
/// certificate's subject and names.
pub fn identify(peer: std::net::SocketAddr, session: &crate::agent_tls::AgentTls) -> Agent {
    let (subject, sans) = session
        .session()
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| ballast_certs::client_identity(leaf))
        .map_or((None, Vec::new()), |(subject, sans)| (Some(subject), sans));
    Agent {
        address: peer.to_string(),
        sni: session.sni().map(str::to_owned),
        subject,
        sans,
    }
}

fn frame(chunk: &mut BytesMut, seq: u64, json: &[u8], sse: bool) {
    if sse {
        chunk.put_slice(format!("id: {seq}\ndata: ").as_bytes());
        chunk.put_slice(json);
        chunk.put_slice(b"\n\n");
    } else {
        chunk.put_slice(json);
        chunk.put_u8(b'\n');
    }
}

/// One consumer's endless response body.
pub struct EventStream {
    journal: Arc<Journal>,
    cursor: Arc<AtomicU64>,
    sse: bool,
    /// Started at the first poll (in the runtime), SSE only.
    heartbeat: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.journal.unsubscribe(&self.cursor);
    }
}

impl Body for EventStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if let Some(chunk) = this.journal.read(&this.cursor, this.sse, cx.waker()) {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if this.sse {
            let heartbeat = this
                .heartbeat
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(SSE_HEARTBEAT)));
            if heartbeat.as_mut().poll(cx).is_ready() {
                let next = tokio::time::Instant::now() + SSE_HEARTBEAT;
                heartbeat.as_mut().reset(next);
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b": alive\n\n")))));
            }
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(capacity: usize) -> Arc<Journal> {
        Arc::new(Journal::new(
            "pod-0".into(),
            capacity,
            Duration::from_secs(60),
            Arc::new(Metrics::new()),
        ))
    }

    fn refuse(journal: &Journal, n: usize) {
        for _ in 0..n {
            journal.refused_before_handshake("127.0.0.1:9".parse().unwrap(), Refusal::Quota);
        }
    }

    fn lines(stream: &mut EventStream) -> Vec<Event> {
        let waker = Waker::noop();
        let mut out = Vec::new();
        while let Some(chunk) = stream.journal.read(&stream.cursor, false, waker) {
            for line in chunk.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                out.push(serde_json::from_slice(line).unwrap());
            }
        }
        out
    }

    #[test]
    fn a_consumer_that_falls_behind_gets_one_gap_with_the_exact_count() {
        let journal = journal(10);
        let mut reader = journal.subscribe(None, false).unwrap();
        refuse(&journal, 3);
        let first = lines(&mut reader);
        assert_eq!(
            first.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2, 3],
            "in order, from 1"
        );
        // 25 more with room for 10: 15 are lost to this reader.
        refuse(&journal, 25);
        let next = lines(&mut reader);
        assert_eq!(next[0].kind, EventKind::Gap { missed: 15 });
        assert_eq!(next[0].seq, 18, "the gap's seq is the last one missed");
        assert_eq!(
            next[1..].iter().map(|e| e.seq).collect::<Vec<_>>(),
            (19..=28).collect::<Vec<_>>()
        );
        assert_eq!(journal.metrics.events_missed.get(), 15);
        assert!(lines(&mut reader).is_empty(), "nothing new");
        assert_eq!(journal.state().consumers_behind, [0]);
    }

    #[test]
    fn resuming_picks_up_after_the_last_seq_read_or_at_the_start_of_a_new_boot() {
        let journal = journal(100);
        refuse(&journal, 5);
        let mut same = journal.subscribe(Some((None, 3)), false).unwrap();
        assert_eq!(
            lines(&mut same).iter().map(|e| e.seq).collect::<Vec<_>>(),
            [4, 5]
        );
        let mut restarted = journal
            .subscribe(Some((Some("an-earlier-boot".into()), 40)), false)
            .unwrap();
        assert_eq!(lines(&mut restarted).len(), 5, "all of this boot");
        let mut live = journal.subscribe(None, false).unwrap();
        assert!(lines(&mut live).is_empty(), "a fresh consumer starts now");
        drop(same);
        assert_eq!(journal.state().consumers_behind.len(), 2);
    }

    #[test]
    fn consumers_are_bounded_and_sse_frames_carry_the_seq() {
        let journal = journal(4);
        let streams: Vec<_> = (0..MAX_CONSUMERS)
            .map(|_| journal.subscribe(None, true).unwrap())
            .collect();
        assert!(journal.subscribe(None, true).is_none());
        refuse(&journal, 1);
        let chunk = journal
            .read(&streams[0].cursor, true, Waker::noop())
            .unwrap();
        let text = std::str::from_utf8(&chunk).unwrap();
        assert!(text.starts_with("id: 1\ndata: {"), "{text}");
        assert!(text.ends_with("}\n\n"), "{text}");
        assert!(text.contains("\"reason\":\"quota\""), "{text}");
    }

    #[test]
    fn planned_disconnects_say_when_the_agent_is_expected_back_and_others_do_not() {
        let journal = journal(10);
        let mut reader = journal.subscribe(None, false).unwrap();
        let agent = address_only("127.0.0.1:9".parse().unwrap());
        journal.disconnected(
            7,
            agent.clone(),
            1,
            CloseCause::Drain,
            Duration::from_secs(2),
        );
        journal.disconnected(8, agent, 1, CloseCause::Client, Duration::from_secs(2));
        let read = lines(&mut reader);
        let EventKind::Disconnected {
            cause,
            expected_back_by: Some(by),
            ..
        } = &read[0].kind
        else {
            panic!("{:?}", read[0]);
        };
        assert_eq!(*cause, DisconnectCause::Planned);
        assert!(by > &read[0].time, "{by} after {}", read[0].time);
        assert!(matches!(
            read[1].kind,
            EventKind::Disconnected {
                cause: DisconnectCause::ClientClose,
                expected_back_by: None,
                ..
            }
        ));
    }
}
