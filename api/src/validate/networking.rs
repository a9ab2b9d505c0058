//! DestinationRule, Gateway, ServiceEntry, WorkloadEntry, WorkloadGroup and Sidecar rules.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::Findings;
use super::checks::{
    duration, export_to, header_name, host, ip_or_cidr, is_dns1123_label, is_dns1123_subdomain,
    is_wildcard_host, label_value, labels, non_negative, one_of, opt_port, percent, port,
    port_name, protocol,
};
use super::virtual_service::destination;
pub(crate) use super::virtual_service::virtual_service;
use crate::networking::{
    ClientTlsMode, ClientTlsSettings, ConnectionPoolSettings, DestinationRuleSpec, GatewaySpec,
    LoadBalancerSettings, LocalityLbSetting, OutboundTrafficMode, OutlierDetection, Resolution,
    ServerTlsMode, ServerTlsSettings, ServiceEntrySpec, SidecarPort, SidecarSpec, TrafficPolicy,
    WorkloadEntrySpec, WorkloadGroupSpec,
};

// === DestinationRule ===

pub(crate) fn destination_rule(f: &mut Findings, spec: &DestinationRuleSpec) {
    if spec.host.is_empty() {
        f.error("spec.host", "Required value: the host the rule applies to");
    } else {
        host(f, "spec.host", &spec.host);
    }
    if let Some(tp) = &spec.traffic_policy {
        traffic_policy(f, "spec.trafficPolicy", tp);
    }
    let mut names = BTreeSet::new();
    for (i, s) in spec.subsets.iter().enumerate() {
        let at = format!("spec.subsets[{i}]");
        if s.name.is_empty() {
            f.error(format!("{at}.name"), "Required value: subset name");
        } else if !is_dns1123_label(&s.name) {
            f.error(
                format!("{at}.name"),
                format!(
                    "{:?} is not a valid subset name (lower-case letters, digits, '-')",
                    s.name
                ),
            );
        } else if !names.insert(s.name.as_str()) {
            f.error(
                format!("{at}.name"),
                format!("Duplicate value: subset {:?}", s.name),
            );
        }
        labels(f, &format!("{at}.labels"), &s.labels);
        if let Some(tp) = &s.traffic_policy {
            traffic_policy(f, &format!("{at}.trafficPolicy"), tp);
        }
    }
    export_to(f, &spec.export_to);
    if let Some(ws) = &spec.workload_selector {
        labels(f, "spec.workloadSelector.matchLabels", &ws.match_labels);
    }
}

fn traffic_policy(f: &mut Findings, at: &str, tp: &TrafficPolicy) {
    if *tp == TrafficPolicy::default() {
        f.error(at, "a traffic policy must set at least one field");
    }
    policy_parts(
        f,
        at,
        tp.load_balancer.as_ref(),
        tp.connection_pool.as_ref(),
        tp.outlier_detection.as_ref(),
        tp.tls.as_ref(),
    );
    let mut ports = BTreeSet::new();
    for (i, p) in tp.port_level_settings.iter().enumerate() {
        let pat = format!("{at}.portLevelSettings[{i}]");
        match p.port.as_ref().and_then(|p| p.number) {
            None => f.error(format!("{pat}.port"), "Required value: port.number"),
            Some(n) => {
                port(f, &format!("{pat}.port.number"), n);
                if !ports.insert(n) {
                    f.error(
                        format!("{pat}.port.number"),
                        format!("Duplicate value: port {n} has settings already"),
                    );
                }
            }
        }
        if p.load_balancer.is_none()
            && p.connection_pool.is_none()
            && p.outlier_detection.is_none()
            && p.tls.is_none()
        {
            f.error(&pat, "a port traffic policy must set at least one of loadBalancer, connectionPool, outlierDetection or tls");
        }
        policy_parts(
            f,
            &pat,
            p.load_balancer.as_ref(),
            p.connection_pool.as_ref(),
            p.outlier_detection.as_ref(),
            p.tls.as_ref(),
        );
    }
    if let Some(t) = &tp.tunnel {
        let tat = format!("{at}.tunnel");
        if !t.protocol.is_empty() && t.protocol != "CONNECT" && t.protocol != "POST" {
            f.error(
                format!("{tat}.protocol"),
                format!("Unsupported value: {:?}: use CONNECT or POST", t.protocol),
            );
        }
        if t.target_host.is_empty() {
            f.error(
                format!("{tat}.targetHost"),
                "Required value: the host to tunnel to",
            );
        }
        port(f, &format!("{tat}.targetPort"), t.target_port);
    }
    if let Some(p) = tp.retry_budget.as_ref().and_then(|rb| rb.percent) {
        percent(f, &format!("{at}.retryBudget.percent"), p);
    }
}

