//! The discovery server: per-proxy views pushed as deltas over one gRPC stream per proxy
//! (`mesh.discovery.v1.Discovery/DeltaResources`).
//!
//! - `generation`: one build of the model and the shared cache of translated resources;
//! - `session`: one proxy's stream as a state machine (subscriptions, versions, ACK/NACK);
//! - `status`: what is known of every proxy, for `meshctl proxy-status`;
//! - `server`: the debounced model builder and the tonic service around sessions.

pub mod generation;
pub mod server;
pub mod session;
pub mod status;
pub mod tls;

pub use generation::{Generation, SERVICE_TYPE, WORKLOAD_NAME, WORKLOAD_TYPE};
pub use server::{Debounce, DiscoveryService, PeerIdentity, build_generations};
pub use status::{ProxyStatus, Status};
