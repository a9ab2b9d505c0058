//! Istio's mesh configuration, read where Istio keeps it: the `mesh` key of the ConfigMap
//! `istio` in the root namespace. Of it the mesh acts on `extensionProviders` of the kinds
//! `envoyExtAuthzHttp` and `envoyExtAuthzGrpc` (the external authorizers CUSTOM
//! AuthorizationPolicies name), `envoyFileAccessLog` and `opentelemetry` (access logs and
//! tracing, named by Telemetry resources and `defaultProviders`), on `localityLbSetting` (the
//! mesh-wide default of locality load balancing), and on the access log and tracing defaults
//! (`accessLogFile`, `accessLogEncoding`, `enableTracing`, `defaultConfig.tracing.sampling`);
//! every other setting is accepted and reported as not enforced yet, so nothing written there
//! is quietly ignored.

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
    /// Every proxy writes an access log here (`/dev/stdout`); none when empty (unless a
    /// Telemetry resource or `defaultProviders.accessLogging` asks for one).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub access_log_file: String,
    /// `JSON` or `TEXT` (Envoy's default text line); JSON when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log_encoding: Option<AccessLogEncoding>,
    /// A custom access log format (Envoy's command operators).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub access_log_format: String,
    /// The providers used when no Telemetry resource names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_providers: Option<DefaultProviders>,
    /// Tracing on (the default) or off for the whole mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_tracing: Option<bool>,
    /// Defaults for every proxy (Istio's ProxyConfig); of it `tracing.sampling` is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_config: Option<ProxyConfigDefaults>,
    /// Every other setting, kept as written.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// How access log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AccessLogEncoding {
    /// One JSON object per line.
    #[default]
    Json,
    /// Envoy's default text line.
    Text,
}

/// `defaultProviders`: provider names per kind of telemetry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DefaultProviders {
    /// Tracing providers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracing: Vec<String>,
    /// Metrics providers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<String>,
    /// Access log providers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_logging: Vec<String>,
}

/// `defaultConfig`, the proxies' defaults; only `tracing.sampling` is read.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfigDefaults {
    /// Tracing defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingDefaults>,
    /// Every other setting, kept as written.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// `defaultConfig.tracing`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TracingDefaults {
    /// Percentage of requests sampled when no Telemetry sets one (Istio's 1.0 when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<f64>,
    /// Every other setting (zipkin, custom tags, ...), kept as written.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// Istio's `EnvoyFileAccessLogProvider`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileAccessLog {
    /// The file (`/dev/stdout` when empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// A custom format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<serde_json::Value>,
}

