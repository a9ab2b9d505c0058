//! RequestAuthentication: JWTs checked on the workload's inbound side, as Envoy's `jwt_authn`
//! does for Istio. The rules of every RequestAuthentication selecting the workload are compiled
//! once per state into an [`Authenticator`]. For each request the token is looked for where
//! the rules say (`Authorization: Bearer` and the `access_token` parameter by default), matched
//! to the rule of its issuer, and verified with that issuer's keys: signature (RS/PS/ES/EdDSA;
//! never `none`, never an HMAC "signed" with a public key), `exp`/`nbf` with 60 s of clock
//! skew, issuer, audiences. A request without a token passes unauthenticated (unless a rule says
//! `presence: REQUIRED`); one with a token that fails is refused with 401. What the token proves
//! ([`Verified`]) is what AuthorizationPolicy's `requestPrincipals` and `request.auth.*` read.

pub mod jwks;
pub mod ring_crypto;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::Validation;
use mesh_api::proto::state::v1 as proto;
use mesh_api::security::{JwtPresence, RequestAuthenticationSpec};

pub use jwks::Keys;

/// The longest token read; a longer one is refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Clock skew allowed on `exp` and `nbf` (Envoy's default).
pub const CLOCK_SKEW_SECS: u64 = 60;

/// What a verified token proves.
#[derive(Clone, Debug, PartialEq)]
pub struct Verified {
    /// `iss/sub`, what `requestPrincipals` match.
    pub principal: String,
    /// `aud`, as a list.
    pub audiences: Vec<String>,
    /// `azp`.
    pub presenter: Option<String>,
    /// Every claim; space-delimited ones (`scope`, `permission`, and the rule's own) split
    /// into lists.
    pub claims: serde_json::Value,
}

/// Why a request's token was refused (the 401's body).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Where a token may be.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Location {
    Header { name: HeaderName, prefix: String },
    Param(String),
    Cookie(String),
}

/// Where a rule's keys come from.
#[derive(Clone, Debug)]
enum KeySource {
    Inline(Arc<Keys>),
    Uri { uri: String, timeout: Duration },
}

/// One compiled `jwtRules[]` entry.
#[derive(Debug)]
struct Rule {
    issuer: String,
    audiences: Vec<String>,
    keys: KeySource,
    locations: Vec<Location>,
    payload_header: Option<HeaderName>,
    claim_headers: Vec<(HeaderName, Vec<String>)>,
    forward: bool,
    required: bool,
    space_delimited: Vec<String>,
    /// Tokens this rule verified lately (Envoy's `jwt_cache_config`, on by default there too).
    verified: Mutex<HashMap<Box<str>, Remembered>>,
}

/// Verified tokens a rule remembers (Envoy's default size): a caller sending the same token on
/// every request pays the signature check once.
pub const VERIFIED_CACHE_SIZE: usize = 100;

/// A verified token and the seconds (UNIX time) it is good between, clock skew included.
#[derive(Debug)]
struct Remembered {
    verified: Verified,
    from: u64,
    until: u64,
}

/// A RequestAuthentication that cannot be compiled (the state is NACKed).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("RequestAuthentication {policy}: {field}: {message}")]
pub struct AuthnError {
    /// `namespace/name`.
    pub policy: String,
    /// The field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// The compiled RequestAuthentications of one workload.
#[derive(Debug, Default)]
pub struct Authenticator {
    rules: Vec<Rule>,
    /// Headers the proxy writes from verified tokens: removed from every request first, so a
    /// caller cannot pass off its own values as verified.
    output_headers: Vec<HeaderName>,
}

fn header_name(policy: &str, field: &str, name: &str) -> Result<HeaderName, AuthnError> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).map_err(|_| AuthnError {
        policy: policy.into(),
        field: field.into(),
        message: format!("{name:?} is not a header name"),
    })
}

