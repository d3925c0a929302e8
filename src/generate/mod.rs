//! Generation: the decode loop with its stop conditions and streaming, and multi-turn chat
//! through the model's chat template. The GPU work (forward pass and sampling) happens in
//! [`crate::model::Session`]; this module only decides what to feed and when to stop.

pub mod document;

use document::{encode_context_async, ContextEncoding, DocumentPrompt};

use std::sync::atomic::{AtomicBool, Ordering};

use web_time::Instant;

use crate::attention::star::StarOptions;
use crate::model::{Session, StarSession};
use crate::tokenizer::chat::{ChatMessage, ChatTemplate};
use crate::tokenizer::{TextStream, Tokenizer};
use crate::Result;

pub use crate::kernels::sample::SamplingParams;

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("the prompt is empty: there is no token to predict from")]
    EmptyPrompt,
    #[error(
        "the chat template does not render the document as given, so the prompt cannot be cut \
         after it"
    )]
    DocumentNotRendered,
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

impl StopReason {
    /// The name in JSON output (`generate --json`, the browser bindings).
    pub fn name(self) -> &'static str {
        match self {
            StopReason::Eos => "eos",
            StopReason::MaxTokens => "maxtokens",
            StopReason::Cancelled => "cancelled",
        }
    }
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

/// What replies are generated from: a [`Session`], or a [`StarSession`] spread over several
/// devices.
#[allow(async_fn_in_trait)] // futures are awaited where they are made: no Send bound needed
pub trait Decoder {
    /// Feeds `tokens` (after a pending sampled token) and samples the next one.
    async fn feed_and_sample_async(
        &mut self,
        tokens: &[u32],
        sampling: &SamplingParams,
    ) -> Result<u32>;
    /// Feeds the pending sampled token and samples the next one.
    async fn decode_async(&mut self, sampling: &SamplingParams) -> Result<u32>;
    /// Feeds `tokens` without sampling.
    async fn feed_async(&mut self, tokens: &[u32]) -> Result<()>;
}

impl Decoder for Session {
    async fn feed_and_sample_async(
        &mut self,
        tokens: &[u32],
        sampling: &SamplingParams,
    ) -> Result<u32> {
        Session::feed_and_sample_async(self, tokens, sampling).await
    }

    async fn decode_async(&mut self, sampling: &SamplingParams) -> Result<u32> {
        Session::decode_async(self, sampling).await
    }

    async fn feed_async(&mut self, tokens: &[u32]) -> Result<()> {
        self.feed(tokens)
    }
}

impl Decoder for StarSession {
    async fn feed_and_sample_async(
        &mut self,
        tokens: &[u32],
        sampling: &SamplingParams,
    ) -> Result<u32> {
        StarSession::feed_and_sample_async(self, tokens, sampling).await
    }

    async fn decode_async(&mut self, sampling: &SamplingParams) -> Result<u32> {
        StarSession::decode_async(self, sampling).await
    }

    async fn feed_async(&mut self, tokens: &[u32]) -> Result<()> {
        StarSession::feed_async(self, tokens).await
    }
}

/// One reply in the making, advanced a token at a time by [`Reply::next`]: the prompt's
/// prefill and first sample on the first call, one decode step on each later one. Stepwise so
/// that a browser can yield to its event loop between tokens and stop a reply at any token.
pub struct Reply {
    prompt: Vec<u32>,
    options: GenerateOptions,
    stream: TextStream,
    tokens: Vec<u32>,
    prefilled: bool,
    stop: Option<StopReason>,
    start: Instant,
    prefill_secs: f64,
}

impl Reply {
    pub fn new(
        prompt: Vec<u32>,
        tokenizer: &Tokenizer,
        options: &GenerateOptions,
    ) -> Result<Reply> {
        if prompt.is_empty() {
            return Err(GenerateError::EmptyPrompt.into());
        }
        Ok(Reply {
            prompt,
            options: options.clone(),
            stream: tokenizer.stream(),
            tokens: Vec::new(),
            prefilled: false,
            stop: None,
            start: Instant::now(),
            prefill_secs: 0.0,
        })
    }

    /// Runs one step and returns the text it completed (empty while a character is still
    /// incomplete UTF-8), or `None` once the reply is over.
    pub async fn next(
        &mut self,
        session: &mut impl Decoder,
        tokenizer: &Tokenizer,
    ) -> Result<Option<String>> {
        if self.stop.is_some() {
            return Ok(self.stream.finish());
        }
        let token = if self.prefilled {
            session.decode_async(&self.options.sampling).await?
        } else {
            self.start = Instant::now();
            self.prefilled = true;
            if self.options.max_tokens == 0 {
                session.feed_async(&self.prompt).await?;
                self.prefill_secs = self.start.elapsed().as_secs_f64();
                self.stop = Some(StopReason::MaxTokens);
                return Ok(None);
            }
            let token = session
                .feed_and_sample_async(&self.prompt, &self.options.sampling)
                .await?;
            self.prefill_secs = self.start.elapsed().as_secs_f64();
            token
        };
        if self.options.stop_at_eos && token == tokenizer.eos() {
            self.stop = Some(StopReason::Eos);
            return Ok(self.stream.finish());
        }
        self.tokens.push(token);
        let text = self.stream.push(token)?.unwrap_or_default();
        if self.tokens.len() == self.options.max_tokens {
            self.stop = Some(StopReason::MaxTokens);
        }
        Ok(Some(text))
    }

