//! Each bad input beyond the GGUF parser (tests/gguf.rs covers those) gives a typed error that
//! names the problem: model files that do not make a Llama, GPU choices that cannot be met,
//! sessions the device cannot hold, and inputs a session cannot take. None may panic.

mod common;

use std::sync::Arc;

use common::{gpu, Tiny};
use sinkstar::attention::{AttentionPolicy, PolicyError};
use sinkstar::generate::SamplingParams;
use sinkstar::gpu::{Gpu, GpuError, GpuOptions};
use sinkstar::kernels::matmul::{Epilogue, Matmul, MatmulKind, Prologue, WeightFormat};
use sinkstar::kernels::sample::SampleError;
use sinkstar::model::gguf::{GgmlType, Gguf, GgufError};
use sinkstar::model::{GpuModel, LlamaConfig, ModelError, Session, SessionOptions};
use sinkstar::Error;

fn load_err(bytes: Vec<u8>) -> Error {
    let gguf = Gguf::from_bytes(bytes).unwrap();
    match GpuModel::load(gpu(), &gguf) {
        Ok(_) => panic!("the model loaded"),
        Err(e) => e,
    }
}

#[test]
fn missing_model_file() {
    let err = Gguf::open("/nonexistent/model.gguf".as_ref()).unwrap_err();
    assert!(matches!(err, GgufError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/model.gguf"), "{err}");
}

#[test]
fn tensor_shape_not_matching_the_config() {
    let tiny = Tiny::default();
    let bytes = tiny.gguf_with(|tensors| {
        let k = tensors
            .iter_mut()
            .find(|t| t.0 == "blk.1.attn_k.weight")
            .unwrap();
        k.1 = vec![64, 64]; // the config says [dim, n_kv_heads * head_dim] = [64, 32]
    });
    let err = load_err(bytes);
    assert!(
        matches!(&err, Error::Model(ModelError::ShapeMismatch { name, expected, found })
            if name == "blk.1.attn_k.weight" && expected == &[64, 32] && found == &[64, 64]),
        "{err}"
    );
    assert!(err.to_string().contains("blk.1.attn_k.weight"), "{err}");
}

#[test]
fn missing_tensor() {
    let bytes =
        Tiny::default().gguf_with(|tensors| tensors.retain(|t| t.0 != "blk.0.ffn_up.weight"));
    let err = load_err(bytes);
    assert!(
        matches!(&err, Error::Model(ModelError::MissingTensor { name }) if name == "blk.0.ffn_up.weight"),
        "{err}"
    );
}

#[test]
fn quantized_norm_weight() {
    let bytes = Tiny::default().gguf_with(|tensors| {
        let norm = tensors
            .iter_mut()
            .find(|t| t.0 == "output_norm.weight")
            .unwrap();
        norm.2 = GgmlType::Q8_0;
    });
    let err = load_err(bytes);
    assert!(
        matches!(&err, Error::Model(ModelError::UnsupportedNormType { name, .. }) if name == "output_norm.weight"),
        "{err}"
    );
}

#[test]
fn unsupported_architecture_and_bad_config() {
    let mut w = sinkstar::model::gguf::GgufWriter::new(3);
    w.meta("general.architecture", "mamba");
    let err = LlamaConfig::from_gguf(&Gguf::from_bytes(w.to_bytes()).unwrap()).unwrap_err();
    assert!(
        matches!(&err, ModelError::UnsupportedArchitecture { arch } if arch == "mamba"),
        "{err}"
    );

    let mut w = sinkstar::model::gguf::GgufWriter::new(3);
    w.meta("general.architecture", "llama")
        .meta("llama.embedding_length", 64u32)
        .meta("llama.attention.head_count", 6u32)
        .meta("llama.attention.head_count_kv", 4u32)
        .meta("llama.vocab_size", 300u32);
    let err = LlamaConfig::from_gguf(&Gguf::from_bytes(w.to_bytes()).unwrap()).unwrap_err();
    assert!(matches!(&err, ModelError::InvalidConfig { .. }), "{err}");
    assert!(err.to_string().contains("6 query heads"), "{err}");
}

#[test]
fn no_adapter_for_the_backend() {
    // This build has no adapter for Metal on Linux (nor Vulkan on macOS): none is found.
    let backend = if cfg!(target_os = "macos") {
        "vulkan"
    } else {
        "metal"
    };
    let options = GpuOptions {
        backend: Some(backend.into()),
        ..GpuOptions::default()
    };
    let err = match Gpu::new_blocking(&options) {
        Ok(gpu) => panic!("found an adapter: {}", gpu.info.name),
        Err(e) => e,
    };
    assert!(matches!(err, GpuError::NoAdapter { .. }), "{err}");
    assert!(err.to_string().contains("no GPU adapter"), "{err}");
}

#[test]
fn a_kernel_needing_a_feature_the_device_lacks_is_refused() {
    // Opened without subgroups (the vec form), the device cannot build the subgroup form.
    let gpu = Gpu::new_blocking(&GpuOptions {
        subgroup_matvec: Some(false),
        ..GpuOptions::default()
    })
    .unwrap();
    assert_eq!(MatmulKind::decode(&gpu), MatmulKind::Vec);
    let err = Matmul::new(
        &gpu,
        WeightFormat::Q4_1,
        MatmulKind::Subgroup,
        Prologue::Raw,
        Epilogue::Store,
    )
    .err()
    .expect("the subgroup form needs subgroups");
    assert!(
        matches!(&err, GpuError::MissingFeature { kernel, .. } if kernel == "matmul_q4_1_subgroup"),
        "{err}"
    );
    assert!(err.to_string().contains("SUBGROUP"), "{err}");
}

#[test]
fn adapter_index_and_backend_name() {
    let err = Gpu::new_blocking(&GpuOptions {
        adapter: Some(99),
        ..GpuOptions::default()
    })
    .err()
    .expect("adapter 99 exists");
    assert!(
        matches!(err, GpuError::AdapterIndex { index: 99, .. }),
        "{err}"
    );
    let err = Gpu::new_blocking(&GpuOptions {
        backend: Some("glide".into()),
        ..GpuOptions::default()
    })
    .err()
    .expect("backend glide exists");
    assert!(
        matches!(&err, GpuError::UnknownBackend { name } if name == "glide"),
        "{err}"
    );
}

fn tiny_model() -> Arc<GpuModel> {
    tiny_model_on(gpu())
}

fn tiny_model_on(gpu: Arc<Gpu>) -> Arc<GpuModel> {
    // A trained context far beyond any device limit, so that the limit is what refuses.
    let tiny = Tiny {
        context_len: u32::MAX as usize,
        ..Tiny::default()
    };
    let gguf = Gguf::from_bytes(tiny.gguf()).unwrap();
    Arc::new(GpuModel::load(gpu, &gguf).unwrap())
}

fn session_with(model: &Arc<GpuModel>, policy: AttentionPolicy) -> Result<Session, Error> {
    Session::new(
        model.clone(),
        &SessionOptions {
            policy,
            max_chunk: 4,
            positions: None,
        },
    )
}

fn session(model: &Arc<GpuModel>, capacity: usize) -> Result<Session, Error> {
    session_with(model, AttentionPolicy::Dense { capacity })
}

#[test]
fn kv_cache_over_the_device_limit() {
    let model = tiny_model();
    let limit = gpu().limits.max_storage_buffer_binding_size;
    // kv_dim is 32 floats = 128 bytes a slot: one slot past the largest binding.
    let capacity = (limit / 128 + 1) as usize;
    let err = session(&model, capacity)
        .err()
        .expect("a session over the limit");
    assert!(
        matches!(&err, Error::Gpu(GpuError::BufferTooLarge { what, limit_name, .. })
            if what == "k_cache" && *limit_name == "max_storage_buffer_binding_size"),
        "{err}"
    );
}

#[test]
fn prompt_too_long_for_the_dense_cache() {
    let model = tiny_model();
    let mut s = session(&model, 8).unwrap();
    let err = s.feed(&[5; 9]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Policy(PolicyError::ContextFull {
                seen: 0,
                new: 9,
                capacity: 8,
                policy: "dense"
            })
        ),
        "{err}"
    );
    // Nothing was fed: the cache still takes 8 tokens, then refuses the 9th.
    s.feed(&[5; 6]).unwrap();
    let token = s
        .feed_and_sample(&[7, 8], &SamplingParams::greedy())
        .unwrap();
    assert!((token as usize) < 300);
    let err = s.decode(&SamplingParams::greedy()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Policy(PolicyError::ContextFull {
                seen: 8,
                new: 1,
                ..
            })
        ),
        "{err}"
    );
}

