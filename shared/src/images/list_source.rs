//! Where a selection list is kept: an SSM parameter (String or StringList, the original's
//! place for it).

use crate::retry::{ErrorClass, ItemError};
use async_trait::async_trait;

/// Reads a named parameter.
#[async_trait]
pub trait ParameterStore: Send + Sync {
    async fn get(&self, name: &str) -> Result<String, ItemError>;
}

/// SSM Parameter Store.
pub struct Ssm(pub aws_sdk_ssm::Client);

#[async_trait]
impl ParameterStore for Ssm {
    async fn get(&self, name: &str) -> Result<String, ItemError> {
        let out = self
            .0
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| crate::retry::aws_error(&format!("SSM parameter {name:?}"), e))?;
        out.parameter()
            .and_then(|p| p.value())
            .map(str::to_string)
            .ok_or_else(|| {
                ItemError::new(
                    ErrorClass::NotFound,
                    format!("SSM parameter {name:?} has no value"),
                )
            })
    }
}
