//! The suggestion as text: connectracer TOML and a systemd drop-in.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, UNIX_EPOCH};

use connectracer_proto::api::{SeenDestination, SuggestReply};

/// Whose destinations, as the user named them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Unit(String),
    Cgroup(String),
    User(String),
    /// A container by its full id.
    Container(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unit(u) => write!(f, "unit {u}"),
            Self::Cgroup(c) => write!(f, "cgroup {c}"),
            Self::User(u) => write!(f, "user {u}"),
            Self::Container(id) => write!(f, "container {}", id.get(..12).unwrap_or(id)),
        }
    }
}

impl Target {
    /// The scope selector, as a TOML key and value.
    fn selector(&self) -> String {
        match self {
            Self::Unit(u) => format!("unit = {}", quote(u)),
            Self::Cgroup(c) => format!("cgroup = {}", quote(c)),
            Self::User(u) => match u.parse::<u32>() {
                Ok(uid) => format!("user = {uid}"),
                Err(_) => format!("user = {}", quote(u)),
            },
            Self::Container(id) => format!("container = {}", quote(id)),
        }
    }
}

/// A TOML basic string: JSON's escapes (quote, backslash, newline, and `\u` with four hex digits) are
/// all valid in one.
fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// An address alone, or its /24 or /64 with `cidr`.
fn network(a: IpAddr, cidr: bool) -> String {
    match (a, cidr) {
        (IpAddr::V4(v4), false) => format!("{v4}/32"),
        (IpAddr::V6(v6), false) => format!("{v6}/128"),
        (IpAddr::V4(v4), true) => {
            let masked = u32::from(v4) & 0xffff_ff00;
            format!("{}/24", std::net::Ipv4Addr::from(masked))
        }
        (IpAddr::V6(v6), true) => {
            let masked = u128::from(v6) & !((1u128 << 64) - 1);
            format!("{}/64", std::net::Ipv6Addr::from(masked))
        }
    }
}

