//! ggml's block-quantized weight formats as GGUF files store them: the one table of their
//! layouts, dequantization of every format a Llama `Q8_0` / `Q4_0` / `Q4_1` / `Q5_0` / `Q5_1` /
//! `Q4_K_M` / `Q5_K_M` file holds, and ggml's reference quantizers for q8_0 and q4_0
//! (quantize-on-load). Bit-exact to the `gguf` Python package (tests/parity_llamacpp.rs). The
//! products over these blocks are the kernels' business (`kernels::quant`, `kernels::kquant`).

use half::f16;

/// Elements per block of the 32-element formats (and of the 8-bit activation blocks).
pub const QK: usize = 32;
/// Elements per super-block of the K-quants.
pub const QK_K: usize = 256;

/// A ggml block format. The discriminants are ggml's type ids, as GGUF stores them.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockFormat {
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
}

/// A format's name and block size in elements and bytes.
struct Layout {
    name: &'static str,
    block_len: usize,
    block_bytes: usize,
    scales: &'static [usize],
}

impl BlockFormat {
    pub const ALL: [BlockFormat; 8] =
        [Self::Q4_0, Self::Q4_1, Self::Q5_0, Self::Q5_1, Self::Q8_0, Self::Q4_K, Self::Q5_K, Self::Q6_K];

    pub fn from_ggml_type(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|f| *f as u32 == id)
    }

    /// The one table of the formats' layouts, as ggml's `type_traits` gives them.
    const fn layout(self) -> Layout {
        // Name, elements and bytes per block, and where in a block its f16 scales (d, and the
        // minimum or dmin where there is one) lie.
        let (name, block_len, block_bytes, scales): (_, _, _, &'static [usize]) = match self {
            Self::Q4_0 => ("q4_0", QK, 2 + QK / 2, &[0]),
            Self::Q4_1 => ("q4_1", QK, 4 + QK / 2, &[0, 2]),
            Self::Q5_0 => ("q5_0", QK, 2 + 4 + QK / 2, &[0]),
            Self::Q5_1 => ("q5_1", QK, 4 + 4 + QK / 2, &[0, 2]),
            Self::Q8_0 => ("q8_0", QK, 2 + QK, &[0]),
            Self::Q4_K => ("q4_k", QK_K, 4 + 12 + QK_K / 2, &[0, 2]),
            Self::Q5_K => ("q5_k", QK_K, 4 + 12 + QK_K / 8 + QK_K / 2, &[0, 2]),
            Self::Q6_K => {
                ("q6_k", QK_K, QK_K / 2 + QK_K / 4 + QK_K / 16 + 2, &[QK_K / 2 + QK_K / 4 + QK_K / 16])
            }
        };
        Layout { name, block_len, block_bytes, scales }
    }

    pub fn name(self) -> &'static str {
        self.layout().name
    }

    /// Elements per block.
    pub fn block_len(self) -> usize {
        self.layout().block_len
    }

    /// Bytes per block (ggml's `type_size`).
    pub fn block_bytes(self) -> usize {
        self.layout().block_bytes
    }

    /// Whether every block's f16 scales are finite: a NaN or infinite scale would reach the
    /// integer kernels as an ordinary-looking product.
    pub fn scales_finite(self, blocks: &[u8]) -> bool {
        let layout = self.layout();
        blocks
            .chunks_exact(layout.block_bytes)
            .all(|block| layout.scales.iter().all(|&at| f16_at(block, at).is_finite()))
    }

    /// Bytes of `elements` values, or `None` when they do not fill whole blocks.
    pub fn bytes_for(self, elements: usize) -> Option<usize> {
        elements.is_multiple_of(self.block_len()).then(|| elements / self.block_len() * self.block_bytes())
    }

    /// Bits per weight, scales included.
    pub fn bits_per_weight(self) -> f64 {
        (self.block_bytes() * 8) as f64 / self.block_len() as f64
    }

    /// Dequantizes whole blocks: `out.len()` elements from `blocks`.
    pub fn dequantize(self, blocks: &[u8], out: &mut [f32]) {
        let (len, bytes) = (self.block_len(), self.block_bytes());
        assert_eq!(blocks.len() / bytes * len, out.len(), "{} blocks and output disagree", self.name());
        for (block, out) in blocks.chunks_exact(bytes).zip(out.chunks_exact_mut(len)) {
            match self {
                Self::Q4_0 => dequantize_q4_0(block, out),
                Self::Q4_1 => dequantize_q4_1(block, out),
                Self::Q5_0 => dequantize_q5(block, out, false),
                Self::Q5_1 => dequantize_q5(block, out, true),
                Self::Q8_0 => dequantize_q8_0(block, out),
                Self::Q4_K => dequantize_q4_k(block, out),
                Self::Q5_K => dequantize_q5_k(block, out),
                Self::Q6_K => dequantize_q6_k(block, out),
            }
        }
    }

    /// ggml's reference quantizer, for the formats specbench quantizes on load.
    pub fn quantize(self, values: &[f32]) -> Option<Vec<u8>> {
        if !values.len().is_multiple_of(self.block_len()) {
            return None;
        }
        let blocks = values.chunks_exact(QK);
        match self {
            Self::Q8_0 => Some(blocks.flat_map(quantize_q8_0_block).collect()),
            Self::Q4_0 => Some(blocks.flat_map(quantize_q4_0_block).collect()),
            _ => None,
        }
    }
}

