//! Runs tasks for the console and the scheduler on one machine: at most one run per task
//! at a time, runs of different tasks side by side under a global limit, each run linked
//! to its task before it starts. [`Runner`] is the edge (on AWS: StartExecution).

use crate::images::sync::{Progress, new_run_id};
use crate::interrupt::{self, Stop, StopHandle};
use crate::status::{ItemRecord, SqliteStore, Status};
use crate::tasks::Task;
use crate::tasks::run::{Only, RunContext, run_task};
use crate::tasks::schedule::Schedule;
use crate::tasks::store::TaskStore;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// Why a run did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("task {0:?} is running already (run {1}); one run of a task at a time")]
    Busy(String, String),
    #[error("the server is shutting down; no new runs start")]
    ShuttingDown,
    #[error("{0}")]
    Refused(String),
}

/// What the console shows of a run still going.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Live {
    pub task: String,
    /// Still waiting for a slot under the global limit.
    pub waiting: bool,
    pub planned: Option<(usize, usize)>,
    pub done: usize,
    pub failed: usize,
}

/// Starts task runs.
#[async_trait]
pub trait Runner: Send + Sync {
    /// Starts a run of the task (only what `only` names, when given: "retry failed"); its
    /// run id.
    async fn start(&self, task: &Task, only: Option<Only>) -> Result<String, StartError>;
    /// The run of the task going now, if any.
    fn running(&self, task: &str) -> Option<String>;
    /// Progress of a run going now.
    fn live(&self, run_id: &str) -> Option<Live>;
}

struct LiveProgress {
    run_id: String,
    runs: Arc<Mutex<HashMap<String, Live>>>,
}

impl Progress for LiveProgress {
    fn planned(&self, to_copy: usize, total: usize) {
        if let Some(l) = self.runs.lock().unwrap().get_mut(&self.run_id) {
            l.planned = Some((to_copy, total));
        }
    }
    fn finished(&self, item: &ItemRecord) {
        if let Some(l) = self.runs.lock().unwrap().get_mut(&self.run_id) {
            l.done += 1;
            if item.status == Status::Failed {
                l.failed += 1;
            }
        }
    }
}

/// The one-machine runner: tokio tasks in this process.
pub struct LocalRunner {
    store: Arc<SqliteStore>,
    limit: Arc<Semaphore>,
    /// run id → progress, for the runs going now.
    runs: Arc<Mutex<HashMap<String, Live>>>,
    closed: Mutex<bool>,
    stop: Stop,
    stop_handle: StopHandle,
    handles: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl LocalRunner {
    /// `limit`: runs going at once, all tasks together.
    pub fn new(store: Arc<SqliteStore>, limit: usize) -> Arc<Self> {
        let (stop_handle, stop) = interrupt::channel();
        Arc::new(Self {
            store,
            limit: Arc::new(Semaphore::new(limit.max(1))),
            runs: Arc::default(),
            closed: Mutex::new(false),
            stop,
            stop_handle,
            handles: Mutex::default(),
        })
    }

    /// Starts no more runs; waits for the running ones up to `grace`, then stops them (their
    /// copies are killed, unfinished items recorded as interrupted, uploads stay resumable)
    /// and waits for them to record that.
    pub async fn shutdown(&self, grace: std::time::Duration, why: &'static str) {
        *self.closed.lock().unwrap() = true;
        let handles: Vec<_> = std::mem::take(&mut *self.handles.lock().unwrap());
        let all = futures::future::join_all(handles);
        tokio::pin!(all);
        if tokio::time::timeout(grace, &mut all).await.is_err() {
            tracing::warn!(
                ?grace,
                "runs still going after the grace time: stopping them"
            );
            self.stop_handle.stop(why);
            all.await;
        }
    }

    /// Starts the tasks whose schedule came due (a schedule missed while the server was
    /// down is due once). Returns the names started.
    pub async fn tick(&self, now: DateTime<Utc>) -> Vec<String> {
        let mut started = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = match self.store.list(after.as_deref(), 200).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "cannot list tasks");
                    return started;
                }
            };
            let Some(last) = page.last() else { break };
            after = Some(last.name.clone());
            for t in page {
                match due(&*self.store, &t, now).await {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::error!(task = %t.name, error = %e, "cannot read the task's schedule");
                        continue;
                    }
                }
                // Counted as fired even when busy: a run already going covers this one.
                if let Err(e) = self.store.set_last_scheduled(&t.name, now).await {
                    tracing::error!(task = %t.name, error = %e, "cannot record the schedule");
                    continue;
                }
                match self.start(&t, None).await {
                    Ok(run_id) => {
                        tracing::info!(task = %t.name, run_id, "started on schedule");
                        started.push(t.name.clone());
                    }
                    Err(e) => tracing::info!(task = %t.name, "{e}"),
                }
            }
        }
        started
    }
}

