//! `list-images`: the selection (SSM list, execution input, or every repository) expanded
//! into images. Input `ListRequest`, output `Listed` (see hub_core::images::workflow).
//! Env: SOURCE_REGISTRY, DEST_REGISTRY, SELECT_TYPE, LIST_PARAMETER, TABLE_NAME,
//! PAYLOAD_BUCKET, SOURCE_SECRET, DEST_SECRET.
use hub_core::aws::functions::ImagesFn;
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let f = &ImagesFn::from_env().await?;
    lambda_runtime::run(service_fn(move |e: LambdaEvent<_>| f.list(e.payload))).await
}
