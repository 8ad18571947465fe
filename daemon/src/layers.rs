//! The daemon's modules in layers: each may use only the layers below its
//! own, so there are no import cycles and the configuration model and the
//! kernel's layout stay leaves that know nothing of what drives them. A
//! module added to the crate must be placed here.

/// Lowest first.
const LAYERS: &[&[&str]] = &[
    // Leaves: the configuration model, the kernel's programs and layout,
    // system interfaces.
    &[
        "config",
        "bpf",
        "sys",
        "cli",
        "service",
        "count_warning",
        "metrics_http",
    ],
    // What the kernel's records and the model's parts are about.
    &[
        "attribution",
        "answers",
        "dns",
        "added_hosts",
        "sandbox",
        "epochs",
        "logging",
        "downtime",
        "metrics",
        "table",
        "profiles",
        "egress",
    ],
    // What the policy means; where event lines go; GPU telemetry; container names.
    &["policy", "sinks", "gpu", "containers"],
    // The ruleset stage (model to kernel layout), the kernel's owner thread,
    // the event path.
    &["ruleset", "kernel", "pipeline"],
    &["control", "reload", "snapshot"],
    &["dbus"],
    // The owner that wires everything.
    &["daemon"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// Every `crate::MODULE` a source text names outside comments.
fn crate_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `connectracerd::crate` does not exist; `foo_crate::` is not ours.
            let preceded = rest[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            if !preceded && !name.is_empty() {
                out.push(name);
            }
            rest = after;
        }
    }
    out
}

fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_module_uses_one_of_its_own_layer_or_above() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut wrong = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&root).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_string_lossy();
        let module = first.trim_end_matches(".rs");
        if matches!(module, "lib" | "main" | "layers") {
            continue;
        }
        let Some(own) = layer_of(module) else {
            wrong.push(format!("{module}: not placed in a layer (layers.rs)"));
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for used in crate_paths(&text) {
            if used == module {
                continue;
            }
            match layer_of(&used) {
                Some(l) if l < own => {}
                Some(_) => wrong.push(format!(
                    "{}: uses crate::{used}, not below {module}",
                    rel.display()
                )),
                None => wrong.push(format!(
                    "{}: uses crate::{used}, placed in no layer",
                    rel.display()
                )),
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn paths_are_read_from_code_not_comments() {
    let text = "use crate::config::{A, B};\n// crate::daemon in a comment\nlet x = crate::bpf::layout::X; // crate::ruleset\nmy_crate::y";
    assert_eq!(crate_paths(text), ["config", "bpf"]);
}
