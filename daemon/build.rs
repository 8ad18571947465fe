//! Compiles the BPF object with clang (CO-RE, `-Wall -Werror`) and generates
//! its skeleton; the object is embedded in the daemon binary.

use std::env;
use std::path::PathBuf;
use std::process::Command;

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "../bpf/connectracer.bpf.c";
/// Verified: clang 14 (Debian 12's default) drops stores into ring-buffer
/// records in connect4 (the cookie and the IPv4 address are never written).
const MIN_CLANG: u32 = 15;

fn clang_major(clang: &str) -> Option<u32> {
    let out = Command::new(clang).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rest = &text[text.find("version ")? + 8..];
    rest.split('.').next()?.trim().parse().ok()
}

/// `$CLANG` if set, else the newest versioned clang on PATH, else `clang`.
fn pick_clang() -> (String, u32) {
    let mut candidates: Vec<String> = env::var("CLANG").into_iter().collect();
    if candidates.is_empty() {
        candidates.extend((MIN_CLANG..=25).rev().map(|v| format!("clang-{v}")));
        candidates.push("clang".into());
    }
    candidates
        .into_iter()
        .find_map(|c| clang_major(&c).map(|v| (c, v)))
        .unwrap_or_else(|| panic!("no clang found: install clang-19 (or set CLANG=/path/to/clang)"))
}

/// The commit being built, for connectracer_build_info; "unknown" outside git.
fn git_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn main() {
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rustc-env=CONNECTRACER_GIT_COMMIT={}", git_commit());
    // A new commit moves the branch ref (or HEAD itself when detached).
    for git_file in ["../.git/HEAD", "../.git/refs/heads"] {
        if std::path::Path::new(git_file).exists() {
            println!("cargo:rerun-if-changed={git_file}");
        }
    }
    let (clang, major) = pick_clang();
    assert!(
        major >= MIN_CLANG,
        "{clang} is version {major}; connectracer's BPF code needs clang >= {MIN_CLANG} \
         (clang 14 miscompiles it): install clang-19 or set CLANG"
    );
    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo")).join("connectracer.skel.rs");
    SkeletonBuilder::new()
        .source(SRC)
        .clang(&clang)
        .clang_args(["-Wall", "-Werror", "-I../bpf/include", "-I../bpf"])
        .build_and_generate(&out)
        .unwrap_or_else(|e| panic!("building {SRC} with {clang}: {e:#}"));
    for path in [
        SRC,
        "../bpf/connectracer.h",
        "../bpf/dns.bpf.h",
        "../bpf/profile.bpf.h",
        "../bpf/include/vmlinux.h",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
}
