//! Tasks: a transfer kept as data — a name, a kind (images or objects), the source, the
//! destination, the selection, the CLI's options, credentials by reference only (an auth
//! file path, a profile name) and a schedule with an enabled flag.
//!
//! A task is written as [`Fields`]: field name → the text as typed (the CLI's flag names in
//! snake case, `list` holding the selection list's text). [`Task::from_fields`] reads them
//! with the CLI's own parsers and reports every invalid field by name in one [`Invalid`]
//! (a selection list's bad lines with their numbers); [`Task::fields`] writes them back, so
//! the shell (`task add|edit`) and the console's forms share one reading.
//!
//! [`store::TaskStore`] keeps tasks (SQLite in the state file here, DynamoDB on AWS);
//! [`schedule`] reads `rate(...)`/`cron(...)` and computes next runs; [`run`] runs a task.

pub mod run;
pub mod schedule;
pub mod store;

use crate::images::registry::Location;
use crate::images::selection::{LineError, parse_list};
use crate::retry::{ErrorClass, ItemError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// A task as typed: field name → text. Absent fields take their defaults.
pub type Fields = BTreeMap<String, String>;

/// What a task moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Images,
    Objects,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Images => "images",
            Kind::Objects => "objects",
        }
    }
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "images" => Ok(Kind::Images),
            "objects" => Ok(Kind::Objects),
            _ => Err(format!("unknown kind {s:?}; expected images or objects")),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which images a task selects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageSelection {
    /// A selection list in the original format (its text).
    List(String),
    /// Every repository under the source prefix; with `include_untagged`, also untagged
    /// manifests (ECR sources).
    AllRepos { include_untagged: bool },
}

/// An images task's settings: those of `images sync`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagesOptions {
    pub source: String,
    pub dest: String,
    pub selection: ImageSelection,
    pub concurrency: usize,
    pub resolve_concurrency: usize,
    pub retries: u32,
    pub retry_base_ms: u64,
    pub retry_max_secs: u64,
    pub attempt_timeout_secs: u64,
    /// Path of the auth file with the logins (a reference: never its contents).
    pub authfile: Option<String>,
    pub insecure_registries: Vec<String>,
    /// `--registry-certs`: a directory of registries' own CAs, `DIR/HOST:PORT/*.crt` (a path:
    /// certificates are public).
    #[serde(default)]
    pub registry_certs: Option<String>,
    pub no_scan_on_push: bool,
    pub ecr_kms_key: Option<String>,
    /// Tag rules (`--include-tags`, `--exclude-tags`, `--semver`, `--newest`), as typed.
    #[serde(default)]
    pub include_tags: Vec<String>,
    #[serde(default)]
    pub exclude_tags: Vec<String>,
    #[serde(default)]
    pub semver: Option<String>,
    #[serde(default)]
    pub newest: Option<usize>,
    /// `--no-overwrite`: a destination tag that holds another image is left alone (`conflict`).
    #[serde(default)]
    pub no_overwrite: bool,
    /// `--ecr-tag-mutability IMMUTABLE` (field `ecr_tag_mutability`): new ECR repositories
    /// get immutable tags.
    #[serde(default)]
    pub ecr_immutable_tags: bool,
    /// At most this many requests a second to each registry (those we send: listings,
    /// manifest lookups and copies of our own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_second: Option<u32>,
    /// `--min-age`: a source digest is copied once first seen at least this many seconds
    /// ago (`waiting` until then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_age_secs: Option<u64>,
}

