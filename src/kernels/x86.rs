//! x86 helpers that more than one kernel uses (each kernel's own intrinsics stay beside its
//! portable twin, in its file).

use std::arch::x86_64::*;

/// The f16 at `ptr`, converted by F16C in a register (the `half` crate's conversion is an
/// out-of-line call per value, a quarter of the quantized kernels' time when it was used).
///
/// # Safety
/// Two bytes are readable at `ptr`, and the CPU has F16C.
#[inline(always)]
pub(crate) unsafe fn f16_at(ptr: *const u8) -> f32 {
    // SAFETY: the caller's contract.
    unsafe {
        let bits = std::ptr::read_unaligned(ptr as *const u16);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }
}
