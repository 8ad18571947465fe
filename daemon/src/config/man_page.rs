//! man/connectracer.toml.5 documents every key of the configuration. The
//! keys are not listed by hand: they are read from the serde raw types
//! themselves, by deserializing `RawConfig` from a recording deserializer
//! that answers every struct with all of its fields. A key added to `raw.rs`
//! without an entry in the page (or an entry left behind for a removed key)
//! fails this test.

use std::cell::RefCell;
use std::collections::BTreeSet;

use serde::de::value::{BorrowedStrDeserializer, Error};
use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::raw::RawConfig;

/// (section, key): ("", "trace"), ("host", "ports"), ("dns", "grace").
type Keys = RefCell<BTreeSet<(String, String)>>;

/// How `toml::Spanned` asks for itself: a struct with these fields, `value`
/// holding the real one.
const SPANNED: &str = "$__serde_spanned_private_Spanned";
const SPANNED_VALUE: &str = "$__serde_spanned_private_value";

#[derive(Clone, Copy)]
struct Recorder<'a> {
    keys: &'a Keys,
    path: &'a str,
}

impl Recorder<'_> {
    /// A value that is not a table: `path` is a key.
    fn leaf(&self) {
        let (section, key) = self.path.rsplit_once('.').unwrap_or(("", self.path));
        self.keys
            .borrow_mut()
            .insert((section.to_string(), key.to_string()));
    }
}

/// The fields of one table, each with a recorder one level down.
struct Fields<'a> {
    keys: &'a Keys,
    path: &'a str,
    fields: &'static [&'static str],
    next: usize,
    spanned: bool,
}

impl<'a> MapAccess<'static> for Fields<'a> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'static>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        let Some(field) = self.fields.get(self.next) else {
            return Ok(None);
        };
        seed.deserialize(BorrowedStrDeserializer::new(field)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'static>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let field = self.fields[self.next];
        self.next += 1;
        if self.spanned {
            if field != SPANNED_VALUE {
                return seed.deserialize(IntoDeserializer::<Error>::into_deserializer(0u64));
            }
            return seed.deserialize(Recorder {
                keys: self.keys,
                path: self.path,
            });
        }
        let child = if self.path.is_empty() {
            field.to_string()
        } else {
            format!("{}.{field}", self.path)
        };
        seed.deserialize(Recorder {
            keys: self.keys,
            path: &child,
        })
    }
}

/// A list with one element, so that `[[host]]` tables are walked too.
struct One<'a>(Option<Recorder<'a>>);

impl SeqAccess<'static> for One<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'static>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        self.0.take().map(|r| seed.deserialize(r)).transpose()
    }
}

macro_rules! leaf {
    ($($method:ident => $visit:ident($($value:expr)?);)*) => {$(
        fn $method<V: Visitor<'static>>(self, visitor: V) -> Result<V::Value, Error> {
            self.leaf();
            visitor.$visit($($value)?)
        }
    )*};
}

impl<'a> Deserializer<'static> for Recorder<'a> {
    type Error = Error;

    leaf! {
        // Untagged enums (ports, sizes) buffer through deserialize_any: a
        // number suits both.
        deserialize_any => visit_i64(0);
        deserialize_bool => visit_bool(false);
        deserialize_i8 => visit_i64(0);
        deserialize_i16 => visit_i64(0);
        deserialize_i32 => visit_i64(0);
        deserialize_i64 => visit_i64(0);
        deserialize_u8 => visit_u64(0);
        deserialize_u16 => visit_u64(0);
        deserialize_u32 => visit_u64(0);
        deserialize_u64 => visit_u64(0);
        deserialize_f32 => visit_f64(0.0);
        deserialize_f64 => visit_f64(0.0);
        deserialize_char => visit_char('x');
        deserialize_str => visit_borrowed_str("");
        deserialize_string => visit_borrowed_str("");
        deserialize_bytes => visit_borrowed_bytes(&[]);
        deserialize_byte_buf => visit_borrowed_bytes(&[]);
        deserialize_unit => visit_unit();
        deserialize_identifier => visit_borrowed_str("");
        deserialize_ignored_any => visit_unit();
    }

    fn deserialize_option<V: Visitor<'static>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }

    fn deserialize_unit_struct<V: Visitor<'static>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'static>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'static>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(One(Some(self)))
    }

    fn deserialize_tuple<V: Visitor<'static>>(self, _: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'static>>(
        self,
        _: &'static str,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    /// A free-form table: its name is the key.
    fn deserialize_map<V: Visitor<'static>>(self, visitor: V) -> Result<V::Value, Error> {
        self.leaf();
        visitor.visit_map(de::value::MapDeserializer::new(std::iter::empty::<(&str, &str)>()))
    }

    fn deserialize_struct<V: Visitor<'static>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_map(Fields {
            keys: self.keys,
            path: self.path,
            fields,
            next: 0,
            spanned: name == SPANNED,
        })
    }

    fn deserialize_enum<V: Visitor<'static>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.leaf();
        let first = variants.first().copied().unwrap_or_default();
        visitor.visit_enum(BorrowedStrDeserializer::<Error>::new(first))
    }
}

