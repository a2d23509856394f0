//! The handlers of the AWS object suite, over the same edges as the command line:
//! `diff-objects` (streaming diff → job queue), `transfer-object` (SQS batch: object
//! jobs, part jobs and S3 event notifications, with partial batch failures), and
//! `check-multipart` (completes uploads whose parts are all done, re-plans stuck ones,
//! aborts orphans). Status goes to the DynamoDB status table, uploads to the ledger.

use super::bucket::{Bucket, CredentialSource, DestOptions, Endpoint, parse_storage_class};
use super::diff::{self, Compare, Decision, MergeError};
use super::events::{self, EventWork};
use super::filter::Filter;
use super::jobs::{Job, JobQueue};
use super::multipart::{self, MAX_SINGLE, Plan};
use super::transfer::{Mode, Transfer};
use super::uploads::{DynamoLedger, UploadLedger};
use super::url::S3Url;
use crate::config::Env;
use crate::retry::{ErrorClass, ItemError};
use crate::status::{ItemRecord, RunRecord, Status, StatusStore, StoreError};
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use chrono::{Duration, Utc};
use serde::{Deserialize, Serialize};

/// How long an upload may go without a finished part before check-multipart calls it
/// stuck: longer than the job queue's visibility timeout (5400 s = 90 min in
/// template.yaml), so a part job that failed once and comes back is never overtaken by an
/// abort of its upload.
pub const DEFAULT_STUCK_AFTER_MINUTES: i64 = 100;

/// Settings of the object suite, from the functions' environment.
#[derive(Debug, Clone)]
pub struct ObjectsConfig {
    pub source: S3Url,
    pub source_endpoint: Endpoint,
    pub requester_pays: bool,
    pub dest: S3Url,
    pub dest_endpoint: Endpoint,
    pub dest_opts: DestOptions,
    pub mode: Mode,
    pub compare: Compare,
    pub part_size: u64,
    pub threshold: u64,
    pub tags: bool,
    pub delete_on_events: bool,
    pub stuck_after: Duration,
    /// `RETRY_DELAY_SECONDS` (default 30): how soon a failed job comes back, doubled per
    /// receive (see [`retry_delay`]).
    pub retry_delay: std::time::Duration,
    /// `MAX_QUEUED_JOBS` (default 1000): a scheduled diff does not start while at least
    /// this many jobs (visible or in flight) are in the job queue.
    pub max_queued: u64,
    /// `DIFF_ROUND_SECONDS`: the longest a `diff-objects` round decides before it hands on
    /// (`None`: until a minute before the invocation's deadline).
    pub diff_round: Option<std::time::Duration>,
    /// `FILTERS` (rules `+ GLOB`/`- GLOB` split by `;` or newlines), `MIN_SIZE`, `MAX_SIZE`
    /// (`10M`, `1.5G`): what to copy. The diff and the S3 event path both ask it.
    pub filter: Filter,
    /// `MAX_AGE`, `MIN_AGE` (`7d`, `12h`): measured back from each run's start.
    pub max_age: Option<std::time::Duration>,
    pub min_age: Option<std::time::Duration>,
}

impl ObjectsConfig {
    /// `SOURCE_BUCKET`, `SOURCE_PREFIX`, `SOURCE_REGION`, `SOURCE_ENDPOINT`,
    /// `SOURCE_SECRET`, `REQUESTER_PAYS`, `DEST_BUCKET`, `DEST_PREFIX`, `DEST_REGION`,
    /// `DEST_ENDPOINT`, `DEST_SECRET`, `STORAGE_CLASS`, `KMS_KEY`, `COPY_MODE`
    /// (auto|server|stream), `COMPARE` (size|etag|checksum), `PART_SIZE`,
    /// `MULTIPART_THRESHOLD`, `INCLUDE_TAGS`, `DELETE_ON_EVENTS`, `STUCK_AFTER_MINUTES`,
    /// `RETRY_DELAY_SECONDS`, `MAX_QUEUED_JOBS`, `DIFF_ROUND_SECONDS`. Every problem is
    /// reported at once.
    pub fn from_env(env: &mut Env) -> Self {
        let url = |env: &mut Env, bucket: &str, prefix: &str| {
            let b = env.required(bucket);
            let p = env.optional(prefix).unwrap_or_default();
            let text = format!("s3://{b}/{p}");
            match S3Url::parse(&text) {
                Ok(u) => u,
                Err(e) => {
                    if !b.is_empty() {
                        env.problem(format!("{bucket}/{prefix}: {e}"));
                    }
                    S3Url {
                        bucket: b,
                        prefix: p,
                    }
                }
            }
        };
        let source = url(env, "SOURCE_BUCKET", "SOURCE_PREFIX");
        let dest = url(env, "DEST_BUCKET", "DEST_PREFIX");
        let side = |env: &mut Env, region: &str, endpoint: &str, secret: &str| Endpoint {
            region: env.optional(region),
            url: env.optional(endpoint),
            credentials: env
                .optional(secret)
                .map(CredentialSource::Secret)
                .unwrap_or_default(),
        };
        let source_endpoint = side(env, "SOURCE_REGION", "SOURCE_ENDPOINT", "SOURCE_SECRET");
        let dest_endpoint = side(env, "DEST_REGION", "DEST_ENDPOINT", "DEST_SECRET");
        let storage_class =
            env.optional("STORAGE_CLASS")
                .and_then(|s| match parse_storage_class(&s) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        env.problem(format!("STORAGE_CLASS: {e}"));
                        None
                    }
                });
        let mode = match env
            .choice("COPY_MODE", &["auto", "server", "stream"], "auto")
            .as_str()
        {
            "server" => Mode::Server,
            "stream" => Mode::Stream,
            _ if source_endpoint == dest_endpoint => Mode::Server,
            _ => Mode::Stream,
        };
        let compare = Compare::parse(&env.choice("COMPARE", &["size", "etag", "checksum"], "size"))
            .unwrap_or_default();
        let part_size = env.parsed("PART_SIZE", multipart::DEFAULT_PART, "a number of bytes");
        if multipart::check_part_size(part_size).is_err() {
            env.problem(format!(
                "PART_SIZE: {part_size} is outside 5242880..=5368709120 bytes"
            ));
        }
        let rules = match Filter::parse_rules(&env.optional("FILTERS").unwrap_or_default()) {
            Ok(r) => r,
            Err(e) => {
                env.problem(format!("FILTERS: {e}"));
                Vec::new()
            }
        };
        let size = |env: &mut Env, name: &str| {
            let v = env.optional(name)?;
            match crate::units::parse_size(&v) {
                Ok(n) => Some(n),
                Err(e) => {
                    env.problem(format!("{name}: {e}"));
                    None
                }
            }
        };
        let (min_size, max_size) = (size(env, "MIN_SIZE"), size(env, "MAX_SIZE"));
        let age = |env: &mut Env, name: &str| {
            let v = env.optional(name)?;
            match crate::units::parse_duration(&v, std::time::Duration::from_secs(1)) {
                Ok(d) => Some(d),
                Err(e) => {
                    env.problem(format!("{name}: {e}"));
                    None
                }
            }
        };
        let (max_age, min_age) = (age(env, "MAX_AGE"), age(env, "MIN_AGE"));
        Self {
            filter: Filter {
                rules,
                min_size,
                max_size,
                ..Default::default()
            },
            max_age,
            min_age,
            requester_pays: env.parsed("REQUESTER_PAYS", false, "true or false"),
            dest_opts: DestOptions {
                storage_class,
                kms_key: env.optional("KMS_KEY"),
            },
            compare,
            part_size,
            threshold: env.parsed(
                "MULTIPART_THRESHOLD",
                multipart::DEFAULT_THRESHOLD,
                "a number of bytes",
            ),
            tags: env.parsed("INCLUDE_TAGS", false, "true or false"),
            delete_on_events: env.parsed("DELETE_ON_EVENTS", false, "true or false"),
            stuck_after: Duration::minutes(env.parsed(
                "STUCK_AFTER_MINUTES",
                DEFAULT_STUCK_AFTER_MINUTES,
                "a number of minutes",
            )),
            max_queued: env.parsed("MAX_QUEUED_JOBS", 1000u64, "a number of jobs"),
            retry_delay: std::time::Duration::from_secs(env.parsed(
                "RETRY_DELAY_SECONDS",
                30u64,
                "a number of seconds",
            )),
            diff_round: env.optional("DIFF_ROUND_SECONDS").map(|_| {
                std::time::Duration::from_secs(env.parsed(
                    "DIFF_ROUND_SECONDS",
                    0u64,
                    "a number of seconds",
                ))
            }),
            mode,
            source,
            source_endpoint,
            dest,
            dest_endpoint,
        }
    }

    fn single_limit(&self) -> u64 {
        match self.mode {
            Mode::Server => MAX_SINGLE,
            Mode::Stream => self.part_size,
        }
    }

    /// The biggest source part copied in the source's own layout: streamed, one part is
    /// held in memory, so no bigger than the configured part size.
    fn max_source_part(&self) -> u64 {
        match self.mode {
            Mode::Server => multipart::MAX_PART,
            Mode::Stream => self.part_size,
        }
    }
}

