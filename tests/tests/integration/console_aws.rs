//! The console's AWS half against moto: the DynamoDB task store (the tasks table and the
//! status table's runs-by-task index, as template.yaml defines them).

use chrono::Utc;
use hub_core::aws::task_store::DynamoTaskStore;
use hub_core::status::dynamodb::DynamoStore;
use hub_core::status::{ItemRecord, RunRecord, Status, StatusStore};
use hub_core::tasks::store::{ItemPage, TaskStore, TaskStoreError};
use hub_core::tasks::{Fields, Kind, Task, default_fields};
use hub_tests::{MotoServer, aws_fixtures};

const REGION: &str = "eu-west-1";

pub fn images_task(name: &str, source: &str, dest: &str, list: &str) -> Task {
    let mut f: Fields = default_fields(Kind::Images);
    f.insert("source".into(), source.into());
    f.insert("dest".into(), dest.into());
    f.insert("list".into(), list.into());
    Task::from_fields(name, Kind::Images, &f, Utc::now()).unwrap()
}

fn run(id: &str, minute: u32) -> RunRecord {
    RunRecord {
        run_id: id.into(),
        source: "s".into(),
        dest: "d".into(),
        dry_run: false,
        started_at: chrono::DateTime::parse_from_rfc3339(&format!(
            "2026-12-01T10:{minute:02}:00+00:00"
        ))
        .unwrap()
        .with_timezone(&Utc),
        ended_at: None,
        copied: 0,
        skipped: 0,
        failed: 0,
        bytes: 0,
        ..Default::default()
    }
}

