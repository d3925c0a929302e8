//! The model's weights on the GPU, uploaded as the raw bytes of their ggml blocks (decoded
//! inside the shaders), and the kernels every session shares.

use std::sync::Arc;

use super::config::{tensor, LlamaConfig};
use super::gguf::{GgmlType, Gguf};
use super::ModelError;
use crate::gpu::{Gpu, TrackedBuffer};
use crate::kernels::matmul::{upload_weight, WeightFormat};
use crate::kernels::mta::{MtaLayer, MtaWeights};
use crate::Result;

/// One weight matrix `W[n_out][n_in]` in its ggml format.
pub struct Weight {
    pub buffer: TrackedBuffer,
    pub format: WeightFormat,
    pub n_in: u32,
    pub n_out: u32,
}

impl Weight {
    /// Bytes of `rows` of its rows' ggml blocks: what a matmul reading them loads (the GPU
    /// layout's padding of each row to 16 bytes is never read).
    fn bytes_read(&self, rows: u32) -> u64 {
        let row = self.format.row_bytes(self.n_in as usize).unwrap_or(0);
        row as u64 * u64::from(rows)
    }
}

/// One block's tensors.
pub struct LayerWeights {
    pub attn_norm: TrackedBuffer, // [dim] f32
    /// q, k and v stacked for one matmul: `[(n_heads + 2 n_kv_heads) * head_dim][dim]`.
    pub w_qkv: Weight,
    pub wo: Weight,              // [dim][n_heads * head_dim]
    pub ffn_norm: TrackedBuffer, // [dim] f32
    /// Gate rows then up rows, `[2 * hidden_dim][dim]`: one matmul yields both halves.
    pub w_gate_up: Weight,
    pub w_down: Weight, // [dim][hidden_dim]
    /// The layer's Multi-Token Attention settings and weights (Hugging Face-style MTA models
    /// only, `model::hf`); `None`: standard attention.
    pub mta: Option<(MtaLayer, MtaWeights)>,
}

/// A loaded model: config, weights on one GPU.
pub struct GpuModel {
    pub config: LlamaConfig,
    gpu: Arc<Gpu>,
    /// `[vocab_size][dim]`, also the LM head when `config.tied_output`.
    pub token_embd: Weight,
    pub layers: Vec<LayerWeights>,
    pub output_norm: TrackedBuffer, // [dim] f32
    /// `[vocab_size][dim]`; `None` when tied to `token_embd`.
    pub output: Option<Weight>,
}

/// Every ggml type sinkstar reads is also a matmul weight format.
fn weight_format(ggml_type: GgmlType) -> WeightFormat {
    match ggml_type {
        GgmlType::F32 => WeightFormat::F32,
        GgmlType::F16 => WeightFormat::F16,
        GgmlType::BF16 => WeightFormat::BF16,
        GgmlType::Q4_0 => WeightFormat::Q4_0,
        GgmlType::Q4_1 => WeightFormat::Q4_1,
        GgmlType::Q8_0 => WeightFormat::Q8_0,
    }
}

