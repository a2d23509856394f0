//! One side of an object sync: a bucket and prefix behind an S3 client (AWS or any
//! S3-compatible endpoint, path-style), with the options that apply to it. All S3 calls
//! of the engine live here.

use super::checksum::{self, Algo, Checksum};
use super::diff::Entry;
use super::url::S3Url;
use crate::aws::secrets::{self, SecretCredentials};
use crate::retry::{ErrorClass, ItemError};
use aws_sdk_s3::Client;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, RequestPayer, ServerSideEncryption, StorageClass,
};
use futures::{Stream, StreamExt};
use std::collections::HashMap;

/// Where a side's credentials come from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CredentialSource {
    /// The default chain (env, profile, SSO, container/instance role).
    #[default]
    Default,
    /// A named profile from the shared config files.
    Profile(String),
    /// A Secrets Manager secret with `access_key_id` / `secret_access_key`.
    Secret(String),
}

/// How to reach one side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub region: Option<String>,
    /// An S3-compatible endpoint (path-style addressing is used with it).
    pub url: Option<String>,
    pub credentials: CredentialSource,
}

/// Builds the S3 client of one side. `secrets` is needed only for a secret source.
pub async fn connect(
    ep: &Endpoint,
    secrets: Option<&aws_sdk_secretsmanager::Client>,
) -> Result<Client, ItemError> {
    Ok(client_of(&load_config(ep, secrets).await?, ep))
}

/// The S3 client of one side from its loaded configuration.
pub fn client_of(conf: &aws_config::SdkConfig, ep: &Endpoint) -> Client {
    let mut b = aws_sdk_s3::config::Builder::from(conf);
    if let Some(url) = &ep.url {
        b = b.endpoint_url(url).force_path_style(true);
    }
    if conf.region().is_none() {
        b = b.region(aws_config::Region::new("us-east-1"));
    }
    Client::from_conf(b.retry_classifier(HonourRetryAfter).build())
}

/// The AWS configuration of one side: region and credentials (not yet fetched).
pub async fn load_config(
    ep: &Endpoint,
    secrets: Option<&aws_sdk_secretsmanager::Client>,
) -> Result<aws_config::SdkConfig, ItemError> {
    let mut loader = crate::aws::sdk::loader();
    if let Some(r) = &ep.region {
        loader = loader.region(aws_config::Region::new(r.clone()));
    }
    match &ep.credentials {
        CredentialSource::Default => {}
        // The profile's own credentials, never the environment's keys (as aws-cli does
        // with --profile): the default chain would take AWS_ACCESS_KEY_ID first.
        CredentialSource::Profile(p) => {
            loader = loader.profile_name(p).credentials_provider(
                aws_config::profile::ProfileFileCredentialsProvider::builder()
                    .configure(&crate::aws::sdk::provider_config())
                    .profile_name(p)
                    .build(),
            )
        }
        CredentialSource::Secret(name) => {
            let client = secrets.ok_or_else(|| {
                ItemError::new(
                    ErrorClass::BadInput,
                    format!("secret {name:?}: no Secrets Manager client"),
                )
            })?;
            match secrets::fetch(client, name).await? {
                SecretCredentials::Aws {
                    access_key_id,
                    secret_access_key,
                } => {
                    loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                        access_key_id,
                        secret_access_key,
                        None,
                        None,
                        "secrets-manager",
                    ))
                }
                SecretCredentials::Registry(_) => {
                    return Err(ItemError::new(
                        ErrorClass::BadInput,
                        format!(
                            "secret {name:?} holds a registry login; an S3 side needs \"access_key_id\" and \"secret_access_key\""
                        ),
                    ));
                }
            }
        }
    }
    Ok(loader.load().await)
}

/// The SDK's own retries wait at least what a 429 or 503 answer's `Retry-After` says
/// (the SDK reads only `x-amz-retry-after`). A wait longer than the SDK would keep to
/// (it bounds a server's delay to its backoff + 5 s) is left to our retry layer: the SDK
/// gives up on that attempt and [`crate::retry::with_retries`] waits the full time.
#[derive(Debug)]
pub struct HonourRetryAfter;

impl HonourRetryAfter {
    const SDK_KEEPS_TO: std::time::Duration = std::time::Duration::from_secs(5);
}

impl aws_sdk_s3::config::retry::ClassifyRetry for HonourRetryAfter {
    fn classify_retry(
        &self,
        ctx: &aws_sdk_s3::config::interceptors::InterceptorContext,
    ) -> aws_sdk_s3::config::retry::RetryAction {
        self.classify_retry_v2(
            ctx,
            &aws_sdk_s3::config::retry::RetryAction::NoActionIndicated,
        )
    }

    fn classify_retry_v2(
        &self,
        ctx: &aws_sdk_s3::config::interceptors::InterceptorContext,
        previous: &aws_sdk_s3::config::retry::RetryAction,
    ) -> aws_sdk_s3::config::retry::RetryAction {
        use aws_sdk_s3::config::retry::RetryAction;
        use aws_smithy_runtime_api::client::retries::classifiers::RetryReason;
        use aws_smithy_types::retry::ErrorKind;
        let Some(resp) = ctx.response() else {
            return RetryAction::NoActionIndicated;
        };
        let Some(wait) = resp
            .headers()
            .get("retry-after")
            .and_then(|v| crate::retry::parse_retry_after(v, chrono::Utc::now()))
        else {
            return RetryAction::NoActionIndicated;
        };
        let kind = match previous {
            RetryAction::RetryIndicated(RetryReason::RetryableError { kind, .. }) => *kind,
            RetryAction::NoActionIndicated if matches!(resp.status().as_u16(), 429 | 503) => {
                ErrorKind::ThrottlingError
            }
            _ => return RetryAction::NoActionIndicated,
        };
        if wait > Self::SDK_KEEPS_TO {
            return RetryAction::RetryForbidden;
        }
        RetryAction::retryable_error_with_explicit_delay(kind, wait)
    }

