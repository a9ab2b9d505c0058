//! The Gateway API conformance scenarios (`../shared/testdata/gateway-api-conformance/`), read
//! from their condensed description (`EXPECTED.md`) and the upstream manifests, and the HTTP
//! client that checks them from inside a pod of the mesh.
//!
//! Each test lists its manifests, the features it exercises and its traffic checks: a request
//! (method, host, path, headers, whether to follow redirects) and what must come back (status,
//! which backend pod and namespace answered, what the backend received, response headers, the
//! redirect's Location). A check with a clause the runner cannot verify (TLS SNI, gRPC, TCP,
//! mirrored copies, CORS allowed sets) makes its test "not run", never passed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// One conformance test.
#[derive(Clone, Debug, Default)]
pub struct ConformanceTest {
    /// Its name (`HTTPRouteMatching`).
    pub name: String,
    /// Marked provisional upstream.
    pub provisional: bool,
    /// Manifest files, relative to the conformance folder.
    pub manifests: Vec<String>,
    /// Features (`SupportHTTPRoute`, ...).
    pub features: Vec<String>,
    /// Traffic checks.
    pub checks: Vec<Check>,
    /// Check lines the runner cannot verify, as written.
    pub unsupported: Vec<String>,
}

impl ConformanceTest {
    /// The most specific feature: the one the test is about (the last listed).
    pub fn feature(&self) -> &str {
        self.features.last().map_or("", String::as_str)
    }
}

/// One request and what must come back.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Check {
    /// The line, as written.
    pub line: String,
    /// Request method.
    pub method: String,
    /// Host header; the gateway's address when unset.
    pub host: Option<String>,
    /// Path and query.
    pub path: String,
    /// Request headers.
    pub headers: Vec<(String, String)>,
    /// Redirects are not followed (they never are here; the Location is checked instead).
    pub no_follow: bool,
    /// Any of these statuses passes.
    pub statuses: Vec<u16>,
    /// The answering pod's name starts with this.
    pub pod_prefix: Option<String>,
    /// The answering pod's namespace.
    pub namespace: Option<String>,
    /// What the backend must have received.
    pub received_path: Option<String>,
    /// The Host the backend must have received.
    pub received_host: Option<String>,
    /// The method the backend must have received.
    pub received_method: Option<String>,
    /// Headers the backend must have received.
    pub received_headers: Vec<(String, String)>,
    /// Headers the backend must not have received.
    pub received_absent: Vec<String>,
    /// Response headers that must be there, and those that must not.
    pub response_headers: Vec<(String, String)>,
    /// Response headers that must be absent.
    pub response_absent: Vec<String>,
    /// The redirect's Location.
    pub location: Option<Location>,
    /// Response headers the backend is asked to set (`X-Echo-Set-Header`).
    pub echo_set: Vec<(String, String)>,
    /// For a gRPC call: the method of the suite's echo, and the gRPC status expected.
    pub grpc: Option<GrpcCall>,
}

/// A call of the conformance echo's gRPC service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrpcCall {
    /// `Echo`, `EchoTwo` or `EchoThree`.
    pub method: String,
    /// The gRPC status code expected (0 OK, 12 Unimplemented).
    pub code: u32,
}

/// Parts of a redirect's Location to compare (unset parts: see the suite's ground rules).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Location {
    /// Scheme.
    pub scheme: Option<String>,
    /// Host name.
    pub host: Option<String>,
    /// Port.
    pub port: Option<u16>,
    /// Path.
    pub path: Option<String>,
}