impl ImagesOptions {
    /// The task's tag rules, compiled; every bad rule in one message.
    pub fn tag_rules(&self) -> Result<crate::images::tags::TagRules, String> {
        crate::images::tags::TagRules::parse(&crate::images::tags::TagRuleText {
            include: self.include_tags.clone(),
            exclude: self.exclude_tags.clone(),
            semver: self.semver.clone(),
            newest: self.newest,
        })
        .map_err(|errors| {
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

/// An objects task's settings: those of `objects sync`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectsOptions {
    pub source: String,
    pub dest: String,
    pub source_endpoint: Option<String>,
    pub dest_endpoint: Option<String>,
    pub source_region: Option<String>,
    pub dest_region: Option<String>,
    /// Profile names (references to the shared config files: never keys).
    pub source_profile: Option<String>,
    pub dest_profile: Option<String>,
    pub requester_pays: bool,
    pub compare: String,
    pub concurrency: usize,
    pub part_size: u64,
    pub stream_buffer: u64,
    pub multipart_threshold: u64,
    pub copy_mode: String,
    pub storage_class: Option<String>,
    pub sse_kms_key: Option<String>,
    pub tags: bool,
    pub retries: u32,
    pub retry_base_ms: u64,
    /// Longest wait between retries (tasks kept before it existed: 30 s, as then).
    #[serde(default = "thirty")]
    pub retry_max_secs: u64,
    pub attempt_timeout_secs: u64,
    /// Include/exclude rules in order, as rclone's `--filter` writes them (`+ GLOB`,
    /// `- GLOB`): the first that matches decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<u64>,
    /// Objects last modified longer ago than this are left out (seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_secs: Option<u64>,
    /// Objects last modified more recently than this are left out (seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_age_secs: Option<u64>,
    /// A file or `s3://BUCKET/KEY` of prefixes, one a line (a reference, read at each run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_list: Option<String>,
    #[serde(default = "list_concurrency")]
    pub list_concurrency: usize,
    /// Destination objects missing at the source are deleted (or moved to the backup
    /// prefix) once every copy succeeded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete: bool,
    /// The most a delete step may remove: `N` or `P%` of the destination's objects in scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delete: Option<String>,
    /// A key prefix in the destination bucket that deleted and overwritten objects move to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_prefix: Option<String>,
    /// Bytes a second the run may stream through this machine (server-side copies are not
    /// limited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bwlimit: Option<u64>,
    /// Archived sources (GLACIER, DEEP_ARCHIVE) not restored get a restore for this many
    /// days; none: they are reported `archived` and left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_days: Option<u32>,
    /// The restore tier: Standard or Bulk (none: Standard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_tier: Option<String>,
}

fn thirty() -> u64 {
    30
}

fn list_concurrency() -> usize {
    crate::objects::run::DEFAULT_LIST_CONCURRENCY
}

/// What a task does, by kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
// A task is read once per run or page: its size does not matter, boxing would only add noise.
#[allow(clippy::large_enum_variant)]
pub enum Spec {
    Images(ImagesOptions),
    Objects(ObjectsOptions),
}

/// A task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub name: String,
    pub spec: Spec,
    /// `rate(...)` or `cron(...)` as EventBridge writes them; `None` runs only by hand.
    pub schedule: Option<String>,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One invalid field: its name, what is wrong, and for a selection list its bad lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
    pub lines: Vec<LineError>,
}

/// Every invalid field of a task, in one answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Invalid {
    pub errors: Vec<FieldError>,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid task: ")?;
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "--{}: {}", e.field.replace('_', "-"), e.message)?;
            for l in &e.lines {
                write!(f, "; {l}")?;
            }
        }
        Ok(())
    }
}

impl Invalid {
    /// The error of one field, if it has one.
    pub fn of(&self, field: &str) -> Option<&FieldError> {
        self.errors.iter().find(|e| e.field == field)
    }
}

/// Defaults of `images sync` (kept equal to the CLI's).
pub const IMAGES_DEFAULTS: &[(&str, &str)] = &[
    ("concurrency", "10"),
    ("resolve_concurrency", "32"),
    ("retries", "3"),
    ("retry_base_ms", "1000"),
    ("retry_max_secs", "60"),
    ("attempt_timeout_secs", "1800"),
];

/// Defaults of `objects sync` (kept equal to the CLI's).
pub fn objects_defaults() -> Vec<(&'static str, String)> {
    vec![
        ("compare", "size".into()),
        ("concurrency", "64".into()),
        (
            "part_size",
            crate::objects::multipart::DEFAULT_PART.to_string(),
        ),
        (
            "stream_buffer",
            crate::objects::run::DEFAULT_STREAM_BUFFER.to_string(),
        ),
        (
            "multipart_threshold",
            crate::objects::multipart::DEFAULT_THRESHOLD.to_string(),
        ),
        ("copy_mode", "auto".into()),
        ("retries", "3".into()),
        ("retry_base_ms", "1000".into()),
        ("retry_max_secs", "60".into()),
        ("attempt_timeout_secs", "3600".into()),
        (
            "list_concurrency",
            crate::objects::run::DEFAULT_LIST_CONCURRENCY.to_string(),
        ),
    ]
}

/// The fields of a new task of this kind: its defaults.
pub fn default_fields(kind: Kind) -> Fields {
    let mut f = Fields::new();
    match kind {
        Kind::Images => {
            for (k, v) in IMAGES_DEFAULTS {
                f.insert(k.to_string(), v.to_string());
            }
        }
        Kind::Objects => {
            for (k, v) in objects_defaults() {
                f.insert(k.to_string(), v);
            }
        }
    }
    f.insert("enabled".into(), "true".into());
    f
}

/// Checks a task name: a DNS-label-like slug.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if name.is_empty() || name.len() > 63 {
        Err(format!(
            "{name:?} has {} characters; expected 1 to 63",
            name.len()
        ))
    } else if !ok_chars {
        Err(format!(
            "{name:?}: expected lowercase letters, digits and '-' only"
        ))
    } else if !name.as_bytes()[0].is_ascii_lowercase() || name.ends_with('-') {
        Err(format!(
            "{name:?}: expected to start with a letter and not end with '-'"
        ))
    } else {
        Ok(())
    }
}

/// Reads fields one by one, collecting every error.
struct Reader<'a> {
    fields: &'a Fields,
    errors: Vec<FieldError>,
}

