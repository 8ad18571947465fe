//! connectracerd's command line: configuration checking against checked-in
//! fixtures, and the errors it gives when it cannot run.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use connectracer_tests::{bin_path, TestCgroup};

fn daemon() -> Command {
    Command::new(bin_path("connectracerd"))
}

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

#[test]
fn invalid_fixtures_fail_with_exactly_their_errors() {
    let dir = fixtures().join("invalid");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let expected = std::fs::read_to_string(path.with_extension("err"))
            .unwrap_or_else(|e| panic!("{}: missing .err: {e}", path.display()))
            .replace("FIXTURE", path.to_str().unwrap());
        let out = daemon()
            .arg("--check-config")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(78), "{}: EX_CONFIG", path.display());
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            expected,
            "{}",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 3);
}

#[test]
fn bundled_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../etc/connectracer.toml");
    let out = daemon()
        .arg("--check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration is valid"));
}

/// A rule no connection can reach is a warning that names it and what
/// decides instead, both by file and line; the check still passes.
#[test]
fn shadowed_rules_are_warnings_naming_both_rules() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("connectracer.toml");
    let text = "[[rule]]\naction = \"deny\"\ndest = \"127.0.0.0/8\"\n\
[[rule]]\naction = \"allow\"\ndest = \"10.0.0.0/8\"\n\
[[rule]]\naction = \"deny\"\ndest = \"10.0.0.0/8\"\nports = [443]\n";
    std::fs::write(&path, text).unwrap();
    let out = daemon()
        .arg("--check-config")
        .arg("--config")
        .arg(&path)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "warnings do not fail the check: {stderr}");
    assert!(
        stdout.contains("configuration is valid (0 watched hosts, 2 warnings)"),
        "{stdout}"
    );
    let file = path.display();
    assert_eq!(
        stderr,
        format!(
            "connectracerd: warning: rule 1 ({file}:2) can never match: the built-in exception \
             `allow_loopback` (127.0.0.0/8 and ::1, every port) allows all of its destinations first; \
             set `allow_loopback = false` under [policy] if the rule should decide\n\
             connectracerd: warning: rule 3 ({file}:8) can never match: rule 2 ({file}:5) comes first \
             for the same callers and covers all of its destinations, ports and protocols\n"
        )
    );
}

#[test]
fn missing_explicit_config_is_an_error() {
    let out = daemon()
        .args(["--check-config", "--config", "/nonexistent/c.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "connectracerd: 1 error in configuration\n  /nonexistent/c.toml:0:0: cannot read file: No such file or directory (os error 2)\n"
    );
}

#[test]
fn unprivileged_start_says_what_is_missing() {
    let out = daemon()
        .args(["--foreground", "--config", "/dev/null"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("must run as root or with CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (running as uid 65534"),
        "{err}"
    );
}

#[test]
fn a_cgroup_that_does_not_exist_is_named() {
    let cg = TestCgroup::new("cli");
    let missing = cg.path.join("no-such-child");
    let out = daemon()
        .args(["--foreground", "--config", "/dev/null", "--cgroup"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{} is not a cgroup v2 directory", missing.display())),
        "{err}"
    );
    assert_eq!(
        err.matches("is not a cgroup v2 directory").count(),
        1,
        "a fatal error is printed once: {err}"
    );
    assert!(!err.contains('\x1b'), "escape codes in a pipe: {err:?}");
}

#[test]
fn diagnostics_written_to_a_file_carry_no_escape_codes() {
    let cg = TestCgroup::new("cli");
    let log = std::env::temp_dir().join(format!("connectracer-diagnostics-{}.log", std::process::id()));
    let status = daemon()
        .args(["--foreground", "--config", "/dev/null", "--cgroup"])
        .arg(cg.path.join("no-such-child"))
        .stderr(std::fs::File::create(&log).unwrap())
        .status()
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert_eq!(status.code(), Some(1));
    assert!(text.contains("ERROR"), "{text}");
    assert!(!text.contains('\x1b'), "escape codes in a file: {text:?}");
}

/// Every commented-out example in the bundled configuration is valid too.
#[test]
fn bundled_config_examples_are_valid_when_uncommented() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../etc/connectracer.toml");
    let text: String = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase() || c == '[') => rest,
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let dir = std::env::temp_dir().join(format!("connectracer-uncommented-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("connectracer.toml");
    std::fs::write(&file, text).unwrap();
    // Its own state directory: hosts added on this machine are not the bundled file's.
    let out = daemon()
        .arg("--check-config")
        .arg("--config")
        .arg(&file)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("(3 watched hosts, 0 warnings)"));
}

#[test]
fn tracectl_prints_completions_without_a_daemon() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(bin_path("tracectl"))
            .args(["--socket", "/nonexistent", "completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("add-host") && script.contains("who"),
            "{shell}: {script}"
        );
    }
    let out = Command::new(bin_path("tracectl"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "unknown shell is a usage error");
}
