//! The service graph and golden signals the dashboard shows, worked out from the sidecars'
//! metrics pages (the Istio series a Prometheus would hold): workloads as nodes, an edge for
//! each caller and callee with its request rate, success rate, p99 latency and whether mutual
//! TLS carried it, and per destination service its traffic, errors, latency and requests in
//! flight.
//!
//! Each request is counted once: by the sidecar that received it (`reporter="destination"`),
//! or, when the callee has no sidecar, by the caller's (`reporter="source"`). Rates come from
//! the difference between two moments' totals, as Prometheus's `rate()` does; latencies from
//! the difference of the duration histograms, as `histogram_quantile()` does. A 5xx (or no
//! answer at all) is a failure; a 4xx is the caller's mistake, not the callee's.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// One sample of a metrics page: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series' name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// The samples of a Prometheus or OpenMetrics page (comments, and lines that do not read,
/// are left out).
pub fn parse(page: &str) -> Vec<Sample> {
    page.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let mut key = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()? {
                            (_, '\\') => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            (_, '"') => break,
                            (_, other) => value.push(other),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                other => key.push(other),
            }
        }
        rest = &inner[end? + 1..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// A workload: `namespace/workload`.
pub type NodeId = String;

/// What is counted for an edge or a service, cumulative since the sidecars started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    /// Requests.
    pub requests: f64,
    /// Requests answered 5xx or not at all.
    pub failures: f64,
    /// Requests carried over mutual TLS.
    pub mtls: f64,
    /// The duration histogram: cumulative count per upper bound (milliseconds).
    pub buckets: BTreeMap<Bound, f64>,
}

/// A histogram bucket's upper bound, ordered (`+Inf` last).
#[derive(Debug, Clone, Copy)]
pub struct Bound(pub f64);

impl PartialEq for Bound {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Bound {}

impl PartialOrd for Bound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl Counts {
    fn minus(&self, earlier: &Counts) -> Counts {
        // A sidecar that restarted counts from zero again: never a negative rate.
        let d = |a: f64, b: f64| (a - b).max(0.0);
        Counts {
            requests: d(self.requests, earlier.requests),
            failures: d(self.failures, earlier.failures),
            mtls: d(self.mtls, earlier.mtls),
            buckets: self
                .buckets
                .iter()
                .map(|(le, n)| (*le, d(*n, earlier.buckets.get(le).copied().unwrap_or(0.0))))
                .collect(),
        }
    }
}

/// A workload seen in the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Node {
    /// `namespace/workload`.
    pub id: NodeId,
    /// Its namespace (empty for callers outside the mesh).
    pub namespace: String,
    /// Its workload (`order-v1`), or `unknown` for callers outside the mesh.
    pub workload: String,
    /// Its `app` label.
    pub app: String,
    /// Its `version` label.
    pub version: String,
}

/// The mesh's totals at one moment, from every sidecar's page.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    /// The workloads.
    pub nodes: BTreeMap<NodeId, Node>,
    /// Per caller and callee.
    pub edges: BTreeMap<(NodeId, NodeId), Counts>,
    /// Per destination service (its host, `shipping-service.default.svc.cluster.local`).
    pub services: BTreeMap<String, Counts>,
    /// Requests under way per destination service, summed over the callers' pools.
    pub in_flight: BTreeMap<String, f64>,
}

/// The workload on `side` of a series: `namespace/workload`; `unknown` for a caller outside
/// the mesh; for requests no workload answered (refused by the caller's own sidecar, no
/// endpoint), the service they were for: `svc:host`.
fn node(labels: &BTreeMap<String, String>, side: &str) -> Node {
    let get = |k: &str| {
        labels
            .get(k)
            .filter(|v| !v.is_empty())
            .cloned()
            .unwrap_or_else(|| "unknown".into())
    };
    let workload = get(&format!("{side}_workload"));
    let namespace = get(&format!("{side}_workload_namespace"));
    if workload != "unknown" {
        return Node {
            id: format!("{namespace}/{workload}"),
            namespace,
            workload,
            app: get(&format!("{side}_app")),
            version: get(&format!("{side}_version")),
        };
    }
    let service = get("destination_service");
    if side == "destination" && service != "unknown" {
        return Node {
            id: format!("svc:{service}"),
            namespace: get("destination_service_namespace"),
            workload: get("destination_service_name"),
            app: String::new(),
            version: String::new(),
        };
    }
    Node {
        id: "unknown".into(),
        workload: "unknown".into(),
        ..Node::default()
    }
}

