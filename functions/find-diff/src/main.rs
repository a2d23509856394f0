//! `find-diff`: only the images whose destination digest differs. Input `Listed`, output
//! `Diff` (see hub_core::images::workflow). Env: as list-images, plus SCAN_ON_PUSH, KMS_KEY.
use hub_core::aws::functions::ImagesFn;
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let f = &ImagesFn::from_env().await?;
    lambda_runtime::run(service_fn(move |e: LambdaEvent<_>| f.diff(e.payload))).await
}
