//! The Fargate copy worker: one image, then `SendTaskSuccess`/`SendTaskFailure`.
//! Env: TASK_TOKEN, RUN_ID, SOURCE, DEST, SOURCE_DIGEST (overrides); SOURCE_SECRET,
//! DEST_SECRET with the registries they belong to (SOURCE_REGISTRY, DEST_REGISTRY,
//! EXTRA_SOURCE_REGISTRIES), RETRIES, HEARTBEAT_SECS (task definition). Exit 0 when the outcome was
//! reported (even a failed copy), 1 when it could not be.
use hub_core::config::Env;
use hub_core::task_report::Sfn;
use hub_core::worker::{WorkerConfig, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .init();
    let cfg = WorkerConfig::from_env(Env::from_process())?;
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let secrets = aws_sdk_secretsmanager::Client::new(&aws);
    // A failed copy was reported to the state machine: the task itself succeeded.
    let _reported = run(&cfg, Some(&secrets), &Sfn(aws_sdk_sfn::Client::new(&aws)))
        .await
        .map_err(|e| anyhow::anyhow!("could not report the outcome: {e}"))?;
    Ok(())
}
