//! CustomResourceDefinitions for Istio's kinds and the mesh's own, generated from the Rust types
//! so the schema the API server enforces is the one the mesh parses. Every served version (v1,
//! v1beta1, v1alpha3 for networking; v1, v1beta1 for security; v1alpha1 for policy.mesh.dev)
//! carries the same schema; the newest is the storage version.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceSubresourceStatus, CustomResourceSubresources,
    JSONSchemaProps,
};
use kube::CustomResourceExt;

use crate::kinds::Kind;
use crate::{networking as net, policy, security as sec};

/// The CRD of an Istio kind, with all its served versions; `None` for Kubernetes' own kinds.
pub fn crd(kind: Kind) -> Option<CustomResourceDefinition> {
    let mut crd = match kind {
        Kind::VirtualService => net::VirtualService::crd(),
        Kind::DestinationRule => net::DestinationRule::crd(),
        Kind::Gateway => net::Gateway::crd(),
        Kind::ServiceEntry => net::ServiceEntry::crd(),
        Kind::WorkloadEntry => net::WorkloadEntry::crd(),
        Kind::WorkloadGroup => net::WorkloadGroup::crd(),
        Kind::Sidecar => net::Sidecar::crd(),
        Kind::PeerAuthentication => sec::PeerAuthentication::crd(),
        Kind::AuthorizationPolicy => sec::AuthorizationPolicy::crd(),
        Kind::RequestAuthentication => sec::RequestAuthentication::crd(),
        Kind::Telemetry => crate::telemetry::Telemetry::crd(),
        Kind::RateLimitPolicy => policy::RateLimitPolicy::crd(),
        _ => return None,
    };
    let mut base = crd.spec.versions.remove(0);
    if let Some(schema) = base
        .schema
        .as_mut()
        .and_then(|s| s.open_api_v3_schema.as_mut())
    {
        make_structural(schema);
        // Pilot writes why it refused a resource into its status (as istiod does), so the
        // schema keeps a free-form status and the status subresource is served.
        schema
            .properties
            .get_or_insert_with(Default::default)
            .insert(
                "status".into(),
                JSONSchemaProps {
                    type_: Some("object".into()),
                    x_kubernetes_preserve_unknown_fields: Some(true),
                    ..Default::default()
                },
            );
    }
    base.subresources = Some(CustomResourceSubresources {
        status: Some(CustomResourceSubresourceStatus(serde_json::json!({}))),
        scale: None,
    });
    crd.spec.versions = kind
        .versions()
        .iter()
        .map(|v| {
            let mut version = base.clone();
            version.name = (*v).to_string();
            version.storage = *v == kind.versions()[0];
            version.served = true;
            version
        })
        .collect();
    let labels = crd.metadata.labels.get_or_insert_with(Default::default);
    labels.insert("app.kubernetes.io/part-of".into(), "mesh".into());
    crd.spec.names.categories = Some(if kind.is_istio() {
        vec![
            "istio-io".into(),
            format!("{}-istio-io", kind.group().split('.').next().unwrap_or("")),
        ]
    } else {
        vec!["mesh-dev".into()]
    });
    Some(crd)
}

/// Every CRD, in a stable order.
pub fn all() -> Vec<(Kind, CustomResourceDefinition)> {
    Kind::ALL
        .into_iter()
        .filter_map(|k| crd(k).map(|c| (k, c)))
        .collect()
}

/// Kubernetes structural schemas may not say `additionalProperties: false` next to
/// `properties` (unknown fields are pruned by the API server instead), so remove it everywhere.
fn make_structural(schema: &mut JSONSchemaProps) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
    };
    if matches!(
        schema.additional_properties,
        Some(JSONSchemaPropsOrBool::Bool(false))
    ) {
        schema.additional_properties = None;
    }
    if let Some(JSONSchemaPropsOrBool::Schema(s)) = schema.additional_properties.as_mut() {
        make_structural(s);
    }
    for p in schema.properties.iter_mut().flat_map(|m| m.values_mut()) {
        make_structural(p);
    }
    match schema.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(s)) => make_structural(s),
        Some(JSONSchemaPropsOrArray::Schemas(v)) => v.iter_mut().for_each(make_structural),
        None => {}
    }
    for list in [&mut schema.all_of, &mut schema.any_of, &mut schema.one_of] {
        list.iter_mut().flatten().for_each(make_structural);
    }
}

/// The file name a CRD is written to under `manifests/crds/`.
pub fn file_name(kind: Kind) -> String {
    format!("{}.{}.yaml", kind.name().to_ascii_lowercase(), kind.group())
}

/// The CRD as YAML, with a header saying it is generated.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::ser_error::Error> {
    let body = serde_saphyr::to_string(crd)?;
    Ok(format!(
        "# Generated by `meshctl manifest crds` from the types in api/; do not edit.\n{body}"
    ))
}
