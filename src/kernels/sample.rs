//! sample: one token id per decode step, chosen on the GPU (repetition penalty, temperature,
//! top-k, top-p, then a counter-based random draw), so that at most one u32 comes back.
//!
//! The kernel writes the token to `out[out_index]` of a token buffer that the next step's
//! embedding lookup can read, and appends it to the history ring that the repetition penalty
//! looks at. Between steps the host only advances its [`HistoryRing`] and the step counter in
//! the next [`Params`]; it reads the token buffer back when it wants text. The exact definition
//! is in the header of `shaders/sample.wgsl`, and [`sample_cpu`] follows it in plain Rust.
//! The decode loop (when to read back, stop conditions) belongs to `generate`.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::shader_source;
use crate::gpu::{Binding, Dispatch, Gpu, GpuError, Kernel, PipelineSpec};

/// Twin of the WGSL `Params`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct Params {
    pub vocab_size: u32,
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 (or >= vocab_size) = off.
    pub top_k: u32,
    /// 1 = off.
    pub top_p: f32,
    /// 1 = off.
    pub repetition_penalty: f32,
    /// Capacity of the history ring; 0 = no ring (nothing is read or appended).
    pub history_len: u32,
    /// Valid entries in the ring, the newest ones, ending just before `history_head`.
    pub n_history: u32,
    /// The ring slot the sampled token is written to.
    pub history_head: u32,
    pub seed: u32,
    /// Mixed with `seed` so that every step draws a fresh number.
    pub step: u32,
    /// Index into the token buffer `out` that receives the token.
    pub out_index: u32,
    pub _pad: u32,
}

/// One workgroup does the whole vocabulary; the widest SwiftShader allows, so each of the
/// bisection passes strides over 49152 logits with the most threads.
const WG_SIZE: u32 = 256;

pub fn spec() -> Result<PipelineSpec, GpuError> {
    Ok(PipelineSpec {
        label: format!("sample_wg{WG_SIZE}"),
        source: shader_source("sample.wgsl", &[])?,
        entry: "main",
        overrides: vec![("WG_SIZE".into(), f64::from(WG_SIZE))],
        features: wgpu::Features::empty(),
        bindings: vec![
            Binding::Uniform,
            Binding::Read,
            Binding::ReadWrite,
            Binding::ReadWrite,
            Binding::ReadWrite,
        ],
        loop_bounding: true,
    })
}

pub fn variants() -> Vec<Result<PipelineSpec, GpuError>> {
    vec![spec()]
}

/// Bytes of the `work` scratch buffer for a vocabulary of `vocab_size` tokens.
pub fn work_bytes(vocab_size: u32) -> u64 {
    u64::from(vocab_size) * 4
}

pub struct Sample {
    kernel: Arc<Kernel>,
}

impl Sample {
    pub fn new(gpu: &Gpu) -> Result<Sample, GpuError> {
        Ok(Sample {
            kernel: gpu.kernel(&spec()?)?,
        })
    }

    /// Binds `logits [vocab_size]` f32, `history [history_len]` u32 (any buffer when
    /// `history_len` is 0), `work [vocab_size]` f32 scratch (see [`work_bytes`]) and
    /// `out [n_tokens]` u32, the token buffer the next step may also bind as its input. One
    /// workgroup.
    pub fn dispatch(
        &self,
        gpu: &Gpu,
        params: wgpu::BindingResource,
        logits: &wgpu::Buffer,
        history: &wgpu::Buffer,
        work: &wgpu::Buffer,
        out: &wgpu::Buffer,
    ) -> Result<Dispatch, GpuError> {
        Ok(Dispatch {
            kernel: self.kernel.clone(),
            bind_group: self.kernel.bind(
                gpu,
                &[
                    params,
                    logits.as_entire_binding(),
                    history.as_entire_binding(),
                    work.as_entire_binding(),
                    out.as_entire_binding(),
                ],
            )?,
            workgroups: [1, 1, 1],
        })
    }
}

/// Invalid sampling settings, each naming the value it got.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SampleError {
    #[error("temperature must be finite and >= 0 (0 = greedy), got {value}")]
    Temperature { value: f32 },
    #[error("top_p must be in (0, 1] (1 = off), got {value}")]
    TopP { value: f32 },
    #[error("repetition_penalty must be finite and > 0 (1 = off), got {value}")]
    RepetitionPenalty { value: f32 },
    #[error("vocab_size must be at least 1, got 0")]
    EmptyVocab,
}

