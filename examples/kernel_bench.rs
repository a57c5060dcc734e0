//! CPU time of the bf16 linear kernels on one thread, for comparing kernel variants on a busy
//! machine (CPU time, unlike wall time, does not count the time other processes hold the core).
//!
//!   cargo run --release --example kernel_bench -- [TOKENS] [ROWS] [COLS] [REPEATS]
//!
//! Prints the mean CPU time of `REPEATS` calls of `Linear::forward` on a random bf16 [ROWS, COLS]
//! matrix and TOKENS activation rows, as GFLOP/s (prefill) or GB/s of weights (decode). The ISA is the
//! one `LLAMACTL_CPU_ISA` selects, as in `llamactl run`.
use llamactl::runner::cpu::{kernels, Bytes, Linear, Matrix};

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we hand it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    ru.ru_utime.tv_sec as f64 + ru.ru_utime.tv_usec as f64 * 1e-6
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers: TOKENS ROWS COLS REPEATS"))
        .collect();
    let arg = |i: usize, d: usize| args.get(i).copied().unwrap_or(d);
    let (t, rows, cols, reps) = (arg(0, 64), arg(1, 8192), arg(2, 2048), arg(3, 5));
    let mut s = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
        ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    let w: Vec<u8> = (0..rows * cols)
        .flat_map(|_| half::bf16::from_f32(next()).to_le_bytes())
        .collect();
    let x: Vec<f32> = (0..t * cols).map(|_| next()).collect();
    let m = Matrix::new(
        kernels::WeightType::Bf16,
        rows,
        cols,
        Bytes::Owned(w.into()),
    )
    .unwrap();
    let lin = Linear::new(vec![m]).unwrap();
    let mut out = vec![0f32; t * rows];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    // The mean over all calls: the kernel's CPU clock ticks too coarsely for one short call.
    let best = pool.install(|| {
        lin.forward(&x, &mut out);
        let c0 = cpu_seconds();
        for _ in 0..reps {
            lin.forward(&x, &mut out);
        }
        (cpu_seconds() - c0) / reps as f64
    });
    let isa = kernels::isa().name();
    let gflops = 2.0 * (t * rows * cols) as f64 / best / 1e9;
    let gbs = (2 * rows * cols) as f64 / best / 1e9;
    println!(
        "{isa} t={t} {rows}x{cols}: {best:.4} s CPU, {gflops:.1} GFLOP/s, {gbs:.1} GB/s of weights"
    );
}
