//! The routing layer: from what a connection or request is (its original destination, and
//! for HTTP its method, path, headers) to a [`Target`], one endpoint with how to reach it.
//! HTTP, TLS and TCP share it: a service's port, a route (VirtualService semantics: `http.rs`
//! for requests, TLS by SNI and TCP by port in `pick.rs`), a weighted destination, a subset,
//! and the load balancer (`balance.rs`). It reads the compiled state and does no IO.

pub mod balance;
pub mod budget;
pub mod http;
pub mod outlier;
mod pick;

use std::net::SocketAddr;

pub use pick::{
    HashKey, PASSTHROUGH, Target, choose_weighted, endpoint_in, hash_str, no_identity,
    pick_endpoint, pick_tls_endpoint, port_for, rendezvous, retry_budget_of, to_destination,
    to_destination_after,
};

use crate::state::{Protocol, Service};

/// The declared protocol of the service port a connection to `dst` uses.
pub fn port_protocol(svc: &Service, dst: SocketAddr) -> Option<Protocol> {
    Some(port_for(svc, dst)?.protocol)
}
