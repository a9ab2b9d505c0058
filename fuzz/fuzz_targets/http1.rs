//! cargo-fuzz target `http1`: see `mesh_proxy::testing::fuzz::http1`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = mesh_proxy::testing::fuzz::http1(data);
});
