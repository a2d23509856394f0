//! The copy edge: [`Copier`] moves one image; [`Skopeo`] does it with the real
//! `skopeo copy --all --preserve-digests`, reading logins only from a private temp auth
//! file. Its error text is classified ([`ErrorClass::from_copy_output`]) and scrubbed of
//! secrets before it goes anywhere.

use crate::images::authfile::{AuthFileError, Credentials, TempAuthFile};
use crate::images::plan::ImageName;
use crate::images::registry::{HttpRegistry, Part, Registry};
use crate::interrupt::{Stop, interrupted};
use crate::retry::{ErrorClass, ItemError, RetryPolicy, with_progress_retries_until, with_retries};
use async_trait::async_trait;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;

/// Moves one image from `source` to `dest` (one attempt; retries are the caller's).
#[async_trait]
pub trait Copier: Send + Sync {
    async fn copy(&self, source: &ImageName, dest: &ImageName) -> Result<(), ItemError>;
}

/// Copies `source` (pinned by digest) to `dest` with `copier`, retrying as
/// [`with_progress_retries_until`] does: an attempt that failed after getting one more of the
/// image's blobs or manifests to the destination than any attempt before did not use up a
/// retry. Progress is what the destination holds, asked of it after each failed attempt
/// (`HEAD` of each blob and manifest of the image, through `registry`): skopeo stops at its
/// first failed request and prints, when not on a terminal, only which blob it *starts*;
/// the destination says what actually landed (and what the next attempt will reuse).
///
/// When every blob has landed and only manifests are missing, the next attempt stores them
/// itself (the platforms', then the image's own) (its bytes read from the source by digest and checked, one `PUT`, each
/// request retried on its own and after any `Retry-After`) instead of running the whole
/// copy again for it (an index's whole copy is some 14 requests, any of which fails it).
/// The registry refuses a manifest whose parts are missing, and the destination digest is
/// checked after the copy as always.
///
/// After a whole copy of an index failed, the next attempts copy each platform that still
/// misses blobs on its own, by digest (`src@sha256:P` to `dest@sha256:P`, no tag written),
/// store directly the manifest of a platform whose blobs are all there, and then store the
/// index itself directly ([`per_platform`]). A whole index copy asks the destination about
/// every blob of every platform again, so with a share of requests failing, its later
/// attempts landed nothing new and the retries ran out; one platform's copy needs only that
/// platform's requests. Same copier, same logins, same realm checks.
///
/// An ECR side is asked through ECR's registry protocol with the ECR login token (see
/// [`crate::images::ecr::Registries`]). Where the destination cannot be asked (a source manifest
/// that cannot be read), every failure counts, as before. The same for the CLI's sync and
/// the copy worker.
pub async fn copy_with_retries(
    copier: &dyn Copier,
    registry: &dyn Registry,
    policy: &RetryPolicy,
    stop: &Stop,
    source: &ImageName,
    dest: &ImageName,
) -> (Result<(), ItemError>, u32) {
    let parts: tokio::sync::OnceCell<Option<Vec<Part>>> = tokio::sync::OnceCell::new();
    let parts = &parts;
    let platforms: tokio::sync::OnceCell<Option<Vec<Vec<Part>>>> = tokio::sync::OnceCell::new();
    let platforms = &platforms;
    // What the last look at the destination found (none before the first failed attempt).
    let seen: &std::sync::Mutex<Seen> = &Default::default();
    let probe = || async move {
        let digest = source.digest.as_ref()?;
        let parts = parts
            .get_or_init(|| async {
                let (r, _) = with_retries(policy, |_| {
                    registry.image_parts(&source.host, &source.repo, digest)
                })
                .await;
                r.ok().flatten()
            })
            .await
            .as_ref()?;
        let (n, left, present) = landed(registry, policy, dest, parts).await?;
        *seen.lock().unwrap() = Seen {
            missing: left,
            present: Some(present),
        };
        Some(n)
    };
    let attempt = |_| async move {
        let (left, present) = {
            let s = seen.lock().unwrap();
            (s.missing.clone(), s.present.clone())
        };
        if !left.is_empty() {
            let mut all = true;
            for d in &left {
                // The image's own manifest goes under the destination reference, the
                // platforms' (stored first) under their digests.
                let top = source.digest.as_ref() == Some(d);
                match put_manifest(registry, policy, source, d, dest, top).await {
                    Ok(true) => {}
                    Ok(false) => {
                        all = false;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if all {
                return Ok(());
            }
        }
        // skopeo sends each login to the token realm its registry names: a realm that may
        // not have it fails the image here, before the login reaches skopeo.
        registry.check_login_realm(&source.host).await?;
        registry.check_login_realm(&dest.host).await?;
        // A whole copy failed before (the destination was looked at since): an index now
        // goes platform by platform.
        if let (Some(present), Some(Some(all))) = (present, parts.get())
            && is_index(all)
        {
            let platforms = platforms
                .get_or_init(|| platform_parts(registry, policy, source, all))
                .await;
            if let Some(platforms) = platforms {
                let done =
                    per_platform(copier, registry, policy, source, dest, platforms, &present)
                        .await?;
                if done {
                    return Ok(());
                }
            }
        }
        copier.copy(source, dest).await
    };
    with_progress_retries_until(policy, stop, attempt, probe).await
}

/// What the last look at the destination found: the manifests to store directly (when every
/// blob is there), and every part it holds (`None` until it was first looked at).
#[derive(Default)]
struct Seen {
    missing: Vec<crate::images::reference::Digest>,
    present: Option<HashSet<Part>>,
}

/// Whether `parts` (as [`Registry::image_parts`] lists them) are an index's: its own
/// manifest, then its platforms'.
fn is_index(parts: &[Part]) -> bool {
    matches!(parts.get(1), Some(Part::Manifest(_)))
}

/// Each platform's parts (its manifest first, then its blobs), read from the source by
/// digest (each read retried on its own); `None` when one cannot be read.
async fn platform_parts(
    registry: &dyn Registry,
    policy: &RetryPolicy,
    source: &ImageName,
    parts: &[Part],
) -> Option<Vec<Vec<Part>>> {
    let mut out = Vec::new();
    for p in parts.iter().skip(1) {
        let Part::Manifest(d) = p else { continue };
        let (r, _) = with_retries(policy, |_| {
            registry.image_parts(&source.host, &source.repo, d)
        })
        .await;
        out.push(r.ok().flatten()?);
    }
    Some(out)
}

/// One attempt of an index, platform by platform: each platform missing a blob at the last
/// look is copied on its own by digest (no tag written), one missing only its manifest gets
/// it stored directly, then the index is stored under the destination reference. `false`
/// when this registry client cannot store manifests (then the whole copy runs).
async fn per_platform(
    copier: &dyn Copier,
    registry: &dyn Registry,
    policy: &RetryPolicy,
    source: &ImageName,
    dest: &ImageName,
    platforms: &[Vec<Part>],
    present: &HashSet<Part>,
) -> Result<bool, ItemError> {
    let Some(index) = source.digest.as_ref() else {
        return Ok(false);
    };
    for parts in platforms {
        let Some(Part::Manifest(d)) = parts.first() else {
            continue;
        };
        let blobs_missing = parts
            .iter()
            .any(|p| matches!(p, Part::Blob(_)) && !present.contains(p));
        if blobs_missing {
            tracing::info!(%dest, platform = %d, "copying this platform on its own");
            let by_digest = |n: &ImageName| ImageName {
                digest: Some(d.clone()),
                tag: None,
                ..n.clone()
            };
            copier.copy(&by_digest(source), &by_digest(dest)).await?;
        } else if !present.contains(&Part::Manifest(d.clone()))
            && !put_manifest(registry, policy, source, d, dest, false).await?
        {
            return Ok(false);
        }
    }
    put_manifest(registry, policy, source, index, dest, true).await
}

/// Copies the image's own manifest from the source to the destination reference; `false`
/// when this registry client cannot (then the copier runs).
async fn put_manifest(
    registry: &dyn Registry,
    policy: &RetryPolicy,
    source: &ImageName,
    digest: &crate::images::reference::Digest,
    dest: &ImageName,
    top: bool,
) -> Result<bool, ItemError> {
    let (got, _) = with_retries(policy, |_| {
        registry.get_manifest(&source.host, &source.repo, digest)
    })
    .await;
    let Some((bytes, media_type)) = got? else {
        return Ok(false);
    };
    if media_type.is_empty() {
        return Ok(false);
    }
    tracing::info!(%dest, %digest, "only the manifest is missing at the destination; storing it");
    let reference = if top {
        dest.reference()
    } else {
        digest.to_string()
    };
    let (put, _) = with_retries(policy, |_| {
        registry.put_manifest(&dest.host, &dest.repo, &reference, &media_type, &bytes)
    })
    .await;
    Ok(put?.is_some())
}

/// How many of `parts` the destination repository holds, the manifests to store directly
/// when every blob is there (platforms first, the image's own last), and the parts it holds.
/// A part whose `HEAD` keeps failing counts as absent (so progress is never overstated).
/// `None` when the registry client cannot tell.
async fn landed(
    registry: &dyn Registry,
    policy: &RetryPolicy,
    dest: &ImageName,
    parts: &[Part],
) -> Option<(u64, Vec<crate::images::reference::Digest>, HashSet<Part>)> {
    let mut present = Vec::with_capacity(parts.len());
    for p in parts {
        let here = match p {
            Part::Manifest(d) => {
                let reference = d.to_string();
                let (r, _) = with_retries(policy, |_| {
                    registry.head_manifest(&dest.host, &dest.repo, &reference)
                })
                .await;
                r.map(|m| Some(m.is_some_and(|m| m.digest == *d)))
            }
            Part::Blob(d) => {
                with_retries(policy, |_| registry.has_blob(&dest.host, &dest.repo, d))
                    .await
                    .0
            }
        };
        match here {
            Ok(Some(yes)) => present.push(yes),
            Err(_) => present.push(false),
            Ok(None) => return None,
        }
    }
    let n = present.iter().filter(|p| **p).count() as u64;
    let blobs_all_here = parts
        .iter()
        .zip(&present)
        .all(|(p, here)| *here || matches!(p, Part::Manifest(_)));
    // Platforms first (they follow the image's own manifest in `parts`), the image's last.
    let mut left: Vec<crate::images::reference::Digest> = Vec::new();
    if blobs_all_here {
        for (p, here) in parts
            .iter()
            .zip(&present)
            .skip(1)
            .chain(parts.iter().zip(&present).take(1))
        {
            if let (Part::Manifest(d), false) = (p, *here) {
                left.push(d.clone());
            }
        }
    }
    let held = parts
        .iter()
        .zip(&present)
        .filter(|(_, here)| **here)
        .map(|(p, _)| p.clone())
        .collect();
    Some((n, left, held))
}

/// `skopeo copy --retry-times` (skopeo 1.9 has no `--retry-delay`).
const SKOPEO_RETRY_TIMES: &str = "3";

#[derive(Debug, Clone)]
struct Endpoint {
    address: String,
    plain_http: bool,
    /// The registry's own CAs ([`crate::images::registry::Trust`]): skopeo's `--*-cert-dir`.
    cert_dir: Option<PathBuf>,
}

/// Runs `skopeo copy`.
pub struct Skopeo {
    binary: PathBuf,
    /// util-linux's `setpriv`, when there: skopeo is started through it with a parent-death
    /// signal, so a CLI killed outright (SIGKILL, OOM) takes its copies with it instead of
    /// leaving them writing to the destination beside the next run.
    setpriv: Option<PathBuf>,
    endpoints: HashMap<String, Endpoint>,
    auth: TempAuthFile,
    credentials: Credentials,
    stop: Stop,
}

impl Skopeo {
    /// Prepares copies between `hosts`, with their addresses, transports and logins
    /// taken from `registry`. Writes the 0600 temp auth file now; it is removed on drop.
    pub fn new(registry: &HttpRegistry, hosts: &[String]) -> Result<Self, AuthFileError> {
        let binary = std::env::var_os("TRANSFER_HUB_SKOPEO")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("skopeo"));
        let mut endpoints = HashMap::new();
        let mut creds = Credentials::default();
        for h in hosts {
            // skopeo knows Docker Hub by its own name; everything else by the address we use.
            let address = if matches!(h.as_str(), "docker.io" | "index.docker.io") {
                "docker.io".to_string()
            } else {
                registry.address(h)
            };
            if let Some(l) = registry.credentials().get(h) {
                creds.insert(&address, l.clone());
            }
            endpoints.insert(
                h.clone(),
                Endpoint {
                    address,
                    plain_http: registry.plain_http(h),
                    cert_dir: registry.cert_dir(h),
                },
            );
        }
        let addresses: Vec<&str> = endpoints.values().map(|e| e.address.as_str()).collect();
        let auth = creds.write_temp(&addresses)?;
        let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file());
        Ok(Self {
            binary,
            setpriv,
            endpoints,
            auth,
            credentials: creds,
            stop: Stop::never(),
        })
    }

    /// Copies end when `stop` fires: the running skopeo is killed and waited for, so none
    /// outlives the run (and the temp auth file can be removed).
    pub fn with_stop(mut self, stop: Stop) -> Self {
        self.stop = stop;
        self
    }

    /// The private auth file skopeo reads (removed when this is dropped).
    pub fn auth_file(&self) -> &std::path::Path {
        self.auth.path()
    }

    fn transport_ref(&self, n: &ImageName) -> (String, Endpoint) {
        let ep = self.endpoints.get(&n.host).cloned().unwrap_or(Endpoint {
            address: n.host.clone(),
            plain_http: false,
            cert_dir: None,
        });
        let mut s = format!("docker://{}/{}", ep.address, n.repo);
        match (&n.digest, &n.tag) {
            (Some(d), _) => s.push_str(&format!("@{d}")),
            (None, Some(t)) => s.push_str(&format!(":{t}")),
            (None, None) => s.push_str(":latest"),
        }
        (s, ep)
    }

    /// The arguments of one copy (no secrets: logins come from the auth file).
    pub fn args(&self, source: &ImageName, dest: &ImageName) -> Vec<String> {
        let (src, src_ep) = self.transport_ref(source);
        let (dst, dst_ep) = self.transport_ref(dest);
        let mut a: Vec<String> = [
            "copy",
            "--all",
            "--preserve-digests",
            // skopeo's own retries redo the whole copy in the same process after 1, 2, 4 s
            // (containers/common's RetryIfNecessary; skopeo 1.9 has no --retry-delay), only
            // for errors it deems transient (resets, refused connections, timeouts, registry
            // error codes other than denied/unauthorized/unknown). Apart from that,
            // containers/image answers a 429 to a request without a body (the /v2/ ping,
            // GET and HEAD of manifests and blobs) itself: up to 5 tries, waiting the
            // Retry-After (else 2 s, doubling, at most 60 s). A 429 to an upload or a
            // manifest PUT fails the copy; what is left comes back to our retries, which
            // cannot see that Retry-After (skopeo does not print it) and wait their backoff.
            "--retry-times",
            SKOPEO_RETRY_TIMES,
            "--authfile",
        ]
        .map(String::from)
        .into();
        a.push(self.auth.path().display().to_string());
        // Plain HTTP only where we speak it too; TLS is verified, with the registry's own
        // CAs when it has a certificate directory.
        if src_ep.plain_http {
            a.push("--src-tls-verify=false".into());
        } else if let Some(d) = &src_ep.cert_dir {
            a.push(format!("--src-cert-dir={}", d.display()));
        }
        if dst_ep.plain_http {
            a.push("--dest-tls-verify=false".into());
        } else if let Some(d) = &dst_ep.cert_dir {
            a.push(format!("--dest-cert-dir={}", d.display()));
        }
        a.push(src);
        a.push(dst);
        a
    }
}

#[async_trait]
impl Copier for Skopeo {
    async fn copy(&self, source: &ImageName, dest: &ImageName) -> Result<(), ItemError> {
        let args = self.args(source, dest);
        tracing::debug!(?args, "skopeo");
        if let Some(why) = self.stop.reason() {
            return Err(interrupted(why));
        }
        let mut command = match &self.setpriv {
            // setpriv sets PR_SET_PDEATHSIG and execs skopeo (same process, same arguments).
            Some(setpriv) => {
                let mut c = tokio::process::Command::new(setpriv);
                c.args(["--pdeathsig", "KILL", "--"]).arg(&self.binary);
                c
            }
            None => tokio::process::Command::new(&self.binary),
        };
        // skopeo needs no AWS credentials (its logins come from the auth file): keys,
        // session tokens and container-credential URIs in our environment stay ours,
        // out of a child's /proc/PID/environ.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("AWS_") {
                command.env_remove(name);
            }
        }
        let mut child = command
            .args(&args)
            .env_remove("REGISTRY_AUTH_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ItemError::new(ErrorClass::BadInput, format!("cannot run {}: {e} (is skopeo installed? apt-get install skopeo, dnf install skopeo or brew install skopeo; or set TRANSFER_HUB_SKOPEO)", self.binary.display())))?;
        let stderr_pipe = child.stderr.take();
        let read_stderr = tokio::spawn(async move {
            let mut buf = Vec::new();
            if let Some(mut p) = stderr_pipe {
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut p, &mut buf).await;
            }
            buf
        });
        let ended = tokio::select! {
            status = child.wait() => Ok(status),
            why = self.stop.stopped() => Err(why),
        };
        let status = match ended {
            Ok(status) => status.map_err(|e| {
                ItemError::new(ErrorClass::Retryable, format!("waiting for skopeo: {e}"))
            })?,
            Err(why) => {
                // Killed and reaped before we return: no skopeo outlives an interrupted run.
                let _ = child.kill().await;
                read_stderr.abort();
                return Err(interrupted(why));
            }
        };
        let stderr_bytes = read_stderr.await.unwrap_or_default();
        if status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&stderr_bytes);
        let text = self.credentials.redact(stderr.trim());
        let last = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("skopeo failed without a message");
        let last = last.trim_start_matches("time=").to_string();
        Err(ItemError::new(
            ErrorClass::from_copy_output(&text),
            format!("skopeo copy {source} → {dest}: {last}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::authfile::Login;

    #[test]
    fn args_carry_no_secret_and_pick_transports() {
        let mut creds = Credentials::default();
        creds.insert(
            "127.0.0.1:5000",
            Login {
                username: "u".into(),
                password: "canary-pw-123".into(),
            },
        );
        let reg = HttpRegistry::new(creds, Vec::<String>::new());
        let sk = Skopeo::new(&reg, &["127.0.0.1:5000".to_string(), "quay.io".to_string()]).unwrap();
        let src = ImageName {
            host: "127.0.0.1:5000".into(),
            repo: "a/b".into(),
            tag: Some("1".into()),
            digest: None,
        };
        let dst = ImageName {
            host: "quay.io".into(),
            repo: "x/b".into(),
            tag: Some("1".into()),
            digest: None,
        };
        let args = sk.args(&src, &dst);
        let joined = args.join(" ");
        assert!(!joined.contains("canary-pw-123"));
        assert!(joined.contains("--src-tls-verify=false"));
        assert!(!joined.contains("--dest-tls-verify=false"));
        assert!(
            joined.ends_with("docker://127.0.0.1:5000/a/b:1 docker://quay.io/x/b:1"),
            "{joined}"
        );
        assert!(
            args.contains(&"--preserve-digests".to_string()) && args.contains(&"--all".to_string())
        );
        let written = std::fs::read_to_string(sk.auth.path()).unwrap();
        assert!(written.contains("127.0.0.1:5000") && !written.contains("quay.io"));
    }

    #[test]
    fn a_registry_with_a_certificate_directory_is_verified_with_it() {
        let certs = tempfile::tempdir().unwrap();
        let dir = certs.path().join("127.0.0.1:5443");
        std::fs::create_dir(&dir).unwrap();
        let reg = HttpRegistry::new(Credentials::default(), Vec::<String>::new())
            .with_trust(crate::images::registry::Trust::system().with_registry_certs(certs.path()));
        assert!(!reg.plain_http("127.0.0.1:5443"), "TLS when a CA is given");
        assert!(
            reg.plain_http("127.0.0.1:5000"),
            "loopback without one: plain"
        );
        let hosts = ["127.0.0.1:5443".to_string(), "127.0.0.1:5000".to_string()];
        let sk = Skopeo::new(&reg, &hosts).unwrap();
        let n = |host: &str| ImageName {
            host: host.into(),
            repo: "a".into(),
            tag: Some("1".into()),
            digest: None,
        };
        let args = sk
            .args(&n("127.0.0.1:5443"), &n("127.0.0.1:5000"))
            .join(" ");
        assert!(
            args.contains(&format!("--src-cert-dir={}", dir.display())),
            "{args}"
        );
        assert!(!args.contains("--src-tls-verify=false"), "{args}");
        assert!(args.contains("--dest-tls-verify=false"), "{args}");
        let args = sk
            .args(&n("127.0.0.1:5000"), &n("127.0.0.1:5443"))
            .join(" ");
        assert!(
            args.contains(&format!("--dest-cert-dir={}", dir.display())),
            "{args}"
        );
    }
}
