//! The tokenizer and chat template of a Hugging Face model directory: `tokenizer.json` (read by
//! the `tokenizers` crate itself, which wrote the format) and `tokenizer_config.json` (the BOS
//! and EOS tokens, `add_bos_token`, `chat_template`).
//!
//! What it reads: byte-level BPE (`model.type` BPE with a ByteLevel decoder), the kind every
//! Llama-family model since Llama 3, SmolLM and GPT-2 ships; SentencePiece-style vocabularies
//! (Metaspace decoders, byte fallback) are refused with a typed error, as from GGUF.

use std::collections::HashMap;

use serde_json::Value;

use super::{ChatTemplate, Piece, Tokenizer, TokenizerError};

fn invalid(file: &'static str, reason: impl Into<String>) -> TokenizerError {
    TokenizerError::HfFile {
        file,
        reason: reason.into(),
    }
}

fn parse(file: &'static str, text: &str) -> Result<Value, TokenizerError> {
    serde_json::from_str(text).map_err(|e| invalid(file, e.to_string()))
}

/// A special token's text in tokenizer_config.json: a string, or an AddedToken object with
/// `content`; `None` when the key is absent or null.
fn special_text(config: &Value, key: &str) -> Result<Option<String>, TokenizerError> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(Value::Object(token)) => match token.get("content") {
            Some(Value::String(text)) => Ok(Some(text.clone())),
            _ => Err(invalid(
                "tokenizer_config.json",
                format!("`{key}` has no `content` string"),
            )),
        },
        Some(other) => Err(invalid(
            "tokenizer_config.json",
            format!("`{key}` is {other}, not a token"),
        )),
    }
}

impl Tokenizer {
    /// The tokenizer of `tokenizer_json` (the text of a `tokenizer.json`), with its BOS/EOS
    /// tokens and `add_bos_token` from `tokenizer_config` (the text of its
    /// `tokenizer_config.json`: a tokenizer.json alone does not say which token ends a reply).
    pub fn from_hf(
        tokenizer_json: &str,
        tokenizer_config: &str,
    ) -> Result<Tokenizer, TokenizerError> {
        let json = parse("tokenizer.json", tokenizer_json)?;
        let type_of = |key: &str| json[key]["type"].as_str().unwrap_or("none").to_string();
        let (model, decoder) = (type_of("model"), type_of("decoder"));
        if model != "BPE" || decoder != "ByteLevel" {
            return Err(TokenizerError::UnsupportedModel {
                model: format!("{model} with a {decoder} decoder (tokenizer.json)"),
            });
        }
        if json["model"]["byte_fallback"].as_bool() == Some(true) {
            return Err(TokenizerError::UnsupportedModel {
                model: "BPE with byte fallback (tokenizer.json)".to_string(),
            });
        }
        let bpe = tokenizers::Tokenizer::from_bytes(tokenizer_json.as_bytes()).map_err(|e| {
            TokenizerError::Build {
                message: format!("tokenizer.json: {e}"),
            }
        })?;

        let vocab = bpe.get_vocab(true);
        let n_tokens = vocab.values().max().map_or(0, |&id| id as usize + 1);
        let mut texts: Vec<Option<&str>> = vec![None; n_tokens];
        for (text, &id) in &vocab {
            texts[id as usize] = Some(text);
        }
        if let Some(id) = texts.iter().position(Option::is_none) {
            return Err(invalid(
                "tokenizer.json",
                format!(
                    "no token has id {id}, below the largest id {}",
                    n_tokens - 1
                ),
            ));
        }
        let added: HashMap<u32, bool> = bpe
            .get_added_tokens_decoder()
            .iter()
            .map(|(&id, token)| (id, token.special))
            .collect();
        let entries = texts.iter().enumerate().map(|(id, text)| {
            let kind = match added.get(&(id as u32)) {
                Some(true) => Piece::Control,
                Some(false) => Piece::Literal,
                None => Piece::ByteLevel,
            };
            (text.expect("every id checked above"), kind)
        });

        let config = parse("tokenizer_config.json", tokenizer_config)?;
        let id_of = |key: &str| -> Result<Option<u32>, TokenizerError> {
            let Some(text) = special_text(&config, key)? else {
                return Ok(None);
            };
            match vocab.get(&text) {
                Some(&id) => Ok(Some(id)),
                None => Err(invalid(
                    "tokenizer_config.json",
                    format!("`{key}` {text:?} is not in the vocabulary"),
                )),
            }
        };
        let eos = id_of("eos_token")?
            .ok_or_else(|| invalid("tokenizer_config.json", "`eos_token` is missing"))?;
        let add_bos = match config.get("add_bos_token") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(invalid(
                    "tokenizer_config.json",
                    format!("`add_bos_token` is {other}, not true or false"),
                ))
            }
        };
        let bos = match id_of("bos_token")? {
            Some(id) => id,
            None if add_bos => {
                return Err(invalid(
                    "tokenizer_config.json",
                    "`add_bos_token` is true but `bos_token` is missing",
                ))
            }
            // Never prepended, and a template without bos_token renders it as "".
            None => eos,
        };
        Ok(Tokenizer::assemble(bpe, entries, bos, eos, add_bos))
    }
}

impl ChatTemplate {
    /// The `chat_template` of a `tokenizer_config.json` (a string, or a list of named
    /// templates of which `default` is taken), or `None` when it has none.
    pub fn from_hf(tokenizer_config: &str) -> Result<Option<ChatTemplate>, TokenizerError> {
        const FILE: &str = "tokenizer_config.json";
        let config = parse(FILE, tokenizer_config)?;
        let source = match config.get("chat_template") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(source)) => source.as_str(),
            Some(Value::Array(named)) => named
                .iter()
                .find(|t| t["name"] == "default")
                .and_then(|t| t["template"].as_str())
                .ok_or_else(|| invalid(FILE, "`chat_template` has no `default` template"))?,
            Some(other) => {
                return Err(invalid(
                    FILE,
                    format!("`chat_template` is {other}, not a template"),
                ))
            }
        };
        let bos = special_text(&config, "bos_token")?.unwrap_or_default();
        let eos = special_text(&config, "eos_token")?.unwrap_or_default();
        ChatTemplate::new(source, bos, eos).map(Some)
    }
}

/// The tokenizer and chat template of the Hugging Face model directory `dir`: tokenizer.json
/// and tokenizer_config.json are both required.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_hf_tokenizer_dir(
    dir: &std::path::Path,
) -> Result<(Tokenizer, Option<ChatTemplate>), TokenizerError> {
    let read = |file: &str| {
        let path = dir.join(file);
        std::fs::read_to_string(&path).map_err(|e| TokenizerError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    };
    let (json, config) = (read("tokenizer.json")?, read("tokenizer_config.json")?);
    Ok((
        Tokenizer::from_hf(&json, &config)?,
        ChatTemplate::from_hf(&config)?,
    ))
}