impl<'a> Reader<'a> {
    fn text(&self, key: &str) -> Option<&'a str> {
        self.fields
            .get(key)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
    }
    fn fail(&mut self, key: &str, message: String) {
        self.errors.push(FieldError {
            field: key.into(),
            message,
            lines: vec![],
        });
    }
    fn required(&mut self, key: &str, what: &str) -> String {
        match self.text(key) {
            Some(v) => v.to_string(),
            None => {
                self.fail(key, format!("missing; expected {what}"));
                String::new()
            }
        }
    }
    fn opt(&self, key: &str) -> Option<String> {
        self.text(key).map(str::to_string)
    }
    fn flag(&mut self, key: &str) -> bool {
        match self.text(key) {
            None | Some("false" | "off" | "no") => false,
            Some("true" | "on" | "yes") => true,
            Some(v) => {
                let v = v.to_string();
                self.fail(key, format!("{v:?}: expected true or false"));
                false
            }
        }
    }
    fn number<T: std::str::FromStr + Default + PartialOrd + From<u8>>(
        &mut self,
        key: &str,
        positive: bool,
    ) -> T {
        let Some(v) = self.text(key) else {
            self.fail(key, "missing; expected a whole number".into());
            return T::default();
        };
        match v.parse::<T>() {
            Ok(n) if positive && n < T::from(1) => {
                let v = v.to_string();
                self.fail(key, format!("{v:?}: expected a whole number of 1 or more"));
                T::default()
            }
            Ok(n) => n,
            Err(_) => {
                let v = v.to_string();
                self.fail(key, format!("{v:?}: expected a whole number"));
                T::default()
            }
        }
    }
    /// A size field (`64M`, `1.5G`, bytes): at least one byte.
    fn size(&mut self, key: &str) -> u64 {
        let Some(v) = self.text(key) else {
            self.fail(key, "missing; expected a size such as 64M".into());
            return 0;
        };
        match crate::units::parse_size(v) {
            Ok(0) => {
                let v = v.to_string();
                self.fail(key, format!("{v:?}: expected 1 byte or more"));
                0
            }
            Ok(n) => n,
            Err(e) => {
                self.fail(key, e);
                0
            }
        }
    }
    /// A duration field (`30s`, `2h`; a bare number is in `bare`), in units of `bare`.
    fn duration(&mut self, key: &str, bare: Duration) -> u64 {
        let Some(v) = self.text(key) else {
            self.fail(key, "missing; expected a duration such as 30s".into());
            return 0;
        };
        match crate::units::parse_duration(v, bare) {
            Ok(d) => (d.as_secs_f64() / bare.as_secs_f64()).round() as u64,
            Err(e) => {
                self.fail(key, e);
                0
            }
        }
    }
    /// [`Self::duration`] of at least one `bare` unit.
    fn positive_duration(&mut self, key: &str, bare: Duration) -> u64 {
        let n = self.duration(key, bare);
        if n == 0 && self.errors.iter().all(|e| e.field != key) {
            let v = self.text(key).unwrap_or_default().to_string();
            self.fail(key, format!("{v:?}: expected 1 or more"));
        }
        n
    }
    /// Runs a CLI parser on the field, when present.
    fn check<T, E: fmt::Display>(&mut self, key: &str, parse: impl FnOnce(&str) -> Result<T, E>) {
        if let Some(v) = self.text(key)
            && let Err(e) = parse(v)
        {
            self.fail(key, e.to_string());
        }
    }
}

fn endpoint(s: &str) -> Result<(), String> {
    if (s.starts_with("http://") || s.starts_with("https://")) && !s.contains(char::is_whitespace) {
        Ok(())
    } else {
        Err(format!("{s:?}: expected an http:// or https:// URL"))
    }
}

fn reference_only(s: &str) -> Result<(), String> {
    if s.contains(char::is_whitespace) || s.contains('{') {
        Err("expected a name or path (a reference to credentials, never their value)".into())
    } else {
        Ok(())
    }
}

impl Task {
    pub fn kind(&self) -> Kind {
        match self.spec {
            Spec::Images(_) => Kind::Images,
            Spec::Objects(_) => Kind::Objects,
        }
    }

    /// The source as the CLI writes it.
    pub fn source(&self) -> &str {
        match &self.spec {
            Spec::Images(o) => &o.source,
            Spec::Objects(o) => &o.source,
        }
    }

    /// The destination as the CLI writes it.
    pub fn dest(&self) -> &str {
        match &self.spec {
            Spec::Images(o) => &o.dest,
            Spec::Objects(o) => &o.dest,
        }
    }

    /// Reads a task from its fields with the CLI's parsers; every invalid field is named in
    /// the one error. `now` stamps the task (the store keeps the first `created_at`).
    pub fn from_fields(
        name: &str,
        kind: Kind,
        fields: &Fields,
        now: DateTime<Utc>,
    ) -> Result<Task, Invalid> {
        let mut r = Reader {
            fields,
            errors: vec![],
        };
        if let Err(e) = check_name(name) {
            r.fail("name", e);
        }
        let spec = match kind {
            Kind::Images => Spec::Images(images(&mut r)),
            Kind::Objects => Spec::Objects(objects(&mut r)),
        };
        let schedule = r.opt("schedule");
        if let Some(s) = &schedule
            && let Err(e) = schedule::Schedule::parse(s)
        {
            r.fail("schedule", e.to_string());
        }
        let enabled = match r.text("enabled") {
            None => true,
            Some(_) => r.flag("enabled"),
        };
        if !r.errors.is_empty() {
            return Err(Invalid { errors: r.errors });
        }
        Ok(Task {
            name: name.into(),
            spec,
            schedule,
            enabled,
            created_at: now,
            updated_at: now,
        })
    }