fn policy_parts(
    f: &mut Findings,
    at: &str,
    lb: Option<&LoadBalancerSettings>,
    pool: Option<&ConnectionPoolSettings>,
    outlier: Option<&OutlierDetection>,
    tls: Option<&ClientTlsSettings>,
) {
    if let Some(lb) = lb {
        load_balancer(f, &format!("{at}.loadBalancer"), lb);
    }
    if let Some(pool) = pool {
        connection_pool(f, &format!("{at}.connectionPool"), pool);
    }
    if let Some(od) = outlier {
        let oat = format!("{at}.outlierDetection");
        non_negative(
            f,
            &format!("{oat}.consecutiveErrors"),
            od.consecutive_errors,
        );
        duration(f, &format!("{oat}.interval"), od.interval.as_ref());
        duration(
            f,
            &format!("{oat}.baseEjectionTime"),
            od.base_ejection_time.as_ref(),
        );
        for (name, v) in [
            ("maxEjectionPercent", od.max_ejection_percent),
            ("minHealthPercent", od.min_health_percent),
        ] {
            if let Some(v) = v {
                percent(f, &format!("{oat}.{name}"), f64::from(v));
            }
        }
        if od.consecutive_local_origin_failures.is_some()
            && od.split_external_local_origin_errors != Some(true)
        {
            f.warning(
                format!("{oat}.consecutiveLocalOriginFailures"),
                "has no effect unless splitExternalLocalOriginErrors is true (as in Envoy): local failures count as 5xx instead",
            );
        }
    }
    if let Some(tls) = tls {
        client_tls(f, &format!("{at}.tls"), tls);
    }
}

fn load_balancer(f: &mut Findings, at: &str, lb: &LoadBalancerSettings) {
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        f.error(at, "only one of simple or consistentHash may be set");
    }
    if let Some(ch) = &lb.consistent_hash {
        let cat = format!("{at}.consistentHash");
        let keys = [
            ch.http_header_name.is_some(),
            ch.http_cookie.is_some(),
            ch.use_source_ip.is_some(),
            ch.http_query_parameter_name.is_some(),
        ];
        one_of(
            f,
            &cat,
            &[
                "httpHeaderName",
                "httpCookie",
                "useSourceIp",
                "httpQueryParameterName",
            ],
            &keys,
            true,
        );
        if ch.ring_hash.is_some() && ch.maglev.is_some() {
            f.error(&cat, "only one of ringHash or maglev may be set");
        }
        if let Some(c) = &ch.http_cookie {
            if c.name.is_empty() {
                f.error(
                    format!("{cat}.httpCookie.name"),
                    "Required value: cookie name",
                );
            }
            match c.ttl.as_deref().map(super::parse_duration) {
                None => f.error(
                    format!("{cat}.httpCookie.ttl"),
                    "Required value: the cookie's ttl (0s for a session cookie)",
                ),
                Some(Err(why)) => f.error(format!("{cat}.httpCookie.ttl"), why.to_string()),
                Some(Ok(_)) => {}
            }
        }
        if let Some(h) = &ch.http_header_name
            && !header_name(h)
        {
            f.error(
                format!("{cat}.httpHeaderName"),
                format!("{h:?} is not a valid header name"),
            );
        }
    }
    if let Some(l) = &lb.locality_lb_setting {
        locality_lb_setting(f, &format!("{at}.localityLbSetting"), l);
    }
    duration(
        f,
        &format!("{at}.warmupDurationSecs"),
        lb.warmup_duration_secs.as_ref(),
    );
    if let Some(w) = &lb.warmup {
        let wat = format!("{at}.warmup");
        match &w.duration {
            None => f.error(
                format!("{wat}.duration"),
                "Required value: the warm-up duration",
            ),
            Some(_) => duration(f, &format!("{wat}.duration"), w.duration.as_ref()),
        }
        if let Some(p) = w.minimum_percent {
            percent(f, &format!("{wat}.minimumPercent"), p);
        }
        if let Some(a) = w.aggression
            && (a < 1.0 || a.is_nan())
        {
            f.error(
                format!("{wat}.aggression"),
                format!("Invalid value: {a}: aggression must be at least 1"),
            );
        }
    }
}

