//! The one-machine object sync: list both sides → streaming merge → copy what differs
//! with bounded concurrency and retries → verify → record. Parts of big objects share
//! the same concurrency bound as whole objects (and, when streamed, one bound on the
//! bytes held in memory), and the upload ledger in the state file
//! lets an interrupted run resume without redoing finished parts.

use super::bandwidth::Bandwidth;
use super::bucket::{Bucket, DestOptions, bare_etag};
use super::deletes::{self, BackupPrefix, Candidates, MaxDelete};
use super::diff::{self, Compare, Decision, DiffError, Entry, MergeError, Reason};
use super::filter::Filter;
use super::multipart::{self, MAX_SINGLE, Plan};
use super::transfer::{Mode, Transfer, ledger_error};
use super::uploads::UploadLedger;
use super::url::S3Url;
use crate::images::sync::{Progress, SyncReport};
use crate::interrupt::{Stop, interrupted};
use crate::retry::{ErrorClass, ItemError, RetryPolicy, with_retries_until};
use crate::status::{ItemRecord, Resumed, RunRecord, Status, StatusStore, StoreError};
use chrono::Utc;
use futures::StreamExt;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{Semaphore, SemaphorePermit, mpsc};

/// One object sync run's settings.
#[derive(Debug, Clone)]
pub struct ObjectsSpec {
    pub run_id: String,
    pub compare: Compare,
    /// Requests (whole objects or parts) in flight at once.
    pub concurrency: usize,
    pub part_size: u64,
    pub threshold: u64,
    pub mode: Mode,
    pub tags: bool,
    pub dest_opts: DestOptions,
    pub retry: RetryPolicy,
    pub dry_run: bool,
    /// Where an unsorted listing is sorted on disk (default: the system temp dir).
    pub spill_dir: Option<PathBuf>,
    /// Object bytes streamed copies may hold in memory at once (each part, or small object,
    /// is read whole before it is written); at least one part is always let through.
    pub stream_buffer: u64,
    /// Only these keys (relative to the prefixes; "retry failed"): each is looked up on
    /// both sides (a one-key listing) instead of the buckets being listed whole, and decided as a listing
    /// would have it. A key gone from the source is not copied. The keys are relative to
    /// the run's prefix, so a prefix list is not used with them.
    pub only_keys: Option<Vec<String>>,
    /// What to copy (globs, sizes, ages); the default lets everything through.
    pub filter: Filter,
    /// The prefix list: each prefix (relative to the source's prefix) is listed and
    /// diffed on its own, [`Self::list_concurrency`] at once; `None` syncs the whole prefix.
    pub prefixes: Option<Vec<String>>,
    /// Prefixes of the prefix list listed and diffed at once.
    pub list_concurrency: usize,
    /// `--delete`: destination objects missing at the source (within the prefix and the
    /// filters) are deleted once every copy succeeded ([`super::deletes`]).
    pub delete: bool,
    /// `--max-delete`: the delete step is refused whole when it would remove more.
    pub max_delete: Option<MaxDelete>,
    /// `--backup-prefix`: deleted and overwritten objects are moved there (server-side
    /// copy, then delete) instead of being removed or overwritten in place.
    pub backup: Option<BackupPrefix>,
    /// `--bwlimit`: one rate for every body the run streams (server-side copies are not
    /// limited).
    pub bwlimit: Option<Arc<Bandwidth>>,
    /// `--restore-days` (and `--restore-tier`): archived sources not restored get a restore
    /// request; `None` leaves them as `archived`.
    pub restore: Option<(i32, super::bucket::Tier)>,
}

/// `--restore-tier`: Standard or Bulk (any case). Expedited is left out: it fails on
/// DEEP_ARCHIVE and costs the most.
pub fn parse_tier(s: &str) -> Result<super::bucket::Tier, String> {
    use super::bucket::Tier;
    match s.trim().to_ascii_lowercase().as_str() {
        "standard" => Ok(Tier::Standard),
        "bulk" => Ok(Tier::Bulk),
        _ => Err(format!("--restore-tier {s:?}: expected Standard or Bulk")),
    }
}

/// `--list-concurrency`'s default.
pub const DEFAULT_LIST_CONCURRENCY: usize = 8;

/// `--stream-buffer`'s default: 1 GiB.
pub const DEFAULT_STREAM_BUFFER: u64 = 1 << 30;

/// What bounds the copies of one run: requests in flight, and, when the run streams, the
/// bytes held in memory at once, so memory follows `stream_buffer`, not object sizes.
struct Permits {
    requests: Semaphore,
    /// In KiB; `None` for server-side copies (they hold no bytes).
    buffer: Option<(Semaphore, u32)>,
}

impl Permits {
    fn new(spec: &ObjectsSpec) -> Self {
        let kib = spec.stream_buffer.div_ceil(1024).clamp(1, u32::MAX.into()) as u32;
        Self {
            requests: Semaphore::new(spec.concurrency.max(1)),
            buffer: (spec.mode == Mode::Stream).then(|| (Semaphore::new(kib as usize), kib)),
        }
    }

    /// A request slot, after `bytes` of buffer when the run streams.
    async fn take(&self, bytes: u64) -> (SemaphorePermit<'_>, Option<SemaphorePermit<'_>>) {
        let held = match &self.buffer {
            None => None,
            Some((buffer, total)) => {
                let kib = bytes.div_ceil(1024).clamp(1, (*total).into()) as u32;
                Some(buffer.acquire_many(kib).await.expect("semaphore open"))
            }
        };
        (self.requests.acquire().await.expect("semaphore open"), held)
    }
}

/// The edges of an object run.
pub struct ObjectEdges<'a> {
    pub src: &'a Bucket,
    pub dst: &'a Bucket,
    pub store: &'a dyn StatusStore,
    pub ledger: &'a dyn UploadLedger,
    pub progress: &'a dyn Progress,
    /// Ctrl-C, SIGTERM, a console shutdown: listing stops, no copy starts, copies in flight
    /// are abandoned (their open uploads stay in the ledger for the next run to resume).
    pub stop: Stop,
}

const FINAL: u64 = 2;

#[derive(Default)]
struct Counts {
    in_sync: u64,
    copies: u64,
    /// Source objects left out by the filter.
    filtered: u64,
    /// `--delete`: destination objects missing at the source, and those in scope.
    candidates: Candidates,
    /// The candidates of the other prefixes of a prefix list (counted in `candidates`).
    spills: Vec<Candidates>,
}

