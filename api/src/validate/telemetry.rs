//! `telemetry.istio.io` Telemetry: Istio's checks, and what of it is not enforced yet.

use super::Findings;
use super::checks::duration;
use crate::telemetry::{ProviderRef, TagOperation, TelemetrySpec};

/// Istio's standard metrics, as `overrides[].match.metric` names them.
const METRICS: [&str; 10] = [
    "ALL_METRICS",
    "REQUEST_COUNT",
    "REQUEST_DURATION",
    "REQUEST_SIZE",
    "RESPONSE_SIZE",
    "TCP_OPENED_CONNECTIONS",
    "TCP_CLOSED_CONNECTIONS",
    "TCP_SENT_BYTES",
    "TCP_RECEIVED_BYTES",
    "GRPC_REQUEST_MESSAGES",
];

fn providers(f: &mut Findings, at: &str, list: &[ProviderRef]) {
    for (i, p) in list.iter().enumerate() {
        if p.name.is_empty() {
            f.error(
                format!("{at}.providers[{i}].name"),
                "name in body should be at least 1 chars long: name a provider of the mesh configuration's extensionProviders (or envoy, prometheus)",
            );
        }
    }
}

pub(crate) fn telemetry(f: &mut Findings, namespace: &str, spec: &TelemetrySpec) {
    super::security::selection(
        f,
        namespace,
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
    );
    if spec.tracing.len() > 1 {
        f.error(
            "spec.tracing",
            "multiple tracing is not currently supported: give one entry",
        );
    }
    for (i, t) in spec.tracing.iter().enumerate() {
        let at = format!("spec.tracing[{i}]");
        providers(f, &at, &t.providers);
        if t.providers.len() > 1 {
            f.error(
                format!("{at}.providers"),
                "multiple providers is not currently supported: name one",
            );
        }
        if let Some(p) = t.random_sampling_percentage
            && !(0.0..=100.0).contains(&p)
        {
            f.error(
                format!("{at}.randomSamplingPercentage"),
                format!("{p} is out of range: a percentage from 0.0 to 100.0"),
            );
        }
        for (name, tag) in &t.custom_tags {
            let field = format!("{at}.customTags.{name}");
            let set = [
                tag.literal.is_some(),
                tag.environment.is_some(),
                tag.header.is_some(),
            ];
            super::checks::one_of(f, &field, &["literal", "environment", "header"], &set, true);
            if tag.environment.as_ref().is_some_and(|e| e.name.is_empty()) {
                f.error(
                    format!("{field}.environment.name"),
                    "Required value: the environment variable",
                );
            }
            if tag.header.as_ref().is_some_and(|h| h.name.is_empty()) {
                f.error(
                    format!("{field}.header.name"),
                    "Required value: the request header",
                );
            }
        }
    }
    for (i, m) in spec.metrics.iter().enumerate() {
        let at = format!("spec.metrics[{i}]");
        providers(f, &at, &m.providers);
        duration(
            f,
            &format!("{at}.reportingInterval"),
            m.reporting_interval.as_ref(),
        );
        for (j, o) in m.overrides.iter().enumerate() {
            let at = format!("{at}.overrides[{j}]");
            if let Some(sel) = &o.match_ {
                if sel.custom_metric.as_deref() == Some("") {
                    f.error(
                        format!("{at}.match.customMetric"),
                        "customMetric in body should be at least 1 chars long",
                    );
                }
                if let Some(metric) = &sel.metric
                    && !METRICS.contains(&metric.as_str())
                {
                    f.error(
                        format!("{at}.match.metric"),
                        format!("{metric:?} is not one of {}", METRICS.join(", ")),
                    );
                }
                if sel.metric.is_some() && sel.custom_metric.is_some() {
                    f.error(
                        format!("{at}.match"),
                        "only one of metric, customMetric may be set",
                    );
                }
            }
            for (tag, change) in &o.tag_overrides {
                let field = format!("{at}.tagOverrides.{tag}");
                match (change.operation.unwrap_or_default(), &change.value) {
                    (TagOperation::Upsert, None) => f.error(
                        field,
                        "value must be set when operation is UPSERT: give the tag's expression",
                    ),
                    (TagOperation::Remove, Some(_)) => {
                        f.error(field, "value must not be set when operation is REMOVE")
                    }
                    _ => {}
                }
            }
        }
    }
    for (i, a) in spec.access_logging.iter().enumerate() {
        let at = format!("spec.accessLogging[{i}]");
        providers(f, &at, &a.providers);
        if let Some(filter) = &a.filter
            && filter.expression.trim().is_empty()
        {
            f.error(
                format!("{at}.filter.expression"),
                "Required value: a CEL expression such as `response.code >= 400`",
            );
        }
    }
}
