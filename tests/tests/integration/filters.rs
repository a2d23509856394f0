//! What to copy (`objects sync --include/--exclude/--min-size/--max-size/--max-age/
//! --min-age/--prefix-list`) against moto's S3 on 127.0.0.1: which keys land at the
//! destination, the filtered counts (JSON, text, the state file), and the errors.

use super::objects::{REGION, S3, counts, data};
use hub_tests::transfer_hub;

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The destination's keys under `prefix`.
fn landed(s3: &S3, prefix: &str) -> Vec<String> {
    sorted(
        s3.keys("dst")
            .into_iter()
            .filter(|k| k.starts_with(prefix))
            .collect(),
    )
}

fn seed(s3: &S3) {
    s3.put("src", "data/a.jpg", &data(100, 1));
    s3.put("src", "data/b.png", &data(100, 2));
    s3.put("src", "data/tmp/c.jpg", &data(100, 3));
    s3.put("src", "data/photos/2024/d.jpg", &data(3000, 4));
    s3.put("src", "data/notes.txt", &data(1500, 5));
}

#[test]
fn include_and_exclude_rules_choose_the_keys_in_order_and_the_left_out_are_counted() {
    let s3 = S3::start(&["src", "dst"]);
    seed(&s3);
    // An object already at the destination that a rule leaves out stays as it is.
    s3.put("dst", "g/tmp/old.jpg", b"keep me");
    let run = s3.sync(
        "s3://src/data/",
        "s3://dst/g/",
        None,
        &[
            "--exclude",
            "/tmp/**",
            "--include",
            "*.jpg",
            "--include",
            "*.{txt,md}",
        ],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let j = run.json();
    assert_eq!(counts(&j), (3, 0, 0), "{j:#}");
    // b.png: no include matched; tmp/c.jpg: the exclude came first.
    assert_eq!(j["filtered"], 2, "{j:#}");
    assert_eq!(
        landed(&s3, "g/"),
        vec![
            "g/a.jpg",
            "g/notes.txt",
            "g/photos/2024/d.jpg",
            "g/tmp/old.jpg"
        ]
    );
    assert_eq!(s3.get("dst", "g/tmp/old.jpg").unwrap(), b"keep me");

    // The order decides: the include first lets tmp/c.jpg through.
    let run = s3.sync(
        "s3://src/data/",
        "s3://dst/o/",
        None,
        &["--include", "*.jpg", "--exclude", "/tmp/**"],
    );
    let j = run.json();
    assert_eq!(run.code, 0, "{j:#}");
    assert_eq!(j["filtered"], 2, "{j:#}");
    assert_eq!(
        landed(&s3, "o/"),
        vec!["o/a.jpg", "o/photos/2024/d.jpg", "o/tmp/c.jpg"]
    );

    // Only excludes: everything else goes. `*` stays within a segment.
    let run = s3.sync(
        "s3://src/data/",
        "s3://dst/x/",
        None,
        &["--exclude", "/*.jpg"],
    );
    let j = run.json();
    assert_eq!(counts(&j), (4, 0, 0), "{j:#}");
    assert_eq!(j["filtered"], 1, "{j:#}");
    assert!(!landed(&s3, "x/").contains(&"x/a.jpg".to_string()));

    // A second run with the same rules: the copied are in sync, the left out still counted;
    // the state file keeps the count.
    let run = s3.sync(
        "s3://src/data/",
        "s3://dst/o/",
        None,
        &["--include", "*.jpg", "--exclude", "/tmp/**"],
    );
    let j = run.json();
    assert_eq!(counts(&j), (0, 3, 0), "{j:#}");
    assert_eq!(j["filtered"], 2, "{j:#}");
    let state = s3.state.path().join("state.db");
    let st = hub_tests::status_json(state.to_str().unwrap());
    assert_eq!(st.code, 0, "{}", st.stderr);
    assert_eq!(st.json()["run_id"], j["run_id"]);
    assert_eq!(st.json()["filtered"], 2, "{}", st.stdout);
}

#[test]
fn size_and_age_bounds_leave_objects_out() {
    let s3 = S3::start(&["src", "dst"]);
    seed(&s3);
    // Binary units: 1K = 1024, 1.5K = 1536 (notes.txt is 1500 bytes, d.jpg 3000).
    let run = s3.sync(
        "s3://src/data/",
        "s3://dst/s/",
        None,
        &["--min-size", "1K", "--max-size", "1.5K"],
    );
    let j = run.json();
    assert_eq!(counts(&j), (1, 0, 0), "{j:#}");
    assert_eq!(j["filtered"], 4, "{j:#}");
    assert_eq!(landed(&s3, "s/"), vec!["s/notes.txt"]);

    // Everything was just written: younger than an hour.
    let run = s3.sync(
        "s3://src/data/",
        "s3://dst/young/",
        None,
        &["--min-age", "1h"],
    );
    let j = run.json();
    assert_eq!(counts(&j), (0, 0, 0), "{j:#}");
    assert_eq!(j["filtered"], 5, "{j:#}");
    assert!(landed(&s3, "young/").is_empty());
    let run = s3.sync(
        "s3://src/data/",
        "s3://dst/recent/",
        None,
        &["--max-age", "7d"],
    );
    let j = run.json();
    assert_eq!(counts(&j), (5, 0, 0), "{j:#}");
    assert_eq!(j["filtered"], 0, "{j:#}");
}

#[test]
fn a_dry_run_lists_what_the_filters_let_through_and_the_text_summary_counts_the_rest() {
    let s3 = S3::start(&["src", "dst"]);
    seed(&s3);
    let run = s3.sync(
        "s3://src/data/",
        "s3://dst/n/",
        None,
        &["-n", "--include", "photos/**"],
    );
    let j = run.json();
    assert_eq!(run.code, 0, "{j:#}");
    let planned: Vec<&str> = j["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["source"].as_str().unwrap())
        .collect();
    assert_eq!(planned, vec!["s3://src/data/photos/2024/d.jpg"]);
    assert_eq!(j["filtered"], 4, "{j:#}");
    assert!(landed(&s3, "n/").is_empty(), "a dry run copies nothing");

    let state = s3.state.path().join("text.db");
    let env = s3.moto.env(REGION);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let run = transfer_hub(
        &[
            "objects",
            "sync",
            "s3://src/data/",
            "s3://dst/t/",
            "--source-endpoint",
            &s3.moto.endpoint,
            "--dest-endpoint",
            &s3.moto.endpoint,
            "--state",
            state.to_str().unwrap(),
            "--exclude",
            "*.png",
        ],
        &env,
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("filtered: 1 object(s) left out"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_prefix_list_syncs_only_its_prefixes_each_on_its_own() {
    let s3 = S3::start(&["src", "dst"]);
    for k in [
        "data/logs/2024/a.gz",
        "data/logs/2024/b.gz",
        "data/logs/2023/c.gz",
        "data/img/x.png",
        "data/img/y.jpg",
        "data/other/z",
        "data/imgs-not-this/q",
    ] {
        s3.put("src", k, k.as_bytes());
    }
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("prefixes.txt");
    // CRLF, a comment, blank lines, spaces, a prefix inside another (listed once).
    std::fs::write(
        &list,
        "# what to sync\r\nlogs/2024/\r\n\r\n  img/ \r\nimg/sub/\r\n",
    )
    .unwrap();
    let run = s3.sync(
        "s3://src/data/",
        "s3://dst/p/",
        None,
        &[
            "--prefix-list",
            list.to_str().unwrap(),
            "--list-concurrency",
            "2",
            "--exclude",
            "img/*.png",
        ],
    );
    let j = run.json();
    assert_eq!(run.code, 0, "{j:#}\n{}", run.stderr);
    assert_eq!(counts(&j), (3, 0, 0), "{j:#}");
    // Globs match keys relative to the source prefix, the list's prefix included.
    assert_eq!(j["filtered"], 1, "{j:#}");
    assert_eq!(
        landed(&s3, "p/"),
        vec!["p/img/y.jpg", "p/logs/2024/a.gz", "p/logs/2024/b.gz"]
    );
    assert_eq!(
        s3.get("dst", "p/logs/2024/a.gz").unwrap(),
        b"data/logs/2024/a.gz"
    );

    // The same list from S3; a second run finds everything in sync.
    s3.put("src", "lists/prefixes.txt", b"logs/2024/\nimg/\n# end\n");
    let run = s3.sync(
        "s3://src/data/",
        "s3://dst/p/",
        None,
        &[
            "--prefix-list",
            "s3://src/lists/prefixes.txt",
            "--exclude",
            "img/*.png",
        ],
    );
    let j = run.json();
    assert_eq!(counts(&j), (0, 3, 0), "{j:#}\n{}", run.stderr);
}

#[test]
fn bad_filters_and_prefix_lists_stop_the_run_naming_the_flag_and_the_value() {
    let s3 = S3::start(&["src", "dst"]);
    s3.put("src", "data/a", b"a");
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("bad.txt");
    std::fs::write(&list, "ok/\n\n/absolute/\n").unwrap();
    let big = dir.path().join("big.txt");
    std::fs::write(&big, "p/\n".repeat(6 << 20)).unwrap();
    let list_arg = list.to_str().unwrap().to_string();
    let big_arg = big.to_str().unwrap().to_string();
    for (args, wants) in [
        (
            vec!["--include", "[abc"],
            vec!["--include", "[abc", "never closed"],
        ),
        (vec!["--exclude", "{a,b"], vec!["--exclude", "{a,b"]),
        (vec!["--min-size=-1"], vec!["--min-size", "\"-1\""]),
        (vec!["--max-size", "10Q"], vec!["--max-size", "10Q"]),
        (vec!["--max-age", "7x"], vec!["--max-age", "7x"]),
        (
            vec!["--prefix-list", list_arg.as_str()],
            vec!["--prefix-list", "line 3", "starts with '/'"],
        ),
        (
            vec!["--prefix-list", "s3://src/lists/missing.txt"],
            vec!["--prefix-list", "s3://src/lists/missing.txt"],
        ),
        (
            vec!["--prefix-list", big_arg.as_str()],
            vec!["--prefix-list", "larger than"],
        ),
        (
            vec!["--min-size", "2M", "--max-size", "1M"],
            vec!["--min-size", "--max-size"],
        ),
    ] {
        let run = s3.sync("s3://src/data/", "s3://dst/", None, &args);
        assert_eq!(run.code, 2, "{args:?}: {}\n{}", run.stdout, run.stderr);
        for w in wants {
            assert!(run.stderr.contains(w), "{args:?}: {w:?} in {}", run.stderr);
        }
    }
    assert!(s3.keys("dst").is_empty(), "nothing was copied");
}

#[test]
fn an_objects_task_keeps_its_filters_in_order() {
    let s3 = S3::start(&["src", "dst"]);
    seed(&s3);
    let state = s3.state.path().join("tasks.db");
    let env = s3.moto.env(REGION);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let add = transfer_hub(
        &[
            "task",
            "add",
            "jpgs",
            "--kind",
            "objects",
            "s3://src/data/",
            "s3://dst/task/",
            "--source-endpoint",
            &s3.moto.endpoint,
            "--dest-endpoint",
            &s3.moto.endpoint,
            "--state",
            state.to_str().unwrap(),
            "--include",
            "*.jpg",
            "--exclude",
            "/tmp/**",
            "--max-size",
            "1K",
        ],
        &env,
    );
    assert_eq!(add.code, 0, "{}\n{}", add.stdout, add.stderr);
    let run = transfer_hub(
        &[
            "task",
            "run",
            "jpgs",
            "--state",
            state.to_str().unwrap(),
            "--output",
            "json",
        ],
        &env,
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let j = run.json();
    // b.png: no include matched; notes.txt and photos/2024/d.jpg: over 1K.
    assert_eq!(j["filtered"], 3, "{j:#}");
    // The include came first: tmp/c.jpg passes; d.jpg is over 1K.
    assert_eq!(landed(&s3, "task/"), vec!["task/a.jpg", "task/tmp/c.jpg"]);
}
