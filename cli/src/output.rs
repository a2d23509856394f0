//! What the user sees: a progress bar on a terminal, plain lines otherwise, and a
//! summary table at the end.

use chrono::Utc;
use hub_core::images::sync::Progress;
use hub_core::status::{ItemRecord, RunRecord, Status};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once stdout is gone (a reader such as `head -1` closed the pipe): later output is
/// dropped, and the run itself goes on to its end and to the state file.
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);

/// `-q`: no progress bar and no line per item. `-v`: a line for every item, in sync too.
static QUIET: AtomicBool = AtomicBool::new(false);
static VERBOSE: AtomicBool = AtomicBool::new(false);

pub fn set_quiet(quiet: bool, verbose: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
    VERBOSE.store(verbose, Ordering::Relaxed);
}

fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Writes to stdout, quietly dropping everything once the reader has gone away (broken
/// pipe). Never panics, unlike `print!`.
pub fn write_out(text: &str) {
    use std::io::Write as _;
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if out
        .write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .is_err()
    {
        STDOUT_GONE.store(true, Ordering::Relaxed);
    }
}

/// `println!` that survives a closed stdout (see [`write_out`]).
#[macro_export]
macro_rules! outln {
    () => { $crate::output::write_out("\n") };
    ($($arg:tt)*) => { $crate::output::write_out(&format!("{}\n", format_args!($($arg)*))) };
}

/// The bar on the terminal now, if any: log lines print above it (see [`LogWriter`]).
static ACTIVE_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn show_bar(bar: &ProgressBar) {
    *ACTIVE_BAR.lock().unwrap() = Some(bar.clone());
}

/// Where log lines go (stderr): each event whole, above the progress bar while one is
/// drawn (the bar is cleared, the line written, the bar drawn again), never through it.
pub struct LogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;
    fn make_writer(&'a self) -> LogLine {
        LogLine(Vec::new())
    }
}

/// One log event, written out when it is complete.
pub struct LogLine(Vec<u8>);

impl std::io::Write for LogLine {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        use std::io::Write as _;
        if self.0.is_empty() {
            return;
        }
        let write = || {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(&self.0).and_then(|_| err.flush());
        };
        let bar = ACTIVE_BAR.lock().ok().and_then(|b| b.clone());
        match bar {
            Some(b) if !b.is_finished() => b.suspend(write),
            _ => write(),
        }
    }
}

/// Live progress of a run.
pub struct Live {
    text: bool,
    dry_run: bool,
    bar: Mutex<Option<ProgressBar>>,
    /// Nothing to copy: items in sync get no line each (the summary counts them), unless -v.
    noop: AtomicBool,
    /// Bytes copied so far and when the run started: the bar's bytes and rate.
    bytes: std::sync::atomic::AtomicU64,
    started: std::time::Instant,
    to_copy: std::sync::atomic::AtomicUsize,
    /// Objects: the bytes of the objects queued so far (what the bar's bytes run up to),
    /// and bytes counted as they land (parts) rather than per finished item.
    bytes_total: std::sync::atomic::AtomicU64,
    objects: AtomicBool,
}

impl Live {
    pub fn new(text: bool, dry_run: bool) -> Self {
        Self {
            text,
            dry_run,
            bar: Mutex::new(None),
            noop: AtomicBool::new(false),
            bytes: std::sync::atomic::AtomicU64::new(0),
            started: std::time::Instant::now(),
            to_copy: std::sync::atomic::AtomicUsize::new(0),
            bytes_total: std::sync::atomic::AtomicU64::new(0),
            objects: AtomicBool::new(false),
        }
    }

    /// Objects: bytes done of the total, rate and an ETA from the bytes left.
    fn objects_message(&self) -> String {
        let done = self.bytes.load(Ordering::Relaxed);
        let total = self.bytes_total.load(Ordering::Relaxed).max(done);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let eta = if total == done {
            "0s".to_string()
        } else if rate >= 1.0 {
            hub_core::units::human_duration(std::time::Duration::from_secs(
                ((total - done) as f64 / rate).ceil() as u64,
            ))
        } else {
            "-".to_string()
        };
        format!(
            "{} of {} · {}/s · ETA {eta}",
            human_bytes(done),
            human_bytes(total),
            human_bytes(rate as u64)
        )
    }

    fn refresh(&self) {
        let msg = if self.objects.load(Ordering::Relaxed) {
            self.objects_message()
        } else {
            self.message()
        };
        if let Some(b) = self.bar.lock().unwrap().as_ref() {
            b.set_message(msg);
        }
    }

