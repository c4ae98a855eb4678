//! The backend is a run-time choice among those compiled in; the device is made here, once, at
//! the edge, and passed down.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

use burn::tensor::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kernels::quant::BlockFormat;
use crate::model::ProjectionKernel;

/// Where and how a model runs: the backend and its device, the dtype it computes in, the dtype
/// its projection weights are stored in, and who multiplies the projections. Made once at the
/// edge (CLI, experiment runner) and passed down whole.
#[derive(Debug, Clone)]
pub struct Runtime {
    backend: Backend,
    device: Device,
    dtype: DType,
    weight_dtype: DType,
    /// Set for `q8_0` / `q4_0`: float weights are quantized on load to this block format.
    quantize: Option<BlockFormat>,
    kernel: ProjectionKernel,
}

impl Runtime {
    /// `backend`'s device (probed), `dtype` by name, and the projection kernel that is fastest
    /// there (`ProjectionKernel::default_for`). A dtype the device computes in is used
    /// throughout; bf16 or f16 on ndarray, which computes in f32 only, means half-precision
    /// projection weights on the host kernel and f32 everywhere else.
    pub fn new(backend: Backend, dtype: &str) -> Result<Self> {
        let device = backend.device()?;
        Self::on(backend, device, dtype)
    }

    fn on(backend: Backend, device: Device, name: &str) -> Result<Self> {
        if let Some(format) = quantized_named(name) {
            // Quantized weights live in host memory and only the host kernel multiplies them
            // (its portable path where the CPU lacks AVX2).
            if !backend.uses_host_memory() {
                return Err(Error::DtypeUnsupported {
                    dtype: format!("{name} (quantized weights run on the CPU backends' host kernel)"),
                    backend: backend.name().into(),
                });
            }
            let (dtype, kernel) = (DType::F32, ProjectionKernel::Host);
            return Ok(Self { backend, device, dtype, weight_dtype: dtype, quantize: Some(format), kernel });
        }
        let weight_dtype = dtype_named(name)?;
        let kernel = ProjectionKernel::default_for(backend, weight_dtype);
        let dtype = if device.supports_dtype(weight_dtype) {
            weight_dtype
        } else if backend.uses_host_memory() && kernel == ProjectionKernel::Host {
            DType::F32
        } else {
            return Err(Error::DtypeUnsupported { dtype: name.into(), backend: backend.name().into() });
        };
        Ok(Self { backend, device, dtype, weight_dtype, quantize: None, kernel })
    }

    /// The same device with another dtype (a draft may run in another precision).
    pub fn with_dtype(&self, dtype: &str) -> Result<Self> {
        Self::on(self.backend, self.device.clone(), dtype)
    }

    /// Another projection kernel, where it can run (Burn's matmul needs weights in the dtype
    /// the backend computes in).
    pub fn with_kernel(self, kernel: ProjectionKernel) -> Result<Self> {
        kernel.check(self.backend, self.weight_dtype)?;
        if kernel == ProjectionKernel::Backend && (self.weight_dtype != self.dtype || self.quantize.is_some())
        {
            return Err(Error::DtypeUnsupported {
                dtype: format!("{} with backend projections", self.weight_name()),
                backend: self.backend.name().into(),
            });
        }
        Ok(Self { kernel, ..self })
    }

    /// The dtype projection weights are stored in on the host kernel (before quantizing).
    pub fn weight_dtype(&self) -> DType {
        self.weight_dtype
    }

    /// The block format float weights are quantized to on load, if any.
    pub fn quantize(&self) -> Option<BlockFormat> {
        self.quantize
    }

    /// Bytes per parameter of the projection weights, as held in memory.
    pub fn weight_bytes_per_parameter(&self) -> f64 {
        match self.quantize {
            Some(format) => format.bits_per_weight() / 8.0,
            None => self.weight_dtype.size() as f64,
        }
    }

    /// The projection weights' dtype by name: `f32`, `bf16`, `q4_0`, ...
    pub fn weight_name(&self) -> &'static str {
        self.quantize.map_or_else(|| dtype_name(self.weight_dtype), BlockFormat::name)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn kernel(&self) -> ProjectionKernel {
        self.kernel
    }

    /// Waits for queued device work, so timers measure work done.
    pub fn sync(&self) -> Result<()> {
        self.device.sync().map_err(|e| Error::BackendUnavailable {
            backend: self.backend.name().into(),
            reason: format!("device sync failed: {e:?}"),
        })
    }

