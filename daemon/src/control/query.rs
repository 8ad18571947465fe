//! Answers to the queries, computed from the connection table by the task
//! that owns it.

use std::net::{IpAddr, SocketAddr};

use connectracer_proto::api::{
    AnswersParams, AnswersReply, CallError, ConnectionsParams, ConnectionsReply, DnsAnswer, Filter,
    Operation, PsParams, WhoParams,
};
use connectracer_proto::Connection;

use super::Caller;
use crate::policy::Resolved;
use crate::table::ConnTable;

type Rows = Result<ConnectionsReply, CallError>;

/// Answers larger than this many connections are cut (newest kept).
pub const MAX_CONNECTIONS: usize = 100_000;
const DEFAULT_LIMIT: usize = 1000;

fn invalid(field: &str, reason: impl Into<String>) -> CallError {
    CallError::InvalidArgument {
        field: field.into(),
        reason: reason.into(),
    }
}

/// `1.2.3.4`, `1.2.3.4:443`, `2001:db8::1` or `[2001:db8::1]:443`.
pub fn parse_address(s: &str) -> Result<(IpAddr, Option<u16>), CallError> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok((ip, None));
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok((sa.ip(), Some(sa.port())));
    }
    Err(invalid(
        "address",
        format!("`{s}` is not an IP address or ADDRESS:PORT"),
    ))
}

/// Sorted and cut on references: only what is returned is copied and
/// serialized, so a destination with the whole table behind it answers in
/// the time of `limit` entries.
fn reply<'a>(
    caller: &Caller,
    filter: &Filter,
    conns: impl Iterator<Item = &'a Connection>,
    limit: usize,
) -> Rows {
    let m = filter.matcher()?;
    let mut seen: Vec<&Connection> = conns.filter(|c| caller.may_see(c) && m.matches(c)).collect();
    if seen.len() > limit {
        seen.select_nth_unstable_by_key(limit, |c| std::cmp::Reverse(c.id));
        seen.truncate(limit);
    }
    seen.sort_unstable_by_key(|c| std::cmp::Reverse(c.id));
    let connections: Vec<Connection> = seen.into_iter().cloned().collect();
    Ok(ConnectionsReply { connections })
}

fn limit(l: Option<u32>) -> usize {
    l.map_or(DEFAULT_LIMIT, |l| (l as usize).clamp(1, MAX_CONNECTIONS))
}

/// `api.example.com` or `api.example.com:443`: a hostname the daemon
/// follows (a watched host or a policy rule's), and the port if given.
fn parse_hostname(s: &str) -> Option<(String, Option<u16>)> {
    let (name, port) = match s.rsplit_once(':') {
        Some((n, p)) => (n, Some(p.parse::<u16>().ok()?)),
        None => (s, None),
    };
    Some((crate::config::hostname(name).ok()?, port))
}

/// Connections to a destination: an address (and port), a hostname the
/// daemon follows (every address it has resolved it to, plus connections
/// attributed to the watched host of that name), a watched host's label,
/// or from a local port.
pub fn who(table: &ConnTable, caller: &Caller, p: &WhoParams, resolved: &Resolved, labels: &[&str]) -> Rows {
    match (&p.address, p.local_port) {
        (Some(addr), None) if label_of(addr, labels).is_some() => {
            let (label, port) = label_of(addr, labels).unwrap_or_default();
            if p.port.is_some() && port.is_some() {
                return Err(invalid("port", "given both in address and as port"));
            }
            let port = p.port.or(port);
            let conns = table
                .iter()
                .filter(|c| c.label.as_deref() == Some(label) && port.is_none_or(|pt| c.dst.port() == pt));
            reply(caller, &p.filter, conns, limit(p.limit))
        }
        (Some(addr), None) => {
            let (ips, port_in_address, name) = match parse_address(addr) {
                Ok((ip, port)) => (vec![ip], port, None),
                Err(e) => {
                    let Some((name, port)) = parse_hostname(addr) else {
                        return Err(e);
                    };
                    let named = |c: &Connection| c.dns_name.as_deref() == Some(name.as_str());
                    let ips: Vec<IpAddr> = match resolved.get(&name) {
                        Some(ips) => ips.iter().copied().collect(),
                        // A name only some process resolved: its connections.
                        None if table.iter().any(named) => Vec::new(),
                        None => {
                            return Err(invalid(
                                "address",
                                format!(
                                    "`{name}` is not an IP address, a hostname connectracerd follows, or a name a traced connection resolved (add it with `tracectl add-host {name}`)"
                                ),
                            ))
                        }
                    };
                    (ips, port, Some(name))
                }
            };
            if p.port.is_some() && port_in_address.is_some() {
                return Err(invalid("port", "given both in address and as port"));
            }
            let port = p.port.or(port_in_address);
            let mut seen = std::collections::HashSet::new();
            let by_ip = ips.into_iter().flat_map(|ip| {
                // v4-mapped destinations are recorded as IPv4.
                let ip = match ip {
                    IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
                    v4 => v4,
                };
                table.by_destination(ip, port)
            });
            let by_name = table.iter().filter(|c| {
                name.as_deref()
                    .is_some_and(|n| c.host.as_deref() == Some(n) || c.dns_name.as_deref() == Some(n))
                    && port.is_none_or(|pt| c.dst.port() == pt)
            });
            let conns = by_ip.chain(by_name).filter(|c| seen.insert(c.id));
            reply(caller, &p.filter, conns, limit(p.limit))
        }
        (None, Some(lport)) => reply(caller, &p.filter, table.by_local_port(lport), limit(p.limit)),
        (Some(_), Some(_)) => Err(invalid(
            "local_port",
            "give either address or local_port, not both",
        )),
        (None, None) => Err(invalid("address", "give a destination address or a local_port")),
    }
}

