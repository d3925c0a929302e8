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
