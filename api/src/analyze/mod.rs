//! `meshctl analyze`: analyzers over a snapshot of the configuration and the cluster objects
//! beside it (Services, Deployments, Pods, Namespaces, ...), reporting what Istio's
//! `istioctl analyze` reports, with its codes and names (`IST0118
//! PortNameIsNotUnderNamingConvention`), its levels, the resource as `Kind namespace/name`, and
//! what to do about it.
//!
//! The snapshot takes every document as written, valid or not and of any kind, since Istio's
//! analyzers look at Kubernetes objects the mesh does not otherwise read; what the schema
//! refuses is reported as IST0106 by `schema.ValidationAnalyzer`.

mod checks;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

/// A message's level, as Istio's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Level {
    /// Wrong: traffic or policy will not be what the configuration says.
    Error,
    /// Probably wrong.
    Warning,
    /// Worth knowing.
    Info,
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Level::Error => "Error",
            Level::Warning => "Warning",
            Level::Info => "Info",
        })
    }
}

/// One of Istio's message types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Code {
    /// `IST0118`.
    pub code: &'static str,
    /// `PortNameIsNotUnderNamingConvention`.
    pub name: &'static str,
    /// Its level.
    pub level: Level,
}

/// What an analyzer found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Message {
    /// `IST0118`.
    pub code: &'static str,
    /// `PortNameIsNotUnderNamingConvention`.
    pub name: &'static str,
    /// Its level.
    pub level: Level,
    /// The resource: `Service my-namespace/my-service` (no namespace when it has none).
    pub origin: String,
    /// What is wrong.
    pub text: String,
    /// What to do about it.
    pub hint: String,
    /// The file it came from, when it came from one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The line its document starts on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
}

impl std::fmt::Display for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} [{}] ({}) {}",
            self.level, self.code, self.origin, self.text
        )?;
        if let (Some(file), Some(line)) = (&self.file, self.line) {
            write!(f, " ({file}:{line})")?;
        }
        if !self.hint.is_empty() {
            write!(f, "\n  → {}", self.hint)?;
        }
        Ok(())
    }
}

/// One object of the snapshot, as written.
#[derive(Clone, Debug)]
pub struct Object {
    /// Its kind.
    pub kind: String,
    /// Its namespace as written (none when it says none).
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
    /// The whole document.
    pub value: Value,
    /// The file, when from one.
    pub file: Option<String>,
    /// The line its document starts on.
    pub line: usize,
}

impl Object {
    /// `Kind namespace/name`, or `Kind name` without a namespace (Istio's origin).
    pub fn origin(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }

    /// Its namespace, `default` when it says none (where Kubernetes would put it).
    pub fn ns(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }

    /// `spec`.
    pub fn spec(&self) -> &Value {
        &self.value["spec"]
    }

    /// Its labels.
    pub fn labels(&self) -> BTreeMap<String, String> {
        string_map(&self.value["metadata"]["labels"])
    }

    /// A message about this object.
    pub fn message(&self, code: Code, text: String, hint: impl Into<String>) -> Message {
        Message {
            code: code.code,
            name: code.name,
            level: code.level,
            origin: self.origin(),
            text,
            hint: hint.into(),
            file: self.file.clone(),
            line: self.file.as_ref().map(|_| self.line),
        }
    }
}

/// A JSON object of strings as a map (labels, selectors).
pub fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `selector` selects `labels`: every key of it with the same value (an empty selector
/// selects everything).
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A host as the mesh resolves it in namespace `ns`: a short name is a Service of that
/// namespace (`reviews` is `reviews.NS.svc.cluster.local`); a name with a dot (or a wildcard)
/// stands as written. Lowercase, as DNS names compare.
pub fn fqdn(host: &str, ns: &str) -> String {
    if host.contains('.') || host.contains('*') {
        host.to_ascii_lowercase()
    } else {
        format!("{}.{ns}.svc.cluster.local", host.to_ascii_lowercase())
    }
}

/// What is analyzed: every object, and the files' findings the schema check reports.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Every object, in input order.
    pub objects: Vec<Object>,
    /// Istio's root namespace (`istio-system`).
    pub root_namespace: String,
    /// The mesh configuration (`MeshConfig` as YAML; `null` for Istio's defaults): from the
    /// snapshot's ConfigMap `istio` in the root namespace, or given.
    pub mesh_config: Value,
}

impl Snapshot {
    /// An empty snapshot with Istio's root namespace.
    pub fn new() -> Self {
        Snapshot {
            objects: Vec::new(),
            root_namespace: "istio-system".into(),
            mesh_config: Value::Null,
        }
    }

