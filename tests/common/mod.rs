//! Shared by the test binaries: the GPU, and tiny random Llama models written as GGUF files in
//! memory (same architecture as the real model, small enough for lavapipe).

#![allow(dead_code)] // each test binary uses its own subset

use std::sync::{Arc, OnceLock};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sinkstar::gpu::{Gpu, GpuOptions};
use sinkstar::model::gguf::{GgmlType, GgufWriter};
use sinkstar::model::quant::quantize;

/// The device every test of a binary shares. A missing adapter fails the test.
pub fn gpu() -> Arc<Gpu> {
    static GPU: OnceLock<Arc<Gpu>> = OnceLock::new();
    GPU.get_or_init(|| {
        Arc::new(
            Gpu::new_blocking(&GpuOptions::default()).unwrap_or_else(|e| {
                panic!("these tests need a GPU adapter (lavapipe will do): {e}")
            }),
        )
    })
    .clone()
}

/// Shape and formats of a tiny random Llama.
#[derive(Debug, Clone)]
pub struct Tiny {
    pub n_layers: usize,
    pub dim: usize,
    pub hidden_dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub vocab_size: usize,
    pub context_len: usize,
    /// Format of the block matrices.
    pub format: GgmlType,
    /// Format of the token embedding (also the LM head when tied).
    pub embed_format: GgmlType,
    pub tied: bool,
    pub seed: u64,
}

impl Default for Tiny {
    fn default() -> Self {
        // Widths are multiples of 32 (quant blocks); 4 query heads share 2 kv heads of 16.
        Tiny {
            n_layers: 2,
            dim: 64,
            hidden_dim: 96,
            n_heads: 4,
            n_kv_heads: 2,
            vocab_size: 300,
            context_len: 512,
            format: GgmlType::Q4_1,
            embed_format: GgmlType::Q8_0,
            tied: true,
            seed: 1,
        }
    }
}

impl Tiny {
    /// Metadata of the model, tensors included by [`Tiny::gguf_with`].
    pub fn writer(&self) -> GgufWriter {
        let mut w = GgufWriter::new(3);
        w.meta("general.architecture", "llama")
            .meta("llama.block_count", self.n_layers as u32)
            .meta("llama.embedding_length", self.dim as u32)
            .meta("llama.feed_forward_length", self.hidden_dim as u32)
            .meta("llama.attention.head_count", self.n_heads as u32)
            .meta("llama.attention.head_count_kv", self.n_kv_heads as u32)
            .meta("llama.rope.freq_base", 10000.0f32)
            .meta("llama.attention.layer_norm_rms_epsilon", 1e-5f32)
            .meta("llama.context_length", self.context_len as u32)
            .meta("llama.vocab_size", self.vocab_size as u32)
            .meta("tokenizer.ggml.bos_token_id", 1u32)
            .meta("tokenizer.ggml.eos_token_id", 2u32);
        w
    }

    /// Every tensor as `(name, ggml dims, type)`.
    pub fn tensors(&self) -> Vec<(String, Vec<u64>, GgmlType)> {
        let (dim, hidden) = (self.dim as u64, self.hidden_dim as u64);
        let head_dim = dim / self.n_heads as u64;
        let kv = head_dim * self.n_kv_heads as u64;
        let vocab = self.vocab_size as u64;
        let mut t = vec![
            (
                "token_embd.weight".to_string(),
                vec![dim, vocab],
                self.embed_format,
            ),
            ("output_norm.weight".to_string(), vec![dim], GgmlType::F32),
        ];
        if !self.tied {
            t.push((
                "output.weight".to_string(),
                vec![dim, vocab],
                self.embed_format,
            ));
        }
        for l in 0..self.n_layers {
            for (name, dims, ty) in [
                ("attn_norm", vec![dim], GgmlType::F32),
                ("attn_q", vec![dim, dim], self.format),
                ("attn_k", vec![dim, kv], self.format),
                ("attn_v", vec![dim, kv], self.format),
                ("attn_output", vec![dim, dim], self.format),
                ("ffn_norm", vec![dim], GgmlType::F32),
                ("ffn_gate", vec![dim, hidden], self.format),
                ("ffn_up", vec![dim, hidden], self.format),
                ("ffn_down", vec![hidden, dim], self.format),
            ] {
                t.push((format!("blk.{l}.{name}.weight"), dims, ty));
            }
        }
        t
    }

    /// The GGUF bytes, with `edit` applied to the tensor list first (for bad-input tests).
    pub fn gguf_with(&self, edit: impl FnOnce(&mut Vec<(String, Vec<u64>, GgmlType)>)) -> Vec<u8> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut tensors = self.tensors();
        edit(&mut tensors);
        let mut w = self.writer();
        for (name, dims, ty) in tensors {
            let n: u64 = dims.iter().product();
            // Norm weights near 1; matrices scaled by 1/sqrt(fan-in) so activations stay O(1)
            // through the layers, as in a trained model.
            let values: Vec<f32> = if dims.len() == 1 {
                (0..n).map(|_| rng.random_range(0.8..1.2)).collect()
            } else {
                let scale = 1.5 / (dims[0] as f32).sqrt();
                (0..n).map(|_| rng.random_range(-scale..scale)).collect()
            };
            w.tensor(name, &dims, ty, quantize(ty, &values));
        }
        w.to_bytes()
    }

    pub fn gguf(&self) -> Vec<u8> {
        self.gguf_with(|_| {})
    }
}

