//! The strict rig's additional checksums and customer-key (SSE-C) objects, as AWS
//! documents them (moto stores whatever checksum a client names, checks none, and
//! ignores customer keys):
//!
//! - A PUT or UploadPart carrying `x-amz-checksum-{crc32,crc32c,crc64nvme,sha1,sha256}`
//!   (header, or aws-chunked trailer) or `Content-MD5` is checked against the bytes that
//!   arrived: `400 BadDigest` when they differ, `400 InvalidRequest` for a value that is
//!   not a checksum of that algorithm. A PUT without one gets S3's default, a CRC64NVME.
//! - CreateMultipartUpload's `x-amz-checksum-algorithm`/`-type` (COMPOSITE by default,
//!   FULL_OBJECT for CRC64NVME; FULL_OBJECT only for CRCs, COMPOSITE never for CRC64NVME)
//!   apply to its parts: a part of
//!   another algorithm is refused; UploadPartCopy's checksum is computed over the copied
//!   range; CompleteMultipartUpload must name every part's checksum as stored (else
//!   `InvalidRequest` / `InvalidPart`), and a full-object checksum it sends must match
//!   (`BadDigest`, nothing completed). The object's checksum is then the COMPOSITE
//!   checksum of the part checksums (`-N`) or the FULL_OBJECT checksum of all its bytes.
//! - CopyObject keeps the source's checksum, or computes `x-amz-checksum-algorithm` over
//!   the copied bytes when asked.
//! - Stored checksums are answered on HEAD and GET with `x-amz-checksum-mode: ENABLED`
//!   (not on ranged GETs), with `x-amz-checksum-type`, in PUT/part/copy/complete answers
//!   and in GetObjectAttributes, which also lists a multipart object's parts (ObjectParts:
//!   number, size, checksum; paged by `x-amz-max-parts`/`x-amz-part-number-marker`), which
//!   moto does not.
//! - SSE-C: an object PUT with a customer key is read (HEAD, GET, copy source) only with
//!   the same key's headers; otherwise HEAD answers a bare 400 and GET/copy
//!   `400 InvalidRequest`, as S3 does. Its ETag is not the MD5 of its bytes.
//! - Faults a test asks for ([`super::StrictS3::faults`]): a byte flipped in a GET answer
//!   (on the way from the source), in a PUT/part body (on the way to S3, before S3 checks
//!   it), in what a CopyObject/UploadPartCopy stored (S3 copying wrong), or a stored
//!   checksum spoiled.

use super::{Shared, Target, header, query_has, query_value};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use md5::{Digest, Md5};
use std::collections::{HashMap, HashSet};

/// What a test asks the rig to spoil, by `bucket/key`.
#[derive(Default)]
pub struct Faults {
    /// One byte of every GET answer's body for these objects is flipped.
    pub corrupt_reads: HashSet<String>,
    /// One byte of every PUT/UploadPart body for these objects is flipped before the
    /// (emulated) S3 checks it.
    pub corrupt_writes: HashSet<String>,
    /// What a CopyObject or UploadPartCopy into these objects stores has one byte flipped.
    pub corrupt_copies: HashSet<String>,
}

/// A checksum the rig keeps for an object.
#[derive(Clone, Debug)]
pub struct Stored {
    /// `CRC32C` etc.
    pub algo: String,
    /// Base64 (composite without its `-N`).
    pub value: String,
    /// `Some(N)` for a COMPOSITE checksum over N parts.
    pub parts: Option<u32>,
    /// moto's ETag of the object when it was stored (a record of an older version is stale).
    pub etag: String,
    /// A multipart object's parts: (number, size, checksum in `algo`), what
    /// GetObjectAttributes lists as ObjectParts.
    pub layout: Vec<(u32, u64, String)>,
}

#[derive(Default)]
pub struct SumState {
    pub objects: HashMap<String, Stored>,
    /// Upload id → (algorithm, type).
    pub uploads: HashMap<String, (String, String)>,
    /// (upload id, part number) → checksum.
    pub parts: HashMap<(String, u32), String>,
    /// (upload id, part number) → size.
    pub part_sizes: HashMap<(String, u32), u64>,
    /// SSE-C objects → the key's MD5 (base64).
    pub sse_c: HashMap<String, String>,
}

/// An answer the rig gives itself: status, head lines, body.
type Answer = (u16, Vec<String>, Vec<u8>);

pub const ALGOS: [&str; 5] = ["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"];

/// The base64 checksum of `bytes` in `algo` (`CRC32C`…).
pub fn compute(algo: &str, bytes: &[u8]) -> Option<String> {
    use aws_smithy_checksums::ChecksumAlgorithm as C;
    let c = match algo.to_ascii_uppercase().as_str() {
        "CRC32" => C::Crc32,
        "CRC32C" => C::Crc32c,
        "CRC64NVME" => C::Crc64Nvme,
        "SHA1" => C::Sha1,
        "SHA256" => C::Sha256,
        _ => return None,
    };
    let mut h = c.into_impl();
    h.update(bytes);
    Some(STANDARD.encode(h.finalize()))
}

