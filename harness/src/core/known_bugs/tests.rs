use super::*;

#[test]
fn every_example_of_every_family_ends_as_it_says() {
    let set = KnownBugs::embedded();
    assert!(
        set.family.len() >= 9,
        "T1-T7, the finding, the demo's family"
    );
    for f in &set.family {
        let mut kinds = BTreeSet::new();
        for e in &f.example {
            let got = f.hold(&facts_of(&e.facts));
            let status = match got.status {
                Status::Match => "match",
                Status::Undecided => "undecided",
                Status::RuledOut => "ruled-out",
            };
            assert_eq!(status, e.expect, "{} example {:?}: {got:#?}", f.id, e.name);
            kinds.insert(e.expect.clone());
        }
        assert!(
            kinds.contains("match") && kinds.contains("ruled-out"),
            "{}: needs an example that matches and one that is ruled out",
            f.id
        );
    }
}

#[test]
fn conditions_report_what_held_what_did_not_and_what_was_not_measured() {
    let set = KnownBugs::embedded();
    let t1 = set.family.iter().find(|f| f.id == "T1").unwrap();
    let mut facts = Facts::new();
    facts.set("run.verdict", "sync-exception");
    facts.set("run.before_grub", true);
    facts.set("chain.shim.present", true);
    facts.set("chain.shim.version", "15.7");
    let r = t1.hold(&facts);
    assert_eq!(r.status, Status::Undecided);
    assert!(
        r.unknown
            .iter()
            .any(|c| c.fact == "firmware.mem_attr_protocol")
    );
    assert_eq!(r.matched.len(), 5, "{r:#?}");
    facts.set("firmware.mem_attr_protocol", false);
    let r = t1.hold(&facts);
    assert_eq!(r.status, Status::RuledOut);
    let miss = r
        .unmatched
        .iter()
        .find(|c| c.fact == "firmware.mem_attr_protocol")
        .unwrap();
    assert_eq!(miss.actual, Some(Value::Bool(false)));
    assert_eq!(miss.test, "= true");
    // A version test on something that is not a version is as good as not measured.
    facts.set("chain.shim.version", "");
    assert!(
        t1.hold(&facts)
            .unknown
            .iter()
            .any(|c| c.fact == "chain.shim.version")
    );
}

#[test]
fn bad_family_files_are_refused_with_the_reason() {
    let base = r#"
[[family]]
id = "x"
title = "t"
summary = "s"
fixed = "f"
workarounds = []
"#;
    let with = |cond: &str| format!("{base}require = [{cond}]\n");
    assert!(
        KnownBugs::parse(&with(
            r#"{ fact = "run.verdict", why = "w", equals = "x" }"#
        ))
        .is_ok()
    );
    let e = KnownBugs::parse(&with(r#"{ fact = "run.verdict", why = "w" }"#)).unwrap_err();
    assert!(e.contains("exactly one test"), "{e}");
    let e = KnownBugs::parse(&with(r#"{ fact = "verdict", why = "w", equals = 1 }"#)).unwrap_err();
    assert!(e.contains("is not run.*"), "{e}");
    let e = KnownBugs::parse(&with(r#"{ fact = "run.verdict", why = "w", eq = 1 }"#)).unwrap_err();
    assert!(e.contains("unknown field"), "{e}");
    let twice = format!(
        "{}{}",
        with(r#"{ fact = "run.verdict", why = "w", equals = "x" }"#),
        with(r#"{ fact = "run.verdict", why = "w", equals = "x" }"#)
    );
    assert!(KnownBugs::parse(&twice).unwrap_err().contains("twice"));
}

#[test]
fn matches_come_first_then_undecided_then_ruled_out() {
    let mut facts = Facts::new();
    facts.set("run.verdict", "kernel-panic");
    facts.set("run.stage", "kernel");
    let all = KnownBugs::embedded().explain(&facts);
    assert_eq!(all[0].id, "T6");
    assert_eq!(all[0].status, Status::Match);
    let ranks: Vec<Status> = all.iter().map(|r| r.status).collect();
    let mut sorted = ranks.clone();
    sorted.sort_by_key(|s| match s {
        Status::Match => 0,
        Status::Undecided => 1,
        Status::RuledOut => 2,
    });
    assert_eq!(ranks, sorted);
}

#[test]
fn firmware_and_hypervisor_facts_are_keys_the_probes_measure() {
    use crate::core::firmware::keys as k;
    let known = [
        k::SMCCC_DRIVERS,
        k::SMCCC_NON_PSCI_DRIVERS,
        k::SMCCC_NON_PSCI_FUNCTIONS,
        k::HVC_DRIVERS,
        k::SMC_DRIVERS,
        k::MEM_ATTR_PROTOCOL,
        k::LOADER_DATA_NX,
        k::LOADER_DATA_PTE_NX,
        k::MEMMAP_XP,
        k::SECURE_BOOT,
        k::QEMU_VERSION,
        k::ACCELERATOR,
        k::EL2,
        k::EL3,
        k::SMCCC_CONDUIT,
        k::SMCCC_UNKNOWN_FN,
    ];
    for f in &KnownBugs::embedded().family {
        for c in f.require.iter().chain(&f.support) {
            if c.fact.starts_with("firmware.") || c.fact.starts_with("hypervisor.") {
                assert!(
                    known.contains(&c.fact.as_str()),
                    "{}: {} is not a probe key",
                    f.id,
                    c.fact
                );
            }
        }
    }
}
