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

impl Rig {
    /// A PUT through the rig with a full-object checksum of `algo`.
    fn put_with(&self, key: &str, body: &[u8], algo: ChecksumAlgorithm) {
        self.rt
            .block_on(
                self.client
                    .put_object()
                    .bucket("src")
                    .key(key)
                    .checksum_algorithm(algo)
                    .body(ByteStream::from(body.to_vec()))
                    .send(),
            )
            .unwrap();
    }

    /// A multipart upload through the rig with a COMPOSITE checksum of `algo`, one part per
    /// slice (as the AWS CLI or an SDK's transfer manager writes big objects).
    fn put_composite(&self, key: &str, parts: &[&[u8]], algo: ChecksumAlgorithm) {
        put_composite(&self.rt, &self.client, "src", key, parts, algo);
    }

    /// (ALGORITHM, value, composite part count) the destination answers on HEAD.
    fn head_sum(&self, bucket: &str, key: &str) -> (String, String, Option<u32>) {
        let h = self
            .rt
            .block_on(
                self.client
                    .head_object()
                    .bucket(bucket)
                    .key(key)
                    .checksum_mode(ChecksumMode::Enabled)
                    .send(),
            )
            .unwrap();
        head_sum(&h)
    }
}

/// A multipart upload with a COMPOSITE checksum of `algo`, one part per slice.
pub fn put_composite(
    rt: &tokio::runtime::Runtime,
    c: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    parts: &[&[u8]],
    algo: ChecksumAlgorithm,
) {
    rt.block_on(async {
        let id = c
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .checksum_algorithm(algo.clone())
            .checksum_type(ChecksumType::Composite)
            .send()
            .await
            .unwrap()
            .upload_id
            .unwrap();
        let mut done = vec![];
        for (i, body) in parts.iter().enumerate() {
            let o = c
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(&id)
                .part_number(i as i32 + 1)
                .checksum_algorithm(algo.clone())
                .body(ByteStream::from(body.to_vec()))
                .send()
                .await
                .unwrap();
            let b = aws_sdk_s3::types::CompletedPart::builder()
                .part_number(i as i32 + 1)
                .e_tag(o.e_tag().unwrap());
            let b = match algo {
                ChecksumAlgorithm::Sha256 => b.checksum_sha256(o.checksum_sha256().unwrap()),
                ChecksumAlgorithm::Sha1 => b.checksum_sha1(o.checksum_sha1().unwrap()),
                ChecksumAlgorithm::Crc32C => b.checksum_crc32_c(o.checksum_crc32_c().unwrap()),
                ChecksumAlgorithm::Crc32 => b.checksum_crc32(o.checksum_crc32().unwrap()),
                _ => panic!("no composite {algo:?}"),
            };
            done.push(b.build());
        }
        c.complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&id)
            .multipart_upload(
                aws_sdk_s3::types::CompletedMultipartUpload::builder()
                    .set_parts(Some(done))
                    .build(),
            )
            .send()
            .await
            .unwrap();
    });
}

/// (ALGORITHM, value, composite part count) of a HEAD answer.
pub fn head_sum(
    h: &aws_sdk_s3::operation::head_object::HeadObjectOutput,
) -> (String, String, Option<u32>) {
    let (algo, raw) = [
        ("CRC32", h.checksum_crc32()),
        ("CRC32C", h.checksum_crc32_c()),
        ("CRC64NVME", h.checksum_crc64_nvme()),
        ("SHA1", h.checksum_sha1()),
        ("SHA256", h.checksum_sha256()),
    ]
    .into_iter()
    .find_map(|(a, v)| v.map(|v| (a, v)))
    .expect("the object has a checksum");
    match raw.rsplit_once('-') {
        Some((v, n)) => (algo.into(), v.into(), n.parse().ok()),
        None => (algo.into(), raw.into(), None),
    }
}

