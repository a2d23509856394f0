//! The registry edge: the OCI distribution API over HTTP (catalog, tags, manifest HEAD),
//! with anonymous, basic and bearer-token auth. [`Registry`] is the trait the pipeline
//! uses; [`HttpRegistry`] talks to real registries.
//!
//! Registries on 127.0.0.0/8, `[::1]` and `localhost` are plain HTTP (the Docker
//! convention) unless a certificate directory is there for them ([`Trust`]); any other host
//! only when named as insecure. TLS is always verified: a registry with its own CA gets it
//! from its certificate directory, as skopeo and Docker read it.

use crate::images::authfile::{Credentials, Login};
use crate::images::reference::{Digest, validate_domain, validate_path};
use crate::retry::{ErrorClass, ItemError};
use async_trait::async_trait;
use reqwest::{Method, StatusCode, header};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Manifest media types we ask for, most capable first.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// The largest manifest we read: 4 MiB, the limit the distribution spec suggests and
/// registries enforce on push.
pub const MANIFEST_LIMIT: usize = 4 << 20;
/// The largest page of a tag list or catalog we read.
pub const LIST_PAGE_LIMIT: usize = 8 << 20;
/// The largest tag list or catalog we read across all its pages.
pub const LISTING_LIMIT: usize = 64 << 20;
/// The largest token response we read.
pub const TOKEN_LIMIT: usize = 1 << 20;
/// How long one blob's download and upload may take in all (a stalled connection ends
/// sooner: the client's read timeout).
const BLOB_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// A registry answer we refuse: a malformed header, a body over its limit, a token realm
/// that would carry a login in the clear, a page chain that loops. Each fails the one image
/// or listing it belongs to (class `BadInput`, never retried); the message names the URL,
/// the header and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("{url}: malformed {header} header {value:?}: {expected}")]
    BadHeader {
        url: String,
        header: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{url}: {what} larger than {} (refused; a registry should not serve more)", human(*.limit))]
    TooLarge {
        url: String,
        what: &'static str,
        limit: usize,
    },
    #[error(
        "registry {host} names token realm {realm:?}: the login would travel in the clear; a realm must be https, or plain http on the registry's own host when the registry itself is plain HTTP (loopback or --insecure-registry); the login was not sent"
    )]
    InsecureRealm { host: String, realm: String },
    #[error("{url}: the Link header's next page {next:?} was already read (the page chain loops)")]
    LinkLoop { url: String, next: String },
    #[error(
        "{what}: its TLS certificate is not trusted ({cause}); put the CA that signed it in DIR/{address}/ca.crt and pass --registry-certs DIR, or in /etc/containers/certs.d/{address}/ca.crt (verification is never turned off)"
    )]
    Untrusted {
        /// "registry HOST" or "token realm URL of registry HOST".
        what: String,
        /// The registry's `HOST[:PORT]` (its certificate directory's name).
        address: String,
        cause: String,
    },
    #[error("certificate file {path}: {why}")]
    BadCertificate { path: String, why: String },
}

/// Where the certificate authorities of registries with their own CA (Harbor, JFrog,
/// a company CA) are found, as skopeo and Docker look for them: a directory per registry,
/// `DIR/HOST:PORT/`, whose `*.crt` files are CAs (PEM), looked for first under
/// `--registry-certs DIR`, then `/etc/containers/certs.d` and `/etc/docker/certs.d`. Those CAs
/// are trusted for that registry (and the token realm it names) beside the public roots.
/// `SSL_CERT_FILE`, when set, adds its CAs for every registry (skopeo, a Go program, reads
/// it too). The same directory is handed to skopeo (`--src-cert-dir`/`--dest-cert-dir`).
#[derive(Debug, Clone)]
pub struct Trust {
    dirs: Vec<PathBuf>,
    ssl_cert_file: Option<PathBuf>,
}

impl Default for Trust {
    fn default() -> Self {
        Self::system()
    }
}

impl Trust {
    /// The system's directories and `SSL_CERT_FILE`.
    pub fn system() -> Self {
        Self {
            dirs: vec![
                PathBuf::from("/etc/containers/certs.d"),
                PathBuf::from("/etc/docker/certs.d"),
            ],
            ssl_cert_file: std::env::var_os("SSL_CERT_FILE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        }
    }

    /// Looks in `dir` (laid out as /etc/containers/certs.d) before the system's directories.
    pub fn with_registry_certs(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dirs.insert(0, dir.into());
        self
    }

    /// The certificate directory of the registry at `address` (`HOST[:PORT]`), if one is there.
    pub fn cert_dir(&self, address: &str) -> Option<PathBuf> {
        if address.is_empty() || address.contains('/') || address.starts_with('.') {
            return None;
        }
        self.dirs
            .iter()
            .map(|d| d.join(address))
            .find(|p| p.is_dir())
    }

    /// The extra CAs for the registry at `address`: its directory's `*.crt` files, then
    /// `SSL_CERT_FILE`'s. A file that is not PEM certificates is an error naming it.
    pub fn roots(&self, address: &str) -> Result<Vec<reqwest::Certificate>, ResponseError> {
        let mut files = Vec::new();
        if let Some(dir) = self.cert_dir(address) {
            let bad = |why: String| ResponseError::BadCertificate {
                path: dir.display().to_string(),
                why,
            };
            let mut crts: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map_err(|e| bad(e.to_string()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "crt"))
                .collect();
            crts.sort();
            files.extend(crts);
        }
        files.extend(self.ssl_cert_file.iter().cloned());
        let mut out = Vec::new();
        for f in files {
            out.extend(read_pem_certificates(&f)?);
        }
        Ok(out)
    }
}

/// The certificates of a PEM file (at most 1 MiB), each one checked.
fn read_pem_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, ResponseError> {
    let bad = |why: String| ResponseError::BadCertificate {
        path: path.display().to_string(),
        why,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if meta.len() > 1 << 20 {
        return Err(bad("larger than 1 MiB".into()));
    }
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&bytes)
        .map_err(|e| bad(format!("not PEM certificates: {}", error_chain(&e))))?;
    if certs.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// Whether an HTTP client's error chain is a TLS certificate that did not verify.
fn is_untrusted(chain: &str) -> bool {
    let c = chain.to_ascii_lowercase();
    c.contains("invalid peer certificate") || c.contains("certificate verify failed")
}

fn http_client(roots: Vec<reqwest::Certificate>) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120))
        // Blob copies have no total limit of their own (a layer may take long); a
        // connection that stalls is given up after this.
        .read_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .user_agent(concat!("transfer-hub/", env!("CARGO_PKG_VERSION")));
    for c in roots {
        b = b.add_root_certificate(c);
    }
    b.build().map_err(|e| error_chain(&e))
}

impl From<ResponseError> for ItemError {
    fn from(e: ResponseError) -> Self {
        ItemError::new(ErrorClass::BadInput, e.to_string())
    }
}