impl Authenticator {
    /// Compiles the RequestAuthentications pilot sent.
    pub fn compile(policies: &[proto::Policy]) -> Result<Self, AuthnError> {
        ring_crypto::install();
        let mut out = Authenticator::default();
        for p in policies {
            let id = format!("{}/{}", p.namespace, p.name);
            let err = |field: String, message: String| AuthnError {
                policy: id.clone(),
                field,
                message,
            };
            let spec: RequestAuthenticationSpec = serde_json::from_str(&p.spec_json)
                .map_err(|e| err("spec".into(), format!("cannot be read: {e}")))?;
            for (i, r) in spec.jwt_rules.iter().enumerate() {
                let at = format!("spec.jwtRules[{i}]");
                let keys = if !r.jwks.is_empty() {
                    KeySource::Inline(Arc::new(
                        Keys::parse(&r.jwks).map_err(|e| err(format!("{at}.jwks"), e))?,
                    ))
                } else if !r.jwks_uri.is_empty() {
                    let timeout = r
                        .timeout
                        .as_deref()
                        .and_then(|t| mesh_api::validate::parse_duration(t).ok())
                        .unwrap_or(jwks::DEFAULT_TIMEOUT);
                    KeySource::Uri {
                        uri: r.jwks_uri.clone(),
                        timeout,
                    }
                } else {
                    return Err(err(
                        format!("{at}.jwksUri"),
                        "a rule needs its issuer's keys: set jwksUri or jwks".into(),
                    ));
                };
                let mut locations = Vec::new();
                for (j, h) in r.from_headers.iter().enumerate() {
                    locations.push(Location::Header {
                        name: header_name(&id, &format!("{at}.fromHeaders[{j}].name"), &h.name)?,
                        prefix: h.prefix.clone(),
                    });
                }
                locations.extend(r.from_params.iter().cloned().map(Location::Param));
                locations.extend(r.from_cookies.iter().cloned().map(Location::Cookie));
                if locations.is_empty() {
                    locations = vec![
                        Location::Header {
                            name: http::header::AUTHORIZATION,
                            prefix: "Bearer ".into(),
                        },
                        Location::Param("access_token".into()),
                    ];
                }
                let payload_header = match r.output_payload_to_header.as_str() {
                    "" => None,
                    name => Some(header_name(
                        &id,
                        &format!("{at}.outputPayloadToHeader"),
                        name,
                    )?),
                };
                let mut claim_headers = Vec::new();
                for (j, c) in r.output_claim_to_headers.iter().enumerate() {
                    let name = header_name(
                        &id,
                        &format!("{at}.outputClaimToHeaders[{j}].header"),
                        &c.header,
                    )?;
                    claim_headers.push((name, c.claim.split('.').map(str::to_string).collect()));
                }
                out.output_headers.extend(payload_header.iter().cloned());
                out.output_headers
                    .extend(claim_headers.iter().map(|(h, _)| h.clone()));
                out.rules.push(Rule {
                    issuer: r.issuer.clone(),
                    audiences: r.audiences.clone(),
                    keys,
                    locations,
                    payload_header,
                    claim_headers,
                    forward: r.forward_original_token.unwrap_or(false),
                    required: r.presence == Some(JwtPresence::Required),
                    space_delimited: r.space_delimited_claims.clone(),
                    verified: Mutex::default(),
                });
            }
        }
        Ok(out)
    }

    /// Whether no rule applies (the request path then skips authentication).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The `jwksUri`s the rules fetch.
    pub fn jwks_uris(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().filter_map(|r| match &r.keys {
            KeySource::Uri { uri, .. } => Some(uri.as_str()),
            KeySource::Inline(_) => None,
        })
    }

    /// Authenticates a request: `Ok(None)` without a token, `Ok(Some)` with a verified one
    /// (the request's headers then carry what the rule outputs, and the token is removed
    /// unless the rule forwards it), `Err` when it must be refused with 401.
    pub async fn authenticate(
        &self,
        headers: &mut HeaderMap,
        query: &str,
        cache: Option<&jwks::Cache>,
    ) -> Result<Option<Verified>, Refused> {
        for h in &self.output_headers {
            headers.remove(h);
        }
        let Some((token, location)) = self.find_token(headers, query) else {
            if self.rules.iter().any(|r| r.required) {
                return Err(Refused("Jwt is missing".into()));
            }
            return Ok(None);
        };
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Refused(format!(
                "Jwt is too large (more than {MAX_TOKEN_BYTES} bytes)"
            )));
        }
        let issuer = unverified_issuer(&token)?;
        let rule = self
            .rules
            .iter()
            .find(|r| r.issuer == issuer && r.locations.contains(&location))
            .ok_or_else(|| Refused("Jwt issuer is not configured".into()))?;
        let verified = rule.verify(&token, cache).await?;
        if let Some(h) = &rule.payload_header
            && let Some(payload) = token.split('.').nth(1)
            && let Ok(v) = HeaderValue::from_str(payload)
        {
            headers.insert(h.clone(), v);
        }
        for (h, path) in &rule.claim_headers {
            if let Some(v) =
                claim_text(&verified.claims, path).and_then(|t| HeaderValue::from_str(&t).ok())
            {
                headers.insert(h.clone(), v);
            }
        }
        if !rule.forward
            && let Location::Header { name, .. } = &location
        {
            headers.remove(name);
        }
        Ok(Some(verified))
    }

    /// The first token in a place some rule reads, with where it was.
    fn find_token(&self, headers: &HeaderMap, query: &str) -> Option<(String, Location)> {
        for rule in &self.rules {
            for loc in &rule.locations {
                let found = match loc {
                    Location::Header { name, prefix } => headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| strip_prefix_ignore_case(v, prefix))
                        .map(|t| t.trim().to_string()),
                    Location::Param(p) => form_urlencoded::parse(query.as_bytes())
                        .find(|(k, _)| k == p)
                        .map(|(_, v)| v.into_owned()),
                    Location::Cookie(c) => cookie(headers, c),
                };
                if let Some(t) = found.filter(|t| !t.is_empty()) {
                    return Some((t, loc.clone()));
                }
            }
        }
        None
    }
}

