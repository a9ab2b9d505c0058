//! Kubernetes: a projected service-account token, checked by the API server with a
//! TokenReview. The token proves `system:serviceaccount:<namespace>:<name>`.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use mesh_api::proto::ca::v1::{Credential, credential::Kind};

use super::{AuthError, AuthFuture, Authenticator, Proven};

/// Checks service-account tokens with the API server.
pub struct KubernetesTokens {
    client: kube::Client,
    audiences: Vec<String>,
}

impl KubernetesTokens {
    /// Reviews tokens through `client`; a token must be valid for one of `audiences` (the API
    /// server's default audience when empty).
    pub fn new(client: kube::Client, audiences: Vec<String>) -> Self {
        Self { client, audiences }
    }

    async fn review(&self, token: &str) -> Result<Proven, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                AuthError::Unavailable(format!(
                    "cannot review the service-account token with the API server: {e}"
                ))
            })?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status.error.unwrap_or_else(|| "not authenticated".into());
            return Err(AuthError::Unauthenticated(format!(
                "service-account token refused by the API server: {why}"
            )));
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        parse_username(&username).ok_or_else(|| {
            AuthError::PermissionDenied(format!(
                "the token belongs to {username:?}, not to a service account"
            ))
        })
    }
}

/// `system:serviceaccount:<namespace>:<name>` → the service account.
fn parse_username(username: &str) -> Option<Proven> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (namespace, service_account) = rest.split_once(':')?;
    (!namespace.is_empty() && !service_account.is_empty() && !service_account.contains(':')).then(
        || Proven {
            namespace: namespace.into(),
            service_account: service_account.into(),
        },
    )
}

impl Authenticator for KubernetesTokens {
    fn authenticate<'a>(&'a self, credential: &'a Credential) -> AuthFuture<'a> {
        Box::pin(async move {
            match &credential.kind {
                Some(Kind::KubernetesToken(token)) => self.review(token).await,
                Some(_) => Err(AuthError::Unauthenticated(
                    "this CA checks Kubernetes service-account tokens; send one".into(),
                )),
                None => Err(AuthError::Unauthenticated(
                    "no credential: send the pod's service-account token".into(),
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_service_account_usernames_prove_an_identity() {
        assert_eq!(
            parse_username("system:serviceaccount:default:order"),
            Some(Proven {
                namespace: "default".into(),
                service_account: "order".into()
            })
        );
        assert_eq!(parse_username("jane@example.com"), None);
        assert_eq!(parse_username("system:serviceaccount:default"), None);
        assert_eq!(parse_username("system:serviceaccount::order"), None);
    }
}
