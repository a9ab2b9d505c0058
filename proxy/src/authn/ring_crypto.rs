//! JWT signatures checked by ring, the library the proxy's TLS already verifies certificates
//! with. jsonwebtoken's RustCrypto backend is portable but slow on this path (RS256 132 µs,
//! ES256 445 µs, ES384 1.3 ms per token, measured by `benches/policy.rs`); ring does the same
//! checks in a fraction of that, which matters because every request carrying a token pays it,
//! and a flood of forged tokens costs the proxy exactly that much CPU each.
//!
//! Only verification moves: signing (tests), HMAC, and the JWK key helpers stay with
//! RustCrypto. [`install`] makes this the process's jsonwebtoken provider; the authenticator
//! calls it before it compiles any rule.

use jsonwebtoken::crypto::{CryptoProvider, JwtVerifier, KeyUtils, rust_crypto};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::signature::{self, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind};
use ring::signature as ring_sig;

/// RustCrypto's provider with ring verifying the asymmetric algorithms.
static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: rust_crypto::DEFAULT_PROVIDER.signer_factory,
    verifier_factory: new_verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: RUST_CRYPTO.rsa_pub_components_from_private_key,
        rsa_pub_components_from_public_key: RUST_CRYPTO.rsa_pub_components_from_public_key,
        ec_pub_components_from_private_key: RUST_CRYPTO.ec_pub_components_from_private_key,
        ed_pub_components_from_private_key: RUST_CRYPTO.ed_pub_components_from_private_key,
        compute_digest: RUST_CRYPTO.compute_digest,
    },
};

const RUST_CRYPTO: &KeyUtils = &rust_crypto::DEFAULT_PROVIDER.key_utils;

/// Makes ring verify JWT signatures in this process (once; later calls do nothing). Whatever
/// provider is in place when another was installed first still verifies correctly, only
/// slower.
pub fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if PROVIDER.install_default().is_err() {
            tracing::debug!("a jsonwebtoken provider was installed first; JWTs are verified by it");
        }
    });
}

/// Whether ring verifies this process's JWTs (the provider [`install`] sets is in place).
pub fn installed() -> bool {
    CryptoProvider::try_get_default().is_some_and(|p| std::ptr::eq(p, &PROVIDER))
}

/// How a key of the algorithm's family is checked.
enum Check {
    /// Ed25519: the key's 32 raw bytes.
    Raw(&'static ring_sig::EdDSAParameters),
    /// ECDSA with JWS's fixed-size `r || s` signatures: the key as an uncompressed point.
    Ecdsa(&'static ring_sig::EcdsaVerificationAlgorithm),
    /// RSA: the key as PKCS#1 DER, or its modulus and exponent (from a JWK).
    Rsa(&'static ring_sig::RsaParameters),
}

struct RingVerifier {
    alg: Algorithm,
    check: Check,
    key: DecodingKey,
}

fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    let (family, check) = match alg {
        Algorithm::RS256 => (
            AlgorithmFamily::Rsa,
            Check::Rsa(&ring_sig::RSA_PKCS1_2048_8192_SHA256),
        ),
        Algorithm::RS384 => (
            AlgorithmFamily::Rsa,
            Check::Rsa(&ring_sig::RSA_PKCS1_2048_8192_SHA384),
        ),
        Algorithm::RS512 => (
            AlgorithmFamily::Rsa,
            Check::Rsa(&ring_sig::RSA_PKCS1_2048_8192_SHA512),
        ),
        Algorithm::PS256 => (
            AlgorithmFamily::Rsa,
            Check::Rsa(&ring_sig::RSA_PSS_2048_8192_SHA256),
        ),
        Algorithm::PS384 => (
            AlgorithmFamily::Rsa,
            Check::Rsa(&ring_sig::RSA_PSS_2048_8192_SHA384),
        ),
        Algorithm::PS512 => (
            AlgorithmFamily::Rsa,
            Check::Rsa(&ring_sig::RSA_PSS_2048_8192_SHA512),
        ),
        Algorithm::ES256 => (
            AlgorithmFamily::Ec,
            Check::Ecdsa(&ring_sig::ECDSA_P256_SHA256_FIXED),
        ),
        Algorithm::ES384 => (
            AlgorithmFamily::Ec,
            Check::Ecdsa(&ring_sig::ECDSA_P384_SHA384_FIXED),
        ),
        Algorithm::EdDSA => (AlgorithmFamily::Ed, Check::Raw(&ring_sig::ED25519)),
        // HMAC (which the authenticator never accepts: its keys are public ones) and any
        // algorithm added later stay with RustCrypto.
        _ => return (rust_crypto::DEFAULT_PROVIDER.verifier_factory)(alg, key),
    };
    if key.family() != family {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    Ok(Box::new(RingVerifier {
        alg: *alg,
        check,
        key: key.clone(),
    }))
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> std::result::Result<(), signature::Error> {
        let checked = match (&self.check, self.key.kind()) {
            (Check::Raw(alg), DecodingKeyKind::SecretOrDer(raw)) => {
                ring_sig::UnparsedPublicKey::new(*alg, raw).verify(msg, sig)
            }
            (Check::Ecdsa(alg), DecodingKeyKind::SecretOrDer(point)) => {
                ring_sig::UnparsedPublicKey::new(*alg, point).verify(msg, sig)
            }
            (Check::Rsa(alg), DecodingKeyKind::SecretOrDer(der)) => {
                ring_sig::UnparsedPublicKey::new(*alg, der).verify(msg, sig)
            }
            (Check::Rsa(alg), DecodingKeyKind::RsaModulusExponent { n, e }) => {
                ring_sig::RsaPublicKeyComponents { n, e }.verify(alg, msg, sig)
            }
            _ => return Err(signature::Error::new()),
        };
        checked.map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}
