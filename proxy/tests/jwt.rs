//! RequestAuthentication: where tokens are read, every accepted algorithm, what is output to
//! the app, and the hardening cases (alg none, HS256 with the public key, expired, nbf in the
//! future, wrong issuer or audience, bad signature, oversized, key set unreachable, unknown kid).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use jsonwebtoken::Algorithm;
use mesh_proxy::authn::jwks::{Cache, Fetch};
use mesh_proxy::authn::{Authenticator, Refused};
use mesh_proxy::state::proto;
use mesh_proxy::testing::jwt::{self, Issuer};
use serde_json::json;

const ISS: &str = "https://issuer.test";

fn policy(spec: serde_json::Value) -> proto::Policy {
    proto::Policy {
        name: "jwt".into(),
        namespace: "default".into(),
        spec_json: spec.to_string(),
        dry_run: false,
    }
}

fn inline(issuer: &Issuer, extra: serde_json::Value) -> Authenticator {
    let mut rule = json!({"issuer": issuer.iss, "jwks": issuer.jwks()});
    rule.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    Authenticator::compile(&[policy(json!({"jwtRules": [rule]}))]).unwrap()
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h
}

async fn check(a: &Authenticator, token: &str) -> Result<Option<String>, Refused> {
    let mut h = bearer(token);
    a.authenticate(&mut h, "", None)
        .await
        .map(|v| v.map(|v| v.principal))
}

#[tokio::test]
async fn every_accepted_algorithm_verifies() {
    let issuer = Issuer::new(ISS);
    let a = inline(&issuer, json!({}));
    // ring checks the signatures (as in the proxy), and so every case below.
    assert!(mesh_proxy::authn::ring_crypto::installed());
    for alg in [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ] {
        let token = issuer.sign(alg, &issuer.claims("alice", "orders"));
        assert_eq!(
            check(&a, &token).await,
            Ok(Some(format!("{ISS}/alice"))),
            "{alg:?}"
        );
    }
}

#[tokio::test]
async fn no_token_passes_unauthenticated_unless_required() {
    let issuer = Issuer::new(ISS);
    let a = inline(&issuer, json!({}));
    let mut h = HeaderMap::new();
    assert_eq!(a.authenticate(&mut h, "", None).await, Ok(None));
    let required = inline(&issuer, json!({"presence": "REQUIRED"}));
    assert_eq!(
        required.authenticate(&mut h, "", None).await,
        Err(Refused("Jwt is missing".into()))
    );
}

#[tokio::test]
async fn hardening_cases_are_refused() {
    let issuer = Issuer::new(ISS);
    let a = inline(&issuer, json!({"audiences": ["orders"]}));
    let now = jsonwebtoken::get_current_timestamp();
    let good = issuer.claims("alice", "orders");
    let refused = |why: &str| Err(Refused(why.into()));
    assert!(mesh_proxy::authn::ring_crypto::installed());

    // alg none: no key verifies it.
    assert!(check(&a, &jwt::unsigned(&good)).await.is_err());
    // HS256 "signed" with the published RSA public key as the secret.
    let public = jwt::RSA_JWK.as_bytes();
    assert!(check(&a, &jwt::hmac(&good, public, "rsa-1")).await.is_err());
    // Expired (beyond the 60 s clock skew), and not valid yet.
    let mut expired = good.clone();
    expired["exp"] = json!(now - 600);
    assert_eq!(
        check(&a, &issuer.sign(Algorithm::RS256, &expired)).await,
        refused("Jwt is expired")
    );
    let mut early = good.clone();
    early["nbf"] = json!(now + 600);
    assert_eq!(
        check(&a, &issuer.sign(Algorithm::ES256, &early)).await,
        refused("Jwt not yet valid")
    );
    // Another issuer's token, and one signed by keys this issuer does not publish.
    let other = Issuer::new("https://other.test");
    assert_eq!(
        check(
            &a,
            &other.sign(Algorithm::ES256, &other.claims("eve", "orders"))
        )
        .await,
        refused("Jwt issuer is not configured")
    );
    let impostor = Issuer::new(ISS);
    assert_eq!(
        check(&a, &impostor.sign(Algorithm::ES256, &good)).await,
        refused("Jwt verification fails")
    );
    // Wrong audience, and none.
    assert_eq!(
        check(
            &a,
            &issuer.sign(Algorithm::RS256, &issuer.claims("alice", "billing"))
        )
        .await,
        refused("Audiences in Jwt are not allowed")
    );
    let mut no_aud = good.clone();
    no_aud.as_object_mut().unwrap().remove("aud");
    assert_eq!(
        check(&a, &issuer.sign(Algorithm::RS256, &no_aud)).await,
        refused("Audiences in Jwt are not allowed")
    );
    // A payload changed after signing.
    let token = issuer.sign(Algorithm::RS256, &good);
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    let mut tampered = good.clone();
    tampered["sub"] = json!("admin");
    parts[1] = base64_url(&tampered.to_string());
    assert_eq!(
        check(&a, &parts.join(".")).await,
        refused("Jwt verification fails")
    );
    // Oversized.
    let mut big = good.clone();
    big["pad"] = json!("x".repeat(20_000));
    let result = check(&a, &issuer.sign(Algorithm::ES256, &big)).await;
    assert!(
        matches!(&result, Err(Refused(m)) if m.starts_with("Jwt is too large")),
        "{result:?}"
    );
    // A kid the key set does not hold.
    assert_eq!(
        check(&a, &issuer.sign_with(Algorithm::ES256, Some("nope"), &good)).await,
        refused("Jwks doesn't have key to match kid or alg from Jwt")
    );
    // Garbage.
    assert_eq!(
        check(&a, "not-a-token").await,
        refused("Jwt is not in the form of Header.Payload.Signature")
    );
}

