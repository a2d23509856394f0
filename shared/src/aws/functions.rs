//! One struct per AWS function: `from_env` reads the configuration and builds the clients
//! once per container; `handle` runs one invocation through [`crate::images::suite`]. The binaries
//! in `functions/` are a few lines around these.

use crate::aws::ecs_runner::{EcsRunner, EcsSettings};
use crate::aws::notify::Sns;
use crate::aws::offload::S3Blobs;
use crate::config::{ConfigError, Env};
use crate::images::ecr::{self, Ecr, EcrRepos};
use crate::images::list_source::Ssm;
use crate::images::suite::{self, DiffEdges, ImagesConfig, ListEdges};
use crate::images::sync::Prepare;
use crate::images::workflow::{Diff, DispatchInput, ListRequest, Listed, RecordRequest};
use crate::retry::ItemError;
use crate::status::dynamodb::DynamoStore;

async fn sdk_config() -> aws_config::SdkConfig {
    crate::aws::sdk::load().await
}

/// Shared clients of `list-images` and `find-diff`.
pub struct ImagesFn {
    pub cfg: ImagesConfig,
    secrets: aws_sdk_secretsmanager::Client,
    ssm: Ssm,
    blobs: S3Blobs,
    store: DynamoStore,
    dynamodb: aws_sdk_dynamodb::Client,
    /// Whether the run holding a task's lock is still going.
    sfn: aws_sdk_sfn::Client,
}

impl ImagesFn {
    pub async fn from_env() -> Result<Self, ConfigError> {
        let cfg = ImagesConfig::from_env(Env::from_process())?;
        let aws = sdk_config().await;
        Ok(Self {
            secrets: aws_sdk_secretsmanager::Client::new(&aws),
            ssm: Ssm(aws_sdk_ssm::Client::new(&aws)),
            blobs: S3Blobs {
                client: aws_sdk_s3::Client::new(&aws),
                bucket: cfg.bucket.clone(),
            },
            store: DynamoStore::new(aws_sdk_dynamodb::Client::new(&aws), cfg.table.clone()),
            dynamodb: aws_sdk_dynamodb::Client::new(&aws),
            sfn: aws_sdk_sfn::Client::new(&aws),
            cfg,
        })
    }

    /// With explicit clients (tests point them at moto).
    pub fn with_clients(cfg: ImagesConfig, aws: &aws_config::SdkConfig) -> Self {
        Self {
            secrets: aws_sdk_secretsmanager::Client::new(aws),
            ssm: Ssm(aws_sdk_ssm::Client::new(aws)),
            blobs: S3Blobs {
                client: aws_sdk_s3::Client::new(aws),
                bucket: cfg.bucket.clone(),
            },
            store: DynamoStore::new(aws_sdk_dynamodb::Client::new(aws), cfg.table.clone()),
            dynamodb: aws_sdk_dynamodb::Client::new(aws),
            sfn: aws_sdk_sfn::Client::new(aws),
            cfg,
        }
    }

