//! The local mesh's configuration folder (`DIR/config`, which pilot watches): `meshctl apply`
//! and `delete` validate first and write nothing when anything is invalid; each accepted
//! resource is one file, so re-applying replaces it and deleting removes it. Services get a
//! VIP as an API server would give them a cluster IP. Pods are registered here as `Pod`
//! resources with their address, so pilot sees them as it would in Kubernetes.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use mesh_api::load::{self, LoadReport};
use mesh_api::{Diagnostic, Resource, Severity};

use super::RuntimeError;
use super::net::{FIRST_VIP, NETNS_ETC, VIP_CIDR};
use super::state::{Layout, PodRecord, RuntimeState};

/// Why an apply or delete wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Input could not be read.
    #[error("{0}")]
    Read(String),
    /// Input was read and something in it is invalid: nothing was written.
    #[error("{} invalid; nothing was applied", plural(.0.len(), "resource is", "resources are"))]
    Invalid(Vec<Diagnostic>),
    /// The folder could not be written.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// What an apply did, one line per resource (`Service default/order created`).
#[derive(Debug, Default)]
pub struct Applied {
    /// What happened to each resource.
    pub lines: Vec<String>,
    /// Warnings (kinds skipped, ...).
    pub warnings: Vec<Diagnostic>,
    /// The resources accepted, as written.
    pub resources: Vec<Resource>,
}

/// Reads and validates `paths` (files, folders, `-` is not accepted here).
pub fn read(paths: &[PathBuf]) -> Result<LoadReport, ApplyError> {
    let mut report = LoadReport::default();
    for path in paths {
        let r = load::load_path(path).map_err(|e| ApplyError::Read(e.to_string()))?;
        report.documents.extend(r.documents);
        report.diagnostics.extend(r.diagnostics);
    }
    let errors: Vec<Diagnostic> = report.errors().cloned().collect();
    if !errors.is_empty() {
        return Err(ApplyError::Invalid(errors));
    }
    Ok(report)
}

/// The file a resource is kept in.
pub fn file_for(layout: &Layout, resource: &Resource) -> PathBuf {
    let kind = resource.kind().name().to_ascii_lowercase();
    let ns = resource.namespace().unwrap_or("default");
    layout
        .config()
        .join(kind)
        .join(format!("{ns}.{}.json", resource.name()))
}

/// The mesh configuration a new local mesh starts with (ConfigMap `istio-system/istio`), as
/// Istio's demo profile sets it: every sidecar writes an access log line per request to its
/// standard output (`meshctl logs POD --proxy`). `meshctl apply` of another `istio` ConfigMap
/// replaces it.
pub const DEFAULT_MESH_CONFIG: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: istio
  namespace: istio-system
data:
  mesh: |
    # As Istio's demo profile: access logs on stdout, as JSON lines.
    accessLogFile: /dev/stdout
";

