//! `--bwlimit`: one token bucket for every byte a run streams through this machine (the
//! bodies of its GETs, as they arrive; what is read is what is then written). Server-side
//! copies move no bytes through us and are not limited.
//!
//! The bucket is a [`crate::rate::Rate`] counted in bytes, with a 100 ms burst.

use std::time::Duration;

/// How far ahead of the rate the bytes may run: chunks arrive in bursts, and many readers
/// share the bucket.
pub const BURST: Duration = Duration::from_millis(100);

/// The one rate of a run's streamed bytes.
pub type Bandwidth = crate::rate::Rate;

/// A limit of `bytes_per_sec` (at least 1).
pub fn limit(bytes_per_sec: u64) -> Bandwidth {
    Bandwidth::new(bytes_per_sec.max(1) as f64, BURST)
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
}
