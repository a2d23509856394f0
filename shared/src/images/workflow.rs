//! The Step Functions payloads of the AWS image suite, in one place: nothing else is
//! serialized across a state boundary. Payloads stay small (the limit is 256 KiB): image
//! lists longer than [`INLINE_LIMIT_BYTES`] travel as an S3 pointer. Pure: serde only.

use crate::images::plan::ImageName;
use crate::images::reference::{Digest, ReferenceError, parse};
use crate::retry::ItemError;
use serde::{Deserialize, Serialize};

/// Lists whose JSON is larger than this go to S3 and the state carries a pointer.
pub const INLINE_LIMIT_BYTES: usize = 64 * 1024;

/// Execution input. The daily rule sends `{}`; a run started by hand may name another
/// list parameter or give a few images (lines in the selection-list format).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunInput {
    /// SSM parameter holding the selection list (instead of the stack's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_parameter: Option<String>,
    /// Selection lines to use instead of any parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<String>>,
    /// A task of the tasks table (`{"task": NAME}`: the console's "run now" and its
    /// schedules): its source, destination, selection and options instead of the stack's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
}

/// `list-images` input: the run id (the execution name) and the execution input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRequest {
    pub run_id: String,
    /// The execution's ARN (`$$.Execution.Id`): it holds its task's run lock by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<String>,
    #[serde(default)]
    pub input: RunInput,
}

/// Where a large list was put.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Pointer {
    pub bucket: String,
    pub key: String,
}

/// A list that is either inline or in S3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de>"))]
pub struct Batch<T> {
    pub count: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<T>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Pointer>,
}

/// One image to consider: source and destination references (`host/repo:tag[@digest]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImageJob {
    pub source: String,
    pub dest: String,
}

/// `list-images` output, `find-diff` input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    pub run_id: String,
    pub images: Batch<ImageJob>,
    /// Selection lines or listings that failed (already recorded in the status table).
    pub failed: usize,
    /// The task this run is of, if the execution named one (find-diff reads it too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
}

/// One copy for a Fargate task: what, where, and the digest it must arrive with.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CopyTask {
    pub source: String,
    pub dest: String,
    pub source_digest: String,
}

/// `find-diff` output: only the images that must move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diff {
    pub run_id: String,
    pub copies: Batch<CopyTask>,
    pub skipped: usize,
    pub failed: usize,
}

/// `dispatch-fargate` input: one Map item with the task token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchRequest {
    pub task_token: String,
    pub run_id: String,
    pub task: CopyTask,
}

/// `dispatch-fargate` input when a copy timed out (`{"action": "stop", "run_id", "task"}`):
/// stop that image's copy task before the retry starts another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopRequest {
    pub action: StopAction,
    pub run_id: String,
    pub task: CopyTask,
}

/// The one action of a [`StopRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StopAction {
    Stop,
}

/// What `dispatch-fargate` is asked: start a copy task, or stop a timed-out one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DispatchInput {
    Stop(StopRequest),
    Start(DispatchRequest),
}

/// What the copy worker reports with `SendTaskSuccess`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyResult {
    pub source: String,
    pub dest: String,
    pub source_digest: String,
    pub dest_digest: String,
    pub attempts: u32,
    pub bytes: u64,
}

/// The `Error`/`Cause` pair a `Catch` hands on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaughtError {
    #[serde(rename = "Error")]
    pub error: String,
    /// Absent or null for some errors (a heartbeat timeout has no cause).
    #[serde(rename = "Cause", default)]
    pub cause: Option<String>,
}

/// `record-status` input: one image's final result, or the end of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RecordRequest {
    Item {
        run_id: String,
        task: CopyTask,
        #[serde(default)]
        result: Option<CopyResult>,
        #[serde(default)]
        error: Option<CaughtError>,
        /// When the recording state was entered (`$$.State.EnteredTime`): the write's
        /// version, so a late delivery of an older result never wins.
        #[serde(default)]
        at: Option<String>,
    },
    Run {
        run_id: String,
        /// The execution's input (`$$.Execution.Input`): a task's run gives its lock back.
        #[serde(default)]
        input: RunInput,
    },
}

/// `record-status` output for a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_id: String,
    pub copied: u64,
    pub skipped: u64,
    pub failed: u64,
    pub notified: bool,
}

/// Parses `host/repo[:tag][@digest]` (the host is required) into an [`ImageName`].
pub fn image_name(s: &str) -> Result<ImageName, ReferenceError> {
    let r = parse(s)?;
    let host = r.domain.clone().ok_or_else(|| ReferenceError {
        text: s.to_string(),
        reason: "a registry host is required here (`host/repo:tag`)".into(),
    })?;
    Ok(ImageName {
        host,
        repo: r.path,
        tag: r.tag,
        digest: r.digest,
    })
}

impl CopyTask {
    /// The source, destination and expected digest, parsed.
    pub fn parts(&self) -> Result<(ImageName, ImageName, Digest), ItemError> {
        let bad =
            |e: ReferenceError| ItemError::new(crate::retry::ErrorClass::BadInput, e.to_string());
        let digest: Digest = self.source_digest.parse().map_err(bad)?;
        Ok((
            image_name(&self.source).map_err(bad)?,
            image_name(&self.dest).map_err(bad)?,
            digest,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_input_accepts_the_documented_shapes_and_refuses_typos() {
        let empty: RunInput = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, RunInput::default());
        let manual: RunInput =
            serde_json::from_str(r#"{"images": ["app:1", "quay.io/org/x:ALL_TAGS"]}"#).unwrap();
        assert_eq!(manual.images.unwrap().len(), 2);
        let e = serde_json::from_str::<RunInput>(r#"{"image": ["x"]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("image"), "{e}");
    }

    #[test]
    fn record_requests_are_tagged() {
        let r: RecordRequest = serde_json::from_str(r#"{"kind": "run", "run_id": "r"}"#).unwrap();
        assert_eq!(
            r,
            RecordRequest::Run {
                run_id: "r".into(),
                input: RunInput::default()
            }
        );
        let i: RecordRequest = serde_json::from_str(
            r#"{"kind": "item", "run_id": "r", "task": {"source": "a/b:1", "dest": "c/b:1", "source_digest": "sha256:x"},
                "error": {"Error": "AuthDenied", "Cause": "401"}}"#,
        )
        .unwrap();
        assert!(
            matches!(i, RecordRequest::Item { error: Some(CaughtError { ref error, .. }), .. } if error == "AuthDenied")
        );
    }

    #[test]
    fn image_names_need_a_host() {
        let n = image_name("127.0.0.1:5000/team/app:1").unwrap();
        assert_eq!(
            (n.host.as_str(), n.repo.as_str(), n.tag.as_deref()),
            ("127.0.0.1:5000", "team/app", Some("1"))
        );
        assert!(
            image_name("team/app:1")
                .unwrap_err()
                .reason
                .contains("registry host is required")
        );
    }
}
