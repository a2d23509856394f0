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

    // `status` says what happened: the run was interrupted, and by what.
    let st = hub_tests::transfer_hub(&["status", "--state", state.to_str().unwrap()], &[]);
    assert_eq!(st.code, 0, "{}", st.stderr);
    assert!(
        st.stdout.contains(": interrupted")
            && st.stdout.contains(&format!("interrupted by {name}")),
        "{}",
        st.stdout
    );
    let sj = hub_tests::transfer_hub(
        &["status", "--state", state.to_str().unwrap(), "-o", "json"],
        &[],
    )
    .json();
    assert_eq!(sj["result"], "interrupted", "{sj:#}");
    assert_eq!(
        sj["error"],
        format!("interrupted by {name}").as_str(),
        "{sj:#}"
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

/// `objects sync` on SIGTERM in the middle of a multipart copy (part 2 of 3 held at the
/// destination): it exits 143 at once, the run is recorded as interrupted (`status` says
/// so), the open upload stays in the ledger with its finished parts, and the same command
/// again resumes it (sends only the part that was not done) and ends with the destination
/// of a clean run and no upload left open. Before, the CLI had no handler for objects and
/// died of the signal: nothing recorded the run's end.
#[test]
fn objects_sync_on_sigterm_mid_multipart_records_the_run_interrupted_and_a_rerun_resumes_it() {
    use hub_tests::faults::{FaultProxy, Faults, Flavor, Hold};
    use hub_tests::{MotoServer, aws_fixtures, transfer_hub};
    const MIB: usize = 1024 * 1024;
    let moto = MotoServer::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let conf = rt.block_on(moto.sdk_config("eu-west-1"));
    for b in ["src", "dst", "clean"] {
        rt.block_on(aws_fixtures::bucket(&conf, b));
    }
    let s3 = aws_sdk_s3::Client::new(&conf);
    let big: Vec<u8> = (0..12 * MIB).map(|i| (i % 251) as u8).collect();
    rt.block_on(
        s3.put_object()
            .bucket("src")
            .key("big.bin")
            .body(big.clone().into())
            .send(),
    )
    .unwrap();
    for k in ["a.txt", "b.txt"] {
        rt.block_on(
            s3.put_object()
                .bucket("src")
                .key(k)
                .body(k.as_bytes().to_vec().into())
                .send(),
        )
        .unwrap();
    }
    let open_uploads = |bucket: &str| {
        rt.block_on(s3.list_multipart_uploads().bucket(bucket).send())
            .unwrap()
            .uploads()
            .len()
    };
    let proxy = FaultProxy::start(&moto.endpoint, Faults::none(Flavor::S3));
    let held = proxy.trap(
        Arc::new(|h: &str| h.starts_with("PUT /dst/big.bin?") && h.contains("partNumber=2")),
        Hold::Before,
    );
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let ep = proxy.endpoint();
    let args = |dest: &str, endpoint: &str| {
        [
            "objects",
            "sync",
            "s3://src",
            dest,
            "--source-endpoint",
            moto.endpoint.as_str(),
            "--dest-endpoint",
            endpoint,
            "--multipart-threshold",
            &(6 * MIB).to_string(),
            "--part-size",
            &(5 * MIB).to_string(),
            "--output",
            "json",
            "--state",
            db.to_str().unwrap(),
        ]
        .map(str::to_string)
    };
    let env = moto.env("eu-west-1");
    let mut child = Command::new(transfer_hub_bin())
        .args(args("s3://dst", &ep))
        .envs(env.iter().cloned())
        .env("HOME", dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    held.recv_timeout(Duration::from_secs(120))
        .expect("part 2 reached the destination");
    // Parts 1 and 3 are written down once they are answered.
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy
        .log()
        .iter()
        .filter(|l| l.line.starts_with("PUT /dst/big.bin?") && l.line.contains("partNumber="))
        .count()
        < 3
    {
        assert!(Instant::now() < deadline, "the other parts were not sent");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the CLI did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    proxy.release();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    assert_eq!(status.code(), Some(143), "128 + SIGTERM\n{stderr}");
    assert!(stderr.contains("interrupted by SIGTERM"), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("a report on stdout");
    assert_eq!(report["result"], "interrupted", "{report:#}");
    assert_eq!(report["error"], "interrupted by SIGTERM", "{report:#}");
    let big_rec: Vec<&serde_json::Value> = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["source"] == "s3://src/big.bin")
        .collect();
    assert_eq!(big_rec.len(), 1, "{report:#}");
    assert_eq!(big_rec[0]["status"], "failed");
    assert!(
        big_rec[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("interrupted by SIGTERM"),
        "{report:#}"
    );
    assert_eq!(
        open_uploads("dst"),
        1,
        "the upload stays open for the re-run"
    );

    // `status` shows the run as interrupted.
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let st = transfer_hub(&["status", "--state", db.to_str().unwrap()], &env_ref);
    assert_eq!(st.code, 0, "{}", st.stderr);
    assert!(
        st.stdout.contains("interrupted by SIGTERM"),
        "{}",
        st.stdout
    );

    // The same command again resumes the upload: only part 2 is sent.
    let before = proxy.log().len();
    let a = args("s3://dst", &ep);
    let again = transfer_hub(&a.iter().map(String::as_str).collect::<Vec<_>>(), &env_ref);
    assert_eq!(again.code, 0, "{}\n{}", again.stdout, again.stderr);
    let parts_sent: Vec<String> = proxy.log()[before..]
        .iter()
        .filter(|l| l.line.starts_with("PUT /dst/big.bin?") && l.line.contains("partNumber="))
        .map(|l| l.line.clone())
        .collect();
    assert_eq!(
        parts_sent.len(),
        1,
        "only the unfinished part: {parts_sent:?}"
    );
    assert!(parts_sent[0].contains("partNumber=2"), "{parts_sent:?}");
    assert_eq!(open_uploads("dst"), 0, "no upload left open");

    // The destination equals a clean run's.
    let a = args("s3://clean", &moto.endpoint);
    let clean = transfer_hub(&a.iter().map(String::as_str).collect::<Vec<_>>(), &env_ref);
    assert_eq!(clean.code, 0, "{}", clean.stderr);
    let listing = |bucket: &str| {
        rt.block_on(async {
            let l = s3.list_objects_v2().bucket(bucket).send().await.unwrap();
            let mut out = Vec::new();
            for o in l.contents() {
                let k = o.key().unwrap().to_string();
                let got = s3.get_object().bucket(bucket).key(&k).send().await.unwrap();
                let etag = got.e_tag().map(str::to_string);
                let body = got.body.collect().await.unwrap().to_vec();
                out.push((k, etag, body));
            }
            out
        })
    };
    let (dst, clean) = (listing("dst"), listing("clean"));
    assert_eq!(dst.len(), 3);
    assert!(
        dst == clean,
        "the resumed destination differs from a clean run's"
    );
    assert!(dst.iter().any(|(k, _, b)| k == "big.bin" && *b == big));
}
