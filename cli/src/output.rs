//! What the user sees: a progress bar on a terminal, plain lines otherwise, and a
//! summary table at the end.

use chrono::Utc;
use hub_core::status::{ItemRecord, RunRecord, Status};
use hub_core::sync::Progress;
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
    /// A run whose size is found as it goes (objects): a spinner with a counter on a
    /// terminal, plain lines otherwise.
    pub fn streaming(&self, _what: &str) {
        if self.text && !self.dry_run && !quiet() && std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {pos} objects done · {msg}",
                )
                .expect("template is valid"),
            );
            bar.set_message(self.message());
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            *self.bar.lock().unwrap() = Some(bar);
        }
    }
    pub fn done(&self) {
        if let Some(b) = self.bar.lock().unwrap().take() {
            b.finish_and_clear();
        }
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

    fn finished(&self, item: &ItemRecord) {
        if !self.text {
            return;
        }
        self.bytes.fetch_add(item.bytes, Ordering::Relaxed);
        if item.status == Status::Copied || (item.status == Status::Failed && item.attempts > 0) {
            let _ = self
                .to_copy
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
        if let Some(b) = self.bar.lock().unwrap().as_ref() {
            b.set_message(self.message());
        }
        let shown = match item.status {
            Status::Failed => true,
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
    if let Some(e) = &i.error {
        s.push_str(&format!(
            "\n           {}: {} (attempts: {})",
            e.class, e.message, i.attempts
        ));
    }
    s
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
    if run.dry_run {
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
    if run.filtered > 0 {
        crate::outln!(
            "filtered: {} object(s) left out by the filters (neither copied nor deleted)",
            run.filtered
        );
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
