//! The AWS functions' handlers against moto (SSM, S3, DynamoDB, ECR, ECS, SNS, SQS,
//! Secrets Manager) with IAM enforced and real registries; the copy worker binary end to end.
//! Each function (and the worker) runs as its role: a user whose only policy is that role's
//! statements in the SAM-transformed template.yaml (hub_tests::iam), so a call the template
//! does not allow fails the test. Setup and checks use the rig's admin user.

use hub_core::aws::ecs_runner::{EcsRunner, EcsSettings};
use hub_core::aws::notify::Sns;
use hub_core::aws::offload::{self, S3Blobs};
use hub_core::config::Env;
use hub_core::images::ecr::{self, Ecr, EcrRepos, Registries};
use hub_core::images::list_source::Ssm;
use hub_core::images::registry::HttpRegistry;
use hub_core::images::suite::{self, DiffEdges, ImagesConfig, ListEdges};
use hub_core::images::workflow::{DispatchRequest, ListRequest, Listed, RecordRequest};
use hub_core::status::dynamodb::DynamoStore;
use hub_core::status::{Status, StatusStore};
use hub_tests::iam::{Deployment, IamMoto};
use hub_tests::{OciImage, RegistryServer, aws_fixtures, event, transfer_hub_bin, write_authfile};
use std::collections::HashMap;

const REGION: &str = "eu-west-1";
const ECR_HOST: &str = "123456789012.dkr.ecr.eu-west-1.amazonaws.com";

struct Aws {
    iam: IamMoto,
    /// The admin's: setup and checks.
    conf: aws_config::SdkConfig,
    table: String,
    bucket: String,
    rt: tokio::runtime::Runtime,
}

impl Aws {
    fn start(test: &str) -> Self {
        let iam = IamMoto::start(test);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let conf = rt.block_on(iam.admin_config(REGION));
        let (table, bucket) = (
            "transfer-hub-status".to_string(),
            "transfer-hub-payloads".to_string(),
        );
        rt.block_on(async {
            aws_fixtures::status_table(&conf, &table).await;
            aws_fixtures::bucket(&conf, &bucket).await;
        });
        Self {
            iam,
            conf,
            table,
            bucket,
            rt,
        }
    }

    /// The template deployed with these parameters, with this test's table and bucket.
    fn deployment(&self, params: &[(&str, &str)]) -> Deployment {
        let mut d = Deployment::new(REGION)
            .table("StatusTable", &self.table)
            .bucket("PayloadBucket", &self.bucket);
        for (k, v) in params {
            d = d.param(k, v);
        }
        d
    }

    /// The SDK configuration of `role` in a deployment with these parameters.
    fn role(&self, role: &str, params: &[(&str, &str)]) -> aws_config::SdkConfig {
        self.role_in(role, &self.deployment(params))
    }

    fn role_in(&self, role: &str, d: &Deployment) -> aws_config::SdkConfig {
        let keys = self.iam.role(role, d);
        self.rt.block_on(self.iam.config(&keys, REGION))
    }

    /// The admin's view of the status table.
    fn store(&self) -> DynamoStore {
        self.store_as(&self.conf)
    }
    fn store_as(&self, conf: &aws_config::SdkConfig) -> DynamoStore {
        DynamoStore::new(aws_sdk_dynamodb::Client::new(conf), self.table.clone())
    }
    fn blobs_as(&self, conf: &aws_config::SdkConfig) -> S3Blobs {
        S3Blobs {
            client: aws_sdk_s3::Client::new(conf),
            bucket: self.bucket.clone(),
        }
    }
    fn config(&self, source: &str, dest: &str, extra: &[(&str, &str)]) -> ImagesConfig {
        let mut m: HashMap<String, String> = [
            ("SOURCE_REGISTRY", source),
            ("DEST_REGISTRY", dest),
            ("TABLE_NAME", self.table.as_str()),
            ("PAYLOAD_BUCKET", self.bucket.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in extra {
            m.insert(k.to_string(), v.to_string());
        }
        ImagesConfig::from_env(Env::from_map(m)).unwrap()
    }
}

impl Aws {
    /// list-images, then find-diff on what it listed, for run `run`: each as its role
    /// (`list`, `diff`: the role's SDK configuration and the registry it reads through).
    fn list_and_diff(
        &self,
        run: &str,
        cfg: &ImagesConfig,
        list: (
            &aws_config::SdkConfig,
            &dyn hub_core::images::registry::Registry,
        ),
        diff: (
            &aws_config::SdkConfig,
            &dyn hub_core::images::registry::Registry,
        ),
        prepare: Option<&dyn hub_core::images::sync::Prepare>,
    ) -> hub_core::images::workflow::Diff {
        let ssm = Ssm(aws_sdk_ssm::Client::new(list.0));
        let listed = self
            .rt
            .block_on(suite::list_images(
                list_request(run),
                cfg,
                &ListEdges {
                    params: &ssm,
                    registry: list.1,
                    blobs: &self.blobs_as(list.0),
                    store: &self.store_as(list.0),
                },
            ))
            .unwrap();
        self.rt
            .block_on(suite::find_diff(
                listed,
                cfg,
                &DiffEdges {
                    registry: diff.1,
                    blobs: &self.blobs_as(diff.0),
                    store: &self.store_as(diff.0),
                    prepare,
                },
            ))
            .unwrap()
    }
}

fn http_only() -> Registries {
    Registries {
        ecr: HashMap::new(),
        http: HttpRegistry::new(Default::default(), Vec::<String>::new()),
    }
}

fn list_request(run_id: &str) -> ListRequest {
    let mut v = event("list-images.json");
    v["run_id"] = run_id.into();
    serde_json::from_value(v).unwrap()
}

#[test]
fn list_images_reads_the_ssm_list_reports_bad_lines_and_puts_large_lists_in_s3() {
    let aws = Aws::start("aws-list_images_reads_the_ssm_list");
    let src = RegistryServer::start();
    for t in ["1", "2"] {
        OciImage::single(&[1024]).push(&format!("{}/team/app:{t}", src.addr), None);
    }
    let ssm = aws_sdk_ssm::Client::new(&aws.conf);
    aws.rt
        .block_on(
            ssm.put_parameter()
                .name("/th/list")
                .value("team/app:ALL_TAGS\nBad/Line\nteam/missing:1\n")
                .r#type(aws_sdk_ssm::types::ParameterType::String)
                .send(),
        )
        .unwrap();
    let cfg = aws.config(
        &src.addr,
        &format!("{ECR_HOST}/mirror"),
        &[("SELECT_TYPE", "SELECTED"), ("LIST_PARAMETER", "/th/list")],
    );
    let deployed = [
        ("SourceType", "Registry"),
        ("SourceRegistry", src.addr.as_str()),
        ("SelectType", "SELECTED"),
        ("ListParameterName", "/th/list"),
        ("DestPrefix", "mirror"),
    ];
    let list_role = aws.role("ListImagesRole", &deployed);
    let (store, blobs, reg, params) = (
        aws.store_as(&list_role),
        aws.blobs_as(&list_role),
        http_only(),
        Ssm(aws_sdk_ssm::Client::new(&list_role)),
    );
    let edges = ListEdges {
        params: &params,
        registry: &reg,
        blobs: &blobs,
        store: &store,
    };

    let listed = aws
        .rt
        .block_on(suite::list_images(list_request("run-a"), &cfg, &edges))
        .unwrap();
    assert_eq!(listed.failed, 1);
    let items = listed
        .images
        .items
        .clone()
        .expect("a small list stays inline");
    let dests: Vec<&str> = items.iter().map(|j| j.dest.as_str()).collect();
    assert_eq!(
        dests,
        [
            format!("{ECR_HOST}/mirror/team/app:1"),
            format!("{ECR_HOST}/mirror/team/app:2"),
            format!("{ECR_HOST}/mirror/team/missing:1")
        ]
    );
    let (run, recs) = aws
        .rt
        .block_on(aws.store().get_run(Some("run-a")))
        .unwrap()
        .unwrap();
    assert_eq!(run.source, src.addr);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].source, "line 2: Bad/Line");
    assert_eq!(recs[0].error.as_ref().unwrap().class.as_str(), "BadInput");

