//! One AuthorizationPolicy rule, compiled: its sources, operations and conditions as checks
//! over [`Attributes`], each list OR-ed inside and the parts AND-ed, as Istio reads them.

use std::net::IpAddr;

use http::HeaderName;
use mesh_api::security::{Condition, Operation, Source};

use super::matcher::{Cidr, PathMatch, StrMatch, slash_segments};
use super::{Action, Attributes};

/// What every check of one evaluation reads, worked out once: the peer's SPIFFE id taken
/// apart (when a check first asks), the addresses in their IPv4 form.
pub(super) struct Facts<'a> {
    pub(super) a: &'a Attributes<'a>,
    /// The SPIFFE id without `spiffe://`.
    principal: Option<&'a str>,
    /// Its trust domain, namespace and service account.
    parts: std::cell::OnceCell<IdParts<'a>>,
}

#[derive(Clone, Copy, Default)]
struct IdParts<'a> {
    trust_domain: Option<&'a str>,
    namespace: Option<&'a str>,
    account: Option<&'a str>,
}

impl<'a> Facts<'a> {
    pub(super) fn of(a: &'a Attributes<'a>) -> Self {
        Facts {
            a,
            principal: a.principal.and_then(|p| p.strip_prefix("spiffe://")),
            parts: std::cell::OnceCell::new(),
        }
    }

    /// `td/ns/NS/sa/SA` taken apart.
    fn parts(&self) -> IdParts<'a> {
        *self.parts.get_or_init(|| {
            let mut out = IdParts::default();
            let Some(p) = self.principal else { return out };
            let mut segments = slash_segments(p);
            out.trust_domain = segments.next();
            while let (Some(k), Some(v)) = (segments.next(), segments.next()) {
                match k {
                    "ns" if out.namespace.is_none() => out.namespace = Some(v),
                    "sa" if out.account.is_none() => out.account = Some(v),
                    _ => {}
                }
            }
            out
        })
    }
}

/// What a check reads from the request.
#[derive(Clone, Debug)]
enum Attr {
    /// The peer's SPIFFE id without `spiffe://`.
    Principal,
    /// The peer's namespace (from its SPIFFE id).
    Namespace,
    /// `namespace/service-account` of the peer.
    ServiceAccount,
    /// The peer's trust domain.
    TrustDomain,
    SourceIp,
    RemoteIp,
    DestinationIp,
    DestinationPort,
    Sni,
    // HTTP only from here.
    RequestPrincipal,
    Host,
    Method,
    Path,
    Header(HeaderName),
    Audiences,
    Presenter,
    /// A claim, nested by the path's names.
    Claim(Vec<String>),
    /// An attribute this proxy cannot read: never matches (and is reported).
    Unknown,
}

impl Attr {
    /// A rough cost rank: an entry's checks run cheapest first (they are AND-ed, so the order
    /// changes nothing but how soon a miss is seen).
    fn cost(&self) -> u8 {
        match self {
            Attr::DestinationPort | Attr::Unknown => 0,
            Attr::Method
            | Attr::Principal
            | Attr::Namespace
            | Attr::ServiceAccount
            | Attr::TrustDomain
            | Attr::RequestPrincipal
            | Attr::Presenter
            | Attr::Sni => 1,
            Attr::SourceIp | Attr::RemoteIp | Attr::DestinationIp => 2,
            Attr::Path | Attr::Host | Attr::Audiences => 3,
            Attr::Header(_) | Attr::Claim(_) => 4,
        }
    }

    fn http_only(&self) -> bool {
        matches!(
            self,
            Attr::RequestPrincipal
                | Attr::Host
                | Attr::Method
                | Attr::Path
                | Attr::Header(_)
                | Attr::Audiences
                | Attr::Presenter
                | Attr::Claim(_)
        )
    }
}

#[derive(Debug)]
enum Values {
    Str(Vec<StrMatch>),
    /// Lower-cased patterns compared without case (hosts).
    NoCase(Vec<StrMatch>),
    Path(Vec<PathMatch>),
    Cidr(Vec<Cidr>),
    Port(Vec<u16>),
}

/// One attribute against a list of values (any matches), possibly negated (`notX`).
#[derive(Debug)]
struct Check {
    attr: Attr,
    values: Values,
    negate: bool,
}

/// Set parts of one `from.source`, `to.operation` or `when` entry, AND-ed.
type All = Vec<Check>;

