//! The per-label connection counters saved across restarts: the lines of
//! one family of the exposition, and their parser.

use std::path::Path;

/// Writes the samples of `family` in `exposition` to `path` (temp file and
/// rename: a crash mid-write leaves the previous save).
pub(super) fn save(exposition: &str, family: &str, path: &Path) -> std::io::Result<()> {
    let prefix = format!("{family}{{");
    let text: String = exposition
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(|l| format!("{l}\n"))
        .collect();
    crate::sys::state_file::replace(path, text)
}

/// The samples of `family` a previous `save` wrote; none if there is no file.
pub(super) fn load(path: &Path, family: &str) -> Vec<(Vec<(String, String)>, u64)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines().filter_map(|l| parse_sample(l, family)).collect()
}

/// `name{k="v",...} value` as the exposition format writes it (with its
/// `\\`, `\"` and `\n` escapes in label values).
fn parse_sample(line: &str, name: &str) -> Option<(Vec<(String, String)>, u64)> {
    let rest = line.strip_prefix(name)?.strip_prefix('{')?;
    let mut labels = Vec::new();
    let mut chars = rest.char_indices().peekable();
    loop {
        let start = chars.peek()?.0;
        let eq = rest[start..].find("=\"")? + start;
        let key = rest[start..eq].trim_start_matches(',').to_string();
        // Skip past `="`.
        while chars.peek()?.0 < eq + 2 {
            chars.next();
        }
        let mut value = String::new();
        loop {
            let (_, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.push((key, value));
        match chars.next()?.1 {
            ',' => continue,
            '}' => break,
            _ => return None,
        }
    }
    let after = chars.peek().map_or(rest.len(), |(i, _)| *i);
    let value = rest[after..].trim().parse::<f64>().ok()?;
    Some((labels, value as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONNECTIONS: &str = "connectracer_connections_total";

    #[test]
    fn samples_parse_with_escapes() {
        let line = r#"connectracer_connections_total{host="",comm="a\"b\\c",unit="x.service"} 42"#;
        let (labels, v) = parse_sample(line, CONNECTIONS).unwrap();
        assert_eq!(v, 42);
        assert_eq!(
            labels,
            [
                ("host".into(), "".into()),
                ("comm".into(), "a\"b\\c".into()),
                ("unit".into(), "x.service".into())
            ]
        );
        assert!(parse_sample("connectracer_other_total{a=\"b\"} 1", CONNECTIONS).is_none());
        assert!(parse_sample("connectracer_connections_total{a=\"b\"", CONNECTIONS).is_none());
    }
}
