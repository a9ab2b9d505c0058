//! cargo-fuzz target `state`: see `mesh_proxy::testing::fuzz::state`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = mesh_proxy::testing::fuzz::state(data);
});
