use super::*;
use connectracer_proto::api::SandboxParams;

fn rule(action: &str, dest: &[&str], ports: &[&str], protocol: Option<&str>) -> SandboxRule {
    SandboxRule {
        action: action.into(),
        dest: dest.iter().map(|d| d.to_string()).collect(),
        ports: ports.iter().map(|p| p.to_string()).collect(),
        protocol: protocol.map(String::from),
    }
}

fn sandbox(id: &str, rules: Vec<SandboxRule>) -> Sandbox {
    Sandbox {
        id: id.into(),
        uid: 1000,
        dir: format!("/sys/fs/cgroup/{CGROUP_DIR}/{id}").into(),
        cgroup: format!("/{CGROUP_DIR}/{id}"),
        unit: None,
        audit: false,
        rule: rules,
    }
}

/// What a sandbox becomes in the configuration: a deny-by-default scope on
/// its cgroup and its rules, each with that selector, nothing else.
#[test]
fn a_sandbox_is_a_scope_and_its_rules() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Sandboxes::open(dir.path());
    s.stage_add(sandbox(
        "a",
        vec![
            rule(
                "allow",
                &["api.example.com", "10.0.0.0/8"],
                &["443", "8000-8100"],
                None,
            ),
            rule("allow", &["2001:db8::/32"], &[], Some("udp")),
        ],
    ));
    let (sources, cgroups) = s.sources();
    assert_eq!(
        cgroups.into_iter().collect::<Vec<_>>(),
        [format!("/{CGROUP_DIR}/a")]
    );
    let c = crate::config::parse_files(&sources).unwrap();
    let p = &c.policy;
    assert_eq!(p.scopes.len(), 1);
    assert_eq!(p.scopes[0].default, Some(crate::config::policy::Action::Deny));
    assert_eq!(p.rules.len(), 2);
    assert!(p.rules.iter().all(|r| r
        .selector
        .as_ref()
        .is_some_and(|sel| *sel == crate::config::policy::Selector::Cgroup(format!("/{CGROUP_DIR}/a")))));
    assert_eq!(p.rules[0].ports.0, vec![443..=443, 8000..=8100]);
    assert_eq!(p.rules[1].protocol, Some(connectracer_proto::Protocol::Udp));
    assert!(c.hostnames().contains(&"api.example.com".to_string()));
}

#[test]
fn a_committed_sandbox_survives_a_restart_and_a_discarded_one_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Sandboxes::open(dir.path());
    s.stage_add(sandbox("a", vec![rule("allow", &["10.0.0.1"], &[], None)]));
    s.discard();
    assert!(s.sources().0.is_empty());
    assert!(!dir.path().join(FILE).exists(), "nothing written before commit");
    s.stage_add(sandbox(
        "b",
        vec![rule("allow", &["10.0.0.1"], &["53"], Some("udp"))],
    ));
    s.commit().unwrap();
    let again = Sandboxes::open(dir.path());
    assert_eq!(again.live(), s.live());
    let mut again = again;
    again.stage_remove("b");
    again.commit().unwrap();
    assert!(Sandboxes::open(dir.path()).live().is_empty());
}

#[test]
fn bad_rules_are_refused_naming_the_rule() {
    let params = |rules| SandboxParams {
        rules,
        ..SandboxParams::default()
    };
    assert_eq!(
        check(&params(vec![rule("allow", &["10.0.0.0/8"], &["443"], None)])),
        Ok(())
    );
    let (field, why) = check(&params(vec![
        rule("allow", &["10.0.0.1"], &[], None),
        rule("allow", &["10.0.0.0/99"], &[], None),
    ]))
    .unwrap_err();
    assert!(field.starts_with("rules[1]"), "{field}: {why}");
    let (field, _) = check(&params(vec![rule("permit", &[], &[], None)])).unwrap_err();
    assert!(field.starts_with("rules[0]"), "{field}");
    let (field, _) = check(&params(vec![rule("allow", &[], &["0"], None)])).unwrap_err();
    assert!(field.starts_with("rules[0]"), "{field}");
    let many = (0..=MAX_RULES)
        .map(|_| rule("allow", &["10.0.0.1"], &[], None))
        .collect();
    assert_eq!(check(&params(many)).unwrap_err().0, "rules");
}
