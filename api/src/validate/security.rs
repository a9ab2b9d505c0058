//! PeerAuthentication, AuthorizationPolicy and RequestAuthentication rules.

use std::collections::BTreeSet;

use super::Findings;
use super::checks::{cidrs, duration, ip_or_cidr, is_dns1123_subdomain, labels};
use crate::common::{PolicyTargetReference, WorkloadSelector};
use crate::security::{
    AuthorizationAction, AuthorizationPolicySpec, PeerAuthenticationSpec,
    RequestAuthenticationSpec, Source,
};

pub(crate) fn peer_authentication(f: &mut Findings, spec: &PeerAuthenticationSpec) {
    if let Some(s) = &spec.selector {
        labels(f, "spec.selector.matchLabels", &s.match_labels);
    }
    let has_selector = spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    if !spec.port_level_mtls.is_empty() && !has_selector {
        f.error(
            "spec.portLevelMtls",
            "portLevelMtls needs a workload selector (ports belong to workloads)",
        );
    }
    for port in spec.port_level_mtls.keys() {
        if port
            .parse::<u32>()
            .ok()
            .filter(|p| (1..=65535).contains(p))
            .is_none()
        {
            f.error(
                format!("spec.portLevelMtls.{port}"),
                format!("{port:?}: port must be between 1-65535"),
            );
        }
    }
}

/// Shared by AuthorizationPolicy and RequestAuthentication: a selector or target references.
pub(crate) fn selection(
    f: &mut Findings,
    namespace: &str,
    selector: Option<&WorkloadSelector>,
    target_ref: Option<&PolicyTargetReference>,
    target_refs: &[PolicyTargetReference],
) {
    let refs = target_ref.is_some() || !target_refs.is_empty();
    if selector.is_some() && refs || target_ref.is_some() && !target_refs.is_empty() {
        f.error(
            "spec",
            "only one of targetRefs or selector can be set (targetRef is the older single form)",
        );
    }
    if let Some(s) = selector {
        labels(f, "spec.selector.matchLabels", &s.match_labels);
    }
    if let Some(r) = target_ref {
        target(f, "spec.targetRef", namespace, r);
    }
    for (i, r) in target_refs.iter().enumerate() {
        target(f, &format!("spec.targetRefs[{i}]"), namespace, r);
    }
}

fn target(f: &mut Findings, at: &str, namespace: &str, r: &PolicyTargetReference) {
    if r.name.is_empty() {
        f.error(format!("{at}.name"), "Required value: name of the target");
    }
    if !r.group.is_empty() && !is_dns1123_subdomain(&r.group) {
        f.error(
            format!("{at}.group"),
            format!(
                "{at}.group in body should match a DNS subdomain: {:?}",
                r.group
            ),
        );
    }
    let kind_ok = r
        .kind
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && r.kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !r.kind.ends_with('-');
    if !kind_ok {
        f.error(
            format!("{at}.kind"),
            format!(
                "{at}.kind in body should match ^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$: {:?}",
                r.kind
            ),
        );
    }
    if !r.namespace.is_empty() && r.namespace != namespace {
        f.error(
            format!("{at}.namespace"),
            "cross namespace referencing is not currently supported: leave namespace empty",
        );
    }
}

/// Attribute keys a `when` condition may use; `[...]` forms take any name inside.
const CONDITION_KEYS: [&str; 10] = [
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "destination.ip",
    "destination.port",
];

