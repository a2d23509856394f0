//! The test rig: real components on 127.0.0.1, started and stopped by the tests.
//! - [`RegistryServer`]: Debian's `docker-registry` (Distribution 2.8) on a free port, in a
//!   temp dir, optionally with htpasswd auth; its access log counts requests.
//! - [`OciImage`]: test images with random layers written as OCI layouts, pushed with skopeo.
//! - [`MotoServer`]: the AWS API emulator (moto); [`iam::IamMoto`]: moto with IAM enforced,
//!   each function running with its template role's statements.
//! - [`faults::FaultProxy`]: seeded 429/503/resets, flipped bytes and traps that hold a
//!   request while a test kills the client (the fault report, `scripts/faults`).
//! - [`CutWritesProxy`]: a TCP proxy that lets reads through and cuts every write, to make
//!   a destination fail in the middle of a run.

pub mod browser;
pub mod faults;
pub mod faults_aws;
pub mod iam;
pub mod sfn_rig;
pub mod tls;

// The demo's seeder crate holds the test images and the tool lookup it needs too.
pub use hub_rig::{OciImage, require};

use anyhow::{Context, Result, bail};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound once, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `url` answers over TLS, trusting only the public roots and `ca`.
fn wait_https(url: &str, ca: &Path, log: &Path) -> Result<()> {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca)?)?;
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .add_root_certificate(ca)
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        match client.get(url).send() {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("{e:?}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "docker-registry did not answer {url}: {last}\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    )
}

