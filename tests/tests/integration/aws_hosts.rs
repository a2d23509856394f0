//! On AWS a secret goes only to the registry it was configured for: list-images and
//! find-diff refuse lines and jobs naming another registry (unless explicitly allowed), and
//! the copy worker refuses a task naming another host before any secret is fetched. The
//! foreign registry keeps every request it got, so the tests prove no login reached it.

use hub_core::aws::offload::S3Blobs;
use hub_core::config::Env;
use hub_core::images::ecr::Registries;
use hub_core::images::list_source::Ssm;
use hub_core::images::registry::HttpRegistry;
use hub_core::images::suite::{self, DiffEdges, ImagesConfig, ListEdges};
use hub_core::images::workflow::{ListRequest, Listed};
use hub_core::status::StatusStore;
use hub_core::status::dynamodb::DynamoStore;
use hub_tests::{
    Body, FakeRegistry, MotoServer, OciImage, RegistryServer, Reply, aws_fixtures, event,
    transfer_hub_bin,
};
use std::collections::HashMap;

const REGION: &str = "eu-west-1";
const ECR_HOST: &str = "123456789012.dkr.ecr.eu-west-1.amazonaws.com";

struct Aws {
    moto: MotoServer,
    conf: aws_config::SdkConfig,
    rt: tokio::runtime::Runtime,
}

