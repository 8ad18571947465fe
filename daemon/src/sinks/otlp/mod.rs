//! The OTLP sink's output: events become OTLP log records sent to a
//! collector in requests of at most 1,024 records (or about 1 MiB). The
//! sink's queue is the only buffer: a request that fails in a way worth
//! retrying keeps its lines queued (still counted in `queued`) and is sent
//! again with exponential backoff, while the owner counts lines beyond the
//! queue's bound as lost; when the collector is back, the queue drains.
//! The runtime driving the requests lives here, on the writer's thread.

mod record;
mod transport;

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;

use super::format::Formatter;
use super::writer::Chunk;
use crate::config::OtlpSink;
use transport::Transport;

/// Records per request at most: well under the 4 MiB receivers accept by
/// default, even with long command lines.
const MAX_RECORDS: usize = 1024;
const MAX_BYTES: usize = 1 << 20;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// At a stop (or the sink's removal), what is queued gets this long.
const LAST_TRY: Duration = Duration::from_secs(2);

/// What an attempt did with the queued lines: delivered, lost (refused
/// for good, or rejected by the receiver), the rest still queued.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Delivery {
    pub written: u64,
    pub lost: u64,
    pub error: Option<String>,
    /// The error is a retryable one: the lines it concerns stay queued.
    pub retrying: bool,
}

#[derive(Debug)]
pub(super) struct Exporter {
    config: OtlpSink,
    /// A current-thread runtime: requests run only within `block_on`,
    /// on the writer's thread.
    rt: Option<tokio::runtime::Runtime>,
    transport: Result<Transport, String>,
    resource: Resource,
    scope: InstrumentationScope,
    /// The lines queued here, oldest first; `sent` of the first chunk's
    /// events are already delivered.
    pending: VecDeque<Chunk>,
    sent: usize,
    backoff: Duration,
    retry_at: Option<Instant>,
}

