//! The object suite's handlers (diff-objects, transfer-object, check-multipart) against
//! moto's S3, SQS, DynamoDB and Secrets Manager on 127.0.0.1 with IAM enforced, called with
//! SQS events built like Lambda builds them and with the samples in events/.
//!
//! Each function runs as its role: a user whose policy is exactly that role's statements in
//! the SAM-transformed template.yaml (hub_tests::iam), so a call the template does not allow
//! fails the test. The destination is reached with the role's own credentials, as on AWS.
//! The source is read with the keys in the `src-keys` secret (ObjectSourceCredentialSecret:
//! another account's bucket): they belong to a user holding what that bucket's owner would
//! grant, read-only (s3:ListBucket on the bucket; s3:GetObject, s3:GetObjectVersion,
//! s3:GetObjectTagging and s3:GetObjectAttributes on its objects); one test reads a
//! same-account source with the role.
//! Setup and checks use the rig's admin user.

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use aws_sdk_s3::primitives::ByteStream;
use hub_core::aws::functions::ObjectsFn;
use hub_core::config::Env;
use hub_tests::iam::{Deployment, IamMoto};
use hub_tests::{aws_fixtures, event};
use md5::{Digest, Md5};
use std::collections::HashMap;

const REGION: &str = "eu-west-1";
const MIB: usize = 1024 * 1024;

struct Suite {
    iam: IamMoto,
    conf: aws_config::SdkConfig,
    s3: aws_sdk_s3::Client,
    sqs: aws_sdk_sqs::Client,
    queue: String,
    dlq: String,
    rt: tokio::runtime::Runtime,
}

/// The three object functions of one configuration, each with its own role.
struct Fns {
    diff_fn: ObjectsFn,
    transfer_fn: ObjectsFn,
    check_fn: ObjectsFn,
}

impl Fns {
    async fn diff(
        &self,
        req: hub_core::objects::suite::DiffRequest,
        deadline_ms: u64,
    ) -> Result<hub_core::objects::suite::DiffSummary, hub_core::retry::ItemError> {
        self.diff_fn.diff(req, deadline_ms).await
    }

    async fn transfer(
        &self,
        ev: SqsEvent,
    ) -> Result<aws_lambda_events::event::sqs::SqsBatchResponse, hub_core::retry::ItemError> {
        self.transfer_fn.transfer(ev).await
    }

    async fn check(
        &self,
        input: serde_json::Value,
    ) -> Result<hub_core::objects::suite::CheckSummary, hub_core::retry::ItemError> {
        self.check_fn.check(input).await
    }
}

/// What a bucket owner in another account grants the copy: reading its bucket, nothing else.
fn source_owner_grant(bucket: &str) -> serde_json::Value {
    serde_json::json!([
        {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": format!("arn:aws:s3:::{bucket}")},
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:GetObjectVersion", "s3:GetObjectTagging", "s3:GetObjectAttributes"],
         "Resource": format!("arn:aws:s3:::{bucket}/*")}
    ])
}

impl Suite {
    fn start(test: &str) -> Self {
        let iam = IamMoto::start(test);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let conf = rt.block_on(iam.admin_config(REGION));
        let sqs = aws_sdk_sqs::Client::new(&conf);
        let reader = iam.grant("source-owner", source_owner_grant("src"));
        let (queue, dlq) = rt.block_on(async {
            for b in ["src", "dst"] {
                aws_fixtures::bucket(&conf, b).await;
            }
            aws_fixtures::status_table(&conf, "status").await;
            aws_fixtures::uploads_table(&conf, "uploads").await;
            let sm = aws_sdk_secretsmanager::Client::new(&conf);
            sm.create_secret()
                .name("src-keys")
                .secret_string(
                    serde_json::json!({
                        "access_key_id": reader.access_key_id,
                        "secret_access_key": reader.secret_access_key
                    })
                    .to_string(),
                )
                .send()
                .await
                .unwrap();
            sm.create_secret()
                .name("no-keys")
                .secret_string(r#"{"user":"x"}"#)
                .send()
                .await
                .unwrap();
            let dlq = sqs
                .create_queue()
                .queue_name("jobs-dlq")
                .send()
                .await
                .unwrap()
                .queue_url
                .unwrap();
            let dlq_arn = sqs
                .get_queue_attributes()
                .queue_url(&dlq)
                .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                .send()
                .await
                .unwrap()
                .attributes()
                .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
                .clone();
            let queue = sqs
                .create_queue()
                .queue_name("jobs")
                .attributes(
                    aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
                    format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"2"}}"#),
                )
                .attributes(
                    aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
                    "1",
                )
                .send()
                .await
                .unwrap()
                .queue_url
                .unwrap();
            (queue, dlq)
        });
        Self {
            s3: aws_sdk_s3::Client::new(&conf),
            sqs,
            iam,
            conf,
            queue,
            dlq,
            rt,
        }
    }

    fn vars(&self, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut m: HashMap<String, String> = [
            ("SOURCE_BUCKET", "src"),
            ("SOURCE_PREFIX", "in/"),
            ("SOURCE_REGION", REGION),
            ("SOURCE_ENDPOINT", &self.iam.moto.endpoint),
            ("SOURCE_SECRET", "src-keys"),
            ("DEST_BUCKET", "dst"),
            ("DEST_PREFIX", "out/"),
            ("DEST_REGION", REGION),
            ("DEST_ENDPOINT", &self.iam.moto.endpoint),
            ("TABLE_NAME", "status"),
            ("UPLOADS_TABLE", "uploads"),
            ("JOB_QUEUE_URL", &self.queue),
            ("PART_SIZE", &(5 * MIB).to_string()),
            ("MULTIPART_THRESHOLD", &(6 * MIB).to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in extra {
            if v.is_empty() && k.ends_with("_SECRET") {
                m.remove(*k);
            } else {
                m.insert(k.to_string(), v.to_string());
            }
        }
        m
    }

    fn env(&self, extra: &[(&str, &str)]) -> Env {
        Env::from_map(self.vars(extra))
    }

    /// The template deployed with the parameters this environment stands for, and the
    /// tables and queue of this test.
    fn deployment(&self, extra: &[(&str, &str)]) -> Deployment {
        let vars = self.vars(extra);
        let mut d = Deployment::new(REGION)
            .table("StatusTable", "status")
            .table("UploadsTable", "uploads")
            .queue("JobQueue", &self.queue)
            .queue("JobDeadLetterQueue", &self.dlq)
            .table("TasksTable", "tasks")
            // The tests hand transfer-object S3 notifications too.
            .param("ObjectEvents", "true");
        for (var, param) in [
            ("SOURCE_BUCKET", "ObjectSourceBucket"),
            ("SOURCE_PREFIX", "ObjectSourcePrefix"),
            ("SOURCE_REGION", "ObjectSourceRegion"),
            ("SOURCE_ENDPOINT", "ObjectSourceEndpoint"),
            ("SOURCE_SECRET", "ObjectSourceCredentialSecret"),
            ("REQUESTER_PAYS", "ObjectRequesterPays"),
            ("DEST_BUCKET", "ObjectDestBucket"),
            ("DEST_PREFIX", "ObjectDestPrefix"),
            ("KMS_KEY", "ObjectDestKmsKeyArn"),
            ("INCLUDE_TAGS", "ObjectIncludeTags"),
            ("DELETE_ON_EVENTS", "ObjectDeleteOnEvents"),
            ("FILTERS", "ObjectFilters"),
            ("MIN_SIZE", "ObjectMinSize"),
            ("MAX_SIZE", "ObjectMaxSize"),
            ("MAX_AGE", "ObjectMaxAge"),
            ("MIN_AGE", "ObjectMinAge"),
        ] {
            if let Some(v) = vars.get(var) {
                d = d.param(param, v);
            }
        }
        d
    }

    /// The SDK configuration of `role` deployed for this environment.
    fn role_config(&self, role: &str, extra: &[(&str, &str)]) -> aws_config::SdkConfig {
        let keys = self.iam.role(role, &self.deployment(extra));
        self.rt.block_on(self.iam.config(&keys, REGION))
    }

    /// One function built as `role` for this environment.
    fn function_as(&self, role: &str, extra: &[(&str, &str)]) -> Result<ObjectsFn, String> {
        let conf = self.role_config(role, extra);
        self.rt
            .block_on(ObjectsFn::from(self.env(extra), conf))
            .map_err(|e| e.to_string())
    }

    /// diff-objects, transfer-object and check-multipart for this environment, each as its role.
    fn function(&self, extra: &[(&str, &str)]) -> Fns {
        Fns {
            diff_fn: self.function_as("DiffObjectsRole", extra).unwrap(),
            transfer_fn: self.function_as("TransferObjectRole", extra).unwrap(),
            check_fn: self.function_as("CheckMultipartRole", extra).unwrap(),
        }
    }

    /// moto behind the strict S3 proxy (tests/src/s3_rig.rs), its own calls made as the
    /// admin.
    fn strict(&self) -> hub_tests::s3_rig::StrictS3 {
        hub_tests::s3_rig::StrictS3::start_signed(
            &self.iam.moto.endpoint,
            std::sync::Arc::new(|_: &str, status, body| (status, vec![], body)),
            self.iam.admin_keys(),
        )
    }

    fn put(&self, key: &str, body: &[u8]) {
        self.rt
            .block_on(
                self.s3
                    .put_object()
                    .bucket("src")
                    .key(key)
                    .body(ByteStream::from(body.to_vec()))
                    .send(),
            )
            .unwrap();
    }

    fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let o = self
            .rt
            .block_on(self.s3.get_object().bucket(bucket).key(key).send())
            .ok()?;
        Some(self.rt.block_on(o.body.collect()).unwrap().to_vec())
    }

    /// Receives what is on a queue now (as Lambda's poller would), as an SQS event.
    fn receive(&self, queue: &str) -> SqsEvent {
        let mut records = Vec::new();
        for _ in 0..20 {
            let out = self
                .rt
                .block_on(
                    self.sqs
                        .receive_message()
                        .queue_url(queue)
                        .max_number_of_messages(10)
                        // Hidden for the rest of the test unless handed back (see ack).
                        .visibility_timeout(60)
                        .send(),
                )
                .unwrap();
            if out.messages().is_empty() {
                break;
            }
            for m in out.messages() {
                records.push(serde_json::json!({
                    "messageId": m.message_id(),
                    "receiptHandle": m.receipt_handle(),
                    "body": m.body(),
                    "attributes": {},
                    "messageAttributes": {},
                    "eventSource": "aws:sqs",
                    "awsRegion": REGION
                }));
            }
        }
        serde_json::from_value(serde_json::json!({ "Records": records })).unwrap()
    }

    /// Deletes the handled messages; the failed ones become visible again at once (Lambda
    /// waits for the visibility timeout; the test does not need to).
    fn ack(&self, queue: &str, ev: &SqsEvent, failed: &[String]) {
        for r in &ev.records {
            if failed.contains(r.message_id.as_ref().unwrap()) {
                self.rt
                    .block_on(
                        self.sqs
                            .change_message_visibility()
                            .queue_url(queue)
                            .receipt_handle(r.receipt_handle.clone().unwrap())
                            .visibility_timeout(0)
                            .send(),
                    )
                    .unwrap();
            } else {
                self.rt
                    .block_on(
                        self.sqs
                            .delete_message()
                            .queue_url(queue)
                            .receipt_handle(r.receipt_handle.clone().unwrap())
                            .send(),
                    )
                    .unwrap();
            }
        }
    }

    /// Runs check-multipart with `f`: exactly one upload completes, into `out/{key}` with the
    /// bytes of `source`, and no upload is left open.
    fn completes(&self, f: &Fns, key: &str, source: &[u8]) {
        let sum = self
            .rt
            .block_on(f.check(event("check-multipart.json")))
            .unwrap();
        assert_eq!(
            sum.completed,
            1,
            "{sum:?}; refused calls: {:?}",
            self.iam.denied()
        );
        let got = self.get("dst", &format!("out/{key}")).unwrap();
        assert_eq!(
            Md5::digest(&got),
            Md5::digest(source),
            "the completed object equals the source"
        );
        assert_eq!(self.open_uploads(), 0, "no upload is left open");
    }

    /// Runs check-multipart with `f`: exactly one upload completes, into `dest_key` with
    /// the bytes of `source`, and no upload is left open.
    fn completes_at(&self, f: &Fns, dest_key: &str, source: &[u8]) {
        let sum = self
            .rt
            .block_on(f.check(event("check-multipart.json")))
            .unwrap();
        assert_eq!(
            sum.completed,
            1,
            "{sum:?}; refused calls: {:?}",
            self.iam.denied()
        );
        let got = self.get("dst", dest_key).unwrap();
        assert_eq!(
            Md5::digest(&got),
            Md5::digest(source),
            "the completed object equals the source"
        );
        assert_eq!(self.open_uploads(), 0, "no upload is left open");
    }

    /// An SQS event of these records (as one Lambda batch).
    fn batch(records: &[SqsMessage]) -> SqsEvent {
        serde_json::from_value(serde_json::json!({ "Records": records })).unwrap()
    }

    /// Hands a batch to `f` (transfer-object) and asserts no message of it failed.
    fn handled(&self, f: &Fns, ev: SqsEvent) {
        let r = self.rt.block_on(f.transfer(ev)).unwrap();
        assert!(r.batch_item_failures.is_empty(), "{r:?}");
    }

    fn bodies(ev: &SqsEvent) -> Vec<serde_json::Value> {
        ev.records
            .iter()
            .map(|r| serde_json::from_str(r.body.as_ref().unwrap()).unwrap())
            .collect()
    }

    fn open_uploads(&self) -> usize {
        self.rt
            .block_on(self.s3.list_multipart_uploads().bucket("dst").send())
            .unwrap()
            .uploads()
            .len()
    }
}

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

