//! `meshctl`'s library: the local runtime (the mesh on one machine, in network namespaces)
//! and the demo. The binary is a thin command line over it, and the end-to-end suite drives
//! the same code.

pub mod dashboard;
pub mod demo;
pub mod kube_install;
pub mod local;
pub mod profile;
pub mod verify;
