//! `sinkstar mta-toy`: the Multi-Token Attention paper's toy task on sinkstar's own kernels.
//! `scripts/mta_toy.py` trains a standard Transformer and the same with a pre-softmax
//! key-query convolution and writes both (Hugging Face-style directories) with a held-out test
//! set; this answers every test puzzle greedily with each model and reports the error rates.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use sinkstar::attention::AttentionPolicy;
use sinkstar::generate::SamplingParams;
use sinkstar::gpu::Gpu;
use sinkstar::model::hf::load_hf_dir;
use sinkstar::model::{sinkstar_home, Session, SessionOptions};

use crate::cli::{self, Cli};

/// Token ids of scripts/mta_toy.py: "." "?" "=" then the letters.
const SYMBOLS: [char; 3] = ['.', '?', '='];

#[derive(Args)]
pub struct MtaToyArgs {
    /// Directory written by scripts/mta_toy.py (standard/, mta/, test.jsonl)
    /// [default: $SINKSTAR_HOME/mta-toy]
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Puzzles printed with both models' answers
    #[arg(long, default_value_t = 3)]
    show: usize,
    /// At most this many test puzzles [default: all]
    #[arg(long)]
    limit: Option<usize>,
    /// Also write the results as JSON to this file
    #[arg(long)]
    json: Option<PathBuf>,
}

struct Puzzle {
    prompt: Vec<u32>,
    answer: Vec<u32>,
}

fn text(tokens: &[u32]) -> String {
    tokens
        .iter()
        .map(|&t| match SYMBOLS.get(t as usize) {
            Some(&c) => c,
            None => char::from(b'a' + (t as usize - SYMBOLS.len()).min(25) as u8),
        })
        .collect()
}

pub fn mta_toy(cli: &Cli, args: &MtaToyArgs) -> anyhow::Result<()> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| sinkstar_home().join("mta-toy"));
    let test_path = dir.join("test.jsonl");
    let test = std::fs::read_to_string(&test_path).with_context(|| {
        format!(
            "reading {} (run scripts/mta_toy.py first)",
            test_path.display()
        )
    })?;
    let ids = |v: &serde_json::Value| -> Option<Vec<u32>> {
        v.as_array()?
            .iter()
            .map(|t| t.as_u64().map(|t| t as u32))
            .collect()
    };
    let mut puzzles = Vec::new();
    for (n, line) in test.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}", test_path.display(), n + 1))?;
        match (ids(&v["prompt"]), ids(&v["answer"])) {
            (Some(prompt), Some(answer)) if !prompt.is_empty() && !answer.is_empty() => {
                puzzles.push(Puzzle { prompt, answer })
            }
            _ => anyhow::bail!(
                "{} line {}: needs a `prompt` and an `answer` of token ids",
                test_path.display(),
                n + 1
            ),
        }
    }
    puzzles.truncate(args.limit.unwrap_or(usize::MAX));
    let gpu = Arc::new(Gpu::new_blocking(&cli::gpu_options(
        &cli.device,
        cli.device.adapter,
    ))?);
    let greedy = SamplingParams::greedy();
    let mut answers = Vec::new();
    let mut results = serde_json::Map::new();
    println!("| model | test puzzles | error rate | time |");
    println!("| --- | --- | --- | --- |");
    for name in ["standard", "mta"] {
        let model = Arc::new(
            load_hf_dir(gpu.clone(), &dir.join(name))
                .with_context(|| format!("loading {}", dir.join(name).display()))?,
        );
        let longest = puzzles
            .iter()
            .map(|p| p.prompt.len() + p.answer.len())
            .max()
            .unwrap_or(1);
        let options = SessionOptions {
            policy: AttentionPolicy::Dense { capacity: longest },
            max_chunk: longest,
            positions: None,
        };
        let mut session = Session::new(model, &options)?;
        let start = Instant::now();
        let mut wrong = 0;
        let mut given = Vec::with_capacity(puzzles.len());
        for p in &puzzles {
            session.reset();
            let mut reply = vec![session.feed_and_sample(&p.prompt, &greedy)?];
            while reply.len() < p.answer.len() {
                reply.push(session.decode(&greedy)?);
            }
            wrong += usize::from(reply != p.answer);
            given.push(reply);
        }
        let seconds = start.elapsed().as_secs_f64();
        let error = wrong as f64 / puzzles.len().max(1) as f64;
        println!(
            "| {name} | {} | {:.1}% ({wrong} wrong) | {seconds:.1} s |",
            puzzles.len(),
            100.0 * error
        );
        results.insert(
            name.into(),
            serde_json::json!({"puzzles": puzzles.len(), "wrong": wrong, "error_rate": error,
                               "seconds": seconds, "device": gpu.info.name}),
        );
        answers.push(given);
    }
    for (i, p) in puzzles.iter().take(args.show).enumerate() {
        println!("\n{}", text(&p.prompt));
        println!("  answer {}", text(&p.answer));
        for (name, given) in ["standard", "mta"].iter().zip(&answers) {
            let mark = if given[i] == p.answer {
                "right"
            } else {
                "wrong"
            };
            println!("  {name:>8} {} ({mark})", text(&given[i]));
        }
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
