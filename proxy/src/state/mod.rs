//! The proxy's state: what it knows of the services its workload calls. A [`ProxyState`]
//! (the `mesh.state.v1` message, from pilot or a file) is checked and indexed into a
//! [`State`] once, when it arrives; listeners then read the latest `Arc<State>` from a watch
//! channel for each new connection, so a change applies without touching connections already
//! established.

mod cluster;
mod file;
mod locality;
mod report;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

pub use cluster::{ClusterPolicy, DEFAULT_CONNECT_TIMEOUT, OutlierPolicy, PoolLimits};
pub use file::{FileWatch, ParseError, Poll, StateFileError, load_file, parse_state, watch_file};
pub use locality::{LocalityPlan, locality_matches};
pub use mesh_api::proto::state::v1 as proto;
pub use report::{report_unenforced, unenforced};

/// Application protocols the proxy tells apart (the wire enum itself).
pub use proto::Protocol;

/// Load-balancing algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Balancer {
    /// Power of two choices on active requests (the default, as Istio's).
    #[default]
    LeastRequest,
    /// In turn.
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// To the address the caller asked for.
    Passthrough,
}

impl Balancer {
    /// The balancer a policy names; `None` when it names none (inherit).
    fn of(lb: proto::LoadBalancer) -> Option<Self> {
        match lb {
            proto::LoadBalancer::Unspecified => None,
            proto::LoadBalancer::LeastRequest => Some(Balancer::LeastRequest),
            proto::LoadBalancer::RoundRobin => Some(Balancer::RoundRobin),
            proto::LoadBalancer::Random => Some(Balancer::Random),
            proto::LoadBalancer::Passthrough => Some(Balancer::Passthrough),
        }
    }
}

/// A value of a wire enum, checked: a number this proxy does not know (from a newer pilot) is
/// refused with its field rather than read as the default.
fn known<E: TryFrom<i32>>(service: &str, field: &str, value: i32) -> Result<E, StateError> {
    E::try_from(value).map_err(|_| {
        bad(
            service,
            field,
            format!("unknown value {value}: this proxy is older than the pilot that sent it"),
        )
    })
}

/// One port of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    /// Service port.
    pub port: u16,
    /// Name.
    pub name: String,
    /// Protocol.
    pub protocol: Protocol,
    /// Port on the endpoints.
    pub target_port: u16,
}

/// A checked, indexed service.
#[derive(Debug)]
pub struct Service {
    /// The service as received.
    pub spec: proto::Service,
    /// Its ports.
    pub ports: Vec<Port>,
    /// Load balancer of the service (subsets may override).
    pub balancer: Balancer,
    /// The host name, shared by every request's target (no copy per request).
    pub host: Arc<str>,
    /// Endpoint addresses, parsed, in `spec.endpoints` order.
    pub endpoint_ips: Vec<IpAddr>,
    /// Endpoint identities, in `spec.endpoints` order, shared like `host`.
    pub endpoint_identities: Vec<Arc<str>>,
    /// TLS originations by subset (`""` for the service's own policy).
    pub originations: HashMap<String, Arc<crate::tls::originate::Originate>>,
    /// Client TLS mode of the service's own policy.
    tls: TlsMode,
    /// Each subset, its members and policy worked out once.
    subsets: Vec<SubsetInfo>,
    /// Circuit breakers and outlier detection by subset and port, for the clusters that
    /// have them.
    clusters: Vec<ClusterPolicy>,
    all_members: Vec<usize>,
}

/// A subset as the proxy uses it: its endpoints and its policy with the service's filled in.
#[derive(Debug)]
struct SubsetInfo {
    name: String,
    /// Endpoint indices whose labels carry every label of the subset's.
    members: Vec<usize>,
    balancer: Balancer,
    tls: TlsMode,
}

impl Service {
    fn subset(&self, name: &str) -> Option<&SubsetInfo> {
        if name.is_empty() {
            return None;
        }
        self.subsets.iter().find(|s| s.name == name)
    }

