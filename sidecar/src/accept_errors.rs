//! What an accept loop does when `accept` fails: back off, and say so without flooding the log.
//!
//! Under a reconnect storm the process can run out of file descriptors (EMFILE) or the system
//! out of them (ENFILE); `accept` then fails at once, every time, until a connection closes.
//! Retrying in a tight loop burns the CPU the established agents need, and logging every
//! failure writes thousands of lines a second. So the loop sleeps, doubling from 10 ms to
//! 1 s while the failures go on, and the log gets the first failure and then one line every
//! 10 s with how many followed. Every failure is counted in the metric it is given.
//!
//! It never closes or refuses anything itself: it only paces the loop that calls it.

use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

const FIRST_PAUSE: Duration = Duration::from_millis(10);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);
const LOG_EVERY: Duration = Duration::from_secs(10);

/// One accept loop's failures.
pub struct AcceptErrors {
    /// Which listener, for the log (`agents`, `admin`).
    listener: &'static str,
    counter: Counter,
    pause: Duration,
    logged_at: Option<Instant>,
    since_logged: u64,
}

impl AcceptErrors {
    pub fn new(listener: &'static str, counter: Counter) -> Self {
        Self {
            listener,
            counter,
            pause: FIRST_PAUSE,
            logged_at: None,
            since_logged: 0,
        }
    }

    /// An accept succeeded: the next failure starts from the shortest pause again.
    pub fn recovered(&mut self) {
        self.pause = FIRST_PAUSE;
    }

    /// An accept failed: counts it, logs it when due, and returns how long to wait before the
    /// next accept.
    pub fn failed(&mut self, err: &std::io::Error, now: Instant) -> Duration {
        self.counter.inc();
        self.since_logged += 1;
        let due = self
            .logged_at
            .is_none_or(|at| now.duration_since(at) >= LOG_EVERY);
        if due {
            tracing::warn!(
                listener = self.listener,
                error = %err,
                failures = self.since_logged,
                "accept failed (out of file descriptors?); backing off"
            );
            self.logged_at = Some(now);
            self.since_logged = 0;
        }
        let pause = self.pause;
        self.pause = (self.pause * 2).min(LONGEST_PAUSE);
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_to_a_second_and_reset_after_a_success() {
        let counter = Counter::default();
        let mut e = AcceptErrors::new("agents", counter.clone());
        let err = std::io::Error::from_raw_os_error(24);
        let now = Instant::now();
        let pauses: Vec<u64> = (0..9)
            .map(|_| e.failed(&err, now).as_millis() as u64)
            .collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(counter.get(), 9);
        e.recovered();
        assert_eq!(e.failed(&err, now), FIRST_PAUSE);
    }

    #[test]
    fn the_log_gets_one_line_per_ten_seconds() {
        let mut e = AcceptErrors::new("agents", Counter::default());
        let err = std::io::Error::from_raw_os_error(24);
        let start = Instant::now();
        e.failed(&err, start);
        assert_eq!(e.logged_at, Some(start));
        for i in 1..100 {
            e.failed(&err, start + Duration::from_millis(i * 50));
        }
        assert_eq!(e.logged_at, Some(start), "no second line within 10 s");
        assert_eq!(e.since_logged, 99);
        let later = start + LOG_EVERY;
        e.failed(&err, later);
        assert_eq!((e.logged_at, e.since_logged), (Some(later), 0));
    }
}
