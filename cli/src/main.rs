//! `transfer-hub`: keep container images in sync between registries from one machine.
//! A thin shell over `hub-core`: parse arguments, build the edges, run, print.

mod output;
mod serve;
mod task;

use anyhow::{Context, Result, anyhow};
use clap::{Args, Parser, Subcommand, ValueEnum};
use hub_core::images::registry::Location;
use hub_core::images::sync::{SyncReport, new_run_id};
use hub_core::interrupt::{self, Stop};
use hub_core::objects::diff::Compare;
use hub_core::status::{RunKind, SqliteStore, StatusStore};
use hub_core::tasks::run::{self, RunContext, RunError};
use hub_core::tasks::{ImageSelection, ImagesOptions, ObjectsOptions};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

/// The version with the commit it was built from (`0.1.0 (commit a1b2c3d4e5f6)`), from build.rs.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("TRANSFER_HUB_COMMIT"),
    ")"
);

/// Keep container images and S3 objects in sync between registries (Docker Hub, Quay, GHCR,
/// Harbor, JFrog, Amazon ECR, any OCI registry) and between buckets, from one machine.
#[derive(Parser)]
#[command(
    name = "transfer-hub",
    version = VERSION,
    about = "Keep container images (registries: Docker Hub, Quay, GHCR, Harbor, ECR, any OCI \
             registry) and S3 objects (buckets, S3-compatible stores) in sync, from one machine",
    after_help = "\
Both halves take SOURCE DEST, as rclone, s5cmd and `aws s3 sync` do:
  transfer-hub images sync docker.io harbor.example.com/mirror --list images.txt
  transfer-hub objects sync s3://src/data s3://dst/backup
Tasks and the web console:
  transfer-hub task add nightly --kind objects s3://src s3://dst --schedule 'rate(1 day)'
  transfer-hub serve
