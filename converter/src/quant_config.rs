//! `config.json`'s `quantization_config`: which BitNet weight layout the checkpoint holds.
//!
//! What transformers does with it (checked in huggingface/transformers, not assumed):
//! - `utils/quantization_config.py`, `BitNetQuantConfig.__init__`: `quant_method` is
//!   `"bitnet"`; `linear_class` is `"bitlinear"` (the default) or `"autobitlinear"`;
//!   `quantization_mode` is `"offline"` (the default) or `"online"`; `use_rms_norm` (default
//!   false) adds an RMSNorm inside every BitLinear, with `rms_norm_eps` (default 1e-6).
//! - `integrations/bitnet.py`, `replace_with_bitnet_linear`: `autobitlinear` builds
//!   `AutoBitLinear(online_quant = mode == "online")`; any other class builds `BitLinear`,
//!   whatever the mode.
//! - `BitLinear`: a U8 `weight` [out/4, in] (packed, see `packed.rs`) and `weight_scale`
//!   [1]; `forward` divides the integer products by `input_scale * weight_scale`
//!   (`post_quant_process`).
//! - `AutoBitLinear`, offline: the same packed `weight` (`BitNetDeserialize` unpacks it) and
//!   `weight_scale` [1]; `forward` multiplies the output by `weight_scale`. Online: a float
//!   `weight`, ternarized at every call by `WeightQuant.forward` (in float32 whatever the
//!   weight's dtype: `scale = 1 / mean|W|.clamp(min=1e-5)`, `round(W·scale).clamp(-1, 1) /
//!   scale`), no `weight_scale`: the master-weight path, the same absmean arithmetic as
//!   tern-convert's own (SPEC.md §5).
//! - Bias (checked in the same file; `attention_bias` / `mlp_bias` make the model's
//!   `nn.Linear` carry one, and `replace_with_bitnet_linear` keeps `bias=module.bias is not
//!   None`): `BitLinear.forward` adds it after `post_quant_process` (after the scale);
//!   `AutoBitLinear.forward` passes it to `F.linear` and multiplies the result by
//!   `weight_scale` when offline (the bias is scaled too), and adds it after the ternary
//!   product when online (no scale there). BitNetForCausalLM's MLP has no bias whatever
//!   `mlp_bias` says (`models/bitnet/modeling_bitnet.py`, `BitNetMLP`: `bias=False`).
//! - `use_rms_norm`: see [`linear_norm_eps`].

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;
use tern_format::{ScaleConvention, WeightsSource};

/// How the checkpoint stores its BitLinear weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// Full-precision weights, ternarized by tern-convert with the absmean scale
    /// (1bitLLM's checkpoints; `AutoBitLinear` in online mode).
    Master,
    /// Pre-packed: each projection is a U8 `weight` [out/4, in] and a `weight_scale`,
    /// used as given with this convention.
    Packed(ScaleConvention),
}

impl WeightLayout {
    pub fn source(self) -> WeightsSource {
        match self {
            WeightLayout::Master => WeightsSource::Master,
            WeightLayout::Packed(_) => WeightsSource::Prepacked,
        }
    }

    pub fn scale_convention(self) -> ScaleConvention {
        match self {
            WeightLayout::Master => ScaleConvention::Multiply,
            WeightLayout::Packed(c) => c,
        }
    }
}

/// The layout `quantization_config` (the value of that field, if any) describes; every
/// refusal names the field. `path` names `config.json` in errors.
pub fn weight_layout(q: Option<&Value>, path: &Path) -> Result<WeightLayout> {
    let Some(q) = q.filter(|q| !q.is_null()) else { return Ok(WeightLayout::Master) };
    let at = |field: &str| format!("{}: field quantization_config.{field}", path.display());
    let Some(obj) = q.as_object() else {
        bail!("{}: field quantization_config: {q} is not an object", path.display());
    };
    let string = |field: &str, default: Option<&'static str>| -> Result<String> {
        match (obj.get(field), default) {
            (Some(Value::String(s)), _) => Ok(s.clone()),
            (None | Some(Value::Null), Some(d)) => Ok(d.to_string()),
            (None | Some(Value::Null), None) => bail!("{}: missing (expected \"bitnet\")", at(field)),
            (Some(other), _) => bail!("{}: {other} is not a string", at(field)),
        }
    };
    let method = string("quant_method", None)?;
    if method != "bitnet" {
        bail!(
            "{}: {method:?} is not supported; tern-convert reads BitNet b1.58 checkpoints (quant_method \"bitnet\")",
            at("quant_method")
        );
    }
    let class = string("linear_class", Some("bitlinear"))?;
    let mode = string("quantization_mode", Some("offline"))?;
    linear_norm_eps(Some(q), path)?; // checks use_rms_norm and rms_norm_eps
    if !matches!(mode.as_str(), "offline" | "online") {
        bail!("{}: unknown mode {mode:?} (expected \"offline\" or \"online\")", at("quantization_mode"));
    }
    Ok(match class.as_str() {
        "bitlinear" => WeightLayout::Packed(ScaleConvention::Divide),
        "autobitlinear" if mode == "offline" => WeightLayout::Packed(ScaleConvention::Multiply),
        "autobitlinear" => WeightLayout::Master,
        other => bail!("{}: unknown class {other:?} (expected \"bitlinear\" or \"autobitlinear\")", at("linear_class")),
    })
}

