//! One outbound request: the routing decision (no service, a route's direct response,
//! redirect or CORS preflight, or a destination), then forwarding, and the request's metrics
//! and access log.

use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::{Request, Response, StatusCode};

use super::forward::forward;
use super::retry::Policy;
use super::{Body, Conn, full, headers, reply};
use crate::inputs::Inputs;
use crate::route::http::{self as route, request_hash_key as hash_key};
use crate::route::{Target, choose_weighted, endpoint_in, to_destination};
use crate::state::{OutboundPolicy, Port, Protocol, Service, State, proto};
use hyper::body::Incoming;

/// Routes and forwards one request.
pub(super) async fn request(req: Request<Incoming>, ctx: &Conn) -> Response<Body> {
    let mut req = super::guard::into_proxy_body(req);
    let state = ctx.inputs.state.borrow().clone();
    let started = tokio::time::Instant::now();
    // Outbound requests and every request of a gateway are the CLIENT side's.
    let direction = if ctx.gateway { "gateway" } else { "outbound" };
    let span = super::start_span(
        &mut req,
        crate::telemetry::trace::Side::Client,
        &state,
        &ctx.inputs,
        ctx.peer,
        ctx.dst,
    );
    let entry = state
        .telemetry
        .client_entries()
        .then(|| super::log_entry(&mut req, direction, ctx.peer, ctx.dst));
    let shape = super::Shape::of(&req);
    let grpc = shape.grpc;
    let (response, target, flags) = if ctx.gateway {
        gateway_request(&mut req, ctx, &state).await
    } else {
        decide_and_send(&mut req, ctx, &state, None).await
    };
    let response = if grpc {
        super::grpc_local_reply(response)
    } else {
        response
    };
    // Istio's cluster name, only when a log line or a span will carry it.
    let cluster = target
        .as_ref()
        .filter(|_| entry.is_some() || span.is_some())
        .map(|t| {
            if &*t.service == crate::route::PASSTHROUGH {
                "PassthroughCluster".to_string()
            } else {
                format!("outbound|{}|{}|{}", ctx.dst.port(), t.subset, t.service)
            }
        });
    let span = span.map(|mut s| {
        let grpc_status = grpc
            .then(|| crate::metrics::grpc_status(response.headers()))
            .flatten();
        s.respond(
            response.status().as_u16(),
            flags,
            cluster.as_deref(),
            grpc_status,
        );
        s
    });
    let entry = entry.map(|mut e| {
        super::log_response(&mut e, &response, flags, grpc);
        if let Some(t) = &target {
            e.upstream_host = Some(t.addr.to_string());
            e.upstream_cluster = cluster;
            if t.mtls && !t.identity.is_empty() {
                e.upstream_peer_principal = Some(t.identity.to_string());
            }
        }
        e
    });
    timed(
        response,
        &ctx.inputs,
        &state,
        target.as_ref(),
        flags,
        shape,
        started,
        entry,
        span,
    )
}

/// Counts the request in its series once its response's body is sent (reporter `source`).
#[allow(clippy::too_many_arguments)]
fn timed(
    mut response: Response<Body>,
    inputs: &Inputs,
    state: &State,
    target: Option<&Target>,
    flags: &'static str,
    shape: super::Shape,
    started: tokio::time::Instant,
    entry: Option<crate::telemetry::Entry>,
    span: Option<crate::telemetry::trace::ActiveSpan>,
) -> Response<Body> {
    use crate::metrics::{Key, Reporter, RequestProtocol, Timed, outbound_sides};
    let grpc = shape.grpc;
    // One series for every destination outside the registry, whatever its address.
    let passthrough = target.is_none_or(|t| &*t.service == crate::route::PASSTHROUGH);
    // A sidecar answering over mTLS says which workload it serves; the app never sees it.
    let mtls = target.is_some_and(|t| t.mtls);
    let meta = if mtls {
        response.headers_mut().remove(&crate::metrics::PEER_HEADER)
    } else {
        None
    };
    let meta = meta.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("");
    let key = Key {
        reporter: Reporter::Source,
        peer: target.map_or(crate::metrics::UNKNOWN, |t| &*t.service),
        addr: target.filter(|_| !passthrough).map(|t| t.addr),
        meta,
        mtls: target.is_some_and(|t| t.mtls),
        protocol: RequestProtocol::of_http(grpc),
        code: response.status().as_u16(),
        flags,
        grpc_status: if grpc {
            crate::metrics::grpc_status(response.headers())
        } else {
            None
        },
    };
    let describe = || match target {
        Some(t) => outbound_sides(inputs.workload(), state, t, meta),
        None => crate::metrics::Sides::unknown_destination(inputs.workload()),
    };
    // A gRPC answer's status usually comes in its trailers, after this.
    let timer = if grpc && key.grpc_status.is_none() {
        inputs.metrics.time_grpc_call(&key, started, describe)
    } else {
        inputs.metrics.time_request(&key, started, describe)
    };
    let mut timer = timer.request_bytes(shape.bytes);
    if let Some(e) = entry {
        timer = timer.log(e, &state.telemetry.client_logs);
    }
    timer = timer.trace(span);
    response.map(|body| Timed::new(body, timer).boxed())
}

