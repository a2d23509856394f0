//! The image state machine end to end on this machine: the definition the template deploys,
//! created in moto's Step Functions with its interpreter on; the Lambda states run the real
//! handlers under `cargo lambda watch` (behind a router, as Lambda would answer); the test
//! plays Fargate by running the real copy-worker for every `RunTask` moto records. Each
//! execution gets a moto of its own (see `Aws`); the registries stay, so the second day
//! finds what the first one copied.

use hub_core::status::StatusStore as _;
use hub_core::status::dynamodb::DynamoStore;
use hub_tests::{
    HttpProxy, LambdaWatch, MotoServer, OciImage, RegistryServer, aws_fixtures, free_port,
    lambda_router, transfer_hub_bin,
};
use std::collections::HashMap;
use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

const REGION: &str = "eu-west-1";
const ACCOUNT: &str = "123456789012";

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

fn definition() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let template = std::fs::read_to_string(root.join("template.yaml")).unwrap();
    let uri = template
        .lines()
        .find_map(|l| l.trim().strip_prefix("DefinitionUri: "))
        .expect("the template names its definition file");
    let mut d = std::fs::read_to_string(root.join(uri.trim())).unwrap();
    for (k, v) in [
        ("${Partition}", "aws".to_string()),
        (
            "${ListImagesFunctionArn}",
            format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:list-images"),
        ),
        (
            "${FindDiffFunctionArn}",
            format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:find-diff"),
        ),
        (
            "${DispatchFargateFunctionArn}",
            format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:dispatch-fargate"),
        ),
        (
            "${RecordStatusFunctionArn}",
            format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:record-status"),
        ),
    ] {
        d = d.replace(k, &v);
    }
    // Test timings: seconds instead of minutes between retries.
    d.replace("\"IntervalSeconds\": 30", "\"IntervalSeconds\": 1")
        .replace("\"IntervalSeconds\": 5", "\"IntervalSeconds\": 1")
        .replace("\"IntervalSeconds\": 2", "\"IntervalSeconds\": 1")
}

/// A moto whose Step Functions interpreter runs executions and makes its service calls to
/// `http://localhost:{router_port}` (MOTO_PORT), where the test's Lambda router listens.
fn interpreting_moto(router_port: u16) -> MotoServer {
    let moto = MotoServer::start_with_env(&[("MOTO_PORT", router_port.to_string())]);
    reqwest::blocking::Client::new()
        .post(format!("{}/moto-api/config", moto.endpoint))
        .json(&serde_json::json!({"stepfunctions": {"execute_state_machine": true}, "lambda": {"use_docker": false}}))
        .send()
        .unwrap();
    moto
}

