//! The image sync pipeline: select → list → resolve digests → plan → copy → verify →
//! record. It talks to the world only through the edge traits ([`Registry`],
//! [`Copier`], [`StatusStore`], [`Prepare`], [`Progress`]), so the same pipeline runs
//! against real registries from the CLI and, later, inside the AWS functions.

use crate::images::plan::{self, Action, ImageName, Observation, TagListings, Unplannable, Wanted};
use crate::images::registry::{Location, Registry, RequestCount};
use crate::images::selection::{Selection, TagSpec};
use crate::interrupt::{Stop, interrupted};
use crate::retry::{ErrorClass, ItemError, RetryPolicy, with_retries};
use crate::status::{ItemRecord, RunRecord, RunResult, Status, StatusStore, StoreError};
use async_trait::async_trait;
use chrono::Utc;
use futures::stream::{self, StreamExt};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// What to take from the source.
#[derive(Debug, Clone)]
pub enum Selecting {
    /// A selection list (already parsed; its bad lines are reported as failed items).
    List(Selection),
    /// Every repository under the source prefix, every tag.
    AllRepos,
}

/// One sync run's settings.
#[derive(Debug, Clone)]
pub struct SyncSpec {
    pub run_id: String,
    pub source: Location,
    pub dest: Location,
    pub selecting: Selecting,
    pub retry: RetryPolicy,
    /// Copies at once.
    pub concurrency: usize,
    /// Manifest HEADs and tag listings at once.
    pub resolve_concurrency: usize,
    pub dry_run: bool,
    /// With `AllRepos`: also the manifests no tag points at (ECR sources), copied by digest.
    pub include_untagged: bool,
    /// Which listed tags are wanted (`ALL_TAGS` lines and `--all-repos`).
    pub tag_rules: crate::images::tags::TagRules,
    /// `--no-overwrite`: a destination tag that holds another image is left alone and
    /// reported as a conflict ([`plan::keep_destination_tags`]).
    pub no_overwrite: bool,
    /// `--min-age`: a source digest is copied only once it was first seen (by a run that
    /// kept its record in the status store) at least this long ago; until then the image
    /// is `waiting`. A tag moved to a new digest waits again.
    pub min_age: Option<Duration>,
}

/// Prepares the destination before copies start (e.g. creates missing ECR repositories).
#[async_trait]
pub trait Prepare: Send + Sync {
    /// Returns, per repository, whether it is ready.
    async fn prepare(&self, repos: &[String]) -> HashMap<String, Result<(), ItemError>>;
}

/// Hears about the run as it goes (progress bar, log lines).
pub trait Progress: Send + Sync {
    /// The plan is made: `to_copy` of `total` images will be copied.
    fn planned(&self, _to_copy: usize, _total: usize) {}
    /// The tag rules left out `left_out` of the `listed` tags the listings gave.
    fn tags_left_out(&self, _left_out: usize, _listed: usize) {}
    /// One image reached its final status.
    fn finished(&self, _item: &ItemRecord) {}
    /// Objects: one more object of `bytes` is to be copied (found as the listing goes).
    fn queued(&self, _bytes: u64) {}
    /// Objects: `bytes` more reached the destination (a part as it lands, or a whole object).
    fn moved(&self, _bytes: u64) {}
    /// Objects: `bytes` of a queued object need not move (parts an earlier run finished).
    fn reused(&self, _bytes: u64) {}
}

/// A progress listener that ignores everything.
pub struct Silent;
impl Progress for Silent {}

/// The edges a run talks through.
pub struct Edges<'a> {
    pub registry: &'a dyn Registry,
    pub copier: &'a dyn crate::images::copy::Copier,
    pub store: &'a dyn StatusStore,
    pub prepare: Option<&'a dyn Prepare>,
    pub progress: &'a dyn Progress,
}

