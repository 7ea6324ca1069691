//! Crash-consistent checkpoint sets: a directory whose files are replaced
//! all at once, so that after any crash it holds the old set or the new one,
//! never a mix.
//!
//! A [`CheckpointWriter`] stages the new set in a fresh sibling directory
//! (created exclusively, so nothing planted there is followed), where the
//! caller writes every file; [`CheckpointWriter::commit`] then writes the
//! manifest (`checkpoint.json`: an id, the step, each file's size and
//! SHA-256), fsyncs every file and the directory, and swaps the staging
//! directory with the target in one `renameat2(RENAME_EXCHANGE)` (or renames
//! it into place when there is no target yet), fsyncs the parent and removes
//! the old set. [`verify_checkpoint`] checks that a directory's files are the
//! ones its manifest lists, byte for byte: the parts belong together.
//!
//! ```
//! # fn main() -> lrnnx_framework::Result<()> {
//! use lrnnx_framework::train::{verify_checkpoint, CheckpointWriter};
//! let root = tempfile::tempdir().unwrap();
//! let target = root.path().join("run");
//! let w = CheckpointWriter::begin(&target)?;
//! std::fs::write(w.dir().join("weights.bin"), b"step 1").unwrap();
//! w.commit(1)?;
//! assert_eq!(verify_checkpoint(&target)?.step, 1);
//! # Ok(()) }
//! ```

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The manifest's file name; written last into the staged set.
pub const MANIFEST: &str = "checkpoint.json";

/// Largest manifest read back (it lists a handful of files).
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// One file of a checkpoint set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// File name inside the set.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256 of the contents, hex.
    pub sha256: String,
}

/// What `checkpoint.json` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Random id of this set (also handed to the writer's files, if they
    /// want to carry it).
    pub id: String,
    /// The training step the set was saved at.
    pub step: u64,
    /// Every other file of the set, sorted by name.
    pub files: Vec<ManifestFile>,
}

/// Stages a checkpoint set next to its target; dropped without
/// [`commit`](Self::commit), it removes the staged files.
#[derive(Debug)]
pub struct CheckpointWriter {
    target: PathBuf,
    staging: PathBuf,
    id: String,
    done: bool,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::file(path, e)
}

/// The directory holding `path` ("." for a bare name).
fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// A fresh random token for staging names and set ids.
fn random_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// fsyncs a file or directory (directories: so that renames in it persist).
fn sync_path(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_err(path, format!("fsync: {e}")))
}

