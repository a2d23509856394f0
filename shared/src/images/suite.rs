//! The AWS functions of the image suite. Each `functions/<name>` binary reads its config,
//! builds its clients and calls one handler here. Handlers translate payloads
//! ([`crate::images::workflow`]) and call the same pure planning code as the CLI; errors carry the
//! stable class name as the Lambda error type, which the state machine's Retry/Catch match.

use crate::aws::ecs_runner::TaskRunner;
use crate::aws::notify::Notifier;
use crate::aws::offload::{self, BlobStore};
use crate::aws::secrets::{self, SecretCredentials};
use crate::config::{ConfigError, Env};
use crate::images::ecr::{self, Ecr, Registries};
use crate::images::hosts::{self, HostRules};
use crate::images::list_source::ParameterStore;
use crate::images::plan::{self, Action, Unplannable, Wanted};
use crate::images::registry::{HttpRegistry, Location, Registry};
use crate::images::selection::parse_list;
use crate::images::sync::{self, Prepare, Selecting, SyncSpec};
use crate::images::tags::{TagRuleText, TagRules};
use crate::images::workflow::{
    CopyTask, Diff, DispatchRequest, ImageJob, ListRequest, Listed, RecordRequest, RunSummary,
    StopRequest, image_name,
};
use crate::retry::{ErrorClass, ItemError, RetryPolicy};
use crate::status::{ItemRecord, RunRecord, Status, StatusStore, StoreError};
use crate::tasks::{ImageSelection, Spec, Task};
use chrono::Utc;
use std::collections::BTreeSet;
use std::time::Duration;

impl From<ItemError> for lambda_runtime::Diagnostic {
    fn from(e: ItemError) -> Self {
        lambda_runtime::Diagnostic {
            error_type: e.class.as_str().to_string(),
            error_message: e.message,
        }
    }
}

impl From<StoreError> for ItemError {
    fn from(e: StoreError) -> Self {
        ItemError::new(ErrorClass::Retryable, e.to_string())
    }
}

/// Settings shared by `list-images` and `find-diff` (environment variables).
#[derive(Debug, Clone)]
pub struct ImagesConfig {
    /// `SOURCE_REGISTRY`: REGISTRY[/PREFIX] (an ECR host for an ECR source).
    pub source: Location,
    /// `DEST_REGISTRY`: REGISTRY[/PREFIX].
    pub dest: Location,
    /// `SELECT_TYPE`: ALL (every repository and tag) or SELECTED (the list parameter).
    pub select_all: bool,
    /// `LIST_PARAMETER`: SSM parameter with the selection list (SELECTED).
    pub list_parameter: Option<String>,
    /// `SOURCE_SECRET` / `DEST_SECRET`: Secrets Manager names of credentials, if any.
    pub source_secret: Option<String>,
    pub dest_secret: Option<String>,
    /// `TABLE_NAME`: the DynamoDB status table.
    pub table: String,
    /// `PAYLOAD_BUCKET`: where large lists go.
    pub bucket: String,
    /// `SCAN_ON_PUSH` (default true) and `KMS_KEY` for new ECR repositories.
    pub repo_settings: ecr::RepoSettings,
    pub retry: RetryPolicy,
    /// `RESOLVE_CONCURRENCY` (default 32).
    pub resolve_concurrency: usize,
    /// `INCLUDE_UNTAGGED` (default false): with ALL from ECR, also the untagged images.
    pub include_untagged: bool,
    /// `NO_OVERWRITE` (default false): a destination tag holding another image is left
    /// alone and recorded as a conflict.
    pub no_overwrite: bool,
    /// `EXTRA_SOURCE_REGISTRIES`: other registry hosts selection lines may name (read
    /// without a login); a line naming any other host is refused.
    pub extra_sources: Vec<String>,
    /// `TASKS_TABLE`: the tasks table, where an execution's `{"task": NAME}` is read.
    pub tasks_table: Option<String>,
    /// A task's own selection list (its text), read instead of any parameter.
    pub list_text: Option<String>,
    /// The task this run is of: marked on its run record.
    pub task: Option<String>,
    /// `INCLUDE_TAG_PATTERNS`, `EXCLUDE_TAG_PATTERNS` (regular expressions separated by spaces),
    /// `SEMVER_RANGE`, `NEWEST_TAGS`: which listed tags are wanted.
    pub tag_rules: TagRules,
}

