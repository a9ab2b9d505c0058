//! The folder source: reload, last good version kept for a refused edit, deletion, and the
//! watcher publishing a change.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use mesh_api::Resource;
use mesh_pilot::source::Snapshot;
use mesh_pilot::source::folder::{Folder, watch_folder};
use tokio::sync::watch;

const VS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shipping, namespace: default}
spec:
  hosts: [shipping]
  http:
  - route:
    - destination: {host: shipping, subset: v1}
      weight: WEIGHT_A
    - destination: {host: shipping, subset: v2}
      weight: WEIGHT_B
";

const SVC: &str = "apiVersion: v1
kind: Service
metadata: {name: shipping, namespace: default}
spec:
  selector: {app: shipping}
  ports: [{name: http, port: 8080}]
";

fn vs(a: u32, b: u32) -> String {
    VS.replace("WEIGHT_A", &a.to_string())
        .replace("WEIGHT_B", &b.to_string())
}

fn weights(s: &Snapshot) -> Vec<i32> {
    s.resources
        .iter()
        .find_map(|r| match &**r {
            Resource::VirtualService(v) => Some(
                v.spec.http[0]
                    .route
                    .iter()
                    .map(|d| d.weight.unwrap())
                    .collect(),
            ),
            _ => None,
        })
        .expect("the VirtualService is served")
}

#[test]
fn refused_edit_keeps_the_last_good_version() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("svc.yaml"), SVC).unwrap();
    std::fs::write(dir.path().join("vs.yaml"), vs(90, 10)).unwrap();
    let mut folder = Folder::new(dir.path());
    let s = folder.reload().unwrap();
    assert_eq!(s.resources.len(), 2);
    assert_eq!(weights(&s), vec![90, 10]);

    // Weights that do not add up: refused, the old version is served, and both are said.
    std::fs::write(dir.path().join("vs.yaml"), vs(90, 20)).unwrap();
    let s = folder.reload().unwrap();
    assert_eq!(weights(&s), vec![90, 10]);
    let text: Vec<String> = s.findings.iter().map(ToString::to_string).collect();
    assert!(text.iter().any(|t| t.contains("weight")), "{text:?}");
    assert!(
        text.iter().any(|t| t.contains("last good version")),
        "{text:?}"
    );

    // Broken YAML: nothing the file gave is lost.
    std::fs::write(dir.path().join("vs.yaml"), "kind: [unclosed").unwrap();
    let s = folder.reload().unwrap();
    assert_eq!(weights(&s), vec![90, 10]);

    // A good edit replaces it; removing the file removes the resource.
    std::fs::write(dir.path().join("vs.yaml"), vs(50, 50)).unwrap();
    assert_eq!(weights(&folder.reload().unwrap()), vec![50, 50]);
    std::fs::remove_file(dir.path().join("vs.yaml")).unwrap();
    let s = folder.reload().unwrap();
    assert_eq!(s.resources.len(), 1);
}

#[tokio::test]
async fn watcher_publishes_changes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("svc.yaml"), SVC).unwrap();
    let (tx, mut rx) = watch::channel(Arc::new(Snapshot::default()));
    let task = tokio::spawn(watch_folder(Folder::new(dir.path()), tx).unwrap());
    let deadline = Duration::from_secs(10);
    tokio::time::timeout(deadline, rx.wait_for(|s| s.resources.len() == 1))
        .await
        .expect("first snapshot")
        .unwrap();
    std::fs::write(dir.path().join("vs.yaml"), vs(80, 20)).unwrap();
    let s = tokio::time::timeout(deadline, rx.wait_for(|s| s.resources.len() == 2))
        .await
        .expect("the change is published")
        .unwrap()
        .clone();
    assert_eq!(weights(&s), vec![80, 20]);
    // Reading the folder is not a change: no snapshot follows by itself.
    let revision = s.revision;
    let _ = Folder::new(dir.path()).reload().unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(300), rx.changed()).await;
    assert!(quiet.is_err(), "a read made a new snapshot");
    assert_eq!(rx.borrow().revision, revision);
    drop(rx);
    task.abort();
}