/// A workload with a sidecar, known from the pods whether or not it has traffic yet.
#[derive(Debug, Clone, Default)]
pub struct Workload {
    /// Its namespace.
    pub namespace: String,
    /// Its name (`order-v1`).
    pub workload: String,
    /// Its `app` label.
    pub app: String,
    /// Its `version` label.
    pub version: String,
}

impl Totals {
    /// The totals of every sidecar's page, with `workloads` (those with a sidecar) as nodes
    /// even before they have traffic.
    pub fn of(workloads: &[Workload], pages: &[String]) -> Totals {
        let mut t = Totals::default();
        for w in workloads {
            let id = format!("{}/{}", w.namespace, w.workload);
            t.nodes.insert(
                id.clone(),
                Node {
                    id,
                    namespace: w.namespace.clone(),
                    workload: w.workload.clone(),
                    app: w.app.clone(),
                    version: w.version.clone(),
                },
            );
        }
        let pages: Vec<Vec<Sample>> = pages.iter().map(|p| parse(p)).collect();
        // The callees that count their own requests: a caller's count of them would be a
        // second one.
        let mut meshed: BTreeSet<NodeId> = t.nodes.keys().cloned().collect();
        meshed.extend(
            pages
                .iter()
                .flatten()
                .filter(|s| s.labels.get("reporter").map(String::as_str) == Some("destination"))
                .map(|s| node(&s.labels, "destination").id),
        );
        for s in pages.iter().flatten() {
            t.add(s, &meshed);
        }
        t
    }

    fn add(&mut self, s: &Sample, meshed: &BTreeSet<NodeId>) {
        if s.name == "envoy_cluster_upstream_rq_active" {
            // outbound|8080|v1|shipping-service.default.svc.cluster.local
            if let Some(host) = s
                .labels
                .get("cluster_name")
                .and_then(|c| c.strip_prefix("outbound|"))
                .and_then(|c| c.rsplit('|').next())
            {
                *self.in_flight.entry(host.to_string()).or_default() += s.value;
            }
            return;
        }
        let histogram = s.name == "istio_request_duration_milliseconds_bucket";
        if s.name != "istio_requests_total" && !histogram {
            return;
        }
        let (src, dst) = (node(&s.labels, "source"), node(&s.labels, "destination"));
        let counted_here = match s.labels.get("reporter").map(String::as_str) {
            Some("destination") => true,
            Some("source") => !meshed.contains(&dst.id),
            _ => false,
        };
        if !counted_here {
            return;
        }
        let service = s
            .labels
            .get("destination_service")
            .cloned()
            .unwrap_or_else(|| "unknown".into());
        for n in [&src, &dst] {
            self.nodes.entry(n.id.clone()).or_insert_with(|| n.clone());
        }
        let edge = self.edges.entry((src.id, dst.id)).or_default();
        let svc = self.services.entry(service).or_default();
        if histogram {
            let le = match s.labels.get("le").map(String::as_str) {
                Some("+Inf") => f64::INFINITY,
                Some(v) => match v.parse() {
                    Ok(v) => v,
                    Err(_) => return,
                },
                None => return,
            };
            *edge.buckets.entry(Bound(le)).or_default() += s.value;
            *svc.buckets.entry(Bound(le)).or_default() += s.value;
            return;
        }
        let code: u16 = s
            .labels
            .get("response_code")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let failed = code == 0 || code >= 500;
        let mtls = s
            .labels
            .get("connection_security_policy")
            .map(String::as_str)
            == Some("mutual_tls");
        for c in [edge, svc] {
            c.requests += s.value;
            if failed {
                c.failures += s.value;
            }
            if mtls {
                c.mtls += s.value;
            }
        }
    }
}

/// The quantile `q` of a histogram's counts (cumulative per bound), interpolated within its
/// bucket as Prometheus's `histogram_quantile()` does; `None` with no observations.
pub fn quantile(q: f64, buckets: &BTreeMap<Bound, f64>) -> Option<f64> {
    let total = buckets
        .get(&Bound(f64::INFINITY))
        .copied()
        .or_else(|| buckets.values().copied().reduce(f64::max))?;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (Bound(le), count) in buckets {
        if *count >= rank {
            if le.is_infinite() {
                // Beyond the last finite bound: that bound is all that can be said.
                return Some(lower);
            }
            let in_bucket = count - below;
            if in_bucket <= 0.0 {
                return Some(*le);
            }
            return Some(lower + (le - lower) * (rank - below) / in_bucket);
        }
        lower = *le;
        below = *count;
    }
    Some(lower)
}