fn connection_pool(f: &mut Findings, at: &str, pool: &ConnectionPoolSettings) {
    if pool.tcp.is_none() && pool.http.is_none() {
        f.error(at, "one of tcp or http must be set");
    }
    if let Some(t) = &pool.tcp {
        let tat = format!("{at}.tcp");
        non_negative(f, &format!("{tat}.maxConnections"), t.max_connections);
        duration(
            f,
            &format!("{tat}.connectTimeout"),
            t.connect_timeout.as_ref(),
        );
        duration(
            f,
            &format!("{tat}.maxConnectionDuration"),
            t.max_connection_duration.as_ref(),
        );
        duration(f, &format!("{tat}.idleTimeout"), t.idle_timeout.as_ref());
        if let Some(k) = &t.tcp_keepalive {
            duration(f, &format!("{tat}.tcpKeepalive.time"), k.time.as_ref());
            duration(
                f,
                &format!("{tat}.tcpKeepalive.interval"),
                k.interval.as_ref(),
            );
        }
    }
    if let Some(h) = &pool.http {
        let hat = format!("{at}.http");
        for (name, v) in [
            ("http1MaxPendingRequests", h.http1_max_pending_requests),
            ("http2MaxRequests", h.http2_max_requests),
            ("maxRequestsPerConnection", h.max_requests_per_connection),
            ("maxRetries", h.max_retries),
            ("maxConcurrentStreams", h.max_concurrent_streams),
        ] {
            non_negative(f, &format!("{hat}.{name}"), v);
        }
        duration(f, &format!("{hat}.idleTimeout"), h.idle_timeout.as_ref());
        if let Some(k) = &h.http2_keep_alive {
            duration(
                f,
                &format!("{hat}.http2KeepAlive.interval"),
                k.interval.as_ref(),
            );
            duration(
                f,
                &format!("{hat}.http2KeepAlive.timeout"),
                k.timeout.as_ref(),
            );
        }
    }
}

fn client_tls(f: &mut Findings, at: &str, tls: &ClientTlsSettings) {
    let files = !tls.client_certificate.is_empty()
        || !tls.private_key.is_empty()
        || !tls.ca_certificates.is_empty();
    match tls.mode {
        Some(ClientTlsMode::IstioMutual) if files || !tls.credential_name.is_empty() => f.error(
            at,
            "ISTIO_MUTUAL uses the mesh's certificates: clientCertificate, privateKey, caCertificates and credentialName must not be set",
        ),
        Some(ClientTlsMode::Mutual)
            if tls.credential_name.is_empty() && (tls.client_certificate.is_empty() || tls.private_key.is_empty()) =>
        {
            f.error(at, "MUTUAL needs clientCertificate and privateKey, or credentialName")
        }
        _ => {}
    }
    if !tls.credential_name.is_empty() && files {
        f.error(
            at,
            "only one of credentialName or certificate files may be set",
        );
    }
    for (i, san) in tls.subject_alt_names.iter().enumerate() {
        if san.is_empty() {
            f.error(
                format!("{at}.subjectAltNames[{i}]"),
                "an empty name is not allowed",
            );
        }
    }
}