    /// The client TLS mode towards `subset` (its own, else the service's).
    pub fn tls_mode(&self, subset: &str) -> TlsMode {
        self.subset(subset).map_or(self.tls, |s| s.tls)
    }

    /// The load balancer for `subset` (its own, else the service's).
    pub fn balancer_for(&self, subset: &str) -> Balancer {
        self.subset(subset).map_or(self.balancer, |s| s.balancer)
    }

    /// The circuit breakers and outlier detection of the cluster `subset` (`""` for the whole
    /// service; a subset the service does not define takes the service's) and `port`, when its
    /// DestinationRule sets any.
    pub fn cluster_policy(&self, subset: &str, port: u16) -> Option<&ClusterPolicy> {
        if self.clusters.is_empty() {
            return None;
        }
        let find = |subset: &str| {
            self.clusters
                .iter()
                .find(|c| c.port == port && c.subset == subset)
        };
        find(subset).or_else(|| {
            (self.subset(subset).is_none() && !subset.is_empty())
                .then(|| find(""))
                .flatten()
        })
    }

    /// The port numbered `port`.
    pub fn port(&self, port: u16) -> Option<&Port> {
        self.ports.iter().find(|p| p.port == port)
    }

    /// The address of endpoint `index` for service port `port`.
    pub fn endpoint_addr(&self, index: usize, port: &Port) -> Option<SocketAddr> {
        let ip = *self.endpoint_ips.get(index)?;
        let ep = self.spec.endpoints.get(index)?;
        let p = ep
            .ports
            .get(&port.name)
            .and_then(|p| u16::try_from(*p).ok())
            .unwrap_or(port.target_port);
        Some(SocketAddr::new(ip, p))
    }

    /// Indices of the endpoints in `subset` (all when `subset` is empty or unknown).
    pub fn subset_members(&self, subset: &str) -> &[usize] {
        self.subset(subset)
            .map_or(&self.all_members, |s| &s.members)
    }
}

/// Keeps rewrite patterns apart from (anchored) match patterns in the regex cache.
const REWRITE_KEY: &str = "\u{0}rewrite:";

/// Client-side TLS towards a destination (DestinationRule `trafficPolicy.tls.mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// Mutual TLS to endpoints that have a sidecar, plaintext to the others.
    #[default]
    Auto,
    /// Always mutual TLS with mesh certificates.
    IstioMutual,
    /// Plaintext.
    Disable,
    /// TLS originated by the proxy, server verified.
    Simple,
    /// TLS originated by the proxy with a client certificate.
    Mutual,
}

impl TlsMode {
    /// The mode a policy names; `None` when it names none (inherit).
    fn of(mode: proto::TlsMode) -> Option<Self> {
        match mode {
            proto::TlsMode::Unspecified => None,
            proto::TlsMode::IstioMutual => Some(TlsMode::IstioMutual),
            proto::TlsMode::Disable => Some(TlsMode::Disable),
            proto::TlsMode::Simple => Some(TlsMode::Simple),
            proto::TlsMode::Mutual => Some(TlsMode::Mutual),
        }
    }
}

/// What the inbound side accepts (PeerAuthentication).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PeerMode {
    /// Mutual TLS and plaintext, told apart by the ClientHello.
    #[default]
    Permissive,
    /// Mutual TLS only.
    Strict,
    /// Plaintext only (TLS is passed to the app untouched).
    Disable,
}

impl From<proto::PeerMode> for PeerMode {
    fn from(mode: proto::PeerMode) -> Self {
        match mode {
            proto::PeerMode::Permissive => PeerMode::Permissive,
            proto::PeerMode::Strict => PeerMode::Strict,
            proto::PeerMode::Disable => PeerMode::Disable,
        }
    }
}

/// What the outbound listener does with a destination not in the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OutboundPolicy {
    /// Pass it through to where the workload connected.
    #[default]
    AllowAny,
    /// Refuse it.
    RegistryOnly,
}

