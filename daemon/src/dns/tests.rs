//! The watcher against a real DNS server: a dnsmasq on loopback, on a free
//! high port, serving a hosts file the tests rewrite (SIGHUP makes dnsmasq
//! reread it). dnsmasq must be installed; a missing one fails the tests
//! rather than skipping them, so CI cannot pass without exercising DNS.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::mpsc;

use super::resolve::{SystemFiles, Tuning};
use super::{DnsConfig, DnsUpdate, DnsWatcher, HostStatus};

/// The TTL dnsmasq gives its local records (`--local-ttl`).
const TTL: Duration = Duration::from_secs(2);
/// Scheduling and process slack on a loaded two-core CI machine.
const SLACK: Duration = Duration::from_millis(1500);

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("connectracerd-dns-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Replaces a file atomically, so a reader (dnsmasq on SIGHUP, the watcher's
/// change detection) never sees it half-written.
fn write_atomically(path: &Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename temp file");
}

fn dnsmasq_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("dnsmasq"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "dnsmasq is not installed (looked in PATH, /usr/sbin, /sbin, /usr/local/sbin): \
                 the DNS watcher tests need a real DNS server; install it, e.g. `apt-get install -y dnsmasq`"
            )
        })
}

/// A port free for both UDP and TCP on 127.0.0.1 right now.
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port");
        let port = udp.local_addr().expect("local addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Waits until dnsmasq accepts TCP on its port (it binds UDP first);
/// false if it exited (port taken) or never got there.
fn wait_ready(child: &mut Child, port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A dnsmasq serving `*.test` from a hosts file, killed when dropped so a
/// failing assertion never leaves one behind.
struct Dnsmasq {
    child: Option<Child>,
    port: u16,
    hosts_file: PathBuf,
    log: PathBuf,
    _dir: TempDir,
}

impl Dnsmasq {
    fn start(hosts: &str, extra: &[String]) -> Self {
        Self::start_with_ttl(hosts, TTL, extra)
    }

    fn start_with_ttl(hosts: &str, ttl: Duration, extra: &[String]) -> Self {
        let binary = dnsmasq_binary();
        let dir = TempDir::new("dnsmasq");
        let hosts_file = dir.path().join("hosts");
        let log = dir.path().join("dnsmasq.log");
        write_atomically(&hosts_file, hosts);
        // A free port can be taken by a parallel test between the probe and
        // dnsmasq's bind; try a few.
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(&binary)
                .arg("--no-daemon")
                .arg("--conf-file=/dev/null")
                .arg("--pid-file=")
                .arg(format!("--port={port}"))
                .arg("--listen-address=127.0.0.1")
                .arg("--bind-interfaces")
                .arg("--no-resolv")
                .arg("--no-hosts")
                .arg(format!("--addn-hosts={}", hosts_file.display()))
                .arg("--local=/test/")
                .arg(format!("--local-ttl={}", ttl.as_secs()))
                .arg("--cname=alias.test,api.test")
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("create dnsmasq log"))
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
            if wait_ready(&mut child, port) {
                return Self {
                    child: Some(child),
                    port,
                    hosts_file,
                    log,
                    _dir: dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "dnsmasq did not start; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Changes the records: rewrite the hosts file, then SIGHUP.
    fn set_hosts(&self, hosts: &str) {
        write_atomically(&self.hosts_file, hosts);
        let child = self.child.as_ref().expect("dnsmasq is running");
        kill(Pid::from_raw(child.id() as i32), Signal::SIGHUP).expect("SIGHUP dnsmasq");
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "dnsmasq log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

fn ips(addrs: &[&str]) -> BTreeSet<IpAddr> {
    addrs.iter().map(|a| a.parse().expect("test address")).collect()
}

fn config(server: SocketAddr) -> DnsConfig {
    DnsConfig {
        nameservers: vec![server],
        min_ttl: Duration::from_millis(500),
        max_ttl: Duration::from_secs(60),
        retry_min: Duration::from_millis(200),
        retry_max: Duration::from_secs(2),
        grace: Duration::from_secs(3),
    }
}

/// Short timeouts: a server that does not answer must cost fractions of a
/// second, not hickory's default 5 s twice.
fn tuning() -> Tuning {
    Tuning {
        query_timeout: Some(Duration::from_millis(500)),
        attempts: Some(0),
        deadline: Duration::from_secs(3),
    }
}

fn spawn(config: DnsConfig, hosts: &[&str], tuning: Tuning) -> (DnsWatcher, mpsc::Receiver<DnsUpdate>) {
    let (tx, rx) = mpsc::channel(64);
    let hosts = hosts.iter().map(|h| h.to_string()).collect();
    let watcher =
        DnsWatcher::spawn_with(config, hosts, tx, SystemFiles::default(), tuning).expect("spawn watcher");
    (watcher, rx)
}

/// Receives updates until one for `name` satisfies `pred`; returns it and
/// every update seen on the way (for asserting what did not happen).
async fn wait_update(
    rx: &mut mpsc::Receiver<DnsUpdate>,
    name: &str,
    within: Duration,
    pred: impl Fn(&BTreeSet<IpAddr>) -> bool,
) -> (DnsUpdate, Vec<DnsUpdate>) {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(update)) => {
                if update.name == name && pred(&update.addresses) {
                    return (update, seen);
                }
                seen.push(update);
            }
            Ok(None) => panic!("watcher stopped while waiting for {name}; updates so far: {seen:?}"),
            Err(_) => panic!("no matching update for {name} within {within:?}; updates so far: {seen:?}"),
        }
    }
}

/// Receives updates until every name in `names` has a non-empty set, in
/// whatever order they come; returns the latest set per name and every
/// update received.
async fn wait_resolved(
    rx: &mut mpsc::Receiver<DnsUpdate>,
    names: &[&str],
    within: Duration,
) -> (BTreeMap<String, BTreeSet<IpAddr>>, Vec<DnsUpdate>) {
    let deadline = tokio::time::Instant::now() + within;
    let mut latest = BTreeMap::new();
    let mut seen = Vec::new();
    while !names
        .iter()
        .all(|n| latest.get(*n).is_some_and(|a: &BTreeSet<IpAddr>| !a.is_empty()))
    {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(update)) => {
                latest.insert(update.name.clone(), update.addresses.clone());
                seen.push(update);
            }
            Ok(None) => panic!("watcher stopped while waiting for {names:?}; updates so far: {seen:?}"),
            Err(_) => panic!("{names:?} not all resolved within {within:?}; updates so far: {seen:?}"),
        }
    }
    (latest, seen)
}

async fn host_status(watcher: &DnsWatcher, name: &str) -> HostStatus {
    watcher
        .status()
        .await
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("{name} missing from status"))
}

