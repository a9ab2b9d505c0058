//! AuthorizationPolicy, enforced on the workload's inbound side. The policies pilot selected
//! for this workload are compiled once per state into [`Policies`]; each request (HTTP) or
//! connection (TCP) is then evaluated as Istio does: CUSTOM first, then DENY, then ALLOW (no
//! ALLOW policy: allowed; some ALLOW policy: denied unless one matches). AUDIT policies never
//! change the outcome, they are named in the decision so the access log shows them. Policies
//! marked `istio.io/dry-run` are evaluated beside the enforced ones and only reported.
//!
//! Over TCP there are no HTTP attributes. As in Istio, a rule that needs one never matches in
//! an ALLOW policy, and in DENY/AUDIT/CUSTOM policies its HTTP conditions are dropped (the rule
//! matches more): both ways the result fails closed.

pub mod external;
pub mod matcher;
mod rule;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mesh_api::proto::state::v1 as proto;
use mesh_api::security::{AuthorizationAction, AuthorizationPolicySpec};

use external::Authorizer;
use rule::{Facts, Rule};

/// What a policy does when it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Allow the request (and deny what no ALLOW policy matches).
    Allow,
    /// Deny the request.
    Deny,
    /// Only report the match.
    Audit,
    /// Ask an external authorizer.
    Custom,
}

impl Action {
    fn of(a: Option<AuthorizationAction>) -> Self {
        match a {
            None | Some(AuthorizationAction::Allow) => Action::Allow,
            Some(AuthorizationAction::Deny) => Action::Deny,
            Some(AuthorizationAction::Audit) => Action::Audit,
            Some(AuthorizationAction::Custom) => Action::Custom,
        }
    }

    /// The action's name as policies write it.
    pub fn name(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
            Action::Custom => "CUSTOM",
        }
    }
}

/// One compiled policy.
#[derive(Debug)]
struct Policy {
    /// `namespace/name`, shared by every decision that names it.
    id: Arc<str>,
    action: Action,
    rules: Vec<Rule>,
    /// The CUSTOM provider's name.
    provider: String,
    /// The CUSTOM provider, when the mesh configuration has it (else its matches are denied).
    authorizer: Option<Arc<Authorizer>>,
}

impl Policy {
    /// The first rule that matches, by index.
    fn matching(&self, f: &Facts<'_>) -> Option<usize> {
        self.rules.iter().position(|r| r.matches(f, self.action))
    }
}

/// The policy and rule that decided a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decided {
    /// `namespace/name` of the policy.
    pub policy: Arc<str>,
    /// Its action.
    pub action: Action,
    /// Index of the rule in `spec.rules`.
    pub rule: usize,
}

/// The outcome of evaluating a request.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Decision {
    /// Whether the request may go on.
    pub denied: bool,
    /// The policy and rule that decided; `None` when no policy matched (then a denial means
    /// "no ALLOW policy matched").
    pub by: Option<Decided>,
    /// AUDIT policies that matched.
    pub audited: Vec<Decided>,
    /// With dry-run policies: what the outcome would be if they were enforced.
    pub dry_run: Option<Box<Decision>>,
    /// External authorizers to ask first (CUSTOM policies that matched), each once. `denied`
    /// and `by` are the outcome once every one of them has allowed.
    pub checks: Vec<Check>,
}

/// A CUSTOM policy that matched: its authorizer decides.
#[derive(Clone, Debug)]
pub struct Check {
    /// The policy and rule that matched.
    pub by: Decided,
    /// Its authorizer.
    pub authorizer: Arc<Authorizer>,
}

impl PartialEq for Check {
    fn eq(&self, other: &Self) -> bool {
        self.by == other.by && Arc::ptr_eq(&self.authorizer, &other.authorizer)
    }
}

impl Eq for Check {}