/// A request a gateway accepted: the policies that select the gateway (RequestAuthentication,
/// AuthorizationPolicy) first, as Istio's ingress gateway applies them, then routing, which may
/// match on the verified token's claims.
async fn gateway_request(
    req: &mut Request<Body>,
    ctx: &Conn,
    state: &State,
) -> (Response<Body>, Option<Target>, &'static str) {
    let peer = super::policy::Peer {
        addr: ctx.peer,
        identity: None,
        sni: None,
    };
    match super::policy::admit(req, &peer, ctx.dst, &ctx.inputs, state).await {
        Err((resp, words)) => {
            tracing::debug!(target: "authz", "gateway {} -> {}: {words}", ctx.peer, ctx.dst);
            (resp, None, "-")
        }
        Ok(admitted) => {
            let claims = admitted.verified.as_ref().map(|v| &v.claims);
            let (mut resp, target, flags) = decide_and_send(req, ctx, state, claims).await;
            super::policy::mark(&mut resp, &admitted, &ctx.inputs);
            (resp, target, flags)
        }
    }
}

pub(super) async fn decide_and_send(
    req: &mut Request<Body>,
    ctx: &Conn,
    state: &State,
    claims: Option<&serde_json::Value>,
) -> (Response<Body>, Option<Target>, &'static str) {
    let found = if ctx.gateway {
        match gateway_routes(req, ctx, state) {
            Ok(routes) => Some(routes),
            Err(answered) => {
                let (answer, flags) = *answered;
                return (answer, None, flags);
            }
        }
    } else {
        state.service_for(ctx.dst)
    };
    let Some(svc) = found else {
        if state.outbound_policy == OutboundPolicy::RegistryOnly {
            return (
                reply(
                    StatusCode::BAD_GATEWAY,
                    "destination not in the mesh registry (REGISTRY_ONLY)",
                ),
                None,
                "NR",
            );
        }
        let mut target = Target::passthrough(ctx.dst);
        let (resp, flags) = forward(
            req,
            &mut target,
            false,
            0,
            &Policy::NONE,
            ctx,
            state,
            None,
            None,
        )
        .await;
        return (resp, Some(target), flags);
    };
    let Some(port) = svc
        .port(ctx.dst.port())
        .or_else(|| svc.ports.iter().find(|p| p.target_port == ctx.dst.port()))
    else {
        return (
            reply(StatusCode::NOT_FOUND, "no such service port"),
            None,
            "NR",
        );
    };
    // Borrowed from copies that share the request's buffers (no per-request allocations):
    // the request itself is changed below.
    let uri = req.uri().clone();
    let host = req.headers().get(hyper::header::HOST).cloned();
    let authority = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| host.as_ref().and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    let method = req.method().clone();
    let facts = route::RequestFacts {
        method: method.as_str(),
        path: uri.path(),
        query: uri.query().unwrap_or(""),
        authority,
        scheme: uri
            .scheme_str()
            .unwrap_or(if ctx.https { "https" } else { "http" }),
        headers: req.headers(),
        port: port.port,
        claims,
    };
    let src = route::SourceFacts {
        labels: Some(&state.source.workload_labels),
        namespace: &state.source.namespace,
    };
    let chosen = if svc.spec.http_routes.is_empty() {
        None
    } else {
        match route::find(state, &svc.spec.http_routes, &facts, &src) {
            Some(r) => Some((r, route::matching(state, r, &facts, &src).cloned())),
            None => return (reply(StatusCode::NOT_FOUND, "no route matched"), None, "NR"),
        }
    };
    let Some((route, matched)) = chosen else {
        let target = endpoint_in(
            svc,
            port,
            "",
            &ctx.inputs.loads,
            Some(&hash_key(req, ctx.peer)),
        );
        return send_to(req, target, svc, port, None, None, ctx, state).await;
    };
    if let Some(dr) = &route.direct_response {
        let status = StatusCode::from_u16(u16::try_from(dr.status).unwrap_or(500))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = Response::new(full(dr.body.clone()));
        *resp.status_mut() = status;
        headers::apply(resp.headers_mut(), route.response_headers.as_ref());
        return (resp, None, "DR");
    }
    if let Some(rd) = &route.redirect {
        return (headers::redirect(req, rd, authority, state), None, "-");
    }
    if let Some(cors) = &route.cors
        && let Some(preflight) = headers::cors_preflight(req, cors, state)
    {
        return (preflight, None, "-");
    }
    let mut delayed = false;
    if let Some(fault) = &route.fault {
        // Boxed: only routes with a fault pay for the delay's timer in their future.
        match Box::pin(super::fault::inject(fault)).await {
            super::fault::Injected::Aborted(resp) => return (resp, None, "FI"),
            super::fault::Injected::Delayed => delayed = true,
            super::fault::Injected::None => {}
        }
    }
    let dest = choose_weighted(&route.destinations, |d| d.weight);
    let target = {
        let key = hash_key(req, ctx.peer);
        match dest {
            Some(d) => to_destination(state, svc, port, d, &ctx.inputs.loads, Some(&key)),
            None => endpoint_in(svc, port, "", &ctx.inputs.loads, Some(&key)),
        }
    };
    if let Some(rw) = &route.rewrite {
        headers::rewrite(req, rw, matched.as_ref(), state);
    }
    headers::apply(req.headers_mut(), route.request_headers.as_ref());
    if let Some(d) = dest {
        headers::apply(req.headers_mut(), d.request_headers.as_ref());
    }
    if !route.mirrors.is_empty() {
        // Boxed: only routes with mirrors pay for copying in their future.
        Box::pin(super::mirror::send_copies(
            req, route, svc, port, ctx, state,
        ))
        .await;
    }
    // CORS answers need the request's Origin after the request's headers went upstream.
    let sent_headers = route.cors.as_ref().map(|_| req.headers().clone());
    let (mut resp, target, flags) =
        send_to(req, target, svc, port, Some(route), dest, ctx, state).await;
    // A delayed request that then went well says so; an upstream failure's flag says more.
    let flags = if delayed && flags == "-" { "DI" } else { flags };
    if let Some(d) = dest {
        headers::apply(resp.headers_mut(), d.response_headers.as_ref());
    }
    headers::apply(resp.headers_mut(), route.response_headers.as_ref());
    if let (Some(cors), Some(sent)) = (&route.cors, &sent_headers) {
        headers::cors_response(&mut resp, sent, cors, state);
    }
    (resp, target, flags)
}

