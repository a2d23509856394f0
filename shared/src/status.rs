//! The status store: one record per run and per image (source, destination, digests,
//! status, attempts, error, times). [`StatusStore`] is the edge; [`SqliteStore`] keeps it
//! in an embedded SQLite file on one machine (DynamoDB comes with the AWS suite).
//!
//! Writes are conditional: an item record carries a `version`, and a write whose version
//! is not newer than the stored one is ignored, so a late or duplicated write never
//! overwrites a newer result.

#[cfg(feature = "aws")]
pub mod dynamodb;

use crate::retry::{ErrorClass, ItemError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Mutex;

/// Where an image stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Planned,
    Skipped,
    Copied,
    Failed,
    /// The destination tag holds another image and was left alone (`--no-overwrite`, or an
    /// ECR repository with immutable tags): neither copied nor failed.
    Conflict,
    /// An object: a destination object missing at the source, removed (`--delete`), or
    /// moved to the backup prefix (the record's `dest`). On a dry run: would be deleted.
    Deleted,
    /// An object in GLACIER or DEEP_ARCHIVE, not restored: left for now (`--restore-days`
    /// asks for a restore).
    Archived,
    /// An archived object whose restore is under way: a later run copies it.
    Restoring,
    /// An image whose source digest was first seen less than `--min-age` ago (the
    /// supply-chain cooldown): left for now, neither copied nor failed; the record's
    /// `waiting_until` says when a run copies it.
    Waiting,
    /// An image left for the next run because the source registry's pull quota (Docker
    /// Hub's) would run out: neither copied nor failed.
    Deferred,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Planned => "planned",
            Status::Skipped => "skipped",
            Status::Copied => "copied",
            Status::Failed => "failed",
            Status::Conflict => "conflict",
            Status::Deleted => "deleted",
            Status::Archived => "archived",
            Status::Restoring => "restoring",
            Status::Waiting => "waiting",
            Status::Deferred => "deferred",
        }
    }
    pub fn from_name(s: &str) -> Option<Self> {
        [
            Status::Planned,
            Status::Skipped,
            Status::Copied,
            Status::Failed,
            Status::Conflict,
            Status::Deleted,
            Status::Archived,
            Status::Restoring,
            Status::Waiting,
            Status::Deferred,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }
}

/// The record of one image in one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRecord {
    #[serde(skip_serializing)]
    #[serde(default)]
    pub run_id: String,
    pub source: String,
    pub dest: String,
    pub status: Status,
    pub source_digest: Option<String>,
    pub dest_digest: Option<String>,
    pub attempts: u32,
    pub error: Option<ItemError>,
    pub bytes: u64,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// Write order: a write is applied only when its version is higher than the stored one.
    #[serde(skip)]
    pub version: u64,
    /// For a selection-list line that could not be read: its line number (`null` otherwise).
    #[serde(default)]
    pub line: Option<u32>,
    /// For an object whose multipart upload an earlier, interrupted run began: the parts
    /// this run found finished and did not send again (`null` otherwise).
    #[serde(default)]
    pub resumed: Option<Resumed>,
    /// For a `waiting` image: when its source digest will have been seen for `--min-age`
    /// (`null` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_until: Option<DateTime<Utc>>,
    /// On a dry run of images: why the plan took this image and what it does with it, e.g.
    /// "listed by ALL_TAGS, kept by --newest 3; missing at the destination". Not stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What a run reused of an upload an earlier run began: `parts` of `of` parts, `bytes`
/// long. Those bytes are not in the run's `bytes` (it counts what this run moved).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resumed {
    pub parts: u32,
    pub of: u32,
    pub bytes: u64,
}

impl Resumed {
    /// "resumed 8 of 16 parts of big.bin", for the object named `what`.
    pub fn describe(&self, what: &str) -> String {
        format!("resumed {} of {} parts of {what}", self.parts, self.of)
    }
}

