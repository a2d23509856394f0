//! Object benchmarks (not tests): prints a table of scenario, us, peer, ratio, target.
//! 1. The diff of 1,000,000 source keys against 990,000 destination keys, from listings
//!    generated in a child process (`bench-objects diff`): its peak RSS (VmHWM) and CPU
//!    time (user + sys), against the known figures for s5cmd and rclone (not measured).
//! 2. 10,000 × 16 KiB objects S3→S3 on one s3s-fs server: a cold copy into a fresh bucket,
//!    then the no-op re-run, `transfer-hub objects sync` vs `s5cmd sync` vs `rclone sync`
//!    (the same size-only rule for all three; each into its own bucket).
//! 3. One 6 GiB object S3→S3 (server-side part copies) vs rclone; s5cmd is tried too.
//! 4. Peak RSS of `objects sync --copy-mode stream` moving one 1 GiB and one 2 GiB object
//!    with 64 MiB parts and `--stream-buffer 256 MiB`: bounded by it, not by the object.
//!
//!    Ours runs twice: with rclone's part layout (the same requests: the like-for-like row)
//!    and with our default 64 MiB parts.
//!
//! Run it through `scripts/bench-objects` (release build). Knobs: `BENCH_DIFF_KEYS`
//! (1000000), `BENCH_OBJECTS` (10000), `BENCH_OBJECT_KIB` (16), `BENCH_TRIALS` (3),
//! `BENCH_BIG_GIB` (6, 0 skips), `BENCH_BIG_TRIALS` (1), `BENCH_BIG_DEFAULT_PARTS` (1; 0
//! skips our default-parts run, ~11 min on s3s-fs), `BENCH_MEM_GIB` (1, 0 skips),
//! `BENCH_MEM_BUFFER_MIB` (256), `BENCH_DIR` (where s3s-fs keeps its
//! data; the temp dir), `S5CMD` (the s5cmd binary; else the one on PATH).

use futures::stream::{self, Stream, StreamExt};
use hub_core::objects::diff::{Compare, Decision, Entry, merge};
use hub_tests::{free_port, require, transfer_hub_bin};
use std::convert::Infallible;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const ACCESS_KEY: &str = "benchaccesskey";
const SECRET_KEY: &str = "benchsecretkey0123456789";
const REGION: &str = "us-east-1";
/// A tool run that takes longer than this is stopped and reported as failed.
const LIMIT: Duration = Duration::from_secs(1800);

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------
// 1. The diff, in a child process of its own so its peak RSS is the merge's alone.

const PAGE: u64 = 1000;

/// Entry `i` of a generated listing. Keys sort like their numbers (zero-padded).
fn entry(i: u64, bumped: bool) -> Entry {
    Entry {
        archived: false,
        key: format!("logs/{:04}/part-{:08}.json.gz", i / PAGE, i),
        size: 1024 + (i.wrapping_mul(7919) % 100_000) + u64::from(bumped),
        etag: Some(format!(
            "{:032x}",
            u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
        )),
        checksum: None,
        modified: None,
    }
}

/// A listing of `n` keys arriving in pages of 1,000 (as ListObjectsV2 hands them over),
/// without the keys `skip` rejects and with the sizes `bump` picks one byte larger.
fn listing(
    n: u64,
    skip: fn(u64) -> bool,
    bump: fn(u64) -> bool,
) -> impl Stream<Item = Result<Entry, Infallible>> + Unpin {
    stream::iter(0..n.div_ceil(PAGE)).flat_map(move |p| {
        let page: Vec<Result<Entry, Infallible>> = (p * PAGE..((p + 1) * PAGE).min(n))
            .filter(|i| !skip(*i))
            .map(|i| Ok(entry(i, bump(i))))
            .collect();
        stream::iter(page)
    })
}

/// Peak RSS (KiB) and CPU seconds (user + sys, all threads) of this process, from /proc.
fn self_usage() -> (u64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which may hold spaces): utime is the 14th, stime the 15th.
    let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap();
    // USER_HZ is 100 on every Linux ABI.
    (hwm, ticks as f64 / 100.0)
}

