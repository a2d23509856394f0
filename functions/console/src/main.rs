//! `console`: the console's router (`hub_core::console`) through `lambda_http`, behind an
//! HTTP API whose Cognito JWT authorizer is the login. Env: TASKS_TABLE, TABLE_NAME,
//! IMAGES_STATE_MACHINE_ARN, SCHEDULE_GROUP, SCHEDULER_ROLE_ARN.
use hub_core::aws::functions::ConsoleFn;
use hub_core::console::lambda::handle;
use lambda_http::{Request, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    lambda_http::tracing::init_default_subscriber();
    let router = ConsoleFn::router_from_env().await?;
    lambda_http::run(service_fn(move |req: Request| handle(router.clone(), req))).await
}
