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
/// The first attempt is the copier's (skopeo's whole copy). Once one has failed and the
/// destination was looked at, the next attempts are made here ([`copy_here`]): each blob
/// the destination lacks is copied through this machine (streamed and hashed, each blob
/// retried on its own and after any `Retry-After`), then each manifest it lacks is stored
/// (read from the source by digest and checked, one `PUT`, retried on its own). Found by the
/// fault report: with 10% of registry requests failing, a whole copy of an image is some
/// 14 to 40 requests, skopeo ends at its first 503 or 429 to a `HEAD` or an upload, and
/// 3 images in 96 met one in each of four whole copies in a row. The registry refuses a
/// manifest whose parts are missing, and the destination digest is checked after the copy
/// as always.
///
/// An ECR side is asked through ECR's registry protocol with the ECR login token (see
/// [`crate::images::ecr::Registries`]). Where the destination cannot be asked (a source manifest
/// that cannot be read), every failure counts and every attempt is the copier's. The same
/// for the CLI's sync and the copy worker.
pub async fn copy_with_retries(
    copier: &dyn Copier,
    registry: &dyn Registry,
    policy: &RetryPolicy,
    stop: &Stop,
    source: &ImageName,
    dest: &ImageName,
) -> (Result<(), ItemError>, u32) {
    // The image's parts, once read (a read that failed is tried again at the next look).
    let parts: tokio::sync::OnceCell<Vec<Part>> = tokio::sync::OnceCell::new();
    let parts = &parts;
    // What the destination held at the last look (none before the first failed attempt).
    let seen: &std::sync::Mutex<Option<HashSet<Part>>> = &Default::default();
    let probe = || async move {
        let digest = source.digest.as_ref()?;
        let parts = parts
            .get_or_try_init(|| async {
                let (r, _) = with_retries(policy, |_| {
                    registry.image_parts(&source.host, &source.repo, digest)
                })
                .await;
                r.ok().flatten().ok_or(())
            })
            .await
            .ok()?;
        let (n, present) = landed(registry, policy, dest, parts).await?;
        *seen.lock().unwrap() = Some(present);
        Some(n)
    };
    let attempt = |_| async move {
        let present = seen.lock().unwrap().clone();
        if let (Some(present), Some(parts)) = (present, parts.get())
            && copy_here(registry, policy, stop, source, dest, parts, &present).await?
        {
            return Ok(());
        }
        // skopeo sends each login to the token realm its registry names: a realm that may
        // not have it fails the image here, before the login reaches skopeo.
        registry.check_login_realm(&source.host).await?;
        registry.check_login_realm(&dest.host).await?;
        copier.copy(source, dest).await
    };
    with_progress_retries_until(policy, stop, attempt, probe).await
}

/// One attempt made by this machine: each blob of `parts` not in `present` is copied
/// ([`Registry::copy_blob`], each retried on its own), then each platform manifest not in
/// `present` is stored under its digest, and the image's own manifest under the destination
/// reference (always: the destination may hold it without the tag). `false` when this
/// registry client cannot copy blobs or store manifests (then the copier runs).
async fn copy_here(
    registry: &dyn Registry,
    policy: &RetryPolicy,
    stop: &Stop,
    source: &ImageName,
    dest: &ImageName,
    parts: &[Part],
    present: &HashSet<Part>,
) -> Result<bool, ItemError> {
    let Some(top) = source.digest.as_ref() else {
        return Ok(false);
    };
    let from = (source.host.as_str(), source.repo.as_str());
    let to = (dest.host.as_str(), dest.repo.as_str());
    for p in parts {
        let Part::Blob(d) = p else { continue };
        if present.contains(p) {
            continue;
        }
        tracing::info!(%dest, blob = %d, "copying a blob the destination lacks");
        let copied = tokio::select! {
            (r, _) = with_retries(policy, |_| registry.copy_blob(from, to, d)) => r.map_err(|mut e| {
                e.message = format!("copying blob {d} of {source} → {dest}: {}", e.message);
                e
            })?,
            why = stop.stopped() => return Err(interrupted(why)),
        };
        if copied.is_none() {
            return Ok(false);
        }
    }
    // Platforms first (they follow the image's own manifest in `parts`).
    for p in parts.iter().skip(1) {
        if let Part::Manifest(d) = p
            && !present.contains(p)
            && !put_manifest(registry, policy, source, d, dest, false).await?
        {
            return Ok(false);
        }
    }
    put_manifest(registry, policy, source, top, dest, true).await
}

/// Copies the manifest `digest` from the source to the destination: under the destination
/// reference when it is the image's own (`top`), else under its digest; `false` when this
/// registry client cannot (then the copier runs).
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
    tracing::info!(%dest, %digest, "storing a manifest the destination lacks");
    let reference = if top {
        dest.reference()
    } else {
        digest.to_string()
    };
    let (put, _) = with_retries(policy, |_| {
        registry.put_manifest(&dest.host, &dest.repo, &reference, &media_type, &bytes)
    })
    .await;
    let put = put.map_err(|mut e| {
        e.message = format!(
            "storing manifest {digest} of {source} at {dest}: {}",
            e.message
        );
        e
    })?;
    Ok(put.is_some())
}

/// How many of `parts` the destination repository holds, and which. A part whose `HEAD`
/// keeps failing counts as absent (so progress is never overstated, and the next attempt
/// copies it again). `None` when the registry client cannot tell.
async fn landed(
    registry: &dyn Registry,
    policy: &RetryPolicy,
    dest: &ImageName,
    parts: &[Part],
) -> Option<(u64, HashSet<Part>)> {
    let mut held = HashSet::new();
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
            Ok(Some(true)) => {
                held.insert(p.clone());
            }
            Ok(Some(false)) | Err(_) => {}
            Ok(None) => return None,
        }
    }
    Some((held.len() as u64, held))
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
        let _one = crate::images::authfile::TEMP_FILES_IN_TESTS
            .lock()
            .unwrap_or_else(|p| p.into_inner());
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
        let _one = crate::images::authfile::TEMP_FILES_IN_TESTS
            .lock()
            .unwrap_or_else(|p| p.into_inner());
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