/// `bench-objects diff [SOURCE_KEYS]`: merges SOURCE_KEYS source keys with a destination
/// that lacks every 100th of them (990,000 of 1,000,000) and has every 1,000th one at
/// another size; prints one JSON line with the counts, peak RSS and CPU time.
fn diff_child(n: u64) {
    let t = Instant::now();
    let (mut copies, mut in_sync, mut extra) = (0u64, 0u64, 0u64);
    let src = listing(n, |_| false, |_| false);
    let dst = listing(n, |i| i % 100 == 0, |i| i % 1000 == 1);
    futures::executor::block_on(merge(src, dst, Compare::Size, |d| {
        match d {
            Decision::Copy(e, _) | Decision::Changed { src: e, .. } => {
                std::hint::black_box(e);
                copies += 1;
            }
            Decision::InSync(e) => {
                std::hint::black_box(e);
                in_sync += 1;
            }
            Decision::Extra(_) => extra += 1,
        }
        async { Ok::<(), Infallible>(()) }
    }))
    .expect("the merge of generated listings");
    let wall = t.elapsed().as_secs_f64();
    let (rss_kib, cpu_s) = self_usage();
    let want_missing = n.div_ceil(100);
    let want_differs = (0..n).filter(|i| i % 1000 == 1 && i % 100 != 0).count() as u64;
    assert_eq!(copies, want_missing + want_differs, "copies");
    assert_eq!(in_sync, n - copies, "in sync");
    assert_eq!(extra, 0, "extra");
    println!(
        "{}",
        serde_json::json!({
            "source": n, "dest": n - want_missing, "copies": copies, "in_sync": in_sync,
            "rss_kib": rss_kib, "cpu_s": cpu_s, "wall_s": wall,
        })
    );
}

// ---------------------------------------------------------------------------------------
// Running the tools.

