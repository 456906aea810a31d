//! nginx through an include file canaryd owns (open-source nginx has no API for upstream weights).
//!
//! The main configuration includes `upstreams_file` in its `http {}` block. canaryd renders into
//! it one `upstream` block per configured upstream (`zone` shared by the workers, a `server`
//! line per server with its `weight`; weight 0 is written `down`, since nginx refuses
//! `weight=0`) and a small status `server` on `status_listen` that answers the file's
//! generation. A change: render → replace the file atomically → `nginx -t` (a failure puts the
//! old file back before anything reloads) → reload → poll the status server until it answers
//! the new generation (a reload nginx refuses after the check passed, a port in use for
//! example, also puts the old file back).
//!
//! # Verifying that nginx runs the file
//! `get_weights` reads the weights from the file, then asks the status server which generation
//! the workers run: they answer from the configuration they loaded, so a match proves nginx runs
//! this file, and a failed or pending reload is an error that says so. (A hash recorded at the
//! last reload would be lost when canaryd restarts and cannot see a reload that nginx refused
//! after `nginx -t` passed; worker start times in `/proc` need canaryd in nginx's PID
//! namespace.) A weight edited by hand keeps the generation line, so canaryd reports the edited
//! weight, which is what nginx runs after its reload: the drift check sees it. A file canaryd
//! has not written yet (no generation line) is read as it is, unverified.
//!
//! Servers are found in the file by address; names come from the configuration.

use super::file_provider::{ManagedFile, poll_until};
use super::http::{loopback_client, request_error};
use super::{LiveWeights, RouterError, ServerState, Target, TrafficRouter, weights};
use crate::problem::Problem;
use crate::time::HumanDuration;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::Mutex;

/// `[routers.NAME] kind = "nginx"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NginxConfig {
    /// The file canaryd owns and rewrites, included by the main configuration inside `http {}`
    /// (`include /etc/nginx/canaryd-upstreams.conf;`). Create it once by hand with the
    /// `upstream` blocks (see the README); canaryd adds its status server on its first write.
    pub upstreams_file: PathBuf,
    /// The main configuration, which `nginx -t` checks together with the rendered file.
    #[serde(default = "default_nginx_config")]
    pub nginx_config: PathBuf,
    /// nginx's prefix path (`-p`), when not the compiled-in one.
    pub prefix: Option<PathBuf>,
    /// The nginx binary.
    #[serde(default = "default_binary")]
    pub binary: String,
    /// The check, as program and arguments; default `[binary, "-t", "-q", ("-p", prefix),
    /// "-c", nginx_config]`.
    pub check_command: Option<Vec<String>>,
    /// The reload, as program and arguments; default `[binary, ("-p", prefix), "-c",
    /// nginx_config, "-s", "reload"]` (for example `["systemctl", "reload", "nginx"]`).
    pub reload_command: Option<Vec<String>>,
    /// Loopback `host:port` of the status server canaryd renders into the file: it answers the
    /// generation nginx's workers run, canaryd's proof that a reload took effect.
    pub status_listen: String,
    /// Time limit for one change (check, reload, confirmation) and for one status request.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// The upstreams canaryd renders: upstream name (a target's `backend`) → server name (in
    /// a target's `baseline` / `canary`) → `"address [parameters]"`, for example
    /// `"192.0.2.1:8080 max_fails=3"`. The address is how the server is found in the file;
    /// parameters other than `weight` and `down` are written as given.
    pub upstreams: BTreeMap<String, BTreeMap<String, String>>,
}

fn default_nginx_config() -> PathBuf {
    PathBuf::from("/etc/nginx/nginx.conf")
}

fn default_binary() -> String {
    "nginx".into()
}

fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

/// Characters that would let a configured value break out of its nginx directive.
fn unsafe_for_nginx(s: &str) -> bool {
    s.chars()
        .any(|c| matches!(c, ';' | '{' | '}' | '#' | '"' | '\'' | '$' | '\\') || c.is_control())
}

