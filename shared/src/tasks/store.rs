//! Where tasks are kept: [`TaskStore`] is the edge. On one machine [`SqliteStore`] keeps
//! them in the state file beside the runs and items (a DynamoDB tasks table comes with the
//! AWS console). Runs stay in the status store; the store links each run to its task.
//! Every list is paginated in its query.

use super::{Spec, Task};
use crate::retry::{ErrorClass, ItemError};
use crate::status::{ItemRecord, RunRecord, SqliteStore, Status, StoreError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

/// Task store errors.
#[derive(Debug, thiserror::Error)]
pub enum TaskStoreError {
    #[error("a task named {0:?} exists already; expected a new name (or edit that task)")]
    Exists(String),
    #[error("no task named {0:?}")]
    NotFound(String),
    #[error("task {name:?} is stored in a form this version cannot read: {reason}")]
    Corrupt { name: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for TaskStoreError {
    fn from(e: rusqlite::Error) -> Self {
        TaskStoreError::Store(StoreError::Sql(e))
    }
}

/// One page of items of a run: the first `limit` items (in source, destination order) after
/// the `after` item, so a page costs the same however deep it is (keyset paging).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemPage {
    pub failed_only: bool,
    /// The (source, destination) of the last item of the page before.
    pub after: Option<(String, String)>,
    pub limit: usize,
}

/// Where tasks are kept, and which runs belong to which task.
#[async_trait]
pub trait TaskStore: Send + Sync {
    /// Saves a new task; [`TaskStoreError::Exists`] if the name is taken.
    async fn create(&self, task: &Task) -> Result<(), TaskStoreError>;
    /// Replaces a task's settings (keeps its `created_at`).
    async fn update(&self, task: &Task) -> Result<(), TaskStoreError>;
    async fn get(&self, name: &str) -> Result<Option<Task>, TaskStoreError>;
    /// Tasks in name order, after `after` (a page).
    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<Task>, TaskStoreError>;
    /// Removes a task (its runs stay in the status store); false if there was none.
    async fn delete(&self, name: &str) -> Result<bool, TaskStoreError>;
    /// Links a run to its task (before the run starts, so the console sees it at once).
    async fn note_run(
        &self,
        task: &str,
        run_id: &str,
        started_at: DateTime<Utc>,
    ) -> Result<(), TaskStoreError>;
    /// A task's runs, newest first: the first `limit` older than the run `before` (the last
    /// run of the page before), or the newest with none.
    async fn runs(
        &self,
        task: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RunRecord>, TaskStoreError>;
    /// The task a run belongs to.
    async fn task_of(&self, run_id: &str) -> Result<Option<String>, TaskStoreError>;
    /// When the scheduler last started the task on its schedule.
    async fn last_scheduled(&self, task: &str) -> Result<Option<DateTime<Utc>>, TaskStoreError>;
    async fn set_last_scheduled(&self, task: &str, at: DateTime<Utc>)
    -> Result<(), TaskStoreError>;
    /// One run's record without its items.
    async fn run(&self, run_id: &str) -> Result<Option<RunRecord>, TaskStoreError>;
    /// A page of a run's items, in source, destination order.
    async fn items(&self, run_id: &str, page: &ItemPage)
    -> Result<Vec<ItemRecord>, TaskStoreError>;
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339()
}

fn parse_ts(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

type TaskRow = (String, String, Option<String>, bool, String, String);

fn task_from(row: TaskRow) -> Result<Task, TaskStoreError> {
    let (name, spec, schedule, enabled, created, updated) = row;
    let spec: Spec = serde_json::from_str(&spec).map_err(|e| TaskStoreError::Corrupt {
        name: name.clone(),
        reason: e.to_string(),
    })?;
    Ok(Task {
        name,
        spec,
        schedule,
        enabled,
        created_at: parse_ts(&created),
        updated_at: parse_ts(&updated),
    })
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TaskRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

const TASK_COLS: &str = "name, spec, schedule, enabled, created_at, updated_at";
const RUN_COLS: &str = "r.run_id, r.source, r.dest, r.dry_run, r.started_at, r.ended_at, r.copied, r.skipped, r.failed, r.bytes, r.kind, r.result, r.error, r.filtered, r.conflicts, r.deleted, r.archived, r.restoring, r.waiting, r.deferred";

fn run_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
    crate::status::run_from_row(r)
}

fn spec_json(t: &Task) -> String {
    serde_json::to_string(&t.spec).expect("a task's spec serializes")
}

#[async_trait]
impl TaskStore for SqliteStore {
    async fn create(&self, t: &Task) -> Result<(), TaskStoreError> {
        let c = self.conn.lock().unwrap();
        let n = c.execute(
            &format!(
                "INSERT INTO tasks ({TASK_COLS}) VALUES (?1,?2,?3,?4,?5,?6) ON CONFLICT (name) DO NOTHING"
            ),
            params![
                t.name,
                spec_json(t),
                t.schedule,
                t.enabled,
                ts(t.created_at),
                ts(t.updated_at)
            ],
        )?;
        if n == 0 {
            return Err(TaskStoreError::Exists(t.name.clone()));
        }
        Ok(())
    }

    async fn update(&self, t: &Task) -> Result<(), TaskStoreError> {
        let c = self.conn.lock().unwrap();
        let n = c.execute(
            "UPDATE tasks SET spec = ?2, schedule = ?3, enabled = ?4, updated_at = ?5 WHERE name = ?1",
            params![t.name, spec_json(t), t.schedule, t.enabled, ts(t.updated_at)],
        )?;
        if n == 0 {
            return Err(TaskStoreError::NotFound(t.name.clone()));
        }
        Ok(())
    }

    async fn get(&self, name: &str) -> Result<Option<Task>, TaskStoreError> {
        let r = {
            let c = self.conn.lock().unwrap();
            c.query_row(
                &format!("SELECT {TASK_COLS} FROM tasks WHERE name = ?1"),
                [name],
                row,
            )
            .optional()?
        };
        r.map(task_from).transpose()
    }

    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<Task>, TaskStoreError> {
        let rows = {
            let c = self.conn.lock().unwrap();
            let mut s = c.prepare(&format!(
                "SELECT {TASK_COLS} FROM tasks WHERE name > ?1 ORDER BY name LIMIT ?2"
            ))?;
            s.query_map(params![after.unwrap_or(""), limit as i64], row)?
                .collect::<Result<Vec<_>, _>>()?
        };
        rows.into_iter().map(task_from).collect()
    }

    async fn delete(&self, name: &str) -> Result<bool, TaskStoreError> {
        let c = self.conn.lock().unwrap();
        Ok(c.execute("DELETE FROM tasks WHERE name = ?1", [name])? > 0)
    }

    async fn note_run(
        &self,
        task: &str,
        run_id: &str,
        started_at: DateTime<Utc>,
    ) -> Result<(), TaskStoreError> {
        let c = self.conn.lock().unwrap();
        c.execute(
            "INSERT OR REPLACE INTO task_runs (run_id, task, started_at) VALUES (?1, ?2, ?3)",
            params![run_id, task, ts(started_at)],
        )?;
        Ok(())
    }

    async fn runs(
        &self,
        task: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RunRecord>, TaskStoreError> {
        let c = self.conn.lock().unwrap();
        // Keyset: the runs before the cursor run in (started_at, run_id) order, read from
        // the (task, started_at, run_id) index whatever the page. With no cursor, a bound
        // above every timestamp.
        let (at, id) = match before {
            None => ("\u{10ffff}".to_string(), String::new()),
            Some(id) => match c
                .query_row(
                    "SELECT started_at FROM task_runs WHERE run_id = ?1 AND task = ?2",
                    params![id, task],
                    |r| r.get::<_, String>(0),
                )
                .optional()?
            {
                Some(at) => (at, id.to_string()),
                None => return Ok(Vec::new()), // not a run of this task
            },
        };
        let mut s = c.prepare(&format!(
            "SELECT {RUN_COLS} FROM task_runs t JOIN runs r ON r.run_id = t.run_id
             WHERE t.task = ?1 AND (t.started_at, t.run_id) < (?2, ?3)
             ORDER BY t.started_at DESC, t.run_id DESC LIMIT ?4"
        ))?;
        Ok(s.query_map(params![task, at, id, limit as i64], run_from)?
            .collect::<Result<Vec<_>, _>>()?)
    }

    async fn task_of(&self, run_id: &str) -> Result<Option<String>, TaskStoreError> {
        let c = self.conn.lock().unwrap();
        Ok(c.query_row(
            "SELECT task FROM task_runs WHERE run_id = ?1",
            [run_id],
            |r| r.get(0),
        )
        .optional()?)
    }

    async fn last_scheduled(&self, task: &str) -> Result<Option<DateTime<Utc>>, TaskStoreError> {
        let c = self.conn.lock().unwrap();
        let v: Option<Option<String>> = c
            .query_row(
                "SELECT last_scheduled FROM tasks WHERE name = ?1",
                [task],
                |r| r.get(0),
            )
            .optional()?;
        Ok(v.flatten().map(|s| parse_ts(&s)))
    }

    async fn set_last_scheduled(
        &self,
        task: &str,
        at: DateTime<Utc>,
    ) -> Result<(), TaskStoreError> {
        let c = self.conn.lock().unwrap();
        c.execute(
            "UPDATE tasks SET last_scheduled = ?2 WHERE name = ?1",
            params![task, ts(at)],
        )?;
        Ok(())
    }

    async fn run(&self, run_id: &str) -> Result<Option<RunRecord>, TaskStoreError> {
        let c = self.conn.lock().unwrap();
        Ok(c.query_row(
            &format!("SELECT {RUN_COLS} FROM runs r WHERE r.run_id = ?1"),
            [run_id],
            run_from,
        )
        .optional()?)
    }

    async fn items(
        &self,
        run_id: &str,
        page: &ItemPage,
    ) -> Result<Vec<ItemRecord>, TaskStoreError> {
        let c = self.conn.lock().unwrap();
        // Keyset on the primary key (run_id, source, dest), or on the partial index of the
        // failed items: a deep page costs what the first one does. (A row-value comparison:
        // SQLite reads it as a range of the index, where the equivalent OR made it sort every
        // item of the run, 250 ms for 900,000.)
        let filter = if page.failed_only {
            "AND status = 'failed'"
        } else {
            ""
        };
        let (after_source, after_dest) = page.after.clone().unwrap_or_default();
        let mut s = c.prepare(&format!(
            "SELECT source, dest, status, source_digest, dest_digest, attempts, error_class, error_message, bytes, started_at, ended_at, version
             FROM items WHERE run_id = ?1 {filter} AND (source, dest) > (?2, ?3)
             ORDER BY source, dest LIMIT ?4"
        ))?;
        let items = s
            .query_map(
                params![run_id, after_source, after_dest, page.limit as i64],
                |r| {
                    let class: Option<String> = r.get(6)?;
                    let message: Option<String> = r.get(7)?;
                    Ok(ItemRecord {
                        run_id: run_id.to_string(),
                        source: r.get(0)?,
                        dest: r.get(1)?,
                        status: Status::from_name(&r.get::<_, String>(2)?)
                            .unwrap_or(Status::Failed),
                        source_digest: r.get(3)?,
                        dest_digest: r.get(4)?,
                        attempts: r.get(5)?,
                        error: class.map(|c| {
                            ItemError::new(
                                ErrorClass::from_name(&c).unwrap_or(ErrorClass::Retryable),
                                message.unwrap_or_default(),
                            )
                        }),
                        bytes: r.get(8)?,
                        started_at: r.get::<_, Option<String>>(9)?.map(|s| parse_ts(&s)),
                        ended_at: r.get::<_, Option<String>>(10)?.map(|s| parse_ts(&s)),
                        version: r.get::<_, i64>(11)? as u64,
                        line: None,
                        resumed: None,
                        waiting_until: None,
                        reason: None,
                    })
                    .map(|i| ItemRecord {
                        line: crate::status::list_line(&i.source),
                        ..i
                    })
                },
            )?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Fields, Kind, default_fields};
    use super::*;
    use crate::status::StatusStore;

    fn task(name: &str) -> Task {
        let mut f: Fields = default_fields(Kind::Images);
        f.insert("source".into(), "127.0.0.1:5000".into());
        f.insert("dest".into(), "127.0.0.1:5001/m".into());
        f.insert("list".into(), "a:1".into());
        Task::from_fields(name, Kind::Images, &f, Utc::now()).unwrap()
    }

    #[tokio::test]
    async fn tasks_are_kept_listed_in_pages_and_linked_to_their_runs() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        for n in ["c", "a", "b"] {
            store.create(&task(n)).await.unwrap();
        }
        assert!(matches!(
            store.create(&task("a")).await,
            Err(TaskStoreError::Exists(_))
        ));
        let names = |v: Vec<Task>| v.into_iter().map(|t| t.name).collect::<Vec<_>>();
        assert_eq!(names(store.list(None, 2).await.unwrap()), ["a", "b"]);
        assert_eq!(names(store.list(Some("b"), 2).await.unwrap()), ["c"]);

        let mut t = store.get("b").await.unwrap().unwrap();
        assert_eq!(t, task("b").clone_with_times(&t));
        t.enabled = false;
        t.schedule = Some("rate(1 day)".into());
        store.update(&t).await.unwrap();
        assert_eq!(store.get("b").await.unwrap().unwrap(), t);
        assert!(matches!(
            store.update(&task("zz")).await,
            Err(TaskStoreError::NotFound(_))
        ));

        let mut run = RunRecord {
            run_id: "r1".into(),
            source: "s".into(),
            dest: "d".into(),
            dry_run: false,
            started_at: Utc::now(),
            ended_at: None,
            copied: 1,
            skipped: 0,
            failed: 1,
            bytes: 5,
            ..Default::default()
        };
        store.note_run("b", "r1", run.started_at).await.unwrap();
        store.put_run(&run).await.unwrap();
        run.run_id = "r2".into();
        store.put_run(&run).await.unwrap(); // a run of no task
        assert_eq!(
            store
                .runs("b", None, 10)
                .await
                .unwrap()
                .iter()
                .map(|r| r.run_id.as_str())
                .collect::<Vec<_>>(),
            ["r1"]
        );
        assert_eq!(store.task_of("r1").await.unwrap().as_deref(), Some("b"));
        assert_eq!(store.task_of("r2").await.unwrap(), None);

        assert_eq!(store.last_scheduled("b").await.unwrap(), None);
        let at = Utc::now();
        store.set_last_scheduled("b", at).await.unwrap();
        assert_eq!(
            store
                .last_scheduled("b")
                .await
                .unwrap()
                .map(|t| t.timestamp()),
            Some(at.timestamp())
        );
        assert!(store.delete("b").await.unwrap());
        assert!(!store.delete("b").await.unwrap());
        assert!(store.get("b").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn items_come_in_pages_with_a_failed_filter() {
        let store = SqliteStore::in_memory().unwrap();
        for (i, status) in [
            Status::Copied,
            Status::Failed,
            Status::Skipped,
            Status::Failed,
        ]
        .into_iter()
        .enumerate()
        {
            store
                .put_item(&ItemRecord {
                    run_id: "r".into(),
                    source: format!("s/{i}"),
                    dest: format!("d/{i}"),
                    status,
                    source_digest: None,
                    dest_digest: None,
                    attempts: 1,
                    error: None,
                    bytes: 0,
                    started_at: None,
                    ended_at: None,
                    version: 1,
                    line: None,
                    resumed: None,
                    waiting_until: None,
                    reason: None,
                })
                .await
                .unwrap();
        }
        let page = |failed_only, after: Option<(&str, &str)>, limit| ItemPage {
            failed_only,
            after: after.map(|(s, d)| (s.to_string(), d.to_string())),
            limit,
        };
        let sources =
            |items: Vec<ItemRecord>| items.into_iter().map(|i| i.source).collect::<Vec<_>>();
        let p = async |f, a, l| store.items("r", &page(f, a, l)).await.unwrap();
        assert_eq!(sources(p(false, None, 2).await), ["s/0", "s/1"]);
        assert_eq!(
            sources(p(false, Some(("s/1", "d/1")), 2).await),
            ["s/2", "s/3"]
        );
        assert!(p(false, Some(("s/3", "d/3")), 2).await.is_empty());
        assert_eq!(sources(p(true, None, 10).await), ["s/1", "s/3"]);
        assert_eq!(sources(p(true, Some(("s/1", "d/1")), 10).await), ["s/3"]);
    }

    #[tokio::test]
    async fn runs_come_newest_first_in_pages_after_a_cursor_run() {
        let store = SqliteStore::in_memory().unwrap();
        let t0 = Utc::now();
        // r3 and r4 start at one instant: the run id breaks the tie.
        for (id, mins) in [("r1", 0), ("r2", 1), ("r3", 2), ("r4", 2), ("r5", 3)] {
            let at = t0 + chrono::Duration::minutes(mins);
            store.note_run("t", id, at).await.unwrap();
            store
                .put_run(&RunRecord {
                    run_id: id.into(),
                    source: "s".into(),
                    dest: "d".into(),
                    dry_run: false,
                    started_at: at,
                    ended_at: None,
                    copied: 0,
                    skipped: 0,
                    failed: 0,
                    bytes: 0,
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        store.note_run("other", "x", t0).await.unwrap();
        let ids = |runs: Vec<RunRecord>| runs.into_iter().map(|r| r.run_id).collect::<Vec<_>>();
        assert_eq!(ids(store.runs("t", None, 2).await.unwrap()), ["r5", "r4"]);
        assert_eq!(
            ids(store.runs("t", Some("r4"), 2).await.unwrap()),
            ["r3", "r2"]
        );
        assert_eq!(ids(store.runs("t", Some("r2"), 2).await.unwrap()), ["r1"]);
        assert!(
            store.runs("t", Some("x"), 2).await.unwrap().is_empty(),
            "another task's run"
        );
    }

    impl Task {
        fn clone_with_times(&self, from: &Task) -> Task {
            let mut t = self.clone();
            t.created_at = from.created_at;
            t.updated_at = from.updated_at;
            t
        }
    }
}
