//! The real default model on the GPU against golden outputs of two independent
//! implementations: llama.cpp (`scripts/golden.py`, llama-cpp-python on CPU) and an exact f32
//! numpy pass (`scripts/reference_f32.py` over the `gguf` package's dequantization).
//!
//! Tolerances:
//! - llama.cpp rounds every activation vector to 8 bits before each quantized matmul and keeps
//!   K/V in f16 (model.md), so its logits differ from an exact f32 pass by up to ~0.7 (0.67
//!   measured between the two references on these prompts): logits within 1.0, and greedy
//!   tokens equal up to the first step where llama.cpp's own top-2 margin is under 1.0.
//! - The numpy pass is f32 like ours and differs only in summation order (BLAS vs our
//!   kernels' reductions), through 30 layers: logits within `F32_LOGIT_TOL`, greedy tokens
//!   equal up to the first step whose f32 margin is under `F32_MARGIN`.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use serde::Deserialize;
use sinkstar::attention::AttentionPolicy;
use sinkstar::generate::{Chat, GenerateOptions, SamplingParams};
use sinkstar::model::gguf::Gguf;
use sinkstar::model::{default_model_path, GpuModel, Session, SessionOptions};
use sinkstar::tokenizer::chat::{ChatMessage, ChatTemplate};
use sinkstar::tokenizer::Tokenizer;

const LLAMA_CPP_LOGIT_TOL: f32 = 1.0;
const LLAMA_CPP_MARGIN: f32 = 1.0;
/// Summation order alone, through 30 layers: measured at most 2.1e-5 on these prompts; 50x
/// headroom for other adapters' orders, still 1000x tighter than the llama.cpp bound.
const F32_LOGIT_TOL: f32 = 1e-3;
/// Below this margin the f32 argmax itself is a coin toss between summation orders.
const F32_MARGIN: f32 = 0.05;

#[derive(Deserialize)]
struct LogitsFile {
    cases: Vec<LogitsCase>,
}

#[derive(Deserialize)]
struct LogitsCase {
    name: String,
    tokens: Vec<u32>,
    top: Vec<(u32, f32)>,
}

#[derive(Deserialize)]
struct GreedyFile {
    cases: Vec<GreedyCase>,
    eos_id: u32,
}

#[derive(Deserialize)]
struct GreedyCase {
    name: String,
    tokens: Vec<u32>,
    generated: Vec<u32>,
    margins: Vec<f32>,
}