    /// The stack's configuration, or the one task `task` of the tasks table sets
    /// ([`ImagesConfig::for_task`]).
    async fn config_for(
        &self,
        task: Option<&str>,
    ) -> Result<std::borrow::Cow<'_, ImagesConfig>, ItemError> {
        use crate::retry::ErrorClass;
        let Some(name) = task else {
            return Ok(std::borrow::Cow::Borrowed(&self.cfg));
        };
        let Some(table) = &self.cfg.tasks_table else {
            return Err(ItemError::new(
                ErrorClass::BadInput,
                format!("the execution names task {name:?} but TASKS_TABLE is not set"),
            ));
        };
        match crate::aws::task_store::get_task(&self.dynamodb, table, name).await {
            Ok(Some(t)) => Ok(std::borrow::Cow::Owned(self.cfg.for_task(&t)?)),
            Ok(None) => Err(ItemError::new(
                ErrorClass::BadInput,
                format!("no task named {name:?} in the tasks table {table}"),
            )),
            Err(e) => Err(ItemError::new(ErrorClass::Retryable, e.to_string())),
        }
    }

    async fn registries(&self) -> Result<ecr::Registries, ItemError> {
        let hosts = [
            (self.cfg.source.host.clone(), self.cfg.source_secret.clone()),
            (self.cfg.dest.host.clone(), self.cfg.dest_secret.clone()),
        ];
        suite::registries_for(&hosts, Some(&self.secrets), Vec::new()).await
    }

    /// `list-images`.
    pub async fn list(&self, req: ListRequest) -> Result<Listed, ItemError> {
        let cfg = self.config_for(req.input.task.as_deref()).await?;
        // One run of a task at a time: a second one is recorded as refused and stops here.
        if let (Some(task), Some(table)) = (&req.input.task, &self.cfg.tasks_table) {
            let lock = crate::aws::run_lock::RunLock {
                dynamodb: &self.dynamodb,
                table,
            };
            let claim = lock
                .claim(&self.sfn, task, &req.run_id, req.execution.as_deref())
                .await?;
            if let crate::aws::run_lock::Claim::Busy(holder) = claim {
                let err = holder.refusal(task);
                tracing::warn!(task = %task, holder = %holder.run_id, "refused: the task has a run going");
                suite::record_refused_run(&req.run_id, task, &cfg, &err, &self.store).await?;
                return Err(err);
            }
        }
        let registry = self.registries().await?;
        let edges = ListEdges {
            params: &self.ssm,
            registry: &registry,
            blobs: &self.blobs,
            store: &self.store,
        };
        suite::list_images(req, &cfg, &edges).await
    }

    /// `find-diff`.
    pub async fn diff(&self, listed: Listed) -> Result<Diff, ItemError> {
        let cfg = self.config_for(listed.task.as_deref()).await?;
        let registry = self.registries().await?;
        let prepare = match ecr::parse_ecr_host(&cfg.dest.host) {
            Some(h) => {
                let keys = None; // the function's role creates repositories in its own account
                Some(EcrRepos {
                    ecr: Ecr::connect_with(h, keys).await,
                    settings: cfg.repo_settings.clone(),
                })
            }
            None => None,
        };
        let edges = DiffEdges {
            registry: &registry,
            blobs: &self.blobs,
            store: &self.store,
            prepare: prepare.as_ref().map(|p| p as &dyn Prepare),
        };
        suite::find_diff(listed, &cfg, &edges).await
    }
}

/// `dispatch-fargate`.
pub struct DispatchFn {
    runner: EcsRunner,
}

impl DispatchFn {
    /// `CLUSTER`, `TASK_DEFINITION`, `CONTAINER_NAME`, `SUBNETS`, `SECURITY_GROUPS`
    /// (comma-separated), `ASSIGN_PUBLIC_IP` (default false).
    pub async fn from_env() -> Result<Self, ConfigError> {
        let mut env = Env::from_process();
        let list = |v: String| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
        };
        let settings = EcsSettings {
            cluster: env.required("CLUSTER"),
            task_definition: env.required("TASK_DEFINITION"),
            container: env.required("CONTAINER_NAME"),
            subnets: list(env.required("SUBNETS")),
            security_groups: list(env.optional("SECURITY_GROUPS").unwrap_or_default()),
            assign_public_ip: env.parsed("ASSIGN_PUBLIC_IP", false, "true or false"),
        };
        env.finish()?;
        let aws = sdk_config().await;
        Ok(Self {
            runner: EcsRunner {
                client: aws_sdk_ecs::Client::new(&aws),
                settings,
            },
        })
    }

    /// Starts a copy task, or stops a timed-out one (`{"action": "stop", ...}`).
    pub async fn handle(&self, req: DispatchInput) -> Result<serde_json::Value, ItemError> {
        match req {
            DispatchInput::Start(r) => suite::dispatch_fargate(r, &self.runner).await,
            DispatchInput::Stop(r) => suite::stop_copy_tasks(r, &self.runner).await,
        }
    }
}

