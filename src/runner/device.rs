//! Device and dtype choice, and peak memory, for `run`.
use anyhow::{bail, Result};
use candle_core::{DType, Device};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    /// CUDA when built with the `cuda` feature and a GPU answers, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtypeRequest {
    /// bf16 on CUDA; f32 on the CPU, where candle's bf16 matmul widens to f32 on every call.
    Auto,
    F32,
    F16,
    Bf16,
}

/// Pick the device. `note` receives a line when `auto` falls back to the CPU for a reason worth saying.
pub fn select(req: DeviceRequest, note: &mut dyn FnMut(String)) -> Result<Device> {
    match req {
        DeviceRequest::Cpu => Ok(Device::Cpu),
        DeviceRequest::Cuda => {
            if !cfg!(feature = "cuda") {
                bail!("--device cuda: this llamactl was built without the `cuda` feature (cargo build --release --features cuda)");
            }
            Device::new_cuda(0).map_err(|e| anyhow::anyhow!("--device cuda: no usable GPU: {e}"))
        }
        DeviceRequest::Auto => {
            if !cfg!(feature = "cuda") {
                return Ok(Device::Cpu);
            }
            match Device::new_cuda(0) {
                Ok(d) => Ok(d),
                Err(e) => {
                    note(format!("no usable GPU ({e}); running on the CPU"));
                    Ok(Device::Cpu)
                }
            }
        }
    }
}

pub fn select_dtype(req: DtypeRequest, device: &Device) -> DType {
    match req {
        DtypeRequest::Auto if device.is_cuda() => DType::BF16,
        DtypeRequest::Auto | DtypeRequest::F32 => DType::F32,
        DtypeRequest::F16 => DType::F16,
        DtypeRequest::Bf16 => DType::BF16,
    }
}

pub fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(_) => "cuda:0".to_string(),
        Device::Metal(_) => "metal".to_string(),
    }
}

pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "other",
    }
}

/// Peak resident memory of this process (CPU runs), in bytes.
pub fn peak_rss_bytes() -> u64 {
    // SAFETY: getrusage only writes the struct we hand it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return 0;
    }
    // Linux reports kilobytes.
    (usage.ru_maxrss.max(0) as u64) * 1024
}

/// Tracks the peak memory of a run: resident memory on the CPU; on CUDA, device memory in use,
/// sampled whenever `sample` is called (after each forward pass).
pub struct PeakMemory {
    device: Device,
    peak: u64,
}

impl PeakMemory {
    pub fn new(device: &Device) -> PeakMemory {
        let mut p = PeakMemory {
            device: device.clone(),
            peak: 0,
        };
        p.sample();
        p
    }

    pub fn sample(&mut self) {
        let now = if self.device.is_cuda() {
            cuda_used_bytes(&self.device)
        } else {
            peak_rss_bytes()
        };
        self.peak = self.peak.max(now);
    }

    pub fn peak(&mut self) -> u64 {
        self.sample();
        self.peak
    }
}

/// Device memory in use on the GPU (all processes; on a dedicated GPU, ours).
#[cfg(feature = "cuda")]
fn cuda_used_bytes(device: &Device) -> u64 {
    let Ok(dev) = device.as_cuda_device() else {
        return 0;
    };
    match dev.cuda_stream().context().mem_get_info() {
        Ok((free, total)) => total.saturating_sub(free) as u64,
        Err(_) => 0,
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_used_bytes(_device: &Device) -> u64 {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_choices() {
        let mut notes = Vec::new();
        let d = select(DeviceRequest::Cpu, &mut |n| notes.push(n)).unwrap();
        assert!(d.is_cpu());
        assert_eq!(select_dtype(DtypeRequest::Auto, &d), DType::F32);
        assert_eq!(select_dtype(DtypeRequest::Bf16, &d), DType::BF16);
        if !cfg!(feature = "cuda") {
            let e = select(DeviceRequest::Cuda, &mut |n| notes.push(n)).unwrap_err();
            assert!(e.to_string().contains("cuda"));
            assert!(select(DeviceRequest::Auto, &mut |n| notes.push(n))
                .unwrap()
                .is_cpu());
        }
        assert!(peak_rss_bytes() > 0);
    }
}