impl NginxConfig {
    /// Value checks without touching the network: every problem, each naming its field.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |f: &str, m: String| out.push(Problem::new(f, m));
        if self.upstreams_file.as_os_str().is_empty() {
            bad("upstreams_file", "must not be empty".into());
        }
        match self.status_listen.parse::<SocketAddr>() {
            Ok(a) if a.ip().is_loopback() => {}
            Ok(a) => bad("status_listen", format!("{a} is not a loopback address")),
            Err(e) => bad("status_listen", format!("{:?}: {e}", self.status_listen)),
        }
        for (field, command) in [
            ("check_command", &self.check_command),
            ("reload_command", &self.reload_command),
        ] {
            if command.as_ref().is_some_and(|c| c.is_empty()) {
                bad(field, "must name a program".into());
            }
        }
        if self.upstreams.is_empty() {
            bad("upstreams", "configure at least one upstream".into());
        }
        for (upstream, servers) in &self.upstreams {
            let field = format!("upstreams.{upstream}");
            if upstream.is_empty()
                || upstream.chars().any(|c| c.is_whitespace())
                || unsafe_for_nginx(upstream)
            {
                bad(&field, "is not a valid nginx upstream name".into());
            }
            if servers.is_empty() {
                bad(&field, "has no servers".into());
            }
            for (name, spec) in servers {
                let words: Vec<&str> = spec.split_whitespace().collect();
                let problem = if words.is_empty() {
                    Some("needs an address".to_string())
                } else if unsafe_for_nginx(spec) {
                    Some(format!("{spec:?} contains a character nginx would misread"))
                } else {
                    words[1..]
                        .iter()
                        .find(|w| w.starts_with("weight=") || **w == "down")
                        .map(|w| format!("{w:?}: canaryd sets weight and down itself"))
                };
                if let Some(p) = problem {
                    bad(&format!("{field}.{name}"), p);
                }
            }
        }
        out
    }
}

/// One `server` line as read from the file.
#[derive(Clone, Debug, PartialEq)]
struct FileServer {
    address: String,
    weight: u32,
    down: bool,
}

/// The parts of the file canaryd reads back.
#[derive(Debug, Default, PartialEq)]
struct FileState {
    generation: Option<String>,
    upstreams: BTreeMap<String, Vec<FileServer>>,
}

const GENERATION: &str = "# canaryd-generation:";
const STATUS_PATH: &str = "/canaryd/generation";

/// Reads `upstream NAME {` blocks and their `server ADDRESS [weight=N] [down] ...;` lines, one
/// directive per line (as canaryd writes them; hand edits must keep that).
fn parse(text: &str) -> FileState {
    let mut state = FileState::default();
    let mut current: Option<String> = None;
    for raw in text.lines() {
        if let Some(g) = raw.trim().strip_prefix(GENERATION) {
            state.generation = Some(g.trim().to_string());
            continue;
        }
        let line = raw.split('#').next().unwrap_or("").trim();
        let words: Vec<&str> = line.trim_end_matches(';').split_whitespace().collect();
        match (current.as_ref(), words.as_slice()) {
            (None, ["upstream", name, "{"]) => {
                current = Some(name.to_string());
                state.upstreams.entry(name.to_string()).or_default();
            }
            (Some(_), ["}"]) => current = None,
            (Some(up), ["server", address, params @ ..]) => {
                let weight = params
                    .iter()
                    .find_map(|p| p.strip_prefix("weight=")?.parse().ok())
                    .unwrap_or(1);
                let down = params.contains(&"down");
                if let Some(list) = state.upstreams.get_mut(up) {
                    list.push(FileServer {
                        address: address.to_string(),
                        weight,
                        down,
                    });
                }
            }
            _ => {}
        }
    }
    state
}

/// A router that renders nginx upstreams into an include file and reloads nginx.
pub struct NginxRouter {
    name: String,
    config: NginxConfig,
    client: reqwest::Client,
    /// The include file.
    managed: ManagedFile,
    /// One writer at a time: the file holds every upstream of this router.
    lock: Mutex<()>,
}

