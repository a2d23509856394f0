//! hub-core: the library behind transfer-hub's command line, its console and its AWS
//! functions. Each folder is one part (ARCHITECTURE.md's code map):
//!
//! - [`images`]: container images — references, selection lists, the registry client, the
//!   plan, the skopeo copy, the one-machine sync, and the AWS image suite's handlers and worker.
//! - [`objects`]: S3 objects — listing diff, multipart plan, transfer, upload ledger, the
//!   one-machine run and the AWS object suite.
//! - [`tasks`] and [`console`]: tasks as data, their store, scheduler and web console.
//! - [`status`]: the status store (SQLite on one machine, DynamoDB on AWS).
//! - [`aws`]: AWS edges several parts use (SDK setup, secrets, SNS, S3 offload, ECS, the
//!   console's AWS hosts, per-function client assembly).
//!
//! Generic pieces lie at the top: [`retry`] (error classes, backoff), [`config`] (env
//! parsing), [`interrupt`] (signals), [`units`] (sizes, durations).

pub mod aws;
pub mod config;
pub mod console;
pub mod images;
pub mod interrupt;
pub mod objects;
pub mod rate;
pub mod retry;
pub mod status;
pub mod tasks;
pub mod units;
