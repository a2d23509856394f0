//! The registry edge: the OCI distribution API over HTTP (catalog, tags, manifest HEAD),
//! with anonymous, basic and bearer-token auth. [`Registry`] is the trait the pipeline
//! uses; [`HttpRegistry`] talks to real registries.
//!
//! Registries on 127.0.0.0/8, `[::1]` and `localhost` are plain HTTP (the Docker
//! convention); any other host only when named as insecure.

use crate::authfile::{Credentials, Login};
use crate::reference::{Digest, validate_domain, validate_path};
use crate::retry::{ErrorClass, ItemError};
use async_trait::async_trait;
use reqwest::{Method, StatusCode, header};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

/// Manifest media types we ask for, most capable first.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// The kind of manifest a registry returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    DockerV2,
    DockerList,
    OciManifest,
    OciIndex,
    Other,
}

impl ManifestKind {
    pub fn from_media_type(mt: &str) -> Self {
        match mt.split(';').next().unwrap_or("").trim() {
            "application/vnd.docker.distribution.manifest.v2+json" => Self::DockerV2,
            "application/vnd.docker.distribution.manifest.list.v2+json" => Self::DockerList,
            "application/vnd.oci.image.manifest.v1+json" => Self::OciManifest,
            "application/vnd.oci.image.index.v1+json" => Self::OciIndex,
            _ => Self::Other,
        }
    }
    /// True for manifest lists and OCI indexes (multi-platform images).
    pub fn is_index(self) -> bool {
        matches!(self, Self::DockerList | Self::OciIndex)
    }
}

/// What a manifest HEAD tells: the digest and media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestInfo {
    pub digest: Digest,
    pub media_type: String,
}

/// A registry with an optional repository prefix: `--source REGISTRY[/PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub host: String,
    pub prefix: Option<String>,
}

impl Location {
    /// Parses `host[:port][/prefix/...]`. The first component is always the registry.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s
            .trim()
            .trim_start_matches("docker://")
            .trim_end_matches('/');
        let (host, prefix) = match t.split_once('/') {
            Some((h, p)) => (h, Some(p)),
            None => (t, None),
        };
        validate_domain(host).map_err(|e| format!("{s:?} is not REGISTRY[/PREFIX]: {e}"))?;
        if let Some(p) = prefix {
            validate_path(p).map_err(|e| format!("{s:?} has a bad prefix: {e}"))?;
        }
        Ok(Self {
            host: host.to_string(),
            prefix: prefix.map(str::to_string),
        })
    }

    /// `prefix/path`, or `path` without a prefix.
    pub fn join(&self, path: &str) -> String {
        match &self.prefix {
            Some(p) => format!("{p}/{path}"),
            None => path.to_string(),
        }
    }

    /// The part of `repo` below the prefix, if `repo` is under it.
    pub fn strip<'a>(&self, repo: &'a str) -> Option<&'a str> {
        match &self.prefix {
            None => Some(repo),
            Some(p) => repo
                .strip_prefix(p.as_str())
                .and_then(|r| r.strip_prefix('/')),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.prefix {
            Some(p) => write!(f, "{}/{}", self.host, p),
            None => f.write_str(&self.host),
        }
    }
}

/// True for hosts that are plain HTTP by convention: loopback addresses and `localhost`.
pub fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    if name == "localhost" {
        return true;
    }
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// The operations the pipeline needs from a registry.
#[async_trait]
pub trait Registry: Send + Sync {
    /// Every repository of the registry (catalog, all pages).
    async fn list_repositories(&self, host: &str) -> Result<Vec<String>, ItemError>;
    /// Every tag of a repository (all pages).
    async fn list_tags(&self, host: &str, repo: &str) -> Result<Vec<String>, ItemError>;
    /// The manifest's digest and media type, or `None` when it does not exist.
    async fn head_manifest(
        &self,
        host: &str,
        repo: &str,
        reference: &str,
    ) -> Result<Option<ManifestInfo>, ItemError>;
    /// Total bytes of the blobs an image references (all platforms of an index).
    async fn image_size(&self, host: &str, repo: &str, digest: &Digest) -> Result<u64, ItemError>;
    /// Digests of the manifests that no tag points at. Only ECR can list them (its
    /// `ListImages` with `tagStatus=UNTAGGED`); the registry API has no such listing, so
    /// other registries report none.
    async fn list_untagged(&self, _host: &str, _repo: &str) -> Result<Vec<Digest>, ItemError> {
        Ok(Vec::new())
    }
}

#[derive(Debug, Clone)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// A registry client over HTTP(S).
pub struct HttpRegistry {
    http: reqwest::Client,
    credentials: Credentials,
    insecure: HashSet<String>,
    addresses: HashMap<String, String>,
    challenges: Mutex<HashMap<String, Challenge>>,
    tokens: Mutex<HashMap<(String, String), String>>,
}