/// The list line an item stands for, when it is a bad selection-list line (its source is
/// written `line N: TEXT`).
pub fn list_line(source: &str) -> Option<u32> {
    source
        .strip_prefix("line ")?
        .split_once(':')?
        .0
        .parse()
        .ok()
}

/// What a run moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    #[default]
    Images,
    Objects,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Images => "images",
            RunKind::Objects => "objects",
        }
    }
    /// The kind of a stored name; a record from before kinds were kept is told by its
    /// source (`s3://…` is objects).
    pub fn from_name(s: Option<&str>, source: &str) -> Self {
        match s {
            Some("objects") => RunKind::Objects,
            Some("images") => RunKind::Images,
            _ if source.starts_with("s3://") => RunKind::Objects,
            _ => RunKind::Images,
        }
    }
}

/// How a run ended (or that it has not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunResult {
    /// Started and not finished (or killed: nothing closed the record).
    #[default]
    Running,
    /// Every item is in sync.
    Succeeded,
    /// Some item failed, or the run could not go on (`error` says why).
    Failed,
    /// Stopped by a signal; a re-run copies what is missing.
    Interrupted,
}

impl RunResult {
    pub fn as_str(self) -> &'static str {
        match self {
            RunResult::Running => "running",
            RunResult::Succeeded => "succeeded",
            RunResult::Failed => "failed",
            RunResult::Interrupted => "interrupted",
        }
    }
    /// A stored name; a record from before results were kept is told by its end.
    pub fn from_name(s: Option<&str>, ended: bool, failed: u64) -> Self {
        match s {
            // A writer that closes the record without a result (older code) leaves
            // "running": its end and counts say how it went.
            Some("running") if !ended => RunResult::Running,
            Some("succeeded") => RunResult::Succeeded,
            Some("failed") => RunResult::Failed,
            Some("interrupted") => RunResult::Interrupted,
            _ if !ended => RunResult::Running,
            _ if failed > 0 => RunResult::Failed,
            _ => RunResult::Succeeded,
        }
    }
}

/// The record of a run, with its counts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    /// Images or objects.
    #[serde(default)]
    pub kind: RunKind,
    /// Running, succeeded, failed or interrupted.
    #[serde(default)]
    pub result: RunResult,
    /// Why the run as a whole failed (a setup check, a listing), when it did.
    #[serde(default)]
    pub error: Option<String>,
    pub source: String,
    pub dest: String,
    pub dry_run: bool,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub copied: u64,
    pub skipped: u64,
    pub failed: u64,
    pub bytes: u64,
    /// On a dry run: the items that would be copied (dry runs are never stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_copy: Option<u64>,
    /// Source objects the run's filters left out (neither copied nor deleted; objects).
    #[serde(default)]
    pub filtered: u64,
    /// Images whose destination tag holds another image and was left alone (`conflict`).
    #[serde(default)]
    pub conflicts: u64,
    /// Destination objects missing at the source that the run deleted (or moved to the
    /// backup prefix) with `--delete`; on a dry run, those it would delete.
    #[serde(default)]
    pub deleted: u64,
    /// Archived source objects (GLACIER, DEEP_ARCHIVE) not restored, left for now.
    #[serde(default)]
    pub archived: u64,
    /// Archived source objects whose restore is under way (asked by this run or before).
    #[serde(default)]
    pub restoring: u64,
    /// Images whose source digest is younger than `--min-age`, left for a later run.
    #[serde(default)]
    pub waiting: u64,
    /// Images left for the next run: the source's pull quota would have run out.
    #[serde(default)]
    pub deferred: u64,
}

/// Status store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state file {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("state store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("status store: {0}")]
    Remote(String),
}

