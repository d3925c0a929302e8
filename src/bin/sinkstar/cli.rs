//! Argument parsing, model loading shared by every command, and the chat, generate and info
//! commands.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use sinkstar::attention::star::{StarOptions, DEFAULT_BLOCK};
use sinkstar::attention::{AttentionPolicy, DEFAULT_SINKS, DEFAULT_WINDOW};
use sinkstar::generate::document::ContextEncoding;
use sinkstar::generate::{generate, Chat, GenerateOptions, SamplingParams, StopReason};
use sinkstar::gpu::{list_adapters, Gpu, GpuOptions};
use sinkstar::kernels::matmul::MatmulKind;
use sinkstar::model::gguf::Gguf;
use sinkstar::model::hf::{load_hf_dir, HfConfig};
use sinkstar::model::{default_model_path, GpuModel, Session, SessionOptions};
use sinkstar::tokenizer::chat::{ChatMessage, ChatTemplate};
use sinkstar::tokenizer::hf::load_hf_tokenizer_dir;
use sinkstar::tokenizer::Tokenizer;

use crate::{ask, bench, mta_toy, plot, ppl, serve};

#[derive(Parser)]
#[command(version, about = "LLM runtime on WGSL compute shaders")]
pub struct Cli {
    /// GGUF model file, or a Hugging Face model directory (config.json, model.safetensors,
    /// tokenizer.json, tokenizer_config.json) [default:
    /// $SINKSTAR_HOME/SmolLM2-135M-Instruct.Q4_1.gguf, SINKSTAR_HOME defaulting to
    /// ~/.cache/sinkstar]
    #[arg(long, global = true)]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceFlags,
    #[command(subcommand)]
    command: Command,
}