fn base64_url(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

#[tokio::test]
async fn tokens_are_read_where_the_rule_says() {
    let issuer = Issuer::new(ISS);
    let token = issuer.sign(Algorithm::ES256, &issuer.claims("bob", "x"));
    let a = inline(
        &issuer,
        json!({"fromHeaders": [{"name": "x-jwt", "prefix": "Token "}],
               "fromParams": ["jwt"], "fromCookies": ["session"]}),
    );
    let principal = Some(format!("{ISS}/bob"));
    let mut h = HeaderMap::new();
    h.insert(
        "x-jwt",
        HeaderValue::from_str(&format!("Token {token}")).unwrap(),
    );
    assert_eq!(
        a.authenticate(&mut h, "", None)
            .await
            .unwrap()
            .map(|v| v.principal),
        principal
    );
    assert!(h.get("x-jwt").is_none(), "not forwarded by default");
    let mut h = HeaderMap::new();
    assert_eq!(
        a.authenticate(&mut h, &format!("a=1&jwt={token}"), None)
            .await
            .unwrap()
            .map(|v| v.principal),
        principal
    );
    h.insert(
        http::header::COOKIE,
        HeaderValue::from_str(&format!("theme=dark; session={token}")).unwrap(),
    );
    assert_eq!(
        a.authenticate(&mut h, "", None)
            .await
            .unwrap()
            .map(|v| v.principal),
        principal
    );
    // The default places are not read when the rule names its own.
    assert_eq!(
        a.authenticate(&mut bearer(&token), "", None).await,
        Ok(None)
    );
    // By default: Authorization: Bearer, and the access_token parameter.
    let d = inline(&issuer, json!({}));
    let mut h = HeaderMap::new();
    assert_eq!(
        d.authenticate(&mut h, &format!("access_token={token}"), None)
            .await
            .unwrap()
            .map(|v| v.principal),
        principal
    );
}

#[tokio::test]
async fn verified_claims_are_output_and_spoofed_ones_removed() {
    let issuer = Issuer::new(ISS);
    let a = inline(
        &issuer,
        json!({"outputPayloadToHeader": "x-jwt-payload",
               "outputClaimToHeaders": [{"header": "x-user", "claim": "sub"},
                                        {"header": "x-team", "claim": "org.team"}],
               "forwardOriginalToken": true}),
    );
    let mut claims = issuer.claims("carol", "x");
    claims["org"] = json!({"team": "payments"});
    claims["scope"] = json!("read write");
    let token = issuer.sign(Algorithm::ES384, &claims);
    let mut h = bearer(&token);
    let v = a.authenticate(&mut h, "", None).await.unwrap().unwrap();
    assert_eq!(h["x-user"], "carol");
    assert_eq!(h["x-team"], "payments");
    assert_eq!(h["x-jwt-payload"], token.split('.').nth(1).unwrap());
    assert!(h.get(http::header::AUTHORIZATION).is_some(), "forwarded");
    assert_eq!(v.claims["scope"], json!(["read", "write"]));
    assert_eq!(v.audiences, ["x"]);
    // Without a token, what a caller sends in those headers does not reach the app.
    let mut h = HeaderMap::new();
    h.insert("x-user", HeaderValue::from_static("admin"));
    assert_eq!(a.authenticate(&mut h, "", None).await, Ok(None));
    assert!(h.get("x-user").is_none());
}

/// Serves key sets in turn and counts fetches.
struct Rotating {
    sets: Vec<String>,
    fetches: Arc<AtomicUsize>,
}

impl Fetch for Rotating {
    fn fetch(
        &self,
        _uri: &str,
        _timeout: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send + '_>>
    {
        let n = self.fetches.fetch_add(1, Ordering::SeqCst);
        let set = self.sets.get(n).or(self.sets.last()).cloned();
        Box::pin(async move { set.ok_or_else(|| "connection refused".to_string()) })
    }
}

fn by_uri() -> Authenticator {
    Authenticator::compile(&[policy(json!({"jwtRules": [
        {"issuer": ISS, "jwksUri": "http://keys.default.svc.cluster.local/jwks.json"}
    ]}))])
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn fetched_keys_are_cached_and_rotated_by_kid() {
    let issuer = Issuer::new(ISS);
    let fetches = Arc::new(AtomicUsize::new(0));
    let cache = Cache::new(Box::new(Rotating {
        sets: vec![issuer.jwks_of(&["rsa-1"]), issuer.jwks()],
        fetches: fetches.clone(),
    }));
    let a = by_uri();
    let rsa = issuer.sign(Algorithm::RS256, &issuer.claims("a", "x"));
    for _ in 0..3 {
        assert!(
            a.authenticate(&mut bearer(&rsa), "", Some(&cache))
                .await
                .unwrap()
                .is_some()
        );
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "cached");
    // A key rotated in at the issuer: the unknown kid makes one early fetch.
    let ec = issuer.sign(Algorithm::ES256, &issuer.claims("a", "x"));
    let first = a.authenticate(&mut bearer(&ec), "", Some(&cache)).await;
    // The first fetch was just now; a refetch waits out the minimum interval.
    assert!(first.is_err(), "{first:?}");
    tokio::time::advance(mesh_proxy::authn::jwks::MIN_REFETCH).await;
    assert!(
        a.authenticate(&mut bearer(&ec), "", Some(&cache))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
    // After the cache period, a token verified before is remembered (it is not checked again,
    // so the stale key set is not fetched for it)...
    tokio::time::advance(mesh_proxy::authn::jwks::REFRESH).await;
    assert!(
        a.authenticate(&mut bearer(&rsa), "", Some(&cache))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(fetches.load(Ordering::SeqCst), 2, "a remembered token");
    // ...and a new one refreshes the key set.
    let fresh = issuer.sign(Algorithm::RS256, &issuer.claims("b", "x"));
    assert!(
        a.authenticate(&mut bearer(&fresh), "", Some(&cache))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(fetches.load(Ordering::SeqCst), 3, "refreshed");
}

#[tokio::test]
async fn a_remembered_token_is_the_same_bytes_and_still_checked_for_expiry() {
    let issuer = Issuer::new(ISS);
    let a = inline(&issuer, json!({}));
    let token = issuer.sign(Algorithm::ES256, &issuer.claims("alice", "orders"));
    for _ in 0..3 {
        assert_eq!(check(&a, &token).await, Ok(Some(format!("{ISS}/alice"))));
    }
    // One byte of the signature changed: not the remembered token, and refused.
    let at = token.len() - 10;
    let was = &token[at..=at];
    let forged = format!(
        "{}{}{}",
        &token[..at],
        if was == "A" { "B" } else { "A" },
        &token[at + 1..]
    );
    assert!(check(&a, &forged).await.is_err());
    // Already past exp (beyond the skew): refused, and never remembered.
    let now = jsonwebtoken::get_current_timestamp();
    let mut old = issuer.claims("alice", "orders");
    old["exp"] = json!(now - 120);
    let expired = issuer.sign(Algorithm::ES256, &old);
    for _ in 0..2 {
        assert_eq!(
            check(&a, &expired).await,
            Err(Refused("Jwt is expired".into()))
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_key_set_fails_closed() {
    let issuer = Issuer::new(ISS);
    let cache = Cache::new(Box::new(Rotating {
        sets: vec![],
        fetches: Arc::default(),
    }));
    let a = by_uri();
    let token = issuer.sign(Algorithm::RS256, &issuer.claims("a", "x"));
    let result = a.authenticate(&mut bearer(&token), "", Some(&cache)).await;
    assert!(
        matches!(&result, Err(Refused(m)) if m.starts_with("Jwks remote fetch is failed")),
        "{result:?}"
    );
    // No fetcher at all: refused too.
    let result = a.authenticate(&mut bearer(&token), "", None).await;
    assert!(result.is_err());
}
