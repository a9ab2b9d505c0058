//! The discovery protocol, session by session: delta correctness against a full recompute over
//! random change sequences, ACK/NACK, on-demand lookups and resync with the versions a client
//! already holds.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;

use mesh_api::proto::discovery::v1 as pb;
use mesh_api::proto::state::v1 as state;
use mesh_pilot::discovery::session::Session;
use mesh_pilot::discovery::{Generation, SERVICE_TYPE, Status, WORKLOAD_TYPE};
use mesh_pilot::testing;
use mesh_pilot::translate::{self, ProxyNode};
use prost::Message;

/// A client that holds what it was sent, as a proxy does.
#[derive(Default)]
struct Client {
    held: BTreeMap<(String, String), (String, Vec<u8>)>,
    /// Names answered as removed or not found.
    removed: Vec<String>,
}

impl Client {
    /// Applies every response; returns the ACKs.
    fn apply(
        &mut self,
        responses: Vec<pb::DeltaDiscoveryResponse>,
    ) -> Vec<pb::DeltaDiscoveryRequest> {
        responses
            .into_iter()
            .map(|r| {
                for res in r.resources {
                    let body = res.resource.unwrap().value;
                    self.held
                        .insert((r.type_url.clone(), res.name), (res.version, body));
                }
                for name in r.removed_resources {
                    self.held.remove(&(r.type_url.clone(), name.clone()));
                    self.removed.push(name);
                }
                ack(&r.type_url, &r.nonce)
            })
            .collect()
    }

    fn services(&self) -> BTreeMap<String, state::Service> {
        self.held
            .iter()
            .filter(|((t, _), _)| t == SERVICE_TYPE)
            .map(|((_, n), (_, b))| (n.clone(), state::Service::decode(b.as_slice()).unwrap()))
            .collect()
    }
}

fn ack(type_url: &str, nonce: &str) -> pb::DeltaDiscoveryRequest {
    pb::DeltaDiscoveryRequest {
        type_url: type_url.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

fn subscribe(type_url: &str) -> pb::DeltaDiscoveryRequest {
    pb::DeltaDiscoveryRequest {
        type_url: type_url.into(),
        ..Default::default()
    }
}

/// Runs the session until nothing more is due.
fn settle(session: &mut Session, client: &mut Client) -> usize {
    let mut rounds = 0;
    loop {
        let responses = session.responses();
        if responses.is_empty() {
            return rounds;
        }
        rounds += 1;
        for a in client.apply(responses) {
            session.request(&a).unwrap();
        }
    }
}

fn node() -> ProxyNode {
    testing::node("shop", "client", &[("app", "client")], "10.1.0.1")
}

/// A random mesh: services in `shop` and `other`, endpoints, an optional split.
fn random_yaml(rng: &mut fastrand::Rng) -> String {
    let mut y = String::new();
    for ns in ["shop", "other"] {
        for i in 0..rng.usize(1..6) {
            y += &format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: {ns}}}\nspec:\n  clusterIP: 10.96.{}.{i}\n  selector: {{app: s{i}}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\n",
                if ns == "shop" { 1 } else { 2 }
            );
            for e in 0..rng.usize(0..4) {
                let version = if rng.bool() { "v1" } else { "v2" };
                y += &format!(
                    "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: s{i}-{e}, namespace: {ns}}}\nspec:\n  address: 10.2.{i}.{}\n  labels: {{app: s{i}, version: {version}}}\n---\n",
                    e + rng.usize(0..3) * 10
                );
            }
        }
    }
    if rng.bool() {
        let a = rng.u32(0..=100);
        y += &format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: s0, namespace: shop}}\nspec:\n  hosts: [s0]\n  http:\n  - route:\n    - destination: {{host: s0, subset: v1}}\n      weight: {a}\n    - destination: {{host: s0.other.svc.cluster.local}}\n      weight: {}\n",
            100 - a
        );
    }
    y
}

use testing::generation;

/// What the client should hold: its namespace's services and what their routes send to.
fn expected(generation: &Generation, node: &ProxyNode) -> BTreeMap<String, state::Service> {
    let full = translate::view(&generation.model, node).state;
    let mut want: BTreeMap<String, state::Service> = full
        .services
        .iter()
        .filter(|s| s.namespace == node.namespace)
        .map(|s| (s.hostname.clone(), s.clone()))
        .collect();
    let dests: Vec<String> = want
        .values()
        .flat_map(|s| {
            s.http_routes
                .iter()
                .flat_map(|r| r.destinations.iter().map(|d| d.host.clone()))
        })
        .collect();
    for d in dests {
        if let Some(s) = full.services.iter().find(|s| s.hostname == d) {
            want.insert(d, s.clone());
        }
    }
    want
}