Past runs: transfer-hub runs; one run: transfer-hub status [--run ID]"
)]
struct Cli {
    /// More log lines on stderr: -v info (with each error's underlying chain), -vv debug.
    /// RUST_LOG, when set, wins.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// No progress bar and no line per item: errors and the summary only.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Container images.
    Images {
        #[command(subcommand)]
        cmd: ImagesCmd,
    },
    /// Objects in S3 buckets or S3-compatible stores.
    Objects {
        #[command(subcommand)]
        cmd: ObjectsCmd,
    },
    /// Show a past run from the state file.
    Status(StatusArgs),
    /// List past runs, newest first: id, kind, source → dest, started, duration, result, counts.
    Runs(RunsArgs),
    /// Tasks: transfers kept by name in the state file, run by hand or on a schedule.
    Task {
        #[command(subcommand)]
        cmd: task::TaskCmd,
    },
    /// Run the enabled tasks on their schedules and serve the web console.
    Serve(serve::ServeArgs),
    /// Print a shell completion script: `transfer-hub completions bash > /etc/bash_completion.d/transfer-hub`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum ObjectsCmd {
    /// Copy the objects that are missing or different at the destination.
    Sync(ObjectsArgs),
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum CopyMode {
    /// Server-side when both sides share endpoint and credentials, else through this machine.
    Auto,
    /// Server-side CopyObject / UploadPartCopy.
    Server,
    /// GET from the source, PUT to the destination.
    Stream,
}

#[derive(Args)]
pub(crate) struct ObjectsArgs {
    /// Source: s3://BUCKET[/PREFIX]. A prefix is a folder, as in `aws s3 sync`:
    /// s3://b/data means the objects under data/, never data2/ or database/.
    #[arg(value_parser = hub_core::objects::run::parse_url)]
    source: hub_core::objects::url::S3Url,
    /// Destination: s3://BUCKET[/PREFIX]. Keys land under PREFIX/ (a folder, as for the
    /// source): s3://src/data/a → s3://dst/backup/a.
    #[arg(value_parser = hub_core::objects::run::parse_url)]
    dest: hub_core::objects::url::S3Url,
    /// S3-compatible endpoint of the source (path-style addressing).
    #[arg(long)]
    source_endpoint: Option<String>,
    /// S3-compatible endpoint of the destination (path-style addressing).
    #[arg(long)]
    dest_endpoint: Option<String>,
    /// Region of the source bucket (default: from the environment/profile).
    #[arg(long)]
    source_region: Option<String>,
    /// Region of the destination bucket.
    #[arg(long)]
    dest_region: Option<String>,
    /// Credentials profile for the source.
    #[arg(long)]
    source_profile: Option<String>,
    /// Credentials profile for the destination.
    #[arg(long)]
    dest_profile: Option<String>,
    /// The source bucket is requester-pays (we pay for reads).
    #[arg(long)]
    requester_pays: bool,
    /// What makes two objects equal: size (default), etag, or checksum.
    #[arg(long, default_value = "size", value_parser = hub_core::objects::diff::Compare::parse)]
    compare: hub_core::objects::diff::Compare,
    /// Requests (objects or parts) in flight at once.
    #[arg(long, default_value = "64")]
    concurrency: NonZeroUsize,
    /// Part size for multipart copies, e.g. 64M (5MiB to 5GiB; grown for huge objects).
    #[arg(long, default_value_t = hub_core::objects::multipart::DEFAULT_PART, value_parser = size_arg)]
    part_size: u64,
    /// Object data streamed copies hold in memory at once, e.g. 1G (parts or small
    /// objects read before they are written); at least one part is always let through.
    #[arg(long, default_value_t = hub_core::objects::run::DEFAULT_STREAM_BUFFER, value_parser = size_arg)]
    stream_buffer: u64,
    /// Objects of at least this size are copied in parts, e.g. 1G.
    #[arg(long, default_value_t = hub_core::objects::multipart::DEFAULT_THRESHOLD, value_parser = size_arg)]
    multipart_threshold: u64,
    /// How bytes move.
    #[arg(long, value_enum, default_value = "auto")]
    copy_mode: CopyMode,
    /// Destination storage class (e.g. STANDARD, STANDARD_IA, INTELLIGENT_TIERING, GLACIER_IR).
    #[arg(long, value_parser = hub_core::objects::bucket::parse_storage_class)]
    storage_class: Option<aws_sdk_s3::types::StorageClass>,
    /// Encrypt new destination objects with this KMS key (SSE-KMS).
    #[arg(long)]
    sse_kms_key: Option<String>,
    /// Copy object tags too.
    #[arg(long)]
    tags: bool,
    /// Retries after a failed attempt (network, 5xx, throttling, timeout); auth, not-found
    /// and bad-input errors are never retried.
    #[arg(long, default_value = "3")]
    retries: u32,
    /// Base of the exponential backoff between retries (full jitter): 500ms, 2s; a bare
    /// number is milliseconds.
    #[arg(long, default_value = "1000", value_parser = ms_arg)]
    retry_base_ms: u64,
    /// Longest wait between retries: 30s, 2m; a bare number is seconds.
    #[arg(long, default_value = "60", value_parser = secs_arg)]
    retry_max_secs: u64,
    /// Each attempt (one object, or all parts of one) is stopped after this long: 30m, 2h;
    /// a bare number is seconds.
    #[arg(long, default_value = "3600", value_parser = positive_secs_arg)]
    attempt_timeout_secs: u64,
    /// Copy only the keys that match GLOB, relative to the source prefix (rclone's globs:
    /// `*` within a segment, `**` across, `?`, `{a,b}`, `[a-z]`; a leading `/` anchors at
    /// the prefix, else the glob matches the key's end from a `/`). Repeatable, and mixed
    /// with --exclude the first rule that matches decides; keys no --include matches are
    /// left out. Left out means neither copied nor deleted, and counted as filtered.
    #[arg(long, value_name = "GLOB", value_parser = glob_arg, help_heading = "What to copy")]
    include: Vec<String>,
    /// Leave out the keys that match GLOB (as for --include). Repeatable.
    #[arg(long, value_name = "GLOB", value_parser = glob_arg, help_heading = "What to copy")]
    exclude: Vec<String>,
    /// Leave out objects smaller than this, e.g. 10M, 1.5G (binary units; a bare number is bytes).
    #[arg(long, value_name = "SIZE", value_parser = size_arg, help_heading = "What to copy")]
    min_size: Option<u64>,
    /// Leave out objects larger than this, e.g. 10M, 1.5G.
    #[arg(long, value_name = "SIZE", value_parser = size_arg, help_heading = "What to copy")]
    max_size: Option<u64>,
    /// Leave out objects last modified longer ago than this, e.g. 7d, 12h (a bare number
    /// is seconds; judged by LastModified at the run's start).
    #[arg(long, value_name = "AGE", value_parser = secs_arg, help_heading = "What to copy")]
    max_age: Option<u64>,
    /// Leave out objects last modified more recently than this, e.g. 1h.
    #[arg(long, value_name = "AGE", value_parser = secs_arg, help_heading = "What to copy")]
    min_age: Option<u64>,
    /// Sync only these prefixes (relative to the source prefix): a file or s3://BUCKET/KEY
    /// (read with the source's credentials) with one prefix per line; blank lines and
    /// `#` comments are ignored. Each prefix is listed and diffed on its own, several at
    /// once (--list-concurrency). At most 16 MiB.
    #[arg(
        long,
        value_name = "FILE|s3://BUCKET/KEY",
        help_heading = "What to copy"
    )]
    prefix_list: Option<String>,
    /// Pieces of the key space listed and diffed at once: the prefixes of --prefix-list,
    /// or else the folders (common prefixes with delimiter `/`, up to 3 levels deep) found
    /// on both sides, and the objects right under each. 1 lists each side in one listing.
    #[arg(long, default_value = "8", help_heading = "What to copy")]
    list_concurrency: NonZeroUsize,
    /// Delete destination objects missing at the source (within the prefix; objects the
    /// filters leave out are kept). Deletes run only after every copy of the run
    /// succeeded; a failed or interrupted run deletes nothing.
    #[arg(long, help_heading = "Deletes")]
    delete: bool,
    /// Refuse the whole delete step (delete nothing, exit 1) when it would remove more
    /// than N objects, or more than P% of the destination's objects in scope.
    #[arg(long, value_name = "N|P%", value_parser = max_delete_arg, requires = "delete", help_heading = "Deletes")]
    max_delete: Option<String>,
    /// Move deleted and overwritten destination objects to this key prefix of the
    /// destination bucket (server-side copy, then delete), e.g. .trash/; keys keep their
    /// path below the destination prefix. It may lie inside the destination prefix (it is
    /// then left out of the sync), but must not contain it.
    #[arg(long, value_name = "PREFIX", help_heading = "Deletes")]
    backup_prefix: Option<String>,
    /// Stream no more than RATE bytes a second through this machine, shared by all
    /// requests, e.g. 50M (50 MiB/s), 512K. Server-side copies (--copy-mode server, or
    /// auto with both sides on one endpoint) move no bytes through us and are not limited.
    #[arg(long, value_name = "RATE", value_parser = hub_core::objects::bandwidth::parse_rate)]
    bwlimit: Option<u64>,
    /// Archived sources (GLACIER, DEEP_ARCHIVE) that are not restored get a restore for
    /// N days and are reported `restoring`; a later run copies them once restored. Without
    /// it they are reported `archived` and left. GLACIER_IR is copied like any class.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), help_heading = "Archived objects")]
    restore_days: Option<u32>,
    /// The restore tier: Standard (hours) or Bulk (cheaper, slower).
    #[arg(long, value_name = "TIER", value_parser = restore_tier_arg, requires = "restore_days", help_heading = "Archived objects")]
    restore_tier: Option<String>,
    /// The include/exclude rules in command-line order (`+ GLOB`, `- GLOB`).
    #[arg(skip)]
    rules: Vec<String>,
    /// Print what would be copied and change nothing (the state file included).
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Output: human text, or one JSON object on stdout.
    #[arg(short, long, value_enum, default_value = "text")]
    output: OutputFormat,
    /// State file (SQLite) where runs, object results and open uploads are kept.
    #[arg(long, env = "TRANSFER_HUB_STATE")]
    state: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ImagesCmd {
    /// Copy the selected images that are missing or different at the destination.
    Sync(SyncArgs),
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum OutputFormat {
    Text,
    Json,
}

#[derive(Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["list", "all_repos"]))]
#[command(group = clap::ArgGroup::new("from").required(true).args(["source", "source_flag"]))]
#[command(group = clap::ArgGroup::new("to").required(true).args(["dest", "dest_flag"]))]
pub(crate) struct SyncArgs {
    /// Source registry, optionally with a repository prefix: REGISTRY[/PREFIX].
    #[arg(value_parser = Location::parse, value_name = "SOURCE")]
    source: Option<Location>,
    /// Destination registry, optionally with a repository prefix: REGISTRY[/PREFIX].
    /// An ECR registry (<account>.dkr.ecr.<region>.amazonaws.com) gets a login from the
    /// default AWS credential chain and missing repositories are created.
    #[arg(value_parser = Location::parse, value_name = "DEST")]
    dest: Option<Location>,
    /// SOURCE given as a flag (as before): --source REGISTRY[/PREFIX].
    #[arg(long = "source", value_parser = Location::parse, value_name = "SOURCE")]
    source_flag: Option<Location>,
    /// DEST given as a flag (as before): --dest REGISTRY[/PREFIX].
    #[arg(long = "dest", value_parser = Location::parse, value_name = "DEST")]
    dest_flag: Option<Location>,
    /// Selection list: names separated by commas or newlines (`name`, `name:tag`,
    /// `name:ALL_TAGS`, `name@sha256:…`, `host:port/name:tag`; `#` comments).
    #[arg(long)]
    list: Option<PathBuf>,
    /// Every repository under the source prefix, every tag.
    #[arg(long)]
    all_repos: bool,
    /// With --all-repos from an ECR source: also the images no tag points at (copied by
    /// digest, without a tag). Other registries cannot list untagged images.
    #[arg(long, requires = "all_repos")]
    include_untagged: bool,
    /// Of the listed tags (ALL_TAGS lines, --all-repos), only those this regular expression
    /// matches, anchored at both ends: 'v1\..*'. Repeatable: any one admits. A tag a list
    /// line names itself is always wanted.
    #[arg(long = "include-tags", value_name = "REGEX", value_parser = include_tags_arg)]
    include_tags: Vec<String>,
    /// Leave out the listed tags this regular expression matches (anchored): '.*-rc.*'.
    /// Repeatable: any one refuses.
    #[arg(long = "exclude-tags", value_name = "REGEX", value_parser = exclude_tags_arg)]
    exclude_tags: Vec<String>,
    /// Of the listed tags, only semantic versions in this range: '>=1.20, <2'
    /// (MAJOR.MINOR.PATCH, an optional leading v; other tags never match).
    #[arg(long, value_name = "RANGE", value_parser = semver_arg)]
    semver: Option<String>,
    /// Of the listed tags left by the other rules, only the N highest semantic versions per
    /// repository (tags that are not semantic versions are left out).
    #[arg(long, value_name = "N")]
    newest: Option<NonZeroUsize>,
    /// Copies at once.
    #[arg(long, default_value = "10")]
    concurrency: NonZeroUsize,
    /// Manifest lookups and tag listings at once.
    #[arg(long, default_value = "32")]
    resolve_concurrency: NonZeroUsize,
    /// Send at most N requests a second to each registry, spaced evenly, for registries
    /// that throttle without saying so (the requests transfer-hub sends itself: listings,
    /// manifest lookups, its own copies; skopeo's are bounded by --concurrency).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_requests_per_second: Option<u32>,
    /// A supply-chain cooldown: copy a source digest only once it was first seen at the
    /// source at least this long ago, e.g. 7d, 12h (a bare number is seconds), counted from
    /// the first run that saw it (kept in the state file). Until then the image is
    /// reported 'waiting' with the time left; a tag moved to a new digest waits again.
    #[arg(long, value_name = "AGE", value_parser = secs_arg)]
    min_age: Option<u64>,
    /// Retries after a failed attempt (network, 5xx, 429, timeout); auth, not-found and
    /// bad-input errors are never retried.
    #[arg(long, default_value = "3")]
    retries: u32,
    /// Base of the exponential backoff between retries (full jitter): 500ms, 2s; a bare
    /// number is milliseconds.
    #[arg(long, default_value = "1000", value_parser = ms_arg)]
    retry_base_ms: u64,
    /// Longest wait between retries: 30s, 2m; a bare number is seconds.
    #[arg(long, default_value = "60", value_parser = secs_arg)]
    retry_max_secs: u64,
    /// Each copy attempt is stopped after this long: 30m, 2h; a bare number is seconds.
    #[arg(long, default_value = "1800", value_parser = positive_secs_arg)]
    attempt_timeout_secs: u64,
    /// Print the plan (what would be copied, what is in sync) and change nothing (the
    /// state file included).
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Registry logins (containers/docker auth file). Default: $REGISTRY_AUTH_FILE, else ~/.docker/config.json.
    #[arg(long)]
    authfile: Option<PathBuf>,
    /// Speak plain HTTP to this registry (loopback registries always are). Repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registries: Vec<String>,
    /// CAs of registries with their own (Harbor, JFrog, a company CA), laid out as
    /// /etc/containers/certs.d: DIR/HOST:PORT/ca.crt (every *.crt a CA). Looked in before
    /// /etc/containers/certs.d and /etc/docker/certs.d; SSL_CERT_FILE adds CAs for all.
    /// A loopback registry with a directory here is spoken to over TLS.
    #[arg(long, value_name = "DIR")]
    registry_certs: Option<PathBuf>,
    /// Output: human text, or one JSON object on stdout.
    #[arg(short, long, value_enum, default_value = "text")]
    output: OutputFormat,
    /// State file (SQLite) where runs and image results are kept.
    #[arg(long, env = "TRANSFER_HUB_STATE")]
    state: Option<PathBuf>,
    /// New ECR repositories: do not turn on scan-on-push.
    #[arg(long)]
    no_scan_on_push: bool,
    /// New ECR repositories: encrypt with this KMS key (default AES256).
    #[arg(long)]
    ecr_kms_key: Option<String>,
    /// New ECR repositories: MUTABLE tags (the default) or IMMUTABLE (a push that would move
    /// a tag is refused, and reported as a conflict).
    #[arg(long, value_name = "MUTABLE|IMMUTABLE", value_parser = ["MUTABLE", "IMMUTABLE"], default_value = "MUTABLE")]
    ecr_tag_mutability: String,
    /// Leave a destination tag that already holds another image alone: it is reported as a
    /// conflict naming both digests, and the run goes on. Without it, the tag is replaced.
    #[arg(long)]
    no_overwrite: bool,
}

#[derive(Args)]
struct RunsArgs {
    /// How many runs to show.
    #[arg(long, default_value = "20")]
    limit: NonZeroUsize,
    /// Only runs of this kind.
    #[arg(long, value_parser = ["images", "objects"])]
    kind: Option<String>,
    /// State file (SQLite).
    #[arg(long, env = "TRANSFER_HUB_STATE")]
    state: Option<PathBuf>,
    /// Output: human text or JSON.
    #[arg(short, long, value_enum, default_value = "text")]
    output: OutputFormat,
}

#[derive(Args)]
struct StatusArgs {
    /// Run id (default: the latest run).
    #[arg(long)]
    run: Option<String>,
    /// State file (SQLite).
    #[arg(long, env = "TRANSFER_HUB_STATE")]
    state: Option<PathBuf>,
    /// Output: human text or JSON.
    #[arg(short, long, value_enum, default_value = "text")]
    output: OutputFormat,
    /// Whole digests in text output (shortened to 12 hex characters otherwise).
    #[arg(long)]
    long: bool,
}

/// A size flag's value: `64M`, `1.5G`, `5MiB` or bytes.
fn size_arg(s: &str) -> Result<u64, String> {
    match hub_core::units::parse_size(s)? {
        0 => Err(format!("{s:?}: expected 1 byte or more, e.g. 64M")),
        n => Ok(n),
    }
}

/// A glob of --include/--exclude: it must parse (the flag and value are named by clap).
fn glob_arg(s: &str) -> Result<String, String> {
    hub_core::objects::filter::Glob::parse(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

/// The --include and --exclude values of one command line in the order they were typed,
/// as rules (`+ GLOB`, `- GLOB`): the first that matches decides.
pub(crate) fn rules_in_order(m: &clap::ArgMatches) -> Vec<String> {
    let mut rules: Vec<(usize, String)> = Vec::new();
    for (id, sign) in [("include", '+'), ("exclude", '-')] {
        let (Some(idx), Some(raw)) = (m.indices_of(id), m.get_raw(id)) else {
            continue;
        };
        for (i, v) in idx.zip(raw) {
            rules.push((i, format!("{sign} {}", v.to_string_lossy())));
        }
    }
    rules.sort_by_key(|(i, _)| *i);
    rules.into_iter().map(|(_, r)| r).collect()
}

/// A duration flag in milliseconds: `500ms`, `2s`, or a bare number of milliseconds.
fn ms_arg(s: &str) -> Result<u64, String> {
    hub_core::units::parse_duration(s, std::time::Duration::from_millis(1))
        .map(|d| d.as_millis() as u64)
}

/// A duration flag in seconds: `30s`, `5m`, `2h`, or a bare number of seconds.
fn secs_arg(s: &str) -> Result<u64, String> {
    let d = hub_core::units::parse_duration(s, std::time::Duration::from_secs(1))?;
    Ok(d.as_secs_f64().round() as u64)
}

/// [`secs_arg`] of at least one second.
fn positive_secs_arg(s: &str) -> Result<u64, String> {
    match secs_arg(s)? {
        0 => Err(format!("{s:?}: expected 1s or more, e.g. 30m")),
        n => Ok(n),
    }
}

/// Marks an error as a problem the user must fix before anything can run (exit code 2).
pub(crate) fn config<E: Into<anyhow::Error>>(e: E) -> anyhow::Error {
    anyhow::Error::new(ConfigErrorMarker(format!("{:#}", e.into())))
}

#[derive(Debug)]
struct ConfigErrorMarker(String);
impl std::fmt::Display for ConfigErrorMarker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ConfigErrorMarker {}

pub(crate) fn default_state() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("transfer-hub/state.db")
}

/// Set when the command prints JSON: an error then still prints one JSON object.
static JSON_MODE: AtomicBool = AtomicBool::new(false);
/// Set once the command printed its JSON object.
static JSON_PRINTED: AtomicBool = AtomicBool::new(false);

/// Prints the command's one JSON object.
pub(crate) fn print_json(v: &impl serde::Serialize) -> Result<()> {
    JSON_PRINTED.store(true, Ordering::Relaxed);
    outln!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// The exit code of an error: 2 for a problem to fix before anything can run, else 1.
fn error_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<ConfigErrorMarker>().is_some() {
        2
    } else {
        1
    }
}

/// Whether the command line asks for JSON output (`-o json`, `--output json`,
/// `--output=json`, `-ojson`, a short-flag cluster ending in `o`), read without clap so a
/// usage error can still answer in JSON.
fn wants_json(args: &[String]) -> bool {
    let args: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .take_while(|a| *a != "--")
        .collect();
    args.iter().enumerate().any(|(i, a)| {
        let next_json = args.get(i + 1) == Some(&"json");
        if *a == "--output" || *a == "-o" {
            return next_json;
        }
        if *a == "--output=json" {
            return true;
        }
        match a.strip_prefix('-').filter(|s| !s.starts_with('-')) {
            Some(short) => match short.split_once('o') {
                Some((_, after)) => match after.trim_start_matches('=') {
                    "json" => true,
                    "" => next_json,
                    _ => false,
                },
                None => false,
            },
            None => false,
        }
    })
}

/// A usage error (an unknown flag, a bad value): clap's message on stderr and exit 2; in
/// JSON mode also one JSON object on stdout, its `error` the message's first line.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let shown = matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if shown || !wants_json(&args) {
        e.exit();
    }
    let text = e.render().to_string();
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid usage")
        .trim_start_matches("error: ")
        .to_string();
    let _ = e.print();
    let _ = print_json(&serde_json::json!({
        "error": line,
        "exit_code": 2,
        "usage": true,
    }));
    ExitCode::from(2)
}