/// Runs one object sync. Store errors end the run; every other failure is recorded on its
/// object and the others go on. A listing error fails the run as a whole (nothing is
/// copied past a listing we could not read, and nothing is silently skipped).
///
/// When `edges.stop` fires the run ends early: the listings stop, objects not yet started
/// are not started (nor recorded), objects in flight have their requests dropped and are
/// recorded as failed ("interrupted by …"), multipart uploads stay open in the ledger with
/// their finished parts, so the next run resumes them, and the run record says why it was
/// interrupted.
pub async fn run_objects(
    spec: &ObjectsSpec,
    edges: &ObjectEdges<'_>,
) -> Result<SyncReport, ObjectsError> {
    let started = Utc::now();
    let mut run = RunRecord {
        run_id: spec.run_id.clone(),
        source: edges.src.url.to_string(),
        dest: edges.dst.url.to_string(),
        dry_run: spec.dry_run,
        started_at: started,
        ended_at: None,
        copied: 0,
        skipped: 0,
        failed: 0,
        bytes: 0,
        kind: crate::status::RunKind::Objects,
        ..Default::default()
    };
    if !spec.dry_run {
        edges.store.put_run(&run).await?;
    }
    let permits = Arc::new(Permits::new(spec));
    // The pieces listed and diffed on their own: the prefix list's prefixes, or the
    // folders found by delimiter listings (a huge bucket lists many pieces at once).
    let pieces = match (&spec.prefixes, &spec.only_keys) {
        (_, Some(_)) => None,
        (Some(list), None) => Some(
            list.iter()
                .map(|p| Piece {
                    base: p.clone(),
                    leaves: false,
                })
                .collect(),
        ),
        (None, None) if spec.list_concurrency > 1 => {
            Box::pin(split(edges, spec.list_concurrency)).await
        }
        (None, None) => None,
    };
    let (kept, counts) = match pieces {
        None => Box::pin(sync_prefix(spec, edges, "", false, &permits)).await?,
        Some(list) => {
            let sides: Vec<(&Piece, Bucket, Bucket)> = list
                .iter()
                .map(|p| (p, edges.src.under(&p.base), edges.dst.under(&p.base)))
                .collect();
            let mut prefixes = futures::stream::iter(sides.iter().map(|(p, src, dst)| {
                let permits = &permits;
                async move {
                    let sub = ObjectEdges {
                        src,
                        dst,
                        store: edges.store,
                        ledger: edges.ledger,
                        progress: edges.progress,
                        stop: edges.stop.clone(),
                    };
                    Box::pin(sync_prefix(spec, &sub, &p.base, p.leaves, permits)).await
                }
            }))
            .buffer_unordered(spec.list_concurrency.max(1));
            let (mut kept, mut counts) = (Kept::default(), Counts::default());
            let mut spills = Vec::new();
            while let Some(r) = prefixes.next().await {
                let (k, c) = r?;
                kept.absorb(k);
                counts.in_sync += c.in_sync;
                counts.copies += c.copies;
                counts.filtered += c.filtered;
                counts.candidates.absorb(c.candidates, &mut spills);
            }
            counts.spills = spills;
            (kept, counts)
        }
    };
    let (mut kept, mut counts) = (kept, counts);
    // Interrupted: out at once; the next run aborts what this one left unrecorded.
    let stopped = edges.stop.reason();
    if !spec.dry_run && stopped.is_none() {
        abort_unrecorded_uploads(edges).await;
    }
    let cands = std::mem::take(&mut counts.candidates);
    let refused = deletes::refusal(
        cands.count,
        cands.scope,
        kept.failed,
        stopped.is_some(),
        spec.max_delete,
    );
    // A dry run lists what it would delete even over the limit, and says it would refuse.
    let over_limit = refused.is_some() && kept.failed == 0 && stopped.is_none();
    if spec.delete && (refused.is_none() || (spec.dry_run && over_limit)) {
        let mut spills = std::mem::take(&mut counts.spills);
        spills.push(cands);
        Box::pin(delete_extras(spec, edges, spills, &mut kept)).await?;
    }
    run.deleted = kept.deleted;
    run.archived = kept.archived;
    run.restoring = kept.restoring;
    run.copied = kept.copied;
    run.failed = kept.failed;
    run.skipped = counts.in_sync;
    run.filtered = counts.filtered;
    run.bytes = kept.bytes;
    run.ended_at = Some(Utc::now());
    if let Some(why) = stopped {
        run.error = Some(format!("interrupted by {why}"));
    } else if let Some(r) = refused.as_ref().filter(|_| spec.delete) {
        tracing::warn!(run = %run.run_id, "{r}");
        run.error = Some(r.clone());
    }
    run.result = if stopped.is_some() {
        crate::status::RunResult::Interrupted
    } else if run.failed > 0 || (spec.delete && over_limit) {
        crate::status::RunResult::Failed
    } else {
        crate::status::RunResult::Succeeded
    };
    if spec.dry_run {
        run.to_copy = Some(counts.copies);
    }
    if !spec.dry_run {
        edges.store.put_run(&run).await?;
    }
    if kept.omitted > 0 {
        tracing::warn!(omitted = kept.omitted, run = %run.run_id, "more objects than the report lists; every one is in the state file (transfer-hub status --run)");
    }
    Ok(SyncReport {
        registries: Default::default(),
        left_out: Vec::new(),
        quotas: Vec::new(),
        run,
        items: kept.items,
    })
}

/// One piece of a run's key space: the objects under `base` (relative to the run's
/// prefixes), or, `leaves`, only those right under it (not below a further `/`).
struct Piece {
    base: String,
    leaves: bool,
}

/// How deep [`split`] looks for folders.
pub const MAX_SPLIT_DEPTH: usize = 3;

/// Delimiter-listing pages [`split`] reads of one folder before it lists the folder whole.
const MAX_SPLIT_PAGES: usize = 4;