/// Creates a state machine from `definition`, starts one execution of it named `name`
/// with `input`, and looks every 200 ms (calling `between` before each look) until it ends or
/// `limit` passes; returns its status and output, with the last history events when it
/// did not succeed.
fn execute(
    rt: &tokio::runtime::Runtime,
    moto: &MotoServer,
    watch: &LambdaWatch,
    (name, definition, input): (&str, String, &str),
    limit: Duration,
    mut between: impl FnMut(),
) -> (String, String) {
    let sfn = aws_sdk_sfn::Client::new(&rt.block_on(moto.sdk_config(REGION)));
    let sm = rt
        .block_on(
            sfn.create_state_machine()
                .name(format!("{name}-machine"))
                .definition(definition)
                .role_arn(format!("arn:aws:iam::{ACCOUNT}:role/sfn"))
                .send(),
        )
        .unwrap()
        .state_machine_arn()
        .to_string();
    let started = rt.block_on(
        sfn.start_execution()
            .state_machine_arn(&sm)
            .name(name)
            .input(input)
            .send(),
    );
    let exec = match started {
        Ok(o) => o.execution_arn().to_string(),
        Err(e) => {
            let log = moto.log();
            panic!(
                "StartExecution {name}: {e:?}\nmoto log (end):\n{}",
                &log[log.len().saturating_sub(6000)..]
            )
        }
    };
    let deadline = Instant::now() + limit;
    loop {
        between();
        let d = rt
            .block_on(sfn.describe_execution().execution_arn(&exec).send())
            .unwrap();
        if d.status().as_str() != "RUNNING" {
            let mut out = d.output().unwrap_or_default().to_string();
            if d.status().as_str() != "SUCCEEDED" {
                let h = rt
                    .block_on(
                        sfn.get_execution_history()
                            .execution_arn(&exec)
                            .reverse_order(true)
                            .max_results(15)
                            .send(),
                    )
                    .unwrap();
                out.push_str(&format!("\nlast events: {:#?}", h.events()));
            }
            return (d.status().as_str().to_string(), out);
        }
        assert!(
            Instant::now() < deadline,
            "execution {name} still running after {limit:?}\n{}",
            watch.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Fargate {
    started: HashMap<String, Child>,
    max_running: usize,
    by_source: HashMap<String, usize>,
}

impl Fargate {
    /// Starts a worker for every task moto has that we have not seen; reaps finished ones.
    fn step(
        &mut self,
        rt: &tokio::runtime::Runtime,
        ecs: &aws_sdk_ecs::Client,
        worker_env: &[(String, String)],
    ) {
        let arns: Vec<String> = rt
            .block_on(ecs.list_tasks().cluster("th").send())
            .unwrap()
            .task_arns()
            .to_vec();
        let new: Vec<String> = arns
            .into_iter()
            .filter(|a| !self.started.contains_key(a))
            .collect();
        if !new.is_empty() {
            let tasks = rt
                .block_on(
                    ecs.describe_tasks()
                        .cluster("th")
                        .set_tasks(Some(new.clone()))
                        .send(),
                )
                .unwrap();
            for t in tasks.tasks() {
                let env = aws_fixtures::task_environment(t);
                let source = env
                    .iter()
                    .find(|(k, _)| k == "SOURCE")
                    .map(|(_, v)| v.clone())
                    .unwrap();
                *self.by_source.entry(source).or_default() += 1;
                let child =
                    std::process::Command::new(transfer_hub_bin().with_file_name("copy-worker"))
                        .envs(worker_env.iter().cloned())
                        .envs(env)
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .spawn()
                        .unwrap();
                self.started
                    .insert(t.task_arn().unwrap().to_string(), child);
            }
        }
        let mut running = 0;
        for c in self.started.values_mut() {
            if c.try_wait().unwrap().is_none() {
                running += 1;
            }
        }
        self.max_running = self.max_running.max(running);
    }
}

impl Drop for Fargate {
    /// A failed assertion leaves no worker behind.
    fn drop(&mut self) {
        for c in self.started.values_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One AWS side: a moto server holding the resources the template creates, the functions
/// under `cargo lambda watch` configured against it, and the router its interpreter calls.
/// moto 5.2 answers a second `StartExecution` in the same server with HTTP 500 (it
/// deep-copies state that holds a lock, even for a fresh state machine), so every
/// execution gets its own — the registries, where the images live, are shared.
struct Aws {
    moto: MotoServer,
    conf: aws_config::SdkConfig,
    ecs: aws_sdk_ecs::Client,
    worker_env: Vec<(String, String)>,
    queue_url: String,
    watch: LambdaWatch,
    _router: HttpProxy,
    _ecs_fix: HttpProxy,
}

impl Aws {
    fn start(
        rt: &tokio::runtime::Runtime,
        src: &RegistryServer,
        dst: &RegistryServer,
        list: &[String],
        extra_sources: &str,
    ) -> Self {
        let router_port = free_port();
        let moto = interpreting_moto(router_port);
        let conf = rt.block_on(moto.sdk_config(REGION));
        let ecs_fix = hub_tests::ecs_types_proxy(&moto.endpoint);
        let (subnet, sg) = moto.network(REGION);
        let (topic, queue_url) = rt.block_on(async {
            aws_fixtures::status_table(&conf, "status").await;
            aws_fixtures::tasks_table(&conf, "tasks").await;
            aws_fixtures::bucket(&conf, "payloads").await;
            aws_sdk_ssm::Client::new(&conf)
                .put_parameter()
                .name("/th/images")
                .value(list.join("\n"))
                .r#type(aws_sdk_ssm::types::ParameterType::String)
                .send()
                .await
                .unwrap();
            aws_fixtures::copy_cluster(&conf).await;
            aws_fixtures::topic_with_queue(&conf, "alarms").await
        });

        // The functions, configured as the template configures them.
        let mut fn_env = moto.env(REGION);
        fn_env.retain(|(k, _)| k != "AWS_ENDPOINT_URL");
        fn_env.push(("AWS_ENDPOINT_URL".into(), ecs_fix.endpoint.clone()));
        for (k, v) in [
            ("SOURCE_REGISTRY", src.addr.clone()),
            ("DEST_REGISTRY", format!("{}/mirror", dst.addr)),
            ("SELECT_TYPE", "SELECTED".into()),
            ("LIST_PARAMETER", "/th/images".into()),
            ("TABLE_NAME", "status".into()),
            ("TASKS_TABLE", "tasks".into()),
            ("PAYLOAD_BUCKET", "payloads".into()),
            ("CLUSTER", "th".into()),
            ("TASK_DEFINITION", "th-copy".into()),
            ("CONTAINER_NAME", "copy".into()),
            ("SUBNETS", subnet),
            ("SECURITY_GROUPS", sg),
            ("TOPIC_ARN", topic),
            ("RETRIES", "0".into()),
            // Lines may name only the source, or a host allowed here.
            ("EXTRA_SOURCE_REGISTRIES", extra_sources.into()),
        ] {
            fn_env.push((k.into(), v));
        }
        let watch = LambdaWatch::start(&fn_env);
        // moto's interpreter calls back on the port it was told about (MOTO_PORT).
        let router = lambda_router(router_port, &moto.endpoint, &watch.addr);

        let ecs = aws_sdk_ecs::Client::from_conf(
            aws_sdk_ecs::config::Builder::from(&conf)
                .endpoint_url(&ecs_fix.endpoint)
                .build(),
        );
        Self {
            ecs,
            worker_env: moto.env(REGION),
            queue_url,
            watch,
            _router: router,
            _ecs_fix: ecs_fix,
            moto,
            conf,
        }
    }

    /// Creates the state machine, starts execution `name` and plays Fargate until it ends;
    /// returns its status and output (with the last history events when it did not succeed).
    fn run(
        &self,
        rt: &tokio::runtime::Runtime,
        name: &str,
        input: &str,
        fargate: &mut Fargate,
    ) -> (String, String) {
        execute(
            rt,
            &self.moto,
            &self.watch,
            (name, definition(), input),
            Duration::from_secs(600),
            || fargate.step(rt, &self.ecs, &self.worker_env),
        )
    }

    /// The tasks moto's ECS holds in the copy cluster (every `RunTask` the run made).
    fn task_arns(&self, rt: &tokio::runtime::Runtime) -> Vec<String> {
        rt.block_on(self.ecs.list_tasks().cluster("th").send())
            .unwrap()
            .task_arns()
            .to_vec()
    }

    /// The run record in the status table: (copied, skipped, failed).
    fn run_record(&self, rt: &tokio::runtime::Runtime, run_id: &str) -> (u64, u64, u64) {
        let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&self.conf), "status");
        let (run, _items) = rt
            .block_on(store.get_run(Some(run_id)))
            .unwrap()
            .unwrap_or_else(|| panic!("run {run_id} has a record"));
        (run.copied, run.skipped, run.failed)
    }
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

/// The object diff state machine end to end: the definition the template deploys, in
/// moto's Step Functions; every round is the real `diff-objects` under `cargo lambda
/// watch`, given no time (`DIFF_ROUND_SECONDS=0`), so each round decides one key and the
/// Choice loops, feeding each output back as input, until both listings are done.
#[test]
fn the_object_diff_state_machine_runs_rounds_until_both_listings_are_done() {
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
    let (status, output) = execute(
        &rt,
        &moto,
        &watch,
        ("hourly", definition, "{}"),
        Duration::from_secs(300),
        || {},
    );
    assert_eq!(status, "SUCCEEDED", "{output}\n{}", watch.log());
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
    let mut keys: Vec<String> = Vec::new();
    loop {
        let bodies = rt.block_on(aws_fixtures::messages(&conf, &queue));
        if bodies.is_empty() {
            break;
        }
        for b in bodies {
            let j: serde_json::Value = serde_json::from_str(&b).unwrap();
            keys.push(j["key"].as_str().unwrap().to_string());
        }
        assert!(keys.len() <= 50, "more jobs than objects: {keys:?}");
    }
    keys.sort();
    let expected: Vec<String> = (1..12).map(|i| format!("a{i:02}")).collect();
    assert_eq!(
        keys, expected,
        "every differing object queued once, across all rounds"
    );
}
