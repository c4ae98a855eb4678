//! The GGUF container (versions 2 and 3): header, metadata key–values, tensor infos and the
//! aligned data section, read from a memory map without copying tensor data.
//!
//! Written here rather than taken from a crate: candle-core's `gguf_file` (the most used Rust
//! reader) would bring a second tensor library and its gemm into a build that already takes most
//! of CI's time, and its quantized kernels work on its own tensors, not on the host buffers our
//! kernels multiply. The format is small: every length and count below is checked against the
//! bytes that remain, and every tensor against the file's size, before anything is allocated.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::formats::BlockFormat;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// A non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(values) => Some(values),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }
}

/// How a tensor's elements are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    F32,
    F16,
    Bf16,
    Blocks(BlockFormat),
}

impl TensorType {
    fn from_ggml(id: u32) -> Option<Self> {
        match id {
            0 => Some(Self::F32),
            1 => Some(Self::F16),
            30 => Some(Self::Bf16),
            other => BlockFormat::from_ggml_type(other).map(Self::Blocks),
        }
    }

    /// ggml's id of the type, as a file stores it.
    pub fn ggml_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Bf16 => 30,
            Self::Blocks(format) => format as u32,
        }
    }

    /// Bytes of `elements` values, `None` when they do not fill whole blocks.
    fn bytes_for(self, elements: u64) -> Option<u64> {
        match self {
            Self::F32 => elements.checked_mul(4),
            Self::F16 | Self::Bf16 => elements.checked_mul(2),
            Self::Blocks(format) => {
                let len = format.block_len() as u64;
                elements.is_multiple_of(len).then(|| elements / len * format.block_bytes() as u64)
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::Blocks(format) => format.name(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// ggml's order: `dims[0]` is the contiguous one (a PyTorch `[out, in]` matrix is `[in, out]`).
    pub dims: Vec<u64>,
    pub kind: TensorType,
    /// Absolute byte range in the file.
    start: usize,
    len: usize,
}

impl TensorInfo {
    /// Where its bytes lie in the file.
    pub fn byte_range(&self) -> std::ops::Range<usize> {
        self.start..self.start + self.len
    }
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The shape as PyTorch writes it: `dims` reversed.
    pub fn torch_shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed, memory-mapped GGUF file.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, TensorInfo>,
    /// Where the aligned data section starts.
    data_start: usize,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GgufFile({}, {} tensors)", self.path.display(), self.tensors.len())
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(crate::files::io_error("open", path))?;
        // SAFETY: the checkpoint is read-only input; specbench never writes it while mapped.
        let map = unsafe { Mmap::map(&file) }.map_err(crate::files::io_error("map", path))?;
        let Parsed { version, metadata, tensors, data_start } =
            parse(&map).map_err(|message| Error::Gguf { path: path.into(), message })?;
        Ok(Self { path: path.to_path_buf(), map, version, metadata, tensors, data_start })
    }

    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        self.map.len() as u64
    }

    /// Everything before the tensor data: header, metadata and tensor infos.
    pub fn header_bytes(&self) -> &[u8] {
        &self.map[..self.data_start.min(self.map.len())]
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An error about this file.
    pub fn error(&self, message: impl Into<String>) -> Error {
        Error::Gguf { path: self.path.clone(), message: message.into() }
    }

    /// The bytes of tensor `name`.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        &self.map[info.start..info.start + info.len]
    }

    /// The bytes of a tensor handed to `take` a few MiB at a time (each a whole number of
    /// 4-byte words), each piece's pages given back to the system once taken: the file's pages
    /// and their copy are never both resident for more than one piece.
    pub fn read_out(&self, info: &TensorInfo, mut take: impl FnMut(&[u8])) {
        const PIECE: usize = 4 << 20;
        for (i, piece) in self.tensor_data(info).chunks(PIECE).enumerate() {
            take(piece);
            let start = info.start + i * PIECE;
            crate::files::release_mapped(&self.map, start..start + piece.len());
        }
    }

    /// A copy of the bytes of a tensor (see `read_out`).
    pub fn copy_out(&self, info: &TensorInfo) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(info.len);
        self.read_out(info, |piece| bytes.extend_from_slice(piece));
        bytes
    }
}

