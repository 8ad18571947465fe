//! Commands run to completion.

use std::process::Command;

/// `systemd-analyze verify` of a service `name` whose [Service] runs
/// `exec` with `dropin` appended: passes only without a warning that
/// systemd would ignore a setting (it only warns about unknown names).
pub fn verify_unit_with(name: &str, exec: &str, dropin: &str) {
    let dir = std::env::temp_dir().join(format!("ct-units-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("unit dir");
    let unit = dir.join(name);
    let text = format!("[Unit]\nDescription=verified\n\n[Service]\nExecStart={exec}\n\n{dropin}");
    std::fs::write(&unit, text).expect("unit file");
    let (code, out, err) = output(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&unit),
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("ignoring") && !err.contains("Failed"), "{err}");
}

/// Runs a command to completion: exit code, stdout, stderr.
pub fn output(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("running a command");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The syscalls strace sees `cmd` make (`strace -f -c`): the names in the
/// last column of its per-syscall table.
pub fn strace_names(cmd: &[&str]) -> std::collections::BTreeSet<String> {
    let out = tempfile::NamedTempFile::new().expect("strace output file");
    let (code, _, err) = output(
        Command::new("strace")
            .args(["-f", "-c", "-o"])
            .arg(out.path())
            .args(cmd),
    );
    assert_eq!(code, 0, "strace: {err}");
    let text = std::fs::read_to_string(out.path()).expect("strace output");
    text.lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|n| {
            n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .filter(|n| *n != "total" && *n != "syscall")
        .map(str::to_string)
        .collect()
}
