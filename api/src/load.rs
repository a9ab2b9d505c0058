//! Reading resources from YAML or JSON: one file, a folder (recursively) or any text, each
//! holding one or more documents. Every document is parsed strictly (unknown fields are errors,
//! as in Istio's validation) and validated; what fails is reported with its file, line, resource
//! and field, and never stops the other documents from loading. Kinds the mesh does not handle
//! are reported as warnings and skipped.

use std::path::{Path, PathBuf};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};

use crate::diagnostic::{Diagnostic, Severity};
use crate::kinds::{Kind, split_api_version};
use crate::resource::Resource;
use crate::validate;
use crate::yaml_index::LineIndex;
use crate::{gateway_api as gw, networking as net, policy, security as sec, telemetry};

/// Where a document came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The file (`-` for standard input); absent for in-memory text.
    pub file: Option<String>,
    /// 1-based line where the document starts.
    pub line: usize,
}

/// A resource that parsed and validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// Where it came from.
    pub origin: Origin,
    /// The `apiVersion` as written (Istio kinds accept every served version).
    pub api_version: String,
    /// The resource.
    pub resource: Resource,
}

/// What a load produced: the accepted resources and every finding.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Resources accepted, in input order.
    pub documents: Vec<Document>,
    /// Errors (for refused documents) and warnings, in input order.
    pub diagnostics: Vec<Diagnostic>,
}

impl LoadReport {
    /// The errors.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }

    /// The warnings.
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
    }

    /// True when nothing was refused.
    pub fn is_valid(&self) -> bool {
        self.errors().next().is_none()
    }

    fn merge(&mut self, other: LoadReport) {
        self.documents.extend(other.documents);
        self.diagnostics.extend(other.diagnostics);
    }
}

/// Input that could not be read at all (as opposed to input that was read and found invalid).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file or folder could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file is not UTF-8 text.
    #[error("cannot read {path}: not UTF-8 text")]
    NotText {
        /// The path.
        path: PathBuf,
    },
}

/// File name endings read from a folder.
const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// Loads a file, or every `.yaml`, `.yml` and `.json` file under a folder (recursively, in
/// name order).
pub fn load_path(path: &Path) -> Result<LoadReport, LoadError> {
    let meta = std::fs::metadata(path).map_err(|source| read_error(path, source))?;
    if !meta.is_dir() {
        return load_file(path);
    }
    let mut files = Vec::new();
    collect_files(path, &mut files)?;
    files.sort();
    let mut report = LoadReport::default();
    for file in files {
        report.merge(load_file(&file)?);
    }
    Ok(report)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|source| read_error(dir, source))?;
    for entry in entries {
        let entry = entry.map_err(|source| read_error(dir, source))?;
        let path = entry.path();
        let file_type = entry
            .file_type()
            .map_err(|source| read_error(&path, source))?;
        if file_type.is_dir() {
            collect_files(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e))
        {
            out.push(path);
        }
    }
    Ok(())
}

fn load_file(path: &Path) -> Result<LoadReport, LoadError> {
    let bytes = std::fs::read(path).map_err(|source| read_error(path, source))?;
    let text = String::from_utf8(bytes).map_err(|_| LoadError::NotText { path: path.into() })?;
    Ok(load_str(&text, Some(&path.display().to_string())))
}

fn read_error(path: &Path, source: std::io::Error) -> LoadError {
    LoadError::Read {
        path: path.into(),
        source,
    }
}

/// Loads every document in `text`; `file` names it in findings.
pub fn load_str(text: &str, file: Option<&str>) -> LoadReport {
    let mut report = LoadReport::default();
    for (start, chunk) in split_documents(text) {
        let origin = Origin {
            file: file.map(str::to_string),
            line: start,
        };
        load_document(chunk, origin, &mut report);
    }
    report
}

/// Splits a YAML stream at `---` lines, keeping each document's 1-based first line.
pub(crate) fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let (mut start_byte, mut start_line, mut offset) = (0, 1, 0);
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let is_marker =
            line.starts_with("---") && line[3..].chars().next().is_none_or(char::is_whitespace);
        if is_marker && offset > start_byte {
            docs.push((start_line, &text[start_byte..offset]));
            (start_byte, start_line) = (offset, i + 1);
        } else if is_marker {
            start_line = i + 1;
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start_byte..]));
    docs
}

