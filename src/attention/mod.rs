//! Attention policies, host side: which cache slot each new token is written to, which text
//! token every slot holds, and the window parameters the attention kernel applies. Pure Rust
//! and no WGSL: the kernel (`kernels::attention`) computes whatever this decides.
//!
//! The kernel's rule (sink-window spec §3): a query for text token `t` sees the token `u` held
//! in a slot iff `u <= t` and (`u < n_sink` or `u + window > t`), at cache positions derived
//! from `n_sink` and `window`. Dense causal attention is the case `n_sink = capacity`: every
//! token is a "sink", so positions are text positions and nothing is ever evicted.

/// Marks a slot that holds no token yet (the kernel skips it).
pub const EMPTY_SLOT: u32 = u32::MAX;

/// How a session's KV cache is managed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionPolicy {
    /// Every token keeps its slot; the session ends with `ContextFull` when the cache is full.
    Dense,
}

impl AttentionPolicy {
    pub fn name(self) -> &'static str {
        match self {
            AttentionPolicy::Dense => "dense",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error(
        "context full: {seen} tokens seen plus {new} new exceed the {capacity}-slot cache of the \
         `{policy}` policy"
    )]
    ContextFull {
        seen: usize,
        new: usize,
        capacity: usize,
        policy: &'static str,
    },
    #[error("a KV cache needs at least one slot")]
    ZeroCapacity,
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
    /// Text token held by each slot, [`EMPTY_SLOT`] where none.
    slot_token: Vec<u32>,
    /// Tokens ever written.
    n_seen: usize,
}

impl KvSlots {
    pub fn new(policy: AttentionPolicy, capacity: usize) -> Result<KvSlots, PolicyError> {
        if capacity == 0 {
            return Err(PolicyError::ZeroCapacity);
        }
        Ok(KvSlots {
            policy,
            slot_token: vec![EMPTY_SLOT; capacity],
            n_seen: 0,
        })
    }

    pub fn policy(&self) -> AttentionPolicy {
        self.policy
    }

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

    /// `(n_sink, window)` for the attention kernel.
    pub fn kernel_window(&self) -> (u32, u32) {
        match self.policy {
            AttentionPolicy::Dense => (self.capacity() as u32, 1),
        }
    }

    /// Checks that `n_new` more tokens fit, without changing anything.
    pub fn check_room(&self, n_new: usize) -> Result<(), PolicyError> {
        match self.policy {
            AttentionPolicy::Dense if self.n_seen + n_new > self.capacity() => {
                Err(PolicyError::ContextFull {
                    seen: self.n_seen,
                    new: n_new,
                    capacity: self.capacity(),
                    policy: self.policy.name(),
                })
            }
            AttentionPolicy::Dense => Ok(()),
        }
    }

    /// Assigns slots to `n_new` tokens and records them as held.
    pub fn place(&mut self, n_new: usize) -> Result<Placement, PolicyError> {
        self.check_room(n_new)?;
        let first_token = self.n_seen as u32;
        let slots: Vec<u32> = match self.policy {
            AttentionPolicy::Dense => (self.n_seen..self.n_seen + n_new)
                .map(|slot| slot as u32)
                .collect(),
        };
        for (i, &slot) in slots.iter().enumerate() {
            self.slot_token[slot as usize] = first_token + i as u32;
        }
        self.n_seen += n_new;
        Ok(Placement { first_token, slots })
    }

    /// Forgets every token from text index `n_tokens` on, so that the next token placed is
    /// `n_tokens` again. Dense caches only: a ring that has evicted a token cannot go back.
    pub fn truncate(&mut self, n_tokens: usize) {
        match self.policy {
            AttentionPolicy::Dense => {
                for token in &mut self.slot_token {
                    if *token != EMPTY_SLOT && *token as usize >= n_tokens {
                        *token = EMPTY_SLOT;
                    }
                }
                self.n_seen = self.n_seen.min(n_tokens);
            }
        }
    }

    /// Forgets every token (a new conversation).
    pub fn reset(&mut self) {
        self.slot_token.fill(EMPTY_SLOT);
        self.n_seen = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_fills_in_order_then_reports_context_full() {
        let mut slots = KvSlots::new(AttentionPolicy::Dense, 5).unwrap();
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
    fn zero_capacity_is_an_error() {
        assert_eq!(
            KvSlots::new(AttentionPolicy::Dense, 0).unwrap_err(),
            PolicyError::ZeroCapacity
        );
    }
}
