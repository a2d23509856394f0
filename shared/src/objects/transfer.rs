//! Moving one object, or one part of it, and checking what arrived. Server-side
//! (`CopyObject` / `UploadPartCopy`) when one client can read the source and write the
//! destination; otherwise GET → PUT with the bytes held in memory one part at a time
//! (memory = part size × parts in flight, never the object size).
//!
//! Every PUT and part carries Content-MD5 and an additional checksum S3 checks the bytes
//! against (the source's algorithm when the source has a full-object checksum, else
//! CRC32C; a multipart upload's follows the source's, [`UploadSum::for_source`]: FULL_OBJECT
//! of the source's CRC, COMPOSITE of its algorithm in its own parts, else FULL_OBJECT
//! CRC32C); CopyObject asks S3 to compute that checksum over the copied bytes. Bytes read from the source are checked against
//! the source's ETag when that ETag is an MD5 (single-part, not KMS) and against its
//! stored full-object checksum; the destination's checksum must equal the source's when
//! the source has one of the same kind (full-object, same algorithm), and the destination
//! is checked afterwards (size, and ETag = MD5 or the multipart ETag of the part MD5s). A
//! mismatch is a `DigestMismatch` failure and the object is never recorded as copied.

use super::bucket::{Bucket, DestOptions, bare_etag, is_md5_etag};
use super::checksum::{self, Algo, Checksum, UploadSum};
use super::diff::Entry;
use super::multipart::{Part, multipart_etag};
use super::uploads::{Upload, UploadLedger};
use crate::retry::{ErrorClass, ItemError};
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

/// How bytes move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// S3 copies inside (same credentials can read the source and write the destination).
    Server,
    /// Through this process: GET from the source, PUT to the destination.
    Stream,
}

/// Moves objects from `src` to `dst`.
pub struct Transfer<'a> {
    pub src: &'a Bucket,
    pub dst: &'a Bucket,
    pub mode: Mode,
    pub opts: &'a DestOptions,
    /// Carry object tags too.
    pub tags: bool,
    /// Delete a server-side copy that fails its check (see [`Transfer::remove_bad_copy`]).
    pub remove_bad_copies: bool,
    /// The objects task this copy belongs to on AWS (kept with the uploads it opens).
    pub task: Option<&'a crate::tasks::TaskScope>,
    /// The run whose job opens an upload (AWS: kept with it, so check-multipart records the
    /// completed object under that run). `None` on one machine, where the run records it.
    pub run: Option<&'a str>,
    /// `--bwlimit`: the rate streamed bodies are read at (server-side copies move no bytes
    /// through us).
    pub bwlimit: Option<&'a super::bandwidth::Bandwidth>,
}

/// A ledger (status store) error, as a retryable item error.
pub fn ledger_error(e: crate::status::StoreError) -> ItemError {
    ItemError::new(ErrorClass::Retryable, format!("upload ledger: {e}"))
}

fn mismatch(msg: String) -> ItemError {
    ItemError::new(ErrorClass::DigestMismatch, msg)
}

fn md5_of(b: &[u8]) -> [u8; 16] {
    Md5::digest(b).into()
}

