//! Attention's two inner loops over the cached positions, four positions at a time: a query
//! against four keys, and four weighted values added into the output. One position at a time,
//! each dot product is a single dependency chain waiting on its own latency and each value
//! reloads and stores the whole output; four at a time keeps the FMA units busy (the embedded
//! target's attention, a third of a decode step at 190 cached positions, ran at a tenth of
//! what the FMA units allow).

/// `a · b[j]` for each of the four vectors, all as long as `a`.
#[inline(always)]
pub fn dot4(a: &[f32], b: [&[f32]; 4]) -> [f32; 4] {
    assert!(b.iter().all(|b| b.len() == a.len()), "dot4 of unequal lengths");
    #[cfg(target_arch = "x86_64")]
    if a.len().is_multiple_of(8) && crate::kernels::cpu::has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA; every vector holds whole 8-lane chunks.
        return unsafe { avx2::dot4(a, b) };
    }
    b.map(|b| super::dot(a, b))
}

/// `out += Σ_j w[j] · v[j]`, every `v[j]` as long as `out`.
#[inline(always)]
pub fn add_weighted4(out: &mut [f32], w: [f32; 4], v: [&[f32]; 4]) {
    assert!(v.iter().all(|v| v.len() == out.len()), "add_weighted4 of unequal lengths");
    #[cfg(target_arch = "x86_64")]
    if out.len().is_multiple_of(8) && crate::kernels::cpu::has_avx2() {
        // SAFETY: as in `dot4`.
        return unsafe { avx2::add_weighted4(out, w, v) };
    }
    for (e, o) in out.iter_mut().enumerate() {
        *o += w[0] * v[0][e] + w[1] * v[1][e] + w[2] * v[2][e] + w[3] * v[3][e];
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Callers guarantee lengths equal to `a`'s, a multiple of 8.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot4(a: &[f32], b: [&[f32]; 4]) -> [f32; 4] {
        let mut acc = [_mm256_setzero_ps(); 4];
        for c in (0..a.len()).step_by(8) {
            // SAFETY: c + 8 ≤ len for every vector.
            unsafe {
                let x = _mm256_loadu_ps(a.as_ptr().add(c));
                for (acc, b) in acc.iter_mut().zip(b) {
                    *acc = _mm256_fmadd_ps(x, _mm256_loadu_ps(b.as_ptr().add(c)), *acc);
                }
            }
        }
        acc.map(|v| {
            let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
            _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
        })
    }

    /// Callers guarantee lengths equal to `out`'s, a multiple of 8.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn add_weighted4(out: &mut [f32], w: [f32; 4], v: [&[f32]; 4]) {
        let w = w.map(|w| _mm256_set1_ps(w));
        for c in (0..out.len()).step_by(8) {
            // SAFETY: c + 8 ≤ len for every vector.
            unsafe {
                let mut o = _mm256_loadu_ps(out.as_ptr().add(c));
                for (w, v) in w.iter().zip(v) {
                    o = _mm256_fmadd_ps(*w, _mm256_loadu_ps(v.as_ptr().add(c)), o);
                }
                _mm256_storeu_ps(out.as_mut_ptr().add(c), o);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vectors(len: usize) -> (Vec<f32>, Vec<Vec<f32>>) {
        let a = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
        let b = (0..4).map(|j| (0..len).map(|i| ((i * (j + 2)) as f32 * 0.11).cos()).collect()).collect();
        (a, b)
    }

    /// 64 takes the vector path where the CPU has one, 37 the portable one.
    #[test]
    fn four_at_a_time_equals_one_at_a_time_in_f64() {
        for len in [64, 37] {
            let (a, b) = vectors(len);
            let b4 = [&b[0][..], &b[1], &b[2], &b[3]];
            for (got, b) in dot4(&a, b4).iter().zip(&b) {
                let want: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
                assert!((*got as f64 - want).abs() < 1e-5, "len {len}: {got} vs {want}");
            }
            let w = [0.5, -0.25, 0.125, 2.0];
            let mut out = a.clone();
            add_weighted4(&mut out, w, b4);
            for (e, got) in out.iter().enumerate() {
                let want = a[e] as f64 + (0..4).map(|j| w[j] as f64 * b[j][e] as f64).sum::<f64>();
                assert!((*got as f64 - want).abs() < 1e-5, "len {len}, element {e}: {got} vs {want}");
            }
        }
    }
}