/// Writes [`DEFAULT_MESH_CONFIG`] into a configuration folder that does not exist yet (the
/// first `up` in DIR): a mesh configuration the user deleted stays deleted.
pub fn write_default_mesh_config(layout: &Layout) -> Result<(), RuntimeError> {
    if layout.config().exists() {
        return Ok(());
    }
    let report = load::load_str(DEFAULT_MESH_CONFIG, None);
    let Some(doc) = report.documents.into_iter().next() else {
        return Err(RuntimeError::io(
            "the default mesh configuration",
            std::io::Error::other(format!("{:?}", report.diagnostics)),
        ));
    };
    let path = file_for(layout, &doc.resource);
    let text = serde_json::to_string_pretty(&doc.resource).unwrap_or_default() + "\n";
    write_atomically(&path, &text)
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> RuntimeError {
    move |e| RuntimeError::io(what, e)
}

/// Applies `paths`: validates everything, assigns VIPs, then writes each resource.
pub fn apply(layout: &Layout, paths: &[PathBuf]) -> Result<Applied, ApplyError> {
    let report = read(paths)?;
    let mut used = used_vips(layout);
    let mut applied = Applied {
        warnings: report
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
            .cloned()
            .collect(),
        ..Applied::default()
    };
    // First pass: complete every resource and check what only the runtime can check, so a
    // refusal still leaves the folder untouched.
    let mut ready = Vec::new();
    let mut refused = Vec::new();
    for doc in report.documents {
        let mut resource = doc.resource;
        if resource.kind().is_namespaced() && resource.namespace().is_none() {
            resource.metadata_mut().namespace = Some("default".into());
        }
        let path = file_for(layout, &resource);
        let display = resource.display_name();
        if let Resource::Service(svc) = &mut resource {
            let spec = svc.spec.get_or_insert_with(Default::default);
            match spec.cluster_ip.as_deref() {
                None | Some("") => {
                    let existing = existing_vip(&path);
                    let vip = match existing {
                        Some(v) => v,
                        None => {
                            let v = next_vip(&used).ok_or_else(|| {
                                ApplyError::Read(format!("no service address left in {VIP_CIDR}"))
                            })?;
                            used.insert(v);
                            v
                        }
                    };
                    spec.cluster_ip = Some(vip.to_string());
                    spec.cluster_ips = Some(vec![vip.to_string()]);
                }
                Some("None") => {}
                Some(ip) => {
                    let inside = ip.parse::<Ipv4Addr>().is_ok_and(in_vip_range);
                    if !inside {
                        refused.push(Diagnostic {
                            severity: Severity::Error,
                            file: doc.origin.file.clone(),
                            line: Some(doc.origin.line),
                            kind: Some("Service".into()),
                            resource: Some(display.clone()),
                            field: Some("spec.clusterIP".into()),
                            message: format!(
                                "{ip} is outside the local mesh's service range {VIP_CIDR}; leave it empty and one is assigned"
                            ),
                        });
                    }
                }
            }
        }
        ready.push((path, resource));
    }
    if !refused.is_empty() {
        return Err(ApplyError::Invalid(refused));
    }
    for (path, resource) in ready {
        let text = serde_json::to_string_pretty(&resource).unwrap_or_default() + "\n";
        let before = std::fs::read_to_string(&path).ok();
        let verb = match before.as_deref() {
            None => "created",
            Some(t) if t == text => "unchanged",
            Some(_) => "configured",
        };
        if verb != "unchanged" {
            write_atomically(&path, &text)?;
        }
        applied.lines.push(format!(
            "{} {} {verb}",
            resource.kind().name(),
            resource.display_name()
        ));
        applied.resources.push(resource);
    }
    Ok(applied)
}

/// Deletes what `paths` describe (validated as for apply).
pub fn delete(layout: &Layout, paths: &[PathBuf]) -> Result<Vec<String>, ApplyError> {
    let report = read(paths)?;
    let mut lines = Vec::new();
    for doc in report.documents {
        let mut resource = doc.resource;
        if resource.kind().is_namespaced() && resource.namespace().is_none() {
            resource.metadata_mut().namespace = Some("default".into());
        }
        let path = file_for(layout, &resource);
        let what = format!("{} {}", resource.kind().name(), resource.display_name());
        match std::fs::remove_file(&path) {
            Ok(()) => lines.push(format!("{what} deleted")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                lines.push(format!("{what} not found (nothing to delete)"))
            }
            Err(e) => {
                return Err(RuntimeError::io(format!("removing {}", path.display()), e).into());
            }
        }
    }
    Ok(lines)
}

/// Writes a file so that a reader (pilot's watch) never sees half of it.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), RuntimeError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
    }
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("writing {}", path.display())))
}

fn in_vip_range(a: Ipv4Addr) -> bool {
    let [x, y, _, _] = a.octets();
    [x, y] == [10, 96]
}

fn existing_vip(path: &Path) -> Option<Ipv4Addr> {
    let text = std::fs::read_to_string(path).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value["spec"]["clusterIP"].as_str()?.parse().ok()
}

/// VIPs given to the Services in the folder.
fn used_vips(layout: &Layout) -> BTreeSet<Ipv4Addr> {
    services(layout).into_iter().map(|s| s.vip).collect()
}

fn next_vip(used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let first = u32::from(FIRST_VIP);
    (first..first + 65_000)
        .map(Ipv4Addr::from)
        .take_while(|a| in_vip_range(*a))
        .find(|a| !used.contains(a))
}

/// A Service and its VIP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAddress {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Its VIP.
    pub vip: Ipv4Addr,
}

/// Every resource applied so far (what fails to read now is left out).
pub fn read_all(layout: &Layout) -> Vec<Resource> {
    mesh_api::load::load_path(&layout.config())
        .map(|r| r.documents.into_iter().map(|d| d.resource).collect())
        .unwrap_or_default()
}

