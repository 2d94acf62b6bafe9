//! The hook's environment parser against arbitrary environments: raw bytes split on
//! NUL into NAME=VALUE entries, so non-UTF-8, duplicates and entries without `=` occur.
#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use libfuzzer_sys::fuzz_target;
use vpnfw::event::Event;

fuzz_target!(|data: &[u8]| {
    let vars: Vec<(OsString, OsString)> = data
        .split(|b| *b == 0)
        .map(|entry| {
            let (name, value) = match entry.iter().position(|b| *b == b'=') {
                Some(i) => (&entry[..i], &entry[i + 1..]),
                None => (entry, &b""[..]),
            };
            (
                OsString::from_vec(name.to_vec()),
                OsString::from_vec(value.to_vec()),
            )
        })
        .collect();
    match Event::from_env(vars) {
        Ok(event) => {
            // What the hook sends, the daemon accepts unchanged (it validates again).
            let json = serde_json::to_string(&event).expect("an event serialises");
            let back: Event = serde_json::from_str(&json).expect("the daemon accepts it");
            assert_eq!(back, event);
        }
        Err(e) => {
            let line = e.to_string();
            // The hook prints it as its one stderr line: no newline, no other control.
            assert!(!line.chars().any(char::is_control), "one line: {line:?}");
            assert!(line.len() < 1000, "bounded: {} bytes", line.len());
        }
    }
});
