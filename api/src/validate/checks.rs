//! Checks of single values shared by every kind: names, hosts, ports, durations, addresses,
//! regular expressions and labels.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use super::Findings;
use crate::common::StringMatch;

/// A duration Istio would not accept, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DurationError(String);

/// Parses a duration as Istio accepts it: Go syntax (`1h30m`, `1.5s`, `300ms`, `10us`, `5ns`),
/// or protobuf JSON seconds (`2.5s`). The error says why.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let bad = |why: String| DurationError(why);
    let s = text.trim();
    if s.is_empty() {
        return Err(bad("empty duration".into()));
    }
    if s.starts_with('-') {
        return Err(bad(format!("{text:?} is negative")));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad(format!(
                "{text:?} is not a duration (expected e.g. 5s, 100ms, 1m30s)"
            )));
        }
        let number: f64 = rest[..num_len]
            .parse()
            .map_err(|_| bad(format!("{text:?} is not a duration (bad number)")))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => {
                return Err(bad(format!(
                    "{text:?} has no unit (use ns, us, ms, s, m or h)"
                )));
            }
            other => {
                return Err(bad(format!(
                    "{text:?} has unknown unit {other:?} (use ns, us, ms, s, m or h)"
                )));
            }
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad(format!("{text:?} is out of range")))
}

/// A duration of at least one millisecond, as Istio requires for timeouts and intervals.
pub(crate) fn duration(f: &mut Findings, field: &str, value: Option<&String>) {
    let Some(value) = value else { return };
    match parse_duration(value) {
        Ok(d) if d < Duration::from_millis(1) => f.error(
            field,
            format!("{value:?}: must be a valid duration greater than 1ms"),
        ),
        Ok(d) if d.subsec_nanos() % 1_000_000 != 0 => f.error(
            field,
            format!("{value:?}: only durations to millisecond precision are supported"),
        ),
        Ok(_) => {}
        Err(why) => f.error(
            field,
            format!("{why}: must be a valid duration greater than 1ms"),
        ),
    }
}

/// A port number, 1-65535.
pub(crate) fn port(f: &mut Findings, field: &str, port: u32) {
    if !(1..=65535).contains(&port) {
        f.error(field, format!("port must be between 1-65535, got {port}"));
    }
}

/// A port number when set.
pub(crate) fn opt_port(f: &mut Findings, field: &str, p: Option<u32>) {
    if let Some(p) = p {
        port(f, field, p);
    }
}

/// A percentage 0-100.
pub(crate) fn percent(f: &mut Findings, field: &str, value: f64) {
    if !(0.0..=100.0).contains(&value) || value.is_nan() {
        f.error(
            field,
            format!("Invalid value: {value}: must be between 0 and 100"),
        );
    }
}

/// A non-negative integer.
pub(crate) fn non_negative(f: &mut Findings, field: &str, value: Option<i32>) {
    if let Some(v) = value.filter(|v| *v < 0) {
        f.error(field, format!("Invalid value: {v}: must be non-negative"));
    }
}

/// A DNS-1123 label: lower-case alphanumerics and `-`, at most 63, alphanumeric at both ends.
pub(crate) fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub(crate) fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// A DNS name as Istio accepts in hosts: labels of letters, digits and `-` (any case), at most
/// 255 characters, with an optional trailing dot.
fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 255
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// A host that may start with a wildcard: `*`, `*.example.com`, `example.com`, `reviews`.
pub(crate) fn is_wildcard_host(s: &str) -> bool {
    if s == "*" {
        return true;
    }
    let rest = s.strip_prefix('*').unwrap_or(s);
    let rest = if s.starts_with('*') {
        rest.strip_prefix('.').unwrap_or(rest)
    } else {
        rest
    };
    is_dns_name(rest)
}

/// A host or an IP address.
pub(crate) fn host(f: &mut Findings, field: &str, value: &str) {
    if value.is_empty() {
        f.error(field, "Required value: a host name is needed");
    } else if value.parse::<IpAddr>().is_err() && !is_wildcard_host(value) {
        f.error(
            field,
            format!("{value:?} is not a valid host: use a DNS name (reviews, reviews.default.svc.cluster.local), a wildcard (*.example.com) or an IP"),
        );
    }
}

