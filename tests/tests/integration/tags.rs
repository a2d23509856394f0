//! Tag rules (`--include-tags`, `--exclude-tags`, `--semver`, `--newest`) between real
//! registries: which of the listed tags land at the destination.

use super::images::{list, sync};
use hub_tests::{OciImage, RegistryServer, transfer_hub};

/// The same small image under every tag, in `repo`.
fn push_tags(src: &RegistryServer, repo: &str, tags: &[&str]) {
    let img = OciImage::single(&[2048]);
    for t in tags {
        img.push(&format!("{}/{repo}:{t}", src.addr), None);
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

const TAGS: &[&str] = &[
    "1.19.0",
    "1.20.0",
    "v1.21.3",
    "1.22.0-rc.1",
    "1.25",
    "2.0.0",
    "latest",
    "dev",
];

#[test]
fn include_and_exclude_rules_pick_listed_tags_and_a_named_tag_is_always_copied() {
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    push_tags(&src, "app", TAGS);
    push_tags(&src, "pinned", &["dev", "1.0.0"]);
    let l = list(dir.path(), "app:ALL_TAGS\npinned:dev\n");
    let r = sync(
        dir.path(),
        &[
            &src.addr,
            &format!("{}/m", dst.addr),
            "--list",
            l.to_str().unwrap(),
            "--include-tags",
            "v?1\\..*",
            "--include-tags",
            "latest",
            "--exclude-tags",
            ".*-rc.*",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        sorted(dst.tags("m/app")),
        ["1.19.0", "1.20.0", "1.25", "latest", "v1.21.3"],
        "any include admits, any exclude refuses, both anchored (2.0.0 and dev left out)"
    );
    // `pinned:dev` names its tag: the rules are for listed tags only.
    assert_eq!(dst.tags("m/pinned"), ["dev"]);
    assert_eq!(r.json()["copied"], 6);
}

#[test]
fn a_semver_range_and_newest_keep_only_the_versions_asked_for_in_every_repository() {
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    push_tags(&src, "team/app", TAGS);
    push_tags(&src, "team/tool", &["0.9.0", "1.2.0", "1.10.0", "main"]);
    let r = sync(
        dir.path(),
        &[
            &format!("{}/team", src.addr),
            &format!("{}/range", dst.addr),
            "--all-repos",
            "--semver",
            ">=1.20, <2",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    // 1.25 is not MAJOR.MINOR.PATCH and 1.22.0-rc.1 a pre-release the range does not name.
    assert_eq!(sorted(dst.tags("range/app")), ["1.20.0", "v1.21.3"]);
    assert!(
        dst.tags("range/tool").is_empty(),
        "no tool version is inside the range"
    );

    // Newest 2 by semver order (1.10.0 above 1.2.0; 1.22.0-rc.1 above 1.21.3, as semver
    // orders them), non-versions left out.
    let r = transfer_hub(
        &[
            "images",
            "sync",
            &format!("{}/team", src.addr),
            &format!("{}/newest", dst.addr),
            "--all-repos",
            "--newest",
            "2",
            "--state",
            dir.path().join("newest.db").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(sorted(dst.tags("newest/app")), ["1.22.0-rc.1", "2.0.0"]);
    assert_eq!(sorted(dst.tags("newest/tool")), ["1.10.0", "1.2.0"]);
    assert!(
        r.stdout
            .contains("tag rules: 8 of 12 listed tag(s) left out"),
        "the text output says what the rules left out: {}",
        r.stdout
    );
}

#[test]
fn a_tag_rule_that_does_not_parse_exits_2_naming_the_flag_and_the_value() {
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    for (flag, value) in [
        ("--include-tags", "v(1"),
        ("--exclude-tags", "[z-a]"),
        ("--semver", ">=one"),
        ("--newest", "0"),
    ] {
        let r = sync(
            dir.path(),
            &[&src.addr, &dst.addr, "--all-repos", flag, value],
        );
        assert_eq!(r.code, 2, "{flag} {value}: {}", r.stderr);
        // On stderr, or in the JSON error object on stdout.
        let said = format!("{}{}", r.stderr, r.stdout);
        assert!(
            said.contains(flag) && said.contains(value),
            "names {flag} and {value:?}: {said}"
        );
    }
    assert!(dst.catalog().is_empty(), "nothing was copied");
}

#[test]
fn no_overwrite_leaves_a_tag_that_holds_another_image_alone_as_a_conflict_naming_both_digests() {
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    let wanted = OciImage::single(&[2048]);
    wanted.push(&format!("{}/app:1", src.addr), None);
    wanted.push(&format!("{}/app:2", src.addr), None);
    // Someone else's image already under the destination's tag 1.
    let theirs = OciImage::single(&[1024]);
    theirs.push(&format!("{}/m/app:1", dst.addr), None);
    let l = list(dir.path(), "app:1\napp:2\n");
    let args = [
        src.addr.as_str(),
        &format!("{}/m", dst.addr),
        "--list",
        l.to_str().unwrap(),
    ];

    let mut protected = args.to_vec();
    protected.push("--no-overwrite");
    let r = sync(dir.path(), &protected);
    assert_eq!(
        r.code, 0,
        "a conflict is reported, not a failure: {}",
        r.stderr
    );
    let j = r.json();
    assert_eq!(
        (
            j["copied"].as_u64(),
            j["conflicts"].as_u64(),
            j["failed"].as_u64()
        ),
        (Some(1), Some(1), Some(0)),
        "{j:#}"
    );
    let conflict = super::images::item(&j, "app:1");
    assert_eq!(conflict["status"], "conflict", "{conflict:#}");
    assert_eq!(conflict["error"]["class"], "Conflict", "{conflict:#}");
    let why = conflict["error"]["message"].as_str().unwrap();
    assert!(
        why.contains(&wanted.digest) && why.contains(&theirs.digest),
        "names both digests: {why}"
    );
    assert_eq!(
        dst.digest("m/app", "1").as_deref(),
        Some(theirs.digest.as_str()),
        "left alone"
    );
    assert_eq!(
        dst.digest("m/app", "2").as_deref(),
        Some(wanted.digest.as_str()),
        "the others go on"
    );

    // The text a user reads says so, and the state file keeps it.
    let state = dir.path().join("text.db");
    let text = transfer_hub(
        &[
            &["images", "sync"],
            &protected[..],
            &["--state", state.to_str().unwrap()],
        ]
        .concat(),
        &[],
    );
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(
        text.stdout.contains("CONFLICT") && text.stdout.contains("conflicts: 1"),
        "{}",
        text.stdout
    );
    let status = hub_tests::status_json(state.to_str().unwrap()).json();
    assert_eq!(
        super::images::item(&status, "app:1")["status"],
        "conflict",
        "{status:#}"
    );

    // Without the flag the tag is replaced, as before.
    let r = sync(dir.path(), &args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["copied"], 1, "{}", r.stdout);
    assert_eq!(
        dst.digest("m/app", "1").as_deref(),
        Some(wanted.digest.as_str())
    );
}

/// A dry run with `--output json` says why each tag was taken or left out: each item has
/// its `reason` (where it came from, the rules that kept it, what the plan does), and
/// `left_out` names every listed tag the rules dropped with the rule that dropped it.
#[test]
fn a_dry_run_says_why_each_tag_was_taken_or_left_out() {
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    push_tags(&src, "app", TAGS);
    push_tags(&src, "pinned", &["dev"]);
    // One tag is at the destination with another image; one was copied before.
    push_tags(&dst, "m/app", &["2.0.0"]);
    let other = dst.digest("m/app", "2.0.0").unwrap();
    let before = list(dir.path(), "pinned:dev\n");
    let first = sync(
        dir.path(),
        &[
            &src.addr,
            &format!("{}/m", dst.addr),
            "--list",
            before.to_str().unwrap(),
        ],
    );
    assert_eq!(first.code, 0, "{}", first.stderr);
    let l = list(dir.path(), "app:ALL_TAGS\npinned:dev\n");
    let r = sync(
        dir.path(),
        &[
            &src.addr,
            &format!("{}/m", dst.addr),
            "--list",
            l.to_str().unwrap(),
            "--include-tags",
            "v?[12]\\..*",
            "--exclude-tags",
            ".*-rc.*",
            "--semver",
            ">=1.20",
            "--newest",
            "2",
            "--dry-run",
        ],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    let reasons: std::collections::BTreeMap<String, String> = j["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let s = i["source"].as_str().unwrap();
            (
                s.rsplit('/').next().unwrap().to_string(),
                i["reason"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{i}"))
                    .to_string(),
            )
        })
        .collect();
    let rules =
        "--include-tags 'v?[12]\\..*', --exclude-tags '.*-rc.*', --semver '>=1.20', --newest 2";
    assert_eq!(
        reasons.keys().collect::<Vec<_>>(),
        ["app:2.0.0", "app:v1.21.3", "pinned:dev"],
        "{j:#}"
    );
    assert_eq!(
        reasons["app:2.0.0"],
        format!("listed by ALL_TAGS, kept by {rules}; the destination holds {other}: copy")
    );
    assert_eq!(
        reasons["app:v1.21.3"],
        format!("listed by ALL_TAGS, kept by {rules}; missing at the destination: copy")
    );
    assert_eq!(
        reasons["pinned:dev"],
        "named in the list; the same digest on both sides: in sync"
    );
    let left: std::collections::BTreeMap<String, String> = j["left_out"]
        .as_array()
        .unwrap_or_else(|| panic!("{j:#}"))
        .iter()
        .map(|i| {
            (
                i["source"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_string(),
                i["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: std::collections::BTreeMap<String, String> = [
        ("app:1.19.0", "outside --semver '>=1.20'"),
        ("app:1.20.0", "not among the 2 newest versions (--newest)"),
        ("app:1.22.0-rc.1", "matches --exclude-tags '.*-rc.*'"),
        ("app:1.25", "not a semantic version (--semver)"),
        ("app:latest", "matches no --include-tags pattern"),
        ("app:dev", "matches no --include-tags pattern"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(left, want, "{j:#}");
    assert_eq!(dst.tags("m/app"), ["2.0.0"], "a dry run copies nothing");
}