    // A big manual list goes to S3 and comes back whole.
    let mut req = list_request("run-big");
    req.input.images = Some((0..3000).map(|i| format!("team/app:v{i}")).collect());
    let big = aws
        .rt
        .block_on(suite::list_images(req, &cfg, &edges))
        .unwrap();
    assert_eq!(big.images.count, 3000);
    assert!(big.images.items.is_none());
    let p = big.images.s3.clone().expect("an S3 pointer");
    assert_eq!(p.bucket, aws.bucket);
    assert!(
        serde_json::to_vec(&big).unwrap().len() < 1024,
        "the payload is a pointer"
    );
    // find-diff reads it back.
    let diff_blobs = aws.blobs_as(&aws.role("FindDiffRole", &deployed));
    let back = aws
        .rt
        .block_on(offload::load(&diff_blobs, big.images))
        .unwrap();
    assert_eq!(back.len(), 3000);
    assert_eq!(back[2999].source, format!("{}/team/app:v2999", src.addr));
}

#[test]
fn find_diff_on_a_day_without_change_starts_nothing_and_a_changed_tag_is_the_only_copy() {
    let aws = Aws::start("aws-find_diff_on_a_day_without_change");
    let (src, dst) = (RegistryServer::start(), RegistryServer::start());
    for t in ["1", "2"] {
        let img = OciImage::single(&[1024]);
        img.push(&format!("{}/app:{t}", src.addr), None);
        img.push(&format!("{}/app:{t}", dst.addr), None);
    }
    let cfg = aws.config(&src.addr, &dst.addr, &[("SELECT_TYPE", "ALL")]);
    let deployed = [
        ("SourceType", "Registry"),
        ("SourceRegistry", src.addr.as_str()),
        ("SelectType", "ALL"),
    ];
    let (list_role, diff_role) = (
        aws.role("ListImagesRole", &deployed),
        aws.role("FindDiffRole", &deployed),
    );
    let reg = http_only();
    let (list_store, list_blobs) = (aws.store_as(&list_role), aws.blobs_as(&list_role));
    let (diff_store, diff_blobs) = (aws.store_as(&diff_role), aws.blobs_as(&diff_role));
    let store = aws.store();
    let ssm = Ssm(aws_sdk_ssm::Client::new(&list_role));
    let list = ListEdges {
        params: &ssm,
        registry: &reg,
        blobs: &list_blobs,
        store: &list_store,
    };
    let diff = DiffEdges {
        registry: &reg,
        blobs: &diff_blobs,
        store: &diff_store,
        prepare: None,
    };

    let listed = aws
        .rt
        .block_on(suite::list_images(list_request("day-1"), &cfg, &list))
        .unwrap();
    assert_eq!(listed.images.count, 2);
    let d = aws
        .rt
        .block_on(suite::find_diff(listed, &cfg, &diff))
        .unwrap();
    assert_eq!((d.copies.count, d.skipped, d.failed), (0, 2, 0));
    assert_eq!(
        d.copies.items.as_deref(),
        Some(&[][..]),
        "the Map gets an empty list: no task starts"
    );
    let (_, recs) = aws
        .rt
        .block_on(store.get_run(Some("day-1")))
        .unwrap()
        .unwrap();
    assert!(
        recs.iter()
            .all(|r| r.status == Status::Skipped && r.source_digest == r.dest_digest),
        "{recs:?}"
    );

    let changed = OciImage::single(&[2048]);
    changed.push(&format!("{}/app:2", src.addr), None);
    let listed = aws
        .rt
        .block_on(suite::list_images(list_request("day-2"), &cfg, &list))
        .unwrap();
    let d = aws
        .rt
        .block_on(suite::find_diff(listed, &cfg, &diff))
        .unwrap();
    let copies = d.copies.items.unwrap();
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].source, format!("{}/app:2", src.addr));
    assert_eq!(copies[0].source_digest, changed.digest);

    // The sample event parses into find-diff's input.
    let sample: Listed = serde_json::from_value(event("find-diff.json")).unwrap();
    assert_eq!(sample.images.count, 2);
}

#[test]
fn find_diff_creates_missing_ecr_repositories_before_any_copy() {
    let aws = Aws::start("aws-find_diff_creates_missing_ecr_repositories");
    let src = RegistryServer::start();
    OciImage::single(&[1024]).push(&format!("{}/team/app:1", src.addr), None);
    let cfg = aws.config(
        &src.addr,
        &format!("{ECR_HOST}/mirror"),
        &[("SELECT_TYPE", "ALL"), ("TAG_MUTABILITY", "IMMUTABLE")],
    );
    let deployed = [
        ("SourceType", "Registry"),
        ("SourceRegistry", src.addr.as_str()),
        ("SelectType", "ALL"),
        ("DestPrefix", "mirror"),
        ("TagMutability", "IMMUTABLE"),
    ];
    let (list_role, diff_role) = (
        aws.role("ListImagesRole", &deployed),
        aws.role("FindDiffRole", &deployed),
    );
    let host = ecr::parse_ecr_host(ECR_HOST).unwrap();
    let registries = |conf: &aws_config::SdkConfig| Registries {
        ecr: [(
            ECR_HOST.to_string(),
            Ecr::from_client(aws_sdk_ecr::Client::new(conf), host.clone()),
        )]
        .into(),
        http: HttpRegistry::new(Default::default(), Vec::<String>::new()),
    };
    let prepare = EcrRepos {
        ecr: Ecr::from_client(aws_sdk_ecr::Client::new(&diff_role), host.clone()),
        settings: cfg.repo_settings.clone(),
    };
    let ecr_client = aws_sdk_ecr::Client::new(&aws.conf);
    let d = aws.list_and_diff(
        "ecr-1",
        &cfg,
        (&list_role, &registries(&list_role)),
        (&diff_role, &registries(&diff_role)),
        Some(&prepare),
    );
    assert_eq!(d.copies.count, 1, "missing in ECR → copy");
    let repos = aws
        .rt
        .block_on(ecr_client.describe_repositories().send())
        .unwrap();
    let r = repos
        .repositories()
        .iter()
        .find(|r| r.repository_name() == Some("mirror/team/app"))
        .expect("repository created");
    assert_eq!(
        r.image_scanning_configuration().map(|c| c.scan_on_push()),
        Some(true)
    );
    assert_eq!(
        r.image_tag_mutability(),
        Some(&aws_sdk_ecr::types::ImageTagMutability::Immutable),
        "TagMutability=IMMUTABLE"
    );
}

