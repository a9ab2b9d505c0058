//! The local source: a folder of YAML (Istio resources, Services, ServiceAccounts, Namespaces,
//! ServiceEntries, WorkloadEntries), read recursively and watched for changes. A resource that
//! turns invalid keeps its last good version (and the finding says so); a file that cannot be
//! parsed at all keeps every resource it last gave. Deleting a resource from a valid file
//! removes it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_api::load::{self, LoadError, LoadReport};
use mesh_api::{Diagnostic, Resource};
use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use super::{Snapshot, key_of, referenced_files};

/// Why the folder source stopped.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    /// The folder could not be read.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The folder could not be watched.
    #[error("cannot watch {path}: {source}")]
    Watch {
        /// The folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: notify::Error,
    },
}

/// The folder source's memory of what it accepted, so an invalid edit loses nothing.
#[derive(Debug)]
pub struct Folder {
    dir: PathBuf,
    /// Accepted resources by key, with the file they came from.
    accepted: BTreeMap<(String, String), (Arc<Resource>, Option<String>)>,
    revision: u64,
    /// What each file gave when last read: a reload parses only the files that changed, and
    /// resources are shared (not copied) between reloads and snapshots.
    parsed: HashMap<PathBuf, Parsed>,
}

/// One file as last read.
#[derive(Debug)]
struct Parsed {
    modified: Option<SystemTime>,
    len: u64,
    resources: Vec<(Arc<Resource>, Option<String>)>,
    diagnostics: Vec<Diagnostic>,
}

/// File name endings read from the folder (as `meshctl validate` reads a folder).
const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

fn list_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let read = |path: &Path, source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(|e| read(dir, e))? {
        let entry = entry.map_err(|e| read(dir, e))?;
        let path = entry.path();
        let file_type = entry.file_type().map_err(|e| read(&path, e))?;
        if file_type.is_dir() {
            list_files(&path, out)?;
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

impl Folder {
    /// A source over `dir` (created empty if it does not exist yet).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Folder {
            dir: dir.into(),
            accepted: BTreeMap::new(),
            revision: 0,
            parsed: HashMap::new(),
        }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the folder again and returns the new snapshot.
    pub fn reload(&mut self) -> Result<Snapshot, FolderError> {
        if !self.dir.exists() {
            std::fs::create_dir_all(&self.dir).map_err(|source| LoadError::Read {
                path: self.dir.clone(),
                source,
            })?;
        }
        let mut files = Vec::new();
        list_files(&self.dir, &mut files)?;
        files.sort();
        let mut parsed = HashMap::with_capacity(files.len());
        let mut next: BTreeMap<(String, String), (Arc<Resource>, Option<String>)> = BTreeMap::new();
        let mut findings = Vec::new();
        for file in files {
            let meta = std::fs::metadata(&file).map_err(|source| LoadError::Read {
                path: file.clone(),
                source,
            })?;
            let (modified, len) = (meta.modified().ok(), meta.len());
            let entry = match self.parsed.remove(&file) {
                Some(p) if p.modified == modified && p.len == len && modified.is_some() => p,
                _ => {
                    let report: LoadReport = load::load_path(&file)?;
                    Parsed {
                        modified,
                        len,
                        resources: report
                            .documents
                            .into_iter()
                            .map(|d| (Arc::new(d.resource), d.origin.file))
                            .collect(),
                        diagnostics: report.diagnostics,
                    }
                }
            };
            for (r, origin) in &entry.resources {
                next.insert(key_of(r), (r.clone(), origin.clone()));
            }
            findings.extend(entry.diagnostics.iter().cloned());
            parsed.insert(file, entry);
        }
        self.parsed = parsed;
        let mut kept = Vec::new();
        for d in findings
            .iter()
            .filter(|d| d.severity == mesh_api::Severity::Error)
        {
            match (&d.kind, &d.resource) {
                (Some(kind), Some(id)) => {
                    let key = (kind.clone(), id.clone());
                    if let (false, Some(old)) = (next.contains_key(&key), self.accepted.get(&key)) {
                        kept.push((key, old.clone()));
                    }
                }
                // Which resource failed is unknown: keep everything its file gave before.
                _ => {
                    for (key, old) in &self.accepted {
                        if old.1 == d.file && !next.contains_key(key) {
                            kept.push((key.clone(), old.clone()));
                        }
                    }
                }
            }
        }
        for (key, old) in kept {
            findings.push(Diagnostic::warning(format!(
                "{} {}: the new version is refused (see the error above); serving the last good version",
                key.0, key.1
            )));
            next.insert(key, old);
        }
        self.accepted = next;
        self.revision += 1;
        let resources: Vec<Arc<Resource>> =
            self.accepted.values().map(|(r, _)| r.clone()).collect();
        let mut files = BTreeMap::new();
        for path in referenced_files(&resources) {
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    files.insert(path, text);
                }
                Err(e) => findings.push(Diagnostic::warning(format!("cannot read {path}: {e}"))),
            }
        }
        Ok(Snapshot {
            revision: self.revision,
            resources,
            files,
            findings,
        })
    }
}

/// How long the watcher waits for a burst of file events to settle before reloading.
const SETTLE: Duration = Duration::from_millis(30);

/// Starts watching `folder`, loads it and publishes the snapshot on `tx`; returns the task
/// that publishes a new snapshot after every change, until `tx` has no receivers left. The
/// watch is in place before the first load, so no change is missed. A folder that cannot be
/// read during a reload keeps the last snapshot (and the error is logged).
pub fn watch_folder(
    mut folder: Folder,
    tx: watch::Sender<Arc<Snapshot>>,
) -> Result<impl std::future::Future<Output = ()> + Send + 'static, FolderError> {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let watch_error = |dir: &Path, source| FolderError::Watch {
        path: dir.to_path_buf(),
        source,
    };
    if !folder.dir().exists() {
        std::fs::create_dir_all(folder.dir()).map_err(|source| LoadError::Read {
            path: folder.dir().to_path_buf(),
            source,
        })?;
    }
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        use notify::EventKind;
        use notify::event::ModifyKind;
        // Reading the files (ours included) raises access events: only changes count.
        let change = event.is_ok_and(|e| match e.kind {
            EventKind::Create(_) | EventKind::Remove(_) => true,
            EventKind::Modify(m) => !matches!(m, ModifyKind::Metadata(_)),
            EventKind::Access(_) | EventKind::Any | EventKind::Other => false,
        });
        if change {
            let _ = events_tx.send(());
        }
    })
    .map_err(|e| watch_error(folder.dir(), e))?;
    watcher
        .watch(folder.dir(), RecursiveMode::Recursive)
        .map_err(|e| watch_error(folder.dir(), e))?;
    let first = folder.reload()?;
    tx.send_replace(Arc::new(first));
    Ok(async move {
        // The watcher lives as long as the task.
        let _watcher = watcher;
        loop {
            tokio::select! {
                event = events.recv() => {
                    if event.is_none() {
                        return;
                    }
                }
                () = tx.closed() => return,
            }
            // Let a burst of events (an editor's save, `cp -r`) settle into one reload.
            tokio::time::sleep(SETTLE).await;
            while events.try_recv().is_ok() {}
            match folder.reload() {
                Ok(snapshot) => {
                    tx.send_replace(Arc::new(snapshot));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "config folder reload failed; keeping the last snapshot")
                }
            }
        }
    })
}