/// What one run of a tool did.
struct Out {
    dur: Duration,
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Out {
    /// The first lines of what the tool said when it failed.
    fn error_text(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = &lines[lines.len().saturating_sub(3)..];
        tail.join(" / ").replace('|', "\\|")
    }
}

fn run(rt: &tokio::runtime::Runtime, mut c: tokio::process::Command) -> Out {
    c.stdin(Stdio::null()).kill_on_drop(true);
    let what = format!("{:?}", c.as_std());
    rt.block_on(async {
        let t = Instant::now();
        match tokio::time::timeout(LIMIT, c.output()).await {
            Ok(Ok(o)) => Out {
                dur: t.elapsed(),
                ok: o.status.success(),
                stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            },
            Ok(Err(e)) => panic!("cannot run {what}: {e}"),
            Err(_) => Out {
                dur: t.elapsed(),
                ok: false,
                stdout: String::new(),
                stderr: format!("stopped after {} s", LIMIT.as_secs()),
            },
        }
    })
}

/// One s3s-fs server on 127.0.0.1 serving `root` (a bucket is a directory of it).
struct S3fs {
    child: Child,
    root: PathBuf,
    endpoint: String,
}

impl S3fs {
    fn start(root: &Path, log: &Path) -> Self {
        let port = free_port();
        let log = std::fs::File::create(log).unwrap();
        let child = std::process::Command::new(require("s3s-fs"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("s3s-fs starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        S3fs {
            child,
            root: root.to_path_buf(),
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// A new empty bucket.
    fn bucket(&self, name: &str) -> PathBuf {
        let p = self.root.join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// Removes a bucket and the sidecar files s3s-fs keeps for its objects.
    fn drop_bucket(&self, name: &str) {
        let _ = std::fs::remove_dir_all(self.root.join(name));
        let prefix = format!(".bucket-{}.", base64_url(name));
        for e in std::fs::read_dir(&self.root).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

impl Drop for S3fs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// URL-safe base64 without padding (how s3s-fs names its sidecar files).
fn base64_url(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

/// A command with the S3 credentials of the server and nothing from the user's setup.
fn tool(program: &Path, home: &Path, endpoint: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(program);
    for k in [
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "S3_ENDPOINT_URL",
        "AWS_SESSION_TOKEN",
        // The endpoints are plain HTTP; rclone refuses to start with a CA bundle set.
        "AWS_CA_BUNDLE",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "RCLONE_CONFIG",
        "TRANSFER_HUB_STATE",
    ] {
        c.env_remove(k);
    }
    c.env("HOME", home)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", REGION)
        .env("AWS_DEFAULT_REGION", REGION)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        // rclone: one remote `s3:` on the server, path-style.
        .env("RCLONE_CONFIG", home.join("rclone.conf"))
        .env("RCLONE_CONFIG_S3_TYPE", "s3")
        .env("RCLONE_CONFIG_S3_PROVIDER", "Other")
        .env("RCLONE_CONFIG_S3_ENV_AUTH", "false")
        .env("RCLONE_CONFIG_S3_ACCESS_KEY_ID", ACCESS_KEY)
        .env("RCLONE_CONFIG_S3_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("RCLONE_CONFIG_S3_REGION", REGION)
        .env("RCLONE_CONFIG_S3_ENDPOINT", endpoint)
        .env("RCLONE_CONFIG_S3_FORCE_PATH_STYLE", "true")
        .env("RCLONE_CONFIG_S3_NO_CHECK_BUCKET", "true");
    c
}

struct Tools {
    us: PathBuf,
    s5cmd: PathBuf,
    rclone: PathBuf,
    home: PathBuf,
    state_dir: PathBuf,
}

impl Tools {
    fn ours(&self, s: &S3fs, src: &str, dst: &str, extra: &[&str]) -> tokio::process::Command {
        let mut c = tool(&self.us, &self.home, &s.endpoint);
        c.args(["objects", "sync", src, dst])
            .args([
                "--source-endpoint",
                &s.endpoint,
                "--dest-endpoint",
                &s.endpoint,
            ])
            .args(["--output", "json", "--state"])
            .arg(
                self.state_dir
                    .join(format!("{}.db", dst.replace(['/', ':'], "_"))),
            )
            .args(extra);
        c
    }
    fn s5cmd(&self, s: &S3fs, args: &[&str]) -> tokio::process::Command {
        let mut c = tool(&self.s5cmd, &self.home, &s.endpoint);
        c.args(["--endpoint-url", &s.endpoint]).args(args);
        c
    }
    fn rclone(&self, s: &S3fs, args: &[&str]) -> tokio::process::Command {
        let mut c = tool(&self.rclone, &self.home, &s.endpoint);
        c.args(args);
        c
    }
}

/// The copies our JSON report counts (None when the output is not our report).
fn ours_copied(o: &Out) -> Option<(u64, u64, u64)> {
    let v: serde_json::Value = serde_json::from_str(&o.stdout).ok()?;
    Some((
        v["copied"].as_u64()?,
        v["skipped"].as_u64()?,
        v["failed"].as_u64()?,
    ))
}

/// Every file of `src` is in `dst` with the same bytes, and nothing else is.
fn same_tree(src: &Path, dst: &Path) -> Result<usize, String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    walk(src, src, &mut a);
    if dst.is_dir() {
        walk(dst, dst, &mut b);
    }
    a.sort();
    b.sort();
    if a != b {
        return Err(format!(
            "{} of {} objects at the destination",
            b.len(),
            a.len()
        ));
    }
    for k in &a {
        if std::fs::read(src.join(k)).unwrap() != std::fs::read(dst.join(k)).unwrap() {
            return Err(format!("{} differs", k.display()));
        }
    }
    Ok(a.len())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

// ---------------------------------------------------------------------------------------
// The table.

struct Row {
    scenario: String,
    us: String,
    peer: String,
    ratio: String,
    target: String,
    met: &'static str,
}

fn row(scenario: &str, us: String, peer: String, ratio: String, target: &str, met: bool) -> Row {
    Row {
        scenario: scenario.to_string(),
        us,
        peer,
        ratio,
        target: target.to_string(),
        met: if met { "yes" } else { "**no**" },
    }
}

fn note(scenario: &str, us: String, peer: String, target: &str) -> Row {
    Row {
        scenario: scenario.to_string(),
        us,
        peer,
        ratio: "—".into(),
        target: target.to_string(),
        met: "—",
    }
}

fn print_table(rows: &[Row]) {
    println!("| scenario | us | peer | ratio (us/peer) | target | met |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.scenario, r.us, r.peer, r.ratio, r.target, r.met
        );
    }
}

// ---------------------------------------------------------------------------------------

fn bench_diff(rows: &mut Vec<Row>) {
    let n = env_num("BENCH_DIFF_KEYS", 1_000_000);
    eprintln!("diff of {n} source keys…");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["diff", &n.to_string()])
        .output()
        .expect("bench-objects diff runs");
    assert!(
        out.status.success(),
        "bench-objects diff failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("diff prints JSON");
    let rss_mb = v["rss_kib"].as_f64().unwrap() * 1024.0 / 1e6;
    let cpu = v["cpu_s"].as_f64().unwrap();
    let scenario = format!(
        "diff {} src vs {} dst keys ({} to copy), peak RSS",
        v["source"], v["dest"], v["copies"]
    );
    for (peer, peer_mb) in [("s5cmd sync", 1500.0), ("rclone sync", 1000.0)] {
        rows.push(row(
            &scenario,
            format!("{rss_mb:.1} MB"),
            format!("{peer} ~{peer_mb:.0} MB per 1M keys (known, not measured)"),
            format!("{:.3}×", rss_mb / (peer_mb * n as f64 / 1e6)),
            "≤ 100 MB",
            rss_mb <= 100.0,
        ));
    }
    rows.push(row(
        &format!(
            "diff {} src vs {} dst keys, CPU (user+sys)",
            v["source"], v["dest"]
        ),
        format!("{cpu:.2} s (wall {:.2} s)", v["wall_s"].as_f64().unwrap()),
        "—".into(),
        "—".into(),
        "≤ 5 s",
        cpu <= 5.0,
    ));
}

/// Writes `count` objects of `kib` KiB straight into the bucket's directory.
fn seed_small(bucket: &Path, count: u64, kib: u64) {
    let mut buf = vec![0u8; (kib * 1024) as usize];
    for i in 0..count {
        let dir = bucket.join(format!("d{:03}", i / 1000));
        if i % 1000 == 0 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        fastrand::fill(&mut buf);
        std::fs::write(dir.join(format!("obj-{i:06}.bin")), &buf).unwrap();
    }
}

fn bench_small(rt: &tokio::runtime::Runtime, s: &S3fs, t: &Tools, rows: &mut Vec<Row>) {
    let count = env_num("BENCH_OBJECTS", 10_000);
    let kib = env_num("BENCH_OBJECT_KIB", 16);
    let trials = env_num("BENCH_TRIALS", 3).max(1);
    eprintln!("seeding {count} × {kib} KiB…");
    let src = s.bucket("small-src");
    seed_small(&src, count, kib);
    std::process::Command::new("sync").status().ok();

    let names = ["us", "s5cmd", "rclone"];
    let mut cold: [Vec<Duration>; 3] = Default::default();
    let mut noop: [Vec<Duration>; 3] = Default::default();
    let mut failures: [Option<String>; 3] = Default::default();
    for trial in 0..trials {
        // Rotate who goes first so no tool always meets a cold or a warm server.
        for k in 0..3 {
            let which = (k + trial as usize) % 3;
            if failures[which].is_some() {
                continue;
            }
            let bucket = format!("small-{}-{trial}", names[which]);
            let dst = s.bucket(&bucket);
            let cmd = |_: ()| match which {
                0 => t.ours(s, "s3://small-src", &format!("s3://{bucket}"), &[]),
                1 => t.s5cmd(
                    s,
                    &[
                        "sync",
                        "--size-only",
                        "s3://small-src/*",
                        &format!("s3://{bucket}/"),
                    ],
                ),
                _ => t.rclone(
                    s,
                    &[
                        "sync",
                        "--size-only",
                        "--transfers",
                        "64",
                        "--checkers",
                        "64",
                        "-v",
                        "s3:small-src",
                        &format!("s3:{bucket}"),
                    ],
                ),
            };
            eprintln!("trial {}: {} cold…", trial + 1, names[which]);
            let first = run(rt, cmd(()));
            let copied_all = same_tree(&src, &dst);
            match (&first.ok, &copied_all) {
                (true, Ok(_)) => cold[which].push(first.dur),
                (_, Err(e)) => {
                    failures[which] = Some(format!(
                        "cold copy wrong ({e}); exit ok: {}; {}",
                        first.ok,
                        first.error_text()
                    ));
                    s.drop_bucket(&bucket);
                    continue;
                }
                (false, Ok(_)) => {
                    failures[which] = Some(format!("cold copy failed: {}", first.error_text()));
                    s.drop_bucket(&bucket);
                    continue;
                }
            }
            if which == 0
                && let Some((copied, _, failed)) = ours_copied(&first)
            {
                assert_eq!((copied, failed), (count, 0), "our cold run's report");
            }
            eprintln!("trial {}: {} no-op…", trial + 1, names[which]);
            let again = run(rt, cmd(()));
            let copies = match which {
                0 => ours_copied(&again).map(|c| c.0).unwrap_or(u64::MAX),
                1 => again
                    .stdout
                    .lines()
                    .filter(|l| l.starts_with("cp "))
                    .count() as u64,
                _ => again.stderr.matches(": Copied").count() as u64,
            };
            if !again.ok || copies != 0 {
                failures[which] = Some(format!(
                    "no-op re-run: exit ok {}, {copies} copies: {}",
                    again.ok,
                    again.error_text()
                ));
            } else {
                noop[which].push(again.dur);
            }
            s.drop_bucket(&bucket);
        }
    }
    let cell = |which: usize, v: &[Duration]| -> String {
        match &failures[which] {
            Some(e) if v.is_empty() => format!("failed: {e}"),
            failed => {
                let d = median(v.to_vec());
                let runs: Vec<String> = v
                    .iter()
                    .map(|r| format!("{:.2}", r.as_secs_f64()))
                    .collect();
                let later = failed
                    .as_ref()
                    .map(|e| format!("; a later trial failed: {e}"))
                    .unwrap_or_default();
                format!(
                    "{} ({:.0} objects/s; runs {} s{later})",
                    secs(d),
                    count as f64 / d.as_secs_f64(),
                    runs.join(", ")
                )
            }
        }
    };
    let peers = [
        ("s5cmd sync --size-only", 1usize),
        ("rclone sync --size-only --transfers 64 --checkers 64", 2),
    ];
    // The targets (issue 17): a cold copy at least as fast as s5cmd; a no-op in at most
    // half s5cmd's time and no slower than rclone (which lists folder by folder).
    let target_of = |label: &str, which: usize| match (label, which) {
        ("cold copy", 1) => Some(1.0),
        ("no-op re-run", 1) => Some(0.5),
        ("no-op re-run", _) => Some(1.0),
        _ => None,
    };
    for (label, runs) in [("cold copy", &cold), ("no-op re-run", &noop)] {
        let scenario = format!(
            "{label}, {count} × {kib} KiB S3→S3 in {} folders (s3s-fs, median of {trials})",
            count.div_ceil(1000)
        );
        for (peer, which) in peers {
            let limit = target_of(label, which);
            let binding = limit.is_some();
            let (u, p) = (&runs[0], &runs[which]);
            let ratio = if u.is_empty() || p.is_empty() {
                None
            } else {
                Some(median(u.clone()).as_secs_f64() / median(p.clone()).as_secs_f64())
            };
            let target = match limit {
                Some(l) => format!("≤ {l:.1}×"),
                None => "— (reference)".into(),
            };
            let peer_cell = format!("{peer}: {}", cell(which, p));
            let ratio_cell = ratio.map_or("—".into(), |r| format!("{r:.2}×"));
            let met = match ratio {
                Some(r) if binding => {
                    if r <= limit.unwrap_or(1.0) {
                        "yes"
                    } else {
                        "**no**"
                    }
                }
                None if binding => "**no**",
                _ => "—",
            };
            rows.push(Row {
                scenario: scenario.clone(),
                us: cell(0, u),
                peer: peer_cell,
                ratio: ratio_cell,
                target,
                met,
            });
        }
    }
    // Our no-op's peak RSS (a fresh copy, then the no-op watched), and the time of one
    // plain (flat) listing of the source, the floor a one-listing diff cannot beat.
    let rss_bucket = "small-rss";
    s.bucket(rss_bucket);
    let dst = format!("s3://{rss_bucket}");
    let first = run(rt, t.ours(s, "s3://small-src", &dst, &[]));
    if first.ok {
        let mut c = t.ours(s, "s3://small-src", &dst, &[]);
        let c = std::mem::replace(c.as_std_mut(), std::process::Command::new("true"));
        let (noop, peak_kib) = run_with_peak_rss(c);
        let mib = peak_kib as f64 / 1024.0;
        rows.push(row(
            &format!("no-op re-run, {count} objects: our peak RSS"),
            format!("{mib:.0} MiB (in {})", secs(noop.dur)),
            "—".into(),
            "—".into(),
            "≤ 100 MB",
            noop.ok && (peak_kib * 1024) as f64 <= 100e6,
        ));
    } else {
        rows.push(note(
            &format!("no-op re-run, {count} objects: our peak RSS"),
            format!("failed: {}", first.error_text()),
            "—".into(),
            "≤ 100 MB",
        ));
    }
    s.drop_bucket(rss_bucket);
    let flat = run(rt, t.s5cmd(s, &["ls", "s3://small-src/*"]));
    rows.push(note(
        &format!("one plain listing of the {count} source objects"),
        "—".into(),
        format!(
            "s5cmd ls (flat ListObjectsV2): {}{}",
            secs(flat.dur),
            if flat.ok { "" } else { " (failed)" }
        ),
        "— (reference)",
    ));
    s.drop_bucket("small-src");
}

/// A file of `size` random bytes (a multiple of 8 MiB).
fn write_random(path: &Path, size: u64) {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut chunk = vec![0u8; 8 << 20];
    for _ in 0..size / chunk.len() as u64 {
        fastrand::fill(&mut chunk);
        f.write_all(&chunk).unwrap();
    }
    f.flush().unwrap();
}

/// Runs a command to its end, reading its peak RSS (VmHWM, KiB) from /proc every 10 ms;
/// the last reading before it exits is its peak (VmHWM only grows).
fn run_with_peak_rss(mut c: std::process::Command) -> (Out, u64) {
    let t = Instant::now();
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    let status_file = format!("/proc/{}/status", child.id());
    // Read the pipes on their own threads so a chatty child never blocks on them.
    let pipe = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut v);
            }
            v
        })
    };
    let out = pipe(child.stdout.take().map(|r| Box::new(r) as _));
    let err = pipe(child.stderr.take().map(|r| Box::new(r) as _));
    let mut peak = 0u64;
    let status = loop {
        if let Some(kib) = std::fs::read_to_string(&status_file).ok().and_then(|st| {
            st.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        }) {
            peak = peak.max(kib);
        }
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t.elapsed() > LIMIT {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = Out {
        dur: t.elapsed(),
        ok: status.success(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    (out, peak)
}

/// 4. Memory of one machine moving big objects by streaming (GET a range → PUT a part):
/// peak RSS for objects of 1× and 2× `BENCH_MEM_GIB` with 64 MiB parts, the default
/// request slots (64) and `--stream-buffer` of `BENCH_MEM_BUFFER_MIB`. It should follow
/// the buffer, not the object's size.
fn bench_memory(s: &S3fs, t: &Tools, rows: &mut Vec<Row>) {
    let gib = env_num("BENCH_MEM_GIB", 1);
    let buffer_mib = env_num("BENCH_MEM_BUFFER_MIB", 256);
    let part_mib = 64u64;
    let scenario = format!(
        "peak RSS streaming one object, {part_mib} MiB parts, --stream-buffer {buffer_mib} MiB"
    );
    let target = format!("≤ {buffer_mib} MiB + 64 MiB, for both sizes");
    if gib == 0 {
        rows.push(note(
            &scenario,
            "skipped (BENCH_MEM_GIB=0)".into(),
            "—".into(),
            &target,
        ));
        return;
    }
    let bound_mib = buffer_mib + 64;
    let mut cells = Vec::new();
    let mut met = true;
    for n in [gib, 2 * gib] {
        let size = n << 30;
        let src = s.bucket("mem-src").join("big.bin");
        write_random(&src, size);
        let dst = s.bucket("mem-dst");
        let cmd = t.ours(
            s,
            "s3://mem-src",
            "s3://mem-dst",
            &[
                "--copy-mode",
                "stream",
                "--part-size",
                &(part_mib << 20).to_string(),
                "--stream-buffer",
                &(buffer_mib << 20).to_string(),
            ],
        );
        eprintln!("streaming a {n} GiB object, {buffer_mib} MiB of buffer…");
        let (o, kib) = run_with_peak_rss(cmd.into_std());
        let mib = kib / 1024;
        let checked = same_big(&src, &dst.join("big.bin"));
        match (o.ok, checked) {
            (true, Ok(())) => {
                met &= mib <= bound_mib;
                cells.push(format!("{n} GiB: {mib} MiB ({})", secs(o.dur)));
            }
            (true, Err(e)) => {
                met = false;
                cells.push(format!("{n} GiB: exit 0 but {e}"));
            }
            (false, _) => {
                met = false;
                cells.push(format!(
                    "{n} GiB: failed after {}: {}",
                    secs(o.dur),
                    o.error_text()
                ));
            }
        }
        s.drop_bucket("mem-src");
        s.drop_bucket("mem-dst");
    }
    rows.push(row(
        &scenario,
        cells.join("; "),
        format!("bound {bound_mib} MiB"),
        "—".into(),
        &target,
        met,
    ));
}

/// Free bytes on the file system of `dir` (from `df`).
fn free_bytes(dir: &Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()
        .expect("df runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0)
}

/// The destination file is the source's size and agrees at 64 places spread over it.
fn same_big(src: &Path, dst: &Path) -> Result<(), String> {
    use std::io::{Read, Seek, SeekFrom};
    let len = std::fs::metadata(src).unwrap().len();
    let got = std::fs::metadata(dst)
        .map_err(|e| format!("{}: {e}", dst.display()))?
        .len();
    if got != len {
        return Err(format!(
            "{got} bytes at the destination, {len} at the source"
        ));
    }
    let (mut a, mut b) = (
        std::fs::File::open(src).unwrap(),
        std::fs::File::open(dst).unwrap(),
    );
    let (mut x, mut y) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    for k in 0..=64u64 {
        let at = (len - x.len() as u64) / 64 * k;
        a.seek(SeekFrom::Start(at)).unwrap();
        b.seek(SeekFrom::Start(at)).unwrap();
        a.read_exact(&mut x).unwrap();
        b.read_exact(&mut y).unwrap();
        if x != y {
            return Err(format!("bytes differ near offset {at}"));
        }
    }
    Ok(())
}

fn bench_big(rt: &tokio::runtime::Runtime, s: &S3fs, t: &Tools, rows: &mut Vec<Row>) {
    let gib = env_num("BENCH_BIG_GIB", 6);
    let scenario = format!("one {gib} GiB object S3→S3 (s3s-fs, server-side)");
    if gib == 0 {
        rows.push(note(
            &scenario,
            "skipped (BENCH_BIG_GIB=0)".into(),
            "—".into(),
            "≤ 1.1× rclone",
        ));
        return;
    }
    let size = gib << 30;
    // The source, the parts of one copy and the object they become: 3 × size at the peak.
    let need = (3 * size).max(20_000_000_000);
    let free = free_bytes(&s.root);
    if free < need {
        rows.push(note(
            &scenario,
            format!(
                "skipped: {:.1} GB free under {}, {:.1} GB needed",
                free as f64 / 1e9,
                s.root.display(),
                need as f64 / 1e9
            ),
            "—".into(),
            "≤ 1.1× rclone",
        ));
        return;
    }
    eprintln!("writing a {gib} GiB object…");
    let src = s.bucket("big-src").join("big.bin");
    write_random(&src, size);
    let trials = env_num("BENCH_BIG_TRIALS", 1).max(1);
    let default_parts = env_num("BENCH_BIG_DEFAULT_PARTS", 1) != 0;
    let flush = || {
        std::process::Command::new("sync").status().ok();
    };
    // rclone's server-side copy makes parts of its copy cutoff (4768 MiB by default), one
    // at a time; "us, same parts" asks for that part size, so both send the same requests.
    let rclone_part = (4768u64 << 20).to_string();
    let names = [
        "us (64 MiB parts)",
        "us (rclone's parts)",
        "rclone",
        "s5cmd",
    ];
    let mut results: [Vec<Result<Duration, String>>; 4] = Default::default();
    for trial in 0..trials {
        for which in [1usize, 2, 3, 0] {
            if which == 0 && !default_parts {
                continue;
            }
            let bucket = format!("big-{which}-{trial}");
            let dst = s.bucket(&bucket);
            flush();
            let dst_url = format!("s3://{bucket}");
            let cmd = match which {
                0 => t.ours(s, "s3://big-src", &dst_url, &["--copy-mode", "server"]),
                1 => t.ours(
                    s,
                    "s3://big-src",
                    &dst_url,
                    &["--copy-mode", "server", "--part-size", &rclone_part],
                ),
                2 => t.rclone(
                    s,
                    &["copy", "-v", "s3:big-src/big.bin", &format!("s3:{bucket}")],
                ),
                _ => t.s5cmd(
                    s,
                    &[
                        "cp",
                        "s3://big-src/big.bin",
                        &format!("s3://{bucket}/big.bin"),
                    ],
                ),
            };
            eprintln!("trial {}: {gib} GiB with {}…", trial + 1, names[which]);
            let o = run(rt, cmd);
            let checked = same_big(&src, &dst.join("big.bin"));
            // Our report says how many attempts the object took.
            let retried = serde_json::from_str::<serde_json::Value>(&o.stdout)
                .ok()
                .and_then(|v| v["items"][0]["attempts"].as_u64())
                .filter(|a| *a > 1)
                .map(|a| format!(", {a} attempts"))
                .unwrap_or_default();
            results[which].push(match (o.ok, checked) {
                (true, Ok(())) => Ok(o.dur),
                (true, Err(e)) => Err(format!("exit 0 but {e} after {}", secs(o.dur))),
                (false, _) => Err(format!(
                    "failed after {}{retried}: {}",
                    secs(o.dur),
                    o.error_text()
                )),
            });
            if !retried.is_empty() {
                eprintln!("  {}{retried}", names[which]);
            }
            s.drop_bucket(&bucket);
            // Parts of a failed upload stay at the root: remove them too.
            for e in std::fs::read_dir(&s.root).unwrap().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(".upload_id-") || n.starts_with(".upload-") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    s.drop_bucket("big-src");
    let summary = |v: &[Result<Duration, String>]| -> (Option<Duration>, String) {
        let ok: Vec<Duration> = v.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
        match v.iter().find_map(|r| r.as_ref().err()) {
            Some(e) => (None, e.clone()),
            None if ok.is_empty() => (None, "not run".into()),
            None => {
                let d = median(ok);
                (
                    Some(d),
                    format!(
                        "{} ({:.0} MiB/s)",
                        secs(d),
                        (size >> 20) as f64 / d.as_secs_f64()
                    ),
                )
            }
        }
    };
    let (u0, u0cell) = summary(&results[0]);
    let (u1, u1cell) = summary(&results[1]);
    let (r, rcell) = summary(&results[2]);
    let (_, scell) = summary(&results[3]);
    let ratio = |u: Option<Duration>| u.zip(r).map(|(u, r)| u.as_secs_f64() / r.as_secs_f64());
    let peer = format!("rclone copy (server-side, parts of 4768 MiB one at a time): {rcell}");
    let parts_of = |p: u64| size.div_ceil(p);
    rows.push(row(
        &format!(
            "{scenario}, same parts as rclone ({} × UploadPartCopy ≤ 4768 MiB), {trials} trial(s)",
            parts_of(4768 << 20)
        ),
        format!("{u1cell}; --part-size {rclone_part}"),
        peer.clone(),
        ratio(u1).map_or("—".into(), |r| format!("{r:.2}×")),
        "≤ 1.1× rclone",
        ratio(u1).is_some_and(|r| r <= 1.1),
    ));
    if default_parts {
        rows.push(Row {
            scenario: format!(
                "{scenario}, our default 64 MiB parts ({} × UploadPartCopy, 64 at once), {trials} trial(s)",
                parts_of(64 << 20)
            ),
            us: u0cell,
            peer,
            ratio: ratio(u0).map_or("—".into(), |r| format!("{r:.2}×")),
            target: "— (s3s-fs 0.14 reads every ranged part copy on to the end of the file: \
                     its cost grows with the square of the part count)"
                .into(),
            met: "—",
        });
    }
    rows.push(note(
        &format!("{scenario}, s5cmd"),
        "—".into(),
        format!(
            "s5cmd cp (one CopyObject; AWS S3 refuses those over 5 GiB, s3s-fs has no such limit): {scell}"
        ),
        "known to fail over 5 GiB on AWS",
    ));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("diff") {
        let n = args
            .get(2)
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        diff_child(n);
        return;
    }
    let started = Instant::now();
    let mut rows = Vec::new();
    bench_diff(&mut rows);

    let base = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let work = tempfile::Builder::new()
        .prefix("bench-objects-")
        .tempdir_in(base)
        .unwrap();
    let (data, home, state_dir) = (
        work.path().join("data"),
        work.path().join("home"),
        work.path().join("state"),
    );
    for d in [&data, &home, &state_dir] {
        std::fs::create_dir_all(d).unwrap();
    }
    // rclone's remote comes from the environment; an empty file keeps it from asking.
    std::fs::write(home.join("rclone.conf"), "").unwrap();
    let server = S3fs::start(&data, &work.path().join("s3s-fs.log"));
    let tools = Tools {
        us: transfer_hub_bin(),
        s5cmd: std::env::var_os("S5CMD").map_or_else(|| require("s5cmd"), PathBuf::from),
        rclone: require("rclone"),
        home,
        state_dir,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    bench_small(&rt, &server, &tools, &mut rows);
    bench_big(&rt, &server, &tools, &mut rows);
    bench_memory(&server, &tools, &mut rows);
    drop(server);

    print_table(&rows);
    println!(
        "\nNotes: s3s-fs 0.14 walks and sorts the whole bucket for every ListObjectsV2 page, so a flat \
         listing of N keys costs N²/1000 file stats; rclone lists directory by directory \
         (delimiter `/`, 1,000 keys each here), which is why its no-op is fast on this server \
         and says little about S3. Ranged reads (GET with Range, UploadPartCopy) read on to the \
         end of the file, so many small parts cost far more than a few big ones."
    );
    println!(
        "\n(bench-objects: {:.0} s; figures are medians of runs in this process, on loopback)",
        started.elapsed().as_secs_f64()
    );
}
