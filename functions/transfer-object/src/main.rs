//! `transfer-object`: an SQS batch of object jobs, part jobs and S3 event notifications;
//! failed messages are returned in `batchItemFailures` (ReportBatchItemFailures).
//! Env: as diff-objects.
use hub_core::aws::functions::ObjectsFn;
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let f = &ObjectsFn::from_env().await?;
    lambda_runtime::run(service_fn(move |e: LambdaEvent<_>| f.transfer(e.payload))).await
}
