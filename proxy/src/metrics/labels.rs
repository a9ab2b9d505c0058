//! Istio's label vocabulary: which workload, app, version and identity each side of a series
//! is, worked out once per series.

use std::borrow::Cow;

use super::{Key, Sides};

/// What the labels say about one side of a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// The workload (a Deployment's name), `unknown` when not known.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// The SPIFFE identity it proved, `unknown` without mTLS.
    pub principal: String,
    /// Its `app` label.
    pub app: String,
    /// Its `version` label.
    pub version: String,
    /// Istio's canonical service (`service.istio.io/canonical-name`, else the
    /// `app.kubernetes.io/name` or `app` label, else the workload name).
    pub canonical_service: String,
    /// Istio's canonical revision (`service.istio.io/canonical-revision`, else the
    /// `app.kubernetes.io/version` or `version` label, else `latest`).
    pub canonical_revision: String,
}

/// Istio's value for what a proxy cannot know.
pub const UNKNOWN: &str = "unknown";

impl Workload {
    /// Nothing known.
    pub fn unknown() -> Self {
        Self {
            name: UNKNOWN.into(),
            namespace: UNKNOWN.into(),
            principal: UNKNOWN.into(),
            app: UNKNOWN.into(),
            version: UNKNOWN.into(),
            canonical_service: UNKNOWN.into(),
            canonical_revision: "latest".into(),
        }
    }

    /// A workload described by its name, namespace, identity and labels (`label` looks one
    /// up); empty values become `unknown`.
    pub fn from_labels<'a>(
        name: &str,
        namespace: &str,
        principal: &str,
        label: impl Fn(&str) -> Option<&'a str>,
    ) -> Self {
        let known = |v: &str| {
            if v.is_empty() {
                UNKNOWN.to_string()
            } else {
                v.to_string()
            }
        };
        let label = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| label(k).filter(|v| !v.is_empty()))
                .map(str::to_string)
        };
        let canonical_service = label(&[
            "service.istio.io/canonical-name",
            "app.kubernetes.io/name",
            "app",
        ])
        .unwrap_or_else(|| known(name));
        let canonical_revision = label(&[
            "service.istio.io/canonical-revision",
            "app.kubernetes.io/version",
            "version",
        ])
        .unwrap_or_else(|| "latest".into());
        Self {
            name: known(name),
            namespace: known(namespace),
            principal: known(principal),
            app: known(label(&["app"]).as_deref().unwrap_or("")),
            version: known(label(&["version"]).as_deref().unwrap_or("")),
            canonical_service,
            canonical_revision,
        }
    }

    /// What a sidecar tells its peers of its workload (`x-mesh-peer`, between sidecars over
    /// mTLS only): the labels its metrics need, form-encoded. The principal is not in it: it
    /// comes from the peer's certificate.
    pub fn to_peer_header(&self) -> String {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("workload", &self.name)
            .append_pair("namespace", &self.namespace)
            .append_pair("app", &self.app)
            .append_pair("version", &self.version)
            .append_pair("canonical_service", &self.canonical_service)
            .append_pair("canonical_revision", &self.canonical_revision)
            .finish()
    }

    /// A peer as its `x-mesh-peer` header (from a caller or callee that proved `principal`)
    /// describes it; what the header lacks stays as `from_principal` has it.
    pub fn from_peer_header(header: &str, principal: &str) -> Self {
        let mut w = Self::from_principal(principal);
        for (k, v) in form_urlencoded::parse(header.as_bytes()) {
            if v.is_empty() {
                continue;
            }
            let field = match k.as_ref() {
                "workload" => &mut w.name,
                "namespace" => &mut w.namespace,
                "app" => &mut w.app,
                "version" => &mut w.version,
                "canonical_service" => &mut w.canonical_service,
                "canonical_revision" => &mut w.canonical_revision,
                _ => continue,
            };
            *field = v.into_owned();
        }
        w
    }

    /// The namespace a SPIFFE identity (`spiffe://<domain>/ns/<ns>/sa/<sa>`) names.
    pub fn namespace_of(principal: &str) -> Option<&str> {
        mesh_api::identity::namespace_of(principal)
    }

    /// A caller known only by the identity it proved (its namespace comes from the identity).
    pub fn from_principal(principal: &str) -> Self {
        let mut w = Self::unknown();
        if !principal.is_empty() {
            w.principal = principal.to_string();
            if let Some(ns) = Self::namespace_of(principal) {
                w.namespace = ns.to_string();
            }
        }
        w
    }
}

/// A service's name and namespace from its host name (`order.shop.svc.cluster.local` →
/// `order`, `shop`); other hosts are their own name.
pub fn service_names(host: &str, namespace: &str) -> (String, String, String) {
    let name = match host.split_once('.') {
        Some((name, rest)) if rest.contains(".svc.") || rest.ends_with(".svc") => name,
        _ => host,
    };
    let namespace = if namespace.is_empty() {
        UNKNOWN
    } else {
        namespace
    };
    (host.to_string(), name.to_string(), namespace.to_string())
}

type Labels<'a> = Vec<(&'static str, Cow<'a, str>)>;

fn sides_labels<'a>(key: &'a Key<Box<str>>, sides: &'a Sides) -> Labels<'a> {
    let (s, d) = (&sides.source, &sides.destination);
    let b = |v: &'a str| Cow::Borrowed(v);
    vec![
        ("reporter", b(key.reporter.as_str())),
        ("source_workload", b(&s.name)),
        ("source_workload_namespace", b(&s.namespace)),
        ("source_principal", b(&s.principal)),
        ("source_app", b(&s.app)),
        ("source_version", b(&s.version)),
        ("source_canonical_service", b(&s.canonical_service)),
        ("source_canonical_revision", b(&s.canonical_revision)),
        ("destination_workload", b(&d.name)),
        ("destination_workload_namespace", b(&d.namespace)),
        ("destination_principal", b(&d.principal)),
        ("destination_app", b(&d.app)),
        ("destination_version", b(&d.version)),
        ("destination_canonical_service", b(&d.canonical_service)),
        ("destination_canonical_revision", b(&d.canonical_revision)),
        ("destination_service", b(&sides.service.0)),
        ("destination_service_name", b(&sides.service.1)),
        ("destination_service_namespace", b(&sides.service.2)),
        ("request_protocol", b(key.protocol.as_str())),
    ]
}

fn security_policy(key: &Key<Box<str>>) -> Cow<'static, str> {
    Cow::Borrowed(if key.mtls { "mutual_tls" } else { "none" })
}

/// The labels of a request series.
pub fn request_labels<'a>(key: &'a Key<Box<str>>, sides: &'a Sides) -> Labels<'a> {
    let mut labels = sides_labels(key, sides);
    labels.push(("response_code", Cow::Owned(key.code.to_string())));
    labels.push(("response_flags", Cow::Borrowed(key.flags)));
    labels.push((
        "grpc_response_status",
        key.grpc_status
            .map_or(Cow::Borrowed(""), |c| Cow::Owned(c.to_string())),
    ));
    labels.push(("connection_security_policy", security_policy(key)));
    labels
}

/// The labels of a TCP series.
pub fn tcp_labels<'a>(key: &'a Key<Box<str>>, sides: &'a Sides) -> Labels<'a> {
    let mut labels = sides_labels(key, sides);
    labels.push(("response_flags", Cow::Borrowed(key.flags)));
    labels.push(("connection_security_policy", security_policy(key)));
    labels
}