/// The next scheduled run of a task (none when disabled or unscheduled).
pub async fn next_run(
    store: &dyn TaskStore,
    t: &Task,
) -> Result<Option<DateTime<Utc>>, crate::tasks::store::TaskStoreError> {
    if !t.enabled {
        return Ok(None);
    }
    let Some(s) = t.schedule.as_deref().and_then(|s| Schedule::parse(s).ok()) else {
        return Ok(None);
    };
    let last = store.last_scheduled(&t.name).await?;
    let from = last.map_or(t.updated_at, |l| l.max(t.updated_at));
    Ok(s.next_after(from, t.updated_at))
}

async fn due(
    store: &dyn TaskStore,
    t: &Task,
    now: DateTime<Utc>,
) -> Result<bool, crate::tasks::store::TaskStoreError> {
    Ok(next_run(store, t).await?.is_some_and(|n| n <= now))
}

#[async_trait]
impl Runner for LocalRunner {
    async fn start(&self, task: &Task, only: Option<Only>) -> Result<String, StartError> {
        if *self.closed.lock().unwrap() {
            return Err(StartError::ShuttingDown);
        }
        let run_id = {
            let mut runs = self.runs.lock().unwrap();
            if let Some((id, _)) = runs.iter().find(|(_, l)| l.task == task.name) {
                return Err(StartError::Busy(task.name.clone(), id.clone()));
            }
            let run_id = new_run_id();
            runs.insert(
                run_id.clone(),
                Live {
                    task: task.name.clone(),
                    waiting: true,
                    ..Live::default()
                },
            );
            run_id
        };
        let store = self.store.clone();
        let limit = self.limit.clone();
        let runs = self.runs.clone();
        let stop = self.stop.clone();
        let task = task.clone();
        let id = run_id.clone();
        // The object pipeline's future is not Send: each run drives its own future on a
        // blocking-pool thread, on this runtime.
        let rt = tokio::runtime::Handle::current();
        let handle = tokio::task::spawn_blocking(move || {
            rt.block_on(async move {
            // Linked before it waits, so the console finds the run at once.
            if let Err(e) = store.note_run(&task.name, &id, Utc::now()).await {
                tracing::error!(task = %task.name, error = %e, "cannot link the run to its task");
            }
            let _permit = limit.acquire_owned().await.expect("never closed");
            if let Some(l) = runs.lock().unwrap().get_mut(&id) {
                l.waiting = false;
            }
            let progress = LiveProgress {
                run_id: id.clone(),
                runs: runs.clone(),
            };
            let ctx = RunContext {
                run_id: id.clone(),
                status: &*store,
                ledger: &*store,
                progress: &progress,
                stop,
                dry_run: false,
            };
            match run_task(&task, &*store, &ctx, only).await {
                Ok(r) => tracing::info!(
                    task = %task.name, run_id = %id, copied = r.run.copied,
                    skipped = r.run.skipped, failed = r.run.failed, "run finished"
                ),
                Err(e) => {
                    tracing::error!(task = %task.name, run_id = %id, error = %e, "run failed");
                    record_start_failure(&store, &task, &id, &e.to_string()).await;
                }
            }
            runs.lock().unwrap().remove(&id);
        })
        });
        let mut handles = self.handles.lock().unwrap();
        handles.retain(|h| !h.is_finished());
        handles.push(handle);
        Ok(run_id)
    }

    fn running(&self, task: &str) -> Option<String> {
        self.runs
            .lock()
            .unwrap()
            .iter()
            .find(|(_, l)| l.task == task)
            .map(|(id, _)| id.clone())
    }

    fn live(&self, run_id: &str) -> Option<Live> {
        self.runs.lock().unwrap().get(run_id).cloned()
    }
}