/// Reads `EXPECTED.md`.
pub fn parse(text: &str) -> Vec<ConformanceTest> {
    let mut out: Vec<ConformanceTest> = Vec::new();
    for line in text.lines() {
        if let Some(title) = line.strip_prefix("### ") {
            let provisional = title.contains("(provisional)");
            let name = title.replace("(provisional)", "").trim().to_string();
            out.push(ConformanceTest {
                name,
                provisional,
                ..ConformanceTest::default()
            });
            continue;
        }
        let Some(test) = out.last_mut() else { continue };
        if let Some(rest) = line.strip_prefix("* Manifest(s): ") {
            let list = rest.split(" — ").next().unwrap_or("");
            test.manifests = backticked(list);
        } else if let Some(rest) = line.strip_prefix("* Features: ") {
            test.features = rest.split(',').map(|f| f.trim().to_string()).collect();
        } else if let Some(rest) = line.strip_prefix("  * ") {
            let parsed = if rest.starts_with("call `") {
                parse_call(rest)
            } else {
                parse_check(rest)
            };
            match parsed {
                Some(c) => test.checks.push(c),
                None => test.unsupported.push(rest.to_string()),
            }
        }
    }
    out
}

fn backticked(s: &str) -> Vec<String> {
    s.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, p)| p.to_string())
        .collect()
}

/// One `send ...` line; `None` for what the runner cannot check.
pub fn parse_check(line: &str) -> Option<Check> {
    let rest = line.strip_prefix("send `")?;
    let (request, clauses) = rest.split_once('`')?;
    let mut check = Check {
        line: line.to_string(),
        ..Check::default()
    };
    let mut request = request.to_string();
    if let Some(r) = request.strip_suffix(" (do not follow redirects)") {
        check.no_follow = true;
        request = r.to_string();
    }
    let (method, mut fields) = request.split_once(' ')?;
    check.method = method.to_string();
    loop {
        fields = fields.trim_start();
        if fields.is_empty() {
            break;
        }
        if let Some(v) = fields.strip_prefix("path=(default \"/\")") {
            check.path = "/".into();
            fields = v;
        } else if let Some(v) = fields.strip_prefix("headers=") {
            let (map, rest) = braces(v)?;
            check.headers = map;
            fields = rest;
        } else if let Some(v) = fields.strip_prefix("host=") {
            let (value, rest) = v.split_once(' ').unwrap_or((v, ""));
            check.host = Some(value.to_string());
            fields = rest;
        } else if let Some(v) = fields.strip_prefix("path=") {
            let (value, rest) = v.split_once(' ').unwrap_or((v, ""));
            check.path = value.to_string();
            fields = rest;
        } else {
            return None; // SNI=, proto=, and the like
        }
    }
    for clause in clauses.split("; ").map(str::trim).filter(|c| !c.is_empty()) {
        let clause = clause.trim_start_matches(';').trim();
        if let Some(s) = clause.strip_prefix("expect status ") {
            check.statuses = s
                .split('/')
                .map(|x| x.trim().parse().ok())
                .collect::<Option<Vec<u16>>>()?;
        } else if let Some(s) = clause.strip_prefix("served by a pod of `") {
            let (pod, rest) = s.split_once('`')?;
            check.pod_prefix = Some(pod.to_string());
            if let Some(ns) = rest.strip_prefix(" in ns `") {
                check.namespace = Some(ns.trim_end_matches('`').to_string());
            }
        } else if let Some(s) = clause.strip_prefix("served in ns `") {
            check.namespace = Some(s.trim_end_matches('`').to_string());
        } else if let Some(s) = clause.strip_prefix("backend must receive ") {
            received(&mut check, s)?;
        } else if let Some(s) = clause.strip_prefix("response headers ") {
            check.response_headers = braces(s)?.0;
        } else if let Some(s) = clause.strip_prefix("response must NOT have headers ") {
            check.response_absent = list(s);
        } else if let Some(s) = clause.strip_prefix("(backend told to set response headers ") {
            check.echo_set = braces(s)?.0;
        } else if let Some(s) = clause.strip_prefix("redirect Location → ") {
            let mut loc = Location::default();
            for part in s.split(", ") {
                let (k, v) = part.split_once('=')?;
                match k {
                    "scheme" => loc.scheme = Some(v.to_string()),
                    "host" => loc.host = Some(v.to_string()),
                    "port" => loc.port = Some(v.parse().ok()?),
                    "path" => loc.path = Some(v.to_string()),
                    _ => return None,
                }
            }
            check.location = Some(loc);
        } else {
            return None; // mirrored copies, CORS allowed sets, backend-set headers, ...
        }
    }
    if check.statuses.is_empty() {
        check.statuses = vec![200];
    }
    if !check.path.starts_with('/') || check.host.as_deref().is_some_and(|h| h.contains('(')) {
        return None; // a value the condensing step could not resolve
    }
    if check.statuses.iter().all(|s| *s >= 500) && check.pod_prefix.is_some() {
        return None; // checks of two steps pooled into one line: an error has no backend
    }
    Some(check)
}

