//! tern-convert on pre-packed checkpoints (the published Hugging Face BitNet layouts), built
//! here from a master-weight fixture with known ternary matrices, and on broken copies.

#[path = "support/packed_checkpoint.rs"]
mod packed_checkpoint;

use packed_checkpoint::{packed_config, packed_tensors, without_sub_norms, write_folder, Family, Tensor};
use safetensors::Dtype;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tern_convert::{convert, temp_files, Options};
use tern_format::{Encoding, ScaleConvention, TernFile, WeightsSource};

const SRC: &str = "tiny-odd-gqa-bf16";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures").join(name)
}

fn quiet() -> Options {
    Options { embed: Encoding::F32, progress: false, pause_per_tensor: None }
}

fn convert_to_bytes(dir: &Path) -> Vec<u8> {
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("m.tern");
    convert(dir, &path, &quiet()).unwrap();
    std::fs::read(path).unwrap()
}

/// The master fixture converted: the ternary matrices and scales every packed copy holds.
fn master() -> Vec<u8> {
    convert_to_bytes(&fixture(SRC))
}

/// A packed checkpoint folder of `family`, after `edit` of its config and tensors.
fn packed_folder(
    family: Family,
    scale_dtype: Dtype,
    edit: impl FnOnce(&mut Value, &mut Vec<Tensor>),
) -> tempfile::TempDir {
    let m = master();
    let tern = TernFile::parse(&m).unwrap();
    let mut config = packed_config(&fixture(SRC), family);
    let mut tensors = packed_tensors(&fixture(SRC), &tern, family, scale_dtype);
    edit(&mut config, &mut tensors);
    let dir = tempfile::tempdir().unwrap();
    write_folder(dir.path(), &fixture(SRC), &config, &tensors);
    dir
}

/// Converting `dir` fails with a message containing `needle`, leaving no output and no temp file.
fn assert_fails(dir: &Path, needle: &str) {
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("out.tern");
    let err = format!("{:#}", convert(dir, &out, &quiet()).unwrap_err());
    assert!(err.contains(needle), "error {err:?} does not mention {needle:?}");
    assert!(!out.exists() && temp_files(&out).is_empty(), "output left behind");
}

fn tensor<'t>(tensors: &'t mut [Tensor], name: &str) -> &'t mut Tensor {
    tensors.iter_mut().find(|t| t.name == name).unwrap_or_else(|| panic!("no tensor {name}"))
}

const Q: &str = "model.layers.1.self_attn.q_proj.weight";
const Q_SCALE: &str = "model.layers.1.self_attn.q_proj.weight_scale";

/// Both layouts convert to exactly the master file's ternary matrices, each with its
/// checkpoint `weight_scale` as given, the family's scale convention and sub-norm flags.
#[test]
fn packed_layouts_keep_every_weight_and_scale() {
    let m = master();
    let want = TernFile::parse(&m).unwrap();
    for (family, convention, sub_norms) in
        [(Family::BitNet2B, ScaleConvention::Multiply, true), (Family::LlamaBitLinear, ScaleConvention::Divide, false)]
    {
        for scale_dtype in [Dtype::F32, Dtype::BF16] {
            let dir = packed_folder(family, scale_dtype, |_, _| {});
            let bytes = convert_to_bytes(dir.path());
            let got = TernFile::parse(&bytes).unwrap();
            got.verify().unwrap();
            let c = got.config();
            let what = format!("{family:?} with {scale_dtype:?} scales");
            assert_eq!((c.weights_source, c.scale_convention), (WeightsSource::Prepacked, convention), "{what}");
            assert_eq!((c.attn_sub_norm, c.ffn_sub_norm), (sub_norms, sub_norms), "{what}");
            let mut ternary = 0;
            for w in want.tensors() {
                let Some(g) = got.tensors().iter().find(|g| g.name == w.name) else {
                    assert!(!sub_norms && w.name.contains("sub_norm"), "{what}: {} missing", w.name);
                    continue;
                };
                assert_eq!(got.data(g), want.data(w), "{what}: {} bytes", w.name);
                if w.encoding == Encoding::T2 {
                    ternary += 1;
                    // The scale written into the checkpoint, bit for bit: never recomputed.
                    let given = if convention == ScaleConvention::Multiply { w.scale } else { 1.0 / w.scale };
                    let given = if scale_dtype == Dtype::BF16 { half::bf16::from_f32(given).to_f32() } else { given };
                    assert_eq!(g.scale.to_bits(), given.to_bits(), "{what}: {} scale", w.name);
                }
            }
            assert_eq!(ternary, 14, "{what}");
            assert_eq!(got.tensors().len(), if sub_norms { 24 } else { 20 }, "{what}");
        }
    }
}