    /// The task's fields, as [`Task::from_fields`] reads them.
    pub fn fields(&self) -> Fields {
        let mut f = Fields::new();
        let mut put = |k: &str, v: String| {
            f.insert(k.into(), v);
        };
        match &self.spec {
            Spec::Images(o) => {
                put("source", o.source.clone());
                put("dest", o.dest.clone());
                match &o.selection {
                    ImageSelection::List(text) => put("list", text.clone()),
                    ImageSelection::AllRepos { include_untagged } => {
                        put("all_repos", "true".into());
                        put("include_untagged", include_untagged.to_string());
                    }
                }
                put("concurrency", o.concurrency.to_string());
                put("resolve_concurrency", o.resolve_concurrency.to_string());
                put("retries", o.retries.to_string());
                put("retry_base_ms", o.retry_base_ms.to_string());
                put("retry_max_secs", o.retry_max_secs.to_string());
                put("attempt_timeout_secs", o.attempt_timeout_secs.to_string());
                put("authfile", o.authfile.clone().unwrap_or_default());
                put("insecure_registries", o.insecure_registries.join(", "));
                put(
                    "registry_certs",
                    o.registry_certs.clone().unwrap_or_default(),
                );
                put("no_scan_on_push", o.no_scan_on_push.to_string());
                put("ecr_kms_key", o.ecr_kms_key.clone().unwrap_or_default());
                put("no_overwrite", o.no_overwrite.to_string());
                put(
                    "max_requests_per_second",
                    o.max_requests_per_second
                        .map(|n| n.to_string())
                        .unwrap_or_default(),
                );
                put(
                    "image_min_age",
                    o.min_age_secs.map(|n| format!("{n}s")).unwrap_or_default(),
                );
                put(
                    "ecr_tag_mutability",
                    if o.ecr_immutable_tags {
                        "IMMUTABLE"
                    } else {
                        "MUTABLE"
                    }
                    .into(),
                );
                put("include_tags", o.include_tags.join(" "));
                put("exclude_tags", o.exclude_tags.join(" "));
                put("semver", o.semver.clone().unwrap_or_default());
                put(
                    "newest",
                    o.newest.map(|n| n.to_string()).unwrap_or_default(),
                );
            }
            Spec::Objects(o) => {
                put("source", o.source.clone());
                put("dest", o.dest.clone());
                for (k, v) in [
                    ("source_endpoint", &o.source_endpoint),
                    ("dest_endpoint", &o.dest_endpoint),
                    ("source_region", &o.source_region),
                    ("dest_region", &o.dest_region),
                    ("source_profile", &o.source_profile),
                    ("dest_profile", &o.dest_profile),
                    ("storage_class", &o.storage_class),
                    ("sse_kms_key", &o.sse_kms_key),
                ] {
                    put(k, v.clone().unwrap_or_default());
                }
                put("requester_pays", o.requester_pays.to_string());
                put("compare", o.compare.clone());
                put("concurrency", o.concurrency.to_string());
                put("part_size", o.part_size.to_string());
                put("stream_buffer", o.stream_buffer.to_string());
                put("multipart_threshold", o.multipart_threshold.to_string());
                put("copy_mode", o.copy_mode.clone());
                put("tags", o.tags.to_string());
                put("retries", o.retries.to_string());
                put("retry_base_ms", o.retry_base_ms.to_string());
                put("retry_max_secs", o.retry_max_secs.to_string());
                put("attempt_timeout_secs", o.attempt_timeout_secs.to_string());
                put("filters", o.filters.join("\n"));
                let opt = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_default();
                put("min_size", opt(o.min_size));
                put("max_size", opt(o.max_size));
                put(
                    "max_age",
                    o.max_age_secs.map(|n| format!("{n}s")).unwrap_or_default(),
                );
                put(
                    "min_age",
                    o.min_age_secs.map(|n| format!("{n}s")).unwrap_or_default(),
                );
                put("prefix_list", o.prefix_list.clone().unwrap_or_default());
                put("list_concurrency", o.list_concurrency.to_string());
                put("delete", o.delete.to_string());
                put("max_delete", o.max_delete.clone().unwrap_or_default());
                put("backup_prefix", o.backup_prefix.clone().unwrap_or_default());
                put("bwlimit", opt(o.bwlimit));
                put("restore_days", opt(o.restore_days.map(u64::from)));
                put("restore_tier", o.restore_tier.clone().unwrap_or_default());
            }
        }
        put("schedule", self.schedule.clone().unwrap_or_default());
        put("enabled", self.enabled.to_string());
        f
    }
}

