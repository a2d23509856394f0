//! The SAM template on the real tooling: cfn-lint and the SAM transform (template_check.py),
//! checkov with the skips kept in .checkov.yaml, cfn-guard with the rules in policy/, and
//! `sam build` with cargo-lambda for arm64.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/install-deps installs it)"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_sam_template_passes_cfn_lint_the_sam_transform_and_the_project_rules() {
    let (ok, text) = run(hub_tests::tool("python3").arg(root().join("tests/template_check.py")));
    assert!(ok && text.contains("template checks: ok"), "{text}");
}

#[test]
fn checkov_finds_nothing_beyond_the_documented_skips() {
    let (ok, text) = run(hub_tests::tool("checkov").current_dir(root()).args([
        "--config-file",
        ".checkov.yaml",
        "-f",
        "template.yaml",
        "--skip-download",
        "--compact",
    ]));
    assert!(ok, "{text}");
    assert!(text.contains("Failed checks: 0"), "{text}");
}

#[test]
fn cfn_guard_rules_pass_on_the_template_and_catch_a_loosened_one() {
    let guard = |data: &Path| {
        run(hub_tests::tool("cfn-guard")
            .current_dir(root())
            .args(["validate", "-r", "policy", "--show-summary", "all", "-d"])
            .arg(data))
    };
    let (ok, text) = guard(&root().join("template.yaml"));
    assert!(ok, "{text}");
    assert!(
        text.contains("Status = PASS") && !text.contains("FAIL"),
        "{text}"
    );

    // The rules bite: a public IP by default, a wildcard S3 statement and a writable root
    // filesystem for the copy task must fail.
    let loosened = std::fs::read_to_string(root().join("template.yaml"))
        .unwrap()
        .replace(
            "    AllowedValues: [DISABLED, ENABLED]\n    Default: DISABLED",
            "    AllowedValues: [DISABLED, ENABLED]\n    Default: ENABLED",
        )
        .replace(
            "                Action: sns:Publish\n                Resource: !Ref AlarmTopic",
            "                Action: [sns:Publish, s3:*]\n                Resource: \"*\"",
        )
        .replace(
            "ReadonlyRootFilesystem: true",
            "ReadonlyRootFilesystem: false",
        );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("template.yaml");
    std::fs::write(&bad, loosened).unwrap();
    let (ok, text) = guard(&bad);
    assert!(!ok, "the loosened template passed:\n{text}");
    for rule in [
        "no_public_ip_by_default",
        "wildcard_resources_only_where_unavoidable",
        "copy_task_is_arm64_fargate",
    ] {
        assert!(
            text.lines().any(|l| l.contains(rule) && l.contains("FAIL")),
            "{rule} did not fail:\n{text}"
        );
    }

    // A statement in a policy kept by Fn::If is checked too.
    let loosened = std::fs::read_to_string(root().join("template.yaml"))
        .unwrap()
        .replace(
            "                  Action: s3:DeleteObject\n                  Resource: !Sub \"arn:${AWS::Partition}:s3:::${ObjectDestBucket}/*\"",
            "                  Action: s3:DeleteObject\n                  Resource: \"*\"",
        );
    std::fs::write(&bad, loosened).unwrap();
    let (ok, text) = guard(&bad);
    assert!(!ok, "the loosened conditional policy passed:\n{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("wildcard_resources_only_where_unavoidable") && l.contains("FAIL")),
        "{text}"
    );
}

/// ELF machine of a binary (183 = AArch64).
fn elf_machine(path: &Path) -> u16 {
    let b = std::fs::read(path).unwrap();
    assert_eq!(
        &b[..4],
        b"\x7fELF",
        "{} is not an ELF binary",
        path.display()
    );
    u16::from_le_bytes([b[18], b[19]])
}

#[test]
fn sam_build_makes_an_arm64_bootstrap_for_every_function() {
    let build = root().join("target/sam-build");
    let (ok, text) = run(hub_tests::tool("sam")
        .current_dir(root())
        .env("SAM_CLI_TELEMETRY", "0")
        .args([
            "build",
            "--beta-features",
            "--template",
            "template.yaml",
            "--build-dir",
        ])
        .arg(&build));
    assert!(ok, "{text}");
    for f in [
        "ListImagesFunction",
        "FindDiffFunction",
        "DispatchFargateFunction",
        "RecordStatusFunction",
        "DiffObjectsFunction",
        "TransferObjectFunction",
        "CheckMultipartFunction",
    ] {
        let bootstrap = build.join(f).join("bootstrap");
        assert!(
            bootstrap.is_file(),
            "{} is missing:\n{text}",
            bootstrap.display()
        );
        assert_eq!(elf_machine(&bootstrap), 183, "{f} is not built for arm64");
    }
}

