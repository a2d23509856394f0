//! Schedules as EventBridge writes them: `rate(VALUE UNIT)` and
//! `cron(MINUTES HOURS DAY-OF-MONTH MONTH DAY-OF-WEEK YEAR)`, in UTC.
//!
//! Pure: parsing and the next run after a time. A rate counts from an anchor (when the
//! task was saved), as an EventBridge rate counts from when its rule was created.
//! Cron fields take `*`, numbers, `a-b` ranges, `,` lists, `/` increments and the names
//! JAN–DEC and SUN–SAT; one of day-of-month and day-of-week must be `?`, as in EventBridge.
//! `L`, `W` and `#` are refused by name.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Timelike, Utc};
use std::fmt;

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    Rate(Duration),
    Cron(Box<Cron>),
}

/// A cron expression: the allowed values of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: Vec<bool>,
    hours: Vec<bool>,
    /// `None` when `?` (the other day field decides).
    days_of_month: Option<Vec<bool>>,
    months: Vec<bool>,
    /// 0 = Sunday … 6 = Saturday; `None` when `?`.
    days_of_week: Option<Vec<bool>>,
    years: Vec<bool>,
}

/// A schedule that cannot be read, with what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?}: {reason}")]
pub struct ScheduleError {
    pub text: String,
    pub reason: String,
}

const FIRST_YEAR: u32 = 1970;
const LAST_YEAR: u32 = 2199;
const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

impl Schedule {
    /// Reads `rate(...)` or `cron(...)`.
    pub fn parse(text: &str) -> Result<Self, ScheduleError> {
        let err = |reason: String| ScheduleError {
            text: text.into(),
            reason,
        };
        let t = text.trim();
        if let Some(inner) = t.strip_prefix("rate(").and_then(|s| s.strip_suffix(')')) {
            return parse_rate(inner).map(Schedule::Rate).map_err(err);
        }
        if let Some(inner) = t.strip_prefix("cron(").and_then(|s| s.strip_suffix(')')) {
            return parse_cron(inner)
                .map(|c| Schedule::Cron(Box::new(c)))
                .map_err(err);
        }
        Err(err(
            "expected rate(VALUE UNIT), e.g. rate(1 day), or cron(MIN HOUR DOM MONTH DOW YEAR), e.g. cron(0 3 * * ? *)".into(),
        ))
    }

    /// The first run strictly after `after`. A rate's runs fall at `anchor + k × rate`.
    /// `None` when a cron expression has no run left (its years are past).
    pub fn next_after(&self, after: DateTime<Utc>, anchor: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Rate(d) => {
                if after < anchor {
                    return Some(anchor);
                }
                let step = d.num_seconds().max(60);
                let k = (after - anchor).num_seconds() / step + 1;
                Some(anchor + Duration::seconds(k * step))
            }
            Schedule::Cron(c) => c.next_after(after),
        }
    }
}

fn parse_rate(inner: &str) -> Result<Duration, String> {
    let mut parts = inner.split_whitespace();
    let (Some(value), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err("expected rate(VALUE UNIT), e.g. rate(5 minutes)".into());
    };
    let n: i64 = value
        .parse()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| format!("{value:?}: expected a whole number of 1 or more"))?;
    let (singular, per) = match unit {
        "minute" | "minutes" => ("minute", 60),
        "hour" | "hours" => ("hour", 3600),
        "day" | "days" => ("day", 86_400),
        _ => {
            return Err(format!(
                "unit {unit:?}: expected minute(s), hour(s) or day(s)"
            ));
        }
    };
    // EventBridge: 1 takes the singular, more the plural.
    if (n == 1) != (unit == singular) {
        return Err(format!(
            "{n} {unit}: expected \"1 {singular}\" or \"N {singular}s\""
        ));
    }
    n.checked_mul(per)
        .filter(|s| *s <= 3_650 * 86_400)
        .map(Duration::seconds)
        .ok_or_else(|| format!("{n} {unit}: expected at most 10 years"))
}

fn parse_cron(inner: &str) -> Result<Cron, String> {
    let f: Vec<&str> = inner.split_whitespace().collect();
    if f.len() != 6 {
        return Err(format!(
            "{} fields; expected 6: minutes hours day-of-month month day-of-week year",
            f.len()
        ));
    }
    let minutes =
        field(f[0], "minutes", 0, 59, &[])?.ok_or("minutes: '?' is only for day fields")?;
    let hours = field(f[1], "hours", 0, 23, &[])?.ok_or("hours: '?' is only for day fields")?;
    let dom = field(f[2], "day-of-month", 1, 31, &[])?;
    let months =
        field(f[3], "month", 1, 12, &MONTHS)?.ok_or("month: '?' is only for day fields")?;
    let dow = field(f[4], "day-of-week", 1, 7, &DAYS)?;
    let years = field(f[5], "year", FIRST_YEAR, LAST_YEAR, &[])?
        .ok_or("year: '?' is only for day fields")?;
    match (&dom, &dow) {
        (None, None) => {
            return Err("day-of-month and day-of-week are both '?'; expected one of them".into());
        }
        (Some(_), Some(_)) => {
            return Err(
                "day-of-month and day-of-week both given; expected '?' in one of them (as EventBridge does)".into(),
            );
        }
        _ => {}
    }
    // Day-of-week 1–7 is SUN–SAT; keep it 0-based.
    let dow = dow.map(|v| v[1..].to_vec());
    Ok(Cron {
        minutes,
        hours,
        days_of_month: dom.map(|v| v[1..].to_vec()),
        months: months[1..].to_vec(),
        days_of_week: dow,
        years: years[FIRST_YEAR as usize..].to_vec(),
    })
}

