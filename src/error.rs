//! Errors shared across modules and the hook's exit codes.
//!
//! Each module has its own `thiserror` enum; this file holds what crosses modules.

/// Exit codes of `vpnfw` (documented in README.md).
pub mod exit {
    /// Success: the daemon confirmed the change (or that none was needed).
    pub const OK: i32 = 0;
    /// Bad input: a `VPN_*` variable is missing or invalid, or bad usage.
    pub const BAD_INPUT: i32 = 2;
    /// The daemon refused the event (address outside the profile, peer not allowed, …).
    pub const REFUSED: i32 = 3;
    /// The daemon could not be reached or did not answer in time.
    pub const UNREACHABLE: i32 = 4;
    /// The daemon failed to apply the event (kernel or store error).
    pub const FAILED: i32 = 5;
    /// `vpnfw check` found a problem, or a command failed for another reason.
    pub const PROBLEM: i32 = 1;
}