fn digest_len(algo: &str) -> usize {
    match algo {
        "CRC32" | "CRC32C" => 4,
        "CRC64NVME" => 8,
        "SHA1" => 20,
        _ => 32,
    }
}

fn error(status: u16, code: &str, message: &str) -> Answer {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    (
        status,
        vec![
            format!("HTTP/1.1 {status} Bad Request"),
            "Content-Type: application/xml".into(),
        ],
        body.into_bytes(),
    )
}

/// An aws-chunked body (`x-amz-trailer`): its data and trailing headers.
fn dechunk(body: &[u8]) -> (Vec<u8>, Vec<(String, String)>) {
    let mut data = Vec::new();
    let mut trailers = Vec::new();
    let mut i = 0;
    while let Some(nl) = body[i..].windows(2).position(|w| w == b"\r\n") {
        let line = String::from_utf8_lossy(&body[i..i + nl]).to_string();
        i += nl + 2;
        let size =
            usize::from_str_radix(line.split(';').next().unwrap_or("0").trim(), 16).unwrap_or(0);
        if size == 0 {
            for l in String::from_utf8_lossy(&body[i..]).split("\r\n") {
                if let Some((k, v)) = l.split_once(':') {
                    trailers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                }
            }
            break;
        }
        data.extend_from_slice(&body[i..(i + size).min(body.len())]);
        i = (i + size + 2).min(body.len());
    }
    (data, trailers)
}

/// The `x-amz-checksum-*` a request names (header or trailer): (ALGO, value).
fn sent_checksum(head: &str, trailers: &[(String, String)]) -> Option<(String, String)> {
    ALGOS.iter().find_map(|a| {
        let name = format!("x-amz-checksum-{}", a.to_ascii_lowercase());
        header(head, &name)
            .or_else(|| {
                trailers
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.clone())
            })
            .map(|v| (a.to_string(), v))
    })
}

/// The decoded payload of a PUT or part request.
fn payload(head: &str, body: &[u8]) -> (Vec<u8>, Vec<(String, String)>) {
    let chunked = header(head, "x-amz-trailer").is_some()
        || header(head, "content-encoding").is_some_and(|v| v.contains("aws-chunked"));
    if chunked {
        dechunk(body)
    } else {
        (body.to_vec(), vec![])
    }
}

/// Checks the Content-MD5 and additional checksum a write sent against `data`.
fn check_sent(
    head: &str,
    data: &[u8],
    trailers: &[(String, String)],
) -> Result<Option<(String, String)>, Answer> {
    if let Some(md5) = header(head, "content-md5")
        && STANDARD.encode(Md5::digest(data)) != md5
    {
        return Err(error(
            400,
            "BadDigest",
            "The Content-MD5 you specified did not match what we received.",
        ));
    }
    let Some((algo, value)) = sent_checksum(head, trailers) else {
        return Ok(None);
    };
    if STANDARD.decode(&value).map(|v| v.len()).ok() != Some(digest_len(&algo)) {
        return Err(error(
            400,
            "InvalidRequest",
            &format!(
                "Value for x-amz-checksum-{} header is invalid.",
                algo.to_ascii_lowercase()
            ),
        ));
    }
    if compute(&algo, data).as_deref() != Some(value.as_str()) {
        return Err(error(
            400,
            "BadDigest",
            &format!("The {algo} you specified did not match the calculated checksum."),
        ));
    }
    Ok(Some((algo, value)))
}

/// The SSE-C key MD5 a request carries for its object (or, `copy`, its copy source).
fn customer_key_md5(head: &str, copy: bool) -> Option<String> {
    let p = if copy {
        "x-amz-copy-source-server-side-encryption-customer-"
    } else {
        "x-amz-server-side-encryption-customer-"
    };
    header(head, &format!("{p}key"))?;
    header(head, &format!("{p}key-md5"))
}

fn sse_c_refusal(is_head: bool) -> Answer {
    if is_head {
        (400, vec!["HTTP/1.1 400 Bad Request".into()], vec![])
    } else {
        error(
            400,
            "InvalidRequest",
            "The object was stored using a form of Server Side Encryption. The correct parameters must be provided to retrieve the object.",
        )
    }
}

/// The copy source of a request: `bucket/key`.
fn copy_source(head: &str) -> Option<String> {
    let source = header(head, "x-amz-copy-source")?;
    let path = source.split_once('?').map_or(source.as_str(), |x| x.0);
    Some(super::percent_decode(path.trim_start_matches('/')))
}

/// What the rig decides before moto sees a request: `Err(answer)` to refuse it, else the
/// body to forward (spoiled when a test asked) and what to remember once moto accepted.
pub(super) enum Before {
    Forward(Vec<u8>, Pending),
    Refuse(Answer),
}

/// What a write that moto accepts leaves for the rig to record.
#[derive(Default)]
pub(super) struct Pending {
    /// A PUT: the checksum sent (or S3's default), and the SSE-C key MD5.
    put: Option<(String, String)>,
    sse_c: Option<String>,
    /// An UploadPart: the part's checksum in the upload's algorithm, and its size.
    part: Option<(String, u32, String, String, u64)>,
}

