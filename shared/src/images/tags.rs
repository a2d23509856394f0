//! Which tags of a listed repository are wanted: `--include-tags` / `--exclude-tags`
//! (regular expressions, anchored at both ends, repeatable), `--semver RANGE` and
//! `--newest N`. Pure.
//!
//! The rules apply to tags that come from a listing (`ALL_TAGS` lines and `--all-repos`);
//! a tag a selection line names itself is always wanted. In order: a tag is kept when it
//! matches at least one include rule (or none are given) and no exclude rule; then, with
//! `--semver`, when it is a semantic version (`MAJOR.MINOR.PATCH`, pre-release and build
//! allowed, an optional leading `v`) inside the range; then, with `--newest N`, the N
//! highest semantic versions of each repository are kept. Tags that are not semantic
//! versions never match a range, and `--newest` leaves them out (they have no order).
//! A range's pre-releases follow Cargo's rule: `>=1.2.0-rc.1` admits `1.2.0-rc.2`, and no
//! plain range admits a pre-release.

use regex::Regex;
use semver::{Version, VersionReq};

/// The tag rules of one sync.
#[derive(Debug, Clone, Default)]
pub struct TagRules {
    include: Vec<Regex>,
    exclude: Vec<Regex>,
    range: Option<VersionReq>,
    newest: Option<usize>,
}

/// The rules as written (flags, task fields, stack parameters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagRuleText {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub semver: Option<String>,
    pub newest: Option<usize>,
}

impl TagRuleText {
    /// Reads a list of patterns kept in one text (a task field, a stack parameter):
    /// separated by whitespace (a tag holds none, so a tag pattern needs none).
    pub fn split_patterns(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }
}

/// One rule that does not parse: the flag it came from, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag} {value:?}: {reason}")]
pub struct BadRule {
    pub flag: &'static str,
    pub value: String,
    pub reason: String,
}

/// Longest regular expression accepted, and the compiled size limit: a rule comes from a
/// user or a task, but a huge one must not take the process's memory.
const MAX_PATTERN: usize = 1024;
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Reads one `--include-tags`/`--exclude-tags` value: anchored at both ends.
pub fn parse_pattern(flag: &'static str, s: &str) -> Result<Regex, BadRule> {
    let bad = |reason: String| BadRule {
        flag,
        value: s.to_string(),
        reason,
    };
    if s.is_empty() {
        return Err(bad(
            "empty; expected a regular expression such as 'v1\\..*'".into(),
        ));
    }
    if s.len() > MAX_PATTERN {
        return Err(bad(format!("longer than {MAX_PATTERN} characters")));
    }
    regex::RegexBuilder::new(&format!("^(?:{s})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            // The regex crate's message spans lines (a caret under the pattern): keep its
            // last line, which says what is wrong.
            let msg = e.to_string();
            let last = msg
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            bad(format!(
                "not a regular expression ({}); expected e.g. 'v1\\..*'",
                last.trim().trim_start_matches("error: ")
            ))
        })
}

/// Reads a `--semver` range, e.g. `>=1.20, <2`.
pub fn parse_range(s: &str) -> Result<VersionReq, BadRule> {
    VersionReq::parse(s).map_err(|e| BadRule {
        flag: "--semver",
        value: s.to_string(),
        reason: format!("not a semver range ({e}); expected e.g. '>=1.20, <2'"),
    })
}

/// A tag as a semantic version: `1.2.3`, `v1.2.3`, `1.2.3-rc.1`; anything else is none.
pub fn version_of(tag: &str) -> Option<Version> {
    Version::parse(tag.strip_prefix('v').unwrap_or(tag)).ok()
}

