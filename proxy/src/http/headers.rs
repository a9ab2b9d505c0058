//! Request and response rewriting: header operations, rewrites, redirects, CORS, the headers
//! users expect from Envoy (`x-request-id`, `x-forwarded-proto`), hop-by-hop headers, and
//! protocol upgrades (WebSocket).

use std::net::SocketAddr;

use http::uri::{Authority, PathAndQuery, Scheme};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};

use super::{Body, full, with_path};
use crate::route::Target;
use crate::state::{State, proto};

/// Headers that belong to one connection and are never forwarded (RFC 9110 §7.6.1).
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// The request's authority: `:authority` / the URI's, else the Host header.
pub fn authority<B>(req: &Request<B>) -> String {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// Applies set/add/remove operations.
pub fn apply(headers: &mut HeaderMap, ops: Option<&proto::HeaderOps>) {
    let Some(ops) = ops else { return };
    for name in &ops.remove {
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(n);
        }
    }
    for (name, value) in &ops.set {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(n, v);
        }
    }
    for (name, value) in &ops.add {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(n, v);
        }
    }
}

/// True when the request asks to switch protocols (WebSocket).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11 && req.headers().contains_key(header::UPGRADE)
}

/// A gRPC call (`content-type: application/grpc...`), which only HTTP/2 carries.
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

// Header names the proxy adds to every request, made once (a name given as a string is parsed
// and, for names outside the standard set, copied each time).
/// `x-request-id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `x-forwarded-proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `x-forwarded-for`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-forwarded-client-cert`.
pub static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Headers every forwarded request gets: a request id when absent, the original protocol, and
/// no hop-by-hop headers (except those an upgrade needs).
pub fn prepare_upstream<B>(req: &mut Request<B>, _peer: SocketAddr) {
    // One look at each name first: most requests carry no hop-by-hop header at all, and a
    // removal costs a hash and a probe per name (this runs for every request).
    let (mut has_id, mut has_proto, mut has_hop, mut has_upgrade) = (false, false, false, false);
    for name in req.headers().keys() {
        if *name == X_REQUEST_ID {
            has_id = true;
        } else if *name == X_FORWARDED_PROTO {
            has_proto = true;
        } else if *name == header::UPGRADE {
            has_upgrade = true;
        } else if HOP_BY_HOP.contains(name) {
            has_hop = true;
        }
    }
    let upgrade = has_upgrade && req.version() == Version::HTTP_11;
    let headers = req.headers_mut();
    if !has_id && let Ok(v) = HeaderValue::from_bytes(&request_id_bytes()) {
        headers.insert(X_REQUEST_ID.clone(), v);
    }
    if !has_proto {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    if has_upgrade && !upgrade {
        headers.remove(header::UPGRADE);
    }
    if !has_hop {
        return;
    }
    // Names listed in Connection are hop-by-hop too.
    let listed: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    let keep = |name: &str| upgrade && (name == "connection" || name == "upgrade");
    for name in &HOP_BY_HOP {
        if !keep(name.as_str()) {
            headers.remove(name);
        }
    }
    for name in &listed {
        if !keep(name) {
            headers.remove(name.as_str());
        }
    }
}

/// A random UUID (version 4) for `x-request-id`.
pub fn request_id() -> String {
    String::from_utf8_lossy(&request_id_bytes()).into_owned()
}

/// The same UUID as ASCII, written without formatting machinery (it runs for every request).
fn request_id_bytes() -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut b = fastrand::u128(..).to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = [b'-'; 36];
    let mut at = 0;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        out[at] = HEX[usize::from(byte >> 4)];
        out[at + 1] = HEX[usize::from(byte & 0x0f)];
        at += 2;
    }
    out
}

/// Headers whose value is new on every request (ids of the request and of its trace): sent as
/// HPACK "never indexed" literals over HTTP/2. Indexed, each would enter the connection's
/// dynamic table, push out the entries that do repeat, and lengthen the chain the encoder walks
/// for that name (about 9,000 instructions per request between two sidecars).
static UNIQUE_PER_REQUEST: [HeaderName; 6] = [
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("b3"),
    HeaderName::from_static("x-b3-traceid"),
    HeaderName::from_static("x-b3-spanid"),
    HeaderName::from_static("x-b3-parentspanid"),
];

