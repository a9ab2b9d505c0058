use std::cell::Cell;
use std::collections::HashMap;
use std::time::Duration;

use super::*;

fn order() -> Workload {
    let labels: HashMap<&str, &str> = [("app", "order"), ("version", "v1")].into();
    Workload::from_labels(
        "order-v1",
        "shop",
        "spiffe://cluster.local/ns/shop/sa/order",
        |k| labels.get(k).copied(),
    )
}

fn sides() -> Sides {
    let labels: HashMap<&str, &str> = [("app", "inventory"), ("version", "v2")].into();
    Sides {
        source: order(),
        destination: Workload::from_labels(
            "",
            "shop",
            "spiffe://cluster.local/ns/shop/sa/inventory",
            |k| labels.get(k).copied(),
        ),
        service: labels::service_names("inventory.shop.svc.cluster.local", "shop"),
    }
}

fn key(host: &str, code: u16) -> KeyRef<'_> {
    Key {
        reporter: Reporter::Source,
        peer: host,
        addr: Some(([10, 0, 0, 7], 8080).into()),
        meta: "",
        mtls: true,
        protocol: RequestProtocol::Http,
        code,
        flags: "-",
        grpc_status: None,
    }
}

#[test]
fn a_key_borrowed_from_a_request_finds_its_series_without_describing_it_again() {
    let metrics = Metrics::new(order());
    let described = Cell::new(0);
    let describe = || {
        described.set(described.get() + 1);
        sides()
    };
    let host = String::from("inventory.shop.svc.cluster.local");
    let first = metrics.request_series(&key(&host, 200), describe);
    // Another request's copy of the same host name: same series.
    let again = host.clone();
    let second = metrics.request_series(&key(&again, 200), describe);
    assert!(Arc::ptr_eq(&first, &second));
    assert_eq!(described.get(), 1);
    // Another status code is another series.
    let other = metrics.request_series(&key(&host, 503), describe);
    assert!(!Arc::ptr_eq(&first, &other));
    assert_eq!(described.get(), 2);
}

