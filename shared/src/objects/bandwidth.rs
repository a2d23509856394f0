//! `--bwlimit`: one token bucket for every byte a run streams through this machine (the
//! bodies of its GETs, as they arrive; what is read is what is then written). Server-side
//! copies move no bytes through us and are not limited.
//!
//! The bucket is kept as a theoretical arrival time (GCRA): each chunk pushes it forward by
//! its size over the rate, and a reader waits for whatever lies beyond a short burst. A
//! reader that waits stops reading its socket, so the sender slows down too.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How far ahead of the rate the bytes may run: chunks arrive in bursts, and many readers
/// share the bucket.
pub const BURST: Duration = Duration::from_millis(100);

/// A rate shared by every request of a run.
#[derive(Debug)]
pub struct Bandwidth {
    bytes_per_sec: u64,
    /// When the bytes taken so far would have arrived at the rate.
    tat: Mutex<Option<Instant>>,
}

impl Bandwidth {
    /// A limit of `bytes_per_sec` (at least 1).
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            bytes_per_sec: bytes_per_sec.max(1),
            tat: Mutex::new(None),
        }
    }

    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec
    }

    /// Counts `n` bytes taken at `now`, and says how long their reader must wait.
    pub fn reserve(&self, n: usize, now: Instant) -> Duration {
        let mut tat = self.tat.lock().expect("bandwidth lock");
        let start = tat.map_or(now, |t| t.max(now));
        let next = start + Duration::from_secs_f64(n as f64 / self.bytes_per_sec as f64);
        *tat = Some(next);
        next.saturating_duration_since(now).saturating_sub(BURST)
    }

    /// Waits until `n` more bytes fit the rate.
    pub async fn take(&self, n: usize) {
        let wait = self.reserve(n, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// `--bwlimit`'s value: a size a second, as rclone writes it (`50M` = 50 MiB/s; a bare
/// number is bytes), above zero.
pub fn parse_rate(value: &str) -> Result<u64, String> {
    let v = value.trim();
    let v = v
        .strip_suffix("/s")
        .or_else(|| v.strip_suffix("/S"))
        .unwrap_or(v);
    match crate::units::parse_size(v) {
        Ok(0) => Err(format!(
            "--bwlimit {value:?}: zero; expected a rate above zero such as 50M (MiB/s), or no --bwlimit"
        )),
        Ok(n) => Ok(n),
        Err(e) => Err(format!(
            "--bwlimit {value:?}: {e}; expected bytes a second such as 50M (MiB/s) or 512K"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rates_read_as_rclone_writes_them() {
        assert_eq!(parse_rate("50M"), Ok(50 << 20));
        assert_eq!(parse_rate("16M/s"), Ok(16 << 20));
        assert_eq!(parse_rate("512K"), Ok(512 << 10));
        assert_eq!(parse_rate("1000"), Ok(1000));
        for bad in ["0", "-1M", "fast", "10Q", ""] {
            let e = parse_rate(bad).unwrap_err();
            assert!(
                e.contains("--bwlimit") && e.contains(&format!("{bad:?}")),
                "{e}"
            );
        }
    }

    #[test]
    fn a_first_burst_passes_and_then_the_rate_holds() {
        let b = Bandwidth::new(1000);
        let t0 = Instant::now();
        // 100 bytes = 100 ms at the rate: within the burst.
        assert_eq!(b.reserve(100, t0), Duration::ZERO);
        // 1,000 more: 1.1 s of bytes at t0, 1 s beyond the burst.
        assert_eq!(b.reserve(1000, t0), Duration::from_millis(1000));
        // After an idle second and more, the debt is gone but no credit piles up.
        let later = t0 + Duration::from_secs(5);
        assert_eq!(b.reserve(100, later), Duration::ZERO);
        assert_eq!(b.reserve(200, later), Duration::from_millis(200));
    }

    proptest! {
        /// However the bytes come in chunks, a reader who waits as told has, at every
        /// point, taken no more than the rate allows plus one burst.
        #[test]
        fn no_one_runs_ahead_of_the_rate(chunks in proptest::collection::vec(1usize..200_000, 1..100), rate in 1_000u64..10_000_000) {
            let b = Bandwidth::new(rate);
            let t0 = Instant::now();
            let mut now = t0;
            let mut taken = 0u64;
            for c in chunks {
                now += b.reserve(c, now);
                taken += c as u64;
                let allowed = (now - t0 + BURST).as_secs_f64() * rate as f64;
                prop_assert!(taken as f64 <= allowed + 1.0, "{taken} > {allowed}");
            }
        }
    }
}