/// `web` or `web:443` where `web` is a watched host's label: the label, and
/// the port if given. Labels are matched as configured (case and all).
fn label_of<'a>(addr: &'a str, labels: &[&str]) -> Option<(&'a str, Option<u16>)> {
    let (label, port) = match addr.rsplit_once(':') {
        Some((l, p)) => (l, Some(p.parse::<u16>().ok()?)),
        None => (addr, None),
    };
    labels.contains(&label).then_some((label, port))
}

/// The DNS answers the caller may see (all for the privileged, their own
/// processes' otherwise), newest first.
pub fn answers(
    a: &crate::answers::Answers,
    caller: &Caller,
    p: &AnswersParams,
) -> Result<AnswersReply, CallError> {
    let unit = p
        .unit
        .as_deref()
        .map(glob::Pattern::new)
        .transpose()
        .map_err(|e| CallError::InvalidArgument {
            field: "unit".into(),
            reason: format!("not a glob: {e}"),
        })?;
    let unit_of = |r: &crate::answers::Recent| r.asker.as_ref().and_then(|a| a.unit.clone());
    let in_unit = |r: &crate::answers::Recent| {
        unit.as_ref().is_none_or(|g| {
            r.asker.as_ref().is_some_and(|a| {
                [&a.unit, &a.user_unit]
                    .into_iter()
                    .flatten()
                    .any(|u| g.matches(u))
            })
        })
    };
    let answers = a
        .recent()
        .filter(|r| (caller.privileged || r.uid == caller.uid) && p.pid.is_none_or(|pid| r.pid == pid))
        .filter(|r| in_unit(r))
        .take(limit(p.limit))
        .map(|r| DnsAnswer {
            cgroup: r.asker.as_ref().map(|a| a.cgroup.clone()),
            unit: unit_of(r),
            time: humantime::format_rfc3339_micros(r.at).to_string(),
            pid: r.pid,
            uid: r.uid,
            name: r.name.to_string(),
            addresses: r.addresses.iter().map(ToString::to_string).collect(),
            ttl_seconds: r.ttl,
            resolver: r.resolver.to_string(),
        })
        .collect();
    Ok(AnswersReply { answers })
}

pub fn ps(table: &ConnTable, caller: &Caller, p: &PsParams) -> Rows {
    reply(caller, &Filter::default(), table.by_pid(p.pid), limit(p.limit))
}

fn connections_limit(p: &ConnectionsParams) -> usize {
    p.limit
        .map_or(DEFAULT_LIMIT, |l| (l as usize).min(MAX_CONNECTIONS))
}

/// Rows an operation may answer with, for the control socket's answer budget.
pub fn rows(op: &Operation) -> Option<usize> {
    match op {
        Operation::Who(p) => Some(limit(p.limit)),
        Operation::Ps(p) => Some(limit(p.limit)),
        Operation::Answers(p) => Some(limit(p.limit)),
        Operation::Connections(p) => Some(connections_limit(p)),
        _ => None,
    }
}

pub fn connections(table: &ConnTable, caller: &Caller, p: &ConnectionsParams) -> Rows {
    let limit = connections_limit(p);
    let conns = table
        .iter()
        .filter(|c| p.state.is_none_or(|s| c.state == s) && p.protocol.is_none_or(|pr| c.protocol == pr));
    reply(caller, &p.filter, conns, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_keep_the_newest_up_to_the_limit() {
        let mut t = ConnTable::new(crate::table::TableLimits {
            max_open: 100,
            max_closed: 100,
            closed_retention: std::time::Duration::from_secs(60),
        });
        for i in 0..10 {
            t.insert(crate::table::test_connection(i, 7, 0, "10.0.0.1:443"));
        }
        let root = Caller::from_peer(0, 0, None);
        let p = WhoParams {
            address: Some("10.0.0.1".into()),
            limit: Some(3),
            ..Default::default()
        };
        let r = who(&t, &root, &p, &Resolved::new(), &[]).unwrap();
        let ids: Vec<u64> = r.connections.iter().map(|c| c.id).collect();
        assert_eq!(ids, [10, 9, 8]);
        let all = ps(&t, &root, &PsParams { pid: 7, limit: None }).unwrap();
        assert_eq!(all.connections.len(), 10);

        let mut names = Resolved::new();
        names.insert(
            "api.example.com".into(),
            std::collections::BTreeSet::from(["10.0.0.1".parse().unwrap()]),
        );
        let by_name = WhoParams {
            address: Some("API.example.com:443".into()),
            ..Default::default()
        };
        let r = who(&t, &root, &by_name, &names, &[]).unwrap();
        assert_eq!(r.connections.len(), 10);
        let unknown = WhoParams {
            address: Some("other.example.com".into()),
            ..Default::default()
        };
        assert_eq!(
            who(&t, &root, &unknown, &names, &[]).unwrap_err().to_string(),
            "invalid address: `other.example.com` is not an IP address, a hostname connectracerd follows, or a name a traced connection resolved (add it with `tracectl add-host other.example.com`)"
        );
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_address("10.0.0.1").unwrap(),
            ("10.0.0.1".parse().unwrap(), None)
        );
        assert_eq!(
            parse_address("10.0.0.1:443").unwrap(),
            ("10.0.0.1".parse().unwrap(), Some(443))
        );
        assert_eq!(
            parse_address("[::1]:80").unwrap(),
            ("::1".parse().unwrap(), Some(80))
        );
        assert_eq!(
            parse_address("example.com"),
            Err(invalid(
                "address",
                "`example.com` is not an IP address or ADDRESS:PORT"
            ))
        );
    }
}
