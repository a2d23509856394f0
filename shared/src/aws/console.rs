//! The console's edges on AWS: [`SfnRunner`] starts a task's run as an execution of the
//! stack's state machine of its kind (images, or the objects diff) with `{"task": NAME}`; [`Schedules`] keeps one EventBridge
//! Scheduler schedule per task (in the stack's schedule group, started with the stack's
//! scheduler role, which may only start the stack's state machines); [`ScheduledTasks`]
//! is the task store the console uses there: the DynamoDB store, with each create, update
//! and delete carried to the task's schedule.

use crate::console::runner::{Live, Runner, StartError};
use crate::images::sync::new_run_id;
use crate::status::StoreError;
use crate::tasks::run::Only;
use crate::tasks::store::{ItemPage, TaskStore, TaskStoreError};
use crate::tasks::{Kind, Task};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::VecDeque;
use std::sync::Mutex;

/// What a task's execution is started with (a run now, or its schedule's).
pub fn execution_input(task: &str, only_lines: Option<&str>) -> serde_json::Value {
    let mut input = serde_json::json!({ "task": task });
    if let Some(text) = only_lines {
        input["images"] = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .into();
    }
    input
}

/// The most a retry's failed keys may take in an execution's input (Step Functions takes
/// 256 KiB in all).
pub const MAX_RETRY_KEYS_BYTES: usize = 200 * 1024;

/// The stack's state machine that runs tasks of `kind`; an objects task on a stack
/// without the objects half is refused by name.
fn machine_for<'a>(
    kind: Kind,
    images: &'a str,
    objects: Option<&'a str>,
    task: &str,
) -> Result<&'a str, String> {
    match kind {
        Kind::Images => Ok(images),
        Kind::Objects => objects.ok_or_else(|| {
            format!(
                "task {task:?} is an objects task, and this stack has no objects state machine (deploy it with ObjectSourceBucket and ObjectDestBucket)"
            )
        }),
    }
}

/// Runs as Step Functions executions of the stack's state machines: images tasks on the
/// image state machine, objects tasks on the objects-diff state machine.
pub struct SfnRunner {
    pub client: aws_sdk_sfn::Client,
    /// `IMAGES_STATE_MACHINE_ARN`.
    pub images_machine: String,
    /// `OBJECTS_STATE_MACHINE_ARN` (none when the stack has no objects half).
    pub objects_machine: Option<String>,
    /// Runs this container started lately (run id, task): shown as waiting until the
    /// run's first function writes its record.
    started: Mutex<VecDeque<(String, String)>>,
}

impl SfnRunner {
    pub fn new(
        client: aws_sdk_sfn::Client,
        images_machine: impl Into<String>,
        objects_machine: Option<String>,
    ) -> Self {
        Self {
            client,
            images_machine: images_machine.into(),
            objects_machine,
            started: Mutex::default(),
        }
    }
}

#[async_trait]
impl Runner for SfnRunner {
    async fn start(&self, task: &Task, only: Option<Only>) -> Result<String, StartError> {
        let machine = machine_for(
            task.kind(),
            &self.images_machine,
            self.objects_machine.as_deref(),
            &task.name,
        )
        .map_err(StartError::Refused)?;
        // The execution's name is the run id (list-images records the run under it; the
        // objects diff is told it in the input).
        let run_id = new_run_id();
        let (list, keys) = match only {
            None => (None, None),
            Some(Only::List(l)) => (Some(l), None),
            Some(Only::Keys(k)) => (None, Some(k)),
        };
        let mut input = execution_input(&task.name, list.as_deref());
        if task.kind() == Kind::Objects {
            input["run_id"] = run_id.clone().into();
            if let Some(keys) = keys {
                // An execution's input holds 256 KiB: a longer retry diffs the whole task
                // (which copies what still differs, the failed objects among them).
                let text = serde_json::to_string(&keys).unwrap_or_default();
                if text.len() <= MAX_RETRY_KEYS_BYTES {
                    input["keys"] = keys.into();
                } else {
                    tracing::warn!(task = %task.name, keys = keys.len(), "too many failed keys for one execution's input; the retry diffs the whole task");
                }
            }
        }
        self.client
            .start_execution()
            .state_machine_arn(machine)
            .name(&run_id)
            .input(input.to_string())
            .send()
            .await
            .map_err(|e| {
                StartError::Refused(format!(
                    "StartExecution of task {:?}: {}",
                    task.name,
                    aws_sdk_sfn::error::DisplayErrorContext(&e)
                ))
            })?;
        tracing::info!(task = %task.name, run_id, "execution started");
        let mut s = self.started.lock().unwrap();
        s.push_back((run_id.clone(), task.name.clone()));
        while s.len() > 100 {
            s.pop_front();
        }
        Ok(run_id)
    }

