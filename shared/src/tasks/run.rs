//! Runs a task's settings on one machine: builds the edges (registry client with the
//! logins of the auth file, ECR logins and repositories, skopeo; or the two S3 clients)
//! and runs the pipeline. `images sync`, `objects sync`, `task run` and `serve` all come
//! through here, so a task runs exactly as the command with its flags would.

use super::store::{TaskStore, TaskStoreError};
use super::{ImageSelection, ImagesOptions, ObjectsOptions, Spec, Task};
use crate::images::authfile::{Credentials, default_auth_file};
use crate::images::copy::Skopeo;
use crate::images::ecr::{self, Ecr, EcrRepos, RepoSettings};
use crate::images::registry::{HttpRegistry, Location, Trust};
use crate::images::selection::parse_list;
use crate::images::sync::{
    Edges, Prepare, Progress, Selecting, SyncReport, SyncSpec, run_sync_until,
};
use crate::interrupt::Stop;
use crate::objects::uploads::UploadLedger;
use crate::retry::RetryPolicy;
use crate::status::{ItemRecord, RunKind, RunRecord, RunResult, Status, StatusStore, StoreError};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a run could not start or went wrong as a whole (an item's failure is in the report).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Settings or surroundings the user must fix before anything can run.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Objects(#[from] crate::objects::run::ObjectsError),
    #[error(transparent)]
    Tasks(#[from] TaskStoreError),
}

/// Where a run reports and what it may do.
pub struct RunContext<'a> {
    pub run_id: String,
    pub status: &'a dyn StatusStore,
    pub ledger: &'a dyn UploadLedger,
    pub progress: &'a dyn Progress,
    pub stop: Stop,
    pub dry_run: bool,
}

/// What a run of "retry failed" runs again, instead of the task's whole selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Only {
    /// An images task: this selection list ([`retry_list`]).
    List(String),
    /// An objects task: these keys, relative to the source prefix ([`retry_keys`]).
    Keys(Vec<String>),
}

/// Runs a task, linking the run to it first (only what `only` names, when given).
pub async fn run_task(
    task: &Task,
    tasks: &dyn TaskStore,
    ctx: &RunContext<'_>,
    only: Option<Only>,
) -> Result<SyncReport, RunError> {
    if !ctx.dry_run {
        tasks
            .note_run(&task.name, &ctx.run_id, chrono::Utc::now())
            .await?;
    }
    match (&task.spec, only) {
        (Spec::Images(o), None) => run_images(o, ctx).await,
        (Spec::Images(o), Some(Only::List(list))) => {
            let mut o = o.clone();
            o.selection = ImageSelection::List(list);
            run_images(&o, ctx).await
        }
        (Spec::Objects(o), None) => run_objects(o, ctx).await,
        (Spec::Objects(o), Some(Only::Keys(keys))) => {
            let started = chrono::Utc::now();
            let r = objects(o, ctx, Some(keys)).await;
            settle(ctx, RunKind::Objects, (&o.source, &o.dest), started, r).await
        }
        (Spec::Images(_), Some(Only::Keys(_))) | (Spec::Objects(_), Some(Only::List(_))) => {
            Err(config(format!(
                "task {:?}: a retry of another kind of task than this {} task",
                task.name,
                task.kind()
            )))
        }
    }
}

/// The keys of "retry failed" for an objects task: each failed object's key relative to
/// the task's source (`s3://bucket/prefix/`), in key order, once each.
pub fn retry_keys(source: &str, failed: &[ItemRecord]) -> Vec<String> {
    let base = match crate::objects::run::parse_url(source) {
        Ok(u) => u.object(""),
        Err(_) => return Vec::new(),
    };
    let keys: BTreeSet<String> = failed
        .iter()
        .filter(|i| i.status == Status::Failed)
        .filter_map(|i| i.source.strip_prefix(&base))
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .collect();
    keys.into_iter().collect()
}

