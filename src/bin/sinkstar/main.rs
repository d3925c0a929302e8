//! The sinkstar command line: chat, generate, info, bench, ppl and plot.
//!
//! `cli` parses the arguments and runs chat, generate and info; `bench` measures speed and
//! memory (also against the length of the history), `ppl` measures streaming perplexity as
//! StreamingLLM does, and `plot` draws their CSVs as PNG line plots.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(not(target_arch = "wasm32"))]
mod bench;
#[cfg(not(target_arch = "wasm32"))]
mod cli;
#[cfg(not(target_arch = "wasm32"))]
mod plot;
#[cfg(not(target_arch = "wasm32"))]
mod ppl;