/// The Multi-Token Attention golden model `name` of `scripts/mta_golden.py` (tests/golden/mta):
/// its config.json text and its model.safetensors bytes, rebuilt from recipe.json with the
/// script's seeded generator (no weights file is committed).
pub fn mta_golden(name: &str) -> (String, Vec<u8>) {
    let (config, recipe) = mta_golden_recipe(name);
    (config.to_string(), recipe_safetensors(&recipe))
}

fn mta_golden_recipe(name: &str) -> (serde_json::Value, serde_json::Value) {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/mta")
        .join(name);
    let read = |file: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap()
    };
    (read("config.json"), read("recipe.json"))
}

/// The model.safetensors bytes of a recipe of `scripts/mta_golden.py`.
fn recipe_safetensors(recipe: &serde_json::Value) -> Vec<u8> {
    let seed = recipe["seed"].as_u64().unwrap();
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for t in recipe["tensors"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let shape: Vec<usize> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let scale = t["scale"].as_f64().unwrap();
        let dtype = t["dtype"].as_str().unwrap();
        let n: usize = shape.iter().product();
        let start = data.len();
        for (i, u) in golden_uniform(name, seed, n).into_iter().enumerate() {
            let base = match t["base"].as_str().unwrap() {
                "zero" => 0.0,
                "one" => 1.0,
                // [heads, c_q, c_k]: the current query's row, the centred key.
                "identity_conv" => {
                    let (cq, ck) = (shape[1], shape[2]);
                    let at = i % (cq * ck);
                    f64::from(u8::from(at == (cq - 1) * ck + (ck - 1) / 2))
                }
                // [groups, c, c]: the diagonal.
                "identity_mix" => {
                    let c = shape[1];
                    f64::from(u8::from(i % (c * c) / c == i % c))
                }
                other => panic!("recipe base {other}"),
            };
            let value = (u * scale + base) as f32;
            match dtype {
                "F32" => data.extend_from_slice(&value.to_le_bytes()),
                "F16" => data.extend_from_slice(&half::f16::from_f32(value).to_le_bytes()),
                "BF16" => data.extend_from_slice(&half::bf16::from_f32(value).to_le_bytes()),
                other => panic!("recipe dtype {other}"),
            }
        }
        header.insert(
            name.into(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    safetensors_file(&header, &data)
}

/// A safetensors file of `header` (name → dtype, shape, data_offsets) and `data`.
pub fn safetensors_file(
    header: &serde_json::Map<String, serde_json::Value>,
    data: &[u8],
) -> Vec<u8> {
    let mut text = serde_json::to_vec(header).unwrap();
    // The format pads the header with spaces to a multiple of 8.
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend(text);
    bytes.extend_from_slice(data);
    bytes
}

/// Golden MTA model a made a chat model: its vocabulary widened to that of the byte-level BPE
/// tokenizer of tests/golden/tokenizer (scripts/tokenizer_golden.py), whose files go beside it,
/// and its context to 256 positions, written as a Hugging Face directory under `dir`.
pub fn write_hf_chat_model(dir: &std::path::Path) {
    let (mut config, mut recipe) = mta_golden_recipe("a");
    let tokenizer =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/tokenizer");
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tokenizer.join("golden.json")).unwrap())
            .unwrap();
    let vocab_size = golden["vocab_size"].clone();
    config["vocab_size"] = vocab_size.clone();
    config["max_position_embeddings"] = 256.into();
    for t in recipe["tensors"].as_array_mut().unwrap() {
        if t["name"] == "model.embed_tokens.weight" {
            t["shape"][0] = vocab_size.clone();
        }
    }
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("model.safetensors"), recipe_safetensors(&recipe)).unwrap();
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tokenizer.join(file), dir.join(file)).unwrap();
    }
}

/// [`mta_golden`] written as a Hugging Face-style directory under `dir`.
pub fn write_mta_golden(name: &str, dir: &std::path::Path) {
    let (config, weights) = mta_golden(name);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
    std::fs::write(dir.join("model.safetensors"), weights).unwrap();
}

/// `scripts/mta_golden.py`'s `uniform`: splitmix64 seeded by FNV-1a of `name` xor `seed`, the
/// top 53 bits of each output mapped to [-1, 1).
fn golden_uniform(name: &str, seed: u64, n: usize) -> Vec<f64> {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &byte in name.as_bytes() {
        h = (h ^ u64::from(byte)).wrapping_mul(0x0100_0000_01B3);
    }
    let mut state = h ^ seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 * 2f64.powi(-53) * 2.0 - 1.0
        })
        .collect()
}
