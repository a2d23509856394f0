//! Checksums on every write, compared with the source's, on the strict S3 rig (moto behind
//! `hub_tests::s3_rig::StrictS3`, which checks, stores and answers checksums as AWS does
//! and can spoil bytes on the way); customer-key (SSE-C) and DSSE-KMS objects.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumMode, ChecksumType, ServerSideEncryption};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hub_tests::s3_rig::StrictS3;
use hub_tests::{MotoServer, aws_fixtures, transfer_hub};
use md5::{Digest, Md5};

const REGION: &str = "eu-west-1";
const MIB: usize = 1024 * 1024;

struct Rig {
    moto: MotoServer,
    strict: StrictS3,
    /// Through the strict rig.
    client: aws_sdk_s3::Client,
    rt: tokio::runtime::Runtime,
    state: tempfile::TempDir,
}

impl Rig {
    fn start() -> Self {
        let moto = MotoServer::start();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let conf = rt.block_on(moto.sdk_config(REGION));
        for b in ["src", "dst"] {
            rt.block_on(aws_fixtures::bucket(&conf, b));
        }
        let strict = StrictS3::start(&moto.endpoint);
        let client = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&conf)
                .endpoint_url(strict.endpoint())
                .force_path_style(true)
                .build(),
        );
        Self {
            moto,
            strict,
            client,
            rt,
            state: tempfile::tempdir().unwrap(),
        }
    }

    /// A PUT through the rig with a CRC32C of the bytes (a full-object checksum).
    fn put_crc32c(&self, key: &str, body: &[u8]) {
        self.rt
            .block_on(
                self.client
                    .put_object()
                    .bucket("src")
                    .key(key)
                    .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                    .body(ByteStream::from(body.to_vec()))
                    .send(),
            )
            .unwrap();
    }

    fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let o = self
            .rt
            .block_on(self.client.get_object().bucket(bucket).key(key).send())
            .ok()?;
        Some(self.rt.block_on(o.body.collect()).unwrap().to_vec())
    }

    /// `objects sync s3://src s3://dst` through the rig, parts of 5 MiB from 6 MiB.
    fn sync(&self, extra: &[&str]) -> hub_tests::Run {
        let state = self.state.path().join("state.db");
        let (threshold, part) = ((6 * MIB).to_string(), (5 * MIB).to_string());
        let mut args = vec![
            "objects",
            "sync",
            "s3://src",
            "s3://dst",
            "--source-endpoint",
            self.strict.endpoint(),
            "--dest-endpoint",
            self.strict.endpoint(),
            "--multipart-threshold",
            &threshold,
            "--part-size",
            &part,
            "--retries",
            "0",
            "--output",
            "json",
            "--state",
            state.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let env = self.moto.env(REGION);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        transfer_hub(&args, &env)
    }
}

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed))
        .collect()
}

fn item<'a>(j: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    j["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["source"] == format!("s3://src/{key}"))
        .unwrap_or_else(|| panic!("no item for {key}: {j}"))
}

fn counts(j: &serde_json::Value) -> (u64, u64, u64) {
    (
        j["copied"].as_u64().unwrap(),
        j["skipped"].as_u64().unwrap(),
        j["failed"].as_u64().unwrap(),
    )
}

fn crc32c(b: &[u8]) -> String {
    STANDARD.encode(&crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, b).to_be_bytes()[4..])
}

