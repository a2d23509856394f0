//! Selection lists in the original Data Transfer Hub format: image names separated by
//! commas or newlines, each `name`, `name:tag`, `name:ALL_TAGS`, `name@sha256:…` or
//! `name:tag@sha256:…`, optionally with their own registry host. Blank lines, stray
//! spaces and `#` comments are ignored. Pure: no IO.

use crate::images::reference::{Digest, ImageRef, ReferenceError, parse};
use std::collections::HashSet;

/// The tag word that asks for every tag of a repository.
pub const ALL_TAGS: &str = "ALL_TAGS";

/// Which versions of a repository a line selects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TagSpec {
    /// One tag (`latest` when the line has none).
    Tag(String),
    /// Every tag the source lists.
    AllTags,
    /// One manifest by digest; the tag, when written too, is applied at the destination.
    Digest { digest: Digest, tag: Option<String> },
}

/// One good entry of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 1-based line number where the entry was first seen.
    pub line: usize,
    /// The text as written (trimmed).
    pub text: String,
    /// Registry host named on the line itself, if any.
    pub registry: Option<String>,
    /// Repository path as written (Docker Hub's implied `library/` is not added).
    pub path: String,
    /// What to take from the repository.
    pub spec: TagSpec,
}

/// A line that could not be used, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {text:?}: {reason}")]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// The offending text.
    pub text: String,
    /// What is wrong and what is expected.
    pub reason: String,
}

/// The outcome of reading a list: the good entries (deduplicated, in first-seen order)
/// and every bad line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub entries: Vec<Entry>,
    pub errors: Vec<LineError>,
}

/// Reads a selection list. Never fails as a whole: bad items are collected in `errors`.
pub fn parse_list(text: &str) -> Selection {
    let mut out = Selection::default();
    let mut seen: HashSet<(Option<String>, String, TagSpec)> = HashSet::new();
    for (i, raw_line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw_line.split('#').next().unwrap_or("");
        for item in line.split(',') {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            match parse_entry(line_no, item) {
                Ok(e) => {
                    if seen.insert((e.registry.clone(), e.path.clone(), e.spec.clone())) {
                        out.entries.push(e);
                    }
                }
                Err(err) => out.errors.push(err),
            }
        }
    }
    // An ALL_TAGS line already covers the single tags of the same repository.
    let all: HashSet<(Option<String>, String)> = out
        .entries
        .iter()
        .filter(|e| e.spec == TagSpec::AllTags)
        .map(|e| (e.registry.clone(), e.path.clone()))
        .collect();
    out.entries.retain(|e| {
        !matches!(e.spec, TagSpec::Tag(_)) || !all.contains(&(e.registry.clone(), e.path.clone()))
    });
    out
}

fn parse_entry(line: usize, item: &str) -> Result<Entry, LineError> {
    let bad = |reason: String| LineError {
        line,
        text: item.to_string(),
        reason,
    };
    let r: ImageRef = parse(item).map_err(|e: ReferenceError| bad(e.reason))?;
    let spec = match (r.tag, r.digest) {
        (Some(t), Some(_)) if t == ALL_TAGS => {
            return Err(bad(format!(
                "{ALL_TAGS} cannot be combined with a digest; write either `name:{ALL_TAGS}` or `name@sha256:…`"
            )));
        }
        (Some(t), None) if t == ALL_TAGS => TagSpec::AllTags,
        (tag, Some(digest)) => TagSpec::Digest { digest, tag },
        (Some(t), None) => TagSpec::Tag(t),
        (None, None) => TagSpec::Tag("latest".into()),
    };
    Ok(Entry {
        line,
        text: item.to_string(),
        registry: r.domain,
        path: r.path,
        spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn reads_the_original_format_and_real_world_noise() {
        let text = format!(
            "ubuntu, nginx:1.25 ,\n\n  # a comment\nalpine:ALL_TAGS\nregistry.example.com:5000/team/app:1.2 # trailing\nquay.io/org/app\napp@{D}\napp:v1@{D}\n"
        );
        let s = parse_list(&text);
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        let got: Vec<(usize, Option<&str>, &str, &TagSpec)> = s
            .entries
            .iter()
            .map(|e| (e.line, e.registry.as_deref(), e.path.as_str(), &e.spec))
            .collect();
        let d: Digest = D.parse().unwrap();
        assert_eq!(
            got,
            vec![
                (1, None, "ubuntu", &TagSpec::Tag("latest".into())),
                (1, None, "nginx", &TagSpec::Tag("1.25".into())),
                (4, None, "alpine", &TagSpec::AllTags),
                (
                    5,
                    Some("registry.example.com:5000"),
                    "team/app",
                    &TagSpec::Tag("1.2".into())
                ),
                (
                    6,
                    Some("quay.io"),
                    "org/app",
                    &TagSpec::Tag("latest".into())
                ),
                (
                    7,
                    None,
                    "app",
                    &TagSpec::Digest {
                        digest: d.clone(),
                        tag: None
                    }
                ),
                (
                    8,
                    None,
                    "app",
                    &TagSpec::Digest {
                        digest: d,
                        tag: Some("v1".into())
                    }
                ),
            ]
        );
    }

    #[test]
    fn every_bad_line_is_reported_and_good_lines_stay() {
        let s =
            parse_list("good:1\nBad/Name\nalso-good\napp:ALL_TAGS@sha256:00\nx@sha256:12, y:1\n");
        assert_eq!(
            s.entries
                .iter()
                .map(|e| e.text.as_str())
                .collect::<Vec<_>>(),
            ["good:1", "also-good", "y:1"]
        );
        let lines: Vec<(usize, &str)> =
            s.errors.iter().map(|e| (e.line, e.text.as_str())).collect();
        assert_eq!(
            lines,
            [
                (2, "Bad/Name"),
                (4, "app:ALL_TAGS@sha256:00"),
                (5, "x@sha256:12")
            ]
        );
        assert!(
            s.errors[0]
                .to_string()
                .starts_with("line 2: \"Bad/Name\": ")
        );
    }

    #[test]
    fn duplicates_are_merged_and_all_tags_covers_single_tags() {
        let s = parse_list("a:1\na:1, a:1\nb\nb:latest\nc:1\nc:ALL_TAGS\nc:2\n");
        let texts: Vec<&str> = s.entries.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(texts, ["a:1", "b", "c:ALL_TAGS"]);
    }

    #[test]
    fn empty_and_comment_only_lists_select_nothing() {
        assert_eq!(parse_list(""), Selection::default());
        assert_eq!(
            parse_list("\n  \n# only a comment\n ,, \n"),
            Selection::default()
        );
    }
}
