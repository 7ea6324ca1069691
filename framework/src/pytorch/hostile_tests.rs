//! Hostile and broken `pytorch_model.bin` files: one test per family of
//! attack, each file crafted here (a few hundred bytes unless the attack
//! needs more). `fuzz_tests.rs` mutates the real checkpoints at random.

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use candle_core::Device;

use super::limits::{MAX_MEMO_ENTRIES, MAX_NESTING, MAX_PICKLE_BYTES};
use super::read_state_dict;

pub(super) fn checkpoints() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/lrnnx/checkpoints")
}

/// A stored (uncompressed) zip archive holding `members`.
pub(super) fn zip_file(members: &[(&str, &[u8])]) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    let mut z = zip::ZipWriter::new(f.reopen().unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in members {
        z.start_file(*name, opts).unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap();
    f
}

/// Reads `path`, failing the test on a panic or a success; returns the error text.
fn refused(path: &Path) -> String {
    match catch_unwind(AssertUnwindSafe(|| read_state_dict(path, &Device::Cpu))) {
        Ok(Ok(t)) => panic!("read {} tensors from a hostile file", t.len()),
        Ok(Err(e)) => {
            let e = e.to_string();
            assert!(e.contains(&path.display().to_string()), "{e}");
            e
        }
        Err(_) => panic!("the reader panicked"),
    }
}

/// Emits pickle opcodes, with every int as an 8-byte LONG1 (any i64 fits).
#[derive(Default)]
struct Pickle(Vec<u8>);

impl Pickle {
    fn op(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }
    fn int(&mut self, v: i64) -> &mut Self {
        self.0.extend([0x8a, 8]);
        self.0.extend(v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.0.push(b'X');
        self.0.extend((s.len() as u32).to_le_bytes());
        self.0.extend(s.as_bytes());
        self
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.0.push(b'c');
        self.0.extend(format!("{module}\n{name}\n").as_bytes());
        self
    }
    fn ints(&mut self, v: &[i64]) -> &mut Self {
        self.op(b"(");
        for &x in v {
            self.int(x);
        }
        self.op(b"t")
    }
    fn header(&mut self) -> &mut Self {
        self.op(&[0x80, 2]).global("collections", "OrderedDict");
        self.op(b")R(")
    }
    /// One `name: _rebuild_tensor_v2(FloatStorage key, offset, size, stride)` entry.
    fn tensor(
        &mut self,
        name: &str,
        key: &str,
        numel: i64,
        offset: i64,
        size: &[i64],
        stride: &[i64],
    ) -> &mut Self {
        self.str(name)
            .global("torch._utils", "_rebuild_tensor_v2")
            .op(b"((")
            .str("storage")
            .global("torch", "FloatStorage")
            .str(key)
            .str("cpu")
            .int(numel)
            .op(b"tQ")
            .int(offset)
            .ints(size)
            .ints(stride)
            .op(&[0x89])
            .global("collections", "OrderedDict")
            .op(b")RtR")
    }
    fn footer(&mut self) -> Vec<u8> {
        self.op(b"u.");
        std::mem::take(&mut self.0)
    }
}

/// An archive with one float tensor over a storage of `storage_floats` floats.
fn one_tensor(storage_floats: usize, offset: i64, size: &[i64], stride: &[i64]) -> String {
    let pickle = Pickle::default()
        .header()
        .tensor("w", "0", storage_floats as i64, offset, size, stride)
        .footer();
    let storage = vec![0u8; storage_floats * 4];
    let f = zip_file(&[("archive/data.pkl", &pickle), ("archive/data/0", &storage)]);
    refused(f.path())
}

#[test]
fn the_crafting_helpers_make_readable_files() {
    // The same helpers with sane figures read back: the refusals below are
    // the figures', not the helpers'.
    let pickle = Pickle::default()
        .header()
        .tensor("w", "0", 6, 1, &[2, 2], &[1, 2])
        .footer();
    let storage: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let f = zip_file(&[("archive/data.pkl", &pickle), ("archive/data/0", &storage)]);
    let t = read_state_dict(f.path(), &Device::Cpu).unwrap();
    // offset 1, stride (1, 2): [[s1, s3], [s2, s4]].
    assert_eq!(
        t["w"].to_vec2::<f32>().unwrap(),
        vec![vec![1.0, 3.0], vec![2.0, 4.0]]
    );
}

#[test]
fn element_counts_are_bounded_by_the_storage_present() {
    // Stride 0: 2^33 elements over one float.
    let e = one_tensor(1, 0, &[1 << 33], &[0]);
    assert!(
        e.contains("8589934592 elements") && e.contains("at most the 1") && e.contains("stride 0"),
        "{e}"
    );
    // A size whose element count overflows.
    let e = one_tensor(4, 0, &[1 << 32, 1 << 32, 2], &[0, 0, 0]);
    assert!(e.contains("more elements than fit"), "{e}");
    // A storage that declares more elements than fit in memory.
    let pickle = Pickle::default()
        .header()
        .tensor("w", "0", i64::MAX, 0, &[1], &[1])
        .footer();
    let f = zip_file(&[("archive/data.pkl", &pickle), ("archive/data/0", &[0u8; 4])]);
    let e = refused(f.path());
    assert!(
        e.contains("storage 0 declares") || e.contains("expected at most"),
        "{e}"
    );
    // A storage holding fewer bytes than it declares.
    let pickle = Pickle::default()
        .header()
        .tensor("w", "0", 4, 0, &[4], &[1])
        .footer();
    let f = zip_file(&[
        ("archive/data.pkl", &pickle),
        ("archive/data/0", &[0u8; 12]),
    ]);
    let e = refused(f.path());
    assert!(
        e.contains("expected 16 bytes") && e.contains("found 12"),
        "{e}"
    );
    // Many full views of one storage (shared references, amplified).
    let mut p = Pickle::default();
    p.header();
    for i in 0..100 {
        p.tensor(&format!("w{i}"), "0", 256, 0, &[256], &[1]);
    }
    let pickle = p.footer();
    let f = zip_file(&[
        ("archive/data.pkl", &pickle),
        ("archive/data/0", &[0u8; 1024]),
    ]);
    let e = refused(f.path());
    assert!(e.contains("times the 256 elements"), "{e}");
}

#[test]
fn offsets_and_strides_use_overflow_safe_arithmetic() {
    // An offset near 2^63 (this panicked on a slice index).
    let e = one_tensor(4, i64::MAX - 4, &[4], &[1]);
    assert!(
        e.contains("reaches element 9223372036854775806") && e.contains("the 4 elements"),
        "{e}"
    );
    // Offset plus (size - 1) * stride past 2^64, and (size - 1) * stride alone.
    let e = one_tensor(4, i64::MAX, &[4], &[1 << 62]);
    assert!(e.contains("overflows"), "{e}");
    let e = one_tensor(4, 0, &[4], &[i64::MAX]);
    assert!(e.contains("overflows"), "{e}");
    let e = one_tensor(4, 0, &[2, 2], &[i64::MAX, 1]);
    assert!(
        e.contains("reaches element") || e.contains("overflows"),
        "{e}"
    );
    // A size-1 dimension with a huge stride is fine: it is never stepped.
    let pickle = Pickle::default()
        .header()
        .tensor("w", "0", 2, 0, &[1, 2], &[i64::MAX, 1])
        .footer();
    let f = zip_file(&[("archive/data.pkl", &pickle), ("archive/data/0", &[0u8; 8])]);
    let t = read_state_dict(f.path(), &Device::Cpu).unwrap();
    assert_eq!(t["w"].dims(), &[1, 2]);
    // Negative offsets, sizes and strides.
    assert!(one_tensor(4, -1, &[1], &[1]).contains("offset >= 0, found -1"));
    assert!(one_tensor(4, 0, &[-4], &[1]).contains("non-negative ints, found -4"));
    assert!(one_tensor(4, 0, &[4], &[-1]).contains("non-negative ints, found -1"));
    // Size and stride of different ranks; too many dimensions.
    assert!(one_tensor(4, 0, &[2, 2], &[1]).contains("2 dimensions and 1 strides"));
    let e = one_tensor(4, 0, &[1; 65], &[1; 65]);
    assert!(e.contains("at most 64 dimensions, found 65"), "{e}");
}

#[test]
fn memo_copies_and_memo_entries_are_bounded() {
    // A tuple doubled sixty times through the memo: 2^60 values if copied.
    let mut p = Pickle::default();
    p.op(&[0x80, 2, b')']);
    for _ in 0..60 {
        p.op(&[b'q', 0, b'h', 0, 0x86]);
    }
    let pickle = p.footer();
    assert!(pickle.len() < 400);
    let f = zip_file(&[("archive/data.pkl", &pickle)]);
    let e = refused(f.path());
    assert!(e.contains("copy at most") && e.contains("memo"), "{e}");

    // More memo entries than allowed (distinct LONG_BINPUT keys).
    let mut p = Pickle::default();
    p.op(&[0x80, 2, b'N']);
    for k in 0..=MAX_MEMO_ENTRIES as u32 {
        p.op(b"r").op(&k.to_le_bytes());
    }
    let pickle = p.footer();
    let f = zip_file(&[("archive/data.pkl", &pickle)]);
    let e = refused(f.path());
    assert!(
        e.contains(&format!("at most {MAX_MEMO_ENTRIES} memo entries")),
        "{e}"
    );
    // A memo entry that was never defined.
    let f = zip_file(&[("archive/data.pkl", &[0x80, 2, b'h', 7, b'.'])]);
    assert!(refused(f.path()).contains("memo entry 7"));
}

#[test]
fn nesting_is_bounded_without_recursion() {
    // 2 MB of TUPLE1: a tuple nested two million deep.
    let mut pickle = vec![0x80, 2, b')'];
    pickle.extend(std::iter::repeat_n(0x85, 2 << 20));
    pickle.push(b'.');
    let f = zip_file(&[("archive/data.pkl", &pickle)]);
    let e = refused(f.path());
    assert!(
        e.contains(&format!("nested at most {MAX_NESTING} deep, found 65")),
        "{e}"
    );
    // The same with MARK ... TUPLE, and with lists and dicts.
    let mut pickle = vec![0x80, 2];
    pickle.extend(std::iter::repeat_n(b'(', 1 << 20));
    pickle.extend(std::iter::repeat_n(b't', 1 << 20));
    pickle.push(b'.');
    let f = zip_file(&[("archive/data.pkl", &pickle)]);
    assert!(refused(f.path()).contains("nested at most"));
    // Lists: N empty lists, then APPENDs nest each into the one below.
    let mut pickle = vec![0x80, 2];
    pickle.extend(std::iter::repeat_n(b']', 1 << 18));
    pickle.extend(std::iter::repeat_n(b'a', (1 << 18) - 1));
    pickle.push(b'.');
    let f = zip_file(&[("archive/data.pkl", &pickle)]);
    let e = refused(f.path());
    assert!(e.contains("nested at most"), "{e}");
    // Dicts: {} None {} None ... {}, then SETITEMs: d[None] = the dict above.
    let mut pickle = vec![0x80, 2, b'}'];
    for _ in 0..(1 << 18) {
        pickle.extend([b'N', b'}']);
    }
    pickle.extend(std::iter::repeat_n(b's', 1 << 18));
    pickle.push(b'.');
    let f = zip_file(&[("archive/data.pkl", &pickle)]);
    let e = refused(f.path());
    assert!(e.contains("nested at most"), "{e}");
}

#[test]
fn malformed_pickles_are_named_errors() {
    for (pickle, want) in [
        (&b"\x80\x02N0"[..], "unsupported pickle opcode 0x30"),
        (b"\x80\x02(t", "the pickle ends early"),
        (b"\x80\x02t.", "expected a MARK"),
        (b"\x80\x02N(0", "unsupported pickle opcode"),
        (
            b"\x80\x02N(\x85.",
            "TUPLE1: expected 1 values on the stack, found 0",
        ),
        (b"\x80\x02}(Nu.", "expected key-value pairs, found 1"),
        (b"\x80\x02N(Ns.", "expected a value on the pickle stack"),
        (
            b"\x80\x02NNR.",
            "REDUCE: expected an allowed callable, found None",
        ),
        (b"\x80\x02\x8a\x09.", "at most 8 bytes, found 9"),
        (
            b"\x80\x02X\xff\xff\xff\xff",
            "expected 4294967295 more bytes",
        ),
        (
            b"\x80\x02).",
            "expected the pickle to hold a dict of tensors, found a tuple",
        ),
        (b"\x80\x02}NNs.", "expected string keys, found None"),
        (b"\x80\x02cos\nsystem\n.", "`os.system`"),
    ] {
        let f = zip_file(&[("archive/data.pkl", pickle)]);
        let e = refused(f.path());
        assert!(e.contains(want), "{want:?} not in {e}");
    }
}

#[test]
fn zip_members_are_read_up_to_a_bound() {
    // A pickle member past MAX_PICKLE_BYTES.
    let big = vec![b'N'; MAX_PICKLE_BYTES as usize + 1];
    let f = zip_file(&[("archive/data.pkl", &big)]);
    let e = refused(f.path());
    assert!(
        e.contains(&format!("expected at most {MAX_PICKLE_BYTES} bytes"))
            && e.contains(&(MAX_PICKLE_BYTES + 1).to_string()),
        "{e}"
    );
    // A storage member far larger than its tensor's storage declares.
    let pickle = Pickle::default()
        .header()
        .tensor("w", "0", 1, 0, &[1], &[1])
        .footer();
    let f = zip_file(&[
        ("archive/data.pkl", &pickle),
        ("archive/data/0", &[0u8; 4096]),
    ]);
    let e = refused(f.path());
    assert!(
        e.contains("expected at most 4 bytes, found 4096 declared"),
        "{e}"
    );
    // A storage that is missing.
    let f = zip_file(&[("archive/data.pkl", &pickle)]);
    assert!(refused(f.path()).contains("archive/data/0"));
    // No pickle at all.
    let f = zip_file(&[("archive/other", b"x")]);
    assert!(refused(f.path()).contains("expected a data.pkl"));
}

#[test]
fn bytes_read_in_all_are_bounded_by_the_file_size() {
    // A storage declaring 2^29 floats (2 GiB) whose archive entry claims to
    // hold them (its central-directory size patched) while the file is tiny.
    let pickle = Pickle::default()
        .header()
        .tensor("w", "0", 1 << 29, 0, &[4], &[1])
        .footer();
    let f = zip_file(&[
        ("archive/data.pkl", &pickle),
        ("archive/data/0", &[0u8; 16]),
    ]);
    let mut bytes = std::fs::read(f.path()).unwrap();
    let name = b"archive/data/0";
    let at = (0..bytes.len() - 4)
        .find(|&i| {
            bytes[i..i + 4] == [0x50, 0x4b, 0x01, 0x02]
                && bytes.get(i + 46..i + 46 + name.len()) == Some(&name[..])
        })
        .expect("the central-directory entry of the storage");
    bytes[at + 24..at + 28].copy_from_slice(&(1u32 << 31).to_le_bytes());
    std::fs::write(f.path(), &bytes).unwrap();
    let e = refused(f.path());
    assert!(
        e.contains("declares 2147483648 bytes") && e.contains(&format!("of {} bytes", bytes.len())),
        "{e}"
    );
}

#[cfg(unix)]
#[test]
fn only_regular_files_are_opened() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pytorch_model.bin");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    // Opening a FIFO for reading would block until a writer came: refused first.
    let e = refused(&fifo);
    assert!(e.contains("expected a regular file, found a FIFO"), "{e}");
    let e = crate::io::read_json(&fifo).unwrap_err().to_string();
    assert!(e.contains("found a FIFO"), "{e}");
    let e = crate::io::read_safetensors(&fifo, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("found a FIFO"), "{e}");

    let zero = Path::new("/dev/zero");
    let e = refused(zero);
    assert!(e.contains("found a character device"), "{e}");
    let e = crate::io::read_json(zero).unwrap_err().to_string();
    assert!(e.contains("found a character device"), "{e}");
    let e = refused(dir.path());
    assert!(e.contains("found a directory"), "{e}");
}

#[test]
fn json_and_safetensors_reads_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("config.json");
    let f = std::fs::File::create(&json).unwrap();
    // A sparse file: no disk is spent on it.
    f.set_len(crate::io::MAX_JSON_BYTES + 1).unwrap();
    let e = crate::io::read_json(&json).unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "expected a JSON file of at most {} bytes, found {} bytes",
            crate::io::MAX_JSON_BYTES,
            crate::io::MAX_JSON_BYTES + 1
        )),
        "{e}"
    );
    let st = dir.path().join("model.safetensors");
    let f = std::fs::File::create(&st).unwrap();
    f.set_len(crate::io::MAX_SAFETENSORS_BYTES + 1).unwrap();
    let e = crate::io::read_safetensors(&st, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected a safetensors file of at most"), "{e}");
}
