//! Status of Gateway API objects, as the specification lays it out: conditions on
//! GatewayClasses and Gateways, per listener, and per parent of each route.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use mesh_api::Kind;
use mesh_api::gateway_api::GROUP;
use serde_json::{Value, json};

use super::routes::RouteRef;
use super::{Attachment, CONTROLLER, GatewayState};
use crate::model::namespace_of;
use crate::model::registry::Registry;
use crate::model::select::Selector;

/// One condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    /// `Accepted`, `Programmed`, `ResolvedRefs`, `Conflicted`.
    pub type_: &'static str,
    /// True or False.
    pub status: bool,
    /// The reason, a CamelCase word.
    pub reason: &'static str,
    /// What happened and what to do.
    pub message: String,
}

impl Condition {
    /// A condition that holds.
    pub fn ok(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Condition {
            type_,
            status: true,
            reason,
            message: message.into(),
        }
    }

    /// A condition that does not hold.
    pub fn not(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Condition {
            type_,
            status: false,
            reason,
            message: message.into(),
        }
    }

    fn from_result(
        type_: &'static str,
        ok_reason: &'static str,
        ok_message: &str,
        r: &Result<(), (&'static str, String)>,
    ) -> Self {
        match r {
            Ok(()) => Condition::ok(type_, ok_reason, ok_message),
            Err((reason, message)) => Condition::not(type_, reason, message.clone()),
        }
    }

    fn to_json(&self, generation: Option<i64>) -> Value {
        json!({
            "type": self.type_,
            "status": if self.status { "True" } else { "False" },
            "reason": self.reason,
            "message": self.message,
            "observedGeneration": generation.unwrap_or(0),
        })
    }
}

/// The status pilot computed for one object.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectStatus {
    /// The kind.
    pub kind: Kind,
    /// Namespace (absent for GatewayClasses).
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// The `status` object, without timestamps (the writer adds `lastTransitionTime`).
    pub status: Value,
}

impl ObjectStatus {
    /// A GatewayClass's status.
    pub fn class(meta: &ObjectMeta, conditions: Vec<Condition>) -> Self {
        ObjectStatus {
            kind: Kind::GatewayClass,
            namespace: None,
            name: meta.name.clone().unwrap_or_default(),
            status: json!({ "conditions": conditions
                .iter()
                .map(|c| c.to_json(meta.generation))
                .collect::<Vec<_>>() }),
        }
    }

    /// `Kind namespace/name`.
    pub fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }

    /// Every condition of the object as `(where, condition json)`: `where` is empty for the
    /// object's own, the listener name, or the parent's `namespace/name`.
    pub fn conditions(&self) -> Vec<(String, &Value)> {
        let mut out = Vec::new();
        for c in self.status["conditions"].as_array().into_iter().flatten() {
            out.push((String::new(), c));
        }
        for l in self.status["listeners"].as_array().into_iter().flatten() {
            let name = l["name"].as_str().unwrap_or("").to_string();
            for c in l["conditions"].as_array().into_iter().flatten() {
                out.push((name.clone(), c));
            }
        }
        for p in self.status["parents"].as_array().into_iter().flatten() {
            let r = &p["parentRef"];
            let mut name = format!(
                "{}/{}",
                r["namespace"].as_str().unwrap_or(""),
                r["name"].as_str().unwrap_or("")
            );
            if let Some(s) = r["sectionName"].as_str() {
                name.push_str(&format!("/{s}"));
            }
            for c in p["conditions"].as_array().into_iter().flatten() {
                out.push((name.clone(), c));
            }
        }
        out
    }
}

