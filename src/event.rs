//! `VPN_*` environment → typed [`Event`], or an error that names the variable.
//!
//! Pure: no I/O, so it can be unit-tested and fuzzed exhaustively. The same
//! validating constructors are used by the daemon when it decodes a request, so a
//! value that did not come through the hook is checked just as strictly.

use std::ffi::OsString;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::ffi::OsStrExt;

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
        f.pad(self.as_str())
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
///
/// The empty value is [`UserId::unknown`]: a disconnect whose `VPN_USER_ID` was not
/// set. The hook and the daemon both refuse it on a connect ([`Event::check`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

/// A validated hook invocation.
///
/// Decoding (serde) runs the same checks as [`Event::from_env`], field by field and
/// across fields ([`Event::check`]), so the daemon never sees an event the hook would
/// have refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "EventWire")]
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

/// Names the two address variables when neither is usable.
const BOTH_IPS: &str = "VPN_IP_FOUR/VPN_IP_SIX";

/// The variables the hook reads, as they appear in the environment. Every other
/// variable (unknown `VPN_*` ones included, and the optional `VPN_ORIGINATING_IP`,
/// `VPN_BYTES_*`, `VPN_GEO_IP_*`, `VPN_NODE_*`) is ignored, whatever its content.
#[derive(Default)]
struct RawEnv {
    event: Option<OsString>,
    user: Option<OsString>,
    profile: Option<OsString>,
    conn: Option<OsString>,
    ip4: Option<OsString>,
    ip6: Option<OsString>,
    proto: Option<OsString>,
}

impl RawEnv {
    fn slot(&mut self, name: &[u8]) -> Option<(&'static str, &mut Option<OsString>)> {
        Some(match name {
            b"VPN_EVENT" => ("VPN_EVENT", &mut self.event),
            b"VPN_USER_ID" => ("VPN_USER_ID", &mut self.user),
            b"VPN_PROFILE_ID" => ("VPN_PROFILE_ID", &mut self.profile),
            b"VPN_CONNECTION_ID" => ("VPN_CONNECTION_ID", &mut self.conn),
            b"VPN_IP_FOUR" => ("VPN_IP_FOUR", &mut self.ip4),
            b"VPN_IP_SIX" => ("VPN_IP_SIX", &mut self.ip6),
            b"VPN_PROTO" => ("VPN_PROTO", &mut self.proto),
            _ => return None,
        })
    }
}

/// The value of a variable as UTF-8, or `None` when it is not set.
fn utf8(var: &'static str, v: Option<OsString>) -> Result<Option<String>, EventError> {
    v.map(|v| {
        v.into_string().map_err(|_| EventError {
            var,
            problem: "is not valid UTF-8".into(),
        })
    })
    .transpose()
}

fn required(var: &'static str, v: Option<OsString>) -> Result<String, EventError> {
    utf8(var, v)?.ok_or_else(|| EventError {
        var,
        problem: "is not set".into(),
    })
}

fn err(var: &'static str) -> impl FnOnce(String) -> EventError {
    move |problem| EventError { var, problem }
}

impl Event {
    /// Parses the process environment (`std::env::vars_os()`).
    ///
    /// A variable the hook reads that appears twice is an error: the kernel passes
    /// duplicates through, and which copy a program sees differs between libraries.
    /// An empty `VPN_IP_FOUR` or `VPN_IP_SIX` means "no address of that family"; at
    /// least one must be given. `VPN_USER_ID` may be missing on a disconnect only,
    /// and is then [`UserId::unknown`].
    pub fn from_env<I>(vars: I) -> Result<Event, EventError>
    where
        I: IntoIterator<Item = (OsString, OsString)>,
    {
        let mut raw = RawEnv::default();
        for (name, value) in vars {
            if let Some((var, slot)) = raw.slot(name.as_bytes()) {
                if slot.is_some() {
                    return Err(EventError {
                        var,
                        problem: "is set more than once".into(),
                    });
                }
                *slot = Some(value);
            }
        }

        let kind = parse_kind(&required("VPN_EVENT", raw.event)?).map_err(err("VPN_EVENT"))?;
        let profile = ProfileId::try_from(required("VPN_PROFILE_ID", raw.profile)?)?;
        let conn_id = ConnectionId::try_from(required("VPN_CONNECTION_ID", raw.conn)?)?;
        let user_id = match utf8("VPN_USER_ID", raw.user)? {
            Some(u) if u.is_empty() => {
                return Err(EventError {
                    var: "VPN_USER_ID",
                    problem: "is empty".into(),
                });
            }
            Some(u) => UserId::try_from(u)?,
            None if kind == EventKind::Disconnect => UserId::unknown(),
            None => {
                return Err(EventError {
                    var: "VPN_USER_ID",
                    problem: "is not set (required on connect)".into(),
                });
            }
        };
        let ip4 = match utf8("VPN_IP_FOUR", raw.ip4)? {
            Some(s) if !s.is_empty() => Some(parse_ip4(&s).map_err(err("VPN_IP_FOUR"))?),
            _ => None,
        };
        let ip6 = match utf8("VPN_IP_SIX", raw.ip6)? {
            Some(s) if !s.is_empty() => Some(parse_ip6(&s).map_err(err("VPN_IP_SIX"))?),
            _ => None,
        };
        let proto = match utf8("VPN_PROTO", raw.proto)? {
            Some(s) => parse_proto(&s).map_err(err("VPN_PROTO"))?,
            // Portals before 3.2 do not send VPN_PROTO.
            None if looks_like_wireguard_key(conn_id.as_str()) => Proto::WireGuard,
            None => Proto::OpenVpn,
        };

        let event = Event {
            kind,
            profile,
            conn_id,
            user_id,
            proto,
            ip4,
            ip6,
        };
        event.check()?;
        Ok(event)
    }