/// Sampling settings as a user gives them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy (argmax; the other settings but the penalty are then ignored).
    pub temperature: f32,
    /// Keep the `top_k` largest logits, ties kept; 0 = off.
    pub top_k: u32,
    /// Keep the smallest head of the distribution holding this much probability; 1 = off.
    pub top_p: f32,
    /// Divides positive and multiplies negative logits of recent tokens; 1 = off.
    pub repetition_penalty: f32,
    /// How many of the newest tokens the penalty looks at: the history ring's capacity.
    pub penalty_last_n: u32,
    pub seed: u32,
}

impl Default for SamplingParams {
    /// llama.cpp's defaults, with the repetition penalty off as there.
    fn default() -> SamplingParams {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            repetition_penalty: 1.0,
            penalty_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Argmax decoding: the defaults with temperature 0.
    pub fn greedy() -> SamplingParams {
        SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        }
    }

    pub fn validate(&self) -> Result<(), SampleError> {
        let t = self.temperature;
        if !(t.is_finite() && t >= 0.0) {
            return Err(SampleError::Temperature { value: t });
        }
        let p = self.top_p;
        if !(p > 0.0 && p <= 1.0) {
            return Err(SampleError::TopP { value: p });
        }
        let r = self.repetition_penalty;
        if !(r.is_finite() && r > 0.0) {
            return Err(SampleError::RepetitionPenalty { value: r });
        }
        Ok(())
    }

    /// An empty history ring of `penalty_last_n` slots.
    pub fn ring(&self) -> HistoryRing {
        HistoryRing::new(self.penalty_last_n)
    }

    /// The kernel's params for decode step `step`, with the ring as it stands before the step
    /// and the token written to `out[out_index]`.
    pub fn params(
        &self,
        vocab_size: u32,
        ring: &HistoryRing,
        step: u32,
        out_index: u32,
    ) -> Result<Params, SampleError> {
        self.validate()?;
        if vocab_size == 0 {
            return Err(SampleError::EmptyVocab);
        }
        Ok(Params {
            vocab_size,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            history_len: ring.capacity,
            n_history: ring.n_valid,
            history_head: ring.head,
            seed: self.seed,
            step,
            out_index,
            _pad: 0,
        })
    }
}

/// The host's account of the history ring: `capacity` slots, the newest `n_valid` tokens
/// ending just before slot `head`. The kernel writes each sampled token at `head`; the host
/// mirrors that with [`HistoryRing::advance`], so no readback is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryRing {
    capacity: u32,
    n_valid: u32,
    head: u32,
}

impl HistoryRing {
    pub fn new(capacity: u32) -> HistoryRing {
        HistoryRing {
            capacity,
            n_valid: 0,
            head: 0,
        }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    pub fn n_valid(&self) -> u32 {
        self.n_valid
    }

    pub fn head(&self) -> u32 {
        self.head
    }

    /// Records one token appended at `head` (by the kernel, or by [`HistoryRing::push`]).
    pub fn advance(&mut self) {
        if self.capacity == 0 {
            return;
        }
        self.head = (self.head + 1) % self.capacity;
        self.n_valid = (self.n_valid + 1).min(self.capacity);
    }

    /// Appends `token` to `ring`, the host copy (`[capacity]`) of the ring buffer, as the kernel
    /// does: for the prompt before the first step, and for CPU decoding.
    pub fn push(&mut self, ring: &mut [u32], token: u32) {
        if let Some(slot) = ring.get_mut(self.head as usize) {
            *slot = token;
        }
        self.advance();
    }
}

/// PCG's RXS-M-XS output permutation of an LCG step (the shader's `pcg_hash`).
pub fn pcg_hash(v: u32) -> u32 {
    let state = v.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277_803_737);
    (word >> 22) ^ word
}

