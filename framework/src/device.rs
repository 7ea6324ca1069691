//! Choosing a device by name: `cpu`, `cuda` or `cuda:N`.

use candle_core::Device;

use crate::{Error, Result};

/// The device named `name`: `cpu`, `cuda` (GPU 0) or `cuda:N`. A CUDA name
/// in a build without the `cuda` feature, or with no such GPU, is an error
/// saying which.
///
/// ```
/// let cpu = lrnnx_framework::device::parse_device("cpu")?;
/// assert!(cpu.is_cpu());
/// let e = lrnnx_framework::device::parse_device("tpu").unwrap_err().to_string();
/// assert!(e.contains("expected cpu, cuda or cuda:N"));
/// # Ok::<(), lrnnx_framework::Error>(())
/// ```
pub fn parse_device(name: &str) -> Result<Device> {
    let ordinal = match name {
        "cpu" => return Ok(Device::Cpu),
        "cuda" | "gpu" => 0,
        other => match other.strip_prefix("cuda:") {
            Some(i) => i.parse::<usize>().map_err(|_| {
                Error::Config(format!(
                    "device `{other}`: expected cuda:N with N a GPU index, found `{i}`"
                ))
            })?,
            None => {
                return Err(Error::Config(format!(
                    "unknown device `{other}`: expected cpu, cuda or cuda:N"
                )))
            }
        },
    };
    if !cfg!(feature = "cuda") {
        return Err(Error::Config(format!(
            "device `{name}`: this build has no CUDA support; rebuild with `--features cuda`"
        )));
    }
    Device::new_cuda(ordinal).map_err(|e| {
        Error::Config(format!(
            "device `{name}`: cannot open CUDA device {ordinal}: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_ordinals_and_missing_support_are_named() {
        let e = parse_device("cuda:x").unwrap_err().to_string();
        assert!(e.contains("`x`"), "{e}");
        if !cfg!(feature = "cuda") {
            let e = parse_device("cuda:1").unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
    }
}
