//! Console page times on a big state file: 10,000 runs over 100 tasks (5,000 of them on one
//! task) and 1,000,000 item records (one run of 900,000 items, the rest spread over the other
//! runs), served by the real `transfer-hub serve` and read over HTTP after a password login, as a browser would.
//! Prints one row per page: p50, p95 and max of the round trips, and the verdict against the
//! issue's target (every page ≤ 100 ms p95).
//!
//! `cargo run -p hub-tests --bin bench-console [-- --samples N]`

use hub_core::status::SqliteStore;
use hub_core::tasks::store::TaskStore as _;
use hub_core::tasks::{Kind, Task, default_fields};
use hub_tests::{free_port, transfer_hub_bin};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TASKS: usize = 100;
const RUNS: usize = 10_000;
const BIG_ITEMS: usize = 900_000;
const ITEMS: usize = 1_000_000;
const PASSWORD: &str = "bench-password-only";
const TARGET_MS: f64 = 100.0;

fn item_key(i: usize) -> String {
    format!("src.example/team/app-{:04}:v{:03}", i / 1000, i % 1000)
}

/// Writes the tasks through the store's API and the runs and items in one transaction.
fn seed(path: &std::path::Path) -> (String, String) {
    let store = SqliteStore::open(path).unwrap();
    let now = chrono::Utc::now();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for t in 0..TASKS {
        let mut f = default_fields(Kind::Images);
        f.insert("source".into(), "src.example/team".into());
        f.insert("dest".into(), format!("dst.example/mirror-{t}"));
        f.insert("all_repos".into(), "true".into());
        f.insert("schedule".into(), "rate(1 day)".into());
        let task = Task::from_fields(&format!("task-{t:03}"), Kind::Images, &f, now).unwrap();
        rt.block_on(store.create(&task)).unwrap();
        // Scheduled just now: serve starts no catch-up run while it is measured.
        rt.block_on(store.set_last_scheduled(&task.name, now))
            .unwrap();
    }
    drop(store);
    let mut c = rusqlite::Connection::open(path).unwrap();
    let tx = c.transaction().unwrap();
    let start = now - chrono::Duration::days(400);
    let mut small_items = ITEMS - BIG_ITEMS;
    let per_small = small_items / (RUNS - 1);
    let (mut big_run, mut big_task) = (String::new(), String::new());
    {
        let mut run = tx
            .prepare(
                "INSERT INTO runs (run_id, source, dest, dry_run, started_at, ended_at, copied, skipped, failed, bytes)
                 VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .unwrap();
        let mut link = tx
            .prepare("INSERT INTO task_runs (run_id, task, started_at) VALUES (?1, ?2, ?3)")
            .unwrap();
        let mut item = tx
            .prepare(
                "INSERT INTO items (run_id, source, dest, status, source_digest, dest_digest, attempts,
                   error_class, error_message, bytes, started_at, ended_at, version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, 1, ?6, ?7, 1024, ?8, ?8, 1)",
            )
            .unwrap();
        for r in 0..RUNS {
            // Half of the runs belong to task-000 (its history is 100 pages deep), the rest
            // to the other tasks in turn.
            let task = if r % 2 == 0 {
                "task-000".to_string()
            } else {
                format!("task-{:03}", 1 + (r / 2) % (TASKS - 1))
            };
            let id = format!("run-{r:05}");
            let at = (start + chrono::Duration::minutes(r as i64 * 55)).to_rfc3339();
            let n = if r == RUNS / 2 {
                big_run = id.clone();
                big_task = task.clone();
                BIG_ITEMS
            } else {
                let n = per_small.min(small_items);
                small_items -= n;
                n
            };
            let failed = n / 20;
            run.execute(rusqlite::params![
                id,
                "src.example/team",
                "dst.example/mirror",
                at,
                at,
                (n - failed) as i64,
                0,
                failed as i64,
                (n * 1024) as i64
            ])
            .unwrap();
            link.execute(rusqlite::params![id, task, at]).unwrap();
            for i in 0..n {
                let src = item_key(i);
                let bad = i % 20 == 7;
                let digest = format!("sha256:{:064x}", i);
                item.execute(rusqlite::params![
                    id,
                    src,
                    src.replace("src.example/team", "dst.example/mirror"),
                    if bad { "failed" } else { "copied" },
                    digest,
                    bad.then_some("retryable"),
                    bad.then_some("503 Service Unavailable from the source"),
                    at
                ])
                .unwrap();
            }
        }
    }
    tx.commit().unwrap();
    (big_task, big_run)
}