/// One `call ...` line (a gRPC call of the suite's echo); `None` for what the runner cannot
/// check.
pub fn parse_call(line: &str) -> Option<Check> {
    let rest = line.strip_prefix("call `")?;
    let (method, clauses) = rest.split_once('`')?;
    let mut check = Check {
        line: line.to_string(),
        method: "POST".into(),
        path: format!("/{}/{method}", crate::ws_grpc::CONFORMANCE_SERVICE),
        statuses: vec![200],
        grpc: Some(GrpcCall {
            method: method.to_string(),
            code: 0,
        }),
        ..Check::default()
    };
    for clause in clauses.split("; ").map(str::trim).filter(|c| !c.is_empty()) {
        let clause = clause.trim_start_matches(';').trim();
        if let Some(m) = clause.strip_prefix("metadata ") {
            let v: serde_json::Value = serde_json::from_str(m).ok()?;
            check.host = v["Authority"].as_str().map(str::to_string);
            for (k, v) in v["Metadata"].as_object().into_iter().flatten() {
                check.headers.push((k.clone(), v.as_str()?.to_string()));
            }
        } else if let Some(code) = clause
            .strip_prefix("expect gRPC code ")
            .or_else(|| clause.strip_prefix("expect gRPC "))
        {
            let code = match code {
                "OK" => 0,
                "Unimplemented" => 12,
                _ => return None,
            };
            if let Some(g) = check.grpc.as_mut() {
                g.code = code;
            }
        } else if let Some(m) = clause.strip_prefix("response metadata ") {
            let v: serde_json::Value = serde_json::from_str(m).ok()?;
            for (k, values) in v.as_object()? {
                let values: Vec<&str> = values
                    .as_array()?
                    .iter()
                    .filter_map(|x| x.as_str())
                    .collect();
                if k.starts_with('_') {
                    return None;
                }
                check.received_headers.push((k.clone(), values.join(",")));
            }
        } else if let Some(s) = clause.strip_prefix("served by `") {
            check.pod_prefix = Some(s.trim_end_matches('`').to_string());
        } else if clause.starts_with("TestCaseName=") {
        } else {
            return None;
        }
    }
    Some(check)
}

fn received(check: &mut Check, s: &str) -> Option<()> {
    let mut rest = s;
    while !rest.is_empty() {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(v) = rest.strip_prefix("headers include ") {
            let (map, r) = braces(v)?;
            check.received_headers = map;
            rest = r;
        } else if let Some(v) = rest.strip_prefix("headers absent ") {
            let end = v.find(']').map_or(v.len(), |i| i + 1);
            check.received_absent = list(&v[..end]);
            rest = &v[end..];
        } else {
            let (kv, r) = rest.split_once(", ").unwrap_or((rest, ""));
            let (k, v) = kv.split_once('=')?;
            match k {
                "path" => check.received_path = Some(v.to_string()),
                "host" => check.received_host = Some(v.to_string()),
                "method" => check.received_method = Some(v.to_string()),
                _ => return None,
            }
            rest = r;
        }
    }
    Some(())
}