/// A compiled rule.
#[derive(Debug, Default)]
pub(super) struct Rule {
    /// OR-ed sources; empty: any.
    from: Vec<All>,
    /// OR-ed operations; empty: any.
    to: Vec<All>,
    /// AND-ed conditions.
    when: All,
    /// Whether some check needs HTTP attributes.
    http_only: bool,
}

type CompileError = (String, String);

fn strs(list: &[String]) -> Values {
    Values::Str(list.iter().map(|v| StrMatch::parse(v)).collect())
}

fn cidrs(at: &str, list: &[String]) -> Result<Values, CompileError> {
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            Cidr::parse(v).ok_or_else(|| {
                (
                    format!("{at}[{i}]"),
                    format!("{v:?} is not an IP address or CIDR block"),
                )
            })
        })
        .collect::<Result<_, _>>()
        .map(Values::Cidr)
}

fn ports(at: &str, list: &[String]) -> Result<Values, CompileError> {
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            v.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                (
                    format!("{at}[{i}]"),
                    format!("{v:?}: port must be between 1-65535"),
                )
            })
        })
        .collect::<Result<_, _>>()
        .map(Values::Port)
}

/// Adds the check for `list` (and its `not` form) when they are set.
fn push(out: &mut All, attr: impl Fn() -> Attr, yes: Values, no: Values) {
    for (values, negate) in [(yes, false), (no, true)] {
        let empty = match &values {
            Values::Str(v) | Values::NoCase(v) => v.is_empty(),
            Values::Path(v) => v.is_empty(),
            Values::Cidr(v) => v.is_empty(),
            Values::Port(v) => v.is_empty(),
        };
        if !empty {
            out.push(Check {
                attr: attr(),
                values,
                negate,
            });
        }
    }
}

fn source(s: &Source, namespace: &str, at: &str) -> Result<All, CompileError> {
    let mut out = Vec::new();
    push(
        &mut out,
        || Attr::Principal,
        strs(&s.principals),
        strs(&s.not_principals),
    );
    push(
        &mut out,
        || Attr::RequestPrincipal,
        strs(&s.request_principals),
        strs(&s.not_request_principals),
    );
    push(
        &mut out,
        || Attr::Namespace,
        strs(&s.namespaces),
        strs(&s.not_namespaces),
    );
    push(
        &mut out,
        || Attr::SourceIp,
        cidrs(&format!("{at}.ipBlocks"), &s.ip_blocks)?,
        cidrs(&format!("{at}.notIpBlocks"), &s.not_ip_blocks)?,
    );
    push(
        &mut out,
        || Attr::RemoteIp,
        cidrs(&format!("{at}.remoteIpBlocks"), &s.remote_ip_blocks)?,
        cidrs(&format!("{at}.notRemoteIpBlocks"), &s.not_remote_ip_blocks)?,
    );
    // `sa` alone is in the policy's namespace; service accounts take no wildcards.
    let accounts = |list: &[String]| {
        Values::Str(
            list.iter()
                .map(|sa| match sa.contains('/') {
                    true => StrMatch::Exact(sa.as_str().into()),
                    false => StrMatch::Exact(format!("{namespace}/{sa}").into()),
                })
                .collect(),
        )
    };
    push(
        &mut out,
        || Attr::ServiceAccount,
        accounts(&s.service_accounts),
        accounts(&s.not_service_accounts),
    );
    push(
        &mut out,
        || Attr::TrustDomain,
        strs(&s.trust_domains),
        strs(&s.not_trust_domains),
    );
    Ok(out)
}

fn operation(o: &Operation, at: &str) -> Result<All, CompileError> {
    let mut out = Vec::new();
    let hosts = |l: &[String]| Values::NoCase(l.iter().map(|h| StrMatch::lowercase(h)).collect());
    push(
        &mut out,
        || Attr::Host,
        hosts(&o.hosts),
        hosts(&o.not_hosts),
    );
    push(
        &mut out,
        || Attr::DestinationPort,
        ports(&format!("{at}.ports"), &o.ports)?,
        ports(&format!("{at}.notPorts"), &o.not_ports)?,
    );
    push(
        &mut out,
        || Attr::Method,
        strs(&o.methods),
        strs(&o.not_methods),
    );
    let paths = |l: &[String]| Values::Path(l.iter().map(|p| PathMatch::parse(p)).collect());
    push(
        &mut out,
        || Attr::Path,
        paths(&o.paths),
        paths(&o.not_paths),
    );
    Ok(out)
}

