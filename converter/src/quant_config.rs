//! `config.json`'s `quantization_config`: which BitNet weight layout the checkpoint holds.
//!
//! What transformers does with it (checked in huggingface/transformers, not assumed):
//! - `utils/quantization_config.py`, `BitNetQuantConfig.__init__`: `quant_method` is
//!   `"bitnet"`; `linear_class` is `"bitlinear"` (the default) or `"autobitlinear"`;
//!   `quantization_mode` is `"offline"` (the default) or `"online"`; `use_rms_norm` (default
//!   false) adds an RMSNorm inside every BitLinear, with `rms_norm_eps`.
//! - `integrations/bitnet.py`, `replace_with_bitnet_linear`: `autobitlinear` builds
//!   `AutoBitLinear(online_quant = mode == "online")`; any other class builds `BitLinear`,
//!   whatever the mode.
//! - `BitLinear`: a U8 `weight` [out/4, in] (packed, see `packed.rs`) and `weight_scale`
//!   [1]; `forward` divides the integer products by `input_scale * weight_scale`
//!   (`post_quant_process`).
//! - `AutoBitLinear`, offline: the same packed `weight` (its `load_hook` unpacks it) and
//!   `weight_scale` [1]; `forward` multiplies the output by `weight_scale`. Online: a float
//!   `weight`, ternarized at every call by `WeightQuant` (absmean: the master-weight path).

use anyhow::{bail, Result};
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
    match obj.get("use_rms_norm") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => bail!(
            "{}: true (an RMSNorm inside every BitLinear, before activation quantization) is not supported yet",
            at("use_rms_norm")
        ),
        Some(other) => bail!("{}: {other} is not true or false", at("use_rms_norm")),
    }
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
            (r#"{"quant_method": "bitnet", "use_rms_norm": true}"#, "quantization_config.use_rms_norm: true"),
            (r#"{"quant_method": 3}"#, "quantization_config.quant_method: 3 is not a string"),
            (r#""bitnet""#, "field quantization_config: \"bitnet\" is not an object"),
        ];
        for (json, want) in cases {
            let err = format!("{:#}", layout(json).unwrap_err());
            assert!(err.starts_with("m/config.json: ") && err.contains(want), "{json}: {err}");
        }
    }
}