/// The epsilon of the RMSNorm inside every BitLinear when `quantization_config.use_rms_norm`
/// is true, else `None`. transformers (`integrations/bitnet.py`, `BitLinear.__init__` and
/// `AutoBitLinear.__init__`) builds `LlamaRMSNorm(in_features, eps=rms_norm_eps)` and
/// applies it to the input at the top of `forward`, before the activation quantization,
/// in both classes and both modes; `BitNetQuantConfig.__init__` defaults `rms_norm_eps` to
/// 1e-6 (`utils/quantization_config.py`). Its weight is `<linear>.rms_norm.weight`.
pub fn linear_norm_eps(q: Option<&Value>, path: &Path) -> Result<Option<f32>> {
    let Some(obj) = q.and_then(Value::as_object) else { return Ok(None) };
    let at = |field: &str| format!("{}: field quantization_config.{field}", path.display());
    match obj.get("use_rms_norm") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => return Ok(None),
        Some(Value::Bool(true)) => {}
        Some(other) => bail!("{}: {other} is not true or false", at("use_rms_norm")),
    }
    let eps = match obj.get("rms_norm_eps") {
        None => 1e-6,
        Some(v) => v.as_f64().with_context(|| {
            format!("{}: {v} is not a number (use_rms_norm is true, so the norms need one)", at("rms_norm_eps"))
        })?,
    };
    let eps32 = eps as f32;
    if !(eps32.is_finite() && eps32 > 0.0) {
        bail!("{}: {eps} is not a positive number", at("rms_norm_eps"));
    }
    Ok(Some(eps32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(json: &str) -> Result<WeightLayout> {
        let v: Value = serde_json::from_str(json).unwrap();
        weight_layout(Some(&v), Path::new("m/config.json"))
    }

    #[test]
    fn the_published_layouts() {
        // microsoft/bitnet-b1.58-2B-4T
        let two_b = r#"{"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"}"#;
        assert_eq!(layout(two_b).unwrap(), WeightLayout::Packed(ScaleConvention::Multiply));
        // Falcon3-*-1.58bit, Llama3-8B-1.58: the class defaults to bitlinear.
        assert_eq!(layout(r#"{"quant_method": "bitnet"}"#).unwrap(), WeightLayout::Packed(ScaleConvention::Divide));
        // Float weights quantized at every call: the master-weight path.
        let online = r#"{"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}"#;
        assert_eq!(layout(online).unwrap(), WeightLayout::Master);
        assert_eq!(weight_layout(None, Path::new("c")).unwrap(), WeightLayout::Master);
        assert_eq!(layout("null").unwrap(), WeightLayout::Master);
        let rms = r#"{"quant_method": "bitnet", "use_rms_norm": false, "rms_norm_eps": 1e-6}"#;
        assert_eq!(layout(rms).unwrap(), WeightLayout::Packed(ScaleConvention::Divide));
    }

    #[test]
    fn linear_norm_epsilon() {
        let eps = |json: &str| {
            let v: Value = serde_json::from_str(json).unwrap();
            linear_norm_eps(Some(&v), Path::new("c")).unwrap()
        };
        assert_eq!(eps(r#"{"quant_method": "bitnet"}"#), None);
        assert_eq!(eps(r#"{"quant_method": "bitnet", "use_rms_norm": false, "rms_norm_eps": 0.1}"#), None);
        // BitNetQuantConfig's default.
        assert_eq!(eps(r#"{"quant_method": "bitnet", "use_rms_norm": true}"#), Some(1e-6));
        assert_eq!(eps(r#"{"quant_method": "bitnet", "use_rms_norm": true, "rms_norm_eps": 1e-5}"#), Some(1e-5));
        assert_eq!(linear_norm_eps(None, Path::new("c")).unwrap(), None);
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            (r#"{"quant_method": "gptq"}"#, "field quantization_config.quant_method: \"gptq\" is not supported"),
            (r#"{"bits": 4}"#, "field quantization_config.quant_method: missing"),
            (
                r#"{"quant_method": "bitnet", "linear_class": "bitlinear2"}"#,
                "quantization_config.linear_class: unknown class \"bitlinear2\"",
            ),
            (
                r#"{"quant_method": "bitnet", "quantization_mode": "lazy"}"#,
                "quantization_config.quantization_mode: unknown mode \"lazy\"",
            ),
            (
                r#"{"quant_method": "bitnet", "use_rms_norm": 1}"#,
                "quantization_config.use_rms_norm: 1 is not true or false",
            ),
            (
                r#"{"quant_method": "bitnet", "use_rms_norm": true, "rms_norm_eps": null}"#,
                "quantization_config.rms_norm_eps: null is not a number",
            ),
            (
                r#"{"quant_method": "bitnet", "use_rms_norm": true, "rms_norm_eps": -1}"#,
                "quantization_config.rms_norm_eps: -1 is not a positive number",
            ),
            (r#"{"quant_method": 3}"#, "quantization_config.quant_method: 3 is not a string"),
            (r#""bitnet""#, "field quantization_config: \"bitnet\" is not an object"),
        ];
        for (json, want) in cases {
            let err = format!("{:#}", layout(json).unwrap_err());
            assert!(err.starts_with("m/config.json: ") && err.contains(want), "{json}: {err}");
        }
    }
}
