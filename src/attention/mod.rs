//! Attention policies, host side: which cache slot each new token is written to, which text
//! token every slot holds, and the window parameters the attention kernel applies. Pure Rust
//! and no WGSL: the kernel (`kernels::attention`) computes whatever this decides.
//!
//! The kernel's rule (sink-window spec §3): a query for text token `t` sees the token `u` held
//! in a slot iff `u <= t` and (`u < n_sink` or `u + window > t`), at cache positions: sinks at
//! `u`, window keys packed right after them, the query at `min(t, n_sink + window - 1)`.
//! Dense causal attention is the case `n_sink = capacity`: every token is a "sink", positions
//! are text positions and nothing is evicted.
//!
//! The sink and window policies keep a ring of `window + max_chunk - 1` slots after the sinks
//! (spec §5-§6): a chunk of `max_chunk` new tokens is written before its queries run, and the
//! first query of the chunk must still find the `window - 1` tokens before it.
//!
//! A dense cache fills its slots in text order but may skip ahead in the text ([`KvSlots::skip_to`])
//! and drop its first tokens ([`KvSlots::forget_before`]): a Star Attention shard (star.md §5)
//! holds the anchor while it encodes its blocks, then only its own part of a longer text, at the
//! text's positions.

pub mod star;

/// Marks a slot that holds no token yet (the kernel skips it).
pub const EMPTY_SLOT: u32 = u32::MAX;

/// StreamingLLM's default: 4 sinks.
pub const DEFAULT_SINKS: usize = 4;
/// 4 + 2044 = 2048 slots of attention, the paper's setting for a 2048-token cache.
pub const DEFAULT_WINDOW: usize = 2044;

/// How a session's KV cache is managed. Chosen once per session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionPolicy {
    /// Every token keeps its slot; a session ends with `ContextFull` once `capacity` tokens
    /// are in.
    Dense { capacity: usize },
    /// The last `window` tokens only, at positions inside the cache: StreamingLLM's baseline
    /// that collapses once the first token is evicted.
    Window { window: usize },
    /// The first `n_sink` tokens forever plus the last `window` (StreamingLLM): constant
    /// memory, a chat that never runs out of context.
    Sink { n_sink: usize, window: usize },
    /// For every new token, the last `window` tokens re-encoded from scratch at positions
    /// `0..`: StreamingLLM's slow but faithful baseline.
    Recompute { window: usize },
}

impl Default for AttentionPolicy {
    fn default() -> Self {
        AttentionPolicy::Sink {
            n_sink: DEFAULT_SINKS,
            window: DEFAULT_WINDOW,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error(
        "context full: {seen} tokens seen plus {new} new exceed the {capacity}-slot cache of the \
         `{policy}` policy (the `sink` policy never fills up)"
    )]
    ContextFull {
        seen: usize,
        new: usize,
        capacity: usize,
        policy: &'static str,
    },
    #[error("the `{policy}` policy needs at least one slot, got a capacity of 0")]
    ZeroCapacity { policy: &'static str },
    #[error(
        "with {n_sink} sinks the {capacity}-slot attention span leaves no room for a window: \
         the window must be at least 1 token"
    )]
    NoWindow { n_sink: usize, capacity: usize },
    #[error(
        "the `{policy}` policy spans {span} positions but the model was trained on {context_len}: \
         use at most {context_len}"
    )]
    BeyondContext {
        policy: &'static str,
        span: usize,
        context_len: usize,
    },
    #[error(
        "cannot cut the `{policy}` cache back to {n_tokens} tokens: it no longer holds them all"
    )]
    CannotTruncate {
        policy: &'static str,
        n_tokens: usize,
    },
    #[error("a chunk of {n_new} tokens exceeds the ring's chunk size of {max_chunk}")]
    ChunkTooLarge { n_new: usize, max_chunk: usize },
    #[error(
        "the `{policy}` cache cannot skip from text token {from} to {to}: only a dense cache \
         skips, and only forward"
    )]
    CannotSkip {
        policy: &'static str,
        from: usize,
        to: usize,
    },
    #[error(
        "text positions exhausted: tokens {first}..{end} go past the {positions} positions this \
         session was opened for"
    )]
    PositionsExhausted {
        first: usize,
        end: usize,
        positions: usize,
    },
}

