//! The image state machine end to end on this machine: the definition the template deploys,
//! created in moto's Step Functions with its interpreter on; the Lambda states run the real
//! handlers under `cargo lambda watch` (behind a router, as Lambda would answer); the test
//! plays Fargate by running the real copy-worker for every `RunTask` moto records. Each
//! execution gets a moto of its own (see `Aws`); the registries stay, so the second day
//! finds what the first one copied.

use hub_tests::sfn_rig::{ACCOUNT, Aws, Fargate, REGION, execute, interpreting_moto};
use hub_tests::{
    HttpProxy, LambdaWatch, OciImage, RegistryServer, aws_fixtures, free_port, lambda_router,
};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A proxy in front of a registry that answers manifest HEADs but cuts every GET: the
/// image is planned (digests known) but can never be copied — a retryable failure, always.
fn head_only(upstream: &str) -> HttpProxy {
    let up = upstream.to_string();
    HttpProxy::start(
        Arc::new(move |head: &str| {
            if head.starts_with("HEAD ") || head.starts_with("GET /v2/ ") {
                (up.clone(), head.to_string())
            } else {
                ("127.0.0.1:1".to_string(), head.to_string()) // nothing listens: connection refused
            }
        }),
        Arc::new(|_h: &str, s, b| (s, Vec::new(), b)),
    )
}

#[test]
fn the_state_machine_copies_eleven_images_records_the_twelfth_as_failed_and_a_quiet_day_starts_no_task()
 {
    // Registries (shared by both days), and a broken source host in front of the real one.
    let (src, dst) = (RegistryServer::start(), RegistryServer::start());
    let broken = head_only(&src.addr);
    let broken_host = broken.endpoint.trim_start_matches("http://").to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();

    let images: Vec<OciImage> = (0..11).map(|_| OciImage::single(&[2048])).collect();
    for (i, img) in images.iter().enumerate() {
        img.push(&format!("{}/team/app{i}:1", src.addr), None);
    }
    OciImage::single(&[2048]).push(&format!("{}/team/broken:1", src.addr), None);
    let mut list: Vec<String> = (0..11).map(|i| format!("team/app{i}:1")).collect();
    list.push(format!("{broken_host}/team/broken:1"));

    // Day 1: the SSM list — eleven images and the one that never copies.
    let t = Instant::now();
    let day1 = Aws::start(&rt, &src, &dst, &list, &broken_host);
    let mut fargate = Fargate {
        started: HashMap::new(),
        max_running: 0,
        by_source: HashMap::new(),
    };
    let (status, output) = day1.run(&rt, "day-1", "{}", &mut fargate);
    eprintln!("day-1: {status} after {:.1?}", t.elapsed());
    assert_eq!(status, "SUCCEEDED", "{output}\n{}", day1.watch.log());
    let summary: serde_json::Value = serde_json::from_str(&output).unwrap();
    assert_eq!(
        (
            summary["copied"].as_u64(),
            summary["failed"].as_u64(),
            summary["notified"].as_bool()
        ),
        (Some(11), Some(1), Some(true)),
        "{summary}"
    );
    for (i, img) in images.iter().enumerate() {
        assert_eq!(
            dst.digest(&format!("mirror/team/app{i}"), "1").as_deref(),
            Some(img.digest.as_str())
        );
    }
    assert_eq!(
        fargate.by_source[&format!("{broken_host}/team/broken:1")],
        4,
        "the failing image: first attempt + 3 retries"
    );
    assert!(
        fargate.max_running <= 10,
        "at most 10 workers at once, saw {}",
        fargate.max_running
    );
    let msgs = rt.block_on(aws_fixtures::messages(&day1.conf, &day1.queue_url));
    assert_eq!(msgs.len(), 1, "one SNS message for the run");
    assert_eq!(
        day1.run_record(&rt, "day-1"),
        (11, 0, 1),
        "day-1 run record"
    );
    drop((fargate, day1));

    // Day 2, on a fresh moto (see `Aws`): nothing changed (the broken image left out), so
    // find-diff finds nothing to move and no task starts.
    let writes_before = dst.write_requests("").len();
    assert!(
        writes_before > 0,
        "the destination logs the first day's writes"
    );
    let t = Instant::now();
    let day2 = Aws::start(&rt, &src, &dst, &list, &broken_host);
    let mut fargate = Fargate {
        started: HashMap::new(),
        max_running: 0,
        by_source: HashMap::new(),
    };
    let good: Vec<String> = (0..11).map(|i| format!("team/app{i}:1")).collect();
    let (status, output) = day2.run(
        &rt,
        "day-2",
        &serde_json::json!({"images": good}).to_string(),
        &mut fargate,
    );
    eprintln!("day-2: {status} after {:.1?}", t.elapsed());
    assert_eq!(status, "SUCCEEDED", "{output}\n{}", day2.watch.log());
    assert!(
        fargate.started.is_empty() && day2.task_arns(&rt).is_empty(),
        "a quiet day starts no Fargate task: {:?}",
        day2.task_arns(&rt)
    );
    let summary: serde_json::Value = serde_json::from_str(&output).unwrap();
    assert_eq!(
        (
            summary["copied"].as_u64(),
            summary["skipped"].as_u64(),
            summary["failed"].as_u64(),
            summary["notified"].as_bool()
        ),
        (Some(0), Some(11), Some(0), Some(false)),
        "{summary}"
    );
    assert_eq!(
        day2.run_record(&rt, "day-2"),
        (0, 11, 0),
        "day-2 run record"
    );
    let msgs = rt.block_on(aws_fixtures::messages(&day2.conf, &day2.queue_url));
    assert!(msgs.is_empty(), "no SNS message on a quiet day: {msgs:?}");
    assert_eq!(
        dst.write_requests("").len(),
        writes_before,
        "nothing written to the destination on a quiet day"
    );
}