fn human(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

/// A header value as printed in an error: at most 200 characters, control characters escaped.
fn shown(v: &[u8]) -> String {
    let s = String::from_utf8_lossy(v);
    let mut out: String = s.chars().take(200).collect();
    if s.chars().count() > 200 {
        out.push('…');
    }
    out
}

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
    /// The newest pull quota `host` reported (Docker Hub's `ratelimit-*` headers), if any.
    fn quota(&self, _host: &str) -> Option<Quota> {
        None
    }
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
    /// What an image is made of: its manifests (the index and each platform's) and the
    /// blobs they reference (configs, layers), each once. `None` when this registry client
    /// cannot tell (then copies are retried without progress accounting).
    async fn image_parts(
        &self,
        _host: &str,
        _repo: &str,
        _digest: &Digest,
    ) -> Result<Option<Vec<Part>>, ItemError> {
        Ok(None)
    }
    /// The bytes and media type of the manifest `digest`, checked against it; `None` when
    /// this registry client cannot read manifests.
    async fn get_manifest(
        &self,
        _host: &str,
        _repo: &str,
        _digest: &Digest,
    ) -> Result<Option<(Vec<u8>, String)>, ItemError> {
        Ok(None)
    }
    /// Stores a manifest under `reference` (a tag or its digest); `None` when this registry
    /// client cannot write manifests.
    async fn put_manifest(
        &self,
        _host: &str,
        _repo: &str,
        _reference: &str,
        _media_type: &str,
        _bytes: &[u8],
    ) -> Result<Option<()>, ItemError> {
        Ok(None)
    }
    /// Whether the repository holds the blob (a `HEAD` of it); `None` when this registry
    /// client cannot tell.
    async fn has_blob(
        &self,
        _host: &str,
        _repo: &str,
        _digest: &Digest,
    ) -> Result<Option<bool>, ItemError> {
        Ok(None)
    }
    /// Copies the blob `digest` from `source` to `dest` (each a `(host, repo)`) through this
    /// machine: streamed, never held whole, and hashed on the way. The upload is committed
    /// (`PUT …?digest=`, which the registry checks again) only when the bytes read hash to
    /// `digest`; else it is cancelled and the error is a `DigestMismatch`. `None` when this
    /// registry client cannot copy blobs.
    async fn copy_blob(
        &self,
        _source: (&str, &str),
        _dest: (&str, &str),
        _digest: &Digest,
    ) -> Result<Option<()>, ItemError> {
        Ok(None)
    }
    /// Asked before a login for `host` is handed to a copier (skopeo), which sends it to
    /// whatever token realm the registry names: the registry's challenge is read afresh
    /// (`GET /v2/` without credentials, skopeo's own first request) and a realm that may
    /// not receive the login is a named error ([`ResponseError::InsecureRealm`]) for that
    /// image. `Ok` when no login is held for `host` (nothing to leak).
    async fn check_login_realm(&self, _host: &str) -> Result<(), ItemError> {
        Ok(())
    }
}

/// One piece of an image, as [`Registry::image_parts`] lists them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Part {
    Manifest(Digest),
    Blob(Digest),
}

#[derive(Debug, Clone)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// A bearer token of one (registry, scope), and until when it is sent.
#[derive(Debug, Clone)]
struct Token {
    value: String,
    fresh_until: Instant,
}

/// How long a token is used after it was fetched: its `expires_in` (60 s when the realm
/// does not say, as the token spec has it), less a tenth of that (at most 30 s) so that no
/// request arrives with a token that has just run out.
pub fn token_life(expires_in: Option<u64>) -> Duration {
    let life = Duration::from_secs(expires_in.unwrap_or(60));
    life - (life / 10).min(Duration::from_secs(30))
}

/// What this client asked of one registry in a run: its requests (the registry's own API:
/// HEADs, GETs, uploads) and the token requests to the auth realm it names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RequestCount {
    pub requests: u64,
    pub token_requests: u64,
}

/// A registry's pull quota, as Docker Hub reports it on manifest requests
/// (`ratelimit-limit: 100;w=21600`, `ratelimit-remaining: 76;w=21600`): pulls allowed and
/// left in a window of `window_secs`. HEADs do not count against it; manifest GETs do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Quota {
    pub limit: u64,
    pub remaining: u64,
    pub window_secs: Option<u64>,
}

/// Reads one `ratelimit-*` value: `N` or `N;w=SECONDS` (what Docker Hub sends).
pub fn parse_ratelimit(v: &str) -> Result<(u64, Option<u64>), &'static str> {
    const EXPECTED: &str = "a count, optionally with its window: 100;w=21600";
    let mut parts = v.split(';').map(str::trim);
    let n = parts
        .next()
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or(EXPECTED)?;
    let mut window = None;
    for p in parts {
        match p.split_once('=') {
            Some(("w", w)) => window = Some(w.trim().parse::<u64>().map_err(|_| EXPECTED)?),
            Some(_) => {}
            None => return Err(EXPECTED),
        }
    }
    Ok((n, window))
}

/// The quota a registry's answer reports, if it has both headers; a malformed one is
/// logged (naming its value) and read as absent: a quota header never fails an image.
fn quota_of(host: &str, h: &header::HeaderMap) -> Option<Quota> {
    let read = |name: &str| -> Option<(u64, Option<u64>)> {
        let v = h.get(name)?;
        match v.to_str().map_err(|_| "text").and_then(parse_ratelimit) {
            Ok(x) => Some(x),
            Err(expected) => {
                tracing::warn!(registry = host, header = name, value = %shown(v.as_bytes()), expected, "ignoring a malformed rate-limit header");
                None
            }
        }
    };
    let (limit, w) = read("ratelimit-limit")?;
    let (remaining, w2) = read("ratelimit-remaining")?;
    Some(Quota {
        limit,
        remaining,
        window_secs: w2.or(w),
    })
}

/// Held while one token of a (registry, scope) is fetched.
type OneFetch = Arc<tokio::sync::Mutex<()>>;

/// A registry client over HTTP(S).
pub struct HttpRegistry {
    http: reqwest::Client,
    credentials: Credentials,
    insecure: HashSet<String>,
    addresses: HashMap<String, String>,
    challenges: Mutex<HashMap<String, Challenge>>,
    tokens: Mutex<HashMap<(String, String), Token>>,
    /// One token fetch at a time per (registry, scope): the requests that need the token
    /// wait for that fetch rather than each asking the realm.
    fetches: Mutex<HashMap<(String, String), OneFetch>>,
    counts: Mutex<BTreeMap<String, RequestCount>>,
    /// The newest pull quota each registry reported (Docker Hub), by host.
    quotas: Mutex<HashMap<String, Quota>>,
    trust: Trust,
    /// The HTTP client of each registry address with CAs of its own.
    clients: Mutex<HashMap<String, reqwest::Client>>,
    /// `--max-requests-per-second`: at most this many requests a second to each registry
    /// (its own pace, by address); `None` does not pace.
    max_rps: Option<u32>,
    paces: Mutex<HashMap<String, std::sync::Arc<crate::rate::Rate>>>,
}

