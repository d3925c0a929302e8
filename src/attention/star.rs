//! Star Attention, host side (star.md): the block size and anchor, which text tokens form which
//! block, and which device encodes which blocks. Pure Rust: the phase-1 mask itself is the
//! attention kernel's (`block`, `anchor`), the phase-2 merge of partitions `attention_merge`.

use std::ops::Range;

/// Default block size: long enough that a block holds a few paragraphs of context, short
/// enough that an 8K-token document (the default model's whole context) spans 8 blocks.
pub const DEFAULT_BLOCK: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StarError {
    #[error("Star Attention needs a block of at least 1 token")]
    ZeroBlock,
    #[error("a Star anchor of {anchor} tokens is longer than the {block}-token block")]
    AnchorTooLong { anchor: usize, block: usize },
    #[error("Star Attention needs at least one device")]
    NoDevices,
}

/// Block size `b` and anchor size `a` (star.md §2): every block after the first is encoded
/// seeing the text's first `a` tokens and its own earlier tokens only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StarOptions {
    pub block: usize,
    /// `0..=block`; 0 (no anchor) only to show what the anchor buys.
    pub anchor: usize,
}

impl Default for StarOptions {
    /// The reference's default: the anchor is the whole first block.
    fn default() -> Self {
        StarOptions {
            block: DEFAULT_BLOCK,
            anchor: DEFAULT_BLOCK,
        }
    }
}

impl StarOptions {
    pub fn validate(&self) -> Result<(), StarError> {
        if self.block == 0 {
            return Err(StarError::ZeroBlock);
        }
        if self.anchor > self.block {
            return Err(StarError::AnchorTooLong {
                anchor: self.anchor,
                block: self.block,
            });
        }
        Ok(())
    }

    /// The text ranges of the blocks of a context of `n_context` tokens; the last may be short.
    pub fn blocks(&self, n_context: usize) -> Vec<Range<usize>> {
        (0..n_context)
            .step_by(self.block.max(1))
            .map(|start| start..(start + self.block).min(n_context))
            .collect()
    }

    /// Whether a context of `n_context` tokens is better encoded densely: with at most two
    /// blocks, Star saves nothing (with `a = b` the second block already does the work of
    /// dense attention) and dense is exact.
    pub fn prefers_dense(&self, n_context: usize) -> bool {
        n_context <= 2 * self.block
    }
}

/// The blocks each of `n_devices` devices encodes: contiguous runs of nearly equal length in
/// text order, the first device starting with block 0 (star.md §2). With more devices than
/// blocks the last ones get none; the last device is the query device either way.
pub fn assign_blocks(n_blocks: usize, n_devices: usize) -> Result<Vec<Range<usize>>, StarError> {
    if n_devices == 0 {
        return Err(StarError::NoDevices);
    }
    let (base, extra) = (n_blocks / n_devices, n_blocks % n_devices);
    let mut start = 0;
    Ok((0..n_devices)
        .map(|d| {
            let len = base + usize::from(d < extra);
            let run = start..start + len;
            start += len;
            run
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_the_context_with_a_short_last_block() {
        let star = StarOptions {
            block: 30,
            anchor: 30,
        };
        assert_eq!(star.blocks(91), vec![0..30, 30..60, 60..90, 90..91]);
        assert_eq!(star.blocks(60), vec![0..30, 30..60]);
        assert!(star.blocks(0).is_empty());
        assert!(star.prefers_dense(60));
        assert!(!star.prefers_dense(61));
    }

    #[test]
    fn devices_get_contiguous_near_equal_runs() {
        assert_eq!(assign_blocks(7, 3).unwrap(), vec![0..3, 3..5, 5..7]);
        assert_eq!(assign_blocks(2, 4).unwrap(), vec![0..1, 1..2, 2..2, 2..2]);
        assert_eq!(assign_blocks(5, 1).unwrap(), vec![0..5]);
        assert_eq!(assign_blocks(3, 0), Err(StarError::NoDevices));
    }

    #[test]
    fn bad_options_are_named() {
        let zero = StarOptions {
            block: 0,
            anchor: 0,
        };
        assert_eq!(zero.validate(), Err(StarError::ZeroBlock));
        let long = StarOptions {
            block: 8,
            anchor: 9,
        };
        assert_eq!(
            long.validate(),
            Err(StarError::AnchorTooLong {
                anchor: 9,
                block: 8
            })
        );
        assert!(StarOptions::default().validate().is_ok());
    }
}
