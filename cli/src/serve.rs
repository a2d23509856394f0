//! `transfer-hub serve`: runs the enabled tasks on their schedules and serves the console
//! (hub_core::console) on 127.0.0.1 unless told otherwise.

use crate::{config, default_state};
use anyhow::{Context, Result};
use clap::Args;
use hub_core::console::auth::{Auth, random_token};
use hub_core::console::runner::LocalRunner;
use hub_core::console::{Console, serve};
use hub_core::status::SqliteStore;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// The environment variable with the console's password (else only the one-time link logs in).
pub const PASSWORD_ENV: &str = "TRANSFER_HUB_CONSOLE_PASSWORD";

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0: any free port). Keep it on 127.0.0.1 unless the
    /// console must be reached from elsewhere (then put TLS in front).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// State file (SQLite) with the tasks, runs and items.
    #[arg(long, env = "TRANSFER_HUB_STATE")]
    state: Option<PathBuf>,
    /// Runs going at once, all tasks together.
    #[arg(long, default_value = "4")]
    max_runs: usize,
    /// After SIGTERM/SIGINT, how long running copies may go on before they are stopped.
    #[arg(long, default_value = "60")]
    grace_secs: u64,
}

pub async fn run(a: ServeArgs) -> Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    let path = a.state.clone().unwrap_or_else(default_state);
    let store = Arc::new(SqliteStore::open(&path).map_err(config)?);
    crate::settle_abandoned(&store);
    let runner = LocalRunner::new(store.clone(), a.max_runs);
    let token = random_token();
    let password = std::env::var(PASSWORD_ENV).ok();
    let console = Console {
        tasks: store.clone(),
        runner: runner.clone(),
        auth: Arc::new(Auth::new(Some(token.clone()), password)),
    };
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))
        .map_err(config)?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        let _ = writeln!(
            std::io::stderr(),
            "warning: the console listens on {addr}, beyond this machine"
        );
    }
    // The one-time login link goes to the terminal only (not to the logs).
    // A closed stdout (`serve | head -1`) must not stop the server (outln! drops what
    // cannot be written).
    crate::outln!("transfer-hub console: http://{addr}/?token={token}");
    crate::outln!("state file: {}", path.display());

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, mut rx) = tokio::sync::watch::channel::<Option<&'static str>>(None);
    tokio::spawn(async move {
        let why = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        let _ = tx.send(Some(why));
    });

    // The scheduler: a schedule missed while the server was down comes due at the first tick.
    let sched_runner = runner.clone();
    let mut sched_rx = rx.clone();
    let scheduler = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = every.tick() => { sched_runner.tick(chrono::Utc::now()).await; }
                _ = sched_rx.changed() => break,
            }
        }
    });

    let mut shut_rx = rx.clone();
    serve(listener, console, async move {
        let _ = shut_rx.wait_for(Option::is_some).await;
    })
    .await
    .context("console server")?;
    let why = rx
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|v| *v)
        .unwrap_or("SIGTERM");
    scheduler.await.ok();
    let _ = writeln!(
        std::io::stderr(),
        "{why}: no new runs start; running copies may finish for up to {} s",
        a.grace_secs
    );
    runner
        .shutdown(Duration::from_secs(a.grace_secs), why)
        .await;
    let _ = writeln!(std::io::stderr(), "stopped");
    Ok(ExitCode::SUCCESS)
}