/// Where results are kept.
#[async_trait]
pub trait StatusStore: Send + Sync {
    /// Creates or replaces the run record.
    async fn put_run(&self, run: &RunRecord) -> Result<(), StoreError>;
    /// Writes an item if its version is newer than the stored one; returns whether it was applied.
    async fn put_item(&self, item: &ItemRecord) -> Result<bool, StoreError>;
    /// A run and its items; the latest run when `run_id` is `None`.
    async fn get_run(
        &self,
        run_id: Option<&str>,
    ) -> Result<Option<(RunRecord, Vec<ItemRecord>)>, StoreError>;
    /// Recent runs, newest first.
    async fn list_runs(&self, limit: usize) -> Result<Vec<RunRecord>, StoreError>;
    /// Marks the run as notified; true only for the first caller (one message per run).
    async fn claim_notification(&self, run_id: &str) -> Result<bool, StoreError>;
    /// Whether the run was marked notified (a message about it went out).
    async fn is_notified(&self, run_id: &str) -> Result<bool, StoreError>;
    /// Marks an existing run record as a run of `task` (the AWS functions, whose run
    /// record is where the console finds a task's runs). On one machine the task store
    /// links runs itself (`TaskStore::note_run`), so by default this does nothing.
    async fn note_task(&self, _run_id: &str, _task: &str) -> Result<(), StoreError> {
        Ok(())
    }
    /// When the image `digest` was first seen at the source repository `repo` (for
    /// `--min-age`): the time the first run that saw it recorded. When no run has, `now` is
    /// recorded and returned; with `record` false (a dry run keeps no state) nothing is
    /// written and `now` is returned.
    async fn first_seen(
        &self,
        repo: &str,
        digest: &str,
        now: DateTime<Utc>,
        record: bool,
    ) -> Result<DateTime<Utc>, StoreError>;
}

