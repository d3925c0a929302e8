//! Hugging Face `tokenizer.json` + `tokenizer_config.json` against Hugging Face's own
//! `tokenizers` library: tests/golden/tokenizer is a byte-level BPE trained and run by
//! scripts/tokenizer_golden.py; its ids must match exactly.

use std::path::PathBuf;

use serde_json::{json, Value};
use sinkstar::tokenizer::hf::load_hf_tokenizer_dir;
use sinkstar::tokenizer::{ChatMessage, ChatTemplate, Tokenizer, TokenizerError};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/tokenizer")
}

fn read(file: &str) -> String {
    std::fs::read_to_string(golden_dir().join(file)).unwrap()
}

fn json_of(file: &str) -> Value {
    serde_json::from_str(&read(file)).unwrap()
}

fn from(json: &Value, config: &Value) -> Result<Tokenizer, TokenizerError> {
    Tokenizer::from_hf(&json.to_string(), &config.to_string())
}

#[test]
fn ids_match_hugging_face_tokenizers() {
    let (tokenizer, _) = load_hf_tokenizer_dir(&golden_dir()).unwrap();
    let golden = json_of("golden.json");
    assert_eq!(tokenizer.vocab_size() as u64, golden["vocab_size"]);
    for case in golden["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| id.as_u64().unwrap() as u32)
            .collect();
        let ids = tokenizer.encode(text).unwrap();
        assert_eq!(ids, want, "{text:?}");
        assert_eq!(tokenizer.decode(&ids).unwrap(), text);
        // The stream drops control tokens and nothing else.
        let mut stream = tokenizer.stream();
        let mut streamed = String::new();
        for &id in &ids {
            streamed.extend(stream.push(id).unwrap());
        }
        streamed.extend(stream.finish());
        let plain = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]
            .iter()
            .fold(text.to_string(), |t, special| t.replace(special, ""));
        assert_eq!(streamed, plain, "{text:?}");
    }
}

#[test]
fn special_tokens_come_from_the_config() {
    let (tokenizer, template) = load_hf_tokenizer_dir(&golden_dir()).unwrap();
    assert_eq!((tokenizer.bos(), tokenizer.eos()), (1, 2));
    assert!(!tokenizer.add_bos());
    assert!((0..3).all(|id| tokenizer.is_control(id)));
    assert!(!tokenizer.is_control(3));
    let text = template
        .expect("the config has a chat template")
        .render(&[ChatMessage::user("Hi")], true)
        .unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
         Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );

    let mut config = json_of("tokenizer_config.json");
    config["add_bos_token"] = json!(true);
    config["bos_token"] = json!({"content": "<|endoftext|>", "special": true});
    let tokenizer = from(&json_of("tokenizer.json"), &config).unwrap();
    assert_eq!(tokenizer.encode("x").unwrap()[0], 0);
}

#[test]
fn named_chat_templates_take_the_default() {
    let mut config = json_of("tokenizer_config.json");
    config["chat_template"] = json!([
        {"name": "tool_use", "template": "tools"},
        {"name": "default", "template": "{{ messages[0].content }}!"},
    ]);
    let template = ChatTemplate::from_hf(&config.to_string()).unwrap().unwrap();
    assert_eq!(
        template.render(&[ChatMessage::user("a")], false).unwrap(),
        "a!"
    );
    config["chat_template"] = Value::Null;
    assert!(ChatTemplate::from_hf(&config.to_string())
        .unwrap()
        .is_none());
}

/// `edit` applied to the golden files must fail with an error whose text has `wanted`.
fn refused(edit: impl FnOnce(&mut Value, &mut Value), wanted: &str) {
    let (mut json, mut config) = (json_of("tokenizer.json"), json_of("tokenizer_config.json"));
    edit(&mut json, &mut config);
    let e = from(&json, &config)
        .err()
        .or_else(|| ChatTemplate::from_hf(&config.to_string()).err())
        .unwrap_or_else(|| panic!("accepted; wanted an error with {wanted:?}"));
    assert!(e.to_string().contains(wanted), "{e}");
}

#[test]
fn bad_files_are_typed_errors() {
    let e = Tokenizer::from_hf("{\"model\": ", "{}").unwrap_err();
    assert!(
        matches!(
            e,
            TokenizerError::HfFile {
                file: "tokenizer.json",
                ..
            }
        ),
        "{e}"
    );
    refused(
        |j, _| j["decoder"] = json!({"type": "Metaspace", "replacement": "▁"}),
        "BPE with a Metaspace decoder",
    );
    refused(|j, _| j["model"]["type"] = json!("WordPiece"), "WordPiece");
    refused(
        |j, _| j["model"]["byte_fallback"] = json!(true),
        "byte fallback",
    );
    refused(
        |j, _| j["model"]["merges"] = json!("not a list"),
        "tokenizer.json",
    );
    refused(
        |j, _| {
            j["model"]["vocab"]
                .as_object_mut()
                .unwrap()
                .retain(|_, id| id != 7);
        },
        "no token has id 7",
    );
    refused(
        |_, c| {
            c.as_object_mut().unwrap().remove("eos_token");
        },
        "`eos_token` is missing",
    );
    refused(
        |_, c| c["eos_token"] = json!("</s>"),
        "`eos_token` \"</s>\" is not in the vocabulary",
    );
    refused(|_, c| c["eos_token"] = json!(7), "`eos_token` is 7");
    refused(
        |_, c| {
            c["add_bos_token"] = json!(true);
            c.as_object_mut().unwrap().remove("bos_token");
        },
        "`bos_token` is missing",
    );
    refused(
        |_, c| c["add_bos_token"] = json!("yes"),
        "`add_bos_token` is \"yes\"",
    );
    refused(
        |_, c| c["chat_template"] = json!([{"name": "rag", "template": "x"}]),
        "no `default` template",
    );
    refused(
        |_, c| c["chat_template"] = json!("{% for m in messages %}"),
        "chat template error",
    );
}

#[test]
fn a_directory_without_its_files_names_them() {
    let dir = std::env::temp_dir().join(format!("sinkstar-hf-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let e = load_hf_tokenizer_dir(&dir).unwrap_err();
    assert!(matches!(e, TokenizerError::Read { .. }), "{e}");
    assert!(e.to_string().contains("tokenizer.json"), "{e}");
    std::fs::write(dir.join("tokenizer.json"), read("tokenizer.json")).unwrap();
    let e = load_hf_tokenizer_dir(&dir).unwrap_err();
    assert!(e.to_string().contains("tokenizer_config.json"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
