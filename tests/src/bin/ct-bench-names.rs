//! DNS correlation benchmark: a lookup loop through a real resolver
//! (dnsmasq on loopback) with no daemon, with the daemon capturing answers
//! and with capture off, interleaved in every repetition and reported as
//! ratios; then the share of connections named in a mixed workload
//! (processes that look a name up then connect, and processes that connect
//! to an address they were given). Reports; never asserts.
//!
//! ct-bench-names [LOOKUPS] [REPETITIONS] [MIXED_PROCESSES]   (run as root)

use std::time::Duration;

use connectracer_tests::bench::median;
use connectracer_tests::{probe, tcp_server, Daemon, Dnsmasq, TestCgroup};

const SCENARIOS: [(&str, Option<&str>); 3] = [
    ("no daemon", None),
    ("trace=all, DNS answers captured", Some("")),
    (
        "trace=all, dns_answers = false",
        Some("[bpf]\ndns_answers = false\n"),
    ),
];

fn config(dns: &Dnsmasq, extra: &str) -> String {
    format!(
        "trace = \"all\"\n[log]\nevents = false\n[dns]\nnameservers = [\"127.0.0.1:{}\"]\n{extra}",
        dns.port
    )
}

/// Lookups per second of one process doing `n` in a row.
fn lookup_rate(cg: &TestCgroup, dns: &Dnsmasq, n: u32) -> anyhow::Result<f64> {
    let resolver = format!("127.0.0.1:{}", dns.port);
    let out = probe(cg, &["lookups", &resolver, "bench.test", &n.to_string()])?;
    anyhow::ensure!(out["answered"] == n, "not every lookup was answered: {out}");
    Ok(f64::from(n) / out["secs"].as_f64().unwrap_or(f64::NAN))
}

/// Of `procs` processes that resolve then connect, and as many that connect
/// to an address they were given, how many connections carry a name.
fn mixed(cg: &TestCgroup, dns: &Dnsmasq, procs: usize) -> anyhow::Result<(u64, u64)> {
    let server = tcp_server("127.0.0.9:0", 0, 0);
    let mut d = Daemon::start(cg, &config(dns, "").replace("events = false", "events = true"))?;
    let resolver = format!("127.0.0.1:{}", dns.port);
    let port = server.port().to_string();
    let dst = server.to_string();
    let mut resolved = Vec::new();
    for _ in 0..procs {
        let r = probe(cg, &["resolve", &resolver, "bench.test", &port])?;
        resolved.push(r["pid"].as_u64().unwrap_or(0));
        probe(cg, &["connect", &dst])?;
    }
    d.wait_for(Duration::from_secs(10), |s| {
        s.iter().filter(|e| e["event"] == "connect").count() >= 2 * procs
    })?;
    let named = resolved
        .iter()
        .filter(|pid| {
            d.events("connect", Some(**pid))
                .any(|e| e["dns_source"] == "process")
        })
        .count() as u64;
    Ok((named, procs as u64))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: u32 = args.first().map_or(Ok(5000), |a| a.parse())?;
    let reps: usize = args.get(1).map_or(Ok(5), |a| a.parse())?;
    let procs: usize = args.get(2).map_or(Ok(200), |a| a.parse())?;
    let dns = Dnsmasq::start("127.0.0.9 bench.test\n", 300);
    let cg = TestCgroup::new("bench-names");
    let mut rates: Vec<Vec<f64>> = SCENARIOS.iter().map(|_| Vec::new()).collect();
    for rep in 0..reps {
        for (i, (name, extra)) in SCENARIOS.iter().enumerate() {
            let daemon = extra.map(|e| Daemon::start(&cg, &config(&dns, e))).transpose()?;
            std::thread::sleep(Duration::from_secs(1));
            let r = lookup_rate(&cg, &dns, n)?;
            drop(daemon);
            eprintln!("rep {rep} {name:<40} {r:>9.0} lookups/s");
            rates[i].push(r);
        }
    }
    println!();
    println!("DNS correlation: {n} UDP lookups in a row through dnsmasq on loopback (one process, its own queries), {reps} repetitions, interleaved.");
    println!();
    println!("| scenario | lookups/s (median) | ratio to no daemon (median, min-max) |");
    println!("|---|---|---|");
    for ((name, _), rs) in SCENARIOS.iter().zip(&rates) {
        let mut ratios: Vec<f64> = rs.iter().zip(&rates[0]).map(|(r, b)| r / b).collect();
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, 0f64), |(l, h), r| (l.min(*r), h.max(*r)));
        println!(
            "| {name} | {:.0} | {:.3} ({lo:.3}-{hi:.3}) |",
            median(&mut rs.clone()),
            median(&mut ratios)
        );
    }
    let (named, total) = mixed(&cg, &dns, procs)?;
    println!();
    println!(
        "Mixed workload: {total} processes resolved a name over the network then connected, {total} connected to a given address: {named} of {total} ({:.1}%) of the first kind named by their own process's answer.",
        100.0 * named as f64 / total as f64
    );
    Ok(())
}
