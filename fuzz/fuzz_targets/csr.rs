//! cargo-fuzz target `csr`: see `mesh_proxy::testing::fuzz::csr`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = mesh_proxy::testing::fuzz::csr(data);
});
