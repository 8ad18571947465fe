//! `tracectl run`'s command line, and the sandbox rules it stands for.

use std::path::PathBuf;

use clap::Args;
use connectracer_proto::api::{SandboxParams, SandboxRule};
use serde::Deserialize;

/// What `tracectl run --help` and the man page say: what each mode
/// protects against, and its limits.
pub const LONG_ABOUT: &str = "Run a command in a sandbox: it, and everything it starts, reaches only what --allow-net allows, and is stopped with tracectl. Any user may run it (over the daemon's sandbox socket); it changes nothing for other processes.

NETWORK. Before it starts, the command is placed in a cgroup the daemon creates and owns (nothing inside can move out of it, and nobody but root can move anything in), whose connections the kernel judges before the host's policy: IPv4 and IPv6 (v4-mapped as IPv4), TCP and UDP, connect() and sendto(). What the sandbox refuses fails with EPERM; what it allows is still subject to the host's policy. Loopback is refused unless allowed; the DNS servers in use are always allowed on port 53. Hostnames are followed through DNS (refreshed at their TTL) and through the answers the command itself receives. It protects against a command reaching the network where it should not; not against it asking a local service over a Unix socket (D-Bus, ssh-agent, a container runtime) to act for it outside the sandbox.

FILES. --allow-read and --allow-write turn on a Landlock allow-list: the command may then read (and execute) only below the paths given, plus /usr, /bin, /sbin, /lib*, /etc and /proc read-only and /dev, so that programs start, and write only below --allow-write paths. The kernel enforces it on the command and everything it starts, it cannot be lifted, and setuid programs run without their privileges. A rule this kernel cannot enforce (Landlock ABI older than 5) fails the run unless --best-effort. --deny-read and --deny-write mask paths in a private mount namespace (an unprivileged user namespace): a denied path reads as an inaccessible empty file or directory, a write-denied one is read-only. Masks hide a path, not the file: a hard link elsewhere, or a file descriptor passed in, still reaches it; setuid programs do not work under them.

TRACE. Each connection and refusal is printed on stderr as it happens (or written as JSON Lines to --log), then a summary: the destinations reached and refused, and the bytes sent and received over TCP. tracectl exits with the command's status (128+N if signal N ended it; 126 or 127 if it could not be started). Processes the command leaves behind are stopped when it ends; killing tracectl stops them all.

SYSCALLS. --profile-syscalls FILE has the daemon record every syscall the command and everything it starts make, from the command's own exec (what tracectl does before it, Landlock, the masks and the wait for the daemon, is not in it) until the last of them has ended, and writes them to FILE as tracectl profile does: an OCI seccomp profile (the default), a systemd drop-in or JSON (--profile-format). It is what this run did: code paths it did not take are not in it. When no profile comes back (the daemon stopped meanwhile), tracectl says why, removes FILE and exits 1 if the command succeeded.";

/// `tracectl run`'s options and command.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Allow a destination: HOST, IP or CIDR, with an optional port or
    /// range and protocol: api.example.com:443, 10.0.0.0/8, [2001:db8::1]:443,
    /// [2001:db8::/32]:8000-8100, 192.0.2.1:53/udp. Repeatable.
    #[arg(long = "allow-net", value_name = "DEST")]
    pub allow_net: Vec<String>,
    /// Refuse a destination (same syntax), even inside an allowed one.
    #[arg(long = "deny-net", value_name = "DEST")]
    pub deny_net: Vec<String>,
    /// Rules from a file: [[rule]] tables as in a [[scope]] of
    /// connectracer.toml(5), without a selector (action, dest, ports, protocol).
    #[arg(long, value_name = "FILE.toml")]
    pub policy: Option<PathBuf>,
    /// Report what the sandbox would refuse instead of refusing it.
    #[arg(long)]
    pub audit: bool,
    /// Allow reading below PATH (Landlock allow-list). Repeatable.
    #[arg(long = "allow-read", value_name = "PATH")]
    pub allow_read: Vec<PathBuf>,
    /// Allow reading and writing below PATH (Landlock allow-list). Repeatable.
    #[arg(long = "allow-write", value_name = "PATH")]
    pub allow_write: Vec<PathBuf>,
    /// Make PATH unreadable (masked in a private mount namespace). Repeatable.
    #[arg(long = "deny-read", value_name = "PATH")]
    pub deny_read: Vec<PathBuf>,
    /// Make PATH read-only (in a private mount namespace). Repeatable.
    #[arg(long = "deny-write", value_name = "PATH")]
    pub deny_write: Vec<PathBuf>,
    /// Run even where the kernel enforces only part of the file rules
    /// (an older Landlock ABI), and say what it enforced.
    #[arg(long)]
    pub best_effort: bool,
    /// Write each event as a JSON line to FILE instead of stderr.
    #[arg(long, value_name = "FILE.jsonl")]
    pub log: Option<PathBuf>,
    /// Record the syscalls the command and everything it starts make, from
    /// its exec to its end, and write them to FILE when it ends (as
    /// `tracectl profile` does: --profile-format).
    #[arg(long = "profile-syscalls", value_name = "FILE")]
    pub profile_syscalls: Option<PathBuf>,
    /// How --profile-syscalls writes the profile [default: oci].
    #[arg(
        long = "profile-format",
        value_enum,
        value_name = "FORMAT",
        requires = "profile_syscalls"
    )]
    pub profile_format: Option<crate::profile::ProfileFormat>,
    /// The daemon's sandbox socket (default: beside --socket: sandbox.sock
    /// for control.sock, NAME.sandbox.sock for NAME.sock).
    #[arg(long, value_name = "PATH", env = "CONNECTRACER_SANDBOX_SOCKET")]
    pub sandbox_socket: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

