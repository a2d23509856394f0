//! The status store in DynamoDB (the AWS suite). One table, on-demand:
//! `pk` = run id, `sk` = `run` for the run record or `item#<source>|<dest>` for an item
//! (hashed when longer than DynamoDB allows, see [`item_key`]).
//! Item writes are conditional on `version` (attribute_not_exists(pk) OR version < :v), so a
//! retried or late write never overwrites a newer result. No secret is ever written.

use super::{ItemRecord, RunRecord, Status, StatusStore, StoreError, list_line};
use crate::retry::{ErrorClass, ItemError};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use std::collections::HashMap;

/// DynamoDB-backed status store.
pub struct DynamoStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

pub(crate) type Item = HashMap<String, AttributeValue>;

pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}
pub(crate) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}
pub(crate) fn get_s(i: &Item, k: &str) -> Option<String> {
    i.get(k).and_then(|v| v.as_s().ok()).cloned()
}
pub(crate) fn get_n(i: &Item, k: &str) -> u64 {
    i.get(k)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
pub(crate) fn get_t(i: &Item, k: &str) -> Option<DateTime<Utc>> {
    get_s(i, k)
        .and_then(|v| DateTime::parse_from_rfc3339(&v).ok())
        .map(|t| t.with_timezone(&Utc))
}

pub(crate) fn sdk<E: std::error::Error + 'static>(
    what: &str,
    e: aws_sdk_dynamodb::error::SdkError<E>,
) -> StoreError {
    StoreError::Remote(format!(
        "DynamoDB {what}: {}",
        aws_sdk_dynamodb::error::DisplayErrorContext(&e)
    ))
}

/// The outcome of a conditional write: `Ok(true)` when it was written, `Ok(false)` when
/// its condition did not hold (someone else's write stands), an error otherwise.
pub(crate) fn conditional<O, E>(
    what: &str,
    out: Result<O, aws_sdk_dynamodb::error::SdkError<E>>,
) -> Result<bool, StoreError>
where
    E: std::error::Error + aws_sdk_dynamodb::error::ProvideErrorMetadata + 'static,
{
    match out {
        Ok(_) => Ok(true),
        Err(e)
            if e.as_service_error().and_then(|x| x.code())
                == Some("ConditionalCheckFailedException") =>
        {
            Ok(false)
        }
        Err(e) => Err(sdk(what, e)),
    }
}

/// The key of a first-seen record (`--min-age`): `pk` = `seen#<repo>` (hashed past
/// DynamoDB's partition-key limit), `sk` = the digest. Its own partition, so no run's
/// query or scan (`sk = run`) ever reads it.
pub fn seen_key(repo: &str, digest: &str) -> (String, String) {
    let pk = format!("seen#{repo}");
    let pk = if pk.len() > 2048 {
        use sha2::Digest as _;
        format!(
            "seen#sha256:{}",
            hex::encode(sha2::Sha256::digest(repo.as_bytes()))
        )
    } else {
        pk
    };
    (pk, digest.to_string())
}

/// DynamoDB's limit on a sort key, in bytes.
pub const MAX_SORT_KEY: usize = 1024;

/// The sort key of an item record: `item#<source>|<dest>`, or, when that would pass
/// DynamoDB's 1,024-byte limit (S3 keys alone may be 1,024 bytes), `item#sha256:<hex>` of
/// the same text. The URLs themselves are always kept as the `source` and `dest`
/// attributes, which is what readers use.
pub fn item_key(source: &str, dest: &str) -> String {
    let plain = format!("item#{source}|{dest}");
    if plain.len() <= MAX_SORT_KEY {
        return plain;
    }
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("{source}|{dest}").as_bytes());
    format!("item#sha256:{}", hex::encode(digest))
}

