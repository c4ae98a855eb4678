//! EAGLE-3 heads from a SpecForge or vLLM checkpoint folder: config.json and model.safetensors.

use std::path::Path;

use crate::backend::Runtime;
use crate::error::{Error, Result};
use crate::model::{Eagle3Config, Eagle3Head, LlamaConfig};

use super::folder::{Checkpoint, require_dir};

/// Loads the head in `dir` for a target of `target`'s shape on `runtime`. Every tensor must be
/// read: one the config does not explain means config and weights disagree. (`t2d`, the inverse
/// of `d2t`, is not needed.)
pub fn load_head(dir: &Path, target: &LlamaConfig, runtime: &Runtime) -> Result<Eagle3Head> {
    require_dir(dir)?;
    let config = Eagle3Config::from_file(&dir.join("config.json"), target)?;
    let mut source = Checkpoint::open(dir, runtime.device(), runtime.dtype())?;
    let head = Eagle3Head::build(config, &mut source, runtime)?;
    source.ignore(&["t2d"]);
    let unused = source.unused();
    if !unused.is_empty() {
        return Err(Error::UnusedTensors {
            dir: source.dir().to_path_buf(),
            names: unused,
            why: "an EAGLE-3 head holds fc, one midlayer, norm, lm_head, d2t/t2d and perhaps embed_tokens"
                .into(),
        });
    }
    Ok(head)
}