pub(super) fn before(s: &Shared, t: &Target, head: &str, body: Vec<u8>) -> Before {
    let scope = format!("{}/{}", t.bucket, t.key);
    let is_object = !t.key.is_empty();
    let copy_from = copy_source(head);
    // SSE-C objects are read only with their key.
    if is_object && matches!(t.method.as_str(), "GET" | "HEAD") && !query_has(&t.query, "uploadId")
    {
        let want = s.state.lock().unwrap().sums.sse_c.get(&scope).cloned();
        if let Some(want) = want
            && customer_key_md5(head, false).as_deref() != Some(want.as_str())
        {
            return Before::Refuse(sse_c_refusal(t.method == "HEAD"));
        }
    }
    if let Some(src) = &copy_from {
        let want = s.state.lock().unwrap().sums.sse_c.get(src).cloned();
        if let Some(want) = want
            && customer_key_md5(head, true).as_deref() != Some(want.as_str())
        {
            return Before::Refuse(sse_c_refusal(false));
        }
    }
    if t.method == "POST" && query_has(&t.query, "uploads") {
        let algo = header(head, "x-amz-checksum-algorithm").map(|a| a.to_ascii_uppercase());
        let kind = header(head, "x-amz-checksum-type").map(|a| a.to_ascii_uppercase());
        if let Some(a) = &algo {
            let kind = kind.clone().unwrap_or_else(|| {
                if a == "CRC64NVME" {
                    "FULL_OBJECT"
                } else {
                    "COMPOSITE"
                }
                .to_string()
            });
            if kind == "COMPOSITE" && a == "CRC64NVME" {
                return Before::Refuse(error(
                    400,
                    "InvalidRequest",
                    "The CRC64NVME checksum algorithm does not support the COMPOSITE checksum type.",
                ));
            }
            if kind == "FULL_OBJECT" && a.starts_with("SHA") {
                return Before::Refuse(error(
                    400,
                    "InvalidRequest",
                    &format!(
                        "The {a} checksum algorithm does not support the FULL_OBJECT checksum type."
                    ),
                ));
            }
        }
        return Before::Forward(body, Pending::default());
    }
    if t.method == "POST" && query_has(&t.query, "uploadId") {
        return match check_part_list(s, t, head, &body) {
            Some(refusal) => Before::Refuse(refusal),
            None => Before::Forward(body, Pending::default()),
        };
    }
    // PutObject or UploadPart (the SDK adds `x-id=…`), not a subresource of an object.
    let is_write = t.method == "PUT" && is_object && copy_from.is_none() && {
        let q = &t.query;
        !["tagging", "acl", "retention", "legal-hold"]
            .iter()
            .any(|sub| query_has(q, sub))
            && query_has(q, "uploadId") == query_has(q, "partNumber")
    };
    if !is_write {
        return Before::Forward(body, Pending::default());
    }
    let mut body = body;
    if s.faults.lock().unwrap().corrupt_writes.contains(&scope) && !body.is_empty() {
        let i = body.len() / 2;
        body[i] ^= 0x01;
    }
    let (data, trailers) = payload(head, &body);
    let sent = match check_sent(head, &data, &trailers) {
        Ok(x) => x,
        Err(refusal) => return Before::Refuse(refusal),
    };
    let mut pending = Pending::default();
    if let Some(id) = query_value(&t.query, "uploadId") {
        let number: u32 = query_value(&t.query, "partNumber")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let upload = s.state.lock().unwrap().sums.uploads.get(&id).cloned();
        if let Some((algo, _)) = upload {
            if let Some((a, _)) = &sent
                && *a != algo
            {
                return Before::Refuse(error(
                    400,
                    "InvalidRequest",
                    &format!(
                        "Checksum Type mismatch occurred, expected checksum Type: {}, actual checksum Type: {}",
                        algo.to_ascii_lowercase(),
                        a.to_ascii_lowercase()
                    ),
                ));
            }
            let value = compute(&algo, &data).unwrap_or_default();
            pending.part = Some((id, number, algo, value, data.len() as u64));
        }
    } else {
        // S3's default for an object sent without a checksum: CRC64NVME.
        pending.put = Some(sent.unwrap_or_else(|| {
            (
                "CRC64NVME".into(),
                compute("CRC64NVME", &data).unwrap_or_default(),
            )
        }));
        if let Some(algo) = header(head, "x-amz-server-side-encryption-customer-algorithm") {
            let key = header(head, "x-amz-server-side-encryption-customer-key").unwrap_or_default();
            let md5 =
                header(head, "x-amz-server-side-encryption-customer-key-md5").unwrap_or_default();
            let real = STANDARD
                .decode(&key)
                .map(|k| STANDARD.encode(Md5::digest(&k)));
            if algo != "AES256" || real.ok().as_deref() != Some(md5.as_str()) {
                return Before::Refuse(error(
                    400,
                    "InvalidArgument",
                    "The calculated MD5 hash of the key did not match the hash that was provided.",
                ));
            }
            pending.sse_c = Some(md5);
        }
    }
    Before::Forward(body, pending)
}

