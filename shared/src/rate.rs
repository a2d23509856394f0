//! One rate shared by many tasks: `--bwlimit` (bytes a second) and
//! `--max-requests-per-second` (requests a second, per registry).
//!
//! The bucket is kept as a theoretical arrival time (GCRA): each take pushes it forward by
//! its units over the rate, and the taker waits for whatever lies beyond the burst. A
//! reader that waits stops reading its socket, so the sender slows down too.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A rate shared by every request of a run.
#[derive(Debug)]
pub struct Rate {
    per_sec: f64,
    /// How far ahead of the rate the units may run.
    burst: Duration,
    /// When the units taken so far would have arrived at the rate.
    tat: Mutex<Option<Instant>>,
}

impl Rate {
    /// `per_sec` units a second (a positive, finite number), `burst` ahead at most.
    pub fn new(per_sec: f64, burst: Duration) -> Self {
        let per_sec = if per_sec.is_finite() && per_sec > 0.0 {
            per_sec
        } else {
            f64::MIN_POSITIVE
        };
        Self {
            per_sec,
            burst,
            tat: Mutex::new(None),
        }
    }

    pub fn per_sec(&self) -> f64 {
        self.per_sec
    }

    /// Counts `n` units taken at `now`, and says how long their taker must wait.
    pub fn reserve(&self, n: u64, now: Instant) -> Duration {
        let mut tat = self.tat.lock().expect("rate lock");
        let start = tat.map_or(now, |t| t.max(now));
        let next = start + Duration::from_secs_f64(n as f64 / self.per_sec);
        *tat = Some(next);
        next.saturating_duration_since(now)
            .saturating_sub(self.burst)
    }

    /// Waits until `n` more units fit the rate.
    pub async fn take(&self, n: u64) {
        let wait = self.reserve(n, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BURST: Duration = Duration::from_millis(100);

    #[test]
    fn a_first_burst_passes_and_then_the_rate_holds() {
        let b = Rate::new(1000.0, BURST);
        let t0 = Instant::now();
        // 100 units = 100 ms at the rate: within the burst.
        assert_eq!(b.reserve(100, t0), Duration::ZERO);
        // 1,000 more: 1.1 s of units at t0, 1 s beyond the burst.
        assert_eq!(b.reserve(1000, t0), Duration::from_millis(1000));
        // After an idle second and more, the debt is gone but no credit piles up.
        let later = t0 + Duration::from_secs(5);
        assert_eq!(b.reserve(100, later), Duration::ZERO);
        assert_eq!(b.reserve(200, later), Duration::from_millis(200));
    }

    #[test]
    fn requests_without_a_burst_are_spaced_evenly() {
        let r = Rate::new(4.0, Duration::ZERO);
        let t0 = Instant::now();
        let waits: Vec<Duration> = (0..4).map(|_| r.reserve(1, t0)).collect();
        let ms: Vec<u128> = waits.iter().map(|w| w.as_millis()).collect();
        assert_eq!(ms, [250, 500, 750, 1000]);
    }

    proptest! {
        /// However the units come, a taker who waits as told has, at every point, taken
        /// no more than the rate allows plus one burst.
        #[test]
        fn no_one_runs_ahead_of_the_rate(chunks in proptest::collection::vec(1u64..200_000, 1..100), rate in 1_000u64..10_000_000) {
            let b = Rate::new(rate as f64, BURST);
            let t0 = Instant::now();
            let mut now = t0;
            let mut taken = 0u64;
            for c in chunks {
                now += b.reserve(c, now);
                taken += c;
                let allowed = (now - t0 + BURST).as_secs_f64() * rate as f64;
                prop_assert!(taken as f64 <= allowed + 1.0, "{taken} > {allowed}");
            }
        }
    }
}