    /// One line for manifests and reports: backend, device, dtype, projection kernel.
    pub fn describe(&self) -> String {
        let dtypes = if self.weight_name() == dtype_name(self.dtype) {
            dtype_name(self.dtype).to_string()
        } else {
            format!("{} weights, {} compute", self.weight_name(), dtype_name(self.dtype))
        };
        format!("{}: {:?}; {dtypes}; {} projections", self.backend, self.device, self.kernel)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Ndarray,
    Flex,
    Wgpu,
}

impl Backend {
    pub const ALL: [Backend; 3] = [Backend::Ndarray, Backend::Flex, Backend::Wgpu];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Ndarray => "ndarray",
            Backend::Flex => "flex",
            Backend::Wgpu => "wgpu",
        }
    }

    pub fn is_compiled(self) -> bool {
        match self {
            Backend::Ndarray | Backend::Flex => true,
            Backend::Wgpu => cfg!(feature = "wgpu"),
        }
    }

    /// Whether it computes on the host, so that model memory is checked against host RAM.
    pub fn uses_host_memory(self) -> bool {
        matches!(self, Backend::Ndarray | Backend::Flex)
    }

    /// Creates the device and proves it works with one tiny computation: wgpu picks its adapter
    /// lazily and panics deep inside when none exists, which we turn into an error here. The
    /// probe runs once per backend and process (it swaps the global panic hook, which must not
    /// race with itself); later calls reuse its verdict.
    pub fn device(self) -> Result<Device> {
        if !self.is_compiled() {
            return Err(Error::BackendNotCompiled(self.name().into()));
        }
        static VERDICTS: [OnceLock<std::result::Result<(), String>>; 3] =
            [OnceLock::new(), OnceLock::new(), OnceLock::new()];
        let device = self.make_device();
        let verdict = VERDICTS[self as usize].get_or_init(|| probe(&device));
        verdict
            .clone()
            .map_err(|reason| Error::BackendUnavailable { backend: self.name().into(), reason })?;
        Ok(device)
    }

    /// Only called for compiled-in backends.
    fn make_device(self) -> Device {
        match self {
            // Deprecated upstream in favour of flex; kept because our users run on it.
            #[allow(deprecated)]
            Backend::Ndarray => Device::ndarray(),
            Backend::Flex => Device::flex(),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
            #[cfg(not(feature = "wgpu"))]
            Backend::Wgpu => unreachable!("is_compiled() guards backends left out of the build"),
        }
    }
}

fn probe(device: &Device) -> std::result::Result<(), String> {
    let device = device.clone();
    // Adapter setup panics on a worker thread; keep the first message, which names the cause
    // (the panic that reaches us only says a channel closed).
    let first_panic = Arc::new(Mutex::new(None::<String>));
    let sink = Arc::clone(&first_panic);
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()));
        let mut slot = sink.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = message;
        }
    }));
    let outcome = std::panic::catch_unwind(move || {
        let sum = Tensor::<1>::ones([4], &device).sum().into_scalar::<f32>();
        device.sync().map_err(|e| format!("{e:?}"))?;
        Ok::<f32, String>(sum)
    });
    std::panic::set_hook(previous_hook);
    let first_panic = first_panic.lock().unwrap_or_else(|e| e.into_inner()).take();
    match outcome {
        Ok(Ok(4.0)) => Ok(()),
        Ok(Ok(sum)) => Err(format!("a test sum returned {sum} instead of 4")),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(first_panic
            .unwrap_or_else(|| "no usable adapter (is a GPU driver or Mesa lavapipe installed?)".into())),
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Backend::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| Error::UnknownBackend(s.into(), compiled_names()))
    }
}

fn compiled_names() -> String {
    Backend::ALL.iter().filter(|b| b.is_compiled()).map(|b| b.name()).collect::<Vec<_>>().join(", ")
}

/// A float dtype by name; logits are always read back in f32.
fn dtype_named(name: &str) -> Result<DType> {
    match name {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => Err(Error::InvalidConfig(format!("dtype `{other}`; choose f32, f16, bf16, q8_0 or q4_0"))),
    }
}

/// The quantized dtypes a checkpoint can be quantized to on load.
fn quantized_named(name: &str) -> Option<BlockFormat> {
    match name {
        "q8_0" => Some(BlockFormat::Q8_0),
        "q4_0" => Some(BlockFormat::Q4_0),
        _ => None,
    }
}

pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "f32",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_backend_lists_the_compiled_ones() {
        let err = "cuda".parse::<Backend>().unwrap_err().to_string();
        assert!(err.contains("cuda") && err.contains("ndarray"), "{err}");
    }

    #[test]
    fn half_precision_on_ndarray_is_half_precision_weights_computed_in_f32() {
        let runtime = Runtime::new(Backend::Ndarray, "bf16").unwrap();
        if runtime.kernel() == ProjectionKernel::Host {
            assert_eq!((runtime.dtype(), runtime.weight_dtype()), (DType::F32, DType::BF16));
            assert!(runtime.describe().contains("bf16 weights, f32 compute"));
            assert!(runtime.with_kernel(ProjectionKernel::Backend).is_err());
        }
        let flex = Runtime::new(Backend::Flex, "bf16").unwrap();
        assert_eq!((flex.dtype(), flex.weight_dtype()), (DType::BF16, DType::BF16));
    }

    #[test]
    fn quantized_dtypes_run_on_the_host_kernel_of_cpu_backends_only() {
        let runtime = Runtime::new(Backend::Flex, "q4_0").unwrap();
        assert_eq!((runtime.quantize(), runtime.kernel()), (Some(BlockFormat::Q4_0), ProjectionKernel::Host));
        assert!(runtime.describe().contains("q4_0 weights, f32 compute"), "{}", runtime.describe());
        assert!((runtime.weight_bytes_per_parameter() - 0.5625).abs() < 1e-9);
        assert!(runtime.with_kernel(ProjectionKernel::Backend).is_err());
        let err = Runtime::new(Backend::Ndarray, "q3").unwrap_err().to_string();
        assert!(err.contains("q8_0"), "{err}");
    }

    #[test]
    fn cpu_devices_pass_their_probe() {
        Backend::Ndarray.device().unwrap();
        Backend::Flex.device().unwrap();
    }

    #[cfg(not(feature = "wgpu"))]
    #[test]
    fn wgpu_without_the_feature_says_how_to_get_it() {
        let err = Backend::Wgpu.device().unwrap_err().to_string();
        assert!(err.contains("--features wgpu"), "{err}");
    }
}