#[test]
fn bad_session_inputs() {
    let model = tiny_model();
    let mut s = session(&model, 16).unwrap();
    let err = s.decode(&SamplingParams::greedy()).unwrap_err();
    assert!(
        matches!(err, Error::Model(ModelError::NothingToDecode)),
        "{err}"
    );
    let err = s.feed(&[]).unwrap_err();
    assert!(matches!(err, Error::Model(ModelError::EmptyInput)), "{err}");
    let err = s.feed(&[1, 300]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Model(ModelError::TokenOutOfRange {
                token: 300,
                vocab_size: 300
            })
        ),
        "{err}"
    );
    let bad = SamplingParams {
        top_p: 1.5,
        ..SamplingParams::default()
    };
    let err = s.feed_and_sample(&[1], &bad).unwrap_err();
    assert!(
        matches!(err, Error::Sample(SampleError::TopP { .. })),
        "{err}"
    );
    assert_eq!(s.n_seen(), 0, "a refused step feeds nothing");
}

#[test]
fn bad_policies_fail_before_any_allocation() {
    // A device of its own: the other tests of this binary allocate on the shared one
    // concurrently, which would move its counter.
    let gpu = Arc::new(Gpu::new_blocking(&GpuOptions::default()).unwrap());
    let model = tiny_model_on(gpu.clone());
    for (policy, name) in [
        (AttentionPolicy::Dense { capacity: 0 }, "dense"),
        (AttentionPolicy::Window { window: 0 }, "window"),
        (AttentionPolicy::Recompute { window: 0 }, "recompute"),
    ] {
        let before = gpu.allocated_bytes();
        let err = session_with(&model, policy)
            .err()
            .expect("a zero-slot session");
        assert!(
            matches!(err, Error::Policy(PolicyError::ZeroCapacity { policy }) if policy == name),
            "{err}"
        );
        assert_eq!(gpu.allocated_bytes(), before, "{name}: nothing allocated");
    }
    // Sinks that fill the whole span: no room for a window.
    let err = session_with(
        &model,
        AttentionPolicy::Sink {
            n_sink: 8,
            window: 0,
        },
    )
    .err()
    .expect("sinks only");
    assert!(
        matches!(
            err,
            Error::Policy(PolicyError::NoWindow {
                n_sink: 8,
                capacity: 8
            })
        ),
        "{err}"
    );
    // A ring over the device limit.
    let limit = gpu.limits.max_storage_buffer_binding_size;
    let window = (limit / 128) as usize;
    let err = session_with(&model, AttentionPolicy::Sink { n_sink: 4, window })
        .err()
        .expect("a ring over the limit");
    assert!(
        matches!(&err, Error::Gpu(GpuError::BufferTooLarge { .. })),
        "{err}"
    );
}

#[test]
fn window_beyond_the_trained_context() {
    // The default tiny model was trained on 512 tokens.
    let gguf = Gguf::from_bytes(Tiny::default().gguf()).unwrap();
    let model = Arc::new(GpuModel::load(gpu(), &gguf).unwrap());
    for policy in [
        AttentionPolicy::Sink {
            n_sink: 4,
            window: 509,
        },
        AttentionPolicy::Window { window: 513 },
        AttentionPolicy::Dense { capacity: 513 },
    ] {
        let err = session_with(&model, policy)
            .err()
            .expect("a span past the context");
        assert!(
            matches!(
                err,
                Error::Policy(PolicyError::BeyondContext {
                    span: 513,
                    context_len: 512,
                    ..
                })
            ),
            "{err}"
        );
        assert!(err.to_string().contains("trained on 512"), "{err}");
    }
}
