//! Users and groups created for a test.

use std::process::Command;

use anyhow::{bail, Context};

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