/// The selection list of "retry failed": one line per failed image, written relative to
/// the source (a line of another registry keeps its host).
pub fn retry_list(source: &str, failed: &[ItemRecord]) -> String {
    let prefix = format!("{}/", source.trim_end_matches('/'));
    let mut out = String::new();
    for i in failed.iter().filter(|i| i.status == Status::Failed) {
        let line = i.source.strip_prefix(&prefix).unwrap_or(&i.source);
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// An S3 endpoint is an http(s) URL with a host.
fn check_endpoint(u: &str) -> Result<(), String> {
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
        .ok_or("expected an http:// or https:// URL, e.g. http://127.0.0.1:9000")?;
    let host = rest.split(['/', '?']).next().unwrap_or("");
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err("expected a URL with a host, e.g. http://127.0.0.1:9000".into());
    }
    Ok(())
}

/// The setup check of one side's credentials: they load (from the profile named, or the
/// default chain). One line naming the side and where it looked.
async fn check_credentials(
    side: &str,
    conf: &aws_config::SdkConfig,
    ep: &crate::objects::bucket::Endpoint,
) -> Result<(), String> {
    use crate::objects::bucket::CredentialSource;
    use aws_sdk_s3::config::ProvideCredentials as _;
    if let Some(creds) = conf.credentials_provider()
        && let Err(e) = creds.provide_credentials().await
    {
        let checked = match &ep.credentials {
            CredentialSource::Profile(p) => format!("profile {p}"),
            CredentialSource::Secret(s) => format!("secret {s}"),
            CredentialSource::Default => {
                "checked env, profile default, SSO, container and instance role".into()
            }
        };
        tracing::info!(side, chain = %aws_sdk_s3::error::DisplayErrorContext(&e), "credentials");
        return Err(format!(
            "no AWS credentials found for the {side} ({checked}): {}",
            crate::retry::root_cause(&e)
        ));
    }
    Ok(())
}

/// The setup check of one S3 side: its endpoint answers, and its bucket exists and may
/// be read. One line naming the side, bucket and endpoint.
async fn check_side(
    side: &str,
    b: &crate::objects::bucket::Bucket,
    ep: &crate::objects::bucket::Endpoint,
) -> Result<(), String> {
    use aws_sdk_s3::error::SdkError;
    let at = ep
        .url
        .clone()
        .unwrap_or_else(|| match b.client.config().region() {
            Some(r) => format!("AWS region {r}"),
            None => "AWS".into(),
        });
    if b.requester_pays {
        return Ok(());
    }
    let bucket = &b.url.bucket;
    match b.client.head_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(()),
        Err(SdkError::ServiceError(s)) => {
            let status = s.raw().status().as_u16();
            Err(match status {
                404 => format!("{side} bucket {bucket} does not exist (endpoint {at})"),
                401 | 403 => format!(
                    "{side} bucket {bucket}: access denied for these credentials (endpoint {at})"
                ),
                n => format!("{side} bucket {bucket}: HTTP {n} from {at}"),
            })
        }
        Err(e) => {
            tracing::info!(side, chain = %aws_sdk_s3::error::DisplayErrorContext(&e), "head bucket");
            Err(format!(
                "cannot reach the {side} endpoint {at}: {}",
                crate::retry::root_cause(&e)
            ))
        }
    }
}

/// `--insecure-registry` names a registry as HOST:PORT.
fn check_insecure_registry(r: &str) -> Result<(), String> {
    let ok = r
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--insecure-registry {r:?}: expected HOST:PORT, e.g. registry.local:5000"
        ))
    }
}