/// Splits the key space into folders (common prefixes of both sides, with delimiter `/`,
/// depth 1 to [`MAX_SPLIT_DEPTH`]) until there are at least two pieces for each of the
/// `want` listings at once; the objects right under a folder are a piece of their own.
/// `None` when there is nothing to split (one piece). A folder whose delimiter listing is
/// long (many objects right under it) or fails is kept whole: its listing says why.
async fn split(edges: &ObjectEdges<'_>, want: usize) -> Option<Vec<Piece>> {
    let mut pieces = vec![Piece {
        base: String::new(),
        leaves: false,
    }];
    for _ in 0..MAX_SPLIT_DEPTH {
        if pieces.len() >= 2 * want || edges.stop.reason().is_some() {
            break;
        }
        let found: Vec<Option<(Vec<String>, bool)>> =
            futures::stream::iter(pieces.iter().map(|p| async move {
                if p.leaves {
                    return None;
                }
                let (s, d) = (edges.src.under(&p.base), edges.dst.under(&p.base));
                match tokio::join!(s.folders(MAX_SPLIT_PAGES), d.folders(MAX_SPLIT_PAGES)) {
                    (Ok(Some((mut a, la))), Ok(Some((b, lb)))) => {
                        a.extend(b);
                        a.sort();
                        a.dedup();
                        Some((a, la || lb))
                    }
                    _ => None,
                }
            }))
            .buffered(want.max(1))
            .collect()
            .await;
        let mut next = Vec::new();
        let mut grew = false;
        for (p, f) in pieces.into_iter().zip(found) {
            match f {
                None => next.push(p),
                Some((folders, leaves)) => {
                    grew |= !folders.is_empty();
                    if leaves {
                        next.push(Piece {
                            base: p.base.clone(),
                            leaves: true,
                        });
                    }
                    next.extend(folders.into_iter().map(|f| Piece {
                        base: format!("{}{f}", p.base),
                        leaves: false,
                    }));
                }
            }
        }
        pieces = next;
        if !grew {
            break;
        }
    }
    tracing::debug!(pieces = pieces.len(), "listing split into pieces");
    (pieces.len() > 1).then_some(pieces)
}

/// Lists and diffs one prefix (`base`, relative to the run's source prefix; empty for the
/// whole of it; `leaves`: only the objects right under it) and copies what differs. A
/// listing out of key order is sorted on disk and diffed again.
async fn sync_prefix(
    spec: &ObjectsSpec,
    edges: &ObjectEdges<'_>,
    base: &str,
    leaves: bool,
    permits: &Arc<Permits>,
) -> Result<(Kept, Counts), ObjectsError> {
    let list = |b: &Bucket| {
        if leaves {
            Box::pin(b.list_leaves()) as std::pin::Pin<Box<dyn futures::Stream<Item = _> + Send>>
        } else {
            Box::pin(b.list())
        }
    };
    let mut kept = Kept::default();
    let first = match &spec.only_keys {
        Some(keys) => {
            let (s, d) = (looked_up(edges.src, keys), looked_up(edges.dst, keys));
            pass(spec, edges, base, s, d, &mut kept, permits).await
        }
        None => {
            pass(
                spec,
                edges,
                base,
                list(edges.src),
                list(edges.dst),
                &mut kept,
                permits,
            )
            .await
        }
    };
    let counts = match first {
        Err(ObjectsError::Diff(DiffError::OutOfOrder {
            side,
            key,
            previous,
        })) if edges.stop.reason().is_none() => {
            tracing::warn!(
                side,
                key,
                previous,
                "a listing is not in key order; sorting both on disk"
            );
            let dir = spec.spill_dir.clone().unwrap_or_else(std::env::temp_dir);
            let (s, d) = tokio::try_join!(
                sorted(list(edges.src), dir.clone()),
                sorted(list(edges.dst), dir)
            )?;
            // What the first pass copied is in sync now; what it failed is tried again.
            let mut again = Kept {
                copied: kept.copied,
                bytes: kept.bytes,
                ..Default::default()
            };
            again.items = std::mem::take(&mut kept.items)
                .into_iter()
                .filter(|i| i.status == Status::Copied)
                .collect();
            again.kept_copied = again.items.len();
            again.omitted = kept.omitted_copied;
            again.omitted_copied = kept.omitted_copied;
            kept = again;
            let mut c = pass(spec, edges, base, s, d, &mut kept, permits).await?;
            c.in_sync = c
                .in_sync
                .saturating_sub(kept.copied.saturating_sub(c.copies));
            c
        }
        other => other?,
    };
    Ok((kept, counts))
}

/// `keys` as a listing of `b` would give them: in key order, once each, those that exist
/// ([`Bucket::listed`] each, 16 at once).
pub(crate) fn looked_up<'a>(
    b: &'a Bucket,
    keys: &[String],
) -> impl futures::Stream<Item = Result<Entry, ItemError>> + Unpin + 'a {
    let keys: std::collections::BTreeSet<String> = keys.iter().cloned().collect();
    Box::pin(
        futures::stream::iter(keys)
            .map(move |key| async move { b.listed(&key).await })
            .buffered(16)
            .filter_map(|r| async move { r.transpose() }),
    )
}

/// Aborts the destination's open uploads that a run of ours started but never recorded:
/// killed between CreateMultipartUpload and writing the upload down, or a create sent
/// again after its answer was lost. Nothing can complete them (their id is known to no
/// one), and S3 bills their parts until they are aborted. The intent written before every
/// create says they are ours; an upload without one is somebody else's and left alone,
/// as check-multipart does on AWS. Errors are logged; the run's result stands.
async fn abort_unrecorded_uploads(edges: &ObjectEdges<'_>) {
    let known: std::collections::HashSet<String> = match edges.ledger.open().await {
        Ok(open) => open.into_iter().map(|u| u.upload_id).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open uploads; unrecorded uploads are left for the next run");
            return;
        }
    };
    let open = match edges.dst.open_uploads().await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e.message, "cannot list the destination's open uploads; unrecorded uploads are left for the next run");
            return;
        }
    };
    for (key, id, _) in open {
        if known.contains(&id) {
            continue;
        }
        let dest = format!("s3://{}/{key}", edges.dst.url.bucket);
        match edges.ledger.intended(&dest).await {
            Ok(true) => match edges.dst.abort_upload(&key, &id).await {
                Ok(()) => {
                    tracing::info!(object = %dest, upload_id = %id, "aborted an upload of ours that was never recorded")
                }
                Err(e) => {
                    tracing::warn!(object = %dest, upload_id = %id, error = %e.message, "cannot abort an unrecorded upload of ours; the next run tries again")
                }
            },
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(object = %dest, error = %e, "cannot tell whether this upload is ours; left alone")
            }
        }
    }
}

/// The most copied (and, apart, failed) object records a run keeps in memory for its
/// report; every record goes to the status store as it finishes, so memory does not grow
/// with the bucket. `transfer-hub status --run ID` lists them all.
pub const MAX_REPORTED_ITEMS: usize = 10_000;