pub(crate) fn authorization_policy(
    f: &mut Findings,
    namespace: &str,
    spec: &AuthorizationPolicySpec,
) {
    selection(
        f,
        namespace,
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
    );
    let custom = spec.action == Some(AuthorizationAction::Custom);
    match (&spec.provider, custom) {
        (None, true) => f.error(
            "spec.provider",
            "Required value: action CUSTOM needs a provider",
        ),
        (Some(_), false) => f.error(
            "spec.provider",
            "provider must only be used with action CUSTOM",
        ),
        (Some(p), true) if p.name.is_empty() => {
            f.error("spec.provider.name", "Required value: the provider's name")
        }
        _ => {}
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        for (j, from) in rule.from.iter().enumerate() {
            source(f, &format!("{at}.from[{j}].source"), &from.source);
        }
        for (j, to) in rule.to.iter().enumerate() {
            let oat = format!("{at}.to[{j}].operation");
            let o = &to.operation;
            if *o == Default::default() {
                f.error(&oat, "an operation must set at least one field");
            }
            for (name, list) in [
                ("hosts", &o.hosts),
                ("notHosts", &o.not_hosts),
                ("methods", &o.methods),
                ("notMethods", &o.not_methods),
                ("paths", &o.paths),
                ("notPaths", &o.not_paths),
            ] {
                non_empty_values(f, &format!("{oat}.{name}"), list);
            }
            for (name, list) in [("ports", &o.ports), ("notPorts", &o.not_ports)] {
                for (k, p) in list.iter().enumerate() {
                    if p.parse::<u32>()
                        .ok()
                        .filter(|p| (1..=65535).contains(p))
                        .is_none()
                    {
                        f.error(
                            format!("{oat}.{name}[{k}]"),
                            format!("{p:?}: port must be between 1-65535"),
                        );
                    }
                }
            }
        }
        for (j, c) in rule.when.iter().enumerate() {
            let cat = format!("{at}.when[{j}]");
            let bracketed = [
                "request.headers[",
                "request.auth.claims[",
                "experimental.envoy.filters.",
            ]
            .iter()
            .any(|p| c.key.starts_with(p));
            let sni = c.key == "connection.sni" || c.key == "source.trustDomain";
            if c.key.is_empty() {
                f.error(
                    format!("{cat}.key"),
                    "Required value: the attribute to test",
                );
            } else if bracketed
                && c.key.contains('[')
                && (!c.key.ends_with(']') || c.key.contains("[]"))
            {
                f.error(format!("{cat}.key"), format!("{:?}: a bracketed attribute needs a name and a closing ']', e.g. request.headers[x-user]", c.key));
            } else if !(CONDITION_KEYS.contains(&c.key.as_str()) || bracketed || sni) {
                f.error(format!("{cat}.key"), format!("unknown attribute {:?}: use e.g. request.headers[NAME], source.ip, request.auth.claims[NAME]", c.key));
            }
            if c.values.is_empty() && c.not_values.is_empty() {
                f.error(&cat, "at least one of values or notValues must be set");
            }
            for (name, list) in [("values", &c.values), ("notValues", &c.not_values)] {
                let vat = format!("{cat}.{name}");
                match c.key.as_str() {
                    "source.ip" | "remote.ip" | "destination.ip" => cidrs(f, &vat, list),
                    "destination.port" => {
                        for (k, p) in list.iter().enumerate() {
                            if p.parse::<u16>().ok().filter(|p| *p > 0).is_none() {
                                f.error(
                                    format!("{vat}[{k}]"),
                                    format!("{p:?}: port must be between 1-65535"),
                                );
                            }
                        }
                    }
                    _ => non_empty_values(f, &vat, list),
                }
            }
        }
    }
}

fn source(f: &mut Findings, at: &str, s: &Source) {
    if *s == Source::default() {
        f.error(at, "a source must set at least one field");
    }
    let accounts = !s.service_accounts.is_empty() || !s.not_service_accounts.is_empty();
    let others = !s.namespaces.is_empty()
        || !s.not_namespaces.is_empty()
        || !s.principals.is_empty()
        || !s.not_principals.is_empty();
    if accounts && others {
        f.error(at, "Cannot set serviceAccounts with namespaces or principals: put them in separate sources");
    }
    for (name, list) in [
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
    ] {
        for (i, sa) in list.iter().enumerate() {
            let ok = match sa.split_once('/') {
                Some((ns, name)) => is_dns1123_subdomain(ns) && is_dns1123_subdomain(name),
                None => is_dns1123_subdomain(sa),
            };
            if !ok {
                f.error(
                    format!("{at}.{name}[{i}]"),
                    format!("{sa:?} is not SERVICE-ACCOUNT or NAMESPACE/SERVICE-ACCOUNT"),
                );
            }
        }
    }
    for (name, list) in [
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ] {
        cidrs(f, &format!("{at}.{name}"), list);
    }
    for (name, list) in [
        ("principals", &s.principals),
        ("notPrincipals", &s.not_principals),
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("namespaces", &s.namespaces),
        ("notNamespaces", &s.not_namespaces),
        ("trustDomains", &s.trust_domains),
        ("notTrustDomains", &s.not_trust_domains),
    ] {
        non_empty_values(f, &format!("{at}.{name}"), list);
    }
}

