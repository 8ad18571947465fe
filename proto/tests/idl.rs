//! The shipped IDL (`proto/src/org.connectracer.Tracer.varlink`) against the
//! Rust definitions: every operation is a declared method and every declared
//! method an operation; what the Rust types put on the wire for each method's
//! parameters, replies and errors has exactly the declared fields, of the
//! declared types, with `?` where and only where Rust may leave them out;
//! and every declared type is reached by some reply. Parsed by zlink's IDL
//! parser, the one `varlinkctl`-compatible clients are tested against.

use std::collections::{BTreeSet, HashMap};

use connectracer_proto::api::{CallError, Operation};
use connectracer_proto::varlink::{DESCRIPTION, INTERFACE};
use serde_json::Value;
use zlink::idl::{CustomType, Field, Interface, Parameter, Type};

#[path = "idl/samples.rs"]
mod samples;

/// Walks values against the IDL, collecting every mismatch and the custom
/// types it went through.
struct Checker<'a> {
    types: HashMap<String, &'a CustomType<'a>>,
    errors: Vec<String>,
    reached: BTreeSet<String>,
}

impl<'a> Checker<'a> {
    fn new(iface: &'a Interface<'a>) -> Self {
        Self {
            types: iface.custom_types().map(|t| (t.name().to_string(), t)).collect(),
            errors: Vec::new(),
            reached: BTreeSet::new(),
        }
    }

    fn fail(&mut self, path: &str, what: String) {
        self.errors.push(format!("{path}: {what}"));
    }

    fn value(&mut self, ty: &Type<'_>, v: Option<&Value>, path: &str) {
        let v = match (ty, v) {
            (Type::Optional(inner), Some(v)) if !v.is_null() => return self.value(inner, Some(v), path),
            (Type::Optional(_), _) => return,
            (_, None | Some(Value::Null)) => {
                return self.fail(path, "left out, but the IDL does not declare it optional".into())
            }
            (_, Some(v)) => v,
        };
        let ok = match ty {
            Type::Bool => v.is_boolean(),
            Type::Int => v.is_i64() || v.is_u64(),
            Type::Float => v.is_number(),
            Type::String => v.is_string(),
            Type::Any | Type::ForeignObject | Type::Map(_) => true,
            Type::Array(inner) => match v.as_array() {
                Some(items) => {
                    for (i, item) in items.iter().enumerate() {
                        self.value(inner, Some(item), &format!("{path}[{i}]"));
                    }
                    true
                }
                None => false,
            },
            Type::Enum(variants) => {
                let names: Vec<&str> = variants.iter().map(|n| n.name().as_ref()).collect();
                v.as_str().is_some_and(|s| names.contains(&s))
            }
            Type::Object(fields) => return self.object(fields.iter(), v, path),
            Type::Custom(name) => return self.custom(name, v, path),
            Type::Optional(_) => unreachable!("handled above"),
        };
        if !ok {
            self.fail(path, format!("`{v}` is not a {ty}"));
        }
    }

    fn custom(&mut self, name: &str, v: &Value, path: &str) {
        self.reached.insert(name.to_string());
        let Some(t) = self.types.get(name).copied() else {
            return self.fail(path, format!("type {name} is not declared"));
        };
        match t {
            CustomType::Object(o) => self.object(o.fields(), v, path),
            CustomType::Enum(e) => {
                let names: Vec<&str> = e.variants().map(|n| n.name().as_ref()).collect();
                if !v.as_str().is_some_and(|s| names.contains(&s)) {
                    self.fail(path, format!("`{v}` is not one of {name}"));
                }
            }
        }
    }

    /// Declared fields present with their types; nothing undeclared sent.
    fn object<'f>(&mut self, fields: impl Iterator<Item = &'f Field<'f>>, v: &Value, path: &str) {
        let Some(obj) = v.as_object() else {
            return self.fail(path, format!("`{v}` is not an object"));
        };
        let mut declared = BTreeSet::new();
        for f in fields {
            let name = f.name().to_string();
            self.value(f.ty(), obj.get(&name), &format!("{path}.{name}"));
            declared.insert(name);
        }
        for key in obj.keys().filter(|k| !declared.contains(*k)) {
            self.fail(path, format!("`{key}` is sent but not declared"));
        }
    }

    fn params<'p>(&mut self, params: impl Iterator<Item = &'p Parameter<'p>>, v: &Value, path: &str) {
        self.object(params, v, path)
    }
}

fn interface() -> Interface<'static> {
    Interface::try_from(DESCRIPTION).expect("the shipped IDL parses")
}

#[test]
fn every_operation_is_a_declared_method_and_no_other() {
    let iface = interface();
    assert_eq!(iface.name().as_ref() as &str, INTERFACE);
    let declared: BTreeSet<String> = iface.methods().map(|m| m.name().to_string()).collect();
    let ours: BTreeSet<String> = Operation::every().iter().map(|o| o.name().to_string()).collect();
    assert_eq!(declared, ours);
}

#[test]
fn parameters_replies_and_errors_match_the_declarations() {
    let iface = interface();
    let mut c = Checker::new(&iface);
    for m in iface.methods() {
        let name = m.name().to_string();
        for (i, input) in samples::inputs(&name).iter().enumerate() {
            c.params(m.inputs(), input, &format!("{name} parameters #{i}"));
        }
        let outputs = samples::outputs(&name);
        assert!(!outputs.is_empty(), "no reply samples for {name}");
        for (i, output) in outputs.iter().enumerate() {
            c.params(m.outputs(), output, &format!("{name} reply #{i}"));
        }
    }
    let declared: BTreeSet<String> = iface.errors().map(|e| e.name().to_string()).collect();
    let mut ours = BTreeSet::new();
    for e in samples::errors() {
        let wire = serde_json::to_value(&e).unwrap();
        let full = wire["error"].as_str().unwrap().to_string();
        let Some(short) = full.strip_prefix(&format!("{INTERFACE}.")) else {
            continue; // org.varlink.service's own errors are declared there.
        };
        ours.insert(short.to_string());
        match iface.errors().find(|d| d.name().as_ref() as &str == short) {
            Some(d) => c.object(d.fields(), &wire["parameters"], &format!("error {short}")),
            None => c.fail(&format!("error {short}"), "not declared".into()),
        }
    }
    assert_eq!(declared, ours, "the interface's errors");
    assert!(
        c.errors.is_empty(),
        "the IDL and the Rust types disagree:\n{}",
        c.errors.join("\n")
    );
    let all: BTreeSet<String> = iface.custom_types().map(|t| t.name().to_string()).collect();
    assert_eq!(c.reached, all, "declared types that no reply carries");
}

#[test]
fn the_checker_catches_drift() {
    let iface = interface();
    let mut c = Checker::new(&iface);
    let m = iface
        .methods()
        .find(|m| m.name().as_ref() as &str == "Reload")
        .unwrap();
    c.params(m.outputs(), &serde_json::json!({"epoch": 1}), "missing");
    c.params(
        m.outputs(),
        &serde_json::json!({"epoch": "1", "needs_restart": [], "extra": 1}),
        "wrong",
    );
    assert_eq!(
        c.errors,
        [
            "missing.needs_restart: left out, but the IDL does not declare it optional",
            "wrong.epoch: `\"1\"` is not a int",
            "wrong: `extra` is sent but not declared",
        ]
    );
    let _: Vec<CallError> = samples::errors();
}