/// The counts of a run, and the records its report lists (bounded, failures first kept).
#[derive(Default)]
struct Kept {
    items: Vec<ItemRecord>,
    copied: u64,
    failed: u64,
    bytes: u64,
    kept_copied: usize,
    kept_failed: usize,
    omitted: u64,
    omitted_copied: u64,
    /// Destination objects deleted (or, on a dry run, to delete).
    deleted: u64,
    /// Archived sources left as they are, and those being restored.
    archived: u64,
    restoring: u64,
}

impl Kept {
    /// Takes in the counts and records of another prefix of the same run.
    fn absorb(&mut self, other: Kept) {
        let (copied, failed, bytes, deleted) = (self.copied, self.failed, self.bytes, self.deleted);
        let (archived, restoring) = (self.archived, self.restoring);
        self.omitted += other.omitted;
        self.omitted_copied += other.omitted_copied;
        for rec in other.items {
            self.add(rec);
        }
        // `add` counted the records listed; the counts are the other run's own.
        self.copied = copied + other.copied;
        self.failed = failed + other.failed;
        self.bytes = bytes + other.bytes;
        self.deleted = deleted + other.deleted;
        self.archived = archived + other.archived;
        self.restoring = restoring + other.restoring;
    }

    fn add(&mut self, rec: ItemRecord) {
        match rec.status {
            Status::Copied => {
                self.copied += 1;
                self.bytes += rec.bytes;
                if self.kept_copied < MAX_REPORTED_ITEMS {
                    self.kept_copied += 1;
                    self.items.push(rec);
                } else {
                    self.omitted += 1;
                    self.omitted_copied += 1;
                }
            }
            Status::Failed => {
                self.failed += 1;
                // Parts a failed or interrupted object moved before it stopped.
                self.bytes += rec.bytes;
                if self.kept_failed < MAX_REPORTED_ITEMS {
                    self.kept_failed += 1;
                    self.items.push(rec);
                } else {
                    self.omitted += 1;
                }
            }
            // Dry runs: what would be copied; deletes.
            other => {
                match other {
                    Status::Deleted => self.deleted += 1,
                    Status::Archived => self.archived += 1,
                    Status::Restoring => self.restoring += 1,
                    _ => {}
                }
                if self.items.len() < 2 * MAX_REPORTED_ITEMS {
                    self.items.push(rec);
                } else {
                    self.omitted += 1;
                }
            }
        }
    }
}

/// What ends a run early.
#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Diff(#[from] DiffError),
}

/// A listing sorted on disk, as a stream.
pub(crate) async fn sorted(
    list: impl futures::Stream<Item = Result<Entry, ItemError>> + Unpin + Send + 'static,
    dir: PathBuf,
) -> Result<impl futures::Stream<Item = Result<Entry, std::io::Error>> + Unpin, DiffError> {
    let it = tokio::task::spawn_blocking(move || {
        let mut first_err = None;
        let mut stream = futures::executor::block_on_stream(list);
        let entries = std::iter::from_fn(|| match stream.next()? {
            Ok(e) => Some(e),
            Err(e) => {
                first_err = Some(e);
                None
            }
        });
        let sorted = diff::external_sort(entries, &dir, 200_000)?;
        match first_err {
            Some(e) => Err(DiffError::Listing {
                side: "listing",
                message: e.message,
            }),
            None => Ok(sorted),
        }
    })
    .await
    .map_err(|e| DiffError::Listing {
        side: "listing",
        message: e.to_string(),
    })??;
    Ok(futures::stream::iter(it))
}