impl std::fmt::Display for BlockFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

pub fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

fn dequantize_q4_0(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    for (j, &q) in block[2..18].iter().enumerate() {
        out[j] = d * ((q & 0x0F) as i32 - 8) as f32;
        out[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
    }
}

fn dequantize_q4_1(block: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(block, 0), f16_at(block, 2));
    for (j, &q) in block[4..20].iter().enumerate() {
        out[j] = d * (q & 0x0F) as f32 + m;
        out[j + 16] = d * (q >> 4) as f32 + m;
    }
}

/// Q5_0 (`d · (q − 16)`) and Q5_1 (`d · q + m`): a fifth bit per element in a 32-bit mask.
fn dequantize_q5(block: &[u8], out: &mut [f32], with_min: bool) {
    let d = f16_at(block, 0);
    let (m, rest) = if with_min { (f16_at(block, 2), &block[4..]) } else { (0.0, &block[2..]) };
    let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
    for (j, &q) in rest[4..20].iter().enumerate() {
        let low = (q & 0x0F) as i32 | ((((qh >> j) & 1) << 4) as i32);
        let high = (q >> 4) as i32 | ((((qh >> (j + 16)) & 1) << 4) as i32);
        if with_min {
            out[j] = d * low as f32 + m;
            out[j + 16] = d * high as f32 + m;
        } else {
            out[j] = d * (low - 16) as f32;
            out[j + 16] = d * (high - 16) as f32;
        }
    }
}

fn dequantize_q8_0(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    for (o, &q) in out.iter_mut().zip(&block[2..34]) {
        *o = d * q as i8 as f32;
    }
}

/// The 6-bit scale and min of sub-block `j` (of 8) packed in the K-quants' 12 scale bytes.
pub fn scale_min_k4(j: usize, scales: &[u8]) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        ((scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4), (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4))
    }
}

fn dequantize_q4_k(block: &[u8], out: &mut [f32]) {
    let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
    let (scales, qs) = (&block[4..16], &block[16..144]);
    for (chunk, (q, out)) in qs.chunks_exact(32).zip(out.chunks_exact_mut(64)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, min1, d2, min2) = (d * sc1 as f32, dmin * m1 as f32, d * sc2 as f32, dmin * m2 as f32);
        for l in 0..32 {
            out[l] = d1 * (q[l] & 0x0F) as f32 - min1;
            out[l + 32] = d2 * (q[l] >> 4) as f32 - min2;
        }
    }
}

fn dequantize_q5_k(block: &[u8], out: &mut [f32]) {
    let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
    let (scales, qh, qs) = (&block[4..16], &block[16..48], &block[48..176]);
    for (chunk, (q, out)) in qs.chunks_exact(32).zip(out.chunks_exact_mut(64)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, min1, d2, min2) = (d * sc1 as f32, dmin * m1 as f32, d * sc2 as f32, dmin * m2 as f32);
        let (bit_low, bit_high) = (1u8 << (2 * chunk), 1u8 << (2 * chunk + 1));
        for l in 0..32 {
            let high_low = if qh[l] & bit_low != 0 { 16 } else { 0 };
            let high_high = if qh[l] & bit_high != 0 { 16 } else { 0 };
            out[l] = d1 * ((q[l] & 0x0F) + high_low) as f32 - min1;
            out[l + 32] = d2 * ((q[l] >> 4) + high_high) as f32 - min2;
        }
    }
}