/// A `--allow-net`/`--deny-net` value as a rule, or why it is not one.
pub fn net_rule(action: &str, spec: &str) -> Result<SandboxRule, String> {
    let (rest, protocol) = match spec.rsplit_once('/') {
        Some((r, p @ ("tcp" | "udp"))) => (r, Some(p.to_string())),
        _ => (spec, None),
    };
    let (dest, port) = split_port(rest).ok_or_else(|| {
        format!("`{spec}` is not HOST[:PORT[-PORT]][/tcp|/udp] (IPv6 in brackets: [2001:db8::1]:443)")
    })?;
    if dest.is_empty() {
        return Err(format!("`{spec}` names no destination"));
    }
    Ok(SandboxRule {
        action: action.into(),
        dest: vec![dest.to_string()],
        ports: port.into_iter().map(String::from).collect(),
        protocol,
    })
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`, and bare IPv6 addresses and
/// CIDRs (which have colons of their own).
fn split_port(s: &str) -> Option<(&str, Option<&str>)> {
    if let Some(inner) = s.strip_prefix('[') {
        let (host, after) = inner.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            p => Some((host, Some(p.strip_prefix(':')?))),
        };
    }
    if s.parse::<std::net::IpAddr>().is_ok() || s.parse::<ipnet::IpNet>().is_ok() {
        return Some((s, None));
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host, Some(port))),
        Some(_) => None,
        None => Some((s, None)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    rule: Vec<FileRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRule {
    action: String,
    #[serde(default)]
    dest: OneOrMany,
    #[serde(default)]
    ports: Vec<toml::Value>,
    protocol: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

/// The rules of a `--policy` file; the daemon checks them further.
pub fn policy_file(path: &std::path::Path) -> Result<Vec<SandboxRule>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file: PolicyFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(file
        .rule
        .into_iter()
        .map(|r| SandboxRule {
            action: r.action,
            dest: match r.dest {
                OneOrMany::None => vec![],
                OneOrMany::One(d) if d == "any" => vec![],
                OneOrMany::One(d) => vec![d],
                OneOrMany::Many(d) => d,
            },
            ports: r
                .ports
                .iter()
                .map(|p| match p {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
            protocol: r.protocol,
        })
        .collect())
}

impl RunArgs {
    /// The request: --policy's rules, then --deny-net's, then --allow-net's
    /// (ties between equal prefixes go to the first).
    pub fn params(&self) -> Result<SandboxParams, String> {
        let mut rules = match &self.policy {
            Some(p) => policy_file(p)?,
            None => Vec::new(),
        };
        for d in &self.deny_net {
            rules.push(net_rule("deny", d)?);
        }
        for a in &self.allow_net {
            rules.push(net_rule("allow", a)?);
        }
        Ok(SandboxParams {
            rules,
            audit: self.audit,
            profile: self.profile_syscalls.is_some(),
        })
    }

    pub fn socket(&self, control: &std::path::Path) -> PathBuf {
        self.sandbox_socket
            .clone()
            .unwrap_or_else(|| connectracer_proto::varlink::sandbox_socket_for(control))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(spec: &str) -> (Vec<String>, Vec<String>, Option<String>) {
        let r = net_rule("allow", spec).unwrap();
        (r.dest, r.ports, r.protocol)
    }

    #[test]
    fn destinations_parse_with_ports_ranges_and_protocols() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            rule("api.example.com:443"),
            (s(&["api.example.com"]), s(&["443"]), None)
        );
        assert_eq!(rule("10.0.0.0/8"), (s(&["10.0.0.0/8"]), s(&[]), None));
        assert_eq!(rule("10.0.0.0/8:22"), (s(&["10.0.0.0/8"]), s(&["22"]), None));
        assert_eq!(rule("2001:db8::1"), (s(&["2001:db8::1"]), s(&[]), None));
        assert_eq!(rule("2001:db8::/32"), (s(&["2001:db8::/32"]), s(&[]), None));
        assert_eq!(
            rule("[2001:db8::/32]:8000-8100/udp"),
            (s(&["2001:db8::/32"]), s(&["8000-8100"]), Some("udp".into()))
        );
        assert_eq!(
            rule("192.0.2.1:53/udp"),
            (s(&["192.0.2.1"]), s(&["53"]), Some("udp".into()))
        );
        assert!(net_rule("allow", "[::1").is_err());
        assert!(net_rule("allow", ":443").is_err());
    }

    #[test]
    fn a_policy_file_is_rules_without_selectors() {
        let dir = std::env::temp_dir().join(format!("tracectl-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("p.toml");
        std::fs::write(
            &f,
            "[[rule]]\naction = \"allow\"\ndest = \"api.example.com\"\nports = [443, \"8000-8100\"]\n\n[[rule]]\naction = \"deny\"\ndest = [\"10.0.0.0/8\"]\nprotocol = \"udp\"\n",
        )
        .unwrap();
        let rules = policy_file(&f).unwrap();
        assert_eq!(rules[0].ports, ["443", "8000-8100"]);
        assert_eq!(rules[1].protocol.as_deref(), Some("udp"));
        std::fs::write(&f, "[[rule]]\naction = \"allow\"\nunit = \"x.service\"\n").unwrap();
        let e = policy_file(&f).unwrap_err();
        assert!(e.contains("unit"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
