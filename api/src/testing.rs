//! Test support (feature `test-util`): where the shared test data is. Tests that read it are
//! `#[ignore = "needs shared testdata"]` and run by the test script, so its absence is a
//! failure that names the path, never a silent pass.

use std::path::{Path, PathBuf};

/// `../shared/testdata` beside the repository (the seed scenario, Istio's samples and
/// validation cases, analyzer inputs, Gateway API conformance data).
///
/// # Panics
/// When the folder is absent.
pub fn shared_testdata() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata");
    assert!(
        dir.is_dir(),
        "{} is missing: these tests need shared/ beside the repository",
        dir.display()
    );
    dir
}
