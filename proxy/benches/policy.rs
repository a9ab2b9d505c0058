//! Security policy on the request path: AuthorizationPolicy evaluation (ten policies of every
//! action, the kinds of condition Istio users write) and JWT verification for each key type
//! RequestAuthentication accepts. Targets are in docs/performance.md; `cargo bench -p
//! mesh-proxy --bench policy` measures them.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::disallowed_types,
    missing_docs
)]

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use jsonwebtoken::Algorithm;
use mesh_proxy::authn::{Authenticator, Verified};
use mesh_proxy::authz::{Attributes, HttpAttributes, Policies};
use mesh_proxy::state::proto;
use mesh_proxy::testing::jwt::Issuer;
use serde_json::{Value, json};

fn policy(name: &str, spec: Value) -> proto::Policy {
    proto::Policy {
        name: name.into(),
        namespace: "default".into(),
        spec_json: spec.to_string(),
        dry_run: false,
    }
}

/// Ten policies on one workload: three DENY (a header, a path prefix under a `not` method, an
/// IP block), one AUDIT, six ALLOW (namespaces, principals with paths and methods, a JWT
/// claim, a port, SNI); the request matches only the last ALLOW rule, so every policy is
/// tried.
fn ten_policies() -> Policies {
    let mut ps = vec![
        policy(
            "deny-debug-header",
            json!({"action": "DENY", "rules": [{"when": [
                {"key": "request.headers[x-debug]", "values": ["1", "true"]}]}]}),
        ),
        policy(
            "deny-admin-writes",
            json!({"action": "DENY", "rules": [{"to": [{"operation": {
                "paths": ["/admin/*"], "notMethods": ["GET", "HEAD"]}}]}]}),
        ),
        policy(
            "deny-blocked-nets",
            json!({"action": "DENY", "rules": [{"from": [{"source": {
                "ipBlocks": ["203.0.113.0/24", "198.51.100.0/24"]}}]}]}),
        ),
        policy(
            "audit-exports",
            json!({"action": "AUDIT", "rules": [{"to": [{"operation": {
                "paths": ["*/export"]}}]}]}),
        ),
    ];
    for (i, ns) in ["payments", "billing", "fraud"].iter().enumerate() {
        ps.push(policy(
            &format!("allow-{ns}"),
            json!({"action": "ALLOW", "rules": [{"from": [{"source": {
                "namespaces": [ns]}}], "to": [{"operation": {"methods": ["POST"],
                "paths": [format!("/v{i}/charges"), "/healthz"]}}]}]}),
        ));
    }
    ps.push(policy(
        "allow-jwt-admins",
        json!({"action": "ALLOW", "rules": [{"when": [
            {"key": "request.auth.claims[groups]", "values": ["admins"]}]}]}),
    ));
    ps.push(policy(
        "allow-metrics-port",
        json!({"action": "ALLOW", "rules": [{"to": [{"operation": {"ports": ["15020"]}}],
            "when": [{"key": "connection.sni", "values": ["*.metrics.local"]}]}]}),
    ));
    ps.push(policy(
        "allow-frontend",
        json!({"action": "ALLOW", "rules": [{"from": [{"source": {
            "principals": ["cluster.local/ns/default/sa/frontend",
                           "cluster.local/ns/default/sa/order"]}}],
            "to": [{"operation": {"methods": ["GET", "POST"],
                "paths": ["/api/*", "/orders/{*}/items"], "hosts": ["shipping*"]}}]}]}),
    ));
    Policies::compile(&ps, &[]).unwrap()
}

fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "shipping-service:8080"),
        ("user-agent", "bench/1.0"),
        ("accept", "application/json"),
        ("x-request-id", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

fn authz(c: &mut Criterion) {
    let policies = ten_policies();
    let headers = request_headers();
    let source: SocketAddr = "10.88.0.7:41234".parse().unwrap();
    let destination: SocketAddr = "10.88.0.9:8080".parse().unwrap();
    let principal = "spiffe://cluster.local/ns/default/sa/order";
    let http = |path| {
        Some(HttpAttributes {
            host: "shipping-service:8080",
            method: "GET",
            path,
            headers: &headers,
            auth: None,
        })
    };
    let attributes = |path| Attributes {
        source,
        remote_ip: source.ip(),
        principal: Some(principal),
        destination,
        sni: Some("outbound_.8080_._.shipping-service.default.svc.cluster.local"),
        http: http(path),
    };
    let mut g = c.benchmark_group("authz");
    let allowed = attributes("/api/orders/42");
    assert!(!policies.evaluate(&allowed).denied);
    g.bench_function("ten_policies_allowed_by_the_last", |b| {
        b.iter(|| black_box(policies.evaluate(black_box(&allowed))).denied);
    });
    let denied = attributes("/internal/state");
    assert!(policies.evaluate(&denied).denied);
    g.bench_function("ten_policies_none_matches_denied", |b| {
        b.iter(|| black_box(policies.evaluate(black_box(&denied))).denied);
    });
    let tcp = Attributes {
        http: None,
        ..allowed
    };
    g.bench_function("ten_policies_tcp_connection", |b| {
        b.iter(|| black_box(policies.evaluate(black_box(&tcp))).denied);
    });
    let one = Policies::compile(
        &[policy(
            "allow-order",
            json!({"action": "ALLOW", "rules": [{"from": [{"source": {
            "principals": ["cluster.local/ns/default/sa/order"]}}]}]}),
        )],
        &[],
    )
    .unwrap();
    assert!(!one.evaluate(&allowed).denied);
    g.bench_function("one_allow_principal", |b| {
        b.iter(|| black_box(one.evaluate(black_box(&allowed))).denied);
    });
    g.finish();
}

/// Verifies `token` against `authn` (inline keys: nothing is awaited), returning the result.
fn verify(authn: &Authenticator, token: &str, rt: &tokio::runtime::Runtime) -> Option<Verified> {
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    rt.block_on(authn.authenticate(&mut headers, "", None))
        .unwrap()
}

fn jwt(c: &mut Criterion) {
    let issuer = Issuer::new("https://issuer.bench");
    let compile = || {
        Authenticator::compile(&[policy(
            "jwt",
            json!({"jwtRules": [{"issuer": issuer.iss, "jwks": issuer.jwks()}]}),
        )])
        .unwrap()
    };
    let authn = compile();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let claims = issuer.claims("user-1", "shipping");
    let mut g = c.benchmark_group("jwt");
    for (name, alg) in [
        ("verify_rs256", Algorithm::RS256),
        ("verify_ps256", Algorithm::PS256),
        ("verify_es256", Algorithm::ES256),
        ("verify_es384", Algorithm::ES384),
        ("verify_eddsa", Algorithm::EdDSA),
    ] {
        let token = issuer.sign(alg, &claims);
        assert!(verify(&compile(), &token, &rt).is_some(), "{name}");
        // A new authenticator each time (made outside the timing), so the signature is
        // checked on every iteration rather than remembered.
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                compile,
                |authn| verify(authn, black_box(&token), &rt),
                BatchSize::SmallInput,
            );
        });
    }
    // The same token on every request (a client's session): remembered after the first check.
    let token = issuer.sign(Algorithm::RS256, &claims);
    g.bench_function("remembered_rs256", |b| {
        b.iter(|| verify(&authn, black_box(&token), &rt));
    });
    let none = HeaderMap::new();
    g.bench_function("no_token", |b| {
        b.iter(|| {
            let mut h = none.clone();
            rt.block_on(authn.authenticate(&mut h, "", None)).unwrap()
        });
    });
    g.finish();
}

criterion_group!(benches, authz, jwt);
criterion_main!(benches);
