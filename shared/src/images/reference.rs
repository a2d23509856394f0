//! Image references as the distribution reference grammar defines them:
//! `[domain/]path[:tag][@digest]`, e.g. `ubuntu`, `quay.io/org/app:1.2`,
//! `127.0.0.1:5000/team/app@sha256:…`.
//!
//! Parsing keeps what was written (so `parse(print(r)) == r`); [`ImageRef::normalized`]
//! applies Docker Hub's defaults (`ubuntu` → `docker.io/library/ubuntu:latest`).
//! Pure: no IO.

use std::fmt;
use std::str::FromStr;

/// Docker Hub's canonical domain.
pub const DOCKER_HUB: &str = "docker.io";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// Why a reference (or a part of one) was refused. The message names the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {text:?}: {reason}")]
pub struct ReferenceError {
    /// The text that was refused.
    pub text: String,
    /// What is wrong and what is expected.
    pub reason: String,
}

impl ReferenceError {
    fn new(text: &str, reason: impl Into<String>) -> Self {
        Self {
            text: text.to_string(),
            reason: reason.into(),
        }
    }
}

/// A content digest such as `sha256:<64 lowercase hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: String,
    hex: String,
}

impl Digest {
    /// The algorithm, e.g. `sha256`.
    pub fn algorithm(&self) -> &str {
        &self.algorithm
    }
    /// The encoded part (lowercase hex).
    pub fn hex(&self) -> &str {
        &self.hex
    }
    /// The sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        Self {
            algorithm: "sha256".into(),
            hex: hex::encode(sha2::Sha256::digest(bytes)),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex)
    }
}

impl FromStr for Digest {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (algorithm, hex) = s.split_once(':').ok_or_else(|| {
            ReferenceError::new(
                s,
                "a digest is `algorithm:hex`, e.g. `sha256:` followed by 64 hex digits",
            )
        })?;
        let want = match algorithm {
            "sha256" => 64,
            "sha384" => 96,
            "sha512" => 128,
            other => {
                return Err(ReferenceError::new(
                    s,
                    format!(
                        "unsupported digest algorithm {other:?}; expected sha256, sha384 or sha512"
                    ),
                ));
            }
        };
        if hex.len() != want
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(ReferenceError::new(
                s,
                format!(
                    "a {algorithm} digest has exactly {want} lowercase hex digits, found {:?}",
                    hex
                ),
            ));
        }
        Ok(Self {
            algorithm: algorithm.into(),
            hex: hex.into(),
        })
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A parsed image reference, as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    /// Registry host with optional port, when the reference names one.
    pub domain: Option<String>,
    /// Repository path (`library/ubuntu`, `team/app`).
    pub path: String,
    /// Tag, when given.
    pub tag: Option<String>,
    /// Digest, when given.
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// The same reference with Docker Hub defaults applied: a domain is always present,
    /// a one-component Docker Hub path gets `library/`, and a reference with neither tag
    /// nor digest gets `latest`.
    pub fn normalized(&self) -> ImageRef {
        let domain = match self.domain.as_deref() {
            None | Some("index.docker.io") | Some("registry-1.docker.io") => DOCKER_HUB.to_string(),
            Some(d) => d.to_string(),
        };
        let path = if domain == DOCKER_HUB && !self.path.contains('/') {
            format!("library/{}", self.path)
        } else {
            self.path.clone()
        };
        let tag = match (&self.tag, &self.digest) {
            (None, None) => Some("latest".to_string()),
            (t, _) => t.clone(),
        };
        ImageRef {
            domain: Some(domain),
            path,
            tag,
            digest: self.digest.clone(),
        }
    }

    /// The repository name without domain, tag or digest.
    pub fn repository(&self) -> &str {
        &self.path
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.domain {
            write!(f, "{d}/")?;
        }
        f.write_str(&self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

/// True when the first component of a name is a registry host rather than a path
/// component (the Docker rule: it has a `.` or a `:`, or is `localhost`, or has uppercase).
pub fn looks_like_domain(first: &str) -> bool {
    first.contains('.')
        || first.contains(':')
        || first == "localhost"
        || first.bytes().any(|b| b.is_ascii_uppercase())
}

/// Parses a reference; see the module docs for the grammar.
pub fn parse(s: &str) -> Result<ImageRef, ReferenceError> {
    if s.is_empty() {
        return Err(ReferenceError::new(
            s,
            "empty reference; expected `name[:tag][@digest]`",
        ));
    }
    if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(ReferenceError::new(
            s,
            format!("contains {c:?}; references have no spaces or control characters"),
        ));
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (
            r,
            Some(
                d.parse::<Digest>()
                    .map_err(|e| ReferenceError::new(s, e.reason))?,
            ),
        ),
        None => (s, None),
    };
    // The tag is after the last ':' that comes after the last '/'.
    let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => {
            let at = last_slash + i;
            (&rest[..at], Some(rest[at + 1..].to_string()))
        }
        None => (rest, None),
    };
    if let Some(t) = &tag {
        validate_tag(t).map_err(|r| ReferenceError::new(s, r))?;
    }
    let (domain, path) = split_domain(name);
    if let Some(d) = domain {
        validate_domain(d).map_err(|r| ReferenceError::new(s, r))?;
    }
    validate_path(path).map_err(|r| ReferenceError::new(s, r))?;
    if name.len() > MAX_NAME_LEN {
        return Err(ReferenceError::new(
            s,
            format!(
                "repository name is {} characters; at most {MAX_NAME_LEN} allowed",
                name.len()
            ),
        ));
    }
    Ok(ImageRef {
        domain: domain.map(str::to_string),
        path: path.to_string(),
        tag,
        digest,
    })
}

