//! The copy worker (one Fargate task per image): fetch credentials, write the private
//! auth file, copy with skopeo, verify the digest, heartbeat meanwhile, and answer the
//! state machine on the task token. Credentials come from Secrets Manager and ECR, never
//! from the task's overrides, and never leave the process but through the 0600 auth file.
//! When ECS stops the task (SIGTERM, then SIGKILL after the container's `stopTimeout`),
//! [`run_until`] kills and reaps skopeo, removes the auth file and reports the copy failed
//! as `Retryable` before the worker exits.

use crate::config::{ConfigError, Env};
use crate::images::copy::Skopeo;
use crate::images::hosts::HostRules;
use crate::images::registry::{Location, Registry};
use crate::images::suite::registries_for;
use crate::images::task_report::TaskReporter;
use crate::images::workflow::{CopyResult, CopyTask};
use crate::interrupt::{Stop, interrupted};
use crate::retry::{ErrorClass, ItemError, RetryPolicy, with_retries};
use std::time::Duration;

/// The worker's settings: the task from the overrides, the secrets from the task definition.
#[derive(Clone)]
pub struct WorkerConfig {
    /// `TASK_TOKEN`.
    pub token: String,
    /// `RUN_ID`.
    pub run_id: String,
    /// `SOURCE`, `DEST`, `SOURCE_DIGEST`.
    pub task: CopyTask,
    /// `SOURCE_SECRET`, `DEST_SECRET`: Secrets Manager names (optional).
    pub source_secret: Option<String>,
    pub dest_secret: Option<String>,
    /// `SOURCE_REGISTRY`, `DEST_REGISTRY` (`REGISTRY[/PREFIX]`, as the functions get them):
    /// the registries the secrets belong to, and `EXTRA_SOURCE_REGISTRIES`. Required with a
    /// secret; when set, a task naming another host is refused and no secret is used.
    pub rules: Option<HostRules>,
    /// `RETRIES` (default 3), `ATTEMPT_TIMEOUT_SECS` (default 1800).
    pub retry: RetryPolicy,
    /// `HEARTBEAT_SECS` (default 60; the state's HeartbeatSeconds must be larger).
    pub heartbeat: Duration,
    /// `INSECURE_REGISTRIES`: comma-separated HOST:PORT spoken to over plain HTTP.
    pub insecure: Vec<String>,
}

impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("run_id", &self.run_id)
            .field("task", &self.task)
            .field("token", &"…")
            .finish()
    }
}

impl WorkerConfig {
    pub fn from_env(mut env: Env) -> Result<Self, ConfigError> {
        let token = env.required("TASK_TOKEN");
        let run_id = env.required("RUN_ID");
        let source = env.required("SOURCE");
        let dest = env.required("DEST");
        let source_digest = env.required("SOURCE_DIGEST");
        let retries = env.parsed("RETRIES", 3u32, "a number of retries");
        let timeout = env.parsed("ATTEMPT_TIMEOUT_SECS", 1800u64, "a number of seconds");
        let heartbeat = env.parsed("HEARTBEAT_SECS", 60u64, "a number of seconds");
        let insecure = env
            .optional("INSECURE_REGISTRIES")
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let source_secret = env.optional("SOURCE_SECRET");
        let dest_secret = env.optional("DEST_SECRET");
        let registry = |name: &str, secret: &Option<String>, env: &mut Env| {
            let v = env.optional(name);
            if v.is_none() && secret.is_some() {
                let s = name.replace("REGISTRY", "SECRET");
                env.problem(format!(
                    "{s} is set but {name} is not: a secret is used only for the registry it belongs to, so name it (REGISTRY[/PREFIX])"
                ));
            }
            v.and_then(|v| match Location::parse(&v) {
                Ok(l) => Some(l.host),
                Err(e) => {
                    env.problem(format!("{name}: {e}"));
                    None
                }
            })
        };
        let source_registry = registry("SOURCE_REGISTRY", &source_secret, &mut env);
        let dest_registry = registry("DEST_REGISTRY", &dest_secret, &mut env);
        let extra_sources = match crate::images::hosts::parse_extra_sources(
            &env.optional("EXTRA_SOURCE_REGISTRIES").unwrap_or_default(),
        ) {
            Ok(v) => v,
            Err(e) => {
                env.problem(e);
                Vec::new()
            }
        };
        let rules = match (source_registry, dest_registry) {
            (Some(source), Some(dest)) => Some(HostRules {
                source,
                dest,
                extra_sources,
            }),
            (None, None) => None,
            (s, _) => {
                let missing = if s.is_none() {
                    "SOURCE_REGISTRY"
                } else {
                    "DEST_REGISTRY"
                };
                env.problem(format!(
                    "{missing} is not set: SOURCE_REGISTRY and DEST_REGISTRY go together"
                ));
                None
            }
        };
        env.finish()?;
        Ok(Self {
            token,
            run_id,
            task: CopyTask {
                source,
                dest,
                source_digest,
            },
            source_secret,
            dest_secret,
            rules,
            retry: RetryPolicy {
                retries,
                base_delay: Duration::from_secs(2),
                max_delay: Duration::from_secs(60),
                attempt_timeout: Duration::from_secs(timeout),
            },
            heartbeat: Duration::from_secs(heartbeat.max(1)),
            insecure,
        })
    }
}