#[test]
fn diff_objects_queues_only_what_differs_and_a_quiet_hour_queues_nothing() {
    let s = Suite::start(
        "objects_aws-diff_objects_queues_only_what_differs_and_a_quiet_hour_queues_nothing",
    );
    for i in 0..25 {
        s.put(&format!("in/k{i:02}"), &data(100 + i, 1));
    }
    s.put("elsewhere/x", b"not under the prefix");
    s.rt.block_on(
        s.s3.put_object()
            .bucket("dst")
            .key("out/k03")
            .body(ByteStream::from(data(103, 1)))
            .send(),
    )
    .unwrap();
    s.rt.block_on(
        s.s3.put_object()
            .bucket("dst")
            .key("out/k04")
            .body(ByteStream::from(data(5, 1)))
            .send(),
    )
    .unwrap();
    let f = s.function(&[]);
    let input = serde_json::from_value(event("diff-objects.json")).unwrap();
    let sum = s.rt.block_on(f.diff(input, 0)).unwrap();
    assert_eq!((sum.to_copy, sum.in_sync), (24, 1), "{sum:?}");
    let jobs = Suite::bodies(&s.receive(&s.queue));
    assert_eq!(jobs.len(), 24);
    let mut keys: Vec<&str> = jobs.iter().map(|j| j["key"].as_str().unwrap()).collect();
    keys.sort();
    assert_eq!(keys[0], "k00");
    assert!(!keys.contains(&"k03") && keys.contains(&"k04"));
    for j in &jobs {
        assert_eq!(j["kind"], "object");
        assert_eq!(j["run"], sum.run_id.as_str());
        let text = j.to_string();
        assert!(
            !text.contains("testing") && !text.contains("secret"),
            "{text}"
        );
    }

    // Everything copied (by the worker) → the next hour queues nothing.
    let ev = s.receive(&s.queue);
    assert!(ev.records.is_empty());
    for i in 0..25 {
        s.rt.block_on(
            s.s3.put_object()
                .bucket("dst")
                .key(format!("out/k{i:02}"))
                .body(ByteStream::from(data(100 + i, 1)))
                .send(),
        )
        .unwrap();
    }
    let sum = s.rt.block_on(f.diff(Default::default(), 0)).unwrap();
    assert_eq!((sum.to_copy, sum.in_sync), (0, 25));
    assert!(s.receive(&s.queue).records.is_empty());
}

/// The stack's filter parameters: diff-objects queues only what they let through, in
/// rounds too, and counts the rest (summary and run record); an S3 event for an object
/// left out copies nothing, and a delete event for one deletes nothing.
#[test]
fn the_stacks_filters_choose_what_diff_objects_queues_and_what_events_touch() {
    let s = Suite::start(
        "objects_aws-the_stacks_filters_choose_what_diff_objects_queues_and_what_events_touch",
    );
    for k in ["a.jpg", "b.png", "tmp/c.jpg", "photos/d.jpg", "big.jpg"] {
        let n = if k == "big.jpg" { 5000 } else { 100 };
        s.put(&format!("in/{k}"), &data(n, 1));
    }
    s.rt.block_on(
        s.s3.put_object()
            .bucket("dst")
            .key("out/tmp/old.jpg")
            .body(ByteStream::from_static(b"left alone"))
            .send(),
    )
    .unwrap();
    let vars = [
        ("FILTERS", "- /tmp/**; + *.jpg"),
        ("MAX_SIZE", "4K"),
        ("MAX_AGE", "7d"),
        ("DELETE_ON_EVENTS", "true"),
        ("DIFF_ROUND_SECONDS", "0"),
    ];
    let f = s.function(&vars);
    // Rounds of one key each, handed on as JSON as the state machine does: the filter
    // judges alike in every round and the count adds up.
    let mut input = serde_json::json!({});
    let sum = loop {
        let sum =
            s.rt.block_on(f.diff(serde_json::from_value(input).unwrap(), 0))
                .unwrap();
        if sum.next.is_none() {
            break sum;
        }
        input = serde_json::to_value(&sum).unwrap();
    };
    assert_eq!((sum.to_copy, sum.filtered), (2, 3), "{sum:?}");
    let jobs = Suite::bodies(&s.receive(&s.queue));
    let mut keys: Vec<&str> = jobs.iter().map(|j| j["key"].as_str().unwrap()).collect();
    keys.sort();
    assert_eq!(keys, vec!["a.jpg", "photos/d.jpg"]);
    use hub_core::status::StatusStore as _;
    let store = hub_core::status::dynamodb::DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&s.conf),
        "status",
    );
    let (run, _) =
        s.rt.block_on(store.get_run(Some(&sum.run_id)))
            .unwrap()
            .unwrap();
    assert_eq!(run.filtered, 3, "{run:?}");

    let note = |name: &str, key: &str, size: usize, seq: &str| {
        serde_json::json!({"Records": [{
            "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": REGION,
            "eventTime": "2026-11-23T12:00:00.000Z", "eventName": name,
            "userIdentity": {"principalId": "EXAMPLE"}, "requestParameters": {"sourceIPAddress": "127.0.0.1"},
            "responseElements": {},
            "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": "src", "arn": "arn:aws:s3:::src"},
                   "object": {"key": key, "size": size, "sequencer": seq}}}]})
        .to_string()
    };
    let recs: Vec<serde_json::Value> = [
        note("ObjectCreated:Put", "in/b.png", 100, "0000000000000001"),
        note("ObjectCreated:Put", "in/big.jpg", 5000, "0000000000000002"),
        note("ObjectCreated:Put", "in/a.jpg", 100, "0000000000000003"),
        note("ObjectRemoved:Delete", "in/tmp/old.jpg", 0, "0000000000000004"),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, b)| serde_json::json!({"messageId": format!("m{i}"), "body": b, "attributes": {}, "messageAttributes": {}}))
    .collect();
    let ev: SqsEvent = serde_json::from_value(serde_json::json!({ "Records": recs })).unwrap();
    let r = s.rt.block_on(f.transfer(ev)).unwrap();
    assert!(r.batch_item_failures.is_empty(), "{r:?}");
    assert_eq!(s.get("dst", "out/a.jpg").unwrap(), data(100, 1));
    assert!(s.get("dst", "out/b.png").is_none(), "no include matched");
    assert!(s.get("dst", "out/big.jpg").is_none(), "over MAX_SIZE");
    assert_eq!(
        s.get("dst", "out/tmp/old.jpg").unwrap(),
        b"left alone",
        "excluded: not deleted"
    );
}