    /// Step Functions runs executions side by side; the console does not hold them back.
    fn running(&self, _task: &str) -> Option<String> {
        None
    }

    fn live(&self, run_id: &str) -> Option<Live> {
        self.started
            .lock()
            .unwrap()
            .iter()
            .find(|(id, _)| id == run_id)
            .map(|(_, task)| Live {
                task: task.clone(),
                waiting: true,
                ..Live::default()
            })
    }
}

/// One EventBridge Scheduler schedule per task, named after it, in the stack's group.
pub struct Schedules {
    pub client: aws_sdk_scheduler::Client,
    /// `SCHEDULE_GROUP`.
    pub group: String,
    /// `SCHEDULER_ROLE_ARN`: the role the schedules start executions with.
    pub role_arn: String,
    /// `IMAGES_STATE_MACHINE_ARN`.
    pub images_machine: String,
    /// `OBJECTS_STATE_MACHINE_ARN`.
    pub objects_machine: Option<String>,
}

fn remote(what: &str, e: impl std::fmt::Display) -> TaskStoreError {
    TaskStoreError::Store(StoreError::Remote(format!(
        "EventBridge Scheduler {what}: {e}"
    )))
}

impl Schedules {
    /// Makes the task's schedule what the task says: created or updated (enabled or
    /// disabled), or removed when the task has none. It starts the state machine of the
    /// task's kind.
    pub async fn put(&self, t: &Task) -> Result<(), TaskStoreError> {
        use aws_sdk_scheduler::types::{
            FlexibleTimeWindow, FlexibleTimeWindowMode, ScheduleState, Target,
        };
        let Some(expr) = t.schedule.as_deref() else {
            return self.delete(&t.name).await;
        };
        let machine = machine_for(
            t.kind(),
            &self.images_machine,
            self.objects_machine.as_deref(),
            &t.name,
        )
        .map_err(|why| TaskStoreError::Store(StoreError::Remote(why)))?;
        let target = Target::builder()
            .arn(machine)
            .role_arn(&self.role_arn)
            .input(execution_input(&t.name, None).to_string())
            .build()
            .map_err(|e| remote("target", e))?;
        let window = FlexibleTimeWindow::builder()
            .mode(FlexibleTimeWindowMode::Off)
            .build()
            .map_err(|e| remote("window", e))?;
        let state = if t.enabled {
            ScheduleState::Enabled
        } else {
            ScheduleState::Disabled
        };
        let created = self
            .client
            .create_schedule()
            .group_name(&self.group)
            .name(&t.name)
            .schedule_expression(expr)
            .schedule_expression_timezone("UTC")
            .flexible_time_window(window.clone())
            .target(target.clone())
            .state(state.clone())
            .description(format!("transfer-hub task {}", t.name))
            .send()
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|x| x.is_conflict_exception()) =>
            {
                self.client
                    .update_schedule()
                    .group_name(&self.group)
                    .name(&t.name)
                    .schedule_expression(expr)
                    .schedule_expression_timezone("UTC")
                    .flexible_time_window(window)
                    .target(target)
                    .state(state)
                    .description(format!("transfer-hub task {}", t.name))
                    .send()
                    .await
                    .map_err(|e| {
                        remote(
                            "UpdateSchedule",
                            aws_sdk_scheduler::error::DisplayErrorContext(&e),
                        )
                    })?;
                Ok(())
            }
            Err(e) => Err(remote(
                "CreateSchedule",
                aws_sdk_scheduler::error::DisplayErrorContext(&e),
            )),
        }
    }

    /// Removes the task's schedule (none is fine).
    pub async fn delete(&self, name: &str) -> Result<(), TaskStoreError> {
        match self
            .client
            .delete_schedule()
            .group_name(&self.group)
            .name(name)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|x| x.is_resource_not_found_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(remote(
                "DeleteSchedule",
                aws_sdk_scheduler::error::DisplayErrorContext(&e),
            )),
        }
    }
}