#[test]
fn find_diff_with_no_overwrite_records_a_moved_destination_tag_as_a_conflict_and_copies_the_rest() {
    let aws = Aws::start("aws-find_diff_with_no_overwrite");
    let (src, dst) = (RegistryServer::start(), RegistryServer::start());
    let ours = OciImage::single(&[1024]);
    ours.push(&format!("{}/app:1", src.addr), None);
    ours.push(&format!("{}/app:2", src.addr), None);
    let theirs = OciImage::single(&[2048]);
    theirs.push(&format!("{}/app:1", dst.addr), None);
    let cfg = aws.config(
        &src.addr,
        &dst.addr,
        &[("SELECT_TYPE", "ALL"), ("NO_OVERWRITE", "true")],
    );
    let deployed = [
        ("SourceType", "Registry"),
        ("SourceRegistry", src.addr.as_str()),
        ("SelectType", "ALL"),
        ("NoOverwrite", "true"),
    ];
    let (list_role, diff_role, record_role) = (
        aws.role("ListImagesRole", &deployed),
        aws.role("FindDiffRole", &deployed),
        aws.role("RecordStatusRole", &deployed),
    );
    let reg = http_only();
    let d = aws.list_and_diff("keep-1", &cfg, (&list_role, &reg), (&diff_role, &reg), None);
    let copies = d.copies.items.clone().unwrap();
    assert_eq!(
        copies.iter().map(|c| c.source.as_str()).collect::<Vec<_>>(),
        [format!("{}/app:2", src.addr)],
        "only the missing tag is copied; the moved one starts no task"
    );
    assert_eq!(d.failed, 0);
    let (_, recs) = aws
        .rt
        .block_on(aws.store().get_run(Some("keep-1")))
        .unwrap()
        .unwrap();
    let c = recs
        .iter()
        .find(|r| r.dest.ends_with("app:1"))
        .expect("a record for app:1");
    assert_eq!(c.status, Status::Conflict, "{c:?}");
    let why = &c.error.as_ref().unwrap().message;
    assert!(
        why.contains(&ours.digest) && why.contains(&theirs.digest),
        "names both digests: {why}"
    );
    // The copy of app:2 is refused as an immutable ECR repository refuses a moved tag: the
    // worker's `Conflict` is recorded as a conflict too, and the run's close counts both as
    // conflicts, not failures.
    let sns = Sns {
        client: aws_sdk_sns::Client::new(&record_role),
        topic_arn: "arn:aws:sns:eu-west-1:123456789012:unused".into(),
    };
    let refused: RecordRequest = serde_json::from_value(serde_json::json!({
        "kind": "item",
        "run_id": "keep-1",
        "task": copies[0],
        "error": {"Error": "Conflict", "Cause": "tag invalid: The image tag '2' already exists in the 'app' repository and cannot be overwritten because the repository is immutable."},
    }))
    .unwrap();
    let stored = aws
        .rt
        .block_on(suite::record_status(
            refused,
            &aws.store_as(&record_role),
            &sns,
        ))
        .unwrap();
    assert_eq!(stored["status"], "conflict", "{stored}");
    aws.rt
        .block_on(suite::record_status(
            RecordRequest::Run {
                run_id: "keep-1".into(),
                input: Default::default(),
            },
            &aws.store_as(&record_role),
            &sns,
        ))
        .unwrap();
    let (run, _) = aws
        .rt
        .block_on(aws.store().get_run(Some("keep-1")))
        .unwrap()
        .unwrap();
    assert_eq!((run.conflicts, run.failed), (2, 0), "{run:?}");
    assert_eq!(
        dst.digest("app", "1").as_deref(),
        Some(theirs.digest.as_str())
    );
}

#[test]
fn dispatch_starts_one_fargate_task_with_the_image_and_no_secret_in_the_overrides() {
    let aws = Aws::start("aws-dispatch_starts_one_fargate_task");
    let proxy = hub_tests::ecs_types_proxy(&aws.iam.moto.endpoint);
    let ecs_at_proxy = |conf: &aws_config::SdkConfig| {
        aws_sdk_ecs::Client::from_conf(
            aws_sdk_ecs::config::Builder::from(conf)
                .endpoint_url(&proxy.endpoint)
                .build(),
        )
    };
    let ecs = ecs_at_proxy(&aws.conf);
    aws.rt.block_on(aws_fixtures::copy_cluster(&aws.conf));
    let (subnet, sg) = aws.iam.network(REGION);
    let arn = |what: &str| format!("arn:aws:{what}");
    let deployed = Deployment::new(REGION)
        .resource(
            "CopyTaskDefinition",
            &arn("ecs:eu-west-1:123456789012:task-definition/th-copy:1"),
            &arn("ecs:eu-west-1:123456789012:task-definition/th-copy:1"),
        )
        .resource(
            "CopyCluster",
            "th",
            &arn("ecs:eu-west-1:123456789012:cluster/th"),
        );
    let dispatch_role = aws.role_in("DispatchFargateRole", &deployed);
    let runner = EcsRunner {
        client: ecs_at_proxy(&dispatch_role),
        settings: EcsSettings {
            cluster: "th".into(),
            task_definition: "th-copy".into(),
            container: "copy".into(),
            subnets: vec![subnet],
            security_groups: vec![sg],
            assign_public_ip: false,
        },
    };
    let req: DispatchRequest = serde_json::from_value(event("dispatch-fargate.json")).unwrap();
    let out = aws
        .rt
        .block_on(suite::dispatch_fargate(req.clone(), &runner))
        .unwrap();
    let arn = out["task_arn"].as_str().unwrap().to_string();
    let tasks = aws
        .rt
        .block_on(ecs.describe_tasks().cluster("th").tasks(&arn).send())
        .unwrap();
    let task = &tasks.tasks()[0];
    assert_eq!(
        task.launch_type(),
        Some(&aws_sdk_ecs::types::LaunchType::Fargate)
    );
    let env: HashMap<String, String> = aws_fixtures::task_environment(task).into_iter().collect();
    assert_eq!(env["SOURCE"], req.task.source);
    assert_eq!(env["DEST"], req.task.dest);
    assert_eq!(env["SOURCE_DIGEST"], req.task.source_digest);
    assert_eq!(env["TASK_TOKEN"], req.task_token);
    let keys: Vec<&str> = env.keys().map(String::as_str).collect();
    assert!(
        keys.iter()
            .all(|k| ["SOURCE", "DEST", "SOURCE_DIGEST", "TASK_TOKEN", "RUN_ID"].contains(k)),
        "only the image and the token travel: {keys:?}"
    );
    assert_eq!(
        aws.rt
            .block_on(ecs.list_tasks().cluster("th").send())
            .unwrap()
            .task_arns()
            .len(),
        1
    );

    // A malformed task never reaches ECS.
    let mut bad = req;
    bad.task.source_digest = "sha256:short".into();
    let e = aws
        .rt
        .block_on(suite::dispatch_fargate(bad, &runner))
        .unwrap_err();
    assert_eq!(e.class.as_str(), "BadInput");
    assert!(e.message.contains("sha256:short"));
    assert_eq!(
        aws.rt
            .block_on(ecs.list_tasks().cluster("th").send())
            .unwrap()
            .task_arns()
            .len(),
        1
    );
}

