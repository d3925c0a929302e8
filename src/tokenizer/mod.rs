//! Tokenizer built from a GGUF's own vocabulary (or, in `hf`, a Hugging Face
//! `tokenizer.json`): byte-level BPE encode/decode, a streaming detokenizer, and (in `chat`)
//! the chat template.
//!
//! Encoding is done by the `tokenizers` crate (pure-Rust regex build, so it runs on wasm32),
//! set up to reproduce llama.cpp's tokenizer for the file: the same merges, the same
//! pre-tokenizer regexes for `tokenizer.ggml.pre`, and control tokens (type 3) matched in raw
//! text before anything else. Decoding maps each token back to its raw bytes with a table
//! built here, so the streaming detokenizer can hold back bytes until they form whole UTF-8.
//!
//! What it leaves out: SentencePiece (`llama`), WordPiece and other tokenizer models, and
//! pre-tokenizers other than the GPT-2 and SmolLM/StarCoder families; those are rejected
//! with a typed error.

pub mod chat;
pub mod hf;

pub use chat::{ChatMessage, ChatTemplate};

use std::fmt;
use std::sync::Arc;

use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::model::gguf::{Gguf, GgufError};

/// llama.cpp token types (`tokenizer.ggml.token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// `tokenizer.ggml.pre` values whose pre-tokenizer is llama.cpp's
/// `LLAMA_VOCAB_PRE_TYPE_SMOLLM` group: each digit split off alone, then the GPT-2 regex.
const DIGIT_SPLIT_PRES: [&str; 8] = [
    "smollm",
    "starcoder",
    "refact",
    "command-r",
    "codeshell",
    "exaone",
    "minerva-7b",
    "mellum2",
];
/// `tokenizer.ggml.pre` values that use the plain GPT-2 regex.
const GPT2_PRES: [&str; 5] = ["gpt2", "mpt", "olmo", "jais", "trillion"];

/// Errors from building a tokenizer, encoding, decoding and chat templates.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("tokenizer model `{model}` is not supported: expected `gpt2` (byte-level bpe)")]
    UnsupportedModel { model: String },
    #[error(
        "pre-tokenizer `{pre}` is not supported: expected one of smollm, starcoder, refact, \
         command-r, codeshell, exaone, minerva-7b, mellum2, gpt2, mpt, olmo, jais, trillion"
    )]
    UnsupportedPre { pre: String },
    #[error(
        "tokenizer.ggml.token_type has {n_types} entries, expected one per token ({n_tokens})"
    )]
    TokenTypeCount { n_types: usize, n_tokens: usize },
    #[error("bpe merge {index} `{merge}` is not two tokens separated by a space")]
    BadMerge { index: usize, merge: String },
    #[error("{what} token id {id} is out of range: the vocabulary has {vocab_size} tokens")]
    SpecialOutOfRange {
        what: &'static str,
        id: u32,
        vocab_size: usize,
    },
    #[error("building the bpe tokenizer failed: {message}")]
    Build { message: String },
    #[error("encoding failed: {message}")]
    Encode { message: String },
    #[error("token id {id} is out of range: the vocabulary has {vocab_size} tokens")]
    UnknownToken { id: u32, vocab_size: usize },
    #[error("chat template error: {message}")]
    Template { message: String },
    #[error("{file}: {reason}")]
    HfFile { file: &'static str, reason: String },
    #[error("reading {path}: {message}")]
    Read { path: String, message: String },
}

/// How a vocabulary entry turns back into bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Piece {
    /// GPT-2's byte-to-character map (`Ġ` is a space).
    ByteLevel,
    /// A control token (`<|im_end|>`): its text, dropped by the streaming detokenizer.
    Control,
    /// Its text as it is (llama.cpp's user-defined tokens, Hugging Face's non-special added
    /// tokens).
    Literal,
}

/// A byte-level BPE tokenizer read from a GGUF or a Hugging Face `tokenizer.json`. Cloning is
/// cheap (shared, immutable).
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