/// A task run on AWS: the console's "run now" (and each task's schedule) starts the image
/// state machine with `{"task": NAME}`; list-images and find-diff read that task from the
/// tasks table and copy what it selects, where it says, not what the stack's SSM list and
/// destination prefix say. The run record carries the task's name.
#[test]
fn an_execution_started_with_a_task_copies_what_the_task_selects_not_the_stack_parameters() {
    use hub_core::tasks::store::TaskStore as _;
    let (src, dst) = (RegistryServer::start(), RegistryServer::start());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stacks = OciImage::single(&[1024]);
    stacks.push(&format!("{}/team/stack-app:1", src.addr), None);
    let tasks: Vec<OciImage> = (0..2).map(|_| OciImage::single(&[1024])).collect();
    for (i, img) in tasks.iter().enumerate() {
        img.push(&format!("{}/team/task-app{i}:1", src.addr), None);
    }
    // The stack: its SSM list names stack-app, its destination prefix is mirror/.
    let aws = Aws::start(&rt, &src, &dst, &["team/stack-app:1".to_string()], "");
    let store = hub_core::aws::task_store::DynamoTaskStore::new(
        aws_sdk_dynamodb::Client::new(&aws.conf),
        "tasks",
        "status",
    );
    let task = crate::integration::console_aws::images_task(
        "nightly-web",
        &format!("{}/team", src.addr),
        &format!("{}/by-task", dst.addr),
        "task-app0:1\ntask-app1:1\n",
    );
    rt.block_on(store.create(&task)).unwrap();
    let mut fargate = Fargate {
        started: HashMap::new(),
        max_running: 0,
        by_source: HashMap::new(),
    };
    let (status, output) = aws.run(
        &rt,
        "task-run-1",
        &serde_json::json!({"task": "nightly-web"}).to_string(),
        &mut fargate,
    );
    assert_eq!(status, "SUCCEEDED", "{output}\n{}", aws.watch.log());
    let summary: serde_json::Value = serde_json::from_str(&output).unwrap();
    assert_eq!(
        (summary["copied"].as_u64(), summary["failed"].as_u64()),
        (Some(2), Some(0)),
        "{summary}"
    );
    for (i, img) in tasks.iter().enumerate() {
        assert_eq!(
            dst.digest(&format!("by-task/task-app{i}"), "1").as_deref(),
            Some(img.digest.as_str()),
            "the task's image {i} at the task's destination"
        );
    }
    assert_eq!(
        dst.digest("mirror/team/stack-app", "1"),
        None,
        "the stack's list was not what ran"
    );
    assert_eq!(aws.run_record(&rt, "task-run-1"), (2, 0, 0));
    assert_eq!(
        rt.block_on(store.task_of("task-run-1")).unwrap().as_deref(),
        Some("nightly-web"),
        "the run carries its task's name"
    );
    let runs = rt.block_on(store.runs("nightly-web", None, 10)).unwrap();
    assert_eq!(
        runs.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(),
        ["task-run-1"]
    );

    // A task naming a registry the stack has no rule for is refused by name, copying nothing.
    let foreign = crate::integration::console_aws::images_task(
        "elsewhere",
        "registry.example:5000/x",
        &format!("{}/by-task", dst.addr),
        "a:1",
    );
    drop(fargate);
    let aws2 = Aws::start(&rt, &src, &dst, &["team/stack-app:1".to_string()], "");
    let store2 = hub_core::aws::task_store::DynamoTaskStore::new(
        aws_sdk_dynamodb::Client::new(&aws2.conf),
        "tasks",
        "status",
    );
    rt.block_on(store2.create(&foreign)).unwrap();
    let mut fargate = Fargate {
        started: HashMap::new(),
        max_running: 0,
        by_source: HashMap::new(),
    };
    let (status, output) = aws2.run(
        &rt,
        "task-run-2",
        &serde_json::json!({"task": "elsewhere"}).to_string(),
        &mut fargate,
    );
    assert_eq!(status, "FAILED", "{output}");
    // The history redacts the cause; list-images' log names the refused host.
    let log = aws2.watch.log();
    assert!(
        log.contains("registry.example:5000") && fargate.started.is_empty(),
        "{log}"
    );
}