impl ImagesConfig {
    /// Reads every variable; one error lists every problem.
    pub fn from_env(mut env: Env) -> Result<Self, ConfigError> {
        let source = env.required("SOURCE_REGISTRY");
        let dest = env.required("DEST_REGISTRY");
        let select = env.choice("SELECT_TYPE", &["ALL", "SELECTED"], "SELECTED");
        let list_parameter = env.optional("LIST_PARAMETER");
        if select == "SELECTED" && list_parameter.is_none() {
            env.problem("LIST_PARAMETER is not set (SELECT_TYPE=SELECTED needs the SSM parameter with the list)".into());
        }
        let loc = |name: &str, v: &str, env: &mut Env| match Location::parse(v) {
            Ok(l) => Some(l),
            Err(e) if !v.is_empty() => {
                env.problem(format!("{name}: {e}"));
                None
            }
            Err(_) => None,
        };
        let source = loc("SOURCE_REGISTRY", &source, &mut env);
        let dest = loc("DEST_REGISTRY", &dest, &mut env);
        let table = env.required("TABLE_NAME");
        let bucket = env.required("PAYLOAD_BUCKET");
        let scan_on_push = env.parsed("SCAN_ON_PUSH", true, "true or false");
        let kms_key = env.optional("KMS_KEY");
        let retries = env.parsed("RETRIES", 3u32, "a number of retries");
        let resolve_concurrency = env.parsed("RESOLVE_CONCURRENCY", 32usize, "a positive number");
        let include_untagged = env.parsed("INCLUDE_UNTAGGED", false, "true or false");
        let no_overwrite = env.parsed("NO_OVERWRITE", false, "true or false");
        let immutable_tags = match env.optional("TAG_MUTABILITY").as_deref() {
            None | Some("") | Some("MUTABLE") => false,
            Some("IMMUTABLE") => true,
            Some(other) => {
                env.problem(format!(
                    "TAG_MUTABILITY={other:?}: expected MUTABLE or IMMUTABLE"
                ));
                false
            }
        };
        let tasks_table = env.optional("TASKS_TABLE");
        let rule_text = TagRuleText {
            include: TagRuleText::split_patterns(
                &env.optional("INCLUDE_TAG_PATTERNS").unwrap_or_default(),
            ),
            exclude: TagRuleText::split_patterns(
                &env.optional("EXCLUDE_TAG_PATTERNS").unwrap_or_default(),
            ),
            semver: env.optional("SEMVER_RANGE").filter(|s| !s.is_empty()),
            newest: match env.parsed("NEWEST_TAGS", 0usize, "a number of tags (0: all)") {
                0 => None,
                n => Some(n),
            },
        };
        let tag_rules = TagRules::parse(&rule_text).unwrap_or_else(|errors| {
            for e in errors {
                env.problem(format!("tag rules: {e}"));
            }
            TagRules::default()
        });
        let source_secret = env.optional("SOURCE_SECRET");
        let dest_secret = env.optional("DEST_SECRET");
        let extra_sources = match hosts::parse_extra_sources(
            &env.optional("EXTRA_SOURCE_REGISTRIES").unwrap_or_default(),
        ) {
            Ok(v) => v,
            Err(e) => {
                env.problem(e);
                Vec::new()
            }
        };
        env.finish()?;
        Ok(Self {
            extra_sources,
            tasks_table,
            list_text: None,
            task: None,
            source: source.expect("checked"),
            dest: dest.expect("checked"),
            select_all: select == "ALL",
            list_parameter,
            source_secret,
            dest_secret,
            table,
            bucket,
            repo_settings: ecr::RepoSettings {
                scan_on_push,
                kms_key,
                immutable_tags,
            },
            retry: RetryPolicy {
                retries,
                base_delay: Duration::from_millis(500),
                max_delay: Duration::from_secs(10),
                attempt_timeout: Duration::from_secs(60),
            },
            resolve_concurrency: resolve_concurrency.max(1),
            include_untagged,
            no_overwrite,
            tag_rules,
        })
    }

