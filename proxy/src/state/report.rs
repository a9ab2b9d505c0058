//! What a state carries that this proxy does not enforce yet, logged once per field: nothing
//! pilot delivers is quietly ignored. Policies are judged by the same inventory `meshctl
//! validate` uses (`mesh_api::validate::not_enforced`); traffic policies by the fields of the
//! state that no layer reads yet.

use std::collections::HashSet;
use std::sync::Arc;

use mesh_api::Resource;
use mesh_api::security::{AuthorizationPolicy, RequestAuthentication};
use tokio::sync::watch;

use super::State;

/// One line per field this state carries and the proxy does not enforce.
pub fn unenforced(state: &State) -> Vec<String> {
    let mut out = Vec::new();
    let mut policy = |kind: &str, p: &super::proto::Policy, resource: Option<Resource>| {
        for d in resource.iter().flat_map(mesh_api::validate::not_enforced) {
            out.push(format!(
                "{kind} {}/{}: {}: {}",
                p.namespace,
                p.name,
                d.field.as_deref().unwrap_or("spec"),
                d.message
            ));
        }
    };
    for p in &state.source.authorization_policies {
        let r = serde_json::from_str(&p.spec_json).ok().map(|spec| {
            let mut r = AuthorizationPolicy::new(&p.name, spec);
            r.metadata.namespace = Some(p.namespace.clone());
            Resource::AuthorizationPolicy(Box::new(r))
        });
        policy("AuthorizationPolicy", p, r);
    }
    for p in &state.source.request_authentications {
        let r = serde_json::from_str(&p.spec_json).ok().map(|spec| {
            let mut r = RequestAuthentication::new(&p.name, spec);
            r.metadata.namespace = Some(p.namespace.clone());
            Resource::RequestAuthentication(Box::new(r))
        });
        policy("RequestAuthentication", p, r);
    }
    for p in &state.source.extension_providers {
        let spec = serde_json::from_str::<mesh_api::mesh_config::ExtensionProvider>(&p.spec_json);
        for (field, message) in spec.iter().flat_map(|s| s.not_enforced()) {
            out.push(format!(
                "mesh configuration: extensionProviders {:?}: {field}: {message}",
                p.name
            ));
        }
    }
    for svc in &state.source.services {
        let policies = std::iter::once(("trafficPolicy".to_string(), svc.traffic_policy.as_ref()))
            .chain(svc.subsets.iter().map(|s| {
                (
                    format!("subsets[{}].trafficPolicy", s.name),
                    s.traffic_policy.as_ref(),
                )
            }));
        for (at, tp) in policies {
            let Some(tp) = tp else { continue };
            for p in &tp.port_policies {
                let Some(policy) = &p.policy else { continue };
                if policy.load_balancer != 0 || policy.tls_mode != 0 {
                    out.push(format!(
                        "service {}: {at}.portPolicies[port {}]: {}: port-level loadBalancer and tls are not applied; the policy's own apply",
                        svc.hostname,
                        p.port,
                        mesh_api::validate::NOT_ENFORCED
                    ));
                }
            }
        }
    }
    out
}

/// Logs, once each, what the states arriving on `states` do not enforce.
pub async fn report_unenforced(mut states: watch::Receiver<Arc<State>>) {
    let mut seen = HashSet::new();
    loop {
        let lines = unenforced(&states.borrow_and_update());
        for line in lines {
            if seen.insert(line.clone()) {
                tracing::warn!("{line}");
            }
        }
        if states.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::state::proto;

    #[test]
    fn what_the_state_carries_and_is_not_enforced_is_named() {
        let state = State::compile(proto::ProxyState {
            extension_providers: vec![proto::ExtensionProvider {
                name: "opa".into(),
                spec_json: r#"{"name":"opa","envoyExtAuthzGrpc":{"service":"opa.shop.svc.cluster.local","port":9191,"includeRequestBodyInCheck":{"maxRequestBytes":1024}}}"#.into(),
                host: "opa.shop.svc.cluster.local".into(),
            }],
            services: vec![proto::Service {
                hostname: "inventory.shop.svc.cluster.local".into(),
                traffic_policy: Some(proto::TrafficPolicy {
                    port_policies: vec![proto::PortTrafficPolicy {
                        port: 8080,
                        policy: Some(proto::TrafficPolicy {
                            load_balancer: proto::LoadBalancer::Random.into(),
                            ..Default::default()
                        }),
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            unenforced(&state),
            [
                "mesh configuration: extensionProviders \"opa\": envoyExtAuthzGrpc.includeRequestBodyInCheck: accepted, not enforced yet: the request body is not sent to the authorizer yet; checks carry the headers only",
                "service inventory.shop.svc.cluster.local: trafficPolicy.portPolicies[port 8080]: accepted, not enforced yet: port-level loadBalancer and tls are not applied; the policy's own apply",
            ]
        );
    }
}
