//! Session caps, and what happens when the store cannot be written: connects fail
//! closed, disconnects still take the addresses out of the kernel.

mod common;

use std::process::Command;

use common::*;

fn connect_as<'a>(user: &'a str, conn: &'a str, ip4: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut v = connect_vars("staff", conn, ip4, "");
    v.retain(|(k, _)| *k != "VPN_USER_ID");
    v.push(("VPN_USER_ID", user));
    v
}

#[test]
fn per_user_and_per_profile_limits_refuse_new_sessions() {
    let d = Daemon::start(&format!(
        "{STAFF}[limits]\nmax_sessions_per_user = 2\nmax_sessions_per_profile = 3\n"
    ));
    assert_eq!(d.hook(&connect_as("alice", "a1", "10.10.0.1")).code, 0);
    assert_eq!(d.hook(&connect_as("alice", "a2", "10.10.0.2")).code, 0);
    let r = d.hook(&connect_as("alice", "a3", "10.10.0.3"));
    assert_eq!(r.code, 3, "{}", r.output);
    assert!(
        r.output.contains("max_sessions_per_user = 2"),
        "{}",
        r.output
    );
    // A repeated connect of a live session is not a new one.
    assert_eq!(d.hook(&connect_as("alice", "a1", "10.10.0.1")).code, 0);
    assert_eq!(d.hook(&connect_as("bob", "b1", "10.10.0.4")).code, 0);
    let r = d.hook(&connect_as("carol", "c1", "10.10.0.5"));
    assert_eq!(r.code, 3, "{}", r.output);
    assert!(
        r.output.contains("max_sessions_per_profile = 3"),
        "{}",
        r.output
    );
    assert_eq!(
        d.elements("staff_v4"),
        Some(ips(&["10.10.0.1", "10.10.0.2", "10.10.0.4"]))
    );
    // Ending a session frees a slot.
    assert_eq!(
        d.hook(&disconnect_vars("staff", "a2", "10.10.0.2", ""))
            .code,
        0
    );
    assert_eq!(d.hook(&connect_as("carol", "c1", "10.10.0.5")).code, 0);
}

/// A tiny tmpfs for the store, unmounted (lazily) on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn fill(&self) {
        // Fill every free block; dd stops with ENOSPC, which is the point.
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=4096"])
            .arg(format!("of={}", self.0.join("filler").display()))
            .stderr(std::process::Stdio::null())
            .status();
    }

    fn free(&self) {
        let _ = std::fs::remove_file(self.0.join("filler"));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn full_store_fails_connects_closed_and_disconnects_still_remove() {
    let mut mount = None;
    let mut d = Daemon::start_with(Netns::new(), STAFF, &[], Some(HOOK_GROUP), |d| {
        let dir = d.work.path("store");
        std::fs::create_dir(&dir).expect("mkdir");
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"])
                .arg(&dir),
        );
        mount = Some(Tmpfs(dir));
    });
    let mount = mount.expect("mounted");
    d.kill();
    d.store_name = "store/state.db".into();
    d.write_config();
    d.restart();
    assert_eq!(
        d.hook(&connect_vars("staff", "c1", "10.10.0.5", "fd10::5"))
            .code,
        0
    );
    assert_eq!(
        d.hook(&connect_vars("staff", "c2", "10.10.0.6", "")).code,
        0
    );

    mount.fill();
    let r = d.hook(&connect_vars("staff", "c3", "10.10.0.7", ""));
    assert_eq!(r.code, 5, "connect must fail closed: {}", r.output);
    assert_eq!(r.output.lines().count(), 1, "{}", r.output);
    assert_eq!(
        d.elements("staff_v4"),
        Some(ips(&["10.10.0.5", "10.10.0.6"]))
    );
    // A disconnect still ends access, and says so loudly.
    let r = d.hook(&disconnect_vars("staff", "c1", "10.10.0.5", "fd10::5"));
    assert_eq!(r.code, 0, "{}", r.output);
    assert_eq!(d.elements("staff_v4"), Some(ips(&["10.10.0.6"])));
    assert_eq!(d.elements("staff_v6"), Some(ips(&[])));
    assert!(d.log().contains("session store"), "{}", d.log());

    // Space comes back: the next write also records the earlier disconnect, so a
    // restart does not bring c1 back.
    mount.free();
    assert_eq!(
        d.hook(&connect_vars("staff", "c3", "10.10.0.7", "")).code,
        0
    );
    d.restart();
    assert_eq!(
        d.elements("staff_v4"),
        Some(ips(&["10.10.0.6", "10.10.0.7"]))
    );
    d.kill();
    drop(mount);
}
