//! Hostname rules as the kernel's DNS program meets them: by the hash of
//! the question's name. An answer to a pending query for a name some rule
//! names marks its addresses with that hash (until TTL + grace), and a
//! connect to a marked address is judged by the name's rules in each scope
//! — from the very first connect after the answer, before the daemon has
//! read it, and for addresses the daemon's own lookups never returned.

use std::collections::BTreeMap;

use crate::bpf::layout::{KernelRule, NameRules, MAX_RULES};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// FNV-1a over the name's DNS wire form, lowercased: each label's length
/// byte then its bytes, the root label left out. `dns_question` in
/// bpf/dns.bpf.h computes the same over a question. A trailing dot is the
/// root label; an empty label or one over 63 bytes cannot be on the wire,
/// and hashes to what no question does.
pub fn name_hash(name: &str) -> u64 {
    let mut h = FNV_OFFSET;
    let mut eat = |b: u8| h = (h ^ u64::from(b)).wrapping_mul(FNV_PRIME);
    for label in name.strip_suffix('.').unwrap_or(name).split('.') {
        let Ok(len) = u8::try_from(label.len()) else {
            return 0;
        };
        if len == 0 || len > 63 {
            return 0;
        }
        eat(len);
        label.bytes().for_each(|b| eat(b.to_ascii_lowercase()));
    }
    h
}

/// A scope's rules for a name, more than a kernel entry holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooManyForName {
    pub scope: u32,
    pub name: String,
    pub needed: usize,
    pub first: Option<u32>,
}

/// Rules per (scope, name), in declaration order, as the kernel holds them.
#[derive(Debug, Default)]
pub struct Collect {
    by: BTreeMap<(u32, String), Vec<KernelRule>>,
}

impl Collect {
    pub fn add(&mut self, scope: u32, name: &str, rules: impl IntoIterator<Item = KernelRule>) {
        self.by
            .entry((scope, name.to_ascii_lowercase()))
            .or_default()
            .extend(rules);
    }

    pub fn finish(self) -> (Vec<NameRules>, Vec<TooManyForName>) {
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for ((scope, name), rules) in self.by {
            if rules.len() > MAX_RULES {
                errors.push(TooManyForName {
                    scope,
                    needed: rules.len(),
                    first: rules.first().map(|r| r.rule_id),
                    name,
                });
                continue;
            }
            out.push(NameRules {
                scope,
                hash: name_hash(&name),
                rules,
            });
        }
        (out, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire form spelled out: 3 'w' 'w' 'w' 7 'e' 'x' 'a' 'm' 'p' 'l' 'e' 3 'c' 'o' 'm'.
    fn fnv(bytes: &[u8]) -> u64 {
        bytes
            .iter()
            .fold(FNV_OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME))
    }

    #[test]
    fn hashes_the_lowercased_wire_form() {
        let wire = b"\x03www\x07example\x03com";
        assert_eq!(name_hash("www.example.com"), fnv(wire));
        assert_eq!(name_hash("WWW.Example.COM."), fnv(wire));
        assert_ne!(name_hash("www.example.co"), fnv(wire));
        // Label boundaries count: "ab.c" is not "a.bc".
        assert_ne!(name_hash("ab.c"), name_hash("a.bc"));
    }

    #[test]
    fn names_that_cannot_be_on_the_wire_hash_to_nothing() {
        assert_eq!(name_hash("a..b"), 0);
        assert_eq!(name_hash(&"x".repeat(64)), 0);
    }

    #[test]
    fn rules_are_kept_per_scope_and_name_in_order_and_refused_past_the_entry() {
        let rule = |id| KernelRule {
            lo: 0,
            hi: 65535,
            protocol: 0,
            verdict: 2,
            rule_id: id,
        };
        let mut c = Collect::default();
        c.add(2, "A.test", [rule(1)]);
        c.add(2, "a.test", [rule(3)]);
        c.add(5, "a.test", [rule(2)]);
        c.add(2, "big.test", (10..27).map(rule));
        let (names, errors) = c.finish();
        assert_eq!(names.len(), 2);
        assert_eq!((names[0].scope, names[0].hash), (2, name_hash("a.test")));
        assert_eq!(names[0].rules, [rule(1), rule(3)]);
        assert_eq!(names[1].scope, 5);
        assert_eq!(errors.len(), 1);
        assert_eq!((errors[0].name.as_str(), errors[0].needed), ("big.test", 17));
        assert_eq!(errors[0].first, Some(10));
    }
}
