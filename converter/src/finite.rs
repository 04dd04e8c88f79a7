//! Values stored in floating point must be finite: one NaN or infinity in a norm, the
//! embedding, the output matrix or a scale turns every generated token into garbage, so
//! the conversion stops with the tensor's name instead of writing such a file.

use anyhow::{bail, Result};

/// Checks that every value of the tensor (or scale) `name` is finite.
pub fn check_finite(name: &str, values: &[f32]) -> Result<()> {
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        bail!(
            "tensor {name}: value {} at flat index {i} is not finite (expected finite numbers; the checkpoint is damaged)",
            values[i]
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_finite;

    #[test]
    fn names_the_tensor_and_the_first_bad_value() {
        assert!(check_finite("model.norm.weight", &[1.0, -2.5, f32::MAX, 0.0]).is_ok());
        for (bad, shown) in [(f32::NAN, "NaN"), (f32::INFINITY, "inf"), (f32::NEG_INFINITY, "-inf")] {
            let err = check_finite("model.norm.weight", &[1.0, bad, bad]).unwrap_err().to_string();
            assert_eq!(
                err,
                format!(
                    "tensor model.norm.weight: value {shown} at flat index 1 is not finite (expected finite numbers; \
                     the checkpoint is damaged)"
                )
            );
        }
    }
}
