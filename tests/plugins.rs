//! Run-time plugins end to end: the minGRU plugin loaded into this process and
//! used in a language model; deliberately broken plugins refused with clear
//! errors while the registry keeps working; the CLI's `--plugin` and
//! `LRNNX_PLUGIN_PATH`; a model saved with a plugin mixer reloaded with and
//! without the plugin.
//!
//! The plugins (`plugins/mingru` and the cdylib examples of `plugins/testkit`)
//! are built once, by one `cargo build` run from here with this test's profile.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use common::cli::{lrnnx as lrnnx_command, run};
use common::lm::{
    forward, logits_at, max_diff, prefilled, saved_config, stepped_logits, token_ids,
};
use lrnnx::plugin::{load_plugin, loaded_plugins, ABI_FINGERPRINT};
use lrnnx::{
    BuildArgs, Error, ForwardOpts, LRNNLMHeadModel, LmConfig, LmForwardOpts, Origin, ParamStore,
    Registry,
};

/// Where the plugin libraries are.
struct Built {
    /// `target/<profile>`.
    profile_dir: PathBuf,
}

impl Built {
    fn mingru(&self) -> PathBuf {
        self.profile_dir.join(lib_name("lrnnx_mingru"))
    }

    fn testkit(&self, name: &str) -> PathBuf {
        self.profile_dir.join("examples").join(lib_name(name))
    }
}

fn lib_name(stem: &str) -> String {
    format!(
        "{}{stem}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

/// Builds every test plugin in one cargo invocation (a no-op when fresh).
fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        // This test runs from target/<profile>/deps/.
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let target_dir = profile_dir.parent().unwrap();
        let profile = match profile_dir.file_name().unwrap().to_str().unwrap() {
            "debug" => "dev".to_string(),
            other => other.to_string(),
        };
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("CARGO_TARGET_DIR", target_dir)
            .args(["build", "--quiet", "--profile", &profile])
            .args([
                "-p",
                "lrnnx-mingru",
                "-p",
                "lrnnx-plugin-testkit",
                "--lib",
                "--examples",
            ]);
        if cfg!(feature = "cuda") {
            cmd.args(["--features", "lrnnx-mingru/cuda,lrnnx-plugin-testkit/cuda"]);
        }
        let out = cmd
            .output()
            .expect("running cargo build for the test plugins");
        assert!(
            out.status.success(),
            "building the test plugins failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Built { profile_dir }
    })
}

fn mingru_loaded() -> PathBuf {
    let path = built().mingru();
    load_plugin(&path).unwrap_or_else(|e| panic!("{e}"));
    path.canonicalize().unwrap()
}

fn hybrid_config() -> LmConfig {
    let mut cfg = LmConfig::new(24, 8, 50, &["minGRU", "LRU", "attn"]);
    cfg.mixer_kwargs = serde_json::from_str(
        r#"{"minGRU": {"expansion_factor": 1.5}, "attn": {"num_heads": 2, "causal": true}}"#,
    )
    .unwrap();
    cfg
}

fn ids(b: usize, l: usize) -> Tensor {
    token_ids(b, l, 7, 3, 50)
}

#[test]
fn min_gru_plugin_registers_and_runs_in_a_hybrid_lm() {
    let path = mingru_loaded();
    let entry = Registry::get("minGRU").unwrap();
    assert_eq!(entry.origin, Origin::Plugin(path.clone()));
    assert_eq!(entry.spec.source, "lrnnx-mingru");
    assert_eq!(Registry::get("mingru").unwrap().spec.name, "minGRU");
    // Loading again is a no-op that reports the same mixers.
    let again = load_plugin(built().mingru()).unwrap();
    assert_eq!(again.mixers, vec!["minGRU".to_string()]);
    assert!(loaded_plugins().iter().any(|p| p.path == path));

    let model = LRNNLMHeadModel::init(hybrid_config(), 0, &Device::Cpu).unwrap();
    let (b, l) = (2, 9);
    let x = ids(b, l);
    let logits = forward(&model, &x);
    assert_eq!(logits.dims(), &[b, l, 56]);

    let d = max_diff(&stepped_logits(&model, &x), &logits);
    assert!(d < 1e-4, "step differs from forward by {d}");

    let (last, _) = prefilled(&model, &x, 5);
    assert!(max_diff(&last, &logits_at(&logits, 4)) < 1e-4);

    // The plugin's config serializes through the host's serde, every default filled in.
    let dir = tempfile::tempdir().unwrap();
    model.save_pretrained(dir.path()).unwrap();
    let config = saved_config(dir.path());
    assert_eq!(
        config["layers"][0],
        serde_json::json!({"type": "minGRU", "expansion_factor": 1.5, "proj_out": true})
    );
    let reloaded = LRNNLMHeadModel::from_pretrained(dir.path(), None, &Device::Cpu).unwrap();
    assert_eq!(
        max_diff(&forward(&reloaded, &x), &logits),
        0.0,
        "reloaded logits differ"
    );
}

