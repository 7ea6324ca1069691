//! A seeded random-mutation loop over the real lrnnx checkpoints
//! (`tests/data/lrnnx/checkpoints`, as the golden README describes them),
//! bounded to a few seconds: the reader must never panic, and must either
//! refuse a mutated file with an error naming it or return well-formed tensors.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use candle_core::Device;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::hostile_tests::{checkpoints, zip_file};
use super::read_state_dict;

/// The members of a real checkpoint, in archive order.
fn members(path: &Path) -> Vec<(String, Vec<u8>)> {
    use std::io::Read;
    let mut z = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    (0..z.len())
        .map(|i| {
            let mut f = z.by_index(i).unwrap();
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).unwrap();
            (f.name().unwrap().to_string(), buf)
        })
        .collect()
}

/// One random mutation of `bytes`, described for the failure message.
fn mutate(rng: &mut StdRng, bytes: &mut Vec<u8>) -> String {
    const SPECIAL: [u8; 8] = [0x00, 0x01, 0x7f, 0x80, 0xff, b'(', b't', 0x85];
    if bytes.is_empty() {
        bytes.push(rng.random());
        return "grow an empty input".into();
    }
    let at = rng.random_range(0..bytes.len());
    match rng.random_range(0..7) {
        0 => {
            let n = rng.random_range(1..=8);
            for _ in 0..n {
                let i = rng.random_range(0..bytes.len());
                bytes[i] ^= 1 << rng.random_range(0..8);
            }
            format!("flip {n} bits")
        }
        1 => {
            bytes[at] = SPECIAL[rng.random_range(0..SPECIAL.len())];
            format!("special byte at {at}")
        }
        2 => {
            let n = rng.random_range(1..=16).min(bytes.len() - at);
            rng.fill(&mut bytes[at..at + n]);
            format!("randomise {n} bytes at {at}")
        }
        3 => {
            bytes.truncate(at);
            format!("truncate to {at}")
        }
        4 => {
            let n = rng.random_range(1..=64).min(bytes.len() - at);
            bytes.drain(at..at + n);
            format!("delete {n} bytes at {at}")
        }
        5 => {
            let n = rng.random_range(1..=64).min(bytes.len() - at);
            let chunk: Vec<u8> = bytes[at..at + n].to_vec();
            let to = rng.random_range(0..=bytes.len());
            bytes.splice(to..to, chunk);
            format!("copy {n} bytes from {at} to {to}")
        }
        _ => {
            // An 8-byte little-endian figure, as sizes, strides and offsets are.
            let v: u64 = match rng.random_range(0..4) {
                0 => 0,
                1 => u64::MAX,
                2 => 1 << rng.random_range(0..64),
                _ => rng.random(),
            };
            let end = (at + 8).min(bytes.len());
            bytes[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
            format!("write {v} at {at}")
        }
    }
}

/// Reads `path`: a panic fails the test; a result must be well-formed.
fn read_without_panic(path: &Path, what: &str) {
    match catch_unwind(AssertUnwindSafe(|| read_state_dict(path, &Device::Cpu))) {
        Err(_) => panic!("the reader panicked on {what}"),
        Ok(Err(e)) => assert!(
            e.to_string().contains(&path.display().to_string()),
            "{what}: an error that does not name the file: {e}"
        ),
        Ok(Ok(tensors)) => {
            for (name, t) in &tensors {
                let dims = t.dims();
                let numel: usize = dims.iter().product();
                assert_eq!(t.elem_count(), numel, "{what}: {name}");
                // Every value is there to be read.
                t.flatten_all()
                    .and_then(|f| f.to_dtype(candle_core::DType::F64))
                    .and_then(|f| f.to_vec1::<f64>())
                    .unwrap_or_else(|e| panic!("{what}: {name}: {e}"));
            }
        }
    }
}

#[test]
fn random_mutations_of_real_checkpoints_never_panic() {
    let cases = [
        "lrnnx_lm_small",
        "lrnnx_lm_small_untied",
        "lrnnx_lm_small_kwargs",
    ];
    let mut rng = StdRng::seed_from_u64(0x1a2b_3c4d);
    let out = tempfile::NamedTempFile::new().unwrap();
    let started = std::time::Instant::now();
    let budget = std::time::Duration::from_secs(4);
    let mut runs = 0;
    'outer: for round in 0..1500 {
        for case in cases {
            if started.elapsed() > budget {
                break 'outer;
            }
            let path = checkpoints().join(case).join("pytorch_model.bin");
            // Half the time the pickle is mutated and the archive rebuilt (a
            // mutation inside a zip member would mostly fail its CRC);
            // otherwise the file's bytes are.
            let (bytes, what) = if round % 2 == 0 {
                let mut m = members(&path);
                let which = if rng.random_bool(0.8) {
                    m.iter().position(|(n, _)| n.ends_with("data.pkl")).unwrap()
                } else {
                    rng.random_range(0..m.len())
                };
                let mut steps = Vec::new();
                for _ in 0..rng.random_range(1..=4) {
                    steps.push(mutate(&mut rng, &mut m[which].1));
                }
                let refs: Vec<(&str, &[u8])> =
                    m.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
                let z = zip_file(&refs);
                let what = format!("{case} member {}: {}", m[which].0, steps.join(", "));
                (std::fs::read(z.path()).unwrap(), what)
            } else {
                let mut b = std::fs::read(&path).unwrap();
                let step = mutate(&mut rng, &mut b);
                (b, format!("{case} file: {step}"))
            };
            std::fs::write(out.path(), &bytes).unwrap();
            read_without_panic(out.path(), &format!("round {round}, {what}"));
            runs += 1;
        }
    }
    assert!(runs >= 30, "only {runs} mutations ran in {budget:?}");
}