/// The parts of a CompleteMultipartUpload: (number, ETag, checksums named).
fn part_list(xml: &str) -> Vec<(u32, Vec<(String, String)>)> {
    xml.split("<Part>")
        .skip(1)
        .map(|p| {
            let p = p.split("</Part>").next().unwrap_or("");
            let field = |name: &str| {
                p.split(&format!("<{name}>"))
                    .nth(1)
                    .and_then(|x| x.split(&format!("</{name}>")).next())
                    .map(str::to_string)
            };
            let number = field("PartNumber")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let sums = ALGOS
                .iter()
                .filter_map(|a| field(&format!("Checksum{a}")).map(|v| (a.to_string(), v)))
                .collect();
            (number, sums)
        })
        .collect()
}

/// A FULL_OBJECT checksum combined from the parts' CRCs (base64) and sizes, in order: the
/// CRC of all the bytes (S3: "the checksum of the whole object, whatever the parts").
pub fn combine_full(algo: &str, parts: &[(String, u64)]) -> Option<String> {
    use crc_fast::CrcAlgorithm as C;
    let (crc, width) = match algo {
        "CRC32" => (C::Crc32IsoHdlc, 4),
        "CRC32C" => (C::Crc32Iscsi, 4),
        "CRC64NVME" => (C::Crc64Nvme, 8),
        _ => return None,
    };
    let mut acc: Option<u64> = None;
    for (v, len) in parts {
        let raw = STANDARD.decode(v).ok()?;
        if raw.len() != width {
            return None;
        }
        let mut be = [0u8; 8];
        be[8 - width..].copy_from_slice(&raw);
        let v = u64::from_be_bytes(be);
        acc = Some(match acc {
            None => v,
            Some(a) => crc_fast::checksum_combine(crc, a, v, *len),
        });
    }
    acc.map(|c| STANDARD.encode(&c.to_be_bytes()[8 - width..]))
}

/// A CompleteMultipartUpload whose part list does not name the stored part checksums is
/// refused, as S3 refuses it; so is one of a FULL_OBJECT upload whose whole-object
/// checksum is not the parts' combined (`400 BadDigest`, the upload stays open, as on S3).
fn check_part_list(s: &Shared, t: &Target, head: &str, body: &[u8]) -> Option<Answer> {
    let id = query_value(&t.query, "uploadId")?;
    let st = s.state.lock().unwrap();
    let (algo, kind) = st.sums.uploads.get(&id)?;
    let listed = part_list(&String::from_utf8_lossy(body));
    if kind == "FULL_OBJECT"
        && let Some((a, v)) = sent_checksum(head, &[])
    {
        let mut numbers: Vec<u32> = listed.iter().map(|p| p.0).collect();
        numbers.sort();
        let parts: Option<Vec<(String, u64)>> = numbers
            .iter()
            .map(|n| {
                let k = (id.clone(), *n);
                Some((st.sums.parts.get(&k)?.clone(), *st.sums.part_sizes.get(&k)?))
            })
            .collect();
        let whole = parts.and_then(|p| combine_full(algo, &p));
        if a != *algo || whole.as_deref() != Some(v.as_str()) {
            return Some(error(
                400,
                "BadDigest",
                &format!("The {a} you specified did not match the calculated checksum."),
            ));
        }
    }
    for (number, sums) in listed {
        let named = sums.iter().find(|(a, _)| a == algo).map(|(_, v)| v.clone());
        let Some(named) = named else {
            return Some(error(
                400,
                "InvalidRequest",
                &format!(
                    "The upload was created using a {} checksum. The complete request must include the checksum for each part. It was missing for part {number} in the request.",
                    algo.to_ascii_lowercase()
                ),
            ));
        };
        if st.sums.parts.get(&(id.clone(), number)) != Some(&named) {
            return Some(error(
                400,
                "InvalidPart",
                "One or more of the specified parts could not be found.  The part may not have been uploaded, or the specified entity tag may not have matched the part's entity tag.",
            ));
        }
    }
    None
}

fn strip_checksum_headers(lines: &mut Vec<String>) {
    lines.retain(|l| !l.to_ascii_lowercase().starts_with("x-amz-checksum-"));
}

fn checksum_headers(st: &Stored) -> Vec<String> {
    let value = match st.parts {
        Some(n) => format!("{}-{n}", st.value),
        None => st.value.clone(),
    };
    vec![
        format!("x-amz-checksum-{}: {value}", st.algo.to_ascii_lowercase()),
        format!(
            "x-amz-checksum-type: {}",
            if st.parts.is_some() {
                "COMPOSITE"
            } else {
                "FULL_OBJECT"
            }
        ),
    ]
}

fn checksum_xml(st: &Stored) -> String {
    let value = match st.parts {
        Some(n) => format!("{}-{n}", st.value),
        None => st.value.clone(),
    };
    format!(
        "<Checksum{a}>{value}</Checksum{a}><ChecksumType>{}</ChecksumType>",
        if st.parts.is_some() {
            "COMPOSITE"
        } else {
            "FULL_OBJECT"
        },
        a = st.algo
    )
}