/// `[a][b]` → `["a", "b"]`; `None` when the brackets do not close.
fn bracketed(rest: &str) -> Option<Vec<String>> {
    let mut names = Vec::new();
    let mut rest = rest;
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let (name, after) = inner.split_once(']')?;
        if name.is_empty() {
            return None;
        }
        names.push(name.to_string());
        rest = after;
    }
    (!names.is_empty()).then_some(names)
}

fn condition(c: &Condition, at: &str) -> Result<All, CompileError> {
    let key = c.key.as_str();
    let attr = match key {
        "source.ip" => Attr::SourceIp,
        "remote.ip" => Attr::RemoteIp,
        "source.namespace" => Attr::Namespace,
        "source.principal" => Attr::Principal,
        "source.serviceAccount" => Attr::ServiceAccount,
        "source.trustDomain" => Attr::TrustDomain,
        "destination.ip" => Attr::DestinationIp,
        "destination.port" => Attr::DestinationPort,
        "connection.sni" => Attr::Sni,
        "request.auth.principal" => Attr::RequestPrincipal,
        "request.auth.audiences" => Attr::Audiences,
        "request.auth.presenter" => Attr::Presenter,
        k => {
            if let Some(name) = k
                .strip_prefix("request.headers[")
                .and_then(|n| n.strip_suffix(']'))
            {
                match HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
                    Ok(h) => Attr::Header(h),
                    Err(_) => {
                        return Err((
                            format!("{at}.key"),
                            format!("{name:?} is not a header name"),
                        ));
                    }
                }
            } else if let Some(path) = k.strip_prefix("request.auth.claims").and_then(bracketed) {
                Attr::Claim(path)
            } else {
                // Envoy filter metadata (`experimental.envoy.filters.*`): never matches, as
                // `meshctl validate` warns.
                Attr::Unknown
            }
        }
    };
    let (yes, no) = match attr {
        Attr::SourceIp | Attr::RemoteIp | Attr::DestinationIp => (
            cidrs(&format!("{at}.values"), &c.values)?,
            cidrs(&format!("{at}.notValues"), &c.not_values)?,
        ),
        Attr::DestinationPort => (
            ports(&format!("{at}.values"), &c.values)?,
            ports(&format!("{at}.notValues"), &c.not_values)?,
        ),
        Attr::ServiceAccount => (
            Values::Str(
                c.values
                    .iter()
                    .map(|v| StrMatch::Exact(v.as_str().into()))
                    .collect(),
            ),
            Values::Str(
                c.not_values
                    .iter()
                    .map(|v| StrMatch::Exact(v.as_str().into()))
                    .collect(),
            ),
        ),
        _ => (strs(&c.values), strs(&c.not_values)),
    };
    let mut out = Vec::new();
    push(&mut out, || attr.clone(), yes, no);
    Ok(out)
}

impl Rule {
    pub(super) fn compile(
        r: &mesh_api::security::Rule,
        namespace: &str,
        at: &str,
    ) -> Result<Rule, CompileError> {
        let mut rule = Rule::default();
        for (i, f) in r.from.iter().enumerate() {
            rule.from.push(source(
                &f.source,
                namespace,
                &format!("{at}.from[{i}].source"),
            )?);
        }
        for (i, t) in r.to.iter().enumerate() {
            rule.to
                .push(operation(&t.operation, &format!("{at}.to[{i}].operation"))?);
        }
        for (i, c) in r.when.iter().enumerate() {
            rule.when.extend(condition(c, &format!("{at}.when[{i}]"))?);
        }
        for checks in rule.from.iter_mut().chain(rule.to.iter_mut()) {
            checks.sort_by_key(|c| c.attr.cost());
        }
        rule.when.sort_by_key(|c| c.attr.cost());
        rule.http_only = rule
            .from
            .iter()
            .chain(rule.to.iter())
            .flatten()
            .chain(rule.when.iter())
            .any(|c| c.attr.http_only());
        Ok(rule)
    }

    /// Whether the rule matches, for a policy with `action`.
    pub(super) fn matches(&self, f: &Facts<'_>, action: Action) -> bool {
        if f.a.http.is_none() && self.http_only && action == Action::Allow {
            return false;
        }
        let all = |checks: &All| checks.iter().all(|c| c.matches(f));
        (self.from.is_empty() || self.from.iter().any(all))
            && (self.to.is_empty() || self.to.iter().any(all))
            && all(&self.when)
    }
}