    fn name(&self) -> &'static str {
        "Retry-After"
    }

    fn priority(
        &self,
    ) -> aws_smithy_runtime_api::client::retries::classifiers::RetryClassifierPriority {
        use aws_smithy_runtime_api::client::retries::classifiers::RetryClassifierPriority;
        RetryClassifierPriority::run_after(RetryClassifierPriority::transient_error_classifier())
    }
}

pub use crate::retry::aws_error as s3_error;

/// Destination-only settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestOptions {
    pub storage_class: Option<StorageClass>,
    /// SSE-KMS key id/ARN (AES256 default encryption otherwise).
    pub kms_key: Option<String>,
}

/// Parses a storage class name, naming the accepted ones on error.
pub fn parse_storage_class(s: &str) -> Result<StorageClass, String> {
    let known = StorageClass::values();
    if known.contains(&s) {
        Ok(StorageClass::from(s))
    } else {
        Err(format!(
            "unknown storage class {s:?}; expected one of {}",
            known.join(", ")
        ))
    }
}

pub use aws_sdk_s3::types::Tier;

/// Where the restore of an archived object stands (`x-amz-restore`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restore {
    /// `ongoing-request="true"`: asked for, not readable yet.
    Ongoing,
    /// `ongoing-request="false", expiry-date="…"`: a readable copy until it expires.
    Done,
}

impl Restore {
    pub fn parse(header: &str) -> Self {
        if header.replace(' ', "").contains("ongoing-request=\"true\"") {
            Self::Ongoing
        } else {
            Self::Done
        }
    }
}

/// The metadata carried with an object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    pub content_type: Option<String>,
    pub cache_control: Option<String>,
    pub content_disposition: Option<String>,
    pub content_encoding: Option<String>,
    pub content_language: Option<String>,
    pub expires: Option<String>,
    pub user: Option<HashMap<String, String>>,
}

/// What HEAD says about an object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    pub size: u64,
    pub etag: Option<String>,
    /// Stored full-object checksums: CRC32, CRC32C, CRC64NVME, SHA-1, SHA-256.
    pub checksums: [Option<String>; 5],
    /// The stored checksum (the first of `checksums`) with its type.
    pub checksum: Option<Checksum>,
    pub meta: Meta,
    pub kms: bool,
    /// `x-amz-restore`: of an archived object, whether a restore is under way or done.
    pub restore: Option<Restore>,
}

/// A bucket and prefix with its client.
#[derive(Clone, Debug)]
pub struct Bucket {
    pub client: Client,
    pub url: S3Url,
    /// Source buckets only: the requester pays for requests and transfer.
    pub requester_pays: bool,
}

/// Percent-encodes a key for `x-amz-copy-source` (keeps `/` and unreserved characters).
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn expires_date(s: &Option<String>) -> Option<aws_sdk_s3::primitives::DateTime> {
    s.as_deref().and_then(|s| {
        aws_sdk_s3::primitives::DateTime::from_str(
            s,
            aws_sdk_s3::primitives::DateTimeFormat::HttpDate,
        )
        .ok()
    })
}

/// Sets what a new object carries (metadata, tags, storage class, SSE-KMS) on a PutObject
/// or CreateMultipartUpload request; their builders share the setters but no trait.
macro_rules! with_object_settings {
    ($req:expr, $meta:expr, $tagging:expr, $opts:expr) => {{
        let (meta, opts): (&Meta, &DestOptions) = ($meta, $opts);
        $req.set_content_type(meta.content_type.clone())
            .set_cache_control(meta.cache_control.clone())
            .set_content_disposition(meta.content_disposition.clone())
            .set_content_encoding(meta.content_encoding.clone())
            .set_content_language(meta.content_language.clone())
            .set_expires(expires_date(&meta.expires))
            .set_metadata(meta.user.clone())
            .set_tagging($tagging)
            .set_storage_class(opts.storage_class.clone())
            .set_server_side_encryption(opts.kms_key.as_ref().map(|_| ServerSideEncryption::AwsKms))
            .set_ssekms_key_id(opts.kms_key.clone())
    }};
}

/// An ETag in quotes, as `If-Match` and `x-amz-copy-source-if-match` take it.
pub fn quoted_etag(e: &str) -> String {
    format!("\"{}\"", bare_etag(e))
}

/// Whether an answer's encryption headers say its ETag is not the MD5 of the bytes:
/// SSE-KMS, DSSE-KMS or SSE-C (a customer key). SSE-S3 (AES256) and no encryption keep
/// MD5 ETags for single-part objects.
pub fn etag_not_md5(sse: Option<&ServerSideEncryption>, customer_key: Option<&str>) -> bool {
    matches!(
        sse,
        Some(ServerSideEncryption::AwsKms) | Some(ServerSideEncryption::AwsKmsDsse)
    ) || customer_key.is_some()
}

/// ETag without quotes.
pub fn bare_etag(e: &str) -> String {
    e.trim_matches('"').to_string()
}

