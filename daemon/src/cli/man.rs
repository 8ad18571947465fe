//! man/connectracerd.8, generated from the clap definitions plus the
//! sections clap knows nothing of (signals, exit status, files). The drift
//! test regenerates it; `UPDATE_MAN=1 cargo test -p connectracerd man_page`
//! rewrites it.

use clap::CommandFactory;
use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;

/// What the prose sections hold: a paragraph, or a tagged one (`.TP`).
enum Item {
    Para(&'static str),
    Tagged(&'static str, &'static str),
}
use Item::{Para, Tagged};

const DESCRIPTION: &[Item] = &[
    Para("connectracerd loads eBPF programs on cgroup connect4/6, sendmsg4/6 and sock_release hooks and on the inet_sock_set_state and sched tracepoints, and turns every outbound TCP and UDP connection into an event attributed to its process, user, cgroup, systemd unit and container. With an egress policy configured, the same hooks refuse connections (EPERM)."),
    Para("Events go to the configured event sinks (stdout, the journal, JSON Lines files); tracectl(1) queries the daemon over its control socket or the system bus; Prometheus metrics are served on 127.0.0.1:9717 and written for node_exporter's textfile collector. Under systemd it is a Type=notify service with a watchdog."),
];

const SIGNALS: &[Item] = &[
    Tagged("SIGHUP", "Reopen the event sinks' files (after logrotate renamed them) and reload the configuration, as systemctl reload and tracectl reload do. An invalid configuration is logged and leaves the running one in force."),
    Tagged("SIGTERM, SIGINT", "Stop: flush the sinks, save the connection counters, remove the metrics textfile, and detach and unpin the programs unless [bpf] keep_pinned_on_stop is set or sandboxes of tracectl run are in force (they must stay confined until the next start)."),
    Tagged("SIGKILL", "Pinned programs go on tracing (and enforcing) into the pinned ring buffer; the next instance adopts them and reports what happened meanwhile."),
];

const EXIT_STATUS: &[Item] = &[
    Tagged("0", "A clean stop, or --check-config found the configuration valid (warnings, such as rules that can never match, are printed and do not fail it)."),
    Tagged("1", "Starting failed: missing privileges, no BTF, a cgroup that does not exist, programs that do not load; the reason is logged."),
    Tagged("2", "A usage error on the command line."),
    Tagged("78", "EX_CONFIG: the configuration is invalid (every error with file, line, column and key), or --check-config found the metrics address taken."),
];

const ENVIRONMENT: &[Item] = &[
    Tagged("CONNECTRACER_LOG", "Diagnostics filter in tracing's EnvFilter syntax (default: info), e.g. connectracerd=debug."),
    Tagged("NO_COLOR", "Set: no colours in diagnostics even on a terminal (they are never coloured in files, pipes or the journal)."),
    Tagged("JOURNAL_STREAM", "Set by systemd: diagnostics and the default event sink go to the journal with structured fields."),
    Tagged("NOTIFY_SOCKET, WATCHDOG_USEC", "Set by systemd for Type=notify and WatchdogSec=."),
    Tagged("DBUS_SYSTEM_BUS_ADDRESS", "The system bus to serve org.connectracer.Tracer1 on."),
];

const FILES: &[Item] = &[
    Tagged("/etc/connectracer/connectracer.toml", "The configuration; see connectracer.toml(5)."),
    Tagged("/etc/connectracer/conf.d/*.toml", "Drop-ins, merged in lexical order."),
    Tagged("/run/connectracer/control.sock", "The varlink control socket (0660, group connectracer)."),
    Tagged("/run/connectracer/sandbox.sock", "The sandbox socket (0666): tracectl run, for any user; serves nothing else. Beside a control socket NAME.sock given with --control-socket, NAME.sandbox.sock."),
    Tagged("/var/lib/connectracer/hosts.toml", "Hosts added with tracectl add-host."),
    Tagged("/var/lib/connectracer/sandboxes.toml", "The sandboxes of tracectl run in force, re-applied at start (those whose processes are gone are removed)."),
    Tagged("/var/lib/connectracer/metrics-counters.prom", "Connection counters saved for the next instance."),
    Tagged(
        "/var/lib/connectracer/egress-seen.json",
        "The destinations each cgroup and user reached, for tracectl policy suggest; saved every second when changed.",
    ),
    Tagged("/sys/fs/bpf/connectracer", "Pinned links and state maps."),
    Tagged("/var/log/connectracer/events.jsonl", "The packaged configuration's file sink."),
    Tagged("/var/lib/prometheus/node-exporter/connectracer.prom", "The node_exporter textfile."),
    Tagged("/usr/share/connectracer/grafana/connectracer.json, /usr/share/connectracer/prometheus/connectracer-alerts.yml", "A Grafana dashboard and Prometheus alerting rules for the metrics."),
];

const EXAMPLES: &[Item] = &[
    Tagged(
        "connectracerd --check-config",
        "Validate /etc/connectracer and its drop-ins, print every error and warning.",
    ),
    Tagged(
        "connectracerd --foreground --trace all --no-pin",
        "Trace every connection of the host until interrupted, leaving nothing pinned.",
    ),
];

const SEE_ALSO: &[Item] = &[Para(
    "tracectl(1), connectracer.toml(5), systemd.service(5), bpftool(8)",
)];

/// A roff chunk without the preamble every clap_mangen render repeats.
fn chunk(render: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> String {
    let mut out = Vec::new();
    render(&mut out).expect("rendering into memory");
    let text = String::from_utf8(out).expect("roff is UTF-8");
    text.lines()
        .filter(|l| !l.starts_with(".ie \\n(.g") && !l.starts_with(".el .ds Aq"))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn section(title: &str, items: &[Item]) -> String {
    let mut r = Roff::new();
    r.control("SH", [title]);
    for item in items {
        match item {
            Para(text) => r.control("PP", []).text([roman(*text)]),
            Tagged(term, text) => r.control("TP", []).text([bold(*term)]).text([roman(*text)]),
        };
    }
    chunk(|w| r.to_writer(w))
}

pub fn render() -> String {
    let man = Man::new(super::Args::command())
        .section("8")
        .manual("connectracer");
    let mut page = String::from(".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n");
    page += &chunk(|w| man.render_title(w));
    page += &chunk(|w| man.render_name_section(w));
    page += &chunk(|w| man.render_synopsis_section(w));
    page += &section("DESCRIPTION", DESCRIPTION);
    page += &chunk(|w| man.render_options_section(w));
    for (title, items) in [
        ("SIGNALS", SIGNALS),
        ("EXIT STATUS", EXIT_STATUS),
        ("ENVIRONMENT", ENVIRONMENT),
        ("FILES", FILES),
        ("EXAMPLES", EXAMPLES),
        ("SEE ALSO", SEE_ALSO),
    ] {
        page += &section(title, items);
    }
    page
}

/// man/connectracerd.8 is generated from these definitions; UPDATE_MAN=1
/// regenerates it, otherwise any drift fails.
#[test]
fn man_page_matches_the_cli() {
    let out = render();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../man/connectracerd.8");
    if std::env::var_os("UPDATE_MAN").is_some() {
        std::fs::write(path, &out).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == out,
        "{path} is stale: run `UPDATE_MAN=1 cargo test -p connectracerd man_page`"
    );
}

/// The exit statuses the page documents are the ones main.rs returns, and
/// every option is on it.
#[test]
fn the_page_documents_every_option_and_the_real_exit_statuses() {
    let page = render();
    for arg in super::Args::command()
        .get_arguments()
        .filter_map(|a| a.get_long())
    {
        assert!(
            page.contains(&format!("\\-\\-{}", arg.replace('-', "\\-"))),
            "--{arg} missing"
        );
    }
    let main = include_str!("../main.rs");
    assert!(
        main.contains("const EX_CONFIG: u8 = 78;"),
        "EX_CONFIG changed: update EXIT_STATUS"
    );
    let usage = super::Args::command().try_get_matches_from(["connectracerd", "--no-such-option"]);
    assert_eq!(usage.unwrap_err().exit_code(), 2, "clap's usage exit status");
}