fn split_domain(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest)) if looks_like_domain(first) => (Some(first), rest),
        _ => (None, name),
    }
}

/// Checks a tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn validate_tag(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Err("empty tag after ':'; expected 1 to 128 of [A-Za-z0-9_.-]".into());
    }
    if t.len() > MAX_TAG_LEN {
        return Err(format!(
            "tag is {} characters; at most {MAX_TAG_LEN} allowed",
            t.len()
        ));
    }
    let ok_first = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let ok = |b: u8| ok_first(b) || b == b'.' || b == b'-';
    let bytes = t.as_bytes();
    if !ok_first(bytes[0]) || !bytes.iter().all(|&b| ok(b)) {
        return Err(format!(
            "tag {t:?} may use only [A-Za-z0-9_.-] and must not start with '.' or '-'"
        ));
    }
    Ok(())
}

/// Checks a registry host with optional port.
pub fn validate_domain(d: &str) -> Result<(), String> {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || d.starts_with('[') => (h, Some(p)),
        _ => (d, None),
    };
    if let Some(p) = port {
        if p.is_empty()
            || !p.bytes().all(|b| b.is_ascii_digit())
            || p.parse::<u32>().map_or(true, |n| n == 0 || n > 65535)
        {
            return Err(format!(
                "registry {d:?} has port {p:?}; expected a number from 1 to 65535"
            ));
        }
    }
    if host.starts_with('[') && host.ends_with(']') {
        let inner = &host[1..host.len() - 1];
        if inner.parse::<std::net::Ipv6Addr>().is_ok() {
            return Ok(());
        }
        return Err(format!("registry {d:?}: {inner:?} is not an IPv6 address"));
    }
    if host.is_empty() {
        return Err(format!("registry {d:?} has an empty host name"));
    }
    for label in host.split('.') {
        let b = label.as_bytes();
        let ok = !b.is_empty()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-';
        if !ok {
            return Err(format!(
                "registry host {host:?} has label {label:?}; labels are letters, digits and inner '-'"
            ));
        }
    }
    Ok(())
}

/// Checks a repository path: `/`-separated components of `[a-z0-9]+` joined by `.`, `_`, `__` or `-`s.
pub fn validate_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty repository name; expected lowercase components like `team/app`".into());
    }
    for comp in path.split('/') {
        validate_component(comp)?;
    }
    Ok(())
}

