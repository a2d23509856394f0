//! The rig's S3, as strict as AWS: a proxy in front of moto that enforces what moto
//! forgives, so a test that passes here would pass against S3.
//!
//! - **Copy preconditions.** moto 5.2 honours `If-Match` on GET and HEAD, and
//!   `x-amz-copy-source-if-none-match` on CopyObject, but ignores
//!   `x-amz-copy-source-if-match` on CopyObject and UploadPartCopy. The proxy HEADs the copy
//!   source and answers `412 PreconditionFailed` (S3's XML error) when its ETag is not the
//!   one asked for, or the source is gone, as AWS documents.
//! - **ETags of encrypted objects.** On AWS the ETag of an object under SSE-KMS is not the
//!   MD5 of its bytes, nor are the ETags of its parts; moto always answers with MD5s. For
//!   an object that moto reports as `aws:kms`, or that lives in a bucket whose default
//!   encryption is KMS, the proxy gives a stable ETag that is not the MD5 (32 hex digits,
//!   `-N` kept for multipart objects) in HEAD, GET, PUT, CopyObject, UploadPart,
//!   UploadPartCopy, CompleteMultipartUpload and ListObjectsV2 answers, and maps it back
//!   where a client sends it (`If-Match`, `x-amz-copy-source-if-match`, the part list of
//!   CompleteMultipartUpload). Answers for such objects carry
//!   `x-amz-server-side-encryption: aws:kms`, as S3's do.
//! - **Answers S3 gives.** moto's CompleteMultipartUpload answer has another root element
//!   than S3's (the SDK cannot read it, so every completion looked like a lost answer);
//!   the proxy names it as S3 does.
//! - **Checksums, SSE-C and DSSE-KMS** (see [`sums`]): sent checksums and Content-MD5 are
//!   checked against the bytes (400 BadDigest), stored, and answered as S3 answers them
//!   (full-object and composite); objects under a customer key are served only with it;
//!   DSSE-KMS objects (`aws:kms:dsse`) get non-MD5 ETags like SSE-KMS ones. A test can
//!   spoil bytes or checksums on the way ([`StrictS3::faults`]).

pub mod sums;

use crate::{Rewrite, read_body, read_head, strip_framing};
use md5::{Digest, Md5};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// The ETag S3 would give an SSE-KMS object or part (of object `scope`, `bucket/key`)
/// whose MD5 ETag is `real`: 32 hex digits that are not the MD5 of the bytes (`-N` kept),
/// and differ between two objects of the same bytes, as on AWS.
pub fn kms_etag(scope: &str, real: &str) -> String {
    let bare = real.trim_matches('"');
    let (md5, parts) = match bare.split_once('-') {
        Some((m, n)) => (m, Some(n)),
        None => (bare, None),
    };
    let fake = hex::encode(Md5::digest(format!("sse-kms:{scope}:{md5}").as_bytes()));
    match parts {
        Some(n) => format!("{fake}-{n}"),
        None => fake,
    }
}

#[derive(Default)]
struct State {
    /// Buckets whose default encryption is KMS (asked of moto once).
    kms_buckets: HashMap<String, bool>,
    /// Multipart uploads begun under KMS.
    kms_uploads: HashSet<String>,
    /// Every ETag handed out, back to moto's.
    real: HashMap<String, String>,
    /// Checksums and customer keys of objects, uploads and parts.
    sums: sums::SumState,
}

struct Shared {
    /// Keys the proxy signs its own requests to moto with (any keys when IAM is not
    /// enforced; an admin's when it is).
    keys: (String, String),
    moto: String,
    upstream: String,
    rewrite: Rewrite,
    refused: Arc<AtomicUsize>,
    state: Mutex<State>,
    faults: Arc<Mutex<sums::Faults>>,
}

