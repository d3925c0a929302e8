//! Every pipeline variant, preprocessed and validated by naga with its override values
//! applied. Needs no GPU.

use std::collections::HashMap;

use naga::valid::{Capabilities, ValidationFlags, Validator};

#[test]
fn every_variant_validates() {
    let variants = sinkstar::kernels::all_variants();
    assert!(!variants.is_empty());
    let mut labels = HashMap::new();
    for spec in variants {
        let spec = spec.expect("preprocessing a variant");
        let module = naga::front::wgsl::parse_str(&spec.source)
            .unwrap_or_else(|e| panic!("{}: {}", spec.label, e.emit_to_string(&spec.source)));
        // No optional capabilities but those the variant declares it needs (the subgroup
        // matvec): what validates here also runs on an adapter without shader-f16 or subgroups
        // (SwiftShader in Chromium).
        let capabilities = if spec.features.contains(wgpu::Features::SUBGROUP) {
            Capabilities::SUBGROUP
        } else {
            Capabilities::empty()
        };
        assert_eq!(
            spec.features - wgpu::Features::SUBGROUP,
            wgpu::Features::empty(),
            "{}: a feature this test does not know",
            spec.label
        );
        let mut validator = Validator::new(ValidationFlags::all(), capabilities);
        let info = validator
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}: {}", spec.label, e.emit_to_string(&spec.source)));
        let constants: naga::back::PipelineConstants = spec.overrides.iter().cloned().collect();
        let entry = Some((naga::ShaderStage::Compute, spec.entry));
        let (module, _) =
            naga::back::pipeline_constants::process_overrides(&module, &info, entry, &constants)
                .unwrap_or_else(|e| panic!("{}: overrides {:?}: {e}", spec.label, spec.overrides));
        Validator::new(ValidationFlags::all(), capabilities)
            .validate(&module)
            .unwrap_or_else(|e| panic!("{} with overrides: {e}", spec.label));
        assert!(
            labels.insert(spec.label.clone(), ()).is_none(),
            "two variants share the label {}",
            spec.label
        );
    }
}
