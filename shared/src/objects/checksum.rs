//! S3's additional checksums (pure): which algorithm a copy asks for, computing one over
//! bytes, reading one from an answer (full-object, or composite `value-N`), a multipart
//! upload's checksum ([`UploadSum`]), and the whole object's checksum from its parts'
//! (FULL_OBJECT: the CRCs combined; COMPOSITE: the checksum of the part checksums).
//!
//! What AWS documents and this follows: a single-request upload (PutObject, CopyObject)
//! always has a full-object checksum; a multipart upload's is either COMPOSITE (the
//! checksum of the part checksums, `-N` appended; depends on the part layout) or
//! FULL_OBJECT (CRC32, CRC32C, CRC64NVME only; the checksum of the whole object, whatever
//! the parts). CopyObject keeps the source's checksum unless `x-amz-checksum-algorithm`
//! is sent, when S3 computes that algorithm over the copied bytes.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// A checksum algorithm S3 stores (the order of [`super::bucket::Head::checksums`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    Crc32,
    Crc32c,
    Crc64Nvme,
    Sha1,
    Sha256,
}

impl Algo {
    pub const ALL: [Algo; 5] = [
        Algo::Crc32,
        Algo::Crc32c,
        Algo::Crc64Nvme,
        Algo::Sha1,
        Algo::Sha256,
    ];

    /// S3's name (`CRC32C`).
    pub fn name(self) -> &'static str {
        match self {
            Algo::Crc32 => "CRC32",
            Algo::Crc32c => "CRC32C",
            Algo::Crc64Nvme => "CRC64NVME",
            Algo::Sha1 => "SHA1",
            Algo::Sha256 => "SHA256",
        }
    }

    /// Whether S3 can keep a FULL_OBJECT checksum of this algorithm for a multipart object.
    pub fn full_object_capable(self) -> bool {
        matches!(self, Algo::Crc32 | Algo::Crc32c | Algo::Crc64Nvme)
    }

    pub fn sdk(self) -> aws_sdk_s3::types::ChecksumAlgorithm {
        use aws_sdk_s3::types::ChecksumAlgorithm as A;
        match self {
            Algo::Crc32 => A::Crc32,
            Algo::Crc32c => A::Crc32C,
            Algo::Crc64Nvme => A::Crc64Nvme,
            Algo::Sha1 => A::Sha1,
            Algo::Sha256 => A::Sha256,
        }
    }

    /// The base64 checksum of `bytes`, as S3 writes it.
    pub fn compute(self, bytes: &[u8]) -> String {
        use aws_smithy_checksums::ChecksumAlgorithm as C;
        let c = match self {
            Algo::Crc32 => C::Crc32,
            Algo::Crc32c => C::Crc32c,
            Algo::Crc64Nvme => C::Crc64Nvme,
            Algo::Sha1 => C::Sha1,
            Algo::Sha256 => C::Sha256,
        };
        let mut h = c.into_impl();
        h.update(bytes);
        STANDARD.encode(h.finalize())
    }
}

/// A stored checksum as S3 reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    pub algo: Algo,
    /// Base64, without the `-N` of a composite checksum.
    pub value: String,
    /// `Some(N)`: COMPOSITE over N parts (not a checksum of the bytes); `None`: full object.
    pub composite_parts: Option<u32>,
}

impl Checksum {
    pub fn full(&self) -> bool {
        self.composite_parts.is_none()
    }
}

impl std::fmt::Display for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.composite_parts {
            Some(n) => write!(f, "{} {}-{n} (composite)", self.algo.name(), self.value),
            None => write!(f, "{} {}", self.algo.name(), self.value),
        }
    }
}

/// The checksum an answer carries: the first of `values` (in [`Algo::ALL`] order) present,
/// with its type (`x-amz-checksum-type`; a `-N` suffix also means composite).
pub fn from_answer(values: &[Option<String>; 5], kind: Option<&str>) -> Option<Checksum> {
    let (algo, raw) = Algo::ALL
        .iter()
        .zip(values.iter())
        .find_map(|(a, v)| v.as_deref().filter(|v| !v.is_empty()).map(|v| (*a, v)))?;
    let (value, parts) = match raw.rsplit_once('-') {
        Some((v, n)) if n.bytes().all(|b| b.is_ascii_digit()) && !n.is_empty() => {
            (v.to_string(), n.parse().ok())
        }
        _ => (raw.to_string(), None),
    };
    let composite_parts = match (parts, kind) {
        (Some(n), _) => Some(n),
        (None, Some("COMPOSITE")) => Some(0),
        _ => None,
    };
    Some(Checksum {
        algo,
        value,
        composite_parts,
    })
}

