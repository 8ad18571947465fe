use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::*;

const ID: &str = "968e6dfdbeb1b65955a90e207176376013bd90c6f0ee7a20121d722eeb55cb5e";

/// A Docker Engine API that knows one container, `web` with image
/// `img:1`, over a Unix socket; counts the requests it gets.
fn fake_docker(socket: &Path) -> Arc<AtomicUsize> {
    let listener = tokio::net::UnixListener::bind(socket).unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let count = asked.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(request)) = lines.next_line().await {
                    // The request's headers, up to the blank line.
                    while let Ok(Some(h)) = lines.next_line().await {
                        if h.is_empty() {
                            break;
                        }
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = if request.contains(&format!("/containers/{ID}/json")) {
                        (
                            "200 OK",
                            format!(r#"{{"Id":"{ID}","Name":"/web","Config":{{"Image":"img:1"}}}}"#),
                        )
                    } else {
                        ("404 Not Found", r#"{"message":"No such container"}"#.to_string())
                    };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if write.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    asked
}

fn process(id: &str) -> Process {
    Process {
        pid: 1,
        tid: 1,
        ppid: None,
        uid: 0,
        user: None,
        comm: "nc".into(),
        exe: None,
        argv: vec![],
        cgroup_id: 9,
        cgroup: Some(format!("/docker/{id}")),
        unit: None,
        user_unit: None,
        slice: None,
        container_runtime: Some("docker".into()),
        container_id: Some(id.into()),
        pod_uid: None,
    }
}

fn docker_only(socket: &Path) -> ContainersConfig {
    ContainersConfig {
        docker_socket: Some(socket.to_path_buf()),
        podman_socket: None,
        containerd_socket: None,
        crio_socket: None,
        ..Default::default()
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Answer>) -> Answer {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an answer")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn ids_first_then_names_until_the_cgroup_goes() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("docker.sock");
    let asked = fake_docker(&socket);
    let mount = tmp.path().join("cgroup");
    std::fs::create_dir_all(mount.join("docker").join(ID)).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut names = ContainerNames::new(&mount);
    names.configure(&docker_only(&socket), &tx);
    let p = process(ID);
    let now = Instant::now();
    assert!(names.meta(&p, now).is_empty(), "pending: the id only");
    assert!(names.meta(&p, now).is_empty());
    names.on_answer(next(&mut rx).await);
    assert_eq!(asked.load(Ordering::SeqCst), 1, "one lookup for both events");
    let m = names.meta(&p, now);
    assert_eq!(m.container_name.as_deref(), Some("web"));
    assert_eq!(m.container_image.as_deref(), Some("img:1"));
    assert!(
        Arc::ptr_eq(&m, &names.meta(&p, now)),
        "shared by the container's events"
    );

    std::fs::remove_dir(mount.join("docker").join(ID)).unwrap();
    let gone = next(&mut rx).await;
    assert!(
        matches!(gone, Answer::Gone { ref id, .. } if id == ID),
        "{gone:?}"
    );
    names.on_answer(gone);
    assert!(names.is_empty(), "forgotten with its cgroup");

    // An id the runtime does not know: empty, and not asked again.
    let other = "1".repeat(64);
    std::fs::create_dir_all(mount.join("docker").join(&other)).unwrap();
    let q = process(&other);
    assert!(names.meta(&q, now).is_empty());
    names.on_answer(next(&mut rx).await);
    assert!(names.meta(&q, now).is_empty());
    assert_eq!(asked.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_absent_runtime_is_left_alone_until_the_retry() {
    let tmp = tempfile::tempdir().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut names = ContainerNames::new(tmp.path());
    names.configure(&docker_only(&tmp.path().join("absent.sock")), &tx);
    let p = process(ID);
    let now = Instant::now();
    assert!(names.meta(&p, now).is_empty());
    let a = next(&mut rx).await;
    let Answer::Unavailable { retry_at, .. } = a else {
        panic!("{a:?}")
    };
    names.on_answer(Answer::Unavailable {
        id: ID.into(),
        retry_at,
        generation: names.generation,
    });
    assert!(names.meta(&p, now).is_empty());
    assert!(rx.try_recv().is_err(), "not asked again before the retry");
    assert!(names.meta(&p, retry_at).is_empty());
    assert!(
        matches!(next(&mut rx).await, Answer::Unavailable { .. }),
        "asked again after it"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_of_replaced_workers_and_other_runtimes_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut names = ContainerNames::new(tmp.path());
    names.configure(&docker_only(&tmp.path().join("absent.sock")), &tx);
    let stale = Answer::Found {
        id: ID.into(),
        meta: ContainerMeta {
            container_name: Some("old".into()),
            ..Default::default()
        },
        generation: names.generation - 1,
        cgroup_dir: tmp.path().to_path_buf(),
    };
    names.on_answer(stale);
    assert!(names.is_empty());
    let mut lxc = process("web");
    lxc.container_runtime = Some("lxc".into());
    assert!(names.meta(&lxc, Instant::now()).is_empty());
    assert!(names.is_empty(), "no runtime to ask: nothing pending");
}
