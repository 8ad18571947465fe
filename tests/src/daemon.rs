//! The real connectracerd attached to a test cgroup, its event and log
//! lines collected for assertions.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::bus::{PrivateBus, NO_BUS};
use crate::cgroup::TestCgroup;
use crate::config_dir::ConfigDir;
use crate::paths::bin_path;
use crate::pretty;

/// A running connectracerd attached to a test cgroup.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    events: mpsc::Receiver<Value>,
    stderr: mpsc::Receiver<Value>,
    pub seen: Vec<Value>,
    /// Diagnostic lines read so far.
    pub logs: Vec<Value>,
    /// The daemon's control socket, private to this test.
    pub socket: PathBuf,
    pub config: ConfigDir,
    /// bpffs directory of this daemon's pins, private to the test.
    pub pin_dir: PathBuf,
    /// Event lines not read yet: a stdout nobody reads (see `start_stalled`).
    stdout: Option<ChildStdout>,
}

fn json_lines(r: impl Read + Send + 'static, tx: mpsc::Sender<Value>, echo: bool) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if echo {
                eprintln!("[daemon] {line}");
            }
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if tx.send(v).is_err() {
                    return;
                }
            }
        }
    });
}

/// A bpffs directory for a daemon's pins: bpffs refuses '.' in names, and a
/// test cgroup may be a systemd-style `NAME.slice`.
fn pin_dir(name: &str) -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/bpf/connectracer-test-{}",
        name.replace('.', "_")
    ))
}

/// connectracerd on `cg` with its own configuration, socket, pins and state
/// directory: the arguments every test daemon runs with.
pub fn daemon_command(cg: &TestCgroup, cfg: &ConfigDir, socket: &Path, pin_dir: &Path) -> Command {
    let mut cmd = Command::new(bin_path("connectracerd"));
    cmd.arg("--cgroup")
        .arg(&cg.path)
        .arg("--control-socket")
        .arg(socket)
        .arg("--pin-dir")
        .arg(pin_dir)
        .arg("--state-dir")
        .arg(cfg.dir().join("state"))
        .arg("--config")
        .arg(cfg.main());
    cmd
}

