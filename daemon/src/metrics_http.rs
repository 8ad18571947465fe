//! The HTTP `/metrics` listener. Binding to loopback is not access control:
//! every local user can read it, while the control socket shows other
//! users' connections only to root and group connectracer. So HTTP serves
//! aggregates unless `metrics.http_detail` says otherwise; the series that
//! name processes (comm, unit, container, destination port, policy rule)
//! stay in the node_exporter textfile, which root writes where the
//! administrator chose.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Families whose labels say who connected where, or whose processes use
/// a GPU.
pub const DETAILED: [&str; 5] = [
    "connectracer_connections_total",
    "connectracer_policy_verdicts_total",
    "connectracer_gpu_process_memory_bytes",
    "connectracer_gpu_process_sm_utilization_ratio",
    "connectracer_gpu_process_memory_utilization_ratio",
];

const MAX_REQUEST: usize = 8192;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The metric family a line of the text format belongs to.
pub fn family(line: &str) -> &str {
    let rest = line
        .strip_prefix("# HELP ")
        .or_else(|| line.strip_prefix("# TYPE "))
        .unwrap_or(line);
    let end = rest.find(['{', ' ']).unwrap_or(rest.len());
    let name = &rest[..end];
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

/// The whole exposition, rendered per request.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// `text` without the detailed families.
pub fn aggregate_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if !DETAILED.contains(&family(line)) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Binds now (a port in use fails the start before anything is attached)
/// and serves until the runtime ends.
pub fn spawn(addr: SocketAddr, render: Render, detail: Arc<AtomicBool>) -> std::io::Result<()> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(std_listener)?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let (render, detail) = (render.clone(), detail.clone());
            tokio::spawn(async move {
                let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &render, &detail)).await;
            });
        }
    });
    Ok(())
}

async fn answer(mut stream: TcpStream, render: &Render, detail: &AtomicBool) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or_default().split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let text = render();
            let text = if detail.load(Ordering::Relaxed) {
                text
            } else {
                aggregate_only(&text)
            };
            ("200 OK", text)
        }
        ("GET" | "HEAD", _) => ("404 Not Found", "only /metrics is served here\n".into()),
        _ => ("405 Method Not Allowed", "GET /metrics\n".into()),
    };
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes()).await?;
    if method != "HEAD" {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detailed_families_are_left_out_whole() {
        let text = "# HELP connectracer_connections_total Connections\n\
# TYPE connectracer_connections_total counter\n\
connectracer_connections_total{host=\"\",port=\"443\",comm=\"curl\"} 3\n\
# TYPE connectracer_connection_outcomes_total counter\n\
connectracer_connection_outcomes_total{protocol=\"tcp\",outcome=\"established\"} 3\n\
connectracer_policy_verdicts_total{verdict=\"deny\",rule=\"2\",unit=\"x.service\"} 1\n\
connectracer_connection_duration_seconds_bucket{host=\"api\",le=\"1\"} 2\n\
connectracer_connections_total_other 1\n";
        let out = aggregate_only(text);
        assert!(!out.contains("comm=") && !out.contains("rule="), "{out}");
        assert!(out.contains("connectracer_connection_outcomes_total{protocol=\"tcp\""));
        assert!(out.contains("connectracer_connection_duration_seconds_bucket"));
        assert!(out.contains("connectracer_connections_total_other 1"));
        assert!(!out.contains("# TYPE connectracer_connections_total counter"));
    }
}