/// Collects every page of a Query or Scan: `page` sends one request from a start key and
/// returns its items and the key to go on from.
pub(crate) async fn all_pages<F, Fut>(mut page: F) -> Result<Vec<Item>, StoreError>
where
    F: FnMut(Option<Item>) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<Item>, Option<Item>), StoreError>>,
{
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let (mut got, next) = page(start.take()).await?;
        items.append(&mut got);
        match next {
            Some(k) if !k.is_empty() => start = Some(k),
            _ => return Ok(items),
        }
    }
}

impl DynamoStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    fn run_item(run: &RunRecord) -> Item {
        let mut i: Item = [
            ("pk", s(&run.run_id)),
            ("sk", s("run")),
            ("source", s(&run.source)),
            ("dest", s(&run.dest)),
            ("dry_run", AttributeValue::Bool(run.dry_run)),
            ("started_at", s(run.started_at.to_rfc3339())),
            ("copied", n(run.copied)),
            ("skipped", n(run.skipped)),
            ("failed", n(run.failed)),
            ("bytes", n(run.bytes)),
            ("filtered", n(run.filtered)),
            ("conflicts", n(run.conflicts)),
            ("deleted", n(run.deleted)),
            ("archived", n(run.archived)),
            ("restoring", n(run.restoring)),
            ("waiting", n(run.waiting)),
            ("deferred", n(run.deferred)),
            ("kind", s(run.kind.as_str())),
            ("result", s(run.result.as_str())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some(t) = run.ended_at {
            i.insert("ended_at".into(), s(t.to_rfc3339()));
        }
        if let Some(e) = &run.error {
            i.insert("error".into(), s(e));
        }
        i
    }

    pub(crate) fn run_from(i: &Item) -> RunRecord {
        use crate::status::{RunKind, RunResult};
        let source = get_s(i, "source").unwrap_or_default();
        RunRecord {
            kind: RunKind::from_name(get_s(i, "kind").as_deref(), &source),
            result: RunResult::from_name(
                get_s(i, "result").as_deref(),
                get_t(i, "ended_at").is_some(),
                get_n(i, "failed"),
            ),
            error: get_s(i, "error"),
            to_copy: None,
            filtered: get_n(i, "filtered"),
            conflicts: get_n(i, "conflicts"),
            deleted: get_n(i, "deleted"),
            archived: get_n(i, "archived"),
            restoring: get_n(i, "restoring"),
            waiting: get_n(i, "waiting"),
            deferred: get_n(i, "deferred"),
            run_id: get_s(i, "pk").unwrap_or_default(),
            source: get_s(i, "source").unwrap_or_default(),
            dest: get_s(i, "dest").unwrap_or_default(),
            dry_run: i
                .get("dry_run")
                .and_then(|v| v.as_bool().ok())
                .copied()
                .unwrap_or(false),
            started_at: get_t(i, "started_at").unwrap_or_default(),
            ended_at: get_t(i, "ended_at"),
            copied: get_n(i, "copied"),
            skipped: get_n(i, "skipped"),
            failed: get_n(i, "failed"),
            bytes: get_n(i, "bytes"),
        }
    }

    pub(crate) fn item_from(i: &Item) -> ItemRecord {
        let class = get_s(i, "error_class");
        ItemRecord {
            run_id: get_s(i, "pk").unwrap_or_default(),
            source: get_s(i, "source").unwrap_or_default(),
            dest: get_s(i, "dest").unwrap_or_default(),
            status: get_s(i, "status")
                .and_then(|v| Status::from_name(&v))
                .unwrap_or(Status::Failed),
            source_digest: get_s(i, "source_digest"),
            dest_digest: get_s(i, "dest_digest"),
            attempts: get_n(i, "attempts") as u32,
            error: class.map(|c| {
                ItemError::new(
                    ErrorClass::from_name(&c).unwrap_or(ErrorClass::Retryable),
                    get_s(i, "error_message").unwrap_or_default(),
                )
            }),
            bytes: get_n(i, "bytes"),
            started_at: get_t(i, "started_at"),
            ended_at: get_t(i, "ended_at"),
            version: get_n(i, "version"),
            line: list_line(&get_s(i, "source").unwrap_or_default()),
            resumed: None,
            waiting_until: get_t(i, "waiting_until"),
            reason: None,
        }
    }
}

#[async_trait]
impl StatusStore for DynamoStore {
    async fn put_run(&self, run: &RunRecord) -> Result<(), StoreError> {
        // Keep the notification mark when the run record is rewritten.
        let mut update = String::from("SET ");
        let mut names = HashMap::new();
        let mut values = HashMap::new();
        let mut parts = Vec::new();
        for (k, v) in Self::run_item(run) {
            if k == "pk" || k == "sk" {
                continue;
            }
            names.insert(format!("#{k}"), k.clone());
            values.insert(format!(":{k}"), v);
            parts.push(format!("#{k} = :{k}"));
        }
        update.push_str(&parts.join(", "));
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&run.run_id))
            .key("sk", s("run"))
            .update_expression(update)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .send()
            .await
            .map_err(|e| sdk("UpdateItem run", e))?;
        Ok(())
    }

    async fn put_item(&self, r: &ItemRecord) -> Result<bool, StoreError> {
        let mut i: Item = [
            ("pk", s(&r.run_id)),
            ("sk", s(item_key(&r.source, &r.dest))),
            ("source", s(&r.source)),
            ("dest", s(&r.dest)),
            ("status", s(r.status.as_str())),
            ("attempts", n(r.attempts)),
            ("bytes", n(r.bytes)),
            ("version", n(r.version)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in [
            ("source_digest", &r.source_digest),
            ("dest_digest", &r.dest_digest),
        ] {
            if let Some(v) = v {
                i.insert(k.into(), s(v));
            }
        }
        if let Some(e) = &r.error {
            i.insert("error_class".into(), s(e.class.as_str()));
            i.insert("error_message".into(), s(&e.message));
        }
        for (k, t) in [
            ("started_at", r.started_at),
            ("ended_at", r.ended_at),
            ("waiting_until", r.waiting_until),
        ] {
            if let Some(t) = t {
                i.insert(k.into(), s(t.to_rfc3339()));
            }
        }
        let out = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(i))
            .condition_expression("attribute_not_exists(pk) OR #v < :v")
            .expression_attribute_names("#v", "version")
            .expression_attribute_values(":v", n(r.version))
            .send()
            .await;
        conditional("PutItem", out)
    }

    async fn get_run(
        &self,
        run_id: Option<&str>,
    ) -> Result<Option<(RunRecord, Vec<ItemRecord>)>, StoreError> {
        let run = match run_id {
            Some(id) => {
                let out = self
                    .client
                    .get_item()
                    .table_name(&self.table)
                    .key("pk", s(id))
                    .key("sk", s("run"))
                    .consistent_read(true)
                    .send()
                    .await
                    .map_err(|e| sdk("GetItem", e))?;
                match out.item() {
                    Some(i) => Self::run_from(i),
                    None => return Ok(None),
                }
            }
            None => match self.list_runs(1).await?.into_iter().next() {
                Some(r) => r,
                None => return Ok(None),
            },
        };
        let run_id = run.run_id.clone();
        let raw = all_pages(|start| {
            let req = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :p AND begins_with(sk, :i)")
                .expression_attribute_values(":p", s(&run_id))
                .expression_attribute_values(":i", s("item#"))
                .consistent_read(true)
                .set_exclusive_start_key(start);
            async move {
                let out = req.send().await.map_err(|e| sdk("Query", e))?;
                Ok((out.items().to_vec(), out.last_evaluated_key().cloned()))
            }
        })
        .await?;
        let mut items: Vec<ItemRecord> = raw.iter().map(Self::item_from).collect();
        items.sort_by(|a, b| {
            (a.source.as_str(), a.dest.as_str()).cmp(&(b.source.as_str(), b.dest.as_str()))
        });
        Ok(Some((run, items)))
    }

    async fn list_runs(&self, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        // Runs are few (one a day); a filtered scan is enough here.
        let raw = all_pages(|start| {
            let req = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("sk = :r")
                .expression_attribute_values(":r", s("run"))
                .set_exclusive_start_key(start);
            async move {
                let out = req.send().await.map_err(|e| sdk("Scan", e))?;
                Ok((out.items().to_vec(), out.last_evaluated_key().cloned()))
            }
        })
        .await?;
        let mut runs: Vec<RunRecord> = raw.iter().map(Self::run_from).collect();
        runs.sort_by(|a, b| b.started_at.cmp(&a.started_at));
        runs.truncate(limit);
        Ok(runs)
    }

    async fn claim_notification(&self, run_id: &str) -> Result<bool, StoreError> {
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(run_id))
            .key("sk", s("run"))
            .update_expression("SET notified = :t")
            .condition_expression("attribute_not_exists(notified)")
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .send()
            .await;
        conditional("UpdateItem notified", out)
    }

    async fn note_task(&self, run_id: &str, task: &str) -> Result<(), StoreError> {
        // `task` puts the run record in the runs-by-task index (see aws::task_store).
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(run_id))
            .key("sk", s("run"))
            .update_expression("SET #t = :t")
            .expression_attribute_names("#t", "task")
            .expression_attribute_values(":t", s(task))
            .send()
            .await
            .map_err(|e| sdk("UpdateItem run task", e))?;
        Ok(())
    }

    async fn is_notified(&self, run_id: &str) -> Result<bool, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(run_id))
            .key("sk", s("run"))
            .projection_expression("notified")
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk("GetItem notified", e))?;
        Ok(matches!(
            out.item().and_then(|i| i.get("notified")),
            Some(AttributeValue::Bool(true))
        ))
    }

    async fn first_seen(
        &self,
        repo: &str,
        digest: &str,
        now: DateTime<Utc>,
        record: bool,
    ) -> Result<DateTime<Utc>, StoreError> {
        let (pk, sk) = seen_key(repo, digest);
        if record {
            let out = self
                .client
                .put_item()
                .table_name(&self.table)
                .item("pk", s(&pk))
                .item("sk", s(&sk))
                .item("repo", s(repo))
                .item("digest", s(digest))
                .item("at", s(now.to_rfc3339()))
                .condition_expression("attribute_not_exists(pk)")
                .send()
                .await;
            if conditional("PutItem", out)? {
                return Ok(now);
            }
        }
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .key("sk", s(&sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk("GetItem", e))?;
        Ok(out.item().and_then(|i| get_t(i, "at")).unwrap_or(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_sort_keys_stay_within_dynamodbs_limit_and_stay_distinct() {
        let short = item_key("s3://a/k", "s3://b/k");
        assert_eq!(short, "item#s3://a/k|s3://b/k");
        // An S3 key may be 1,024 bytes: source and destination URLs of it pass the limit.
        let long = "k".repeat(1024);
        let (src, dst) = (format!("s3://a/{long}"), format!("s3://b/{long}"));
        let hashed = item_key(&src, &dst);
        assert!(
            hashed.len() <= MAX_SORT_KEY && hashed.starts_with("item#sha256:"),
            "{hashed}"
        );
        assert_eq!(
            hashed,
            item_key(&src, &dst),
            "the same item gets the same key"
        );
        assert_ne!(hashed, item_key(&src, &format!("{dst}x")));
        // Exactly at the limit stays readable.
        let fits = "x".repeat(MAX_SORT_KEY - "item#|".len() - 1);
        assert_eq!(item_key(&fits, "y").len(), MAX_SORT_KEY);
        assert!(!item_key(&fits, "y").contains("sha256"));
    }
}