/// SQLite-backed store for one machine.
pub struct SqliteStore {
    pub(crate) conn: Mutex<rusqlite::Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
  run_id TEXT PRIMARY KEY, source TEXT NOT NULL, dest TEXT NOT NULL, dry_run INTEGER NOT NULL,
  started_at TEXT NOT NULL, ended_at TEXT, copied INTEGER NOT NULL, skipped INTEGER NOT NULL,
  failed INTEGER NOT NULL, bytes INTEGER NOT NULL, notified INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS items (
  run_id TEXT NOT NULL, source TEXT NOT NULL, dest TEXT NOT NULL, status TEXT NOT NULL,
  source_digest TEXT, dest_digest TEXT, attempts INTEGER NOT NULL, error_class TEXT, error_message TEXT,
  bytes INTEGER NOT NULL, started_at TEXT, ended_at TEXT, version INTEGER NOT NULL,
  PRIMARY KEY (run_id, source, dest));
CREATE TABLE IF NOT EXISTS uploads (
  dest TEXT PRIMARY KEY, key TEXT NOT NULL, upload_id TEXT NOT NULL, size INTEGER NOT NULL,
  source_etag TEXT, part_size INTEGER NOT NULL, parts INTEGER NOT NULL, started_at TEXT NOT NULL,
  checksum TEXT);
CREATE TABLE IF NOT EXISTS parts (
  upload_id TEXT NOT NULL, number INTEGER NOT NULL, etag TEXT NOT NULL, PRIMARY KEY (upload_id, number));
CREATE TABLE IF NOT EXISTS intents (dest TEXT PRIMARY KEY, at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS seen (
  repo TEXT NOT NULL, digest TEXT NOT NULL, at TEXT NOT NULL, PRIMARY KEY (repo, digest));
CREATE TABLE IF NOT EXISTS verified (
  dest TEXT PRIMARY KEY, source_etag TEXT NOT NULL, dest_etag TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
  name TEXT PRIMARY KEY, spec TEXT NOT NULL, schedule TEXT, enabled INTEGER NOT NULL,
  created_at TEXT NOT NULL, updated_at TEXT NOT NULL, last_scheduled TEXT);
CREATE TABLE IF NOT EXISTS task_runs (
  run_id TEXT PRIMARY KEY, task TEXT NOT NULL, started_at TEXT NOT NULL);
DROP INDEX IF EXISTS task_runs_by_task;
CREATE INDEX IF NOT EXISTS task_runs_by_task_run ON task_runs (task, started_at, run_id);
CREATE INDEX IF NOT EXISTS items_failed ON items (run_id, source, dest) WHERE status = 'failed';
";

impl SqliteStore {
    /// Opens (creating if needed) the state file, with its parent directory.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| open_err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        }
        let conn = rusqlite::Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        migrate(&conn).map_err(open_err)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    /// An in-memory store (for dry runs and tests).
    pub fn in_memory() -> Result<Self, StoreError> {
        let conn = rusqlite::Connection::open_in_memory()?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }
}

/// Brings a state file written by an older version up to the schema: columns added since,
/// NULL in old rows (an upload's checksum reads as what those uploads used; a run's kind,
/// result and error as unknown).
fn migrate(c: &rusqlite::Connection) -> rusqlite::Result<()> {
    let columns = |table: &str| -> rusqlite::Result<Vec<String>> {
        c.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?
            .query_map([], |r| r.get(0))?
            .collect()
    };
    for (table, col) in [
        ("uploads", "checksum"),
        ("runs", "kind"),
        ("runs", "result"),
        ("runs", "error"),
        // Added as TEXT (SQLite keeps the pid as its text): read with CAST.
        ("runs", "pid"),
        ("runs", "pid_started"),
        ("runs", "host"),
        ("items", "resumed"),
        ("items", "waiting_until"),
    ] {
        if !columns(table)?.iter().any(|h| h == col) {
            c.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {col} TEXT"))?;
        }
    }
    for col in [
        "filtered",
        "conflicts",
        "deleted",
        "archived",
        "restoring",
        "waiting",
        "deferred",
    ] {
        if !columns("runs")?.iter().any(|h| h == col) {
            c.execute_batch(&format!("ALTER TABLE runs ADD COLUMN {col} INTEGER"))?;
        }
    }
    Ok(())
}

fn ts(t: &Option<DateTime<Utc>>) -> Option<String> {
    t.map(|t| t.to_rfc3339())
}
fn parse_ts(s: Option<String>) -> Option<DateTime<Utc>> {
    s.and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// A run record from a row of [`RUN_COLS`] (in that order, with or without a table alias).
pub(crate) fn run_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
    let source: String = r.get(1)?;
    let ended_at = parse_ts(r.get(5)?);
    let failed: u64 = r.get(8)?;
    Ok(RunRecord {
        run_id: r.get(0)?,
        kind: RunKind::from_name(r.get::<_, Option<String>>(10)?.as_deref(), &source),
        result: RunResult::from_name(
            r.get::<_, Option<String>>(11)?.as_deref(),
            ended_at.is_some(),
            failed,
        ),
        error: r.get(12)?,
        to_copy: None,
        filtered: r.get::<_, Option<u64>>(13)?.unwrap_or(0),
        conflicts: r.get::<_, Option<u64>>(14)?.unwrap_or(0),
        deleted: r.get::<_, Option<u64>>(15)?.unwrap_or(0),
        archived: r.get::<_, Option<u64>>(16)?.unwrap_or(0),
        restoring: r.get::<_, Option<u64>>(17)?.unwrap_or(0),
        waiting: r.get::<_, Option<u64>>(18)?.unwrap_or(0),
        deferred: r.get::<_, Option<u64>>(19)?.unwrap_or(0),
        source,
        dest: r.get(2)?,
        dry_run: r.get(3)?,
        started_at: parse_ts(r.get(4)?).unwrap_or_default(),
        ended_at,
        copied: r.get(6)?,
        skipped: r.get(7)?,
        failed,
        bytes: r.get(9)?,
    })
}

const RUN_COLS: &str = "run_id, source, dest, dry_run, started_at, ended_at, copied, skipped, failed, bytes, kind, result, error, filtered, conflicts, deleted, archived, restoring, waiting, deferred";

/// The error of a run whose process ended without closing its record.
pub const ABANDONED: &str = "the process ended without recording a result (killed?)";

/// This machine's name, as runs record where they run.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// When process `pid` started (clock ticks after boot, field 22 of `/proc/PID/stat`): with
/// the pid, it names one process, as a pid alone does not once pids are reused.
fn process_started(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19).map(str::to_string)
}

/// Whether the process that recorded a run (`pid` started at `started` on `host`) is gone.
/// `None` when this machine cannot tell: another host, or processes of other users hidden
/// (`/proc` mounted with `hidepid`, so pid 1 is not seen).
fn process_gone(pid: u32, started: &str, host: &str) -> Option<bool> {
    if host != host_name() || process_started(1).is_none() {
        return None;
    }
    Some(process_started(pid).as_deref() != Some(started))
}

impl SqliteStore {
    /// Marks `interrupted` the runs still `running` whose process is gone (SIGKILL, a
    /// power cut: nothing closed their record), with [`ABANDONED`] as their error and the
    /// counts of the items they recorded. A run whose process lives (in another process
    /// on this machine) or that was recorded elsewhere is left alone. Returns the runs marked.
    pub fn mark_abandoned_runs(&self) -> Result<Vec<String>, StoreError> {
        let c = self.conn.lock().unwrap();
        let rows: Vec<(String, i64, String, String)> = c
            .prepare(
                "SELECT run_id, CAST(pid AS INTEGER), pid_started, COALESCE(host, '') FROM runs
                 WHERE result = 'running' AND pid IS NOT NULL AND pid_started IS NOT NULL",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?;
        let mut marked = Vec::new();
        for (run_id, pid, started, host) in rows {
            let Ok(pid) = u32::try_from(pid) else {
                continue;
            };
            if process_gone(pid, &started, &host) != Some(true) {
                continue;
            }
            c.execute(
                "UPDATE runs SET result = 'interrupted', error = ?2,
                   ended_at = COALESCE((SELECT MAX(ended_at) FROM items WHERE run_id = ?1), started_at),
                   copied = (SELECT COUNT(*) FROM items WHERE run_id = ?1 AND status = 'copied'),
                   failed = (SELECT COUNT(*) FROM items WHERE run_id = ?1 AND status = 'failed'),
                   bytes = (SELECT COALESCE(SUM(bytes), 0) FROM items WHERE run_id = ?1)
                 WHERE run_id = ?1 AND result = 'running'",
                params![run_id, ABANDONED],
            )?;
            marked.push(run_id);
        }
        Ok(marked)
    }
}

#[async_trait]
impl StatusStore for SqliteStore {
    async fn put_run(&self, run: &RunRecord) -> Result<(), StoreError> {
        let c = self.conn.lock().unwrap();
        c.execute(
            &format!(
                "INSERT INTO runs ({RUN_COLS}, pid, pid_started, host)
                 VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20,?21,?22,?23)
                 ON CONFLICT (run_id) DO UPDATE SET source=excluded.source, dest=excluded.dest,
                   dry_run=excluded.dry_run, started_at=excluded.started_at, ended_at=excluded.ended_at,
                   copied=excluded.copied, skipped=excluded.skipped, failed=excluded.failed, bytes=excluded.bytes,
                   kind=excluded.kind, result=excluded.result, error=excluded.error,
                   filtered=excluded.filtered, conflicts=excluded.conflicts, deleted=excluded.deleted,
                   archived=excluded.archived, restoring=excluded.restoring, waiting=excluded.waiting, deferred=excluded.deferred,
                   pid=excluded.pid, pid_started=excluded.pid_started, host=excluded.host"
            ),
            params![
                run.run_id,
                run.source,
                run.dest,
                run.dry_run,
                run.started_at.to_rfc3339(),
                ts(&run.ended_at),
                run.copied,
                run.skipped,
                run.failed,
                run.bytes,
                run.kind.as_str(),
                run.result.as_str(),
                run.error,
                run.filtered,
                run.conflicts,
                run.deleted,
                run.archived,
                run.restoring,
                run.waiting,
                run.deferred,
                // The process that writes a run is the one running it (the CLI, `serve`):
                // how the next start tells a killed run from a live one.
                std::process::id(),
                process_started(std::process::id()),
                host_name()
            ],
        )?;
        Ok(())
    }