/// The checked, indexed state the listeners read.
#[derive(Debug, Default)]
pub struct State {
    /// The state as received (for config_dump).
    pub source: proto::ProxyState,
    /// Services by fully qualified host name.
    pub services: HashMap<String, Arc<Service>>,
    /// Service VIP:port → service (looked up for every request: a fast hasher, keys come
    /// from pilot, not from traffic).
    by_vip: HashMap<SocketAddr, Arc<Service>, foldhash::fast::RandomState>,
    /// Endpoint IP:port → service.
    by_endpoint: HashMap<SocketAddr, Arc<Service>, foldhash::fast::RandomState>,
    /// Policy for unknown destinations.
    pub outbound_policy: OutboundPolicy,
    /// Declared protocols of the workload's own ports.
    pub inbound_ports: HashMap<u16, Protocol>,
    /// Inbound mTLS mode for ports without their own.
    pub peer_mode: PeerMode,
    /// Inbound mTLS mode per workload port.
    pub peer_port_modes: HashMap<u16, PeerMode>,
    /// Every regular expression of the routes, compiled once (anchored: a match is a full match,
    /// as Envoy's RE2 matchers do).
    regexes: HashMap<String, regex::Regex>,
    /// The workload's AuthorizationPolicies, compiled.
    pub authz: crate::authz::Policies,
    /// The workload's RequestAuthentications, compiled.
    pub authn: crate::authn::Authenticator,
    /// Gateway mode: each listener port's virtual hosts and TLS.
    pub gateway: HashMap<u16, GatewayPort>,
    /// Access logs (and tracing) the state asks for.
    pub telemetry: crate::telemetry::Telemetry,
}

/// One gateway listener port.
#[derive(Debug, Default)]
pub struct GatewayPort {
    /// HTTP (terminated TLS or not), TLS passed through by SNI, or TCP.
    pub protocol: Protocol,
    /// Its virtual hosts.
    pub hosts: Vec<GatewayHost>,
    /// The certificates it terminates TLS with; plaintext when empty.
    pub tls: Vec<crate::tls::terminate::Terminate>,
}

/// A virtual host of a gateway listener.
#[derive(Debug)]
pub struct GatewayHost {
    /// Host patterns, lower case: `shop.example.com`, `*.example.com`, `*`.
    pub domains: Vec<String>,
    /// Answer every request with a redirect to https.
    pub https_redirect: bool,
    /// The routes, compiled as a service's (no endpoints of its own).
    pub routes: Arc<Service>,
}

/// How specifically `pattern` matches the lower-case `host`: `None` when it does not; an exact
/// name beats any wildcard, a longer `*.` suffix beats a shorter one, and `*` comes last.
fn host_match(pattern: &str, host: &str) -> Option<usize> {
    if pattern == "*" {
        Some(0)
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        (host.len() > suffix.len() && host.ends_with(suffix)).then_some(suffix.len())
    } else {
        (pattern == host).then_some(usize::MAX)
    }
}

/// A state that cannot be applied; the proxy keeps its previous one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("service {service}: {field}: {message}")]
pub struct StateError {
    /// The service's host name (or `state` for top-level fields).
    pub service: String,
    /// The field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn bad(service: &str, field: impl Into<String>, message: impl Into<String>) -> StateError {
    StateError {
        service: service.into(),
        field: field.into(),
        message: message.into(),
    }
}

/// The locality plan of the service (`""`) and of each subset that locality load balancing
/// tells apart: the subset's own `localityLb`, else the service's; `disabled` turns it off.
fn locality_plans(
    spec: &proto::Service,
    subsets: &[SubsetInfo],
    all_members: &[usize],
    source: &proto::ProxyState,
) -> Vec<(String, Arc<LocalityPlan>)> {
    let service = spec
        .traffic_policy
        .as_ref()
        .and_then(|t| t.locality_lb.as_ref());
    let own = |s: &SubsetInfo| {
        spec.subsets
            .iter()
            .find(|x| x.name == s.name)
            .and_then(|x| x.traffic_policy.as_ref()?.locality_lb.as_ref())
    };
    let whole = std::iter::once(("", service, all_members));
    let parts = subsets
        .iter()
        .map(|s| (s.name.as_str(), own(s).or(service), s.members.as_slice()));
    whole
        .chain(parts)
        .filter_map(|(name, lb, members)| {
            let lb = lb.filter(|l| !l.disabled)?;
            let plan = LocalityPlan::new(
                lb,
                &source.locality,
                &source.workload_labels,
                &spec.endpoints,
                members,
            )?;
            Some((name.to_string(), Arc::new(plan)))
        })
        .collect()
}

