#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use http::HeaderMap;
use serde_json::json;

use super::*;
use crate::authn::Verified;

fn policy(name: &str, spec: serde_json::Value) -> proto::Policy {
    proto::Policy {
        name: name.into(),
        namespace: "default".into(),
        spec_json: spec.to_string(),
        dry_run: false,
    }
}

fn compile(policies: &[proto::Policy]) -> Policies {
    Policies::compile(policies, &[]).unwrap()
}

/// A request to be evaluated, with builders for what a test changes.
struct Req {
    source: SocketAddr,
    principal: Option<&'static str>,
    port: u16,
    sni: Option<&'static str>,
    http: bool,
    host: &'static str,
    method: &'static str,
    path: &'static str,
    headers: HeaderMap,
    auth: Option<Verified>,
}

fn req() -> Req {
    Req {
        source: "10.0.0.5:40000".parse().unwrap(),
        principal: Some("spiffe://cluster.local/ns/default/sa/order"),
        port: 8080,
        sni: None,
        http: true,
        host: "shipping.default.svc.cluster.local:8080",
        method: "GET",
        path: "/ship/42",
        headers: HeaderMap::new(),
        auth: None,
    }
}

impl Req {
    fn eval(&self, p: &Policies) -> Decision {
        let a = Attributes {
            source: self.source,
            remote_ip: self.source.ip(),
            principal: self.principal,
            destination: SocketAddr::new("10.0.0.9".parse().unwrap(), self.port),
            sni: self.sni,
            http: self.http.then_some(HttpAttributes {
                host: self.host,
                method: self.method,
                path: self.path,
                headers: &self.headers,
                auth: self.auth.as_ref(),
            }),
        };
        p.evaluate(&a)
    }

    fn allowed(&self, p: &Policies) -> bool {
        !self.eval(p).denied
    }
}

#[test]
fn no_policy_allows_and_an_empty_spec_denies_all() {
    assert!(req().allowed(&compile(&[])));
    let p = compile(&[policy("deny-all", json!({}))]);
    let d = req().eval(&p);
    assert!(d.denied);
    assert_eq!(d.reason(), "denied: no ALLOW policy matched");
}

#[test]
fn deny_with_an_empty_rule_denies_every_request_and_names_itself() {
    let p = compile(&[policy("deny-all", json!({"action": "DENY", "rules": [{}]}))]);
    let d = req().eval(&p);
    assert!(d.denied);
    assert_eq!(d.reason(), "denied by default/deny-all rules[0] (DENY)");
    // A DENY without rules matches nothing.
    assert!(req().allowed(&compile(&[policy("noop", json!({"action": "DENY"}))])));
}

#[test]
fn allow_all_with_an_empty_rule() {
    let p = compile(&[policy("allow-all", json!({"rules": [{}]}))]);
    assert!(req().allowed(&p));
}

