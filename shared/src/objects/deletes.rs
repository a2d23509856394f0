//! Guarded deletes (`--delete`): destination objects missing at the source are removed,
//! or moved to the backup prefix (`--backup-prefix`), once every copy of the run has
//! succeeded, and only when there are no more of them than `--max-delete` allows.
//!
//! The listing finds the candidates as it merges; they are spilled to a temporary file
//! (one JSON line each), so memory does not grow with the number of deletes. The pure
//! parts — [`MaxDelete`] and [`BackupPrefix`] — decide; [`super::run`] acts.

use super::diff::Entry;
use std::io::{BufRead, BufReader, BufWriter, Seek, Write};

/// `--max-delete`: the most objects one delete step may remove, as a count or as a
/// percentage of the destination's objects in scope (within the prefix and the filters).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxDelete {
    Count(u64),
    Percent(f64),
}

impl MaxDelete {
    /// `N` or `P%` (0 ≤ P ≤ 100; decimals allowed, `0.5%`).
    pub fn parse(value: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "--max-delete {value:?}: {why}; expected a count (100) or a percentage of the destination's objects in scope from 0% to 100% (10%)"
            )
        };
        let v = value.trim();
        if let Some(p) = v.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad("not a number"))?;
            if !p.is_finite() || !(0.0..=100.0).contains(&p) {
                return Err(bad("a percentage must lie between 0% and 100%"));
            }
            return Ok(Self::Percent(p));
        }
        if v.starts_with('-') {
            return Err(bad("a count cannot be negative"));
        }
        v.parse().map(Self::Count).map_err(|_| bad("not a count"))
    }

    /// The most objects a delete step may remove when `scope` destination objects are in
    /// scope (a percentage rounds down).
    pub fn limit(&self, scope: u64) -> u64 {
        match *self {
            Self::Count(n) => n,
            Self::Percent(p) => ((scope as f64) * p / 100.0).floor() as u64,
        }
    }
}

impl std::fmt::Display for MaxDelete {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Count(n) => write!(f, "{n}"),
            Self::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Why a delete step did not run, or `None` when it may: a run that was stopped or had a
/// copy fail deletes nothing (a destination object may be missing at the source only
/// because its listing or copy went wrong), nor does one over its `--max-delete`.
pub fn refusal(
    candidates: u64,
    scope: u64,
    failed: u64,
    stopped: bool,
    max: Option<MaxDelete>,
) -> Option<String> {
    if candidates == 0 {
        return None;
    }
    if stopped {
        return Some(format!(
            "not deleting {candidates} object(s) missing at the source: the run was interrupted"
        ));
    }
    if failed > 0 {
        return Some(format!(
            "not deleting {candidates} object(s) missing at the source: {failed} object(s) failed to copy"
        ));
    }
    let max = max?;
    let limit = max.limit(scope);
    (candidates > limit).then(|| {
        format!(
            "refusing to delete {candidates} object(s) missing at the source (of {scope} destination object(s) in scope): --max-delete {max} allows at most {limit}; nothing was deleted"
        )
    })
}

/// `--backup-prefix`: a key prefix in the destination bucket (from its root) that
/// deleted and overwritten objects are moved to, keeping their key relative to the
/// destination prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupPrefix(pub String);

impl BackupPrefix {
    /// Checks the prefix against the destination's: it may lie inside the synced prefix
    /// (it is then left out of the sync), but the destination must not lie under it, or
    /// backups would land on the objects being synced.
    pub fn parse(value: &str, dest_prefix: &str) -> Result<Self, String> {
        let expected = "expected a key prefix in the destination bucket, such as .trash/, that the destination prefix does not lie under";
        if value.is_empty() {
            return Err(format!(
                "--backup-prefix {value:?}: empty (the whole bucket); {expected}"
            ));
        }
        if value.starts_with('/') {
            return Err(format!(
                "--backup-prefix {value:?}: starts with '/' (keys have no leading slash); {expected}"
            ));
        }
        if dest_prefix.starts_with(value) {
            return Err(format!(
                "--backup-prefix {value:?}: the destination prefix {dest_prefix:?} lies under it; {expected}"
            ));
        }
        Ok(Self(value.to_string()))
    }

    /// Whether a destination key (from the bucket's root) lies under the backup prefix.
    pub fn holds(&self, key: &str) -> bool {
        key.starts_with(&self.0)
    }
}

/// The delete candidates of one listing: destination objects missing at the source,
/// spilled to a temporary file, keys relative to the run's destination prefix.
#[derive(Default)]
pub struct Candidates {
    file: Option<BufWriter<std::fs::File>>,
    pub count: u64,
    /// Destination objects in scope: what `--max-delete P%` is a percentage of.
    pub scope: u64,
}

impl Candidates {
    /// Adds one candidate; `base` (a prefix of the prefix list) is put before its key.
    pub fn push(
        &mut self,
        base: &str,
        e: &Entry,
        dir: &std::path::Path,
    ) -> Result<(), std::io::Error> {
        if self.file.is_none() {
            self.file = Some(BufWriter::new(tempfile::tempfile_in(dir)?));
        }
        let mut e = e.clone();
        e.key = format!("{base}{}", e.key);
        let w = self.file.as_mut().expect("opened above");
        serde_json::to_writer(&mut *w, &e)?;
        w.write_all(b"\n")?;
        self.count += 1;
        Ok(())
    }

