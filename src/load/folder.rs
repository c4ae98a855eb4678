//! Reads Hugging Face checkpoint folders: `config.json`, `model.safetensors` or a sharded
//! `model.safetensors.index.json`, tensors in F32/F16/BF16 converted to the run's dtype.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use burn::tensor::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::model::config::LlamaConfig;
use crate::model::eagle3::HeadSource;
use crate::model::weights::{HostTensor, Weight, WeightSource, device_tensor, floats_from_le_bytes};

const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";

/// Checks that `dir` is a folder; every loader entry point starts here.
pub fn require_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() { Ok(()) } else { Err(Error::MissingModelDir(dir.to_path_buf())) }
}

pub struct Checkpoint {
    dir: PathBuf,
    shards: Vec<(PathBuf, Mmap)>,
    shard_of: HashMap<String, usize>,
    /// Tensors handed out so far: what is left at the end was not used by the config.
    used: HashSet<String>,
    device: Device,
    dtype: DType,
}

impl Checkpoint {
    /// Maps every shard and checks its header and length, so a truncated file fails here
    /// rather than halfway through loading.
    pub fn open(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        require_dir(dir)?;
        let shard_names = shard_files(dir)?;
        let mut shards = Vec::with_capacity(shard_names.len());
        let mut shard_of = HashMap::new();
        for (index, name) in shard_names.iter().enumerate() {
            let path = dir.join(name);
            let mmap = map_file(&path)?;
            let tensors = SafeTensors::deserialize(&mmap)
                .map_err(|e| Error::CorruptSafetensors { path: path.clone(), message: e.to_string() })?;
            for tensor in tensors.names() {
                shard_of.insert(tensor.to_string(), index);
            }
            shards.push((path, mmap));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            shards,
            shard_of,
            used: HashSet::new(),
            device: device.clone(),
            dtype,
        })
    }
}

fn shard_files(dir: &Path) -> Result<Vec<String>> {
    let index_path = dir.join(INDEX_FILE);
    if index_path.is_file() {
        let text = crate::files::read_text(&index_path)?;
        let malformed = |message: String| Error::MalformedFile { path: index_path.clone(), message };
        let index: serde_json::Value = serde_json::from_str(&text).map_err(|e| malformed(e.to_string()))?;
        let map = index
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| malformed("no `weight_map` object".into()))?;
        let mut files: Vec<String> = map
            .values()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(|| malformed("non-string shard name".into())))
            .collect::<Result<_>>()?;
        files.sort();
        files.dedup();
        for file in &files {
            if !dir.join(file).is_file() {
                return Err(Error::MissingFile {
                    path: dir.join(file),
                    what: "safetensors shard listed in model.safetensors.index.json",
                });
            }
        }
        return Ok(files);
    }
    if dir.join(SINGLE_FILE).is_file() {
        return Ok(vec![SINGLE_FILE.into()]);
    }
    Err(Error::MissingFile {
        path: dir.join(SINGLE_FILE),
        what: "weights (model.safetensors or model.safetensors.index.json)",
    })
}

/// Each weight file's name, size and safetensors header bytes (the 8-byte length and the JSON
/// that follows), for fingerprints; reads no tensor data.
pub fn weight_headers(dir: &Path) -> Result<Vec<(String, u64, Vec<u8>)>> {
    use std::io::Read;
    shard_files(dir)?
        .into_iter()
        .map(|name| {
            let path = dir.join(&name);
            let corrupt =
                |message: &str| Error::CorruptSafetensors { path: path.clone(), message: message.into() };
            let mut file = std::fs::File::open(&path).map_err(crate::files::io_error("open", &path))?;
            let size = file.metadata().map_err(crate::files::io_error("read", &path))?.len();
            let mut length = [0u8; 8];
            file.read_exact(&mut length).map_err(|_| corrupt("shorter than its 8-byte header length"))?;
            let header_len = u64::from_le_bytes(length);
            if header_len > size.saturating_sub(8) {
                return Err(corrupt("header length points past the end of the file"));
            }
            let mut header = length.to_vec();
            header.resize(8 + header_len as usize, 0);
            file.read_exact(&mut header[8..]).map_err(crate::files::io_error("read", &path))?;
            Ok((name, size, header))
        })
        .collect()
}

fn map_file(path: &Path) -> Result<Mmap> {
    let file = std::fs::File::open(path).map_err(crate::files::io_error("open", path))?;
    // SAFETY: the checkpoint is read-only input; specbench never writes it while mapped.
    unsafe { Mmap::map(&file) }.map_err(crate::files::io_error("map", path))
}

