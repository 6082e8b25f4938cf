//! Admission control: decides, before any TLS work, whether a new connection may proceed,
//! and when.
//!
//! What is admitted is bounded three ways — total connections, handshakes per second (token
//! bucket) and handshakes at once — so the CPU left over keeps established connections'
//! heartbeats flowing. A connection above the rate or the concurrency limit is not refused at
//! once: it waits, oldest first, in a queue bounded by how long a client can reasonably wait
//! (half the handshake timeout). 300 agents arriving in the same instant all get in, paced,
//! instead of most of them being refused and backing off — refusing a client that would have
//! been served a second later only turns a short wait into a long gap. Beyond the queue's
//! bound a storm is still shed cheaply: one accept, one close, and the client retries with
//! backoff, perhaps on another pod.
//!
//! The queue is in this process, not the kernel's accept backlog (HAProxy's `maxsslrate`
//! leaves the excess there): here each waiting connection's age is known, a client that gave
//! up is skipped without spending a handshake on it, and a full queue answers with a close
//! rather than silently dropped SYNs that cost the client a second per retransmit. A waiting
//! connection holds one descriptor and counts against `--max-connections`.
//!
//! This module never touches TLS and never blocks an established connection.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::metrics::Refusal;

/// A token bucket refilled continuously at `rate` per second, holding at most `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// The burst is a tenth of a second's worth (at least one token), so admission is smooth
    /// rather than a full second's quota arriving at once.
    pub fn per_second(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        let burst = (rate / 10.0).max(1.0);
        Self {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    pub fn try_take(&self, now: Instant) -> bool {
        self.take_or_wait(now).is_ok()
    }

    /// Takes a token, or says how long until the next one.
    pub fn take_or_wait(&self, now: Instant) -> Result<(), Duration> {
        let mut state = self.state.lock().expect("token bucket lock");
        let (tokens, last) = *state;
        let elapsed = now.saturating_duration_since(last).as_secs_f64();
        let tokens = (tokens + elapsed * self.rate).min(self.burst);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now);
            Ok(())
        } else {
            *state = (tokens, now);
            Err(Duration::from_secs_f64((1.0 - tokens) / self.rate))
        }
    }

    /// Waits for a token and takes it.
    pub async fn take(&self) {
        while let Err(wait) = self.take_or_wait(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }
}

/// Connections waiting for their handshake, oldest first, each with its arrival time.
struct WaitQueue<T> {
    entries: Mutex<VecDeque<(T, Instant)>>,
    arrived: Notify,
    capacity: usize,
}

impl<T> WaitQueue<T> {
    fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(VecDeque::new()),
            arrived: Notify::new(),
            capacity,
        }
    }

    fn len(&self) -> usize {
        self.entries.lock().expect("wait queue lock").len()
    }

    /// Queues `item`, or hands it back when the queue is full.
    fn push(&self, item: T, now: Instant) -> Result<(), T> {
        let mut entries = self.entries.lock().expect("wait queue lock");
        if entries.len() >= self.capacity {
            return Err(item);
        }
        entries.push_back((item, now));
        drop(entries);
        self.arrived.notify_one();
        Ok(())
    }

    /// The oldest entry and when it arrived, once there is one.
    async fn pop(&self) -> (T, Instant) {
        loop {
            let arrived = self.arrived.notified();
            if let Some(entry) = self.entries.lock().expect("wait queue lock").pop_front() {
                return entry;
            }
            arrived.await;
        }
    }

    /// Removes every entry (shutdown), oldest first.
    fn take_all(&self) -> Vec<T> {
        let mut entries = self.entries.lock().expect("wait queue lock");
        entries.drain(..).map(|(item, _)| item).collect()
    }
}

/// The pod's admission limits, the counts they are checked against, and the connections
/// waiting for a handshake. `T` is the waiting connection (a TCP stream in the sidecar).
pub struct Admission<T> {
    max_connections: usize,
    /// Established plus in-handshake connections.
    open: Arc<AtomicUsize>,
    handshakes: Arc<Semaphore>,
    bucket: TokenBucket,
    waiting: WaitQueue<T>,
    max_wait: Duration,
}

