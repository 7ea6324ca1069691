//! Finding plugin files: search-path lists and `LRNNX_PLUGIN_PATH`.

use std::path::PathBuf;

use super::host::{load_plugin, LoadedPlugin};
use crate::Result;

/// The environment variable searched at start-up: plugin files or directories,
/// separated by `:` (`;` on Windows).
pub const PLUGIN_PATH_VAR: &str = "LRNNX_PLUGIN_PATH";

/// The plugin files a search-path list names: each entry (separated by `:`,
/// `;` on Windows; empty entries skipped) is a library file, or a directory
/// whose files with the platform's library extension (`.so`, `.dylib`, `.dll`)
/// are taken in name order.
pub fn plugin_files(list: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::env::split_paths(list) {
        if entry.as_os_str().is_empty() {
            continue;
        }
        if entry.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(&entry)
                .map(|rd| {
                    rd.filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| {
                            p.is_file()
                                && p.extension().and_then(|e| e.to_str())
                                    == Some(std::env::consts::DLL_EXTENSION)
                        })
                        .collect()
                })
                .unwrap_or_default();
            found.sort();
            files.extend(found);
        } else {
            files.push(entry);
        }
    }
    files
}

/// Loads every plugin a search-path list names (see [`plugin_files`]); one
/// result per file, in order. A failure does not stop the others.
pub fn load_plugin_list(list: &str) -> Vec<Result<LoadedPlugin>> {
    plugin_files(list).into_iter().map(load_plugin).collect()
}

/// Loads the plugins named by `LRNNX_PLUGIN_PATH` (nothing when unset).
pub fn load_env_plugins() -> Vec<Result<LoadedPlugin>> {
    match std::env::var(PLUGIN_PATH_VAR) {
        Ok(list) => load_plugin_list(&list),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn search_path_lists_files_and_library_files_of_directories() {
        let dir = tempfile::tempdir().unwrap();
        let ext = std::env::consts::DLL_EXTENSION;
        for f in [
            format!("b.{ext}"),
            format!("a.{ext}"),
            "notes.txt".to_string(),
        ] {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        let single = dir.path().join("notes.txt");
        let list = std::env::join_paths([dir.path(), Path::new(""), single.as_path()])
            .unwrap()
            .into_string()
            .unwrap();
        let files = plugin_files(&list);
        assert_eq!(
            files,
            vec![
                dir.path().join(format!("a.{ext}")),
                dir.path().join(format!("b.{ext}")),
                single
            ]
        );
        // Every file fails (none is a library), each with its own error.
        assert!(load_plugin_list(&list).iter().all(|r| r.is_err()));
    }
}
