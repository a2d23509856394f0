//! `s3://bucket[/prefix]` locations, checked once at the edge so every later step can
//! trust them.

use std::fmt;

/// A bucket and a key prefix (possibly empty). The prefix is a folder, as in `aws s3 sync`
/// and rclone: it never starts with `/` and, when not empty, always ends with one, so
/// `s3://b/data` means the keys under `data/` (never `database/…`), and a relative key is
/// never glued to the prefix without its `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct S3Url {
    pub bucket: String,
    pub prefix: String,
}

/// A location that is not `s3://bucket[/prefix]`; names the value and what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad S3 location {value:?}: {problem}; expected s3://BUCKET[/PREFIX] with a bucket name of 3-63 lowercase letters, digits, '.' or '-'"
)]
pub struct BadS3Url {
    pub value: String,
    pub problem: &'static str,
}

impl S3Url {
    pub fn parse(value: &str) -> Result<Self, BadS3Url> {
        let bad = |problem| BadS3Url {
            value: value.to_string(),
            problem,
        };
        let rest = value
            .strip_prefix("s3://")
            .ok_or_else(|| bad("it does not start with s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("the bucket name is empty"));
        }
        if !(3..=63).contains(&bucket.len()) {
            return Err(bad("the bucket name is not 3-63 characters long"));
        }
        if !bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        {
            return Err(bad(
                "the bucket name has a character other than a-z, 0-9, '.', '-'",
            ));
        }
        let edge_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
        if !edge_ok(bucket.bytes().next()) || !edge_ok(bucket.bytes().last()) {
            return Err(bad(
                "the bucket name must start and end with a letter or digit",
            ));
        }
        if bucket.contains("..") {
            return Err(bad("the bucket name has two dots in a row"));
        }
        if prefix.starts_with('/') {
            return Err(bad("the prefix starts with '/' (keys never do)"));
        }
        let mut prefix = prefix.to_string();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(Self {
            bucket: bucket.to_string(),
            prefix,
        })
    }

    /// The full key of `relative` under this prefix.
    pub fn key(&self, relative: &str) -> String {
        format!("{}{relative}", self.prefix)
    }

    /// The URL of one object.
    pub fn object(&self, relative: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(relative))
    }
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

impl std::str::FromStr for S3Url {
    type Err = BadS3Url;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bucket_and_prefix() {
        let u = S3Url::parse("s3://my-bucket/logs/2026/").unwrap();
        assert_eq!(u.bucket, "my-bucket");
        assert_eq!(u.prefix, "logs/2026/");
        assert_eq!(u.key("a.txt"), "logs/2026/a.txt");
        assert_eq!(u.to_string(), "s3://my-bucket/logs/2026/");
        assert_eq!(S3Url::parse("s3://b.c.d").unwrap().prefix, "");
        assert_eq!(S3Url::parse("s3://b.c.d/").unwrap().prefix, "");
    }

    #[test]
    fn a_prefix_is_a_folder() {
        let u = S3Url::parse("s3://my-bucket/data").unwrap();
        assert_eq!(u.prefix, "data/");
        assert_eq!(u.key("a.txt"), "data/a.txt");
        assert_eq!(u.to_string(), "s3://my-bucket/data/");
        assert_eq!(S3Url::parse("s3://my-bucket/a/b").unwrap().prefix, "a/b/");
    }

    #[test]
    fn names_the_bad_value_and_the_problem() {
        for (v, p) in [
            ("my-bucket/x", "s3://"),
            ("s3://", "empty"),
            ("s3://ab", "3-63"),
            ("s3://My_Bucket", "character"),
            ("s3://-bucket", "start and end"),
            ("s3://a..b", "two dots"),
            ("s3://bucket//x", "starts with '/'"),
        ] {
            let e = S3Url::parse(v).unwrap_err().to_string();
            assert!(e.contains(&format!("{v:?}")), "{e}");
            assert!(e.contains(p), "{v}: {e}");
            assert!(e.contains("expected s3://BUCKET"), "{e}");
        }
    }
}