fn non_empty_values(f: &mut Findings, at: &str, list: &[String]) {
    for (i, v) in list.iter().enumerate() {
        if v.is_empty() {
            f.error(format!("{at}[{i}]"), "Invalid value: \"\": an empty value is not allowed (should be at least 1 chars long)");
        }
    }
}

pub(crate) fn request_authentication(
    f: &mut Findings,
    namespace: &str,
    spec: &RequestAuthenticationSpec,
) {
    selection(
        f,
        namespace,
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
    );
    let mut issuers = BTreeSet::new();
    for (i, r) in spec.jwt_rules.iter().enumerate() {
        let at = format!("spec.jwtRules[{i}]");
        if r.issuer.is_empty() {
            f.error(
                format!("{at}.issuer"),
                "Required value: the token issuer (iss claim)",
            );
        } else if !issuers.insert(r.issuer.as_str()) {
            f.error(
                format!("{at}.issuer"),
                format!("Duplicate value: issuer {:?} has a rule already", r.issuer),
            );
        }
        non_empty_values(f, &format!("{at}.audiences"), &r.audiences);
        if !r.jwks_uri.is_empty() {
            jwks_uri(f, &format!("{at}.jwksUri"), &r.jwks_uri);
        }
        if !r.jwks.is_empty()
            && !serde_json::from_str::<serde_json::Value>(&r.jwks)
                .is_ok_and(|v| v.get("keys").is_some())
        {
            f.error(
                format!("{at}.jwks"),
                "jwks must be a JSON Web Key Set: a JSON object with \"keys\"",
            );
        }
        for (j, h) in r.from_headers.iter().enumerate() {
            if h.name.is_empty() {
                f.error(
                    format!("{at}.fromHeaders[{j}].name"),
                    "Invalid value: \"\": name should be at least 1 chars long",
                );
            }
        }
        non_empty_values(f, &format!("{at}.fromParams"), &r.from_params);
        non_empty_values(f, &format!("{at}.fromCookies"), &r.from_cookies);
        non_empty_values(
            f,
            &format!("{at}.spaceDelimitedClaims"),
            &r.space_delimited_claims,
        );
        let mut headers = BTreeSet::new();
        for (j, c) in r.output_claim_to_headers.iter().enumerate() {
            let cat = format!("{at}.outputClaimToHeaders[{j}]");
            if c.claim.is_empty() {
                f.error(
                    format!("{cat}.claim"),
                    "Invalid value: \"\": claim should be at least 1 chars long",
                );
            }
            if c.header.is_empty() {
                f.error(
                    format!("{cat}.header"),
                    "Invalid value: \"\": header should be at least 1 chars long",
                );
            } else if !c
                .header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                f.error(
                    format!("{cat}.header"),
                    format!("{:?}: header should match ^[-_A-Za-z0-9]+$", c.header),
                );
            } else if !headers.insert(c.header.to_ascii_lowercase()) {
                f.error(
                    format!("{cat}.header"),
                    format!("Duplicate value: header {:?}", c.header),
                );
            }
        }
        if !r.output_payload_to_header.is_empty()
            && !super::checks::header_name(&r.output_payload_to_header)
        {
            f.error(
                format!("{at}.outputPayloadToHeader"),
                format!(
                    "{:?} is not a valid header name",
                    r.output_payload_to_header
                ),
            );
        }
        duration(f, &format!("{at}.timeout"), r.timeout.as_ref());
    }
}

fn jwks_uri(f: &mut Findings, at: &str, uri: &str) {
    let Some((scheme, rest)) = uri.split_once("://") else {
        f.error(
            at,
            format!("{uri:?}: url must have scheme http:// or https://"),
        );
        return;
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        f.error(
            at,
            format!("{uri:?}: url must have scheme http:// or https://"),
        );
        return;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    if host.is_empty()
        || !(ip_or_cidr(host.trim_matches(['[', ']']))
            || is_dns1123_subdomain(&host.to_ascii_lowercase()))
    {
        f.error(at, format!("{uri:?}: the URL has no valid host"));
    }
}
