//! GGUF reader: every bad input gives its named error, and the real model reads as
//! notes/model.md describes it.
//!
//! Bad files are built in memory with `GgufWriter` and then patched at known fields. A
//! counting allocator checks that absurd counts fail before anything large is allocated.
//! The real model is read from $SINKSTAR_HOME (default ~/.cache/sinkstar).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::PathBuf;

use sinkstar::model::gguf::{GgmlType, Gguf, GgufError, GgufWriter, MetaValue};
use sinkstar::model::quant::{dequantize, dequantize_row, dequantize_tensor, quantize};

/// Tracks, per thread, the largest single allocation asked for.
struct PeakAlloc;

thread_local! {
    static LARGEST_ALLOC: Cell<usize> = const { Cell::new(0) };
}

fn note_alloc(bytes: usize) {
    // try_with: allocations during thread teardown must not panic.
    let _ = LARGEST_ALLOC.try_with(|l| l.set(l.get().max(bytes)));
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_alloc(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: PeakAlloc = PeakAlloc;

/// Parses `bytes` and returns the result with the largest allocation made meanwhile.
fn parse_measured(bytes: Vec<u8>) -> (Result<Gguf, GgufError>, usize) {
    LARGEST_ALLOC.with(|l| l.set(0));
    let result = Gguf::from_bytes(bytes);
    (result, LARGEST_ALLOC.with(Cell::get))
}

/// A small valid file: three metadata entries and two tensors.
fn tiny() -> Vec<u8> {
    GgufWriter::new(3)
        .meta("general.architecture", "llama")
        .meta("llama.block_count", 2u32)
        .meta("tokenizer.ggml.tokens", vec!["a", "b", "c"])
        .tensor("first.weight", &[32, 2], GgmlType::Q4_1, vec![1u8; 40])
        .tensor("victim.weight", &[4], GgmlType::F32, vec![2u8; 16])
        .to_bytes()
}

fn find(bytes: &[u8], needle: &[u8]) -> usize {
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not in the file", String::from_utf8_lossy(needle)))
}

fn patch(bytes: &mut [u8], at: usize, with: &[u8]) {
    bytes[at..at + with.len()].copy_from_slice(with);
}

/// Offsets of the fields of the 1-dim tensor `victim.weight`.
struct VictimFields {
    name: usize,
    dims: usize,
    ggml_type: usize,
    offset: usize,
}

fn victim_fields(bytes: &[u8]) -> VictimFields {
    let name = find(bytes, b"victim.weight");
    let dims = name + "victim.weight".len() + 4; // after n_dims
    let ggml_type = dims + 8;
    VictimFields {
        name,
        dims,
        ggml_type,
        offset: ggml_type + 4,
    }
}

fn parse_err(bytes: Vec<u8>) -> GgufError {
    match Gguf::from_bytes(bytes) {
        Ok(g) => panic!("bad file parsed: {g:?}"),
        Err(e) => e,
    }
}

fn assert_message(e: &GgufError, parts: &[&str]) {
    let message = e.to_string();
    for part in parts {
        assert!(message.contains(part), "message {message:?} lacks {part:?}");
    }
}

#[test]
fn tiny_file_parses() {
    let g = Gguf::from_bytes(tiny()).expect("tiny file parses");
    assert_eq!(g.tensors.len(), 2);
    assert_eq!(g.get_u32("llama.block_count").unwrap(), 2);
    let v = g.tensor("victim.weight").unwrap();
    assert_eq!(g.tensor_data(v), &[2u8; 16][..]);
    assert_eq!(g.data_offset() % 32, 0);
}

#[test]
fn version_2_files_parse() {
    let mut bytes = tiny();
    patch(&mut bytes, 4, &2u32.to_le_bytes());
    assert_eq!(Gguf::from_bytes(bytes).unwrap().version, 2);
}

#[test]
fn missing_file() {
    let path = PathBuf::from("/nonexistent/sinkstar/model.gguf");
    let e = Gguf::open(&path).unwrap_err();
    assert!(
        matches!(&e, GgufError::NotFound { path: p } if *p == path),
        "{e}"
    );
    assert_message(&e, &["not found", "/nonexistent/sinkstar/model.gguf"]);
}

#[test]
fn unreadable_path() {
    // A directory opens but cannot be read as a file.
    let e = Gguf::open(&std::env::temp_dir()).unwrap_err();
    assert!(matches!(e, GgufError::Io { .. }), "{e}");
    assert_message(&e, &["cannot read gguf file"]);
}

#[test]
fn truncated_inside_header() {
    let bytes = tiny();
    for (cut, what) in [
        (0, "magic"),
        (3, "magic"),
        (6, "version"),
        (12, "tensor count"),
        (20, "metadata count"),
    ] {
        let e = parse_err(bytes[..cut].to_vec());
        assert!(matches!(e, GgufError::Truncated { .. }), "cut {cut}: {e}");
        assert_message(&e, &["truncated", what]);
    }
}

#[test]
fn truncated_inside_metadata() {
    let bytes = tiny();
    let key = find(&bytes, b"llama.block_count");
    let e = parse_err(bytes[..key + 5].to_vec());
    assert!(matches!(e, GgufError::Truncated { .. }), "{e}");
    assert_message(&e, &["truncated", "metadata key 1"]);

    // Inside the u32 value, after the key and its type.
    let value = key + "llama.block_count".len() + 4;
    let e = parse_err(bytes[..value + 2].to_vec());
    assert!(
        matches!(&e, GgufError::Truncated { offset, needed: 4, .. } if *offset == value as u64),
        "{e}"
    );
    assert_message(&e, &["truncated", "llama.block_count"]);

    // Inside the string "b" of the tokens array.
    let b = find(&bytes, b"\x01\0\0\0\0\0\0\0b") + 8;
    let e = parse_err(bytes[..b].to_vec());
    assert!(matches!(e, GgufError::Truncated { .. }), "{e}");
    assert_message(&e, &["truncated", "tokenizer.ggml.tokens"]);
}

#[test]
fn truncated_inside_tensor_infos() {
    let bytes = tiny();
    let f = victim_fields(&bytes);
    for (cut, what) in [
        (f.name + 4, "name of tensor 1"),
        (f.dims + 3, "dimensions of tensor `victim.weight`"),
        (f.offset + 7, "data offset of tensor `victim.weight`"),
    ] {
        let e = parse_err(bytes[..cut].to_vec());
        assert!(matches!(e, GgufError::Truncated { .. }), "cut {cut}: {e}");
        assert_message(&e, &["truncated", what]);
    }
}

#[test]
fn truncated_inside_alignment_padding() {
    let bytes = tiny();
    let infos_end = victim_fields(&bytes).offset + 8;
    let data_offset = Gguf::from_bytes(bytes.clone()).unwrap().data_offset() as usize;
    assert!(
        data_offset > infos_end + 1,
        "the tiny file needs padding for this test"
    );
    let e = parse_err(bytes[..infos_end + 1].to_vec());
    assert!(matches!(e, GgufError::Truncated { .. }), "{e}");
    assert_message(&e, &["truncated", "padding"]);
}

#[test]
fn truncated_inside_tensor_data() {
    let bytes = tiny();
    let data_offset = Gguf::from_bytes(bytes.clone()).unwrap().data_offset() as usize;
    for (cut, name) in [
        (data_offset + 10, "first.weight"),
        (bytes.len() - 20, "victim.weight"),
    ] {
        let e = parse_err(bytes[..cut].to_vec());
        assert!(
            matches!(&e, GgufError::TensorOutOfBounds { name: n, file_len, .. }
                if n == name && *file_len == cut as u64),
            "{e}"
        );
        assert_message(&e, &[name, "past the end of the file"]);
    }
}

#[test]
fn bad_magic() {
    let mut bytes = tiny();
    patch(&mut bytes, 0, b"GGML");
    let e = parse_err(bytes);
    assert!(
        matches!(e, GgufError::BadMagic { found } if found == *b"GGML"),
        "{e}"
    );
    assert_message(&e, &["bad magic", "not a gguf file"]);
}

#[test]
fn unsupported_versions() {
    for version in [1u32, 4, 0x0300_0000] {
        let mut bytes = tiny();
        patch(&mut bytes, 4, &version.to_le_bytes());
        let e = parse_err(bytes);
        assert!(
            matches!(e, GgufError::UnsupportedVersion { version: v } if v == version),
            "{e}"
        );
        assert_message(&e, &[&format!("unsupported gguf version {version}")]);
    }
}

#[test]
fn unsupported_tensor_type() {
    let mut bytes = tiny();
    let f = victim_fields(&bytes);
    patch(&mut bytes, f.ggml_type, &12u32.to_le_bytes()); // Q4_K
    let e = parse_err(bytes);
    assert!(
        matches!(&e, GgufError::UnsupportedTensorType { name, ggml_type: 12 } if name == "victim.weight"),
        "{e}"
    );
    assert_message(&e, &["victim.weight", "unsupported ggml type 12"]);
}

#[test]
fn tensor_data_past_the_end() {
    for offset in [32 * 1024, u64::MAX - 31] {
        let mut bytes = tiny();
        let f = victim_fields(&bytes);
        patch(&mut bytes, f.offset, &offset.to_le_bytes());
        let e = parse_err(bytes);
        assert!(
            matches!(&e, GgufError::TensorOutOfBounds { name, n_bytes: 16, .. } if name == "victim.weight"),
            "{e}"
        );
        assert_message(&e, &["victim.weight", "past the end of the file"]);
    }
}

#[test]
fn misaligned_tensor_offset() {
    let mut bytes = tiny();
    let f = victim_fields(&bytes);
    patch(&mut bytes, f.offset, &8u64.to_le_bytes());
    let e = parse_err(bytes);
    assert!(
        matches!(&e, GgufError::Misaligned { name, offset: 8, alignment: 32 } if name == "victim.weight"),
        "{e}"
    );
    assert_message(&e, &["misaligned", "victim.weight", "alignment 32"]);
}

#[test]
fn custom_and_bad_alignment() {
    let file = |alignment: u32| {
        GgufWriter::new(3)
            .meta("general.alignment", alignment)
            .tensor("t", &[8], GgmlType::F32, vec![0u8; 32])
            .tensor("u", &[8], GgmlType::F32, vec![0u8; 32])
            .to_bytes()
    };
    let g = Gguf::from_bytes(file(64)).unwrap();
    assert_eq!(g.alignment, 64);
    assert_eq!(g.data_offset() % 64, 0);
    assert_eq!(
        g.tensor("u").unwrap().offset - g.tensor("t").unwrap().offset,
        64
    );

    for bad in [0u32, 48] {
        let e = parse_err(file(bad));
        assert!(
            matches!(e, GgufError::BadAlignment { alignment } if alignment == bad as u64),
            "{e}"
        );
        assert_message(&e, &["general.alignment", "power of two"]);
    }
}

#[test]
fn absurd_tensor_count() {
    let mut bytes = tiny();
    patch(&mut bytes, 8, &(1u64 << 62).to_le_bytes());
    let (result, largest) = parse_measured(bytes);
    let e = result.unwrap_err();
    assert!(
        matches!(e, GgufError::AbsurdCount { count, .. } if count == 1 << 62),
        "{e}"
    );
    assert_message(&e, &["absurd tensor count 4611686018427387904"]);
    assert!(
        largest < 64 << 10,
        "allocated {largest} bytes before failing"
    );
}

#[test]
fn absurd_metadata_count() {
    let mut bytes = tiny();
    patch(&mut bytes, 16, &(1u64 << 62).to_le_bytes());
    let (result, largest) = parse_measured(bytes);
    let e = result.unwrap_err();
    assert!(
        matches!(e, GgufError::AbsurdCount { count, .. } if count == 1 << 62),
        "{e}"
    );
    assert_message(&e, &["absurd metadata count"]);
    assert!(
        largest < 64 << 10,
        "allocated {largest} bytes before failing"
    );
}

#[test]
fn absurd_string_length() {
    let mut bytes = tiny();
    patch(&mut bytes, 24, &(1u64 << 40).to_le_bytes()); // length of the first key
    let (result, largest) = parse_measured(bytes);
    let e = result.unwrap_err();
    assert!(
        matches!(e, GgufError::AbsurdSize { bytes, .. } if bytes == 1 << 40),
        "{e}"
    );
    assert_message(
        &e,
        &["absurd size of metadata key 0", "1099511627776 bytes"],
    );
    assert!(
        largest < 64 << 10,
        "allocated {largest} bytes before failing"
    );
}

#[test]
fn absurd_array_length() {
    let mut bytes = tiny();
    // key, then value type (4) and element type (4), then the u64 length.
    let len_at = find(&bytes, b"tokenizer.ggml.tokens") + "tokenizer.ggml.tokens".len() + 8;
    patch(&mut bytes, len_at, &(1u64 << 50).to_le_bytes());
    let (result, largest) = parse_measured(bytes);
    let e = result.unwrap_err();
    assert!(
        matches!(e, GgufError::AbsurdCount { count, .. } if count == 1 << 50),
        "{e}"
    );
    assert_message(&e, &["absurd array length", "tokenizer.ggml.tokens"]);
    assert!(
        largest < 64 << 10,
        "allocated {largest} bytes before failing"
    );
}

#[test]
fn bad_utf8_key() {
    let mut bytes = tiny();
    let key = find(&bytes, b"llama.block_count");
    bytes[key] = 0xff;
    let e = parse_err(bytes);
    assert!(matches!(e, GgufError::BadUtf8 { .. }), "{e}");
    assert_message(&e, &["bad utf-8", "metadata key 1"]);
}

#[test]
fn bad_utf8_tensor_name() {
    let mut bytes = tiny();
    let f = victim_fields(&bytes);
    bytes[f.name + 1] = 0xc3; // a lead byte followed by ASCII
    let e = parse_err(bytes);
    assert!(matches!(e, GgufError::BadUtf8 { .. }), "{e}");
    assert_message(&e, &["bad utf-8", "name of tensor 1"]);
}

#[test]
fn unknown_metadata_value_type() {
    let mut bytes = tiny();
    let type_at = find(&bytes, b"llama.block_count") + "llama.block_count".len();
    patch(&mut bytes, type_at, &13u32.to_le_bytes());
    let e = parse_err(bytes);
    assert!(
        matches!(&e, GgufError::UnknownMetaType { key, value_type: 13 } if key == "llama.block_count"),
        "{e}"
    );
    assert_message(&e, &["llama.block_count", "unknown value type 13"]);
}

#[test]
fn arrays_nested_too_deep() {
    let mut value = MetaValue::from(vec![1u8]);
    for _ in 0..10 {
        value = MetaValue::Array(vec![value]);
    }
    let e = parse_err(GgufWriter::new(3).meta("deep", value).to_bytes());
    assert!(
        matches!(&e, GgufError::ArrayTooDeep { key, .. } if key == "deep"),
        "{e}"
    );
    assert_message(&e, &["deep", "nests arrays"]);
}

#[test]
fn duplicate_tensor_and_key() {
    let bytes = GgufWriter::new(3)
        .tensor("t", &[4], GgmlType::F32, vec![0u8; 16])
        .tensor("t", &[4], GgmlType::F32, vec![0u8; 16])
        .to_bytes();
    let e = parse_err(bytes);
    assert!(
        matches!(&e, GgufError::DuplicateTensor { name } if name == "t"),
        "{e}"
    );
    assert_message(&e, &["duplicate tensor `t`"]);

    let bytes = GgufWriter::new(3)
        .meta("k", 1u32)
        .meta("k", 2u32)
        .to_bytes();
    let e = parse_err(bytes);
    assert!(
        matches!(&e, GgufError::DuplicateKey { key } if key == "k"),
        "{e}"
    );
    assert_message(&e, &["duplicate metadata key `k`"]);
}

#[test]
fn bad_shapes() {
    let cases: [(&[u64], GgmlType, &str); 5] = [
        (&[32, 0], GgmlType::Q8_0, "a dimension is zero"),
        (&[], GgmlType::F32, "0 dimensions"),
        (&[1, 1, 1, 1, 1], GgmlType::F32, "5 dimensions"),
        (
            &[33, 2],
            GgmlType::Q4_1,
            "row length 33 is not a multiple of the q4_1 block size 32",
        ),
        (&[1 << 32, 1 << 32], GgmlType::F32, "overflows"),
    ];
    for (dims, ggml_type, reason) in cases {
        let bytes = GgufWriter::new(3)
            .tensor("odd.weight", dims, ggml_type, vec![0u8; 64])
            .to_bytes();
        let e = parse_err(bytes);
        assert!(
            matches!(&e, GgufError::BadShape { name, .. } if name == "odd.weight"),
            "{e}"
        );
        assert_message(&e, &["odd.weight", "bad shape", reason]);
    }
}

#[test]
fn typed_getters() {
    let g = Gguf::from_bytes(tiny()).unwrap();
    let e = g.get_f32("llama.rope.freq_base").unwrap_err();
    assert!(
        matches!(&e, GgufError::MissingKey { key } if key == "llama.rope.freq_base"),
        "{e}"
    );
    assert_message(&e, &["`llama.rope.freq_base` is missing"]);
    let e = g.get_str("llama.block_count").unwrap_err();
    assert!(
        matches!(&e, GgufError::WrongMetaType { expected: "a string", found, .. } if found == "a u32"),
        "{e}"
    );
    assert_message(&e, &["llama.block_count", "is a u32, expected a string"]);
    assert_eq!(g.get_u64("llama.block_count").unwrap(), 2);
    assert_eq!(
        g.get_str_array("tokenizer.ggml.tokens").unwrap(),
        ["a", "b", "c"]
    );
    assert!(matches!(
        g.get_bool("general.architecture"),
        Err(GgufError::WrongMetaType { .. })
    ));
}

fn model_path() -> PathBuf {
    let home = std::env::var_os("SINKSTAR_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/sinkstar")))
        .expect("SINKSTAR_HOME or HOME is set");
    home.join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn open_model() -> Gguf {
    let path = model_path();
    Gguf::open(&path).unwrap_or_else(|e| panic!("{e} (run scripts/fetch-model.sh)"))
}

#[test]
fn real_model_reads_as_documented() {
    let g = open_model();
    assert_eq!(g.version, 3);
    assert_eq!(g.alignment, 32);
    assert_eq!(g.tensors.len(), 272);
    assert_eq!(g.metadata.len(), 33);

    let mut by_type = BTreeMap::new();
    for t in &g.tensors {
        *by_type.entry(t.ggml_type.name()).or_insert(0) += 1;
    }
    assert_eq!(
        by_type,
        BTreeMap::from([("f32", 61), ("q4_1", 210), ("q8_0", 1)])
    );

    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(g.get_u32("llama.embedding_length").unwrap(), 576);
    assert_eq!(g.get_u32("llama.feed_forward_length").unwrap(), 1536);
    assert_eq!(g.get_u32("llama.attention.head_count").unwrap(), 9);
    assert_eq!(g.get_u32("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(g.get_u32("llama.context_length").unwrap(), 8192);
    assert_eq!(g.get_u32("llama.vocab_size").unwrap(), 49152);
    assert_eq!(g.get_f32("llama.rope.freq_base").unwrap(), 100000.0);
    assert_eq!(
        g.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap(),
        1e-5
    );
    assert_eq!(g.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert!(!g.get_bool("tokenizer.ggml.add_bos_token").unwrap());
    assert_eq!(
        g.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
        49152
    );
    assert_eq!(
        g.get_str_array("tokenizer.ggml.merges").unwrap().len(),
        48900
    );
    assert_eq!(
        g.get_i32_array("tokenizer.ggml.token_type").unwrap().len(),
        49152
    );

    let embd = g.tensor("token_embd.weight").unwrap();
    assert_eq!(embd.dims, [576, 49152]);
    assert_eq!(embd.ggml_type, GgmlType::Q8_0);
    assert_eq!(embd.n_bytes, 30_081_024);
    assert!(g.tensor("output.weight").is_none(), "the LM head is tied");
    let q = g.tensor("blk.29.attn_q.weight").unwrap();
    assert_eq!(
        (q.dims.as_slice(), q.ggml_type, q.n_bytes),
        (&[576, 576][..], GgmlType::Q4_1, 207_360)
    );
    let down = g.tensor("blk.0.ffn_down.weight").unwrap();
    assert_eq!(down.dims, [1536, 576]);
    let norm = g.tensor("output_norm.weight").unwrap();
    assert_eq!(
        (norm.dims.as_slice(), norm.ggml_type),
        (&[576][..], GgmlType::F32)
    );

    let n_params: u64 = g.tensors.iter().map(|t| t.n_elems()).sum();
    assert_eq!(n_params, 134_515_008);
    let file_len = g.as_bytes().len() as u64;
    assert_eq!(file_len, 98_362_432);
    for t in &g.tensors {
        assert!(t.offset + t.n_bytes <= file_len);
        assert_eq!(g.tensor_data(t).len() as u64, t.n_bytes);
    }
}

#[test]
fn real_model_first_q4_1_block() {
    let g = open_model();
    let q = g.tensor("blk.0.attn_q.weight").unwrap();
    let data = g.tensor_data(q);
    assert_eq!(&data[..6], &[0x0f, 0x30, 0xd8, 0xb9, 0x45, 0x87]);
    let mut w = [0.0f32; 32];
    dequantize(GgmlType::Q4_1, &data[..20], &mut w).unwrap();
    assert!((w[0] + 0.0963).abs() < 1e-4, "w[0] = {}", w[0]);
    assert!((w[16] + 0.2231).abs() < 1e-4, "w[16] = {}", w[16]);
    let row = dequantize_row(GgmlType::Q4_1, data, 576, 0).unwrap();
    assert_eq!(&row[..32], &w[..]);
}

#[test]
fn real_model_every_tensor_decodes() {
    let g = open_model();
    for t in &g.tensors {
        let w = dequantize_tensor(&g, t).unwrap();
        assert_eq!(w.len() as u64, t.n_elems());
        assert!(
            w.iter().all(|v| v.is_finite()),
            "{} has non-finite values",
            t.name
        );
        assert!(w.iter().any(|&v| v != 0.0), "{} is all zeros", t.name);
    }
    // ggml's Q8_0 quantizer is idempotent on its own output, so re-quantizing a decoded
    // embedding row must give back the file's bytes: a check that `quantize` is ggml's.
    let embd = g.tensor("token_embd.weight").unwrap();
    for token in [0, 1, 2, 1000, 49151] {
        let row = dequantize_row(GgmlType::Q8_0, g.tensor_data(embd), 576, token).unwrap();
        let bytes = &g.tensor_data(embd)[token * 612..(token + 1) * 612];
        assert_eq!(quantize(GgmlType::Q8_0, &row), bytes, "token {token}");
    }
}

#[test]
fn from_bytes_matches_open() {
    let mapped = open_model();
    let owned = Gguf::from_bytes(std::fs::read(model_path()).unwrap()).unwrap();
    assert_eq!(mapped.metadata, owned.metadata);
    assert_eq!(mapped.tensors, owned.tensors);
}