/// The objects-diff rig: moto interpreting the definition the template deploys, its Lambda
/// calls routed to the real `diff-objects` under `cargo lambda watch` (given no time,
/// `DIFF_ROUND_SECONDS=0`, so each round decides one key), buckets `src` (12 objects under
/// `in/`) and `dst` (`out/a00` in sync, `out/a01` changed, `out/zz` only there), the status,
/// uploads and tasks tables and the job queue. moto interprets one execution per server.
struct ObjectsDiffRig {
    rt: tokio::runtime::Runtime,
    moto: hub_tests::MotoServer,
    conf: aws_config::SdkConfig,
    queue: String,
    watch: LambdaWatch,
    _router: hub_tests::HttpProxy,
    definition: String,
}

impl ObjectsDiffRig {
    fn start() -> Self {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let router_port = free_port();
        let moto = interpreting_moto(router_port);
        let conf = rt.block_on(moto.sdk_config(REGION));
        let s3 = aws_sdk_s3::Client::new(&conf);
        let sqs = aws_sdk_sqs::Client::new(&conf);
        let queue = rt.block_on(async {
            for b in ["src", "dst"] {
                aws_fixtures::bucket(&conf, b).await;
            }
            aws_fixtures::status_table(&conf, "status").await;
            aws_fixtures::uploads_table(&conf, "uploads").await;
            aws_fixtures::tasks_table(&conf, "tasks").await;
            let put = |bucket: &'static str, key: String, body: String| {
                s3.put_object()
                    .bucket(bucket)
                    .key(key)
                    .body(body.into_bytes().into())
                    .send()
            };
            for i in 0..12 {
                put("src", format!("in/a{i:02}"), format!("object {i}"))
                    .await
                    .unwrap();
            }
            put("dst", "out/a00".into(), "object 0".into())
                .await
                .unwrap();
            put("dst", "out/a01".into(), "changed: another size".into())
                .await
                .unwrap();
            put("dst", "out/zz".into(), "only here".into())
                .await
                .unwrap();
            sqs.create_queue()
                .queue_name("jobs")
                .send()
                .await
                .unwrap()
                .queue_url
                .unwrap()
        });

        let mut fn_env = moto.env(REGION);
        for (k, v) in [
            ("SOURCE_BUCKET", "src"),
            ("SOURCE_PREFIX", "in/"),
            ("SOURCE_REGION", REGION),
            ("SOURCE_ENDPOINT", moto.endpoint.as_str()),
            ("DEST_BUCKET", "dst"),
            ("DEST_PREFIX", "out/"),
            ("DEST_REGION", REGION),
            ("DEST_ENDPOINT", moto.endpoint.as_str()),
            ("TABLE_NAME", "status"),
            ("UPLOADS_TABLE", "uploads"),
            ("JOB_QUEUE_URL", queue.as_str()),
            ("DIFF_ROUND_SECONDS", "0"),
            ("TASKS_TABLE", "tasks"),
        ] {
            fn_env.push((k.into(), v.into()));
        }
        let watch = LambdaWatch::start_functions(&fn_env, &hub_tests::OBJECT_FUNCTIONS);
        let _router = lambda_router(router_port, &moto.endpoint, &watch.addr);

        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let definition = std::fs::read_to_string(root.join("statemachine/objects-diff.asl.json"))
            .unwrap()
            .replace("${Partition}", "aws")
            .replace(
                "${DiffObjectsFunctionArn}",
                &format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:diff-objects"),
            )
            .replace("\"IntervalSeconds\": 5", "\"IntervalSeconds\": 1");
        ObjectsDiffRig {
            rt,
            moto,
            conf,
            queue,
            watch,
            _router,
            definition,
        }
    }

    /// Runs the definition with `input` (up to 5 minutes): its status and output.
    fn execute(&self, name: &str, input: &str) -> (String, String) {
        execute(
            &self.rt,
            &self.moto,
            &self.watch,
            (name, self.definition.clone(), input),
            Duration::from_secs(300),
            || {},
        )
    }

    /// Every job on the queue, taken off it.
    fn drain(&self) -> Vec<serde_json::Value> {
        let mut jobs = Vec::new();
        loop {
            let bodies = self
                .rt
                .block_on(aws_fixtures::messages(&self.conf, &self.queue));
            if bodies.is_empty() {
                return jobs;
            }
            jobs.extend(bodies.iter().map(|b| serde_json::from_str(b).unwrap()));
            assert!(jobs.len() <= 50, "more jobs than objects: {jobs:?}");
        }
    }
}

