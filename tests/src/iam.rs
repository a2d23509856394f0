//! IAM enforced in the rig: moto with `INITIAL_NO_AUTH_ACTION_COUNT`, started through
//! `tests/moto_iam.py` (which also derives the resource ARNs moto leaves as `*`, treats policy
//! patterns as IAM globs, adds what AWS checks beside the named action, and logs every
//! decision). The first three calls make an admin user for the test's setup; each function
//! then runs with the keys of a user whose only policy is its role's statements, read from the
//! SAM-transformed template.yaml and resolved for the test's deployment (never copied into a
//! test). A call the role does not allow fails the test: the handler sees AccessDenied, and
//! [`IamMoto`] panics at the end of a test that had any refused call.
//!
//! Every test also leaves `target/iam-usage/<test>.json`: per role, the actions it held and
//! the ones it used. `scripts/iam-unused-actions` prints, per role, the actions no test used.

use crate::MotoServer;
use aws_config::SdkConfig;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;

/// The account moto puts everything in.
pub const ACCOUNT: &str = "123456789012";

/// Keys of an IAM user in moto (its `Debug` hides the secret).
#[derive(Clone)]
pub struct Keys {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({}, <hidden>)", self.access_key_id)
    }
}

/// One deployment of the template: its parameters and what its resources are called in moto
/// (`resources[logical id]` = `{"Ref": ..., "Arn": ..., other attributes}`). Resources not
/// named resolve to ARNs that match nothing, so a call against them is refused.
#[derive(Clone, Debug, Default)]
pub struct Deployment {
    pub region: String,
    pub parameters: BTreeMap<String, String>,
    pub resources: BTreeMap<String, Value>,
}

impl Deployment {
    pub fn new(region: &str) -> Self {
        Self {
            region: region.to_string(),
            ..Default::default()
        }
    }

    pub fn param(mut self, name: &str, value: &str) -> Self {
        self.parameters.insert(name.into(), value.into());
        self
    }

