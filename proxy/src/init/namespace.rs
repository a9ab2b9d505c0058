//! Which network namespace the process is in, and whether capture rules may be written there.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The verdict on the current network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamespaceCheck {
    /// A namespace created with `ip netns add`, by this name.
    Created(String),
    /// Not a namespace under `/run/netns`: possibly the host's own.
    Unknown,
}

/// Compares the current network namespace with the ones registered under `netns_dir`
/// (`/run/netns`, where `ip netns add` mounts them).
pub fn check_namespace(netns_dir: &Path) -> std::io::Result<NamespaceCheck> {
    let own = std::fs::metadata("/proc/self/ns/net")?;
    let entries = match std::fs::read_dir(netns_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(NamespaceCheck::Unknown),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        let path: PathBuf = entry.path();
        if let Ok(meta) = std::fs::metadata(&path)
            && meta.dev() == own.dev()
            && meta.ino() == own.ino()
        {
            return Ok(NamespaceCheck::Created(
                entry.file_name().to_string_lossy().into_owned(),
            ));
        }
    }
    Ok(NamespaceCheck::Unknown)
}
