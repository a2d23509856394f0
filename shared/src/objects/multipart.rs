//! The multipart plan (pure): whether an object moves in one request or in parts, and
//! the parts. S3's rules: 1 to 10,000 parts, each 5 MiB to 5 GiB except the last, which
//! may be smaller; one request copies at most 5 GiB. The part size grows with the object
//! so any object up to 10,000 × 5 GiB (48.8 TiB) fits.

use serde::{Deserialize, Serialize};

pub const MIB: u64 = 1024 * 1024;
pub const GIB: u64 = 1024 * MIB;
pub const MIN_PART: u64 = 5 * MIB;
pub const MAX_PART: u64 = 5 * GIB;
pub const MAX_PARTS: u64 = 10_000;
/// The largest object a multipart upload can hold.
pub const MAX_OBJECT: u64 = MAX_PARTS * MAX_PART;
/// The largest object one PutObject/CopyObject moves.
pub const MAX_SINGLE: u64 = 5 * GIB;
/// Default threshold above which an object is split into part jobs.
pub const DEFAULT_THRESHOLD: u64 = GIB;
/// Default part size (grown when an object would need more than 10,000 parts).
pub const DEFAULT_PART: u64 = 64 * MIB;

/// One part: 1-based number, byte offset, length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub number: u32,
    pub start: u64,
    pub len: u64,
}

impl Part {
    /// The HTTP range of the part (`bytes=start-end`, inclusive).
    pub fn range(&self) -> String {
        format!("bytes={}-{}", self.start, self.start + self.len - 1)
    }
}

/// How one object moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// One PutObject or CopyObject.
    Single,
    /// A multipart upload with these parts (in order, covering the object exactly).
    Multipart { part_size: u64, parts: Vec<Part> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "object of {size} bytes is larger than S3's limit of {MAX_OBJECT} bytes (10,000 parts of 5 GiB)"
    )]
    TooLarge { size: u64 },
    #[error("part size {0} is outside S3's limits (expected 5242880 to 5368709120 bytes)")]
    BadPartSize(u64),
}

/// Checks a user-chosen part size.
pub fn check_part_size(p: u64) -> Result<u64, PlanError> {
    if (MIN_PART..=MAX_PART).contains(&p) {
        Ok(p)
    } else {
        Err(PlanError::BadPartSize(p))
    }
}

/// The part size for an object: the preferred one, grown (in whole MiB) until the object
/// fits in 10,000 parts.
pub fn part_size(size: u64, preferred: u64) -> Result<u64, PlanError> {
    if size > MAX_OBJECT {
        return Err(PlanError::TooLarge { size });
    }
    let mut p = preferred.clamp(MIN_PART, MAX_PART);
    if size.div_ceil(p) > MAX_PARTS {
        p = size.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
    }
    Ok(p.min(MAX_PART))
}

/// The parts of an object of `size` bytes with parts of `part_size`.
pub fn parts(size: u64, part_size: u64) -> Vec<Part> {
    let n = size.div_ceil(part_size).max(1);
    (0..n)
        .map(|i| {
            let start = i * part_size;
            Part {
                number: (i + 1) as u32,
                start,
                len: part_size.min(size - start),
            }
        })
        .collect()
}

/// Decides how an object moves: in parts when it reaches `threshold`, or when one request
/// could not carry it (over 5 GiB, or over `single_limit` for a streamed copy that holds
/// one request in memory).
pub fn plan(
    size: u64,
    threshold: u64,
    preferred_part: u64,
    single_limit: u64,
) -> Result<Plan, PlanError> {
    if size < threshold && size <= single_limit.min(MAX_SINGLE) {
        return Ok(Plan::Single);
    }
    let part_size = part_size(size, preferred_part)?;
    Ok(Plan::Multipart {
        part_size,
        parts: parts(size, part_size),
    })
}

/// The ETag S3 gives a multipart object: MD5 of the concatenated part MD5s, a dash, the
/// part count.
pub fn multipart_etag(part_md5s: &[[u8; 16]]) -> String {
    use md5::{Digest, Md5};
    let mut h = Md5::new();
    for m in part_md5s {
        h.update(m);
    }
    format!("{}-{}", hex::encode(h.finalize()), part_md5s.len())
}

