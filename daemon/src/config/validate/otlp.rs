//! Validation of an `[[event_sink]]` of type "otlp": the endpoint, protocol,
//! headers and timeout, each error at its key.

use std::time::Duration;

use toml::Spanned;

use super::super::raw::RawEventSink;
use super::super::sink::DEFAULT_OTLP_TIMEOUT;
use super::super::{OtlpProtocol, OtlpSink};
use super::{duration, Ctx};

/// The HTTP/protobuf path of the logs signal, added to a bare endpoint
/// (as OTEL_EXPORTER_OTLP_ENDPOINT is treated).
const HTTP_LOGS_PATH: &str = "/v1/logs";
const MIN_TIMEOUT: Duration = Duration::from_millis(100);
const MAX_TIMEOUT: Duration = Duration::from_secs(300);

pub(super) fn sink(ctx: &mut Ctx<'_>, r: &RawEventSink, key: &str) -> Option<OtlpSink> {
    let protocol = match &r.protocol {
        None => Some(OtlpProtocol::Grpc),
        Some(p) => match p.get_ref().as_str() {
            "grpc" => Some(OtlpProtocol::Grpc),
            "http/protobuf" => Some(OtlpProtocol::HttpProtobuf),
            other => {
                let msg = format!("unknown protocol `{other}`; expected \"grpc\" or \"http/protobuf\"");
                ctx.spanned(p, &format!("{key}.protocol"), msg);
                None
            }
        },
    };
    let endpoint = match &r.endpoint {
        None => {
            let msg = "an otlp sink needs `endpoint` (e.g. \"http://127.0.0.1:4317\")";
            ctx.spanned(&r.kind, &format!("{key}.endpoint"), msg);
            None
        }
        // Checked against the protocol's rules once that is known.
        Some(e) => protocol.and_then(|p| endpoint(ctx, e, p, &format!("{key}.endpoint"))),
    };
    let headers = r
        .headers
        .as_ref()
        .map_or(Some(Vec::new()), |h| headers(ctx, h, &format!("{key}.headers")));
    let timeout = match &r.timeout {
        None => Some(DEFAULT_OTLP_TIMEOUT),
        Some(v) => duration(ctx, v, &format!("{key}.timeout")).and_then(|d| {
            if (MIN_TIMEOUT..=MAX_TIMEOUT).contains(&d) {
                return Some(d);
            }
            let msg = format!("`{}` is out of range 100ms..=5m", v.get_ref());
            ctx.spanned(v, &format!("{key}.timeout"), msg);
            None
        }),
    };
    Some(OtlpSink {
        endpoint: endpoint?,
        protocol: protocol?,
        headers: headers?,
        timeout: timeout?,
    })
}

/// `http://HOST:PORT`, with a path only for HTTP/protobuf. TLS is not
/// built in: a collector on the node (or a sidecar) is the usual peer.
fn endpoint(ctx: &mut Ctx<'_>, v: &Spanned<String>, protocol: OtlpProtocol, key: &str) -> Option<String> {
    let text = v.get_ref();
    let why = match text.parse::<http::Uri>() {
        Err(e) => Err(format!("`{text}` is not a URL: {e}")),
        Ok(uri) => check_uri(&uri, protocol).map_err(|why| format!("`{text}`: {why}")),
    };
    match why {
        Ok(url) => Some(url),
        Err(msg) => {
            ctx.spanned(v, key, msg);
            None
        }
    }
}

fn check_uri(uri: &http::Uri, protocol: OtlpProtocol) -> Result<String, String> {
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(
                "https is not supported (no TLS is built in); send to a collector on the node over http://"
                    .into(),
            )
        }
        Some(other) => return Err(format!("the scheme is `{other}`; expected http://")),
        None => return Err("not an absolute URL; expected http://HOST:PORT".into()),
    }
    let authority = uri.authority().ok_or("names no host")?;
    if authority.as_str().contains('@') {
        return Err("credentials in the URL are not sent; use `headers`".into());
    }
    if authority.host().is_empty() {
        return Err("names no host".into());
    }
    if authority.port_u16().is_none() {
        return Err("names no port; OTLP listens on 4317 (grpc) or 4318 (http/protobuf)".into());
    }
    if uri.query().is_some() {
        return Err("a query is not allowed".into());
    }
    let path = uri.path();
    let bare = path.is_empty() || path == "/";
    match protocol {
        OtlpProtocol::Grpc if !bare => Err(format!(
            "a path (`{path}`) is not used by gRPC, whose method has its own; give http://HOST:PORT"
        )),
        OtlpProtocol::Grpc => Ok(format!("http://{authority}")),
        OtlpProtocol::HttpProtobuf if bare => Ok(format!("http://{authority}{HTTP_LOGS_PATH}")),
        OtlpProtocol::HttpProtobuf => Ok(format!("http://{authority}{path}")),
    }
}

