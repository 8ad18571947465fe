//! man/tracectl.1, generated from the clap definitions: one page with every
//! command and option (a page per command would be 15 pages for a dozen
//! options), plus the sections clap knows nothing of. The drift test
//! regenerates it; `UPDATE_MAN=1 cargo test -p tracectl man_page` rewrites it.

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
    Para("tracectl asks a running connectracerd(8) which process owns a connection, lists the connections it traced, streams its events, and changes what it watches. It talks to the daemon's varlink control socket, or with --bus to org.connectracer.Tracer1 on the system bus."),
    Para("Root and members of group connectracer see every connection and may change the configuration; any other user sees only their own processes' connections."),
];

const EXIT_STATUS: &[Item] = &[
    Tagged("0", "Success."),
    Tagged("1", "An error: the daemon refused the request (a configuration that does not validate, a host that is not there), or the connection broke. policy check exits 1 when the policy denies any of the destination's addresses, so that scripts can test it."),
    Tagged("2", "A usage error: an unknown command or option, or an argument tracectl or the daemon refuses (a port of 0, a CIDR that is not one, an add-host the configuration cannot hold); the message names the argument."),
    Tagged("3", "Access denied: by the socket's permissions, the daemon, the bus policy or polkit."),
    Tagged("4", "The daemon is not running: no control socket, no system bus, or nobody owning org.connectracer.Tracer1."),
    Tagged("run", "Once the command has started, tracectl run exits with its status instead: the command's exit code, 128+N when signal N ended it, 126 or 127 when it could not be executed. Before that, the codes above (3: the daemon refused to place it)."),
];

const ENVIRONMENT: &[Item] = &[
    Tagged("CONNECTRACER_SOCKET", "The control socket, as with --socket."),
    Tagged(
        "CONNECTRACER_SANDBOX_SOCKET",
        "The sandbox socket tracectl run uses, as with --sandbox-socket.",
    ),
    Tagged(
        "NO_COLOR",
        "When set and not empty, no colour, even on a terminal (output to anything else never has colour).",
    ),
    Tagged(
        "DBUS_SYSTEM_BUS_ADDRESS",
        "The system bus used with --bus, instead of /run/dbus/system_bus_socket.",
    ),
];

const FILES: &[Item] = &[
    Tagged(
        "/run/connectracer/control.sock",
        "The daemon's control socket (mode 0660, group connectracer).",
    ),
    Tagged(
        "/etc/connectracer/connectracer.toml, /etc/connectracer/conf.d/*.toml",
        "The configuration reload re-reads; see connectracer.toml(5).",
    ),
    Tagged(
        "/var/lib/connectracer/hosts.toml",
        "Hosts added with add-host, unless --runtime.",
    ),
    Tagged(
        "/run/connectracer/sandbox.sock",
        "The daemon's sandbox socket (mode 0666): tracectl run, for any user.",
    ),
    Tagged(
        "/var/lib/connectracer/sandboxes.toml",
        "The sandboxes in force, for a restarted daemon.",
    ),
];

const EXAMPLES: &[Item] = &[
    Tagged(
        "tracectl run --allow-net api.example.com:443 --allow-net 10.0.0.0/8 --deny-read ~/.ssh -- ./build.sh",
        "Runs build.sh so that it reaches only api.example.com on 443 and 10/8, cannot read ~/.ssh, and prints each connection it made or was refused.",
    ),
    Tagged(
        "tracectl who 93.184.215.14:443",
        "Which processes connect to this destination.",
    ),
    Tagged(
        "tracectl who --local-port 51234",
        "Which process owns the connection from this local port.",
    ),
    Tagged(
        "tracectl ps $(pidof curl)",
        "A process's open and recently closed connections.",
    ),
    Tagged(
        "tracectl --json connections --state established --limit 20",
        "The 20 newest established connections, as JSON.",
    ),
    Tagged(
        "tracectl add-host api.example.com --port 443 --label api",
        "Watch a hostname (followed through DNS) on one port; its events carry the label.",
    ),
    Tagged(
        "tracectl watch --host api",
        "Stream the events of connections to it as they happen.",
    ),
    Tagged(
        "tracectl watch --unit '*.service' --verdict deny --event denied",
        "Stream only the denials of system services.",
    ),
    Tagged(
        "tracectl -o jsonl connections --user www-data --dest 10.0.0.0/8 --port 5432",
        "One JSON object a line for each connection of www-data to a database in 10.0.0.0/8.",
    ),
    Tagged(
        "tracectl top --by destination",
        "A live view of who connects where; g, s and q change the grouping, the order, and quit.",
    ),
    Tagged(
        "tracectl top --once --by process | head",
        "One plain view, for scripts.",
    ),
    Tagged(
        "tracectl policy check --unit backup.service --dest s3.example.com:443",
        "Whether the egress policy lets a unit connect there, and which rule decides.",
    ),
    Tagged(
        "tracectl profile --unit backup.service --for 10min -w backup-seccomp.json",
        "Record the syscalls of a unit and what runs below it for ten minutes, as an OCI seccomp profile.",
    ),
    Tagged(
        "tracectl profile --cgroup /system.slice/web.service --for 1h --format systemd -w /etc/systemd/system/web.service.d/50-syscalls.conf",
        "The same as a systemd drop-in: @system-service and what the unit used outside it.",
    ),
    Tagged(
        "tracectl run --profile-syscalls make.json -- make -j4",
        "Run a build in a sandbox and write the syscalls it and everything it started made, from make's exec to the last process's end, as an OCI seccomp profile.",
    ),
    Tagged(
        "tracectl profile --container web --for 5min -w web-seccomp.json",
        "Record a running container's syscalls (Docker, Podman, containerd or CRI-O; by name, id or an id prefix of 12 digits or more) for five minutes.",
    ),
    Tagged(
        "tracectl policy suggest --unit backup.service --since 7days -w /etc/connectracer/conf.d/50-backup.toml",
        "An egress allow-list from what the unit reached in the last week: a [[scope]] that denies by default and an allow [[rule]] per destination, by hostname where its DNS answer was seen. In force with mode = \"enforce\" once the daemon reloads.",
    ),
    Tagged(
        "tracectl policy suggest --unit backup.service --format systemd -w /etc/systemd/system/backup.service.d/50-egress.conf",
        "The same as IPAddressDeny=any and IPAddressAllow= (addresses only: names become the addresses seen for them).",
    ),
    Tagged(
        "tracectl policy suggest --container web",
        "The same for a container, running or gone: a [[scope]] selecting it by its full id.",
    ),
    Tagged(
        "tracectl --bus stats",
        "The daemon's counters, over the system bus.",
    ),
];