/// skopeo (or `$TRANSFER_HUB_SKOPEO`) is there to run.
fn check_skopeo() -> Result<(), String> {
    let (name, explicit) = match std::env::var_os("TRANSFER_HUB_SKOPEO") {
        Some(p) => (PathBuf::from(p), true),
        None => (PathBuf::from("skopeo"), false),
    };
    let found = if name.components().count() > 1 {
        name.is_file()
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(&name).is_file()))
            .unwrap_or(false)
    };
    match (found, explicit) {
        (true, _) => Ok(()),
        (false, true) => Err(format!(
            "skopeo not found at {} ($TRANSFER_HUB_SKOPEO): point it at the skopeo binary, or unset it to use skopeo from PATH",
            name.display()
        )),
        (false, false) => Err(
            "skopeo not found on PATH: install skopeo (apt-get install skopeo, dnf install skopeo or brew install skopeo)".into(),
        ),
    }
}

fn config(e: impl std::fmt::Display) -> RunError {
    RunError::Config(e.to_string())
}

/// `images sync` with these settings. A run that cannot go on (a setup check, the state
/// store) is recorded as failed with its error, whatever it did before.
pub async fn run_images(o: &ImagesOptions, ctx: &RunContext<'_>) -> Result<SyncReport, RunError> {
    let started = chrono::Utc::now();
    let r = images(o, ctx).await;
    settle(ctx, RunKind::Images, (&o.source, &o.dest), started, r).await
}

/// `objects sync` with these settings; a fatal error is recorded as for [`run_images`].
pub async fn run_objects(o: &ObjectsOptions, ctx: &RunContext<'_>) -> Result<SyncReport, RunError> {
    let started = chrono::Utc::now();
    let r = objects(o, ctx, None).await;
    settle(ctx, RunKind::Objects, (&o.source, &o.dest), started, r).await
}

/// The run record of a run that ended with an error: `failed`, with the error and the
/// counts of what it did before (kept on a real run; a dry run keeps nothing).
pub async fn failed_run(
    ctx: &RunContext<'_>,
    kind: RunKind,
    (source, dest): (&str, &str),
    started: chrono::DateTime<chrono::Utc>,
    error: &RunError,
) -> RunRecord {
    let before = match ctx.status.get_run(Some(&ctx.run_id)).await {
        Ok(Some((run, _))) => Some(run),
        _ => None,
    };
    let mut run = before.unwrap_or_else(|| RunRecord {
        run_id: ctx.run_id.clone(),
        source: source.to_string(),
        dest: dest.to_string(),
        dry_run: ctx.dry_run,
        started_at: started,
        ..Default::default()
    });
    run.kind = kind;
    run.result = RunResult::Failed;
    run.error = Some(error.to_string());
    run.ended_at = Some(chrono::Utc::now());
    run
}

async fn settle(
    ctx: &RunContext<'_>,
    kind: RunKind,
    sides: (&str, &str),
    started: chrono::DateTime<chrono::Utc>,
    r: Result<SyncReport, RunError>,
) -> Result<SyncReport, RunError> {
    let Err(e) = r else { return r };
    if !ctx.dry_run && !matches!(e, RunError::Store(_)) {
        let run = failed_run(ctx, kind, sides, started, &e).await;
        if let Err(store) = ctx.status.put_run(&run).await {
            tracing::error!(run_id = %run.run_id, error = %store, "cannot record the run's failure");
        }
    }
    Err(e)
}

