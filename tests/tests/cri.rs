//! Pod names through CRI, from a real containerd with its CRI plugin
//! started by the test: a pod sandbox and a container made through the CRI
//! API (as kubelet makes them), in the host's network namespace, their
//! cgroups below the test cgroup in kubelet's cgroupfs layout.

use std::time::Duration;

use connectracer_tests::containerd::{Containerd, PodSpec, BUSYBOX_IMAGE};
use connectracer_tests::{tcp_server, Daemon, TestCgroup};
use serde_json::{json, Value};

#[test]
fn a_pods_container_connects_with_the_pods_name_namespace_and_labels() {
    let cg = TestCgroup::new("ctr-cri");
    let mut containerd = Containerd::start(&cg).unwrap();
    let config = format!(
        "trace = \"all\"\n[containers]\ndocker_socket = \"off\"\npodman_socket = \"off\"\ncontainerd_socket = \"{}\"\ncrio_socket = \"off\"\npod_labels = [\"app\", \"app.kubernetes.io/name\"]\n",
        containerd.socket.display()
    );
    let mut d = Daemon::start(&cg, &config).unwrap();
    let server = tcp_server("127.0.0.1:0", 0, 0);
    let script = format!(
        "i=0; while [ $i -lt 25 ]; do nc 127.0.0.1 {} </dev/null; sleep 0.2; i=$((i+1)); done; sleep 100000",
        server.port()
    );
    let uid = "5f1c2a9e-7b3d-4e8f-9a0b-1c2d3e4f5a6b";
    let pod = PodSpec {
        name: "web-7d4b9",
        namespace: "shop",
        uid,
        labels: &[("app", "web"), ("tier", "front")],
    };
    let (_sandbox, id) = containerd.run_pod(&pod, "web", &script).unwrap();
    d.wait_for(Duration::from_secs(30), |s| {
        s.iter().any(|e| {
            e["event"] == "connect"
                && e["process"]["container_id"] == id.as_str()
                && e["pod_name"] == "web-7d4b9"
        })
    })
    .unwrap();
    let connects: Vec<&Value> = d
        .events("connect", None)
        .filter(|e| e["process"]["container_id"] == id.as_str())
        .collect();
    let first = connects[0];
    assert_eq!(first["dst"], server.to_string());
    assert_eq!(first["process"]["container_runtime"], "containerd", "{first}");
    assert_eq!(first["process"]["pod_uid"], uid, "{first}");
    assert_eq!(
        first["process"]["cgroup"],
        format!("{}/{id}", containerd.pod_cgroup(uid)),
        "{first}"
    );
    assert!(
        first.get("pod_name").is_none(),
        "sent while the lookup was pending: {first}"
    );
    let named = connects.iter().find(|e| e["pod_name"] == "web-7d4b9").unwrap();
    assert_eq!(named["pod_namespace"], "shop", "{named}");
    // Only the labels the configuration lists.
    assert_eq!(named["pod_labels"], json!({"app": "web"}), "{named}");
    assert_eq!(named["container_name"], "web", "{named}");
    assert_eq!(named["container_image"], BUSYBOX_IMAGE, "{named}");

    let listed = |args: &[&str]| -> Vec<Value> {
        let mut all = vec!["connections", "-o", "json"];
        all.extend(args);
        let (code, out, err) = d.tracectl(&all);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<Value>(&out).unwrap()["connections"]
            .as_array()
            .unwrap()
            .clone()
    };
    let mine = listed(&["--pod", "web-*", "--namespace", "shop"]);
    assert!(
        !mine.is_empty() && mine.iter().all(|c| c["pod_name"] == "web-7d4b9"),
        "{mine:?}"
    );
    assert!(listed(&["--namespace", "kube-*"]).is_empty());
    drop(d);
    drop(containerd);
}