/// Why a regex does not compile: the last line of the regex crate's message.
fn regex_refused(pattern: &str, e: &regex::Error) -> String {
    let text = e.to_string();
    let why = text.lines().last().unwrap_or("").trim();
    format!("regex {pattern:?} does not compile: {why}")
}

fn port16(service: &str, field: &str, value: u32) -> Result<u16, StateError> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| bad(service, field, format!("{value} is not a port 1-65535")))
}

impl State {
    /// Checks and indexes a received state.
    pub fn compile(source: proto::ProxyState) -> Result<Self, StateError> {
        let outbound_policy = match known(
            "state",
            "outboundTrafficPolicy",
            source.outbound_traffic_policy,
        )? {
            proto::OutboundTrafficPolicy::AllowAny => OutboundPolicy::AllowAny,
            proto::OutboundTrafficPolicy::RegistryOnly => OutboundPolicy::RegistryOnly,
        };
        let mut inbound_ports = HashMap::new();
        for (i, p) in source.inbound_ports.iter().enumerate() {
            let port = port16("state", &format!("inboundPorts[{i}].port"), p.port)?;
            let proto = known("state", &format!("inboundPorts[{i}].protocol"), p.protocol)?;
            inbound_ports.insert(port, proto);
        }
        let pa = source.peer_authentication.clone().unwrap_or_default();
        let peer_mode =
            known::<proto::PeerMode>("state", "peerAuthentication.mode", pa.mode)?.into();
        let mut peer_port_modes = HashMap::new();
        for (port, mode) in &pa.port_modes {
            let field = format!("peerAuthentication.portModes.{port}");
            let p = port16("state", &field, *port)?;
            let m = known::<proto::PeerMode>("state", &field, *mode)?;
            peer_port_modes.insert(p, m.into());
        }
        let authz = crate::authz::Policies::compile(
            &source.authorization_policies,
            &source.extension_providers,
        )
        .map_err(|e| {
            bad(
                "state",
                format!("authorizationPolicies ({}).{}", e.policy, e.field),
                e.message,
            )
        })?;
        let authn =
            crate::authn::Authenticator::compile(&source.request_authentications).map_err(|e| {
                bad(
                    "state",
                    format!("requestAuthentications ({}).{}", e.policy, e.field),
                    e.message,
                )
            })?;
        let mut state = State {
            outbound_policy,
            inbound_ports,
            peer_mode,
            peer_port_modes,
            authz,
            authn,
            telemetry: crate::telemetry::Telemetry::compile(source.telemetry.as_ref()),
            ..State::default()
        };
        state.compile_rate_limit_regexes(&source.rate_limits)?;
        for spec in &source.services {
            let (service, vips) = state.compile_service(spec, &source)?;
            let host = spec.hostname.clone();
            for ip in vips {
                for p in &service.ports {
                    state
                        .by_vip
                        .insert(SocketAddr::new(ip, p.port), service.clone());
                }
            }
            for i in 0..service.spec.endpoints.len() {
                for p in &service.ports {
                    if let Some(addr) = service.endpoint_addr(i, p) {
                        state
                            .by_endpoint
                            .entry(addr)
                            .or_insert_with(|| service.clone());
                    }
                }
            }
            state.services.insert(host, service);
        }
        state.compile_gateway(&source)?;
        state.source = source;
        Ok(state)
    }

