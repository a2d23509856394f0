//! The object engine: keep an S3 bucket (or prefix) in sync with another bucket, in
//! another region, account or partition, or an S3-compatible store.
//!
//! Pure parts — [`url`], [`filter`] (what to copy: globs, sizes, ages), [`prefixes`]
//! (the prefix list), [`diff`] (streaming merge of sorted listings, external sort for
//! stores that do not list in order), [`multipart`] (part plan) — decide. [`bandwidth`] (the `--bwlimit` token bucket). Edges —
//! [`bucket`] (every S3 call), [`uploads`] (ledger of open multipart uploads, SQLite or
//! DynamoDB) — act. [`transfer`] moves and verifies one object or part; [`run`] is the
//! one-machine pipeline, and [`deletes`] guards its delete step (`--delete`,
//! `--max-delete`, `--backup-prefix`); [`jobs`] and [`events`] are the messages of the AWS suite.

pub mod bandwidth;
pub mod bucket;
pub mod checksum;
pub mod deletes;
pub mod diff;
#[cfg(feature = "aws")]
pub mod events;
pub mod filter;
#[cfg(feature = "aws")]
pub mod jobs;
pub mod multipart;
pub mod prefixes;
pub mod run;
#[cfg(feature = "aws")]
pub mod suite;
pub mod transfer;
pub mod uploads;
pub mod url;
