//! A private system-like D-Bus for the tests that need one.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context};

use crate::command::output;
use crate::paths::{bin_path, repo_root};
use crate::users::TestUser;

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
