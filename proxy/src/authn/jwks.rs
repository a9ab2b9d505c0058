//! JSON Web Key Sets: inline ones parsed once per state, and `jwksUri` ones fetched, cached
//! and refreshed. A fetched set is kept for [`REFRESH`]; a token whose `kid` the cached set
//! does not hold makes one early refresh (at most every [`MIN_REFETCH`]), so a key rotated in
//! at the issuer is picked up without waiting. When a refresh fails the last good set stays in
//! use; with no set at all, tokens of that issuer are refused (fail closed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::time::Instant;

/// How long a fetched key set is used before it is fetched again.
pub const REFRESH: Duration = Duration::from_secs(300);
/// The shortest time between two fetches of one URI (unknown `kid`s cannot make a fetch storm).
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
/// How long a fetch may take unless the rule says (`timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest key set read.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// One usable key of a set.
#[derive(Clone)]
pub struct Key {
    /// Its `kid`, when it has one.
    pub kid: Option<String>,
    /// The algorithms it may verify: its `alg`, else every algorithm of its family. Never an
    /// HMAC one: a published key set holds public keys, so a token "signed" with a public key
    /// as an HMAC secret is never accepted.
    pub algorithms: Vec<Algorithm>,
    /// The key.
    pub key: Arc<DecodingKey>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish()
    }
}

/// The usable keys of a set.
#[derive(Clone, Debug, Default)]
pub struct Keys(pub Vec<Key>);

impl Keys {
    /// Parses a JWKS document; keys this proxy cannot use (HMAC, unknown types) are left out.
    pub fn parse(json: &str) -> Result<Self, String> {
        let set: JwkSet = serde_json::from_str(json).map_err(|e| format!("not a JWKS: {e}"))?;
        let keys: Vec<Key> = set.keys.iter().filter_map(key_of).collect();
        if keys.is_empty() && !set.keys.is_empty() {
            return Err(
                "the key set has no public key this proxy can use (RSA, EC P-256/P-384, Ed25519)"
                    .into(),
            );
        }
        Ok(Keys(keys))
    }

    /// The keys that may verify a token with `kid` and `alg`.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a Key> + 'a {
        self.0.iter().filter(move |k| {
            k.algorithms.contains(&alg) && (kid.is_none() || k.kid.as_deref() == kid)
        })
    }

    /// Whether the set holds the key `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.0.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

fn key_of(jwk: &Jwk) -> Option<Key> {
    use jsonwebtoken::jwk::AlgorithmParameters as P;
    let family = match &jwk.algorithm {
        P::RSA(_) => jsonwebtoken::AlgorithmFamily::Rsa,
        P::EllipticCurve(_) => jsonwebtoken::AlgorithmFamily::Ec,
        P::OctetKeyPair(_) => jsonwebtoken::AlgorithmFamily::Ed,
        // Shared secrets are not published in key sets; refusing them keeps HS* out.
        _ => return None,
    };
    // Keys published for encryption are not signing keys.
    if matches!(
        jwk.common.public_key_use,
        Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
    ) {
        return None;
    }
    let algorithms = match jwk.common.key_algorithm {
        None => family.algorithms().to_vec(),
        Some(named) => match named.to_string().parse::<Algorithm>() {
            Ok(a) if family.algorithms().contains(&a) => vec![a],
            _ => return None,
        },
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key: Arc::new(key),
    })
}

/// Fetches a key set document (through the mesh, in the running proxy).
pub trait Fetch: Send + Sync {
    /// The body of `GET uri`, or why it could not be had.
    fn fetch(
        &self,
        uri: &str,
        timeout: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send + '_>>;
}

#[derive(Default)]
struct Entry {
    keys: Option<Arc<Keys>>,
    fetched: Option<Instant>,
    attempted: Option<Instant>,
    last_error: Option<String>,
}

/// Key sets by URI, shared by every state (a new state does not refetch).
pub struct Cache {
    fetch: Box<dyn Fetch>,
    entries: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Entry>>>>,
}

impl Cache {
    /// A cache fetching with `fetch`.
    pub fn new(fetch: Box<dyn Fetch>) -> Self {
        Cache {
            fetch,
            entries: Mutex::default(),
        }
    }

    /// The keys of `uri`: cached while fresh, fetched when stale or when `kid` is not in the
    /// cached set (rate-limited). `Err` when no set could ever be had.
    pub async fn keys(
        &self,
        uri: &str,
        kid: Option<&str>,
        timeout: Duration,
    ) -> Result<Arc<Keys>, String> {
        let entry = {
            let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(uri.to_string()).or_default().clone()
        };
        // One fetch per URI at a time; other requests wait for its result.
        let mut e = entry.lock().await;
        let now = Instant::now();
        let stale = e.fetched.is_none_or(|t| now.duration_since(t) >= REFRESH);
        let missing_kid = match (kid, &e.keys) {
            (Some(k), Some(keys)) => !keys.has_kid(k),
            _ => false,
        };
        let may_fetch = e
            .attempted
            .is_none_or(|t| now.duration_since(t) >= MIN_REFETCH);
        if (stale || missing_kid) && may_fetch {
            e.attempted = Some(now);
            let fetched = match self.fetch.fetch(uri, timeout).await {
                Ok(body) if body.len() > MAX_JWKS_BYTES => {
                    Err(format!("the key set is larger than {MAX_JWKS_BYTES} bytes"))
                }
                Ok(body) => Keys::parse(&body),
                Err(err) => Err(err),
            };
            match fetched {
                Ok(keys) => {
                    e.keys = Some(Arc::new(keys));
                    e.fetched = Some(Instant::now());
                    e.last_error = None;
                }
                Err(err) => {
                    tracing::warn!("jwksUri {uri}: {err}; keeping the last key set, if any");
                    e.last_error = Some(err);
                }
            }
        }
        match (&e.keys, &e.last_error) {
            (Some(keys), _) => Ok(keys.clone()),
            (None, Some(err)) => Err(format!("the key set at {uri} is not available: {err}")),
            (None, None) => Err(format!("the key set at {uri} is not available yet")),
        }
    }
}
