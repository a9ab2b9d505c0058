//! Pilot and real proxies in-process on 127.0.0.1: a config change reaches the proxy and its
//! traffic; a state the proxy cannot apply is NACKed (pilot records why) while the proxy keeps
//! serving; a destination outside the default view is fetched on demand; pilot restarts while
//! traffic flows and no request fails.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use mesh_api::proto::discovery::v1 as pb;
use mesh_pilot::run::Pilot;
use mesh_proxy::discovery::{DiscoveryConfig, OnDemand};
use mesh_proxy::socket::FixedDst;
use mesh_proxy::state::{State, proto};
use mesh_proxy::{Listeners, Proxy, Setup};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

const DEADLINE: Duration = Duration::from_secs(20);

/// An HTTP server on `ip` answering with `name`.
async fn backend(ip: &str, name: &'static str) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (c, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |_req: Request<hyper::body::Incoming>| async move {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name))))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(c), svc)
                    .await;
            });
        }
    });
    addr
}

/// shipping v1 and v2, and `far` in another namespace, each on its own loopback address.
async fn backends() -> (SocketAddr, SocketAddr, SocketAddr) {
    (
        backend("127.0.0.2", "v1").await,
        backend("127.0.0.3", "v2").await,
        backend("127.0.0.4", "far").await,
    )
}

fn mesh_yaml(v1: SocketAddr, v2: SocketAddr, far: SocketAddr) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: shipping, namespace: default}}
spec:
  clusterIP: 10.96.0.10
  selector: {{app: shipping}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: shipping-v1, namespace: default}}
spec: {{address: {}, ports: {{http: {}}}, labels: {{app: shipping, version: v1}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: shipping-v2, namespace: default}}
spec: {{address: {}, ports: {{http: {}}}, labels: {{app: shipping, version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: shipping, namespace: default}}
spec:
  host: shipping
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: far, namespace: other}}
spec:
  clusterIP: 10.96.0.20
  selector: {{app: far}}
  ports: [{{name: http, port: 80}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: far-0, namespace: other}}
spec: {{address: {}, ports: {{http: {}}}, labels: {{app: far}}}}
",
        v1.ip(),
        v1.port(),
        v2.ip(),
        v2.port(),
        far.ip(),
        far.port()
    )
}

fn route_to(subset: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shipping, namespace: default}}
spec:
  hosts: [shipping]
  http:
  - route:
    - destination: {{host: shipping, subset: {subset}}}
"
    )
}

async fn start_pilot(dir: &Path, discovery: SocketAddr) -> Pilot {
    Pilot::start(mesh_pilot::testing::folder_config(dir, discovery))
        .await
        .unwrap()
}

struct Sidecar {
    proxy: Proxy,
    state: watch::Receiver<Arc<State>>,
}

/// A proxy fed by pilot, whose outbound connections all head for `vip`.
async fn sidecar(pilot: SocketAddr, id: &str, vip: &str) -> Sidecar {
    let node = pb::Node {
        id: id.into(),
        namespace: "default".into(),
        service_account: "order".into(),
        labels: [("app".to_string(), "order".to_string())].into(),
        ip_addresses: vec!["10.1.0.1".into()],
        ..Default::default()
    };
    let empty = State::compile(proto::ProxyState::default()).unwrap();
    let (tx, rx) = watch::channel(Arc::new(empty));
    let (lookups_tx, lookups) = mpsc::unbounded_channel();
    let od = Arc::new(OnDemand::new(lookups_tx));
    let config = DiscoveryConfig {
        address: format!("http://{pilot}"),
        node,
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        tls: None,
    };
    tokio::spawn(mesh_proxy::discovery::run(
        config,
        tx,
        lookups,
        Some(od.clone()),
    ));
    let any = "127.0.0.1:0".parse().unwrap();
    let listeners = Listeners {
        outbound: any,
        inbound: any,
        admin: any,
        readiness: any,
        metrics: any,
    };
    let dst = Arc::new(FixedDst(vip.parse().unwrap()));
    let setup = Setup {
        state: rx.clone(),
        has_state: false,
        outbound_dst: dst.clone(),
        inbound_dst: dst,
        svids: None,
        on_demand: Some(od),
        workload: mesh_proxy::metrics::Workload::unknown(),
        debug_authz: false,
        jwks_ca_pem: None,
        gateway: None,
        limits: Default::default(),
    };
    Sidecar {
        proxy: Proxy::launch(&listeners, setup).await.unwrap(),
        state: rx,
    }
}

/// One request on a fresh connection; the body, or why it failed.
async fn call(proxy: SocketAddr) -> Result<String, String> {
    let stream = TcpStream::connect(proxy).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("/")
        .header("host", "shipping")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    if status.is_success() {
        Ok(text)
    } else {
        Err(format!("{status}: {text}"))
    }
}