impl Aws {
    fn start() -> Self {
        let moto = MotoServer::start();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let conf = rt.block_on(moto.sdk_config(REGION));
        rt.block_on(async {
            aws_fixtures::status_table(&conf, "status").await;
            aws_fixtures::bucket(&conf, "payloads").await;
        });
        Self { moto, conf, rt }
    }
    fn store(&self) -> DynamoStore {
        DynamoStore::new(aws_sdk_dynamodb::Client::new(&self.conf), "status")
    }
    fn blobs(&self) -> S3Blobs {
        S3Blobs {
            client: aws_sdk_s3::Client::new(&self.conf),
            bucket: "payloads".into(),
        }
    }
    fn config(&self, source: &str, dest: &str, extra: &[(&str, &str)]) -> ImagesConfig {
        let mut m: HashMap<String, String> = [
            ("SOURCE_REGISTRY", source),
            ("DEST_REGISTRY", dest),
            ("TABLE_NAME", "status"),
            ("PAYLOAD_BUCKET", "payloads"),
            ("LIST_PARAMETER", "/th/none"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in extra {
            m.insert(k.to_string(), v.to_string());
        }
        ImagesConfig::from_env(Env::from_map(m)).unwrap()
    }
}

fn http_only() -> Registries {
    Registries {
        ecr: HashMap::new(),
        http: HttpRegistry::new(Default::default(), Vec::<String>::new()),
    }
}

fn list_request(run_id: &str) -> ListRequest {
    let mut v = event("list-images.json");
    v["run_id"] = run_id.into();
    serde_json::from_value(v).unwrap()
}

/// A registry nobody configured: it asks every request for a basic login and keeps what it
/// was sent, so a test can prove no Authorization header (and no password) reached it.
fn foreign_registry() -> FakeRegistry {
    FakeRegistry::start(std::sync::Arc::new(|_head: &str| {
        Reply::new(
            401,
            &[("WWW-Authenticate", "Basic realm=\"foreign\"")],
            Body::Bytes(Vec::new()),
        )
    }))
}

fn assert_no_login_reached(foreign: &FakeRegistry, canary: &str) {
    use base64::Engine as _;
    for r in foreign.requests() {
        assert!(
            !r.to_ascii_lowercase().contains("authorization:"),
            "the foreign registry got a login: {r}"
        );
        assert!(!r.contains(canary));
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("puller:{canary}"));
        assert!(!r.contains(&b64));
    }
}

#[test]
fn list_images_refuses_lines_naming_an_unconfigured_registry_unless_it_is_allowed() {
    let aws = Aws::start();
    let (src, foreign) = (RegistryServer::start(), foreign_registry());
    OciImage::single(&[1024]).push(&format!("{}/team/app:1", src.addr), None);
    let (store, blobs, reg) = (aws.store(), aws.blobs(), http_only());
    let params = Ssm(aws_sdk_ssm::Client::new(&aws.conf));
    let edges = ListEdges {
        params: &params,
        registry: &reg,
        blobs: &blobs,
        store: &store,
    };
    let mut req = list_request("foreign-1");
    req.input.images = Some(vec![
        "team/app:1".into(),
        format!("{}/other/app:ALL_TAGS", foreign.addr),
        format!("{}/team/app:1", src.addr),
    ]);
    let cfg = aws.config(&src.addr, &format!("{ECR_HOST}/mirror"), &[]);
    let listed = aws
        .rt
        .block_on(suite::list_images(req.clone(), &cfg, &edges))
        .unwrap();
    assert_eq!(listed.failed, 1);
    let items = listed.images.items.unwrap();
    assert_eq!(
        items.len(),
        1,
        "the two lines of the source are one image: {items:?}"
    );
    assert_eq!(items[0].source, format!("{}/team/app:1", src.addr));
    let (_, recs) = aws
        .rt
        .block_on(store.get_run(Some("foreign-1")))
        .unwrap()
        .unwrap();
    assert_eq!(recs.len(), 1, "{recs:?}");
    let err = recs[0].error.clone().unwrap();
    assert_eq!(err.class.as_str(), "BadInput");
    assert!(
        err.message.starts_with(&format!(
            "unconfigured source registry: line 2: {}/other/app:ALL_TAGS names registry {}",
            foreign.addr, foreign.addr
        )),
        "{}",
        err.message
    );
    assert!(
        foreign.requests().is_empty(),
        "a refused line is never listed"
    );

    // Allowed explicitly: the line is read, and without any login.
    let cfg = aws.config(
        &src.addr,
        &format!("{ECR_HOST}/mirror"),
        &[("EXTRA_SOURCE_REGISTRIES", &foreign.addr)],
    );
    req.run_id = "foreign-2".into();
    let listed = aws
        .rt
        .block_on(suite::list_images(req, &cfg, &edges))
        .unwrap();
    assert_eq!(
        listed.failed, 1,
        "the foreign registry refuses us anonymous access"
    );
    assert!(!foreign.requests().is_empty());
    assert_no_login_reached(&foreign, "none");

    // find-diff refuses a job with an unconfigured host even when handed one directly.
    let cfg = aws.config(&src.addr, &format!("{ECR_HOST}/mirror"), &[]);
    let forged = Listed {
        run_id: "foreign-3".into(),
        images: hub_core::images::workflow::Batch {
            count: 1,
            items: Some(vec![hub_core::images::workflow::ImageJob {
                source: format!("{}/other/app:1", foreign.addr),
                dest: format!("{ECR_HOST}/mirror/other/app:1"),
            }]),
            s3: None,
        },
        failed: 0,
        task: None,
    };
    let before = foreign.requests().len();
    let d = aws
        .rt
        .block_on(suite::find_diff(
            forged,
            &cfg,
            &DiffEdges {
                registry: &reg,
                blobs: &blobs,
                store: &store,
                prepare: None,
            },
        ))
        .unwrap();
    assert_eq!((d.copies.count, d.failed), (0, 1));
    assert_eq!(foreign.requests().len(), before, "never asked");
}

#[test]
fn the_copy_worker_refuses_to_use_the_source_secret_for_a_registry_it_was_not_configured_for() {
    let aws = Aws::start();
    let canary = format!("worker-canary-{}", fastrand::u64(..));
    let (src, backend, foreign) = (
        RegistryServer::start_with_login("puller", &canary),
        RegistryServer::start(),
        foreign_registry(),
    );
    let sm = aws_sdk_secretsmanager::Client::new(&aws.conf);
    aws.rt
        .block_on(
            sm.create_secret()
                .name("th/source")
                .secret_string(format!(r#"{{"username":"puller","password":"{canary}"}}"#))
                .send(),
        )
        .unwrap();
    let mut env = aws.moto.env(REGION);
    env.extend(
        [
            ("TASK_TOKEN", "token-foreign"),
            ("RUN_ID", "run-f"),
            // The task names a registry the stack was never configured for.
            ("SOURCE", &format!("{}/team/app:7", foreign.addr)),
            ("DEST", &format!("{ECR_HOST}/mirror/team/app:7")),
            ("SOURCE_DIGEST", &format!("sha256:{}", "1".repeat(64))),
            ("SOURCE_SECRET", "th/source"),
            ("SOURCE_REGISTRY", src.addr.as_str()),
            ("DEST_REGISTRY", &format!("{ECR_HOST}/mirror")),
            ("RETRIES", "0"),
            ("TRANSFER_HUB_ECR_REGISTRY_ADDRESS", backend.addr.as_str()),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let worker = transfer_hub_bin().with_file_name("copy-worker");
    let out = std::process::Command::new(&worker)
        .envs(env.clone())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_no_login_reached(&foreign, &canary);
    assert!(out.status.success(), "the refusal was reported: {stderr}");
    assert!(
        stderr.contains("reported failure") && stderr.contains("BadInput"),
        "{stderr}"
    );
    assert!(
        stderr.contains("unconfigured source registry"),
        "the failure names why: {stderr}"
    );
    assert!(!stderr.contains(&canary));
    assert!(backend.tags("mirror/team/app").is_empty());

    // A secret without the registry it belongs to is a configuration error, before any work.
    env.retain(|(k, _)| k != "SOURCE_REGISTRY" && k != "DEST_REGISTRY");
    let out = std::process::Command::new(&worker)
        .envs(env)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("SOURCE_SECRET is set but SOURCE_REGISTRY is not"),
        "{stderr}"
    );
    assert_no_login_reached(&foreign, &canary);
}
