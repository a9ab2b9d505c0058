//! Host names as Istio reads them: short names completed with the namespace of the resource
//! that wrote them, wildcard matching, and `exportTo` visibility.

/// Completes a host written in a resource of `namespace`: a name without dots becomes
/// `name.namespace.svc.<domain>`; names with dots and wildcards are taken as written (as Istio
/// does: `reviews.prod` is not expanded).
pub fn fqdn(host: &str, namespace: &str, domain: &str) -> String {
    if host.contains('.') || host.contains('*') {
        host.to_string()
    } else {
        format!("{host}.{namespace}.svc.{domain}")
    }
}

/// True when `pattern` (a host, `*`, or `*.suffix`) matches the concrete host `host`.
pub fn matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix) && host.len() > suffix.len(),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// How specific a matching pattern is: exact names beat wildcards, longer wildcards beat
/// shorter ones. Larger is more specific.
pub fn specificity(pattern: &str) -> usize {
    if pattern.starts_with('*') {
        pattern.len()
    } else {
        usize::MAX
    }
}

/// Who may see a resource, from its `exportTo` list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Visibility {
    /// Every namespace (`*`, or nothing said).
    #[default]
    Public,
    /// The listed namespaces (`.` already replaced by the resource's own).
    Namespaces(Vec<String>),
}

impl Visibility {
    /// Reads an `exportTo` list written in a resource of `own_namespace`.
    pub fn from_export_to<S: AsRef<str>>(export_to: &[S], own_namespace: &str) -> Self {
        if export_to.is_empty() || export_to.iter().any(|e| e.as_ref() == "*") {
            return Visibility::Public;
        }
        Visibility::Namespaces(
            export_to
                .iter()
                .filter_map(|e| match e.as_ref() {
                    "." => Some(own_namespace.to_string()),
                    "~" => None,
                    ns => Some(ns.to_string()),
                })
                .collect(),
        )
    }

    /// True when a workload in `namespace` may see the resource.
    pub fn visible_to(&self, namespace: &str) -> bool {
        match self {
            Visibility::Public => true,
            Visibility::Namespaces(list) => list.iter().any(|n| n == namespace),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_complete_in_the_writers_namespace() {
        assert_eq!(
            fqdn("reviews", "prod", "cluster.local"),
            "reviews.prod.svc.cluster.local"
        );
        assert_eq!(fqdn("reviews.prod", "x", "cluster.local"), "reviews.prod");
        assert_eq!(fqdn("*.example.com", "x", "cluster.local"), "*.example.com");
    }

    #[test]
    fn wildcards_match_suffixes() {
        assert!(matches("*", "a.b"));
        assert!(matches("*.example.com", "api.example.com"));
        assert!(matches("*.example.com", "a.api.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(matches("Api.Example.com", "api.example.com"));
        assert!(specificity("a.example.com") > specificity("*.example.com"));
        assert!(specificity("*.example.com") > specificity("*.com"));
    }

    #[test]
    fn export_to() {
        let v = Visibility::from_export_to(&["."], "a");
        assert!(v.visible_to("a") && !v.visible_to("b"));
        assert!(Visibility::from_export_to::<&str>(&[], "a").visible_to("b"));
        assert!(!Visibility::from_export_to(&["~"], "a").visible_to("a"));
        assert!(Visibility::from_export_to(&["b", "*"], "a").visible_to("z"));
    }
}
