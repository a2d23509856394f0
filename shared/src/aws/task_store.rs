//! The [`TaskStore`] on AWS: tasks in their own DynamoDB table, runs and items where the
//! functions already write them (the status table).
//!
//! Tasks table (on-demand, PITR, SSE, see template.yaml `TasksTable`): every task is one item
//! `pk = "task"`, `sk = <name>`, so a page of tasks is one Query in name order from the
//! last name shown (keyset: `ExclusiveStartKey`). A create is conditional on
//! `attribute_not_exists(pk)`, so two creates of one name never both succeed; an update is
//! conditional on the task existing. Credentials are kept by reference only (secret
//! names), as the task holds them.
//!
//! Runs: `list-images` and `diff-objects` mark the run record of a task's run with the
//! task's name (`task`, see [`crate::status::StatusStore::note_task`]); the status table's
//! sparse index [`RUNS_BY_TASK_INDEX`] (`task`, `started_at`) lists a task's runs newest
//! first, in pages read from the index.

use crate::status::dynamodb::{DynamoStore, Item, conditional, get_s, get_t, item_key, s, sdk};
use crate::status::{ItemRecord, RunRecord, Status, StoreError};
use crate::tasks::store::{ItemPage, TaskStore, TaskStoreError};
use crate::tasks::{Spec, Task};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use std::collections::HashMap;

/// The status table's index of runs by task: hash `task`, range `started_at`, all
/// attributes. Only run records of a task's run carry `task`, so it holds nothing else.
pub const RUNS_BY_TASK_INDEX: &str = "runs-by-task";

/// The partition key every task item shares.
const TASK_PK: &str = "task";

/// Tasks in DynamoDB; runs and items from the status table.
pub struct DynamoTaskStore {
    client: aws_sdk_dynamodb::Client,
    /// The tasks table.
    tasks: String,
    /// The status table (runs and items; read only).
    status: String,
}