pub use crate::tasks::TaskScope;

impl ObjectsConfig {
    /// The configuration of one objects task run by the stack's functions: the task's
    /// prefixes, comparison, copy mode, part size, threshold, storage class, tags and
    /// requester-pays. The buckets, endpoints, regions and credentials stay the stack's:
    /// the functions' roles reach the stack's two buckets (and the stack's source secret
    /// and KMS key) and nothing else, so a task naming another bucket, endpoint, region,
    /// KMS key or a profile (a file on one machine) is refused, naming every such field.
    pub fn for_task(&self, t: &TaskScope) -> Result<ObjectsConfig, ItemError> {
        let o = &t.options;
        let mut problems = Vec::new();
        let parse = |what: &str, text: &str, problems: &mut Vec<String>| match S3Url::parse(text) {
            Ok(u) => Some(u),
            Err(e) => {
                problems.push(format!("{what}: {e}"));
                None
            }
        };
        let source = parse("source", &o.source, &mut problems);
        let dest = parse("dest", &o.dest, &mut problems);
        let mut same = |what: &str, got: Option<&str>, stack: Option<&str>, param: &str| {
            let norm = |v: Option<&str>| v.map(|x| x.trim().trim_end_matches('/').to_string());
            if let Some(g) = got.filter(|g| !g.trim().is_empty())
                && norm(Some(g)) != norm(stack)
            {
                problems.push(format!(
                    "{what}: {g:?} is not the stack's {param} ({}); the functions' roles reach the stack's buckets only",
                    stack.unwrap_or("none")
                ));
            }
        };
        if let Some(u) = &source {
            same(
                "source",
                Some(&u.bucket),
                Some(&self.source.bucket),
                "ObjectSourceBucket",
            );
        }
        if let Some(u) = &dest {
            same(
                "dest",
                Some(&u.bucket),
                Some(&self.dest.bucket),
                "ObjectDestBucket",
            );
        }
        let (se, de) = (&self.source_endpoint, &self.dest_endpoint);
        same(
            "source_endpoint",
            o.source_endpoint.as_deref(),
            se.url.as_deref(),
            "ObjectSourceEndpoint",
        );
        same(
            "dest_endpoint",
            o.dest_endpoint.as_deref(),
            de.url.as_deref(),
            "destination endpoint",
        );
        same(
            "source_region",
            o.source_region.as_deref(),
            se.region.as_deref(),
            "ObjectSourceRegion",
        );
        same(
            "dest_region",
            o.dest_region.as_deref(),
            de.region.as_deref(),
            "destination region",
        );
        same(
            "sse_kms_key",
            o.sse_kms_key.as_deref(),
            self.dest_opts.kms_key.as_deref(),
            "ObjectDestKmsKeyArn",
        );
        for (what, p) in [
            ("source_profile", &o.source_profile),
            ("dest_profile", &o.dest_profile),
        ] {
            if let Some(p) = p {
                problems.push(format!(
                    "{what}: {p:?} is a profile on one machine; on AWS the functions' roles and the stack's secret sign (leave it empty)"
                ));
            }
        }
        let compare =
            Compare::parse(&o.compare).map_err(|e| problems.push(format!("compare: {e}")));
        let storage_class = match o.storage_class.as_deref().filter(|c| !c.is_empty()) {
            None => Ok(None),
            Some(c) => parse_storage_class(c).map(Some),
        }
        .map_err(|e| problems.push(format!("storage_class: {e}")));
        let mode = match o.copy_mode.as_str() {
            "server" => Ok(Mode::Server),
            "stream" => Ok(Mode::Stream),
            "auto" | "" => Ok(self.mode),
            m => Err(problems.push(format!(
                "copy_mode: unknown copy mode {m:?}; expected auto, server or stream"
            ))),
        };
        if multipart::check_part_size(o.part_size).is_err() {
            problems.push(format!(
                "part_size: {} is outside 5242880..=5368709120 bytes",
                o.part_size
            ));
        }
        // The task's filters: rules and sizes now, ages from each run's start (as the
        // stack's own `MAX_AGE`/`MIN_AGE`).
        let without_ages = crate::tasks::ObjectsOptions {
            max_age_secs: None,
            min_age_secs: None,
            ..o.clone()
        };
        let filter = crate::tasks::run::filter_of(&without_ages, chrono::Utc::now())
            .map_err(|e| problems.push(format!("filters: {e}")))
            .unwrap_or_default();
        if let Some(p) = &o.prefix_list {
            problems.push(format!(
                "prefix_list: {p:?}: a prefix list runs on one machine only so far (transfer-hub task run); leave it empty on AWS"
            ));
        }
        let (Some(source), Some(dest), Ok(compare), Ok(storage_class), Ok(mode), true) = (
            source,
            dest,
            compare,
            storage_class,
            mode,
            problems.is_empty(),
        ) else {
            return Err(ItemError::new(
                ErrorClass::BadInput,
                format!("task {:?}: {}", t.name, problems.join("; ")),
            ));
        };
        let mut cfg = self.clone();
        cfg.source = source;
        cfg.dest = dest;
        cfg.requester_pays = o.requester_pays;
        cfg.compare = compare;
        cfg.mode = mode;
        cfg.part_size = o.part_size;
        cfg.threshold = o.multipart_threshold;
        cfg.tags = o.tags;
        cfg.filter = filter;
        cfg.max_age = o.max_age_secs.map(std::time::Duration::from_secs);
        cfg.min_age = o.min_age_secs.map(std::time::Duration::from_secs);
        cfg.dest_opts = DestOptions {
            storage_class,
            kms_key: o.sse_kms_key.clone().filter(|k| !k.trim().is_empty()),
        };
        Ok(cfg)
    }
}

