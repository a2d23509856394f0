//! Container images. Pure modules decide — [`reference`], [`selection`], [`tags`] (tag
//! rules), [`plan`], [`hosts`], [`workflow`] — and do no IO. Edge modules talk to the world behind traits —
//! [`registry`] (OCI distribution API), [`copy`] (skopeo), [`ecr`] (Amazon ECR API),
//! [`authfile`] (logins), [`list_source`] (SSM lists). [`sync`] wires them into the
//! one-machine pipeline; [`suite`] holds the AWS image functions' handlers and [`worker`]
//! (with [`task_report`]) the Fargate copy worker.

pub mod authfile;
pub mod copy;
pub mod ecr;
pub mod hosts;
#[cfg(feature = "aws")]
pub mod list_source;
pub mod plan;
pub mod reference;
pub mod registry;
pub mod selection;
#[cfg(feature = "aws")]
pub mod suite;
pub mod sync;
pub mod tags;
#[cfg(feature = "aws")]
pub mod task_report;
#[cfg(feature = "aws")]
pub mod worker;
pub mod workflow;
