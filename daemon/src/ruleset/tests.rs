//! The compiled kernel layout checked against the reference decision, and
//! validation's located errors for configurations the kernel cannot hold.

use connectracer_proto::Verdict;

use super::*;
use crate::bpf::layout::{CompiledPolicy, ScopeKey};
use crate::bpf::types::ct_policy_flag;
use crate::policy::tests::{env, policy, to, unit, EXAMPLE, TCP, UDP};
use crate::policy::{Target, SCOPE_BUILTIN, SCOPE_GLOBAL};

#[test]
fn nothing_configured_means_no_kernel_work() {
    let p = policy("");
    assert!(!p.is_active());
    let (c, errors) = policy::compile(&p, &env(), &Identities::default());
    assert!(errors.is_empty());
    assert_eq!(c.flags, 0);
    assert!(c.entries.is_empty());
}

/// The kernel's lookup, emulated on the compiled maps: what connect4/6 do.
fn kernel_judge(c: &CompiledPolicy, scopes: &[u32], t: &Target) -> (u8, u32) {
    let addr = t.addr.to_canonical();
    let proto = if t.protocol == TCP { 6 } else { 17 };
    let settings = |id: u32| {
        c.scopes
            .iter()
            .find(|(k, _)| *k == ScopeKey::Scope(id))
            .map(|(_, v)| *v)
            .unwrap_or_default()
    };
    for &scope in std::iter::once(&SCOPE_BUILTIN)
        .chain(scopes)
        .chain([&SCOPE_GLOBAL])
    {
        let s = settings(scope);
        if addr.is_ipv6() && s.ipv6_verdict != 0 {
            return (s.ipv6_verdict - 1, 0);
        }
        let entry = c
            .entries
            .iter()
            .filter(|e| e.scope == scope && e.net.contains(&addr))
            .max_by_key(|e| e.net.prefix_len());
        if let Some(r) = entry.and_then(|e| {
            e.rules
                .iter()
                .find(|r| (r.lo..=r.hi).contains(&t.port) && (r.protocol == 0 || r.protocol == proto))
        }) {
            return (r.verdict, r.rule_id);
        }
        if s.default_verdict != 0 {
            return (s.default_verdict - 1, 0);
        }
    }
    (0, 0)
}

