//! One integration-test binary (so the test build links once) against real components on
//! 127.0.0.1: docker-registry, skopeo, moto. Each test starts and stops its own servers.

mod integration {
    pub mod archived;
    pub mod aws;
    pub mod aws_hosts;
    pub mod bwlimit;
    pub mod checksums;
    pub mod cli;
    pub mod console;
    pub mod console_aws;
    pub mod cooldown;
    pub mod deletes;
    pub mod demo;
    pub mod ecr;
    pub mod faults;
    pub mod filters;
    pub mod hostile;
    pub mod iam;
    pub mod images;
    pub mod interrupt;
    pub mod objects;
    pub mod objects_aws;
    pub mod quota;
    pub mod secrets;
    pub mod state_machine;
    pub mod tags;
    pub mod template;
    pub mod worker_image;
}
