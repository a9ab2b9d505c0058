//! Security policy on one inbound request, before it reaches the application:
//! RequestAuthentication (a token that fails is answered 401), then AuthorizationPolicy (a
//! denial is answered 403 `RBAC: access denied`). What decided is kept for the access log and,
//! with the debug setting, sent back in `x-mesh-authz`.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};

use super::ext_authz::{self, Subject, Verdict};
use super::{Body, reply};
use crate::authz::{Attributes, HttpAttributes};
use crate::inputs::Inputs;
use crate::state::State;

/// The debug response header naming the policy and rule that decided.
pub static X_MESH_AUTHZ: HeaderName = HeaderName::from_static("x-mesh-authz");

/// The caller, as policies see it.
pub struct Peer<'a> {
    /// Its address.
    pub addr: SocketAddr,
    /// The SPIFFE id it proved over mTLS.
    pub identity: Option<&'a str>,
    /// The TLS server name it sent.
    pub sni: Option<&'a str>,
}

/// What the policies said of a request that may go on.
#[derive(Default)]
pub struct Admitted {
    /// The access log's words, when some policy applies.
    pub log: Option<String>,
    /// The decision, for the debug header.
    pub reason: Option<String>,
    /// Headers external authorizers asked to set on the response.
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    /// The request's verified token, when a RequestAuthentication verified one.
    pub verified: Option<crate::authn::Verified>,
}

/// Marks a response a policy refused with why (for the access log's `denied_by`).
#[derive(Clone, Debug)]
pub struct DeniedBy(pub Arc<str>);

/// Authenticates and authorizes `req`. `Err` is the answer to send instead of forwarding,
/// with the access log's words (also in the response's [`DeniedBy`] extension).
pub async fn admit(
    req: &mut Request<Body>,
    peer: &Peer<'_>,
    dst: SocketAddr,
    inputs: &Arc<Inputs>,
    state: &State,
) -> Result<Admitted, (Response<Body>, String)> {
    admit_unmarked(req, peer, dst, inputs, state)
        .await
        .map_err(|(mut resp, words)| {
            resp.extensions_mut()
                .insert(DeniedBy(Arc::from(words.as_str())));
            (resp, words)
        })
}

async fn admit_unmarked(
    req: &mut Request<Body>,
    peer: &Peer<'_>,
    dst: SocketAddr,
    inputs: &Arc<Inputs>,
    state: &State,
) -> Result<Admitted, (Response<Body>, String)> {
    if state.authn.is_empty() && state.authz.is_empty() {
        return Ok(Admitted::default());
    }
    let verified = if state.authn.is_empty() {
        None
    } else {
        let query = req.uri().query().unwrap_or("").to_string();
        match state
            .authn
            .authenticate(req.headers_mut(), &query, inputs.jwks.get().map(|c| &**c))
            .await
        {
            Ok(v) => v,
            Err(refused) => {
                let mut resp = reply(StatusCode::UNAUTHORIZED, &refused.0);
                resp.headers_mut().insert(
                    hyper::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"mesh\", error=\"invalid_token\""),
                );
                return Err((resp, format!("RequestAuthentication: {}", refused.0)));
            }
        }
    };
    if state.authz.is_empty() {
        return Ok(Admitted {
            verified,
            ..Admitted::default()
        });
    }
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            req.headers()
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("");
    let attributes = Attributes {
        source: peer.addr,
        remote_ip: peer.addr.ip(),
        principal: peer.identity,
        destination: dst,
        sni: peer.sni,
        http: Some(HttpAttributes {
            host,
            method: req.method().as_str(),
            path: req.uri().path(),
            headers: req.headers(),
            auth: verified.as_ref(),
        }),
    };
    let decision = state.authz.evaluate(&attributes);
    // CUSTOM policies that matched: their authorizers are asked first, in order; the first
    // denial is the answer.
    let mut response_headers = Vec::new();
    let mut checked = String::new();
    for c in &decision.checks {
        let subject = Subject {
            source: peer.addr,
            principal: peer.identity,
            destination: dst,
            sni: peer.sni,
            request: Some(&*req),
        };
        match ext_authz::check(inputs, &c.authorizer, &subject).await {
            Verdict::Deny(resp, why) => {
                let words = format!(
                    "denied by {} rules[{}] (CUSTOM: {why})",
                    c.by.policy, c.by.rule
                );
                tracing::debug!(target: "authz", "inbound {} -> {dst}: {words}", peer.addr);
                return Err((resp, words));
            }
            Verdict::Allow(allowed) => {
                allowed.apply(req.headers_mut());
                response_headers.extend(allowed.downstream.iter().cloned());
                checked.push_str(&format!(
                    "; ext_authz {} allowed{}",
                    c.authorizer.name,
                    allowed
                        .failed_open
                        .as_deref()
                        .map(|w| format!(": {w}"))
                        .unwrap_or_default()
                ));
            }
        }
    }
    // The words are built only when an access log is written (off by default): an allowed
    // request with policies formats nothing.
    let logged = state.telemetry.logging();
    let mut words = String::new();
    if logged {
        words = decision.reason();
        for a in &decision.audited {
            words.push_str(&format!("; audited by {} rules[{}]", a.policy, a.rule));
        }
        words.push_str(&checked);
    }
    if let Some(shadow) = &decision.dry_run {
        if shadow.denied != decision.denied {
            tracing::info!(target: "authz", "inbound {} -> {dst} {} {}: dry-run: would be {}", peer.addr, req.method(), req.uri().path(), shadow.reason());
        }
        if logged {
            words.push_str(&format!("; dry run: would be {}", shadow.reason()));
        }
    }
    if decision.denied {
        if words.is_empty() {
            words = decision.reason();
        }
        let mut resp = reply(StatusCode::FORBIDDEN, "RBAC: access denied");
        if inputs.debug_authz
            && let Ok(v) = HeaderValue::from_str(&decision.reason())
        {
            resp.headers_mut().insert(X_MESH_AUTHZ.clone(), v);
        }
        tracing::debug!(target: "authz", "inbound {} -> {dst}: {}", peer.addr, decision.reason());
        return Err((resp, words));
    }
    Ok(Admitted {
        log: logged.then_some(words),
        reason: inputs.debug_authz.then(|| decision.reason()),
        response_headers,
        verified,
    })
}

/// Adds the debug header to an admitted request's response.
pub fn mark(resp: &mut Response<Body>, admitted: &Admitted, inputs: &Inputs) {
    for (name, value) in &admitted.response_headers {
        resp.headers_mut().insert(name.clone(), value.clone());
    }
    if !inputs.debug_authz {
        return;
    }
    if let Some(v) = admitted
        .reason
        .as_deref()
        .and_then(|r| HeaderValue::from_str(r).ok())
    {
        resp.headers_mut().insert(X_MESH_AUTHZ.clone(), v);
    }
}