impl Decision {
    /// Why, in a few words, for logs and the debug header: `denied by default/deny-all
    /// rules[0] (DENY)`.
    pub fn reason(&self) -> String {
        let verdict = if self.denied { "denied" } else { "allowed" };
        match &self.by {
            Some(d) if d.action == Action::Custom => format!(
                "{verdict} by {} rules[{}] (CUSTOM: its provider is not in the mesh configuration, so the requests it matches are denied)",
                d.policy, d.rule
            ),
            Some(d) => format!(
                "{verdict} by {} rules[{}] ({})",
                d.policy,
                d.rule,
                d.action.name()
            ),
            None if self.denied => format!("{verdict}: no ALLOW policy matched"),
            None => format!("{verdict}: no policy matched"),
        }
    }
}

/// What a request or connection is, as policies see it.
#[derive(Clone, Copy, Debug)]
pub struct Attributes<'a> {
    /// The direct peer.
    pub source: SocketAddr,
    /// The original client (`remote.ip`, `remoteIpBlocks`); the peer, as Istio's default of no
    /// trusted proxies in front of a sidecar has it.
    pub remote_ip: IpAddr,
    /// The peer's SPIFFE id, when it proved one over mTLS.
    pub principal: Option<&'a str>,
    /// The workload address and port the peer connected to.
    pub destination: SocketAddr,
    /// The TLS server name the peer sent.
    pub sni: Option<&'a str>,
    /// HTTP attributes; `None` for TCP.
    pub http: Option<HttpAttributes<'a>>,
}

/// The HTTP part of [`Attributes`].
#[derive(Clone, Copy, Debug)]
pub struct HttpAttributes<'a> {
    /// Host (authority), as sent.
    pub host: &'a str,
    /// Method.
    pub method: &'a str,
    /// Path without the query.
    pub path: &'a str,
    /// Request headers.
    pub headers: &'a http::HeaderMap,
    /// The verified JWT, when RequestAuthentication accepted one.
    pub auth: Option<&'a crate::authn::Verified>,
}

/// A policy that cannot be compiled (the proxy NACKs the state that carries it).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("AuthorizationPolicy {policy}: {field}: {message}")]
pub struct PolicyError {
    /// `namespace/name`.
    pub policy: String,
    /// The field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// The compiled AuthorizationPolicies of one workload.
#[derive(Debug, Default)]
pub struct Policies {
    custom: Vec<Policy>,
    deny: Vec<Policy>,
    audit: Vec<Policy>,
    allow: Vec<Policy>,
    /// Dry-run policies, evaluated only for the report.
    dry_run: Vec<Policy>,
}

impl Policies {
    /// Compiles the policies pilot sent, with the external authorizers CUSTOM ones name.
    pub fn compile(
        policies: &[proto::Policy],
        providers: &[proto::ExtensionProvider],
    ) -> Result<Self, PolicyError> {
        let mut authorizers = std::collections::HashMap::new();
        for p in providers {
            let a = Authorizer::compile(p).map_err(|(field, message)| PolicyError {
                policy: format!("(mesh configuration) extensionProviders {:?}", p.name),
                field,
                message,
            })?;
            authorizers.insert(p.name.clone(), a);
        }
        let mut out = Policies::default();
        for p in policies {
            let id: Arc<str> = format!("{}/{}", p.namespace, p.name).into();
            let spec: AuthorizationPolicySpec =
                serde_json::from_str(&p.spec_json).map_err(|e| PolicyError {
                    policy: id.to_string(),
                    field: "spec".into(),
                    message: format!("cannot be read: {e}"),
                })?;
            let action = Action::of(spec.action);
            let mut rules = Vec::with_capacity(spec.rules.len());
            for (i, r) in spec.rules.iter().enumerate() {
                let rule = Rule::compile(r, &p.namespace, &format!("spec.rules[{i}]")).map_err(
                    |(field, message)| PolicyError {
                        policy: id.to_string(),
                        field,
                        message,
                    },
                )?;
                rules.push(rule);
            }
            let provider = spec.provider.map(|p| p.name).unwrap_or_default();
            let authorizer = if action == Action::Custom {
                authorizers.get(&provider).cloned()
            } else {
                None
            };
            let policy = Policy {
                id,
                action,
                rules,
                provider,
                authorizer,
            };
            if p.dry_run {
                out.dry_run.push(policy);
                continue;
            }
            match action {
                Action::Custom => out.custom.push(policy),
                Action::Deny => out.deny.push(policy),
                Action::Audit => out.audit.push(policy),
                Action::Allow => out.allow.push(policy),
            }
        }
        Ok(out)
    }

