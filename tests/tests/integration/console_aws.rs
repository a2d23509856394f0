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
        assert_eq!(ids(store.runs("b", 0, 2).await.unwrap()), ["r3", "r2"]);
        assert_eq!(ids(store.runs("b", 2, 2).await.unwrap()), ["r1"]);
        assert!(store.runs("a", 0, 10).await.unwrap().is_empty());
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
                })
                .await
                .unwrap();
        }
        let page = |failed_only, offset, limit| ItemPage {
            failed_only,
            offset,
            limit,
        };
        let (items, total) = store.items("r3", page(false, 1, 2)).await.unwrap();
        assert_eq!(total, 5);
        assert_eq!(
            items.iter().map(|i| i.source.as_str()).collect::<Vec<_>>(),
            ["src/app1:1", "src/app2:1"]
        );
        let (failed, total) = store.items("r3", page(true, 0, 10)).await.unwrap();
        assert_eq!(total, 2);
        assert!(failed.iter().all(|i| i.status == Status::Failed));

        assert!(store.delete("b").await.unwrap());
        assert!(!store.delete("b").await.unwrap());
        assert!(store.get("b").await.unwrap().is_none());
    });
}