/// Drops moto's `<Checksum…>` elements of an XML answer and puts ours before `</close>`.
fn replace_xml_checksums(xml: &str, close: &str, st: Option<&Stored>) -> String {
    let mut out = xml.to_string();
    for a in ALGOS
        .iter()
        .map(|a| format!("Checksum{a}"))
        .chain(["ChecksumType".to_string()])
    {
        while let Some(i) = out.find(&format!("<{a}>")) {
            let Some(j) = out[i..].find(&format!("</{a}>")) else {
                break;
            };
            out.replace_range(i..i + j + a.len() + 3, "");
        }
    }
    if let Some(st) = st
        && let Some(i) = out.rfind(&format!("</{close}>"))
    {
        out.insert_str(i, &checksum_xml(st));
    }
    out
}

fn etag_of(lines: &[String]) -> String {
    header(&lines.join("\r\n"), "etag")
        .unwrap_or_default()
        .trim_matches('"')
        .to_string()
}

fn xml_etag(xml: &str) -> String {
    xml.split("<ETag>")
        .nth(1)
        .and_then(|x| x.split("</ETag>").next())
        .unwrap_or("")
        .replace("&quot;", "")
        .trim_matches('"')
        .to_string()
}

/// moto's answer to an accepted request, given the checksums and SSE-C of S3 (before the
/// ETags of encrypted objects are made; see the module docs).
pub(super) fn after(
    s: &Shared,
    t: &Target,
    head: &str,
    pending: Pending,
    status: u16,
    mut lines: Vec<String>,
    mut body: Vec<u8>,
) -> Answer {
    if !(200..300).contains(&status) {
        return (status, lines, body);
    }
    let scope = format!("{}/{}", t.bucket, t.key);
    let is_object = !t.key.is_empty();
    let copy_from = copy_source(head);
    if let Some((algo, value)) = pending.put {
        let st = Stored {
            algo,
            value,
            parts: None,
            etag: etag_of(&lines),
            layout: Vec::new(),
        };
        strip_checksum_headers(&mut lines);
        lines.extend(checksum_headers(&st));
        let mut state = s.state.lock().unwrap();
        state.sums.objects.insert(scope.clone(), st);
        match pending.sse_c {
            Some(md5) => {
                state.sums.sse_c.insert(scope.clone(), md5);
            }
            None => {
                state.sums.sse_c.remove(&scope);
            }
        }
    } else if let Some((id, number, algo, value, size)) = pending.part {
        strip_checksum_headers(&mut lines);
        lines.push(format!(
            "x-amz-checksum-{}: {value}",
            algo.to_ascii_lowercase()
        ));
        let mut st = s.state.lock().unwrap();
        st.sums.part_sizes.insert((id.clone(), number), size);
        st.sums.parts.insert((id, number), value);
    } else if t.method == "POST" && query_has(&t.query, "uploads") {
        if let Some(a) = header(head, "x-amz-checksum-algorithm").map(|a| a.to_ascii_uppercase()) {
            let kind = header(head, "x-amz-checksum-type")
                .map(|k| k.to_ascii_uppercase())
                .unwrap_or_else(|| {
                    if a == "CRC64NVME" {
                        "FULL_OBJECT"
                    } else {
                        "COMPOSITE"
                    }
                    .to_string()
                });
            let text = String::from_utf8_lossy(&body).to_string();
            if let Some(id) = text
                .split("<UploadId>")
                .nth(1)
                .and_then(|x| x.split("</UploadId>").next())
            {
                s.state
                    .lock()
                    .unwrap()
                    .sums
                    .uploads
                    .insert(id.to_string(), (a, kind));
            }
        }
    } else if t.method == "POST" && query_has(&t.query, "uploadId") {
        return complete(s, t, head, &scope, status, lines, body);
    } else if t.method == "PUT"
        && is_object
        && let Some(src) = copy_from
    {
        if let Some(id) = query_value(&t.query, "uploadId") {
            // UploadPartCopy: the part's checksum in the upload's algorithm.
            let number: u32 = query_value(&t.query, "partNumber")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let range = header(head, "x-amz-copy-source-range");
            let (sb, sk) = src.split_once('/').unwrap_or((&src, ""));
            let mut bytes = s.get_bytes(sb, sk, range);
            let mut text = String::from_utf8_lossy(&body).to_string();
            if s.faults.lock().unwrap().corrupt_copies.contains(&scope) && !bytes.is_empty() {
                let i = bytes.len() / 2;
                bytes[i] ^= 0x01;
                let etag = s.put_part(&t.bucket, &t.key, &id, number, bytes.clone());
                let old = xml_etag(&text);
                text = text.replace(&old, &etag);
            }
            let upload = s.state.lock().unwrap().sums.uploads.get(&id).cloned();
            let st = upload.map(|(algo, _)| {
                let value = compute(&algo, &bytes).unwrap_or_default();
                let mut state = s.state.lock().unwrap();
                state
                    .sums
                    .part_sizes
                    .insert((id.clone(), number), bytes.len() as u64);
                state.sums.parts.insert((id.clone(), number), value.clone());
                Stored {
                    algo,
                    value,
                    parts: None,
                    etag: String::new(),
                    layout: Vec::new(),
                }
            });
            let text = replace_xml_checksums(&text, "CopyPartResult", st.as_ref());
            // The part result carries no type.
            body = text
                .replace("<ChecksumType>FULL_OBJECT</ChecksumType>", "")
                .into_bytes();
        } else {
            // CopyObject: S3 copies the source's checksum, or computes the one asked for.
            let mut text = String::from_utf8_lossy(&body).to_string();
            if s.faults.lock().unwrap().corrupt_copies.contains(&scope) {
                let mut bytes = s.get_bytes(&t.bucket, &t.key, None);
                if !bytes.is_empty() {
                    let i = bytes.len() / 2;
                    bytes[i] ^= 0x01;
                    let etag = s.overwrite(&t.bucket, &t.key, bytes);
                    let old = xml_etag(&text);
                    text = text.replace(&old, &etag);
                }
            }
            let etag = xml_etag(&text);
            let asked = header(head, "x-amz-checksum-algorithm").map(|a| a.to_ascii_uppercase());
            let st = match asked {
                Some(algo) => {
                    let bytes = s.get_bytes(&t.bucket, &t.key, None);
                    compute(&algo, &bytes).map(|value| Stored {
                        algo,
                        value,
                        parts: None,
                        etag: etag.clone(),
                        layout: Vec::new(),
                    })
                }
                None => s
                    .state
                    .lock()
                    .unwrap()
                    .sums
                    .objects
                    .get(&src)
                    .cloned()
                    .map(|st| Stored {
                        etag: etag.clone(),
                        layout: Vec::new(),
                        ..st
                    }),
            };
            let mut state = s.state.lock().unwrap();
            match &st {
                Some(st) => {
                    state.sums.objects.insert(scope.clone(), st.clone());
                }
                None => {
                    state.sums.objects.remove(&scope);
                }
            }
            drop(state);
            body = replace_xml_checksums(&text, "CopyObjectResult", st.as_ref()).into_bytes();
        }
    } else if is_object
        && matches!(t.method.as_str(), "GET" | "HEAD")
        && !query_has(&t.query, "uploadId")
    {
        if query_has(&t.query, "attributes") {
            // GetObjectAttributes: the stored checksum when Checksum is asked for.
            let text = String::from_utf8_lossy(&body).to_string();
            let etag = xml_etag(&text);
            let wanted = object_attributes(head)
                .is_some_and(|a| a.split(',').any(|x| x.trim() == "Checksum"));
            // moto writes Last-Modified as ISO 8601 here; S3 (and the SDK) use an HTTP date.
            for l in lines.iter_mut() {
                if let Some(v) = l
                    .strip_prefix("last-modified: ")
                    .or(l.strip_prefix("Last-Modified: "))
                    && let Ok(t) = chrono::DateTime::parse_from_rfc3339(v.trim())
                {
                    *l = format!("Last-Modified: {}", t.format("%a, %d %b %Y %H:%M:%S GMT"));
                }
            }
            let parts_wanted = object_attributes(head)
                .is_some_and(|a| a.split(',').any(|x| x.trim() == "ObjectParts"));
            let stored = s.stored(&scope, &etag, None);
            if wanted && let Some(st) = &stored {
                let mut text = replace_xml_checksums(&text, "Checksum", None);
                while let Some(i) = text.find("<Checksum>") {
                    let Some(j) = text[i..].find("</Checksum>") else {
                        break;
                    };
                    text.replace_range(i..i + j + "</Checksum>".len(), "");
                }
                if let Some(i) = text.rfind("</") {
                    text.insert_str(i, &format!("<Checksum>{}</Checksum>", checksum_xml(st)));
                }
                body = text.into_bytes();
            }
            // S3 lists the parts of a multipart object written with an additional checksum.
            if parts_wanted
                && let Some(st) = &stored
                && let Some(xml) = object_parts_xml(head, st)
            {
                body = insert_in_root(&String::from_utf8_lossy(&body), &xml).into_bytes();
            }
        } else if query_has(&t.query, "partNumber") {
            // A part of the object (its own ETag and size): S3 answers that part's
            // checksum, which the rig does not keep per part here; none is answered.
            strip_checksum_headers(&mut lines);
        } else {
            let etag = etag_of(&lines);
            let asked = header(head, "x-amz-checksum-mode")
                .is_some_and(|m| m.eq_ignore_ascii_case("ENABLED"));
            let ranged = header(head, "range").is_some();
            if let Some(st) = s.stored(&scope, &etag, None) {
                strip_checksum_headers(&mut lines);
                if asked && !ranged {
                    lines.extend(checksum_headers(&st));
                }
            }
            let sse_c = s.state.lock().unwrap().sums.sse_c.get(&scope).cloned();
            if let Some(md5) = sse_c {
                lines.push("x-amz-server-side-encryption-customer-algorithm: AES256".into());
                lines.push(format!(
                    "x-amz-server-side-encryption-customer-key-MD5: {md5}"
                ));
            }
            if t.method == "GET"
                && s.faults.lock().unwrap().corrupt_reads.contains(&scope)
                && !body.is_empty()
            {
                let i = body.len() / 2;
                body[i] ^= 0x01;
            }
        }
    }
    (status, lines, body)
}

