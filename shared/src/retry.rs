//! Error classes and the retry policy: exponential backoff with full jitter, a fixed
//! number of retries, and a per-attempt timeout. Which errors are retried is decided
//! here, once, from the class. Pure apart from the sleep helper.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// Stable error class names. The same strings are used in the status store, the JSON
/// output and (later) Step Functions `ErrorEquals`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorClass {
    /// Credentials missing or refused (401/403). Not retried.
    AuthDenied,
    /// The image or repository does not exist. Not retried.
    NotFound,
    /// The request itself is wrong (bad reference, bad list line). Not retried.
    BadInput,
    /// The copy arrived with another digest than the source. Not retried.
    DigestMismatch,
    /// Network error, 5xx, 429 or timeout. Retried.
    Retryable,
    /// The source object changed since it was listed (a pinned read answered 412
    /// Precondition Failed). Not retried as is: the object is planned again from what the
    /// source holds now, and never recorded as copied from the old listing.
    SourceChanged,
    /// What the run would change is held by another: a destination tag that already holds
    /// another image and may not be replaced (left alone under `--no-overwrite`, or refused
    /// by an ECR repository with immutable tags: `ImageTagAlreadyExistsException`; the
    /// item's status is `conflict`), or a task whose other run is still going. Not retried.
    Conflict,
}

/// An AWS SDK error as an item error: "`what`: <the SDK's full error chain>", classed by
/// the service's error code and HTTP status ([`ErrorClass::from_aws_error`]); a request
/// that could not be built is bad input, one that got no answer is retryable. Every
/// `aws-sdk-*` crate re-exports the same smithy `SdkError`, so this serves them all.
/// (The SDK never prints credentials.)
pub fn aws_error<E>(what: &str, e: aws_sdk_s3::error::SdkError<E>) -> ItemError
where
    E: std::error::Error + aws_sdk_s3::error::ProvideErrorMetadata + 'static,
{
    use aws_sdk_s3::error::SdkError;
    let class = match &e {
        SdkError::ServiceError(s) => {
            ErrorClass::from_aws_error(s.err().code(), s.raw().status().as_u16())
        }
        SdkError::ConstructionFailure(_) => ErrorClass::BadInput,
        _ => ErrorClass::Retryable,
    };
    let retry_after = match &e {
        SdkError::ServiceError(s) => s
            .raw()
            .headers()
            .get("retry-after")
            .and_then(|v| parse_retry_after(v, chrono::Utc::now())),
        _ => None,
    };
    // One line: the service's code and message, or what kept the request from an answer
    // (the whole chain, which can hold an SDK struct or a raw body, goes to the log).
    let (class, text) = match &e {
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            let text = match (s.err().code(), s.err().message()) {
                (Some(c), Some(m)) => format!("{c}: {} (HTTP {status})", one_line(m)),
                (Some(c), None) => format!("{c} (HTTP {status})"),
                _ => format!("HTTP {status}"),
            };
            (class, text)
        }
        _ => {
            let cause = root_cause(&e);
            let lower = cause.to_ascii_lowercase();
            let class = if lower.contains("dns error")
                || lower.contains("failed to lookup address")
                || lower.contains("name or service not known")
                || lower.contains("no such host")
                || lower.contains("invalid uri")
                || lower.contains("invalid endpoint")
            {
                // An unknown host or an endpoint that is not one: another try cannot help.
                ErrorClass::BadInput
            } else if lower.contains("credential") {
                ErrorClass::AuthDenied
            } else {
                class
            };
            (class, cause)
        }
    };
    tracing::info!(what, chain = %aws_sdk_s3::error::DisplayErrorContext(&e), "AWS error");
    ItemError::new(class, format!("{what}: {}", clip(&text, MAX_SDK_MESSAGE)))
        .with_retry_after(retry_after)
}