    /// Checks and indexes the gateway listeners.
    fn compile_gateway(&mut self, source: &proto::ProxyState) -> Result<(), StateError> {
        for (i, l) in source.gateway_listeners.iter().enumerate() {
            let at = format!("gatewayListeners[{i}]");
            let port = port16("state", &format!("{at}.port"), l.port)?;
            let protocol = known::<Protocol>("state", &format!("{at}.protocol"), l.protocol)?;
            let protocol = match protocol {
                Protocol::Http | Protocol::Http2 | Protocol::Grpc => Protocol::Http,
                Protocol::Tls | Protocol::Tcp => {
                    if l.hosts.len() != 1 || !l.certificates.is_empty() {
                        return Err(bad(
                            "state",
                            format!("{at}.hosts"),
                            format!(
                                "a {protocol:?} listener has one host, its routes, and no certificates"
                            ),
                        ));
                    }
                    protocol
                }
                Protocol::Detect => {
                    return Err(bad(
                        "state",
                        format!("{at}.protocol"),
                        "a gateway listener names its protocol: HTTP, TLS or TCP",
                    ));
                }
            };
            let mut hosts = Vec::with_capacity(l.hosts.len());
            for (j, h) in l.hosts.iter().enumerate() {
                let field = format!("{at}.hosts[{j}]");
                if h.domains.is_empty() {
                    return Err(bad(
                        "state",
                        format!("{field}.domains"),
                        "a virtual host needs a domain",
                    ));
                }
                let mut spec = h.routes.clone().unwrap_or_default();
                if spec.hostname.is_empty() {
                    spec.hostname = h.domains[0].clone();
                }
                if spec.ports.is_empty() {
                    spec.ports.push(proto::ServicePort {
                        port: u32::from(port),
                        name: "http".into(),
                        protocol: proto::Protocol::Http.into(),
                        target_port: 0,
                    });
                }
                let (routes, _) = self
                    .compile_service(&spec, source)
                    .map_err(|e| bad("state", format!("{field}.routes.{}", e.field), e.message))?;
                hosts.push(GatewayHost {
                    domains: h.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
                    https_redirect: h.https_redirect,
                    routes,
                });
            }
            let mut tls = Vec::with_capacity(l.certificates.len());
            for (j, c) in l.certificates.iter().enumerate() {
                tls.push(crate::tls::terminate::build(c).map_err(|e| {
                    bad(
                        "state",
                        format!("{at}.certificates[{j}].{}", e.field),
                        e.message,
                    )
                })?);
            }
            if self
                .gateway
                .insert(
                    port,
                    GatewayPort {
                        protocol,
                        hosts,
                        tls,
                    },
                )
                .is_some()
            {
                return Err(bad(
                    "state",
                    format!("{at}.port"),
                    format!("port {port} is listed twice"),
                ));
            }
        }
        Ok(())
    }

    /// The virtual host of gateway listener `port` for a request's authority (`host[:port]`):
    /// the most specific match, the first listed on a tie.
    pub fn gateway_host(&self, port: u16, authority: &str) -> Option<&GatewayHost> {
        let host = match authority.find(']') {
            Some(end) => &authority[..=end],
            None => match authority.rsplit_once(':') {
                Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => h,
                _ => authority,
            },
        };
        let host = host.to_ascii_lowercase();
        let mut best: Option<(usize, &GatewayHost)> = None;
        for h in &self.gateway.get(&port)?.hosts {
            let score = h.domains.iter().filter_map(|d| host_match(d, &host)).max();
            if let Some(score) = score
                && best.is_none_or(|(b, _)| score > b)
            {
                best = Some((score, h));
            }
        }
        best.map(|(_, h)| h)
    }

