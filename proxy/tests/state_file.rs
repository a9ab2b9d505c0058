//! The state file: loaded, refused with the field named when invalid, and watched so a change
//! reaches the listeners while a broken edit leaves the last good state in force.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use mesh_proxy::state;

const V1: &str = "version: v1\nservices:\n- hostname: a.default.svc.cluster.local\n  addresses: [10.96.0.1]\n  ports: [{port: 80, name: http}]\n  endpoints: [{address: 10.0.0.1}]\n";
const V2: &str = "version: v2\nservices: []\noutboundTrafficPolicy: REGISTRY_ONLY\n";
const V3: &str = "{\"version\": \"v3\"}";
const BROKEN: &str =
    "version: v-bad\nservices:\n- hostname: b\n  endpoints: [{address: not-an-ip}]\n";

fn dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "mesh-state-{}-{}",
        std::process::id(),
        fastrand_suffix()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fastrand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[test]
fn files_load_and_bad_ones_name_the_field() {
    let d = dir();
    let f = d.join("s.yaml");
    std::fs::write(&f, V1).unwrap();
    let s = state::load_file(&f).unwrap();
    assert_eq!(s.source.version, "v1");
    assert!(s.service_for("10.96.0.1:80".parse().unwrap()).is_some());
    std::fs::write(&f, BROKEN).unwrap();
    let err = state::load_file(&f).unwrap_err().to_string();
    assert!(
        err.contains("service b: endpoints[0].address: \"not-an-ip\" is not an IP address"),
        "{err}"
    );
    std::fs::write(&f, "services: [").unwrap();
    assert!(state::load_file(&f).is_err());
    std::fs::write(&f, "servics: []").unwrap();
    let err = state::load_file(&f).unwrap_err().to_string();
    assert!(err.contains("servics"), "unknown fields are named: {err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn changes_are_applied_and_broken_edits_refused() {
    let d = dir();
    let f = d.join("s.yaml");
    std::fs::write(&f, V1).unwrap();
    let (tx, mut rx) = tokio::sync::watch::channel(Arc::new(state::load_file(&f).unwrap()));
    let mut watch = state::FileWatch::new(f.clone(), tx);
    assert_eq!(watch.poll(), state::Poll::Unchanged);
    std::fs::write(&f, V2).unwrap();
    assert_eq!(watch.poll(), state::Poll::Applied("v2".into()));
    assert_eq!(
        rx.borrow_and_update().outbound_policy,
        state::OutboundPolicy::RegistryOnly
    );

    std::fs::write(&f, BROKEN).unwrap();
    assert!(matches!(watch.poll(), state::Poll::Refused(e) if e.contains("not-an-ip")));
    assert!(
        !rx.has_changed().unwrap(),
        "a refused state never reaches the listeners"
    );
    assert_eq!(rx.borrow().source.version, "v2");

    std::fs::write(&f, V3).unwrap();
    assert_eq!(watch.poll(), state::Poll::Applied("v3".into()));
    assert_eq!(rx.borrow_and_update().source.version, "v3");
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test]
async fn the_watch_task_follows_the_file() {
    let d = dir();
    let f = d.join("s.yaml");
    std::fs::write(&f, V1).unwrap();
    let (tx, mut rx) = tokio::sync::watch::channel(Arc::new(state::load_file(&f).unwrap()));
    let watcher = tokio::spawn(state::watch_file(f.clone(), tx, Duration::from_millis(10)));
    std::fs::write(&f, V2).unwrap();
    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .expect("the change arrives")
        .unwrap();
    assert_eq!(rx.borrow().source.version, "v2");
    watcher.abort();
    let _ = std::fs::remove_dir_all(&d);
}