    /// Ends the reply after the tokens generated so far.
    pub fn cancel(&mut self) {
        self.stop.get_or_insert(StopReason::Cancelled);
    }

    /// Tokens generated so far, without an end-of-sequence token.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// What the reply produced, with its timings.
    pub fn generation(&self) -> Generation {
        let elapsed = if self.prefilled {
            self.start.elapsed().as_secs_f64()
        } else {
            0.0
        };
        Generation {
            tokens: self.tokens.clone(),
            stop: self.stop.unwrap_or(StopReason::Cancelled),
            prompt_tokens: self.prompt.len(),
            prefill_secs: self.prefill_secs,
            decode_secs: (elapsed - self.prefill_secs).max(0.0),
        }
    }
}

/// Feeds `prompt` after whatever `session` holds, then samples up to `options.max_tokens`
/// tokens, calling `on_text` with each piece of text as soon as it is whole UTF-8. `cancel`
/// (e.g. set by Ctrl-C) ends the reply after the current token.
pub async fn generate_async(
    session: &mut impl Decoder,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    options: &GenerateOptions,
    cancel: &AtomicBool,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation> {
    let mut reply = Reply::new(prompt.to_vec(), tokenizer, options)?;
    while let Some(text) = reply.next(session, tokenizer).await? {
        if !text.is_empty() {
            on_text(&text);
        }
        if cancel.load(Ordering::Relaxed) {
            reply.cancel();
        }
    }
    Ok(reply.generation())
}

/// Blocking form of [`generate_async`].
#[cfg(not(target_arch = "wasm32"))]
pub fn generate(
    session: &mut impl Decoder,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    options: &GenerateOptions,
    cancel: &AtomicBool,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation> {
    pollster::block_on(generate_async(
        session, tokenizer, prompt, options, cancel, on_text,
    ))
}

/// A reply of a [`Chat`] with what the chat needs to take it into the conversation.
struct ChatReply {
    reply: Reply,
    /// The whole conversation rendered up to the assistant's turn.
    rendered: String,
    /// Tokens the session held before the reply.
    held: usize,
    /// The document this turn asks about, given back if the turn fails before feeding.
    document: Option<String>,
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
    active: Option<ChatReply>,
    last: Option<Generation>,
    /// A document read by [`Chat::read_document_async`], not yet asked about: the next user
    /// message is appended to it, in the same user turn.
    document: Option<String>,
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
            active: None,
            last: None,
            document: None,
        }
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Ends the conversation, handing back its session (e.g. to profile its last decode step).
    pub fn into_session(self) -> Session {
        self.session
    }

    /// Swaps the chat's session for `session` (its buffers are freed) and starts over.
    pub fn set_session(&mut self, session: Session) {
        self.session = session;
        self.reset();
    }

    /// Starts a conversation about `document` in `session`, a fresh dense session with room
    /// for the document and the talk about it (its buffers replace the chat's): the
    /// conversation is reset and the document encoded now — by Star Attention's phase 1 in
    /// blocks of `star` unless it spans at most two blocks (see [`encode_context_async`]) —
    /// and the next user message is asked about it, in the same user turn, as `sinkstar ask`
    /// asks. `on_progress(done, total)` counts blocks.
    pub async fn read_document_async(
        &mut self,
        session: Session,
        document: &str,
        star: Option<&StarOptions>,
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<ContextEncoding> {
        self.set_session(session);
        let prompt = DocumentPrompt::new(
            &self.tokenizer,
            &self.template,
            self.system.as_deref(),
            document,
            "",
        )?;
        let encoding =
            encode_context_async(&mut self.session, &prompt.context, star, on_progress).await;
        if encoding.is_err() {
            self.reset();
        }
        let encoding = encoding?;
        self.context = prompt.context_text;
        self.document = Some(document.to_string());
        Ok(encoding)
    }

    /// Tokens of the conversation a document of `document` would take before any question
    /// (to size the session given to [`Chat::read_document_async`]).
    pub fn document_tokens(&self, document: &str) -> Result<usize> {
        let prompt = DocumentPrompt::new(
            &self.tokenizer,
            &self.template,
            self.system.as_deref(),
            document,
            "",
        )?;
        Ok(prompt.context.len())
    }

    /// The conversation as the session has seen it.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// The last reply that ended.
    pub fn last_generation(&self) -> Option<&Generation> {
        self.last.as_ref()
    }

    /// Whether a reply has begun and not yet ended.
    pub fn replying(&self) -> bool {
        self.active.is_some()
    }

    /// Forgets the conversation (keeps the system message), a document read included.
    pub fn reset(&mut self) {
        self.active = None;
        self.session.reset();
        self.context.clear();
        self.messages = self.system.iter().map(ChatMessage::system).collect();
        self.document = None;
    }

    /// Adds a user turn and begins the assistant's reply; [`Chat::next`] generates it. A reply
    /// still running is ended first, as [`Chat::cancel`] does.
    pub fn begin(&mut self, user: &str, options: &GenerateOptions) -> Result<()> {
        self.cancel()?;
        // A document read and not yet asked about shares the question's user turn.
        let content = match &self.document {
            Some(document) => format!("{document}\n\n{user}"),
            None => user.to_string(),
        };
        self.messages.push(ChatMessage::user(content));
        let prepared = self.prepare(options);
        if prepared.is_err() {
            self.messages.pop();
        }
        let mut prepared = prepared?;
        prepared.document = self.document.take();
        self.active = Some(prepared);
        Ok(())
    }

    fn prepare(&mut self, options: &GenerateOptions) -> Result<ChatReply> {
        let rendered = self.template.render(&self.messages, true)?;
        // Chat templates only append: the new text follows what the session has seen. (A
        // template that rewrites earlier turns gets the whole conversation fed afresh.)
        let new_text = match rendered.strip_prefix(self.context.as_str()) {
            Some(suffix) => suffix,
            None => {
                self.session.reset();
                self.context.clear();
                &rendered
            }
        };
        let tokens = self.tokenizer.encode(new_text)?;
        let reply = Reply::new(tokens, &self.tokenizer, options)?;
        Ok(ChatReply {
            reply,
            held: self.held(),
            rendered,
            document: None,
        })
    }

    /// Generates the next piece of the reply begun by [`Chat::begin`]; `None` once it has
    /// ended (and been taken into the conversation). After an error the turn is dropped.
    pub async fn next(&mut self) -> Result<Option<String>> {
        let Some(active) = self.active.as_mut() else {
            return Ok(None);
        };
        match active.reply.next(&mut self.session, &self.tokenizer).await {
            Ok(Some(text)) => Ok(Some(text)),
            Ok(None) => {
                self.end()?;
                Ok(None)
            }
            Err(e) => {
                // Keep the conversation as it was. A step refused up front (a full dense
                // cache, bad settings) fed nothing; one that failed part-way did, and the
                // cache cannot always be cut back: start the next turn afresh then.
                let held = active.held;
                let document = active.document.take();
                self.active = None;
                self.messages.pop();
                if self.held() != held {
                    self.session.reset();
                    self.context.clear();
                } else {
                    self.document = document;
                }
                Err(e)
            }
        }
    }

    /// Ends the running reply after the tokens generated so far and keeps them in the
    /// conversation. Nothing happens when no reply runs.
    pub fn cancel(&mut self) -> Result<()> {
        if let Some(active) = self.active.as_mut() {
            active.reply.cancel();
        }
        self.end()
    }

    /// Takes the ended reply into the conversation.
    fn end(&mut self) -> Result<()> {
        let Some(active) = self.active.take() else {
            return Ok(());
        };
        let generation = active.reply.generation();
        let reply = self.tokenizer.decode(&generation.tokens)?;
        self.context = active.rendered;
        // The session feeds its pending token (the last one sampled) before anything else,
        // so the whole reply counts as seen, and so does the end-of-turn token that stopped
        // it, which is also how the template closes the assistant's turn.
        self.context.push_str(&reply);
        if generation.stop == StopReason::Eos {
            self.context
                .push_str(&self.tokenizer.decode(&[self.tokenizer.eos()])?);
        }
        self.messages.push(ChatMessage::assistant(reply));
        self.last = Some(generation);
        Ok(())
    }

    /// Adds a user turn and streams the assistant's reply to `on_text`; `cancel` ends it
    /// after the current token.
    pub async fn send_async(
        &mut self,
        user: &str,
        options: &GenerateOptions,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        self.begin(user, options)?;
        while let Some(text) = self.next().await? {
            if !text.is_empty() {
                on_text(&text);
            }
            if cancel.load(Ordering::Relaxed) {
                self.cancel()?;
            }
        }
        Ok(self.last.clone().expect("an ended reply is recorded"))
    }

    /// Blocking form of [`Chat::send_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn send(
        &mut self,
        user: &str,
        options: &GenerateOptions,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        pollster::block_on(self.send_async(user, options, cancel, on_text))
    }

    /// Tokens the session has taken in, pending one included.
    fn held(&self) -> usize {
        self.session.n_seen() + usize::from(self.session.pending().is_some())
    }
}
