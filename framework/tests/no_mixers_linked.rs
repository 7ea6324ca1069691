//! A binary that links no mixer crate: looking one up must say why it is
//! missing and what to call, not list an empty registry.

use lrnnx_framework::{Error, Registry};

#[test]
fn lookup_without_linked_mixers_names_lrnnx_init() {
    let e = Registry::get("LRU").unwrap_err();
    assert!(
        matches!(e, Error::NoMixersLinked(ref n) if n == "LRU"),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("no linked mixers are registered") && msg.contains("lrnnx::init()"),
        "{msg}"
    );
}