    /// Whether there is anything to evaluate (no policy: every request is allowed, and the
    /// request path skips building attributes).
    pub fn is_empty(&self) -> bool {
        self.custom.is_empty()
            && self.deny.is_empty()
            && self.audit.is_empty()
            && self.allow.is_empty()
            && self.dry_run.is_empty()
    }

    /// How many policies are enforced (dry-run ones left out).
    pub fn count(&self) -> usize {
        self.custom.len() + self.deny.len() + self.audit.len() + self.allow.len()
    }

    /// Evaluates a request or connection.
    pub fn evaluate(&self, a: &Attributes<'_>) -> Decision {
        let mut d = evaluate(
            [&self.custom, &self.deny, &self.audit, &self.allow],
            a,
            None,
        );
        if !self.dry_run.is_empty() {
            d.dry_run = Some(Box::new(evaluate(
                [&self.custom, &self.deny, &self.audit, &self.allow],
                a,
                Some(&self.dry_run),
            )));
        }
        d
    }

    /// The CUSTOM provider names in use (for reports).
    pub fn custom_providers(&self) -> impl Iterator<Item = &str> {
        self.custom.iter().map(|p| p.provider.as_str())
    }
}

fn evaluate(
    [custom, deny, audit, allow]: [&Vec<Policy>; 4],
    a: &Attributes<'_>,
    extra: Option<&Vec<Policy>>,
) -> Decision {
    let extra_of = |action: Action| {
        extra
            .into_iter()
            .flatten()
            .filter(move |p| p.action == action)
    };
    let f = &Facts::of(a);
    let decided = |p: &Policy, rule: usize| Decided {
        policy: p.id.clone(),
        action: p.action,
        rule,
    };
    // CUSTOM first: a matching policy's authorizer is asked (by the caller, which may wait);
    // one whose provider the mesh configuration lacks denies what it matches (fail closed).
    // A dry-run evaluation asks no authorizer.
    let mut checks: Vec<Check> = Vec::new();
    for p in custom.iter().chain(extra_of(Action::Custom)) {
        let Some(rule) = p.matching(f) else { continue };
        match &p.authorizer {
            Some(_) if extra.is_some() => {}
            Some(a) => {
                if !checks.iter().any(|c| Arc::ptr_eq(&c.authorizer, a)) {
                    checks.push(Check {
                        by: decided(p, rule),
                        authorizer: a.clone(),
                    });
                }
            }
            None => {
                return Decision {
                    denied: true,
                    by: Some(decided(p, rule)),
                    ..Decision::default()
                };
            }
        }
    }
    // Then DENY: the first match denies.
    for p in deny.iter().chain(extra_of(Action::Deny)) {
        if let Some(rule) = p.matching(f) {
            return Decision {
                denied: true,
                by: Some(decided(p, rule)),
                checks,
                ..Decision::default()
            };
        }
    }
    let audited = audit
        .iter()
        .chain(extra_of(Action::Audit))
        .filter_map(|p| p.matching(f).map(|r| decided(p, r)))
        .collect();
    let mut allows = allow.iter().chain(extra_of(Action::Allow)).peekable();
    if allows.peek().is_none() {
        return Decision {
            audited,
            checks,
            ..Decision::default()
        };
    }
    for p in allows {
        if let Some(rule) = p.matching(f) {
            return Decision {
                denied: false,
                by: Some(decided(p, rule)),
                audited,
                dry_run: None,
                checks,
            };
        }
    }
    Decision {
        denied: true,
        by: None,
        audited,
        dry_run: None,
        checks,
    }
}

#[cfg(test)]
mod tests;