/// moto behind a proxy that behaves as S3 documents (see the module docs).
pub struct StrictS3 {
    endpoint: String,
    stop: Arc<AtomicBool>,
    /// Copy requests refused with 412 so far.
    pub refused: Arc<AtomicUsize>,
    faults: Arc<Mutex<sums::Faults>>,
    shared: Arc<Shared>,
}

impl StrictS3 {
    /// In front of `moto` (`http://127.0.0.1:PORT`), answers passed on as S3 gives them.
    pub fn start(moto: &str) -> Self {
        Self::start_with(
            moto,
            Arc::new(|_: &str, status, body| (status, vec![], body)),
        )
    }

    /// The same, with every answer passed through `rewrite` last (to spoil or watch it).
    pub fn start_with(moto: &str, rewrite: Rewrite) -> Self {
        Self::start_signed(moto, rewrite, ("testing", "testing"))
    }

    /// The same, signing the proxy's own requests to moto (HEADs of copy sources and of
    /// listed objects, bucket encryption) with `keys`: an admin's when moto enforces IAM.
    pub fn start_signed(moto: &str, rewrite: Rewrite, keys: (&str, &str)) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        let refused = Arc::new(AtomicUsize::new(0));
        let faults = Arc::new(Mutex::new(sums::Faults::default()));
        let shared = Arc::new(Shared {
            faults: faults.clone(),
            keys: (keys.0.to_string(), keys.1.to_string()),
            moto: moto.to_string(),
            upstream: moto.trim_start_matches("http://").to_string(),
            rewrite,
            refused: refused.clone(),
            state: Mutex::new(State::default()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let shared2 = shared.clone();
        std::thread::spawn(move || {
            let shared = shared2;
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let shared = shared.clone();
                        std::thread::spawn(move || {
                            let _ = handle(client, &shared);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Self {
            endpoint,
            stop,
            refused,
            faults,
            shared,
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// What the rig spoils from now on (objects named `bucket/key`).
    pub fn faults(&self) -> std::sync::MutexGuard<'_, sums::Faults> {
        self.faults.lock().unwrap()
    }

    /// Replaces the checksum the rig keeps for `bucket/key` with another valid value of
    /// its algorithm (the object's bytes are left alone). Panics if it keeps none.
    pub fn spoil_stored_checksum(&self, object: &str) {
        let mut st = self.shared.state.lock().unwrap();
        let rec = st
            .sums
            .objects
            .get_mut(object)
            .unwrap_or_else(|| panic!("the rig keeps no checksum for {object}"));
        let mut raw =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &rec.value).unwrap();
        raw[0] ^= 0xff;
        rec.value = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, raw);
    }

    /// The checksum the rig keeps for `bucket/key`: (ALGORITHM, base64 value, composite
    /// part count).
    pub fn stored_checksum(&self, object: &str) -> Option<(String, String, Option<u32>)> {
        let st = self.shared.state.lock().unwrap();
        st.sums
            .objects
            .get(object)
            .map(|r| (r.algo.clone(), r.value.clone(), r.parts))
    }
}

impl Drop for StrictS3 {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A request line taken apart: method, bucket, key (decoded), query.
struct Target {
    method: String,
    bucket: String,
    key: String,
    query: String,
}

fn target(head: &str) -> Target {
    let line = head.lines().next().unwrap_or("");
    let mut it = line.split_whitespace();
    let method = it.next().unwrap_or("").to_string();
    let uri = it.next().unwrap_or("/");
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let path = path.trim_start_matches('/');
    let (bucket, key) = path.split_once('/').unwrap_or((path, ""));
    Target {
        method,
        bucket: bucket.to_string(),
        key: percent_decode(key),
        query: query.to_string(),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_has(query: &str, name: &str) -> bool {
    query
        .split('&')
        .any(|p| p == name || p.starts_with(&format!("{name}=")))
}

fn query_value(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|p| p.strip_prefix(&format!("{name}=")).map(percent_decode))
}

impl Shared {
    /// The proxy's own S3 client, signed with its keys, on a runtime of this thread.
    fn s3<T>(&self, f: impl AsyncFnOnce(aws_sdk_s3::Client) -> T) -> T {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let conf = aws_sdk_s3::config::Builder::new()
                .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
                .http_client(hub_core::aws::sdk::http_client())
                .region(aws_sdk_s3::config::Region::new("us-east-1"))
                .endpoint_url(&self.moto)
                .force_path_style(true)
                // The rig reads and writes moto's bytes as they are: no checksums of the
                // SDK's (moto's own may be wrong: it falls back to CRC32 for CRC32C).
                .request_checksum_calculation(
                    aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
                )
                .response_checksum_validation(
                    aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
                )
                .credentials_provider(aws_sdk_s3::config::Credentials::new(
                    &self.keys.0,
                    &self.keys.1,
                    None,
                    None,
                    "rig",
                ))
                .build();
            f(aws_sdk_s3::Client::from_conf(conf)).await
        })
    }

    /// HEAD of an object as moto holds it: (its ETag, whether moto says aws:kms), or
    /// `None` when it is not there.
    fn head(&self, bucket: &str, key: &str, version: Option<String>) -> Option<(String, bool)> {
        self.s3(async |c| {
            let h = c
                .head_object()
                .bucket(bucket)
                .key(key)
                .set_version_id(version)
                .send()
                .await
                .ok()?;
            Some((
                h.e_tag().unwrap_or("").trim_matches('"').to_string(),
                matches!(
                    h.server_side_encryption(),
                    Some(
                        aws_sdk_s3::types::ServerSideEncryption::AwsKms
                            | aws_sdk_s3::types::ServerSideEncryption::AwsKmsDsse
                    )
                ),
            ))
        })
    }

    fn bucket_is_kms(&self, bucket: &str) -> bool {
        if let Some(k) = self.state.lock().unwrap().kms_buckets.get(bucket) {
            return *k;
        }
        let kms = self.s3(async |c| {
            c.get_bucket_encryption()
                .bucket(bucket)
                .send()
                .await
                .ok()
                .and_then(|o| {
                    let rules = o.server_side_encryption_configuration()?.rules();
                    Some(rules.iter().any(|r| {
                        r.apply_server_side_encryption_by_default()
                            .is_some_and(|d| {
                                d.sse_algorithm()
                                    == &aws_sdk_s3::types::ServerSideEncryption::AwsKms
                            })
                    }))
                })
                .unwrap_or(false)
        });
        self.state
            .lock()
            .unwrap()
            .kms_buckets
            .insert(bucket.to_string(), kms);
        kms
    }

    fn object_is_kms(&self, bucket: &str, key: &str) -> bool {
        self.is_sse_c(&format!("{bucket}/{key}"))
            || self.bucket_is_kms(bucket)
            || self.head(bucket, key, None).is_some_and(|(_, kms)| kms)
    }

    /// Whether an object is under a customer-provided key (its ETag is not an MD5).
    fn is_sse_c(&self, scope: &str) -> bool {
        self.state.lock().unwrap().sums.sse_c.contains_key(scope)
    }

    /// The ETag handed out for moto's `real` one of object `scope`, remembered for the
    /// way back.
    fn fake(&self, scope: &str, real: &str) -> String {
        let fake = kms_etag(scope, real);
        self.state
            .lock()
            .unwrap()
            .real
            .insert(fake.clone(), real.trim_matches('"').to_string());
        fake
    }

    /// moto's ETag for one the proxy handed out (others pass as they are).
    fn real(&self, etag: &str) -> String {
        let bare = etag.trim_matches('"');
        self.state
            .lock()
            .unwrap()
            .real
            .get(bare)
            .cloned()
            .unwrap_or_else(|| bare.to_string())
    }
}

/// Replaces every `<ETag>…</ETag>` value of an XML body (quoted or `&quot;`-quoted).
fn replace_xml_etags(xml: &str, f: &dyn Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(i) = rest.find("<ETag>") {
        let after = &rest[i + 6..];
        let Some(j) = after.find("</ETag>") else {
            break;
        };
        let raw = &after[..j];
        let (q, inner) = if let Some(x) = raw.strip_prefix("&quot;") {
            ("&quot;", x.strip_suffix("&quot;").unwrap_or(x))
        } else if let Some(x) = raw.strip_prefix('"') {
            ("\"", x.strip_suffix('"').unwrap_or(x))
        } else {
            ("", raw)
        };
        out.push_str(&rest[..i + 6]);
        out.push_str(&format!("{q}{}{q}", f(inner)));
        out.push_str("</ETag>");
        rest = &after[j + 7..];
    }
    out.push_str(rest);
    out
}

/// Request headers that carry an ETag the proxy handed out, mapped back to moto's.
fn map_request_head(head: &str, s: &Shared) -> String {
    head.split("\r\n")
        .map(|l| {
            let lower = l.to_ascii_lowercase();
            for name in ["if-match:", "x-amz-copy-source-if-match:"] {
                if lower.starts_with(name) {
                    let v = l[name.len()..].trim();
                    return format!("{}: \"{}\"", &l[..name.len() - 1], s.real(v));
                }
            }
            l.to_string()
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

fn handle(mut client: TcpStream, s: &Shared) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(300)))?;
    let head = read_head(&mut client)?;
    let mut body = read_body(&mut client, &head, false)?;
    let original = String::from_utf8_lossy(&head).to_string();
    let head_text = map_request_head(&original, s);
    let t = target(&head_text);
    if t.method == "POST" && query_has(&t.query, "uploadId") {
        // The part list of CompleteMultipartUpload names the parts by the ETags we gave.
        body = replace_xml_etags(&String::from_utf8_lossy(&body), &|e| s.real(e)).into_bytes();
    }
    let (status, resp_lines, resp_body) = match sums::before(s, &t, &head_text, body) {
        sums::Before::Refuse(answer) => answer,
        sums::Before::Forward(body, pending) => {
            let (st, lines, b) = match copy_precondition_fails(s, &head_text) {
                Some((st, lines, b)) => {
                    s.refused.fetch_add(1, Ordering::Relaxed);
                    (st, lines, b)
                }
                None => forward(s, &head_text, &body)?,
            };
            sums::after(s, &t, &head_text, pending, st, lines, b)
        }
    };
    let (status, mut resp_lines, resp_body) =
        as_s3(s, &t, &head_text, status, resp_lines, resp_body);
    // The test's own rewrite sees the request as the client sent it.
    let (status, extra, resp_body) = (s.rewrite)(&original, status, resp_body);
    resp_lines[0] = format!(
        "HTTP/1.1 {status} {}",
        if status < 300 { "OK" } else { "Status" }
    );
    for (k, v) in extra {
        resp_lines.push(format!("{k}: {v}"));
    }
    let is_head = t.method == "HEAD";
    if !is_head {
        resp_lines.retain(|l| !l.to_ascii_lowercase().starts_with("content-length:"));
        resp_lines.push(format!("Content-Length: {}", resp_body.len()));
    }
    resp_lines.push("Connection: close".into());
    client.write_all(format!("{}\r\n\r\n", resp_lines.join("\r\n")).as_bytes())?;
    if !is_head {
        client.write_all(&resp_body)?;
    }
    client.shutdown(std::net::Shutdown::Both)
}

/// Sends the request to moto; returns the status, the answer's head lines (status line
/// first; framing headers dropped, a HEAD keeps its Content-Length) and its body.
fn forward(s: &Shared, head: &str, body: &[u8]) -> std::io::Result<(u16, Vec<String>, Vec<u8>)> {
    let mut up = TcpStream::connect(&s.upstream)?;
    let mut lines = strip_framing(head);
    lines.push(format!("Content-Length: {}", body.len()));
    lines.push("Connection: close".into());
    up.write_all(format!("{}\r\n\r\n", lines.join("\r\n")).as_bytes())?;
    up.write_all(body)?;
    let resp_head = read_head(&mut up)?;
    let is_head = head.starts_with("HEAD ");
    let resp_body = if is_head {
        Vec::new()
    } else {
        read_body(&mut up, &resp_head, true)?
    };
    let text = String::from_utf8_lossy(&resp_head).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(502);
    let lines = if is_head {
        text.split("\r\n")
            .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
            .map(str::to_string)
            .collect()
    } else {
        strip_framing(&text)
    };
    Ok((status, lines, resp_body))
}

/// moto's answer made what S3 answers: the CompleteMultipartUpload root, and the ETags of
/// SSE-KMS objects and parts.
fn as_s3(
    s: &Shared,
    t: &Target,
    head: &str,
    status: u16,
    mut lines: Vec<String>,
    body: Vec<u8>,
) -> (u16, Vec<String>, Vec<u8>) {
    if !(200..300).contains(&status) {
        return (status, lines, body);
    }
    let answer = lines.join("\r\n");
    // SSE-KMS and DSSE-KMS (`aws:kms:dsse`) alike: ETags that are not MD5s.
    let kms_value = |v: Option<String>| v.is_some_and(|v| v.starts_with("aws:kms"));
    let says_kms = kms_value(header(&answer, "x-amz-server-side-encryption"));
    let asks_kms = kms_value(header(head, "x-amz-server-side-encryption"));
    let sse_c = !t.key.is_empty() && s.is_sse_c(&format!("{}/{}", t.bucket, t.key));
    let is_object = !t.key.is_empty();
    let scope = format!("{}/{}", t.bucket, t.key);
    let mut kms = false;
    let mut body = body;
    if t.method == "POST" && query_has(&t.query, "uploads") {
        // CreateMultipartUpload: remember uploads begun under KMS.
        if asks_kms || s.bucket_is_kms(&t.bucket) {
            let text = String::from_utf8_lossy(&body).to_string();
            if let Some(id) = text
                .split("<UploadId>")
                .nth(1)
                .and_then(|x| x.split("</UploadId>").next())
            {
                s.state.lock().unwrap().kms_uploads.insert(id.to_string());
            }
            kms = true;
        }
    } else if t.method == "POST" && query_has(&t.query, "uploadId") {
        let text = String::from_utf8_lossy(&body).replace(
            "CompleteMultipartUploadResponse",
            "CompleteMultipartUploadResult",
        );
        let id = query_value(&t.query, "uploadId").unwrap_or_default();
        kms = says_kms
            || s.state.lock().unwrap().kms_uploads.contains(&id)
            || s.bucket_is_kms(&t.bucket);
        body = if kms {
            replace_xml_etags(&text, &|e| s.fake(&scope, e))
        } else {
            text
        }
        .into_bytes();
    } else if t.method == "PUT" && query_has(&t.query, "uploadId") {
        // UploadPart (ETag header) or UploadPartCopy (XML).
        let id = query_value(&t.query, "uploadId").unwrap_or_default();
        kms = says_kms || s.state.lock().unwrap().kms_uploads.contains(&id);
        if kms && header(head, "x-amz-copy-source").is_some() {
            body = replace_xml_etags(&String::from_utf8_lossy(&body), &|e| s.fake(&scope, e))
                .into_bytes();
        }
    } else if t.method == "PUT" && is_object && header(head, "x-amz-copy-source").is_some() {
        kms = says_kms || asks_kms || s.bucket_is_kms(&t.bucket);
        if kms {
            body = replace_xml_etags(&String::from_utf8_lossy(&body), &|e| s.fake(&scope, e))
                .into_bytes();
        }
    } else if t.method == "GET" && is_object && query_has(&t.query, "attributes") {
        // GetObjectAttributes names the object's ETag as HEAD does: its KMS ETag.
        if s.object_is_kms(&t.bucket, &t.key) {
            body = replace_xml_etags(&String::from_utf8_lossy(&body), &|e| s.fake(&scope, e))
                .into_bytes();
        }
        return (status, lines, body);
    } else if matches!(t.method.as_str(), "PUT" | "GET" | "HEAD") && is_object {
        kms = says_kms || sse_c || s.bucket_is_kms(&t.bucket);
    } else if t.method == "GET" && !is_object && query_has(&t.query, "list-type") {
        // A listing: each entry of a KMS object shows its KMS ETag.
        let text = String::from_utf8_lossy(&body).to_string();
        let mut out = String::new();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("<Contents>") {
            let Some(j) = rest[i..].find("</Contents>") else {
                break;
            };
            let block = &rest[i..i + j];
            let key = block
                .split("<Key>")
                .nth(1)
                .and_then(|x| x.split("</Key>").next())
                .map(xml_unescape)
                .unwrap_or_default();
            out.push_str(&rest[..i]);
            if s.object_is_kms(&t.bucket, &key) {
                let scope = format!("{}/{key}", t.bucket);
                out.push_str(&replace_xml_etags(block, &|e| s.fake(&scope, e)));
            } else {
                out.push_str(block);
            }
            rest = &rest[i + j..];
        }
        out.push_str(rest);
        body = out.into_bytes();
        return (status, lines, body);
    }
    if kms {
        for l in lines.iter_mut() {
            if l.to_ascii_lowercase().starts_with("etag:") {
                let v = l[5..].trim().to_string();
                *l = format!("ETag: \"{}\"", s.fake(&scope, &v));
            }
        }
        if !says_kms && !sse_c {
            lines.push("x-amz-server-side-encryption: aws:kms".into());
        }
    }
    (status, lines, body)
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// For a CopyObject or UploadPartCopy carrying `x-amz-copy-source-if-match`: S3's 412
/// answer when the source's ETag differs (or the source is gone); `None` to forward.
fn copy_precondition_fails(s: &Shared, head: &str) -> Option<(u16, Vec<String>, Vec<u8>)> {
    if !head.starts_with("PUT ") {
        return None;
    }
    let wanted = header(head, "x-amz-copy-source-if-match")?;
    let source = header(head, "x-amz-copy-source")?;
    let (path, query) = source.split_once('?').unwrap_or((&source, ""));
    let path = percent_decode(path.trim_start_matches('/'));
    let (bucket, key) = path.split_once('/').unwrap_or((&path, ""));
    let current = s.head(bucket, key, query_value(query, "versionId"));
    let holds = current.is_some_and(|(etag, _)| etag == wanted.trim_matches('"'));
    if holds {
        return None;
    }
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>PreconditionFailed</Code>\
<Message>At least one of the pre-conditions you specified did not hold</Message>\
<Condition>x-amz-copy-source-If-Match</Condition></Error>";
    Some((
        412,
        vec![
            "HTTP/1.1 412 Precondition Failed".into(),
            "Content-Type: application/xml".into(),
        ],
        body.as_bytes().to_vec(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kms_etags_are_not_md5s_and_keep_the_part_count() {
        let md5 = "5d41402abc4b2a76b9719d911017c592";
        let k = kms_etag("b/k", &format!("\"{md5}\""));
        assert_eq!(k.len(), 32);
        assert_ne!(k, md5);
        assert_ne!(k, kms_etag("b/other", md5), "two objects of the same bytes");
        assert_eq!(k, kms_etag("b/k", md5), "stable for one object");
        assert!(kms_etag("b/k", "abc-3").ends_with("-3"));
        let xml = "<R><ETag>&quot;a&quot;</ETag><ETag>\"b\"</ETag></R>";
        assert_eq!(
            replace_xml_etags(xml, &|e| format!("{e}!")),
            "<R><ETag>&quot;a!&quot;</ETag><ETag>\"b!\"</ETag></R>"
        );
    }
}