/// The flags that choose the device and the forms of its kernels: everything [`GpuOptions`]
/// holds (`bench --versus` takes a second set of them).
#[derive(Args, Clone)]
pub struct DeviceFlags {
    /// Graphics backend: vulkan, metal, dx12, gl or all [default: $WGPU_BACKEND, else all]
    #[arg(long, global = true)]
    pub backend: Option<String>,
    /// Adapter index as listed by `sinkstar info` [default: the best one]
    #[arg(long, global = true)]
    pub adapter: Option<usize>,
    /// Decode's matvec form: `subgroup` (subgroup operations, fails on an adapter without
    /// them), `vec` (one invocation per weight row), or `auto`: subgroup on GPUs that have them,
    /// vec on CPU drivers such as lavapipe
    #[arg(long, global = true, value_enum, default_value_t = Matvec::Auto)]
    pub matvec: Matvec,
    /// Workgroups decode attention aims to keep busy: a long KV cache is split into parts
    /// attended in parallel and merged (flash-decoding) until rows x heads x parts reaches this;
    /// 1 never splits [default: the CPU cores on a CPU adapter, 256 on a GPU]
    #[arg(long, global = true, value_parser = clap::value_parser!(u32).range(1..))]
    pub decode_workgroups: Option<u32>,
    /// Threads of each decode attention workgroup (one per head, and part of a split cache), at
    /// most what keeps its merge within 16 KiB (64 for 64-wide heads, 32 to 128) [default: 8 on
    /// a CPU adapter, 64 on a GPU]
    #[arg(long, global = true, value_parser = clap::value_parser!(u32).range(1..))]
    pub decode_attention_threads: Option<u32>,
    /// Prefill's matmul form: `shared` (tiles staged in workgroup memory, sized to the
    /// adapter's limits), `tile` (registers only), or `auto`: shared on GPUs, tile on CPU
    /// drivers such as lavapipe
    #[arg(long, global = true, value_enum, default_value_t = PrefillMatmul::Auto)]
    pub prefill_matmul: PrefillMatmul,
    /// Decode's attention output projection: `fused` (each head's share computed in the
    /// attention kernel and summed into the residual stream by the FFN's matmuls: 4 dispatches a
    /// layer, where the model's shapes allow it) or `separate` (a matmul of its own: 5)
    #[arg(long, global = true, value_enum, default_value_t = OutputProjection::Fused)]
    pub output_projection: OutputProjection,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum PrefillMatmul {
    Auto,
    Tile,
    Shared,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum OutputProjection {
    Fused,
    Separate,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Matvec {
    Auto,
    Vec,
    Subgroup,
}

#[derive(Subcommand)]
enum Command {
    /// Interactive chat through the model's chat template (/doc FILE, /reset, /quit; Ctrl-C
    /// ends a reply)
    Chat {
        /// System message [default: the chat template's own]
        #[arg(long)]
        system: Option<String>,
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        doc: DocArgs,
    },
    /// Continues a prompt (raw text unless --chat) and prints only the generated text
    Generate {
        /// Prompt text; read from standard input when absent
        #[arg(short, long)]
        prompt: Option<String>,
        /// Wrap the prompt as a user turn of the chat template
        #[arg(long)]
        chat: bool,
        /// System message for --chat [default: the template's own]
        #[arg(long)]
        system: Option<String>,
        /// Print one JSON object at the end instead of streaming text: the text, the token
        /// ids, the stop reason and the timings (what the browser tests compare with)
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Answers a question about a long document, read in linear time with Star Attention
    Ask(ask::AskArgs),
    /// Adapters, chosen backend, device limits and the model summary
    Info,
    /// Prefill and decode speed, and GPU memory held (also after long histories: --history)
    Bench(bench::BenchArgs),
    /// Streaming perplexity of a text file, one session fed the whole text (StreamingLLM's
    /// evaluation): CSV of every scored token and a PNG plot
    Ppl(ppl::PplArgs),
    /// Line plot (PNG) of CSV files written by `ppl` or scripts/decode_vs_history.py, one line
    /// per file, labelled by the file name
    Plot(plot::PlotArgs),
    /// Serves the browser demo (www/), the npm package with its WASM build (pkg/) and the
    /// models on 127.0.0.1
    Serve(serve::ServeArgs),
    /// The Multi-Token Attention paper's toy task: the models of scripts/mta_toy.py answer
    /// its held-out puzzles on sinkstar's kernels
    MtaToy(mta_toy::MtaToyArgs),
}

#[derive(Args, Clone)]
struct RunArgs {
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Pin the whole system prompt as sinks (sink policy with --chat / chat)
    #[arg(long)]
    keep_system: bool,
}

/// How `/doc FILE` reads a document in the chat.
#[derive(Args, Clone, Debug)]
pub struct DocArgs {
    /// Star Attention block size for /doc, in tokens
    #[arg(long, default_value_t = DEFAULT_BLOCK)]
    block: usize,
    /// Star anchor size for /doc [default: --block]
    #[arg(long)]
    anchor: Option<usize>,
    /// Tokens of conversation about a /doc document (the dense cache holds the document and
    /// this many more)
    #[arg(long, default_value_t = 2048)]
    doc_room: usize,
}

/// How replies are sampled: chat, generate and ask share these flags.
#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Most tokens in one reply
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    /// 0 means greedy, the default: replies are reproducible and match an exact f32 pass
    /// (try 0.8 for variety)
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// 0 turns top-k off
    #[arg(long, default_value_t = 40)]
    top_k: u32,
    /// 1 turns top-p off
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// 1 turns the penalty off
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Tokens of history the repetition penalty looks at
    #[arg(long, default_value_t = 64)]
    repeat_last_n: u32,
    /// Seed of the sampler
    #[arg(long, default_value_t = 0)]
    seed: u32,
}

/// The attention policy and its sizes: chat, generate, ppl and bench share these flags.
#[derive(Args, Clone, Debug)]
pub struct PolicyArgs {
    /// Attention policy: `sink` keeps the first tokens and a sliding window (constant
    /// memory, never full), `dense` keeps everything until --context is full, `window`
    /// drops the sinks (the failing baseline), `recompute` re-encodes the window per token
    /// [default: sink; dense for a model with Multi-Token Attention, whose convolutions
    /// over the attention map are undefined once tokens are evicted]
    #[arg(long, value_enum)]
    pub attention: Option<PolicyArg>,
    /// Sink tokens kept forever (sink policy)
    #[arg(long, default_value_t = DEFAULT_SINKS)]
    pub sinks: usize,
    /// Most recent tokens attended to (sink, window and recompute policies)
    #[arg(long, default_value_t = DEFAULT_WINDOW)]
    pub window: usize,
    /// Slots of the dense policy [default: the model's trained context]
    #[arg(long)]
    pub context: Option<usize>,
}

impl PolicyArgs {
    /// The policy kind these flags name for `model`.
    pub fn kind(&self, model: &GpuModel) -> PolicyArg {
        self.attention.unwrap_or(if model.has_mta() {
            PolicyArg::Dense
        } else {
            PolicyArg::Sink
        })
    }

    /// The policy these flags name for `model`, with `n_sink` sinks for `sink`.
    pub fn policy_with_sinks(&self, model: &GpuModel, n_sink: usize) -> AttentionPolicy {
        let config = &model.config;
        match self.kind(model) {
            PolicyArg::Dense => AttentionPolicy::Dense {
                capacity: self.context.unwrap_or(config.context_len),
            },
            PolicyArg::Window => AttentionPolicy::Window {
                window: self.window,
            },
            PolicyArg::Recompute => AttentionPolicy::Recompute {
                window: self.window,
            },
            PolicyArg::Sink => AttentionPolicy::Sink {
                n_sink,
                window: self.window,
            },
        }
    }

    pub fn policy(&self, model: &GpuModel) -> AttentionPolicy {
        self.policy_with_sinks(model, self.sinks)
    }
}

/// The policy and its sizes in words: `sink (4 sinks + 2044 window)`.
pub fn describe_policy(policy: AttentionPolicy) -> String {
    match policy {
        AttentionPolicy::Dense { capacity } => format!("dense (context {capacity})"),
        AttentionPolicy::Window { window } => format!("window (window {window})"),
        AttentionPolicy::Recompute { window } => format!("recompute (window {window})"),
        AttentionPolicy::Sink { n_sink, window } => {
            format!("sink ({n_sink} sinks + {window} window)")
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum PolicyArg {
    Sink,
    Dense,
    Window,
    Recompute,
}

impl RunArgs {
    fn options(&self) -> anyhow::Result<GenerateOptions> {
        self.sampling.options()
    }
}

impl SamplingArgs {
    pub fn options(&self) -> anyhow::Result<GenerateOptions> {
        let sampling = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repeat_penalty,
            penalty_last_n: self.repeat_last_n,
            seed: self.seed,
        };
        sampling.validate()?;
        Ok(GenerateOptions {
            max_tokens: self.max_tokens,
            sampling,
            stop_at_eos: true,
        })
    }
}

pub fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so printing into a closed pipe (`sinkstar info | head`) would panic in
    // println!; the default action ends the process quietly, as for any Unix tool.
    #[cfg(unix)]
    // SAFETY: called first thing, before any thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The GPU, the GGUF and what is built from them, loaded once per command.
pub struct Loaded {
    pub model: Arc<GpuModel>,
    /// The same model on further devices ([`load_on_devices`]).
    pub more: Vec<Arc<GpuModel>>,
    pub tokenizer: Tokenizer,
    /// `None` for a Hugging Face model whose tokenizer_config.json has no chat template.
    template: Option<ChatTemplate>,
    path: PathBuf,
}

impl Loaded {
    /// The chat template, or an error saying the model has none.
    pub fn template(&self) -> anyhow::Result<&ChatTemplate> {
        self.template.as_ref().with_context(|| {
            format!(
                "{} has no chat template (tokenizer_config.json has no `chat_template`): use \
                 `generate` without --chat",
                self.path.display()
            )
        })
    }
}

pub fn gpu(cli: &Cli) -> anyhow::Result<Arc<Gpu>> {
    let device = &cli.device;
    Ok(Arc::new(Gpu::new_blocking(&gpu_options(
        device,
        device.adapter,
    ))?))
}

/// The device options the flags give, on `adapter`.
pub fn gpu_options(cli: &DeviceFlags, adapter: Option<usize>) -> GpuOptions {
    GpuOptions {
        backend: cli.backend.clone(),
        adapter,
        subgroup_matvec: match cli.matvec {
            Matvec::Auto => None,
            Matvec::Vec => Some(false),
            Matvec::Subgroup => Some(true),
        },
        decode_workgroups: cli.decode_workgroups,
        decode_attention_threads: cli.decode_attention_threads,
        shared_prefill: match cli.prefill_matmul {
            PrefillMatmul::Auto => None,
            PrefillMatmul::Tile => Some(false),
            PrefillMatmul::Shared => Some(true),
        },
        fuse_output_projection: Some(matches!(cli.output_projection, OutputProjection::Fused)),
    }
}

fn model_path(cli: &Cli) -> PathBuf {
    cli.model.clone().unwrap_or_else(default_model_path)
}

pub fn load(cli: &Cli) -> anyhow::Result<Loaded> {
    load_on_devices(cli, 1)
}

/// `n` devices: one on each of the first `n` GPU adapters when there are that many and no
/// `--adapter` was given, else `n` opened side by side on the chosen adapter (which is how
/// one GPU, or lavapipe, runs the multi-device path).
pub fn gpus(cli: &Cli, n: usize) -> anyhow::Result<Vec<Arc<Gpu>>> {
    if n == 0 {
        anyhow::bail!("--devices must be at least 1");
    }
    let adapters = pollster::block_on(list_adapters(cli.device.backend.as_deref()))?;
    let real: Vec<usize> = adapters
        .iter()
        .filter(|a| a.device_type != "Cpu")
        .map(|a| a.index)
        .collect();
    let indices: Vec<Option<usize>> = if cli.device.adapter.is_none() && n > 1 && real.len() >= n {
        real[..n].iter().map(|&i| Some(i)).collect()
    } else {
        vec![cli.device.adapter; n]
    };
    indices
        .into_iter()
        .map(|adapter| {
            Ok(Arc::new(Gpu::new_blocking(&gpu_options(
                &cli.device,
                adapter,
            ))?))
        })
        .collect()
}

/// The model on `n_devices` devices (see [`gpus`]): a GGUF file, or a Hugging Face directory.
pub fn load_on_devices(cli: &Cli, n_devices: usize) -> anyhow::Result<Loaded> {
    let path = model_path(cli);
    if cli.model.is_none() && !path.exists() {
        anyhow::bail!(
            "the default model is not at {}: run scripts/fetch-model.sh (or pass --model)",
            path.display()
        );
    }
    let loading = || format!("loading {}", path.display());
    let gguf = open_gguf(&path)?;
    let models = gpus(cli, n_devices)?
        .into_iter()
        .map(|gpu| load_model(&path, gguf.as_ref(), gpu))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (model, more) = models.split_first().context("no device")?;
    let (tokenizer, template) = match &gguf {
        Some(gguf) => (
            Tokenizer::from_gguf(gguf)?,
            Some(ChatTemplate::from_gguf(gguf)?),
        ),
        None => load_hf_tokenizer_dir(&path).with_context(loading)?,
    };
    Ok(Loaded {
        model: model.clone(),
        more: more.to_vec(),
        tokenizer,
        template,
        path,
    })
}

/// The GGUF file at `path`, or `None` for a Hugging Face model directory.
fn open_gguf(path: &Path) -> anyhow::Result<Option<Gguf>> {
    if path.is_dir() {
        return Ok(None);
    }
    let gguf = Gguf::open(path).with_context(|| format!("loading {}", path.display()))?;
    Ok(Some(gguf))
}

/// The model at `path` (`gguf` when it is a GGUF file, else a Hugging Face directory) on `gpu`.
fn load_model(path: &Path, gguf: Option<&Gguf>, gpu: Arc<Gpu>) -> anyhow::Result<Arc<GpuModel>> {
    let start = Instant::now();
    let model = match gguf {
        Some(gguf) => GpuModel::load(gpu.clone(), gguf)?,
        None => {
            load_hf_dir(gpu.clone(), path).with_context(|| format!("loading {}", path.display()))?
        }
    };
    eprintln!(
        "sinkstar: {} on {} ({:?}), loaded in {:.2}s",
        path.file_name().unwrap_or_default().to_string_lossy(),
        gpu.info.name,
        gpu.info.backend,
        start.elapsed().as_secs_f64()
    );
    Ok(Arc::new(model))
}

/// The model of `loaded` once more, on a device of its own opened with `device`'s options
/// (`bench --versus`).
pub fn load_again(loaded: &Loaded, device: &DeviceFlags) -> anyhow::Result<Arc<GpuModel>> {
    let gpu = Arc::new(Gpu::new_blocking(&gpu_options(device, device.adapter))?);
    load_model(&loaded.path, open_gguf(&loaded.path)?.as_ref(), gpu)
}

fn session(
    loaded: &Loaded,
    run: &RunArgs,
    system: Option<&String>,
    chat: bool,
) -> anyhow::Result<Session> {
    let kind = run.policy.kind(&loaded.model);
    let n_sink = if run.keep_system && chat && kind == PolicyArg::Sink {
        loaded
            .template()?
            .system_prefix_tokens(&loaded.tokenizer, system.map(String::as_str))?
            .max(run.policy.sinks)
    } else {
        run.policy.sinks
    };
    let policy = run.policy.policy_with_sinks(&loaded.model, n_sink);
    if run.keep_system && !(chat && kind == PolicyArg::Sink) {
        anyhow::bail!("--keep-system needs the sink policy and a chat (chat, or generate --chat)");
    }
    Ok(Session::new(
        loaded.model.clone(),
        &SessionOptions {
            policy,
            ..SessionOptions::default()
        },
    )?)
}

/// Ctrl-C sets the flag (ending the current reply) instead of killing the program.
fn cancel_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let handler_flag = flag.clone();
    ctrlc::set_handler(move || handler_flag.store(true, Ordering::Relaxed))
        .context("installing the Ctrl-C handler")?;
    Ok(flag)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Info => info(&cli),
        Command::Generate {
            prompt,
            chat,
            system,
            json,
            run,
        } => {
            let text = match prompt {
                Some(text) => text.clone(),
                None => {
                    let mut text = String::new();
                    std::io::stdin().read_to_string(&mut text)?;
                    text
                }
            };
            let loaded = load(&cli)?;
            let text = if *chat {
                let mut messages: Vec<ChatMessage> =
                    system.iter().map(ChatMessage::system).collect();
                messages.push(ChatMessage::user(text));
                loaded.template()?.render(&messages, true)?
            } else {
                text
            };
            let prompt = loaded.tokenizer.encode(&text)?;
            let mut session = session(&loaded, run, system.as_ref(), *chat)?;
            let cancel = cancel_flag()?;
            let mut stdout = std::io::stdout();
            let generation = generate(
                &mut session,
                &loaded.tokenizer,
                &prompt,
                &run.options()?,
                &cancel,
                &mut |piece| {
                    if !*json {
                        let _ = stdout.write_all(piece.as_bytes());
                        let _ = stdout.flush();
                    }
                },
            )?;
            if *json {
                let summary = serde_json::json!({
                    "text": loaded.tokenizer.decode(&generation.tokens)?,
                    "tokenIds": generation.tokens,
                    "stop": generation.stop.name(),
                    "promptTokens": generation.prompt_tokens,
                    "prefillSecs": generation.prefill_secs,
                    "decodeSecs": generation.decode_secs,
                    "decodeTokensPerSec": generation.decode_tokens_per_sec(),
                    "adapter": loaded.model.gpu().info.name,
                });
                println!("{summary}");
            }
            // Only generated text goes to stdout; the line break for the terminal too
            // goes to stderr.
            eprintln!();
            eprintln!(
                "sinkstar: {} prompt tokens in {:.2}s, {} tokens at {:.1} tok/s ({:?})",
                generation.prompt_tokens,
                generation.prefill_secs,
                generation.tokens.len(),
                generation.decode_tokens_per_sec(),
                generation.stop
            );
            Ok(())
        }
        Command::Chat { system, run, doc } => {
            let loaded = load(&cli)?;
            let options = run.options()?;
            let star = StarOptions {
                block: doc.block,
                anchor: doc.anchor.unwrap_or(doc.block),
            };
            star.validate()?;
            let chat_session = || session(&loaded, run, system.as_ref(), true);
            let mut chat = Chat::new(
                chat_session()?,
                loaded.tokenizer.clone(),
                loaded.template()?.clone(),
                system.clone(),
            );
            let cancel = cancel_flag()?;
            let docs = Documents {
                star,
                room: doc.doc_room,
                model: loaded.model.clone(),
                chat_session: &chat_session,
            };
            chat_loop(&mut chat, &options, &cancel, &docs)
        }
        Command::Ask(args) => ask::ask(&cli, args),
        Command::Bench(args) => bench::bench(&cli, args),
        Command::Ppl(args) => ppl::ppl(&cli, args),
        Command::Plot(args) => plot::plot_command(args),
        Command::Serve(args) => serve::serve(cli.model.as_deref(), args),
        Command::MtaToy(args) => mta_toy::mta_toy(&cli, args),
    }
}

/// What `/doc` needs: how to read a document, and how to get the chat's own kind of session
/// back on `/reset`.
struct Documents<'a> {
    star: StarOptions,
    room: usize,
    model: Arc<GpuModel>,
    chat_session: &'a dyn Fn() -> anyhow::Result<Session>,
}

impl Documents<'_> {
    /// `/doc FILE`: a dense session sized for the document and `room` more tokens, the
    /// document read into it (Star Attention past two blocks), ready for questions.
    fn read(&self, chat: &mut Chat, path: &str) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the document {path}"))?;
        let n_tokens = chat.document_tokens(&text)?;
        let capacity = n_tokens + self.room;
        let context_len = self.model.config.context_len;
        if capacity > context_len {
            eprintln!(
                "warning: the document and {} tokens of talk span {capacity} positions, past the \
                 {context_len} the model was trained on: answers may degrade",
                self.room
            );
        }
        let session = Session::new(
            self.model.clone(),
            &SessionOptions {
                policy: AttentionPolicy::Dense { capacity },
                // Past the trained context only with the warning above.
                positions: Some(capacity),
                ..SessionOptions::default()
            },
        )?;
        let mut progress = Progress::new(n_tokens, "document");
        let start = Instant::now();
        let block = self.star.block;
        let encoding = pollster::block_on(chat.read_document_async(
            session,
            &text,
            Some(&self.star),
            &mut |done, _| progress.update((done * block).min(n_tokens), ""),
        ))?;
        progress.finish();
        let how = match encoding {
            ContextEncoding::Dense => "densely".to_string(),
            ContextEncoding::Star { blocks } => {
                format!("with Star Attention in {blocks} blocks of {block}")
            }
        };
        eprintln!(
            "(document of {n_tokens} tokens read in {:.1}s {how}; ask about it — /reset ends it)",
            start.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

fn chat_loop(
    chat: &mut Chat,
    options: &GenerateOptions,
    cancel: &AtomicBool,
    docs: &Documents,
) -> anyhow::Result<()> {
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "Type a message; /doc FILE reads a document to ask about, /reset starts over, /quit \
             (or Ctrl-D) leaves, Ctrl-C stops a reply."
        );
    }
    // Whether the chat runs on a document's dense session rather than its own.
    let mut on_document = false;
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("> ");
        }
        let Some(line) = lines.next() else { break };
        let line = line?;
        let line = line.trim();
        match line {
            "" => continue,
            "/quit" | "/exit" => break,
            "/reset" => {
                if on_document {
                    // Free the document's cache and go back to the chat's own policy.
                    chat.set_session((docs.chat_session)()?);
                    on_document = false;
                }
                chat.reset();
                eprintln!("(conversation reset)");
                continue;
            }
            _ => {}
        }
        if let Some(path) = line.strip_prefix("/doc ") {
            match docs.read(chat, path.trim()) {
                Ok(()) => on_document = true,
                Err(e) => eprintln!("error: {e:#}"),
            }
            continue;
        }
        cancel.store(false, Ordering::Relaxed);
        let mut stdout = std::io::stdout();
        let result = chat.send(line, options, cancel, &mut |piece| {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        });
        println!();
        match result {
            Ok(generation) => {
                if generation.stop == StopReason::Cancelled {
                    eprintln!("(reply stopped)");
                }
                let session = chat.session();
                eprintln!(
                    "[{} tokens, {:.1} tok/s; {} tokens seen, {} of {} cache slots in use ({})]",
                    generation.tokens.len(),
                    generation.decode_tokens_per_sec(),
                    session.n_seen(),
                    session.n_filled(),
                    session.capacity(),
                    session.policy().name()
                );
            }
            // A full context or a bad input ends the reply, not the chat.
            Err(e) => eprintln!("error: {e:#}"),
        }
    }
    Ok(())
}