/// Context for the findings of one document.
struct Ctx<'a> {
    origin: &'a Origin,
    index: LineIndex,
    kind: Option<String>,
    resource: Option<String>,
}

impl Ctx<'_> {
    fn place(&self, mut d: Diagnostic, line_in_doc: Option<usize>) -> Diagnostic {
        d.file.clone_from(&self.origin.file);
        let line = line_in_doc.or_else(|| d.field.as_deref().and_then(|f| self.index.line_of(f)));
        d.line = Some(self.origin.line + line.unwrap_or(1) - 1);
        d.kind.clone_from(&self.kind);
        d.resource.clone_from(&self.resource);
        d
    }
}

/// The parts of a document read before its kind is known.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Head {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<HeadMeta>,
    #[serde(default)]
    items: Option<Vec<serde_json::Value>>,
}

#[derive(Deserialize, Default)]
struct HeadMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

fn load_document(text: &str, origin: Origin, report: &mut LoadReport) {
    let mut ctx = Ctx {
        origin: &origin,
        index: LineIndex::default(),
        kind: None,
        resource: None,
    };
    let value: serde_json::Value = match serde_saphyr::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let line = e.location().map(|l| l.line() as usize);
            let msg = format!("YAML syntax: {}", saphyr_message(&e));
            report
                .diagnostics
                .push(ctx.place(Diagnostic::error(msg), line));
            return;
        }
    };
    if value.is_null() {
        return; // an empty document, or only comments
    }
    ctx.index = LineIndex::build(text);
    let head: Head = match &value {
        serde_json::Value::Object(_) => serde_json::from_value(value.clone()).unwrap_or_default(),
        _ => {
            let msg = "a document must be a mapping with apiVersion, kind and metadata";
            report
                .diagnostics
                .push(ctx.place(Diagnostic::error(msg), None));
            return;
        }
    };
    let (Some(api_version), Some(kind_name)) = (head.api_version, head.kind) else {
        let msg = "apiVersion and kind are required";
        report
            .diagnostics
            .push(ctx.place(Diagnostic::error(msg), None));
        return;
    };
    ctx.kind = Some(kind_name.clone());
    if let Some(meta) = &head.metadata {
        let name = meta.name.as_deref().unwrap_or("");
        ctx.resource = Some(match &meta.namespace {
            Some(ns) => format!("{ns}/{name}"),
            None => format!("default/{name}"),
        });
    }
    if kind_name == "List" || kind_name.ends_with("List") && head.items.is_some() {
        load_list(head.items.unwrap_or_default(), &origin, report);
        return;
    }
    let (group, version) = split_api_version(&api_version);
    let Some(kind) = Kind::lookup(&kind_name, group) else {
        let msg = format!(
            "kind {kind_name} ({api_version}) is not handled by the mesh; skipped. See docs/api-coverage.md for the kinds read"
        );
        report
            .diagnostics
            .push(ctx.place(Diagnostic::warning(msg), None));
        return;
    };
    if !kind.is_namespaced() {
        ctx.resource = head.metadata.as_ref().and_then(|m| m.name.clone());
    }
    if !kind.versions().contains(&version) {
        let served: Vec<String> = kind
            .versions()
            .iter()
            .map(|v| format!("{group}/{v}"))
            .collect();
        let msg = format!(
            "apiVersion {api_version} is not served for {kind}; use one of {}",
            served.join(", ")
        );
        let d = Diagnostic::error(msg).at_field("apiVersion");
        report.diagnostics.push(ctx.place(d, None));
        return;
    }
    let mut problems = metadata_problems(&value);
    let resource = match parse_typed(kind, text) {
        Ok(resource) => resource,
        Err(d) => {
            problems.push(*d);
            for (d, line) in problems {
                report.diagnostics.push(ctx.place(d, line));
            }
            return;
        }
    };
    problems.extend(validate::validate(&resource).into_iter().map(|d| (d, None)));
    problems.extend(
        validate::not_enforced(&resource)
            .into_iter()
            .map(|d| (d, None)),
    );
    let (errors, warnings): (Vec<_>, Vec<_>) = problems
        .into_iter()
        .partition(|(d, _)| d.severity == Severity::Error);
    let refused = !errors.is_empty();
    for (d, line) in errors.into_iter().chain(warnings) {
        report.diagnostics.push(ctx.place(d, line));
    }
    if !refused {
        report.documents.push(Document {
            origin: origin.clone(),
            api_version,
            resource,
        });
    }
}

