//! The Fargate copy worker: one image, then `SendTaskSuccess`/`SendTaskFailure`.
//! Env: TASK_TOKEN, RUN_ID, SOURCE, DEST, SOURCE_DIGEST (overrides); SOURCE_SECRET,
//! DEST_SECRET with the registries they belong to (SOURCE_REGISTRY, DEST_REGISTRY,
//! EXTRA_SOURCE_REGISTRIES), RETRIES, HEARTBEAT_SECS (task definition). Exit 0 when the outcome was
//! reported (even a failed copy), 1 when it could not be. SIGTERM (ECS stopping the task)
//! or SIGINT kills the copy, removes the auth file and reports the copy failed (`Retryable`).
use hub_core::config::Env;
use hub_core::images::task_report::Sfn;
use hub_core::images::worker::{WorkerConfig, run_until};
use hub_core::interrupt;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .init();
    // Listening from the start: a SIGTERM before the copy is reported all the same.
    let (handle, stop) = interrupt::channel();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let why = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::warn!(signal = why, "stopping the copy");
        handle.stop(why);
    });
    let cfg = WorkerConfig::from_env(Env::from_process())?;
    let aws = hub_core::aws::sdk::load().await;
    let secrets = aws_sdk_secretsmanager::Client::new(&aws);
    let sfn = Sfn(aws_sdk_sfn::Client::new(&aws));
    // A failed copy was reported to the state machine: the task itself succeeded.
    let _reported = run_until(&cfg, Some(&secrets), &sfn, &stop)
        .await
        .map_err(|e| anyhow::anyhow!("could not report the outcome: {e}"))?;
    Ok(())
}