/// Whether an ETag is the MD5 of the bytes (a single-part, non-KMS upload).
pub fn is_md5_etag(e: &str) -> bool {
    let e = bare_etag(e);
    e.len() == 32 && e.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Listing pages read ahead of the consumer, per listing (1,000 keys a page on S3).
pub const LIST_PAGES_AHEAD: usize = 2;

/// The most a GET reserves up front for its body (a single PutObject's limit, 5 GiB); a
/// larger announced length grows the buffer as bytes arrive.
const MAX_BUFFERED: i64 = 5 << 30;

impl Bucket {
    fn payer(&self) -> Option<RequestPayer> {
        self.requester_pays.then_some(RequestPayer::Requester)
    }

    /// The same bucket narrowed to `prefix` (raw, relative to this one's prefix): a prefix
    /// of the prefix list. Keys stay relative to the narrowed prefix.
    pub fn under(&self, prefix: &str) -> Bucket {
        let mut b = self.clone();
        b.url.prefix = self.url.key(prefix);
        b
    }

    /// The `x-amz-copy-source` of an object of this bucket.
    pub fn copy_source(&self, rel: &str) -> String {
        format!("{}/{}", self.url.bucket, encode_key(&self.url.key(rel)))
    }

    /// Lists every object under the prefix, in S3's key order, keys relative to the
    /// prefix. A task of its own reads up to [`LIST_PAGES_AHEAD`] pages ahead of the
    /// consumer, so two listings merged side by side overlap instead of taking turns;
    /// memory stays a few pages. Must be called inside a Tokio runtime. Dropping the
    /// stream stops the task after the request in flight.
    pub fn list(&self) -> impl Stream<Item = Result<Entry, ItemError>> + Unpin + Send + 'static {
        self.list_after(None)
    }

    /// [`Bucket::list`] from the first key after `after` (relative to the prefix).
    pub fn list_after(
        &self,
        after: Option<&str>,
    ) -> impl Stream<Item = Result<Entry, ItemError>> + Unpin + Send + 'static {
        self.listing(after, false)
    }

    /// Lists only the objects right under the prefix, not those below a further `/`
    /// (ListObjectsV2 with delimiter `/`, the common prefixes dropped): one piece of a
    /// split listing ([`Bucket::folders`]).
    pub fn list_leaves(
        &self,
    ) -> impl Stream<Item = Result<Entry, ItemError>> + Unpin + Send + 'static {
        self.listing(None, true)
    }

    /// The folders right under the prefix (common prefixes with delimiter `/`, relative to
    /// the prefix, in key order) and whether objects lie right under it too. `None` when
    /// the listing takes more than `max_pages` pages: a folder of many objects is listed
    /// whole rather than twice.
    pub async fn folders(
        &self,
        max_pages: usize,
    ) -> Result<Option<(Vec<String>, bool)>, ItemError> {
        let mut token: Option<String> = None;
        let (mut folders, mut leaves) = (Vec::new(), false);
        for _ in 0..max_pages {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.url.bucket)
                .prefix(&self.url.prefix)
                .delimiter("/")
                .set_continuation_token(token.take())
                .set_request_payer(self.payer())
                .send()
                .await
                .map_err(|e| s3_error(&format!("listing the folders of {}", self.url), e))?;
            leaves |= !page.contents().is_empty();
            folders.extend(page.common_prefixes().iter().filter_map(|p| {
                p.prefix()
                    .and_then(|p| p.strip_prefix(self.url.prefix.as_str()))
                    .filter(|p| !p.is_empty())
                    .map(str::to_string)
            }));
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => return Ok(Some((folders, leaves))),
            }
        }
        Ok(None)
    }

    fn listing(
        &self,
        after: Option<&str>,
        leaves_only: bool,
    ) -> impl Stream<Item = Result<Entry, ItemError>> + Unpin + Send + 'static {
        let mut start_after = after.map(|k| self.url.key(k));
        let (tx, mut rx) =
            tokio::sync::mpsc::channel::<Vec<Result<Entry, ItemError>>>(LIST_PAGES_AHEAD);
        let client = self.client.clone();
        let bucket = self.url.bucket.clone();
        let prefix = self.url.prefix.clone();
        let payer = self.payer();
        tokio::spawn(async move {
            let mut token: Option<String> = None;
            loop {
                let out = client
                    .list_objects_v2()
                    .bucket(&bucket)
                    .prefix(&prefix)
                    .set_continuation_token(token.take())
                    .set_start_after(start_after.take())
                    .set_delimiter(leaves_only.then(|| "/".to_string()))
                    .set_request_payer(payer.clone())
                    .send()
                    .await;
                let page = match out {
                    Err(e) => {
                        let err = s3_error(&format!("listing s3://{bucket}/{prefix}"), e);
                        let _ = tx.send(vec![Err(err)]).await;
                        return;
                    }
                    Ok(page) => page,
                };
                let entries = page
                    .contents()
                    .iter()
                    .map(|o| {
                        let key = o.key().unwrap_or_default();
                        Ok(Entry {
                            archived: super::diff::is_archived(o.storage_class()),
                            key: key.strip_prefix(prefix.as_str()).unwrap_or(key).to_string(),
                            size: o.size().unwrap_or(0).max(0) as u64,
                            etag: o.e_tag().map(bare_etag),
                            checksum: None,
                            modified: o.last_modified().and_then(|t| {
                                chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())
                            }),
                        })
                    })
                    .collect();
                if tx.send(entries).await.is_err() {
                    return; // nobody reads any more
                }
                token = match page.next_continuation_token() {
                    Some(t) if page.is_truncated() == Some(true) => Some(t.to_string()),
                    _ => return,
                };
            }
        });
        let pages = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Box::pin(pages.flat_map(futures::stream::iter))
    }

    /// One key (relative to the prefix) as the listing gives it, `None` when it does not
    /// exist: one ListObjectsV2 with the key as prefix and one key back (so only
    /// `s3:ListBucket` is needed, as for the listing, and size and ETag read as listed).
    pub async fn listed(&self, rel: &str) -> Result<Option<Entry>, ItemError> {
        let key = self.url.key(rel);
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.url.bucket)
            .prefix(&key)
            .max_keys(1)
            .set_request_payer(self.payer())
            .send()
            .await
            .map_err(|e| s3_error(&format!("listing {}", self.url.object(rel)), e))?;
        // Keys come in order: the key itself, when it exists, is the first with its prefix.
        Ok(out
            .contents()
            .first()
            .filter(|o| o.key() == Some(key.as_str()))
            .map(|o| Entry {
                archived: super::diff::is_archived(o.storage_class()),
                key: rel.to_string(),
                size: o.size().unwrap_or(0).max(0) as u64,
                etag: o.e_tag().map(bare_etag),
                checksum: None,
                modified: o
                    .last_modified()
                    .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())),
            }))
    }

    /// HEAD of an object; `None` when it does not exist.
    pub async fn head(&self, rel: &str) -> Result<Option<Head>, ItemError> {
        let key = self.url.key(rel);
        let r = self
            .client
            .head_object()
            .bucket(&self.url.bucket)
            .key(&key)
            .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
            .set_request_payer(self.payer())
            .send()
            .await;
        match r {
            Ok(o) => {
                let checksums = [
                    o.checksum_crc32(),
                    o.checksum_crc32_c(),
                    o.checksum_crc64_nvme(),
                    o.checksum_sha1(),
                    o.checksum_sha256(),
                ]
                .map(|c| c.map(str::to_string));
                Ok(Some(Head {
                    size: o.content_length().unwrap_or(0).max(0) as u64,
                    checksum: checksum::from_answer(
                        &checksums,
                        o.checksum_type().map(|t| t.as_str()),
                    ),
                    checksums,
                    etag: o.e_tag().map(bare_etag),
                    kms: etag_not_md5(o.server_side_encryption(), o.sse_customer_algorithm()),
                    restore: o.restore().map(Restore::parse),
                    meta: Meta {
                        content_type: o.content_type().map(str::to_string),
                        cache_control: o.cache_control().map(str::to_string),
                        content_disposition: o.content_disposition().map(str::to_string),
                        content_encoding: o.content_encoding().map(str::to_string),
                        content_language: o.content_language().map(str::to_string),
                        expires: o.expires_string().map(str::to_string),
                        user: o.metadata().cloned().filter(|m| !m.is_empty()),
                    },
                }))
            }
            Err(SdkError::ServiceError(s)) if s.raw().status().as_u16() == 404 => Ok(None),
            // S3 answers a HEAD of an object under a customer-provided key (SSE-C) that
            // does not send the key with a bare 400.
            Err(SdkError::ServiceError(s)) if s.raw().status().as_u16() == 400 => {
                Err(sse_c_error(&format!("HEAD {}", self.url.object(rel))))
            }
            Err(e) => Err(s3_error(&format!("HEAD {}", self.url.object(rel)), e)),
        }
    }

    /// The object's tags as a `k=v&k2=v2` string (None when it has none).
    pub async fn tagging(&self, rel: &str) -> Result<Option<String>, ItemError> {
        let out = self
            .client
            .get_object_tagging()
            .bucket(&self.url.bucket)
            .key(self.url.key(rel))
            .set_request_payer(self.payer())
            .send()
            .await
            .map_err(|e| s3_error(&format!("tags of {}", self.url.object(rel)), e))?;
        let tags: Vec<String> = out
            .tag_set()
            .iter()
            .map(|t| format!("{}={}", form_encode(t.key()), form_encode(t.value())))
            .collect();
        Ok((!tags.is_empty()).then(|| tags.join("&")))
    }

    /// Reads an object, or a range of it, into memory with its metadata, its ETag and
    /// whether that ETag is not an MD5 ([`etag_not_md5`]). The read
    /// is pinned to the listed version: `if_match` (the listed ETag) goes as `If-Match`, so
    /// a changed object answers 412 ([`ErrorClass::SourceChanged`]) instead of other bytes,
    /// and no more than `len` bytes (what the listing or the part plan announced) are read.
    /// With a `limit` (`--bwlimit`), the body is read no faster than it allows.
    pub async fn get(
        &self,
        rel: &str,
        range: Option<String>,
        if_match: Option<&str>,
        len: u64,
        limit: Option<&super::bandwidth::Bandwidth>,
    ) -> Result<Got, ItemError> {
        let what = format!("GET {}", self.url.object(rel));
        let o = self
            .client
            .get_object()
            .bucket(&self.url.bucket)
            .key(self.url.key(rel))
            .set_range(range)
            .set_if_match(if_match.map(quoted_etag))
            .set_request_payer(self.payer())
            .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
            .send()
            .await
            .map_err(|e| sse_c_hint(s3_error(&what, e)))?;
        let source_checksum = checksum::from_answer(
            &[
                o.checksum_crc32(),
                o.checksum_crc32_c(),
                o.checksum_crc64_nvme(),
                o.checksum_sha1(),
                o.checksum_sha256(),
            ]
            .map(|c| c.map(str::to_string)),
            o.checksum_type().map(|t| t.as_str()),
        );
        let announced = o.content_length().unwrap_or(0);
        if announced > len as i64 {
            return Err(ItemError::new(
                ErrorClass::SourceChanged,
                format!("{what}: announces {announced} bytes, the listing {len}"),
            ));
        }
        let meta = Meta {
            content_type: o.content_type().map(str::to_string),
            cache_control: o.cache_control().map(str::to_string),
            content_disposition: o.content_disposition().map(str::to_string),
            content_encoding: o.content_encoding().map(str::to_string),
            content_language: o.content_language().map(str::to_string),
            expires: o.expires_string().map(str::to_string),
            user: o.metadata().cloned().filter(|m| !m.is_empty()),
        };
        let etag = o.e_tag().map(bare_etag);
        let encrypted = etag_not_md5(o.server_side_encryption(), o.sse_customer_algorithm());
        // Into one buffer of the announced size as the chunks arrive: collecting the
        // chunks and joining them would hold the body twice at the peak.
        let announced = announced.clamp(0, MAX_BUFFERED) as usize;
        let mut buf = Vec::with_capacity(announced);
        let mut stream = o.body;
        while let Some(chunk) = stream.try_next().await.map_err(|e| body_error(&what, &e))? {
            if (buf.len() + chunk.len()) as u64 > len {
                return Err(ItemError::new(
                    ErrorClass::SourceChanged,
                    format!("{what}: more than the {len} bytes the listing announced"),
                ));
            }
            buf.extend_from_slice(&chunk);
            if let Some(l) = limit {
                l.take(chunk.len() as u64).await;
            }
        }
        Ok(Got {
            body: buf.into(),
            meta,
            etag,
            encrypted,
            checksum: source_checksum,
        })
    }

    /// PutObject with Content-MD5 and the additional checksum `sum` of the bytes (S3
    /// refuses a body that matches neither). Returns the ETag, whether it is not an MD5
    /// (the destination encrypts with KMS), and the checksum S3 stored (in `sum`'s
    /// algorithm, when it reports one).
    #[allow(clippy::too_many_arguments)]
    pub async fn put(
        &self,
        rel: &str,
        body: bytes::Bytes,
        md5: &[u8; 16],
        sum: (Algo, &str),
        meta: &Meta,
        tagging: Option<String>,
        opts: &DestOptions,
    ) -> Result<Written, ItemError> {
        use base64::Engine;
        let (algo, value) = (sum.0, Some(sum.1.to_string()));
        let req = self
            .client
            .put_object()
            .bucket(&self.url.bucket)
            .key(self.url.key(rel))
            .content_md5(base64::engine::general_purpose::STANDARD.encode(md5))
            .checksum_algorithm(algo.sdk());
        let req = match algo {
            Algo::Crc32 => req.set_checksum_crc32(value),
            Algo::Crc32c => req.set_checksum_crc32_c(value),
            Algo::Crc64Nvme => req.set_checksum_crc64_nvme(value),
            Algo::Sha1 => req.set_checksum_sha1(value),
            Algo::Sha256 => req.set_checksum_sha256(value),
        }
        .content_length(body.len() as i64)
        .body(ByteStream::from(body));
        let o = with_object_settings!(req, meta, tagging, opts)
            .send()
            .await
            .map_err(|e| s3_error(&format!("PUT {}", self.url.object(rel)), e))?;
        let stored = [
            o.checksum_crc32(),
            o.checksum_crc32_c(),
            o.checksum_crc64_nvme(),
            o.checksum_sha1(),
            o.checksum_sha256(),
        ][algo as usize]
            .map(str::to_string);
        Ok(Written {
            etag: o.e_tag().map(bare_etag),
            encrypted: etag_not_md5(o.server_side_encryption(), o.sse_customer_algorithm()),
            checksum: stored,
        })
    }

    /// Server-side CopyObject from `src` (metadata and tags copied by S3), pinned to the
    /// listed ETag (`x-amz-copy-source-if-match`; 412 when the source changed), asking S3
    /// to compute the `algo` checksum of the copied bytes (`x-amz-checksum-algorithm`).
    /// Returns the new ETag, whether it is not an MD5 (the destination encrypts with KMS),
    /// and the copy's `algo` checksum when S3 reports one.
    pub async fn copy_from(
        &self,
        rel: &str,
        src: &Bucket,
        if_match: Option<&str>,
        algo: Algo,
        opts: &DestOptions,
        tags: bool,
    ) -> Result<Written, ItemError> {
        use aws_sdk_s3::types::TaggingDirective;
        let o = self
            .client
            .copy_object()
            .bucket(&self.url.bucket)
            .key(self.url.key(rel))
            .copy_source(src.copy_source(rel))
            .set_copy_source_if_match(if_match.map(quoted_etag))
            .set_request_payer(src.payer())
            .checksum_algorithm(algo.sdk())
            .tagging_directive(if tags {
                TaggingDirective::Copy
            } else {
                TaggingDirective::Replace
            })
            .set_storage_class(opts.storage_class.clone())
            .set_server_side_encryption(opts.kms_key.as_ref().map(|_| ServerSideEncryption::AwsKms))
            .set_ssekms_key_id(opts.kms_key.clone())
            .send()
            .await
            .map_err(|e| {
                sse_c_hint(s3_error(
                    &format!("copy {} to {}", src.url.object(rel), self.url.object(rel)),
                    e,
                ))
            })?;
        let r = o.copy_object_result();
        let stored = r.and_then(|r| {
            [
                r.checksum_crc32(),
                r.checksum_crc32_c(),
                r.checksum_crc64_nvme(),
                r.checksum_sha1(),
                r.checksum_sha256(),
            ][algo as usize]
                .map(str::to_string)
        });
        Ok(Written {
            etag: r.and_then(|r| r.e_tag()).map(bare_etag),
            encrypted: etag_not_md5(o.server_side_encryption(), o.sse_customer_algorithm()),
            checksum: stored,
        })
    }

    /// Starts a multipart upload carrying the source's metadata, with the checksum `sum`
    /// (every part carries its checksum in that algorithm; the object's is, FULL_OBJECT,
    /// the CRC of all its bytes whatever the part sizes, or, COMPOSITE, the checksum of the
    /// part checksums). Returns the upload id.
    pub async fn create_upload(
        &self,
        rel: &str,
        meta: &Meta,
        tagging: Option<String>,
        opts: &DestOptions,
        sum: checksum::UploadSum,
    ) -> Result<String, ItemError> {
        use aws_sdk_s3::types::ChecksumType;
        let what = format!("create multipart upload of {}", self.url.object(rel));
        let req = self
            .client
            .create_multipart_upload()
            .bucket(&self.url.bucket)
            .key(self.url.key(rel))
            .checksum_algorithm(sum.algo.sdk())
            .checksum_type(if sum.composite {
                ChecksumType::Composite
            } else {
                ChecksumType::FullObject
            });
        let o = with_object_settings!(req, meta, tagging, opts)
            .send()
            .await
            .map_err(|e| s3_error(&what, e))?;
        o.upload_id()
            .map(str::to_string)
            .ok_or_else(|| ItemError::new(ErrorClass::Retryable, format!("{what}: no upload id")))
    }

    /// UploadPart with Content-MD5 and its checksum `sum` (in the upload's algorithm,
    /// base64). Returns the part's ETag, whether it is not an MD5, and the checksum S3
    /// stored for it in that algorithm.
    #[allow(clippy::too_many_arguments)]
    pub async fn upload_part(
        &self,
        rel: &str,
        upload_id: &str,
        number: u32,
        body: bytes::Bytes,
        md5: &[u8; 16],
        sum: (Algo, &str),
    ) -> Result<(String, bool, Option<String>), ItemError> {
        use base64::Engine;
        let what = format!("part {number} of {}", self.url.object(rel));
        let (algo, value) = (sum.0, Some(sum.1.to_string()));
        let req = self
            .client
            .upload_part()
            .bucket(&self.url.bucket)
            .key(self.url.key(rel))
            .upload_id(upload_id)
            .part_number(number as i32)
            .content_md5(base64::engine::general_purpose::STANDARD.encode(md5))
            .checksum_algorithm(algo.sdk());
        let o = match algo {
            Algo::Crc32 => req.set_checksum_crc32(value),
            Algo::Crc32c => req.set_checksum_crc32_c(value),
            Algo::Crc64Nvme => req.set_checksum_crc64_nvme(value),
            Algo::Sha1 => req.set_checksum_sha1(value),
            Algo::Sha256 => req.set_checksum_sha256(value),
        }
        .content_length(body.len() as i64)
        .body(ByteStream::from(body))
        .send()
        .await
        .map_err(|e| s3_error(&what, e))?;
        let encrypted = etag_not_md5(o.server_side_encryption(), o.sse_customer_algorithm());
        let stored = [
            o.checksum_crc32(),
            o.checksum_crc32_c(),
            o.checksum_crc64_nvme(),
            o.checksum_sha1(),
            o.checksum_sha256(),
        ][algo as usize]
            .map(str::to_string);
        o.e_tag()
            .map(|e| (bare_etag(e), encrypted, stored))
            .ok_or_else(|| ItemError::new(ErrorClass::Retryable, format!("{what}: no ETag")))
    }

    /// UploadPartCopy of a byte range of `src`, pinned to the listed ETag like
    /// [`Bucket::copy_from`]. Returns the part's ETag and the checksum S3 computed for it
    /// in the upload's algorithm `algo`.
    #[allow(clippy::too_many_arguments)]
    pub async fn copy_part(
        &self,
        rel: &str,
        upload_id: &str,
        number: u32,
        range: String,
        src: &Bucket,
        if_match: Option<&str>,
        algo: Algo,
    ) -> Result<(String, Option<String>), ItemError> {
        let what = format!("part {number} of {}", self.url.object(rel));
        let o = self
            .client
            .upload_part_copy()
            .bucket(&self.url.bucket)
            .key(self.url.key(rel))
            .upload_id(upload_id)
            .part_number(number as i32)
            .copy_source(src.copy_source(rel))
            .copy_source_range(range)
            .set_copy_source_if_match(if_match.map(quoted_etag))
            .set_request_payer(src.payer())
            .send()
            .await
            .map_err(|e| sse_c_hint(s3_error(&what, e)))?;
        let r = o.copy_part_result();
        let stored = r.and_then(|r| {
            [
                r.checksum_crc32(),
                r.checksum_crc32_c(),
                r.checksum_crc64_nvme(),
                r.checksum_sha1(),
                r.checksum_sha256(),
            ][algo as usize]
                .map(str::to_string)
        });
        r.and_then(|r| r.e_tag())
            .map(|e| (bare_etag(e), stored))
            .ok_or_else(|| ItemError::new(ErrorClass::Retryable, format!("{what}: no ETag")))
    }

    /// Completes an upload with its parts in order (number, ETag, checksum in the upload's
    /// algorithm `algo`), sending the whole object's FULL_OBJECT checksum `full` when known,
    /// so S3 checks it against what it holds. Returns the object's ETag, whether the object
    /// is encrypted so that its part ETags are not MD5s, and the object's `algo` checksum
    /// as S3 reports it (a COMPOSITE one with its `-N`).
    pub async fn complete_upload(
        &self,
        rel: &str,
        upload_id: &str,
        parts: &[(u32, &str, Option<&str>)],
        algo: Algo,
        full: Option<&str>,
    ) -> Result<Written, ItemError> {
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .iter()
                    .map(|(n, e, c)| {
                        let b = CompletedPart::builder()
                            .part_number(*n as i32)
                            .e_tag(format!("\"{e}\""));
                        let c = c.map(str::to_string);
                        match algo {
                            Algo::Crc32 => b.set_checksum_crc32(c),
                            Algo::Crc32c => b.set_checksum_crc32_c(c),
                            Algo::Crc64Nvme => b.set_checksum_crc64_nvme(c),
                            Algo::Sha1 => b.set_checksum_sha1(c),
                            Algo::Sha256 => b.set_checksum_sha256(c),
                        }
                        .build()
                    })
                    .collect(),
            ))
            .build();
        let req = self
            .client
            .complete_multipart_upload()
            .bucket(&self.url.bucket)
            .key(self.url.key(rel))
            .upload_id(upload_id)
            .multipart_upload(completed)
            .set_checksum_type(full.map(|_| aws_sdk_s3::types::ChecksumType::FullObject));
        let full = full.map(str::to_string);
        let o = match algo {
            Algo::Crc32 => req.set_checksum_crc32(full),
            Algo::Crc32c => req.set_checksum_crc32_c(full),
            Algo::Crc64Nvme => req.set_checksum_crc64_nvme(full),
            // S3 keeps no FULL_OBJECT SHA; a COMPOSITE upload sends none.
            Algo::Sha1 | Algo::Sha256 => req,
        }
        .send()
        .await
        .map_err(|e| s3_error(&format!("complete upload of {}", self.url.object(rel)), e))?;
        let stored = [
            o.checksum_crc32(),
            o.checksum_crc32_c(),
            o.checksum_crc64_nvme(),
            o.checksum_sha1(),
            o.checksum_sha256(),
        ][algo as usize]
            .map(str::to_string);
        Ok(Written {
            etag: o.e_tag().map(bare_etag),
            encrypted: etag_not_md5(o.server_side_encryption(), None),
            checksum: stored,
        })
    }

    /// The source's part layout and stored checksum (GetObjectAttributes with ETag,
    /// Checksum, ObjectParts and ObjectSize, 1,000 parts a page; one request for most
    /// objects). S3 lists the parts only of objects written with an additional checksum,
    /// so `parts` is empty for the others (and for single-part objects).
    pub async fn object_parts(&self, rel: &str) -> Result<SourceParts, ItemError> {
        use aws_sdk_s3::types::ObjectAttributes as A;
        let what = format!("attributes of {}", self.url.object(rel));
        let mut out = SourceParts::default();
        let mut marker: Option<String> = None;
        loop {
            let o = self
                .client
                .get_object_attributes()
                .bucket(&self.url.bucket)
                .key(self.url.key(rel))
                .object_attributes(A::Etag)
                .object_attributes(A::Checksum)
                .object_attributes(A::ObjectParts)
                .object_attributes(A::ObjectSize)
                .max_parts(1000)
                .set_part_number_marker(marker.take())
                .set_request_payer(self.payer())
                .send()
                .await
                .map_err(|e| sse_c_hint(s3_error(&what, e)))?;
            out.etag = o.e_tag().map(bare_etag);
            out.size = o.object_size().unwrap_or(0).max(0) as u64;
            out.checksum = o.checksum().and_then(|c| {
                checksum::from_answer(
                    &[
                        c.checksum_crc32(),
                        c.checksum_crc32_c(),
                        c.checksum_crc64_nvme(),
                        c.checksum_sha1(),
                        c.checksum_sha256(),
                    ]
                    .map(|c| c.map(str::to_string)),
                    c.checksum_type().map(|t| t.as_str()),
                )
            });
            let Some(p) = o.object_parts() else {
                break;
            };
            out.count = p.total_parts_count().map(|n| n.max(0) as u32);
            for part in p.parts() {
                out.parts.push(SourcePart {
                    number: part.part_number().unwrap_or(0).max(0) as u32,
                    size: part.size().unwrap_or(0).max(0) as u64,
                    checksum: [
                        part.checksum_crc32(),
                        part.checksum_crc32_c(),
                        part.checksum_crc64_nvme(),
                        part.checksum_sha1(),
                        part.checksum_sha256(),
                    ]
                    .map(|c| c.map(str::to_string)),
                });
            }
            match p.next_part_number_marker() {
                Some(m) if p.is_truncated() == Some(true) && !p.parts().is_empty() => {
                    // Never more pages than S3 allows parts (a server that loops is stopped).
                    if out.parts.len() > super::multipart::MAX_PARTS as usize {
                        return Err(ItemError::new(
                            ErrorClass::Retryable,
                            format!("{what}: more than 10,000 parts listed"),
                        ));
                    }
                    marker = Some(m.to_string());
                }
                _ => break,
            }
        }
        Ok(out)
    }

    /// Aborts an upload (its parts are freed).
    pub async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), ItemError> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.url.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| {
                s3_error(
                    &format!("abort upload of s3://{}/{key}", self.url.bucket),
                    e,
                )
            })?;
        Ok(())
    }

    /// Open multipart uploads under the prefix: (full key, upload id, started).
    pub async fn open_uploads(
        &self,
    ) -> Result<Vec<(String, String, Option<chrono::DateTime<chrono::Utc>>)>, ItemError> {
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.url.bucket)
                .prefix(&self.url.prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| s3_error(&format!("list uploads of {}", self.url), e))?;
            for u in page.uploads() {
                let started = u
                    .initiated()
                    .and_then(|d| chrono::DateTime::from_timestamp(d.secs(), 0));
                out.push((
                    u.key().unwrap_or_default().to_string(),
                    u.upload_id().unwrap_or_default().to_string(),
                    started,
                ));
            }
            if page.is_truncated() == Some(true) {
                key_marker = page.next_key_marker().map(str::to_string);
                id_marker = page.next_upload_id_marker().map(str::to_string);
                if key_marker.is_none() && id_marker.is_none() {
                    break;
                }
            } else {
                break;
            }
        }
        Ok(out)
    }

    /// Asks S3 to restore an archived object for `days` days at `tier` (RestoreObject). A
    /// restore already under way (409 RestoreAlreadyInProgress) is not an error.
    pub async fn restore(&self, rel: &str, days: i32, tier: Tier) -> Result<(), ItemError> {
        use aws_sdk_s3::types::{GlacierJobParameters, RestoreRequest};
        let job = GlacierJobParameters::builder()
            .tier(tier)
            .build()
            .map_err(|e| ItemError::new(ErrorClass::BadInput, e.to_string()))?;
        let r = self
            .client
            .restore_object()
            .bucket(&self.url.bucket)
            .key(self.url.key(rel))
            .set_request_payer(self.payer())
            .restore_request(
                RestoreRequest::builder()
                    .days(days)
                    .glacier_job_parameters(job)
                    .build(),
            )
            .send()
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(s))
                if s.err().meta().code() == Some("RestoreAlreadyInProgress") =>
            {
                Ok(())
            }
            Err(e) => Err(s3_error(&format!("restore {}", self.url.object(rel)), e)),
        }
    }

    /// Deletes an object (S3 events with deletion turned on).
    pub async fn delete(&self, rel: &str) -> Result<(), ItemError> {
        self.client
            .delete_object()
            .bucket(&self.url.bucket)
            .key(self.url.key(rel))
            .send()
            .await
            .map_err(|e| s3_error(&format!("delete {}", self.url.object(rel)), e))?;
        Ok(())
    }
}

