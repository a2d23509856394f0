//! Moving one object, or one part of it, and checking what arrived. Server-side
//! (`CopyObject` / `UploadPartCopy`) when one client can read the source and write the
//! destination; otherwise GET → PUT with the bytes held in memory one part at a time
//! (memory = part size × parts in flight, never the object size).
//!
//! Every PUT and part carries Content-MD5. Bytes read from the source are checked against
//! the source's ETag when that ETag is an MD5 (single-part, not KMS); the destination is
//! checked afterwards (size, and ETag = MD5 or the multipart ETag of the part MD5s). A
//! mismatch is a `DigestMismatch` failure and the object is never recorded as copied.

use super::bucket::{Bucket, DestOptions, bare_etag, is_md5_etag};
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
                let (etag, dest_encrypted) = self
                    .dst
                    .copy_from(&e.key, self.src, e.etag.as_deref(), self.opts, self.tags)
                    .await?;
                let mut proven = false;
                if !dest_encrypted
                    && let (Some(src), Some(got)) = (&e.etag, &etag)
                    && is_md5_etag(src)
                {
                    if bare_etag(src) == *got {
                        // The copy's MD5 is the listed object's MD5: same bytes, same size.
                        proven = true;
                    } else if !self.source_encrypted(e).await? {
                        return Err(mismatch(format!(
                            "{dest_url}: ETag {got} after the copy, source ETag {src}"
                        )));
                    }
                }
                (etag, proven)
            }
            Mode::Stream => {
                let (body, meta, src_etag, src_encrypted) = self
                    .src
                    .get(&e.key, None, e.etag.as_deref(), e.size)
                    .await?;
                let md5 = md5_of(&body);
                let src_etag = src_etag.or_else(|| e.etag.clone());
                check_read(
                    &self.src.url.object(&e.key),
                    body.len() as u64,
                    e.size,
                    &md5,
                    src_etag.as_deref().filter(|_| !src_encrypted),
                )?;
                let tagging = if self.tags {
                    self.src.tagging(&e.key).await?
                } else {
                    None
                };
                let (etag, dest_encrypted) = self
                    .dst
                    .put(&e.key, body, &md5, &meta, tagging, self.opts)
                    .await?;
                let mut proven = false;
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

    /// Whether the source object's ETag is not an MD5 (it is encrypted with KMS or a
    /// customer key): asked only when a listed ETag disagrees with a copy's.
    async fn source_encrypted(&self, e: &Entry) -> Result<bool, ItemError> {
        Ok(self.src.head(&e.key).await?.is_some_and(|h| h.kms))
    }

    /// Starts a multipart upload with the source's metadata (and tags), for the listed
    /// version only: a source whose ETag or size changed since the listing is
    /// `SourceChanged`.
    pub async fn start_upload(&self, e: &Entry) -> Result<String, ItemError> {
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
        self.dst
            .create_upload(&e.key, &head.meta, tagging, self.opts)
            .await
    }

    /// The open multipart upload of this object: the one in the ledger when it was begun
    /// for the same size, source ETag and part size; otherwise a stale one is aborted and
    /// forgotten, a new one is started and recorded. When another worker records its
    /// upload first, ours is aborted and theirs is used.
    pub async fn open_upload(
        &self,
        ledger: &dyn UploadLedger,
        e: &Entry,
        part_size: u64,
        parts: u32,
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
        let upload_id = self.start_upload(e).await?;
        let mine = Upload {
            dest,
            key: e.key.clone(),
            upload_id: upload_id.clone(),
            size: e.size,
            source_etag: e.etag.clone(),
            part_size,
            parts,
            started_at: chrono::Utc::now(),
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

    /// Moves one part. Returns its ETag.
    pub async fn part(&self, e: &Entry, upload_id: &str, p: &Part) -> Result<String, ItemError> {
        Ok(self.part_read(e, upload_id, p).await?.0)
    }

    /// Moves one part. Returns its ETag and, when the bytes came through here (stream), the
    /// CRC32 of what was read, so the parts can be checked together against the source's
    /// stored full-object CRC32 before the upload is completed.
    pub async fn part_read(
        &self,
        e: &Entry,
        upload_id: &str,
        p: &Part,
    ) -> Result<(String, Option<crc32fast::Hasher>), ItemError> {
        match self.mode {
            Mode::Server => self
                .dst
                .copy_part(
                    &e.key,
                    upload_id,
                    p.number,
                    p.range(),
                    self.src,
                    e.etag.as_deref(),
                )
                .await
                .map(|etag| (etag, None)),
            Mode::Stream => {
                let (body, _, _, _) = self
                    .src
                    .get(&e.key, Some(p.range()), e.etag.as_deref(), p.len)
                    .await?;
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
                let mut crc = crc32fast::Hasher::new();
                crc.update(&body);
                let (etag, encrypted) = self
                    .dst
                    .upload_part(&e.key, upload_id, p.number, body, &md5)
                    .await?;
                // S3 checked the part against its Content-MD5; an MD5 ETag must say the same.
                if !encrypted && is_md5_etag(&etag) && etag != hex::encode(md5) {
                    return Err(mismatch(format!(
                        "part {} of {}: ETag {etag}, MD5 sent {}",
                        p.number,
                        self.dst.url.object(&e.key),
                        hex::encode(md5)
                    )));
                }
                Ok((etag, Some(crc)))
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

    /// Completes an upload from its finished parts (all of them, any order) and verifies
    /// the object. Returns the destination ETag.
    pub async fn complete(
        &self,
        e: &Entry,
        upload_id: &str,
        mut parts: Vec<(u32, String)>,
        expected: u32,
    ) -> Result<Option<String>, ItemError> {
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
        let (etag, encrypted) = match self.dst.complete_upload(&e.key, upload_id, &parts).await {
            Ok(done) => done,
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
                    (h.etag, h.kms)
                }
                _ => return Err(err),
            },
            Err(err) => return Err(err),
        };
        // Part ETags are their MD5s (not encrypted with KMS or a customer key): the
        // object's ETag must be their multipart ETag.
        let md5s: Option<Vec<[u8; 16]>> = parts
            .iter()
            .map(|(_, t)| {
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