/// What a run did: the run record and one record per image.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SyncReport {
    #[serde(flatten)]
    pub run: RunRecord,
    pub items: Vec<ItemRecord>,
    /// What the run asked of each registry (requests and token requests), by host; empty
    /// for object runs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registries: BTreeMap<String, RequestCount>,
    /// On a dry run of images: each listed tag the tag rules left out, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<TagLeftOut>,
    /// The pull quota of each source registry that reports one (Docker Hub), and what the
    /// run planned against it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quotas: Vec<QuotaBudget>,
}

/// Pulls budgeted for each image to copy from a registry with a pull quota: a copy of a
/// single-platform image read its manifest twice on the rig (its quota proxy counts every
/// manifest GET as a pull, the strict reading of Docker Hub's rule). A multi-arch index may
/// cost more; each copy looks at the quota first, and a copy refused for it is deferred.
pub const PULLS_PER_IMAGE: u64 = 2;

/// The images a run will copy: each with the source digest the plan read and its record.
type Copies = Vec<(Wanted, crate::images::reference::Digest, ItemRecord)>;

/// A source registry's pull quota, as the plan found it, and what the run does with it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuotaBudget {
    pub host: String,
    /// Pulls allowed in the window, and left when the plan was made.
    pub limit: u64,
    pub remaining: u64,
    pub window_secs: Option<u64>,
    /// Images the plan would copy from this registry, and the pulls they need
    /// ([`PULLS_PER_IMAGE`] each).
    pub images: u64,
    pub needed: u64,
    /// Of those images, the ones left for a later run.
    pub deferred: u64,
}

/// Keeps the copies from each source registry with a pull quota within what is left:
/// the first ones (in plan order) that fit, [`PULLS_PER_IMAGE`] pulls each; the rest are
/// returned as `deferred` records, with the budget of each such registry.
fn budget_copies(
    registry: &dyn Registry,
    copies: Copies,
) -> (Copies, Vec<ItemRecord>, Vec<QuotaBudget>) {
    let mut budgets: BTreeMap<String, QuotaBudget> = BTreeMap::new();
    let (mut kept, mut deferred) = (Vec::new(), Vec::new());
    for (w, d, mut rec) in copies {
        let host = w.source.host.clone();
        let Some(q) = registry.quota(&host) else {
            kept.push((w, d, rec));
            continue;
        };
        let b = budgets.entry(host.clone()).or_insert_with(|| QuotaBudget {
            host,
            limit: q.limit,
            remaining: q.remaining,
            window_secs: q.window_secs,
            images: 0,
            needed: 0,
            deferred: 0,
        });
        b.images += 1;
        b.needed += PULLS_PER_IMAGE;
        if b.needed <= b.remaining {
            kept.push((w, d, rec));
        } else {
            b.deferred += 1;
            rec.reason = rec.reason.map(|r| {
                let why = r.split("; ").next().unwrap_or_default().to_string();
                format!("{why}; the source registry's pull quota would run out: deferred")
            });
            rec.status = Status::Deferred;
            rec.ended_at = Some(Utc::now());
            rec.version = FINAL;
            deferred.push(rec);
        }
    }
    (kept, deferred, budgets.into_values().collect())
}

/// Just before a copy from a registry with a pull quota: the quota as the registry reports
/// it now (a manifest HEAD, which spends none), and, when it no longer holds
/// [`PULLS_PER_IMAGE`] pulls (another client spent them since the plan), the error that
/// defers the image without starting a copy the registry would refuse.
async fn quota_spent(registry: &dyn Registry, w: &Wanted) -> Option<ItemError> {
    registry.quota(&w.source.host)?;
    let s = &w.source;
    let _ = registry
        .head_manifest(&s.host, &s.repo, &s.reference())
        .await;
    let q = registry.quota(&s.host)?;
    (q.remaining < PULLS_PER_IMAGE).then(|| {
        ItemError::new(
            ErrorClass::Retryable,
            format!(
                "{}: the pull quota of {} is spent ({} of {} pulls left); deferred to a later run (toomanyrequests)",
                w.source, s.host, q.remaining, q.limit
            ),
        )
    })
}

