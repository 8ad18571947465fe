//! Harness for the integration tests: a test-owned cgroup, the real
//! connectracerd attached to it, clients spawned inside it, and the daemon's
//! JSON event lines collected for assertions.
//!
//! Nothing here attaches to the root cgroup: every daemon gets `--cgroup`
//! pointing at a fresh directory that only the test's clients join, and the
//! directory is removed when the test ends, whether it passed or not.

use std::ffi::CString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

/// Where cargo put the workspace binaries: beside this executable, or one
/// level up when this is a test harness in `deps/`.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let mut dir = exe.parent().expect("executable dir");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target dir");
    }
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

fn cgroup2_mount() -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    text.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let point = pre.split(' ').nth(4)?;
            (post.split(' ').next()? == "cgroup2").then(|| PathBuf::from(point))
        })
        .expect("a cgroup2 mount")
}

/// A cgroup v2 directory owned by one test.
#[derive(Debug)]
pub struct TestCgroup {
    pub path: PathBuf,
    /// The path as the daemon reports it, relative to the cgroup2 mount.
    pub rel: String,
}

impl TestCgroup {
    pub fn new(name: &str) -> Self {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let leaf = format!("connectracer-test-{}-{n}-{name}", std::process::id());
        let path = cgroup2_mount().join(&leaf);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self {
            path,
            rel: format!("/{leaf}"),
        }
    }

    /// A cgroup below this one (drop it before its parent).
    pub fn child(&self, name: &str) -> Self {
        let path = self.path.join(name);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self {
            path,
            rel: format!("{}/{name}", self.rel),
        }
    }

    /// A command whose process joins this cgroup before it execs.
    pub fn command(&self, program: &Path) -> Command {
        self.command_as(program, None)
    }