async fn pass<S, D, E1, E2>(
    spec: &ObjectsSpec,
    edges: &ObjectEdges<'_>,
    base: &str,
    src: S,
    dst: D,
    kept: &mut Kept,
    permits: &Arc<Permits>,
) -> Result<Counts, ObjectsError>
where
    S: futures::Stream<Item = Result<Entry, E1>> + Unpin,
    D: futures::Stream<Item = Result<Entry, E2>> + Unpin,
    E1: std::fmt::Display,
    E2: std::fmt::Display,
{
    let (tx, rx) = mpsc::channel::<(Entry, Reason)>(1024);
    let (in_sync, copies) = (std::cell::Cell::new(0u64), std::cell::Cell::new(0u64));
    let filtered = std::cell::Cell::new(0u64);
    // `--delete`: candidates are found by listings, not by looking up a few keys.
    let deleting = spec.delete && spec.only_keys.is_none();
    let candidates = std::cell::RefCell::new(Candidates::default());
    let spill_dir = spec.spill_dir.clone().unwrap_or_else(std::env::temp_dir);
    // The backup prefix is outside the sync: its objects are neither copied, nor
    // compared, nor deleted.
    let backed_up = |e: &Entry| {
        spec.backup
            .as_ref()
            .is_some_and(|b| b.holds(&edges.dst.url.key(&e.key)))
    };
    let warned_backup = std::cell::Cell::new(false);
    // The filter judges keys relative to the run's source prefix (a prefix list's
    // prefix included).
    let admits = |e: &Entry| {
        if spec.filter.is_empty() {
            return true;
        }
        let key = if base.is_empty() {
            std::borrow::Cow::Borrowed(e.key.as_str())
        } else {
            std::borrow::Cow::Owned(format!("{base}{}", e.key))
        };
        spec.filter.admits(&key, e.size, e.modified)
    };
    let listing = async {
        // Checksums are not in listings: equal sizes are settled by one HEAD on each side.
        let listed = match spec.compare {
            Compare::Checksum => Compare::Size,
            other => other,
        };
        let r = diff::merge(src, dst, listed, |d| {
            let (tx, in_sync, copies, filtered, admits) =
                (&tx, &in_sync, &copies, &filtered, &admits);
            let (candidates, backed_up, warned_backup, spill_dir) =
                (&candidates, &backed_up, &warned_backup, &spill_dir);
            async move {
                // Left out by the filter: neither copied nor deleted, only counted (on
                // the source's side; a destination object left out is just left alone).
                let out = match &d {
                    Decision::Copy(e, _) | Decision::InSync(e) | Decision::Changed { src: e, .. }
                        if backed_up(e) =>
                    {
                        if !warned_backup.replace(true) {
                            tracing::warn!(key = %e.key, "source objects whose destination key lies under --backup-prefix are left out (counted as filtered)");
                        }
                        true
                    }
                    Decision::Copy(e, _) | Decision::InSync(e) => !admits(e),
                    Decision::Changed { src, .. } => !admits(src),
                    Decision::Extra(e) => {
                        if !admits(e) || backed_up(e) {
                            return Ok(());
                        }
                        false
                    }
                };
                if out {
                    filtered.set(filtered.get() + 1);
                    return Ok(());
                }
                // The destination's objects in scope: what `--max-delete P%` measures.
                if deleting && !matches!(d, Decision::Copy(_, Reason::Missing)) {
                    candidates.borrow_mut().scope += 1;
                }
                let d = match d {
                    // Other ETags than the source's may still be a copy verified earlier.
                    Decision::Changed { src, dest, reason } => {
                        let url = edges.dst.url.object(&src.key);
                        match edges.ledger.verified(&url).await {
                            Ok(p) if diff::settled_by(p.as_ref(), &src, &dest) => {
                                Decision::InSync(src)
                            }
                            Ok(_) => Decision::Copy(src, reason),
                            Err(err) => {
                                tracing::warn!(key = %src.key, error = %err, "cannot read the verified copies; copying");
                                Decision::Copy(src, reason)
                            }
                        }
                    }
                    Decision::InSync(e) if spec.compare == Compare::Checksum => {
                        match checksums_differ(edges, &e).await {
                            Ok(false) => Decision::InSync(e),
                            Ok(true) => Decision::Copy(e, diff::Reason::ChecksumDiffers),
                            Err(err) => {
                                tracing::warn!(key = %e.key, error = %err.message, "cannot compare checksums; copying");
                                Decision::Copy(e, diff::Reason::ChecksumDiffers)
                            }
                        }
                    }
                    d => d,
                };
                match d {
                    Decision::Copy(e, reason) => {
                        copies.set(copies.get() + 1);
                        edges.progress.queued(e.size);
                        tx.send((e, reason))
                            .await
                            .map_err(|_| "the copy workers stopped".to_string())?;
                    }
                    Decision::InSync(_) => in_sync.set(in_sync.get() + 1),
                    Decision::Extra(e) if deleting => {
                        candidates
                            .borrow_mut()
                            .push(base, &e, spill_dir)
                            .map_err(|e| {
                                format!(
                                    "cannot write the delete candidates to {}: {e}",
                                    spill_dir.display()
                                )
                            })?;
                    }
                    Decision::Extra(_) | Decision::Changed { .. } => {}
                }
                Ok::<(), String>(())
            }
        })
        .await;
        drop(tx);
        r
    };
    // A stop ends the listing (and with it the queue): what was listed but not started is
    // left for the next run.
    let producer = async {
        tokio::select! {
            r = listing => r,
            _ = edges.stop.stopped() => Ok(()),
        }
    };
    let consumer = tokio_stream_of(rx)
        .map(|(e, reason)| {
            let permits = permits.clone();
            async move {
                if edges.stop.reason().is_some() {
                    return None;
                }
                Some(copy_object(spec, edges, base, e, reason, permits).await)
            }
        })
        .buffer_unordered(spec.concurrency.max(1))
        .filter_map(futures::future::ready)
        .then(|rec| async move {
            if !spec.dry_run {
                edges.store.put_item(&rec).await?;
            }
            edges.progress.finished(&rec);
            Ok::<ItemRecord, StoreError>(rec)
        })
        // Each record is in the store as it finishes; only counts and a bounded report stay.
        .fold(Ok::<(), StoreError>(()), |acc, r| {
            let out = match (acc, r) {
                (Ok(()), Ok(rec)) => {
                    kept.add(rec);
                    Ok(())
                }
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
            futures::future::ready(out)
        });
    let (merged, stored) = tokio::join!(producer, consumer);
    stored?;
    match merged {
        Ok(()) => Ok(Counts {
            in_sync: in_sync.get(),
            copies: copies.get(),
            filtered: filtered.get(),
            candidates: candidates.into_inner(),
            spills: Vec::new(),
        }),
        Err(MergeError::Diff(e)) => Err(e.into()),
        Err(MergeError::Emit(e)) => Err(ObjectsError::Diff(DiffError::Listing {
            side: "copy",
            message: e,
        })),
    }
}

/// Whether two same-size objects differ by their stored checksums (CRC32, CRC32C,
/// CRC64NVME, SHA-1, SHA-256; the first both sides have), else by ETag.
async fn checksums_differ(edges: &ObjectEdges<'_>, e: &Entry) -> Result<bool, ItemError> {
    let (a, b) = tokio::try_join!(edges.src.head(&e.key), edges.dst.head(&e.key))?;
    let (Some(a), Some(b)) = (a, b) else {
        return Ok(true);
    };
    for (x, y) in a.checksums.iter().zip(b.checksums.iter()) {
        if let (Some(x), Some(y)) = (x, y) {
            return Ok(x != y);
        }
    }
    if a.etag == b.etag {
        return Ok(false);
    }
    // No checksum on both sides and other ETags: equal only if a verified copy says so.
    let pair = edges
        .ledger
        .verified(&edges.dst.url.object(&e.key))
        .await
        .map_err(ledger_error)?;
    let entry = |h: &super::bucket::Head| Entry {
        archived: false,
        key: e.key.clone(),
        size: h.size,
        etag: h.etag.clone(),
        checksum: None,
        modified: None,
    };
    Ok(!diff::settled_by(pair.as_ref(), &entry(&a), &entry(&b)))
}

fn tokio_stream_of<T: Send + 'static>(mut rx: mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The backup bucket of a listing of `base` (a prefix of the prefix list, or empty): the
/// destination's bucket and client under the backup prefix.
fn backup_bucket(backup: &BackupPrefix, dst: &Bucket, base: &str) -> Bucket {
    Bucket {
        client: dst.client.clone(),
        url: S3Url {
            bucket: dst.url.bucket.clone(),
            prefix: format!("{}{base}", backup.0),
        },
        requester_pays: false,
    }
}

/// Moves the destination object `e` (keys relative to `dst`) into `backup` with a
/// server-side copy pinned to its ETag (multipart when big, verified like any copy).
/// Returns the backup's URL.
async fn back_up(
    spec: &ObjectsSpec,
    dst: &Bucket,
    backup: &Bucket,
    e: Entry,
    permits: Arc<Permits>,
    edges: &ObjectEdges<'_>,
) -> Result<String, ItemError> {
    let copy = ObjectsSpec {
        mode: Mode::Server,
        tags: true,
        dry_run: false,
        backup: None,
        ..spec.clone()
    };
    let via = ObjectEdges {
        src: dst,
        dst: backup,
        store: edges.store,
        ledger: edges.ledger,
        progress: &crate::images::sync::Silent,
        stop: edges.stop.clone(),
    };
    let rec = Box::pin(copy_object(&copy, &via, "", e, Reason::Missing, permits)).await;
    match rec.error {
        None => Ok(rec.dest),
        Some(err) => Err(ItemError {
            message: format!("cannot back up to {}: {}", rec.dest, err.message),
            ..err
        }),
    }
}

/// `--backup-prefix`: before the destination object is overwritten, it is moved to the
/// backup prefix (looked up first: the listing does not pass its ETag along).
async fn back_up_overwritten(
    spec: &ObjectsSpec,
    edges: &ObjectEdges<'_>,
    base: &str,
    key: &str,
    permits: &Arc<Permits>,
) -> Result<(), ItemError> {
    let Some(backup) = &spec.backup else {
        return Ok(());
    };
    let Some(h) = edges.dst.head(key).await? else {
        return Ok(());
    };
    let e = Entry {
        archived: false,
        key: key.to_string(),
        size: h.size,
        etag: h.etag,
        checksum: None,
        modified: None,
    };
    let to = backup_bucket(backup, edges.dst, base);
    let at = back_up(spec, edges.dst, &to, e, permits.clone(), edges).await?;
    tracing::info!(object = %edges.dst.url.object(key), backup = %at, "backed up before overwriting");
    Ok(())
}

/// The delete step: every candidate the listings spilled is removed, or moved to the
/// backup prefix, `spec.concurrency` at once, with retries; each gets a `deleted` (or
/// failed) record. A dry run records what it would delete and touches nothing.
async fn delete_extras(
    spec: &ObjectsSpec,
    edges: &ObjectEdges<'_>,
    spills: Vec<Candidates>,
    kept: &mut Kept,
) -> Result<(), ObjectsError> {
    let permits = Arc::new(Permits::new(&ObjectsSpec {
        mode: Mode::Server,
        ..spec.clone()
    }));
    let backup = spec
        .backup
        .as_ref()
        .map(|b| backup_bucket(b, edges.dst, ""));
    let mut entries = Vec::new();
    for c in spills {
        entries.push(c.read().map_err(|e| DiffError::Listing {
            side: "delete candidates",
            message: e.to_string(),
        })?);
    }
    let read_error = std::cell::RefCell::new(None);
    let all = entries.into_iter().flatten().map_while(|r| match r {
        Ok(e) => Some(e),
        Err(e) => {
            *read_error.borrow_mut() = Some(e);
            None
        }
    });
    let deleted = futures::stream::iter(all)
        .map(|e| {
            let (permits, backup) = (permits.clone(), backup.as_ref());
            async move {
                if edges.stop.reason().is_some() {
                    return None;
                }
                Some(delete_one(spec, edges, backup, e, permits).await)
            }
        })
        .buffer_unordered(spec.concurrency.max(1))
        .filter_map(futures::future::ready);
    futures::pin_mut!(deleted);
    while let Some(rec) = deleted.next().await {
        if !spec.dry_run {
            edges.store.put_item(&rec).await?;
        }
        edges.progress.finished(&rec);
        kept.add(rec);
    }
    if let Some(e) = read_error.borrow_mut().take() {
        return Err(ObjectsError::Diff(DiffError::Listing {
            side: "delete candidates",
            message: e.to_string(),
        }));
    }
    Ok(())
}

/// The record of one object's copy or delete as it starts: `status` until it ends.
fn started_record(
    spec: &ObjectsSpec,
    source: String,
    dest: String,
    status: Status,
    e: &Entry,
) -> ItemRecord {
    ItemRecord {
        run_id: spec.run_id.clone(),
        source,
        dest,
        status,
        source_digest: e.etag.clone(),
        dest_digest: None,
        attempts: 0,
        error: None,
        bytes: 0,
        started_at: Some(Utc::now()),
        ended_at: None,
        version: FINAL,
        line: None,
        resumed: None,
        waiting_until: None,
        reason: None,
    }
}

/// Deletes (or moves to `backup`) one destination object and returns its record.
async fn delete_one(
    spec: &ObjectsSpec,
    edges: &ObjectEdges<'_>,
    backup: Option<&Bucket>,
    e: Entry,
    permits: Arc<Permits>,
) -> ItemRecord {
    let mut rec = started_record(
        spec,
        edges.dst.url.object(&e.key),
        backup.map(|b| b.url.object(&e.key)).unwrap_or_default(),
        Status::Deleted,
        &e,
    );
    if !spec.dry_run {
        let key = e.key.clone();
        let backed = match backup {
            None => Ok(()),
            Some(b) => back_up(spec, edges.dst, b, e, permits.clone(), edges)
                .await
                .map(|_| ()),
        };
        let r = match backed {
            Err(err) => Err(err),
            Ok(()) => {
                let (r, attempts) = with_retries_until(&spec.retry, &edges.stop, |_| {
                    or_stop(&edges.stop, async {
                        let _p = permits.take(0).await;
                        edges.dst.delete(&key).await
                    })
                })
                .await;
                rec.attempts = attempts;
                r
            }
        };
        if let Err(err) = r {
            rec.status = Status::Failed;
            rec.error = Some(err);
        }
    }
    rec.ended_at = Some(Utc::now());
    rec
}

/// An archived source (listed in GLACIER or DEEP_ARCHIVE): `None` when HEAD shows it
/// restored (copy it), else what it is left as: `Restoring` when a restore is under way or
/// `--restore-days` asked for one now (not on a dry run), `Archived` otherwise. A restore
/// refused by S3 is that object's error, with the service's code.
async fn archived(
    spec: &ObjectsSpec,
    edges: &ObjectEdges<'_>,
    key: &str,
) -> Result<Option<Status>, ItemError> {
    use super::bucket::Restore;
    let head = edges.src.head(key).await?;
    match head.and_then(|h| h.restore) {
        Some(Restore::Done) => Ok(None),
        Some(Restore::Ongoing) => Ok(Some(Status::Restoring)),
        None => match &spec.restore {
            None => Ok(Some(Status::Archived)),
            Some(_) if spec.dry_run => Ok(Some(Status::Restoring)),
            Some((days, tier)) => {
                let (r, _) = with_retries_until(&spec.retry, &edges.stop, |_| {
                    or_stop(&edges.stop, edges.src.restore(key, *days, tier.clone()))
                })
                .await;
                r.map(|()| {
                    tracing::info!(object = %edges.src.url.object(key), days, tier = tier.as_str(), "restore requested");
                    Some(Status::Restoring)
                })
            }
        },
    }
}

/// Copies one object (with retries) and returns its final record. `reason` says whether
/// the destination holds an older object (backed up first with `--backup-prefix`).
async fn copy_object(
    spec: &ObjectsSpec,
    edges: &ObjectEdges<'_>,
    base: &str,
    e: Entry,
    reason: Reason,
    permits: Arc<Permits>,
) -> ItemRecord {
    let mut rec = started_record(
        spec,
        edges.src.url.object(&e.key),
        edges.dst.url.object(&e.key),
        Status::Planned,
        &e,
    );
    // GLACIER, DEEP_ARCHIVE: copied once restored, else left (or a restore asked for).
    if e.archived {
        match Box::pin(archived(spec, edges, &e.key)).await {
            Ok(None) => {}
            Ok(Some(status)) => {
                rec.status = status;
                rec.ended_at = Some(Utc::now());
                return rec;
            }
            Err(err) => {
                rec.status = Status::Failed;
                rec.error = Some(err);
                rec.ended_at = Some(Utc::now());
                return rec;
            }
        }
    }
    if spec.dry_run {
        // What it would move: the whole object (a dry run looks at no open upload).
        rec.bytes = e.size;
        rec.ended_at = Some(Utc::now());
        return rec;
    }
    if reason != Reason::Missing
        && let Err(err) = Box::pin(back_up_overwritten(spec, edges, base, &e.key, &permits)).await
    {
        rec.status = Status::Failed;
        rec.error = Some(err);
        rec.ended_at = Some(Utc::now());
        return rec;
    }
    let t = Transfer {
        src: edges.src,
        dst: edges.dst,
        mode: spec.mode,
        opts: &spec.dest_opts,
        tags: spec.tags,
        remove_bad_copies: true,
        task: None,
        run: None,
        bwlimit: spec.bwlimit.as_deref(),
    };
    let single_limit = match spec.mode {
        Mode::Server => MAX_SINGLE,
        Mode::Stream => spec.part_size,
    };
    // A part of the source's own layout is held whole when streamed: at most what the
    // stream buffer (or the part size, when bigger) allows.
    let max_part = match spec.mode {
        Mode::Server => multipart::MAX_PART,
        Mode::Stream => spec.part_size.max(spec.stream_buffer),
    };
    let moved = Moved::default();
    let mut e = e;
    let mut replans = 0;
    let r = loop {
        let planned = {
            let _p = permits.take(0).await;
            t.plan(&e, spec.threshold, spec.part_size, single_limit, max_part)
                .await
        };
        let (r, attempts) = match planned {
            Err(err) => (Err(err), 0),
            Ok((Plan::Single, _)) => {
                let r = with_retries_until(&spec.retry, &edges.stop, |_| {
                    or_stop(&edges.stop, async {
                        let _p = permits.take(e.size).await;
                        t.single(&e).await
                    })
                })
                .await;
                if r.0.is_ok() {
                    moved.add(e.size, edges.progress);
                }
                r
            }
            Ok((Plan::Multipart { part_size, parts }, same_parts)) => {
                // CRC32s of the parts read in this run, across attempts.
                let crcs = std::sync::Mutex::new(std::collections::HashMap::new());
                let layout = Layout {
                    part_size,
                    parts: &parts,
                    same_parts,
                };
                with_retries_until(&spec.retry, &edges.stop, |_| {
                    or_stop(
                        &edges.stop,
                        multipart_copy(
                            &t,
                            edges.ledger,
                            &e,
                            &layout,
                            &permits,
                            &crcs,
                            (&moved, edges.progress),
                        ),
                    )
                })
                .await
            }
        };
        rec.attempts += attempts;
        // The source changed since it was listed: plan it again from what it holds now
        // (a few times; an object rewritten faster than it copies fails, named).
        match &r {
            Err(err) if err.class == ErrorClass::SourceChanged && replans < MAX_REPLANS => {
                replans += 1;
                match edges.src.head(&e.key).await {
                    Ok(Some(h)) => {
                        tracing::info!(object = %rec.source, etag = ?h.etag, size = h.size, "the source changed since it was listed; planning it again");
                        e.size = h.size;
                        e.etag = h.etag;
                        continue;
                    }
                    Ok(None) => {
                        break Err(ItemError::new(
                            ErrorClass::NotFound,
                            format!("{} was deleted since it was listed", rec.source),
                        ));
                    }
                    Err(x) => break Err(x),
                }
            }
            _ => break r,
        }
    };
    rec.source_digest = e.etag.clone();
    rec.ended_at = Some(Utc::now());
    // A verified copy whose ETag is not the source's (other part sizes, SSE-KMS) is
    // remembered, so the next run with --compare etag|checksum finds the two in sync.
    if let (Ok(Some(dest_etag)), Some(src_etag)) = (&r, &e.etag)
        && bare_etag(dest_etag) != bare_etag(src_etag)
        && let Err(err) = edges
            .ledger
            .remember_verified(&rec.dest, src_etag, dest_etag)
            .await
    {
        tracing::warn!(object = %rec.dest, error = %err, "cannot remember the verified copy; the next run with --compare etag copies it again");
    }
    // The bytes this run moved: parts an earlier run left finished are not among them.
    let moved = moved.0.into_inner().expect("moved lock");
    rec.bytes = moved.bytes;
    rec.resumed = moved.resumed;
    match r {
        Ok(etag) => {
            rec.status = Status::Copied;
            rec.dest_digest = etag;
        }
        Err(err) => {
            rec.status = Status::Failed;
            rec.error = Some(err);
        }
    }
    rec
}

/// What one object's copy moved in this run, and what it reused of an upload an earlier
/// run began (found at the first look at that upload's finished parts).
#[derive(Default)]
struct Moved(std::sync::Mutex<MovedSoFar>);

#[derive(Default)]
struct MovedSoFar {
    bytes: u64,
    looked: bool,
    resumed: Option<Resumed>,
}

impl Moved {
    /// `bytes` more reached the destination (a part, or a whole object).
    fn add(&self, bytes: u64, progress: &dyn Progress) {
        self.0.lock().expect("moved lock").bytes += bytes;
        progress.moved(bytes);
    }

    /// The parts of the upload found finished before this run sent any: at the first
    /// look only (later looks find this run's own parts of a failed attempt).
    fn found_done(
        &self,
        done: &std::collections::HashSet<u32>,
        parts: &[multipart::Part],
        progress: &dyn Progress,
    ) {
        let mut m = self.0.lock().expect("moved lock");
        if std::mem::replace(&mut m.looked, true) || done.is_empty() {
            return;
        }
        let bytes = parts
            .iter()
            .filter(|p| done.contains(&p.number))
            .map(|p| p.len)
            .sum();
        m.resumed = Some(Resumed {
            parts: done.len() as u32,
            of: parts.len() as u32,
            bytes,
        });
        progress.reused(bytes);
    }
}

/// `work`, or the interrupted error as soon as `stop` fires (the work's requests in flight
/// are dropped: a part not answered is not recorded, so the next run sends it again).
async fn or_stop<T>(
    stop: &Stop,
    work: impl std::future::Future<Output = Result<T, ItemError>>,
) -> Result<T, ItemError> {
    tokio::select! {
        r = work => r,
        why = stop.stopped() => Err(interrupted(why)),
    }
}

/// How often one object is planned again because its source changed while it was copied.
const MAX_REPLANS: u32 = 3;

/// The parts of one multipart copy, and whether they are the source's own.
struct Layout<'a> {
    part_size: u64,
    parts: &'a [multipart::Part],
    same_parts: bool,
}