/// An IP address or CIDR block.
pub(crate) fn ip_or_cidr(s: &str) -> bool {
    match s.split_once('/') {
        None => s.parse::<IpAddr>().is_ok(),
        Some((ip, bits)) => match (ip.parse::<IpAddr>(), bits.parse::<u8>()) {
            (Ok(IpAddr::V4(_)), Ok(b)) => b <= 32,
            (Ok(IpAddr::V6(_)), Ok(b)) => b <= 128,
            _ => false,
        },
    }
}

/// A list of IPs or CIDRs.
pub(crate) fn cidrs(f: &mut Findings, field: &str, values: &[String]) {
    for (i, v) in values.iter().enumerate() {
        if !ip_or_cidr(v) {
            f.error(
                format!("{field}[{i}]"),
                format!("{v:?} is not an IP address or CIDR block"),
            );
        }
    }
}

/// An RE2 regular expression. The `regex` crate implements RE2's syntax (no look-around, no
/// back-references), so what it refuses Envoy would refuse too.
pub(crate) fn regex(f: &mut Findings, field: &str, pattern: &str) {
    if let Err(e) = regex::Regex::new(pattern) {
        let why = e
            .to_string()
            .lines()
            .last()
            .unwrap_or("")
            .trim()
            .to_string();
        f.error(
            field,
            format!("regex {pattern:?} does not compile (RE2 syntax): {why}"),
        );
    }
}

/// A string match with exactly one of exact/prefix/regex; `allow_empty` accepts `{}` (a header
/// presence match).
pub(crate) fn string_match(f: &mut Findings, field: &str, m: &StringMatch, allow_empty: bool) {
    let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()];
    match set.iter().filter(|s| **s).count() {
        0 if !allow_empty => f.error(field, "one of exact, prefix or regex must be set"),
        0 | 1 => {}
        _ => f.error(field, "only one of exact, prefix or regex may be set"),
    }
    if m.prefix.as_deref() == Some("") {
        f.error(
            format!("{field}.prefix"),
            "a prefix match must not be empty (leave the match out to match everything)",
        );
    }
    match m.regex.as_deref() {
        Some("") => f.error(format!("{field}.regex"), "a regex match must not be empty"),
        Some(re) => regex(f, &format!("{field}.regex"), re),
        None => {}
    }
}

/// A match's `headers` (or `withoutHeaders`) at `at`: valid lower-case names, each with a
/// string match (`{}` for presence).
pub(crate) fn header_matches(f: &mut Findings, at: &str, map: &BTreeMap<String, StringMatch>) {
    for (k, sm) in map {
        let hat = format!("{at}.{k}");
        if let Some(claim) = k.strip_prefix("@request.auth.claims.") {
            // A JWT claim (gateways route on it), its name as the token spells it; nested
            // claims separated by dots.
            if claim.is_empty() || claim.split('.').any(str::is_empty) {
                f.error(
                    &hat,
                    format!("{k:?}: name the claim, e.g. @request.auth.claims.groups"),
                );
            }
        } else if !header_name(k) {
            f.error(&hat, format!("{k:?} is not a valid header name"));
        } else if k.chars().any(|c| c.is_ascii_uppercase()) {
            f.error(&hat, format!("header name {k:?} must be lower case"));
        }
        string_match(f, &hat, sm, true);
    }
}

/// Label keys and values, Kubernetes syntax.
pub(crate) fn labels(f: &mut Findings, field: &str, labels: &BTreeMap<String, String>) {
    for (k, v) in labels {
        let at = format!("{field}.{k}");
        if let Err(why) = label_key(k) {
            f.error(&at, format!("invalid label key {k:?}: {why}"));
        }
        if let Err(why) = label_value(v) {
            f.error(&at, format!("invalid label value {v:?}: {why}"));
        }
    }
}

fn label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