/// The part size that cuts an object of `size` bytes exactly where the source's parts
/// (their sizes, in part-number order) end: every part but the last of one size, the last
/// no bigger, 1 to 10,000 parts, within S3's part sizes and at most `max_part` (what one
/// part may hold in memory when it is streamed). `Err` says why not, for the log: the
/// copy then uses its own parts.
pub fn same_parts(size: u64, source: &[u64], max_part: u64) -> Result<u64, String> {
    let (Some(&first), Some(&last)) = (source.first(), source.last()) else {
        return Err("the source lists no parts".into());
    };
    if source.len() as u64 > MAX_PARTS {
        return Err(format!("{} parts, over S3's 10,000", source.len()));
    }
    if source.iter().sum::<u64>() != size {
        return Err(format!(
            "its parts add up to {} bytes, the object has {size}",
            source.iter().sum::<u64>()
        ));
    }
    if source[..source.len() - 1].iter().any(|&p| p != first) || last == 0 || last > first {
        return Err("its parts are not all of one size (the last no bigger)".into());
    }
    if first > MAX_PART || (source.len() > 1 && first < MIN_PART) {
        return Err(format!("its part size {first} is outside S3's limits"));
    }
    if first > max_part {
        return Err(format!(
            "its part size {first} is over the {max_part} bytes one streamed part may hold"
        ));
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_objects_move_in_one_request_big_ones_in_parts() {
        assert_eq!(plan(10, GIB, DEFAULT_PART, u64::MAX).unwrap(), Plan::Single);
        let Plan::Multipart { part_size, parts } =
            plan(12 * MIB, 10 * MIB, 5 * MIB, u64::MAX).unwrap()
        else {
            panic!()
        };
        assert_eq!(part_size, 5 * MIB);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[2].len, 2 * MIB);
        assert_eq!(
            parts[2].range(),
            format!("bytes={}-{}", 10 * MIB, 12 * MIB - 1)
        );
        // Over 5 GiB never goes in one request, whatever the threshold.
        assert!(matches!(
            plan(6 * GIB, u64::MAX, DEFAULT_PART, u64::MAX).unwrap(),
            Plan::Multipart { .. }
        ));
        assert_eq!(
            plan(MAX_OBJECT + 1, GIB, DEFAULT_PART, u64::MAX),
            Err(PlanError::TooLarge {
                size: MAX_OBJECT + 1
            })
        );
        assert!(
            check_part_size(MIB)
                .unwrap_err()
                .to_string()
                .contains("1048576")
        );
    }

    #[test]
    fn a_copy_cuts_where_the_sources_parts_end_when_they_are_regular() {
        let m = 5 * MIB;
        assert_eq!(same_parts(12 * MIB, &[m, m, 2 * MIB], GIB), Ok(m));
        assert_eq!(parts(12 * MIB, m).len(), 3);
        assert_eq!(same_parts(3, &[3], GIB), Ok(3));
        for bad in [
            same_parts(12 * MIB, &[], GIB),
            same_parts(12 * MIB, &[m, 6 * MIB, MIB], GIB),
            same_parts(12 * MIB, &[m, m, m], GIB),
            same_parts(16 * MIB, &[m, m, 6 * MIB], GIB),
            same_parts(2 * MIB, &[MIB, MIB], GIB),
            same_parts(12 * MIB, &[m, m, 2 * MIB], MIB),
        ] {
            assert!(bad.is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_multipart_etag_is_md5_of_md5s() {
        use md5::{Digest, Md5};
        let a: [u8; 16] = Md5::digest(b"hello").into();
        let b: [u8; 16] = Md5::digest(b"world").into();
        let mut both = a.to_vec();
        both.extend_from_slice(&b);
        assert_eq!(
            multipart_etag(&[a, b]),
            format!("{}-2", hex::encode(Md5::digest(&both)))
        );
    }

    proptest! {
        /// Any object up to 48.8 TiB: parts cover it exactly, in order, within S3's limits.
        #[test]
        fn parts_always_fit_s3s_rules(size in 1u64..=MAX_OBJECT, preferred in 0u64..(8 * GIB)) {
            let p = part_size(size, preferred).unwrap();
            prop_assert!((MIN_PART..=MAX_PART).contains(&p));
            let ps = parts(size, p);
            prop_assert!(ps.len() as u64 <= MAX_PARTS);
            let mut next = 0;
            for (i, part) in ps.iter().enumerate() {
                prop_assert_eq!(part.number as usize, i + 1);
                prop_assert_eq!(part.start, next);
                prop_assert!(part.len >= 1 && part.len <= p);
                if i + 1 < ps.len() { prop_assert_eq!(part.len, p); }
                next += part.len;
            }
            prop_assert_eq!(next, size);
            if preferred >= MIN_PART && preferred <= MAX_PART && size.div_ceil(preferred) <= MAX_PARTS {
                prop_assert_eq!(p, preferred);
            }
        }
    }
}
