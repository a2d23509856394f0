//! The AWS half of the fault report (`scripts/faults`): duplicated and reordered SQS jobs
//! and S3 events handed to transfer-object on IAM-enforced moto, and the secret canary
//! through the CLI and the AWS functions. One JSON object per scenario on stdout
//! (`scenario`, `injected`, `items`, `survived`, `lost`, `duplicated`, `verdict`),
//! progress on stderr. Usage: `faults-aws [FILTER]` (a substring of the scenario names).

use anyhow::Result;
use hub_tests::faults_aws::{
    Canary, Findings, MIB, ObjectSuite, REGION, Row, dynamodb_dump, ecr_token_proxy, slow_blobs,
    sqs_dump, watch_children,
};
use hub_tests::{MotoServer, OciImage, RegistryServer, event, transfer_hub_bin, write_authfile};
use std::process::{Command, Stdio};
use std::time::Duration;

type Scenario = fn() -> Result<Row>;

fn main() {
    let filter = std::env::args().nth(1).unwrap_or_default();
    let scenarios: [(&str, &str, Scenario); 6] = [
        (
            "aws: duplicated + reordered SQS jobs",
            "every Job::Object and Job::Part delivered twice, reversed and interleaved, again after completion; one object overwritten after its job was queued",
            dup_sqs_jobs,
        ),
        (
            "aws: duplicated + reordered S3 events",
            "ObjectCreated/ObjectRemoved notifications with sequencers delivered twice, newest first",
            dup_s3_events,
        ),
        (
            "canary: CLI images sync (+ SIGTERM)",
            "one canary as registry password (htpasswd), ECR token and AWS secret key; text run, then a JSON run SIGTERMed mid-copy",
            canary_cli_images,
        ),
        (
            "canary: CLI objects sync (+ SIGTERM)",
            "the canary as the AWS secret key; a run, then one SIGTERMed mid-copy",
            canary_cli_objects,
        ),
        (
            "canary: AWS images functions + worker",
            "the canary in a Secrets Manager JSON secret (registry password) and as the ECR token; the roles' AWS keys too; list-images, find-diff, dispatch-fargate, copy-worker, record-status",
            canary_aws_images,
        ),
        (
            "canary: the real state machine (moto's interpreter)",
            "the canary as both registries' passwords, in the Secrets Manager JSON secrets and as the AWS secret key of every function and worker; one execution of the template's definition, real handlers under cargo lambda watch, real workers",
            canary_state_machine,
        ),
    ];
    for (name, injected, f) in scenarios {
        if !name.contains(&filter) {
            continue;
        }
        eprintln!("faults-aws: {name} …");
        let row = match std::panic::catch_unwind(f) {
            Ok(Ok(mut r)) => {
                r.scenario = name.into();
                r.injected = injected.into();
                r
            }
            Ok(Err(e)) => Row::judged(name, injected, (0, 0, 0, 0), &[format!("rig: {e:#}")]),
            Err(p) => {
                let why = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Row::judged(
                    name,
                    injected,
                    (0, 0, 0, 0),
                    &[format!("rig panicked: {why}")],
                )
            }
        };
        eprintln!("faults-aws: {name}: {}", row.verdict);
        println!("{}", serde_json::to_string(&row).unwrap());
    }
}

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Queue, deliver and check until the queue is empty (parts, re-plans).
fn settle(
    s: &ObjectSuite,
    tr: &hub_core::aws::functions::ObjectsFn,
    check: &hub_core::aws::functions::ObjectsFn,
    stuck: &mut Vec<String>,
) {
    for _ in 0..6 {
        s.rt.block_on(check.check(event("check-multipart.json")))
            .unwrap();
        let q = s.drain();
        if q.is_empty() {
            break;
        }
        stuck.extend(s.deliver(tr, &q));
    }
}

