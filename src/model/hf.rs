//! Hugging Face-style Llama models: `config.json` and one `model.safetensors` (F32, F16 or
//! BF16 tensors), with the Multi-Token Attention settings and tensors of mta.md when the
//! config has an `mta` object. MTA models are published this way (PyTorch checkpoints), not
//! as GGUF.
//!
//! Conventions that differ from GGUF and are converted here: Hugging Face stores Q/K rows for
//! the rotate-half RoPE (pair `i` of a head is rows `i` and `i + head_dim / 2`), sinkstar's
//! kernels rotate adjacent pairs (model.md §5), so the rows of `q_proj` and `k_proj` are
//! interleaved on load, as llama.cpp's converter does; norm and MTA weights become f32.
//!
//! The `mta` object of config.json (every key required unless noted):
//!
//! ```json
//! "mta": {
//!   "conv_layers": [2],        // 0-based layers with key-query convolutions
//!   "pre_conv": [6, 11],       // [c_q, c_k] of the pre-softmax convolution, or null
//!   "post_conv": [6, 11],      // of the post-softmax convolution, or null
//!   "pre_mix": true,           // head mixing of the logits, in every layer
//!   "post_mix": true,          // head mixing of the probabilities, in every layer
//!   "mix_size": 16,            // c_h, heads per mixing group
//!   "group_norm": true,        // per-head RMS norm of the outputs, in every layer
//!   "gate": "scalar",          // "none", "scalar" or "vector"
//!   "depth_scale": false       // multiply by 1 - λ_init(layer)
//! }
//! ```
//!
//! and its tensors, per layer `l`, under `model.layers.{l}.self_attn.mta.`: `pre_conv` and
//! `post_conv` `[n_heads, c_q, c_k]` (in conv layers), `pre_mix` and `post_mix` `[n_heads /
//! c_h, c_h in, c_h out]`, `norm` `[head_dim]`, `gate_weight` (`[head_dim]` scalar, `[head_dim,
//! head_dim]` (out, in) vector) and `gate_bias` (`[1]` or `[head_dim]`).

use std::collections::BTreeSet;

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};
use serde_json::{Map, Value};

use super::config::{check_heads, LlamaConfig};
use super::weights::{GpuModel, LayerWeights, Weight};
use super::ModelError;
use crate::gpu::Gpu;
use crate::kernels::matmul::{upload_weight, WeightFormat};
use crate::kernels::mta::{depth_factor, Conv, Gate, MtaLayer, MtaWeights};
use crate::Result;

/// The model's config and, per layer, its MTA settings (`None` for a model without MTA).
#[derive(Debug, Clone, PartialEq)]
pub struct HfConfig {
    pub llama: LlamaConfig,
    pub mta: Option<Vec<MtaLayer>>,
}

fn invalid(what: &str, reason: impl Into<String>) -> ModelError {
    ModelError::InvalidConfig {
        what: what.to_string(),
        reason: reason.into(),
    }
}

/// Typed reads of one JSON object's keys, each error naming the key.
struct Fields<'a> {
    what: &'static str,
    map: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn usize(&self, key: &str) -> Result<usize, ModelError> {
        let v = self
            .get(key)
            .ok_or_else(|| invalid(self.what, format!("`{key}` is missing")))?;
        v.as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| invalid(self.what, format!("`{key}` is {v}, not a count")))
    }

    fn usize_or(&self, key: &str, default: usize) -> Result<usize, ModelError> {
        match self.get(key) {
            None => Ok(default),
            Some(_) => self.usize(key),
        }
    }

    fn f32_or(&self, key: &str, default: f32) -> Result<f32, ModelError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .map(|x| x as f32)
                .ok_or_else(|| invalid(self.what, format!("`{key}` is {v}, not a number"))),
        }
    }

    fn bool(&self, key: &str) -> Result<bool, ModelError> {
        match self.get(key) {
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(invalid(
                self.what,
                format!("`{key}` is {v}, not true or false"),
            )),
            None => Err(invalid(self.what, format!("`{key}` is missing"))),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool, ModelError> {
        match self.get(key) {
            None => Ok(default),
            Some(_) => self.bool(key),
        }
    }

    /// A token id, or the first of a list (Hugging Face allows several EOS ids).
    fn token(&self, key: &str) -> Result<Option<u32>, ModelError> {
        let value = match self.get(key) {
            None => return Ok(None),
            Some(Value::Array(ids)) => ids.first(),
            Some(v) => Some(v),
        };
        value
            .map(|v| {
                v.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| invalid(self.what, format!("`{key}` is {v}, not a token id")))
            })
            .transpose()
    }

    /// `[c_q, c_k]`, or `None` for null.
    fn conv(&self, key: &str) -> Result<Option<Conv>, ModelError> {
        if !self.map.contains_key(key) {
            return Err(invalid(
                self.what,
                format!("`{key}` is missing (null turns it off)"),
            ));
        }
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let taps: Option<Vec<u32>> = v.as_array().and_then(|a| {
            a.iter()
                .map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()))
                .collect()
        });
        match taps.as_deref() {
            Some(&[q, k]) => Ok(Some(Conv { q, k })),
            _ => Err(invalid(
                self.what,
                format!("`{key}` is {v}, not [c_q, c_k]"),
            )),
        }
    }
}

