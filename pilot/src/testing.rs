//! Test support (feature `test-util`): a proxy node, a model or a generation from YAML (which
//! must validate), and a pilot configuration on loopback with a short debounce. Shared by
//! pilot's tests and benches so each does not carry its own copy.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mesh_api::{Resource, load};

use crate::discovery::{Debounce, Generation};
use crate::model::{MeshConfig, Model};
use crate::run::{ConfigSource, PilotConfig};
use crate::translate::ProxyNode;

/// A sidecar in `namespace` with service account `sa`, `labels`, at `ip`.
pub fn node(namespace: &str, sa: &str, labels: &[(&str, &str)], ip: &str) -> ProxyNode {
    ProxyNode {
        id: format!("sidecar~{ip}~test.{namespace}"),
        namespace: namespace.into(),
        service_account: sa.into(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect(),
        ip_addresses: vec![ip.into()],
        proxy_version: env!("CARGO_PKG_VERSION").into(),
        ..ProxyNode::default()
    }
}

/// The resources of `yaml`; panics with the findings when any document is invalid.
pub fn resources(yaml: &str) -> Vec<Resource> {
    let report = load::load_str(yaml, None);
    assert!(
        report.is_valid(),
        "{:?}",
        report.errors().collect::<Vec<_>>()
    );
    report.documents.into_iter().map(|d| d.resource).collect()
}

/// The resources of files or folders; panics naming the path when one is invalid.
pub fn resources_from(paths: &[&Path]) -> Vec<Resource> {
    let mut out = Vec::new();
    for p in paths {
        let report = load::load_path(p).expect("readable");
        assert!(
            report.is_valid(),
            "{}: {:?}",
            p.display(),
            report.errors().collect::<Vec<_>>()
        );
        out.extend(report.documents.into_iter().map(|d| d.resource));
    }
    out
}

/// The model of `resources` with the default mesh settings and no files.
pub fn model(resources: &[Resource]) -> Model {
    Model::build(MeshConfig::default(), resources, BTreeMap::new())
}

/// Generation `version` of the model of `yaml`.
pub fn generation(version: u64, yaml: &str) -> Arc<Generation> {
    Arc::new(Generation::new(version, model(&resources(yaml))))
}

/// Pilot reading the folder `dir`, discovery on `discovery`, debug on a free loopback port,
/// changes coalesced within 20 ms (at most 200 ms), no mTLS discovery.
pub fn folder_config(dir: &Path, discovery: std::net::SocketAddr) -> PilotConfig {
    PilotConfig {
        source: ConfigSource::Folder(dir.to_path_buf()),
        discovery,
        debug: ([127, 0, 0, 1], 0).into(),
        mesh: MeshConfig::default(),
        debounce: Debounce {
            quiet: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
        secure: None,
    }
}