fn dup_sqs_jobs() -> Result<Row> {
    let s = ObjectSuite::start("faults-dup-sqs-jobs");
    let mut keys: Vec<String> = (0..12).map(|i| format!("s{i:02}.txt")).collect();
    for (i, k) in keys.iter().enumerate() {
        s.put("src", &format!("in/{k}"), &data(1000 + i * 37, i as u8));
    }
    s.put("src", "in/big.bin", &data(16 * MIB + 777, 99));
    keys.push("big.bin".into());
    // One pass of the suite into `prefix`: a clean delivery, or every job twice.
    let pass = |prefix: &str, dup: bool, version: u8| -> Vec<String> {
        let extra = [("DEST_PREFIX", prefix)];
        let diff = s.function("DiffObjectsRole", &extra);
        let tr = s.function("TransferObjectRole", &extra);
        let check = s.function("CheckMultipartRole", &extra);
        s.rt.block_on(diff.diff(Default::default(), 0)).unwrap();
        let jobs = s.drain();
        // The source changes after its job was queued: the copy must be of the newest.
        s.put("src", "in/s00.txt", &data(777, version));
        let mut stuck = Vec::new();
        if dup {
            let mut rev = jobs.clone();
            rev.reverse();
            let both: Vec<_> = rev.iter().flat_map(|j| [j.clone(), j.clone()]).collect();
            stuck.extend(s.deliver(&tr, &both));
            let parts = s.drain();
            let mut rev = parts.clone();
            rev.reverse();
            stuck.extend(s.deliver(&tr, &rev));
            stuck.extend(s.deliver(&tr, &parts));
            settle(&s, &tr, &check, &mut stuck);
            // Late duplicates after everything completed.
            stuck.extend(s.deliver(&tr, &jobs));
            stuck.extend(s.deliver(&tr, &parts));
            settle(&s, &tr, &check, &mut stuck);
        } else {
            stuck.extend(s.deliver(&tr, &jobs));
            let parts = s.drain();
            stuck.extend(s.deliver(&tr, &parts));
            settle(&s, &tr, &check, &mut stuck);
        }
        stuck
    };
    let same = |prefix: &str| {
        keys.iter()
            .filter(|k| {
                let a = s.get("src", &format!("in/{k}"));
                a.is_some() && a == s.get("dst", &format!("{prefix}{k}"))
            })
            .count() as u64
    };
    // Each pass is compared with the source as it stands after that pass.
    let stuck_clean = pass("clean/", false, 201);
    let clean_ok = same("clean/");
    let stuck_dup = pass("dup/", true, 202);
    let dup_ok = same("dup/");
    let (wc, wd) = (
        s.writes.under("dst", "clean/"),
        s.writes.under("dst", "dup/"),
    );
    let extra = wd.len().saturating_sub(wc.len()) as u64;
    let n = keys.len() as u64;
    let strip = |w: &[String], p: &str| -> Vec<String> {
        let mut v: Vec<String> = w
            .iter()
            .map(|l| {
                let l = l.replace(p, "/");
                match l.split_once("uploadId=") {
                    Some((a, b)) => format!(
                        "{a}uploadId=…{}",
                        b.split_once(' ').map(|x| x.1).unwrap_or("")
                    ),
                    None => l,
                }
            })
            .collect();
        v.sort();
        v
    };
    eprintln!(
        "  clean writes: {:#?}\n  duplicated writes: {:#?}",
        strip(&wc, "/clean/"),
        strip(&wd, "/dup/")
    );
    let mut problems = Vec::new();
    if clean_ok != n || !stuck_clean.is_empty() {
        problems.push(format!(
            "the clean delivery itself: {clean_ok}/{n} equal, {} stuck",
            stuck_clean.len()
        ));
    }
    if dup_ok != n {
        problems.push(format!(
            "{} of {n} not equal to the newest source",
            n - dup_ok
        ));
    }
    if extra > 0 {
        problems.push(format!(
            "{extra} extra writes ({} vs {} for one clean delivery)",
            wd.len(),
            wc.len()
        ));
    }
    if !stuck_dup.is_empty() {
        problems.push(format!("{} messages never handled", stuck_dup.len()));
    }
    let open = s.open_uploads();
    if open > 0 {
        problems.push(format!("{open} multipart uploads left open"));
    }
    eprintln!(
        "  writes: clean {} / duplicated {}; refused IAM calls: {:?}",
        wc.len(),
        wd.len(),
        s.iam.denied()
    );
    s.iam.clear_decisions();
    Ok(Row::judged(
        "",
        "",
        (n, dup_ok, n - dup_ok, extra),
        &problems,
    ))
}

