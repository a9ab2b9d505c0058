//! The value matchers AuthorizationPolicy rules are built from, compiled once per state: Istio's
//! string forms (exact, `prefix*`, `*suffix`, `*`), path templates (`{*}`, `{**}`), and CIDR
//! blocks.

use std::net::IpAddr;

/// `s.split('/')` by a plain byte scan: the values split here (SPIFFE ids, request paths)
/// are short, and std's searcher is tuned for long ones.
pub fn slash_segments(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.bytes().position(|b| b == b'/') {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// One of Istio's string forms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StrMatch {
    /// `*`: any value that is present (an empty one too, for headers).
    Any,
    /// The whole value.
    Exact(Box<str>),
    /// `prefix*`.
    Prefix(Box<str>),
    /// `*suffix`.
    Suffix(Box<str>),
}

impl StrMatch {
    /// Reads Istio's form of `value`: a leading or trailing `*` makes a suffix or prefix match.
    pub fn parse(value: &str) -> Self {
        if value == "*" {
            StrMatch::Any
        } else if let Some(p) = value.strip_suffix('*') {
            StrMatch::Prefix(p.into())
        } else if let Some(s) = value.strip_prefix('*') {
            StrMatch::Suffix(s.into())
        } else {
            StrMatch::Exact(value.into())
        }
    }

    /// The same form, lower-cased (for values compared without case, like hosts).
    pub fn lowercase(value: &str) -> Self {
        Self::parse(&value.to_ascii_lowercase())
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StrMatch::Any => true,
            StrMatch::Exact(e) => value == &**e,
            StrMatch::Prefix(p) => value.starts_with(&**p),
            StrMatch::Suffix(s) => value.ends_with(&**s),
        }
    }

    /// Whether `value` matches, ignoring ASCII case (the pattern is already lower case).
    pub fn matches_ignore_case(&self, value: &str) -> bool {
        let at = |i: usize, p: &str| {
            value
                .get(i..i + p.len())
                .is_some_and(|v| v.eq_ignore_ascii_case(p))
        };
        match self {
            StrMatch::Any => true,
            StrMatch::Exact(e) => value.len() == e.len() && at(0, e),
            StrMatch::Prefix(p) => value.len() >= p.len() && at(0, p),
            StrMatch::Suffix(s) => value.len() >= s.len() && at(value.len() - s.len(), s),
        }
    }
}

/// A path pattern: Istio's string forms, or a template whose segments may be `{*}` (one
/// segment) and, last, `{**}` (the rest, at least one segment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    /// `exact`, `prefix*`, `*suffix`, `*`.
    Str(StrMatch),
    /// Segments of a `/a/{*}/b/{**}` template.
    Template(Vec<Segment>),
}

/// One segment of a path template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Literally this text.
    Literal(Box<str>),
    /// `{*}`: exactly one non-empty segment.
    One,
    /// `{**}`: one or more segments (only last).
    Rest,
}

impl PathMatch {
    /// Reads a path pattern.
    pub fn parse(value: &str) -> Self {
        if !value.contains('{') {
            return PathMatch::Str(StrMatch::parse(value));
        }
        let segments = value
            .trim_start_matches('/')
            .split('/')
            .map(|s| match s {
                "{*}" => Segment::One,
                "{**}" => Segment::Rest,
                literal => Segment::Literal(literal.into()),
            })
            .collect();
        PathMatch::Template(segments)
    }

    /// Whether the request path (without its query) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Str(s) => s.matches(path),
            PathMatch::Template(segments) => {
                let Some(rest) = path.strip_prefix('/') else {
                    return false;
                };
                let mut parts = slash_segments(rest);
                for (i, seg) in segments.iter().enumerate() {
                    match seg {
                        Segment::Rest => {
                            // The rest: at least one non-empty segment; only valid last.
                            let remaining: Vec<&str> = parts.collect();
                            return i + 1 == segments.len()
                                && !remaining.is_empty()
                                && remaining.iter().all(|p| !p.is_empty());
                        }
                        Segment::One => match parts.next() {
                            Some(p) if !p.is_empty() => {}
                            _ => return false,
                        },
                        Segment::Literal(l) => {
                            if parts.next() != Some(&**l) {
                                return false;
                            }
                        }
                    }
                }
                parts.next().is_none()
            }
        }
    }
}

/// An IP block (`10.0.0.0/8`, or one address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    /// Reads `a.b.c.d[/n]` or an IPv6 form; `None` when it is neither (validation refused it
    /// already, so this only guards hand-written states).
    pub fn parse(value: &str) -> Option<Self> {
        let (addr, bits) = match value.split_once('/') {
            Some((a, b)) => (a, Some(b.parse::<u8>().ok()?)),
            None => (value, None),
        };
        let net: IpAddr = addr.parse().ok()?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        (bits <= max).then_some(Cidr { net, bits })
    }

    /// Whether `ip` is in the block (an IPv4-mapped IPv6 address counts as its IPv4 form).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.contains_normalized(Self::normalize(ip))
    }

    /// An IPv4-mapped IPv6 address as its IPv4 form; any other address as it is.
    pub fn normalize(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        }
    }

    /// [`Cidr::contains`] for an address already [normalized](Cidr::normalize).
    pub fn contains_normalized(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_string_forms() {
        assert!(StrMatch::parse("*").matches(""));
        assert!(StrMatch::parse("/api*").matches("/api/v1"));
        assert!(!StrMatch::parse("/api*").matches("/ap"));
        assert!(StrMatch::parse("*.local").matches("a.local"));
        assert!(StrMatch::parse("GET").matches("GET"));
        assert!(!StrMatch::parse("GET").matches("get"));
        assert!(
            StrMatch::lowercase("Shipping.Default*").matches_ignore_case("SHIPPING.default:80")
        );
        assert!(StrMatch::lowercase("*.Svc").matches_ignore_case("a.svc"));
        assert!(!StrMatch::lowercase("abc").matches_ignore_case("abcd"));
    }

    #[test]
    fn slash_segments_split_as_std_does() {
        for s in [
            "",
            "/",
            "a",
            "/a/b",
            "a//b/",
            "cluster.local/ns/default/sa/order",
        ] {
            assert_eq!(
                slash_segments(s).collect::<Vec<_>>(),
                s.split('/').collect::<Vec<_>>(),
                "{s:?}"
            );
        }
    }

    #[test]
    fn path_templates() {
        let one = PathMatch::parse("/store/{*}/items");
        assert!(one.matches("/store/a/items"));
        assert!(!one.matches("/store/a/b/items"));
        assert!(!one.matches("/store//items"));
        let rest = PathMatch::parse("/store/{**}");
        assert!(rest.matches("/store/a/b"));
        assert!(!rest.matches("/store"));
        assert!(!rest.matches("/store/"));
        assert!(PathMatch::parse("/exact").matches("/exact"));
        assert!(!PathMatch::parse("/exact").matches("/exact/more"));
    }

    #[test]
    fn cidr_blocks() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.9.9".parse().unwrap()));
        assert!(
            Cidr::parse("1.2.3.4")
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(
            Cidr::parse("fd00::/8")
                .unwrap()
                .contains("fd12::1".parse().unwrap())
        );
        assert_eq!(Cidr::parse("1.2.3.4/33"), None);
        assert_eq!(Cidr::parse("nope"), None);
    }
}
