//! `faults-local`: the local half of the fault report (`scripts/faults`). Runs the real
//! `transfer-hub` binary against the real rig (docker-registry + skopeo for images, moto
//! behind the strict S3 proxy for objects) with a [`FaultProxy`] in the way, and prints one
//! JSON object per scenario on stdout:
//! `{"scenario","injected","items","survived","lost","duplicated","verdict"}`; progress on
//! stderr. Usage: `faults-local [FILTER]` (a substring of the scenario names);
//! `FAULTS_SEED=N` picks another seed for the transient faults (default 12).
//!
//! - `transient-*`: 10% of requests (seeded) get 429 + `Retry-After`, 503 or a reset
//!   mid-body; every item must arrive and be verified here, byte for byte, nothing extra
//!   written, no upload left open, and no retry of a 429 sooner than its `Retry-After`.
//! - `corrupt-*`: one byte flipped in blobs / GET bodies; every victim must be failed in the
//!   state, absent at the destination, and the others copied.
//! - `kill-*`: the CLI is SIGKILLed when the proxy sees a chosen request (listing, a copy,
//!   a part, the completion), then run again: destination and state must equal a clean
//!   run's, no multipart upload open, no process of the killed run left.

use anyhow::{Context, Result, anyhow, bail};
use hub_tests::faults::{FaultProxy, Faults, Flavor, Hold, Pick};
use hub_tests::s3_rig::StrictS3;
use hub_tests::{MotoServer, OciImage, RegistryServer, Run, aws_fixtures, transfer_hub_bin};
use md5::{Digest, Md5};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The transient faults' seed: `FAULTS_SEED`, else 12.
fn seed() -> u64 {
    std::env::var("FAULTS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
}
const RATE: u32 = 100; // per mille
const RETRY_AFTER: u64 = 2;
const REGION: &str = "eu-west-1";
const MIB: usize = 1024 * 1024;

#[derive(Default)]
struct Row {
    scenario: String,
    injected: String,
    items: usize,
    survived: usize,
    lost: usize,
    duplicated: usize,
    problems: Vec<String>,
}

impl Row {
    fn new(scenario: &str) -> Self {
        Self {
            scenario: scenario.into(),
            ..Default::default()
        }
    }
    fn fail(&mut self, why: impl Into<String>) {
        self.problems.push(why.into());
    }
    fn json(&self) -> serde_json::Value {
        let verdict = if self.problems.is_empty() {
            "pass".to_string()
        } else {
            format!("FAIL: {}", self.problems.join("; "))
        };
        serde_json::json!({
            "scenario": self.scenario, "injected": self.injected, "items": self.items,
            "survived": self.survived, "lost": self.lost, "duplicated": self.duplicated,
            "verdict": verdict,
        })
    }
}

type Scenario = fn(&mut Row) -> Result<()>;

fn main() {
    let filter = std::env::args().nth(1).unwrap_or_default();
    let scenarios: &[(&str, Scenario)] = &[
        ("transient-registry", transient_registry),
        ("transient-s3-stream", |r| transient_s3(r, false)),
        ("transient-s3-server", |r| transient_s3(r, true)),
        ("corrupt-registry-blob", corrupt_registry),
        ("corrupt-s3-get-stream", corrupt_s3),
        ("kill-images-listing", |r| kill_images(r, KillAt::Listing)),
        ("kill-images-mid-copy", |r| kill_images(r, KillAt::MidCopy)),
        ("kill-images-mid-blob", |r| kill_images(r, KillAt::MidPart)),
        ("kill-images-before-manifest", |r| {
            kill_images(r, KillAt::BeforeComplete)
        }),
        ("kill-objects-listing", |r| kill_objects(r, KillAt::Listing)),
        ("kill-objects-mid-copy", |r| {
            kill_objects(r, KillAt::MidCopy)
        }),
        ("kill-objects-after-create", |r| {
            kill_objects(r, KillAt::AfterCreate)
        }),
        ("kill-objects-mid-part", |r| {
            kill_objects(r, KillAt::MidPart)
        }),
        ("kill-objects-before-complete", |r| {
            kill_objects(r, KillAt::BeforeComplete)
        }),
    ];
    let mut any_failed = false;
    for (name, f) in scenarios {
        if !name.contains(filter.as_str()) {
            continue;
        }
        eprintln!("faults-local: {name} …");
        let started = Instant::now();
        let mut row = Row::new(name);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut row)));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => row.fail(format!("harness: {e:#}")),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                row.fail(format!("harness panicked: {msg}"));
            }
        }
        any_failed |= !row.problems.is_empty();
        eprintln!(
            "faults-local: {name}: {} in {:.1} s",
            if row.problems.is_empty() {
                "pass"
            } else {
                "FAIL"
            },
            started.elapsed().as_secs_f64()
        );
        println!("{}", row.json());
    }
    std::process::exit(i32::from(any_failed));
}

