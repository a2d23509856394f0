//! Registry credentials: read from a containers/docker auth file (the file skopeo reads)
//! and handed to skopeo only through a fresh 0600 auth file in a private temp dir that
//! is removed when dropped. Secrets never go on a command line, in an env var, in a
//! log line or in an error text; [`Credentials::redact`] scrubs text that leaves us.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The private dirs of the temp auth files alive now, so that a process about to exit
/// without unwinding (a second Ctrl-C) can still remove them ([`remove_live_temp_files`]).
static LIVE_TEMP_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Held by the unit tests that write temp auth files: one of them removes every live one
/// ([`remove_live_temp_files`]), which must not pull a file from under another.
#[cfg(test)]
pub(crate) static TEMP_FILES_IN_TESTS: Mutex<()> = Mutex::new(());

/// Removes every temp auth file (and its private dir) this process still holds. For exit
/// paths that skip destructors (`std::process::exit`); a dropped [`TempAuthFile`] removes
/// its own.
pub fn remove_live_temp_files() {
    let dirs = std::mem::take(&mut *LIVE_TEMP_DIRS.lock().unwrap_or_else(|p| p.into_inner()));
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A username and password (or token) for one registry. `Debug` does not print the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// Errors reading an auth file. They name the file, never its contents.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("cannot read auth file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "auth file {path} is not valid JSON of the form {{\"auths\": {{\"HOST\": {{\"auth\": \"base64(user:password)\"}}}}}}: {reason}"
    )]
    Format { path: PathBuf, reason: String },
    #[error("cannot write a temporary auth file: {0}")]
    Write(std::io::Error),
    /// A credential helper that could not give a login. Never carries what it printed.
    #[error("credential helper docker-credential-{helper} for registry {host}: {why}")]
    Helper {
        helper: String,
        host: String,
        why: String,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AuthFileJson {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntryJson>,
    /// Docker's per-registry credential helpers (`docker-credential-<name>`).
    #[serde(default, rename = "credHelpers", skip_serializing)]
    cred_helpers: BTreeMap<String, String>,
    /// Docker's default credential helper, for registries without an entry.
    #[serde(default, rename = "credsStore", skip_serializing)]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AuthEntryJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
}

/// Logins per registry host.
#[derive(Clone, Default, Debug)]
pub struct Credentials {
    by_host: BTreeMap<String, Login>,
    /// Credential helpers by host (`credHelpers`), asked by [`Credentials::ask_helpers`].
    helpers: BTreeMap<String, String>,
    /// The default helper (`credsStore`), for hosts with no login and no helper of their own.
    store: Option<String>,
}

/// How long a credential helper may take to answer.
const HELPER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What `docker-credential-<name> get` prints for a host it holds nothing for (Docker's
/// credential-helpers protocol): no login, not an error.
const HELPER_NOT_FOUND: &str = "credentials not found in native keychain";

/// Where to look for the auth file: `--authfile`, else `REGISTRY_AUTH_FILE`, else
/// `~/.docker/config.json`. Returns `None` when nothing was named and the default is absent.
pub fn default_auth_file(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")?;
    let p = PathBuf::from(home).join(".docker/config.json");
    p.exists().then_some(p)
}

fn host_key(key: &str) -> String {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let k = k.split('/').next().unwrap_or(k);
    match k {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        other => other.to_string(),
    }
}

impl Credentials {
    /// Reads an auth file. Entries whose `auth` is not base64 of `user:password` are an error
    /// naming the host.
    pub fn from_file(path: &Path) -> Result<Self, AuthFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text).map_err(|reason| AuthFileError::Format {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parses auth-file JSON; the error names the host of a bad entry, not its secret.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let parsed: AuthFileJson = serde_json::from_str(text).map_err(|e| {
            format!(
                "{:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            )
        })?;
        let mut by_host = BTreeMap::new();
        for (key, entry) in parsed.auths {
            let login = match (entry.auth, entry.username, entry.password) {
                (Some(a), _, _) if !a.is_empty() => {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(a.trim())
                        .map_err(|_| format!("entry {key:?}: \"auth\" is not base64"))?;
                    let s = String::from_utf8(raw)
                        .map_err(|_| format!("entry {key:?}: \"auth\" is not UTF-8"))?;
                    let (u, p) = s.split_once(':').ok_or_else(|| {
                        format!("entry {key:?}: \"auth\" must be base64 of \"user:password\"")
                    })?;
                    Login {
                        username: u.to_string(),
                        password: p.to_string(),
                    }
                }
                (_, Some(u), Some(p)) => Login {
                    username: u,
                    password: p,
                },
                _ => continue, // credential helpers etc.: nothing stored inline
            };
            by_host.insert(host_key(&key), login);
        }
        let mut helpers = BTreeMap::new();
        for (key, name) in parsed.cred_helpers {
            check_helper_name(&name).map_err(|e| format!("credHelpers {key:?}: {e}"))?;
            helpers.insert(host_key(&key), name);
        }
        let store = parsed.creds_store.filter(|n| !n.is_empty());
        if let Some(n) = &store {
            check_helper_name(n).map_err(|e| format!("credsStore: {e}"))?;
        }
        Ok(Self {
            by_host,
            helpers,
            store,
        })
    }

    /// The credential helper that holds `host`'s login: its own (`credHelpers`, which wins
    /// over an inline login, as in Docker), else the default (`credsStore`) when the file
    /// has no login for it.
    pub fn helper_for(&self, host: &str) -> Option<&str> {
        let key = host_key(host);
        if let Some(h) = self.helpers.get(&key) {
            return Some(h);
        }
        if self.by_host.contains_key(&key) {
            return None;
        }
        self.store.as_deref()
    }

    /// Asks each of `hosts`' credential helpers for its login (`docker-credential-<name>
    /// get`, the server URL on stdin, `{"Username", "Secret"}` JSON on stdout), and keeps
    /// it. A helper that holds nothing for the host leaves it anonymous. A helper that is
    /// missing, fails, hangs (30 s) or prints anything else is an error naming the helper
    /// and the host; what it printed never reaches a log or an error.
    pub async fn ask_helpers(&mut self, hosts: &[String]) -> Result<(), AuthFileError> {
        for host in hosts {
            let Some(helper) = self.helper_for(host).map(str::to_string) else {
                continue;
            };
            if let Some(login) = ask_helper(&helper, host).await? {
                self.by_host.insert(host_key(host), login);
            }
        }
        Ok(())
    }

    /// The login for a registry host (`docker.io` aliases folded), if any.
    pub fn get(&self, host: &str) -> Option<&Login> {
        self.by_host.get(&host_key(host))
    }

    /// Adds or replaces the login for a host.
    pub fn insert(&mut self, host: &str, login: Login) {
        self.by_host.insert(host_key(host), login);
    }

    /// Replaces every secret (and its base64 forms) in `text` with `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for login in self.by_host.values() {
            if login.password.len() < 3 {
                continue;
            }
            let b64 = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", login.username, login.password));
            for s in [b64.as_str(), login.password.as_str()] {
                out = out.replace(s, "***");
            }
        }
        out
    }

    /// Writes the logins for `hosts` to a new auth file readable only by this user, in a
    /// private temp dir removed when the returned value is dropped.
    pub fn write_temp(&self, hosts: &[&str]) -> Result<TempAuthFile, AuthFileError> {
        let dir = tempfile::Builder::new()
            .prefix("transfer-hub-auth-")
            .tempdir()
            .map_err(AuthFileError::Write)?;
        LIVE_TEMP_DIRS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(dir.path().to_path_buf());
        let path = dir.path().join("auth.json");
        let mut json = AuthFileJson::default();
        for h in hosts {
            if let Some(l) = self.get(h) {
                let auth = base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", l.username, l.password));
                json.auths.insert(
                    h.to_string(),
                    AuthEntryJson {
                        auth: Some(auth),
                        ..Default::default()
                    },
                );
            }
        }
        let body = serde_json::to_vec(&json).expect("auth json serializes");
        write_private(&path, &body).map_err(AuthFileError::Write)?;
        Ok(TempAuthFile { _dir: dir, path })
    }
}

/// A helper's name becomes part of a program name: letters, digits, `-`, `_` and `.` only.
fn check_helper_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a credential helper name (expected letters, digits, '-', '_' or '.', as in \"ecr-login\")"
        ))
    }
}