/// The Services applied, with their VIPs.
pub fn services(layout: &Layout) -> Vec<ServiceAddress> {
    let dir = layout.config().join("service");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let Some(vip) = v["spec"]["clusterIP"].as_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        out.push(ServiceAddress {
            name: v["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            namespace: v["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string(),
            vip,
        });
    }
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

/// The `hosts` file of a pod: every Service by `name.ns.svc.cluster.local`, `name.ns.svc`,
/// `name.ns`, and by `name` alone for Services in the pod's own namespace (Kubernetes' search
/// path, written out).
pub fn hosts_file(pod: &PodRecord, services: &[ServiceAddress]) -> String {
    let mut text = format!(
        "# written by meshctl for pod {}/{}\n127.0.0.1\tlocalhost\n{}\t{}\n",
        pod.namespace, pod.name, pod.address, pod.name
    );
    for s in services {
        let (n, ns) = (&s.name, &s.namespace);
        text.push_str(&format!(
            "{}\t{n}.{ns}.svc.cluster.local {n}.{ns}.svc {n}.{ns}",
            s.vip
        ));
        if *ns == pod.namespace {
            text.push_str(&format!(" {n}"));
        }
        text.push('\n');
    }
    text
}

/// Rewrites every pod's `hosts` file (in place: `ip netns exec` bind-mounts it over
/// `/etc/hosts`, so running pods see the change).
pub fn write_hosts(layout: &Layout, state: &RuntimeState) -> Result<(), RuntimeError> {
    let services = services(layout);
    for pod in state.pods.values() {
        let dir = Path::new(NETNS_ETC).join(&pod.netns);
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let hosts = dir.join("hosts");
        rewrite_in_place(&hosts, &hosts_file(pod, &services))
            .map_err(io(format!("writing {}", hosts.display())))?;
        let resolv = dir.join("resolv.conf");
        if !resolv.exists() {
            let text = format!(
                "# written by meshctl: names resolve from /etc/hosts; there is no DNS server\nsearch {}.svc.cluster.local svc.cluster.local cluster.local\n",
                pod.namespace
            );
            std::fs::write(&resolv, text).map_err(io(format!("writing {}", resolv.display())))?;
        }
    }
    Ok(())
}

/// Replaces a bind-mounted file's content without ever leaving it empty: apps resolve names
/// from it while it changes, and a truncated file would fail their lookups. Unchanged content
/// is not written at all. (Renaming a new file into place would not reach the bind mount,
/// which holds the old inode.)
fn rewrite_in_place(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::{Seek, Write};
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    f.seek(std::io::SeekFrom::Start(0))?;
    f.write_all(text.as_bytes())?;
    f.set_len(text.len() as u64)
}

/// Registers a pod as a `Pod` resource pilot reads (mesh member when it has a sidecar).
pub fn register_pod(layout: &Layout, pod: &PodRecord) -> Result<(), RuntimeError> {
    let mut labels = pod.labels.clone();
    if pod.sidecar {
        labels.insert("security.istio.io/tlsMode".into(), "istio".into());
    }
    let ports: Vec<serde_json::Value> = pod
        .ports
        .iter()
        .map(|p| serde_json::json!({"containerPort": p, "protocol": "TCP"}))
        .collect();
    let resource = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": labels},
        "spec": {
            "serviceAccountName": pod.service_account,
            "containers": [{"name": "app", "ports": ports}],
        },
        "status": {"phase": "Running", "podIP": pod.address, "podIPs": [{"ip": pod.address}]},
    });
    let text = serde_json::to_string_pretty(&resource).unwrap_or_default() + "\n";
    write_atomically(
        &layout.registrations().join(format!("{}.json", pod.name)),
        &text,
    )
}

/// Removes a pod's registration.
pub fn unregister_pod(layout: &Layout, name: &str) -> Result<(), RuntimeError> {
    let path = layout.registrations().join(format!("{name}.json"));
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(RuntimeError::io(format!("removing {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_up_writes_the_demo_mesh_configuration_and_never_again() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout {
            dir: dir.path().into(),
        };
        write_default_mesh_config(&layout).unwrap();
        let written = read_all(&layout);
        assert_eq!(written.len(), 1, "{written:?}");
        assert_eq!(written[0].display_name(), "istio-system/istio");
        let path = layout.config().join("configmap/istio-system.istio.json");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("accessLogFile: /dev/stdout"), "{text}");
        // Deleted by the user: the next `up` leaves it deleted.
        std::fs::remove_file(&path).unwrap();
        write_default_mesh_config(&layout).unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn short_names_only_in_the_pods_namespace() {
        let pod = PodRecord {
            name: "order-0".into(),
            namespace: "default".into(),
            address: "10.244.0.2".into(),
            ..PodRecord::default()
        };
        let services = vec![
            ServiceAddress {
                name: "shipping".into(),
                namespace: "default".into(),
                vip: Ipv4Addr::new(10, 96, 0, 10),
            },
            ServiceAddress {
                name: "ledger".into(),
                namespace: "finance".into(),
                vip: Ipv4Addr::new(10, 96, 0, 11),
            },
        ];
        let text = hosts_file(&pod, &services);
        assert!(text.contains(
            "10.96.0.10\tshipping.default.svc.cluster.local shipping.default.svc shipping.default shipping\n"
        ));
        assert!(text.contains(
            "10.96.0.11\tledger.finance.svc.cluster.local ledger.finance.svc ledger.finance\n"
        ));
    }

    #[test]
    fn hosts_rewrites_keep_the_inode_and_never_grow_stale_tails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        rewrite_in_place(&path, "a long first version\n").unwrap();
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
        rewrite_in_place(&path, "short\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "short\n");
        let after = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
        assert_eq!(ino, after, "bind mounts keep seeing the file");
    }

    #[test]
    fn vips_are_handed_out_in_order_skipping_used_ones() {
        let used: BTreeSet<_> = [Ipv4Addr::new(10, 96, 0, 10)].into();
        assert_eq!(next_vip(&used), Some(Ipv4Addr::new(10, 96, 0, 11)));
    }
}
