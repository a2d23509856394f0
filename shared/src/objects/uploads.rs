//! The ledger of open multipart uploads and their finished parts: what lets many workers
//! share one object, a duplicated part job do no harm, and an interrupted run resume
//! without redoing finished parts. SQLite on one machine, DynamoDB on AWS (its own
//! table: `pk` = destination object URL, `sk` = `upload` or `part#NNNNN`, plus
//! `seq` items holding the newest S3 event sequencer per key and `verified` items holding
//! the source and destination ETags of the last verified copy).

use super::checksum::UploadSum;
use crate::status::dynamodb::{Item, all_pages, conditional, get_n, get_s, get_t, n, s, sdk};
use crate::status::{SqliteStore, StoreError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// One open multipart upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upload {
    /// Destination object URL (the ledger key).
    pub dest: String,
    /// Key relative to the sync prefixes.
    pub key: String,
    pub upload_id: String,
    pub size: u64,
    pub source_etag: Option<String>,
    pub part_size: u64,
    pub parts: u32,
    pub started_at: DateTime<Utc>,
    /// The upload's checksum (algorithm, FULL_OBJECT or COMPOSITE), as it was created:
    /// its parts and its completion use it. Older records: FULL_OBJECT CRC32C.
    #[serde(default)]
    pub checksum: UploadSum,
    /// The objects task whose run opened it (AWS: its prefixes and options, so
    /// check-multipart completes it as that task). `None`: the stack's own, or the CLI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<super::suite::TaskScope>,
    /// The run whose job opened it (AWS), so its completion is recorded under that run (a
    /// task's run page lists it). `None`: older records, or the CLI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
}

/// Keeps uploads and parts.
#[async_trait]
pub trait UploadLedger: Send + Sync {
    /// The open upload of a destination object, if any.
    async fn find(&self, dest: &str) -> Result<Option<Upload>, StoreError>;
    /// Records a new upload unless one is already open for the object; returns the one
    /// that is open afterwards (so two workers racing end up on the same upload).
    async fn begin(&self, u: &Upload) -> Result<Upload, StoreError>;
    /// Records a finished part (idempotent: a part done twice keeps one record).
    async fn part_done(&self, u: &Upload, number: u32, etag: &str) -> Result<(), StoreError>;
    /// The finished parts of an upload, by number.
    async fn parts_done(&self, u: &Upload) -> Result<Vec<(u32, String)>, StoreError>;
    /// Whether part `number` of this upload is recorded finished (a part job delivered
    /// again then writes nothing).
    async fn part_is_done(&self, u: &Upload, number: u32) -> Result<bool, StoreError> {
        Ok(self.parts_done(u).await?.iter().any(|p| p.0 == number))
    }
    /// Forgets an upload (completed or aborted) and its parts.
    async fn finish(&self, u: &Upload) -> Result<(), StoreError>;
    /// Every open upload.
    async fn open(&self) -> Result<Vec<Upload>, StoreError>;
    /// Records that we are about to start a multipart upload into `dest`: written before
    /// CreateMultipartUpload, so an upload of ours that a crash left unrecorded can be told
    /// from somebody else's (check-multipart aborts only ours).
    async fn intend(&self, dest: &str) -> Result<(), StoreError>;
    /// Whether we started (or were about to start) an upload into `dest` recently.
    async fn intended(&self, dest: &str) -> Result<bool, StoreError>;
    /// The ETags of the last verified copy into `dest`: (source ETag, destination ETag).
    /// A destination whose ETag differs from its source's (other part sizes, SSE-KMS) is in
    /// sync while both still carry these ETags.
    async fn verified(&self, dest: &str) -> Result<Option<(String, String)>, StoreError>;
    /// Remembers a verified copy into `dest` (replacing the previous one).
    async fn remember_verified(
        &self,
        dest: &str,
        source_etag: &str,
        dest_etag: &str,
    ) -> Result<(), StoreError>;
    /// When the upload last made progress: its newest finished part, else its start.
    /// (What "stuck" is measured from: an upload whose parts keep finishing is never stuck.)
    async fn last_progress(&self, u: &Upload) -> Result<DateTime<Utc>, StoreError> {
        Ok(u.started_at)
    }
}