/// Calls until the answer is `want`, within the deadline.
async fn until_answer(proxy: SocketAddr, want: &str) {
    tokio::time::timeout(DEADLINE, async {
        loop {
            if call(proxy).await.as_deref() == Ok(want) {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the proxy never answered {want}"));
}

fn has_service(state: &State, host: &str) -> bool {
    state.source.services.iter().any(|s| s.hostname == host)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_the_proxy_and_refused_states_are_nacked() {
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2, far) = backends().await;
    std::fs::write(dir.path().join("mesh.yaml"), mesh_yaml(v1, v2, far)).unwrap();
    std::fs::write(dir.path().join("vs.yaml"), route_to("v1")).unwrap();
    let pilot = start_pilot(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let mut sc = sidecar(
        pilot.discovery_addr,
        "sidecar~10.1.0.1~order.default",
        "10.96.0.10:80",
    )
    .await;
    tokio::time::timeout(
        DEADLINE,
        sc.state
            .wait_for(|s| has_service(s, "shipping.default.svc.cluster.local")),
    )
    .await
    .expect("the first state arrives")
    .unwrap();
    assert!(
        !has_service(&sc.state.borrow(), "far.other.svc.cluster.local"),
        "another namespace's service is not in the default view"
    );
    until_answer(sc.proxy.bound.outbound, "v1").await;

    // A change while the proxy runs.
    std::fs::write(dir.path().join("vs.yaml"), route_to("v2")).unwrap();
    until_answer(sc.proxy.bound.outbound, "v2").await;
    let status = pilot.status.all();
    assert_eq!(status.len(), 1);
    assert!(
        status[0].connected && status[0].nack.is_none(),
        "{status:?}"
    );

    // Pilot accepts this (a readable file), the proxy cannot use it: NACK, and the proxy
    // keeps routing with its last good state.
    let bad = dir.path().join("not-a-ca.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    let dr = format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: shipping, namespace: default}}
spec:
  host: shipping
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: {}}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
",
        bad.display()
    );
    std::fs::write(dir.path().join("mesh.yaml"), mesh_yaml(v1, v2, far).replace(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: shipping, namespace: default}\nspec:\n  host: shipping\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n",
        &dr,
    ))
    .unwrap();
    tokio::time::timeout(DEADLINE, pilot.status.wait_for(|s| s[0].nack.is_some()))
        .await
        .expect("the proxy refuses the state and pilot records it");
    let nack = pilot.status.all()[0].nack.clone().unwrap();
    assert!(nack.contains("shipping"), "{nack}");
    // The sidecar counts what it refused on its own metrics page too.
    let page = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = TcpStream::connect(sc.proxy.bound.admin).await.unwrap();
        conn.write_all(b"GET /stats/prometheus HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let mut page = String::new();
        conn.read_to_string(&mut page).await.unwrap();
        page
    };
    let refused: u64 = page
        .lines()
        .find_map(|l| l.strip_prefix("mesh_proxy_state_refused_total "))
        .unwrap_or_else(|| panic!("no refusal count: {page}"))
        .parse()
        .unwrap();
    assert!(refused >= 1, "{page}");
    assert_eq!(call(sc.proxy.bound.outbound).await.as_deref(), Ok("v2"));
    // Undone: the proxy already holds what pilot now wants (nothing is sent), and the NACK is
    // no longer reported.
    std::fs::write(dir.path().join("mesh.yaml"), mesh_yaml(v1, v2, far)).unwrap();
    tokio::time::timeout(DEADLINE, pilot.status.wait_for(|s| s[0].nack.is_none()))
        .await
        .expect("the NACK clears once the refused change is undone");
    assert_eq!(call(sc.proxy.bound.outbound).await.as_deref(), Ok("v2"));
    pilot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_outside_the_view_is_fetched_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2, far) = backends().await;
    std::fs::write(dir.path().join("mesh.yaml"), mesh_yaml(v1, v2, far)).unwrap();
    let pilot = start_pilot(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let mut sc = sidecar(
        pilot.discovery_addr,
        "sidecar~10.1.0.1~od.default",
        "10.96.0.20:80",
    )
    .await;
    tokio::time::timeout(
        DEADLINE,
        sc.state
            .wait_for(|s| has_service(s, "shipping.default.svc.cluster.local")),
    )
    .await
    .expect("the first state arrives")
    .unwrap();
    assert!(!has_service(
        &sc.state.borrow(),
        "far.other.svc.cluster.local"
    ));
    // The very first connection to the unknown VIP is answered by the right service.
    assert_eq!(call(sc.proxy.bound.outbound).await.as_deref(), Ok("far"));
    assert!(has_service(
        &sc.state.borrow(),
        "far.other.svc.cluster.local"
    ));
    pilot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pilot_restarts_while_traffic_flows_and_no_request_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2, far) = backends().await;
    std::fs::write(dir.path().join("mesh.yaml"), mesh_yaml(v1, v2, far)).unwrap();
    std::fs::write(dir.path().join("vs.yaml"), route_to("v1")).unwrap();
    let pilot = start_pilot(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let addr = pilot.discovery_addr;
    let sc = sidecar(addr, "sidecar~10.1.0.1~restart.default", "10.96.0.10:80").await;
    until_answer(sc.proxy.bound.outbound, "v1").await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let proxy = sc.proxy.bound.outbound;
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match call(proxy).await {
                    Ok(body) if body == "v1" => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("failed: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        })
    };
    let served = |n: usize| {
        let ok = ok.clone();
        async move {
            tokio::time::timeout(DEADLINE, async {
                while ok.load(Ordering::Relaxed) < n {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .expect("traffic flows");
        }
    };
    served(50).await;
    pilot.stop().await;
    // Pilot is away: the proxy serves from its last state.
    let before = ok.load(Ordering::Relaxed);
    served(before + 100).await;
    let pilot = start_pilot(dir.path(), addr).await;
    tokio::time::timeout(
        DEADLINE,
        pilot.status.wait_for(|s| {
            s.first()
                .is_some_and(|p| p.connected && p.acked_version.is_some())
        }),
    )
    .await
    .expect("the proxy reconnects and resyncs");
    let before = ok.load(Ordering::Relaxed);
    served(before + 100).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request fails while pilot restarts"
    );
    eprintln!(
        "{} requests served across the restart",
        ok.load(Ordering::Relaxed)
    );
    pilot.stop().await;
}
