//! `sinkstar bench`: prefill and decode speed and the GPU memory held, on a dense session
//! sized to the prompt; with `--history`, also decode speed and memory after long histories
//! under the policy of `--attention` (issue 4 part 6: with `sink` neither may grow with the
//! history; `dense` stops at its context); with `--versus`, the same prefill and decode on two
//! device configurations in turn (with `--history`, decode after those histories), for
//! comparisons that a drifting machine would blur.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Parser};
use sinkstar::attention::{AttentionPolicy, PolicyError};
use sinkstar::generate::SamplingParams;
use sinkstar::kernels::mta::{Conv, Gate, MtaLayer};
use sinkstar::kernels::stream::{dispatch_overhead, stream_bandwidth, Load};
use sinkstar::model::{sinkstar_home, GpuModel, Part, Session, SessionOptions};
use sinkstar::tokenizer::Tokenizer;

use crate::cli::{
    describe_policy, load, load_again, Cli, DeviceFlags, Loaded, PolicyArgs, Progress,
};
use crate::ppl::tokenize;

#[derive(Args)]
pub struct BenchArgs {
    /// Prompt lengths to time prefill at
    #[arg(long, value_delimiter = ',', default_values_t = vec![128usize, 512])]
    prompt_tokens: Vec<usize>,
    /// Tokens to decode after a short prompt
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    /// Timed repetitions of each measurement (the median is reported)
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Write the results as JSON to this file too
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also time decoding after this many tokens of history, e.g. 1000,16000,100000, with the
    /// policy of --attention (one session brought from one length to the next by prefill)
    #[arg(long, value_delimiter = ',')]
    history: Vec<usize>,
    /// Decode steps timed at each --history length
    #[arg(long, default_value_t = 32)]
    history_decode: usize,
    /// Text fed as history, repeated if too short [default: $SINKSTAR_HOME/texts/emma.txt
    /// (scripts/fetch-text.sh) when present, else the bench sentence repeated]
    #[arg(long)]
    history_text: Option<PathBuf>,
    /// Only the --history measurements, not the prefill and short-decode ones
    #[arg(long, requires = "history")]
    history_only: bool,
    /// Insert Multi-Token Attention with identity kernels (the paper's LM configuration:
    /// 6x11 pre- and post-softmax convolutions in every 4th layer from layer 2, head mixing
    /// over all heads, group norm and scalar gate everywhere) to measure what it costs
    #[arg(long)]
    mta: bool,
    /// Compare with a second device configuration instead: these device flags on top of the
    /// command's, e.g. "--output-projection separate". The two sessions prefill and decode in
    /// turn in one process, so a machine whose speed drifts slows both alike; the ratios of
    /// each pair are reported
    /// With --history, both decode after each history length instead (in turns of a few
    /// tokens, --history-decode in all), under the policy of --attention
    #[arg(long, allow_hyphen_values = true)]
    versus: Option<String>,
    #[command(flatten)]
    policy: PolicyArgs,
}

/// `--versus`'s flags, parsed over a copy of the command's own.
#[derive(Parser)]
struct Versus {
    #[command(flatten)]
    device: DeviceFlags,
}

/// Tokens each session of a `--versus` comparison decodes in its turn.
const VERSUS_TURN: usize = 4;