    /// This configuration as task `t` sets it: the task's source, destination, selection
    /// and options. The hosts stay those the stack's secrets and the copy worker's rules
    /// belong to: the task's source must be the stack's source registry or an allowed extra
    /// one, its destination the stack's destination registry (under any prefix), so the
    /// stack's logins only ever go where they belong. An auth file is a path on one
    /// machine; on AWS the stack's secrets log in, so a task naming one is refused.
    pub fn for_task(&self, t: &Task) -> Result<ImagesConfig, ItemError> {
        let bad = |what: &str, e: String| {
            ItemError::new(
                ErrorClass::BadInput,
                format!("task {:?}: {what}: {e}", t.name),
            )
        };
        let Spec::Images(o) = &t.spec else {
            return Err(bad(
                "kind",
                "an objects task; the images state machine runs images tasks".into(),
            ));
        };
        if let Some(path) = &o.authfile {
            return Err(bad(
                "authfile",
                format!(
                    "{path:?} is a path on one machine; on AWS the stack's secrets log in (leave it empty)"
                ),
            ));
        }
        let source = Location::parse(&o.source).map_err(|e| bad("source", e.to_string()))?;
        let dest = Location::parse(&o.dest).map_err(|e| bad("dest", e.to_string()))?;
        let rules = self.rules();
        rules.check_source(
            &format!("task {:?}'s source {}", t.name, o.source),
            &source.host,
        )?;
        rules.check_dest(
            &format!("task {:?}'s destination {}", t.name, o.dest),
            &dest.host,
        )?;
        let mut cfg = self.clone();
        cfg.source = source;
        cfg.dest = dest;
        cfg.list_parameter = None;
        match &o.selection {
            ImageSelection::List(text) => {
                cfg.select_all = false;
                cfg.list_text = Some(text.clone());
                cfg.include_untagged = false;
            }
            ImageSelection::AllRepos { include_untagged } => {
                cfg.select_all = true;
                cfg.list_text = None;
                cfg.include_untagged = *include_untagged;
            }
        }
        cfg.retry.retries = o.retries;
        cfg.resolve_concurrency = o.resolve_concurrency.max(1);
        cfg.tag_rules = o.tag_rules().map_err(|e| bad("tag rules", e))?;
        cfg.repo_settings.scan_on_push = !o.no_scan_on_push;
        cfg.repo_settings.immutable_tags = o.ecr_immutable_tags;
        cfg.no_overwrite = o.no_overwrite;
        cfg.task = Some(t.name.clone());
        Ok(cfg)
    }

    /// The registries this configuration's secrets belong to.
    pub fn rules(&self) -> HostRules {
        HostRules {
            source: self.source.host.clone(),
            dest: self.dest.host.clone(),
            extra_sources: self.extra_sources.clone(),
        }
    }

    fn spec(&self, run_id: &str, selecting: Selecting) -> SyncSpec {
        SyncSpec {
            min_age: None,
            run_id: run_id.to_string(),
            source: self.source.clone(),
            dest: self.dest.clone(),
            selecting,
            retry: self.retry,
            concurrency: 1,
            resolve_concurrency: self.resolve_concurrency,
            dry_run: false,
            include_untagged: self.include_untagged,
            tag_rules: self.tag_rules.clone(),
            no_overwrite: self.no_overwrite,
        }
    }
}