/// GetObjectAttributes' `x-amz-object-attributes`, every line of it (the SDK may send one
/// line per attribute) joined by commas.
fn object_attributes(head: &str) -> Option<String> {
    let all: Vec<String> = head
        .split("\r\n")
        .skip(1)
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("x-amz-object-attributes")
                .then(|| v.trim().to_string())
        })
        .collect();
    (!all.is_empty()).then(|| all.join(","))
}

/// `xml` put at the end of an answer's root element (moto writes an empty root as
/// `<Root …/>`).
fn insert_in_root(text: &str, xml: &str) -> String {
    let trimmed = text.trim_end();
    if let Some(open) = trimmed.strip_suffix("/>")
        && let Some(i) = open.rfind('<')
        && !open[i..].starts_with("</")
        && !open[i..].starts_with("<?")
    {
        let name = open[i + 1..].split_whitespace().next().unwrap_or("");
        return format!("{open}>{xml}</{name}>");
    }
    match text.rfind("</") {
        Some(i) => format!("{}{xml}{}", &text[..i], &text[i..]),
        None => text.to_string(),
    }
}

/// GetObjectAttributes' `<ObjectParts>` for a multipart object, one page as S3 pages it
/// (`x-amz-max-parts`, default 1,000; `x-amz-part-number-marker`: the parts after it);
/// `None` for an object of one request.
fn object_parts_xml(head: &str, st: &Stored) -> Option<String> {
    if st.layout.is_empty() {
        return None;
    }
    let max: usize = header(head, "x-amz-max-parts")
        .and_then(|m| m.parse().ok())
        .unwrap_or(1000)
        .clamp(1, 1000);
    let marker: u32 = header(head, "x-amz-part-number-marker")
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    let after: Vec<&(u32, u64, String)> = st.layout.iter().filter(|p| p.0 > marker).collect();
    let page = &after[..after.len().min(max)];
    let truncated = after.len() > page.len();
    let mut xml = format!(
        "<ObjectParts><PartsCount>{}</PartsCount><PartNumberMarker>{marker}</PartNumberMarker><MaxParts>{max}</MaxParts><IsTruncated>{truncated}</IsTruncated>",
        st.layout.len()
    );
    if let Some(last) = page.last() {
        xml.push_str(&format!(
            "<NextPartNumberMarker>{}</NextPartNumberMarker>",
            last.0
        ));
    }
    for (n, size, sum) in page {
        xml.push_str(&format!(
            "<Part><PartNumber>{n}</PartNumber><Size>{size}</Size><Checksum{a}>{sum}</Checksum{a}></Part>",
            a = st.algo
        ));
    }
    xml.push_str("</ObjectParts>");
    Some(xml)
}

