//! `check-multipart`: completes uploads whose parts are all done, re-plans stuck ones and
//! aborts orphans. Run every minute by a schedule. Env: as diff-objects.
use hub_core::aws::functions::ObjectsFn;
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let f = &ObjectsFn::from_env().await?;
    lambda_runtime::run(service_fn(move |e: LambdaEvent<_>| f.check(e.payload))).await
}