/// One field: a table indexed by value (0..=max), or `None` for `?`.
fn field(
    text: &str,
    name: &str,
    min: u32,
    max: u32,
    names: &[&str],
) -> Result<Option<Vec<bool>>, String> {
    if text == "?" {
        return Ok(None);
    }
    if text.contains(['L', 'W', '#']) && !names.iter().any(|n| text.contains(n)) {
        return Err(format!(
            "{name} {text:?}: L, W and # are not supported here; expected *, numbers, ranges, lists or increments"
        ));
    }
    let mut on = vec![false; max as usize + 1];
    let value = |s: &str| -> Result<u32, String> {
        let n = names
            .iter()
            .position(|n| n.eq_ignore_ascii_case(s))
            .map(|i| i as u32 + min)
            .or_else(|| s.parse().ok())
            .ok_or_else(|| format!("{name} {s:?}: expected a number from {min} to {max}"))?;
        if (min..=max).contains(&n) {
            Ok(n)
        } else {
            Err(format!("{name} {n}: expected {min} to {max}"))
        }
    };
    for part in text.split(',') {
        // `N/STEP` runs from N to the field's end (also for a step of 1: `0/1` is every one).
        let (range, step, stepped) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>().ok().filter(|s| *s >= 1).ok_or_else(|| {
                    format!("{name} increment {s:?}: expected a number of 1 or more")
                })?,
                true,
            ),
            None => (part, 1, false),
        };
        let (lo, hi) = match range {
            "*" => (min, max),
            r => match r.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                None if stepped => (value(r)?, max),
                None => {
                    let v = value(r)?;
                    (v, v)
                }
            },
        };
        if lo > hi {
            return Err(format!(
                "{name} {range:?}: expected a range from low to high"
            ));
        }
        for v in (lo..=hi).step_by(step as usize) {
            on[v as usize] = true;
        }
    }
    Ok(Some(on))
}

impl Cron {
    fn day_matches(&self, d: NaiveDate) -> bool {
        self.years
            .get((d.year() as u32).wrapping_sub(FIRST_YEAR) as usize)
            .copied()
            .unwrap_or(false)
            && self.months[d.month0() as usize]
            && match (&self.days_of_month, &self.days_of_week) {
                (Some(dom), _) => dom[d.day0() as usize],
                (_, Some(dow)) => dow[d.weekday().num_days_from_sunday() as usize],
                _ => false,
            }
    }