/// Loads the items of a `kind: List` (as `kubectl get -o yaml` prints); the items have no lines
/// of their own, so findings point at the list.
fn load_list(items: Vec<serde_json::Value>, origin: &Origin, report: &mut LoadReport) {
    for item in items {
        let text = item.to_string();
        let mut sub = LoadReport::default();
        load_document(&text, origin.clone(), &mut sub);
        report.merge(sub);
    }
}

/// Field names Kubernetes defines for `metadata`. `ObjectMeta` ignores others, so they are
/// checked here to catch typos such as `namepsace`.
const METADATA_FIELDS: [&str; 16] = [
    "annotations",
    "creationTimestamp",
    "deletionGracePeriodSeconds",
    "deletionTimestamp",
    "finalizers",
    "generateName",
    "generation",
    "labels",
    "managedFields",
    "name",
    "namespace",
    "ownerReferences",
    "resourceVersion",
    "selfLink",
    "uid",
    "clusterName",
];

fn metadata_problems(value: &serde_json::Value) -> Vec<(Diagnostic, Option<usize>)> {
    let mut out = Vec::new();
    match value.get("metadata") {
        Some(serde_json::Value::Object(meta)) => {
            for key in meta
                .keys()
                .filter(|k| !METADATA_FIELDS.contains(&k.as_str()))
            {
                let msg = format!(
                    "unknown field \"{key}\"; metadata has name, namespace, labels, annotations, ..."
                );
                out.push((
                    Diagnostic::error(msg).at_field(format!("metadata.{key}")),
                    None,
                ));
            }
        }
        _ => {
            let d = Diagnostic::error("Required value: every resource needs metadata.name")
                .at_field("metadata");
            out.push((d, None));
        }
    }
    out
}

/// An Istio resource as written: strict at the top level too.
#[derive(Deserialize)]
#[serde(
    rename_all = "camelCase",
    deny_unknown_fields,
    bound = "S: DeserializeOwned"
)]
struct Envelope<S> {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<S>,
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<IgnoredAny>,
}

/// A finding and its line within the document, when the parser knew it.
type Found = Box<(Diagnostic, Option<usize>)>;