impl Checkpoint {
    /// The raw bytes of tensor `name`, checked against `expected` shape.
    fn tensor_bytes(&self, name: &str, expected: &[usize]) -> Result<(Dtype, &[u8])> {
        let &shard = self
            .shard_of
            .get(name)
            .ok_or_else(|| Error::MissingTensor { name: name.to_string(), dir: self.dir.clone() })?;
        let (path, mmap) = &self.shards[shard];
        let corrupt = |e: safetensors::SafeTensorError| Error::CorruptSafetensors {
            path: path.clone(),
            message: e.to_string(),
        };
        let tensors = SafeTensors::deserialize(mmap).map_err(corrupt)?;
        let view = tensors.tensor(name).map_err(corrupt)?;
        if view.shape() != expected {
            return Err(Error::ShapeMismatch {
                name: name.to_string(),
                expected: expected.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        let dtype = view.dtype();
        // The view borrows the header parse; its data lies in the map, which outlives both.
        let offset = view.data().as_ptr() as usize - mmap.as_ptr() as usize;
        Ok((dtype, &mmap[offset..offset + view.data().len()]))
    }
}

impl Checkpoint {
    /// Gives back the map's pages of `bytes` (a slice of one of the shards), once copied out.
    fn release(&self, bytes: &[u8]) {
        let start = bytes.as_ptr() as usize;
        for (_, map) in &self.shards {
            let base = map.as_ptr() as usize;
            if (base..base + map.len()).contains(&start) {
                crate::files::release_mapped(map, start - base..start - base + bytes.len());
            }
        }
    }
}

impl WeightSource for Checkpoint {
    fn load<const D: usize>(&mut self, weight: Weight, config: &LlamaConfig) -> Result<Tensor<D>> {
        let values = self.load_host(weight, config)?.into_f32();
        Ok(device_tensor(weight, config, values, &self.device, self.dtype))
    }

    fn load_host(&mut self, weight: Weight, config: &LlamaConfig) -> Result<HostTensor> {
        let name = weight.hf_name();
        let (dtype, bytes) = self.tensor_bytes(&name, &weight.hf_shape(config))?;
        let values = to_f32(&name, dtype, bytes)?;
        self.release(bytes);
        self.used.insert(name);
        Ok(HostTensor::F32(values))
    }

    /// Every tensor of the checkpoint must have been used: a file with more layers than the
    /// config, or an `lm_head.weight` that a tied config would ignore, means the config does
    /// not describe these weights. (A tied head stored as an exact copy of the embedding is
    /// fine: some exporters write both.)
    fn finish(&mut self, config: &LlamaConfig) -> Result<()> {
        let head = Weight::LmHead.hf_name();
        if config.tie_word_embeddings && self.shard_of.contains_key(&head) {
            let shape = Weight::LmHead.hf_shape(config);
            if self.tensor_bytes(&head, &shape)? != self.tensor_bytes(&Weight::Embed.hf_name(), &shape)? {
                return Err(Error::UnusedTensors {
                    dir: self.dir.clone(),
                    names: vec![head],
                    why: "config.json says tie_word_embeddings = true, so the head is the embedding, \
                          yet the checkpoint holds a different lm_head.weight"
                        .into(),
                });
            }
            self.used.insert(head);
        }
        let mut unused: Vec<String> = self
            .shard_of
            .keys()
            // Old checkpoints store RoPE's inverse frequencies, which the config determines.
            .filter(|name| !self.used.contains(*name) && !name.ends_with("rotary_emb.inv_freq"))
            .cloned()
            .collect();
        if unused.is_empty() {
            return Ok(());
        }
        unused.sort();
        Err(Error::UnusedTensors {
            dir: self.dir.clone(),
            names: unused,
            why: format!(
                "config.json describes {} layers and no other tensors; the checkpoint and its config disagree",
                config.num_hidden_layers
            ),
        })
    }
}

/// An EAGLE-3 head's folder (config.json beside model.safetensors) read by its tensor names.
impl HeadSource for Checkpoint {
    /// Values as stored: f16/bf16 stay in their half type, which the host kernel keeps.
    fn floats(&mut self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let (dtype, bytes) = self.tensor_bytes(name, shape)?;
        let values = to_f32(name, dtype, bytes)?;
        self.used.insert(name.to_string());
        Ok(match dtype {
            Dtype::F16 => HostTensor::Half { values, dtype: DType::F16 },
            Dtype::BF16 => HostTensor::Half { values, dtype: DType::BF16 },
            _ => HostTensor::F32(values),
        })
    }

    fn integers(&mut self, name: &str, len: usize) -> Result<Option<Vec<i64>>> {
        if !self.shard_of.contains_key(name) {
            return Ok(None);
        }
        let (dtype, bytes) = self.tensor_bytes(name, &[len])?;
        let values = match dtype {
            Dtype::I64 => {
                bytes.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))).collect()
            }
            Dtype::I32 => bytes
                .chunks_exact(4)
                .map(|b| i64::from(i32::from_le_bytes(b.try_into().expect("4 bytes"))))
                .collect(),
            other => {
                return Err(Error::UnsupportedTensorDtype {
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        self.used.insert(name.to_string());
        Ok(Some(values))
    }

    fn contains(&self, name: &str) -> bool {
        self.shard_of.contains_key(name)
    }
}

impl Checkpoint {
    /// Marks `names` as read without reading them (tensors a format stores for other tools).
    pub fn ignore(&mut self, names: &[&str]) {
        self.used.extend(names.iter().map(|n| n.to_string()));
    }

    /// The tensors nothing read, sorted.
    pub fn unused(&self) -> Vec<String> {
        let mut unused: Vec<String> =
            self.shard_of.keys().filter(|n| !self.used.contains(*n)).cloned().collect();
        unused.sort();
        unused
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn to_f32(name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    let dtype = match dtype {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        other => {
            return Err(Error::UnsupportedTensorDtype {
                name: name.to_string(),
                dtype: format!("{other:?}"),
            });
        }
    };
    Ok(floats_from_le_bytes(bytes, dtype))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_and_f16_convert_exactly() {
        let one_bf16 = half::bf16::from_f32(1.5).to_bits().to_le_bytes();
        let one_f16 = half::f16::from_f32(-0.25).to_bits().to_le_bytes();
        assert_eq!(to_f32("x", Dtype::BF16, &one_bf16).unwrap(), vec![1.5]);
        assert_eq!(to_f32("x", Dtype::F16, &one_f16).unwrap(), vec![-0.25]);
    }

    #[test]
    fn integer_tensors_are_rejected_by_name() {
        let err = to_f32("model.norm.weight", Dtype::I64, &[0; 8]).unwrap_err().to_string();
        assert!(err.contains("model.norm.weight") && err.contains("I64"), "{err}");
    }
}