// === Gateway ===

pub(crate) fn gateway(f: &mut Findings, spec: &GatewaySpec) {
    if spec.servers.is_empty() {
        f.error(
            "spec.servers",
            "Required value: a gateway needs at least one server",
        );
    }
    labels(f, "spec.selector", &spec.selector);
    let mut names = BTreeSet::new();
    for (i, s) in spec.servers.iter().enumerate() {
        let at = format!("spec.servers[{i}]");
        if !s.name.is_empty() && !names.insert(s.name.as_str()) {
            f.error(
                format!("{at}.name"),
                format!("Duplicate value: server name {:?}", s.name),
            );
        }
        let Some(p) = &s.port else {
            f.error(format!("{at}.port"), "Required value: the server's port");
            continue;
        };
        port(f, &format!("{at}.port.number"), p.number);
        if p.protocol.is_empty() {
            f.error(
                format!("{at}.port.protocol"),
                "Required value: HTTP, HTTPS, GRPC, HTTP2, MONGO, TCP or TLS",
            );
        } else {
            protocol(f, &format!("{at}.port.protocol"), &p.protocol);
        }
        port_name(f, &format!("{at}.port.name"), &p.name);
        if p.target_port.is_some() {
            f.warning(
                format!("{at}.port.targetPort"),
                "targetPort has no effect on gateways",
            );
        }
        if s.hosts.is_empty() {
            f.error(
                format!("{at}.hosts"),
                "Required value: at least one host (use \"*\" for any)",
            );
        }
        for (j, h) in s.hosts.iter().enumerate() {
            let hat = format!("{at}.hosts[{j}]");
            let (ns, name) = h.split_once('/').unwrap_or(("", h));
            if !(ns.is_empty() || ns == "*" || ns == "." || is_dns1123_label(ns)) {
                f.error(
                    &hat,
                    format!("{h:?}: the namespace part must be *, . or a namespace name"),
                );
            }
            host(f, &hat, name);
        }
        let is_tls = ["HTTPS", "TLS"]
            .iter()
            .any(|t| t.eq_ignore_ascii_case(&p.protocol));
        match &s.tls {
            None if is_tls => f.error(
                format!("{at}.tls"),
                format!("Required value: a {} server needs TLS settings", p.protocol),
            ),
            Some(t) if !is_tls && t.https_redirect != Some(true) => f.error(
                format!("{at}.tls"),
                format!(
                    "a {} server cannot have TLS settings (only httpsRedirect)",
                    p.protocol
                ),
            ),
            Some(t) if is_tls => server_tls(f, &format!("{at}.tls"), t),
            _ => {}
        }
        if !s.bind.is_empty() && s.bind.parse::<IpAddr>().is_err() && !s.bind.starts_with("unix://")
        {
            f.error(
                format!("{at}.bind"),
                format!("{:?} is not an IP address or unix:// path", s.bind),
            );
        }
    }
}