async fn images(o: &ImagesOptions, ctx: &RunContext<'_>) -> Result<SyncReport, RunError> {
    let source = Location::parse(&o.source).map_err(|e| config(format!("--source: {e}")))?;
    let dest = Location::parse(&o.dest).map_err(|e| config(format!("--dest: {e}")))?;
    for r in &o.insecure_registries {
        check_insecure_registry(r).map_err(config)?;
    }
    let tag_rules = o.tag_rules().map_err(config)?;
    let selecting = match &o.selection {
        ImageSelection::List(text) => {
            let sel = parse_list(text);
            if sel.entries.is_empty() && sel.errors.is_empty() {
                return Err(config(
                    "the selection list names no image: expected one per line (name, name:tag, name:ALL_TAGS or name@sha256:…)",
                ));
            }
            Selecting::List(sel)
        }
        ImageSelection::AllRepos { .. } => Selecting::AllRepos,
    };
    let include_untagged = matches!(
        o.selection,
        ImageSelection::AllRepos {
            include_untagged: true
        }
    );
    if include_untagged && ecr::parse_ecr_host(&source.host).is_none() {
        return Err(config(format!(
            "--include-untagged: registry {} cannot list untagged images (only Amazon ECR can); drop the flag or sync from ECR",
            source.host
        )));
    }
    let authfile = o.authfile.as_ref().map(PathBuf::from);
    let authfile = default_auth_file(authfile.as_deref());
    let mut credentials = match &authfile {
        Some(p) => Credentials::from_file(p).map_err(config)?,
        None => Credentials::default(),
    };
    // Every registry this run talks to.
    let mut hosts: BTreeSet<String> = [source.host.clone(), dest.host.clone()].into();
    if let Selecting::List(sel) = &selecting {
        hosts.extend(sel.entries.iter().filter_map(|e| e.registry.clone()));
    }
    // Logins kept by credential helpers (ECR's come from the ECR API below).
    let helped: Vec<String> = hosts
        .iter()
        .filter(|h| ecr::parse_ecr_host(h).is_none())
        .cloned()
        .collect();
    credentials.ask_helpers(&helped).await.map_err(config)?;
    let authfile_name = authfile
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| {
            "none: no --authfile, $REGISTRY_AUTH_FILE or ~/.docker/config.json".into()
        });
    let mut trust = Trust::system();
    if let Some(dir) = &o.registry_certs {
        if !Path::new(dir).is_dir() {
            return Err(config(format!(
                "--registry-certs {dir}: not a directory (expected DIR/HOST:PORT/ca.crt)"
            )));
        }
        trust = trust.with_registry_certs(dir);
    }
    let mut registry = HttpRegistry::new(credentials, o.insecure_registries.clone())
        .with_trust(trust)
        .with_max_requests_per_second(o.max_requests_per_second);

    let mut prepare: Option<EcrRepos> = None;
    for host in &hosts {
        let Some(e) = ecr::parse_ecr_host(host) else {
            continue;
        };
        let client = Ecr::connect(e).await;
        let login = client
            .login()
            .await
            .map_err(|e| config(format!("cannot log in to ECR registry {host}: {e}")))?;
        registry.add_login(host, login);
        if let Ok(addr) = std::env::var(ecr::ADDRESS_OVERRIDE_ENV) {
            registry.route(host, &addr);
        }
        if *host == dest.host {
            prepare = Some(EcrRepos {
                ecr: client,
                settings: RepoSettings {
                    scan_on_push: !o.no_scan_on_push,
                    kms_key: o.ecr_kms_key.clone(),
                    immutable_tags: o.ecr_immutable_tags,
                },
            });
        }
    }
    let hosts: Vec<String> = hosts.into_iter().collect();
    check_skopeo().map_err(config)?;
    // Both sides answer and accept their logins before any image is looked at.
    let mut sides = vec![&source.host];
    if dest.host != source.host {
        sides.push(&dest.host);
    }
    for host in sides {
        registry
            .check_reachable(host, &authfile_name)
            .await
            .map_err(config)?;
    }
    let copier = Skopeo::new(&registry, &hosts)
        .map_err(config)?
        .with_stop(ctx.stop.clone());
    let spec = SyncSpec {
        run_id: ctx.run_id.clone(),
        source,
        dest,
        selecting,
        retry: RetryPolicy {
            retries: o.retries,
            base_delay: Duration::from_millis(o.retry_base_ms),
            max_delay: Duration::from_secs(o.retry_max_secs),
            attempt_timeout: Duration::from_secs(o.attempt_timeout_secs),
        },
        concurrency: o.concurrency.max(1),
        resolve_concurrency: o.resolve_concurrency.max(1),
        dry_run: ctx.dry_run,
        include_untagged,
        tag_rules,
        no_overwrite: o.no_overwrite,
        min_age: o.min_age_secs.map(Duration::from_secs),
    };
    let edges = Edges {
        registry: &registry,
        copier: &copier,
        store: ctx.status,
        prepare: prepare.as_ref().map(|p| p as &dyn Prepare),
        progress: ctx.progress,
    };
    let all_repos = matches!(spec.selecting, Selecting::AllRepos);
    let mut report = run_sync_until(&spec, &edges, &ctx.stop).await?;
    report.registries = registry.request_counts();
    // The temp auth file goes with the copier.
    drop(copier);
    if all_repos && report.items.is_empty() && ctx.stop.reason().is_none() {
        return Err(config(format!(
            "--all-repos: no repository under {} (check the prefix)",
            spec.source
        )));
    }
    Ok(report)
}