impl AttentionPolicy {
    pub fn name(self) -> &'static str {
        match self {
            AttentionPolicy::Dense { .. } => "dense",
            AttentionPolicy::Window { .. } => "window",
            AttentionPolicy::Sink { .. } => "sink",
            AttentionPolicy::Recompute { .. } => "recompute",
        }
    }

    /// The sinks and window of a ring policy; `None` for dense and recompute.
    pub fn ring(self) -> Option<(usize, usize)> {
        match self {
            AttentionPolicy::Window { window } => Some((0, window)),
            AttentionPolicy::Sink { n_sink, window } => Some((n_sink, window)),
            AttentionPolicy::Dense { .. } | AttentionPolicy::Recompute { .. } => None,
        }
    }

    /// Positions a query can be at, `0..span`: what attention can see at once.
    pub fn span(self) -> usize {
        match self {
            AttentionPolicy::Dense { capacity } => capacity,
            AttentionPolicy::Window { window } | AttentionPolicy::Recompute { window } => window,
            AttentionPolicy::Sink { n_sink, window } => n_sink.saturating_add(window),
        }
    }

    /// Checks the policy against the model's trained context, before anything is allocated.
    pub fn validate(self, context_len: usize) -> Result<(), PolicyError> {
        let policy = self.name();
        match self {
            AttentionPolicy::Dense { capacity: 0 } => {
                return Err(PolicyError::ZeroCapacity { policy })
            }
            AttentionPolicy::Window { window: 0 }
            | AttentionPolicy::Recompute { window: 0 }
            | AttentionPolicy::Sink {
                n_sink: 0,
                window: 0,
            } => return Err(PolicyError::ZeroCapacity { policy }),
            AttentionPolicy::Sink { n_sink, window: 0 } => {
                return Err(PolicyError::NoWindow {
                    n_sink,
                    capacity: n_sink,
                })
            }
            _ => {}
        }
        if self.span() > context_len {
            return Err(PolicyError::BeyondContext {
                policy,
                span: self.span(),
                context_len,
            });
        }
        Ok(())
    }

    /// Physical slots of the cache when chunks hold up to `max_chunk` tokens.
    pub fn n_slots(self, max_chunk: usize) -> usize {
        match self.ring() {
            Some((n_sink, window)) => n_sink + window + max_chunk.max(1) - 1,
            None => self.span(),
        }
    }
}

/// Where a chunk of new tokens goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Text index of the chunk's first token.
    pub first_token: u32,
    /// Slot of each new token, in order.
    pub slots: Vec<u32>,
}

/// The slot bookkeeping of one session: a mirror of the GPU's `slot_token` table.
#[derive(Debug, Clone)]
pub struct KvSlots {
    policy: AttentionPolicy,
    max_chunk: usize,
    /// Text token held by each slot, [`EMPTY_SLOT`] where none.
    slot_token: Vec<u32>,
    /// The next text token's index: tokens written, plus any skipped.
    n_seen: usize,
    /// Dense: the next slot to fill (slots fill in order, whatever the text index).
    next_free: usize,
    /// Dense: text positions `0..positions` the cache may hold (at least its capacity).
    positions: usize,
}

impl KvSlots {
    /// Slots for `policy` (validated by the caller) with chunks of up to `max_chunk` tokens.
    pub fn new(policy: AttentionPolicy, max_chunk: usize) -> Result<KvSlots, PolicyError> {
        let n_slots = policy.n_slots(max_chunk);
        if n_slots == 0 {
            return Err(PolicyError::ZeroCapacity {
                policy: policy.name(),
            });
        }
        Ok(KvSlots {
            policy,
            max_chunk: max_chunk.max(1),
            slot_token: vec![EMPTY_SLOT; n_slots],
            n_seen: 0,
            next_free: 0,
            positions: policy.span(),
        })
    }

    /// A dense cache that holds text positions up to `positions` (more than its slots: it will
    /// skip ahead). No effect on rings, whose positions stay inside the cache.
    pub fn with_positions(mut self, positions: usize) -> KvSlots {
        self.positions = self.positions.max(positions);
        self
    }

    /// Text positions a query can be at, `0..positions()`: the RoPE table's rows.
    pub fn positions(&self) -> usize {
        match self.policy.ring() {
            Some(_) => self.policy.span(),
            None => self.positions,
        }
    }

    pub fn policy(&self) -> AttentionPolicy {
        self.policy
    }

    /// Physical slots.
    pub fn capacity(&self) -> usize {
        self.slot_token.len()
    }

    pub fn n_seen(&self) -> usize {
        self.n_seen
    }

    /// Slots holding a token.
    pub fn n_filled(&self) -> usize {
        self.slot_token.iter().filter(|&&u| u != EMPTY_SLOT).count()
    }

    /// Slots the attention kernel must scan: up to the highest slot holding a token.
    pub fn scan_len(&self) -> usize {
        self.slot_token
            .iter()
            .rposition(|&u| u != EMPTY_SLOT)
            .map_or(0, |slot| slot + 1)
    }

    pub fn slot_token(&self) -> &[u32] {
        &self.slot_token
    }

