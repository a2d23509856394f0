//! Guarded deletes (`objects sync --delete/--max-delete/--backup-prefix`) against moto's S3
//! on 127.0.0.1: what is left at the destination, what moved to the backup prefix, the
//! refusals and their exit codes, and the dry run.

use super::objects::{S3, counts, data};

fn keys(s3: &S3, bucket: &str) -> Vec<String> {
    let mut k = s3.keys(bucket);
    k.sort();
    k
}

/// The items of a JSON report with this status: their `source` (for deletes: the
/// destination object) and `dest` (the backup, or empty).
fn items(j: &serde_json::Value, status: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = j["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["status"] == status)
        .map(|i| {
            (
                i["source"].as_str().unwrap().to_string(),
                i["dest"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn delete_removes_what_the_source_lost_and_keeps_filtered_and_outside_objects() {
    let s3 = S3::start(&["src", "dst"]);
    s3.put("src", "data/a", &data(100, 1));
    s3.put("src", "data/b", &data(100, 2));
    s3.put("dst", "g/a", &data(100, 1));
    s3.put("dst", "g/gone1", b"gone");
    s3.put("dst", "g/sub/gone2", b"gone too");
    // Left out by a filter: kept, though the source has no such key.
    s3.put("dst", "g/keep.tmp", b"scratch");
    // Outside the destination prefix: never looked at.
    s3.put("dst", "other/x", b"x");
    s3.put("dst", "g2/y", b"not under g/");

    let run = s3.sync(
        "s3://src/data/",
        "s3://dst/g/",
        None,
        &["--delete", "--exclude", "*.tmp"],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let j = run.json();
    assert_eq!(counts(&j), (1, 1, 0), "{j:#}");
    assert_eq!(j["deleted"], 2, "{j:#}");
    assert_eq!(
        items(&j, "deleted"),
        vec![
            ("s3://dst/g/gone1".to_string(), String::new()),
            ("s3://dst/g/sub/gone2".to_string(), String::new()),
        ]
    );
    assert_eq!(
        keys(&s3, "dst"),
        vec!["g/a", "g/b", "g/keep.tmp", "g2/y", "other/x"]
    );
    // The state file keeps the count and the records.
    let state = s3.state.path().join("state.db");
    let st = hub_tests::status_json(state.to_str().unwrap());
    assert_eq!(st.json()["deleted"], 2, "{}", st.stdout);

    // In sync: nothing more to delete.
    let run = s3.sync(
        "s3://src/data/",
        "s3://dst/g/",
        None,
        &["--delete", "--exclude", "*.tmp"],
    );
    let j = run.json();
    assert_eq!(run.code, 0, "{j:#}");
    assert_eq!((counts(&j), j["deleted"].as_u64()), ((0, 2, 0), Some(0)));

    // Without --delete, an object the source lost stays.
    s3.put("dst", "g/extra", b"e");
    let run = s3.sync("s3://src/data/", "s3://dst/g/", None, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(keys(&s3, "dst").contains(&"g/extra".to_string()));
}

#[test]
fn a_dry_run_lists_what_it_would_delete_and_deletes_nothing() {
    let s3 = S3::start(&["src", "dst"]);
    s3.put("src", "a", b"a");
    s3.put("dst", "a", b"a");
    s3.put("dst", "old", b"old");
    let run = s3.sync("s3://src/", "s3://dst/", None, &["--delete", "-n"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let j = run.json();
    assert_eq!(j["deleted"], 1, "{j:#}");
    assert_eq!(
        items(&j, "deleted"),
        vec![("s3://dst/old".to_string(), String::new())]
    );
    assert_eq!(keys(&s3, "dst"), vec!["a", "old"]);

    // The text output says "would delete".
    let run = s3.sync_text("s3://src/", "s3://dst/", &["--delete", "--dry-run"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("would delete s3://dst/old"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("deleted: 1 object(s) missing at the source would be deleted"),
        "{}",
        run.stdout
    );
    assert_eq!(keys(&s3, "dst"), vec!["a", "old"]);
}

#[test]
fn max_delete_refuses_the_whole_step_when_it_would_remove_too_many() {
    let s3 = S3::start(&["src", "dst"]);
    for i in 0..6 {
        let k = format!("keep{i}");
        s3.put("src", &k, k.as_bytes());
        s3.put("dst", &k, k.as_bytes());
    }
    for i in 0..4 {
        s3.put("dst", &format!("gone{i}"), b"g");
    }
    s3.put("src", "new", b"new");
    let before = keys(&s3, "dst");
    // 4 candidates of 10 destination objects in scope (11 once `new` is copied): a count
    // of 3 allows 3, and 30% of 11 too.
    for (max, scope) in [("3", 10), ("30%", 11)] {
        let run = s3.sync(
            "s3://src/",
            "s3://dst/",
            None,
            &["--delete", "--max-delete", max],
        );
        assert_eq!(run.code, 1, "{max}: {}\n{}", run.stdout, run.stderr);
        let j = run.json();
        let e = j["error"].as_str().unwrap_or_default();
        assert!(
            e.contains("refusing to delete 4 object(s)")
                && e.contains(&format!("of {scope} destination"))
                && e.contains(&format!("--max-delete {max}"))
                && e.contains("at most 3"),
            "{max}: {j:#}"
        );
        assert_eq!(j["result"], "failed", "{j:#}");
        assert_eq!(j["deleted"], 0, "{j:#}");
        // Nothing deleted; the copies went ahead.
        let mut want = before.clone();
        want.push("new".into());
        want.sort();
        assert_eq!(keys(&s3, "dst"), want, "{max}");
    }
    // Within the limit: the step runs.
    let run = s3.sync(
        "s3://src/",
        "s3://dst/",
        None,
        &["--delete", "--max-delete", "40%"],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.json()["deleted"], 4);
    assert!(keys(&s3, "dst").iter().all(|k| !k.starts_with("gone")));
}

#[test]
fn a_backup_prefix_keeps_deleted_and_overwritten_objects() {
    let s3 = S3::start(&["src", "dst"]);
    s3.put("src", "a", b"new a, longer");
    s3.put("src", "same", b"same");
    // A source key under the backup prefix is left out, not copied over a backup.
    s3.put("src", ".trash/x", b"source x");
    s3.put("dst", "a", b"old a");
    s3.put("dst", "same", b"same");
    s3.put("dst", "gone", b"old gone");
    s3.put("dst", ".trash/earlier", b"an earlier backup");

    let run = s3.sync(
        "s3://src/",
        "s3://dst/",
        None,
        &["--delete", "--backup-prefix", ".trash/"],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let j = run.json();
    assert_eq!(counts(&j), (1, 1, 0), "{j:#}");
    assert_eq!(
        (j["deleted"].as_u64(), j["filtered"].as_u64()),
        (Some(1), Some(1)),
        "{j:#}"
    );
    assert_eq!(
        items(&j, "deleted"),
        vec![(
            "s3://dst/gone".to_string(),
            "s3://dst/.trash/gone".to_string()
        )]
    );
    assert_eq!(
        keys(&s3, "dst"),
        vec![".trash/a", ".trash/earlier", ".trash/gone", "a", "same"]
    );
    assert_eq!(s3.get("dst", "a").unwrap(), b"new a, longer");
    assert_eq!(s3.get("dst", ".trash/a").unwrap(), b"old a");
    assert_eq!(s3.get("dst", ".trash/gone").unwrap(), b"old gone");
    assert_eq!(
        s3.get("dst", ".trash/earlier").unwrap(),
        b"an earlier backup"
    );

    // Backups are never delete candidates: the next run has nothing to do.
    let run = s3.sync(
        "s3://src/",
        "s3://dst/",
        None,
        &[
            "--delete",
            "--backup-prefix",
            ".trash/",
            "--max-delete",
            "0",
        ],
    );
    let j = run.json();
    assert_eq!(run.code, 0, "{j:#}");
    assert_eq!((counts(&j), j["deleted"].as_u64()), ((0, 2, 0), Some(0)));

    // A backup prefix beside the destination prefix; an overwrite without --delete.
    s3.put("src", "live/k", b"k v2 is longer");
    s3.put("dst", "live/k", b"k v1");
    let run = s3.sync(
        "s3://src/live/",
        "s3://dst/live/",
        None,
        &["--backup-prefix", "old/"],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(s3.get("dst", "old/k").unwrap(), b"k v1");
    assert_eq!(s3.get("dst", "live/k").unwrap(), b"k v2 is longer");
}

#[test]
fn bad_delete_settings_stop_the_run_naming_the_flag_and_the_value() {
    let s3 = S3::start(&["src", "dst"]);
    s3.put("src", "live/a", b"a");
    s3.put("dst", "live/x/old", b"o");
    for (args, wants) in [
        (
            vec!["--delete", "--max-delete", "150%"],
            vec!["--max-delete", "150%", "0% to 100%"],
        ),
        (
            vec!["--delete", "--max-delete=-3"],
            vec!["--max-delete", "-3", "negative"],
        ),
        (
            vec!["--delete", "--max-delete", "lots"],
            vec!["--max-delete", "lots"],
        ),
        (vec!["--max-delete", "5"], vec!["--max-delete", "--delete"]),
        (
            vec!["--backup-prefix", "live/"],
            vec!["--backup-prefix", "\"live/\"", "lies under it"],
        ),
        (
            vec!["--backup-prefix", ""],
            vec!["--backup-prefix", "empty"],
        ),
    ] {
        let run = s3.sync("s3://src/live/", "s3://dst/live/x/", None, &args);
        assert_eq!(run.code, 2, "{args:?}: {}\n{}", run.stdout, run.stderr);
        for w in wants {
            assert!(run.stderr.contains(w), "{args:?}: {w:?} in {}", run.stderr);
        }
    }
    assert_eq!(keys(&s3, "dst"), vec!["live/x/old"], "nothing changed");
}

#[test]
fn a_prefix_list_deletes_only_within_its_prefixes() {
    let s3 = S3::start(&["src", "dst"]);
    s3.put("src", "logs/a", b"a");
    s3.put("dst", "logs/a", b"a");
    s3.put("dst", "logs/stale", b"s");
    s3.put("dst", "img/unlisted", b"u");
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("p.txt");
    std::fs::write(&list, "logs/\n").unwrap();
    let run = s3.sync(
        "s3://src/",
        "s3://dst/",
        None,
        &["--delete", "--prefix-list", list.to_str().unwrap()],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.json()["deleted"], 1);
    assert_eq!(keys(&s3, "dst"), vec!["img/unlisted", "logs/a"]);
}

/// A copy that fails (every GET of one source object answered 503 by the fault proxy in
/// front of moto) keeps the whole delete step from running: the source listing may be what
/// went wrong.
#[test]
fn a_failed_copy_leaves_every_delete_undone() {
    let s3 = S3::start(&["src", "dst"]);
    s3.put("src", "ok", b"fine");
    s3.put("src", "bad", b"never arrives");
    s3.put("dst", "stale", b"s");
    let proxy = s3.failing("GET /src/bad");
    let run = s3.sync(
        "s3://src/",
        "s3://dst/",
        Some(&proxy.endpoint()),
        &["--delete", "--retries", "0"],
    );
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let j = run.json();
    assert_eq!(counts(&j), (1, 0, 1), "{j:#}");
    assert_eq!(j["deleted"], 0, "{j:#}");
    let e = j["error"].as_str().unwrap_or_default();
    assert!(
        e.contains("not deleting 1 object(s)") && e.contains("1 object(s) failed to copy"),
        "{j:#}"
    );
    assert_eq!(keys(&s3, "dst"), vec!["ok", "stale"]);
}

/// A bucket split into folders for parallel listing (the default, `--list-concurrency 8`)
/// gives the same result as one listing (`--list-concurrency 1`): objects right under the
/// prefix, folders, nested folders, a folder only the destination has, keys with spaces.
#[test]
fn a_split_listing_copies_and_deletes_as_one_listing_does() {
    let s3 = S3::start(&["src", "dst"]);
    let src_keys = [
        "top.txt",
        "a/1",
        "a/b/2",
        "a/b/c/3",
        "a/b/c/d/4",
        "b/5",
        "b c/6",
        "b-c/7",
        "z",
    ];
    for k in src_keys {
        s3.put("src", &format!("data/{k}"), k.as_bytes());
    }
    let stale = ["only-dst/x", "a/b/stale", "stale-top"];
    for (n, dest) in ["one/", "split/"].into_iter().enumerate() {
        for k in stale {
            s3.put("dst", &format!("{dest}{k}"), b"old");
        }
        s3.put("dst", &format!("{dest}a/1"), b"a/1");
        let lc = if n == 0 { "1" } else { "8" };
        let run = s3.sync(
            "s3://src/data/",
            &format!("s3://dst/{dest}"),
            None,
            &["--delete", "--list-concurrency", lc],
        );
        assert_eq!(run.code, 0, "{lc}: {}\n{}", run.stdout, run.stderr);
        let j = run.json();
        assert_eq!(counts(&j), (8, 1, 0), "{lc}: {j:#}");
        assert_eq!(j["deleted"], 3, "{lc}: {j:#}");
    }
    let under = |p: &str| -> Vec<String> {
        keys(&s3, "dst")
            .into_iter()
            .filter_map(|k| k.strip_prefix(p).map(str::to_string))
            .collect()
    };
    let mut want: Vec<String> = src_keys.iter().map(|k| k.to_string()).collect();
    want.sort();
    assert_eq!(under("one/"), want);
    assert_eq!(under("split/"), want);
    for k in src_keys {
        assert_eq!(s3.get("dst", &format!("split/{k}")).unwrap(), k.as_bytes());
    }
}
