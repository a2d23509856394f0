//! The upload ledger in DynamoDB (the AWS object suite's): the table layout the module
//! above describes.

use super::{Upload, UploadLedger};
use crate::objects::checksum::UploadSum;
use crate::status::StoreError;
use crate::status::dynamodb::{Item, all_pages, conditional, get_n, get_s, get_t, n, s, sdk};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// The ledger in DynamoDB.
pub struct DynamoLedger {
    pub client: aws_sdk_dynamodb::Client,
    pub table: String,
}

fn upload_item(u: &Upload) -> Item {
    let mut i: Item = [
        ("pk", s(&u.dest)),
        ("sk", s("upload")),
        ("key", s(&u.key)),
        ("upload_id", s(&u.upload_id)),
        ("size", n(u.size)),
        ("part_size", n(u.part_size)),
        ("parts", n(u.parts)),
        ("started_at", s(u.started_at.to_rfc3339())),
        ("checksum", s(u.checksum.to_text())),
        // The key of the sparse index of open uploads: only upload items carry it.
        ("open", s("upload")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if let Some(e) = &u.source_etag {
        i.insert("source_etag".into(), s(e));
    }
    if let Some(r) = &u.run {
        i.insert("run".into(), s(r));
    }
    if let Some(t) = &u.task {
        i.insert(
            "task".into(),
            s(serde_json::to_string(t).expect("a task scope serializes")),
        );
    }
    i
}

fn upload_from(i: &Item) -> Upload {
    Upload {
        dest: get_s(i, "pk").unwrap_or_default(),
        key: get_s(i, "key").unwrap_or_default(),
        upload_id: get_s(i, "upload_id").unwrap_or_default(),
        size: get_n(i, "size"),
        source_etag: get_s(i, "source_etag"),
        part_size: get_n(i, "part_size"),
        parts: get_n(i, "parts") as u32,
        started_at: get_t(i, "started_at").unwrap_or_default(),
        checksum: UploadSum::from_text(get_s(i, "checksum").as_deref()),
        // Written by us only; an unreadable one is the stack's (and logged).
        task: get_s(i, "task").and_then(|t| {
            serde_json::from_str(&t)
                .inspect_err(|e| tracing::warn!(error = %e, "an upload's task is not readable"))
                .ok()
        }),
        run: get_s(i, "run"),
    }
}

fn part_sk(number: u32) -> String {
    format!("part#{number:05}")
}

/// The uploads table's sparse index of open uploads (partition key `open`, sort key `pk`).
pub const OPEN_UPLOADS_INDEX: &str = "open-uploads";

/// How long the intent to start an upload is kept (see [`UploadLedger::intend`]).
pub const INTENT_TTL: chrono::Duration = chrono::Duration::days(2);

/// How long the newest sequencer of a key is kept: longer than SQS keeps a message (14
/// days), so an older event can never arrive after its key's record expired.
pub const SEQUENCER_TTL: chrono::Duration = chrono::Duration::days(15);

impl DynamoLedger {
    /// Records the sequencer of an S3 event for a key unless a newer one is stored.
    /// Returns false only when a newer event was claimed: the same event claims again, so
    /// an event whose first handling failed is applied when SQS delivers it again.
    pub async fn claim_sequencer(&self, dest: &str, sequencer: &str) -> Result<bool, StoreError> {
        let seq = crate::objects::events::sortable_sequencer(sequencer);
        let out = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(dest))
            .item("sk", s("seq"))
            .item("seq", s(&seq))
            // DynamoDB's TTL removes it once no older event can still be in the queue.
            .item(
                "expires_at",
                n((Utc::now() + SEQUENCER_TTL).timestamp().max(0) as u64),
            )
            // `<=`: the same event delivered again (its first handling failed, or SQS sent
            // it twice) is applied again; only an older sequencer is refused.
            .condition_expression("attribute_not_exists(pk) OR #s <= :s")
            .expression_attribute_names("#s", "seq")
            .expression_attribute_values(":s", s(&seq))
            .send()
            .await;
        conditional("PutItem", out)
    }
}

#[async_trait]
impl UploadLedger for DynamoLedger {
    async fn find(&self, dest: &str) -> Result<Option<Upload>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(dest))
            .key("sk", s("upload"))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk("GetItem", e))?;
        Ok(out.item().map(upload_from))
    }
    async fn begin(&self, u: &Upload) -> Result<Upload, StoreError> {
        let out = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(upload_item(u)))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        if conditional("PutItem", out)? {
            Ok(u.clone())
        } else {
            Ok(self.find(&u.dest).await?.unwrap_or_else(|| u.clone()))
        }
    }
    async fn part_done(&self, u: &Upload, number: u32, etag: &str) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(&u.dest))
            .item("sk", s(part_sk(number)))
            .item("upload_id", s(&u.upload_id))
            .item("etag", s(etag))
            .item("done_at", s(Utc::now().to_rfc3339()))
            .send()
            .await
            .map_err(|e| sdk("PutItem", e))?;
        Ok(())
    }
    async fn part_is_done(&self, u: &Upload, number: u32) -> Result<bool, StoreError> {
        // One item, not the upload's whole part list.
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(&u.dest))
            .key("sk", s(part_sk(number)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk("GetItem", e))?;
        Ok(out
            .item()
            .is_some_and(|i| get_s(i, "upload_id").as_deref() == Some(u.upload_id.as_str())))
    }
    async fn parts_done(&self, u: &Upload) -> Result<Vec<(u32, String)>, StoreError> {
        let mut parts: Vec<(u32, String)> = self
            .part_items(u)
            .await?
            .iter()
            .filter_map(|i| {
                let n = get_s(i, "sk")?.strip_prefix("part#")?.parse().ok()?;
                Some((n, get_s(i, "etag")?))
            })
            .collect();
        parts.sort();
        Ok(parts)
    }
    async fn intend(&self, dest: &str) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(dest))
            .item("sk", s("intent"))
            .item("at", s(Utc::now().to_rfc3339()))
            // Long after any upload of ours is reaped (check-multipart runs every minute
            // and reaps at STUCK_AFTER_MINUTES); DynamoDB's TTL removes it then.
            .item(
                "expires_at",
                n((Utc::now() + INTENT_TTL).timestamp().max(0) as u64),
            )
            .send()
            .await
            .map_err(|e| sdk("PutItem", e))?;
        Ok(())
    }
    async fn intended(&self, dest: &str) -> Result<bool, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(dest))
            .key("sk", s("intent"))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk("GetItem", e))?;
        Ok(out.item().is_some())
    }
    async fn verified(&self, dest: &str) -> Result<Option<(String, String)>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(dest))
            .key("sk", s("verified"))
            .send()
            .await
            .map_err(|e| sdk("GetItem", e))?;
        Ok(out
            .item()
            .and_then(|i| Some((get_s(i, "source_etag")?, get_s(i, "dest_etag")?))))
    }
    async fn remember_verified(
        &self,
        dest: &str,
        source_etag: &str,
        dest_etag: &str,
    ) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(dest))
            .item("sk", s("verified"))
            .item("source_etag", s(source_etag))
            .item("dest_etag", s(dest_etag))
            .send()
            .await
            .map_err(|e| sdk("PutItem", e))?;
        Ok(())
    }
    async fn last_progress(&self, u: &Upload) -> Result<DateTime<Utc>, StoreError> {
        let newest = self
            .part_items(u)
            .await?
            .iter()
            .filter_map(|i| get_t(i, "done_at"))
            .max();
        Ok(newest.map_or(u.started_at, |t| t.max(u.started_at)))
    }

    async fn finish(&self, u: &Upload) -> Result<(), StoreError> {
        // The part items go 25 to a BatchWriteItem (its limit), what it leaves unprocessed
        // is sent again.
        use aws_sdk_dynamodb::types::{DeleteRequest, WriteRequest};
        let parts = self.parts_done(u).await?;
        for chunk in parts.chunks(25) {
            let mut pending: Vec<WriteRequest> = chunk
                .iter()
                .map(|(number, _)| {
                    let del = DeleteRequest::builder()
                        .key("pk", s(&u.dest))
                        .key("sk", s(part_sk(*number)))
                        .build()
                        .expect("the key is set");
                    WriteRequest::builder().delete_request(del).build()
                })
                .collect();
            for attempt in 0..5 {
                if pending.is_empty() {
                    break;
                }
                if attempt > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
                }
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, std::mem::take(&mut pending))
                    .send()
                    .await
                    .map_err(|e| sdk("BatchWriteItem", e))?;
                pending = out
                    .unprocessed_items()
                    .and_then(|m| m.get(&self.table))
                    .cloned()
                    .unwrap_or_default();
            }
            if !pending.is_empty() {
                return Err(StoreError::Remote(format!(
                    "BatchWriteItem left {} part item(s) of {} unprocessed after 5 attempts",
                    pending.len(),
                    u.dest
                )));
            }
        }
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(&u.dest))
            .key("sk", s("upload"))
            .condition_expression("attribute_not_exists(pk) OR upload_id = :u")
            .expression_attribute_values(":u", s(&u.upload_id))
            .send()
            .await;
        // A record of another upload of this object is not ours to delete.
        conditional("DeleteItem", out).map(|_| ())
    }
    async fn open(&self) -> Result<Vec<Upload>, StoreError> {
        // A Query of the sparse index (upload items only), not a Scan of every part,
        // sequencer and verified-copy item each minute. The index is eventually
        // consistent: check-multipart reads each upload again before acting on it.
        let items = all_pages(|start| async move {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(OPEN_UPLOADS_INDEX)
                .key_condition_expression("#o = :u")
                .expression_attribute_names("#o", "open")
                .expression_attribute_values(":u", s("upload"))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| sdk("Query", e))?;
            Ok((out.items().to_vec(), out.last_evaluated_key().cloned()))
        })
        .await?;
        Ok(items.iter().map(upload_from).collect())
    }
}

impl DynamoLedger {
    /// The part items of an upload (of this upload id only), every page.
    async fn part_items(&self, u: &Upload) -> Result<Vec<Item>, StoreError> {
        let items = all_pages(|start| async move {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :p)")
                .expression_attribute_values(":pk", s(&u.dest))
                .expression_attribute_values(":p", s("part#"))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| sdk("Query", e))?;
            Ok((out.items().to_vec(), out.last_evaluated_key().cloned()))
        })
        .await?;
        Ok(items
            .into_iter()
            .filter(|i| get_s(i, "upload_id").as_deref() == Some(u.upload_id.as_str()))
            .collect())
    }
}