/// A multipart copy of a source whose full-object checksum is a CRC64NVME (S3's default
/// for new objects) or a CRC32 lands with that same full-object checksum, in both copy
/// modes: the upload is FULL_OBJECT of the source's algorithm, so the two compare (before,
/// every multipart copy was a CRC32C upload and the source's checksum was compared with
/// nothing). A second run with `--compare checksum` copies nothing.
#[test]
fn a_multipart_copy_keeps_a_crc64nvme_or_crc32_sources_full_object_checksum() {
    for mode in ["server", "stream"] {
        let r = Rig::start();
        let (nvme, crc32) = (data(11 * MIB, 1), data(13 * MIB + 7, 2));
        r.put_with("nvme.bin", &nvme, ChecksumAlgorithm::Crc64Nvme);
        r.put_with("crc32.bin", &crc32, ChecksumAlgorithm::Crc32);
        let run = r.sync(&["--copy-mode", mode]);
        assert_eq!(run.code, 0, "{mode}: {}\n{}", run.stdout, run.stderr);
        assert_eq!(counts(&run.json()), (2, 0, 0), "{mode}");
        for (key, algo, body) in [
            ("nvme.bin", "CRC64NVME", &nvme),
            ("crc32.bin", "CRC32", &crc32),
        ] {
            let src = r.head_sum("src", key);
            assert_eq!((src.0.as_str(), src.2), (algo, None), "{mode}: {key}");
            assert_eq!(
                r.head_sum("dst", key),
                src,
                "{mode}: {key} keeps the source's checksum"
            );
            assert_eq!(r.get("dst", key).unwrap(), *body, "{mode}: {key}");
        }
        let again = r.sync(&["--copy-mode", mode, "--compare", "checksum"]);
        assert_eq!(again.code, 0, "{mode}: {}\n{}", again.stdout, again.stderr);
        assert_eq!(
            counts(&again.json()),
            (0, 2, 0),
            "{mode}: nothing copied again"
        );
    }
}

/// A part spoiled on the way (streamed: the ranged GET of a part; server-side: what
/// UploadPartCopy stored) makes the parts' CRC64NVME (or CRC32) add up to another value
/// than the source's full-object one: the object fails by that algorithm before anything
/// is completed, and nothing lands. Before, both were recorded as copied (a CRC32C upload
/// compared with nothing of a CRC64NVME source).
#[test]
fn a_part_spoiled_on_the_way_fails_the_object_by_the_sources_full_object_algorithm() {
    for mode in ["server", "stream"] {
        let r = Rig::start();
        let (nvme, crc32, fine) = (data(11 * MIB, 1), data(12 * MIB, 2), data(11 * MIB, 3));
        r.put_with("nvme.bin", &nvme, ChecksumAlgorithm::Crc64Nvme);
        r.put_with("crc32.bin", &crc32, ChecksumAlgorithm::Crc32);
        r.put_with("fine.bin", &fine, ChecksumAlgorithm::Crc64Nvme);
        {
            let mut f = r.strict.faults();
            for key in ["nvme.bin", "crc32.bin"] {
                if mode == "stream" {
                    f.corrupt_reads.insert(format!("src/{key}"));
                } else {
                    f.corrupt_copies.insert(format!("dst/{key}"));
                }
            }
        }
        let run = r.sync(&["--copy-mode", mode]);
        assert_eq!(run.code, 1, "{mode}: {}\n{}", run.stdout, run.stderr);
        let j = run.json();
        assert_eq!(counts(&j), (1, 0, 2), "{mode}: {j}");
        for (key, algo) in [("nvme.bin", "CRC64NVME"), ("crc32.bin", "CRC32 ")] {
            let i = item(&j, key);
            assert_eq!(i["error"]["class"], "DigestMismatch", "{mode}: {i}");
            let msg = i["error"]["message"].as_str().unwrap();
            assert!(msg.contains(algo), "{mode}: {key} fails by {algo}: {msg}");
            assert!(
                r.get("dst", key).is_none(),
                "{mode}: {key} was left at the destination"
            );
        }
        assert_eq!(r.get("dst", "fine.bin").unwrap(), fine, "{mode}");
    }
}

