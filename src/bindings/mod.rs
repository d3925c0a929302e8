//! The wasm-bindgen surface: what the npm package (`pkg/`) calls. It converts between
//! JavaScript and the library and computes nothing itself. Settings cross as JSON text (the
//! package writes them from its typed options), text and numbers as themselves, and every
//! error as a JavaScript `Error` whose `code` is [`Error::code`] and whose message is the
//! library's `Display` text, the same words the CLI prints.
//!
//! Replies are pulled a token at a time ([`WasmChat::next`]) so that the browser's event loop
//! runs between tokens: a Stop button is just the page no longer asking.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use serde::Deserialize;
use wasm_bindgen::prelude::*;

use crate::attention::{AttentionPolicy, DEFAULT_SINKS, DEFAULT_WINDOW};
use crate::generate::{Chat, GenerateOptions, SamplingParams};
use crate::gpu::{Gpu, GpuOptions};
use crate::kernels::stream::{dispatch_overhead, stream_bandwidth, Load};
use crate::model::gguf::Gguf;
use crate::model::{GpuModel, Session, SessionOptions};
use crate::tokenizer::chat::ChatTemplate;
use crate::tokenizer::Tokenizer;
use crate::Error;

/// A JavaScript `Error` with `code` set.
fn js_error(code: &str, message: &str) -> JsValue {
    let error = js_sys::Error::new(message);
    // Setting a property on a fresh Error object cannot fail.
    let _ = js_sys::Reflect::set(&error, &"code".into(), &code.into());
    error.into()
}

impl From<Error> for JsValue {
    fn from(e: Error) -> JsValue {
        js_error(e.code(), &e.to_string())
    }
}

fn options_error(what: &str, e: serde_json::Error) -> JsValue {
    js_error("options", &format!("{what}: {e}"))
}

/// The session and its chat are in use by a step that has not finished.
fn busy() -> JsValue {
    js_error(
        "busy",
        "the chat is still working on a step: await it before the next call",
    )
}

/// A model on the browser's GPU with its tokenizer and chat template.
#[wasm_bindgen(js_name = Model)]
pub struct WasmModel {
    model: Arc<GpuModel>,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    /// `general.name` of the GGUF, when it has one.
    name: String,
    weight_type: String,
}

#[wasm_bindgen(js_class = Model)]
impl WasmModel {
    /// Opens the browser's WebGPU adapter and uploads the model in `bytes` (a whole GGUF file).
    // The library shares the device through `Arc` (threads natively); a page has one thread.
    #[allow(clippy::arc_with_non_send_sync)]
    pub async fn load(bytes: Vec<u8>) -> Result<WasmModel, JsValue> {
        let gguf = Gguf::from_bytes(bytes).map_err(Error::from)?;
        let tokenizer = Tokenizer::from_gguf(&gguf).map_err(Error::from)?;
        let template = ChatTemplate::from_gguf(&gguf).map_err(Error::from)?;
        let gpu = Gpu::new(&GpuOptions::default())
            .await
            .map_err(Error::from)?;
        let model = GpuModel::load(Arc::new(gpu), &gguf)?;
        let name = gguf.get_str("general.name").unwrap_or_default().to_string();
        let weight_type = model.layers[0].w_qkv.format.name().to_string();
        Ok(WasmModel {
            model: Arc::new(model),
            tokenizer,
            template,
            name,
            weight_type,
        })
    }

    /// The adapter, its features and the model, as JSON.
    pub fn info(&self) -> String {
        let gpu = self.model.gpu();
        let c = &self.model.config;
        serde_json::json!({
            "adapter": {
                "name": gpu.info.name,
                "backend": format!("{:?}", gpu.info.backend),
                "deviceType": format!("{:?}", gpu.info.device_type),
                "driver": gpu.info.driver,
                "hasShaderF16": gpu.adapter_features.contains(wgpu::Features::SHADER_F16),
                "maxStorageBufferBindingSize": gpu.limits.max_storage_buffer_binding_size,
            },
            "shaderF16": gpu.features.contains(wgpu::Features::SHADER_F16),
            "model": {
                "name": self.name,
                "weights": self.weight_type,
                "layers": c.n_layers,
                "dim": c.dim,
                "heads": c.n_heads,
                "kvHeads": c.n_kv_heads,
                "vocab": c.vocab_size,
                "context": c.context_len,
            },
            "gpuBytes": gpu.allocated_bytes(),
        })
        .to_string()
    }

