//! What to copy: include/exclude globs, size and age bounds. Pure: a [`Filter`] is built
//! once from the user's rules and then asked about each listed object.
//!
//! Globs follow rclone's subset: `*` matches within a path segment (never `/`), `**`
//! across segments, `?` one character other than `/`, `{a,b}` one of the alternatives,
//! `[abc]`, `[a-z]`, `[!a-z]` (or `[^a-z]`) one character of a class, `\x` the character
//! `x`. As in rclone, a glob that starts with `/` is anchored at the prefix (the key
//! relative to the sync's prefix must match as a whole); any other glob matches a whole
//! key or the end of it from a segment boundary, so `*.jpg` matches `a.jpg` and
//! `photos/2024/b.jpg`, and `2024/*` matches `2024/x` and `photos/2024/x`.
//!
//! Rules are asked in the order given; the first glob that matches decides (an include
//! lets the object through, an exclude leaves it out). When none matches, the object is
//! left out if any rule is an include, else let through. Size and age bounds apply on
//! top: an object must pass them all.

use chrono::{DateTime, Utc};
use std::fmt;

/// A glob that does not parse: the text and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pattern:?} is not a glob: {problem}")]
pub struct GlobError {
    pub pattern: String,
    pub problem: String,
}

/// One matchable unit of a compiled glob.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(char),
    /// `?`: one character other than `/`.
    One,
    /// `*`: any run of characters other than `/`.
    Star,
    /// `**`: any run of characters.
    Stars,
    /// `[...]`: ranges (inclusive), negated or not; never `/`.
    Class {
        neg: bool,
        ranges: Vec<(char, char)>,
    },
}

/// Alternatives from `{a,b}` are expanded; beyond this many a glob is refused (memory and
/// matching time stay small whatever the user writes).
const MAX_ALTERNATIVES: usize = 256;
/// The longest glob accepted (S3 keys are at most 1,024 bytes).
const MAX_GLOB: usize = 4096;

/// A compiled glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    text: String,
    anchored: bool,
    /// One token list per alternative of the braces.
    alts: Vec<Vec<Tok>>,
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Glob {
    pub fn parse(pattern: &str) -> Result<Self, GlobError> {
        let bad = |problem: &str| GlobError {
            pattern: pattern.to_string(),
            problem: problem.to_string(),
        };
        if pattern.is_empty() {
            return Err(bad("it is empty"));
        }
        if pattern.len() > MAX_GLOB {
            return Err(bad("it is longer than 4096 bytes"));
        }
        let (anchored, body) = match pattern.strip_prefix('/') {
            Some(rest) => (true, rest),
            None => (false, pattern),
        };
        // Alternatives: a list of sequences, multiplied out brace group by brace group.
        let mut alts: Vec<Vec<Tok>> = vec![vec![]];
        let chars: Vec<char> = body.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            if chars[i] == '{' {
                let mut group: Vec<Vec<Tok>> = vec![vec![]];
                i += 1;
                let mut closed = false;
                while i < chars.len() {
                    match chars[i] {
                        '}' => {
                            closed = true;
                            i += 1;
                            break;
                        }
                        ',' => {
                            group.push(vec![]);
                            i += 1;
                        }
                        '{' => return Err(bad("'{' inside '{…}' (braces do not nest)")),
                        _ => {
                            let (tok, next) = token(&chars, i).map_err(bad)?;
                            push(group.last_mut().expect("one alternative"), tok);
                            i = next;
                        }
                    }
                }
                if !closed {
                    return Err(bad("'{' is never closed with '}'"));
                }
                if alts.len() * group.len() > MAX_ALTERNATIVES {
                    return Err(bad(
                        "more than 256 alternatives once its braces are expanded",
                    ));
                }
                alts = alts
                    .iter()
                    .flat_map(|a| {
                        group.iter().map(move |g| {
                            let mut v = a.clone();
                            for t in g {
                                push(&mut v, t.clone());
                            }
                            v
                        })
                    })
                    .collect();
            } else if chars[i] == '}' {
                return Err(bad("'}' without a '{' before it"));
            } else {
                let (tok, next) = token(&chars, i).map_err(bad)?;
                for a in &mut alts {
                    push(a, tok.clone());
                }
                i = next;
            }
        }
        Ok(Self {
            text: pattern.to_string(),
            anchored,
            alts,
        })
    }

    /// Whether `key` (relative to the sync's prefix) matches.
    pub fn matches(&self, key: &str) -> bool {
        let text: Vec<char> = key.chars().collect();
        self.alts.iter().any(|toks| {
            if self.anchored {
                run(toks, &text)
            } else {
                // A whole key, or its end from just after any '/'.
                std::iter::once(0)
                    .chain(
                        text.iter()
                            .enumerate()
                            .filter(|(_, c)| **c == '/')
                            .map(|(i, _)| i + 1),
                    )
                    .any(|start| run(toks, &text[start..]))
            }
        })
    }
}

