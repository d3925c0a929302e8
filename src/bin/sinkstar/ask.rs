//! `sinkstar ask --doc FILE "question"`: a question about a long document. The document is
//! encoded with Star Attention's phase 1 (blocks, each seeing the anchor and itself: linear
//! time), its blocks spread over `--devices N` devices, unless it spans at most two blocks or
//! `--doc-attention dense` asks for exact dense attention (on one device); the question and
//! the answer then attend to the whole document.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use sinkstar::attention::star::{StarOptions, DEFAULT_BLOCK};
use sinkstar::attention::AttentionPolicy;
use sinkstar::generate::document::{encode_context_async, ContextEncoding, DocumentPrompt};
use sinkstar::generate::{generate, Decoder, GenerateOptions, Generation};
use sinkstar::model::{Session, SessionOptions, StarSession};
use sinkstar::tokenizer::Tokenizer;

use crate::cli::{load_on_devices, Cli, Progress, SamplingArgs};

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
    /// Devices the blocks are spread over: the first N GPU adapters if there are that many,
    /// else N devices opened on one adapter
    #[arg(long, default_value_t = 1)]
    devices: usize,
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
    let loaded = load_on_devices(cli, args.devices)?;
    let prompt = DocumentPrompt::new(
        &loaded.tokenizer,
        loaded.template()?,
        args.system.as_deref(),
        &document,
        &args.question,
    )?;
    let config = &loaded.model.config;
    let n_context = prompt.context.len();
    // Room after the document for the question and the answer. Every cache is allocated (and
    // checked against the device's limits) before anything runs.
    let room = prompt.query.len() + options.max_tokens;
    if n_context + room > config.context_len {
        eprintln!(
            "sinkstar: warning: the document, question and answer span {} positions, past the \
             {} the model was trained on: positions beyond it are out of distribution and \
             answers may degrade",
            n_context + room,
            config.context_len
        );
    }
    let use_star = args.doc_attention == DocAttention::Star && !star.prefers_dense(n_context);
    if args.devices > 1 && !use_star {
        eprintln!("sinkstar: the document is read densely, on one device");
    }
    let mut progress = Progress::new(n_context, "document");
    let start = Instant::now();
    let max_chunk = SessionOptions::default().max_chunk;
    let (encoding, context_secs, generation) = if use_star {
        let models: Vec<_> = std::iter::once(loaded.model.clone())
            .chain(loaded.more.iter().cloned())
            .collect();
        let mut session = StarSession::new(&models, star, n_context, room, max_chunk)?;
        session.encode(&prompt.context, &mut |done, _| {
            progress.update((done * star.block).min(n_context), "")
        })?;
        let blocks = star.blocks(n_context).len();
        let encoding = ContextEncoding::Star { blocks };
        let secs = report(&progress, start, n_context, encoding, &star, args.devices);
        let generation = answer(
            &mut session,
            &loaded.tokenizer,
            &prompt,
            &options,
            args.json,
        )?;
        (encoding, secs, generation)
    } else {
        let mut session = Session::new(
            loaded.model.clone(),
            &SessionOptions {
                policy: AttentionPolicy::Dense {
                    capacity: n_context + room,
                },
                // Past the trained context only with the warning above.
                positions: Some(n_context + room),
                ..SessionOptions::default()
            },
        )?;
        let encoding = pollster::block_on(encode_context_async(
            &mut session,
            &prompt.context,
            None,
            &mut |done, _| progress.update((done * DEFAULT_BLOCK).min(n_context), ""),
        ))?;
        let secs = report(&progress, start, n_context, encoding, &star, 1);
        let generation = answer(
            &mut session,
            &loaded.tokenizer,
            &prompt,
            &options,
            args.json,
        )?;
        (encoding, secs, generation)
    };
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
            "devices": if encoding == ContextEncoding::Dense { 1 } else { args.devices },
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

/// Ends the progress bar, says how the document was read and returns the seconds it took.
fn report(
    progress: &Progress,
    start: Instant,
    n_context: usize,
    encoding: ContextEncoding,
    star: &StarOptions,
    devices: usize,
) -> f64 {
    progress.finish();
    let secs = start.elapsed().as_secs_f64();
    let how = match encoding {
        ContextEncoding::Dense => "dense attention".to_string(),
        ContextEncoding::Star { blocks } => format!(
            "Star Attention, {blocks} blocks of {} with a {}-token anchor on {devices} device{}",
            star.block,
            star.anchor,
            if devices == 1 { "" } else { "s" }
        ),
    };
    eprintln!(
        "sinkstar: document of {n_context} tokens read in {secs:.2}s ({:.1} tok/s) with {how}",
        n_context as f64 / secs.max(1e-9)
    );
    secs
}

/// Feeds the question and streams the answer to stdout (unless `quiet`).
fn answer(
    session: &mut impl Decoder,
    tokenizer: &Tokenizer,
    prompt: &DocumentPrompt,
    options: &GenerateOptions,
    quiet: bool,
) -> anyhow::Result<Generation> {
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let mut stdout = std::io::stdout();
    Ok(generate(
        session,
        tokenizer,
        &prompt.query,
        options,
        &cancel,
        &mut |piece| {
            if !quiet {
                let _ = stdout.write_all(piece.as_bytes());
                let _ = stdout.flush();
            }
        },
    )?)
}