    /// The slot the next token will be written to (the ring's write head); `capacity()` once
    /// a dense cache is full.
    pub fn next_slot(&self) -> usize {
        match self.policy.ring() {
            Some(_) => self.slot_of(self.n_seen),
            None => self.next_free,
        }
    }

    /// `(n_sink, window)` for the attention kernel.
    pub fn kernel_window(&self) -> (u32, u32) {
        match self.policy.ring() {
            Some((n_sink, window)) => (n_sink as u32, window as u32),
            // Every position a sink: plain causal attention at text positions.
            None => (self.positions as u32, 1),
        }
    }

    /// The slot of text token `token` in a ring (dense caches fill `next_free` instead).
    fn slot_of(&self, token: usize) -> usize {
        match self.policy.ring() {
            Some((n_sink, _)) if token >= n_sink => {
                n_sink + (token - n_sink) % (self.capacity() - n_sink)
            }
            _ => token,
        }
    }

    /// Checks that `n_new` more tokens fit, slots and positions, without changing anything.
    pub fn check_room(&self, n_new: usize) -> Result<(), PolicyError> {
        if self.policy.ring().is_some() {
            return Ok(());
        }
        if self.next_free + n_new > self.capacity() {
            return Err(PolicyError::ContextFull {
                seen: self.n_filled(),
                new: n_new,
                capacity: self.capacity(),
                policy: self.policy.name(),
            });
        }
        if self.n_seen + n_new > self.positions {
            return Err(PolicyError::PositionsExhausted {
                first: self.n_seen,
                end: self.n_seen + n_new,
                positions: self.positions,
            });
        }
        Ok(())
    }

    /// Assigns slots to `n_new` tokens and records them as held. A ring takes at most
    /// `max_chunk` tokens at once (its slack is sized for that).
    pub fn place(&mut self, n_new: usize) -> Result<Placement, PolicyError> {
        self.check_room(n_new)?;
        if self.policy.ring().is_some() && n_new > self.max_chunk {
            return Err(PolicyError::ChunkTooLarge {
                n_new,
                max_chunk: self.max_chunk,
            });
        }
        let first_token = self.n_seen as u32;
        let slots: Vec<u32> = match self.policy.ring() {
            Some(_) => (self.n_seen..self.n_seen + n_new)
                .map(|token| self.slot_of(token) as u32)
                .collect(),
            None => (self.next_free..self.next_free + n_new)
                .map(|slot| slot as u32)
                .collect(),
        };
        for (i, &slot) in slots.iter().enumerate() {
            self.slot_token[slot as usize] = first_token + i as u32;
        }
        self.n_seen += n_new;
        if self.policy.ring().is_none() {
            self.next_free += n_new;
        }
        Ok(Placement { first_token, slots })
    }

    /// Makes `token` the next text token placed, leaving the tokens in between out of the
    /// cache (another device holds them). Dense caches only, forward only.
    pub fn skip_to(&mut self, token: usize) -> Result<(), PolicyError> {
        if self.policy.ring().is_some() || token < self.n_seen {
            return Err(PolicyError::CannotSkip {
                policy: self.policy.name(),
                from: self.n_seen,
                to: token,
            });
        }
        self.n_seen = token;
        Ok(())
    }

    /// Empties the slots of text tokens `0..n_tokens` (a Star shard's borrowed anchor); their
    /// slots are not reused.
    pub fn forget_before(&mut self, n_tokens: usize) {
        for token in &mut self.slot_token {
            if (*token as usize) < n_tokens {
                *token = EMPTY_SLOT;
            }
        }
    }

    /// Whether the slots hold text tokens in ascending order, empty ones last: what the
    /// attention kernel's Star block mask needs (a dense cache before any
    /// [`KvSlots::forget_before`]).
    pub fn is_ascending(&self) -> bool {
        // EMPTY_SLOT is above every token, so an empty slot before the last filled one fails.
        let filled = &self.slot_token[..self.scan_len()];
        filled.windows(2).all(|pair| pair[0] < pair[1])
    }

    /// Whether [`KvSlots::truncate`] to `n_tokens` is possible: every token before it is still
    /// held (for a ring, only before anything was evicted; for a dense cache, unless it
    /// skipped or forgot some of them).
    pub fn can_truncate(&self, n_tokens: usize) -> bool {
        let n_tokens = n_tokens.min(self.n_seen);
        match self.policy.ring() {
            Some(_) => (0..n_tokens).all(|u| self.slot_token[self.slot_of(u)] == u as u32),
            None => {
                let held = self.slot_token.iter().filter(|&&u| (u as usize) < n_tokens);
                held.count() == n_tokens
            }
        }
    }

