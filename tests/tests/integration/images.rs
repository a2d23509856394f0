//! `transfer-hub images sync` between real registries.

use hub_tests::{CutWritesProxy, OciImage, RegistryServer, Run, transfer_hub};
use std::path::{Path, PathBuf};

/// Writes a list file.
pub fn list(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join(format!("list-{}.txt", fastrand::u32(..)));
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs a sync with JSON output, short backoff and its own state file.
pub fn sync(dir: &Path, args: &[&str]) -> Run {
    let state = dir.join("state.db");
    let mut a = vec![
        "images",
        "sync",
        "--output",
        "json",
        "--retry-base-ms",
        "20",
        "--state",
        state.to_str().unwrap(),
    ];
    a.extend_from_slice(args);
    transfer_hub(&a, &[])
}

pub fn item<'a>(json: &'a serde_json::Value, source_suffix: &str) -> &'a serde_json::Value {
    json["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["source"].as_str().unwrap().ends_with(source_suffix))
        .unwrap_or_else(|| panic!("no item for {source_suffix} in {json:#}"))
}

fn counts(j: &serde_json::Value) -> (u64, u64, u64) {
    (
        j["copied"].as_u64().unwrap(),
        j["skipped"].as_u64().unwrap(),
        j["failed"].as_u64().unwrap(),
    )
}

fn small() -> OciImage {
    OciImage::single(&[4096, 1024])
}