fn address_of(spec: &str) -> &str {
    spec.split_whitespace().next().unwrap_or("")
}

impl NginxRouter {
    /// A router named `name` (for messages).
    pub fn new(name: &str, config: NginxConfig) -> Self {
        NginxRouter {
            name: name.to_string(),
            client: loopback_client(config.timeout.0),
            managed: ManagedFile::new(name, &config.upstreams_file),
            config,
            lock: Mutex::new(()),
        }
    }

    fn not_found(&self, what: String) -> RouterError {
        RouterError::NotFound {
            router: self.name.clone(),
            what,
        }
    }

    fn file(&self) -> String {
        self.managed.shown()
    }

    /// The configured servers of the target's upstream, checked against the target.
    fn upstream(&self, target: &Target) -> Result<&BTreeMap<String, String>, RouterError> {
        let servers = self.config.upstreams.get(&target.backend).ok_or_else(|| {
            self.not_found(format!(
                "no upstream {:?} is configured (configured: {:?})",
                target.backend,
                self.config.upstreams.keys().collect::<Vec<_>>()
            ))
        })?;
        let missing: Vec<&String> = target
            .baseline
            .iter()
            .chain(&target.canary)
            .filter(|n| !servers.contains_key(*n))
            .collect();
        if !missing.is_empty() {
            return Err(self.not_found(format!(
                "upstream {:?} has no server {missing:?} (configured: {:?})",
                target.backend,
                servers.keys().collect::<Vec<_>>()
            )));
        }
        Ok(servers)
    }