/// A run that could not start (bad auth file, no ECR login…) still gets a run record with
/// one failed item saying why, so the console shows it.
async fn record_start_failure(store: &SqliteStore, task: &Task, run_id: &str, why: &str) {
    use crate::retry::{ErrorClass, ItemError};
    use crate::status::{RunRecord, StatusStore};
    let now = Utc::now();
    let run = RunRecord {
        run_id: run_id.into(),
        source: task.source().into(),
        dest: task.dest().into(),
        dry_run: false,
        started_at: now,
        ended_at: Some(now),
        copied: 0,
        skipped: 0,
        failed: 1,
        bytes: 0,
        kind: match task.kind() {
            crate::tasks::Kind::Images => crate::status::RunKind::Images,
            crate::tasks::Kind::Objects => crate::status::RunKind::Objects,
        },
        result: crate::status::RunResult::Failed,
        error: Some(why.to_string()),
        to_copy: None,
        filtered: 0,
        conflicts: 0,
        deleted: 0,
        archived: 0,
        restoring: 0,
        waiting: 0,
        deferred: 0,
    };
    let item = ItemRecord {
        run_id: run_id.into(),
        source: task.source().into(),
        dest: task.dest().into(),
        status: Status::Failed,
        source_digest: None,
        dest_digest: None,
        attempts: 0,
        error: Some(ItemError::new(ErrorClass::BadInput, why)),
        bytes: 0,
        started_at: Some(now),
        ended_at: Some(now),
        version: 2,
        line: None,
        resumed: None,
        waiting_until: None,
        reason: None,
    };
    if store.put_run(&run).await.is_err() || store.put_item(&item).await.is_err() {
        tracing::error!(run_id, "cannot record the run's failure");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::{Kind, default_fields};

    fn task(schedule: &str, saved: DateTime<Utc>) -> Task {
        let mut f = default_fields(Kind::Images);
        f.insert("source".into(), "127.0.0.1:1".into());
        f.insert("dest".into(), "127.0.0.1:2".into());
        f.insert("list".into(), "a:1".into());
        f.insert("schedule".into(), schedule.into());
        f.insert("retries".into(), "0".into());
        Task::from_fields("t", Kind::Images, &f, saved).unwrap()
    }

    #[tokio::test]
    async fn a_schedule_missed_while_down_is_due_once() {
        let store = SqliteStore::in_memory().unwrap();
        let now = Utc::now();
        let t = task("rate(1 hour)", now - chrono::Duration::days(3));
        store.create(&t).await.unwrap();
        assert!(due(&store, &t, now).await.unwrap(), "72 runs missed: due");
        store.set_last_scheduled("t", now).await.unwrap();
        assert!(!due(&store, &t, now).await.unwrap(), "once");
        let next = next_run(&store, &t).await.unwrap().unwrap();
        assert!(next > now && next - now <= chrono::Duration::hours(1));
        assert!(
            due(&store, &t, next).await.unwrap(),
            "due again at its next run"
        );
    }

    #[tokio::test]
    async fn disabled_or_unscheduled_tasks_are_never_due() {
        let store = SqliteStore::in_memory().unwrap();
        let old = Utc::now() - chrono::Duration::days(3);
        let mut t = task("rate(1 hour)", old);
        t.enabled = false;
        assert_eq!(next_run(&store, &t).await.unwrap(), None);
        let mut t = task("", old);
        t.schedule = None;
        assert_eq!(next_run(&store, &t).await.unwrap(), None);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn one_run_per_task_at_a_time() {
        let store = Arc::new(SqliteStore::in_memory().unwrap());
        let runner = LocalRunner::new(store.clone(), 1);
        let t = task("", Utc::now());
        store.create(&t).await.unwrap();
        // Hold the only slot so the run waits and stays "running".
        let held = runner.limit.clone().acquire_owned().await.unwrap();
        let id = runner.start(&t, None).await.unwrap();
        assert_eq!(runner.running("t").as_deref(), Some(id.as_str()));
        assert!(matches!(
            runner.start(&t, None).await,
            Err(StartError::Busy(_, ref other)) if *other == id
        ));
        drop(held);
        runner
            .shutdown(std::time::Duration::from_secs(60), "test")
            .await;
        assert!(matches!(
            runner.start(&t, None).await,
            Err(StartError::ShuttingDown)
        ));
        assert_eq!(runner.running("t"), None);
    }
}