impl HttpRegistry {
    /// A client with these logins; `insecure` hosts are spoken to over plain HTTP.
    /// CAs come from [`Trust::system`]; see [`Self::with_trust`].
    pub fn new(credentials: Credentials, insecure: impl IntoIterator<Item = String>) -> Self {
        let http = http_client(Vec::new()).expect("HTTP client builds");
        Self {
            http,
            credentials,
            insecure: insecure.into_iter().collect(),
            addresses: HashMap::new(),
            challenges: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            fetches: Mutex::new(HashMap::new()),
            counts: Mutex::new(BTreeMap::new()),
            quotas: Mutex::new(HashMap::new()),
            trust: Trust::system(),
            clients: Mutex::new(HashMap::new()),
            max_rps: None,
            paces: Mutex::new(HashMap::new()),
        }
    }

    /// At most `n` requests a second to each registry, spaced evenly (for registries that
    /// throttle without telling how). Token requests to an auth realm are not paced.
    pub fn with_max_requests_per_second(mut self, n: Option<u32>) -> Self {
        self.max_rps = n.filter(|n| *n > 0);
        self
    }

    /// Before each request to a registry: counts it, and waits for the registry's next
    /// request slot (`--max-requests-per-second`).
    async fn pace(&self, host: &str) {
        self.count(host, |c| c.requests += 1);
        let Some(n) = self.max_rps else {
            return;
        };
        let rate = self
            .paces
            .lock()
            .unwrap()
            .entry(self.address(host))
            .or_insert_with(|| {
                std::sync::Arc::new(crate::rate::Rate::new(n.into(), Duration::ZERO))
            })
            .clone();
        rate.take(1).await;
    }

    /// Where registries' own CAs are found (the default is [`Trust::system`]).
    pub fn with_trust(mut self, trust: Trust) -> Self {
        self.trust = trust;
        self.clients.lock().unwrap().clear();
        self
    }

    /// The certificate directory of registry `host` (what skopeo gets as `--*-cert-dir`);
    /// `None` when it has none or is spoken to over plain HTTP.
    pub fn cert_dir(&self, host: &str) -> Option<PathBuf> {
        if self.plain_http(host) {
            return None;
        }
        self.trust.cert_dir(&self.address(host))
    }

    /// The HTTP client for registry `host` (and the token realm it names): with its own CAs
    /// beside the public roots when it has some.
    fn client(&self, host: &str) -> Result<reqwest::Client, ItemError> {
        let address = self.address(host);
        if let Some(c) = self.clients.lock().unwrap().get(&address) {
            return Ok(c.clone());
        }
        let roots = self.trust.roots(&address)?;
        if roots.is_empty() {
            return Ok(self.http.clone());
        }
        let c = http_client(roots).map_err(|why| ResponseError::BadCertificate {
            path: self
                .trust
                .cert_dir(&address)
                .map(|d| d.display().to_string())
                .unwrap_or_else(|| "SSL_CERT_FILE".into()),
            why,
        })?;
        self.clients.lock().unwrap().insert(address, c.clone());
        Ok(c)
    }

    /// A request to `host` that got no answer: an untrusted certificate is named with where
    /// its CA goes; the rest as [`send_error`].
    fn failed(&self, method: &Method, host: &str, url: &str, chain: &str) -> ItemError {
        if is_untrusted(chain) {
            return ResponseError::Untrusted {
                what: format!("registry {host}"),
                address: self.address(host),
                cause: untrusted_cause(chain),
            }
            .into();
        }
        send_error(method, url, chain)
    }

