//! The hook: an unprivileged, short-lived process that sends one request to the
//! daemon and exits 0 only when the daemon confirms the change is in the kernel and in
//! the store. It never opens netlink.