fn info(cli: &Cli) -> anyhow::Result<()> {
    let adapters = pollster::block_on(list_adapters(cli.device.backend.as_deref()))?;
    println!("adapters:");
    for a in &adapters {
        println!(
            "  [{}] {} ({}, {}) {}",
            a.index, a.name, a.backend, a.device_type, a.driver
        );
    }
    let gpu = gpu(cli)?;
    let l = &gpu.limits;
    println!(
        "chosen: {} ({:?}, {:?}), decode matvec: {}, decode attention over {} workgroups of \
         up to {} threads, prefill matmul: {}",
        gpu.info.name,
        gpu.info.backend,
        gpu.info.device_type,
        MatmulKind::decode(&gpu).name(),
        gpu.decode_workgroups,
        gpu.decode_attention_threads,
        MatmulKind::prefill(&gpu).name()
    );
    println!(
        "limits: storage binding {} MiB, buffer {} MiB, {} storage buffers/stage, \
         {} invocations/workgroup, {} KiB workgroup memory, {} workgroups/dimension",
        l.max_storage_buffer_binding_size >> 20,
        l.max_buffer_size >> 20,
        l.max_storage_buffers_per_shader_stage,
        l.max_compute_invocations_per_workgroup,
        l.max_compute_workgroup_storage_size >> 10,
        l.max_compute_workgroups_per_dimension
    );
    let path = model_path(cli);
    if path.is_dir() {
        let config_path = path.join("config.json");
        let config = std::fs::read_to_string(&config_path)
            .with_context(|| format!("reading {}", config_path.display()))?;
        let config = HfConfig::from_json(&config)?;
        println!("model: {} (Hugging Face directory)", path.display());
        println!("  {:?}", config.llama);
        if let Some(layers) = &config.mta {
            println!("  Multi-Token Attention in every layer:");
            for (l, layer) in layers.iter().enumerate() {
                println!("    layer {l}: {layer:?}");
            }
        }
        return Ok(());
    }
    match Gguf::open(&path) {
        Ok(gguf) => {
            let config = sinkstar::model::LlamaConfig::from_gguf(&gguf)?;
            println!("model: {} (GGUF v{})", path.display(), gguf.version);
            println!("  {config:?}");
            let mut counts = std::collections::BTreeMap::new();
            for t in &gguf.tensors {
                let (n, bytes) = counts.entry(t.ggml_type.name()).or_insert((0, 0u64));
                *n += 1;
                *bytes += t.n_bytes;
            }
            for (name, (n, bytes)) in counts {
                println!(
                    "  {n} tensors of {name}, {:.1} MiB",
                    bytes as f64 / 1048576.0
                );
            }
        }
        Err(e) => println!("model: {} ({e})", path.display()),
    }
    Ok(())
}