fn images(r: &mut Reader<'_>) -> ImagesOptions {
    let source = r.required("source", "REGISTRY[/PREFIX]");
    r.check("source", Location::parse);
    let dest = r.required("dest", "REGISTRY[/PREFIX]");
    r.check("dest", Location::parse);
    let all_repos = r.flag("all_repos");
    let include_untagged = r.flag("include_untagged");
    let selection = match (all_repos, r.opt("list")) {
        (true, Some(_)) => {
            r.fail(
                "list",
                "a list and all repositories both given; expected one of them".into(),
            );
            ImageSelection::AllRepos { include_untagged }
        }
        (true, None) => ImageSelection::AllRepos { include_untagged },
        (false, text) => {
            let text = text.unwrap_or_default();
            let sel = parse_list(&text);
            if !sel.errors.is_empty() {
                r.errors.push(FieldError {
                    field: "list".into(),
                    message: format!("{} bad line(s)", sel.errors.len()),
                    lines: sel.errors,
                });
            } else if sel.entries.is_empty() {
                r.fail(
                    "list",
                    "no images; expected a selection list (name, name:tag, name:ALL_TAGS, name@sha256:…) or all repositories".into(),
                );
            }
            if include_untagged {
                r.fail(
                    "include_untagged",
                    "only with all repositories (--all-repos)".into(),
                );
            }
            ImageSelection::List(text.to_string())
        }
    };
    let authfile = r.opt("authfile");
    r.check("authfile", reference_only);
    let insecure_registries: Vec<String> = r
        .opt("insecure_registries")
        .map(|s| {
            s.split([',', '\n', ' '])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    for h in &insecure_registries {
        if h.contains('/') || Location::parse(h).is_err() {
            r.fail(
                "insecure_registries",
                format!("{h:?}: expected HOST[:PORT]"),
            );
        }
    }
    use crate::images::tags::{TagRuleText, TagRules};
    let rules = TagRuleText {
        include: TagRuleText::split_patterns(&r.opt("include_tags").unwrap_or_default()),
        exclude: TagRuleText::split_patterns(&r.opt("exclude_tags").unwrap_or_default()),
        semver: r.opt("semver"),
        newest: r.opt("newest").and_then(|n| match n.parse::<usize>() {
            Ok(0) | Err(_) => {
                r.fail(
                    "newest",
                    format!("{n:?}: expected a number of tags of at least 1"),
                );
                None
            }
            Ok(n) => Some(n),
        }),
    };
    if let Err(errors) = TagRules::parse(&rules) {
        for e in errors {
            let field = match e.flag {
                "--include-tags" => "include_tags",
                "--exclude-tags" => "exclude_tags",
                "--semver" => "semver",
                _ => "newest",
            };
            r.fail(field, format!("{:?}: {}", e.value, e.reason));
        }
    }
    ImagesOptions {
        include_tags: rules.include,
        exclude_tags: rules.exclude,
        semver: rules.semver,
        newest: rules.newest,
        source,
        dest,
        selection,
        concurrency: r.number("concurrency", true),
        resolve_concurrency: r.number("resolve_concurrency", true),
        retries: r.number("retries", false),
        retry_base_ms: r.duration("retry_base_ms", Duration::from_millis(1)),
        retry_max_secs: r.duration("retry_max_secs", Duration::from_secs(1)),
        attempt_timeout_secs: r.positive_duration("attempt_timeout_secs", Duration::from_secs(1)),
        authfile,
        insecure_registries,
        registry_certs: r.opt("registry_certs"),
        no_scan_on_push: r.flag("no_scan_on_push"),
        ecr_kms_key: r.opt("ecr_kms_key"),
        no_overwrite: r.flag("no_overwrite"),
        max_requests_per_second: r
            .text("max_requests_per_second")
            .is_some()
            .then(|| r.number::<u32>("max_requests_per_second", true)),
        min_age_secs: r
            .text("image_min_age")
            .is_some()
            .then(|| r.duration("image_min_age", Duration::from_secs(1))),
        ecr_immutable_tags: match r.text("ecr_tag_mutability").map(str::to_string).as_deref() {
            None | Some("MUTABLE") => false,
            Some("IMMUTABLE") => true,
            Some(v) => {
                r.fail(
                    "ecr_tag_mutability",
                    format!("{v:?}: expected MUTABLE or IMMUTABLE"),
                );
                false
            }
        },
    }
}

fn objects(r: &mut Reader<'_>) -> ObjectsOptions {
    use crate::objects::{bucket, diff, multipart, run};
    let source = r.required("source", "s3://BUCKET[/PREFIX]");
    r.check("source", run::parse_url);
    let dest = r.required("dest", "s3://BUCKET[/PREFIX]");
    r.check("dest", run::parse_url);
    r.check("source_endpoint", endpoint);
    r.check("dest_endpoint", endpoint);
    r.check("source_profile", reference_only);
    r.check("dest_profile", reference_only);
    let compare = r.opt("compare").unwrap_or_else(|| "size".into());
    r.check("compare", diff::Compare::parse);
    let copy_mode = r.opt("copy_mode").unwrap_or_else(|| "auto".into());
    if !["auto", "server", "stream"].contains(&copy_mode.as_str()) {
        r.fail(
            "copy_mode",
            format!("{copy_mode:?}: expected auto, server or stream"),
        );
    }
    r.check("storage_class", bucket::parse_storage_class);
    let part_size: u64 = r.size("part_size");
    if r.errors.iter().all(|e| e.field != "part_size")
        && let Err(e) = multipart::check_part_size(part_size)
    {
        r.fail("part_size", e.to_string());
    }
    let stream_buffer: u64 = r.size("stream_buffer");
    if copy_mode == "stream" && stream_buffer < part_size {
        r.fail(
            "stream_buffer",
            format!("{stream_buffer} is less than one part ({part_size}); expected at least the part size when streaming"),
        );
    }
    // One rule a line, `+ GLOB` or `- GLOB`, in order.
    let mut filters = Vec::new();
    for line in r.opt("filters").unwrap_or_default().lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match crate::objects::filter::Rule::parse(line) {
            Ok(rule) => filters.push(rule.to_string()),
            Err(e) => r.fail("filters", e.to_string()),
        }
    }
    let min_size = r.text("min_size").is_some().then(|| r.size("min_size"));
    let max_size = r.text("max_size").is_some().then(|| r.size("max_size"));
    let max_age_secs = r
        .text("max_age")
        .is_some()
        .then(|| r.duration("max_age", Duration::from_secs(1)));
    let min_age_secs = r
        .text("min_age")
        .is_some()
        .then(|| r.duration("min_age", Duration::from_secs(1)));
    let prefix_list = r.opt("prefix_list");
    r.check("prefix_list", reference_only);
    let delete = r.flag("delete");
    let max_delete = r.opt("max_delete");
    r.check("max_delete", crate::objects::deletes::MaxDelete::parse);
    if max_delete.is_some() && !delete {
        r.fail(
            "max_delete",
            "is set but delete is off; expected delete on, or no max".into(),
        );
    }
    let backup_prefix = r.opt("backup_prefix");
    if let (Some(b), Ok(d)) = (&backup_prefix, run::parse_url(&dest)) {
        r.check("backup_prefix", |_| {
            crate::objects::deletes::BackupPrefix::parse(b, &d.prefix)
        });
    }
    let bwlimit = r.opt("bwlimit").and_then(|v| {
        crate::objects::bandwidth::parse_rate(&v)
            .map_err(|e| r.fail("bwlimit", e))
            .ok()
    });
    let restore_days = r
        .text("restore_days")
        .is_some()
        .then(|| r.number::<u32>("restore_days", true));
    // The form always sends a tier (a choice); it only means something with restore days.
    r.check("restore_tier", crate::objects::run::parse_tier);
    let restore_tier = r.opt("restore_tier").filter(|_| restore_days.is_some());
    ObjectsOptions {
        restore_days,
        restore_tier,
        bwlimit,
        delete,
        max_delete,
        backup_prefix,
        filters,
        min_size,
        max_size,
        max_age_secs,
        min_age_secs,
        prefix_list,
        list_concurrency: if r.text("list_concurrency").is_some() {
            r.number("list_concurrency", true)
        } else {
            list_concurrency()
        },
        source,
        dest,
        source_endpoint: r.opt("source_endpoint"),
        dest_endpoint: r.opt("dest_endpoint"),
        source_region: r.opt("source_region"),
        dest_region: r.opt("dest_region"),
        source_profile: r.opt("source_profile"),
        dest_profile: r.opt("dest_profile"),
        requester_pays: r.flag("requester_pays"),
        compare,
        concurrency: r.number("concurrency", true),
        part_size,
        stream_buffer,
        multipart_threshold: r.size("multipart_threshold"),
        copy_mode,
        storage_class: r.opt("storage_class"),
        sse_kms_key: r.opt("sse_kms_key"),
        tags: r.flag("tags"),
        retries: r.number("retries", false),
        retry_base_ms: r.duration("retry_base_ms", Duration::from_millis(1)),
        retry_max_secs: if r.text("retry_max_secs").is_some() {
            r.duration("retry_max_secs", Duration::from_secs(1))
        } else {
            30
        },
        attempt_timeout_secs: r.positive_duration("attempt_timeout_secs", Duration::from_secs(1)),
    }
}

/// An objects task as the AWS functions carry it: its name and settings as the tasks
/// table held them when its run started (credentials by reference only, and on AWS none:
/// see `objects::suite::ObjectsConfig::for_task`). It rides on the run's diff rounds, its jobs and its
/// uploads, so every copy of a run uses the task as it was when the run began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskScope {
    pub name: String,
    pub options: ObjectsOptions,
}

