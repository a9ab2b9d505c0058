//! Istio Gateways → a gateway proxy's listeners: the seed's `gateway.yaml` as written, hosts
//! joined with the bound VirtualServices', namespace rules of server hosts, match-level
//! `gateways`, httpsRedirect, and what is left for later (non-HTTP servers) left out.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;

use mesh_api::proto::state::v1 as state;
use mesh_pilot::testing;
use mesh_pilot::translate::{ProxyNode, view};

fn ingress() -> ProxyNode {
    let mut n = testing::node(
        "istio-system",
        "istio-ingressgateway-service-account",
        &[("istio", "ingressgateway"), ("app", "istio-ingressgateway")],
        "10.1.9.9",
    );
    n.is_gateway = true;
    n
}

fn listeners(yaml: &str, node: &ProxyNode) -> Vec<state::GatewayListener> {
    let model = testing::model(&testing::resources(yaml));
    view(&model, node).state.gateway_listeners
}

fn sample(file: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../manifests/samples/order-app")
            .join(file),
    )
    .unwrap()
}

#[test]
fn the_seeds_gateway_serves_order_on_port_80() {
    let yaml = [sample("app.yaml"), sample("gateway.yaml")].join("\n---\n");
    let ls = listeners(&yaml, &ingress());
    assert_eq!(ls.len(), 1, "{ls:#?}");
    assert_eq!(ls[0].port, 80);
    assert_eq!(ls[0].protocol, state::Protocol::Http as i32);
    let host = &ls[0].hosts[0];
    assert_eq!(host.domains, ["*"]);
    assert!(!host.https_redirect);
    let routes = host.routes.as_ref().unwrap();
    assert_eq!(routes.namespace, "default");
    let r = &routes.http_routes[0];
    assert_eq!(
        r.matches[0].uri.as_ref().unwrap().kind,
        Some(state::string_match::Kind::Prefix("/order".into()))
    );
    assert_eq!(r.destinations[0].host, "order.default.svc.cluster.local");
    assert_eq!(r.destinations[0].port, 8080);
    // The gateway sees the services its routes name.
    let model = testing::model(&testing::resources(&yaml));
    let v = view(&model, &ingress());
    assert!(
        v.state
            .services
            .iter()
            .any(|s| s.hostname == "order.default.svc.cluster.local")
    );
    // A sidecar gets no listener, and the gateway-bound VirtualService routes none of its
    // traffic.
    let sidecar = testing::node("default", "order", &[("app", "order")], "10.1.0.1");
    let v = view(&model, &sidecar);
    assert!(v.state.gateway_listeners.is_empty());
    let order = v
        .state
        .services
        .iter()
        .find(|s| s.hostname == "order.default.svc.cluster.local")
        .unwrap();
    assert!(order.http_routes.is_empty(), "{order:?}");
    // A gateway whose labels the selector does not name gets nothing.
    let mut other = ingress();
    other
        .labels
        .insert("istio".into(), "eastwestgateway".into());
    assert!(listeners(&yaml, &other).is_empty());
}

const HOSTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: shop, namespace: shop}
spec:
  selector: {app: shop}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: blog, namespace: blog}
spec:
  selector: {app: blog}
  ports: [{name: http, port: 80}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["shop/*.example.com", "*/blog.example.org"]
  - port: {number: 8080, name: http-redirect, protocol: HTTP}
    hosts: ["*.example.com"]
    tls: {httpsRedirect: true}
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: SIMPLE, credentialName: shop-cert}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: shop}
spec:
  hosts: [shop.example.com]
  gateways: [istio-system/edge, mesh]
  http:
  - match:
    - uri: {prefix: /admin}
      gateways: [mesh]
    route:
    - destination: {host: shop, subset: admin}
  - route:
    - destination: {host: shop}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: blog, namespace: blog}
spec:
  hosts: ["*"]
  gateways: [istio-system/edge]
  http:
  - route:
    - destination: {host: blog}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: sneaky, namespace: blog}
spec:
  hosts: [shop.example.com]
  gateways: [istio-system/edge]
  http:
  - route:
    - destination: {host: blog}
"#;