impl Daemon {
    /// Starts the daemon on `cg` with `config` (TOML) and waits until it
    /// says it is tracing.
    pub fn start(cg: &TestCgroup, config: &str) -> anyhow::Result<Self> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let name = format!("{}-d{}", &cg.rel[1..], SEQ.fetch_add(1, Ordering::Relaxed));
        let cfg = ConfigDir::new(&name, config);
        let socket = std::env::temp_dir().join(format!("connectracer-test-{name}.sock"));
        let pin_dir = pin_dir(&name);
        Self::start_with(cg, cfg, socket, pin_dir)
    }

    /// Like `start`, but nothing reads the daemon's stdout until
    /// `read_stdout`: a pipe that fills up and stalls its writer.
    pub fn start_stalled(cg: &TestCgroup, config: &str) -> anyhow::Result<Self> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let name = format!("{}-s{}", &cg.rel[1..], SEQ.fetch_add(1, Ordering::Relaxed));
        let cfg = ConfigDir::new(&name, config);
        let socket = std::env::temp_dir().join(format!("connectracer-test-{name}.sock"));
        let pin_dir = pin_dir(&name);
        Self::spawn(cg, cfg, socket, pin_dir, NO_BUS, false)
    }

    /// Starts reading the event lines of a daemon from `start_stalled`.
    pub fn read_stdout(&mut self) {
        if let Some(out) = self.stdout.take() {
            let (etx, events) = mpsc::channel();
            json_lines(out, etx, false);
            self.events = events;
        }
    }

    /// `tracectl --json stats`, parsed: the `stats` object.
    pub fn stats(&self) -> Value {
        let (code, out, err) = self.tracectl(&["--json", "stats"]);
        assert_eq!(code, 0, "tracectl stats: {err}");
        let v: Value = serde_json::from_str(&out).expect("stats JSON");
        v["stats"].clone()
    }

    /// The counters of the sink named `name` in `tracectl stats`.
    /// Waits (30 s at most) until `done` holds for the sink's counters;
    /// returns them.
    pub fn wait_sink(&self, name: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.sink_stats(name);
            if done(&s) {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sink {name} never got there: {s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn sink_stats(&self, name: &str) -> Value {
        let stats = self.stats();
        stats["sinks"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no sink `{name}` in {stats}"))
    }

    /// Starts a daemon on an existing configuration directory and pin
    /// directory: what a restart of the same service does.
    pub fn start_with(
        cg: &TestCgroup,
        cfg: ConfigDir,
        socket: PathBuf,
        pin_dir: PathBuf,
    ) -> anyhow::Result<Self> {
        Self::start_on(cg, cfg, socket, pin_dir, NO_BUS)
    }

    /// Starts the daemon on `cg` with `config`, connected to `bus`, and
    /// waits until it serves its D-Bus name there.
    pub fn start_on_bus(cg: &TestCgroup, config: &str, bus: &PrivateBus) -> anyhow::Result<Self> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let name = format!("{}-b{}", &cg.rel[1..], SEQ.fetch_add(1, Ordering::Relaxed));
        let cfg = ConfigDir::new(&name, config);
        let socket = std::env::temp_dir().join(format!("connectracer-test-{name}.sock"));
        let pin_dir = pin_dir(&name);
        let mut d = Self::start_on(cg, cfg, socket, pin_dir, &bus.address)?;
        // The bus task may log before the control socket does.
        if d.logged("D-Bus: serving").is_none() {
            d.wait_log("D-Bus: serving", Duration::from_secs(20))?;
        }
        Ok(d)
    }

    /// `bus`: the system bus address the daemon gets.
    fn start_on(
        cg: &TestCgroup,
        cfg: ConfigDir,
        socket: PathBuf,
        pin_dir: PathBuf,
        bus: &str,
    ) -> anyhow::Result<Self> {
        Self::spawn(cg, cfg, socket, pin_dir, bus, true)
    }

    /// `read_stdout`: collect event lines from the start.
    fn spawn(
        cg: &TestCgroup,
        cfg: ConfigDir,
        socket: PathBuf,
        pin_dir: PathBuf,
        bus: &str,
        read_stdout: bool,
    ) -> anyhow::Result<Self> {
        let mut child = daemon_command(cg, &cfg, &socket, &pin_dir)
            .env("DBUS_SYSTEM_BUS_ADDRESS", bus)
            .args(["--foreground", "--log-format", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning connectracerd")?;
        let (etx, events) = mpsc::channel();
        let (stx, stderr) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let stdout = if read_stdout {
            json_lines(stdout, etx, false);
            None
        } else {
            Some(stdout)
        };
        json_lines(child.stderr.take().expect("stderr"), stx, true);
        let mut d = Self {
            child,
            events,
            stderr,
            seen: Vec::new(),
            logs: Vec::new(),
            socket,
            config: cfg,
            pin_dir,
            stdout,
        };
        d.wait_log("control socket listening", Duration::from_secs(20))?;
        Ok(d)
    }

    /// Waits for the daemon's next diagnostic line whose message starts
    /// with `message`.
    pub fn wait_log(&mut self, message: &str, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(v) => {
                    self.logs.push(v.clone());
                    if v["message"].as_str().is_some_and(|m| m.starts_with(message)) {
                        return Ok(v);
                    }
                }
                Err(_) => {
                    let status = self.child.try_wait()?;
                    bail!("no `{message}` from the daemon within {timeout:?} (exit status: {status:?})");
                }
            }
        }
    }

    /// A diagnostic line already read whose message starts with `message`.
    pub fn logged(&self, message: &str) -> Option<&Value> {
        self.logs
            .iter()
            .find(|v| v["message"].as_str().is_some_and(|m| m.starts_with(message)))
    }

    /// Collects events until `done` holds over all seen so far.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> anyhow::Result<&[Value]> {
        let deadline = Instant::now() + timeout;
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) => self.seen.push(v),
                Err(_) => bail!(
                    "timed out after {timeout:?}; events so far:\n{}",
                    pretty(&self.seen)
                ),
            }
        }
        Ok(&self.seen)
    }

    /// Events of `kind` from `pid` (or any pid).
    pub fn events<'a>(&'a self, kind: &'a str, pid: Option<u64>) -> impl Iterator<Item = &'a Value> + 'a {
        self.seen
            .iter()
            .filter(move |e| e["event"] == kind && pid.is_none_or(|p| e["process"]["pid"] == p))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs tracectl against this daemon: exit code, stdout, stderr.
    pub fn tracectl(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(bin_path("tracectl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("running tracectl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).expect("kill");
    }

    /// SIGTERM, wait, and return the daemon's final counters; every event
    /// the daemon printed is in `seen` afterwards.
    pub fn stop(&mut self) -> anyhow::Result<Value> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::SIGTERM,
        )?;
        let counters = self.wait_log("final counters", Duration::from_secs(20))?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("daemon exited with {status}");
        }
        // The reader thread ends at EOF, closing the channel.
        while let Ok(v) = self.events.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(v);
        }
        Ok(counters)
    }
}

impl Daemon {
    /// SIGKILL, as a crash would: pins stay, tracing goes on in the kernel.
    /// Returns what a restart needs.
    pub fn crash(mut self) -> (ConfigDir, PathBuf, PathBuf) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let pin_dir = std::mem::take(&mut self.pin_dir);
        let socket = self.socket.clone();
        let cfg = std::mem::replace(&mut self.config, ConfigDir::placeholder());
        (cfg, socket, pin_dir)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Pins of a daemon that did not stop cleanly would outlive the test.
        if !self.pin_dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.pin_dir);
        }
    }
}
