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

/// State text that is not a `ProxyState` document: the parser's first line, which names the
/// field and position.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ParseError(pub String);

/// Parses state text (YAML or JSON, camelCase field names).
pub fn parse_state(text: &str) -> Result<proto::ProxyState, ParseError> {
    serde_saphyr::from_str(text)
        .map_err(|e| ParseError(e.to_string().lines().next().unwrap_or("").to_string()))
}

/// Reads and checks a state file.
pub fn load_file(path: &Path) -> Result<State, StateFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| StateFileError::Read {
        path: path.into(),
        source,
    })?;
    let state = parse_state(&text).map_err(|e| StateFileError::Parse {
        path: path.into(),
        message: e.0,
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

/// What one look at the file found.
#[derive(Debug, PartialEq, Eq)]
pub enum Poll {
    /// Unchanged since the last look.
    Unchanged,
    /// Changed and applied: the new state's version.
    Applied(String),
    /// Changed but refused; the previous state stays in force.
    Refused(String),
}

/// Follows one state file, sending each good new version on a watch channel.
pub struct FileWatch {
    path: PathBuf,
    last: Option<(SystemTime, u64)>,
    tx: watch::Sender<Arc<State>>,
}

impl FileWatch {
    /// Starts following `path`, taking its current contents as already applied.
    pub fn new(path: PathBuf, tx: watch::Sender<Arc<State>>) -> Self {
        let last = stamp(&path);
        Self { path, last, tx }
    }

    /// Looks at the file once.
    pub fn poll(&mut self) -> Poll {
        let now = stamp(&self.path);
        if now == self.last {
            return Poll::Unchanged;
        }
        self.last = now;
        match load_file(&self.path) {
            Ok(state) => {
                let version = state.source.version.clone();
                tracing::info!(%version, "state file changed: applied");
                self.tx.send_replace(Arc::new(state));
                Poll::Applied(version)
            }
            Err(e) => {
                tracing::warn!("{e}; keeping the previous state");
                Poll::Refused(e.to_string())
            }
        }
    }
}

/// Keeps `tx` current with `path`, looking every `every`, until every receiver is gone. The
/// file's current contents count as applied from the moment of the call (not of the first
/// poll), so a change made right after it is never missed.
pub fn watch_file(
    path: PathBuf,
    tx: watch::Sender<Arc<State>>,
    every: Duration,
) -> impl Future<Output = ()> + Send {
    let mut watch = FileWatch::new(path, tx);
    async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            watch.poll();
            if watch.tx.is_closed() {
                return;
            }
        }
    }
}
