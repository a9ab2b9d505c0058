//! Kubernetes service-account tokens checked with a TokenReview, against a scripted API server
//! on 127.0.0.1 that knows two tokens.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes_free::*;
use mesh_api::proto::ca::v1::{Credential, credential::Kind};
use mesh_ca::auth::{AuthError, Authenticator, KubernetesTokens, Proven};

mod bytes_free {
    pub use http_body_util::{BodyExt, Full};
    pub use hyper::body::Bytes;
}

/// Answers TokenReviews: `good-token` is default/order, `user-token` is a person, anything
/// else is refused. Counts the reviews and checks the audience asked for.
async fn api_server(reviews: Arc<AtomicUsize>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (c, _) = l.accept().await.unwrap();
            let reviews = reviews.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let reviews = reviews.clone();
                        async move {
                            assert_eq!(
                                req.uri().path(),
                                "/apis/authentication.k8s.io/v1/tokenreviews"
                            );
                            reviews.fetch_add(1, Ordering::SeqCst);
                            let body: serde_json::Value = serde_json::from_slice(
                                &req.into_body().collect().await.unwrap().to_bytes(),
                            )
                            .unwrap();
                            assert_eq!(body["spec"]["audiences"][0], "mesh-ca");
                            let status = match body["spec"]["token"].as_str().unwrap() {
                                "good-token" => {
                                    serde_json::json!({"authenticated": true, "user": {"username": "system:serviceaccount:default:order"}})
                                }
                                "user-token" => {
                                    serde_json::json!({"authenticated": true, "user": {"username": "jane@example.com"}})
                                }
                                _ => {
                                    serde_json::json!({"authenticated": false, "error": "token expired"})
                                }
                            };
                            let answer = serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": body["spec"], "status": status});
                            let mut resp =
                                hyper::Response::new(Full::new(Bytes::from(answer.to_string())));
                            *resp.status_mut() = hyper::StatusCode::CREATED;
                            resp.headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            Ok::<_, Infallible>(resp)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(c), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

fn token(t: &str) -> Credential {
    Credential {
        kind: Some(Kind::KubernetesToken(t.into())),
    }
}

#[tokio::test]
async fn token_reviews_prove_service_accounts_only() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let reviews = Arc::new(AtomicUsize::new(0));
    let url = api_server(reviews.clone()).await;
    let config = kube::Config::new(url.parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let auth = KubernetesTokens::new(client, vec!["mesh-ca".into()]);

    assert_eq!(
        auth.authenticate(&token("good-token")).await,
        Ok(Proven {
            namespace: "default".into(),
            service_account: "order".into()
        })
    );
    assert!(
        matches!(auth.authenticate(&token("stale")).await, Err(AuthError::Unauthenticated(m)) if m.contains("token expired"))
    );
    assert!(
        matches!(auth.authenticate(&token("user-token")).await, Err(AuthError::PermissionDenied(m)) if m.contains("jane@example.com"))
    );
    assert!(matches!(
        auth.authenticate(&Credential { kind: None }).await,
        Err(AuthError::Unauthenticated(_))
    ));
    assert_eq!(
        reviews.load(Ordering::SeqCst),
        3,
        "each token was reviewed by the API server"
    );
}

#[tokio::test]
async fn an_unreachable_api_server_is_unavailable_not_a_refusal() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let client =
        kube::Client::try_from(kube::Config::new(format!("http://{dead}").parse().unwrap()))
            .unwrap();
    let auth = KubernetesTokens::new(client, vec![]);
    assert!(matches!(
        auth.authenticate(&token("good-token")).await,
        Err(AuthError::Unavailable(_))
    ));
}