fn dup_s3_events() -> Result<Row> {
    let s = ObjectSuite::start("faults-dup-s3-events");
    let note = |name: &str, key: &str, size: usize, seq: u32| {
        serde_json::json!({"Records": [{
            "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": REGION,
            "eventTime": "2026-11-23T12:00:00.000Z", "eventName": name,
            "userIdentity": {"principalId": "EXAMPLE"}, "requestParameters": {"sourceIPAddress": "127.0.0.1"},
            "responseElements": {},
            "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": "src", "arn": "arn:aws:s3:::src"},
                   "object": {"key": format!("in/{key}"), "size": size, "sequencer": format!("{seq:016X}")}}}]})
        .to_string()
    };
    // What happened at the source, in order; the source now holds the result.
    let (a2, c, d) = (
        b"a, version two".to_vec(),
        b"c is back".to_vec(),
        data(4096, 7),
    );
    let events = vec![
        note("ObjectCreated:Put", "a", 11, 1),
        note("ObjectCreated:Put", "a", a2.len(), 3),
        note("ObjectCreated:Put", "b", 5, 4),
        note("ObjectRemoved:Delete", "b", 0, 5),
        note("ObjectRemoved:Delete", "c", 0, 6),
        note("ObjectCreated:Put", "c", c.len(), 7),
        note("ObjectCreated:Put", "d", d.len(), 8),
        note("ObjectRemoved:Delete", "e", 0, 9),
    ];
    s.put("src", "in/a", &a2);
    s.put("src", "in/c", &c);
    s.put("src", "in/d", &d);
    let expected: [(&str, Option<&[u8]>); 5] = [
        ("a", Some(&a2)),
        ("b", None),
        ("c", Some(&c)),
        ("d", Some(&d)),
        ("e", None),
    ];
    let record = |i: usize, body: &str| serde_json::json!({"messageId": format!("m{i}"), "body": body, "attributes": {}, "messageAttributes": {}});
    let pass = |prefix: &str, dup: bool| -> Vec<String> {
        // The destination had stale copies of what the source deleted.
        for k in ["b", "e", "c"] {
            s.put("dst", &format!("{prefix}{k}"), b"stale");
        }
        let tr = s.function(
            "TransferObjectRole",
            &[("DEST_PREFIX", prefix), ("DELETE_ON_EVENTS", "true")],
        );
        let mut stuck = Vec::new();
        if dup {
            let mut rev: Vec<_> = events.iter().enumerate().rev().collect();
            rev.extend(events.iter().enumerate().rev());
            for (i, e) in rev {
                stuck.extend(s.deliver(&tr, &[record(i, e)]));
            }
        } else {
            for (i, e) in events.iter().enumerate() {
                stuck.extend(s.deliver(&tr, &[record(i, e)]));
            }
        }
        stuck
    };
    let stuck_clean = pass("clean/", false);
    let stuck_dup = pass("dup/", true);
    let right = |prefix: &str| {
        expected
            .iter()
            .filter(|(k, want)| s.get("dst", &format!("{prefix}{k}")).as_deref() == *want)
            .count() as u64
    };
    let (clean_ok, dup_ok) = (right("clean/"), right("dup/"));
    let (wc, wd) = (
        s.writes.under("dst", "clean/"),
        s.writes.under("dst", "dup/"),
    );
    let extra = wd.len().saturating_sub(wc.len()) as u64;
    let n = expected.len() as u64;
    let mut problems = Vec::new();
    if clean_ok != n || !stuck_clean.is_empty() {
        problems.push(format!(
            "the clean delivery itself: {clean_ok}/{n} in the newest state, {} stuck",
            stuck_clean.len()
        ));
    }
    if dup_ok != n {
        let wrong: Vec<&str> = expected
            .iter()
            .filter(|(k, want)| s.get("dst", &format!("dup/{k}")).as_deref() != *want)
            .map(|(k, _)| *k)
            .collect();
        problems.push(format!("not in the newest state: {wrong:?}"));
    }
    if extra > 0 {
        problems.push(format!(
            "{extra} extra writes ({} vs {} for one clean delivery)",
            wd.len(),
            wc.len()
        ));
    }
    if !stuck_dup.is_empty() {
        problems.push(format!("{} events never handled", stuck_dup.len()));
    }
    eprintln!(
        "  writes: clean {wc:?} / duplicated {wd:?}; refused IAM calls: {:?}",
        s.iam.denied()
    );
    s.iam.clear_decisions();
    Ok(Row::judged(
        "",
        "",
        (n, dup_ok, n - dup_ok, extra),
        &problems,
    ))
}

