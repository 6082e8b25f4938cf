//! Reconnect pacing: capped exponential backoff with full jitter, and the tiny PRNG behind it.
//!
//! Full jitter (sleep uniformly in `[0, min(cap, base·2^attempt))`) is what keeps thousands of
//! agents that lost their connection at the same instant from coming back at the same instant.
//! The generator is splitmix64: statistically fine for spreading load, seeded per agent, and no
//! `rand` dependency for the sake of a few random sleeps.

use std::time::Duration;

/// splitmix64: one `u64` of state per agent.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for one agent; different `seed`s give unrelated streams.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)`; 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, d)` at nanosecond resolution.
    pub fn duration_below(&mut self, d: Duration) -> Duration {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.below(nanos))
    }
}

/// The sleep before retry number `attempt` (0 for the first retry after a lost connection).
pub fn backoff_delay(base: Duration, cap: Duration, attempt: u32, rng: &mut Rng) -> Duration {
    let ceiling = base.saturating_mul(1u32 << attempt.min(31)).min(cap);
    rng.duration_below(ceiling)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(10);

    #[test]
    fn full_jitter_stays_under_the_exponential_ceiling() {
        let mut rng = Rng::new(7);
        for attempt in 0..7u32 {
            let ceiling = BASE * 2u32.pow(attempt);
            let samples: Vec<Duration> = (0..2000)
                .map(|_| backoff_delay(BASE, CAP, attempt, &mut rng))
                .collect();
            assert!(samples.iter().all(|d| *d < ceiling), "attempt {attempt}");
            // Full jitter, not equal jitter: both halves of the range are used.
            assert!(samples.iter().any(|d| *d < ceiling / 4));
            assert!(samples.iter().any(|d| *d > ceiling * 3 / 4));
        }
    }

    #[test]
    fn cap_bounds_every_attempt_even_huge_ones() {
        let mut rng = Rng::new(42);
        for attempt in [7u32, 8, 20, 31, 32, 1000, u32::MAX] {
            for _ in 0..500 {
                assert!(backoff_delay(BASE, CAP, attempt, &mut rng) < CAP);
            }
        }
        let mean: f64 = (0..10_000)
            .map(|_| backoff_delay(BASE, CAP, 50, &mut rng).as_secs_f64())
            .sum::<f64>()
            / 10_000.0;
        assert!((mean - 5.0).abs() < 0.3, "mean {mean}");
    }

    #[test]
    fn zero_ceiling_means_no_sleep() {
        let mut rng = Rng::new(1);
        assert_eq!(
            backoff_delay(Duration::ZERO, CAP, 3, &mut rng),
            Duration::ZERO
        );
        assert_eq!(rng.below(0), 0);
    }

    #[test]
    fn seeds_give_different_streams() {
        let a: Vec<u64> = {
            let mut r = Rng::new(1);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(2);
            (0..4).map(|_| r.next_u64()).collect()
        };
        assert_ne!(a, b);
    }
}
