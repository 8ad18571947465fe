//! Container names from real runtimes: a Docker daemon and a containerd
//! with its CRI plugin, each started by the test with its own state and
//! socket, containers' cgroups below the test cgroup the daemon is
//! attached to; and a runtime that is not there, or stops mid-run.

use std::time::Duration;

use connectracer_tests::rootfs::busybox_rootfs;
use connectracer_tests::{probe, tcp_server, Daemon, Dockerd, TestCgroup};
use serde_json::Value;

const IMAGE: &str = "connectracer-test/busybox:1";

fn config(docker_socket: &str) -> String {
    format!(
        "trace = \"all\"\n[containers]\ndocker_socket = \"{docker_socket}\"\npodman_socket = \"off\"\ncontainerd_socket = \"off\"\ncrio_socket = \"off\"\n"
    )
}

/// The daemon's lines saying the runtime cannot be asked.
fn down_lines(d: &Daemon) -> usize {
    d.logs
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("container runtime docker") && m.contains("cannot be asked"))
        })
        .count()
}

/// Reads the daemon's diagnostics until `quiet` has passed without one.
fn drain_logs(d: &mut Daemon, quiet: Duration) {
    while d.wait_log("\u{0}never", quiet).is_ok() {}
}

/// A cgroup named as Docker's cgroupfs driver names a container's, for a
/// container no runtime knows.
fn fake_container(parent: &TestCgroup, id: &str) -> TestCgroup {
    parent.child(id)
}

fn connects_of<'a>(d: &'a Daemon, id: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    d.events("connect", None)
        .filter(move |e| e["process"]["container_id"] == id)
}

/// A dockerd of the test's own, with the busybox image imported.
fn dockerd_with_image(cg: &TestCgroup) -> Dockerd {
    let dockerd = Dockerd::start(cg).unwrap();
    let rootfs = busybox_rootfs(dockerd.dir.path()).unwrap();
    dockerd
        .docker(&["import", &rootfs.to_string_lossy(), IMAGE])
        .unwrap();
    dockerd
}

/// Starts container `web` (host network) connecting to 127.0.0.1:`port`
/// `n` times, every 200 ms; returns its id.
fn run_web(dockerd: &Dockerd, port: &str, n: u32) -> String {
    let script =
        format!("i=0; while [ $i -lt {n} ]; do nc 127.0.0.1 {port} </dev/null; sleep 0.2; i=$((i+1)); done");
    dockerd
        .docker(&[
            "run",
            "--detach",
            "--name",
            "web",
            "--network",
            "host",
            IMAGE,
            "/bin/sh",
            "-c",
            &script,
        ])
        .unwrap()
}

#[test]
fn an_absent_runtime_costs_one_log_line_and_events_keep_their_ids() {
    let cg = TestCgroup::new("ctr-absent");
    let absent = std::env::temp_dir().join(format!("connectracer-absent-{}.sock", std::process::id()));
    let mut d = Daemon::start(&cg, &config(&absent.to_string_lossy())).unwrap();
    let docker = cg.child("docker");
    let id = "ab".repeat(32);
    let ctr = fake_container(&docker, &id);
    let server = tcp_server("127.0.0.1:0", 0, 0);
    let dst = server.to_string();
    for _ in 0..3 {
        probe(&ctr, &["flood", &dst, "20"]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    d.wait_for(Duration::from_secs(10), |s| {
        s.iter()
            .filter(|e| e["event"] == "connect" && e["process"]["container_id"] == id.as_str())
            .count()
            >= 60
    })
    .unwrap();
    for e in connects_of(&d, &id) {
        assert_eq!(e["process"]["container_runtime"], "docker", "{e}");
        assert!(e.get("container_name").is_none(), "{e}");
    }
    drain_logs(&mut d, Duration::from_secs(1));
    assert_eq!(down_lines(&d), 1, "one line for 60 events: {:#?}", d.logs);
    let line = d
        .logs
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("cannot be asked"))
        })
        .unwrap();
    assert!(
        line["message"]
            .as_str()
            .unwrap()
            .contains(&*absent.to_string_lossy()),
        "{line}"
    );
    drop(ctr);
    drop(docker);
}