/// `record-status`.
pub struct RecordFn {
    store: DynamoStore,
    sns: Sns,
    /// `TASKS_TABLE` (optional): where a task's run gives its lock back.
    tasks_table: Option<String>,
    dynamodb: aws_sdk_dynamodb::Client,
}

impl RecordFn {
    /// `TABLE_NAME`, `TOPIC_ARN`.
    pub async fn from_env() -> Result<Self, ConfigError> {
        let mut env = Env::from_process();
        let table = env.required("TABLE_NAME");
        let topic = env.required("TOPIC_ARN");
        let tasks_table = env.optional("TASKS_TABLE");
        env.finish()?;
        let aws = sdk_config().await;
        Ok(Self::with_clients(table, topic, tasks_table, &aws))
    }

    /// With explicit clients (tests point them at moto).
    pub fn with_clients(
        table: String,
        topic: String,
        tasks_table: Option<String>,
        aws: &aws_config::SdkConfig,
    ) -> Self {
        Self {
            store: DynamoStore::new(aws_sdk_dynamodb::Client::new(aws), table),
            sns: Sns {
                client: aws_sdk_sns::Client::new(aws),
                topic_arn: topic,
            },
            tasks_table,
            dynamodb: aws_sdk_dynamodb::Client::new(aws),
        }
    }

    /// Records, and once a task's run is closed gives the task's run lock back.
    pub async fn handle(&self, req: RecordRequest) -> Result<serde_json::Value, ItemError> {
        let release = match (&req, &self.tasks_table) {
            (RecordRequest::Run { run_id, input }, Some(table)) => input
                .task
                .as_ref()
                .map(|t| (t.clone(), run_id.clone(), table.clone())),
            _ => None,
        };
        let out = suite::record_status(req, &self.store, &self.sns).await?;
        if let Some((task, run_id, table)) = release {
            crate::aws::run_lock::RunLock {
                dynamodb: &self.dynamodb,
                table: &table,
            }
            .release(&task, &run_id)
            .await?;
        }
        Ok(out)
    }
}

/// The object functions (`diff-objects`, `transfer-object`, `check-multipart`): one
/// struct, built once per container from `ObjectsConfig` plus `TABLE_NAME`,
/// `UPLOADS_TABLE` and `JOB_QUEUE_URL`.
pub struct ObjectsFn {
    cfg: crate::objects::suite::ObjectsConfig,
    src: crate::objects::bucket::Bucket,
    dst: crate::objects::bucket::Bucket,
    queue: crate::objects::jobs::JobQueue,
    store: DynamoStore,
    ledger: crate::objects::uploads::DynamoLedger,
    /// `TASKS_TABLE` (diff-objects): where a run's `{"task": NAME}` is read.
    tasks_table: Option<String>,
    dynamodb: aws_sdk_dynamodb::Client,
    tally: crate::objects::suite::Tally,
}

impl ObjectsFn {
    pub async fn from_env() -> Result<Self, ConfigError> {
        Self::from(Env::from_process(), sdk_config().await).await
    }