    /// The rules that span fields or that typed addresses do not carry: at least one
    /// address, every address usable by a VPN client, a user id on connect. The string
    /// newtypes are valid by construction.
    pub fn check(&self) -> Result<(), EventError> {
        if let Some(a) = self.ip4 {
            check_ip4(a).map_err(err("VPN_IP_FOUR"))?;
        }
        if let Some(a) = self.ip6 {
            check_ip6(a).map_err(err("VPN_IP_SIX"))?;
        }
        if self.ip4.is_none() && self.ip6.is_none() {
            return Err(EventError {
                var: BOTH_IPS,
                problem: "both empty or not set; at least one address is required".into(),
            });
        }
        if self.kind == EventKind::Connect && self.user_id.is_unknown() {
            return Err(EventError {
                var: "VPN_USER_ID",
                problem: "is not set (required on connect)".into(),
            });
        }
        Ok(())
    }
}

/// [`Event`] as decoded, before [`Event::check`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventWire {
    kind: EventKind,
    profile: ProfileId,
    conn_id: ConnectionId,
    user_id: UserId,
    proto: Proto,
    ip4: Option<Ipv4Addr>,
    ip6: Option<Ipv6Addr>,
}

impl TryFrom<EventWire> for Event {
    type Error = EventError;
    fn try_from(w: EventWire) -> Result<Event, EventError> {
        let event = Event {
            kind: w.kind,
            profile: w.profile,
            conn_id: w.conn_id,
            user_id: w.user_id,
            proto: w.proto,
            ip4: w.ip4,
            ip6: w.ip6,
        };
        event.check()?;
        Ok(event)
    }
}

impl UserId {
    /// The user of a disconnect whose `VPN_USER_ID` was not set.
    pub fn unknown() -> UserId {
        UserId(String::new())
    }

    pub fn is_unknown(&self) -> bool {
        self.0.is_empty()
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
                f.pad(&self.0)
            }
        }
    };
}

validated_string!(ProfileId, "VPN_PROFILE_ID", check_profile_id);
validated_string!(ConnectionId, "VPN_CONNECTION_ID", check_connection_id);
validated_string!(UserId, "VPN_USER_ID", check_user_id);

/// At most this many characters of a rejected value appear in an error message.
const EXCERPT_CHARS: usize = 32;

/// A short, quoted, ASCII-only excerpt of a hostile value, safe for one log line:
/// quotes, backslashes, control and non-ASCII characters are escaped, and a long
/// value is cut (its length is given instead).
pub fn excerpt(s: &str) -> String {
    let mut out = String::from("\"");
    let mut chars = s.chars();
    for c in chars.by_ref().take(EXCERPT_CHARS) {
        out.extend(c.escape_default());
    }
    out.push('"');
    if chars.next().is_some() {
        out.push_str(&format!("… ({} bytes)", s.len()));
    }
    out
}

/// `VPN_EVENT`: exactly `C` or `D`.
fn parse_kind(s: &str) -> Result<EventKind, String> {
    match s {
        "C" => Ok(EventKind::Connect),
        "D" => Ok(EventKind::Disconnect),
        "" => Err("is empty; expected C (connect) or D (disconnect)".into()),
        _ => Err(format!(
            "is {}; expected C (connect) or D (disconnect)",
            excerpt(s)
        )),
    }
}