#[test]
fn a_docker_container_named_web_connects_with_its_name_image_and_id() {
    let cg = TestCgroup::new("ctr-docker");
    let dockerd = dockerd_with_image(&cg);
    let mut d = Daemon::start(&cg, &config(&dockerd.socket.to_string_lossy())).unwrap();
    let server = tcp_server("127.0.0.1:0", 0, 0);
    let port = server.port().to_string();
    // Connects every 200 ms: the first event goes out while the lookup is
    // pending, the later ones carry the names.
    let id = run_web(&dockerd, &port, 25);
    assert_eq!(id.len(), 64, "{id}");
    d.wait_for(Duration::from_secs(20), |s| {
        s.iter().any(|e| {
            e["event"] == "connect"
                && e["process"]["container_id"] == id.as_str()
                && e["container_name"] == "web"
        })
    })
    .unwrap();
    let connects: Vec<&Value> = connects_of(&d, &id).collect();
    let first = connects[0];
    assert_eq!(first["dst"], server.to_string());
    assert_eq!(first["process"]["container_runtime"], "docker");
    // The container's cgroup as the v2 hierarchy the daemon attributes by
    // has it: runc puts it there on this hybrid host too.
    assert_eq!(
        first["process"]["cgroup"],
        format!("{}/{id}", dockerd.cgroup_parent),
        "{first}"
    );
    assert!(
        first.get("container_name").is_none(),
        "the first event went out while the lookup was pending: {first}"
    );
    let named = connects.iter().find(|e| e["container_name"] == "web").unwrap();
    assert_eq!(named["container_image"], IMAGE, "{named}");
    assert!(
        named.get("pod_name").is_none() && named.get("pod_labels").is_none(),
        "{named}"
    );
    // Once named, every later event of the container is.
    let at = connects
        .iter()
        .position(|e| e["container_name"] == "web")
        .unwrap();
    assert!(
        connects[at..].iter().all(|e| e["container_name"] == "web"),
        "{connects:#?}"
    );

    // Filters, applied by the daemon.
    let (code, out, err) = d.tracectl(&["connections", "--container-name", "w?b", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let listed = v["connections"].as_array().unwrap();
    assert!(
        !listed.is_empty() && listed.iter().all(|c| c["container_name"] == "web"),
        "{out}"
    );
    let (_, out, _) = d.tracectl(&["connections", "--container-name", "db", "-o", "json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["connections"],
        serde_json::json!([])
    );
    let (_, out, _) = d.tracectl(&["connections", "--container-name", "web", "-o", "wide"]);
    assert!(
        out.lines().any(|l| l.contains(" web ") && l.contains(IMAGE)),
        "{out}"
    );

    dockerd.docker(&["rm", "--force", "web"]).unwrap();
    let dockerd = stops_mid_run(&cg, &mut d, dockerd, &server.to_string());
    drop(d);
    drop(dockerd);
}

/// dockerd stops mid-run: a container it never told us about keeps its id,
/// with one log line for any number of events; when it is back, one more.
fn stops_mid_run(cg: &TestCgroup, d: &mut Daemon, mut dockerd: Dockerd, dst: &str) -> Dockerd {
    dockerd.stop();
    let docker_dir = TestCgroup {
        path: cg.path.join("docker"),
        rel: dockerd.cgroup_parent.clone(),
    };
    let other = "cd".repeat(32);
    let ctr = fake_container(&docker_dir, &other);
    for _ in 0..3 {
        probe(&ctr, &["flood", dst, "10"]).unwrap();
    }
    d.wait_for(Duration::from_secs(10), |s| {
        s.iter()
            .filter(|e| e["event"] == "connect" && e["process"]["container_id"] == other.as_str())
            .count()
            >= 30
    })
    .unwrap();
    drain_logs(d, Duration::from_secs(1));
    assert_eq!(down_lines(d), 1, "{:#?}", d.logs);
    let dockerd = dockerd.restart().unwrap();
    // Asked again once the 5 s pause is over.
    std::thread::sleep(Duration::from_secs(5));
    probe(&ctr, &["connect", dst]).unwrap();
    let back = d
        .wait_log("container runtime docker", Duration::from_secs(10))
        .unwrap();
    assert!(
        back["message"]
            .as_str()
            .unwrap_or_default()
            .contains("answers again"),
        "{back}"
    );
    assert_eq!(down_lines(d), 1);
    drop(ctr);
    drop(docker_dir);
    dockerd
}

/// A rule selecting a container by the name its runtime reports: the
/// container's first connects (while the runtime is asked) are judged
/// without it, every one after the answer with it, and a reload keeps it.
#[test]
fn a_container_name_rule_applies_once_the_runtime_has_answered() {
    let cg = TestCgroup::new("ctr-policy");
    let dockerd = dockerd_with_image(&cg);
    let server = tcp_server("127.0.0.1:0", 0, 0);
    let textfile = dockerd.dir.path().join("connectracer.prom");
    let config = format!(
        "trace = \"all\"\nmode = \"enforce\"\n[policy]\nallow_loopback = false\n\
         [containers]\ndocker_socket = \"{}\"\npodman_socket = \"off\"\n\
         containerd_socket = \"off\"\ncrio_socket = \"off\"\n\
\n\
         [[rule]]\ncontainer_name = \"w?b\"\naction = \"deny\"\ndest = \"127.0.0.1\"\nports = [{}]\n",
        dockerd.socket.to_string_lossy(),
        server.port()
    );
    // After the harness's drop-in that turns metrics off.
    let id = std::process::id();
    let cfg = connectracer_tests::ConfigDir::new(&format!("ctr-policy-{id}"), &config);
    cfg.write_dropin(
        "99-metrics.toml",
        &format!(
            "[metrics]\ntextfile = \"{}\"\ntextfile_interval = \"1s\"\n\
             connection_labels = [\"container_name\", \"pod\"]\n",
            textfile.display()
        ),
    );
    let socket = std::env::temp_dir().join(format!("connectracer-ctr-policy-{id}.sock"));
    let pin_dir = format!("/sys/fs/bpf/connectracer-ctr-policy-{id}").into();
    let mut d = Daemon::start_with(&cg, cfg, socket, pin_dir).unwrap();
    let port = server.port().to_string();
    let id = run_web(&dockerd, &port, 40);
    let of_web = |e: &Value| e["process"]["container_id"] == id.as_str() && e["protocol"] == "tcp";
    d.wait_log(
        "policy: a container joins its scope by name",
        Duration::from_secs(20),
    )
    .unwrap();
    d.wait_for(Duration::from_secs(20), |s| {
        s.iter().filter(|e| of_web(e) && e["event"] == "denied").count() >= 3
    })
    .unwrap();

    let tries: Vec<&Value> = d
        .seen
        .iter()
        .filter(|e| of_web(e) && (e["event"] == "connect" || e["event"] == "denied"))
        .collect();
    let first_denied = tries.iter().position(|e| e["event"] == "denied").unwrap();
    assert!(
        first_denied >= 1,
        "the first connect went out before the runtime answered: {tries:#?}"
    );
    assert!(
        tries[first_denied..]
            .iter()
            .all(|e| e["event"] == "denied" && e["policy_rule"] == 1 && e["verdict"] == "deny"),
        "{tries:#?}"
    );
    // Opt-in metric labels: the container's name on its denied connects.
    let denied_web = |text: &str| {
        text.lines().any(|l| {
            l.starts_with("connectracer_connections_total{")
                && l.contains("container_name=\"web\"")
                && l.contains("outcome=\"denied\"")
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut text = String::new();
    while std::time::Instant::now() < deadline {
        text = std::fs::read_to_string(&textfile).unwrap_or_default();
        if denied_web(&text) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(denied_web(&text), "{text}");
    // A reload re-places the containers it knows by name.
    d.config.write_dropin(
        "50-more.toml",
        "[[rule]]\naction = \"deny\"\ndest = \"192.0.2.1\"\n",
    );
    let (code, _, err) = d.tracectl(&["reload"]);
    assert_eq!(code, 0, "{err}");
    let before = d
        .seen
        .iter()
        .filter(|e| of_web(e) && e["event"] == "denied")
        .count();
    d.wait_for(Duration::from_secs(10), |s| {
        s.iter().filter(|e| of_web(e) && e["event"] == "denied").count() >= before + 3
    })
    .unwrap();
    let last: Vec<&Value> = d
        .seen
        .iter()
        .filter(|e| of_web(e) && (e["event"] == "connect" || e["event"] == "denied"))
        .collect();
    assert!(
        last[last.len() - 3..].iter().all(|e| e["event"] == "denied"),
        "after the reload: {last:#?}"
    );
    dockerd.docker(&["rm", "--force", "web"]).unwrap();
    drop(d);
    drop(dockerd);
}

/// `--container` for `profile` and `policy suggest`: a container found by
/// its name (asked of dockerd) and by a 12-digit id prefix; an unknown
/// name and an ambiguous prefix refused with the id in the message.
#[test]
fn a_container_is_profiled_and_suggested_by_name_and_id_prefix() {
    let cg = TestCgroup::new("ctr-target");
    let dockerd = dockerd_with_image(&cg);
    let mut d = Daemon::start(&cg, &config(&dockerd.socket.to_string_lossy())).unwrap();
    let server = tcp_server("127.0.0.1:0", 0, 0);
    let id = run_web(&dockerd, &server.port().to_string(), 60);
    let cgroup = format!("{}/{id}", dockerd.cgroup_parent);
    // Asked of dockerd: the daemon has not named it yet when no event came.
    let (code, out, err) = d.tracectl(&["profile", "--container", "web", "--for", "1s", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let reply: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reply["cgroup"], cgroup.as_str(), "{reply:#}");
    let names: Vec<&str> = reply["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    // nc connecting every 200 ms.
    assert!(names.contains(&"connect"), "{names:?}");
    assert!(
        reply["families"].as_array().unwrap().contains(&2.into()),
        "AF_INET: {reply:#}"
    );
    let (code, out, err) = d.tracectl(&[
        "profile",
        "--container",
        &id[..12],
        "--for",
        "100ms",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["cgroup"],
        cgroup.as_str()
    );

    let (code, _, err) = d.tracectl(&["profile", "--container", "nosuch", "--for", "1s"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no container `nosuch` running"), "{err}");
    // Two cgroups named like containers whose ids share their first 12 digits.
    let docker_dir = TestCgroup {
        path: cg.path.join("docker"),
        rel: dockerd.cgroup_parent.clone(),
    };
    let (a, b) = (
        format!("0123456789ab{}", "e".repeat(52)),
        format!("0123456789ab{}", "f".repeat(52)),
    );
    let fakes = (fake_container(&docker_dir, &a), fake_container(&docker_dir, &b));
    let (code, _, err) = d.tracectl(&["profile", "--container", "0123456789ab", "--for", "1s"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&a) && err.contains(&b) && err.contains("give more of the id"),
        "{err}"
    );
    drop(fakes);

    d.wait_for(Duration::from_secs(20), |s| {
        s.iter()
            .any(|e| e["event"] == "connect" && e["process"]["container_id"] == id.as_str())
    })
    .unwrap();
    for query in ["web", &id[..12]] {
        let (code, toml, err) = d.tracectl(&["policy", "suggest", "--container", query]);
        assert_eq!(code, 0, "{query}: {err}");
        assert!(toml.contains(&format!("container = \"{id}\"")), "{toml}");
        assert!(toml.contains("\"127.0.0.1/32\""), "{toml}");
        assert!(toml.contains(&format!("ports = [{}]", server.port())), "{toml}");
    }
    let (code, _, err) = d.tracectl(&["policy", "suggest", "--container", "web", "--format", "systemd"]);
    assert_eq!(code, 2, "{err}");
    // Gone from dockerd and from the cgroup tree: still found by its id
    // among the destinations remembered.
    dockerd.docker(&["rm", "--force", "web"]).unwrap();
    let (code, out, err) = d.tracectl(&["policy", "suggest", "--container", &id[..16], "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["container"], id.as_str(), "{v:#}");
    assert!(!v["destinations"].as_array().unwrap().is_empty(), "{v:#}");
    let (code, _, err) = d.tracectl(&["policy", "suggest", "--container", "web"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no container `web` among the destinations seen"),
        "{err}"
    );
    drop(d);
    drop(dockerd);
}
