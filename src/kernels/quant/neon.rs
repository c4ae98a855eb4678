//! The integer products on ARM: each block's Σ q·x in NEON registers (`sdot` where the CPU has
//! the dot product extension, widening multiplies elsewhere), then the block scaled and summed
//! in the portable path's order, so that the result equals `dot_q8_scalar` bit for bit.

use std::arch::aarch64::*;

use super::kind::{Q4_0, Q4_1, Q5_0, Q8_0};
use super::{BlockFormat, Q8Row, QK};

pub(super) fn multiply_row(format: BlockFormat, weights: &[u8], rows: &[Q8Row], out: &mut [f32]) {
    let sdot = crate::kernels::cpu::extensions().dotprod;
    for (o, x) in out.iter_mut().zip(rows) {
        // SAFETY: NEON is AArch64's baseline; `sdot` only where the CPU has it. Every input
        // row has one block of 32 per weight block.
        *o = unsafe { if sdot { dot_sdot(format, weights, x) } else { dot_widening(format, weights, x) } };
    }
}

#[target_feature(enable = "dotprod")]
pub(super) unsafe fn dot_sdot(format: BlockFormat, weights: &[u8], x: &Q8Row) -> f32 {
    // SAFETY: as `multiply_row`'s.
    unsafe { dot::<true>(format, weights, x) }
}

pub(super) unsafe fn dot_widening(format: BlockFormat, weights: &[u8], x: &Q8Row) -> f32 {
    // SAFETY: as `multiply_row`'s.
    unsafe { dot::<false>(format, weights, x) }
}

#[inline(always)]
unsafe fn dot<const SDOT: bool>(format: BlockFormat, weights: &[u8], x: &Q8Row) -> f32 {
    // SAFETY: as `multiply_row`'s.
    unsafe { for_kind!(format, dot_of, [SDOT], (format, weights, x)) }
}

#[inline(always)]
unsafe fn dot_of<const KIND: u8, const SDOT: bool>(format: BlockFormat, weights: &[u8], x: &Q8Row) -> f32 {
    let mut sum = 0.0f32;
    for (b, block) in weights.chunks_exact(format.block_bytes()).enumerate() {
        // SAFETY: a block of `format` and 32 input bytes at `b · QK`.
        unsafe {
            let xq = x.qs.as_ptr().add(b * QK);
            let (x0, x1) = (vld1q_s8(xq), vld1q_s8(xq.add(16)));
            let p = block.as_ptr();
            let ((w0, w1), min) = match KIND {
                Q8_0 => ((vld1q_s8(p.add(2).cast()), vld1q_s8(p.add(18).cast())), None),
                Q4_0 => (nibbles(p.add(2), 8), None),
                Q4_1 => (nibbles(p.add(4), 0), Some(f16_load(p.add(2)))),
                Q5_0 => (five_bits(p.add(2), 16), None),
                _ => (five_bits(p.add(4), 0), Some(f16_load(p.add(2)))),
            };
            let acc = dot16::<SDOT>(dot16::<SDOT>(vdupq_n_s32(0), w0, x0), w1, x1);
            let dot = vaddvq_s32(acc);
            let (xd, xs) = (*x.d.get_unchecked(b), *x.s.get_unchecked(b));
            // The portable path's expression, in its order.
            sum += f16_load(p) * xd * dot as f32 + min.map_or(0.0, |m| m * xs);
        }
    }
    sum
}

/// `acc` plus the sums of four products of `a` and `b` in each lane.
#[inline(always)]
unsafe fn dot16<const SDOT: bool>(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: `sdot` is reached only from `dot_sdot`, compiled for the dot product extension.
    unsafe {
        if SDOT {
            sdot(acc, a, b)
        } else {
            let low = vmull_s8(vget_low_s8(a), vget_low_s8(b));
            let high = vmull_high_s8(a, b);
            vpadalq_s16(vpadalq_s16(acc, low), high)
        }
    }
}

