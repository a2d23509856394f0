//! AWS edges used by several parts of the suite: SDK setup ([`sdk`]), credentials in
//! Secrets Manager ([`secrets`]), failure mail ([`notify`], SNS), large payloads in S3
//! ([`offload`]), Fargate tasks ([`ecs_runner`]), the console's AWS hosts ([`console`],
//! [`task_store`]) and each function's client assembly ([`functions`]).

#[cfg(feature = "aws")]
pub mod console;
#[cfg(feature = "aws")]
pub mod ecs_runner;
#[cfg(feature = "aws")]
pub mod functions;
pub mod metrics;
#[cfg(feature = "aws")]
pub mod notify;
pub mod offload;
#[cfg(feature = "aws")]
pub mod run_lock;
pub mod sdk;
pub mod secrets;
#[cfg(feature = "aws")]
pub mod task_store;
