//! Ctrl-C / SIGTERM in the middle of copies: the CLI kills its skopeo children, removes the
//! temp auth file, records what it did not finish, exits 130/143, and a re-run copies the rest.

use super::images::{list, sync};
use hub_tests::{HttpProxy, OciImage, RegistryServer, transfer_hub_bin, write_authfile};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Command lines of every process now.
fn command_lines() -> Vec<String> {
    processes().into_iter().map(|(_, c)| c).collect()
}

/// Every process: its parent's pid and its command line.
pub fn processes() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(b) = std::fs::read(e.path().join("cmdline")) {
            if !b.is_empty() {
                // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
                let ppid = std::fs::read_to_string(e.path().join("stat"))
                    .ok()
                    .and_then(|st| {
                        st.rsplit_once(')')?
                            .1
                            .split_whitespace()
                            .nth(1)?
                            .parse()
                            .ok()
                    })
                    .unwrap_or(0);
                out.push((ppid, String::from_utf8_lossy(&b).replace('\0', " ")));
            }
        }
    }
    out
}

/// A proxy in front of a registry that holds every blob download for a while.
pub fn slow_blobs(upstream: &str, delay: Duration) -> HttpProxy {
    let up = upstream.to_string();
    HttpProxy::start(
        Arc::new(move |head: &str| {
            if head.starts_with("GET /v2/") && head.contains("/blobs/") {
                std::thread::sleep(delay);
            }
            (up.clone(), head.to_string())
        }),
        Arc::new(|_: &str, status, body| (status, Vec::new(), body)),
    )
}

#[test]
fn sigterm_mid_copy_kills_skopeo_removes_the_auth_file_and_a_rerun_copies_the_rest() {
    interrupt_mid_copy("TERM", 143);
}

#[test]
fn ctrl_c_mid_copy_does_the_same_and_exits_130() {
    interrupt_mid_copy("INT", 130);
}

