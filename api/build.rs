//! Compiles the protocol definitions in `proto/` with protox (pure Rust: no `protoc` needed)
//! and generates the prost messages and tonic services from them.

/// Every enum-typed field of the state protocol and the serde module that names its values.
const ENUM_FIELDS: [(&str, &str); 7] = [
    (
        "ProxyState.outbound_traffic_policy",
        "outbound_traffic_policy",
    ),
    ("PeerAuthentication.mode", "peer_mode"),
    ("PeerAuthentication.port_modes", "peer_mode_map"),
    ("WorkloadPort.protocol", "protocol"),
    ("ServicePort.protocol", "protocol"),
    ("TrafficPolicy.load_balancer", "load_balancer"),
    ("TrafficPolicy.tls_mode", "tls_mode"),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "mesh/discovery/v1/discovery.proto",
        "mesh/ca/v1/ca.proto",
        "mesh/state/v1/state.proto",
        "envoy/service/auth/v3/external_auth.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(files, ["proto"])?;
    let mut config = tonic_prost_build::configure();
    // Enum fields are `i32` in prost; in files they read and write as the value's name.
    for (field, with) in ENUM_FIELDS {
        config = config.field_attribute(
            format!(".mesh.state.v1.{field}"),
            format!("#[serde(with = \"crate::proto::enum_serde::{with}\")]"),
        );
    }
    config
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        // Ordered maps: the same state always encodes to the same bytes, so a resource's
        // version (a hash of its bytes) changes only when its content does.
        .btree_map(".mesh.state.v1")
        // The proxy state is also a file format: readable JSON/YAML with camelCase names.
        .message_attribute(
            ".mesh.state.v1",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(rename_all = \"camelCase\", default, deny_unknown_fields)]",
        )
        .enum_attribute(
            ".mesh.state.v1",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(rename_all = \"camelCase\")]",
        )
        .compile_fds(fds)?;
    Ok(())
}
