//! A source registry with a pull quota, as Docker Hub documents it: every manifest answer
//! carries `ratelimit-limit` and `ratelimit-remaining` (`N;w=21600`), each manifest GET
//! spends one pull (HEADs spend none), and a GET once the quota is spent is answered `429
//! toomanyrequests`. The rig is a proxy doing exactly that in front of a real registry
//! (Debian's docker-registry has no quota); skopeo's pulls go through it as ours do.

use super::images::{list, sync};
use hub_tests::{HttpProxy, OciImage, RegistryServer};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

const LIMIT: u64 = 100;

struct QuotaRegistry {
    proxy: HttpProxy,
    remaining: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
}

impl QuotaRegistry {
    fn start(upstream: &str, remaining: u64) -> Self {
        Self::launch(upstream, remaining, None)
    }

    /// One whose whole quota is spent by another client (as Docker Hub counts pulls by
    /// address or account) once `heads` manifest HEADs were answered.
    fn start_spent_after(upstream: &str, remaining: u64, heads: u64) -> Self {
        Self::launch(upstream, remaining, Some(heads))
    }

    fn launch(upstream: &str, remaining: u64, spent_after: Option<u64>) -> Self {
        let remaining = Arc::new(AtomicU64::new(remaining));
        let heads = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let up = upstream.to_string();
        let (left, no) = (remaining.clone(), refused.clone());
        let proxy = HttpProxy::start(
            Arc::new(move |head: &str| (up.clone(), head.to_string())),
            Arc::new(move |head: &str, status, body: Vec<u8>| {
                let line = head.lines().next().unwrap_or_default();
                if !line.contains("/manifests/") {
                    return (status, vec![], body);
                }
                let headers = |n: u64| {
                    vec![
                        ("ratelimit-limit".to_string(), format!("{LIMIT};w=21600")),
                        ("ratelimit-remaining".to_string(), format!("{n};w=21600")),
                    ]
                };
                if line.starts_with("GET ") && status == 200 {
                    let spent =
                        left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
                    return match spent {
                        Ok(n) => (status, headers(n - 1), body),
                        Err(_) => {
                            no.fetch_add(1, Ordering::SeqCst);
                            (
                                429,
                                headers(0),
                                br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit."}]}"#.to_vec(),
                            )
                        }
                    };
                }
                if line.starts_with("HEAD ")
                    && spent_after.is_some_and(|n| heads.fetch_add(1, Ordering::SeqCst) + 1 > n)
                {
                    left.store(0, Ordering::SeqCst);
                }
                (status, headers(left.load(Ordering::SeqCst)), body)
            }),
        );
        Self {
            proxy,
            remaining,
            refused,
        }
    }

    fn host(&self) -> String {
        self.proxy
            .endpoint
            .trim_start_matches("http://")
            .to_string()
    }
}

