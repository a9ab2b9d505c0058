//! Istio's mesh configuration, read where Istio keeps it: the `mesh` key of the ConfigMap
//! `istio` in the root namespace. Of it the mesh acts on `extensionProviders` of the kinds
//! `envoyExtAuthzHttp` and `envoyExtAuthzGrpc` (the external authorizers CUSTOM
//! AuthorizationPolicies name) and on `localityLbSetting` (the mesh-wide default of locality
//! load balancing); every other setting is accepted and reported as not enforced yet, so
//! nothing written there is quietly ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::diagnostic::Diagnostic;
use crate::validate::{NOT_ENFORCED, parse_duration};

/// The ConfigMap that holds the mesh configuration.
pub const CONFIG_MAP: &str = "istio";
/// Its key that holds the mesh configuration, as YAML.
pub const KEY: &str = "mesh";

/// The mesh configuration (Istio's `MeshConfig`), as far as the mesh reads it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfigSpec {
    /// Extensions the mesh's policies may name.
    #[serde(default)]
    pub extension_providers: Vec<ExtensionProvider>,
    /// Locality load balancing for destinations whose DestinationRule sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_lb_setting: Option<crate::networking::LocalityLbSetting>,
    /// Every other setting, kept as written.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// One named extension.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionProvider {
    /// The name policies refer to it by.
    #[serde(default)]
    pub name: String,
    /// An external authorizer speaking Envoy's ext_authz HTTP protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_ext_authz_http: Option<ExtAuthzHttp>,
    /// An external authorizer speaking Envoy's ext_authz gRPC protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_ext_authz_grpc: Option<ExtAuthzGrpc>,
    /// Other kinds of provider (tracers, access loggers, ...), kept as written.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// Istio's `EnvoyExternalAuthorizationHttpProvider`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtAuthzHttp {
    /// `[<namespace>/]<hostname>` of the authorizer.
    #[serde(default)]
    pub service: String,
    /// Its port.
    #[serde(default)]
    pub port: u32,
    /// How long a check may take (default 600s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Put before the request's path in the check request.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path_prefix: String,
    /// Allow the request when the authorizer cannot be reached or answers 5xx.
    #[serde(default)]
    pub fail_open: bool,
    /// The status sent when the authorizer cannot be reached (default 403).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status_on_error: String,
    /// Deprecated name of `includeRequestHeadersInCheck`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_headers_in_check: Vec<String>,
    /// Request headers sent in the check (exact, `prefix*`, `*suffix`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_request_headers_in_check: Vec<String>,
    /// Fixed headers added to the check.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub include_additional_headers_in_check: BTreeMap<String, String>,
    /// Send the request's body in the check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_request_body_in_check: Option<RequestBody>,
    /// Headers of an allowing answer set on the request sent on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers_to_upstream_on_allow: Vec<String>,
    /// Headers of a denying answer sent to the client (default: all of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers_to_downstream_on_deny: Vec<String>,
    /// Headers of an allowing answer set on the response to the client.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers_to_downstream_on_allow: Vec<String>,
}

/// Istio's `EnvoyExternalAuthorizationGrpcProvider`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtAuthzGrpc {
    /// `[<namespace>/]<hostname>` of the authorizer.
    #[serde(default)]
    pub service: String,
    /// Its port.
    #[serde(default)]
    pub port: u32,
    /// How long a check may take (default 600s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Allow the request (or connection) when the authorizer cannot be reached.
    #[serde(default)]
    pub fail_open: bool,
    /// The status sent when the authorizer cannot be reached (default 403).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status_on_error: String,
    /// Send the request's body in the check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_request_body_in_check: Option<RequestBody>,
}

/// Istio's `EnvoyExternalAuthorizationRequestBody`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestBody {
    /// The most body bytes buffered for the check.
    #[serde(default)]
    pub max_request_bytes: u32,
    /// Send a longer body cut at `maxRequestBytes` instead of answering 413.
    #[serde(default)]
    pub allow_partial_message: bool,
    /// gRPC: send the body as bytes (`raw_body`) rather than text.
    #[serde(default)]
    pub pack_as_bytes: bool,
}

/// The authorizer kinds, for messages.
const AUTHZ_KINDS: &str = "envoyExtAuthzHttp or envoyExtAuthzGrpc";

impl ExtensionProvider {
    /// Whether this provider is an external authorizer.
    pub fn is_authorizer(&self) -> bool {
        self.envoy_ext_authz_http.is_some() || self.envoy_ext_authz_grpc.is_some()
    }

    /// The authorizer's fields that are accepted but not acted on yet: (field under the
    /// provider, "accepted, not enforced yet: ..." message). Pilot and the proxy report these
    /// for the providers a workload uses.
    pub fn not_enforced(&self) -> Vec<(String, String)> {
        let body = self
            .envoy_ext_authz_http
            .as_ref()
            .and_then(|h| h.include_request_body_in_check.as_ref())
            .map(|_| "envoyExtAuthzHttp")
            .or_else(|| {
                self.envoy_ext_authz_grpc
                    .as_ref()
                    .and_then(|g| g.include_request_body_in_check.as_ref())
                    .map(|_| "envoyExtAuthzGrpc")
            });
        body.map(|kind| {
            (
                format!("{kind}.includeRequestBodyInCheck"),
                format!(
                    "{NOT_ENFORCED}: the request body is not sent to the authorizer yet; checks carry the headers only"
                ),
            )
        })
        .into_iter()
        .collect()
    }
}