/// The buckets and configuration of one objects task, over the stack's clients.
pub struct Scoped {
    pub cfg: ObjectsConfig,
    pub src: Bucket,
    pub dst: Bucket,
    pub task: TaskScope,
}

/// The clients and tables the object functions work with.
pub struct ObjectsEdges<'a> {
    pub cfg: &'a ObjectsConfig,
    pub src: &'a Bucket,
    pub dst: &'a Bucket,
    pub queue: &'a JobQueue,
    pub store: &'a dyn StatusStore,
    pub ledger: &'a DynamoLedger,
    /// The objects task these edges copy for (`None`: the stack's parameters).
    pub task: Option<&'a TaskScope>,
    /// What this invocation copied, for its metrics line.
    pub tally: &'a Tally,
}

/// What one invocation of transfer-object or check-multipart copied (its EMF line).
#[derive(Debug, Default)]
pub struct Tally {
    pub objects_copied: std::sync::atomic::AtomicU64,
    pub objects_failed: std::sync::atomic::AtomicU64,
    pub bytes_copied: std::sync::atomic::AtomicU64,
}

impl Tally {
    fn add(n: &std::sync::atomic::AtomicU64, v: u64) {
        n.fetch_add(v, std::sync::atomic::Ordering::Relaxed);
    }
    /// The counts so far as metric values, each reset to zero.
    fn take(&self) -> Vec<(crate::aws::metrics::Metric, u64)> {
        use crate::aws::metrics::{BYTES_COPIED, OBJECTS_COPIED, OBJECTS_FAILED};
        use std::sync::atomic::Ordering::Relaxed;
        vec![
            (OBJECTS_COPIED, self.objects_copied.swap(0, Relaxed)),
            (OBJECTS_FAILED, self.objects_failed.swap(0, Relaxed)),
            (BYTES_COPIED, self.bytes_copied.swap(0, Relaxed)),
        ]
    }
}

impl<'a> ObjectsEdges<'a> {
    /// The edges of one task (its configuration checked by [`ObjectsConfig::for_task`]),
    /// or these (the stack's) for none.
    pub fn scoped(&self, task: Option<&TaskScope>) -> Result<Option<Scoped>, ItemError> {
        let Some(t) = task else { return Ok(None) };
        let cfg = self.cfg.for_task(t)?;
        Ok(Some(Scoped {
            src: Bucket {
                client: self.src.client.clone(),
                url: cfg.source.clone(),
                requester_pays: cfg.requester_pays,
            },
            dst: Bucket {
                client: self.dst.client.clone(),
                url: cfg.dest.clone(),
                requester_pays: false,
            },
            cfg,
            task: t.clone(),
        }))
    }

    /// These edges with `s`'s buckets and configuration (the stack's when `None`).
    pub fn with<'b>(&'b self, s: Option<&'b Scoped>) -> ObjectsEdges<'b>
    where
        'a: 'b,
    {
        match s {
            None => ObjectsEdges { ..*self },
            Some(s) => ObjectsEdges {
                cfg: &s.cfg,
                src: &s.src,
                dst: &s.dst,
                task: Some(&s.task),
                ..*self
            },
        }
    }

    fn transfer(&self) -> Transfer<'_> {
        Transfer {
            src: self.src,
            dst: self.dst,
            mode: self.cfg.mode,
            opts: &self.cfg.dest_opts,
            tags: self.cfg.tags,
            remove_bad_copies: false,
            task: self.task,
            run: None,
            bwlimit: None,
        }
    }
    /// Remembers a verified copy whose ETag is not the source's (see
    /// [`UploadLedger::verified`]), so the next diff finds the two in sync.
    async fn remember(
        &self,
        entry: &super::diff::Entry,
        r: &Result<Option<String>, ItemError>,
    ) -> Result<(), ItemError> {
        if let (Ok(Some(dest_etag)), Some(src_etag)) = (r, &entry.etag)
            && super::bucket::bare_etag(dest_etag) != super::bucket::bare_etag(src_etag)
        {
            self.ledger
                .remember_verified(&self.dst.url.object(&entry.key), src_etag, dest_etag)
                .await
                .map_err(store_err)?;
        }
        Ok(())
    }

    async fn record(
        &self,
        run: &str,
        key: &str,
        size: u64,
        etag: Option<String>,
        r: &Result<Option<String>, ItemError>,
    ) -> Result<(), StoreError> {
        let now = Utc::now();
        let rec = ItemRecord {
            run_id: run.to_string(),
            source: self.src.url.object(key),
            dest: self.dst.url.object(key),
            status: if r.is_ok() {
                Status::Copied
            } else {
                Status::Failed
            },
            source_digest: etag,
            dest_digest: r.as_ref().ok().cloned().flatten(),
            attempts: 1,
            error: r.as_ref().err().cloned(),
            bytes: if r.is_ok() { size } else { 0 },
            started_at: Some(now),
            ended_at: Some(now),
            // Later writes win: a retry that succeeds replaces an earlier failure.
            version: now.timestamp_micros().max(0) as u64,
            line: None,
            resumed: None,
            waiting_until: None,
            reason: None,
        };
        self.store.put_item(&rec).await.map(|_| ())
    }
}