#[test]
fn compiled_layout_agrees_with_the_reference() {
    let p = policy(EXAMPLE);
    let e = env();
    let ids = Identities {
        cgroups: vec![
            ("/system.slice".into(), 100),
            ("/system.slice/backup.service".into(), 101),
            ("/system.slice/web.service".into(), 102),
        ],
        ..Default::default()
    };
    let (c, errors) = policy::compile(&p, &e, &ids);
    assert!(errors.is_empty(), "{errors:?}");
    let backup_scope = c
        .scopes
        .iter()
        .find(|(k, _)| *k == ScopeKey::Cgroup(101))
        .map(|(_, v)| v.scope)
        .expect("backup.service's cgroup is in its scope");
    assert!(!c.scopes.iter().any(|(k, _)| *k == ScopeKey::Cgroup(102)));
    let code = |v: Verdict| match v {
        Verdict::Allow => 0,
        Verdict::WouldDeny => 1,
        Verdict::Deny => 2,
    };
    let addrs = [
        "127.0.0.1",
        "::1",
        "10.0.0.53",
        "203.0.113.5",
        "203.0.113.70",
        "192.0.2.10",
        "2001:db8::10",
        "2001:db8::99",
        "::ffff:203.0.113.5",
        "198.51.100.7",
        "8.8.8.8",
    ];
    for a in addrs {
        for port in [53, 80, 443, 8050, 8101] {
            for proto in [TCP, UDP] {
                let t = to(a, port, proto);
                for (who, scopes) in [
                    (unit("backup.service"), vec![backup_scope]),
                    (unit("web.service"), vec![]),
                ] {
                    let d = p.judge(&who, &t, &e);
                    let (v, rule) = kernel_judge(&c, &scopes, &t);
                    assert_eq!(
                        (v, rule),
                        (code(d.verdict), d.rule.unwrap_or(0)),
                        "{who:?} {t:?}: reference {d:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn too_many_overlapping_rules_are_refused_with_their_location() {
    let mut text = String::new();
    for port in 1..=17 {
        text.push_str(&format!(
            "[[rule]]\naction = \"deny\"\ndest = \"10.0.0.0/8\"\nports = [{port}]\n"
        ));
    }
    let errs = check_files(&[("/x.toml".into(), text)]).unwrap_err();
    assert_eq!(errs.0.len(), 1, "{errs}");
    let e = errs.0[0].to_string();
    assert!(
        e.starts_with("/x.toml:2:1: rule 1: 10.0.0.0/8 in the global scope needs 17 rules"),
        "{e}"
    );
}

#[test]
fn hostname_rules_reach_the_kernel_by_name_per_scope_in_declaration_order() {
    let p = policy(
        "[[rule]]\naction = \"deny\"\ndest = \"Api.Example.com\"\nports = [443]\n\
         [[rule]]\naction = \"allow\"\ndest = [\"api.example.com\", \"10.0.0.0/8\"]\n\
         [[rule]]\nunit = \"backup.service\"\naction = \"allow\"\ndest = \"api.example.com\"\n",
    );
    let (c, errors) = policy::compile(&p, &env(), &Identities::default());
    assert!(errors.is_empty(), "{errors:?}");
    assert_ne!(c.flags & ct_policy_flag::CT_POLICY_NAMES.0 as u8, 0);
    let hash = names::name_hash("api.example.com");
    let global: Vec<_> = c.names.iter().filter(|n| n.scope == SCOPE_GLOBAL).collect();
    assert_eq!(global.len(), 1);
    assert_eq!(global[0].hash, hash);
    let ids: Vec<u32> = global[0].rules.iter().map(|r| r.rule_id).collect();
    assert_eq!(ids, [1, 2], "the name's own rules, first declared first");
    assert!(c
        .names
        .iter()
        .any(|n| n.scope != SCOPE_GLOBAL && n.hash == hash && n.rules[0].rule_id == 3));
    // Addresses' own rules are counted apart from those they inherit.
    let wide = c
        .entries
        .iter()
        .find(|e| e.net.to_string() == "10.0.0.0/8")
        .unwrap();
    assert_eq!(wide.own, 1);
}

#[test]
fn too_many_rules_for_one_hostname_are_refused_with_their_location() {
    let mut text = String::new();
    for port in 1..=17 {
        text.push_str(&format!(
            "[[rule]]\naction = \"deny\"\ndest = \"many.example.com\"\nports = [{port}]\n"
        ));
    }
    let errs = check_files(&[("/x.toml".into(), text)]).unwrap_err();
    assert_eq!(errs.0.len(), 1, "{errs}");
    let e = errs.0[0].to_string();
    assert!(
        e.starts_with("/x.toml:2:1: rule 1: many.example.com in the global scope needs 17 rules"),
        "{e}"
    );
}

/// A sandbox's cgroup is keyed as a sandbox (asked first by the kernel),
/// never as a host cgroup scope, and its scope holds the DNS servers.
#[test]
fn a_sandbox_is_keyed_apart_with_the_dns_servers() {
    let sandbox = "/t/connectracer-sandbox/sb-1";
    let mut p = policy(&format!(
        "[[scope]]\ncgroup = \"/t\"\ndefault = \"allow\"\n\n[[scope]]\ncgroup = \"{sandbox}\"\ndefault = \"deny\"\n\n[[rule]]\naction = \"allow\"\ncgroup = \"{sandbox}\"\ndest = \"10.1.2.3\"\n"
    ));
    p.sandboxes.insert(sandbox.into());
    let ids = Identities {
        cgroups: vec![("/t".into(), 100), (sandbox.into(), 101)],
        ..Default::default()
    };
    let (c, errors) = policy::compile(&p, &env(), &ids);
    assert!(errors.is_empty(), "{errors:?}");
    assert_ne!(c.flags & ct_policy_flag::CT_POLICY_SANDBOX.0 as u8, 0);
    let keyed = |k: ScopeKey| c.scopes.iter().find(|(key, _)| *key == k).map(|(_, v)| v.scope);
    let scope = keyed(ScopeKey::Sandbox(101)).expect("the sandbox's key");
    // Not a host scope's cgroup: the host chain reaches /t by the walk up.
    assert_eq!(keyed(ScopeKey::Cgroup(101)), None);
    assert!(keyed(ScopeKey::Cgroup(100)).is_some());
    let dns: ipnet::IpNet = "10.0.0.53/32".parse().unwrap();
    assert!(
        c.entries
            .iter()
            .any(|e| e.scope == scope && e.net == dns && e.rules[0].lo == 53),
        "{:?}",
        c.entries
    );
}

#[test]
fn a_container_joins_a_name_scope_only_once_its_runtime_described_it() {
    let id = "ab".repeat(32);
    let path = format!("/system.slice/docker-{id}.scope");
    let p = policy(
        "[[rule]]\nnamespace = \"shop\"\naction = \"deny\"\ndest = \"10.0.0.0/8\"\n\
         [[rule]]\ncontainer_name = \"w?b\"\naction = \"deny\"\ndest = \"192.0.2.0/24\"\n",
    );
    let mut ids = Identities {
        cgroups: vec![(path.clone(), 7)],
        ..Default::default()
    };
    let placed = |ids: &Identities| {
        let (c, errors) = policy::compile(&p, &env(), ids);
        assert!(errors.is_empty(), "{errors:?}");
        c.scopes
            .iter()
            .find(|(k, _)| *k == ScopeKey::Cgroup(7))
            .map(|(_, v)| v.scope)
    };
    assert_eq!(placed(&ids), None, "no answer yet: no scope");
    let web = connectracer_proto::ContainerMeta {
        container_name: Some("web".into()),
        ..Default::default()
    };
    ids.containers
        .insert(id.clone(), std::sync::Arc::new(web.clone()));
    let by_name = placed(&ids).expect("named web");
    // Declaration order decides between two scopes that both select it.
    let pod = connectracer_proto::ContainerMeta {
        pod_namespace: Some("shop".into()),
        ..web
    };
    ids.containers.insert(id, std::sync::Arc::new(pod.clone()));
    let by_namespace = placed(&ids).expect("in shop");
    assert_ne!(by_name, by_namespace);
    assert_eq!(
        policy::scope_for_new_cgroup(&p, &path, Some(&pod)),
        Some(by_namespace)
    );
    assert_eq!(policy::scope_for_new_cgroup(&p, &path, None), None);
}

/// The kernel's sandbox step, emulated on the compiled maps as
/// connectracer.bpf.c's `judge` does it: the sandbox's scope first, a deny
/// final, then the host chain; an audited deny stands unless the host denies.
fn kernel_judge_sandboxed(c: &CompiledPolicy, sandbox: u32, host: &[u32], t: &Target) -> (u8, u32) {
    let (v, rule) = kernel_judge_one(c, sandbox, t).unwrap_or((0, 0));
    if v == 2 {
        return (v, rule);
    }
    let (hv, hrule) = kernel_judge(c, host, t);
    if v == 1 && hv != 2 {
        return (1, rule);
    }
    (hv, hrule)
}

/// One scope's say, or None when it has none.
fn kernel_judge_one(c: &CompiledPolicy, scope: u32, t: &Target) -> Option<(u8, u32)> {
    let addr = t.addr.to_canonical();
    let proto = if t.protocol == TCP { 6 } else { 17 };
    let s = c
        .scopes
        .iter()
        .find(|(k, _)| *k == ScopeKey::Scope(scope))
        .map(|(_, v)| *v)
        .unwrap_or_default();
    if addr.is_ipv6() && s.ipv6_verdict != 0 {
        return Some((s.ipv6_verdict - 1, 0));
    }
    let entry = c
        .entries
        .iter()
        .filter(|e| e.scope == scope && e.net.contains(&addr))
        .max_by_key(|e| e.net.prefix_len());
    let hit = entry.and_then(|e| {
        e.rules
            .iter()
            .find(|r| (r.lo..=r.hi).contains(&t.port) && (r.protocol == 0 || r.protocol == proto))
    });
    hit.map(|r| (r.verdict, r.rule_id))
        .or((s.default_verdict != 0).then(|| (s.default_verdict - 1, 0)))
}

/// A sandbox below a host scope, enforced and audited: the compiled
/// layout, judged as the kernel does, agrees with the reference row by row.
#[test]
fn a_sandboxed_layout_agrees_with_the_reference() {
    let sandbox = "/system.slice/backup.service/connectracer-sandbox/sb-1";
    for mode in ["enforce", "audit"] {
        let mut p = policy(&format!(
            "{EXAMPLE}\n[[scope]]\ncgroup = \"{sandbox}\"\ndefault = \"deny\"\nmode = \"{mode}\"\n\n\
             [[rule]]\naction = \"allow\"\ncgroup = \"{sandbox}\"\ndest = [\"203.0.113.0/24\", \"s3.example.com\", \"8.8.8.8\"]\nports = [443, 53]\n"
        ));
        p.sandboxes.insert(sandbox.into());
        let e = env();
        let ids = Identities {
            cgroups: vec![
                ("/system.slice".into(), 100),
                ("/system.slice/backup.service".into(), 101),
                (sandbox.into(), 103),
            ],
            ..Default::default()
        };
        let (c, errors) = policy::compile(&p, &e, &ids);
        assert!(errors.is_empty(), "{errors:?}");
        let keyed = |k: ScopeKey| c.scopes.iter().find(|(key, _)| *key == k).map(|(_, v)| v.scope);
        let sandbox_scope = keyed(ScopeKey::Sandbox(103)).expect("the sandbox's key");
        let backup_scope = keyed(ScopeKey::Cgroup(101)).expect("backup.service's scope");
        let who = crate::policy::Subject {
            cgroup: Some(sandbox.into()),
            ..Default::default()
        };
        let code = |v: Verdict| match v {
            Verdict::Allow => 0,
            Verdict::WouldDeny => 1,
            Verdict::Deny => 2,
        };
        for a in [
            "127.0.0.1",
            "10.0.0.53",
            "203.0.113.5",
            "203.0.113.70",
            "192.0.2.10",
            "2001:db8::10",
            "::ffff:203.0.113.5",
            "8.8.8.8",
            "9.9.9.9",
        ] {
            for port in [53, 80, 443] {
                for proto in [TCP, UDP] {
                    let t = to(a, port, proto);
                    let d = p.judge(&who, &t, &e);
                    let got = kernel_judge_sandboxed(&c, sandbox_scope, &[backup_scope], &t);
                    assert_eq!(
                        got,
                        (code(d.verdict), d.rule.unwrap_or(0)),
                        "{mode} {t:?}: reference {d:?}"
                    );
                }
            }
        }
    }
}
