//! A corpus of hostile hook input. For every case the hook, run the way the portal
//! runs it, exits non-zero with one line on stderr that names the variable, and the
//! kernel sets and the store are exactly as before.

mod common;

use common::*;

/// Shell metacharacters and nft syntax, each appended to an otherwise valid value.
const META: [&str; 9] = [
    ";",
    "}",
    "'",
    "\"",
    "$(",
    ")",
    "\n",
    "`",
    " } ; flush ruleset ; {",
];

struct Case {
    name: String,
    /// Variables replaced (or, with `None`, removed) in a valid connect.
    set: Vec<(&'static str, Option<String>)>,
    /// The variable the error must name.
    var: &'static str,
    code: i32,
}

fn case(name: &str, var: &'static str, value: &str) -> Case {
    Case {
        name: name.into(),
        set: vec![(var, Some(value.into()))],
        var,
        code: 2,
    }
}

fn corpus() -> Vec<Case> {
    let mut c = Vec::new();
    let valid: [(&'static str, &str); 6] = [
        ("VPN_EVENT", "C"),
        ("VPN_PROFILE_ID", "staff"),
        ("VPN_CONNECTION_ID", "0123abcd"),
        ("VPN_IP_FOUR", "10.10.0.9"),
        ("VPN_IP_SIX", "fd10::9"),
        ("VPN_PROTO", "openvpn"),
    ];
    for (var, good) in valid {
        for m in META {
            c.push(case(&format!("{var} + {m:?}"), var, &format!("{good}{m}")));
        }
    }
    // The user id is opaque data (it may legitimately hold quotes); control
    // characters and overlong values are refused.
    c.push(case("user id with a newline", "VPN_USER_ID", "alice\nroot"));
    c.push(case(
        "user id with an escape sequence",
        "VPN_USER_ID",
        "alice\u{1b}[31m",
    ));
    c.push(case(
        "user id of 100 KiB",
        "VPN_USER_ID",
        &"u".repeat(100 * 1024),
    ));
    c.push(case(
        "profile id of 100 KiB",
        "VPN_PROFILE_ID",
        &"p".repeat(100 * 1024),
    ));
    c.push(case(
        "connection id of 100 KiB",
        "VPN_CONNECTION_ID",
        &"c".repeat(100 * 1024),
    ));
    c.push(case(
        "address of 100 KiB",
        "VPN_IP_FOUR",
        &"1".repeat(100 * 1024),
    ));
    c.push(case(
        "profile id of 65 bytes",
        "VPN_PROFILE_ID",
        &"a".repeat(65),
    ));
    c.push(case(
        "connection id of 129 bytes",
        "VPN_CONNECTION_ID",
        &"c".repeat(129),
    ));
    for (addr, var) in [
        ("10.10.0.9/32", "VPN_IP_FOUR"),
        ("10.10.0.0/24", "VPN_IP_FOUR"),
        ("fd10::9/128", "VPN_IP_SIX"),
        ("fe80::1%eth0", "VPN_IP_SIX"),
        ("fd10::9%1", "VPN_IP_SIX"),
        ("::ffff:10.10.0.9", "VPN_IP_SIX"),
        ("::ffff:a0a:9", "VPN_IP_SIX"),
        ("::10.10.0.9", "VPN_IP_SIX"),
        ("10.10.0.9", "VPN_IP_SIX"),
        ("fd10::9", "VPN_IP_FOUR"),
        ("010.10.0.9", "VPN_IP_FOUR"),
        ("10.10.00.9", "VPN_IP_FOUR"),
        ("10.10.0.09", "VPN_IP_FOUR"),
        ("0x0a.10.0.9", "VPN_IP_FOUR"),
        ("167772169", "VPN_IP_FOUR"),
        ("10.10.9", "VPN_IP_FOUR"),
        (" 10.10.0.9", "VPN_IP_FOUR"),
        ("0.0.0.0", "VPN_IP_FOUR"),
        ("255.255.255.255", "VPN_IP_FOUR"),
        ("224.0.0.1", "VPN_IP_FOUR"),
        ("127.0.0.1", "VPN_IP_FOUR"),
        ("::", "VPN_IP_SIX"),
        ("::1", "VPN_IP_SIX"),
        ("ff02::1", "VPN_IP_SIX"),
        ("fd10::9::1", "VPN_IP_SIX"),
    ] {
        c.push(case(&format!("address {addr:?}"), var, addr));
    }
    for id in [
        "",
        "123",
        "Staff",
        "staff_v4",
        "../vpnfw",
        "staff v4",
        "staff\tx",
        "vpnfw.staff",
        "staff,x",
        "é",
    ] {
        c.push(case(&format!("profile id {id:?}"), "VPN_PROFILE_ID", id));
    }
    for ev in ["", "X", "c", "CD", " C", "connect"] {
        c.push(case(&format!("event {ev:?}"), "VPN_EVENT", ev));
    }
    c.push(case("proto \"ipsec\"", "VPN_PROTO", "ipsec"));
    c.push(case("empty proto", "VPN_PROTO", ""));
    c.push(case("empty connection id", "VPN_CONNECTION_ID", ""));
    for var in [
        "VPN_EVENT",
        "VPN_PROFILE_ID",
        "VPN_CONNECTION_ID",
        "VPN_USER_ID",
    ] {
        c.push(Case {
            name: format!("{var} missing"),
            set: vec![(var, None)],
            var,
            code: 2,
        });
    }
    c.push(Case {
        name: "no address at all".into(),
        set: vec![("VPN_IP_FOUR", Some(String::new())), ("VPN_IP_SIX", None)],
        var: "VPN_IP_FOUR",
        code: 2,
    });
    for (v4, v6, var) in [
        ("10.99.0.9", "fd10::9", "VPN_IP_FOUR"),
        ("10.10.0.9", "fd99::9", "VPN_IP_SIX"),
    ] {
        c.push(Case {
            name: format!("outside the profile: {v4} {v6}"),
            set: vec![
                ("VPN_IP_FOUR", Some(v4.into())),
                ("VPN_IP_SIX", Some(v6.into())),
            ],
            var,
            code: 3,
        });
    }
    c
}

/// Everything vpnfw could have changed: the whole table and the store.
fn snapshot(
    d: &Daemon,
) -> (
    String,
    std::collections::BTreeSet<(String, String, String, String)>,
) {
    (d.ns.nft(&["list", "table", "inet", "vpnfw"]), d.stored())
}

#[test]
fn hostile_input_corpus_changes_nothing() {
    let d = Daemon::start(STAFF);
    assert_eq!(
        d.hook(&connect_vars("staff", "live", "10.10.0.5", "fd10::5"))
            .code,
        0
    );
    let before = snapshot(&d);
    let cases = corpus();
    assert!(cases.len() >= 60, "{} cases", cases.len());
    for c in &cases {
        let mut vars: Vec<(&str, String)> =
            connect_vars("staff", "0123abcd", "10.10.0.9", "fd10::9")
                .into_iter()
                .map(|(k, v)| (k, v.to_string()))
                .collect();
        for (var, value) in &c.set {
            vars.retain(|(k, _)| k != var);
            if let Some(v) = value {
                vars.push((var, v.clone()));
            }
        }
        let borrowed: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = d.hook(&borrowed);
        assert_eq!(r.code, c.code, "{}: {}", c.name, r.output);
        assert_eq!(
            r.output.lines().count(),
            1,
            "{}: one line: {:?}",
            c.name,
            r.output
        );
        assert!(
            r.output.contains(c.var),
            "{}: should name {}: {}",
            c.name,
            c.var,
            r.output
        );
        assert!(
            r.output.len() < 600,
            "{}: bounded output ({} bytes)",
            c.name,
            r.output.len()
        );
    }
    assert_eq!(snapshot(&d), before, "the corpus changed kernel or store");
}

#[test]
fn quotes_in_the_user_id_are_data_not_syntax() {
    let d = Daemon::start(STAFF);
    let user = "o'brien\"; $(touch /tmp/vpnfw-pwned) `id` } ; flush ruleset ; {";
    let mut vars = connect_vars("staff", "q1", "10.10.0.5", "");
    vars.retain(|(k, _)| *k != "VPN_USER_ID");
    vars.push(("VPN_USER_ID", user));
    let r = d.hook(&vars);
    assert_eq!(r.code, 0, "{}", r.output);
    assert!(!std::path::Path::new("/tmp/vpnfw-pwned").exists());
    assert_eq!(d.status()["sessions"][0]["user_id"], user);
    assert_eq!(d.elements("staff_v4"), Some(ips(&["10.10.0.5"])));
}

/// Runs the hook with a raw environment block (duplicates, non-UTF-8), through
/// execve(2) itself, since shells and `env` merge duplicates.
fn hook_envp(d: &Daemon, envp: &[&[u8]]) -> (i32, String) {
    let hex: Vec<String> = envp
        .iter()
        .map(|e| e.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    // argv: -c BIN SOCKET HEX...
    let script = "import ctypes, sys\n\
        prog, sock = sys.argv[1].encode(), sys.argv[2].encode()\n\
        env = [bytes.fromhex(h) for h in sys.argv[3:]] + [b'VPNFW_SOCKET=' + sock]\n\
        arr = (ctypes.c_char_p * (len(env) + 1))(*env, None)\n\
        argv = (ctypes.c_char_p * 2)(prog, None)\n\
        ctypes.CDLL(None).execve(prog, argv, arr)\n\
        sys.exit(99)\n";
    let out =
        d.ns.cmd("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "/usr/bin/python3",
                "-c",
                script,
            ])
            .arg(BIN)
            .arg(d.socket())
            .args(&hex)
            .output()
            .expect("python3");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn duplicated_and_non_utf8_variables_are_refused() {
    let d = Daemon::start(STAFF);
    let before = snapshot(&d);
    let base: Vec<&[u8]> = vec![
        b"VPN_USER_ID=alice",
        b"VPN_PROFILE_ID=staff",
        b"VPN_CONNECTION_ID=dup1",
        b"VPN_IP_FOUR=10.10.0.7",
    ];
    // Sanity: the raw path itself works.
    let mut ok = base.clone();
    ok.push(b"VPN_EVENT=C");
    let (code, out) = hook_envp(&d, &ok);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        d.hook(&disconnect_vars("staff", "dup1", "10.10.0.7", ""))
            .code,
        0
    );
    for (extra, var) in [
        (vec![&b"VPN_EVENT=C"[..], b"VPN_EVENT=D"], "VPN_EVENT"),
        (
            vec![b"VPN_EVENT=C", b"VPN_IP_FOUR=10.10.0.8"],
            "VPN_IP_FOUR",
        ),
        (
            vec![b"VPN_EVENT=C", b"VPN_PROFILE_ID=students"],
            "VPN_PROFILE_ID",
        ),
        (vec![b"VPN_EVENT=C", b"VPN_USER_ID=\xff\xfe"], "VPN_USER_ID"),
        (
            vec![b"VPN_EVENT=C", b"VPN_CONNECTION_ID=\xc3\x28"],
            "VPN_CONNECTION_ID",
        ),
    ] {
        let mut envp = base.clone();
        for e in &extra {
            let name = e.split(|b| *b == b'=').next().unwrap_or_default();
            // Non-UTF-8 replacements replace; duplicates of VPN_EVENT etc. are added.
            if name == b"VPN_USER_ID" || name == b"VPN_CONNECTION_ID" {
                envp.retain(|x| !x.starts_with(name));
            }
            envp.push(e);
        }
        let (code, out) = hook_envp(&d, &envp);
        assert_eq!(code, 2, "{var}: {out}");
        assert_eq!(out.lines().count(), 1, "{var}: {out}");
        assert!(out.contains(var), "{var}: {out}");
    }
    assert_eq!(snapshot(&d), before);
}
