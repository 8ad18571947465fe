//! The one LPM flattening: an LPM lookup returns only the longest matching
//! prefix, so each prefix's entry also carries the rules of every shorter
//! prefix of its scope that covers it, most specific first: `10.0.0.0/8` on
//! 443 and `10.1.0.0/16` on 80 must both match inside 10.1/16. The watch
//! list (one scope) and the policy (per-scope tries) are both laid out by it.

use std::collections::{BTreeSet, HashMap};

use ipnet::IpNet;

use crate::bpf::layout::MAX_RULES;

/// Prefixes of an LPM trie (per scope), each with its own rules, in
/// first-seen order. An LPM lookup returns only the longest matching
/// prefix, so `flatten` gives each entry the rules of the wider prefixes of
/// its scope that cover it, most specific first. The watch list (one scope)
/// and the policy (per-scope tries) are both laid out by it.
#[derive(Debug)]
pub struct Prefixes<S, R> {
    order: Vec<(S, IpNet)>,
    own: HashMap<(S, IpNet), Vec<R>>,
}

/// A flattened entry, or one that needs more rules than an entry holds.
#[derive(Debug)]
pub enum Flat<S, R> {
    Entry {
        scope: S,
        net: IpNet,
        rules: Vec<R>,
        /// How many of `rules` are the prefix's own (the rest are inherited).
        own: usize,
    },
    TooMany {
        scope: S,
        net: IpNet,
        needed: usize,
        first_own: Option<R>,
    },
}

impl<S: Copy + Eq + std::hash::Hash, R: Clone> Default for Prefixes<S, R> {
    fn default() -> Self {
        Self {
            order: Vec::new(),
            own: HashMap::new(),
        }
    }
}

impl<S: Copy + Eq + std::hash::Hash, R: Clone> Prefixes<S, R> {
    /// Adds rules to (scope, net); returns whether the prefix is new.
    pub fn add(&mut self, scope: S, net: IpNet, rules: impl IntoIterator<Item = R>) -> bool {
        let mut new = false;
        self.own
            .entry((scope, net))
            .or_insert_with(|| {
                new = true;
                self.order.push((scope, net));
                Vec::new()
            })
            .extend(rules);
        new
    }

    pub fn flatten(self) -> Vec<Flat<S, R>> {
        let lengths = prefix_lengths(self.own.keys().map(|(_, n)| n));
        let mut out = Vec::with_capacity(self.order.len());
        for (scope, net) in &self.order {
            let own = &self.own[&(*scope, *net)];
            let mut rules = own.clone();
            // Walk the covering prefixes from the next shorter one up to /0,
            // only at lengths some entry has: 10,000 single addresses cost
            // no lookups at all, and never more than 128 each.
            for &len in lengths(net).iter().rev() {
                let Ok(wider) = IpNet::new(net.addr(), len) else {
                    continue;
                };
                if let Some(r) = self.own.get(&(*scope, wider.trunc())) {
                    rules.extend_from_slice(r);
                }
            }
            out.push(if rules.len() > MAX_RULES {
                Flat::TooMany {
                    scope: *scope,
                    net: *net,
                    needed: rules.len(),
                    first_own: own.first().cloned(),
                }
            } else {
                Flat::Entry {
                    scope: *scope,
                    net: *net,
                    rules,
                    own: own.len(),
                }
            });
        }
        out
    }
}

/// Per family, the prefix lengths present, ascending; the returned closure
/// gives those shorter than a net's own, in the net's family.
pub fn prefix_lengths<'a>(nets: impl Iterator<Item = &'a IpNet>) -> impl Fn(&IpNet) -> Vec<u8> {
    let (mut v4, mut v6) = (BTreeSet::new(), BTreeSet::new());
    for n in nets {
        match n {
            IpNet::V4(_) => v4.insert(n.prefix_len()),
            IpNet::V6(_) => v6.insert(n.prefix_len()),
        };
    }
    move |net: &IpNet| {
        let set = if net.addr().is_ipv4() { &v4 } else { &v6 };
        set.range(..net.prefix_len()).copied().collect()
    }
}