fn when(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// What one rule allows, and what it was seen doing.
#[derive(Default)]
struct Grouped {
    ports: BTreeSet<u16>,
    count: u64,
    first: u64,
    last: u64,
}

/// Destinations by what a rule names (a hostname, or a network) and protocol.
fn grouped(reply: &SuggestReply, cidr: bool) -> BTreeMap<(String, &'static str), Grouped> {
    let mut out: BTreeMap<(String, &'static str), Grouped> = BTreeMap::new();
    for d in &reply.destinations {
        let dest = d.name.clone().unwrap_or_else(|| network(d.address, cidr));
        let g = out.entry((dest, d.protocol.as_str())).or_insert(Grouped {
            first: u64::MAX,
            ..Grouped::default()
        });
        g.ports.insert(d.port);
        g.count += d.count;
        g.first = g.first.min(d.first_seen_ms);
        g.last = g.last.max(d.last_seen_ms);
    }
    out
}

/// connectracer configuration for conf.d: the target denied by default,
/// allowed what it was seen reaching.
pub fn toml(reply: &SuggestReply, target: &Target, cidr: bool) -> String {
    let selector = target.selector();
    let mut s = format!(
        "# Suggested by `tracectl policy suggest` from the connections {target} made:\n\
         # everything else it connects to is refused once this is in force (with\n\
         # mode = \"enforce\"). Read it before applying: what ran is not always what should.\n\
         [[scope]]\n{selector}\ndefault = \"deny\"\n"
    );
    for ((dest, protocol), g) in grouped(reply, cidr) {
        let ports: Vec<String> = g.ports.iter().map(u16::to_string).collect();
        let comment = format!(
            "{} connection{}, first {}, last {}",
            g.count,
            if g.count == 1 { "" } else { "s" },
            when(g.first),
            when(g.last)
        );
        let _ = write!(
            s,
            "\n[[rule]]\naction = \"allow\"\n{selector}\ndest = [{}]\nports = [{}]\nprotocol = \"{protocol}\"\ncomment = {}\n",
            quote(&dest),
            ports.join(", "),
            quote(&comment)
        );
    }
    s
}

/// The unit file section a drop-in for `unit` goes in.
fn section(target: &Target) -> &'static str {
    let Target::Unit(u) = target else {
        return "Service";
    };
    match u.rsplit_once('.').map(|(_, t)| t) {
        Some("slice") => "Slice",
        Some("scope") => "Scope",
        Some("socket") => "Socket",
        Some("mount") => "Mount",
        Some("swap") => "Swap",
        _ => "Service",
    }
}

/// A systemd drop-in: every other address denied. systemd filters by
/// address only, so names stand for the addresses seen for them, and
/// ports and protocols are not kept.
pub fn systemd(reply: &SuggestReply, target: &Target, cidr: bool) -> String {
    let nets: BTreeSet<String> = reply
        .destinations
        .iter()
        .map(|d| network(d.address, cidr))
        .collect();
    let names: BTreeSet<&str> = reply
        .destinations
        .iter()
        .filter_map(|d: &SeenDestination| d.name.as_deref())
        .collect();
    let mut s = format!(
        "# Suggested by `tracectl policy suggest` from the connections {target} made.\n\
         # systemd filters by address only: ports and protocols are not restricted.\n"
    );
    if !names.is_empty() {
        let list: Vec<&str> = names.into_iter().collect();
        let _ = writeln!(
            s,
            "# systemd cannot allow by hostname: {} as the addresses they resolved to when seen,\n\
             # which may change (connectracer's own rules follow the names).",
            list.join(", ")
        );
    }
    let _ = write!(
        s,
        "[{}]\nIPAddressDeny=any\nIPAddressAllow={}\n",
        section(target),
        nets.into_iter().collect::<Vec<_>>().join(" ")
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use connectracer_proto::Protocol;

    fn seen(name: Option<&str>, addr: &str, port: u16, protocol: Protocol) -> SeenDestination {
        SeenDestination {
            name: name.map(Into::into),
            address: addr.parse().unwrap(),
            port,
            protocol,
            count: 2,
            first_seen_ms: 1_700_000_000_000,
            last_seen_ms: 1_700_000_060_000,
        }
    }

    fn reply() -> SuggestReply {
        SuggestReply {
            destinations: vec![
                seen(None, "192.0.2.7", 80, Protocol::Tcp),
                seen(None, "192.0.2.9", 80, Protocol::Tcp),
                seen(None, "2001:db8::5", 53, Protocol::Udp),
                seen(Some("api.example.com"), "198.51.100.1", 443, Protocol::Tcp),
                seen(Some("api.example.com"), "198.51.100.2", 8443, Protocol::Tcp),
            ],
            dropped: 0,
            capacity: 16384,
            container: None,
        }
    }

    #[test]
    fn toml_has_a_deny_scope_and_one_rule_per_destination() {
        let t = toml(&reply(), &Target::Unit("app.service".into()), false);
        let v: ::toml::Value = ::toml::from_str(&t).unwrap();
        assert_eq!(v["scope"][0]["unit"].as_str(), Some("app.service"));
        assert_eq!(v["scope"][0]["default"].as_str(), Some("deny"));
        let rules: Vec<(String, Vec<i64>, String)> = v["rule"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                assert_eq!(r["action"].as_str(), Some("allow"));
                assert_eq!(r["unit"].as_str(), Some("app.service"));
                (
                    r["dest"][0].as_str().unwrap().to_string(),
                    r["ports"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| p.as_integer().unwrap())
                        .collect(),
                    r["protocol"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            rules,
            [
                ("192.0.2.7/32".into(), vec![80], "tcp".into()),
                ("192.0.2.9/32".into(), vec![80], "tcp".into()),
                ("2001:db8::5/128".into(), vec![53], "udp".into()),
                ("api.example.com".into(), vec![443, 8443], "tcp".into()),
            ]
        );
        assert!(t.contains("4 connections"), "{t}");
    }

    #[test]
    fn cidr_groups_addresses_only_when_asked() {
        let t = toml(&reply(), &Target::User("1000".into()), true);
        let v: ::toml::Value = ::toml::from_str(&t).unwrap();
        assert_eq!(v["scope"][0]["user"].as_integer(), Some(1000));
        let dests: Vec<&str> = v["rule"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["dest"][0].as_str().unwrap())
            .collect();
        assert_eq!(dests, ["192.0.2.0/24", "2001:db8::/64", "api.example.com"]);
    }

    #[test]
    fn systemd_allows_the_addresses_names_stood_for() {
        let s = systemd(&reply(), &Target::Unit("app.service".into()), false);
        assert!(s.contains("\n[Service]\nIPAddressDeny=any\n"), "{s}");
        assert!(
            s.ends_with(
                "IPAddressAllow=192.0.2.7/32 192.0.2.9/32 198.51.100.1/32 198.51.100.2/32 2001:db8::5/128\n"
            ),
            "{s}"
        );
        assert!(s.contains("cannot allow by hostname: api.example.com"), "{s}");
        let s = systemd(&reply(), &Target::Unit("x.slice".into()), true);
        assert!(
            s.contains("[Slice]") && s.contains("192.0.2.0/24 198.51.100.0/24 2001:db8::/64"),
            "{s}"
        );
    }
}