fn refused(path: &Path) -> String {
    match load_plugin(path) {
        Ok(p) => panic!("{} was loaded: {p:?}", path.display()),
        Err(e @ Error::Plugin { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&*path.to_string_lossy()), "{text}");
            text
        }
        Err(other) => panic!("expected Error::Plugin, found {other:?}"),
    }
}

#[test]
fn broken_plugins_are_refused_with_clear_errors_and_the_host_keeps_working() {
    let b = built();

    // Built "by another compiler": refused before its entry (which aborts) runs.
    let e = refused(&b.testkit("plugin_bad_fingerprint"));
    assert!(
        e.contains("ABI fingerprint mismatch")
            && e.contains(ABI_FINGERPRINT)
            && e.contains("rustc 1.0.0"),
        "{e}"
    );

    let e = refused(&b.testkit("plugin_no_fingerprint"));
    assert!(
        e.contains("not an lrnnx plugin") && e.contains("lrnnx_plugin_fingerprint"),
        "{e}"
    );

    let e = refused(&b.testkit("plugin_no_entry"));
    assert!(
        e.contains("fingerprint matches") && e.contains("`lrnnx_plugin_v1` is missing"),
        "{e}"
    );

    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join(lib_name("random_bytes"));
    let bytes: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&junk, bytes).unwrap();
    let e = refused(&junk);
    assert!(e.contains("not a loadable shared library"), "{e}");

    let e = refused(&b.testkit("plugin_panics"));
    assert!(
        e.contains("registration panicked") && e.contains("exploded on purpose"),
        "{e}"
    );
    // What it registered before panicking was not kept.
    assert!(Registry::get("PanicTestA").is_err());

    let e = refused(&b.testkit("plugin_duplicate"));
    assert!(
        e.contains("`LRU` is already registered") && e.contains("lrnnx-lru"),
        "{e}"
    );
    assert!(Registry::get("DupTestB").is_err());
    assert_eq!(Registry::get("LRU").unwrap().origin, Origin::Linked);

    // The registry and the built-ins still work.
    let cfg = LmConfig::new(16, 4, 20, &["LRU"]);
    let m = LRNNLMHeadModel::init(cfg, 1, &Device::Cpu).unwrap();
    assert_eq!(
        m.forward(&ids(1, 3), &LmForwardOpts::default())
            .unwrap()
            .dims(),
        &[1, 3, 24]
    );
    assert!(Registry::all().iter().any(|r| r.spec.name == "attn"));
}

