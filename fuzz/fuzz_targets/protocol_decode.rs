//! The daemon's request decoder against arbitrary bytes from the socket.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vpnfw::protocol::{decode_request, encode_line};

fuzz_target!(|data: &[u8]| {
    match decode_request(data) {
        Ok(request) => {
            // Whatever the daemon accepts re-encodes to something it accepts again.
            let line = encode_line(&request);
            let again = decode_request(&line).expect("re-encoded request decodes");
            assert_eq!(again, request);
        }
        Err(e) => {
            // The daemon logs this error and sends it back as the refusal reason, which
            // the hook prints: one line, bounded, whatever the peer sent.
            let line = e.to_string();
            assert!(!line.chars().any(char::is_control), "one line: {line:?}");
            assert!(line.len() < 1000, "bounded: {} bytes", line.len());
        }
    }
});
