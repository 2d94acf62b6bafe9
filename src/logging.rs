//! Where the daemon's and admin commands' logs go: journald with structured fields
//! when systemd connected stderr to the journal, plain lines on stderr otherwise.
//!
//! systemd sets `JOURNAL_STREAM=<device>:<inode>` for a service whose stderr is the
//! journal; it is trusted only while stderr is still that stream (a child of the
//! service with stderr redirected inherits the variable, not the stream). Under
//! journald every tracing field becomes a journal field: `journalctl -u vpnfw
//! PROFILE=staff`, `CONN_ID=…`, `RESULT=…`, `US=…`.

use std::os::fd::AsFd;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the global subscriber; the level comes from `VPNFW_LOG` (default info).
pub fn init() {
    let filter = || EnvFilter::try_from_env("VPNFW_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let journal = std::env::var("JOURNAL_STREAM")
        .ok()
        .is_some_and(|v| stderr_is(&v));
    if journal {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("vpnfw".into());
                tracing_subscriber::registry()
                    .with(filter())
                    .with(layer)
                    .init();
                return;
            }
            Err(e) => eprintln!("vpnfw: cannot open the journal socket ({e}); logging to stderr"),
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false);
    if journal {
        // The journal stamps each line itself.
        builder.without_time().init();
    } else {
        builder.init();
    }
}

/// Whether `JOURNAL_STREAM`'s value names the stream stderr is connected to.
fn stderr_is(journal_stream: &str) -> bool {
    match nix::sys::stat::fstat(std::io::stderr().as_fd()) {
        Ok(st) => names_stream(journal_stream, st.st_dev, st.st_ino),
        Err(_) => false,
    }
}

/// `<device>:<inode>` in decimal, as systemd writes it.
fn names_stream(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.split_once(':') else {
        return false;
    };
    d.parse::<u64>().ok() == Some(dev) && i.parse::<u64>().ok() == Some(ino)
}

#[cfg(test)]
mod tests {
    use super::names_stream;

    #[test]
    fn journal_stream_must_name_this_device_and_inode() {
        assert!(names_stream("8:123456", 8, 123456));
        assert!(!names_stream("8:123456", 8, 123457), "another inode");
        assert!(!names_stream("9:123456", 8, 123456), "another device");
        for bad in ["", "8", "8:", ":1", "8:x", "x:1", "8:1:2", " 8:1", "-8:1"] {
            assert!(
                !names_stream(bad, 8, 1),
                "{bad:?} is not a device:inode pair"
            );
        }
    }
}