    async fn put_item(&self, i: &ItemRecord) -> Result<bool, StoreError> {
        let c = self.conn.lock().unwrap();
        let n = c.execute(
            "INSERT INTO items (run_id, source, dest, status, source_digest, dest_digest, attempts, error_class, error_message, bytes, started_at, ended_at, version, resumed, waiting_until)
             VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15)
             ON CONFLICT (run_id, source, dest) DO UPDATE SET
               status=excluded.status, source_digest=excluded.source_digest, dest_digest=excluded.dest_digest,
               attempts=excluded.attempts, error_class=excluded.error_class, error_message=excluded.error_message,
               bytes=excluded.bytes, started_at=excluded.started_at, ended_at=excluded.ended_at, version=excluded.version,
               resumed=excluded.resumed, waiting_until=excluded.waiting_until
             WHERE excluded.version > items.version",
            params![
                i.run_id, i.source, i.dest, i.status.as_str(), i.source_digest, i.dest_digest, i.attempts,
                i.error.as_ref().map(|e| e.class.as_str()), i.error.as_ref().map(|e| e.message.as_str()),
                i.bytes, ts(&i.started_at), ts(&i.ended_at), i.version as i64,
                i.resumed.as_ref().and_then(|r| serde_json::to_string(r).ok()),
                ts(&i.waiting_until)
            ],
        )?;
        Ok(n > 0)
    }

