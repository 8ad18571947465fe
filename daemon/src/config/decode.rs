//! Text to `RawConfig`, with every error: all syntax errors the parser can
//! recover from, then every type error, each with its key path
//! (`host[3].ports`) and position. serde stops at the first error, so a
//! document that fails is narrowed down: each table key and array element
//! is tried alone (wrapped back into a document), down to the values that
//! fail by themselves.

use std::ops::Range;

use serde::de::IntoDeserializer;
use serde::Deserialize;
use toml::de::{DeArray, DeTable, DeValue};
use toml::Spanned;

use super::raw::RawConfig;

/// One error: where, under which key, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub span: Option<Range<usize>>,
    pub key: String,
    pub message: String,
}

fn decode(doc: Spanned<DeTable<'_>>) -> Result<RawConfig, toml::de::Error> {
    RawConfig::deserialize(doc.into_deserializer())
}

fn message(e: &toml::de::Error) -> String {
    let m = e.message().trim().replace('\n', "; ");
    if m.contains("recursion") || m.contains("recurse") {
        "nested deeper than the parser allows (recursion limit)".into()
    } else {
        m
    }
}

/// Whether `v` is a table with key `name`, or an array holding one.
fn holds_key(v: &DeValue<'_>, name: &str) -> bool {
    match v {
        DeValue::Table(t) => t.iter().any(|(k, _)| k.get_ref() == name),
        DeValue::Array(a) => a.iter().any(|e| holds_key(e.get_ref(), name)),
        _ => false,
    }
}

/// The key an "unknown field" error names.
fn unknown_field(e: &toml::de::Error) -> Option<&str> {
    e.message().strip_prefix("unknown field `")?.split('`').next()
}

fn is_missing_field(e: &toml::de::Error) -> bool {
    e.message().starts_with("missing field")
}

/// Rebuilds a whole document around one value.
type Wrap<'w, 'i> = &'w dyn Fn(Spanned<DeValue<'i>>) -> Spanned<DeTable<'i>>;

/// Parses `text`; on failure, every error found.
pub fn parse(text: &str) -> Result<RawConfig, Vec<DecodeError>> {
    let (doc, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        return Err(syntax
            .iter()
            .map(|e| DecodeError {
                span: e.span(),
                key: String::new(),
                message: message(e),
            })
            .collect());
    }
    let whole = match decode(doc.clone()) {
        Ok(raw) => return Ok(raw),
        Err(e) => e,
    };
    let mut out = Vec::new();
    narrow_document(&doc, &mut out);
    out.sort_by_key(|e| e.span.as_ref().map_or(0, |s| s.start));
    if out.is_empty() {
        out.push(DecodeError {
            span: whole.span(),
            key: String::new(),
            message: message(&whole),
        });
    }
    Err(out)
}

fn narrow_document<'i>(doc: &Spanned<DeTable<'i>>, out: &mut Vec<DecodeError>) {
    let span = doc.span();
    for (k, v) in doc.get_ref().iter() {
        let (k2, s) = (k.clone(), span.clone());
        let wrap = |v: Spanned<DeValue<'i>>| {
            let mut t = DeTable::new();
            t.insert(k2.clone(), v);
            Spanned::new(s.clone(), t)
        };
        narrow(k.get_ref(), v, span.clone(), &wrap, out);
    }
}

/// Reports the errors of `v` (at `path`) found with `v` alone in the
/// document; returns whether it reported any.
fn narrow<'i>(
    path: &str,
    v: &Spanned<DeValue<'i>>,
    parent: Range<usize>,
    wrap: Wrap<'_, 'i>,
    out: &mut Vec<DecodeError>,
) -> bool {
    let e = match decode(wrap(v.clone())) {
        Ok(_) => return false,
        Err(e) => e,
    };
    // An unknown key is wrong whatever its value holds: reported at the
    // key, not looked for inside its value.
    let about_the_key = unknown_field(&e).is_some_and(|name| !holds_key(v.get_ref(), name));
    // An error placed on the table or array `v` was cut out of (a required
    // key missing there, the wrong type for the whole) is not about `v`:
    // that one reports it.
    if !about_the_key && e.span() == Some(parent) && e.span() != Some(v.span()) {
        return false;
    }
    // An array of tables may share its one table's span: the table reports.
    let missing_here = is_missing_field(&e) && matches!(v.get_ref(), DeValue::Table(_));
    let mut reported = false;
    match v.get_ref() {
        _ if about_the_key => {}
        DeValue::Table(t) => {
            for (k, child) in t.iter() {
                let (k2, s) = (k.clone(), v.span());
                let sub = |c: Spanned<DeValue<'i>>| {
                    let mut one = DeTable::new();
                    one.insert(k2.clone(), c);
                    wrap(Spanned::new(s.clone(), DeValue::Table(one)))
                };
                reported |= narrow(&format!("{path}.{}", k.get_ref()), child, v.span(), &sub, out);
            }
        }
        DeValue::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                let s = v.span();
                let sub = |c: Spanned<DeValue<'i>>| {
                    let mut one = DeArray::new();
                    one.push(c);
                    wrap(Spanned::new(s.clone(), DeValue::Array(one)))
                };
                reported |= narrow(&format!("{path}[{i}]"), child, v.span(), &sub, out);
            }
        }
        _ => {}
    }
    if missing_here || !reported {
        out.push(DecodeError {
            span: e.span(),
            key: path.to_string(),
            message: message(&e),
        });
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<(String, String, usize)> {
        parse(text)
            .unwrap_err()
            .into_iter()
            .map(|e| {
                let line = e.span.map_or(0, |s| text[..s.start].matches('\n').count() + 1);
                (e.key, e.message, line)
            })
            .collect()
    }

    #[test]
    fn every_type_error_with_its_key_and_line() {
        let text = "trace = 5\n[dns]\nmin_ttl = []\n[[rule]]\ndest = \"a.test\"\n[[host]]\nname = 7\n[[host]]\nname = \"ok\"\nports = { https = 443 }\n";
        let got = errors(text);
        let keys: Vec<&str> = got.iter().map(|(k, _, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["trace", "dns.min_ttl", "rule[0]", "host[0].name", "host[1].ports"],
            "{got:#?}"
        );
        let rule = got.iter().find(|(k, _, _)| k == "rule[0]").unwrap();
        assert!(rule.1.contains("missing field `action`"), "{rule:?}");
        assert_eq!(rule.2, 4, "{rule:?}");
        let trace = got.iter().find(|(k, _, _)| k == "trace").unwrap();
        assert_eq!(trace.2, 1);
    }

    #[test]
    fn unknown_keys_are_named() {
        let got = errors("[log]\nformat = \"json\"\ncolour = true\n");
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, "log.colour");
        assert!(got[0].1.contains("unknown field `colour`"), "{got:?}");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let text = format!("x = {}{}\n", "[".repeat(200), "]".repeat(200));
        let got = errors(&text);
        assert!(
            got.iter().any(|(_, m, _)| m.contains("recursion limit")),
            "{got:?}"
        );
    }

    #[test]
    fn syntax_errors_are_all_reported() {
        let got = errors("a = \nb = = 1\n");
        assert!(got.len() >= 2, "{got:?}");
    }
}