#[test]
fn deltas_always_add_up_to_a_full_recompute() {
    let mut rng = fastrand::Rng::with_seed(7);
    let status = Status::default();
    let first = generation(1, &random_yaml(&mut rng));
    let mut session = Session::new(node(), first.clone(), status.clone());
    let mut client = Client::default();
    session.request(&subscribe(WORKLOAD_TYPE)).unwrap();
    session.request(&subscribe(SERVICE_TYPE)).unwrap();
    settle(&mut session, &mut client);
    assert_eq!(client.services(), expected(&first, &node()));
    let mut sent_bytes = 0usize;
    for version in 2..300 {
        let g = generation(version, &random_yaml(&mut rng));
        session.generation(g.clone());
        let responses = session.responses();
        sent_bytes += responses.iter().map(Message::encoded_len).sum::<usize>();
        for a in client.apply(responses) {
            session.request(&a).unwrap();
        }
        settle(&mut session, &mut client);
        assert_eq!(
            client.services(),
            expected(&g, &node()),
            "after generation {version}"
        );
        let s = &status.all()[0];
        assert_eq!(s.acked_version, Some(version));
    }
    assert!(sent_bytes > 0);
}

#[test]
fn unchanged_generation_sends_nothing_and_one_endpoint_sends_one_service() {
    let mut rng = fastrand::Rng::with_seed(3);
    let yaml = random_yaml(&mut rng);
    let mut session = Session::new(node(), generation(1, &yaml), Status::default());
    let mut client = Client::default();
    session.request(&subscribe(SERVICE_TYPE)).unwrap();
    settle(&mut session, &mut client);
    session.generation(generation(2, &yaml));
    assert!(
        session.responses().is_empty(),
        "nothing changed, nothing is sent"
    );
    let more = yaml.clone()
        + "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: extra, namespace: shop}\nspec:\n  address: 10.3.0.9\n  labels: {app: s0}\n";
    session.generation(generation(3, &more));
    let r = session.responses();
    assert_eq!(r.len(), 1);
    let names: Vec<&str> = r[0].resources.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(names, vec!["s0.shop.svc.cluster.local"]);
}

#[test]
fn a_nack_is_recorded_and_the_previous_state_kept() {
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: shop}\nspec:\n  selector: {app: a}\n  ports: [{name: http, port: 80}]\n";
    let status = Status::default();
    let mut session = Session::new(node(), generation(1, yaml), status.clone());
    let mut client = Client::default();
    session.request(&subscribe(SERVICE_TYPE)).unwrap();
    settle(&mut session, &mut client);
    let b = format!("{yaml}---\n{}", yaml.replace("name: a", "name: b"));
    session.generation(generation(2, &b));
    let r = session.responses();
    assert_eq!(r.len(), 1);
    session
        .request(&pb::DeltaDiscoveryRequest {
            type_url: SERVICE_TYPE.into(),
            response_nonce: r[0].nonce.clone(),
            error_detail: Some(pb::ErrorDetail {
                code: 3,
                message: "services[0].ports[0].protocol: unknown".into(),
            }),
            ..Default::default()
        })
        .unwrap();
    let s = &status.all()[0];
    assert_eq!(s.acked_version, Some(1));
    assert!(
        s.nack.as_deref().unwrap().contains("protocol: unknown"),
        "{s:?}"
    );
    assert!(
        session.responses().is_empty(),
        "a refused response is not re-sent as is"
    );
    // The next change sends everything the client lacks since its last ACK.
    let c = format!("{b}---\n{}", yaml.replace("name: a", "name: c"));
    session.generation(generation(3, &c));
    let r = session.responses();
    let mut names: Vec<&str> = r[0].resources.iter().map(|x| x.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        vec!["b.shop.svc.cluster.local", "c.shop.svc.cluster.local"]
    );
    client.apply(r.clone());
    session.request(&ack(SERVICE_TYPE, &r[0].nonce)).unwrap();
    assert_eq!(status.all()[0].nack, None);
    assert_eq!(status.all()[0].acked_version, Some(3));
}