/// Every (section, key) the configuration accepts.
fn config_keys() -> BTreeSet<(String, String)> {
    let keys = Keys::default();
    RawConfig::deserialize(Recorder {
        keys: &keys,
        path: "",
    })
    .expect("the recorder cannot walk a raw type: extend man_page::Recorder");
    keys.into_inner()
}

/// (section, key) of every `.TP` entry `\fBkey\fR ...` under `.SH TOP-LEVEL
/// KEYS` or `.SH [section]` / `.SH [[section]]`, and whether its text gives
/// the default.
fn documented(page: &str) -> Vec<((String, String), bool)> {
    let mut out: Vec<((String, String), bool)> = Vec::new();
    let mut section: Option<String> = None;
    let mut lines = page.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(h) = line.strip_prefix(".SH ") {
            let h = h.trim().trim_matches('"');
            section = if h == "TOP-LEVEL KEYS" {
                Some(String::new())
            } else if h.starts_with('[') {
                Some(h.trim_matches(|c| c == '[' || c == ']').to_string())
            } else {
                None
            };
        } else if line.trim() == ".TP" {
            let Some(s) = &section else { continue };
            let Some(key) = lines
                .peek()
                .and_then(|l| l.strip_prefix("\\fB"))
                .and_then(|l| l.split_once("\\fR"))
                .map(|(k, _)| k.replace("\\-", "-"))
            else {
                continue;
            };
            out.push(((s.clone(), key), false));
        } else if line.starts_with("Default") {
            if let Some(last) = out.last_mut() {
                last.1 = true;
            }
        }
    }
    out
}

#[test]
fn every_config_key_is_in_the_man_page() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../man/connectracer.toml.5");
    let page = std::fs::read_to_string(path).unwrap();
    let keys = config_keys();
    assert!(
        keys.contains(&("dns".into(), "grace".into())) && keys.contains(&("host".into(), "ports".into())),
        "the recorder missed keys it must find: {keys:?}"
    );
    let entries = documented(&page);
    let in_page: BTreeSet<_> = entries.iter().map(|(k, _)| k.clone()).collect();
    let show = |set: Vec<&(String, String)>| {
        set.iter()
            .map(|(s, k)| {
                if s.is_empty() {
                    k.clone()
                } else {
                    format!("[{s}] {k}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let missing: Vec<_> = keys.difference(&in_page).collect();
    assert!(
        missing.is_empty(),
        "{path} does not document: {} (add a `.TP` entry `\\fBkey\\fR ...` under `.SH [section]`, with its default)",
        show(missing)
    );
    let stale: Vec<_> = in_page.difference(&keys).collect();
    assert!(
        stale.is_empty(),
        "{path} documents keys that do not exist: {}",
        show(stale)
    );
    let no_default: Vec<_> = entries.iter().filter(|(_, d)| !d).map(|(k, _)| k).collect();
    assert!(
        no_default.is_empty(),
        "{path}: entries without a `Default:` line: {}",
        show(no_default)
    );
}

#[test]
fn the_recorder_finds_nested_and_listed_tables() {
    let keys = config_keys();
    for (s, k) in [
        ("", "trace"),
        ("", "cgroup"),
        ("host", "name"),
        ("dns", "nameservers"),
        ("bpf", "ring_buffer_size"),
    ] {
        assert!(
            keys.contains(&(s.to_string(), k.to_string())),
            "{s}.{k} not found in {keys:?}"
        );
    }
    // Tables are sections, not keys.
    assert!(!keys.contains(&(String::new(), "dns".to_string())));
}
