#![no_main]

#[allow(dead_code)] // each target calls one entry point
#[path = "../../support/hostile.rs"]
mod hostile;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        hostile::filter(text);
    }
});