/// Size and SHA-256 of a regular file.
fn digest(path: &Path) -> Result<(u64, String)> {
    let mut f = File::open(path).map_err(|e| io_err(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(|e| io_err(path, e))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    let hex = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((n, hex))
}

/// Swaps two paths atomically (Linux `renameat2(RENAME_EXCHANGE)`).
/// `Ok(false)` when the filesystem or kernel cannot, so the caller falls back.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> Result<bool> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes()).map_err(|e| io_err(a, e))?;
    let cb = CString::new(b.as_os_str().as_bytes()).map_err(|e| io_err(b, e))?;
    // SAFETY: both arguments are valid NUL-terminated C strings that outlive
    // the call; AT_FDCWD makes them relative to the working directory, as
    // std's own rename does. The call reads nothing else of ours.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => Ok(false),
        _ => Err(io_err(b, format!("swapping in {}: {e}", a.display()))),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> Result<bool> {
    Ok(false)
}

impl CheckpointWriter {
    /// Starts a set that will replace directory `target` (created on commit
    /// if absent). Refuses a target that is not a directory, a symlink, or
    /// a non-empty directory that holds no checkpoint manifest (it is not
    /// ours to replace).
    pub fn begin(target: impl AsRef<Path>) -> Result<Self> {
        let target = target.as_ref().to_path_buf();
        let parent = parent_of(&target);
        std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
        match std::fs::symlink_metadata(&target) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(io_err(
                    &target,
                    "is a symbolic link; a checkpoint directory must be a real directory",
                ))
            }
            Ok(m) if !m.is_dir() => {
                return Err(io_err(&target, "exists and is not a directory"));
            }
            Ok(_) => {
                let empty = std::fs::read_dir(&target)
                    .map_err(|e| io_err(&target, e))?
                    .next()
                    .is_none();
                if !empty && !target.join(MANIFEST).is_file() {
                    return Err(io_err(
                        &target,
                        format!(
                            "holds files but no {MANIFEST}: not a checkpoint set written here; \
                             refusing to replace it (pick another directory or empty it)"
                        ),
                    ));
                }
            }
            Err(_) => {}
        }
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "checkpoint".into());
        let staging = parent.join(format!(".{name}.staging-{}", random_token()));
        // create_dir fails if the name exists: nothing planted is reused.
        std::fs::create_dir(&staging).map_err(|e| io_err(&staging, e))?;
        Ok(Self {
            target,
            staging,
            id: random_token(),
            done: false,
        })
    }

    /// Where the caller writes the set's files.
    pub fn dir(&self) -> &Path {
        &self.staging
    }

    /// The set's random id (recorded in the manifest).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Writes the manifest, makes everything durable and puts the set in
    /// place of the target in one atomic step.
    pub fn commit(mut self, step: u64) -> Result<Manifest> {
        let mut files = Vec::new();
        let entries = std::fs::read_dir(&self.staging).map_err(|e| io_err(&self.staging, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err(&self.staging, e))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let ft = entry.file_type().map_err(|e| io_err(&path, e))?;
            if !ft.is_file() {
                return Err(io_err(&path, "a checkpoint set holds regular files only"));
            }
            if name == MANIFEST {
                return Err(io_err(&path, "the manifest is written by commit"));
            }
            sync_path(&path)?;
            let (bytes, sha256) = digest(&path)?;
            files.push(ManifestFile {
                name,
                bytes,
                sha256,
            });
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let manifest = Manifest {
            id: self.id.clone(),
            step,
            files,
        };
        let text = serde_json::to_vec_pretty(&manifest).map_err(|e| io_err(&self.staging, e))?;
        let mpath = self.staging.join(MANIFEST);
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&mpath)
                .map_err(|e| io_err(&mpath, e))?;
            f.write_all(&text).map_err(|e| io_err(&mpath, e))?;
            f.sync_all().map_err(|e| io_err(&mpath, e))?;
        }
        sync_path(&self.staging)?;
        let parent = parent_of(&self.target).to_path_buf();
        if !self.target.exists() {
            std::fs::rename(&self.staging, &self.target).map_err(|e| io_err(&self.target, e))?;
        } else if exchange(&self.staging, &self.target)? {
            // The old set now sits at the staging name.
        } else {
            // No atomic swap here: move the old set aside first; a crash
            // between the two renames leaves it under `.NAME.old-*`, which
            // `recover_checkpoint` puts back.
            let name = self
                .target
                .file_name()
                .unwrap_or_default()
                .to_string_lossy();
            let aside = parent.join(format!(".{name}.old-{}", random_token()));
            std::fs::rename(&self.target, &aside).map_err(|e| io_err(&self.target, e))?;
            std::fs::rename(&self.staging, &self.target).map_err(|e| io_err(&self.target, e))?;
            std::fs::rename(&aside, &self.staging).map_err(|e| io_err(&aside, e))?;
        }
        sync_path(&parent)?;
        self.done = true;
        // What is left at the staging name is the old set (or nothing).
        let _ = std::fs::remove_dir_all(&self.staging);
        Ok(manifest)
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}

