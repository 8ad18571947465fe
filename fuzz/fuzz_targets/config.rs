//! The configuration loader: a main file and drop-ins (the input split at
//! lines of `#---`), through the same parse and validation as a reload.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let files: Vec<(std::path::PathBuf, String)> = text
        .split("\n#---\n")
        .enumerate()
        .map(|(i, part)| {
            let name = if i == 0 {
                "/etc/connectracer/connectracer.toml".to_string()
            } else {
                format!("/etc/connectracer/conf.d/{i:02}.toml")
            };
            (name.into(), part.to_string())
        })
        .collect();
    if let Err(errors) = connectracerd::config::parse_files(&files) {
        // Every error renders, with its place.
        let _ = errors.to_string();
    }
});