pub(crate) fn label_key(k: &str) -> Result<(), &'static str> {
    if k.is_empty() {
        return Err("key must not be empty");
    }

    if k.contains('*') {
        return Err("wildcard not allowed in label key match");
    }
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if prefix.is_some_and(|p| !is_dns1123_subdomain(p)) {
        return Err("the prefix must be a DNS subdomain");
    }
    if !label_name(name) {
        return Err("must be 63 characters or less, alphanumeric at both ends, with - _ . inside");
    }
    Ok(())
}

pub(crate) fn label_value(v: &str) -> Result<(), &'static str> {
    if v.contains('*') {
        return Err("wildcard not allowed in label value match");
    }
    if !v.is_empty() && !label_name(v) {
        return Err("must be 63 characters or less, alphanumeric at both ends, with - _ . inside");
    }
    Ok(())
}

/// `exportTo`: `.`, `*`, `~` or namespace names, no duplicates, `*`/`~` alone.
pub(crate) fn export_to(f: &mut Findings, values: &[String]) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, v) in values.iter().enumerate() {
        let at = format!("spec.exportTo[{i}]");
        if !seen.insert(v.as_str()) {
            f.error(&at, format!("Duplicate value: {v:?}"));
        }
        if !(v == "." || v == "*" || v == "~" || is_dns1123_label(v)) {
            f.error(
                &at,
                format!("{v:?} is not '.', '*', '~' or a namespace name"),
            );
        }
    }
    if values.len() > 1 && values.iter().any(|v| v == "*" || v == "~") {
        f.error(
            "spec.exportTo",
            "'*' and '~' cannot be combined with other values",
        );
    }
}

/// Protocols Istio knows for ports (case-insensitive).
const PROTOCOLS: [&str; 13] = [
    "HTTP",
    "HTTPS",
    "GRPC",
    "GRPC-WEB",
    "HTTP2",
    "MONGO",
    "REDIS",
    "MYSQL",
    "TCP",
    "TLS",
    "UDP",
    "HBONE",
    "UNSUPPORTED",
];

/// A port protocol name.
pub(crate) fn protocol(f: &mut Findings, field: &str, p: &str) {
    if !PROTOCOLS.iter().any(|k| k.eq_ignore_ascii_case(p)) {
        f.error(
            field,
            format!(
                "Unsupported value: {p:?}: supported protocols are {}",
                PROTOCOLS.join(", ")
            ),
        );
    }
}

/// A port name: a DNS-1123 label (Istio's rule for port names).
pub(crate) fn port_name(f: &mut Findings, field: &str, name: &str) {
    if name.is_empty() {
        f.error(field, "Required value: the port needs a name");
    } else if !is_dns1123_label(&name.to_ascii_lowercase()) {
        f.error(
            field,
            format!("Invalid value: {name:?}: a port name is letters, digits and '-'"),
        );
    }
}

/// An HTTP header name (RFC 7230 token).
pub(crate) fn header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// At least one and at most one of several fields is set.
pub(crate) fn one_of(f: &mut Findings, field: &str, names: &[&str], set: &[bool], required: bool) {
    match set.iter().filter(|s| **s).count() {
        0 if required => f.error(field, format!("one of {} must be set", names.join(", "))),
        0 | 1 => {}
        _ => f.error(
            field,
            format!("only one of {} may be set", names.join(", ")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_istio() {
        assert_eq!(parse_duration("3m"), Ok(Duration::from_secs(180)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("apple").is_err());
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1d").is_err());
    }

    #[test]
    fn hosts_and_wildcards() {
        assert!(is_wildcard_host("*"));
        assert!(is_wildcard_host("*.example.com"));
        assert!(is_wildcard_host("reviews"));
        assert!(is_wildcard_host("*x"));
        assert!(!is_wildcard_host("foo*"));
        assert!(!is_wildcard_host("bad host"));
        assert!(!is_wildcard_host("a..b"));
    }

    #[test]
    fn cidrs_and_ips() {
        assert!(ip_or_cidr("10.0.0.0/8"));
        assert!(ip_or_cidr("2001:db8::/32"));
        assert!(ip_or_cidr("1.2.3.4"));
        assert!(!ip_or_cidr("1.2.3.4/99"));
        assert!(!ip_or_cidr("example.com"));
    }
}