    /// The bar's message: what is left to copy, bytes copied and the rate.
    fn message(&self) -> String {
        let bytes = self.bytes.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let to_copy = self.to_copy.load(Ordering::Relaxed);
        let head = if to_copy > 0 {
            format!("{to_copy} to copy · ")
        } else {
            String::new()
        };
        format!(
            "{head}{} copied · {}/s",
            human_bytes(bytes),
            human_bytes((bytes as f64 / secs) as u64)
        )
    }
    /// A run whose size is found as it goes (objects): on a terminal a bar of objects
    /// done of those queued so far, bytes done of their total (moving as each part lands),
    /// rate and ETA; plain lines otherwise.
    pub fn streaming(&self, _what: &str) {
        self.objects.store(true, Ordering::Relaxed);
        if self.text && !self.dry_run && !quiet() && std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} objects · {msg}",
                )
                .expect("template is valid"),
            );
            bar.set_message(self.objects_message());
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            show_bar(&bar);
            *self.bar.lock().unwrap() = Some(bar);
        }
    }
    pub fn done(&self) {
        if let Some(b) = self.bar.lock().unwrap().take() {
            b.finish_and_clear();
        }
        *ACTIVE_BAR.lock().unwrap() = None;
    }
}

impl Progress for Live {
    fn planned(&self, to_copy: usize, total: usize) {
        self.noop.store(
            to_copy == 0 && !VERBOSE.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        if !self.text || quiet() {
            return;
        }
        if !self.dry_run && std::io::stderr().is_terminal() {
            self.to_copy.store(to_copy, Ordering::Relaxed);
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} images · {msg} · ETA {eta}",
                )
                .expect("template is valid"),
            );
            bar.set_message(self.message());
            bar.tick();
            show_bar(&bar);
            *self.bar.lock().unwrap() = Some(bar);
        } else {
            let verb = if self.dry_run {
                "would copy"
            } else {
                "copying"
            };
            crate::outln!("plan: {total} image(s), {verb} {to_copy}");
        }
    }

    fn queued(&self, bytes: u64) {
        self.bytes_total.fetch_add(bytes, Ordering::Relaxed);
        if let Some(b) = self.bar.lock().unwrap().as_ref() {
            b.inc_length(1);
        }
        self.refresh();
    }

    fn moved(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.refresh();
    }

    fn reused(&self, bytes: u64) {
        let _ = self
            .bytes_total
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(bytes))
            });
        self.refresh();
    }

    fn tags_left_out(&self, left_out: usize, listed: usize) {
        if self.text && !quiet() {
            crate::outln!("tag rules: {left_out} of {listed} listed tag(s) left out");
        }
    }

    fn finished(&self, item: &ItemRecord) {
        if !self.text {
            return;
        }
        // Objects count their bytes as the parts land (`moved`).
        if !self.objects.load(Ordering::Relaxed) {
            self.bytes.fetch_add(item.bytes, Ordering::Relaxed);
        }
        if item.status == Status::Copied
            || (matches!(item.status, Status::Failed | Status::Conflict) && item.attempts > 0)
        {
            let _ = self
                .to_copy
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
        self.refresh();
        let shown = match item.status {
            Status::Failed | Status::Conflict => true,
            Status::Skipped => !quiet() && !self.noop.load(Ordering::Relaxed),
            _ => !quiet(),
        };
        if !shown {
            if let Some(b) = self.bar.lock().unwrap().as_ref() {
                b.inc(1);
            }
            return;
        }
        let line = item_line(item, self.dry_run, false);
        match self.bar.lock().unwrap().as_ref() {
            Some(b) => {
                b.println(line);
                b.inc(1);
            }
            None => crate::outln!("{line}"),
        }
    }
}

/// A digest as text output shows it: `sha256:` and 12 hex characters (`long`: whole).
fn short_digest(d: &str, long: bool) -> &str {
    match d.split_once(':') {
        Some((algo, hex))
            if !long && hex.len() > 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            &d[..algo.len() + 1 + 12]
        }
        _ => d,
    }
}

fn item_line(i: &ItemRecord, dry_run: bool, long: bool) -> String {
    let word = match (i.status, dry_run) {
        (Status::Planned, true) => "would copy",
        (Status::Planned, false) => "planned",
        (Status::Skipped, _) => "in sync",
        (Status::Copied, _) => "copied",
        (Status::Failed, _) => "FAILED",
        (Status::Conflict, _) => "CONFLICT",
        (Status::Deleted, true) => "would delete",
        (Status::Deleted, false) => "deleted",
        (Status::Archived, _) => "archived",
        (Status::Restoring, true) => "would restore",
        (Status::Restoring, false) => "restoring",
        (Status::Waiting, _) => "waiting",
        (Status::Deferred, true) => "would defer",
        (Status::Deferred, false) => "deferred",
    };
    let digest = i
        .dest_digest
        .as_deref()
        .or(i.source_digest.as_deref())
        .map(|d| short_digest(d, long))
        .unwrap_or("-");
    let mut s = format!(
        "{word:<10} {} -> {} {digest}",
        i.source,
        if i.dest.is_empty() { "-" } else { &i.dest }
    );
    if let Some(r) = &i.resumed {
        s.push_str(&format!(" · {}", resumed_line(i, r)));
    }
    if let Some(t) = i.waiting_until {
        s.push_str(&format!(" · {}", waiting_line(t, Utc::now())));
    }
    // An object a dry run would copy: its size.
    if i.status == Status::Planned && i.source.starts_with("s3://") {
        s.push_str(&format!(" ({})", human_bytes(i.bytes)));
    }
    if let Some(e) = &i.error {
        s.push_str(&format!(
            "\n           {}: {} (attempts: {})",
            e.class, e.message, i.attempts
        ));
    }
    s
}