/// The keys of the `mta` object: any other is an error (a misspelled switch must not be
/// silently off).
const MTA_KEYS: [&str; 9] = [
    "conv_layers",
    "pre_conv",
    "post_conv",
    "pre_mix",
    "post_mix",
    "mix_size",
    "group_norm",
    "gate",
    "depth_scale",
];

impl HfConfig {
    /// Reads and checks `config.json`. Only plain Llama is accepted: no RoPE scaling, no
    /// biases, SiLU.
    pub fn from_json(json: &str) -> Result<HfConfig, ModelError> {
        let root: Value =
            serde_json::from_str(json).map_err(|e| invalid("config.json", e.to_string()))?;
        let map = root
            .as_object()
            .ok_or_else(|| invalid("config.json", "not a JSON object"))?;
        let f = Fields {
            what: "config.json",
            map,
        };
        let model_type = f.get("model_type").and_then(Value::as_str).unwrap_or("");
        if model_type != "llama" {
            return Err(ModelError::UnsupportedArchitecture {
                arch: format!("model_type `{model_type}`"),
            });
        }
        if f.get("rope_scaling").is_some() {
            return Err(ModelError::Unsupported {
                what: "rope_scaling (only plain RoPE is implemented)".into(),
            });
        }
        for key in ["attention_bias", "mlp_bias"] {
            if f.bool_or(key, false)? {
                return Err(ModelError::Unsupported {
                    what: format!("`{key}`: Llama without biases only"),
                });
            }
        }
        if let Some(act) = f.get("hidden_act") {
            if act.as_str() != Some("silu") {
                return Err(ModelError::Unsupported {
                    what: format!("hidden_act {act} (SwiGLU with silu only)"),
                });
            }
        }
        let dim = f.usize("hidden_size")?;
        let n_heads = f.usize("num_attention_heads")?;
        let n_kv_heads = f.usize_or("num_key_value_heads", n_heads)?;
        check_heads(dim, n_heads, n_kv_heads)?;
        let head_dim = f.usize_or("head_dim", dim / n_heads)?;
        let vocab_size = f.usize("vocab_size")?;
        let llama = LlamaConfig {
            n_layers: f.usize("num_hidden_layers")?,
            dim,
            hidden_dim: f.usize("intermediate_size")?,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            context_len: f.usize("max_position_embeddings")?,
            rope_base: f.f32_or("rope_theta", 10000.0)?,
            rms_eps: f.f32_or("rms_norm_eps", 1e-6)?,
            tied_output: f.bool_or("tie_word_embeddings", false)?,
            bos: f.token("bos_token_id")?,
            eos: f
                .token("eos_token_id")?
                .ok_or_else(|| invalid("config.json", "`eos_token_id` is missing"))?,
        };
        llama.check()?;
        let mta = match f.get("mta") {
            None => None,
            Some(v) => Some(mta_layers(v, &llama)?),
        };
        Ok(HfConfig { llama, mta })
    }
}