/// `VPN_PROTO`: `openvpn` or `wireguard`, exactly as the portal writes them.
fn parse_proto(s: &str) -> Result<Proto, String> {
    match s {
        "openvpn" => Ok(Proto::OpenVpn),
        "wireguard" => Ok(Proto::WireGuard),
        _ => Err(format!("is {}; expected openvpn or wireguard", excerpt(s))),
    }
}

/// A WireGuard public key: 32 bytes in standard base64 (44 characters, one `=`).
/// Used only to guess the protocol when an old portal does not send `VPN_PROTO`;
/// OpenVPN CNs from the portal are hex, so they never look like this.
fn looks_like_wireguard_key(s: &str) -> bool {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    if b.len() != 44 || b[43] != b'=' {
        return false;
    }
    let mut sextets = b[..43].iter().map(|c| B64.iter().position(|x| x == c));
    if sextets.clone().any(|x| x.is_none()) {
        return false;
    }
    // 43 characters carry 258 bits; a canonical encoding of 32 bytes leaves the
    // last 2 bits zero.
    matches!(sextets.nth(42), Some(Some(last)) if last & 0b11 == 0)
}

const PROFILE_ID_MAX: usize = 64;
const CONNECTION_ID_MAX: usize = 128;
const USER_ID_MAX: usize = 255;

/// `[a-z0-9-]{1,64}`, not all digits (the portal's rule). With `_v4`/`_v6`
/// appended it is a set name that cannot name another table or set.
fn check_profile_id(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("is empty".into());
    }
    if s.len() > PROFILE_ID_MAX {
        return Err(format!(
            "is {} bytes long; at most {PROFILE_ID_MAX} allowed",
            s.len()
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "{} contains {}; only a-z, 0-9 and - are allowed",
            excerpt(s),
            excerpt(c.encode_utf8(&mut [0; 4]))
        ));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{} is all digits; the portal never sends that",
            excerpt(s)
        ));
    }
    Ok(())
}

/// 1..=128 characters of `[A-Za-z0-9+/=._:@-]`: an OpenVPN CN (hex from the portal)
/// or a WireGuard public key (base64).
fn check_connection_id(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("is empty".into());
    }
    if s.len() > CONNECTION_ID_MAX {
        return Err(format!(
            "is {} bytes long; at most {CONNECTION_ID_MAX} allowed",
            s.len()
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "+/=._:@-".contains(*c)))
    {
        return Err(format!(
            "{} contains {}; only A-Z, a-z, 0-9 and + / = . _ : @ - are allowed",
            excerpt(s),
            excerpt(c.encode_utf8(&mut [0; 4]))
        ));
    }
    Ok(())
}

/// At most 255 bytes of UTF-8 without control characters. The value goes into SQL
/// parameters and nft element comments, never a shell, so quotes are fine (O'Brien).
/// Line and paragraph separators and bidi overrides are refused too: they can make
/// one log line look like two, or read backwards. Empty is [`UserId::unknown`].
fn check_user_id(s: &str) -> Result<(), String> {
    if s.len() > USER_ID_MAX {
        return Err(format!(
            "is {} bytes long; at most {USER_ID_MAX} allowed",
            s.len()
        ));
    }
    if let Some(c) = s.chars().find(|c| {
        c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }) {
        return Err(format!(
            "{} contains {}; control, line-separator and bidi-override characters are not allowed",
            excerpt(s),
            excerpt(c.encode_utf8(&mut [0; 4]))
        ));
    }
    Ok(())
}

/// `VPN_IP_FOUR`: a bare IPv4 address in dotted-quad form, usable by a client.
pub fn parse_ip4(s: &str) -> Result<Ipv4Addr, String> {
    if s.contains('/') {
        return Err(format!(
            "{}: a prefix length is not allowed; expected a bare IPv4 address",
            excerpt(s)
        ));
    }
    // `Ipv4Addr` refuses leading zeros ("010.0.0.1" is octal to inet_aton); say why.
    let quad = s.split('.').collect::<Vec<_>>();
    if quad.len() == 4
        && quad
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && quad.iter().any(|p| p.len() > 1 && p.starts_with('0'))
    {
        return Err(format!(
            "{}: leading zeros are not allowed (ambiguous: octal to some parsers)",
            excerpt(s)
        ));
    }
    match s.parse::<Ipv4Addr>() {
        Ok(a) => check_ip4(a).map(|()| a),
        Err(_) if s.parse::<Ipv6Addr>().is_ok() || s.contains(':') => Err(format!(
            "{} is an IPv6 address (wrong family); it belongs in VPN_IP_SIX",
            excerpt(s)
        )),
        Err(_) => Err(format!("{} is not an IPv4 address", excerpt(s))),
    }
}