/// Whether a failed copy from `host` was refused for the registry's pull quota (a 429
/// once the quota is known to be spent, or Docker Hub's `toomanyrequests`): the image is
/// deferred to the next run rather than failed.
fn quota_refused(registry: &dyn Registry, host: &str, e: &ItemError) -> bool {
    let Some(q) = registry.quota(host) else {
        return false;
    };
    let m = e.message.to_ascii_lowercase();
    m.contains("toomanyrequests") || (m.contains("429") && q.remaining < PULLS_PER_IMAGE)
}

impl SyncReport {
    /// True when every image is in sync (nothing failed).
    pub fn all_in_sync(&self) -> bool {
        // A run can fail with no item failed: a delete step refused by --max-delete.
        self.run.failed == 0 && self.run.result != crate::status::RunResult::Failed
    }
}

/// A new run id: UTC time plus a random suffix, e.g. `20261123T130501Z-3fa9`.
pub fn new_run_id() -> String {
    format!(
        "{}-{:04x}",
        Utc::now().format("%Y%m%dT%H%M%SZ"),
        fastrand::u16(..)
    )
}

const PLANNED: u64 = 1;
const FINAL: u64 = 2;

/// Runs one sync. Store errors end the run (results could not be kept); every other
/// failure is recorded on its image and the others go on.
pub async fn run_sync(spec: &SyncSpec, edges: &Edges<'_>) -> Result<SyncReport, StoreError> {
    run_sync_until(spec, edges, &Stop::never()).await
}