/// Every layer's [`MtaLayer`] from the `mta` object: convolutions in `conv_layers`, mixing,
/// norm and gate everywhere (mta.md §6's placement).
fn mta_layers(value: &Value, llama: &LlamaConfig) -> Result<Vec<MtaLayer>, ModelError> {
    let map = value
        .as_object()
        .ok_or_else(|| invalid("mta", "not a JSON object"))?;
    if let Some(key) = map.keys().find(|k| !MTA_KEYS.contains(&k.as_str())) {
        return Err(invalid(
            "mta",
            format!("unknown setting `{key}` (known: {})", MTA_KEYS.join(", ")),
        ));
    }
    let f = Fields { what: "mta", map };
    let conv_layers: BTreeSet<usize> = match f.get("conv_layers") {
        Some(Value::Array(layers)) => layers
            .iter()
            .map(|l| {
                l.as_u64()
                    .map(|l| l as usize)
                    .filter(|&l| l < llama.n_layers)
                    .ok_or_else(|| {
                        invalid(
                            "mta",
                            format!("conv layer {l} is not one of the {} layers", llama.n_layers),
                        )
                    })
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(invalid(
                "mta",
                "`conv_layers` must be a list of layer indices",
            ))
        }
    };
    let (pre_conv, post_conv) = (f.conv("pre_conv")?, f.conv("post_conv")?);
    let gate = match f.get("gate").and_then(Value::as_str) {
        Some("none") => Gate::None,
        Some("scalar") => Gate::Scalar,
        Some("vector") => Gate::Vector,
        _ => {
            return Err(invalid(
                "mta",
                "`gate` must be \"none\", \"scalar\" or \"vector\"",
            ))
        }
    };
    let (pre_mix, post_mix) = (f.bool("pre_mix")?, f.bool("post_mix")?);
    let depth_scale = f.bool("depth_scale")?;
    let base = MtaLayer {
        pre_conv: None,
        pre_mix,
        post_conv: None,
        post_mix,
        mix_size: f.usize("mix_size")? as u32,
        norm: f.bool("group_norm")?,
        gate,
        depth_factor: 1.0,
    };
    let layers: Vec<MtaLayer> = (0..llama.n_layers)
        .map(|l| {
            let conv = conv_layers.contains(&l);
            MtaLayer {
                pre_conv: pre_conv.filter(|_| conv),
                post_conv: post_conv.filter(|_| conv),
                depth_factor: if depth_scale {
                    depth_factor(l as u32)
                } else {
                    1.0
                },
                ..base
            }
        })
        .collect();
    for layer in &layers {
        layer
            .validate(llama.n_heads as u32)
            .map_err(|e| invalid("mta", e.to_string()))?;
    }
    Ok(layers)
}

/// A tensor of the file, its shape checked.
fn tensor<'a>(
    st: &'a SafeTensors,
    name: &str,
    shape: &[usize],
) -> Result<safetensors::tensor::TensorView<'a>, ModelError> {
    let view = st.tensor(name).map_err(|_| ModelError::MissingTensor {
        name: name.to_string(),
    })?;
    if view.shape() != shape {
        return Err(ModelError::ShapeMismatch {
            name: name.to_string(),
            expected: shape.iter().map(|&d| d as u64).collect(),
            found: view.shape().iter().map(|&d| d as u64).collect(),
        });
    }
    Ok(view)
}

fn weight_format(name: &str, dtype: Dtype) -> Result<WeightFormat, ModelError> {
    match dtype {
        Dtype::F32 => Ok(WeightFormat::F32),
        Dtype::F16 => Ok(WeightFormat::F16),
        Dtype::BF16 => Ok(WeightFormat::BF16),
        other => Err(ModelError::Unsupported {
            what: format!("tensor `{name}` is {other:?}: F32, F16 and BF16 are read"),
        }),
    }
}

/// A tensor's values as f32.
fn values_f32(st: &SafeTensors, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
    let view = tensor(st, name, shape)?;
    let data = view.data();
    Ok(match weight_format(name, view.dtype())? {
        WeightFormat::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        WeightFormat::F16 => data
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => data
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
    })
}

/// Reorders the rows of a Q or K projection `[n_heads * head_dim][n_in]` from rotate-half
/// pairs (rows `i`, `i + head_dim / 2` of a head) to adjacent pairs (rows `2i`, `2i + 1`).
fn interleave_rope_rows(bytes: &[u8], head_dim: usize, row_bytes: usize) -> Vec<u8> {
    let half = head_dim / 2;
    let mut out = Vec::with_capacity(bytes.len());
    for head in bytes.chunks_exact(head_dim * row_bytes) {
        for i in 0..half {
            for row in [i, i + half] {
                out.extend_from_slice(&head[row * row_bytes..(row + 1) * row_bytes]);
            }
        }
    }
    out
}

