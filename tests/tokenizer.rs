//! Tokenizer and chat template against llama.cpp, on the real model.
//!
//! Token ids come from tests/golden/*.json (scripts/golden.py, llama-cpp-python with
//! add_bos=False, special=True); they must match exactly. The model is read from
//! $SINKSTAR_HOME (default ~/.cache/sinkstar); scripts/fetch-model.sh puts it there.

use std::path::PathBuf;
use std::sync::OnceLock;

use sinkstar::model::gguf::{Gguf, GgufError, GgufWriter, MetaValue};
use sinkstar::tokenizer::{ChatMessage, ChatTemplate, Tokenizer, TokenizerError};

const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn model_path() -> PathBuf {
    let home = std::env::var_os("SINKSTAR_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/sinkstar")))
        .expect("SINKSTAR_HOME or HOME is set");
    home.join(MODEL_FILE)
}

fn model() -> &'static Gguf {
    static MODEL: OnceLock<Gguf> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path = model_path();
        Gguf::open(&path).unwrap_or_else(|e| panic!("{e} (run scripts/fetch-model.sh)"))
    })
}

fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| Tokenizer::from_gguf(model()).expect("tokenizer builds"))
}

fn golden(name: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// (text, ids) of every case in a golden file; `ids_key` names the id list.
fn golden_cases(name: &str, ids_key: &str) -> Vec<(String, Vec<u32>)> {
    let file = golden(name);
    let cases = file["cases"].as_array().expect("cases is an array");
    cases
        .iter()
        .map(|c| {
            let text = c["text"].as_str().expect("text is a string").to_string();
            let ids = c[ids_key]
                .as_array()
                .expect("ids are an array")
                .iter()
                .map(|v| v.as_u64().expect("id is an integer") as u32)
                .collect();
            (text, ids)
        })
        .collect()
}

fn assert_encodes_like_llama_cpp(cases: &[(String, Vec<u32>)]) {
    let tok = tokenizer();
    let mut failures = Vec::new();
    for (text, want) in cases {
        let got = tok.encode(text).expect("encode");
        if &got != want {
            failures.push(format!(
                "{text:?}\n  llama.cpp {want:?}\n  sinkstar  {got:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn hard_strings_encode_like_llama_cpp() {
    let cases = golden_cases("tokenize.json", "ids");
    assert!(
        cases.len() >= 12,
        "tokenize.json has only {} cases",
        cases.len()
    );
    assert_encodes_like_llama_cpp(&cases);
}

/// More corners than tokenize.json covers: digits of other scripts (split one by one, like
/// ASCII ones), Unicode spaces, case-sensitive contractions, special-token lookalikes, NUL
/// and noncharacters. Ids from llama-cpp-python 0.3.36 on the same file:
/// `llm.tokenize(text.encode(), add_bos=False, special=True)`.
const EXTRA_CASES: [(&str, &[u32]); 8] = [
    (
        "Unicode digits \u{663}\u{9ea}\u{ff11}\u{1d7d8} \u{b2} \u{bd} \u{216b}",
        &[
            3706, 15817, 18638, 216, 164, 113, 47827, 120, 8083, 235, 23159, 249, 242, 216, 19133,
            216, 16738, 216, 173, 223, 121,
        ],
    ),
    (
        "nbsp\u{a0}and\u{3000}ideographic\u{2028}sep",
        &[
            94, 32093, 15442, 397, 12109, 218, 489, 4551, 321, 118, 29070,
        ],
    ),
    (
        "I'M HE'S it\u{2019}s y'all",
        &[57, 23, 61, 18209, 23, 67, 357, 417, 99, 329, 23, 449],
    ),
    (
        "<|im_start<|im_end|>|>",
        &[44, 108, 306, 79, 3738, 2, 108, 46],
    ),
    (
        "\u{0}\u{7f}\u{fffd}\u{10ffff}",
        &[190, 217, 24211, 189, 233, 140, 140],
    ),
    (
        "\u{fb01}ne e\u{301}\u{20dd}",
        &[27141, 662, 297, 151, 219, 173, 221, 247],
    ),
    (
        "x\r\n\r\ny \u{b}\u{c} z",
        &[104, 7209, 198, 105, 216, 199, 200, 1892],
    ),
    (
        "<repo_name>a<file_sep>b<jupyter_output>",
        &[3, 81, 5, 82, 14],
    ),
];

#[test]
fn more_corner_cases_encode_like_llama_cpp() {
    let cases: Vec<(String, Vec<u32>)> = EXTRA_CASES
        .iter()
        .map(|(text, ids)| (text.to_string(), ids.to_vec()))
        .collect();
    assert_encodes_like_llama_cpp(&cases);
    for (text, ids) in &cases {
        assert_eq!(&tokenizer().decode(ids).unwrap(), text);
    }
}

#[test]
fn golden_prompts_encode_like_llama_cpp() {
    // The prompts of the logits and greedy oracles, chat prompts and long prose included.
    let mut cases = golden_cases("logits.json", "tokens");
    cases.extend(golden_cases("greedy.json", "tokens"));
    assert_encodes_like_llama_cpp(&cases);
}

#[test]
fn decode_inverts_encode() {
    let tok = tokenizer();
    for (text, ids) in golden_cases("tokenize.json", "ids") {
        let has_control = ids.iter().any(|&id| tok.is_control(id));
        // Control tokens decode to their text too, so the round trip holds for every case;
        // the ones without them are the round trip llama.cpp's detokenizer also guarantees.
        let back = tok.decode(&ids).expect("decode");
        assert_eq!(back, text, "round trip (control tokens: {has_control})");
    }
}

#[test]
fn generated_ids_decode_to_llama_cpp_text() {
    let tok = tokenizer();
    let file = golden("greedy.json");
    for case in file["cases"].as_array().expect("cases") {
        let ids: Vec<u32> = case["generated"]
            .as_array()
            .expect("generated")
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect();
        let want = case["generated_text"].as_str().expect("generated_text");
        // The oracle detokenizes with special=True, so control tokens (a final EOS) print.
        assert_eq!(tok.decode(&ids).unwrap(), want, "case {}", case["name"]);
        let mut stream = tok.stream().show_control(true);
        let mut got = String::new();
        for &id in &ids {
            if let Some(piece) = stream.push(id).expect("push") {
                got.push_str(&piece);
            }
        }
        got.extend(stream.finish());
        assert_eq!(got, want, "case {}", case["name"]);
    }
}

#[test]
fn special_tokens_follow_the_file() {
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.bos(), 1);
    assert_eq!(tok.eos(), 2);
    assert!(!tok.add_bos());
    assert!((0..17).all(|id| tok.is_control(id)));
    assert!(!tok.is_control(17));
    assert!(!tok.is_control(1_000_000));
    assert_eq!(tok.encode("<|im_end|>").unwrap(), vec![2]);
    assert_eq!(tok.encode("").unwrap(), Vec::<u32>::new());
    assert_eq!(tok.decode(&[1, 2]).unwrap(), "<|im_start|><|im_end|>");
}

#[test]
fn unknown_ids_are_typed_errors() {
    let tok = tokenizer();
    let e = tok.decode(&[5, 49152]).unwrap_err();
    assert!(
        matches!(
            e,
            TokenizerError::UnknownToken {
                id: 49152,
                vocab_size: 49152
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("49152"), "{e}");
    let e = tok.stream().push(u32::MAX).unwrap_err();
    assert!(matches!(e, TokenizerError::UnknownToken { .. }), "{e}");
}

#[test]
fn stream_holds_back_split_emoji() {
    let tok = tokenizer();
    let text = "I ❤️ Rust 🦀! 👩\u{200d}👩\u{200d}👧 ok";
    let ids = tok.encode(text).unwrap();
    let mut stream = tok.stream();
    let mut pieces = Vec::new();
    let mut held_back = 0;
    for &id in &ids {
        match stream.push(id).unwrap() {
            Some(piece) => pieces.push(piece),
            None => held_back += 1,
        }
    }
    assert_eq!(stream.finish(), None);
    assert_eq!(pieces.concat(), text);
    // The crab alone is four byte tokens; the first three must print nothing.
    assert!(held_back >= 3, "only {held_back} ids were held back");
    assert!(pieces.iter().any(|p| p.contains('🦀')));
    assert!(pieces.iter().all(|p| !p.contains('\u{fffd}')));
}

#[test]
fn stream_finish_flushes_an_incomplete_character() {
    let tok = tokenizer();
    let ids = tok.encode("🦀").unwrap();
    assert!(ids.len() > 1, "🦀 should span several byte tokens: {ids:?}");
    let mut stream = tok.stream();
    assert_eq!(stream.push(ids[0]).unwrap(), None);
    assert_eq!(stream.finish().as_deref(), Some("\u{fffd}"));
    assert_eq!(stream.finish(), None);
}

#[test]
fn stream_skips_control_tokens_unless_asked() {
    let tok = tokenizer();
    let ids = tok.encode("<|im_start|>assistant\nHi!<|im_end|>").unwrap();
    let collect = |show: bool| {
        let mut stream = tok.stream().show_control(show);
        let mut out = String::new();
        for &id in &ids {
            out.extend(stream.push(id).unwrap());
        }
        out.extend(stream.finish());
        out
    };
    assert_eq!(collect(false), "assistant\nHi!");
    assert_eq!(collect(true), "<|im_start|>assistant\nHi!<|im_end|>");
}

/// A GGUF holding only tokenizer metadata: the 256 byte-level characters, two merges
/// (`h e`, `Ġ he`) and one control token, with `overrides` replacing or removing keys.
fn tiny_tokenizer_gguf(overrides: &[(&str, Option<MetaValue>)]) -> Gguf {
    let mut tokens: Vec<String> = vec!["<|end|>".into()];
    // GPT-2's byte-level alphabet: printable Latin-1 as itself, the rest from U+0100.
    let mut shifted = 0x100;
    for b in 0..=255u32 {
        let printable =
            (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        let c = if printable {
            char::from_u32(b)
        } else {
            shifted += 1;
            char::from_u32(shifted - 1)
        };
        tokens.push(c.expect("valid char").to_string());
    }
    tokens.push("he".into());
    tokens.push("Ġhe".into());
    let mut types = vec![3i32];
    types.resize(tokens.len(), 1);
    let mut meta: Vec<(&str, MetaValue)> = vec![
        ("tokenizer.ggml.model", "gpt2".into()),
        ("tokenizer.ggml.pre", "smollm".into()),
        ("tokenizer.ggml.tokens", tokens.into()),
        ("tokenizer.ggml.token_type", types.into()),
        ("tokenizer.ggml.merges", vec!["h e", "Ġ he"].into()),
        ("tokenizer.ggml.bos_token_id", 0u32.into()),
        ("tokenizer.ggml.eos_token_id", 0u32.into()),
    ];
    for (key, value) in overrides {
        meta.retain(|(k, _)| k != key);
        if let Some(v) = value {
            meta.push((key, v.clone()));
        }
    }
    let mut w = GgufWriter::new(3);
    for (k, v) in meta {
        w.meta(k, v);
    }
    Gguf::from_bytes(w.to_bytes()).expect("tiny tokenizer gguf parses")
}

#[test]
fn tiny_synthetic_vocabulary_works() {
    let tok = Tokenizer::from_gguf(&tiny_tokenizer_gguf(&[])).expect("tiny tokenizer builds");
    let ids = tok.encode("he he<|end|>42").unwrap();
    assert_eq!(ids.len(), 5, "{ids:?}"); // he, Ġhe, <|end|>, 4, 2
    assert_eq!(ids[0], 257);
    assert_eq!(ids[1], 258);
    assert_eq!(ids[2], 0);
    assert_eq!(tok.decode(&ids).unwrap(), "he he<|end|>42");
}

#[test]
fn unsupported_tokenizer_model_is_rejected() {
    let g = tiny_tokenizer_gguf(&[("tokenizer.ggml.model", Some("llama".into()))]);
    let e = Tokenizer::from_gguf(&g).unwrap_err();
    assert!(
        matches!(&e, TokenizerError::UnsupportedModel { model } if model == "llama"),
        "{e}"
    );
    assert!(e.to_string().contains("`llama` is not supported"), "{e}");
}

#[test]
fn unsupported_pre_tokenizer_is_rejected() {
    let g = tiny_tokenizer_gguf(&[("tokenizer.ggml.pre", Some("llama-bpe".into()))]);
    let e = Tokenizer::from_gguf(&g).unwrap_err();
    assert!(matches!(e, TokenizerError::UnsupportedPre { .. }), "{e}");
    assert!(e.to_string().contains("llama-bpe"), "{e}");
}

#[test]
fn missing_tokenizer_keys_are_typed_errors() {
    for key in [
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.eos_token_id",
    ] {
        let e = Tokenizer::from_gguf(&tiny_tokenizer_gguf(&[(key, None)])).unwrap_err();
        assert!(
            matches!(&e, TokenizerError::Gguf(GgufError::MissingKey { key: k }) if k == key),
            "{key}: {e}"
        );
        assert!(e.to_string().contains(key), "{e}");
    }
}

#[test]
fn bad_tokenizer_metadata_is_rejected() {
    let g = tiny_tokenizer_gguf(&[("tokenizer.ggml.token_type", Some(vec![1i32, 1].into()))]);
    let e = Tokenizer::from_gguf(&g).unwrap_err();
    assert!(
        matches!(e, TokenizerError::TokenTypeCount { n_types: 2, .. }),
        "{e}"
    );

    let g = tiny_tokenizer_gguf(&[("tokenizer.ggml.merges", Some(vec!["he"].into()))]);
    let e = Tokenizer::from_gguf(&g).unwrap_err();
    assert!(
        matches!(e, TokenizerError::BadMerge { index: 0, .. }),
        "{e}"
    );

    let g = tiny_tokenizer_gguf(&[("tokenizer.ggml.eos_token_id", Some(9999u32.into()))]);
    let e = Tokenizer::from_gguf(&g).unwrap_err();
    assert!(
        matches!(e, TokenizerError::SpecialOutOfRange { id: 9999, .. }),
        "{e}"
    );

    let g = tiny_tokenizer_gguf(&[("tokenizer.ggml.model", Some(7u32.into()))]);
    let e = Tokenizer::from_gguf(&g).unwrap_err();
    assert!(
        matches!(e, TokenizerError::Gguf(GgufError::WrongMetaType { .. })),
        "{e}"
    );
}

// Chat template. The expected strings were produced by rendering the GGUF's own
// `tokenizer.chat_template` with Python jinja2 3.1.6 the way transformers'
// apply_chat_template does:
//   env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
//   env.from_string(template).render(messages=[{"role": .., "content": ..}, ..],
//       add_generation_prompt=.., bos_token="<|im_start|>", eos_token="<|im_end|>")

const DEFAULT_SYSTEM: &str =
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";

fn chat_template() -> ChatTemplate {
    ChatTemplate::from_gguf(model()).expect("chat template compiles")
}

#[test]
fn chat_with_a_system_prompt() {
    let out = chat_template()
        .render(
            &[
                ChatMessage::system("You are a pirate."),
                ChatMessage::user("Hello!"),
            ],
            true,
        )
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are a pirate.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

#[test]
fn chat_without_a_system_prompt_gets_the_default() {
    let out = chat_template()
        .render(&[ChatMessage::user("What is the capital of France?")], true)
        .unwrap();
    assert_eq!(
        out,
        format!(
            "{DEFAULT_SYSTEM}<|im_start|>user\nWhat is the capital of France?<|im_end|>\n\
             <|im_start|>assistant\n"
        )
    );
    // The same prompt as the oracle's chat_france case, so its tokens must match too.
    let (_, want) = golden_cases("logits.json", "tokens")
        .into_iter()
        .find(|(text, _)| *text == out)
        .expect("logits.json has the chat_france prompt");
    assert_eq!(tokenizer().encode(&out).unwrap(), want);
}

#[test]
fn chat_with_several_turns() {
    let out = chat_template()
        .render(
            &[
                ChatMessage::system("Be brief."),
                ChatMessage::user("Hi"),
                ChatMessage::assistant("Hello! How can I help?"),
                ChatMessage::user("Count to 3."),
            ],
            true,
        )
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
         <|im_start|>assistant\nHello! How can I help?<|im_end|>\n<|im_start|>user\n\
         Count to 3.<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn chat_without_a_generation_prompt() {
    let out = chat_template()
        .render(
            &[ChatMessage::user("Hi"), ChatMessage::assistant("Hello.")],
            false,
        )
        .unwrap();
    assert_eq!(
        out,
        format!(
            "{DEFAULT_SYSTEM}<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
        )
    );
}

#[test]
fn chat_with_no_messages() {
    // The default system message hangs on the first message, so none appears here.
    let out = chat_template().render(&[], true).unwrap();
    assert_eq!(out, "<|im_start|>assistant\n");
}

#[test]
fn missing_chat_template_is_a_typed_error() {
    let e = ChatTemplate::from_gguf(&tiny_tokenizer_gguf(&[])).unwrap_err();
    assert!(
        matches!(&e, TokenizerError::Gguf(GgufError::MissingKey { key }) if key == "tokenizer.chat_template"),
        "{e}"
    );
}

#[test]
fn document_prompt_is_cut_right_after_the_document() {
    use sinkstar::generate::document::DocumentPrompt;
    use sinkstar::generate::GenerateError;
    let template = ChatTemplate::from_gguf(model()).unwrap();
    let document = "Emma Woodhouse, handsome, clever, and rich.\nShe lived at Hartfield.";
    let question = "Where did she live?";
    let prompt = DocumentPrompt::new(tokenizer(), &template, None, document, question).unwrap();
    let context = tokenizer().decode(&prompt.context).unwrap();
    let query = tokenizer().decode(&prompt.query).unwrap();
    assert!(context.ends_with(document), "{context:?}");
    assert_eq!(context, prompt.context_text);
    let messages = [ChatMessage::user(format!("{document}\n\n{question}"))];
    assert_eq!(
        format!("{context}{query}"),
        template.render(&messages, true).unwrap()
    );
    assert!(query.starts_with("\n\nWhere did she live?"), "{query:?}");
    // A template that leaves the message out cannot be cut: a typed error, not a guess.
    let blind = ChatTemplate::new("{{ bos_token }}Say something.", "<s>", "</s>").unwrap();
    let err = DocumentPrompt::new(tokenizer(), &blind, None, document, question).unwrap_err();
    assert!(
        matches!(
            err,
            sinkstar::Error::Generate(GenerateError::DocumentNotRendered)
        ),
        "{err}"
    );
}
