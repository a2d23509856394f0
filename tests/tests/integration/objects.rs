//! `transfer-hub objects sync` against moto's S3 on 127.0.0.1, with small proxies where a
//! test needs to see or spoil the traffic.

use aws_sdk_s3::primitives::ByteStream;
use hub_tests::{HttpProxy, MotoServer, Rewrite, Route, aws_fixtures, transfer_hub};
use md5::{Digest, Md5};
use std::sync::{Arc, Mutex};

pub(crate) const REGION: &str = "eu-west-1";

pub(crate) struct S3 {
    pub(crate) moto: MotoServer,
    pub(crate) client: aws_sdk_s3::Client,
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) state: tempfile::TempDir,
}

impl S3 {
    pub(crate) fn start(buckets: &[&str]) -> Self {
        let moto = MotoServer::start();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let conf = rt.block_on(moto.sdk_config(REGION));
        for b in buckets {
            rt.block_on(aws_fixtures::bucket(&conf, b));
        }
        Self {
            client: aws_sdk_s3::Client::new(&conf),
            moto,
            rt,
            state: tempfile::tempdir().unwrap(),
        }
    }

    pub(crate) fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        self.rt
            .block_on(
                self.client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .body(ByteStream::from(body.to_vec()))
                    .send(),
            )
            .unwrap();
    }

    /// A PUT without any checksum header (as older clients write).
    fn put_plain(&self, bucket: &str, key: &str, body: &[u8]) {
        let conf = self.rt.block_on(self.moto.sdk_config(REGION));
        let c = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&conf)
                .request_checksum_calculation(
                    aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
                )
                .build(),
        );
        self.rt
            .block_on(
                c.put_object()
                    .bucket(bucket)
                    .key(key)
                    .body(ByteStream::from(body.to_vec()))
                    .send(),
            )
            .unwrap();
    }

    pub(crate) fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let r = self
            .rt
            .block_on(self.client.get_object().bucket(bucket).key(key).send());
        match r {
            Ok(o) => Some(self.rt.block_on(o.body.collect()).unwrap().to_vec()),
            Err(_) => None,
        }
    }

    pub(crate) fn keys(&self, bucket: &str) -> Vec<String> {
        let o = self
            .rt
            .block_on(self.client.list_objects_v2().bucket(bucket).send())
            .unwrap();
        o.contents()
            .iter()
            .filter_map(|c| c.key().map(str::to_string))
            .collect()
    }

    fn open_uploads(&self, bucket: &str) -> usize {
        let o = self
            .rt
            .block_on(self.client.list_multipart_uploads().bucket(bucket).send())
            .unwrap();
        o.uploads().len()
    }

    /// A fault proxy in front of moto that answers 503 ServiceUnavailable to every
    /// request whose first line starts with `head` (e.g. `GET /src/bad`).
    pub(crate) fn failing(&self, head: &'static str) -> hub_tests::faults::FaultProxy {
        use hub_tests::faults::{Fault, FaultProxy, Faults, Flavor};
        FaultProxy::start(
            &self.moto.endpoint,
            Faults::scripted(
                Flavor::S3,
                0,
                Arc::new(move |h: &str, _| h.starts_with(head).then_some(Fault::Unavailable)),
            ),
        )
    }

    /// Runs `objects sync` on moto with the text output a person reads (its own state file).
    pub(crate) fn sync_text(&self, src: &str, dst: &str, extra: &[&str]) -> hub_tests::Run {
        self.run_sync(src, dst, None, false, extra)
    }

    /// Runs `objects sync` with both sides at `endpoint` (moto unless a proxy is given).
    pub(crate) fn sync(
        &self,
        src: &str,
        dst: &str,
        source_endpoint: Option<&str>,
        extra: &[&str],
    ) -> hub_tests::Run {
        self.run_sync(src, dst, source_endpoint, true, extra)
    }

    fn run_sync(
        &self,
        src: &str,
        dst: &str,
        source_endpoint: Option<&str>,
        json: bool,
        extra: &[&str],
    ) -> hub_tests::Run {
        let state = self
            .state
            .path()
            .join(if json { "state.db" } else { "text.db" });
        let source_endpoint = source_endpoint.unwrap_or(&self.moto.endpoint).to_string();
        let mut args = vec![
            "objects",
            "sync",
            src,
            dst,
            "--source-endpoint",
            &source_endpoint,
            "--dest-endpoint",
            &self.moto.endpoint,
            "--state",
            state.to_str().unwrap(),
            "--retry-base-ms",
            "10",
        ];
        if json {
            args.extend(["--output", "json"]);
        }
        args.extend_from_slice(extra);
        let env = self.moto.env(REGION);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        transfer_hub(&args, &env)
    }
}

pub(crate) fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

pub(crate) fn counts(j: &serde_json::Value) -> (u64, u64, u64) {
    (
        j["copied"].as_u64().unwrap(),
        j["skipped"].as_u64().unwrap(),
        j["failed"].as_u64().unwrap(),
    )
}

