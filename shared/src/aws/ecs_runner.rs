//! Running one copy task: [`TaskRunner`] starts a worker for one image with the Step
//! Functions task token; [`EcsRunner`] does it with ECS `RunTask` on Fargate. The overrides
//! carry the image and the token, never a credential: the worker fetches those itself.

use crate::images::workflow::{CopyTask, DispatchRequest};
use crate::retry::{ErrorClass, ItemError};
use async_trait::async_trait;
use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, ContainerOverride, KeyValuePair, LaunchType,
    NetworkConfiguration, TaskOverride,
};

/// Starts a copy worker; returns the task's id.
#[async_trait]
pub trait TaskRunner: Send + Sync {
    async fn start(&self, req: &DispatchRequest) -> Result<String, ItemError>;
    /// Stops the workers still running for this image of this run; returns how many.
    async fn stop(&self, run_id: &str, task: &CopyTask) -> Result<usize, ItemError>;
}

/// The `startedBy` of an image's copy tasks: one per run and destination (ECS allows 36
/// characters), so a timed-out copy's task can be found and stopped.
pub fn started_by(run_id: &str, task: &CopyTask) -> String {
    use sha2::{Digest as _, Sha256};
    let h = Sha256::digest(format!("{run_id}\n{}", task.dest).as_bytes());
    format!("th-{}", &hex::encode(h)[..32])
}

/// Where and how Fargate tasks run.
#[derive(Debug, Clone)]
pub struct EcsSettings {
    pub cluster: String,
    pub task_definition: String,
    pub container: String,
    pub subnets: Vec<String>,
    pub security_groups: Vec<String>,
    pub assign_public_ip: bool,
}

/// ECS RunTask on Fargate.
pub struct EcsRunner {
    pub client: aws_sdk_ecs::Client,
    pub settings: EcsSettings,
}

/// The environment a worker gets for one request (what the overrides carry).
pub fn worker_environment(req: &DispatchRequest) -> Vec<(&'static str, String)> {
    vec![
        ("TASK_TOKEN", req.task_token.clone()),
        ("RUN_ID", req.run_id.clone()),
        ("SOURCE", req.task.source.clone()),
        ("DEST", req.task.dest.clone()),
        ("SOURCE_DIGEST", req.task.source_digest.clone()),
    ]
}

#[async_trait]
impl TaskRunner for EcsRunner {
    async fn start(&self, req: &DispatchRequest) -> Result<String, ItemError> {
        let s = &self.settings;
        let env = worker_environment(req)
            .into_iter()
            .map(|(k, v)| KeyValuePair::builder().name(k).value(v).build())
            .collect();
        let vpc = AwsVpcConfiguration::builder()
            .set_subnets(Some(s.subnets.clone()))
            .set_security_groups(Some(s.security_groups.clone()))
            .assign_public_ip(if s.assign_public_ip {
                AssignPublicIp::Enabled
            } else {
                AssignPublicIp::Disabled
            })
            .build()
            .map_err(|e| {
                ItemError::new(ErrorClass::BadInput, format!("ECS network settings: {e}"))
            })?;
        let out = self
            .client
            .run_task()
            .cluster(&s.cluster)
            .task_definition(&s.task_definition)
            .launch_type(LaunchType::Fargate)
            .count(1)
            .started_by(started_by(&req.run_id, &req.task))
            .network_configuration(
                NetworkConfiguration::builder()
                    .awsvpc_configuration(vpc)
                    .build(),
            )
            .overrides(
                TaskOverride::builder()
                    .container_overrides(
                        ContainerOverride::builder()
                            .name(&s.container)
                            .set_environment(Some(env))
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .map_err(|e| crate::retry::aws_error("ECS RunTask", e))?;
        if let Some(f) = out.failures().first() {
            return Err(ItemError::new(
                ErrorClass::Retryable,
                format!(
                    "ECS RunTask failed: {} {}",
                    f.reason().unwrap_or("unknown reason"),
                    f.detail().unwrap_or("")
                ),
            ));
        }
        out.tasks()
            .first()
            .and_then(|t| t.task_arn())
            .map(str::to_string)
            .ok_or_else(|| ItemError::new(ErrorClass::Retryable, "ECS RunTask started no task"))
    }

    async fn stop(&self, run_id: &str, task: &CopyTask) -> Result<usize, ItemError> {
        let s = &self.settings;
        let mut arns = Vec::new();
        let mut next = None;
        loop {
            let out = self
                .client
                .list_tasks()
                .cluster(&s.cluster)
                .started_by(started_by(run_id, task))
                .desired_status(aws_sdk_ecs::types::DesiredStatus::Running)
                .set_next_token(next)
                .send()
                .await
                .map_err(|e| crate::retry::aws_error("ECS ListTasks", e))?;
            arns.extend(out.task_arns().iter().cloned());
            next = out.next_token().map(str::to_string);
            if next.is_none() {
                break;
            }
        }
        for arn in &arns {
            self.client
                .stop_task()
                .cluster(&s.cluster)
                .task(arn)
                .reason("transfer-hub: the copy timed out (no heartbeat); a retry starts another")
                .send()
                .await
                .map_err(|e| crate::retry::aws_error("ECS StopTask", e))?;
        }
        Ok(arns.len())
    }
}