// ---------------------------------------------------------------- running the CLI

fn home() -> PathBuf {
    std::env::temp_dir().join("transfer-hub-faults-home")
}

fn command(args: &[String], env: &[(String, String)]) -> Command {
    let mut c = Command::new(transfer_hub_bin());
    c.args(args)
        .env_remove("REGISTRY_AUTH_FILE")
        .env("HOME", home())
        .envs(env.iter().cloned())
        .stdin(Stdio::null());
    c
}

fn cli(args: &[String], env: &[(String, String)]) -> Run {
    command(args, env).output().unwrap().into()
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// `status --run ID --output json` (the latest run without an id).
fn status(state: &Path, run: Option<&str>) -> Result<serde_json::Value> {
    let mut a = strings(&["status", "--output", "json", "--state"]);
    a.push(state.display().to_string());
    if let Some(r) = run {
        a.extend(["--run".to_string(), r.to_string()]);
    }
    let r = cli(&a, &[]);
    if r.code != 0 {
        bail!("status failed ({}): {}", r.code, r.stderr);
    }
    serde_json::from_str(&r.stdout).context("status JSON")
}

/// Item source → status, from a status or sync report.
fn item_statuses(j: &serde_json::Value) -> BTreeMap<String, String> {
    j["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| {
                    (
                        i["source"].as_str().unwrap_or("").to_string(),
                        i["status"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn describe(p: &[&FaultProxy]) -> String {
    let mut total = 0;
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    for x in p {
        total += x.log().len();
        for (k, v) in x.injected() {
            *by.entry(k).or_default() += v;
        }
    }
    let parts: Vec<String> = by
        .iter()
        .map(|(k, v)| {
            if *k == "429" {
                format!("{v}×429 (Retry-After {RETRY_AFTER} s)")
            } else {
                format!("{v}×{k}")
            }
        })
        .collect();
    format!(
        "{} of {total} requests: {}",
        by.values().sum::<usize>(),
        parts.join(", ")
    )
}

fn check_retry_after(row: &mut Row, proxies: &[&FaultProxy]) -> String {
    let (mut answered, mut retried, mut soon, mut unmatched) = (0, 0, 0, 0);
    let mut shortest: Option<Duration> = None;
    let mut examples = Vec::new();
    for p in proxies {
        let c = p.retry_after_check();
        answered += c.answered;
        unmatched += c.unmatched;
        retried += c.retried;
        soon += c.too_soon;
        shortest = match (shortest, c.shortest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        examples.extend(c.examples);
    }
    if soon > 0 {
        row.fail(format!(
            "Retry-After not honoured: {soon} of {retried} retries after a 429 came sooner than {RETRY_AFTER} s (shortest {} ms; e.g. {})",
            shortest.unwrap_or_default().as_millis(),
            examples.first().cloned().unwrap_or_default()
        ));
    }
    let apart = if unmatched > 0 {
        format!(", {unmatched} on shared upload sessions not matched")
    } else {
        String::new()
    };
    format!(
        "; Retry-After: {}/{retried} retries waited ≥ {RETRY_AFTER} s ({answered} 429s matched{apart})",
        retried - soon
    )
}

// ---------------------------------------------------------------- images

struct ImageSet {
    src: RegistryServer,
    /// (repo, tag, digest)
    images: Vec<(String, String, String)>,
    list: PathBuf,
    dir: tempfile::TempDir,
}

fn image_set(n: usize) -> ImageSet {
    let src = RegistryServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut images = Vec::new();
    for i in 0..n {
        let repo = if i % 3 == 2 { "lib" } else { "app" };
        let img = if i % 4 == 3 {
            OciImage::multi_arch(&[24 * 1024, 8 * 1024])
        } else {
            OciImage::single(&[48 * 1024, 16 * 1024])
        };
        let tag = format!("v{i}");
        img.push(&format!("{}/{repo}:{tag}", src.addr), None);
        images.push((repo.to_string(), tag, img.digest.clone()));
    }
    let list = dir.path().join("list.txt");
    std::fs::write(&list, "app:ALL_TAGS\nlib:ALL_TAGS\n").unwrap();
    ImageSet {
        src,
        images,
        list,
        dir,
    }
}

fn images_args(set: &ImageSet, source: &str, dest: &str, state: &Path) -> Vec<String> {
    let mut a = strings(&["images", "sync", "--output", "json", "--source"]);
    a.extend([source.to_string(), "--dest".into(), dest.to_string()]);
    a.extend(["--list".into(), set.list.display().to_string()]);
    a.extend(["--state".into(), state.display().to_string()]);
    a
}

/// Compares the destination with the source's images: (survived, lost, duplicated, notes).
fn verify_images(set: &ImageSet, dst: &RegistryServer) -> (usize, usize, usize, Vec<String>) {
    let (mut ok, mut lost, mut notes) = (0, 0, Vec::new());
    for (repo, tag, digest) in &set.images {
        match dst.digest(repo, tag) {
            Some(d) if d == *digest => ok += 1,
            Some(d) => {
                lost += 1;
                notes.push(format!("{repo}:{tag} has {d}, the source {digest}"));
            }
            None => lost += 1,
        }
    }
    let want: BTreeSet<(String, String)> = set
        .images
        .iter()
        .map(|(r, t, _)| (r.clone(), t.clone()))
        .collect();
    let mut extra = 0;
    for repo in dst.catalog() {
        for t in dst.tags(&repo) {
            if !want.contains(&(repo.clone(), t.clone())) {
                extra += 1;
                notes.push(format!("unexpected {repo}:{t}"));
            }
        }
    }
    (ok, lost, extra, notes)
}

fn transient_registry(row: &mut Row) -> Result<()> {
    let set = image_set(12);
    let dst = RegistryServer::start();
    let sp = FaultProxy::start(
        &set.src.addr,
        Faults::transient(Flavor::Registry, seed(), RATE, RETRY_AFTER),
    );
    let dp = FaultProxy::start(
        &dst.addr,
        Faults::transient(Flavor::Registry, seed() + 1, RATE, RETRY_AFTER),
    );
    let state = set.dir.path().join("state.db");
    let r = cli(&images_args(&set, &sp.addr, &dp.addr, &state), &[]);
    // FAULTS_DEBUG_DIR: the run's output and both proxies' logs, to see why an item was lost.
    if let Some(dir) = std::env::var_os("FAULTS_DEBUG_DIR") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("transient-registry.stdout"), &r.stdout)?;
        std::fs::write(dir.join("transient-registry.stderr"), &r.stderr)?;
        for (name, p) in [("source", &sp), ("dest", &dp)] {
            let t0 = p.log().first().map(|l| l.at);
            let lines: Vec<String> = p
                .log()
                .iter()
                .map(|l| {
                    let ms = t0.map_or(0, |t| l.at.duration_since(t).as_millis());
                    format!("{ms:>7} {:?} {}", l.fault, l.line)
                })
                .collect();
            std::fs::write(
                dir.join(format!("transient-registry.{name}.log")),
                lines.join("\n"),
            )?;
        }
    }
    row.items = set.images.len();
    let (ok, lost, extra, notes) = verify_images(&set, &dst);
    (row.survived, row.lost, row.duplicated) = (ok, lost, extra);
    row.injected = describe(&[&sp, &dp]);
    let ra = check_retry_after(row, &[&sp, &dp]);
    row.injected += &ra;
    if r.code != 0 {
        row.fail(format!(
            "exit {}: {}",
            r.code,
            first_errors(&r.stdout, &r.stderr)
        ));
    }
    if lost > 0 || extra > 0 {
        row.fail(format!("{lost} lost, {extra} extra {}", notes.join(", ")));
    }
    state_all_copied(row, &state, set.images.len());
    Ok(())
}

/// The failed items' errors of a sync report (or the end of stderr).
fn first_errors(stdout: &str, stderr: &str) -> String {
    let Ok(j) = serde_json::from_str::<serde_json::Value>(stdout) else {
        return stderr.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
    };
    let errs: Vec<String> = j["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["status"] == "failed")
        .map(|i| {
            format!(
                "{} {}: {}",
                i["source"].as_str().unwrap_or(""),
                i["error"]["class"].as_str().unwrap_or(""),
                i["error"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(160)
                    .collect::<String>()
            )
        })
        .collect();
    format!(
        "{} failed: {}",
        errs.len(),
        errs.into_iter().take(2).collect::<Vec<_>>().join(" | ")
    )
}

/// The latest run in the state file has every one of `n` items copied or in sync.
fn state_all_copied(row: &mut Row, state: &Path, n: usize) {
    match status(state, None) {
        Err(e) => row.fail(format!("status: {e:#}")),
        Ok(j) => {
            let run = &j;
            let (c, s, f) = (
                run["copied"].as_u64().unwrap_or(0),
                run["skipped"].as_u64().unwrap_or(0),
                run["failed"].as_u64().unwrap_or(0),
            );
            if f > 0 || (c + s) as usize != n {
                row.fail(format!("state: {c} copied, {s} in sync, {f} failed of {n}"));
            }
        }
    }
}

fn corrupt_registry(row: &mut Row) -> Result<()> {
    let set = image_set(6);
    let dst = RegistryServer::start();
    // Victims: a layer of app:v0 and the manifest of app:v1 (through the proxy, every time).
    let layer = set.src.manifest("app", "v0")["layers"][0]["digest"]
        .as_str()
        .context("a layer")?
        .to_string();
    let man = set.images[1].2.clone();
    let (l2, m2) = (layer.clone(), man.clone());
    let flip: Pick = Arc::new(move |h: &str| {
        h.starts_with(&format!("GET /v2/app/blobs/{l2} "))
            || h.starts_with("GET /v2/app/manifests/v1 ")
            || h.starts_with(&format!("GET /v2/app/manifests/{m2} "))
    });
    let mut f = Faults::none(Flavor::Registry);
    f.flip = Some(flip);
    let sp = FaultProxy::start(&set.src.addr, f);
    let state = set.dir.path().join("state.db");
    let r = cli(&images_args(&set, &sp.addr, &dst.addr, &state), &[]);
    row.items = set.images.len();
    row.injected = format!(
        "{} flipped answers: a layer blob of app:v0, the manifest of app:v1",
        sp.injected().get("flip").copied().unwrap_or(0)
    );
    let victims = ["app:v0", "app:v1"];
    let mut detected = 0;
    let statuses = serde_json::from_str::<serde_json::Value>(&r.stdout)
        .map(|j| item_statuses(&j))
        .unwrap_or_default();
    let recorded = status(&state, None)
        .map(|j| item_statuses(&j))
        .unwrap_or_default();
    for (repo, tag, digest) in &set.images {
        let name = format!("{repo}:{tag}");
        let at_dst = dst.digest(repo, tag);
        let rec = recorded
            .iter()
            .find(|(k, _)| k.ends_with(&format!("/{name}")))
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        if victims.contains(&name.as_str()) {
            if at_dst.is_some() {
                row.fail(format!("corrupt {name} landed ({at_dst:?})"));
            }
            if rec == "failed" {
                detected += 1;
            } else {
                row.fail(format!("{name} recorded {rec:?}, not failed"));
            }
        } else if at_dst.as_deref() == Some(digest.as_str()) && rec == "copied" {
            row.survived += 1;
        } else {
            row.lost += 1;
            row.fail(format!("{name} not copied ({rec:?})"));
        }
    }
    let _ = statuses;
    row.injected += &format!("; detected {detected} of {}", victims.len());
    if r.code != 1 {
        row.fail(format!("exit {} (1 expected)", r.code));
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum KillAt {
    Listing,
    MidCopy,
    AfterCreate,
    MidPart,
    BeforeComplete,
}

/// Processes whose parent is `pid`: (pid, command line).
fn children(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let ppid = std::fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|st| {
                st.rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .nth(1)?
                    .parse::<u32>()
                    .ok()
            });
        if ppid == Some(pid) {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            out.push((p, String::from_utf8_lossy(&cmd).replace('\0', " ")));
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Runs the CLI until `trap` springs, SIGKILLs it, and returns what it left running
/// a moment later (children of the killed process still alive).
fn run_and_kill(
    args: &[String],
    env: &[(String, String)],
    trap: std::sync::mpsc::Receiver<String>,
    proxies: &[&FaultProxy],
) -> Result<(String, Vec<String>)> {
    let mut child = command(args, env)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let sprung = trap.recv_timeout(Duration::from_secs(180));
    let kids = children(pid);
    child.kill()?;
    child.wait()?;
    std::thread::sleep(Duration::from_millis(500));
    let left: Vec<String> = kids
        .iter()
        .filter(|(p, _)| alive(*p))
        .map(|(p, c)| format!("{p} {}", c.split_whitespace().next().unwrap_or("")))
        .collect();
    for p in proxies {
        p.release();
    }
    // Let whatever survived finish or fail before the re-run.
    let deadline = Instant::now() + Duration::from_secs(60);
    while kids.iter().any(|(p, _)| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut line = sprung.map_err(|_| anyhow!("the kill point was never reached"))?;
    if line.len() > 90 {
        let cut = (0..=90)
            .rev()
            .find(|i| line.is_char_boundary(*i))
            .unwrap_or(0);
        line.truncate(cut);
        line.push('…');
    }
    Ok((line, left))
}

fn kill_images(row: &mut Row, at: KillAt) -> Result<()> {
    let set = image_set(9);
    row.items = set.images.len();
    // The clean run, for comparison.
    let clean = RegistryServer::start();
    let clean_state = set.dir.path().join("clean.db");
    let r = cli(
        &images_args(&set, &set.src.addr, &clean.addr, &clean_state),
        &[],
    );
    if r.code != 0 {
        bail!("the clean run failed: {}", r.stderr);
    }
    let dst = RegistryServer::start();
    let sp = FaultProxy::start(&set.src.addr, Faults::none(Flavor::Registry));
    let dp = FaultProxy::start(&dst.addr, Faults::none(Flavor::Registry));
    let (proxy, pick, hold, what): (&FaultProxy, Pick, Hold, &str) = match at {
        KillAt::Listing => (
            &sp,
            Arc::new(|h: &str| h.starts_with("GET /v2/lib/tags/list")),
            Hold::Before,
            "SIGKILL when the tag listing of lib is asked (held)",
        ),
        KillAt::MidCopy => (
            &dp,
            Arc::new(|h: &str| {
                h.starts_with("PATCH /v2/")
                    || h.starts_with("PUT /v2/") && h.contains("/blobs/uploads/")
            }),
            Hold::Before,
            "SIGKILL when the first blob's bytes reach the destination (held)",
        ),
        KillAt::MidPart | KillAt::AfterCreate => (
            &dp,
            Arc::new(|h: &str| h.starts_with("PUT /v2/") && h.contains("/blobs/uploads/")),
            Hold::After,
            "SIGKILL after the destination stored a blob, before its answer",
        ),
        KillAt::BeforeComplete => (
            &dp,
            Arc::new(|h: &str| h.starts_with("PUT /v2/") && h.contains("/manifests/")),
            Hold::Before,
            "SIGKILL when the first manifest PUT arrives (held)",
        ),
    };
    let state = set.dir.path().join("state.db");
    let args = images_args(&set, &sp.addr, &dp.addr, &state);
    let rx = proxy.trap(pick, hold);
    let (line, left) = run_and_kill(&args, &[], rx, &[&sp, &dp])?;
    row.injected = format!("{what}: {line}");
    if !left.is_empty() {
        row.fail(format!(
            "{} process(es) of the killed run still running: {}",
            left.len(),
            left.join(", ")
        ));
    }
    let killed = status(&state, None).ok();
    let again = cli(&args, &[]);
    if again.code != 0 {
        row.fail(format!(
            "re-run exit {}: {}",
            again.code,
            first_errors(&again.stdout, &again.stderr)
        ));
    }
    let (ok, lost, extra, notes) = verify_images(&set, &dst);
    (row.survived, row.lost, row.duplicated) = (ok, lost, extra);
    let (_, _, _, clean_notes) = verify_images(&set, &clean);
    if lost > 0 || extra > 0 || !clean_notes.is_empty() {
        row.fail(format!("{lost} lost, {extra} extra {}", notes.join(", ")));
    }
    compare_state(row, &state, killed.as_ref(), &clean_state)?;
    Ok(())
}

/// The final status of every item (the re-run's record, else the killed run's) equals
/// the clean run's, once both count "in sync" as done; items copied by both runs are
/// counted as duplicated writes.
fn compare_state(
    row: &mut Row,
    state: &Path,
    killed: Option<&serde_json::Value>,
    clean_state: &Path,
) -> Result<()> {
    let clean = item_statuses(&status(clean_state, None)?);
    let rerun_j = status(state, None)?;
    let rerun = item_statuses(&rerun_j);
    let first = killed.map(item_statuses).unwrap_or_default();
    let norm = |s: &str| match s {
        "copied" | "skipped" => "done".to_string(),
        other => other.to_string(),
    };
    let path_of = |src: &str| -> String {
        // Image sources name the proxy's address; compare by repository and tag.
        src.split_once('/')
            .map(|(_, p)| p.to_string())
            .unwrap_or_default()
    };
    let clean_n: BTreeMap<String, String> =
        clean.iter().map(|(k, v)| (path_of(k), norm(v))).collect();
    let mut finals: BTreeMap<String, String> =
        first.iter().map(|(k, v)| (path_of(k), norm(v))).collect();
    for (k, v) in &rerun {
        finals.insert(path_of(k), norm(v));
    }
    let mut diffs = Vec::new();
    for (k, want) in &clean_n {
        match finals.get(k) {
            Some(got) if got == want => {}
            got => diffs.push(format!("{k}: {got:?}, clean {want}")),
        }
    }
    if rerun_j["failed"].as_u64().unwrap_or(0) > 0 {
        diffs.push(format!("the re-run recorded {} failed", rerun_j["failed"]));
    }
    let twice = first
        .iter()
        .filter(|(k, v)| *v == "copied" && rerun.get(*k).is_some_and(|r| r == "copied"))
        .count();
    row.duplicated += twice;
    if twice > 0 {
        diffs.push(format!("{twice} item(s) copied by both runs"));
    }
    if !diffs.is_empty() {
        row.fail(format!(
            "state differs from a clean run: {}",
            diffs.into_iter().take(4).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------- objects

struct ObjectSet {
    moto: MotoServer,
    strict: StrictS3,
    rt: tokio::runtime::Runtime,
    s3: aws_sdk_s3::Client,
    /// key → MD5 of the bytes
    objects: BTreeMap<String, [u8; 16]>,
    dir: tempfile::TempDir,
}

fn bytes(n: usize, seed: u32) -> Vec<u8> {
    let mut r = fastrand::Rng::with_seed(u64::from(seed));
    (0..n).map(|_| r.u8(..)).collect()
}

/// `small` objects of 1–64 KiB (CRC32 stored, as the SDK writes them; every fifth without
/// any checksum), and two of 12 MiB: one written in one PUT, one in 5 MiB parts.
fn object_set(small: usize, buckets: &[&str]) -> ObjectSet {
    let moto = MotoServer::start();
    let strict = StrictS3::start(&moto.endpoint);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let conf = rt.block_on(moto.sdk_config(REGION));
    for b in ["src"].iter().chain(buckets) {
        rt.block_on(aws_fixtures::bucket(&conf, b));
    }
    let s3 = aws_sdk_s3::Client::new(&conf);
    let plain = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&conf)
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .build(),
    );
    let mut objects = BTreeMap::new();
    for i in 0..small {
        let body = bytes(1024 + (i * 7919) % (63 * 1024), i as u32);
        let key = format!("data/obj-{i:03}.bin");
        let c = if i % 5 == 4 { &plain } else { &s3 };
        rt.block_on(
            c.put_object()
                .bucket("src")
                .key(&key)
                .body(body.clone().into())
                .send(),
        )
        .unwrap();
        objects.insert(key, Md5::digest(&body).into());
    }
    let one = bytes(12 * MIB + 4321, 1001);
    rt.block_on(
        s3.put_object()
            .bucket("src")
            .key("big/one-put.bin")
            .body(one.clone().into())
            .send(),
    )
    .unwrap();
    objects.insert("big/one-put.bin".into(), Md5::digest(&one).into());
    let parts = bytes(12 * MIB + 999, 1002);
    rt.block_on(aws_fixtures::multipart_object(
        &s3,
        "src",
        "big/in-parts.bin",
        &parts,
        5 * MIB,
    ));
    objects.insert("big/in-parts.bin".into(), Md5::digest(&parts).into());
    ObjectSet {
        moto,
        strict,
        rt,
        s3,
        objects,
        dir: tempfile::tempdir().unwrap(),
    }
}

impl ObjectSet {
    fn env(&self) -> Vec<(String, String)> {
        self.moto.env(REGION)
    }

    fn args(&self, src_ep: &str, dst_ep: &str, dest: &str, state: &Path) -> Vec<String> {
        let mut a = strings(&["objects", "sync", "s3://src"]);
        a.push(format!("s3://{dest}"));
        a.extend(["--source-endpoint".into(), src_ep.to_string()]);
        a.extend(["--dest-endpoint".into(), dst_ep.to_string()]);
        a.extend(strings(&[
            "--multipart-threshold",
            &(6 * MIB).to_string(),
            "--part-size",
            &(5 * MIB).to_string(),
            "--output",
            "json",
            "--state",
        ]));
        a.push(state.display().to_string());
        a
    }

    /// (survived, lost, extra keys, open uploads, notes) of `bucket` against the source.
    fn verify(&self, bucket: &str) -> (usize, usize, usize, usize, Vec<String>) {
        let mut keys = BTreeSet::new();
        let mut token = None;
        loop {
            let o = self
                .rt
                .block_on(
                    self.s3
                        .list_objects_v2()
                        .bucket(bucket)
                        .set_continuation_token(token.clone())
                        .send(),
                )
                .unwrap();
            keys.extend(
                o.contents()
                    .iter()
                    .filter_map(|c| c.key().map(str::to_string)),
            );
            token = o.next_continuation_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        let (mut ok, mut lost, mut notes) = (0, 0, Vec::new());
        for (k, md5) in &self.objects {
            if !keys.contains(k) {
                lost += 1;
                continue;
            }
            let got = self
                .rt
                .block_on(async {
                    let o = self.s3.get_object().bucket(bucket).key(k).send().await?;
                    Ok::<_, anyhow::Error>(o.body.collect().await?.to_vec())
                })
                .unwrap_or_default();
            if <[u8; 16]>::from(Md5::digest(&got)) == *md5 {
                ok += 1;
            } else {
                lost += 1;
                notes.push(format!("{k} differs from the source"));
            }
        }
        let extra: Vec<&String> = keys
            .iter()
            .filter(|k| !self.objects.contains_key(*k))
            .collect();
        notes.extend(extra.iter().map(|k| format!("unexpected {k}")));
        (ok, lost, extra.len(), self.open_uploads(bucket), notes)
    }

    fn open_uploads(&self, bucket: &str) -> usize {
        self.rt
            .block_on(self.s3.list_multipart_uploads().bucket(bucket).send())
            .map(|o| o.uploads().len())
            .unwrap_or(0)
    }
}

fn transient_s3(row: &mut Row, server: bool) -> Result<()> {
    let set = object_set(120, &["dst"]);
    let sp = FaultProxy::start(
        set.strict.endpoint(),
        Faults::transient(Flavor::S3, seed(), RATE, RETRY_AFTER),
    );
    let dp;
    let proxies: Vec<&FaultProxy> = if server {
        vec![&sp]
    } else {
        dp = FaultProxy::start(
            set.strict.endpoint(),
            Faults::transient(Flavor::S3, seed() + 1, RATE, RETRY_AFTER),
        );
        vec![&sp, &dp]
    };
    let state = set.dir.path().join("state.db");
    let dst_ep = proxies.last().unwrap().endpoint();
    let mut args = set.args(&sp.endpoint(), &dst_ep, "dst", &state);
    if server {
        args.extend(strings(&["--copy-mode", "server"]));
    }
    let r = cli(&args, &set.env());
    row.items = set.objects.len();
    let (ok, lost, extra, open, notes) = set.verify("dst");
    (row.survived, row.lost, row.duplicated) = (ok, lost, extra + open);
    row.injected = describe(&proxies);
    let ra = check_retry_after(row, &proxies);
    row.injected += &ra;
    if r.code != 0 {
        row.fail(format!(
            "exit {}: {}",
            r.code,
            first_errors(&r.stdout, &r.stderr)
        ));
    }
    if lost > 0 || extra > 0 {
        row.fail(format!("{lost} lost, {extra} extra {}", notes.join(", ")));
    }
    if open > 0 {
        row.fail(format!("{open} multipart upload(s) left open"));
    }
    state_all_copied(row, &state, set.objects.len());
    Ok(())
}

fn corrupt_s3(row: &mut Row) -> Result<()> {
    let set = object_set(10, &["dst"]);
    // Victims: a small object with a stored CRC32, one without any checksum, the big object
    // written in one PUT (streamed in parts here) and the one written in parts.
    let victims = [
        "data/obj-000.bin",
        "data/obj-004.bin",
        "big/one-put.bin",
        "big/in-parts.bin",
    ];
    let flip: Pick = Arc::new(move |h: &str| {
        victims.iter().any(|v| {
            h.starts_with(&format!("GET /src/{v} ")) || h.starts_with(&format!("GET /src/{v}?"))
        })
    });
    let mut f = Faults::none(Flavor::S3);
    f.flip = Some(flip);
    let sp = FaultProxy::start(set.strict.endpoint(), f);
    let state = set.dir.path().join("state.db");
    let args = set.args(&sp.endpoint(), set.strict.endpoint(), "dst", &state);
    let r = cli(&args, &set.env());
    row.items = set.objects.len();
    let recorded = status(&state, None)
        .map(|j| item_statuses(&j))
        .unwrap_or_default();
    let (_, _, extra, open, _) = set.verify("dst");
    let mut detected = 0;
    for (k, md5) in &set.objects {
        let rec = recorded
            .get(&format!("s3://src/{k}"))
            .cloned()
            .unwrap_or_default();
        let got = set
            .rt
            .block_on(async {
                let o = set.s3.get_object().bucket("dst").key(k).send().await?;
                Ok::<_, anyhow::Error>(o.body.collect().await?.to_vec())
            })
            .ok();
        if victims.contains(&k.as_str()) {
            let mut caught = true;
            if let Some(b) = &got {
                caught = false;
                let same = <[u8; 16]>::from(Md5::digest(b)) == *md5;
                row.fail(format!(
                    "{k}: {} bytes landed at the destination",
                    if same { "intact" } else { "corrupt" }
                ));
            }
            if rec != "failed" {
                caught = false;
                row.fail(format!("{k} recorded {rec:?}"));
            }
            if caught {
                detected += 1;
            }
        } else if got.is_some_and(|b| <[u8; 16]>::from(Md5::digest(&b)) == *md5) && rec == "copied"
        {
            row.survived += 1;
        } else {
            row.lost += 1;
            row.fail(format!("{k} not copied ({rec:?})"));
        }
    }
    row.duplicated = extra + open;
    if open > 0 {
        row.fail(format!("{open} multipart upload(s) left open"));
    }
    row.injected = format!(
        "{} GET bodies with a flipped byte (streamed): 2 small objects (CRC32 / no checksum), 12 MiB one-PUT and 12 MiB in-parts objects; detected {detected} of {}",
        sp.injected().get("flip").copied().unwrap_or(0),
        victims.len()
    );
    if r.code != 1 {
        row.fail(format!("exit {} (1 expected)", r.code));
    }
    Ok(())
}

fn kill_objects(row: &mut Row, at: KillAt) -> Result<()> {
    let set = object_set(30, &["dst", "clean"]);
    row.items = set.objects.len();
    let clean_state = set.dir.path().join("clean.db");
    let env = set.env();
    let mut clean_args = set.args(
        set.strict.endpoint(),
        set.strict.endpoint(),
        "clean",
        &clean_state,
    );
    clean_args.extend(strings(&["--copy-mode", "stream"]));
    let r = cli(&clean_args, &env);
    if r.code != 0 {
        bail!("the clean run failed: {}", r.stderr);
    }
    let sp = FaultProxy::start(set.strict.endpoint(), Faults::none(Flavor::S3));
    let dp = FaultProxy::start(set.strict.endpoint(), Faults::none(Flavor::S3));
    let (proxy, pick, hold, what): (&FaultProxy, Pick, Hold, &str) = match at {
        KillAt::Listing => (
            &sp,
            Arc::new(|h: &str| {
                (h.starts_with("GET /src?") || h.starts_with("GET /src/?"))
                    && h.contains("list-type=2")
            }),
            Hold::Before,
            "SIGKILL when the source listing is asked (held)",
        ),
        KillAt::MidCopy => (
            &dp,
            Arc::new(|h: &str| {
                let l = h.lines().next().unwrap_or("");
                l.starts_with("PUT /dst/data/")
                    && (!l.contains('?') || l.contains("x-id=PutObject"))
            }),
            Hold::Before,
            "SIGKILL when the first object PUT arrives (held)",
        ),
        KillAt::AfterCreate => (
            &dp,
            Arc::new(|h: &str| {
                let l = h.lines().next().unwrap_or("");
                l.starts_with("POST /dst/") && l.contains("?uploads")
            }),
            Hold::After,
            "SIGKILL after S3 created a multipart upload, before its answer",
        ),
        KillAt::MidPart => (
            &dp,
            Arc::new(|h: &str| h.starts_with("PUT /dst/") && h.contains("partNumber=")),
            Hold::Before,
            "SIGKILL when the first UploadPart arrives (held)",
        ),
        KillAt::BeforeComplete => (
            &dp,
            Arc::new(|h: &str| {
                let l = h.lines().next().unwrap_or("");
                l.starts_with("POST /dst/") && l.contains("uploadId=")
            }),
            Hold::Before,
            "SIGKILL when the first CompleteMultipartUpload arrives (held)",
        ),
    };
    let state = set.dir.path().join("state.db");
    let args = set.args(&sp.endpoint(), &dp.endpoint(), "dst", &state);
    let rx = proxy.trap(pick, hold);
    let (line, left) = run_and_kill(&args, &env, rx, &[&sp, &dp])?;
    row.injected = format!("{what}: {line}");
    if !left.is_empty() {
        row.fail(format!(
            "processes of the killed run still running: {}",
            left.join(", ")
        ));
    }
    let killed = status(&state, None).ok();
    let open_after_kill = set.open_uploads("dst");
    let again = cli(&args, &env);
    if again.code != 0 {
        row.fail(format!(
            "re-run exit {}: {}",
            again.code,
            first_errors(&again.stdout, &again.stderr)
        ));
    }
    let (ok, lost, extra, open, notes) = set.verify("dst");
    (row.survived, row.lost, row.duplicated) = (ok, lost, extra + open);
    let (cok, _, _, copen, _) = set.verify("clean");
    if cok != set.objects.len() || copen != 0 {
        row.fail(format!(
            "the clean run itself: {cok} verified, {copen} open"
        ));
    }
    row.injected += &format!("; {open_after_kill} upload(s) open after the kill");
    if lost > 0 || extra > 0 {
        row.fail(format!("{lost} lost, {extra} extra {}", notes.join(", ")));
    }
    if open > 0 {
        row.fail(format!(
            "{open} multipart upload(s) left open after the re-run"
        ));
    }
    compare_objects_state(row, &state, killed.as_ref(), &clean_state)?;
    Ok(())
}

/// Objects: every object is recorded copied by the killed run or the re-run (in sync
/// ones are not recorded), as in the clean run where all are copied; the re-run fails
/// none; objects copied by both runs are duplicated writes.
fn compare_objects_state(
    row: &mut Row,
    state: &Path,
    killed: Option<&serde_json::Value>,
    clean_state: &Path,
) -> Result<()> {
    let clean = item_statuses(&status(clean_state, None)?);
    let rerun_j = status(state, None)?;
    let rerun = item_statuses(&rerun_j);
    let first = killed
        .filter(|k| k["run_id"] != rerun_j["run_id"])
        .map(item_statuses)
        .unwrap_or_default();
    // Objects found in sync are counted, not recorded: one the killed run wrote but did
    // not record is in sync for the re-run (its bytes are checked by the caller).
    let mut diffs = Vec::new();
    let mut unrecorded = 0;
    for (k, want) in &clean {
        match rerun.get(k).or(first.get(k)) {
            Some(got) if got == want => {}
            None => unrecorded += 1,
            got => diffs.push(format!("{k}: {got:?}, clean {want}")),
        }
    }
    let in_sync = rerun_j["skipped"].as_u64().unwrap_or(0) as usize;
    if unrecorded > in_sync {
        diffs.push(format!(
            "{unrecorded} object(s) recorded by neither run, {in_sync} found in sync"
        ));
    }
    if rerun_j["failed"].as_u64().unwrap_or(0) > 0 {
        diffs.push(format!("the re-run recorded {} failed", rerun_j["failed"]));
    }
    let twice = first
        .iter()
        .filter(|(k, v)| *v == "copied" && rerun.get(*k).is_some_and(|r| r == "copied"))
        .count();
    row.duplicated += twice;
    if twice > 0 {
        diffs.push(format!("{twice} object(s) copied by both runs"));
    }
    if !diffs.is_empty() {
        row.fail(format!(
            "state differs from a clean run: {}",
            diffs.into_iter().take(4).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(())
}
