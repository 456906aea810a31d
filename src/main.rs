//! `canaryd`: the command line. Everything it does lives in the library; this file only parses
//! arguments, wires the daemon together, and turns errors into messages and exit codes.

use anyhow::{Context, Result, bail};
use canaryd::api::auth::TlsListener;
use canaryd::api::client::{Client, ClientError, event_line, exit_code};
use canaryd::api::{AppState, app};
use canaryd::canary::Deps;
use canaryd::canary::scheduler::Scheduler;
use canaryd::config::Config;
use canaryd::metrics::PrometheusSource;
use canaryd::router::TrafficRouter;
use canaryd::rules::Catalog;
use canaryd::store::Store;
use canaryd::telemetry::{self, LogFormat};
use clap::{Parser, Subcommand};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tracing::{info, warn};

#[derive(Parser)]
#[command(
    name = "canaryd",
    version,
    about = "Automated canary releases through your load balancer, judged statistically from Prometheus"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ServerArgs {
    /// canaryd's API.
    #[arg(long, env = "CANARYD_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// API token.
    #[arg(long, env = "CANARYD_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve {
        /// Configuration file.
        #[arg(long, default_value = "canaryd.toml")]
        config: PathBuf,
        /// Log format.
        #[arg(long, value_enum, default_value = "human")]
        log_format: LogFormat,
    },
    /// Hand a canary to the daemon.
    Submit {
        /// The canary spec (YAML).
        spec: PathBuf,
        /// Follow the canary and exit 0 when promoted, 3 rolled back, 4 aborted, 5 failed.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show one canary, or list the canaries.
    Status {
        /// The canary (all canaries when omitted).
        id: Option<i64>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Stop a canary and return all traffic to the baseline.
    Abort(ActionArgs),
    /// Promote a canary now.
    Promote(ActionArgs),
    /// Hold a canary at its current weights.
    Pause(ActionArgs),
    /// Continue a paused canary.
    Resume(ActionArgs),
    /// Approve a canary waiting at a gated step.
    Approve(ActionArgs),
    /// Check connectivity and permissions: Prometheus, routers, SMTP, webhooks, store, rules.
    Doctor {
        /// Configuration file.
        #[arg(long, default_value = "canaryd.toml")]
        config: PathBuf,
    },
    /// API token helpers.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Rule files: check, unit-test, print the JSON Schema, import from Kayenta.
    Rules {
        #[command(subcommand)]
        command: canaryd::tooling::cli::RulesCommand,
    },
    /// Replay a past window from Prometheus through the judge, interval by interval.
    Backtest(canaryd::tooling::cli::BacktestArgs),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print the SHA-256 of a token read from standard input, for `[[api.tokens]] sha256`.
    Hash,
}

#[derive(clap::Args)]
struct ActionArgs {
    /// The canary.
    id: i64,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            let code = match e.downcast_ref::<ClientError>() {
                Some(ClientError::Api { .. }) => 2,
                _ => 1,
            };
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Serve { config, log_format } => serve(config, log_format).await.map(|_| 0),
        Command::Submit { spec, wait, server } => submit(spec, wait, server).await,
        Command::Status { id, output, server } => status(id, output, server).await.map(|_| 0),
        Command::Abort(a) => action("abort", a).await,
        Command::Promote(a) => action("promote", a).await,
        Command::Pause(a) => action("pause", a).await,
        Command::Resume(a) => action("resume", a).await,
        Command::Approve(a) => action("approve", a).await,
        Command::Doctor { config } => doctor(config).await,
        Command::Rules { command } => {
            // `rules check` defaults to the configured rules directory: only that is passed.
            let rules_dir = command
                .config_path()
                .filter(|p| p.exists())
                .and_then(|p| Config::load(p).ok())
                .map(|c| c.rules.dir);
            Ok(canaryd::tooling::cli::rules(command, rules_dir)?)
        }
        Command::Backtest(args) => Ok(canaryd::tooling::cli::backtest(args).await?),
        Command::Token {
            command: TokenCommand::Hash,
        } => {
            let mut token = String::new();
            std::io::stdin().read_line(&mut token)?;
            if token.trim().is_empty() {
                bail!("give the token on standard input: echo -n TOKEN | canaryd token hash");
            }
            println!("{}", canaryd::api::auth::hash_token(&token));
            Ok(0)
        }
    }
}

