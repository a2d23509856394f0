//! The ledger of open multipart uploads and their finished parts: what lets many workers
//! share one object, a duplicated part job do no harm, and an interrupted run resume
//! without redoing finished parts. SQLite on one machine, DynamoDB on AWS (its own
//! table: `pk` = destination object URL, `sk` = `upload` or `part#NNNNN`, plus
//! `seq` items holding the newest S3 event sequencer per key and `verified` items holding
//! the source and destination ETags of the last verified copy).

use super::checksum::UploadSum;
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
    pub task: Option<crate::tasks::TaskScope>,
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

#[cfg(feature = "aws")]
mod dynamodb;
#[cfg(feature = "aws")]
pub use dynamodb::{DynamoLedger, INTENT_TTL, OPEN_UPLOADS_INDEX, SEQUENCER_TTL};

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