/// The algorithm a single-request copy (PutObject, CopyObject) asks S3 for: the source's,
/// when the source has a full-object checksum (so the two compare directly), else CRC32C.
pub fn algo_for_single(source: Option<&Checksum>) -> Algo {
    source.filter(|c| c.full()).map_or(Algo::Crc32c, |c| c.algo)
}

/// How a multipart upload's checksum is kept: FULL_OBJECT (a CRC of all the bytes,
/// whatever the parts: CRC32, CRC32C, CRC64NVME) or COMPOSITE (the checksum of the part
/// checksums, `-N`; depends on the part boundaries). Kept in the upload ledger with the
/// upload, so the parts, the completion (check-multipart on AWS) and a resumed run use
/// the algorithm the upload was created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadSum {
    pub algo: Algo,
    pub composite: bool,
}

impl UploadSum {
    /// What uploads were before the algorithm was kept per upload (a ledger row without
    /// one): FULL_OBJECT CRC32C.
    pub const DEFAULT: UploadSum = UploadSum {
        algo: Algo::Crc32c,
        composite: false,
    };

    /// The upload's checksum for a source whose stored checksum is `source`: a
    /// full-object CRC32, CRC32C or CRC64NVME is kept as FULL_OBJECT of the same
    /// algorithm (so the two compare whatever the part sizes); a composite one only
    /// when the copy uses the source's part boundaries (`same_parts`), as COMPOSITE of
    /// its algorithm; anything else (SHA full-object, which S3 cannot keep for a
    /// multipart object; a composite source copied with other parts; no checksum) is a
    /// FULL_OBJECT CRC32C, compared with nothing of the source's.
    pub fn for_source(source: Option<&Checksum>, same_parts: bool) -> UploadSum {
        match source {
            Some(c) if c.full() && c.algo.full_object_capable() => UploadSum {
                algo: c.algo,
                composite: false,
            },
            Some(c) if !c.full() && same_parts && c.algo != Algo::Crc64Nvme => UploadSum {
                algo: c.algo,
                composite: true,
            },
            _ => UploadSum::DEFAULT,
        }
    }

    /// The ledger's text: `CRC64NVME` (FULL_OBJECT) or `SHA256/COMPOSITE`.
    pub fn to_text(self) -> String {
        if self.composite {
            format!("{}/COMPOSITE", self.algo.name())
        } else {
            self.algo.name().to_string()
        }
    }

    /// Reads [`UploadSum::to_text`]; `None` (an older ledger row) or an unknown text is
    /// [`UploadSum::DEFAULT`], what such uploads were created with.
    pub fn from_text(t: Option<&str>) -> UploadSum {
        let Some(t) = t else {
            return UploadSum::DEFAULT;
        };
        let (name, composite) = match t.strip_suffix("/COMPOSITE") {
            Some(n) => (n, true),
            None => (t, false),
        };
        Algo::from_name(name).map_or(UploadSum::DEFAULT, |algo| UploadSum { algo, composite })
    }
}

impl serde::Serialize for UploadSum {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_text())
    }
}

impl<'de> serde::Deserialize<'de> for UploadSum {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let t: Option<String> = serde::Deserialize::deserialize(d)?;
        Ok(UploadSum::from_text(t.as_deref()))
    }
}

impl Default for UploadSum {
    fn default() -> Self {
        UploadSum::DEFAULT
    }
}

impl Algo {
    /// The algorithm S3 names `name` (`CRC64NVME`, any case).
    pub fn from_name(name: &str) -> Option<Algo> {
        Algo::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(name))
    }

    fn crc(self) -> Option<(crc_fast::CrcAlgorithm, usize)> {
        use crc_fast::CrcAlgorithm as C;
        match self {
            Algo::Crc32 => Some((C::Crc32IsoHdlc, 4)),
            Algo::Crc32c => Some((C::Crc32Iscsi, 4)),
            Algo::Crc64Nvme => Some((C::Crc64Nvme, 8)),
            Algo::Sha1 | Algo::Sha256 => None,
        }
    }
}