async fn serve(path: PathBuf, log_format: LogFormat) -> Result<()> {
    telemetry::init_logs(log_format);
    let config = Config::load(&path)?;
    if let Err(errors) = config.validate() {
        let lines: Vec<String> = errors
            .iter()
            .map(|e| format!("  {}: {e}", path.display()))
            .collect();
        bail!("invalid configuration:\n{}", lines.join("\n"));
    }
    let store = Store::open(&config.store.url).context("opening the store")?;
    let catalog = Catalog::load_dir(&config.rules.dir)
        .with_context(|| format!("reading rules from {}", config.rules.dir.display()))?;
    for e in &catalog.errors {
        warn!(error = %e, "Rule file not loaded");
    }
    info!(rule_sets = ?catalog.names().collect::<Vec<_>>(), dir = %config.rules.dir.display(), "Rules loaded");
    // Hot reload: SIGHUP and file changes swap in a validated catalog (rules::reload).
    let catalog = Arc::new(RwLock::new(catalog));
    let stop_reload = tokio_util::sync::CancellationToken::new();
    let reloader = tokio::spawn(canaryd::rules::reload::run(
        catalog.clone(),
        stop_reload.clone(),
    ));
    let source = PrometheusSource::new(
        &config.prometheus.url,
        &config.prometheus.auth()?,
        config.prometheus.timeout.0,
    )
    .map_err(anyhow::Error::msg)?;
    let routers = build_routers(&config);
    for name in routers.keys() {
        telemetry::metrics().register_router(name);
    }
    let deps = Arc::new(Deps {
        store: store.clone(),
        routers: routers.clone(),
        source: Arc::new(source),
        analysis: config.analysis.clone(),
        environments: config.environments.clone(),
    });
    if let Some(retention) = config.store.retention {
        spawn_retention(store.clone(), retention.0);
    }
    let scheduler = Scheduler::new(deps);
    let resumed = scheduler.resume_all().await?;
    let notifications =
        canaryd::notify::Notifications::start(&config.notifications(), store.clone()).await?;
    let state = Arc::new(AppState {
        store,
        scheduler: scheduler.clone(),
        catalog: catalog.clone(),
        api: config.api.clone(),
        notifiers: config.notifiers.keys().cloned().collect(),
    });
    let listener = tokio::net::TcpListener::bind(&config.server.listen)
        .await
        .with_context(|| format!("listening on {}", config.server.listen))?;
    let access = if config.api.tokens.is_empty() {
        "the API has no tokens configured and is open to loopback clients only".to_string()
    } else {
        format!("{} API tokens configured", config.api.tokens.len())
    };
    let router = app(state);
    match &config.api.tls {
        Some(tls) => {
            let listener = TlsListener::new(listener, tls).map_err(anyhow::Error::msg)?;
            info!(listen = %config.server.listen, resumed, "canaryd is serving HTTPS; {access}");
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown_signal())
                .await?;
        }
        None => {
            info!(listen = %config.server.listen, resumed, "canaryd is serving; {access}");
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown_signal())
                .await?;
        }
    }
    info!("Stopping canary controllers (each finishes its current step)");
    stop_reload.cancel();
    let _ = reloader.await;
    scheduler.shutdown().await;
    notifications.shutdown().await;
    info!("Stopped");
    Ok(())
}

/// Deletes finished canaries older than the retention, hourly.
fn spawn_retention(store: Store, retention: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            let cutoff =
                chrono::Utc::now() - chrono::Duration::from_std(retention).unwrap_or_default();
            match store.prune(cutoff).await {
                Ok(0) => {}
                Ok(n) => info!(canaries = n, "Retention: deleted finished canaries"),
                Err(e) => warn!(error = %e, "Retention failed"),
            }
        }
    });
}

/// Every configured router, built from its own section.
fn build_routers(config: &Config) -> BTreeMap<String, Arc<dyn TrafficRouter>> {
    config
        .routers
        .iter()
        .map(|(name, c)| (name.clone(), c.build(name)))
        .collect()
}