impl TaskScope {
    /// The scope of an objects task; an images task is refused by name.
    pub fn of(t: &Task) -> Result<Self, ItemError> {
        match &t.spec {
            Spec::Objects(o) => Ok(Self {
                name: t.name.clone(),
                options: o.clone(),
            }),
            Spec::Images(_) => Err(ItemError::new(
                ErrorClass::BadInput,
                format!(
                    "task {:?}: kind: an images task; the objects state machine runs objects tasks",
                    t.name
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images_fields(extra: &[(&str, &str)]) -> Fields {
        let mut f = default_fields(Kind::Images);
        f.insert("source".into(), "127.0.0.1:5000/team".into());
        f.insert("dest".into(), "127.0.0.1:5001/mirror".into());
        f.insert("list".into(), "app:1\nworker:ALL_TAGS\n".into());
        for (k, v) in extra {
            f.insert(k.to_string(), v.to_string());
        }
        f
    }

    #[test]
    fn a_valid_task_reads_back_from_its_own_fields() {
        let t = Task::from_fields(
            "web-mirror",
            Kind::Images,
            &images_fields(&[("schedule", "rate(1 hour)")]),
            Utc::now(),
        )
        .unwrap();
        assert_eq!(t.kind(), Kind::Images);
        assert!(t.enabled);
        let again =
            Task::from_fields("web-mirror", Kind::Images, &t.fields(), t.created_at).unwrap();
        assert_eq!(again, t);
    }

    #[test]
    fn every_invalid_field_is_named_in_one_answer() {
        let e = Task::from_fields(
            "Bad_Name",
            Kind::Images,
            &images_fields(&[
                ("source", "bad host/x"),
                ("concurrency", "0"),
                ("retries", "many"),
                ("schedule", "every day"),
                ("list", "ok:1\nBAD::x\n\n<img src=x onerror=alert(1)>\n"),
            ]),
            Utc::now(),
        )
        .unwrap_err();
        let fields: Vec<&str> = e.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "name",
                "source",
                "list",
                "concurrency",
                "retries",
                "schedule"
            ]
        );
        let lines: Vec<usize> = e.of("list").unwrap().lines.iter().map(|l| l.line).collect();
        assert_eq!(lines, [2, 4], "bad lines by number");
        let text = e.to_string();
        assert!(text.contains("--concurrency: \"0\""), "{text}");
        assert!(text.contains("line 4"), "{text}");
    }

    #[test]
    fn objects_fields_use_the_cli_parsers() {
        let mut f = default_fields(Kind::Objects);
        f.insert("source".into(), "s3://src/data".into());
        f.insert("dest".into(), "https://nope".into());
        f.insert("compare".into(), "md5".into());
        f.insert("part_size".into(), "100".into());
        f.insert("storage_class".into(), "COLD".into());
        f.insert("source_endpoint".into(), "ftp://x".into());
        let e = Task::from_fields("o", Kind::Objects, &f, Utc::now()).unwrap_err();
        let fields: Vec<&str> = e.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "dest",
                "source_endpoint",
                "compare",
                "storage_class",
                "part_size"
            ]
        );
        f.insert("dest".into(), "s3://dst/backup".into());
        f.insert("compare".into(), "etag".into());
        f.insert("part_size".into(), (8u64 << 20).to_string());
        f.insert("storage_class".into(), "STANDARD_IA".into());
        f.insert("source_endpoint".into(), "http://127.0.0.1:9000".into());
        let t = Task::from_fields("o", Kind::Objects, &f, Utc::now()).unwrap();
        assert_eq!(
            Task::from_fields("o", Kind::Objects, &t.fields(), t.created_at).unwrap(),
            t
        );
    }

    #[test]
    fn tag_rules_read_back_and_each_bad_one_is_named_by_its_field() {
        let f = images_fields(&[
            ("include_tags", "v1\\..*  latest"),
            ("exclude_tags", ".*-rc.*"),
            ("semver", ">=1.20, <2"),
            ("newest", "3"),
        ]);
        let t = Task::from_fields("t", Kind::Images, &f, Utc::now()).unwrap();
        let Spec::Images(o) = &t.spec else { panic!() };
        assert_eq!(o.include_tags, ["v1\\..*", "latest"]);
        assert_eq!(o.newest, Some(3));
        assert_eq!(
            Task::from_fields("t", Kind::Images, &t.fields(), t.created_at).unwrap(),
            t
        );
        let f = images_fields(&[
            ("include_tags", "ok ("),
            ("exclude_tags", "[z-a]"),
            ("semver", "one"),
            ("newest", "0"),
        ]);
        let e = Task::from_fields("t", Kind::Images, &f, Utc::now()).unwrap_err();
        let fields: Vec<&str> = e.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["newest", "include_tags", "exclude_tags", "semver"]);
        assert!(e.errors[1].message.contains("\"(\""), "{:?}", e.errors[1]);
    }