/// [`run_sync`] that ends early when `stop` fires (Ctrl-C, SIGTERM): listing and lookups
/// are abandoned, copies in flight are killed, copies not started do not start; every
/// image not finished is recorded as interrupted and the run record is closed, so a re-run
/// copies exactly what is missing. The copier must hear the same `stop` (see
/// [`crate::images::copy::Skopeo::with_stop`]).
pub async fn run_sync_until(
    spec: &SyncSpec,
    edges: &Edges<'_>,
    stop: &Stop,
) -> Result<SyncReport, StoreError> {
    let mut run = RunRecord {
        run_id: spec.run_id.clone(),
        source: spec.source.to_string(),
        dest: spec.dest.to_string(),
        dry_run: spec.dry_run,
        started_at: Utc::now(),
        ended_at: None,
        copied: 0,
        skipped: 0,
        failed: 0,
        bytes: 0,
        kind: crate::status::RunKind::Images,
        ..Default::default()
    };
    let keep = !spec.dry_run;
    if keep {
        edges.store.put_run(&run).await?;
    }

    let looked_up = async {
        let (wanted, unplannable, rules) = select(spec, edges.registry).await;
        if rules.left_out > 0 {
            edges.progress.tags_left_out(rules.left_out, rules.listed);
        }
        let observed = resolve(spec, edges.registry, &wanted).await;
        (wanted, unplannable, rules, observed)
    };
    let (wanted, unplannable, rules, (source_obs, dest_obs, attempts)) = tokio::select! {
        r = looked_up => r,
        why = stop.stopped() => {
            tracing::warn!(why, "interrupted before the plan was made; nothing was copied");
            let mut report = finish(run, Vec::new());
            report.run.result = RunResult::Interrupted;
            report.run.error = Some(format!("interrupted by {why}"));
            if keep {
                edges.store.put_run(&report.run).await?;
            }
            return Ok(report);
        }
    };
    let planned = spec.plan(&wanted, &source_obs, &dest_obs);
    let to_copy = planned.iter().filter(|p| p.action == Action::Copy).count();
    edges
        .progress
        .planned(to_copy, planned.len() + unplannable.len());

    let mut items: Vec<ItemRecord> = Vec::new();
    for u in unplannable {
        items.push(failed_record(&spec.run_id, u));
    }
    let mut copies = Vec::new();
    for p in planned {
        let reason = |waiting| spec.dry_run.then(|| reason_of(spec, &rules, &p, waiting));
        let mut rec = ItemRecord {
            run_id: spec.run_id.clone(),
            source: p.wanted.source.to_string(),
            dest: p.wanted.dest.to_string(),
            status: Status::Planned,
            source_digest: p.source.as_ref().map(|i| i.digest.to_string()),
            dest_digest: p.dest.as_ref().map(|i| i.digest.to_string()),
            attempts: *attempts.get(&p.wanted).unwrap_or(&0),
            error: None,
            bytes: 0,
            started_at: Some(run.started_at),
            ended_at: None,
            version: PLANNED,
            line: None,
            resumed: None,
            waiting_until: None,
            reason: reason(false),
        };
        match p.action {
            Action::Skip => {
                rec.status = Status::Skipped;
                rec.attempts = 0;
                rec.ended_at = Some(Utc::now());
                rec.version = FINAL;
                items.push(rec);
            }
            Action::Fail(e) | Action::Conflict(e) => {
                rec.status = status_of(&e);
                rec.error = Some(e);
                rec.ended_at = Some(Utc::now());
                rec.version = FINAL;
                items.push(rec);
            }
            Action::Copy => {
                rec.attempts = 0;
                if let Some(until) = waiting_until(spec, edges, &p, keep).await? {
                    rec.reason = reason(true);
                    rec.status = Status::Waiting;
                    rec.waiting_until = Some(until);
                    rec.ended_at = Some(Utc::now());
                    rec.version = FINAL;
                    items.push(rec);
                    continue;
                }
                copies.push((
                    p.wanted,
                    p.source.expect("a copy has a source digest").digest,
                    rec,
                ));
            }
        }
    }
    for rec in &items {
        edges.progress.finished(rec);
        if keep {
            edges.store.put_item(rec).await?;
        }
    }

    let (copies, deferred, quotas) = budget_copies(edges.registry, copies);
    for rec in &deferred {
        edges.progress.finished(rec);
        if keep {
            edges.store.put_item(rec).await?;
        }
    }
    items.extend(deferred);
    if spec.dry_run {
        for (_, _, rec) in &copies {
            edges.progress.finished(rec);
        }
        items.extend(copies.into_iter().map(|(_, _, rec)| rec));
        let mut report = finish(run, items);
        report.left_out = rules.left;
        report.quotas = quotas;
        return Ok(report);
    }
    for (_, _, rec) in &copies {
        edges.store.put_item(rec).await?;
    }

    // Destination repositories (ECR) are made ready before any copy starts.
    let ready: HashMap<String, Result<(), ItemError>> = match edges.prepare {
        Some(p) => {
            let repos: BTreeSet<String> =
                copies.iter().map(|(w, _, _)| w.dest.repo.clone()).collect();
            p.prepare(&repos.into_iter().collect::<Vec<_>>()).await
        }
        None => HashMap::new(),
    };

    let results: Vec<Result<ItemRecord, StoreError>> = stream::iter(copies)
        .map(|(w, digest, mut rec)| {
            let ready = ready.get(&w.dest.repo).cloned().unwrap_or(Ok(()));
            async move {
                rec.started_at = Some(Utc::now());
                let outcome = match (ready, stop.reason()) {
                    (_, Some(why)) => (Err(interrupted(why)), 0),
                    (Err(e), None) => (Err(e), 0),
                    (Ok(()), None) => match quota_spent(edges.registry, &w).await {
                        Some(e) => (Err(e), 0),
                        None => copy_one(spec, edges, &w, &digest, stop).await,
                    },
                };
                rec.attempts = outcome.1;
                rec.ended_at = Some(Utc::now());
                rec.version = FINAL;
                match outcome.0 {
                    Ok((dest_digest, bytes)) => {
                        rec.status = Status::Copied;
                        rec.dest_digest = Some(dest_digest);
                        rec.bytes = bytes;
                    }
                    Err(e) => {
                        rec.status = if quota_refused(edges.registry, &w.source.host, &e) {
                            Status::Deferred
                        } else {
                            status_of(&e)
                        };
                        rec.error = Some(e);
                    }
                }
                edges.store.put_item(&rec).await?;
                edges.progress.finished(&rec);
                Ok(rec)
            }
        })
        .buffer_unordered(spec.concurrency.max(1))
        .collect()
        .await;
    for r in results {
        items.push(r?);
    }
    let mut report = finish(run.clone(), items);
    report.quotas = quotas;
    if let Some(why) = stop.reason() {
        report.run.result = RunResult::Interrupted;
        report.run.error = Some(format!("interrupted by {why}"));
    }
    run = report.run.clone();
    edges.store.put_run(&run).await?;
    Ok(report)
}

