//! Device and dtype choice, and peak memory, for `run`.
use super::model::Precision;
use anyhow::{bail, Result};
use candle_core::{DType, Device};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeviceRequest {
    /// CUDA when built with the `cuda` feature and a GPU answers, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DtypeRequest {
    /// CUDA: bf16. CPU: each matrix in the type the checkpoint stores it in (f32 activations).
    Auto,
    F32,
    F16,
    Bf16,
}

/// Pick the device. `note` receives a line when `auto` falls back to the CPU for a reason worth saying.
pub(crate) fn select(req: DeviceRequest, note: &mut dyn FnMut(String)) -> Result<Device> {
    match req {
        DeviceRequest::Cpu => Ok(Device::Cpu),
        DeviceRequest::Cuda => {
            if !cfg!(feature = "cuda") {
                bail!("--device cuda: this llamactl was built without the `cuda` feature (cargo build --release --features cuda)");
            }
            open_cuda().map_err(|e| anyhow::anyhow!("--device cuda: {e}"))
        }
        DeviceRequest::Auto => {
            if !cfg!(feature = "cuda") {
                return Ok(Device::Cpu);
            }
            match open_cuda() {
                Ok(d) => Ok(d),
                Err(e) => {
                    note(format!("{e}; running on the CPU"));
                    Ok(Device::Cpu)
                }
            }
        }
    }
}

/// GPU 0, once the CUDA libraries are known to load: cudarc opens them on first use and panics when
/// one is missing, so ask first and turn a missing library into an error that names it.
fn open_cuda() -> Result<Device> {
    let missing = missing_cuda_libraries();
    if !missing.is_empty() {
        bail!(
            "no usable GPU: cannot load {} (install the NVIDIA driver and CUDA 13 libraries, or add their folder to LD_LIBRARY_PATH)",
            missing.join(", ")
        );
    }
    Device::new_cuda(0).map_err(|e| anyhow::anyhow!("no usable GPU ({e})"))
}

#[cfg(feature = "cuda")]
fn missing_cuda_libraries() -> Vec<&'static str> {
    // SAFETY: each probe only tries to dlopen the library under its usual names.
    let present = unsafe {
        [
            (
                "libcuda (the NVIDIA driver)",
                cudarc::driver::sys::is_culib_present(),
            ),
            ("cuBLAS", cudarc::cublas::sys::is_culib_present()),
            ("cuBLASLt", cudarc::cublaslt::sys::is_culib_present()),
            ("cuRAND", cudarc::curand::sys::is_culib_present()),
            ("NVRTC", cudarc::nvrtc::sys::is_culib_present()),
        ]
    };
    present
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(name, _)| name)
        .collect()
}

#[cfg(not(feature = "cuda"))]
fn missing_cuda_libraries() -> Vec<&'static str> {
    Vec::new()
}

/// How the model holds its weights for a dtype request.
pub(crate) fn precision(req: DtypeRequest) -> Precision {
    match req {
        DtypeRequest::Auto => Precision::Auto,
        DtypeRequest::F32 => Precision::Fixed(DType::F32),
        DtypeRequest::F16 => Precision::Fixed(DType::F16),
        DtypeRequest::Bf16 => Precision::Fixed(DType::BF16),
    }
}

pub(crate) fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(_) => "cuda:0".to_string(),
        Device::Metal(_) => "metal".to_string(),
    }
}

pub(crate) use super::model::dtype_name;

/// Peak memory of a run, sampled whenever `sample` is called (after each forward pass): on the CPU
/// the process's anonymous resident memory (what the run itself holds) and, apart, its file-backed
/// resident pages (mapped weights, which the kernel can drop and re-read); on CUDA, device memory in
/// use.
pub(crate) struct PeakMemory {
    device: Device,
    peak: u64,
    peak_file: u64,
}

impl PeakMemory {
    pub(crate) fn new(device: &Device) -> PeakMemory {
        let mut p = PeakMemory {
            device: device.clone(),
            peak: 0,
            peak_file: 0,
        };
        p.sample();
        p
    }

    pub(crate) fn sample(&mut self) {
        if self.device.is_cuda() {
            self.peak = self.peak.max(cuda_used_bytes(&self.device));
        } else {
            let (anon, file) = super::memory::rss_now();
            self.peak = self.peak.max(anon);
            self.peak_file = self.peak_file.max(file);
        }
    }

    /// Peak anonymous resident memory (CPU) or device memory (CUDA).
    pub(crate) fn peak(&mut self) -> u64 {
        self.sample();
        self.peak
    }

    /// Peak file-backed resident memory (CPU; 0 on CUDA).
    pub(crate) fn peak_file(&mut self) -> u64 {
        self.sample();
        self.peak_file
    }
}

/// Memory a run can still take on `device`, and the memory it has: (available, total) bytes.
pub(crate) fn available_bytes(device: &Device) -> (u64, u64) {
    if device.is_cuda() {
        cuda_mem_info(device)
    } else {
        super::memory::available_host_bytes()
    }
}

/// Which matrix kernels run: the CPU's SIMD flavour, or the device's.
pub(crate) fn kernels_name(device: &Device) -> &'static str {
    if device.is_cuda() {
        "cublas"
    } else {
        super::cpu::kernels::isa().name()
    }
}

/// Device memory in use on the GPU (all processes; on a dedicated GPU, ours).
fn cuda_used_bytes(device: &Device) -> u64 {
    let (free, total) = cuda_mem_info(device);
    total.saturating_sub(free)
}

/// (free, total) device memory.
#[cfg(feature = "cuda")]
fn cuda_mem_info(device: &Device) -> (u64, u64) {
    let Ok(dev) = device.as_cuda_device() else {
        return (0, 0);
    };
    match dev.cuda_stream().context().mem_get_info() {
        Ok((free, total)) => (free as u64, total as u64),
        Err(_) => (0, 0),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_mem_info(_device: &Device) -> (u64, u64) {
    (0, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_choices() {
        let mut notes = Vec::new();
        let d = select(DeviceRequest::Cpu, &mut |n| notes.push(n)).unwrap();
        assert!(d.is_cpu());
        assert_eq!(precision(DtypeRequest::Auto), Precision::Auto);
        assert_eq!(precision(DtypeRequest::Bf16), Precision::Fixed(DType::BF16));
        if !cfg!(feature = "cuda") {
            let e = select(DeviceRequest::Cuda, &mut |n| notes.push(n)).unwrap_err();
            assert!(e.to_string().contains("cuda"));
            assert!(select(DeviceRequest::Auto, &mut |n| notes.push(n))
                .unwrap()
                .is_cpu());
        }
        let mut m = PeakMemory::new(&d);
        assert!(m.peak() > 0);
    }
}