pub(crate) fn server_tls(f: &mut Findings, at: &str, t: &ServerTlsSettings) {
    let has_files = !t.server_certificate.is_empty() || !t.private_key.is_empty();
    let has_creds = !t.credential_name.is_empty()
        || !t.credential_names.is_empty()
        || !t.tls_certificates.is_empty();
    match t.mode {
        Some(ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual) => {
            if !has_creds && (t.server_certificate.is_empty() || t.private_key.is_empty()) {
                f.error(
                    at,
                    "SIMPLE and MUTUAL need credentialName, or serverCertificate and privateKey",
                );
            }
            if has_creds && has_files {
                f.error(at, "only one of credentialName(s), tlsCertificates or serverCertificate/privateKey may be set");
            }
            if t.mode != Some(ServerTlsMode::Simple) && !has_creds && t.ca_certificates.is_empty() {
                f.error(format!("{at}.caCertificates"), "Required value: MUTUAL needs caCertificates to verify clients (or credentialName)");
            }
        }
        Some(ServerTlsMode::IstioMutual)
            if has_files || has_creds || !t.ca_certificates.is_empty() =>
        {
            f.error(
                at,
                "ISTIO_MUTUAL uses the mesh's certificates: certificate fields must not be set",
            )
        }
        _ => {}
    }
    if let (Some(min), Some(max)) = (t.min_protocol_version, t.max_protocol_version)
        && (min as u8) > (max as u8)
    {
        f.error(
            format!("{at}.minProtocolVersion"),
            "minProtocolVersion is above maxProtocolVersion",
        );
    }
}

// === ServiceEntry, WorkloadEntry, WorkloadGroup ===

pub(crate) fn service_entry(f: &mut Findings, spec: &ServiceEntrySpec) {
    if spec.hosts.is_empty() {
        f.error("spec.hosts", "Required value: at least one host");
    }
    let resolution = spec.resolution.unwrap_or(Resolution::None);
    for (i, h) in spec.hosts.iter().enumerate() {
        let at = format!("spec.hosts[{i}]");
        if h == "*" {
            f.error(
                &at,
                "hostname cannot be wildcard \"*\": name the external hosts",
            );
        } else if !is_wildcard_host(h) {
            f.error(&at, format!("{h:?} is not a valid host name"));
        } else if resolution == Resolution::Dns && spec.endpoints.is_empty() && h.starts_with('*') {
            f.error(
                &at,
                "a wildcard host cannot be resolved by DNS: add endpoints or use resolution NONE",
            );
        }
    }
    for (i, a) in spec.addresses.iter().enumerate() {
        let at = format!("spec.addresses[{i}]");
        if !ip_or_cidr(a) {
            f.error(&at, format!("{a:?} is not an IP address or CIDR block"));
        } else if a.contains('/') && !matches!(resolution, Resolution::None | Resolution::Static) {
            f.error(
                &at,
                "CIDR addresses are allowed only for NONE/STATIC resolution types",
            );
        }
    }
    let (mut names, mut numbers) = (BTreeSet::new(), BTreeSet::new());
    for (i, p) in spec.ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        port(f, &format!("{at}.number"), p.number);
        opt_port(f, &format!("{at}.targetPort"), p.target_port);
        port_name(f, &format!("{at}.name"), &p.name);
        if !p.protocol.is_empty() {
            protocol(f, &format!("{at}.protocol"), &p.protocol);
        }
        if !p.name.is_empty() && !names.insert(p.name.as_str()) {
            f.error(
                format!("{at}.name"),
                format!("Duplicate value: port name {:?}", p.name),
            );
        }
        if !numbers.insert(p.number) {
            f.error(
                format!("{at}.number"),
                format!("port number cannot be duplicated: {}", p.number),
            );
        }
    }
    if spec.workload_selector.is_some() && !spec.endpoints.is_empty() {
        f.error(
            "spec",
            "only one of WorkloadSelector or Endpoints can be set",
        );
    }
    if let Some(ws) = &spec.workload_selector {
        for (k, v) in &ws.labels {
            if v.contains('*') || k.contains('*') {
                f.error(
                    format!("spec.workloadSelector.labels.{k}"),
                    "wildcard is not supported in selector",
                );
            } else if let Err(why) = label_value(v) {
                f.error(format!("spec.workloadSelector.labels.{k}"), why);
            }
        }
    }
    match resolution {
        Resolution::None if !spec.endpoints.is_empty() => f.error(
            "spec.endpoints",
            "NONE mode cannot set endpoints: use resolution STATIC or DNS",
        ),
        Resolution::DnsRoundRobin if spec.endpoints.len() > 1 => f.error(
            "spec.endpoints",
            "DNS_ROUND_ROBIN mode cannot have multiple endpoints",
        ),
        _ => {}
    }
    for (i, e) in spec.endpoints.iter().enumerate() {
        let at = format!("spec.endpoints[{i}]");
        workload_entry(f, &at, e, true);
        if resolution == Resolution::Static
            && e.address.parse::<IpAddr>().is_err()
            && !e.address.starts_with("unix://")
        {
            f.error(
                format!("{at}.address"),
                format!(
                    "{:?}: STATIC resolution needs IP addresses (or use DNS)",
                    e.address
                ),
            );
        }
        for name in e.ports.keys() {
            if !spec.ports.iter().any(|p| &p.name == name) {
                f.error(
                    format!("{at}.ports.{name}"),
                    format!("endpoint port {name:?} is not a port name of the ServiceEntry"),
                );
            }
        }
    }
    export_to(f, &spec.export_to);
}

