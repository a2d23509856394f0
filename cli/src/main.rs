//! `transfer-hub`: keep container images in sync between registries from one machine.
//! A thin shell over `hub-core`: parse arguments, build the edges, run, print.

mod output;
mod serve;
mod task;

use anyhow::{Context, Result, anyhow};
use clap::{Args, Parser, Subcommand, ValueEnum};
use hub_core::interrupt::{self, Stop};
use hub_core::objects::diff::Compare;
use hub_core::registry::Location;
use hub_core::status::{SqliteStore, StatusStore};
use hub_core::sync::{SyncReport, new_run_id};
use hub_core::tasks::run::{self, RunContext, RunError};
use hub_core::tasks::{ImageSelection, ImagesOptions, ObjectsOptions};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;

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
#[command(name = "transfer-hub", version = VERSION, about)]
struct Cli {
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
    /// Part size in bytes for multipart copies (5 MiB to 5 GiB; grown for huge objects).
    #[arg(long, default_value_t = hub_core::objects::multipart::DEFAULT_PART)]
    part_size: u64,
    /// Bytes of object data streamed copies hold in memory at once (parts or small objects
    /// read before they are written); at least one part is always let through.
    #[arg(long, default_value_t = hub_core::objects::run::DEFAULT_STREAM_BUFFER)]
    stream_buffer: u64,
    /// Objects of at least this many bytes are copied in parts.
    #[arg(long, default_value_t = hub_core::objects::multipart::DEFAULT_THRESHOLD)]
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
    /// Retries after a failed attempt (network, 5xx, throttling, timeout).
    #[arg(long, default_value = "3")]
    retries: u32,
    /// Base of the exponential backoff between retries, in milliseconds (full jitter).
    #[arg(long, default_value = "500")]
    retry_base_ms: u64,
    /// Each attempt (one object, or all parts of one) is stopped after this many seconds.
    #[arg(long, default_value = "3600")]
    attempt_timeout_secs: u64,
    /// Print what would be copied and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Output: human text, or one JSON object on stdout.
    #[arg(long, value_enum, default_value = "text")]
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
pub(crate) struct SyncArgs {
    /// Source registry, optionally with a repository prefix: REGISTRY[/PREFIX].
    #[arg(long, value_parser = Location::parse)]
    source: Location,
    /// Destination registry, optionally with a repository prefix: REGISTRY[/PREFIX].
    /// An ECR registry (<account>.dkr.ecr.<region>.amazonaws.com) gets a login from the
    /// default AWS credential chain and missing repositories are created.
    #[arg(long, value_parser = Location::parse)]
    dest: Location,
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
    /// Copies at once.
    #[arg(long, default_value = "10")]
    concurrency: NonZeroUsize,
    /// Manifest lookups and tag listings at once.
    #[arg(long, default_value = "32")]
    resolve_concurrency: NonZeroUsize,
    /// Retries after a failed attempt (network, 5xx, 429, timeout); auth, not-found and
    /// bad-input errors are never retried.
    #[arg(long, default_value = "3")]
    retries: u32,
    /// Base of the exponential backoff between retries, in milliseconds (full jitter).
    #[arg(long, default_value = "1000")]
    retry_base_ms: u64,
    /// Longest wait between retries, in seconds.
    #[arg(long, default_value = "60")]
    retry_max_secs: u64,
    /// Each copy attempt is stopped after this many seconds.
    #[arg(long, default_value = "1800")]
    attempt_timeout_secs: u64,
    /// Print the plan (what would be copied, what is in sync) and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Registry logins (containers/docker auth file). Default: $REGISTRY_AUTH_FILE, else ~/.docker/config.json.
    #[arg(long)]
    authfile: Option<PathBuf>,
    /// Speak plain HTTP to this registry (loopback registries always are). Repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registries: Vec<String>,
    /// Output: human text, or one JSON object on stdout.
    #[arg(long, value_enum, default_value = "text")]
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
    #[arg(long, value_enum, default_value = "text")]
    output: OutputFormat,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime starts");
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<ConfigErrorMarker>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn init_tracing() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    // Colour only on a terminal, and never under NO_COLOR (https://no-color.org).
    use std::io::IsTerminal as _;
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    if std::env::var("TRANSFER_HUB_LOG_FORMAT").is_ok_and(|v| v == "json") {
        b.json().init();
    } else {
        b.with_target(false).init();
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Images {
            cmd: ImagesCmd::Sync(args),
        } => sync(args).await,
        Cmd::Objects {
            cmd: ObjectsCmd::Sync(args),
        } => objects_sync(args).await,
        Cmd::Status(args) => status(args).await,
        Cmd::Task { cmd } => task::run(cmd).await,
        Cmd::Serve(args) => serve::run(args).await,
        Cmd::Completions { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "transfer-hub",
                &mut std::io::stdout(),
            );
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
        attempt_timeout_secs: a.attempt_timeout_secs,
    }
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
    let report = run::run_objects(&objects_options(&a), &ctx)
        .await
        .map_err(run_error)?;
    progress.done();
    finish(report, a.output, &state_path, Some(&stop))
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
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Text => output::summary(&report.run, &report.items, Some(state_path)),
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
    Ok(ImagesOptions {
        source: a.source.to_string(),
        dest: a.dest.to_string(),
        selection,
        concurrency: a.concurrency.get(),
        resolve_concurrency: a.resolve_concurrency.get(),
        retries: a.retries,
        retry_base_ms: a.retry_base_ms,
        retry_max_secs: a.retry_max_secs,
        attempt_timeout_secs: a.attempt_timeout_secs,
        authfile: a.authfile.as_ref().map(|p| p.display().to_string()),
        insecure_registries: a.insecure_registries.clone(),
        no_scan_on_push: a.no_scan_on_push,
        ecr_kms_key: a.ecr_kms_key.clone(),
    })
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
    let progress = output::Live::new(a.output == OutputFormat::Text, a.dry_run);
    let ctx = RunContext {
        run_id: new_run_id(),
        status: &store,
        ledger: &store,
        progress: &progress,
        stop: stop.clone(),
        dry_run: a.dry_run,
    };
    let report = run::run_images(&options, &ctx).await.map_err(run_error)?;
    progress.done();
    finish(report, a.output, &state_path, Some(&stop))
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
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&hub_core::sync::SyncReport { run, items })?
        ),
        OutputFormat::Text => {
            for i in &items {
                output::print_item(i, false);
            }
            output::summary(&run, &items, None);
        }
    }
    Ok(ExitCode::SUCCESS)
}