#[test]
fn custom_then_deny_then_allow() {
    let allow = policy(
        "allow-get",
        json!({"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}),
    );
    let deny = policy(
        "deny-ship",
        json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/ship/*"]}}]}]}),
    );
    let p = compile(&[allow.clone(), deny]);
    let d = req().eval(&p);
    assert!(d.denied, "DENY wins over a matching ALLOW");
    assert_eq!(d.by.unwrap().policy.as_ref(), "default/deny-ship");
    let p = compile(std::slice::from_ref(&allow));
    assert!(req().allowed(&p));
    let mut post = req();
    post.method = "POST";
    assert!(
        !post.allowed(&p),
        "some ALLOW policy: what none matches is denied"
    );
    // CUSTOM: its authorizer is not available, so what it matches is denied (fail closed).
    let custom = policy(
        "ext",
        json!({"action": "CUSTOM", "provider": {"name": "opa"}, "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}),
    );
    let p = compile(&[allow, custom]);
    assert!(req().allowed(&p));
    let mut admin = req();
    admin.path = "/admin/x";
    let d = admin.eval(&p);
    assert!(d.denied && d.by.unwrap().action == Action::Custom);
}

#[test]
fn audit_never_changes_the_outcome() {
    let p = compile(&[policy("audit", json!({"action": "AUDIT", "rules": [{}]}))]);
    let d = req().eval(&p);
    assert!(!d.denied);
    assert_eq!(d.audited.len(), 1);
}

#[test]
fn dry_run_is_reported_not_enforced() {
    let mut deny = policy("deny-all", json!({"action": "DENY", "rules": [{}]}));
    deny.dry_run = true;
    let p = compile(&[deny]);
    let d = req().eval(&p);
    assert!(!d.denied);
    let shadow = d.dry_run.unwrap();
    assert!(shadow.denied);
    assert_eq!(
        shadow.reason(),
        "denied by default/deny-all rules[0] (DENY)"
    );
    // A dry-run ALLOW does not turn on "deny what no ALLOW matches".
    let mut allow = policy(
        "only-post",
        json!({"rules": [{"to": [{"operation": {"methods": ["POST"]}}]}]}),
    );
    allow.dry_run = true;
    let d = req().eval(&compile(&[allow]));
    assert!(!d.denied && d.dry_run.unwrap().denied);
}

fn allow_from(source: serde_json::Value) -> Policies {
    compile(&[policy(
        "p",
        json!({"rules": [{"from": [{"source": source}]}]}),
    )])
}

#[test]
fn sources() {
    let r = req();
    assert!(r.allowed(&allow_from(
        json!({"principals": ["cluster.local/ns/default/sa/order"]})
    )));
    assert!(r.allowed(&allow_from(json!({"principals": ["*/sa/order"]}))));
    assert!(r.allowed(&allow_from(json!({"principals": ["*"]}))));
    assert!(!r.allowed(&allow_from(
        json!({"principals": ["cluster.local/ns/default/sa/other"]})
    )));
    assert!(!r.allowed(&allow_from(
        json!({"notPrincipals": ["cluster.local/ns/default/sa/order"]})
    )));
    assert!(r.allowed(&allow_from(json!({"namespaces": ["default"]}))));
    assert!(!r.allowed(&allow_from(json!({"notNamespaces": ["default"]}))));
    assert!(r.allowed(&allow_from(json!({"ipBlocks": ["10.0.0.0/24"]}))));
    assert!(!r.allowed(&allow_from(json!({"notIpBlocks": ["10.0.0.5"]}))));
    assert!(r.allowed(&allow_from(json!({"remoteIpBlocks": ["10.0.0.0/8"]}))));
    assert!(!r.allowed(&allow_from(json!({"notRemoteIpBlocks": ["10.0.0.0/8"]}))));
    assert!(r.allowed(&allow_from(json!({"serviceAccounts": ["order"]}))));
    assert!(r.allowed(&allow_from(json!({"serviceAccounts": ["default/order"]}))));
    assert!(!r.allowed(&allow_from(json!({"serviceAccounts": ["other/order"]}))));
    // Fields of one source are AND-ed.
    assert!(!r.allowed(&allow_from(
        json!({"namespaces": ["default"], "ipBlocks": ["192.168.0.0/16"]})
    )));
    // A plaintext caller has no principal: principals never match it, notPrincipals do.
    let mut plain = req();
    plain.principal = None;
    assert!(!plain.allowed(&allow_from(json!({"principals": ["*"]}))));
    assert!(!plain.allowed(&allow_from(json!({"namespaces": ["default"]}))));
    assert!(plain.allowed(&allow_from(
        json!({"notPrincipals": ["cluster.local/ns/default/sa/order"]})
    )));
    // Request principals come from the verified JWT.
    let rp = allow_from(json!({"requestPrincipals": ["https://issuer.test/*"]}));
    assert!(!r.allowed(&rp), "no token, no request principal");
    let mut with_jwt = req();
    with_jwt.auth = Some(verified(json!({})));
    assert!(with_jwt.allowed(&rp));
    // "Require a token": DENY notRequestPrincipals *.
    let require = compile(&[policy(
        "require-jwt",
        json!({"action": "DENY", "rules": [{"from": [{"source": {"notRequestPrincipals": ["*"]}}]}]}),
    )]);
    assert!(!r.allowed(&require));
    assert!(with_jwt.allowed(&require));
}

fn verified(claims: serde_json::Value) -> Verified {
    Verified {
        principal: "https://issuer.test/alice".into(),
        audiences: vec!["orders".into()],
        presenter: Some("web".into()),
        claims,
    }
}

fn allow_to(op: serde_json::Value) -> Policies {
    compile(&[policy("p", json!({"rules": [{"to": [{"operation": op}]}]}))])
}

#[test]
fn operations() {
    let r = req();
    assert!(r.allowed(&allow_to(
        json!({"hosts": ["shipping.default.svc.cluster.local"]})
    )));
    assert!(r.allowed(&allow_to(json!({"hosts": ["SHIPPING.*"]}))));
    assert!(r.allowed(&allow_to(json!({"hosts": ["*.cluster.local:8080"]}))));
    assert!(!r.allowed(&allow_to(
        json!({"notHosts": ["shipping.default.svc.cluster.local"]})
    )));
    assert!(r.allowed(&allow_to(json!({"ports": ["8080"]}))));
    assert!(!r.allowed(&allow_to(json!({"notPorts": ["8080"]}))));
    assert!(r.allowed(&allow_to(json!({"methods": ["GET", "HEAD"]}))));
    assert!(!r.allowed(&allow_to(json!({"notMethods": ["GET"]}))));
    assert!(r.allowed(&allow_to(json!({"paths": ["/ship/42"]}))));
    assert!(r.allowed(&allow_to(json!({"paths": ["/ship/*"]}))));
    assert!(r.allowed(&allow_to(json!({"paths": ["*/42"]}))));
    assert!(r.allowed(&allow_to(json!({"paths": ["/ship/{*}"]}))));
    assert!(!r.allowed(&allow_to(json!({"paths": ["/ship"]}))));
    assert!(!r.allowed(&allow_to(json!({"notPaths": ["/ship/*"]}))));
}

fn allow_when(key: &str, values: &[&str]) -> Policies {
    compile(&[policy(
        "p",
        json!({"rules": [{"when": [{"key": key, "values": values}]}]}),
    )])
}

#[test]
fn conditions() {
    let mut r = req();
    r.headers.insert("x-user", "ops-1".parse().unwrap());
    r.sni = Some("outbound_.8080_._.shipping");
    assert!(r.allowed(&allow_when("request.headers[x-user]", &["ops-*"])));
    assert!(!r.allowed(&allow_when("request.headers[x-other]", &["*"])));
    assert!(r.allowed(&allow_when("source.ip", &["10.0.0.0/16"])));
    assert!(r.allowed(&allow_when("remote.ip", &["10.0.0.5"])));
    assert!(r.allowed(&allow_when("source.namespace", &["default"])));
    assert!(r.allowed(&allow_when(
        "source.principal",
        &["cluster.local/ns/default/sa/order"]
    )));
    assert!(r.allowed(&allow_when("destination.port", &["8080"])));
    assert!(!r.allowed(&allow_when("destination.port", &["9090"])));
    assert!(r.allowed(&allow_when("connection.sni", &["*.shipping"])));
    let not = compile(&[policy(
        "p",
        json!({"rules": [{"when": [{"key": "source.namespace", "notValues": ["default"]}]}]}),
    )]);
    assert!(!r.allowed(&not));
    // JWT attributes.
    r.auth = Some(verified(
        json!({"groups": ["admin", "dev"], "org": {"team": "ship"}, "level": 3}),
    ));
    assert!(r.allowed(&allow_when(
        "request.auth.principal",
        &["https://issuer.test/alice"]
    )));
    assert!(r.allowed(&allow_when("request.auth.audiences", &["orders"])));
    assert!(r.allowed(&allow_when("request.auth.presenter", &["web"])));
    assert!(r.allowed(&allow_when("request.auth.claims[groups]", &["admin"])));
    assert!(r.allowed(&allow_when("request.auth.claims[org][team]", &["ship"])));
    assert!(r.allowed(&allow_when("request.auth.claims[level]", &["3"])));
    assert!(!r.allowed(&allow_when("request.auth.claims[groups]", &["root"])));
    // Envoy filter metadata is not available: the condition never matches.
    assert!(!r.allowed(&allow_when("experimental.envoy.filters.a.b[c]", &["x"])));
}

#[test]
fn tcp_fails_closed_on_http_rules() {
    let mut tcp = req();
    tcp.http = false;
    // ALLOW: a rule that needs HTTP never matches TCP.
    let allow = allow_to(json!({"methods": ["GET"]}));
    assert!(!tcp.allowed(&allow));
    assert!(tcp.allowed(&allow_to(json!({"ports": ["8080"]}))));
    // DENY: the HTTP conditions are dropped, so the rest of the rule decides (denies more).
    let deny = compile(&[policy(
        "d",
        json!({"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["GET"], "ports": ["8080"]}}]}]}),
    )]);
    assert!(!tcp.allowed(&deny));
    let other_port = compile(&[policy(
        "d",
        json!({"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["GET"], "ports": ["9090"]}}]}]}),
    )]);
    assert!(tcp.allowed(&other_port));
}

#[test]
fn bad_policies_are_refused_with_their_field() {
    let err = Policies::compile(
        &[policy(
            "p",
            json!({"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/99"]}}]}]}),
        )],
        &[],
    )
    .unwrap_err();
    assert_eq!(err.policy, "default/p");
    assert_eq!(err.field, "spec.rules[0].from[0].source.ipBlocks[0]");
}
