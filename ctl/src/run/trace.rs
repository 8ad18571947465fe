//! The sandbox's events as they come (stderr, or JSON Lines to --log),
//! and the summary at the end.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::SystemTime;

use connectracer_proto::api::WatchReply;
use connectracer_proto::Verdict;

use crate::watch::{envelope, line};

/// Where events go, and what they add up to.
#[derive(Debug)]
pub struct Trace {
    log: Option<std::io::BufWriter<std::fs::File>>,
    colour: bool,
    /// Destination (`tcp 10.0.0.1:443`) → connections.
    reached: BTreeMap<String, u64>,
    refused: BTreeMap<String, u64>,
    sent: u64,
    received: u64,
    missed: u64,
}

impl Trace {
    pub fn new(log: Option<&std::path::Path>) -> Result<Self, String> {
        let log = match log {
            Some(p) => Some(std::io::BufWriter::new(
                std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?,
            )),
            None => None,
        };
        let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        Ok(Self {
            log,
            colour,
            reached: BTreeMap::new(),
            refused: BTreeMap::new(),
            sent: 0,
            received: 0,
            missed: 0,
        })
    }

    pub fn event(&mut self, r: &WatchReply) {
        match r {
            WatchReply::Missed { missed } => self.missed += missed,
            WatchReply::Event {
                event, connection: c, ..
            } => {
                let dest = format!("{} {}", c.protocol.as_str(), c.dst);
                match (event.as_str(), c.verdict) {
                    ("denied", _) => *self.refused.entry(dest).or_default() += 1,
                    ("connect" | "send", Verdict::WouldDeny) => {
                        *self.refused.entry(format!("{dest} (audit)")).or_default() += 1
                    }
                    ("connect" | "send", _) => *self.reached.entry(dest).or_default() += 1,
                    ("closed", _) => {
                        self.sent += c.bytes_sent.unwrap_or(0);
                        self.received += c.bytes_received.unwrap_or(0);
                    }
                    _ => {}
                }
            }
        }
        match &mut self.log {
            Some(w) => {
                let _ = writeln!(w, "{}", envelope(r));
            }
            None => eprintln!(
                "tracectl: {}",
                line(r, r.time().unwrap_or_else(SystemTime::now), self.colour)
            ),
        }
    }

    /// The summary, on stderr (and as the log's last line).
    pub fn finish(mut self, ended: &str) {
        let list = |m: &BTreeMap<String, u64>| {
            if m.is_empty() {
                return "none".to_string();
            }
            m.iter()
                .map(|(d, n)| if *n == 1 { d.clone() } else { format!("{d} ×{n}") })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut text = format!(
            "tracectl: {ended}\ntracectl: reached: {}\ntracectl: refused: {}\ntracectl: sent {} bytes, received {} bytes (TCP)",
            list(&self.reached),
            list(&self.refused),
            self.sent,
            self.received
        );
        if self.missed > 0 {
            text.push_str(&format!(
                "\ntracectl: {} events missed (read too slowly)",
                self.missed
            ));
        }
        eprintln!("{text}");
        if let Some(w) = &mut self.log {
            let summary = serde_json::json!({ "summary": {
                "ended": ended,
                "reached": self.reached,
                "refused": self.refused,
                "bytes_sent": self.sent,
                "bytes_received": self.received,
                "missed": self.missed,
            }});
            let _ = writeln!(w, "{summary}");
            let _ = w.flush();
        }
    }
}