/// The request to send upstream: to `target`'s address, same method, headers and body (taken
/// out of `req`; a retry resends without a body), as HTTP/2 or HTTP/1.1.
pub fn upstream_request(
    req: &mut Request<Body>,
    target: &Target,
    h2: bool,
    take_headers: bool,
    absolute: bool,
) -> Result<Request<Body>, http::Error> {
    let mut parts = http::uri::Parts::default();
    // hyper-util's client wants the address in the URI (`https` asks its connector for mesh
    // mTLS); a connection of our own takes the origin form (`/path?query`) as sent on the wire.
    if absolute {
        parts.scheme = Some(if target.mtls || target.originate.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        });
        parts.authority = Some(
            Authority::from_maybe_shared(bytes::Bytes::from(addr_text(target.addr)))
                .map_err(http::Error::from)?,
        );
    }
    // Shares the request's buffer: no copy of the path.
    parts.path_and_query = Some(
        req.uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    let uri = Uri::from_parts(parts).map_err(http::Error::from)?;
    // An HTTP/2 request from a mesh hop carries the endpoint's address as `:authority` and
    // the authority asked for in its Host header, which is kept.
    let host = req
        .uri()
        .authority()
        .filter(|_| req.version() != Version::HTTP_2 || !req.headers().contains_key(header::HOST))
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    let body = std::mem::replace(req.body_mut(), full(bytes::Bytes::new()));
    let mut out = Request::new(body);
    *out.method_mut() = req.method().clone();
    *out.uri_mut() = uri;
    *out.version_mut() = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    // Handing the headers over saves copying every one of them; a request that may be retried
    // keeps its own.
    *out.headers_mut() = if take_headers {
        std::mem::take(req.headers_mut())
    } else {
        req.headers().clone()
    };
    // An absolute-form request's authority wins over its Host header, as in HTTP/1.1.
    if let Some(v) = host {
        out.headers_mut().insert(header::HOST, v);
    }
    if h2 {
        for (name, value) in out.headers_mut().iter_mut() {
            if UNIQUE_PER_REQUEST.contains(name) {
                value.set_sensitive(true);
            }
        }
    }
    Ok(out)
}

/// `ip:port` as text; IPv4 written digit by digit (`SocketAddr`'s Display costs about 1,300
/// instructions, and this runs for every request).
fn addr_text(addr: SocketAddr) -> String {
    let SocketAddr::V4(v4) = addr else {
        return addr.to_string();
    };
    fn push_decimal(out: &mut String, n: u16) {
        let mut digits = [0u8; 5];
        let mut i = digits.len();
        let mut n = n;
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for d in &digits[i..] {
            out.push(char::from(*d));
        }
    }
    let mut out = String::with_capacity(21);
    for (i, octet) in v4.ip().octets().iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_decimal(&mut out, u16::from(*octet));
    }
    out.push(':');
    push_decimal(&mut out, v4.port());
    out
}

/// Joins the client's and the upstream's upgraded connections once the upstream agreed (101).
pub fn splice_upgrade<B>(req: &mut Request<Body>, resp: &mut Response<B>) {
    let client = hyper::upgrade::on(req);
    let upstream = hyper::upgrade::on(resp);
    tokio::spawn(async move {
        let (Ok(client), Ok(upstream)) = (client.await, upstream.await) else {
            return;
        };
        let mut client = hyper_util::rt::TokioIo::new(client);
        let mut upstream = hyper_util::rt::TokioIo::new(upstream);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    });
}