impl Transfer<'_> {
    /// Copies an object in one request and verifies it. Returns the destination ETag.
    ///
    /// An ETag counts as the MD5 of the bytes only when the answer's encryption headers
    /// say so (not SSE-KMS, DSSE-KMS or SSE-C) and the object is single-part; the listing
    /// says nothing of encryption, so a source ETag that disagrees is settled by a HEAD of
    /// the source. Otherwise S3 checked our Content-MD5 (stream) or copied inside, and the
    /// size is checked.
    pub async fn single(&self, e: &Entry) -> Result<Option<String>, ItemError> {
        let dest_url = self.dst.url.object(&e.key);
        let (etag, proven) = match self.mode {
            Mode::Server => {
                // The source's stored checksum: the copy asks S3 for the same algorithm, so
                // the two compare. (The HEAD also names an SSE-C source we cannot read.)
                let source = self.source_checksum(e).await?;
                let algo = checksum::algo_for_single(source.as_ref());
                let w = self
                    .dst
                    .copy_from(
                        &e.key,
                        self.src,
                        e.etag.as_deref(),
                        algo,
                        self.opts,
                        self.tags,
                    )
                    .await?;
                let (etag, dest_encrypted) = (w.etag, w.encrypted);
                let mut proven = match compare_checksums(
                    &dest_url,
                    "after the copy",
                    algo,
                    w.checksum.as_deref(),
                    source.as_ref(),
                ) {
                    Ok(p) => p,
                    Err(err) => return Err(self.remove_bad_copy(e, err).await),
                };
                if !dest_encrypted
                    && let (Some(src), Some(got)) = (&e.etag, &etag)
                    && is_md5_etag(src)
                {
                    if bare_etag(src) == *got {
                        // The copy's MD5 is the listed object's MD5: same bytes, same size.
                        proven = true;
                    } else if !self.source_encrypted(e).await? {
                        let err = mismatch(format!(
                            "{dest_url}: ETag {got} after the copy, source ETag {src}"
                        ));
                        return Err(self.remove_bad_copy(e, err).await);
                    }
                }
                (etag, proven)
            }
            Mode::Stream => {
                let got = self
                    .src
                    .get(&e.key, None, e.etag.as_deref(), e.size, self.bwlimit)
                    .await?;
                let body = got.body;
                let md5 = md5_of(&body);
                let src_etag = got.etag.or_else(|| e.etag.clone());
                let src_url = self.src.url.object(&e.key);
                check_read(
                    &src_url,
                    body.len() as u64,
                    e.size,
                    &md5,
                    src_etag.as_deref().filter(|_| !got.encrypted),
                )?;
                // The bytes read must be the ones the source's stored checksum describes;
                // the PUT then carries that checksum, which S3 checks against what arrives.
                let algo = checksum::algo_for_single(got.checksum.as_ref());
                let value = algo.compute(&body);
                compare_checksums(
                    &src_url,
                    "of the bytes read",
                    algo,
                    Some(&value),
                    got.checksum.as_ref(),
                )?;
                let tagging = if self.tags {
                    self.src.tagging(&e.key).await?
                } else {
                    None
                };
                let w = self
                    .dst
                    .put(
                        &e.key,
                        body,
                        &md5,
                        (algo, &value),
                        &got.meta,
                        tagging,
                        self.opts,
                    )
                    .await?;
                let (etag, dest_encrypted) = (w.etag, w.encrypted);
                let sent = Checksum {
                    algo,
                    value: value.clone(),
                    composite_parts: None,
                };
                // What S3 stored is what we sent (it refuses the PUT otherwise).
                let mut proven = compare_checksums(
                    &dest_url,
                    "after the PUT",
                    algo,
                    w.checksum.as_deref(),
                    Some(&sent),
                )?;
                if !dest_encrypted
                    && let Some(got) = &etag
                    && is_md5_etag(got)
                {
                    if *got != hex::encode(md5) {
                        return Err(mismatch(format!(
                            "{dest_url}: ETag {got} after the PUT, MD5 of the bytes sent {}",
                            hex::encode(md5)
                        )));
                    }
                    // S3 stored the MD5 of the bytes we read, whose length was checked.
                    proven = true;
                }
                (etag, proven)
            }
        };
        // Only when the ETag could not prove the content does a HEAD check the size.
        if !proven {
            self.verify_size(e).await?;
        }
        Ok(etag)
    }

    /// A server-side copy that S3 already wrote is not the source's bytes: with
    /// `remove_bad_copies` (the CLI) it is deleted, so no run ever takes it for a copy (a
    /// later `--compare size` would); the AWS roles hold no s3:DeleteObject unless deletion
    /// is on, so there it stays, recorded as failed, until the retry overwrites it.
    async fn remove_bad_copy(&self, e: &Entry, err: ItemError) -> ItemError {
        if self.remove_bad_copies
            && let Err(x) = self.dst.delete(&e.key).await
        {
            tracing::warn!(object = %self.dst.url.object(&e.key), error = %x.message, "cannot delete the copy that failed its check");
        }
        err
    }

    /// The checksum the source stores (HEAD with ChecksumMode), for the listed version: a
    /// source whose ETag changed since the listing is `SourceChanged`.
    async fn source_checksum(&self, e: &Entry) -> Result<Option<Checksum>, ItemError> {
        let url = self.src.url.object(&e.key);
        let head = self.src.head(&e.key).await?.ok_or_else(|| {
            ItemError::new(ErrorClass::NotFound, format!("{url} no longer exists"))
        })?;
        if e.etag.is_some()
            && head.etag.as_deref().map(bare_etag) != e.etag.as_deref().map(bare_etag)
        {
            return Err(ItemError::new(
                ErrorClass::SourceChanged,
                format!(
                    "{url} changed since it was listed (ETag {:?}, listed {:?})",
                    head.etag, e.etag
                ),
            ));
        }
        Ok(head.checksum)
    }

    /// Whether the source object's ETag is not an MD5 (it is encrypted with KMS or a
    /// customer key): asked only when a listed ETag disagrees with a copy's.
    async fn source_encrypted(&self, e: &Entry) -> Result<bool, ItemError> {
        Ok(self.src.head(&e.key).await?.is_some_and(|h| h.kms))
    }

    /// The part size that copies `e` with the source's own part boundaries, when that makes
    /// the copy's checksum comparable with the source's and nothing else would: the source
    /// stores a COMPOSITE checksum (the checksum of its part checksums, `-N`), which only a
    /// COMPOSITE upload of the same algorithm with the same parts reproduces. One
    /// GetObjectAttributes (ObjectParts; per 1,000 parts), asked only of sources whose
    /// listed ETag says multipart (`-N`). `None` (the copy uses its own parts, and the
    /// composite checksum is not compared) when the source has no composite checksum,
    /// lists no parts, or its parts cannot be reproduced ([`super::multipart::same_parts`]:
    /// not all of one size, or, streamed, bigger than `max_part`). A source changed since
    /// the listing is `SourceChanged`.
    pub async fn source_parts(&self, e: &Entry, max_part: u64) -> Result<Option<u64>, ItemError> {
        let listed_multipart = e
            .etag
            .as_deref()
            .and_then(|t| bare_etag(t).rsplit_once('-').map(|(_, n)| n.to_string()))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !listed_multipart {
            return Ok(None);
        }
        let url = self.src.url.object(&e.key);
        let a = self.src.object_parts(&e.key).await?;
        if a.etag.as_deref().map(bare_etag) != e.etag.as_deref().map(bare_etag) || a.size != e.size
        {
            return Err(ItemError::new(
                ErrorClass::SourceChanged,
                format!(
                    "{url} changed since it was listed ({} bytes, ETag {:?}; listed {} bytes, ETag {:?})",
                    a.size, a.etag, e.size, e.etag
                ),
            ));
        }
        let Some(sum) = a
            .checksum
            .filter(|c| !c.full() && c.algo != Algo::Crc64Nvme)
        else {
            return Ok(None);
        };
        let mut parts: Vec<(u32, u64)> = a.parts.iter().map(|p| (p.number, p.size)).collect();
        parts.sort();
        let numbered = parts
            .iter()
            .enumerate()
            .all(|(i, (n, _))| *n as usize == i + 1);
        let count_agrees = a.count.is_none_or(|n| n as usize == parts.len())
            && sum
                .composite_parts
                .is_none_or(|n| n == 0 || n as usize == parts.len());
        let sizes: Vec<u64> = parts.iter().map(|p| p.1).collect();
        let why = if !numbered || !count_agrees {
            Err(format!(
                "its part list ({} parts) does not match its part count ({:?}, checksum {sum})",
                parts.len(),
                a.count
            ))
        } else {
            super::multipart::same_parts(e.size, &sizes, max_part)
        };
        match why {
            Ok(p) => Ok(Some(p)),
            Err(why) => {
                tracing::info!(object = %url, checksum = %sum, reason = %why, "the source's composite checksum cannot be reproduced; copying with our own parts (checked by ETag, size and each part's checksum)");
                Ok(None)
            }
        }
    }

    /// How `e` moves ([`super::multipart::plan`]), and whether in the source's own parts:
    /// a source with a COMPOSITE checksum whose parts can be reproduced is copied in those
    /// parts, whatever its size ([`Transfer::source_parts`]), so the copy's checksum
    /// compares with it. When the source's parts cannot be read (an older role without
    /// s3:GetObjectAttributes, an S3-compatible store without the call) the copy goes on
    /// with its own parts, as before, and says so in the log; a source changed since the
    /// listing is `SourceChanged`.
    pub async fn plan(
        &self,
        e: &Entry,
        threshold: u64,
        preferred_part: u64,
        single_limit: u64,
        max_part: u64,
    ) -> Result<(super::multipart::Plan, bool), ItemError> {
        use super::multipart::{self, Plan};
        match self.source_parts(e, max_part).await {
            Ok(Some(part_size)) => {
                return Ok((
                    Plan::Multipart {
                        part_size,
                        parts: multipart::parts(e.size, part_size),
                    },
                    true,
                ));
            }
            Ok(None) => {}
            Err(x) if x.class == ErrorClass::SourceChanged => return Err(x),
            Err(x) => {
                tracing::warn!(object = %self.src.url.object(&e.key), error = %x.message, "cannot read the source's parts; copying with our own parts (a composite source checksum is not compared)");
            }
        }
        let plan =
            multipart::plan(e.size, threshold, preferred_part, single_limit).map_err(|p| {
                ItemError::new(
                    ErrorClass::BadInput,
                    format!("{}: {p}", self.src.url.object(&e.key)),
                )
            })?;
        Ok((plan, false))
    }

    /// Starts a multipart upload with the source's metadata (and tags), for the listed
    /// version only: a source whose ETag or size changed since the listing is
    /// `SourceChanged`. The upload's checksum follows the source's
    /// ([`UploadSum::for_source`]; `same_parts`: the parts are the source's, so a composite
    /// checksum can be reproduced). Returns the upload id and its checksum.
    pub async fn start_upload(
        &self,
        e: &Entry,
        same_parts: bool,
    ) -> Result<(String, UploadSum), ItemError> {
        let url = self.src.url.object(&e.key);
        let head = self.src.head(&e.key).await?.ok_or_else(|| {
            ItemError::new(ErrorClass::NotFound, format!("{url} no longer exists"))
        })?;
        if head.size != e.size
            || (e.etag.is_some()
                && head.etag.as_deref().map(bare_etag) != e.etag.as_deref().map(bare_etag))
        {
            return Err(ItemError::new(
                ErrorClass::SourceChanged,
                format!(
                    "{url} changed since it was listed ({} bytes, ETag {:?}; listed {} bytes, ETag {:?})",
                    head.size, head.etag, e.size, e.etag
                ),
            ));
        }
        let tagging = if self.tags {
            self.src.tagging(&e.key).await?
        } else {
            None
        };
        let sum = UploadSum::for_source(head.checksum.as_ref(), same_parts);
        let id = self
            .dst
            .create_upload(&e.key, &head.meta, tagging, self.opts, sum)
            .await?;
        Ok((id, sum))
    }

    /// The open multipart upload of this object: the one in the ledger when it was begun
    /// for the same size, source ETag and part size; otherwise a stale one is aborted and
    /// forgotten, a new one is started and recorded. When another worker records its
    /// upload first, ours is aborted and theirs is used.
    /// `same_parts`: the parts are the source's own ([`Transfer::source_parts`]).
    pub async fn open_upload(
        &self,
        ledger: &dyn UploadLedger,
        e: &Entry,
        part_size: u64,
        parts: u32,
        same_parts: bool,
    ) -> Result<Upload, ItemError> {
        let dest = self.dst.url.object(&e.key);
        let stale = match ledger.find(&dest).await.map_err(ledger_error)? {
            Some(u) if u.size == e.size && u.source_etag == e.etag && u.part_size == part_size => {
                return Ok(u);
            }
            stale => stale,
        };
        if let Some(old) = stale {
            // The source changed since that upload began: it can never complete.
            let _ = self
                .dst
                .abort_upload(&self.dst.url.key(&old.key), &old.upload_id)
                .await;
            ledger.finish(&old).await.map_err(ledger_error)?;
        }
        // The intent goes first: an upload a crash leaves unrecorded is still known as ours.
        ledger.intend(&dest).await.map_err(ledger_error)?;
        let (upload_id, checksum) = self.start_upload(e, same_parts).await?;
        let mine = Upload {
            dest,
            key: e.key.clone(),
            upload_id: upload_id.clone(),
            size: e.size,
            source_etag: e.etag.clone(),
            part_size,
            parts,
            started_at: chrono::Utc::now(),
            checksum,
            task: self.task.cloned(),
            run: self.run.map(str::to_string),
        };
        let open = ledger.begin(&mine).await.map_err(ledger_error)?;
        if open.upload_id != upload_id {
            let _ = self
                .dst
                .abort_upload(&self.dst.url.key(&e.key), &upload_id)
                .await;
        }
        Ok(open)
    }

    /// Moves one part of upload `u`. Returns its part tag ([`checksum::part_tag`]: the
    /// ETag and the checksum S3 stored for it in the upload's algorithm), what the upload
    /// ledger keeps.
    pub async fn part(&self, e: &Entry, u: &Upload, p: &Part) -> Result<String, ItemError> {
        Ok(self.part_read(e, u, p).await?.0)
    }

    /// Moves one part. Returns its ETag and, when the bytes came through here (stream), the
    /// CRC32 of what was read, so the parts can be checked together against the source's
    /// stored full-object CRC32 before the upload is completed.
    pub async fn part_read(
        &self,
        e: &Entry,
        u: &Upload,
        p: &Part,
    ) -> Result<(String, Option<crc32fast::Hasher>), ItemError> {
        let (upload_id, algo) = (u.upload_id.as_str(), u.checksum.algo);
        match self.mode {
            Mode::Server => {
                let (etag, crc) = self
                    .dst
                    .copy_part(
                        &e.key,
                        upload_id,
                        p.number,
                        p.range(),
                        self.src,
                        e.etag.as_deref(),
                        algo,
                    )
                    .await?;
                Ok((
                    checksum::part_tag(&etag, crc.as_deref().map(|c| (algo, c))),
                    None,
                ))
            }
            Mode::Stream => {
                let body = self
                    .src
                    .get(
                        &e.key,
                        Some(p.range()),
                        e.etag.as_deref(),
                        p.len,
                        self.bwlimit,
                    )
                    .await?
                    .body;
                if body.len() as u64 != p.len {
                    return Err(mismatch(format!(
                        "{}: part {} read {} bytes, expected {}",
                        self.src.url.object(&e.key),
                        p.number,
                        body.len(),
                        p.len
                    )));
                }
                let md5 = md5_of(&body);
                let crc = algo.compute(&body);
                let mut crc32 = crc32fast::Hasher::new();
                crc32.update(&body);
                let (etag, encrypted, stored) = self
                    .dst
                    .upload_part(&e.key, upload_id, p.number, body, &md5, (algo, &crc))
                    .await?;
                if let Some(got) = &stored
                    && *got != crc
                {
                    return Err(mismatch(format!(
                        "part {} of {}: {} {got} stored, {crc} sent",
                        p.number,
                        self.dst.url.object(&e.key),
                        algo.name()
                    )));
                }
                // S3 checked the part against its Content-MD5; an MD5 ETag must say the same.
                if !encrypted && is_md5_etag(&etag) && etag != hex::encode(md5) {
                    return Err(mismatch(format!(
                        "part {} of {}: ETag {etag}, MD5 sent {}",
                        p.number,
                        self.dst.url.object(&e.key),
                        hex::encode(md5)
                    )));
                }
                Ok((checksum::part_tag(&etag, Some((algo, &crc))), Some(crc32)))
            }
        }
    }

    /// Before completing a streamed upload: the CRC32 of every part read, in order, must be
    /// the source's stored full-object CRC32 (S3 and the SDK keep one for most objects
    /// written in one PUT). This is what catches a byte changed on the way in a part of a
    /// source whose ETag (the MD5 of the whole) cannot be checked from parts. `Ok` when
    /// the source has no full-object CRC32 or a part's CRC is not known (read by an
    /// earlier run).
    pub async fn check_parts_crc(
        &self,
        e: &Entry,
        crcs: &std::collections::HashMap<u32, crc32fast::Hasher>,
        parts: u32,
    ) -> Result<(), ItemError> {
        if self.mode != Mode::Stream || (1..=parts).any(|n| !crcs.contains_key(&n)) {
            return Ok(());
        }
        let Some(head) = self.src.head(&e.key).await? else {
            return Ok(());
        };
        // A composite checksum of a source written in parts ends in -N: not the whole's.
        let Some(stored) = head.checksums[0].as_deref().filter(|c| !c.contains('-')) else {
            return Ok(());
        };
        use base64::Engine as _;
        let Some(want) = base64::engine::general_purpose::STANDARD
            .decode(stored)
            .ok()
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
        else {
            return Ok(());
        };
        let mut whole = crc32fast::Hasher::new();
        for n in 1..=parts {
            whole.combine(&crcs[&n]);
        }
        let got = whole.finalize();
        if got != want {
            return Err(mismatch(format!(
                "{}: the parts read have CRC32 {got:08x}, the source's stored CRC32 is {want:08x}",
                self.src.url.object(&e.key)
            )));
        }
        Ok(())
    }

    /// Completes upload `u` from its finished parts (all of them, any order) and verifies
    /// the object by the upload's checksum ([`Upload::checksum`]): FULL_OBJECT, the parts'
    /// checksums combined into the whole object's (sent, so S3 checks it); COMPOSITE, the
    /// checksum of the part checksums. Before anything is completed it must equal the
    /// source's stored checksum of the same algorithm and kind, and afterwards what S3
    /// reports. Returns the destination ETag.
    pub async fn complete(
        &self,
        e: &Entry,
        u: &Upload,
        mut parts: Vec<(u32, String)>,
    ) -> Result<Option<String>, ItemError> {
        let (upload_id, expected, part_size, sum) =
            (u.upload_id.as_str(), u.parts, u.part_size, u.checksum);
        parts.sort();
        parts.dedup_by_key(|p| p.0);
        let numbers: Vec<u32> = parts.iter().map(|p| p.0).collect();
        if numbers != (1..=expected).collect::<Vec<_>>() {
            return Err(ItemError::new(
                ErrorClass::Retryable,
                format!(
                    "{}: {} of {expected} parts done",
                    self.dst.url.object(&e.key),
                    parts.len()
                ),
            ));
        }
        let dest_url = self.dst.url.object(&e.key);
        let tags: Vec<(u32, &str, Option<&str>)> = parts
            .iter()
            .map(|(n, t)| {
                let (etag, c) = checksum::parse_part_tag(t);
                (*n, etag, c.filter(|(a, _)| *a == sum.algo).map(|(_, v)| v))
            })
            .collect();
        let lens = super::multipart::parts(e.size, part_size);
        // What the whole object's checksum must be, from the parts.
        let want: Option<Checksum> = if sum.composite {
            checksum::composite(sum.algo, &tags.iter().map(|t| t.2).collect::<Vec<_>>()).map(
                |value| Checksum {
                    algo: sum.algo,
                    value,
                    composite_parts: Some(expected),
                },
            )
        } else {
            (lens.len() == tags.len())
                .then(|| {
                    checksum::combine(
                        sum.algo,
                        &tags
                            .iter()
                            .zip(&lens)
                            .map(|((_, _, c), p)| (*c, p.len))
                            .collect::<Vec<_>>(),
                    )
                })
                .flatten()
                .map(|value| Checksum {
                    algo: sum.algo,
                    value,
                    composite_parts: None,
                })
        };
        // Before anything is completed: the parts must add up to the source's checksum of
        // the same algorithm and kind when it stores one (asked of the source now; the
        // copy is of the listed version, so a source changed since is not compared). A
        // mismatch completes nothing, so no wrong object ever appears at the destination.
        if let Some(want) = &want
            && let Some(h) = self.src.head(&e.key).await?
            && (e.etag.is_none()
                || h.etag.as_deref().map(bare_etag) == e.etag.as_deref().map(bare_etag))
            && let Some(source) = &h.checksum
        {
            compare_sums(&dest_url, "from the parts", want, source)?;
        }
        let full = want.as_ref().filter(|w| w.full()).map(|w| w.value.as_str());
        let (etag, encrypted, stored) = match self
            .dst
            .complete_upload(&e.key, upload_id, &tags, sum.algo, full)
            .await
        {
            Ok(w) => (w.etag, w.encrypted, w.checksum),
            // The answer was lost or unreadable: the upload may have completed. What the
            // destination holds decides (the checks below), so a retry is not needed.
            Err(err) if err.class == ErrorClass::Retryable => match self.dst.head(&e.key).await? {
                Some(h)
                    if h.size == e.size
                        && h.etag
                            .as_deref()
                            .is_some_and(|t| t.ends_with(&format!("-{expected}"))) =>
                {
                    tracing::warn!(object = %dest_url, error = %crate::retry::clip(&err.message, 160), "completing answered badly; the object is there, checking it");
                    let stored = h.checksums[sum.algo as usize].clone();
                    (h.etag, h.kms, stored)
                }
                _ => return Err(err),
            },
            Err(err) => return Err(err),
        };
        // Part ETags are their MD5s (not encrypted with KMS or a customer key): the
        // object's ETag must be their multipart ETag.
        let md5s: Option<Vec<[u8; 16]>> = tags
            .iter()
            .map(|(_, t, _)| {
                hex::decode(t)
                    .ok()
                    .and_then(|v| <[u8; 16]>::try_from(v).ok())
            })
            .collect();
        if !encrypted && let (Some(md5s), Some(got)) = (md5s, &etag) {
            let want = multipart_etag(&md5s);
            if *got != want {
                return Err(mismatch(format!(
                    "{dest_url}: ETag {got} after completing, expected {want} from the parts"
                )));
            }
            // Same layout as the source (same part count): the ETags must agree too,
            // unless the source's ETags are not MD5s (encrypted; asked only then).
            if let Some(src) = &e.etag
                && src.ends_with(&format!("-{expected}"))
                && bare_etag(src) != *got
                && !self.source_encrypted(e).await?
            {
                return Err(mismatch(format!(
                    "{dest_url}: ETag {got}, source ETag {src} with the same part count"
                )));
            }
        }
        // The whole object's checksum S3 reports is what the parts add up to.
        if let Some(want) = &want
            && let Some(got) = stored.as_deref().and_then(|v| answer_sum(sum.algo, v))
        {
            compare_sums(&dest_url, "after completing", &got, want)?;
        }
        self.verify_size(e).await?;
        Ok(etag)
    }

    /// The destination object exists with the source's size.
    async fn verify_size(&self, e: &Entry) -> Result<(), ItemError> {
        let dest_url = self.dst.url.object(&e.key);
        match self.dst.head(&e.key).await? {
            None => Err(mismatch(format!("{dest_url} is missing after the copy"))),
            Some(h) if h.size != e.size => Err(mismatch(format!(
                "{dest_url} has {} bytes after the copy, the source {}",
                h.size, e.size
            ))),
            Some(_) => Ok(()),
        }
    }
}