/// A bucket too big for one invocation: each round stops at its deadline after the key it
/// is deciding and the next round (the previous output as input, as the state machine
/// hands it on) lists after that key. Here every round is given no time, so each decides
/// exactly one key: the worst case for where rounds meet.
#[test]
fn diff_objects_in_rounds_queues_each_differing_object_exactly_once() {
    use hub_core::status::StatusStore as _;
    let s = Suite::start(
        "objects_aws-diff_objects_in_rounds_queues_each_differing_object_exactly_once",
    );
    for i in 0..30 {
        s.put(&format!("in/k{i:02}"), &data(100 + i, 1));
    }
    for (key, body) in [
        ("out/k03", data(103, 1)),
        ("out/k04", data(5, 1)),
        ("out/k99", data(9, 1)),
    ] {
        s.rt.block_on(
            s.s3.put_object()
                .bucket("dst")
                .key(key)
                .body(ByteStream::from(body))
                .send(),
        )
        .unwrap();
    }
    // Rounds of no time at all: each decides one key, then hands on.
    let f = s.function(&[("DIFF_ROUND_SECONDS", "0")]);
    let mut input: serde_json::Value = event("diff-objects.json");
    let mut seen_next: Vec<String> = Vec::new();
    let last = loop {
        let req = serde_json::from_value(input).unwrap();
        let sum = s.rt.block_on(f.diff(req, 0)).unwrap();
        let out = serde_json::to_value(&sum).unwrap();
        let text = out.to_string();
        assert!(
            !text.contains("testing") && !text.contains("secret"),
            "{text}"
        );
        match sum.next.clone() {
            Some(k) => {
                assert!(
                    seen_next.last().is_none_or(|p| *p < k),
                    "rounds go forward: {seen_next:?} then {k}"
                );
                seen_next.push(k);
            }
            None => {
                assert!(
                    out.get("next").is_none(),
                    "a finished run has no `next` at all: {text}"
                );
                break sum;
            }
        }
        assert!(seen_next.len() <= 40, "the rounds never end: {seen_next:?}");
        input = out;
    };
    // 30 source keys and one only at the destination: one per round, then an empty round.
    assert_eq!(seen_next.len(), 31, "{seen_next:?}");
    assert_eq!(last.rounds, 32);
    assert_eq!(
        (last.to_copy, last.in_sync, last.only_at_dest),
        (29, 1, 1),
        "{last:?}"
    );
    let jobs = Suite::bodies(&s.receive(&s.queue));
    let mut keys: Vec<&str> = jobs.iter().map(|j| j["key"].as_str().unwrap()).collect();
    keys.sort();
    let expected: Vec<String> = (0..30)
        .filter(|i| *i != 3)
        .map(|i| format!("k{i:02}"))
        .collect();
    assert_eq!(keys, expected, "every differing object once, nothing else");
    assert!(jobs.iter().all(|j| j["run"] == last.run_id.as_str()));
    // One run record for all the rounds, finished only by the last.
    let store = hub_core::status::dynamodb::DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&s.conf),
        "status",
    );
    let (run, _) =
        s.rt.block_on(store.get_run(Some(&last.run_id)))
            .unwrap()
            .unwrap();
    assert_eq!(run.skipped, 1);
    assert!(run.ended_at.is_some());
}

