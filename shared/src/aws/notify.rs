//! Telling people about failed runs: one message per run, never one per image.

use crate::retry::ItemError;
use async_trait::async_trait;

/// Sends a message.
#[async_trait]
pub trait Notifier: Send + Sync {
    async fn publish(&self, subject: &str, body: &str) -> Result<(), ItemError>;
}

/// An SNS topic.
pub struct Sns {
    pub client: aws_sdk_sns::Client,
    pub topic_arn: String,
}

#[async_trait]
impl Notifier for Sns {
    async fn publish(&self, subject: &str, body: &str) -> Result<(), ItemError> {
        // SNS subjects are at most 100 characters.
        let subject: String = subject.chars().take(100).collect();
        self.client
            .publish()
            .topic_arn(&self.topic_arn)
            .subject(subject)
            .message(body)
            .send()
            .await
            .map_err(|e| crate::retry::aws_error("SNS Publish", e))?;
        Ok(())
    }
}