#[test]
fn master_weights_without_sub_norms_clear_the_flags() {
    let dir = tempfile::tempdir().unwrap();
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(SRC).join("config.json")).unwrap()).unwrap();
    write_folder(dir.path(), &fixture(SRC), &config, &without_sub_norms(&fixture(SRC)));
    let bytes = convert_to_bytes(dir.path());
    let c = TernFile::parse(&bytes).unwrap().config().clone();
    assert_eq!((c.attn_sub_norm, c.ffn_sub_norm, c.weights_source), (false, false, WeightsSource::Master));
    // A sub-norm in layer 0 but not in layer 1 is a missing tensor, named.
    let mut tensors = packed_checkpoint::read_tensors(&fixture(SRC));
    tensors.retain(|t| t.name != "model.layers.1.mlp.ffn_layernorm.weight");
    write_folder(dir.path(), &fixture(SRC), &config, &tensors);
    assert_fails(
        dir.path(),
        "missing tensor model.layers.1.mlp.ffn_layernorm.weight or model.layers.1.mlp.ffn_sub_norm.weight",
    );
}

#[test]
fn unknown_quantization_fields_are_refused_by_name() {
    let cases: [(&str, Value, &str); 5] = [
        ("quant_method", json!("gptq"), "quantization_config.quant_method: \"gptq\" is not supported"),
        ("linear_class", json!("bitlinear2"), "quantization_config.linear_class: unknown class \"bitlinear2\""),
        ("quantization_mode", json!("dynamic"), "quantization_config.quantization_mode: unknown mode \"dynamic\""),
        ("use_rms_norm", json!("yes"), "quantization_config.use_rms_norm: \"yes\" is not true or false"),
        // Per-linear norms need their weights.
        (
            "use_rms_norm",
            json!(true),
            "missing tensor model.layers.0.self_attn.q_proj.rms_norm.weight (for blk.0.attn_q_in_norm)",
        ),
    ];
    for (field, value, want) in cases {
        let dir = packed_folder(Family::BitNet2B, Dtype::F32, |c, _| {
            c["quantization_config"][field] = value;
        });
        assert_fails(dir.path(), want);
    }
}

#[test]
fn bad_weight_scales_are_named() {
    for (value, want) in [
        (0.0f32, "is 0; a weight scale must be positive"),
        (-0.5, "is -0.5; a weight scale must be positive"),
        (f32::NAN, "non-finite value"),
        (f32::INFINITY, "non-finite value"),
    ] {
        let dir = packed_folder(Family::LlamaBitLinear, Dtype::F32, |_, t| {
            tensor(t, Q_SCALE).data = value.to_le_bytes().to_vec();
        });
        assert_fails(dir.path(), &format!("tensor {Q_SCALE} "));
        assert_fails(dir.path(), want);
    }
    let dir = packed_folder(Family::BitNet2B, Dtype::F32, |_, t| {
        let s = tensor(t, Q_SCALE);
        (s.shape, s.data) = (vec![2], [1.0f32, 1.0].iter().flat_map(|v| v.to_le_bytes()).collect());
    });
    assert_fails(dir.path(), &format!("tensor {Q_SCALE} has shape [2], expected [1]"));
    let dir = packed_folder(Family::BitNet2B, Dtype::F32, |_, t| t.retain(|t| t.name != Q_SCALE));
    assert_fails(dir.path(), &format!("missing tensor {Q_SCALE}"));
}

#[test]
fn packed_tensors_must_match_the_config() {
    // [96, 96] is packed as U8 [24, 96]: a [48, 48] tensor of the same size is refused by name.
    let dir = packed_folder(Family::BitNet2B, Dtype::F32, |_, t| tensor(t, Q).shape = vec![48, 48]);
    assert_fails(
        dir.path(),
        &format!(
            "tensor {Q} is U8 [48, 48]; config.json's quantization_config (pre-packed) and sizes expect U8 [24, 96]"
        ),
    );
    // An unpacked float matrix where the config says packed.
    let dir = packed_folder(Family::BitNet2B, Dtype::F32, |_, t| {
        let q = tensor(t, Q);
        (q.dtype, q.shape, q.data) = (Dtype::F32, vec![96, 96], vec![0; 96 * 96 * 4]);
    });
    assert_fails(dir.path(), &format!("tensor {Q} is F32 [96, 96]"));
    // Packed tensors without a quantization_config saying how they are packed and scaled.
    let dir = packed_folder(Family::BitNet2B, Dtype::F32, |c, _| {
        c.as_object_mut().unwrap().remove("quantization_config");
    });
    assert_fails(dir.path(), "is U8 (pre-packed ternary) but config.json has no quantization_config");
    // A code 3 (it would unpack to weight 2) names its row and column: byte [5, 7], bit pair 2
    // holds row 2·24 + 5 = 53.
    let dir = packed_folder(Family::LlamaBitLinear, Dtype::F32, |_, t| tensor(t, Q).data[5 * 96 + 7] |= 0b11 << 4);
    assert_fails(dir.path(), &format!("tensor {Q}: code 3 (not a ternary weight) at row 53 column 7"));
}