impl GpuModel {
    /// Loads a Hugging Face-style model from the text of its `config.json` and the bytes of
    /// its `model.safetensors`, every tensor's presence, type and shape checked before the
    /// first upload.
    pub fn load_hf(
        gpu: std::sync::Arc<Gpu>,
        config_json: &str,
        safetensors: &[u8],
    ) -> Result<GpuModel> {
        let config = HfConfig::from_json(config_json)?;
        let st = SafeTensors::deserialize(safetensors).map_err(|e| ModelError::Unsupported {
            what: format!("model.safetensors cannot be read: {e}"),
        })?;
        let c = &config.llama;
        let (dim, hidden, q_dim, kv_dim, hd) =
            (c.dim, c.hidden_dim, c.q_dim(), c.kv_dim(), c.head_dim);
        let layer_name = |l: usize, part: &str| format!("model.layers.{l}.{part}");
        // Everything checked first: a bad file fails before anything is on the GPU.
        let mut shapes = vec![
            (
                "model.embed_tokens.weight".to_string(),
                vec![c.vocab_size, dim],
            ),
            ("model.norm.weight".to_string(), vec![dim]),
        ];
        if !c.tied_output {
            shapes.push(("lm_head.weight".into(), vec![c.vocab_size, dim]));
        }
        for l in 0..c.n_layers {
            for (part, shape) in [
                ("input_layernorm.weight", vec![dim]),
                ("self_attn.q_proj.weight", vec![q_dim, dim]),
                ("self_attn.k_proj.weight", vec![kv_dim, dim]),
                ("self_attn.v_proj.weight", vec![kv_dim, dim]),
                ("self_attn.o_proj.weight", vec![dim, q_dim]),
                ("post_attention_layernorm.weight", vec![dim]),
                ("mlp.gate_proj.weight", vec![hidden, dim]),
                ("mlp.up_proj.weight", vec![hidden, dim]),
                ("mlp.down_proj.weight", vec![dim, hidden]),
            ] {
                shapes.push((layer_name(l, part), shape));
            }
        }
        for (name, shape) in &shapes {
            weight_format(name, tensor(&st, name, shape)?.dtype())?;
        }
        let mta_weights: Vec<Option<(MtaLayer, MtaWeights)>> = match &config.mta {
            None => vec![None; c.n_layers],
            Some(layers) => layers
                .iter()
                .enumerate()
                .map(|(l, layer)| {
                    mta_weights(&st, &layer_name(l, "self_attn.mta"), layer, c).map(Some)
                })
                .collect::<Result<_, _>>()?,
        };
        let norm = |name: &str| -> Result<_> {
            let values = values_f32(&st, name, &[dim])?;
            Ok(gpu.storage_with(name, bytemuck::cast_slice(&values))?)
        };
        // Tensors stacked into one weight, each with whether its rows are RoPE'd (q, k).
        let matrix = |parts: &[(String, bool)]| -> Result<Weight> {
            let names: Vec<&String> = parts.iter().map(|(name, _)| name).collect();
            let views = names
                .iter()
                .map(|&name| {
                    st.tensor(name)
                        .map_err(|_| ModelError::MissingTensor { name: name.clone() })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let format = weight_format(names[0], views[0].dtype())?;
            if let Some((other, _)) = names
                .iter()
                .zip(&views)
                .find(|(_, v)| v.dtype() != views[0].dtype())
            {
                return Err(ModelError::Unsupported {
                    what: format!("`{}` and `{other}` differ in type: tensors stacked into one matmul must share one", names[0]),
                }
                .into());
            }
            let n_in = views[0].shape()[1];
            let mut bytes = Vec::new();
            for (view, (_, rope_rows)) in views.iter().zip(parts) {
                match rope_rows {
                    true => bytes.extend(interleave_rope_rows(
                        view.data(),
                        hd,
                        n_in * format.block_bytes(),
                    )),
                    false => bytes.extend_from_slice(view.data()),
                }
            }
            let n_out: usize = views.iter().map(|v| v.shape()[0]).sum();
            Ok(Weight {
                buffer: upload_weight(
                    &gpu,
                    &names
                        .iter()
                        .map(|n| n.as_str())
                        .collect::<Vec<_>>()
                        .join("+"),
                    format,
                    n_in,
                    &bytes,
                )?,
                format,
                n_in: n_in as u32,
                n_out: n_out as u32,
            })
        };
        let layers = mta_weights
            .into_iter()
            .enumerate()
            .map(|(l, mta)| {
                let name = |part: &str| layer_name(l, part);
                Ok(LayerWeights {
                    attn_norm: norm(&name("input_layernorm.weight"))?,
                    w_qkv: matrix(&[
                        (name("self_attn.q_proj.weight"), true),
                        (name("self_attn.k_proj.weight"), true),
                        (name("self_attn.v_proj.weight"), false),
                    ])?,
                    wo: matrix(&[(name("self_attn.o_proj.weight"), false)])?,
                    ffn_norm: norm(&name("post_attention_layernorm.weight"))?,
                    w_gate_up: matrix(&[
                        (name("mlp.gate_proj.weight"), false),
                        (name("mlp.up_proj.weight"), false),
                    ])?,
                    w_down: matrix(&[(name("mlp.down_proj.weight"), false)])?,
                    mta,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let token_embd = matrix(&[("model.embed_tokens.weight".into(), false)])?;
        let output = match c.tied_output {
            true => None,
            false => Some(matrix(&[("lm_head.weight".into(), false)])?),
        };
        let output_norm = norm("model.norm.weight")?;
        Ok(GpuModel::from_parts(
            config.llama,
            gpu.clone(),
            token_embd,
            layers,
            output_norm,
            output,
        ))
    }
}

/// One layer's MTA tensors in the kernels' orientation, every one checked against `layer`.
fn mta_weights(
    st: &SafeTensors,
    prefix: &str,
    layer: &MtaLayer,
    c: &LlamaConfig,
) -> Result<(MtaLayer, MtaWeights), ModelError> {
    let (n_heads, hd) = (c.n_heads, c.head_dim);
    let name = |part: &str| format!("{prefix}.{part}");
    let conv = |part: &str, conv: Option<Conv>| match conv {
        None => Ok(Vec::new()),
        Some(Conv { q, k }) => values_f32(st, &name(part), &[n_heads, q as usize, k as usize]),
    };
    let group = layer.mix_size as usize;
    let mix = |part: &str, on: bool| match on {
        false => Ok(Vec::new()),
        true => values_f32(st, &name(part), &[n_heads / group, group, group]),
    };
    let gate = match layer.gate {
        Gate::None => Vec::new(),
        Gate::Scalar => [
            values_f32(st, &name("gate_weight"), &[hd])?,
            values_f32(st, &name("gate_bias"), &[1])?,
        ]
        .concat(),
        Gate::Vector => [
            values_f32(st, &name("gate_weight"), &[hd, hd])?,
            values_f32(st, &name("gate_bias"), &[hd])?,
        ]
        .concat(),
    };
    let weights = MtaWeights {
        pre_conv: conv("pre_conv", layer.pre_conv)?,
        pre_mix: mix("pre_mix", layer.pre_mix)?,
        post_conv: conv("post_conv", layer.post_conv)?,
        post_mix: mix("post_mix", layer.post_mix)?,
        norm: match layer.norm {
            true => values_f32(st, &name("norm"), &[hd])?,
            false => Vec::new(),
        },
        gate,
    };
    // Tensors under the prefix that the settings do not use are a mismatch between file and
    // config (a misnamed tensor, or a switch left off), never ignored.
    let used = [
        "pre_conv",
        "pre_mix",
        "post_conv",
        "post_mix",
        "norm",
        "gate_weight",
        "gate_bias",
    ];
    for tensor_name in st.names() {
        if let Some(part) = tensor_name.strip_prefix(&format!("{prefix}.")) {
            let wanted = match part {
                "pre_conv" => layer.pre_conv.is_some(),
                "post_conv" => layer.post_conv.is_some(),
                "pre_mix" => layer.pre_mix,
                "post_mix" => layer.post_mix,
                "norm" => layer.norm,
                "gate_weight" | "gate_bias" => layer.gate != Gate::None,
                _ => false,
            };
            if !wanted {
                return Err(invalid(
                    "mta tensors",
                    format!(
                        "`{tensor_name}` is not used by this layer's settings (tensors here: {})",
                        used.join(", ")
                    ),
                ));
            }
        }
    }
    Ok((*layer, weights))
}

/// Reads `dir/config.json` and `dir/model.safetensors` (memory-mapped) and loads them.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_hf_dir(gpu: std::sync::Arc<Gpu>, dir: &std::path::Path) -> Result<GpuModel> {
    let io = |path: std::path::PathBuf| move |source| ModelError::Read { path, source };
    let config_path = dir.join("config.json");
    let config = std::fs::read_to_string(&config_path).map_err(io(config_path.clone()))?;
    let weights_path = dir.join("model.safetensors");
    let file = std::fs::File::open(&weights_path).map_err(io(weights_path.clone()))?;
    // SAFETY: read-only map of a model file sinkstar never writes (as Gguf::open).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io(weights_path))?;
    GpuModel::load_hf(gpu, &config, &map)
}
