//! Tasks and the console: `transfer-hub task …` and `transfer-hub serve` against real
//! registries (docker-registry + skopeo) and moto's S3, and the console in headless
//! Chromium through WebDriver. Screenshots go to target/console-screenshots/.

use aws_sdk_s3::primitives::ByteStream;
use hub_tests::browser::Browser;
use hub_tests::{
    MotoServer, OciImage, RegistryServer, Run, aws_fixtures, transfer_hub, transfer_hub_bin,
};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const REGION: &str = "eu-west-1";

fn task(state: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut a = vec!["task"];
    a.extend_from_slice(args);
    let s = state.to_str().unwrap();
    a.extend_from_slice(&["--state", s]);
    transfer_hub(&a, env)
}

fn small() -> OciImage {
    OciImage::single(&[4096, 1024])
}

#[test]
fn task_commands_keep_a_task_run_it_like_images_sync_and_change_only_what_edit_names() {
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    small().push(&format!("{}/team/a:1", src.addr), None);
    small().push(&format!("{}/team/b:2", src.addr), None);
    let state = dir.path().join("state.db");
    let list = dir.path().join("list.txt");

    // Every invalid field in one answer, the bad line with its number; nothing saved.
    std::fs::write(&list, "a:1\nBAD::x\n").unwrap();
    let source = format!("{}/team", src.addr);
    let r = task(
        &state,
        &[
            "add",
            "Web",
            "--kind",
            "images",
            "--source",
            &source,
            "--dest",
            &dst.addr,
            "--list",
            list.to_str().unwrap(),
            "--schedule",
            "rate(1 hours)",
        ],
        &[],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    for says in [
        "--name: \"Web\"",
        "--list: 1 bad line(s); line 2: \"BAD::x\"",
        "--schedule: \"rate(1 hours)\"",
    ] {
        assert!(r.stderr.contains(says), "{says:?} in:\n{}", r.stderr);
    }
    let r = task(&state, &["list", "--output", "json"], &[]);
    assert_eq!(r.json(), serde_json::json!([]), "nothing saved");

    std::fs::write(&list, "a:1\nb:2\n").unwrap();
    let r = task(
        &state,
        &[
            "add",
            "web",
            "--kind",
            "images",
            "--source",
            &source,
            "--dest",
            &dst.addr,
            "--list",
            list.to_str().unwrap(),
            "--schedule",
            "rate(1 day)",
            "--retry-base-ms",
            "20",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = task(
        &state,
        &[
            "add",
            "web",
            "--kind",
            "images",
            "--source",
            &source,
            "--dest",
            &dst.addr,
            "--all-repos",
        ],
        &[],
    );
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("exists already"), "{}", r.stderr);

    // The list is kept as text: changing the file changes nothing.
    std::fs::write(&list, "nothing:9\n").unwrap();
    let r = task(&state, &["run", "web", "--output", "json"], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j = r.json();
    assert_eq!(
        (j["copied"].as_u64(), j["failed"].as_u64()),
        (Some(2), Some(0)),
        "{j:#}"
    );
    for (repo, tag) in [("a", "1"), ("b", "2")] {
        let want = src.digest(&format!("team/{repo}"), tag).unwrap();
        assert_eq!(
            dst.digest(repo, tag).as_deref(),
            Some(want.as_str()),
            "{repo}:{tag}"
        );
        let item = j["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| {
                i["dest"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!("/{repo}:{tag}"))
            })
            .unwrap();
        assert_eq!(item["dest_digest"].as_str(), Some(want.as_str()));
    }
    // The run belongs to the task; `status` finds it as any run.
    let run_id = j["run_id"].as_str().unwrap().to_string();
    let r = transfer_hub(
        &[
            "status",
            "--run",
            &run_id,
            "--state",
            state.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = task(&state, &["list"], &[]);
    assert!(
        r.stdout.contains("web ")
            && r.stdout.contains("rate(1 day)")
            && r.stdout.contains("2c/0s/0f"),
        "{}",
        r.stdout
    );

    // edit: only the flags given change.
    let r = task(
        &state,
        &["edit", "web", "--retries", "5", "--disabled"],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j = task(&state, &["show", "web", "--output", "json"], &[]).json();
    assert_eq!(j["enabled"], false);
    assert_eq!(j["schedule"], "rate(1 day)");
    assert_eq!(j["spec"]["retries"], 5);
    assert_eq!(j["spec"]["retry_base_ms"], 20);
    assert_eq!(j["spec"]["selection"]["list"], "a:1\nb:2");
    let r = task(&state, &["edit", "web", "--concurrency", "0"], &[]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--concurrency"), "{}", r.stderr);

    // A second run copies nothing: the digests are equal.
    let j = task(&state, &["run", "web", "--output", "json"], &[]).json();
    assert_eq!(
        (j["copied"].as_u64(), j["skipped"].as_u64()),
        (Some(0), Some(2)),
        "{j:#}"
    );

    let r = task(&state, &["rm", "web"], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = task(&state, &["run", "web"], &[]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no task named \"web\""), "{}", r.stderr);
}

struct S3 {
    moto: MotoServer,
    client: aws_sdk_s3::Client,
    rt: tokio::runtime::Runtime,
}

impl S3 {
    fn start(buckets: &[&str]) -> Self {
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
        }
    }
    fn put(&self, bucket: &str, key: &str, body: &[u8]) {
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
    fn keys(&self, bucket: &str) -> Vec<String> {
        let out = self
            .rt
            .block_on(self.client.list_objects_v2().bucket(bucket).send())
            .unwrap();
        out.contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect()
    }
}

#[test]
fn an_objects_task_runs_like_objects_sync() {
    let s3 = S3::start(&["task-src", "task-dst"]);
    s3.put("task-src", "data/a.txt", b"alpha");
    s3.put("task-src", "data/sub/b.txt", b"beta");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    let env = s3.moto.env(REGION);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let ep = s3.moto.endpoint.clone();
    let r = task(
        &state,
        &[
            "add",
            "backup",
            "--kind",
            "objects",
            "s3://task-src/data",
            "s3://task-dst/backup",
            "--source-endpoint",
            &ep,
            "--dest-endpoint",
            &ep,
            "--compare",
            "etag",
            "--schedule",
            "cron(0 3 * * ? *)",
        ],
        &env,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j = task(&state, &["run", "backup", "--output", "json"], &env).json();
    assert_eq!(
        (j["copied"].as_u64(), j["failed"].as_u64()),
        (Some(2), Some(0)),
        "{j:#}"
    );
    let mut keys = s3.keys("task-dst");
    keys.sort();
    assert_eq!(keys, ["backup/a.txt", "backup/sub/b.txt"]);
    let r = task(&state, &["show", "backup"], &env);
    assert!(
        r.stdout.contains("compare = etag") && r.stdout.contains("next run = "),
        "{}",
        r.stdout
    );
}

/// `transfer-hub serve` on a free port; stopped with SIGTERM on drop.
struct Serve {
    child: Child,
    base: String,
    login: String,
}

impl Serve {
    fn start(state: &Path, env: &[(String, String)]) -> Self {
        let mut c = Command::new(transfer_hub_bin());
        c.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--state",
            state.to_str().unwrap(),
            "--grace-secs",
            "5",
        ])
        .env_remove("REGISTRY_AUTH_FILE")
        .env("HOME", std::env::temp_dir().join("transfer-hub-test-home"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let login = line
            .trim()
            .strip_prefix("transfer-hub console: ")
            .unwrap_or_else(|| panic!("no console URL in {line:?}"))
            .to_string();
        let base = login.split("/?token=").next().unwrap().to_string();
        std::thread::spawn(move || for _ in out.lines() {});
        Serve { child, base, login }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn shots() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/integration-… → target/console-screenshots
    exe.ancestors().nth(3).unwrap().join("console-screenshots")
}

/// Waits (the page refreshes itself) until the run page no longer says "running".
fn wait_for_run(b: &Browser) -> String {
    for _ in 0..600 {
        let r = b.find_all("#result");
        if let Some(e) = r.first() {
            let t = b.text(e);
            if !t.is_empty() && t != "running" {
                return t;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the run did not finish:\n{}", b.source());
}

#[test]
fn console_in_a_real_browser_creates_runs_and_shows_tasks_safely() {
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    small().push(&format!("{}/team/a:1", src.addr), None);
    small().push(&format!("{}/team/b:2", src.addr), None);
    let s3 = S3::start(&["web-src", "web-dst"]);
    s3.put("web-src", "x/one.txt", b"one");
    let state = dir.path().join("state.db");
    let serve = Serve::start(&state, &s3.moto.env(REGION));
    let b = Browser::start();
    let shots = shots();

    // Without a login every page leads to the login page.
    b.goto(&format!("{}/tasks/new?kind=images", serve.base));
    assert!(b.url().ends_with("/login"), "{}", b.url());
    b.screenshot(&shots.join("01-login.png"));
    // A POST without a session goes to the login too, and changes nothing.
    let http = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = http
        .post(format!("{}/tasks/new", serve.base))
        .form(&[("kind", "images"), ("name", "x")])
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/login");

    // The one-time link logs in, once.
    b.goto(&serve.login);
    assert!(b.url().ends_with("/tasks"), "{}", b.url());
    let cookie = b
        .cookies()
        .into_iter()
        .find(|c| c["name"] == "th_session")
        .expect("session cookie");
    assert_eq!(cookie["httpOnly"], true);
    assert_eq!(cookie["sameSite"], "Strict");
    let r = http.get(&serve.login).send().unwrap();
    assert_eq!(r.status(), 403, "a used link logs nobody in");
    b.screenshot(&shots.join("02-tasks-empty.png"));

    // A new images task with one invalid field (and a hostile bad line): errors, nothing saved.
    b.goto(&format!("{}/tasks/new?kind=images", serve.base));
    b.fill("#f-name", "web");
    b.fill("#f-source", &format!("{}/team", src.addr));
    b.fill("#f-dest", "not a registry/x");
    let hostile = "<img src=x onerror=alert(1)>";
    b.fill("#f-list", &format!("a:1\nb:2\n{hostile}\n"));
    b.click("#save");
    assert!(
        b.text(&b.find("#err-dest")).contains("not a registry"),
        "{}",
        b.source()
    );
    let list_err = b.text(&b.find("#err-list"));
    assert!(
        list_err.contains(&format!("line 3: {hostile}")),
        "{list_err}"
    );
    assert!(
        b.find_all("#err-list img, [data-field=list] img")
            .is_empty(),
        "the line is text, not markup"
    );
    assert_eq!(b.alert(), None, "no script ran");
    assert!(
        b.source().contains("value=\"not a registry/x\""),
        "what was typed is kept"
    );
    b.screenshot(&shots.join("03-form-errors.png"));
    {
        use hub_core::tasks::store::TaskStore;
        let store = hub_core::status::SqliteStore::open(&state).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        assert!(
            rt.block_on(store.get("web")).unwrap().is_none(),
            "nothing saved"
        );
    }

    // Fixed and saved; run now; watch it finish; each image with its digest.
    b.fill("#f-dest", &dst.addr);
    b.fill("#f-list", "a:1\nb:2\n");
    b.click_to_leave("#save");
    assert!(b.url().ends_with("/tasks/web"), "{}", b.url());
    b.screenshot(&shots.join("04-task.png"));
    b.click_to_leave("#run-now");
    assert!(b.url().contains("/runs/"), "{}", b.url());
    assert_eq!(wait_for_run(&b), "in sync");
    let items = b.text(&b.find("#items"));
    for (repo, tag) in [("a", "1"), ("b", "2")] {
        let digest = dst.digest(repo, tag).expect("copied");
        assert_eq!(
            Some(&digest),
            src.digest(&format!("team/{repo}"), tag).as_ref()
        );
        assert!(
            items.contains(&format!("{}/{repo}:{tag}", dst.addr)) && items.contains(&digest),
            "{repo}:{tag} {digest} in\n{items}"
        );
    }
    assert_eq!(b.text(&b.find("#copied")), "2");
    b.screenshot(&shots.join("05-run.png"));
    let run_url = b.url();

    // A line that fails at run time shows on the run page; "retry failed" runs just it.
    b.goto(&format!("{}/tasks/web/edit", serve.base));
    b.fill("#f-list", "a:1\nb:2\nmissing:404\n");
    b.click_to_leave("#save");
    b.click_to_leave("#run-now");
    assert_eq!(wait_for_run(&b), "failed");
    b.click_to_leave("#failed-filter");
    let failed = b.text(&b.find("#items"));
    assert!(
        failed.contains("missing:404") && !failed.contains("/a:1"),
        "{failed}"
    );
    b.screenshot(&shots.join("06-run-failed.png"));
    small().push(&format!("{}/team/missing:404", src.addr), None);
    b.click_to_leave("#retry-failed");
    assert_eq!(wait_for_run(&b), "in sync");
    let retried = b.text(&b.find("#items"));
    assert!(
        retried.contains("missing:404") && !retried.contains("/a:1"),
        "just the failed image: {retried}"
    );
    assert!(dst.digest("missing", "404").is_some());

    // An objects task through the form, run now.
    b.goto(&format!("{}/tasks/new?kind=objects", serve.base));
    b.fill("#f-name", "files");
    b.fill("#f-source", "s3://web-src/x");
    b.fill("#f-dest", "s3://web-dst/y");
    b.fill("#f-source_endpoint", &s3.moto.endpoint);
    b.fill("#f-dest_endpoint", &s3.moto.endpoint);
    b.fill("#f-schedule", "cron(0 3 * * ? *)");
    b.click_to_leave("#save");
    assert!(
        b.url().ends_with("/tasks/files"),
        "{}\n{}",
        b.url(),
        b.source()
    );
    b.click_to_leave("#run-now");
    assert_eq!(wait_for_run(&b), "in sync");
    assert_eq!(b.text(&b.find("#copied")), "1");
    assert_eq!(s3.keys("web-dst"), ["y/one.txt"]);

    b.goto(&format!("{}/tasks", serve.base));
    let table = b.text(&b.find("#tasks"));
    assert!(
        table.contains("web") && table.contains("files") && table.contains("cron(0 3 * * ? *)"),
        "{table}"
    );
    b.screenshot(&shots.join("07-tasks.png"));

    // A POST with the session but without its CSRF token is refused; with it, it works.
    let cookie = format!("th_session={}", cookie["value"].as_str().unwrap());
    let r = http
        .post(format!("{}/tasks/web/delete", serve.base))
        .header("cookie", &cookie)
        .form(&[("x", "1")])
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .post(format!("{}/tasks/web/delete", serve.base))
        .header("cookie", &cookie)
        .form(&[("csrf", "0".repeat(64))])
        .send()
        .unwrap();
    assert_eq!(r.status(), 403, "a wrong token too");
    b.goto(&format!("{}/tasks/web/delete", serve.base));
    b.screenshot(&shots.join("08-delete.png"));
    b.click_to_leave("#confirm-delete");
    assert!(!b.text(&b.find("#tasks")).contains("web "), "deleted");
    b.goto(&run_url);
    assert!(
        b.text(&b.find("#items")).contains(&dst.addr),
        "its runs stay"
    );
}

#[test]
fn serve_runs_a_schedule_missed_while_it_was_down_once_at_start_and_stops_on_sigterm() {
    use hub_core::tasks::store::TaskStore;
    use hub_core::tasks::{Kind, Task, default_fields};
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    small().push(&format!("{}/app:1", src.addr), None);
    let state = dir.path().join("state.db");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = hub_core::status::SqliteStore::open(&state).unwrap();
    let mut f = default_fields(Kind::Images);
    f.insert("source".into(), src.addr.clone());
    f.insert("dest".into(), dst.addr.clone());
    f.insert("list".into(), "app:1".into());
    f.insert("schedule".into(), "rate(1 day)".into());
    // Saved three days ago, never run: two schedules were missed while no server ran.
    let saved = chrono::Utc::now() - chrono::Duration::days(3);
    let nightly = Task::from_fields("nightly", Kind::Images, &f, saved).unwrap();
    rt.block_on(store.create(&nightly)).unwrap();
    f.insert("enabled".into(), "false".into());
    let off = Task::from_fields("off", Kind::Images, &f, saved).unwrap();
    rt.block_on(store.create(&off)).unwrap();

    let serve = Serve::start(&state, &[]);
    let mut runs = Vec::new();
    for _ in 0..600 {
        runs = rt.block_on(store.runs("nightly", None, 10)).unwrap();
        if runs.first().is_some_and(|r| r.ended_at.is_some()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(runs.len(), 1, "one run for the missed schedules");
    assert_eq!(runs[0].copied, 1);
    assert_eq!(dst.digest("app", "1"), src.digest("app", "1"));
    // The missed schedule counts as run: the next one is a day on.
    let next = rt
        .block_on(hub_core::console::runner::next_run(&store, &nightly))
        .unwrap()
        .unwrap();
    assert!(
        next > chrono::Utc::now() + chrono::Duration::hours(20),
        "{next}"
    );
    assert!(
        rt.block_on(store.runs("off", None, 10)).unwrap().is_empty(),
        "a disabled task does not run"
    );
    drop(serve); // SIGTERM, waits for the exit
}

/// The cookie a response sets, as `name=value`, and its whole Set-Cookie line.
fn set_cookie(r: &reqwest::blocking::Response, name: &str) -> Option<(String, String)> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| (v.split(';').next().unwrap().to_string(), v.to_string()))
}

fn no_redirects() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The login form's nonce: its cookie and the value the form carries.
fn login_form(http: &reqwest::blocking::Client, base: &str) -> (String, String) {
    let r = http.get(format!("{base}/login")).send().unwrap();
    let (cookie, _) = set_cookie(&r, "th_login").expect("the login page sets its nonce");
    let body = r.text().unwrap();
    let nonce = body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the form carries the nonce")
        .to_string();
    (cookie, nonce)
}

#[test]
fn the_console_password_logs_in_a_wrong_one_does_not_and_the_link_works_once() {
    let dir = tempfile::tempdir().unwrap();
    let password = "correct horse battery staple";
    let serve = Serve::start(
        &dir.path().join("state.db"),
        &[("TRANSFER_HUB_CONSOLE_PASSWORD".into(), password.to_string())],
    );
    let http = no_redirects();
    let base = &serve.base;
    let tasks = |cookie: Option<&str>| {
        let mut q = http.get(format!("{base}/tasks"));
        if let Some(c) = cookie {
            q = q.header("cookie", c);
        }
        q.send().unwrap()
    };
    let r = tasks(None);
    assert_eq!(r.status(), 303, "no session: to the login page");
    assert_eq!(r.headers()["location"], "/login");

    // A wrong password: refused, no session.
    let (nonce_cookie, nonce) = login_form(&http, base);
    let r = http
        .post(format!("{base}/login"))
        .header("cookie", &nonce_cookie)
        .form(&[("csrf", nonce.as_str()), ("password", "wrong")])
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(set_cookie(&r, "th_session").is_none());
    assert!(r.text().unwrap().contains("Wrong password."));
    // The right one without the form's nonce: refused too.
    let r = http
        .post(format!("{base}/login"))
        .form(&[("csrf", nonce.as_str()), ("password", password)])
        .send()
        .unwrap();
    assert_eq!(r.status(), 403, "a login POST without its nonce cookie");

    let r = http
        .post(format!("{base}/login"))
        .header("cookie", &nonce_cookie)
        .form(&[("csrf", nonce.as_str()), ("password", password)])
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    let (session, line) = set_cookie(&r, "th_session").expect("a session");
    assert!(
        line.contains("HttpOnly") && line.contains("SameSite=Strict"),
        "{line}"
    );
    let r = tasks(Some(&session));
    assert_eq!(r.status(), 200);
    let body = r.text().unwrap();
    assert!(!body.contains(password), "the password is never shown");

    // Logging out ends the session.
    let csrf = body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    let r = http
        .post(format!("{base}/logout"))
        .header("cookie", &session)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(tasks(Some(&session)).status(), 303, "logged out");

    // The one-time link printed at start logs in once.
    let r = http.get(&serve.login).send().unwrap();
    assert_eq!(r.status(), 303);
    let (s2, _) = set_cookie(&r, "th_session").expect("the link logs in");
    assert_eq!(tasks(Some(&s2)).status(), 200);
    let r = http.get(&serve.login).send().unwrap();
    assert_eq!(r.status(), 403, "a second use of the link");
    assert!(set_cookie(&r, "th_session").is_none());
}

#[test]
fn a_run_of_many_items_pages_through_them_by_keyset_with_the_failed_filter() {
    use hub_core::status::{ItemRecord, RunRecord, SqliteStore, Status, StatusStore as _};
    use hub_core::tasks::store::TaskStore as _;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    let rt = tokio::runtime::Runtime::new().unwrap();
    {
        let store = SqliteStore::open(&state).unwrap();
        let now = chrono::Utc::now();
        rt.block_on(store.note_run("t", "big", now)).unwrap();
        // 450 items, every odd one failed (225): both filters span pages.
        for i in 0..450 {
            let failed = i % 2 == 1;
            rt.block_on(store.put_item(&ItemRecord {
                run_id: "big".into(),
                source: format!("src/app:{i:04}"),
                dest: format!("dst/app:{i:04}"),
                status: if failed {
                    Status::Failed
                } else {
                    Status::Copied
                },
                source_digest: Some(format!("sha256:{i:064x}")),
                dest_digest: None,
                attempts: 1,
                error: None,
                bytes: 1,
                started_at: Some(now),
                ended_at: Some(now),
                version: 1,
                line: None,
                resumed: None,
                waiting_until: None,
                reason: None,
            }))
            .unwrap();
        }
        rt.block_on(store.put_run(&RunRecord {
            run_id: "big".into(),
            source: "src".into(),
            dest: "dst".into(),
            dry_run: false,
            started_at: now,
            ended_at: Some(now),
            copied: 225,
            skipped: 0,
            failed: 225,
            bytes: 450,
            ..Default::default()
        }))
        .unwrap();
    }
    let serve = Serve::start(&state, &[]);
    let http = no_redirects();
    let r = http.get(&serve.login).send().unwrap();
    let (session, _) = set_cookie(&r, "th_session").unwrap();
    // Follows "Next →" from the first page; returns the sources shown on every page.
    let walk = |first: &str| {
        let mut url = format!("{}{first}", serve.base);
        let mut pages = Vec::new();
        loop {
            let body = http
                .get(&url)
                .header("cookie", &session)
                .send()
                .unwrap()
                .text()
                .unwrap();
            let shown: Vec<String> = body
                .split("<td class=\"mono\">src/app:")
                .skip(1)
                .map(|s| s[..4].to_string())
                .collect();
            pages.push((shown, body.clone()));
            let Some(next) = body
                .split("id=\"next-page\" href=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
            else {
                return pages;
            };
            url = format!("{}{}", serve.base, next.replace("&amp;", "&"));
        }
    };
    let all = walk("/runs/big");
    assert_eq!(
        all.iter().map(|(s, _)| s.len()).collect::<Vec<_>>(),
        [200, 200, 50]
    );
    let keys: Vec<String> = all.iter().flat_map(|(s, _)| s.clone()).collect();
    let want: Vec<String> = (0..450).map(|i| format!("{i:04}")).collect();
    assert_eq!(keys, want, "every item once, in order");
    assert!(
        all[0].1.contains("All items (450)"),
        "the count from the run"
    );
    let failed = walk("/runs/big?failed=1");
    assert_eq!(
        failed.iter().map(|(s, _)| s.len()).collect::<Vec<_>>(),
        [200, 25]
    );
    let keys: Vec<String> = failed.iter().flat_map(|(s, _)| s.clone()).collect();
    let want: Vec<String> = (0..450)
        .filter(|i| i % 2 == 1)
        .map(|i| format!("{i:04}"))
        .collect();
    assert_eq!(keys, want, "every failed item once, in order");
    assert!(failed[0].1.contains("Failed only (225)"));
}

#[test]
fn serve_goes_on_serving_when_its_stdout_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(transfer_hub_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--state"])
        .arg(dir.path().join("state.db"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read the URL, then close the pipe, as `transfer-hub serve | head -1` does.
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("transfer-hub console: ")
        .and_then(|l| l.split("/?token=").next())
        .unwrap()
        .to_string();
    std::thread::sleep(Duration::from_millis(500));
    let r = reqwest::blocking::get(format!("{base}/login")).unwrap();
    assert_eq!(r.status(), 200, "still serving");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// "Retry failed" on an objects task's run starts a run of just the failed keys: here one
/// object whose source reads were refused (403) in the first run. Before the retry the
/// source changes (another object's bytes, and a new object); a whole run would copy those
/// too, the retry copies only the failed one (each key looked up on both sides, not listed).
#[test]
fn retry_failed_of_an_objects_run_copies_just_the_failed_keys() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let s3 = S3::start(&["task-src", "task-dst"]);
    let refuse_b = Arc::new(AtomicBool::new(true));
    let refusing = refuse_b.clone();
    let forbidden = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>".to_vec();
    let proxy = hub_tests::s3_rig::StrictS3::start_with(
        &s3.moto.endpoint,
        Arc::new(move |req: &str, status, body| {
            let first = req.lines().next().unwrap_or_default();
            if refusing.load(Ordering::SeqCst)
                && first.starts_with("GET ")
                && first.contains("/task-src/data/b.txt")
            {
                (403, vec![], forbidden.clone())
            } else {
                (status, vec![], body)
            }
        }),
    );
    for (k, v) in [
        ("a.txt", "alpha"),
        ("b.txt", "beta"),
        ("sub/c.txt", "gamma"),
    ] {
        s3.put("task-src", &format!("data/{k}"), v.as_bytes());
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    let env = s3.moto.env(REGION);
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let ep = proxy.endpoint().to_string();
    let r = task(
        &state,
        &[
            "add",
            "backup",
            "--kind",
            "objects",
            "s3://task-src/data",
            "s3://task-dst/backup",
            "--source-endpoint",
            &ep,
            "--dest-endpoint",
            &ep,
            "--copy-mode",
            "stream",
            "--compare",
            "etag",
            "--retries",
            "0",
        ],
        &env_refs,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let password = "retry the failed ones";
    let mut serve_env = env.clone();
    serve_env.push(("TRANSFER_HUB_CONSOLE_PASSWORD".into(), password.into()));
    let serve = Serve::start(&state, &serve_env);
    let http = no_redirects();
    let base = serve.base.clone();
    let (nonce_cookie, nonce) = login_form(&http, &base);
    let r = http
        .post(format!("{base}/login"))
        .header("cookie", &nonce_cookie)
        .form(&[("csrf", nonce.as_str()), ("password", password)])
        .send()
        .unwrap();
    let (session, _) = set_cookie(&r, "th_session").expect("a session");
    let page = |path: &str| {
        http.get(format!("{base}{path}"))
            .header("cookie", &session)
            .send()
            .unwrap()
            .text()
            .unwrap()
    };
    let body = page("/tasks/backup");
    let csrf = body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    let post = |path: &str| {
        let r = http
            .post(format!("{base}{path}"))
            .header("cookie", &session)
            .form(&[("csrf", csrf.as_str())])
            .send()
            .unwrap();
        assert_eq!(r.status(), 303, "{path}");
        r.headers()["location"].to_str().unwrap().to_string()
    };
    let finished = |run: &str| {
        for _ in 0..600 {
            let body = page(run);
            let result = body
                .split("id=\"result\">")
                .nth(1)
                .and_then(|s| s.split('<').next())
                .unwrap_or_default()
                .to_string();
            if !result.is_empty() && result != "running" {
                return (result, body);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("{run} did not finish");
    };
    let first = post("/tasks/backup/run");
    let (result, body) = finished(&first);
    assert_eq!(result, "failed", "{body}");
    let mut keys = s3.keys("task-dst");
    keys.sort();
    assert_eq!(
        keys,
        ["backup/a.txt", "backup/sub/c.txt"],
        "b.txt was refused"
    );

    // The cause is fixed; meanwhile the source changed elsewhere.
    refuse_b.store(false, Ordering::SeqCst);
    s3.put("task-src", "data/a.txt", b"ALPHA");
    s3.put("task-src", "data/new.txt", b"new since");
    let retry = post(&format!("{first}/retry"));
    assert_ne!(retry, first);
    let (result, body) = finished(&retry);
    assert_eq!(result, "in sync", "{body}");
    assert!(body.contains("<td id=\"copied\">1</td>"), "{body}");
    let mut keys = s3.keys("task-dst");
    keys.sort();
    assert_eq!(
        keys,
        ["backup/a.txt", "backup/b.txt", "backup/sub/c.txt"],
        "the failed key copied, the new object not"
    );
    let get = |key: &str| {
        let o = s3
            .rt
            .block_on(s3.client.get_object().bucket("task-dst").key(key).send())
            .unwrap();
        s3.rt.block_on(o.body.collect()).unwrap().to_vec()
    };
    assert_eq!(get("backup/b.txt"), b"beta");
    assert_eq!(
        get("backup/a.txt"),
        b"alpha",
        "a.txt was not failed: not copied again"
    );
    // The retry's run lists just that object.
    assert!(body.contains("s3://task-src/data/b.txt"), "{body}");
    assert!(!body.contains("s3://task-src/data/a.txt"), "{body}");
    drop(serve);
}
