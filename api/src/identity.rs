//! SPIFFE identities of workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`,
//! built, parsed and read from certificates in this one place, so pilot, the proxy and the CA
//! cannot disagree about what an identity looks like.

use std::fmt;

/// A workload identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Trust domain, `cluster.local` by default.
    pub trust_domain: String,
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
}

/// A string that is not a workload identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{value:?} is not a workload identity: expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
)]
pub struct IdentityError {
    /// What was given.
    pub value: String,
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
}

impl Identity {
    /// An identity from its parts.
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }

    /// The SPIFFE URI.
    pub fn uri(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }

    /// Parses a SPIFFE URI of the workload form.
    pub fn parse(uri: &str) -> Result<Self, IdentityError> {
        let err = || IdentityError { value: uri.into() };
        let rest = uri.strip_prefix("spiffe://").ok_or_else(err)?;
        let mut parts = rest.split('/');
        let (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(err());
        };
        if !(is_name(td) && is_name(ns) && is_name(sa)) {
            return Err(err());
        }
        Ok(Self::new(td, ns, sa))
    }
}

/// The namespace a SPIFFE identity of the workload form names, without checking the rest (for
/// labels and logs, where an odd identity should still show what it can).
pub fn namespace_of(uri: &str) -> Option<&str> {
    let path = uri.strip_prefix("spiffe://")?;
    let mut parts = path.split('/').skip(1);
    match (parts.next(), parts.next()) {
        (Some("ns"), Some(ns)) if !ns.is_empty() => Some(ns),
        _ => None,
    }
}

/// The SPIFFE id of an X.509 certificate (DER): its one `spiffe://` URI SAN. `None` when the
/// certificate does not parse or has none or several, which a mesh peer never has.
pub fn spiffe_id_of(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, parsed) = X509Certificate::from_der(der).ok()?;
    let sans = parsed.subject_alternative_name().ok()??;
    let mut uris = sans.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) if u.starts_with("spiffe://") => Some((*u).to_string()),
        _ => None,
    });
    let first = uris.next()?;
    uris.next().is_none().then_some(first)
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_and_bad_ones_are_refused() {
        let id = Identity::new("cluster.local", "default", "order");
        assert_eq!(id.uri(), "spiffe://cluster.local/ns/default/sa/order");
        assert_eq!(Identity::parse(&id.uri()), Ok(id.clone()));
        for bad in [
            "spiffe://cluster.local/ns/default",
            "spiffe://cluster.local/ns/default/sa/order/extra",
            "https://cluster.local/ns/default/sa/order",
            "spiffe://cluster.local/ns/Default/sa/order",
            "spiffe://cluster.local/sa/order/ns/default",
            "spiffe:///ns/default/sa/order",
        ] {
            assert!(Identity::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(namespace_of(&id.uri()), Some("default"));
        assert_eq!(namespace_of("spiffe://td/sa/x"), None);
        assert_eq!(spiffe_id_of(b"not a certificate"), None);
    }
}