    /// The setup check of one registry before a run: it answers `/v2/`, and, when the auth
    /// file has a login for it, accepts that login. The error is one line naming the
    /// registry, what happened and where the login came from.
    pub async fn check_reachable(&self, host: &str, authfile: &str) -> Result<(), String> {
        let address = self.address(host);
        let resp = match self.send(Method::GET, host, "/v2/", "").await {
            Ok(r) => r,
            Err(e) if e.class == ErrorClass::AuthDenied => {
                return Err(format!("registry {host}: {}", e.message));
            }
            // A refused answer (an insecure token realm, a malformed header) names itself.
            Err(e) if e.class == ErrorClass::BadInput => return Err(e.message),
            Err(e) => {
                let cause = e.message.rsplit(": ").next().unwrap_or(&e.message);
                let cause = cause.split(" (os error").next().unwrap_or(cause);
                return Err(format!(
                    "cannot reach registry {host} ({address}): {}",
                    cause.to_lowercase()
                ));
            }
        };
        match resp.status() {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => match self.credentials.get(host) {
                Some(l) => Err(format!(
                    "registry {host}: login refused for user {} (auth file {authfile})",
                    l.username
                )),
                // Anonymous access may still be allowed per repository.
                None => Ok(()),
            },
            _ => Ok(()),
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
    /// A loopback registry is, unless a certificate directory is there for it.
    pub fn plain_http(&self, host: &str) -> bool {
        let addr = self.address(host);
        if self.insecure.contains(host) || self.insecure.contains(&addr) {
            return true;
        }
        is_loopback_host(&addr) && self.trust.cert_dir(&addr).is_none()
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
            Challenge::Bearer { .. } => {
                self.fresh_token(host, scope).map(|t| format!("Bearer {t}"))
            }
        }
    }

    /// The token of `host` for `scope` while it is fresh ([`token_life`]).
    fn fresh_token(&self, host: &str, scope: &str) -> Option<String> {
        self.tokens
            .lock()
            .unwrap()
            .get(&(host.to_string(), scope.to_string()))
            .filter(|t| Instant::now() < t.fresh_until)
            .map(|t| t.value.clone())
    }

    /// What this client asked of each registry so far, by the host's name.
    pub fn request_counts(&self) -> BTreeMap<String, RequestCount> {
        self.counts.lock().unwrap().clone()
    }

    fn count(&self, host: &str, f: impl FnOnce(&mut RequestCount)) {
        f(self
            .counts
            .lock()
            .unwrap()
            .entry(host.to_string())
            .or_default());
    }

    /// Makes sure a fresh token of `host` for `scope` is held, fetching it from `realm` when
    /// it is not, or when it is the one the registry just `refused`. Requests that need the
    /// same token wait for one fetch.
    async fn ensure_token(
        &self,
        host: &str,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        refused: Option<&str>,
    ) -> Result<(), ItemError> {
        let key = (host.to_string(), scope.to_string());
        let fetch = self
            .fetches
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .clone();
        let _one = fetch.lock().await;
        if let Some(t) = self.fresh_token(host, scope)
            && refused != Some(t.as_str())
        {
            return Ok(());
        }
        let (value, expires_in) = self.fetch_token(host, realm, service, scope).await?;
        let fresh_until = Instant::now() + token_life(expires_in);
        self.tokens
            .lock()
            .unwrap()
            .insert(key, Token { value, fresh_until });
        Ok(())
    }

    /// HEAD of `path` in `repo` with pull scope: `None` when the registry answers 404, else
    /// the answer, checked for success.
    async fn head_pull(
        &self,
        host: &str,
        repo: &str,
        path: &str,
    ) -> Result<Option<reqwest::Response>, ItemError> {
        let scope = format!("repository:{repo}:pull");
        let resp = self.send(Method::HEAD, host, path, &scope).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        check(resp, host, path).map(Some)
    }

    async fn send(
        &self,
        method: Method,
        host: &str,
        path: &str,
        scope: &str,
    ) -> Result<reqwest::Response, ItemError> {
        self.send_with(method, host, path, scope, None, None).await
    }

    /// [`Self::send`] with a body (its content type and bytes), and a time limit of its own
    /// for the whole exchange, body included (else the client's).
    async fn send_with(
        &self,
        method: Method,
        host: &str,
        path: &str,
        scope: &str,
        body: Option<(&str, &[u8])>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, ItemError> {
        let url = self.url(host, path);
        let http = self.client(host)?;
        let mut authed = false;
        loop {
            let mut req = http
                .request(method.clone(), &url)
                .header(header::ACCEPT, MANIFEST_ACCEPT);
            if let Some((ctype, bytes)) = body {
                req = req.header(header::CONTENT_TYPE, ctype).body(bytes.to_vec());
            }
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            // A registry known to want bearer tokens gets the scope's token first, rather
            // than a request it would refuse.
            let known = self.challenges.lock().unwrap().get(host).cloned();
            if let Some(Challenge::Bearer { realm, service }) = known {
                self.ensure_token(host, &realm, service.as_deref(), scope, None)
                    .await?;
            }
            let sent = self.auth_header(host, scope);
            if let Some(h) = &sent {
                req = req.header(header::AUTHORIZATION, h);
            }
            self.pace(host).await;
            let resp = req
                .send()
                .await
                .map_err(|e| self.failed(&method, host, &url, &error_chain(&e)))?;
            if let Some(q) = quota_of(host, resp.headers()) {
                self.quotas.lock().unwrap().insert(host.to_string(), q);
            }
            if resp.status() != StatusCode::UNAUTHORIZED || authed {
                return Ok(resp);
            }
            authed = true;
            let challenge = match resp.headers().get(header::WWW_AUTHENTICATE) {
                None => {
                    return Err(ItemError::new(
                        ErrorClass::AuthDenied,
                        format!(
                            "{method} {url}: 401 Unauthorized without a WWW-Authenticate challenge"
                        ),
                    ));
                }
                Some(v) => {
                    parse_challenge(v.as_bytes()).map_err(|expected| ResponseError::BadHeader {
                        url: url.clone(),
                        header: "WWW-Authenticate",
                        value: shown(v.as_bytes()),
                        expected,
                    })?
                }
            };
            if let Challenge::Bearer { realm, service } = &challenge {
                self.check_realm(host, realm)?;
                let refused = sent.as_deref().and_then(|h| h.strip_prefix("Bearer "));
                self.ensure_token(host, realm, service.as_deref(), scope, refused)
                    .await?;
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

    /// Where an upload goes next, from the `Location` of the registry's last answer about it
    /// (`path` is what was asked): a path on the registry, or an absolute URL. `true` when that
    /// is the registry's own origin; the login goes nowhere else (an upload elsewhere is sent
    /// without it).
    fn upload_location(
        &self,
        host: &str,
        path: &str,
        h: &header::HeaderMap,
    ) -> Result<(String, bool), ResponseError> {
        let url = self.url(host, path);
        let bad = |value: &[u8]| ResponseError::BadHeader {
            url: url.clone(),
            header: "Location",
            value: shown(value),
            expected: "the upload's path or URL",
        };
        let Some(v) = h.get(header::LOCATION) else {
            return Err(bad(b""));
        };
        let base = reqwest::Url::parse(&url).map_err(|_| bad(v.as_bytes()))?;
        let at = v
            .to_str()
            .ok()
            .and_then(|s| base.join(s).ok())
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| bad(v.as_bytes()))?;
        let ours = at.origin() == base.origin();
        Ok((at.to_string(), ours))
    }

    /// `req` to an upload of `host` with the login for `scope`, when the upload is on the
    /// registry's own origin (`ours`, from [`Self::upload_location`]); else as it is.
    fn upload_login(
        &self,
        req: reqwest::RequestBuilder,
        host: &str,
        scope: &str,
        ours: bool,
    ) -> reqwest::RequestBuilder {
        match (ours, self.auth_header(host, scope)) {
            (true, Some(h)) => req.header(header::AUTHORIZATION, h),
            _ => req,
        }
    }

    /// A token realm gets the registry's login (as Docker sends it), so it must be https;
    /// plain http only when the registry itself is plain HTTP (loopback, or named with
    /// `--insecure-registry`) and the realm is on the registry's own host (any port), or
    /// the realm's host is itself named with `--insecure-registry`. An https realm may be
    /// on another host (Docker Hub's is auth.docker.io).
    fn check_realm(&self, host: &str, realm: &str) -> Result<(), ResponseError> {
        let insecure = |h: &str| self.insecure.contains(h);
        let address = self.address(host);
        if realm_allowed(realm, &address, self.plain_http(host), insecure) {
            Ok(())
        } else {
            Err(ResponseError::InsecureRealm {
                host: host.to_string(),
                realm: shown(realm.as_bytes()),
            })
        }
    }

    async fn fetch_token(
        &self,
        host: &str,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<(String, Option<u64>), ItemError> {
        self.count(host, |c| c.token_requests += 1);
        let mut req = self.client(host)?.get(realm);
        let mut query = vec![("scope", scope)];
        if let Some(s) = service {
            query.push(("service", s));
        }
        req = req.query(&query);
        if let Some(l) = self.credentials.get(host) {
            req = req.basic_auth(&l.username, Some(&l.password));
        }
        let resp = req.send().await.map_err(|e| {
            let chain = error_chain(&e);
            if is_untrusted(&chain) {
                return ResponseError::Untrusted {
                    what: format!("token realm {realm} of registry {host}"),
                    address: self.address(host),
                    cause: untrusted_cause(&chain),
                }
                .into();
            }
            ItemError::new(
                ErrorClass::Retryable,
                format!("token request to {realm}: {chain}"),
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
            expires_in: Option<u64>,
        }
        let body = read_capped(resp, TOKEN_LIMIT, "token response", realm).await?;
        let t: Tok = serde_json::from_slice(&body).map_err(|e| {
            ItemError::new(
                ErrorClass::Retryable,
                format!("token response from {realm}: {e}"),
            )
        })?;
        let token = t.token.or(t.access_token).ok_or_else(|| {
            ItemError::new(
                ErrorClass::AuthDenied,
                format!("token response from {realm} has no token"),
            )
        })?;
        Ok((token, t.expires_in))
    }

    /// GETs a JSON body of at most `limit` bytes; returns it parsed, with the path of the
    /// next page (`Link`) and the body's size.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        host: &str,
        path: &str,
        scope: &str,
        limit: usize,
        what: &'static str,
    ) -> Result<(T, Option<String>, usize), ItemError> {
        let resp = self.send(Method::GET, host, path, scope).await?;
        let resp = check(resp, host, path)?;
        let url = format!("GET {host}{path}");
        let next = next_link(resp.headers(), &url)?;
        let body = read_capped(resp, limit, what, &url).await?;
        let v = serde_json::from_slice::<T>(&body).map_err(|e| {
            ItemError::new(
                ErrorClass::Retryable,
                format!("{url}: unreadable body: {e}"),
            )
        })?;
        Ok((v, next, body.len()))
    }

    /// Reads every page of a listing: each page at most [`LIST_PAGE_LIMIT`], all of them
    /// together at most [`LISTING_LIMIT`], and no page twice.
    async fn paginate<T, F>(
        &self,
        host: &str,
        first: String,
        scope: &str,
        what: &'static str,
        mut take: F,
    ) -> Result<(), ItemError>
    where
        T: serde::de::DeserializeOwned,
        F: FnMut(T),
    {
        let mut path = first;
        let mut seen = HashSet::new();
        let mut total = 0usize;
        loop {
            seen.insert(path.clone());
            let (page, next, size) = self
                .get_json::<T>(host, &path, scope, LIST_PAGE_LIMIT, what)
                .await?;
            total += size;
            if total > LISTING_LIMIT {
                return Err(ResponseError::TooLarge {
                    url: format!("GET {host}{path}"),
                    what,
                    limit: LISTING_LIMIT,
                }
                .into());
            }
            take(page);
            match next {
                Some(n) if seen.contains(&n) => {
                    return Err(ResponseError::LinkLoop {
                        url: format!("GET {host}{path}"),
                        next: n,
                    }
                    .into());
                }
                Some(n) => path = n,
                None => return Ok(()),
            }
        }
    }
}

/// The body's length as announced: absent, or a number (a malformed value is refused).
fn declared_length(h: &header::HeaderMap, url: &str) -> Result<Option<u64>, ResponseError> {
    let Some(v) = h.get(header::CONTENT_LENGTH) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| ResponseError::BadHeader {
            url: url.to_string(),
            header: "Content-Length",
            value: shown(v.as_bytes()),
            expected: "a number of bytes",
        })
}

/// Reads a body of at most `limit` bytes, chunk by chunk: an announced or actual length
/// over the limit stops the read at once (memory stays at the limit, whatever is sent).
async fn read_capped(
    mut resp: reqwest::Response,
    limit: usize,
    what: &'static str,
    url: &str,
) -> Result<Vec<u8>, ItemError> {
    let too_large = || ResponseError::TooLarge {
        url: url.to_string(),
        what,
        limit,
    };
    let announced = declared_length(resp.headers(), url)?;
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(too_large().into());
    }
    let mut body = Vec::with_capacity(announced.unwrap_or(0) as usize);
    while let Some(chunk) = resp.chunk().await.map_err(|e| {
        ItemError::new(
            ErrorClass::Retryable,
            format!("{url}: reading the body: {}", error_chain(&e)),
        )
    })? {
        if body.len() + chunk.len() > limit {
            return Err(too_large().into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Whether a token realm may receive the login of the registry at `address`: https always
/// (on any host); http only when the registry is plain HTTP and the realm is on its host
/// (the port may differ: token servers often sit beside the registry), or the realm's
/// `host[:port]` is named insecure. So a plain-HTTP registry cannot send its login in the
/// clear to a host of its choosing.
fn realm_allowed(
    realm: &str,
    address: &str,
    registry_plain_http: bool,
    insecure: impl Fn(&str) -> bool,
) -> bool {
    let Ok(u) = reqwest::Url::parse(realm) else {
        return false;
    };
    let authority = match (u.host_str(), u.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        (None, _) => return false,
    };
    let same_host = match reqwest::Url::parse(&format!("http://{address}/")) {
        Ok(r) => r.host_str().is_some() && r.host_str() == u.host_str(),
        Err(_) => false,
    };
    match u.scheme() {
        "https" => true,
        "http" => (registry_plain_http && same_host) || insecure(&authority),
        _ => false,
    }
}

fn basic(l: &Login) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", l.username, l.password))
    )
}

/// A request that got no usable answer: the HTTP client's own refusals of a malformed
/// answer (a bad `Content-Length` or header line) are named and not retried; everything
/// else (refused, reset, timed out) is retryable.
fn send_error(method: &Method, url: &str, chain: &str) -> ItemError {
    let malformed = [
        ("invalid content-length", "Content-Length"),
        ("invalid http header", "header line"),
    ]
    .into_iter()
    .find(|(needle, _)| chain.to_ascii_lowercase().contains(needle));
    match malformed {
        Some((_, what)) => ItemError::new(
            ErrorClass::BadInput,
            format!(
                "{method} {url}: malformed {what} in the answer (refused by the HTTP client): {chain}"
            ),
        ),
        None => ItemError::new(ErrorClass::Retryable, format!("{method} {url}: {chain}")),
    }
}

/// The TLS part of an untrusted certificate's error chain ("invalid peer certificate: UnknownIssuer").
fn untrusted_cause(chain: &str) -> String {
    let lower = chain.to_ascii_lowercase();
    let at = lower
        .find("invalid peer certificate")
        .or_else(|| lower.find("certificate verify failed"))
        .unwrap_or(0);
    chain[at..].to_string()
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
    let retry_after = resp
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::retry::parse_retry_after(v, chrono::Utc::now()));
    Err(ItemError::new(class, format!("{host}{path}: {status}")).with_retry_after(retry_after))
}

const CHALLENGE_EXPECTED: &str = "Basic realm=\"…\" or Bearer realm=\"https://…\",service=\"…\"";

/// Parses a `WWW-Authenticate` header: `Basic realm="…"` or `Bearer realm="…",service="…",scope="…"`.
/// Anything else is refused with what was expected.
fn parse_challenge(raw: &[u8]) -> Result<Challenge, &'static str> {
    let h = std::str::from_utf8(raw)
        .map_err(|_| CHALLENGE_EXPECTED)?
        .trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Ok(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(CHALLENGE_EXPECTED);
    }
    let mut params = HashMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (k, after) = s.split_once('=').ok_or(CHALLENGE_EXPECTED)?;
        let after = after.trim_start();
        let (v, remain) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"').ok_or(CHALLENGE_EXPECTED)?;
            (&q[..end], &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.insert(k.trim().to_ascii_lowercase(), v.to_string());
        s = remain.trim_start_matches([',', ' ']);
    }
    let realm = params
        .remove("realm")
        .filter(|r| !r.is_empty())
        .ok_or(CHALLENGE_EXPECTED)?;
    Ok(Challenge::Bearer {
        realm,
        service: params.remove("service"),
    })
}

const LINK_EXPECTED: &str = "<PATH>; rel=\"next\" with a /v2/ path on the same registry";

/// The path of the next page from a `Link: <…>; rel="next"` header (absolute links keep
/// only their path and query: we never follow a page to another host). A `Link` with a
/// next page we cannot read is refused, so a listing is never cut short unnoticed.
fn next_link(h: &header::HeaderMap, url: &str) -> Result<Option<String>, ResponseError> {
    let Some(raw) = h.get(header::LINK) else {
        return Ok(None);
    };
    let bad = || ResponseError::BadHeader {
        url: url.to_string(),
        header: "Link",
        value: shown(raw.as_bytes()),
        expected: LINK_EXPECTED,
    };
    let v = raw.to_str().map_err(|_| bad())?;
    let Some(part) = v
        .split(',')
        .find(|p| p.contains("rel=\"next\"") || p.contains("rel=next"))
    else {
        return Ok(None);
    };
    let start = part.find('<').ok_or_else(bad)? + 1;
    let len = part[start..].find('>').ok_or_else(bad)?;
    let target = part[start..start + len].trim();
    let path = match target.find("://") {
        Some(i) => {
            let rest = &target[i + 3..];
            &rest[rest.find('/').ok_or_else(bad)?..]
        }
        None => target,
    };
    if !path.starts_with("/v2/") {
        return Err(bad());
    }
    Ok(Some(path.to_string()))
}

#[async_trait]
impl Registry for HttpRegistry {
    fn quota(&self, host: &str) -> Option<Quota> {
        self.quotas.lock().unwrap().get(host).copied()
    }

    async fn check_login_realm(&self, host: &str) -> Result<(), ItemError> {
        if self.credentials.get(host).is_none() {
            return Ok(());
        }
        let url = self.url(host, "/v2/");
        let resp = self
            .client(host)?
            .get(&url)
            .send()
            .await
            .map_err(|e| self.failed(&Method::GET, host, &url, &error_chain(&e)))?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(());
        }
        let Some(v) = resp.headers().get(header::WWW_AUTHENTICATE) else {
            return Ok(());
        };
        match parse_challenge(v.as_bytes()) {
            Ok(Challenge::Bearer { realm, .. }) => Ok(self.check_realm(host, &realm)?),
            Ok(Challenge::Basic) => Ok(()),
            Err(expected) => Err(ResponseError::BadHeader {
                url,
                header: "WWW-Authenticate",
                value: shown(v.as_bytes()),
                expected,
            }
            .into()),
        }
    }

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
            "repository catalog",
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
        self.paginate::<Tags, _>(
            host,
            format!("/v2/{repo}/tags/list?n=1000"),
            &scope,
            "tag list",
            |t| out.extend(t.tags.unwrap_or_default()),
        )
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
        let Some(resp) = self.head_pull(host, repo, &path).await? else {
            return Ok(None);
        };
        let url = format!("HEAD {host}{path}");
        if declared_length(resp.headers(), &url)?.is_some_and(|n| n > MANIFEST_LIMIT as u64) {
            return Err(ResponseError::TooLarge {
                url,
                what: "manifest",
                limit: MANIFEST_LIMIT,
            }
            .into());
        }
        let media_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let digest = match resp.headers().get("docker-content-digest") {
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<Digest>().ok())
                .ok_or_else(|| ResponseError::BadHeader {
                    url: url.clone(),
                    header: "Docker-Content-Digest",
                    value: shown(v.as_bytes()),
                    expected: "sha256: followed by 64 lowercase hex digits",
                })?,
            None => {
                // Some registries omit the header on HEAD: hash the manifest body instead.
                let resp = check(
                    self.send(Method::GET, host, &path, &format!("repository:{repo}:pull"))
                        .await?,
                    host,
                    &path,
                )?;
                let body = read_capped(
                    resp,
                    MANIFEST_LIMIT,
                    "manifest",
                    &format!("GET {host}{path}"),
                )
                .await?;
                Digest::sha256_of(&body)
            }
        };
        Ok(Some(ManifestInfo { digest, media_type }))
    }

    async fn image_size(&self, host: &str, repo: &str, digest: &Digest) -> Result<u64, ItemError> {
        let scope = format!("repository:{repo}:pull");
        let (m, _, _) = self
            .get_json::<ManifestParts>(
                host,
                &format!("/v2/{repo}/manifests/{digest}"),
                &scope,
                MANIFEST_LIMIT,
                "manifest",
            )
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
            let (cm, _, _) = self
                .get_json::<ManifestParts>(
                    host,
                    &format!("/v2/{repo}/manifests/{d}"),
                    &scope,
                    MANIFEST_LIMIT,
                    "manifest",
                )
                .await?;
            total +=
                cm.config.map_or(0, |c| c.size) + cm.layers.iter().map(|l| l.size).sum::<u64>();
        }
        Ok(total)
    }

