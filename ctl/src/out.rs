//! Where every byte tracectl prints goes through: the output format, the
//! one JSON envelope, colour only on a terminal, and a closed pipe ending
//! the program quietly (`tracectl who ... | head -1`).

use std::io::{IsTerminal, Write};

use serde::Serialize;

/// `-o`: what a command prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Tables and lines for people.
    Text,
    /// Tables with every column.
    Wide,
    /// One JSON document, `{"KEY": ...}`.
    Json,
    /// One JSON object a line; lists one `{"ITEM": ...}` per element.
    Jsonl,
}

impl Format {
    pub fn is_json(self) -> bool {
        matches!(self, Self::Json | Self::Jsonl)
    }
}

/// Writes to stdout; a reader that went away (EPIPE) ends tracectl with
/// status 0, as `head` expects of the programs it reads from. Anything
/// else that stops stdout is an error worth saying.
/// A rendered document to `path` (`-w FILE`), else to stdout.
pub fn write_to(path: Option<&std::path::Path>, text: &str) -> Result<(), crate::client::ClientError> {
    match path {
        Some(path) => std::fs::write(path, text).map_err(|source| crate::client::ClientError::Write {
            path: path.to_path_buf(),
            source,
        }),
        None => {
            write(text);
            Ok(())
        }
    }
}

pub fn write(s: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(s.as_bytes()).and_then(|()| out.flush()) {
        gone(&e);
    }
}

/// Ends tracectl because stdout failed.
pub fn gone(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("tracectl: writing to stdout: {e}");
    std::process::exit(1);
}

/// Colour when stdout is a terminal and `NO_COLOR` is unset or empty
/// (<https://no-color.org>).
pub fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// SGR colours the tables use, applied after padding so widths stay right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paint {
    Red,
    Yellow,
    Green,
    Dim,
}

pub fn paint(on: bool, p: Paint, s: &str) -> String {
    if !on || s.is_empty() {
        return s.to_string();
    }
    let code = match p {
        Paint::Red => "31",
        Paint::Yellow => "33",
        Paint::Green => "32",
        Paint::Dim => "2",
    };
    format!("\x1b[{code}m{s}\x1b[0m")
}

/// How a command's answer is printed.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    pub format: Format,
    pub colour: bool,
}

impl Printer {
    pub fn wide(&self) -> bool {
        self.format == Format::Wide
    }

    /// One answer under one key: `{"stats": {...}}`.
    pub fn one<T: Serialize>(&self, key: &str, value: &T, text: impl FnOnce(&T) -> String) {
        let doc = serde_json::json!({ key: value });
        match self.format {
            Format::Json => write(&format!("{}\n", pretty(&doc))),
            Format::Jsonl => write(&format!("{doc}\n")),
            Format::Text | Format::Wide => write(&text(value)),
        }
    }

    /// A list: `{"hosts": [...]}` as JSON, one `{"host": {...}}` a line
    /// as JSON Lines.
    pub fn list<T: Serialize>(&self, keys: (&str, &str), items: &[T], text: impl FnOnce(&[T]) -> String) {
        match self.format {
            Format::Json => write(&format!("{}\n", pretty(&serde_json::json!({ keys.0: items })))),
            Format::Jsonl => {
                let mut s = String::new();
                for item in items {
                    s.push_str(&serde_json::json!({ keys.1: item }).to_string());
                    s.push('\n');
                }
                write(&s);
            }
            Format::Text | Format::Wide => write(&text(items)),
        }
    }
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}
