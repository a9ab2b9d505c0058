//! The end-to-end side of the mesh: `mesh-echo`, the test application the demo and the suite
//! run in every pod ([`echo`]), and its load generator ([`load`]). The scenarios live in
//! `tests/` and drive the local runtime (`meshctl`'s library) in network namespaces.

pub mod bench;
pub mod conformance;
pub mod echo;
pub mod harness;
pub mod kubernetes;
pub mod load;
pub mod plot;
pub mod ws_grpc;