/// A progress bar on stderr (indicatif) for the long runs of `ppl` and `bench --history`.
/// When stderr is no terminal (a script, a log file) the bar hides itself, so a plain line is
/// printed every [`Progress::PLAIN_EVERY_SECS`] instead.
pub struct Progress {
    bar: indicatif::ProgressBar,
    what: String,
    last_line: Instant,
}

impl Progress {
    const PLAIN_EVERY_SECS: f64 = 15.0;

    /// A bar of `len` tokens; `what` prefixes it (`ppl`, `history 16000`).
    pub fn new(len: usize, what: &str) -> Progress {
        let bar = indicatif::ProgressBar::new(len as u64);
        let style = indicatif::ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} tokens, {rate}, eta {eta} {msg}",
        )
        .expect("the template is valid")
        .with_key(
            "rate",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.1} tok/s", state.per_sec());
            },
        );
        bar.set_style(style);
        bar.set_prefix(what.to_string());
        Progress {
            bar,
            what: what.to_string(),
            last_line: Instant::now(),
        }
    }

    /// Moves the bar to `pos` tokens with `message` after it.
    pub fn update(&mut self, pos: usize, message: &str) {
        self.bar.set_position(pos as u64);
        self.bar.set_message(message.to_string());
        if self.bar.is_hidden() && self.last_line.elapsed().as_secs_f64() >= Self::PLAIN_EVERY_SECS
        {
            self.last_line = Instant::now();
            let elapsed = self.bar.elapsed().as_secs_f64();
            eprintln!(
                "sinkstar: {} {pos}/{} tokens, {:.1} tok/s {message}",
                self.what,
                self.bar.length().unwrap_or(0),
                pos as f64 / elapsed.max(1e-9),
            );
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
