//! The control socket's request decoder: one NUL-free message, as the
//! server reads it (zlink decodes the envelope into a `RawMethod`), to a
//! checked method or the error it answers with.
#![no_main]

use connectracer_proto::varlink::{Method, RawMethod};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(raw) = serde_json::from_slice::<RawMethod>(data) {
        let _ = Method::parse(&raw);
    }
});