fn wait_http(url: &str, what: &str, log: Option<&Path>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    while Instant::now() < deadline {
        if client.get(url).send().is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = log
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    bail!("{what} did not answer at {url} within 30 s\n{log}")
}

/// A command for one of the project's own tools (`python3` with moto, `checkov`, `sam`,
/// `cfn-guard`, `cargo` for `cargo lambda`): scripts/install-deps puts them in `.venv/` and
/// `.tools/`, never the global pip. Those folders come first on the command's PATH, so what
/// the tool starts in turn (zig under cargo-lambda, python3 under sam) comes from there too.
pub fn tool(program: &str) -> Command {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dirs = [root.join(".venv/bin"), root.join(".tools/bin")];
    let path = std::env::join_paths(dirs.iter().cloned().chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    let exe = dirs
        .iter()
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(program));
    let mut c = Command::new(exe);
    c.env("PATH", path);
    if root.join(".venv").is_dir() {
        c.env("VIRTUAL_ENV", root.join(".venv"));
    }
    c
}

/// What a terminal shows of `text` (a pty's output), frame by frame: split at line ends and
/// carriage returns, without the escape sequences.
pub fn terminal_frames(text: &str) -> Vec<String> {
    let strip = |s: &str| {
        let mut o = String::new();
        let mut esc = false;
        for c in s.chars() {
            match (esc, c) {
                (false, '\u{1b}') => esc = true,
                (true, c) if c.is_ascii_alphabetic() => esc = false,
                (true, _) => {}
                (false, c) => o.push(c),
            }
        }
        o
    };
    text.split(['\n', '\r']).map(strip).collect()
}

/// Runs `transfer-hub ARGS` under a pseudo-terminal (`script`), as a user at a terminal
/// would: returns whether it succeeded and what the terminal received (stdout and stderr).
pub fn transfer_hub_in_a_pty(args: &[&str], env: &[(&str, &str)], home: &Path) -> (bool, String) {
    let cmd = std::iter::once(transfer_hub_bin().display().to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new(require("script"))
        .args(["-qfec", &cmd, "/dev/null"])
        .env("TERM", "xterm")
        .env_remove("NO_COLOR")
        .env_remove("REGISTRY_AUTH_FILE")
        .env("HOME", home)
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A real docker-registry on 127.0.0.1.
pub struct RegistryServer {
    pub addr: String,
    child: Child,
    dir: tempfile::TempDir,
    login: Option<(String, String)>,
}

impl RegistryServer {
    /// An anonymous registry.
    pub fn start() -> Self {
        Self::launch(None).expect("docker-registry starts")
    }

    /// A registry with htpasswd (basic) auth for one user.
    pub fn start_with_login(user: &str, password: &str) -> Self {
        Self::launch(Some((user.to_string(), password.to_string())))
            .expect("docker-registry with htpasswd starts")
    }

    /// A registry with bearer-token auth (`auth: token`) whose challenge names `realm`, as
    /// Docker Hub, GHCR and Quay do. The token signer's certificate is a self-signed one
    /// made here; no token server runs (a test puts a listener at `realm` to see who asks).
    pub fn start_with_token_realm(realm: &str) -> Self {
        Self::launch_with(None, Some(realm)).expect("docker-registry with token auth starts")
    }

    /// A registry serving https on 127.0.0.1 with `tls` (certificate, key, and the CA that
    /// signed it), with bearer-token auth naming `realm` whose tokens `signer` signs. Its
    /// helpers (`digest`, `tags`, …) speak plain HTTP: use it as a source.
    pub fn start_tls(tls: (&Path, &Path, &Path), realm: &str, signer: &tls::TokenSigner) -> Self {
        Self::launch_full(None, Some((realm, Some(signer))), Some(tls))
            .expect("docker-registry with TLS starts")
    }

    fn launch(login: Option<(String, String)>) -> Result<Self> {
        Self::launch_with(login, None)
    }

    fn launch_with(login: Option<(String, String)>, token_realm: Option<&str>) -> Result<Self> {
        Self::launch_full(login, token_realm.map(|r| (r, None)), None)
    }

    /// `token`: the realm of bearer-token auth, with the signer of its tokens (else one is
    /// made here whose tokens nobody signs).
    fn launch_full(
        login: Option<(String, String)>,
        token: Option<(&str, Option<&tls::TokenSigner>)>,
        tls: Option<(&Path, &Path, &Path)>,
    ) -> Result<Self> {
        let bin = require("docker-registry");
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut auth = String::new();
        if let Some((realm, Some(signer))) = token {
            auth = format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                signer.service,
                signer.issuer,
                signer.cert.display()
            );
        }
        if let Some((realm, None)) = token {
            let (key, cert) = (dir.path().join("signer.key"), dir.path().join("signer.pem"));
            let out = Command::new(require("openssl"))
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ])
                .args(["-subj", "/CN=transfer-hub-test-token-signer", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .output()?;
            if !out.status.success() {
                bail!("openssl failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            auth = format!(
                "auth:\n  token:\n    realm: {realm}\n    service: transfer-hub-test\n    issuer: transfer-hub-test\n    rootcertbundle: {}\n",
                cert.display()
            );
        }
        if let Some((user, pw)) = &login {
            let htpasswd = dir.path().join("htpasswd");
            // -i: the password comes on stdin, never on a command line.
            let mut c = Command::new(require("htpasswd"))
                .args(["-iBc", htpasswd.to_str().unwrap(), user])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()?;
            c.stdin.take().unwrap().write_all(pw.as_bytes())?;
            let out = c.wait_with_output()?;
            if !out.status.success() {
                bail!("htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            auth = format!(
                "auth:\n  htpasswd:\n    realm: transfer-hub-test\n    path: {}\n",
                htpasswd.display()
            );
        }
        let storage = dir.path().join("data");
        let tls_cfg = match tls {
            Some((cert, key, _)) => format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ),
            None => String::new(),
        };
        let cfg = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n  secret: {}\n{tls_cfg}{auth}",
            storage.display(),
            fastrand::u64(..)
        );
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, cfg)?;
        let log_path = dir.path().join("registry.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(bin)
            .arg("serve")
            .arg(&cfg_path)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning docker-registry")?;
        let me = Self {
            addr,
            child,
            dir,
            login,
        };
        match tls {
            Some((_, _, ca)) => wait_https(&format!("https://{}/v2/", me.addr), ca, &log_path)?,
            None => wait_http(
                &format!("http://{}/v2/", me.addr),
                "docker-registry",
                Some(&log_path),
            )?,
        }
        Ok(me)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The registry's access log so far.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Requests so far that write (`PUT`, `POST`, `PATCH`, `DELETE` under /v2/) and mention `needle`.
    pub fn write_requests(&self, needle: &str) -> Vec<String> {
        self.access_log()
            .lines()
            .filter(|l| {
                ["\"PUT /v2/", "\"POST /v2/", "\"PATCH /v2/", "\"DELETE /v2/"]
                    .iter()
                    .any(|m| l.contains(m))
            })
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    fn client(&self) -> reqwest::blocking::Client {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        let mut r = self.client().request(method, format!("http://{}{path}", self.addr)).header(
            "Accept",
            "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        );
        if let Some((u, p)) = &self.login {
            r = r.basic_auth(u, Some(p));
        }
        r
    }

    /// The digest the registry serves for `repo:reference`, or `None`.
    pub fn digest(&self, repo: &str, reference: &str) -> Option<String> {
        let resp = self
            .req(
                reqwest::Method::HEAD,
                &format!("/v2/{repo}/manifests/{reference}"),
            )
            .send()
            .unwrap();
        if resp.status() == 404 {
            return None;
        }
        assert!(
            resp.status().is_success(),
            "HEAD {repo}:{reference}: {}",
            resp.status()
        );
        Some(
            resp.headers()["docker-content-digest"]
                .to_str()
                .unwrap()
                .to_string(),
        )
    }

    /// The manifest body for `repo:reference`.
    pub fn manifest(&self, repo: &str, reference: &str) -> serde_json::Value {
        self.req(
            reqwest::Method::GET,
            &format!("/v2/{repo}/manifests/{reference}"),
        )
        .send()
        .unwrap()
        .json()
        .unwrap()
    }

    /// Repositories in the catalog.
    pub fn catalog(&self) -> Vec<String> {
        let v: serde_json::Value = self
            .req(reqwest::Method::GET, "/v2/_catalog")
            .send()
            .unwrap()
            .json()
            .unwrap();
        v["repositories"]
            .as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    }

    /// Tags of a repository (empty when it does not exist).
    pub fn tags(&self, repo: &str) -> Vec<String> {
        let resp = self
            .req(reqwest::Method::GET, &format!("/v2/{repo}/tags/list"))
            .send()
            .unwrap();
        if !resp.status().is_success() {
            return Vec::new();
        }
        let v: serde_json::Value = resp.json().unwrap();
        let mut t: Vec<String> = v["tags"]
            .as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        t.sort();
        t
    }

    /// Puts an existing manifest under another tag (cheap way to make many tags).
    pub fn retag(&self, repo: &str, from: &str, to: &str) {
        let resp = self
            .req(
                reqwest::Method::GET,
                &format!("/v2/{repo}/manifests/{from}"),
            )
            .send()
            .unwrap();
        let mt = resp.headers()["content-type"].to_str().unwrap().to_string();
        let body = resp.bytes().unwrap();
        let put = self
            .req(reqwest::Method::PUT, &format!("/v2/{repo}/manifests/{to}"))
            .header("Content-Type", mt)
            .body(body)
            .send()
            .unwrap();
        assert!(
            put.status().is_success(),
            "retag {repo}:{to}: {}",
            put.status()
        );
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a containers auth file with one login per registry, mode 0600.
pub fn write_authfile(path: &Path, logins: &[(&str, &str, &str)]) {
    use base64::Engine as _;
    let encode = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let mut auths = serde_json::Map::new();
    for (host, user, pw) in logins {
        auths.insert(
            host.to_string(),
            serde_json::json!({ "auth": encode(format!("{user}:{pw}").as_bytes()) }),
        );
    }
    std::fs::write(
        path,
        serde_json::to_vec(&serde_json::json!({ "auths": auths })).unwrap(),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// moto server (AWS API emulator) on 127.0.0.1.
pub struct MotoServer {
    pub endpoint: String,
    child: Child,
    _log: tempfile::NamedTempFile,
}

impl MotoServer {
    pub fn start() -> Self {
        Self::start_with_env(&[])
    }

    /// moto with extra environment (e.g. `MOTO_PORT`, where its Step Functions interpreter
    /// sends the service calls of the states it runs).
    pub fn start_with_env(env: &[(&str, String)]) -> Self {
        // `python3 -m moto.server` is the same server as the `moto_server` script, and needs no PATH entry.
        Self::launch(&["-m", "moto.server"], env)
    }

    /// moto started by a Python script that wraps its server (e.g. `tests/moto_iam.py`),
    /// with the same arguments.
    pub fn start_script(script: &Path, env: &[(&str, String)]) -> Self {
        Self::launch(&[script.to_str().unwrap()], env)
    }

    /// moto with its Step Functions interpreter on, making the service calls of the states
    /// it runs to itself (`MOTO_PORT` = its own port): a `sqs:sendMessage.waitForTaskToken`
    /// state puts its task token in a queue of the same server, and the execution waits for
    /// SendTaskSuccess/Failure on it.
    pub fn start_executing() -> Self {
        let port = free_port();
        let me = Self::launch_on(
            port,
            &["-m", "moto.server"],
            &[("MOTO_PORT", port.to_string())],
        );
        reqwest::blocking::Client::new()
            .post(format!("{}/moto-api/config", me.endpoint))
            .json(&serde_json::json!({"stepfunctions": {"execute_state_machine": true}}))
            .send()
            .and_then(|r| r.error_for_status())
            .expect("moto takes the interpreter setting");
        me
    }

    fn launch(program: &[&str], env: &[(&str, String)]) -> Self {
        Self::launch_on(free_port(), program, env)
    }

    fn launch_on(port: u16, program: &[&str], env: &[(&str, String)]) -> Self {
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = tool("python3")
            .args(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().map(|(k, v)| (k.to_string(), v.clone())))
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("moto_server starts");
        let endpoint = format!("http://127.0.0.1:{port}");
        let me = Self {
            endpoint,
            child,
            _log: log,
        };
        wait_http(
            &format!("{}/moto-api/", me.endpoint),
            "moto_server",
            Some(me._log.path()),
        )
        .unwrap();
        me
    }
}

impl MotoServer {
    /// What the server printed so far (its tracebacks explain an HTTP 500).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._log.path()).unwrap_or_default()
    }

    /// An SDK configuration pointed at this server (dummy keys, the given region).
    pub async fn sdk_config(&self, region: &str) -> aws_config::SdkConfig {
        hub_core::aws::sdk::loader()
            .endpoint_url(&self.endpoint)
            .region(aws_config::Region::new(region.to_string()))
            .credentials_provider(aws_sdk_ecr::config::Credentials::new(
                "testing", "testing", None, None, "moto",
            ))
            .load()
            .await
    }

    /// Environment for a subprocess that should use this server.
    pub fn env(&self, region: &str) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", region),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

impl MotoServer {
    /// Calls an EC2 Query API action on moto (no SDK crate needed for the few calls tests
    /// make) and returns the XML answer.
    pub fn ec2(&self, region: &str, params: &[(&str, &str)]) -> String {
        let mut form: Vec<(&str, &str)> = vec![("Version", "2016-11-15")];
        form.extend_from_slice(params);
        let resp = reqwest::blocking::Client::new()
            .post(&self.endpoint)
            .header("Authorization", format!("AWS4-HMAC-SHA256 Credential=testing/20260101/{region}/ec2/aws4_request, SignedHeaders=host, Signature=0"))
            .form(&form)
            .send()
            .unwrap();
        let text = resp.text().unwrap();
        assert!(!text.contains("<Errors>"), "EC2 {params:?}: {text}");
        text
    }

    /// Creates a VPC with one subnet and one security group; returns (subnet, group).
    pub fn network(&self, region: &str) -> (String, String) {
        let tag = |xml: &str, t: &str| {
            let open = format!("<{t}>");
            let i = xml.find(&open).unwrap_or_else(|| panic!("no {t} in {xml}")) + open.len();
            xml[i..].split('<').next().unwrap().to_string()
        };
        let vpc = tag(
            &self.ec2(
                region,
                &[("Action", "CreateVpc"), ("CidrBlock", "10.42.0.0/16")],
            ),
            "vpcId",
        );
        // moto names a task's network interface only in a VPC with DNS host names.
        self.ec2(
            region,
            &[
                ("Action", "ModifyVpcAttribute"),
                ("VpcId", &vpc),
                ("EnableDnsHostnames.Value", "true"),
            ],
        );
        let subnet = tag(
            &self.ec2(
                region,
                &[
                    ("Action", "CreateSubnet"),
                    ("VpcId", &vpc),
                    ("CidrBlock", "10.42.1.0/24"),
                ],
            ),
            "subnetId",
        );
        let sg = tag(
            &self.ec2(
                region,
                &[
                    ("Action", "CreateSecurityGroup"),
                    ("VpcId", &vpc),
                    ("GroupName", "copy"),
                    ("GroupDescription", "copy tasks"),
                ],
            ),
            "groupId",
        );
        (subnet, sg)
    }
}

/// Where a request goes: the upstream `host:port` and the request head to send it.
pub type Route = Arc<dyn Fn(&str) -> (String, String) + Send + Sync>;
/// Changes an answer: given the request head, the status and the body, returns the status,
/// extra headers and the body to send back.
pub type Rewrite =
    Arc<dyn Fn(&str, u16, Vec<u8>) -> (u16, Vec<(String, String)>, Vec<u8>) + Send + Sync>;

/// A small HTTP/1.1 proxy on 127.0.0.1, one request per connection, for fitting emulators
/// together in tests (routing, and fixing what an emulator answers wrongly).
pub struct HttpProxy {
    pub endpoint: String,
    stop: Arc<AtomicBool>,
}

impl HttpProxy {
    pub fn start(route: Route, rewrite: Rewrite) -> Self {
        Self::start_on(0, route, rewrite)
    }

    /// The same on a given port of 127.0.0.1 (0: any free port).
    pub fn start_on(port: u16, route: Route, rewrite: Rewrite) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (route, rewrite) = (route.clone(), rewrite.clone());
                        std::thread::spawn(move || {
                            let _ = forward_one(client, &route, &rewrite);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Self { endpoint, stop }
    }
}

impl Drop for HttpProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

/// Reads a whole HTTP/1.1 body: by Content-Length, chunked, or to the end of the stream.
pub(crate) fn read_body(s: &mut impl Read, head: &[u8], to_eof: bool) -> std::io::Result<Vec<u8>> {
    let h = String::from_utf8_lossy(head).to_ascii_lowercase();
    if h.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        loop {
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while !line.ends_with(b"\r\n") {
                if s.read(&mut b)? == 0 {
                    return Ok(out);
                }
                line.push(b[0]);
            }
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&line)
                    .trim()
                    .split(';')
                    .next()
                    .unwrap_or("0"),
                16,
            )
            .unwrap_or(0);
            let mut chunk = vec![0u8; size + 2];
            s.read_exact(&mut chunk)?;
            if size == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&chunk[..size]);
        }
    }
    if h.contains("content-length:") {
        let mut body = vec![0u8; content_length(head)];
        s.read_exact(&mut body)?;
        return Ok(body);
    }
    let mut body = Vec::new();
    if to_eof {
        s.read_to_end(&mut body)?;
    }
    Ok(body)
}

pub(crate) fn strip_framing(head: &str) -> Vec<String> {
    head.split("\r\n")
        .filter(|l| !l.is_empty())
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            !l.starts_with("content-length:")
                && !l.starts_with("transfer-encoding:")
                && !l.starts_with("connection:")
        })
        .map(str::to_string)
        .collect()
}

fn forward_one(mut client: TcpStream, route: &Route, rewrite: &Rewrite) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(300)))?;
    let head = read_head(&mut client)?;
    let body = read_body(&mut client, &head, false)?;
    let head_text = String::from_utf8_lossy(&head).to_string();
    let (upstream, new_head) = route(&head_text);
    let mut up = TcpStream::connect(&upstream)?;
    let mut lines = strip_framing(&new_head);
    lines.push(format!("Content-Length: {}", body.len()));
    lines.push("Connection: close".into());
    up.write_all(format!("{}\r\n\r\n", lines.join("\r\n")).as_bytes())?;
    up.write_all(&body)?;
    let resp_head = read_head(&mut up)?;
    // A HEAD answer announces a length but carries no body.
    let resp_body = if head_text.starts_with("HEAD ") {
        Vec::new()
    } else {
        read_body(&mut up, &resp_head, true)?
    };
    let resp_text = String::from_utf8_lossy(&resp_head).to_string();
    let status: u16 = resp_text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(502);
    let (new_status, extra, new_body) = rewrite(&head_text, status, resp_body);
    let is_head = head_text.starts_with("HEAD ");
    let mut lines = if is_head {
        resp_text
            .split("\r\n")
            .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
            .map(str::to_string)
            .collect()
    } else {
        strip_framing(&resp_text)
    };
    if new_status != status {
        lines[0] = format!(
            "HTTP/1.1 {new_status} {}",
            if new_status == 200 { "OK" } else { "Status" }
        );
    }
    for (k, v) in extra {
        lines.push(format!("{k}: {v}"));
    }
    if !is_head {
        lines.push(format!("Content-Length: {}", new_body.len()));
    }
    lines.push("Connection: close".into());
    client.write_all(format!("{}\r\n\r\n", lines.join("\r\n")).as_bytes())?;
    client.write_all(&new_body)?;
    client.shutdown(std::net::Shutdown::Both)
}

/// `"cpu": 0` → `"cpu": "0"`, `"memory": 1024` → `"memory": "1024"`.
pub fn quote_numbers(body: &str, keys: &[&str]) -> String {
    let mut out = body.to_string();
    for k in keys {
        let pat = format!("\"{k}\": ");
        let mut res = String::new();
        let mut rest = out.as_str();
        while let Some(i) = rest.find(&pat) {
            let after = &rest[i + pat.len()..];
            let digits: String = after.chars().take_while(|c| c.is_ascii_digit()).collect();
            res.push_str(&rest[..i + pat.len()]);
            if digits.is_empty() {
                rest = after;
            } else {
                res.push_str(&format!("\"{digits}\""));
                rest = &after[digits.len()..];
            }
        }
        res.push_str(rest);
        out = res;
    }
    out
}

/// moto answers `RunTask`/`DescribeTasks`/`StopTask` with a container's `cpu` and `memory` as JSON
/// numbers where the ECS API (and so the Rust SDK) has strings: this proxy in front of moto
/// quotes those two fields and passes everything else as is.
pub fn ecs_types_proxy(moto_endpoint: &str) -> HttpProxy {
    let upstream = moto_endpoint.trim_start_matches("http://").to_string();
    HttpProxy::start(
        Arc::new(move |head: &str| (upstream.clone(), head.to_string())),
        Arc::new(|head: &str, status, body| {
            let ecs_task_call = ["RunTask", "DescribeTasks", "StopTask"]
                .iter()
                .any(|c| head.contains(c));
            let body = if ecs_task_call {
                quote_numbers(&String::from_utf8_lossy(&body), &["cpu", "memory"]).into_bytes()
            } else {
                body
            };
            (status, Vec::new(), body)
        }),
    )
}

/// Routes Lambda invocations (`/2015-03-31/functions/<name or ARN>/invocations`) to a
/// `cargo lambda watch` server by function name, everything else to moto. A handler error
/// (cargo-lambda's HTTP 500) becomes what Lambda answers: 200 with `X-Amz-Function-Error`.
pub fn lambda_router(port: u16, moto_endpoint: &str, lambda_addr: &str) -> HttpProxy {
    let moto = moto_endpoint.trim_start_matches("http://").to_string();
    let lambda = lambda_addr.to_string();
    let is_invoke = |head: &str| {
        head.split_whitespace()
            .nth(1)
            .is_some_and(|p| p.starts_with("/2015-03-31/functions/") && p.contains("/invocations"))
    };
    HttpProxy::start_on(
        port,
        Arc::new(move |head: &str| {
            if !is_invoke(head) {
                return (moto.clone(), head.to_string());
            }
            let path = head.split_whitespace().nth(1).unwrap();
            let name = path
                .trim_start_matches("/2015-03-31/functions/")
                .split('/')
                .next()
                .unwrap_or("");
            let decoded = name.replace("%3A", ":").replace("%3a", ":");
            let short = decoded.rsplit(':').next().unwrap_or(&decoded).to_string();
            (
                lambda.clone(),
                head.replacen(
                    path,
                    &format!("/2015-03-31/functions/{short}/invocations"),
                    1,
                ),
            )
        }),
        Arc::new(move |head: &str, status, body| {
            if is_invoke(head) && status >= 500 {
                (
                    200,
                    vec![("X-Amz-Function-Error".to_string(), "Unhandled".to_string())],
                    body,
                )
            } else {
                (status, Vec::new(), body)
            }
        }),
    )
}

/// This workspace's functions behind `cargo lambda watch`'s Lambda APIs on 127.0.0.1.
///
/// The functions are built once per test process, before any state runs; `cargo lambda
/// watch --only-lambda-apis` serves the invoke and runtime APIs, and the built binaries
/// are started here, `CONCURRENCY` instances of each (as `--concurrency` would). Letting
/// the watcher start them itself means a `cargo run` per instance, at invocation time: it
/// rebuilds whatever changed in the checkout since, and waits on any other cargo's locks,
/// so a run could stall for minutes while someone else builds.
pub struct LambdaWatch {
    pub addr: String,
    child: Child,
    functions: Vec<Child>,
    _log: tempfile::NamedTempFile,
}

/// The functions of the image state machine (binary names, as Lambda function names).
pub const FUNCTIONS: [&str; 4] = [
    "list-images",
    "find-diff",
    "dispatch-fargate",
    "record-status",
];

/// The function of the object diff state machine.
pub const OBJECT_FUNCTIONS: [&str; 1] = ["diff-objects"];

impl LambdaWatch {
    /// Instances of each function (a Map state runs 10 items at once).
    pub const CONCURRENCY: usize = 10;

    /// Where the functions are built (once per test process; a later call reuses them).
    fn built_functions() -> &'static Path {
        static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        BUILT.get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
            // Its own target dir: the test run holds the main one.
            let target = root.join("target/lambda-watch");
            let mut build = tool("cargo");
            build
                .current_dir(root)
                .env("CARGO_TARGET_DIR", &target)
                .args(["build", "--quiet"]);
            for f in FUNCTIONS.iter().chain(&OBJECT_FUNCTIONS) {
                build.args(["-p", f]);
            }
            assert!(
                build.status().unwrap().success(),
                "building the functions failed"
            );
            target.join("debug")
        })
    }

    /// Starts the APIs and the image functions, each with `env` (and the inherited
    /// environment).
    pub fn start(env: &[(String, String)]) -> Self {
        Self::start_functions(env, &FUNCTIONS)
    }

    /// Starts the APIs and these functions (of [`FUNCTIONS`] and [`OBJECT_FUNCTIONS`]).
    pub fn start_functions(env: &[(String, String)], names: &[&str]) -> Self {
        let bin = Self::built_functions();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let log = tempfile::NamedTempFile::new().unwrap();
        let log_path = log.path().to_path_buf();
        // Every process appends, so none writes over another.
        let append = || {
            std::fs::OpenOptions::new()
                .append(true)
                .open(&log_path)
                .unwrap()
        };
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let child = tool("cargo")
            .current_dir(root)
            .args([
                "lambda",
                "watch",
                "--only-lambda-apis",
                "--ignore-changes",
                "-A",
                "127.0.0.1",
                "-P",
                &port.to_string(),
            ])
            .stdout(append())
            .stderr(append())
            .spawn()
            .expect("cargo lambda watch starts (scripts/install-deps installs cargo-lambda)");
        let mut me = Self {
            addr,
            child,
            functions: Vec::new(),
            _log: log,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while TcpStream::connect(&me.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "cargo lambda watch did not listen:\n{}",
                me.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        for name in names {
            for _ in 0..Self::CONCURRENCY {
                let f = Command::new(bin.join(name))
                    .envs(env.iter().cloned())
                    .env("AWS_LAMBDA_FUNCTION_NAME", name)
                    .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
                    .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "4096")
                    .env(
                        "AWS_LAMBDA_RUNTIME_API",
                        format!("http://{}/.rt/{name}", me.addr),
                    )
                    .stdout(append())
                    .stderr(append())
                    .spawn()
                    .unwrap_or_else(|e| panic!("starting {name}: {e}"));
                me.functions.push(f);
            }
        }
        me
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._log.path()).unwrap_or_default()
    }
}