    /// Checks and indexes one service (or a gateway host's routes, carried as a service);
    /// also returns its virtual IPs.
    fn compile_service(
        &mut self,
        spec: &proto::Service,
        source: &proto::ProxyState,
    ) -> Result<(Arc<Service>, Vec<IpAddr>), StateError> {
        let state = self;
        let host = spec.hostname.clone();
        if host.is_empty() {
            return Err(bad("?", "hostname", "every service needs a hostname"));
        }
        let mut ports = Vec::new();
        for (i, p) in spec.ports.iter().enumerate() {
            let port = port16(&host, &format!("ports[{i}].port"), p.port)?;
            let target_port = if p.target_port == 0 {
                port
            } else {
                port16(&host, &format!("ports[{i}].targetPort"), p.target_port)?
            };
            // A port pilot did not classify (or a hand-written file) is named for its protocol.
            let protocol = match known(&host, &format!("ports[{i}].protocol"), p.protocol)? {
                Protocol::Detect => Protocol::from_istio_name(&p.name).unwrap_or(Protocol::Detect),
                declared => declared,
            };
            ports.push(Port {
                port,
                name: p.name.clone(),
                protocol,
                target_port,
            });
        }
        let mut endpoint_ips = Vec::new();
        for (i, ep) in spec.endpoints.iter().enumerate() {
            let ip: IpAddr = ep.address.parse().map_err(|_| {
                bad(
                    &host,
                    format!("endpoints[{i}].address"),
                    format!("{:?} is not an IP address", ep.address),
                )
            })?;
            endpoint_ips.push(ip);
        }
        // The two enum fields only: the policy itself (with any PEM it carries) stays put.
        let modes = |tp: Option<&proto::TrafficPolicy>| {
            tp.map_or((0, 0), |t| (t.load_balancer, t.tls_mode))
        };
        let (lb, tls_mode) = modes(spec.traffic_policy.as_ref());
        let balancer =
            Balancer::of(known(&host, "trafficPolicy.loadBalancer", lb)?).unwrap_or_default();
        let tls = TlsMode::of(known(&host, "trafficPolicy.tlsMode", tls_mode)?).unwrap_or_default();
        let policies = std::iter::once(("trafficPolicy".to_string(), spec.traffic_policy.as_ref()))
            .chain(spec.subsets.iter().enumerate().map(|(i, s)| {
                (
                    format!("subsets[{i}].trafficPolicy"),
                    s.traffic_policy.as_ref(),
                )
            }));
        let mut originations = HashMap::new();
        for (i, (field, tp)) in policies.enumerate() {
            // Only a policy that names SIMPLE or MUTUAL itself carries what to originate; a
            // subset that names no mode uses the service's origination.
            let mode = tp.map_or(0, |t| t.tls_mode);
            let Some(parsed) = TlsMode::of(known(&host, &format!("{field}.tlsMode"), mode)?) else {
                continue;
            };
            if matches!(parsed, TlsMode::Simple | TlsMode::Mutual) {
                let spec_tls = tp.and_then(|t| t.originate.as_ref()).ok_or_else(|| {
                    bad(
                        &host,
                        format!("{field}.originate"),
                        "SIMPLE and MUTUAL need the TLS to originate (CA certificates at least)",
                    )
                })?;
                let o = crate::tls::originate::build(spec_tls, parsed == TlsMode::Mutual, &host)
                    .map_err(|e| bad(&host, format!("{field}.originate.{}", e.field), e.message))?;
                let subset = if i == 0 {
                    String::new()
                } else {
                    spec.subsets[i - 1].name.clone()
                };
                originations.insert(subset, Arc::new(o));
            }
        }
        let mut subsets = Vec::with_capacity(spec.subsets.len());
        for (i, s) in spec.subsets.iter().enumerate() {
            let (lb, tls_mode) = modes(s.traffic_policy.as_ref());
            let field = format!("subsets[{i}].trafficPolicy");
            let members = (0..spec.endpoints.len())
                .filter(|e| {
                    let have = &spec.endpoints[*e].labels;
                    s.labels.iter().all(|(k, v)| have.get(k) == Some(v))
                })
                .collect();
            subsets.push(SubsetInfo {
                name: s.name.clone(),
                members,
                balancer: Balancer::of(known(&host, &format!("{field}.loadBalancer"), lb)?)
                    .unwrap_or(balancer),
                tls: TlsMode::of(known(&host, &format!("{field}.tlsMode"), tls_mode)?)
                    .unwrap_or(tls),
            });
        }
        let mut vips = Vec::with_capacity(spec.addresses.len());
        for (i, vip) in spec.addresses.iter().enumerate() {
            let ip: IpAddr = vip.parse().map_err(|_| {
                bad(
                    &host,
                    format!("addresses[{i}]"),
                    format!("{vip:?} is not an IP address"),
                )
            })?;
            vips.push(ip);
        }
        state.compile_route_regexes(&host, spec)?;
        let all_members: Vec<usize> = (0..spec.endpoints.len()).collect();
        let plans = locality_plans(spec, &subsets, &all_members, source);
        let service = Arc::new(Service {
            subsets,
            clusters: cluster::clusters(spec, &plans),
            tls,
            all_members,
            host: Arc::from(spec.hostname.as_str()),
            endpoint_identities: spec
                .endpoints
                .iter()
                .map(|e| Arc::from(e.identity.as_str()))
                .collect(),
            spec: spec.clone(),
            ports,
            balancer,
            endpoint_ips,
            originations,
        });
        Ok((service, vips))
    }

