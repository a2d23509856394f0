//! S3's additional checksums (pure): which algorithm a copy asks for, computing one over
//! bytes, reading one from an answer (full-object, or composite `value-N`), and the
//! full-object CRC32C of a multipart object from its parts' CRC32Cs.
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

/// The full-object CRC32C of an object from its parts' CRC32Cs (base64) and lengths, in
/// order: what S3 stores for a FULL_OBJECT CRC32C multipart upload. `None` when a part's
/// checksum is missing or not a CRC32C.
pub fn combine_crc32c(parts: &[(Option<&str>, u64)]) -> Option<String> {
    use crc_fast::{CrcAlgorithm, checksum_combine};
    let mut acc: Option<u64> = None;
    for (v, len) in parts {
        let raw = STANDARD.decode((*v)?).ok()?;
        let crc = u32::from_be_bytes(<[u8; 4]>::try_from(raw.as_slice()).ok()?) as u64;
        acc = Some(match acc {
            None => crc,
            Some(a) => checksum_combine(CrcAlgorithm::Crc32Iscsi, a, crc, *len),
        });
    }
    acc.map(|c| STANDARD.encode((c as u32).to_be_bytes()))
}

/// A finished part as the upload ledger keeps it: its ETag and, when S3 reported one, its
/// CRC32C (`ETAG crc32c=BASE64`), so the completion can name every part's checksum.
pub fn part_tag(etag: &str, crc32c: Option<&str>) -> String {
    match crc32c {
        Some(c) => format!("{etag} crc32c={c}"),
        None => etag.to_string(),
    }
}

/// The ETag and CRC32C of a part tag ([`part_tag`]; a bare ETag has no checksum).
pub fn parse_part_tag(tag: &str) -> (&str, Option<&str>) {
    match tag.split_once(" crc32c=") {
        Some((e, c)) => (e, Some(c)),
        None => (tag, None),
    }
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
            parse_part_tag(&part_tag("abc", Some("Zm9v"))),
            ("abc", Some("Zm9v"))
        );
        assert_eq!(parse_part_tag("abc"), ("abc", None));
    }
}