#[test]
fn parts_done_by_several_workers_in_any_order_and_twice_complete_into_the_source_object() {
    let s = Suite::start(
        "objects_aws-parts_done_by_several_workers_in_any_order_and_twice_complete_into_the_source_object",
    );
    let big = data(16 * MIB + 777, 3);
    s.put("in/big.bin", &big);
    s.put("in/small.txt", b"hello");
    let f = s.function(&[]);
    s.rt.block_on(f.diff(Default::default(), 0)).unwrap();
    // Worker 1 takes the object jobs: the small one is copied, the big one is split.
    let ev = s.receive(&s.queue);
    assert_eq!(ev.records.len(), 2);
    s.handled(&f, ev.clone());
    s.ack(&s.queue, &ev, &[]);
    assert_eq!(s.get("dst", "out/small.txt").unwrap(), b"hello");
    let parts = s.receive(&s.queue);
    assert_eq!(parts.records.len(), 4, "16 MiB in 5 MiB parts");
    s.ack(&s.queue, &parts, &[]);
    // Parts go to three workers, out of order, part 2 twice; a worker dies after part 3
    // (its job was never acknowledged, so it comes again).
    let mut recs = parts.records.clone();
    recs.reverse();
    let dup = recs
        .iter()
        .find(|r| r.body.as_ref().unwrap().contains("\"number\":2"))
        .unwrap()
        .clone();
    let batches = [
        vec![recs[0].clone(), dup.clone()],
        vec![recs[2].clone(), recs[1].clone()],
        vec![dup, recs[3].clone()],
    ];
    let workers: Vec<Fns> = (0..3).map(|_| s.function(&[])).collect();
    for (w, b) in workers.iter().zip(batches) {
        s.handled(w, Suite::batch(&b));
    }
    assert_eq!(s.open_uploads(), 1);
    s.completes(&workers[0], "big.bin", &big);
    // A late duplicate of a part job after completion does no harm.
    let late = Suite::batch(&parts.records[..1]);
    s.handled(&f, late);
    assert_eq!(s.open_uploads(), 0);
    assert_eq!(s.get("dst", "out/big.bin").unwrap().len(), big.len());
    // An upload of ours that a crash left unrecorded (its intent was written before
    // CreateMultipartUpload, the ledger never got its id) is reaped once it is old; an
    // upload somebody else started under the prefix is left alone.
    use hub_core::objects::uploads::UploadLedger as _;
    let ledger = hub_core::objects::uploads::DynamoLedger {
        client: aws_sdk_dynamodb::Client::new(&s.conf),
        table: "uploads".into(),
    };
    s.rt.block_on(ledger.intend("s3://dst/out/orphan")).unwrap();
    for key in ["out/orphan", "out/theirs"] {
        let up =
            s.rt.block_on(s.s3.create_multipart_upload().bucket("dst").key(key).send())
                .unwrap();
        assert!(up.upload_id().is_some());
    }
    let reaper = s.function(&[("STUCK_AFTER_MINUTES", "0")]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let sum = s.rt.block_on(reaper.check(serde_json::json!({}))).unwrap();
    assert_eq!((sum.orphans_aborted, sum.foreign), (1, 1), "{sum:?}");
    let left =
        s.rt.block_on(s.s3.list_multipart_uploads().bucket("dst").send())
            .unwrap();
    let keys: Vec<&str> = left.uploads().iter().filter_map(|u| u.key()).collect();
    assert_eq!(keys, ["out/theirs"], "only somebody else's upload is left");
}

/// An upload whose part jobs stopped coming (one of four done) is stuck once it is older
/// than STUCK_AFTER_MINUTES: check-multipart aborts it and queues the object again; the
/// old upload's late part jobs do no harm, and the new plan completes into the source.
#[test]
fn a_stuck_upload_is_aborted_and_planned_again_into_the_source_object() {
    let s = Suite::start(
        "objects_aws-a_stuck_upload_is_aborted_and_planned_again_into_the_source_object",
    );
    let big = data(16 * MIB + 4321, 7);
    s.put("in/big.bin", &big);
    let f = s.function(&[]);
    s.rt.block_on(f.diff(Default::default(), 0)).unwrap();
    let ev = s.receive(&s.queue);
    s.handled(&f, ev.clone());
    s.ack(&s.queue, &ev, &[]);
    let old_parts = s.receive(&s.queue);
    assert_eq!(old_parts.records.len(), 4);
    s.ack(&s.queue, &old_parts, &[]);
    // Only part 1 is done; the other three jobs are lost for now.
    let first = Suite::batch(&old_parts.records[..1]);
    s.handled(&f, first);
    // Not yet stuck with the default age: it waits.
    let sum = s.rt.block_on(f.check(serde_json::json!({}))).unwrap();
    assert_eq!((sum.waiting, sum.replanned), (1, 0), "{sum:?}");
    assert_eq!(s.open_uploads(), 1);
    // Stuck at once with an age of 0 minutes.
    let impatient = s.function(&[("STUCK_AFTER_MINUTES", "0")]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let sum =
        s.rt.block_on(impatient.check(serde_json::json!({})))
            .unwrap();
    assert_eq!(sum.replanned, 1, "{sum:?}");
    assert_eq!(s.open_uploads(), 0, "the stuck upload is aborted");
    let again = s.receive(&s.queue);
    let jobs = Suite::bodies(&again);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(
        (jobs[0]["kind"].as_str(), jobs[0]["key"].as_str()),
        (Some("object"), Some("big.bin"))
    );
    // The old upload's late part jobs come back: harmless, not failures, no upload opened.
    let late = Suite::batch(&old_parts.records[1..]);
    s.handled(&f, late);
    assert_eq!(s.open_uploads(), 0);
    // The new plan runs to the end.
    s.handled(&f, again.clone());
    s.ack(&s.queue, &again, &[]);
    let parts = s.receive(&s.queue);
    assert_eq!(parts.records.len(), 4);
    s.handled(&f, parts.clone());
    s.ack(&s.queue, &parts, &[]);
    s.completes(&f, "big.bin", &big);
}

#[test]
fn a_bad_message_is_reported_and_ends_in_the_dead_letter_queue_while_the_others_go_on() {
    let s = Suite::start(
        "objects_aws-a_bad_message_is_reported_and_ends_in_the_dead_letter_queue_while_the_others_go_on",
    );
    s.put("in/ok.txt", b"fine");
    let f = s.function(&[]);
    let send = |body: &str| {
        s.rt.block_on(
            s.sqs
                .send_message()
                .queue_url(&s.queue)
                .message_body(body)
                .send(),
        )
        .unwrap();
    };
    send(r#"{"kind":"object","run":"r1","key":"ok.txt","size":4}"#);
    send(r#"{"kind":"object","run":"r1","size":4}"#);
    let mut dead = Vec::new();
    for _ in 0..6 {
        let ev = s.receive(&s.queue);
        if ev.records.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(1100));
            dead = Suite::bodies(&s.receive(&s.dlq));
            if !dead.is_empty() {
                break;
            }
            continue;
        }
        let r = s.rt.block_on(f.transfer(ev.clone())).unwrap();
        let failed: Vec<String> = r
            .batch_item_failures
            .iter()
            .map(|x| x.item_identifier.clone())
            .collect();
        for rec in &ev.records {
            let is_bad = !rec.body.as_ref().unwrap().contains("\"key\"");
            assert_eq!(
                failed.contains(rec.message_id.as_ref().unwrap()),
                is_bad,
                "{r:?}"
            );
        }
        s.ack(&s.queue, &ev, &failed);
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    assert_eq!(s.get("dst", "out/ok.txt").unwrap(), b"fine");
    assert_eq!(dead.len(), 1, "the bad message is in the DLQ");
    assert!(dead[0].get("key").is_none());
}

#[test]
fn s3_events_out_of_order_and_twice_leave_what_the_newest_sequencer_says() {
    let s = Suite::start(
        "objects_aws-s3_events_out_of_order_and_twice_leave_what_the_newest_sequencer_says",
    );
    let f = s.function(&[("DELETE_ON_EVENTS", "true")]);
    let note = |name: &str, key: &str, size: usize, seq: &str| {
        serde_json::json!({"Records": [{
            "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": REGION,
            "eventTime": "2026-11-23T12:00:00.000Z", "eventName": name,
            "userIdentity": {"principalId": "EXAMPLE"}, "requestParameters": {"sourceIPAddress": "127.0.0.1"},
            "responseElements": {},
            "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": "src", "arn": "arn:aws:s3:::src"},
                   "object": {"key": key, "size": size, "sequencer": seq}}}]})
        .to_string()
    };
    let deliver = |bodies: Vec<String>| {
        let recs: Vec<serde_json::Value> = bodies
            .into_iter()
            .enumerate()
            .map(|(i, b)| serde_json::json!({"messageId": format!("m{i}"), "body": b, "attributes": {}, "messageAttributes": {}}))
            .collect();
        let ev: SqsEvent = serde_json::from_value(serde_json::json!({ "Records": recs })).unwrap();
        let r = s.rt.block_on(f.transfer(ev)).unwrap();
        assert!(r.batch_item_failures.is_empty(), "{r:?}");
    };
    // a: created (1), then re-created (3): the destination ends with the newest bytes.
    s.put("in/a", b"version two");
    // b: created (4) then deleted (5) at the source; the delete arrives first.
    s.rt.block_on(
        s.s3.put_object()
            .bucket("dst")
            .key("out/b")
            .body(ByteStream::from_static(b"stale"))
            .send(),
    )
    .unwrap();
    // c: deleted (6) then created again (7); both delivered twice, newest first.
    s.put("in/c", b"c is back");
    deliver(vec![
        note("ObjectCreated:Put", "in/a", 11, "0000000000000003"),
        note("ObjectRemoved:Delete", "in/b", 0, "0000000000000005"),
        note("ObjectCreated:Put", "in/c", 9, "0000000000000007"),
    ]);
    deliver(vec![
        note("ObjectCreated:Put", "in/a", 11, "0000000000000001"),
        note("ObjectCreated:Put", "in/b", 5, "0000000000000004"),
        note("ObjectRemoved:Delete", "in/c", 0, "0000000000000006"),
        note("ObjectCreated:Put", "in/c", 9, "0000000000000007"),
        note("ObjectRemoved:Delete", "in/c", 0, "0000000000000006"),
    ]);
    assert_eq!(s.get("dst", "out/a").unwrap(), b"version two");
    assert!(
        s.get("dst", "out/b").is_none(),
        "the late create of b must not bring it back"
    );
    assert_eq!(
        s.get("dst", "out/c").unwrap(),
        b"c is back",
        "the late delete of c must not remove it"
    );
}

#[test]
fn the_transfer_object_sample_batch_is_handled_whole() {
    let s = Suite::start("objects_aws-the_transfer_object_sample_batch_is_handled_whole");
    s.put("docs/readme.txt", b"hello world");
    s.put("incoming/photos/cat 1.jpg", &data(1024, 9));
    let f = s.function(&[("SOURCE_PREFIX", ""), ("DEST_PREFIX", "")]);
    let ev: SqsEvent = serde_json::from_value(event("transfer-object.json")).unwrap();
    assert_eq!(ev.records.len(), 3);
    let r = s.rt.block_on(f.transfer(ev)).unwrap();
    // The object job copies, the part job of an upload that is not open is obsolete, and
    // the notification copies the created key and leaves the deleted one (deletion is off).
    assert!(r.batch_item_failures.is_empty(), "{r:?}");
    assert_eq!(s.get("dst", "docs/readme.txt").unwrap(), b"hello world");
    assert_eq!(
        s.get("dst", "incoming/photos/cat 1.jpg").unwrap(),
        data(1024, 9)
    );
}

#[test]
fn configuration_problems_are_listed_together_and_a_secret_without_keys_is_named() {
    let s = Suite::start(
        "objects_aws-configuration_problems_are_listed_together_and_a_secret_without_keys_is_named",
    );
    let env = s.env(&[
        ("STORAGE_CLASS", "FAST"),
        ("SOURCE_BUCKET", "Bad_Bucket"),
        ("PART_SIZE", "1"),
        ("DIFF_ROUND_SECONDS", "soon"),
    ]);
    let err =
        s.rt.block_on(ObjectsFn::from(env, s.role_config("DiffObjectsRole", &[])))
            .err()
            .expect("refused")
            .to_string();
    for needle in ["\"FAST\"", "Bad_Bucket", "PART_SIZE", "DIFF_ROUND_SECONDS"] {
        assert!(err.contains(needle), "{needle} missing from: {err}");
    }
    let err = s
        .function_as("DiffObjectsRole", &[("SOURCE_SECRET", "no-keys")])
        .err()
        .expect("refused");
    assert!(
        err.contains("\"no-keys\"") && err.contains("access_key_id"),
        "{err}"
    );
    assert!(
        !err.contains("\"x\""),
        "a secret's value must not be printed: {err}"
    );
}

#[test]
fn diff_objects_sorts_an_unordered_listing_on_disk_and_queues_each_object_once_at_least() {
    let s = Suite::start(
        "objects_aws-diff_objects_sorts_an_unordered_listing_on_disk_and_queues_each_object_once_at_least",
    );
    for k in ["a", "b", "c", "d"] {
        s.put(&format!("in/{k}"), k.as_bytes());
    }
    let proxy = hub_tests::HttpProxy::start(
        {
            let up = s
                .iam
                .moto
                .endpoint
                .trim_start_matches("http://")
                .to_string();
            std::sync::Arc::new(move |head: &str| (up.clone(), head.to_string()))
        },
        hub_tests::reversed_listings("src"),
    );
    let f = s.function(&[("SOURCE_ENDPOINT", proxy.endpoint.as_str())]);
    let sum = s.rt.block_on(f.diff(Default::default(), 0)).unwrap();
    assert_eq!((sum.to_copy, sum.in_sync), (4, 0), "{sum:?}");
    let mut keys: Vec<String> = Suite::bodies(&s.receive(&s.queue))
        .iter()
        .map(|j| j["key"].as_str().unwrap().to_string())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys, ["a", "b", "c", "d"]);
}

/// A source in the stack's own account (no ObjectSourceCredentialSecret): the functions read
/// it with their roles and copy server-side (CopyObject, UploadPartCopy), which needs
/// s3:GetObject on the source object beside s3:PutObject on the destination.
#[test]
fn a_same_account_source_is_read_with_the_roles_and_copied_server_side() {
    let s = Suite::start("objects_aws-a_same_account_source_is_read_with_the_roles");
    let big = data(16 * MIB + 99, 5);
    s.put("in/big.bin", &big);
    s.put("in/small.txt", b"hello");
    let f = s.function(&[("SOURCE_SECRET", "")]);
    let sum = s.rt.block_on(f.diff(Default::default(), 0)).unwrap();
    assert_eq!(sum.to_copy, 2, "{sum:?}");
    let ev = s.receive(&s.queue);
    s.handled(&f, ev.clone());
    s.ack(&s.queue, &ev, &[]);
    assert_eq!(s.get("dst", "out/small.txt").unwrap(), b"hello");
    let parts = s.receive(&s.queue);
    assert_eq!(parts.records.len(), 4, "16 MiB in 5 MiB parts");
    s.handled(&f, parts.clone());
    s.ack(&s.queue, &parts, &[]);
    s.completes(&f, "big.bin", &big);
    let used = s.iam.usage();
    assert!(
        used["TransferObjectRole"].1.contains("s3:GetObject"),
        "the copies read the source as the role: {used:?}"
    );
}