/// Builds the registry clients for a set of hosts: ECR hosts through their API (keys from
/// the secret when given, else the function's role), others over HTTP with the secret's login.
pub async fn registries_for(
    hosts: &[(String, Option<String>)],
    secrets_client: Option<&aws_sdk_secretsmanager::Client>,
    insecure: Vec<String>,
) -> Result<Registries, ItemError> {
    let mut http = HttpRegistry::new(Default::default(), insecure);
    let mut ecr_clients = std::collections::HashMap::new();
    for (host, secret) in hosts {
        let creds = match (secret, secrets_client) {
            (Some(name), Some(c)) => Some(secrets::fetch(c, name).await?),
            (Some(name), None) => {
                return Err(ItemError::new(
                    ErrorClass::BadInput,
                    format!("secret {name:?} named but no Secrets Manager client"),
                ));
            }
            (None, _) => None,
        };
        if let Some(e) = ecr::parse_ecr_host(host) {
            let keys = match creds {
                Some(SecretCredentials::Aws {
                    access_key_id,
                    secret_access_key,
                }) => Some((access_key_id, secret_access_key)),
                Some(SecretCredentials::Registry(_)) => {
                    return Err(ItemError::new(
                        ErrorClass::BadInput,
                        format!(
                            "the secret for ECR registry {host} must hold access_key_id/secret_access_key, not a registry login"
                        ),
                    ));
                }
                None => None,
            };
            let client = Ecr::connect_with(e, keys).await;
            http.add_login(host, client.login().await?);
            if let Ok(addr) = std::env::var(ecr::ADDRESS_OVERRIDE_ENV) {
                http.route(host, &addr);
            }
            ecr_clients.insert(host.clone(), client);
        } else if let Some(SecretCredentials::Registry(login)) = creds {
            http.add_login(host, login);
        }
    }
    Ok(Registries {
        ecr: ecr_clients,
        http,
    })
}

/// Edges of `list-images`.
pub struct ListEdges<'a> {
    pub params: &'a dyn ParameterStore,
    pub registry: &'a dyn Registry,
    pub blobs: &'a dyn BlobStore,
    pub store: &'a dyn StatusStore,
}

fn version_now() -> u64 {
    Utc::now().timestamp_millis().max(0) as u64
}

/// `list-images`: reads the selection (execution input, SSM list, or every repository),
/// expands `ALL_TAGS`, records bad lines as failed images and returns the images to
/// consider — inline, or as an S3 pointer when large.
pub async fn list_images(
    req: ListRequest,
    cfg: &ImagesConfig,
    e: &ListEdges<'_>,
) -> Result<Listed, ItemError> {
    let selecting = if let Some(lines) = &req.input.images {
        Selecting::List(parse_list(&lines.join("\n")))
    } else if let Some(text) = &cfg.list_text {
        Selecting::List(parse_list(text))
    } else if cfg.task.is_some() && cfg.select_all {
        Selecting::AllRepos
    } else if let Some(name) = req.input.list_parameter.as_ref().or(if cfg.select_all {
        None
    } else {
        cfg.list_parameter.as_ref()
    }) {
        Selecting::List(parse_list(&e.params.get(name).await?))
    } else {
        Selecting::AllRepos
    };
    let now = Utc::now();
    e.store
        .put_run(&RunRecord {
            run_id: req.run_id.clone(),
            source: cfg.source.to_string(),
            dest: cfg.dest.to_string(),
            dry_run: false,
            started_at: now,
            ended_at: None,
            copied: 0,
            skipped: 0,
            failed: 0,
            bytes: 0,
            kind: crate::status::RunKind::Images,
            ..Default::default()
        })
        .await?;
    if let Some(task) = &cfg.task {
        e.store.note_task(&req.run_id, task).await?;
    }
    // A line may name its own registry only if it is the source or an allowed extra one.
    let mut refused = Vec::new();
    let selecting = match selecting {
        Selecting::List(mut sel) => {
            let rules = cfg.rules();
            sel.entries.retain(|entry| match &entry.registry {
                None => true,
                Some(host) => match rules
                    .check_source(&format!("line {}: {}", entry.line, entry.text), host)
                {
                    Ok(()) => true,
                    Err(err) => {
                        refused.push(Unplannable {
                            what: format!("line {}: {}", entry.line, entry.text),
                            dest: None,
                            error: err.into(),
                        });
                        false
                    }
                },
            });
            Selecting::List(sel)
        }
        other => other,
    };
    let spec = cfg.spec(&req.run_id, selecting);
    let (wanted, mut unplannable, rules) = sync::select(&spec, e.registry).await;
    if rules.left_out > 0 {
        tracing::info!(
            left_out = rules.left_out,
            listed = rules.listed,
            "the tag rules left out listed tags"
        );
    }
    unplannable.extend(refused);
    let failed = unplannable.len();
    for u in unplannable {
        tracing::warn!(item = %u.what, error = %u.error, "cannot select");
        let mut rec = sync::failed_record(&req.run_id, u);
        rec.version = version_now();
        e.store.put_item(&rec).await?;
    }
    let jobs: Vec<ImageJob> = wanted
        .iter()
        .map(|w| ImageJob {
            source: w.source.to_string(),
            dest: w.dest.to_string(),
        })
        .collect();
    let images = offload::offload(
        e.blobs,
        &format!("runs/{}/images.json", req.run_id),
        jobs,
        offload::DEFAULT_LIMIT,
    )
    .await?;
    tracing::info!(run_id = %req.run_id, images = images.count, failed, "listed");
    Ok(Listed {
        run_id: req.run_id,
        images,
        failed,
        task: cfg.task.clone(),
    })
}