/// What a credential helper prints for `get`.
#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// Runs `docker-credential-<helper> get` for `host` (see [`Credentials::ask_helpers`]).
async fn ask_helper(helper: &str, host: &str) -> Result<Option<Login>, AuthFileError> {
    use tokio::io::AsyncWriteExt;
    let failed = |why: String| AuthFileError::Helper {
        helper: helper.to_string(),
        host: host.to_string(),
        why,
    };
    // Docker Hub's logins are kept under the URL `docker login` uses.
    let server = if host_key(host) == "docker.io" {
        "https://index.docker.io/v1/".to_string()
    } else {
        host.to_string()
    };
    let program = format!("docker-credential-{helper}");
    let mut child = tokio::process::Command::new(&program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            failed(if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "{program} is not on PATH (install it, or remove the entry from the auth file)"
                )
            } else {
                format!("cannot run {program}: {e}")
            })
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes()).await;
    }
    let out = match tokio::time::timeout(HELPER_TIMEOUT, child.wait_with_output()).await {
        Err(_) => {
            return Err(failed(format!(
                "no answer within {} s",
                HELPER_TIMEOUT.as_secs()
            )));
        }
        Ok(r) => r.map_err(|e| failed(format!("waiting for it: {e}")))?,
    };
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim() == HELPER_NOT_FOUND {
        return Ok(None);
    }
    if !out.status.success() {
        return Err(failed(format!(
            "it failed ({}); what it printed is not shown, as it may hold a secret",
            out.status
        )));
    }
    let answer: HelperAnswer = serde_json::from_slice(&out.stdout).map_err(|_| {
        failed("it printed something other than {\"Username\": …, \"Secret\": …} JSON (not shown, as it may hold a secret)".into())
    })?;
    if answer.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(Login {
        username: answer.username,
        password: answer.secret,
    }))
}