/// Appends a token, folding `*` next to `**` (both mean "anything" then).
fn push(v: &mut Vec<Tok>, t: Tok) {
    match (v.last(), &t) {
        (Some(Tok::Stars), Tok::Star | Tok::Stars) => {}
        (Some(Tok::Star), Tok::Stars) => {
            v.pop();
            v.push(Tok::Stars);
        }
        _ => v.push(t),
    }
}

/// The token at `i` and the index after it.
fn token(chars: &[char], i: usize) -> Result<(Tok, usize), &'static str> {
    Ok(match chars[i] {
        '*' if chars.get(i + 1) == Some(&'*') => (Tok::Stars, i + 2),
        '*' => (Tok::Star, i + 1),
        '?' => (Tok::One, i + 1),
        '\\' => match chars.get(i + 1) {
            Some(c) => (Tok::Lit(*c), i + 2),
            None => return Err("it ends with a lone '\\'"),
        },
        '[' => {
            let mut j = i + 1;
            let neg = matches!(chars.get(j), Some('!' | '^'));
            if neg {
                j += 1;
            }
            let mut ranges = Vec::new();
            let mut first = true;
            loop {
                let Some(&c) = chars.get(j) else {
                    return Err("'[' is never closed with ']'");
                };
                if c == ']' && !first {
                    j += 1;
                    break;
                }
                first = false;
                let lo = if c == '\\' {
                    j += 1;
                    *chars.get(j).ok_or("it ends with a lone '\\'")?
                } else {
                    c
                };
                j += 1;
                if chars.get(j) == Some(&'-') && chars.get(j + 1).is_some_and(|c| *c != ']') {
                    let mut hi = chars[j + 1];
                    j += 2;
                    if hi == '\\' {
                        hi = *chars.get(j).ok_or("it ends with a lone '\\'")?;
                        j += 1;
                    }
                    if hi < lo {
                        return Err("a range in '[…]' goes backwards");
                    }
                    ranges.push((lo, hi));
                } else {
                    ranges.push((lo, lo));
                }
            }
            (Tok::Class { neg, ranges }, j)
        }
        c => (Tok::Lit(c), i + 1),
    })
}

/// Runs the tokens as an NFA over `text` (every state at once): time is the product of
/// the two lengths, whatever the pattern, never exponential.
fn run(toks: &[Tok], text: &[char]) -> bool {
    let n = toks.len();
    let mut now = vec![false; n + 1];
    let mut next = vec![false; n + 1];
    now[0] = true;
    close(toks, &mut now);
    for &c in text {
        next.iter_mut().for_each(|x| *x = false);
        let mut any = false;
        for i in 0..n {
            if !now[i] {
                continue;
            }
            let (stay, advance) = match &toks[i] {
                Tok::Lit(x) => (false, *x == c),
                Tok::One => (false, c != '/'),
                Tok::Star => (c != '/', false),
                Tok::Stars => (true, false),
                Tok::Class { neg, ranges } => {
                    let inside = ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c));
                    (false, c != '/' && inside != *neg)
                }
            };
            if stay {
                next[i] = true;
                any = true;
            }
            if advance {
                next[i + 1] = true;
                any = true;
            }
        }
        if !any {
            return false;
        }
        close(toks, &mut next);
        std::mem::swap(&mut now, &mut next);
    }
    now[n]
}