#[test]
fn requests_render_with_istio_names_labels_and_buckets() {
    let metrics = Arc::new(Metrics::new(order()));
    let host = "inventory.shop.svc.cluster.local";
    // Two requests: one of 3 ms (bucket le=5), one of 0.2 ms (bucket le=0.5).
    let now = Instant::now();
    for took in [Duration::from_millis(3), Duration::from_micros(200)] {
        let series = metrics.request_series(&key(host, 200), sides);
        series.record(u64::try_from(took.as_micros()).unwrap(), 0, 0);
    }
    drop(metrics.time_request(&key(host, 503), now, sides));
    let text = metrics.render();
    let labels = "reporter=\"source\",source_workload=\"order-v1\",source_workload_namespace=\"shop\",\
        source_principal=\"spiffe://cluster.local/ns/shop/sa/order\",source_app=\"order\",\
        source_version=\"v1\",source_canonical_service=\"order\",source_canonical_revision=\"v1\",\
        destination_workload=\"unknown\",destination_workload_namespace=\"shop\",\
        destination_principal=\"spiffe://cluster.local/ns/shop/sa/inventory\",\
        destination_app=\"inventory\",destination_version=\"v2\",\
        destination_canonical_service=\"inventory\",destination_canonical_revision=\"v2\",\
        destination_service=\"inventory.shop.svc.cluster.local\",\
        destination_service_name=\"inventory\",destination_service_namespace=\"shop\",\
        request_protocol=\"http\",response_code=\"200\",response_flags=\"-\",\
        grpc_response_status=\"\",connection_security_policy=\"mutual_tls\"";
    assert!(text.contains("# TYPE istio_requests counter"), "{text}");
    assert!(
        text.contains(&format!("istio_requests_total{{{labels}}} 2\n")),
        "{text}"
    );
    assert!(text.contains("response_code=\"503\""), "{text}");
    let bucket = |le: &str, n: u64| {
        format!("istio_request_duration_milliseconds_bucket{{le=\"{le}\",{labels}}} {n}\n")
    };
    for (le, n) in [("0.5", 1), ("1.0", 1), ("5.0", 2), ("+Inf", 2)] {
        assert!(
            text.contains(&bucket(le, n)),
            "no {le} bucket of {n}: {text}"
        );
    }
    assert!(
        text.contains(&format!(
            "istio_request_duration_milliseconds_sum{{{labels}}} 3.2\n"
        )),
        "{text}"
    );
    assert!(text.contains("mesh_proxy_build_info{"), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[tokio::test]
async fn request_and_response_sizes_are_histograms_of_bodies() {
    use http_body_util::BodyExt;
    let metrics = Arc::new(Metrics::new(order()));
    let host = "inventory.shop.svc.cluster.local";
    let timer = metrics
        .time_request(&key(host, 200), Instant::now(), sides)
        .request_bytes(40);
    let body = Timed::new(
        http_body_util::Full::new(bytes::Bytes::from(vec![b'x'; 700])),
        timer,
    );
    // The response's body is sent (read to its end), then dropped.
    let read = body.collect().await.unwrap().to_bytes();
    assert_eq!(read.len(), 700);
    let text = metrics.render();
    let line = |name: &str, le: &str, n: u64| {
        text.lines().any(|l| {
            l.starts_with(&format!("{name}_bucket{{le=\"{le}\","))
                && l.contains("response_code=\"200\"")
                && l.ends_with(&format!(" {n}"))
        })
    };
    assert!(line("istio_request_bytes", "25.0", 0), "{text}");
    assert!(line("istio_request_bytes", "50.0", 1), "{text}");
    assert!(line("istio_response_bytes", "500.0", 0), "{text}");
    assert!(line("istio_response_bytes", "1000.0", 1), "{text}");
    assert!(
        text.contains("# TYPE istio_request_bytes histogram"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("istio_response_bytes_sum{") && l.ends_with(" 700.0")),
        "{text}"
    );
}

#[tokio::test]
async fn a_grpc_call_is_counted_with_the_status_its_trailers_carry() {
    use http_body_util::BodyExt;
    let metrics = Arc::new(Metrics::new(order()));
    let host = "inventory.shop.svc.cluster.local";
    let mut k = key(host, 200);
    k.protocol = RequestProtocol::Grpc;
    let timer = metrics.time_grpc_call(&k, Instant::now(), sides);
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("14"));
    /// A body of given frames.
    struct Frames(std::collections::VecDeque<hyper::body::Frame<bytes::Bytes>>);
    impl hyper::body::Body for Frames {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>>
        {
            std::task::Poll::Ready(self.0.pop_front().map(Ok))
        }
    }
    let frames = Frames(
        [
            hyper::body::Frame::data(bytes::Bytes::from_static(b"\0\0\0\0\0")),
            hyper::body::Frame::trailers(trailers),
        ]
        .into(),
    );
    let body = Timed::new(frames, timer);
    let _ = body.collect().await.unwrap();
    let text = metrics.render();
    assert!(
        text.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("request_protocol=\"grpc\"")
            && l.contains("grpc_response_status=\"14\"")
            && l.ends_with(" 1")),
        "{text}"
    );
    assert!(
        !text.contains("grpc_response_status=\"\""),
        "no series is made before the status is known: {text}"
    );
}

#[test]
fn a_timed_body_counts_its_request_when_it_is_dropped() {
    let metrics = Metrics::new(order());
    let host = "inventory.shop.svc.cluster.local";
    let started = Instant::now();
    let timer = metrics.time_request(&key(host, 200), started, sides);
    let body = Timed::new(http_body_util::Empty::<bytes::Bytes>::new(), timer);
    let series = metrics.request_series(&key(host, 200), sides);
    assert_eq!(series.count(), 0, "counted before the response was sent");
    drop(body);
    assert_eq!(series.count(), 1);
}

