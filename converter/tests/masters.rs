//! tern-convert on the issue-30 inputs, from the fixtures `scripts/make_hf_fixtures.py`
//! writes with transformers: bf16 master weights (online `AutoBitLinear`), which weight
//! layout the converter decides on and what it refuses, and BitNetQuantConfig's per-linear
//! norms and biases (stored as SPEC.md §8a says).

#[path = "support/packed_checkpoint.rs"]
mod packed_checkpoint;

use packed_checkpoint::{read_tensors, write_folder, Tensor};
use safetensors::Dtype;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tern_convert::{convert, Options};
use tern_format::{ScaleConvention, TernFile, WeightsSource};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures").join(name)
}

fn convert_to_bytes(dir: &Path) -> Vec<u8> {
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("m.tern");
    let opts = Options { progress: false, ..Options::default() };
    convert(dir, &path, &opts).unwrap();
    std::fs::read(path).unwrap()
}

fn convert_error(dir: &Path) -> String {
    let out = tempfile::tempdir().unwrap();
    let opts = Options { progress: false, ..Options::default() };
    format!("{:#}", convert(dir, &out.path().join("m.tern"), &opts).unwrap_err())
}

fn config_of(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

/// A copy of fixture `name` with its config edited.
fn edited(name: &str, edit: impl FnOnce(&mut Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_of(&fixture(name));
    edit(&mut config);
    write_folder(dir.path(), &fixture(name), &config, &read_tensors(&fixture(name)));
    for f in ["tokenizer_config.json", "generation_config.json"] {
        std::fs::copy(fixture(name).join(f), dir.path().join(f)).unwrap();
    }
    dir
}

/// The f32 values of a BF16 or F32 checkpoint tensor.
fn values(t: &Tensor) -> Vec<f32> {
    match t.dtype {
        Dtype::BF16 => t.data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::F32 => t.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        other => panic!("{}: {other:?}", t.name),
    }
}

fn tensor<'a>(ts: &'a [Tensor], name: &str) -> &'a Tensor {
    ts.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no tensor {name}"))
}