pub(crate) fn workload_entry(
    f: &mut Findings,
    at: &str,
    e: &WorkloadEntrySpec,
    address_needed: bool,
) {
    if e.address.is_empty() {
        if address_needed && e.network.is_empty() {
            f.error(
                format!("{at}.address"),
                "Address is required (an IP, host name or unix:// socket), unless network is set",
            );
        }
    } else if let Some(path) = e.address.strip_prefix("unix://") {
        if path.is_empty() || !(path.starts_with('/') || path.starts_with('@')) {
            f.error(
                format!("{at}.address"),
                "UDS must be an absolute path or abstract socket",
            );
        } else if path.ends_with('/') {
            f.error(format!("{at}.address"), "UDS may not be a dir");
        }
        if !e.ports.is_empty() {
            f.error(format!("{at}.ports"), "UDS may not include ports");
        }
    } else if e.address.parse::<IpAddr>().is_err()
        && !is_dns1123_subdomain(&e.address.to_ascii_lowercase())
    {
        f.error(
            format!("{at}.address"),
            format!(
                "{:?} is not an IP, a host name or a unix:// socket",
                e.address
            ),
        );
    }
    for (name, p) in &e.ports {
        let pat = format!("{at}.ports.{name}");
        if !is_dns1123_label(&name.to_ascii_lowercase()) {
            f.error(
                &pat,
                format!("Invalid value: {name:?}: port names are letters, digits and '-'"),
            );
        }
        port(f, &pat, *p);
    }
    labels(f, &format!("{at}.labels"), &e.labels);
    if !e.service_account.is_empty() && !is_dns1123_subdomain(&e.service_account) {
        f.error(
            format!("{at}.serviceAccount"),
            format!(
                "{:?} is not a valid service account name",
                e.service_account
            ),
        );
    }
}