/// CompleteMultipartUpload accepted by moto: the object's checksum (COMPOSITE over the
/// part checksums, or FULL_OBJECT over its bytes), checked against a full-object checksum
/// the request sent (on a mismatch nothing is completed: `400 BadDigest`).
fn complete(
    s: &Shared,
    t: &Target,
    head: &str,
    scope: &str,
    status: u16,
    lines: Vec<String>,
    body: Vec<u8>,
) -> Answer {
    let id = query_value(&t.query, "uploadId").unwrap_or_default();
    let text = String::from_utf8_lossy(&body).to_string();
    let etag = xml_etag(&text);
    let upload = s.state.lock().unwrap().sums.uploads.remove(&id);
    let Some((algo, kind)) = upload else {
        s.state.lock().unwrap().sums.objects.remove(scope);
        return (status, lines, body);
    };
    let n = etag
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse::<u32>().ok());
    let layout: Vec<(u32, u64, String)> = {
        let st = s.state.lock().unwrap();
        let mut l: Vec<(u32, u64, String)> = st
            .sums
            .parts
            .iter()
            .filter(|((u, _), _)| *u == id)
            .map(|((u, n), v)| {
                let size = st
                    .sums
                    .part_sizes
                    .get(&(u.clone(), *n))
                    .copied()
                    .unwrap_or(0);
                (*n, size, v.clone())
            })
            .collect();
        l.sort();
        l
    };
    let st = if kind == "COMPOSITE" {
        let st = s.state.lock().unwrap();
        let mut numbers: Vec<u32> = st
            .sums
            .parts
            .keys()
            .filter(|(u, _)| *u == id)
            .map(|(_, n)| *n)
            .collect();
        numbers.sort();
        let mut raw = Vec::new();
        for n in &numbers {
            raw.extend(
                STANDARD
                    .decode(&st.sums.parts[&(id.clone(), *n)])
                    .unwrap_or_default(),
            );
        }
        Stored {
            value: compute(&algo, &raw).unwrap_or_default(),
            algo: algo.clone(),
            parts: Some(n.unwrap_or(numbers.len() as u32)),
            etag: etag.clone(),
            layout: layout.clone(),
        }
    } else {
        let bytes = s.get_bytes(&t.bucket, &t.key, None);
        Stored {
            value: compute(&algo, &bytes).unwrap_or_default(),
            algo: algo.clone(),
            parts: None,
            etag: etag.clone(),
            layout,
        }
    };
    {
        let mut state = s.state.lock().unwrap();
        state.sums.parts.retain(|(u, _), _| *u != id);
        state.sums.part_sizes.retain(|(u, _), _| *u != id);
    }
    if let Some((a, v)) = sent_checksum(head, &[])
        && (a != st.algo || v != st.value || st.parts.is_some())
    {
        s.delete(&t.bucket, &t.key);
        return error(
            400,
            "BadDigest",
            &format!("The {a} you specified did not match the calculated checksum."),
        );
    }
    s.state
        .lock()
        .unwrap()
        .sums
        .objects
        .insert(scope.to_string(), st.clone());
    let text = replace_xml_checksums(&text, "CompleteMultipartUploadResult", Some(&st));
    let text = replace_xml_checksums(&text, "CompleteMultipartUploadResponse", None).replace(
        "</CompleteMultipartUploadResponse>",
        &format!("{}</CompleteMultipartUploadResponse>", checksum_xml(&st)),
    );
    (status, lines, text.into_bytes())
}