    /// The first minute strictly after `after` that matches.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = after.with_second(0)?.with_nanosecond(0)? + Duration::minutes(1);
        let mut day = start.date_naive();
        let mut from = (start.hour(), start.minute());
        while day.year() as u32 <= LAST_YEAR {
            if self.day_matches(day) {
                for h in from.0..24 {
                    if !self.hours[h as usize] {
                        continue;
                    }
                    let m0 = if h == from.0 { from.1 } else { 0 };
                    if let Some(m) = (m0..60).find(|m| self.minutes[*m as usize]) {
                        return Utc
                            .with_ymd_and_hms(day.year(), day.month(), day.day(), h, m, 0)
                            .single();
                    }
                }
            }
            day = day.succ_opt()?;
            from = (0, 0);
        }
        None
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Rate(d) => write!(f, "every {} s", d.num_seconds()),
            Schedule::Cron(_) => f.write_str("cron"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn next(expr: &str, after: &str) -> String {
        Schedule::parse(expr)
            .unwrap()
            .next_after(at(after), at("2026-01-01T00:00:00Z"))
            .unwrap()
            .to_rfc3339()
    }

    #[test]
    fn rates_count_from_the_anchor() {
        assert_eq!(
            next("rate(1 hour)", "2026-01-01T00:00:00Z"),
            "2026-01-01T01:00:00+00:00"
        );
        assert_eq!(
            next("rate(5 minutes)", "2026-01-01T00:07:00Z"),
            "2026-01-01T00:10:00+00:00"
        );
        assert_eq!(
            next("rate(2 days)", "2026-01-02T10:00:00Z"),
            "2026-01-03T00:00:00+00:00"
        );
        assert_eq!(
            next("rate(1 day)", "2025-12-31T10:00:00Z"),
            "2026-01-01T00:00:00+00:00"
        );
    }

    #[test]
    fn cron_table() {
        for (expr, after, want) in [
            (
                "cron(0 3 * * ? *)",
                "2026-01-01T00:00:00Z",
                "2026-01-01T03:00:00+00:00",
            ),
            (
                "cron(0 3 * * ? *)",
                "2026-01-01T03:00:00Z",
                "2026-01-02T03:00:00+00:00",
            ),
            (
                "cron(*/15 * * * ? *)",
                "2026-01-01T10:16:30Z",
                "2026-01-01T10:30:00+00:00",
            ),
            (
                "cron(0 18 ? * MON-FRI *)",
                "2026-01-02T19:00:00Z",
                "2026-01-05T18:00:00+00:00",
            ),
            (
                "cron(0 9 ? * 2 *)",
                "2026-01-01T00:00:00Z",
                "2026-01-05T09:00:00+00:00",
            ),
            (
                "cron(30 0 1 JAN,JUL ? *)",
                "2026-01-01T01:00:00Z",
                "2026-07-01T00:30:00+00:00",
            ),
            (
                "cron(0 0 29 2 ? *)",
                "2026-01-01T00:00:00Z",
                "2028-02-29T00:00:00+00:00",
            ),
            (
                "cron(0 12 31 * ? 2027)",
                "2026-01-01T00:00:00Z",
                "2027-01-31T12:00:00+00:00",
            ),
            (
                "cron(5,10 8-9 * * ? *)",
                "2026-01-01T08:10:00Z",
                "2026-01-01T09:05:00+00:00",
            ),
        ] {
            assert_eq!(next(expr, after), want, "{expr} after {after}");
        }
        assert_eq!(
            Schedule::parse("cron(0 0 1 1 ? 2020)")
                .unwrap()
                .next_after(at("2026-01-01T00:00:00Z"), at("2026-01-01T00:00:00Z")),
            None,
            "no run left"
        );
    }

    #[test]
    fn bad_schedules_say_what_is_expected() {
        for (expr, says) in [
            ("every day", "expected rate("),
            ("rate(1 hours)", "\"1 hour\""),
            ("rate(5 minute)", "\"N minutes\""),
            ("rate(0 days)", "1 or more"),
            ("rate(3 weeks)", "minute(s), hour(s) or day(s)"),
            ("cron(0 3 * * *)", "5 fields; expected 6"),
            ("cron(0 3 * * MON *)", "'?' in one of them"),
            ("cron(0 3 ? * ? *)", "both '?'"),
            ("cron(60 3 * * ? *)", "minutes 60: expected 0 to 59"),
            ("cron(0 3 L * ? *)", "L, W and # are not supported"),
            ("cron(0 3 * FOO ? *)", "month \"FOO\""),
            ("cron(0 3 ? * 8 *)", "day-of-week 8"),
            ("cron(0 5-3 * * ? *)", "low to high"),
        ] {
            let e = Schedule::parse(expr).unwrap_err().to_string();
            assert!(e.contains(says), "{expr}: {e}");
        }
    }

    #[test]
    fn a_cron_every_minute_of_an_hour_goes_on_within_that_hour() {
        let Schedule::Cron(c) = Schedule::parse("cron(0/1 21 * * ? *)").unwrap() else {
            unreachable!()
        };
        let after = at("2026-01-01T00:00:00Z") + Duration::seconds(73_947_600);
        assert_eq!(after, at("2028-05-05T21:00:00Z"));
        assert_eq!(c.next_after(after), Some(at("2028-05-05T21:01:00Z")));
    }

    proptest! {
        /// The next run is after the given time, matches, and no matching minute lies between.
        #[test]
        fn cron_next_is_the_first_match_after(
            minute in 0u32..60, hour in 0u32..24, step in 1u32..30,
            secs in 0i64..(3 * 365 * 86_400),
        ) {
            let expr = format!("cron({minute}/{step} {hour} * * ? *)");
            let s = Schedule::parse(&expr).unwrap();
            let Schedule::Cron(c) = &s else { unreachable!() };
            let after = at("2026-01-01T00:00:00Z") + Duration::seconds(secs);
            let n = c.next_after(after).unwrap();
            prop_assert!(n > after);
            prop_assert!(n.hour() == hour && n.minute() >= minute && (n.minute() - minute) % step == 0);
            let mut t = after.with_second(0).unwrap().with_nanosecond(0).unwrap() + Duration::minutes(1);
            while t < n {
                prop_assert!(!(t.hour() == hour && t.minute() >= minute && (t.minute() - minute) % step == 0), "{t} matches before {n}");
                t += Duration::minutes(1);
            }
        }

        /// A rate's next run is after the time, on the anchor's grid, within one period.
        #[test]
        fn rate_next_is_on_the_grid(n in 1i64..500, secs in 0i64..(400 * 86_400)) {
            let expr = if n == 1 { "rate(1 minute)".to_string() } else { format!("rate({n} minutes)") };
            let s = Schedule::parse(&expr).unwrap();
            let anchor = at("2026-01-01T00:00:00Z");
            let after = anchor + Duration::seconds(secs);
            let next = s.next_after(after, anchor).unwrap();
            prop_assert!(next > after && next - after <= Duration::minutes(n));
            prop_assert_eq!((next - anchor).num_seconds() % (n * 60), 0);
        }
    }
}