    /// Takes the mesh configuration from a file of `MeshConfig` YAML (what the ConfigMap
    /// `istio`'s `mesh` key holds).
    pub fn set_mesh_config(&mut self, path: &Path) -> Result<(), String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        self.mesh_config = serde_saphyr::from_str(&text)
            .map_err(|e| format!("{}: not YAML: {e}", path.display()))?;
        Ok(())
    }

    /// The mesh configuration: as given, else the `mesh` key of ConfigMap `istio` in the root
    /// namespace, else `null`.
    pub fn mesh(&self) -> Value {
        if !self.mesh_config.is_null() {
            return self.mesh_config.clone();
        }
        self.of_kind("ConfigMap")
            .find(|c| c.name == "istio" && c.ns() == self.root_namespace)
            .and_then(|c| c.value["data"]["mesh"].as_str())
            .and_then(|m| serde_saphyr::from_str(m).ok())
            .unwrap_or(Value::Null)
    }

    /// Adds the documents of `text` (from `file`); a document that is not YAML is an error
    /// naming the file and line.
    pub fn add_text(&mut self, text: &str, file: Option<&str>) -> Result<(), String> {
        for (line, chunk) in crate::load::split_documents(text) {
            let value: Value = serde_saphyr::from_str(chunk)
                .map_err(|e| format!("{}:{line}: not YAML: {e}", file.unwrap_or("<input>")))?;
            if value.is_null() {
                continue;
            }
            let items = match value["items"].as_array() {
                Some(items) if value["kind"].as_str().is_some_and(|k| k.ends_with("List")) => {
                    items.clone()
                }
                _ => vec![value],
            };
            for v in items {
                self.add_value(v, file, line);
            }
        }
        Ok(())
    }

    /// Adds one object (as the API serves it, or as a document of `file` starting on
    /// `line`); a value without a `kind` is not an object and is left out.
    pub fn add_value(&mut self, value: Value, file: Option<&str>, line: usize) {
        let Some(kind) = value["kind"].as_str().map(str::to_string) else {
            return;
        };
        self.objects.push(Object {
            kind,
            namespace: value["metadata"]["namespace"].as_str().map(str::to_string),
            name: value["metadata"]["name"].as_str().unwrap_or("").to_string(),
            value,
            file: file.map(str::to_string),
            line,
        });
    }

    /// Adds a file, or every `.yaml`, `.yml` and `.json` file under a folder (sorted).
    pub fn add_path(&mut self, path: &Path) -> Result<(), String> {
        if path.is_dir() {
            let mut files = Vec::new();
            collect(path, &mut files).map_err(|e| format!("{}: {e}", path.display()))?;
            files.sort();
            for f in files {
                self.add_path(&f)?;
            }
            return Ok(());
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        self.add_text(&text, Some(&path.display().to_string()))
    }

    /// What runs: every Pod, and the pod template of every Deployment, StatefulSet, DaemonSet,
    /// ReplicaSet and Job (files often hold those, not pods).
    pub fn workloads(&self) -> Vec<Workload<'_>> {
        self.objects
            .iter()
            .filter_map(|o| {
                let labels = match o.kind.as_str() {
                    "Pod" => o.labels(),
                    "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" => {
                        string_map(&o.spec()["template"]["metadata"]["labels"])
                    }
                    "Job" => string_map(&o.spec()["template"]["metadata"]["labels"]),
                    _ => return None,
                };
                Some(Workload { object: o, labels })
            })
            .collect()
    }

    /// Adds what an install of the mesh puts beside the user's configuration, for analyzing
    /// files on their own: the ingress gateway (pod and Service in `istio-system`, labelled
    /// `istio: ingressgateway`, ports 80, 443, 8080 and 15021), as `meshctl install` and
    /// `meshctl up` run it.
    pub fn add_installed_defaults(&mut self) {
        const INSTALLED: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: istio-ingressgateway
  namespace: istio-system
  labels: {app: istio-ingressgateway, istio: ingressgateway}
spec:
  containers: [{name: istio-proxy}]
---
apiVersion: v1
kind: Service
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  selector: {app: istio-ingressgateway, istio: ingressgateway}
  ports:
  - {name: http2, port: 80, protocol: TCP}
  - {name: https, port: 443, protocol: TCP}
  - {name: http-alt, port: 8080, protocol: TCP}
  - {name: status-port, port: 15021, protocol: TCP}
";
        let _ = self.add_text(INSTALLED, None);
    }

    /// The objects of `kind`.
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Object> + 'a {
        self.objects.iter().filter(move |o| o.kind == kind)
    }
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() {
            collect(&p, out)?;
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        {
            out.push(p);
        }
    }
    Ok(())
}