#[test]
fn tcp_bytes_count_as_istio_does_requests_received_responses_sent() {
    let metrics = Arc::new(Metrics::new(order()));
    let mut k = key("db.shop.svc.cluster.local", 0);
    k.protocol = RequestProtocol::Tcp;
    let series = metrics.tcp_series(&k, sides);
    series.opened();
    series.closed(100, 7000);
    let text = metrics.render();
    for line in [
        "istio_tcp_connections_opened_total{",
        "istio_tcp_connections_closed_total{",
    ] {
        assert!(text.contains(line), "{text}");
    }
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_string)
    };
    assert_eq!(
        value("istio_tcp_received_bytes_total").as_deref(),
        Some("100")
    );
    assert_eq!(value("istio_tcp_sent_bytes_total").as_deref(), Some("7000"));
    assert!(text.contains("request_protocol=\"tcp\""), "{text}");
    assert!(
        !text.contains("response_code="),
        "TCP has no status: {text}"
    );
}

#[test]
fn workloads_fall_back_as_istio_does() {
    let none = |_: &str| None;
    let w = Workload::from_labels("", "", "", none);
    assert_eq!(w, Workload::unknown());
    let labels: HashMap<&str, &str> = [
        ("app", "order"),
        ("service.istio.io/canonical-name", "orders"),
        ("app.kubernetes.io/version", "2.1"),
    ]
    .into();
    let w = Workload::from_labels("order-v1", "shop", "", |k| labels.get(k).copied());
    assert_eq!(w.canonical_service, "orders");
    assert_eq!(w.canonical_revision, "2.1");
    assert_eq!(w.version, "unknown");
    let bare = Workload::from_labels("order-v1", "shop", "", none);
    assert_eq!(bare.canonical_service, "order-v1");
    assert_eq!(bare.canonical_revision, "latest");

    let caller = Workload::from_principal("spiffe://cluster.local/ns/shop/sa/order");
    assert_eq!(caller.namespace, "shop");
    assert_eq!(caller.name, "unknown");
    assert_eq!(Workload::from_principal("").principal, "unknown");
    assert_eq!(Workload::namespace_of("spiffe://td/sa/x"), None);
}

#[test]
fn service_names_come_from_kubernetes_host_names_only() {
    assert_eq!(
        labels::service_names("order.shop.svc.cluster.local", "shop"),
        (
            "order.shop.svc.cluster.local".into(),
            "order".into(),
            "shop".into()
        )
    );
    assert_eq!(
        labels::service_names("api.example.com", ""),
        (
            "api.example.com".into(),
            "api.example.com".into(),
            "unknown".into()
        )
    );
}

#[test]
fn what_a_sidecar_says_of_its_workload_reads_back_with_the_proven_principal() {
    let order = order();
    let header = order.to_peer_header();
    assert_eq!(
        header,
        "workload=order-v1&namespace=shop&app=order&version=v1&canonical_service=order&canonical_revision=v1"
    );
    let principal = "spiffe://cluster.local/ns/shop/sa/order";
    assert_eq!(Workload::from_peer_header(&header, principal), order);
    // Only the fields it names; the rest as the identity tells.
    let partial = Workload::from_peer_header("workload=a%26b&color=red", principal);
    assert_eq!(partial.name, "a&b");
    assert_eq!(partial.namespace, "shop");
    assert_eq!(partial.app, "unknown");
    // Nothing said: known from the identity alone.
    assert_eq!(
        Workload::from_peer_header("", principal),
        Workload::from_principal(principal)
    );
}

#[test]
fn series_of_different_peer_workloads_stay_apart() {
    let metrics = Metrics::new(order());
    let mut a = key("inventory.shop.svc.cluster.local", 200);
    a.meta = "workload=inventory-v1";
    let mut b = a.clone();
    b.meta = "workload=inventory-v2";
    let first = metrics.request_series(&a, sides);
    assert!(!Arc::ptr_eq(&first, &metrics.request_series(&b, sides)));
    assert!(Arc::ptr_eq(&first, &metrics.request_series(&a, sides)));
}