    /// A resource's `Ref` and `Arn` (and any other attributes).
    pub fn resource(mut self, logical_id: &str, r#ref: &str, arn: &str) -> Self {
        self.resources
            .insert(logical_id.into(), json!({"Ref": r#ref, "Arn": arn}));
        self
    }

    /// A DynamoDB table of this account and region by name.
    pub fn table(self, logical_id: &str, name: &str) -> Self {
        let arn = format!("arn:aws:dynamodb:{}:{ACCOUNT}:table/{name}", self.region);
        self.resource(logical_id, name, &arn)
    }

    /// An SQS queue by URL (the name is its last segment).
    pub fn queue(self, logical_id: &str, url: &str) -> Self {
        let name = url.rsplit('/').next().unwrap_or(url);
        let arn = format!("arn:aws:sqs:{}:{ACCOUNT}:{name}", self.region);
        let mut me = self.resource(logical_id, url, &arn);
        me.resources.get_mut(logical_id).unwrap()["QueueName"] = name.into();
        me
    }

    /// An S3 bucket by name.
    pub fn bucket(self, logical_id: &str, name: &str) -> Self {
        self.resource(logical_id, name, &format!("arn:aws:s3:::{name}"))
    }

    fn to_json(&self) -> Value {
        json!({
            "region": self.region,
            "account": ACCOUNT,
            "parameters": self.parameters,
            "resources": self.resources,
        })
    }
}

/// One decision of moto's IAM check.
#[derive(Clone, Debug)]
pub struct Decision {
    pub principal: String,
    pub action: String,
    pub resource: String,
    pub allowed: bool,
}

struct User {
    name: String,
    /// The template role it stands for, or `grant:<name>` for a policy the test wrote.
    role: String,
    statements: Vec<Value>,
}

/// moto with IAM enforced; see the module documentation.
pub struct IamMoto {
    pub moto: MotoServer,
    admin: Keys,
    log: tempfile::NamedTempFile,
    test: String,
    users: Mutex<Vec<User>>,
    cache: Mutex<HashMap<String, Keys>>,
}

fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn python(args: &[&str], env: &[(&str, &str)], stdin: Option<&Value>) -> Value {
    let mut c = crate::tool("python3");
    c.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("python3 runs");
    {
        use std::io::Write as _;
        let mut si = child.stdin.take().unwrap();
        if let Some(v) = stdin {
            si.write_all(v.to_string().as_bytes()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python3 {:?} failed:\n{}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn keys(v: &Value) -> Keys {
    Keys {
        access_key_id: v["access_key_id"].as_str().unwrap().to_string(),
        secret_access_key: v["secret_access_key"].as_str().unwrap().to_string(),
    }
}

/// The actions of a statement (`Action` is a string or a list).
pub fn actions_of(statement: &Value) -> Vec<String> {
    match &statement["Action"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    }
}

/// IAM action patterns match case-insensitively, `*` any run and `?` one character.
pub fn action_matches(pattern: &str, action: &str) -> bool {
    fn go(p: &[u8], a: &[u8]) -> bool {
        match (p.first(), a.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], a) || (!a.is_empty() && go(p, &a[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &a[1..]),
            (Some(x), Some(y)) if x.eq_ignore_ascii_case(y) => go(&p[1..], &a[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), action.as_bytes())
}

impl IamMoto {
    /// moto with IAM enforced, for the test named `test` (the name of its usage record).
    pub fn start(test: &str) -> Self {
        Self::start_with_env(test, &[])
    }

    pub fn start_with_env(test: &str, env: &[(&str, String)]) -> Self {
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut env: Vec<(&str, String)> = env.to_vec();
        // Exactly the admin user's three calls are free.
        env.push(("INITIAL_NO_AUTH_ACTION_COUNT", "3".into()));
        env.push(("TRANSFER_HUB_IAM_LOG", log.path().display().to_string()));
        let script = tests_dir().join("moto_iam.py");
        let moto = MotoServer::start_script(&script, &env);
        let admin = keys(&python(
            &[
                tests_dir().join("iam_rig.py").to_str().unwrap(),
                "admin",
                &moto.endpoint,
            ],
            &[],
            None,
        ));
        Self {
            moto,
            admin,
            log,
            test: test.to_string(),
            users: Mutex::new(Vec::new()),
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn sdk(&self, keys: &Keys, region: &str) -> impl std::future::Future<Output = SdkConfig> {
        hub_core::aws::sdk::loader()
            .endpoint_url(&self.moto.endpoint)
            .region(aws_config::Region::new(region.to_string()))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                keys.access_key_id.clone(),
                keys.secret_access_key.clone(),
                None,
                None,
                "iam-rig",
            ))
            .load()
    }

    /// The admin's keys (for rig parts that call moto on their own, like the strict S3
    /// proxy).
    pub fn admin_keys(&self) -> (&str, &str) {
        (&self.admin.access_key_id, &self.admin.secret_access_key)
    }

    /// The admin's SDK configuration, for a test's setup and its checks.
    pub async fn admin_config(&self, region: &str) -> SdkConfig {
        self.sdk(&self.admin, region).await
    }

    /// An SDK configuration with these keys.
    pub async fn config(&self, keys: &Keys, region: &str) -> SdkConfig {
        self.sdk(keys, region).await
    }

    /// Environment for a subprocess that runs with these keys against this moto.
    pub fn env(&self, keys: &Keys, region: &str) -> Vec<(String, String)> {
        let mut env = self.moto.env(region);
        for (k, v) in env.iter_mut() {
            match k.as_str() {
                "AWS_ACCESS_KEY_ID" => *v = keys.access_key_id.clone(),
                "AWS_SECRET_ACCESS_KEY" => *v = keys.secret_access_key.clone(),
                _ => {}
            }
        }
        env
    }

    fn create(&self, user: &str, req: Value, role: &str) -> Keys {
        let out = python(
            &[
                tests_dir().join("iam_rig.py").to_str().unwrap(),
                "user",
                &self.moto.endpoint,
            ],
            &[
                ("RIG_ADMIN_KEY_ID", &self.admin.access_key_id),
                ("RIG_ADMIN_SECRET", &self.admin.secret_access_key),
            ],
            Some(&req),
        );
        let statements = out["statements"].as_array().cloned().unwrap_or_default();
        self.users.lock().unwrap().push(User {
            name: user.to_string(),
            role: role.to_string(),
            statements,
        });
        keys(&out)
    }

    /// Keys of a user whose only policy is `role`'s statements in the SAM-transformed
    /// template, resolved for `deployment` (one user per role and deployment).
    pub fn role(&self, role: &str, deployment: &Deployment) -> Keys {
        let req = json!({"role": role, "deployment": deployment.to_json()});
        let cache_key = req.to_string();
        if let Some(k) = self.cache.lock().unwrap().get(&cache_key) {
            return k.clone();
        }
        let n = self.users.lock().unwrap().len();
        let user = format!("{role}-{n}");
        let mut req = req;
        req["user"] = user.clone().into();
        let k = self.create(&user, req, role);
        self.cache.lock().unwrap().insert(cache_key, k.clone());
        k
    }

    /// Keys of a user with exactly these statements (a grant the test stands in for, e.g.
    /// what another account's bucket owner gives).
    pub fn grant(&self, name: &str, statements: Value) -> Keys {
        let user = format!("grant-{name}");
        self.create(
            &user,
            json!({"user": user, "statements": statements}),
            &format!("grant:{name}"),
        )
    }

    /// A VPC with one subnet and one security group, made by the admin; (subnet, group).
    pub fn network(&self, region: &str) -> (String, String) {
        let out = python(
            &[
                tests_dir().join("iam_rig.py").to_str().unwrap(),
                "network",
                &self.moto.endpoint,
                region,
            ],
            &[
                ("RIG_ADMIN_KEY_ID", &self.admin.access_key_id),
                ("RIG_ADMIN_SECRET", &self.admin.secret_access_key),
            ],
            None,
        );
        (
            out["subnet"].as_str().unwrap().to_string(),
            out["security_group"].as_str().unwrap().to_string(),
        )
    }

    /// A customer-managed KMS key made by the admin; its ARN.
    pub fn kms_key(&self, region: &str) -> String {
        let out = python(
            &[
                tests_dir().join("iam_rig.py").to_str().unwrap(),
                "kms-key",
                &self.moto.endpoint,
                region,
            ],
            &[
                ("RIG_ADMIN_KEY_ID", &self.admin.access_key_id),
                ("RIG_ADMIN_SECRET", &self.admin.secret_access_key),
            ],
            None,
        );
        out["arn"].as_str().unwrap().to_string()
    }

    /// The console's Cognito user pool, made by the admin (`iam_rig.py cognito`): pool,
    /// client, other_client, email, id_token, other_id_token, access_token.
    pub fn cognito(&self, region: &str) -> Value {
        python(
            &[
                tests_dir().join("iam_rig.py").to_str().unwrap(),
                "cognito",
                &self.moto.endpoint,
                region,
            ],
            &[
                ("RIG_ADMIN_KEY_ID", &self.admin.access_key_id),
                ("RIG_ADMIN_SECRET", &self.admin.secret_access_key),
            ],
            None,
        )
    }

    /// Every decision so far.
    pub fn decisions(&self) -> Vec<Decision> {
        std::fs::read_to_string(self.log.path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| Decision {
                principal: v["principal"].as_str().unwrap_or("").to_string(),
                action: v["action"].as_str().unwrap_or("").to_string(),
                resource: v["resource"].as_str().unwrap_or("").to_string(),
                allowed: v["allowed"].as_bool().unwrap_or(false),
            })
            .collect()
    }

    /// The refused calls so far (`user action resource`).
    pub fn denied(&self) -> Vec<String> {
        self.decisions()
            .into_iter()
            .filter(|d| !d.allowed)
            .map(|d| format!("{} {} {}", d.principal, d.action, d.resource))
            .collect()
    }

    /// Forgets the refusals so far (for a test that provokes one on purpose and has checked it).
    pub fn clear_decisions(&self) {
        let keep: Vec<String> = std::fs::read_to_string(self.log.path())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"allowed\": true"))
            .map(str::to_string)
            .collect();
        let mut text = keep.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        std::fs::write(self.log.path(), text).unwrap();
    }

    /// Per role: (actions held, actions used) by the users standing for it.
    pub fn usage(&self) -> BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> {
        let decisions = self.decisions();
        let mut out: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
        for u in self.users.lock().unwrap().iter() {
            let e = out.entry(u.role.clone()).or_default();
            for st in &u.statements {
                if st["Effect"] == "Allow" {
                    e.0.extend(actions_of(st));
                }
            }
            let me = format!(":user/{}", u.name);
            e.1.extend(
                decisions
                    .iter()
                    .filter(|d| d.allowed && d.principal.ends_with(&me))
                    .map(|d| d.action.clone()),
            );
        }
        out
    }

    fn write_usage(&self) {
        let dir = tests_dir().join("../target/iam-usage");
        let _ = std::fs::create_dir_all(&dir);
        let roles: BTreeMap<String, Value> = self
            .usage()
            .into_iter()
            .map(|(role, (held, used))| (role, json!({"held": held, "used": used})))
            .collect();
        let _ = std::fs::write(
            dir.join(format!("{}.json", self.test)),
            serde_json::to_vec_pretty(&json!({"test": self.test, "roles": roles})).unwrap(),
        );
    }
}

impl Drop for IamMoto {
    fn drop(&mut self) {
        self.write_usage();
        if std::thread::panicking() {
            return;
        }
        let denied = self.denied();
        assert!(
            denied.is_empty(),
            "calls the roles do not allow (template.yaml must allow them, or the code must not make them):\n{}\n\nmoto's log:\n{}",
            denied.join("\n"),
            self.moto
                .log()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