/// What the page draws: the graph and the golden signals over a window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct View {
    /// Seconds between the two moments compared (0 before there are two).
    pub window_seconds: f64,
    /// The workloads.
    pub nodes: Vec<Node>,
    /// Caller to callee.
    pub edges: Vec<EdgeView>,
    /// Per destination service.
    pub services: Vec<ServiceView>,
    /// Sidecars that could not be asked, and why.
    pub problems: Vec<String>,
}

/// One edge of the graph.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EdgeView {
    /// The caller's node id.
    pub source: NodeId,
    /// The callee's node id.
    pub target: NodeId,
    /// Requests per second over the window.
    pub rps: f64,
    /// The share answered without a 5xx over the window (`None` with no requests).
    pub success_rate: Option<f64>,
    /// The 99th percentile latency over the window, milliseconds.
    pub p99_ms: Option<f64>,
    /// `mutual_tls`, `none`, or `mixed`, over every request so far.
    pub mtls: &'static str,
    /// Requests so far.
    pub requests: f64,
}

/// One destination service's golden signals.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServiceView {
    /// Its host (`shipping-service.default.svc.cluster.local`).
    pub name: String,
    /// Traffic: requests per second over the window.
    pub rps: f64,
    /// Errors: the share answered without a 5xx.
    pub success_rate: Option<f64>,
    /// Latency: the median, milliseconds.
    pub p50_ms: Option<f64>,
    /// Latency: the 99th percentile, milliseconds.
    pub p99_ms: Option<f64>,
    /// Saturation: requests under way from the callers' pools now.
    pub in_flight: f64,
    /// Requests so far.
    pub requests: f64,
}

fn mtls_state(c: &Counts) -> &'static str {
    if c.requests <= 0.0 {
        "none"
    } else if c.mtls >= c.requests {
        "mutual_tls"
    } else if c.mtls <= 0.0 {
        "none"
    } else {
        "mixed"
    }
}

fn success(c: &Counts) -> Option<f64> {
    (c.requests > 0.0).then(|| 1.0 - c.failures / c.requests)
}

