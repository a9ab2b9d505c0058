//! Bootstrap tokens: the local runtime gives each workload a random token (in a file only that
//! workload's proxy reads) and registers it here. The CA keeps only SHA-256 hashes, so its own
//! files cannot be replayed as credentials.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use mesh_api::proto::ca::v1::{Credential, credential::Kind};
use serde::{Deserialize, Serialize};

use super::{AuthError, AuthFuture, Authenticator, Proven};

/// The registered tokens, by hash.
#[derive(Default, Debug)]
pub struct BootstrapTokens {
    by_hash: RwLock<HashMap<String, Proven>>,
    /// The file tokens were loaded from; re-read when an unknown token arrives and the file
    /// changed, so workloads registered by another process are recognised.
    source: Option<(PathBuf, RwLock<Option<std::time::SystemTime>>)>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Entry {
    sha256: String,
    namespace: String,
    service_account: String,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    tokens: Vec<Entry>,
}

/// A token file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// Unreadable or unwritable.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Not a token file.
    #[error(
        "{path}: not a bootstrap token file ({message}); expected {{\"tokens\": [{{\"sha256\": ..., \"namespace\": ..., \"serviceAccount\": ...}}]}}"
    )]
    Format {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
}

/// Hex SHA-256 of a token.
pub fn hash(token: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl BootstrapTokens {
    /// Loads registered token hashes from `path`; a missing file means no tokens yet.
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Nothing registered yet: watch for the file another process will write.
                return Ok(Self {
                    source: Some((path.into(), RwLock::new(None))),
                    ..Self::default()
                });
            }
            Err(source) => {
                return Err(TokenFileError::Io {
                    path: path.into(),
                    source,
                });
            }
        };
        let file: TokenFile = serde_json::from_str(&text).map_err(|e| TokenFileError::Format {
            path: path.into(),
            message: e.to_string(),
        })?;
        let by_hash = file
            .tokens
            .into_iter()
            .map(|e| {
                (
                    e.sha256,
                    Proven {
                        namespace: e.namespace,
                        service_account: e.service_account,
                    },
                )
            })
            .collect();
        let stamp = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        Ok(Self {
            by_hash: RwLock::new(by_hash),
            source: Some((path.into(), RwLock::new(stamp))),
        })
    }

    /// Re-reads the source file when it changed since it was read; true when it was re-read.
    fn refresh(&self) -> bool {
        let Some((path, seen)) = &self.source else {
            return false;
        };
        let now = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if *seen.read().unwrap_or_else(|e| e.into_inner()) == now {
            return false;
        }
        match Self::load(path) {
            Ok(fresh) => {
                let map = fresh
                    .by_hash
                    .into_inner()
                    .unwrap_or_else(|e| e.into_inner());
                *self.by_hash.write().unwrap_or_else(|e| e.into_inner()) = map;
                *seen.write().unwrap_or_else(|e| e.into_inner()) = now;
                true
            }
            Err(e) => {
                tracing::warn!("{e}; keeping the tokens already known");
                false
            }
        }
    }

    /// Saves the registered hashes to `path` (never the tokens themselves).
    pub fn save(&self, path: &Path) -> Result<(), TokenFileError> {
        let map = self.by_hash.read().unwrap_or_else(|e| e.into_inner());
        let mut tokens: Vec<Entry> = map
            .iter()
            .map(|(h, p)| Entry {
                sha256: h.clone(),
                namespace: p.namespace.clone(),
                service_account: p.service_account.clone(),
            })
            .collect();
        tokens.sort_by(|a, b| a.sha256.cmp(&b.sha256));
        let text = serde_json::to_string_pretty(&TokenFile { tokens }).unwrap_or_default();
        std::fs::write(path, text).map_err(|source| TokenFileError::Io {
            path: path.into(),
            source,
        })
    }

    /// Makes a new random token for `namespace`/`service_account`, registers its hash and
    /// returns the token (to be handed to that workload only).
    pub fn issue(&self, namespace: &str, service_account: &str) -> String {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; 32];
        let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.register(&token, namespace, service_account);
        token
    }

    /// Registers a token given by the caller.
    pub fn register(&self, token: &str, namespace: &str, service_account: &str) {
        let proven = Proven {
            namespace: namespace.into(),
            service_account: service_account.into(),
        };
        self.by_hash
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hash(token), proven);
    }

    /// Forgets a token (the workload is gone).
    pub fn revoke(&self, token: &str) {
        self.by_hash
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&hash(token));
    }

    fn check(&self, credential: &Credential) -> Result<Proven, AuthError> {
        match &credential.kind {
            Some(Kind::BootstrapToken(token)) => {
                let digest = hash(token);
                let lookup = || self.by_hash.read().unwrap_or_else(|e| e.into_inner()).get(&digest).cloned();
                lookup()
                    .or_else(|| if self.refresh() { lookup() } else { None })
                    .ok_or_else(|| AuthError::Unauthenticated("bootstrap token not recognised: it was never issued by this mesh, or its workload was removed".into()))
            }
            Some(Kind::KubernetesToken(_)) => Err(AuthError::Unauthenticated(
                "this CA does not check Kubernetes service-account tokens (it runs with local bootstrap tokens)".into(),
            )),
            Some(Kind::Renewal(_)) => Err(AuthError::Unauthenticated("renewals are checked by the CA, not by the token registry".into())),
            None => Err(AuthError::Unauthenticated("no credential: send the workload's bootstrap token".into())),
        }
    }
}

impl Authenticator for BootstrapTokens {
    fn authenticate<'a>(&'a self, credential: &'a Credential) -> AuthFuture<'a> {
        Box::pin(async move { self.check(credential) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(token: &str) -> Credential {
        Credential {
            kind: Some(Kind::BootstrapToken(token.into())),
        }
    }

    #[tokio::test]
    async fn issued_tokens_prove_their_identity_and_only_hashes_are_saved() {
        let tokens = BootstrapTokens::default();
        let t = tokens.issue("default", "order");
        assert_eq!(
            tokens.authenticate(&cred(&t)).await,
            Ok(Proven {
                namespace: "default".into(),
                service_account: "order".into()
            })
        );
        assert!(matches!(
            tokens.authenticate(&cred("guess")).await,
            Err(AuthError::Unauthenticated(_))
        ));
        assert!(
            matches!(tokens.authenticate(&Credential { kind: None }).await, Err(AuthError::Unauthenticated(m)) if m.contains("no credential"))
        );

        let dir = std::env::temp_dir().join(format!("mesh-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tokens.json");
        tokens.save(&file).unwrap();
        let saved = std::fs::read_to_string(&file).unwrap();
        assert!(!saved.contains(&t), "the token itself is never written");
        assert!(saved.contains(&hash(&t)));
        let reloaded = BootstrapTokens::load(&file).unwrap();
        assert!(reloaded.authenticate(&cred(&t)).await.is_ok());
        reloaded.revoke(&t);
        assert!(reloaded.authenticate(&cred(&t)).await.is_err());
        std::fs::write(&file, "{\"tokens\": 3}").unwrap();
        assert!(
            BootstrapTokens::load(&file)
                .unwrap_err()
                .to_string()
                .contains("not a bootstrap token file")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