/// What became of the oldest waiting connection.
pub enum Turn<T> {
    /// Its handshake may start now.
    Admitted(T, Ticket),
    /// It waited longer than a client would: closed without a handshake.
    TooLate(T, Duration),
}

/// Held by an admitted connection; releases its slot(s) when dropped.
pub struct Ticket {
    open: Arc<AtomicUsize>,
    handshake: Option<OwnedSemaphorePermit>,
    /// How long the connection waited for its turn: part of the handshake latency the agent
    /// sees, and so of what the sidecar reports to the planner.
    pub queued: Duration,
}

impl Ticket {
    /// The handshake is over (either way): free the concurrent-handshake slot.
    pub fn handshake_done(&mut self) {
        self.handshake = None;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<T> Admission<T> {
    /// `max_wait` bounds how long a connection may wait for its handshake; the queue holds
    /// what the handshake rate clears in that time, so a full queue means a longer wait.
    pub fn new(
        max_connections: usize,
        max_handshakes_per_second: u32,
        max_concurrent_handshakes: usize,
        max_wait: Duration,
    ) -> Self {
        let bucket = TokenBucket::per_second(max_handshakes_per_second);
        let capacity = (bucket.rate() * max_wait.as_secs_f64()).ceil().max(1.0) as usize;
        Self {
            max_connections,
            open: Arc::new(AtomicUsize::new(0)),
            handshakes: Arc::new(Semaphore::new(max_concurrent_handshakes.max(1))),
            bucket,
            waiting: WaitQueue::new(capacity),
            max_wait,
        }
    }

    /// Connections established or handshaking.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections waiting for their handshake.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// A new connection: queued for its handshake, or refused (and handed back to be closed)
    /// when the pod is full or the queue would make it wait longer than `max_wait`.
    pub fn arrive(&self, conn: T, now: Instant) -> Result<(), (Refusal, T)> {
        if self.open() + self.waiting() >= self.max_connections {
            return Err((Refusal::MaxConnections, conn));
        }
        self.waiting
            .push(conn, now)
            .map_err(|conn| (Refusal::HandshakeRate, conn))
    }

    /// Waits for the oldest connection's turn: a concurrent-handshake slot and a token of the
    /// handshake rate. `gone` says whether a waiting client already left; such a connection is
    /// dropped without spending a slot or a token on it.
    pub async fn next(&self, gone: impl Fn(&T) -> bool) -> Turn<T> {
        loop {
            let (conn, since) = self.waiting.pop().await;
            if gone(&conn) {
                continue;
            }
            let permit = self
                .handshakes
                .clone()
                .acquire_owned()
                .await
                .expect("the handshake semaphore is never closed");
            let waited = since.elapsed();
            if waited > self.max_wait {
                return Turn::TooLate(conn, waited);
            }
            self.bucket.take().await;
            self.open.fetch_add(1, Ordering::Relaxed);
            let ticket = Ticket {
                open: self.open.clone(),
                handshake: Some(permit),
                queued: since.elapsed(),
            };
            return Turn::Admitted(conn, ticket);
        }
    }

    /// Every waiting connection, removed (shutdown).
    pub fn take_waiting(&self) -> Vec<T> {
        self.waiting.take_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_admits_its_rate_over_time_not_more() {
        let bucket = TokenBucket::per_second(100);
        let start = Instant::now();
        let mut admitted = 0;
        // 10,000 attempts spread over 2 simulated seconds: about 200 + the 10-token burst.
        for i in 0..10_000u64 {
            let now = start + Duration::from_micros(i * 200);
            if bucket.try_take(now) {
                admitted += 1;
            }
        }
        assert!((200..=212).contains(&admitted), "admitted {admitted}");
    }

    #[test]
    fn the_bucket_says_how_long_until_its_next_token() {
        let bucket = TokenBucket::per_second(10);
        let now = Instant::now();
        assert!(bucket.try_take(now), "a burst of one token");
        let wait = bucket.take_or_wait(now).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        assert!(bucket.try_take(now + wait));
    }

    fn admission(max_connections: usize, rate: u32, concurrent: usize) -> Admission<u32> {
        Admission::new(max_connections, rate, concurrent, Duration::from_secs(1))
    }

    async fn admitted(turn: Turn<u32>) -> (u32, Ticket) {
        match turn {
            Turn::Admitted(n, ticket) => (n, ticket),
            Turn::TooLate(n, waited) => panic!("{n} too late after {waited:?}"),
        }
    }

    #[tokio::test]
    async fn connection_limit_counts_open_and_waiting_connections() {
        let admission = admission(2, 1000, 10);
        let now = Instant::now();
        admission.arrive(1, now).ok().unwrap();
        let (_, first) = admitted(admission.next(|_| false).await).await;
        admission.arrive(2, now).ok().unwrap();
        let (refusal, back) = admission.arrive(3, now).err().unwrap();
        assert_eq!((refusal, back), (Refusal::MaxConnections, 3));
        drop(first);
        admission.arrive(3, now).ok().unwrap();
    }

    #[tokio::test]
    async fn a_burst_waits_its_turn_at_the_handshake_rate_instead_of_being_refused() {
        // 100/s with a 10-token burst: 30 arrivals at once are all admitted, in order, the
        // last about 0.2 s later.
        let admission = admission(1000, 100, 1000);
        let start = Instant::now();
        for n in 0..30 {
            admission.arrive(n, start).ok().unwrap();
        }
        let mut tickets = Vec::new();
        for n in 0..30 {
            let (got, ticket) = admitted(admission.next(|_| false).await).await;
            assert_eq!(got, n, "oldest first");
            tickets.push(ticket);
        }
        let took = start.elapsed().as_secs_f64();
        assert!(
            (0.19..1.0).contains(&took),
            "took {took} s: not paced at 100/s"
        );
    }

    #[tokio::test]
    async fn the_queue_holds_what_the_rate_clears_within_the_bound_and_refuses_beyond() {
        // 100/s and a 1 s bound: 100 may wait; the 101st would wait longer.
        let admission = admission(10_000, 100, 1000);
        let now = Instant::now();
        for n in 0..100 {
            admission.arrive(n, now).ok().unwrap();
        }
        let (refusal, _) = admission.arrive(100, now).err().unwrap();
        assert_eq!(refusal, Refusal::HandshakeRate);
        assert_eq!(admission.waiting(), 100);
    }

    #[tokio::test]
    async fn concurrent_handshakes_are_bounded_until_done_and_late_arrivals_are_cut() {
        let admission = Admission::new(100, 1000, 1, Duration::from_millis(200));
        let now = Instant::now();
        admission.arrive(1, now).ok().unwrap();
        admission.arrive(2, now).ok().unwrap();
        let (_, mut first) = admitted(admission.next(|_| false).await).await;
        // The only slot is taken: the second waits, and past the 200 ms bound it is too late.
        let second = admission.next(|_| false);
        tokio::pin!(second);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut second)
                .await
                .is_err(),
            "admitted while the only handshake slot was held"
        );
        first.handshake_done();
        match second.await {
            Turn::TooLate(2, waited) => assert!(waited >= Duration::from_millis(300)),
            _ => panic!("the second connection should be too late"),
        }
    }

    #[tokio::test]
    async fn clients_that_left_are_skipped_without_spending_a_token() {
        // 1/s with a burst of one token.
        let admission = Admission::new(100, 1, 10, Duration::from_secs(10));
        let now = Instant::now();
        admission.arrive(0, now).ok().unwrap();
        admission.arrive(1, now).ok().unwrap();
        let (got, _ticket) = admitted(admission.next(|n| *n == 0).await).await;
        assert_eq!(got, 1);
        // Had the departed client taken the one token, this would be a second later.
        assert!(
            now.elapsed() < Duration::from_millis(500),
            "{:?}",
            now.elapsed()
        );
    }
}
