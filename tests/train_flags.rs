//! `lrnnx train` refuses implausible flag values with a message naming
//! them, and `--resume` refuses flags that disagree with the checkpoint.

mod common;

use common::cli::{run as run_command, tiny_train};

/// Trains a tiny LRU model into `out` with `extra` flags on top of the tiny
/// ones; gives the exit status and stderr.
fn run(extra: &[&str], out: &std::path::Path) -> (bool, String) {
    let ran = run_command(tiny_train("LRU", out).args(extra));
    (ran.ok, ran.stderr)
}

#[test]
fn implausible_values_are_refused_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    for (flags, needle) in [
        (&["--eval-every", "0"][..], "eval_every"),
        (&["--save-every", "0"][..], "save_every"),
        (&["--seq-len", "0"][..], "seq_len"),
        (&["--steps", "0"][..], "steps"),
        (&["--batch-size", "100000000"][..], "batch_size"),
        (&["--lr=-1"][..], "lr must be positive"),
        (&["--lr", "NaN"][..], "lr must be positive"),
        (&["--min-lr", "1"][..], "min_lr"),
        (&["--weight-decay", "inf"][..], "weight_decay"),
        (&["--val-fraction", "0"][..], "val_fraction"),
        (&["--steps", "100000000000"][..], "steps"),
        (&["--grad-accum", "0"][..], "grad_accum_steps"),
        (&["--grad-accum", "5000"][..], "grad_accum_steps"),
        (&["--corpus", "/dev/zero"][..], "regular file"),
        (&["--config", "/dev/zero"][..], "regular file"),
    ] {
        let (ok, err) = run(flags, &out);
        assert!(!ok, "{flags:?} accepted");
        assert!(
            err.contains(needle) && !err.contains("panicked"),
            "{flags:?}: {err}"
        );
        assert!(!out.exists(), "{flags:?} wrote a checkpoint");
    }
}

#[test]
fn resume_refuses_flags_that_disagree_with_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (ok, err) = run(&["--steps", "2", "--save-every", "1"], &out);
    assert!(ok, "{err}");
    let resume = ["--steps", "3", "--resume", out.to_str().unwrap()];
    for flags in [&["--d-model", "32"][..], &["--mixers", "S7"][..]] {
        let (ok, err) = run(&[&resume[..], flags].concat(), &out);
        assert!(
            !ok && err.contains(flags[0]) && err.contains("checkpoint"),
            "{flags:?}: {err}"
        );
    }
    // The same flags as the checkpoint's are fine.
    let (ok, err) = run(&resume, &out);
    assert!(ok, "{err}");
    // A directory that is not ours is never replaced.
    let foreign = dir.path().join("notes");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("thesis.tex"), "precious").unwrap();
    let (ok, err) = run(&["--steps", "1"], &foreign);
    assert!(!ok && err.contains("refusing to replace"), "{err}");
    assert_eq!(
        std::fs::read_to_string(foreign.join("thesis.tex")).unwrap(),
        "precious"
    );
}

#[test]
fn grad_accum_trains_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (ok, err) = run(&["--steps", "2", "--grad-accum", "3"], &out);
    assert!(ok, "{err}");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("trainer.json")).unwrap()).unwrap();
    assert_eq!(record["step"], 2);
    assert_eq!(record["config"]["grad_accum_steps"], 3);
}