#[test]
fn on_demand_by_host_and_address_and_not_found() {
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: far, namespace: other}\nspec:\n  clusterIP: 10.96.9.9\n  ports: [{name: http, port: 80}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: hidden, namespace: other, annotations: {networking.istio.io/exportTo: \".\"}}\nspec:\n  ports: [{name: http, port: 80}]\n";
    let mut session = Session::new(node(), generation(1, yaml), Status::default());
    let mut client = Client::default();
    session.request(&subscribe(SERVICE_TYPE)).unwrap();
    settle(&mut session, &mut client);
    assert!(
        client.services().is_empty(),
        "other namespaces only on demand"
    );
    let lookup = |target| pb::DeltaDiscoveryRequest {
        type_url: SERVICE_TYPE.into(),
        on_demand: vec![pb::OnDemandLookup {
            target: Some(target),
        }],
        ..Default::default()
    };
    use pb::on_demand_lookup::Target;
    session
        .request(&lookup(Target::Address("10.96.9.9:80".into())))
        .unwrap();
    settle(&mut session, &mut client);
    assert!(
        client
            .services()
            .contains_key("far.other.svc.cluster.local")
    );
    session
        .request(&lookup(Target::Host("far.other".into())))
        .unwrap();
    assert_eq!(
        settle(&mut session, &mut client),
        1,
        "a repeated lookup is answered"
    );
    session
        .request(&lookup(Target::Host("hidden.other".into())))
        .unwrap();
    session
        .request(&lookup(Target::Host("nowhere".into())))
        .unwrap();
    settle(&mut session, &mut client);
    assert!(
        client.removed.contains(&"hidden.other".to_string()),
        "not exported to shop"
    );
    assert!(client.removed.contains(&"nowhere".to_string()));
}

#[test]
fn resync_sends_only_what_changed_since_the_versions_held() {
    let mut rng = fastrand::Rng::with_seed(11);
    let yaml = random_yaml(&mut rng);
    let g = generation(1, &yaml);
    let mut session = Session::new(node(), g.clone(), Status::default());
    let mut client = Client::default();
    session.request(&subscribe(SERVICE_TYPE)).unwrap();
    settle(&mut session, &mut client);
    drop(session);
    // Pilot restarts with the same config: the client says what it holds.
    let mut session = Session::new(node(), generation(1, &yaml), Status::default());
    let held = client
        .held
        .iter()
        .map(|((_, n), (v, _))| (n.clone(), v.clone()))
        .collect();
    session
        .request(&pb::DeltaDiscoveryRequest {
            type_url: SERVICE_TYPE.into(),
            initial_resource_versions: held,
            ..Default::default()
        })
        .unwrap();
    let r = session.responses();
    assert!(r.len() == 1 && r[0].resources.is_empty() && r[0].removed_resources.is_empty());
}

#[test]
fn unknown_types_are_refused() {
    let mut session = Session::new(node(), generation(1, ""), Status::default());
    let err = session
        .request(&subscribe("type.example/Nope"))
        .unwrap_err();
    assert!(err.to_string().contains("unknown resource type"));
}

#[test]
fn what_a_proxy_will_not_enforce_is_in_its_status_and_goes_when_fixed() {
    let base = "apiVersion: v1\nkind: Service\nmetadata: {name: inventory, namespace: shop}\nspec:\n  selector: {app: inventory}\n  ports: [{name: http, port: 80}]\n";
    let breaker = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: inventory-cb, namespace: shop}\nspec:\n  host: inventory\n  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 1}\n    loadBalancer: {warmupDurationSecs: 10s}\n";
    let custom = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ext, namespace: shop}\nspec:\n  selector: {matchLabels: {app: client}}\n  action: CUSTOM\n  provider: {name: opa}\n  rules: [{}]\n";
    let status = Status::default();
    let yaml = format!("{base}{breaker}{custom}");
    let mut session = Session::new(node(), generation(1, &yaml), status.clone());
    let mut client = Client::default();
    session.request(&subscribe(SERVICE_TYPE)).unwrap();
    session.request(&subscribe(WORKLOAD_TYPE)).unwrap();
    settle(&mut session, &mut client);
    let s = &status.all()[0];
    assert_eq!(
        s.not_enforced_services,
        vec!["DestinationRule shop/inventory-cb: spec.trafficPolicy.loadBalancer.warmupDurationSecs: accepted, not enforced yet: new endpoints get their full share at once".to_string()],
        "{s:?}"
    );
    assert_eq!(s.not_enforced_workload.len(), 1, "{s:?}");
    assert!(
        s.not_enforced_workload[0].starts_with(
            "AuthorizationPolicy shop/ext: spec.provider.name: provider \"opa\" is not among the mesh configuration's extensionProviders"
        ),
        "{s:?}"
    );
    // Without the DestinationRule: nothing left to report for services.
    session.generation(generation(2, &format!("{base}{custom}")));
    settle(&mut session, &mut client);
    let s = &status.all()[0];
    assert!(s.not_enforced_services.is_empty(), "{s:?}");
    assert_eq!(s.not_enforced_workload.len(), 1, "{s:?}");
    // A provider the registry cannot resolve is reported too: its checks fail.
    let mesh = |service: &str| {
        format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: |\n    extensionProviders:\n    - name: opa\n      envoyExtAuthzGrpc: {{service: {service}, port: 9191}}\n"
        )
    };
    let opa = "---\napiVersion: v1\nkind: Service\nmetadata: {name: opa, namespace: shop}\nspec:\n  selector: {app: opa}\n  ports: [{name: grpc, port: 9191}]\n";
    session.generation(generation(
        3,
        &format!("{base}{custom}{}", mesh("opa.elsewhere.svc.cluster.local")),
    ));
    settle(&mut session, &mut client);
    let s = &status.all()[0];
    assert_eq!(s.not_enforced_workload.len(), 1, "{s:?}");
    assert!(
        s.not_enforced_workload[0].contains("names a service the registry does not have"),
        "{s:?}"
    );
    // With the provider in the mesh configuration and its service known, CUSTOM is enforced.
    session.generation(generation(
        4,
        &format!(
            "{base}{custom}{opa}{}",
            mesh("shop/opa.shop.svc.cluster.local")
        ),
    ));
    settle(&mut session, &mut client);
    let s = &status.all()[0];
    assert!(s.not_enforced_workload.is_empty(), "{s:?}");
    // A setting of the provider that is not acted on yet is reported for the proxy using it.
    let with_body = mesh("shop/opa.shop.svc.cluster.local").replace(
        "port: 9191}",
        "port: 9191, includeRequestBodyInCheck: {maxRequestBytes: 1024}}",
    );
    session.generation(generation(5, &format!("{base}{custom}{opa}{with_body}")));
    settle(&mut session, &mut client);
    let s = &status.all()[0];
    assert_eq!(
        s.not_enforced_workload,
        vec!["ConfigMap istio-system/istio: data.mesh.extensionProviders[\"opa\"].envoyExtAuthzGrpc.includeRequestBodyInCheck: accepted, not enforced yet: the request body is not sent to the authorizer yet; checks carry the headers only".to_string()],
        "{s:?}"
    );
}

