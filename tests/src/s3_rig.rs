//! The rig's S3, as strict as AWS: a proxy in front of moto that enforces what moto
//! forgives, so a test that passes here would pass against S3.
//!
//! - **Copy preconditions.** moto 5.2 honours `If-Match` on GET and HEAD, and
//!   `x-amz-copy-source-if-none-match` on CopyObject, but ignores
//!   `x-amz-copy-source-if-match` on CopyObject and UploadPartCopy. The proxy HEADs the copy
//!   source and answers `412 PreconditionFailed` (S3's XML error) when its ETag is not the
//!   one asked for, or the source is gone, as AWS documents.
//! - **Answers S3 gives.** moto's CompleteMultipartUpload answer has another root element
//!   than S3's (the SDK cannot read it, so every completion looked like a lost answer);
//!   the proxy names it as S3 does.

use crate::{HttpProxy, Intercept, Rewrite, Route};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// An `Authorization` header moto takes as a signed request of the rig's own (moto checks
/// signatures only when IAM is enforced; anonymous requests are refused by bucket ACLs).
pub const RIG_AUTHORIZATION: &str = "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0";

/// The value of header `name` (any case) in a request or response head.
pub fn header(head: &str, name: &str) -> Option<String> {
    head.split("\r\n").skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// moto behind a proxy that enforces S3's copy preconditions.
pub struct StrictS3 {
    pub proxy: HttpProxy,
    /// Copy requests refused with 412 so far.
    pub refused: Arc<AtomicUsize>,
}

impl StrictS3 {
    /// In front of `moto` (`http://127.0.0.1:PORT`), answers passed on unchanged.
    pub fn start(moto: &str) -> Self {
        Self::start_with(
            moto,
            Arc::new(|_: &str, status, body| (status, vec![], body)),
        )
    }

    /// The same, with moto's answers passed through `rewrite` (to spoil or watch them).
    pub fn start_with(moto: &str, rewrite: Rewrite) -> Self {
        // moto 5.2 names the root of a CompleteMultipartUpload answer
        // `CompleteMultipartUploadResponse`; S3's is `CompleteMultipartUploadResult`, the
        // only one the SDK reads. Answered as S3 does, so completion takes its normal path.
        let rewrite: Rewrite = Arc::new(move |head: &str, status, body: Vec<u8>| {
            let body = if head.starts_with("POST ") && head.contains("uploadId=") {
                String::from_utf8_lossy(&body)
                    .replace(
                        "CompleteMultipartUploadResponse",
                        "CompleteMultipartUploadResult",
                    )
                    .into_bytes()
            } else {
                body
            };
            rewrite(head, status, body)
        });
        let refused = Arc::new(AtomicUsize::new(0));
        let upstream = moto.trim_start_matches("http://").to_string();
        let route: Route = {
            let up = upstream.clone();
            Arc::new(move |head: &str| (up.clone(), head.to_string()))
        };
        let intercept: Intercept = {
            let (moto, refused) = (moto.to_string(), refused.clone());
            Arc::new(move |head: &str| {
                let refuse = copy_precondition_fails(&moto, head)?;
                refused.fetch_add(1, Ordering::Relaxed);
                Some(refuse)
            })
        };
        Self {
            proxy: HttpProxy::start_full(0, intercept, route, rewrite),
            refused,
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.proxy.endpoint
    }
}

/// For a CopyObject or UploadPartCopy carrying `x-amz-copy-source-if-match`: S3's 412
/// answer when the source's ETag differs (or the source is gone); `None` to forward.
fn copy_precondition_fails(
    moto: &str,
    head: &str,
) -> Option<(u16, Vec<(String, String)>, Vec<u8>)> {
    if !head.starts_with("PUT ") {
        return None;
    }
    let wanted = header(head, "x-amz-copy-source-if-match")?;
    let source = header(head, "x-amz-copy-source")?;
    let (path, query) = source.split_once('?').unwrap_or((&source, ""));
    let url = format!(
        "{moto}/{}{}{query}",
        path.trim_start_matches('/'),
        if query.is_empty() { "" } else { "?" }
    );
    let now = reqwest::blocking::Client::new()
        .head(&url)
        .header("Authorization", RIG_AUTHORIZATION)
        .send()
        .ok()?;
    let current = now
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_matches('"').to_string());
    let holds = now.status().is_success() && current.as_deref() == Some(wanted.trim_matches('"'));
    if holds {
        return None;
    }
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>PreconditionFailed</Code>\
<Message>At least one of the pre-conditions you specified did not hold</Message>\
<Condition>x-amz-copy-source-If-Match</Condition></Error>";
    Some((
        412,
        vec![("Content-Type".into(), "application/xml".into())],
        body.as_bytes().to_vec(),
    ))
}