/// Header names and values as HTTP (and gRPC metadata) allow them; names
/// lowercased, as gRPC requires and HTTP ignores.
fn headers(
    ctx: &mut Ctx<'_>,
    table: &Spanned<std::collections::BTreeMap<String, Spanned<String>>>,
    key: &str,
) -> Option<Vec<(String, String)>> {
    let mut ok = true;
    let mut out = Vec::new();
    for (name, value) in table.get_ref() {
        let lower = name.to_ascii_lowercase();
        let bad = if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            Some(format!("`{name}` is not a header name"))
        } else if lower.starts_with("grpc-") || matches!(lower.as_str(), "content-type" | "te" | "host") {
            Some(format!("`{name}` is set by the exporter itself"))
        } else if lower.ends_with("-bin") {
            Some(format!("`{name}`: binary metadata is not supported"))
        } else if http::HeaderValue::from_str(value.get_ref()).is_err() {
            Some(format!(
                "the value of `{name}` is not a valid header value (control characters?)"
            ))
        } else {
            None
        };
        match bad {
            Some(msg) => {
                ctx.spanned(value, &format!("{key}.{name}"), msg);
                ok = false;
            }
            None => out.push((lower, value.get_ref().clone())),
        }
    }
    ok.then_some(out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::super::{parse_config, SinkKind};
    use super::*;

    const F: &str = "/etc/connectracer/connectracer.toml";

    fn otlp(text: &str) -> OtlpSink {
        let c = parse_config(Path::new(F), text).unwrap();
        match &c.log.sinks[0].kind {
            SinkKind::Otlp(o) => o.clone(),
            other => panic!("{other:?}"),
        }
    }

    use super::super::errors_of as errors;

    #[test]
    fn otlp_sinks_parse_with_their_defaults() {
        let grpc = otlp("[[event_sink]]\ntype = \"otlp\"\nendpoint = \"http://127.0.0.1:4317\"\n");
        assert_eq!(
            grpc,
            OtlpSink {
                endpoint: "http://127.0.0.1:4317".into(),
                protocol: OtlpProtocol::Grpc,
                headers: Vec::new(),
                timeout: DEFAULT_OTLP_TIMEOUT,
            }
        );
        let http = otlp(
            "[[event_sink]]\ntype = \"otlp\"\nendpoint = \"http://[::1]:4318\"\nprotocol = \"http/protobuf\"\n\
             headers = { Authorization = \"Bearer x\", x-tenant = \"a\" }\ntimeout = \"2s\"\n",
        );
        assert_eq!(http.endpoint, "http://[::1]:4318/v1/logs");
        assert_eq!(http.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(
            http.headers,
            [
                ("authorization".to_string(), "Bearer x".to_string()),
                ("x-tenant".to_string(), "a".to_string())
            ]
        );
        assert_eq!(http.timeout, Duration::from_secs(2));
        let path = otlp(
            "[[event_sink]]\ntype = \"otlp\"\nendpoint = \"http://collector:80/otlp/v1/logs\"\nprotocol = \"http/protobuf\"\n",
        );
        assert_eq!(path.endpoint, "http://collector:80/otlp/v1/logs");
    }

    #[test]
    fn every_otlp_error_names_file_line_and_key() {
        let e = errors(
            r#"[[event_sink]]
type = "otlp"
[[event_sink]]
type = "otlp"
name = "a"
endpoint = "https://collector:4317"
protocol = "http/json"
[[event_sink]]
type = "otlp"
name = "b"
endpoint = "http://collector"
headers = { "grpc-timeout" = "1", ok = "line\nbreak" }
timeout = "1h"
[[event_sink]]
type = "otlp"
name = "c"
endpoint = "http://collector:4317/v1/logs"
[[event_sink]]
type = "otlp"
name = "d"
endpoint = "not a url"
[[event_sink]]
type = "file"
path = "/var/log/x.jsonl"
endpoint = "http://collector:4317"
timeout = "1s"
"#,
        );
        assert_eq!(
            e,
            [
                format!("{F}:2:8: event_sink[0].endpoint: an otlp sink needs `endpoint` (e.g. \"http://127.0.0.1:4317\")"),
                format!("{F}:7:12: event_sink[1].protocol: unknown protocol `http/json`; expected \"grpc\" or \"http/protobuf\""),
                format!("{F}:11:12: event_sink[2].endpoint: `http://collector`: names no port; OTLP listens on 4317 (grpc) or 4318 (http/protobuf)"),
                format!("{F}:12:30: event_sink[2].headers.grpc-timeout: `grpc-timeout` is set by the exporter itself"),
                format!("{F}:12:40: event_sink[2].headers.ok: the value of `ok` is not a valid header value (control characters?)"),
                format!("{F}:13:11: event_sink[2].timeout: `1h` is out of range 100ms..=5m"),
                format!("{F}:17:12: event_sink[3].endpoint: `http://collector:4317/v1/logs`: a path (`/v1/logs`) is not used by gRPC, whose method has its own; give http://HOST:PORT"),
                format!("{F}:21:12: event_sink[4].endpoint: `not a url` is not a URL: invalid uri character"),
                format!("{F}:25:12: event_sink[5].endpoint: `endpoint` applies only to type = \"otlp\", not \"file\""),
                format!("{F}:26:11: event_sink[5].timeout: `timeout` applies only to type = \"otlp\", not \"file\""),
            ]
        );
        let https = errors("[[event_sink]]\ntype = \"otlp\"\nendpoint = \"https://c:4317\"\n");
        assert_eq!(
            https,
            [format!("{F}:3:12: event_sink[0].endpoint: `https://c:4317`: https is not supported (no TLS is built in); send to a collector on the node over http://")]
        );
    }
}
