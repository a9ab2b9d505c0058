//! A workload's access logs and tracing: the Telemetry resources that apply to it (the root
//! namespace's, its namespace's, then the one selecting it; the oldest of each level), merged
//! with Istio's rules over the mesh configuration's defaults.
//!
//! Access logs, per side (CLIENT: requests the workload sends, and every request of a gateway;
//! SERVER: requests it receives): the providers in scope are those the most specific entry
//! names (else `defaultProviders.accessLogging`); the levels are then applied from the mesh's
//! down, each entry turning its providers (its parent's when it names none) on, or off when
//! `disabled`. With no Telemetry at all, `defaultProviders.accessLogging` applies, else
//! `accessLogFile`.
//!
//! Tracing, per side: from the mesh's level down, each entry for the side overrides the
//! provider, sampling percentage and span reporting it sets, and adds its custom tags. The
//! sampling percentage falls back to `defaultConfig.tracing.sampling`, then Istio's 1%.

use std::collections::BTreeMap;

use mesh_api::mesh_config::{AccessLogEncoding, ExtensionProvider};
use mesh_api::proto::state::v1 as state;
use mesh_api::telemetry::{CustomTag, ModeMatch, ProviderRef, Telemetry};

use super::ProxyNode;
use crate::model::{Model, namespace_of, select};

/// The built-in access log provider: the proxy's standard output.
pub const ENVOY: &str = "envoy";
/// Istio's sampling percentage when nothing sets one.
pub const DEFAULT_SAMPLING: f64 = 1.0;

/// What pilot sends the proxy, and what of it cannot be done (for `meshctl proxy-status`).
#[derive(Debug, Default)]
pub struct Resolved {
    /// The proxy's telemetry.
    pub telemetry: state::Telemetry,
    /// Providers named but not usable, each a line naming the resource and field.
    pub problems: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

fn applies(m: Option<&ModeMatch>, side: Side) -> bool {
    let mode = m.and_then(|m| m.mode).unwrap_or_default();
    match side {
        Side::Client => mode.client(),
        Side::Server => mode.server(),
    }
}

fn names(providers: &[ProviderRef]) -> Vec<String> {
    providers.iter().map(|p| p.name.clone()).collect()
}

/// The Telemetry resources that apply to `node`, the mesh's level first.
pub fn applying<'a>(model: &'a Model, node: &ProxyNode) -> Vec<&'a Telemetry> {
    select::oldest_per_level(
        &model.telemetries,
        &model.config.root_namespace,
        &node.namespace,
        &node.labels,
    )
    .into_iter()
    .flatten()
    .collect()
}

/// The access log providers on for one side.
fn log_providers(levels: &[&Telemetry], defaults: &[String], side: Side) -> Vec<String> {
    let entries = || levels.iter().flat_map(|t| &t.spec.access_logging);
    let mut in_scope = defaults.to_vec();
    for e in entries() {
        if !e.providers.is_empty() {
            in_scope = names(&e.providers);
        }
    }
    let mut on: Vec<String> = Vec::new();
    let mut parent = defaults.to_vec();
    for e in entries() {
        let named = if e.providers.is_empty() {
            parent.clone()
        } else {
            names(&e.providers)
        };
        parent = named.clone();
        if !applies(e.match_.as_ref(), side) {
            continue;
        }
        for p in named.into_iter().filter(|p| in_scope.contains(p)) {
            on.retain(|x| *x != p);
            if e.disabled != Some(true) {
                on.push(p);
            }
        }
    }
    on
}

/// One side's tracing.
#[derive(Clone, Debug, PartialEq)]
struct SideTracing {
    provider: Option<String>,
    sampling: Option<f64>,
    reporting_disabled: bool,
    tags: BTreeMap<String, CustomTag>,
}