/// `{Name: "value", Other: "v"}` and what follows it.
fn braces(s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let s = s.strip_prefix('{')?;
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(r) = rest.strip_prefix('}') {
            return Some((out, r));
        }
        let (name, r) = rest.split_once(": \"")?;
        let mut value = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => value.push(chars.next()?.1),
                '"' => break i,
                c => value.push(c),
            }
        };
        out.push((name.trim().to_string(), value));
        rest = &r[end + 1..];
    }
}

/// `['a', 'b']`.
fn list(s: &str) -> Vec<String> {
    s.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|x| x.trim().trim_matches('\'').to_string())
        .filter(|x| !x.is_empty())
        .collect()
}

/// What came back.
#[derive(Clone, Debug, Default)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Response headers, names lower case, repeated values joined with commas.
    pub headers: BTreeMap<String, String>,
    /// Body, as text.
    pub body: String,
    /// The gRPC status, for gRPC calls.
    pub grpc_status: Option<u32>,
}

/// What the suite's gRPC echo answered, as an [`Answer`]: the gRPC status in `grpc_status`,
/// the backend's view of the call as an echo-like JSON body (`pod`, `namespace`, `headers`).
fn grpc_answer(
    status: u16,
    headers: &http::HeaderMap,
    body: &[u8],
    trailers: Option<&http::HeaderMap>,
) -> Answer {
    use prost::Message;
    let code = trailers
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok());
    let mut echo = serde_json::json!({});
    if body.len() >= 5
        && let Ok(msg) = crate::ws_grpc::conformance_pb::EchoResponse::decode(&body[5..])
        && let Some(a) = msg.assertions
    {
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        for h in a.headers {
            seen.entry(h.key)
                .and_modify(|e| {
                    e.push(',');
                    e.push_str(&h.value);
                })
                .or_insert(h.value);
        }
        let context = a.context.unwrap_or_default();
        echo = serde_json::json!({
            "pod": context.pod,
            "namespace": context.namespace,
            "path": a.fully_qualified_method,
            "host": a.authority,
            "headers": seen,
        });
    }
    Answer {
        status,
        headers: BTreeMap::new(),
        body: echo.to_string(),
        grpc_status: code,
    }
}

/// Sends `check`'s request to `addr` from inside network namespace `netns`.
pub fn send(netns: &str, addr: SocketAddr, check: &Check) -> std::io::Result<Answer> {
    if check.grpc.is_some() {
        return send_grpc(netns, addr, check);
    }
    use http_body_util::BodyExt;
    let stream = meshctl::local::net::in_netns(netns, || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
    })?;
    stream.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let host = check.host.clone().unwrap_or_else(|| addr.to_string());
    runtime.block_on(async move {
        let stream = tokio::net::TcpStream::from_std(stream)?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(check.method.as_str())
            .uri(check.path.as_str())
            .header(hyper::header::HOST, host);
        for (k, v) in &check.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if !check.echo_set.is_empty() {
            let set: Vec<String> = check
                .echo_set
                .iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect();
            req = req.header("x-echo-set-header", set.join(","));
        }
        let req = req
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(std::io::Error::other)?;
        let fut = async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(std::io::Error::other)?;
            let status = resp.status().as_u16();
            let mut headers: BTreeMap<String, String> = BTreeMap::new();
            for (k, v) in resp.headers() {
                let v = v.to_str().unwrap_or("").to_string();
                headers
                    .entry(k.as_str().to_string())
                    .and_modify(|e| {
                        e.push(',');
                        e.push_str(&v);
                    })
                    .or_insert(v);
            }
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(std::io::Error::other)?
                .to_bytes();
            Ok::<_, std::io::Error>(Answer {
                status,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
                grpc_status: None,
            })
        };
        tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 5 s"))?
    })
}

