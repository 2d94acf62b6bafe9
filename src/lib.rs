//! vpnfw: an nftables session manager for eduVPN / Let's Connect! VPN servers.
//!
//! Data flows one way through the modules:
//! `event` (env → typed event) → `client` (one request on the socket) → `daemon`
//! (peer check, coalescing writer) → `store` (SQLite) + `nft` (netlink) →
//! `reconcile` (pure diff) → `config`, `error`.

pub mod client;
pub mod config;
pub mod daemon;
pub mod error;
pub mod event;
pub mod logging;
pub mod metrics;
pub mod nft;
pub mod paths;
pub mod portal;
pub mod protocol;
pub mod reconcile;
pub mod ruleset;
pub mod session;
pub mod store;