/// The full-object checksum of an object from its parts' checksums (base64) and lengths,
/// in order, for a CRC `algo` (CRC32, CRC32C, CRC64NVME): what S3 stores for a
/// FULL_OBJECT multipart upload, the CRC of all the bytes. `None` when a part's checksum
/// is missing or not one of `algo`, or `algo` is not a CRC.
pub fn combine(algo: Algo, parts: &[(Option<&str>, u64)]) -> Option<String> {
    let (crc, width) = algo.crc()?;
    let mut acc: Option<u64> = None;
    for (v, len) in parts {
        let raw = STANDARD.decode((*v)?).ok()?;
        if raw.len() != width {
            return None;
        }
        let mut be = [0u8; 8];
        be[8 - width..].copy_from_slice(&raw);
        let part = u64::from_be_bytes(be);
        acc = Some(match acc {
            None => part,
            Some(a) => crc_fast::checksum_combine(crc, a, part, *len),
        });
    }
    acc.map(|c| STANDARD.encode(&c.to_be_bytes()[8 - width..]))
}

/// The full-object CRC32C of an object from its parts' CRC32Cs ([`combine`]).
pub fn combine_crc32c(parts: &[(Option<&str>, u64)]) -> Option<String> {
    combine(Algo::Crc32c, parts)
}

/// The COMPOSITE checksum of an object from its parts' checksums (base64), in order: the
/// `algo` checksum of the parts' binary checksums one after the other (S3 appends `-N`,
/// the part count; see [`Checksum::composite_parts`]). `None` when a part's is missing or
/// not one of `algo`.
pub fn composite(algo: Algo, parts: &[Option<&str>]) -> Option<String> {
    let mut raw = Vec::with_capacity(parts.len() * 32);
    for v in parts {
        let b = STANDARD.decode((*v)?).ok()?;
        if STANDARD.decode(algo.compute(b"")).ok()?.len() != b.len() {
            return None;
        }
        raw.extend_from_slice(&b);
    }
    Some(algo.compute(&raw))
}

/// A finished part as the upload ledger keeps it: its ETag and, when S3 reported one, its
/// checksum in the upload's algorithm (`ETAG crc32c=BASE64`, `ETAG sha256=BASE64`), so
/// the completion can name every part's checksum.
pub fn part_tag(etag: &str, sum: Option<(Algo, &str)>) -> String {
    match sum {
        Some((a, c)) => format!("{etag} {}={c}", a.name().to_ascii_lowercase()),
        None => etag.to_string(),
    }
}