impl Check {
    fn matches(&self, f: &Facts<'_>) -> bool {
        // Over TCP an HTTP check is dropped from the rule (only DENY-like rules get here).
        if f.a.http.is_none() && self.attr.http_only() {
            return true;
        }
        self.any(f) != self.negate
    }

    /// Whether some value matches the attribute (false when the request has no such
    /// attribute).
    fn any(&self, f: &Facts<'_>) -> bool {
        let a = f.a;
        let auth = a.http.and_then(|h| h.auth);
        match &self.attr {
            Attr::Principal => self.str(f.principal),
            Attr::Namespace => self.str(f.parts().namespace),
            Attr::ServiceAccount => match f.parts().namespace.zip(f.parts().account) {
                Some((ns, sa)) => self.each(|v| match v {
                    StrMatch::Exact(e) => e.split_once('/') == Some((ns, sa)),
                    other => other.matches(sa),
                }),
                None => false,
            },
            Attr::TrustDomain => self.str(f.parts().trust_domain),
            Attr::SourceIp => self.ip(a.source.ip()),
            Attr::RemoteIp => self.ip(a.remote_ip),
            Attr::DestinationIp => self.ip(a.destination.ip()),
            Attr::DestinationPort => match &self.values {
                Values::Port(ports) => ports.contains(&a.destination.port()),
                _ => false,
            },
            Attr::Sni => self.str(a.sni),
            Attr::RequestPrincipal => self.str(auth.map(|v| v.principal.as_str())),
            Attr::Host => {
                let host = a.http.map(|h| h.host);
                // A host pattern matches the authority with or without its port.
                match &self.values {
                    Values::NoCase(list) => host.is_some_and(|h| {
                        let bare = strip_port(h);
                        list.iter()
                            .any(|m| m.matches_ignore_case(h) || m.matches_ignore_case(bare))
                    }),
                    _ => false,
                }
            }
            Attr::Method => self.str(a.http.map(|h| h.method)),
            Attr::Path => match (&self.values, a.http) {
                (Values::Path(list), Some(h)) => list.iter().any(|m| m.matches(h.path)),
                _ => false,
            },
            Attr::Header(name) => {
                let Some(h) = a.http else { return false };
                let mut values = h
                    .headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok());
                match (values.next(), values.next()) {
                    (None, _) => false,
                    (Some(one), None) => self.str(Some(one)),
                    // Several lines are read as Envoy does: joined by commas.
                    (Some(first), Some(second)) => {
                        let joined = std::iter::once(first)
                            .chain(std::iter::once(second))
                            .chain(values)
                            .collect::<Vec<_>>()
                            .join(",");
                        self.str(Some(&joined))
                    }
                }
            }
            Attr::Audiences => {
                auth.is_some_and(|v| v.audiences.iter().any(|aud| self.str(Some(aud))))
            }
            Attr::Presenter => self.str(auth.and_then(|v| v.presenter.as_deref())),
            Attr::Claim(path) => auth.is_some_and(|v| {
                let mut value = &v.claims;
                for name in path {
                    match value.get(name) {
                        Some(inner) => value = inner,
                        None => return false,
                    }
                }
                match value {
                    serde_json::Value::String(s) => self.str(Some(s)),
                    serde_json::Value::Array(items) => items
                        .iter()
                        .any(|i| i.as_str().is_some_and(|s| self.str(Some(s)))),
                    serde_json::Value::Bool(b) => self.str(Some(if *b { "true" } else { "false" })),
                    serde_json::Value::Number(n) => self.str(Some(&n.to_string())),
                    _ => false,
                }
            }),
            Attr::Unknown => false,
        }
    }

    fn each(&self, f: impl Fn(&StrMatch) -> bool) -> bool {
        match &self.values {
            Values::Str(list) => list.iter().any(f),
            _ => false,
        }
    }

    fn str(&self, value: Option<&str>) -> bool {
        value.is_some_and(|v| self.each(|m| m.matches(v)))
    }

    fn ip(&self, ip: IpAddr) -> bool {
        match &self.values {
            Values::Cidr(list) => {
                let ip = Cidr::normalize(ip);
                list.iter().any(|c| c.contains_normalized(ip))
            }
            _ => false,
        }
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(v6) = host.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    match host.bytes().rposition(|b| b == b':') {
        Some(i) if host.as_bytes()[i + 1..].iter().all(u8::is_ascii_digit) => &host[..i],
        _ => host,
    }
}