/// mta.md §6's configuration of the paper's language models, for `n_layers` layers.
fn paper_mta_layers(n_layers: usize, n_heads: usize) -> Vec<Option<MtaLayer>> {
    let conv = Some(Conv { q: 6, k: 11 });
    (0..n_layers)
        .map(|l| {
            let conv = conv.filter(|_| l % 4 == 2);
            Some(MtaLayer {
                pre_conv: conv,
                post_conv: conv,
                pre_mix: true,
                post_mix: true,
                mix_size: n_heads as u32,
                norm: true,
                gate: Gate::Scalar,
                depth_factor: 1.0,
            })
        })
        .collect()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

const BENCH_SENTENCE: &str =
    "The quick brown fox jumps over the lazy dog while the river keeps running to the sea. ";

/// Deterministic prompt tokens that look like text to the model: a sentence repeated.
fn bench_prompt(tokenizer: &Tokenizer, n_tokens: usize) -> anyhow::Result<Vec<u32>> {
    let sentence = tokenizer.encode(BENCH_SENTENCE)?;
    Ok(sentence.iter().copied().cycle().take(n_tokens).collect())
}

pub fn bench(cli: &Cli, args: &BenchArgs) -> anyhow::Result<()> {
    let versus_device = match &args.versus {
        Some(flags) => {
            let mut parsed = Versus {
                device: cli.device.clone(),
            };
            parsed
                .try_update_from(std::iter::once("--versus").chain(flags.split_whitespace()))
                .context("--versus takes device flags only")?;
            Some(parsed.device)
        }
        None => None,
    };
    let mut loaded = load(cli)?;
    let gpu = loaded.model.gpu().clone();
    println!(
        "device: {} ({:?}, {:?})",
        gpu.info.name, gpu.info.backend, gpu.info.device_type
    );
    let mut result = serde_json::json!({
        "device": gpu.info.name,
        "backend": format!("{:?}", gpu.info.backend),
    });
    let mut versus = match versus_device {
        Some(device) => Some(load_again(&loaded, &device)?),
        None => None,
    };
    if args.mta {
        let c = loaded.model.config.clone();
        let layers = paper_mta_layers(c.n_layers, c.n_heads);
        for model in std::iter::once(&mut loaded.model).chain(versus.as_mut()) {
            Arc::get_mut(model)
                .context("the model is shared")?
                .retrofit_mta(&layers)?;
        }
        let n_conv = (0..c.n_layers).filter(|l| l % 4 == 2).count();
        println!(
            "mta: identity-initialised, 6x11 pre/post convolutions in {n_conv} of {} layers, \
             mixing over all {} heads, group norm and gate in every layer",
            c.n_layers, c.n_heads
        );
        result["mta"] = serde_json::json!({"conv_layers": n_conv, "conv": [6, 11],
                                           "mix_size": c.n_heads, "gate": "scalar"});
    }
    match (&args.versus, versus) {
        (Some(flags), Some(other)) => {
            if !args.history_only {
                result["versus"] = bench_versus(&loaded, other.clone(), flags, args)?;
            }
            if !args.history.is_empty() {
                result["versus_history"] = bench_versus_history(&loaded, other, flags, args)?;
            }
        }
        _ => {
            if !args.history_only {
                let basic = bench_basic(&loaded, args)?;
                for (key, value) in basic {
                    result[key] = value;
                }
            }
            if !args.history.is_empty() {
                result["history"] = bench_history(&loaded, args)?;
            }
        }
    }
    if let Some(path) = &args.json {
        std::fs::write(path, format!("{result:#}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The prompt decode is timed after.
const DECODE_PROMPT: usize = 16;

/// A dense session of `model` just large enough for the prefills and the decode `args` ask
/// for, its pipelines compiled by a first short run.
fn bench_session(
    loaded: &Loaded,
    model: &Arc<GpuModel>,
    args: &BenchArgs,
) -> anyhow::Result<Session> {
    let longest = args.prompt_tokens.iter().copied().max().unwrap_or(0);
    let capacity = longest.max(DECODE_PROMPT) + args.decode_tokens + 1;
    let mut session = Session::new(
        model.clone(),
        &SessionOptions {
            policy: AttentionPolicy::Dense { capacity },
            ..SessionOptions::default()
        },
    )?;
    let greedy = SamplingParams::greedy();
    session.feed_and_sample(&bench_prompt(&loaded.tokenizer, 8)?, &greedy)?;
    session.decode(&greedy)?;
    Ok(session)
}

/// `run` on both sessions, the first of them alternating with `round`; the seconds each took.
fn in_turn(
    sessions: &mut [Session; 2],
    round: usize,
    mut run: impl FnMut(&mut Session) -> anyhow::Result<()>,
) -> anyhow::Result<[f64; 2]> {
    let mut secs = [0.0; 2];
    for side in [round % 2, 1 - round % 2] {
        let start = Instant::now();
        run(&mut sessions[side])?;
        secs[side] = start.elapsed().as_secs_f64();
    }
    Ok(secs)
}

/// The medians of each side's times and of the pairs' ratios b/a.
fn pair_medians(pairs: &[[f64; 2]]) -> (f64, f64, f64) {
    let side = |i: usize| median(pairs.iter().map(|p| p[i]).collect());
    let ratio = median(pairs.iter().map(|p| p[1] / p[0]).collect());
    (side(0), side(1), ratio)
}

/// `turns` turns of [`VERSUS_TURN`] greedy decode steps on both sessions, in turn: the
/// [`pair_medians`] of their ms per token.
fn decode_in_turn(
    sessions: &mut [Session; 2],
    turns: usize,
    greedy: &SamplingParams,
) -> anyhow::Result<(f64, f64, f64)> {
    let mut pairs = Vec::with_capacity(turns);
    for turn in 0..turns {
        let secs = in_turn(sessions, turn, |s| {
            for _ in 0..VERSUS_TURN {
                s.decode(greedy)?;
            }
            Ok(())
        })?;
        pairs.push(secs.map(|t| t * 1e3 / VERSUS_TURN as f64));
    }
    Ok(pair_medians(&pairs))
}

/// Prefill and decode on the command's device configuration (a) and on `--versus`'s (b), in
/// turn: each prompt length `--repeat` times, then `--decode-tokens` decoded in turns of
/// [`VERSUS_TURN`] tokens after a short prompt. Reports the medians of each side and of the
/// pairs' time ratios b/a (above 1: b is slower).
fn bench_versus(
    loaded: &Loaded,
    other: Arc<GpuModel>,
    flags: &str,
    args: &BenchArgs,
) -> anyhow::Result<serde_json::Value> {
    let mut sessions = [
        bench_session(loaded, &loaded.model, args)?,
        bench_session(loaded, &other, args)?,
    ];
    let dispatches = sessions.each_ref().map(Session::step_dispatches);
    println!(
        "a: the command's device flags ({} dispatches per decoded token); b: a with {flags} ({})",
        dispatches[0], dispatches[1]
    );
    let greedy = SamplingParams::greedy();
    let mut prefill = Vec::new();
    for &n in &args.prompt_tokens {
        let prompt = bench_prompt(&loaded.tokenizer, n)?;
        let mut pairs = Vec::new();
        for round in 0..args.repeat.max(1) {
            sessions.iter_mut().for_each(Session::reset);
            pairs.push(in_turn(&mut sessions, round, |s| {
                s.feed_and_sample(&prompt, &greedy)
                    .map(drop)
                    .map_err(Into::into)
            })?);
        }
        let (a, b, ratio) = pair_medians(&pairs);
        let (a, b) = (n as f64 / a, n as f64 / b);
        println!(
            "prefill {n:5} tokens: a {a:8.1} tok/s, b {b:8.1} tok/s, time b/a {ratio:.3} \
             (median of {} pairs)",
            pairs.len()
        );
        prefill.push(
            serde_json::json!({"tokens": n, "a_tok_per_s": a, "b_tok_per_s": b,
                                        "time_ratio": ratio}),
        );
    }
    let prompt = bench_prompt(&loaded.tokenizer, DECODE_PROMPT)?;
    for session in &mut sessions {
        session.reset();
        session.feed_and_sample(&prompt, &greedy)?;
    }
    let turns = (args.decode_tokens / VERSUS_TURN).max(1);
    let (a, b, ratio) = decode_in_turn(&mut sessions, turns, &greedy)?;
    println!(
        "decode: a {a:7.1} ms/token, b {b:7.1} ms/token, time b/a {ratio:.3} (median of {turns} \
         turns of {VERSUS_TURN} tokens each)"
    );
    Ok(serde_json::json!({
        "flags": flags,
        "a_decode_dispatches": dispatches[0],
        "b_decode_dispatches": dispatches[1],
        "prefill": prefill,
        "decode": {"turns": turns, "turn_tokens": VERSUS_TURN, "a_ms_per_token": a,
                   "b_ms_per_token": b, "time_ratio": ratio},
    }))
}

/// Decode on the command's device configuration (a) and on `--versus`'s (b) after each
/// `--history` length: two sessions of the `--attention` policy fed the same history, then
/// `--history-decode` tokens decoded in turns of [`VERSUS_TURN`]. Reports the medians of each
/// side and of the turns' time ratios b/a (above 1: b is slower), and after the last length
/// both sides' decode profiles (each part of a step alone), to say where a difference lies.
fn bench_versus_history(
    loaded: &Loaded,
    other: Arc<GpuModel>,
    flags: &str,
    args: &BenchArgs,
) -> anyhow::Result<serde_json::Value> {
    let policy = args.policy.policy(&loaded.model);
    let options = SessionOptions {
        policy,
        ..SessionOptions::default()
    };
    let mut sessions = [
        Session::new(loaded.model.clone(), &options)?,
        Session::new(other, &options)?,
    ];
    let (lengths, text, text_what) = history_plan(loaded, args)?;
    // Each session reads the same text.
    let mut texts = [text.iter().copied().cycle(), text.iter().copied().cycle()];
    let turns = (args.history_decode / VERSUS_TURN).max(1);
    let greedy = SamplingParams::greedy();
    println!(
        "versus history: {}, fed {text_what}; a: the command's device flags, b: a with {flags}",
        describe_policy(policy)
    );
    let mut points = Vec::new();
    for &h in &lengths {
        for (session, text) in sessions.iter_mut().zip(&mut texts) {
            feed_to(session, text, h, options.max_chunk, &greedy)?;
        }
        let (a, b, ratio) = decode_in_turn(&mut sessions, turns, &greedy)?;
        println!(
            "history {h:6} tokens: decode a {a:7.1} ms/token, b {b:7.1} ms/token, time b/a \
             {ratio:.3} (median of {turns} turns of {VERSUS_TURN} tokens each)"
        );
        points.push(serde_json::json!({"history": h, "a_ms_per_token": a,
                                       "b_ms_per_token": b, "time_ratio": ratio}));
    }
    let [a, b] = sessions;
    let (a, b) = (
        a.profile_decode(args.repeat)?,
        b.profile_decode(args.repeat)?,
    );
    println!(
        "decode profile after {} tokens (each part of a step alone, all layers, median of {}):",
        lengths.last().copied().unwrap_or(0),
        args.repeat.max(1)
    );
    let mut profile = Vec::new();
    // A part one side does not run (the output projection where the other fuses it) is 0 there.
    for part in Part::ALL {
        let secs = |profile: &[(Part, f64)]| {
            let found = profile.iter().find(|(p, _)| *p == part);
            found.map_or(0.0, |(_, secs)| *secs)
        };
        let (a, b) = (secs(&a), secs(&b));
        if a + b > 0.0 {
            println!(
                "  {:42} a {:7.2} ms, b {:7.2} ms",
                part.name(),
                a * 1e3,
                b * 1e3
            );
            profile.push(serde_json::json!({"part": part.name(), "a_secs": a, "b_secs": b}));
        }
    }
    Ok(serde_json::json!({
        "flags": flags,
        "policy": policy.name(),
        "text": text_what,
        "turns": turns,
        "turn_tokens": VERSUS_TURN,
        "points": points,
        "profile": profile,
    }))
}

/// Prefill at each prompt length and decode after a short prompt, on a dense session just
/// large enough; the JSON fields they fill.
fn bench_basic(
    loaded: &Loaded,
    args: &BenchArgs,
) -> anyhow::Result<Vec<(&'static str, serde_json::Value)>> {
    let gpu = loaded.model.gpu();
    let (decode_tokens, repeat) = (args.decode_tokens, args.repeat.max(1));
    let mut session = bench_session(loaded, &loaded.model, args)?;
    let greedy = SamplingParams::greedy();
    let mut prefill = Vec::new();
    for &n in &args.prompt_tokens {
        let prompt = bench_prompt(&loaded.tokenizer, n)?;
        let mut rates = Vec::new();
        for _ in 0..repeat {
            session.reset();
            let start = Instant::now();
            session.feed_and_sample(&prompt, &greedy)?;
            rates.push(n as f64 / start.elapsed().as_secs_f64());
        }
        let rate = median(rates);
        println!("prefill {n:5} tokens: {rate:8.1} tok/s");
        prefill.push((n, rate));
    }
    let prompt = bench_prompt(&loaded.tokenizer, DECODE_PROMPT)?;
    let mut rates = Vec::new();
    let mut submissions = 0.0;
    for _ in 0..repeat {
        session.reset();
        session.feed_and_sample(&prompt, &greedy)?;
        let submitted = session.n_submissions();
        let start = Instant::now();
        for _ in 0..decode_tokens {
            session.decode(&greedy)?;
        }
        rates.push(decode_tokens as f64 / start.elapsed().as_secs_f64());
        submissions = (session.n_submissions() - submitted) as f64 / decode_tokens as f64;
    }
    let decode_rate = median(rates);
    let dispatches = session.step_dispatches();
    println!(
        "decode {decode_tokens} tokens: {decode_rate:8.1} tok/s ({dispatches} dispatches, \
         {submissions} submission(s) per token)"
    );
    let memory = gpu.allocated_bytes();
    println!("gpu memory held: {:.1} MiB", memory as f64 / 1048576.0);
    let bandwidth = pollster::block_on(stream_bandwidth(gpu, repeat, Load::Vec4))?;
    let word_bandwidth = pollster::block_on(stream_bandwidth(gpu, repeat, Load::Words))?;
    let overhead = pollster::block_on(dispatch_overhead(gpu, repeat))?;
    let weight_bytes = loaded.model.weight_bytes_per_token();
    let decode_bandwidth = weight_bytes as f64 * decode_rate;
    println!(
        "decode reads {:.1} MB of weights per token: {:.2} GB/s, {:.0}% of the {:.2} GB/s the \
         device streams (stream kernel)",
        weight_bytes as f64 / 1e6,
        decode_bandwidth / 1e9,
        100.0 * decode_bandwidth / bandwidth,
        bandwidth / 1e9
    );
    println!(
        "the stream kernel loading u32 words, as the quantized matvecs load weight blocks: \
         {:.2} GB/s; decode reaches {:.0}% of that",
        word_bandwidth / 1e9,
        100.0 * decode_bandwidth / word_bandwidth
    );
    println!(
        "one dispatch costs {:.1} us beyond its work: {:.1} of the {:.1} ms a token takes are \
         the overhead of its {dispatches} dispatches",
        overhead * 1e6,
        overhead * dispatches as f64 * 1e3,
        1e3 / decode_rate
    );
    let (ring_bytes, map_bytes) = session.mta_bytes();
    if map_bytes > 0 {
        println!(
            "  of which MTA attention maps {:.1} MiB, their row rings (the c_q - 1 rows kept \
             between steps) {:.2} MiB",
            map_bytes as f64 / 1048576.0,
            ring_bytes as f64 / 1048576.0
        );
    }
    // Where a token's time goes: each part of the decode step alone (this consumes the
    // session, whose caches the out-of-order re-runs overwrite).
    let projects = session.projects_in_attention();
    let profile = session.profile_decode(repeat)?;
    let name = |part: Part| part.name_in_step(projects);
    let profiled: f64 = profile.iter().map(|(_, secs)| secs).sum();
    println!(
        "decode profile (each part of a step alone, all layers; the parts sum to {:.1} ms):",
        profiled * 1e3
    );
    for (part, secs) in &profile {
        println!(
            "  {:32} {:7.2} ms {:5.1}%",
            name(*part),
            secs * 1e3,
            100.0 * secs / profiled
        );
    }
    let profile_json: serde_json::Value = profile
        .iter()
        .map(|(part, secs)| serde_json::json!({"part": name(*part), "secs": secs}))
        .collect();
    Ok(vec![
        ("decode_profile", profile_json),
        (
            "prefill",
            prefill
                .iter()
                .map(|(n, rate)| serde_json::json!({"tokens": n, "tok_per_s": rate}))
                .collect(),
        ),
        ("decode_tokens", decode_tokens.into()),
        ("decode_tok_per_s", decode_rate.into()),
        ("layers", loaded.model.config.n_layers.into()),
        ("decode_dispatches", dispatches.into()),
        ("decode_submissions_per_token", submissions.into()),
        ("weight_bytes_per_token", weight_bytes.into()),
        ("decode_weight_bytes_per_s", decode_bandwidth.into()),
        ("stream_bytes_per_s", bandwidth.into()),
        ("stream_word_bytes_per_s", word_bandwidth.into()),
        ("dispatch_overhead_s", overhead.into()),
        ("gpu_memory_bytes", memory.into()),
        ("mta_map_bytes", map_bytes.into()),
        ("mta_ring_bytes", ring_bytes.into()),
    ])
}

/// The `--history` lengths, ascending and distinct; the history text's tokens (at least one,
/// enough for the longest), and what it is in words.
fn history_plan(
    loaded: &Loaded,
    args: &BenchArgs,
) -> anyhow::Result<(Vec<usize>, Vec<u32>, String)> {
    let mut lengths = args.history.clone();
    lengths.sort_unstable();
    lengths.dedup();
    let need = lengths.last().copied().unwrap_or(0);
    let default = sinkstar_home().join("texts").join("emma.txt");
    let path = match &args.history_text {
        Some(path) => Some(path.clone()),
        None => default.exists().then_some(default),
    };
    let (tokens, what) = match path {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let tokens = tokenize(&loaded.tokenizer, &text, Some(need))?;
            (tokens, path.display().to_string())
        }
        None => (
            loaded.tokenizer.encode(BENCH_SENTENCE)?,
            "the bench sentence, repeated".to_string(),
        ),
    };
    if tokens.is_empty() {
        anyhow::bail!("the history text ({what}) has no tokens");
    }
    Ok((lengths, tokens, what))
}

/// Brings one session of the chosen policy to each history length in turn and times
/// `history_decode` greedy decode steps there; prints a line per length and returns the JSON
/// `history` object.
fn bench_history(loaded: &Loaded, args: &BenchArgs) -> anyhow::Result<serde_json::Value> {
    let model = loaded.model.clone();
    let gpu = model.gpu().clone();
    let policy = args.policy.policy(&model);
    let n_decode = args.history_decode.max(1);
    let (lengths, text, text_what) = history_plan(loaded, args)?;
    let mut text = text.iter().copied().cycle();

    let before = gpu.allocated_bytes();
    let mut session = Session::new(
        model.clone(),
        &SessionOptions {
            policy,
            ..SessionOptions::default()
        },
    )?;
    let session_bytes = gpu.allocated_bytes().saturating_sub(before);
    let chunk = SessionOptions::default().max_chunk;
    let greedy = SamplingParams::greedy();
    println!(
        "history: {}, {} cache slots ({:.1} MiB of session buffers), fed {text_what}, \
         {n_decode} decode steps timed at each length",
        describe_policy(policy),
        session.capacity(),
        session_bytes as f64 / 1048576.0
    );
    // Tokens one measurement adds: the sampled token and the untimed and timed decode steps.
    let dense_capacity = match policy {
        AttentionPolicy::Dense { capacity } => Some(capacity),
        _ => None,
    };
    let mut points = Vec::new();
    for &h in &lengths {
        let full = serde_json::json!({
            "history": h,
            "status": "n/a (context full)",
            "decode_tok_per_s": null,
            "ms_per_token": null,
            "gpu_memory_bytes": null,
        });
        let have = session.n_seen() + usize::from(session.pending().is_some());
        if dense_capacity.is_some_and(|capacity| h.max(have) + 1 + n_decode > capacity) {
            println!(
                "history {h:6} tokens: n/a (context full: the dense cache holds {} tokens)",
                dense_capacity.unwrap_or(0)
            );
            points.push(full);
            continue;
        }
        match measure_at(&mut session, &mut text, h, n_decode, chunk, &greedy) {
            Ok((tokens_seen, rate)) => {
                let memory = gpu.allocated_bytes();
                println!(
                    "history {h:6} tokens: decode {rate:8.1} tok/s ({:7.2} ms/token), \
                     gpu memory held {:.1} MiB ({} buffers)",
                    1000.0 / rate,
                    memory as f64 / 1048576.0,
                    gpu.n_buffers()
                );
                points.push(serde_json::json!({
                    "history": h,
                    "tokens_seen": tokens_seen,
                    "status": "ok",
                    "decode_tok_per_s": rate,
                    "ms_per_token": 1000.0 / rate,
                    "gpu_memory_bytes": memory,
                    "gpu_buffers": gpu.n_buffers(),
                }));
            }
            Err(e)
                if matches!(
                    e.downcast_ref::<sinkstar::Error>(),
                    Some(sinkstar::Error::Policy(PolicyError::ContextFull { .. }))
                ) =>
            {
                println!("history {h:6} tokens: n/a ({e})");
                points.push(full);
            }
            Err(e) => return Err(e),
        }
    }
    let (n_sink, window) = match policy {
        AttentionPolicy::Sink { n_sink, window } => (Some(n_sink), Some(window)),
        AttentionPolicy::Window { window } | AttentionPolicy::Recompute { window } => {
            (None, Some(window))
        }
        AttentionPolicy::Dense { .. } => (None, None),
    };
    Ok(serde_json::json!({
        "policy": policy.name(),
        "n_sink": n_sink,
        "window": window,
        "context": dense_capacity,
        "cache_slots": session.capacity(),
        "session_bytes": session_bytes,
        "decode_steps": n_decode,
        "text": text_what,
        "points": points,
    }))
}

/// Feeds `text` until `h` tokens are in (or as many as already are), samples, decodes once
/// untimed and then `n_decode` times timed. Returns the tokens seen when the timing started
/// and the decode rate.
fn measure_at(
    session: &mut Session,
    text: &mut impl Iterator<Item = u32>,
    h: usize,
    n_decode: usize,
    chunk: usize,
    greedy: &SamplingParams,
) -> anyhow::Result<(usize, f64)> {
    feed_to(session, text, h, chunk, greedy)?;
    let tokens_seen = session.n_seen();
    let start = Instant::now();
    for _ in 0..n_decode {
        session.decode(greedy)?;
    }
    Ok((tokens_seen, n_decode as f64 / start.elapsed().as_secs_f64()))
}

/// Feeds `text` until `h` tokens are in (or as many as already are), samples and decodes once:
/// the session is ready for timed decode steps.
fn feed_to(
    session: &mut Session,
    text: &mut impl Iterator<Item = u32>,
    h: usize,
    chunk: usize,
    greedy: &SamplingParams,
) -> anyhow::Result<()> {
    // A pending sampled token is fed first by the next call: it counts as history.
    let have = |s: &Session| s.n_seen() + usize::from(s.pending().is_some());
    let start_have = have(session);
    if start_have < h {
        let mut progress = Progress::new(h - start_have, &format!("history {h}"));
        while have(session) + 1 < h {
            let n = (h - 1 - have(session)).min(chunk);
            let tokens: Vec<u32> = text.by_ref().take(n).collect();
            session.feed(&tokens)?;
            progress.update(have(session) - start_have, "");
        }
        // The last token is fed with sampling, so that decoding can start.
        let last: Vec<u32> = text.by_ref().take(1).collect();
        session.feed_and_sample(&last, greedy)?;
        progress.finish();
    } else if session.pending().is_none() {
        let first: Vec<u32> = text.by_ref().take(1).collect();
        session.feed_and_sample(&first, greedy)?;
    }
    // The first step after a prefill may pay for a first use; it is not timed.
    session.decode(greedy)?;
    Ok(())
}