impl Exporter {
    pub fn new(config: OtlpSink) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
        let (rt, transport) = match rt {
            Ok(rt) => {
                let t = {
                    let _inside = rt.enter();
                    Transport::new(&config)
                };
                (Some(rt), t)
            }
            Err(e) => (None, Err(format!("starting its runtime: {e}"))),
        };
        Self {
            config,
            rt,
            transport,
            resource: record::resource(),
            scope: record::scope(),
            pending: VecDeque::new(),
            sent: 0,
            backoff: FIRST_BACKOFF,
            retry_at: None,
        }
    }

    /// Another endpoint (a reload): what is queued goes there.
    pub fn reconfigured(mut old: Box<Self>, config: OtlpSink) -> Box<Self> {
        let mut new = Box::new(Self::new(config));
        new.pending = std::mem::take(&mut old.pending);
        new.sent = old.sent;
        new
    }

    /// Lines queued here and not yet delivered or lost.
    pub fn held(&self) -> u64 {
        let all: usize = self.pending.iter().map(Chunk::len).sum();
        (all - self.sent) as u64
    }

    /// When to send what is held here: after the backoff, or now (lines
    /// carried over from another endpoint).
    pub fn retry_at(&self) -> Option<Instant> {
        if self.pending.is_empty() {
            return None;
        }
        Some(self.retry_at.unwrap_or_else(Instant::now))
    }

    /// Takes the lines over and sends what is queued, unless backing off.
    pub fn take(&mut self, f: &mut Formatter, lines: &mut Vec<Chunk>) -> Delivery {
        self.pending.extend(lines.drain(..));
        match self.retry_at {
            Some(at) if Instant::now() < at => Delivery::default(),
            _ => self.send(f, None),
        }
    }

    /// The backoff is over: another try.
    pub fn retry(&mut self, f: &mut Formatter) -> Delivery {
        self.send(f, None)
    }

    /// The queue is closed: one last try, bounded in time; what it cannot
    /// deliver is lost.
    pub fn finish(&mut self, f: &mut Formatter) -> Delivery {
        let mut d = self.send(f, Some(Instant::now() + LAST_TRY));
        d.lost += self.held();
        d.retrying = false;
        self.pending.clear();
        self.sent = 0;
        d
    }

    /// Sends everything queued, a request at a time, until it is all
    /// delivered or an attempt fails in a way worth retrying.
    fn send(&mut self, f: &mut Formatter, deadline: Option<Instant>) -> Delivery {
        let mut d = Delivery::default();
        while !self.pending.is_empty() {
            let limit = deadline.map_or(self.config.timeout, |at| {
                at.saturating_duration_since(Instant::now())
                    .min(self.config.timeout)
            });
            if limit.is_zero() {
                break;
            }
            let records = self.next_records(f);
            let n = records.len() as u64;
            match self.export(records, limit) {
                Ok(accepted) => {
                    let rejected = accepted.rejected.min(n);
                    d.written += n - rejected;
                    d.lost += rejected;
                    if rejected > 0 || accepted.message.is_some() {
                        let why = accepted.message.unwrap_or_default();
                        d.error = Some(format!(
                            "{}: rejected {rejected} of {n} records: {why}",
                            self.config.endpoint
                        ));
                    }
                    self.advance(n as usize);
                    self.backoff = FIRST_BACKOFF;
                    self.retry_at = None;
                }
                Err(failed) if failed.retry => {
                    d.error = Some(format!("{}: {}", self.config.endpoint, failed.message));
                    d.retrying = true;
                    self.retry_at = Some(Instant::now() + self.backoff);
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    return d;
                }
                Err(failed) => {
                    d.lost += n;
                    d.error = Some(format!("{}: {}", self.config.endpoint, failed.message));
                    self.advance(n as usize);
                }
            }
        }
        d
    }

    fn export(
        &mut self,
        records: Vec<LogRecord>,
        limit: Duration,
    ) -> Result<transport::Accepted, transport::Failed> {
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(self.resource.clone()),
                scope_logs: vec![ScopeLogs {
                    scope: Some(self.scope.clone()),
                    log_records: records,
                    ..ScopeLogs::default()
                }],
                ..ResourceLogs::default()
            }],
        };
        let broken = |message: &str| transport::Failed {
            retry: false,
            message: message.to_string(),
        };
        let rt = self.rt.as_ref().ok_or_else(|| broken("no runtime"))?;
        let t = self.transport.as_mut().map_err(|e| broken(e))?;
        rt.block_on(t.send(request, limit))
    }

    /// The next request's records, from the oldest queued line on.
    fn next_records(&self, f: &mut Formatter) -> Vec<LogRecord> {
        let now = SystemTime::now();
        let mut records = Vec::new();
        let mut bytes = 0;
        for ev in self.pending.iter().flat_map(Chunk::iter).skip(self.sent) {
            let r = record::log_record(f, ev, now);
            let len = r.encoded_len();
            if !records.is_empty() && bytes + len > MAX_BYTES {
                break;
            }
            bytes += len;
            records.push(r);
            if records.len() == MAX_RECORDS {
                break;
            }
        }
        records
    }

    /// Drops the first `n` queued lines (delivered or lost).
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.pending.front() else {
                break;
            };
            let left = front.len() - self.sent;
            if n < left {
                self.sent += n;
                return;
            }
            n -= left;
            self.sent = 0;
            self.pending.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::OtlpProtocol;
    use crate::sinks::format::tests::event;
    use crate::sinks::EventKind;

    /// A port nothing listens on: bound, then closed.
    fn closed_endpoint() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    }

    fn chunk(n: usize) -> Chunk {
        let batch = Arc::new((0..n).map(|_| event(EventKind::Connect)).collect::<Vec<_>>());
        Chunk::new(&batch, (0..n as u32).collect())
    }

    #[test]
    fn a_collector_that_is_down_keeps_lines_held_until_the_last_try() {
        for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
            let mut x = Exporter::new(OtlpSink {
                endpoint: closed_endpoint()
                    + if protocol == OtlpProtocol::Grpc {
                        ""
                    } else {
                        "/v1/logs"
                    },
                protocol,
                headers: vec![("x-tenant".into(), "t".into())],
                timeout: Duration::from_secs(2),
            });
            let mut f = Formatter::default();
            let d = x.take(&mut f, &mut vec![chunk(3), chunk(2)]);
            assert_eq!(
                (d.written, d.lost, d.retrying),
                (0, 0, true),
                "{protocol:?}: {d:?}"
            );
            assert!(d.error.unwrap().contains("127.0.0.1"), "{protocol:?}");
            assert_eq!(x.held(), 5);
            // Within the backoff, more lines are only held.
            let d = x.take(&mut f, &mut vec![chunk(1)]);
            assert_eq!(d, Delivery::default());
            assert!(x.retry_at().unwrap() > Instant::now());
            let d = x.finish(&mut f);
            assert_eq!((d.written, d.lost), (0, 6), "{protocol:?}");
            assert_eq!((x.held(), x.retry_at()), (0, None));
        }
    }

    #[test]
    fn advancing_drops_delivered_lines_across_chunks() {
        let mut x = Exporter::new(OtlpSink {
            endpoint: closed_endpoint(),
            protocol: OtlpProtocol::Grpc,
            headers: Vec::new(),
            timeout: Duration::from_secs(1),
        });
        x.pending.extend([chunk(3), chunk(2), chunk(4)]);
        x.advance(4);
        assert_eq!((x.pending.len(), x.sent, x.held()), (2, 1, 5));
        assert_eq!(x.next_records(&mut Formatter::default()).len(), 5);
        x.advance(5);
        assert_eq!((x.pending.len(), x.sent, x.held()), (0, 0, 0));
    }
}