/// Input and output of `diff-objects`, one round of a run. The schedule starts a run with
/// `{}`. A round that runs short of time stops after a key and returns it in `next`; the
/// state machine hands the output back as the next round's input until `next` is absent,
/// so a bucket of any size is diffed in rounds of one Lambda invocation each. Counts add up
/// over the rounds. Object keys only: no credential is ever in here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DiffSummary {
    /// Empty on the first round: a new run id is made.
    pub run_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<chrono::DateTime<Utc>>,
    pub to_copy: u64,
    pub in_sync: u64,
    pub only_at_dest: u64,
    pub bytes_to_copy: u64,
    /// Invocations so far.
    pub rounds: u32,
    /// The last key (relative to the prefixes) decided; the next round lists after it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// Why this run did not start (the previous run's jobs still fill the queue).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deferred: Option<String>,
    /// The objects task named by the execution input (`{"task": NAME}`): the run copies
    /// what that task selects (read from the tasks table by the first round).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The task as the first round read it; later rounds and the run's jobs carry it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<TaskScope>,
    /// "Retry failed": only these keys (relative to the prefixes), looked up on both sides
    /// instead of listed, in one round. Not handed on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<String>>,
    /// Source objects the filters left out (`FILTERS`, `MIN_SIZE`, …), over the rounds.
    #[serde(skip_serializing_if = "is_zero")]
    pub filtered: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What `diff-objects` takes: the previous round's output, or `{}` for a new run.
pub type DiffRequest = DiffSummary;

/// How long before the invocation's deadline a round stops deciding, to queue what it has
/// and write the run record.
pub const DIFF_ROUND_MARGIN: std::time::Duration = std::time::Duration::from_secs(60);

/// `diff-objects`: streams both listings through the merge and queues a job per object
/// to copy, ten per SQS call, as it goes. Memory does not grow with the bucket. When
/// `stop_at` passes, the round ends after the key being decided and says where to go on
/// (`next`); `None` runs to the end.
pub async fn diff_objects(
    req: DiffRequest,
    e: &ObjectsEdges<'_>,
    stop_at: Option<std::time::Instant>,
) -> Result<DiffSummary, ItemError> {
    let store_err = |x: StoreError| ItemError::new(ErrorClass::Retryable, x.to_string());
    let mut sum = req;
    sum.scope = e.task.cloned();
    sum.task = e.task.map(|t| t.name.clone());
    if sum.rounds == 0 {
        // A new run starts only when the previous one's copies are (nearly) done: a diff
        // over a queue still holding its jobs would queue most objects a second time.
        let queued = e.queue.depth().await?;
        if queued >= e.cfg.max_queued {
            let why = format!(
                "{queued} jobs are still queued (MAX_QUEUED_JOBS={}): the previous run is still copying; this run starts at the next schedule",
                e.cfg.max_queued
            );
            tracing::warn!(queued, "{why}");
            sum.deferred = Some(why);
            return Ok(sum);
        }
        if sum.run_id.is_empty() {
            // The console names the run (the execution's name); a schedule does not.
            sum.run_id = crate::images::sync::new_run_id();
        }
    }
    let after = sum.next.take();
    let started = *sum.started_at.get_or_insert_with(Utc::now);
    sum.rounds += 1;
    let run_id = sum.run_id.clone();
    let mut run = RunRecord {
        run_id: run_id.clone(),
        source: e.src.url.to_string(),
        dest: e.dst.url.to_string(),
        dry_run: false,
        started_at: started,
        ended_at: None,
        copied: 0,
        skipped: sum.in_sync,
        failed: 0,
        bytes: 0,
        kind: crate::status::RunKind::Objects,
        ..Default::default()
    };
    if after.is_none() {
        e.store.put_run(&run).await.map_err(store_err)?;
        if let Some(t) = e.task {
            e.store
                .note_task(&run_id, &t.name)
                .await
                .map_err(store_err)?;
        }
    }
    let rounds = sum.rounds;
    // Ages are measured from the run's start, so every round judges alike.
    let filter = e
        .cfg
        .filter
        .clone()
        .with_ages(started, e.cfg.max_age, e.cfg.min_age);
    let passed = match sum.keys.take() {
        Some(keys) => {
            let (s, d) = (
                super::run::looked_up(e.src, &keys),
                super::run::looked_up(e.dst, &keys),
            );
            queue_pass(s, d, e, &filter, &run_id, &mut sum, None).await
        }
        None => {
            let listed = (
                e.src.list_after(after.as_deref()),
                e.dst.list_after(after.as_deref()),
            );
            queue_pass(listed.0, listed.1, e, &filter, &run_id, &mut sum, stop_at).await
        }
    };
    match passed {
        Ok(()) => {}
        Err(MergeError::Emit(err)) => return Err(err),
        Err(MergeError::Diff(d)) => {
            // A store that does not list in key order: sort both whole listings on disk
            // (/tmp) and merge again, to the end (no rounds: a key to go on from means
            // nothing in an unordered listing). Jobs queued before the disorder showed may
            // be queued twice; a copy done twice is harmless (same bytes, checked again).
            tracing::warn!(error = %d, "a listing is not in key order; sorting both on disk");
            sum = DiffSummary {
                run_id: run_id.clone(),
                started_at: Some(started),
                rounds,
                ..Default::default()
            };
            let dir = std::env::temp_dir();
            let sorted = |l| super::run::sorted(l, dir.clone());
            let (s, d) = tokio::try_join!(sorted(e.src.list()), sorted(e.dst.list()))
                .map_err(|x| ItemError::new(ErrorClass::Retryable, x.to_string()))?;
            queue_pass(s, d, e, &filter, &run_id, &mut sum, None)
                .await
                .map_err(|x| match x {
                    MergeError::Emit(err) => err,
                    MergeError::Diff(d) => ItemError::new(ErrorClass::Retryable, d.to_string()),
                })?;
        }
    }
    run.skipped = sum.in_sync;
    run.filtered = sum.filtered;
    if sum.next.is_none() {
        run.ended_at = Some(Utc::now());
    }
    e.store.put_run(&run).await.map_err(store_err)?;
    tracing::info!(run = %run_id, round = sum.rounds, to_copy = sum.to_copy, in_sync = sum.in_sync, next = ?sum.next, "diff round done");
    Ok(sum)
}