fn task_item(t: &Task) -> Item {
    let mut i: Item = [
        ("pk", s(TASK_PK)),
        ("sk", s(&t.name)),
        ("kind", s(t.kind().as_str())),
        (
            "spec",
            s(serde_json::to_string(&t.spec).expect("a task's spec serializes")),
        ),
        ("enabled", AttributeValue::Bool(t.enabled)),
        ("created_at", s(t.created_at.to_rfc3339())),
        ("updated_at", s(t.updated_at.to_rfc3339())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if let Some(sch) = &t.schedule {
        i.insert("schedule".into(), s(sch));
    }
    i
}

/// Reads a task item (`Corrupt` naming the task when its spec is not one this version reads).
pub fn task_from(i: &Item) -> Result<Task, TaskStoreError> {
    let name = get_s(i, "sk").unwrap_or_default();
    let spec: Spec = serde_json::from_str(&get_s(i, "spec").unwrap_or_default()).map_err(|e| {
        TaskStoreError::Corrupt {
            name: name.clone(),
            reason: e.to_string(),
        }
    })?;
    Ok(Task {
        name,
        spec,
        schedule: get_s(i, "schedule"),
        enabled: i
            .get("enabled")
            .and_then(|v| v.as_bool().ok())
            .copied()
            .unwrap_or(false),
        created_at: get_t(i, "created_at").unwrap_or_default(),
        updated_at: get_t(i, "updated_at").unwrap_or_default(),
    })
}

/// Reads one task by name from the tasks table with `GetItem` (all `list-images` and
/// `diff-objects` need, and all their roles allow).
pub async fn get_task(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    name: &str,
) -> Result<Option<Task>, TaskStoreError> {
    let out = client
        .get_item()
        .table_name(table)
        .key("pk", s(TASK_PK))
        .key("sk", s(name))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| sdk("GetItem task", e))?;
    out.item().map(task_from).transpose()
}

impl DynamoTaskStore {
    /// `tasks`: the tasks table; `status`: the status table (with [`RUNS_BY_TASK_INDEX`]).
    pub fn new(
        client: aws_sdk_dynamodb::Client,
        tasks: impl Into<String>,
        status: impl Into<String>,
    ) -> Self {
        Self {
            client,
            tasks: tasks.into(),
            status: status.into(),
        }
    }

    fn stored(e: StoreError) -> TaskStoreError {
        TaskStoreError::Store(e)
    }
}

#[async_trait]
impl TaskStore for DynamoTaskStore {
    async fn create(&self, t: &Task) -> Result<(), TaskStoreError> {
        let out = self
            .client
            .put_item()
            .table_name(&self.tasks)
            .set_item(Some(task_item(t)))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match conditional("PutItem task", out).map_err(Self::stored)? {
            true => Ok(()),
            false => Err(TaskStoreError::Exists(t.name.clone())),
        }
    }

    async fn update(&self, t: &Task) -> Result<(), TaskStoreError> {
        // Everything but created_at and last_scheduled; only an existing task.
        let mut req = self
            .client
            .update_item()
            .table_name(&self.tasks)
            .key("pk", s(TASK_PK))
            .key("sk", s(&t.name))
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#kind", "kind")
            .expression_attribute_names("#spec", "spec")
            .expression_attribute_names("#enabled", "enabled")
            .expression_attribute_names("#updated", "updated_at")
            .expression_attribute_names("#schedule", "schedule")
            .expression_attribute_values(":kind", s(t.kind().as_str()))
            .expression_attribute_values(
                ":spec",
                s(serde_json::to_string(&t.spec).expect("a task's spec serializes")),
            )
            .expression_attribute_values(":enabled", AttributeValue::Bool(t.enabled))
            .expression_attribute_values(":updated", s(t.updated_at.to_rfc3339()));
        let set = "SET #kind = :kind, #spec = :spec, #enabled = :enabled, #updated = :updated";
        req = match &t.schedule {
            Some(sch) => req
                .update_expression(format!("{set}, #schedule = :schedule"))
                .expression_attribute_values(":schedule", s(sch)),
            None => req.update_expression(format!("{set} REMOVE #schedule")),
        };
        match conditional("UpdateItem task", req.send().await).map_err(Self::stored)? {
            true => Ok(()),
            false => Err(TaskStoreError::NotFound(t.name.clone())),
        }
    }

    async fn get(&self, name: &str) -> Result<Option<Task>, TaskStoreError> {
        get_task(&self.client, &self.tasks, name).await
    }

    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<Task>, TaskStoreError> {
        let mut start = after.map(|a| {
            [("pk".to_string(), s(TASK_PK)), ("sk".to_string(), s(a))]
                .into_iter()
                .collect::<Item>()
        });
        let mut tasks = Vec::new();
        // A page of DynamoDB may hold fewer than asked (1 MB); go on from where it ended.
        while tasks.len() < limit {
            let out = self
                .client
                .query()
                .table_name(&self.tasks)
                .key_condition_expression("pk = :p")
                .expression_attribute_values(":p", s(TASK_PK))
                .limit((limit - tasks.len()).min(1000) as i32)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| sdk("Query tasks", e))?;
            for i in out.items() {
                tasks.push(task_from(i)?);
            }
            match out.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => break,
            }
        }
        Ok(tasks)
    }

    async fn delete(&self, name: &str) -> Result<bool, TaskStoreError> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.tasks)
            .key("pk", s(TASK_PK))
            .key("sk", s(name))
            .condition_expression("attribute_exists(pk)")
            .send()
            .await;
        conditional("DeleteItem task", out).map_err(Self::stored)
    }

    /// On AWS the run's first function marks its run record with the task (the console's
    /// role does not write the status table); nothing to do here.
    async fn note_run(
        &self,
        _task: &str,
        _run_id: &str,
        _started_at: DateTime<Utc>,
    ) -> Result<(), TaskStoreError> {
        Ok(())
    }

    async fn runs(
        &self,
        task: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RunRecord>, TaskStoreError> {
        // Keyset: the index query goes on from the cursor run's own key (index keys and the
        // table's), so a deep page reads what the first one does.
        let mut start = match before {
            None => None,
            Some(id) => match self.run(id).await? {
                Some(r) => Some(HashMap::from([
                    ("task".to_string(), s(task)),
                    ("started_at".to_string(), s(r.started_at.to_rfc3339())),
                    ("pk".to_string(), s(id)),
                    ("sk".to_string(), s("run")),
                ])),
                None => return Ok(Vec::new()),
            },
        };
        let mut got: Vec<RunRecord> = Vec::new();
        while got.len() < limit {
            let out = self
                .client
                .query()
                .table_name(&self.status)
                .index_name(RUNS_BY_TASK_INDEX)
                .key_condition_expression("#t = :t")
                .expression_attribute_names("#t", "task")
                .expression_attribute_values(":t", s(task))
                .scan_index_forward(false)
                .limit((limit - got.len()).min(1000) as i32)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| sdk("Query runs by task", e))?;
            got.extend(out.items().iter().map(DynamoStore::run_from));
            match out.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => break,
            }
        }
        got.truncate(limit);
        Ok(got)
    }

    async fn task_of(&self, run_id: &str) -> Result<Option<String>, TaskStoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.status)
            .key("pk", s(run_id))
            .key("sk", s("run"))
            .projection_expression("#t")
            .expression_attribute_names("#t", "task")
            .send()
            .await
            .map_err(|e| sdk("GetItem run", e))?;
        Ok(out.item().and_then(|i| get_s(i, "task")))
    }

    async fn last_scheduled(&self, task: &str) -> Result<Option<DateTime<Utc>>, TaskStoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tasks)
            .key("pk", s(TASK_PK))
            .key("sk", s(task))
            .projection_expression("last_scheduled")
            .send()
            .await
            .map_err(|e| sdk("GetItem task", e))?;
        Ok(out.item().and_then(|i| get_t(i, "last_scheduled")))
    }

    async fn set_last_scheduled(
        &self,
        task: &str,
        at: DateTime<Utc>,
    ) -> Result<(), TaskStoreError> {
        let out = self
            .client
            .update_item()
            .table_name(&self.tasks)
            .key("pk", s(TASK_PK))
            .key("sk", s(task))
            .condition_expression("attribute_exists(pk)")
            .update_expression("SET last_scheduled = :at")
            .expression_attribute_values(":at", s(at.to_rfc3339()))
            .send()
            .await;
        conditional("UpdateItem last_scheduled", out).map_err(Self::stored)?;
        Ok(())
    }

    async fn run(&self, run_id: &str) -> Result<Option<RunRecord>, TaskStoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.status)
            .key("pk", s(run_id))
            .key("sk", s("run"))
            .send()
            .await
            .map_err(|e| sdk("GetItem run", e))?;
        Ok(out.item().map(DynamoStore::run_from))
    }

    async fn items(
        &self,
        run_id: &str,
        page: &ItemPage,
    ) -> Result<Vec<ItemRecord>, TaskStoreError> {
        // Items in sort-key order (`item#<source>|<dest>`), from the cursor item's own key on
        // (keyset). The failed filter is a filter expression: DynamoDB still reads the
        // items it drops, so a failed-only page of a big run with few failures costs more
        // read capacity than its size (no count is ever made).
        let mut start = page.after.as_ref().map(|(src, dst)| {
            HashMap::from([
                ("pk".to_string(), s(run_id)),
                ("sk".to_string(), s(item_key(src, dst))),
            ])
        });
        let mut got = Vec::new();
        while got.len() < page.limit {
            let mut q = self
                .client
                .query()
                .table_name(&self.status)
                .key_condition_expression("pk = :p AND begins_with(sk, :i)")
                .expression_attribute_values(":p", s(run_id))
                .expression_attribute_values(":i", s("item#"))
                .limit((page.limit - got.len()).clamp(100, 1000) as i32)
                .set_exclusive_start_key(start.take());
            if page.failed_only {
                q = q
                    .filter_expression("#st = :f")
                    .expression_attribute_names("#st", "status")
                    .expression_attribute_values(":f", s(Status::Failed.as_str()));
            }
            let out = q.send().await.map_err(|e| sdk("Query items", e))?;
            got.extend(out.items().iter().map(DynamoStore::item_from));
            match out.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => break,
            }
        }
        got.truncate(page.limit);
        Ok(got)
    }
}