impl Rule {
    /// Verifies `token`, or takes it from the tokens verified lately while it is still within
    /// its `nbf`..`exp`. A token is remembered by its exact text, so only the same signed bytes
    /// skip the check; like Envoy's cache, a remembered token stays good until it expires even
    /// if its key leaves the key set.
    async fn verify(&self, token: &str, cache: Option<&jwks::Cache>) -> Result<Verified, Refused> {
        let now = jsonwebtoken::get_current_timestamp();
        if let Ok(mut seen) = self.verified.lock()
            && let Some(r) = seen.get(token)
        {
            if (r.from..=r.until).contains(&now) {
                return Ok(r.verified.clone());
            }
            seen.remove(token);
        }
        let verified = self.verify_signed(token, cache).await?;
        let claim = |k: &str| verified.claims.get(k).and_then(serde_json::Value::as_u64);
        let remembered = Remembered {
            from: claim("nbf").map_or(0, |t| t.saturating_sub(CLOCK_SKEW_SECS)),
            until: claim("exp").map_or(u64::MAX, |t| t.saturating_add(CLOCK_SKEW_SECS)),
            verified: verified.clone(),
        };
        if let Ok(mut seen) = self.verified.lock() {
            if seen.len() >= VERIFIED_CACHE_SIZE
                && let Some(old) = seen.keys().next().cloned()
            {
                seen.remove(&old);
            }
            seen.insert(token.into(), remembered);
        }
        Ok(verified)
    }

    async fn verify_signed(
        &self,
        token: &str,
        cache: Option<&jwks::Cache>,
    ) -> Result<Verified, Refused> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Refused("Jwt is not in the form of Header.Payload.Signature".into()))?;
        let keys = match &self.keys {
            KeySource::Inline(k) => k.clone(),
            KeySource::Uri { uri, timeout } => {
                let cache = cache.ok_or_else(|| {
                    Refused("Jwks remote fetch is failed: this proxy cannot fetch key sets".into())
                })?;
                cache
                    .keys(uri, header.kid.as_deref(), *timeout)
                    .await
                    .map_err(|e| Refused(format!("Jwks remote fetch is failed: {e}")))?
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = CLOCK_SKEW_SECS;
        validation.validate_nbf = true;
        validation.required_spec_claims.clear();
        validation.set_issuer(&[&self.issuer]);
        if self.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.audiences);
            validation.required_spec_claims.insert("aud".into());
        }
        let mut last = None;
        let mut tried = false;
        for key in keys.candidates(header.kid.as_deref(), header.alg) {
            tried = true;
            match jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &validation) {
                Ok(data) => return Ok(self.verified(data.claims)),
                Err(e) => last = Some(e),
            }
        }
        if !tried {
            return Err(Refused(
                "Jwks doesn't have key to match kid or alg from Jwt".into(),
            ));
        }
        use jsonwebtoken::errors::ErrorKind as K;
        let why = match last.as_ref().map(|e| e.kind()) {
            Some(K::ExpiredSignature) => "Jwt is expired",
            Some(K::ImmatureSignature) => "Jwt not yet valid",
            Some(K::InvalidAudience | K::MissingRequiredClaim(_)) => {
                "Audiences in Jwt are not allowed"
            }
            Some(K::InvalidIssuer) => "Jwt issuer is not configured",
            _ => "Jwt verification fails",
        };
        Err(Refused(why.into()))
    }

    fn verified(&self, mut claims: serde_json::Value) -> Verified {
        let text =
            |v: &serde_json::Value, k: &str| v.get(k).and_then(|s| s.as_str()).map(str::to_string);
        let iss = text(&claims, "iss").unwrap_or_default();
        let sub = text(&claims, "sub").unwrap_or_default();
        let audiences = match claims.get("aud") {
            Some(serde_json::Value::String(a)) => vec![a.clone()],
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        let presenter = text(&claims, "azp");
        if let Some(map) = claims.as_object_mut() {
            for name in ["scope", "permission"]
                .into_iter()
                .chain(self.space_delimited.iter().map(String::as_str))
            {
                if let Some(serde_json::Value::String(s)) = map.get(name) {
                    let items = s
                        .split(' ')
                        .filter(|i| !i.is_empty())
                        .map(|i| serde_json::Value::String(i.into()))
                        .collect();
                    map.insert(name.to_string(), serde_json::Value::Array(items));
                }
            }
        }
        Verified {
            principal: format!("{iss}/{sub}"),
            audiences,
            presenter,
            claims,
        }
    }
}

/// The `iss` of a token not verified yet (to choose the rule that verifies it).
fn unverified_issuer(token: &str) -> Result<String, Refused> {
    use base64::Engine;
    let malformed = || Refused("Jwt is not in the form of Header.Payload.Signature".into());
    let payload = token.split('.').nth(1).ok_or_else(malformed)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| malformed())?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| malformed())?;
    claims
        .get("iss")
        .and_then(|i| i.as_str())
        .map(str::to_string)
        .ok_or_else(|| Refused("Jwt issuer is not configured".into()))
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &value[prefix.len()..])
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// A claim as header text: strings as they are, other values as JSON.
fn claim_text(claims: &serde_json::Value, path: &[String]) -> Option<String> {
    let mut v = claims;
    for name in path {
        v = v.get(name)?;
    }
    Some(match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    })
}
