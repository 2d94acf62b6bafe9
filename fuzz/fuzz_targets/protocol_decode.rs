//! The daemon's request decoder against arbitrary bytes from the socket.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vpnfw::protocol::{decode_request, encode_line};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = decode_request(data) {
        // Whatever the daemon accepts re-encodes to something it accepts again.
        let line = encode_line(&request);
        let again = decode_request(&line).expect("re-encoded request decodes");
        assert_eq!(again, request);
    }
});
