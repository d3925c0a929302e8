//! The sinkstar command line: chat, generate, ask, info, bench, ppl, plot, serve and mta-toy.
//!
//! `cli` parses the arguments and runs chat, generate and info; `ask` answers a question about
//! a long document with Star Attention; `bench` measures speed and
//! memory (also against the length of the history), `ppl` measures streaming perplexity as
//! StreamingLLM does, `plot` draws their CSVs as PNG line plots, and `serve` hands the
//! browser demo to a local browser; `mta_toy` runs the Multi-Token Attention paper's toy task.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(not(target_arch = "wasm32"))]
mod ask;
#[cfg(not(target_arch = "wasm32"))]
mod bench;
#[cfg(not(target_arch = "wasm32"))]
mod cli;
#[cfg(not(target_arch = "wasm32"))]
mod mta_toy;
#[cfg(not(target_arch = "wasm32"))]
mod plot;
#[cfg(not(target_arch = "wasm32"))]
mod ppl;
#[cfg(not(target_arch = "wasm32"))]
mod serve;
