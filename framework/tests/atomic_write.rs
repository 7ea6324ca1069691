//! `io::write_atomic` replaces the name it is given, never what a planted
//! symlink points to, and leaves no temporary file behind.

use lrnnx_framework::io::write_atomic;

#[test]
fn a_symlink_at_the_target_is_replaced_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let target = dir.path().join("config.json");
    std::os::unix::fs::symlink(&victim, &target).unwrap();
    write_atomic(&target, b"{}").unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(std::fs::symlink_metadata(&target).unwrap().is_file());
    assert_eq!(std::fs::read(&target).unwrap(), b"{}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        2,
        "a temporary file was left"
    );
}