    /// Takes in another listing's candidates (a prefix of the prefix list).
    pub fn absorb(&mut self, other: Candidates, into: &mut Vec<Candidates>) {
        self.scope += other.scope;
        self.count += other.count;
        into.push(Candidates {
            scope: 0,
            count: 0,
            ..other
        });
    }

    /// The candidates, read back in the order they were found.
    pub fn read(
        self,
    ) -> Result<impl Iterator<Item = Result<Entry, std::io::Error>>, std::io::Error> {
        let lines = match self.file {
            None => None,
            Some(w) => {
                let mut f = w.into_inner().map_err(|e| e.into_error())?;
                f.rewind()?;
                Some(BufReader::new(f).lines())
            }
        };
        Ok(lines.into_iter().flatten().map(|l| {
            let l = l?;
            serde_json::from_str(&l).map_err(std::io::Error::from)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn max_delete_reads_counts_and_percentages() {
        assert_eq!(MaxDelete::parse("100"), Ok(MaxDelete::Count(100)));
        assert_eq!(MaxDelete::parse("0"), Ok(MaxDelete::Count(0)));
        assert_eq!(MaxDelete::parse("10%"), Ok(MaxDelete::Percent(10.0)));
        assert_eq!(MaxDelete::parse("0.5%"), Ok(MaxDelete::Percent(0.5)));
        assert_eq!(MaxDelete::parse("100%"), Ok(MaxDelete::Percent(100.0)));
        for bad in ["150%", "-1", "-5%", "ten", "", "%", "1e400%", "NaN%", "5x"] {
            let e = MaxDelete::parse(bad).unwrap_err();
            assert!(
                e.contains("--max-delete") && e.contains(&format!("{bad:?}")),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_percentage_rounds_down_and_a_count_is_itself() {
        assert_eq!(MaxDelete::Percent(10.0).limit(95), 9);
        assert_eq!(MaxDelete::Percent(50.0).limit(0), 0);
        assert_eq!(MaxDelete::Percent(100.0).limit(7), 7);
        assert_eq!(MaxDelete::Count(3).limit(1_000), 3);
    }

    #[test]
    fn deletes_wait_for_a_clean_run_and_stay_within_the_limit() {
        let max = Some(MaxDelete::Count(2));
        assert_eq!(refusal(0, 10, 5, true, max), None);
        assert_eq!(refusal(2, 10, 0, false, max), None);
        assert_eq!(refusal(2, 10, 0, false, None), None);
        let over = refusal(3, 10, 0, false, max).unwrap();
        assert!(
            over.contains("refusing to delete 3")
                && over.contains("of 10")
                && over.contains("at most 2"),
            "{over}"
        );
        let failed = refusal(1, 10, 4, false, None).unwrap();
        assert!(failed.contains("4 object(s) failed"), "{failed}");
        assert!(
            refusal(1, 10, 0, true, None)
                .unwrap()
                .contains("interrupted")
        );
    }

    #[test]
    fn a_backup_prefix_may_not_hold_the_destination() {
        assert!(BackupPrefix::parse(".trash/", "").is_ok());
        assert!(BackupPrefix::parse("data/.trash/", "data/").is_ok());
        assert!(BackupPrefix::parse("old/", "data/").is_ok());
        for (bad, dest) in [("", ""), ("data/", "data/"), ("da", "data/x/"), ("/t/", "")] {
            let e = BackupPrefix::parse(bad, dest).unwrap_err();
            assert!(
                e.contains("--backup-prefix") && e.contains(&format!("{bad:?}")),
                "{e}"
            );
        }
        let b = BackupPrefix::parse("data/.trash/", "data/").unwrap();
        assert!(b.holds("data/.trash/a") && !b.holds("data/a"));
    }

    #[test]
    fn candidates_come_back_as_written_keys_with_newlines_included() {
        let dir = std::env::temp_dir();
        let mut c = Candidates::default();
        let e = |k: &str| Entry {
            archived: false,
            key: k.into(),
            size: 3,
            etag: Some("e".into()),
            checksum: None,
            modified: None,
        };
        c.push("p/", &e("a\nb"), &dir).unwrap();
        c.push("p/", &e("z"), &dir).unwrap();
        assert_eq!(c.count, 2);
        let back: Vec<Entry> = c.read().unwrap().map(Result::unwrap).collect();
        assert_eq!(back, vec![e("p/a\nb"), e("p/z")]);
        assert_eq!(Candidates::default().read().unwrap().count(), 0);
    }

    proptest! {
        #[test]
        fn the_limit_never_exceeds_the_scope_for_a_percentage(p in 0.0f64..=100.0, scope in 0u64..1_000_000) {
            let l = MaxDelete::Percent(p).limit(scope);
            prop_assert!(l <= scope);
            // Within the limit is never refused; one over always is.
            prop_assert_eq!(refusal(l, scope, 0, false, Some(MaxDelete::Percent(p))), None);
            if l < scope {
                prop_assert!(refusal(l + 1, scope, 0, false, Some(MaxDelete::Percent(p))).is_some());
            }
        }
    }
}
