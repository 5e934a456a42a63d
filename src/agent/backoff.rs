//! The wait between retries of the API server: exponential, capped, with jitter. Every node
//! runs an agent, so after an API server outage or restart they would all retry in lockstep
//! (and relist together) without the jitter; without the cap a long outage would leave them
//! waiting long after the server is back.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

#[derive(Debug)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    /// The upper end of the next wait; doubles after each one, up to `cap`.
    ceiling: Duration,
    rng: u64,
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Backoff {
        // RandomState is seeded from the OS per process: each node's agent gets its own
        // sequence, which is all the jitter needs (no crate for it).
        let mut h = RandomState::new().build_hasher();
        h.write_u64(std::process::id().into());
        let cap = cap.max(first);
        Backoff {
            first,
            cap,
            ceiling: first,
            rng: h.finish() | 1,
        }
    }

    /// After a success: the next failure waits about `first` again.
    pub fn reset(&mut self) {
        self.ceiling = self.first;
    }

    /// The next wait: uniform in [ceiling/2, ceiling] ("equal jitter": never much shorter than
    /// the exponential step, never in step with another node), then the ceiling doubles.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = (ceiling * 2).min(self.cap);
        let half = ceiling / 2;
        let span = (ceiling - half).as_millis() as u64;
        half + Duration::from_millis(self.random() % (span + 1))
    }

    /// xorshift64*: plenty for spreading retries, and no dependency.
    fn random(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn doubles_up_to_the_cap_within_jitter_bounds() {
        let mut b = Backoff::new(S(1), S(30));
        let ceilings = [1, 2, 4, 8, 16, 30, 30, 30];
        for c in ceilings {
            let d = b.next_delay();
            assert!(d >= S(c) / 2 && d <= S(c), "{d:?} outside [{c}/2, {c}] s");
        }
        b.reset();
        assert!(b.next_delay() <= S(1));
        // A cap below the first step is lifted to it rather than inverting the range.
        let mut small = Backoff::new(S(2), S(1));
        assert!(small.next_delay() <= S(2));
        assert!(small.next_delay() <= S(2));
    }

    #[test]
    fn jitter_spreads_the_waits() {
        let mut b = Backoff::new(S(8), S(8));
        let waits: std::collections::BTreeSet<Duration> = (0..50).map(|_| b.next_delay()).collect();
        // 50 draws from 4001 possible milliseconds: lockstep would give one value.
        assert!(waits.len() > 40, "{waits:?}");
        assert!(waits.iter().all(|d| *d >= S(4) && *d <= S(8)));
        // Two agents started together do not wait the same.
        let (mut x, mut y) = (Backoff::new(S(8), S(8)), Backoff::new(S(8), S(8)));
        let xs: Vec<_> = (0..5).map(|_| x.next_delay()).collect();
        let ys: Vec<_> = (0..5).map(|_| y.next_delay()).collect();
        assert_ne!(xs, ys);
    }
}
