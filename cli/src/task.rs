//! `transfer-hub task add|edit|list|show|rm|run`: tasks kept in the state file.
//!
//! `add` and `edit` take the flags of `images sync` / `objects sync` (the same clap
//! structs), plus `--schedule`, `--disabled` and `--enabled`. The flags become the task's
//! fields (their text as typed) and the library reads them with the CLI's own parsers
//! (`Task::from_fields`), as the console's forms do. `edit` changes only the flags given.

use crate::{ObjectsArgs, OutputFormat, SyncArgs, config, default_state, output};
use anyhow::{Result, anyhow};
use clap::parser::ValueSource;
use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand};
use hub_core::images::sync::new_run_id;
use hub_core::status::SqliteStore;
use hub_core::tasks::run::{RunContext, run_task};
use hub_core::tasks::store::TaskStore;
use hub_core::tasks::{Fields, Kind, Task, default_fields};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum TaskCmd {
    /// Add a task: `task add NAME --kind images|objects FLAGS…`, where FLAGS are those of
    /// `images sync` (or `objects sync`) plus --schedule 'rate(1 day)'|'cron(…)' and --disabled.
    Add(AddArgs),
    /// Change a task: only the flags given change (same flags as `add`; --enabled turns it back on).
    Edit(EditArgs),
    /// List the tasks.
    List(StateArgs),
    /// Show a task's settings.
    Show(NameArgs),
    /// Remove a task (its past runs stay in the state file).
    Rm(NameArgs),
    /// Run a task now, in the foreground, as `images sync`/`objects sync` with its flags would.
    Run(RunArgs),
}

#[derive(Args)]
pub struct AddArgs {
    /// Task name: lowercase letters, digits and '-', starting with a letter (≤ 63).
    name: String,
    /// What the task moves.
    #[arg(long, value_parser = Kind::parse)]
    kind: Kind,
    /// The flags of `images sync` or `objects sync`, --schedule and --disabled.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "FLAGS"
    )]
    flags: Vec<String>,
}

#[derive(Args)]
pub struct EditArgs {
    name: String,
    /// The flags to change (as for `task add`).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "FLAGS"
    )]
    flags: Vec<String>,
}

#[derive(Args)]
pub struct StateArgs {
    /// State file (SQLite).
    #[arg(long, env = "TRANSFER_HUB_STATE")]
    state: Option<PathBuf>,
    /// Output: human text, or one JSON object on stdout.
    #[arg(short, long, value_enum, default_value = "text")]
    output: OutputFormat,
}

#[derive(Args)]
pub struct NameArgs {
    name: String,
    #[command(flatten)]
    state: StateArgs,
}

#[derive(Args)]
pub struct RunArgs {
    name: String,
    /// Print the plan and change nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    state: StateArgs,
}

/// What a task adds to the sync flags.
#[derive(Args)]
struct TaskFlags {
    /// When to run: rate(VALUE UNIT) or cron(MIN HOUR DOM MONTH DOW YEAR), as EventBridge writes them (UTC).
    #[arg(long)]
    schedule: Option<String>,
    /// Keep the task off its schedule.
    #[arg(long, conflicts_with = "enabled")]
    disabled: bool,
    /// Put the task back on its schedule (edit).
    #[arg(long)]
    enabled: bool,
}

#[derive(Parser)]
#[command(name = "task add --kind images")]
struct ImagesFlags {
    #[command(flatten)]
    sync: SyncArgs,
    #[command(flatten)]
    task: TaskFlags,
}

#[derive(Parser)]
#[command(name = "task add --kind objects")]
struct ObjectsFlags {
    #[command(flatten)]
    sync: ObjectsArgs,
    #[command(flatten)]
    task: TaskFlags,
}

/// Flags of a sync that are about one invocation, not the task.
const NOT_FIELDS: &[&str] = &[
    "dry_run", "output", "state", "disabled", "enabled", "help", "verbose", "quiet",
];