impl TagRules {
    /// Every bad rule at once.
    pub fn parse(text: &TagRuleText) -> Result<Self, Vec<BadRule>> {
        let mut errors = Vec::new();
        let mut compile = |flag, list: &[String]| {
            list.iter()
                .filter_map(|p| parse_pattern(flag, p).map_err(|e| errors.push(e)).ok())
                .collect::<Vec<_>>()
        };
        let include = compile("--include-tags", &text.include);
        let exclude = compile("--exclude-tags", &text.exclude);
        let range = match text.semver.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(s) => parse_range(s).map_err(|e| errors.push(e)).ok(),
        };
        if text.newest == Some(0) {
            errors.push(BadRule {
                flag: "--newest",
                value: "0".into(),
                reason: "expected a number of tags of at least 1".into(),
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            include,
            exclude,
            range,
            newest: text.newest,
        })
    }

    /// True when no rule is set: every listed tag is wanted.
    pub fn is_empty(&self) -> bool {
        self.include.is_empty()
            && self.exclude.is_empty()
            && self.range.is_none()
            && self.newest.is_none()
    }

    /// Whether one tag passes the include, exclude and range rules (not `--newest`, which
    /// needs the repository's other tags).
    pub fn admits(&self, tag: &str) -> bool {
        self.judge(tag).is_ok()
    }

    /// [`Self::admits`], with the rule that leaves the tag out.
    pub fn judge(&self, tag: &str) -> Result<(), LeftOut> {
        if !self.include.is_empty() && !self.include.iter().any(|r| r.is_match(tag)) {
            return Err(LeftOut::NotIncluded);
        }
        if let Some(r) = self.exclude.iter().find(|r| r.is_match(tag)) {
            return Err(LeftOut::Excluded(as_written(r)));
        }
        match &self.range {
            None => Ok(()),
            Some(req) => match version_of(tag) {
                None => Err(LeftOut::NotSemver),
                Some(v) if req.matches(&v) => Ok(()),
                Some(_) => Err(LeftOut::OutOfRange(req.to_string())),
            },
        }
    }

    /// The wanted tags of one repository's listing, in the listing's order; the count of
    /// tags left out comes second.
    pub fn select(&self, tags: &[String]) -> (Vec<String>, usize) {
        let (kept, left) = self.select_why(tags);
        (kept, left.len())
    }

    /// [`Self::select`], with each tag left out and the rule that did it, in the listing's
    /// order.
    pub fn select_why(&self, tags: &[String]) -> (Vec<String>, Vec<(String, LeftOut)>) {
        let mut left: Vec<(String, LeftOut)> = Vec::new();
        let mut kept: Vec<&String> = Vec::new();
        for t in tags {
            match self.judge(t) {
                Ok(()) => kept.push(t),
                Err(why) => left.push((t.clone(), why)),
            }
        }
        if let Some(n) = self.newest {
            let mut versions: Vec<(Version, &String)> = kept
                .iter()
                .filter_map(|t| version_of(t).map(|v| (v, *t)))
                .collect();
            // Highest first; `v1.2.3` and `1.2.3` are the same version: both are kept.
            versions.sort_by(|a, b| b.0.cmp(&a.0));
            let mut distinct: Vec<&Version> = Vec::new();
            for (v, _) in &versions {
                if distinct.last() != Some(&v) {
                    distinct.push(v);
                }
            }
            let floor = distinct
                .get(n.min(distinct.len()).saturating_sub(1))
                .copied();
            kept.retain(|t| {
                let newest = match (version_of(t), floor) {
                    (Some(v), Some(f)) => v >= *f,
                    _ => false,
                };
                if !newest {
                    left.push(((*t).clone(), LeftOut::NotNewest(n)));
                }
                newest
            });
            // In the listing's order, as the kept ones are.
            let at: std::collections::HashMap<&String, usize> =
                tags.iter().enumerate().map(|(i, t)| (t, i)).collect();
            left.sort_by_key(|(t, _)| at.get(t).copied());
        }
        (kept.into_iter().cloned().collect(), left)
    }