fn stored(file: &TernFile, name: &str) -> Vec<f32> {
    file.tensor(name).unwrap().data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// BitNetForCausalLM with bf16 linears is a master checkpoint, whether its config says
/// `quantization_mode: "online"` (as transformers saves one) or has no quantization_config
/// at all: both give the same file, ternarized by absmean with the multiply convention.
#[test]
fn bf16_masters_convert_with_or_without_an_online_config() {
    let online = convert_to_bytes(&fixture("bitnet-2b-bf16-tiny"));
    let f = TernFile::parse(&online).unwrap();
    let c = f.config();
    assert_eq!((c.weights_source, c.scale_convention), (WeightsSource::Master, ScaleConvention::Multiply));
    assert!(c.attn_sub_norm && c.ffn_sub_norm && c.tied_output && c.linear == Default::default());
    // β = mean|W| of the bf16 masters, accumulated exactly as SPEC.md §5 says.
    let ts = read_tensors(&fixture("bitnet-2b-bf16-tiny"));
    let w = values(tensor(&ts, "model.layers.1.mlp.down_proj.weight"));
    let mean = (w.iter().map(|v| f64::from(v.abs())).sum::<f64>() / w.len() as f64) as f32;
    assert_eq!(f.tensor("blk.1.ffn_down").unwrap().info.scale, mean);

    let bare = edited("bitnet-2b-bf16-tiny", |c| {
        c.as_object_mut().unwrap().remove("quantization_config");
    });
    assert_eq!(convert_to_bytes(bare.path()), online, "no quantization_config: the same masters path");
}

/// The ambiguous combinations are refused by name: float weights under an offline config
/// (transformers would run them unquantized) and packed U8 weights under an online one.
#[test]
fn mismatched_weights_and_modes_are_refused() {
    let cases = [
        (
            "bitnet-2b-bf16-tiny",
            "offline",
            [
                "tensor model.layers.0.self_attn.q_proj.weight is BF16 [160, 160]",
                "Float weights are master weights: their config says linear_class \"autobitlinear\" with quantization_mode \"online\"",
            ],
        ),
        (
            "bitnet-2b-tiny",
            "online",
            [
                "tensor model.layers.0.self_attn.q_proj.weight is U8 (pre-packed ternary)",
                "quantization_mode \"online\" means float master weights",
            ],
        ),
    ];
    for (name, mode, wants) in cases {
        let dir = edited(name, |c| c["quantization_config"]["quantization_mode"] = json!(mode));
        let err = convert_error(dir.path());
        assert!(wants.iter().all(|w| err.contains(w)), "{name} {mode}: {err}");
    }
    // Float weights under the default class, BitLinear, whatever the mode: transformers'
    // BitLinear holds packed U8 weights only (it has no online mode).
    let bitlinear = edited("bitnet-2b-bf16-tiny", |c| {
        c["architectures"] = json!(["LlamaForCausalLM"]);
        c["quantization_config"] = json!({"quant_method": "bitnet", "quantization_mode": "online"});
    });
    assert!(convert_error(bitlinear.path()).contains("Float weights are master weights"));
}

/// Per-linear norms and biases: `use_rms_norm` sets the flag and its eps (the
/// quantization_config's, not the model's), every projection gets `_in_norm` and `_bias`
/// as given; BitLinear's and online AutoBitLinear's bias is stored as is, offline
/// AutoBitLinear's times weight_scale.
#[test]
fn per_linear_norms_and_biases_are_stored() {
    let cases = [
        ("bitnet-rmsnorm-bias-tiny", 1e-5, true, false),
        ("bitnet-2b-rmsnorm-bias-tiny", 1e-6, false, true),
        ("bitnet-online-rmsnorm-bias-tiny", 1e-6, true, false),
    ];
    for (name, eps, mlp_bias, scaled) in cases {
        let bytes = convert_to_bytes(&fixture(name));
        let f = TernFile::parse(&bytes).unwrap();
        let c = f.config();
        assert_eq!((c.linear.norm_eps, c.linear.attn_bias, c.linear.mlp_bias), (Some(eps), true, mlp_bias), "{name}");
        let ts = read_tensors(&fixture(name));
        for (tern, hf) in
            [("blk.1.attn_v", "model.layers.1.self_attn.v_proj"), ("blk.0.ffn_down", "model.layers.0.mlp.down_proj")]
        {
            let norm = values(tensor(&ts, &format!("{hf}.rms_norm.weight")));
            assert_eq!(stored(&f, &format!("{tern}_in_norm")), norm, "{name} {tern}");
            let Some(bias) = ts.iter().find(|t| t.name == format!("{hf}.bias")) else {
                assert!(!mlp_bias && f.tensor(&format!("{tern}_bias")).is_none(), "{name} {tern}");
                continue;
            };
            let scale = if scaled { values(tensor(&ts, &format!("{hf}.weight_scale")))[0] } else { 1.0 };
            let want: Vec<f32> = values(bias).iter().map(|b| b * scale).collect();
            assert_eq!(stored(&f, &format!("{tern}_bias")), want, "{name} {tern}");
        }
    }
}

/// The Falcon-E-shaped checkpoint (LlamaForCausalLM, bitlinear, 16 heads on 2 KV heads)
/// converts as pre-packed with the divide convention, and keeps its chat template and EOS.
#[test]
fn falcon_e_shape_converts() {
    let bytes = convert_to_bytes(&fixture("falcon-e-tiny"));
    let c = TernFile::parse(&bytes).unwrap().config().clone();
    assert_eq!((c.weights_source, c.scale_convention), (WeightsSource::Prepacked, ScaleConvention::Divide));
    assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim, c.hidden_size), (16, 2, 20, 320));
    assert!(!c.attn_sub_norm && !c.ffn_sub_norm && !c.tied_output && c.linear == Default::default());
    assert!(c.chat.chat_template.as_deref().unwrap().contains("<|im_start|>"));
    assert_eq!(c.chat.eos_token.as_deref(), Some("<|end_of_text|>"));
}
