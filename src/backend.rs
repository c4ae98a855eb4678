//! The backend is a run-time choice among those compiled in; the device is made here, once, at
//! the edge, and passed down.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

use burn::tensor::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::formats::BlockFormat;
use crate::kernels::cpu;

/// Who runs a model's step (`model::executor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExecutorKind {
    /// Burn's tensor ops on the run's backend, in its dtype.
    Tensor,
    /// specbench's loops and kernels on weights in host memory, computing in f32.
    Host,
}

impl ExecutorKind {
    /// The host executor on the CPU backends where this CPU has a vector path (or the portable
    /// kernels are forced, so that they can be tested), the tensor executor elsewhere.
    pub fn default_for(backend: Backend) -> Self {
        if backend.uses_host_memory() && (cpu::isa() > cpu::Isa::Portable || cpu::portable_forced()) {
            Self::Host
        } else {
            Self::Tensor
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Tensor => "tensor",
            Self::Host => "host",
        }
    }
}

impl fmt::Display for ExecutorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ExecutorKind {
    type Err = Error;

    /// `backend` is the tensor executor's older name (Burn's matmul multiplied the projections).
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tensor" | "backend" => Ok(Self::Tensor),
            "host" => Ok(Self::Host),
            other => Err(Error::Usage(format!("executor `{other}`; choose host or tensor (alias backend)"))),
        }
    }
}

/// Where and how a model runs: the backend and its device, the dtype it computes in, the dtype
/// its projection weights are stored in, and which executor runs its steps. Made once at the
/// edge (CLI, experiment runner) and passed down whole.
#[derive(Debug, Clone)]
pub struct Runtime {
    backend: Backend,
    device: Device,
    dtype: DType,
    weight_dtype: DType,
    /// Set for `q8_0` / `q4_0`: float weights are quantized on load to this block format.
    quantize: Option<BlockFormat>,
    executor: ExecutorKind,
}

impl Runtime {
    /// `backend`'s device (probed), `dtype` by name, and the executor that is fastest there
    /// (`ExecutorKind::default_for`). The host executor computes in f32 whatever the weights'
    /// dtype; the tensor executor computes in the weights' dtype, which the device must support.
    pub fn new(backend: Backend, dtype: &str) -> Result<Self> {
        let device = backend.device()?;
        Self::on(backend, device, dtype, ExecutorKind::default_for(backend))
    }

    fn on(backend: Backend, device: Device, name: &str, executor: ExecutorKind) -> Result<Self> {
        let quantize = quantized_named(name);
        let weight_dtype = if quantize.is_some() { DType::F32 } else { dtype_named(name)? };
        let unsupported = |why: &str| Error::DtypeUnsupported {
            dtype: format!("{name} ({why})"),
            backend: backend.name().into(),
        };
        let dtype = match executor {
            ExecutorKind::Host if !backend.uses_host_memory() => {
                return Err(unsupported("the host executor runs on the CPU backends"));
            }
            ExecutorKind::Host => DType::F32,
            ExecutorKind::Tensor if quantize.is_some() => {
                return Err(unsupported("quantized weights run on the CPU backends' host executor"));
            }
            ExecutorKind::Tensor if !device.supports_dtype(weight_dtype) => {
                return Err(unsupported(
                    "the device does not compute in it; the host executor keeps such weights",
                ));
            }
            ExecutorKind::Tensor => weight_dtype,
        };
        Ok(Self { backend, device, dtype, weight_dtype, quantize, executor })
    }

    /// The same device with another dtype (a draft may run in another precision).
    pub fn with_dtype(&self, dtype: &str) -> Result<Self> {
        Self::on(self.backend, self.device.clone(), dtype, self.executor)
    }

    /// Another executor, where it can run the same weights.
    pub fn with_executor(self, executor: ExecutorKind) -> Result<Self> {
        Self::on(self.backend, self.device.clone(), self.weight_name(), executor)
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

    pub fn executor(&self) -> ExecutorKind {
        self.executor
    }

    /// Waits for queued device work, so timers measure work done.
    pub fn sync(&self) -> Result<()> {
        self.device.sync().map_err(|e| Error::BackendUnavailable {
            backend: self.backend.name().into(),
            reason: format!("device sync failed: {e:?}"),
        })
    }

    /// One line for manifests and reports: backend, device, dtypes, executor and kernel ISA.
    pub fn describe(&self) -> String {
        let dtypes = if self.weight_name() == dtype_name(self.dtype) {
            dtype_name(self.dtype).to_string()
        } else {
            format!("{} weights, {} compute", self.weight_name(), dtype_name(self.dtype))
        };
        let executor = match self.executor {
            ExecutorKind::Host => format!("host executor, {} kernels", cpu::describe()),
            ExecutorKind::Tensor => "tensor executor".into(),
        };
        format!("{}: {:?}; {dtypes}; {executor}", self.backend, self.device)
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
    fn half_precision_on_the_host_executor_is_half_precision_weights_computed_in_f32() {
        for backend in [Backend::Ndarray, Backend::Flex] {
            let runtime = Runtime::new(backend, "bf16").unwrap();
            if runtime.executor() == ExecutorKind::Host {
                assert_eq!((runtime.dtype(), runtime.weight_dtype()), (DType::F32, DType::BF16));
                assert!(runtime.describe().contains("bf16 weights, f32 compute"), "{}", runtime.describe());
            }
        }
        // ndarray computes in f32 only: its tensor executor refuses bf16; flex computes in it.
        let tensor =
            |backend| Runtime::new(backend, "f32").unwrap().with_executor(ExecutorKind::Tensor).unwrap();
        assert!(tensor(Backend::Ndarray).with_dtype("bf16").is_err());
        let flex = tensor(Backend::Flex).with_dtype("bf16").unwrap();
        assert_eq!((flex.dtype(), flex.weight_dtype()), (DType::BF16, DType::BF16));
    }

    #[test]
    fn quantized_dtypes_run_on_the_host_executor_of_cpu_backends_only() {
        let runtime = Runtime::new(Backend::Flex, "q4_0").unwrap().with_executor(ExecutorKind::Host).unwrap();
        assert_eq!(runtime.quantize(), Some(BlockFormat::Q4_0));
        assert!(runtime.describe().contains("q4_0 weights, f32 compute"), "{}", runtime.describe());
        assert!((runtime.weight_bytes_per_parameter() - 0.5625).abs() < 1e-9);
        assert!(runtime.with_executor(ExecutorKind::Tensor).is_err());
        let err = Runtime::new(Backend::Ndarray, "q3").unwrap_err().to_string();
        assert!(err.contains("q8_0"), "{err}");
    }

    #[test]
    fn executors_parse_by_name_and_by_their_older_name() {
        assert_eq!("backend".parse::<ExecutorKind>().unwrap(), ExecutorKind::Tensor);
        assert_eq!("host".parse::<ExecutorKind>().unwrap(), ExecutorKind::Host);
        assert!("gpu".parse::<ExecutorKind>().unwrap_err().to_string().contains("host or tensor"));
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
