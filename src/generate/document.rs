//! Questions about a long document, Star Attention's setting (star.md §1): the prompt is cut
//! into the *context* (everything up to the end of the document) and the *query* (the question
//! and the opening of the assistant's turn). The context is encoded first — by Star's phase 1
//! in blocks, or densely when it is short — and the query and the reply then attend to all of
//! it (phase 2: on one device, ordinary attention over the one cache, so the reply is
//! [`super::generate_async`] of the query).

use super::GenerateError;
use crate::attention::star::{StarOptions, DEFAULT_BLOCK};
use crate::model::Session;
use crate::tokenizer::chat::{ChatMessage, ChatTemplate};
use crate::tokenizer::Tokenizer;
use crate::Result;

/// A chat-templated question about a document, as token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentPrompt {
    /// The rendered text of the context.
    pub context_text: String,
    /// The system turn, the user turn's header and the document.
    pub context: Vec<u32>,
    /// The question after the document, the end of the user turn and the assistant's header.
    pub query: Vec<u32>,
}

impl DocumentPrompt {
    /// One user turn `document + "\n\n" + question` (after `system`, or the template's own),
    /// rendered with the chat template and cut right after the document.
    pub fn new(
        tokenizer: &Tokenizer,
        template: &ChatTemplate,
        system: Option<&str>,
        document: &str,
        question: &str,
    ) -> Result<DocumentPrompt> {
        let user = format!("{document}\n\n{question}");
        let mut messages: Vec<ChatMessage> = system.into_iter().map(ChatMessage::system).collect();
        messages.push(ChatMessage::user(user.as_str()));
        let rendered = template.render(&messages, true)?;
        // The user text appears once, after the system turn; a template that trims it still
        // holds the trimmed document.
        let trimmed = document.trim();
        let cut = match rendered.find(&user) {
            Some(start) => start + document.len(),
            None => match rendered.find(trimmed) {
                Some(start) => start + trimmed.len(),
                None => return Err(GenerateError::DocumentNotRendered.into()),
            },
        };
        let context = tokenizer.encode(&rendered[..cut])?;
        let mut query = tokenizer.encode(&rendered[cut..])?;
        // `encode` starts every text with BOS where the model wants one; the query continues.
        if tokenizer.add_bos() && query.first() == Some(&tokenizer.bos()) {
            query.remove(0);
        }
        Ok(DocumentPrompt {
            context_text: rendered[..cut].to_string(),
            context,
            query,
        })
    }
}

/// How a context was encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextEncoding {
    /// Ordinary causal prefill: exact, quadratic in the length.
    Dense,
    /// Star Attention's phase 1 in this many blocks.
    Star { blocks: usize },
}

/// Feeds `context` to the (empty, dense) `session`: by Star's phase 1 when `star` is given
/// and the context spans more than two blocks, densely otherwise. `on_progress(done, total)`
/// is called as blocks (or dense chunks of a block's length) complete.
pub async fn encode_context_async(
    session: &mut Session,
    context: &[u32],
    star: Option<&StarOptions>,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<ContextEncoding> {
    let (star, encoding) = match star {
        Some(star) if !star.prefers_dense(context.len()) => {
            star.validate()?;
            let blocks = star.blocks(context.len()).len();
            (Some(star), ContextEncoding::Star { blocks })
        }
        _ => (None, ContextEncoding::Dense),
    };
    let step = star.map_or(DEFAULT_BLOCK, |s| s.block);
    let n_pieces = context.len().div_ceil(step);
    let gpu = session.model().gpu().clone();
    for (i, piece) in context.chunks(step).enumerate() {
        match star {
            Some(star) => session.feed_star(piece, star)?,
            None => session.feed(piece)?,
        }
        gpu.finish().await?;
        on_progress(i + 1, n_pieces);
    }
    Ok(encoding)
}