const SEE_ALSO: &[Item] = &[Para(
    "connectracerd(8), connectracer.toml(5), ss(8), journalctl(1), systemd.exec(5)",
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

/// `.SS tracectl who`, its description, synopsis and options; commands with
/// subcommands (policy) as each of theirs.
fn command(prefix: &str, cmd: &clap::Command) -> String {
    let name = format!("{prefix} {}", cmd.get_name());
    if cmd.has_subcommands() {
        return cmd.get_subcommands().map(|sub| command(&name, sub)).collect();
    }
    let man = Man::new(cmd.clone().bin_name(&name).disable_help_flag(true));
    let mut r = Roff::new();
    r.control("SS", [name.as_str()]);
    let mut out = chunk(|w| r.to_writer(w));
    // The per-command parts come with their own .SH lines, which would end
    // the COMMANDS section.
    let body = chunk(|w| man.render_synopsis_section(w)) + &chunk(|w| man.render_description_section(w));
    out.extend(
        body.lines()
            .filter(|l| !l.starts_with(".SH"))
            .map(|l| format!("{l}\n.br\n")),
    );
    if cmd
        .get_arguments()
        .any(|a| !a.is_hide_set() && a.get_id() != "help")
    {
        let options = chunk(|w| man.render_options_section(w));
        out.extend(
            options
                .lines()
                .filter(|l| !l.starts_with(".SH"))
                .map(|l| format!("{l}\n")),
        );
    }
    out
}

pub fn render() -> String {
    let cmd = super::Args::command().subcommand_value_name("COMMAND");
    let man = Man::new(cmd.clone()).manual("connectracer");
    let mut page = String::from(".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n");
    page += &chunk(|w| man.render_title(w));
    page += &chunk(|w| man.render_name_section(w));
    page += &chunk(|w| man.render_synopsis_section(w));
    page += &section("DESCRIPTION", DESCRIPTION);
    page += &chunk(|w| man.render_options_section(w));
    page += ".SH COMMANDS\n";
    for sub in cmd.get_subcommands() {
        page += &command("tracectl", sub);
    }
    for (title, items) in [
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

/// man/tracectl.1 is generated from these definitions; UPDATE_MAN=1
/// regenerates it, otherwise any drift fails.
#[test]
fn man_page_matches_the_cli() {
    let out = render();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../man/tracectl.1");
    if std::env::var_os("UPDATE_MAN").is_some() {
        std::fs::write(path, &out).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == out,
        "{path} is stale: run `UPDATE_MAN=1 cargo test -p tracectl man_page`"
    );
}

/// Every command and every long option is on the page, and no page it
/// refers to is one that does not exist (tracectl-who(1) and the like).
#[test]
fn the_page_covers_every_command_and_option_and_names_no_missing_page() {
    let page = render();
    fn walk(cmd: &clap::Command, page: &str, prefix: &str) {
        for sub in cmd.get_subcommands() {
            let name = format!("{prefix} {}", sub.get_name());
            if !sub.has_subcommands() {
                assert!(page.contains(&format!(".SS \"{name}\"")), "{name} missing");
            }
            for arg in sub.get_arguments().filter_map(|a| a.get_long()) {
                assert!(
                    page.contains(&format!("\\-\\-{}", arg.replace('-', "\\-"))),
                    "{name} --{arg} missing"
                );
            }
            walk(sub, page, &name);
        }
    }
    walk(&super::Args::command(), &page, "tracectl");
    for section in ["EXIT STATUS", "ENVIRONMENT", "FILES", "EXAMPLES"] {
        assert!(
            page.contains(&format!(".SH \"{section}\"")) || page.contains(&format!(".SH {section}\n")),
            "{section}"
        );
    }
    let shipped = [
        "connectracerd(8)",
        "connectracer.toml(5)",
        "ss(8)",
        "journalctl(1)",
        // systemd's, which the daemon's package depends on.
        "systemd.exec(5)",
    ];
    for word in page.split(|c: char| c.is_whitespace() || c == ',') {
        if word.contains("(1)") || word.contains("(5)") || word.contains("(8)") {
            let word = word.trim_matches(|c: char| c == '.' || c == '\\');
            assert!(
                shipped.contains(&word),
                "refers to {word}, which is not a page that exists"
            );
        }
    }
}