impl HttpRegistry {
    /// A client with these logins; `insecure` hosts are spoken to over plain HTTP.
    pub fn new(credentials: Credentials, insecure: impl IntoIterator<Item = String>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(64)
            .user_agent(concat!("transfer-hub/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("HTTP client builds");
        Self {
            http,
            credentials,
            insecure: insecure.into_iter().collect(),
            addresses: HashMap::new(),
            challenges: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// Sends traffic for registry `host` to `address` instead (the ECR test override).
    pub fn route(&mut self, host: &str, address: &str) {
        self.addresses.insert(host.to_string(), address.to_string());
    }

    /// Adds a login (e.g. an ECR token) for a host.
    pub fn add_login(&mut self, host: &str, login: Login) {
        self.credentials.insert(host, login);
    }

    /// The logins this client holds.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// Where bytes for `host` go: the override, Docker Hub's API host, or the host itself.
    pub fn address(&self, host: &str) -> String {
        if let Some(a) = self.addresses.get(host) {
            return a.clone();
        }
        match host {
            "docker.io" | "index.docker.io" => "registry-1.docker.io".to_string(),
            h => h.to_string(),
        }
    }

    /// Whether `host` is spoken to over plain HTTP.
    pub fn plain_http(&self, host: &str) -> bool {
        let addr = self.address(host);
        is_loopback_host(&addr) || self.insecure.contains(host) || self.insecure.contains(&addr)
    }

    fn url(&self, host: &str, path: &str) -> String {
        let scheme = if self.plain_http(host) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}{path}", self.address(host))
    }

    fn auth_header(&self, host: &str, scope: &str) -> Option<String> {
        let challenge = self.challenges.lock().unwrap().get(host).cloned()?;
        match challenge {
            Challenge::Basic => self.credentials.get(host).map(basic),
            Challenge::Bearer { .. } => self
                .tokens
                .lock()
                .unwrap()
                .get(&(host.to_string(), scope.to_string()))
                .map(|t| format!("Bearer {t}")),
        }
    }

    async fn send(
        &self,
        method: Method,
        host: &str,
        path: &str,
        scope: &str,
    ) -> Result<reqwest::Response, ItemError> {
        let url = self.url(host, path);
        let mut authed = false;
        loop {
            let mut req = self
                .http
                .request(method.clone(), &url)
                .header(header::ACCEPT, MANIFEST_ACCEPT);
            if let Some(h) = self.auth_header(host, scope) {
                req = req.header(header::AUTHORIZATION, h);
            }
            let resp = req.send().await.map_err(|e| {
                ItemError::new(
                    ErrorClass::Retryable,
                    format!("{method} {url}: {}", error_chain(&e)),
                )
            })?;
            if resp.status() != StatusCode::UNAUTHORIZED || authed {
                return Ok(resp);
            }
            authed = true;
            let challenge = resp
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge)
                .ok_or_else(|| ItemError::new(ErrorClass::AuthDenied, format!("{method} {url}: 401 Unauthorized without a usable WWW-Authenticate challenge")))?;
            if let Challenge::Bearer { realm, service } = &challenge {
                let token = self
                    .fetch_token(host, realm, service.as_deref(), scope)
                    .await?;
                self.tokens
                    .lock()
                    .unwrap()
                    .insert((host.to_string(), scope.to_string()), token);
            } else if self.credentials.get(host).is_none() {
                return Err(ItemError::new(
                    ErrorClass::AuthDenied,
                    format!(
                        "{method} {url}: registry {host} asks for a login and the auth file has none for it"
                    ),
                ));
            }
            self.challenges
                .lock()
                .unwrap()
                .insert(host.to_string(), challenge);
        }
    }

    async fn fetch_token(
        &self,
        host: &str,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<String, ItemError> {
        let mut req = self.http.get(realm);
        let mut query = vec![("scope", scope)];
        if let Some(s) = service {
            query.push(("service", s));
        }
        req = req.query(&query);
        if let Some(l) = self.credentials.get(host) {
            req = req.basic_auth(&l.username, Some(&l.password));
        }
        let resp = req.send().await.map_err(|e| {
            ItemError::new(
                ErrorClass::Retryable,
                format!("token request to {realm}: {}", error_chain(&e)),
            )
        })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(ItemError::new(
                ErrorClass::from_http_status(status.as_u16()),
                format!("token request to {realm} for {host}: {status}"),
            ));
        }
        #[derive(Deserialize)]
        struct Tok {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: Tok = resp.json().await.map_err(|e| {
            ItemError::new(
                ErrorClass::Retryable,
                format!("token response from {realm}: {e}"),
            )
        })?;
        t.token.or(t.access_token).ok_or_else(|| {
            ItemError::new(
                ErrorClass::AuthDenied,
                format!("token response from {realm} has no token"),
            )
        })
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        host: &str,
        path: &str,
        scope: &str,
    ) -> Result<(T, Option<String>), ItemError> {
        let resp = self.send(Method::GET, host, path, scope).await?;
        let resp = check(resp, host, path)?;
        let next = next_link(resp.headers());
        let v = resp.json::<T>().await.map_err(|e| {
            ItemError::new(
                ErrorClass::Retryable,
                format!("GET {host}{path}: unreadable body: {e}"),
            )
        })?;
        Ok((v, next))
    }

    async fn paginate<T, F>(
        &self,
        host: &str,
        first: String,
        scope: &str,
        mut take: F,
    ) -> Result<(), ItemError>
    where
        T: serde::de::DeserializeOwned,
        F: FnMut(T),
    {
        let mut path = first;
        let mut pages = 0;
        loop {
            let (page, next) = self.get_json::<T>(host, &path, scope).await?;
            take(page);
            pages += 1;
            match next {
                Some(n) if pages < 100_000 => path = n,
                _ => return Ok(()),
            }
        }
    }
}

fn basic(l: &Login) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", l.username, l.password))
    )
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn check(resp: reqwest::Response, host: &str, path: &str) -> Result<reqwest::Response, ItemError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let class = ErrorClass::from_http_status(status.as_u16());
    Err(ItemError::new(class, format!("{host}{path}: {status}")))
}

/// Parses a `WWW-Authenticate` header: `Basic realm="…"` or `Bearer realm="…",service="…",scope="…"`.
fn parse_challenge(h: &str) -> Option<Challenge> {
    let (scheme, rest) = h.trim().split_once(' ').unwrap_or((h.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = HashMap::new();
    let mut s = rest;
    while !s.is_empty() {
        let (k, after) = s.split_once('=')?;
        let after = after.trim_start();
        let (v, remain) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.insert(k.trim().to_ascii_lowercase(), v.to_string());
        s = remain.trim_start_matches([',', ' ']);
    }
    Some(Challenge::Bearer {
        realm: params.remove("realm")?,
        service: params.remove("service"),
    })
}

/// The target of a `Link: <…>; rel="next"` header.
fn next_link(h: &header::HeaderMap) -> Option<String> {
    let v = h.get(header::LINK)?.to_str().ok()?;
    v.split(',')
        .find(|p| p.contains("rel=\"next\"") || p.contains("rel=next"))
        .and_then(|p| {
            let start = p.find('<')? + 1;
            let end = p.find('>')?;
            let target = &p[start..end];
            // Absolute links keep only their path and query.
            Some(match target.find("://") {
                Some(i) => target[i + 3..]
                    .find('/')
                    .map(|j| target[i + 3 + j..].to_string())?,
                None => target.to_string(),
            })
        })
}

#[async_trait]
impl Registry for HttpRegistry {
    async fn list_repositories(&self, host: &str) -> Result<Vec<String>, ItemError> {
        #[derive(Deserialize)]
        struct Catalog {
            #[serde(default)]
            repositories: Option<Vec<String>>,
        }
        let mut out = Vec::new();
        self.paginate::<Catalog, _>(
            host,
            "/v2/_catalog?n=1000".into(),
            "registry:catalog:*",
            |c| out.extend(c.repositories.unwrap_or_default()),
        )
        .await?;
        Ok(out)
    }

    async fn list_tags(&self, host: &str, repo: &str) -> Result<Vec<String>, ItemError> {
        #[derive(Deserialize)]
        struct Tags {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let mut out = Vec::new();
        let scope = format!("repository:{repo}:pull");
        self.paginate::<Tags, _>(host, format!("/v2/{repo}/tags/list?n=1000"), &scope, |t| {
            out.extend(t.tags.unwrap_or_default())
        })
        .await?;
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn head_manifest(
        &self,
        host: &str,
        repo: &str,
        reference: &str,
    ) -> Result<Option<ManifestInfo>, ItemError> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let scope = format!("repository:{repo}:pull");
        let resp = self.send(Method::HEAD, host, &path, &scope).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = check(resp, host, &path)?;
        let media_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let digest = match digest {
            Some(d) => d,
            None => {
                // Some registries omit the header on HEAD: hash the manifest body instead.
                let resp = check(
                    self.send(Method::GET, host, &path, &scope).await?,
                    host,
                    &path,
                )?;
                let body = resp.bytes().await.map_err(|e| {
                    ItemError::new(ErrorClass::Retryable, format!("GET {host}{path}: {e}"))
                })?;
                Digest::sha256_of(&body)
            }
        };
        Ok(Some(ManifestInfo { digest, media_type }))
    }

    async fn image_size(&self, host: &str, repo: &str, digest: &Digest) -> Result<u64, ItemError> {
        #[derive(Deserialize)]
        struct Desc {
            #[serde(default)]
            size: u64,
            #[serde(default)]
            digest: Option<String>,
        }
        #[derive(Deserialize)]
        struct Manifest {
            #[serde(default)]
            config: Option<Desc>,
            #[serde(default)]
            layers: Vec<Desc>,
            #[serde(default)]
            manifests: Vec<Desc>,
        }
        let scope = format!("repository:{repo}:pull");
        let (m, _) = self
            .get_json::<Manifest>(host, &format!("/v2/{repo}/manifests/{digest}"), &scope)
            .await?;
        let mut total: u64 =
            m.config.map_or(0, |c| c.size) + m.layers.iter().map(|l| l.size).sum::<u64>();
        for child in &m.manifests {
            let Some(d) = child
                .digest
                .as_deref()
                .and_then(|d| d.parse::<Digest>().ok())
            else {
                continue;
            };
            total += child.size;
            let (cm, _) = self
                .get_json::<Manifest>(host, &format!("/v2/{repo}/manifests/{d}"), &scope)
                .await?;
            total +=
                cm.config.map_or(0, |c| c.size) + cm.layers.iter().map(|l| l.size).sum::<u64>();
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_locations() {
        let l = Location::parse("127.0.0.1:5000/team/sub").unwrap();
        assert_eq!(
            (l.host.as_str(), l.prefix.as_deref()),
            ("127.0.0.1:5000", Some("team/sub"))
        );
        assert_eq!(l.join("app"), "team/sub/app");
        assert_eq!(l.strip("team/sub/app/x"), Some("app/x"));
        assert_eq!(l.strip("team/other"), None);
        assert_eq!(l.to_string(), "127.0.0.1:5000/team/sub");
        assert_eq!(Location::parse("quay.io").unwrap().prefix, None);
        let e = Location::parse("host:0/x").unwrap_err();
        assert!(
            e.contains("\"host:0/x\"") && e.contains("1 to 65535"),
            "{e}"
        );
        assert!(
            Location::parse("reg.example/Bad")
                .unwrap_err()
                .contains("lowercase")
        );
    }

    #[test]
    fn loopback_hosts_are_plain_http_others_only_when_insecure() {
        for h in [
            "127.0.0.1:5000",
            "127.1.2.3",
            "localhost:80",
            "localhost",
            "[::1]:5000",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "10.0.0.1:5000",
            "registry.example.com",
            "localhost.example.com:1",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
        let r = HttpRegistry::new(Credentials::default(), ["harbor.lan:8080".to_string()]);
        assert!(r.plain_http("harbor.lan:8080"));
        assert!(!r.plain_http("quay.io"));
        assert_eq!(
            r.url("docker.io", "/v2/"),
            "https://registry-1.docker.io/v2/"
        );
        assert_eq!(r.url("127.0.0.1:5000", "/v2/"), "http://127.0.0.1:5000/v2/");
    }

    #[test]
    fn parses_auth_challenges() {
        assert!(matches!(
            parse_challenge("Basic realm=\"Registry Realm\""),
            Some(Challenge::Basic)
        ));
        match parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull""#,
        ) {
            Some(Challenge::Bearer { realm, service }) => {
                assert_eq!(realm, "https://auth.docker.io/token");
                assert_eq!(service.as_deref(), Some("registry.docker.io"));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_challenge("Bearer service=x").is_none(), "no realm");
        assert!(parse_challenge("Negotiate abc").is_none());
    }

    #[test]
    fn follows_link_headers() {
        let mut h = header::HeaderMap::new();
        h.insert(
            header::LINK,
            "</v2/_catalog?last=b&n=2>; rel=\"next\"".parse().unwrap(),
        );
        assert_eq!(next_link(&h).as_deref(), Some("/v2/_catalog?last=b&n=2"));
        h.insert(
            header::LINK,
            "<https://r.example/v2/a/tags/list?last=x>; rel=\"next\""
                .parse()
                .unwrap(),
        );
        assert_eq!(next_link(&h).as_deref(), Some("/v2/a/tags/list?last=x"));
        assert_eq!(next_link(&header::HeaderMap::new()), None);
    }

    #[test]
    fn recognises_manifest_kinds() {
        assert!(
            ManifestKind::from_media_type("application/vnd.oci.image.index.v1+json").is_index()
        );
        assert!(
            ManifestKind::from_media_type(
                "application/vnd.docker.distribution.manifest.list.v2+json"
            )
            .is_index()
        );
        assert!(
            !ManifestKind::from_media_type("application/vnd.docker.distribution.manifest.v2+json")
                .is_index()
        );
        assert_eq!(
            ManifestKind::from_media_type("application/vnd.oci.image.manifest.v1+json"),
            ManifestKind::OciManifest
        );
    }
}