/// Pushes, refusals and convergence times are counted as istiod names them, and rendered for
/// Prometheus.
#[test]
fn pushes_and_refusals_are_counted_for_prometheus() {
    let mut rng = fastrand::Rng::with_seed(5);
    let status = Status::default();
    let mut session = Session::new(
        node(),
        generation(1, &random_yaml(&mut rng)),
        status.clone(),
    );
    session.request(&subscribe(WORKLOAD_TYPE)).unwrap();
    session.request(&subscribe(SERVICE_TYPE)).unwrap();
    let responses = session.responses();
    assert_eq!(responses.len(), 2, "one of each type");
    // The services' response is refused.
    let services = responses
        .iter()
        .find(|r| r.type_url == SERVICE_TYPE)
        .unwrap();
    session
        .request(&pb::DeltaDiscoveryRequest {
            type_url: SERVICE_TYPE.into(),
            response_nonce: services.nonce.clone(),
            error_detail: Some(pb::ErrorDetail {
                code: 3,
                message: "bad".into(),
            }),
            ..Default::default()
        })
        .unwrap();
    let text = status.metrics.render(1, 1, 2);
    for line in [
        "pilot_xds 1\n",
        "pilot_xds_pushes{type=\"workload\"} 1\n",
        "pilot_xds_pushes{type=\"services\"} 1\n",
        "pilot_total_xds_rejects 1\n",
        "pilot_proxy_convergence_time_bucket{le=\"+Inf\"} 2\n",
        "pilot_proxy_convergence_time_count 2\n",
        "pilot_xds_push_time_bucket{le=\"+Inf\"} 2\n",
        "# TYPE pilot_xds_push_time histogram\n",
        "mesh_pilot_config_generation 1\n",
        "mesh_pilot_rejected_configs 2\n",
        "# TYPE pilot_proxy_convergence_time histogram\n",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
}