/// Copies and verifies one image. Already there with the right digest → no copy.
pub async fn copy_and_verify(
    cfg: &WorkerConfig,
    secrets: Option<&aws_sdk_secretsmanager::Client>,
    stop: &Stop,
) -> Result<CopyResult, ItemError> {
    let (src, dst, digest) = cfg.task.parts()?;
    // Each secret goes only to the registry it was configured for: a task naming another
    // host is refused before anything is fetched or sent (an allowed extra source is read
    // without a login).
    let (source_secret, dest_secret) = match &cfg.rules {
        Some(rules) => {
            rules.check_source(&format!("the task's source {}", cfg.task.source), &src.host)?;
            rules.check_dest(
                &format!("the task's destination {}", cfg.task.dest),
                &dst.host,
            )?;
            (
                cfg.source_secret
                    .clone()
                    .filter(|_| rules.is_source(&src.host)),
                cfg.dest_secret.clone(),
            )
        }
        None => (None, None), // no secret is configured without its registry
    };
    let registries = registries_for(
        &[
            (src.host.clone(), source_secret),
            (dst.host.clone(), dest_secret),
        ],
        secrets,
        cfg.insecure.clone(),
    )
    .await?;
    let http = &registries.http;
    let dest_ref = dst.reference();
    let result = |attempts: u32, bytes: u64| CopyResult {
        source: cfg.task.source.clone(),
        dest: cfg.task.dest.clone(),
        source_digest: digest.to_string(),
        dest_digest: digest.to_string(),
        attempts,
        bytes,
    };
    if let Ok(Some(info)) = http.head_manifest(&dst.host, &dst.repo, &dest_ref).await {
        if info.digest == digest {
            tracing::info!(dest = %cfg.task.dest, "already at the destination with the source digest");
            return Ok(result(0, 0));
        }
    }
    // On a stop the running skopeo is killed and reaped, and no retry starts.
    let skopeo = Skopeo::new(http, &[src.host.clone(), dst.host.clone()])
        .map_err(|e| ItemError::new(ErrorClass::Retryable, e.to_string()))?
        .with_stop(stop.clone());
    // Copy exactly the digest find-diff planned, even if the tag has moved since.
    let pinned = crate::images::plan::ImageName {
        digest: Some(digest.clone()),
        ..src.clone()
    };
    let (copied, attempts) = crate::images::copy::copy_with_retries(
        &skopeo,
        &registries,
        &cfg.retry,
        stop,
        &pinned,
        &dst,
    )
    .await;
    // The auth file goes now, not at the end of the task.
    drop(skopeo);
    copied?;
    let (seen, _) = with_retries(&cfg.retry, |_| {
        http.head_manifest(&dst.host, &dst.repo, &dest_ref)
    })
    .await;
    match seen? {
        Some(info) if info.digest == digest => {
            let bytes = http
                .image_size(&src.host, &src.repo, &digest)
                .await
                .unwrap_or(0);
            Ok(result(attempts, bytes))
        }
        Some(info) => Err(ItemError::new(
            ErrorClass::DigestMismatch,
            format!(
                "{} has digest {} after the copy; the source has {digest}",
                cfg.task.dest, info.digest
            ),
        )),
        None => Err(ItemError::new(
            ErrorClass::DigestMismatch,
            format!(
                "{} is missing after the copy reported success",
                cfg.task.dest
            ),
        )),
    }
}

/// The whole task: heartbeats while copying, then success or failure on the token.
/// Returns the outcome that was reported (inner), or the error that kept it from being
/// reported (outer).
pub async fn run(
    cfg: &WorkerConfig,
    secrets: Option<&aws_sdk_secretsmanager::Client>,
    reporter: &dyn TaskReporter,
) -> Result<Result<CopyResult, ItemError>, ItemError> {
    run_until(cfg, secrets, reporter, &Stop::never()).await
}

/// [`run`] that ends early when `stop` fires (ECS stopping the task sends SIGTERM): the
/// running skopeo is killed and reaped (the copy waits for that; a lookup or secret fetch
/// in flight is abandoned), the temp auth file is removed, and the copy is reported
/// failed as `Retryable` ("interrupted by SIGTERM …"), so the state machine's retry
/// starts another task rather than waiting for the heartbeat timeout.
pub async fn run_until(
    cfg: &WorkerConfig,
    secrets: Option<&aws_sdk_secretsmanager::Client>,
    reporter: &dyn TaskReporter,
    stop: &Stop,
) -> Result<Result<CopyResult, ItemError>, ItemError> {
    let mut work = Box::pin(copy_and_verify(cfg, secrets, stop));
    let mut ticker = tokio::time::interval(cfg.heartbeat);
    ticker.tick().await;
    let outcome = loop {
        tokio::select! {
            // The work first: a copy that hears the stop itself ends with its own error.
            biased;
            r = &mut work => break r,
            why = stop.stopped() => break Err(interrupted(why)),
            _ = ticker.tick() => {
                if let Err(e) = reporter.heartbeat(&cfg.token).await {
                    tracing::warn!(error = %e, "heartbeat failed");
                }
            }
        }
    };
    // Dropping what is left of the work kills a skopeo still running (kill on drop) and
    // removes the temp auth file, before the outcome is reported.
    drop(work);
    match &outcome {
        Ok(r) => {
            reporter.success(&cfg.token, r).await?;
            tracing::info!(source = %r.source, dest = %r.dest, digest = %r.dest_digest, attempts = r.attempts, "reported success");
        }
        Err(e) => {
            tracing::error!(class = %e.class, error = %e.message, source = %cfg.task.source, "copy failed");
            reporter.failure(&cfg.token, e).await?;
            tracing::info!(class = %e.class, "reported failure");
        }
    }
    Ok(outcome)
}