/// Copies encrypted with a customer-managed key (ObjectDestKmsKeyArn): the parts and the
/// completion of a multipart upload need kms:GenerateDataKey and kms:Decrypt on that key, for
/// transfer-object (which opens the upload and writes the parts) and check-multipart (which
/// completes it).
#[test]
fn a_big_object_into_a_kms_destination_completes_with_the_roles_key_permissions() {
    let s = Suite::start("objects_aws-a_big_object_into_a_kms_destination");
    let key = s.iam.kms_key(REGION);
    let big = data(11 * MIB + 5, 2);
    s.put("in/big.bin", &big);
    let f = s.function(&[("KMS_KEY", key.as_str())]);
    s.rt.block_on(f.diff(Default::default(), 0)).unwrap();
    let ev = s.receive(&s.queue);
    s.handled(&f, ev.clone());
    s.ack(&s.queue, &ev, &[]);
    let parts = s.receive(&s.queue);
    assert_eq!(parts.records.len(), 3, "11 MiB in 5 MiB parts");
    s.handled(&f, parts.clone());
    s.ack(&s.queue, &parts, &[]);
    s.completes(&f, "big.bin", &big);
    let head =
        s.rt.block_on(s.s3.head_object().bucket("dst").key("out/big.bin").send())
            .unwrap();
    assert_eq!(head.ssekms_key_id(), Some(key.as_str()));
}

#[test]
fn an_s3_event_whose_first_handling_failed_is_applied_when_sqs_delivers_it_again() {
    let s = Suite::start(
        "an_s3_event_whose_first_handling_failed_is_applied_when_sqs_delivers_it_again",
    );
    s.put("in/late.txt", b"arrives on the second delivery");
    // The destination bucket does not exist yet: the first handling fails.
    let f = s.function(&[("DEST_BUCKET", "dst-later")]);
    let body = serde_json::json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": REGION,
        "eventTime": "2026-11-23T12:00:00.000Z", "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "EXAMPLE"}, "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {},
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": "src", "arn": "arn:aws:s3:::src"},
               "object": {"key": "in/late.txt", "size": 30, "sequencer": "00000000000000A1"}}}]})
    .to_string();
    let deliver = || {
        let ev: SqsEvent = serde_json::from_value(serde_json::json!({"Records": [
            {"messageId": "m1", "body": body, "attributes": {}, "messageAttributes": {}}]}))
        .unwrap();
        s.rt.block_on(f.transfer(ev)).unwrap()
    };
    let first = deliver();
    assert_eq!(first.batch_item_failures.len(), 1, "{first:?}");
    s.rt.block_on(aws_fixtures::bucket(&s.conf, "dst-later"));
    // SQS delivers the same message again: its sequencer was claimed by the failed try.
    let second = deliver();
    assert!(second.batch_item_failures.is_empty(), "{second:?}");
    assert_eq!(
        s.get("dst-later", "out/late.txt").unwrap(),
        b"arrives on the second delivery"
    );
}