#[test]
fn the_dynamodb_task_store_keeps_tasks_in_pages_refuses_a_second_create_and_lists_a_tasks_runs() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let moto = MotoServer::start();
    let conf = rt.block_on(moto.sdk_config(REGION));
    rt.block_on(async {
        aws_fixtures::tasks_table(&conf, "tasks").await;
        aws_fixtures::status_table(&conf, "status").await;
    });
    let ddb = aws_sdk_dynamodb::Client::new(&conf);
    let store = DynamoTaskStore::new(ddb.clone(), "tasks", "status");
    let status = DynamoStore::new(ddb, "status");
    rt.block_on(async {
        // 7 tasks, listed 3 at a time from the last name shown.
        for n in ["g", "c", "a", "e", "b", "f", "d"] {
            store
                .create(&images_task(n, "127.0.0.1:5000", "127.0.0.1:5001/m", "a:1"))
                .await
                .unwrap();
        }
        let mut names = Vec::new();
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = store.list(after.as_deref(), 3).await.unwrap();
            if page.is_empty() {
                break;
            }
            pages += 1;
            assert!(page.len() <= 3);
            after = page.last().map(|t| t.name.clone());
            names.extend(page.into_iter().map(|t| t.name));
        }
        assert_eq!(names, ["a", "b", "c", "d", "e", "f", "g"]);
        assert_eq!(pages, 3);

        // Two creates of one name: the second is refused, the first one stands.
        let other = images_task("a", "127.0.0.1:6000", "127.0.0.1:6001/x", "other:2");
        assert!(matches!(
            store.create(&other).await,
            Err(TaskStoreError::Exists(n)) if n == "a"
        ));
        let a = store.get("a").await.unwrap().unwrap();
        assert_eq!(a.source(), "127.0.0.1:5000");
        // Concurrent creates of one new name: exactly one wins.
        let (z1, z2) = (
            images_task("z", "127.0.0.1:1", "127.0.0.1:2", "a:1"),
            images_task("z", "127.0.0.1:3", "127.0.0.1:4", "b:1"),
        );
        let (x, y) = tokio::join!(store.create(&z1), store.create(&z2));
        assert_eq!(
            [x.is_ok(), y.is_ok()].iter().filter(|ok| **ok).count(),
            1,
            "{x:?} {y:?}"
        );

        // Update keeps created_at and what the scheduler noted; a missing task is NotFound.
        let at = Utc::now();
        store.set_last_scheduled("b", at).await.unwrap();
        let mut b = store.get("b").await.unwrap().unwrap();
        b.enabled = false;
        b.schedule = Some("rate(1 day)".into());
        b.updated_at = Utc::now();
        store.update(&b).await.unwrap();
        assert_eq!(store.get("b").await.unwrap().unwrap(), b);
        assert_eq!(
            store
                .last_scheduled("b")
                .await
                .unwrap()
                .map(|t| t.timestamp()),
            Some(at.timestamp())
        );
        b.schedule = None;
        store.update(&b).await.unwrap();
        assert_eq!(store.get("b").await.unwrap().unwrap().schedule, None);
        assert!(matches!(
            store
                .update(&images_task("nope", "127.0.0.1:1", "127.0.0.1:2", "a:1"))
                .await,
            Err(TaskStoreError::NotFound(_))
        ));

        // Runs: written by the functions, marked with their task; newest first, in pages.
        for (id, minute) in [("r1", 1), ("r2", 2), ("r3", 3)] {
            status.put_run(&run(id, minute)).await.unwrap();
            status.note_task(id, "b").await.unwrap();
        }
        status.put_run(&run("r-other", 4)).await.unwrap(); // a run of no task
        let ids = |v: Vec<RunRecord>| v.into_iter().map(|r| r.run_id).collect::<Vec<_>>();
        assert_eq!(ids(store.runs("b", None, 2).await.unwrap()), ["r3", "r2"]);
        assert_eq!(ids(store.runs("b", Some("r2"), 2).await.unwrap()), ["r1"]);
        assert!(store.runs("b", Some("r1"), 2).await.unwrap().is_empty());
        assert!(store.runs("a", None, 10).await.unwrap().is_empty());
        assert_eq!(store.task_of("r2").await.unwrap().as_deref(), Some("b"));
        assert_eq!(store.task_of("r-other").await.unwrap(), None);
        // A later rewrite of the run record (record-status at the end) keeps its task.
        let mut done = run("r3", 3);
        done.copied = 5;
        done.ended_at = Some(Utc::now());
        status.put_run(&done).await.unwrap();
        assert_eq!(store.task_of("r3").await.unwrap().as_deref(), Some("b"));
        assert_eq!(store.run("r3").await.unwrap().unwrap().copied, 5);

        // Items: a page, and the failed ones alone, with their totals.
        for i in 0..5u32 {
            let now = Utc::now();
            status
                .put_item(&ItemRecord {
                    run_id: "r3".into(),
                    source: format!("src/app{i}:1"),
                    dest: format!("dst/app{i}:1"),
                    status: if i % 2 == 0 {
                        Status::Copied
                    } else {
                        Status::Failed
                    },
                    source_digest: None,
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
                })
                .await
                .unwrap();
        }
        let page = |failed_only, after: Option<(&str, &str)>, limit| ItemPage {
            failed_only,
            after: after.map(|(s, d)| (s.to_string(), d.to_string())),
            limit,
        };
        let sources = |v: Vec<ItemRecord>| v.into_iter().map(|i| i.source).collect::<Vec<_>>();
        let first = store.items("r3", &page(false, None, 2)).await.unwrap();
        assert_eq!(sources(first), ["src/app0:1", "src/app1:1"]);
        let next = store
            .items("r3", &page(false, Some(("src/app1:1", "dst/app1:1")), 2))
            .await
            .unwrap();
        assert_eq!(
            sources(next),
            ["src/app2:1", "src/app3:1"],
            "after the cursor"
        );
        let failed = store.items("r3", &page(true, None, 1)).await.unwrap();
        assert_eq!(sources(failed), ["src/app1:1"]);
        let failed = store
            .items("r3", &page(true, Some(("src/app1:1", "dst/app1:1")), 10))
            .await
            .unwrap();
        assert_eq!(sources(failed), ["src/app3:1"]);

        assert!(store.delete("b").await.unwrap());
        assert!(!store.delete("b").await.unwrap());
        assert!(store.get("b").await.unwrap().is_none());
    });
}

