//! Star Attention over several devices in one process (star.md §5): the context's blocks are
//! split into contiguous runs, one per device (a *shard*: a [`Session`] on that device's copy
//! of the model); each shard encodes its run with phase 1's mask, after the anchor it
//! encodes for itself and drops after, with no communication. In phase 2 every shard runs the
//! query's rows through every layer (the same weights, the same hidden states); at each
//! layer's attention it attends to its own cache only, and the shards exchange just their
//! partial outputs and log-sum-exps, `(head_dim + 1)` floats per row and head whatever the
//! context's length, which each shard merges in shard order (`attention_merge`). Only the
//! last shard, the *query shard*, stores the query's and the reply's keys and values, and
//! samples. With one device this is a plain session: phase 2 is ordinary attention.

use std::ops::Range;
use std::sync::Arc;

use super::{GpuModel, ModelError, Session, SessionOptions};
use crate::attention::star::{assign_blocks, StarOptions};
use crate::attention::AttentionPolicy;
use crate::generate::SamplingParams;
use crate::Result;

pub struct StarSession {
    /// One per device; the last is the query shard.
    shards: Vec<Session>,
    /// The text range of the context each shard encodes.
    ranges: Vec<Range<usize>>,
    star: StarOptions,
    n_context: usize,
    /// The next text token's index.
    n_seen: usize,
    /// Sampled by the query shard, not fed yet.
    pending: Option<u32>,
    max_chunk: usize,
}

impl StarSession {
    /// Shards on `models` (the same model loaded on each device) for a context of `n_context`
    /// tokens in blocks of `star`, with `room` positions after it for the query and the reply.
    /// Each shard's cache holds its own part of the context (and, while it encodes it, the
    /// anchor); the query shard's also the room. Everything is allocated here.
    pub fn new(
        models: &[Arc<GpuModel>],
        star: StarOptions,
        n_context: usize,
        room: usize,
        max_chunk: usize,
    ) -> Result<StarSession> {
        star.validate()?;
        let runs = assign_blocks(n_context.div_ceil(star.block), models.len())?;
        let n_shards = models.len();
        let positions = n_context + room;
        let ranges: Vec<Range<usize>> = runs
            .iter()
            .map(|run| {
                (run.start * star.block).min(n_context)..(run.end * star.block).min(n_context)
            })
            .collect();
        let mut shards = Vec::with_capacity(n_shards);
        for (d, (model, range)) in models.iter().zip(&ranges).enumerate() {
            let borrowed = if range.start > 0 { star.anchor } else { 0 };
            let own_room = if d + 1 == n_shards { room } else { 0 };
            // An idle shard (more devices than blocks) still takes part, with nothing to see.
            let capacity = (borrowed + range.len() + own_room).max(1);
            let mut shard = Session::new(
                model.clone(),
                &SessionOptions {
                    policy: AttentionPolicy::Dense { capacity },
                    max_chunk,
                    positions: Some(positions),
                },
            )?;
            if n_shards > 1 {
                shard.enable_exchange(n_shards)?;
            }
            shards.push(shard);
        }
        Ok(StarSession {
            shards,
            ranges,
            star,
            n_context,
            n_seen: 0,
            pending: None,
            max_chunk,
        })
    }

    pub fn n_shards(&self) -> usize {
        self.shards.len()
    }

    /// The shards' sessions, the query shard last.
    pub fn shards(&self) -> &[Session] {
        &self.shards
    }

    /// The text range of the context shard `d` encodes.
    pub fn range(&self, d: usize) -> Range<usize> {
        self.ranges[d].clone()
    }

    pub fn n_seen(&self) -> usize {
        self.n_seen
    }