/// `text` on one line (newlines and runs of spaces made single spaces).
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The innermost error of a chain, on one line, without the OS error number: what a
/// person can act on ("connection refused", "dns error: failed to lookup address…").
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    let mut texts = vec![e.to_string()];
    while let Some(inner) = last.source() {
        texts.push(inner.to_string());
        last = inner;
    }
    // Wrappers say "dispatch failure" or "io error"; the innermost message that says more
    // is the one to keep, with the DNS or connection context when it is one level up.
    let mut text = texts.last().cloned().unwrap_or_default();
    if let Some(i) = texts.iter().position(|t| t.starts_with("dns error")) {
        text = texts[i..].join(": ");
    }
    let text = text.split(" (os error").next().unwrap_or(&text).to_string();
    let text = one_line(&text);
    let mut c = text.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => text,
    }
}

/// How much of an SDK error's text an item error keeps. An unreadable answer's error carries
/// the whole raw response, whose body the server chose: unclipped, one hostile answer would
/// make a status record larger than a DynamoDB item may be, and a log line as long.
pub const MAX_SDK_MESSAGE: usize = 1024;

/// `text` cut to at most `max` bytes at a character boundary, saying how much was left out.
pub fn clip(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes)", &text[..end], text.len() - end).into()
}

impl ErrorClass {
    /// Whether an error of this class is worth another attempt.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorClass::Retryable)
    }
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::AuthDenied => "AuthDenied",
            ErrorClass::NotFound => "NotFound",
            ErrorClass::BadInput => "BadInput",
            ErrorClass::DigestMismatch => "DigestMismatch",
            ErrorClass::Retryable => "Retryable",
            ErrorClass::SourceChanged => "SourceChanged",
            ErrorClass::Conflict => "Conflict",
        }
    }
    /// Parses a stable name.
    pub fn from_name(s: &str) -> Option<Self> {
        [
            Self::AuthDenied,
            Self::NotFound,
            Self::BadInput,
            Self::DigestMismatch,
            Self::Retryable,
            Self::SourceChanged,
            Self::Conflict,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }

    /// The class of an HTTP status code from a registry.
    pub fn from_http_status(status: u16) -> Self {
        match status {
            401 | 403 => ErrorClass::AuthDenied,
            404 => ErrorClass::NotFound,
            400 | 405 | 413 | 414 | 415 | 422 => ErrorClass::BadInput,
            _ => ErrorClass::Retryable,
        }
    }

    /// The class of an AWS service error from its code and HTTP status: throttling, timeouts
    /// and server errors are retried, access errors are auth, other client errors are bad
    /// input. Some retryable errors come with a 400: S3's `RequestTimeout` (and `SlowDown`,
    /// usually a 503), DynamoDB's `ProvisionedThroughputExceededException`, and
    /// `Throttling`/`ThrottlingException` on any service.
    pub fn from_aws_error(code: Option<&str>, status: u16) -> Self {
        let code = code.unwrap_or("");
        // ECR: a repository with immutable tags refuses to move a tag (PutImage).
        if code == "ImageTagAlreadyExistsException" {
            return ErrorClass::Conflict;
        }
        // S3 found the bytes it received not to match the Content-MD5 or checksum sent.
        if matches!(
            code,
            "BadDigest" | "InvalidDigest" | "XAmzContentChecksumMismatch"
        ) {
            return ErrorClass::DigestMismatch;
        }
        if code.contains("Throttl")
            || code.contains("TooManyRequests")
            || code.contains("RequestLimitExceeded")
            || matches!(
                code,
                "RequestTimeout"
                    | "RequestTimeoutException"
                    | "SlowDown"
                    | "ProvisionedThroughputExceededException"
            )
            || code == "ServerException"
            || status >= 500
            || status == 429
        {
            ErrorClass::Retryable
        } else if code.contains("AccessDenied")
            || code.contains("Unauthorized")
            || code.contains("ExpiredToken")
            || status == 401
            || status == 403
        {
            ErrorClass::AuthDenied
        } else if code.contains("NotFound") && !code.starts_with("Invalid") || status == 404 {
            ErrorClass::NotFound
        } else if code == "PreconditionFailed" || status == 412 {
            ErrorClass::SourceChanged
        } else if (400..500).contains(&status) {
            ErrorClass::BadInput
        } else {
            ErrorClass::Retryable
        }
    }

    /// Classifies the error text of a failed `skopeo copy`. Unknown errors count as
    /// retryable: a transient fault we did not foresee costs a few retries, while a
    /// permanent one we misjudged would cost a lost image.
    pub fn from_copy_output(stderr: &str) -> Self {
        let s = stderr.to_ascii_lowercase();
        let any = |words: &[&str]| words.iter().any(|w| s.contains(w));
        if any(&[
            "toomanyrequests",
            "too many requests",
            " 429",
            "503 service unavailable",
            "502 bad gateway",
            "500 internal server error",
            "504 gateway",
        ]) {
            ErrorClass::Retryable
        } else if any(&[
            "unauthorized",
            "authentication required",
            "denied:",
            "requested access to the resource is denied",
            "invalid username/password",
            "401 unauthorized",
            "403 forbidden",
        ]) {
            ErrorClass::AuthDenied
        } else if any(&[
            "manifest unknown",
            "name unknown",
            "repository name not known",
            "not found: manifest",
            "reading manifest",
            "no such image",
        ]) && !any(&["connection", "eof", "timeout"])
        {
            ErrorClass::NotFound
        } else if any(&[
            // ECR's registry API on a push to a repository with immutable tags.
            "cannot be overwritten because the repository is immutable",
            "imagetagalreadyexists",
        ]) {
            ErrorClass::Conflict
        } else if any(&[
            "invalid reference format",
            "invalid argument",
            "unsupported transport",
            "name invalid",
            "tag invalid",
            "manifest invalid",
        ]) {
            ErrorClass::BadInput
        } else if any(&["digests do not match", "digest mismatch", "manifest digest"]) {
            ErrorClass::DigestMismatch
        } else {
            ErrorClass::Retryable
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A classified failure of one image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{class}: {message}")]
pub struct ItemError {
    pub class: ErrorClass,
    pub message: String,
    /// How long the server asked us to wait before another attempt (`Retry-After` of a
    /// 429 or 503): the next retry waits at least this long. Not stored.
    #[serde(skip)]
    pub retry_after: Option<Duration>,
}

impl ItemError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error, with the wait the server asked for.
    pub fn with_retry_after(mut self, wait: Option<Duration>) -> Self {
        self.retry_after = wait;
        self
    }
}

/// The longest `Retry-After` we wait for; a server asking for more gets this much.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Parses a `Retry-After` value (RFC 9110: delay-seconds, or an HTTP date, measured from
/// `now`), capped at [`MAX_RETRY_AFTER`]. `None` for anything else.
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = value.trim();
    let wait = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(v.parse().unwrap_or(u64::MAX))
    } else {
        let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
        (at.with_timezone(&chrono::Utc) - now)
            .to_std()
            .unwrap_or_default()
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// How often and how patiently a failed step is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (so `retries + 1` attempts at most).
    pub retries: u32,
    /// Backoff before retry n is drawn uniformly from `0..=min(max_delay, base_delay * 2^n)`.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Each attempt is stopped after this long and counts as a retryable timeout.
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retries: 3,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            attempt_timeout: Duration::from_secs(30 * 60),
        }
    }
}