/// "--min-age: copied from 2026-12-11 05:00 UTC (6d23h left)": when a waiting image's source
/// digest is old enough.
fn waiting_line(until: chrono::DateTime<Utc>, now: chrono::DateTime<Utc>) -> String {
    format!(
        "--min-age: copied from {} ({} left)",
        until.format("%Y-%m-%d %H:%M UTC"),
        hub_core::units::human_duration((until - now).to_std().unwrap_or_default())
    )
}

/// "resumed 8 of 16 parts of big.bin": what an object reused of an earlier run's upload.
fn resumed_line(i: &ItemRecord, r: &hub_core::status::Resumed) -> String {
    let name = i.source.rsplit('/').next().unwrap_or(&i.source);
    format!(
        "{} ({} not sent again)",
        r.describe(name),
        human_bytes(r.bytes)
    )
}

/// Prints one item as a plain line (`long`: whole digests).
pub fn print_item(i: &ItemRecord, dry_run: bool, long: bool) {
    crate::outln!("{}", item_line(i, dry_run, long));
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The summary table at the end of a run.
pub fn summary(run: &RunRecord, items: &[ItemRecord], state: Option<&Path>) {
    let planned = items.iter().filter(|i| i.status == Status::Planned).count();
    let secs =
        (run.ended_at.unwrap_or_else(Utc::now) - run.started_at).num_milliseconds() as f64 / 1000.0;
    crate::outln!();
    if run.dry_run {
        crate::outln!(
            "dry run (nothing changed, no state kept): {} -> {}",
            run.source,
            run.dest
        );
    } else {
        crate::outln!("run {}: {} -> {}", run.run_id, run.source, run.dest);
    }
    if run.copied == 0 && run.failed == 0 && run.skipped > 0 && planned == 0 {
        crate::outln!(
            "{} {} in sync",
            run.skipped,
            match run.kind {
                hub_core::status::RunKind::Images => "image(s)",
                hub_core::status::RunKind::Objects => "object(s)",
            }
        );
    }
    crate::outln!(
        "{} run, started {}: {}",
        run.kind.as_str(),
        run.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
        run.result.as_str()
    );
    if let Some(e) = &run.error {
        crate::outln!("why: {e}");
    }
    if run.dry_run && run.kind == hub_core::status::RunKind::Objects {
        let to_copy: u64 = items
            .iter()
            .filter(|i| i.status == Status::Planned)
            .map(|i| i.bytes)
            .sum();
        crate::outln!(
            "{:>10} {:>11} {:>8} {:>7} {:>10}",
            "to copy",
            "bytes",
            "in sync",
            "failed",
            "time"
        );
        crate::outln!(
            "{:>10} {:>11} {:>8} {:>7} {:>9.1}s",
            planned,
            human_bytes(to_copy),
            run.skipped,
            run.failed,
            secs
        );
    } else if run.dry_run {
        crate::outln!(
            "{:>10} {:>8} {:>7} {:>10}",
            "to copy",
            "in sync",
            "failed",
            "time"
        );
        crate::outln!(
            "{:>10} {:>8} {:>7} {:>9.1}s",
            planned,
            run.skipped,
            run.failed,
            secs
        );
    } else {
        crate::outln!(
            "{:>7} {:>8} {:>7} {:>11} {:>9}",
            "copied",
            "skipped",
            "failed",
            "bytes",
            "time"
        );
        crate::outln!(
            "{:>7} {:>8} {:>7} {:>11} {:>8.1}s",
            run.copied,
            run.skipped,
            run.failed,
            human_bytes(run.bytes),
            secs
        );
    }
    // What the run reused of uploads earlier runs began (its bytes do not count them).
    let resumed: Vec<&ItemRecord> = items.iter().filter(|i| i.resumed.is_some()).collect();
    for i in resumed.iter().take(10) {
        crate::outln!("{}", resumed_line(i, i.resumed.as_ref().expect("resumed")));
    }
    if resumed.len() > 10 {
        crate::outln!("… and {} more objects resumed", resumed.len() - 10);
    }
    if run.filtered > 0 {
        crate::outln!(
            "filtered: {} object(s) left out by the filters (neither copied nor deleted)",
            run.filtered
        );
    }
    if run.archived > 0 {
        crate::outln!(
            "archived: {} source object(s) in GLACIER or DEEP_ARCHIVE are not restored and were left (--restore-days N asks for restores)",
            run.archived
        );
    }
    if run.restoring > 0 {
        crate::outln!(
            "restoring: {} archived source object(s) {}; a later run copies them once restored",
            run.restoring,
            if run.dry_run {
                "would be restored or are being restored"
            } else {
                "are being restored"
            }
        );
    }
    if run.waiting > 0 {
        let next = items.iter().filter_map(|i| i.waiting_until).min();
        crate::outln!(
            "waiting: {} image(s) whose source digest is newer than --min-age{}",
            run.waiting,
            next.map(|t| format!(
                "; the first is copied by a run from {}",
                t.format("%Y-%m-%d %H:%M UTC")
            ))
            .unwrap_or_default()
        );
    }
    if run.deferred > 0 {
        crate::outln!(
            "deferred: {} image(s) left for the next run: the source registry's pull quota would run out",
            run.deferred
        );
    }
    if run.deleted > 0 {
        let moved = items
            .iter()
            .any(|i| i.status == Status::Deleted && !i.dest.is_empty());
        crate::outln!(
            "deleted: {} object(s) missing at the source {}",
            run.deleted,
            match (run.dry_run, moved) {
                (true, true) => "would move to the backup prefix",
                (true, false) => "would be deleted",
                (false, true) => "moved to the backup prefix",
                (false, false) => "removed",
            }
        );
    }
    if run.conflicts > 0 {
        crate::outln!(
            "conflicts: {} destination tag(s) hold another image and were left alone (CONFLICT above; --no-overwrite or immutable ECR tags)",
            run.conflicts
        );
        for i in items
            .iter()
            .filter(|i| i.status == Status::Conflict)
            .take(10)
        {
            if let Some(e) = &i.error {
                crate::outln!("  {}", e.message);
            }
        }
    }
    if run.result == hub_core::status::RunResult::Interrupted {
        crate::outln!("interrupted: the next run copies what this one did not finish");
    }
    if let Some(p) = state {
        if !run.dry_run {
            crate::outln!(
                "details: transfer-hub status --run {} --state {}",
                run.run_id,
                p.display()
            );
        }
    }
}

/// After an images run's summary: what it asked of each registry (rate limits and quotas
/// count these).
pub fn registry_requests(
    counts: &std::collections::BTreeMap<String, hub_core::images::registry::RequestCount>,
) {
    for (host, c) in counts {
        crate::outln!(
            "registry {host}: {} request(s), {} token request(s)",
            c.requests,
            c.token_requests
        );
    }
}

/// After an images run's summary: the pull quota of each source registry that reports one.
pub fn quotas(budgets: &[hub_core::images::sync::QuotaBudget]) {
    for b in budgets {
        crate::outln!(
            "pull quota of {}: {} of {} pulls left{}; this run needs {} for {} image(s) ({} each){}",
            b.host,
            b.remaining,
            b.limit,
            b.window_secs
                .map(|w| format!(
                    " (a {} window)",
                    hub_core::units::human_duration(std::time::Duration::from_secs(w))
                ))
                .unwrap_or_default(),
            b.needed,
            b.images,
            hub_core::images::sync::PULLS_PER_IMAGE,
            if b.deferred > 0 {
                format!(": {} deferred to a later run", b.deferred)
            } else {
                String::new()
            }
        );
    }
}

/// `transfer-hub runs`: one line per run.
pub fn runs_table(runs: &[RunRecord]) {
    if runs.is_empty() {
        crate::outln!("no runs yet");
        return;
    }
    crate::outln!(
        "{:<22} {:<7} {:<50} {:<20} {:>8} {:<11} {:>7} {:>8} {:>7}",
        "RUN",
        "KIND",
        "SOURCE → DEST",
        "STARTED",
        "DURATION",
        "RESULT",
        "COPIED",
        "SKIPPED",
        "FAILED"
    );
    for r in runs {
        let took = r
            .ended_at
            .map(|e| {
                hub_core::units::human_duration((e - r.started_at).to_std().unwrap_or_default())
            })
            .unwrap_or_else(|| "-".into());
        crate::outln!(
            "{:<22} {:<7} {:<50} {:<20} {:>8} {:<11} {:>7} {:>8} {:>7}",
            r.run_id,
            r.kind.as_str(),
            format!("{} → {}", r.source, r.dest),
            r.started_at.format("%Y-%m-%d %H:%M:%S"),
            took,
            r.result.as_str(),
            r.copied,
            r.skipped,
            r.failed
        );
    }
}
