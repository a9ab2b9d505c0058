//! What the runtime created, recorded in `DIR/runtime.json` before each thing is created, so
//! `meshctl down` can remove all of it even after a crash. Every command holds `DIR/.lock`
//! while it reads and changes the record.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::RuntimeError;
use super::process::Recorded;

/// The record of one mesh.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeState {
    /// Prefix of every namespace this mesh created (`mesh-1a2b`).
    pub prefix: String,
    /// The control plane (pilot and the CA), when started.
    pub control_plane: Option<Recorded>,
    /// The pods, by name.
    pub pods: BTreeMap<String, PodRecord>,
    /// The next pod number (addresses and hub link names derive from it).
    pub next_index: u32,
}

/// One pod.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    /// Pod name.
    pub name: String,
    /// Kubernetes-style namespace.
    pub namespace: String,
    /// Service account (the identity).
    pub service_account: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Ports the app serves.
    pub ports: Vec<u16>,
    /// Whether a sidecar runs beside the app.
    pub sidecar: bool,
    /// An ingress gateway: its proxy runs in gateway mode, with no capture and no app.
    #[serde(default)]
    pub gateway: bool,
    /// Its address.
    pub address: String,
    /// Its network namespace.
    pub netns: String,
    /// Its veth's name in the hub.
    pub hub_link: String,
    /// The app's command line.
    pub command: Vec<String>,
    /// Extra environment for the app.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Extra environment for the sidecar.
    #[serde(default)]
    pub proxy_env: Vec<(String, String)>,
    /// The app process.
    pub app: Option<Recorded>,
    /// The sidecar process.
    pub proxy: Option<Recorded>,
}

impl PodRecord {
    /// The labels as `k=v,k2=v2` (the sidecar's `--labels`, `meshctl ps`).
    pub fn labels_text(&self) -> String {
        self.labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The Deployment the pod belongs to (pods are named `<deployment>-<index>`): the workload
    /// its metrics name.
    pub fn workload(&self) -> &str {
        match self.name.rsplit_once('-') {
            Some((workload, index))
                if !workload.is_empty() && index.bytes().all(|b| b.is_ascii_digit()) =>
            {
                workload
            }
            _ => &self.name,
        }
    }
}

impl RuntimeState {
    /// The hub namespace.
    pub fn hub(&self) -> String {
        format!("{}-hub", self.prefix)
    }
}

/// The runtime's files inside DIR.
#[derive(Clone, Debug)]
pub struct Layout {
    /// DIR itself.
    pub dir: PathBuf,
}

impl Layout {
    /// The record.
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("runtime.json")
    }
    /// The configuration folder pilot watches.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config")
    }
    /// Pod registrations (Pod resources pilot reads), inside the configuration folder.
    pub fn registrations(&self) -> PathBuf {
        self.config().join("pods")
    }
    /// The CA's folder.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca")
    }
    /// Registered bootstrap token hashes.
    pub fn tokens(&self) -> PathBuf {
        self.ca().join("tokens.json")
    }
    /// A pod's own files (token, logs).
    pub fn pod_dir(&self, name: &str) -> PathBuf {
        self.dir.join("pods").join(name)
    }
    /// The control plane's log.
    pub fn control_log(&self) -> PathBuf {
        self.dir.join("control-plane.log")
    }
    /// Written by the control plane once it serves.
    pub fn control_ready(&self) -> PathBuf {
        self.dir.join("control-plane.ready")
    }
}

/// An exclusive hold on DIR, released when dropped.
pub struct Lock {
    _lock: nix::fcntl::Flock<File>,
}

/// Takes DIR's lock, waiting for another `meshctl` working on the same mesh.
pub fn lock(dir: &Path) -> Result<Lock, RuntimeError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| RuntimeError::io(format!("creating {}", dir.display()), e))?;
    let path = dir.join(".lock");
    let file = File::create(&path)
        .map_err(|e| RuntimeError::io(format!("opening {}", path.display()), e))?;
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| RuntimeError::io(format!("locking {}", path.display()), e.into()))?;
    Ok(Lock { _lock: lock })
}

/// Reads the record; `None` when no mesh was started in DIR (or it was taken down).
pub fn load(layout: &Layout) -> Result<Option<RuntimeState>, RuntimeError> {
    let path = layout.state_file();
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| RuntimeError::Corrupt {
                path,
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RuntimeError::io(format!("reading {}", path.display()), e)),
    }
}

/// Writes the record (atomically: a crash leaves the old or the new one).
pub fn save(layout: &Layout, state: &RuntimeState) -> Result<(), RuntimeError> {
    let path = layout.state_file();
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(state).unwrap_or_default();
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| RuntimeError::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::PodRecord;

    #[test]
    fn a_pods_workload_is_its_deployment() {
        let pod = |name: &str| PodRecord {
            name: name.into(),
            ..Default::default()
        };
        assert_eq!(pod("order-v1-0").workload(), "order-v1");
        assert_eq!(pod("inventory-12").workload(), "inventory");
        assert_eq!(pod("curl").workload(), "curl");
        assert_eq!(pod("order-v1").workload(), "order-v1");
    }
}