impl GpuModel {
    /// Checks the config and tensor shapes, then uploads every weight.
    pub fn load(gpu: Arc<Gpu>, gguf: &Gguf) -> Result<GpuModel> {
        let config = LlamaConfig::from_gguf(gguf)?;
        let matrix = |names: &[String]| -> Result<Weight> {
            let infos = names
                .iter()
                .map(|name| tensor(gguf, name))
                .collect::<Result<Vec<_>, _>>()?;
            let format = weight_format(infos[0].ggml_type);
            if let Some(other) = infos.iter().find(|i| i.ggml_type != infos[0].ggml_type) {
                return Err(ModelError::Unsupported {
                    what: format!(
                        "`{}` is {} but `{}` is {}: tensors stacked into one matmul must \
                         share a type",
                        names[0], infos[0].ggml_type, other.name, other.ggml_type
                    ),
                }
                .into());
            }
            let mut bytes = Vec::new();
            for info in &infos {
                bytes.extend_from_slice(gguf.tensor_data(info));
            }
            let n_out: u64 = infos.iter().map(|i| i.n_rows()).sum();
            let n_in = infos[0].dims[0] as usize;
            Ok(Weight {
                buffer: upload_weight(&gpu, &names.join("+"), format, n_in, &bytes)?,
                format,
                n_in: n_in as u32,
                n_out: n_out as u32,
            })
        };
        let one = |name: String| matrix(&[name]);
        let norm = |name: &str| -> Result<TrackedBuffer> {
            let info = tensor(gguf, name)?;
            Ok(gpu.storage_with(name, gguf.tensor_data(info))?)
        };
        let layers = (0..config.n_layers)
            .map(|l| {
                let name = |part: &str| format!("blk.{l}.{part}.weight");
                Ok(LayerWeights {
                    attn_norm: norm(&name("attn_norm"))?,
                    w_qkv: matrix(&[name("attn_q"), name("attn_k"), name("attn_v")])?,
                    wo: one(name("attn_output"))?,
                    ffn_norm: norm(&name("ffn_norm"))?,
                    w_gate_up: matrix(&[name("ffn_gate"), name("ffn_up")])?,
                    w_down: one(name("ffn_down"))?,
                    mta: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(GpuModel {
            token_embd: one("token_embd.weight".into())?,
            output_norm: norm("output_norm.weight")?,
            output: match config.tied_output {
                true => None,
                false => Some(one("output.weight".into())?),
            },
            layers,
            config,
            gpu,
        })
    }

    /// A model from weights another loader uploaded (`model::hf`).
    pub(super) fn from_parts(
        config: LlamaConfig,
        gpu: Arc<Gpu>,
        token_embd: Weight,
        layers: Vec<LayerWeights>,
        output_norm: TrackedBuffer,
        output: Option<Weight>,
    ) -> GpuModel {
        GpuModel {
            config,
            gpu,
            token_embd,
            layers,
            output_norm,
            output,
        }
    }

    /// Inserts Multi-Token Attention into a trained model with identity kernels and mixes,
    /// `γ = 1` and a zero gate (mta.md §6's init; the paper's Appendix I retrofits Llama this
    /// way before finetuning): `layers[l]` for layer `l`, `None` keeping standard attention.
    /// Without norm and gate the outputs are unchanged; sinkstar uses it to measure what MTA
    /// costs on a real model's shapes (`sinkstar bench --mta`).
    pub fn retrofit_mta(&mut self, layers: &[Option<MtaLayer>]) -> Result<(), ModelError> {
        let c = &self.config;
        if layers.len() != c.n_layers {
            return Err(ModelError::InvalidConfig {
                what: "MTA retrofit".into(),
                reason: format!("{} layer settings for {} layers", layers.len(), c.n_layers),
            });
        }
        for (weights, layer) in self.layers.iter_mut().zip(layers) {
            weights.mta = match layer {
                None => None,
                Some(layer) => {
                    layer
                        .validate(c.n_heads as u32)
                        .map_err(|e| ModelError::InvalidConfig {
                            what: "MTA retrofit".into(),
                            reason: e.to_string(),
                        })?;
                    let identity = MtaWeights::identity(layer, c.n_heads as u32, c.head_dim as u32);
                    Some((*layer, identity))
                }
            };
        }
        Ok(())
    }

    /// Whether any layer uses Multi-Token Attention (then only a dense cache will do).
    pub fn has_mta(&self) -> bool {
        self.layers.iter().any(|l| l.mta.is_some())
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// The LM head: `output.weight`, or the embedding when tied.
    pub fn head(&self) -> &Weight {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }

    /// Bytes of weights one decoded token reads: every layer's matrices and norms, the final
    /// norm and the LM head (of the embedding, only the token's own row).
    pub fn weight_bytes_per_token(&self) -> u64 {
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| {
                [&l.w_qkv, &l.wo, &l.w_gate_up, &l.w_down]
                    .iter()
                    .map(|w| w.bytes_read(w.n_out))
                    .sum::<u64>()
                    + l.attn_norm.size()
                    + l.ffn_norm.size()
            })
            .sum();
        let head = self.head();
        layers
            + self.output_norm.size()
            + head.bytes_read(head.n_out)
            + self.token_embd.bytes_read(1)
    }
}