/// The source is overwritten after its object job split it into part jobs: the part
/// copies are pinned to the listed ETag, so the strict rig answers 412; the upload is
/// aborted, the object is planned again from the new version, and check-multipart
/// completes that one whole. No object is made of parts of two versions.
#[test]
fn parts_of_an_object_overwritten_after_its_plan_never_complete_into_a_torn_object() {
    let s = Suite::start(
        "parts_of_an_object_overwritten_after_its_plan_never_complete_into_a_torn_object",
    );
    let (v1, v2) = (data(16 * MIB + 99, 1), data(16 * MIB + 99, 2));
    s.put("in/big.bin", &v1);
    let strict = s.strict();
    let f = s.function(&[
        ("SOURCE_ENDPOINT", strict.endpoint()),
        ("DEST_ENDPOINT", strict.endpoint()),
        ("COPY_MODE", "server"),
    ]);
    s.rt.block_on(f.diff(Default::default(), 0)).unwrap();
    let ev = s.receive(&s.queue);
    s.handled(&f, ev.clone());
    s.ack(&s.queue, &ev, &[]);
    let old_parts = s.receive(&s.queue);
    assert_eq!(old_parts.records.len(), 4);
    s.ack(&s.queue, &old_parts, &[]);
    // Part 1 is copied from v1, then the source becomes v2.
    s.handled(&f, Suite::batch(&old_parts.records[..1]));
    s.put("in/big.bin", &v2);
    s.handled(&f, Suite::batch(&old_parts.records[1..]));
    assert!(strict.refused.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert_eq!(s.open_uploads(), 0, "the torn upload is aborted");
    let again = s.receive(&s.queue);
    let jobs = Suite::bodies(&again);
    assert_eq!(jobs.len(), 1, "the object is planned again: {jobs:?}");
    assert_eq!(
        jobs[0]["etag"].as_str(),
        Some(hex::encode(Md5::digest(&v2)).as_str()),
        "{jobs:?}"
    );
    // Nothing was completed or recorded from the old plan; the new one completes v2.
    let sum = s.rt.block_on(f.check(serde_json::json!({}))).unwrap();
    assert_eq!(sum.completed, 0, "{sum:?}");
    s.handled(&f, again.clone());
    s.ack(&s.queue, &again, &[]);
    let parts = s.receive(&s.queue);
    assert_eq!(parts.records.len(), 4);
    s.handled(&f, parts.clone());
    s.ack(&s.queue, &parts, &[]);
    s.completes(&f, "big.bin", &v2);
}

/// "Stuck" is measured from the last finished part, not from the upload's start: an
/// upload begun hours ago whose parts keep finishing is left alone; once no part has
/// finished for longer than STUCK_AFTER_MINUTES it is aborted and planned again.
#[test]
fn an_upload_that_makes_progress_is_never_aborted_as_stuck() {
    let s = Suite::start("an_upload_that_makes_progress_is_never_aborted_as_stuck");
    let big = data(16 * MIB + 5, 4);
    s.put("in/big.bin", &big);
    let f = s.function(&[("STUCK_AFTER_MINUTES", "60")]);
    s.rt.block_on(f.diff(Default::default(), 0)).unwrap();
    let ev = s.receive(&s.queue);
    s.handled(&f, ev.clone());
    s.ack(&s.queue, &ev, &[]);
    let parts = s.receive(&s.queue);
    assert_eq!(parts.records.len(), 4);
    s.ack(&s.queue, &parts, &[]);
    let ddb = aws_sdk_dynamodb::Client::new(&s.conf);
    let set = |sk: &str, attr: &str, hours_ago: i64| {
        let t = (chrono::Utc::now() - chrono::Duration::hours(hours_ago)).to_rfc3339();
        s.rt.block_on(
            ddb.update_item()
                .table_name("uploads")
                .key(
                    "pk",
                    aws_sdk_dynamodb::types::AttributeValue::S("s3://dst/out/big.bin".into()),
                )
                .key("sk", aws_sdk_dynamodb::types::AttributeValue::S(sk.into()))
                .update_expression("SET #a = :t")
                .expression_attribute_names("#a", attr)
                .expression_attribute_values(":t", aws_sdk_dynamodb::types::AttributeValue::S(t))
                .send(),
        )
        .unwrap();
    };
    // Begun three hours ago; part 1 has just finished.
    set("upload", "started_at", 3);
    s.handled(&f, Suite::batch(&parts.records[..1]));
    let sum = s.rt.block_on(f.check(serde_json::json!({}))).unwrap();
    assert_eq!((sum.waiting, sum.replanned), (1, 0), "{sum:?}");
    assert_eq!(s.open_uploads(), 1, "a progressing upload stays open");
    // No part for two hours: now it is stuck.
    set("part#00001", "done_at", 2);
    let sum = s.rt.block_on(f.check(serde_json::json!({}))).unwrap();
    assert_eq!((sum.waiting, sum.replanned), (0, 1), "{sum:?}");
    assert_eq!(s.open_uploads(), 0);
}

/// A job that failed comes back after RETRY_DELAY_SECONDS (doubled per receive), not after
/// the queue's whole visibility timeout.
#[test]
fn a_failed_job_comes_back_soon_not_after_the_visibility_timeout() {
    let s = Suite::start("a_failed_job_comes_back_soon_not_after_the_visibility_timeout");
    // The source object of this job does not exist: the job fails.
    s.rt.block_on(
        s.sqs
            .send_message()
            .queue_url(&s.queue)
            .message_body(r#"{"kind":"object","run":"r1","key":"gone.txt","size":5,"etag":null}"#)
            .send(),
    )
    .unwrap();
    let f = s.function(&[("RETRY_DELAY_SECONDS", "0")]);
    // Received with a visibility of 60 s (see `receive`): without a shorter one it would
    // stay hidden for the rest of the test.
    let ev = s.receive(&s.queue);
    assert_eq!(ev.records.len(), 1);
    let r = s.rt.block_on(f.transfer(ev)).unwrap();
    assert_eq!(r.batch_item_failures.len(), 1, "{r:?}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let again = s.receive(&s.queue);
    assert_eq!(
        again.records.len(),
        1,
        "the failed job is visible again at once"
    );
}

/// S3 keys go up to 1,024 bytes; the status record's sort key may not be longer than
/// that, so the record of such an object is still written (moto enforces the limit).
#[test]
fn an_object_with_a_key_of_a_thousand_bytes_is_copied_and_recorded() {
    let s = Suite::start("an_object_with_a_key_of_a_thousand_bytes_is_copied_and_recorded");
    let name = format!("{}.txt", "n".repeat(1000));
    s.put(&format!("in/{name}"), b"long name");
    let f = s.function(&[]);
    s.rt.block_on(f.diff(Default::default(), 0)).unwrap();
    let ev = s.receive(&s.queue);
    assert_eq!(ev.records.len(), 1);
    s.handled(&f, ev);
    assert_eq!(s.get("dst", &format!("out/{name}")).unwrap(), b"long name");
    let ddb = aws_sdk_dynamodb::Client::new(&s.conf);
    let items =
        s.rt.block_on(ddb.scan().table_name("status").send())
            .unwrap();
    let rec = items
        .items()
        .iter()
        .find(|i| {
            i.get("source")
                .and_then(|v| v.as_s().ok())
                .is_some_and(|v| v.ends_with(&name))
        })
        .expect("the copy is recorded with its source URL");
    assert_eq!(rec["status"].as_s().unwrap(), "copied");
    assert!(rec["sk"].as_s().unwrap().len() <= 1024);
}

/// The AWS twin of the CLI's convergence test: a source uploaded in 5 MiB parts copied in
/// 7 MiB parts keeps another ETag; diff-objects with COMPARE=etag queues it once, never
/// again after the verified copy. A duplicate of the job writes nothing.
#[test]
fn diff_objects_with_compare_etag_converges_and_a_duplicate_job_writes_nothing() {
    let s =
        Suite::start("diff_objects_with_compare_etag_converges_and_a_duplicate_job_writes_nothing");
    let body = data(10 * MIB + 1, 5);
    s.rt.block_on(hub_tests::aws_fixtures::multipart_object(
        &s.s3,
        "src",
        "in/big.bin",
        &body,
        5 * MIB,
    ));
    let f = s.function(&[("COMPARE", "etag"), ("PART_SIZE", &(7 * MIB).to_string())]);
    let sum = s.rt.block_on(f.diff(Default::default(), 0)).unwrap();
    assert_eq!((sum.to_copy, sum.in_sync), (1, 0), "{sum:?}");
    let job = s.receive(&s.queue);
    s.handled(&f, job.clone());
    s.ack(&s.queue, &job, &[]);
    let parts = s.receive(&s.queue);
    assert_eq!(parts.records.len(), 2, "10 MiB in 7 MiB parts");
    s.handled(&f, parts.clone());
    s.ack(&s.queue, &parts, &[]);
    s.completes(&f, "big.bin", &body);
    // The next hour: in sync, nothing queued.
    let sum = s.rt.block_on(f.diff(Default::default(), 0)).unwrap();
    assert_eq!((sum.to_copy, sum.in_sync), (0, 1), "{sum:?}");
    assert!(s.receive(&s.queue).records.is_empty());
    // The first job delivered again (SQS delivers at least once): no upload, no parts.
    s.handled(&f, job);
    assert_eq!(s.open_uploads(), 0, "no upload opened for what is there");
    assert!(s.receive(&s.queue).records.is_empty(), "no part job queued");
}

/// The object suite with SSE-KMS on both sides (a source and a destination whose default
/// encryption is KMS, behind the strict rig, where no ETag is an MD5): a small object and
/// a big one in parts are copied and verified, check-multipart completes the big one, and
/// the next diff with COMPARE=etag queues nothing.
#[test]
fn the_object_suite_copies_and_verifies_sse_kms_objects_and_converges() {
    let s = Suite::start("the_object_suite_copies_and_verifies_sse_kms_objects_and_converges");
    for bucket in ["src", "dst"] {
        s.rt.block_on(aws_fixtures::kms_by_default(&s.s3, bucket));
    }
    let (small, big) = (data(3000, 1), data(11 * MIB, 2));
    s.put("in/small.txt", &small);
    s.put("in/big.bin", &big);
    let strict = s.strict();
    for mode in ["server", "stream"] {
        let dest_prefix = format!("out-{mode}/");
        let f = s.function(&[
            ("SOURCE_ENDPOINT", strict.endpoint()),
            ("DEST_ENDPOINT", strict.endpoint()),
            ("DEST_PREFIX", dest_prefix.as_str()),
            ("COPY_MODE", mode),
            ("COMPARE", "etag"),
        ]);
        let sum = s.rt.block_on(f.diff(Default::default(), 0)).unwrap();
        assert_eq!((sum.to_copy, sum.in_sync), (2, 0), "{mode}: {sum:?}");
        let jobs = s.receive(&s.queue);
        s.handled(&f, jobs.clone());
        s.ack(&s.queue, &jobs, &[]);
        let parts = s.receive(&s.queue);
        assert_eq!(parts.records.len(), 3, "{mode}: 11 MiB in 5 MiB parts");
        s.handled(&f, parts.clone());
        s.ack(&s.queue, &parts, &[]);
        let done = s.rt.block_on(f.check(serde_json::json!({}))).unwrap();
        assert_eq!((done.completed, done.failed), (1, 0), "{mode}: {done:?}");
        for (key, body) in [("small.txt", &small), ("big.bin", &big)] {
            let got = s.get("dst", &format!("{dest_prefix}{key}")).unwrap();
            assert_eq!(Md5::digest(&got), Md5::digest(body), "{mode}: {key}");
        }
        let again = s.rt.block_on(f.diff(Default::default(), 0)).unwrap();
        assert_eq!((again.to_copy, again.in_sync), (0, 2), "{mode}: {again:?}");
        assert!(s.receive(&s.queue).records.is_empty(), "{mode}");
    }
}

/// Finishing an upload of many parts deletes its part items in batches of 25 (the
/// BatchWriteItem limit), every one of them, and keeps other uploads' items.
#[test]
fn finishing_an_upload_of_sixty_parts_leaves_no_part_item() {
    use hub_core::objects::uploads::{DynamoLedger, Upload, UploadLedger as _};
    let s = Suite::start("finishing_an_upload_of_sixty_parts_leaves_no_part_item");
    let ddb = aws_sdk_dynamodb::Client::new(&s.conf);
    let ledger = DynamoLedger {
        client: ddb.clone(),
        table: "uploads".into(),
    };
    let upload = |dest: &str, id: &str| Upload {
        dest: dest.into(),
        key: "k".into(),
        upload_id: id.into(),
        size: 60 * 5 * MIB as u64,
        source_etag: Some("e".into()),
        part_size: 5 * MIB as u64,
        parts: 60,
        started_at: chrono::Utc::now(),
        checksum: Default::default(),
        task: None,
        run: None,
    };
    let (a, b) = (
        upload("s3://dst/out/a", "u-a"),
        upload("s3://dst/out/b", "u-b"),
    );
    s.rt.block_on(async {
        ledger.begin(&a).await.unwrap();
        ledger.begin(&b).await.unwrap();
        for n in 1..=60 {
            ledger.part_done(&a, n, &format!("etag{n}")).await.unwrap();
        }
        ledger.part_done(&b, 1, "other").await.unwrap();
        ledger.finish(&a).await.unwrap();
    });
    let items =
        s.rt.block_on(ddb.scan().table_name("uploads").send())
            .unwrap();
    let mut keys: Vec<(String, String)> = items
        .items()
        .iter()
        .map(|i| {
            (
                i["pk"].as_s().unwrap().clone(),
                i["sk"].as_s().unwrap().clone(),
            )
        })
        .filter(|(_, sk)| sk == "upload" || sk.starts_with("part#"))
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            ("s3://dst/out/b".to_string(), "part#00001".to_string()),
            ("s3://dst/out/b".to_string(), "upload".to_string())
        ]
    );
}

/// A scheduled diff does not start while the previous run's jobs still fill the queue: it
/// says why, queues nothing and writes no run record; once the queue drains it runs.
#[test]
fn a_diff_waits_while_the_previous_runs_jobs_fill_the_queue() {
    let s = Suite::start("a_diff_waits_while_the_previous_runs_jobs_fill_the_queue");
    for i in 0..3 {
        s.put(&format!("in/k{i}"), b"x");
    }
    let f = s.function(&[("MAX_QUEUED_JOBS", "3")]);
    let first = s.rt.block_on(f.diff(Default::default(), 0)).unwrap();
    assert_eq!(first.to_copy, 3, "{first:?}");
    // The three jobs are still queued: the next hour's diff waits.
    let waited = s.rt.block_on(f.diff(Default::default(), 0)).unwrap();
    assert!(
        waited
            .deferred
            .as_deref()
            .is_some_and(|w| w.contains("3 jobs are still queued")),
        "{waited:?}"
    );
    assert_eq!(
        (waited.to_copy, waited.run_id.as_str()),
        (0, ""),
        "{waited:?}"
    );
    let jobs = s.receive(&s.queue);
    assert_eq!(jobs.records.len(), 3, "nothing was queued a second time");
    s.ack(&s.queue, &jobs, &[]);
    let again = s.rt.block_on(f.diff(Default::default(), 0)).unwrap();
    assert!(again.deferred.is_none() && again.to_copy == 3, "{again:?}");
}

/// The strict S3 proxy in front of this suite's moto, logging every write it passes on
/// (the request line of each PUT, POST and DELETE answered with a success).
fn logged_strict(
    s: &Suite,
) -> (
    hub_tests::s3_rig::StrictS3,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = log.clone();
    let strict = hub_tests::s3_rig::StrictS3::start_signed(
        &s.iam.moto.endpoint,
        std::sync::Arc::new(move |head: &str, status, body| {
            let line = head.lines().next().unwrap_or("").to_string();
            if ["PUT ", "POST ", "DELETE "]
                .iter()
                .any(|m| line.starts_with(m))
                && status < 300
            {
                seen.lock().unwrap().push(line);
            }
            (status, vec![], body)
        }),
        s.iam.admin_keys(),
    );
    (strict, log)
}

/// SQS delivers at least once: an object job handled twice queues its part jobs twice, and
/// each part job may come again. Every part is uploaded once all the same (a part the
/// ledger has is not written again), and the object completes into the source.
#[test]
fn part_jobs_delivered_twice_upload_each_part_once() {
    let s = Suite::start("objects_aws-part_jobs_delivered_twice_upload_each_part_once");
    let big = data(16 * MIB + 777, 4);
    s.put("in/big.bin", &big);
    let (strict, log) = logged_strict(&s);
    let f = s.function(&[("DEST_ENDPOINT", strict.endpoint())]);
    s.rt.block_on(f.diff(Default::default(), 0)).unwrap();
    let job = s.receive(&s.queue);
    assert_eq!(job.records.len(), 1);
    s.handled(&f, job.clone());
    s.handled(&f, job.clone());
    s.ack(&s.queue, &job, &[]);
    let parts = s.receive(&s.queue);
    assert!(parts.records.len() >= 4, "{}", parts.records.len());
    s.handled(&f, parts.clone());
    s.handled(&f, parts.clone());
    s.ack(&s.queue, &parts, &[]);
    s.completes(&f, "big.bin", &big);
    let writes = log.lock().unwrap().clone();
    let count = |what: &str| writes.iter().filter(|l| l.contains(what)).count();
    assert_eq!(count("?uploads"), 1, "one upload: {writes:#?}");
    assert_eq!(count("UploadPart"), 4, "each of 4 parts once: {writes:#?}");
}

/// A delete event delivered twice deletes once: the second finds nothing at the
/// destination and writes nothing (on a versioned bucket it would add a delete marker).
#[test]
fn a_delete_event_delivered_twice_deletes_once() {
    let s = Suite::start("objects_aws-a_delete_event_delivered_twice_deletes_once");
    let (strict, log) = logged_strict(&s);
    let f = s.function(&[
        ("DELETE_ON_EVENTS", "true"),
        ("DEST_ENDPOINT", strict.endpoint()),
    ]);
    s.rt.block_on(
        s.s3.put_object()
            .bucket("dst")
            .key("out/gone")
            .body(ByteStream::from_static(b"stale"))
            .send(),
    )
    .unwrap();
    let note = serde_json::json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": REGION,
        "eventTime": "2026-11-23T12:00:00.000Z", "eventName": "ObjectRemoved:Delete",
        "userIdentity": {"principalId": "EXAMPLE"}, "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {},
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": "src", "arn": "arn:aws:s3:::src"},
               "object": {"key": "in/gone", "size": 0, "sequencer": "00000000000000B1"}}}]})
    .to_string();
    for i in 0..2 {
        let ev: SqsEvent = serde_json::from_value(serde_json::json!({"Records": [
            {"messageId": format!("d{i}"), "body": note, "attributes": {}, "messageAttributes": {}}
        ]}))
        .unwrap();
        s.handled(&f, ev);
    }
    assert!(s.get("dst", "out/gone").is_none());
    let writes = log.lock().unwrap().clone();
    assert_eq!(
        writes.iter().filter(|l| l.starts_with("DELETE ")).count(),
        1,
        "{writes:#?}"
    );
}