/// One merge of two listings, queueing a job per object to copy (100 per flush, sent ten
/// per `SendMessageBatch`). Past `stop_at` it stops after the key just decided and puts
/// that key in `sum.next`.
async fn queue_pass<S, D, E1, E2>(
    src: S,
    dst: D,
    e: &ObjectsEdges<'_>,
    filter: &Filter,
    run_id: &str,
    sum: &mut DiffSummary,
    stop_at: Option<std::time::Instant>,
) -> Result<(), MergeError<ItemError>>
where
    S: futures::Stream<Item = Result<super::diff::Entry, E1>> + Unpin,
    D: futures::Stream<Item = Result<super::diff::Entry, E2>> + Unpin,
    E1: std::fmt::Display,
    E2: std::fmt::Display,
{
    // The merge awaits each decision before the next: one borrow at a time.
    let state = std::cell::RefCell::new((&mut *sum, Vec::<Job>::with_capacity(100)));
    let mut stopped_after: Option<String> = None;
    let merged = diff::merge(src, dst, e.cfg.compare, |d| {
        let key = match &d {
            Decision::Copy(x, _) | Decision::InSync(x) | Decision::Extra(x) => x.key.clone(),
            Decision::Changed { src, .. } => src.key.clone(),
        };
        // Every key up to this one is decided on both sides: a clean place to stop.
        let stop = stop_at.is_some_and(|t| std::time::Instant::now() >= t);
        if stop {
            stopped_after = Some(key);
        }
        let state = &state;
        // Left out by the filters: neither queued nor deleted; counted on the source side.
        let (x, on_source) = match &d {
            Decision::Copy(x, _) | Decision::InSync(x) => (x, true),
            Decision::Changed { src, .. } => (src, true),
            Decision::Extra(x) => (x, false),
        };
        let left_out = !filter.admits(&x.key, x.size, x.modified);
        async move {
            if left_out {
                if on_source {
                    state.borrow_mut().0.filtered += 1;
                }
                return if stop { Err(None) } else { Ok(()) };
            }
            let copy = match d {
                Decision::Copy(x, _) => Some(x),
                // Other ETags than the source's may still be a copy verified earlier.
                Decision::Changed { src, dest, .. } => {
                    let pair = e
                        .ledger
                        .verified(&e.dst.url.object(&src.key))
                        .await
                        .map_err(|x| Some(store_err(x)))?;
                    if diff::settled_by(pair.as_ref(), &src, &dest) {
                        state.borrow_mut().0.in_sync += 1;
                        None
                    } else {
                        Some(src)
                    }
                }
                Decision::InSync(_) => {
                    state.borrow_mut().0.in_sync += 1;
                    None
                }
                Decision::Extra(_) => {
                    state.borrow_mut().0.only_at_dest += 1;
                    None
                }
            };
            let flush = copy.and_then(|x| {
                let mut st = state.borrow_mut();
                st.0.to_copy += 1;
                st.0.bytes_to_copy += x.size;
                st.1.push(Job::object(run_id, &x, e.task));
                (st.1.len() >= 100).then(|| std::mem::take(&mut st.1))
            });
            if let Some(jobs) = flush {
                e.queue.send(&jobs).await.map_err(Some)?;
            }
            if stop { Err(None) } else { Ok(()) }
        }
    })
    .await;
    match merged {
        Ok(()) | Err(MergeError::Emit(None)) => {}
        Err(MergeError::Emit(Some(err))) => return Err(MergeError::Emit(err)),
        Err(MergeError::Diff(d)) => return Err(MergeError::Diff(d)),
    }
    let (_, batch) = state.into_inner();
    sum.next = stopped_after;
    e.queue.send(&batch).await.map_err(MergeError::Emit)
}

/// `transfer-object`: one SQS batch. A message that fails (bad body, failed copy) is
/// reported in `batchItemFailures` so SQS delivers it again and, after the queue's
/// `maxReceiveCount`, moves it to the dead-letter queue. Nothing is dropped silently.
pub async fn transfer_batch(ev: SqsEvent, e: &ObjectsEdges<'_>) -> SqsBatchResponse {
    let mut resp = SqsBatchResponse::default();
    for m in ev.records {
        let id = m.message_id.clone().unwrap_or_default();
        let body = m.body.unwrap_or_default();
        if let Err(err) = handle_message(&body, e).await {
            let receives: u32 = m
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            let after = retry_delay(e.cfg.retry_delay, receives);
            tracing::error!(message_id = %id, class = %err.class, error = %err.message, retry_in_s = after.as_secs(), "job failed; SQS will deliver it again");
            if let Some(handle) = &m.receipt_handle
                && let Err(x) = e.queue.retry_after(handle, after).await
            {
                // It still comes back, after the queue's visibility timeout.
                tracing::warn!(message_id = %id, error = %x.message, "could not shorten the failed job's visibility");
            }
            resp.add_failure(id);
        }
    }
    let tally = e.tally.take();
    if tally.iter().any(|(_, v)| *v > 0) {
        crate::aws::metrics::emit(&tally);
    }
    resp
}

/// When a failed job comes back: `base` doubled per earlier receive, at most 15 minutes
/// (well inside the queue's 90-minute visibility timeout and check-multipart's patience).
pub fn retry_delay(base: std::time::Duration, receives: u32) -> std::time::Duration {
    let factor = 1u32 << receives.saturating_sub(1).min(10);
    (base * factor).min(std::time::Duration::from_secs(900))
}

async fn handle_message(body: &str, e: &ObjectsEdges<'_>) -> Result<(), ItemError> {
    if events::is_s3_notification(body) {
        let works = events::parse(body, &e.cfg.source.prefix).map_err(|x| {
            ItemError::new(
                ErrorClass::BadInput,
                format!("S3 event message is not valid: {x}"),
            )
        })?;
        let mut first_err = None;
        for w in works {
            let r = match w {
                Err(x) => Err(ItemError::new(ErrorClass::BadInput, x.to_string())),
                Ok(w) => apply_event(w, e).await,
            };
            if let Err(x) = r {
                first_err.get_or_insert(x);
            }
        }
        return first_err.map_or(Ok(()), Err);
    }
    let job = Job::parse(body)?;
    // A job of a task's run copies as that task (checked again: a job is only input).
    let scoped = e.scoped(job.task())?;
    let e = &e.with(scoped.as_ref());
    match &job {
        Job::Object { .. } => object_job(&job, e.cfg.compare, e).await,
        Job::Part { upload_id, .. } => part_job(&job, upload_id, e).await,
    }
}

fn store_err(x: StoreError) -> ItemError {
    ItemError::new(ErrorClass::Retryable, format!("status store: {x}"))
}