/// One attempt at a multipart copy: reuses the open upload of this object (same size and
/// source ETag) and skips its finished parts; parts run under the shared permits.
async fn multipart_copy(
    t: &Transfer<'_>,
    ledger: &dyn UploadLedger,
    e: &Entry,
    layout: &Layout<'_>,
    permits: &Permits,
    crcs: &std::sync::Mutex<std::collections::HashMap<u32, crc32fast::Hasher>>,
    (moved, progress): (&Moved, &dyn Progress),
) -> Result<Option<String>, ItemError> {
    let parts = layout.parts;
    let upload = t
        .open_upload(
            ledger,
            e,
            layout.part_size,
            parts.len() as u32,
            layout.same_parts,
        )
        .await?;
    let done: std::collections::HashSet<u32> = ledger
        .parts_done(&upload)
        .await
        .map_err(ledger_error)?
        .into_iter()
        .map(|p| p.0)
        .collect();
    moved.found_done(&done, parts, progress);
    let todo = parts.iter().filter(|p| !done.contains(&p.number));
    let results = futures::future::join_all(todo.map(|p| async {
        let _permit = permits.take(p.len).await;
        let (etag, crc) = t.part_read(e, &upload, p).await?;
        if let Some(c) = crc {
            crcs.lock().expect("crc lock").insert(p.number, c);
        }
        ledger
            .part_done(&upload, p.number, &etag)
            .await
            .map_err(ledger_error)?;
        // The bar moves as each part lands, not only when the whole object does.
        moved.add(p.len, progress);
        Ok::<(), ItemError>(())
    }))
    .await;
    // Every part that could be done is recorded; the first error decides the attempt.
    // A part read from a newer version of the source (412) means the upload can never
    // complete into the listed object: abort it, so no part of two versions survives.
    let errors: Vec<ItemError> = results.into_iter().filter_map(Result::err).collect();
    if let Some(err) = errors
        .iter()
        .find(|x| x.class == ErrorClass::SourceChanged)
        .or(errors.first())
    {
        if err.class == ErrorClass::SourceChanged {
            let _ = t
                .dst
                .abort_upload(&t.dst.url.key(&e.key), &upload.upload_id)
                .await;
            ledger.finish(&upload).await.map_err(ledger_error)?;
        }
        return Err(err.clone());
    }
    let finished = ledger.parts_done(&upload).await.map_err(ledger_error)?;
    // Streamed parts are checked together against the source before the upload completes:
    // wrong bytes never become the object.
    let read = crcs.lock().expect("crc lock").clone();
    if let Err(err) = t.check_parts_crc(e, &read, upload.parts).await {
        if err.class == ErrorClass::DigestMismatch {
            let _ = t
                .dst
                .abort_upload(&t.dst.url.key(&e.key), &upload.upload_id)
                .await;
            ledger.finish(&upload).await.map_err(ledger_error)?;
            crcs.lock().expect("crc lock").clear();
        }
        return Err(err);
    }
    match t.complete(e, &upload, finished).await {
        Ok(etag) => {
            ledger.finish(&upload).await.map_err(ledger_error)?;
            Ok(etag)
        }
        Err(err) if err.class == ErrorClass::DigestMismatch => {
            // What arrived is wrong: never keep it as a success; the next attempt starts over.
            let _ = t
                .dst
                .abort_upload(&t.dst.url.key(&e.key), &upload.upload_id)
                .await;
            // The checks run on the completed object: remove it, so wrong bytes are not
            // left under the key (what was there before was replaced by the completion).
            if let Err(x) = t.dst.delete(&e.key).await {
                tracing::warn!(object = %t.dst.url.object(&e.key), error = %x.message, "cannot delete the object that failed its check");
            }
            ledger.finish(&upload).await.map_err(ledger_error)?;
            Err(err)
        }
        Err(err) => Err(err),
    }
}