/// A gRPC call over HTTP/2 (prior knowledge) from inside `netns`, `:authority` the check's
/// Host or the gateway's address.
fn send_grpc(netns: &str, addr: SocketAddr, check: &Check) -> std::io::Result<Answer> {
    use http_body_util::BodyExt;
    let stream = meshctl::local::net::in_netns(netns, || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
    })?;
    stream.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let authority = check.host.clone().unwrap_or_else(|| addr.to_string());
    runtime.block_on(async move {
        let stream = tokio::net::TcpStream::from_std(stream)?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method("POST")
            .uri(format!("http://{authority}{}", check.path))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (k, v) in &check.headers {
            req = req.header(k.to_ascii_lowercase().as_str(), v.as_str());
        }
        // One empty EchoRequest: no compression, length 0.
        let req = req
            .body(http_body_util::Full::new(bytes::Bytes::from_static(&[
                0, 0, 0, 0, 0,
            ])))
            .map_err(std::io::Error::other)?;
        let fut = async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(std::io::Error::other)?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let collected = resp
                .into_body()
                .collect()
                .await
                .map_err(std::io::Error::other)?;
            let trailers = collected.trailers().cloned();
            let body = collected.to_bytes();
            Ok::<_, std::io::Error>(grpc_answer(status, &headers, &body, trailers.as_ref()))
        };
        tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 5 s"))?
    })
}