/// Waits for `child` while watching its descendants; with `sigterm`, sends SIGTERM once a
/// process of its own (skopeo) is running, or once `ready` says so.
fn run_watched(
    canary: &Canary,
    mut child: std::process::Child,
    sigterm: bool,
    ready: &dyn Fn() -> bool,
) -> (std::process::Output, usize, Vec<String>, Vec<String>) {
    let pid = child.id();
    // Read both pipes meanwhile: a chatty child (RUST_LOG=debug) must not block on them.
    let drain = |p: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = p {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out_t = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err_t = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let mut sent = false;
    let mut status = None;
    let (seen, cmd_hits, env_hits) = watch_children(canary, pid, &mut || {
        if sigterm && !sent {
            let busy = !hub_tests::faults_aws::descendants(pid).is_empty() || ready();
            if busy {
                std::thread::sleep(Duration::from_millis(300));
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
                sent = true;
            }
        }
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let out = std::process::Output {
        status: child.wait().unwrap(),
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    };
    (out, seen, cmd_hits, env_hits)
}

fn canary_cli_images() -> Result<Row> {
    let canary = Canary::new(&["puller", "AWS"]);
    let (src, backend) = (
        RegistryServer::start_with_login("puller", &canary.value),
        RegistryServer::start_with_login("AWS", &canary.value),
    );
    let keep = tempfile::tempdir()?;
    let auth = keep.path().join("auth.json");
    let slow = slow_blobs(&src.addr, Duration::from_millis(400));
    let source = slow.endpoint.trim_start_matches("http://").to_string();
    write_authfile(
        &auth,
        &[
            (&src.addr, "puller", &canary.value),
            (&source, "puller", &canary.value),
        ],
    );
    for i in 0..3 {
        OciImage::single(&[128 * 1024]).push(&format!("{}/app:{i}", src.addr), Some(&auth));
    }
    let moto = MotoServer::start();
    let ecr_api = ecr_token_proxy(&moto.endpoint, &canary.value);
    // The access key id is an identifier (it is in every signed request's Authorization
    // header), not a secret: it is noted on stderr, not searched as the canary.
    let access_key = "AKIAFAULTSCANARY0001";
    let ecr_host = "123456789012.dkr.ecr.eu-west-1.amazonaws.com";
    let run = tempfile::tempdir()?;
    let (tmp, home) = (run.path().join("tmp"), run.path().join("home"));
    std::fs::create_dir(&tmp)?;
    std::fs::create_dir(&home)?;
    let list = keep.path().join("list.txt");
    std::fs::write(&list, "app:ALL_TAGS\n")?;
    let state = run.path().join("state.db");
    let cli = |dest: &str, output: &str| {
        Command::new(transfer_hub_bin())
            .args(["images", "sync", "--source", &source, "--dest", dest])
            .arg("--list")
            .arg(&list)
            .arg("--authfile")
            .arg(&auth)
            .arg("--state")
            .arg(&state)
            .args(["--output", output, "--concurrency", "2"])
            .env_remove("REGISTRY_AUTH_FILE")
            .env("HOME", &home)
            .env("TMPDIR", &tmp)
            .env("RUST_LOG", "debug")
            .env("AWS_ENDPOINT_URL", &ecr_api.endpoint)
            .env("AWS_ACCESS_KEY_ID", access_key)
            .env("AWS_SECRET_ACCESS_KEY", &canary.value)
            .env("AWS_REGION", REGION)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("TRANSFER_HUB_ECR_REGISTRY_ADDRESS", &backend.addr)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut f = Findings::default();
    let (o1, seen1, cmd1, env1) = run_watched(
        &canary,
        cli(&format!("{ecr_host}/mirror"), "text"),
        false,
        &|| false,
    );
    let (o2, seen2, cmd2, env2) = run_watched(
        &canary,
        cli(&format!("{ecr_host}/again"), "json"),
        true,
        &|| false,
    );
    let copied = ["0", "1", "2"]
        .iter()
        .filter(|t| backend.digest("mirror/app", t).is_some())
        .count() as u64;
    f.look(&canary, "stdout (text run)", &o1.stdout);
    f.look(&canary, "stderr (text run, RUST_LOG=debug)", &o1.stderr);
    f.look(&canary, "stdout (SIGTERMed JSON run)", &o2.stdout);
    f.look(&canary, "stderr (SIGTERMed JSON run)", &o2.stderr);
    f.look_in_dir(&canary, "state DB files", run.path());
    f.look_in_dir(&canary, "TMPDIR after both exits", &tmp);
    f.places.push((
        format!("command lines of {} child processes", seen1 + seen2),
        [cmd1, cmd2].concat(),
    ));
    f.places.push((
        format!("environments of {} child processes", seen1 + seen2),
        [env1, env2].concat(),
    ));
    let mut problems = f.hit_places();
    if copied != 3 {
        problems.push(format!(
            "rig: {copied}/3 copied in the first run: {}",
            String::from_utf8_lossy(&o1.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ));
    }
    if o2.status.code() != Some(143) {
        problems.push(format!(
            "rig: the second run was not interrupted (exit {:?})",
            o2.status.code()
        ));
    }
    eprintln!(
        "  searched: {:?}",
        f.places.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    let (n, ok, bad) = f.counts();
    Ok(Row::judged("", "", (n, ok, bad, 0), &problems))
}

fn canary_cli_objects() -> Result<Row> {
    let canary = Canary::new(&[]);
    let access_key = "AKIAFAULTSCANARY0002";
    let moto = MotoServer::start();
    let rt = tokio::runtime::Runtime::new()?;
    let conf = rt.block_on(moto.sdk_config(REGION));
    let s3 = aws_sdk_s3::Client::new(&conf);
    rt.block_on(async {
        for b in ["src", "dst"] {
            hub_tests::aws_fixtures::bucket(&conf, b).await;
        }
        for i in 0..6 {
            let body = if i == 0 {
                data(11 * MIB, 1)
            } else {
                data(2000 + i, i as u8)
            };
            s3.put_object()
                .bucket("src")
                .key(format!("in/o{i}"))
                .body(body.into())
                .send()
                .await
                .unwrap();
        }
    });
    // GETs of the source are held a little, so the second run is mid-copy when stopped.
    let held = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let h2 = held.clone();
    let up = moto.endpoint.trim_start_matches("http://").to_string();
    let proxy = hub_tests::HttpProxy::start(
        std::sync::Arc::new(move |head: &str| {
            if head.starts_with("GET /src/in/") {
                h2.store(true, std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(300));
            }
            (up.clone(), head.to_string())
        }),
        std::sync::Arc::new(|_: &str, status, body| (status, Vec::new(), body)),
    );
    let run = tempfile::tempdir()?;
    let tmp = run.path().join("tmp");
    std::fs::create_dir(&tmp)?;
    let state = run.path().join("state.db");
    let cli = |dest: &str| {
        Command::new(transfer_hub_bin())
            .args(["objects", "sync", "s3://src/in", dest])
            .args(["--source-endpoint", &proxy.endpoint])
            // Writes go straight to moto (the proxy holds reads; it does not speak
            // `Expect: 100-continue`).
            .args(["--dest-endpoint", &moto.endpoint])
            .args(["--source-region", REGION, "--dest-region", REGION])
            .args(["--copy-mode", "stream", "--output", "json"])
            .args(["--multipart-threshold", &(5 * MIB).to_string()])
            .args(["--part-size", &(5 * MIB).to_string()])
            .arg("--state")
            .arg(&state)
            .env("HOME", run.path())
            .env("TMPDIR", &tmp)
            .env("RUST_LOG", "debug")
            .env("AWS_ACCESS_KEY_ID", access_key)
            .env("AWS_SECRET_ACCESS_KEY", &canary.value)
            .env("AWS_REGION", REGION)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (o1, _, _, _) = run_watched(&canary, cli("s3://dst/out"), false, &|| false);
    held.store(false, std::sync::atomic::Ordering::Relaxed);
    let (o2, _, _, _) = run_watched(&canary, cli("s3://dst/again"), true, &|| {
        held.load(std::sync::atomic::Ordering::Relaxed)
    });
    let mut f = Findings::default();
    f.look(&canary, "stdout", &o1.stdout);
    f.look(&canary, "stderr (RUST_LOG=debug)", &o1.stderr);
    f.look(&canary, "stdout (SIGTERMed run)", &o2.stdout);
    f.look(&canary, "stderr (SIGTERMed run)", &o2.stderr);
    f.look_in_dir(&canary, "state DB files", run.path());
    f.look_in_dir(&canary, "TMPDIR after both exits", &tmp);
    let mut problems = f.hit_places();
    let copied = serde_json::from_slice::<serde_json::Value>(&o1.stdout)
        .ok()
        .and_then(|j| j["copied"].as_u64())
        .unwrap_or(0);
    if copied != 6 {
        problems.push(format!(
            "rig: {copied}/6 copied: {}",
            String::from_utf8_lossy(&o1.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ));
    }
    // objects sync stops on SIGTERM: exit 143, the run recorded as interrupted.
    let interrupted = serde_json::from_slice::<serde_json::Value>(&o2.stdout)
        .ok()
        .and_then(|j| j["error"].as_str().map(str::to_string));
    if o2.status.code() != Some(143) || interrupted.as_deref() != Some("interrupted by SIGTERM") {
        problems.push(format!(
            "rig: the second run was not interrupted (exit {:?}, run interrupted: {interrupted:?})",
            o2.status
        ));
    }
    let (n, ok, bad) = f.counts();
    Ok(Row::judged("", "", (n, ok, bad, 0), &problems))
}

/// Searched: the execution's input, output and full history, DynamoDB items, SQS messages,
/// ECS overrides (see `hub_tests::sfn_rig::canary_state_machine`).
fn canary_state_machine() -> Result<Row> {
    let (f, problems) = hub_tests::sfn_rig::canary_state_machine();
    let (n, ok, bad) = f.counts();
    Ok(Row::judged("", "", (n, ok, bad, 0), &problems))
}

fn canary_aws_images() -> Result<Row> {
    use hub_core::images::ecr::{self, Ecr, EcrRepos};
    use hub_core::images::suite::{self, DiffEdges, ImagesConfig, ListEdges};
    use hub_core::images::workflow::{DispatchRequest, ListRequest, RecordRequest};
    use hub_tests::iam::{Deployment, IamMoto};
    const ECR_HOST: &str = "123456789012.dkr.ecr.eu-west-1.amazonaws.com";
    let mut canary = Canary::new(&["puller", "AWS"]);
    let iam = IamMoto::start("faults-canary-aws-images");
    let rt = tokio::runtime::Runtime::new()?;
    let admin = rt.block_on(iam.admin_config(REGION));
    let ecr_api = ecr_token_proxy(&iam.moto.endpoint, &canary.value);
    let ecs_api = hub_tests::ecs_types_proxy(&iam.moto.endpoint);
    let (src, backend) = (
        RegistryServer::start_with_login("puller", &canary.value),
        RegistryServer::start_with_login("AWS", &canary.value),
    );
    let keep = tempfile::tempdir()?;
    let auth = keep.path().join("auth.json");
    write_authfile(&auth, &[(&src.addr, "puller", &canary.value)]);
    for t in ["1", "2"] {
        OciImage::single(&[64 * 1024]).push(&format!("{}/team/app:{t}", src.addr), Some(&auth));
    }
    let (table, bucket) = ("transfer-hub-status", "transfer-hub-payloads");
    let (topic, _mail) = rt.block_on(async {
        hub_tests::aws_fixtures::status_table(&admin, table).await;
        hub_tests::aws_fixtures::bucket(&admin, bucket).await;
        hub_tests::aws_fixtures::copy_cluster(&admin).await;
        aws_sdk_secretsmanager::Client::new(&admin)
            .create_secret()
            .name("th/source")
            .secret_string(
                serde_json::json!({"username": "puller", "password": canary.value}).to_string(),
            )
            .send()
            .await
            .unwrap();
        hub_tests::aws_fixtures::topic_with_queue(&admin, "th-alarms").await
    });
    let (subnet, sg) = iam.network(REGION);
    let arn = |what: &str| format!("arn:aws:{what}");
    let td = arn("ecs:eu-west-1:123456789012:task-definition/th-copy:1");
    let d = Deployment::new(REGION)
        .table("StatusTable", table)
        .bucket("PayloadBucket", bucket)
        .param("SourceType", "Registry")
        .param("SourceRegistry", &src.addr)
        .param("SourceCredentialSecret", "th/source")
        .param("SelectType", "ALL")
        .param("DestPrefix", "mirror")
        .resource("CopyTaskDefinition", &td, &td)
        .resource(
            "CopyCluster",
            "th",
            &arn("ecs:eu-west-1:123456789012:cluster/th"),
        )
        .resource("AlarmTopic", &topic, &topic);
    let role = |name: &str, canary: &mut Canary| {
        let keys = iam.role(name, &d);
        // The roles' keys are AWS secrets too: searched for like the canary.
        canary.add(&format!("{name} secret key"), &keys.secret_access_key, &[]);
        let conf = rt.block_on(iam.config(&keys, REGION));
        (keys, conf)
    };
    let (_, list_conf) = role("ListImagesRole", &mut canary);
    let (_, diff_conf) = role("FindDiffRole", &mut canary);
    let (_, dispatch_conf) = role("DispatchFargateRole", &mut canary);
    let (task_keys, _) = role("CopyTaskRole", &mut canary);
    let (_, record_conf) = role("RecordStatusRole", &mut canary);
    let env: std::collections::HashMap<String, String> = [
        ("SOURCE_REGISTRY", src.addr.as_str()),
        ("DEST_REGISTRY", &format!("{ECR_HOST}/mirror")),
        ("SOURCE_SECRET", "th/source"),
        ("SELECT_TYPE", "ALL"),
        ("TABLE_NAME", table),
        ("PAYLOAD_BUCKET", bucket),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let cfg = ImagesConfig::from_env(hub_core::config::Env::from_map(env))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let ecr_host = ecr::parse_ecr_host(ECR_HOST).unwrap();
    let ecr_client = |conf: &aws_config::SdkConfig| {
        aws_sdk_ecr::Client::from_conf(
            aws_sdk_ecr::config::Builder::from(conf)
                .endpoint_url(&ecr_api.endpoint)
                .build(),
        )
    };
    // As the functions assemble them: the source login from Secrets Manager (as the role),
    // ECR through its API.
    let registries = |conf: &aws_config::SdkConfig| {
        let sm = aws_sdk_secretsmanager::Client::new(conf);
        let mut r = rt
            .block_on(suite::registries_for(
                &[(src.addr.clone(), Some("th/source".to_string()))],
                Some(&sm),
                Vec::new(),
            ))
            .unwrap();
        r.ecr.insert(
            ECR_HOST.to_string(),
            Ecr::from_client(ecr_client(conf), ecr_host.clone()),
        );
        r
    };
    let store = |conf: &aws_config::SdkConfig| {
        hub_core::status::dynamodb::DynamoStore::new(
            aws_sdk_dynamodb::Client::new(conf),
            table.to_string(),
        )
    };
    let blobs = |conf: &aws_config::SdkConfig| hub_core::aws::offload::S3Blobs {
        client: aws_sdk_s3::Client::new(conf),
        bucket: bucket.to_string(),
    };
    // Every payload that would cross a state of the state machine (execution input,
    // each state's input and output: what the execution history holds).
    let mut payloads: Vec<serde_json::Value> = Vec::new();
    let req = ListRequest {
        run_id: "canary-run".into(),
        execution: None,
        input: Default::default(),
    };
    payloads.push(serde_json::to_value(&req)?);
    let ssm = hub_core::images::list_source::Ssm(aws_sdk_ssm::Client::new(&list_conf));
    let list_reg = registries(&list_conf);
    let (list_store, list_blobs) = (store(&list_conf), blobs(&list_conf));
    let listed = rt
        .block_on(suite::list_images(
            req,
            &cfg,
            &ListEdges {
                params: &ssm,
                registry: &list_reg,
                blobs: &list_blobs,
                store: &list_store,
            },
        ))
        .map_err(|e| anyhow::anyhow!("list-images: {}", e.message))?;
    payloads.push(serde_json::to_value(&listed)?);
    let diff_reg = registries(&diff_conf);
    let prepare = EcrRepos {
        ecr: Ecr::from_client(ecr_client(&diff_conf), ecr_host.clone()),
        settings: cfg.repo_settings.clone(),
    };
    let (diff_store, diff_blobs) = (store(&diff_conf), blobs(&diff_conf));
    let diff = rt
        .block_on(suite::find_diff(
            listed,
            &cfg,
            &DiffEdges {
                registry: &diff_reg,
                blobs: &diff_blobs,
                store: &diff_store,
                prepare: Some(&prepare),
            },
        ))
        .map_err(|e| anyhow::anyhow!("find-diff: {}", e.message))?;
    payloads.push(serde_json::to_value(&diff)?);
    let copies = diff.copies.items.clone().unwrap_or_default();
    let ecs = |conf: &aws_config::SdkConfig| {
        aws_sdk_ecs::Client::from_conf(
            aws_sdk_ecs::config::Builder::from(conf)
                .endpoint_url(&ecs_api.endpoint)
                .build(),
        )
    };
    let runner = hub_core::aws::ecs_runner::EcsRunner {
        client: ecs(&dispatch_conf),
        settings: hub_core::aws::ecs_runner::EcsSettings {
            cluster: "th".into(),
            task_definition: "th-copy".into(),
            container: "copy".into(),
            subnets: vec![subnet],
            security_groups: vec![sg],
            assign_public_ip: false,
        },
    };
    let sns = hub_core::aws::notify::Sns {
        client: aws_sdk_sns::Client::new(&record_conf),
        topic_arn: topic.clone(),
    };
    let record_store = store(&record_conf);
    let mut f = Findings::default();
    let run = tempfile::tempdir()?;
    let tmp = run.path().join("tmp");
    std::fs::create_dir(&tmp)?;
    let (mut seen, mut cmd_hits, mut env_hits) = (0, Vec::new(), Vec::new());
    let mut worker_out = Vec::new();
    let mut copied = 0;
    for (i, task) in copies.iter().enumerate() {
        let req = DispatchRequest {
            task_token: format!("canary-token-{i}"),
            run_id: "canary-run".into(),
            task: task.clone(),
        };
        payloads.push(serde_json::to_value(&req)?);
        let out = rt
            .block_on(suite::dispatch_fargate(req, &runner))
            .map_err(|e| anyhow::anyhow!("dispatch-fargate: {}", e.message))?;
        payloads.push(out.clone());
        let task_arn = out["task_arn"].as_str().unwrap_or("").to_string();
        let described = rt
            .block_on(
                ecs(&admin)
                    .describe_tasks()
                    .cluster("th")
                    .tasks(&task_arn)
                    .send(),
            )
            .map_err(|e| anyhow::anyhow!("DescribeTasks: {e}"))?;
        // Play Fargate: the task definition's environment plus the task's overrides.
        let mut wenv: Vec<(String, String)> =
            hub_tests::aws_fixtures::task_environment(&described.tasks()[0]);
        wenv.extend(
            [
                ("SOURCE_SECRET", "th/source"),
                ("SOURCE_REGISTRY", src.addr.as_str()),
                ("DEST_REGISTRY", &format!("{ECR_HOST}/mirror")),
                ("HEARTBEAT_SECS", "1"),
                ("TRANSFER_HUB_ECR_REGISTRY_ADDRESS", backend.addr.as_str()),
                ("AWS_ENDPOINT_URL_ECR", ecr_api.endpoint.as_str()),
                ("TMPDIR", tmp.to_str().unwrap()),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        wenv.extend(iam.env(&task_keys, REGION));
        let child = Command::new(transfer_hub_bin().with_file_name("copy-worker"))
            .envs(wenv)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (o, n, c, e) = run_watched(&canary, child, false, &|| false);
        seen += n;
        cmd_hits.extend(c);
        env_hits.extend(e);
        worker_out.extend_from_slice(&o.stdout);
        worker_out.extend_from_slice(&o.stderr);
        let ok = String::from_utf8_lossy(&o.stderr).contains("reported success");
        copied += ok as u64;
        let rec = RecordRequest::Item {
            run_id: "canary-run".into(),
            task: task.clone(),
            result: ok.then(|| hub_core::images::workflow::CopyResult {
                source: task.source.clone(),
                dest: task.dest.clone(),
                source_digest: task.source_digest.clone(),
                dest_digest: task.source_digest.clone(),
                attempts: 1,
                bytes: 0,
            }),
            error: (!ok).then(|| hub_core::images::workflow::CaughtError {
                error: "Retryable".into(),
                cause: Some("the copy failed".into()),
            }),
            at: Some(chrono::Utc::now().to_rfc3339()),
        };
        payloads.push(serde_json::to_value(&rec)?);
        let r = rt
            .block_on(suite::record_status(rec, &record_store, &sns))
            .map_err(|e| anyhow::anyhow!("record-status: {}", e.message))?;
        payloads.push(r);
    }
    let rec = RecordRequest::Run {
        run_id: "canary-run".into(),
        input: Default::default(),
    };
    payloads.push(serde_json::to_value(&rec)?);
    let r = rt
        .block_on(suite::record_status(rec, &record_store, &sns))
        .map_err(|e| anyhow::anyhow!("record-status (run): {}", e.message))?;
    payloads.push(r);
    let tasks_text = rt.block_on(async {
        let ecs = ecs(&admin);
        let arns = ecs.list_tasks().cluster("th").send().await.unwrap();
        let d = ecs
            .describe_tasks()
            .cluster("th")
            .set_tasks(Some(arns.task_arns().to_vec()))
            .send()
            .await
            .unwrap();
        format!("{:?}", d.tasks())
    });
    let ((items, db), (msgs, queues)) =
        rt.block_on(async { (dynamodb_dump(&admin).await, sqs_dump(&admin).await) });
    f.look(
        &canary,
        &format!(
            "{} state payloads (execution input, state inputs/outputs)",
            payloads.len()
        ),
        serde_json::to_string(&payloads)?.as_bytes(),
    );
    f.look(
        &canary,
        &format!("DynamoDB: {items} items of every table"),
        &db,
    );
    f.look(
        &canary,
        &format!("SQS: {msgs} messages of every queue"),
        &queues,
    );
    f.look(
        &canary,
        &format!("ECS: {} tasks' overrides (DescribeTasks)", copies.len()),
        tasks_text.as_bytes(),
    );
    f.look(
        &canary,
        "copy-worker stdout+stderr (RUST_LOG=debug)",
        &worker_out,
    );
    f.look_in_dir(&canary, "worker TMPDIR after exit", &tmp);
    f.places
        .push((format!("command lines of {seen} worker children"), cmd_hits));
    f.places
        .push((format!("environments of {seen} worker children"), env_hits));
    let mut problems = f.hit_places();
    if copied != copies.len() as u64 || copies.len() != 2 {
        problems.push(format!(
            "rig: {copied} of {} copies reported success (2 planned expected): {}",
            copies.len(),
            String::from_utf8_lossy(&worker_out)
                .lines()
                .last()
                .unwrap_or("")
        ));
    }
    let denied = iam.denied();
    if !denied.is_empty() {
        problems.push(format!("rig: refused IAM calls {denied:?}"));
    }
    iam.clear_decisions();
    eprintln!(
        "  searched: {:?}",
        f.places.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    let (n, ok, bad) = f.counts();
    Ok(Row::judged("", "", (n, ok, bad, 0), &problems))
}