/// Stars match nothing too: a state before one reaches the state after it.
fn close(toks: &[Tok], set: &mut [bool]) {
    for i in 0..toks.len() {
        if set[i] && matches!(toks[i], Tok::Star | Tok::Stars) {
            set[i + 1] = true;
        }
    }
}

/// One include or exclude rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub include: bool,
    pub glob: Glob,
}

impl Rule {
    /// A rule as rclone's `--filter` writes it: `+ GLOB` (include) or `- GLOB` (exclude);
    /// this is how rules are kept in a task, in order.
    pub fn parse(line: &str) -> Result<Self, GlobError> {
        let (include, glob) = if let Some(g) = line.strip_prefix("+ ") {
            (true, g)
        } else if let Some(g) = line.strip_prefix("- ") {
            (false, g)
        } else {
            return Err(GlobError {
                pattern: line.to_string(),
                problem: "expected \"+ GLOB\" (include) or \"- GLOB\" (exclude)".into(),
            });
        };
        Ok(Self {
            include,
            glob: Glob::parse(glob)?,
        })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", if self.include { '+' } else { '-' }, self.glob)
    }
}

/// What the user chose to copy. The default lets everything through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub rules: Vec<Rule>,
    /// Objects smaller than this are left out (`--min-size`).
    pub min_size: Option<u64>,
    /// Objects larger than this are left out (`--max-size`).
    pub max_size: Option<u64>,
    /// Objects last modified before this are left out (`--max-age`, from the run's start).
    pub modified_after: Option<DateTime<Utc>>,
    /// Objects last modified after this are left out (`--min-age`).
    pub modified_before: Option<DateTime<Utc>>,
}

impl Filter {
    /// Whether the filter lets everything through (no rule, no bound).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Age bounds measured back from `now`.
    pub fn with_ages(
        mut self,
        now: DateTime<Utc>,
        max_age: Option<std::time::Duration>,
        min_age: Option<std::time::Duration>,
    ) -> Self {
        let back = |d: std::time::Duration| {
            chrono::Duration::from_std(d)
                .ok()
                .and_then(|d| now.checked_sub_signed(d))
                .unwrap_or(DateTime::<Utc>::MIN_UTC)
        };
        self.modified_after = max_age.map(back);
        self.modified_before = min_age.map(back);
        self
    }

    /// Whether the include/exclude rules let this key (relative to the prefix) through;
    /// sizes and ages aside (a delete event, which names a key only).
    pub fn admits_key(&self, key: &str) -> bool {
        match self.rules.iter().find(|r| r.glob.matches(key)) {
            Some(r) => r.include,
            None => !self.rules.iter().any(|r| r.include),
        }
    }