/// Refuses IPv4 addresses no VPN client is ever given.
pub fn check_ip4(a: Ipv4Addr) -> Result<(), String> {
    let what = if a.is_unspecified() {
        "unspecified"
    } else if a.is_broadcast() {
        "the broadcast address"
    } else if a.is_multicast() {
        "multicast"
    } else if a.is_loopback() {
        "loopback"
    } else {
        return Ok(());
    };
    Err(format!("{a} is {what}; not a VPN client address"))
}

/// `VPN_IP_SIX`: a bare IPv6 address, no zone id, no embedded IPv4 forms.
pub fn parse_ip6(s: &str) -> Result<Ipv6Addr, String> {
    if s.contains('/') {
        return Err(format!(
            "{}: a prefix length is not allowed; expected a bare IPv6 address",
            excerpt(s)
        ));
    }
    if s.contains('%') {
        return Err(format!(
            "{}: a zone id is not allowed; expected a bare IPv6 address",
            excerpt(s)
        ));
    }
    match s.parse::<Ipv6Addr>() {
        Ok(a) => check_ip6(a).map(|()| a),
        Err(_) if s.parse::<Ipv4Addr>().is_ok() => Err(format!(
            "{} is an IPv4 address (wrong family); it belongs in VPN_IP_FOUR",
            excerpt(s)
        )),
        Err(_) => Err(format!("{} is not an IPv6 address", excerpt(s))),
    }
}