impl Drop for LambdaWatch {
    fn drop(&mut self) {
        for c in self.functions.iter_mut().chain([&mut self.child]) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// S3 as strict as AWS: moto behind a proxy that enforces what moto forgives.
pub mod s3_rig;

/// The resources the AWS suite's template creates, made in moto for tests.
pub mod aws_fixtures {
    use aws_config::SdkConfig;

    /// Uploads `body` to `bucket/key` as a multipart upload of `part_size` parts (as the
    /// AWS CLI or a backup tool writes big objects): its ETag is `…-N`, not an MD5.
    /// Returns the ETag.
    pub async fn multipart_object(
        s3: &aws_sdk_s3::Client,
        bucket: &str,
        key: &str,
        body: &[u8],
        part_size: usize,
    ) -> String {
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
        let up = s3
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        let id = up.upload_id().unwrap();
        let mut parts = Vec::new();
        for (i, chunk) in body.chunks(part_size).enumerate() {
            let n = i as i32 + 1;
            let p = s3
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(id)
                .part_number(n)
                .body(chunk.to_vec().into())
                .send()
                .await
                .unwrap();
            parts.push(
                CompletedPart::builder()
                    .part_number(n)
                    .e_tag(p.e_tag().unwrap())
                    .build(),
            );
        }
        // moto 5.2 answers with a `CompleteMultipartUploadResponse` root, which the SDK
        // cannot read; the upload is complete all the same, and HEAD tells its ETag.
        let _ = s3
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        let head = s3
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        head.e_tag().unwrap().trim_matches('"').to_string()
    }

    /// The status table (`pk`/`sk` strings, on-demand), as template.yaml defines it.
    pub async fn status_table(conf: &SdkConfig, name: &str) {
        table(conf, name, Index::RunsByTask).await
    }

    /// The tasks table, as template.yaml defines it (`pk`, `sk`).
    pub async fn tasks_table(conf: &SdkConfig, name: &str) {
        table(conf, name, Index::None).await
    }

    /// The uploads table, as template.yaml defines it: the status table's keys plus the
    /// sparse index of open uploads (`open` is set on upload items only).
    pub async fn uploads_table(conf: &SdkConfig, name: &str) {
        table(conf, name, Index::OpenUploads).await
    }

    #[derive(PartialEq)]
    enum Index {
        None,
        /// The status table's sparse index of a task's runs (`task`, `started_at`).
        RunsByTask,
        OpenUploads,
    }

    async fn table(conf: &SdkConfig, name: &str, index: Index) {
        use aws_sdk_dynamodb::types::*;
        let attr = |n: &str| {
            AttributeDefinition::builder()
                .attribute_name(n)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap()
        };
        let key = |n: &str, t: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(n)
                .key_type(t)
                .build()
                .unwrap()
        };
        let mut req = aws_sdk_dynamodb::Client::new(conf)
            .create_table()
            .table_name(name)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("pk"))
            .attribute_definitions(attr("sk"))
            .key_schema(key("pk", KeyType::Hash))
            .key_schema(key("sk", KeyType::Range));
        if index == Index::RunsByTask {
            req = req
                .attribute_definitions(attr("task"))
                .attribute_definitions(attr("started_at"))
                .global_secondary_indexes(
                    GlobalSecondaryIndex::builder()
                        .index_name(hub_core::aws::task_store::RUNS_BY_TASK_INDEX)
                        .key_schema(key("task", KeyType::Hash))
                        .key_schema(key("started_at", KeyType::Range))
                        .projection(
                            Projection::builder()
                                .projection_type(ProjectionType::All)
                                .build(),
                        )
                        .build()
                        .unwrap(),
                );
        }
        if index == Index::OpenUploads {
            req = req
                .attribute_definitions(attr("open"))
                .global_secondary_indexes(
                    GlobalSecondaryIndex::builder()
                        .index_name(hub_core::objects::uploads::OPEN_UPLOADS_INDEX)
                        .key_schema(key("open", KeyType::Hash))
                        .key_schema(key("pk", KeyType::Range))
                        .projection(
                            Projection::builder()
                                .projection_type(ProjectionType::All)
                                .build(),
                        )
                        .build()
                        .unwrap(),
                );
        }
        req.send().await.unwrap();
    }

