//! Directories vpnfw creates for its files (store, socket), with deliberate modes.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

/// Creates the parent directory of `file` with `mode` when it does not exist yet.
/// An existing directory keeps its mode: packaging (systemd's StateDirectory=,
/// RuntimeDirectory=) owns it then.
pub fn create_parent(file: &Path, mode: u32) -> io::Result<()> {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.exists() => {
            fs::DirBuilder::new().recursive(true).mode(mode).create(dir)
        }
        _ => Ok(()),
    }
}