/// A source written in parts with a COMPOSITE checksum (SHA-256, CRC32C: the checksum of
/// its part checksums, `-N`) is copied in the same parts as a COMPOSITE upload of the same
/// algorithm, so the destination's composite checksum equals the source's, in both modes
/// and also for one under the multipart threshold. Before, the copy was a CRC32C
/// (FULL_OBJECT or single) and the composite checksum was compared with nothing. Second
/// runs with `--compare checksum` and `--compare etag` copy nothing.
#[test]
fn a_composite_source_copies_to_an_equal_composite_checksum_and_converges() {
    for mode in ["server", "stream"] {
        let r = Rig::start();
        let (a, b, c) = (data(5 * MIB, 1), data(5 * MIB, 2), data(MIB + 3, 3));
        r.put_composite("sha.bin", &[&a, &b, &c], ChecksumAlgorithm::Sha256);
        r.put_composite("crc.bin", &[&b, &c], ChecksumAlgorithm::Crc32C);
        // Under the 6 MiB threshold, but written in two parts.
        let small = data(300, 4);
        r.put_composite("small.bin", &[&a, &small], ChecksumAlgorithm::Sha1);
        // What the copy learns the source's parts from.
        let attrs = r.rt.block_on(
            r.client
                .get_object_attributes()
                .bucket("src")
                .key("sha.bin")
                .object_attributes(aws_sdk_s3::types::ObjectAttributes::Etag)
                .object_attributes(aws_sdk_s3::types::ObjectAttributes::Checksum)
                .object_attributes(aws_sdk_s3::types::ObjectAttributes::ObjectParts)
                .object_attributes(aws_sdk_s3::types::ObjectAttributes::ObjectSize)
                .max_parts(1000)
                .send(),
        );
        let attrs = attrs.unwrap_or_else(|e| panic!("{e:?}"));
        let sizes: Vec<i64> = attrs
            .object_parts()
            .unwrap_or_else(|| panic!("the parts are listed: {attrs:?}"))
            .parts()
            .iter()
            .filter_map(|p| p.size())
            .collect();
        assert_eq!(
            sizes,
            [5 * MIB as i64, 5 * MIB as i64, MIB as i64 + 3],
            "{attrs:?}"
        );
        let run = r.sync(&["--copy-mode", mode]);
        assert_eq!(run.code, 0, "{mode}: {}\n{}", run.stdout, run.stderr);
        assert_eq!(counts(&run.json()), (3, 0, 0), "{mode}");
        for (key, algo, n) in [
            ("sha.bin", "SHA256", 3),
            ("crc.bin", "CRC32C", 2),
            ("small.bin", "SHA1", 2),
        ] {
            let src = r.head_sum("src", key);
            assert_eq!((src.0.as_str(), src.2), (algo, Some(n)), "{mode}: {key}");
            assert_eq!(
                r.head_sum("dst", key),
                src,
                "{mode}: {key} has the source's composite checksum\n{}",
                run.stderr
            );
        }
        let mut whole = a.clone();
        whole.extend_from_slice(&b);
        whole.extend_from_slice(&c);
        assert_eq!(r.get("dst", "sha.bin").unwrap(), whole, "{mode}");
        for compare in ["checksum", "etag"] {
            let again = r.sync(&["--copy-mode", mode, "--compare", compare]);
            assert_eq!(again.code, 0, "{mode}: {}\n{}", again.stdout, again.stderr);
            assert_eq!(
                counts(&again.json()),
                (0, 3, 0),
                "{mode} --compare {compare}"
            );
        }
    }
}

/// A part of a composite SHA-256 source spoiled on the way fails the object by its
/// composite checksum before anything is completed.
#[test]
fn a_part_spoiled_on_the_way_fails_a_composite_source_by_its_composite_checksum() {
    for mode in ["server", "stream"] {
        let r = Rig::start();
        let (a, b) = (data(5 * MIB, 1), data(2 * MIB, 2));
        r.put_composite("sha.bin", &[&a, &b], ChecksumAlgorithm::Sha256);
        if mode == "stream" {
            r.strict.faults().corrupt_reads.insert("src/sha.bin".into());
        } else {
            r.strict
                .faults()
                .corrupt_copies
                .insert("dst/sha.bin".into());
        }
        let run = r.sync(&["--copy-mode", mode]);
        assert_eq!(run.code, 1, "{mode}: {}\n{}", run.stdout, run.stderr);
        let j = run.json();
        let i = item(&j, "sha.bin");
        assert_eq!(i["error"]["class"], "DigestMismatch", "{mode}: {i}");
        let msg = i["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("SHA256") && msg.contains("composite"),
            "{mode}: {msg}"
        );
        assert!(r.get("dst", "sha.bin").is_none(), "{mode}: nothing lands");
    }
}