#[test]
fn server_hosts_bind_virtual_services_by_namespace_and_host() {
    let ls = listeners(HOSTS, &ingress());
    // The HTTPS server waits for TLS termination: no listener on 443.
    assert_eq!(ls.iter().map(|l| l.port).collect::<Vec<_>>(), [80, 8080]);
    let http = &ls[0];
    let host = |name: &str| {
        http.hosts
            .iter()
            .find(|h| h.domains == [name])
            .and_then(|h| h.routes.as_ref())
            .unwrap_or_else(|| panic!("{name}: {http:#?}"))
    };
    // shop's VirtualService binds under `shop/*.example.com`; blog's `*` narrows to
    // blog.example.org; blog's claim on shop.example.com is refused by the namespace rule.
    assert_eq!(http.hosts.len(), 2, "{http:#?}");
    let shop = host("shop.example.com");
    assert_eq!(
        shop.http_routes.len(),
        1,
        "the mesh-only match is left out: {shop:#?}"
    );
    assert_eq!(
        shop.http_routes[0].destinations[0].host,
        "shop.shop.svc.cluster.local"
    );
    let blog = host("blog.example.org");
    assert_eq!(
        blog.http_routes[0].destinations[0].host,
        "blog.blog.svc.cluster.local"
    );
    // Port 8080 redirects every host of its server, routes or not.
    let redirect = &ls[1];
    assert!(
        redirect.hosts.iter().all(|h| h.https_redirect),
        "{redirect:#?}"
    );
    assert!(
        redirect
            .hosts
            .iter()
            .any(|h| h.domains == ["*.example.com"])
    );
}

const HTTPS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: shop, namespace: shop}
spec:
  selector: {app: shop}
  ports: [{name: http, port: 8080}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["shop/shop.example.com"]
    tls: {mode: SIMPLE, serverCertificate: /certs/shop.pem, privateKey: /certs/shop.key}
  - port: {number: 8443, name: https-partners, protocol: HTTPS}
    hosts: ["shop/shop.example.com"]
    tls: {mode: MUTUAL, serverCertificate: /certs/shop.pem, privateKey: /certs/shop.key, caCertificates: /certs/partners.pem}
  - port: {number: 9443, name: https-missing, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: SIMPLE, serverCertificate: /certs/gone.pem, privateKey: /certs/gone.key}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: shop}
spec:
  hosts: [shop.example.com]
  gateways: [istio-system/edge]
  http:
  - route:
    - destination: {host: shop}
"#;