/// Istio's `OpenTelemetryTracingProvider`: spans exported over OTLP.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenTelemetryTracing {
    /// The collector's service, `[<namespace>/]<hostname>`.
    #[serde(default)]
    pub service: String,
    /// Its OTLP port (4317 for gRPC).
    #[serde(default)]
    pub port: u32,
    /// Longest tag value; longer ones are cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tag_length: Option<u32>,
    /// Every other setting (http, resourceDetectors, dynatraceSampler), kept as written.
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
    /// An access log file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_file_access_log: Option<FileAccessLog>,
    /// An OpenTelemetry collector that receives spans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opentelemetry: Option<OpenTelemetryTracing>,
    /// Other kinds of provider (zipkin, datadog, ...), kept as written.
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
        let mut out = Vec::new();
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
        if let Some(kind) = body {
            out.push((
                format!("{kind}.includeRequestBodyInCheck"),
                format!(
                    "{NOT_ENFORCED}: the request body is not sent to the authorizer yet; checks carry the headers only"
                ),
            ));
        }
        if self
            .envoy_file_access_log
            .as_ref()
            .is_some_and(|f| f.log_format.is_some())
        {
            out.push((
                "envoyFileAccessLog.logFormat".into(),
                format!(
                    "{NOT_ENFORCED}: lines are written in the mesh's JSON form (accessLogEncoding TEXT: Envoy's default line), not in a custom format"
                ),
            ));
        }
        if let Some(o) = &self.opentelemetry {
            for key in o.other.keys() {
                out.push((
                    format!("opentelemetry.{key}"),
                    format!(
                        "{NOT_ENFORCED}: spans are exported over OTLP/gRPC to the service and port, with the proxy's own resource attributes"
                    ),
                ));
            }
        }
        out
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
                + usize::from(p.envoy_file_access_log.is_some())
                + usize::from(p.opentelemetry.is_some())
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
            if let Some(o) = &p.opentelemetry {
                target(
                    &mut err,
                    &format!("{at}.opentelemetry"),
                    &o.service,
                    o.port,
                    None,
                );
            }
        }
        for (i, p) in self.extension_providers.iter().enumerate() {
            for kind in p.other.keys() {
                out.push(
                    Diagnostic::warning(format!(
                        "{NOT_ENFORCED}: {kind} providers are not used by this mesh; only {AUTHZ_KINDS} (external authorization), envoyFileAccessLog (access logs) and opentelemetry (tracing) are"
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
        if let Some(sampling) = self
            .default_config
            .as_ref()
            .and_then(|c| c.tracing.as_ref())
            .and_then(|t| t.sampling)
            && !(0.0..=100.0).contains(&sampling)
        {
            out.push(
                Diagnostic::error(format!(
                    "{sampling} is out of range: a percentage from 0.0 to 100.0"
                ))
                .at_field("data.mesh.defaultConfig.tracing.sampling"),
            );
        }
        if let Some(l) = &self.locality_lb_setting {
            out.extend(crate::validate::locality_lb_findings(
                "data.mesh.localityLbSetting",
                l,
            ));
        }
        let mut warn = |field: String, what: &str| {
            out.push(Diagnostic::warning(format!("{NOT_ENFORCED}: {what}")).at_field(field));
        };
        if !self.access_log_format.is_empty() {
            warn(
                "data.mesh.accessLogFormat".into(),
                "lines are written in the mesh's JSON form (accessLogEncoding TEXT: Envoy's default line), not in a custom format",
            );
        }
        if let Some(d) = &self.default_providers {
            for (i, name) in d.metrics.iter().enumerate() {
                if name != "prometheus" {
                    warn(
                        format!("data.mesh.defaultProviders.metrics[{i}]"),
                        "metrics are served for Prometheus only (provider prometheus), on :15020/stats/prometheus",
                    );
                }
            }
        }
        if let Some(c) = &self.default_config {
            if let Some(t) = &c.tracing {
                for key in t.other.keys() {
                    warn(
                        format!("data.mesh.defaultConfig.tracing.{key}"),
                        "spans go to the opentelemetry provider that defaultProviders.tracing or a Telemetry resource names; of defaultConfig.tracing only sampling is read",
                    );
                }
            }
            for key in c.other.keys() {
                warn(
                    format!("data.mesh.defaultConfig.{key}"),
                    "of defaultConfig only tracing.sampling is read; the proxy's built-in default applies instead",
                );
            }
        }
        for key in self.other.keys() {
            warn(
                format!("data.mesh.{key}"),
                "the mesh reads extensionProviders, defaultProviders, localityLbSetting, the access log settings, enableTracing and defaultConfig.tracing.sampling from its mesh configuration; the proxy's built-in default applies instead",
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
            "Required value: the provider's service, `[<namespace>/]<hostname>`, e.g. ext-authz.foo.svc.cluster.local".into(),
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
            format!("{port} is not a port: give the provider's service port, 1-65535"),
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
enableAutoMtls: true
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
        assert_eq!(found[0].field.as_deref(), Some("data.mesh.enableAutoMtls"));
        assert!(found[0].message.starts_with(NOT_ENFORCED));
    }

    #[test]
    fn access_log_and_tracing_settings_are_read_and_the_rest_reported() {
        let yaml = r#"
accessLogFile: /dev/stdout
accessLogEncoding: TEXT
enableTracing: true
defaultProviders: {tracing: [otel], accessLogging: [envoy], metrics: [stackdriver]}
defaultConfig:
  tracing: {sampling: 100, zipkin: {address: zipkin:9411}}
  holdApplicationUntilProxyStarts: true
extensionProviders:
- name: otel
  opentelemetry: {service: otel.observability.svc.cluster.local, port: 4317, http: {path: /v1/traces}}
- name: file
  envoyFileAccessLog: {path: /tmp/a.log}
"#;
        let spec = MeshConfigSpec::parse(yaml).unwrap();
        assert_eq!(spec.access_log_encoding, Some(AccessLogEncoding::Text));
        assert_eq!(
            spec.default_config
                .as_ref()
                .unwrap()
                .tracing
                .as_ref()
                .unwrap()
                .sampling,
            Some(100.0)
        );
        let mut warned: Vec<String> = spec
            .validate()
            .into_iter()
            .map(|d| {
                assert!(d.message.starts_with(NOT_ENFORCED), "{d:?}");
                d.field.unwrap()
            })
            .collect();
        warned.sort();
        assert_eq!(
            warned,
            [
                "data.mesh.defaultConfig.holdApplicationUntilProxyStarts",
                "data.mesh.defaultConfig.tracing.zipkin",
                "data.mesh.defaultProviders.metrics[0]",
                "data.mesh.extensionProviders[0].opentelemetry.http",
            ]
        );
        let bad = MeshConfigSpec::parse(
            "defaultConfig: {tracing: {sampling: 101}}\nextensionProviders: [{name: o, opentelemetry: {service: '', port: 4317}}]\n",
        )
        .unwrap();
        let errors: Vec<String> = bad
            .validate()
            .into_iter()
            .filter(|d| d.severity == crate::Severity::Error)
            .map(|d| d.field.unwrap())
            .collect();
        assert_eq!(
            errors,
            [
                "data.mesh.extensionProviders[0].opentelemetry.service",
                "data.mesh.defaultConfig.tracing.sampling",
            ]
        );
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