/// transfer-object and check-multipart verify by checksum too. Server-side copies into a
/// KMS destination (its ETags are not MD5s) where what S3 stores is not the source's bytes
/// (the strict rig spoils a CopyObject and the UploadPartCopy parts): the copy's CRC32C is
/// not the source's, so the small object is recorded as failed (DigestMismatch) and its
/// job fails, and the big one is never completed (its parts do not add up to the source's
/// CRC32C; the upload is aborted). Before, both were recorded as copied.
#[test]
fn server_side_copies_that_differ_from_the_source_checksum_fail_on_aws_too() {
    let s = Suite::start("objects_aws-server_side_copies_that_differ_from_the_source_checksum");
    let key = s.iam.kms_key(REGION);
    let strict = s.strict();
    let via_rig = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&s.conf)
            .endpoint_url(strict.endpoint())
            .force_path_style(true)
            .build(),
    );
    let (one, big) = (data(4000, 1), data(11 * MIB + 5, 2));
    for (k, body) in [("in/one.bin", &one), ("in/big.bin", &big)] {
        s.rt.block_on(
            via_rig
                .put_object()
                .bucket("src")
                .key(k)
                .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32C)
                .body(ByteStream::from(body.to_vec()))
                .send(),
        )
        .unwrap();
    }
    {
        let mut faults = strict.faults();
        faults.corrupt_copies.insert("dst/out/one.bin".into());
        faults.corrupt_copies.insert("dst/out/big.bin".into());
    }
    let f = s.function(&[
        ("SOURCE_ENDPOINT", strict.endpoint()),
        ("DEST_ENDPOINT", strict.endpoint()),
        ("COPY_MODE", "server"),
        ("KMS_KEY", key.as_str()),
    ]);
    let run = s.rt.block_on(f.diff(Default::default(), 0)).unwrap();
    let ev = s.receive(&s.queue);
    assert_eq!(ev.records.len(), 2);
    let r = s.rt.block_on(f.transfer(ev.clone())).unwrap();
    assert_eq!(r.batch_item_failures.len(), 1, "one.bin fails: {r:?}");
    s.ack(&s.queue, &ev, &[]);
    let parts = s.receive(&s.queue);
    assert_eq!(parts.records.len(), 3, "11 MiB in 5 MiB parts");
    s.handled(&f, parts.clone());
    s.ack(&s.queue, &parts, &[]);
    let sum = s.rt.block_on(f.check(serde_json::json!({}))).unwrap();
    assert_eq!((sum.completed, sum.failed), (0, 1), "{sum:?}");
    assert_eq!(s.open_uploads(), 0, "the upload is aborted");
    assert!(
        s.get("dst", "out/big.bin").is_none(),
        "nothing was completed"
    );
    use hub_core::status::StatusStore as _;
    let store = hub_core::status::dynamodb::DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&s.conf),
        "status",
    );
    let (_, items) =
        s.rt.block_on(store.get_run(Some(&run.run_id)))
            .unwrap()
            .unwrap();
    let rec = items
        .iter()
        .find(|i| i.source.ends_with("/one.bin"))
        .expect("one.bin is recorded");
    assert_eq!(rec.status, hub_core::status::Status::Failed, "{rec:?}");
    let err = rec.error.as_ref().unwrap();
    assert_eq!(
        err.class,
        hub_core::retry::ErrorClass::DigestMismatch,
        "{err:?}"
    );
    assert!(err.message.contains("CRC32C"), "{err:?}");
}

/// On AWS too, a multipart copy keeps the source's checksum: a CRC64NVME full-object source
/// becomes a FULL_OBJECT CRC64NVME upload (the algorithm kept with the upload in the
/// DynamoDB ledger, so check-multipart completes with it), a composite SHA-256 source a
/// COMPOSITE SHA-256 upload in the source's parts; both land with checksums equal to the
/// source's, in both copy modes, and the next diff with COMPARE=checksum queues nothing.
/// Before, both were FULL_OBJECT CRC32C uploads compared with nothing of the source's.
#[test]
fn multipart_copies_on_aws_keep_a_crc64nvme_or_composite_sources_checksum() {
    use hub_core::objects::uploads::UploadLedger as _;
    for mode in ["server", "stream"] {
        let s = Suite::start(&format!(
            "objects_aws-multipart_copies_keep_the_sources_checksum-{mode}"
        ));
        let strict = s.strict();
        let via_rig = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&s.conf)
                .endpoint_url(strict.endpoint())
                .force_path_style(true)
                .build(),
        );
        let nvme = data(11 * MIB + 5, 1);
        s.rt.block_on(
            via_rig
                .put_object()
                .bucket("src")
                .key("in/nvme.bin")
                .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc64Nvme)
                .body(ByteStream::from(nvme.clone()))
                .send(),
        )
        .unwrap();
        let (a, b) = (data(5 * MIB, 2), data(2 * MIB, 3));
        super::checksums::put_composite(
            &s.rt,
            &via_rig,
            "src",
            "in/sha.bin",
            &[&a, &b],
            aws_sdk_s3::types::ChecksumAlgorithm::Sha256,
        );
        let vars = [
            ("SOURCE_ENDPOINT", strict.endpoint()),
            ("DEST_ENDPOINT", strict.endpoint()),
            ("COPY_MODE", mode),
        ];
        let f = s.function(&vars);
        s.rt.block_on(f.diff(Default::default(), 0)).unwrap();
        let ev = s.receive(&s.queue);
        assert_eq!(ev.records.len(), 2, "{mode}");
        s.handled(&f, ev.clone());
        s.ack(&s.queue, &ev, &[]);
        let ledger = hub_core::objects::uploads::DynamoLedger {
            client: aws_sdk_dynamodb::Client::new(&s.conf),
            table: "uploads".into(),
        };
        for (key, sum) in [("nvme.bin", "CRC64NVME"), ("sha.bin", "SHA256/COMPOSITE")] {
            let u =
                s.rt.block_on(ledger.find(&format!("s3://dst/out/{key}")))
                    .unwrap()
                    .unwrap_or_else(|| panic!("{mode}: {key} has an open upload"));
            assert_eq!(u.checksum.to_text(), sum, "{mode}: {key}");
        }
        let parts = s.receive(&s.queue);
        assert_eq!(
            parts.records.len(),
            5,
            "{mode}: 3 parts of 5 MiB, and the source's 2"
        );
        s.handled(&f, parts.clone());
        s.ack(&s.queue, &parts, &[]);
        let sum = s.rt.block_on(f.check(serde_json::json!({}))).unwrap();
        assert_eq!((sum.completed, sum.failed), (2, 0), "{mode}: {sum:?}");
        let head = |bucket: &str, key: &str| {
            let h =
                s.rt.block_on(
                    via_rig
                        .head_object()
                        .bucket(bucket)
                        .key(key)
                        .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
                        .send(),
                )
                .unwrap();
            super::checksums::head_sum(&h)
        };
        for (key, algo, n) in [
            ("nvme.bin", "CRC64NVME", None),
            ("sha.bin", "SHA256", Some(2)),
        ] {
            let src = head("src", &format!("in/{key}"));
            assert_eq!((src.0.as_str(), src.2), (algo, n), "{mode}: {key}");
            assert_eq!(head("dst", &format!("out/{key}")), src, "{mode}: {key}");
        }
        assert_eq!(s.get("dst", "out/nvme.bin").unwrap(), nvme, "{mode}");
        let again = s.function(&[vars[0], vars[1], vars[2], ("COMPARE", "checksum")]);
        let sum = s.rt.block_on(again.diff(Default::default(), 0)).unwrap();
        assert_eq!((sum.to_copy, sum.in_sync), (0, 2), "{mode}: {sum:?}");
        assert!(s.receive(&s.queue).records.is_empty(), "{mode}");
    }
}

