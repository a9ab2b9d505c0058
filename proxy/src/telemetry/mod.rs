//! What a proxy records besides its metrics, as its state asks (Istio's Telemetry API, resolved
//! by pilot): access logs, and spans of the requests it carries.

pub mod access_log;
pub mod tap;
pub mod trace;

use std::sync::Arc;

pub use access_log::{Entry, Log};
use mesh_api::proto::state::v1 as proto;

/// The telemetry of one state, ready to use.
#[derive(Debug, Default)]
pub struct Telemetry {
    /// Logs of the requests the workload sends (and every request of a gateway).
    pub client_logs: Arc<[Log]>,
    /// Logs of the requests the workload receives.
    pub server_logs: Arc<[Log]>,
    /// Tracing, when some side is traced.
    pub tracing: Option<Arc<trace::Config>>,
}

impl Telemetry {
    /// The telemetry `source` asks for. A log file that cannot be opened is left out, with a
    /// warning naming it.
    pub fn compile(source: Option<&proto::Telemetry>) -> Self {
        let Some(t) = source else {
            return Telemetry::default();
        };
        let (mut client, mut server) = (Vec::new(), Vec::new());
        for l in &t.access_logs {
            match access_log::sink(&l.path) {
                Ok(sink) => {
                    let log = Log { sink, text: l.text };
                    if l.client {
                        client.push(log.clone());
                    }
                    if l.server {
                        server.push(log);
                    }
                }
                Err(e) => {
                    tracing::warn!("access log of provider {:?} not written: {e}", l.provider)
                }
            }
        }
        Telemetry {
            client_logs: client.into(),
            server_logs: server.into(),
            tracing: t
                .tracing
                .as_ref()
                .filter(|t| t.client || t.server)
                .map(|t| Arc::new(trace::Config::compile(t))),
        }
    }

    /// The tracing of requests on `side`, when they are traced.
    pub fn traced(&self, side: trace::Side) -> Option<&trace::Config> {
        self.tracing.as_deref().filter(|t| match side {
            trace::Side::Client => t.client,
            trace::Side::Server => t.server,
        })
    }

    /// Whether any access log is written, or someone taps the proxy: an entry is made for
    /// each request only then.
    pub fn logging(&self) -> bool {
        !self.client_logs.is_empty() || !self.server_logs.is_empty() || tap::watched()
    }

    /// Whether requests sent are logged or tapped.
    pub fn client_entries(&self) -> bool {
        !self.client_logs.is_empty() || tap::watched()
    }

    /// Whether requests received are logged or tapped.
    pub fn server_entries(&self) -> bool {
        !self.server_logs.is_empty() || tap::watched()
    }
}