    /// Same, switching to `uid` (and the same gid) after joining the cgroup:
    /// `Command::uid` would drop root before the cgroup write.
    pub fn command_as(&self, program: &Path, uid: Option<u32>) -> Command {
        let mut cmd = Command::new(program);
        let procs = CString::new(
            self.path
                .join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .expect("path");
        // SAFETY: only async-signal-safe calls (open, write, close) on data
        // prepared before fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                libc::close(fd);
                if !ok {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(id) = uid {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(id) != 0
                        || libc::setuid(id) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        cmd
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Kill stragglers, then remove; rmdir fails while members remain.
        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
        for _ in 0..100 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("warning: could not remove {}", self.path.display());
    }
}

/// A client in the cgroup that holds a connection open, as `uid`; returns
/// it with its pid and local address once connected.
pub fn hold(cg: &TestCgroup, dst: &str, uid: Option<u32>) -> (Child, u64, String) {
    let mut child = cg
        .command_as(&bin_path("ct-probe"), uid)
        .args(["hold", dst, "30"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawning ct-probe hold");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().expect("stdout")),
        &mut line,
    )
    .expect("ct-probe hold's line");
    let v: Value = serde_json::from_str(&line).expect("ct-probe hold's JSON");
    (
        child,
        v["pid"].as_u64().expect("pid"),
        v["local"].as_str().expect("local address").to_string(),
    )
}

/// Runs ct-probe in the cgroup, waits for it, returns its JSON output.
pub fn probe(cg: &TestCgroup, args: &[&str]) -> anyhow::Result<Value> {
    probe_as(cg, args, None)
}

pub fn probe_as(cg: &TestCgroup, args: &[&str], uid: Option<u32>) -> anyhow::Result<Value> {
    let mut cmd = cg.command_as(&bin_path("ct-probe"), uid);
    cmd.args(args);
    let out = cmd.output().context("running ct-probe")?;
    if !out.status.success() {
        bail!(
            "ct-probe {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("ct-probe output")
}

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
    pub config: tempdir_lite::ConfigDir,
    /// bpffs directory of this daemon's pins, private to the test.
    pub pin_dir: PathBuf,
    /// Event lines not read yet: a stdout nobody reads (see `start_stalled`).
    stdout: Option<ChildStdout>,
}

/// What both connect-loop benchmarks share.
pub mod bench {
    use std::net::TcpListener;

    use super::{bin_path, TestCgroup};

    /// A loopback listener that accepts and drops everything, outside the
    /// test cgroup (only the client connects); returns its address. A full
    /// accept queue drops SYNs and the client stalls a whole second on the
    /// retransmit, so the backlog is far deeper than std's 128.
    pub fn draining_listener() -> anyhow::Result<String> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::MAXCONN)?;
        let dst = listener.local_addr()?.to_string();
        std::thread::spawn(move || listener.incoming().for_each(drop));
        Ok(dst)
    }

    /// `n` connect + RST close from the cgroup, as fast as possible.
    pub fn flood(cg: &TestCgroup, dst: &str, n: u64) -> anyhow::Result<()> {
        let out = cg
            .command(&bin_path("ct-probe"))
            .args(["flood", dst, &n.to_string(), "rst"])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "ct-probe flood: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// CPU time a process's live threads have used, in nanoseconds, from
    /// the scheduler's own accounting (`stat`'s utime/stime are in 10 ms
    /// ticks, too coarse for a few hundred ms of daemon CPU).
    pub fn cpu_ns(pid: u32) -> u64 {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return 0;
        };
        tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    /// The middle value (NaN for none).
    pub fn median(v: &mut [f64]) -> f64 {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    }
}

pub mod tempdir_lite {
    //! A configuration directory that disappears with the test. Each daemon
    //! gets its own: the daemon watches its configuration directory.
    use std::path::{Path, PathBuf};

    #[derive(Debug)]
    pub struct ConfigDir(PathBuf);

    impl ConfigDir {
        pub fn new(name: &str, contents: &str) -> Self {
            let d = std::env::temp_dir().join(format!("connectracer-test-{name}"));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(d.join("conf.d")).expect("creating the config dir");
            // Daemons run side by side in tests: none takes the default
            // metrics port or the system's node_exporter textfile. Tests
            // that want metrics add a later drop-in.
            std::fs::write(
                d.join("conf.d/00-test.toml"),
                "[metrics]\nlisten = \"off\"\ntextfile = \"off\"\n",
            )
            .expect("writing the test drop-in");
            let dir = Self(d);
            dir.write(contents);
            dir
        }

        pub fn dir(&self) -> &Path {
            &self.0
        }

        /// Adds or replaces `conf.d/NAME`.
        pub fn write_dropin(&self, name: &str, contents: &str) {
            std::fs::write(self.0.join("conf.d").join(name), contents).expect("writing drop-in");
        }

        /// Takes over an existing directory (it is removed when this drops).
        pub fn adopt(dir: PathBuf) -> Self {
            Self(dir)
        }

        pub fn main(&self) -> PathBuf {
            self.0.join("connectracer.toml")
        }

        /// Replaces the main file the way editors do: write aside, rename over.
        pub fn write(&self, contents: &str) {
            let tmp = self.0.join(".connectracer.toml.swp");
            std::fs::write(&tmp, contents).expect("writing config");
            std::fs::rename(&tmp, self.main()).expect("renaming config");
        }
    }

    impl Drop for ConfigDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
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

/// connectracerd on `cg` with its own configuration, socket, pins and state
/// directory: the arguments every test daemon runs with.
pub fn daemon_command(
    cg: &TestCgroup,
    cfg: &tempdir_lite::ConfigDir,
    socket: &Path,
    pin_dir: &Path,
) -> Command {
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
        let cfg = tempdir_lite::ConfigDir::new(&name, config);
        let socket = std::env::temp_dir().join(format!("connectracer-test-{name}.sock"));
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/connectracer-test-{name}"));
        Self::start_with(cg, cfg, socket, pin_dir)
    }

    /// Like `start`, but nothing reads the daemon's stdout until
    /// `read_stdout`: a pipe that fills up and stalls its writer.
    pub fn start_stalled(cg: &TestCgroup, config: &str) -> anyhow::Result<Self> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let name = format!("{}-s{}", &cg.rel[1..], SEQ.fetch_add(1, Ordering::Relaxed));
        let cfg = tempdir_lite::ConfigDir::new(&name, config);
        let socket = std::env::temp_dir().join(format!("connectracer-test-{name}.sock"));
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/connectracer-test-{name}"));
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
        cfg: tempdir_lite::ConfigDir,
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
        let cfg = tempdir_lite::ConfigDir::new(&name, config);
        let socket = std::env::temp_dir().join(format!("connectracer-test-{name}.sock"));
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/connectracer-test-{name}"));
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
        cfg: tempdir_lite::ConfigDir,
        socket: PathBuf,
        pin_dir: PathBuf,
        bus: &str,
    ) -> anyhow::Result<Self> {
        Self::spawn(cg, cfg, socket, pin_dir, bus, true)
    }

    /// `read_stdout`: collect event lines from the start.
    fn spawn(
        cg: &TestCgroup,
        cfg: tempdir_lite::ConfigDir,
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
    pub fn crash(mut self) -> (tempdir_lite::ConfigDir, PathBuf, PathBuf) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let pin_dir = std::mem::take(&mut self.pin_dir);
        let socket = self.socket.clone();
        let cfg = std::mem::replace(&mut self.config, tempdir_lite::ConfigDir::adopt(PathBuf::new()));
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

/// The system bus address every daemon started without a private bus gets:
/// nothing listens there, so tests never touch the machine's own bus.
pub const NO_BUS: &str = "unix:path=/nonexistent/connectracer-test-no-bus";

/// A private dbus-daemon configured like the system bus (deny by default,
/// EXTERNAL auth) plus our shipped policy file. Killed and removed on drop.
#[derive(Debug)]
pub struct PrivateBus {
    child: Child,
    dir: PathBuf,
    pub address: String,
}

/// The repository root (the tests crate's parent).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

impl PrivateBus {
    pub fn start() -> anyhow::Result<Self> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("connectracer-test-bus-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).context("bus directory")?;
        // Test users connect too.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let policy = repo_root().join("packaging/dbus/org.connectracer.Tracer1.conf");
        let config = format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={dir}/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <!-- polkitd runs as root in the tests. -->
  <policy user="root">
    <allow own="org.freedesktop.PolicyKit1"/>
  </policy>
  <include ignore_missing="yes">/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf</include>
  <include>{policy}</include>
</busconfig>
"#,
            dir = dir.display(),
            policy = policy.display()
        );
        let conf = dir.join("bus.conf");
        std::fs::write(&conf, config)?;
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--print-address"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting dbus-daemon (scripts/install-deps installs it)")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line)?;
        let bus = Self {
            child,
            dir,
            address: line.trim().to_string(),
        };
        if bus.address.is_empty() {
            bail!("dbus-daemon printed no address");
        }
        Ok(bus)
    }

    /// A command with this bus as its system bus.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("DBUS_SYSTEM_BUS_ADDRESS", &self.address);
        c
    }

    /// tracectl --bus ARGS as root: exit code, stdout, stderr.
    pub fn tracectl(&self, args: &[&str]) -> (i32, String, String) {
        output(self.command(bin_path("tracectl")).arg("--bus").args(args))
    }

    /// tracectl --bus ARGS as `user` (its uid, gid and groups).
    pub fn tracectl_as(&self, user: &TestUser, args: &[&str]) -> (i32, String, String) {
        output(
            self.command("setpriv")
                .arg(format!("--reuid={}", user.uid))
                .arg(format!("--regid={}", user.gid))
                .arg("--init-groups")
                .arg(bin_path("tracectl"))
                .arg("--bus")
                .args(args),
        )
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs a command to completion: exit code, stdout, stderr.
pub fn output(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("running a command");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A group created for a test (or found existing); removed on drop only
/// if this test created it.
#[derive(Debug)]
pub struct TestGroup {
    pub name: String,
    pub gid: u32,
    created: bool,
}

impl TestGroup {
    pub fn ensure(name: &str) -> anyhow::Result<Self> {
        let created = nix::unistd::Group::from_name(name)?.is_none();
        if created {
            let st = Command::new("groupadd").arg("--system").arg(name).status()?;
            if !st.success() {
                bail!("groupadd {name}: {st}");
            }
        }
        let gid = nix::unistd::Group::from_name(name)?
            .context("group after groupadd")?
            .gid
            .as_raw();
        Ok(Self {
            name: name.to_string(),
            gid,
            created,
        })
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        if self.created {
            let _ = Command::new("groupdel").arg(&self.name).status();
        }
    }
}

/// A user created for a test, deleted on drop, pass or fail.
#[derive(Debug)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl TestUser {
    /// A new user (with its own group), also in `groups`.
    pub fn create(name: &str, groups: &[&str]) -> anyhow::Result<Self> {
        let mut cmd = Command::new("useradd");
        cmd.args(["--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin"]);
        if !groups.is_empty() {
            cmd.arg("--groups").arg(groups.join(","));
        }
        let st = cmd.arg(name).status()?;
        if !st.success() {
            bail!("useradd {name}: {st}");
        }
        let u = nix::unistd::User::from_name(name)?.context("user after useradd")?;
        Ok(Self {
            name: name.to_string(),
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        })
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        // userdel also removes the user's own group.
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

pub fn pretty(v: &[Value]) -> String {
    v.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")
}

/// A loopback TCP server: reads until the client's bytes are in, answers
/// with `reply` bytes, closes. Returns its address.
pub fn tcp_server(bind: &str, expect: usize, reply: usize) -> SocketAddr {
    let l = TcpListener::bind(bind).expect("bind");
    let a = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = vec![0; expect];
                if s.read_exact(&mut buf).is_ok() {
                    let _ = s.write_all(&vec![b'y'; reply]);
                }
                let _ = s.shutdown(std::net::Shutdown::Write);
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest);
            });
        }
    });
    a
}

