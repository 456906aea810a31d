//! Integration-test harness: real `canaryd-testapp`, HAProxy and Prometheus processes on free
//! loopback ports.
//!
//! Rules every helper follows:
//! * everything binds 127.0.0.1 only;
//! * every child is owned by a [`ChildProc`] and is killed (SIGKILL) and reaped on drop, so a
//!   panicking test never leaves strays;
//! * every start polls for readiness against a deadline (no fixed sleeps) and, on failure,
//!   panics with a clear message plus the child's captured stderr/log;
//! * the harness does not depend on the `canaryd` library.
//!
//! `start` functions are synchronous (they use blocking std I/O to probe readiness) so they can
//! be called from sync tests and, briefly, from `#[tokio::test]` bodies.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// How long any process gets to become ready.
pub const START_DEADLINE: Duration = Duration::from_secs(20);
const POLL_EVERY: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------------------------

/// A currently free loopback port (bind 127.0.0.1:0, read the port, release it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Path of the `canaryd-testapp` binary cargo built for this test run.
pub fn testapp_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_canaryd-testapp"))
}

/// A reqwest client for loopback use (no environment proxy, 10 s timeout).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest client")
}

/// Minimal blocking HTTP/1.0 request over loopback. Returns `(status, body)`, or `None` on any
/// connection / protocol error (handy for readiness probes). `addr` is `host:port`.
pub fn http_blocking(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(b) = body {
        let _ = write!(
            req,
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        );
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    s.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// `GET` with [`http_blocking`].
pub fn http_get_blocking(addr: &str, path: &str) -> Option<(u16, String)> {
    http_blocking(addr, "GET", path, None)
}

/// Poll `f` every 100 ms until it returns `Some`, panicking with `what` after `deadline`.
pub async fn poll_until<F, Fut, T>(deadline: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Child process ownership
// ---------------------------------------------------------------------------------------------

/// A child process whose stdout+stderr go to a log file; SIGKILLed and reaped on drop.
pub struct ChildProc {
    what: String,
    child: Option<Child>,
    log_path: PathBuf,
}

impl ChildProc {
    /// Spawn `cmd` with stdin closed and stdout/stderr appended to `log_path`.
    pub fn spawn(what: &str, mut cmd: Command, log_path: &Path) -> ChildProc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .unwrap_or_else(|e| panic!("{what}: cannot open log {}: {e}", log_path.display()));
        let log2 = log.try_clone().expect("clone log fd");
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: cannot spawn {cmd:?}: {e}"));
        ChildProc {
            what: what.to_string(),
            child: Some(child),
            log_path: log_path.to_path_buf(),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Still running? (Reaps it if it exited.)
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The exit code once the process has exited (reaping it), None while it runs.
    pub fn exit_code(&mut self) -> Option<i32> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(status)) => Some(status.code().unwrap_or(-1)),
            _ => None,
        }
    }

    /// Captured stdout+stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGKILL and reap. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Poll `ready` until it returns true. Err(message) if the process exits first or the
    /// deadline passes.
    pub fn wait_ready(
        &mut self,
        deadline: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), String> {
        let end = Instant::now() + deadline;
        loop {
            if ready() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(format!("{} exited early ({status})", self.what));
            }
            if Instant::now() >= end {
                return Err(format!("{} not ready after {deadline:?}", self.what));
            }
            std::thread::sleep(POLL_EVERY);
        }
    }

    /// Panic with `msg` and the captured log, killing the process first.
    pub fn fail(&mut self, msg: &str) -> ! {
        self.kill();
        panic!(
            "{msg}\n----- {} log ({}) -----\n{}\n----- end of log -----",
            self.what,
            self.log_path.display(),
            self.log()
        );
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn looks_like_bind_failure(log: &str) -> bool {
    let l = log.to_ascii_lowercase();
    l.contains("address already in use") || l.contains("cannot bind") || l.contains("bind: ")
}

// ---------------------------------------------------------------------------------------------
// TestApp
// ---------------------------------------------------------------------------------------------

/// A `canaryd-testapp serve` process.
pub struct TestApp {
    pub name: String,
    pub port: u16,
    /// `127.0.0.1:port`
    pub addr: String,
    /// `http://127.0.0.1:port`
    pub url: String,
    proc: ChildProc,
    _dir: TempDir,
}

impl TestApp {
    /// Start `canaryd-testapp serve --name NAME ARGS...` on a free port and wait for `/health`.
    /// The app binds `127.0.0.1:0` and reports its port on its `listening on` line, so there is
    /// no port race.
    pub fn start(name: &str, args: &[&str]) -> TestApp {
        let dir = tempfile::Builder::new()
            .prefix("testapp-")
            .tempdir()
            .expect("tempdir");
        let log_path = dir.path().join("stderr.log");
        let mut cmd = Command::new(testapp_bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--name", name])
            .args(args);
        let mut proc = ChildProc::spawn(&format!("testapp {name}"), cmd, &log_path);

        let mut port = None;
        let res = proc.wait_ready(START_DEADLINE, || {
            if port.is_none() {
                port =
                    parse_listening_port(&std::fs::read_to_string(&log_path).unwrap_or_default());
            }
            match port {
                Some(p) => matches!(
                    http_get_blocking(&format!("127.0.0.1:{p}"), "/health"),
                    Some((200, _))
                ),
                None => false,
            }
        });
        if let Err(e) = res {
            proc.fail(&format!(
                "testapp {name} did not come up (args {args:?}): {e}"
            ));
        }
        let port = port.unwrap();
        let addr = format!("127.0.0.1:{port}");
        TestApp {
            name: name.to_string(),
            port,
            url: format!("http://{addr}"),
            addr,
            proc,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Captured stderr.
    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// Kill the app (e.g. to simulate a dead backend). Drop does this too.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// `PUT /admin/fault` with a partial JSON object; asserts 200 and returns the new settings.
    pub async fn set_fault(&self, json: Value) -> Value {
        let resp = http_client()
            .put(format!("{}/admin/fault", self.url))
            .json(&json)
            .send()
            .await
            .unwrap_or_else(|e| panic!("testapp {}: PUT /admin/fault failed: {e}", self.name));
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(
            status.as_u16(),
            200,
            "testapp {}: PUT /admin/fault {json} -> {status}: {text}",
            self.name
        );
        serde_json::from_str(&text).expect("fault settings JSON")
    }

    /// Blocking variant of [`TestApp::set_fault`].
    pub fn set_fault_blocking(&self, json: Value) -> Value {
        let body = json.to_string();
        let (status, text) = http_blocking(&self.addr, "PUT", "/admin/fault", Some(&body))
            .unwrap_or_else(|| panic!("testapp {}: PUT /admin/fault failed", self.name));
        assert_eq!(
            status, 200,
            "testapp {}: PUT /admin/fault {json} -> {status}: {text}",
            self.name
        );
        serde_json::from_str(&text).expect("fault settings JSON")
    }

    /// `GET /admin/fault`.
    pub async fn fault(&self) -> Value {
        http_client()
            .get(format!("{}/admin/fault", self.url))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .expect("GET /admin/fault")
            .json()
            .await
            .expect("fault JSON")
    }
}

fn parse_listening_port(log: &str) -> Option<u16> {
    let rest = log.split("listening on ").nth(1)?;
    let addr = rest.split_whitespace().next()?;
    addr.rsplit(':').next()?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------------

/// A `canaryd-testapp load` process (open-loop load generator). Killed on drop.
pub struct Load {
    proc: ChildProc,
    _dir: TempDir,
}

impl Load {
    /// Unbounded load at `rps` requests/s against `url`.
    pub fn start(url: &str, rps: f64) -> Load {
        Load::start_with(url, rps, &[])
    }

    /// Same with extra CLI args (e.g. `["--duration-secs", "5", "--concurrency", "8"]`).
    pub fn start_with(url: &str, rps: f64, extra: &[&str]) -> Load {
        let dir = tempfile::Builder::new()
            .prefix("load-")
            .tempdir()
            .expect("tempdir");
        let log_path = dir.path().join("stderr.log");
        let mut cmd = Command::new(testapp_bin());
        cmd.args(["load", "--url", url, "--rps", &rps.to_string()])
            .args(extra);
        let mut proc = ChildProc::spawn("load generator", cmd, &log_path);
        // Ready once it has printed its start line (client built, schedule started).
        let res = proc.wait_ready(START_DEADLINE, || {
            std::fs::read_to_string(&log_path)
                .map(|l| l.contains("canaryd-testapp load:"))
                .unwrap_or(false)
        });
        if let Err(e) = res {
            proc.fail(&format!("load generator for {url} did not start: {e}"));
        }
        Load { proc, _dir: dir }
    }

    /// Captured stderr (per-5s summaries).
    pub fn log(&self) -> String {
        self.proc.log()
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// Kill now and return the log.
    pub fn stop(&mut self) -> String {
        self.proc.kill();
        self.proc.log()
    }
}

// ---------------------------------------------------------------------------------------------
// HAProxy
// ---------------------------------------------------------------------------------------------

/// An `haproxy -db` child with an admin Runtime API on a unix socket and on TCP, one HTTP
/// frontend (`fe_app`) → one `balance roundrobin` backend, and a Prometheus-exporter frontend
/// (`/metrics`, also `/stats`) on `stats_port`.
pub struct Haproxy {
    pub backend: String,
    pub frontend_port: u16,
    /// `127.0.0.1:frontend_port`
    pub frontend_addr: String,
    pub runtime_port: u16,
    /// `127.0.0.1:runtime_port` (TCP Runtime API, level admin)
    pub runtime_addr: String,
    /// Unix Runtime API socket (level admin).
    pub socket_path: PathBuf,
    pub stats_port: u16,
    /// `127.0.0.1:stats_port` (`/metrics` = HAProxy's Prometheus exporter)
    pub stats_addr: String,
    pub config_path: PathBuf,
    // Field order matters: the process is killed before its directory is removed.
    proc: Option<ChildProc>,
    dir: TempDir,
}

impl Haproxy {
    /// Write the config and start HAProxy; waits until `show info` answers on the TCP Runtime
    /// API. Servers are `(name, addr, initial weight 0..=256)`, health-checked with
    /// `GET /health` every 500 ms. Use [`Haproxy::wait_servers_up`] before asserting traffic.
    pub fn start(backend: &str, servers: &[(&str, &str, u32)]) -> Haproxy {
        let mut dir = tempfile::Builder::new()
            .prefix("haproxy-")
            .tempdir()
            .expect("tempdir");
        let socket_path = dir.path().join("haproxy.sock");
        let config_path = dir.path().join("haproxy.cfg");
        let mut last_err = String::new();
        // Ports come from free_port(); retry with new ones if one got taken in between.
        for _attempt in 0..3 {
            let (fp, rp, sp) = (free_port(), free_port(), free_port());
            if fp == rp || rp == sp || fp == sp {
                continue;
            }
            let cfg = haproxy_config(backend, servers, &socket_path, fp, rp, sp);
            std::fs::write(&config_path, cfg).expect("write haproxy.cfg");
            let mut h = Haproxy {
                backend: backend.to_string(),
                frontend_port: fp,
                frontend_addr: format!("127.0.0.1:{fp}"),
                runtime_port: rp,
                runtime_addr: format!("127.0.0.1:{rp}"),
                socket_path: socket_path.clone(),
                stats_port: sp,
                stats_addr: format!("127.0.0.1:{sp}"),
                config_path: config_path.clone(),
                dir,
                proc: None,
            };
            match h.spawn_and_wait() {
                Ok(()) => return h,
                Err((msg, log)) if looks_like_bind_failure(&log) => {
                    last_err = format!("{msg}\n{log}");
                    dir = h.take_dir();
                    continue;
                }
                Err((msg, log)) => panic!(
                    "{msg}\n----- haproxy config -----\n{}\n----- haproxy log -----\n{log}",
                    std::fs::read_to_string(&h.config_path).unwrap_or_default()
                ),
            }
        }
        panic!("haproxy did not start after 3 attempts (port clashes?): {last_err}");
    }

    fn take_dir(mut self) -> TempDir {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
        // Move the TempDir out; `Haproxy` has no Drop impl, so this is a plain move.
        self.dir
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("haproxy.log")
    }

    /// Spawn and wait for the Runtime API. On failure returns (message, log) with the child killed.
    fn spawn_and_wait(&mut self) -> Result<(), (String, String)> {
        let mut cmd = Command::new("haproxy");
        cmd.arg("-f").arg(&self.config_path).arg("-db");
        let mut proc = ChildProc::spawn("haproxy", cmd, &self.log_path());
        let addr = self.runtime_addr.clone();
        let res = proc.wait_ready(START_DEADLINE, || {
            runtime_cmd(&addr, "show info")
                .map(|r| r.contains("Pid:"))
                .unwrap_or(false)
        });
        match res {
            Ok(()) => {
                self.proc = Some(proc);
                Ok(())
            }
            Err(e) => {
                proc.kill();
                Err((format!("haproxy did not come up: {e}"), proc.log()))
            }
        }
    }

    /// Send one Runtime API command over TCP (one command per connection) and return the reply.
    /// Panics if the API is unreachable.
    pub fn runtime(&self, cmd: &str) -> String {
        self.try_runtime(cmd)
            .unwrap_or_else(|e| panic!("haproxy runtime API {} `{cmd}`: {e}", self.runtime_addr))
    }

    /// Like [`Haproxy::runtime`] but returns the I/O error (e.g. while HAProxy is stopped).
    pub fn try_runtime(&self, cmd: &str) -> std::io::Result<String> {
        runtime_cmd(&self.runtime_addr, cmd)
    }

    /// `set server <backend>/<server> weight <w>`; asserts success (empty reply).
    pub fn set_weight(&self, server: &str, weight: u32) {
        let r = self.runtime(&format!(
            "set server {}/{server} weight {weight}",
            self.backend
        ));
        assert!(r.trim().is_empty(), "set weight {server} {weight}: {r}");
    }

    /// Current user weight from `get weight <backend>/<server>` (`"N (initial M)"`).
    pub fn weight(&self, server: &str) -> u32 {
        let r = self.runtime(&format!("get weight {}/{server}", self.backend));
        r.split_whitespace()
            .next()
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("unexpected `get weight` reply: {r:?}"))
    }

    /// A field (by CSV header name, e.g. `status`, `weight`, `stot`, `hrsp_5xx`) of `show stat`
    /// for one server of the backend.
    pub fn stat_field(&self, server: &str, field: &str) -> Option<String> {
        let csv = self
            .try_runtime(&format!("show stat {} 4 -1", self.backend))
            .ok()?;
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
        let col = header.iter().position(|h| *h == field)?;
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|cols| {
                cols.first() == Some(&self.backend.as_str()) && cols.get(1) == Some(&server)
            })
            .and_then(|cols| cols.get(col).map(|s| s.to_string()))
    }

    /// Poll (blocking) until every named server is `UP` *and* has passed a health check
    /// (`check_status` `L7OK`). HAProxy 2.6 starts checked servers as `UP` with check status
    /// `INI` before any check ran, so `status == UP` alone proves nothing.
    pub fn wait_servers_up(&self, servers: &[&str], deadline: Duration) {
        let end = Instant::now() + deadline;
        loop {
            let statuses: Vec<_> = servers
                .iter()
                .map(|s| {
                    (
                        s,
                        self.stat_field(s, "status"),
                        self.stat_field(s, "check_status"),
                    )
                })
                .collect();
            if statuses
                .iter()
                .all(|(_, st, chk)| st.as_deref() == Some("UP") && chk.as_deref() == Some("L7OK"))
            {
                return;
            }
            if Instant::now() >= end {
                panic!(
                    "haproxy servers not UP/L7OK after {deadline:?}: {statuses:?}\n----- haproxy log -----\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:frontend_port`
    pub fn frontend_url(&self) -> String {
        format!("http://{}", self.frontend_addr)
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(|p| p.pid())
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.is_running())
    }

    /// Captured stderr (alerts/warnings; HAProxy logs to stderr with `-db`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kill HAProxy (SIGKILL + wait). Runtime API, frontend and exporter become unreachable.
    /// Runtime weight changes are lost (a restart comes back with the config's weights).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Start again with the same config and ports (stops first if running).
    pub fn restart(&mut self) {
        self.stop();
        if let Err((msg, log)) = self.spawn_and_wait() {
            panic!("haproxy restart failed: {msg}\n----- haproxy log -----\n{log}");
        }
    }
}

fn runtime_cmd(addr: &str, cmd: &str) -> std::io::Result<String> {
    let sock: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("{cmd}\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn haproxy_config(
    backend: &str,
    servers: &[(&str, &str, u32)],
    socket: &Path,
    frontend_port: u16,
    runtime_port: u16,
    stats_port: u16,
) -> String {
    let mut c = String::new();
    let _ = writeln!(c, "global");
    let _ = writeln!(
        c,
        "    stats socket {} mode 600 level admin",
        socket.display()
    );
    let _ = writeln!(
        c,
        "    stats socket ipv4@127.0.0.1:{runtime_port} level admin"
    );
    let _ = writeln!(c, "    stats timeout 30s");
    let _ = writeln!(c);
    let _ = writeln!(c, "defaults");
    let _ = writeln!(c, "    mode http");
    let _ = writeln!(c, "    timeout connect 2s");
    let _ = writeln!(c, "    timeout client 10s");
    let _ = writeln!(c, "    timeout server 10s");
    let _ = writeln!(c);
    let _ = writeln!(c, "frontend fe_app");
    let _ = writeln!(c, "    bind 127.0.0.1:{frontend_port}");
    let _ = writeln!(c, "    default_backend {backend}");
    let _ = writeln!(c);
    let _ = writeln!(c, "backend {backend}");
    let _ = writeln!(c, "    balance roundrobin");
    let _ = writeln!(c, "    option httpchk GET /health");
    for (name, addr, weight) in servers {
        let _ = writeln!(
            c,
            "    server {name} {addr} weight {weight} check inter 500ms"
        );
    }
    let _ = writeln!(c);
    let _ = writeln!(c, "frontend fe_stats");
    let _ = writeln!(c, "    bind 127.0.0.1:{stats_port}");
    let _ = writeln!(
        c,
        "    http-request use-service prometheus-exporter if {{ path /metrics }}"
    );
    let _ = writeln!(c, "    stats enable");
    let _ = writeln!(c, "    stats uri /stats");
    c
}

// ---------------------------------------------------------------------------------------------
// Prometheus
// ---------------------------------------------------------------------------------------------

/// One scrape target: all targets sharing a `job` end up in one scrape config, each target in
/// its own `static_config` carrying its `labels`.
#[derive(Debug, Clone)]
pub struct ScrapeTarget {
    pub job: String,
    /// `host:port`
    pub addr: String,
    pub labels: Vec<(String, String)>,
}

impl ScrapeTarget {
    pub fn new(job: &str, addr: &str, labels: &[(&str, &str)]) -> ScrapeTarget {
        ScrapeTarget {
            job: job.to_string(),
            addr: addr.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }
}

/// A `prometheus` child with its own config and TSDB in a temp dir.
pub struct Prometheus {
    pub port: u16,
    /// `127.0.0.1:port`
    pub addr: String,
    /// `http://127.0.0.1:port`
    pub url: String,
    pub config_path: PathBuf,
    // Field order matters: the process is killed before its directory is removed.
    proc: Option<ChildProc>,
    dir: TempDir,
}

impl Prometheus {
    /// Write `prometheus.yml` (global `scrape_interval` = `scrape_timeout` =
    /// `evaluation_interval` = `scrape_interval`) and start Prometheus with `--web.enable-lifecycle`;
    /// waits for `/-/ready`.
    pub fn start(scrape_interval: &str, targets: &[ScrapeTarget]) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("prometheus-")
            .tempdir()
            .expect("tempdir");
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, prometheus_config(scrape_interval, targets))
            .expect("write prometheus.yml");
        let mut dir = Some(dir);
        let mut last_err = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            let mut p = Prometheus {
                port,
                addr: format!("127.0.0.1:{port}"),
                url: format!("http://127.0.0.1:{port}"),
                config_path: config_path.clone(),
                dir: dir.take().unwrap(),
                proc: None,
            };
            match p.spawn_and_wait() {
                Ok(()) => return p,
                Err((msg, log)) if looks_like_bind_failure(&log) => {
                    last_err = format!("{msg}\n{log}");
                    p.stop();
                    dir = Some(p.dir);
                }
                Err((msg, log)) => panic!(
                    "{msg}\n----- prometheus.yml -----\n{}\n----- prometheus log -----\n{log}",
                    std::fs::read_to_string(&config_path).unwrap_or_default()
                ),
            }
        }
        panic!("prometheus did not start after 3 attempts (port clashes?): {last_err}");
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("prometheus.log")
    }

    /// The TSDB directory (`<dir>/data`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn_and_wait(&mut self) -> Result<(), (String, String)> {
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", self.config_path.display()))
            .arg(format!("--storage.tsdb.path={}", self.data_dir().display()))
            .arg(format!("--web.listen-address={}", self.addr))
            .arg("--web.enable-lifecycle");
        let mut proc = ChildProc::spawn("prometheus", cmd, &self.log_path());
        let addr = self.addr.clone();
        let res = proc.wait_ready(START_DEADLINE, || {
            matches!(http_get_blocking(&addr, "/-/ready"), Some((200, _)))
        });
        match res {
            Ok(()) => {
                self.proc = Some(proc);
                Ok(())
            }
            Err(e) => {
                proc.kill();
                Err((format!("prometheus did not become ready: {e}"), proc.log()))
            }
        }
    }

    /// Kill Prometheus (SIGKILL + wait); the data dir is kept.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Start again on the same port with the same data dir (stops first if running).
    pub fn start_again(&mut self) {
        self.stop();
        if let Err((msg, log)) = self.spawn_and_wait() {
            panic!("prometheus restart failed: {msg}\n----- prometheus log -----\n{log}");
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.is_running())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Instant query; returns the `data.result` array (vector) or an error string.
    pub async fn query(&self, query: &str) -> Result<Vec<Value>, String> {
        let resp = http_client()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", query)])
            .send()
            .await
            .map_err(|e| format!("query {query:?}: {e}"))?;
        let status = resp.status();
        let body: Value = resp
            .json()
            .await
            .map_err(|e| format!("query {query:?}: bad JSON: {e}"))?;
        if !status.is_success() || body["status"] != "success" {
            return Err(format!("query {query:?}: {status}: {body}"));
        }
        match &body["data"]["result"] {
            Value::Array(a) => Ok(a.clone()),
            other => Err(format!("query {query:?}: unexpected result {other}")),
        }
    }

    /// Poll the instant query until its result vector is non-empty; returns it.
    pub async fn wait_for_series(&self, query: &str, deadline: Duration) -> Vec<Value> {
        let what = format!("Prometheus series for `{query}` at {}", self.url);
        poll_until(deadline, &what, || async {
            self.query(query).await.ok().filter(|r| !r.is_empty())
        })
        .await
    }
}

/// The float value of one instant-vector element (`value: [ts, "v"]`).
pub fn sample_value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no value in sample {sample}"))
}

/// A label of one instant-vector element.
pub fn sample_label<'a>(sample: &'a Value, label: &str) -> Option<&'a str> {
    sample["metric"][label].as_str()
}

/// `{label value → sample value}` for a vector result grouped by `label`.
pub fn by_label(result: &[Value], label: &str) -> std::collections::BTreeMap<String, f64> {
    result
        .iter()
        .filter_map(|s| Some((sample_label(s, label)?.to_string(), sample_value(s))))
        .collect()
}

fn prometheus_config(scrape_interval: &str, targets: &[ScrapeTarget]) -> String {
    // JSON strings are valid YAML double-quoted scalars, so quote everything with serde_json.
    let q = |s: &str| serde_json::to_string(s).unwrap();
    let mut c = String::new();
    let _ = writeln!(c, "global:");
    let _ = writeln!(c, "  scrape_interval: {scrape_interval}");
    let _ = writeln!(c, "  scrape_timeout: {scrape_interval}");
    let _ = writeln!(c, "  evaluation_interval: {scrape_interval}");
    let _ = writeln!(c, "scrape_configs:");
    let mut jobs: Vec<&str> = Vec::new();
    for t in targets {
        if !jobs.contains(&t.job.as_str()) {
            jobs.push(&t.job);
        }
    }
    for job in jobs {
        let _ = writeln!(c, "  - job_name: {}", q(job));
        let _ = writeln!(c, "    static_configs:");
        for t in targets.iter().filter(|t| t.job == job) {
            let _ = writeln!(c, "      - targets: [{}]", q(&t.addr));
            if !t.labels.is_empty() {
                let _ = writeln!(c, "        labels:");
                for (k, v) in &t.labels {
                    let _ = writeln!(c, "          {}: {}", q(k), q(v));
                }
            }
        }
    }
    c
}