async fn apply_event(w: EventWork, e: &ObjectsEdges<'_>) -> Result<(), ItemError> {
    let run = format!("events-{}", Utc::now().format("%Y%m%d"));
    match w {
        EventWork::Copy { entry, sequencer } => {
            if !e
                .ledger
                .claim_sequencer(&e.dst.url.object(&entry.key), &sequencer)
                .await
                .map_err(store_err)?
            {
                tracing::info!(key = %entry.key, "an older event than one already applied; ignored");
                return Ok(());
            }
            // Copy what the source holds now (the event may describe an older version).
            match e.src.head(&entry.key).await? {
                None => Ok(()), // deleted since; its delete event decides
                // Left out by the filters (just written: its age is zero).
                Some(h)
                    if !e
                        .cfg
                        .filter
                        .clone()
                        .with_ages(Utc::now(), e.cfg.max_age, e.cfg.min_age)
                        .admits(&entry.key, h.size, Some(Utc::now())) =>
                {
                    tracing::info!(key = %entry.key, "left out by the filters; not copied");
                    Ok(())
                }
                Some(h) => {
                    let job = Job::Object {
                        run,
                        key: entry.key,
                        size: h.size,
                        etag: h.etag,
                        task: None,
                    };
                    // An event says the object changed: a same-size copy is not enough.
                    object_job(&job, Compare::Etag, e).await
                }
            }
        }
        EventWork::Delete { key, sequencer } => {
            if !e
                .ledger
                .claim_sequencer(&e.dst.url.object(&key), &sequencer)
                .await
                .map_err(store_err)?
            {
                return Ok(());
            }
            if e.cfg.delete_on_events && !e.cfg.filter.admits_key(&key) {
                tracing::info!(key = %key, "left out by the filters; not deleted");
                return Ok(());
            }
            if e.cfg.delete_on_events {
                // A delete delivered again finds nothing to delete and writes nothing (on a
                // versioned bucket a second DeleteObject would add another delete marker).
                if e.dst.head(&key).await?.is_none() {
                    tracing::info!(key = %key, "already absent at the destination; nothing to delete");
                    return Ok(());
                }
                e.dst.delete(&key).await?;
                tracing::info!(key = %key, "deleted at the destination (DELETE_ON_EVENTS)");
            }
            Ok(())
        }
    }
}

/// Copies one object (small: here; big: opens its upload and queues its part jobs),
/// unless the destination already holds it under `compare` (a job queued twice, or runs
/// that overlap): then nothing is written.
async fn object_job(job: &Job, compare: Compare, e: &ObjectsEdges<'_>) -> Result<(), ItemError> {
    let entry = job.entry();
    if already_there(&entry, compare, e).await? {
        tracing::info!(object = %e.dst.url.object(&entry.key), "the destination already holds it; nothing to copy");
        return Ok(());
    }
    let planned = e
        .transfer()
        .plan(
            &entry,
            e.cfg.threshold,
            e.cfg.part_size,
            e.cfg.single_limit(),
            e.cfg.max_source_part(),
        )
        .await;
    let (plan, same_parts) = match planned {
        Err(x) if x.class == ErrorClass::SourceChanged => {
            return replan(job.run(), &entry.key, &x, e).await;
        }
        r => r?,
    };
    match plan {
        Plan::Single => {
            let r = e.transfer().single(&entry).await;
            if let Err(x) = &r
                && x.class == ErrorClass::SourceChanged
            {
                return replan(job.run(), &entry.key, x, e).await;
            }
            e.record(job.run(), &entry.key, entry.size, entry.etag.clone(), &r)
                .await
                .map_err(store_err)?;
            match &r {
                Ok(_) => {
                    Tally::add(&e.tally.objects_copied, 1);
                    Tally::add(&e.tally.bytes_copied, entry.size);
                }
                Err(_) => Tally::add(&e.tally.objects_failed, 1),
            }
            e.remember(&entry, &r).await?;
            r.map(|_| ())
        }
        Plan::Multipart { part_size, parts } => {
            let opening = Transfer {
                run: Some(job.run()),
                ..e.transfer()
            };
            let upload = match opening
                .open_upload(e.ledger, &entry, part_size, parts.len() as u32, same_parts)
                .await
            {
                Err(x) if x.class == ErrorClass::SourceChanged => {
                    return replan(job.run(), &entry.key, &x, e).await;
                }
                r => r?,
            };
            let done: std::collections::HashSet<u32> = e
                .ledger
                .parts_done(&upload)
                .await
                .map_err(store_err)?
                .into_iter()
                .map(|p| p.0)
                .collect();
            let jobs: Vec<Job> = multipart::parts(upload.size, upload.part_size)
                .into_iter()
                .filter(|p| !done.contains(&p.number))
                .map(|p| Job::Part {
                    run: job.run().to_string(),
                    key: entry.key.clone(),
                    size: entry.size,
                    etag: entry.etag.clone(),
                    upload_id: upload.upload_id.clone(),
                    number: p.number,
                    start: p.start,
                    len: p.len,
                    task: e.task.cloned().map(Box::new),
                })
                .collect();
            e.queue.send(&jobs).await
        }
    }
}

async fn part_job(job: &Job, upload_id: &str, e: &ObjectsEdges<'_>) -> Result<(), ItemError> {
    let entry = job.entry();
    let part = job.part().expect("a part job");
    let dest = e.dst.url.object(&entry.key);
    let Some(upload) = e
        .ledger
        .find(&dest)
        .await
        .map_err(store_err)?
        .filter(|u| u.upload_id == upload_id)
    else {
        // The upload was completed, or aborted and re-planned: this job is obsolete.
        tracing::info!(object = %dest, upload_id, part = part.number, "part of an upload that is no longer open; nothing to do");
        return Ok(());
    };
    // SQS delivers at least once, and an object job handled twice queues its parts twice:
    // a part already recorded is not uploaded again.
    if e.ledger
        .part_is_done(&upload, part.number)
        .await
        .map_err(store_err)?
    {
        tracing::info!(object = %dest, upload_id, part = part.number, "part already done; nothing to write");
        return Ok(());
    }
    let etag = match e.transfer().part(&entry, &upload, &part).await {
        Err(x) if x.class == ErrorClass::SourceChanged => {
            // The upload can never complete into the listed version: free it and plan the
            // object again, so no object is ever made of parts of two versions.
            let _ = e
                .dst
                .abort_upload(&e.dst.url.key(&upload.key), &upload.upload_id)
                .await;
            e.ledger.finish(&upload).await.map_err(store_err)?;
            return replan(job.run(), &entry.key, &x, e).await;
        }
        r => r?,
    };
    e.ledger
        .part_done(&upload, part.number, &etag)
        .await
        .map_err(store_err)?;
    Tally::add(&e.tally.bytes_copied, part.len);
    Ok(())
}

/// Whether the destination holds `entry` already: same size and, unless comparing by
/// size, the same ETag or the ETag of a copy verified earlier from this source ETag.
async fn already_there(
    entry: &super::diff::Entry,
    compare: Compare,
    e: &ObjectsEdges<'_>,
) -> Result<bool, ItemError> {
    let Some(h) = e.dst.head(&entry.key).await? else {
        return Ok(false);
    };
    let dest = super::diff::Entry {
        archived: false,
        key: entry.key.clone(),
        size: h.size,
        etag: h.etag,
        checksum: None,
        modified: None,
    };
    match super::diff::compare_entries(entry, &dest, compare) {
        None => Ok(true),
        Some(super::diff::Reason::SizeDiffers) => Ok(false),
        Some(_) => {
            let pair = e
                .ledger
                .verified(&e.dst.url.object(&entry.key))
                .await
                .map_err(store_err)?;
            Ok(diff::settled_by(pair.as_ref(), entry, &dest))
        }
    }
}

