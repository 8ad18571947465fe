//! cgroup paths (and /proc/PID/cgroup lines) to unit, slice, container and pod.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(path) = std::str::from_utf8(data) {
        let _ = connectracerd::attribution::cgroup_path::parse_cgroup_path(path);
    }
});
