//! The netlink module against the real kernel. Each test runs on its own thread inside
//! a fresh network namespace (`unshare(CLONE_NEWNET)` is per thread, and the `nft` CLI
//! spawned from that thread inherits it), so nothing touches the host ruleset and the
//! namespace disappears with the thread.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Command;

use nix::sched::{CloneFlags, unshare};
use vpnfw::nft::{Family, KeyType, Nft, NftError, SetSpec};
use vpnfw::reconcile::{ElemAdd, ElemRef, Plan};

const T: &str = "vpnfw";

fn in_netns<F: FnOnce() + Send + 'static>(f: F) {
    std::thread::spawn(move || {
        let host = netns_id();
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET): run the tests as root");
        // Never run against the host's ruleset, whatever happened above.
        assert_ne!(netns_id(), host, "still in the host's network namespace");
        f();
    })
    .join()
    .expect("test thread panicked");
}

/// The network namespace of the calling thread.
fn netns_id() -> std::path::PathBuf {
    std::fs::read_link("/proc/thread-self/ns/net").expect("/proc/thread-self/ns/net")
}

/// NFT_MSG_DESTROYSETELEM arrived in Linux 6.3 (backports may have it earlier).
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let have = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    have >= (major, minor)
}

fn nft(args: &[&str]) -> String {
    let out = Command::new("nft").args(args).output().expect("nft");
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Single addresses as `nft -j` lists them (intervals of one address included).
fn cli_elements(set: &str) -> BTreeSet<String> {
    let v: serde_json::Value =
        serde_json::from_str(&nft(&["-j", "list", "set", "inet", T, set])).expect("json");
    let mut out = BTreeSet::new();
    for item in v["nftables"].as_array().expect("array") {
        for e in item["set"]["elem"].as_array().into_iter().flatten() {
            let val = if e.is_string() { e } else { &e["elem"]["val"] };
            let val = if val.is_null() { e } else { val };
            if let Some(s) = val.as_str() {
                out.insert(s.to_string());
            } else if let Some(r) = val["range"].as_array() {
                out.insert(format!(
                    "{}-{}",
                    r[0].as_str().unwrap_or("?"),
                    r[1].as_str().unwrap_or("?")
                ));
            } else if let Some(p) = val["prefix"].as_object() {
                out.insert(format!(
                    "{}/{}",
                    p["addr"].as_str().unwrap_or("?"),
                    p["len"]
                ));
            }
        }
    }
    out
}

fn strs(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn add(set: &str, addr: &str) -> ElemAdd {
    ElemAdd {
        set: set.into(),
        addr: ip(addr),
        comment: format!("user=u conn={addr}"),
        jump: None,
    }
}

fn del(set: &str, addr: &str) -> ElemRef {
    ElemRef {
        set: set.into(),
        addr: ip(addr),
    }
}

fn staff_sets(n: &mut Nft) {
    n.create(
        T,
        &[
            SetSpec {
                name: "staff_v4".into(),
                family: Family::V4,
                verdict_map: false,
            },
            SetSpec {
                name: "staff_v6".into(),
                family: Family::V6,
                verdict_map: false,
            },
        ],
    )
    .expect("create");
}

#[test]
fn create_is_idempotent_and_list_reports_types() {
    in_netns(|| {
        let mut n = Nft::open().expect("open");
        assert_eq!(n.list_sets(T).expect("list"), None, "no table yet");
        staff_sets(&mut n);
        staff_sets(&mut n);
        nft(&[
            "add",
            "set",
            "inet",
            T,
            "ranges_v4",
            "{ type ipv4_addr; flags interval; }",
        ]);
        let sets = n.list_sets(T).expect("list").expect("table exists");
        let by_name = |name: &str| sets.iter().find(|s| s.name == name).cloned().expect(name);
        assert_eq!(by_name("staff_v4").key, KeyType::Ipv4Addr);
        assert_eq!(by_name("staff_v6").key, KeyType::Ipv6Addr);
        assert!(!by_name("staff_v4").interval);
        assert!(by_name("ranges_v4").interval);
    });
}

#[test]
fn create_refuses_a_set_of_another_type() {
    in_netns(|| {
        nft(&["add", "table", "inet", T]);
        nft(&["add", "set", "inet", T, "staff_v4", "{ type ipv6_addr; }"]);
        let mut n = Nft::open().expect("open");
        let err = n
            .create(
                T,
                &[SetSpec {
                    name: "staff_v4".into(),
                    family: Family::V4,
                    verdict_map: false,
                }],
            )
            .expect_err("type clash");
        assert!(err.to_string().contains("staff_v4"), "{err}");
    });
}

#[test]
fn add_and_delete_both_families_with_comments() {
    in_netns(|| {
        let mut n = Nft::open().expect("open");
        staff_sets(&mut n);
        let plan = Plan {
            adds: vec![
                add("staff_v4", "10.0.0.1"),
                add("staff_v6", "fd00::1"),
                add("staff_v4", "10.0.0.2"),
            ],
            dels: vec![],
        };
        n.apply(T, &plan).expect("apply");
        n.apply(T, &plan)
            .expect("re-adding present elements succeeds");
        assert_eq!(cli_elements("staff_v4"), strs(&["10.0.0.1", "10.0.0.2"]));
        assert_eq!(cli_elements("staff_v6"), strs(&["fd00::1"]));
        assert!(
            nft(&["list", "set", "inet", T, "staff_v4"])
                .contains("comment \"user=u conn=10.0.0.1\"")
        );
        n.apply(
            T,
            &Plan {
                adds: vec![],
                dels: vec![del("staff_v4", "10.0.0.1"), del("staff_v6", "fd00::1")],
            },
        )
        .expect("delete");
        assert_eq!(cli_elements("staff_v4"), strs(&["10.0.0.2"]));
        assert_eq!(cli_elements("staff_v6"), strs(&[]));
    });
}

fn deleting_absent_elements_succeeds(legacy: bool) {
    in_netns(move || {
        let mut n = Nft::open().expect("open");
        if legacy {
            n.force_legacy_delete();
        } else if kernel_at_least(6, 3) {
            assert!(n.uses_destroy(), "the probe must find DESTROYSETELEM here");
        }
        // Batches an absent delete costs: one with DESTROYSETELEM; with DELSETELEM the
        // ENOENT abort, then the retry without it.
        let absent_cost = if n.uses_destroy() { 1 } else { 2 };
        staff_sets(&mut n);
        n.apply(
            T,
            &Plan {
                adds: vec![add("staff_v4", "10.0.0.1"), add("staff_v4", "10.0.0.2")],
                dels: vec![],
            },
        )
        .expect("add");
        // One present, one absent delete, plus an add, in one plan.
        let plan = Plan {
            adds: vec![add("staff_v4", "10.0.0.3")],
            dels: vec![del("staff_v4", "10.0.0.1"), del("staff_v4", "10.9.9.9")],
        };
        let before = n.batches();
        n.apply(T, &plan).expect("absent deletes are not an error");
        assert_eq!(n.batches() - before, absent_cost, "batches for the plan");
        assert_eq!(cli_elements("staff_v4"), strs(&["10.0.0.2", "10.0.0.3"]));
        // Present deletes only: one batch on either path.
        let before = n.batches();
        n.apply(
            T,
            &Plan {
                adds: vec![],
                dels: vec![del("staff_v4", "10.0.0.2")],
            },
        )
        .expect("present delete");
        assert_eq!(n.batches() - before, 1, "no retry without absent elements");
        assert_eq!(cli_elements("staff_v4"), strs(&["10.0.0.3"]));
        // Only absent deletes.
        n.apply(
            T,
            &Plan {
                adds: vec![],
                dels: vec![del("staff_v4", "10.9.9.9"), del("staff_v4", "10.0.0.2")],
            },
        )
        .expect("noop");
        assert_eq!(cli_elements("staff_v4"), strs(&["10.0.0.3"]));
    });
}

#[test]
fn deleting_absent_elements_succeeds_with_destroy() {
    deleting_absent_elements_succeeds(false);
}

#[test]
fn deleting_absent_elements_succeeds_with_legacy_delete() {
    deleting_absent_elements_succeeds(true);
}

#[test]
fn a_failing_batch_changes_nothing() {
    in_netns(|| {
        let mut n = Nft::open().expect("open");
        staff_sets(&mut n);
        n.apply(
            T,
            &Plan {
                adds: vec![add("staff_v4", "10.0.0.1")],
                dels: vec![],
            },
        )
        .expect("add");
        // The kernel refuses the whole batch when one message fails: here an IPv6
        // key sent to an IPv4 set, after a delete and an add that are fine.
        let plan = Plan {
            adds: vec![add("staff_v4", "10.0.0.2"), add("staff_v6", "10.0.0.3")],
            dels: vec![del("staff_v4", "10.0.0.1")],
        };
        let err = n.apply(T, &plan).expect_err("an IPv4 key in an IPv6 set");
        match &err {
            NftError::Kernel { what, source } => {
                assert_eq!(what, "add 10.0.0.3 to set staff_v6");
                assert_eq!(source.raw_os_error(), Some(libc::EINVAL), "{err}");
            }
            other => panic!("expected the kernel's refusal, got {other:?}"),
        }
        assert_eq!(
            cli_elements("staff_v4"),
            strs(&["10.0.0.1"]),
            "nothing of the batch applied"
        );
    });
}

#[test]
fn twenty_thousand_elements_in_one_batch_and_dump() {
    in_netns(|| {
        let mut n = Nft::open().expect("open");
        staff_sets(&mut n);
        let adds: Vec<ElemAdd> = (0..20_000u32)
            .map(|i| ElemAdd {
                set: "staff_v4".into(),
                addr: IpAddr::V4((0x0a00_0000 + i).into()),
                comment: "user=someone@example.org conn=0123456789abcdef0123456789abcdef".into(),
                jump: None,
            })
            .collect();
        let before = n.batches();
        n.apply(T, &Plan { adds, dels: vec![] }).expect("20k batch");
        assert_eq!(n.batches() - before, 1, "one netlink batch");
        let info = n
            .list_sets(T)
            .expect("list")
            .expect("table")
            .into_iter()
            .find(|s| s.name == "staff_v4")
            .expect("set");
        let contents = n.dump_set(T, &info).expect("dump");
        assert_eq!(contents.addrs.len(), 20_000);
        assert_eq!(cli_elements("staff_v4").len(), 20_000);
    });
}

#[test]
fn interval_sets_single_addresses_keep_neighbours_with_destroy() {
    interval_sets_single_addresses_keep_neighbours(false);
}

#[test]
fn interval_sets_single_addresses_keep_neighbours_with_legacy_delete() {
    interval_sets_single_addresses_keep_neighbours(true);
}

fn interval_sets_single_addresses_keep_neighbours(legacy: bool) {
    in_netns(move || {
        nft(&["add", "table", "inet", T]);
        nft(&[
            "add",
            "set",
            "inet",
            T,
            "iv_v4",
            "{ type ipv4_addr; flags interval; }",
        ]);
        nft(&[
            "add",
            "set",
            "inet",
            T,
            "iv_v6",
            "{ type ipv6_addr; flags interval; }",
        ]);
        // An admin's range that vpnfw must leave alone.
        nft(&["add", "element", "inet", T, "iv_v4", "{ 192.168.0.0/24 }"]);
        let mut n = Nft::open().expect("open");
        if legacy {
            n.force_legacy_delete();
        }
        let plan = Plan {
            adds: vec![
                add("iv_v4", "10.0.0.1"),
                add("iv_v4", "10.0.0.2"),
                add("iv_v4", "10.0.0.3"),
                add("iv_v4", "255.255.255.255"),
                add("iv_v6", "fd00::1"),
                add("iv_v6", "fd00::2"),
            ],
            dels: vec![],
        };
        n.apply(T, &plan).expect("add");
        n.apply(T, &plan).expect("re-add");
        n.apply(
            T,
            &Plan {
                adds: vec![],
                dels: vec![del("iv_v4", "10.0.0.2"), del("iv_v6", "fd00::1")],
            },
        )
        .expect("delete the middle one");
        // Absent ones, including one inside the admin's range, which stays whole.
        n.apply(
            T,
            &Plan {
                adds: vec![],
                dels: vec![
                    del("iv_v4", "10.0.0.2"),
                    del("iv_v4", "192.168.0.7"),
                    del("iv_v6", "fd00::1"),
                ],
            },
        )
        .expect("absent deletes in interval sets");
        let sets = n.list_sets(T).expect("list").expect("table");
        let v4 = sets
            .iter()
            .find(|s| s.name == "iv_v4")
            .expect("iv_v4")
            .clone();
        let c = n.dump_set(T, &v4).expect("dump");
        assert_eq!(
            c.addrs,
            vec![ip("10.0.0.1"), ip("10.0.0.3"), ip("255.255.255.255")]
        );
        assert_eq!(c.ranges, vec![(ip("192.168.0.0"), ip("192.168.0.255"))]);
        let v6 = sets
            .iter()
            .find(|s| s.name == "iv_v6")
            .expect("iv_v6")
            .clone();
        assert_eq!(n.dump_set(T, &v6).expect("dump").addrs, vec![ip("fd00::2")]);
        // The kernel agrees, seen through the nft CLI.
        let cli = cli_elements("iv_v4");
        assert!(
            cli.contains("10.0.0.1") && cli.contains("10.0.0.3"),
            "{cli:?}"
        );
        assert!(!cli.iter().any(|e| e.starts_with("10.0.0.2")), "{cli:?}");
        assert!(cli.contains("192.168.0.0/24"), "{cli:?}");
    });
}

#[test]
fn missing_table_and_set_are_named() {
    in_netns(|| {
        let mut n = Nft::open().expect("open");
        let err = n
            .apply(
                T,
                &Plan {
                    adds: vec![add("staff_v4", "10.0.0.1")],
                    dels: vec![],
                },
            )
            .expect_err("no table");
        assert!(err.to_string().contains("inet vpnfw"), "{err}");
        staff_sets(&mut n);
        let err = n
            .apply(
                T,
                &Plan {
                    adds: vec![add("nope_v4", "10.0.0.1")],
                    dels: vec![],
                },
            )
            .expect_err("no set");
        assert!(matches!(err, NftError::SetMissing { .. }), "{err:?}");
        assert!(err.to_string().contains("nope_v4"), "{err}");
    });
}

#[test]
fn probe_tells_known_from_unknown_types_and_commits_nothing() {
    in_netns(|| {
        let check = |n: &mut Nft| {
            if kernel_at_least(6, 3) {
                assert!(n.uses_destroy(), "DESTROYSETELEM exists since 6.3");
            }
            assert!(
                n.probe_msg_type(libc::NFT_MSG_NEWSETELEM as u16),
                "NEWSETELEM"
            );
            assert!(
                n.probe_msg_type(libc::NFT_MSG_DELSETELEM as u16),
                "DELSETELEM"
            );
            assert!(!n.probe_msg_type(99), "no such message type");
            assert_eq!(n.probe_msg_type(30), n.uses_destroy());
            assert_eq!(n.batches(), 0, "probes are not counted as batches");
        };
        // The probe's table does not exist: known types answer ENOENT.
        check(&mut Nft::open().expect("open"));
        assert_eq!(nft(&["list", "ruleset"]), "", "probes never commit");
        // A table of exactly the name the probe aims at, holding the probe's element:
        // the probe's messages succeed there, yet nothing may be committed.
        let probe_table = "vpnfw-probe-no-such-table";
        nft(&["add", "table", "inet", probe_table]);
        nft(&[
            "add",
            "set",
            "inet",
            probe_table,
            "probe",
            "{ type ipv4_addr; }",
        ]);
        nft(&[
            "add",
            "element",
            "inet",
            probe_table,
            "probe",
            "{ 0.0.0.0 }",
        ]);
        let before = nft(&["list", "ruleset"]);
        check(&mut Nft::open().expect("open"));
        assert_eq!(nft(&["list", "ruleset"]), before, "probes never commit");
    });
}

#[test]
fn comments_up_to_nfts_limit_are_kept_longer_ones_cut() {
    in_netns(|| {
        let mut n = Nft::open().expect("open");
        staff_sets(&mut n);
        let exact = "x".repeat(128);
        let long = format!("{}{}", "y".repeat(128), "z".repeat(72));
        n.apply(
            T,
            &Plan {
                adds: vec![
                    ElemAdd {
                        comment: exact.clone(),
                        ..add("staff_v4", "10.0.0.1")
                    },
                    ElemAdd {
                        comment: long,
                        ..add("staff_v4", "10.0.0.2")
                    },
                ],
                dels: vec![],
            },
        )
        .expect("apply");
        let listing = nft(&["list", "set", "inet", T, "staff_v4"]);
        assert!(
            listing.contains(&format!("10.0.0.1 comment \"{exact}\"")),
            "{listing}"
        );
        assert!(
            listing.contains(&format!("10.0.0.2 comment \"{}\"", "y".repeat(128))),
            "cut at 128 bytes: {listing}"
        );
        assert!(!listing.contains('z'), "{listing}");
    });
}

#[test]
fn a_plan_naming_a_missing_set_changes_nothing() {
    in_netns(|| {
        let mut n = Nft::open().expect("open");
        staff_sets(&mut n);
        n.apply(
            T,
            &Plan {
                adds: vec![add("staff_v4", "10.0.0.1")],
                dels: vec![],
            },
        )
        .expect("add");
        let before = nft(&["list", "ruleset"]);
        let err = n
            .apply(
                T,
                &Plan {
                    adds: vec![
                        add("staff_v4", "10.0.0.2"),
                        add("staff_v6", "fd00::2"),
                        add("nope_v4", "10.0.0.3"),
                    ],
                    dels: vec![del("staff_v4", "10.0.0.1")],
                },
            )
            .expect_err("nope_v4 does not exist");
        match &err {
            NftError::SetMissing { table, set } => {
                assert_eq!((table.as_str(), set.as_str()), (T, "nope_v4"));
            }
            other => panic!("expected SetMissing, got {other:?}"),
        }
        assert!(
            err.to_string().contains("declare it"),
            "tells what to do: {err}"
        );
        assert_eq!(nft(&["list", "ruleset"]), before, "nothing changed");
    });
}

#[test]
fn a_refused_element_is_named_even_among_many() {
    in_netns(|| {
        let mut n = Nft::open().expect("open");
        staff_sets(&mut n);
        // A v6 address in a v4 set, in the middle of one message of 150 elements.
        let mut adds: Vec<ElemAdd> = (1..=150u32)
            .map(|i| add("staff_v4", &format!("10.0.{}.{}", i / 256, i % 256)))
            .collect();
        adds[70] = add("staff_v4", "fd00::70");
        let err = n
            .apply(T, &Plan { adds, dels: vec![] })
            .expect_err("wrong family");
        match &err {
            NftError::Kernel { what, .. } => assert_eq!(what, "add fd00::70 to set staff_v4"),
            other => panic!("expected the kernel's refusal, got {other:?}"),
        }
        assert_eq!(cli_elements("staff_v4"), strs(&[]), "nothing applied");
    });
}

#[test]
fn an_address_inside_an_admin_range_is_named() {
    in_netns(|| {
        nft(&["add", "table", "inet", T]);
        nft(&[
            "add",
            "set",
            "inet",
            T,
            "iv_v4",
            "{ type ipv4_addr; flags interval; }",
        ]);
        nft(&["add", "element", "inet", T, "iv_v4", "{ 192.168.0.0/24 }"]);
        let mut n = Nft::open().expect("open");
        let err = n
            .apply(
                T,
                &Plan {
                    adds: vec![
                        add("iv_v4", "10.0.0.1"),
                        add("iv_v4", "192.168.0.7"),
                        add("iv_v4", "10.0.0.3"),
                    ],
                    dels: vec![],
                },
            )
            .expect_err("overlaps the admin's range");
        match &err {
            NftError::Kernel { what, .. } => {
                assert!(what.starts_with("add 192.168.0.7 to set iv_v4 ("), "{what}");
                assert!(what.contains("overlaps"), "{what}");
            }
            other => panic!("expected the kernel's refusal, got {other:?}"),
        }
        assert_eq!(
            cli_elements("iv_v4"),
            strs(&["192.168.0.0/24"]),
            "nothing applied"
        );
    });
}

/// An admin re-creates a set as an interval set while vpnfw runs. vpnfw had learnt
/// it as a hash set; writing a lone start element into the interval set would open
/// every address above it. The batch carries the generation vpnfw's facts are from,
/// the kernel refuses it, and vpnfw reads the set again and writes a start/end pair.
#[test]
fn a_set_recreated_as_interval_is_read_again_before_writing() {
    in_netns(|| {
        let mut n = Nft::open().expect("open");
        staff_sets(&mut n);
        n.apply(
            T,
            &Plan {
                adds: vec![add("staff_v4", "10.0.0.1")],
                dels: vec![],
            },
        )
        .expect("add to the hash set");
        nft(&["delete", "set", "inet", T, "staff_v4"]);
        nft(&[
            "add",
            "set",
            "inet",
            T,
            "staff_v4",
            "{ type ipv4_addr; flags interval; }",
        ]);
        let before = n.batches();
        n.apply(
            T,
            &Plan {
                adds: vec![add("staff_v4", "10.0.0.2")],
                dels: vec![],
            },
        )
        .expect("add to the interval set");
        assert_eq!(
            cli_elements("staff_v4"),
            strs(&["10.0.0.2"]),
            "one address, not a range to the end of the address space"
        );
        assert_eq!(
            n.batches() - before,
            2,
            "the first batch was refused for its stale generation, the second applied"
        );
        // In a steady state the generation is tracked without asking: one batch.
        let before = n.batches();
        n.apply(
            T,
            &Plan {
                adds: vec![add("staff_v4", "10.0.0.7")],
                dels: vec![del("staff_v4", "10.0.0.2")],
            },
        )
        .expect("steady state");
        assert_eq!(n.batches() - before, 1);
        assert_eq!(cli_elements("staff_v4"), strs(&["10.0.0.7"]));
    });
}

/// A set deleted by hand after vpnfw learnt it: the batch's stale generation makes
/// vpnfw look again, and the plan fails naming the set, with nothing applied.
#[test]
fn a_set_deleted_under_vpnfw_is_named_and_nothing_applies() {
    in_netns(|| {
        let mut n = Nft::open().expect("open");
        staff_sets(&mut n);
        n.apply(
            T,
            &Plan {
                adds: vec![add("staff_v4", "10.0.0.1"), add("staff_v6", "fd00::1")],
                dels: vec![],
            },
        )
        .expect("add");
        nft(&["delete", "set", "inet", T, "staff_v6"]);
        let plan = Plan {
            adds: vec![add("staff_v4", "10.0.0.2"), add("staff_v6", "fd00::2")],
            dels: vec![del("staff_v4", "10.0.0.1")],
        };
        match n.apply(T, &plan) {
            Err(NftError::SetMissing { table, set }) => {
                assert_eq!((table.as_str(), set.as_str()), (T, "staff_v6"));
            }
            other => panic!("expected SetMissing for staff_v6, got {other:?}"),
        }
        assert_eq!(cli_elements("staff_v4"), strs(&["10.0.0.1"]));
    });
}