    /// Compiles every regular expression of `spec`'s routes (anchored, once per pattern).
    fn compile_route_regexes(
        &mut self,
        host: &str,
        spec: &proto::Service,
    ) -> Result<(), StateError> {
        for (i, r) in spec.http_routes.iter().enumerate() {
            let match_patterns = r.matches.iter().flat_map(|m| {
                [&m.uri, &m.method, &m.authority, &m.scheme]
                    .into_iter()
                    .flatten()
                    .chain(m.headers.values())
                    .chain(m.query_params.values())
                    .chain(m.without_headers.values())
            });
            let patterns = match_patterns
                .chain(r.cors.iter().flat_map(|c| c.allow_origins.iter()))
                .filter_map(|sm| match &sm.kind {
                    Some(proto::string_match::Kind::Regex(re)) => Some(re.clone()),
                    _ => None,
                });
            for pattern in patterns {
                self.anchored(host, &format!("httpRoutes[{i}]"), pattern)?;
            }
            // A rewrite replaces every match in the path, so its pattern is not anchored.
            let rewrites = [
                r.rewrite
                    .as_ref()
                    .map(|rw| (&rw.uri_regex, "rewrite.uriRegex")),
                r.redirect
                    .as_ref()
                    .map(|rd| (&rd.uri_regex, "redirect.uriRegex")),
            ];
            for (pattern, field) in rewrites.into_iter().flatten() {
                if pattern.is_empty() {
                    continue;
                }
                let compiled = regex::Regex::new(pattern).map_err(|e| {
                    bad(
                        host,
                        format!("httpRoutes[{i}].{field}"),
                        regex_refused(pattern, &e),
                    )
                })?;
                self.regexes
                    .insert(format!("{REWRITE_KEY}{pattern}"), compiled);
            }
        }
        Ok(())
    }

    /// Compiles the regular expressions of the rate limits' matches.
    fn compile_rate_limit_regexes(
        &mut self,
        limits: &[proto::RateLimit],
    ) -> Result<(), StateError> {
        for (i, l) in limits.iter().enumerate() {
            let field = format!("rateLimits[{i}] ({})", l.name);
            if l.name.is_empty() {
                return Err(bad("state", field, "every rate limit needs a name"));
            }
            if l.max_tokens == 0 || l.fill_interval_ms == 0 {
                return Err(bad(
                    "state",
                    field,
                    "maxTokens and fillIntervalMs must be at least 1",
                ));
            }
            let patterns = l.matches.iter().flat_map(|m| {
                [&m.uri, &m.method]
                    .into_iter()
                    .flatten()
                    .chain(m.headers.values())
                    .chain(m.query_params.values())
            });
            for sm in patterns {
                if let Some(proto::string_match::Kind::Regex(re)) = &sm.kind {
                    self.anchored("state", &field, re.clone())?;
                }
            }
        }
        Ok(())
    }

    /// Compiles `pattern` anchored (a match is a full match), once.
    fn anchored(&mut self, host: &str, field: &str, pattern: String) -> Result<(), StateError> {
        if self.regexes.contains_key(&pattern) {
            return Ok(());
        }
        let compiled = regex::Regex::new(&format!("^(?:{pattern})$"))
            .map_err(|e| bad(host, field, regex_refused(&pattern, &e)))?;
        self.regexes.insert(pattern, compiled);
        Ok(())
    }