/// What a GET read.
pub struct Got {
    pub body: bytes::Bytes,
    pub meta: Meta,
    pub etag: Option<String>,
    /// The ETag is not an MD5 ([`etag_not_md5`]).
    pub encrypted: bool,
    /// The checksum the source stored, as the answer reports it (full GETs only).
    pub checksum: Option<Checksum>,
}

/// What GetObjectAttributes says of an object ([`Bucket::object_parts`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceParts {
    pub etag: Option<String>,
    pub size: u64,
    pub checksum: Option<Checksum>,
    /// The part count S3 reports (multipart objects).
    pub count: Option<u32>,
    /// The parts, in the order listed.
    pub parts: Vec<SourcePart>,
}

/// One part of a multipart object as GetObjectAttributes lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePart {
    pub number: u32,
    pub size: u64,
    /// Its checksums (the order of [`Algo::ALL`]).
    pub checksum: [Option<String>; 5],
}

/// What a write (PUT, CopyObject, CompleteMultipartUpload) left at the destination.
pub struct Written {
    pub etag: Option<String>,
    /// The ETag is not an MD5 ([`etag_not_md5`]).
    pub encrypted: bool,
    /// The checksum S3 stored, in the algorithm asked for (base64), when it reports one.
    pub checksum: Option<String>,
}