#[cfg(unix)]
fn write_private(path: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(body)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, body: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, body)
}

/// A temporary auth file; the file and its directory are removed on drop.
#[derive(Debug)]
pub struct TempAuthFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl TempAuthFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempAuthFile {
    fn drop(&mut self) {
        // The dir itself goes with `_dir`, right after.
        let dir = self._dir.path();
        LIVE_TEMP_DIRS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|d| d != dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_docker_and_containers_auth_files() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:s3cret-canary");
        let json = format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{b64}"}},"127.0.0.1:5000":{{"auth":"{b64}"}},"quay.io":{{"username":"bob","password":"pw-bob"}},"helper.example":{{}}}},"credsStore":"desktop"}}"#
        );
        let c = Credentials::from_json(&json).unwrap();
        assert_eq!(c.get("docker.io").unwrap().username, "alice");
        assert_eq!(
            c.get("registry-1.docker.io").unwrap().password,
            "s3cret-canary"
        );
        assert_eq!(c.get("127.0.0.1:5000").unwrap().username, "alice");
        assert_eq!(c.get("quay.io").unwrap().password, "pw-bob");
        assert!(c.get("helper.example").is_none());
        assert!(!format!("{c:?}").contains("s3cret"), "Debug hides secrets");
    }

    #[test]
    fn bad_entries_name_the_host_not_the_secret() {
        let e =
            Credentials::from_json(r#"{"auths":{"reg.example":{"auth":"!!not-base64-secret!!"}}}"#)
                .unwrap_err();
        assert!(e.contains("reg.example"), "{e}");
        assert!(!e.contains("not-base64-secret"), "{e}");
        assert!(Credentials::from_json("{").is_err());
    }

    #[test]
    fn redacts_passwords_and_their_base64() {
        let mut c = Credentials::default();
        c.insert(
            "h:1",
            Login {
                username: "u".into(),
                password: "topsecret".into(),
            },
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode("u:topsecret");
        assert_eq!(c.redact(&format!("x topsecret y {b64} z")), "x *** y *** z");
    }

    #[test]
    fn temp_auth_file_is_private_and_removed() {
        let mut c = Credentials::default();
        c.insert(
            "h:1",
            Login {
                username: "u".into(),
                password: "p4ss".into(),
            },
        );
        let _one = TEMP_FILES_IN_TESTS
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let f = c.write_temp(&["h:1", "other:2"]).unwrap();
        let path = f.path().to_path_buf();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let back = Credentials::from_file(&path).unwrap();
        assert_eq!(back.get("h:1").unwrap().password, "p4ss");
        assert!(back.get("other:2").is_none());
        drop(f);
        assert!(!path.exists());
        assert!(!path.parent().unwrap().exists());
    }

    #[test]
    fn live_temp_auth_files_are_removed_on_an_exit_that_skips_destructors() {
        let mut c = Credentials::default();
        c.insert(
            "h:1",
            Login {
                username: "u".into(),
                password: "p4ss".into(),
            },
        );
        let _one = TEMP_FILES_IN_TESTS
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let f = c.write_temp(&["h:1"]).unwrap();
        let path = f.path().to_path_buf();
        remove_live_temp_files();
        assert!(!path.parent().unwrap().exists());
        drop(f); // its dir is gone already: nothing to do, no panic
    }
}
