//! Against real kernel maps (the tests run as root, like the rest of the
//! suite): a write that fails partway leaves every map holding exactly what
//! it held, and the record equal to the map.

use std::collections::HashMap;

use libbpf_rs::libbpf_sys;
use libbpf_rs::{MapCore, MapHandle, MapType};

use super::*;

const KEY: u32 = 8;
const VAL: u32 = 8;

fn lpm(name: &str, max: u32) -> MapHandle {
    let opts = libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as libbpf_sys::size_t,
        map_flags: libbpf_sys::BPF_F_NO_PREALLOC,
        ..Default::default()
    };
    MapHandle::create(MapType::LpmTrie, Some(name), KEY, VAL, max, &opts)
        .expect("creating an LPM trie (the unit tests run as root)")
}

/// A /32 key in the tries' layout and a value naming it.
fn entry(i: u32) -> (Vec<u8>, Vec<u8>) {
    let mut k = 32u32.to_ne_bytes().to_vec();
    k.extend_from_slice(&(0x0a00_0000 + i).to_be_bytes());
    (k, u64::from(i).to_ne_bytes().to_vec())
}

fn entries(range: std::ops::Range<u32>) -> Entries {
    range.map(entry).collect()
}

fn contents(map: &dyn MapCore) -> Entries {
    map.keys()
        .map(|k| {
            let v = map.lookup(&k, MapFlags::ANY).unwrap().unwrap();
            (k, v)
        })
        .collect()
}

/// Watch tries per generation, policy maps shared, as in the program.
struct Maps {
    watch: [[MapHandle; 2]; 2],
    shared: [MapHandle; 5],
}

impl Maps {
    fn new(max: u32) -> Self {
        Self {
            watch: [0, 1].map(|g| ["w4", "w6"].map(|n| lpm(&format!("{n}_{g}"), max))),
            shared: ["p4", "p6", "ps", "dn", "dr"].map(|n| lpm(n, max)),
        }
    }

    fn view(&self, gen: usize) -> GenerationMaps<'_> {
        let [a, b] = &self.watch[gen];
        let [c, d, e, f, h] = &self.shared;
        GenerationMaps {
            maps: [a, b, c, d, e, f, h],
            shared: [false, false, true, true, true, true, true],
        }
    }

    /// Each watch trie holds its generation's record; each shared map the
    /// union of both records.
    fn assert_match(&self, g: [&Generation; 2]) {
        for (gen, maps) in self.watch.iter().enumerate() {
            for (i, m) in maps.iter().enumerate() {
                assert_eq!(contents(m), *g[gen].parts()[i], "gen {gen} map {}", MAP_NAMES[i]);
            }
        }
        for (j, m) in self.shared.iter().enumerate() {
            let i = j + 2;
            let mut expected: Entries = HashMap::new();
            expected.extend(g[0].parts()[i].clone());
            expected.extend(g[1].parts()[i].clone());
            assert_eq!(contents(m), expected, "map {}", MAP_NAMES[i]);
        }
    }
}

fn generation(watch: std::ops::Range<u32>, policy: std::ops::Range<u32>) -> Generation {
    Generation {
        watch_v4: entries(watch.clone()),
        watch_v6: entries(watch),
        policy_v4: entries(policy.clone()),
        policy_v6: entries(policy.clone()),
        scopes: entries(policy.clone()),
        dns_names: entries(policy.clone()),
        dns_rules: entries(policy),
    }
}

#[test]
fn a_write_failing_partway_is_undone() {
    let maps = Maps::new(64);
    let (mut g0, mut g1) = (Generation::default(), Generation::default());
    let first = generation(0..10, 100..110);
    write_generation(&maps.view(0), &mut g0, &first, &g1).unwrap();
    let second = generation(0..5, 200..210);
    write_generation(&maps.view(1), &mut g1, &second, &g0).unwrap();
    maps.assert_match([&g0, &g1]);

    // Watch maps and policy_v4 are rewritten, then policy_v6 refuses a
    // malformed value: everything before it must be taken back.
    let mut bad = generation(20..30, 300..320);
    bad.policy_v6.insert(entry(400).0, vec![0; 3]);
    let err = write_generation(&maps.view(1), &mut g1, &bad, &g0).unwrap_err();
    assert!(
        matches!(err, TracerError::Map { map: "policy_v6", .. }),
        "{err:?}"
    );
    assert_eq!(g1, second, "the record says what the generation held before");
    maps.assert_match([&g0, &g1]);

    // The next write diffs against the true content and succeeds.
    let third = generation(40..45, 500..505);
    write_generation(&maps.view(1), &mut g1, &third, &g0).unwrap();
    assert_eq!(g1, third);
    maps.assert_match([&g0, &g1]);
}

#[test]
fn no_room_is_refused_before_any_write() {
    let maps = Maps::new(32);
    let (mut g0, mut g1) = (Generation::default(), Generation::default());
    write_generation(&maps.view(0), &mut g0, &generation(0..20, 0..20), &g1).unwrap();
    // 20 in force + 13 would overflow the shared policy maps (32).
    let big = generation(0..13, 100..113);
    let err = write_generation(&maps.view(1), &mut g1, &big, &g0).unwrap_err();
    assert!(
        matches!(
            err,
            TracerError::Capacity {
                map: "policy_v4",
                needed: 13,
                in_use: 20,
                limit: 32
            }
        ),
        "{err:?}"
    );
    assert_eq!(g1, Generation::default());
    maps.assert_match([&g0, &g1]);
    // Per-generation maps are not shared: 30 watch entries fit.
    write_generation(&maps.view(1), &mut g1, &generation(0..30, 100..112), &g0).unwrap();
    maps.assert_match([&g0, &g1]);
}
