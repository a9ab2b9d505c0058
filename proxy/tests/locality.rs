//! Locality load balancing in-process on 127.0.0.1, from a proxy in `us-west/zone1`: traffic
//! stays with the endpoints of its zone, fails over when they cannot be reached (without any
//! `outlierDetection`: connection failures eject them) to the region `failover` names before
//! any other, `distribute` shares traffic between localities by weight, and
//! `retryRemoteLocalities` sends a retry to the next rank.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use mesh_proxy::state::proto;
use mesh_proxy::testing;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

const SHIPPING: &str = "shipping.default.svc.cluster.local";
const VIP: &str = "10.96.0.41:80";
const OWN: &str = "us-west/zone1";

/// An app answering every request with its name; dropping the handle closes its listener and
/// every connection it holds, so that connecting to it is refused.
struct App {
    addr: SocketAddr,
    _tasks: JoinSet<()>,
}

async fn app(name: &'static str) -> App {
    app_answering(name, StatusCode::OK).await
}

async fn app_answering(name: &'static str, status: StatusCode) -> App {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let (c, _) = l.accept().await.unwrap();
            conns.spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    let mut r = Response::new(Full::new(Bytes::from(name)));
                    *r.status_mut() = status;
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(c), svc)
                    .await;
            });
        }
    });
    App {
        addr,
        _tasks: tasks,
    }
}

fn shipping(eps: &[(&App, &str)], lb: proto::LocalityLb) -> proto::ProxyState {
    let mut b = testing::service(SHIPPING, "10.96.0.41", 80, "http");
    for (app, locality) in eps {
        b = b
            .endpoint(app.addr, &[("app", "shipping")])
            .locality(locality);
    }
    let mut svc = b.build();
    svc.traffic_policy
        .get_or_insert_with(Default::default)
        .locality_lb = Some(lb);
    proto::ProxyState {
        services: vec![svc],
        locality: OWN.into(),
        ..Default::default()
    }
}

/// Who answered `n` requests (`!<status>` for failures).
async fn answers(addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let (status, body) = testing::http1(addr, hyper::Method::GET, "/", "shipping", b"").await;
        let who = if status == StatusCode::OK {
            body
        } else {
            format!("!{}", status.as_u16())
        };
        *out.entry(who).or_default() += 1;
    }
    out
}

#[tokio::test]
async fn traffic_stays_in_the_zone_and_fails_over_to_the_failover_region() {
    let (z1a, z1b) = (app("z1a").await, app("z1b").await);
    let (eu, east) = (app("eu").await, app("east").await);
    let lb = proto::LocalityLb {
        failover: vec![proto::LocalityFailover {
            from: "us-west".into(),
            to: "us-east".into(),
        }],
        ..Default::default()
    };
    let state = shipping(
        &[
            (&z1a, "us-west/zone1"),
            (&z1b, "us-west/zone1"),
            (&eu, "eu-west/zone1"),
            (&east, "us-east/zone1"),
        ],
        lb,
    );
    let (_tx, rx) = watch::channel(testing::compile(state));
    let proxy = testing::start(rx, VIP, "10.0.0.1:1", None).await;
    let local = answers(proxy.bound.outbound, 60).await;
    assert_eq!(
        local.keys().collect::<Vec<_>>(),
        ["z1a", "z1b"],
        "only the zone's endpoints answer: {local:?}"
    );

    // The zone goes away. No outlierDetection is configured: connection failures eject.
    let (z1a_addr, z1b_addr) = (z1a.addr, z1b.addr);
    drop((z1a, z1b));
    let during = answers(proxy.bound.outbound, 40).await;
    assert!(
        during.get("east").copied().unwrap_or(0) > 0,
        "traffic failed over: {during:?}"
    );
    // The price: five refused connections to each before it is ejected (no route here to
    // retry them).
    assert!(during.get("!503").copied().unwrap_or(0) <= 10, "{during:?}");
    let after = answers(proxy.bound.outbound, 30).await;
    assert_eq!(
        after,
        [("east".to_string(), 30)].into(),
        "us-west fails over to us-east (failover), never to eu-west"
    );
    assert!(!during.contains_key("eu"), "{during:?}");
    let clusters = testing::admin_get(proxy.bound.admin, "/clusters").await;
    let cluster = format!("outbound|80||{SHIPPING}");
    for gone in [z1a_addr, z1b_addr] {
        let line = format!("{cluster}::{gone}::health_flags::/failed_outlier_check");
        assert!(clusters.contains(&line), "{line} in:\n{clusters}");
    }
}

#[tokio::test]
async fn distribute_shares_traffic_between_localities_by_weight() {
    let (z1, z2, east) = (app("z1").await, app("z2").await, app("east").await);
    let lb = proto::LocalityLb {
        distribute: vec![proto::LocalityDistribute {
            from: "us-west/zone1/*".into(),
            to: [
                ("us-west/zone1/*".to_string(), 80),
                ("us-west/zone2/*".to_string(), 20),
            ]
            .into(),
        }],
        ..Default::default()
    };
    let state = shipping(
        &[
            (&z1, "us-west/zone1"),
            (&z2, "us-west/zone2"),
            (&east, "us-east/zone1"),
        ],
        lb,
    );
    let (_tx, rx) = watch::channel(testing::compile(state));
    let proxy = testing::start(rx, VIP, "10.0.0.1:1", None).await;
    let got = answers(proxy.bound.outbound, 500).await;
    // 400 expected; the standard deviation is 9, so ±45 is five of them.
    let z1_share = got.get("z1").copied().unwrap_or(0);
    assert!((355..=445).contains(&z1_share), "{got:?}");
    assert_eq!(got.get("z2").copied().unwrap_or(0) + z1_share, 500);
    assert!(
        !got.contains_key("east"),
        "a locality `to` does not name: {got:?}"
    );
}

#[tokio::test]
async fn retry_remote_localities_sends_the_retry_to_the_next_rank() {
    let z1 = app_answering("z1", StatusCode::SERVICE_UNAVAILABLE).await;
    let z2 = app("z2").await;
    let with = |remote: bool| {
        let mut state = shipping(
            &[(&z1, "us-west/zone1"), (&z2, "us-west/zone2")],
            proto::LocalityLb::default(),
        );
        state.services[0].http_routes = vec![proto::HttpRoute {
            destinations: vec![proto::WeightedDestination {
                host: SHIPPING.into(),
                weight: 100,
                ..Default::default()
            }],
            retry: Some(proto::RetryPolicy {
                attempts: 2,
                retry_on: vec!["5xx".into()],
                retry_remote_localities: remote,
                ..Default::default()
            }),
            ..Default::default()
        }];
        testing::compile(state)
    };
    // Retries stay in the zone unless told otherwise: z1 is tried three times.
    let (tx, rx) = watch::channel(with(false));
    let proxy = testing::start(rx, VIP, "10.0.0.1:1", None).await;
    assert_eq!(
        answers(proxy.bound.outbound, 10).await,
        [("!503".to_string(), 10)].into()
    );
    tx.send(with(true)).unwrap();
    assert_eq!(
        answers(proxy.bound.outbound, 10).await,
        [("z2".to_string(), 10)].into(),
        "each retry goes to zone2"
    );
}
