//! `diff-objects`: streams the source and destination listings through the merge and
//! queues one job per object to copy (SQS, ten per call). Input `{}` for a new run, or the
//! previous round's output (it carries `next` when a round ran short of time).
//! Env: see hub_core::objects::suite::ObjectsConfig, plus TABLE_NAME, UPLOADS_TABLE, JOB_QUEUE_URL.
use hub_core::aws::functions::ObjectsFn;
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let f = &ObjectsFn::from_env().await?;
    lambda_runtime::run(service_fn(move |e: LambdaEvent<_>| {
        f.diff(e.payload, e.context.deadline)
    }))
    .await
}
