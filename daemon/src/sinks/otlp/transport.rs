//! One OTLP export request over gRPC (the generated LogsService client) or
//! HTTP/protobuf (a POST of the same message), and what its answer means:
//! accepted (maybe partly), worth retrying, or refused for good.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use prost::Message as _;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::config::{OtlpProtocol, OtlpSink};

/// The receiver took the request; `rejected` of its records it did not
/// keep (OTLP's partial success), with its reason.
#[derive(Debug, PartialEq, Eq)]
pub struct Accepted {
    pub rejected: u64,
    pub message: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Failed {
    /// The OTLP specification's retryable answers (and no answer at all):
    /// the same request may succeed later.
    pub retry: bool,
    pub message: String,
}

pub enum Transport {
    Grpc {
        client: LogsServiceClient<Channel>,
        metadata: MetadataMap,
    },
    Http {
        client: Box<Client<HttpConnector, Full<Bytes>>>,
        uri: http::Uri,
        headers: http::HeaderMap,
    },
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Grpc { .. } => "Transport::Grpc",
            Transport::Http { .. } => "Transport::Http",
        })
    }
}

impl Transport {
    /// Connects lazily (on the first request, and again after a failure);
    /// must be called within the runtime that will drive it. The endpoint
    /// and headers were validated with the configuration.
    pub fn new(cfg: &OtlpSink) -> Result<Self, String> {
        match cfg.protocol {
            OtlpProtocol::Grpc => {
                let channel = Endpoint::from_shared(cfg.endpoint.clone())
                    .map_err(|e| format!("{}: {e}", cfg.endpoint))?
                    .connect_timeout(cfg.timeout)
                    .connect_lazy();
                let mut metadata = MetadataMap::new();
                for (k, v) in &cfg.headers {
                    let key =
                        MetadataKey::from_bytes(k.as_bytes()).map_err(|e| format!("header {k}: {e}"))?;
                    let value =
                        MetadataValue::try_from(v.as_str()).map_err(|e| format!("header {k}: {e}"))?;
                    metadata.insert(key, value);
                }
                Ok(Transport::Grpc {
                    client: LogsServiceClient::new(channel),
                    metadata,
                })
            }
            OtlpProtocol::HttpProtobuf => {
                let uri = cfg
                    .endpoint
                    .parse()
                    .map_err(|e| format!("{}: {e}", cfg.endpoint))?;
                let mut headers = http::HeaderMap::new();
                for (k, v) in &cfg.headers {
                    let name =
                        http::HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("header {k}: {e}"))?;
                    let value = http::HeaderValue::from_str(v).map_err(|e| format!("header {k}: {e}"))?;
                    headers.insert(name, value);
                }
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(cfg.timeout));
                connector.set_nodelay(true);
                let client = Box::new(Client::builder(TokioExecutor::new()).build(connector));
                Ok(Transport::Http { client, uri, headers })
            }
        }
    }

    pub async fn send(
        &mut self,
        request: ExportLogsServiceRequest,
        timeout: Duration,
    ) -> Result<Accepted, Failed> {
        let answer = match self {
            Transport::Grpc { client, metadata } => {
                tokio::time::timeout(timeout, grpc(client, metadata, request, timeout)).await
            }
            Transport::Http { client, uri, headers } => {
                tokio::time::timeout(timeout, http(client, uri, headers, request)).await
            }
        };
        match answer {
            Ok(r) => r.map(accepted),
            Err(_) => Err(Failed {
                retry: true,
                message: format!("no answer within {}", humantime::format_duration(timeout)),
            }),
        }
    }
}

fn accepted(r: ExportLogsServiceResponse) -> Accepted {
    let Some(p) = r.partial_success else {
        return Accepted {
            rejected: 0,
            message: None,
        };
    };
    Accepted {
        rejected: u64::try_from(p.rejected_log_records).unwrap_or(0),
        message: (!p.error_message.is_empty()).then_some(p.error_message),
    }
}

async fn grpc(
    client: &mut LogsServiceClient<Channel>,
    metadata: &MetadataMap,
    request: ExportLogsServiceRequest,
    timeout: Duration,
) -> Result<ExportLogsServiceResponse, Failed> {
    let mut request = tonic::Request::new(request);
    *request.metadata_mut() = metadata.clone();
    request.set_timeout(timeout);
    match client.export(request).await {
        Ok(r) => Ok(r.into_inner()),
        Err(status) => Err(Failed {
            retry: grpc_retryable(status.code()),
            message: format!("gRPC {:?}: {}", status.code(), status.message()),
        }),
    }
}

/// The OTLP specification's list ("Failures", OTLP/gRPC): these may
/// succeed if sent again; every other code will not.
fn grpc_retryable(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
    )
}

async fn http(
    client: &Client<HttpConnector, Full<Bytes>>,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    request: ExportLogsServiceRequest,
) -> Result<ExportLogsServiceResponse, Failed> {
    let mut req = http::Request::post(uri.clone())
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(Bytes::from(request.encode_to_vec())))
        .map_err(|e| Failed {
            retry: false,
            message: format!("building the request: {e}"),
        })?;
    req.headers_mut().extend(headers.clone());
    let response = client.request(req).await.map_err(|e| Failed {
        retry: true,
        message: format!("{uri}: {}", error_chain(&e)),
    })?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| Failed {
        retry: true,
        message: format!("{uri}: reading the answer: {e}"),
    })?;
    if status.is_success() {
        return ExportLogsServiceResponse::decode(body.to_bytes()).map_err(|e| Failed {
            // Taken, but the answer is not OTLP: sending again would duplicate.
            retry: false,
            message: format!("{uri}: the answer is not an ExportLogsServiceResponse: {e}"),
        });
    }
    Err(Failed {
        retry: http_retryable(status),
        message: format!("{uri}: HTTP {status}"),
    })
}

/// OTLP/HTTP: 429, 502, 503 and 504 may succeed later.
fn http_retryable(status: http::StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504)
}

/// hyper's errors say "client error (Connect)" and keep the cause in
/// their source: the whole chain, as `{:#}` would print it.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_answers_follow_the_otlp_specification() {
        assert!(grpc_retryable(tonic::Code::Unavailable));
        assert!(grpc_retryable(tonic::Code::ResourceExhausted));
        assert!(!grpc_retryable(tonic::Code::InvalidArgument));
        assert!(!grpc_retryable(tonic::Code::Unauthenticated));
        for (code, retry) in [
            (429, true),
            (503, true),
            (504, true),
            (400, false),
            (401, false),
            (500, false),
        ] {
            assert_eq!(
                http_retryable(http::StatusCode::from_u16(code).unwrap()),
                retry,
                "{code}"
            );
        }
    }
}