/// For an image the plan would copy, under `--min-age`: when its source digest will have
/// been seen for that long, if that is still to come ([`StatusStore::first_seen`] records
/// the first sighting, unless `keep` is false: a dry run).
async fn waiting_until(
    spec: &SyncSpec,
    edges: &Edges<'_>,
    p: &plan::PlanItem,
    keep: bool,
) -> Result<Option<chrono::DateTime<Utc>>, StoreError> {
    let (Some(min_age), Some(source)) = (spec.min_age, &p.source) else {
        return Ok(None);
    };
    let repo = format!("{}/{}", p.wanted.source.host, p.wanted.source.repo);
    let now = Utc::now();
    let seen = edges
        .store
        .first_seen(&repo, &source.digest.to_string(), now, keep)
        .await?;
    let until = chrono::TimeDelta::from_std(min_age)
        .ok()
        .and_then(|d| seen.checked_add_signed(d))
        .unwrap_or(chrono::DateTime::<Utc>::MAX_UTC);
    Ok((until > now).then_some(until))
}

fn finish(mut run: RunRecord, mut items: Vec<ItemRecord>) -> SyncReport {
    items.sort_by(|a, b| {
        (a.source.as_str(), a.dest.as_str()).cmp(&(b.source.as_str(), b.dest.as_str()))
    });
    run.copied = items.iter().filter(|i| i.status == Status::Copied).count() as u64;
    run.skipped = items.iter().filter(|i| i.status == Status::Skipped).count() as u64;
    run.failed = items.iter().filter(|i| i.status == Status::Failed).count() as u64;
    run.conflicts = items
        .iter()
        .filter(|i| i.status == Status::Conflict)
        .count() as u64;
    run.waiting = items.iter().filter(|i| i.status == Status::Waiting).count() as u64;
    run.deferred = items
        .iter()
        .filter(|i| i.status == Status::Deferred)
        .count() as u64;
    run.bytes = items.iter().map(|i| i.bytes).sum();
    run.ended_at = Some(Utc::now());
    run.result = if run.failed > 0 {
        RunResult::Failed
    } else {
        RunResult::Succeeded
    };
    if run.dry_run {
        run.to_copy = Some(items.iter().filter(|i| i.status == Status::Planned).count() as u64);
    }
    SyncReport {
        run,
        items,
        registries: BTreeMap::new(),
        left_out: Vec::new(),
        quotas: Vec::new(),
    }
}

/// The status of an image that did not arrive: `conflict` when its destination tag holds
/// another image that may not be replaced, else `failed`.
pub fn status_of(e: &ItemError) -> Status {
    if e.class == ErrorClass::Conflict {
        Status::Conflict
    } else {
        Status::Failed
    }
}

impl SyncSpec {
    /// The plan for these observations, with `--no-overwrite` applied.
    pub fn plan(
        &self,
        wanted: &[Wanted],
        source: &HashMap<ImageName, plan::Observation>,
        dest: &HashMap<ImageName, plan::Observation>,
    ) -> Vec<plan::PlanItem> {
        let planned = plan::plan(wanted, source, dest);
        if self.no_overwrite {
            plan::keep_destination_tags(planned)
        } else {
            planned
        }
    }
}

/// The record of an item that could not be planned.
pub fn failed_record(run_id: &str, u: Unplannable) -> ItemRecord {
    let now = Utc::now();
    ItemRecord {
        run_id: run_id.to_string(),
        line: crate::status::list_line(&u.what),
        resumed: None,
        waiting_until: None,
        reason: None,
        source: u.what,
        dest: u.dest.unwrap_or_default(),
        status: Status::Failed,
        source_digest: None,
        dest_digest: None,
        attempts: 0,
        error: Some(u.error),
        bytes: 0,
        started_at: Some(now),
        ended_at: Some(now),
        version: FINAL,
    }
}