fn golden<T: for<'de> Deserialize<'de>>(file: &str) -> T {
    let path = format!("{}/tests/golden/{file}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

struct Loaded {
    gguf: Gguf,
    model: Arc<GpuModel>,
}

fn loaded() -> &'static Loaded {
    static LOADED: OnceLock<Loaded> = OnceLock::new();
    LOADED.get_or_init(|| {
        let path = default_model_path();
        let gguf =
            Gguf::open(&path).unwrap_or_else(|e| panic!("{e}: run scripts/fetch-model.sh first"));
        let model = Arc::new(GpuModel::load(common::gpu(), &gguf).unwrap());
        Loaded { gguf, model }
    })
}

fn session() -> Session {
    Session::new(
        loaded().model.clone(),
        &SessionOptions {
            policy: AttentionPolicy::Dense { capacity: 1024 },
            ..SessionOptions::default()
        },
    )
    .unwrap()
}

fn check_logits(file: &str, tol: f32) {
    let golden: LogitsFile = golden(file);
    for case in &golden.cases {
        let mut session = session();
        session.feed(&case.tokens).unwrap();
        let logits = session.logits().unwrap();
        let mut worst = 0.0f32;
        for &(id, want) in &case.top {
            let got = logits[id as usize];
            let err = (got - want).abs();
            worst = worst.max(err);
            assert!(
                err <= tol,
                "{file} {}: logit of token {id} is {got}, reference {want} (tolerance {tol})",
                case.name
            );
        }
        eprintln!(
            "{file} {}: max |error| over the top-10 {worst:.2e}",
            case.name
        );
    }
}

#[test]
fn logits_match_llama_cpp() {
    check_logits("logits.json", LLAMA_CPP_LOGIT_TOL);
}

#[test]
fn logits_match_f32_reference() {
    check_logits("logits_f32.json", F32_LOGIT_TOL);
}

fn check_greedy(file: &str, min_margin: f32) {
    let golden: GreedyFile = golden(file);
    let greedy = SamplingParams::greedy();
    for case in &golden.cases {
        let mut session = session();
        let mut token = session.feed_and_sample(&case.tokens, &greedy).unwrap();
        let mut compared = 0;
        for (step, (&want, &margin)) in case.generated.iter().zip(&case.margins).enumerate() {
            if margin < min_margin {
                break;
            }
            assert_eq!(
                token, want,
                "{file} {}: step {step} gave {token}, reference {want} (its margin {margin})",
                case.name
            );
            compared += 1;
            if want == golden.eos_id {
                break;
            }
            token = session.decode(&greedy).unwrap();
        }
        eprintln!(
            "{file} {}: {compared} of {} greedy tokens compared",
            case.name,
            case.generated.len()
        );
    }
}

#[test]
fn greedy_matches_llama_cpp_up_to_its_near_ties() {
    check_greedy("greedy.json", LLAMA_CPP_MARGIN);
}

#[test]
fn greedy_matches_f32_reference() {
    check_greedy("greedy_f32.json", F32_MARGIN);
}

#[test]
fn france_answer_through_tokenizer_and_template() {
    let gguf = &loaded().gguf;
    let tokenizer = Tokenizer::from_gguf(gguf).unwrap();
    let template = ChatTemplate::from_gguf(gguf).unwrap();
    let text = template
        .render(&[ChatMessage::user("What is the capital of France?")], true)
        .unwrap();
    let prompt = tokenizer.encode(&text).unwrap();
    let greedy = SamplingParams::greedy();
    let mut session = session();
    let mut tokens = vec![session.feed_and_sample(&prompt, &greedy).unwrap()];
    while tokens.len() < 32 && *tokens.last().unwrap() != tokenizer.eos() {
        tokens.push(session.decode(&greedy).unwrap());
    }
    assert_eq!(
        tokens.pop(),
        Some(tokenizer.eos()),
        "reply ends with <|im_end|>"
    );
    assert_eq!(
        tokenizer.decode(&tokens).unwrap(),
        "The capital of France is Paris."
    );
}

#[test]
fn chat_turns_feed_each_token_once() {
    let gguf = &loaded().gguf;
    let tokenizer = Tokenizer::from_gguf(gguf).unwrap();
    let template = ChatTemplate::from_gguf(gguf).unwrap();
    let chat_template = ChatTemplate::from_gguf(gguf).unwrap();
    let mut chat = Chat::new(session(), tokenizer.clone(), chat_template, None);
    let options = GenerateOptions {
        max_tokens: 12,
        sampling: SamplingParams::greedy(),
        stop_at_eos: true,
    };
    let cancel = AtomicBool::new(false);
    let mut replies = Vec::new();
    let mut last_tokens = Vec::new();
    for user in [
        "What is the capital of France?",
        "Name one river that flows through it.",
    ] {
        let mut reply = String::new();
        let generation = chat
            .send(user, &options, &cancel, &mut |t| reply.push_str(t))
            .unwrap();
        assert_eq!(reply, tokenizer.decode(&generation.tokens).unwrap());
        replies.push(reply);
        last_tokens = generation.tokens;
    }
    // What the session has seen (the pending token included) is exactly the conversation
    // as the template renders it, each token once: the first reply ended at <|im_end|>, which
    // the second turn fed, and the second reply stopped at 12 tokens.
    let messages = [
        ChatMessage::user("What is the capital of France?"),
        ChatMessage::assistant(replies[0].clone()),
        ChatMessage::user("Name one river that flows through it."),
    ];
    let mut want = template.render(&messages, true).unwrap();
    want.push_str(&tokenizer.decode(&last_tokens).unwrap());
    assert_eq!(chat.context(), want);
}
