//! The IAM-enforced rig itself (hub_tests::iam): a role user holds exactly its template
//! statements, a call beyond them is refused as on AWS, and a refused call fails the test
//! even when the code under test swallows the error.

use aws_sdk_s3::primitives::ByteStream;
use hub_tests::aws_fixtures;
use hub_tests::iam::{Deployment, IamMoto, action_matches};

const REGION: &str = "eu-west-1";

fn objects_deployment() -> Deployment {
    Deployment::new(REGION)
        .param("ObjectSourceBucket", "src")
        .param("ObjectDestBucket", "dst")
        .param("ObjectSourceCredentialSecret", "src-keys")
        .table("StatusTable", "status")
        .table("UploadsTable", "uploads")
}

#[test]
fn a_role_gets_only_its_template_statements_and_a_refused_call_fails_the_test() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let iam = IamMoto::start("iam-a_role_gets_only_its_template_statements");
    let admin = rt.block_on(iam.admin_config(REGION));
    rt.block_on(async {
        aws_fixtures::bucket(&admin, "src").await;
        aws_fixtures::bucket(&admin, "dst").await;
        aws_fixtures::status_table(&admin, "status").await;
    });
    let sm = aws_sdk_secretsmanager::Client::new(&admin);
    for name in ["src-keys", "src-keys-other"] {
        rt.block_on(sm.create_secret().name(name).secret_string("{}").send())
            .unwrap();
    }
    let diff = rt.block_on(iam.config(&iam.role("DiffObjectsRole", &objects_deployment()), REGION));
    // Its source secret, and only that one: `src-keys-*` would also match `src-keys-other-…`.
    let secrets = aws_sdk_secretsmanager::Client::new(&diff);
    rt.block_on(secrets.get_secret_value().secret_id("src-keys").send())
        .expect("the source secret is held");
    assert!(
        rt.block_on(
            secrets
                .get_secret_value()
                .secret_id("src-keys-other")
                .send()
        )
        .is_err(),
        "a secret whose name only starts like the source secret's must be refused"
    );
    let s3 = aws_sdk_s3::Client::new(&diff);
    // Held: listing the buckets.
    rt.block_on(s3.list_objects_v2().bucket("dst").send())
        .expect("s3:ListBucket on the destination is held");
    // Not held: writing objects, reading the status table.
    let put = rt.block_on(
        s3.put_object()
            .bucket("dst")
            .key("x")
            .body(ByteStream::from_static(b"x"))
            .send(),
    );
    assert!(put.is_err(), "diff-objects must not write objects");
    let get = rt.block_on(
        aws_sdk_dynamodb::Client::new(&diff)
            .scan()
            .table_name("status")
            .send(),
    );
    assert!(get.is_err(), "diff-objects must not scan the status table");
    let denied = iam.denied();
    assert!(
        denied
            .iter()
            .any(|d| d.contains("s3:PutObject arn:aws:s3:::dst/x")),
        "{denied:?}"
    );
    assert!(
        denied
            .iter()
            .any(|d| d
                .contains("dynamodb:Scan arn:aws:dynamodb:eu-west-1:123456789012:table/status")),
        "{denied:?}"
    );
    assert!(
        denied
            .iter()
            .any(|d| d.contains("secretsmanager:GetSecretValue")
                && d.contains(":secret:src-keys-other-")),
        "{denied:?}"
    );

    // The same refusal fails a test at its end, even if the code swallowed the error.
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(iam)));
    let msg = failed.expect_err("a refused call must fail the test");
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("s3:PutObject"), "{msg}");
}

#[test]
fn iam_action_patterns_match_like_iam() {
    assert!(action_matches(
        "kms:GenerateDataKey*",
        "kms:GenerateDataKey"
    ));
    assert!(action_matches(
        "kms:GenerateDataKey*",
        "kms:GenerateDataKeyWithoutPlaintext"
    ));
    assert!(action_matches("s3:getobject", "s3:GetObject"));
    assert!(!action_matches("s3:GetObject", "s3:GetObjectTagging"));
    assert!(action_matches("s3:Get?bject", "s3:GetObject"));
}
