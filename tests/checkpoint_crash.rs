//! Checkpoint sets survive a killed `lrnnx train` and a full disk: after
//! either, the output directory holds one whole set (old or new), which
//! `--resume` accepts, never a mix.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use lrnnx::train::{verify_checkpoint, TrainerRecord, TRAINER_FILE};

/// A tiny LRU + attention training run into `out` that never evaluates.
fn train(out: &Path, steps: usize, save_every: usize, resume: bool) -> Command {
    let mut c = common::cli::tiny_train("LRU,attn", out);
    c.args([
        "--mixer-kwargs",
        r#"{"attn": {"num_heads": 2, "causal": true}}"#,
        "--eval-every",
        "1000000",
        "--steps",
        &steps.to_string(),
        "--save-every",
        &save_every.to_string(),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    if resume {
        c.arg("--resume").arg(out);
    }
    c
}

/// The set in `dir` is whole: manifest matches the files, the trainer record
/// names the same set, the model loads. Returns its step.
fn whole_set_step(dir: &Path) -> u64 {
    let m = verify_checkpoint(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let rec: TrainerRecord =
        serde_json::from_slice(&std::fs::read(dir.join(TRAINER_FILE)).unwrap()).unwrap();
    assert_eq!(
        (rec.checkpoint_id.as_str(), rec.step as u64),
        (m.id.as_str(), m.step)
    );
    lrnnx::init();
    lrnnx::LRNNLMHeadModel::from_pretrained(dir, None, &candle_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    m.step
}

#[test]
fn killing_train_at_random_moments_leaves_one_whole_set() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("run");
    // A fixed sequence of kill delays: reproducible, spread over start-up,
    // training and saving (a save happens every step).
    let delays_ms = [250u64, 900, 430, 1300, 610, 1700, 350, 1100];
    let mut last = 0;
    for d in delays_ms {
        let resume = out.exists();
        let mut child = train(&out, 100_000, 1, resume).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(d));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if out.exists() {
            let step = whole_set_step(&out);
            assert!(step >= last, "the set went back from step {last} to {step}");
            last = step;
        }
    }
    assert!(
        last > 0,
        "no save completed in {delays_ms:?} ms of training"
    );
    // The run completes from whatever the kills left.
    let o = train(&out, last as usize + 2, 1, true).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(whole_set_step(&out), last + 2);
    let stray: Vec<PathBuf> = std::fs::read_dir(root.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p != &out)
        .collect();
    assert!(stray.is_empty(), "staging left behind: {stray:?}");
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[test]
fn a_full_disk_keeps_the_old_set() {
    let probe = tempfile::tempdir().unwrap();
    let o = train(&probe.path().join("run"), 1, 1, false)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let set = dir_bytes(&probe.path().join("run"));
    // Room for one set and a half: the second save cannot stage.
    let size = (set * 3 / 2).div_ceil(4096) * 4096 + 64 * 1024;
    let mnt = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(mnt.path())
        .output();
    match mounted {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!(
                "skipped: cannot mount a small tmpfs here ({}); needs root",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return;
        }
        Err(e) => {
            eprintln!("skipped: no `mount` command ({e})");
            return;
        }
    }
    let out = mnt.path().join("run");
    let o = train(&out, 3, 1, false).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let step = if out.exists() {
        Some(whole_set_step(&out))
    } else {
        None
    };
    let leftovers: Vec<_> = std::fs::read_dir(mnt.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let _ = Command::new("umount").arg(mnt.path()).status();
    assert!(!o.status.success(), "training into a full disk succeeded");
    assert!(err.to_lowercase().contains("space"), "{err}");
    assert_eq!(
        step,
        Some(1),
        "the first set should survive the failed second save"
    );
    assert_eq!(leftovers, vec![out], "a failed save left files behind");
}