#[test]
fn panics_inside_plugin_mixers_come_back_as_errors() {
    load_plugin(built().testkit("plugin_panicky_mixer")).unwrap();
    let store = ParamStore::init(0, candle_core::DType::F32, &Device::Cpu);
    let args = BuildArgs {
        d_model: 4,
        d_state: 2,
        layer_idx: 3,
        kwargs: Default::default(),
        params: store.builder(),
    };
    let e = Registry::build("PanickyBuild", &args)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("panicked while building layer 3") && e.contains("builder exploded"),
        "{e}"
    );
    let m = Registry::build("PanickyForward", &args).unwrap();
    let x = Tensor::zeros((1, 2, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    let e = m.forward(&x, &ForwardOpts::default()).unwrap_err();
    assert!(matches!(e, Error::Plugin { .. }), "{e}");
    let e = e.to_string();
    assert!(
        e.contains("panicked in forward") && e.contains("toy forward exploded"),
        "{e}"
    );
    // The mixer still answers afterwards.
    let mut st = m
        .init_state(1, 2, candle_core::DType::F32, &Device::Cpu)
        .unwrap();
    let y = m
        .step(&x.narrow(1, 0, 1).unwrap(), &mut st, &Default::default())
        .unwrap();
    assert_eq!(y.dims(), &[1, 1, 4]);
}

#[test]
fn a_plugin_may_register_more_than_32_mixers() {
    let loaded = load_plugin(built().testkit("plugin_many_mixers")).unwrap();
    let expected: Vec<String> = (0..50).map(|i| format!("ManyToy{i}")).collect();
    assert_eq!(loaded.mixers, expected);
    let store = ParamStore::init(0, candle_core::DType::F32, &Device::Cpu);
    let x = Tensor::ones((1, 3, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    // Every one builds and runs: those past the old 32-slot table, and those
    // sharing one wrapper.
    for name in &expected {
        let args = BuildArgs {
            d_model: 4,
            d_state: 2,
            layer_idx: 0,
            kwargs: Default::default(),
            params: store.builder(),
        };
        let m = Registry::build(name, &args).unwrap_or_else(|e| panic!("{name}: {e}"));
        let y = m.forward(&x, &ForwardOpts::default()).unwrap();
        assert_eq!(max_diff(&y, &x), 0.0, "{name}");
    }
}

/// Runs `lrnnx args…` with `LRNNX_PLUGIN_PATH` set to `plugin_path` (unset
/// when `None`); gives the exit status and stdout followed by stderr.
fn lrnnx(args: &[&str], plugin_path: Option<&str>) -> (bool, String) {
    let mut cmd = lrnnx_command();
    cmd.args(args).env_remove("LRNNX_PLUGIN_PATH");
    if let Some(p) = plugin_path {
        cmd.env("LRNNX_PLUGIN_PATH", p);
    }
    let ran = run(&mut cmd);
    (ran.ok, ran.text())
}

#[test]
fn cli_lists_plugin_mixers_and_reloads_their_models_only_with_the_plugin() {
    let path = mingru_loaded();
    let so = path.to_str().unwrap();

    let (ok, out) = lrnnx(&["mixers", "--plugin", so], None);
    assert!(ok, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("minGRU"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains(&format!("plugin {so}")) && line.contains("LTV"),
        "{line}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("LRU ") && l.contains("lrnnx-lru")),
        "{out}"
    );

    // LRNNX_PLUGIN_PATH: a directory (holding a link to the plugin) and a
    // missing entry, which only warns.
    let dir = tempfile::tempdir().unwrap();
    let plugdir = dir.path().join("plugins");
    std::fs::create_dir(&plugdir).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(&path, plugdir.join(lib_name("lrnnx_mingru"))).unwrap();
    #[cfg(not(unix))]
    std::fs::copy(&path, plugdir.join(lib_name("lrnnx_mingru"))).unwrap();
    let list = std::env::join_paths([plugdir.as_path(), Path::new("/no/such/plugin.so")])
        .unwrap()
        .into_string()
        .unwrap();
    let (ok, out) = lrnnx(&["mixers"], Some(&list));
    assert!(ok, "{out}");
    assert!(out.lines().any(|l| l.starts_with("minGRU")), "{out}");
    assert!(
        out.contains("/no/such/plugin.so") && out.contains("cannot open"),
        "{out}"
    );

    // An explicit --plugin that fails is an error.
    let (ok, out) = lrnnx(&["mixers", "--plugin", "/no/such/plugin.so"], None);
    assert!(!ok && out.contains("/no/such/plugin.so"), "{out}");

    // A model saved with the plugin mixer.
    let model_dir = dir.path().join("model");
    LRNNLMHeadModel::init(hybrid_config(), 3, &Device::Cpu)
        .unwrap()
        .save_pretrained(&model_dir)
        .unwrap();
    let model = model_dir.to_str().unwrap();
    let (ok, out) = lrnnx(&["info", model], None);
    assert!(!ok, "{out}");
    assert!(out.contains("minGRU"), "{out}");
    let saved = std::fs::read_to_string(model_dir.join("config.json")).unwrap();
    if saved.contains("mixer_sources") {
        // The saved config records which plugin each layer's mixer came from.
        assert!(out.contains(so) && out.contains("--plugin"), "{out}");
    } else {
        assert!(
            out.contains("--plugin") && out.contains("LRNNX_PLUGIN_PATH"),
            "{out}"
        );
    }
    let (ok, out) = lrnnx(&["info", model, "--plugin", so], None);
    assert!(ok, "{out}");
    let (ok, out) = lrnnx(&["info", model], Some(&list));
    assert!(ok, "{out}");
}

/// The example of a mixer from an external crate, run as a test.
#[path = "../examples/custom_mixer.rs"]
mod custom_mixer;

#[test]
fn custom_mixer_example_runs() {
    custom_mixer::main().unwrap();
    let entry = Registry::get("MyGLR").unwrap();
    assert_eq!(entry.origin, Origin::Linked);
    // `mixers!` records the declaring crate (here the example is built into `lrnnx`'s tests).
    assert_eq!(entry.spec.source, env!("CARGO_PKG_NAME"));
    assert_eq!(entry.spec.aliases, ["my_glr"]);
}