    async fn get_run(
        &self,
        run_id: Option<&str>,
    ) -> Result<Option<(RunRecord, Vec<ItemRecord>)>, StoreError> {
        let c = self.conn.lock().unwrap();
        let run = match run_id {
            Some(id) => c
                .query_row(
                    &format!("SELECT {RUN_COLS} FROM runs WHERE run_id = ?1"),
                    [id],
                    run_from_row,
                )
                .optional()?,
            None => c
                .query_row(
                    &format!(
                        "SELECT {RUN_COLS} FROM runs ORDER BY started_at DESC, rowid DESC LIMIT 1"
                    ),
                    [],
                    run_from_row,
                )
                .optional()?,
        };
        let Some(run) = run else { return Ok(None) };
        let mut stmt = c.prepare(
            "SELECT source, dest, status, source_digest, dest_digest, attempts, error_class, error_message, bytes, started_at, ended_at, version, resumed, waiting_until
             FROM items WHERE run_id = ?1 ORDER BY source, dest",
        )?;
        let items = stmt
            .query_map([&run.run_id], |r| {
                let class: Option<String> = r.get(6)?;
                let message: Option<String> = r.get(7)?;
                Ok(ItemRecord {
                    run_id: run.run_id.clone(),
                    source: r.get(0)?,
                    dest: r.get(1)?,
                    status: Status::from_name(&r.get::<_, String>(2)?).unwrap_or(Status::Failed),
                    source_digest: r.get(3)?,
                    dest_digest: r.get(4)?,
                    attempts: r.get(5)?,
                    error: class.map(|c| {
                        ItemError::new(
                            ErrorClass::from_name(&c).unwrap_or(ErrorClass::Retryable),
                            message.unwrap_or_default(),
                        )
                    }),
                    bytes: r.get(8)?,
                    started_at: parse_ts(r.get(9)?),
                    ended_at: parse_ts(r.get(10)?),
                    version: r.get::<_, i64>(11)? as u64,
                    line: None,
                    resumed: r
                        .get::<_, Option<String>>(12)?
                        .and_then(|j| serde_json::from_str(&j).ok()),
                    waiting_until: parse_ts(r.get(13)?),
                    reason: None,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let items = items
            .into_iter()
            .map(|i: ItemRecord| ItemRecord {
                line: list_line(&i.source),
                ..i
            })
            .collect();
        Ok(Some((run, items)))
    }

    async fn list_runs(&self, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        let c = self.conn.lock().unwrap();
        let mut stmt = c.prepare(&format!(
            "SELECT {RUN_COLS} FROM runs ORDER BY started_at DESC, rowid DESC LIMIT ?1"
        ))?;
        let rows = stmt
            .query_map([limit as i64], run_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    async fn claim_notification(&self, run_id: &str) -> Result<bool, StoreError> {
        let c = self.conn.lock().unwrap();
        Ok(c.execute(
            "UPDATE runs SET notified = 1 WHERE run_id = ?1 AND notified = 0",
            [run_id],
        )? > 0)
    }

    async fn is_notified(&self, run_id: &str) -> Result<bool, StoreError> {
        let c = self.conn.lock().unwrap();
        let n: Option<i64> = c
            .query_row(
                "SELECT notified FROM runs WHERE run_id = ?1",
                [run_id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(n.unwrap_or(0) != 0)
    }

    async fn first_seen(
        &self,
        repo: &str,
        digest: &str,
        now: DateTime<Utc>,
        record: bool,
    ) -> Result<DateTime<Utc>, StoreError> {
        let c = self.conn.lock().unwrap();
        if record {
            c.execute(
                "INSERT INTO seen (repo, digest, at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                params![repo, digest, now.to_rfc3339()],
            )?;
        }
        let at: Option<String> = c
            .query_row(
                "SELECT at FROM seen WHERE repo = ?1 AND digest = ?2",
                [repo, digest],
                |r| r.get(0),
            )
            .optional()?;
        Ok(parse_ts(at).unwrap_or(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(status: Status, version: u64) -> ItemRecord {
        ItemRecord {
            run_id: "r1".into(),
            source: "s/a:1".into(),
            dest: "d/a:1".into(),
            status,
            source_digest: Some("sha256:aa".into()),
            dest_digest: None,
            attempts: version as u32,
            error: (status == Status::Failed).then(|| ItemError::new(ErrorClass::Retryable, "EOF")),
            bytes: 0,
            started_at: Some(Utc::now()),
            ended_at: None,
            version,
            line: None,
            resumed: None,
            waiting_until: None,
            reason: None,
        }
    }

    fn run(id: &str) -> RunRecord {
        RunRecord {
            run_id: id.into(),
            kind: RunKind::Images,
            result: RunResult::Running,
            error: None,
            to_copy: None,
            filtered: 0,
            conflicts: 0,
            deleted: 0,
            archived: 0,
            restoring: 0,
            waiting: 0,
            deferred: 0,
            source: "s".into(),
            dest: "d".into(),
            dry_run: false,
            started_at: Utc::now(),
            ended_at: None,
            copied: 0,
            skipped: 0,
            failed: 0,
            bytes: 0,
        }
    }

    #[tokio::test]
    async fn the_first_sighting_of_a_digest_is_kept_and_a_dry_run_records_none() {
        let store = SqliteStore::in_memory().unwrap();
        let t = |s: i64| DateTime::<Utc>::from_timestamp(1_800_000_000 + s, 0).unwrap();
        let seen = |repo: &'static str, d: &'static str, at: i64, record: bool| {
            let store = &store;
            async move { store.first_seen(repo, d, t(at), record).await.unwrap() }
        };
        // A dry run reads "now" and writes nothing.
        assert_eq!(seen("r/a", "sha256:1", 5, false).await, t(5));
        assert_eq!(seen("r/a", "sha256:1", 10, true).await, t(10));
        // Later runs get the first sighting back, whatever their own time.
        assert_eq!(seen("r/a", "sha256:1", 99, true).await, t(10));
        assert_eq!(seen("r/a", "sha256:1", 99, false).await, t(10));
        // Another digest, or the same digest in another repository, is a sighting of its own.
        assert_eq!(seen("r/a", "sha256:2", 50, true).await, t(50));
        assert_eq!(seen("r/b", "sha256:1", 60, true).await, t(60));
    }

    #[tokio::test]
    async fn a_late_or_duplicated_write_never_overwrites_a_newer_result() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("sub/state.db")).unwrap();
        store.put_run(&run("r1")).await.unwrap();
        assert!(store.put_item(&item(Status::Planned, 1)).await.unwrap());
        assert!(store.put_item(&item(Status::Copied, 3)).await.unwrap());
        assert!(
            !store.put_item(&item(Status::Failed, 2)).await.unwrap(),
            "late write ignored"
        );
        assert!(
            !store.put_item(&item(Status::Copied, 3)).await.unwrap(),
            "duplicate ignored"
        );
        let (r, items) = store.get_run(None).await.unwrap().unwrap();
        assert_eq!(r.run_id, "r1");
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].status, Status::Copied);
        assert_eq!(items[0].attempts, 3);
    }

    #[tokio::test]
    async fn a_run_whose_process_is_gone_is_marked_interrupted_a_live_one_is_not() {
        let store = SqliteStore::in_memory().unwrap();
        for id in ["live", "killed", "elsewhere", "done"] {
            store.put_run(&run(id)).await.unwrap();
        }
        let mut done = run("done");
        done.result = RunResult::Succeeded;
        done.ended_at = Some(Utc::now());
        store.put_run(&done).await.unwrap();
        let mut copied = item(Status::Copied, 3);
        copied.run_id = "killed".into();
        copied.bytes = 42;
        store.put_item(&copied).await.unwrap();
        {
            let c = store.conn.lock().unwrap();
            // A process of this pid that started at another time: the pid was reused.
            c.execute(
                "UPDATE runs SET pid_started = 'not-its-start' WHERE run_id = 'killed'",
                [],
            )
            .unwrap();
            c.execute(
                "UPDATE runs SET pid_started = 'x', host = 'another-host' WHERE run_id = 'elsewhere'",
                [],
            )
            .unwrap();
        }
        assert_eq!(store.mark_abandoned_runs().unwrap(), ["killed"]);
        let (r, _) = store.get_run(Some("killed")).await.unwrap().unwrap();
        assert_eq!(r.result, RunResult::Interrupted);
        assert_eq!(r.error.as_deref(), Some(ABANDONED));
        assert_eq!(
            (r.copied, r.bytes),
            (1, 42),
            "the counts of what it recorded"
        );
        for (id, result) in [
            ("live", RunResult::Running),
            ("elsewhere", RunResult::Running),
            ("done", RunResult::Succeeded),
        ] {
            let (r, _) = store.get_run(Some(id)).await.unwrap().unwrap();
            assert_eq!(r.result, result, "{id}");
        }
        assert!(store.mark_abandoned_runs().unwrap().is_empty(), "once");
    }

    #[tokio::test]
    async fn keeps_errors_and_finds_runs_by_id() {
        let store = SqliteStore::in_memory().unwrap();
        let mut a = run("a");
        a.started_at = Utc::now() - chrono::Duration::seconds(10);
        store.put_run(&a).await.unwrap();
        store.put_run(&run("b")).await.unwrap();
        let mut i = item(Status::Failed, 4);
        i.run_id = "a".into();
        store.put_item(&i).await.unwrap();
        let (r, items) = store.get_run(Some("a")).await.unwrap().unwrap();
        assert_eq!(r.run_id, "a");
        assert_eq!(
            items[0].error,
            Some(ItemError::new(ErrorClass::Retryable, "EOF"))
        );
        assert_eq!(
            store.get_run(None).await.unwrap().unwrap().0.run_id,
            "b",
            "latest run"
        );
        assert!(store.get_run(Some("zzz")).await.unwrap().is_none());
        assert_eq!(
            store
                .list_runs(10)
                .await
                .unwrap()
                .iter()
                .map(|r| r.run_id.as_str())
                .collect::<Vec<_>>(),
            ["b", "a"]
        );
        assert!(!store.is_notified("a").await.unwrap());
        assert!(store.claim_notification("a").await.unwrap());
        assert!(store.is_notified("a").await.unwrap());
        assert!(
            !store.claim_notification("a").await.unwrap(),
            "one notification per run"
        );
        store.put_run(&run("a")).await.unwrap();
        assert!(
            !store.claim_notification("a").await.unwrap(),
            "rewriting the run keeps the mark"
        );
    }
}