    /// From an explicit environment and SDK configuration (tests point it at moto).
    pub async fn from(mut env: Env, aws: aws_config::SdkConfig) -> Result<Self, ConfigError> {
        use crate::objects::bucket::{Bucket, CredentialSource, connect};
        let cfg = crate::objects::suite::ObjectsConfig::from_env(&mut env);
        let table = env.required("TABLE_NAME");
        let uploads = env.required("UPLOADS_TABLE");
        let queue = env.required("JOB_QUEUE_URL");
        let tasks_table = env.optional("TASKS_TABLE");
        env.finish()?;
        let secrets = aws_sdk_secretsmanager::Client::new(&aws);
        let mut problems = Vec::new();
        let mut side = async |ep: &crate::objects::bucket::Endpoint, what: &str| {
            // A side without a secret or profile acts as the function (its role): the
            // credentials of `aws`, not whatever the process environment holds.
            if ep.credentials == CredentialSource::Default {
                return Some(s3_client_as(&aws, ep));
            }
            match connect(ep, Some(&secrets)).await {
                Ok(c) => Some(c),
                Err(e) => {
                    problems.push(format!("{what}: {}", e.message));
                    None
                }
            }
        };
        let src = side(&cfg.source_endpoint, "source").await;
        let dst = side(&cfg.dest_endpoint, "destination").await;
        let (Some(src), Some(dst)) = (src, dst) else {
            return Err(ConfigError { problems });
        };
        Ok(Self {
            src: Bucket {
                client: src,
                url: cfg.source.clone(),
                requester_pays: cfg.requester_pays,
            },
            dst: Bucket {
                client: dst,
                url: cfg.dest.clone(),
                requester_pays: false,
            },
            queue: crate::objects::jobs::JobQueue {
                client: aws_sdk_sqs::Client::new(&aws),
                url: queue,
            },
            store: DynamoStore::new(aws_sdk_dynamodb::Client::new(&aws), table),
            ledger: crate::objects::uploads::DynamoLedger {
                client: aws_sdk_dynamodb::Client::new(&aws),
                table: uploads,
            },
            tasks_table,
            dynamodb: aws_sdk_dynamodb::Client::new(&aws),
            tally: Default::default(),
            cfg,
        })
    }

    fn edges(&self) -> crate::objects::suite::ObjectsEdges<'_> {
        crate::objects::suite::ObjectsEdges {
            cfg: &self.cfg,
            src: &self.src,
            dst: &self.dst,
            queue: &self.queue,
            store: &self.store,
            ledger: &self.ledger,
            task: None,
            tally: &self.tally,
        }
    }

    /// The objects task a diff round runs: the one the previous round carried, else the
    /// one the execution input names, read from the tasks table; `None` for the stack's.
    async fn task_for(
        &self,
        req: &crate::objects::suite::DiffRequest,
    ) -> Result<Option<crate::objects::suite::TaskScope>, ItemError> {
        use crate::retry::ErrorClass;
        if let Some(s) = &req.scope {
            return Ok(Some(s.clone()));
        }
        let Some(name) = req.task.as_deref() else {
            return Ok(None);
        };
        let Some(table) = &self.tasks_table else {
            return Err(ItemError::new(
                ErrorClass::BadInput,
                format!("the execution names task {name:?} but TASKS_TABLE is not set"),
            ));
        };
        match crate::aws::task_store::get_task(&self.dynamodb, table, name).await {
            Ok(Some(t)) => crate::objects::suite::TaskScope::of(&t).map(Some),
            Ok(None) => Err(ItemError::new(
                ErrorClass::BadInput,
                format!("no task named {name:?} in the tasks table {table}"),
            )),
            Err(e) => Err(ItemError::new(ErrorClass::Retryable, e.to_string())),
        }
    }

    /// `diff-objects`: one round, ending by [`round_end`] of the invocation's deadline
    /// (milliseconds since the epoch, 0 = none) or after `DIFF_ROUND_SECONDS`, whichever
    /// comes first.
    pub async fn diff(
        &self,
        req: crate::objects::suite::DiffRequest,
        deadline_ms: u64,
    ) -> Result<crate::objects::suite::DiffSummary, ItemError> {
        let by_config = self.cfg.diff_round.map(|d| std::time::Instant::now() + d);
        let stop_at = [round_end(deadline_ms), by_config]
            .into_iter()
            .flatten()
            .min();
        let task = self.task_for(&req).await?;
        let edges = self.edges();
        let scoped = edges.scoped(task.as_ref())?;
        crate::objects::suite::diff_objects(req, &edges.with(scoped.as_ref()), stop_at).await
    }

    /// `transfer-object`.
    pub async fn transfer(
        &self,
        ev: aws_lambda_events::event::sqs::SqsEvent,
    ) -> Result<aws_lambda_events::event::sqs::SqsBatchResponse, ItemError> {
        Ok(crate::objects::suite::transfer_batch(ev, &self.edges()).await)
    }

    /// `check-multipart` (the schedule's input is ignored).
    pub async fn check(
        &self,
        _input: serde_json::Value,
    ) -> Result<crate::objects::suite::CheckSummary, ItemError> {
        crate::objects::suite::check_multipart(&self.edges()).await
    }
}