    async fn image_parts(
        &self,
        host: &str,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<Vec<Part>>, ItemError> {
        let scope = format!("repository:{repo}:pull");
        let parse = |d: &Descriptor| d.digest.as_deref().and_then(|d| d.parse::<Digest>().ok());
        let mut parts = vec![Part::Manifest(digest.clone())];
        let mut todo = vec![digest.clone()];
        let mut seen = HashSet::new();
        while let Some(d) = todo.pop() {
            if !seen.insert(d.clone()) {
                continue;
            }
            let (m, _, _) = self
                .get_json::<ManifestParts>(
                    host,
                    &format!("/v2/{repo}/manifests/{d}"),
                    &scope,
                    MANIFEST_LIMIT,
                    "manifest",
                )
                .await?;
            // Only an index's own children are followed (one level, as the registry nests).
            for child in m.manifests.iter().filter_map(parse) {
                if d == *digest {
                    parts.push(Part::Manifest(child.clone()));
                    todo.push(child);
                }
            }
            for b in m.config.iter().chain(&m.layers).filter_map(parse) {
                parts.push(Part::Blob(b));
            }
        }
        let mut once = HashSet::new();
        parts.retain(|p| once.insert(p.clone()));
        Ok(Some(parts))
    }

    async fn get_manifest(
        &self,
        host: &str,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<(Vec<u8>, String)>, ItemError> {
        let path = format!("/v2/{repo}/manifests/{digest}");
        let scope = format!("repository:{repo}:pull");
        let resp = check(
            self.send(Method::GET, host, &path, &scope).await?,
            host,
            &path,
        )?;
        let media_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let url = format!("GET {host}{path}");
        let body = read_capped(resp, MANIFEST_LIMIT, "manifest", &url).await?;
        let got = Digest::sha256_of(&body);
        if got != *digest {
            return Err(ItemError::new(
                ErrorClass::DigestMismatch,
                format!("{url}: the manifest read has digest {got}"),
            ));
        }
        Ok(Some((body, media_type)))
    }

    async fn put_manifest(
        &self,
        host: &str,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Option<()>, ItemError> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let scope = format!("repository:{repo}:pull,push");
        let resp = self
            .send_with(
                Method::PUT,
                host,
                &path,
                &scope,
                Some((media_type, bytes)),
                None,
            )
            .await?;
        check(resp, host, &path)?;
        Ok(Some(()))
    }

    async fn has_blob(
        &self,
        host: &str,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<bool>, ItemError> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        Ok(Some(self.head_pull(host, repo, &path).await?.is_some()))
    }

    async fn copy_blob(
        &self,
        (src_host, src_repo): (&str, &str),
        (host, repo): (&str, &str),
        digest: &Digest,
    ) -> Result<Option<()>, ItemError> {
        use futures::StreamExt;
        use sha2::Digest as _;
        if digest.algorithm() != "sha256" {
            return Ok(None);
        }
        // An upload session at the destination (this also gets the push token).
        let scope = format!("repository:{repo}:pull,push");
        let uploads = format!("/v2/{repo}/blobs/uploads/");
        let started = self
            .send_with(
                Method::POST,
                host,
                &uploads,
                &scope,
                Some(("application/octet-stream", &[])),
                None,
            )
            .await?;
        let started = check(started, host, &uploads)?;
        let (mut at, mut ours) = self.upload_location(host, &uploads, started.headers())?;
        // The source's bytes, hashed as they pass.
        let path = format!("/v2/{src_repo}/blobs/{digest}");
        let source_scope = format!("repository:{src_repo}:pull");
        let got = self
            .send_with(
                Method::GET,
                src_host,
                &path,
                &source_scope,
                None,
                Some(BLOB_TIMEOUT),
            )
            .await?;
        let got = check(got, src_host, &path)?;
        let length = declared_length(got.headers(), &format!("GET {src_host}{path}"))?;
        let hashed = std::sync::Arc::new(Mutex::new((sha2::Sha256::new(), 0u64)));
        let tally = hashed.clone();
        let body = got.bytes_stream().map(move |chunk| {
            if let Ok(c) = &chunk {
                let mut t = tally.lock().unwrap();
                t.0.update(c);
                t.1 += c.len() as u64;
            }
            chunk
        });
        let mut patch = self
            .client(host)?
            .patch(&at)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .timeout(BLOB_TIMEOUT)
            .body(reqwest::Body::wrap_stream(body));
        if let Some(n) = length {
            patch = patch.header(header::CONTENT_LENGTH, n);
        }
        patch = self.upload_login(patch, host, &scope, ours);
        self.pace(host).await;
        let sent = patch
            .send()
            .await
            .map_err(|e| self.failed(&Method::PATCH, host, &at, &error_chain(&e)))?;
        let sent = check(sent, host, &uploads)?;
        (at, ours) = self.upload_location(host, &uploads, sent.headers())?;
        let (hasher, bytes) = std::mem::take(&mut *hashed.lock().unwrap());
        let read = hex::encode(hasher.finalize());
        if read != digest.hex() {
            // Nothing is committed: the upload is cancelled (best effort; registries also
            // expire abandoned uploads).
            let cancel = self.client(host)?.delete(&at);
            let _ = self.upload_login(cancel, host, &scope, ours).send().await;
            return Err(ItemError::new(
                ErrorClass::DigestMismatch,
                format!(
                    "GET {src_host}{path}: the {bytes} bytes read have digest sha256:{read}; nothing was stored at {host}"
                ),
            ));
        }
        let sep = if at.contains('?') { '&' } else { '?' };
        let mut commit = self
            .client(host)?
            .put(format!("{at}{sep}digest={digest}"))
            .header(header::CONTENT_LENGTH, 0);
        commit = self.upload_login(commit, host, &scope, ours);
        self.pace(host).await;
        let done = commit
            .send()
            .await
            .map_err(|e| self.failed(&Method::PUT, host, &at, &error_chain(&e)))?;
        check(done, host, &uploads)?;
        Ok(Some(()))
    }
}

/// What [`Registry::image_size`] and [`Registry::image_parts`] read of a manifest or index:
/// the descriptors of its config, layers and child manifests.
#[derive(Deserialize)]
struct ManifestParts {
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(default)]
    size: u64,
    #[serde(default)]
    digest: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_location_gets_the_login_only_on_the_registrys_own_origin() {
        let reg = HttpRegistry::new(Credentials::default(), Vec::<String>::new());
        let at = |v: Option<&str>| {
            let mut h = header::HeaderMap::new();
            if let Some(v) = v {
                h.insert(header::LOCATION, header::HeaderValue::from_str(v).unwrap());
            }
            reg.upload_location("reg.example", "/v2/app/blobs/uploads/", &h)
        };
        assert_eq!(
            at(Some("/v2/app/blobs/uploads/u1?_state=x")).unwrap(),
            (
                "https://reg.example/v2/app/blobs/uploads/u1?_state=x".to_string(),
                true
            )
        );
        assert!(
            at(Some("https://reg.example/v2/app/blobs/uploads/u2"))
                .unwrap()
                .1
        );
        for foreign in [
            "https://uploads.elsewhere.example/u3",
            "http://reg.example/v2/app/blobs/uploads/u4",
            "https://reg.example:8443/v2/app/blobs/uploads/u5",
        ] {
            let (url, ours) = at(Some(foreign)).unwrap();
            assert!(!ours, "{foreign} is another origin: sent without the login");
            assert_eq!(url, foreign);
        }
        for bad in [None, Some("ftp://reg.example/u"), Some("http://[::1")] {
            let e = at(bad).unwrap_err().to_string();
            assert!(
                e.contains("Location") && e.contains("upload"),
                "{bad:?}: {e}"
            );
        }
    }

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
            parse_challenge(b"Basic realm=\"Registry Realm\""),
            Ok(Challenge::Basic)
        ));
        match parse_challenge(
            br#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull""#,
        ) {
            Ok(Challenge::Bearer { realm, service }) => {
                assert_eq!(realm, "https://auth.docker.io/token");
                assert_eq!(service.as_deref(), Some("registry.docker.io"));
            }
            other => panic!("{other:?}"),
        }
        for hostile in [
            &b"Bearer service=x"[..],
            b"Negotiate abc",
            b"Bearer realm",
            b"Bearer realm=\"unterminated",
            b"Bearer realm=\"\"",
            b"Bearer \xff\xfe",
            b"",
        ] {
            assert_eq!(
                parse_challenge(hostile).unwrap_err(),
                CHALLENGE_EXPECTED,
                "{}",
                String::from_utf8_lossy(hostile)
            );
        }
    }

    fn link(v: &[u8]) -> Result<Option<String>, ResponseError> {
        let mut h = header::HeaderMap::new();
        h.insert(header::LINK, header::HeaderValue::from_bytes(v).unwrap());
        next_link(&h, "GET r/v2/a/tags/list")
    }

    #[test]
    fn follows_link_headers() {
        assert_eq!(
            link(b"</v2/_catalog?last=b&n=2>; rel=\"next\"")
                .unwrap()
                .as_deref(),
            Some("/v2/_catalog?last=b&n=2")
        );
        assert_eq!(
            link(b"<https://r.example/v2/a/tags/list?last=x>; rel=\"next\"")
                .unwrap()
                .as_deref(),
            Some("/v2/a/tags/list?last=x")
        );
        assert_eq!(link(b"</v2/x>; rel=\"prev\"").unwrap(), None);
        assert_eq!(next_link(&header::HeaderMap::new(), "u"), Ok(None));
    }

    #[test]
    fn hostile_link_headers_are_named_errors_not_panics() {
        for hostile in [
            &b">; rel=\"next\" </v2/x"[..], // '>' before '<': used to slice out of order
            b"</v2/x; rel=\"next\"",        // never closed
            b"rel=\"next\"",                // no target
            b"<.evil.example/v2/x>; rel=\"next\"", // would glue onto the registry's host name
            b"<//evil.example/v2/x>; rel=\"next\"",
            b"<https://evil.example>; rel=\"next\"",
            b"<\xe9/v2/x>; rel=\"next\"",
        ] {
            match link(hostile) {
                Err(ResponseError::BadHeader {
                    header, expected, ..
                }) => {
                    assert_eq!((header, expected), ("Link", LINK_EXPECTED));
                }
                other => panic!("{}: {other:?}", String::from_utf8_lossy(hostile)),
            }
        }
        let e = ItemError::from(link(b">; rel=\"next\" <").unwrap_err());
        assert_eq!(e.class, ErrorClass::BadInput);
        assert!(e.message.contains("malformed Link header"), "{}", e.message);
    }

    #[test]
    fn content_lengths_parse_or_are_named_errors() {
        let mut h = header::HeaderMap::new();
        assert_eq!(declared_length(&h, "u"), Ok(None));
        h.insert(header::CONTENT_LENGTH, "123".parse().unwrap());
        assert_eq!(declared_length(&h, "u"), Ok(Some(123)));
        for bad in ["-1", "12x", "99999999999999999999999", ""] {
            h.insert(header::CONTENT_LENGTH, bad.parse().unwrap());
            assert!(
                matches!(
                    declared_length(&h, "u"),
                    Err(ResponseError::BadHeader {
                        header: "Content-Length",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn answers_the_http_client_refuses_are_named_and_other_send_errors_retried() {
        let e = send_error(
            &Method::GET,
            "http://r/v2/a/tags/list",
            "error sending request: client error (SendRequest): invalid content-length parsed",
        );
        assert_eq!(e.class, ErrorClass::BadInput);
        assert!(
            e.message.contains("malformed Content-Length in the answer"),
            "{}",
            e.message
        );
        let e = send_error(
            &Method::HEAD,
            "http://r/v2/",
            "tcp connect error: Connection refused",
        );
        assert_eq!(e.class, ErrorClass::Retryable);
    }

    #[test]
    fn docker_hubs_rate_limit_headers_are_read_and_a_malformed_one_is_ignored() {
        assert_eq!(parse_ratelimit("100;w=21600"), Ok((100, Some(21600))));
        assert_eq!(parse_ratelimit(" 76 "), Ok((76, None)));
        assert_eq!(parse_ratelimit("5; w=60; comment=x"), Ok((5, Some(60))));
        for bad in ["", "-1", "many", "100;w=", "100;w=soon", "100;junk", "1e3"] {
            assert!(parse_ratelimit(bad).is_err(), "{bad:?}");
        }
        let mut h = header::HeaderMap::new();
        assert_eq!(quota_of("docker.io", &h), None);
        h.insert("ratelimit-limit", "100;w=21600".parse().unwrap());
        h.insert("ratelimit-remaining", "76;w=21600".parse().unwrap());
        assert_eq!(
            quota_of("docker.io", &h),
            Some(Quota {
                limit: 100,
                remaining: 76,
                window_secs: Some(21600)
            })
        );
        h.insert("ratelimit-remaining", "lots".parse().unwrap());
        assert_eq!(quota_of("docker.io", &h), None);
        h.insert(
            "ratelimit-remaining",
            header::HeaderValue::from_bytes(b"\xff").unwrap(),
        );
        assert_eq!(quota_of("docker.io", &h), None);
    }

    #[test]
    fn a_token_is_used_for_its_expires_in_less_a_margin() {
        assert_eq!(token_life(Some(3600)), Duration::from_secs(3570));
        assert_eq!(token_life(Some(300)), Duration::from_secs(270));
        // The token spec's default when the realm does not say.
        assert_eq!(token_life(None), Duration::from_secs(54));
        assert_eq!(token_life(Some(0)), Duration::ZERO);
        for s in [1u64, 7, 59, 61, 299, 301, 86_400, u32::MAX as u64] {
            let life = token_life(Some(s));
            assert!(life <= Duration::from_secs(s), "{s}");
            assert!(life >= Duration::from_secs(s) * 9 / 10, "{s}");
        }
    }

    #[test]
    fn a_token_realm_must_be_https_unless_the_registry_is_plain_http() {
        let none = |_: &str| false;
        assert!(realm_allowed(
            "https://auth.docker.io/token",
            "registry-1.docker.io",
            false,
            none
        ));
        assert!(!realm_allowed(
            "http://auth.example/token",
            "auth.example",
            false,
            none
        ));
        // A plain-HTTP registry: http on its own host (any port), not on another one.
        assert!(realm_allowed(
            "http://harbor.lan:8081/token",
            "harbor.lan:8080",
            true,
            none
        ));
        assert!(!realm_allowed(
            "http://auth.example/token",
            "harbor.lan:8080",
            true,
            none
        ));
        assert!(!realm_allowed(
            "http://localhost:9/token",
            "127.0.0.1:5000",
            true,
            none
        ));
        // An https registry never sends its login over http, loopback realm or not.
        assert!(!realm_allowed(
            "http://127.0.0.1:9/token",
            "quay.io",
            false,
            none
        ));
        // Unless the realm's host is named insecure itself.
        assert!(realm_allowed(
            "http://auth.lan:9/token",
            "harbor.lan:8080",
            true,
            |h: &str| h == "auth.lan:9"
        ));
        for odd in [
            "ftp://x/token",
            "file:///etc/passwd",
            "not a url",
            "/token",
            "",
        ] {
            assert!(!realm_allowed(odd, "x", true, none), "{odd}");
        }
        let r = HttpRegistry::new(Credentials::default(), Vec::<String>::new());
        let e = r
            .check_realm("quay.io", "http://quay.io/v2/auth")
            .unwrap_err();
        assert!(matches!(e, ResponseError::InsecureRealm { .. }));
        assert!(e.to_string().contains("must be https"), "{e}");
        assert!(
            r.check_realm("127.0.0.1:5000", "http://127.0.0.1:5001/token")
                .is_ok()
        );
        assert!(
            r.check_realm("127.0.0.1:5000", "http://localhost:5001/token")
                .is_err(),
            "another host, even one on this machine"
        );
        assert!(r.check_realm("quay.io", "https://quay.io/v2/auth").is_ok());
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