    /// The rules as one line, e.g. "--include-tags 'v1\..*', --newest 3" (`None` with none set).
    pub fn describe(&self) -> Option<String> {
        let mut parts: Vec<String> = Vec::new();
        parts.extend(
            self.include
                .iter()
                .map(|r| format!("--include-tags '{}'", as_written(r))),
        );
        parts.extend(
            self.exclude
                .iter()
                .map(|r| format!("--exclude-tags '{}'", as_written(r))),
        );
        if let Some(r) = &self.range {
            parts.push(format!("--semver '{r}'"));
        }
        if let Some(n) = self.newest {
            parts.push(format!("--newest {n}"));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

/// A pattern as it was written (without the anchors [`parse_pattern`] adds).
fn as_written(r: &Regex) -> String {
    let s = r.as_str();
    s.strip_prefix("^(?:")
        .and_then(|s| s.strip_suffix(")$"))
        .unwrap_or(s)
        .to_string()
}

/// Why the tag rules left a listed tag out (the plan says it for each such tag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeftOut {
    /// `--include-tags` is set and none of its patterns matches.
    NotIncluded,
    /// This `--exclude-tags` pattern (as written) matches.
    Excluded(String),
    /// `--semver` is set and the tag is not a semantic version.
    NotSemver,
    /// A semantic version outside this `--semver` range.
    OutOfRange(String),
    /// Not among the N highest versions (`--newest N`; a tag that is no version never is).
    NotNewest(usize),
}

impl std::fmt::Display for LeftOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeftOut::NotIncluded => write!(f, "matches no --include-tags pattern"),
            LeftOut::Excluded(p) => write!(f, "matches --exclude-tags '{p}'"),
            LeftOut::NotSemver => write!(f, "not a semantic version (--semver)"),
            LeftOut::OutOfRange(r) => write!(f, "outside --semver '{r}'"),
            LeftOut::NotNewest(n) => write!(f, "not among the {n} newest versions (--newest)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rules(
        include: &[&str],
        exclude: &[&str],
        semver: Option<&str>,
        newest: Option<usize>,
    ) -> TagRules {
        TagRules::parse(&TagRuleText {
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
            semver: semver.map(str::to_string),
            newest,
        })
        .unwrap()
    }

    fn tags(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn patterns_are_anchored_at_both_ends() {
        let r = rules(&["1\\.2.*"], &[], None, None);
        assert!(r.admits("1.2.3"));
        assert!(!r.admits("v1.2.3"), "anchored at the start");
        let r = rules(&["v1"], &[], None, None);
        assert!(!r.admits("v10"), "anchored at the end");
        // An alternation is anchored as a whole, not only its first branch.
        let r = rules(&["a|b"], &[], None, None);
        assert!(!r.admits("ab") && r.admits("b"));
    }

    #[test]
    fn any_include_admits_and_any_exclude_refuses() {
        let r = rules(
            &["v1\\..*", "latest"],
            &[".*-rc.*", "v1\\.0\\..*"],
            None,
            None,
        );
        let (kept, out) = r.select(&tags(&[
            "latest",
            "v1.0.1",
            "v1.2.0",
            "v1.3.0-rc1",
            "v2.0.0",
            "dev",
        ]));
        assert_eq!(kept, tags(&["latest", "v1.2.0"]));
        assert_eq!(out, 4);
    }

    #[test]
    fn a_range_admits_only_semantic_versions_inside_it() {
        let r = rules(&[], &[], Some(">=1.20, <2"), None);
        let (kept, out) = r.select(&tags(&[
            "1.19.9",
            "1.20.0",
            "v1.21.3",
            "1.25",
            "2.0.0",
            "latest",
            "1.22.0-rc.1",
        ]));
        // 1.25 is not MAJOR.MINOR.PATCH; a pre-release needs a range that names one.
        assert_eq!(kept, tags(&["1.20.0", "v1.21.3"]));
        assert_eq!(out, 5);
    }

    #[test]
    fn newest_keeps_the_highest_versions_of_what_the_other_rules_let_through() {
        let r = rules(&[], &["2\\..*"], None, Some(2));
        let (kept, out) = r.select(&tags(&[
            "1.0.0", "1.10.0", "1.9.0", "2.0.0", "latest", "v1.10.0",
        ]));
        // Semver order, not text order: 1.10.0 > 1.9.0; v1.10.0 is the same version.
        assert_eq!(kept, tags(&["1.10.0", "1.9.0", "v1.10.0"]));
        assert_eq!(out, 3);
    }

    #[test]
    fn newest_with_fewer_versions_than_asked_keeps_them_all() {
        let r = rules(&[], &[], None, Some(10));
        let (kept, _) = r.select(&tags(&["1.0.0", "main"]));
        assert_eq!(kept, tags(&["1.0.0"]));
        let (kept, out) = r.select(&tags(&["main"]));
        assert!(kept.is_empty());
        assert_eq!(out, 1);
    }

    #[test]
    fn every_bad_rule_is_named_with_its_flag_and_value() {
        let errs = TagRules::parse(&TagRuleText {
            include: vec!["(".into(), "ok".into()],
            exclude: vec!["[z-a]".into()],
            semver: Some(">=one".into()),
            newest: Some(0),
        })
        .unwrap_err();
        let flags: Vec<&str> = errs.iter().map(|e| e.flag).collect();
        assert_eq!(
            flags,
            ["--include-tags", "--exclude-tags", "--semver", "--newest"]
        );
        let text = errs[0].to_string();
        assert!(
            text.starts_with("--include-tags \"(\": not a regular expression"),
            "{text}"
        );
        assert!(!text.contains('\n'), "one line: {text}");
        assert!(errs[2].to_string().contains("'>=1.20, <2'"));
    }

    #[test]
    fn no_rules_keep_everything() {
        let r = TagRules::default();
        assert!(r.is_empty());
        let all = tags(&["a", "1.0.0", "latest"]);
        assert_eq!(r.select(&all), (all.clone(), 0));
    }

    proptest! {
        #[test]
        fn kept_tags_are_a_subsequence_and_the_counts_add_up(
            list in proptest::collection::vec("(v?[0-9]{1,2}\\.[0-9]{1,2}\\.[0-9]{1,2}|[a-z]{1,6})", 0..30),
            n in 1usize..5,
        ) {
            let r = rules(&["v?[0-9].*", "[a-m].*"], &["[0-9]\\.0\\..*"], Some(">=0.1, <50"), Some(n));
            let (kept, out) = r.select(&list);
            prop_assert_eq!(kept.len() + out, list.len());
            // In the listing's order, each one admitted by the single-tag rules.
            let mut it = list.iter();
            for k in &kept {
                prop_assert!(it.any(|t| t == k));
                prop_assert!(r.admits(k));
            }
            // At most n distinct versions.
            let mut vs: Vec<Version> = kept.iter().filter_map(|t| version_of(t)).collect();
            vs.sort();
            vs.dedup();
            prop_assert!(vs.len() <= n);
        }

        #[test]
        fn every_tag_is_kept_or_left_out_once_with_the_rule_that_did_it(
            list in proptest::collection::vec("(v?[0-9]{1,2}\\.[0-9]{1,2}\\.[0-9]{1,2}|[a-z]{1,6})", 0..30),
            n in 1usize..5,
        ) {
            let r = rules(&["v?[0-9].*", "[a-m].*"], &["[0-9]\\.0\\..*"], Some(">=0.1, <50"), Some(n));
            let (kept, left) = r.select_why(&list);
            prop_assert_eq!(&kept, &r.select(&list).0);
            let mut all: Vec<&String> = kept.iter().chain(left.iter().map(|(t, _)| t)).collect();
            let mut want: Vec<&String> = list.iter().collect();
            all.sort();
            want.sort();
            prop_assert_eq!(all, want);
            for (t, why) in &left {
                match why {
                    // Admitted one by one, then below the newest N.
                    LeftOut::NotNewest(m) => {
                        prop_assert!(r.admits(t));
                        prop_assert_eq!(*m, n);
                    }
                    other => prop_assert_eq!(r.judge(t), Err(other.clone())),
                }
            }
        }
    }
}