/// The source of `key` changed since its job was made (a pinned read answered 412): queue
/// a job for what the source holds now. Nothing is recorded as copied from the old one.
async fn replan(
    run: &str,
    key: &str,
    why: &ItemError,
    e: &ObjectsEdges<'_>,
) -> Result<(), ItemError> {
    tracing::info!(object = %e.src.url.object(key), reason = %why.message, "the source changed since it was listed; planning it again");
    match e.src.head(key).await? {
        // Deleted since: a later diff (or its delete event) decides.
        None => Ok(()),
        Some(h) => {
            let job = Job::Object {
                run: run.to_string(),
                key: key.to_string(),
                size: h.size,
                etag: h.etag,
                task: e.task.cloned().map(Box::new),
            };
            e.queue.send(&[job]).await
        }
    }
}

/// What one `check-multipart` pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSummary {
    pub completed: u64,
    pub failed: u64,
    pub waiting: u64,
    pub replanned: u64,
    pub orphans_aborted: u64,
    /// Uploads whose check failed this pass (logged; the next pass tries again).
    pub errors: u64,
    /// Open uploads under the prefix that we did not start (left alone).
    pub foreign: u64,
}

/// `check-multipart`: completes the uploads whose parts are all done (ordered part list,
/// then the checks of [`Transfer::complete`]), re-plans uploads that made no progress (no
/// part finished) for longer than `stuck_after` (abort, forget, queue the object again),
/// and aborts uploads under the destination prefix that the ledger does not know, that
/// are older than that and that we started (an intent was recorded before their
/// CreateMultipartUpload); somebody else's uploads are left alone. An upload whose parts keep finishing is never aborted, and an
/// error on one upload is counted and logged; the pass goes on with the others.
pub async fn check_multipart(e: &ObjectsEdges<'_>) -> Result<CheckSummary, ItemError> {
    let mut sum = CheckSummary::default();
    let now = Utc::now();
    let open = e.ledger.open().await.map_err(store_err)?;
    let open_uploads = open.len() as u64;
    for u in &open {
        // An upload of a task's run completes (and is recorded) as that task.
        let checked = match e.scoped(u.task.as_ref()) {
            Ok(scoped) => check_upload(u, now, &e.with(scoped.as_ref()), &mut sum).await,
            Err(x) => Err(x),
        };
        if let Err(x) = checked {
            sum.errors += 1;
            tracing::error!(object = %u.dest, upload_id = %u.upload_id, class = %x.class, error = %x.message, "checking this upload failed; the next pass tries again");
        }
    }
    let known: std::collections::HashSet<&str> =
        open.iter().map(|u| u.upload_id.as_str()).collect();
    for (key, id, started) in e.dst.open_uploads().await? {
        let old = started.is_none_or(|t| now - t > e.cfg.stuck_after);
        if known.contains(id.as_str()) || !old {
            continue;
        }
        // Only an upload we started: somebody else's upload under the prefix is theirs.
        let dest = format!("s3://{}/{key}", e.dst.url.bucket);
        match e.ledger.intended(&dest).await {
            Ok(true) => {}
            Ok(false) => {
                sum.foreign += 1;
                continue;
            }
            Err(x) => {
                sum.errors += 1;
                tracing::error!(key = %key, error = %x, "cannot tell whether this upload is ours; left alone");
                continue;
            }
        }
        {
            match e.dst.abort_upload(&key, &id).await {
                Ok(()) => sum.orphans_aborted += 1,
                Err(x) => {
                    sum.errors += 1;
                    tracing::error!(key = %key, upload_id = %id, error = %x.message, "aborting an orphan upload failed; the next pass tries again");
                }
            }
        }
    }
    let mut values = e.tally.take();
    values.retain(|(m, _)| m.name != crate::aws::metrics::BYTES_COPIED.name);
    values.push((crate::aws::metrics::OPEN_UPLOADS, open_uploads));
    crate::aws::metrics::emit(&values);
    Ok(sum)
}