/// What to do about an object under a customer-provided key (SSE-C): we hold no key, so
/// it cannot be read; one object's error, named, not retried.
const SSE_C_ADVICE: &str = "the object is encrypted with a customer-provided key (SSE-C); S3 serves it only to requests that carry that key (x-amz-server-side-encryption-customer-key), and transfer-hub takes no customer keys: copy it yourself with its key (aws s3 cp --sse-c AES256 --sse-c-key …), or re-encrypt it at the source with SSE-S3 or SSE-KMS";

fn sse_c_error(what: &str) -> ItemError {
    ItemError::new(
        ErrorClass::BadInput,
        format!("{what}: answered 400 Bad Request: {SSE_C_ADVICE}"),
    )
}

/// S3's answer to a read of an SSE-C object without its key ("The object was stored using
/// a form of Server Side Encryption…") explained.
fn sse_c_hint(e: ItemError) -> ItemError {
    if e.message
        .contains("stored using a form of Server Side Encryption")
    {
        ItemError::new(
            ErrorClass::BadInput,
            format!("{}: {SSE_C_ADVICE}", e.message),
        )
    } else {
        e
    }
}

/// A body that could not be read: a checksum the SDK found wrong is a mismatch (never
/// retried into a success), anything else a retryable network problem.
fn body_error(what: &str, e: &(dyn std::error::Error + 'static)) -> ItemError {
    let mut chain = Vec::new();
    let mut cur = Some(e);
    while let Some(x) = cur {
        chain.push(x.to_string());
        cur = x.source();
    }
    let text = chain.join(": ");
    let debug = format!("{e:?}").to_ascii_lowercase();
    let class = if text.to_ascii_lowercase().contains("checksum mismatch")
        || debug.contains("checksummismatch")
        || debug.contains("checksum mismatch")
    {
        ErrorClass::DigestMismatch
    } else {
        ErrorClass::Retryable
    };
    let why = if class == ErrorClass::DigestMismatch {
        "the body does not match the checksum the source stored"
    } else {
        text.as_str()
    };
    ItemError::new(class, format!("{what}: reading the body: {why}"))
}

/// `application/x-www-form-urlencoded` for tag keys and values.
fn form_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_header_says_whether_the_copy_is_readable() {
        assert_eq!(Restore::parse("ongoing-request=\"true\""), Restore::Ongoing);
        assert_eq!(
            Restore::parse("ongoing-request = \"true\""),
            Restore::Ongoing
        );
        assert_eq!(
            Restore::parse(
                "ongoing-request=\"false\", expiry-date=\"Fri, 21 Dec 2012 00:00:00 GMT\""
            ),
            Restore::Done
        );
    }

    #[test]
    fn copy_source_keys_are_percent_encoded() {
        assert_eq!(encode_key("a b/ü+?.txt"), "a%20b/%C3%BC%2B%3F.txt");
    }

    #[test]
    fn storage_class_errors_name_the_value_and_the_choices() {
        assert_eq!(
            parse_storage_class("STANDARD_IA").unwrap(),
            StorageClass::StandardIa
        );
        let e = parse_storage_class("FAST").unwrap_err();
        assert!(e.contains("\"FAST\"") && e.contains("GLACIER"), "{e}");
    }

    #[test]
    fn md5_etags_are_recognised() {
        assert!(is_md5_etag("\"d41d8cd98f00b204e9800998ecf8427e\""));
        assert!(!is_md5_etag("d41d8cd98f00b204e9800998ecf8427e-2"));
    }
}