/// A route's status: a parent entry per parentRef the mesh answers for.
pub(crate) fn route_status(
    route: &RouteRef,
    parents: &[Attachment],
    resolved: &Result<(), (&'static str, String)>,
) -> ObjectStatus {
    let generation = route.meta.generation;
    let parents: Vec<Value> = parents
        .iter()
        .map(|a| {
            let accepted = match &a.accepted {
                Ok(msg) => Condition::ok("Accepted", "Accepted", msg.clone()),
                Err((reason, msg)) => Condition::not("Accepted", reason, msg.clone()),
            };
            let resolved = Condition::from_result(
                "ResolvedRefs",
                "ResolvedRefs",
                "All references resolved",
                resolved,
            );
            let p = &a.parent_ref;
            let mut parent_ref = json!({
                "group": p.group.clone().unwrap_or_else(|| GROUP.to_string()),
                "kind": p.kind.clone().unwrap_or_else(|| "Gateway".to_string()),
                "name": p.name,
                "namespace": p.namespace.clone().unwrap_or_else(|| route.namespace.clone()),
            });
            if let Some(s) = &p.section_name {
                parent_ref["sectionName"] = json!(s);
            }
            if let Some(port) = p.port {
                parent_ref["port"] = json!(port);
            }
            json!({
                "parentRef": parent_ref,
                "controllerName": CONTROLLER,
                "conditions": [accepted.to_json(generation), resolved.to_json(generation)],
            })
        })
        .collect();
    ObjectStatus {
        kind: if route.kind == "GRPCRoute" {
            Kind::GrpcRoute
        } else {
            Kind::HttpRoute
        },
        namespace: Some(route.namespace.clone()),
        name: route.name.clone(),
        status: json!({ "parents": parents }),
    }
}

/// A Gateway's status: its own conditions, its addresses and its listeners'.
pub(crate) fn gateway_status(
    state: &GatewayState,
    registry: &Registry,
    selector: &BTreeMap<String, String>,
    same_namespace: bool,
) -> ObjectStatus {
    let g = state.gateway;
    let ns = namespace_of(&g.metadata);
    let generation = g.metadata.generation;
    let usable = state.listeners.iter().filter(|l| l.usable()).count();
    let sel = Selector::new(selector);
    let addresses: Vec<Value> = registry
        .workloads
        .iter()
        .filter(|w| (!same_namespace || w.namespace == ns) && sel.matches(&w.labels))
        .map(|w| json!({"type": "IPAddress", "value": w.address}))
        .collect();
    let valid = state
        .listeners
        .iter()
        .filter(|l| l.usable() && l.resolved.is_ok())
        .count();
    let unsupported_address = g
        .spec
        .addresses
        .iter()
        .find(|a| a.type_.as_deref().unwrap_or("IPAddress") != "Hostname");
    let unresolved_hostname = same_namespace && !g.spec.addresses.is_empty();
    let accepted = if let Some(a) = unsupported_address {
        Condition::not(
            "Accepted",
            "UnsupportedAddress",
            format!(
                "address {:?} cannot be assigned: only a Hostname naming the Service of a gateway deployment is (or no address, for a gateway deployed for this Gateway)",
                a.value
            ),
        )
    } else if valid == 0 && !state.listeners.is_empty() {
        Condition::not(
            "Accepted",
            "ListenersNotValid",
            "none of the Gateway's listeners are valid; see status.listeners",
        )
    } else if valid < state.listeners.len() {
        Condition::ok(
            "Accepted",
            "ListenersNotValid",
            "one or more of the Gateway's listeners are invalid; see status.listeners",
        )
    } else {
        Condition::ok("Accepted", "Accepted", "Resource accepted")
    };
    let programmed = if usable == 0 {
        Condition::not("Programmed", "Invalid", "no listener can be served")
    } else if unresolved_hostname {
        Condition::not(
            "Programmed",
            "AddressNotUsable",
            "no Service of a gateway deployment has the requested hostname",
        )
    } else if addresses.is_empty() {
        Condition::not(
            "Programmed",
            "NoResources",
            format!(
                "no gateway workload serves it yet: deploy one labelled {}={} in namespace {ns} (meshctl up does)",
                super::GATEWAY_NAME_LABEL,
                g.metadata.name.as_deref().unwrap_or("")
            ),
        )
    } else {
        Condition::ok("Programmed", "Programmed", "Resource programmed")
    };
    let listeners: Vec<Value> = state
        .listeners
        .iter()
        .map(|l| {
            let accepted =
                Condition::from_result("Accepted", "Accepted", "No errors found", &l.accepted);
            let conflicted = match &l.conflict {
                Some((reason, msg)) => Condition::ok("Conflicted", reason, msg.clone()),
                None => Condition::not("Conflicted", "NoConflicts", "No errors found"),
            };
            let programmed = if l.usable() && l.resolved.is_ok() {
                Condition::ok("Programmed", "Programmed", "No errors found")
            } else {
                Condition::not(
                    "Programmed",
                    "Invalid",
                    "the listener is not served; see its other conditions",
                )
            };
            let resolved = Condition::from_result(
                "ResolvedRefs",
                "ResolvedRefs",
                "No errors found",
                &l.resolved,
            );
            let conditions: Vec<Value> = [accepted, conflicted, programmed, resolved]
                .iter()
                .map(|c| c.to_json(generation))
                .collect();
            let kinds: Vec<Value> = l
                .kinds
                .iter()
                .map(|k| json!({"group": GROUP, "kind": k}))
                .collect();
            json!({
                "name": l.listener.name,
                "supportedKinds": kinds,
                "attachedRoutes": l.attached,
                "conditions": conditions,
            })
        })
        .collect();
    ObjectStatus {
        kind: Kind::KubeGateway,
        namespace: Some(ns.to_string()),
        name: g.metadata.name.clone().unwrap_or_default(),
        status: json!({
            "addresses": addresses,
            "conditions": [accepted.to_json(generation), programmed.to_json(generation)],
            "listeners": listeners,
        }),
    }
}
