//! The Fargate copy-worker image, built by scripts/build-worker-image (buildah) and run on
//! this machine the way the task definition in template.yaml runs it: the image's own
//! entrypoint, user and environment read from its config; its root filesystem read-only
//! with a fresh writable /tmp (the task volume); the task definition's environment plus a
//! task's overrides. The worker and the skopeo it starts are the image's binaries, on the
//! image's libraries: the runner unpacks the image (`buildah mount`) and starts the
//! entrypoint under `unshare` (own mount and PID namespaces, the host's network for the
//! 127.0.0.1 servers) and `chroot --userspec` (podman and `buildah run --isolation oci`
//! do not work here, and `buildah run --isolation chroot` has no read-only root).
//! The rig: a docker-registry with a login (the secret in moto's Secrets Manager) as the
//! source, another as the destination, and moto's Step Functions interpreter running a
//! state that waits for the task token the worker answers.
//!
//! Gated on buildah and root (scripts/install-deps installs buildah and CI runs as root, so
//! scripts/test runs this): without them the test says so and passes. The image is built with the debug copy-worker the test
//! build already made; the Debian base and the apt layer are cached (target/worker-image/
//! and buildah's storage), so after the first run the build takes seconds.

use hub_tests::{MotoServer, OciImage, RegistryServer, transfer_hub_bin, write_authfile};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const REGION: &str = "eu-west-1";
const TAG: &str = "localhost/transfer-hub-worker:test";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn buildah(args: &[&str]) -> String {
    let out = Command::new("buildah").args(args).output().unwrap();
    assert!(out.status.success(), "buildah {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A working container of the image, mounted; removed on drop.
struct Unpacked {
    container: String,
    rootfs: PathBuf,
}

impl Unpacked {
    fn new(image: &str) -> Self {
        let container = buildah(&["from", "--pull=never", "--quiet", image]);
        let rootfs = PathBuf::from(buildah(&["mount", &container]));
        Self { container, rootfs }
    }

    /// Runs the image's `argv` as a Fargate task would: `user` (the image's USER), only
    /// `env`, root filesystem read-only, /tmp a new tmpfs with the image's /tmp mode (ECS
    /// copies a VOLUME's mode into the task volume), a minimal /dev and a /proc of its own.
    fn run(&self, user: &str, env: &[(String, String)], argv: &[String]) -> Output {
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            let m = std::fs::metadata(self.rootfs.join("tmp")).unwrap();
            format!("{:o}", m.permissions().mode() & 0o7777)
        };
        let script = r#"set -e
r=$1; mode=$2; user=$3; shift 3
mount --bind "$r" "$r"
mount -t proc proc "$r/proc"
mount -t tmpfs -o mode=755,size=1m tmpfs "$r/dev"
for d in null zero random urandom; do : >"$r/dev/$d"; mount --bind "/dev/$d" "$r/dev/$d"; done
mount -t tmpfs -o "mode=$mode,size=256m" tmpfs "$r/tmp"
mount -o remount,bind,ro "$r"
exec chroot --userspec="$user" "$r" "$@""#;
        Command::new("timeout")
            .args([
                "300",
                "unshare",
                "--mount",
                "--pid",
                "--fork",
                "--kill-child",
            ])
            .args(["/bin/sh", "-c", script, "run"])
            .arg(&self.rootfs)
            .args([mode.as_str(), user])
            .args(argv)
            .env_clear()
            .envs(env.iter().cloned())
            .output()
            .unwrap()
    }
}

impl Drop for Unpacked {
    fn drop(&mut self) {
        let _ = Command::new("buildah")
            .args(["umount", &self.container])
            .output();
        let _ = Command::new("buildah")
            .args(["rm", &self.container])
            .output();
    }
}

/// buildah (and root, which its chroot isolation and the runner's mounts need).
fn has_buildah() -> bool {
    let ok = |c: &mut Command| c.output().is_ok_and(|o| o.status.success());
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    root && ok(Command::new("buildah").arg("--version"))
}

#[test]
fn the_worker_image_runs_as_uid_65532_on_a_read_only_root_and_copies_an_image_with_its_digest() {
    if !has_buildah() {
        eprintln!(
            "SKIPPED: buildah is not installed or this is not root (scripts/install-deps installs it; CI runs as root); the worker image is not tested"
        );
        return;
    }
    // The image, as scripts/build-worker-image makes it (the debug binary: same recipe).
    let binary = transfer_hub_bin().with_file_name("copy-worker");
    let out = Command::new(root().join("scripts/build-worker-image"))
        .arg("--binary")
        .arg(&binary)
        .args(["--tag", TAG])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let inspected: serde_json::Value =
        serde_json::from_str(&buildah(&["inspect", "--type", "image", TAG])).unwrap();
    let config = &inspected["OCIv1"]["config"];
    // What the task definition assumes of the image.
    assert_eq!(config["User"], "65532:65532", "{config}");
    let entrypoint: Vec<String> = serde_json::from_value(config["Entrypoint"].clone()).unwrap();
    assert_eq!(entrypoint, ["/usr/local/bin/copy-worker"], "{config}");
    assert!(
        config["Volumes"].get("/tmp").is_some(),
        "/tmp is a volume: {config}"
    );
    let labels = &config["Labels"];
    let revision = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(root())
        .output()
        .unwrap();
    let revision = String::from_utf8_lossy(&revision.stdout).trim().to_string();
    assert!(
        labels["org.opencontainers.image.revision"]
            .as_str()
            .is_some_and(|r| r.starts_with(&revision)),
        "{labels}"
    );
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION"),
        "{labels}"
    );
    assert!(
        labels["org.opencontainers.image.source"].is_string(),
        "{labels}"
    );
    let host_arch = if cfg!(target_arch = "aarch64") {
        "arm64"
    } else {
        "amd64"
    };
    assert_eq!(inspected["OCIv1"]["architecture"], host_arch);
    let image_env: Vec<(String, String)> = config["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| {
            let (k, v) = kv.as_str().unwrap().split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    let user = config["User"].as_str().unwrap().to_string();
    let image = Unpacked::new(TAG);

    // The image's own `id`, started as the worker is: the uid and gid are the image's USER.
    let id = image.run(&user, &image_env, &["/usr/bin/id".into()]);
    assert!(id.status.success(), "{}", text(&id));
    assert!(
        String::from_utf8_lossy(&id.stdout).starts_with("uid=65532(nonroot) gid=65532(nonroot)"),
        "{}",
        text(&id)
    );
    // The root filesystem is read-only, /tmp is writable, for that user.
    let touch = |path: &str| {
        image.run(
            &user,
            &image_env,
            &["/usr/bin/touch".into(), path.to_string()],
        )
    };
    let denied = touch("/usr/local/bin/anything");
    assert!(!denied.status.success(), "{}", text(&denied));
    assert!(
        text(&denied).contains("Read-only file system"),
        "{}",
        text(&denied)
    );
    let tmp = touch("/tmp/anything");
    assert!(tmp.status.success(), "{}", text(&tmp));

    // The rig: a source with a login, a destination, moto for the secret and the token.
    let canary = format!("image-canary-{}", fastrand::u64(..));
    let (src, dst) = (
        RegistryServer::start_with_login("puller", &canary),
        RegistryServer::start(),
    );
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth.json");
    write_authfile(&auth, &[(&src.addr, "puller", &canary)]);
    let img = OciImage::multi_arch(&[300_000]);
    img.push(&format!("{}/team/app:7", src.addr), Some(&auth));
    let moto = MotoServer::start_executing();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let conf = rt.block_on(moto.sdk_config(REGION));
    let (sfn, sqs) = (
        aws_sdk_sfn::Client::new(&conf),
        aws_sdk_sqs::Client::new(&conf),
    );
    let (exec, token) = rt.block_on(async {
        aws_sdk_secretsmanager::Client::new(&conf)
            .create_secret()
            .name("th/source")
            .secret_string(format!(r#"{{"username":"puller","password":"{canary}"}}"#))
            .send()
            .await
            .unwrap();
        // A state that hands out its task token and waits for the worker's answer, as
        // CopyImage waits on dispatch-fargate's RunTask.
        let queue = sqs
            .create_queue()
            .queue_name("tokens")
            .send()
            .await
            .unwrap()
            .queue_url()
            .unwrap()
            .to_string();
        let definition = serde_json::json!({
            "StartAt": "Copy",
            "States": {"Copy": {
                "Type": "Task",
                "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
                "Parameters": {"QueueUrl": queue, "MessageBody": {"token.$": "$$.Task.Token"}},
                "End": true
            }}
        });
        let machine = sfn
            .create_state_machine()
            .name("copy-one")
            .definition(definition.to_string())
            .role_arn("arn:aws:iam::123456789012:role/sfn")
            .send()
            .await
            .unwrap()
            .state_machine_arn()
            .to_string();
        let exec = sfn
            .start_execution()
            .state_machine_arn(machine)
            .input("{}")
            .send()
            .await
            .unwrap()
            .execution_arn()
            .to_string();
        let deadline = Instant::now() + Duration::from_secs(60);
        let token = loop {
            let got = sqs
                .receive_message()
                .queue_url(&queue)
                .wait_time_seconds(1)
                .send()
                .await
                .unwrap();
            if let Some(m) = got.messages().first() {
                let body: serde_json::Value = serde_json::from_str(m.body().unwrap()).unwrap();
                break body["token"].as_str().unwrap().to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no task token from the state machine"
            );
        };
        (exec, token)
    });

    // The task definition's environment (template.yaml, CopyTaskDefinition) for this rig,
    // then dispatch-fargate's overrides, then the task role's credentials.
    let mut env = image_env.clone();
    env.extend(
        [
            ("SOURCE_SECRET", "th/source"),
            ("DEST_SECRET", ""),
            ("SOURCE_REGISTRY", src.addr.as_str()),
            ("DEST_REGISTRY", dst.addr.as_str()),
            ("EXTRA_SOURCE_REGISTRIES", ""),
            ("RETRIES", "3"),
            ("HEARTBEAT_SECS", "1"),
            ("TASK_TOKEN", token.as_str()),
            ("RUN_ID", "run-image"),
            ("SOURCE", &format!("{}/team/app:7", src.addr)),
            ("DEST", &format!("{}/mirror/team/app:7", dst.addr)),
            ("SOURCE_DIGEST", img.digest.as_str()),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let template = std::fs::read_to_string(root().join("template.yaml")).unwrap();
    let task_definition = template
        .split("  CopyTaskDefinition:")
        .nth(1)
        .and_then(|t| t.split("LogConfiguration:").next())
        .expect("template.yaml has CopyTaskDefinition");
    // What this runner plays is what the template asks ECS for.
    assert!(task_definition.contains("ReadonlyRootFilesystem: true"));
    assert!(task_definition.contains("ContainerPath: /tmp"));
    assert!(!task_definition.contains("Command:") && !task_definition.contains("EntryPoint:"));
    for name in task_definition
        .split("Name: ")
        .skip(1)
        .map(|t| t.split([',', ' ', '\n']).next().unwrap())
        .filter(|n| n.chars().all(|c| c.is_ascii_uppercase() || c == '_') && !n.is_empty())
    {
        assert!(
            env.iter().any(|(k, _)| k == name),
            "{name} from the task definition"
        );
    }
    env.extend(moto.env(REGION));
    let out = image.run(&user, &env, &entrypoint);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("reported success"), "{log}");
    assert!(!log.contains(&canary), "the password leaked: {log}");
    assert_eq!(
        dst.digest("mirror/team/app", "7").as_deref(),
        Some(img.digest.as_str()),
        "{log}"
    );
    for p in &img.platforms {
        assert!(dst.digest("mirror/team/app", p).is_some(), "{p}: {log}");
    }
    // SendTaskSuccess reached the state machine: the execution ends with the worker's result.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, output) = loop {
        let d = rt
            .block_on(sfn.describe_execution().execution_arn(&exec).send())
            .unwrap();
        let status = d.status().as_str().to_string();
        if status != "RUNNING" || Instant::now() > deadline {
            break (status, d.output().unwrap_or_default().to_string());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status, "SUCCEEDED", "{output}\n{log}");
    let result: serde_json::Value = serde_json::from_str(&output).unwrap();
    assert_eq!(result["dest_digest"], img.digest.as_str(), "{result}");
    assert_eq!(result["source_digest"], img.digest.as_str(), "{result}");
}