impl View {
    /// The view between `earlier` and `now`, `seconds` apart (rates are 0 without `earlier`).
    pub fn between(earlier: Option<&Totals>, now: &Totals, seconds: f64) -> View {
        let empty = Counts::default();
        let delta = |c: &Counts, before: Option<&Counts>| match (earlier, seconds > 0.0) {
            (Some(_), true) => c.minus(before.unwrap_or(&empty)),
            _ => Counts::default(),
        };
        let rate = |d: &Counts| {
            if seconds > 0.0 {
                d.requests / seconds
            } else {
                0.0
            }
        };
        let edges = now
            .edges
            .iter()
            .map(|((source, target), c)| {
                let d = delta(
                    c,
                    earlier.and_then(|e| e.edges.get(&(source.clone(), target.clone()))),
                );
                EdgeView {
                    source: source.clone(),
                    target: target.clone(),
                    rps: rate(&d),
                    success_rate: success(&d),
                    p99_ms: quantile(0.99, &d.buckets),
                    mtls: mtls_state(c),
                    requests: c.requests,
                }
            })
            .collect();
        let services = now
            .services
            .iter()
            .map(|(name, c)| {
                let d = delta(c, earlier.and_then(|e| e.services.get(name)));
                ServiceView {
                    name: name.clone(),
                    rps: rate(&d),
                    success_rate: success(&d),
                    p50_ms: quantile(0.5, &d.buckets),
                    p99_ms: quantile(0.99, &d.buckets),
                    in_flight: now.in_flight.get(name).copied().unwrap_or(0.0),
                    requests: c.requests,
                }
            })
            .collect();
        View {
            window_seconds: if earlier.is_some() { seconds } else { 0.0 },
            nodes: now.nodes.values().cloned().collect(),
            edges,
            services,
            problems: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(reporter: &str, src: &str, dst: &str, code: u16, mtls: bool, n: u32) -> String {
        let labels = format!(
            "reporter=\"{reporter}\",source_workload=\"{src}\",source_workload_namespace=\"default\",source_app=\"{src}\",destination_workload=\"{dst}\",destination_workload_namespace=\"default\",destination_app=\"{dst}\",destination_version=\"v1\",destination_service=\"{dst}.default.svc.cluster.local\",response_code=\"{code}\",connection_security_policy=\"{}\"",
            if mtls { "mutual_tls" } else { "none" }
        );
        // Half the requests take under 5 ms, the rest under 10 ms.
        format!(
            "istio_requests_total{{{labels}}} {n}\n\
             istio_request_duration_milliseconds_bucket{{{labels},le=\"5\"}} {}\n\
             istio_request_duration_milliseconds_bucket{{{labels},le=\"10\"}} {n}\n\
             istio_request_duration_milliseconds_bucket{{{labels},le=\"+Inf\"}} {n}\n",
            n / 2
        )
    }

    #[test]
    fn a_page_reads_with_escaped_labels() {
        let s = parse("# HELP x y\nx_total{a=\"q\\\"uote\",b=\"\"} 3\nup 1\n# EOF\n");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "x_total");
        assert_eq!(s[0].labels["a"], "q\"uote");
        assert_eq!(s[0].labels["b"], "");
        assert_eq!(s[0].value, 3.0);
        assert_eq!(s[1].name, "up");
    }

    #[test]
    fn rates_success_latency_and_mtls_come_from_two_moments() {
        let workloads = [
            Workload {
                namespace: "default".into(),
                workload: "order".into(),
                app: "order".into(),
                version: "v1".into(),
            },
            Workload {
                namespace: "default".into(),
                workload: "shipping".into(),
                app: "shipping".into(),
                version: "v1".into(),
            },
        ];
        // order's page counts as the caller (dropped: shipping counts its own), shipping's as
        // the callee; order also calls an outside service nobody else counts.
        let before = Totals::of(
            &workloads,
            &[
                series("source", "order", "shipping", 200, true, 100),
                series("destination", "order", "shipping", 200, true, 100),
            ],
        );
        let now = Totals::of(
            &workloads,
            &[
                series("source", "order", "shipping", 200, true, 300)
                    + &series("source", "order", "unknown", 200, false, 10),
                series("destination", "order", "shipping", 200, true, 280)
                    + &series("destination", "order", "shipping", 503, true, 20),
            ],
        );
        let v = View::between(Some(&before), &now, 10.0);
        let edge = v
            .edges
            .iter()
            .find(|e| e.target == "default/shipping")
            .unwrap();
        assert_eq!(edge.source, "default/order");
        assert_eq!(
            edge.rps, 20.0,
            "200 more requests in 10 s, each counted once"
        );
        assert_eq!(edge.success_rate, Some(0.9));
        assert_eq!(edge.mtls, "mutual_tls");
        let p99 = edge.p99_ms.unwrap();
        assert!(p99 > 5.0 && p99 <= 10.0, "{p99}");
        let outside = v
            .edges
            .iter()
            .find(|e| e.target == "svc:unknown.default.svc.cluster.local")
            .unwrap();
        assert_eq!(outside.mtls, "none");
        assert_eq!(outside.rps, 1.0);
        let svc = v
            .services
            .iter()
            .find(|s| s.name == "shipping.default.svc.cluster.local")
            .unwrap();
        assert_eq!(svc.rps, 20.0);
        assert_eq!(svc.success_rate, Some(0.9));
        assert!(svc.p50_ms.unwrap() <= 5.0);
        assert_eq!(
            v.nodes.len(),
            3,
            "order, shipping and the outside: {:?}",
            v.nodes
        );

        // Before a second moment there are totals but no rates.
        let first = View::between(None, &now, 0.0);
        assert_eq!(first.edges[0].rps, 0.0);
        assert_eq!(first.window_seconds, 0.0);
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let b: BTreeMap<Bound, f64> = [
            (1.0, 0.0),
            (5.0, 50.0),
            (10.0, 100.0),
            (f64::INFINITY, 100.0),
        ]
        .into_iter()
        .map(|(le, n)| (Bound(le), n))
        .collect();
        assert_eq!(quantile(0.5, &b), Some(5.0));
        assert_eq!(quantile(0.75, &b), Some(7.5));
        assert_eq!(quantile(0.5, &BTreeMap::new()), None);
        let slow: BTreeMap<Bound, f64> = [(10.0, 0.0), (f64::INFINITY, 4.0)]
            .into_iter()
            .map(|(le, n)| (Bound(le), n))
            .collect();
        assert_eq!(quantile(0.99, &slow), Some(10.0), "beyond the last bound");
    }
}