impl MeshConfigSpec {
    /// Parses the `mesh` key's YAML. The error names the field (under `data.mesh`).
    pub fn parse(yaml: &str) -> Result<Self, Box<Diagnostic>> {
        if yaml.trim().is_empty() {
            return Ok(MeshConfigSpec::default());
        }
        crate::load::parse_value::<MeshConfigSpec>(yaml).map_err(|d| {
            let field = match d.field.as_deref() {
                Some(f) if !f.is_empty() => format!("data.mesh.{f}"),
                _ => "data.mesh".to_string(),
            };
            Box::new(Diagnostic {
                field: Some(field),
                ..*d
            })
        })
    }

    /// The provider named `name`.
    pub fn provider(&self, name: &str) -> Option<&ExtensionProvider> {
        self.extension_providers.iter().find(|p| p.name == name)
    }

    /// Errors and "not enforced yet" warnings, at fields under `data.mesh`.
    pub fn validate(&self) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        let mut err = |field: String, message: String| {
            out.push(Diagnostic::error(message).at_field(field));
        };
        let mut seen = BTreeMap::new();
        for (i, p) in self.extension_providers.iter().enumerate() {
            let at = format!("data.mesh.extensionProviders[{i}]");
            if p.name.is_empty() {
                err(
                    format!("{at}.name"),
                    "Required value: every extension provider needs a name".into(),
                );
            } else if let Some(first) = seen.insert(p.name.clone(), i) {
                err(
                    format!("{at}.name"),
                    format!(
                        "{:?} is also the name of extensionProviders[{first}]; names must be unique",
                        p.name
                    ),
                );
            }
            let kinds = usize::from(p.envoy_ext_authz_http.is_some())
                + usize::from(p.envoy_ext_authz_grpc.is_some())
                + p.other.len();
            if kinds != 1 {
                err(
                    at.clone(),
                    format!(
                        "a provider has exactly one kind ({AUTHZ_KINDS}, zipkin, opentelemetry, ...); this one has {kinds}"
                    ),
                );
            }
            if let Some(h) = &p.envoy_ext_authz_http {
                let at = format!("{at}.envoyExtAuthzHttp");
                target(&mut err, &at, &h.service, h.port, h.timeout.as_deref());
                status(&mut err, &at, &h.status_on_error);
                if !h.path_prefix.is_empty() && !h.path_prefix.starts_with('/') {
                    err(
                        format!("{at}.pathPrefix"),
                        format!("{:?} must start with '/'", h.path_prefix),
                    );
                }
                for k in h.include_additional_headers_in_check.keys() {
                    if k.is_empty() || !k.bytes().all(is_token_byte) {
                        err(
                            format!("{at}.includeAdditionalHeadersInCheck.{k}"),
                            format!("{k:?} is not a header name"),
                        );
                    }
                }
            }
            if let Some(g) = &p.envoy_ext_authz_grpc {
                let at = format!("{at}.envoyExtAuthzGrpc");
                target(&mut err, &at, &g.service, g.port, g.timeout.as_deref());
                status(&mut err, &at, &g.status_on_error);
            }
        }
        for (i, p) in self.extension_providers.iter().enumerate() {
            for kind in p.other.keys() {
                out.push(
                    Diagnostic::warning(format!(
                        "{NOT_ENFORCED}: {kind} providers are not used by this mesh; only {AUTHZ_KINDS} (external authorization) are"
                    ))
                    .at_field(format!("data.mesh.extensionProviders[{i}].{kind}")),
                );
            }
            for (field, message) in p.not_enforced() {
                out.push(
                    Diagnostic::warning(message)
                        .at_field(format!("data.mesh.extensionProviders[{i}].{field}")),
                );
            }
        }
        if let Some(l) = &self.locality_lb_setting {
            out.extend(crate::validate::locality_lb_findings(
                "data.mesh.localityLbSetting",
                l,
            ));
        }
        for key in self.other.keys() {
            out.push(
                Diagnostic::warning(format!(
                    "{NOT_ENFORCED}: the mesh reads only extensionProviders and localityLbSetting from its mesh configuration; the proxy's built-in default applies instead"
                ))
                .at_field(format!("data.mesh.{key}")),
            );
        }
        out
    }
}