async fn objects(
    o: &ObjectsOptions,
    ctx: &RunContext<'_>,
    only_keys: Option<Vec<String>>,
) -> Result<SyncReport, RunError> {
    use crate::objects::bucket::{
        Bucket, CredentialSource, DestOptions, Endpoint, client_of, load_config,
        parse_storage_class,
    };
    use crate::objects::diff::Compare;
    use crate::objects::multipart::check_part_size;
    use crate::objects::run::{ObjectEdges, ObjectsSpec, parse_url};
    use crate::objects::transfer::Mode;
    check_part_size(o.part_size).map_err(config)?;
    let filter = filter_of(o, chrono::Utc::now()).map_err(config)?;
    let source = parse_url(&o.source).map_err(|e| config(format!("source: {e}")))?;
    let dest = parse_url(&o.dest).map_err(|e| config(format!("dest: {e}")))?;
    let compare = Compare::parse(&o.compare).map_err(|e| config(format!("--compare: {e}")))?;
    let storage_class = o
        .storage_class
        .as_deref()
        .map(parse_storage_class)
        .transpose()
        .map_err(|e| config(format!("--storage-class: {e}")))?;
    let max_delete = o
        .max_delete
        .as_deref()
        .map(crate::objects::deletes::MaxDelete::parse)
        .transpose()
        .map_err(config)?;
    if max_delete.is_some() && !o.delete {
        return Err(config(
            "--max-delete is given without --delete: expected --delete as well (nothing is deleted without it)",
        ));
    }
    let backup = o
        .backup_prefix
        .as_deref()
        .map(|b| crate::objects::deletes::BackupPrefix::parse(b, &dest.prefix))
        .transpose()
        .map_err(config)?;
    let restore = match (o.restore_days, &o.restore_tier) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(config(
                "--restore-tier is given without --restore-days: expected --restore-days N as well",
            ));
        }
        (Some(days), tier) => {
            let days = i32::try_from(days)
                .ok()
                .filter(|d| *d >= 1)
                .ok_or_else(|| config(format!("--restore-days {days}: expected 1 or more days")))?;
            let tier = crate::objects::run::parse_tier(tier.as_deref().unwrap_or("Standard"))
                .map_err(config)?;
            Some((days, tier))
        }
    };
    let side = |url: &Option<String>, region: &Option<String>, profile: &Option<String>| Endpoint {
        region: region.clone(),
        url: url.clone(),
        credentials: profile
            .clone()
            .map(CredentialSource::Profile)
            .unwrap_or_default(),
    };
    for (flag, url) in [
        ("--source-endpoint", &o.source_endpoint),
        ("--dest-endpoint", &o.dest_endpoint),
    ] {
        if let Some(u) = url {
            check_endpoint(u).map_err(|e| config(format!("{flag} {u:?}: {e}")))?;
        }
    }
    let src_ep = side(&o.source_endpoint, &o.source_region, &o.source_profile);
    let dst_ep = side(&o.dest_endpoint, &o.dest_region, &o.dest_profile);
    let mode = match o.copy_mode.as_str() {
        "server" => Mode::Server,
        "stream" => Mode::Stream,
        _ if src_ep.url == dst_ep.url && src_ep.credentials == dst_ep.credentials => Mode::Server,
        _ => Mode::Stream,
    };
    // Streamed parts are read whole: one must fit (server-side copies hold no bytes).
    if mode == Mode::Stream && o.stream_buffer < o.part_size {
        return Err(config(format!(
            "--stream-buffer {} is less than one part (--part-size {}): expected at least the part size when streaming",
            o.stream_buffer, o.part_size
        )));
    }
    let src_conf = load_config(&src_ep, None)
        .await
        .map_err(|e| config(e.message))?;
    let dst_conf = load_config(&dst_ep, None)
        .await
        .map_err(|e| config(e.message))?;
    check_credentials("source", &src_conf, &src_ep)
        .await
        .map_err(config)?;
    check_credentials("destination", &dst_conf, &dst_ep)
        .await
        .map_err(config)?;
    let src = Bucket {
        client: client_of(&src_conf, &src_ep),
        url: source,
        requester_pays: o.requester_pays,
    };
    let dst = Bucket {
        client: client_of(&dst_conf, &dst_ep),
        url: dest,
        requester_pays: false,
    };
    // Credentials found and buckets there before any object is looked at.
    check_side("source", &src, &src_ep).await.map_err(config)?;
    check_side("destination", &dst, &dst_ep)
        .await
        .map_err(config)?;
    let prefixes = match &o.prefix_list {
        None => None,
        Some(at) => Some(read_prefix_list(at, &src).await.map_err(config)?),
    };
    let spec = ObjectsSpec {
        run_id: ctx.run_id.clone(),
        compare,
        concurrency: o.concurrency.max(1),
        part_size: o.part_size,
        threshold: o.multipart_threshold,
        mode,
        tags: o.tags,
        dest_opts: DestOptions {
            storage_class,
            kms_key: o.sse_kms_key.clone(),
        },
        retry: RetryPolicy {
            retries: o.retries,
            base_delay: Duration::from_millis(o.retry_base_ms),
            max_delay: Duration::from_secs(o.retry_max_secs),
            attempt_timeout: Duration::from_secs(o.attempt_timeout_secs),
        },
        dry_run: ctx.dry_run,
        spill_dir: None,
        stream_buffer: o.stream_buffer,
        only_keys,
        filter,
        prefixes,
        list_concurrency: o.list_concurrency.max(1),
        delete: o.delete,
        max_delete,
        backup,
        restore,
        bwlimit: o
            .bwlimit
            .map(|r| std::sync::Arc::new(crate::objects::bandwidth::limit(r))),
    };
    let edges = ObjectEdges {
        src: &src,
        dst: &dst,
        store: ctx.status,
        ledger: ctx.ledger,
        progress: ctx.progress,
        stop: ctx.stop.clone(),
    };
    Ok(crate::objects::run::run_objects(&spec, &edges).await?)
}

