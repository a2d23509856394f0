//! Logins from an auth file, wrong passwords, and a canary secret that must never leak.

use super::images::{item, list};
use hub_tests::{OciImage, RegistryServer, transfer_hub_bin, write_authfile};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Every process's command line and environment, as readable now.
fn process_table() -> String {
    let mut out = String::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        for f in ["cmdline", "environ"] {
            if let Ok(b) = std::fs::read(e.path().join(f)) {
                out.push_str(&String::from_utf8_lossy(&b).replace('\0', " "));
                out.push('\n');
            }
        }
    }
    out
}

#[test]
fn an_authfile_login_copies_from_an_htpasswd_registry_and_the_password_never_leaks() {
    let canary = format!("canary-{}-pw", fastrand::u64(..));
    let (src, dst, dir) = (
        RegistryServer::start_with_login("alice", &canary),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    let auth = dir.path().join("auth.json");
    write_authfile(&auth, &[(&src.addr, "alice", &canary)]);
    let imgs: Vec<OciImage> = (0..3).map(|_| OciImage::single(&[512 * 1024])).collect();
    for (i, img) in imgs.iter().enumerate() {
        img.push(&format!("{}/private/app:{i}", src.addr), Some(&auth));
    }
    let l = list(dir.path(), "private/app:ALL_TAGS\n");
    let state = dir.path().join("state.db");

    // Sample the process table while the copy runs.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, canary) = (stop.clone(), canary.clone());
        std::thread::spawn(move || {
            let mut samples = 0;
            let mut leaks = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = process_table();
                if t.contains("skopeo") {
                    samples += 1;
                }
                if let Some(line) = t.lines().find(|l| l.contains(&canary)) {
                    leaks.push(line.to_string());
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            (samples, leaks)
        })
    };
    let out = Command::new(transfer_hub_bin())
        .args([
            "images",
            "sync",
            "--source",
            &src.addr,
            "--dest",
            &dst.addr,
            "--list",
            l.to_str().unwrap(),
        ])
        .args([
            "--authfile",
            auth.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
            "--concurrency",
            "1",
        ])
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let (samples, leaks) = sampler.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    for (i, img) in imgs.iter().enumerate() {
        assert_eq!(
            dst.digest("private/app", &i.to_string()).as_deref(),
            Some(img.digest.as_str())
        );
    }
    assert!(samples > 0, "the sampler saw skopeo running");
    assert!(
        leaks.is_empty(),
        "the password showed in the process table: {leaks:?}"
    );
    assert!(
        !stdout.contains(&canary) && !stderr.contains(&canary),
        "the password leaked to the output"
    );
    for f in std::fs::read_dir(dir.path()).unwrap().flatten() {
        let name = f.file_name().to_string_lossy().to_string();
        if name.starts_with("state.db") {
            let bytes = std::fs::read(f.path()).unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains(&canary),
                "the password is in {name}"
            );
        }
    }
}

