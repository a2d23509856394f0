//! Runs a task's settings on one machine: builds the edges (registry client with the
//! logins of the auth file, ECR logins and repositories, skopeo; or the two S3 clients)
//! and runs the pipeline. `images sync`, `objects sync`, `task run` and `serve` all come
//! through here, so a task runs exactly as the command with its flags would.

use super::store::{TaskStore, TaskStoreError};
use super::{ImageSelection, ImagesOptions, ObjectsOptions, Spec, Task};
use crate::authfile::{Credentials, default_auth_file};
use crate::copy::Skopeo;
use crate::ecr::{self, Ecr, EcrRepos, RepoSettings};
use crate::interrupt::Stop;
use crate::objects::uploads::UploadLedger;
use crate::registry::{HttpRegistry, Location};
use crate::retry::RetryPolicy;
use crate::selection::parse_list;
use crate::status::{ItemRecord, Status, StatusStore, StoreError};
use crate::sync::{Edges, Prepare, Progress, Selecting, SyncReport, SyncSpec, run_sync_until};
use std::collections::BTreeSet;
use std::path::PathBuf;
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

/// Runs a task, linking the run to it first.
pub async fn run_task(
    task: &Task,
    tasks: &dyn TaskStore,
    ctx: &RunContext<'_>,
    only_list: Option<String>,
) -> Result<SyncReport, RunError> {
    if !ctx.dry_run {
        tasks
            .note_run(&task.name, &ctx.run_id, chrono::Utc::now())
            .await?;
    }
    match &task.spec {
        Spec::Images(o) => {
            let mut o = o.clone();
            if let Some(list) = only_list {
                o.selection = ImageSelection::List(list);
            }
            run_images(&o, ctx).await
        }
        Spec::Objects(o) => run_objects(o, ctx).await,
    }
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

fn config(e: impl std::fmt::Display) -> RunError {
    RunError::Config(e.to_string())
}

/// `images sync` with these settings.
pub async fn run_images(o: &ImagesOptions, ctx: &RunContext<'_>) -> Result<SyncReport, RunError> {
    let source = Location::parse(&o.source).map_err(|e| config(format!("--source: {e}")))?;
    let dest = Location::parse(&o.dest).map_err(|e| config(format!("--dest: {e}")))?;
    let selecting = match &o.selection {
        ImageSelection::List(text) => Selecting::List(parse_list(text)),
        ImageSelection::AllRepos { .. } => Selecting::AllRepos,
    };
    let include_untagged = matches!(
        o.selection,
        ImageSelection::AllRepos {
            include_untagged: true
        }
    );
    let authfile = o.authfile.as_ref().map(PathBuf::from);
    let credentials = match default_auth_file(authfile.as_deref()) {
        Some(p) => Credentials::from_file(&p).map_err(config)?,
        None => Credentials::default(),
    };
    let mut registry = HttpRegistry::new(credentials, o.insecure_registries.clone());

    // Every registry this run talks to.
    let mut hosts: BTreeSet<String> = [source.host.clone(), dest.host.clone()].into();
    if let Selecting::List(sel) = &selecting {
        hosts.extend(sel.entries.iter().filter_map(|e| e.registry.clone()));
    }
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
                },
            });
        }
    }
    let hosts: Vec<String> = hosts.into_iter().collect();
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
    };
    let edges = Edges {
        registry: &registry,
        copier: &copier,
        store: ctx.status,
        prepare: prepare.as_ref().map(|p| p as &dyn Prepare),
        progress: ctx.progress,
    };
    let report = run_sync_until(&spec, &edges, &ctx.stop).await?;
    // The temp auth file goes with the copier.
    drop(copier);
    Ok(report)
}

/// `objects sync` with these settings.
pub async fn run_objects(o: &ObjectsOptions, ctx: &RunContext<'_>) -> Result<SyncReport, RunError> {
    use crate::objects::bucket::{
        Bucket, CredentialSource, DestOptions, Endpoint, connect, parse_storage_class,
    };
    use crate::objects::diff::Compare;
    use crate::objects::multipart::check_part_size;
    use crate::objects::run::{ObjectEdges, ObjectsSpec, parse_url};
    use crate::objects::transfer::Mode;
    check_part_size(o.part_size).map_err(config)?;
    let source = parse_url(&o.source).map_err(|e| config(format!("source: {e}")))?;
    let dest = parse_url(&o.dest).map_err(|e| config(format!("dest: {e}")))?;
    let compare = Compare::parse(&o.compare).map_err(|e| config(format!("--compare: {e}")))?;
    let storage_class = o
        .storage_class
        .as_deref()
        .map(parse_storage_class)
        .transpose()
        .map_err(|e| config(format!("--storage-class: {e}")))?;
    let side = |url: &Option<String>, region: &Option<String>, profile: &Option<String>| Endpoint {
        region: region.clone(),
        url: url.clone(),
        credentials: profile
            .clone()
            .map(CredentialSource::Profile)
            .unwrap_or_default(),
    };
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
    let src = Bucket {
        client: connect(&src_ep, None)
            .await
            .map_err(|e| config(e.message))?,
        url: source,
        requester_pays: o.requester_pays,
    };
    let dst = Bucket {
        client: connect(&dst_ep, None)
            .await
            .map_err(|e| config(e.message))?,
        url: dest,
        requester_pays: false,
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
            max_delay: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(o.attempt_timeout_secs),
        },
        dry_run: ctx.dry_run,
        spill_dir: None,
        stream_buffer: o.stream_buffer,
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
    }
}
