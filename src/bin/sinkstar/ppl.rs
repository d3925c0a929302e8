//! `sinkstar ppl`: streaming perplexity as StreamingLLM measures it (sink-window spec §8).
//!
//! The whole text goes through one session of the chosen policy. The logits after text token
//! `t` score token `t + 1`: `nll = -ln softmax(logits)[x_{t+1}]`, computed in f64 on the host,
//! and `PPL = exp(mean nll)` over the scored tokens. Feeding in chunks through
//! `Session::feed_logits` gives the logits of token-by-token feeding (the ring is sized for the
//! chunk), so `--chunk` only trades speed against memory; `--chunk 1` is literally one token a
//! pass. Several documents are streamed back to back by concatenating them into one file; BOS
//! is added only where the tokenizer says so (`add_bos`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use sinkstar::attention::{AttentionPolicy, PolicyError};
use sinkstar::model::{Session, SessionOptions};
use sinkstar::tokenizer::Tokenizer;

use crate::cli::{describe_policy, load, Cli, PolicyArgs, Progress};
use crate::plot::{self, PlotStyle, Series};

#[derive(Args)]
pub struct PplArgs {
    /// Text file (UTF-8) streamed through the model
    file: PathBuf,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Stop after this many scored tokens [default: the whole text]
    #[arg(long)]
    tokens: Option<usize>,
    /// Feed the first N tokens without scoring them, then score from token N + 1 on (recompute
    /// feeds only the last window of them: all it would see). For comparing recompute, which
    /// is slow, with the others over the same stretch of text
    #[arg(long, default_value_t = 0)]
    start: usize,
    /// Tokens per submission; 1 feeds literally token by token (the logits are the same)
    #[arg(long, default_value_t = SessionOptions::default().max_chunk)]
    chunk: usize,
    /// CSV with one row per scored token: tokens_seen,nll,running_ppl,gpu_bytes
    #[arg(long)]
    csv: Option<PathBuf>,
    /// PNG plot of the running perplexity (log scale) against tokens seen
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// `-ln softmax(logits)[target]` in f64: the log-sum-exp is taken after subtracting the
/// largest logit, so large logits cannot overflow `exp`. NaN when a logit is not finite.
pub fn nll(logits: &[f32], target: u32) -> f64 {
    let max = logits
        .iter()
        .map(|&l| f64::from(l))
        .fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() || logits.iter().any(|l| !l.is_finite()) {
        return f64::NAN;
    }
    let sum: f64 = logits.iter().map(|&l| (f64::from(l) - max).exp()).sum();
    let log_sum_exp = max + sum.ln();
    log_sum_exp - f64::from(logits[target as usize])
}

/// Running perplexity: `exp` of the mean NLL of the tokens scored so far.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunningPpl {
    sum_nll: f64,
    n_tokens: usize,
}

impl RunningPpl {
    /// Adds one token's NLL and returns the perplexity so far.
    pub fn push(&mut self, nll: f64) -> f64 {
        self.sum_nll += nll;
        self.n_tokens += 1;
        self.ppl()
    }

    /// NaN before the first token.
    pub fn ppl(&self) -> f64 {
        (self.sum_nll / self.n_tokens as f64).exp()
    }

    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }
}

/// Token ids of the first `need` tokens of `text` (all of them when `None`). The whole text
/// is encoded (under a second for a novel), so the tokens are exactly the whole text's.
pub fn tokenize(
    tokenizer: &Tokenizer,
    text: &str,
    need: Option<usize>,
) -> anyhow::Result<Vec<u32>> {
    let mut ids = tokenizer.encode(text)?;
    if let Some(need) = need {
        ids.truncate(need);
    }
    Ok(ids)
}

/// Why a run scored fewer tokens than asked.
struct ContextFull {
    n_seen: usize,
    capacity: usize,
}

