//! Admission control: decides, before any TLS work, whether a new connection may proceed.
//!
//! A reconnect storm is survived by refusing early and cheaply: a refused client costs one
//! accept and one close, retries with backoff, and may land on another pod. What is admitted
//! is bounded three ways — total connections, handshakes per second (token bucket) and
//! handshakes at once — so the CPU left over keeps established connections' heartbeats flowing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
        let mut state = self.state.lock().expect("token bucket lock");
        let (tokens, last) = *state;
        let elapsed = now.saturating_duration_since(last).as_secs_f64();
        let tokens = (tokens + elapsed * self.rate).min(self.burst);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now);
            true
        } else {
            *state = (tokens, now);
            false
        }
    }
}

/// The pod's admission limits and the counts they are checked against.
pub struct Admission {
    max_connections: usize,
    /// Established plus in-handshake connections.
    open: Arc<AtomicUsize>,
    handshakes: Arc<Semaphore>,
    bucket: TokenBucket,
}

/// Held by an admitted connection; releases its slot(s) when dropped.
pub struct Ticket {
    open: Arc<AtomicUsize>,
    handshake: Option<OwnedSemaphorePermit>,
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

impl Admission {
    pub fn new(
        max_connections: usize,
        max_handshakes_per_second: u32,
        max_concurrent_handshakes: usize,
    ) -> Self {
        Self {
            max_connections,
            open: Arc::new(AtomicUsize::new(0)),
            handshakes: Arc::new(Semaphore::new(max_concurrent_handshakes.max(1))),
            bucket: TokenBucket::per_second(max_handshakes_per_second),
        }
    }

    /// Connections established or handshaking.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Admit a new connection, or say why not. Checks the cheapest limit first.
    pub fn admit(&self, now: Instant) -> Result<Ticket, Refusal> {
        if self.open() >= self.max_connections {
            return Err(Refusal::MaxConnections);
        }
        let permit = self
            .handshakes
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::ConcurrentHandshakes)?;
        if !self.bucket.try_take(now) {
            return Err(Refusal::HandshakeRate);
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Ticket {
            open: self.open.clone(),
            handshake: Some(permit),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
    fn connection_limit_counts_open_tickets() {
        let admission = Admission::new(2, 1000, 10);
        let now = Instant::now();
        let a = admission.admit(now).unwrap();
        let _b = admission.admit(now).unwrap();
        assert_eq!(admission.admit(now).err(), Some(Refusal::MaxConnections));
        drop(a);
        assert!(admission.admit(now).is_ok());
    }

    #[test]
    fn concurrent_handshakes_are_bounded_until_done() {
        let admission = Admission::new(100, 1000, 1);
        let now = Instant::now();
        let mut first = admission.admit(now).unwrap();
        assert_eq!(
            admission.admit(now).err(),
            Some(Refusal::ConcurrentHandshakes)
        );
        first.handshake_done();
        assert!(admission.admit(now).is_ok());
    }
}