/// The ETag and checksum of a part tag ([`part_tag`]; a bare ETag has no checksum).
pub fn parse_part_tag(tag: &str) -> (&str, Option<(Algo, &str)>) {
    if let Some((e, rest)) = tag.split_once(' ')
        && let Some((name, c)) = rest.split_once('=')
        && let Some(a) = Algo::from_name(name)
    {
        return (e, Some((a, c)));
    }
    (tag, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_computed_as_s3_writes_them() {
        // Known values: CRC32C("123456789") = 0xE3069283, CRC32 = 0xCBF43926.
        assert_eq!(
            Algo::Crc32c.compute(b"123456789"),
            STANDARD.encode(0xE306_9283u32.to_be_bytes())
        );
        assert_eq!(
            Algo::Crc32.compute(b"123456789"),
            STANDARD.encode(0xCBF4_3926u32.to_be_bytes())
        );
        assert_eq!(Algo::Sha256.compute(b"").len(), 44);
    }

    #[test]
    fn part_crc32cs_combine_into_the_whole_objects() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let parts: Vec<(String, u64)> = data
            .chunks(30_000)
            .map(|c| (Algo::Crc32c.compute(c), c.len() as u64))
            .collect();
        let refs: Vec<(Option<&str>, u64)> =
            parts.iter().map(|(v, l)| (Some(v.as_str()), *l)).collect();
        assert_eq!(combine_crc32c(&refs), Some(Algo::Crc32c.compute(&data)));
        assert_eq!(combine_crc32c(&[(None, 3)]), None);
    }

    #[test]
    fn part_crcs_of_every_full_object_algorithm_combine_into_the_whole_objects() {
        let data: Vec<u8> = (0..250_000u32).map(|i| (i * 13 % 241) as u8).collect();
        for algo in [Algo::Crc32, Algo::Crc32c, Algo::Crc64Nvme] {
            let parts: Vec<(String, u64)> = data
                .chunks(70_000)
                .map(|c| (algo.compute(c), c.len() as u64))
                .collect();
            let refs: Vec<(Option<&str>, u64)> =
                parts.iter().map(|(v, l)| (Some(v.as_str()), *l)).collect();
            assert_eq!(combine(algo, &refs), Some(algo.compute(&data)), "{algo:?}");
            // A part checksum of another algorithm (another width) is no part of this one.
            let wrong = Algo::Sha1.compute(&data[..10]);
            assert_eq!(combine(algo, &[(Some(wrong.as_str()), 10)]), None);
        }
        assert_eq!(combine(Algo::Sha256, &[(Some("AAAA"), 3)]), None);
    }

    #[test]
    fn a_composite_checksum_is_the_checksum_of_the_part_checksums() {
        let (a, b) = (b"first part".as_slice(), b"second".as_slice());
        for algo in [Algo::Sha256, Algo::Sha1, Algo::Crc32c, Algo::Crc32] {
            let (ca, cb) = (algo.compute(a), algo.compute(b));
            let mut raw = STANDARD.decode(&ca).unwrap();
            raw.extend(STANDARD.decode(&cb).unwrap());
            assert_eq!(
                composite(algo, &[Some(&ca), Some(&cb)]),
                Some(algo.compute(&raw))
            );
            assert_eq!(composite(algo, &[Some(&ca), None]), None);
        }
    }

    #[test]
    fn an_upload_keeps_the_sources_algorithm_when_the_two_can_compare() {
        let sum = |algo, parts| Checksum {
            algo,
            value: "v".into(),
            composite_parts: parts,
        };
        let full = |algo| UploadSum {
            algo,
            composite: false,
        };
        for a in [Algo::Crc32, Algo::Crc32c, Algo::Crc64Nvme] {
            assert_eq!(UploadSum::for_source(Some(&sum(a, None)), false), full(a));
        }
        // S3 keeps no FULL_OBJECT SHA for a multipart object.
        assert_eq!(
            UploadSum::for_source(Some(&sum(Algo::Sha256, None)), false),
            UploadSum::DEFAULT
        );
        let comp = sum(Algo::Sha256, Some(3));
        assert_eq!(
            UploadSum::for_source(Some(&comp), true),
            UploadSum {
                algo: Algo::Sha256,
                composite: true
            }
        );
        assert_eq!(
            UploadSum::for_source(Some(&comp), false),
            UploadSum::DEFAULT
        );
        assert_eq!(UploadSum::for_source(None, true), UploadSum::DEFAULT);
        for u in [
            UploadSum::DEFAULT,
            full(Algo::Crc64Nvme),
            UploadSum {
                algo: Algo::Sha1,
                composite: true,
            },
        ] {
            assert_eq!(UploadSum::from_text(Some(&u.to_text())), u);
        }
        assert_eq!(UploadSum::from_text(None), UploadSum::DEFAULT);
    }

    #[test]
    fn answers_tell_full_object_from_composite() {
        let mut v: [Option<String>; 5] = Default::default();
        assert_eq!(from_answer(&v, None), None);
        v[1] = Some("AAAAAA==-3".into());
        let c = from_answer(&v, Some("COMPOSITE")).unwrap();
        assert_eq!(
            (c.algo, c.value.as_str(), c.composite_parts),
            (Algo::Crc32c, "AAAAAA==", Some(3))
        );
        v[1] = Some("AAAAAA==".into());
        assert!(from_answer(&v, Some("FULL_OBJECT")).unwrap().full());
        assert_eq!(algo_for_single(None), Algo::Crc32c);
        v[1] = None;
        v[4] = Some("x".into());
        assert_eq!(
            algo_for_single(from_answer(&v, None).as_ref()),
            Algo::Sha256
        );
    }

    #[test]
    fn part_tags_keep_the_etag_and_the_checksum() {
        assert_eq!(
            parse_part_tag(&part_tag("abc", Some((Algo::Crc32c, "Zm9v")))),
            ("abc", Some((Algo::Crc32c, "Zm9v")))
        );
        // What the ledger held before the algorithm was named per upload.
        assert_eq!(
            parse_part_tag("abc crc32c=Zm9v"),
            ("abc", Some((Algo::Crc32c, "Zm9v")))
        );
        assert_eq!(
            parse_part_tag(&part_tag("abc", Some((Algo::Crc64Nvme, "AAAAAAAAAAA=")))),
            ("abc", Some((Algo::Crc64Nvme, "AAAAAAAAAAA=")))
        );
        assert_eq!(parse_part_tag("abc"), ("abc", None));
    }
}
