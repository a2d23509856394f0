//! How a copy worker answers the state machine: heartbeats while it works, then success
//! with the digests or failure with the error class as the error name.

use crate::images::workflow::CopyResult;
use crate::retry::ItemError;
use async_trait::async_trait;

/// Reports on a Step Functions task token.
#[async_trait]
pub trait TaskReporter: Send + Sync {
    async fn heartbeat(&self, token: &str) -> Result<(), ItemError>;
    async fn success(&self, token: &str, result: &CopyResult) -> Result<(), ItemError>;
    async fn failure(&self, token: &str, error: &ItemError) -> Result<(), ItemError>;
}

/// Step Functions.
pub struct Sfn(pub aws_sdk_sfn::Client);

fn sfn_err<E>(what: &str, e: aws_sdk_sfn::error::SdkError<E>) -> ItemError
where
    E: std::error::Error + aws_sdk_sfn::error::ProvideErrorMetadata + 'static,
{
    crate::retry::aws_error(&format!("Step Functions {what}"), e)
}

#[async_trait]
impl TaskReporter for Sfn {
    async fn heartbeat(&self, token: &str) -> Result<(), ItemError> {
        self.0
            .send_task_heartbeat()
            .task_token(token)
            .send()
            .await
            .map_err(|e| sfn_err("SendTaskHeartbeat", e))?;
        Ok(())
    }
    async fn success(&self, token: &str, result: &CopyResult) -> Result<(), ItemError> {
        let output = serde_json::to_string(result).expect("result serializes");
        self.0
            .send_task_success()
            .task_token(token)
            .output(output)
            .send()
            .await
            .map_err(|e| sfn_err("SendTaskSuccess", e))?;
        Ok(())
    }
    async fn failure(&self, token: &str, error: &ItemError) -> Result<(), ItemError> {
        // The cause is capped at 32,768 characters by the API.
        let cause: String = error.message.chars().take(32_000).collect();
        self.0
            .send_task_failure()
            .task_token(token)
            .error(error.class.as_str())
            .cause(cause)
            .send()
            .await
            .map_err(|e| sfn_err("SendTaskFailure", e))?;
        Ok(())
    }
}