/// Parses `s3://…` for the command line.
pub fn parse_url(s: &str) -> Result<S3Url, String> {
    S3Url::parse(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64, status: Status) -> ItemRecord {
        ItemRecord {
            run_id: "r".into(),
            source: format!("s3://a/{i}"),
            dest: format!("s3://b/{i}"),
            status,
            source_digest: None,
            dest_digest: None,
            attempts: 1,
            error: None,
            bytes: 10,
            started_at: None,
            ended_at: None,
            version: FINAL,
            line: None,
            resumed: None,
            waiting_until: None,
            reason: None,
        }
    }

    #[test]
    fn a_run_keeps_counts_of_everything_and_a_bounded_report() {
        let mut k = Kept::default();
        for i in 0..25_000 {
            k.add(rec(i, Status::Copied));
        }
        for i in 0..5 {
            k.add(rec(100_000 + i, Status::Failed));
        }
        // The failed ones' bytes too: what they moved before they failed.
        assert_eq!((k.copied, k.failed, k.bytes), (25_000, 5, 250_050));
        assert_eq!(
            k.items.len(),
            MAX_REPORTED_ITEMS + 5,
            "every failure is listed"
        );
        assert_eq!(k.omitted, 25_000 - MAX_REPORTED_ITEMS as u64);
        assert_eq!(
            k.items
                .iter()
                .filter(|i| i.status == Status::Failed)
                .count(),
            5
        );
    }
}