impl Shared {
    /// The rig's checksum of an object whose moto ETag is `etag` (a stale one is dropped).
    /// (`etag` empty: the answer does not say; the record is taken as it is.)
    fn stored(&self, scope: &str, etag: &str, _: Option<()>) -> Option<Stored> {
        let mut st = self.state.lock().unwrap();
        match st.sums.objects.get(scope) {
            Some(x) if x.etag == etag.trim_matches('"') || x.etag.is_empty() || etag.is_empty() => {
                Some(x.clone())
            }
            Some(_) => {
                st.sums.objects.remove(scope);
                None
            }
            None => None,
        }
    }

    /// The bytes moto holds for an object (or a range of it).
    fn get_bytes(&self, bucket: &str, key: &str, range: Option<String>) -> Vec<u8> {
        self.s3(async |c| {
            let Ok(o) = c
                .get_object()
                .bucket(bucket)
                .key(key)
                .set_range(range)
                .send()
                .await
            else {
                return Vec::new();
            };
            o.body
                .collect()
                .await
                .map(|b| b.to_vec())
                .unwrap_or_default()
        })
    }

    /// Replaces what moto holds for an object (same content type and encryption); returns
    /// moto's new ETag.
    fn overwrite(&self, bucket: &str, key: &str, bytes: Vec<u8>) -> String {
        self.s3(async |c| {
            let h = c.head_object().bucket(bucket).key(key).send().await.ok();
            let o = c
                .put_object()
                .bucket(bucket)
                .key(key)
                .set_content_type(
                    h.as_ref()
                        .and_then(|h| h.content_type().map(str::to_string)),
                )
                .set_server_side_encryption(
                    h.as_ref().and_then(|h| h.server_side_encryption().cloned()),
                )
                .set_ssekms_key_id(
                    h.as_ref()
                        .and_then(|h| h.ssekms_key_id().map(str::to_string)),
                )
                .set_metadata(h.as_ref().and_then(|h| h.metadata().cloned()))
                .body(bytes.into())
                .send()
                .await
                .unwrap();
            o.e_tag().unwrap_or("").trim_matches('"').to_string()
        })
    }

    /// Uploads a part to moto directly (replacing one); returns its ETag.
    fn put_part(&self, bucket: &str, key: &str, id: &str, number: u32, bytes: Vec<u8>) -> String {
        self.s3(async |c| {
            let o = c
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(id)
                .part_number(number as i32)
                .body(bytes.into())
                .send()
                .await
                .unwrap();
            o.e_tag().unwrap_or("").trim_matches('"').to_string()
        })
    }

    fn delete(&self, bucket: &str, key: &str) {
        self.s3(async |c| {
            let _ = c.delete_object().bucket(bucket).key(key).send().await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_chunked_bodies_give_their_data_and_trailer() {
        let body = b"5\r\nhello\r\n3\r\nabc\r\n0\r\nx-amz-checksum-crc32c:AAAAAA==\r\n\r\n";
        let (data, trailers) = dechunk(body);
        assert_eq!(data, b"helloabc");
        assert_eq!(
            sent_checksum("PUT / HTTP/1.1\r\n", &trailers),
            Some(("CRC32C".into(), "AAAAAA==".into()))
        );
    }

    #[test]
    fn xml_checksums_are_replaced() {
        let st = Stored {
            algo: "CRC32C".into(),
            value: "v".into(),
            parts: Some(2),
            etag: String::new(),
            layout: Vec::new(),
        };
        assert_eq!(
            insert_in_root("<?xml v?>\n<R xmlns=\"x\"/>", "<A/>"),
            "<?xml v?>\n<R xmlns=\"x\"><A/></R>"
        );
        assert_eq!(insert_in_root("<R><B/></R>", "<A/>"), "<R><B/><A/></R>");
        let x = replace_xml_checksums(
            "<R><ETag>e</ETag><ChecksumCRC64NVME>m</ChecksumCRC64NVME></R>",
            "R",
            Some(&st),
        );
        assert_eq!(
            x,
            "<R><ETag>e</ETag><ChecksumCRC32C>v-2</ChecksumCRC32C><ChecksumType>COMPOSITE</ChecksumType></R>"
        );
        assert_eq!(
            part_list(
                "<Part><PartNumber>2</PartNumber><ETag>x</ETag><ChecksumCRC32C>c</ChecksumCRC32C></Part>"
            ),
            vec![(2, vec![("CRC32C".to_string(), "c".to_string())])]
        );
    }
}
