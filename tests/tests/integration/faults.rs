//! Defects the fault report (`scripts/faults`, `faults-local`) found, each pinned by a test
//! through the fault proxy (`hub_tests::faults`) in front of the real servers.

use super::images::{list, sync};
use hub_tests::faults::{Fault, FaultProxy, Faults, Flavor};
use hub_tests::{MotoServer, OciImage, RegistryServer, aws_fixtures, transfer_hub};
use std::sync::Arc;

/// A 429's `Retry-After` is a floor under the wait before the retry. Found by the fault
/// report: the SDK retried S3 calls after its own jittered backoff (0–1 s) and our retry
/// layer after its own, whatever the server said. Exact: one scripted 429 (Retry-After 2)
/// on the first GET of the object; the proxy's log shows when the retry came.
#[test]
fn a_retry_after_from_s3_is_waited_for() {
    let moto = MotoServer::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let conf = rt.block_on(moto.sdk_config("eu-west-1"));
    for b in ["src", "dst"] {
        rt.block_on(aws_fixtures::bucket(&conf, b));
    }
    let s3 = aws_sdk_s3::Client::new(&conf);
    rt.block_on(
        s3.put_object()
            .bucket("src")
            .key("a.bin")
            .body(b"retry after me".to_vec().into())
            .send(),
    )
    .unwrap();
    let proxy = FaultProxy::start(
        &moto.endpoint,
        Faults::scripted(
            Flavor::S3,
            2,
            Arc::new(|head: &str, nth| {
                (head.starts_with("GET /src/a.bin") && nth == 0).then_some(Fault::TooMany)
            }),
        ),
    );
    let state = tempfile::tempdir().unwrap();
    let db = state.path().join("state.db");
    let env = moto.env("eu-west-1");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let ep = proxy.endpoint();
    let run = transfer_hub(
        &[
            "objects",
            "sync",
            "s3://src",
            "s3://dst",
            "--source-endpoint",
            &ep,
            "--dest-endpoint",
            &moto.endpoint,
            "--retry-base-ms",
            "10",
            "--output",
            "json",
            "--state",
            db.to_str().unwrap(),
        ],
        &env,
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let c = proxy.retry_after_check();
    assert_eq!((c.answered, c.retried), (1, 1), "{c:?}");
    assert_eq!(
        c.too_soon, 0,
        "retried {:?} after a 429 that said Retry-After: 2",
        c.shortest
    );
}

/// The same for our own registry client (manifest HEADs before any copy): it retried after
/// `--retry-base-ms`, not after the registry's `Retry-After`.
#[test]
fn a_retry_after_from_a_registry_is_waited_for() {
    let (src, dst, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    let img = OciImage::single(&[1024]);
    img.push(&format!("{}/app:1", src.addr), None);
    let proxy = FaultProxy::start(
        &src.addr,
        Faults::scripted(
            Flavor::Registry,
            2,
            Arc::new(|head: &str, nth| {
                (head.starts_with("HEAD /v2/app/manifests/1 ") && nth == 0)
                    .then_some(Fault::TooMany)
            }),
        ),
    );
    let l = list(dir.path(), "app:1\n");
    let r = sync(
        dir.path(),
        &[
            "--source",
            &proxy.addr,
            "--dest",
            &dst.addr,
            "--list",
            l.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(dst.digest("app", "1").as_deref(), Some(img.digest.as_str()));
    let c = proxy.retry_after_check();
    assert_eq!((c.answered, c.retried), (1, 1), "{c:?}");
    assert_eq!(
        c.too_soon, 0,
        "retried {:?} after a 429 that said Retry-After: 2",
        c.shortest
    );
}