fn target(
    err: &mut impl FnMut(String, String),
    at: &str,
    service: &str,
    port: u32,
    timeout: Option<&str>,
) {
    if service.is_empty() {
        err(
            format!("{at}.service"),
            "Required value: the authorizer's service, `[<namespace>/]<hostname>`, e.g. ext-authz.foo.svc.cluster.local".into(),
        );
    } else {
        let host = service.rsplit_once('/').map_or(service, |(_, h)| h);
        if host.is_empty() || host.contains(['/', ' ', ':']) {
            err(
                format!("{at}.service"),
                format!("{service:?} is not `[<namespace>/]<hostname>`"),
            );
        }
    }
    if port == 0 || port > 65535 {
        err(
            format!("{at}.port"),
            format!("{port} is not a port: give the authorizer's service port, 1-65535"),
        );
    }
    if let Some(t) = timeout {
        match parse_duration(t) {
            Ok(d) if d.is_zero() => err(
                format!("{at}.timeout"),
                format!("{t:?}: must be greater than 0"),
            ),
            Ok(_) => {}
            Err(why) => err(format!("{at}.timeout"), why.to_string()),
        }
    }
}

/// A byte HTTP allows in a header name (RFC 9110 `tchar`).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn status(err: &mut impl FnMut(String, String), at: &str, status: &str) {
    if status.is_empty() {
        return;
    }
    match status.parse::<u16>() {
        Ok(code) if (200..600).contains(&code) => {}
        _ => err(
            format!("{at}.statusOnError"),
            format!("{status:?} is not an HTTP status: give a code such as \"403\" or \"503\""),
        ),
    }
}

/// The duration of an authorizer's `timeout`, Istio's 600s when unset.
pub fn timeout_of(timeout: Option<&str>) -> std::time::Duration {
    timeout
        .and_then(|t| parse_duration(t).ok())
        .unwrap_or(std::time::Duration::from_secs(600))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn reads_istios_ext_authz_sample() {
        let yaml = r#"
extensionProviders:
- name: sample-ext-authz-grpc
  envoyExtAuthzGrpc:
    service: ext-authz.foo.svc.cluster.local
    port: 9000
- name: sample-ext-authz-http
  envoyExtAuthzHttp:
    service: ext-authz.foo.svc.cluster.local
    port: 8000
    includeRequestHeadersInCheck: ["x-ext-authz"]
accessLogFile: /dev/stdout
"#;
        let spec = MeshConfigSpec::parse(yaml).unwrap();
        assert_eq!(spec.extension_providers.len(), 2);
        let http = spec.provider("sample-ext-authz-http").unwrap();
        assert_eq!(
            http.envoy_ext_authz_http
                .as_ref()
                .unwrap()
                .include_request_headers_in_check,
            ["x-ext-authz"]
        );
        let found = spec.validate();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].field.as_deref(), Some("data.mesh.accessLogFile"));
        assert!(found[0].message.starts_with(NOT_ENFORCED));
    }

    #[test]
    fn the_mesh_wide_locality_setting_is_read_and_checked() {
        let ok = MeshConfigSpec::parse(
            "localityLbSetting:\n  enabled: true\n  failover: [{from: us-west, to: us-east}]\n",
        )
        .unwrap();
        assert_eq!(
            ok.locality_lb_setting.as_ref().unwrap().failover[0].to,
            "us-east"
        );
        assert!(ok.validate().is_empty(), "{:?}", ok.validate());
        let bad =
            MeshConfigSpec::parse("localityLbSetting:\n  failover: [{from: a, to: a}]\n").unwrap();
        let found = bad.validate();
        assert_eq!(
            found[0].field.as_deref(),
            Some("data.mesh.localityLbSetting.failover[0]"),
            "{found:?}"
        );
    }

    #[test]
    fn bad_providers_are_named_by_field() {
        let yaml = r#"
extensionProviders:
- name: a
  envoyExtAuthzHttp: {service: "", port: 0, statusOnError: "abc", pathPrefix: check}
- name: a
  envoyExtAuthzGrpc: {service: x.svc, port: 9000, timeout: "soon"}
- name: tracer
  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
"#;
        let spec = MeshConfigSpec::parse(yaml).unwrap();
        let fields: Vec<String> = spec
            .validate()
            .into_iter()
            .map(|d| format!("{:?} {}", d.severity, d.field.unwrap()))
            .collect();
        for want in [
            "Error data.mesh.extensionProviders[0].envoyExtAuthzHttp.service",
            "Error data.mesh.extensionProviders[0].envoyExtAuthzHttp.port",
            "Error data.mesh.extensionProviders[0].envoyExtAuthzHttp.statusOnError",
            "Error data.mesh.extensionProviders[0].envoyExtAuthzHttp.pathPrefix",
            "Error data.mesh.extensionProviders[1].name",
            "Error data.mesh.extensionProviders[1].envoyExtAuthzGrpc.timeout",
            "Warning data.mesh.extensionProviders[2].zipkin",
        ] {
            assert!(fields.iter().any(|f| f == want), "{want} not in {fields:?}");
        }
    }

    #[test]
    fn an_unknown_authorizer_field_is_an_error_at_its_path() {
        let e = MeshConfigSpec::parse(
            "extensionProviders:\n- name: a\n  envoyExtAuthzHttp: {service: a.b, port: 80, failClosed: true}\n",
        )
        .unwrap_err();
        assert!(
            e.field
                .as_deref()
                .unwrap()
                .starts_with("data.mesh.extensionProviders[0].envoyExtAuthzHttp"),
            "{e:?}"
        );
    }
}