/// The object diff state machine end to end: the definition the template deploys, in
/// moto's Step Functions; every round is the real `diff-objects` under `cargo lambda
/// watch`, given no time (`DIFF_ROUND_SECONDS=0`), so each round decides one key and the
/// Choice loops, feeding each output back as input, until both listings are done.
#[test]
fn the_object_diff_state_machine_runs_rounds_until_both_listings_are_done() {
    let rig = ObjectsDiffRig::start();
    let (status, output) = rig.execute("hourly", "{}");
    assert_eq!(status, "SUCCEEDED", "{output}\n{}", rig.watch.log());
    let out: serde_json::Value = serde_json::from_str(&output).unwrap();
    // 12 source keys and 1 only at the destination, one a round, then a round with nothing
    // left: the loop fed every output back in (the counts and `rounds` add up over them).
    assert_eq!(out["rounds"], 14, "{out}");
    assert_eq!(
        (
            out["to_copy"].as_u64(),
            out["in_sync"].as_u64(),
            out["only_at_dest"].as_u64()
        ),
        (Some(11), Some(1), Some(1)),
        "{out}"
    );
    assert!(out.get("next").is_none(), "{out}");
    let mut keys: Vec<String> = rig
        .drain()
        .iter()
        .map(|j| j["key"].as_str().unwrap().to_string())
        .collect();
    keys.sort();
    let expected: Vec<String> = (1..12).map(|i| format!("a{i:02}")).collect();
    assert_eq!(
        keys, expected,
        "every differing object queued once, across all rounds"
    );
}

/// An objects task's run through the definition the template deploys, started as the
/// console's "run now" and the task's schedule start it (`{"task": NAME}`): the first round
/// reads the task from the tasks table, every round carries it on, and the jobs are for
/// what the task selects (its prefix), not what the stack's parameters say (`in/` → `out/`).
#[test]
fn an_objects_task_execution_diffs_what_the_task_selects_not_the_stack_parameters() {
    use hub_core::tasks::store::TaskStore as _;
    let rig = ObjectsDiffRig::start();
    let store = hub_core::aws::task_store::DynamoTaskStore::new(
        aws_sdk_dynamodb::Client::new(&rig.conf),
        "tasks",
        "status",
    );
    let s3 = aws_sdk_s3::Client::new(&rig.conf);
    rig.rt.block_on(async {
        for i in 0..3 {
            s3.put_object()
                .bucket("src")
                .key(format!("task-in/t{i}"))
                .body(format!("the task's object {i}").into_bytes().into())
                .send()
                .await
                .unwrap();
        }
        store
            .create(&crate::integration::objects_aws::objects_task(
                "photos",
                "s3://src/task-in/",
                "s3://dst/task-out/",
                &[],
            ))
            .await
            .unwrap();
    });
    let (status, output) = rig.execute("photos-run", r#"{"task": "photos"}"#);
    assert_eq!(status, "SUCCEEDED", "{output}\n{}", rig.watch.log());
    let out: serde_json::Value = serde_json::from_str(&output).unwrap();
    assert_eq!(out["task"], "photos", "{out}");
    assert_eq!(
        (out["to_copy"].as_u64(), out["in_sync"].as_u64()),
        (Some(3), Some(0)),
        "the task's three objects, none of the stack's twelve: {out}"
    );
    let jobs = rig.drain();
    for j in &jobs {
        assert_eq!(j["task"]["name"], "photos", "{j}");
    }
    let mut keys: Vec<&str> = jobs.iter().map(|j| j["key"].as_str().unwrap()).collect();
    keys.sort();
    assert_eq!(keys, ["t0", "t1", "t2"]);
    assert_eq!(
        rig.rt
            .block_on(store.task_of(out["run_id"].as_str().unwrap()))
            .unwrap()
            .as_deref(),
        Some("photos"),
        "the run carries its task's name"
    );
}

/// The secret canary through the real state machine (see
/// [`hub_tests::sfn_rig::canary_state_machine`]): registry passwords, the Secrets Manager
/// JSON and the AWS secret key hold one canary; it is in none of the execution's input,
/// output and full history, the DynamoDB items, the SQS messages, or the ECS overrides
/// moto recorded. The same run is the fault report's row "canary: state machine".
#[test]
fn the_secret_canary_is_nowhere_in_a_real_state_machine_execution() {
    let (findings, problems) = hub_tests::sfn_rig::canary_state_machine();
    assert!(
        problems.is_empty(),
        "{problems:#?}\nlooked in: {:?}",
        findings.places
    );
    assert!(findings.places.len() >= 6, "{:?}", findings.places);
}
