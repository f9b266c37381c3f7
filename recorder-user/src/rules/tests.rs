//! Rule compilation and matching, by example.

use super::*;

fn party(user: Option<&str>, host: &str) -> NameAddr {
    NameAddr {
        user: user.map(str::to_string),
        host: Some(host.to_string()),
        uri: format!("sip:{}@{host}", user.unwrap_or("")),
        ..NameAddr::default()
    }
}

fn rule(id: i64, priority: i64, action: RuleAction, c: Conditions) -> Rule {
    Rule {
        id,
        name: format!("r{id}"),
        priority,
        enabled: true,
        action,
        conditions: c,
    }
}

fn decide(set: &RuleSet, from: &str, to: &str, src: &str, dst: &str) -> RecordingMode {
    let (f, t) = (
        party(Some(from), "pbx.example.com"),
        party(Some(to), "carrier.net"),
    );
    set.decide(&CallFacts {
        from: &f,
        to: &t,
        caller_ip: src.parse().expect("ip"),
        callee_ip: dst.parse().expect("ip"),
    })
}

fn glob(p: &str, s: &str) -> bool {
    Glob::compile("p", p).expect("glob").matches(s)
}

#[test]
fn globs_match_the_whole_user_part() {
    assert!(glob("1234", "1234"));
    assert!(!glob("1234", "12345"));
    assert!(!glob("1234", "123"));
    assert!(glob("12*", "12"));
    assert!(glob("12*", "129999"));
    assert!(!glob("12*", "0129"));
    assert!(glob("*99", "100099"));
    assert!(!glob("*99", "1009"));
    assert!(glob("1?3", "123"));
    assert!(!glob("1?3", "13"));
    assert!(glob("*", ""));
    assert!(glob("a*b*c", "aXXbYbZc"));
    assert!(!glob("a*b*c", "aXXbYbZ"));
    assert!(glob("Alice", "aLICE"));
    assert!(glob("+4930*", "+4930123"));
    // Worst-case backtracking stays bounded (and correct).
    let long = "a".repeat(MAX_PATTERN);
    assert!(!glob(&format!("{}b", "*a".repeat(60)), &long));
}

#[test]
fn patterns_and_cidrs_are_validated_with_the_field_named() {
    let bad = |c: Conditions| validate("n", 1, &c).expect_err("invalid").field;
    assert_eq!(
        bad(Conditions {
            caller: Some(String::new()),
            ..Default::default()
        }),
        "match.caller"
    );
    assert_eq!(
        bad(Conditions {
            party: Some("a b".into()),
            ..Default::default()
        }),
        "match.party"
    );
    assert_eq!(
        bad(Conditions {
            domain: Some("x".repeat(MAX_PATTERN + 1)),
            ..Default::default()
        }),
        "match.domain"
    );
    for cidr in [
        "10.0.0.0/33",
        "10.0.0/8",
        "10.0.0.0/",
        "fe80::/129",
        "x",
        "1.2.3.4/-1",
    ] {
        assert_eq!(
            bad(Conditions {
                ip: Some(cidr.into()),
                ..Default::default()
            }),
            "match.ip",
            "{cidr}"
        );
    }
    assert_eq!(
        validate("", 1, &Conditions::default())
            .expect_err("name")
            .field,
        "name"
    );
    assert_eq!(
        validate("n", -1, &Conditions::default())
            .expect_err("priority")
            .field,
        "priority"
    );
    assert!(validate("n", 0, &Conditions::default()).is_ok());
    assert_eq!(RuleAction::parse("on_demand"), Some(RuleAction::OnDemand));
    assert_eq!(RuleAction::parse("Record"), None);
}