fn parse_typed(kind: Kind, text: &str) -> Result<Resource, Found> {
    macro_rules! istio {
        ($variant:ident, $root:ty, $spec:ty) => {{
            let env: Envelope<$spec> = deserialize(text)?;
            let spec = match env.spec {
                Some(spec) => spec,
                None if kind.requires_spec() => {
                    let d = Diagnostic::error(format!("Required value: a {kind} needs a spec"))
                        .at_field("spec");
                    return Err(Box::new((d, None)));
                }
                None => <$spec>::default(),
            };
            let mut obj = <$root>::new("", spec);
            obj.metadata = env.metadata;
            Resource::$variant(Box::new(obj))
        }};
    }
    Ok(match kind {
        Kind::VirtualService => {
            istio!(VirtualService, net::VirtualService, net::VirtualServiceSpec)
        }
        Kind::DestinationRule => {
            istio!(
                DestinationRule,
                net::DestinationRule,
                net::DestinationRuleSpec
            )
        }
        Kind::Gateway => istio!(Gateway, net::Gateway, net::GatewaySpec),
        Kind::ServiceEntry => istio!(ServiceEntry, net::ServiceEntry, net::ServiceEntrySpec),
        Kind::WorkloadEntry => istio!(WorkloadEntry, net::WorkloadEntry, net::WorkloadEntrySpec),
        Kind::WorkloadGroup => istio!(WorkloadGroup, net::WorkloadGroup, net::WorkloadGroupSpec),
        Kind::Sidecar => istio!(Sidecar, net::Sidecar, net::SidecarSpec),
        Kind::PeerAuthentication => {
            istio!(
                PeerAuthentication,
                sec::PeerAuthentication,
                sec::PeerAuthenticationSpec
            )
        }
        Kind::AuthorizationPolicy => {
            istio!(
                AuthorizationPolicy,
                sec::AuthorizationPolicy,
                sec::AuthorizationPolicySpec
            )
        }
        Kind::RequestAuthentication => istio!(
            RequestAuthentication,
            sec::RequestAuthentication,
            sec::RequestAuthenticationSpec
        ),
        Kind::Telemetry => istio!(Telemetry, telemetry::Telemetry, telemetry::TelemetrySpec),
        Kind::RateLimitPolicy => istio!(
            RateLimitPolicy,
            policy::RateLimitPolicy,
            policy::RateLimitPolicySpec
        ),
        Kind::GatewayClass => istio!(GatewayClass, gw::GatewayClass, gw::GatewayClassSpec),
        Kind::KubeGateway => istio!(KubeGateway, gw::Gateway, gw::GatewaySpec),
        Kind::HttpRoute => istio!(HttpRoute, gw::HTTPRoute, gw::HTTPRouteSpec),
        Kind::GrpcRoute => istio!(GrpcRoute, gw::GRPCRoute, gw::GRPCRouteSpec),
        Kind::ReferenceGrant => istio!(ReferenceGrant, gw::ReferenceGrant, gw::ReferenceGrantSpec),
        Kind::Namespace => Resource::Namespace(Box::new(deserialize(text)?)),
        Kind::Service => Resource::Service(Box::new(deserialize(text)?)),
        Kind::ServiceAccount => Resource::ServiceAccount(Box::new(deserialize(text)?)),
        Kind::Pod => Resource::Pod(Box::new(deserialize(text)?)),
        Kind::Deployment => Resource::Deployment(Box::new(deserialize(text)?)),
        Kind::EndpointSlice => Resource::EndpointSlice(Box::new(deserialize(text)?)),
        Kind::ConfigMap => Resource::ConfigMap(Box::new(deserialize(text)?)),
        Kind::Secret => Resource::Secret(Box::new(deserialize(text)?)),
    })
}

/// Parses YAML text into `T` strictly, the error naming the failing field (not the line: the
/// text may sit inside another document).
pub(crate) fn parse_value<T: DeserializeOwned>(text: &str) -> Result<T, Box<Diagnostic>> {
    deserialize(text).map_err(|found| Box::new(found.0))
}

/// Deserializes with the path of any failing field, and its line when the parser knows it.
fn deserialize<T: DeserializeOwned>(text: &str) -> Result<T, Found> {
    // The closure's own error is kept aside: when deserialization stops early the wrapper
    // reports the unread rest of the document instead, which would hide the real cause.
    let mut failed = None;
    let outcome =
        serde_saphyr::with_deserializer_from_str(
            text,
            |de| match serde_path_to_error::deserialize::<_, T>(de) {
                Ok(value) => Ok(Some(value)),
                Err(e) => {
                    failed = Some(e);
                    Ok(None)
                }
            },
        );
    if let Some(e) = failed {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let line = inner.location().map(|l| l.line() as usize);
        let field = if path == "." { String::new() } else { path };
        let d = Diagnostic::error(saphyr_message(&inner)).at_field(field);
        return Err(Box::new((d, line)));
    }
    match outcome {
        Ok(Some(value)) => Ok(value),
        Ok(None) => Err(Box::new((
            Diagnostic::error("the document could not be read"),
            None,
        ))),
        Err(e) => {
            let line = e.location().map(|l| l.line() as usize);
            Err(Box::new((Diagnostic::error(saphyr_message(&e)), line)))
        }
    }
}

/// The message of a parser error without the location and snippet it renders by default (our
/// findings carry the location themselves).
fn saphyr_message(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("").trim();
    // Drop a trailing " at line N, column M" if the renderer added one.
    match first.find(" at line ") {
        Some(i) => first[..i].to_string(),
        None => first.to_string(),
    }
}