/// Rewrites the path (replacing the matched prefix, or the whole path) and the authority.
pub fn rewrite(
    req: &mut Request<Body>,
    rw: &proto::Rewrite,
    matched: Option<&proto::HttpMatch>,
    state: &State,
) {
    let path = req.uri().path().to_string();
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let new_path = if !rw.uri_regex.is_empty() {
        state.rewrite_regex(&rw.uri_regex).map(|re| {
            // Every match is replaced, as Envoy's regex_rewrite; `\1` group references become
            // the regex crate's `${1}`.
            let sub = backrefs(&rw.uri_regex_substitution);
            re.replace_all(&path, sub.as_str()).into_owned()
        })
    } else if !rw.uri.is_empty() {
        let prefix = matched
            .and_then(|m| m.uri.as_ref())
            .and_then(|u| match &u.kind {
                Some(proto::string_match::Kind::Prefix(p)) => Some(p.clone()),
                _ => None,
            });
        Some(match prefix {
            Some(p) if path.starts_with(&p) => format!("{}{}", rw.uri, &path[p.len()..]),
            _ => rw.uri.clone(),
        })
    } else {
        None
    };
    if let Some(p) = new_path
        && let Some(uri) = with_path(req.uri(), &format!("{p}{query}"))
    {
        *req.uri_mut() = uri;
    }
    if !rw.authority.is_empty()
        && let Ok(v) = HeaderValue::from_str(&rw.authority)
    {
        req.headers_mut().insert(header::HOST, v);
        if req.uri().authority().is_some() {
            let mut parts = req.uri().clone().into_parts();
            parts.authority = rw.authority.parse().ok();
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
}

/// Turns RE2-style `\N` group references into the regex crate's `${N}`.
fn backrefs(sub: &str) -> String {
    let mut out = String::new();
    let mut chars = sub.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(d)) if d.is_ascii_digit() => {
                out.push_str(&format!("${{{d}}}"));
                chars.next();
            }
            ('$', _) => out.push_str("$$"),
            _ => out.push(c),
        }
    }
    out
}