/// The fields the flags give (all of them with defaults for `add`, only those typed for
/// `edit`), and the state file if one was named.
fn parse_flags(kind: Kind, flags: &[String], edit: bool) -> Result<(Fields, Option<PathBuf>)> {
    let mut cmd = match kind {
        Kind::Images => ImagesFlags::command(),
        Kind::Objects => ObjectsFlags::command(),
    };
    if edit {
        cmd = cmd.mut_arg("source", |a| a.required(false));
        cmd = cmd.mut_arg("dest", |a| a.required(false));
        if kind == Kind::Images {
            cmd = cmd.mut_group("what", |g| g.required(false));
            cmd = cmd.mut_group("from", |g| g.required(false));
            cmd = cmd.mut_group("to", |g| g.required(false));
        }
    }
    // Values are read as text here and by the library's reader (the same parsers), so
    // every invalid field is reported at once rather than clap's first.
    cmd = cmd.mut_args(|a| {
        if matches!(a.get_action(), ArgAction::Set | ArgAction::Append) {
            a.value_parser(clap::builder::ValueParser::string())
        } else {
            a
        }
    });
    let argv = std::iter::once(cmd.get_name().to_string()).chain(flags.iter().cloned());
    let m = cmd
        .clone()
        .try_get_matches_from(argv)
        .unwrap_or_else(|e| e.exit());
    let mut fields = Fields::new();
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if NOT_FIELDS.contains(&id) {
            continue;
        }
        let given = match m.value_source(id) {
            Some(ValueSource::CommandLine) => true,
            Some(_) => !edit,
            None => false,
        };
        if !given {
            continue;
        }
        // Include and exclude rules keep their order together, in one field.
        if id == "include" || id == "exclude" {
            fields.insert("filters".into(), crate::rules_in_order(&m).join("\n"));
            continue;
        }
        let Some(raw) = m.get_raw(id) else { continue };
        let values: Vec<String> = raw.map(|v| v.to_string_lossy().into_owned()).collect();
        // Tag patterns may hold commas: a task keeps them separated by spaces.
        let sep = if matches!(id, "include_tags" | "exclude_tags") {
            " "
        } else {
            ", "
        };
        let mut value = values.join(sep);
        if id == "list" {
            value = crate::read_list(std::path::Path::new(&value))?;
            if edit {
                fields.insert("all_repos".into(), "false".into());
                fields.insert("include_untagged".into(), "false".into());
            }
        }
        if id == "all_repos" && edit {
            fields.insert("list".into(), String::new());
        }
        // `images sync SOURCE DEST` or `--source/--dest`: one field each.
        let id = match id {
            "source_flag" => "source",
            "dest_flag" => "dest",
            id => id,
        };
        fields.insert(id.to_string(), value);
    }
    if m.get_flag("disabled") {
        fields.insert("enabled".into(), "false".into());
    } else if m.get_flag("enabled") || !edit {
        fields.insert("enabled".into(), "true".into());
    }
    let state = m
        .get_raw("state")
        .and_then(|mut v| v.next())
        .map(PathBuf::from);
    Ok((fields, state))
}

fn open(state: &Option<PathBuf>) -> Result<(SqliteStore, PathBuf)> {
    let path = state.clone().unwrap_or_else(default_state);
    Ok((SqliteStore::open(&path).map_err(config)?, path))
}

async fn get(store: &SqliteStore, name: &str, path: &std::path::Path) -> Result<Task> {
    store.get(name).await?.ok_or_else(|| {
        config(anyhow!(
            "no task named {name:?} in {}; `transfer-hub task list` shows the tasks",
            path.display()
        ))
    })
}

/// Whether the command prints JSON (an error then still prints one JSON object).
pub fn json(cmd: &TaskCmd) -> bool {
    let out = match cmd {
        TaskCmd::List(s) => s.output,
        TaskCmd::Show(a) | TaskCmd::Rm(a) => a.state.output,
        TaskCmd::Run(a) => a.state.output,
        TaskCmd::Add(_) | TaskCmd::Edit(_) => OutputFormat::Text,
    };
    out == OutputFormat::Json
}