/// Puts back a set a crash left moved aside (only on filesystems without an
/// atomic swap) and removes abandoned staging directories of `target`.
pub fn recover_checkpoint(target: &Path) -> Result<()> {
    let parent = parent_of(target);
    let Some(name) = target.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(());
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let n = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if n.starts_with(&format!(".{name}.old-")) && !target.exists() {
            std::fs::rename(&path, target).map_err(|e| io_err(&path, e))?;
        } else if n.starts_with(&format!(".{name}.staging-"))
            || n.starts_with(&format!(".{name}.old-"))
        {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
    Ok(())
}

/// Reads `dir`'s manifest and checks that every file it lists is there,
/// a regular file, with the recorded size and SHA-256: a set whose parts
/// come from different saves is refused, naming the file that differs.
pub fn verify_checkpoint(dir: &Path) -> Result<Manifest> {
    let mpath = dir.join(MANIFEST);
    let meta = std::fs::symlink_metadata(&mpath).map_err(|e| {
        io_err(
            &mpath,
            format!("{e}: not a complete checkpoint set (one written by `lrnnx train` has it)"),
        )
    })?;
    if !meta.is_file() || meta.len() > MAX_MANIFEST_BYTES {
        return Err(io_err(
            &mpath,
            format!(
                "expected a regular file of at most {MAX_MANIFEST_BYTES} bytes, found {} of {} bytes",
                if meta.is_file() { "a file" } else { "something else" },
                meta.len()
            ),
        ));
    }
    let text = std::fs::read(&mpath).map_err(|e| io_err(&mpath, e))?;
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| io_err(&mpath, format!("bad manifest: {e}")))?;
    for f in &manifest.files {
        if f.name.contains('/') || f.name.contains('\\') || f.name == ".." {
            return Err(io_err(
                &mpath,
                format!("bad file name `{}` in manifest", f.name),
            ));
        }
        let path = dir.join(&f.name);
        let m = std::fs::symlink_metadata(&path)
            .map_err(|e| io_err(&path, format!("{e}: listed in {MANIFEST} but missing")))?;
        if !m.is_file() {
            return Err(io_err(
                &path,
                "listed in the manifest but not a regular file",
            ));
        }
        if m.len() != f.bytes {
            return Err(io_err(
                &path,
                format!(
                    "does not belong to this checkpoint set: expected {} bytes, found {}",
                    f.bytes,
                    m.len()
                ),
            ));
        }
        let (_, sha) = digest(&path)?;
        if sha != f.sha256 {
            return Err(io_err(
                &path,
                format!(
                    "does not belong to this checkpoint set (step {}): its SHA-256 differs from the manifest's",
                    manifest.step
                ),
            ));
        }
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) {
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    #[test]
    fn a_commit_replaces_the_whole_set_and_leaves_no_staging() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("run");
        let w = CheckpointWriter::begin(&target).unwrap();
        write(w.dir(), "a", b"old a");
        write(w.dir(), "b", b"old b");
        w.commit(1).unwrap();
        let w = CheckpointWriter::begin(&target).unwrap();
        write(w.dir(), "a", b"new a");
        let m = w.commit(2).unwrap();
        assert_eq!(m.step, 2);
        assert_eq!(std::fs::read(target.join("a")).unwrap(), b"new a");
        assert!(!target.join("b").exists(), "a file of the old set survived");
        assert_eq!(verify_checkpoint(&target).unwrap(), m);
        let names: Vec<_> = std::fs::read_dir(root.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn an_uncommitted_writer_changes_nothing() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("run");
        let w = CheckpointWriter::begin(&target).unwrap();
        write(w.dir(), "a", b"1");
        w.commit(1).unwrap();
        {
            let w = CheckpointWriter::begin(&target).unwrap();
            write(w.dir(), "a", b"2");
        }
        assert_eq!(std::fs::read(target.join("a")).unwrap(), b"1");
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    }

    #[test]
    fn mixed_parts_are_refused_naming_the_file() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("run");
        let w = CheckpointWriter::begin(&target).unwrap();
        write(w.dir(), "model", b"step 1 weights");
        write(w.dir(), "optim", b"step 1 moments");
        w.commit(1).unwrap();
        // Same size, other contents: a part from another save.
        write(&target, "optim", b"step 2 moments");
        let e = verify_checkpoint(&target).unwrap_err().to_string();
        assert!(e.contains("optim") && e.contains("does not belong"), "{e}");
        std::fs::remove_file(target.join("optim")).unwrap();
        let e = verify_checkpoint(&target).unwrap_err().to_string();
        assert!(e.contains("optim") && e.contains("missing"), "{e}");
    }

    #[test]
    fn foreign_targets_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let notes = root.path().join("notes");
        std::fs::create_dir(&notes).unwrap();
        write(&notes, "thesis.tex", b"precious");
        let e = CheckpointWriter::begin(&notes).unwrap_err().to_string();
        assert!(
            e.contains("no checkpoint.json") && e.contains("refusing"),
            "{e}"
        );
        let file = root.path().join("file");
        write(root.path(), "file", b"x");
        assert!(CheckpointWriter::begin(&file).is_err());
        #[cfg(unix)]
        {
            let link = root.path().join("link");
            std::os::unix::fs::symlink(&notes, &link).unwrap();
            let e = CheckpointWriter::begin(&link).unwrap_err().to_string();
            assert!(e.contains("symbolic link"), "{e}");
        }
        assert_eq!(
            std::fs::read(notes.join("thesis.tex")).unwrap(),
            b"precious"
        );
    }

    #[test]
    fn a_set_moved_aside_by_a_crash_is_put_back() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("run");
        let w = CheckpointWriter::begin(&target).unwrap();
        write(w.dir(), "a", b"1");
        w.commit(1).unwrap();
        // The fallback's crash window: old set aside, new one not yet in place.
        std::fs::rename(&target, root.path().join(".run.old-0123")).unwrap();
        std::fs::create_dir(root.path().join(".run.staging-4567")).unwrap();
        recover_checkpoint(&target).unwrap();
        assert_eq!(verify_checkpoint(&target).unwrap().step, 1);
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    }
}
