//! The CPU reference forward pass: plain f32 loops over weights dequantized once at load.
//! Slow and readable on purpose; it is the oracle for the GPU pass, layer by layer.
//!
//! It follows model.md §5 directly and shares no code with the kernels except the quant
//! decoders: RoPE angles are computed per use in f64, and attention is a textbook softmax.
//! For the sink-window policies it is the "re-pack" oracle of the spec (§10.3): for each query
//! it literally rebuilds the list `[sinks ; last window]` of visible tokens, gives them
//! positions `0..n` in that order and runs dense attention over it. So keys are cached raw and
//! rotated for each query; dense attention is the list of every earlier token.

use super::config::{tensor, LlamaConfig};
use super::gguf::Gguf;
use super::quant::dequantize_tensor;
use super::ModelError;

/// One block's weights, row-major `[out][in]` as `y = W·x` reads them.
struct CpuLayer {
    attn_norm: Vec<f32>, // [dim]
    wq: Vec<f32>,        // [n_heads * head_dim][dim]
    wk: Vec<f32>,        // [n_kv_heads * head_dim][dim]
    wv: Vec<f32>,        // [n_kv_heads * head_dim][dim]
    wo: Vec<f32>,        // [dim][n_heads * head_dim]
    ffn_norm: Vec<f32>,  // [dim]
    w_gate: Vec<f32>,    // [hidden_dim][dim]
    w_up: Vec<f32>,      // [hidden_dim][dim]
    w_down: Vec<f32>,    // [dim][hidden_dim]
}

pub struct CpuModel {
    pub config: LlamaConfig,
    embed: Vec<f32>, // [vocab_size][dim]
    layers: Vec<CpuLayer>,
    output_norm: Vec<f32>, // [dim]
    /// `[vocab_size][dim]`; `None` when the head is tied to `embed`.
    output: Option<Vec<f32>>,
}

/// Raw keys and values of every token seen, per layer: `[n_tokens][kv_dim]` flattened, and
/// which of them attention sees.
#[derive(Default)]
pub struct CpuKvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    /// `(n_sink, window)`; `None` is dense.
    sink_window: Option<(usize, usize)>,
}

impl CpuKvCache {
    /// A cache whose queries see the first `n_sink` tokens and the last `window` (themselves
    /// included), at positions packed inside that list.
    pub fn sink_window(n_sink: usize, window: usize) -> CpuKvCache {
        CpuKvCache {
            sink_window: Some((n_sink, window)),
            ..CpuKvCache::default()
        }
    }

    /// Text indices visible to query `t`, in order: their list index is their position.
    fn visible(&self, t: usize) -> Vec<usize> {
        match self.sink_window {
            Some((n_sink, window)) => (0..=t).filter(|&u| u < n_sink || u + window > t).collect(),
            None => (0..=t).collect(),
        }
    }

    pub fn n_tokens(&self, kv_dim: usize) -> usize {
        self.k.first().map_or(0, |k| k.len() / kv_dim)
    }
}