/// A copy that stopped sending heartbeats may still be running: the state machine asks
/// dispatch-fargate to stop that image's task before the retry starts another. Only that
/// image's task stops; another image's copy goes on.
#[test]
fn a_timed_out_copy_has_its_task_stopped_and_no_other() {
    let aws = Aws::start("aws-a_timed_out_copy_has_its_task_stopped");
    let proxy = hub_tests::ecs_types_proxy(&aws.iam.moto.endpoint);
    let ecs_at_proxy = |conf: &aws_config::SdkConfig| {
        aws_sdk_ecs::Client::from_conf(
            aws_sdk_ecs::config::Builder::from(conf)
                .endpoint_url(&proxy.endpoint)
                .build(),
        )
    };
    aws.rt.block_on(aws_fixtures::copy_cluster(&aws.conf));
    let (subnet, sg) = aws.iam.network(REGION);
    let arn = |what: &str| format!("arn:aws:ecs:eu-west-1:123456789012:{what}");
    let deployed = Deployment::new(REGION)
        .resource(
            "CopyTaskDefinition",
            &arn("task-definition/th-copy:1"),
            &arn("task-definition/th-copy:1"),
        )
        .resource("CopyCluster", "th", &arn("cluster/th"));
    let runner = EcsRunner {
        client: ecs_at_proxy(&aws.role_in("DispatchFargateRole", &deployed)),
        settings: EcsSettings {
            cluster: "th".into(),
            task_definition: "th-copy".into(),
            container: "copy".into(),
            subnets: vec![subnet],
            security_groups: vec![sg],
            assign_public_ip: false,
        },
    };
    let start: DispatchRequest = serde_json::from_value(event("dispatch-fargate.json")).unwrap();
    let mut other = start.clone();
    other.task.dest = format!("{ECR_HOST}/mirror/team/other:1");
    let (timed_out, going_on) = aws.rt.block_on(async {
        let a = suite::dispatch_fargate(start.clone(), &runner)
            .await
            .unwrap();
        let b = suite::dispatch_fargate(other, &runner).await.unwrap();
        (
            a["task_arn"].as_str().unwrap().to_string(),
            b["task_arn"].as_str().unwrap().to_string(),
        )
    });
    // The sample stop input, as the state machine sends it.
    let stop = match serde_json::from_value(event("dispatch-fargate-stop.json")).unwrap() {
        hub_core::images::workflow::DispatchInput::Stop(s) => s,
        other => panic!("the stop sample parsed as {other:?}"),
    };
    assert!(matches!(
        serde_json::from_value(event("dispatch-fargate.json")).unwrap(),
        hub_core::images::workflow::DispatchInput::Start(_)
    ));
    let out = aws
        .rt
        .block_on(suite::stop_copy_tasks(stop.clone(), &runner))
        .unwrap();
    assert_eq!(out["stopped"], 1, "{out}");
    let admin = ecs_at_proxy(&aws.conf);
    let status = |task: &str| {
        let d = aws
            .rt
            .block_on(admin.describe_tasks().cluster("th").tasks(task).send())
            .unwrap();
        d.tasks()[0]
            .desired_status()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(status(&timed_out), "STOPPED");
    assert_eq!(status(&going_on), "RUNNING", "another image's copy goes on");
    let again = aws
        .rt
        .block_on(suite::stop_copy_tasks(stop, &runner))
        .unwrap();
    assert_eq!(again["stopped"], 0, "nothing left to stop: {again}");
}

#[test]
fn record_status_keeps_the_newest_result_and_sends_one_message_per_failed_run() {
    let aws = Aws::start("aws-record_status_keeps_the_newest_result");
    let (topic, queue_url) = aws
        .rt
        .block_on(aws_fixtures::topic_with_queue(&aws.conf, "th-alarms"));
    let deployed = aws.deployment(&[]).resource("AlarmTopic", &topic, &topic);
    let record_role = aws.role_in("RecordStatusRole", &deployed);
    let store = aws.store_as(&record_role);
    let notifier = Sns {
        client: aws_sdk_sns::Client::new(&record_role),
        topic_arn: topic,
    };
    let run_id = "sample-run-0001";
    aws.rt
        .block_on(aws.store().put_run(&hub_core::status::RunRecord {
            run_id: run_id.into(),
            source: "registry.example.com:5000".into(),
            dest: ECR_HOST.into(),
            dry_run: false,
            started_at: chrono::Utc::now(),
            ended_at: None,
            copied: 0,
            skipped: 0,
            failed: 0,
            bytes: 0,
            ..Default::default()
        }))
        .unwrap();
    let rec = |name: &str| -> RecordRequest { serde_json::from_value(event(name)).unwrap() };
    let copied = aws
        .rt
        .block_on(suite::record_status(
            rec("record-status-copied.json"),
            &store,
            &notifier,
        ))
        .unwrap();
    assert_eq!(copied["applied"], true);
    // The failure of an earlier attempt arrives late: it must not overwrite the success.
    let late = aws
        .rt
        .block_on(suite::record_status(
            rec("record-status-failed.json"),
            &store,
            &notifier,
        ))
        .unwrap();
    assert_eq!(late["applied"], false);
    // The same result delivered twice is applied once.
    assert_eq!(
        aws.rt
            .block_on(suite::record_status(
                rec("record-status-copied.json"),
                &store,
                &notifier
            ))
            .unwrap()["applied"],
        false
    );

    // Another image fails for good.
    let mut other = event("record-status-failed.json");
    other["task"]["source"] = "registry.example.com:5000/team/other:9".into();
    other["task"]["dest"] = format!("{ECR_HOST}/mirror/team/other:9").into();
    other["error"] = serde_json::json!({"Error": "AuthDenied", "Cause": "401 Unauthorized"});
    aws.rt
        .block_on(suite::record_status(
            serde_json::from_value(other).unwrap(),
            &store,
            &notifier,
        ))
        .unwrap();

    hub_core::aws::metrics::capture();
    let first = aws
        .rt
        .block_on(suite::record_status(
            rec("record-status-run.json"),
            &store,
            &notifier,
        ))
        .unwrap();
    assert_eq!(
        (
            first["copied"].as_u64(),
            first["failed"].as_u64(),
            first["notified"].as_bool()
        ),
        (Some(1), Some(1), Some(true))
    );
    let again = aws
        .rt
        .block_on(suite::record_status(
            rec("record-status-run.json"),
            &store,
            &notifier,
        ))
        .unwrap();
    assert_eq!(
        again["notified"], false,
        "a repeated run record sends nothing"
    );
    // The run's metrics: one embedded-metric-format line, as the spec says, written once
    // (the repeated step counts nothing twice on the dashboard).
    let lines = hub_core::aws::metrics::captured();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let declared = hub_core::aws::metrics::check_line(&lines[0]).unwrap();
    let names: Vec<&str> = declared.iter().map(|(_, n, _)| n.as_str()).collect();
    assert_eq!(names, ["ImagesCopied", "ImagesFailed", "ImagesSkipped"]);
    assert!(
        declared
            .iter()
            .all(|(ns, _, dims)| ns == "TransferHub" && dims == &["Stack"])
    );
    let line: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(
        (line["ImagesCopied"].as_u64(), line["ImagesFailed"].as_u64()),
        (Some(1), Some(1))
    );
    let (_, items) = aws
        .rt
        .block_on(aws.store().get_run(Some(run_id)))
        .unwrap()
        .unwrap();
    let statuses: Vec<(&str, Status)> = items
        .iter()
        .map(|i| (i.source.as_str(), i.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("registry.example.com:5000/team/app:1.4.2", Status::Copied),
            ("registry.example.com:5000/team/other:9", Status::Failed)
        ]
    );

    let msgs = aws
        .rt
        .block_on(aws_fixtures::messages(&aws.conf, &queue_url));
    assert_eq!(msgs.len(), 1, "one message per failed run");
    let body = &msgs[0];
    assert!(
        body.contains("team/other:9") && body.contains("AuthDenied"),
        "{body}"
    );
    assert!(
        !body.contains("team/app:1.4.2 ->"),
        "only failed images are listed: {body}"
    );
}

/// A destination registry that needs a login (DestCredentialSecret): list-images and
/// find-diff read the secret with their roles and find-diff sees the destination's digest
/// through it (an unchanged image is skipped, not copied again).
#[test]
fn list_images_and_find_diff_log_in_to_the_destination_with_its_secret() {
    let aws = Aws::start("aws-list_images_and_find_diff_log_in_to_the_destination");
    let canary = format!("dest-canary-{}", fastrand::u64(..));
    let (src, dst) = (
        RegistryServer::start(),
        RegistryServer::start_with_login("pusher", &canary),
    );
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth.json");
    write_authfile(&auth, &[(&dst.addr, "pusher", &canary)]);
    let img = OciImage::single(&[1024]);
    img.push(&format!("{}/app:1", src.addr), None);
    img.push(&format!("{}/app:1", dst.addr), Some(&auth));
    aws.rt
        .block_on(
            aws_sdk_secretsmanager::Client::new(&aws.conf)
                .create_secret()
                .name("th/dest")
                .secret_string(format!(r#"{{"username":"pusher","password":"{canary}"}}"#))
                .send(),
        )
        .unwrap();
    let cfg = aws.config(&src.addr, &dst.addr, &[("SELECT_TYPE", "ALL")]);
    let deployed = [
        ("SourceType", "Registry"),
        ("SourceRegistry", src.addr.as_str()),
        ("SelectType", "ALL"),
        ("DestCredentialSecret", "th/dest"),
    ];
    let hosts = [
        (src.addr.clone(), None),
        (dst.addr.clone(), Some("th/dest".to_string())),
    ];
    let registries = |conf: &aws_config::SdkConfig| {
        let secrets = aws_sdk_secretsmanager::Client::new(conf);
        aws.rt
            .block_on(suite::registries_for(&hosts, Some(&secrets), Vec::new()))
            .unwrap()
    };
    let (list_role, diff_role) = (
        aws.role("ListImagesRole", &deployed),
        aws.role("FindDiffRole", &deployed),
    );
    let ssm = Ssm(aws_sdk_ssm::Client::new(&list_role));
    let listed = aws
        .rt
        .block_on(suite::list_images(
            list_request("dest-login"),
            &cfg,
            &ListEdges {
                params: &ssm,
                registry: &registries(&list_role),
                blobs: &aws.blobs_as(&list_role),
                store: &aws.store_as(&list_role),
            },
        ))
        .unwrap();
    let d = aws
        .rt
        .block_on(suite::find_diff(
            listed,
            &cfg,
            &DiffEdges {
                registry: &registries(&diff_role),
                blobs: &aws.blobs_as(&diff_role),
                store: &aws.store_as(&diff_role),
                prepare: None,
            },
        ))
        .unwrap();
    assert_eq!((d.copies.count, d.skipped, d.failed), (0, 1, 0), "{d:?}");
    assert!(!format!("{d:?}").contains(&canary));
}

/// SNS that is down: every publish fails.
struct SnsDown;

#[async_trait::async_trait]
impl hub_core::aws::notify::Notifier for SnsDown {
    async fn publish(&self, _: &str, _: &str) -> Result<(), hub_core::retry::ItemError> {
        Err(hub_core::retry::ItemError::new(
            hub_core::retry::ErrorClass::Retryable,
            "SNS Publish: service unavailable",
        ))
    }
}

#[test]
fn a_failure_mail_that_could_not_be_sent_is_sent_by_the_next_attempt() {
    let aws = Aws::start("aws-a_failure_mail_that_could_not_be_sent");
    let (topic, queue_url) = aws
        .rt
        .block_on(aws_fixtures::topic_with_queue(&aws.conf, "th-alarms"));
    let deployed = aws.deployment(&[]).resource("AlarmTopic", &topic, &topic);
    let record_role = aws.role_in("RecordStatusRole", &deployed);
    let store = aws.store_as(&record_role);
    let run_id = "sample-run-0001";
    aws.rt
        .block_on(aws.store().put_run(&hub_core::status::RunRecord {
            run_id: run_id.into(),
            source: "registry.example.com:5000".into(),
            dest: ECR_HOST.into(),
            dry_run: false,
            started_at: chrono::Utc::now(),
            ended_at: None,
            copied: 0,
            skipped: 0,
            failed: 0,
            bytes: 0,
            ..Default::default()
        }))
        .unwrap();
    let failed: RecordRequest = serde_json::from_value(event("record-status-failed.json")).unwrap();
    aws.rt
        .block_on(suite::record_status(failed, &store, &SnsDown))
        .unwrap();
    let run: RecordRequest = serde_json::from_value(event("record-status-run.json")).unwrap();
    // The publish fails: the step fails (Step Functions retries it) and nothing is marked.
    let e = aws
        .rt
        .block_on(suite::record_status(run.clone(), &store, &SnsDown))
        .unwrap_err();
    assert!(e.message.contains("SNS"), "{e}");
    // The retry publishes.
    let sns = Sns {
        client: aws_sdk_sns::Client::new(&record_role),
        topic_arn: topic,
    };
    let retry = aws
        .rt
        .block_on(suite::record_status(run.clone(), &store, &sns))
        .unwrap();
    assert_eq!(retry["notified"], true, "{retry}");
    let again = aws
        .rt
        .block_on(suite::record_status(run, &store, &sns))
        .unwrap();
    assert_eq!(again["notified"], false, "sent once: {again}");
    let msgs = aws
        .rt
        .block_on(aws_fixtures::messages(&aws.conf, &queue_url));
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert!(msgs[0].contains("failed"), "{}", msgs[0]);
}

#[test]
fn the_copy_worker_copies_into_ecr_with_a_registry_secret_and_reports_success_without_leaking_it() {
    let aws = Aws::start("aws-the_copy_worker_copies_into_ecr");
    let canary = format!("worker-canary-{}", fastrand::u64(..));
    let (src, backend) = (
        RegistryServer::start_with_login("puller", &canary),
        RegistryServer::start(),
    );
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth.json");
    write_authfile(&auth, &[(&src.addr, "puller", &canary)]);
    let img = OciImage::multi_arch(&[4096]);
    img.push(&format!("{}/team/app:7", src.addr), Some(&auth));
    let sm = aws_sdk_secretsmanager::Client::new(&aws.conf);
    aws.rt
        .block_on(
            sm.create_secret()
                .name("th/source")
                .secret_string(format!(r#"{{"username":"puller","password":"{canary}"}}"#))
                .send(),
        )
        .unwrap();

    let task_role = aws.iam.role(
        "CopyTaskRole",
        &aws.deployment(&[
            ("SourceType", "Registry"),
            ("SourceRegistry", src.addr.as_str()),
            ("SourceCredentialSecret", "th/source"),
            ("DestPrefix", "mirror"),
        ]),
    );
    let mut env = aws.iam.env(&task_role, REGION);
    env.extend(
        [
            ("TASK_TOKEN", "token-123"),
            ("RUN_ID", "run-w"),
            ("SOURCE", &format!("{}/team/app:7", src.addr)),
            ("DEST", &format!("{ECR_HOST}/mirror/team/app:7")),
            ("SOURCE_DIGEST", img.digest.as_str()),
            ("SOURCE_SECRET", "th/source"),
            ("SOURCE_REGISTRY", src.addr.as_str()),
            ("DEST_REGISTRY", &format!("{ECR_HOST}/mirror")),
            ("HEARTBEAT_SECS", "1"),
            ("TRANSFER_HUB_ECR_REGISTRY_ADDRESS", backend.addr.as_str()),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let worker = transfer_hub_bin().with_file_name("copy-worker");
    let out = std::process::Command::new(&worker)
        .envs(env.clone())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("reported success"), "{stderr}");
    assert!(!stderr.contains(&canary) && !String::from_utf8_lossy(&out.stdout).contains(&canary));
    assert_eq!(
        backend.digest("mirror/team/app", "7").as_deref(),
        Some(img.digest.as_str())
    );
    for p in &img.platforms {
        assert!(backend.digest("mirror/team/app", p).is_some());
    }

    // The planned digest is what is copied: one the source does not have is a failure, reported.
    let mut env2 = env;
    for (k, v) in env2.iter_mut() {
        if k == "DEST" {
            *v = format!("{ECR_HOST}/mirror/team/other:7");
        }
        if k == "SOURCE_DIGEST" {
            *v = format!("sha256:{}", "0".repeat(64));
        }
    }
    let out = std::process::Command::new(&worker)
        .envs(env2)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the failure was reported: {stderr}");
    assert!(
        stderr.contains("reported failure") && stderr.contains("NotFound"),
        "{stderr}"
    );
    assert!(backend.tags("mirror/team/other").is_empty());
}

#[test]
fn find_diff_with_include_untagged_also_moves_the_ecr_images_no_tag_points_at() {
    let aws = Aws::start("aws-find_diff_with_include_untagged");
    let dst = RegistryServer::start();
    let ecr_client = aws_sdk_ecr::Client::new(&aws.conf);
    let manifest = |n: u8| {
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 10 + n as u64,
                       "digest": format!("sha256:{}", hex::encode([n; 32]))},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 100 + n as u64,
                        "digest": format!("sha256:{}", hex::encode([n + 100; 32]))}]
        })
        .to_string()
    };
    let untagged_digest = aws.rt.block_on(async {
        ecr_client
            .create_repository()
            .repository_name("team/app")
            .send()
            .await
            .unwrap();
        ecr_client
            .put_image()
            .repository_name("team/app")
            .image_manifest(manifest(1))
            .image_tag("1")
            .send()
            .await
            .unwrap();
        let out = ecr_client
            .put_image()
            .repository_name("team/app")
            .image_manifest(manifest(2))
            .send()
            .await
            .unwrap();
        out.image()
            .unwrap()
            .image_id()
            .unwrap()
            .image_digest()
            .unwrap()
            .to_string()
    });
    let host = ecr::parse_ecr_host(ECR_HOST).unwrap();
    let registries = |conf: &aws_config::SdkConfig| Registries {
        ecr: [(
            ECR_HOST.to_string(),
            Ecr::from_client(aws_sdk_ecr::Client::new(conf), host.clone()),
        )]
        .into(),
        http: HttpRegistry::new(Default::default(), Vec::<String>::new()),
    };
    let diff = |untagged: &str, run: &str| {
        let cfg = aws.config(
            ECR_HOST,
            &dst.addr,
            &[("SELECT_TYPE", "ALL"), ("INCLUDE_UNTAGGED", untagged)],
        );
        let deployed = [
            ("SourceType", "ECR"),
            ("SourceRegion", REGION),
            ("SourceAccountId", "123456789012"),
            ("SelectType", "ALL"),
            ("IncludeUntagged", untagged),
        ];
        let (list_role, diff_role) = (
            aws.role("ListImagesRole", &deployed),
            aws.role("FindDiffRole", &deployed),
        );
        let ssm = Ssm(aws_sdk_ssm::Client::new(&list_role));
        let listed = aws
            .rt
            .block_on(suite::list_images(
                list_request(run),
                &cfg,
                &ListEdges {
                    params: &ssm,
                    registry: &registries(&list_role),
                    blobs: &aws.blobs_as(&list_role),
                    store: &aws.store_as(&list_role),
                },
            ))
            .unwrap();
        aws.rt
            .block_on(suite::find_diff(
                listed,
                &cfg,
                &DiffEdges {
                    registry: &registries(&diff_role),
                    blobs: &aws.blobs_as(&diff_role),
                    store: &aws.store_as(&diff_role),
                    prepare: None,
                },
            ))
            .unwrap()
    };
    let tagged_only = diff("false", "untagged-off");
    assert_eq!(tagged_only.copies.count, 1, "{tagged_only:?}");
    let with_untagged = diff("true", "untagged-on");
    assert_eq!(with_untagged.copies.count, 2, "{with_untagged:?}");
    let items = with_untagged.copies.items.unwrap();
    let by_digest = items
        .iter()
        .find(|c| c.source_digest == untagged_digest)
        .expect("the untagged image is planned");
    assert_eq!(
        by_digest.source,
        format!("{ECR_HOST}/team/app@{untagged_digest}")
    );
    assert_eq!(
        by_digest.dest,
        format!("{}/team/app@{untagged_digest}", dst.addr),
        "lands by digest, without a tag"
    );
}

/// ECS stops a task with SIGTERM (then SIGKILL after the container's StopTimeout, 30 s):
/// the worker kills its skopeo, removes the temp auth file and reports the copy failed
/// with a retryable class on the task token, so the state machine retries at once instead
/// of waiting out the heartbeat timeout, and no orphan skopeo finishes the copy unseen.
#[test]
fn the_copy_worker_on_sigterm_kills_skopeo_removes_its_auth_file_and_reports_a_retryable_failure() {
    use super::interrupt::{auth_dirs, slow_blobs};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    let aws = Aws::start("aws-the_copy_worker_on_sigterm");
    let canary = format!("sigterm-worker-canary-{}", fastrand::u64(..));
    let (src, backend) = (
        RegistryServer::start_with_login("puller", &canary),
        RegistryServer::start(),
    );
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth.json");
    write_authfile(&auth, &[(&src.addr, "puller", &canary)]);
    let img = OciImage::single(&[256 * 1024]);
    img.push(&format!("{}/team/app:7", src.addr), Some(&auth));
    // Blob downloads are held, so the copy is in flight when ECS stops the task.
    let slow = slow_blobs(&src.addr, Duration::from_secs(20));
    let source = slow.endpoint.trim_start_matches("http://").to_string();
    let sm = aws_sdk_secretsmanager::Client::new(&aws.conf);
    aws.rt
        .block_on(
            sm.create_secret()
                .name("th/source")
                .secret_string(format!(r#"{{"username":"puller","password":"{canary}"}}"#))
                .send(),
        )
        .unwrap();
    // Step Functions calls go through a proxy that notes which API each one was.
    let calls = Arc::new(Mutex::new(Vec::<(String, u16)>::new()));
    let seen = calls.clone();
    let moto = aws
        .iam
        .moto
        .endpoint
        .trim_start_matches("http://")
        .to_string();
    let sfn = hub_tests::HttpProxy::start(
        Arc::new(move |head: &str| (moto.clone(), head.to_string())),
        Arc::new(move |head: &str, status, body| {
            if let Some(t) = hub_tests::s3_rig::header(head, "x-amz-target") {
                seen.lock().unwrap().push((t, status));
            }
            (status, Vec::new(), body)
        }),
    );
    let task_role = aws.iam.role(
        "CopyTaskRole",
        &aws.deployment(&[
            ("SourceType", "Registry"),
            ("SourceRegistry", source.as_str()),
            ("SourceCredentialSecret", "th/source"),
            ("DestPrefix", "mirror"),
        ]),
    );
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let mut env = aws.iam.env(&task_role, REGION);
    env.extend(
        [
            ("TASK_TOKEN", "token-sigterm"),
            ("RUN_ID", "run-t"),
            ("SOURCE", &format!("{source}/team/app:7")),
            ("DEST", &format!("{ECR_HOST}/mirror/team/app:7")),
            ("SOURCE_DIGEST", img.digest.as_str()),
            ("SOURCE_SECRET", "th/source"),
            ("SOURCE_REGISTRY", source.as_str()),
            ("DEST_REGISTRY", &format!("{ECR_HOST}/mirror")),
            ("HEARTBEAT_SECS", "1"),
            ("TRANSFER_HUB_ECR_REGISTRY_ADDRESS", backend.addr.as_str()),
            ("AWS_ENDPOINT_URL_SFN", sfn.endpoint.as_str()),
            ("TMPDIR", tmp.to_str().unwrap()),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let worker = transfer_hub_bin().with_file_name("copy-worker");
    let mut child = std::process::Command::new(&worker)
        .envs(env)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let skopeo = loop {
        let found = std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let (ppid, cmd) = processes_of(pid)?;
            (ppid == child.id() && cmd.split_whitespace().next()?.ends_with("skopeo"))
                .then_some(pid)
        });
        if let Some(p) = found {
            break p;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the worker ended before its copy started"
        );
        assert!(Instant::now() < deadline, "no skopeo copy started");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        auth_dirs(&tmp).len(),
        1,
        "the worker holds its temp auth file"
    );
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    // Within the task definition's StopTimeout (30 s), after which ECS sends SIGKILL.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the worker did not end within the StopTimeout"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(status.success(), "the failure was reported: {stderr}");
    assert!(
        stderr.contains("reported failure")
            && stderr.contains("Retryable")
            && stderr.contains("interrupted by SIGTERM"),
        "{stderr}"
    );
    let calls = calls.lock().unwrap().clone();
    assert!(
        calls
            .iter()
            .any(|(t, s)| t == "AWSStepFunctions.SendTaskFailure" && *s == 200),
        "SendTaskFailure reached Step Functions: {calls:?}"
    );
    assert!(
        !calls
            .iter()
            .any(|(t, _)| t == "AWSStepFunctions.SendTaskSuccess"),
        "{calls:?}"
    );
    let alive = processes_of(skopeo).is_some_and(|_| {
        std::fs::read_to_string(format!("/proc/{skopeo}/stat"))
            .ok()
            .and_then(|st| st.rsplit_once(')').map(|(_, r)| r.trim().starts_with('Z')))
            == Some(false)
    });
    assert!(!alive, "skopeo {skopeo} outlived the worker");
    assert_eq!(
        auth_dirs(&tmp),
        Vec::<String>::new(),
        "the temp auth file outlived SIGTERM"
    );
    assert!(!stderr.contains(&canary));
    assert!(backend.tags("mirror/team/app").is_empty(), "nothing copied");
}

/// The parent pid and command line of process `pid`, while it exists.
fn processes_of(pid: u32) -> Option<(u32, String)> {
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ppid = st
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ppid, String::from_utf8_lossy(&cmd).replace('\0', " ")))
}

/// The copy worker's retries into an ECR destination forgive an attempt that made progress,
/// as for any registry: the progress check asks ECR's registry protocol (blob and manifest
/// HEADs with the ECR login token; moto's ECR API has no BatchCheckLayerAvailability). Exact:
/// the destination fails the first PUT of each manifest of a two-platform image, with
/// `RETRIES=1`: every attempt lands something new. Before, an ECR destination could not be
/// asked, every failure counted, and the copy failed after 2 attempts.
#[test]
fn the_copy_worker_into_ecr_forgives_an_attempt_that_made_progress() {
    use hub_tests::faults::{Fault, FaultProxy, Faults, Flavor};
    let aws = Aws::start("aws-the_copy_worker_into_ecr_forgives");
    let (src, backend) = (RegistryServer::start(), RegistryServer::start());
    let img = OciImage::multi_arch(&[4096, 2048]);
    img.push(&format!("{}/team/app:7", src.addr), None);
    let proxy = FaultProxy::start(
        &backend.addr,
        Faults::scripted(
            Flavor::Registry,
            1,
            std::sync::Arc::new(|head: &str, nth| {
                (head.starts_with("PUT /v2/mirror/team/app/manifests/") && nth == 0)
                    .then_some(Fault::Unavailable)
            }),
        ),
    );
    let task_role = aws.iam.role(
        "CopyTaskRole",
        &aws.deployment(&[
            ("SourceType", "Registry"),
            ("SourceRegistry", src.addr.as_str()),
            ("DestPrefix", "mirror"),
        ]),
    );
    let mut env = aws.iam.env(&task_role, REGION);
    env.extend(
        [
            ("TASK_TOKEN", "token-progress"),
            ("RUN_ID", "run-p"),
            ("SOURCE", &format!("{}/team/app:7", src.addr)),
            ("DEST", &format!("{ECR_HOST}/mirror/team/app:7")),
            ("SOURCE_DIGEST", img.digest.as_str()),
            ("RETRIES", "1"),
            ("HEARTBEAT_SECS", "1"),
            ("RUST_LOG", "info"),
            ("TRANSFER_HUB_ECR_REGISTRY_ADDRESS", proxy.addr.as_str()),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let worker = transfer_hub_bin().with_file_name("copy-worker");
    let out = std::process::Command::new(&worker)
        .envs(env)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("reported success"), "{stderr}");
    assert!(
        stderr.contains("not counted against the retries"),
        "an attempt was forgiven: {stderr}"
    );
    assert_eq!(
        backend.digest("mirror/team/app", "7").as_deref(),
        Some(img.digest.as_str())
    );
    let injected = proxy.injected();
    assert!(
        injected.values().sum::<usize>() >= 2,
        "the faults were injected: {injected:?}"
    );
}

/// A source whose token realm may not have its login (plain http, on another host than the
/// registry: `http://localhost:PORT` beside a registry at 127.0.0.1) fails that image with
/// a named error, and the password never reaches the realm: a listener there counts every
/// request. Before, the copy worker checked nothing before starting skopeo, which sent the
/// source login to whatever realm the registry named (the listener got it, Basic-encoded).
#[test]
fn the_copy_worker_never_hands_a_login_to_skopeo_for_a_realm_that_may_not_have_it() {
    use base64::Engine as _;
    let aws = Aws::start("aws-the_copy_worker_never_hands_a_login");
    let canary = format!("realm-canary-{}", fastrand::u64(..));
    let realm = hub_tests::FakeRegistry::start(std::sync::Arc::new(|_: &str| {
        hub_tests::Reply::new(401, &[], hub_tests::Body::Bytes(Vec::new()))
    }));
    let port = realm.addr.rsplit_once(':').unwrap().1;
    let src = RegistryServer::start_with_token_realm(&format!("http://localhost:{port}/token"));
    let backend = RegistryServer::start();
    let sm = aws_sdk_secretsmanager::Client::new(&aws.conf);
    aws.rt
        .block_on(
            sm.create_secret()
                .name("th/source")
                .secret_string(format!(r#"{{"username":"puller","password":"{canary}"}}"#))
                .send(),
        )
        .unwrap();
    let task_role = aws.iam.role(
        "CopyTaskRole",
        &aws.deployment(&[
            ("SourceType", "Registry"),
            ("SourceRegistry", src.addr.as_str()),
            ("SourceCredentialSecret", "th/source"),
            ("DestPrefix", "mirror"),
        ]),
    );
    let mut env = aws.iam.env(&task_role, REGION);
    let digest = format!("sha256:{}", "ab".repeat(32));
    env.extend(
        [
            ("TASK_TOKEN", "token-realm"),
            ("RUN_ID", "run-r"),
            ("SOURCE", &format!("{}/team/app:7", src.addr)),
            ("DEST", &format!("{ECR_HOST}/mirror/team/app:7")),
            ("SOURCE_DIGEST", digest.as_str()),
            ("SOURCE_SECRET", "th/source"),
            ("SOURCE_REGISTRY", src.addr.as_str()),
            ("DEST_REGISTRY", &format!("{ECR_HOST}/mirror")),
            ("RETRIES", "1"),
            ("HEARTBEAT_SECS", "1"),
            ("TRANSFER_HUB_ECR_REGISTRY_ADDRESS", backend.addr.as_str()),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let worker = transfer_hub_bin().with_file_name("copy-worker");
    let out = std::process::Command::new(&worker)
        .envs(env)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the failure was reported: {stderr}");
    assert!(
        stderr.contains("reported failure") && stderr.contains("token realm"),
        "{stderr}"
    );
    assert!(!stderr.contains(&canary), "{stderr}");
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("puller:{canary}"));
    let asked = realm.requests();
    assert!(
        !asked
            .iter()
            .any(|r| r.contains(&canary) || r.contains(&encoded)),
        "the password reached the http realm: {asked:?}"
    );
    assert!(asked.is_empty(), "nothing asks that realm: {asked:?}");
}

/// One run of a task at a time: list-images claims the task's lock (IAM enforced, as
/// ListImagesRole), a second execution of the task is refused and recorded so, a retried step
/// of the holder goes on, a lock whose execution stopped is taken over, and record-status
/// (as RecordStatusRole) gives back only a lock its run holds.
#[test]
fn a_task_runs_once_at_a_time_a_second_execution_is_refused_and_a_stopped_holders_lock_is_taken_over()
 {
    use hub_core::aws::functions::{ImagesFn, RecordFn};
    use hub_core::retry::ErrorClass;
    use hub_core::tasks::store::TaskStore;
    let aws = Aws::start("aws-a_task_runs_once_at_a_time");
    let (src, dst) = (RegistryServer::start(), RegistryServer::start());
    OciImage::single(&[1024]).push(&format!("{}/app:1", src.addr), None);
    let sfn = aws_sdk_sfn::Client::new(&aws.conf);
    let machine = aws.rt.block_on(async {
        aws_fixtures::tasks_table(&aws.conf, "tasks").await;
        hub_core::aws::task_store::DynamoTaskStore::new(
            aws_sdk_dynamodb::Client::new(&aws.conf),
            "tasks".to_string(),
            aws.table.clone(),
        )
        .create(&super::console_aws::images_task(
            "web",
            &src.addr,
            &format!("{}/m", dst.addr),
            "app:1",
        ))
        .await
        .unwrap();
        sfn.create_state_machine()
            .name("transfer-hub-images")
            .definition(r#"{"StartAt":"P","States":{"P":{"Type":"Pass","End":true}}}"#)
            .role_arn(format!("arn:aws:iam::{}:role/sfn", hub_tests::iam::ACCOUNT))
            .send()
            .await
            .unwrap()
            .state_machine_arn()
            .to_string()
    });
    let start = |name: &str| -> String {
        aws.rt
            .block_on(
                sfn.start_execution()
                    .state_machine_arn(&machine)
                    .name(name)
                    .send(),
            )
            .unwrap()
            .execution_arn()
            .to_string()
    };
    let deployed = aws
        .deployment(&[
            ("SourceType", "Registry"),
            ("SourceRegistry", src.addr.as_str()),
            ("SelectType", "ALL"),
        ])
        .table("TasksTable", "tasks");
    let cfg = aws.config(
        &src.addr,
        &dst.addr,
        &[("TASKS_TABLE", "tasks"), ("SELECT_TYPE", "ALL")],
    );
    let images = ImagesFn::with_clients(cfg, &aws.role_in("ListImagesRole", &deployed));
    let record = RecordFn::with_clients(
        aws.table.clone(),
        "arn:aws:sns:eu-west-1:123456789012:unused".into(),
        Some("tasks".into()),
        &aws.role_in("RecordStatusRole", &deployed),
    );
    let input = || hub_core::images::workflow::RunInput {
        task: Some("web".into()),
        ..Default::default()
    };
    let list = |run: &str, execution: &str| {
        aws.rt.block_on(images.list(ListRequest {
            run_id: run.into(),
            execution: Some(execution.into()),
            input: input(),
        }))
    };
    let close = |run: &str| {
        aws.rt
            .block_on(record.handle(RecordRequest::Run {
                run_id: run.into(),
                input: input(),
            }))
            .unwrap()
    };

    let first = start("run-1");
    assert_eq!(list("run-1", &first).unwrap().images.count, 1);
    let refused = list("run-2", &start("run-2")).unwrap_err();
    assert_eq!(refused.class, ErrorClass::Conflict, "{refused}");
    assert!(
        refused.message.contains("run run-1"),
        "names the run going: {refused}"
    );
    let (run, items) = aws
        .rt
        .block_on(aws.store().get_run(Some("run-2")))
        .unwrap()
        .unwrap();
    assert_eq!(run.result, hub_core::status::RunResult::Failed, "{run:?}");
    assert!(
        run.ended_at.is_some() && run.error.as_deref().is_some_and(|e| e.contains("run-1")),
        "{run:?}"
    );
    assert!(
        items.is_empty(),
        "the refused run touched nothing: {items:?}"
    );
    assert!(
        list("run-1", &first).is_ok(),
        "a retried step of the holder goes on"
    );

    // The holder's execution is stopped without closing its run: its lock is taken over.
    aws.rt
        .block_on(sfn.stop_execution().execution_arn(&first).send())
        .unwrap();
    let third = start("run-3");
    assert!(list("run-3", &third).is_ok());
    // The stopped run's late close gives back nothing it no longer holds.
    close("run-1");
    let e = list("run-4", &start("run-4")).unwrap_err();
    assert!(e.message.contains("run run-3"), "{e}");
    close("run-3");
    assert!(
        list("run-5", &start("run-5")).is_ok(),
        "given back at the close"
    );
}