    async fn read_file(&self) -> Result<(String, FileState), RouterError> {
        match self.managed.read().await {
            Ok(text) => {
                let state = parse(&text);
                Ok((text, state))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(self.not_found(format!(
                "the include file {} does not exist; create it with the upstream blocks (see README, \"Routers\")",
                self.file()
            ))),
            Err(e) => Err(RouterError::Unreachable {
                router: self.name.clone(),
                address: self.file(),
                reason: e.to_string(),
            }),
        }
    }

    /// The weights of the target's servers as the file has them.
    fn servers_in_file(
        &self,
        target: &Target,
        file: &FileState,
    ) -> Result<Vec<ServerState>, RouterError> {
        let configured = self.upstream(target)?;
        let lines = file.upstreams.get(&target.backend).ok_or_else(|| {
            self.not_found(format!(
                "{} has no upstream {:?}",
                self.file(),
                target.backend
            ))
        })?;
        let mut out = Vec::new();
        for name in target.baseline.iter().chain(&target.canary) {
            let address = address_of(&configured[name]);
            let line = lines.iter().find(|l| l.address == address).ok_or_else(|| {
                self.not_found(format!(
                    "upstream {:?} in {} has no server {address} ({name})",
                    target.backend,
                    self.file()
                ))
            })?;
            out.push(ServerState {
                name: name.clone(),
                weight: if line.down { 0 } else { line.weight },
                enabled: !line.down,
                up: true,
            });
        }
        Ok(out)
    }

    /// canaryd renders the file from its configuration: an upstream or a server the file has
    /// and the configuration does not would be dropped, so that is refused before any write.
    fn check_nothing_dropped(&self, file: &FileState) -> Result<(), RouterError> {
        let mut strangers = Vec::new();
        for (upstream, lines) in &file.upstreams {
            let configured = self.config.upstreams.get(upstream);
            for line in lines {
                let known = configured
                    .is_some_and(|servers| servers.values().any(|s| address_of(s) == line.address));
                if !known {
                    strangers.push(format!("{upstream}/{}", line.address));
                }
            }
        }
        if strangers.is_empty() {
            return Ok(());
        }
        Err(RouterError::Rejected {
            router: self.name.clone(),
            command: format!("render {}", self.file()),
            reply: format!(
                "the file has {strangers:?}, which the router's `upstreams` do not list and a rewrite would drop: configure them or move them to another file"
            ),
        })
    }

    /// The generation nginx's workers run, from the status server.
    async fn live_generation(&self) -> Result<String, RouterError> {
        let url = format!("http://{}{STATUS_PATH}", self.config.status_listen);
        let what = format!("GET {url}");
        let response = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| request_error(&self.name, &self.config.status_listen, &what, e))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| request_error(&self.name, &self.config.status_listen, &what, e))?;
        if !status.is_success() {
            return Err(RouterError::Protocol {
                router: self.name.clone(),
                command: what,
                reply: format!("{status}: {}", body.chars().take(200).collect::<String>()),
            });
        }
        Ok(body.trim().to_string())
    }

    /// Whether nginx runs the file's generation (a file canaryd never wrote has none and is
    /// taken as it is). Err only when the status server cannot be asked.
    async fn runs_file(&self, file: &FileState) -> Result<Result<(), String>, RouterError> {
        let Some(generation) = &file.generation else {
            return Ok(Ok(()));
        };
        let live = self.live_generation().await?;
        if &live == generation {
            return Ok(Ok(()));
        }
        Ok(Err(format!(
            "nginx runs generation {live}, but {} holds {generation}: its last reload failed or has not happened yet",
            self.file()
        )))
    }

    /// Renders every configured upstream with `weights` (address → weight; absent → `down`).
    fn render(&self, weights: &BTreeMap<(String, String), u32>, generation: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# Written by canaryd (router {:?}) on every weight change. A weight changed here by\n\
             # hand pauses a running canary. One directive per line.\n{GENERATION} {generation}",
            self.name
        );
        for (upstream, servers) in &self.config.upstreams {
            let _ = writeln!(out, "upstream {upstream} {{");
            let _ = writeln!(out, "    zone canaryd_{upstream} 64k;");
            for (name, spec) in servers {
                let key = (upstream.clone(), address_of(spec).to_string());
                let w = weights.get(&key).copied().unwrap_or(0);
                let weight = if w == 0 {
                    "down".to_string()
                } else {
                    format!("weight={w}")
                };
                let _ = writeln!(out, "    server {spec} {weight}; # {name}");
            }
            let _ = writeln!(out, "}}");
        }
        let _ = write!(
            out,
            "server {{\n    listen {};\n    access_log off;\n    location = {STATUS_PATH} {{\n        \
             default_type text/plain;\n        return 200 \"{generation}\\n\";\n    }}\n}}\n",
            self.config.status_listen
        );
        out
    }

    /// Runs a command with the time limit; Err carries its output.
    async fn run(&self, argv: &[String]) -> Result<(), RouterError> {
        let shown = argv.join(" ");
        let mut command = tokio::process::Command::new(&argv[0]);
        command.args(&argv[1..]).kill_on_drop(true);
        let output = tokio::time::timeout(self.config.timeout.0, command.output())
            .await
            .map_err(|_| RouterError::Timeout {
                router: self.name.clone(),
                operation: format!("`{shown}`"),
            })?
            .map_err(|e| RouterError::Unreachable {
                router: self.name.clone(),
                address: format!("`{shown}`"),
                reason: e.to_string(),
            })?;
        if output.status.success() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&output.stderr).trim().to_string();
        Err(RouterError::Rejected {
            router: self.name.clone(),
            command: shown,
            reply: format!("{}: {text}", output.status),
        })
    }

    fn nginx_argv(&self, tail: &[&str]) -> Vec<String> {
        let mut argv = vec![self.config.binary.clone()];
        if let Some(p) = &self.config.prefix {
            argv.extend(["-p".to_string(), p.display().to_string()]);
        }
        argv.extend([
            "-c".to_string(),
            self.config.nginx_config.display().to_string(),
        ]);
        argv.extend(tail.iter().map(|s| s.to_string()));
        argv
    }

    fn check_argv(&self) -> Vec<String> {
        self.config.check_command.clone().unwrap_or_else(|| {
            let mut argv = self.nginx_argv(&[]);
            argv.splice(1..1, ["-t".to_string(), "-q".to_string()]);
            argv
        })
    }

    fn reload_argv(&self) -> Vec<String> {
        self.config
            .reload_command
            .clone()
            .unwrap_or_else(|| self.nginx_argv(&["-s", "reload"]))
    }

    /// Polls the status server until it answers `generation`.
    async fn wait_live(&self, generation: &str) -> Result<(), RouterError> {
        let live = poll_until(self.config.timeout.0, Duration::from_millis(20), || async {
            self.live_generation().await.is_ok_and(|g| g == generation)
        })
        .await;
        if live {
            return Ok(());
        }
        Err(RouterError::Timeout {
            router: self.name.clone(),
            operation: format!(
                "waiting for nginx to run generation {generation} (status {}); nginx's error log says why it did not load it",
                self.config.status_listen
            ),
        })
    }

    /// Sets `changes` (server name → weight) in the target's upstream; everything else keeps
    /// the weights the file has. Idempotent: no write and no reload when nothing changes.
    async fn apply(
        &self,
        target: &Target,
        changes: &BTreeMap<String, u32>,
    ) -> Result<(), RouterError> {
        let _guard = self.lock.lock().await;
        let configured = self.upstream(target)?;
        let (old_text, file) = self.read_file().await?;
        self.servers_in_file(target, &file)?;
        self.check_nothing_dropped(&file)?;
        // Nothing is written while nginx cannot be asked what it runs.
        let in_sync = self.runs_file(&file).await?.is_ok();
        let mut weights = BTreeMap::new();
        for (upstream, lines) in &file.upstreams {
            for l in lines {
                weights.insert(
                    (upstream.clone(), l.address.clone()),
                    if l.down { 0 } else { l.weight },
                );
            }
        }
        let before = weights.clone();
        for (name, w) in changes {
            weights.insert(
                (
                    target.backend.clone(),
                    address_of(&configured[name]).to_string(),
                ),
                *w,
            );
        }
        if weights == before && file.generation.is_some() && in_sync {
            return Ok(());
        }
        let generation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos().to_string())
            .unwrap_or_default();
        let text = self.render(&weights, &generation);
        // A check or reload that fails puts the old file back before anything else reloads.
        let go_live = async {
            self.run(&self.check_argv()).await?;
            self.run(&self.reload_argv()).await?;
            self.wait_live(&generation).await
        };
        self.managed
            .replace_until_live(&old_text, &text, go_live)
            .await
    }
}