#[test]
fn a_wrong_password_fails_that_image_with_an_auth_error_and_no_retries_while_others_copy() {
    let canary = format!("wrong-{}-pw", fastrand::u64(..));
    let locked = RegistryServer::start_with_login("bob", "the-right-one");
    let (open, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    let good_auth = dir.path().join("good.json");
    write_authfile(&good_auth, &[(&locked.addr, "bob", "the-right-one")]);
    OciImage::single(&[1024]).push(&format!("{}/secret/app:1", locked.addr), Some(&good_auth));
    let fine = OciImage::single(&[1024]);
    fine.push(&format!("{}/fine:1", open.addr), None);

    let bad_auth = dir.path().join("bad.json");
    write_authfile(&bad_auth, &[(&locked.addr, "bob", &canary)]);
    let l = list(
        dir.path(),
        &format!("{}/secret/app:1\nfine:1\n", locked.addr),
    );
    let heads_before = locked
        .access_log()
        .lines()
        .filter(|l| l.contains("\"HEAD /v2/secret/app/manifests/1 "))
        .count();
    let r = super::images::sync(
        dir.path(),
        &[
            "--source",
            &open.addr,
            "--dest",
            &dst.addr,
            "--list",
            l.to_str().unwrap(),
            "--authfile",
            bad_auth.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 1);
    let j = r.json();
    let bad = item(&j, "secret/app:1");
    assert_eq!(bad["status"], "failed");
    assert_eq!(bad["error"]["class"], "AuthDenied");
    assert_eq!(bad["attempts"], 1, "auth errors are not retried");
    let fine_item = item(&j, "fine:1");
    assert_eq!(fine_item["status"], "copied");
    assert_eq!(
        dst.digest("fine", "1").as_deref(),
        Some(fine.digest.as_str())
    );
    assert!(dst.tags("secret/app").is_empty());
    let heads = locked
        .access_log()
        .lines()
        .filter(|l| l.contains("\"HEAD /v2/secret/app/manifests/1 "))
        .count()
        - heads_before;
    assert!(
        heads <= 2,
        "one anonymous try and one with the login, no retries: {heads}"
    );
    assert!(!r.stdout.contains(&canary) && !r.stderr.contains(&canary));
}

#[test]
fn each_login_goes_only_to_its_own_registry_even_when_another_one_asks_for_one() {
    use hub_tests::{Body, FakeRegistry, Reply};
    let canary = format!("own-host-{}-pw", fastrand::u64(..));
    let (src, dst, dir) = (
        RegistryServer::start_with_login("alice", &canary),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    // Another registry on a line of its own asks every request for a login.
    let other = FakeRegistry::start(Arc::new(|_: &str| {
        Reply::new(
            401,
            &[("WWW-Authenticate", "Basic realm=\"other\"")],
            Body::Bytes(Vec::new()),
        )
    }));
    let auth = dir.path().join("auth.json");
    write_authfile(&auth, &[(&src.addr, "alice", &canary)]);
    let img = OciImage::single(&[1024]);
    img.push(&format!("{}/private/app:1", src.addr), Some(&auth));
    let l = list(
        dir.path(),
        &format!("private/app:1\n{}/team/app:1\n", other.addr),
    );
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
    assert_eq!(r.code, 1, "{}", r.stderr);
    let j = r.json();
    assert_eq!(item(&j, "private/app:1")["status"], "copied");
    let refused = item(&j, &format!("{}/team/app:1", other.addr));
    assert_eq!(refused["error"]["class"], "AuthDenied");
    assert!(!other.requests().is_empty());
    for req in other.requests() {
        assert!(
            !req.to_ascii_lowercase().contains("authorization:"),
            "another registry got a login: {req}"
        );
    }
}

/// The AWS keys in the CLI's environment (where its configuration lives) are not handed
/// down to skopeo, which needs none (its logins come from the temp auth file): a child's
/// /proc/PID/environ holds no secret key or session token.
#[test]
fn skopeo_children_do_not_inherit_the_aws_keys_of_the_cli() {
    use std::time::{Duration, Instant};
    let canary = format!("aws-env-canary-{}", fastrand::u64(..));
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    OciImage::single(&[64 * 1024]).push(&format!("{}/app:1", src.addr), None);
    let slow = super::interrupt::slow_blobs(&src.addr, Duration::from_secs(2));
    let source = slow.endpoint.trim_start_matches("http://").to_string();
    let l = list(dir.path(), "app:1\n");
    let mut child = Command::new(transfer_hub_bin())
        .args(["images", "sync", "--output", "json"])
        .args(["--source", &source, "--dest", &dst.addr, "--list"])
        .arg(&l)
        .arg("--state")
        .arg(dir.path().join("state.db"))
        .env("HOME", dir.path())
        .env_remove("REGISTRY_AUTH_FILE")
        .env("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE01")
        .env("AWS_SECRET_ACCESS_KEY", &canary)
        .env("AWS_SESSION_TOKEN", format!("{canary}-session"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let environ = loop {
        // This run's skopeo, by its parent; its environment read by pid.
        let pid = std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let st = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid: u32 = st
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let prog = cmd.split(|b| *b == 0).next()?;
            (ppid == child.id() && String::from_utf8_lossy(prog).ends_with("skopeo")).then_some(pid)
        });
        if let Some(pid) = pid {
            break std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        }
        assert!(Instant::now() < deadline, "no skopeo copy started");
        std::thread::sleep(Duration::from_millis(20));
    };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let text = String::from_utf8_lossy(&environ);
    assert!(!environ.is_empty(), "skopeo's environment was read");
    assert!(
        !text.contains(&canary),
        "skopeo inherited the AWS keys: {}",
        text.replace('\0', " ")
            .split(' ')
            .filter(|v| v.starts_with("AWS_"))
            .collect::<Vec<_>>()
            .join(" ")
    );
}

/// Writes `docker-credential-NAME` into `bin`: an executable script of the helper protocol
/// (the server URL on stdin) whose body is `script` (POSIX sh, the URL in `$url`).
fn credential_helper(bin: &std::path::Path, name: &str, script: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(bin).unwrap();
    let p = bin.join(format!("docker-credential-{name}"));
    std::fs::write(
        &p,
        format!("#!/bin/sh\n[ \"$1\" = get ] || exit 3\nread -r url\n{script}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Runs an images sync of `list` from `src` to `dst` with `auth` as the auth file and `bin`
/// first on PATH; returns (exit code, stdout, stderr).
fn sync_with_helpers(
    dir: &std::path::Path,
    bin: &std::path::Path,
    auth: &std::path::Path,
    src: &str,
    dst: &str,
    list_text: &str,
) -> (Option<i32>, String, String) {
    let l = list(dir, list_text);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(transfer_hub_bin())
        .args(["images", "sync", "--source", src, "--dest", dst, "--list"])
        .arg(&l)
        .arg("--authfile")
        .arg(auth)
        .arg("--state")
        .arg(dir.join("state.db"))
        .args(["--output", "json"])
        .env("PATH", path)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Logins kept by Docker credential helpers: `credHelpers` names a helper for the source
/// registry and `credsStore` the default one for the destination (both behind htpasswd).
/// Each helper is asked with its registry's address on stdin and answers the protocol's
/// JSON; both copies succeed, each helper was asked only for its own registry, and the
/// passwords appear in no output and not in the state file.
#[test]
fn logins_from_credential_helpers_per_registry_and_by_default_copy_and_never_leak() {
    let (src_pw, dst_pw) = (
        format!("canary-src-{}", fastrand::u64(..)),
        format!("canary-dst-{}", fastrand::u64(..)),
    );
    let (src, dst, dir) = (
        RegistryServer::start_with_login("alice", &src_pw),
        RegistryServer::start_with_login("bob", &dst_pw),
        tempfile::tempdir().unwrap(),
    );
    let push_auth = dir.path().join("push.json");
    write_authfile(&push_auth, &[(&src.addr, "alice", &src_pw)]);
    let img = OciImage::single(&[64 * 1024]);
    img.push(&format!("{}/app:1", src.addr), Some(&push_auth));
    let bin = dir.path().join("bin");
    let asked = dir.path().join("asked");
    for (name, user, pw) in [("per-host", "alice", &src_pw), ("store", "bob", &dst_pw)] {
        credential_helper(
            &bin,
            name,
            &format!(
                "echo \"{name} $url\" >> {}\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{pw}\"}}' \"$url\"",
                asked.display()
            ),
        );
    }
    let auth = dir.path().join("config.json");
    std::fs::write(
        &auth,
        serde_json::json!({"credHelpers": {src.addr.clone(): "per-host"}, "credsStore": "store"})
            .to_string(),
    )
    .unwrap();
    let (code, stdout, stderr) =
        sync_with_helpers(dir.path(), &bin, &auth, &src.addr, &dst.addr, "app:1\n");
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert_eq!(dst.digest("app", "1").as_deref(), Some(img.digest.as_str()));
    let mut asked: Vec<String> = std::fs::read_to_string(&asked)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    asked.sort();
    assert_eq!(
        asked,
        [
            format!("per-host {}", src.addr),
            format!("store {}", dst.addr)
        ],
        "each helper asked once, for its own registry"
    );
    for pw in [&src_pw, &dst_pw] {
        assert!(
            !stdout.contains(pw.as_str()) && !stderr.contains(pw.as_str()),
            "a helper's password reached the output"
        );
        let db = std::fs::read(dir.path().join("state.db")).unwrap();
        assert!(!String::from_utf8_lossy(&db).contains(pw.as_str()));
    }
}

/// A credential helper that is missing, fails, or prints something other than the
/// protocol's JSON stops the run before any copy with one error naming the helper and the
/// registry; what the helper printed (here the canary) is in no output. A helper that
/// holds nothing for the registry (the protocol's "credentials not found") leaves it
/// anonymous, and an anonymous registry copies.
#[test]
fn a_missing_failing_or_garbled_credential_helper_is_named_and_its_output_never_shown() {
    let canary = format!("canary-{}", fastrand::u64(..));
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    let img = OciImage::single(&[4096]);
    img.push(&format!("{}/app:1", src.addr), None);
    let bin = dir.path().join("bin");
    credential_helper(&bin, "fails", &format!("echo 'secret {canary}'; exit 1"));
    credential_helper(&bin, "garbled", &format!("echo 'Secret={canary}'"));
    credential_helper(
        &bin,
        "empty",
        "echo 'credentials not found in native keychain'; exit 1",
    );
    for (helper, why) in [
        ("absent", "not on PATH"),
        ("fails", "failed"),
        ("garbled", "JSON"),
    ] {
        let auth = dir.path().join(format!("{helper}.json"));
        std::fs::write(
            &auth,
            serde_json::json!({"credHelpers": {src.addr.clone(): helper}}).to_string(),
        )
        .unwrap();
        let (code, stdout, stderr) =
            sync_with_helpers(dir.path(), &bin, &auth, &src.addr, &dst.addr, "app:1\n");
        assert_ne!(code, Some(0), "{helper}: {stdout}\n{stderr}");
        let all = format!("{stdout}{stderr}");
        assert!(
            all.contains(&format!("docker-credential-{helper}"))
                && all.contains(&src.addr)
                && all.contains(why),
            "{helper}: the error names the helper, the registry and why: {all}"
        );
        assert!(
            !all.contains(&canary),
            "{helper}: its output was shown: {all}"
        );
        assert_eq!(dst.digest("app", "1"), None, "{helper}: nothing copied");
    }
    let auth = dir.path().join("empty.json");
    std::fs::write(
        &auth,
        serde_json::json!({"credHelpers": {src.addr.clone(): "empty"}}).to_string(),
    )
    .unwrap();
    let (code, stdout, stderr) =
        sync_with_helpers(dir.path(), &bin, &auth, &src.addr, &dst.addr, "app:1\n");
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert_eq!(dst.digest("app", "1").as_deref(), Some(img.digest.as_str()));
}
