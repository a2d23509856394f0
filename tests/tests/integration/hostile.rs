//! Registries that answer malformed headers, endless bodies and loops: each bad answer fails
//! the one image or listing it belongs to with a named error, nothing panics, memory stays
//! bounded, and the other images still copy.

use super::images::{item, list};
use hub_tests::{
    Body, FakeRegistry, OciImage, RegistryServer, Reply, Run, peak_rss_kib, transfer_hub_bin,
};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Bytes a flooding answer sends: far past every cap, small enough for this machine.
const FLOOD: u64 = 384 << 20;

/// The hostile source: every repository misbehaves in its own way.
fn hostile() -> FakeRegistry {
    let good_digest = format!("sha256:{}", "ab".repeat(32));
    FakeRegistry::start(Arc::new(move |head: &str| {
        let line = head.lines().next().unwrap_or("");
        let (method, path) = {
            let mut w = line.split_whitespace();
            (w.next().unwrap_or(""), w.next().unwrap_or(""))
        };
        match (method, path) {
            (_, "/v2/") => Reply::json("{}"),
            // '>' before '<': the old parser sliced out of order and panicked.
            (_, p) if p.starts_with("/v2/linkbad/app/tags/list") => {
                let mut r = Reply::json(r#"{"name":"linkbad/app","tags":["1"]}"#);
                r.headers.push((
                    "Link".into(),
                    ">; rel=\"next\" </v2/linkbad/app/tags/list?last=1".into(),
                ));
                r
            }
            // A next page that is this page again.
            (_, p) if p.starts_with("/v2/loop/app/tags/list") => {
                let mut r = Reply::json(r#"{"name":"loop/app","tags":["1"]}"#);
                r.headers.push((
                    "Link".into(),
                    "</v2/loop/app/tags/list?n=1000>; rel=\"next\"".into(),
                ));
                r
            }
            // A chain of pages that never ends, each a new page of long tags.
            (_, p) if p.starts_with("/v2/chain/app/tags/list") => {
                let n: u64 = p
                    .split("last=")
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let tags: Vec<String> = (0..1000).map(|i| format!("{n:0>100}-{i:0>20}")).collect();
                let body = serde_json::json!({"name": "chain/app", "tags": tags}).to_string();
                let mut r = Reply::json(&body);
                r.headers.push((
                    "Link".into(),
                    format!(
                        "</v2/chain/app/tags/list?n=1000&last={}>; rel=\"next\"",
                        n + 1
                    ),
                ));
                r
            }
            (_, p) if p.starts_with("/v2/floodtags/app/tags/list") => Reply::new(
                200,
                &[("Content-Type", "application/json")],
                Body::Flood(FLOOD),
            ),
            // No digest header on HEAD, then a manifest that never ends.
            ("HEAD", "/v2/huge/app/manifests/1") => {
                Reply::new(200, &[("Content-Type", OCI_MANIFEST)], Body::Flood(0))
            }
            ("GET", "/v2/huge/app/manifests/1") => {
                Reply::new(200, &[("Content-Type", OCI_MANIFEST)], Body::Flood(FLOOD))
            }
            ("HEAD", "/v2/digestbad/app/manifests/1") => Reply::new(
                200,
                &[
                    ("Content-Type", OCI_MANIFEST),
                    ("Docker-Content-Digest", "sha256:not-hex"),
                ],
                Body::Flood(0),
            ),
            ("HEAD", "/v2/lenbad/app/manifests/1") => Reply::new(
                200,
                &[
                    ("Content-Type", OCI_MANIFEST),
                    ("Docker-Content-Digest", good_digest.as_str()),
                    ("Content-Length", "12x"),
                ],
                Body::Flood(0),
            ),
            (_, p) if p.starts_with("/v2/lenbadtags/app/tags/list") => Reply::new(
                200,
                &[
                    ("Content-Type", "application/json"),
                    ("Content-Length", "12x"),
                ],
                Body::Bytes(br#"{"name":"lenbadtags/app","tags":["1"]}"#.to_vec()),
            ),
            (_, p) if p.starts_with("/v2/authbad/") => Reply::new(
                401,
                &[("WWW-Authenticate", "Bearer realm")],
                Body::Bytes(Vec::new()),
            ),
            _ => Reply::new(404, &[], Body::Bytes(b"{\"errors\":[]}".to_vec())),
        }
    }))
}

/// Runs the CLI, sampling its peak resident memory (VmHWM) until it exits.
fn sync_measured(dir: &Path, args: &[&str]) -> (Run, u64) {
    let state = dir.join("state.db");
    let mut child = Command::new(transfer_hub_bin())
        .args([
            "images",
            "sync",
            "--output",
            "json",
            "--retry-base-ms",
            "20",
            "--state",
        ])
        .arg(&state)
        .args(args)
        .env_remove("REGISTRY_AUTH_FILE")
        .env("HOME", std::env::temp_dir().join("transfer-hub-test-home"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).unwrap();
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).unwrap();
        s
    });
    let mut peak = 0;
    let status = loop {
        if let Some(kib) = peak_rss_kib(pid) {
            peak = peak.max(kib);
        }
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let run = Run {
        code: status.code().unwrap_or(-1),
        stdout: reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    };
    (run, peak)
}

fn error_of<'a>(j: &'a serde_json::Value, suffix: &str) -> (&'a str, &'a str) {
    let i = item(j, suffix);
    assert_eq!(i["status"], "failed", "{i}");
    (
        i["error"]["class"].as_str().unwrap(),
        i["error"]["message"].as_str().unwrap(),
    )
}

/// Syncs these lines (plus one good image from a real registry) from the hostile
/// registry; returns the JSON report and the run's peak RSS in KiB.
fn sync_from_hostile(lines: &str) -> (serde_json::Value, u64) {
    let (bad, good, dst, dir) = (
        hostile(),
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    let img = OciImage::single(&[2048]);
    img.push(&format!("{}/good/app:1", good.addr), None);
    let l = list(dir.path(), &format!("{lines}{}/good/app:1\n", good.addr));
    let (r, peak_kib) = sync_measured(
        dir.path(),
        &[
            "--source",
            &bad.addr,
            "--dest",
            &dst.addr,
            "--list",
            l.to_str().unwrap(),
            "--retries",
            "1",
        ],
    );
    eprintln!("peak RSS of the run: {} MiB", peak_kib / 1024);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert_eq!(
        r.code, 1,
        "the run finishes, failing the bad images\n{}",
        r.stderr
    );
    let j = r.json();
    assert_eq!(
        item(&j, "good/app:1")["status"],
        "copied",
        "the other images still copy"
    );
    assert_eq!(
        dst.digest("good/app", "1").as_deref(),
        Some(img.digest.as_str())
    );
    (j, peak_kib)
}

#[test]
fn malformed_registry_headers_fail_their_image_by_name_and_the_rest_copies() {
    let (j, _) = sync_from_hostile(
        "linkbad/app:ALL_TAGS\nloop/app:ALL_TAGS\ndigestbad/app:1\nlenbad/app:1\nlenbadtags/app:ALL_TAGS\nauthbad/app:1\n",
    );
    let (class, msg) = error_of(&j, "linkbad/app:ALL_TAGS");
    assert_eq!(class, "BadInput");
    assert!(msg.contains("malformed Link header"), "{msg}");
    let (_, msg) = error_of(&j, "loop/app:ALL_TAGS");
    assert!(msg.contains("the page chain loops"), "{msg}");
    let (_, msg) = error_of(&j, "digestbad/app:1");
    assert!(
        msg.contains("malformed Docker-Content-Digest header \"sha256:not-hex\""),
        "{msg}"
    );
    let (_, msg) = error_of(&j, "lenbad/app:1");
    assert!(
        msg.contains("malformed Content-Length header \"12x\": a number of bytes"),
        "{msg}"
    );
    // On a GET the HTTP client refuses it first; still named, and not retried.
    let (class, msg) = error_of(&j, "lenbadtags/app:ALL_TAGS");
    assert_eq!(class, "BadInput");
    assert!(
        msg.contains("malformed Content-Length in the answer"),
        "{msg}"
    );
    let (_, msg) = error_of(&j, "authbad/app:1");
    assert!(msg.contains("malformed WWW-Authenticate header"), "{msg}");
}

#[test]
fn a_registry_flooding_a_manifest_and_a_tag_list_is_cut_off_at_the_caps_with_bounded_memory() {
    let (j, peak_kib) = sync_from_hostile("floodtags/app:ALL_TAGS\nhuge/app:1\n");
    let (_, msg) = error_of(&j, "floodtags/app:ALL_TAGS");
    assert!(msg.contains("tag list larger than 8 MiB"), "{msg}");
    let (class, msg) = error_of(&j, "huge/app:1");
    assert_eq!(class, "BadInput");
    assert!(msg.contains("manifest larger than 4 MiB"), "{msg}");
    // The registry sent 2 × 384 MiB; what we hold is bounded by the caps, not by that.
    assert!(
        peak_kib < 200 * 1024,
        "peak RSS {} MiB: a flooding answer was held in memory",
        peak_kib / 1024
    );
}

#[test]
fn an_endless_chain_of_tag_pages_stops_at_the_listing_cap_with_bounded_memory() {
    let (j, peak_kib) = sync_from_hostile("chain/app:ALL_TAGS\n");
    let (class, msg) = error_of(&j, "chain/app:ALL_TAGS");
    assert_eq!(class, "BadInput");
    assert!(msg.contains("tag list larger than 64 MiB"), "{msg}");
    assert!(
        peak_kib < 400 * 1024,
        "peak RSS {} MiB: the listing grew past its cap",
        peak_kib / 1024
    );
}

/// A registry that names a plain-http token realm on another host (`http://localhost:PORT`
/// for a registry at 127.0.0.1) fails its image with a named error, and the login never
/// reaches that realm (a listener there counts every request), from our client or skopeo.
/// Before, a plain-HTTP registry could name any http realm and our client sent it the login.
#[test]
fn a_plain_http_token_realm_on_another_host_never_gets_the_login() {
    use base64::Engine as _;
    let realm = FakeRegistry::start(Arc::new(|_: &str| {
        Reply::new(401, &[], Body::Bytes(Vec::new()))
    }));
    let port = realm.addr.rsplit_once(':').unwrap().1;
    let src = RegistryServer::start_with_token_realm(&format!("http://localhost:{port}/token"));
    let dst = RegistryServer::start();
    let dir = tempfile::tempdir().unwrap();
    let canary = format!("realm-canary-{}", fastrand::u64(..));
    let auth = dir.path().join("auth.json");
    hub_tests::write_authfile(&auth, &[(&src.addr, "puller", &canary)]);
    let l = list(dir.path(), "team/app:1\n");
    let r = super::images::sync(
        dir.path(),
        &[
            "--source",
            &src.addr,
            "--dest",
            &dst.addr,
            "--list",
            l.to_str().unwrap(),
            "--authfile",
            auth.to_str().unwrap(),
        ],
    );
    // The setup check reads the registry's challenge before any image: the run stops there,
    // exit 2, with one line naming the realm (and the login unsent).
    assert_eq!(r.code, 2, "{}", r.stderr);
    let j = r.json();
    let msg = j["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains("token realm") && msg.contains("localhost") && msg.contains(&src.addr),
        "{j:#}"
    );
    assert!(!r.stdout.contains(&canary) && !r.stderr.contains(&canary));
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("puller:{canary}"));
    let asked = realm.requests();
    assert!(
        !asked
            .iter()
            .any(|q| q.contains(&canary) || q.contains(&encoded)),
        "the password reached the http realm: {asked:?}"
    );
    assert!(asked.is_empty(), "nothing asks that realm: {asked:?}");
}

/// A TLS registry on 127.0.0.1 with its own CA (made here with openssl, IP SAN 127.0.0.1)
/// and bearer-token auth naming `realm`; `signer` signs the realm's tokens.
struct TlsRig {
    ca: hub_tests::tls::TestCa,
    signer: hub_tests::tls::TokenSigner,
    dir: tempfile::TempDir,
}

impl TlsRig {
    fn new() -> Self {
        Self {
            ca: hub_tests::tls::TestCa::new("transfer-hub-test-ca").unwrap(),
            signer: hub_tests::tls::TokenSigner::new().unwrap(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn registry(&self, realm: &str) -> RegistryServer {
        let (cert, key) = self.ca.issue("registry").unwrap();
        RegistryServer::start_tls((&cert, &key, &self.ca.cert), realm, &self.signer)
    }

    /// An https realm signed by the same CA, handing out tokens for `team/app`.
    fn realm(&self) -> hub_tests::tls::TlsTokenServer {
        let (cert, key) = self.ca.issue("realm").unwrap();
        let token = self.signer.token(&["team/app"], &["pull", "push"]).unwrap();
        hub_tests::tls::TlsTokenServer::start(&cert, &key, token).unwrap()
    }

    /// `--registry-certs` holding `ca`'s certificate for `addr`.
    fn certs(&self, ca: &hub_tests::tls::TestCa, addr: &str) -> std::path::PathBuf {
        let root = self.dir.path().join(format!("certs-{}", fastrand::u32(..)));
        ca.certs_d(&root, addr).unwrap();
        root
    }

    /// An images sync from `src` (with the login `canary` in the auth file) to `dst`.
    fn sync(&self, src: &str, dst: &str, canary: &str, extra: &[&str]) -> Run {
        let auth = self.dir.path().join("auth.json");
        hub_tests::write_authfile(&auth, &[(src, "puller", canary)]);
        let l = list(self.dir.path(), "team/app:1\n");
        let mut args = vec![
            "--source",
            src,
            "--dest",
            dst,
            "--list",
            l.to_str().unwrap(),
            "--authfile",
            auth.to_str().unwrap(),
            "--retries",
            "1",
        ];
        args.extend_from_slice(extra);
        super::images::sync(self.dir.path(), &args)
    }
}

fn basic(user: &str, pw: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
}

/// A registry speaking TLS (with a CA of its own, trusted through `--registry-certs`) that
/// names a plain-http token realm fails at the setup check with one line naming the realm,
/// and that realm sees no request, so never the password: the registry is not plain HTTP,
/// so a login may only go to an https realm, even on the registry's own host. Before, a
/// loopback registry was always spoken to in plain HTTP and no CA could be given.
#[test]
fn a_tls_registry_naming_an_http_token_realm_never_gets_the_login_sent_there() {
    let rig = TlsRig::new();
    let realm = FakeRegistry::start(Arc::new(|_: &str| {
        Reply::json(r#"{"token":"not-for-you"}"#)
    }));
    let src = rig.registry(&format!("http://{}/token", realm.addr));
    let dst = RegistryServer::start();
    let canary = format!("tls-realm-canary-{}", fastrand::u64(..));
    let certs = rig.certs(&rig.ca, &src.addr);
    let r = rig.sync(
        &src.addr,
        &dst.addr,
        &canary,
        &["--registry-certs", certs.to_str().unwrap()],
    );
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    let msg = j["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains("token realm")
            && msg.contains(&format!("http://{}/token", realm.addr))
            && msg.contains(&src.addr),
        "{j:#}"
    );
    assert!(!r.stdout.contains(&canary) && !r.stderr.contains(&canary));
    let asked = realm.requests();
    assert!(
        !asked
            .iter()
            .any(|q| q.contains(&canary) || q.contains(&basic("puller", &canary))),
        "the password reached the http realm: {asked:?}"
    );
    assert!(asked.is_empty(), "nothing asks that realm: {asked:?}");
    assert!(dst.catalog().is_empty());
}

/// The same registry naming an https realm (its certificate from the same CA): the login
/// goes to that realm (from our client and from skopeo, which gets the certificate
/// directory as `--src-cert-dir`), and the image copies with its digest.
#[test]
fn a_tls_registry_with_its_own_ca_and_an_https_token_realm_copies() {
    let rig = TlsRig::new();
    let realm = rig.realm();
    let src = rig.registry(&format!("https://{}/token", realm.addr));
    let dst = RegistryServer::start();
    let canary = format!("tls-realm-canary-{}", fastrand::u64(..));
    let push_auth = rig.dir.path().join("push.json");
    hub_tests::write_authfile(&push_auth, &[(&src.addr, "pusher", "push-pw")]);
    let img = OciImage::single(&[2048]);
    img.push(&format!("{}/team/app:1", src.addr), Some(&push_auth));
    let before = realm.requests().len();
    let certs = rig.certs(&rig.ca, &src.addr);
    let r = rig.sync(
        &src.addr,
        &dst.addr,
        &canary,
        &["--registry-certs", certs.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(
        dst.digest("team/app", "1").as_deref(),
        Some(img.digest.as_str())
    );
    let asked: Vec<String> = realm.requests()[before..].to_vec();
    let with_login = |ua: &str| {
        asked.iter().any(|q| {
            q.to_ascii_lowercase()
                .contains(&format!("user-agent: {ua}"))
                && q.contains(&format!("Basic {}", basic("puller", &canary)))
        })
    };
    assert!(with_login("transfer-hub/"), "our client: {asked:#?}");
    assert!(with_login("skopeo/"), "skopeo: {asked:#?}");
    assert!(!r.stdout.contains(&canary) && !r.stderr.contains(&canary));
}

/// Eight tags of one repository on a bearer-token registry, copied, then synced again with
/// nothing to do: the second run asks the realm once per scope (the login check's and the
/// repository's pull scope), not once per tag, however many HEADs run at once, and the
/// report says so per registry.
#[test]
fn a_no_op_run_asks_the_token_realm_once_per_scope_and_counts_it() {
    let rig = TlsRig::new();
    let realm = rig.realm();
    let src = rig.registry(&format!("https://{}/token", realm.addr));
    let dst = RegistryServer::start();
    let push_auth = rig.dir.path().join("push.json");
    hub_tests::write_authfile(&push_auth, &[(&src.addr, "pusher", "push-pw")]);
    let img = OciImage::single(&[1024]);
    let tags: Vec<String> = (1..=8).map(|i| format!("team/app:{i}")).collect();
    for t in &tags {
        img.push(&format!("{}/{t}", src.addr), Some(&push_auth));
    }
    let certs = rig.certs(&rig.ca, &src.addr);
    let auth = rig.dir.path().join("auth.json");
    hub_tests::write_authfile(&auth, &[(&src.addr, "puller", "pull-pw")]);
    let l = list(rig.dir.path(), &(tags.join("\n") + "\n"));
    let args = [
        "--source",
        &src.addr,
        "--dest",
        &dst.addr,
        "--list",
        l.to_str().unwrap(),
        "--authfile",
        auth.to_str().unwrap(),
        "--registry-certs",
        certs.to_str().unwrap(),
        "--concurrency",
        "8",
        "--resolve-concurrency",
        "8",
    ];
    let first = super::images::sync(rig.dir.path(), &args);
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    assert_eq!(first.json()["copied"], 8, "{}", first.stdout);
    let before = realm.requests().len();
    let again = super::images::sync(rig.dir.path(), &args);
    assert_eq!(again.code, 0, "{}\n{}", again.stdout, again.stderr);
    let j = again.json();
    assert_eq!(j["copied"], 0, "{}", again.stdout);
    assert_eq!(j["skipped"], 8, "{}", again.stdout);
    let asked: Vec<String> = realm.requests()[before..]
        .iter()
        .map(|q| q.lines().next().unwrap_or_default().to_string())
        .collect();
    let mut scopes: Vec<&String> = asked.iter().collect();
    scopes.sort();
    scopes.dedup();
    assert_eq!(
        scopes.len(),
        asked.len(),
        "each scope's token is asked for once: {asked:#?}"
    );
    assert!(
        asked.len() <= 2 && asked.iter().any(|q| q.contains("team%2Fapp")),
        "the login check and the repository's pull scope: {asked:#?}"
    );
    let counted = &j["registries"][&src.addr];
    assert_eq!(counted["token_requests"], asked.len(), "{j:#}");
    // The login check, then a HEAD per tag (no tag listing: the list names them).
    assert!(
        counted["requests"].as_u64().unwrap() >= 8,
        "{counted} for 8 HEADs"
    );
    assert_eq!(j["registries"][&dst.addr]["token_requests"], 0, "{j:#}");
}

/// A certificate directory whose CA did not sign the registry's certificate: the run stops
/// at the setup check with one line naming the registry and where its CA goes; nothing is
/// copied, no login is sent, and verification is not turned off.
#[test]
fn a_registry_certificate_not_signed_by_the_given_ca_is_refused_by_name() {
    let rig = TlsRig::new();
    let realm = rig.realm();
    let src = rig.registry(&format!("https://{}/token", realm.addr));
    let dst = RegistryServer::start();
    let other = hub_tests::tls::TestCa::new("some-other-ca").unwrap();
    let certs = rig.certs(&other, &src.addr);
    let canary = format!("tls-realm-canary-{}", fastrand::u64(..));
    let r = rig.sync(
        &src.addr,
        &dst.addr,
        &canary,
        &["--registry-certs", certs.to_str().unwrap()],
    );
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    let msg = j["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&format!(
            "registry {}: its TLS certificate is not trusted",
            src.addr
        )) && msg.contains("--registry-certs"),
        "{j:#}"
    );
    assert!(realm.requests().is_empty(), "{:?}", realm.requests());
    assert!(dst.catalog().is_empty());
}