#[test]
fn selected_list_copies_good_lines_and_reports_every_bad_one() {
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    let a = small();
    a.push(&format!("{}/team/a:1", src.addr), None);
    let b = small();
    b.push(&format!("{}/b:2", src.addr), None);
    let l = list(
        dir.path(),
        "team/a:1\nTeam/Bad:1\n\n  b:2  , c@sha256:1234\n# comment\nteam/a:1\n",
    );
    let r = sync(
        dir.path(),
        &[
            "--source",
            &src.addr,
            "--dest",
            &dst.addr,
            "--list",
            l.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 1, "a bad line makes the run exit 1\n{}", r.stderr);
    let j = r.json();
    assert_eq!(counts(&j), (2, 0, 2), "{j:#}");
    let bad2 = item(&j, "line 2: Team/Bad:1");
    assert_eq!(bad2["status"], "failed");
    assert_eq!(bad2["error"]["class"], "BadInput");
    assert!(
        bad2["error"]["message"]
            .as_str()
            .unwrap()
            .contains("lowercase")
    );
    let bad4 = item(&j, "line 4: c@sha256:1234");
    assert!(
        bad4["error"]["message"]
            .as_str()
            .unwrap()
            .contains("64 lowercase hex"),
        "{bad4}"
    );
    assert_eq!(
        dst.digest("team/a", "1").as_deref(),
        Some(a.digest.as_str())
    );
    assert_eq!(dst.digest("b", "2").as_deref(), Some(b.digest.as_str()));
    assert_eq!(item(&j, "team/a:1")["dest_digest"], a.digest.as_str());
}

#[test]
fn all_tags_copies_every_tag_the_source_lists() {
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    let images: Vec<OciImage> = (0..3).map(|_| small()).collect();
    for (i, img) in images.iter().enumerate() {
        img.push(&format!("{}/app:v{i}", src.addr), None);
    }
    small().push(&format!("{}/other:1", src.addr), None);
    let l = list(dir.path(), "app:ALL_TAGS\n");
    let r = sync(
        dir.path(),
        &[
            "--source",
            &src.addr,
            "--dest",
            &format!("{}/mirror", dst.addr),
            "--list",
            l.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(counts(&r.json()), (3, 0, 0));
    assert_eq!(dst.tags("mirror/app"), ["v0", "v1", "v2"]);
    for (i, img) in images.iter().enumerate() {
        assert_eq!(
            dst.digest("mirror/app", &format!("v{i}")).as_deref(),
            Some(img.digest.as_str())
        );
    }
    assert_eq!(
        dst.catalog(),
        ["mirror/app"],
        "only the selected repository"
    );
}

#[test]
fn all_repos_maps_the_source_prefix_under_the_destination_prefix() {
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    let img = small();
    for target in ["team/a:1", "team/b/c:x", "team/b/c:y", "other/z:1"] {
        img.push(&format!("{}/{target}", src.addr), None);
    }
    let r = sync(
        dir.path(),
        &[
            "--source",
            &format!("{}/team", src.addr),
            "--dest",
            &format!("{}/copy", dst.addr),
            "--all-repos",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(counts(&r.json()), (3, 0, 0));
    let mut cat = dst.catalog();
    cat.sort();
    assert_eq!(cat, ["copy/a", "copy/b/c"]);
    assert_eq!(dst.tags("copy/b/c"), ["x", "y"]);
}

#[test]
fn a_second_run_copies_nothing_and_a_changed_tag_is_the_only_copy() {
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    for t in ["1", "2", "3"] {
        small().push(&format!("{}/app:{t}", src.addr), None);
    }
    let l = list(dir.path(), "app:1\napp:2\napp:3\n");
    let args = [
        "--source",
        src.addr.as_str(),
        "--dest",
        dst.addr.as_str(),
        "--list",
        l.to_str().unwrap(),
    ];
    let first = sync(dir.path(), &args);
    assert_eq!(counts(&first.json()), (3, 0, 0), "{}", first.stderr);
    let writes_after_first = dst.write_requests("/v2/").len();
    assert!(writes_after_first > 0);

    let second = sync(dir.path(), &args);
    assert_eq!(second.code, 0);
    let j = second.json();
    assert_eq!(counts(&j), (0, 3, 0));
    assert!(
        j["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["status"] == "skipped" && i["attempts"] == 0)
    );
    assert_eq!(
        dst.write_requests("/v2/").len(),
        writes_after_first,
        "the no-op run wrote nothing to the destination"
    );

    let changed = small();
    changed.push(&format!("{}/app:2", src.addr), None);
    let third = sync(dir.path(), &args);
    let j = third.json();
    assert_eq!(counts(&j), (1, 2, 0));
    assert_eq!(item(&j, "app:2")["status"], "copied");
    assert_eq!(
        dst.digest("app", "2").as_deref(),
        Some(changed.digest.as_str())
    );
    let new_writes: Vec<String> = dst
        .write_requests("/v2/")
        .into_iter()
        .skip(writes_after_first)
        .collect();
    assert!(
        new_writes
            .iter()
            .any(|l| l.contains("/v2/app/manifests/2 ")),
        "{new_writes:#?}"
    );
    assert!(
        !new_writes
            .iter()
            .any(|l| l.contains("/manifests/1 ") || l.contains("/manifests/3 ")),
        "{new_writes:#?}"
    );

    // The state file tells the same story.
    let st = hub_tests::status_json(dir.path().join("state.db").to_str().unwrap());
    assert_eq!(st.code, 0, "{}", st.stderr);
    let sj: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(sj["run_id"], j["run_id"]);
    assert_eq!(counts(&sj), (1, 2, 0));
}

#[test]
fn a_multi_arch_index_arrives_with_every_platform_and_the_same_digest() {
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    let img = OciImage::multi_arch(&[8192]);
    img.push(&format!("{}/multi:1", src.addr), None);
    let l = list(dir.path(), "multi:1");
    let r = sync(
        dir.path(),
        &[
            "--source",
            &src.addr,
            "--dest",
            &dst.addr,
            "--list",
            l.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        dst.digest("multi", "1").as_deref(),
        Some(img.digest.as_str())
    );
    let index = dst.manifest("multi", "1");
    let archs: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(archs, ["amd64", "arm64"]);
    for p in &img.platforms {
        assert_eq!(
            dst.digest("multi", p).as_deref(),
            Some(p.as_str()),
            "platform manifest {p} is at the destination"
        );
    }
    assert!(
        r.json()["bytes"].as_u64().unwrap() >= img.size,
        "bytes counts both platforms"
    );
}

#[test]
fn a_digest_pinned_line_arrives_as_that_digest() {
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    let old = small();
    old.push(&format!("{}/app:1", src.addr), None);
    small().push(&format!("{}/app:1", src.addr), None); // the tag moves on; the old digest stays
    let l = list(
        dir.path(),
        &format!("app@{0}\napp:pinned@{0}\n", old.digest),
    );
    let r = sync(
        dir.path(),
        &[
            "--source",
            &src.addr,
            "--dest",
            &dst.addr,
            "--list",
            l.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(counts(&r.json()), (2, 0, 0));
    assert_eq!(
        dst.digest("app", &old.digest).as_deref(),
        Some(old.digest.as_str())
    );
    assert_eq!(
        dst.digest("app", "pinned").as_deref(),
        Some(old.digest.as_str())
    );
    assert_eq!(
        dst.tags("app"),
        ["pinned"],
        "the digest-only line adds no tag"
    );
    let again = sync(
        dir.path(),
        &[
            "--source",
            &src.addr,
            "--dest",
            &dst.addr,
            "--list",
            l.to_str().unwrap(),
        ],
    );
    assert_eq!(counts(&again.json()), (0, 2, 0));
}

#[test]
fn a_line_with_its_own_host_port_registry_is_read_from_that_registry() {
    let (src, other, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    let img = small();
    img.push(&format!("{}/team/tool:2.0", other.addr), None);
    let mine = small();
    mine.push(&format!("{}/local:1", src.addr), None);
    let l = list(
        dir.path(),
        &format!("{}/team/tool:2.0\nlocal:1\n", other.addr),
    );
    let r = sync(
        dir.path(),
        &[
            "--source",
            &src.addr,
            "--dest",
            &format!("{}/pre", dst.addr),
            "--list",
            l.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        dst.digest("pre/team/tool", "2.0").as_deref(),
        Some(img.digest.as_str())
    );
    assert_eq!(
        dst.digest("pre/local", "1").as_deref(),
        Some(mine.digest.as_str())
    );
    assert!(src.tags("team/tool").is_empty());
}

#[test]
fn an_unreachable_destination_mid_run_is_retried_then_failed_and_never_recorded_copied() {
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    small().push(&format!("{}/app:1", src.addr), None);
    let proxy = CutWritesProxy::start(&dst.addr);
    let l = list(dir.path(), "app:1");
    let r = sync(
        dir.path(),
        &[
            "--source",
            &src.addr,
            "--dest",
            &proxy.addr,
            "--list",
            l.to_str().unwrap(),
            "--retries",
            "2",
        ],
    );
    assert_eq!(r.code, 1);
    let j = r.json();
    let it = item(&j, "app:1");
    assert_eq!(it["status"], "failed");
    assert_eq!(it["error"]["class"], "Retryable");
    assert_eq!(it["attempts"], 3, "first attempt + 2 retries");
    let msg = it["error"]["message"].as_str().unwrap();
    assert!(
        // The first attempt is skopeo's whole copy, later ones copy blob by blob.
        (msg.contains("skopeo copy") || msg.contains("copying blob")) && msg.contains(&proxy.addr),
        "the message says what failed where: {msg}"
    );
    assert!(proxy.cut.load(std::sync::atomic::Ordering::Relaxed) >= 3);
    assert!(dst.tags("app").is_empty());
    let st = hub_tests::status_json(dir.path().join("state.db").to_str().unwrap());
    let sj: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(counts(&sj), (0, 0, 1));
    assert!(
        sj["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["status"] != "copied")
    );
}

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    let img = small();
    img.push(&format!("{}/app:1", src.addr), None);
    img.push(&format!("{}/app:2", src.addr), None);
    img.push(&format!("{}/app:2", dst.addr), None);
    let before = dst.write_requests("/v2/").len();
    let l = list(dir.path(), "app:1\napp:2\n");
    let state = dir.path().join("dry.db");
    let r = transfer_hub(
        &[
            "images",
            "sync",
            "--source",
            &src.addr,
            "--dest",
            &dst.addr,
            "--list",
            l.to_str().unwrap(),
            "--dry-run",
            "--state",
            state.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains(&format!(
            "would copy {}/app:1 -> {}/app:1",
            src.addr, dst.addr
        )),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(&format!("in sync    {}/app:2", src.addr)),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("dry run"), "{}", r.stdout);
    assert_eq!(
        dst.write_requests("/v2/").len(),
        before,
        "nothing written to the destination"
    );
    assert_eq!(dst.tags("app"), ["2"]);
    assert!(!state.exists(), "a dry run keeps no state");
    let j = sync(
        dir.path(),
        &[
            "--source",
            &src.addr,
            "--dest",
            &dst.addr,
            "--list",
            l.to_str().unwrap(),
            "--dry-run",
        ],
    )
    .json();
    assert_eq!(item(&j, "app:1")["status"], "planned");
    assert_eq!(j["dry_run"], true);
}

#[test]
fn copies_run_at_most_concurrency_at_once() {
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    for t in 0..6 {
        small().push(&format!("{}/app:{t}", src.addr), None);
    }
    // A wrapper around the real skopeo that records how many copies run at once.
    let track = dir.path().join("track");
    std::fs::create_dir(&track).unwrap();
    let wrapper = dir.path().join("skopeo-wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ntouch {t}/$$\nls {t} | grep -vc max >> {t}/max\nsleep 0.3\n{sk} \"$@\"\nrc=$?\nrm -f {t}/$$\nexit $rc\n",
            t = track.display(),
            sk = hub_tests::require("skopeo").display()
        ),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let l = list(dir.path(), "app:ALL_TAGS");
    let state = dir.path().join("s.db");
    let r = transfer_hub(
        &[
            "images",
            "sync",
            "--source",
            &src.addr,
            "--dest",
            &dst.addr,
            "--list",
            l.to_str().unwrap(),
            "--concurrency",
            "2",
            "--output",
            "json",
            "--state",
            state.to_str().unwrap(),
        ],
        &[("TRANSFER_HUB_SKOPEO", wrapper.to_str().unwrap())],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(counts(&r.json()), (6, 0, 0));
    let seen: Vec<u32> = std::fs::read_to_string(track.join("max"))
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(seen.len(), 6);
    assert!(
        seen.iter().all(|&n| n <= 2),
        "never more than 2 copies at once: {seen:?}"
    );
}

#[test]
fn two_sources_for_one_destination_tag_copy_the_first_and_fail_the_later_naming_both() {
    let (a, b, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    let (img_a, img_b) = (small(), small());
    img_a.push(&format!("{}/org/app:1", a.addr), None);
    img_b.push(&format!("{}/org/app:1", b.addr), None);
    let l = list(
        dir.path(),
        &format!("{}/org/app:1\n{}/org/app:1\n", a.addr, b.addr),
    );
    let r = sync(
        dir.path(),
        &[
            "--source",
            &a.addr,
            "--dest",
            &format!("{}/mirror", dst.addr),
            "--list",
            l.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    let j = r.json();
    assert_eq!(counts(&j), (1, 0, 1), "{j:#}");
    let later = item(&j, &format!("{}/org/app:1", b.addr));
    assert_eq!(later["status"], "failed");
    assert_eq!(later["error"]["class"], "BadInput");
    let msg = later["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("{}/org/app:1", a.addr))
            && msg.contains(&format!("{}/org/app:1", b.addr))
            && msg.contains(&format!("{}/mirror/org/app:1", dst.addr)),
        "the error names both sources and the destination: {msg}"
    );
    assert_eq!(
        dst.digest("mirror/org/app", "1").as_deref(),
        Some(img_a.digest.as_str()),
        "the first source keeps the tag"
    );
    assert!(
        !b.access_log().contains("\"GET /v2/org/app/blobs/"),
        "nothing was copied from the later source"
    );
}

/// `--max-requests-per-second 2`: a no-op run of six tags sends at least seven requests to
/// the source (the tag list, a HEAD a tag), so it cannot take less than 3.5 s; the floor is
/// what is checked (an unpaced run's time is printed, not asserted).
#[test]
fn max_requests_per_second_paces_each_registry() {
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    let img = small();
    for i in 0..6 {
        img.push(&format!("{}/app:v{i}", src.addr), None);
    }
    let l = list(dir.path(), "app:ALL_TAGS\n");
    let args = |extra: &[&'static str]| {
        let mut a = vec![
            "--source".to_string(),
            src.addr.clone(),
            "--dest".into(),
            dst.addr.clone(),
            "--list".into(),
            l.to_str().unwrap().to_string(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |extra: &[&'static str]| {
        let a = args(extra);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let t = std::time::Instant::now();
        let r = sync(dir.path(), &a);
        (r, t.elapsed())
    };
    let (r, _) = run(&[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(counts(&r.json()), (6, 0, 0));
    let (free, free_took) = run(&[]);
    assert_eq!(counts(&free.json()), (0, 6, 0));
    let (paced, took) = run(&["--max-requests-per-second", "2"]);
    assert_eq!(paced.code, 0, "{}", paced.stderr);
    assert_eq!(counts(&paced.json()), (0, 6, 0));
    eprintln!("no-op of 6 tags: {free_took:.1?} unpaced, {took:.1?} at 2 requests a second");
    assert!(took >= std::time::Duration::from_millis(3500), "{took:?}");

    let (bad, _) = run(&["--max-requests-per-second", "0"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("--max-requests-per-second"),
        "{}",
        bad.stderr
    );
}