/// The rig completes FULL_OBJECT CRC64NVME and CRC32 uploads as S3 documents them (the
/// object's checksum is the CRC of all its bytes, whatever the parts): a completion that
/// sends another whole-object value is refused (BadDigest) and nothing is completed; the
/// right one, combined from the part CRCs, is accepted. CRC64NVME is FULL_OBJECT only.
/// GetObjectAttributes lists the parts (number, size, checksum), a page at a time.
#[test]
fn the_strict_rig_completes_full_object_crcs_as_s3_does_and_lists_parts() {
    let r = Rig::start();
    let c = &r.client;
    let (p1, p2) = (data(5 * MIB, 1), data(3000, 2));
    let mut all = p1.clone();
    all.extend_from_slice(&p2);
    let composite_nvme = r.rt.block_on(
        c.create_multipart_upload()
            .bucket("src")
            .key("x")
            .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
            .checksum_type(ChecksumType::Composite)
            .send(),
    );
    assert!(
        format!("{composite_nvme:?}").contains("does not support the COMPOSITE"),
        "{composite_nvme:?}"
    );
    let (nvme, crc32) = (
        crc_fast::CrcAlgorithm::Crc64Nvme,
        crc_fast::CrcAlgorithm::Crc32IsoHdlc,
    );
    for (algo, crc, width) in [
        (ChecksumAlgorithm::Crc64Nvme, nvme, 8),
        (ChecksumAlgorithm::Crc32, crc32, 4),
    ] {
        let b64 = |v: u64| STANDARD.encode(&v.to_be_bytes()[8 - width..]);
        let key = format!("full-{}", algo.as_str());
        let id =
            r.rt.block_on(
                c.create_multipart_upload()
                    .bucket("src")
                    .key(&key)
                    .checksum_algorithm(algo.clone())
                    .checksum_type(ChecksumType::FullObject)
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
                        .checksum_algorithm(algo.clone())
                        .body(ByteStream::from(body.to_vec()))
                        .send(),
                )
                .unwrap();
            let sum = o
                .checksum_crc64_nvme()
                .or(o.checksum_crc32())
                .unwrap()
                .to_string();
            assert_eq!(sum, b64(crc_fast::checksum(crc, body)), "{key}");
            parts.push((n, o.e_tag().unwrap().to_string(), sum));
        }
        let list = aws_sdk_s3::types::CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .iter()
                    .map(|(n, e, s)| {
                        let b = aws_sdk_s3::types::CompletedPart::builder()
                            .part_number(*n)
                            .e_tag(e);
                        if algo == ChecksumAlgorithm::Crc32 {
                            b.checksum_crc32(s)
                        } else {
                            b.checksum_crc64_nvme(s)
                        }
                        .build()
                    })
                    .collect(),
            ))
            .build();
        let complete = |whole: String| {
            let req = c
                .complete_multipart_upload()
                .bucket("src")
                .key(&key)
                .upload_id(&id)
                .multipart_upload(list.clone())
                .checksum_type(ChecksumType::FullObject);
            let req = if algo == ChecksumAlgorithm::Crc32 {
                req.checksum_crc32(whole)
            } else {
                req.checksum_crc64_nvme(whole)
            };
            r.rt.block_on(req.send())
        };
        // The first part's CRC is not the object's.
        let wrong = complete(parts[0].2.clone());
        assert!(
            format!("{wrong:?}").contains("BadDigest"),
            "{key}: {wrong:?}"
        );
        assert!(r.get("src", &key).is_none(), "{key}: nothing completed");
        let combined = crc_fast::checksum_combine(
            crc,
            crc_fast::checksum(crc, &p1),
            crc_fast::checksum(crc, &p2),
            p2.len() as u64,
        );
        assert_eq!(combined, crc_fast::checksum(crc, &all));
        let done = complete(b64(combined)).unwrap();
        let got = done.checksum_crc64_nvme().or(done.checksum_crc32());
        assert_eq!(got, Some(b64(combined).as_str()), "{key}");
        assert_eq!(
            r.head_sum("src", &key),
            (algo.as_str().to_string(), b64(combined), None)
        );
        // The parts, one page at a time.
        let mut listed = vec![];
        let mut marker = None;
        loop {
            let a =
                r.rt.block_on(
                    c.get_object_attributes()
                        .bucket("src")
                        .key(&key)
                        .object_attributes(aws_sdk_s3::types::ObjectAttributes::ObjectParts)
                        .max_parts(1)
                        .set_part_number_marker(marker.take())
                        .send(),
                )
                .unwrap();
            let p = a.object_parts().expect("the parts are listed");
            assert_eq!(p.total_parts_count(), Some(2));
            for part in p.parts() {
                let sum = part
                    .checksum_crc64_nvme()
                    .or(part.checksum_crc32())
                    .unwrap();
                listed.push((
                    part.part_number().unwrap(),
                    part.size().unwrap(),
                    sum.to_string(),
                ));
            }
            if p.is_truncated() != Some(true) {
                break;
            }
            marker = p.next_part_number_marker().map(str::to_string);
        }
        let want: Vec<(i32, i64, String)> = parts
            .iter()
            .zip([p1.len(), p2.len()])
            .map(|((n, _, s), len)| (*n, len as i64, s.clone()))
            .collect();
        assert_eq!(listed, want, "{key}");
    }
}