    /// Phase 1: every shard encodes its blocks of `context` (exactly the `n_context` tokens
    /// the session was made for), block by block and shard after shard in each round, so that
    /// the devices work at once. `on_progress(done, total)` counts blocks.
    pub async fn encode_async(
        &mut self,
        context: &[u32],
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<()> {
        if context.len() != self.n_context || self.n_seen != 0 {
            return Err(ModelError::InvalidConfig {
                what: "Star context".into(),
                reason: format!(
                    "{} tokens given to a session made for a context of {}, {} tokens already \
                     seen",
                    context.len(),
                    self.n_context,
                    self.n_seen
                ),
            }
            .into());
        }
        let star = self.star;
        let blocks: Vec<Vec<Range<usize>>> = self
            .ranges
            .iter()
            .map(|range| {
                star.blocks(self.n_context)
                    .into_iter()
                    .filter(|block| range.contains(&block.start))
                    .collect()
            })
            .collect();
        let total: usize = blocks.iter().map(Vec::len).sum();
        let rounds = blocks.iter().map(Vec::len).max().unwrap_or(0);
        let mut done = 0;
        for round in 0..rounds {
            for (d, shard) in self.shards.iter_mut().enumerate() {
                let Some(block) = blocks[d].get(round) else {
                    continue;
                };
                if round == 0 && block.start > 0 {
                    // The anchor, encoded here as in the first block (same tokens, same
                    // positions), seen by this shard's blocks and dropped after.
                    if star.anchor > 0 {
                        shard.feed_star(&context[..star.anchor], &star)?;
                    }
                    shard.skip_to(block.start)?;
                }
                shard.feed_star(&context[block.clone()], &star)?;
            }
            for (d, shard) in self.shards.iter().enumerate() {
                if blocks[d].get(round).is_some() {
                    shard.model().gpu().finish().await?;
                    done += 1;
                }
            }
            on_progress(done, total);
        }
        for (d, shard) in self.shards.iter_mut().enumerate() {
            if self.ranges[d].start > 0 {
                shard.forget_before(star.anchor);
            }
        }
        // The query shard's next token is the context's end, whatever it encoded.
        let query = self.shards.len() - 1;
        if self.shards[query].n_seen() < self.n_context {
            self.shards[query].skip_to(self.n_context)?;
        }
        self.n_seen = self.n_context;
        Ok(())
    }

    /// Phase 2: feeds `tokens` (the query, or more of the conversation) after what the
    /// session holds, then samples the next token.
    pub async fn feed_and_sample_async(
        &mut self,
        tokens: &[u32],
        sampling: &SamplingParams,
    ) -> Result<u32> {
        if self.shards.len() == 1 {
            let token = self.shards[0]
                .feed_and_sample_async(tokens, sampling)
                .await?;
            self.n_seen = self.shards[0].n_seen();
            return Ok(token);
        }
        self.feed_exchanging(tokens, Some(sampling)).await?;
        self.read_sampled().await
    }

    /// Phase 2 without sampling: feeds `tokens` after what the session holds.
    pub async fn feed_async(&mut self, tokens: &[u32]) -> Result<()> {
        if self.shards.len() == 1 {
            self.shards[0].feed(tokens)?;
            self.n_seen = self.shards[0].n_seen();
            return Ok(());
        }
        self.feed_exchanging(tokens, None).await
    }

    /// The pending token, then `tokens`, in exchange steps of at most `max_chunk` rows; the
    /// last one samples if `sampling` is given.
    async fn feed_exchanging(
        &mut self,
        tokens: &[u32],
        sampling: Option<&SamplingParams>,
    ) -> Result<()> {
        if tokens.is_empty() {
            return Err(ModelError::EmptyInput.into());
        }
        let query = self.shards.len() - 1;
        self.shards[query].remember_tokens(tokens);
        let all: Vec<u32> = self.pending.iter().chain(tokens).copied().collect();
        let chunks: Vec<&[u32]> = all.chunks(self.max_chunk).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            self.exchange_step(chunk, sampling.filter(|_| last)).await?;
        }
        self.pending = None;
        Ok(())
    }

    /// Feeds the token sampled last and samples the next one.
    pub async fn decode_async(&mut self, sampling: &SamplingParams) -> Result<u32> {
        if self.shards.len() == 1 {
            let token = self.shards[0].decode_async(sampling).await?;
            self.n_seen = self.shards[0].n_seen();
            return Ok(token);
        }
        let token = self.pending.ok_or(ModelError::NothingToDecode)?;
        self.exchange_step(&[token], Some(sampling)).await?;
        self.pending = None;
        self.read_sampled().await
    }

    /// Blocking forms for native code.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn encode(
        &mut self,
        context: &[u32],
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<()> {
        pollster::block_on(self.encode_async(context, on_progress))
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn feed_and_sample(&mut self, tokens: &[u32], sampling: &SamplingParams) -> Result<u32> {
        pollster::block_on(self.feed_and_sample_async(tokens, sampling))
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn decode(&mut self, sampling: &SamplingParams) -> Result<u32> {
        pollster::block_on(self.decode_async(sampling))
    }

    /// The logits the query shard computed last, `[vocab_size]` (for tests).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn logits(&self) -> Result<Vec<f32>> {
        self.shards[self.shards.len() - 1].logits()
    }

    /// One chunk of rows through every layer on every shard, exchanging the partial
    /// attentions at each layer; the query shard stores the rows and, with `sampling`, samples.
    async fn exchange_step(
        &mut self,
        tokens: &[u32],
        sampling: Option<&SamplingParams>,
    ) -> Result<()> {
        let query = self.shards.len() - 1;
        let first = self.n_seen;
        for (d, shard) in self.shards.iter_mut().enumerate() {
            let is_query = d == query;
            shard.exchange_begin(tokens, first, is_query, sampling.filter(|_| is_query))?;
        }
        let n_layers = self.shards[query].model().config.n_layers;
        for layer in 0..n_layers {
            let (mut parts, mut parts_lse) = (Vec::new(), Vec::new());
            for shard in &self.shards {
                let (att, lse) = shard.exchange_partial().await?;
                parts.extend(att);
                parts_lse.extend(lse);
            }
            for (d, shard) in self.shards.iter_mut().enumerate() {
                let samples_here = sampling.filter(|_| d == query);
                shard.exchange_continue(layer, &parts, &parts_lse, samples_here)?;
            }
        }
        self.n_seen += tokens.len();
        Ok(())
    }

    async fn read_sampled(&mut self) -> Result<u32> {
        let query = self.shards.len() - 1;
        let token = self.shards[query].exchange_sampled().await?;
        self.pending = Some(token);
        Ok(token)
    }
}
