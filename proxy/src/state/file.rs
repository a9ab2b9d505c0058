//! The state from a file (`--state-file`), YAML or JSON, watched for changes: how tests and
//! single-machine setups feed the proxy without a control plane.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::{State, StateError, proto};

/// A state file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// Unreadable.
    #[error("cannot read state file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Not a state document.
    #[error("state file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A state that does not check.
    #[error("state file {path}: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: StateError,
    },
}

/// Parses state text (YAML or JSON, camelCase field names).
pub fn parse_state(text: &str) -> Result<proto::ProxyState, String> {
    serde_saphyr::from_str(text).map_err(|e| e.to_string().lines().next().unwrap_or("").to_string())
}

/// Reads and checks a state file.
pub fn load_file(path: &Path) -> Result<State, StateFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| StateFileError::Read {
        path: path.into(),
        source,
    })?;
    let state = parse_state(&text).map_err(|message| StateFileError::Parse {
        path: path.into(),
        message,
    })?;
    State::compile(state).map_err(|source| StateFileError::Invalid {
        path: path.into(),
        source,
    })
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Loads `path` and keeps `tx` current: the file is checked every `every`; a changed file that
/// fails to load is reported and the last good state stays in force.
pub async fn watch_file(path: PathBuf, tx: watch::Sender<Arc<State>>, every: Duration) {
    let mut last = stamp(&path);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = stamp(&path);
        if now == last {
            continue;
        }
        last = now;
        match load_file(&path) {
            Ok(state) => {
                tracing::info!(version = %state.source.version, "state file changed: applied");
                tx.send_replace(Arc::new(state));
            }
            Err(e) => tracing::warn!("{e}; keeping the previous state"),
        }
        if tx.is_closed() {
            return;
        }
    }
}