/// A parsed header.
#[derive(Debug)]
pub struct Parsed {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, TensorInfo>,
    pub data_start: usize,
}

/// Parses a whole file image; the message names the key or tensor that is wrong.
pub fn parse(bytes: &[u8]) -> std::result::Result<Parsed, String> {
    let mut cursor = Cursor { bytes, at: 0, values_left: MAX_METADATA_VALUES };
    if cursor.take(4).map_err(|_| "shorter than the 4-byte magic".to_string())? != MAGIC {
        return Err("not a GGUF file (the magic is not `GGUF`)".into());
    }
    let version = cursor.u32().map_err(|e| format!("header: {e}"))?;
    if !(2..=3).contains(&version) {
        return Err(format!("GGUF version {version} is not supported (2 and 3 are)"));
    }
    let tensor_count = cursor.count("tensor count", 8)?;
    if tensor_count > MAX_TENSORS {
        return Err(format!("tensor count {tensor_count} is past the {MAX_TENSORS} specbench reads"));
    }
    let kv_count = cursor.count("metadata count", 8)?;
    let mut metadata = BTreeMap::new();
    for i in 0..kv_count {
        let key = cursor.string().map_err(|e| format!("metadata key {i}: {e}"))?;
        if key.chars().any(char::is_control) {
            return Err(format!("metadata key {i}: the key {key:?} holds a control character"));
        }
        let kind = cursor.u32().map_err(|e| format!("metadata `{key}`: {e}"))?;
        let value = cursor.value(kind, 0).map_err(|e| format!("metadata `{key}`: {e}"))?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(format!("metadata key `{key}` appears twice"));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(value) => match value.as_u64() {
            Some(a) if a.is_power_of_two() => a,
            _ => return Err(format!("metadata `general.alignment` = {value:?} is not a power of two")),
        },
    };
    let mut infos = Vec::with_capacity(tensor_count.min(RESERVE_AHEAD));
    for i in 0..tensor_count {
        let name = cursor.string().map_err(|e| format!("tensor info {i}: {e}"))?;
        if name.chars().any(char::is_control) {
            return Err(format!("tensor info {i}: the name {name:?} holds a control character"));
        }
        let info = cursor.tensor_info().map_err(|e| format!("tensor `{name}`: {e}"))?;
        infos.push((name, info));
    }
    let data_start = (cursor.at as u64).div_ceil(alignment) * alignment;
    let mut tensors = BTreeMap::new();
    for (name, (dims, kind, offset)) in infos {
        let info = locate(bytes.len() as u64, data_start, alignment, dims, kind, offset)
            .map_err(|e| format!("tensor `{name}`: {e}"))?;
        if tensors.insert(name.clone(), info).is_some() {
            return Err(format!("tensor `{name}` appears twice"));
        }
    }
    check_no_overlap(&tensors)?;
    Ok(Parsed { version, metadata, tensors, data_start: data_start as usize })
}

/// Two tensors whose bytes overlap would read each other's weights: a crafted or damaged file.
fn check_no_overlap(tensors: &BTreeMap<String, TensorInfo>) -> std::result::Result<(), String> {
    let mut spans: Vec<(&str, usize, usize)> = tensors
        .iter()
        .filter(|(_, t)| t.len > 0)
        .map(|(name, t)| (name.as_str(), t.start, t.start + t.len))
        .collect();
    spans.sort_by_key(|&(_, start, _)| start);
    for pair in spans.windows(2) {
        let ((a, _, a_end), (b, b_start, _)) = (pair[0], pair[1]);
        if b_start < a_end {
            return Err(format!("tensors `{a}` and `{b}` overlap in the data section"));
        }
    }
    Ok(())
}