/// `console`: the console's router (`crate::console`) over the tasks table, the status
/// table, the image state machine and the tasks' schedules, behind the HTTP API's
/// Cognito authorizer.
pub struct ConsoleFn;

impl ConsoleFn {
    /// `TASKS_TABLE`, `TABLE_NAME`, `IMAGES_STATE_MACHINE_ARN`, `OBJECTS_STATE_MACHINE_ARN`
    /// (optional: a stack without the objects half), `SCHEDULE_GROUP`, `SCHEDULER_ROLE_ARN`;
    /// the login ([`Self::login`]).
    pub async fn host_from_env() -> Result<crate::console::lambda::Host, ConfigError> {
        let aws = sdk_config().await;
        Self::host(Env::from_process(), &aws).await
    }

    /// The router and the login, from an explicit environment (tests point it at moto).
    pub async fn host(
        env: Env,
        aws: &aws_config::SdkConfig,
    ) -> Result<crate::console::lambda::Host, ConfigError> {
        let mut env = env;
        let login = Self::login(&mut env, aws).await;
        let router = Self::router(env, aws)?;
        Ok(crate::console::lambda::Host {
            router,
            login: login?.map(std::sync::Arc::new),
        })
    }

    /// The console's own login: `CONSOLE_TOKEN_ISSUER` (the user pool's issuer URL) with
    /// the app client from `CONSOLE_CLIENT_ID` or from the SSM parameter
    /// `CONSOLE_CLIENT_ID_PARAMETER` (a pool the stack creates: its client names the API's
    /// callback, so the function cannot name the client without a cycle);
    /// `CONSOLE_HOSTED_UI` (the hosted UI's base URL: the browser login) and
    /// `CONSOLE_JWKS_URL` (the keys, by default the issuer's) are optional. No issuer: only
    /// a JWT authorizer's claims are taken.
    async fn login(
        env: &mut Env,
        aws: &aws_config::SdkConfig,
    ) -> Result<Option<crate::console::cognito::Cognito>, ConfigError> {
        let Some(issuer) = env.optional("CONSOLE_TOKEN_ISSUER") else {
            return Ok(None);
        };
        let hosted_ui = env.optional("CONSOLE_HOSTED_UI");
        let jwks = env.optional("CONSOLE_JWKS_URL");
        let client_id = match (
            env.optional("CONSOLE_CLIENT_ID"),
            env.optional("CONSOLE_CLIENT_ID_PARAMETER"),
        ) {
            (Some(id), _) => id,
            (None, Some(name)) => {
                let got = aws_sdk_ssm::Client::new(aws)
                    .get_parameter()
                    .name(&name)
                    .send()
                    .await;
                match got {
                    Ok(o) => o
                        .parameter()
                        .and_then(|p| p.value())
                        .unwrap_or_default()
                        .to_string(),
                    Err(e) => {
                        return Err(ConfigError {
                            problems: vec![format!(
                                "CONSOLE_CLIENT_ID_PARAMETER={name:?}: {}",
                                crate::retry::aws_error("GetParameter", e).message
                            )],
                        });
                    }
                }
            }
            (None, None) => {
                return Err(ConfigError {
                    problems: vec![
                        "CONSOLE_TOKEN_ISSUER is set: CONSOLE_CLIENT_ID or CONSOLE_CLIENT_ID_PARAMETER must name the app client".into(),
                    ],
                });
            }
        };
        Ok(Some(crate::console::cognito::Cognito::new(
            issuer, client_id, hosted_ui, jwks,
        )))
    }