/// Copies one image with retries, then checks the destination digest.
/// Returns the destination digest and the image's size, with the attempts made.
async fn copy_one(
    spec: &SyncSpec,
    edges: &Edges<'_>,
    w: &Wanted,
    digest: &crate::images::reference::Digest,
    stop: &Stop,
) -> (Result<(String, u64), ItemError>, u32) {
    // Copy exactly the digest the plan read, not whatever the tag names by now: skopeo then
    // checks the manifest it reads against that digest, so a manifest changed on the way
    // (or a tag moved meanwhile) is refused before anything lands under the destination tag.
    let source = ImageName {
        digest: Some(digest.clone()),
        ..w.source.clone()
    };
    let (copied, attempts) = crate::images::copy::copy_with_retries(
        edges.copier,
        edges.registry,
        &spec.retry,
        stop,
        &source,
        &w.dest,
    )
    .await;
    if let Err(e) = copied {
        return (Err(e), attempts);
    }
    let dest_ref = w.dest.reference();
    let (seen, _) = with_retries(&spec.retry, |_| {
        edges
            .registry
            .head_manifest(&w.dest.host, &w.dest.repo, &dest_ref)
    })
    .await;
    let verdict = match seen {
        Err(e) => Err(ItemError::new(
            e.class,
            format!("verifying {} after the copy: {}", w.dest, e.message),
        )),
        Ok(None) => Err(ItemError::new(
            ErrorClass::DigestMismatch,
            format!("{} is missing after the copy reported success", w.dest),
        )),
        Ok(Some(info)) if info.digest != *digest => Err(ItemError::new(
            ErrorClass::DigestMismatch,
            format!(
                "{} has digest {} after the copy; the source {} has {}",
                w.dest, info.digest, w.source, digest
            ),
        )),
        Ok(Some(info)) => {
            let bytes = edges
                .registry
                .image_size(&w.source.host, &w.source.repo, digest)
                .await
                .unwrap_or(0);
            Ok((info.digest.to_string(), bytes))
        }
    };
    (verdict, attempts)
}

/// What the tag rules did to a run's listings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RulesApplied {
    /// Tags the listings gave.
    pub listed: usize,
    /// Of those, tags the rules left out.
    pub left_out: usize,
    /// The repositories whose tags were listed (`ALL_TAGS` lines, `--all-repos`).
    pub repos: BTreeSet<(String, String)>,
    /// On a dry run: each tag left out, with the rule that did it.
    pub left: Vec<TagLeftOut>,
}

/// A listed tag the tag rules left out, and why (a dry run's `left_out`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TagLeftOut {
    /// `HOST/REPO:TAG` at the source.
    pub source: String,
    pub reason: String,
}

/// Applies the tag rules to every listing that answered.
fn apply_rules(spec: &SyncSpec, mut tags: plan::TagListings) -> (plan::TagListings, RulesApplied) {
    let mut applied = RulesApplied {
        repos: tags.keys().cloned().collect(),
        ..Default::default()
    };
    for ((host, repo), list) in tags.iter_mut() {
        let Ok(list) = list else { continue };
        applied.listed += list.len();
        if !spec.tag_rules.is_empty() {
            let (kept, left) = spec.tag_rules.select_why(list);
            *list = kept;
            applied.left_out += left.len();
            if spec.dry_run {
                applied
                    .left
                    .extend(left.into_iter().map(|(t, why)| TagLeftOut {
                        source: format!("{host}/{repo}:{t}"),
                        reason: why.to_string(),
                    }));
            }
        }
    }
    applied.left.sort_by(|a, b| a.source.cmp(&b.source));
    (tags, applied)
}