struct Serve(Child);
impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn login(client: &reqwest::blocking::Client, base: &str) -> String {
    let r = client.get(format!("{base}/login")).send().unwrap();
    let nonce_cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.split(';').next().map(str::to_string))
        .expect("the login page sets its nonce cookie");
    let body = r.text().unwrap();
    let nonce = body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the login form carries its CSRF nonce")
        .to_string();
    let r = client
        .post(format!("{base}/login"))
        .header("cookie", nonce_cookie)
        .form(&[("csrf", nonce.as_str()), ("password", PASSWORD)])
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 303, "the password logs in");
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.split(';').next().map(str::to_string))
        .expect("a session cookie")
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn main() {
    let samples: usize = std::env::args()
        .skip_while(|a| a != "--samples")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    let t0 = Instant::now();
    let (big_task, big_run) = seed(&state);
    eprintln!(
        "seeded {TASKS} tasks, {RUNS} runs, {ITEMS} items in {:.1} s ({} MB)",
        t0.elapsed().as_secs_f64(),
        std::fs::metadata(&state).unwrap().len() >> 20
    );
    let port = free_port();
    let child = Command::new(transfer_hub_bin())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--state"])
        .arg(&state)
        .env("TRANSFER_HUB_CONSOLE_PASSWORD", PASSWORD)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("serve.log")).unwrap())
        .spawn()
        .unwrap();
    let mut serve = Serve(child);
    let mut first = String::new();
    let mut out = BufReader::new(serve.0.stdout.take().unwrap());
    out.read_line(&mut first).unwrap();
    std::thread::spawn(move || for _ in out.lines() {});
    assert!(first.contains("console: http://"), "serve started: {first}");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let cookie = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| login(&client, &base)))
        .unwrap_or_else(|_| {
            let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
            panic!("login failed; serve's log:\n{log}")
        });

    let deep_item = item_key(BIG_ITEMS * 8 / 10);
    let pages: Vec<(&str, String)> = vec![
        ("tasks, first page", "/tasks".into()),
        ("tasks, after task-060", "/tasks?after=task-060".into()),
        ("task, newest runs", format!("/tasks/{big_task}")),
        (
            "task, oldest runs",
            format!(
                "/tasks/{big_task}?{}",
                older_query(&client, &base, &cookie, &big_task)
            ),
        ),
        ("run of 900k items, first page", format!("/runs/{big_run}")),
        (
            "run of 900k items, 80% in",
            format!("/runs/{big_run}?after={}", urlencode(&deep_item)),
        ),
        (
            "run of 900k items, failed only",
            format!("/runs/{big_run}?failed=1"),
        ),
        (
            "run of 900k items, failed only, 80% in",
            format!("/runs/{big_run}?failed=1&after={}", urlencode(&deep_item)),
        ),
        ("run of 10 items", "/runs/run-00001".into()),
    ];
    println!("| page | p50 ms | p95 ms | max ms | bytes | ≤ {TARGET_MS} ms p95 |");
    println!("|---|---|---|---|---|---|");
    let mut all_ok = true;
    for (name, path) in &pages {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..samples {
            let t = Instant::now();
            let r = client
                .get(format!("{base}{path}"))
                .header("cookie", &cookie)
                .send()
                .unwrap();
            assert_eq!(r.status().as_u16(), 200, "{path}");
            bytes = r.bytes().unwrap().len();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        let p95 = pct(&times, 0.95);
        let ok = p95 <= TARGET_MS;
        all_ok &= ok;
        println!(
            "| {name} | {:.1} | {p95:.1} | {:.1} | {bytes} | {} |",
            pct(&times, 0.5),
            times[times.len() - 1],
            if ok { "yes" } else { "NO" }
        );
    }
    drop(serve);
    println!(
        "\n{samples} requests per page; {TASKS} tasks, {RUNS} runs, {ITEMS} items. {}",
        if all_ok {
            "Every page met the target."
        } else {
            "Some pages missed the target."
        }
    );
}

/// The query of the task page's last "Older" page, found by following its links.
fn older_query(client: &reqwest::blocking::Client, base: &str, cookie: &str, task: &str) -> String {
    let mut query = String::new();
    loop {
        let body = client
            .get(format!("{base}/tasks/{task}?{query}"))
            .header("cookie", cookie)
            .send()
            .unwrap()
            .text()
            .unwrap();
        let Some(next) = body
            .split("href=\"")
            .filter_map(|s| s.split('"').next())
            .filter(|h| h.starts_with(&format!("/tasks/{task}?")))
            .find(|h| body.contains(&format!("href=\"{h}\">Older")))
        else {
            return query;
        };
        query = next.split_once('?').unwrap().1.replace("&amp;", "&");
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
