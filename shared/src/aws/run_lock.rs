//! One run of a task at a time on AWS, as `transfer-hub serve` keeps it on one machine.
//!
//! A run of a task claims the task's lock item in the tasks table (`pk = "run-lock"`,
//! `sk = <task>`, holding the run id and its execution's ARN) with a conditional write
//! before it lists anything, and gives it back when it ends. A second execution of the task
//! (run now twice, a schedule while a run is going) finds the lock held by a running
//! execution and stops at once, its run recorded as refused. A lock whose execution is no
//! longer running (stopped, failed, timed out: it never gave the lock back) is taken over,
//! with a write conditional on that same holder, so two newcomers never both win.

use crate::retry::{ErrorClass, ItemError, aws_error};
use crate::status::dynamodb::{Item, conditional, get_s, s};
use chrono::Utc;

/// The partition key of the lock items (the tasks themselves are under `"task"`).
pub const LOCK_PK: &str = "run-lock";

/// The run that holds a task's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub run_id: String,
    /// Its Step Functions execution (ARN).
    pub execution: Option<String>,
    /// When it claimed the lock (RFC 3339).
    pub since: String,
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This run holds the lock now.
    Claimed,
    /// Another run, still going, holds it.
    Busy(Holder),
}

impl Holder {
    /// The refusal of a run of `task` while this one holds the lock.
    pub fn refusal(&self, task: &str) -> ItemError {
        ItemError::new(
            ErrorClass::Conflict,
            format!(
                "task {task:?} already has a run going (run {} since {}); one run of a task at a time — this one did nothing",
                self.run_id, self.since
            ),
        )
    }
}

fn holder(i: &Item) -> Holder {
    Holder {
        run_id: get_s(i, "run").unwrap_or_default(),
        execution: get_s(i, "execution"),
        since: get_s(i, "since").unwrap_or_default(),
    }
}

/// The lock of the tasks in `table`.
pub struct RunLock<'a> {
    pub dynamodb: &'a aws_sdk_dynamodb::Client,
    pub table: &'a str,
}

impl RunLock<'_> {
    /// Writes the lock for `run_id` when `condition` holds; false when it does not.
    async fn put(
        &self,
        task: &str,
        run_id: &str,
        execution: Option<&str>,
        condition: &str,
        expected: &str,
    ) -> Result<bool, ItemError> {
        let mut req = self
            .dynamodb
            .put_item()
            .table_name(self.table)
            .item("pk", s(LOCK_PK))
            .item("sk", s(task))
            .item("run", s(run_id))
            .item("since", s(Utc::now().to_rfc3339()))
            .condition_expression(condition)
            .expression_attribute_names("#run", "run")
            .expression_attribute_values(":run", s(expected));
        if let Some(e) = execution {
            req = req.item("execution", s(e));
        }
        conditional("PutItem run lock", req.send().await)
            .map_err(|e| ItemError::new(ErrorClass::Retryable, e.to_string()))
    }

    /// The lock for `run_id` when it is free or already this run's.
    async fn put_if_free(
        &self,
        task: &str,
        run_id: &str,
        execution: Option<&str>,
    ) -> Result<bool, ItemError> {
        let free = "attribute_not_exists(sk) OR #run = :run";
        self.put(task, run_id, execution, free, run_id).await
    }

    async fn current(&self, task: &str) -> Result<Option<Holder>, ItemError> {
        let out = self
            .dynamodb
            .get_item()
            .table_name(self.table)
            .key("pk", s(LOCK_PK))
            .key("sk", s(task))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| aws_error("GetItem run lock", e))?;
        Ok(out.item().map(holder))
    }

    /// Claims `task`'s lock for `run_id` (its execution: `execution`). A holder whose
    /// execution `sfn` no longer reports running is taken over.
    pub async fn claim(
        &self,
        sfn: &aws_sdk_sfn::Client,
        task: &str,
        run_id: &str,
        execution: Option<&str>,
    ) -> Result<Claim, ItemError> {
        // Free, or already this run's (a retried step).
        if self.put_if_free(task, run_id, execution).await? {
            return Ok(Claim::Claimed);
        }
        for _ in 0..3 {
            let Some(h) = self.current(task).await? else {
                // Given back meanwhile.
                if self.put_if_free(task, run_id, execution).await? {
                    return Ok(Claim::Claimed);
                }
                continue;
            };
            if h.run_id == run_id {
                return Ok(Claim::Claimed);
            }
            if running(sfn, h.execution.as_deref()).await? {
                return Ok(Claim::Busy(h));
            }
            tracing::warn!(task, holder = %h.run_id, "the run holding the task's lock is not running; taking the lock over");
            if self
                .put(task, run_id, execution, "#run = :run", &h.run_id)
                .await?
            {
                return Ok(Claim::Claimed);
            }
        }
        Err(ItemError::new(
            ErrorClass::Retryable,
            format!("the lock of task {task:?} kept changing hands"),
        ))
    }

    /// Gives `task`'s lock back, if `run_id` holds it (a lock another run took over stays).
    pub async fn release(&self, task: &str, run_id: &str) -> Result<(), ItemError> {
        let r = self
            .dynamodb
            .delete_item()
            .table_name(self.table)
            .key("pk", s(LOCK_PK))
            .key("sk", s(task))
            .condition_expression("#run = :run")
            .expression_attribute_names("#run", "run")
            .expression_attribute_values(":run", s(run_id))
            .send()
            .await;
        conditional("DeleteItem run lock", r)
            .map(|_| ())
            .map_err(|e| ItemError::new(ErrorClass::Retryable, e.to_string()))
    }
}

/// Whether the execution is still running. No execution named (an old lock): running, so
/// nothing is taken from a run that may be going; an execution that does not exist: not.
async fn running(sfn: &aws_sdk_sfn::Client, execution: Option<&str>) -> Result<bool, ItemError> {
    let Some(arn) = execution else {
        return Ok(true);
    };
    match sfn.describe_execution().execution_arn(arn).send().await {
        Ok(d) => Ok(d.status() == &aws_sdk_sfn::types::ExecutionStatus::Running),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_execution_does_not_exist()) =>
        {
            Ok(false)
        }
        Err(e) => Err(aws_error("DescribeExecution of the lock's holder", e)),
    }
}
