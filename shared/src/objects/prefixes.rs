//! The original's prefix list (`--prefix-list FILE|s3://BUCKET/KEY`): one key prefix per
//! line, relative to the source's prefix. Blank lines and `#` comments are ignored, CRLF
//! line ends read as LF, spaces around a prefix are dropped. Pure: the caller reads the
//! file (at most [`MAX_PREFIX_LIST`] bytes) and hands the bytes here.

/// The largest prefix list read (a file or an S3 object), so no list can exhaust memory.
pub const MAX_PREFIX_LIST: u64 = 16 << 20;

/// The longest prefix accepted: S3's key limit.
const MAX_PREFIX: usize = 1024;

/// A line that is not a valid prefix, by number (from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    pub line: usize,
    pub problem: String,
}

impl std::fmt::Display for BadLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.problem)
    }
}

/// A prefix list that cannot be used: every bad line, or no prefix at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixListError {
    #[error("{}", .0.iter().map(|b| b.to_string()).collect::<Vec<_>>().join("; "))]
    BadLines(Vec<BadLine>),
    #[error("it names no prefix (only blank lines and # comments)")]
    Empty,
}

/// The prefixes of a list, sorted, without duplicates, and without any prefix that lies
/// inside another one of the list (its keys are that one's already): each prefix is
/// listed and diffed once.
pub fn parse(bytes: &[u8]) -> Result<Vec<String>, PrefixListError> {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let line = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Ok(text) = std::str::from_utf8(raw) else {
            bad.push(BadLine {
                line,
                problem: "not UTF-8 text".into(),
            });
            continue;
        };
        let p = text.trim();
        if p.is_empty() || p.starts_with('#') {
            continue;
        }
        let problem = if p.starts_with('/') {
            Some("starts with '/' (keys never do)".to_string())
        } else if p.len() > MAX_PREFIX {
            Some(format!("{} bytes long; S3 keys are at most 1024", p.len()))
        } else if p.chars().any(char::is_control) {
            Some(format!("{p:?} holds a control character"))
        } else {
            None
        };
        match problem {
            Some(problem) => bad.push(BadLine { line, problem }),
            None => out.push(p.to_string()),
        }
    }
    if !bad.is_empty() {
        return Err(PrefixListError::BadLines(bad));
    }
    out.sort();
    out.dedup();
    // Sorted, a prefix inside another comes right after it (or after one inside it).
    let mut kept: Vec<String> = Vec::with_capacity(out.len());
    for p in out {
        if kept.last().is_some_and(|k| p.starts_with(k.as_str())) {
            continue;
        }
        kept.push(p);
    }
    if kept.is_empty() {
        return Err(PrefixListError::Empty);
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn comments_blank_lines_and_crlf_are_read_right() {
        let text = b"# nightly\r\nlogs/2024/\r\n\r\n  images/ \r\n#x\nlogs/2023/";
        assert_eq!(
            parse(text).unwrap(),
            vec!["images/", "logs/2023/", "logs/2024/"]
        );
    }

    #[test]
    fn bad_lines_are_named_by_number() {
        let mut text = b"ok/\n/abs\n".to_vec();
        text.extend_from_slice(b"bad\x01ctl\n");
        text.extend_from_slice(&[0xff, b'\n']);
        text.extend_from_slice("x".repeat(1025).as_bytes());
        let e = parse(&text).unwrap_err();
        let PrefixListError::BadLines(lines) = &e else {
            panic!("{e}")
        };
        assert_eq!(
            lines.iter().map(|b| b.line).collect::<Vec<_>>(),
            vec![2, 3, 4, 5]
        );
        let msg = e.to_string();
        assert!(msg.contains("line 2: starts with '/'"), "{msg}");
        assert!(msg.contains("line 4: not UTF-8"), "{msg}");
    }

    #[test]
    fn a_list_of_nothing_is_refused() {
        assert_eq!(parse(b"# only\n\n").unwrap_err(), PrefixListError::Empty);
    }

    proptest! {
        /// Every key under a listed prefix is under exactly one kept prefix.
        #[test]
        fn kept_prefixes_cover_the_list_once(list in prop::collection::vec("[ab][ab/]{0,3}", 1..12), key in "[ab/]{0,6}") {
            let text = list.join("\n");
            let kept = parse(text.as_bytes()).unwrap();
            let listed = list.iter().any(|p| key.starts_with(p.as_str()));
            let covering = kept.iter().filter(|p| key.starts_with(p.as_str())).count();
            prop_assert_eq!(covering, usize::from(listed));
        }
    }
}