/// Checks a tensor's type, size and place in the data section.
fn locate(
    file_len: u64,
    data_start: u64,
    alignment: u64,
    dims: Vec<u64>,
    kind: u32,
    offset: u64,
) -> std::result::Result<TensorInfo, String> {
    let kind = TensorType::from_ggml(kind).ok_or_else(|| {
        format!("ggml tensor type {kind} is not supported (f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q5_k, q6_k are)")
    })?;
    let elements = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d)).ok_or("its dimensions overflow")?;
    if let TensorType::Blocks(format) = kind
        && !dims[0].is_multiple_of(format.block_len() as u64)
    {
        return Err(format!(
            "rows of {} elements do not fill whole {format} blocks of {}",
            dims[0],
            format.block_len()
        ));
    }
    let len = kind
        .bytes_for(elements)
        .ok_or_else(|| format!("{elements} elements do not fill whole {} blocks", kind.name()))?;
    if !offset.is_multiple_of(alignment) {
        return Err(format!("offset {offset} is not aligned to {alignment}"));
    }
    let start = data_start.checked_add(offset).ok_or("offset overflows")?;
    let end = start.checked_add(len).ok_or("size overflows")?;
    if end > file_len {
        return Err(format!(
            "its {len} bytes at {start} reach past the end of the file ({file_len} bytes): truncated?"
        ));
    }
    Ok(TensorInfo { dims, kind, start: start as usize, len: len as usize })
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Metadata values still allowed (`MAX_METADATA_VALUES`).
    values_left: usize,
}