/// A Pod, or a workload resource's pod template.
pub struct Workload<'a> {
    /// The Pod or the resource holding the template.
    pub object: &'a Object,
    /// The pods' labels.
    pub labels: BTreeMap<String, String>,
}

/// An analyzer, by Istio's name.
pub struct Analyzer {
    /// `service.PortNameAnalyzer`.
    pub name: &'static str,
    /// What it looks at.
    pub about: &'static str,
    run: fn(&Snapshot, &mut Vec<Message>),
}

impl Analyzer {
    /// Its messages over `snapshot`, in the order it finds them.
    pub fn check(&self, snapshot: &Snapshot) -> Vec<Message> {
        let mut out = Vec::new();
        (self.run)(snapshot, &mut out);
        out
    }
}

/// Every analyzer, by Istio's names.
pub fn analyzers() -> &'static [Analyzer] {
    checks::ALL
}

/// The messages of every analyzer (or only the one named `only`) over `snapshot`, sorted by
/// level, then resource, then code.
pub fn analyze(snapshot: &Snapshot, only: Option<&str>) -> Result<Vec<Message>, String> {
    let chosen: Vec<&Analyzer> = match only {
        Some(name) => {
            let a = analyzers().iter().find(|a| a.name == name).ok_or_else(|| {
                format!(
                    "no analyzer {name:?}; the analyzers: {}",
                    analyzers()
                        .iter()
                        .map(|a| a.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
            vec![a]
        }
        None => analyzers().iter().collect(),
    };
    let mut out = Vec::new();
    for a in chosen {
        (a.run)(snapshot, &mut out);
    }
    out.sort_by(|a, b| {
        (a.level, &a.origin, a.code, &a.text).cmp(&(b.level, &b.origin, b.code, &b.text))
    });
    Ok(out)
}

/// A proxy refused the configuration pilot sent it (a NACK): it keeps serving the last one it
/// took.
pub const MESH0001: Code = Code {
    code: "MESH0001",
    name: "ProxyRejectedConfiguration",
    level: Level::Error,
};
/// Pilot could not use (part of) a resource for some proxy: it is left out of what they get.
pub const MESH0002: Code = Code {
    code: "MESH0002",
    name: "ConfigurationNotApplied",
    level: Level::Error,
};
/// A field the mesh accepts but does not enforce yet, for some proxy.
pub const MESH0003: Code = Code {
    code: "MESH0003",
    name: "AcceptedNotEnforcedYet",
    level: Level::Warning,
};

/// The messages of what the proxies report to pilot (its `/debug/syncz`): NACKs, resources
/// pilot could not apply, and fields accepted but not enforced yet, each once, on the resource
/// it names (or the proxy's pod).
pub fn proxy_messages(syncz: &Value) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut push = |code: Code, line: &str, pod: &str, hint: &str| {
        // "Kind namespace/name: field: what" names its resource.
        let (origin, text) = match line.split_once(": ") {
            Some((head, rest))
                if head.contains(' ') && head.contains('/') && !head.contains(": ") =>
            {
                (head.to_string(), rest.to_string())
            }
            _ => (pod.to_string(), line.to_string()),
        };
        if seen.insert((code.code, origin.clone(), text.clone())) {
            out.push(Message {
                code: code.code,
                name: code.name,
                level: code.level,
                origin,
                text,
                hint: hint.to_string(),
                file: None,
                line: None,
            });
        }
    };
    for p in syncz["proxies"].as_array().into_iter().flatten() {
        // sidecar~10.244.0.3~order-v1-0.default
        let id = p["node"]["id"].as_str().unwrap_or("");
        let pod = id
            .rsplit('~')
            .next()
            .and_then(|n| n.rsplit_once('.'))
            .map(|(name, ns)| format!("Pod {ns}/{name}"))
            .unwrap_or_else(|| format!("Proxy {id}"));
        if let Some(nack) = p["nack"].as_str() {
            push(
                MESH0001,
                &format!("its proxy refused the last configuration: {nack}"),
                &pod,
                "fix what the message names; the proxy serves with the last configuration it took (meshctl proxy-status)",
            );
        }
        for r in p["rejections"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            push(
                MESH0002,
                r,
                &pod,
                "fix the field as the message says; until then pilot leaves it out",
            );
        }
        for key in ["not_enforced_workload", "not_enforced_services"] {
            for r in p[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                push(
                    MESH0003,
                    r,
                    &pod,
                    "the mesh keeps the field but does not act on it yet (docs/api-coverage.md)",
                );
            }
        }
    }
    out
}