/// Polls the status until `pred` holds for `name`.
async fn wait_status(
    watcher: &DnsWatcher,
    name: &str,
    within: Duration,
    pred: impl Fn(&HostStatus) -> bool,
) -> HostStatus {
    let deadline = Instant::now() + within;
    loop {
        let status = host_status(watcher, name).await;
        if pred(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "status of {name} never matched within {within:?}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const API_HOSTS: &str = "192.0.2.10 api.test\n2001:db8::10 api.test\n192.0.2.20 other.test\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolves_a_and_aaaa_and_follows_cname() {
    let dns = Dnsmasq::start(API_HOSTS, &[]);
    let (watcher, mut rx) = spawn(
        config(dns.addr()),
        &["api.test", "alias.test", "other.test"],
        tuning(),
    );

    let dual = ips(&["192.0.2.10", "2001:db8::10"]);
    let (latest, _) = wait_resolved(
        &mut rx,
        &["api.test", "alias.test", "other.test"],
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(latest["api.test"], dual, "both A and AAAA");
    assert_eq!(
        latest["alias.test"], dual,
        "the CNAME resolves to its target's addresses"
    );
    assert_eq!(latest["other.test"], ips(&["192.0.2.20"]));

    let status = watcher.status().await;
    let names: Vec<&str> = status.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["alias.test", "api.test", "other.test"], "sorted by name");
    let api = &status[1];
    assert_eq!(api.current, dual);
    assert_eq!(api.addresses, dual);
    assert_eq!(api.ttl_seconds, Some(TTL.as_secs()), "the answer's real TTL");
    assert!(api.last_success.is_some());
    assert!(api.next_refresh.is_some());
    assert_eq!((api.consecutive_failures, api.last_error.as_deref()), (0, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_is_seen_within_one_ttl_and_old_address_fades_after_grace() {
    let dns = Dnsmasq::start("192.0.2.10 api.test\n", &[]);
    let cfg = config(dns.addr());
    let grace = cfg.grace;
    let (watcher, mut rx) = spawn(cfg, &["api.test"], tuning());
    let (first, _) = wait_update(&mut rx, "api.test", Duration::from_secs(3), |a| !a.is_empty()).await;
    assert_eq!(first.addresses, ips(&["192.0.2.10"]));

    let changed_at = Instant::now();
    dns.set_hosts("192.0.2.11 api.test\n");
    let (update, _) = wait_update(&mut rx, "api.test", TTL + SLACK, |a| {
        a.contains(&"192.0.2.11".parse().expect("ip"))
    })
    .await;
    let seen_after = changed_at.elapsed();
    assert!(
        seen_after <= TTL + SLACK,
        "change seen after {seen_after:?}, TTL is {TTL:?}"
    );
    assert_eq!(
        update.addresses,
        ips(&["192.0.2.10", "192.0.2.11"]),
        "old address kept for grace"
    );
    let status = host_status(&watcher, "api.test").await;
    assert_eq!(status.current, ips(&["192.0.2.11"]));
    assert_eq!(status.addresses, ips(&["192.0.2.10", "192.0.2.11"]));

    let faded_since = Instant::now();
    let (update, _) = wait_update(&mut rx, "api.test", grace + SLACK, |a| {
        !a.contains(&"192.0.2.10".parse().expect("ip"))
    })
    .await;
    let faded_after = faded_since.elapsed();
    assert_eq!(update.addresses, ips(&["192.0.2.11"]));
    // The grace started when the changed answer arrived, a moment before
    // `faded_since`; half a second covers that gap.
    assert!(
        faded_after + Duration::from_millis(500) >= grace,
        "old address dropped after {faded_after:?}, before the {grace:?} grace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ttl_wins_over_a_long_ttl_without_stale_cached_answers() {
    // A 60 s TTL clamped to half a second: each refresh must reach the
    // server. A resolver cache honouring the 60 s would hide the change.
    let dns = Dnsmasq::start_with_ttl("192.0.2.40 long.test\n", Duration::from_secs(60), &[]);
    let cfg = DnsConfig {
        max_ttl: Duration::from_millis(500),
        grace: Duration::ZERO,
        ..config(dns.addr())
    };
    let (watcher, mut rx) = spawn(cfg, &["long.test"], tuning());
    wait_update(&mut rx, "long.test", Duration::from_secs(3), |a| !a.is_empty()).await;
    assert_eq!(
        host_status(&watcher, "long.test").await.ttl_seconds,
        Some(1),
        "0.5 s, rounded"
    );

    let changed_at = Instant::now();
    dns.set_hosts("192.0.2.41 long.test\n");
    let (update, _) = wait_update(&mut rx, "long.test", Duration::from_millis(500) + SLACK, |a| {
        a.contains(&"192.0.2.41".parse().expect("ip"))
    })
    .await;
    assert_eq!(update.addresses, ips(&["192.0.2.41"]));
    assert!(changed_at.elapsed() <= Duration::from_millis(500) + SLACK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_server_keeps_last_addresses_and_backs_off() {
    let mut dns = Dnsmasq::start(API_HOSTS, &[]);
    // Queries to the dead server time out after 100 ms, so the retry pace
    // is set by the backoff, not by the timeout.
    let tuning = Tuning {
        query_timeout: Some(Duration::from_millis(100)),
        ..tuning()
    };
    let (watcher, mut rx) = spawn(config(dns.addr()), &["api.test"], tuning);
    let known = ips(&["192.0.2.10", "2001:db8::10"]);
    wait_update(&mut rx, "api.test", Duration::from_secs(3), |a| *a == known).await;

    dns.stop();
    let failed = wait_status(&watcher, "api.test", TTL + Duration::from_secs(3) + SLACK, |s| {
        s.consecutive_failures > 0
    })
    .await;
    assert!(failed.last_error.is_some(), "{failed:?}");
    assert_eq!(failed.addresses, known, "a dead server must not empty the set");
    assert_eq!(failed.current, known);
    assert!(failed.last_success.is_some());

    // Keep failing for a while: retries back off (200 ms doubling), so in
    // three seconds about three happen; retrying every 200 ms would make ten.
    let start_failures = failed.consecutive_failures;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = host_status(&watcher, "api.test").await;
    let retries = later.consecutive_failures - start_failures;
    assert!(retries >= 1, "kept retrying: {later:?}");
    assert!(retries <= 6, "{retries} retries in 3 s is no backoff: {later:?}");
    assert_eq!(later.addresses, known);
    assert!(rx.try_recv().is_err(), "no update may follow a failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nxdomain_and_slow_names_do_not_hold_up_the_others() {
    // Queries for slow.test are forwarded to a socket that never answers.
    let blackhole = UdpSocket::bind("127.0.0.1:0").expect("bind blackhole");
    let hole = blackhole.local_addr().expect("addr").port();
    let dns = Dnsmasq::start(
        "192.0.2.31 good1.test\n192.0.2.32 good2.test\n",
        &[format!("--server=/slow.test/127.0.0.1#{hole}")],
    );
    // Sorted first, so a watcher that resolved one name after the other
    // would make the good names wait for it.
    let slow = "a.slow.test";
    let tuning = Tuning {
        query_timeout: Some(Duration::from_secs(2)),
        attempts: Some(0),
        deadline: Duration::from_secs(4),
    };
    let started = Instant::now();
    let (watcher, mut rx) = spawn(
        config(dns.addr()),
        &[slow, "good1.test", "good2.test", "missing.test"],
        tuning,
    );
    let (latest, seen) = wait_resolved(&mut rx, &["good1.test", "good2.test"], Duration::from_secs(1)).await;
    let prompt = started.elapsed();
    assert_eq!(latest["good1.test"], ips(&["192.0.2.31"]));
    assert_eq!(latest["good2.test"], ips(&["192.0.2.32"]));
    assert!(prompt < Duration::from_millis(1500), "good names took {prompt:?}");
    assert_eq!(
        seen.len(),
        2,
        "the failing names send no (empty) update: {seen:?}"
    );
    // The slow name is still being looked up, yet the others are done.
    let slow_status = host_status(&watcher, slow).await;
    assert_eq!(slow_status.consecutive_failures, 0, "{slow_status:?}");
    assert!(
        slow_status.next_refresh.is_none(),
        "its lookup is in flight: {slow_status:?}"
    );

    let missing = wait_status(&watcher, "missing.test", Duration::from_secs(2), |s| {
        s.consecutive_failures > 0
    })
    .await;
    assert!(missing.addresses.is_empty());
    assert_eq!(missing.last_success, None);
    let error = missing.last_error.clone().unwrap_or_default();
    assert!(error.contains("NXDOMAIN"), "{error}");

    let slow_status = wait_status(&watcher, slow, Duration::from_secs(5), |s| {
        s.consecutive_failures > 0
    })
    .await;
    assert!(slow_status.addresses.is_empty());
    assert!(slow_status.last_error.is_some(), "{slow_status:?}");
    // The good names were never disturbed.
    let good = host_status(&watcher, "good1.test").await;
    assert_eq!(
        (good.consecutive_failures, good.addresses),
        (0, ips(&["192.0.2.31"]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_lookup_in_flight_per_host() {
    // A nameserver that swallows queries: each lookup hangs until its
    // timeout. Count what reaches it.
    let sink = Arc::new(
        tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind sink"),
    );
    let addr = sink.local_addr().expect("sink addr");
    let counter = {
        let sink = Arc::clone(&sink);
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let mut n = 0u32;
            while tokio::time::timeout(Duration::from_millis(1800), sink.recv_from(&mut buf))
                .await
                .is_ok()
            {
                n += 1;
            }
            n
        })
    };
    let cfg = DnsConfig {
        retry_min: Duration::from_millis(10),
        retry_max: Duration::from_millis(20),
        ..config(addr)
    };
    let tuning = Tuning {
        query_timeout: Some(Duration::from_millis(400)),
        attempts: Some(0),
        deadline: Duration::from_secs(2),
    };
    let (watcher, _rx) = spawn(cfg, &["hang.test"], tuning);
    // Status polls wake the watcher often, each a chance to start another
    // lookup for a host whose refresh is overdue.
    let polling = Instant::now();
    let mut status = host_status(&watcher, "hang.test").await;
    while polling.elapsed() < Duration::from_millis(1500) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        status = host_status(&watcher, "hang.test").await;
    }
    drop(watcher);
    let queries = counter.await.expect("counter task");
    // Each lookup is one A and one AAAA query and lasts 400 ms, so 1.5 s
    // allows about four lookups. Without the in-flight guard the 10 ms retry
    // would start dozens.
    assert!(queries >= 2, "the watcher queried the server: {queries}");
    assert!(
        queries <= 16,
        "{queries} queries: lookups overlapped for one host"
    );
    assert!(status.consecutive_failures <= 5, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_of_hosts_and_config_keeps_state() {
    let dns = Dnsmasq::start(API_HOSTS, &[]);
    let (watcher, mut rx) = spawn(config(dns.addr()), &["api.test"], tuning());
    wait_update(&mut rx, "api.test", Duration::from_secs(3), |a| !a.is_empty()).await;
    let before = host_status(&watcher, "api.test").await;

    watcher
        .set_hosts(vec!["api.test".into(), "other.test".into()])
        .await;
    let (other, seen) = wait_update(&mut rx, "other.test", Duration::from_secs(1), |a| !a.is_empty()).await;
    assert_eq!(other.addresses, ips(&["192.0.2.20"]));
    assert!(seen.is_empty(), "an unchanged name sends nothing: {seen:?}");
    let kept = host_status(&watcher, "api.test").await;
    assert_eq!(
        kept.last_success, before.last_success,
        "state of kept names is not reset"
    );

    watcher.set_hosts(vec!["other.test".into()]).await;
    let names: Vec<String> = watcher.status().await.into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["other.test"]);

    let mut cfg = config(dns.addr());
    cfg.min_ttl = Duration::from_secs(30);
    watcher.set_config(cfg.clone()).await.expect("set_config");
    let status = host_status(&watcher, "other.test").await;
    assert_eq!(
        status.addresses,
        ips(&["192.0.2.20"]),
        "state survives a config change"
    );
    assert_eq!(status.ttl_seconds, Some(30), "new clamp applies at once");

    cfg.min_ttl = Duration::from_secs(60);
    cfg.max_ttl = Duration::from_secs(1);
    assert!(
        watcher.set_config(cfg).await.is_err(),
        "min_ttl > max_ttl is rejected"
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(update) = rx.try_recv() {
        assert_ne!(update.name, "api.test", "no update for a removed name");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_resolver_honours_hosts_file_and_its_edits() {
    let dir = TempDir::new("system");
    let files = SystemFiles {
        resolv_conf: dir.path().join("resolv.conf"),
        hosts: dir.path().join("hosts"),
    };
    // Nothing answers there; names in the hosts file (A and AAAA both) must
    // never need it.
    write_atomically(&files.resolv_conf, "nameserver 127.0.0.1\n");
    write_atomically(
        &files.hosts,
        "192.0.2.50 pinned.internal\n2001:db8::50 pinned.internal\n",
    );
    let cfg = DnsConfig {
        min_ttl: Duration::from_millis(500),
        max_ttl: Duration::from_millis(500),
        grace: Duration::ZERO,
        ..DnsConfig::default()
    };
    let (tx, mut rx) = mpsc::channel(16);
    let watcher = DnsWatcher::spawn_with(cfg, vec!["pinned.internal".into()], tx, files.clone(), tuning())
        .expect("spawn");
    let (update, _) = wait_update(&mut rx, "pinned.internal", Duration::from_secs(3), |a| {
        !a.is_empty()
    })
    .await;
    assert_eq!(update.addresses, ips(&["192.0.2.50", "2001:db8::50"]));

    write_atomically(
        &files.hosts,
        "192.0.2.51 pinned.internal\n2001:db8::50 pinned.internal\n",
    );
    let (update, _) = wait_update(&mut rx, "pinned.internal", Duration::from_secs(3), |a| {
        a.contains(&"192.0.2.51".parse().expect("ip"))
    })
    .await;
    assert_eq!(
        update.addresses,
        ips(&["192.0.2.51", "2001:db8::50"]),
        "edited hosts file is followed"
    );
    let status = host_status(&watcher, "pinned.internal").await;
    assert_eq!(status.consecutive_failures, 0, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_ends_when_handle_or_receiver_is_dropped() {
    let dns = Dnsmasq::start(API_HOSTS, &[]);

    let (watcher, mut rx) = spawn(config(dns.addr()), &["api.test"], tuning());
    wait_update(&mut rx, "api.test", Duration::from_secs(3), |a| !a.is_empty()).await;
    drop(watcher);
    let end = tokio::time::timeout(Duration::from_secs(2), async {
        while rx.recv().await.is_some() {}
    })
    .await;
    assert!(
        end.is_ok(),
        "the task kept its updates sender after the handle was dropped"
    );

    let (watcher, rx) = spawn(config(dns.addr()), &["api.test"], tuning());
    drop(rx);
    let deadline = Instant::now() + Duration::from_secs(2);
    while !watcher.commands.is_closed() {
        assert!(
            Instant::now() < deadline,
            "the task outlived its updates receiver"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(watcher.status().await.is_empty());
    assert!(matches!(
        watcher.set_config(config(dns.addr())).await,
        Err(super::DnsError::Stopped)
    ));
}

#[test]
fn spawn_outside_a_runtime_is_an_error() {
    let (tx, _rx) = mpsc::channel(1);
    let err = DnsWatcher::spawn(DnsConfig::default(), vec![], tx).expect_err("no runtime");
    assert!(matches!(err, super::DnsError::NoRuntime), "{err:?}");
}

#[tokio::test]
async fn invalid_timing_is_rejected() {
    let (tx, _rx) = mpsc::channel(1);
    let cfg = DnsConfig {
        nameservers: vec![SocketAddr::from(([127, 0, 0, 1], 9))],
        retry_min: Duration::ZERO,
        ..DnsConfig::default()
    };
    let err = DnsWatcher::spawn(cfg, vec![], tx).expect_err("zero retry_min");
    assert!(err.to_string().contains("retry_min"), "{err}");
}
