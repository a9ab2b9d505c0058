//! `mesh-proxy` is the data plane: the sidecar (and gateway) proxy beside every workload. This
//! crate owns traffic capture (`init`: the iptables rules of a pod's network namespace) and, as
//! it lands, the inbound and outbound listeners, protocol detection, routing, load balancing
//! and mTLS between proxies. It owns no configuration types of its own: its state comes from
//! `mesh-api`, over the discovery stream or from a local file.

pub mod init;