/// An objects task as the console saves it: `source`, `dest` and the fields given, the
/// rest the CLI's defaults.
pub(crate) fn objects_task(
    name: &str,
    source: &str,
    dest: &str,
    extra: &[(&str, &str)],
) -> hub_core::tasks::Task {
    use hub_core::tasks::{Kind, Task, default_fields};
    let mut f = default_fields(Kind::Objects);
    f.insert("source".into(), source.into());
    f.insert("dest".into(), dest.into());
    for (k, v) in extra {
        f.insert(k.to_string(), v.to_string());
    }
    Task::from_fields(name, Kind::Objects, &f, chrono::Utc::now()).unwrap()
}

/// A run of an objects task on AWS (`{"task": NAME}`, as the console's run now and the
/// task's schedule start it): diff-objects reads the task from the tasks table and the run
/// copies what the task selects, where it says, with its options (here compare by ETag
/// and its own part size and threshold), not what the stack's parameters say; its jobs
/// and its upload carry the task and the run, so transfer-object and check-multipart (which
/// have no access to the tasks table) copy and complete as the task, and every object is
/// recorded under the task's run. The run record carries the task's name. A task naming a bucket the roles cannot reach is refused by name.
#[test]
fn an_objects_task_run_copies_what_the_task_selects_not_the_stack_parameters() {
    use hub_core::tasks::store::TaskStore as _;
    let s = Suite::start(
        "objects_aws-an_objects_task_run_copies_what_the_task_selects_not_the_stack_parameters",
    );
    s.rt.block_on(aws_fixtures::tasks_table(&s.conf, "tasks"));
    let store = hub_core::aws::task_store::DynamoTaskStore::new(
        aws_sdk_dynamodb::Client::new(&s.conf),
        "tasks",
        "status",
    );
    // The stack selects in/ → out/; the task selects task-in/ → task-out/.
    s.put("in/stack.txt", b"the stack's object");
    let big = data(7 * MIB + 11, 5);
    let objects: Vec<(&str, Vec<u8>)> = vec![
        ("same-size.txt", b"the task's bytes".to_vec()),
        ("new.txt", b"another of the task's objects".to_vec()),
        ("big.bin", big.clone()),
    ];
    for (k, b) in &objects {
        s.put(&format!("task-in/{k}"), b);
    }
    // Same size, other bytes: in sync by size (the stack's COMPARE), not by ETag (the task's).
    s.rt.block_on(
        s.s3.put_object()
            .bucket("dst")
            .key("task-out/same-size.txt")
            .body(ByteStream::from(b"THE TASK'S BYTES".to_vec()))
            .send(),
    )
    .unwrap();
    let task = objects_task(
        "nightly-objects",
        "s3://src/task-in/",
        "s3://dst/task-out/",
        &[
            ("compare", "etag"),
            ("part_size", "5MiB"),
            ("multipart_threshold", "6MiB"),
        ],
    );
    s.rt.block_on(store.create(&task)).unwrap();
    hub_core::aws::metrics::capture();
    // The stack's own threshold would copy big.bin in one request.
    let f = s.function(&[
        ("TASKS_TABLE", "tasks"),
        ("MULTIPART_THRESHOLD", &(64 * MIB).to_string()),
    ]);
    let input: hub_core::objects::suite::DiffRequest = serde_json::from_value(
        serde_json::json!({"task": "nightly-objects", "run_id": "run-nightly-1"}),
    )
    .unwrap();
    let sum =
        s.rt.block_on(f.diff(input, 0))
            .unwrap_or_else(|e| panic!("{e:?}; refused: {:?}", s.iam.denied()));
    assert_eq!(sum.run_id, "run-nightly-1", "the run the console named");
    assert_eq!((sum.to_copy, sum.in_sync), (3, 0), "{sum:?}");
    // transfer-object: the object jobs, then the big object's part jobs.
    let mut parts = 0;
    for round in 0..5 {
        let ev = s.receive(&s.queue);
        if ev.records.is_empty() {
            break;
        }
        for b in Suite::bodies(&ev) {
            let text = b.to_string();
            assert!(
                !text.contains("testing") && !text.contains("src-keys"),
                "no credential on a job: {text}"
            );
            assert_eq!(b["task"]["name"], "nightly-objects", "{text}");
            if b["kind"] == "part" {
                parts += 1;
            }
        }
        assert!(round < 4, "jobs keep coming");
        s.handled(&f, ev.clone());
        s.ack(&s.queue, &ev, &[]);
    }
    assert_eq!(parts, 2, "7 MiB in the task's 5 MiB parts");
    s.completes_at(&f, "task-out/big.bin", &big);
    for (k, b) in &objects {
        assert_eq!(
            s.get("dst", &format!("task-out/{k}")).as_deref(),
            Some(b.as_slice()),
            "the task's {k} at the task's destination"
        );
    }
    let listed =
        s.rt.block_on(s.s3.list_objects_v2().bucket("dst").prefix("out/").send())
            .unwrap();
    assert_eq!(
        listed.key_count(),
        Some(0),
        "the stack's selection was not what ran"
    );
    assert_eq!(
        s.rt.block_on(store.task_of("run-nightly-1"))
            .unwrap()
            .as_deref(),
        Some("nightly-objects"),
        "the run carries its task's name"
    );
    let items =
        s.rt.block_on(store.items(
            "run-nightly-1",
            &hub_core::tasks::store::ItemPage {
                failed_only: false,
                after: None,
                limit: 100,
            },
        ))
        .unwrap();
    let mut sources: Vec<&str> = items.iter().map(|i| i.source.as_str()).collect();
    sources.sort();
    assert_eq!(
        sources,
        [
            "s3://src/task-in/big.bin",
            "s3://src/task-in/new.txt",
            "s3://src/task-in/same-size.txt"
        ],
        "every copy recorded under the task's run, the one check-multipart completed too \
         (before, big.bin went under a run of its own, multipart-<date>, not on the task's page)"
    );
    let big_item = items
        .iter()
        .find(|i| i.source.ends_with("/big.bin"))
        .unwrap();
    assert_eq!(big_item.status, hub_core::status::Status::Copied);
    assert_eq!(big_item.bytes, big.len() as u64);

    // The functions' metrics (EMF lines, as the spec says): the task's objects and bytes,
    // and the upload open while its parts were done.
    let lines = hub_core::aws::metrics::captured();
    let mut sums: HashMap<String, u64> = HashMap::new();
    let mut open_seen = Vec::new();
    for l in &lines {
        for (ns, name, dims) in hub_core::aws::metrics::check_line(l).unwrap() {
            assert_eq!(
                (ns.as_str(), dims),
                ("TransferHub", vec!["Stack".to_string()])
            );
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let n = v[&name].as_u64().unwrap();
            if name == "OpenUploads" {
                open_seen.push(n);
            } else {
                *sums.entry(name).or_default() += n;
            }
        }
    }
    let bytes: u64 = objects.iter().map(|(_, b)| b.len() as u64).sum();
    assert_eq!(sums.get("BytesCopied"), Some(&bytes), "{lines:?}");
    assert_eq!(sums.get("ObjectsCopied"), Some(&3), "{lines:?}");
    assert_eq!(sums.get("ObjectsFailed").copied().unwrap_or(0), 0);
    assert_eq!(
        open_seen,
        [1],
        "check-multipart's pass saw the one open upload"
    );

    // A task naming a bucket the stack's roles cannot reach is refused, naming the field.
    let elsewhere = objects_task(
        "elsewhere",
        "s3://another-bucket/x/",
        "s3://dst/task-out/",
        &[("source_profile", "prod")],
    );
    s.rt.block_on(store.create(&elsewhere)).unwrap();
    let input = serde_json::from_value(serde_json::json!({"task": "elsewhere"})).unwrap();
    let err = s.rt.block_on(f.diff(input, 0)).unwrap_err();
    assert_eq!(err.class, hub_core::retry::ErrorClass::BadInput);
    assert!(
        err.message.contains("another-bucket")
            && err.message.contains("ObjectSourceBucket")
            && err.message.contains("source_profile"),
        "{}",
        err.message
    );
    assert!(s.receive(&s.queue).records.is_empty(), "nothing queued");
    assert!(s.iam.denied().is_empty(), "{:?}", s.iam.denied());
}