/// The console's task store on AWS: `inner` (the DynamoDB store), each write carried to
/// the task's schedule.
pub struct ScheduledTasks<S> {
    pub inner: S,
    pub schedules: Schedules,
}

#[async_trait]
impl<S: TaskStore> TaskStore for ScheduledTasks<S> {
    async fn create(&self, t: &Task) -> Result<(), TaskStoreError> {
        self.inner.create(t).await?;
        if let Err(e) = self.schedules.put(t).await {
            // No task without its schedule: take it back, and say why.
            let _ = self.inner.delete(&t.name).await;
            return Err(e);
        }
        Ok(())
    }

    async fn update(&self, t: &Task) -> Result<(), TaskStoreError> {
        self.inner.update(t).await?;
        self.schedules.put(t).await
    }

    async fn get(&self, name: &str) -> Result<Option<Task>, TaskStoreError> {
        self.inner.get(name).await
    }

    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<Task>, TaskStoreError> {
        self.inner.list(after, limit).await
    }

    async fn delete(&self, name: &str) -> Result<bool, TaskStoreError> {
        let gone = self.inner.delete(name).await?;
        self.schedules.delete(name).await?;
        Ok(gone)
    }

    async fn note_run(
        &self,
        task: &str,
        run_id: &str,
        started_at: DateTime<Utc>,
    ) -> Result<(), TaskStoreError> {
        self.inner.note_run(task, run_id, started_at).await
    }

    async fn runs(
        &self,
        task: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::status::RunRecord>, TaskStoreError> {
        self.inner.runs(task, before, limit).await
    }

    async fn task_of(&self, run_id: &str) -> Result<Option<String>, TaskStoreError> {
        self.inner.task_of(run_id).await
    }

    async fn last_scheduled(&self, task: &str) -> Result<Option<DateTime<Utc>>, TaskStoreError> {
        self.inner.last_scheduled(task).await
    }

    async fn set_last_scheduled(
        &self,
        task: &str,
        at: DateTime<Utc>,
    ) -> Result<(), TaskStoreError> {
        self.inner.set_last_scheduled(task, at).await
    }

    async fn run(&self, run_id: &str) -> Result<Option<crate::status::RunRecord>, TaskStoreError> {
        self.inner.run(run_id).await
    }

    async fn items(
        &self,
        run_id: &str,
        page: &ItemPage,
    ) -> Result<Vec<crate::status::ItemRecord>, TaskStoreError> {
        self.inner.items(run_id, page).await
    }
}

#[cfg(test)]
mod tests {
    use super::execution_input;

    #[test]
    fn a_run_of_a_task_names_it_and_a_retry_gives_its_lines() {
        assert_eq!(
            execution_input("web", None),
            serde_json::json!({"task": "web"})
        );
        assert_eq!(
            execution_input("web", Some("a:1\n\n b:2 \n")),
            serde_json::json!({"task": "web", "images": ["a:1", "b:2"]})
        );
        // What list-images reads.
        let input: crate::images::workflow::RunInput =
            serde_json::from_value(execution_input("web", Some("a:1"))).unwrap();
        assert_eq!(input.task.as_deref(), Some("web"));
    }
}