/// A loopback port with nothing listening (refused connects).
pub fn closed_port(bind: &str) -> SocketAddr {
    let l = TcpListener::bind(bind).expect("bind");
    l.local_addr().expect("addr")
}

/// A real DNS server (dnsmasq) on loopback, answering from a hosts file the
/// test rewrites. Killed when dropped.
#[derive(Debug)]
pub struct Dnsmasq {
    child: Child,
    pub port: u16,
    hosts: PathBuf,
}

impl Dnsmasq {
    /// `records`: lines of a hosts file ("127.0.0.5 api.test"); every answer
    /// has a TTL of `ttl` seconds.
    pub fn start(records: &str, ttl: u32) -> Self {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let hosts = std::env::temp_dir().join(format!("connectracer-test-{}-{n}.hosts", std::process::id()));
        std::fs::write(&hosts, records).expect("hosts file");
        let port = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("free port");
            s.local_addr().expect("addr").port()
        };
        let bin = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "/sbin/dnsmasq"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("dnsmasq is not installed (scripts/install-deps installs it)");
        let child = Command::new(bin)
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
            ])
            .args([
                "--listen-address=127.0.0.1",
                "--user=root",
                "--pid-file",
                "--local=/test/",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--addn-hosts={}", hosts.display()))
            .arg(format!("--local-ttl={ttl}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting dnsmasq");
        // Ready once it answers on TCP.
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port, hosts }
    }

    /// Replaces the records and makes dnsmasq re-read them.
    pub fn set_records(&self, records: &str) {
        std::fs::write(&self.hosts, records).expect("hosts file");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::SIGHUP,
        )
        .expect("SIGHUP dnsmasq");
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.hosts);
    }
}
