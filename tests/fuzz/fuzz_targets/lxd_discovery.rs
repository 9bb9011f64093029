#![no_main]

#[allow(dead_code)] // each target calls one entry point
#[path = "../../support/hostile.rs"]
mod hostile;

// The hash header, a NUL, then the URL header.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (hash, location) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b""[..]),
    };
    hostile::lxd_discovery(hash, location);
});
