//! The pieces every proxied request goes through, one at a time: route matching, the
//! load-balancer pick, header handling, the active-request accounting least-request
//! balancing reads, and metric recording. Targets are in docs/performance.md; `cargo bench -p mesh-proxy --bench
//! hot_path` measures them.

// Benches measure wall time with std's clock; no test here pauses time.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::disallowed_types,
    missing_docs
)]

use std::hint::black_box;
use std::net::SocketAddr;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use hyper::Request;
use mesh_proxy::http::{Body, full, headers};
use mesh_proxy::route::balance::Loads;
use mesh_proxy::route::http as route;
use mesh_proxy::route::{Target, endpoint_in};
use mesh_proxy::state::{Balancer, State, proto};

fn exact(s: &str) -> Option<proto::StringMatch> {
    Some(proto::StringMatch {
        kind: Some(proto::string_match::Kind::Exact(s.into())),
    })
}

fn prefix(s: &str) -> Option<proto::StringMatch> {
    Some(proto::StringMatch {
        kind: Some(proto::string_match::Kind::Prefix(s.into())),
    })
}

fn regex(s: &str) -> Option<proto::StringMatch> {
    Some(proto::StringMatch {
        kind: Some(proto::string_match::Kind::Regex(s.into())),
    })
}

fn to(subset: &str) -> Vec<proto::WeightedDestination> {
    vec![proto::WeightedDestination {
        host: "reviews.default.svc.cluster.local".into(),
        subset: subset.into(),
        weight: 100,
        ..Default::default()
    }]
}

/// A service like bookinfo's reviews with ten routes: header, prefix, regex, method and
/// query matches, the catch-all last; ten endpoints in three subsets.
fn state() -> State {
    let mut routes = Vec::new();
    for i in 0..3 {
        routes.push(proto::HttpRoute {
            name: format!("user-{i}"),
            matches: vec![proto::HttpMatch {
                headers: [("end-user".to_string(), exact(&format!("user-{i}")).unwrap())].into(),
                ..Default::default()
            }],
            destinations: to("v2"),
            ..Default::default()
        });
    }
    for p in ["/api/v3", "/admin", "/static"] {
        routes.push(proto::HttpRoute {
            name: p.into(),
            matches: vec![proto::HttpMatch {
                uri: prefix(p),
                ..Default::default()
            }],
            destinations: to("v3"),
            ..Default::default()
        });
    }
    routes.push(proto::HttpRoute {
        name: "regex".into(),
        matches: vec![proto::HttpMatch {
            uri: regex("/reviews/[0-9]+/comments"),
            ..Default::default()
        }],
        destinations: to("v3"),
        ..Default::default()
    });
    routes.push(proto::HttpRoute {
        name: "delete".into(),
        matches: vec![proto::HttpMatch {
            method: exact("DELETE"),
            ..Default::default()
        }],
        destinations: to("v1"),
        ..Default::default()
    });
    routes.push(proto::HttpRoute {
        name: "canary".into(),
        matches: vec![proto::HttpMatch {
            query_params: [("canary".to_string(), exact("1").unwrap())].into(),
            ..Default::default()
        }],
        destinations: to("v3"),
        ..Default::default()
    });
    routes.push(proto::HttpRoute {
        name: "default".into(),
        destinations: to("v1"),
        ..Default::default()
    });
    let service = proto::Service {
        hostname: "reviews.default.svc.cluster.local".into(),
        namespace: "default".into(),
        addresses: vec!["10.96.0.20".into()],
        ports: vec![proto::ServicePort {
            port: 9080,
            name: "http".into(),
            ..Default::default()
        }],
        endpoints: (0..10)
            .map(|i| proto::Endpoint {
                address: format!("10.244.0.{}", i + 10),
                labels: [("version".to_string(), format!("v{}", i % 3 + 1))].into(),
                ..Default::default()
            })
            .collect(),
        subsets: ["v1", "v2", "v3"]
            .iter()
            .map(|v| proto::Subset {
                name: (*v).into(),
                labels: [("version".to_string(), (*v).to_string())].into(),
                ..Default::default()
            })
            .collect(),
        http_routes: routes,
        ..Default::default()
    };
    State::compile(proto::ProxyState {
        version: "bench".into(),
        services: vec![service],
        namespace: "default".into(),
        ..Default::default()
    })
    .unwrap()
}