#[test]
fn incremental_sync_copies_only_missing_and_changed_objects_with_their_metadata_and_tags() {
    let s3 = S3::start(&["src", "dst"]);
    for i in 0..5 {
        s3.put(
            "src",
            &format!("data/file-{i}.bin"),
            &data(1000 + i, i as u8),
        );
    }
    s3.put("src", "other/skip-me.txt", b"outside the prefix");
    // One object with metadata and tags.
    s3.rt
        .block_on(
            s3.client
                .put_object()
                .bucket("src")
                .key("data/page.html")
                .body(ByteStream::from_static(b"<h1>hi</h1>"))
                .content_type("text/html")
                .cache_control("max-age=60")
                .content_disposition("inline")
                .content_language("en")
                .metadata("owner", "team-a")
                .tagging("env=prod&team=a")
                .send(),
        )
        .unwrap();

    for mode in ["server", "stream"] {
        let dst = format!("s3://dst/{mode}/");
        let run = s3.sync(
            "s3://src/data/",
            &dst,
            None,
            &["--tags", "--copy-mode", mode],
        );
        assert_eq!(run.code, 0, "{mode}: {}\n{}", run.stdout, run.stderr);
        assert_eq!(counts(&run.json()), (6, 0, 0), "{mode}: {}", run.stdout);
        for i in 0..5 {
            assert_eq!(
                s3.get("dst", &format!("{mode}/file-{i}.bin")).unwrap(),
                data(1000 + i, i as u8)
            );
        }
        let head = s3
            .rt
            .block_on(
                s3.client
                    .head_object()
                    .bucket("dst")
                    .key(format!("{mode}/page.html"))
                    .send(),
            )
            .unwrap();
        assert_eq!(head.content_type(), Some("text/html"), "{mode}");
        assert_eq!(head.cache_control(), Some("max-age=60"), "{mode}");
        assert_eq!(head.content_disposition(), Some("inline"), "{mode}");
        assert_eq!(head.content_language(), Some("en"), "{mode}");
        assert_eq!(
            head.metadata().unwrap().get("owner").map(String::as_str),
            Some("team-a"),
            "{mode}"
        );
        let tags = s3
            .rt
            .block_on(
                s3.client
                    .get_object_tagging()
                    .bucket("dst")
                    .key(format!("{mode}/page.html"))
                    .send(),
            )
            .unwrap();
        let mut tags: Vec<(String, String)> = tags
            .tag_set()
            .iter()
            .map(|t| (t.key().to_string(), t.value().to_string()))
            .collect();
        tags.sort();
        assert_eq!(
            tags,
            vec![("env".into(), "prod".into()), ("team".into(), "a".into())],
            "{mode}"
        );
    }
    assert!(!s3.keys("dst").iter().any(|k| k.contains("skip-me")));

    // Nothing changed: nothing is copied.
    let run = s3.sync("s3://src/data/", "s3://dst/server/", None, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(counts(&run.json()), (0, 6, 0));

    // A size change is copied; a same-size change only with --compare etag.
    s3.put("src", "data/file-1.bin", &data(1500, 9));
    s3.put("src", "data/file-2.bin", &data(1002, 77));
    let run = s3.sync("s3://src/data/", "s3://dst/server/", None, &[]);
    let j = run.json();
    assert_eq!(counts(&j), (1, 5, 0), "{}", run.stdout);
    assert_eq!(j["items"][0]["source"], "s3://src/data/file-1.bin");
    assert_eq!(s3.get("dst", "server/file-1.bin").unwrap(), data(1500, 9));
    let run = s3.sync(
        "s3://src/data/",
        "s3://dst/server/",
        None,
        &["--compare", "etag"],
    );
    let j = run.json();
    assert_eq!(counts(&j), (1, 5, 0), "{}", run.stdout);
    assert_eq!(j["items"][0]["source"], "s3://src/data/file-2.bin");
    assert_eq!(s3.get("dst", "server/file-2.bin").unwrap(), data(1002, 77));

    // --compare checksum: stored checksums (the SDK stores a CRC32 on PUT) settle equal sizes.
    s3.put("src", "data/file-3.bin", &data(1003, 55));
    let run = s3.sync(
        "s3://src/data/",
        "s3://dst/server/",
        None,
        &["--compare", "checksum"],
    );
    let j = run.json();
    assert_eq!(counts(&j), (1, 5, 0), "{}", run.stdout);
    assert_eq!(j["items"][0]["source"], "s3://src/data/file-3.bin");
    let run = s3.sync(
        "s3://src/data/",
        "s3://dst/server/",
        None,
        &["--compare", "checksum"],
    );
    assert_eq!(counts(&run.json()), (0, 6, 0), "{}", run.stdout);

    // A dry run says what it would copy and changes nothing.
    s3.put("src", "data/new.bin", b"new");
    let run = s3.sync("s3://src/data/", "s3://dst/server/", None, &["--dry-run"]);
    assert_eq!(run.json()["items"][0]["status"], "planned");
    assert!(s3.get("dst", "server/new.bin").is_none());
    // Its size, each key's and in all (text and JSON).
    assert_eq!(run.json()["items"][0]["bytes"], 3, "{}", run.stdout);
    let env = s3.moto.env(REGION);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let text = transfer_hub(
        &[
            "objects",
            "sync",
            "s3://src/data/",
            "s3://dst/server/",
            "--source-endpoint",
            &s3.moto.endpoint,
            "--dest-endpoint",
            &s3.moto.endpoint,
            "-n",
        ],
        &env,
    );
    assert_eq!(text.code, 0, "{}", text.stderr);
    let line = text
        .stdout
        .lines()
        .find(|l| l.starts_with("would copy") && l.contains("new.bin"))
        .unwrap_or_else(|| panic!("{}", text.stdout));
    assert!(line.ends_with("(3 B)"), "{line}");
    let table: Vec<&str> = text
        .stdout
        .lines()
        .skip_while(|l| !l.contains("to copy"))
        .collect();
    assert!(
        table[0].contains("bytes") && table[1].split_whitespace().nth(1) == Some("3"),
        "{}",
        text.stdout
    );
}

/// A proxy in front of moto: keeps every request head, and lets a test spoil answers.
fn recording_proxy(upstream: &str, spoil: Rewrite) -> (HttpProxy, Arc<Mutex<Vec<String>>>) {
    let heads = Arc::new(Mutex::new(Vec::new()));
    let up = upstream.trim_start_matches("http://").to_string();
    let h2 = heads.clone();
    let route: Route = Arc::new(move |head: &str| {
        h2.lock().unwrap().push(head.to_string());
        (up.clone(), head.to_string())
    });
    (HttpProxy::start(route, spoil), heads)
}

fn untouched() -> Rewrite {
    Arc::new(|_, status, body| (status, vec![], body))
}

#[test]
fn a_byte_flipped_on_the_way_is_a_failed_copy_never_a_success() {
    let s3 = S3::start(&["src", "dst"]);
    s3.put("src", "good-1.bin", &data(4096, 1));
    s3.put("src", "good-2.bin", &data(4096, 3));
    // One victim stored with a CRC32 (the SDK's own check sees the flip), one with none
    // (only our MD5 check against the source ETag can see it).
    s3.put("src", "victim.bin", &data(4096, 2));
    s3.put_plain("src", "victim-plain.bin", &data(4096, 4));
    let flip: Rewrite = Arc::new(|head: &str, status, mut body: Vec<u8>| {
        if head.starts_with("GET /src/victim") && status == 200 && !body.is_empty() {
            body[100] ^= 0x01;
        }
        (status, vec![], body)
    });
    let (proxy, _) = recording_proxy(&s3.moto.endpoint, flip);
    let run = s3.sync(
        "s3://src",
        "s3://dst",
        Some(&proxy.endpoint),
        &["--retries", "1"],
    );
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let j = run.json();
    assert_eq!(counts(&j), (2, 0, 2), "{}", run.stdout);
    for key in ["victim.bin", "victim-plain.bin"] {
        let victim = j["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["source"] == format!("s3://src/{key}"))
            .unwrap();
        assert_eq!(victim["status"], "failed");
        assert_eq!(victim["error"]["class"], "DigestMismatch", "{victim}");
        assert!(
            s3.get("dst", key).is_none(),
            "a corrupt {key} was left at the destination"
        );
    }
    // With no stored checksum, it is our MD5 against the source ETag that caught it.
    let plain = j["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["source"] == "s3://src/victim-plain.bin")
        .unwrap();
    assert!(
        plain["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the bytes read have MD5"),
        "{plain}"
    );
    assert_eq!(s3.get("dst", "good-2.bin").unwrap(), data(4096, 3));
}

#[test]
fn requester_pays_reads_carry_the_header() {
    let s3 = S3::start(&["src", "dst"]);
    s3.put("src", "a.bin", &data(100, 1));
    s3.put("src", "b.bin", &data(200, 2));
    let (proxy, heads) = recording_proxy(&s3.moto.endpoint, untouched());
    let run = s3.sync(
        "s3://src",
        "s3://dst",
        Some(&proxy.endpoint),
        &["--requester-pays"],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(counts(&run.json()), (2, 0, 0));
    let heads = heads.lock().unwrap();
    let reads: Vec<&String> = heads.iter().filter(|h| h.contains(" /src")).collect();
    assert!(
        reads.len() >= 3,
        "list + 2 GETs expected through the proxy: {heads:?}"
    );
    for h in reads {
        assert!(
            h.to_ascii_lowercase()
                .contains("x-amz-request-payer: requester"),
            "a source request without the requester-pays header:\n{h}"
        );
    }
}

/// `objects sync s3://src s3://dst` one request at a time, the destination at
/// `dest_endpoint`, parts of 5 MiB above 6 MiB, no retries, JSON out, the test's state file.
fn multipart_args(s3: &S3, dest_endpoint: &str) -> Vec<String> {
    const MIB: usize = 1024 * 1024;
    let state = s3.state.path().join("state.db");
    [
        "objects",
        "sync",
        "s3://src",
        "s3://dst",
        "--source-endpoint",
        s3.moto.endpoint.as_str(),
        "--dest-endpoint",
        dest_endpoint,
        "--multipart-threshold",
        (6 * MIB).to_string().as_str(),
        "--part-size",
        (5 * MIB).to_string().as_str(),
        "--concurrency",
        "1",
        "--retries",
        "0",
        "--output",
        "json",
        "--state",
        state.to_str().unwrap(),
    ]
    .map(str::to_string)
    .to_vec()
}

/// The part PUTs among recorded request heads, as their request lines.
fn part_puts(heads: &Mutex<Vec<String>>) -> Vec<String> {
    heads
        .lock()
        .unwrap()
        .iter()
        .filter(|h| h.starts_with("PUT ") && h.contains("partNumber="))
        .map(|h| h.lines().next().unwrap().to_string())
        .collect()
}

#[test]
fn a_big_object_moves_in_parts_and_an_interrupted_run_resumes_without_redoing_parts() {
    const MIB: usize = 1024 * 1024;
    let s3 = S3::start(&["src", "dst"]);
    let big = data(12 * MIB + 12345, 5);
    s3.put("src", "big.bin", &big);
    // The destination goes through a proxy that breaks every upload of part 3.
    let parts_seen = Arc::new(Mutex::new(Vec::new()));
    let p2 = parts_seen.clone();
    let breaker: Rewrite = Arc::new(move |head: &str, status, body| {
        if head.starts_with("PUT ") && head.contains("partNumber=") {
            let broken = head.contains("partNumber=3");
            p2.lock().unwrap().push((broken, status));
            if broken {
                return (
                    500,
                    vec![],
                    b"<Error><Code>InternalError</Code></Error>".to_vec(),
                );
            }
        }
        (status, vec![], body)
    });
    let (dest_proxy, _) = recording_proxy(&s3.moto.endpoint, breaker);
    let args = |dest_endpoint: &str| multipart_args(&s3, dest_endpoint);
    let env = s3.moto.env(REGION);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let a = args(&dest_proxy.endpoint);
    let first = transfer_hub(&a.iter().map(String::as_str).collect::<Vec<_>>(), &env);
    assert_eq!(first.code, 1, "{}\n{}", first.stdout, first.stderr);
    assert_eq!(counts(&first.json()), (0, 0, 1));
    let seen = parts_seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter()
            .filter(|(broken, st)| !broken && *st == 200)
            .count(),
        2,
        "{seen:?}"
    );
    assert_eq!(
        s3.open_uploads("dst"),
        1,
        "the interrupted upload stays open for the resume"
    );

    // The resume goes through a recording proxy: only the missing part is uploaded.
    let (again, heads) = recording_proxy(&s3.moto.endpoint, untouched());
    let a = args(&again.endpoint);
    let second = transfer_hub(&a.iter().map(String::as_str).collect::<Vec<_>>(), &env);
    assert_eq!(second.code, 0, "{}\n{}", second.stdout, second.stderr);
    assert_eq!(counts(&second.json()), (1, 0, 0));
    let part_puts = part_puts(&heads);
    assert_eq!(
        part_puts.len(),
        1,
        "only part 3 is uploaded again: {part_puts:?}"
    );
    assert!(part_puts[0].contains("partNumber=3"), "{part_puts:?}");
    let got = s3.get("dst", "big.bin").unwrap();
    assert_eq!(
        Md5::digest(&got),
        Md5::digest(&big),
        "the completed object equals the source"
    );
    assert_eq!(s3.open_uploads("dst"), 0, "no upload is left open");
    let etag = second.json()["items"][0]["dest_digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(etag.ends_with("-3"), "three parts: {etag}");
    // What the resume reused is said, and not counted in the bytes it moved.
    let j = second.json();
    assert_eq!(j["items"][0]["resumed"]["parts"], 2, "{j:#}");
    assert_eq!(j["items"][0]["resumed"]["of"], 3, "{j:#}");
    assert_eq!(j["bytes"], (big.len() - 10 * MIB) as u64, "{j:#}");
}

/// A run killed outright (SIGKILL, no clean-up) while part 3 of 5 is on the wire: the
/// parts it finished are in the state file, so the resume sends only parts 3 to 5, leaves
/// the object copied before it alone, completes the same upload and the object equals the
/// source byte for byte.
#[test]
fn a_run_killed_between_parts_resumes_from_the_state_file() {
    const MIB: usize = 1024 * 1024;
    let s3 = S3::start(&["src", "dst"]);
    // Bytes that differ from part to part, so parts in the wrong place would show.
    let big: Vec<u8> = (0..22 * MIB + 777)
        .map(|i| ((i ^ (i >> 9) ^ (i >> 17)) as u8).wrapping_mul(13))
        .collect();
    s3.put("src", "a-first.txt", b"copied before the kill");
    s3.put("src", "big.bin", &big);
    // The destination proxy holds the answer to part 3 until the run is dead.
    let (reached, reached_rx) = std::sync::mpsc::channel::<()>();
    let released = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let r2 = released.clone();
    let hold: Rewrite = Arc::new(move |head: &str, status, body| {
        if head.starts_with("PUT ") && head.contains("partNumber=3") {
            let _ = reached.send(());
            let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while !r2.load(std::sync::atomic::Ordering::Relaxed)
                && std::time::Instant::now() < until
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        (status, vec![], body)
    });
    let (dest_proxy, _) = recording_proxy(&s3.moto.endpoint, hold);
    let env = s3.moto.env(REGION);
    let mut run = std::process::Command::new(hub_tests::transfer_hub_bin())
        .args(multipart_args(&s3, &dest_proxy.endpoint))
        .envs(env.iter().cloned())
        .env_remove("REGISTRY_AUTH_FILE")
        .env("HOME", std::env::temp_dir().join("transfer-hub-test-home"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let got_there = reached_rx.recv_timeout(std::time::Duration::from_secs(120));
    let state = s3.state.path().join("state.db");
    let state = state.to_str().unwrap();
    // While it runs, another process's look at the state file leaves it running.
    let live = got_there
        .is_ok()
        .then(|| transfer_hub(&["status", "--state", state, "-o", "json"], &[]));
    run.kill().unwrap(); // SIGKILL: nothing of the run's own clean-up happens
    run.wait().unwrap();
    released.store(true, std::sync::atomic::Ordering::Relaxed);
    got_there.expect("the run reached part 3");
    let live = live.unwrap();
    assert_eq!(live.code, 0, "{}", live.stderr);
    let live = live.json();
    assert_eq!(
        live["result"], "running",
        "a run going on in another process is never marked interrupted: {live:#}"
    );
    let killed_run = live["run_id"].as_str().unwrap().to_string();

    // The next look finds its process gone: `status` and `runs` say it was interrupted.
    let st = transfer_hub(&["status", "--state", state, "-o", "json"], &[]);
    assert_eq!(st.code, 0, "{}", st.stderr);
    let st = st.json();
    assert_eq!(st["run_id"], killed_run.as_str());
    assert_eq!(st["result"], "interrupted", "{st:#}");
    assert!(st["error"].as_str().unwrap().contains("killed?"), "{st:#}");
    assert_eq!(st["copied"], 1, "what it recorded before the kill: {st:#}");
    let text = transfer_hub(&["status", "--state", state], &[]);
    assert!(
        text.stdout.contains(": interrupted")
            && text
                .stdout
                .contains("the process ended without recording a result (killed?)"),
        "{}",
        text.stdout
    );
    let runs = transfer_hub(&["runs", "--state", state], &[]);
    let row = runs
        .stdout
        .lines()
        .find(|l| l.starts_with(&killed_run))
        .unwrap_or_else(|| panic!("{}", runs.stdout));
    assert!(row.contains("interrupted"), "{row}");
    assert_eq!(
        s3.get("dst", "a-first.txt").as_deref(),
        Some(&b"copied before the kill"[..])
    );
    assert_eq!(s3.get("dst", "big.bin"), None, "not complete when killed");
    assert_eq!(s3.open_uploads("dst"), 1);

    let (again, heads) = recording_proxy(&s3.moto.endpoint, untouched());
    let a = multipart_args(&s3, &again.endpoint);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let second = transfer_hub(&a.iter().map(String::as_str).collect::<Vec<_>>(), &env);
    assert_eq!(second.code, 0, "{}\n{}", second.stdout, second.stderr);
    assert_eq!(
        counts(&second.json()),
        (1, 1, 0),
        "big.bin copied, a-first.txt in sync"
    );
    let sent: Vec<String> = part_puts(&heads);
    let numbers: Vec<&str> = sent
        .iter()
        .map(|l| {
            l.split("partNumber=")
                .nth(1)
                .unwrap()
                .split(['&', ' '])
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(
        numbers,
        ["3", "4", "5"],
        "parts 1 and 2 are not sent again: {sent:?}"
    );
    // The resume says what it reused, and its bytes are what it moved: parts 3 to 5.
    let j = second.json();
    let item = j["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["source"] == "s3://src/big.bin")
        .unwrap_or_else(|| panic!("{j:#}"));
    assert_eq!(
        item["resumed"],
        serde_json::json!({"parts": 2, "of": 5, "bytes": 10 * MIB}),
        "{j:#}"
    );
    let moved = (big.len() - 10 * MIB) as u64;
    assert_eq!(item["bytes"], moved, "{j:#}");
    assert_eq!(j["bytes"], moved, "{j:#}");
    let text = transfer_hub(&["status", "--state", state], &[]);
    assert!(
        text.stdout.contains("resumed 2 of 5 parts of big.bin"),
        "{}",
        text.stdout
    );
    assert!(
        !heads
            .lock()
            .unwrap()
            .iter()
            .any(|h| h.starts_with("PUT ") && h.contains("a-first.txt")),
        "the object finished before the kill is not copied again"
    );
    let got = s3.get("dst", "big.bin").unwrap();
    assert_eq!(got.len(), big.len());
    assert_eq!(
        Md5::digest(&got),
        Md5::digest(&big),
        "the completed object equals the source"
    );
    assert_eq!(
        s3.open_uploads("dst"),
        0,
        "the same upload was completed, none left open"
    );
}

/// Under a terminal (a pty from `script`), the objects bar shows objects done of the total
/// and bytes done of theirs, rate and ETA, and moves as each part of a multipart copy lands
/// (before, it said "0 done" until the whole object was in); a log line (the retry of a
/// part answered 500 three times, once per attempt of the SDK) prints above the bar, on a
/// line of its own. Each part's answer waits 700 ms, so the bar is drawn between parts.
#[test]
fn the_objects_bar_moves_as_each_part_lands_and_log_lines_print_above_it() {
    const MIB: usize = 1024 * 1024;
    let s3 = S3::start(&["src", "dst"]);
    s3.put("src", "big.bin", &data(12 * MIB + 4321, 7));
    s3.put("src", "small.txt", b"small");
    let refused = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let r2 = refused.clone();
    let slow: Rewrite = Arc::new(move |head: &str, status, body| {
        if head.starts_with("PUT ") && head.contains("partNumber=") {
            std::thread::sleep(std::time::Duration::from_millis(700));
            if head.contains("partNumber=3")
                && r2.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 3
            {
                return (
                    500,
                    vec![],
                    b"<Error><Code>InternalError</Code></Error>".to_vec(),
                );
            }
        }
        (status, vec![], body)
    });
    let (proxy, _) = recording_proxy(&s3.moto.endpoint, slow);
    let state = s3.state.path().join("state.db");
    let env = s3.moto.env(REGION);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (ok, text) = hub_tests::transfer_hub_in_a_pty(
        &[
            "objects",
            "sync",
            "s3://src",
            "s3://dst",
            "--source-endpoint",
            &s3.moto.endpoint,
            "--dest-endpoint",
            &proxy.endpoint,
            "--multipart-threshold",
            "6MiB",
            "--part-size",
            "5MiB",
            "--concurrency",
            "1",
            "--retries",
            "5",
            "--retry-base-ms",
            "10ms",
            "--state",
            state.to_str().unwrap(),
        ],
        &env,
        s3.state.path(),
    );
    assert!(ok, "{text}");
    let frames = hub_tests::terminal_frames(&text);
    let bar = |f: &String| f.contains(" objects · ");
    assert!(
        frames
            .iter()
            .filter(|f| bar(f))
            .any(|f| f.contains("/2 objects")
                && f.contains(" of 12.0 MiB")
                && f.contains("/s")
                && f.contains("ETA")),
        "no bar with objects and bytes of their totals, rate and ETA:\n{text:?}"
    );
    assert!(
        frames.iter().any(|f| f.contains("0/2 objects")
            && (f.contains("5.0 MiB of 12.0 MiB") || f.contains("10.0 MiB of 12.0 MiB"))),
        "the bar did not move with the parts of big.bin:\n{text:?}"
    );
    let logged: Vec<&String> = frames
        .iter()
        .filter(|f| f.contains("attempt failed; retrying"))
        .collect();
    assert!(!logged.is_empty(), "no retry logged:\n{text:?}");
    for f in logged {
        assert!(
            !bar(f) && f.trim_start().starts_with(|c: char| c.is_ascii_digit()),
            "a log line mixed with the bar: {f:?}"
        );
    }
    let copied: Vec<&String> = frames
        .iter()
        .filter(|f| f.contains("s3://src/") && f.contains("copied "))
        .collect();
    assert_eq!(copied.len(), 2, "{text:?}");
    for f in copied {
        assert!(
            f.starts_with("copied "),
            "an item line mixed with the bar: {f:?}"
        );
    }
}

/// Streamed parts are read whole before they are written, so `--stream-buffer` bounds the
/// parts in flight whatever `--concurrency` allows: 10 MiB of buffer, 5 MiB parts, eight
/// request slots → never more than two part uploads at once (each held for 300 ms).
#[test]
fn streamed_parts_in_flight_stay_within_the_stream_buffer() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const MIB: usize = 1024 * 1024;
    let s3 = S3::start(&["src", "dst"]);
    let big: Vec<u8> = (0..30 * MIB + 99).map(|i| (i % 251) as u8).collect();
    s3.put("src", "big.bin", &big);
    let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let up = s3.moto.endpoint.trim_start_matches("http://").to_string();
    let (n1, p1, n2) = (now.clone(), peak.clone(), now.clone());
    let is_part = |h: &str| h.starts_with("PUT ") && h.contains("partNumber=");
    let proxy = HttpProxy::start(
        Arc::new(move |head: &str| {
            if is_part(head) {
                let n = n1.fetch_add(1, Ordering::SeqCst) + 1;
                p1.fetch_max(n, Ordering::SeqCst);
            }
            (up.clone(), head.to_string())
        }),
        Arc::new(move |head: &str, status, body| {
            if is_part(head) {
                std::thread::sleep(std::time::Duration::from_millis(300));
                n2.fetch_sub(1, Ordering::SeqCst);
            }
            (status, vec![], body)
        }),
    );
    let mut a = multipart_args(&s3, &proxy.endpoint);
    let eight = a.iter().position(|x| x == "--concurrency").unwrap() + 1;
    a[eight] = "8".into();
    a.extend(["--stream-buffer".to_string(), (10 * MIB).to_string()]);
    let env = s3.moto.env(REGION);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let run = transfer_hub(&a.iter().map(String::as_str).collect::<Vec<_>>(), &env);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(counts(&run.json()), (1, 0, 0));
    let most = peak.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&most),
        "{most} part uploads at once with room for two"
    );
    let got = s3.get("dst", "big.bin").unwrap();
    assert_eq!(Md5::digest(&got), Md5::digest(&big));
}

#[test]
fn a_listing_out_of_key_order_is_sorted_on_disk_and_nothing_is_missed() {
    let s3 = S3::start(&["src", "dst"]);
    for k in ["a", "b", "c", "d", "e"] {
        s3.put("src", k, k.as_bytes());
    }
    s3.put("dst", "c", b"c");
    // A store that lists in reverse order.
    let reverse = hub_tests::reversed_listings("src");
    let (proxy, _) = recording_proxy(&s3.moto.endpoint, reverse);
    let run = s3.sync("s3://src", "s3://dst", Some(&proxy.endpoint), &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("not in key order"), "{}", run.stderr);
    let j = run.json();
    assert_eq!(counts(&j), (4, 1, 0), "{}", run.stdout);
    let mut keys = s3.keys("dst");
    keys.sort();
    assert_eq!(keys, vec!["a", "b", "c", "d", "e"]);
}

#[test]
fn bad_input_is_named_before_anything_runs() {
    for (args, needle) in [
        (
            vec!["objects", "sync", "src-bucket", "s3://dst"],
            "\"src-bucket\"",
        ),
        (
            vec!["objects", "sync", "s3://src", "s3://Bad_Bucket"],
            "\"s3://Bad_Bucket\"",
        ),
        (
            vec![
                "objects",
                "sync",
                "s3://src",
                "s3://dst",
                "--storage-class",
                "FAST",
            ],
            "\"FAST\"",
        ),
        (
            vec![
                "objects",
                "sync",
                "s3://src",
                "s3://dst",
                "--compare",
                "md5",
            ],
            "\"md5\"",
        ),
        (
            vec![
                "objects",
                "sync",
                "s3://src",
                "s3://dst",
                "--part-size",
                "1024",
            ],
            "1024",
        ),
        (
            vec![
                "objects",
                "sync",
                "s3://src",
                "s3://dst",
                "--copy-mode",
                "stream",
                "--stream-buffer",
                "1000000",
            ],
            "--stream-buffer 1000000",
        ),
    ] {
        let run = transfer_hub(&args, &[]);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(needle), "{args:?}: {}", run.stderr);
    }
}

#[test]
fn a_prefix_is_a_folder_on_both_sides() {
    let s3 = S3::start(&["src", "dst"]);
    s3.put("src", "data/a.txt", b"in the folder");
    s3.put("src", "data/sub/b.txt", b"deeper in the folder");
    s3.put(
        "src",
        "database/c.txt",
        b"another folder that starts with the same letters",
    );
    s3.put(
        "src",
        "data2",
        b"a key that starts with the prefix's letters",
    );
    s3.put("dst", "backupx", b"a destination key beside the folder");
    let run = s3.sync("s3://src/data", "s3://dst/backup", None, &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(counts(&run.json()), (2, 0, 0), "{}", run.stdout);
    let mut keys = s3.keys("dst");
    keys.sort();
    assert_eq!(keys, vec!["backup/a.txt", "backup/sub/b.txt", "backupx"]);
    assert_eq!(s3.get("dst", "backup/a.txt").unwrap(), b"in the folder");
    // The re-run sees the same folders: nothing to copy.
    let again = s3.sync("s3://src/data", "s3://dst/backup", None, &[]);
    assert_eq!(counts(&again.json()), (0, 2, 0), "{}", again.stdout);
}

/// The source is overwritten (same size, other bytes) right after the first part of its
/// copy: every later read is pinned to the listed ETag, so S3 answers 412, the torn upload
/// is aborted and the object is planned again from the new version. What lands is one
/// version whole, never parts of two.
#[test]
fn an_object_overwritten_while_its_parts_are_copied_lands_whole_from_one_version() {
    const MIB: usize = 1024 * 1024;
    for mode in ["server", "stream"] {
        let s3 = S3::start(&["src", "dst"]);
        let (v1, v2) = (data(12 * MIB + 7, 1), data(12 * MIB + 7, 2));
        s3.put("src", "big.bin", &v1);
        let overwritten = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (o2, moto, v2c) = (overwritten.clone(), s3.moto.endpoint.clone(), v2.clone());
        let overwrite_after_part_one: Rewrite = Arc::new(move |head: &str, status, body| {
            let part_one = (head.starts_with("PUT ")
                && head.contains("partNumber=1&")
                && hub_tests::s3_rig::header(head, "x-amz-copy-source").is_some())
                || (head.starts_with("GET ")
                    && hub_tests::s3_rig::header(head, "range")
                        .is_some_and(|r| r.starts_with("bytes=0-")));
            if part_one && !o2.swap(true, std::sync::atomic::Ordering::SeqCst) {
                let put = reqwest::blocking::Client::new()
                    .put(format!("{moto}/src/big.bin"))
                    .header("Authorization", hub_tests::s3_rig::RIG_AUTHORIZATION)
                    .body(v2c.clone())
                    .send()
                    .unwrap();
                assert!(put.status().is_success(), "{put:?}");
            }
            (status, vec![], body)
        });
        let strict =
            hub_tests::s3_rig::StrictS3::start_with(&s3.moto.endpoint, overwrite_after_part_one);
        let mut args = multipart_args(&s3, strict.endpoint());
        args[5] = strict.endpoint().to_string(); // the source through the strict proxy too
        args.extend(["--copy-mode".to_string(), mode.to_string()]);
        let env = s3.moto.env(REGION);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let run = transfer_hub(&args.iter().map(String::as_str).collect::<Vec<_>>(), &env);
        assert!(
            overwritten.load(std::sync::atomic::Ordering::SeqCst),
            "{mode}: the source was overwritten mid-copy"
        );
        assert_eq!(run.code, 0, "{mode}: {}\n{}", run.stdout, run.stderr);
        let j = run.json();
        assert_eq!(counts(&j), (1, 0, 0), "{mode}: {}", run.stdout);
        let got = s3.get("dst", "big.bin").unwrap();
        assert!(
            Md5::digest(&got) == Md5::digest(&v2),
            "{mode}: the destination must be the new version whole (v1 whole: {}, torn: {})",
            Md5::digest(&got) == Md5::digest(&v1),
            Md5::digest(&got) != Md5::digest(&v1)
        );
        assert_eq!(
            j["items"][0]["source_digest"].as_str(),
            Some(hex::encode(Md5::digest(&v2)).as_str()),
            "{mode}: recorded as a copy of the version that landed: {}",
            run.stdout
        );
        assert_eq!(
            s3.open_uploads("dst"),
            0,
            "{mode}: the torn upload was aborted"
        );
        if mode == "server" {
            assert!(
                strict.refused.load(std::sync::atomic::Ordering::SeqCst) >= 1,
                "the rig refused the stale part copy"
            );
        }
    }
}

/// A source uploaded in parts of another size than ours: after one verified copy the two
/// ETags differ for good (`…-3` and `…-2`). `--compare etag` and `--compare checksum`
/// still find them in sync on the next run (the verified pair is in the state file), and
/// a real change at the source is still copied.
#[test]
fn compare_etag_and_checksum_converge_for_a_source_uploaded_in_other_parts() {
    const MIB: usize = 1024 * 1024;
    let s3 = S3::start(&["src", "dst"]);
    let body = data(10 * MIB + 1, 3);
    let src_etag = s3.rt.block_on(hub_tests::aws_fixtures::multipart_object(
        &s3.client,
        "src",
        "big.bin",
        &body,
        5 * MIB,
    ));
    assert!(src_etag.ends_with("-3"), "{src_etag}");
    let run = |compare: &str| {
        let state = s3.state.path().join("state.db");
        let args = [
            "objects",
            "sync",
            "s3://src",
            "s3://dst",
            "--source-endpoint",
            &s3.moto.endpoint,
            "--dest-endpoint",
            &s3.moto.endpoint,
            "--multipart-threshold",
            "6291456",
            "--part-size",
            "7340032",
            "--compare",
            compare,
            "--output",
            "json",
            "--state",
            state.to_str().unwrap(),
        ];
        let env = s3.moto.env(REGION);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let r = transfer_hub(&args, &env);
        assert_eq!(r.code, 0, "{compare}: {}\n{}", r.stdout, r.stderr);
        counts(&r.json())
    };
    assert_eq!(run("etag"), (1, 0, 0));
    assert_eq!(
        Md5::digest(s3.get("dst", "big.bin").unwrap()),
        Md5::digest(&body)
    );
    for compare in ["etag", "checksum", "etag"] {
        assert_eq!(
            run(compare),
            (0, 1, 0),
            "--compare {compare} after a verified copy"
        );
    }
    // A change of the same size at the source is still seen.
    let changed = data(10 * MIB + 1, 4);
    s3.rt.block_on(hub_tests::aws_fixtures::multipart_object(
        &s3.client,
        "src",
        "big.bin",
        &changed,
        5 * MIB,
    ));
    assert_eq!(run("etag"), (1, 0, 0));
    assert_eq!(
        Md5::digest(s3.get("dst", "big.bin").unwrap()),
        Md5::digest(&changed)
    );
}

/// SSE-KMS on AWS: ETags that are not the MD5 of the bytes, for objects and for parts
/// (the strict rig gives them, as S3 does). A KMS source, a KMS destination (--sse-kms-key)
/// and a destination whose default encryption is KMS: every object arrives with the
/// source's bytes, none is failed as a mismatch, and the re-run with --compare etag copies
/// nothing.
#[test]
fn objects_under_sse_kms_are_copied_verified_and_converge() {
    use aws_sdk_s3::types::ServerSideEncryption;
    const MIB: usize = 1024 * 1024;
    for case in ["kms-source", "kms-dest", "kms-default-dest"] {
        for mode in ["server", "stream"] {
            let what = format!("{case}/{mode}");
            let s3 = S3::start(&["src", "dst"]);
            let kms_default = |bucket: &str| {
                s3.rt
                    .block_on(hub_tests::aws_fixtures::kms_by_default(&s3.client, bucket))
            };
            match case {
                "kms-source" => kms_default("src"),
                "kms-default-dest" => kms_default("dst"),
                _ => {}
            }
            let (small, big, parts) = (data(1000, 1), data(7 * MIB + 3, 2), data(11 * MIB, 3));
            s3.put("src", "small.txt", &small);
            s3.put("src", "big.bin", &big);
            s3.rt.block_on(hub_tests::aws_fixtures::multipart_object(
                &s3.client,
                "src",
                "parts.bin",
                &parts,
                5 * MIB,
            ));
            let strict = hub_tests::s3_rig::StrictS3::start(&s3.moto.endpoint);
            let run = |compare: &str| {
                let mut args = multipart_args(&s3, strict.endpoint());
                args[5] = strict.endpoint().to_string();
                args.extend(["--copy-mode", mode, "--compare", compare].map(str::to_string));
                if case == "kms-dest" {
                    args.extend(["--sse-kms-key", "alias/rig-dest"].map(str::to_string));
                }
                let env = s3.moto.env(REGION);
                let env: Vec<(&str, &str)> =
                    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let r = transfer_hub(&args.iter().map(String::as_str).collect::<Vec<_>>(), &env);
                assert_eq!(r.code, 0, "{what}: {}\n{}", r.stdout, r.stderr);
                counts(&r.json())
            };
            assert_eq!(run("size"), (3, 0, 0), "{what}");
            for (key, body) in [
                ("small.txt", &small),
                ("big.bin", &big),
                ("parts.bin", &parts),
            ] {
                assert_eq!(
                    Md5::digest(s3.get("dst", key).unwrap()),
                    Md5::digest(body),
                    "{what}: {key}"
                );
            }
            assert_eq!(run("etag"), (0, 3, 0), "{what}: the re-run copies nothing");
            // The rig answered as AWS does: the encrypted side's ETag is not the MD5.
            let conf = s3.rt.block_on(s3.moto.sdk_config(REGION));
            let via_rig = aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::config::Builder::from(&conf)
                    .endpoint_url(strict.endpoint())
                    .force_path_style(true)
                    .build(),
            );
            let bucket = if case == "kms-source" { "src" } else { "dst" };
            let h = s3
                .rt
                .block_on(via_rig.head_object().bucket(bucket).key("small.txt").send())
                .unwrap();
            assert_eq!(
                h.server_side_encryption(),
                Some(&ServerSideEncryption::AwsKms),
                "{what}"
            );
            assert_ne!(
                h.e_tag().unwrap().trim_matches('"'),
                hex::encode(Md5::digest(&small)),
                "{what}: an SSE-KMS ETag is not the MD5 of the bytes"
            );
        }
    }
}

/// Setup problems of an object sync exit 2 with one line naming the side, bucket or
/// endpoint, are recorded as a failed run, and print one JSON object in JSON mode.
#[test]
fn object_setup_problems_exit_2_with_one_line_and_a_failed_run() {
    let s3 = S3::start(&["src", "dst"]);
    s3.put("src", "a.txt", b"a");
    let state = s3.state.path().join("state.db");
    let one_line = |r: &hub_tests::Run, words: &[&str]| {
        assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
        let errors: Vec<&str> = r
            .stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        assert_eq!(errors.len(), 1, "{}", r.stderr);
        for bad in ["Error {", "Some(", "<?xml", "ErrorMetadata", "<Error>"] {
            assert!(!errors[0].contains(bad), "{bad:?} in {}", errors[0]);
        }
        for w in words {
            assert!(errors[0].contains(w), "{w:?} not in {}", errors[0]);
        }
        let j = r.json();
        assert_eq!(j["exit_code"], 2, "{j:#}");
        assert!(j["error"].is_string(), "{j:#}");
        j
    };
    let r = s3.sync("s3://src/", "s3://no-such-bkt/", None, &[]);
    let j = one_line(
        &r,
        &[
            "destination bucket no-such-bkt does not exist",
            &s3.moto.endpoint,
        ],
    );
    assert_eq!(j["kind"], "objects", "{j:#}");
    assert_eq!(j["result"], "failed", "{j:#}");
    assert!(
        j["started_at"].is_string() && j["ended_at"].is_string(),
        "{j:#}"
    );
    let st = hub_tests::status_json(state.to_str().unwrap());
    assert_eq!(st.code, 0, "{}", st.stderr);
    let sj = st.json();
    assert_eq!(sj["run_id"], j["run_id"]);
    assert_eq!(sj["result"], "failed", "{sj:#}");
    assert_eq!(sj["kind"], "objects", "{sj:#}");
    assert!(
        sj["error"]
            .as_str()
            .unwrap()
            .contains("no-such-bkt does not exist"),
        "{sj:#}"
    );

    let r = s3.sync("s3://no-such-src/", "s3://dst/", None, &[]);
    one_line(&r, &["source bucket no-such-src does not exist"]);

    // An endpoint that is not a URL, one nobody listens on, and a host no DNS knows.
    let r = s3.sync("s3://src/", "s3://dst/", Some("localhost:9000"), &[]);
    one_line(&r, &["--source-endpoint", "localhost:9000", "http://"]);
    let closed = format!("http://127.0.0.1:{}", hub_tests::free_port());
    let r = s3.sync("s3://src/", "s3://dst/", Some(&closed), &[]);
    one_line(&r, &["cannot reach the source endpoint", &closed]);
    let r = s3.sync(
        "s3://src/",
        "s3://dst/",
        Some("http://no-such-host.invalid:9000"),
        &["--retries", "5"],
    );
    one_line(
        &r,
        &["cannot reach the source endpoint", "no-such-host.invalid"],
    );
}

/// No credentials anywhere: one line saying so for the side, exit 2, before any object.
#[test]
fn missing_credentials_fail_fast_with_one_line_naming_the_side() {
    let s3 = S3::start(&["src", "dst"]);
    let home = tempfile::tempdir().unwrap();
    let state = s3.state.path().join("state.db");
    let r = transfer_hub(
        &[
            "objects",
            "sync",
            "s3://src/",
            "s3://dst/",
            "--source-endpoint",
            &s3.moto.endpoint,
            "--dest-endpoint",
            &s3.moto.endpoint,
            "--source-region",
            REGION,
            "--dest-region",
            REGION,
            "--state",
            state.to_str().unwrap(),
        ],
        &[
            ("HOME", home.path().to_str().unwrap()),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_CONFIG_FILE", "/nonexistent/config"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials"),
        ],
    );
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    let errors: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", r.stderr);
    assert!(
        errors[0].contains("no AWS credentials found for the source"),
        "{}",
        errors[0]
    );
}

/// An explicit --source-profile beats AWS_ACCESS_KEY_ID in the environment: a profile
/// that does not exist is an error, never a silent run with the environment's keys.
#[test]
fn an_explicit_profile_beats_the_environment_keys() {
    let s3 = S3::start(&["src", "dst"]);
    s3.put("src", "a.txt", b"a");
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("config");
    let creds = home.path().join("credentials");
    std::fs::write(&config, format!("[profile good]\nregion = {REGION}\n")).unwrap();
    let keys = s3.moto.env(REGION);
    let key = |k: &str| keys.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    std::fs::write(
        &creds,
        format!(
            "[good]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            key("AWS_ACCESS_KEY_ID").unwrap_or_else(|| "testing".into()),
            key("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|| "testing".into()),
        ),
    )
    .unwrap();
    let (c, k) = (config.to_str().unwrap(), creds.to_str().unwrap());
    let mut env: Vec<(&str, &str)> =
        vec![("AWS_CONFIG_FILE", c), ("AWS_SHARED_CREDENTIALS_FILE", k)];
    env.push(("AWS_ACCESS_KEY_ID", "AKIAENVIRONMENTKEYS1"));
    env.push(("AWS_SECRET_ACCESS_KEY", "env-secret"));
    env.push(("AWS_EC2_METADATA_DISABLED", "true"));
    let state = s3.state.path().join("state.db");
    let run = |profile: &str| {
        transfer_hub(
            &[
                "objects",
                "sync",
                "s3://src/",
                "s3://dst/",
                "--source-endpoint",
                &s3.moto.endpoint,
                "--dest-endpoint",
                &s3.moto.endpoint,
                "--source-profile",
                profile,
                "--dest-profile",
                profile,
                "--state",
                state.to_str().unwrap(),
            ],
            &env,
        )
    };
    let r = run("no-such-profile");
    assert_eq!(
        r.code, 2,
        "a wrong profile is an error\n{}\n{}",
        r.stdout, r.stderr
    );
    let errors: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", r.stderr);
    assert!(errors[0].contains("no-such-profile"), "{}", errors[0]);
    assert!(
        s3.keys("dst").is_empty(),
        "nothing was copied with the env keys"
    );
    let r = run("good");
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(s3.keys("dst"), ["a.txt"]);
}

/// Every endpoint on AWS is https, which no other test here speaks: the SDK's own HTTPS
/// client (rustls on ring, `aws::sdk`) must reach a TLS server whose CA the system trusts
/// (`SSL_CERT_FILE`, as the platform's roots are read), and refuse one it does not, without
/// sending it a request.
#[test]
fn the_s3_client_speaks_tls_and_sends_nothing_to_a_server_it_does_not_trust() {
    let ca = hub_tests::tls::TestCa::new("transfer-hub-s3-ca").unwrap();
    let (cert, key) = ca.issue("s3").unwrap();
    let server = hub_tests::tls::TlsTokenServer::start(&cert, &key, "unused".into()).unwrap();
    let endpoint = format!("https://{}", server.addr);
    let state = tempfile::tempdir().unwrap();
    let sync = |trusted: &str| {
        transfer_hub(
            &[
                "objects",
                "sync",
                "s3://src",
                "s3://dst",
                "--source-endpoint",
                &endpoint,
                "--dest-endpoint",
                &endpoint,
                "--retries",
                "0",
                "--state",
                state.path().join("state.db").to_str().unwrap(),
            ],
            &[
                ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
                ("AWS_SECRET_ACCESS_KEY", "secret"),
                ("AWS_REGION", "us-east-1"),
                ("SSL_CERT_FILE", trusted),
            ],
        )
    };

    // A CA the process does not trust: refused at the handshake, nothing sent.
    let other = hub_tests::tls::TestCa::new("some-other-ca").unwrap();
    let r = sync(other.cert.to_str().unwrap());
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(
        r.stderr.to_ascii_lowercase().contains("certificate"),
        "the error says it is the certificate: {}",
        r.stderr
    );
    assert!(
        server.requests().is_empty(),
        "no request reached an untrusted server: {:?}",
        server.requests()
    );

    // Its CA trusted: the handshake succeeds and signed S3 requests arrive (the server is
    // no S3, so the run itself fails after that).
    let _ = sync(ca.cert.to_str().unwrap());
    let seen = server.requests();
    assert!(!seen.is_empty(), "requests arrived over TLS");
    assert!(
        seen.iter().all(|h| h
            .to_ascii_lowercase()
            .contains("authorization: aws4-hmac-sha256")),
        "signed S3 requests: {seen:?}"
    );
}
