//! `console`: the console's router (`hub_core::console`) through `lambda_http`, with its own
//! Cognito login (hosted UI, ID tokens checked against the pool's keys). Env: TASKS_TABLE,
//! TABLE_NAME, IMAGES_STATE_MACHINE_ARN, SCHEDULE_GROUP, SCHEDULER_ROLE_ARN,
//! CONSOLE_TOKEN_ISSUER, CONSOLE_CLIENT_ID or CONSOLE_CLIENT_ID_PARAMETER, CONSOLE_HOSTED_UI.
use hub_core::aws::functions::ConsoleFn;
use hub_core::console::lambda::handle;
use lambda_http::{Request, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    lambda_http::tracing::init_default_subscriber();
    let host = ConsoleFn::host_from_env().await?;
    lambda_http::run(service_fn(move |req: Request| handle(host.clone(), req))).await
}
