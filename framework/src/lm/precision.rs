//! Numeric precision of a model: the dtype its parameters are stored in and
//! the dtype it computes in, and the options of loading a saved model.
//!
//! The policy (documented in the README):
//! - the compute dtype is the activations' dtype; every layer casts its
//!   parameters to it at use, so f32 master weights train with bf16 compute
//!   and their gradients and optimizer moments stay f32;
//! - recurrent states and scan accumulation are f32 whatever the compute
//!   dtype (f64 models stay f64), as are norm statistics, logits and the loss.

use std::str::FromStr;

use candle_core::DType;

use super::MixerKwargs;
use crate::{Error, Result};

/// Parameter and compute dtypes of a model.
///
/// ```
/// use candle_core::DType;
/// use lrnnx_framework::Precision;
/// let p: Precision = "bf16".parse()?;
/// assert_eq!((p.params, p.compute), (DType::F32, DType::BF16)); // training: f32 master weights
/// assert_eq!(p.for_inference().params, DType::BF16); // inference: weights stored narrow
/// # Ok::<(), lrnnx_framework::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Precision {
    /// The dtype parameters are stored (and optimised) in.
    pub params: DType,
    /// The dtype activations are computed in.
    pub compute: DType,
}

impl Precision {
    /// Everything in f32.
    pub const F32: Self = Self {
        params: DType::F32,
        compute: DType::F32,
    };

    /// Parameters and compute both in `dtype`.
    pub const fn pure(dtype: DType) -> Self {
        Self {
            params: dtype,
            compute: dtype,
        }
    }

    /// The same compute dtype with parameters stored in it too (no f32
    /// master copy): what inference wants, reading half the bytes per token.
    pub const fn for_inference(self) -> Self {
        Self::pure(self.compute)
    }
}

impl Default for Precision {
    fn default() -> Self {
        Self::F32
    }
}

impl FromStr for Precision {
    type Err = Error;

    /// `f32`, `f64`, `bf16` or `f16`; the narrow ones keep f32 master weights.
    fn from_str(s: &str) -> Result<Self> {
        let compute = match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => DType::F32,
            "f64" | "fp64" | "float64" => DType::F64,
            "bf16" | "bfloat16" => DType::BF16,
            "f16" | "fp16" | "float16" | "half" => DType::F16,
            other => {
                return Err(Error::Config(format!(
                    "unknown dtype `{other}`: expected one of f32, bf16, f16, f64"
                )))
            }
        };
        let params = if compute == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        Ok(Self { params, compute })
    }
}

/// How [`crate::LRNNLMHeadModel::from_pretrained_with`] loads a directory.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Per-mixer-type kwargs overrides, as lrnnx's `from_pretrained(mixer_kwargs=...)`.
    pub mixer_kwargs: Option<MixerKwargs>,
    /// The precision to load in; `None` keeps the checkpoint's own float
    /// dtype (an f16/bf16 checkpoint loads and computes as such, not widened).
    pub precision: Option<Precision>,
}

/// The dtype a set of floating-point tensors shares, or f32 when they mix
/// dtypes or hold none.
pub(crate) fn stored_float_dtype(dtypes: impl IntoIterator<Item = DType>) -> DType {
    let mut found: Option<DType> = None;
    for d in dtypes.into_iter().filter(|d| d.is_float()) {
        match found {
            None => found = Some(d),
            Some(f) if f == d => {}
            Some(_) => return DType::F32,
        }
    }
    found.unwrap_or(DType::F32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_cli_spellings_and_refuses_others_by_name() {
        assert_eq!("F32".parse::<Precision>().unwrap(), Precision::F32);
        let half: Precision = "f16".parse().unwrap();
        assert_eq!((half.params, half.compute), (DType::F32, DType::F16));
        assert_eq!(
            "f64".parse::<Precision>().unwrap(),
            Precision::pure(DType::F64)
        );
        let e = "int8".parse::<Precision>().unwrap_err().to_string();
        assert!(e.contains("int8") && e.contains("bf16"), "{e}");
    }

    #[test]
    fn a_checkpoint_keeps_its_one_float_dtype() {
        use DType::*;
        assert_eq!(stored_float_dtype([BF16, BF16, I64]), BF16);
        assert_eq!(stored_float_dtype([F16, F32]), F32);
        assert_eq!(stored_float_dtype([U32]), F32);
    }
}
