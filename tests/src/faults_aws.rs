//! Helpers of the AWS half of the fault report (`faults-aws`, `scripts/faults`): the report
//! row, the object suite on IAM-enforced moto with a write log of the destination, and the
//! canary search (text, files, DynamoDB, SQS, processes).

use crate::iam::{Deployment, IamMoto};
use crate::s3_rig::StrictS3;
use crate::{Route, aws_fixtures};
use aws_lambda_events::event::sqs::SqsEvent;
use base64::Engine as _;
use hub_core::aws::functions::ObjectsFn;
use hub_core::config::Env;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One line of the report, as `scripts/faults` reads it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub scenario: String,
    pub injected: String,
    pub items: u64,
    pub survived: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub verdict: String,
}

impl Row {
    /// A row whose verdict is `pass` when `problems` is empty, else `FAIL: …` naming them.
    pub fn judged(
        scenario: &str,
        injected: &str,
        (items, survived, lost, duplicated): (u64, u64, u64, u64),
        problems: &[String],
    ) -> Self {
        Self {
            scenario: scenario.into(),
            injected: injected.into(),
            items,
            survived,
            lost,
            duplicated,
            verdict: if problems.is_empty() {
                "pass".into()
            } else {
                format!("FAIL: {}", problems.join("; "))
            },
        }
    }
}

pub const REGION: &str = "eu-west-1";
pub const MIB: usize = 1024 * 1024;

/// Writes reaching the destination bucket through the strict S3 proxy: the request line
/// (`PUT /dst/dup/a?partNumber=1&uploadId=…`) and whether it was a server-side copy.
#[derive(Clone, Default)]
pub struct WriteLog(pub Arc<Mutex<Vec<String>>>);

impl WriteLog {
    /// Writes (PUT, POST, DELETE) under `/bucket/prefix`, answered with a success.
    pub fn under(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let p = format!("/{bucket}/{prefix}");
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|u| u.starts_with(&p))
            })
            .cloned()
            .collect()
    }
}

/// The object suite of the template on IAM-enforced moto: buckets `src` and `dst`, the
/// status and uploads tables, the job queue, the source read with another account's keys
/// (secret `src-keys`), the destination reached through [`StrictS3`] whose writes are
/// logged.
pub struct ObjectSuite {
    pub iam: IamMoto,
    pub conf: aws_config::SdkConfig,
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub queue: String,
    pub dlq: String,
    pub strict: StrictS3,
    pub writes: WriteLog,
    pub rt: tokio::runtime::Runtime,
    /// The source reader's keys (an AWS access key pair held in Secrets Manager).
    pub reader_secret: String,
}

