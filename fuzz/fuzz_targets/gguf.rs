//! gguf: arbitrary bytes into `Gguf::from_bytes`; whatever parses must be safe to use.
//! Every tensor's data is touched and decoded, and every metadata key read through the typed
//! getters, so a bounds or size check missing from the parser shows up as a panic here.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sinkstar::model::gguf::Gguf;
use sinkstar::model::quant::dequantize;

fuzz_target!(|data: &[u8]| {
    let Ok(gguf) = Gguf::from_bytes(data.to_vec()) else {
        return;
    };
    let mut checksum = 0u64;
    for info in &gguf.tensors {
        let bytes = gguf.tensor_data(info);
        assert_eq!(bytes.len() as u64, info.n_bytes, "tensor {}", info.name);
        assert!(gguf.tensor(&info.name).is_some());
        checksum = bytes
            .iter()
            .fold(checksum, |s, &b| s.wrapping_add(u64::from(b)));
        // n_elems is bounded by the input: each block of at most 32 values takes >= 2 bytes.
        let mut out = vec![0.0f32; info.n_elems() as usize];
        dequantize(info.ggml_type, bytes, &mut out).expect("a parsed tensor decodes");
    }
    for key in gguf.metadata.keys() {
        let _ = gguf.get_u32(key);
        let _ = gguf.get_f32(key);
        let _ = gguf.get_str(key);
        let _ = gguf.get_bool(key);
        let _ = gguf.get_str_array(key);
        let _ = gguf.get_i32_array(key);
    }
    std::hint::black_box(checksum);
});
