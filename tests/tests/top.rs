//! tracectl in a real terminal (tmux): `top` driven with keys, colour only
//! where it belongs; and `top` as plain
//! periodic text when its output is not a terminal.

use std::process::Command;
use std::time::Duration;

use connectracer_tests::{bin_path, eventually, probe, tcp_server, Daemon, TestCgroup};
use serde_json::Value;

/// A tmux server of its own (`-L`), killed when the test ends.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Self {
        Self {
            socket: format!("ct-top-{}", std::process::id()),
        }
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("running tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }

    /// The screen once it shows `text`; panics with it otherwise.
    fn wait_for(&self, text: &str) -> String {
        eventually(Duration::from_secs(10), || {
            Some(self.screen()).filter(|s| s.contains(text))
        })
        .unwrap_or_else(|| panic!("no `{text}` on the screen:\n{}", self.screen()))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}

#[test]
fn top_redraws_in_place_and_takes_keys_in_a_terminal() {
    let server = tcp_server("127.0.0.1:0", 0, 0);
    let cg = TestCgroup::new("top");
    let config = format!(
        "trace = \"all\"\n[[host]]\nname = \"127.0.0.1\"\nports = [{}]\nlabel = \"web\"\n",
        server.port()
    );
    let d = Daemon::start(&cg, &config).unwrap();
    let tmux = Tmux::new();
    let command = format!(
        "{} --socket {} top --by process -d 0.3; echo exited $?; sleep 60",
        bin_path("tracectl").display(),
        d.socket.display()
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "132",
        "-y",
        "30",
        &command,
    ]);
    tmux.wait_for("by process (g), sorted by rate (s); q quits");

    let pid = probe(&cg, &["connect", &server.to_string()]).unwrap()["pid"]
        .as_u64()
        .unwrap();
    let screen = tmux.wait_for(&format!("ct-probe[{pid}]"));
    let header = screen.lines().next().unwrap();
    assert!(header.starts_with("connections/s "), "{screen}");
    assert!(header.ends_with("ring drops 0  lost lines 0"), "{screen}");
    let columns: Vec<&str> = screen.lines().nth(3).unwrap().split_whitespace().collect();
    assert_eq!(
        columns,
        ["PROCESS", "CONN/S", "OPEN", "TOTAL", "FAILED", "DENIED"],
        "{screen}"
    );

    // Keys apply at once: by destination (the host's label), then another order.
    tmux.run(&["send-keys", "-t", "top", "d"]);
    tmux.wait_for(&format!("web:{}", server.port()));
    tmux.run(&["send-keys", "-t", "top", "s"]);
    tmux.wait_for("by destination (g), sorted by open (s)");
    // q ends it with status 0 and gives the screen back as it was.
    tmux.run(&["send-keys", "-t", "top", "q"]);
    let screen = tmux.wait_for("exited 0");
    assert!(
        !screen.contains("connections/s"),
        "the alternate screen is left:\n{screen}"
    );
}

#[test]
fn top_prints_plain_views_when_not_on_a_terminal() {
    let server = tcp_server("127.0.0.1:0", 0, 0);
    let cg = TestCgroup::new("top-plain");
    let d = Daemon::start(&cg, "trace = \"all\"\n").unwrap();
    let pid = probe(&cg, &["connect", &server.to_string()]).unwrap()["pid"]
        .as_u64()
        .unwrap();
    let (code, out, err) = d.tracectl(&["top", "-n", "2", "-d", "0.2", "--by", "process", "--sort", "name"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains('\x1b'), "no escapes in a pipe: {out:?}");
    assert_eq!(out.matches("connections/s ").count(), 2, "two views: {out}");
    assert_eq!(
        out.matches("by process (g), sorted by name (s)").count(),
        2,
        "{out}"
    );
    assert!(out.contains(&format!("ct-probe[{pid}]")), "{out}");

    let (code, out, err) = d.tracectl(&["-o", "json", "top", "--once", "-d", "0.1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["top"]["by"], "unit");
    assert_eq!(v["top"]["totals"]["total"], 1, "{v}");
    assert_eq!(v["top"]["ring_drops"], 0);

    let (code, _, err) = d.tracectl(&["top", "-n", "0"]);
    assert_eq!(code, 2, "{err}");
}

/// Colour on a terminal only, and not with NO_COLOR set.
#[test]
fn colour_only_on_a_terminal_without_no_color() {
    let cg = TestCgroup::new("colour");
    let d = Daemon::start(&cg, "[[host]]\nname = \"127.0.0.1\"\n").unwrap();
    let tracectl = format!(
        "{} --socket {}",
        bin_path("tracectl").display(),
        d.socket.display()
    );
    let tmux = Tmux::new();
    let command = format!("{tracectl} hosts; NO_COLOR=1 {tracectl} hosts; echo done; sleep 60");
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "132",
        "-y",
        "30",
        &command,
    ]);
    tmux.wait_for("done");
    let screen = tmux.run(&["capture-pane", "-p", "-e", "-t", "top"]);
    let rows: Vec<&str> = screen.lines().filter(|l| l.starts_with("127.0.0.1")).collect();
    assert_eq!(rows.len(), 2, "{screen:?}");
    assert!(
        rows[0].contains("\x1b[32mok"),
        "green on a terminal: {:?}",
        rows[0]
    );
    assert!(!rows[1].contains('\x1b'), "NO_COLOR: {:?}", rows[1]);
    let (_, piped, _) = d.tracectl(&["hosts"]);
    assert!(!piped.contains('\x1b'), "{piped:?}");
}
