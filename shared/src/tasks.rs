//! Running one copy task: [`TaskRunner`] starts a worker for one image with the Step
//! Functions task token; [`EcsRunner`] does it with ECS `RunTask` on Fargate. The overrides
//! carry the image and the token, never a credential: the worker fetches those itself.

use crate::retry::{ErrorClass, ItemError};
use crate::workflow::DispatchRequest;
use async_trait::async_trait;
use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, ContainerOverride, KeyValuePair, LaunchType,
    NetworkConfiguration, TaskOverride,
};

/// Starts a copy worker; returns the task's id.
#[async_trait]
pub trait TaskRunner: Send + Sync {
    async fn start(&self, req: &DispatchRequest) -> Result<String, ItemError>;
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
            .started_by(format!(
                "transfer-hub-{}",
                req.run_id.chars().take(24).collect::<String>()
            ))
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
}