#[async_trait]
impl TrafficRouter for NginxRouter {
    fn name(&self) -> &str {
        &self.name
    }

    fn realized(&self, _target: &Target, canary_percent: f64) -> f64 {
        weights::resolved_percent(canary_percent)
    }

    async fn check(&self) -> Result<String, RouterError> {
        let _guard = self.lock.lock().await;
        let (_, file) = self.read_file().await?;
        self.run(&self.check_argv()).await?;
        match &file.generation {
            None => Ok(format!(
                "`{}` passed; {} has not been written by canaryd yet",
                self.check_argv().join(" "),
                self.file()
            )),
            Some(generation) => {
                let live = self.live_generation().await?;
                let state = if &live == generation {
                    "its include file's".to_string()
                } else {
                    format!("{live}, not the include file's {generation}")
                };
                Ok(format!(
                    "nginx (status {}) runs generation {state} ({})",
                    self.config.status_listen,
                    self.file()
                ))
            }
        }
    }

    async fn reconcile(&self, target: &Target) -> Result<(), RouterError> {
        self.get_weights(target).await?;
        let (_, file) = self.read_file().await?;
        self.check_nothing_dropped(&file)
    }

    async fn set_weights(&self, target: &Target, canary_percent: f64) -> Result<(), RouterError> {
        self.apply(target, &weights::for_target(target, canary_percent))
            .await
    }

