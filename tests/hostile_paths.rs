//! Paths that would hang a naive reader: a directory symlink loop under
//! `conformance`, a FIFO or a directory handed over as a plugin.

use std::process::Command;

#[test]
fn conformance_does_not_follow_a_symlink_loop() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(dir.path(), dir.path().join("loop")).unwrap();
    std::fs::create_dir(dir.path().join("group")).unwrap();
    std::os::unix::fs::symlink(dir.path(), dir.path().join("group/back")).unwrap();
    let results = lrnnx::conformance::run_dir(dir.path()).unwrap();
    assert!(
        results.is_empty(),
        "{} cases found in an empty tree",
        results.len()
    );
}

#[test]
fn a_fifo_or_a_directory_is_not_loaded_as_a_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("plugin.so");
    let made = Command::new("mkfifo").arg(&fifo).status();
    if made.map(|s| s.success()).unwrap_or(false) {
        let e = lrnnx::plugin::load_plugin(&fifo).unwrap_err().to_string();
        assert!(e.contains("FIFO") && e.contains("plugin.so"), "{e}");
    } else {
        eprintln!("skipped the FIFO case: no mkfifo here");
    }
    let e = lrnnx::plugin::load_plugin(dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("regular file"), "{e}");
}
