//! AWS edges used by several parts of the suite: SDK setup ([`sdk`]), credentials in
//! Secrets Manager ([`secrets`]), failure mail ([`notify`], SNS), large payloads in S3
//! ([`offload`]), Fargate tasks ([`ecs_runner`]), the console's AWS hosts ([`console`],
//! [`task_store`]) and each function's client assembly ([`functions`]).

pub mod console;
pub mod ecs_runner;
pub mod functions;
pub mod metrics;
pub mod notify;
pub mod offload;
pub mod sdk;
pub mod secrets;
pub mod task_store;