/// On a dry run: why the plan took an image and what it does with it ("listed by
/// ALL_TAGS, kept by --newest 3; missing at the destination").
fn reason_of(spec: &SyncSpec, rules: &RulesApplied, p: &plan::PlanItem, waiting: bool) -> String {
    let s = &p.wanted.source;
    let listed = rules.repos.contains(&(s.host.clone(), s.repo.clone()));
    let mut why = match (&spec.selecting, s.tag.is_some()) {
        (_, false) if spec.include_untagged => {
            "an untagged manifest (--include-untagged)".to_string()
        }
        (_, false) => "named by digest in the list".to_string(),
        (Selecting::AllRepos, true) => {
            "a tag of a repository under the source (--all-repos)".to_string()
        }
        (Selecting::List(_), true) if listed => "listed by ALL_TAGS".to_string(),
        (Selecting::List(_), true) => "named in the list".to_string(),
    };
    if let (true, Some(r)) = (listed && s.tag.is_some(), spec.tag_rules.describe()) {
        why.push_str(&format!(", kept by {r}"));
    }
    let what = match (&p.action, &p.dest) {
        (_, _) if waiting => {
            "its digest was first seen less than --min-age ago: waiting".to_string()
        }
        (Action::Copy, None) => "missing at the destination: copy".to_string(),
        (Action::Copy, Some(d)) => format!("the destination holds {}: copy", d.digest),
        (Action::Skip, _) => "the same digest on both sides: in sync".to_string(),
        (Action::Fail(_), _) => "cannot be copied (see its error)".to_string(),
        (Action::Conflict(_), _) => {
            "the destination tag holds another image: left alone".to_string()
        }
    };
    format!("{why}; {what}")
}

/// Turns the selection into images, listing tags and repositories where asked; the tag
/// rules apply to the listed tags (a tag a line names itself is always wanted).
pub async fn select(
    spec: &SyncSpec,
    registry: &dyn Registry,
) -> (Vec<Wanted>, Vec<Unplannable>, RulesApplied) {
    let policy = &spec.retry;
    match &spec.selecting {
        Selecting::List(sel) => {
            let mut bad: Vec<Unplannable> = sel
                .errors
                .iter()
                .map(|e| Unplannable {
                    what: format!("line {}: {}", e.line, e.text),
                    dest: None,
                    error: ItemError::new(ErrorClass::BadInput, e.to_string()),
                })
                .collect();
            let repos: BTreeSet<(String, String)> = sel
                .entries
                .iter()
                .filter(|e| e.spec == TagSpec::AllTags)
                .map(|e| plan::entry_source(e, &spec.source))
                .collect();
            let (tags, applied) = apply_rules(spec, list_tags(spec, registry, repos).await);
            let (wanted, failed) =
                plan::expand_entries(&sel.entries, &spec.source, &spec.dest, &tags);
            bad.extend(failed);
            (wanted, bad, applied)
        }
        Selecting::AllRepos => {
            let host = spec.source.host.clone();
            let (repos, _) = with_retries(policy, |_| registry.list_repositories(&host)).await;
            match repos {
                Err(e) => (
                    Vec::new(),
                    vec![Unplannable {
                        what: format!("{} (all repositories)", spec.source),
                        dest: Some(spec.dest.to_string()),
                        error: ItemError::new(
                            e.class,
                            format!("listing repositories: {}", e.message),
                        ),
                    }],
                    RulesApplied::default(),
                ),
                Ok(repos) => {
                    let under: Vec<String> = repos
                        .into_iter()
                        .filter(|r| spec.source.strip(r).is_some())
                        .collect();
                    let keys = under.iter().map(|r| (host.clone(), r.clone())).collect();
                    let (tags, applied) = apply_rules(spec, list_tags(spec, registry, keys).await);
                    let (mut wanted, mut failed) =
                        plan::expand_all_repos(&under, &spec.source, &spec.dest, &tags);
                    if spec.include_untagged {
                        let (w, f) = untagged(spec, registry, &under).await;
                        wanted.extend(w);
                        failed.extend(f);
                    }
                    (wanted, failed, applied)
                }
            }
        }
    }
}