/// The rig answers checksums as S3 does: a wrong one (or a wrong Content-MD5) is refused
/// with 400 BadDigest; a composite multipart checksum is the CRC32C of the part CRC32Cs
/// with `-N`, a FULL_OBJECT one the CRC32C of all the bytes; a completion that does not
/// name every part's checksum is refused; CopyObject computes the algorithm asked for.
#[test]
fn the_strict_rig_checks_and_answers_checksums_as_s3_does() {
    let r = Rig::start();
    let c = &r.client;
    let err_code = |e: &aws_sdk_s3::error::SdkError<_, _>| {
        use aws_sdk_s3::error::ProvideErrorMetadata;
        match e {
            aws_sdk_s3::error::SdkError::ServiceError(s) => {
                let e: &aws_sdk_s3::operation::put_object::PutObjectError = s.err();
                e.code().map(str::to_string)
            }
            _ => None,
        }
    };
    let bad =
        r.rt.block_on(
            c.put_object()
                .bucket("src")
                .key("bad")
                .checksum_crc32_c(crc32c(b"other bytes"))
                .body(ByteStream::from_static(b"these bytes"))
                .send(),
        )
        .unwrap_err();
    assert_eq!(err_code(&bad).as_deref(), Some("BadDigest"), "{bad:?}");
    let bad_md5 =
        r.rt.block_on(
            c.put_object()
                .bucket("src")
                .key("bad")
                .content_md5(STANDARD.encode(Md5::digest(b"other")))
                .body(ByteStream::from_static(b"these bytes"))
                .send(),
        )
        .unwrap_err();
    assert_eq!(err_code(&bad_md5).as_deref(), Some("BadDigest"));
    // A body spoiled on the way is refused by S3, whatever the client computed.
    r.strict
        .faults()
        .corrupt_writes
        .insert("src/spoiled".into());
    let spoiled =
        r.rt.block_on(
            c.put_object()
                .bucket("src")
                .key("spoiled")
                .body(ByteStream::from(data(1000, 1)))
                .send(),
        )
        .unwrap_err();
    assert_eq!(err_code(&spoiled).as_deref(), Some("BadDigest"));
    assert!(r.get("src", "spoiled").is_none());

    let (p1, p2) = (data(5 * MIB, 1), data(1000, 2));
    for kind in [ChecksumType::Composite, ChecksumType::FullObject] {
        let key = format!("mp-{}", kind.as_str());
        let id =
            r.rt.block_on(
                c.create_multipart_upload()
                    .bucket("src")
                    .key(&key)
                    .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                    .checksum_type(kind.clone())
                    .send(),
            )
            .unwrap()
            .upload_id
            .unwrap();
        let mut parts = vec![];
        for (n, body) in [(1, &p1), (2, &p2)] {
            let o =
                r.rt.block_on(
                    c.upload_part()
                        .bucket("src")
                        .key(&key)
                        .upload_id(&id)
                        .part_number(n)
                        .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                        .body(ByteStream::from(body.to_vec()))
                        .send(),
                )
                .unwrap();
            assert_eq!(o.checksum_crc32_c(), Some(crc32c(body).as_str()));
            parts.push((n, o.e_tag().unwrap().to_string(), crc32c(body)));
        }
        let list = |with_sums: bool| {
            aws_sdk_s3::types::CompletedMultipartUpload::builder()
                .set_parts(Some(
                    parts
                        .iter()
                        .map(|(n, e, s)| {
                            let b = aws_sdk_s3::types::CompletedPart::builder()
                                .part_number(*n)
                                .e_tag(e);
                            if with_sums { b.checksum_crc32_c(s) } else { b }.build()
                        })
                        .collect(),
                ))
                .build()
        };
        let missing = r.rt.block_on(
            c.complete_multipart_upload()
                .bucket("src")
                .key(&key)
                .upload_id(&id)
                .multipart_upload(list(false))
                .send(),
        );
        assert!(
            format!("{missing:?}").contains("must include the checksum for each part"),
            "{missing:?}"
        );
        let done =
            r.rt.block_on(
                c.complete_multipart_upload()
                    .bucket("src")
                    .key(&key)
                    .upload_id(&id)
                    .multipart_upload(list(true))
                    .send(),
            )
            .unwrap();
        let mut all = p1.clone();
        all.extend_from_slice(&p2);
        let want = if kind == ChecksumType::Composite {
            let mut raw = STANDARD.decode(crc32c(&p1)).unwrap();
            raw.extend(STANDARD.decode(crc32c(&p2)).unwrap());
            format!("{}-2", crc32c(&raw))
        } else {
            crc32c(&all)
        };
        assert_eq!(done.checksum_crc32_c(), Some(want.as_str()), "{kind:?}");
        let h =
            r.rt.block_on(
                c.head_object()
                    .bucket("src")
                    .key(&key)
                    .checksum_mode(ChecksumMode::Enabled)
                    .send(),
            )
            .unwrap();
        assert_eq!(h.checksum_crc32_c(), Some(want.as_str()), "{kind:?}");
        assert_eq!(h.checksum_type(), Some(&kind));
        let attrs =
            r.rt.block_on(
                c.get_object_attributes()
                    .bucket("src")
                    .key(&key)
                    .object_attributes(aws_sdk_s3::types::ObjectAttributes::Checksum)
                    .send(),
            )
            .unwrap();
        let sum = attrs
            .checksum()
            .expect("GetObjectAttributes names the checksum");
        assert_eq!(sum.checksum_crc32_c(), Some(want.as_str()), "{kind:?}");
        assert_eq!(sum.checksum_type(), Some(&kind));
    }
    // CopyObject computes the checksum asked for over the copied bytes.
    let copied =
        r.rt.block_on(
            c.copy_object()
                .bucket("dst")
                .key("copy")
                .copy_source("src/mp-COMPOSITE")
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .send(),
        )
        .unwrap();
    let mut all = p1.clone();
    all.extend_from_slice(&p2);
    assert_eq!(
        copied.copy_object_result().unwrap().checksum_sha256(),
        Some(STANDARD.encode(sha2::Sha256::digest(&all)).as_str())
    );
}