impl CpuModel {
    pub fn from_gguf(gguf: &Gguf) -> Result<CpuModel, ModelError> {
        let config = LlamaConfig::from_gguf(gguf)?;
        let load = |name: &str| -> Result<Vec<f32>, ModelError> {
            Ok(dequantize_tensor(gguf, tensor(gguf, name)?)?)
        };
        let layers = (0..config.n_layers)
            .map(|l| {
                let w = |name: &str| load(&format!("blk.{l}.{name}.weight"));
                Ok(CpuLayer {
                    attn_norm: w("attn_norm")?,
                    wq: w("attn_q")?,
                    wk: w("attn_k")?,
                    wv: w("attn_v")?,
                    wo: w("attn_output")?,
                    ffn_norm: w("ffn_norm")?,
                    w_gate: w("ffn_gate")?,
                    w_up: w("ffn_up")?,
                    w_down: w("ffn_down")?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(CpuModel {
            embed: load("token_embd.weight")?,
            output_norm: load("output_norm.weight")?,
            output: match config.tied_output {
                true => None,
                false => Some(load("output.weight")?),
            },
            layers,
            config,
        })
    }

    /// Runs `tokens` after whatever `cache` holds and returns the logits of every new token,
    /// `[tokens.len()][vocab_size]` flattened.
    pub fn forward(&self, tokens: &[u32], cache: &mut CpuKvCache) -> Result<Vec<f32>, ModelError> {
        self.forward_traced(tokens, cache, &mut |_, _| {})
    }

    /// Like [`CpuModel::forward`], calling `trace(layer, x)` with the residual stream
    /// `[tokens.len()][dim]` after each layer, for layer-by-layer diffs.
    pub fn forward_traced(
        &self,
        tokens: &[u32],
        cache: &mut CpuKvCache,
        trace: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<Vec<f32>, ModelError> {
        let c = &self.config;
        let (dim, hd, kv_dim) = (c.dim, c.head_dim, c.kv_dim());
        if cache.k.is_empty() {
            cache.k = vec![Vec::new(); c.n_layers];
            cache.v = vec![Vec::new(); c.n_layers];
        }
        let first_pos = cache.n_tokens(kv_dim);
        let n = tokens.len();
        let mut x = Vec::with_capacity(n * dim);
        for &token in tokens {
            if token as usize >= c.vocab_size {
                return Err(ModelError::TokenOutOfRange {
                    token,
                    vocab_size: c.vocab_size,
                });
            }
            x.extend_from_slice(&self.embed[token as usize * dim..][..dim]);
        }
        let group = c.n_heads / c.n_kv_heads;
        for (l, layer) in self.layers.iter().enumerate() {
            for t in 0..n {
                let pos = first_pos + t;
                let h = rms_norm(&x[t * dim..][..dim], &layer.attn_norm, c.rms_eps);
                let mut q = matvec(&layer.wq, &h);
                let k = matvec(&layer.wk, &h);
                let v = matvec(&layer.wv, &h);
                cache.k[l].extend_from_slice(&k);
                cache.v[l].extend_from_slice(&v);
                // Causal: token `pos` sees (some of) tokens 0..=pos, itself last.
                let visible = cache.visible(pos);
                let q_pos = visible.len() - 1;
                for head in q.chunks_exact_mut(hd) {
                    rope(head, q_pos, c.rope_base);
                }
                let mut att = vec![0.0; c.q_dim()];
                for head in 0..c.n_heads {
                    let kv_head = head / group;
                    let q_h = &q[head * hd..][..hd];
                    let scores: Vec<f32> = visible
                        .iter()
                        .enumerate()
                        .map(|(k_pos, &u)| {
                            let mut k_u = cache.k[l][u * kv_dim + kv_head * hd..][..hd].to_vec();
                            rope(&mut k_u, k_pos, c.rope_base);
                            dot(q_h, &k_u) / (hd as f32).sqrt()
                        })
                        .collect();
                    let weights = softmax(&scores);
                    let out = &mut att[head * hd..][..hd];
                    for (&u, w) in visible.iter().zip(&weights) {
                        let v_u = &cache.v[l][u * kv_dim + kv_head * hd..][..hd];
                        for (o, v) in out.iter_mut().zip(v_u) {
                            *o += w * v;
                        }
                    }
                }
                let row = &mut x[t * dim..][..dim];
                for (xi, yi) in row.iter_mut().zip(matvec(&layer.wo, &att)) {
                    *xi += yi;
                }
                let h = rms_norm(row, &layer.ffn_norm, c.rms_eps);
                let gate = matvec(&layer.w_gate, &h);
                let up = matvec(&layer.w_up, &h);
                let act: Vec<f32> = gate
                    .iter()
                    .zip(&up)
                    .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                    .collect();
                for (xi, yi) in row.iter_mut().zip(matvec(&layer.w_down, &act)) {
                    *xi += yi;
                }
            }
            trace(l, &x);
        }
        let head = self.output.as_ref().unwrap_or(&self.embed);
        let mut logits = Vec::with_capacity(n * c.vocab_size);
        for row in x.chunks_exact(dim) {
            logits.extend(matvec(head, &rms_norm(row, &self.output_norm, c.rms_eps)));
        }
        Ok(logits)
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `W·x` for row-major `W[out][in]` with `in = x.len()`.
fn matvec(w: &[f32], x: &[f32]) -> Vec<f32> {
    w.chunks_exact(x.len()).map(|row| dot(row, x)).collect()
}

fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let scale = 1.0 / (dot(x, x) / x.len() as f32 + eps).sqrt();
    x.iter().zip(weight).map(|(v, w)| w * (v * scale)).collect()
}

/// Numerically safe softmax: subtracting the max keeps `exp` from overflowing.
fn softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

/// Interleaved RoPE on one head (model.md §5): rotates `(x[2i], x[2i+1])` by
/// `pos * base^(-2i/d)`, the angle taken in f64 so long positions stay exact.
fn rope(head: &mut [f32], pos: usize, base: f32) {
    let d = head.len();
    for i in 0..d / 2 {
        let theta = pos as f64 * f64::from(base).powf(-2.0 * i as f64 / d as f64);
        let (sin, cos) = (theta.sin() as f32, theta.cos() as f32);
        let (a, b) = (head[2 * i], head[2 * i + 1]);
        head[2 * i] = a * cos - b * sin;
        head[2 * i + 1] = a * sin + b * cos;
    }
}
