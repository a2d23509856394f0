//! `--min-age`, the supply-chain cooldown, between real registries: a source digest is
//! copied only once the first run that saw it is that long ago; a tag moved to a new digest
//! waits again; a dry run keeps no first-seen record.

use super::images::{item, list, sync};
use chrono::{DateTime, Utc};
use hub_tests::{OciImage, RegistryServer, transfer_hub};
use std::time::Duration;

fn until(j: &serde_json::Value, suffix: &str) -> DateTime<Utc> {
    let i = item(j, suffix);
    assert_eq!(i["status"], "waiting", "{j:#}");
    i["waiting_until"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .unwrap_or_else(|| panic!("a waiting item says until when: {j:#}"))
        .with_timezone(&Utc)
}

#[test]
fn a_new_source_digest_waits_for_min_age_from_its_first_sighting_then_copies() {
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    let old = OciImage::single(&[2048]);
    old.push(&format!("{}/team/app:1", src.addr), None);
    let l = list(dir.path(), "team/app:1\n");
    let l = l.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut a = vec!["--source", &src.addr, "--dest", &dst.addr, "--list", l];
        a.extend_from_slice(extra);
        sync(dir.path(), &a)
    };

    // A dry run says it would wait, and records no sighting.
    let dry = run(&["--min-age", "1h", "--dry-run"]);
    assert_eq!(dry.code, 0, "{}\n{}", dry.stdout, dry.stderr);
    until(&dry.json(), "team/app:1");

    // The first real run records the sighting: waiting, an hour from now, nothing copied,
    // and the run succeeds (waiting is not a failure).
    let t0 = Utc::now();
    let first = run(&["--min-age", "1h"]);
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    let j = first.json();
    assert_eq!(
        (j["copied"].as_u64(), j["waiting"].as_u64()),
        (Some(0), Some(1)),
        "{j:#}"
    );
    assert_eq!(j["result"], "succeeded", "{j:#}");
    let u = until(&j, "team/app:1");
    assert!(
        u >= t0 + chrono::TimeDelta::minutes(60) - chrono::TimeDelta::seconds(1)
            && u <= Utc::now() + chrono::TimeDelta::minutes(60),
        "waiting until {u}, an hour after {t0}"
    );
    assert!(
        dst.tags("team/app").is_empty(),
        "nothing is copied while waiting"
    );

    // A shorter cooldown counts from that same first sighting, not from this run.
    let short = run(&["--min-age", "3s"]);
    assert_eq!(short.code, 0, "{}\n{}", short.stdout, short.stderr);
    let mut j = short.json();
    if j["waiting"] == 1 {
        let u = until(&j, "team/app:1");
        assert!(
            u <= t0 + chrono::TimeDelta::seconds(4) + (Utc::now() - t0),
            "counted from the first sighting at {t0}: {u}"
        );
        std::thread::sleep(
            (u - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(200),
        );
        let copied = run(&["--min-age", "3s"]);
        assert_eq!(copied.code, 0, "{}\n{}", copied.stdout, copied.stderr);
        j = copied.json();
    }
    assert_eq!(j["copied"], 1, "{j:#}");
    assert_eq!(
        dst.digest("team/app", "1").as_deref(),
        Some(old.digest.as_str())
    );

    // The tag moves to a new digest: it waits again, and the destination keeps the old one.
    let new = OciImage::single(&[3072]);
    new.push(&format!("{}/team/app:1", src.addr), None);
    let moved = run(&["--min-age", "1h"]);
    assert_eq!(moved.code, 0, "{}\n{}", moved.stdout, moved.stderr);
    let j = moved.json();
    until(&j, "team/app:1");
    assert_eq!(
        item(&j, "team/app:1")["source_digest"],
        new.digest.as_str(),
        "{j:#}"
    );
    assert_eq!(
        dst.digest("team/app", "1").as_deref(),
        Some(old.digest.as_str())
    );

    // The text summary says so, with the time left.
    let state = dir.path().join("state.db");
    let text = transfer_hub(
        &[
            "images",
            "sync",
            "--source",
            &src.addr,
            "--dest",
            &dst.addr,
            "--list",
            l,
            "--min-age",
            "1h",
            "--state",
            state.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(text.code, 0, "{}\n{}", text.stdout, text.stderr);
    assert!(
        text.stdout.contains("waiting")
            && text.stdout.contains("left)")
            && text.stdout.contains("waiting: 1 image(s)"),
        "{}",
        text.stdout
    );
}

#[test]
fn a_min_age_that_does_not_parse_exits_2_naming_the_flag_and_value() {
    let r = transfer_hub(
        &[
            "images",
            "sync",
            "--source",
            "127.0.0.1:9",
            "--dest",
            "127.0.0.1:9",
            "--list",
            "x",
            "--min-age",
            "7x",
        ],
        &[],
    );
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("--min-age") && r.stderr.contains("7x"),
        "{}",
        r.stderr
    );
}