impl ObjectSuite {
    pub fn start(name: &str) -> Self {
        let iam = IamMoto::start(name);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let conf = rt.block_on(iam.admin_config(REGION));
        let sqs = aws_sdk_sqs::Client::new(&conf);
        let reader = iam.grant(
            "source-owner",
            serde_json::json!([
                {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": "arn:aws:s3:::src"},
                {"Effect": "Allow", "Action": ["s3:GetObject", "s3:GetObjectVersion", "s3:GetObjectTagging"],
                 "Resource": "arn:aws:s3:::src/*"}
            ]),
        );
        let (queue, dlq) = rt.block_on(async {
            for b in ["src", "dst"] {
                aws_fixtures::bucket(&conf, b).await;
            }
            aws_fixtures::status_table(&conf, "status").await;
            aws_fixtures::uploads_table(&conf, "uploads").await;
            aws_sdk_secretsmanager::Client::new(&conf)
                .create_secret()
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
            let dlq = sqs
                .create_queue()
                .queue_name("jobs-dlq")
                .send()
                .await
                .unwrap()
                .queue_url
                .unwrap();
            let queue = sqs
                .create_queue()
                .queue_name("jobs")
                .send()
                .await
                .unwrap()
                .queue_url
                .unwrap();
            (queue, dlq)
        });
        let writes = WriteLog::default();
        let log = writes.clone();
        let strict = StrictS3::start_signed(
            &iam.moto.endpoint,
            Arc::new(move |head: &str, status, body| {
                let line = head.lines().next().unwrap_or("").to_string();
                let is_write = ["PUT ", "POST ", "DELETE "]
                    .iter()
                    .any(|m| line.starts_with(m));
                if is_write && status < 300 {
                    let copy = crate::s3_rig::header(head, "x-amz-copy-source").is_some();
                    log.0
                        .lock()
                        .unwrap()
                        .push(format!("{line}{}", if copy { " (copy)" } else { "" }));
                }
                (status, vec![], body)
            }),
            iam.admin_keys(),
        );
        Self {
            s3: aws_sdk_s3::Client::new(&conf),
            sqs,
            conf,
            queue,
            dlq,
            strict,
            writes,
            rt,
            reader_secret: reader.secret_access_key.clone(),
            iam,
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
            ("DEST_ENDPOINT", self.strict.endpoint()),
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
            m.insert(k.to_string(), v.to_string());
        }
        m
    }

    fn deployment(&self, extra: &[(&str, &str)]) -> Deployment {
        let vars = self.vars(extra);
        let mut d = Deployment::new(REGION)
            .table("StatusTable", "status")
            .table("UploadsTable", "uploads")
            .queue("JobQueue", &self.queue)
            .queue("JobDeadLetterQueue", &self.dlq)
            .param("ObjectEvents", "true");
        for (var, param) in [
            ("SOURCE_BUCKET", "ObjectSourceBucket"),
            ("SOURCE_PREFIX", "ObjectSourcePrefix"),
            ("SOURCE_REGION", "ObjectSourceRegion"),
            ("SOURCE_ENDPOINT", "ObjectSourceEndpoint"),
            ("SOURCE_SECRET", "ObjectSourceCredentialSecret"),
            ("DEST_BUCKET", "ObjectDestBucket"),
            ("DEST_PREFIX", "ObjectDestPrefix"),
            ("DELETE_ON_EVENTS", "ObjectDeleteOnEvents"),
        ] {
            if let Some(v) = vars.get(var) {
                d = d.param(param, v);
            }
        }
        d
    }

    /// One function built as `role` (DiffObjectsRole, TransferObjectRole, CheckMultipartRole).
    pub fn function(&self, role: &str, extra: &[(&str, &str)]) -> ObjectsFn {
        let keys = self.iam.role(role, &self.deployment(extra));
        let conf = self.rt.block_on(self.iam.config(&keys, REGION));
        self.rt
            .block_on(ObjectsFn::from(Env::from_map(self.vars(extra)), conf))
            .unwrap_or_else(|e| panic!("{role}: {e}"))
    }

    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        self.rt
            .block_on(
                self.s3
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .body(body.to_vec().into())
                    .send(),
            )
            .unwrap();
    }

    pub fn delete(&self, bucket: &str, key: &str) {
        self.rt
            .block_on(self.s3.delete_object().bucket(bucket).key(key).send())
            .unwrap();
    }

    pub fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let o = self
            .rt
            .block_on(self.s3.get_object().bucket(bucket).key(key).send())
            .ok()?;
        Some(self.rt.block_on(o.body.collect()).unwrap().to_vec())
    }

    /// Everything on the job queue now, received (hidden) and deleted: each as Lambda's
    /// poller would hand it over (an SQS record).
    pub fn drain(&self) -> Vec<serde_json::Value> {
        let mut records = Vec::new();
        loop {
            let out = self
                .rt
                .block_on(
                    self.sqs
                        .receive_message()
                        .queue_url(&self.queue)
                        .max_number_of_messages(10)
                        .visibility_timeout(600)
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
                self.rt
                    .block_on(
                        self.sqs
                            .delete_message()
                            .queue_url(&self.queue)
                            .receipt_handle(m.receipt_handle().unwrap())
                            .send(),
                    )
                    .unwrap();
            }
        }
        records
    }

    /// Hands `records` to transfer-object as batches of up to 10; a record reported failed
    /// is handed again (as SQS would), up to 4 more times. Returns the records still
    /// failing at the end.
    pub fn deliver(&self, f: &ObjectsFn, records: &[serde_json::Value]) -> Vec<String> {
        let mut pending: Vec<serde_json::Value> = records.to_vec();
        for _ in 0..5 {
            let mut failed = Vec::new();
            for chunk in pending.chunks(10) {
                let ev: SqsEvent =
                    serde_json::from_value(serde_json::json!({ "Records": chunk })).unwrap();
                let r = self.rt.block_on(f.transfer(ev)).unwrap();
                let ids: Vec<String> = r
                    .batch_item_failures
                    .iter()
                    .map(|x| x.item_identifier.clone())
                    .collect();
                failed.extend(
                    chunk
                        .iter()
                        .filter(|c| ids.iter().any(|i| c["messageId"] == i.as_str()))
                        .cloned(),
                );
            }
            if failed.is_empty() {
                return Vec::new();
            }
            pending = failed;
        }
        pending
            .iter()
            .map(|r| r["body"].as_str().unwrap_or("").to_string())
            .collect()
    }

    pub fn open_uploads(&self) -> usize {
        self.rt
            .block_on(self.s3.list_multipart_uploads().bucket("dst").send())
            .unwrap()
            .uploads()
            .len()
    }
}

