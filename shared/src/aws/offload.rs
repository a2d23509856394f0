//! Large lists leave the state payload: [`offload`] keeps a list inline when small and puts
//! it in S3 otherwise, [`load`] reads it back. A distributed Map can read the same S3 object.

use crate::images::workflow::{Batch, INLINE_LIMIT_BYTES, S3Pointer};
use crate::retry::aws_error;
use crate::retry::{ErrorClass, ItemError};
use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Stores and fetches JSON documents.
#[async_trait]
pub trait BlobStore: Send + Sync {
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<S3Pointer, ItemError>;
    async fn get(&self, pointer: &S3Pointer) -> Result<Vec<u8>, ItemError>;
}

/// Keeps `items` inline when their JSON is at most `limit` bytes, else puts them under `key`.
pub async fn offload<T: Serialize>(
    store: &dyn BlobStore,
    key: &str,
    items: Vec<T>,
    limit: usize,
) -> Result<Batch<T>, ItemError> {
    let body = serde_json::to_vec(&items)
        .map_err(|e| ItemError::new(ErrorClass::BadInput, format!("serializing {key}: {e}")))?;
    let count = items.len();
    if body.len() <= limit {
        return Ok(Batch {
            count,
            items: Some(items),
            s3: None,
        });
    }
    let s3 = store.put(key, body).await?;
    Ok(Batch {
        count,
        items: None,
        s3: Some(s3),
    })
}

/// The default limit, well under the 256 KiB state payload.
pub const DEFAULT_LIMIT: usize = INLINE_LIMIT_BYTES;

/// The items of a batch, fetched from S3 when they were offloaded.
pub async fn load<T: DeserializeOwned>(
    store: &dyn BlobStore,
    batch: Batch<T>,
) -> Result<Vec<T>, ItemError> {
    match (batch.items, batch.s3) {
        (Some(items), _) => Ok(items),
        (None, Some(p)) => {
            let body = store.get(&p).await?;
            serde_json::from_slice(&body).map_err(|e| {
                ItemError::new(
                    ErrorClass::BadInput,
                    format!("s3://{}/{}: not a JSON list of items: {e}", p.bucket, p.key),
                )
            })
        }
        (None, None) if batch.count == 0 => Ok(Vec::new()),
        (None, None) => Err(ItemError::new(
            ErrorClass::BadInput,
            format!(
                "a batch of {} items has neither items nor an S3 pointer",
                batch.count
            ),
        )),
    }
}

/// An S3 bucket for offloaded lists.
pub struct S3Blobs {
    pub client: aws_sdk_s3::Client,
    pub bucket: String,
}

#[async_trait]
impl BlobStore for S3Blobs {
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<S3Pointer, ItemError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .body(body.into())
            .send()
            .await
            .map_err(|e| aws_error(&format!("S3 PutObject s3://{}/{key}", self.bucket), e))?;
        Ok(S3Pointer {
            bucket: self.bucket.clone(),
            key: key.to_string(),
        })
    }

    async fn get(&self, p: &S3Pointer) -> Result<Vec<u8>, ItemError> {
        let out = self
            .client
            .get_object()
            .bucket(&p.bucket)
            .key(&p.key)
            .send()
            .await
            .map_err(|e| aws_error(&format!("S3 GetObject s3://{}/{}", p.bucket, p.key), e))?;
        let body = out.body.collect().await.map_err(|e| {
            ItemError::new(
                ErrorClass::Retryable,
                format!("reading s3://{}/{}: {e}", p.bucket, p.key),
            )
        })?;
        Ok(body.into_bytes().to_vec())
    }
}