pub fn ppl(cli: &Cli, args: &PplArgs) -> anyhow::Result<()> {
    if args.chunk == 0 {
        anyhow::bail!("--chunk must be at least 1 token");
    }
    if args.tokens == Some(0) {
        anyhow::bail!("--tokens must be at least 1: the number of tokens to score");
    }
    if args.plot.is_some() {
        // Before the run, not after an hour of it.
        plot::ensure_font()?;
    }
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {} (a UTF-8 text file)", args.file.display()))?;
    let mut csv = match &args.csv {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            let mut out = std::io::BufWriter::new(file);
            writeln!(out, "tokens_seen,nll,running_ppl,gpu_bytes")?;
            Some((path, out))
        }
        None => None,
    };

    let loaded = load(cli)?;
    let model = loaded.model.clone();
    let config = &model.config;
    let gpu = model.gpu().clone();
    let policy = args.policy.policy(&model);
    let tokens = tokenize(
        &loaded.tokenizer,
        &text,
        args.tokens
            .map(|n| args.start.saturating_add(n).saturating_add(1)),
    )?;
    if tokens.len() < args.start.saturating_add(2) {
        anyhow::bail!(
            "{} holds {} token(s): at least {} are needed to score one after --start {}",
            args.file.display(),
            tokens.len(),
            args.start + 2,
            args.start
        );
    }
    // Text indices start+1 ..= end are scored: the last is `end`.
    let end = (tokens.len() - 1).min(args.start.saturating_add(args.tokens.unwrap_or(usize::MAX)));
    let n_score = end - args.start;
    let mut session = Session::new(
        model.clone(),
        &SessionOptions {
            policy,
            max_chunk: args.chunk,
            positions: None,
        },
    )?;
    eprintln!(
        "sinkstar: ppl of {}: scoring {n_score} tokens{}{} with {}, {} cache slots, chunks of \
         {}; weights {}, activations and KV cache f32",
        args.file.display(),
        if args.start > 0 {
            format!(" after {} unscored", args.start)
        } else {
            String::new()
        },
        if loaded.tokenizer.add_bos() {
            " (BOS first)"
        } else {
            " (no BOS: the tokenizer adds none)"
        },
        describe_policy(policy),
        session.capacity(),
        args.chunk,
        model.layers[0].w_qkv.format,
    );

    let mut stopped = None;
    if args.start > 0 {
        let first = match policy {
            AttentionPolicy::Recompute { window } => args.start.saturating_sub(window),
            _ => 0,
        };
        let mut progress = Progress::new(args.start - first, "unscored");
        for (i, chunk) in tokens[first..args.start].chunks(args.chunk).enumerate() {
            match session.feed(chunk) {
                Ok(()) => {}
                Err(sinkstar::Error::Policy(PolicyError::ContextFull {
                    seen, capacity, ..
                })) => {
                    stopped = Some(ContextFull {
                        n_seen: seen,
                        capacity,
                    });
                    break;
                }
                Err(e) => return Err(e.into()),
            }
            progress.update((i * args.chunk + chunk.len()).min(args.start - first), "");
        }
        progress.finish();
    }

    // Recompute passes each token on its own anyway: one token a call keeps the bar moving.
    let feed_len = match policy {
        AttentionPolicy::Recompute { .. } => 1,
        _ => args.chunk,
    };
    let vocab_size = config.vocab_size;
    let mut running = RunningPpl::default();
    let mut curve = Vec::with_capacity(n_score);
    // Dense stops when its cache is full: the bar ends there.
    let n_expected = match policy {
        AttentionPolicy::Dense { capacity } => n_score.min(capacity.saturating_sub(args.start)),
        _ => n_score,
    };
    let mut progress = Progress::new(n_expected, "ppl");
    let start = Instant::now();
    // Text index of the next token to feed: its logits score token t + 1.
    let mut t = args.start;
    while t < end && stopped.is_none() {
        let mut len = feed_len.min(end - t);
        if let AttentionPolicy::Dense { capacity } = policy {
            // Score right up to the last slot rather than refusing a whole chunk.
            len = len.min(capacity.saturating_sub(session.n_seen()));
            if len == 0 {
                stopped = Some(ContextFull {
                    n_seen: session.n_seen(),
                    capacity,
                });
                break;
            }
        }
        let logits = match session.feed_logits(&tokens[t..t + len]) {
            Ok(logits) => logits,
            Err(sinkstar::Error::Policy(PolicyError::ContextFull { seen, capacity, .. })) => {
                stopped = Some(ContextFull {
                    n_seen: seen,
                    capacity,
                });
                break;
            }
            Err(e) => return Err(e.into()),
        };
        let gpu_bytes = gpu.allocated_bytes();
        for (row, row_logits) in logits.chunks_exact(vocab_size).enumerate() {
            let tokens_seen = t + row + 1;
            let nll = nll(row_logits, tokens[tokens_seen]);
            if nll.is_nan() {
                anyhow::bail!(
                    "the logits after token {} are not all finite ({})",
                    tokens_seen - 1,
                    describe_policy(policy)
                );
            }
            let ppl = running.push(nll);
            curve.push((tokens_seen as f64, ppl));
            if let Some((_, out)) = &mut csv {
                writeln!(out, "{tokens_seen},{nll:.6},{ppl:.6},{gpu_bytes}")?;
            }
        }
        t += len;
        progress.update(t - args.start, &format!("running PPL {:.3}", running.ppl()));
    }
    progress.finish();
    let secs = start.elapsed().as_secs_f64();
    if let Some((path, mut out)) = csv {
        out.flush()
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let n_scored = running.n_tokens();
    eprintln!(
        "sinkstar: {n_scored} tokens scored in {secs:.1}s ({:.1} tok/s), gpu memory held {:.1} MiB",
        n_scored as f64 / secs.max(1e-9),
        gpu.allocated_bytes() as f64 / 1048576.0
    );
    let note = match &stopped {
        Some(full) => format!(
            " (stopped: context full after {} tokens, the {}-slot dense cache; the model was \
             trained on {})",
            full.n_seen, full.capacity, config.context_len
        ),
        None => String::new(),
    };
    if let Some(path) = &args.plot {
        let label = match &args.csv {
            Some(csv) => plot::label_of(csv),
            None => policy.name().to_string(),
        };
        plot::draw(
            path,
            &[Series {
                label,
                points: curve,
            }],
            &PlotStyle {
                title: format!("Streaming perplexity, {}", file_name(&args.file)),
                x_label: "tokens seen".into(),
                y_label: "running perplexity".into(),
                log_x: false,
                log_y: true,
                markers: false,
            },
        )?;
    }
    println!(
        "ppl: {}, {n_scored} tokens scored, PPL {:.4}{note}",
        describe_policy(policy),
        running.ppl()
    );
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or(path.as_os_str())
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPS: f64 = 1e-12;

    #[test]
    fn nll_is_minus_log_softmax() {
        // softmax(ln 1, ln 2, ln 3) = (1/6, 2/6, 3/6): token 2 has NLL -ln(1/2) = ln 2,
        // token 0 has ln 6.
        let logits = [1f32.ln(), 2f32.ln(), 3f32.ln()];
        assert!((nll(&logits, 2) - 2f64.ln()).abs() < 1e-7);
        assert!((nll(&logits, 0) - 6f64.ln()).abs() < 1e-7);
    }

    #[test]
    fn nll_does_not_overflow() {
        // exp(1000) overflows f64; after subtracting the max both terms are exp(0) = 1.
        let logits = [1000f32, 1000.0];
        assert!((nll(&logits, 1) - 2f64.ln()).abs() < EPS);
        let logits = [-1000f32, 0.0];
        assert!((nll(&logits, 1)).abs() < EPS);
        assert!((nll(&logits, 0) - 1000.0).abs() < 1e-9);
    }

    #[test]
    fn nll_of_non_finite_logits_is_nan() {
        assert!(nll(&[0.0, f32::NAN], 0).is_nan());
        assert!(nll(&[0.0, f32::INFINITY], 0).is_nan());
    }

    #[test]
    fn running_ppl_is_exp_of_mean_nll() {
        // NLLs ln 2 and ln 8: mean = 2 ln 2, PPL = 4; after the first alone, 2.
        let mut running = RunningPpl::default();
        assert!(running.ppl().is_nan());
        assert!((running.push(2f64.ln()) - 2.0).abs() < EPS);
        assert!((running.push(8f64.ln()) - 4.0).abs() < EPS);
        assert_eq!(running.n_tokens(), 2);
        // A uniform distribution over 10 tokens has PPL 10 whatever the token.
        let uniform = [0.5f32; 10];
        let mut running = RunningPpl::default();
        for target in 0..10 {
            running.push(nll(&uniform, target));
        }
        assert!((running.ppl() - 10.0).abs() < 1e-9);
    }
}
