//! `record-status`: one image's final result, or the run's summary (and one SNS message
//! when anything failed). Input `RecordRequest`. Env: TABLE_NAME, TOPIC_ARN.
use hub_core::aws::functions::RecordFn;
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let f = &RecordFn::from_env().await?;
    lambda_runtime::run(service_fn(move |e: LambdaEvent<_>| f.handle(e.payload))).await
}
