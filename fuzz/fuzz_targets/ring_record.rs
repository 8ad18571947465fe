//! Ring-buffer records as the kernel thread receives them, any length.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = connectracerd::bpf::event::Record::decode(data);
});
