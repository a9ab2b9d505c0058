//! cargo-fuzz target `config`: see `mesh_proxy::testing::fuzz::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = mesh_proxy::testing::fuzz::config(data);
});
