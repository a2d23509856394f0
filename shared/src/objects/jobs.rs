//! The job messages of the AWS object suite, and the queue they travel on. A job names
//! an object (key, size, ETag) or one part of an open upload; it never carries
//! credentials. Unknown or incomplete messages are refused with the missing field named.

use super::diff::Entry;
use super::multipart::Part;
use crate::retry::{ErrorClass, ItemError};
use crate::tasks::TaskScope;
use serde::{Deserialize, Serialize};

/// One unit of work on the job queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Job {
    /// Copy one object (or, when it is big, open its upload and queue its parts).
    Object {
        run: String,
        key: String,
        size: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        etag: Option<String>,
        /// The objects task of the run (its prefixes and options; no credential).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task: Option<Box<TaskScope>>,
    },
    /// Copy one part of an open upload.
    Part {
        run: String,
        key: String,
        size: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        etag: Option<String>,
        upload_id: String,
        number: u32,
        start: u64,
        len: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task: Option<Box<TaskScope>>,
    },
}

impl Job {
    pub fn object(run: &str, e: &Entry, task: Option<&TaskScope>) -> Self {
        Job::Object {
            run: run.to_string(),
            key: e.key.clone(),
            size: e.size,
            etag: e.etag.clone(),
            task: task.cloned().map(Box::new),
        }
    }
    /// The objects task the job belongs to (`None`: the stack's configuration).
    pub fn task(&self) -> Option<&TaskScope> {
        let (Job::Object { task, .. } | Job::Part { task, .. }) = self;
        task.as_deref()
    }
    pub fn entry(&self) -> Entry {
        let (Job::Object {
            key, size, etag, ..
        }
        | Job::Part {
            key, size, etag, ..
        }) = self;
        Entry {
            archived: false,
            key: key.clone(),
            size: *size,
            etag: etag.clone(),
            checksum: None,
            modified: None,
        }
    }
    pub fn run(&self) -> &str {
        let (Job::Object { run, .. } | Job::Part { run, .. }) = self;
        run
    }
    pub fn part(&self) -> Option<Part> {
        match self {
            Job::Part {
                number, start, len, ..
            } => Some(Part {
                number: *number,
                start: *start,
                len: *len,
            }),
            Job::Object { .. } => None,
        }
    }
    /// Parses a message body; the error names what is wrong.
    pub fn parse(body: &str) -> Result<Self, ItemError> {
        serde_json::from_str(body).map_err(|e| {
            ItemError::new(
                ErrorClass::BadInput,
                format!(
                    "job message is not valid: {e}; expected {{\"kind\":\"object\",\"run\",\"key\",\"size\"[,\"etag\"]}} or a part job with \"upload_id\",\"number\",\"start\",\"len\""
                ),
            )
        })
    }
}

/// Sends jobs to an SQS queue, ten per `SendMessageBatch`, resending the entries SQS
/// refused (a few times) so none is lost silently.
pub struct JobQueue {
    pub client: aws_sdk_sqs::Client,
    pub url: String,
}

impl JobQueue {
    /// Makes a message that failed visible again after `after` instead of the queue's
    /// whole visibility timeout (90 min), so a part job whose try failed comes back soon.
    pub async fn retry_after(
        &self,
        receipt_handle: &str,
        after: std::time::Duration,
    ) -> Result<(), ItemError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(after.as_secs().min(43_200) as i32)
            .send()
            .await
            .map_err(|e| crate::retry::aws_error("SQS ChangeMessageVisibility", e))?;
        Ok(())
    }

    /// Jobs in the queue now: waiting and in flight (SQS's approximate counts).
    pub async fn depth(&self) -> Result<u64, ItemError> {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| crate::retry::aws_error("SQS GetQueueAttributes", e))?;
        let attrs = out.attributes();
        let n = |a: A| {
            attrs
                .and_then(|m| m.get(&a))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(n(A::ApproximateNumberOfMessages) + n(A::ApproximateNumberOfMessagesNotVisible))
    }

    pub async fn send(&self, jobs: &[Job]) -> Result<(), ItemError> {
        use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
        for chunk in jobs.chunks(10) {
            let mut pending: Vec<(String, String)> = chunk
                .iter()
                .enumerate()
                .map(|(i, j)| {
                    (
                        i.to_string(),
                        serde_json::to_string(j).expect("jobs serialize"),
                    )
                })
                .collect();
            for attempt in 0..5 {
                if pending.is_empty() {
                    break;
                }
                if attempt > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(100 << attempt)).await;
                }
                let entries: Vec<SendMessageBatchRequestEntry> = pending
                    .iter()
                    .map(|(id, body)| {
                        SendMessageBatchRequestEntry::builder()
                            .id(id)
                            .message_body(body)
                            .build()
                            .expect("id and body are set")
                    })
                    .collect();
                let out = self
                    .client
                    .send_message_batch()
                    .queue_url(&self.url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|e| crate::retry::aws_error("SQS SendMessageBatch", e))?;
                let failed: std::collections::HashSet<&str> =
                    out.failed().iter().map(|f| f.id()).collect();
                pending.retain(|(id, _)| failed.contains(id.as_str()));
            }
            if !pending.is_empty() {
                return Err(ItemError::new(
                    ErrorClass::Retryable,
                    format!("SQS refused {} job(s) after 5 attempts", pending.len()),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_round_trip_and_bad_ones_name_the_field() {
        let j = Job::Part {
            run: "r".into(),
            key: "a b".into(),
            size: 10,
            etag: None,
            upload_id: "u".into(),
            number: 2,
            start: 5,
            len: 5,
            task: None,
        };
        let text = serde_json::to_string(&j).unwrap();
        assert_eq!(Job::parse(&text).unwrap(), j);
        let e = Job::parse(r#"{"kind":"object","run":"r","size":3}"#).unwrap_err();
        assert_eq!(e.class, ErrorClass::BadInput);
        assert!(e.message.contains("missing field `key`"), "{}", e.message);
        let e = Job::parse(r#"{"kind":"object","run":"r","key":"k","size":3,"secret":"x"}"#)
            .unwrap_err();
        assert!(
            e.message.contains("unknown field `secret`"),
            "{}",
            e.message
        );
        assert!(Job::parse("not json").is_err());
    }
}
