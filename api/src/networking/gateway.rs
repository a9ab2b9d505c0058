//! `Gateway`: a load balancer at the edge of the mesh and the ports it exposes.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::StringMap;

/// Servers (ports, hosts, TLS) of the gateway workloads selected by `selector`.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "Gateway",
    plural = "gateways",
    shortname = "gw",
    namespaced,
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    /// The servers exposed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<Server>,
    /// Labels of the gateway workloads this applies to.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: StringMap,
}

/// One exposed port and the hosts served on it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    /// The port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    /// Address or unix socket to bind.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bind: String,
    /// Hosts served, optionally `namespace/host`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// TLS settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsSettings>,
    /// Where to forward traffic when no route matches (`127.0.0.1:PORT` or unix socket).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub default_endpoint: String,
    /// Name of the server, unique within the gateway.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

impl Server {
    /// Whether the gateway serves this server so far: plaintext HTTP, or HTTPS terminated
    /// with certificate files.
    pub fn is_served(&self) -> bool {
        self.is_plain_http() || self.is_https_terminated() || self.is_passthrough() || self.is_tcp()
    }

    /// TLS passed through to the destination the server name routes to (Istio's TLS or HTTPS
    /// with `tls.mode: PASSTHROUGH`).
    pub fn is_passthrough(&self) -> bool {
        self.port.as_ref().is_some_and(|p| {
            ["TLS", "HTTPS"]
                .iter()
                .any(|x| x.eq_ignore_ascii_case(&p.protocol))
        }) && self
            .tls
            .as_ref()
            .is_some_and(|t| matches!(t.mode, Some(ServerTlsMode::Passthrough)))
    }

    /// Opaque TCP (Istio's TCP, and MONGO, REDIS, MYSQL served as TCP), no TLS of its own.
    pub fn is_tcp(&self) -> bool {
        self.tls.is_none()
            && self.port.as_ref().is_some_and(|p| {
                ["TCP", "MONGO", "REDIS", "MYSQL"]
                    .iter()
                    .any(|x| x.eq_ignore_ascii_case(&p.protocol))
            })
    }

    /// HTTPS (Istio's HTTPS, or HTTP/HTTP2/GRPC with TLS) terminated SIMPLE or MUTUAL, with
    /// the certificate from the Secret `credentialName` names or from `serverCertificate` and
    /// `privateKey` files (MUTUAL: and `caCertificates`).
    pub fn is_https_terminated(&self) -> bool {
        let http = self.port.as_ref().is_some_and(|p| {
            ["HTTPS", "HTTP", "HTTP2", "GRPC"]
                .iter()
                .any(|x| x.eq_ignore_ascii_case(&p.protocol))
        });
        http && self.tls.as_ref().is_some_and(|t| {
            let secret = !t.credential_name.is_empty();
            let files = !t.server_certificate.is_empty() && !t.private_key.is_empty();
            match t.mode {
                Some(ServerTlsMode::Simple) => secret || files,
                Some(ServerTlsMode::Mutual) => secret || files && !t.ca_certificates.is_empty(),
                _ => false,
            }
        })
    }

    /// Whether the gateway serves this server so far as plaintext HTTP (Istio's HTTP, HTTP2 or
    /// GRPC), its `tls` block, if any, only asking to redirect to https.
    pub fn is_plain_http(&self) -> bool {
        let plain = self.tls.as_ref().is_none_or(|t| {
            t.mode.is_none() && t.credential_name.is_empty() && t.server_certificate.is_empty()
        });
        plain
            && self.port.as_ref().is_some_and(|p| {
                ["HTTP", "HTTP2", "GRPC"]
                    .iter()
                    .any(|x| x.eq_ignore_ascii_case(&p.protocol))
            })
    }
}

/// A port with its protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Port {
    /// Port number.
    #[serde(default)]
    pub number: u32,
    /// HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, MONGO, TCP or TLS.
    #[serde(default)]
    pub protocol: String,
    /// Name of the port.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Deprecated: port on the workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

/// TLS of a gateway server (or a sidecar ingress listener).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTlsSettings {
    /// Redirect plain HTTP to HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_redirect: Option<bool>,
    /// TLS mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ServerTlsMode>,
    /// Server certificate file.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub server_certificate: String,
    /// Server key file.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub private_key: String,
    /// CA certificates file to verify clients.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_certificates: String,
    /// Certificate revocation list file.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_crl: String,
    /// Secret holding the certificates.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub credential_name: String,
    /// Several secrets (e.g. RSA and ECDSA certificates).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credential_names: Vec<String>,
    /// Several certificate/key file pairs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_certificates: Vec<TlsCertificate>,
    /// Names accepted in client certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// Accepted client certificate SPKI hashes (base64).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_spki: Vec<String>,
    /// Accepted client certificate hashes (hex).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_hash: Vec<String>,
    /// Minimum TLS version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_protocol_version: Option<TlsProtocol>,
    /// Maximum TLS version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_protocol_version: Option<TlsProtocol>,
    /// Allowed cipher suites.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
}

/// A certificate and key pair.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsCertificate {
    /// Certificate file.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub server_certificate: String,
    /// Key file.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub private_key: String,
    /// CA certificates file.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_certificates: String,
}

/// Server TLS modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    /// Forward by SNI without terminating.
    Passthrough,
    /// Terminate TLS.
    Simple,
    /// Terminate mutual TLS.
    Mutual,
    /// Forward by SNI, for multi-network gateways.
    AutoPassthrough,
    /// Terminate mutual TLS with the mesh's certificates.
    IstioMutual,
    /// Terminate TLS, verifying a client certificate when sent.
    OptionalMutual,
}

/// TLS protocol versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TlsProtocol {
    /// Automatic.
    #[serde(rename = "TLS_AUTO")]
    Auto,
    /// TLS 1.0.
    #[serde(rename = "TLSV1_0")]
    V1_0,
    /// TLS 1.1.
    #[serde(rename = "TLSV1_1")]
    V1_1,
    /// TLS 1.2.
    #[serde(rename = "TLSV1_2")]
    V1_2,
    /// TLS 1.3.
    #[serde(rename = "TLSV1_3")]
    V1_3,
}