pub(crate) fn workload_group(f: &mut Findings, spec: &WorkloadGroupSpec) {
    if let Some(m) = &spec.metadata {
        labels(f, "spec.metadata.labels", &m.labels);
    }
    workload_entry(f, "spec.template", &spec.template, false);
    let Some(p) = &spec.probe else { return };
    let kinds = [
        p.http_get.is_some(),
        p.tcp_socket.is_some(),
        p.exec.is_some(),
        p.grpc.is_some(),
    ];
    one_of(
        f,
        "spec.probe",
        &["httpGet", "tcpSocket", "exec", "grpc"],
        &kinds,
        true,
    );
    if let Some(h) = &p.http_get {
        port(f, "spec.probe.httpGet.port", h.port);
        for (i, hd) in h.http_headers.iter().enumerate() {
            if !hd
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                || hd.name.is_empty()
            {
                f.error(
                    format!("spec.probe.httpGet.httpHeaders[{i}].name"),
                    format!("{:?}: a header name should match ^[-_A-Za-z0-9]+$", hd.name),
                );
            }
        }
    }
    if let Some(t) = &p.tcp_socket {
        port(f, "spec.probe.tcpSocket.port", t.port);
    }
    if let Some(g) = &p.grpc {
        port(f, "spec.probe.grpc.port", g.port);
    }
    if let Some(e) = &p.exec
        && e.command.is_empty()
    {
        f.error(
            "spec.probe.exec.command",
            "Required value: the command to run",
        );
    }
    for (name, v) in [
        ("initialDelaySeconds", p.initial_delay_seconds),
        ("timeoutSeconds", p.timeout_seconds),
        ("periodSeconds", p.period_seconds),
        ("successThreshold", p.success_threshold),
        ("failureThreshold", p.failure_threshold),
    ] {
        non_negative(f, &format!("spec.probe.{name}"), v);
    }
}

// === Sidecar ===

pub(crate) fn sidecar(f: &mut Findings, spec: &SidecarSpec) {
    if spec.egress.is_empty()
        && spec.ingress.is_empty()
        && spec.outbound_traffic_policy.is_none()
        && spec.inbound_connection_pool.is_none()
    {
        f.error(
            "spec",
            "empty Sidecar: set egress, ingress, outboundTrafficPolicy or inboundConnectionPool",
        );
    }
    if let Some(ws) = &spec.workload_selector {
        labels(f, "spec.workloadSelector.labels", &ws.labels);
    }
    let mut ports = BTreeSet::new();
    for (i, l) in spec.ingress.iter().enumerate() {
        let at = format!("spec.ingress[{i}]");
        match &l.port {
            None => f.error(
                format!("{at}.port"),
                "Required value: the port to accept on",
            ),
            Some(p) => {
                sidecar_port(f, &format!("{at}.port"), p);
                if !ports.insert(p.number) {
                    f.error(
                        format!("{at}.port.number"),
                        format!(
                            "Duplicate value: port {} has an ingress listener already",
                            p.number
                        ),
                    );
                }
            }
        }
        let ep = &l.default_endpoint;
        if !ep.is_empty() && !ep.starts_with("unix://") {
            let ok = ["127.0.0.1:", "0.0.0.0:", "[::1]:", "[::]:"]
                .iter()
                .any(|pre| {
                    ep.strip_prefix(pre)
                        .and_then(|p| p.parse::<u32>().ok())
                        .is_some_and(|p| (1..=65535).contains(&p))
                });
            if !ok {
                f.error(format!("{at}.defaultEndpoint"), "must be 127.0.0.1:<port>, 0.0.0.0:<port>, [::1]:<port>, [::]:<port> or unix://<path>");
            }
        }
        if let Some(t) = &l.tls {
            server_tls(f, &format!("{at}.tls"), t);
        }
        if let Some(pool) = &l.connection_pool {
            connection_pool(f, &format!("{at}.connectionPool"), pool);
        }
    }
    let mut egress_ports = BTreeSet::new();
    for (i, l) in spec.egress.iter().enumerate() {
        let at = format!("spec.egress[{i}]");
        match &l.port {
            Some(p) => {
                sidecar_port(f, &format!("{at}.port"), p);
                if !egress_ports.insert(p.number) {
                    f.error(
                        format!("{at}.port.number"),
                        format!(
                            "Duplicate value: port {} has an egress listener already",
                            p.number
                        ),
                    );
                }
            }
            None if i + 1 != spec.egress.len() => {
                f.error(
                    &at,
                    "the egress listener without a port must be the last one",
                );
            }
            None => {}
        }
        if l.hosts.is_empty() {
            f.error(
                format!("{at}.hosts"),
                "Required value: at least one namespace/host",
            );
        }
        for (j, h) in l.hosts.iter().enumerate() {
            let hat = format!("{at}.hosts[{j}]");
            match h.split_once('/') {
                Some((ns, name)) if ns == "*" || ns == "." || ns == "~" || is_dns1123_label(ns) => {
                    if name != "*" && !is_wildcard_host(name) {
                        f.error(&hat, format!("{name:?} is not a valid host"));
                    }
                }
                _ => f.error(
                    &hat,
                    format!(
                        "{h:?}: a host must be of form namespace/dnsName (e.g. ./*, istio-system/*)"
                    ),
                ),
            }
        }
    }
    if let Some(o) = &spec.outbound_traffic_policy
        && let Some(proxy) = &o.egress_proxy
    {
        if o.mode != Some(OutboundTrafficMode::AllowAny) {
            f.error(
                "spec.outboundTrafficPolicy.egressProxy",
                "egressProxy needs mode ALLOW_ANY",
            );
        }
        destination(f, "spec.outboundTrafficPolicy.egressProxy", proxy);
        if proxy.port.as_ref().and_then(|p| p.number).is_none() {
            f.error(
                "spec.outboundTrafficPolicy.egressProxy.port",
                "Required value: the egress proxy's port",
            );
        }
    }
    if let Some(pool) = &spec.inbound_connection_pool {
        connection_pool(f, "spec.inboundConnectionPool", pool);
    }
}