/// Edges of `find-diff`.
pub struct DiffEdges<'a> {
    pub registry: &'a dyn Registry,
    pub blobs: &'a dyn BlobStore,
    pub store: &'a dyn StatusStore,
    pub prepare: Option<&'a dyn Prepare>,
}

fn record(run_id: &str, source: String, dest: String, status: Status) -> ItemRecord {
    let now = Utc::now();
    ItemRecord {
        run_id: run_id.to_string(),
        source,
        dest,
        status,
        source_digest: None,
        dest_digest: None,
        attempts: 0,
        error: None,
        bytes: 0,
        started_at: Some(now),
        ended_at: Some(now),
        version: version_now(),
        line: None,
        resumed: None,
        waiting_until: None,
        reason: None,
    }
}

/// The record of a run refused before it began (its task has another run going): ended at
/// once, failed, with the reason, marked with its task so the console shows it.
pub async fn record_refused_run(
    run_id: &str,
    task: &str,
    cfg: &ImagesConfig,
    why: &ItemError,
    store: &dyn StatusStore,
) -> Result<(), ItemError> {
    let now = Utc::now();
    store
        .put_run(&RunRecord {
            run_id: run_id.to_string(),
            source: cfg.source.to_string(),
            dest: cfg.dest.to_string(),
            started_at: now,
            ended_at: Some(now),
            kind: crate::status::RunKind::Images,
            result: crate::status::RunResult::Failed,
            error: Some(why.message.clone()),
            ..Default::default()
        })
        .await?;
    store.note_task(run_id, task).await?;
    Ok(())
}

