use std::process::ExitCode;

use clap::Parser;
use connectracerd::cli::Args;
use connectracerd::daemon;
use connectracerd::reload::ConfigSource;

/// sysexits.h EX_CONFIG: the configuration is invalid.
const EX_CONFIG: u8 = 78;

/// The metrics address must be free to bind, unless a running daemon
/// (which may be the one holding it) answers on the control socket.
fn check_listen(config: &connectracerd::config::Config, socket: &std::path::Path) -> Result<(), String> {
    let Some(addr) = config.metrics.listen else {
        return Ok(());
    };
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(_) if std::os::unix::net::UnixStream::connect(socket).is_ok() => Ok(()),
        Err(e) => Err(format!("metrics.listen: cannot bind {addr}: {e}")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let source = ConfigSource::from_args(&args);
    let config = match source.load() {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("connectracerd: {errors}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    if args.check_config {
        let files: Vec<String> = connectracerd::config::sources(source.main())
            .iter()
            .filter(|f| f.exists())
            .map(|f| f.display().to_string())
            .collect();
        let shown = if files.is_empty() {
            "built-in defaults".to_string()
        } else {
            files.join(", ")
        };
        if let Err(e) = check_listen(&config, &args.control_socket) {
            eprintln!("connectracerd: {shown}: {e}");
            return ExitCode::from(EX_CONFIG);
        }
        // Warnings do not fail the check: the configuration means what it
        // says, it just says something that has no effect.
        let warnings = connectracerd::policy::shadow::in_config(&config);
        for w in &warnings {
            eprintln!("connectracerd: warning: {w}");
        }
        println!(
            "{shown}: configuration is valid ({} watched hosts, {} warnings)",
            config.hosts.len(),
            warnings.len()
        );
        return ExitCode::SUCCESS;
    }
    let journal = connectracerd::logging::init(config.log.format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("connectracerd: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let paths = daemon::Paths {
        control_socket: args.control_socket.clone(),
        pin_dir: (!args.no_pin).then(|| args.pin_dir.clone()),
        state_dir: args.state_dir.clone(),
        journal,
    };
    match runtime.block_on(daemon::run(source, config, &paths)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once: diagnostics already go to stderr (or the journal, which
            // is stderr too under systemd); a second eprintln doubled it.
            tracing::error!("connectracerd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