#[test]
fn cidr_v4_v6_and_mapped() {
    let c = |s: &str| Cidr::parse("ip", s).expect("cidr");
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    assert!(c("198.18.0.0/15").contains(ip("198.19.255.1")));
    assert!(!c("198.18.0.0/15").contains(ip("198.20.0.1")));
    assert!(c("198.18.0.1").contains(ip("198.18.0.1")));
    assert!(!c("198.18.0.1").contains(ip("198.18.0.2")));
    assert!(c("0.0.0.0/0").contains(ip("8.8.8.8")));
    assert!(!c("0.0.0.0/0").contains(ip("::1")));
    assert!(c("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
    assert!(!c("2001:db8::/32").contains(ip("2001:db9::1")));
    assert!(c("::/0").contains(ip("fe80::1")));
    // A party seen as IPv4-mapped IPv6 is compared as IPv4, both ways round.
    assert!(c("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")));
    assert!(c("::ffff:10.0.0.1").contains(ip("10.0.0.1")));
    // Host bits set in the network are ignored.
    assert!(c("10.1.2.3/8").contains(ip("10.200.0.0")));
}

#[test]
fn first_enabled_match_by_priority_wins_else_default() {
    let caller = |p: &str| Conditions {
        caller: Some(p.into()),
        ..Default::default()
    };
    let mut disabled = rule(1, 0, RuleAction::Record, caller("*"));
    disabled.enabled = false;
    let rules = vec![
        rule(7, 50, RuleAction::OnDemand, caller("1*")),
        disabled,
        rule(3, 10, RuleAction::Skip, caller("100?")),
        // Same priority as rule 7: the lower id goes first.
        rule(2, 50, RuleAction::Record, caller("10*")),
    ];
    let set = RuleSet::new(&rules, RuleAction::Skip);
    assert_eq!(set.len(), 3);
    let d = |from: &str| decide(&set, from, "2000", "10.0.0.1", "10.0.0.2");
    assert_eq!(
        d("1001"),
        RecordingMode {
            action: RuleAction::Skip,
            rule_id: Some(3)
        }
    );
    assert_eq!(d("10011").rule_id, Some(2));
    assert_eq!(d("10011").action, RuleAction::Record);
    assert_eq!(d("1900").rule_id, Some(7));
    assert_eq!(
        d("2000"),
        RecordingMode {
            action: RuleAction::Skip,
            rule_id: None
        }
    );
    assert_eq!(
        RuleSet::default().decide(&CallFacts {
            from: &party(None, "h"),
            to: &party(None, "h"),
            caller_ip: "::1".parse().expect("ip"),
            callee_ip: "::1".parse().expect("ip"),
        }),
        RecordingMode::default()
    );
}

#[test]
fn conditions_are_anded_and_sides_are_respected() {
    let c = Conditions {
        callee: Some("2*".into()),
        caller_ip: Some("10.0.0.0/8".into()),
        domain: Some("*.example.com".into()),
        ..Default::default()
    };
    let set = RuleSet::new(&[rule(1, 1, RuleAction::Skip, c)], RuleAction::Record);
    let hit = |from: &str, to: &str, src: &str, dst: &str| {
        decide(&set, from, to, src, dst).rule_id == Some(1)
    };
    assert!(hit("1000", "2000", "10.9.9.9", "192.0.2.1"));
    assert!(!hit("1000", "3000", "10.9.9.9", "192.0.2.1"));
    assert!(!hit("2000", "1000", "10.9.9.9", "192.0.2.1"));
    assert!(!hit("1000", "2000", "192.0.2.1", "10.9.9.9"));
    // party and ip match either side.
    let either = Conditions {
        party: Some("555".into()),
        ip: Some("2001:db8::/32".into()),
        ..Default::default()
    };
    let set = RuleSet::new(
        &[rule(4, 1, RuleAction::OnDemand, either)],
        RuleAction::Record,
    );
    for (from, to, src, dst) in [
        ("555", "1", "2001:db8::1", "::2"),
        ("1", "555", "::2", "2001:db8::9"),
    ] {
        assert_eq!(decide(&set, from, to, src, dst).rule_id, Some(4));
    }
    assert_eq!(decide(&set, "1", "2", "2001:db8::1", "::2").rule_id, None);
    assert_eq!(decide(&set, "555", "2", "::3", "::2").rule_id, None);
    // A domain matches the callee's host as well; a missing user part matches no pattern.
    let dom = Conditions {
        domain: Some("CARRIER.net".into()),
        ..Default::default()
    };
    let set = RuleSet::new(&[rule(5, 1, RuleAction::Skip, dom)], RuleAction::Record);
    assert_eq!(decide(&set, "1", "2", "::1", "::2").rule_id, Some(5));
    let any_caller = Conditions {
        caller: Some("*".into()),
        ..Default::default()
    };
    let set = RuleSet::new(
        &[rule(6, 1, RuleAction::Skip, any_caller)],
        RuleAction::Record,
    );
    let anonymous = party(None, "h");
    let facts = CallFacts {
        from: &anonymous,
        to: &anonymous,
        caller_ip: "::1".parse().expect("ip"),
        callee_ip: "::1".parse().expect("ip"),
    };
    assert_eq!(set.decide(&facts).rule_id, None);
}

/// The media worker's side, through the replay pipeline over public captures (a G.711 call,
/// and a G.729 one whose RTP would be kept raw): `skip` and an `on_demand` call nobody
/// starts leave CDRs with no recording and no file at all; `record` records them.
#[test]
fn skip_and_unstarted_on_demand_calls_leave_no_file() {
    let Some(corpus) =
        calltap_lab::corpus::corpus("skip_and_unstarted_on_demand_calls_leave_no_file")
    else {
        return;
    };
    let files = [
        corpus.join("sip-rtp-g711.pcap"),
        corpus.join("sip-rtp-g729a.pcap"),
    ];
    for mode in [RuleAction::Skip, RuleAction::OnDemand, RuleAction::Record] {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut cfg = crate::config::Config::load_with_env(None, &[]).expect("config");
        cfg.storage.data_dir = tmp.path().to_path_buf();
        cfg.recording.default = mode;
        let mut cdrs = Vec::new();
        crate::daemon::replay::replay(&cfg, &files, |c| cdrs.push(c.clone()));
        assert!(cdrs.len() >= 2, "{mode:?}: {} calls", cdrs.len());
        let mut files_left = 0;
        if let Ok(walk) = std::fs::read_dir(cfg.storage.recordings_dir()) {
            let mut todo: Vec<_> = walk.flatten().map(|e| e.path()).collect();
            while let Some(p) = todo.pop() {
                match std::fs::read_dir(&p) {
                    Ok(d) => todo.extend(d.flatten().map(|e| e.path())),
                    Err(_) => files_left += 1,
                }
            }
        }
        let mut recorded = 0;
        for c in &cdrs {
            assert_eq!(c.recording_mode.as_deref(), Some(mode.as_str()));
            assert_eq!(c.rule_id, None);
            if let Some(r) = &c.recording {
                recorded += 1 + usize::from(r.raw_rtp_pcap.is_some());
            }
        }
        let audio = cdrs
            .iter()
            .filter(|c| c.packets.caller + c.packets.callee > 0)
            .count();
        assert!(audio >= 2, "{mode:?}: the calls' media was followed");
        if mode == RuleAction::Record {
            // Every recorded call has its WAV (and raw RTP pcap for G.729), nothing else.
            assert!(recorded > audio, "{mode:?}: {recorded} files in the CDRs");
            assert_eq!(files_left, recorded, "{mode:?}");
        } else {
            assert_eq!(recorded, 0, "{mode:?}: a CDR names a recording");
            assert_eq!(files_left, 0, "{mode:?}: files were written");
        }
    }
}

#[test]
fn live_rules_replace_keeps_default_and_a_bad_stored_row_is_skipped() {
    let live = LiveRules::new(RuleSet::default_only(RuleAction::OnDemand));
    assert_eq!(
        decide(&live.get(), "1", "2", "::1", "::2").action,
        RuleAction::OnDemand
    );
    let bad = rule(
        9,
        0,
        RuleAction::Record,
        Conditions {
            ip: Some("nonsense".into()),
            ..Default::default()
        },
    );
    let good = rule(10, 5, RuleAction::Skip, Conditions::default());
    live.replace(&[bad, good]);
    let set = live.get();
    assert_eq!(set.len(), 1);
    assert_eq!(set.default_action(), RuleAction::OnDemand);
    assert_eq!(decide(&set, "1", "2", "::1", "::2").rule_id, Some(10));
    live.set_default(RuleAction::Record);
    assert_eq!(live.get().default_action(), RuleAction::Record);
    assert_eq!(live.get().len(), 1);
}

#[test]
fn a_read_older_than_the_rules_in_force_never_replaces_them() {
    // The start-up loader reads the (empty) table, an API change stores a rule and reads
    // the table again, and the API's read is put in force before the loader's.
    let live = LiveRules::new(RuleSet::default_only(RuleAction::Record));
    let loader = live.ticket();
    let api = live.ticket();
    let skip = rule(1, 0, RuleAction::Skip, Conditions::default());
    assert!(live.replace_from(api, std::slice::from_ref(&skip)));
    assert!(!live.replace_from(loader, &[]), "the older read is dropped");
    assert_eq!(live.get().len(), 1);
    assert_eq!(
        decide(&live.get(), "1", "2", "::1", "::2").action,
        RuleAction::Skip
    );
    // In order, both apply; the default survives every replacement.
    live.set_default(RuleAction::OnDemand);
    let (first, second) = (live.ticket(), live.ticket());
    assert!(live.replace_from(first, &[]));
    assert!(live.replace_from(second, &[skip]));
    assert_eq!(live.get().len(), 1);
    assert_eq!(live.get().default_action(), RuleAction::OnDemand);
}