    /// Forgets every token from text index `n_tokens` on, so that the next token placed is
    /// `n_tokens` again. Only meaningful where [`KvSlots::can_truncate`] holds.
    pub fn truncate(&mut self, n_tokens: usize) {
        for token in &mut self.slot_token {
            if *token != EMPTY_SLOT && *token as usize >= n_tokens {
                *token = EMPTY_SLOT;
            }
        }
        self.n_seen = self.n_seen.min(n_tokens);
        // Dense slots fill in text order, so the dropped tokens were the last slots.
        self.next_free = self.scan_len();
    }

    /// Forgets every token (a new conversation).
    pub fn reset(&mut self) {
        self.slot_token.fill(EMPTY_SLOT);
        self.n_seen = 0;
        self.next_free = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_fills_in_order_then_reports_context_full() {
        let mut slots = KvSlots::new(AttentionPolicy::Dense { capacity: 5 }, 3).unwrap();
        assert_eq!(
            slots.place(3).unwrap(),
            Placement {
                first_token: 0,
                slots: vec![0, 1, 2]
            }
        );
        assert_eq!(slots.place(2).unwrap().slots, vec![3, 4]);
        assert_eq!(slots.slot_token(), &[0, 1, 2, 3, 4]);
        assert_eq!(slots.scan_len(), 5);
        let err = slots.place(1).unwrap_err();
        assert_eq!(
            err,
            PolicyError::ContextFull {
                seen: 5,
                new: 1,
                capacity: 5,
                policy: "dense"
            }
        );
        assert!(err.to_string().contains("5-slot cache"));
        // A refused chunk changes nothing.
        assert_eq!(slots.n_seen(), 5);
        assert!(slots.can_truncate(2));
        slots.truncate(2);
        assert_eq!(
            slots.slot_token(),
            &[0, 1, EMPTY_SLOT, EMPTY_SLOT, EMPTY_SLOT]
        );
        assert_eq!(slots.place(1).unwrap().slots, vec![2]);
        slots.reset();
        assert_eq!(slots.n_filled(), 0);
        assert_eq!(slots.place(1).unwrap().first_token, 0);
    }

    #[test]
    fn sink_ring_keeps_sinks_and_wraps_the_window() {
        // 2 sinks, window 3, chunks of 2: ring of 3 + 2 - 1 = 4 slots after the sinks.
        let policy = AttentionPolicy::Sink {
            n_sink: 2,
            window: 3,
        };
        let mut slots = KvSlots::new(policy, 2).unwrap();
        assert_eq!(slots.capacity(), 6);
        assert_eq!(slots.kernel_window(), (2, 3));
        let mut placed = Vec::new();
        for _ in 0..6 {
            placed.extend(slots.place(2).unwrap().slots);
        }
        // Tokens 0, 1 are sinks; tokens 2.. cycle through slots 2, 3, 4, 5.
        assert_eq!(placed, vec![0, 1, 2, 3, 4, 5, 2, 3, 4, 5, 2, 3]);
        assert_eq!(slots.slot_token(), &[0, 1, 10, 11, 8, 9]);
        assert!(!slots.can_truncate(5), "token 2 was evicted");
        assert_eq!(
            slots.place(3).unwrap_err(),
            PolicyError::ChunkTooLarge {
                n_new: 3,
                max_chunk: 2
            }
        );
        // The ring never fills up.
        for _ in 0..1000 {
            slots.place(1).unwrap();
        }
    }

    #[test]
    fn window_is_a_ring_without_sinks() {
        let mut slots = KvSlots::new(AttentionPolicy::Window { window: 1 }, 1).unwrap();
        assert_eq!(slots.capacity(), 1);
        for t in 0..5 {
            assert_eq!(slots.place(1).unwrap().slots, vec![0]);
            assert_eq!(slots.slot_token(), &[t]);
        }
    }

    #[test]
    fn bad_policies_are_named() {
        let dense0 = AttentionPolicy::Dense { capacity: 0 };
        assert_eq!(
            dense0.validate(8192),
            Err(PolicyError::ZeroCapacity { policy: "dense" })
        );
        let no_window = AttentionPolicy::Sink {
            n_sink: 4,
            window: 0,
        };
        let err = no_window.validate(8192).unwrap_err();
        assert_eq!(
            err,
            PolicyError::NoWindow {
                n_sink: 4,
                capacity: 4
            }
        );
        let too_long = AttentionPolicy::Sink {
            n_sink: 4,
            window: 8189,
        };
        assert_eq!(
            too_long.validate(8192),
            Err(PolicyError::BeyondContext {
                policy: "sink",
                span: 8193,
                context_len: 8192
            })
        );
        assert!(AttentionPolicy::default().validate(8192).is_ok());
        assert_eq!(AttentionPolicy::default().span(), 2048);
    }
}
