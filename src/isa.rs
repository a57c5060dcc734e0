//! The SIMD instruction set in use, picked once at run time: AVX-512F, AVX2 (with FMA and F16C),
//! or portable Rust. Inference kernels (`runner::cpu`) and the quantizers (`formats::quant`)
//! dispatch on it.
use std::sync::OnceLock;

/// The SIMD flavour in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Portable,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => {
                if cfg!(target_arch = "aarch64") {
                    "neon"
                } else {
                    "portable"
                }
            }
        }
    }
}

/// The best instruction set this CPU has; `LLAMACTL_CPU_ISA=avx2|portable` lowers it (for tests
/// and benchmarks that compare the paths).
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let best = detect();
        match std::env::var("LLAMACTL_CPU_ISA").as_deref() {
            Ok("portable") => Isa::Portable,
            Ok("avx2") if best == Isa::Avx512 => Isa::Avx2,
            _ => best,
        }
    })
}

/// The best instruction set this CPU has, ignoring `LLAMACTL_CPU_ISA` (tests use it to know
/// which paths they can run).
pub fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            return Isa::Avx2;
        }
    }
    Isa::Portable
}
