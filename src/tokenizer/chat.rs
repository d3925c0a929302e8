//! Chat template: the GGUF's `tokenizer.chat_template` (Jinja) rendered with minijinja,
//! set up like Hugging Face's `apply_chat_template` (trim_blocks, lstrip_blocks, and the
//! `messages`, `add_generation_prompt`, `bos_token`, `eos_token` variables plus a
//! `raise_exception` function).
//!
//! The template decides everything about the prompt text, including the default system
//! message when none is given; this module adds nothing of its own. What it leaves out:
//! Python string methods (`.strip()` …), which the default model's template does not use.

use minijinja::value::Value;
use minijinja::{context, Environment, ErrorKind};

use super::{Tokenizer, TokenizerError};
use crate::model::gguf::Gguf;

/// Name the template is registered under in the environment.
const TEMPLATE_NAME: &str = "chat";

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    pub fn system(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("assistant", content)
    }
}

/// A compiled chat template.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

fn template_error(e: minijinja::Error) -> TokenizerError {
    // `{:#}` adds minijinja's context (line, the offending source) to the message.
    TokenizerError::Template {
        message: format!("{e:#}"),
    }
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token`/`eos_token` are the texts the template may refer to.
    pub fn new(
        source: &str,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<ChatTemplate, TokenizerError> {
        let mut env = Environment::new();
        // Hugging Face renders chat templates with these two set.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(template_error)?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// The template in `tokenizer.chat_template`, with the texts of the BOS and EOS tokens.
    pub fn from_gguf(gguf: &Gguf) -> Result<ChatTemplate, TokenizerError> {
        let source = gguf.get_str("tokenizer.chat_template")?;
        let tokens = gguf
            .get_str_array("tokenizer.ggml.tokens")
            .unwrap_or_default();
        let token_text = |key: &str| -> String {
            gguf.get_usize(key)
                .ok()
                .and_then(|id| tokens.get(id))
                .map_or_else(String::new, |t| t.to_string())
        };
        let bos = token_text("tokenizer.ggml.bos_token_id");
        let eos = token_text("tokenizer.ggml.eos_token_id");
        ChatTemplate::new(source, bos, eos)
    }

    /// The prompt text for `messages`; with `add_generation_prompt` it ends with the
    /// opening of an assistant turn.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| context! { role => m.role.as_str(), content => m.content.as_str() })
            .collect();
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(template_error)?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
            })
            .map_err(template_error)
    }

    /// Tokens of the rendered conversation before the first user message's text: the system
    /// prompt and the user turn's header (what two different user messages render alike).
    /// `--keep-system` pins this many tokens as sinks.
    pub fn system_prefix_tokens(
        &self,
        tokenizer: &Tokenizer,
        system: Option<&str>,
    ) -> Result<usize, TokenizerError> {
        let render = |user: &str| {
            let mut messages: Vec<ChatMessage> =
                system.into_iter().map(ChatMessage::system).collect();
            messages.push(ChatMessage::user(user));
            self.render(&messages, false)
        };
        let (a, b) = (render("a")?, render("b")?);
        let common = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
        Ok(tokenizer.encode(&a[..common])?.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_errors_are_typed() {
        let e = ChatTemplate::new("{% for m in messages %}", "", "").unwrap_err();
        assert!(matches!(e, TokenizerError::Template { .. }), "{e}");
    }

    #[test]
    fn raise_exception_is_a_typed_error() {
        let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", "", "").unwrap();
        let e = t.render(&[], false).unwrap_err();
        assert!(e.to_string().contains("roles must alternate"), "{e}");
    }

    #[test]
    fn trims_blocks_like_hugging_face() {
        let t = ChatTemplate::new(
            "{% for m in messages %}\n  {{ m.role }}={{ m.content }};\n{% endfor %}",
            "",
            "",
        )
        .unwrap();
        let out = t.render(&[ChatMessage::user("hi")], false).unwrap();
        assert_eq!(out, "  user=hi;\n");
    }
}