/// `find-diff`: compares source and destination digests and returns only the images that
/// must move (none on a day without change). Skipped and failed images are recorded here;
/// missing destination repositories are created before any task starts.
pub async fn find_diff(
    listed: Listed,
    cfg: &ImagesConfig,
    e: &DiffEdges<'_>,
) -> Result<Diff, ItemError> {
    let run_id = listed.run_id.clone();
    let jobs = offload::load(e.blobs, listed.images).await?;
    let mut failed = listed.failed;
    let mut wanted = Vec::new();
    let rules = cfg.rules();
    for j in jobs {
        let checked = match (image_name(&j.source), image_name(&j.dest)) {
            (Ok(source), Ok(dest)) => rules
                .check_source(&j.source, &source.host)
                .and_then(|()| rules.check_dest(&j.dest, &dest.host))
                .map(|()| Wanted { source, dest })
                .map_err(ItemError::from),
            (Err(err), _) | (_, Err(err)) => {
                Err(ItemError::new(ErrorClass::BadInput, err.to_string()))
            }
        };
        match checked {
            Ok(w) => wanted.push(w),
            Err(err) => {
                let mut r = record(&run_id, j.source, j.dest, Status::Failed);
                r.error = Some(err);
                e.store.put_item(&r).await?;
                failed += 1;
            }
        }
    }
    let (wanted, collided) = plan::refuse_dest_collisions(wanted);
    for u in collided {
        let mut r = record(&run_id, u.what, u.dest.unwrap_or_default(), Status::Failed);
        r.error = Some(u.error);
        e.store.put_item(&r).await?;
        failed += 1;
    }
    let spec = cfg.spec(&run_id, Selecting::AllRepos);
    let (src, dst, attempts) = sync::resolve(&spec, e.registry, &wanted).await;
    let planned = spec.plan(&wanted, &src, &dst);
    let mut skipped = 0;
    let mut conflicts = 0;
    let mut copies = Vec::new();
    for p in planned {
        let mut r = record(
            &run_id,
            p.wanted.source.to_string(),
            p.wanted.dest.to_string(),
            Status::Skipped,
        );
        r.source_digest = p.source.as_ref().map(|i| i.digest.to_string());
        r.dest_digest = p.dest.as_ref().map(|i| i.digest.to_string());
        match p.action {
            Action::Skip => {
                skipped += 1;
                e.store.put_item(&r).await?;
            }
            Action::Conflict(err) => {
                conflicts += 1;
                r.status = Status::Conflict;
                r.error = Some(err);
                e.store.put_item(&r).await?;
            }
            Action::Fail(err) => {
                failed += 1;
                r.status = Status::Failed;
                r.attempts = *attempts.get(&p.wanted).unwrap_or(&0);
                r.error = Some(err);
                e.store.put_item(&r).await?;
            }
            Action::Copy => copies.push((p.wanted, r)),
        }
    }
    if let Some(prep) = e.prepare {
        let repos: BTreeSet<String> = copies.iter().map(|(w, _)| w.dest.repo.clone()).collect();
        let ready = prep.prepare(&repos.into_iter().collect::<Vec<_>>()).await;
        let mut kept = Vec::new();
        for (w, mut r) in copies {
            match ready.get(&w.dest.repo) {
                Some(Err(err)) => {
                    failed += 1;
                    r.status = Status::Failed;
                    r.error = Some(err.clone());
                    e.store.put_item(&r).await?;
                }
                _ => kept.push((w, r)),
            }
        }
        copies = kept;
    }
    let mut tasks = Vec::new();
    for (w, mut r) in copies {
        r.status = Status::Planned;
        r.ended_at = None;
        e.store.put_item(&r).await?;
        tasks.push(CopyTask {
            source: w.source.to_string(),
            dest: w.dest.to_string(),
            source_digest: r.source_digest.clone().unwrap_or_default(),
        });
    }
    let copies = offload::offload(
        e.blobs,
        &format!("runs/{run_id}/copies.json"),
        tasks,
        offload::DEFAULT_LIMIT,
    )
    .await?;
    tracing::info!(run_id = %run_id, to_copy = copies.count, skipped, conflicts, failed, "diff");
    Ok(Diff {
        run_id,
        copies,
        skipped,
        failed,
    })
}

/// `dispatch-fargate`: starts one copy task for one image, carrying the task token.
/// Returns the task ARN (the state waits for the worker's answer, not for this).
pub async fn dispatch_fargate(
    req: DispatchRequest,
    runner: &dyn TaskRunner,
) -> Result<serde_json::Value, ItemError> {
    req.task.parts()?;
    let arn = runner.start(&req).await?;
    tracing::info!(task = %arn, source = %req.task.source, "started copy task");
    Ok(serde_json::json!({ "task_arn": arn }))
}

/// `dispatch-fargate` after a copy timed out: stops that image's copy tasks still running, so
/// the retry's task is the only one copying it.
pub async fn stop_copy_tasks(
    req: StopRequest,
    runner: &dyn TaskRunner,
) -> Result<serde_json::Value, ItemError> {
    req.task.parts()?;
    let stopped = runner.stop(&req.run_id, &req.task).await?;
    tracing::info!(stopped, source = %req.task.source, "stopped timed-out copy tasks");
    Ok(serde_json::json!({ "stopped": stopped }))
}