/// Five images to copy and six pulls left: the plan budgets two pulls an image (ours and
/// skopeo's manifest read), copies three, and defers two (a status of their own: the run
/// succeeds); the quota is never overrun, and the summary shows the budget. With the quota
/// back, the next run copies the two it deferred.
#[test]
fn copies_stop_at_the_pull_quota_and_the_rest_are_deferred_to_the_next_run() {
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    let img = OciImage::single(&[2048]);
    for i in 1..=5 {
        img.push(&format!("{}/library/app:{i}", src.addr), None);
    }
    let hub = QuotaRegistry::start(&src.addr, 6);
    let l = list(dir.path(), "library/app:ALL_TAGS\n");
    let args = [
        "--source",
        &hub.host(),
        "--dest",
        &dst.addr,
        "--list",
        l.to_str().unwrap(),
        "--concurrency",
        "2",
    ];
    let r = sync(dir.path(), &args);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!(
        (
            j["copied"].as_u64(),
            j["deferred"].as_u64(),
            j["failed"].as_u64()
        ),
        (Some(3), Some(2), Some(0)),
        "{j:#}"
    );
    let q = &j["quotas"][0];
    assert_eq!(q["host"], hub.host().as_str(), "{j:#}");
    assert_eq!(
        (
            q["limit"].as_u64(),
            q["remaining"].as_u64(),
            q["window_secs"].as_u64()
        ),
        (Some(LIMIT), Some(6), Some(21600)),
        "{q}"
    );
    assert_eq!(
        (
            q["images"].as_u64(),
            q["needed"].as_u64(),
            q["deferred"].as_u64()
        ),
        (Some(5), Some(10), Some(2)),
        "{q}"
    );
    assert_eq!(
        hub.refused.load(Ordering::SeqCst),
        0,
        "the quota was overrun"
    );
    eprintln!(
        "pulls spent by 3 copies: {}",
        6 - hub.remaining.load(Ordering::SeqCst)
    );
    assert_eq!(dst.tags("library/app").len(), 3);
    let deferred: Vec<&serde_json::Value> = j["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["status"] == "deferred")
        .collect();
    assert_eq!(deferred.len(), 2, "{j:#}");

    // The text summary names the budget.
    hub.remaining.store(1, Ordering::SeqCst);
    let state = dir.path().join("text.db");
    let text = hub_tests::transfer_hub(
        &[
            "images",
            "sync",
            "--source",
            &hub.host(),
            "--dest",
            &dst.addr,
            "--list",
            l.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(text.code, 0, "{}\n{}", text.stdout, text.stderr);
    assert!(
        text.stdout.contains(&format!(
            "pull quota of {}: 1 of 100 pulls left",
            hub.host()
        )) && text
            .stdout
            .contains("deferred: 2 image(s) left for the next run"),
        "{}",
        text.stdout
    );

    // The quota is back: the next run copies what was deferred.
    hub.remaining.store(LIMIT, Ordering::SeqCst);
    let again = sync(dir.path(), &args);
    assert_eq!(again.code, 0, "{}\n{}", again.stdout, again.stderr);
    let j = again.json();
    assert_eq!(
        (
            j["copied"].as_u64(),
            j["skipped"].as_u64(),
            j["deferred"].as_u64()
        ),
        (Some(2), Some(3), Some(0)),
        "{j:#}"
    );
    assert_eq!(dst.tags("library/app").len(), 5);
    assert_eq!(hub.refused.load(Ordering::SeqCst), 0);
}

/// The plan saw pulls enough, then another client spent the quota before the copies: each
/// copy looks at the quota first (a HEAD, which spends none) and is deferred, neither failed
/// nor started into the registry's refusal; the run still succeeds.
#[test]
fn a_quota_spent_after_the_plan_defers_the_copies_without_starting_them() {
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    let img = OciImage::single(&[2048]);
    for i in 1..=2 {
        img.push(&format!("{}/library/app:{i}", src.addr), None);
    }
    // The plan's two HEADs see 50 left; by the copies' own look, none is.
    let hub = QuotaRegistry::start_spent_after(&src.addr, 50, 2);
    let l = list(dir.path(), "library/app:1\nlibrary/app:2\n");
    let r = sync(
        dir.path(),
        &[
            "--source",
            &hub.host(),
            "--dest",
            &dst.addr,
            "--list",
            l.to_str().unwrap(),
            "--retries",
            "0",
        ],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!(
        (
            j["copied"].as_u64(),
            j["deferred"].as_u64(),
            j["failed"].as_u64()
        ),
        (Some(0), Some(2), Some(0)),
        "{j:#}"
    );
    assert_eq!(
        hub.refused.load(Ordering::SeqCst),
        0,
        "no copy ran into the refusal"
    );
    assert!(dst.tags("library/app").is_empty());
    assert!(
        j["items"][0]["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("pull quota"),
        "{j:#}"
    );
    assert_eq!(
        j["quotas"][0]["remaining"], 50,
        "the budget as the plan saw it: {j:#}"
    );
}
