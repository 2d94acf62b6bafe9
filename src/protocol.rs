//! The daemon socket protocol: one JSON request line, one JSON response line.
//!
//! Both sides use these types, so they cannot disagree. The decoder bounds the size
//! and rejects unknown fields and messages.

use serde::{Deserialize, Serialize};

use crate::event::Event;

/// Largest request the daemon reads, in bytes, newline included.
pub const MAX_REQUEST: usize = 64 * 1024;

/// Protocol version carried in every request.
pub const VERSION: u32 = 1;

/// One request from a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Must equal [`VERSION`].
    pub v: u32,
    pub op: Op,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Op {
    /// A hook event: connect or disconnect.
    Event(Event),
    /// Live sessions and set sizes.
    Status,
    /// Reconcile the kernel against the live sessions now.
    Reconcile {
        /// Report what would change, change nothing.
        dry_run: bool,
    },
}

/// The daemon's one answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase", deny_unknown_fields)]
pub enum Response {
    /// The change is in the kernel and in the store (or nothing needed changing).
    Applied { detail: String },
    /// The request is not allowed (policy, prefix, peer); nothing changed.
    Refused { reason: String },
    /// The daemon could not apply the request (kernel, store); nothing changed.
    Failed { reason: String },
    /// Answer to [`Op::Status`].
    Status(StatusReport),
    /// Answer to [`Op::Reconcile`].
    Reconciled(ReconcileReport),
}

/// What a reconcile changed (or, for a dry run, would change).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReconcileReport {
    pub dry_run: bool,
    pub summary: crate::reconcile::Summary,
    /// The first 1000 adds and deletes; `summary` has the counts.
    pub adds: Vec<crate::reconcile::ElemRef>,
    pub dels: Vec<crate::reconcile::ElemRef>,
}

/// Live sessions and the size of every managed set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The first sessions in (profile, connection id) order, at most 1000.
    pub sessions: Vec<crate::session::Session>,
    /// Live sessions in all.
    #[serde(default)]
    pub sessions_total: usize,
    pub sets: Vec<SetSize>,
    /// Netlink batches the daemon has sent since it started.
    pub netlink_batches: u64,
    /// Events it has answered since it started (applied, refused or failed).
    pub events: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetSize {
    pub set: String,
    /// `None` when the set does not exist in the kernel.
    pub elements: Option<usize>,
}

/// Why a request line could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("request larger than {MAX_REQUEST} bytes")]
    TooLarge,
    #[error("request is not valid JSON for this protocol: {0}")]
    Malformed(String),
    #[error("unsupported protocol version {0} (this daemon speaks {VERSION})")]
    Version(u32),
}

/// Decodes one request line (without or with its trailing newline).
pub fn decode_request(line: &[u8]) -> Result<Request, DecodeError> {
    if line.len() > MAX_REQUEST {
        return Err(DecodeError::TooLarge);
    }
    let req: Request = serde_json::from_slice(line)
        .map_err(|e| DecodeError::Malformed(one_line(&e.to_string())))?;
    if req.v != VERSION {
        return Err(DecodeError::Version(req.v));
    }
    Ok(req)
}

/// At most this many bytes of the JSON decoder's message reach the log and the reply.
const MESSAGE_MAX: usize = 240;

/// The JSON decoder's message as one short ASCII line. serde_json quotes unknown field
/// and variant names verbatim, so without this a peer could forge daemon log lines
/// (`"\n"`, bidi overrides) and make the daemon log and echo back 64 KiB (found by
/// the `protocol_decode` fuzz target, docs/fuzzing.md).
fn one_line(msg: &str) -> String {
    let mut out = String::new();
    for c in msg.chars() {
        if out.len() >= MESSAGE_MAX {
            out.push_str("...");
            break;
        }
        if c.is_ascii_graphic() || c == ' ' {
            out.push(c);
        } else {
            out.extend(c.escape_default());
        }
    }
    out
}

/// Encodes a message as one JSON line.
pub fn encode_line<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serializing these plain data types cannot fail: no maps with non-string keys.
    let mut out = serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec());
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_error(line: &[u8]) -> String {
        decode_request(line).unwrap_err().to_string()
    }

    #[test]
    fn malformed_request_error_is_one_bounded_ascii_line() {
        let cases: [Vec<u8>; 4] = [
            // The fuzz artifact: a tab in an unknown variant name.
            br#"{"op":{"\t""#.to_vec(),
            br#"{"v":1,"op":"st\natus"}"#.to_vec(),
            br#"{"v":1,"op":"\u202estatus","x":1}"#.to_vec(),
            format!(r#"{{"v":1,"{}":1}}"#, "x".repeat(60_000)).into_bytes(),
        ];
        for line in cases {
            let e = decode_error(&line);
            assert!(e.chars().all(|c| c.is_ascii_graphic() || c == ' '), "{e:?}");
            assert!(e.len() < 400, "{} bytes", e.len());
        }
    }

    #[test]
    fn malformed_request_error_still_says_what_is_wrong() {
        assert_eq!(
            decode_error(br#"{"v":1,"op":"stat\nus"}"#),
            "request is not valid JSON for this protocol: unknown variant `stat\\nus`, \
             expected one of `event`, `status`, `reconcile` at line 1 column 22"
        );
        let e = decode_error(br#"{"v":1,"op":{"event":{"kind":"connect"}}}"#);
        assert!(e.contains("missing field `profile`"), "{e}");
    }

    #[test]
    fn requests_round_trip() {
        for line in [
            &br#"{"v":1,"op":"status"}"#[..],
            br#"{"v":1,"op":{"reconcile":{"dry_run":true}}}"#,
        ] {
            let req = decode_request(line).unwrap();
            assert_eq!(decode_request(&encode_line(&req)).unwrap(), req);
        }
        assert!(matches!(
            decode_request(br#"{"v":2,"op":"status"}"#),
            Err(DecodeError::Version(2))
        ));
        assert!(matches!(
            decode_request(&vec![b' '; MAX_REQUEST + 1]),
            Err(DecodeError::TooLarge)
        ));
    }
}