pub async fn run(cmd: TaskCmd) -> Result<ExitCode> {
    match cmd {
        TaskCmd::Add(a) => {
            let (given, state) = parse_flags(a.kind, &a.flags, false)?;
            let mut fields = default_fields(a.kind);
            fields.extend(given);
            let task =
                Task::from_fields(&a.name, a.kind, &fields, chrono::Utc::now()).map_err(config)?;
            let (store, path) = open(&state)?;
            store.create(&task).await.map_err(config)?;
            crate::outln!(
                "added task {} ({}) to {}",
                task.name,
                task.kind(),
                path.display()
            );
        }
        TaskCmd::Edit(a) => {
            // The kind comes from the stored task: find the state file first.
            let state = find_state(&a.flags);
            let (store, path) = open(&state)?;
            let old = get(&store, &a.name, &path).await?;
            let (given, _) = parse_flags(old.kind(), &a.flags, true)?;
            let mut fields = old.fields();
            fields.extend(given);
            let mut task = Task::from_fields(&a.name, old.kind(), &fields, chrono::Utc::now())
                .map_err(config)?;
            task.created_at = old.created_at;
            store.update(&task).await.map_err(config)?;
            crate::outln!("changed task {}", task.name);
        }
        TaskCmd::List(s) => {
            let (store, _) = open(&s.state)?;
            let mut tasks = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let page = store.list(after.as_deref(), 500).await?;
                let Some(last) = page.last() else { break };
                after = Some(last.name.clone());
                tasks.extend(page);
            }
            match s.output {
                OutputFormat::Json => crate::outln!("{}", serde_json::to_string_pretty(&tasks)?),
                OutputFormat::Text => {
                    crate::outln!(
                        "{:<24} {:<8} {:<60} {:<20} {:<9} {:<28} NEXT RUN",
                        "NAME",
                        "KIND",
                        "SOURCE → DESTINATION",
                        "SCHEDULE",
                        "ENABLED",
                        "LAST RUN"
                    );
                    for t in &tasks {
                        let last = store.runs(&t.name, None, 1).await?.into_iter().next();
                        let last = last
                            .map(|r| {
                                format!(
                                    "{} {}c/{}s/{}f",
                                    r.started_at.format("%Y-%m-%d %H:%M"),
                                    r.copied,
                                    r.skipped,
                                    r.failed
                                )
                            })
                            .unwrap_or_else(|| "-".into());
                        crate::outln!(
                            "{:<24} {:<8} {:<60} {:<20} {:<9} {:<28} {}",
                            t.name,
                            t.kind().as_str(),
                            format!("{} → {}", t.source(), t.dest()),
                            t.schedule.as_deref().unwrap_or("-"),
                            if t.enabled { "yes" } else { "no" },
                            last,
                            next_run(&store, t)
                                .await?
                                .map(|n| n.format("%Y-%m-%d %H:%M UTC").to_string())
                                .unwrap_or_else(|| "-".into())
                        );
                    }
                }
            }
        }
        TaskCmd::Show(a) => {
            let (store, path) = open(&a.state.state)?;
            let t = get(&store, &a.name, &path).await?;
            match a.state.output {
                OutputFormat::Json => crate::outln!("{}", serde_json::to_string_pretty(&t)?),
                OutputFormat::Text => {
                    crate::outln!("name = {}\nkind = {}", t.name, t.kind());
                    for (k, v) in t.fields() {
                        if !v.is_empty() {
                            crate::outln!("{k} = {}", v.replace('\n', "\n    "));
                        }
                    }
                    if let Some(n) = next_run(&store, &t).await? {
                        crate::outln!("next run = {}", n.to_rfc3339());
                    }
                }
            }
        }
        TaskCmd::Rm(a) => {
            let (store, path) = open(&a.state.state)?;
            if !store.delete(&a.name).await? {
                return Err(config(anyhow!(
                    "no task named {:?} in {}",
                    a.name,
                    path.display()
                )));
            }
            crate::outln!("removed task {}", a.name);
        }
        TaskCmd::Run(a) => {
            let stop = crate::stop_on_signals()?;
            let (store, path) = open(&a.state.state)?;
            let t = get(&store, &a.name, &path).await?;
            crate::settle_abandoned(&store);
            let dry = SqliteStore::in_memory()?;
            let status: &SqliteStore = if a.dry_run { &dry } else { &store };
            let progress = output::Live::new(a.state.output == OutputFormat::Text, a.dry_run);
            if t.kind() == Kind::Objects {
                progress.streaming("object");
            }
            let ctx = RunContext {
                run_id: new_run_id(),
                status,
                ledger: status,
                progress: &progress,
                stop: stop.clone(),
                dry_run: a.dry_run,
            };
            let started = chrono::Utc::now();
            let report = match run_task(&t, &store, &ctx, None).await {
                Ok(r) => r,
                Err(e) => {
                    progress.done();
                    let kind = match t.kind() {
                        Kind::Images => hub_core::status::RunKind::Images,
                        Kind::Objects => hub_core::status::RunKind::Objects,
                    };
                    let sides = (t.source(), t.dest());
                    return Err(crate::fatal(&ctx, kind, sides, started, e, a.state.output).await);
                }
            };
            progress.done();
            return crate::finish(report, a.state.output, &path, Some(&stop));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--state PATH` (or `--state=PATH`) among edit's flags, else the environment.
fn find_state(flags: &[String]) -> Option<PathBuf> {
    let mut it = flags.iter();
    while let Some(f) = it.next() {
        if f == "--state" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = f.strip_prefix("--state=") {
            return Some(PathBuf::from(v));
        }
    }
    std::env::var_os("TRANSFER_HUB_STATE").map(PathBuf::from)
}

/// When the scheduler will next start the task (none when disabled or unscheduled).
async fn next_run(store: &SqliteStore, t: &Task) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
    Ok(hub_core::console::runner::next_run(store, t).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_reads_the_sync_flags_with_their_defaults_and_edit_only_the_given_ones() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("l.txt");
        std::fs::write(&list, "app:1\n").unwrap();
        let flags: Vec<String> = [
            "--source",
            "127.0.0.1:5000",
            "--dest",
            "127.0.0.1:5001/m",
            "--list",
            list.to_str().unwrap(),
            "--insecure-registry",
            "a:1",
            "--insecure-registry",
            "b:2",
            "--schedule",
            "rate(1 day)",
        ]
        .map(String::from)
        .into();
        let (f, _) = parse_flags(Kind::Images, &flags, false).unwrap();
        assert_eq!(f["list"], "app:1\n");
        assert_eq!(f["concurrency"], "10");
        assert_eq!(f["insecure_registries"], "a:1, b:2");
        assert_eq!(f["schedule"], "rate(1 day)");
        assert_eq!(f["enabled"], "true");
        let (f, _) = parse_flags(
            Kind::Images,
            &["--retries".into(), "7".into(), "--disabled".into()],
            true,
        )
        .unwrap();
        assert_eq!(
            f.into_iter().collect::<Vec<_>>(),
            [
                ("enabled".to_string(), "false".to_string()),
                ("retries".into(), "7".into())
            ]
        );
    }
}