fn sidecar_port(f: &mut Findings, at: &str, p: &SidecarPort) {
    port(f, &format!("{at}.number"), p.number);
    if !p.protocol.is_empty() {
        protocol(f, &format!("{at}.protocol"), &p.protocol);
    }
    if !p.name.is_empty() {
        port_name(f, &format!("{at}.name"), &p.name);
    }
    opt_port(f, &format!("{at}.targetPort"), p.target_port);
}

/// A `localityLbSetting` (a DestinationRule's, or the mesh configuration's).
pub(crate) fn locality_lb_setting(f: &mut Findings, lat: &str, l: &LocalityLbSetting) {
    if !l.distribute.is_empty() && !l.failover.is_empty() {
        f.error(lat, "only one of distribute or failover may be set");
    }
    for (i, d) in l.distribute.iter().enumerate() {
        let dat = format!("{lat}.distribute[{i}]");
        if d.from.is_empty() {
            f.error(
                format!("{dat}.from"),
                "Required value: the locality traffic comes from, e.g. us-west/zone1/*",
            );
        }
        if d.to.is_empty() {
            f.error(
                format!("{dat}.to"),
                "Required value: the localities to send to, with weights summing to 100",
            );
        }
        let sum: u64 = d.to.values().map(|v| u64::from(*v)).sum();
        if !d.to.is_empty() && sum != 100 {
            f.error(
                format!("{dat}.to"),
                format!("weights sum to {sum}, must be 100"),
            );
        }
    }
    for (i, fo) in l.failover.iter().enumerate() {
        if fo.from.is_empty() || fo.to.is_empty() {
            f.error(
                format!("{lat}.failover[{i}]"),
                "Required value: both from and to regions",
            );
        } else if fo.from == fo.to {
            f.error(
                format!("{lat}.failover[{i}]"),
                "from and to must be different regions",
            );
        }
    }
    for (i, label) in l.failover_priority.iter().enumerate() {
        let key = label.split_once('=').map_or(label.as_str(), |(k, _)| k);
        if super::checks::label_key(key).is_err() {
            f.error(
                format!("{lat}.failoverPriority[{i}]"),
                format!("{label:?} is not a label key (or key=value)"),
            );
        }
    }
}

/// [`locality_lb_setting`]'s findings on their own (the mesh configuration's setting).
pub(crate) fn locality_lb_findings(
    lat: &str,
    l: &LocalityLbSetting,
) -> Vec<crate::diagnostic::Diagnostic> {
    let mut f = Findings::default();
    locality_lb_setting(&mut f, lat, l);
    f.out
}
