//! AWS edges used by several parts of the suite.

pub mod console;
pub mod ecs_runner;
pub mod sdk;
pub mod task_store;
