//! The control socket's request decoder: one NUL-free message, as the
//! server reads it, to a checked method or the error it answers with.
#![no_main]

use connectracer_proto::varlink::Call;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(call) = serde_json::from_slice::<Call>(data) {
        let _ = connectracerd::control::server::parse_call(&call);
    }
});
