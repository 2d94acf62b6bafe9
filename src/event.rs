//! `VPN_*` environment → typed [`Event`], or an error that names the variable.
//!
//! Pure: no I/O, so it can be unit-tested and fuzzed exhaustively. The same
//! validating constructors are used by the daemon when it decodes a request, so a
//! value that did not come through the hook is checked just as strictly.

use std::ffi::OsString;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// `VPN_EVENT`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Connect,
    Disconnect,
}

/// `VPN_PROTO`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    OpenVpn,
    WireGuard,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::OpenVpn => "openvpn",
            Proto::WireGuard => "wireguard",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `VPN_PROFILE_ID`: `[a-z0-9-]+`, not all digits, bounded length.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProfileId(String);

/// `VPN_CONNECTION_ID`: OpenVPN certificate CN or WireGuard base64 public key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConnectionId(String);

/// `VPN_USER_ID`: any printable string, bounded length.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

/// A validated hook invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub profile: ProfileId,
    pub conn_id: ConnectionId,
    pub user_id: UserId,
    pub proto: Proto,
    pub ip4: Option<Ipv4Addr>,
    pub ip6: Option<Ipv6Addr>,
}

/// Why the environment is not a valid event. Displays as one line that names the
/// variable and the problem, never echoing more than a short escaped excerpt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {problem}")]
pub struct EventError {
    pub var: &'static str,
    pub problem: String,
}

impl Event {
    /// Parses the process environment (`std::env::vars_os()`).
    pub fn from_env<I>(vars: I) -> Result<Event, EventError>
    where
        I: IntoIterator<Item = (OsString, OsString)>,
    {
        let _ = vars;
        todo!()
    }
}

macro_rules! validated_string {
    ($ty:ident, $var:literal, $check:path) => {
        impl $ty {
            /// Validates `s` as the value of the named variable.
            pub fn parse(s: &str) -> Result<$ty, EventError> {
                $check(s).map_err(|problem| EventError { var: $var, problem })?;
                Ok($ty(s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $ty {
            type Error = EventError;
            fn try_from(s: String) -> Result<$ty, EventError> {
                $check(&s).map_err(|problem| EventError { var: $var, problem })?;
                Ok($ty(s))
            }
        }

        impl From<$ty> for String {
            fn from(v: $ty) -> String {
                v.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

validated_string!(ProfileId, "VPN_PROFILE_ID", check_profile_id);
validated_string!(ConnectionId, "VPN_CONNECTION_ID", check_connection_id);
validated_string!(UserId, "VPN_USER_ID", check_user_id);

fn check_profile_id(s: &str) -> Result<(), String> {
    let _ = s;
    todo!()
}

fn check_connection_id(s: &str) -> Result<(), String> {
    let _ = s;
    todo!()
}

fn check_user_id(s: &str) -> Result<(), String> {
    let _ = s;
    todo!()
}