/// The dashboard in template.yaml (resolved by tests/dashboard.py as CloudFormation would
/// deploy it) shows what the issue asks for, and only metrics that exist: each TransferHub
/// metric is one the functions emit (hub_core::aws::metrics::ALL: the namespace, the name
/// and the one dimension Stack, whose value is the METRICS_STACK the functions are given),
/// each SQS metric names the stack's job queue or dead-letter queue, and each Lambda
/// metric one of the stack's functions, every function included. Without the objects half
/// the dashboard shows the image widgets alone.
#[test]
fn the_dashboard_shows_only_metrics_the_functions_emit_or_the_stacks_resources_have() {
    use hub_core::aws::metrics;
    let (ok, text) = run(hub_tests::tool("python3").arg(root().join("tests/dashboard.py")));
    assert!(ok, "{text}");
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    let stack = d["metrics_stack"].as_str().unwrap();
    assert_eq!(
        stack,
        d["stack"].as_str().unwrap(),
        "METRICS_STACK is the stack's name"
    );
    let queue = d["queues"]["JobQueue"].as_str().unwrap();
    let dlq = d["queues"]["JobDeadLetterQueue"].as_str().unwrap();
    let functions: Vec<&str> = d["functions"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap())
        .collect();
    // (namespace, name, [(dimension, value)], title, period, stat) per metric shown.
    let shown = |body: &serde_json::Value| {
        let mut out = Vec::new();
        for w in body["widgets"].as_array().unwrap() {
            let p = &w["properties"];
            for m in p["metrics"].as_array().unwrap() {
                let m: Vec<&str> = m
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|x| x.as_str())
                    .collect();
                let dims: Vec<(String, String)> = m[2..]
                    .chunks(2)
                    .map(|c| (c[0].to_string(), c[1].to_string()))
                    .collect();
                out.push((
                    m[0].to_string(),
                    m[1].to_string(),
                    dims,
                    p["title"].as_str().unwrap().to_string(),
                    p["period"].as_u64().unwrap(),
                    p["stat"].as_str().unwrap().to_string(),
                ));
            }
        }
        out
    };
    let all = shown(&d["objects"]);
    for (ns, name, dims, title, _, _) in &all {
        match ns.as_str() {
            metrics::NAMESPACE => {
                assert!(
                    metrics::ALL.iter().any(|m| m.name == name),
                    "{title}: {ns}/{name} is not a metric the functions emit ({:?})",
                    metrics::ALL.iter().map(|m| m.name).collect::<Vec<_>>()
                );
                assert_eq!(
                    dims,
                    &[(metrics::STACK_DIMENSION.to_string(), stack.to_string())],
                    "{title}: {name} with the dimensions it is emitted with"
                );
            }
            "AWS/SQS" => {
                assert_eq!(dims.len(), 1, "{title}");
                assert_eq!(dims[0].0, "QueueName", "{title}");
                assert!(
                    [queue, dlq].contains(&dims[0].1.as_str()),
                    "{title}: {dims:?}"
                );
            }
            "AWS/Lambda" => {
                assert_eq!(name, "Errors", "{title}");
                assert_eq!(dims[0].0, "FunctionName", "{title}");
                assert!(functions.contains(&dims[0].1.as_str()), "{title}: {dims:?}");
            }
            other => panic!("{title}: namespace {other}"),
        }
    }
    let has = |ns: &str, name: &str, dim: Option<&str>, per_minute: bool| {
        all.iter().any(|(n, m, dims, _, period, stat)| {
            n == ns
                && m == name
                && dim.is_none_or(|v| dims.iter().any(|(_, x)| x == v))
                && (!per_minute || (*period == 60 && stat == "Sum"))
        })
    };
    let th = metrics::NAMESPACE;
    assert!(has(th, "ImagesCopied", None, false) && has(th, "ImagesFailed", None, false));
    assert!(has(th, "ObjectsCopied", None, true), "objects per minute");
    assert!(has(th, "BytesCopied", None, true), "bytes per minute");
    assert!(has(th, "OpenUploads", None, false));
    assert!(has(
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        Some(queue),
        false
    ));
    assert!(has(
        "AWS/SQS",
        "ApproximateAgeOfOldestMessage",
        Some(queue),
        false
    ));
    assert!(has(
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        Some(dlq),
        false
    ));
    for f in &functions {
        assert!(has("AWS/Lambda", "Errors", Some(f), false), "errors of {f}");
    }
    let images_only = shown(&d["images_only"]);
    assert!(!images_only.is_empty());
    assert!(
        images_only
            .iter()
            .all(|(ns, name, ..)| ns != "AWS/SQS" && !name.starts_with("Objects")),
        "no object widgets without the objects half"
    );
}