    /// Makes SSE-KMS the default encryption of `bucket` (objects written without
    /// encryption headers are encrypted with KMS, as S3 does).
    pub async fn kms_by_default(s3: &aws_sdk_s3::Client, bucket: &str) {
        use aws_sdk_s3::types::{
            ServerSideEncryption, ServerSideEncryptionByDefault, ServerSideEncryptionConfiguration,
            ServerSideEncryptionRule,
        };
        let rule = ServerSideEncryptionRule::builder()
            .apply_server_side_encryption_by_default(
                ServerSideEncryptionByDefault::builder()
                    .sse_algorithm(ServerSideEncryption::AwsKms)
                    .build()
                    .unwrap(),
            )
            .build();
        s3.put_bucket_encryption()
            .bucket(bucket)
            .server_side_encryption_configuration(
                ServerSideEncryptionConfiguration::builder()
                    .rules(rule)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
    }

    /// A bucket in the configuration's region.
    pub async fn bucket(conf: &SdkConfig, name: &str) {
        let region = conf.region().unwrap().to_string();
        aws_sdk_s3::Client::new(conf)
            .create_bucket()
            .bucket(name)
            .create_bucket_configuration(
                aws_sdk_s3::types::CreateBucketConfiguration::builder()
                    .location_constraint(region.as_str().into())
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }

    /// An SNS topic with an SQS queue subscribed, so a test can read what was published.
    /// Returns (topic ARN, queue URL).
    pub async fn topic_with_queue(conf: &SdkConfig, name: &str) -> (String, String) {
        let sns = aws_sdk_sns::Client::new(conf);
        let sqs = aws_sdk_sqs::Client::new(conf);
        let topic = sns
            .create_topic()
            .name(name)
            .send()
            .await
            .unwrap()
            .topic_arn()
            .unwrap()
            .to_string();
        let queue = sqs
            .create_queue()
            .queue_name(format!("{name}-mail"))
            .send()
            .await
            .unwrap()
            .queue_url()
            .unwrap()
            .to_string();
        let arn_attr = aws_sdk_sqs::types::QueueAttributeName::QueueArn;
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(&queue)
            .attribute_names(arn_attr.clone())
            .send()
            .await
            .unwrap();
        let queue_arn = attrs.attributes().unwrap()[&arn_attr].clone();
        sns.subscribe()
            .topic_arn(&topic)
            .protocol("sqs")
            .endpoint(queue_arn)
            .send()
            .await
            .unwrap();
        (topic, queue)
    }

    /// The copy cluster `th` and task definition `th-copy` (Fargate, awsvpc, arm64, one
    /// container `copy` whose definition names the source secret, never its value).
    pub async fn copy_cluster(conf: &SdkConfig) {
        use aws_sdk_ecs::types::*;
        let ecs = aws_sdk_ecs::Client::new(conf);
        ecs.create_cluster()
            .cluster_name("th")
            .send()
            .await
            .unwrap();
        let platform = RuntimePlatform::builder()
            .cpu_architecture(CpuArchitecture::Arm64)
            .operating_system_family(OsFamily::Linux)
            .build();
        let secret_name = KeyValuePair::builder()
            .name("SOURCE_SECRET")
            .value("transfer-hub/source")
            .build();
        let container = ContainerDefinition::builder()
            .name("copy")
            .image("copy-worker:latest")
            .memory(2048)
            .environment(secret_name)
            .build();
        ecs.register_task_definition()
            .family("th-copy")
            .requires_compatibilities(Compatibility::Fargate)
            .network_mode(NetworkMode::Awsvpc)
            .cpu("1024")
            .memory("2048")
            .runtime_platform(platform)
            .container_definitions(container)
            .send()
            .await
            .unwrap();
    }

    /// The environment a task's first container override carries.
    pub fn task_environment(task: &aws_sdk_ecs::types::Task) -> Vec<(String, String)> {
        task.overrides().unwrap().container_overrides()[0]
            .environment()
            .iter()
            .map(|kv| {
                (
                    kv.name().unwrap().to_string(),
                    kv.value().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Messages waiting in a queue (up to 10).
    pub async fn messages(conf: &SdkConfig, queue: &str) -> Vec<String> {
        let out = aws_sdk_sqs::Client::new(conf)
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        out.messages()
            .iter()
            .filter_map(|m| m.body().map(str::to_string))
            .collect()
    }
}

/// A sample from `events/`, parsed.
pub fn event(name: &str) -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../events")
        .join(name);
    serde_json::from_str(
        &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap()
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A proxy in front of a registry: reads (GET/HEAD) pass, any write request has its
/// connection cut — the destination "goes away" once copying starts.
pub struct CutWritesProxy {
    pub addr: String,
    stop: Arc<AtomicBool>,
    pub cut: Arc<std::sync::atomic::AtomicUsize>,
}

impl CutWritesProxy {
    pub fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (stop2, cut2, up) = (stop.clone(), cut.clone(), upstream.to_string());
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (up, cut) = (up.clone(), cut2.clone());
                        std::thread::spawn(move || {
                            let _ = proxy_one(client, &up, &cut);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { addr, stop, cut }
    }
}

impl Drop for CutWritesProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

pub(crate) fn read_head(s: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(b[0]);
    }
    Ok(head)
}

fn with_connection_close(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut out = String::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

/// One request per connection: forward a read, cut a write.
fn proxy_one(
    mut client: TcpStream,
    upstream: &str,
    cut: &std::sync::atomic::AtomicUsize,
) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let head = read_head(&mut client)?;
    let method = head.split(|&b| b == b' ').next().unwrap_or(b"").to_vec();
    if method != b"GET" && method != b"HEAD" {
        cut.fetch_add(1, Ordering::Relaxed);
        let _ = client.shutdown(std::net::Shutdown::Both);
        return Ok(());
    }
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(&with_connection_close(&head))?;
    let resp_head = read_head(&mut up)?;
    client.write_all(&with_connection_close(&resp_head))?;
    std::io::copy(&mut up, &mut client)?;
    client.shutdown(std::net::Shutdown::Both)
}

/// `transfer-hub status --state STATE --output json`: what a user reads back from a state
/// file after a run.
pub fn status_json(state: &str) -> Run {
    transfer_hub(&["status", "--state", state, "--output", "json"], &[])
}

/// The transfer-hub binary built beside the tests (`cargo build --bins` builds it).
pub fn transfer_hub_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // Beside a binary (target/<profile>/x) or one level up from a test (target/<profile>/deps/x).
    let here = exe.parent().unwrap();
    let bin = [
        here.join("transfer-hub"),
        here.parent().unwrap().join("transfer-hub"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .unwrap_or_else(|| here.join("transfer-hub"));
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --workspace --bins` before the tests (scripts/test does)",
        bin.display()
    );
    bin
}

/// The result of running the CLI.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout as JSON (for `--output json`).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs `transfer-hub` with these arguments and extra environment.
pub fn transfer_hub(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut c = Command::new(transfer_hub_bin());
    c.args(args)
        .env_remove("REGISTRY_AUTH_FILE")
        .env("HOME", std::env::temp_dir().join("transfer-hub-test-home"));
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap().into()
}

/// Runs `transfer-hub` with its stdout a pipe whose reader is gone before the first line
/// (as `transfer-hub … | head -0` would, or `head -1` after its line): every write
/// to stdout fails with a broken pipe. `code` is 128 + the signal when a signal ended it.
pub fn transfer_hub_closed_stdout(args: &[&str], env: &[(&str, &str)]) -> Run {
    use std::os::unix::process::ExitStatusExt as _;
    let mut c = Command::new(transfer_hub_bin());
    c.args(args)
        .env_remove("REGISTRY_AUTH_FILE")
        .env("HOME", std::env::temp_dir().join("transfer-hub-test-home"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    Run {
        code: out
            .status
            .code()
            .or_else(|| out.status.signal().map(|s| 128 + s))
            .unwrap_or(-1),
        stdout: String::new(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A proxy answer rewrite for S3: ListObjectsV2 pages of `bucket` come back in reverse key
/// order (a store that does not list in byte order).
pub fn reversed_listings(bucket: &str) -> Rewrite {
    let (a, b) = (format!("GET /{bucket}?"), format!("GET /{bucket}/?"));
    Arc::new(move |head: &str, status, body: Vec<u8>| {
        if !(head.starts_with(&a) || head.starts_with(&b)) || !head.contains("list-type=2") {
            return (status, vec![], body);
        }
        let text = String::from_utf8(body).unwrap();
        let Some(first) = text.find("<Contents>") else {
            return (status, vec![], text.into_bytes());
        };
        let last = text.rfind("</Contents>").unwrap() + "</Contents>".len();
        let blocks: Vec<&str> = text[first..last].split_inclusive("</Contents>").collect();
        let reversed: String = blocks.into_iter().rev().collect();
        let out = format!("{}{}{}", &text[..first], reversed, &text[last..]);
        (status, vec![], out.into_bytes())
    })
}

/// What a [`FakeRegistry`] sends back.
pub enum Body {
    /// These bytes, with their Content-Length.
    Bytes(Vec<u8>),
    /// `n` bytes of JSON whitespace and no Content-Length: the body ends when the connection
    /// closes (a registry that sends far more than any manifest or page should be).
    Flood(u64),
}

/// One answer of a [`FakeRegistry`]: status, headers as given (nothing checked), body.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

impl Reply {
    pub fn new(status: u16, headers: &[(&str, &str)], body: Body) -> Self {
        Self {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body,
        }
    }
    pub fn json(body: &str) -> Self {
        Self::new(
            200,
            &[("Content-Type", "application/json")],
            Body::Bytes(body.as_bytes().to_vec()),
        )
    }
}

/// Answers a request from its head (`GET /v2/… HTTP/1.1` and the header lines).
pub type Handler = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// A registry that answers whatever the test's handler says (malformed headers, endless
/// bodies, a login challenge for everything): a small HTTP/1.1 server on 127.0.0.1, one
/// request per connection, stopped on drop. Every request head it receives is kept, so a
/// test can prove what was (not) sent to it, e.g. no `Authorization` header.
pub struct FakeRegistry {
    pub addr: String,
    stop: Arc<AtomicBool>,
    requests: Arc<std::sync::Mutex<Vec<String>>>,
    bodies: Arc<std::sync::Mutex<Vec<String>>>,
}

impl FakeRegistry {
    pub fn start(handler: Handler) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop2, requests2, bodies2) = (stop.clone(), requests.clone(), bodies.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (handler, requests, bodies, stop) = (
                            handler.clone(),
                            requests2.clone(),
                            bodies2.clone(),
                            stop2.clone(),
                        );
                        std::thread::spawn(move || {
                            let _ = answer_one(client, &handler, (&requests, &bodies), &stop);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Self {
            addr,
            stop,
            requests,
            bodies,
        }
    }

    /// Every request head received so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// Every request body received so far (as text), in the order of [`Self::requests`].
    pub fn bodies(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn answer_one(
    mut client: TcpStream,
    handler: &Handler,
    (requests, bodies): (
        &std::sync::Mutex<Vec<String>>,
        &std::sync::Mutex<Vec<String>>,
    ),
    stop: &AtomicBool,
) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let head = read_head(&mut client)?;
    let body = read_body(&mut client, &head, false)?;
    let head = String::from_utf8_lossy(&head).to_string();
    {
        // One lock for both, so the two lists stay in step.
        let mut r = requests.lock().unwrap();
        bodies
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&body).into_owned());
        r.push(head.clone());
    }
    let reply = handler(&head);
    let mut out = format!("HTTP/1.1 {} Status\r\n", reply.status).into_bytes();
    for (k, v) in &reply.headers {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let is_head = head.starts_with("HEAD ");
    let has_length = reply
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    if let Body::Bytes(b) = &reply.body {
        if !has_length {
            out.extend_from_slice(format!("Content-Length: {}\r\n", b.len()).as_bytes());
        }
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    client.write_all(&out)?;
    if !is_head {
        match reply.body {
            Body::Bytes(b) => client.write_all(&b)?,
            Body::Flood(n) => {
                let chunk = vec![b' '; 1 << 16];
                let mut left = n;
                while left > 0 && !stop.load(Ordering::Relaxed) {
                    let k = left.min(chunk.len() as u64) as usize;
                    client.write_all(&chunk[..k])?;
                    left -= k as u64;
                }
            }
        }
    }
    client.shutdown(std::net::Shutdown::Both)
}

/// The peak resident memory (VmHWM, KiB) of a running process, if it is still there.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