/// The routes of the gateway's virtual host for the request's Host on the listener's port,
/// or the answer when there is none (404), or when the server redirects to https (301). The
/// request is marked as a gateway marks it: `x-forwarded-for` and `x-forwarded-proto`.
fn gateway_routes<'s>(
    req: &mut Request<Body>,
    ctx: &Conn,
    state: &'s State,
) -> Result<&'s Arc<Service>, Box<(Response<Body>, &'static str)>> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let port = ctx.dst.port();
    let Some(host) = state.gateway_host(port, &authority) else {
        return Err(Box::new((
            reply(
                StatusCode::NOT_FOUND,
                &format!("no virtual host of this gateway serves {authority:?} on port {port}"),
            ),
            "NR",
        )));
    };
    if host.https_redirect {
        let name = authority
            .rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(authority.as_str(), |(h, _)| h);
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let mut resp = Response::new(full(""));
        *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
        if let Ok(location) = format!("https://{name}{path}").parse() {
            resp.headers_mut().insert(hyper::header::LOCATION, location);
        }
        return Err(Box::new((resp, "-")));
    }
    if host.routes.spec.http_routes.is_empty() {
        return Err(Box::new((
            reply(StatusCode::NOT_FOUND, "no route matched"),
            "NR",
        )));
    }
    let headers = req.headers_mut();
    let client = ctx.peer.ip().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(before) => format!("{before}, {client}"),
        None => client,
    };
    if let Ok(v) = xff.parse() {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert(
        "x-forwarded-proto",
        hyper::header::HeaderValue::from_static(if ctx.https { "https" } else { "http" }),
    );
    Ok(&host.routes)
}

#[allow(clippy::too_many_arguments)]
async fn send_to(
    req: &mut Request<Body>,
    target: Option<Target>,
    svc: &Arc<Service>,
    port: &Port,
    route: Option<&proto::HttpRoute>,
    dest: Option<&proto::WeightedDestination>,
    ctx: &Conn,
    state: &State,
) -> (Response<Body>, Option<Target>, &'static str) {
    let Some(mut target) = target else {
        return (
            reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
            None,
            "UH",
        );
    };
    // Between two sidecars HTTP rides HTTP/2 whatever the app speaks; the peer's inbound side
    // restores what the destination app expects. Upgrades (WebSocket) stay HTTP/1.1. To a
    // destination without a sidecar the port's protocol decides, not the client's: an `http`
    // port gets HTTP/1.1 even from an HTTP/2 client, as in Istio; gRPC always needs HTTP/2.
    let h2 = matches!(port.protocol, Protocol::Http2 | Protocol::Grpc)
        || headers::is_grpc(req)
        || (target.mesh && !headers::is_upgrade(req));
    let timeout_ms = route.map_or(0, |r| r.timeout_ms);
    let retry = Policy::of(route);
    let (resp, flags) = forward(
        req,
        &mut target,
        h2,
        timeout_ms,
        &retry,
        ctx,
        state,
        Some(svc),
        dest.map(|d| (d, port)),
    )
    .await;
    (resp, Some(target), flags)
}
