//! Generation: the decode loop with its stop conditions and streaming, and multi-turn chat
//! through the model's chat template. The GPU work (forward pass and sampling) happens in
//! [`crate::model::Session`]; this module only decides what to feed and when to stop.

use std::sync::atomic::{AtomicBool, Ordering};

use web_time::Instant;

use crate::model::Session;
use crate::tokenizer::chat::{ChatMessage, ChatTemplate};
use crate::tokenizer::Tokenizer;
use crate::Error;

pub use crate::kernels::sample::SamplingParams;

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("the prompt is empty: there is no token to predict from")]
    EmptyPrompt,
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Most tokens generated for one reply.
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Stop when the model emits its end-of-sequence token (not printed, not fed back).
    pub stop_at_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 512,
            sampling: SamplingParams::default(),
            stop_at_eos: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Eos,
    MaxTokens,
    Cancelled,
}

/// What one reply produced, with its timings.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated tokens, without the end-of-sequence token.
    pub tokens: Vec<u32>,
    pub stop: StopReason,
    pub prompt_tokens: usize,
    /// Prefill of the prompt plus the first sampled token.
    pub prefill_secs: f64,
    /// Every later token.
    pub decode_secs: f64,
}

impl Generation {
    pub fn decode_tokens_per_sec(&self) -> f64 {
        let n = self.tokens.len().saturating_sub(1);
        if self.decode_secs > 0.0 {
            n as f64 / self.decode_secs
        } else {
            0.0
        }
    }
}

/// Feeds `prompt` after whatever `session` holds, then samples up to `options.max_tokens`
/// tokens, calling `on_text` with each piece of text as soon as it is whole UTF-8. `cancel`
/// (e.g. set by Ctrl-C) ends the reply after the current token.
pub fn generate(
    session: &mut Session,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    options: &GenerateOptions,
    cancel: &AtomicBool,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation, Error> {
    if prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt.into());
    }
    let start = Instant::now();
    let mut stream = tokenizer.stream();
    let mut tokens = Vec::new();
    let mut stop = StopReason::MaxTokens;
    let prefill_secs;
    if options.max_tokens > 0 {
        let mut token = session.feed_and_sample(prompt, &options.sampling)?;
        prefill_secs = start.elapsed().as_secs_f64();
        loop {
            if options.stop_at_eos && token == tokenizer.eos() {
                stop = StopReason::Eos;
                break;
            }
            tokens.push(token);
            if let Some(text) = stream.push(token)? {
                on_text(&text);
            }
            if cancel.load(Ordering::Relaxed) {
                stop = StopReason::Cancelled;
                break;
            }
            if tokens.len() == options.max_tokens {
                break;
            }
            token = session.decode(&options.sampling)?;
        }
    } else {
        session.feed(prompt)?;
        prefill_secs = start.elapsed().as_secs_f64();
    }
    if let Some(text) = stream.finish() {
        on_text(&text);
    }
    Ok(Generation {
        tokens,
        stop,
        prompt_tokens: prompt.len(),
        prefill_secs,
        decode_secs: start.elapsed().as_secs_f64() - prefill_secs,
    })
}

/// A multi-turn conversation: each turn renders the whole conversation with the chat
/// template and feeds only the text the session has not seen. Works with every attention
/// policy, including rings that have long evicted the first turns: nothing is ever cut back.
pub struct Chat {
    session: Session,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    system: Option<String>,
    messages: Vec<ChatMessage>,
    /// The conversation as text, exactly as far as the session has seen it (the pending
    /// token, which the session feeds first on the next step, counts as seen).
    context: String,
}

impl Chat {
    /// `system` replaces the template's default system message when given.
    pub fn new(
        session: Session,
        tokenizer: Tokenizer,
        template: ChatTemplate,
        system: Option<String>,
    ) -> Chat {
        let messages = system.iter().map(ChatMessage::system).collect();
        Chat {
            session,
            tokenizer,
            template,
            system,
            messages,
            context: String::new(),
        }
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The conversation as the session has seen it.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// Forgets the conversation (keeps the system message).
    pub fn reset(&mut self) {
        self.session.reset();
        self.context.clear();
        self.messages = self.system.iter().map(ChatMessage::system).collect();
    }

    /// Adds a user turn and streams the assistant's reply.
    pub fn send(
        &mut self,
        user: &str,
        options: &GenerateOptions,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation, Error> {
        self.messages.push(ChatMessage::user(user));
        let text = self.template.render(&self.messages, true)?;
        // Chat templates only append: the new text follows what the session has seen. (A
        // template that rewrites earlier turns gets the whole conversation fed afresh.)
        let new_text = match text.strip_prefix(self.context.as_str()) {
            Some(suffix) => suffix,
            None => {
                self.session.reset();
                self.context.clear();
                &text
            }
        };
        let tokens = self.tokenizer.encode(new_text)?;
        let held = self.held();
        let generation = match generate(
            &mut self.session,
            &self.tokenizer,
            &tokens,
            options,
            cancel,
            on_text,
        ) {
            Ok(generation) => generation,
            Err(e) => {
                // Keep the conversation as it was. A step refused up front (a full dense
                // cache, bad settings) fed nothing; one that failed part-way did, and the
                // cache cannot always be cut back: start the next turn afresh then.
                self.messages.pop();
                if self.held() != held {
                    self.session.reset();
                    self.context.clear();
                }
                return Err(e);
            }
        };
        let reply = self.tokenizer.decode(&generation.tokens)?;
        self.context = text;
        // The session feeds its pending token (the last one sampled) before anything else,
        // so the whole reply counts as seen, and so does the end-of-turn token that stopped
        // it, which is also how the template closes the assistant's turn.
        self.context.push_str(&reply);
        if generation.stop == StopReason::Eos {
            self.context
                .push_str(&self.tokenizer.decode(&[self.tokenizer.eos()])?);
        }
        self.messages.push(ChatMessage::assistant(reply));
        Ok(generation)
    }

    /// Tokens the session has taken in, pending one included.
    fn held(&self) -> usize {
        self.session.n_seen() + usize::from(self.session.pending().is_some())
    }
}