impl RetryPolicy {
    /// The ceiling of the backoff before retry `retry` (0-based): `min(max, base * 2^retry)`.
    pub fn backoff_ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// Full jitter: a delay drawn uniformly from `0..=ceiling`, with `unit` in `[0, 1]`
    /// supplying the randomness (pure, so it can be tested).
    pub fn backoff_with(&self, retry: u32, unit: f64) -> Duration {
        self.backoff_ceiling(retry).mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The delay before retry `retry`, with fresh randomness.
    pub fn backoff(&self, retry: u32) -> Duration {
        self.backoff_with(retry, fastrand::f64())
    }

    /// Whether another attempt follows a failure of `class` after `attempts` attempts.
    pub fn should_retry(&self, class: ErrorClass, attempts: u32) -> bool {
        class.is_retryable() && attempts <= self.retries
    }
}

/// Runs `op` until it succeeds, fails with a class that is not retried, or the retries
/// are spent. Returns the result and the number of attempts made. Each attempt is
/// bounded by the policy's timeout.
pub async fn with_retries<T, F, Fut>(policy: &RetryPolicy, op: F) -> (Result<T, ItemError>, u32)
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Result<T, ItemError>>,
{
    with_retries_until(policy, &crate::interrupt::Stop::never(), op).await
}

/// [`with_retries`] that also ends when `stop` fires: no attempt starts after it, and the
/// wait before a retry is cut short (the result is then [`crate::interrupt::interrupted`]).
pub async fn with_retries_until<T, F, Fut>(
    policy: &RetryPolicy,
    stop: &crate::interrupt::Stop,
    mut op: F,
) -> (Result<T, ItemError>, u32)
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Result<T, ItemError>>,
{
    let mut attempts = 0;
    loop {
        if let Some(why) = stop.reason() {
            return (Err(crate::interrupt::interrupted(why)), attempts);
        }
        attempts += 1;
        let result = match tokio::time::timeout(policy.attempt_timeout, op(attempts)).await {
            Ok(r) => r,
            Err(_) => Err(ItemError::new(
                ErrorClass::Retryable,
                format!(
                    "attempt {attempts} timed out after {:?}",
                    policy.attempt_timeout
                ),
            )),
        };
        match result {
            Ok(v) => return (Ok(v), attempts),
            Err(e) if policy.should_retry(e.class, attempts) && stop.reason().is_none() => {
                tracing::warn!(attempt = attempts, class = %e.class, error = %e.message, "attempt failed; retrying");
                // A server's Retry-After is a floor under the backoff.
                let wait = policy
                    .backoff(attempts - 1)
                    .max(e.retry_after.unwrap_or_default());
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = stop.stopped() => {}
                }
            }
            Err(e) => return (Err(e), attempts),
        }
    }
}