    async fn set_server_weights(
        &self,
        target: &Target,
        weights: &BTreeMap<String, u32>,
    ) -> Result<(), RouterError> {
        weights::check_names(&self.name, target, weights)?;
        self.apply(target, weights).await
    }

    async fn get_weights(&self, target: &Target) -> Result<LiveWeights, RouterError> {
        let _guard = self.lock.lock().await;
        self.upstream(target)?;
        let (_, file) = self.read_file().await?;
        let servers = self.servers_in_file(target, &file)?;
        self.runs_file(&file)
            .await?
            .map_err(|reply| RouterError::Protocol {
                router: self.name.clone(),
                command: format!("GET http://{}{STATUS_PATH}", self.config.status_listen),
                reply,
            })?;
        Ok(weights::live(target, servers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NginxConfig {
        toml_config(
            r#"
kind = "nginx"
upstreams_file = "/tmp/up.conf"
status_listen = "127.0.0.1:8181"
[upstreams.be_checkout]
checkout-v1 = "127.0.0.1:8081"
checkout-v2 = "127.0.0.1:8082 max_fails=3"
"#,
        )
    }

    fn toml_config(text: &str) -> NginxConfig {
        let c: super::super::RouterConfig = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap();
        match c {
            super::super::RouterConfig::Nginx(n) => n,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn renders_what_it_parses_and_zero_is_down() {
        let router = NginxRouter::new("web", config());
        let weights = BTreeMap::from([
            (("be_checkout".into(), "127.0.0.1:8081".into()), 90),
            (("be_checkout".into(), "127.0.0.1:8082".into()), 0),
        ]);
        let text = router.render(&weights, "42");
        assert!(
            text.contains("server 127.0.0.1:8081 weight=90; # checkout-v1"),
            "{text}"
        );
        assert!(
            text.contains("server 127.0.0.1:8082 max_fails=3 down; # checkout-v2"),
            "{text}"
        );
        assert!(
            text.contains("listen 127.0.0.1:8181;") && text.contains("return 200 \"42\\n\";"),
            "{text}"
        );
        let parsed = parse(&text);
        assert_eq!(parsed.generation.as_deref(), Some("42"));
        assert_eq!(
            parsed.upstreams["be_checkout"],
            vec![
                FileServer {
                    address: "127.0.0.1:8081".into(),
                    weight: 90,
                    down: false
                },
                FileServer {
                    address: "127.0.0.1:8082".into(),
                    weight: 1,
                    down: true
                },
            ]
        );
    }

    #[test]
    fn reads_a_hand_written_file() {
        let parsed = parse(
            "upstream be {\n  server 192.0.2.1:80; # default weight\n  server 192.0.2.2:80 weight=5 max_fails=2;\n}\nserver {\n  listen 80;\n}\n",
        );
        assert_eq!(parsed.generation, None);
        let weights: Vec<u32> = parsed.upstreams["be"].iter().map(|s| s.weight).collect();
        assert_eq!(weights, vec![1, 5]);
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let text = "kind = \"nginx\"\nupstreams_file = \"/x\"\nstatus_listen = \"127.0.0.1:1\"\nupstreams = {}\nreload = \"now\"\n";
        let e = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize::<super::super::RouterConfig>()
            .unwrap_err();
        assert!(e.to_string().contains("reload"), "{e}");
    }

    #[test]
    fn checks_values() {
        let mut c = config();
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        c.status_listen = "203.0.113.7:8181".into();
        c.upstreams
            .get_mut("be_checkout")
            .unwrap()
            .insert("x".into(), "192.0.2.3:80 weight=5".into());
        c.upstreams.insert("bad;name".into(), BTreeMap::new());
        let fields: Vec<String> = c.problems().into_iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            vec![
                "status_listen",
                "upstreams.bad;name",
                "upstreams.bad;name",
                "upstreams.be_checkout.x"
            ]
        );
    }
}
