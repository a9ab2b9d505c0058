//! cargo-fuzz target `jwt`: see `mesh_proxy::testing::fuzz::jwt`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = mesh_proxy::testing::fuzz::jwt(data);
});
