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

/// The clients and tables the object functions work with.
pub struct ObjectsEdges<'a> {
    pub cfg: &'a ObjectsConfig,
    pub src: &'a Bucket,
    pub dst: &'a Bucket,
    pub queue: &'a JobQueue,
    pub store: &'a dyn StatusStore,
    pub ledger: &'a DynamoLedger,
}

impl ObjectsEdges<'_> {
    fn transfer(&self) -> Transfer<'_> {
        Transfer {
            src: self.src,
            dst: self.dst,
            mode: self.cfg.mode,
            opts: &self.cfg.dest_opts,
            tags: self.cfg.tags,
            remove_bad_copies: false,
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
    /// A task named by the execution input (`{"task": NAME}`): refused, see [`diff_objects`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
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
    // The copies (transfer-object, check-multipart) read their buckets from the stack, and
    // their jobs carry keys only: a task with buckets of its own would be listed here and
    // copied there. Refused by name rather than run on the stack's parameters.
    if let Some(t) = &req.task {
        return Err(ItemError::new(
            ErrorClass::BadInput,
            format!(
                "task {t:?}: objects tasks run with `transfer-hub serve` or `task run`; on AWS the objects functions copy the stack's buckets (start the execution with {{}})"
            ),
        ));
    }
    let mut sum = req;
    if sum.run_id.is_empty() {
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
        sum.run_id = crate::sync::new_run_id();
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
    }
    let rounds = sum.rounds;
    let listed = (
        e.src.list_after(after.as_deref()),
        e.dst.list_after(after.as_deref()),
    );
    // Ages are measured from the run's start, so every round judges alike.
    let filter = e
        .cfg
        .filter
        .clone()
        .with_ages(started, e.cfg.max_age, e.cfg.min_age);
    match queue_pass(listed.0, listed.1, e, &filter, &run_id, &mut sum, stop_at).await {
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
                st.1.push(Job::object(run_id, &x));
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
            e.remember(&entry, &r).await?;
            r.map(|_| ())
        }
        Plan::Multipart { part_size, parts } => {
            let upload = match e
                .transfer()
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
        .map_err(store_err)
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
    for u in &open {
        if let Err(x) = check_upload(u, now, e, &mut sum).await {
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
        key: u.key.clone(),
        size: u.size,
        etag: u.source_etag.clone(),
        checksum: None,
        modified: None,
    };
    let run = format!("multipart-{}", now.format("%Y%m%d"));
    if parts.len() as u32 >= u.parts {
        let r = e.transfer().complete(&entry, u, parts).await;
        match &r {
            Ok(_) => sum.completed += 1,
            Err(x) if x.class == ErrorClass::Retryable => {
                sum.waiting += 1;
                return Ok(());
            }
            Err(_) => {
                sum.failed += 1;
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
        e.queue.send(&[Job::object(&run, &entry)]).await?;
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
}
