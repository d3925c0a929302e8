//! `sinkstar ask --doc FILE "question"`: a question about a long document. The document is
//! encoded with Star Attention's phase 1 (blocks, each seeing the anchor and itself: linear
//! time) unless it spans at most two blocks or `--doc-attention dense` asks for exact dense
//! attention; the question and the answer then attend to the whole document.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use sinkstar::attention::star::{StarOptions, DEFAULT_BLOCK};
use sinkstar::attention::AttentionPolicy;
use sinkstar::generate::document::{encode_context_async, ContextEncoding, DocumentPrompt};
use sinkstar::generate::generate;
use sinkstar::model::{Session, SessionOptions};

use crate::cli::{load, Cli, Progress, SamplingArgs};

#[derive(Args)]
pub struct AskArgs {
    /// The document: a UTF-8 text file, or `-` for standard input
    #[arg(long)]
    doc: PathBuf,
    /// The question about it
    question: String,
    /// How the document is encoded: `star` (blocks, linear time) or `dense` (exact, quadratic)
    #[arg(long, value_enum, default_value_t = DocAttention::Star)]
    doc_attention: DocAttention,
    /// Star block size b, in tokens
    #[arg(long, default_value_t = DEFAULT_BLOCK)]
    block: usize,
    /// Star anchor size a: the document's first a tokens, seen by every block (0 to --block)
    /// [default: --block]
    #[arg(long)]
    anchor: Option<usize>,
    /// System message [default: the chat template's own]
    #[arg(long)]
    system: Option<String>,
    /// Print one JSON object at the end instead of streaming the answer: the text, the token
    /// ids, how the document was encoded and the timings
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum DocAttention {
    Star,
    Dense,
}

pub fn ask(cli: &Cli, args: &AskArgs) -> anyhow::Result<()> {
    let document = if args.doc.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the document from standard input")?;
        text
    } else {
        std::fs::read_to_string(&args.doc)
            .with_context(|| format!("reading the document {}", args.doc.display()))?
    };
    let star = StarOptions {
        block: args.block,
        anchor: args.anchor.unwrap_or(args.block),
    };
    star.validate()?;
    let options = args.sampling.options()?;
    let loaded = load(cli)?;
    let prompt = DocumentPrompt::new(
        &loaded.tokenizer,
        &loaded.template,
        args.system.as_deref(),
        &document,
        &args.question,
    )?;
    let config = &loaded.model.config;
    // Room for the whole text: one dense cache, allocated (and checked against the device's
    // limits) before anything runs.
    let n_prompt = prompt.context.len() + prompt.query.len();
    let capacity = n_prompt + options.max_tokens;
    if capacity > config.context_len {
        eprintln!(
            "sinkstar: warning: the document, question and answer span {capacity} positions, \
             past the {} the model was trained on: positions beyond it are out of distribution \
             and answers may degrade",
            config.context_len
        );
    }
    let mut session = Session::new(
        loaded.model.clone(),
        &SessionOptions {
            policy: AttentionPolicy::Dense { capacity },
            ..SessionOptions::default()
        },
    )?;
    let use_star = (args.doc_attention == DocAttention::Star).then_some(&star);
    let mut progress = Progress::new(prompt.context.len(), "document");
    let step = use_star.map_or(DEFAULT_BLOCK, |s| s.block);
    let start = Instant::now();
    let encoding = pollster::block_on(encode_context_async(
        &mut session,
        &prompt.context,
        use_star,
        &mut |done, _| progress.update((done * step).min(prompt.context.len()), ""),
    ))?;
    progress.finish();
    let context_secs = start.elapsed().as_secs_f64();
    let how = match encoding {
        ContextEncoding::Dense => "dense attention".to_string(),
        ContextEncoding::Star { blocks } => format!(
            "Star Attention, {blocks} blocks of {} with a {}-token anchor",
            star.block, star.anchor
        ),
    };
    eprintln!(
        "sinkstar: document of {} tokens read in {context_secs:.2}s ({:.1} tok/s) with {how}",
        prompt.context.len(),
        prompt.context.len() as f64 / context_secs.max(1e-9)
    );
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let mut stdout = std::io::stdout();
    let generation = generate(
        &mut session,
        &loaded.tokenizer,
        &prompt.query,
        &options,
        &cancel,
        &mut |piece| {
            if !args.json {
                let _ = stdout.write_all(piece.as_bytes());
                let _ = stdout.flush();
            }
        },
    )?;
    if args.json {
        let (attention, blocks) = match encoding {
            ContextEncoding::Dense => ("dense", 1),
            ContextEncoding::Star { blocks } => ("star", blocks),
        };
        let summary = serde_json::json!({
            "text": loaded.tokenizer.decode(&generation.tokens)?,
            "tokenIds": generation.tokens,
            "stop": generation.stop.name(),
            "documentTokens": prompt.context.len(),
            "queryTokens": prompt.query.len(),
            "attention": attention,
            "blocks": blocks,
            "block": star.block,
            "anchor": star.anchor,
            "documentSecs": context_secs,
            "queryPrefillSecs": generation.prefill_secs,
            "decodeSecs": generation.decode_secs,
            "adapter": loaded.model.gpu().info.name,
        });
        println!("{summary}");
    } else {
        println!();
    }
    eprintln!(
        "sinkstar: question of {} tokens, {} answer tokens at {:.1} tok/s ({:?})",
        prompt.query.len(),
        generation.tokens.len(),
        generation.decode_tokens_per_sec(),
        generation.stop
    );
    Ok(())
}
