//! The validated model of `[[event_sink]]`: where event lines go, and which.

use std::path::PathBuf;
use std::time::Duration;

use connectracer_proto::Verdict;

use super::LogFormat;

/// Lines buffered per sink before new ones are counted as lost.
pub const DEFAULT_QUEUE: usize = 65536;
pub const DEFAULT_MAX_SIZE: u64 = 100 << 20;
pub const DEFAULT_KEEP: u32 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkConfig {
    /// Unique among the sinks; names the sink in stats, metrics and warnings.
    pub name: String,
    pub kind: SinkKind,
    /// Lines waiting for the writer at most; beyond it lines are lost (counted).
    pub queue: usize,
    pub filter: SinkFilter,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkKind {
    /// `None`: `[log] format` (and `--log-format`).
    Stdout {
        format: Option<LogFormat>,
    },
    Journal,
    File(FileSink),
    /// OpenTelemetry logs to a collector.
    Otlp(OtlpSink),
    /// Counts what it is given and writes nothing.
    Discard,
}

impl SinkKind {
    /// As written in the configuration's `type` key.
    pub fn as_str(&self) -> &'static str {
        match self {
            SinkKind::Stdout { .. } => "stdout",
            SinkKind::Journal => "journal",
            SinkKind::File(_) => "file",
            SinkKind::Otlp(_) => "otlp",
            SinkKind::Discard => "none",
        }
    }
}

/// A JSON Lines file rotated by size: `path`, then `path.1` (newest) to
/// `path.KEEP`, each `.gz` when compressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSink {
    pub path: PathBuf,
    pub max_size: u64,
    pub keep: u32,
    pub compress: bool,
}

/// OTLP logs export: one `ExportLogsServiceRequest` per batch of events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpSink {
    /// Where requests go: `http://HOST:PORT` for gRPC; the full URL
    /// (`/v1/logs` added to a bare one) for HTTP.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// Sent with every request (gRPC metadata or HTTP headers); names are
    /// lowercase.
    pub headers: Vec<(String, String)>,
    /// A request's time limit, connecting included.
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

impl OtlpProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        }
    }
}

pub const DEFAULT_OTLP_TIMEOUT: Duration = Duration::from_secs(10);

/// Which events a sink takes; `None` in a field: any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkFilter {
    pub events: Option<Vec<EventKind>>,
    pub verdicts: Option<Vec<Verdict>>,
    pub unit: Option<glob::Pattern>,
    pub container: Option<glob::Pattern>,
    pub exe: Option<glob::Pattern>,
}

impl SinkFilter {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// What happened to a connection, as an event line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Connect,
    Send,
    Established,
    Failed,
    Closed,
    /// Refused by the egress policy.
    Denied,
}

impl EventKind {
    pub const ALL: [EventKind; 6] = [
        EventKind::Connect,
        EventKind::Send,
        EventKind::Established,
        EventKind::Failed,
        EventKind::Closed,
        EventKind::Denied,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Connect => "connect",
            EventKind::Send => "send",
            EventKind::Established => "established",
            EventKind::Failed => "failed",
            EventKind::Closed => "closed",
            EventKind::Denied => "denied",
        }
    }
}

#[cfg(test)]
mod kind_tests {
    use super::EventKind;

    /// Watch filters are checked against the API's list of kinds.
    #[test]
    fn the_api_knows_every_event_kind() {
        let names = EventKind::ALL.map(EventKind::as_str);
        assert_eq!(names, connectracer_proto::api::EVENT_KINDS);
    }
}