    /// The yardsticks `sinkstar bench` measures natively, as JSON: the device's streaming read
    /// bandwidth (`streamBytesPerSec`, the `stream` kernel reading one large buffer), the cost
    /// of a dispatch beyond its work (`dispatchOverheadSecs`) and the bytes of weights a decoded
    /// token reads (`weightBytesPerToken`): with a chat's decode rate, how close decoding comes
    /// to what the adapter can stream. Takes a few seconds on a slow adapter.
    pub fn bandwidth(&self) -> js_sys::Promise {
        let model = self.model.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let gpu = model.gpu();
            // One untimed run and the median of 3, as `sinkstar bench --repeat 3`.
            let stream = stream_bandwidth(gpu, 3, Load::Vec4)
                .await
                .map_err(Error::from)?;
            let overhead = dispatch_overhead(gpu, 3).await.map_err(Error::from)?;
            Ok(JsValue::from_str(
                &serde_json::json!({
                    "streamBytesPerSec": stream,
                    "dispatchOverheadSecs": overhead,
                    "weightBytesPerToken": model.weight_bytes_per_token(),
                })
                .to_string(),
            ))
        })
    }

    /// A new conversation; `options` is a [`ChatOptions`] as JSON.
    pub fn chat(&self, options: &str) -> Result<WasmChat, JsValue> {
        let options: ChatOptions =
            serde_json::from_str(options).map_err(|e| options_error("chat options", e))?;
        let c = &self.model.config;
        let policy = match options.attention.policy.as_str() {
            "dense" => AttentionPolicy::Dense {
                capacity: options.attention.context.unwrap_or(c.context_len),
            },
            "window" => AttentionPolicy::Window {
                window: options.attention.window,
            },
            "recompute" => AttentionPolicy::Recompute {
                window: options.attention.window,
            },
            "sink" => {
                let n_sink = if options.attention.keep_system {
                    self.template
                        .system_prefix_tokens(&self.tokenizer, options.system.as_deref())
                        .map_err(Error::from)?
                        .max(options.attention.sinks)
                } else {
                    options.attention.sinks
                };
                AttentionPolicy::Sink {
                    n_sink,
                    window: options.attention.window,
                }
            }
            other => {
                return Err(js_error(
                    "options",
                    &format!(
                        "unknown attention policy `{other}` (expected sink, window, dense or \
                         recompute)"
                    ),
                ))
            }
        };
        let session = Session::new(
            self.model.clone(),
            &SessionOptions {
                policy,
                ..SessionOptions::default()
            },
        )?;
        let chat = Chat::new(
            session,
            self.tokenizer.clone(),
            self.template.clone(),
            options.system,
        );
        Ok(WasmChat {
            chat: Rc::new(RefCell::new(chat)),
        })
    }
}

/// What `Model.chat` takes (the package's `ChatOptions`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ChatOptions {
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    attention: AttentionOptions,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct AttentionOptions {
    policy: String,
    sinks: usize,
    window: usize,
    /// Slots of a dense cache [default: the model's context].
    context: Option<usize>,
    /// Pins the whole system prompt as sinks (sink policy).
    keep_system: bool,
}

impl Default for AttentionOptions {
    fn default() -> Self {
        AttentionOptions {
            policy: "sink".into(),
            sinks: DEFAULT_SINKS,
            window: DEFAULT_WINDOW,
            context: None,
            keep_system: false,
        }
    }
}

/// What `Chat.begin` takes (the package's `ReplyOptions`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct ReplyOptions {
    max_tokens: usize,
    temperature: f32,
    top_k: u32,
    top_p: f32,
    repetition_penalty: f32,
    penalty_last_n: u32,
    seed: u32,
}

impl Default for ReplyOptions {
    fn default() -> Self {
        let generate = GenerateOptions::default();
        let s = generate.sampling;
        ReplyOptions {
            max_tokens: generate.max_tokens,
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            repetition_penalty: s.repetition_penalty,
            penalty_last_n: s.penalty_last_n,
            seed: s.seed,
        }
    }
}

/// One conversation with its own KV cache.
#[wasm_bindgen(js_name = Chat)]
pub struct WasmChat {
    // Shared with the promise of a running step, which outlives the `&self` borrow.
    chat: Rc<RefCell<Chat>>,
}