/// The most failed attempts of one item that [`with_progress_retries_until`] forgives for
/// having made progress; after that every failure counts against the retries again, so an
/// item always ends.
pub const MAX_FORGIVEN: u32 = 32;

/// [`with_retries_until`] for work that keeps what it did (an image copy: blobs already at
/// the destination are reused by the next attempt). After a retryable failure `progress`
/// reports how much is done (e.g. how many of the image's blobs and manifests the
/// destination has; `None` when it cannot tell). A failed attempt after which more is done
/// than after any attempt before it made progress: it does not use up a retry, and the
/// count of failures in a row starts again. So `policy.retries` bounds the attempts *in a
/// row that got nothing further*, and the backoff grows with them. Bounded: at most
/// [`MAX_FORGIVEN`] attempts are forgiven (and at most one per newly done piece, since
/// progress is measured against the most seen), so at most
/// `(MAX_FORGIVEN + 1) × (retries + 1)` attempts in all.
pub async fn with_progress_retries_until<T, F, Fut, P, PFut>(
    policy: &RetryPolicy,
    stop: &crate::interrupt::Stop,
    mut op: F,
    mut progress: P,
) -> (Result<T, ItemError>, u32)
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Result<T, ItemError>>,
    P: FnMut() -> PFut,
    PFut: std::future::Future<Output = Option<u64>>,
{
    let mut attempts = 0;
    // Failures in a row without progress, forgiven failures, the most ever seen done.
    let (mut in_a_row, mut forgiven, mut most) = (0u32, 0u32, 0u64);
    loop {
        if let Some(why) = stop.reason() {
            return (Err(crate::interrupt::interrupted(why)), attempts);
        }
        attempts += 1;
        let result = match tokio::time::timeout(policy.attempt_timeout, op(attempts)).await {
            Ok(r) => r,
            Err(_) => Err(ItemError::new(
                ErrorClass::Retryable,
                format!(
                    "attempt {attempts} timed out after {:?}",
                    policy.attempt_timeout
                ),
            )),
        };
        let e = match result {
            Ok(v) => return (Ok(v), attempts),
            Err(e) => e,
        };
        if !e.class.is_retryable() || stop.reason().is_some() {
            return (Err(e), attempts);
        }
        in_a_row += 1;
        if forgiven < MAX_FORGIVEN
            && let Some(done) = progress().await
            && done > most
        {
            most = done;
            forgiven += 1;
            in_a_row = 0;
            tracing::info!(attempt = attempts, done, error = %e.message, "attempt failed after making progress; not counted against the retries");
        }
        if in_a_row > policy.retries {
            return (Err(e), attempts);
        }
        tracing::warn!(attempt = attempts, class = %e.class, error = %e.message, "attempt failed; retrying");
        // A server's Retry-After is a floor under the backoff.
        let wait = policy
            .backoff(in_a_row.saturating_sub(1))
            .max(e.retry_after.unwrap_or_default());
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.stopped() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn clip_keeps_short_text_and_cuts_long_text_at_a_character_boundary() {
        assert_eq!(super::clip("short", 10), "short");
        let long = "é".repeat(600); // 1200 bytes, 2 per character
        let cut = super::clip(&long, 1023);
        assert!(cut.starts_with(&"é".repeat(511)));
        assert!(cut.ends_with("… (178 more bytes)"), "{cut}");
    }

    use super::*;
    use proptest::prelude::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            retries: 3,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            attempt_timeout: Duration::from_millis(200),
        }
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date_and_capped() {
        let now = chrono::DateTime::parse_from_rfc2822("Wed, 02 Dec 2026 01:00:00 GMT")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 02 Dec 2026 01:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 02 Dec 2026 00:59:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past: no wait"
        );
        assert_eq!(parse_retry_after("86400", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_waits_at_least_the_retry_after() {
        let p = RetryPolicy {
            retries: 1,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
            attempt_timeout: Duration::from_secs(60),
        };
        let start = tokio::time::Instant::now();
        let (r, attempts) = with_retries(&p, |n| async move {
            if n == 1 {
                Err(ItemError::new(ErrorClass::Retryable, "429")
                    .with_retry_after(Some(Duration::from_secs(7))))
            } else {
                Ok(start.elapsed())
            }
        })
        .await;
        assert_eq!(attempts, 2);
        assert!(r.unwrap() >= Duration::from_secs(7));
    }

    #[test]
    fn classifies_skopeo_errors() {
        use ErrorClass::*;
        for (text, class) in [
            (
                "initializing source docker://h/a:1: reading manifest 1 in h/a: manifest unknown: manifest unknown",
                NotFound,
            ),
            (
                "unable to retrieve auth token: invalid username/password: unauthorized: authentication required",
                AuthDenied,
            ),
            (
                "writing blob: initiating layer upload to /v2/a/blobs/uploads/ in 127.0.0.1:5000: denied: requested access to the resource is denied",
                AuthDenied,
            ),
            (
                "trying to reuse blob: Head \"http://127.0.0.1:1/v2/a/blobs/x\": dial tcp 127.0.0.1:1: connect: connection refused",
                Retryable,
            ),
            ("writing manifest: EOF", Retryable),
            (
                "reading manifest latest in docker.io/library/x: toomanyrequests: You have reached your pull rate limit",
                Retryable,
            ),
            (
                "received unexpected HTTP status: 503 Service Unavailable",
                Retryable,
            ),
            ("invalid argument \"x\" for \"--foo\"", BadInput),
            (
                "Invalid destination name docker://A: invalid reference format",
                BadInput,
            ),
            // ECR's answer to moving a tag of a repository with immutable tags.
            (
                "writing manifest: uploading manifest 1 to 1.dkr.ecr.eu-west-1.amazonaws.com/app: tag invalid: The image tag '1' already exists in the 'app' repository and cannot be overwritten because the repository is immutable.",
                Conflict,
            ),
            ("something nobody foresaw", Retryable),
        ] {
            assert_eq!(ErrorClass::from_copy_output(text), class, "{text}");
        }
    }

    #[test]
    fn aws_errors_map_to_classes() {
        use ErrorClass::*;
        for (code, status, class) in [
            ("ThrottlingException", 400, Retryable),
            // S3: the connection sat idle too long / too many requests to a prefix.
            ("RequestTimeout", 400, Retryable),
            ("SlowDown", 400, Retryable),
            ("SlowDown", 503, Retryable),
            // DynamoDB (provisioned tables) and other services' throttling.
            ("ProvisionedThroughputExceededException", 400, Retryable),
            ("Throttling", 400, Retryable),
            ("ServerException", 500, Retryable),
            ("AccessDeniedException", 400, AuthDenied),
            ("InvalidSubnetID.NotFound", 400, BadInput),
            ("ClusterNotFoundException", 400, NotFound),
            ("ImageTagAlreadyExistsException", 400, Conflict),
            ("InvalidParameterException", 400, BadInput),
            ("", 503, Retryable),
        ] {
            assert_eq!(
                ErrorClass::from_aws_error(Some(code), status),
                class,
                "{code}"
            );
        }
    }

    #[test]
    #[cfg(feature = "aws")]
    fn sdk_errors_of_any_service_are_classed_by_code_and_status() {
        use aws_sdk_s3::config::http::HttpResponse;
        use aws_sdk_s3::error::{ErrorMetadata, SdkError};
        use aws_sdk_s3::primitives::SdkBody;
        fn meta(code: &str) -> ErrorMetadata {
            ErrorMetadata::builder().code(code).message("m").build()
        }
        fn classed<E>(what: &str, e: E, status: u16) -> ItemError
        where
            E: std::error::Error + aws_sdk_s3::error::ProvideErrorMetadata + 'static,
        {
            let raw = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
            aws_error(what, SdkError::service_error(e, raw))
        }
        use aws_sdk_sns::operation::publish::PublishError;
        use aws_sdk_sqs::operation::send_message_batch::SendMessageBatchError as SqsError;
        use aws_sdk_ssm::operation::get_parameter::GetParameterError;
        let e = classed("SQS", SqsError::generic(meta("AccessDenied")), 403);
        assert_eq!(e.class, ErrorClass::AuthDenied);
        assert!(e.message.starts_with("SQS: "), "{}", e.message);
        assert!(e.message.contains("AccessDenied"), "{}", e.message);
        let e = classed(
            "SSM",
            GetParameterError::generic(meta("ParameterNotFound")),
            400,
        );
        assert_eq!(e.class, ErrorClass::NotFound);
        let e = classed("SNS", PublishError::generic(meta("Throttling")), 400);
        assert_eq!(e.class, ErrorClass::Retryable);
        let e = classed("SNS", PublishError::generic(meta("InvalidParameter")), 400);
        assert_eq!(e.class, ErrorClass::BadInput);
        type HeadError = aws_sdk_s3::operation::head_object::HeadObjectError;
        let e = aws_error("S3", SdkError::<HeadError>::timeout_error("slow"));
        assert_eq!(e.class, ErrorClass::Retryable);
        // Retryable although a 400, on whichever service answers it.
        for code in [
            "RequestTimeout",
            "SlowDown",
            "ProvisionedThroughputExceededException",
            "ThrottlingException",
        ] {
            let e = classed("S3", HeadError::generic(meta(code)), 400);
            assert_eq!(e.class, ErrorClass::Retryable, "{code}");
            let e = classed("SQS", SqsError::generic(meta(code)), 400);
            assert_eq!(e.class, ErrorClass::Retryable, "{code}");
        }
    }

    #[test]
    fn http_statuses_map_to_classes() {
        assert_eq!(ErrorClass::from_http_status(401), ErrorClass::AuthDenied);
        assert_eq!(ErrorClass::from_http_status(404), ErrorClass::NotFound);
        assert_eq!(ErrorClass::from_http_status(429), ErrorClass::Retryable);
        assert_eq!(ErrorClass::from_http_status(503), ErrorClass::Retryable);
    }

    #[test]
    fn class_names_round_trip() {
        for c in [
            ErrorClass::AuthDenied,
            ErrorClass::NotFound,
            ErrorClass::BadInput,
            ErrorClass::DigestMismatch,
            ErrorClass::Retryable,
        ] {
            assert_eq!(ErrorClass::from_name(c.as_str()), Some(c));
            assert_eq!(
                serde_json::to_string(&c).unwrap(),
                format!("\"{}\"", c.as_str())
            );
        }
    }

    proptest! {
        #[test]
        fn backoff_stays_under_the_exponential_ceiling(retry in 0u32..64, unit in 0.0f64..=1.0) {
            let p = policy();
            let d = p.backoff_with(retry, unit);
            prop_assert!(d <= p.backoff_ceiling(retry));
            prop_assert!(d <= p.max_delay);
        }
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let p = policy();
        let c: Vec<u128> = (0..6).map(|r| p.backoff_ceiling(r).as_millis()).collect();
        assert_eq!(c, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.backoff_with(2, 0.0), Duration::ZERO);
        assert_eq!(p.backoff_with(2, 1.0), Duration::from_millis(400));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_retryable_errors_up_to_the_limit() {
        let (r, n) = with_retries::<(), _, _>(&policy(), |_| async {
            Err(ItemError::new(ErrorClass::Retryable, "net"))
        })
        .await;
        assert_eq!(n, 4, "first attempt + 3 retries");
        assert_eq!(r.unwrap_err().class, ErrorClass::Retryable);
    }

    #[tokio::test(start_paused = true)]
    async fn progress_does_not_use_up_retries_but_the_forgiven_are_capped() {
        let stop = crate::interrupt::Stop::never();
        let fail = |_| async { Err::<(), _>(ItemError::new(ErrorClass::Retryable, "mid-way")) };
        // Progress after each of the first 5 failures, then none: 5 forgiven + 1 + 3 retries.
        let done = std::cell::Cell::new(0u64);
        let probe = || {
            done.set((done.get() + 1).min(5));
            let d = done.get();
            async move { Some(d) }
        };
        let (r, n) = with_progress_retries_until(&policy(), &stop, fail, probe).await;
        assert_eq!((r.is_err(), n), (true, 5 + 4));
        // Progress after every failure, for ever: still ends.
        let done = std::cell::Cell::new(0u64);
        let probe = || {
            done.set(done.get() + 1);
            let d = done.get();
            async move { Some(d) }
        };
        let (_, n) = with_progress_retries_until(&policy(), &stop, fail, probe).await;
        assert_eq!(n, MAX_FORGIVEN + 4);
        // No way to tell: the retries count as before.
        let (_, n) = with_progress_retries_until(&policy(), &stop, fail, || async { None }).await;
        assert_eq!(n, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn does_not_retry_auth_errors() {
        let (r, n) = with_retries::<(), _, _>(&policy(), |_| async {
            Err(ItemError::new(ErrorClass::AuthDenied, "no"))
        })
        .await;
        assert_eq!(n, 1);
        assert_eq!(r.unwrap_err().class, ErrorClass::AuthDenied);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_attempt_times_out_and_is_retried() {
        let (r, n) = with_retries(&policy(), |attempt| async move {
            if attempt < 3 {
                std::future::pending::<()>().await;
            }
            Ok(attempt)
        })
        .await;
        assert_eq!((r.unwrap(), n), (3, 3));
    }
}