    /// The compiled (unanchored) regex of a path rewrite.
    pub fn rewrite_regex(&self, pattern: &str) -> Option<&regex::Regex> {
        self.regexes.get(&format!("{REWRITE_KEY}{pattern}"))
    }

    /// The inbound mTLS mode of a workload port.
    pub fn peer_mode_for(&self, port: u16) -> PeerMode {
        self.peer_port_modes
            .get(&port)
            .copied()
            .unwrap_or(self.peer_mode)
    }

    /// The compiled form of a route regex (anchored); `None` only for patterns not in the state.
    pub fn regex(&self, pattern: &str) -> Option<&regex::Regex> {
        self.regexes.get(pattern)
    }

    /// The service a connection to `dst` is for: by VIP:port, else by endpoint IP:port.
    pub fn service_for(&self, dst: SocketAddr) -> Option<&Arc<Service>> {
        self.by_vip.get(&dst).or_else(|| self.by_endpoint.get(&dst))
    }

    /// A service by host name, also resolving short names (`shipping`, `shipping.default`) in
    /// `namespace`, as Istio does.
    pub fn service_by_host(&self, host: &str, namespace: &str) -> Option<&Arc<Service>> {
        if let Some(s) = self.services.get(host) {
            return Some(s);
        }
        let domain = if self.source.domain.is_empty() {
            "cluster.local"
        } else {
            &self.source.domain
        };
        let fqdn = match host.matches('.').count() {
            0 => format!("{host}.{namespace}.svc.{domain}"),
            1 => format!("{host}.svc.{domain}"),
            _ => return None,
        };
        self.services.get(&fqdn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> proto::Service {
        proto::Service {
            hostname: "shipping.default.svc.cluster.local".into(),
            namespace: "default".into(),
            addresses: vec!["10.96.0.10".into()],
            ports: vec![proto::ServicePort {
                port: 80,
                name: "http".into(),
                target_port: 8080,
                ..Default::default()
            }],
            endpoints: vec![
                proto::Endpoint {
                    address: "10.0.0.1".into(),
                    labels: [("version".into(), "v1".into())].into(),
                    ..Default::default()
                },
                proto::Endpoint {
                    address: "10.0.0.2".into(),
                    labels: [("version".into(), "v2".into())].into(),
                    ..Default::default()
                },
            ],
            subsets: vec![proto::Subset {
                name: "v2".into(),
                labels: [("version".into(), "v2".into())].into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn services_are_found_by_vip_endpoint_and_short_name() {
        let state = State::compile(proto::ProxyState {
            services: vec![svc()],
            ..Default::default()
        })
        .unwrap();
        let by_vip = state.service_for("10.96.0.10:80".parse().unwrap()).unwrap();
        assert_eq!(by_vip.spec.hostname, "shipping.default.svc.cluster.local");
        assert_eq!(by_vip.ports[0].protocol, Protocol::Http);
        assert!(
            state
                .service_for("10.0.0.2:8080".parse().unwrap())
                .is_some()
        );
        assert!(state.service_for("10.0.0.2:80".parse().unwrap()).is_none());
        assert!(state.service_by_host("shipping", "default").is_some());
        assert!(state.service_by_host("shipping.default", "other").is_some());
        assert!(state.service_by_host("shipping", "other").is_none());
        assert_eq!(by_vip.subset_members("v2"), [1]);
        assert_eq!(
            by_vip.endpoint_addr(1, &by_vip.ports[0]),
            Some("10.0.0.2:8080".parse().unwrap())
        );
    }

    #[test]
    fn bad_states_are_refused_with_the_field() {
        let mut s = svc();
        s.endpoints[0].address = "ten".into();
        let err = State::compile(proto::ProxyState {
            services: vec![s],
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "service shipping.default.svc.cluster.local: endpoints[0].address: \"ten\" is not an IP address"
        );
        let err = State::compile(proto::ProxyState {
            outbound_traffic_policy: 7,
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "service state: outboundTrafficPolicy: unknown value 7: this proxy is older than the pilot that sent it"
        );
    }
}