struct Inner {
    bpe: tokenizers::Tokenizer,
    /// Raw bytes of every token, back to back; token `i` is
    /// `piece_bytes[piece_offsets[i]..piece_offsets[i + 1]]`.
    piece_bytes: Vec<u8>,
    piece_offsets: Vec<usize>,
    /// [vocab_size]
    is_control: Vec<bool>,
    bos: u32,
    eos: u32,
    add_bos: bool,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.inner.bos)
            .field("eos", &self.inner.eos)
            .field("add_bos", &self.inner.add_bos)
            .finish()
    }
}

impl Tokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.*` metadata.
    pub fn from_gguf(gguf: &Gguf) -> Result<Tokenizer, TokenizerError> {
        let model = gguf.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel {
                model: model.to_string(),
            });
        }
        let pre = gguf.get_str("tokenizer.ggml.pre")?;
        let pre_tokenizer = pre_tokenizer(pre)?;
        let tokens = gguf.get_str_array("tokenizer.ggml.tokens")?;
        let types = gguf.get_i32_array("tokenizer.ggml.token_type")?;
        if types.len() != tokens.len() {
            return Err(TokenizerError::TokenTypeCount {
                n_types: types.len(),
                n_tokens: tokens.len(),
            });
        }
        if u32::try_from(tokens.len()).is_err() {
            return Err(TokenizerError::Build {
                message: format!("{} tokens do not fit in u32 ids", tokens.len()),
            });
        }
        let merges = gguf
            .get_str_array("tokenizer.ggml.merges")?
            .into_iter()
            .enumerate()
            .map(|(index, merge)| {
                split_merge(merge).ok_or_else(|| TokenizerError::BadMerge {
                    index,
                    merge: merge.to_string(),
                })
            })
            .collect::<Result<Merges, _>>()?;
        let special_id = |key: &'static str, what: &'static str| -> Result<u32, TokenizerError> {
            let id = gguf.get_u32(key)?;
            if id as usize >= tokens.len() {
                return Err(TokenizerError::SpecialOutOfRange {
                    what,
                    id,
                    vocab_size: tokens.len(),
                });
            }
            Ok(id)
        };
        let bos = special_id("tokenizer.ggml.bos_token_id", "bos")?;
        let eos = special_id("tokenizer.ggml.eos_token_id", "eos")?;
        // llama.cpp adds no BOS to a gpt2-model prompt unless the file asks for it.
        let add_bos = match gguf.get("tokenizer.ggml.add_bos_token") {
            None => false,
            Some(_) => gguf.get_bool("tokenizer.ggml.add_bos_token")?,
        };

        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, text)| (text.to_string(), id as u32))
            .collect();
        let model = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| TokenizerError::Build {
                message: e.to_string(),
            })?;
        let mut bpe = tokenizers::Tokenizer::new(model);
        bpe.with_pre_tokenizer(Some(pre_tokenizer));
        // Control tokens are matched in raw text (llama.cpp's parse_special); user-defined
        // tokens are always matched, as llama.cpp does.
        let added = |wanted: i32, special: bool| -> Vec<AddedToken> {
            tokens
                .iter()
                .zip(&types)
                .filter(|(_, &t)| t == wanted)
                .map(|(text, _)| AddedToken::from(text.to_string(), special).normalized(false))
                .collect()
        };
        bpe.add_special_tokens(&added(TOKEN_TYPE_CONTROL, true));
        bpe.add_tokens(&added(TOKEN_TYPE_USER_DEFINED, false));

        let entries = tokens.iter().zip(&types).map(|(text, &t)| {
            let kind = match t {
                TOKEN_TYPE_CONTROL => Piece::Control,
                TOKEN_TYPE_USER_DEFINED => Piece::Literal,
                _ => Piece::ByteLevel,
            };
            (*text, kind)
        });
        Ok(Tokenizer::assemble(bpe, entries, bos, eos, add_bos))
    }

    /// The tokenizer of `bpe` (which encodes) with its vocabulary as `(text, kind)` in id
    /// order (from which it decodes).
    fn assemble<'a>(
        bpe: tokenizers::Tokenizer,
        entries: impl Iterator<Item = (&'a str, Piece)>,
        bos: u32,
        eos: u32,
        add_bos: bool,
    ) -> Tokenizer {
        let mut piece_bytes = Vec::new();
        let mut piece_offsets = vec![0];
        let mut is_control = Vec::new();
        for (text, kind) in entries {
            match kind {
                Piece::ByteLevel => byte_level_decode(text, &mut piece_bytes),
                Piece::Control | Piece::Literal => piece_bytes.extend_from_slice(text.as_bytes()),
            }
            piece_offsets.push(piece_bytes.len());
            is_control.push(kind == Piece::Control);
        }
        Tokenizer {
            inner: Arc::new(Inner {
                bpe,
                piece_bytes,
                piece_offsets,
                is_control,
                bos,
                eos,
                add_bos,
            }),
        }
    }

    /// Token ids of `text`. Special-token text (`<|im_start|>`) becomes its control id; BOS
    /// is prepended only if the file sets `tokenizer.ggml.add_bos_token`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding =
            self.inner
                .bpe
                .encode_fast(text, false)
                .map_err(|e| TokenizerError::Encode {
                    message: e.to_string(),
                })?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if self.inner.add_bos {
            ids.push(self.inner.bos);
        }
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// Text of `ids`, control tokens included (so `decode(encode(s)) == s`). Byte sequences
    /// that are not valid UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(self.piece_checked(id)?);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Raw bytes of one token (control tokens: their text), or `None` for unknown ids.
    pub fn piece(&self, id: u32) -> Option<&[u8]> {
        let i = id as usize;
        let start = *self.inner.piece_offsets.get(i)?;
        let end = *self.inner.piece_offsets.get(i + 1)?;
        Some(&self.inner.piece_bytes[start..end])
    }

    fn piece_checked(&self, id: u32) -> Result<&[u8], TokenizerError> {
        self.piece(id).ok_or(TokenizerError::UnknownToken {
            id,
            vocab_size: self.vocab_size(),
        })
    }

    pub fn bos(&self) -> u32 {
        self.inner.bos
    }

    pub fn eos(&self) -> u32 {
        self.inner.eos
    }

    /// Whether `encode` prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.inner.add_bos
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.is_control.len()
    }

    /// Whether `id` is a control token (`<|im_end|>` …); false for unknown ids.
    pub fn is_control(&self, id: u32) -> bool {
        self.inner
            .is_control
            .get(id as usize)
            .copied()
            .unwrap_or(false)
    }

    /// A streaming detokenizer over this tokenizer.
    pub fn stream(&self) -> TextStream {
        TextStream::new(self)
    }
}

/// Splits a GGUF merge `"a b"` at its first space after the first byte, as llama.cpp does
/// (a merge's left part may itself start with a space in non-byte-level vocabularies).
fn split_merge(merge: &str) -> Option<(String, String)> {
    let pos = merge.bytes().skip(1).position(|b| b == b' ')? + 1;
    Some((merge[..pos].to_string(), merge[pos + 1..].to_string()))
}

fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper, TokenizerError> {
    // GPT-2's regex, applied by ByteLevel itself. llama.cpp's copy lacks the final `|\s+`
    // alternative but its splitter keeps unmatched whitespace as its own piece, which is the
    // same split.
    let byte_level = ByteLevel::new(false, true, true);
    if GPT2_PRES.contains(&pre) {
        Ok(byte_level.into())
    } else if DIGIT_SPLIT_PRES.contains(&pre) {
        let digits = Split::new(
            SplitPattern::Regex(r"\p{N}".to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| TokenizerError::Build {
            message: e.to_string(),
        })?;
        Ok(Sequence::new(vec![digits.into(), byte_level.into()]).into())
    } else {
        Err(TokenizerError::UnsupportedPre {
            pre: pre.to_string(),
        })
    }
}

/// Whether GPT-2's byte-level map lets byte `b` stand for itself (printable Latin-1).
const fn is_printable_byte(b: u32) -> bool {
    (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff)
}

/// The 68 bytes GPT-2 maps to U+0100 upwards (controls, space, 0x7f-0xa0, 0xad), in order.
const SHIFTED_BYTES: [u8; 68] = {
    let mut table = [0u8; 68];
    let mut n = 0;
    let mut b = 0;
    while b < 256 {
        if !is_printable_byte(b) {
            table[n] = b as u8;
            n += 1;
        }
        b += 1;
    }
    table
};

/// GPT-2's byte-to-character map, inverted.
fn byte_level_byte(c: char) -> Option<u8> {
    let code = c as u32;
    if code < 0x100 {
        return is_printable_byte(code).then_some(code as u8);
    }
    SHIFTED_BYTES.get((code - 0x100) as usize).copied()
}

/// Appends the raw bytes of a byte-level token. A character outside the map (never in a
/// well-formed vocabulary) is kept as its own UTF-8, as llama.cpp does.
fn byte_level_decode(text: &str, out: &mut Vec<u8>) {
    for c in text.chars() {
        match byte_level_byte(c) {
            Some(b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

/// Turns generated token ids into text as they arrive, holding back bytes until they form
/// whole UTF-8 characters (an emoji often spans several byte tokens).
#[derive(Debug, Clone)]
pub struct TextStream {
    tokenizer: Tokenizer,
    /// Bytes of an incomplete UTF-8 sequence (at most 3).
    pending: Vec<u8>,
    show_control: bool,
}

impl TextStream {
    /// A stream that drops control tokens (`<|im_end|>` prints nothing).
    pub fn new(tokenizer: &Tokenizer) -> TextStream {
        TextStream {
            tokenizer: tokenizer.clone(),
            pending: Vec::new(),
            show_control: false,
        }
    }

    /// Whether control tokens print their text.
    pub fn show_control(mut self, show: bool) -> TextStream {
        self.show_control = show;
        self
    }

    /// Feeds one id; returns the text that became complete, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>, TokenizerError> {
        if self.tokenizer.is_control(id) && !self.show_control {
            return Ok(None);
        }
        let piece = self.tokenizer.piece_checked(id)?;
        self.pending.extend_from_slice(piece);
        let mut text = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    text.push_str(s);
                    self.pending.clear();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    text.push_str(
                        std::str::from_utf8(&self.pending[..valid])
                            .expect("prefix checked as valid"),
                    );
                    match e.error_len() {
                        // An incomplete sequence at the end: wait for the next token.
                        None => {
                            self.pending.drain(..valid);
                            break;
                        }
                        // Bytes that can never become valid: replace them and go on.
                        Some(n) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + n);
                        }
                    }
                }
            }
        }
        Ok((!text.is_empty()).then_some(text))
    }

    /// Flushes held-back bytes (an incomplete sequence becomes U+FFFD).
    pub fn finish(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        Some(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_map_covers_every_byte_once() {
        let mut seen = [false; 256];
        for code in 0..0x200u32 {
            if let Some(b) = char::from_u32(code).and_then(byte_level_byte) {
                assert!(!seen[b as usize], "byte {b} mapped twice");
                seen[b as usize] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(byte_level_byte('Ġ'), Some(b' '));
        assert_eq!(byte_level_byte('Ċ'), Some(b'\n'));
        assert_eq!(byte_level_byte('ĉ'), Some(b'\t'));
    }

    #[test]
    fn merges_split_like_llama_cpp() {
        assert_eq!(split_merge("Ġ t"), Some(("Ġ".into(), "t".into())));
        assert_eq!(split_merge("  x"), Some((" ".into(), "x".into())));
        assert_eq!(split_merge("ab"), None);
        assert_eq!(split_merge(""), None);
    }
}