/// An API Gateway v2 (HTTP API) event as the console function gets it; `claims` as a
/// Cognito JWT authorizer passes them (none: a request that did not come through it).
fn event(
    method: &str,
    path: &str,
    body: Option<&str>,
    claims: Option<serde_json::Value>,
    extra_headers: &[(&str, &str)],
) -> lambda_http::Request {
    let mut headers = serde_json::json!({
        "content-type": "application/x-www-form-urlencoded",
        "authorization": "Bearer eyJ.test.token",
        "host": "abc.execute-api.eu-west-1.amazonaws.com",
    });
    // API Gateway v2 passes cookies in `cookies`, not as a header; an empty value drops a
    // default header.
    let mut cookies = Vec::new();
    for (k, v) in extra_headers {
        if *k == "cookie" {
            cookies.push(v.to_string());
        } else if v.is_empty() {
            headers.as_object_mut().unwrap().remove(*k);
        } else {
            headers[*k] = (*v).into();
        }
    }
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let mut ctx = serde_json::json!({
        "accountId": hub_tests::iam::ACCOUNT,
        "apiId": "abc",
        "domainName": "abc.execute-api.eu-west-1.amazonaws.com",
        "domainPrefix": "abc",
        "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                 "sourceIp": "127.0.0.1", "userAgent": "test"},
        "requestId": "req",
        "routeKey": "ANY /{proxy+}",
        "stage": "$default",
        "time": "02/Dec/2026:07:00:00 +0000",
        "timeEpoch": 0,
    });
    if let Some(c) = claims {
        ctx["authorizer"] = serde_json::json!({"jwt": {"claims": c, "scopes": null}});
    }
    let ev = serde_json::json!({
        "version": "2.0",
        "routeKey": "ANY /{proxy+}",
        "rawPath": path,
        "rawQueryString": query,
        "cookies": cookies,
        "headers": headers,
        "requestContext": ctx,
        "body": body,
        "isBase64Encoded": false,
    });
    let req: lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpRequest =
        serde_json::from_value(ev).unwrap();
    lambda_http::request::LambdaRequest::ApiGatewayV2(req).into()
}

fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    html[at..at + 64].to_string()
}