    /// From an explicit environment and SDK configuration (tests point it at moto).
    pub fn router(mut env: Env, aws: &aws_config::SdkConfig) -> Result<axum::Router, ConfigError> {
        use crate::aws::console::{ScheduledTasks, Schedules, SfnRunner};
        use std::sync::Arc;
        let tasks = env.required("TASKS_TABLE");
        let status = env.required("TABLE_NAME");
        let machine = env.required("IMAGES_STATE_MACHINE_ARN");
        let objects_machine = env.optional("OBJECTS_STATE_MACHINE_ARN");
        let group = env.required("SCHEDULE_GROUP");
        let role = env.required("SCHEDULER_ROLE_ARN");
        env.finish()?;
        let store = ScheduledTasks {
            inner: crate::aws::task_store::DynamoTaskStore::new(
                aws_sdk_dynamodb::Client::new(aws),
                tasks,
                status,
            ),
            schedules: Schedules {
                client: aws_sdk_scheduler::Client::new(aws),
                group,
                role_arn: role,
                images_machine: machine.clone(),
                objects_machine: objects_machine.clone(),
            },
        };
        Ok(crate::console::router(crate::console::Console {
            tasks: Arc::new(store),
            runner: Arc::new(SfnRunner::new(
                aws_sdk_sfn::Client::new(aws),
                machine,
                objects_machine,
            )),
            auth: Arc::new(crate::console::auth::Auth::authorizer()),
        }))
    }
}

/// The S3 client of a side that uses the function's own credentials (`aws`), in the side's
/// region and at its endpoint (path-style there, as [`crate::objects::bucket::connect`] does).
fn s3_client_as(
    aws: &aws_config::SdkConfig,
    ep: &crate::objects::bucket::Endpoint,
) -> aws_sdk_s3::Client {
    let mut b = aws_sdk_s3::config::Builder::from(aws);
    if let Some(r) = &ep.region {
        b = b.region(aws_config::Region::new(r.clone()));
    }
    if let Some(url) = &ep.url {
        b = b.endpoint_url(url).force_path_style(true);
    }
    if aws.region().is_none() && ep.region.is_none() {
        b = b.region(aws_config::Region::new("us-east-1"));
    }
    aws_sdk_s3::Client::from_conf(b.build())
}

/// When a `diff-objects` round stops deciding: [`DIFF_ROUND_MARGIN`] before the
/// invocation's deadline (Lambda's context gives it in milliseconds since the epoch; 0 =
/// none known, the round runs to the end).
///
/// [`DIFF_ROUND_MARGIN`]: crate::objects::suite::DIFF_ROUND_MARGIN
pub fn round_end(deadline_ms: u64) -> Option<std::time::Instant> {
    if deadline_ms == 0 {
        return None;
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let left = std::time::Duration::from_millis(deadline_ms.saturating_sub(now_ms));
    Some(std::time::Instant::now() + left.saturating_sub(crate::objects::suite::DIFF_ROUND_MARGIN))
}

#[cfg(test)]
mod tests {
    use super::round_end;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    #[test]
    fn a_round_ends_a_margin_before_the_lambda_deadline() {
        assert_eq!(round_end(0), None, "no deadline known: run to the end");
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let end = round_end(now_ms + 15 * 60 * 1000).unwrap();
        let left = end.saturating_duration_since(Instant::now());
        assert!(
            left > Duration::from_secs(13 * 60) && left <= Duration::from_secs(14 * 60),
            "{left:?}"
        );
        // A deadline already past (or within the margin) ends the round at once.
        assert!(round_end(now_ms + 1000).unwrap() <= Instant::now());
    }
}