/// The untagged manifests of each repository, as digest-only images (they land by digest,
/// with no tag, under the destination prefix).
async fn untagged(
    spec: &SyncSpec,
    registry: &dyn Registry,
    repos: &[String],
) -> (Vec<Wanted>, Vec<Unplannable>) {
    let host = spec.source.host.clone();
    let lists: Vec<(
        String,
        Result<Vec<crate::images::reference::Digest>, ItemError>,
    )> = stream::iter(repos)
        .map(|repo| {
            let host = host.clone();
            async move {
                let (r, _) =
                    with_retries(&spec.retry, |_| registry.list_untagged(&host, repo)).await;
                (repo.clone(), r)
            }
        })
        .buffer_unordered(spec.resolve_concurrency.max(1))
        .collect()
        .await;
    let (mut wanted, mut failed) = (Vec::new(), Vec::new());
    for (repo, r) in lists {
        let Some(below) = spec.source.strip(&repo) else {
            continue;
        };
        let dest_repo = spec.dest.join(below);
        match r {
            Ok(digests) => {
                for d in digests {
                    wanted.push(Wanted {
                        source: ImageName {
                            host: host.clone(),
                            repo: repo.clone(),
                            tag: None,
                            digest: Some(d.clone()),
                        },
                        dest: ImageName {
                            host: spec.dest.host.clone(),
                            repo: dest_repo.clone(),
                            tag: None,
                            digest: Some(d),
                        },
                    });
                }
            }
            Err(e) => failed.push(Unplannable {
                what: format!("{host}/{repo} (untagged)"),
                dest: Some(format!("{}/{dest_repo}", spec.dest.host)),
                error: ItemError::new(e.class, format!("listing untagged images: {}", e.message)),
            }),
        }
    }
    (wanted, failed)
}

async fn list_tags(
    spec: &SyncSpec,
    registry: &dyn Registry,
    repos: BTreeSet<(String, String)>,
) -> TagListings {
    stream::iter(repos)
        .map(|(host, repo)| async move {
            let (r, _) = with_retries(&spec.retry, |_| registry.list_tags(&host, &repo)).await;
            let r = r.map_err(|e| {
                ItemError::new(
                    e.class,
                    format!("listing tags of {host}/{repo}: {}", e.message),
                )
            });
            ((host, repo), r)
        })
        .buffer_unordered(spec.resolve_concurrency.max(1))
        .collect()
        .await
}

/// Manifest observations per image.
pub type Observations = HashMap<ImageName, Observation>;

/// HEADs every source and destination manifest once, in parallel; returns both sides'
/// observations and, per image, the attempts spent on a failing lookup.
pub async fn resolve(
    spec: &SyncSpec,
    registry: &dyn Registry,
    wanted: &[Wanted],
) -> (Observations, Observations, HashMap<Wanted, u32>) {
    let names: BTreeSet<ImageName> = wanted
        .iter()
        .flat_map(|w| [w.source.clone(), w.dest.clone()])
        .collect();
    let seen: HashMap<ImageName, (Observation, u32)> = stream::iter(names)
        .map(|n| async move {
            let reference = n.reference();
            let (r, attempts) = with_retries(&spec.retry, |_| {
                registry.head_manifest(&n.host, &n.repo, &reference)
            })
            .await;
            (n, (r, attempts))
        })
        .buffer_unordered(spec.resolve_concurrency.max(1))
        .collect()
        .await;
    let mut source = HashMap::new();
    let mut dest = HashMap::new();
    let mut attempts = HashMap::new();
    for w in wanted {
        let (s, sa) = seen
            .get(&w.source)
            .cloned()
            .expect("every source was resolved");
        let (d, da) = seen
            .get(&w.dest)
            .cloned()
            .expect("every destination was resolved");
        let failing = if s.is_err() {
            sa
        } else if d.is_err() {
            da
        } else {
            0
        };
        attempts.insert(w.clone(), failing);
        source.insert(w.source.clone(), s);
        dest.insert(w.dest.clone(), d);
    }
    (source, dest, attempts)
}
