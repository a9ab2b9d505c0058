//! A JWT issuer for tests: keys of every algorithm RequestAuthentication accepts, their JWKS,
//! and tokens signed with them. The RSA key is a fixed test key (`proxy/testdata/`, made for
//! these tests and used nowhere else): generating one per test is slow in debug builds. The
//! EC and Ed25519 keys are made per issuer.

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519};
use serde_json::{Value, json};

/// The test RSA private key (PKCS#8 PEM).
pub const RSA_PEM: &str = include_str!("../../testdata/jwt-test-rsa.pem");
/// Its public JWK (`kid` "rsa-1").
pub const RSA_JWK: &str = include_str!("../../testdata/jwt-test-rsa.jwk.json");

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// One signing key and its public JWK.
struct SigningKey {
    kid: &'static str,
    algorithms: &'static [Algorithm],
    key: EncodingKey,
    jwk: Value,
}

/// An issuer with an RSA (`rsa-1`), P-256 (`ec-256`), P-384 (`ec-384`) and Ed25519 (`ed-1`)
/// key.
pub struct Issuer {
    /// Its `iss`.
    pub iss: String,
    keys: Vec<SigningKey>,
}

fn ec(
    kid: &'static str,
    alg: &'static rcgen::SignatureAlgorithm,
    crv: &str,
    algorithms: &'static [Algorithm],
) -> SigningKey {
    let pair = KeyPair::generate_for(alg).unwrap();
    let raw = pair.public_key_raw();
    // An uncompressed point: 0x04, then x and y of equal length.
    let half = (raw.len() - 1) / 2;
    SigningKey {
        kid,
        algorithms,
        key: EncodingKey::from_ec_der(&pair.serialize_der()),
        jwk: json!({"kty": "EC", "crv": crv, "kid": kid, "use": "sig",
                    "x": b64(&raw[1..=half]), "y": b64(&raw[1 + half..])}),
    }
}

impl Issuer {
    /// A new issuer named `iss`.
    pub fn new(iss: &str) -> Self {
        // The proxy's verifier in place before a test's first token is signed.
        crate::authn::ring_crypto::install();
        let ed = KeyPair::generate_for(&PKCS_ED25519).unwrap();
        let keys = vec![
            SigningKey {
                kid: "rsa-1",
                algorithms: &[
                    Algorithm::RS256,
                    Algorithm::RS384,
                    Algorithm::RS512,
                    Algorithm::PS256,
                ],
                key: EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).unwrap(),
                jwk: serde_json::from_str(RSA_JWK).unwrap(),
            },
            ec(
                "ec-256",
                &PKCS_ECDSA_P256_SHA256,
                "P-256",
                &[Algorithm::ES256],
            ),
            ec(
                "ec-384",
                &PKCS_ECDSA_P384_SHA384,
                "P-384",
                &[Algorithm::ES384],
            ),
            SigningKey {
                kid: "ed-1",
                algorithms: &[Algorithm::EdDSA],
                key: EncodingKey::from_ed_der(&ed.serialize_der()),
                jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed-1", "use": "sig",
                            "x": b64(ed.public_key_raw())}),
            },
        ];
        Issuer {
            iss: iss.into(),
            keys,
        }
    }

    /// The JWKS document with every key.
    pub fn jwks(&self) -> String {
        self.jwks_of(&["rsa-1", "ec-256", "ec-384", "ed-1"])
    }

    /// A JWKS document with only the keys `kids`.
    pub fn jwks_of(&self, kids: &[&str]) -> String {
        let keys: Vec<&Value> = self
            .keys
            .iter()
            .filter(|k| kids.contains(&k.kid))
            .map(|k| &k.jwk)
            .collect();
        json!({ "keys": keys }).to_string()
    }

    /// Claims for `sub` with this issuer, `aud`, and an hour to live.
    pub fn claims(&self, sub: &str, aud: &str) -> Value {
        let now = jsonwebtoken::get_current_timestamp();
        json!({"iss": self.iss, "sub": sub, "aud": aud, "iat": now, "exp": now + 3600})
    }

    /// `claims` signed with `alg` (by the key that does it), header `kid` set.
    pub fn sign(&self, alg: Algorithm, claims: &Value) -> String {
        let key = self
            .keys
            .iter()
            .find(|k| k.algorithms.contains(&alg))
            .unwrap_or_else(|| panic!("no test key for {alg:?}"));
        self.sign_with(alg, Some(key.kid), claims)
    }

    /// `claims` signed with `alg` by the key that does it, with header `kid` as given.
    pub fn sign_with(&self, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        let key = self
            .keys
            .iter()
            .find(|k| k.algorithms.contains(&alg))
            .unwrap_or_else(|| panic!("no test key for {alg:?}"));
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, claims, &key.key).unwrap()
    }
}

/// A token of `claims` with `{"alg": "none"}` and no signature.
pub fn unsigned(claims: &Value) -> String {
    let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    format!("{header}.{}.", b64(claims.to_string().as_bytes()))
}

/// A token of `claims` "signed" HS256 with `secret` (an attack: the public key as HMAC secret).
pub fn hmac(claims: &Value, secret: &[u8], kid: &str) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret).unwrap()).unwrap()
}
