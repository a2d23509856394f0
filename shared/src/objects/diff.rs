//! The object diff: a streaming merge of two listings sorted by key (ListObjectsV2 order,
//! UTF-8 bytes). Memory is bounded by one entry per side, not by bucket size. A listing
//! that goes backwards is detected ([`DiffError::OutOfOrder`]); the caller then sorts it
//! on disk with [`external_sort`] and merges again.

use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

/// One object of a listing. `key` is relative to the listing's prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// LastModified, as listed (what `--max-age` and `--min-age` judge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified: Option<chrono::DateTime<chrono::Utc>>,
    /// Listed in GLACIER or DEEP_ARCHIVE: its bytes cannot be read until it is restored
    /// (GLACIER_IR reads like any other class).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub archived: bool,
}

/// Whether a listed storage class keeps an object's bytes out of reach until a restore.
pub fn is_archived(class: Option<&aws_sdk_s3::types::ObjectStorageClass>) -> bool {
    use aws_sdk_s3::types::ObjectStorageClass as C;
    matches!(class, Some(C::Glacier | C::DeepArchive))
}

/// What counts as "the same object".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compare {
    /// Same key and size (the original's default; cheapest).
    #[default]
    Size,
    /// Same size and ETag (catches same-size changes of single-part uploads).
    Etag,
    /// Same size and stored checksum (CRC32C/SHA-256 when both sides have one, else ETag).
    Checksum,
}

impl Compare {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "size" => Ok(Self::Size),
            "etag" => Ok(Self::Etag),
            "checksum" => Ok(Self::Checksum),
            _ => Err(format!(
                "unknown comparison {s:?}; expected size, etag or checksum"
            )),
        }
    }
}

/// Why an object must move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Missing,
    SizeDiffers,
    EtagDiffers,
    ChecksumDiffers,
}

