//! The image state machine on this machine: the definition the template deploys, created
//! in moto's Step Functions with its interpreter on; the Lambda states run the real
//! handlers under `cargo lambda watch` (behind a router, as Lambda would answer); the
//! caller plays Fargate ([`Fargate::step`]) by running the real copy-worker for every
//! `RunTask` moto records. Used by the integration tests and the fault report.

use crate::{
    HttpProxy, LambdaWatch, MotoServer, RegistryServer, aws_fixtures, free_port, lambda_router,
    transfer_hub_bin,
};
use hub_core::status::StatusStore as _;
use hub_core::status::dynamodb::DynamoStore;
use std::collections::HashMap;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

pub const REGION: &str = "eu-west-1";
pub const ACCOUNT: &str = "123456789012";

/// The state machine's definition from the template, with test timings.
pub fn definition() -> String {
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
pub fn interpreting_moto(router_port: u16) -> MotoServer {
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
pub fn execute(
    rt: &tokio::runtime::Runtime,
    moto: &MotoServer,
    watch: &LambdaWatch,
    run: (&str, String, &str),
    limit: Duration,
    between: impl FnMut(),
) -> (String, String) {
    let (_, status, output) = execute_arn(rt, moto, watch, run, limit, between);
    (status, output)
}

/// [`execute`], returning the execution's ARN first.
pub fn execute_arn(
    rt: &tokio::runtime::Runtime,
    moto: &MotoServer,
    watch: &LambdaWatch,
    (name, definition, input): (&str, String, &str),
    limit: Duration,
    mut between: impl FnMut(),
) -> (String, String, String) {
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
            return (exec, d.status().as_str().to_string(), out);
        }
        assert!(
            Instant::now() < deadline,
            "execution {name} still running after {limit:?}\n{}",
            watch.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub struct Fargate {
    pub started: HashMap<String, Child>,
    pub max_running: usize,
    pub by_source: HashMap<String, usize>,
}

impl Fargate {
    /// Starts a worker for every task moto has that we have not seen; reaps finished ones.
    pub fn step(
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
pub struct Aws {
    pub moto: MotoServer,
    pub conf: aws_config::SdkConfig,
    pub ecs: aws_sdk_ecs::Client,
    pub worker_env: Vec<(String, String)>,
    pub queue_url: String,
    pub watch: LambdaWatch,
    _router: HttpProxy,
    _ecs_fix: HttpProxy,
}

impl Aws {
    pub fn start(
        rt: &tokio::runtime::Runtime,
        src: &RegistryServer,
        dst: &RegistryServer,
        list: &[String],
        extra_sources: &str,
    ) -> Self {
        Self::start_with(rt, src, dst, list, extra_sources, &[])
    }

    /// [`Aws::start`] with `extra` set (or replaced) in the functions' and the workers'
    /// environment: the template's secrets (`SOURCE_SECRET`), other AWS keys.
    pub fn start_with(
        rt: &tokio::runtime::Runtime,
        src: &RegistryServer,
        dst: &RegistryServer,
        list: &[String],
        extra_sources: &str,
        extra: &[(String, String)],
    ) -> Self {
        let router_port = free_port();
        let moto = interpreting_moto(router_port);
        let conf = rt.block_on(moto.sdk_config(REGION));
        let ecs_fix = crate::ecs_types_proxy(&moto.endpoint);
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
        let set = |env: &mut Vec<(String, String)>| {
            for (k, v) in extra {
                env.retain(|(n, _)| n != k);
                env.push((k.clone(), v.clone()));
            }
        };
        set(&mut fn_env);
        let mut worker_env = moto.env(REGION);
        set(&mut worker_env);
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
            worker_env,
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
    pub fn run(
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
    pub fn task_arns(&self, rt: &tokio::runtime::Runtime) -> Vec<String> {
        rt.block_on(self.ecs.list_tasks().cluster("th").send())
            .unwrap()
            .task_arns()
            .to_vec()
    }

    /// The run record in the status table: (copied, skipped, failed).
    pub fn run_record(&self, rt: &tokio::runtime::Runtime, run_id: &str) -> (u64, u64, u64) {
        let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&self.conf), "status");
        let (run, _items) = rt
            .block_on(store.get_run(Some(run_id)))
            .unwrap()
            .unwrap_or_else(|| panic!("run {run_id} has a record"));
        (run.copied, run.skipped, run.failed)
    }
}

/// The secret canary through the real state machine: one canary value as the source
/// registry's password and the destination's (htpasswd), inside the Secrets Manager JSON
/// secrets the functions and workers read (`SOURCE_SECRET`, `DEST_SECRET`), and as the AWS
/// secret key of every function and worker. One execution copies two images; then the
/// canary (as is, base64, and base64 of `user:canary`) is searched for in the execution's
/// input and output, its full history (every page of GetExecutionHistory), every DynamoDB
/// item, every SQS message (the alarm topic's queue) and the overrides of every ECS task
/// moto recorded. Returns where it looked and the problems (hits, or a rig that did not
/// run: the images must be copied, so the secrets were really used).
pub fn canary_state_machine() -> (crate::faults_aws::Findings, Vec<String>) {
    use crate::faults_aws::{Canary, Findings, dynamodb_dump, sqs_dump};
    let canary = Canary::new(&["puller", "pusher"]);
    let (src, dst) = (
        RegistryServer::start_with_login("puller", &canary.value),
        RegistryServer::start_with_login("pusher", &canary.value),
    );
    let keep = tempfile::tempdir().unwrap();
    let auth = keep.path().join("auth.json");
    crate::write_authfile(&auth, &[(&src.addr, "puller", &canary.value)]);
    for t in ["1", "2"] {
        crate::OciImage::single(&[8 * 1024])
            .push(&format!("{}/team/app:{t}", src.addr), Some(&auth));
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let list = ["team/app:1".to_string(), "team/app:2".to_string()];
    let extra: Vec<(String, String)> = [
        ("SOURCE_SECRET", "th/source".to_string()),
        ("DEST_SECRET", "th/dest".to_string()),
        ("AWS_SECRET_ACCESS_KEY", canary.value.clone()),
        // The task definition's environment (the workers' other half is the overrides).
        ("SOURCE_REGISTRY", src.addr.clone()),
        ("DEST_REGISTRY", format!("{}/mirror", dst.addr)),
    ]
    .map(|(k, v)| (k.to_string(), v))
    .into();
    let aws = Aws::start_with(&rt, &src, &dst, &list, "", &extra);
    rt.block_on(async {
        let sm = aws_sdk_secretsmanager::Client::new(&aws.conf);
        for (name, user) in [("th/source", "puller"), ("th/dest", "pusher")] {
            sm.create_secret()
                .name(name)
                .secret_string(format!(
                    r#"{{"username":"{user}","password":"{}"}}"#,
                    canary.value
                ))
                .send()
                .await
                .unwrap();
        }
    });
    let mut fargate = Fargate {
        started: HashMap::new(),
        max_running: 0,
        by_source: HashMap::new(),
    };
    let (exec, status, output) = execute_arn(
        &rt,
        &aws.moto,
        &aws.watch,
        ("canary", definition(), "{}"),
        Duration::from_secs(600),
        || fargate.step(&rt, &aws.ecs, &aws.worker_env),
    );
    let mut problems = Vec::new();
    let summary: serde_json::Value = serde_json::from_str(&output).unwrap_or_default();
    if status != "SUCCEEDED" || summary["copied"].as_u64() != Some(2) {
        problems.push(format!(
            "rig: execution {status}, copied {:?} of 2: {}",
            summary["copied"],
            &output[..output.len().min(2000)]
        ));
    }
    let mut f = Findings::default();
    let sfn = aws_sdk_sfn::Client::new(&aws.conf);
    let (described, history, pages) = rt.block_on(async {
        let d = sfn
            .describe_execution()
            .execution_arn(&exec)
            .send()
            .await
            .unwrap();
        let mut events = Vec::new();
        let (mut token, mut pages) = (None, 0);
        loop {
            let h = sfn
                .get_execution_history()
                .execution_arn(&exec)
                .max_results(100)
                .set_next_token(token)
                .send()
                .await
                .unwrap();
            pages += 1;
            events.extend(h.events().iter().map(|e| format!("{e:?}")));
            token = h.next_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        (d, events, pages)
    });
    f.look(
        &canary,
        "execution input",
        described.input().unwrap_or_default().as_bytes(),
    );
    f.look(
        &canary,
        "execution output",
        described.output().unwrap_or_default().as_bytes(),
    );
    f.look(
        &canary,
        &format!(
            "execution history ({} events, {pages} pages)",
            history.len()
        ),
        history.join("\n").as_bytes(),
    );
    if history.len() < 10 {
        problems.push(format!("rig: only {} history events", history.len()));
    }
    let (items, dump) = rt.block_on(dynamodb_dump(&aws.conf));
    f.look(&canary, &format!("DynamoDB items ({items})"), &dump);
    let (msgs, dump) = rt.block_on(sqs_dump(&aws.conf));
    f.look(&canary, &format!("SQS messages ({msgs})"), &dump);
    let arns = aws.task_arns(&rt);
    let overrides = if arns.is_empty() {
        String::new()
    } else {
        let tasks = rt
            .block_on(
                aws.ecs
                    .describe_tasks()
                    .cluster("th")
                    .set_tasks(Some(arns.clone()))
                    .send(),
            )
            .unwrap();
        tasks
            .tasks()
            .iter()
            .map(|t| format!("{:?}", t.overrides()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    if arns.len() != 2 {
        problems.push(format!("rig: {} ECS tasks, expected 2", arns.len()));
    }
    f.look(
        &canary,
        &format!("ECS task overrides ({} tasks)", arns.len()),
        overrides.as_bytes(),
    );
    problems.extend(f.hit_places());
    drop(fargate);
    (f, problems)
}