#[wasm_bindgen(js_class = Chat)]
impl WasmChat {
    /// Adds a user turn and begins the reply (a reply still running ends first); `options` is
    /// a `ReplyOptions` as JSON.
    pub fn begin(&self, text: &str, options: &str) -> Result<(), JsValue> {
        let o: ReplyOptions =
            serde_json::from_str(options).map_err(|e| options_error("reply options", e))?;
        let sampling = SamplingParams {
            temperature: o.temperature,
            top_k: o.top_k,
            top_p: o.top_p,
            repetition_penalty: o.repetition_penalty,
            penalty_last_n: o.penalty_last_n,
            seed: o.seed,
        };
        sampling.validate().map_err(Error::from)?;
        let options = GenerateOptions {
            max_tokens: o.max_tokens,
            sampling,
            stop_at_eos: true,
        };
        let mut chat = self.chat.try_borrow_mut().map_err(|_| busy())?;
        chat.begin(text, &options)?;
        Ok(())
    }

    /// Generates one token of the reply: resolves to its text (empty while a character is
    /// incomplete) or to `undefined` once the reply has ended.
    pub fn next(&self) -> js_sys::Promise {
        let chat = self.chat.clone();
        // The borrow lives through the GPU wait on purpose: it is what makes other calls
        // answer `busy` instead of interleaving with the step.
        #[allow(clippy::await_holding_refcell_ref)]
        wasm_bindgen_futures::future_to_promise(async move {
            let mut chat = chat.try_borrow_mut().map_err(|_| busy())?;
            Ok(match chat.next().await? {
                Some(text) => JsValue::from_str(&text),
                None => JsValue::UNDEFINED,
            })
        })
    }

    /// Ends the running reply after the tokens generated so far; they stay in the
    /// conversation.
    pub fn cancel(&self) -> Result<(), JsValue> {
        let mut chat = self.chat.try_borrow_mut().map_err(|_| busy())?;
        chat.cancel()?;
        Ok(())
    }

    /// Times each part of the last decode step on the GPU, as `sinkstar bench` does natively
    /// ([`crate::model::Session::profile_decode`]): `repeat` runs of each part alone for every
    /// layer, median seconds. Resolves to JSON `[{"part", "secs"}]`. The parts' re-runs
    /// overwrite the cache, so this ends the chat (the object can no longer be used).
    #[wasm_bindgen(js_name = profileDecode)]
    pub fn profile_decode(self, repeat: usize) -> js_sys::Promise {
        wasm_bindgen_futures::future_to_promise(async move {
            // A step's promise holds the other reference until it settles.
            let chat = Rc::try_unwrap(self.chat).map_err(|_| busy())?;
            let session = chat.into_inner().into_session();
            let projects = session.projects_in_attention();
            let profile = session.profile_decode_async(repeat).await?;
            let parts: Vec<_> = profile
                .iter()
                .map(|(part, secs)| {
                    serde_json::json!({"part": part.name_in_step(projects), "secs": secs})
                })
                .collect();
            Ok(JsValue::from_str(
                &serde_json::Value::from(parts).to_string(),
            ))
        })
    }

    /// Forgets the conversation but its system message; the cache stays allocated.
    pub fn reset(&self) -> Result<(), JsValue> {
        let mut chat = self.chat.try_borrow_mut().map_err(|_| busy())?;
        chat.reset();
        Ok(())
    }

    /// The cache and the last reply, as JSON: what the demo's ring picture and speed readout
    /// show.
    pub fn state(&self) -> Result<String, JsValue> {
        let chat = self.chat.try_borrow().map_err(|_| busy())?;
        let session = chat.session();
        let (policy, n_sink, window) = match session.policy() {
            AttentionPolicy::Dense { capacity } => ("dense", capacity, 0),
            AttentionPolicy::Window { window } => ("window", 0, window),
            AttentionPolicy::Recompute { window } => ("recompute", 0, window),
            AttentionPolicy::Sink { n_sink, window } => ("sink", n_sink, window),
        };
        let last = chat.last_generation().map(|g| {
            serde_json::json!({
                "promptTokens": g.prompt_tokens,
                "tokens": g.tokens.len(),
                "tokenIds": g.tokens,
                "stop": g.stop.name(),
                "prefillSecs": g.prefill_secs,
                "decodeSecs": g.decode_secs,
                "decodeTokensPerSec": g.decode_tokens_per_sec(),
            })
        });
        Ok(serde_json::json!({
            "policy": policy,
            "sinks": n_sink,
            "window": window,
            "slots": session.capacity(),
            "filled": session.n_filled(),
            "seen": session.n_seen(),
            "writeSlot": session.next_slot(),
            "replying": chat.replying(),
            "gpuBytes": session.model().gpu().allocated_bytes(),
            "last": last,
        })
        .to_string())
    }
}