/// `record-status`: writes one image's final result (conditional: a late or repeated write
/// never wins over a newer one), or closes the run: counts, run record, and one SNS message
/// when anything failed.
pub async fn record_status(
    req: RecordRequest,
    store: &dyn StatusStore,
    notifier: &dyn Notifier,
) -> Result<serde_json::Value, ItemError> {
    match req {
        RecordRequest::Item {
            run_id,
            task,
            result,
            error,
            at,
        } => {
            let mut r = record(
                &run_id,
                task.source.clone(),
                task.dest.clone(),
                Status::Failed,
            );
            if let Some(t) = at
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            {
                r.version = t.timestamp_millis().max(0) as u64;
                r.ended_at = Some(t.with_timezone(&Utc));
            }
            r.source_digest = Some(task.source_digest.clone());
            match (result, error) {
                (Some(res), _) if res.dest_digest == task.source_digest => {
                    r.status = Status::Copied;
                    r.dest_digest = Some(res.dest_digest);
                    r.attempts = res.attempts;
                    r.bytes = res.bytes;
                }
                (Some(res), _) => {
                    r.dest_digest = Some(res.dest_digest.clone());
                    r.error = Some(ItemError::new(
                        ErrorClass::DigestMismatch,
                        format!(
                            "{} arrived as {}, the source is {}",
                            task.dest, res.dest_digest, task.source_digest
                        ),
                    ));
                }
                (None, Some(c)) => {
                    let class = ErrorClass::from_name(&c.error).unwrap_or(ErrorClass::Retryable);
                    let cause = c.cause.unwrap_or_default();
                    let message = if ErrorClass::from_name(&c.error).is_some() {
                        cause
                    } else {
                        format!("{}: {cause}", c.error)
                    };
                    let err = ItemError::new(class, message);
                    r.status = crate::images::sync::status_of(&err);
                    r.error = Some(err);
                }
                (None, None) => {
                    r.error = Some(ItemError::new(
                        ErrorClass::BadInput,
                        "record-status got an item with neither result nor error",
                    ))
                }
            }
            let applied = store.put_item(&r).await?;
            Ok(serde_json::json!({ "status": r.status.as_str(), "applied": applied }))
        }
        RecordRequest::Run { run_id, .. } => {
            let Some((mut run, items)) = store.get_run(Some(&run_id)).await? else {
                return Err(ItemError::new(
                    ErrorClass::NotFound,
                    format!("run {run_id:?} has no record"),
                ));
            };
            let count = |s: Status| items.iter().filter(|i| i.status == s).count() as u64;
            run.copied = count(Status::Copied);
            run.skipped = count(Status::Skipped);
            run.failed = count(Status::Failed) + count(Status::Planned);
            run.conflicts = count(Status::Conflict);
            run.bytes = items.iter().map(|i| i.bytes).sum();
            // A run ends once: a repeated step (a retry) counts nothing again.
            let first_end = run.ended_at.is_none();
            run.ended_at = Some(Utc::now());
            store.put_run(&run).await?;
            if first_end {
                use crate::aws::metrics::{IMAGES_COPIED, IMAGES_FAILED, IMAGES_SKIPPED, emit};
                emit(&[
                    (IMAGES_COPIED, run.copied),
                    (IMAGES_FAILED, run.failed),
                    (IMAGES_SKIPPED, run.skipped),
                ]);
            }
            // Publish first, then mark the run notified: a publish that fails leaves the run
            // unmarked, so the retried step publishes again (a rare duplicate, when the mark
            // itself fails or two attempts race, beats a lost alarm).
            let mut notified = false;
            if run.failed > 0 && !store.is_notified(&run_id).await? {
                let mut body = format!(
                    "transfer-hub run {run_id}: {} copied, {} in sync, {} failed.\n\nFailed images:\n",
                    run.copied, run.skipped, run.failed
                );
                for i in items
                    .iter()
                    .filter(|i| matches!(i.status, Status::Failed | Status::Planned))
                    .take(50)
                {
                    let why = i
                        .error
                        .as_ref()
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "did not finish".into());
                    body.push_str(&format!("- {} -> {}: {why}\n", i.source, i.dest));
                }
                if run.failed > 50 {
                    body.push_str(&format!(
                        "… and {} more (see the status table)\n",
                        run.failed - 50
                    ));
                }
                notifier
                    .publish(
                        &format!(
                            "transfer-hub: {} image(s) failed in run {run_id}",
                            run.failed
                        ),
                        &body,
                    )
                    .await?;
                store.claim_notification(&run_id).await?;
                notified = true;
            }
            let s = RunSummary {
                run_id,
                copied: run.copied,
                skipped: run.skipped,
                failed: run.failed,
                notified,
            };
            Ok(serde_json::to_value(s).expect("summary serializes"))
        }
    }
}