/// Arrays nested deeper than this are refused (GGUF files use one level).
const MAX_NESTING: usize = 4;
/// The most metadata values (array items included) a file may hold: each is held at 32 bytes
/// (and a string's bytes) however few it takes in the file, so this bounds metadata memory to
/// about 200 MB. Llama 3's tokenizer (128k tokens, 280k merges, their types) holds 0.54M.
pub const MAX_METADATA_VALUES: usize = 1 << 22;
/// The most tensors a file may describe; real models have thousands.
pub const MAX_TENSORS: usize = 1 << 20;
/// Items reserved ahead of reading them: a count is only trusted as far as its bytes are read.
const RESERVE_AHEAD: usize = 1 << 12;

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let remaining = self.bytes.len() - self.at;
        if n > remaining {
            return Err(format!(
                "needs {n} bytes at offset {} but the file ends {remaining} bytes later",
                self.at
            ));
        }
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A count of items that take at least `min_bytes` each: more than the rest of the file
    /// could hold is a damaged file, refused before anything is allocated for it.
    fn count(&mut self, what: &str, min_bytes: usize) -> std::result::Result<usize, String> {
        let n = self.u64().map_err(|e| format!("{what}: {e}"))?;
        let remaining = (self.bytes.len() - self.at) as u64;
        if n.saturating_mul(min_bytes as u64) > remaining {
            return Err(format!("{what} {n} cannot fit in the {remaining} bytes that remain"));
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        let len = self.count("string length", 1)?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a string is not UTF-8".to_string())
    }

    fn value(&mut self, kind: u32, depth: usize) -> std::result::Result<Value, String> {
        self.values_left = self.values_left.checked_sub(1).ok_or_else(|| {
            format!(
                "the metadata holds more than {MAX_METADATA_VALUES} values, past the limit specbench reads"
            )
        })?;
        Ok(match kind {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(self.array::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                other => return Err(format!("boolean byte {other}")),
            },
            8 => Value::String(self.string()?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err(format!("arrays nested more than {MAX_NESTING} deep"));
                }
                let item_kind = self.u32()?;
                let min_bytes = match item_kind {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    _ => 8,
                };
                let n = self.count("array length", min_bytes)?;
                let mut items = Vec::with_capacity(n.min(RESERVE_AHEAD));
                for _ in 0..n {
                    items.push(self.value(item_kind, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(format!("unknown value type {other}")),
        })
    }

    fn tensor_info(&mut self) -> std::result::Result<(Vec<u64>, u32, u64), String> {
        let n_dims = self.u32()?;
        if !(1..=4).contains(&n_dims) {
            return Err(format!("{n_dims} dimensions (ggml tensors have 1 to 4)"));
        }
        let dims = (0..n_dims).map(|_| self.u64()).collect::<std::result::Result<Vec<_>, _>>()?;
        Ok((dims, self.u32()?, self.u64()?))
    }
}

/// Writes GGUF files: what the tests build their small files and damaged files with.
/// Writing GGUF files (version 3, default alignment), for fixtures and the fuzzer: what `parse`
/// reads, `write::to_bytes` writes back.
pub mod write {
    use super::Value;
    use crate::formats::BlockFormat;

    /// A tensor to write: ggml-order dims and raw bytes of type `ggml_type`.
    #[derive(Debug, Clone)]
    pub struct Tensor {
        pub name: String,
        pub dims: Vec<u64>,
        pub ggml_type: u32,
        pub data: Vec<u8>,
    }

    impl Tensor {
        pub fn f32(name: &str, dims: &[u64], values: &[f32]) -> Self {
            let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            Self { name: name.into(), dims: dims.to_vec(), ggml_type: 0, data }
        }

        pub fn blocks(name: &str, dims: &[u64], format: BlockFormat, data: Vec<u8>) -> Self {
            Self { name: name.into(), dims: dims.to_vec(), ggml_type: format as u32, data }
        }
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    fn value(out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U8(x) => out.push(*x),
            Value::I8(x) => out.push(*x as u8),
            Value::U16(x) => out.extend(x.to_le_bytes()),
            Value::I16(x) => out.extend(x.to_le_bytes()),
            Value::U32(x) => out.extend(x.to_le_bytes()),
            Value::I32(x) => out.extend(x.to_le_bytes()),
            Value::U64(x) => out.extend(x.to_le_bytes()),
            Value::I64(x) => out.extend(x.to_le_bytes()),
            Value::F32(x) => out.extend(x.to_le_bytes()),
            Value::F64(x) => out.extend(x.to_le_bytes()),
            Value::Bool(x) => out.push(*x as u8),
            Value::String(s) => string(out, s),
            Value::Array(items) => {
                let kind = items.first().map_or(4, kind_of);
                out.extend(kind.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|item| value(out, item));
            }
        }
    }

    fn kind_of(v: &Value) -> u32 {
        match v {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    /// A version-3 file with 32-byte alignment.
    /// A whole file: header, metadata, tensor infos, and the data aligned to 32 bytes.
    pub fn to_bytes(metadata: &[(&str, Value)], tensors: &[Tensor]) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((tensors.len() as u64).to_le_bytes());
        out.extend((metadata.len() as u64).to_le_bytes());
        for (key, v) in metadata {
            string(&mut out, key);
            out.extend(kind_of(v).to_le_bytes());
            value(&mut out, v);
        }
        let mut offset = 0u64;
        for t in tensors {
            string(&mut out, &t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            t.dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
            out.extend(t.ggml_type.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset += (t.data.len() as u64).div_ceil(32) * 32;
        }
        out.resize(out.len().div_ceil(32) * 32, 0);
        for t in tensors {
            out.extend(&t.data);
            out.resize(out.len().div_ceil(32) * 32, 0);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::write::{Tensor, to_bytes};
    use super::*;

    fn sample() -> Vec<u8> {
        let blocks = BlockFormat::Q8_0.quantize(&[0.5; 64]).unwrap();
        to_bytes(
            &[
                ("general.architecture", Value::String("llama".into())),
                ("llama.block_count", Value::U32(2)),
                (
                    "tokenizer.ggml.tokens",
                    Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
                ),
            ],
            &[
                Tensor::f32("norm", &[3], &[1.0, 2.0, 3.0]),
                Tensor::blocks("w", &[32, 2], BlockFormat::Q8_0, blocks),
            ],
        )
    }

    #[test]
    fn a_written_file_reads_back() {
        let Parsed { version, metadata, tensors, .. } = parse(&sample()).unwrap();
        assert_eq!(version, 3);
        assert_eq!(metadata["llama.block_count"].as_u64(), Some(2));
        assert_eq!(metadata["tokenizer.ggml.tokens"].as_array().unwrap().len(), 2);
        assert_eq!(tensors["w"].kind, TensorType::Blocks(BlockFormat::Q8_0));
        assert_eq!(tensors["w"].torch_shape(), vec![2, 32]);
        assert_eq!(tensors["norm"].len, 12);
    }

    #[test]
    fn bad_magic_version_type_and_truncation_are_named() {
        let good = sample();
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        assert!(parse(&bad_magic).unwrap_err().contains("magic"));
        let mut bad_version = good.clone();
        bad_version[4] = 9;
        assert!(parse(&bad_version).unwrap_err().contains("version 9"));
        let truncated = &good[..good.len() - 40];
        let err = parse(truncated).unwrap_err();
        assert!(err.contains("tensor `w`") && err.contains("truncated"), "{err}");
        let err = parse(&good[..30]).unwrap_err();
        assert!(err.contains("tensor count 2 cannot fit"), "{err}");
    }

    #[test]
    fn an_unknown_tensor_type_is_named() {
        let bytes =
            to_bytes(&[], &[Tensor { name: "x".into(), dims: vec![256], ggml_type: 10, data: vec![0; 84] }]);
        let err = parse(&bytes).unwrap_err();
        assert!(err.contains("tensor `x`") && err.contains("type 10"), "{err}");
    }

    #[test]
    fn huge_claimed_lengths_fail_without_allocating() {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(0u64.to_le_bytes());
        bytes.extend(1u64.to_le_bytes());
        bytes.extend(u64::MAX.to_le_bytes()); // key length
        let err = parse(&bytes).unwrap_err();
        assert!(err.contains("string length"), "{err}");
    }

    #[test]
    fn metadata_past_its_value_limit_is_refused_not_held() {
        // One u8 array one item longer than the limit allows: 4 MiB in the file, 128 MiB if held.
        let items = vec![Value::U8(1); MAX_METADATA_VALUES];
        let bytes = to_bytes(&[("big", Value::Array(items))], &[]);
        let err = parse(&bytes).unwrap_err();
        assert!(err.contains("more than") && err.contains("values"), "{err}");
    }

    #[test]
    fn overlapping_tensors_and_oversized_counts_are_errors() {
        let tensor =
            |name: &str| Tensor { name: name.into(), dims: vec![32], ggml_type: 0, data: vec![0; 128] };
        let mut bytes = to_bytes(&[], &[tensor("a"), tensor("b")]);
        // Point `b` at `a`'s bytes: its info is the name, one dimension, the type, the offset.
        let b_name = bytes.windows(2).rposition(|w| w == b"b\x01").expect("b's info: name then 1 dim");
        let b_offset = b_name + 1 + 4 + 8 + 4;
        bytes[b_offset..b_offset + 8].copy_from_slice(&0u64.to_le_bytes());
        assert!(parse(&bytes).unwrap_err().contains("overlap"), "{:?}", parse(&bytes).err());
        // A tensor count past the limit is refused before anything is reserved for it.
        let mut counted = to_bytes(&[], &[]);
        counted[8..16].copy_from_slice(&((MAX_TENSORS as u64) + 1).to_le_bytes());
        counted.resize(counted.len() + 8 * (MAX_TENSORS + 1), 0);
        assert!(parse(&counted).unwrap_err().contains("tensor count"), "{:?}", parse(&counted).err());
    }

    #[test]
    fn every_single_byte_mutation_and_truncation_is_an_error_or_a_file_never_a_panic() {
        let good = sample();
        for at in 0..good.len() {
            for flip in [0x01u8, 0x80, 0xFF] {
                let mut bytes = good.clone();
                bytes[at] ^= flip;
                let _ = parse(&bytes);
            }
            let _ = parse(&good[..at]);
        }
    }
}