/// Why `answer` does not satisfy `check` (the request went to `addr`), or `None` when it does.
pub fn verdict(check: &Check, answer: &Answer, addr: SocketAddr) -> Option<String> {
    if let Some(g) = &check.grpc {
        if answer.grpc_status != Some(g.code) {
            return Some(format!(
                "gRPC status {:?} (HTTP {}), want {}",
                answer.grpc_status, answer.status, g.code
            ));
        }
        if g.code != 0 {
            return None;
        }
    }
    if !check.statuses.contains(&answer.status) {
        return Some(format!(
            "status {} (want {:?}): {}",
            answer.status,
            check.statuses,
            answer.body.chars().take(200).collect::<String>()
        ));
    }
    for (k, v) in &check.response_headers {
        let got = answer.headers.get(&k.to_ascii_lowercase());
        if got != Some(v) {
            return Some(format!("response header {k}: {got:?}, want {v:?}"));
        }
    }
    for k in &check.response_absent {
        if answer.headers.contains_key(&k.to_ascii_lowercase()) {
            return Some(format!("response header {k} present"));
        }
    }
    if let Some(want) = &check.location {
        let Some(loc) = answer.headers.get("location") else {
            return Some("no Location".into());
        };
        let (scheme, rest) = loc.split_once("://").unwrap_or(("", loc));
        let (authority, path) = rest
            .find('/')
            .map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().ok()),
            None => (authority, None),
        };
        let default_port = |s: &str| if s == "https" { 443 } else { 80 };
        let requested_host = check.host.clone().unwrap_or_else(|| addr.ip().to_string());
        let requested_host = requested_host.split(':').next().unwrap_or("").to_string();
        let want_scheme = want.scheme.clone().unwrap_or_else(|| "http".into());
        let want_host = want.host.clone().unwrap_or(requested_host);
        let want_port = want.port.unwrap_or_else(|| default_port(&want_scheme));
        let got_port = port.unwrap_or_else(|| default_port(scheme));
        let want_path = want.path.clone().unwrap_or_else(|| check.path.clone());
        if scheme != want_scheme || host != want_host || got_port != want_port || path != want_path
        {
            return Some(format!(
                "Location {loc}, want {want_scheme}://{want_host}:{want_port}{want_path}"
            ));
        }
    }
    let backend_checked = check.pod_prefix.is_some()
        || check.namespace.is_some()
        || check.received_path.is_some()
        || !check.received_headers.is_empty()
        || !check.received_absent.is_empty();
    if !backend_checked {
        return None;
    }
    let echo: serde_json::Value = match serde_json::from_str(&answer.body) {
        Ok(v) => v,
        Err(_) => return Some(format!("not an echo: {}", answer.body)),
    };
    if let Some(p) = &check.pod_prefix
        && !echo["pod"].as_str().unwrap_or("").starts_with(p.as_str())
    {
        return Some(format!("served by {}, want {p}", echo["pod"]));
    }
    if let Some(ns) = &check.namespace
        && echo["namespace"].as_str() != Some(ns)
    {
        return Some(format!("served in {}, want {ns}", echo["namespace"]));
    }
    let received_path = check
        .received_path
        .clone()
        .unwrap_or_else(|| check.path.clone());
    if echo["path"].as_str() != Some(received_path.as_str()) {
        return Some(format!(
            "backend received path {}, want {received_path}",
            echo["path"]
        ));
    }
    if let Some(h) = &check.received_host
        && echo["host"].as_str() != Some(h.as_str())
    {
        return Some(format!("backend received host {}, want {h}", echo["host"]));
    }
    for (k, v) in &check.received_headers {
        let got = echo["headers"][k.to_ascii_lowercase()].as_str();
        if got != Some(v.as_str()) {
            return Some(format!("backend received {k}: {got:?}, want {v:?}"));
        }
    }
    for k in &check.received_absent {
        if !echo["headers"][k.to_ascii_lowercase()].is_null() {
            return Some(format!("backend received {k}"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_into_checks() {
        let c = parse_check(r#"send `GET path=/add headers={Some-Other-Header: "val", X-Header-Add: "some-other-value"}`; expect status 200; served by a pod of `infra-backend-v1` in ns `gateway-conformance-infra`; backend must receive path=/add, headers include {Some-Other-Header: "val", X-Header-Add: "some-other-value,add-appends-values"}"#).unwrap();
        assert_eq!(c.method, "GET");
        assert_eq!(c.path, "/add");
        assert_eq!(c.headers.len(), 2);
        assert_eq!(c.pod_prefix.as_deref(), Some("infra-backend-v1"));
        assert_eq!(c.namespace.as_deref(), Some("gateway-conformance-infra"));
        assert_eq!(
            c.received_headers[1],
            (
                "X-Header-Add".to_string(),
                "some-other-value,add-appends-values".to_string()
            )
        );
        let r = parse_check("send `GET host=example.com path=/port-and-host (do not follow redirects)`; expect status 302; redirect Location → port=8083, host=example.org").unwrap();
        assert!(r.no_follow);
        assert_eq!(r.host.as_deref(), Some("example.com"));
        assert_eq!(
            r.location,
            Some(Location {
                port: Some(8083),
                host: Some("example.org".into()),
                ..Location::default()
            })
        );
        let absent = parse_check("send `GET path=/remove headers={X-Header-Remove: \"val\"}`; expect status 200; backend must receive path=/remove, headers absent ['X-Header-Remove']").unwrap();
        assert_eq!(absent.received_absent, ["X-Header-Remove"]);
        assert!(
            parse_check(
                "send `GET host=abc.example.com path=/x SNI=abc.example.com`; expect status 200"
            )
            .is_none()
        );
        assert!(
            parse_check(
                "send `GET path=/mirror`; expect status 200; mirrored to [{'BackendRef': {}}]"
            )
            .is_none()
        );
        assert_eq!(
            parse_check("send `GET path=/`; expect status 500/502/503")
                .unwrap()
                .statuses,
            [500, 502, 503]
        );
        let call = parse_call(r#"call `Echo`; metadata {"Authority": "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho", "Metadata": {"X-Header-Set": "x"}}; expect gRPC OK; response metadata {"X-Header-Add": ["a", "b"]}; served by `grpc-infra-backend-v1`; TestCaseName="t""#).unwrap();
        assert_eq!(
            call.path,
            "/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/Echo"
        );
        assert_eq!(
            call.headers,
            [("X-Header-Set".to_string(), "x".to_string())]
        );
        assert_eq!(
            call.received_headers,
            [("X-Header-Add".to_string(), "a,b".to_string())]
        );
        assert_eq!(call.pod_prefix.as_deref(), Some("grpc-infra-backend-v1"));
        let unimplemented = parse_call("call `EchoThree`; expect gRPC code Unimplemented").unwrap();
        assert_eq!(unimplemented.grpc.unwrap().code, 12);
    }
}