/// `sdot` through inline assembly: its intrinsic (`vdotq_s32`) is not stable Rust yet.
#[target_feature(enable = "dotprod")]
#[inline]
unsafe fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: the CPU has the dot product extension (the caller's target feature).
    unsafe {
        std::arch::asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// The f16 at `p` as f32, by the conversion every AArch64 CPU has (`fcvt`; exact, as
/// `half`'s is): `half` converts in software unless built for FEAT_FP16, a call per block.
#[inline(always)]
unsafe fn f16_load(p: *const u8) -> f32 {
    let out: f32;
    // SAFETY: two readable bytes at `p` (any alignment: `ldr h` of a byte address).
    unsafe {
        std::arch::asm!(
            "ldr {h:h}, [{p}]",
            "fcvt {out:s}, {h:h}",
            p = in(reg) p,
            h = out(vreg) _,
            out = lateout(vreg) out,
            options(pure, readonly, nostack, preserves_flags)
        );
    }
    out
}

/// 16 bytes of nibbles as elements 0..16 (low) and 16..32 (high), less `offset`.
#[inline(always)]
unsafe fn nibbles(qs: *const u8, offset: u8) -> (int8x16_t, int8x16_t) {
    // SAFETY: 16 readable bytes at `qs`.
    unsafe {
        let q = vld1q_u8(qs);
        let low = vsubq_u8(vandq_u8(q, vdupq_n_u8(0x0F)), vdupq_n_u8(offset));
        let high = vsubq_u8(vshrq_n_u8::<4>(q), vdupq_n_u8(offset));
        (vreinterpretq_s8_u8(low), vreinterpretq_s8_u8(high))
    }
}

/// A Q5 block's `qh` (element j's fifth bit at bit j) and nibbles as elements 0..16 and
/// 16..32, less `offset`.
#[inline(always)]
unsafe fn five_bits(qh_qs: *const u8, offset: u8) -> (int8x16_t, int8x16_t) {
    const BIT: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    // SAFETY: 4 bytes of `qh` and 16 of nibbles at `qh_qs`.
    unsafe {
        let qh = std::slice::from_raw_parts(qh_qs, 4);
        let bit = vld1q_u8(BIT.as_ptr());
        // Each byte of `qh` spread over eight lanes, tested against its own bit.
        let fifth = |lo: u8, hi: u8| {
            let spread = vcombine_u8(vdup_n_u8(lo), vdup_n_u8(hi));
            vandq_u8(vtstq_u8(spread, bit), vdupq_n_u8(0x10))
        };
        let q = vld1q_u8(qh_qs.add(4));
        let low = vorrq_u8(vandq_u8(q, vdupq_n_u8(0x0F)), fifth(qh[0], qh[1]));
        let high = vorrq_u8(vshrq_n_u8::<4>(q), fifth(qh[2], qh[3]));
        let offset = vdupq_n_u8(offset);
        (vreinterpretq_s8_u8(vsubq_u8(low, offset)), vreinterpretq_s8_u8(vsubq_u8(high, offset)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{BlockFormat, Q8Row, QK, dot_q8_scalar};
    use super::*;

    /// Both NEON variants (`sdot` where this CPU has it) equal the portable dot bit for bit,
    /// for every format.
    #[test]
    fn neon_kernels_equal_the_scalar_dot_bit_for_bit() {
        let cols = 6 * QK;
        let rows: Vec<Q8Row> =
            (0..5).map(|j| Q8Row::quantize(&crate::formats::blocks::testing::values(cols, j))).collect();
        for format in
            [BlockFormat::Q4_0, BlockFormat::Q4_1, BlockFormat::Q5_0, BlockFormat::Q5_1, BlockFormat::Q8_0]
        {
            let weights = crate::formats::blocks::testing::blocks(format, cols, 99);
            for x in &rows {
                let want = dot_q8_scalar(format, &weights, x);
                // SAFETY: NEON is the baseline.
                assert_eq!(
                    unsafe { dot_widening(format, &weights, x) }.to_bits(),
                    want.to_bits(),
                    "{format}"
                );
                if crate::kernels::cpu::extensions().dotprod {
                    // SAFETY: the CPU has the dot product extension.
                    assert_eq!(
                        unsafe { dot_sdot(format, &weights, x) }.to_bits(),
                        want.to_bits(),
                        "{format} sdot"
                    );
                }
            }
        }
    }
}
