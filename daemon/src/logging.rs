//! Where diagnostics and event lines go: journald's native protocol, with
//! structured fields, when systemd connected our stderr to the journal
//! (JOURNAL_STREAM names that stream); stderr/stdout otherwise.

use std::io::IsTerminal;
use std::os::fd::AsRawFd;

use crate::config::LogFormat;

/// Whether stderr is the journal stream systemd set up (JOURNAL_STREAM is
/// "DEVICE:INODE" of that stream; a child that inherited the variable but
/// had its stderr redirected must not log to the journal).
pub fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr().as_raw_fd()) {
        Ok(st) => journal_stream_matches(&value, st.st_dev, st.st_ino),
        Err(_) => false,
    }
}

fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.split_once(':') else {
        return false;
    };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
}

/// Terminal colours only for a person at a terminal: never in a file, a
/// pipe or the journal, and not when NO_COLOR (https://no-color.org) is set
/// to anything but the empty string.
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Sets up diagnostics; returns whether they (and event lines) go to the
/// journal.
pub fn init(format: LogFormat) -> bool {
    use tracing_subscriber::prelude::*;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("CONNECTRACER_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    if stderr_is_journal() {
        // Field names as written (PID, COMM, ...), not prefixed with F_.
        if let Ok(layer) = tracing_journald::layer() {
            tracing_subscriber::registry()
                .with(filter())
                .with(layer.with_field_prefix(None))
                .init();
            return true;
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_ansi(colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_at_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
    }

    #[test]
    fn journal_stream_must_name_our_stderr() {
        assert!(journal_stream_matches("8:12345", 8, 12345));
        assert!(!journal_stream_matches("8:12345", 8, 12346));
        assert!(!journal_stream_matches("garbage", 8, 12345));
        assert!(!journal_stream_matches("", 0, 0));
    }
}
