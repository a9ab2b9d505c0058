//! What of a proxy's view it will not enforce yet, named by resource and field, for `meshctl
//! proxy-status`: the same inventory `meshctl validate` warns from
//! (`mesh_api::validate::not_enforced_in`), applied to the resources that reach this proxy.

use mesh_api::Diagnostic;
use mesh_api::security::AuthorizationAction;
use mesh_api::validate::not_enforced_in as inventory;

use super::{ProxyNode, Scope, destination, virtual_service_for};
use crate::model::{MeshService, Model, namespace_of, policy};

fn lines(
    out: &mut Vec<String>,
    kind: &str,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    found: Vec<Diagnostic>,
) {
    for d in found {
        out.push(format!(
            "{kind} {}/{}: {}: {}",
            namespace_of(meta),
            meta.name.as_deref().unwrap_or(""),
            d.field.as_deref().unwrap_or("spec"),
            d.message
        ));
    }
}

/// The DestinationRules and VirtualService that shape `svc` for `node`.
pub fn in_service(model: &Model, svc: &MeshService, node: &ProxyNode) -> Vec<String> {
    let mut out = Vec::new();
    for dr in destination::rules_for(model, svc, node) {
        lines(
            &mut out,
            "DestinationRule",
            &dr.metadata,
            inventory::destination_rule(&dr.spec),
        );
    }
    if let Some(vs) = virtual_service_for(model, &svc.hostname, node) {
        lines(
            &mut out,
            "VirtualService",
            &vs.metadata,
            inventory::virtual_service(&vs.spec),
        );
    }
    out
}

/// The proxy's own policies and Sidecar.
pub fn in_workload(model: &Model, node: &ProxyNode, scope: &Scope<'_>) -> Vec<String> {
    let cfg = &model.config;
    let mut out = Vec::new();
    for p in policy::authorization_for(
        &model.authorization_policies,
        &cfg.root_namespace,
        &node.namespace,
        &node.labels,
    ) {
        lines(
            &mut out,
            "AuthorizationPolicy",
            &p.metadata,
            inventory::authorization_policy(&p.spec),
        );
        if p.spec.action == Some(AuthorizationAction::Custom) {
            let name = p.spec.provider.as_ref().map_or("", |x| x.name.as_str());
            let why = match model.mesh.provider(name) {
                None => Some(format!(
                    "provider {name:?} is not among the mesh configuration's extensionProviders (ConfigMap istio in {}, key mesh): the requests this policy matches are denied",
                    cfg.root_namespace
                )),
                Some(x) if !x.is_authorizer() => Some(format!(
                    "provider {name:?} is not an external authorizer (envoyExtAuthzHttp or envoyExtAuthzGrpc): the requests this policy matches are denied"
                )),
                Some(x) if super::authorizer_host(model, x).is_none() => Some(format!(
                    "provider {name:?} names a service the registry does not have: each check fails, so its failOpen/statusOnError decide"
                )),
                Some(_) => None,
            };
            if let Some(why) = why {
                out.push(format!(
                    "AuthorizationPolicy {}/{}: spec.provider.name: {why}",
                    namespace_of(&p.metadata),
                    p.metadata.name.as_deref().unwrap_or("")
                ));
            }
        }
    }
    for p in policy::request_authentication_for(
        &model.request_authentications,
        &cfg.root_namespace,
        &node.namespace,
        &node.labels,
    ) {
        lines(
            &mut out,
            "RequestAuthentication",
            &p.metadata,
            inventory::request_authentication(&p.spec),
        );
    }
    // The authorizers this proxy is sent (those its CUSTOM policies name).
    for p in super::extension_providers(model, node) {
        let spec = model.mesh.provider(&p.name);
        for (field, message) in spec.iter().flat_map(|s| s.not_enforced()) {
            out.push(format!(
                "ConfigMap {}/istio: data.mesh.extensionProviders[{:?}].{field}: {message}",
                cfg.root_namespace, p.name
            ));
        }
    }
    for t in super::telemetry::applying(model, node) {
        lines(
            &mut out,
            "Telemetry",
            &t.metadata,
            inventory::telemetry(&t.spec),
        );
    }
    out.extend(super::telemetry::resolve(model, node).problems);
    if let Some(s) = scope.sidecar {
        lines(
            &mut out,
            "Sidecar",
            &s.metadata,
            inventory::sidecar(&s.spec),
        );
    }
    out
}