/// Streamed in parts, a source with a full-object CRC32C whose part reads are spoiled on
/// the way (ranged GETs carry no checksum, and each part's MD5 and CRC32C are of the
/// spoiled bytes, so S3 accepts every part): the destination's whole-object CRC32C is not
/// the source's, and the object is failed, never copied. Before, it was recorded as copied.
/// The other objects (one with no checksum at all) are copied.
#[test]
fn a_part_spoiled_on_the_way_from_the_source_fails_the_object_by_its_checksum() {
    let r = Rig::start();
    let (big, good, plain) = (data(11 * MIB, 1), data(7 * MIB, 2), data(3000, 3));
    r.put_crc32c("big.bin", &big);
    r.put_crc32c("good.bin", &good);
    // No checksum at all (moto written directly, as an S3-compatible store would hold it).
    r.rt.block_on(async {
        let conf = r.moto.sdk_config(REGION).await;
        let c = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&conf)
                .request_checksum_calculation(
                    aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
                )
                .build(),
        );
        c.put_object()
            .bucket("src")
            .key("plain.txt")
            .body(ByteStream::from(plain.clone()))
            .send()
            .await
            .unwrap();
    });
    // And one whose PUT is spoiled on the way to S3: S3 refuses it (BadDigest).
    let sent = data(2000, 4);
    r.put_crc32c("sent.bin", &sent);
    r.strict.faults().corrupt_reads.insert("src/big.bin".into());
    r.strict
        .faults()
        .corrupt_writes
        .insert("dst/sent.bin".into());
    let run = r.sync(&["--copy-mode", "stream"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let j = run.json();
    assert_eq!(counts(&j), (2, 0, 2), "{j}");
    let refused = item(&j, "sent.bin");
    assert_eq!(refused["error"]["class"], "DigestMismatch", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("BadDigest"),
        "{refused}"
    );
    assert!(r.get("dst", "sent.bin").is_none());
    let victim = item(&j, "big.bin");
    assert_eq!(victim["status"], "failed", "{victim}");
    assert_eq!(victim["error"]["class"], "DigestMismatch", "{victim}");
    assert!(
        victim["error"]["message"]
            .as_str()
            .unwrap()
            .contains("CRC32C"),
        "{victim}"
    );
    assert!(r.get("dst", "big.bin").is_none(), "a corrupt copy was left");
    assert_eq!(r.get("dst", "good.bin").unwrap(), good);
    assert_eq!(r.get("dst", "plain.txt").unwrap(), plain);
    // The copies carry checksums S3 checked: the source's algorithm, or CRC32C.
    assert_eq!(
        r.strict.stored_checksum("dst/good.bin").map(|c| (c.0, c.2)),
        Some(("CRC32C".to_string(), None)),
        "a FULL_OBJECT CRC32C for the multipart copy"
    );
    assert_eq!(
        r.strict.stored_checksum("dst/plain.txt").map(|c| c.0),
        Some("CRC32C".to_string())
    );
}

/// Server-side copies into a KMS destination (ETags there are not MD5s) where what S3
/// stores is not the source's bytes (a spoiled CopyObject, a spoiled UploadPartCopy), and a
/// source whose stored checksum disagrees with its bytes: the copies' checksums are not
/// the source's, so each object is failed. Before, all three were recorded as copied
/// (only their sizes could be checked).
#[test]
fn server_side_copies_that_differ_from_the_source_checksum_are_failed() {
    let r = Rig::start();
    let (one, big, rot, fine) = (
        data(4000, 1),
        data(11 * MIB, 2),
        data(5000, 3),
        data(6000, 4),
    );
    r.put_crc32c("one.bin", &one);
    r.put_crc32c("big.bin", &big);
    r.put_crc32c("rot.bin", &rot);
    r.put_crc32c("fine.bin", &fine);
    {
        let mut f = r.strict.faults();
        f.corrupt_copies.insert("dst/one.bin".into());
        f.corrupt_copies.insert("dst/big.bin".into());
    }
    r.strict.spoil_stored_checksum("src/rot.bin");
    let run = r.sync(&["--copy-mode", "server", "--sse-kms-key", "alias/rig-dest"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let j = run.json();
    assert_eq!(counts(&j), (1, 0, 3), "{j}");
    for key in ["one.bin", "big.bin", "rot.bin"] {
        let i = item(&j, key);
        assert_eq!(i["status"], "failed", "{i}");
        assert_eq!(i["error"]["class"], "DigestMismatch", "{i}");
        // Nothing wrong is left: the multipart one was never completed, the single
        // copies S3 had written are removed.
        assert!(
            r.get("dst", key).is_none(),
            "{key} was left at the destination"
        );
    }
    assert_eq!(r.get("dst", "fine.bin").unwrap(), fine);
}

/// An object under a customer-provided key cannot be read without it: S3 answers 400 to
/// HEAD, GET and a copy source that lacks it. The engine fails that one object with an
/// error naming SSE-C and what to do; the others are copied. DSSE-KMS objects have ETags
/// that are not MD5s, like SSE-KMS ones, and are copied, verified and converge.
#[test]
fn sse_c_objects_fail_by_name_and_dsse_kms_objects_copy_and_converge() {
    for mode in ["server", "stream"] {
        let r = Rig::start();
        let key = [7u8; 32];
        let (secret, dsse, plain) = (data(3000, 1), data(4000, 2), data(5000, 3));
        r.rt.block_on(
            r.client
                .put_object()
                .bucket("src")
                .key("secret.bin")
                .sse_customer_algorithm("AES256")
                .sse_customer_key(STANDARD.encode(key))
                .sse_customer_key_md5(STANDARD.encode(Md5::digest(key)))
                .body(ByteStream::from(secret.clone()))
                .send(),
        )
        .unwrap();
        // Without the key S3 refuses; with it, it serves the object.
        let head = r.rt.block_on(
            r.client
                .head_object()
                .bucket("src")
                .key("secret.bin")
                .send(),
        );
        assert!(head.is_err(), "{head:?}");
        let with_key =
            r.rt.block_on(
                r.client
                    .head_object()
                    .bucket("src")
                    .key("secret.bin")
                    .sse_customer_algorithm("AES256")
                    .sse_customer_key(STANDARD.encode(key))
                    .sse_customer_key_md5(STANDARD.encode(Md5::digest(key)))
                    .send(),
            )
            .unwrap();
        assert_ne!(
            with_key.e_tag().unwrap().trim_matches('"'),
            hex::encode(Md5::digest(&secret)),
            "an SSE-C ETag is not the MD5"
        );
        r.rt.block_on(
            r.client
                .put_object()
                .bucket("src")
                .key("dsse.bin")
                .server_side_encryption(ServerSideEncryption::AwsKmsDsse)
                .body(ByteStream::from(dsse.clone()))
                .send(),
        )
        .unwrap();
        r.put_crc32c("plain.bin", &plain);
        let run = r.sync(&["--copy-mode", mode]);
        assert_eq!(run.code, 1, "{mode}: {}\n{}", run.stdout, run.stderr);
        let j = run.json();
        assert_eq!(counts(&j), (2, 0, 1), "{mode}: {j}");
        let s = item(&j, "secret.bin");
        assert_eq!(s["error"]["class"], "BadInput", "{mode}: {s}");
        let msg = s["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("s3://src/secret.bin")
                && msg.contains("SSE-C")
                && msg.contains("customer-provided key"),
            "{mode}: {msg}"
        );
        assert_eq!(r.get("dst", "dsse.bin").unwrap(), dsse, "{mode}");
        assert_eq!(r.get("dst", "plain.bin").unwrap(), plain, "{mode}");
        // The DSSE-KMS ETag is not an MD5, yet the re-run finds the copy in sync.
        let again = r.sync(&["--copy-mode", mode, "--compare", "etag"]);
        let j = again.json();
        assert_eq!(item_count_copied(&j, "dsse.bin"), 0, "{mode}: {j}");
    }
}

fn item_count_copied(j: &serde_json::Value, key: &str) -> usize {
    j["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["source"] == format!("s3://src/{key}") && i["status"] == "copied")
        .count()
}