/// Compares the checksum S3 reported (`got`, base64 in `algo`) with `want`, when `want` is
/// a full-object checksum of the same algorithm (a composite checksum is of the part
/// layout, not the bytes: never compared with a full-object one). `Ok(true)` when they
/// agree, `Ok(false)` when there is nothing to compare, `DigestMismatch` otherwise.
fn compare_checksums(
    url: &str,
    when: &str,
    algo: Algo,
    got: Option<&str>,
    want: Option<&Checksum>,
) -> Result<bool, ItemError> {
    let (Some(got), Some(want)) = (got, want) else {
        return Ok(false);
    };
    if want.algo != algo || !want.full() {
        return Ok(false);
    }
    if got != want.value {
        return Err(mismatch(format!(
            "{url}: {} {got} {when}, expected {}",
            algo.name(),
            want.value
        )));
    }
    Ok(true)
}

/// A checksum of `algo` as an answer gives it (`value`, or `value-N` when COMPOSITE).
fn answer_sum(algo: Algo, raw: &str) -> Option<Checksum> {
    let mut values: [Option<String>; 5] = Default::default();
    values[algo as usize] = Some(raw.to_string());
    checksum::from_answer(&values, None)
}

/// Compares two stored checksums when they are of the same algorithm and kind (both
/// full-object, or both COMPOSITE: then the part counts must agree too, when known).
/// `Ok(true)` when they agree, `Ok(false)` when they cannot be compared, `DigestMismatch`
/// otherwise.
fn compare_sums(url: &str, when: &str, got: &Checksum, want: &Checksum) -> Result<bool, ItemError> {
    if got.algo != want.algo || got.full() != want.full() {
        return Ok(false);
    }
    let parts_differ = matches!(
        (got.composite_parts, want.composite_parts),
        (Some(a), Some(b)) if a != 0 && b != 0 && a != b
    );
    if got.value != want.value || parts_differ {
        return Err(mismatch(format!("{url}: {got} {when}, expected {want}")));
    }
    Ok(true)
}

