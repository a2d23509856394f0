//! hub-core: the library behind transfer-hub's command line and (later) its AWS functions.
//!
//! Pure modules decide — [`reference`], [`selection`], [`plan`], [`retry`] — and do no IO.
//! Edge modules talk to the world behind traits — [`registry`] (OCI distribution API),
//! [`copy`] (skopeo), [`status`] (SQLite), [`ecr`] (Amazon ECR API), [`authfile`]
//! (logins). [`sync`] wires them into the pipeline.

pub mod authfile;
pub mod aws;
pub mod config;
pub mod console;
pub mod copy;
pub mod ecr;
pub mod functions;
pub mod handlers;
pub mod hosts;
pub mod interrupt;
pub mod list_source;
pub mod notify;
pub mod objects;
pub mod offload;
pub mod plan;
pub mod reference;
pub mod registry;
pub mod retry;
pub mod secrets;
pub mod selection;
pub mod status;
pub mod sync;
pub mod task_report;
pub mod tasks;
pub mod units;
pub mod worker;
pub mod workflow;
