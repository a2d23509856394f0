//! `dispatch-fargate`: one ECS RunTask (Fargate) per image with the task token, and ECS
//! StopTask for the tasks of a copy that timed out. Input `DispatchInput`. Env: CLUSTER, TASK_DEFINITION, CONTAINER_NAME, SUBNETS,
//! SECURITY_GROUPS, ASSIGN_PUBLIC_IP.
use hub_core::aws::functions::DispatchFn;
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let f = &DispatchFn::from_env().await?;
    lambda_runtime::run(service_fn(move |e: LambdaEvent<_>| f.handle(e.payload))).await
}