    /// Rules from one text: `+ GLOB` or `- GLOB`, separated by newlines or by `;` (write
    /// `\;` for a `;` in a glob). Blank rules are skipped. How the AWS suite's `FILTERS`
    /// reads (a stack parameter is one line).
    pub fn parse_rules(text: &str) -> Result<Vec<Rule>, GlobError> {
        let mut rules = Vec::new();
        let mut cur = String::new();
        let mut chars = text.chars().peekable();
        let mut flush = |cur: &mut String| -> Result<(), GlobError> {
            let r = cur.trim();
            if !r.is_empty() {
                rules.push(Rule::parse(r)?);
            }
            cur.clear();
            Ok(())
        };
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    cur.push(c);
                    if let Some(n) = chars.next() {
                        cur.push(n);
                    }
                }
                ';' | '\n' => flush(&mut cur)?,
                c => cur.push(c),
            }
        }
        flush(&mut cur)?;
        Ok(rules)
    }

    /// Whether the object with this key (relative to the prefix), size and LastModified
    /// is to be copied. An object without a LastModified passes the age bounds.
    pub fn admits(&self, key: &str, size: u64, modified: Option<DateTime<Utc>>) -> bool {
        if self.min_size.is_some_and(|m| size < m) || self.max_size.is_some_and(|m| size > m) {
            return false;
        }
        if let Some(t) = modified
            && (self.modified_after.is_some_and(|a| t < a)
                || self.modified_before.is_some_and(|b| t > b))
        {
            return false;
        }
        self.admits_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn g(p: &str) -> Glob {
        Glob::parse(p).unwrap()
    }

    #[test]
    fn star_stays_in_a_segment_and_double_star_crosses() {
        assert!(g("/*.jpg").matches("a.jpg"));
        assert!(!g("/*.jpg").matches("dir/a.jpg"));
        assert!(g("/**.jpg").matches("dir/sub/a.jpg"));
        assert!(g("/logs/**").matches("logs/2024/01/x.gz"));
        assert!(!g("/logs/**").matches("logsx/a"));
        assert!(!g("/logs/*").matches("logs/2024/x"));
        assert!(g("/logs/*").matches("logs/x"));
    }

    #[test]
    fn unanchored_globs_match_the_end_of_a_key_from_a_segment_boundary() {
        assert!(g("*.jpg").matches("a.jpg"));
        assert!(g("*.jpg").matches("photos/2024/b.jpg"));
        assert!(g("2024/*").matches("photos/2024/x"));
        assert!(!g("2024/*").matches("photos/x2024/x"));
        assert!(!g("b.jpg").matches("photos/ab.jpg"));
        assert!(g("b.jpg").matches("photos/b.jpg"));
    }

    #[test]
    fn question_marks_classes_braces_and_escapes() {
        assert!(g("/a?c").matches("abc"));
        assert!(!g("/a?c").matches("a/c"));
        assert!(g("/[a-c]x").matches("bx"));
        assert!(!g("/[a-c]x").matches("dx"));
        assert!(g("/[!a-c]x").matches("dx"));
        assert!(g("/[^a-c]x").matches("dx"));
        assert!(!g("/[!a-c]x").matches("/x"));
        assert!(g("/[]]").matches("]"));
        assert!(g("/*.{jpg,png}").matches("a.png"));
        assert!(!g("/*.{jpg,png}").matches("a.gif"));
        assert!(g("/{a/**,b}").matches("a/x/y"));
        assert!(g("/{,x}y").matches("y"));
        assert!(g("/a\\*").matches("a*"));
        assert!(!g("/a\\*").matches("ab"));
        assert!(g("/é*").matches("été"));
    }

    #[test]
    fn bad_globs_say_what_is_wrong() {
        for (p, want) in [
            ("[abc", "never closed"),
            ("{a,b", "never closed"),
            ("a}", "without a '{'"),
            ("{a,{b}}", "do not nest"),
            ("a\\", "lone"),
            ("[z-a]", "backwards"),
            ("", "empty"),
            (
                "{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}",
                "alternatives",
            ),
        ] {
            let e = Glob::parse(p).unwrap_err();
            assert!(e.to_string().contains(want), "{p}: {e}");
            assert_eq!(e.pattern, p);
        }
    }

    #[test]
    fn patterns_that_backtrack_badly_elsewhere_stay_fast() {
        let p = g("/*a*a*a*a*a*a*a*a*a*a*b");
        let key = "a".repeat(1024);
        assert!(!p.matches(&key));
    }

    fn rules(spec: &[(bool, &str)]) -> Filter {
        Filter {
            rules: spec
                .iter()
                .map(|(i, p)| Rule {
                    include: *i,
                    glob: g(p),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_first_matching_rule_decides_and_an_include_list_leaves_the_rest_out() {
        let f = rules(&[(false, "*.tmp"), (true, "*.log"), (true, "/keep/**")]);
        assert!(f.admits("a.log", 1, None));
        assert!(f.admits("keep/x.bin", 1, None));
        assert!(!f.admits("keep/x.tmp", 1, None), "the exclude comes first");
        assert!(
            !f.admits("other.bin", 1, None),
            "no rule matched an include list"
        );
        let only_excludes = rules(&[(false, "*.tmp")]);
        assert!(only_excludes.admits("other.bin", 1, None));
        assert!(!only_excludes.admits("a/b.tmp", 1, None));
        assert!(Filter::default().admits("anything", 0, None));
    }

    #[test]
    fn sizes_and_ages_bound_what_passes() {
        let now = Utc::now();
        let day = std::time::Duration::from_secs(86_400);
        let f = Filter {
            min_size: Some(10),
            max_size: Some(100),
            ..Default::default()
        }
        .with_ages(now, Some(7 * day), Some(day));
        let at = |days: i64| Some(now - chrono::Duration::days(days));
        assert!(f.admits("k", 10, at(3)));
        assert!(f.admits("k", 100, at(3)));
        assert!(!f.admits("k", 9, at(3)));
        assert!(!f.admits("k", 101, at(3)));
        assert!(!f.admits("k", 50, at(8)), "older than --max-age");
        assert!(!f.admits("k", 50, at(0)), "younger than --min-age");
        assert!(f.admits("k", 50, None));
    }

    #[test]
    fn a_one_line_list_of_rules_splits_on_semicolons_and_newlines() {
        let r = Filter::parse_rules("+ *.jpg; - /tmp/**\n+ a\\;b ;").unwrap();
        let texts: Vec<String> = r.iter().map(|r| r.to_string()).collect();
        assert_eq!(texts, vec!["+ *.jpg", "- /tmp/**", "+ a\\;b"]);
        assert!(r[2].glob.matches("a;b"));
        assert!(Filter::parse_rules("").unwrap().is_empty());
        assert!(Filter::parse_rules("+ [x").is_err());
    }

    #[test]
    fn rules_read_back_as_written() {
        for line in ["+ *.jpg", "- /tmp/**"] {
            assert_eq!(Rule::parse(line).unwrap().to_string(), line);
        }
        assert!(Rule::parse("* x").is_err());
    }

    /// A slow, obviously right matcher for globs without braces or classes.
    fn model(p: &[char], s: &[char]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some('*') if p.get(1) == Some(&'*') => (0..=s.len()).any(|i| model(&p[2..], &s[i..])),
            Some('*') => (0..=s.len())
                .take_while(|i| s[..*i].iter().all(|c| *c != '/'))
                .any(|i| model(&p[1..], &s[i..])),
            Some('?') => s.first().is_some_and(|c| *c != '/') && model(&p[1..], &s[1..]),
            Some(c) => s.first() == Some(c) && model(&p[1..], &s[1..]),
        }
    }

    proptest! {
        /// The NFA agrees with the model on anchored globs of `*`, `**`, `?` and letters.
        #[test]
        fn matching_agrees_with_the_model(p in "[ab/*?]{0,8}", s in "[ab/]{0,10}") {
            prop_assume!(!p.is_empty());
            let pat = format!("/{p}");
            let chars: Vec<char> = p.chars().collect();
            let text: Vec<char> = s.chars().collect();
            prop_assert_eq!(g(&pat).matches(&s), model(&chars, &text), "{} on {}", pat, s);
        }

        /// An unanchored glob matches exactly when its anchored form matches the key or a
        /// suffix of it after a '/'.
        #[test]
        fn unanchored_is_anchored_at_any_segment(p in "[ab*?]{1,5}", s in "[ab/]{0,10}") {
            let suffixes = std::iter::once(s.as_str()).chain(s.match_indices('/').map(|(i, _)| &s[i + 1..]));
            let anchored = g(&format!("/{p}"));
            let want = suffixes.clone().any(|x| anchored.matches(x));
            prop_assert_eq!(g(&p).matches(&s), want);
        }

        /// Braces mean the same as the alternatives written out.
        #[test]
        fn braces_are_their_alternatives(a in "[ab*]{0,3}", b in "[ab*]{0,3}", s in "[ab/]{0,6}") {
            let both = g(&format!("/x{{{a},{b}}}y"));
            let one = |alt: &str| g(&format!("/x{alt}y")).matches(&s);
            prop_assert_eq!(both.matches(&s), one(&a) || one(&b));
        }

        /// A filter of one include or one exclude rule agrees with the glob.
        #[test]
        fn one_rule_filters_agree_with_the_glob(p in "[ab*/]{1,5}", s in "[ab/]{0,8}", include in any::<bool>()) {
            let f = rules(&[(include, &p)]);
            prop_assert_eq!(f.admits(&s, 0, None), g(&p).matches(&s) == include);
        }
    }
}
