//! Which registries a suite's secrets belong to. On AWS one `SOURCE_SECRET` and one
//! `DEST_SECRET` are configured for one source and one destination registry; a selection
//! line, an execution input or a copy task that names any other host must never receive
//! them. [`HostRules`] decides, purely: a source host is the configured source or one of the
//! explicitly allowed extra sources (read anonymously); a destination host is the configured
//! destination. Everything else is a [`HostRefused`] for that one image.

use crate::images::reference::validate_domain;
use crate::retry::{ErrorClass, ItemError};

/// A host refused for an image, with the host it should have been.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostRefused {
    #[error(
        "unconfigured source registry: {what} names registry {host}, which is neither the configured source {configured} nor one of EXTRA_SOURCE_REGISTRIES ({extra}); refused, so the source's login never goes to {host} (add {host} to the stack's ExtraSourceRegistries to read it without a login)"
    )]
    Source {
        what: String,
        host: String,
        configured: String,
        extra: String,
    },
    #[error(
        "unconfigured destination registry: {what} names registry {host}, but the configured destination is {dest}; refused, so the destination's login never goes to {host}"
    )]
    Dest {
        what: String,
        host: String,
        dest: String,
    },
}

impl From<HostRefused> for ItemError {
    fn from(e: HostRefused) -> Self {
        ItemError::new(ErrorClass::BadInput, e.to_string())
    }
}

/// One registry as we compare them: Docker Hub's aliases folded into `docker.io`.
pub fn canonical_host(host: &str) -> &str {
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        h => h,
    }
}

/// The registries of one configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRules {
    pub source: String,
    pub dest: String,
    /// Other source hosts lines may name; they are read without any login.
    pub extra_sources: Vec<String>,
}

/// Parses `EXTRA_SOURCE_REGISTRIES`: comma-separated registry hosts (`host[:port]`).
pub fn parse_extra_sources(v: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for h in v.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        validate_domain(h).map_err(|e| {
            format!("EXTRA_SOURCE_REGISTRIES: {h:?} is not a registry host (host[:port], comma-separated): {e}")
        })?;
        out.push(h.to_string());
    }
    Ok(out)
}

impl HostRules {
    /// Whether `host` is the configured source (the one its secret belongs to).
    pub fn is_source(&self, host: &str) -> bool {
        canonical_host(host) == canonical_host(&self.source)
    }

    /// A source host is the configured source or an allowed extra source.
    pub fn check_source(&self, what: &str, host: &str) -> Result<(), HostRefused> {
        let allowed = self.is_source(host)
            || self
                .extra_sources
                .iter()
                .any(|e| canonical_host(e) == canonical_host(host));
        if allowed {
            return Ok(());
        }
        Err(HostRefused::Source {
            what: what.to_string(),
            host: host.to_string(),
            configured: self.source.clone(),
            extra: if self.extra_sources.is_empty() {
                "none".into()
            } else {
                self.extra_sources.join(", ")
            },
        })
    }

    /// A destination host is the configured destination.
    pub fn check_dest(&self, what: &str, host: &str) -> Result<(), HostRefused> {
        if canonical_host(host) == canonical_host(&self.dest) {
            return Ok(());
        }
        Err(HostRefused::Dest {
            what: what.to_string(),
            host: host.to_string(),
            dest: self.dest.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> HostRules {
        HostRules {
            source: "registry.corp:5000".into(),
            dest: "123456789012.dkr.ecr.eu-west-1.amazonaws.com".into(),
            extra_sources: vec!["docker.io".into()],
        }
    }

    #[test]
    fn only_the_source_and_the_allowed_extra_hosts_are_sources() {
        let r = rules();
        assert!(r.check_source("line 1", "registry.corp:5000").is_ok());
        assert!(
            r.check_source("line 2", "index.docker.io").is_ok(),
            "alias of docker.io"
        );
        assert!(r.is_source("registry.corp:5000") && !r.is_source("docker.io"));
        let e = r
            .check_source("line 3: quay.io/org/app:1", "quay.io")
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(
                "unconfigured source registry: line 3: quay.io/org/app:1 names registry quay.io"
            ),
            "{text}"
        );
        assert!(
            text.contains("registry.corp:5000") && text.contains("docker.io"),
            "{text}"
        );
        assert_eq!(ItemError::from(e).class, ErrorClass::BadInput);
        assert!(
            r.check_dest("x", "123456789012.dkr.ecr.eu-west-1.amazonaws.com")
                .is_ok()
        );
        assert!(r.check_dest("x", "evil.example").is_err());
    }

    #[test]
    fn extra_sources_parse_or_name_the_bad_host() {
        assert_eq!(
            parse_extra_sources(" quay.io, ghcr.io ,,").unwrap(),
            ["quay.io", "ghcr.io"]
        );
        assert!(parse_extra_sources("").unwrap().is_empty());
        let e = parse_extra_sources("quay.io, Bad Host").unwrap_err();
        assert!(e.contains("\"Bad Host\""), "{e}");
    }
}
