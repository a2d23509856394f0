//! What the user sees: a progress bar on a terminal, plain lines otherwise, and a
//! summary table at the end.

use chrono::Utc;
use hub_core::status::{ItemRecord, RunRecord, Status};
use hub_core::sync::Progress;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;

/// Live progress of a run.
pub struct Live {
    text: bool,
    dry_run: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Live {
    pub fn new(text: bool, dry_run: bool) -> Self {
        Self {
            text,
            dry_run,
            bar: Mutex::new(None),
        }
    }
    /// A run whose size is found as it goes (objects): a spinner with a counter on a
    /// terminal, plain lines otherwise.
    pub fn streaming(&self, _what: &str) {
        if self.text && !self.dry_run && std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {pos} done {msg}")
                    .expect("template is valid"),
            );
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
        if self.text && !self.dry_run && std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}",
                )
                .expect("template is valid"),
            );
            bar.set_message(format!("{to_copy} to copy"));
            *self.bar.lock().unwrap() = Some(bar);
        } else if self.text {
            let verb = if self.dry_run {
                "would copy"
            } else {
                "copying"
            };
            println!("plan: {total} image(s), {verb} {to_copy}");
        }
    }

    fn finished(&self, item: &ItemRecord) {
        if !self.text {
            return;
        }
        let line = item_line(item, self.dry_run);
        match self.bar.lock().unwrap().as_ref() {
            Some(b) => {
                b.println(line);
                b.inc(1);
            }
            None => println!("{line}"),
        }
    }
}

fn item_line(i: &ItemRecord, dry_run: bool) -> String {
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

/// Prints one item as a plain line.
pub fn print_item(i: &ItemRecord, dry_run: bool) {
    println!("{}", item_line(i, dry_run));
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
    println!();
    println!(
        "run {}{}: {} -> {}",
        run.run_id,
        if run.dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        },
        run.source,
        run.dest
    );
    if run.dry_run {
        println!(
            "{:>10} {:>8} {:>7} {:>10}",
            "to copy", "in sync", "failed", "time"
        );
        println!(
            "{:>10} {:>8} {:>7} {:>9.1}s",
            planned, run.skipped, run.failed, secs
        );
    } else {
        println!(
            "{:>7} {:>8} {:>7} {:>11} {:>9}",
            "copied", "skipped", "failed", "bytes", "time"
        );
        println!(
            "{:>7} {:>8} {:>7} {:>11} {:>8.1}s",
            run.copied,
            run.skipped,
            run.failed,
            human_bytes(run.bytes),
            secs
        );
    }
    if let Some(why) = &run.interrupted {
        println!("interrupted by {why}: the next run copies what this one did not finish");
    }
    if let Some(p) = state {
        if !run.dry_run {
            println!(
                "details: transfer-hub status --run {} --state {}",
                run.run_id,
                p.display()
            );
        }
    }
}