    #[test]
    fn an_images_tasks_min_age_reads_back_and_a_bad_one_is_named() {
        let f = images_fields(&[("image_min_age", "7d")]);
        let t = Task::from_fields("t", Kind::Images, &f, Utc::now()).unwrap();
        let Spec::Images(o) = &t.spec else { panic!() };
        assert_eq!(o.min_age_secs, Some(7 * 86_400));
        assert_eq!(
            Task::from_fields("t", Kind::Images, &t.fields(), t.created_at).unwrap(),
            t
        );
        let none = Task::from_fields("t", Kind::Images, &images_fields(&[]), Utc::now()).unwrap();
        let Spec::Images(o) = &none.spec else {
            panic!()
        };
        assert_eq!(o.min_age_secs, None);
        let f = images_fields(&[("image_min_age", "7x")]);
        let e = Task::from_fields("t", Kind::Images, &f, Utc::now()).unwrap_err();
        assert_eq!(e.errors.len(), 1, "{e:?}");
        assert_eq!(e.errors[0].field, "image_min_age");
        assert!(e.errors[0].message.contains("7x"), "{:?}", e.errors[0]);
    }

    #[test]
    fn an_objects_tasks_filters_read_back_in_order_and_bad_ones_are_named() {
        let mut f = default_fields(Kind::Objects);
        f.insert("source".into(), "s3://src/data".into());
        f.insert("dest".into(), "s3://dst/backup".into());
        f.insert("filters".into(), "- /tmp/**\r\n# note\n+ *.jpg\n".into());
        f.insert("min_size".into(), "1K".into());
        f.insert("max_age".into(), "7d".into());
        f.insert("prefix_list".into(), "s3://src/lists/p.txt".into());
        let t = Task::from_fields("o", Kind::Objects, &f, Utc::now()).unwrap();
        let Spec::Objects(o) = &t.spec else {
            panic!("{t:?}")
        };
        assert_eq!(o.filters, vec!["- /tmp/**", "+ *.jpg"]);
        assert_eq!((o.min_size, o.max_size), (Some(1024), None));
        assert_eq!((o.max_age_secs, o.min_age_secs), (Some(7 * 86_400), None));
        assert_eq!(o.list_concurrency, 8);
        assert_eq!(
            Task::from_fields("o", Kind::Objects, &t.fields(), t.created_at).unwrap(),
            t
        );
        // A task saved before the filters existed reads as one without them.
        let mut old = serde_json::to_value(&t.spec).unwrap();
        for k in [
            "filters",
            "min_size",
            "max_age_secs",
            "prefix_list",
            "list_concurrency",
        ] {
            old.as_object_mut().unwrap().remove(k);
        }
        let Spec::Objects(o) = serde_json::from_value::<Spec>(old).unwrap() else {
            panic!()
        };
        assert!(o.filters.is_empty() && o.min_size.is_none() && o.list_concurrency == 8);

        f.insert("filters".into(), "+ [x\n* y".into());
        f.insert("min_size".into(), "-1".into());
        f.insert("max_age".into(), "7x".into());
        let e = Task::from_fields("o", Kind::Objects, &f, Utc::now()).unwrap_err();
        let fields: Vec<&str> = e.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["filters", "filters", "min_size", "max_age"]);
    }

    #[test]
    fn an_objects_tasks_delete_settings_read_back_and_bad_ones_are_named() {
        let mut f = default_fields(Kind::Objects);
        f.insert("source".into(), "s3://src/data".into());
        f.insert("dest".into(), "s3://dst/live".into());
        let t = Task::from_fields("o", Kind::Objects, &f, Utc::now()).unwrap();
        let Spec::Objects(o) = &t.spec else { panic!() };
        assert!(!o.delete && o.max_delete.is_none() && o.backup_prefix.is_none());
        f.insert("delete".into(), "on".into());
        f.insert("max_delete".into(), "10%".into());
        f.insert("backup_prefix".into(), "live/.trash/".into());
        let t = Task::from_fields("o", Kind::Objects, &f, Utc::now()).unwrap();
        let Spec::Objects(o) = &t.spec else { panic!() };
        assert!(o.delete);
        assert_eq!(o.max_delete.as_deref(), Some("10%"));
        assert_eq!(o.backup_prefix.as_deref(), Some("live/.trash/"));
        assert_eq!(
            Task::from_fields("o", Kind::Objects, &t.fields(), t.created_at).unwrap(),
            t
        );

        f.insert("max_delete".into(), "150%".into());
        f.insert("backup_prefix".into(), "li".into());
        let e = Task::from_fields("o", Kind::Objects, &f, Utc::now()).unwrap_err();
        let fields: Vec<&str> = e.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["max_delete", "backup_prefix"]);
        assert!(e.errors[0].message.contains("150%"), "{:?}", e.errors[0]);
        f.insert("max_delete".into(), "5".into());
        f.insert("backup_prefix".into(), "".into());
        f.insert("delete".into(), "false".into());
        let e = Task::from_fields("o", Kind::Objects, &f, Utc::now()).unwrap_err();
        assert_eq!(e.errors[0].field, "max_delete");
        assert!(
            e.errors[0].message.contains("delete is off"),
            "{:?}",
            e.errors[0]
        );
    }

    #[test]
    fn names_are_slugs() {
        for ok in ["a", "web-mirror", "m1", &"a".repeat(63)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "A",
            "1a",
            "a-",
            "a_b",
            "a.b",
            "a b",
            &"a".repeat(64),
            "<x>",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_list_and_all_repos_are_exclusive_and_untagged_needs_all_repos() {
        let e = Task::from_fields(
            "t",
            Kind::Images,
            &images_fields(&[("include_untagged", "true")]),
            Utc::now(),
        )
        .unwrap_err();
        assert_eq!(e.errors[0].field, "include_untagged");
        let e = Task::from_fields(
            "t",
            Kind::Images,
            &images_fields(&[("all_repos", "true")]),
            Utc::now(),
        )
        .unwrap_err();
        assert_eq!(e.errors[0].field, "list");
        let mut f = images_fields(&[("all_repos", "true")]);
        f.remove("list");
        assert!(Task::from_fields("t", Kind::Images, &f, Utc::now()).is_ok());
    }
}
