//! Answers to the queries, computed from the connection table by the task
//! that owns it.

use std::net::{IpAddr, SocketAddr};

use connectracer_proto::varlink::{
    to_parameters, CallError, ConnectionsParams, ConnectionsReply, PsParams, WhoParams,
};
use connectracer_proto::Connection;

use super::{Answer, Caller};
use crate::table::ConnTable;

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
fn reply<'a>(caller: &Caller, conns: impl Iterator<Item = &'a Connection>, limit: usize) -> Answer {
    let mut seen: Vec<&Connection> = conns.filter(|c| caller.may_see(c)).collect();
    if seen.len() > limit {
        seen.select_nth_unstable_by_key(limit, |c| std::cmp::Reverse(c.id));
        seen.truncate(limit);
    }
    seen.sort_unstable_by_key(|c| std::cmp::Reverse(c.id));
    let connections: Vec<Connection> = seen.into_iter().cloned().collect();
    Ok(to_parameters(&ConnectionsReply { connections }))
}

fn limit(l: Option<u32>) -> usize {
    l.map_or(DEFAULT_LIMIT, |l| (l as usize).clamp(1, MAX_CONNECTIONS))
}

pub fn who(table: &ConnTable, caller: &Caller, p: &WhoParams) -> Answer {
    match (&p.address, p.local_port) {
        (Some(addr), None) => {
            let (ip, port_in_address) = parse_address(addr)?;
            if p.port.is_some() && port_in_address.is_some() {
                return Err(invalid("port", "given both in address and as port"));
            }
            // v4-mapped destinations are recorded as IPv4.
            let ip = match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
                v4 => v4,
            };
            let port = p.port.or(port_in_address);
            reply(caller, table.by_destination(ip, port), limit(p.limit))
        }
        (None, Some(lport)) => reply(caller, table.by_local_port(lport), limit(p.limit)),
        (Some(_), Some(_)) => Err(invalid(
            "local_port",
            "give either address or local_port, not both",
        )),
        (None, None) => Err(invalid("address", "give a destination address or a local_port")),
    }
}

pub fn ps(table: &ConnTable, caller: &Caller, p: &PsParams) -> Answer {
    reply(caller, table.by_pid(p.pid), limit(p.limit))
}

pub fn connections(table: &ConnTable, caller: &Caller, p: &ConnectionsParams) -> Answer {
    let limit = p
        .limit
        .map_or(DEFAULT_LIMIT, |l| (l as usize).min(MAX_CONNECTIONS));
    let conns = table
        .iter()
        .filter(|c| p.state.is_none_or(|s| c.state == s) && p.protocol.is_none_or(|pr| c.protocol == pr));
    reply(caller, conns, limit)
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
        let r = who(&t, &root, &p).unwrap();
        let ids: Vec<u64> = r["connections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, [10, 9, 8]);
        let all = ps(&t, &root, &PsParams { pid: 7, limit: None }).unwrap();
        assert_eq!(all["connections"].as_array().unwrap().len(), 10);
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