#[test]
fn the_console_lambda_makes_a_tasks_schedule_starts_its_run_removes_the_schedule_and_refuses_calls_without_claims()
 {
    use hub_tests::iam::{ACCOUNT, Deployment, IamMoto};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let iam = IamMoto::start("console_aws-the_console_lambda");
    let admin = rt.block_on(iam.admin_config(REGION));
    let sfn = aws_sdk_sfn::Client::new(&admin);
    let scheduler = aws_sdk_scheduler::Client::new(&admin);
    let (machine, scheduler_role) = rt.block_on(async {
        aws_fixtures::tasks_table(&admin, "tasks").await;
        aws_fixtures::status_table(&admin, "status").await;
        scheduler
            .create_schedule_group()
            .name("th-tasks")
            .send()
            .await
            .unwrap();
        let machine = sfn
            .create_state_machine()
            .name("images")
            .definition(r#"{"StartAt":"P","States":{"P":{"Type":"Pass","End":true}}}"#)
            .role_arn(format!("arn:aws:iam::{ACCOUNT}:role/sfn"))
            .send()
            .await
            .unwrap()
            .state_machine_arn()
            .to_string();
        (machine, format!("arn:aws:iam::{ACCOUNT}:role/th-scheduler"))
    });
    let deployment = Deployment::new(REGION)
        .table("TasksTable", "tasks")
        .table("StatusTable", "status")
        .resource("ImagesStateMachine", &machine, &machine)
        .resource(
            "ConsoleScheduleGroup",
            "th-tasks",
            &format!("arn:aws:scheduler:{REGION}:{ACCOUNT}:schedule-group/th-tasks"),
        )
        .resource("ConsoleSchedulerRole", "th-scheduler", &scheduler_role);
    let conf = rt.block_on(iam.config(&iam.role("ConsoleRole", &deployment), REGION));
    let env = hub_core::config::Env::from_map(
        [
            ("TASKS_TABLE", "tasks"),
            ("TABLE_NAME", "status"),
            ("IMAGES_STATE_MACHINE_ARN", machine.as_str()),
            ("SCHEDULE_GROUP", "th-tasks"),
            ("SCHEDULER_ROLE_ARN", scheduler_role.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    let router = hub_core::aws::functions::ConsoleFn::router(env, &conf).unwrap();
    let claims = || Some(serde_json::json!({"sub": "u-1", "email": "ops@example.com"}));
    let call = |req: lambda_http::Request| {
        let r = rt
            .block_on(hub_core::console::lambda::handle(
                router.clone().into(),
                req,
            ))
            .unwrap();
        let status = r.status().as_u16();
        let location = r
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string());
        let body = String::from_utf8_lossy(r.body().as_ref()).into_owned();
        (status, location, body)
    };

    // Without the authorizer's claims: refused, even with the console's own headers forged.
    let (status, _, _) = call(event("GET", "/tasks", None, None, &[]));
    assert_eq!(status, 401);
    let (status, _, _) = call(event(
        "GET",
        "/tasks",
        None,
        None,
        &[
            ("x-transfer-hub-user", "admin"),
            ("x-transfer-hub-csrf-seed", "x"),
        ],
    ));
    assert_eq!(
        status, 401,
        "headers a client sends cannot stand in for claims"
    );

    // The new-task form, as the logged-in caller; a POST without its CSRF token is refused.
    let (status, _, page) = call(event("GET", "/tasks/new?kind=images", None, claims(), &[]));
    assert_eq!(status, 200, "{page}");
    let csrf = csrf_of(&page);
    let form = |csrf: &str| {
        // The form as the page sends it: every field with its default, then what was typed.
        let mut f: Vec<(String, String)> = default_fields(Kind::Images).into_iter().collect();
        for (k, v) in [
            ("csrf", csrf),
            ("kind", "images"),
            ("name", "web"),
            ("source", "registry.example:5000/team"),
            (
                "dest",
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com/mirror",
            ),
            ("list", "app:1\nworker:2\n"),
            ("schedule", "rate(1 hour)"),
        ] {
            f.push((k.into(), v.into()));
        }
        serde_urlencoded::to_string(f).unwrap()
    };
    let (status, _, _) = call(event(
        "POST",
        "/tasks/new",
        Some(&form("0".repeat(64).as_str())),
        claims(),
        &[],
    ));
    assert_eq!(status, 403, "a POST without the caller's CSRF token");

    // Creating the task makes its schedule: the stack's state machine, {"task": NAME}.
    let (status, location, body) = call(event(
        "POST",
        "/tasks/new",
        Some(&form(&csrf)),
        claims(),
        &[],
    ));
    assert_eq!(
        (status, location.as_deref()),
        (303, Some("/tasks/web")),
        "{body}"
    );
    let s = rt
        .block_on(
            scheduler
                .get_schedule()
                .group_name("th-tasks")
                .name("web")
                .send(),
        )
        .expect("the task's schedule exists");
    assert_eq!(s.schedule_expression(), Some("rate(1 hour)"));
    let target = s.target().unwrap();
    assert_eq!(target.arn(), machine);
    assert_eq!(target.role_arn(), scheduler_role);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(target.input().unwrap()).unwrap(),
        serde_json::json!({"task": "web"})
    );

    // Run now: an execution of the stack's state machine, named by its run id, with the task.
    let (status, location, body) = call(event(
        "POST",
        "/tasks/web/run",
        Some(&format!("csrf={csrf}")),
        claims(),
        &[],
    ));
    assert_eq!(status, 303, "{body}");
    let run_id = location
        .unwrap()
        .strip_prefix("/runs/")
        .unwrap()
        .to_string();
    let execs = rt
        .block_on(sfn.list_executions().state_machine_arn(&machine).send())
        .unwrap();
    assert_eq!(execs.executions().len(), 1);
    let exec = &execs.executions()[0];
    assert_eq!(exec.name(), run_id);
    let d = rt
        .block_on(
            sfn.describe_execution()
                .execution_arn(exec.execution_arn())
                .send(),
        )
        .unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(d.input().unwrap()).unwrap(),
        serde_json::json!({"task": "web"})
    );
    // Its page answers at once (waiting for list-images to write the run record).
    let (status, _, _) = call(event(
        "GET",
        &format!("/runs/{run_id}"),
        None,
        claims(),
        &[],
    ));
    assert_eq!(status, 200);

    // Deleting the task removes its schedule.
    let (status, _, body) = call(event(
        "POST",
        "/tasks/web/delete",
        Some(&format!("csrf={csrf}")),
        claims(),
        &[],
    ));
    assert_eq!(status, 303, "{body}");
    let gone = rt.block_on(
        scheduler
            .get_schedule()
            .group_name("th-tasks")
            .name("web")
            .send(),
    );
    assert!(gone.is_err(), "the schedule went with the task: {gone:?}");
    let (status, _, _) = call(event("GET", "/tasks/web", None, claims(), &[]));
    assert_eq!(status, 404);
}

/// On a stack with the objects half, an objects task made in the console gets a schedule
/// that starts the objects-diff state machine, and its run now starts an execution of that
/// state machine (not the images one), named by the run id, with `{"task": NAME}` and the
/// run id diff-objects records the run under. The console's role may start the stack's two
/// state machines and nothing else.
#[test]
fn the_console_lambda_runs_an_objects_task_on_the_objects_state_machine() {
    use hub_tests::iam::{ACCOUNT, Deployment, IamMoto};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let iam = IamMoto::start("console_aws-the_console_lambda_runs_an_objects_task");
    let admin = rt.block_on(iam.admin_config(REGION));
    let sfn = aws_sdk_sfn::Client::new(&admin);
    let scheduler = aws_sdk_scheduler::Client::new(&admin);
    let machine = |name: &'static str| {
        let sfn = sfn.clone();
        async move {
            sfn.create_state_machine()
                .name(name)
                .definition(r#"{"StartAt":"P","States":{"P":{"Type":"Pass","End":true}}}"#)
                .role_arn(format!("arn:aws:iam::{ACCOUNT}:role/sfn"))
                .send()
                .await
                .unwrap()
                .state_machine_arn()
                .to_string()
        }
    };
    let (images, objects) = rt.block_on(async {
        aws_fixtures::tasks_table(&admin, "tasks").await;
        aws_fixtures::status_table(&admin, "status").await;
        scheduler
            .create_schedule_group()
            .name("th-tasks")
            .send()
            .await
            .unwrap();
        (machine("images").await, machine("objects-diff").await)
    });
    let scheduler_role = format!("arn:aws:iam::{ACCOUNT}:role/th-scheduler");
    let deployment = Deployment::new(REGION)
        .param("ObjectSourceBucket", "src")
        .param("ObjectDestBucket", "dst")
        .table("TasksTable", "tasks")
        .table("StatusTable", "status")
        .resource("ImagesStateMachine", &images, &images)
        .resource("ObjectsDiffStateMachine", &objects, &objects)
        .resource(
            "ConsoleScheduleGroup",
            "th-tasks",
            &format!("arn:aws:scheduler:{REGION}:{ACCOUNT}:schedule-group/th-tasks"),
        )
        .resource("ConsoleSchedulerRole", "th-scheduler", &scheduler_role);
    let conf = rt.block_on(iam.config(&iam.role("ConsoleRole", &deployment), REGION));
    let env = hub_core::config::Env::from_map(
        [
            ("TASKS_TABLE", "tasks"),
            ("TABLE_NAME", "status"),
            ("IMAGES_STATE_MACHINE_ARN", images.as_str()),
            ("OBJECTS_STATE_MACHINE_ARN", objects.as_str()),
            ("SCHEDULE_GROUP", "th-tasks"),
            ("SCHEDULER_ROLE_ARN", scheduler_role.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    let router = hub_core::aws::functions::ConsoleFn::router(env, &conf).unwrap();
    let claims = || Some(serde_json::json!({"sub": "u-1", "email": "ops@example.com"}));
    let call = |req: lambda_http::Request| {
        let r = rt
            .block_on(hub_core::console::lambda::handle(
                router.clone().into(),
                req,
            ))
            .unwrap();
        let status = r.status().as_u16();
        let location = r
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string());
        let body = String::from_utf8_lossy(r.body().as_ref()).into_owned();
        (status, location, body)
    };
    let (status, _, page) = call(event("GET", "/tasks/new?kind=objects", None, claims(), &[]));
    assert_eq!(status, 200, "{page}");
    let csrf = csrf_of(&page);
    let mut f: Vec<(String, String)> = default_fields(Kind::Objects).into_iter().collect();
    for (k, v) in [
        ("csrf", csrf.as_str()),
        ("kind", "objects"),
        ("name", "photos"),
        ("source", "s3://src/photos/"),
        ("dest", "s3://dst/photos-copy/"),
        ("schedule", "rate(6 hours)"),
    ] {
        f.push((k.into(), v.into()));
    }
    let (status, location, body) = call(event(
        "POST",
        "/tasks/new",
        Some(&serde_urlencoded::to_string(f).unwrap()),
        claims(),
        &[],
    ));
    assert_eq!(
        (status, location.as_deref()),
        (303, Some("/tasks/photos")),
        "{body}"
    );
    let s = rt
        .block_on(
            scheduler
                .get_schedule()
                .group_name("th-tasks")
                .name("photos")
                .send(),
        )
        .expect("the objects task's schedule exists");
    assert_eq!(s.schedule_expression(), Some("rate(6 hours)"));
    assert_eq!(
        s.target().unwrap().arn(),
        objects,
        "the objects state machine"
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(s.target().unwrap().input().unwrap()).unwrap(),
        serde_json::json!({"task": "photos"})
    );

    let (status, location, body) = call(event(
        "POST",
        "/tasks/photos/run",
        Some(&format!("csrf={csrf}")),
        claims(),
        &[],
    ));
    assert_eq!(status, 303, "{body}");
    let run_id = location
        .unwrap()
        .strip_prefix("/runs/")
        .unwrap()
        .to_string();
    let list = |arn: &str| {
        rt.block_on(sfn.list_executions().state_machine_arn(arn).send())
            .unwrap()
            .executions()
            .to_vec()
    };
    assert!(list(&images).is_empty(), "not the images state machine");
    let execs = list(&objects);
    assert_eq!(execs.len(), 1);
    assert_eq!(execs[0].name(), run_id);
    let d = rt
        .block_on(
            sfn.describe_execution()
                .execution_arn(execs[0].execution_arn())
                .send(),
        )
        .unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(d.input().unwrap()).unwrap(),
        serde_json::json!({"task": "photos", "run_id": run_id})
    );
    // What diff-objects reads from it: the task, and the run to record.
    let req: hub_core::objects::suite::DiffRequest =
        serde_json::from_str(d.input().unwrap()).unwrap();
    assert_eq!(
        (req.task.as_deref(), req.run_id.as_str()),
        (Some("photos"), run_id.as_str())
    );
    assert!(iam.denied().is_empty(), "{:?}", iam.denied());
}

/// The console function's own login (no authorizer in front): the hosted UI's
/// authorization-code flow against moto's Cognito user pool (the pool, its users and their
/// RS256 ID tokens, and the pool's published keys, all moto's), with a small handler standing
/// in for the hosted UI's token endpoint, which moto lacks. Then only the pool's valid ID
/// tokens for the console's client are taken, from the cookie or a Bearer header.
#[test]
fn the_console_lambda_logs_a_browser_in_through_the_hosted_ui_and_takes_only_valid_id_tokens_of_its_pool()
 {
    use hub_tests::iam::{ACCOUNT, Deployment, IamMoto};
    use hub_tests::{Body, FakeRegistry, Reply};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let iam = IamMoto::start("console_aws-login");
    let admin = rt.block_on(iam.admin_config(REGION));
    let pool = iam.cognito(REGION);
    let s = |k: &str| pool[k].as_str().unwrap().to_string();
    let (pool_id, client, id_token) = (s("pool"), s("client"), s("id_token"));
    // Where the stack keeps the client's id (ConsoleClientIdParameter).
    let parameter = "/transfer-hub/console/client-id";
    rt.block_on(async {
        aws_fixtures::tasks_table(&admin, "tasks").await;
        aws_fixtures::status_table(&admin, "status").await;
        aws_sdk_ssm::Client::new(&admin)
            .put_parameter()
            .name(parameter)
            .value(&client)
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .send()
            .await
            .unwrap();
    });
    let answer = serde_json::json!({"id_token": id_token, "access_token": s("access_token"),
                                    "expires_in": 3600, "token_type": "Bearer"})
    .to_string();
    let token_endpoint = FakeRegistry::start(std::sync::Arc::new(move |head: &str| {
        if head.starts_with("POST /oauth2/token ") {
            Reply::json(&answer)
        } else {
            Reply::new(404, &[], Body::Bytes(Vec::new()))
        }
    }));
    let machine = format!("arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:images");
    let deployment = Deployment::new(REGION)
        .table("TasksTable", "tasks")
        .table("StatusTable", "status")
        .resource("ImagesStateMachine", &machine, &machine);
    let conf = rt.block_on(iam.config(&iam.role("ConsoleRole", &deployment), REGION));
    let issuer = format!("https://cognito-idp.{REGION}.amazonaws.com/{pool_id}");
    let hosted_ui = format!("http://{}", token_endpoint.addr);
    let jwks = format!("{}/{pool_id}/.well-known/jwks.json", iam.moto.endpoint);
    let env = hub_core::config::Env::from_map(
        [
            ("TASKS_TABLE", "tasks"),
            ("TABLE_NAME", "status"),
            ("IMAGES_STATE_MACHINE_ARN", machine.as_str()),
            ("SCHEDULE_GROUP", "th-tasks"),
            (
                "SCHEDULER_ROLE_ARN",
                "arn:aws:iam::123456789012:role/th-scheduler",
            ),
            ("CONSOLE_TOKEN_ISSUER", issuer.as_str()),
            ("CONSOLE_CLIENT_ID_PARAMETER", parameter),
            ("CONSOLE_HOSTED_UI", hosted_ui.as_str()),
            ("CONSOLE_JWKS_URL", jwks.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    // The function reads the client id with its own role (ssm:GetParameter, IAM enforced).
    let host = rt
        .block_on(hub_core::aws::functions::ConsoleFn::host(env, &conf))
        .unwrap();
    let call = |req: lambda_http::Request| {
        let r = rt
            .block_on(hub_core::console::lambda::handle(host.clone(), req))
            .unwrap();
        let header = |name: &str| -> Vec<String> {
            r.headers()
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect()
        };
        (
            r.status().as_u16(),
            header("location").pop(),
            header("set-cookie"),
            String::from_utf8_lossy(r.body().as_ref()).into_owned(),
        )
    };
    let no_bearer = ("authorization", "");
    fn cookie(c: &str) -> (&'static str, &str) {
        ("cookie", c)
    }

    // A browser with no session is sent to the login, and the login to the hosted UI.
    let (status, location, _, _) = call(event("GET", "/tasks", None, None, &[no_bearer]));
    assert_eq!((status, location.as_deref()), (303, Some("/login")));
    let (status, _, _, _) = call(event("POST", "/tasks", Some("x=1"), None, &[no_bearer]));
    assert_eq!(status, 401, "not a page: refused, not redirected");
    let (status, location, set, _) = call(event("GET", "/login", None, None, &[no_bearer]));
    assert_eq!(status, 303);
    let location = location.unwrap();
    let callback = "https%3A%2F%2Fabc.execute-api.eu-west-1.amazonaws.com%2Fcallback";
    assert!(
        location.starts_with(&format!(
            "{hosted_ui}/oauth2/authorize?response_type=code&client_id={client}&redirect_uri={callback}&scope=openid+email&state="
        )),
        "{location}"
    );
    let state = location.rsplit("state=").next().unwrap().to_string();
    assert_eq!(state.len(), 64, "{location}");
    let state_cookie = set
        .iter()
        .find(|c| c.starts_with("th_oauth_state="))
        .unwrap_or_else(|| panic!("{set:?}"));
    assert!(
        state_cookie.starts_with(&format!("th_oauth_state={state};"))
            && state_cookie.contains("HttpOnly")
            && state_cookie.contains("Secure"),
        "{state_cookie}"
    );

    // A callback whose state is not the one this browser holds is refused before any code
    // is traded.
    let state_kv = format!("th_oauth_state={state}");
    let (status, _, set, _) = call(event(
        "GET",
        &format!("/callback?code=c-1&state={}", "0".repeat(64)),
        None,
        None,
        &[no_bearer, ("cookie", state_kv.as_str())],
    ));
    assert_eq!(status, 400);
    assert!(set.iter().all(|c| !c.starts_with("th_id=")), "{set:?}");
    assert!(token_endpoint.requests().is_empty());

    // The right state: the code goes to the token endpoint, the ID token into the cookie.
    let (status, _, set, page) = call(event(
        "GET",
        &format!("/callback?code=c-1&state={state}"),
        None,
        None,
        &[no_bearer, ("cookie", state_kv.as_str())],
    ));
    assert_eq!(status, 200, "{page}");
    let session = set
        .iter()
        .find(|c| c.starts_with("th_id="))
        .unwrap_or_else(|| panic!("{set:?}"));
    assert!(
        session.starts_with(&format!("th_id={id_token};"))
            && session.contains("HttpOnly")
            && session.contains("Secure")
            && session.contains("SameSite=Strict"),
        "{session}"
    );
    assert!(page.contains("url=/"), "{page}");
    let sent = token_endpoint.bodies();
    assert_eq!(sent.len(), 1);
    let form: std::collections::HashMap<String, String> =
        serde_urlencoded::from_str(&sent[0]).unwrap();
    assert_eq!(form["grant_type"], "authorization_code");
    assert_eq!(form["code"], "c-1");
    assert_eq!(form["client_id"], client);
    assert_eq!(
        form["redirect_uri"],
        "https://abc.execute-api.eu-west-1.amazonaws.com/callback"
    );

    // With the cookie, the pages answer; so they do with the token as a Bearer header.
    let id_cookie = format!("th_id={id_token}");
    let (status, _, _, page) = call(event(
        "GET",
        "/tasks",
        None,
        None,
        &[no_bearer, cookie(&id_cookie)],
    ));
    assert_eq!(status, 200, "{page}");
    let bearer = format!("Bearer {id_token}");
    let (status, _, _, _) = call(event(
        "GET",
        "/tasks",
        None,
        None,
        &[("authorization", bearer.as_str())],
    ));
    assert_eq!(status, 200);

    // A changed claim breaks the signature; another client's ID token and an access token
    // are signed by the pool but are not the console's: all refused.
    let mut parts: Vec<String> = id_token.split('.').map(str::to_string).collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let mut claims: serde_json::Value =
        serde_json::from_slice(&b64.decode(&parts[1]).unwrap()).unwrap();
    claims["email"] = "admin@example.com".into();
    parts[1] = b64.encode(claims.to_string());
    let forged = parts.join(".");
    for (what, token) in [
        ("forged", forged),
        ("another client's", s("other_id_token")),
        ("an access token", s("access_token")),
    ] {
        let c = format!("th_id={token}");
        let (status, location, _, _) =
            call(event("GET", "/tasks", None, None, &[no_bearer, cookie(&c)]));
        assert_eq!(
            (status, location.as_deref()),
            (303, Some("/login")),
            "{what}"
        );
        let b = format!("Bearer {token}");
        let (status, _, _, body) = call(event(
            "POST",
            "/tasks",
            Some("x=1"),
            None,
            &[("authorization", b.as_str())],
        ));
        assert_eq!(status, 401, "{what}");
        assert!(!body.contains(&token), "{what}: the token is not echoed");
    }

    // Log out: the session cookie goes, and the browser to the hosted UI's logout.
    let (status, location, set, _) = call(event(
        "GET",
        "/logout",
        None,
        None,
        &[no_bearer, cookie(&id_cookie)],
    ));
    assert_eq!(status, 303);
    assert!(location.unwrap().starts_with(&format!(
        "{hosted_ui}/logout?client_id={client}&logout_uri=https%3A%2F%2Fabc"
    )),);
    assert!(
        set.iter()
            .any(|c| c.starts_with("th_id=;") && c.contains("Max-Age=0")),
        "{set:?}"
    );
}

/// The DynamoDB status store keeps the first sighting of a digest (`--min-age`) as the
/// SQLite one does: the first recorded time wins, a dry run writes none, and those records
/// never show up as runs.
#[test]
fn the_dynamodb_status_store_keeps_a_digests_first_sighting_apart_from_runs() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let moto = MotoServer::start();
    let conf = rt.block_on(moto.sdk_config(REGION));
    rt.block_on(aws_fixtures::status_table(&conf, "status"));
    let status = DynamoStore::new(aws_sdk_dynamodb::Client::new(&conf), "status");
    let t = |s: i64| chrono::DateTime::<Utc>::from_timestamp(1_800_000_000 + s, 0).unwrap();
    rt.block_on(async {
        let seen = |repo: &'static str, d: &'static str, at: i64, record: bool| {
            let status = &status;
            async move { status.first_seen(repo, d, t(at), record).await.unwrap() }
        };
        assert_eq!(seen("r/a", "sha256:1", 5, false).await, t(5));
        assert_eq!(seen("r/a", "sha256:1", 10, true).await, t(10));
        assert_eq!(seen("r/a", "sha256:1", 99, true).await, t(10));
        assert_eq!(seen("r/a", "sha256:1", 99, false).await, t(10));
        assert_eq!(seen("r/a", "sha256:2", 50, true).await, t(50));
        assert_eq!(seen("r/b", "sha256:1", 60, true).await, t(60));
        // Concurrent first sightings of one digest: both get the one that was written.
        let (x, y) = tokio::join!(
            seen("r/c", "sha256:9", 70, true),
            seen("r/c", "sha256:9", 80, true)
        );
        assert_eq!(x, y);
        assert_eq!(seen("r/c", "sha256:9", 90, false).await, x);
        assert!(status.list_runs(10).await.unwrap().is_empty());
    });
}
