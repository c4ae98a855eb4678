//! What this CPU can run, detected once per process, and the one place where code is compiled
//! for an instruction set it may lack (`vectorized`). `SPECBENCH_KERNELS=portable` forces the
//! portable path everywhere, so that the tests can run the whole model through it.

use std::sync::OnceLock;

/// The instruction-set level the kernels use, in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Plain Rust, every CPU (and the reference the vector paths are tested against).
    Portable,
    /// x86-64 with AVX2, FMA and F16C.
    Avx2,
    /// `Avx2` and AVX-512F.
    Avx512,
}

/// Features beyond the ISA level that single kernels use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extensions {
    /// AVX-VNNI (`vpdpbusd` on 256-bit registers, VEX-encoded).
    pub avx_vnni: bool,
}

#[derive(Debug, Clone, Copy)]
struct Detected {
    isa: Isa,
    extensions: Extensions,
}

/// The environment variable that forces the portable kernels.
pub const FORCE_PORTABLE: &str = "SPECBENCH_KERNELS";

/// Whether `SPECBENCH_KERNELS=portable` is set.
pub fn portable_forced() -> bool {
    static FORCED: OnceLock<bool> = OnceLock::new();
    *FORCED.get_or_init(|| std::env::var(FORCE_PORTABLE).is_ok_and(|v| v == "portable"))
}

fn detected() -> Detected {
    static DETECTED: OnceLock<Detected> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        if portable_forced() {
            return Detected { isa: Isa::Portable, extensions: Extensions::default() };
        }
        detect()
    })
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Detected {
    use std::arch::is_x86_feature_detected as has;
    let avx2 = has!("avx2") && has!("fma") && has!("f16c");
    let isa = match (avx2, has!("avx512f")) {
        (false, _) => Isa::Portable,
        (true, false) => Isa::Avx2,
        (true, true) => Isa::Avx512,
    };
    Detected { isa, extensions: Extensions { avx_vnni: avx2 && has!("avxvnni") } }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Detected {
    Detected { isa: Isa::Portable, extensions: Extensions::default() }
}

/// The level the kernels run at on this CPU.
pub fn isa() -> Isa {
    detected().isa
}

/// Whether the AVX2 kernels run here (false where `SPECBENCH_KERNELS=portable`).
pub fn has_avx2() -> bool {
    isa() >= Isa::Avx2
}

/// Whether the AVX-512 kernels run here.
pub fn has_avx512() -> bool {
    isa() >= Isa::Avx512
}

pub fn extensions() -> Extensions {
    detected().extensions
}

/// One line for manifests and reports: `avx512 (+avx-vnni)`, `avx2`, `portable`.
pub fn describe() -> String {
    let mut out = match isa() {
        Isa::Portable => "portable",
        Isa::Avx2 => "avx2",
        Isa::Avx512 => "avx512",
    }
    .to_string();
    if extensions().avx_vnni {
        out += " +avx-vnni";
    }
    out
}

/// Work whose loops should be compiled for the vector ISA. `run` is inlined into the entry
/// point `vectorized` picks, so everything it inlines in turn (norms, adds, attention's loops)
/// is compiled with that entry point's features.
pub trait Vectorize {
    type Output;
    fn run(self) -> Self::Output;
}

/// Runs `work` compiled for AVX2 and FMA where this CPU has them, as written elsewhere.
pub fn vectorized<W: Vectorize>(work: W) -> W::Output {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C.
        return unsafe { x86::run_avx2(work) };
    }
    work.run()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Vectorize;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn run_avx2<W: Vectorize>(work: W) -> W::Output {
        work.run()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sum<'a>(&'a [f32]);

    impl Vectorize for Sum<'_> {
        type Output = f32;
        #[inline(always)]
        fn run(self) -> f32 {
            self.0.iter().sum()
        }
    }

    #[test]
    fn vectorized_work_computes_what_the_portable_work_does() {
        let values: Vec<f32> = (0..100).map(|i| i as f32 * 0.5).collect();
        assert_eq!(vectorized(Sum(&values)), Sum(&values).run());
    }

    #[test]
    fn levels_are_ordered_and_described() {
        assert!(Isa::Portable < Isa::Avx2 && Isa::Avx2 < Isa::Avx512);
        assert!(!describe().is_empty());
        assert!(!has_avx512() || has_avx2());
    }
}
