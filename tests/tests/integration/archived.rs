//! Archived sources (`objects sync` with GLACIER and DEEP_ARCHIVE objects, `--restore-days`,
//! `--restore-tier`) against moto's S3 and its RestoreObject on 127.0.0.1: what is left as
//! `archived`, what a restore request reports, what a later run copies, and a refused
//! restore failing only its own object.

use super::objects::{S3, counts};
use aws_sdk_s3::types::StorageClass;

fn put_in(s3: &S3, key: &str, body: &[u8], class: StorageClass) {
    s3.rt
        .block_on(
            s3.client
                .put_object()
                .bucket("src")
                .key(key)
                .storage_class(class)
                .body(body.to_vec().into())
                .send(),
        )
        .unwrap();
}

fn statuses(j: &serde_json::Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = j["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["source"].as_str().unwrap().to_string(),
                i["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

fn seed(s3: &S3) {
    put_in(s3, "cold", b"in glacier", StorageClass::Glacier);
    put_in(s3, "deep", b"in deep archive", StorageClass::DeepArchive);
    put_in(s3, "ir", b"instant retrieval", StorageClass::GlacierIr);
    s3.put("src", "hot", b"standard");
}

#[test]
fn archived_sources_are_left_then_restored_then_copied() {
    let s3 = S3::start(&["src", "dst"]);
    seed(&s3);
    // Not restored, no --restore-days: left, counted, and the run still succeeds.
    let run = s3.sync("s3://src/", "s3://dst/", None, &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let j = run.json();
    assert_eq!(counts(&j), (2, 0, 0), "{j:#}");
    assert_eq!(
        (j["archived"].as_u64(), j["restoring"].as_u64()),
        (Some(2), Some(0)),
        "{j:#}"
    );
    let s = statuses(&j);
    assert!(
        s.contains(&("s3://src/cold".into(), "archived".into())),
        "{s:?}"
    );
    assert!(
        s.contains(&("s3://src/deep".into(), "archived".into())),
        "{s:?}"
    );
    assert_eq!(s3.keys("dst").len(), 2);
    assert_eq!(s3.get("dst", "ir").unwrap(), b"instant retrieval");

    // A dry run with --restore-days asks for nothing and says what it would restore.
    let run = s3.sync(
        "s3://src/",
        "s3://dst/",
        None,
        &["-n", "--restore-days", "2"],
    );
    let j = run.json();
    assert_eq!(run.code, 0, "{j:#}");
    assert_eq!(j["restoring"], 2, "{j:#}");
    let head = |k: &str| {
        s3.rt
            .block_on(s3.client.head_object().bucket("src").key(k).send())
            .unwrap()
    };
    assert_eq!(
        head("cold").restore(),
        None,
        "a dry run asked for a restore"
    );

    // --restore-days: restores are requested and reported `restoring`.
    let run = s3.sync(
        "s3://src/",
        "s3://dst/",
        None,
        &["--restore-days", "2", "--restore-tier", "bulk"],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let j = run.json();
    assert_eq!(counts(&j), (0, 2, 0), "{j:#}");
    assert_eq!(
        (j["archived"].as_u64(), j["restoring"].as_u64()),
        (Some(0), Some(2)),
        "{j:#}"
    );
    for k in ["cold", "deep"] {
        assert!(head(k).restore().is_some(), "{k}: no restore asked for");
    }

    // moto restores at once: the next run finds them restored (HEAD) and copies them.
    let run = s3.sync("s3://src/", "s3://dst/", None, &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let j = run.json();
    assert_eq!(counts(&j), (2, 2, 0), "{j:#}");
    assert_eq!(j["archived"], 0, "{j:#}");
    assert_eq!(s3.get("dst", "cold").unwrap(), b"in glacier");
    assert_eq!(s3.get("dst", "deep").unwrap(), b"in deep archive");
}

#[test]
fn the_text_summary_counts_archived_objects() {
    let s3 = S3::start(&["src", "dst"]);
    seed(&s3);
    let run = s3.sync_text("s3://src/", "s3://dst/", &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("archived   s3://src/cold"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("archived: 2 source object(s) in GLACIER or DEEP_ARCHIVE"),
        "{}",
        run.stdout
    );
}

/// A restore S3 refuses (the fault proxy answers every RestoreObject of `deep` with 503
/// ServiceUnavailable) fails that object with the service's code; the others go on.
#[test]
fn a_refused_restore_fails_only_its_object_with_the_service_code() {
    let s3 = S3::start(&["src", "dst"]);
    seed(&s3);
    let proxy = s3.failing("POST /src/deep?restore");
    let run = s3.sync(
        "s3://src/",
        "s3://dst/",
        Some(&proxy.endpoint()),
        &["--restore-days", "1", "--retries", "0"],
    );
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let j = run.json();
    assert_eq!(counts(&j), (2, 0, 1), "{j:#}");
    assert_eq!(j["restoring"], 1, "{j:#}");
    let failed = j["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["status"] == "failed")
        .unwrap();
    assert_eq!(failed["source"], "s3://src/deep");
    let msg = failed["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("ServiceUnavailable") && msg.contains("restore s3://src/deep"),
        "{msg}"
    );
}

#[test]
fn bad_restore_settings_stop_the_run_naming_the_flag_and_the_value() {
    let s3 = S3::start(&["src", "dst"]);
    s3.put("src", "a", b"a");
    for (args, wants) in [
        (vec!["--restore-days", "0"], vec!["--restore-days", "0"]),
        (vec!["--restore-days", "two"], vec!["--restore-days", "two"]),
        (
            vec!["--restore-days", "1", "--restore-tier", "Expedited"],
            vec!["--restore-tier", "Expedited", "Standard or Bulk"],
        ),
        (
            vec!["--restore-tier", "Bulk"],
            vec!["--restore-tier", "--restore-days"],
        ),
    ] {
        let run = s3.sync("s3://src/", "s3://dst/", None, &args);
        assert_eq!(run.code, 2, "{args:?}: {}\n{}", run.stdout, run.stderr);
        for w in wants {
            assert!(run.stderr.contains(w), "{args:?}: {w:?} in {}", run.stderr);
        }
    }
    assert!(s3.keys("dst").is_empty());
}