/// The filter of an objects run: its rules in order, size bounds, and age bounds
/// measured back from `now` (the run's start).
pub fn filter_of(
    o: &ObjectsOptions,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<crate::objects::filter::Filter, String> {
    use crate::objects::filter::{Filter, Rule};
    let rules = o
        .filters
        .iter()
        .map(|r| {
            Rule::parse(r).map_err(|e| {
                let flag = if r.starts_with('+') {
                    "--include"
                } else {
                    "--exclude"
                };
                format!("{flag}: {e}")
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let (Some(min), Some(max)) = (o.min_size, o.max_size)
        && min > max
    {
        return Err(format!(
            "--min-size {min} is more than --max-size {max}: no object could pass"
        ));
    }
    if let (Some(max), Some(min)) = (o.max_age_secs, o.min_age_secs)
        && min > max
    {
        return Err(format!(
            "--min-age {min}s is more than --max-age {max}s: no object could pass"
        ));
    }
    Ok(Filter {
        rules,
        min_size: o.min_size,
        max_size: o.max_size,
        ..Default::default()
    }
    .with_ages(
        now,
        o.max_age_secs.map(Duration::from_secs),
        o.min_age_secs.map(Duration::from_secs),
    ))
}

/// Reads the prefix list from a file or `s3://BUCKET/KEY` (with the source's client), at
/// most [`MAX_PREFIX_LIST`](crate::objects::prefixes::MAX_PREFIX_LIST) bytes, and parses it.
async fn read_prefix_list(
    at: &str,
    src: &crate::objects::bucket::Bucket,
) -> Result<Vec<String>, String> {
    use crate::objects::prefixes::{MAX_PREFIX_LIST, parse};
    use crate::retry::ErrorClass;
    let too_big = || format!("--prefix-list {at:?}: larger than {MAX_PREFIX_LIST} bytes");
    let bytes: Vec<u8> = if at.starts_with("s3://") {
        let url =
            crate::objects::url::S3Url::parse(at).map_err(|e| format!("--prefix-list: {e}"))?;
        let key = url.prefix.trim_end_matches('/').to_string();
        if key.is_empty() {
            return Err(format!(
                "--prefix-list {at:?}: names no object; expected s3://BUCKET/KEY"
            ));
        }
        let bucket = crate::objects::bucket::Bucket {
            client: src.client.clone(),
            url: crate::objects::url::S3Url {
                bucket: url.bucket,
                prefix: String::new(),
            },
            requester_pays: false,
        };
        match bucket.get(&key, None, None, MAX_PREFIX_LIST, None).await {
            Ok(got) => got.body.to_vec(),
            Err(e) if e.class == ErrorClass::SourceChanged => return Err(too_big()),
            Err(e) if e.class == ErrorClass::NotFound => {
                return Err(format!("--prefix-list {at}: no such object"));
            }
            Err(e) => return Err(format!("--prefix-list {at}: {}", e.message)),
        }
    } else {
        use std::io::Read as _;
        let file = std::fs::File::open(at).map_err(|e| format!("--prefix-list {at:?}: {e}"))?;
        let mut buf = Vec::new();
        file.take(MAX_PREFIX_LIST + 1)
            .read_to_end(&mut buf)
            .map_err(|e| format!("--prefix-list {at:?}: {e}"))?;
        if buf.len() as u64 > MAX_PREFIX_LIST {
            return Err(too_big());
        }
        buf
    };
    parse(&bytes).map_err(|e| format!("--prefix-list {at}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_lists_name_failed_images_relative_to_the_source() {
        let item = |source: &str, status| ItemRecord {
            run_id: "r".into(),
            source: source.into(),
            dest: "d".into(),
            status,
            source_digest: None,
            dest_digest: None,
            attempts: 1,
            error: None,
            bytes: 0,
            started_at: None,
            ended_at: None,
            version: 2,
            line: None,
            resumed: None,
            waiting_until: None,
            reason: None,
        };
        let items = [
            item("127.0.0.1:5000/team/app:1", Status::Failed),
            item("127.0.0.1:5000/team/ok:1", Status::Copied),
            item("quay.io/org/x:2", Status::Failed),
        ];
        assert_eq!(
            retry_list("127.0.0.1:5000/team", &items),
            "app:1\nquay.io/org/x:2\n"
        );
        // Objects: each failed key relative to the source, in order, once; a key with a
        // newline or spaces stays whole.
        let items = [
            item("s3://src/data/z.txt", Status::Failed),
            item("s3://src/data/ok.txt", Status::Copied),
            item("s3://src/data/a b\nc", Status::Failed),
            item("s3://src/data/z.txt", Status::Failed),
            item("s3://other/data/x", Status::Failed),
        ];
        assert_eq!(
            retry_keys("s3://src/data", &items),
            ["a b\nc".to_string(), "z.txt".to_string()]
        );
        assert_eq!(retry_keys("s3://src/data/", &items).len(), 2);
    }
}