/// One decision of the merge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The source object must be copied.
    Copy(Entry, Reason),
    /// Present on both sides with the same size, but the ETags (or checksums) differ. The
    /// caller may still find them in sync: a copy it verified earlier gave the destination
    /// this ETag from a source with that ETag (other part sizes, SSE-KMS), see
    /// `UploadLedger::verified`. Otherwise the source object must be copied.
    Changed {
        src: Entry,
        dest: Entry,
        reason: Reason,
    },
    /// Present and equal on both sides.
    InSync(Entry),
    /// Only at the destination (deleted there only when the user asks).
    Extra(Entry),
}

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("the {side} listing is not in key order: {key:?} came after {previous:?}")]
    OutOfOrder {
        side: &'static str,
        key: String,
        previous: String,
    },
    #[error("listing the {side}: {message}")]
    Listing { side: &'static str, message: String },
    #[error("sorting on disk: {0}")]
    Spill(#[from] std::io::Error),
}

/// ETags compare without their quotes.
fn etag_eq(a: &Option<String>, b: &Option<String>) -> bool {
    let t = |x: &Option<String>| x.as_deref().map(|s| s.trim_matches('"').to_string());
    t(a) == t(b)
}

/// The pure decision for one key present on both sides.
pub fn compare_entries(src: &Entry, dst: &Entry, how: Compare) -> Option<Reason> {
    if src.size != dst.size {
        return Some(Reason::SizeDiffers);
    }
    match how {
        Compare::Size => None,
        Compare::Etag => (!etag_eq(&src.etag, &dst.etag)).then_some(Reason::EtagDiffers),
        Compare::Checksum => match (&src.checksum, &dst.checksum) {
            (Some(a), Some(b)) => (a != b).then_some(Reason::ChecksumDiffers),
            _ => (!etag_eq(&src.etag, &dst.etag)).then_some(Reason::ChecksumDiffers),
        },
    }
}

/// Whether a verified copy recorded earlier (`pair` = the source and destination ETags it
/// saw) proves two same-size objects with different ETags equal: both still carry the
/// ETags of that copy.
pub fn settled_by(pair: Option<&(String, String)>, src: &Entry, dest: &Entry) -> bool {
    let Some((s, d)) = pair else {
        return false;
    };
    let bare = |x: &str| x.trim_matches('"').to_string();
    src.size == dest.size
        && src.etag.as_deref().map(bare) == Some(bare(s))
        && dest.etag.as_deref().map(bare) == Some(bare(d))
}

/// A stream that must go forwards: remembers the last key only.
struct Ordered<S> {
    inner: S,
    side: &'static str,
    last: Option<String>,
}

impl<S, E> Ordered<S>
where
    S: Stream<Item = Result<Entry, E>> + Unpin,
    E: std::fmt::Display,
{
    async fn next(&mut self) -> Result<Option<Entry>, DiffError> {
        match self.inner.next().await {
            None => Ok(None),
            Some(Err(e)) => Err(DiffError::Listing {
                side: self.side,
                message: e.to_string(),
            }),
            Some(Ok(e)) => {
                if let Some(prev) = &self.last
                    && e.key.as_bytes() <= prev.as_bytes()
                {
                    return Err(DiffError::OutOfOrder {
                        side: self.side,
                        key: e.key,
                        previous: prev.clone(),
                    });
                }
                self.last = Some(e.key.clone());
                Ok(Some(e))
            }
        }
    }
}

/// Merges two key-sorted listings and hands every decision to `emit` as it is made.
/// `emit` may be async (send a batch of jobs) and may fail, which stops the merge.
pub async fn merge<S, D, E1, E2, F, Fut, EmitErr>(
    source: S,
    dest: D,
    how: Compare,
    mut emit: F,
) -> Result<(), MergeError<EmitErr>>
where
    S: Stream<Item = Result<Entry, E1>> + Unpin,
    D: Stream<Item = Result<Entry, E2>> + Unpin,
    E1: std::fmt::Display,
    E2: std::fmt::Display,
    F: FnMut(Decision) -> Fut,
    Fut: std::future::Future<Output = Result<(), EmitErr>>,
{
    let mut s = Ordered {
        inner: source,
        side: "source",
        last: None,
    };
    let mut d = Ordered {
        inner: dest,
        side: "destination",
        last: None,
    };
    let mut a = s.next().await?;
    let mut b = d.next().await?;
    loop {
        let decision = match (a.take(), b.take()) {
            (None, None) => return Ok(()),
            (Some(x), None) => {
                a = s.next().await?;
                Decision::Copy(x, Reason::Missing)
            }
            (None, Some(y)) => {
                b = d.next().await?;
                Decision::Extra(y)
            }
            (Some(x), Some(y)) => match x.key.as_bytes().cmp(y.key.as_bytes()) {
                Ordering::Less => {
                    b = Some(y);
                    a = s.next().await?;
                    Decision::Copy(x, Reason::Missing)
                }
                Ordering::Greater => {
                    a = Some(x);
                    b = d.next().await?;
                    Decision::Extra(y)
                }
                Ordering::Equal => {
                    a = s.next().await?;
                    b = d.next().await?;
                    match compare_entries(&x, &y, how) {
                        Some(Reason::SizeDiffers) => Decision::Copy(x, Reason::SizeDiffers),
                        Some(reason) => Decision::Changed {
                            src: x,
                            dest: y,
                            reason,
                        },
                        None => Decision::InSync(x),
                    }
                }
            },
        };
        emit(decision).await.map_err(MergeError::Emit)?;
    }
}

/// A merge stops on a listing problem or when the consumer fails.
#[derive(Debug, thiserror::Error)]
pub enum MergeError<E> {
    #[error(transparent)]
    Diff(#[from] DiffError),
    #[error("{0}")]
    Emit(E),
}

/// Sorts a listing of any size by key with bounded memory: runs of `run_len` entries are
/// sorted in memory and spilled to files in `dir`, then merged. Returns an iterator over
/// the sorted entries (duplicated keys keep the last one listed).
pub fn external_sort(
    entries: impl IntoIterator<Item = Entry>,
    dir: &Path,
    run_len: usize,
) -> Result<SortedRuns, std::io::Error> {
    let run_len = run_len.max(1);
    let mut runs = Vec::new();
    let mut buf: Vec<Entry> = Vec::with_capacity(run_len.min(1 << 16));
    let mut spill = |buf: &mut Vec<Entry>| -> Result<(), std::io::Error> {
        buf.sort_by(|a, b| a.key.as_bytes().cmp(b.key.as_bytes()));
        let file = tempfile::tempfile_in(dir)?;
        let mut w = BufWriter::new(file);
        for e in buf.drain(..) {
            serde_json::to_writer(&mut w, &e)?;
            w.write_all(b"\n")?;
        }
        let mut file = w.into_inner().map_err(|e| e.into_error())?;
        std::io::Seek::rewind(&mut file)?;
        runs.push(BufReader::new(file).lines());
        Ok(())
    };
    for e in entries {
        buf.push(e);
        if buf.len() >= run_len {
            spill(&mut buf)?;
        }
    }
    if !buf.is_empty() {
        spill(&mut buf)?;
    }
    SortedRuns::new(runs)
}

struct Head {
    entry: Entry,
    run: usize,
    seq: u64,
}
impl PartialEq for Head {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Head {
    // BinaryHeap is a max-heap: reverse so the smallest key (then the earliest run) pops first.
    fn cmp(&self, o: &Self) -> Ordering {
        o.entry
            .key
            .as_bytes()
            .cmp(self.entry.key.as_bytes())
            .then(o.seq.cmp(&self.seq))
    }
}

/// The k-way merge of the sorted runs spilled by [`external_sort`].
pub struct SortedRuns {
    runs: Vec<std::io::Lines<BufReader<std::fs::File>>>,
    heap: BinaryHeap<Head>,
    seq: u64,
}

impl SortedRuns {
    fn new(runs: Vec<std::io::Lines<BufReader<std::fs::File>>>) -> Result<Self, std::io::Error> {
        let mut k = Self {
            runs,
            heap: BinaryHeap::new(),
            seq: 0,
        };
        for i in 0..k.runs.len() {
            k.pull(i)?;
        }
        Ok(k)
    }
    fn pull(&mut self, run: usize) -> Result<(), std::io::Error> {
        if let Some(line) = self.runs[run].next() {
            let entry: Entry = serde_json::from_str(&line?)?;
            self.seq += 1;
            self.heap.push(Head {
                entry,
                run,
                seq: self.seq,
            });
        }
        Ok(())
    }
    fn pop(&mut self) -> Result<Option<Entry>, std::io::Error> {
        let Some(h) = self.heap.pop() else {
            return Ok(None);
        };
        self.pull(h.run)?;
        let mut entry = h.entry;
        // A key listed twice: keep the later one.
        while self.heap.peek().is_some_and(|n| n.entry.key == entry.key) {
            let n = self.heap.pop().expect("peeked");
            self.pull(n.run)?;
            entry = n.entry;
        }
        Ok(Some(entry))
    }
}

impl Iterator for SortedRuns {
    type Item = Result<Entry, std::io::Error>;
    fn next(&mut self) -> Option<Self::Item> {
        self.pop().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn e(key: &str, size: u64, etag: &str) -> Entry {
        Entry {
            archived: false,
            key: key.into(),
            size,
            etag: Some(etag.into()),
            checksum: None,
            modified: None,
        }
    }

    fn run(src: Vec<Entry>, dst: Vec<Entry>, how: Compare) -> Result<Vec<Decision>, DiffError> {
        let mut out = Vec::new();
        let r = futures::executor::block_on(merge(
            futures::stream::iter(src.into_iter().map(Ok::<_, String>)),
            futures::stream::iter(dst.into_iter().map(Ok::<_, String>)),
            how,
            |d| {
                out.push(d);
                async { Ok::<(), String>(()) }
            },
        ));
        match r {
            Ok(()) => Ok(out),
            Err(MergeError::Diff(e)) => Err(e),
            Err(MergeError::Emit(e)) => panic!("{e}"),
        }
    }

    #[test]
    fn size_by_default_etag_when_asked() {
        let src = vec![e("a", 1, "x"), e("b", 2, "y"), e("c", 3, "z")];
        let dst = vec![e("b", 2, "\"other\""), e("c", 4, "z"), e("d", 1, "w")];
        let d = run(src.clone(), dst.clone(), Compare::Size).unwrap();
        assert_eq!(
            d,
            vec![
                Decision::Copy(e("a", 1, "x"), Reason::Missing),
                Decision::InSync(e("b", 2, "y")),
                Decision::Copy(e("c", 3, "z"), Reason::SizeDiffers),
                Decision::Extra(e("d", 1, "w")),
            ]
        );
        let d = run(src, dst, Compare::Etag).unwrap();
        assert_eq!(
            d[1],
            Decision::Changed {
                src: e("b", 2, "y"),
                dest: e("b", 2, "\"other\""),
                reason: Reason::EtagDiffers
            }
        );
        assert!(etag_eq(&Some("\"q\"".into()), &Some("q".into())));
    }

    #[test]
    fn a_recorded_verified_copy_settles_only_the_etags_it_saw() {
        let pair = ("s-3".to_string(), "\"d-2\"".to_string());
        let (src, dst) = (e("k", 9, "\"s-3\""), e("k", 9, "d-2"));
        assert!(settled_by(Some(&pair), &src, &dst));
        assert!(!settled_by(None, &src, &dst));
        assert!(
            !settled_by(Some(&pair), &e("k", 9, "s-4"), &dst),
            "the source changed"
        );
        assert!(
            !settled_by(Some(&pair), &src, &e("k", 9, "d-9")),
            "the destination changed"
        );
        assert!(
            !settled_by(Some(&pair), &src, &e("k", 8, "d-2")),
            "another size"
        );
    }

    #[test]
    fn a_listing_that_goes_backwards_is_named() {
        let err = run(vec![e("b", 1, "x"), e("a", 1, "x")], vec![], Compare::Size).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("source") && msg.contains("\"a\"") && msg.contains("\"b\""),
            "{msg}"
        );
    }

    #[test]
    fn external_sort_orders_by_bytes_and_keeps_the_last_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let input = vec![
            e("é", 1, "1"),
            e("b", 1, "1"),
            e("Z", 1, "1"),
            e("b", 2, "2"),
            e("a", 1, "1"),
        ];
        let out: Vec<Entry> = external_sort(input, dir.path(), 2)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let keys: Vec<&str> = out.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, vec!["Z", "a", "b", "é"]);
        assert_eq!(out[2].size, 2);
    }

    fn listing() -> impl Strategy<Value = BTreeMap<String, (u64, u8)>> {
        prop::collection::btree_map("[a-d]{1,3}(/[a-c]{0,2})?", (0u64..4, 0u8..3), 0..40)
    }

    proptest! {
        /// The merge agrees with a map-based model on every key, whatever the listings.
        #[test]
        fn merge_agrees_with_the_model(src in listing(), dst in listing(), etag in any::<bool>()) {
            let to = |m: &BTreeMap<String, (u64, u8)>| m.iter().map(|(k, (s, t))| e(k, *s, &t.to_string())).collect::<Vec<_>>();
            let how = if etag { Compare::Etag } else { Compare::Size };
            let out = run(to(&src), to(&dst), how).unwrap();
            let mut copies = 0;
            for d in &out {
                match d {
                    Decision::Copy(x, r) => {
                        copies += 1;
                        match dst.get(&x.key) {
                            None => prop_assert_eq!(*r, Reason::Missing),
                            Some((s, _)) => prop_assert!(*s != x.size && *r == Reason::SizeDiffers),
                        }
                    }
                    Decision::Changed { src: x, dest: y, reason } => {
                        copies += 1;
                        let (s, t) = dst[&x.key];
                        prop_assert_eq!(*reason, Reason::EtagDiffers);
                        prop_assert!(etag && s == x.size && t.to_string() != *x.etag.as_ref().unwrap());
                        prop_assert_eq!(&y.key, &x.key);
                    }
                    Decision::InSync(x) => {
                        let (s, t) = dst[&x.key];
                        prop_assert_eq!(s, x.size);
                        if etag { prop_assert_eq!(Some(t.to_string()), x.etag.clone()); }
                    }
                    Decision::Extra(y) => prop_assert!(!src.contains_key(&y.key)),
                }
            }
            let expected = src.iter().filter(|(k, (s, t))| match dst.get(*k) {
                None => true,
                Some((ds, dt)) => ds != s || (etag && dt != t),
            }).count();
            prop_assert_eq!(copies, expected);
            prop_assert_eq!(out.len(), src.keys().chain(dst.keys()).collect::<std::collections::BTreeSet<_>>().len());
        }

        /// Sorting on disk then merging gives what merging sorted input gives.
        #[test]
        fn external_sort_is_a_sort(keys in prop::collection::vec("[a-e]{1,4}", 0..60), run_len in 1usize..8) {
            let dir = tempfile::tempdir().unwrap();
            let input: Vec<Entry> = keys.iter().map(|k| e(k, 1, "x")).collect();
            let out: Vec<String> = external_sort(input, dir.path(), run_len).unwrap().map(|r| r.unwrap().key).collect();
            let mut want: Vec<String> = keys.clone();
            want.sort();
            want.dedup();
            prop_assert_eq!(out, want);
        }
    }
}
