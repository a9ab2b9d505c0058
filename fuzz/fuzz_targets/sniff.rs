//! cargo-fuzz target `sniff`: see `mesh_proxy::testing::fuzz::sniff`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = mesh_proxy::testing::fuzz::sniff(data);
});
