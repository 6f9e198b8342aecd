//! `routes.toml` text → parse → key-by-key deserialization → validation: any input gives a config or a list of
//! problems, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(value) = sluice::config::read_str(text) {
        let (config, _errors) = sluice::config::from_value(value);
        let _ = sluice::config::validate(&config);
    }
});