fn side_tracing(levels: &[&Telemetry], defaults: &[String], side: Side) -> SideTracing {
    let mut out = SideTracing {
        provider: defaults.first().cloned(),
        sampling: None,
        reporting_disabled: false,
        tags: BTreeMap::new(),
    };
    for t in levels.iter().flat_map(|t| &t.spec.tracing) {
        if !applies(t.match_.as_ref(), side) {
            continue;
        }
        if let Some(p) = t.providers.first() {
            out.provider = Some(p.name.clone());
        }
        if let Some(s) = t.random_sampling_percentage {
            out.sampling = Some(s);
        }
        if let Some(d) = t.disable_span_reporting {
            out.reporting_disabled = d;
        }
        out.tags
            .extend(t.custom_tags.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    out
}

fn where_from(levels: &[&Telemetry], field: &str, root: &str) -> String {
    levels
        .last()
        .map(|t| {
            format!(
                "Telemetry {}/{}: {field}",
                namespace_of(&t.metadata),
                t.metadata.name.as_deref().unwrap_or("")
            )
        })
        .unwrap_or_else(|| format!("ConfigMap {root}/istio: data.mesh.defaultProviders.{field}"))
}

/// The access log of provider `name`, or why there is none.
fn access_log(
    model: &Model,
    name: &str,
    client: bool,
    server: bool,
) -> Result<state::AccessLog, String> {
    let text = model.mesh.access_log_encoding == Some(AccessLogEncoding::Text);
    let path = if name == ENVOY {
        Some(String::new())
    } else {
        match model.mesh.provider(name) {
            None => {
                return Err(format!(
                    "provider {name:?} is not among the mesh configuration's extensionProviders (nor the built-in envoy): no access log is written for it"
                ));
            }
            Some(ExtensionProvider {
                envoy_file_access_log: Some(f),
                ..
            }) => Some(f.path.clone()),
            Some(_) => None,
        }
    };
    let Some(path) = path else {
        return Err(format!(
            "accepted, not enforced yet: provider {name:?} is not an access log this proxy writes (envoy or envoyFileAccessLog): no access log is written for it"
        ));
    };
    Ok(state::AccessLog {
        provider: name.to_string(),
        path,
        text,
        client,
        server,
    })
}

fn tracing(model: &Model, side: &SideTracing) -> Result<Option<state::Tracing>, String> {
    let Some(name) = &side.provider else {
        return Ok(None);
    };
    let provider = model.mesh.provider(name).ok_or_else(|| {
        format!(
            "provider {name:?} is not among the mesh configuration's extensionProviders: no spans are reported"
        )
    })?;
    let Some(otel) = &provider.opentelemetry else {
        return Err(format!(
            "accepted, not enforced yet: provider {name:?} is not an opentelemetry provider, the only tracer this proxy exports to: no spans are reported"
        ));
    };
    let host = super::service_host(model, &otel.service);
    let default_sampling = model
        .mesh
        .default_config
        .as_ref()
        .and_then(|c| c.tracing.as_ref())
        .and_then(|t| t.sampling)
        .unwrap_or(DEFAULT_SAMPLING);
    Ok(Some(state::Tracing {
        provider: name.clone(),
        sampling: side.sampling.unwrap_or(default_sampling),
        host: host.unwrap_or_default(),
        port: otel.port,
        client: false,
        server: false,
        reporting_disabled: side.reporting_disabled,
        custom_tags: side
            .tags
            .iter()
            .map(|(name, tag)| state::CustomTag {
                name: name.clone(),
                value: tag
                    .literal
                    .as_ref()
                    .map(|l| l.value.clone())
                    .unwrap_or_default(),
                environment: tag
                    .environment
                    .as_ref()
                    .map(|e| e.name.clone())
                    .unwrap_or_default(),
                header: tag
                    .header
                    .as_ref()
                    .map(|h| h.name.clone())
                    .unwrap_or_default(),
                default_value: tag
                    .environment
                    .as_ref()
                    .map(|e| e.default_value.clone())
                    .or_else(|| tag.header.as_ref().map(|h| h.default_value.clone()))
                    .unwrap_or_default(),
            })
            .collect(),
        max_tag_length: otel.max_tag_length.unwrap_or(0),
    }))
}

/// The access logs and tracing of `node`.
pub fn resolve(model: &Model, node: &ProxyNode) -> Resolved {
    let levels = applying(model, node);
    let root = &model.config.root_namespace;
    let defaults = model.mesh.default_providers.as_ref();
    let mut out = Resolved::default();

    // Access logs.
    let log_defaults = defaults.map_or(&[][..], |d| &d.access_logging[..]);
    let configured = levels.iter().any(|t| !t.spec.access_logging.is_empty());
    let (client, server) = if node.is_gateway {
        (
            log_providers(&levels, log_defaults, Side::Client),
            Vec::new(),
        )
    } else {
        (
            log_providers(&levels, log_defaults, Side::Client),
            log_providers(&levels, log_defaults, Side::Server),
        )
    };
    let mut all: Vec<&String> = client.iter().chain(&server).collect();
    all.sort();
    all.dedup();
    for name in all {
        match access_log(model, name, client.contains(name), server.contains(name)) {
            Ok(log) => out.telemetry.access_logs.push(log),
            Err(why) => out.problems.push(format!(
                "{}: {why}",
                where_from(&levels, "accessLogging", root)
            )),
        }
    }
    if !configured && log_defaults.is_empty() && !model.mesh.access_log_file.is_empty() {
        out.telemetry.access_logs.push(state::AccessLog {
            provider: "accessLogFile".into(),
            path: model.mesh.access_log_file.clone(),
            text: model.mesh.access_log_encoding == Some(AccessLogEncoding::Text),
            client: true,
            server: !node.is_gateway,
        });
    }

    // Tracing: off mesh-wide with `enableTracing: false` unless a Telemetry turns it on.
    let trace_defaults = defaults.map_or(&[][..], |d| &d.tracing[..]);
    let traced = levels.iter().any(|t| !t.spec.tracing.is_empty());
    if model.mesh.enable_tracing == Some(false) && !traced {
        return out;
    }
    let client = side_tracing(&levels, trace_defaults, Side::Client);
    let server = side_tracing(&levels, trace_defaults, Side::Server);
    let client_on = client.provider.is_some();
    let server_on = server.provider.is_some() && !node.is_gateway;
    // One tracer per proxy: the server side's settings when it traces, else the client's.
    let chosen = if server_on { &server } else { &client };
    match tracing(model, chosen) {
        Ok(Some(mut t)) => {
            t.client = client_on && client.provider == chosen.provider;
            t.server = server_on;
            if t.host.is_empty() {
                out.problems.push(format!(
                    "{}: provider {:?}: the registry has no service {:?}: spans are dropped",
                    where_from(&levels, "tracing", root),
                    t.provider,
                    model
                        .mesh
                        .provider(&t.provider)
                        .and_then(|p| p.opentelemetry.as_ref())
                        .map_or("", |o| o.service.as_str())
                ));
            }
            out.telemetry.tracing = Some(t);
        }
        Ok(None) => {}
        Err(why) => out
            .problems
            .push(format!("{}: {why}", where_from(&levels, "tracing", root))),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MeshConfig;
    use mesh_api::load;

    fn model(yaml: &str) -> Model {
        let report = load::load_str(yaml, None);
        assert!(report.is_valid(), "{:?}", report.diagnostics);
        let resources: Vec<_> = report.documents.into_iter().map(|d| d.resource).collect();
        Model::build(MeshConfig::default(), &resources, BTreeMap::new())
    }

    fn node(ns: &str, app: &str) -> ProxyNode {
        ProxyNode {
            id: format!("{app}.{ns}"),
            namespace: ns.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            ..ProxyNode::default()
        }
    }

    const MESH: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    extensionProviders:
    - name: otel
      opentelemetry: {service: otel.observability.svc.cluster.local, port: 4317}
    - name: file
      envoyFileAccessLog: {path: /var/log/access.log}
---
apiVersion: v1
kind: Service
metadata: {name: otel, namespace: observability}
spec:
  ports: [{name: grpc, port: 4317}]
"#;

    #[test]
    fn nothing_configured_means_no_logs_and_no_tracing() {
        let r = resolve(&model(MESH), &node("default", "a"));
        assert!(r.telemetry.access_logs.is_empty());
        assert!(r.telemetry.tracing.is_none());
        assert!(r.problems.is_empty(), "{:?}", r.problems);
    }

    #[test]
    fn the_mesh_wide_telemetry_turns_on_logs_and_the_namespace_turns_them_off() {
        let yaml = format!(
            "{MESH}---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: mesh-default, namespace: istio-system}}\nspec:\n  accessLogging: [{{providers: [{{name: envoy}}]}}]\n  tracing: [{{providers: [{{name: otel}}], randomSamplingPercentage: 100}}]\n---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: quiet, namespace: quiet}}\nspec:\n  accessLogging: [{{disabled: true}}]\n---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: server-only, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: order}}}}\n  accessLogging: [{{match: {{mode: SERVER}}, providers: [{{name: file}}]}}]\n"
        );
        let m = model(&yaml);
        let on = resolve(&m, &node("default", "a"));
        assert_eq!(on.telemetry.access_logs.len(), 1);
        let log = &on.telemetry.access_logs[0];
        assert_eq!(
            (
                log.provider.as_str(),
                log.path.as_str(),
                log.client,
                log.server
            ),
            ("envoy", "", true, true)
        );
        let t = on.telemetry.tracing.as_ref().unwrap();
        assert_eq!(t.sampling, 100.0);
        assert_eq!(t.host, "otel.observability.svc.cluster.local");
        assert_eq!((t.port, t.client, t.server), (4317, true, true));

        let off = resolve(&m, &node("quiet", "a"));
        assert!(off.telemetry.access_logs.is_empty(), "{off:?}");

        let order = resolve(&m, &node("shop", "order"));
        let logs: Vec<_> = order
            .telemetry
            .access_logs
            .iter()
            .map(|l| (l.provider.as_str(), l.client, l.server))
            .collect();
        // The workload's entry names `file`, so only `file` is in scope, for the server side.
        assert_eq!(logs, [("file", false, true)]);
        assert!(order.problems.is_empty(), "{:?}", order.problems);
    }

    #[test]
    fn access_log_file_applies_without_telemetry_and_unknown_providers_are_reported() {
        let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  mesh: |\n    accessLogFile: /dev/stdout\n    accessLogEncoding: TEXT\n    defaultConfig: {tracing: {sampling: 25}}\n    defaultProviders: {tracing: [nowhere]}\n";
        let m = model(yaml);
        let r = resolve(&m, &node("default", "a"));
        assert_eq!(r.telemetry.access_logs.len(), 1);
        assert!(r.telemetry.access_logs[0].text);
        assert_eq!(r.telemetry.access_logs[0].path, "/dev/stdout");
        assert!(r.telemetry.tracing.is_none());
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert!(
            r.problems[0].starts_with("ConfigMap istio-system/istio: data.mesh.defaultProviders.tracing: provider \"nowhere\""),
            "{:?}",
            r.problems
        );
    }
}