#[test]
fn https_servers_carry_their_certificate_files() {
    let files = [
        ("/certs/shop.pem", "CHAIN"),
        ("/certs/shop.key", "KEY"),
        ("/certs/partners.pem", "PARTNERS"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .into();
    let model = mesh_pilot::model::Model::build(
        mesh_pilot::model::MeshConfig::default(),
        &testing::resources(HTTPS),
        files,
    );
    let ls = view(&model, &ingress()).state.gateway_listeners;
    // 9443's files were not read (the source reports that): no listener for it.
    assert_eq!(ls.iter().map(|l| l.port).collect::<Vec<_>>(), [443, 8443]);
    let simple = &ls[0].certificates[0];
    assert_eq!(simple.hosts, ["shop.example.com"]);
    assert_eq!(
        (
            simple.certificate_chain_pem.as_str(),
            simple.private_key_pem.as_str()
        ),
        ("CHAIN", "KEY")
    );
    assert_eq!(simple.ca_certificates_pem, "", "SIMPLE verifies no client");
    assert_eq!(ls[1].certificates[0].ca_certificates_pem, "PARTNERS");
    assert_eq!(
        ls[0].hosts[0].routes.as_ref().unwrap().http_routes[0].destinations[0].host,
        "shop.shop.svc.cluster.local"
    );
}

const CREDENTIALS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: shop, namespace: shop}
spec:
  selector: {app: shop}
  ports: [{name: http, port: 8080}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["shop.example.com"]
    tls: {mode: SIMPLE, credentialName: shop-credential}
  - port: {number: 8443, name: https-partners, protocol: HTTPS}
    hosts: ["shop.example.com"]
    tls: {mode: MUTUAL, credentialName: partner-credential}
  - port: {number: 9443, name: https-nothing, protocol: HTTPS}
    hosts: ["shop.example.com"]
    tls: {mode: SIMPLE, credentialName: nowhere}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: shop}
spec:
  hosts: [shop.example.com]
  gateways: [edge]
  http:
  - route:
    - destination: {host: shop}
---
# As `kubectl create -n istio-system secret tls shop-credential --cert=... --key=...` writes it.
apiVersion: v1
kind: Secret
type: kubernetes.io/tls
metadata: {name: shop-credential, namespace: istio-system}
data: {tls.crt: Q0hBSU4=, tls.key: S0VZ}
---
# As Istio's mutual TLS task makes it: a generic Secret and its -cacert companion.
apiVersion: v1
kind: Secret
metadata: {name: partner-credential, namespace: istio-system}
stringData: {cert: PCHAIN, key: PKEY}
---
apiVersion: v1
kind: Secret
metadata: {name: partner-credential-cacert, namespace: istio-system}
stringData: {cacert: PARTNERS}
---
# The same name in another namespace than the gateway's is not its credential.
apiVersion: v1
kind: Secret
type: kubernetes.io/tls
metadata: {name: nowhere, namespace: shop}
data: {tls.crt: Q0hBSU4=, tls.key: S0VZ}
"#;

#[test]
fn https_servers_take_their_certificates_from_credential_name_secrets() {
    let ls = listeners(CREDENTIALS, &ingress());
    assert_eq!(ls.iter().map(|l| l.port).collect::<Vec<_>>(), [443, 8443]);
    let simple = &ls[0].certificates[0];
    assert_eq!(
        (
            simple.certificate_chain_pem.as_str(),
            simple.private_key_pem.as_str(),
            simple.ca_certificates_pem.as_str()
        ),
        ("CHAIN", "KEY", "")
    );
    let mutual = &ls[1].certificates[0];
    assert_eq!(
        (
            mutual.certificate_chain_pem.as_str(),
            mutual.private_key_pem.as_str(),
            mutual.ca_certificates_pem.as_str()
        ),
        ("PCHAIN", "PKEY", "PARTNERS")
    );
}

const LAYER4: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  selector: {app: api}
  ports: [{name: tls, port: 443}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  selector: {app: db}
  ports: [{name: tcp, port: 5432}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: tls, protocol: TLS}
    hosts: ["*/api.example.com"]
    tls: {mode: PASSTHROUGH}
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.example.com]
  gateways: [istio-system/edge]
  tls:
  - match:
    - sniHosts: [api.example.com]
    route:
    - destination: {host: api, port: {number: 443}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: shop}
spec:
  hosts: ["*"]
  gateways: [istio-system/edge]
  tcp:
  - match:
    - port: 31400
    route:
    - destination: {host: db, port: {number: 5432}}
"#;

#[test]
fn passthrough_and_tcp_servers_carry_the_tls_and_tcp_routes_bound_to_them() {
    let model = testing::model(&testing::resources(LAYER4));
    let v = view(&model, &ingress());
    let ls = &v.state.gateway_listeners;
    assert_eq!(ls.iter().map(|l| l.port).collect::<Vec<_>>(), [443, 31400]);
    assert_eq!(ls[0].protocol, state::Protocol::Tls as i32);
    let tls = &ls[0].hosts[0].routes.as_ref().unwrap().tls_routes[0];
    assert_eq!(tls.sni_hosts, ["api.example.com"]);
    assert_eq!(tls.destinations[0].host, "api.shop.svc.cluster.local");
    assert_eq!(ls[1].protocol, state::Protocol::Tcp as i32);
    let tcp = &ls[1].hosts[0].routes.as_ref().unwrap().tcp_routes[0];
    assert_eq!((tcp.port, tcp.destinations[0].port), (31400, 5432));
    // The gateway's view holds the destinations.
    for host in ["api.shop.svc.cluster.local", "db.shop.svc.cluster.local"] {
        assert!(
            mesh_pilot::translate::gateway::destinations(&model, &ingress())
                .contains(&host.to_string()),
            "{host}"
        );
    }
}
