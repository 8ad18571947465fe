//! D-Bus client helper for the tests, on the bus in DBUS_SYSTEM_BUS_ADDRESS.
//!
//! ct-bus listen SECONDS          print `{"ready":true}` once subscribed, then one
//!                                JSON line per signal from org.connectracer.Tracer1
//!                                (`member` is INTERFACE.MEMBER; PropertiesChanged
//!                                also lists the changed properties)
//! ct-bus latency N SOCKET [PORT]  N GetVersion calls (with PORT: `who --local-port
//!                                PORT` lookups) through the proxy and N over the
//!                                varlink socket; prints per-call latencies

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use connectracer_proto::dbus::{TracerProxy, NAME};
use futures_util::StreamExt;
use serde_json::json;

async fn listen(secs: u64) -> anyhow::Result<()> {
    let conn = zbus::Connection::system().await.context("system bus")?;
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(NAME)
        .build()?;
    let mut stream = zbus::MessageStream::for_match_rule(rule, &conn, None).await?;
    println!("{}", json!({ "ready": true }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, stream.next()).await {
        let msg = msg?;
        let h = msg.header();
        let interface = h.interface().map(|i| i.to_string()).unwrap_or_default();
        let member = format!(
            "{interface}.{}",
            h.member().map(|m| m.to_string()).unwrap_or_default()
        );
        let changed: Vec<String> = if interface == "org.freedesktop.DBus.Properties" {
            msg.body()
                .deserialize::<(String, HashMap<String, zbus::OwnedVariant>, Vec<String>)>()
                .map(|(_, props, _)| props.into_keys().collect())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        println!("{}", json!({ "member": member, "changed": changed }));
        std::io::stdout().flush()?;
    }
    Ok(())
}

fn percentiles(mut v: Vec<Duration>) -> serde_json::Value {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    json!({ "p50_us": at(0.5), "p99_us": at(0.99), "max_us": at(1.0) })
}

async fn latency(n: usize, socket: &str, local_port: Option<u16>) -> anyhow::Result<()> {
    let conn = zbus::Connection::system().await.context("system bus")?;
    let proxy = TracerProxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?;
    let mut bus = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        match local_port {
            Some(p) => drop(
                proxy
                    .who_local_port(p)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            ),
            None => drop(proxy.get_version().await.map_err(|e| anyhow::anyhow!("{e}"))?),
        }
        bus.push(t.elapsed());
    }
    let call = match local_port {
        Some(p) => {
            format!("{{\"method\":\"org.connectracer.Tracer.Who\",\"parameters\":{{\"local_port\":{p}}}}}\0")
        }
        None => "{\"method\":\"org.connectracer.Tracer.GetVersion\"}\0".to_string(),
    };
    let s = UnixStream::connect(socket).context("control socket")?;
    let mut rd = BufReader::new(s.try_clone()?);
    let mut wr = s;
    let mut varlink = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        wr.write_all(call.as_bytes())?;
        let mut buf = Vec::new();
        rd.read_until(0, &mut buf)?;
        varlink.push(t.elapsed());
    }
    println!(
        "{}",
        json!({ "name": NAME, "calls": n, "dbus": percentiles(bus), "varlink": percentiles(varlink) })
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["listen", secs] => rt.block_on(listen(secs.parse()?)),
        ["latency", n, socket] => rt.block_on(latency(n.parse()?, socket, None)),
        ["latency", n, socket, port] => rt.block_on(latency(n.parse()?, socket, Some(port.parse()?))),
        _ => bail!("usage: ct-bus listen SECONDS | ct-bus latency N SOCKET [PORT]"),
    }
}
