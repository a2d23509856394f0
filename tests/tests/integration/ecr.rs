//! Amazon ECR as the destination: the ECR API from moto, the bytes to a docker-registry
//! through TRANSFER_HUB_ECR_REGISTRY_ADDRESS.

use super::images::{item, list};
use hub_tests::{MotoServer, OciImage, RegistryServer, transfer_hub};

const ECR_HOST: &str = "123456789012.dkr.ecr.eu-west-1.amazonaws.com";

#[test]
fn an_ecr_destination_gets_a_token_and_missing_repositories_with_scan_on_push_and_encryption() {
    let moto = MotoServer::start();
    let (src, bytes_backend, dir) = (
        RegistryServer::start(),
        RegistryServer::start(),
        tempfile::tempdir().unwrap(),
    );
    let img = OciImage::single(&[4096]);
    img.push(&format!("{}/team/app:1", src.addr), None);
    img.push(&format!("{}/team/other:2", src.addr), None);
    let env = [
        ("AWS_ENDPOINT_URL", moto.endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "eu-west-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        (
            "TRANSFER_HUB_ECR_REGISTRY_ADDRESS",
            bytes_backend.addr.as_str(),
        ),
    ];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ecr = rt.block_on(async {
        let conf = hub_core::aws::sdk::loader()
            .endpoint_url(&moto.endpoint)
            .region(aws_config::Region::new("eu-west-1"))
            .credentials_provider(aws_sdk_ecr::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .load()
            .await;
        aws_sdk_ecr::Client::new(&conf)
    });
    // One repository exists already; the other must be created.
    rt.block_on(
        ecr.create_repository()
            .repository_name("mirror/team/other")
            .send(),
    )
    .unwrap();

    let l = list(dir.path(), "team/app:1\nteam/other:2\n");
    let state = dir.path().join("state.db");
    let args = [
        "images",
        "sync",
        "--source",
        &src.addr,
        "--dest",
        &format!("{ECR_HOST}/mirror"),
        "--list",
        l.to_str().unwrap(),
        "--output",
        "json",
        "--state",
        state.to_str().unwrap(),
    ];
    let r = transfer_hub(&args, &env);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!(
        item(&j, "team/app:1")["dest"],
        format!("{ECR_HOST}/mirror/team/app:1")
    );
    assert_eq!(
        bytes_backend.digest("mirror/team/app", "1").as_deref(),
        Some(img.digest.as_str())
    );
    assert_eq!(
        bytes_backend.digest("mirror/team/other", "2").as_deref(),
        Some(img.digest.as_str())
    );

    let repos = rt.block_on(ecr.describe_repositories().send()).unwrap();
    let app = repos
        .repositories()
        .iter()
        .find(|r| r.repository_name() == Some("mirror/team/app"))
        .expect("mirror/team/app was created");
    assert_eq!(
        app.image_scanning_configuration().map(|c| c.scan_on_push()),
        Some(true)
    );
    assert_eq!(
        app.encryption_configuration()
            .map(|e| e.encryption_type().as_str().to_string()),
        Some("AES256".to_string())
    );
    assert_eq!(
        repos.repositories().len(),
        2,
        "the existing repository was kept, not duplicated"
    );

    let again = transfer_hub(&args, &env);
    assert_eq!(again.json()["skipped"], 2, "{}", again.stderr);
}