#[test]
fn llama_architecture_needs_a_bitnet_quantization_config() {
    let dir = packed_folder(Family::LlamaBitLinear, Dtype::F32, |c, _| {
        c.as_object_mut().unwrap().remove("quantization_config");
    });
    assert_fails(
        dir.path(),
        "field quantization_config: LlamaForCausalLM without a quantization_config is a full-precision Llama",
    );
    let dir = packed_folder(Family::LlamaBitLinear, Dtype::F32, |c, _| c["attention_bias"] = json!(true));
    assert_fails(dir.path(), "missing tensor model.layers.0.self_attn.q_proj.bias (for blk.0.attn_q_bias)");
    let dir = packed_folder(Family::LlamaBitLinear, Dtype::F32, |c, _| {
        c["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0});
    });
    assert_fails(dir.path(), "field rope_scaling: RoPE scaling of type \"llama3\" is not supported yet");
    let dir = packed_folder(Family::LlamaBitLinear, Dtype::F32, |c, _| {
        c["rope_parameters"] = json!({"rope_type": "yarn", "rope_theta": 5e5, "factor": 4.0});
    });
    assert_fails(dir.path(), "field rope_parameters: RoPE scaling of type \"yarn\" is not supported yet");
    let dir = packed_folder(Family::LlamaBitLinear, Dtype::F32, |c, _| c["rope_scaling"] = Value::Null);
    convert_to_bytes(dir.path());
    // transformers 5 writes RoPE's base inside rope_parameters.
    let dir = packed_folder(Family::LlamaBitLinear, Dtype::F32, |c, _| {
        c.as_object_mut().unwrap().remove("rope_theta");
        c["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 1000042.0});
        c["rope_scaling"] = json!({"rope_type": "default"});
    });
    assert_eq!(TernFile::parse(&convert_to_bytes(dir.path())).unwrap().config().rope_theta, 1000042.0);
}

/// generation_config.json's EOS list and tokenizer_config.json's chat template and special
/// tokens reach the file; generation_config's list overrides config.json's id, and its BOS
/// id stands in for a missing one (Falcon3 names it only there).
#[test]
fn eos_list_and_chat_template_are_stored() {
    let dir = packed_folder(Family::BitNet2B, Dtype::F32, |c, _| {
        c["eos_token_id"] = json!([2, 7]);
        c.as_object_mut().unwrap().remove("bos_token_id");
    });
    let c = TernFile::parse(&convert_to_bytes(dir.path())).unwrap().config().clone();
    assert_eq!((c.bos_id, c.eos_ids().collect::<Vec<_>>()), (None, vec![2, 7]));
    let template =
        "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}{% endfor %}";
    let tc = json!({"bos_token": "<s>", "eos_token": {"content": "</s>", "special": true}, "chat_template": template});
    std::fs::write(dir.path().join("tokenizer_config.json"), tc.to_string()).unwrap();
    let generation = r#"{"bos_token_id": 1, "eos_token_id": [2, 9, 2, 11], "top_p": 0.5}"#;
    std::fs::write(dir.path().join("generation_config.json"), generation).unwrap();
    let bytes = convert_to_bytes(dir.path());
    let c = TernFile::parse(&bytes).unwrap().config().clone();
    assert_eq!((c.bos_id, c.eos_ids().collect::<Vec<_>>(), c.generation.top_p), (Some(1), vec![2, 9, 11], 0.5));
    assert_eq!(c.chat.chat_template.as_deref(), Some(template));
    assert_eq!((c.chat.bos_token.as_deref(), c.chat.eos_token.as_deref()), (Some("<s>"), Some("</s>")));

    let ids: Vec<u32> = (1..=9).collect();
    std::fs::write(dir.path().join("generation_config.json"), json!({"eos_token_id": ids}).to_string()).unwrap();
    assert_fails(
        dir.path(),
        "generation_config.json: field eos_token_id: 9 end-of-sequence ids (a .tern file holds at most 8)",
    );
    std::fs::write(dir.path().join("generation_config.json"), r#"{"eos_token_id": [2, 512]}"#).unwrap();
    assert_fails(dir.path(), "generation_config.json: field eos_token_id: 512 is not a token id below vocab_size 512");
    // The sampling defaults have one range check, whose message names the file and field.
    std::fs::write(dir.path().join("generation_config.json"), r#"{"top_p": 0}"#).unwrap();
    assert_fails(
        dir.path(),
        "generation_config.json: sampling defaults out of range: config field gen_top_p: 0 is outside (0, 1]",
    );
    std::fs::write(dir.path().join("generation_config.json"), "{}").unwrap();
    std::fs::write(dir.path().join("tokenizer_config.json"), r#"{"chat_template": 5}"#).unwrap();
    assert_fails(dir.path(), "tokenizer_config.json: field chat_template: a number is neither a string nor a list");
}