/// The draw's uniform number in [0, 1): 24 hashed bits times 2^-24, exact in f32, so the
/// shader's `random_unit` gives the same bits.
pub fn random_unit(seed: u32, step: u32) -> f32 {
    (pcg_hash(pcg_hash(seed) ^ step) >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// Maps f32 to u32 so that unsigned order is the f32 total order (the shader's `order_key`).
pub fn order_key(x: f32) -> u32 {
    let bits = x.to_bits();
    if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// Inverse of [`order_key`].
fn key_value(key: u32) -> f32 {
    f32::from_bits(if key & 0x8000_0000 != 0 {
        key & 0x7fff_ffff
    } else {
        !key
    })
}

/// Step 1: the logits `[vocab_size]` with the repetition penalty applied once per distinct
/// token in the valid part of the ring.
fn penalized_cpu(logits: &[f32], history: &[u32], params: &Params) -> Vec<f32> {
    let n = (params.vocab_size as usize).min(logits.len());
    let mut z = logits[..n].to_vec();
    let penalty = params.repetition_penalty;
    let len = params.history_len as usize;
    if penalty == 1.0 || len == 0 {
        return z;
    }
    let n_history = (params.n_history as usize).min(len);
    let first = params.history_head as usize % len + len - n_history;
    let mut seen = vec![false; n];
    for j in 0..n_history {
        let Some(&token) = history.get((first + j) % len) else {
            continue;
        };
        let t = token as usize;
        if t < n && !seen[t] {
            seen[t] = true;
            let l = logits[t];
            z[t] = if l > 0.0 { l / penalty } else { l * penalty };
        }
    }
    z
}

/// The lowest id among the largest values in total order (`u32::MAX` when empty).
fn argmax_cpu(z: &[f32]) -> u32 {
    let mut best: Option<(u32, usize)> = None;
    for (i, &v) in z.iter().enumerate() {
        let key = order_key(v);
        if best.is_none_or(|(best_key, _)| key > best_key) {
            best = Some((key, i));
        }
    }
    best.map_or(u32::MAX, |(_, i)| i as u32)
}

/// Steps 4 and 5: the order key a token's tempered `z` must reach to be kept.
fn kept_threshold_cpu(z: &[f32], params: &Params) -> u32 {
    // Descending by value: the k-th largest is at k - 1, and top-p walks from the top.
    let mut keys: Vec<u32> = z.iter().map(|&v| order_key(v)).collect();
    keys.sort_unstable_by(|a, b| b.cmp(a));
    let k = params.top_k as usize;
    let mut threshold = if k > 0 && k < keys.len() {
        keys[k - 1]
    } else {
        0
    };
    if params.top_p < 1.0 && !keys.is_empty() {
        let max_z = key_value(keys[0]);
        let kept = keys.iter().take_while(|&&key| key >= threshold);
        // Subtract the max before exp, as in any softmax, so the largest term is exactly 1.
        let weights: Vec<f32> = kept.map(|&key| (key_value(key) - max_z).exp()).collect();
        let goal = params.top_p * weights.iter().sum::<f32>();
        // The first prefix reaching the goal ends at the threshold: the prefix sums at all
        // larger values fall short, and ties after it only add mass.
        let mut mass = 0.0;
        for (&key, w) in keys.iter().zip(&weights) {
            mass += w;
            if mass >= goal {
                threshold = key;
                break;
            }
        }
    }
    threshold
}

/// The tokens that survive the penalty, temperature, top-k and top-p, in id order; at
/// temperature 0, the argmax alone.
pub fn kept_cpu(logits: &[f32], history: &[u32], params: &Params) -> Vec<u32> {
    let z = penalized_cpu(logits, history, params);
    if params.temperature == 0.0 {
        return vec![argmax_cpu(&z)];
    }
    let z: Vec<f32> = z.iter().map(|l| l / params.temperature).collect();
    let threshold = kept_threshold_cpu(&z, params);
    (0..z.len() as u32)
        .filter(|&i| order_key(z[i as usize]) >= threshold)
        .collect()
}

/// CPU reference of the kernel: the token it writes, for `logits [vocab_size]` and the ring
/// `history [history_len]` described by `params`.
pub fn sample_cpu(logits: &[f32], history: &[u32], params: &Params) -> u32 {
    let z = penalized_cpu(logits, history, params);
    if params.temperature == 0.0 {
        return argmax_cpu(&z);
    }
    let z: Vec<f32> = z.iter().map(|l| l / params.temperature).collect();
    // Taken after the division, which may merge near-equal values into a tie.
    let argmax = argmax_cpu(&z);
    let threshold = kept_threshold_cpu(&z, params);
    let Some(&max_z) = z.get(argmax as usize) else {
        return argmax;
    };
    // weights: [vocab_size], exp(z - max z) for kept tokens, 0 for the rest.
    let weights: Vec<f32> = z
        .iter()
        .map(|&v| {
            if order_key(v) >= threshold {
                (v - max_z).exp()
            } else {
                0.0
            }
        })
        .collect();
    let total: f32 = weights.iter().sum();
    // NaN when the max is infinite.
    if total.is_nan() || total <= 0.0 {
        return argmax;
    }
    let point = random_unit(params.seed, params.step) * total;
    let mut running = 0.0;
    let mut last = argmax;
    for (i, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            running += w;
            last = i as u32;
            if running > point {
                return last;
            }
        }
    }
    last
}