/// A request as a browser or SDK sends it: ten headers.
fn request() -> Request<Body> {
    Request::builder()
        .uri("/reviews/0")
        .header("host", "reviews:9080")
        .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64) bench")
        .header("accept", "application/json")
        .header("accept-encoding", "gzip, deflate, br")
        .header("accept-language", "en-GB,en;q=0.9")
        .header("cookie", "session=0123456789abcdef; theme=dark")
        .header("x-b3-sampled", "0")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .header("connection", "keep-alive")
        .header("content-type", "application/json")
        .body(full(Bytes::new()))
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let state = state();
    let svc = state
        .service_for("10.96.0.20:9080".parse().unwrap())
        .unwrap()
        .clone();
    let routes = &svc.spec.http_routes;
    let src = route::SourceFacts {
        labels: None,
        namespace: "default",
    };
    let req = request();
    let facts = |path: &'static str, query: &'static str| route::RequestFacts {
        method: "GET",
        path,
        query,
        authority: "reviews:9080",
        scheme: "http",
        headers: req.headers(),
        port: 9080,
        claims: None,
    };

    let mut group = c.benchmark_group("route_match");
    // Nine routes tried before the catch-all: the worst case of this table.
    let last = facts("/reviews/0", "");
    assert_eq!(
        route::find(&state, routes, &last, &src).unwrap().name,
        "default"
    );
    group.bench_function("ten_routes_falls_through_to_default", |b| {
        b.iter(|| route::find(&state, routes, black_box(&last), &src));
    });
    let regexed = facts("/reviews/42/comments", "");
    assert_eq!(
        route::find(&state, routes, &regexed, &src).unwrap().name,
        "regex"
    );
    group.bench_function("regex_route_seventh", |b| {
        b.iter(|| route::find(&state, routes, black_box(&regexed), &src));
    });
    group.finish();

    let mut group = c.benchmark_group("lb_pick");
    let loads = Loads::default();
    let port = svc.port(9080).unwrap().clone();
    let addrs: Vec<SocketAddr> = (0..10)
        .map(|i| SocketAddr::from(([10, 244, 0, 10 + i], 9080)))
        .collect();
    group.bench_function("least_request_of_10", |b| {
        b.iter(|| {
            loads.pick(
                format_args!("reviews"),
                Balancer::LeastRequest,
                black_box(&addrs),
            )
        });
    });
    group.bench_function("round_robin_of_10", |b| {
        b.iter(|| {
            loads.pick(
                format_args!("reviews"),
                Balancer::RoundRobin,
                black_box(&addrs),
            )
        });
    });
    group.bench_function("endpoint_in_subset_v1", |b| {
        b.iter(|| endpoint_in(&svc, &port, black_box("v1"), &loads, None));
    });
    group.finish();

    let mut group = c.benchmark_group("headers");
    let target = Target::passthrough("10.244.0.10:9080".parse().unwrap());
    group.bench_function("prepare_and_build_upstream_request", |b| {
        b.iter_batched(
            request,
            |mut req| {
                headers::prepare_upstream(&mut req, "10.244.0.2:50000".parse().unwrap());
                headers::upstream_request(&mut req, &target, false, true, false).unwrap()
            },
            criterion::BatchSize::SmallInput,
        );
    });
    group.finish();

    let mut group = c.benchmark_group("accounting");
    let addr: SocketAddr = "10.244.0.10:9080".parse().unwrap();
    group.bench_function("active_request_start_and_end", |b| {
        b.iter(|| drop(loads.start(black_box(addr))));
    });
    group.finish();

    bench_metrics(c);
}

/// Recording one request in Istio's metrics: the series lookup with a key borrowed from the
/// request, the timer and its drop; and a scrape of a proxy with 1000 series.
fn bench_metrics(c: &mut Criterion) {
    use mesh_proxy::metrics::{Key, Metrics, Reporter, RequestProtocol, Sides, Workload};
    let metrics = std::sync::Arc::new(Metrics::new(Workload::unknown()));
    let describe = || Sides::unknown_destination(Workload::unknown());
    // A request's own copy of the host name, as a routed request holds it.
    let host = String::from("reviews.bookinfo.svc.cluster.local");
    let key = |code| Key {
        reporter: Reporter::Source,
        peer: host.as_str(),
        addr: Some("10.244.0.10:9080".parse().unwrap()),
        meta: "workload=reviews-v2&namespace=bookinfo&app=reviews&version=v2",
        mtls: true,
        protocol: RequestProtocol::Http,
        code,
        flags: "-",
        grpc_status: None,
    };
    let ok = key(200);
    metrics.request_series(&ok, describe);
    let mut group = c.benchmark_group("metrics");
    group.bench_function("record_request", |b| {
        b.iter(|| {
            let started = tokio::time::Instant::now();
            drop(metrics.time_request(black_box(&ok), started, describe));
        });
    });
    let many = std::sync::Arc::new(Metrics::new(Workload::unknown()));
    let hosts: Vec<String> = (0..250)
        .map(|i| format!("svc-{i}.ns.svc.cluster.local"))
        .collect();
    for h in &hosts {
        for code in [200, 404, 500, 503] {
            let mut k = key(code);
            k.peer = h;
            many.request_series(&k, describe).record(700, 0, 0);
        }
    }
    group.bench_function("scrape_1000_series", |b| b.iter(|| many.render().len()));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