/// One open upload of a `check-multipart` pass.
async fn check_upload(
    u: &super::uploads::Upload,
    now: chrono::DateTime<Utc>,
    e: &ObjectsEdges<'_>,
    sum: &mut CheckSummary,
) -> Result<(), ItemError> {
    // The list of open uploads may lag (an index): act only on what the ledger holds now.
    if e.ledger
        .find(&u.dest)
        .await
        .map_err(store_err)?
        .as_ref()
        .map(|x| &x.upload_id)
        != Some(&u.upload_id)
    {
        return Ok(());
    }
    let parts = e.ledger.parts_done(u).await.map_err(store_err)?;
    let entry = super::diff::Entry {
        archived: false,
        key: u.key.clone(),
        size: u.size,
        etag: u.source_etag.clone(),
        checksum: None,
        modified: None,
    };
    // The run whose job opened the upload; older records (and a missing run) go under the
    // day's own multipart run.
    let run = u
        .run
        .clone()
        .unwrap_or_else(|| format!("multipart-{}", now.format("%Y%m%d")));
    if parts.len() as u32 >= u.parts {
        let r = e.transfer().complete(&entry, u, parts).await;
        match &r {
            Ok(_) => {
                sum.completed += 1;
                Tally::add(&e.tally.objects_copied, 1);
            }
            Err(x) if x.class == ErrorClass::Retryable => {
                sum.waiting += 1;
                return Ok(());
            }
            Err(_) => {
                sum.failed += 1;
                Tally::add(&e.tally.objects_failed, 1);
                let _ = e
                    .dst
                    .abort_upload(&e.dst.url.key(&u.key), &u.upload_id)
                    .await;
            }
        }
        e.record(&run, &u.key, u.size, u.source_etag.clone(), &r)
            .await
            .map_err(store_err)?;
        e.remember(&entry, &r).await?;
        e.ledger.finish(u).await.map_err(store_err)?;
    } else if now - e.ledger.last_progress(u).await.map_err(store_err)? > e.cfg.stuck_after {
        tracing::warn!(object = %u.dest, upload_id = %u.upload_id, done = parts.len(), of = u.parts, "upload stuck (no part finished for longer than STUCK_AFTER_MINUTES); aborting and planning it again");
        let _ = e
            .dst
            .abort_upload(&e.dst.url.key(&u.key), &u.upload_id)
            .await;
        e.ledger.finish(u).await.map_err(store_err)?;
        e.queue.send(&[Job::object(&run, &entry, e.task)]).await?;
        sum.replanned += 1;
    } else {
        sum.waiting += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as D;

    #[test]
    fn a_failed_job_comes_back_sooner_than_the_queue_would_send_it_and_later_each_time() {
        let base = D::from_secs(30);
        assert_eq!(retry_delay(base, 1), D::from_secs(30));
        assert_eq!(retry_delay(base, 2), D::from_secs(60));
        assert_eq!(retry_delay(base, 4), D::from_secs(240));
        assert_eq!(
            retry_delay(base, 9),
            D::from_secs(900),
            "at most 15 minutes"
        );
        assert_eq!(retry_delay(base, u32::MAX), D::from_secs(900));
        assert_eq!(retry_delay(base, 0), D::from_secs(30));
        // Always well inside the queue's visibility timeout and check-multipart's patience.
        assert!(retry_delay(base, 5) < D::from_secs(DEFAULT_STUCK_AFTER_MINUTES as u64 * 60));
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> (ObjectsConfig, Result<(), crate::config::ConfigError>) {
        let mut m: std::collections::HashMap<String, String> =
            [("SOURCE_BUCKET", "src"), ("DEST_BUCKET", "dst")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        for (k, v) in pairs {
            m.insert(k.to_string(), v.to_string());
        }
        let mut env = Env::from_map(m);
        let cfg = ObjectsConfig::from_env(&mut env);
        (cfg, env.finish())
    }

    #[test]
    fn the_filter_parameters_are_read_and_bad_ones_named_together() {
        let (cfg, ok) = config(&[
            ("FILTERS", "- /tmp/**; + *.jpg"),
            ("MIN_SIZE", "1K"),
            ("MAX_SIZE", "1.5G"),
            ("MAX_AGE", "7d"),
        ]);
        assert!(ok.is_ok(), "{ok:?}");
        assert_eq!(cfg.filter.rules.len(), 2);
        assert_eq!(
            (cfg.filter.min_size, cfg.filter.max_size),
            (Some(1024), Some(3 << 29))
        );
        assert_eq!(
            cfg.max_age,
            Some(std::time::Duration::from_secs(7 * 86_400))
        );
        assert!(cfg.filter.admits("a/b.jpg", 2048, None));
        assert!(!cfg.filter.admits("tmp/b.jpg", 2048, None));
        let (cfg, _) = config(&[]);
        assert!(cfg.filter.is_empty() && cfg.max_age.is_none());
        let (_, err) = config(&[("FILTERS", "+ [x"), ("MIN_SIZE", "-1"), ("MIN_AGE", "7x")]);
        let err = err.unwrap_err().to_string();
        for want in [
            "FILTERS", "\"[x\"", "MIN_SIZE", "\"-1\"", "MIN_AGE", "\"7x\"",
        ] {
            assert!(err.contains(want), "{want} in {err}");
        }
    }

    #[test]
    fn copy_mode_and_compare_are_taken_as_written_in_any_case() {
        for (mode, compare) in [("server", "etag"), ("STREAM", "Checksum")] {
            let (cfg, ok) = config(&[("COPY_MODE", mode), ("COMPARE", compare)]);
            assert!(ok.is_ok(), "{ok:?}");
            let want_mode = if mode == "server" {
                Mode::Server
            } else {
                Mode::Stream
            };
            assert_eq!(cfg.mode, want_mode, "COPY_MODE={mode}");
            let want = if compare == "etag" {
                Compare::Etag
            } else {
                Compare::Checksum
            };
            assert_eq!(cfg.compare, want, "COMPARE={compare}");
        }
        let (_, err) = config(&[("COMPARE", "md5")]);
        let err = err.unwrap_err().to_string();
        assert!(
            err.contains("COMPARE=\"md5\"") && err.contains("size, etag, checksum"),
            "{err}"
        );
    }

    fn scope(source: &str, dest: &str, f: &[(&str, &str)]) -> TaskScope {
        let mut fields = crate::tasks::default_fields(crate::tasks::Kind::Objects);
        fields.insert("source".into(), source.into());
        fields.insert("dest".into(), dest.into());
        for (k, v) in f {
            fields.insert(k.to_string(), v.to_string());
        }
        let t =
            crate::tasks::Task::from_fields("t1", crate::tasks::Kind::Objects, &fields, Utc::now())
                .unwrap();
        TaskScope::of(&t).unwrap()
    }

    #[test]
    fn a_task_on_aws_takes_its_prefixes_and_options_and_keeps_the_stacks_buckets() {
        let (stack, ok) = config(&[
            ("SOURCE_PREFIX", "in/"),
            ("DEST_PREFIX", "out/"),
            ("KMS_KEY", "arn:aws:kms:eu-west-1:1:key/k"),
        ]);
        ok.unwrap();
        let t = scope(
            "s3://src/photos/",
            "s3://dst/copy/",
            &[
                ("compare", "etag"),
                ("part_size", "8MiB"),
                ("storage_class", "STANDARD_IA"),
            ],
        );
        let cfg = stack.for_task(&t).unwrap();
        assert_eq!(
            (cfg.source.prefix.as_str(), cfg.dest.prefix.as_str()),
            ("photos/", "copy/")
        );
        assert_eq!(
            (cfg.source.bucket.as_str(), cfg.dest.bucket.as_str()),
            ("src", "dst")
        );
        assert_eq!(cfg.compare, Compare::Etag);
        assert_eq!(cfg.part_size, 8 << 20);
        assert_eq!(
            cfg.dest_opts.kms_key, None,
            "the task's (none), not the stack's"
        );
        assert!(cfg.dest_opts.storage_class.is_some());
        // Everything the roles cannot reach, named at once.
        let bad = scope(
            "s3://elsewhere/x/",
            "s3://dst/copy/",
            &[
                ("source_endpoint", "https://s3.example.net"),
                ("dest_profile", "prod"),
                ("sse_kms_key", "arn:aws:kms:eu-west-1:1:key/other"),
            ],
        );
        let e = stack.for_task(&bad).unwrap_err();
        assert_eq!(e.class, ErrorClass::BadInput);
        for want in [
            "\"t1\"",
            "source: \"elsewhere\"",
            "ObjectSourceBucket",
            "source_endpoint",
            "dest_profile",
            "sse_kms_key",
        ] {
            assert!(e.message.contains(want), "{want}: {}", e.message);
        }
        // An images task is not an objects task.
        let mut f = crate::tasks::default_fields(crate::tasks::Kind::Images);
        f.insert("source".into(), "127.0.0.1:5000".into());
        f.insert("dest".into(), "127.0.0.1:5001".into());
        f.insert("list".into(), "a:1".into());
        let img =
            crate::tasks::Task::from_fields("img", crate::tasks::Kind::Images, &f, Utc::now())
                .unwrap();
        assert!(
            TaskScope::of(&img)
                .unwrap_err()
                .message
                .contains("images task")
        );
    }
}