fn validate_component(c: &str) -> Result<(), String> {
    let err = || {
        format!(
            "repository component {c:?} must be lowercase letters and digits, separated by '.', '_', '__' or '-'"
        )
    };
    if c.is_empty() {
        return Err(
            "empty repository component (two '/' in a row, or a leading/trailing '/')".into(),
        );
    }
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Err(err());
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // a separator run
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return Err(err());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_the_common_shapes() {
        let r = parse("ubuntu").unwrap();
        assert_eq!(
            (r.domain.as_deref(), r.path.as_str(), r.tag.as_deref()),
            (None, "ubuntu", None)
        );
        assert_eq!(
            r.normalized().to_string(),
            "docker.io/library/ubuntu:latest"
        );

        let r = parse("ubuntu:22.04").unwrap();
        assert_eq!(r.tag.as_deref(), Some("22.04"));

        let r = parse(&format!("app@{D}")).unwrap();
        assert_eq!(r.digest.as_ref().unwrap().to_string(), D);
        assert_eq!(
            r.normalized().tag,
            None,
            "a digest-pinned reference gets no default tag"
        );

        let r = parse(&format!("app:v1@{D}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert!(r.digest.is_some());

        let r = parse("127.0.0.1:5000/a/b:tag").unwrap();
        assert_eq!(r.domain.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(r.path, "a/b");
        assert_eq!(r.tag.as_deref(), Some("tag"));

        let r = parse("registry.example.com:5000/team/app").unwrap();
        assert_eq!(r.domain.as_deref(), Some("registry.example.com:5000"));
        assert_eq!(r.tag, None);

        let r = parse("localhost/x").unwrap();
        assert_eq!(r.domain.as_deref(), Some("localhost"));
        assert_eq!(r.normalized().to_string(), "localhost/x:latest");

        let r = parse("quay.io/org/app").unwrap();
        assert_eq!(r.normalized().to_string(), "quay.io/org/app:latest");
        assert_eq!(
            parse("docker.io/nginx").unwrap().normalized().path,
            "library/nginx"
        );
        assert_eq!(
            parse("team/app").unwrap().normalized().to_string(),
            "docker.io/team/app:latest"
        );
    }

    #[test]
    fn refuses_bad_references_naming_the_text() {
        for (bad, needle) in [
            ("", "empty"),
            ("Ubuntu/App", "lowercase"),
            ("team/App", "lowercase"),
            ("app:", "empty tag"),
            ("app:-x", "must not start"),
            ("app:a+b", "[A-Za-z0-9_.-]"),
            ("app@sha256:abc", "64 lowercase hex"),
            (
                "app@md5:0123456789abcdef0123456789abcdef",
                "unsupported digest algorithm",
            ),
            (
                "app@sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
                "lowercase hex",
            ),
            ("a//b", "empty repository component"),
            ("host:99999/app", "1 to 65535"),
            ("my app", "spaces"),
            ("a---b..c", "separated"),
            ("-app", "separated"),
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.text, bad);
            let msg = e.to_string();
            assert!(msg.contains(needle), "{bad:?}: {msg}");
            assert!(
                msg.contains(&format!("{bad:?}")),
                "message names the text: {msg}"
            );
        }
        let long_tag = format!("app:{}", "a".repeat(129));
        assert!(parse(&long_tag).unwrap_err().reason.contains("at most 128"));
        assert!(parse(&format!("app:{}", "a".repeat(128))).is_ok());
        let long_name = format!("{}/x", "a".repeat(260));
        assert!(
            parse(&long_name)
                .unwrap_err()
                .reason
                .contains("at most 255")
        );
    }

    #[test]
    fn accepts_separators_of_the_grammar() {
        for ok in ["a_b", "a__b", "a.b", "a-b", "a---b", "a/b/c/d", "x1/y2"] {
            assert!(parse(ok).is_ok(), "{ok}");
        }
        assert!(parse("a___b").is_err());
    }

    fn component() -> impl Strategy<Value = String> {
        "[a-z0-9]{1,5}(([._]|__|-{1,2})[a-z0-9]{1,5}){0,2}"
    }
    fn domain() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            Just(Some("localhost".to_string())),
            "[a-z][a-z0-9]{0,6}\\.[a-z]{2,4}".prop_map(Some),
            ("[a-z][a-z0-9]{0,6}\\.[a-z]{2,4}", 1u16..65535)
                .prop_map(|(h, p)| Some(format!("{h}:{p}"))),
            (0u8..=255, 1u16..65535).prop_map(|(o, p)| Some(format!("127.0.0.{o}:{p}"))),
        ]
    }
    fn reference() -> impl Strategy<Value = ImageRef> {
        (
            domain(),
            proptest::collection::vec(component(), 1..4),
            proptest::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
            proptest::option::of("[0-9a-f]{64}"),
        )
            .prop_map(|(domain, comps, tag, hex)| ImageRef {
                domain,
                path: comps.join("/"),
                tag,
                digest: hex.map(|h| format!("sha256:{h}").parse().unwrap()),
            })
            // Without a domain, a first component with a '.' would itself read as a domain
            // (the grammar's rule, not an ambiguity of ours).
            .prop_filter("first component reads as a domain", |r| {
                r.domain.is_some()
                    || r.path.contains('/') && !looks_like_domain(r.path.split('/').next().unwrap())
                    || !r.path.contains('/')
            })
    }

    proptest! {
        #[test]
        fn parse_of_print_is_identity(r in reference()) {
            let text = r.to_string();
            prop_assert_eq!(parse(&text).unwrap(), r);
        }

        #[test]
        fn normalizing_is_idempotent(r in reference()) {
            let n = r.normalized();
            prop_assert_eq!(n.normalized(), n.clone());
            prop_assert_eq!(parse(&n.to_string()).unwrap(), n);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = parse(&s);
        }
    }
}