/// The redirect response. The Location leaves out a port that is the scheme's default.
pub fn redirect(
    req: &Request<Body>,
    rd: &proto::Redirect,
    authority: &str,
    state: &State,
) -> Response<Body> {
    let scheme = if rd.scheme.is_empty() {
        req.uri().scheme_str().unwrap_or("http")
    } else {
        &rd.scheme
    };
    let host = if rd.authority.is_empty() {
        authority.split(':').next().unwrap_or("")
    } else {
        rd.authority.as_str()
    };
    let port = match rd.port {
        0 if rd.protocol_default_port => None,
        0 => authority
            .split_once(':')
            .and_then(|(_, p)| p.parse::<u32>().ok())
            .filter(|_| rd.authority.is_empty()),
        p => Some(p),
    };
    let port = match (scheme, port) {
        (_, None) | ("http", Some(80)) | ("https", Some(443)) => String::new(),
        (_, Some(p)) => format!(":{p}"),
    };
    let path = if !rd.uri.is_empty() {
        rd.uri.clone()
    } else if let Some(re) = (!rd.uri_regex.is_empty())
        .then(|| state.rewrite_regex(&rd.uri_regex))
        .flatten()
    {
        let sub = backrefs(&rd.uri_regex_substitution);
        let new = re.replace_all(req.uri().path(), sub.as_str()).into_owned();
        match req.uri().query() {
            Some(q) => format!("{new}?{q}"),
            None => new,
        }
    } else {
        req.uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string()
    };
    let code = if rd.code == 0 { 301 } else { rd.code };
    let mut resp = Response::new(full(bytes::Bytes::new()));
    *resp.status_mut() = StatusCode::from_u16(u16::try_from(code).unwrap_or(301))
        .unwrap_or(StatusCode::MOVED_PERMANENTLY);
    if let Ok(v) = HeaderValue::from_str(&format!("{scheme}://{host}{port}{path}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn origin_allowed(origin: &str, cors: &proto::Cors, state: &State) -> bool {
    cors.allow_origins
        .iter()
        .any(|m| crate::route::http::string_match(state, m, origin, false))
}

/// Answers a CORS preflight (OPTIONS with Origin and Access-Control-Request-Method) itself.
pub fn cors_preflight(
    req: &Request<Body>,
    cors: &proto::Cors,
    state: &State,
) -> Option<Response<Body>> {
    if req.method() != Method::OPTIONS
        || !req.headers().contains_key("access-control-request-method")
    {
        return None;
    }
    let origin = req.headers().get(header::ORIGIN)?.to_str().ok()?;
    if !origin_allowed(origin, cors, state) {
        return None;
    }
    let mut resp = Response::new(full(bytes::Bytes::new()));
    let h = resp.headers_mut();
    let set = |h: &mut HeaderMap, name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    };
    set(h, "access-control-allow-origin", origin.to_string());
    if !cors.allow_methods.is_empty() {
        set(
            h,
            "access-control-allow-methods",
            cors.allow_methods.join(","),
        );
    }
    if !cors.allow_headers.is_empty() {
        set(
            h,
            "access-control-allow-headers",
            cors.allow_headers.join(","),
        );
    }
    if cors.max_age_seconds > 0 {
        set(
            h,
            "access-control-max-age",
            cors.max_age_seconds.to_string(),
        );
    }
    if cors.allow_credentials {
        set(h, "access-control-allow-credentials", "true".into());
    }
    Some(resp)
}

/// Adds CORS headers to a response to an allowed origin.
pub fn cors_response<B>(
    resp: &mut Response<B>,
    req_headers: &HeaderMap,
    cors: &proto::Cors,
    state: &State,
) {
    let Some(origin) = req_headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
    else {
        return;
    };
    if !origin_allowed(origin, cors, state) {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(origin) {
        resp.headers_mut().insert("access-control-allow-origin", v);
    }
    if !cors.expose_headers.is_empty()
        && let Ok(v) = HeaderValue::from_str(&cors.expose_headers.join(","))
    {
        resp.headers_mut()
            .insert("access-control-expose-headers", v);
    }
    if cors.allow_credentials {
        resp.headers_mut().insert(
            "access-control-allow-credentials",
            HeaderValue::from_static("true"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_like_display() {
        for a in [
            "127.0.0.1:80",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.244.0.17:8080",
            "[::1]:443",
            "[fe80::1]:9",
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            assert_eq!(addr_text(addr), addr.to_string());
        }
    }

    #[test]
    fn group_references_translate() {
        assert_eq!(backrefs(r"/v2/\1"), "/v2/${1}");
        assert_eq!(backrefs("$x"), "$$x");
    }

    fn prepared(version: Version, headers: &[(&str, &str)]) -> HeaderMap {
        let mut req = Request::builder().version(version).uri("/");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut req = req.body(()).unwrap();
        prepare_upstream(&mut req, "10.0.0.1:5000".parse().unwrap());
        req.into_parts().0.headers
    }

    #[test]
    fn hop_by_hop_headers_stay_behind() {
        let h = prepared(
            Version::HTTP_11,
            &[
                ("connection", "keep-alive, x-secret"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("te", "trailers"),
                ("transfer-encoding", "chunked"),
                ("x-secret", "1"),
                ("accept", "*/*"),
            ],
        );
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "x-forwarded-proto", "x-request-id"]);
        // Only HTTP/1.1 upgrades.
        let old = prepared(
            Version::HTTP_10,
            &[("connection", "upgrade"), ("upgrade", "x")],
        );
        assert!(!old.contains_key("upgrade") && !old.contains_key("connection"));
    }

    #[test]
    fn upgrades_keep_what_they_need() {
        let h = prepared(
            Version::HTTP_11,
            &[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("keep-alive", "timeout=5"),
                ("x-request-id", "given"),
                ("x-forwarded-proto", "https"),
            ],
        );
        assert_eq!(h["connection"], "Upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert!(!h.contains_key("keep-alive"));
        assert_eq!(h["x-request-id"], "given");
        assert_eq!(h["x-forwarded-proto"], "https");
        // Without hop-by-hop headers only the two mesh headers are added.
        let plain = prepared(Version::HTTP_11, &[("accept", "*/*")]);
        assert_eq!(plain.len(), 3);
        assert_eq!(plain["x-forwarded-proto"], "http");
    }

    #[test]
    fn request_ids_are_v4_uuids() {
        let id = request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        for (i, c) in id.chars().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                assert_eq!(c, '-', "{id}");
            } else {
                assert!(c.is_ascii_hexdigit() && !c.is_ascii_uppercase(), "{id}");
            }
        }
        assert_ne!(id, request_id());
    }

    #[test]
    fn header_operations_remove_set_then_add() {
        let mut h = HeaderMap::new();
        h.insert("x-old", HeaderValue::from_static("1"));
        h.insert("x-keep", HeaderValue::from_static("a"));
        let ops = proto::HeaderOps {
            set: [("x-keep".to_string(), "b".to_string())].into(),
            add: [("x-multi".to_string(), "c".to_string())].into(),
            remove: vec!["x-old".into()],
        };
        apply(&mut h, Some(&ops));
        assert!(!h.contains_key("x-old"));
        assert_eq!(h["x-keep"], "b");
        assert_eq!(h["x-multi"], "c");
    }
}