fn main() -> ExitCode {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => return usage_error(e),
    };
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    // `--include`/`--exclude` in the order typed (clap keeps each flag's own order).
    if let Cmd::Objects {
        cmd: ObjectsCmd::Sync(a),
    } = &mut cli.cmd
        && let Some(m) = matches
            .subcommand_matches("objects")
            .and_then(|m| m.subcommand_matches("sync"))
    {
        a.rules = rules_in_order(m);
    }
    init_tracing(cli.verbose);
    output::set_quiet(cli.quiet, cli.verbose > 0);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime starts");
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            let code = error_code(&e);
            eprintln!("error: {e:#}");
            if JSON_MODE.load(Ordering::Relaxed) && !JSON_PRINTED.load(Ordering::Relaxed) {
                let _ = print_json(&serde_json::json!({
                    "error": format!("{e:#}"),
                    "exit_code": code,
                }));
            }
            ExitCode::from(code)
        }
    }
}

fn init_tracing(verbose: u8) {
    // The AWS SDK's own warnings (a region not found on IMDS, …) are Debug dumps of its
    // structs: shown only when asked for (-vv, or RUST_LOG, which wins over -v).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        match verbose {
            0 => "warn,aws_config=error,aws_smithy_runtime=error,aws_sdk_s3=error",
            1 => "info,aws_config=error,aws_smithy_runtime=error,aws_sdk_s3=error",
            _ => "debug",
        }
        .into()
    });
    // Colour only on a terminal, and never under NO_COLOR (https://no-color.org).
    use std::io::IsTerminal as _;
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(output::LogWriter);
    if std::env::var("TRANSFER_HUB_LOG_FORMAT").is_ok_and(|v| v == "json") {
        b.json().init();
    } else {
        b.with_target(false).init();
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let json = match &cli.cmd {
        Cmd::Images {
            cmd: ImagesCmd::Sync(a),
        } => a.output == OutputFormat::Json,
        Cmd::Objects {
            cmd: ObjectsCmd::Sync(a),
        } => a.output == OutputFormat::Json,
        Cmd::Status(a) => a.output == OutputFormat::Json,
        Cmd::Runs(a) => a.output == OutputFormat::Json,
        Cmd::Task { cmd } => task::json(cmd),
        _ => false,
    };
    JSON_MODE.store(json, Ordering::Relaxed);
    match cli.cmd {
        Cmd::Images {
            cmd: ImagesCmd::Sync(args),
        } => sync(args).await,
        Cmd::Objects {
            cmd: ObjectsCmd::Sync(args),
        } => objects_sync(args).await,
        Cmd::Status(args) => status(args).await,
        Cmd::Runs(args) => runs(args).await,
        Cmd::Task { cmd } => task::run(cmd).await,
        Cmd::Serve(args) => serve::run(args).await,
        Cmd::Completions { shell } => {
            use clap::CommandFactory as _;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "transfer-hub", &mut script);
            output::write_out(&String::from_utf8_lossy(&script));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn objects_options(a: &ObjectsArgs) -> ObjectsOptions {
    ObjectsOptions {
        source: a.source.to_string(),
        dest: a.dest.to_string(),
        source_endpoint: a.source_endpoint.clone(),
        dest_endpoint: a.dest_endpoint.clone(),
        source_region: a.source_region.clone(),
        dest_region: a.dest_region.clone(),
        source_profile: a.source_profile.clone(),
        dest_profile: a.dest_profile.clone(),
        requester_pays: a.requester_pays,
        compare: match a.compare {
            Compare::Size => "size",
            Compare::Etag => "etag",
            Compare::Checksum => "checksum",
        }
        .into(),
        concurrency: a.concurrency.get(),
        part_size: a.part_size,
        stream_buffer: a.stream_buffer,
        multipart_threshold: a.multipart_threshold,
        copy_mode: a
            .copy_mode
            .to_possible_value()
            .expect("no skipped variants")
            .get_name()
            .into(),
        storage_class: a.storage_class.as_ref().map(|c| c.as_str().to_string()),
        sse_kms_key: a.sse_kms_key.clone(),
        tags: a.tags,
        retries: a.retries,
        retry_base_ms: a.retry_base_ms,
        retry_max_secs: a.retry_max_secs,
        attempt_timeout_secs: a.attempt_timeout_secs,
        filters: a.rules.clone(),
        min_size: a.min_size,
        max_size: a.max_size,
        max_age_secs: a.max_age,
        min_age_secs: a.min_age,
        prefix_list: a.prefix_list.clone(),
        list_concurrency: a.list_concurrency.get(),
        delete: a.delete,
        max_delete: a.max_delete.clone(),
        backup_prefix: a.backup_prefix.clone(),
        bwlimit: a.bwlimit,
        restore_days: a.restore_days,
        restore_tier: a.restore_tier.clone(),
    }
}

/// `--restore-tier`: checked at parse time, kept as written.
fn restore_tier_arg(s: &str) -> Result<String, String> {
    hub_core::objects::run::parse_tier(s).map(|t| t.as_str().to_string())
}

/// `--max-delete`: checked at parse time, kept as written (the task stores it so).
fn max_delete_arg(s: &str) -> Result<String, String> {
    hub_core::objects::deletes::MaxDelete::parse(s).map(|_| s.trim().to_string())
}

async fn objects_sync(a: ObjectsArgs) -> Result<ExitCode> {
    let state_path = a.state.clone().unwrap_or_else(default_state);
    let store = if a.dry_run {
        SqliteStore::in_memory()
    } else {
        SqliteStore::open(&state_path)
    }
    .map_err(config)?;
    let stop = stop_on_signals().context("cannot listen for SIGINT/SIGTERM")?;
    settle_abandoned(&store);
    let progress = output::Live::new(a.output == OutputFormat::Text, a.dry_run);
    progress.streaming("object");
    let ctx = RunContext {
        run_id: new_run_id(),
        status: &store,
        ledger: &store,
        progress: &progress,
        stop: stop.clone(),
        dry_run: a.dry_run,
    };
    let options = objects_options(&a);
    let started = chrono::Utc::now();
    let report = match run::run_objects(&options, &ctx).await {
        Ok(r) => r,
        Err(e) => {
            progress.done();
            let sides = (options.source.as_str(), options.dest.as_str());
            return Err(fatal(&ctx, RunKind::Objects, sides, started, e, a.output).await);
        }
    };
    progress.done();
    finish(report, a.output, &state_path, Some(&stop))
}

/// A run that ended with an error: in JSON mode its one JSON object (the run record,
/// `failed` with `error` set, its items so far, and `exit_code`); the error for `main`.
pub(crate) async fn fatal(
    ctx: &RunContext<'_>,
    kind: RunKind,
    sides: (&str, &str),
    started: chrono::DateTime<chrono::Utc>,
    e: RunError,
    output: OutputFormat,
) -> anyhow::Error {
    let run = run::failed_run(ctx, kind, sides, started, &e).await;
    let e = run_error(e);
    if output == OutputFormat::Json {
        let items = match ctx.status.get_run(Some(&run.run_id)).await {
            Ok(Some((_, items))) => items,
            _ => Vec::new(),
        };
        let mut v = serde_json::to_value(SyncReport {
            run,
            items,
            registries: Default::default(),
            left_out: Vec::new(),
            quotas: Vec::new(),
        })
        .unwrap_or_default();
        v["error"] = format!("{e:#}").into();
        v["exit_code"] = error_code(&e).into();
        if let Err(p) = print_json(&v) {
            tracing::error!(error = %p, "cannot print the JSON report");
        }
    }
    e
}

/// A run error as the CLI reports it: settings problems exit with 2.
pub(crate) fn run_error(e: RunError) -> anyhow::Error {
    match e {
        RunError::Config(m) => config(anyhow!(m)),
        e => e.into(),
    }
}

/// Prints a report and picks the exit code.
pub(crate) fn finish(
    report: SyncReport,
    output: OutputFormat,
    state_path: &std::path::Path,
    stop: Option<&Stop>,
) -> Result<ExitCode> {
    match output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => {
            output::summary(&report.run, &report.items, Some(state_path));
            output::registry_requests(&report.registries);
            output::quotas(&report.quotas);
        }
    }
    if let Some(why) = stop.and_then(|s| s.reason()) {
        let what = if report.run.source.starts_with("s3://") {
            "object(s) in flight"
        } else {
            "image(s) not finished"
        };
        eprintln!(
            "interrupted by {why}: {} {what} are recorded as failed; run the same command again to copy them",
            report.run.failed
        );
        return Ok(ExitCode::from(signal_exit_code(why)));
    }
    Ok(if report.all_in_sync() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Ctrl-C (SIGINT) and SIGTERM stop the run: copies are killed (images: skopeo; objects:
/// the requests in flight, open uploads kept in the ledger), the temp auth file is removed,
/// interrupted items and the run's interruption are recorded, and the exit code is 130 or
/// 143. A second signal exits at once.
pub(crate) fn stop_on_signals() -> std::io::Result<Stop> {
    use tokio::signal::unix::{SignalKind, signal};
    let (handle, stop) = interrupt::channel();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let first = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        eprintln!("{first}: stopping the copies (again to exit at once)");
        handle.stop(first);
        let second = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        // At once, but not without removing the temp auth file (no destructor runs).
        interrupt::exit_now(signal_exit_code(second).into());
    });
    Ok(stop)
}

/// The shell's convention: 128 + the signal's number.
fn signal_exit_code(signal: &str) -> u8 {
    match signal {
        "SIGINT" => 130,
        _ => 143,
    }
}

pub(crate) fn read_list(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the selection list {}", path.display()))
        .map_err(config)
}

fn images_options(a: &SyncArgs) -> Result<ImagesOptions> {
    let selection = match &a.list {
        Some(path) => ImageSelection::List(read_list(path)?),
        None => ImageSelection::AllRepos {
            include_untagged: a.include_untagged,
        },
    };
    // The group rules make one of each pair present.
    let source = a
        .source
        .as_ref()
        .or(a.source_flag.as_ref())
        .expect("SOURCE");
    let dest = a.dest.as_ref().or(a.dest_flag.as_ref()).expect("DEST");
    Ok(ImagesOptions {
        source: source.to_string(),
        dest: dest.to_string(),
        selection,
        concurrency: a.concurrency.get(),
        resolve_concurrency: a.resolve_concurrency.get(),
        retries: a.retries,
        retry_base_ms: a.retry_base_ms,
        retry_max_secs: a.retry_max_secs,
        attempt_timeout_secs: a.attempt_timeout_secs,
        authfile: a.authfile.as_ref().map(|p| p.display().to_string()),
        insecure_registries: a.insecure_registries.clone(),
        registry_certs: a.registry_certs.as_ref().map(|p| p.display().to_string()),
        no_scan_on_push: a.no_scan_on_push,
        ecr_kms_key: a.ecr_kms_key.clone(),
        no_overwrite: a.no_overwrite,
        max_requests_per_second: a.max_requests_per_second,
        min_age_secs: a.min_age,
        ecr_immutable_tags: a.ecr_tag_mutability == "IMMUTABLE",
        include_tags: a.include_tags.clone(),
        exclude_tags: a.exclude_tags.clone(),
        semver: a.semver.clone(),
        newest: a.newest.map(NonZeroUsize::get),
    })
}

fn include_tags_arg(s: &str) -> std::result::Result<String, String> {
    hub_core::images::tags::parse_pattern("--include-tags", s)
        .map(|_| s.to_string())
        .map_err(|e| e.reason)
}

fn exclude_tags_arg(s: &str) -> std::result::Result<String, String> {
    hub_core::images::tags::parse_pattern("--exclude-tags", s)
        .map(|_| s.to_string())
        .map_err(|e| e.reason)
}

fn semver_arg(s: &str) -> std::result::Result<String, String> {
    hub_core::images::tags::parse_range(s)
        .map(|_| s.to_string())
        .map_err(|e| e.reason)
}

async fn sync(a: SyncArgs) -> Result<ExitCode> {
    let stop = stop_on_signals().context("cannot listen for SIGINT/SIGTERM")?;
    let options = images_options(&a)?;
    let state_path = a.state.clone().unwrap_or_else(default_state);
    // A dry run changes nothing, the state file included.
    let store = if a.dry_run {
        SqliteStore::in_memory()
    } else {
        SqliteStore::open(&state_path)
    }
    .map_err(config)?;
    settle_abandoned(&store);
    let progress = output::Live::new(a.output == OutputFormat::Text, a.dry_run);
    let ctx = RunContext {
        run_id: new_run_id(),
        status: &store,
        ledger: &store,
        progress: &progress,
        stop: stop.clone(),
        dry_run: a.dry_run,
    };
    let started = chrono::Utc::now();
    let report = match run::run_images(&options, &ctx).await {
        Ok(r) => r,
        Err(e) => {
            progress.done();
            let sides = (options.source.as_str(), options.dest.as_str());
            return Err(fatal(&ctx, RunKind::Images, sides, started, e, a.output).await);
        }
    };
    progress.done();
    finish(report, a.output, &state_path, Some(&stop))
}

/// Runs of this state file whose process was killed (still `running`, their process gone)
/// are marked `interrupted` (logged; a failure to mark is only logged).
pub(crate) fn settle_abandoned(store: &SqliteStore) {
    match store.mark_abandoned_runs() {
        Ok(runs) => {
            for run in runs {
                tracing::warn!(run = %run, "an earlier run ended without recording its result (killed?); marked interrupted");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot check the state file for killed runs"),
    }
}

async fn runs(a: RunsArgs) -> Result<ExitCode> {
    let path = a.state.clone().unwrap_or_else(default_state);
    if !path.exists() {
        return Err(config(anyhow!(
            "no state file at {}: run `transfer-hub images sync` or `objects sync` first, or pass --state",
            path.display()
        )));
    }
    let store = SqliteStore::open(&path).map_err(config)?;
    settle_abandoned(&store);
    let limit = a.limit.get();
    let mut runs = store
        .list_runs(if a.kind.is_some() { 100_000 } else { limit })
        .await?;
    if let Some(k) = &a.kind {
        runs.retain(|r| r.kind.as_str() == k);
    }
    runs.truncate(limit);
    match a.output {
        OutputFormat::Json => print_json(&serde_json::json!({ "runs": runs }))?,
        OutputFormat::Text => output::runs_table(&runs),
    }
    Ok(ExitCode::SUCCESS)
}

async fn status(a: StatusArgs) -> Result<ExitCode> {
    let path = a.state.clone().unwrap_or_else(default_state);
    if !path.exists() {
        return Err(config(anyhow!(
            "no state file at {}: run `transfer-hub images sync` first, or pass --state",
            path.display()
        )));
    }
    let store = SqliteStore::open(&path).map_err(config)?;
    settle_abandoned(&store);
    let Some((run, items)) = store.get_run(a.run.as_deref()).await? else {
        let known: Vec<String> = store
            .list_runs(10)
            .await?
            .into_iter()
            .map(|r| r.run_id)
            .collect();
        return Err(config(anyhow!(
            "no run {:?} in {}; recent runs: {}",
            a.run.unwrap_or_default(),
            path.display(),
            known.join(", ")
        )));
    };
    match a.output {
        OutputFormat::Json => print_json(&hub_core::images::sync::SyncReport {
            run,
            items,
            registries: Default::default(),
            left_out: Vec::new(),
            quotas: Vec::new(),
        })?,
        OutputFormat::Text => {
            for i in &items {
                output::print_item(i, false, a.long);
            }
            output::summary(&run, &items, None);
        }
    }
    Ok(ExitCode::SUCCESS)
}
