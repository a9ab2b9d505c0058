//! SPIFFE identities of workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

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
        assert_eq!(Identity::parse(&id.uri()), Ok(id));
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
    }
}