/// The canary and the forms it may take where it leaks: as is, base64 alone, and base64
/// of `user:canary` (an auth file or a Basic header) for each user given.
pub struct Canary {
    pub value: String,
    pub needles: Vec<(String, String)>,
}

impl Canary {
    pub fn new(users: &[&str]) -> Self {
        let value = format!("cnry{:016x}", fastrand::u64(..));
        let mut me = Self {
            value: value.clone(),
            needles: Vec::new(),
        };
        me.add("canary", &value, users);
        me
    }

    /// Searches also for `secret` (another value of a kind the rig cannot choose, such as
    /// a key moto made) under `name`.
    pub fn add(&mut self, name: &str, secret: &str, users: &[&str]) {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let raw = b64(secret);
        self.needles.push((name.into(), secret.into()));
        // Base64 of the value alone, without its padding (it may sit inside a longer text).
        self.needles
            .push((format!("base64({name})"), raw.trim_end_matches('=').into()));
        for u in users {
            let enc = b64(&format!("{u}:{secret}"));
            self.needles.push((
                format!("base64({u}:{name})"),
                enc.trim_end_matches('=').into(),
            ));
        }
    }

    /// The names of the forms found in `bytes`.
    pub fn hits(&self, bytes: &[u8]) -> Vec<String> {
        self.needles
            .iter()
            .filter(|(_, n)| !n.is_empty() && bytes.windows(n.len()).any(|w| w == n.as_bytes()))
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// Where a canary was looked for and what was found there.
#[derive(Default)]
pub struct Findings {
    pub places: Vec<(String, Vec<String>)>,
    /// Found, but where the configuration legitimately lives (explained in the row).
    pub allowed: Vec<(String, Vec<String>)>,
}

impl Findings {
    pub fn look(&mut self, canary: &Canary, place: &str, bytes: &[u8]) {
        self.places.push((place.to_string(), canary.hits(bytes)));
    }

    /// Every file under `dir` (recursively), one place per file, plus the dir itself.
    pub fn look_in_dir(&mut self, canary: &Canary, place: &str, dir: &Path) {
        let mut files = Vec::new();
        walk(dir, &mut files);
        let mut hits = Vec::new();
        for f in &files {
            if let Ok(b) = std::fs::read(f) {
                for h in canary.hits(&b) {
                    hits.push(format!("{}: {h}", f.display()));
                }
            }
        }
        self.places
            .push((format!("{place} ({} files)", files.len()), hits));
    }

    pub fn hit_places(&self) -> Vec<String> {
        self.places
            .iter()
            .filter(|(_, h)| !h.is_empty())
            .map(|(p, h)| format!("{p}: {}", h.join(", ")))
            .collect()
    }

    /// (places, clean places, places with hits).
    pub fn counts(&self) -> (u64, u64, u64) {
        let n = self.places.len() as u64;
        let bad = self.hit_places().len() as u64;
        (n, n - bad, bad)
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// The descendants of `root` now: (pid, command line, environment).
pub fn descendants(root: u32) -> Vec<(u32, Vec<u8>, Vec<u8>)> {
    let mut parent: HashMap<u32, u32> = HashMap::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let ppid = std::fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|st| {
                st.rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()
            });
        if let Some(pp) = ppid {
            parent.insert(pid, pp);
        }
    }
    let is_under = |mut p: u32| {
        for _ in 0..64 {
            match parent.get(&p) {
                Some(&pp) if pp == root => return true,
                Some(&pp) if pp > 1 => p = pp,
                _ => return false,
            }
        }
        false
    };
    parent
        .keys()
        .filter(|&&p| is_under(p))
        .map(|&p| {
            (
                p,
                std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default(),
                std::fs::read(format!("/proc/{p}/environ")).unwrap_or_default(),
            )
        })
        .collect()
}

/// Watches the processes under `root` until `done` says stop: every command line and
/// environment seen, searched for the canary. Returns (processes seen, hits in command
/// lines, hits in environments) with the program name.
pub fn watch_children(
    canary: &Canary,
    root: u32,
    done: &mut dyn FnMut() -> bool,
) -> (usize, Vec<String>, Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    let (mut cmd_hits, mut env_hits) = (Vec::new(), Vec::new());
    while !done() {
        for (pid, cmd, env) in descendants(root) {
            if cmd.is_empty() {
                continue;
            }
            let prog =
                String::from_utf8_lossy(cmd.split(|b| *b == 0).next().unwrap_or(b"")).into_owned();
            if seen.insert(pid) {
                for h in canary.hits(&cmd) {
                    cmd_hits.push(format!("{prog} (pid {pid}): {h}"));
                }
                for h in canary.hits(&env) {
                    env_hits.push(format!("{prog} (pid {pid}): {h}"));
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    (seen.len(), cmd_hits, env_hits)
}

/// Every item of every DynamoDB table, as debug text.
pub async fn dynamodb_dump(conf: &aws_config::SdkConfig) -> (usize, Vec<u8>) {
    let db = aws_sdk_dynamodb::Client::new(conf);
    let tables = db.list_tables().send().await.unwrap();
    let mut out = Vec::new();
    let mut n = 0;
    for t in tables.table_names() {
        let mut start = None;
        loop {
            let page = db
                .scan()
                .table_name(t)
                .set_exclusive_start_key(start)
                .send()
                .await
                .unwrap();
            n += page.items().len();
            out.extend_from_slice(format!("{t}: {:?}\n", page.items()).as_bytes());
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
    }
    (n, out)
}

/// Every message waiting in every queue (received and made visible again), as text.
pub async fn sqs_dump(conf: &aws_config::SdkConfig) -> (usize, Vec<u8>) {
    let sqs = aws_sdk_sqs::Client::new(conf);
    let queues = sqs.list_queues().send().await.unwrap();
    let mut out = Vec::new();
    let mut n = 0;
    for q in queues.queue_urls() {
        let got = sqs
            .receive_message()
            .queue_url(q)
            .max_number_of_messages(10)
            .visibility_timeout(0)
            .send()
            .await
            .unwrap();
        for m in got.messages() {
            n += 1;
            out.extend_from_slice(format!("{q}: {m:?}\n").as_bytes());
        }
    }
    (n, out)
}

/// A proxy in front of `upstream` (`host:port`) that holds each blob download for `delay`,
/// so copies are in flight long enough to be watched or interrupted.
pub fn slow_blobs(upstream: &str, delay: std::time::Duration) -> crate::HttpProxy {
    let up = upstream.to_string();
    let route: Route = Arc::new(move |head: &str| {
        if head.starts_with("GET /v2/") && head.contains("/blobs/") {
            std::thread::sleep(delay);
        }
        (up.clone(), head.to_string())
    });
    crate::HttpProxy::start(
        route,
        Arc::new(|_: &str, status, body| (status, Vec::new(), body)),
    )
}

/// A proxy in front of moto whose ECR `GetAuthorizationToken` answers carry the token
/// `base64("AWS:" + password)`, as ECR's do (moto's own token is fixed), so the canary is
/// also an ECR login; everything else passes as is.
pub fn ecr_token_proxy(moto: &str, password: &str) -> crate::HttpProxy {
    let up = moto.trim_start_matches("http://").to_string();
    let token = base64::engine::general_purpose::STANDARD.encode(format!("AWS:{password}"));
    crate::HttpProxy::start(
        Arc::new(move |head: &str| (up.clone(), head.to_string())),
        Arc::new(move |head: &str, status, body: Vec<u8>| {
            let is_token = crate::s3_rig::header(head, "x-amz-target")
                .is_some_and(|t| t.ends_with("GetAuthorizationToken"));
            if !is_token || status != 200 {
                return (status, Vec::new(), body);
            }
            let mut v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            if let Some(list) = v["authorizationData"].as_array_mut() {
                for d in list {
                    d["authorizationToken"] = token.clone().into();
                }
            }
            (status, Vec::new(), serde_json::to_vec(&v).unwrap())
        }),
    )
}
