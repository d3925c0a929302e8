//! The Llama hyperparameters, read from GGUF metadata (never hard-coded), and the check that
//! every tensor the forward pass needs is there with the shape the config implies.

use super::gguf::{GgmlType, Gguf, TensorInfo};
use super::ModelError;

/// Hyperparameters of a Llama-family model, as llama2.c's `Config` names them.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub n_layers: usize,
    /// Width of the residual stream.
    pub dim: usize,
    /// Width of the SwiGLU feed-forward layer.
    pub hidden_dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    /// Context length the model was trained with.
    pub context_len: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
    /// True when there is no `output.weight`: the LM head reuses the token embedding.
    pub tied_output: bool,
    pub bos: Option<u32>,
    pub eos: u32,
}

impl LlamaConfig {
    pub fn from_gguf(gguf: &Gguf) -> Result<LlamaConfig, ModelError> {
        let arch = gguf.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(ModelError::UnsupportedArchitecture {
                arch: arch.to_string(),
            });
        }
        let key = |name: &str| format!("llama.{name}");
        let dim = gguf.get_usize(&key("embedding_length"))?;
        let n_heads = gguf.get_usize(&key("attention.head_count"))?;
        let n_kv_heads = match gguf.get(&key("attention.head_count_kv")) {
            Some(_) => gguf.get_usize(&key("attention.head_count_kv"))?,
            None => n_heads,
        };
        let vocab_size = match gguf.get(&key("vocab_size")) {
            Some(_) => gguf.get_usize(&key("vocab_size"))?,
            None => gguf.get_array("tokenizer.ggml.tokens")?.len(),
        };
        check_heads(dim, n_heads, n_kv_heads)?;
        let head_dim = match gguf.get(&key("attention.key_length")) {
            Some(_) => gguf.get_usize(&key("attention.key_length"))?,
            None => dim / n_heads,
        };
        if gguf.get(&key("rope.dimension_count")).is_some() {
            let rope_dims = gguf.get_usize(&key("rope.dimension_count"))?;
            if rope_dims != head_dim {
                return Err(ModelError::Unsupported {
                    what: format!("partial RoPE over {rope_dims} of {head_dim} head dimensions"),
                });
            }
        }
        let rope_base = match gguf.get(&key("rope.freq_base")) {
            Some(_) => gguf.get_f32(&key("rope.freq_base"))?,
            None => 10000.0,
        };
        let bos = match gguf.get("tokenizer.ggml.bos_token_id") {
            Some(_) => Some(gguf.get_u32("tokenizer.ggml.bos_token_id")?),
            None => None,
        };
        let config = LlamaConfig {
            n_layers: gguf.get_usize(&key("block_count"))?,
            dim,
            hidden_dim: gguf.get_usize(&key("feed_forward_length"))?,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            context_len: gguf.get_usize(&key("context_length"))?,
            rope_base,
            rms_eps: gguf.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
            tied_output: gguf.tensor("output.weight").is_none(),
            bos,
            eos: gguf.get_u32("tokenizer.ggml.eos_token_id")?,
        };
        config.check()?;
        config.check_tensors(gguf)?;
        Ok(config)
    }

    /// What every loader checks once the numbers are read (the head counts before, with
    /// [`check_heads`]): an even head width, positive sizes, RoPE base and RMS epsilon, and
    /// special tokens inside the vocabulary.
    pub(super) fn check(&self) -> Result<(), ModelError> {
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return Err(invalid(
                "head_dim",
                format!("{} must be even: RoPE rotates pairs", self.head_dim),
            ));
        }
        if self.n_layers == 0
            || self.hidden_dim == 0
            || self.vocab_size == 0
            || self.context_len == 0
        {
            return Err(invalid(
                "sizes",
                format!(
                    "layers {}, feed-forward width {}, vocab {}, context {} must all be positive",
                    self.n_layers, self.hidden_dim, self.vocab_size, self.context_len
                ),
            ));
        }
        let positive = |v: f32| v.is_finite() && v > 0.0;
        if !positive(self.rope_base) || !positive(self.rms_eps) {
            return Err(invalid(
                "rope base / rms eps",
                format!("{} and {} must be positive", self.rope_base, self.rms_eps),
            ));
        }
        for id in self.bos.iter().chain([&self.eos]) {
            if *id as usize >= self.vocab_size {
                return Err(invalid(
                    "special token ids",
                    format!("id {id} is outside the vocabulary of {}", self.vocab_size),
                ));
            }
        }
        Ok(())
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Every tensor the forward pass reads, with its expected ggml shape `[n_in, n_out]`.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<u64>)> {
        let (dim, hidden, q, kv) = (
            self.dim as u64,
            self.hidden_dim as u64,
            self.q_dim() as u64,
            self.kv_dim() as u64,
        );
        let mut shapes = vec![
            (
                "token_embd.weight".to_string(),
                vec![dim, self.vocab_size as u64],
            ),
            ("output_norm.weight".to_string(), vec![dim]),
        ];
        if !self.tied_output {
            shapes.push((
                "output.weight".to_string(),
                vec![dim, self.vocab_size as u64],
            ));
        }
        for layer in 0..self.n_layers {
            for (name, shape) in [
                ("attn_norm", vec![dim]),
                ("attn_q", vec![dim, q]),
                ("attn_k", vec![dim, kv]),
                ("attn_v", vec![dim, kv]),
                ("attn_output", vec![q, dim]),
                ("ffn_norm", vec![dim]),
                ("ffn_gate", vec![dim, hidden]),
                ("ffn_up", vec![dim, hidden]),
                ("ffn_down", vec![hidden, dim]),
            ] {
                shapes.push((format!("blk.{layer}.{name}.weight"), shape));
            }
        }
        shapes
    }

    fn check_tensors(&self, gguf: &Gguf) -> Result<(), ModelError> {
        for (name, expected) in self.tensor_shapes() {
            let info = tensor(gguf, &name)?;
            if info.dims != expected {
                return Err(ModelError::ShapeMismatch {
                    name,
                    expected,
                    found: info.dims.clone(),
                });
            }
            // Norm weights are read as plain f32 by the kernels.
            if expected.len() == 1 && info.ggml_type != GgmlType::F32 {
                return Err(ModelError::UnsupportedNormType {
                    name,
                    ggml_type: info.ggml_type,
                });
            }
        }
        Ok(())
    }
}

fn invalid(what: &str, reason: String) -> ModelError {
    ModelError::InvalidConfig {
        what: what.to_string(),
        reason,
    }
}

/// Query heads in whole groups over the kv heads, and a width they divide: checked before
/// anything is derived from them.
pub(super) fn check_heads(dim: usize, n_heads: usize, n_kv_heads: usize) -> Result<(), ModelError> {
    if n_heads == 0 || n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
        return Err(invalid(
            "head counts",
            format!("{n_heads} query heads must be a positive multiple of {n_kv_heads} kv heads"),
        ));
    }
    if dim == 0 || !dim.is_multiple_of(n_heads) {
        return Err(invalid(
            "width",
            format!("{dim} is not a positive multiple of {n_heads} heads"),
        ));
    }
    Ok(())
}

/// The tensor called `name`, or `ModelError::MissingTensor`.
pub fn tensor<'a>(gguf: &'a Gguf, name: &str) -> Result<&'a TensorInfo, ModelError> {
    gguf.tensor(name).ok_or_else(|| ModelError::MissingTensor {
        name: name.to_string(),
    })
}