/// The bytes read from the source are what the source says it holds.
fn check_read(
    url: &str,
    got: u64,
    want: u64,
    md5: &[u8; 16],
    src_etag: Option<&str>,
) -> Result<(), ItemError> {
    if got != want {
        return Err(mismatch(format!(
            "{url}: read {got} bytes, expected {want}"
        )));
    }
    if let Some(t) = src_etag
        && is_md5_etag(t)
        && bare_etag(t) != hex::encode(md5)
    {
        return Err(mismatch(format!(
            "{url}: the bytes read have MD5 {}, the source ETag is {}",
            hex::encode(md5),
            bare_etag(t)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flipped_byte_is_caught_against_the_source_etag() {
        let good = b"hello world".to_vec();
        let etag = hex::encode(md5_of(&good));
        assert!(check_read("s3://b/k", 11, 11, &md5_of(&good), Some(&etag)).is_ok());
        let mut bad = good.clone();
        bad[3] ^= 1;
        let e = check_read(
            "s3://b/k",
            11,
            11,
            &md5_of(&bad),
            Some(&format!("\"{etag}\"")),
        )
        .unwrap_err();
        assert_eq!(e.class, ErrorClass::DigestMismatch);
        assert!(
            e.message.contains("s3://b/k") && e.message.contains(&etag),
            "{}",
            e.message
        );
        let short = check_read("s3://b/k", 10, 11, &md5_of(&good), None).unwrap_err();
        assert!(short.message.contains("read 10 bytes, expected 11"));
        // A multipart ETag says nothing about the whole object's MD5.
        assert!(check_read("s3://b/k", 11, 11, &md5_of(&bad), Some("abc-2")).is_ok());
    }
}
