//! The command line's contract: exit codes, messages, `status`.

use hub_tests::{OciImage, RegistryServer, transfer_hub, transfer_hub_closed_stdout};

#[test]
fn bad_usage_and_config_exit_2_with_a_message_naming_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let r = transfer_hub(
        &[
            "images",
            "sync",
            "--source",
            "127.0.0.1:1",
            "--dest",
            "127.0.0.1:2",
        ],
        &[],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("--list") && r.stderr.contains("--all-repos"),
        "{}",
        r.stderr
    );

    let r = transfer_hub(
        &[
            "images",
            "sync",
            "--source",
            "Bad Host!",
            "--dest",
            "127.0.0.1:2",
            "--all-repos",
        ],
        &[],
    );
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("Bad Host!"), "{}", r.stderr);

    let missing = dir.path().join("nope.txt");
    let r = transfer_hub(
        &[
            "images",
            "sync",
            "--source",
            "127.0.0.1:1",
            "--dest",
            "127.0.0.1:2",
            "--list",
            missing.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("nope.txt"), "{}", r.stderr);

    let bad_auth = dir.path().join("auth.json");
    std::fs::write(
        &bad_auth,
        "{\"auths\": {\"reg.example\": {\"auth\": \"%%%\"}}}",
    )
    .unwrap();
    let list = dir.path().join("l.txt");
    std::fs::write(&list, "a").unwrap();
    let r = transfer_hub(
        &[
            "images",
            "sync",
            "--source",
            "127.0.0.1:1",
            "--dest",
            "127.0.0.1:2",
            "--list",
            list.to_str().unwrap(),
            "--authfile",
            bad_auth.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("reg.example") && r.stderr.contains("auth.json"),
        "{}",
        r.stderr
    );

    let r = transfer_hub(
        &[
            "images",
            "sync",
            "--source",
            "127.0.0.1:1",
            "--dest",
            "127.0.0.1:2",
            "--all-repos",
            "--concurrency",
            "0",
        ],
        &[],
    );
    assert_eq!(r.code, 2);
}

#[test]
fn status_shows_a_past_run_and_names_the_known_runs_when_asked_for_another() {
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    OciImage::single(&[2048]).push(&format!("{}/app:1", src.addr), None);
    let list = dir.path().join("l.txt");
    std::fs::write(&list, "app:1\nmissing:1\n").unwrap();
    let state = dir.path().join("state.db");
    let s = state.to_str().unwrap();
    let r = transfer_hub(
        &[
            "images",
            "sync",
            "--source",
            &src.addr,
            "--dest",
            &dst.addr,
            "--list",
            list.to_str().unwrap(),
            "--state",
            s,
        ],
        &[],
    );
    assert_eq!(r.code, 1, "one image is missing at the source");
    assert!(
        r.stdout.contains("copied") && r.stdout.contains("NotFound"),
        "{}",
        r.stdout
    );
    let run_id = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("run "))
        .and_then(|l| l.split(':').next())
        .unwrap()
        .to_string();

    let st = transfer_hub(&["status", "--run", &run_id, "--state", s], &[]);
    assert_eq!(st.code, 0, "{}", st.stderr);
    assert!(
        st.stdout.contains(&format!(
            "copied     {}/app:1 -> {}/app:1",
            src.addr, dst.addr
        )),
        "{}",
        st.stdout
    );
    assert!(st.stdout.contains("NotFound"), "{}", st.stdout);
    let header = st
        .stdout
        .lines()
        .position(|l| l.contains("copied") && l.contains("skipped") && l.contains("failed"))
        .unwrap();
    let figures: Vec<&str> = st
        .stdout
        .lines()
        .nth(header + 1)
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(&figures[..3], ["1", "0", "1"]);

    let other = transfer_hub(&["status", "--run", "no-such-run", "--state", s], &[]);
    assert_eq!(other.code, 2);
    assert!(
        other.stderr.contains("no-such-run") && other.stderr.contains(&run_id),
        "{}",
        other.stderr
    );

    let none = transfer_hub(
        &[
            "status",
            "--state",
            dir.path().join("absent.db").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(none.code, 2);
    assert!(none.stderr.contains("absent.db"));
}

#[test]
fn version_names_the_commit_it_was_built_from_and_completions_know_every_command() {
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let head = String::from_utf8(head.stdout).unwrap().trim().to_string();
    let r = transfer_hub(&["--version"], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.trim().starts_with("transfer-hub ")
            && r.stdout.trim().ends_with(&format!("(commit {head})")),
        "{} (HEAD is {head})",
        r.stdout
    );
    for shell in ["bash", "zsh", "fish"] {
        let r = transfer_hub(&["completions", shell], &[]);
        assert_eq!(r.code, 0, "{shell}: {}", r.stderr);
        for word in [
            "images",
            "objects",
            "status",
            "task",
            "serve",
            "concurrency", // fish names long flags without their dashes
        ] {
            assert!(r.stdout.contains(word), "{shell} completions lack {word}");
        }
    }
    let r = transfer_hub(&["completions", "tcsh"], &[]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("tcsh") && r.stderr.contains("bash"),
        "{}",
        r.stderr
    );
}

/// A closed stdout (`transfer-hub … | head -1`) ends the output quietly: no panic, exit
/// 0 or 141, and the run goes on to the end, all of it in the state file.
#[test]
fn a_closed_stdout_ends_the_output_quietly_and_the_run_is_kept_whole() {
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    let image = OciImage::single(&[1024]);
    for t in 1..=4 {
        image.push(&format!("{}/app:{t}", src.addr), None);
    }
    let list = dir.path().join("l.txt");
    std::fs::write(&list, "app:ALL_TAGS\n").unwrap();
    let state = dir.path().join("state.db");
    let s = state.to_str().unwrap();
    let quiet = |r: &hub_tests::Run, what: &str| {
        assert!(
            r.code == 0 || r.code == 141,
            "{what}: exit {} (expected 0 or 141)\n{}",
            r.code,
            r.stderr
        );
        assert!(
            !r.stderr.contains("panicked") && !r.stderr.contains("Broken pipe"),
            "{what}: {}",
            r.stderr
        );
    };
    for output in ["text", "json"] {
        let r = transfer_hub_closed_stdout(
            &[
                "images",
                "sync",
                "--source",
                &src.addr,
                "--dest",
                &dst.addr,
                "--list",
                list.to_str().unwrap(),
                "--state",
                s,
                "--output",
                output,
            ],
            &[],
        );
        quiet(&r, &format!("images sync --output {output}"));
        let st = transfer_hub(&["status", "--state", s, "--output", "json"], &[]);
        assert_eq!(st.code, 0, "{}", st.stderr);
        let j = st.json();
        let items = j["items"].as_array().unwrap();
        assert_eq!(items.len(), 4, "{j:#}");
        assert!(j["ended_at"].is_string(), "the run was closed: {j:#}");
        let done = j["copied"].as_u64().unwrap() + j["skipped"].as_u64().unwrap();
        assert_eq!(done, 4, "{j:#}");
    }
    for args in [
        vec!["status", "--state", s],
        vec!["status", "--state", s, "--output", "json"],
        vec!["task", "list", "--state", s],
        vec!["completions", "bash"],
        vec!["--help"],
    ] {
        let r = transfer_hub_closed_stdout(&args, &[]);
        quiet(&r, &args.join(" "));
    }
}

/// `images sync` with JSON output and its own state file; extra arguments after.
fn images_json(state: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> hub_tests::Run {
    let mut a = vec![
        "images",
        "sync",
        "--output",
        "json",
        "--retry-base-ms",
        "10",
        "--state",
        state.to_str().unwrap(),
    ];
    a.extend_from_slice(args);
    transfer_hub(&a, env)
}

/// The one error line of a failed command (the first that says `error:`), checked to be a
/// single line with no Rust Debug output, SDK struct or markup in it.
fn one_error_line(r: &hub_tests::Run) -> String {
    let errors: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{}", r.stderr);
    let line = errors[0].to_string();
    for bad in ["Error {", "Some(", "<?xml", "<html", "\\n", "ErrorMetadata"] {
        assert!(!line.contains(bad), "{bad:?} in {line}");
    }
    line
}

/// A run that fails before it copies anything is `failed` with its error in `status`, and
/// `--output json` prints one JSON object with `error`, `kind`, times and the exit code.
#[test]
fn a_run_that_fails_before_copying_is_recorded_failed_with_its_error_and_prints_json() {
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    let state = dir.path().join("state.db");
    // An empty source: --all-repos finds nothing to copy.
    let r = images_json(
        &state,
        &["--source", &src.addr, "--dest", &dst.addr, "--all-repos"],
        &[],
    );
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    let line = one_error_line(&r);
    assert!(
        line.contains("no repository under") && line.contains(&src.addr),
        "{line}"
    );
    let j = r.json();
    assert_eq!(j["kind"], "images", "{j:#}");
    assert_eq!(j["result"], "failed", "{j:#}");
    assert_eq!(j["exit_code"], 2, "{j:#}");
    assert!(
        j["error"].as_str().unwrap().contains("no repository"),
        "{j:#}"
    );
    assert!(
        j["started_at"].is_string() && j["ended_at"].is_string(),
        "{j:#}"
    );
    let run_id = j["run_id"].as_str().unwrap().to_string();

    let st = hub_tests::status_json(state.to_str().unwrap());
    assert_eq!(st.code, 0, "{}", st.stderr);
    let sj = st.json();
    assert_eq!(sj["run_id"], run_id.as_str());
    assert_eq!(sj["result"], "failed", "{sj:#}");
    assert!(
        sj["error"].as_str().unwrap().contains("no repository"),
        "{sj:#}"
    );
    let text = transfer_hub(&["status", "--state", state.to_str().unwrap()], &[]);
    assert!(
        text.stdout.contains("failed") && text.stdout.contains("no repository under"),
        "{}",
        text.stdout
    );

    // An error before any run (an unreadable list) still prints one JSON object.
    let r = images_json(
        &state,
        &[
            "--source",
            &src.addr,
            "--dest",
            &dst.addr,
            "--list",
            dir.path().join("absent.txt").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(r.code, 2);
    let j = r.json();
    assert!(j["error"].as_str().unwrap().contains("absent.txt"), "{j:#}");
    assert_eq!(j["exit_code"], 2);
}

/// A dry run's JSON carries its kind, its times and `to_copy`; a bad list line its `line`.
#[test]
fn dry_run_json_counts_to_copy_and_bad_list_lines_carry_their_line() {
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    OciImage::single(&[512]).push(&format!("{}/app:1", src.addr), None);
    let list = dir.path().join("l.txt");
    std::fs::write(&list, "app:1\nBad Line!\n").unwrap();
    let state = dir.path().join("state.db");
    let r = images_json(
        &state,
        &[
            "--source",
            &src.addr,
            "--dest",
            &dst.addr,
            "--list",
            list.to_str().unwrap(),
            "--dry-run",
        ],
        &[],
    );
    assert_eq!(r.code, 1, "a bad line fails the run\n{}", r.stderr);
    let j = r.json();
    assert_eq!(j["kind"], "images", "{j:#}");
    assert_eq!(j["to_copy"], 1, "{j:#}");
    assert!(j["started_at"].is_string() && j["ended_at"].is_string());
    let items = j["items"].as_array().unwrap();
    let bad = items
        .iter()
        .find(|i| i["status"] == "failed")
        .expect("the bad line is an item");
    assert_eq!(bad["line"], 2, "{bad:#}");
    let good = items.iter().find(|i| i["status"] == "planned").unwrap();
    assert!(good["line"].is_null(), "every item has the field: {good:#}");
}

/// Setup problems exit 2 with one line before any image is looked at.
#[test]
fn setup_problems_exit_2_with_one_line_naming_the_thing_and_what_to_do() {
    let (src, dir) = (RegistryServer::start(), tempfile::tempdir().unwrap());
    OciImage::single(&[512]).push(&format!("{}/app:1", src.addr), None);
    let state = dir.path().join("state.db");
    let list = dir.path().join("l.txt");
    std::fs::write(&list, "app:1\n").unwrap();
    let l = list.to_str().unwrap();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "# nothing here\n\n").unwrap();
    let closed = format!("127.0.0.1:{}", hub_tests::free_port());
    let check = |args: &[&str], env: &[(&str, &str)], words: &[&str]| {
        let r = images_json(&state, args, env);
        assert_eq!(r.code, 2, "{args:?}: {}\n{}", r.stdout, r.stderr);
        let line = one_error_line(&r);
        for w in words {
            assert!(line.contains(w), "{args:?}: {w:?} not in {line}");
        }
        let j = r.json();
        assert_eq!(j["exit_code"], 2, "{j:#}");
        assert!(j["error"].is_string(), "{j:#}");
    };
    check(
        &[
            "--source",
            &src.addr,
            "--dest",
            &closed,
            "--list",
            l,
            "--insecure-registry",
            "foo",
        ],
        &[],
        &["--insecure-registry", "foo", "HOST:PORT"],
    );
    check(
        &[
            "--source",
            &src.addr,
            "--dest",
            &closed,
            "--list",
            empty.to_str().unwrap(),
        ],
        &[],
        &["names no image"],
    );
    check(
        &[
            "--source",
            &src.addr,
            "--dest",
            &closed,
            "--all-repos",
            "--include-untagged",
        ],
        &[],
        &["--include-untagged", &src.addr, "ECR"],
    );
    check(
        &["--source", &src.addr, "--dest", &closed, "--list", l],
        &[],
        &["cannot reach registry", &closed, "connection refused"],
    );
    check(
        &["--source", &src.addr, "--dest", &closed, "--list", l],
        &[("TRANSFER_HUB_SKOPEO", "/nonexistent/skopeo")],
        &["skopeo not found", "/nonexistent/skopeo"],
    );
    let guarded = RegistryServer::start_with_login("bob", "right");
    let auth = dir.path().join("auth.json");
    hub_tests::write_authfile(&auth, &[(&guarded.addr, "bob", "wrong")]);
    check(
        &[
            "--source",
            &src.addr,
            "--dest",
            &guarded.addr,
            "--list",
            l,
            "--authfile",
            auth.to_str().unwrap(),
        ],
        &[],
        &["login refused for user bob", &guarded.addr, "auth.json"],
    );
    // None of these left an image at a destination or an item in the state file.
    let st = hub_tests::status_json(state.to_str().unwrap());
    if st.code == 0 {
        assert!(
            st.json()["items"].as_array().unwrap().is_empty(),
            "{}",
            st.stdout
        );
    }
}

/// One shape: `images sync SOURCE DEST` like `objects sync`, short flags, units.
#[test]
fn images_take_source_and_dest_as_positionals_short_flags_and_values_with_units() {
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    OciImage::single(&[512]).push(&format!("{}/app:1", src.addr), None);
    let list = dir.path().join("l.txt");
    std::fs::write(&list, "app:1\n").unwrap();
    let l = list.to_str().unwrap();
    let state = dir.path().join("state.db");
    let s = state.to_str().unwrap();
    let r = transfer_hub(
        &[
            "images",
            "sync",
            &src.addr,
            &dst.addr,
            "--list",
            l,
            "-n",
            "-o",
            "json",
            "--state",
            s,
            "--retry-base-ms",
            "20ms",
            "--retry-max-secs",
            "2s",
            "--attempt-timeout-secs",
            "10m",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j = r.json();
    assert_eq!(j["dry_run"], true);
    assert_eq!(j["to_copy"], 1, "{j:#}");
    assert!(!state.exists(), "a dry run keeps no state");

    // Text: a dry run says it keeps nothing and names no run id status cannot find.
    let r = transfer_hub(
        &[
            "images",
            "sync",
            &src.addr,
            &dst.addr,
            "--list",
            l,
            "--dry-run",
            "--state",
            s,
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("no state kept"), "{}", r.stdout);
    assert!(
        !r.stdout.lines().any(|l| l.starts_with("run ")),
        "{}",
        r.stdout
    );

    for (args, flag, value, example) in [
        (
            vec![
                "objects",
                "sync",
                "s3://aaa",
                "s3://bbb",
                "--part-size",
                "64X",
            ],
            "--part-size",
            "64X",
            "64M",
        ),
        (
            vec![
                "objects",
                "sync",
                "s3://aaa",
                "s3://bbb",
                "--stream-buffer",
                "lots",
            ],
            "--stream-buffer",
            "lots",
            "1.5G",
        ),
        (
            vec![
                "images",
                "sync",
                "a.io",
                "b.io",
                "--all-repos",
                "--attempt-timeout-secs",
                "soon",
            ],
            "--attempt-timeout-secs",
            "soon",
            "30s",
        ),
        (
            vec![
                "objects",
                "sync",
                "s3://aaa",
                "s3://bbb",
                "--retry-base-ms",
                "1x",
            ],
            "--retry-base-ms",
            "1x",
            "500ms",
        ),
    ] {
        let r = transfer_hub(&args, &[]);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        let first = r.stderr.lines().next().unwrap_or_default();
        for w in [flag, value, example] {
            assert!(first.contains(w), "{args:?}: {w:?} not in {first}");
        }
    }

    let help = transfer_hub(&["--help"], &[]);
    assert_eq!(help.code, 0);
    for w in [
        "images",
        "objects",
        "task",
        "serve",
        "runs",
        "status",
        "SOURCE DEST",
        "-v, --verbose",
        "-q, --quiet",
    ] {
        assert!(
            help.stdout.contains(w),
            "top-level help lacks {w:?}:\n{}",
            help.stdout
        );
    }
    let sub = transfer_hub(&["images", "sync", "--help"], &[]);
    for w in [
        "[SOURCE]",
        "[DEST]",
        "--source <SOURCE>",
        "-n, --dry-run",
        "-o, --output",
    ] {
        assert!(
            sub.stdout.contains(w),
            "images sync help lacks {w:?}:\n{}",
            sub.stdout
        );
    }
}

/// `runs` lists past runs; `status` shows the date and kind; text output shortens
/// digests to 12 hex (whole with --long); a no-op run prints one line, not one per image.
#[test]
fn runs_lists_past_runs_and_text_output_fits_a_terminal() {
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    OciImage::single(&[512]).push(&format!("{}/app:1", src.addr), None);
    OciImage::single(&[256]).push(&format!("{}/app:2", src.addr), None);
    let list = dir.path().join("l.txt");
    std::fs::write(&list, "app:ALL_TAGS\n").unwrap();
    let l = list.to_str().unwrap();
    let state = dir.path().join("state.db");
    let s = state.to_str().unwrap();
    let sync = |extra: &[&str]| {
        let mut a = vec![
            "images", "sync", &src.addr, &dst.addr, "--list", l, "--state", s,
        ];
        a.extend_from_slice(extra);
        transfer_hub(&a, &[])
    };
    let first = sync(&[]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let copied: Vec<&str> = first
        .stdout
        .lines()
        .filter(|l| l.starts_with("copied "))
        .collect();
    assert_eq!(copied.len(), 2, "{}", first.stdout);
    for line in &copied {
        let digest = line.split_whitespace().last().unwrap();
        assert_eq!(digest.len(), "sha256:".len() + 12, "{line}");
    }
    let again = sync(&[]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        !again.stdout.contains("in sync    "),
        "no line per image:\n{}",
        again.stdout
    );
    assert!(
        again.stdout.contains("2 image(s) in sync"),
        "{}",
        again.stdout
    );
    let verbose = sync(&["-v"]);
    assert_eq!(
        verbose
            .stdout
            .lines()
            .filter(|l| l.starts_with("in sync "))
            .count(),
        2,
        "{}",
        verbose.stdout
    );
    let quiet = sync(&["-q"]);
    assert!(
        !quiet.stdout.contains("in sync    ") && quiet.stdout.contains("run "),
        "{}",
        quiet.stdout
    );
    // A failed run of the other kind.
    let bad = transfer_hub(
        &[
            "objects",
            "sync",
            "s3://aaa",
            "s3://bbb",
            "--source-endpoint",
            "nope",
            "--state",
            s,
        ],
        &[],
    );
    assert_eq!(bad.code, 2);

    let st = transfer_hub(&["status", "--state", s], &[]);
    assert!(
        st.stdout.contains("objects run, started 20"),
        "{}",
        st.stdout
    );
    assert!(st.stdout.contains(": failed"), "{}", st.stdout);
    let first_id = first
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("run "))
        .and_then(|l| l.split(':').next())
        .unwrap()
        .to_string();
    let long = transfer_hub(&["status", "--run", &first_id, "--state", s, "--long"], &[]);
    assert!(
        long.stdout.contains("images run, started 20"),
        "{}",
        long.stdout
    );
    let full = long
        .stdout
        .lines()
        .filter(|l| l.starts_with("copied "))
        .map(|l| l.split_whitespace().last().unwrap().len())
        .collect::<Vec<_>>();
    assert_eq!(full, [71, 71], "{}", long.stdout);

    let runs = transfer_hub(&["runs", "--state", s], &[]);
    assert_eq!(runs.code, 0, "{}", runs.stderr);
    let lines: Vec<&str> = runs.stdout.lines().collect();
    assert_eq!(lines.len(), 1 + 5, "{}", runs.stdout);
    assert!(
        lines[0].contains("RESULT") && lines[0].contains("DURATION"),
        "{}",
        runs.stdout
    );
    assert!(
        lines[1].contains("objects") && lines[1].contains("failed"),
        "{}",
        runs.stdout
    );
    assert!(
        lines[5].starts_with(&first_id) && lines[5].contains("succeeded"),
        "{}",
        runs.stdout
    );
    assert!(
        lines[5].contains(&format!("{} → {}", src.addr, dst.addr)),
        "{}",
        runs.stdout
    );
    let only = transfer_hub(
        &["runs", "--state", s, "--kind", "objects", "-o", "json"],
        &[],
    );
    let j = only.json();
    assert_eq!(j["runs"].as_array().unwrap().len(), 1, "{j:#}");
    assert_eq!(j["runs"][0]["result"], "failed");
    let one = transfer_hub(
        &["runs", "--state", s, "--limit", "1", "--kind", "images"],
        &[],
    );
    assert_eq!(one.stdout.lines().count(), 2, "{}", one.stdout);
}

/// README's usage lines name exactly the flags `--help` shows, so the two never drift.
#[test]
fn the_readme_usage_names_exactly_the_flags_of_each_commands_help() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let flags = |text: &str| -> std::collections::BTreeSet<String> {
        let b = text.as_bytes();
        let mut out = std::collections::BTreeSet::new();
        let mut i = 0;
        while i + 2 < b.len() {
            if b[i] == b'-'
                && b[i + 1] == b'-'
                && b[i + 2].is_ascii_lowercase()
                && (i == 0 || !b[i - 1].is_ascii_alphanumeric() && b[i - 1] != b'-')
            {
                let end = (i + 2..b.len())
                    .find(|&j| !(b[j].is_ascii_lowercase() || b[j] == b'-'))
                    .unwrap_or(b.len());
                out.insert(text[i..end].trim_end_matches('-').to_string());
                i = end;
            } else {
                i += 1;
            }
        }
        // -v and -q are global: README names them once, at the top of the usage.
        for global in ["--help", "--verbose", "--quiet"] {
            out.remove(global);
        }
        out
    };
    for cmd in ["images sync", "objects sync", "runs", "status"] {
        let start = format!("transfer-hub {cmd} ");
        let lines: Vec<&str> = readme.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with(&start))
            .unwrap_or_else(|| panic!("README has no usage line for {cmd}"));
        let mut usage = String::new();
        for l in &lines[at..] {
            if !usage.is_empty()
                && !usage.trim_end().ends_with('\\')
                && !l.trim_start().starts_with('#')
            {
                break;
            }
            usage.push_str(l);
            usage.push('\n');
        }
        let mut args: Vec<&str> = cmd.split(' ').collect();
        args.push("--help");
        let help = transfer_hub(&args, &[]);
        assert_eq!(help.code, 0, "{}", help.stderr);
        assert_eq!(
            flags(&usage),
            flags(&help.stdout),
            "README usage of `{cmd}` (left) and its --help (right) name other flags"
        );
    }
}

/// Under a terminal (a pty from `script`), the bar shows items done of the total, bytes
/// and rate; item lines print above it, each on its own line, never through it.
#[test]
fn the_progress_bar_on_a_terminal_shows_totals_and_bytes_and_lines_print_above_it() {
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    for t in 1..=3 {
        OciImage::single(&[4096 * t]).push(&format!("{}/app:{t}", src.addr), None);
    }
    let list = dir.path().join("l.txt");
    std::fs::write(&list, "app:ALL_TAGS\n").unwrap();
    let state = dir.path().join("state.db");
    let cmd = format!(
        "{} images sync --source {} --dest {} --list {} --state {} --concurrency 1",
        hub_tests::transfer_hub_bin().display(),
        src.addr,
        dst.addr,
        list.display(),
        state.display()
    );
    let out = std::process::Command::new(hub_tests::require("script"))
        .args(["-qfec", &cmd, "/dev/null"])
        .env("TERM", "xterm")
        .env_remove("NO_COLOR")
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let frames = hub_tests::terminal_frames(&text);
    assert!(
        frames
            .iter()
            .any(|f| f.contains("/3 images") && f.contains("copied") && f.contains("/s")),
        "no bar with the total, bytes and rate:\n{text:?}"
    );
    let copied: Vec<&String> = frames
        .iter()
        .filter(|f| f.contains(&format!("{}/app:", src.addr)) && f.contains("copied "))
        .collect();
    assert_eq!(copied.len(), 3, "{text:?}");
    for f in copied {
        assert!(
            f.starts_with("copied "),
            "an item line mixed with the bar: {f:?}"
        );
    }
}

/// With `-o json`/`--output json` given, a usage error (an unknown flag, a bad unit value)
/// still prints one JSON object, its `error` one line naming the flag and the value, exit 2
/// (before: clap's text only, stdout empty); without it, clap's text and nothing on stdout.
/// A `task run NAME -o json` that fails as a whole prints its one JSON object too (the run
/// record, failed, with `error` and `exit_code`), as `images sync` does.
#[test]
fn usage_errors_and_a_fatal_task_run_print_one_json_object_when_json_was_asked_for() {
    let cases: [(&[&str], &[&str]); 4] = [
        (
            &[
                "objects",
                "sync",
                "s3://src-bkt",
                "s3://dst-bkt",
                "--part-size",
                "12Q",
                "-o",
                "json",
            ],
            &["--part-size", "12Q"],
        ),
        (
            &[
                "objects",
                "sync",
                "s3://src-bkt",
                "s3://dst-bkt",
                "--output=json",
                "--part-size",
                "12Q",
            ],
            &["--part-size", "12Q"],
        ),
        (
            &[
                "images",
                "sync",
                "127.0.0.1:1",
                "127.0.0.1:2",
                "--all-repos",
                "--bogus",
                "--output",
                "json",
            ],
            &["--bogus"],
        ),
        (
            &[
                "images",
                "sync",
                "127.0.0.1:1",
                "127.0.0.1:2",
                "--all-repos",
                "-ojson",
                "--retry-max-secs",
                "soon",
            ],
            &["--retry-max-secs", "soon"],
        ),
    ];
    for (args, named) in cases {
        let r = transfer_hub(args, &[]);
        assert_eq!(r.code, 2, "{args:?}\n{}\n{}", r.stdout, r.stderr);
        let j = r.json();
        assert_eq!(j["exit_code"], 2, "{j:#}");
        let e = j["error"].as_str().unwrap();
        assert!(!e.contains('\n') && !e.starts_with("error:"), "{e:?}");
        for n in named {
            assert!(e.contains(n), "{args:?}: {e:?} does not name {n}");
        }
    }
    let r = transfer_hub(
        &[
            "objects",
            "sync",
            "s3://src-bkt",
            "s3://dst-bkt",
            "--part-size",
            "12Q",
        ],
        &[],
    );
    assert_eq!(r.code, 2);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert!(r.stderr.contains("--part-size"), "{}", r.stderr);
    let r = transfer_hub(&["objects", "sync", "--help", "-o", "json"], &[]);
    assert_eq!(r.code, 0, "help is still help");
    assert!(r.stdout.contains("Usage:"), "{}", r.stdout);

    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    let state = dir.path().join("state.db");
    let state = state.to_str().unwrap();
    let add = transfer_hub(
        &[
            "task",
            "add",
            "empty",
            "--kind",
            "images",
            &src.addr,
            &dst.addr,
            "--all-repos",
            "--state",
            state,
        ],
        &[],
    );
    assert_eq!(add.code, 0, "{}", add.stderr);
    let r = transfer_hub(
        &["task", "run", "empty", "--state", state, "-o", "json"],
        &[],
    );
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!(j["kind"], "images", "{j:#}");
    assert_eq!(j["result"], "failed", "{j:#}");
    assert_eq!(j["exit_code"], 2, "{j:#}");
    assert!(
        j["error"].as_str().unwrap().contains("no repository under"),
        "{j:#}"
    );
    let st = transfer_hub(&["status", "--state", state, "-o", "json"], &[]).json();
    assert_eq!(st["run_id"], j["run_id"], "{st:#}");
    assert_eq!(st["result"], "failed", "{st:#}");
    let r = transfer_hub(
        &[
            "task", "run", "nosuch", "--state", state, "--output", "json",
        ],
        &[],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.json()["error"].as_str().unwrap().contains("nosuch"),
        "{}",
        r.stdout
    );
}