/// Sends SIG`signal` to a run in the middle of a (held) blob download; checks the exit code,
/// that no skopeo is left, the temp auth file is gone, what is recorded, and the re-run.
fn interrupt_mid_copy(signal: &str, code: i32) {
    let name = format!("SIG{signal}");
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    let imgs: Vec<OciImage> = (0..3).map(|_| OciImage::single(&[64 * 1024])).collect();
    for (i, img) in imgs.iter().enumerate() {
        img.push(&format!("{}/app:{i}", src.addr), None);
    }
    let slow = slow_blobs(&src.addr, Duration::from_secs(3));
    let source = slow.endpoint.trim_start_matches("http://").to_string();
    // A login, so the temp auth file has something to protect.
    let auth = dir.path().join("auth.json");
    write_authfile(&auth, &[(&source, "someone", "sigterm-canary-pw")]);
    let l = list(dir.path(), "app:ALL_TAGS\n");
    let state = dir.path().join("state.db");
    let mut child = Command::new(transfer_hub_bin())
        .args(["images", "sync", "--output", "json", "--concurrency", "1"])
        .args(["--source", &source, "--dest", &dst.addr, "--list"])
        .arg(&l)
        .arg("--authfile")
        .arg(&auth)
        .arg("--state")
        .arg(&state)
        .env("HOME", dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Wait until a skopeo copy runs, and learn the auth file it was handed.
    let deadline = Instant::now() + Duration::from_secs(60);
    let auth_file = loop {
        // This run's own skopeo (tests running beside it start theirs).
        let found = processes().into_iter().find_map(|(ppid, c)| {
            if ppid != child.id() {
                return None;
            }
            let mut w = c.split_whitespace();
            if !w.next().is_some_and(|p| p.ends_with("skopeo")) {
                return None;
            }
            let mut w = c.split_whitespace();
            w.find(|a| *a == "--authfile")?;
            w.next().map(std::path::PathBuf::from)
        });
        if let Some(p) = found {
            break p;
        }
        assert!(Instant::now() < deadline, "no skopeo copy started");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(auth_file.exists());
    std::thread::sleep(Duration::from_millis(500)); // inside the held blob download
    let killed = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the CLI did not exit after {name}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    assert_eq!(status.code(), Some(code), "128 + {name}\n{stderr}");
    let auth_text = auth_file.display().to_string();
    let left: Vec<String> = command_lines()
        .into_iter()
        .filter(|c| c.contains(&auth_text))
        .collect();
    assert!(left.is_empty(), "skopeo outlived the run: {left:?}");
    assert!(!auth_file.exists(), "the temp auth file is still there");
    assert!(!auth_file.parent().unwrap().exists(), "its private dir too");
    assert!(
        stderr.contains(&format!("interrupted by {name}")),
        "{stderr}"
    );

    // What was not finished is recorded as interrupted.
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("a report on stdout");
    let items = report["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{report:#}");
    let interrupted: Vec<&serde_json::Value> =
        items.iter().filter(|i| i["status"] == "failed").collect();
    assert!(!interrupted.is_empty(), "{report:#}");
    for i in &interrupted {
        assert!(
            i["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("interrupted by {name}")),
            "{i}"
        );
    }

    // The same command again (without the slow proxy in the way) copies the rest.
    let r = sync(
        dir.path(),
        &[
            "--source",
            &src.addr,
            "--dest",
            &dst.addr,
            "--list",
            l.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j = r.json();
    assert_eq!(
        j["copied"].as_u64().unwrap() + j["skipped"].as_u64().unwrap(),
        3,
        "{j:#}"
    );
    assert_eq!(j["copied"].as_u64().unwrap(), interrupted.len() as u64);
    for (i, img) in imgs.iter().enumerate() {
        assert_eq!(
            dst.digest("app", &i.to_string()).as_deref(),
            Some(img.digest.as_str())
        );
    }
}

/// Holds the write lock of a SQLite file until dropped (a python3 child in a
/// `BEGIN IMMEDIATE` transaction): a run that must record something waits on it.
struct StateLock(std::process::Child);

impl StateLock {
    fn hold(path: &std::path::Path) -> Self {
        let mut c = Command::new("python3")
            .args([
                "-c",
                "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1], isolation_level=None)\nc.execute('BEGIN IMMEDIATE')\nprint('locked', flush=True)\nsys.stdin.read()\n",
            ])
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(c.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "locked");
        Self(c)
    }
}

impl Drop for StateLock {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

/// The temp auth dirs (`transfer-hub-auth-*`) in `tmp`.
pub fn auth_dirs(tmp: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(tmp)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("transfer-hub-auth-"))
        .collect()
}

/// A second Ctrl-C exits at once (while the first one's wind-down waits on the state
/// file, held locked here), and the temp auth file with the logins is removed all the
/// same: `std::process::exit` runs no destructor, so the exit path removes it itself.
#[test]
fn a_second_ctrl_c_exits_at_once_and_still_removes_the_temp_auth_file() {
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    OciImage::single(&[64 * 1024]).push(&format!("{}/app:1", src.addr), None);
    let slow = slow_blobs(&src.addr, Duration::from_secs(3));
    let source = slow.endpoint.trim_start_matches("http://").to_string();
    let auth = dir.path().join("auth.json");
    write_authfile(&auth, &[(&source, "someone", "second-signal-canary-pw")]);
    let l = list(dir.path(), "app:1\n");
    let state = dir.path().join("state.db");
    // The run's own temp dir, so what it leaves there is seen.
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let mut child = Command::new(transfer_hub_bin())
        .args(["images", "sync", "--output", "json"])
        .args(["--source", &source, "--dest", &dst.addr, "--list"])
        .arg(&l)
        .arg("--authfile")
        .arg(&auth)
        .arg("--state")
        .arg(&state)
        .env("HOME", dir.path())
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = Arc::new(std::sync::Mutex::new(String::new()));
    let pipe = child.stderr.take().unwrap();
    let seen = stderr.clone();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(pipe)).map_while(Result::ok) {
            let mut s = seen.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    let wait_for = |what: &str, done: &mut dyn FnMut() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(
                Instant::now() < deadline,
                "{what}; stderr:\n{}",
                stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("no skopeo copy started", &mut || {
        processes().into_iter().any(|(ppid, c)| {
            ppid == child.id()
                && c.split_whitespace()
                    .next()
                    .is_some_and(|p| p.ends_with("skopeo"))
        })
    });
    assert_eq!(auth_dirs(&tmp).len(), 1, "the run holds its temp auth file");
    let lock = StateLock::hold(&state);
    let signal = |pid: u32| {
        assert!(
            Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
    };
    signal(child.id());
    wait_for("the first Ctrl-C was not heard", &mut || {
        stderr.lock().unwrap().contains("SIGINT: stopping")
    });
    // The wind-down waits for the state file: the run is still there, with its auth file.
    assert!(child.try_wait().unwrap().is_none(), "still winding down");
    signal(child.id());
    let mut status = None;
    wait_for("the second Ctrl-C did not exit", &mut || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    drop(lock);
    reader.join().unwrap();
    assert_eq!(status.unwrap().code(), Some(130));
    assert_eq!(
        auth_dirs(&tmp),
        Vec::<String>::new(),
        "the temp auth file outlived a second Ctrl-C"
    );
}