/// `canaryd doctor`: validates the configuration, builds each component from its slice and
/// asks each one through its `check`.
async fn doctor(path: PathBuf) -> Result<u8> {
    let config = Config::load(&path)?;
    if let Err(errors) = config.validate() {
        for e in &errors {
            println!("FAIL config: {}: {e}", path.display());
        }
        return Ok(1);
    }
    let store = Store::open(&config.store.url)
        .map_err(|e| format!("cannot open {}: {e}", config.store.url));
    let source = PrometheusSource::new(
        &config.prometheus.url,
        &config.prometheus.auth()?,
        config.prometheus.timeout.0,
    )
    .map_err(anyhow::Error::msg)?;
    let routers = build_routers(&config);
    let environment = canaryd::canary::preflight::Environment {
        source: &source,
        source_url: &config.prometheus.url,
        routers: &routers,
        notifiers: &config.notifiers,
        store: store.as_ref().map_err(Clone::clone),
        rules_dir: &config.rules.dir,
    };
    let checks = canaryd::canary::preflight::doctor(&environment).await;
    for c in &checks {
        println!(
            "{} {}: {}",
            if c.ok { "ok  " } else { "FAIL" },
            c.check,
            c.detail
        );
    }
    Ok(if checks.iter().all(|c| c.ok) { 0 } else { 1 })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

async fn submit(path: PathBuf, wait: bool, server: ServerArgs) -> Result<u8> {
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    // Check the spec locally first: errors point at the file.
    let spec = match canaryd::canary::spec::from_yaml(&text) {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return Ok(2);
        }
    };
    // The daemon fills what the spec leaves to its environment profile; check with the
    // built-in defaults so a spec relying on them is not refused here.
    let mut local = spec.clone();
    let mut problems =
        canaryd::canary::profile::Profile::builtin(&local.environment).prepare(&mut local);
    problems.extend(local.validate());
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("{}: {p}", path.display());
        }
        return Ok(2);
    }
    let client = Client::new(&server.server, server.token);
    let view = match client.submit_yaml(&text).await {
        Ok(v) => v,
        Err(ClientError::Api { message, .. }) => {
            eprintln!("error: {message}");
            return Ok(2);
        }
        Err(e) => return Err(e.into()),
    };
    println!(
        "canary {} submitted: {} on {}/{} (rules {} {})",
        view.id, view.service, view.router, view.target.backend, view.rules.name, view.rules.hash
    );
    if !wait {
        return Ok(0);
    }
    follow(&client, view.id, view.steps.len()).await
}

/// Follows a canary's events (long polling) until it finishes; returns the exit code.
async fn follow(client: &Client, id: i64, steps: usize) -> Result<u8> {
    let mut after = 0;
    let mut failures = 0;
    loop {
        match client.events(id, after, Duration::from_secs(25)).await {
            Ok(events) => {
                failures = 0;
                for e in &events {
                    after = after.max(e.id);
                    if let Some(line) = event_line(e, steps) {
                        println!("{line}");
                    }
                }
                if let Some(last) = events.last()
                    && let Some(code) = exit_code(&last.phase)
                {
                    let view = client.get(id).await?;
                    println!("canary {id} {}: {}", view.phase, view.reasons.join("; "));
                    return Ok(code as u8);
                }
            }
            // The daemon restarting is not the canary failing: keep following for a while.
            Err(ClientError::Unreachable { .. }) if failures < 30 => {
                failures += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn status(id: Option<i64>, output: Output, server: ServerArgs) -> Result<()> {
    let client = Client::new(&server.server, server.token);
    let views = match id {
        Some(id) => vec![client.get(id).await?],
        None => client.list(false).await?,
    };
    match output {
        Output::Json => {
            let v = if id.is_some() {
                serde_json::to_value(&views[0])?
            } else {
                serde_json::to_value(&views)?
            };
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Text => {
            for v in &views {
                println!(
                    "{:>5}  {:<14} {:<18} step {}/{} canary {}%  {}",
                    v.id,
                    v.phase,
                    v.service,
                    v.step.min(v.steps.len()),
                    v.steps.len(),
                    v.weight.applied.unwrap_or(0.0),
                    v.reasons.join("; ")
                );
                if id.is_some()
                    && let Some(a) = &v.analysis
                {
                    for m in &a.metrics {
                        println!("       {}: {}", m.name, m.reason);
                    }
                }
            }
        }
    }
    Ok(())
}

async fn action(name: &str, args: ActionArgs) -> Result<u8> {
    let client = Client::new(&args.server.server, args.server.token);
    match client.command(args.id, name).await {
        Ok(v) => {
            println!(
                "canary {}: {} (canary weight {}%)",
                v.id, v.phase, v.weight.intended
            );
            Ok(0)
        }
        Err(ClientError::Api { message, .. }) => {
            eprintln!("error: {message}");
            Ok(2)
        }
        Err(e) => Err(e.into()),
    }
}
