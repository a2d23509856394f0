//! Sizes and durations as people write them on a command line: `64M`, `1.5G`, `5MiB`,
//! `30s`, `2h`. Sizes are binary (`M` and `MB` are both MiB, as in rclone and aws-cli);
//! a bare number is in the unit the flag names (bytes, milliseconds, seconds).

use std::time::Duration;

/// Parses a size: a number (decimals allowed) with an optional unit B, K, M, G, T (also
/// KB/KiB, MB/MiB, …; any case). A bare number is bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a size: expected e.g. 64M, 1.5G, 5MiB or 1048576 (bytes)");
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    let v = n * (1u64 << shift) as f64;
    if !v.is_finite() || v < 0.0 || v >= u64::MAX as f64 {
        return Err(bad());
    }
    if v.fract() != 0.0 {
        return Err(format!("{s:?} is not a whole number of bytes"));
    }
    Ok(v as u64)
}

/// Parses a duration: a number with a unit ms, s, m, h or d (`30s`, `1.5h`, `500ms`); a
/// bare number is in `bare` (the unit a flag's name says, e.g. milliseconds for `-ms`).
pub fn parse_duration(s: &str, bare: Duration) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration: expected e.g. 500ms, 30s, 5m or 2h");
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let unit_secs = match unit.trim().to_ascii_lowercase().as_str() {
        "" => bare.as_secs_f64(),
        "ms" => 0.001,
        "s" | "sec" | "secs" => 1.0,
        "m" | "min" | "mins" => 60.0,
        "h" | "hr" | "hrs" => 3600.0,
        "d" => 86400.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(n * unit_secs).map_err(|_| bad())
}

/// A duration as a person reads it: `1.5s`, `2m05s`, `1h02m`, `6d23h`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_units_and_bad_ones_name_the_value_and_an_example() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("5MiB"), Ok(5 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("2kb"), Ok(2048));
        let e = parse_size("64X").unwrap_err();
        assert!(e.contains("\"64X\"") && e.contains("64M"), "{e}");
        assert!(parse_size("").is_err());
        assert!(parse_size("-1M").is_err());
        assert!(parse_size("0.1B").is_err());
    }

    #[test]
    fn durations_take_units_and_a_bare_number_is_the_flags_unit() {
        let ms = Duration::from_millis(1);
        let s = Duration::from_secs(1);
        assert_eq!(parse_duration("30s", ms), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2h", ms), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("500ms", s), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("20", ms), Ok(Duration::from_millis(20)));
        assert_eq!(parse_duration("1800", s), Ok(Duration::from_secs(1800)));
        let e = parse_duration("soon", s).unwrap_err();
        assert!(e.contains("\"soon\"") && e.contains("30s"), "{e}");
        assert_eq!(human_duration(Duration::from_secs(125)), "2m05s");
        assert_eq!(human_duration(Duration::from_secs(3 * 3600 + 120)), "3h02m");
        assert_eq!(
            human_duration(Duration::from_secs(7 * 86_400 - 60)),
            "6d23h"
        );
    }
}
