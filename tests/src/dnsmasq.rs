//! A real DNS server for the tests that follow hostnames.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A real DNS server (dnsmasq) on loopback, answering from a hosts file the
/// test rewrites. Killed when dropped.
#[derive(Debug)]
pub struct Dnsmasq {
    child: Child,
    pub port: u16,
    hosts: PathBuf,
}

impl Dnsmasq {
    /// `records`: lines of a hosts file ("127.0.0.5 api.test"); every answer
    /// has a TTL of `ttl` seconds.
    pub fn start(records: &str, ttl: u32) -> Self {
        let port = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("free port");
            s.local_addr().expect("addr").port()
        };
        Self::start_on("127.0.0.1", port, records, ttl)
    }

    /// On `addr`:`port`, e.g. port 53 of an otherwise unused loopback
    /// address for clients that cannot be given a port (libc's resolver).
    pub fn start_on(addr: &str, port: u16, records: &str, ttl: u32) -> Self {
        Self::start_with(addr, port, records, ttl, &[])
    }

    /// With more dnsmasq options (`--cname=alias,target`, ...).
    pub fn start_with(addr: &str, port: u16, records: &str, ttl: u32, extra: &[&str]) -> Self {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let hosts = std::env::temp_dir().join(format!("connectracer-test-{}-{n}.hosts", std::process::id()));
        std::fs::write(&hosts, records).expect("hosts file");
        let bin = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "/sbin/dnsmasq"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("dnsmasq is not installed (scripts/install-deps installs it)");
        let child = Command::new(bin)
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
            ])
            .arg(format!("--listen-address={addr}"))
            .args(["--user=root", "--pid-file", "--local=/test/"])
            .arg(format!("--port={port}"))
            .arg(format!("--addn-hosts={}", hosts.display()))
            .arg(format!("--local-ttl={ttl}"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting dnsmasq");
        // Ready once it answers on TCP.
        for _ in 0..100 {
            if std::net::TcpStream::connect((addr, port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port, hosts }
    }

    /// Replaces the records and makes dnsmasq re-read them.
    pub fn set_records(&self, records: &str) {
        std::fs::write(&self.hosts, records).expect("hosts file");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::SIGHUP,
        )
        .expect("SIGHUP dnsmasq");
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.hosts);
    }
}