fn dequantize_q6_k(block: &[u8], out: &mut [f32]) {
    let (ql, qh, scales) = (&block[..128], &block[128..192], &block[192..208]);
    let d = f16_at(block, 208);
    for half in 0..2 {
        let (ql, qh, sc) = (&ql[64 * half..], &qh[32 * half..], &scales[8 * half..]);
        let out = &mut out[128 * half..];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            out[l] = d * sc[is] as i8 as f32 * q1 as f32;
            out[l + 32] = d * sc[is + 2] as i8 as f32 * q2 as f32;
            out[l + 64] = d * sc[is + 4] as i8 as f32 * q3 as f32;
            out[l + 96] = d * sc[is + 6] as i8 as f32 * q4 as f32;
        }
    }
}

/// `1 / d`, or 0 for an all-zero block, as ggml computes it (in f32).
fn inverse(d: f32) -> f32 {
    if d == 0.0 { 0.0 } else { 1.0 / d }
}

/// ggml's `quantize_row_q8_0_ref`: `d = max|x| / 127`, `q = round(x / d)` half away from zero.
fn quantize_q8_0_block(x: &[f32]) -> Vec<u8> {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    let mut block = f16::from_f32(d).to_le_bytes().to_vec();
    block.extend(x.iter().map(|&v| (v * id).round() as i8 as u8));
    block
}

/// ggml's `quantize_row_q4_0_ref`: the value of largest magnitude (the first, on ties) maps
/// to −8, `q = min(15, trunc(x / d + 8.5))`.
fn quantize_q4_0_block(x: &[f32]) -> Vec<u8> {
    let max = x.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let d = max / -8.0;
    let id = inverse(d);
    let q = |v: f32| ((v * id + 8.5).trunc() as u8).min(15);
    let mut block = f16::from_f32(d).to_le_bytes().to_vec();
    block.extend((0..QK / 2).map(|j| q(x[j]) | (q(x[j + QK / 2]) << 4)));
    block
}

/// Test data for the format and kernel tests.
#[cfg(test)]
pub mod testing {
    use super::*;

    pub fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0).collect()
    }

    /// `cols` elements of `format` blocks with pseudo-random quants in every bit (any bytes are
    /// valid blocks) and small f16 scales and minimums.
    pub fn blocks(format: BlockFormat, cols: usize, seed: u32) -> Vec<u8> {
        let header = match format {
            BlockFormat::Q4_1 | BlockFormat::Q5_1 => 4,
            _ => 2,
        };
        let mut bytes = Vec::new();
        for b in 0..cols / format.block_len() {
            bytes.extend(f16::from_f32(0.01 + 0.001 * b as f32).to_le_bytes());
            if header == 4 {
                bytes.extend(f16::from_f32(-0.07).to_le_bytes());
            }
            let noise = values(format.block_bytes() - header, seed + b as u32);
            bytes.extend(noise.iter().map(|v| ((v + 1.0) * 127.9) as u8));
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::testing::values;
    use super::*;

    #[test]
    fn a_non_finite_scale_is_found_in_every_format() {
        for format in BlockFormat::ALL {
            let mut data = testing::blocks(format, 2 * format.block_len(), 1);
            assert!(format.scales_finite(&data), "{format}");
            let last_scale = *format.layout().scales.last().unwrap();
            data[format.block_bytes() + last_scale..][..2].copy_from_slice(&f16::NAN.to_le_bytes());
            assert!(!format.scales_finite(&data), "{format}");
        }
    }

    #[test]
    fn block_sizes_are_ggmls() {
        let sizes: Vec<usize> = BlockFormat::ALL.iter().map(|f| f.block_bytes()).collect();
        assert_eq!(sizes, [18, 20, 22, 24, 34, 144, 176, 210]);
        assert_eq!(BlockFormat::from_ggml_type(12), Some(BlockFormat::Q4_K));
        assert_eq!(BlockFormat::from_ggml_type(10), None, "Q2_K is not supported");
    }

    #[test]
    fn quantizing_then_dequantizing_stays_within_a_step() {
        let x = values(4 * QK, 3);
        for format in [BlockFormat::Q8_0, BlockFormat::Q4_0] {
            let blocks = format.quantize(&x).unwrap();
            let mut back = vec![0.0; x.len()];
            format.dequantize(&blocks, &mut back);
            // q8_0 rounds to half a step of max/127; q4_0's top value clips to 7 steps of max/8
            // where the other extreme would need 8, a whole step.
            let bound = if format == BlockFormat::Q8_0 { 0.51 / 127.0 } else { 1.0 / 8.0 };
            for (a, b) in x.iter().zip(&back) {
                assert!((a - b).abs() <= bound + 1e-3, "{format}: {a} vs {b}");
            }
        }
    }
}
