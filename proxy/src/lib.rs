//! `mesh-proxy` will be the data plane: the sidecar (and gateway) proxy beside every workload,
//! with inbound and outbound listeners, protocol detection, routing, load balancing, mTLS
//! between proxies, and `mesh-proxy init` for the traffic-capture rules. It owns no
//! configuration types of its own: its state comes from `mesh-api` over the discovery stream
//! or from a local file. Nothing is implemented yet (see issue 3); this crate only holds the
//! place in the workspace.