/// Refuses IPv6 addresses no VPN client is ever given, and the IPv4-mapped and
/// IPv4-compatible forms, which would let one IPv4 address hide in the IPv6 set.
pub fn check_ip6(a: Ipv6Addr) -> Result<(), String> {
    let what = if a.is_unspecified() {
        "unspecified"
    } else if a.is_loopback() {
        "loopback"
    } else if a.is_multicast() {
        "multicast"
    } else if a.to_ipv4_mapped().is_some() {
        "IPv4-mapped (::ffff:a.b.c.d)"
    } else if a.segments()[..6] == [0; 6] {
        "IPv4-compatible (::a.b.c.d)"
    } else {
        return Ok(());
    };
    Err(format!("{a} is {what}; not a VPN client address"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    /// An environment as `std::env::vars_os()` yields it.
    type Env = Vec<(OsString, OsString)>;

    const WG_KEY: &str = "YmFzZTY0IGlzIG5vdCBlbmNyeXB0aW9uLCBvaysrKys=";
    const OVPN_CN: &str = "07d1ccc455a21c2d5ac6068d4af727ca";

    /// A connect exactly as vpn-user-portal 3.7 sends it for an OpenVPN client.
    fn portal_connect() -> Env {
        [
            ("VPN_EVENT", "C"),
            ("VPN_USER_ID", "foo@example.org"),
            ("VPN_PROFILE_ID", "staff"),
            ("VPN_CONNECTION_ID", OVPN_CN),
            ("VPN_IP_FOUR", "10.42.42.2"),
            ("VPN_IP_SIX", "fd42::2"),
            ("VPN_PROTO", "openvpn"),
            ("VPN_ORIGINATING_IP", "192.0.2.7"),
            ("VPN_GEO_IP_CC", "NL"),
            ("VPN_GEO_IP_URI", "geo:52.0,5.1"),
            ("VPN_NODE_NUMBER", "0"),
            ("VPN_NODE_URL", "http://localhost:41194"),
            ("VPN_NODE_HOST_NAME", "vpn.example.org"),
        ]
        .into_iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect()
    }

    /// `portal_connect()` with `var` set to `value` (replacing it, or added), or removed.
    fn with(var: &str, value: Option<OsString>) -> Env {
        let mut env = portal_connect();
        env.retain(|(k, _)| k != var);
        if let Some(v) = value {
            env.push((var.into(), v));
        }
        env
    }

    fn set(var: &str, value: &str) -> Env {
        with(var, Some(value.into()))
    }

    fn unset(var: &str) -> Env {
        with(var, None)
    }

    fn edits(changes: &[(&str, Option<&str>)]) -> Env {
        let mut env = portal_connect();
        for (var, value) in changes {
            env.retain(|(k, _)| k != var);
            if let Some(v) = value {
                env.push((var.into(), v.into()));
            }
        }
        env
    }

    #[test]
    fn portal_connect_parses() {
        let e = Event::from_env(portal_connect()).unwrap();
        assert_eq!(e.kind, EventKind::Connect);
        assert_eq!(e.profile.as_str(), "staff");
        assert_eq!(e.conn_id.as_str(), OVPN_CN);
        assert_eq!(e.user_id.as_str(), "foo@example.org");
        assert_eq!(e.proto, Proto::OpenVpn);
        assert_eq!(e.ip4, Some(Ipv4Addr::new(10, 42, 42, 2)));
        assert_eq!(e.ip6, Some("fd42::2".parse().unwrap()));
    }

    #[test]
    fn good_environments() {
        let big = "x".repeat(1 << 20);
        let cases: Vec<(&str, Env)> = vec![
            ("disconnect", set("VPN_EVENT", "D")),
            (
                "disconnect without user id",
                edits(&[("VPN_EVENT", Some("D")), ("VPN_USER_ID", None)]),
            ),
            (
                "quote in user id",
                set("VPN_USER_ID", "o'brien@example.org"),
            ),
            (
                "user id with spaces and unicode",
                set("VPN_USER_ID", "José Müller \"jm\""),
            ),
            ("user id of 255 bytes", set("VPN_USER_ID", &"u".repeat(255))),
            (
                "opaque SAML id",
                set(
                    "VPN_USER_ID",
                    "https://idp.example.org!https://vpn.example.org!AbC/dEf+==",
                ),
            ),
            ("only IPv4", set("VPN_IP_SIX", "")),
            ("only IPv6", set("VPN_IP_FOUR", "")),
            ("no IPv6 variable", unset("VPN_IP_SIX")),
            (
                "profile with dash and digits",
                set("VPN_PROFILE_ID", "staff-2"),
            ),
            ("profile starting with digit", set("VPN_PROFILE_ID", "2fa")),
            (
                "profile of 64 chars",
                set("VPN_PROFILE_ID", &"p".repeat(64)),
            ),
            (
                "connection id of 128 chars",
                set("VPN_CONNECTION_ID", &"c".repeat(128)),
            ),
            ("wireguard key", set("VPN_CONNECTION_ID", WG_KEY)),
            ("wireguard proto", set("VPN_PROTO", "wireguard")),
            ("no VPN_PROTO (portal < 3.2)", unset("VPN_PROTO")),
            ("full IPv6", set("VPN_IP_SIX", "fd42:0:0:0:0:0:0:2")),
            ("uppercase IPv6", set("VPN_IP_SIX", "FD42::ABCD")),
            ("global IPv6", set("VPN_IP_SIX", "2001:db8:42::1234")),
            (
                "unknown VPN_ variable",
                set("VPN_SOMETHING_NEW", "x; rm -rf /"),
            ),
            (
                "hostile optional variable",
                set("VPN_ORIGINATING_IP", "$(reboot)"),
            ),
            ("huge optional variable", set("VPN_BYTES_IN", &big)),
            (
                "geo uri with newline",
                set("VPN_GEO_IP_URI", "geo:1,2\nVPN_EVENT=D"),
            ),
            ("duplicate optional variable", {
                let mut e = portal_connect();
                e.push(("VPN_NODE_NUMBER".into(), "1".into()));
                e
            }),
            (
                "non-UTF-8 optional variable",
                with("VPN_NODE_URL", Some(OsString::from_vec(vec![0xff]))),
            ),
            (
                "non-UTF-8 foreign variable",
                with("HOME", Some(OsString::from_vec(vec![0xfe]))),
            ),
            ("lowercase lookalike name ignored", set("vpn_event", "X")),
        ];
        for (name, env) in cases {
            if let Err(e) = Event::from_env(env) {
                panic!("{name}: {e}");
            }
        }
    }

    /// (case, environment, the variable the error must name)
    fn bad_cases() -> Vec<(String, Env, &'static str)> {
        let big = "a".repeat(1 << 20);
        let mut cases: Vec<(String, Env, &'static str)> = vec![];
        let mut add = |name: &str, env, var| cases.push((name.to_owned(), env, var));

        // VPN_EVENT
        add("event unset", unset("VPN_EVENT"), "VPN_EVENT");
        add("event empty", set("VPN_EVENT", ""), "VPN_EVENT");
        add("event lowercase", set("VPN_EVENT", "c"), "VPN_EVENT");
        add("event word", set("VPN_EVENT", "connect"), "VPN_EVENT");
        add("event with newline", set("VPN_EVENT", "C\n"), "VPN_EVENT");
        add("event with space", set("VPN_EVENT", " C"), "VPN_EVENT");
        add("event huge", set("VPN_EVENT", &big), "VPN_EVENT");

        // VPN_PROFILE_ID
        for p in [
            "",
            "123",
            "0",
            "Staff",
            "STAFF",
            "staff_v4",
            "staff_v6",
            "../x",
            "a b",
            "a.b",
            "a/b",
            "a;b",
            "a}b",
            "a'b",
            "a\"b",
            "$(id)",
            "a\nb",
            "a\tb",
            "ümlaut",
            "a*",
            "vpnfw staff",
            "@staff_v4",
        ] {
            add(
                &format!("profile {p:?}"),
                set("VPN_PROFILE_ID", p),
                "VPN_PROFILE_ID",
            );
        }
        add(
            "profile 65 chars",
            set("VPN_PROFILE_ID", &"p".repeat(65)),
            "VPN_PROFILE_ID",
        );
        add(
            "profile huge",
            set("VPN_PROFILE_ID", &big),
            "VPN_PROFILE_ID",
        );
        add("profile unset", unset("VPN_PROFILE_ID"), "VPN_PROFILE_ID");

        // VPN_CONNECTION_ID
        for c in [
            "", "a b", "a;b", "a}b", "a'b", "a\"b", "$(id)", "a\nb", "a,b", "é", "a\\b",
        ] {
            add(
                &format!("connection id {c:?}"),
                set("VPN_CONNECTION_ID", c),
                "VPN_CONNECTION_ID",
            );
        }
        add(
            "connection id 129 chars",
            set("VPN_CONNECTION_ID", &"c".repeat(129)),
            "VPN_CONNECTION_ID",
        );
        add(
            "connection id huge",
            set("VPN_CONNECTION_ID", &big),
            "VPN_CONNECTION_ID",
        );
        add(
            "connection id unset",
            unset("VPN_CONNECTION_ID"),
            "VPN_CONNECTION_ID",
        );

        // VPN_USER_ID
        for u in [
            "",
            "a\nb",
            "a\rb",
            "a\0b",
            "a\x1bb",
            "a\x7fb",
            "a\u{85}b",
            "a\u{2028}b",
            "a\u{202e}b",
            "a\tb",
        ] {
            add(
                &format!("user id {u:?}"),
                set("VPN_USER_ID", u),
                "VPN_USER_ID",
            );
        }
        add(
            "user id 256 bytes",
            set("VPN_USER_ID", &"u".repeat(256)),
            "VPN_USER_ID",
        );
        add(
            "user id 128 two-byte chars",
            set("VPN_USER_ID", &"é".repeat(128)),
            "VPN_USER_ID",
        );
        add("user id huge", set("VPN_USER_ID", &big), "VPN_USER_ID");
        add(
            "user id unset on connect",
            unset("VPN_USER_ID"),
            "VPN_USER_ID",
        );
        add(
            "user id empty on disconnect",
            edits(&[("VPN_EVENT", Some("D")), ("VPN_USER_ID", Some(""))]),
            "VPN_USER_ID",
        );

        // VPN_IP_FOUR
        for a in [
            "10.42.42.2/32",
            "10.42.42.0/24",
            "010.42.42.2",
            "10.042.42.2",
            "10.42.42.02",
            "10.42.42",
            "10.42.42.256",
            "10.42.42.2.1",
            " 10.42.42.2",
            "10.42.42.2 ",
            "10.42.42.2\n",
            "10.42.42.2;id",
            "10.42.42.2'",
            "$(id)",
            "0x0a.0.0.1",
            "167772161",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "239.1.2.3",
            "127.0.0.1",
            "127.1.2.3",
            "fd42::2",
            "::ffff:10.42.42.2",
            "::",
        ] {
            add(&format!("ip4 {a:?}"), set("VPN_IP_FOUR", a), "VPN_IP_FOUR");
        }
        add("ip4 huge", set("VPN_IP_FOUR", &big), "VPN_IP_FOUR");

        // VPN_IP_SIX
        for a in [
            "fd42::2/128",
            "fd42::/64",
            "fe80::1%eth0",
            "fe80::1%25eth0",
            "::ffff:10.42.42.2",
            "::ffff:a2a:2a02",
            "::10.42.42.2",
            "::a2a:2a02",
            "::",
            "::1",
            "ff02::1",
            "ff0e::42",
            "10.42.42.2",
            "fd42::2::3",
            "fd42:::2",
            "fd42::g",
            "fd42::2;id",
            "fd42::2\n",
            "[fd42::2]",
            " fd42::2",
            "$(id)",
            "fd42::2'",
        ] {
            add(&format!("ip6 {a:?}"), set("VPN_IP_SIX", a), "VPN_IP_SIX");
        }
        add("ip6 huge", set("VPN_IP_SIX", &big), "VPN_IP_SIX");

        // Both addresses missing.
        add(
            "both addresses empty",
            edits(&[("VPN_IP_FOUR", Some("")), ("VPN_IP_SIX", Some(""))]),
            BOTH_IPS,
        );
        add(
            "both addresses unset",
            edits(&[("VPN_IP_FOUR", None), ("VPN_IP_SIX", None)]),
            BOTH_IPS,
        );
        add(
            "families swapped",
            edits(&[
                ("VPN_IP_FOUR", Some("fd42::2")),
                ("VPN_IP_SIX", Some("10.42.42.2")),
            ]),
            "VPN_IP_FOUR",
        );

        // VPN_PROTO
        for p in [
            "",
            "OpenVPN",
            "WireGuard",
            "wg",
            "ipsec",
            "openvpn\n",
            "openvpn;id",
        ] {
            add(&format!("proto {p:?}"), set("VPN_PROTO", p), "VPN_PROTO");
        }

        // Duplicates and non-UTF-8, for every variable the hook reads.
        for var in [
            "VPN_EVENT",
            "VPN_USER_ID",
            "VPN_PROFILE_ID",
            "VPN_CONNECTION_ID",
            "VPN_IP_FOUR",
            "VPN_IP_SIX",
            "VPN_PROTO",
        ] {
            let static_var = RawEnv::default()
                .slot(var.as_bytes())
                .map(|(v, _)| v)
                .unwrap();
            let mut dup = portal_connect();
            let first = dup.iter().find(|(k, _)| k == var).unwrap().clone();
            dup.push(first);
            add(&format!("{var} twice, same value"), dup, static_var);
            let mut dup = portal_connect();
            dup.insert(0, (var.into(), "D".into()));
            add(&format!("{var} twice, different values"), dup, static_var);
            add(
                &format!("{var} not UTF-8"),
                with(var, Some(OsString::from_vec(b"C\xff".to_vec()))),
                static_var,
            );
        }
        cases
    }

    #[test]
    fn bad_environments_name_the_variable() {
        for (name, env, var) in bad_cases() {
            match Event::from_env(env) {
                Ok(e) => panic!("{name}: accepted as {e:?}"),
                Err(e) => {
                    assert_eq!(e.var, var, "{name}: {e}");
                    let line = e.to_string();
                    assert!(line.starts_with(&format!("{var}: ")), "{name}: {line}");
                    assert!(
                        !line.contains('\n') && !line.contains('\r'),
                        "{name}: {line:?}"
                    );
                    assert!(line.len() < 300, "{name}: {} bytes", line.len());
                    assert!(line.is_ascii() || line.contains('…'), "{name}: {line}");
                }
            }
        }
    }

    #[test]
    fn error_messages_say_what_is_wrong() {
        let msg = |env| Event::from_env(env).unwrap_err().to_string();
        assert_eq!(
            msg(set("VPN_PROFILE_ID", "staff_v4")),
            r#"VPN_PROFILE_ID: "staff_v4" contains "_"; only a-z, 0-9 and - are allowed"#
        );
        assert!(msg(set("VPN_IP_FOUR", "10.0.0.1/32")).contains("prefix length"));
        assert!(msg(set("VPN_IP_FOUR", "010.0.0.1")).contains("leading zeros"));
        assert!(msg(set("VPN_IP_FOUR", "fd42::2")).contains("wrong family"));
        assert!(msg(set("VPN_IP_SIX", "10.0.0.1")).contains("wrong family"));
        assert!(msg(set("VPN_IP_SIX", "fe80::1%eth0")).contains("zone id"));
        assert!(msg(set("VPN_IP_SIX", "::ffff:10.0.0.1")).contains("IPv4-mapped"));
        assert!(msg(set("VPN_IP_SIX", "::10.0.0.1")).contains("IPv4-compatible"));
        assert!(msg(set("VPN_EVENT", "")).contains("empty"));
        assert!(msg(unset("VPN_EVENT")).contains("not set"));
        let huge = msg(set("VPN_EVENT", &"\n$(x)".repeat(200_000)));
        assert!(
            huge.ends_with("… (1000000 bytes); expected C (connect) or D (disconnect)"),
            "{huge}"
        );
        assert!(huge.contains(r#""\n$(x)\n$(x)"#), "{huge}");
    }

    #[test]
    fn disconnect_without_user_id_is_unknown_user() {
        let e = Event::from_env(edits(&[("VPN_EVENT", Some("D")), ("VPN_USER_ID", None)])).unwrap();
        assert!(e.user_id.is_unknown());
        assert_eq!(e.kind, EventKind::Disconnect);
    }

    #[test]
    fn empty_address_skips_that_family() {
        let e = Event::from_env(set("VPN_IP_SIX", "")).unwrap();
        assert_eq!((e.ip4.is_some(), e.ip6), (true, None));
        let e = Event::from_env(set("VPN_IP_FOUR", "")).unwrap();
        assert_eq!((e.ip4, e.ip6.is_some()), (None, true));
    }

    #[test]
    fn proto_is_inferred_from_the_connection_id() {
        let cases = [
            (WG_KEY, Proto::WireGuard),
            (
                "kWLQ7gbb1nBOK3PL2kEH1D0V2Mz1AvJTOy7ohIl2Sk8=",
                Proto::WireGuard,
            ),
            (OVPN_CN, Proto::OpenVpn),
            // 44 characters but not canonical base64 of 32 bytes.
            (
                "YmFzZTY0IGlzIG5vdCBlbmNyeXB0aW9uLCBvaysrKyt=",
                Proto::OpenVpn,
            ),
            (
                "YmFzZTY0IGlzIG5vdCBlbmNyeXB0aW9uLCBvaysrKys",
                Proto::OpenVpn,
            ),
            (
                "YmFzZTY0IGlzIG5vdCBlbmNyeXB0aW9uLCBvaysrKy==",
                Proto::OpenVpn,
            ),
            (
                "YmFzZTY0IGlzIG5vdCBlbmNyeXB0aW9uLCBvaysrKy.=",
                Proto::OpenVpn,
            ),
        ];
        for (conn, proto) in cases {
            let env = edits(&[("VPN_PROTO", None), ("VPN_CONNECTION_ID", Some(conn))]);
            assert_eq!(Event::from_env(env).unwrap().proto, proto, "{conn}");
        }
        // An explicit VPN_PROTO wins.
        let env = edits(&[
            ("VPN_PROTO", Some("openvpn")),
            ("VPN_CONNECTION_ID", Some(WG_KEY)),
        ]);
        assert_eq!(Event::from_env(env).unwrap().proto, Proto::OpenVpn);
    }

    #[test]
    fn decoding_revalidates() {
        let good = Event::from_env(portal_connect()).unwrap();
        let json = serde_json::to_value(&good).unwrap();
        assert_eq!(serde_json::from_value::<Event>(json.clone()).unwrap(), good);

        let bad = |field: &str, value: serde_json::Value| {
            let mut j = json.clone();
            j[field] = value;
            serde_json::from_value::<Event>(j).unwrap_err().to_string()
        };
        assert!(bad("profile", "staff_v4".into()).starts_with("VPN_PROFILE_ID: "));
        assert!(bad("profile", "".into()).starts_with("VPN_PROFILE_ID: "));
        assert!(bad("conn_id", "a b".into()).starts_with("VPN_CONNECTION_ID: "));
        assert!(bad("user_id", "a\nb".into()).starts_with("VPN_USER_ID: "));
        assert!(bad("user_id", "".into()).starts_with("VPN_USER_ID: "));
        assert!(bad("ip4", "127.0.0.1".into()).starts_with("VPN_IP_FOUR: "));
        assert!(bad("ip6", "::ffff:10.0.0.1".into()).starts_with("VPN_IP_SIX: "));
        assert!(bad("ip6", "ff02::1".into()).starts_with("VPN_IP_SIX: "));

        let mut j = json.clone();
        j["ip4"] = serde_json::Value::Null;
        j["ip6"] = serde_json::Value::Null;
        let e = serde_json::from_value::<Event>(j).unwrap_err().to_string();
        assert!(e.starts_with("VPN_IP_FOUR/VPN_IP_SIX: "), "{e}");

        let mut j = json.clone();
        j["extra"] = 1.into();
        assert!(serde_json::from_value::<Event>(j).is_err());

        // A disconnect with an unknown user round-trips.
        let d = Event::from_env(edits(&[("VPN_EVENT", Some("D")), ("VPN_USER_ID", None)])).unwrap();
        let back: Event = serde_json::from_value(serde_json::to_value(&d).unwrap()).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn newtypes_reject_what_from_env_rejects() {
        assert!(ProfileId::parse("staff").is_ok());
        assert_eq!(ProfileId::parse("1").unwrap_err().var, "VPN_PROFILE_ID");
        assert_eq!(
            ConnectionId::parse("").unwrap_err().var,
            "VPN_CONNECTION_ID"
        );
        assert_eq!(UserId::parse("a\u{7}").unwrap_err().var, "VPN_USER_ID");
        assert!(UserId::parse("").unwrap().is_unknown());
    }

    #[test]
    fn excerpt_is_short_single_line_ascii() {
        assert_eq!(excerpt("abc"), r#""abc""#);
        assert_eq!(excerpt("a\"b\n"), r#""a\"b\n""#);
        assert_eq!(excerpt("é"), r#""\u{e9}""#);
        let long = excerpt(&"x".repeat(1 << 20));
        assert_eq!(long, format!("\"{}\"… (1048576 bytes)", "x".repeat(32)));
    }
}
