//! What this CPU can run, detected once per process, and the one place where code is compiled
//! for an instruction set it may lack (`vectorized`).
//!
//! `SPECBENCH_KERNELS` takes away what the kernels may use, to test and time each path on one
//! machine: `portable` (no vector code at all: the tests run the whole model through it),
//! `no-avx512`, `no-avx-vnni`, `no-avx512-vnni`, comma-separated (`no-avx-vnni` makes a Zen 5 or
//! Sapphire Rapids take the path a Zen 4 or Ice Lake takes); on ARM, `no-dotprod` (the NEON path
//! without `sdot`, as on a Cortex-A53 or A72).

use std::sync::OnceLock;

/// The instruction-set level the kernels use, in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Plain Rust, every CPU (and the reference the vector paths are tested against).
    Portable,
    /// AArch64 with NEON (every 64-bit ARM CPU: Apple Silicon, Graviton, Ampere, Cortex-A).
    Neon,
    /// x86-64 with AVX2, FMA and F16C.
    Avx2,
    /// `Avx2` and AVX-512F, BW and VL (every AVX-512 CPU since Skylake-SP, and AMD Zen 4).
    Avx512,
}

/// Features beyond the ISA level that single kernels use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extensions {
    /// AVX-VNNI (`vpdpbusd` on 256-bit registers, VEX-encoded).
    pub avx_vnni: bool,
    /// AVX512-VNNI (`vpdpbusd` on 512-bit registers): Intel since Cascade Lake, AMD since Zen 4.
    pub avx512_vnni: bool,
    /// ARM's dot product extension (`sdot`: Apple M1 and later, Graviton 2 and later).
    pub dotprod: bool,
}

#[derive(Debug, Clone, Copy)]
struct Detected {
    isa: Isa,
    extensions: Extensions,
}

/// The environment variable that restricts the kernels (see the module note).
pub const KERNELS_VAR: &str = "SPECBENCH_KERNELS";

/// What `SPECBENCH_KERNELS` takes away, comma-separated.
fn restrictions() -> Vec<String> {
    std::env::var(KERNELS_VAR).unwrap_or_default().split(',').map(|s| s.trim().to_string()).collect()
}

/// Whether `SPECBENCH_KERNELS=portable` is set.
pub fn portable_forced() -> bool {
    static FORCED: OnceLock<bool> = OnceLock::new();
    *FORCED.get_or_init(|| restrictions().iter().any(|r| r == "portable"))
}

fn detected() -> Detected {
    static DETECTED: OnceLock<Detected> = OnceLock::new();
    *DETECTED.get_or_init(|| restrict(detect(), &restrictions()))
}

/// `detected` less what `restrictions` take away.
fn restrict(mut detected: Detected, restrictions: &[String]) -> Detected {
    for restriction in restrictions {
        match restriction.as_str() {
            "portable" => detected = Detected { isa: Isa::Portable, extensions: Extensions::default() },
            "no-avx512" => {
                detected.isa = detected.isa.min(Isa::Avx2);
                detected.extensions.avx512_vnni = false;
            }
            "no-avx-vnni" => detected.extensions.avx_vnni = false,
            "no-avx512-vnni" => detected.extensions.avx512_vnni = false,
            "no-dotprod" => detected.extensions.dotprod = false,
            _ => {}
        }
    }
    detected
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Detected {
    use std::arch::is_x86_feature_detected as has;
    let avx2 = has!("avx2") && has!("fma") && has!("f16c");
    let isa = match (avx2, has!("avx512f") && has!("avx512bw") && has!("avx512vl")) {
        (false, _) => Isa::Portable,
        (true, false) => Isa::Avx2,
        (true, true) => Isa::Avx512,
    };
    let avx512_vnni = isa == Isa::Avx512 && has!("avx512vnni");
    Detected {
        isa,
        extensions: Extensions { avx_vnni: avx2 && has!("avxvnni"), avx512_vnni, dotprod: false },
    }
}

#[cfg(target_arch = "aarch64")]
fn detect() -> Detected {
    let dotprod = std::arch::is_aarch64_feature_detected!("dotprod");
    Detected { isa: Isa::Neon, extensions: Extensions { dotprod, ..Extensions::default() } }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
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
        Isa::Neon => "neon",
        Isa::Avx2 => "avx2",
        Isa::Avx512 => "avx512",
    }
    .to_string();
    if extensions().avx_vnni {
        out += " +avx-vnni";
    }
    if extensions().avx512_vnni {
        out += " +avx512-vnni";
    }
    if extensions().dotprod {
        out += " +dotprod";
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

/// Runs `work` compiled for AVX2 and FMA where this CPU has them, as written elsewhere (NEON is
/// every AArch64 CPU's baseline, so there the compiler vectorises the same loops as written).
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
    fn restrictions_take_away_what_they_name() {
        let all = Detected {
            isa: Isa::Avx512,
            extensions: Extensions { avx_vnni: true, avx512_vnni: true, dotprod: false },
        };
        let less = |r: &[&str]| restrict(all, &r.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            less(&["no-avx-vnni"]).extensions,
            Extensions { avx_vnni: false, avx512_vnni: true, dotprod: false }
        );
        let arm =
            Detected { isa: Isa::Neon, extensions: Extensions { dotprod: true, ..Extensions::default() } };
        assert!(!restrict(arm, &["no-dotprod".into()]).extensions.dotprod);
        assert_eq!(restrict(arm, &["portable".into()]).isa, Isa::Portable);
        let avx2 = less(&["no-avx512"]);
        assert_eq!(
            (avx2.isa, avx2.extensions.avx512_vnni, avx2.extensions.avx_vnni),
            (Isa::Avx2, false, true)
        );
        assert_eq!(less(&["portable"]).isa, Isa::Portable);
        assert_eq!(less(&["no-avx-vnni", "no-avx512-vnni"]).extensions, Extensions::default());
    }

    #[test]
    fn levels_are_ordered_and_described() {
        assert!(Isa::Portable < Isa::Neon && Isa::Neon < Isa::Avx2 && Isa::Avx2 < Isa::Avx512);
        assert!(!describe().is_empty());
        assert!(!has_avx512() || has_avx2());
    }
}