#[async_trait]
impl UploadLedger for SqliteStore {
    async fn find(&self, dest: &str) -> Result<Option<Upload>, StoreError> {
        let c = self.conn.lock().expect("state lock");
        Ok(c.query_row(
            "SELECT dest, key, upload_id, size, source_etag, part_size, parts, started_at, checksum FROM uploads WHERE dest = ?1",
            params![dest],
            row,
        )
        .optional()?)
    }
    async fn begin(&self, u: &Upload) -> Result<Upload, StoreError> {
        {
            let c = self.conn.lock().expect("state lock");
            c.execute(
                "INSERT OR IGNORE INTO uploads (dest, key, upload_id, size, source_etag, part_size, parts, started_at, checksum) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    u.dest,
                    u.key,
                    u.upload_id,
                    u.size as i64,
                    u.source_etag,
                    u.part_size as i64,
                    u.parts,
                    u.started_at.to_rfc3339(),
                    u.checksum.to_text()
                ],
            )?;
        }
        Ok(self.find(&u.dest).await?.unwrap_or_else(|| u.clone()))
    }
    async fn part_done(&self, u: &Upload, number: u32, etag: &str) -> Result<(), StoreError> {
        let c = self.conn.lock().expect("state lock");
        c.execute(
            "INSERT OR REPLACE INTO parts VALUES (?1, ?2, ?3)",
            params![u.upload_id, number, etag],
        )?;
        Ok(())
    }
    async fn parts_done(&self, u: &Upload) -> Result<Vec<(u32, String)>, StoreError> {
        let c = self.conn.lock().expect("state lock");
        let mut st =
            c.prepare("SELECT number, etag FROM parts WHERE upload_id = ?1 ORDER BY number")?;
        let rows = st.query_map(params![u.upload_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
    async fn finish(&self, u: &Upload) -> Result<(), StoreError> {
        let c = self.conn.lock().expect("state lock");
        c.execute(
            "DELETE FROM parts WHERE upload_id = ?1",
            params![u.upload_id],
        )?;
        c.execute(
            "DELETE FROM uploads WHERE dest = ?1 AND upload_id = ?2",
            params![u.dest, u.upload_id],
        )?;
        Ok(())
    }
    async fn intend(&self, dest: &str) -> Result<(), StoreError> {
        let c = self.conn.lock().expect("state lock");
        c.execute(
            "INSERT OR REPLACE INTO intents VALUES (?1, ?2)",
            params![dest, Utc::now().to_rfc3339()],
        )?;
        Ok(())
    }
    async fn intended(&self, dest: &str) -> Result<bool, StoreError> {
        let c = self.conn.lock().expect("state lock");
        Ok(c.query_row(
            "SELECT 1 FROM intents WHERE dest = ?1",
            params![dest],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
    }
    async fn verified(&self, dest: &str) -> Result<Option<(String, String)>, StoreError> {
        let c = self.conn.lock().expect("state lock");
        Ok(c.query_row(
            "SELECT source_etag, dest_etag FROM verified WHERE dest = ?1",
            params![dest],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
    }
    async fn remember_verified(
        &self,
        dest: &str,
        source_etag: &str,
        dest_etag: &str,
    ) -> Result<(), StoreError> {
        let c = self.conn.lock().expect("state lock");
        c.execute(
            "INSERT OR REPLACE INTO verified VALUES (?1, ?2, ?3)",
            params![dest, source_etag, dest_etag],
        )?;
        Ok(())
    }
    async fn open(&self) -> Result<Vec<Upload>, StoreError> {
        let c = self.conn.lock().expect("state lock");
        let mut st = c.prepare("SELECT dest, key, upload_id, size, source_etag, part_size, parts, started_at, checksum FROM uploads ORDER BY dest")?;
        let rows = st.query_map([], row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Upload> {
    let t: String = r.get(7)?;
    Ok(Upload {
        dest: r.get(0)?,
        key: r.get(1)?,
        upload_id: r.get(2)?,
        size: r.get::<_, i64>(3)? as u64,
        source_etag: r.get(4)?,
        part_size: r.get::<_, i64>(5)? as u64,
        parts: r.get(6)?,
        started_at: DateTime::parse_from_rfc3339(&t)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default(),
        checksum: UploadSum::from_text(r.get::<_, Option<String>>(8)?.as_deref()),
        task: None,
        run: None,
    })
}

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
        let seq = super::events::sortable_sequencer(sequencer);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_begin_gets_the_first_upload_and_parts_are_idempotent() {
        let st = SqliteStore::in_memory().unwrap();
        let u = Upload {
            dest: "s3://d/k".into(),
            key: "k".into(),
            upload_id: "u1".into(),
            size: 12,
            source_etag: Some("e".into()),
            part_size: 5,
            parts: 3,
            started_at: Utc::now(),
            checksum: UploadSum {
                algo: super::super::checksum::Algo::Crc64Nvme,
                composite: false,
            },
            task: None,
            run: None,
        };
        assert_eq!(st.begin(&u).await.unwrap().upload_id, "u1");
        // The upload keeps its algorithm (a resumed run completes with it).
        assert_eq!(st.find("s3://d/k").await.unwrap().unwrap(), u);
        let other = Upload {
            upload_id: "u2".into(),
            ..u.clone()
        };
        assert_eq!(st.begin(&other).await.unwrap().upload_id, "u1");
        st.part_done(&u, 2, "b").await.unwrap();
        st.part_done(&u, 1, "a").await.unwrap();
        st.part_done(&u, 2, "b").await.unwrap();
        assert_eq!(
            st.parts_done(&u).await.unwrap(),
            vec![(1, "a".into()), (2, "b".into())]
        );
        assert_eq!(st.open().await.unwrap().len(), 1);
        st.finish(&u).await.unwrap();
        assert!(st.find("s3://d/k").await.unwrap().is_none());
        assert!(st.parts_done(&u).await.unwrap().is_empty());
    }
}
