//! Structure-aware fuzzing of GGUF loading: a small valid file (the embedded target in q4_0, as
//! llama.cpp wrote it) is decoded, damaged where a hostile file would be damaged (counts, lengths,
//! offsets, types, dims, alignment, tokenizer arrays, special token ids, chat templates, block
//! scales), written back, loaded as a model and run (tokenize, chat template, a forward). Any
//! result is fine except a panic, an abort, a signal, a hang or memory past a stated bound.
//!
//! Negative control: with the 1-D norm fix of src/load/gguf_llama.rs reverted (a norm stored
//! in a block type indexed as a matrix), this test reports that panic at five of the 2000 cases.
//!
//! The cases run in a child process (this test binary again) under an address-space limit
//! (`ADDRESS_SPACE`: an allocation past it aborts the child, which the parent reports with the
//! case); the parent kills the child when one case runs past `CASE_SECONDS`, and fails the test
//! when the child's peak resident memory passed `PEAK_RESIDENT_MB`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use specbench::backend::{Backend, Runtime};
use specbench::formats::gguf::Value;
use specbench::formats::gguf::write::{Tensor, to_bytes};
use specbench::load::{LoadedModel, ModelSpec};

const CHILD: &str = "SPECBENCH_FUZZ_GGUF_CHILD";
const CASES: usize = 2000;
/// The child stops starting cases after this long, so that CI's time stays bounded.
const BUDGET: Duration = Duration::from_secs(150);
const CASE_SECONDS: u64 = 20;
/// Virtual memory the child may map: the tiny model and its runtime need well under 1 GiB of
/// it; a count trusted from the file would ask for far more.
const ADDRESS_SPACE: u64 = 4 << 30;
/// The most the child may hold resident at any time over all cases: the 3 MB file, the model it
/// becomes, the runtime, and the largest vocabulary a case builds. A reader that held what a
/// file claims rather than what it holds would pass it.
const PEAK_RESIDENT_MB: i64 = 512;

#[cfg(unix)]
#[test]
fn fuzz_gguf_structure() {
    if std::env::var(CHILD).is_ok() {
        return run_cases();
    }
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", "fuzz_gguf_structure", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: ADDRESS_SPACE, rlim_max: ADDRESS_SPACE };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let (mut last_case, mut panics, mut done) = (String::from("before the first case"), Vec::new(), None);
    loop {
        match received.recv_timeout(Duration::from_secs(CASE_SECONDS)) {
            Ok(line) if line.starts_with("case ") => last_case = line,
            Ok(line) if line.starts_with("PANIC") => panics.push(line),
            Ok(line) if line.starts_with("done ") => done = Some(line),
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("{last_case} ran past {CASE_SECONDS} s: a hang");
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(panics.is_empty(), "panics:\n{}", panics.join("\n"));
    assert!(
        status.success() && done.is_some(),
        "the child died at {last_case} ({status}): an abort, a signal or memory past {ADDRESS_SPACE} bytes\n{}",
        stderr.lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );
    // SAFETY: getrusage fills the struct it is given.
    let peak_mb = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage.ru_maxrss / 1024
    };
    assert!(
        peak_mb <= PEAK_RESIDENT_MB,
        "the child held {peak_mb} MB at its peak, past {PEAK_RESIDENT_MB} MB"
    );
    eprintln!("{}; peak resident memory {peak_mb} MB", done.unwrap());
}

fn run_cases() {
    let (base_metadata, base_tensors) = common::gguf_parts("tiny-gguf/target-q4_0.gguf");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fuzzed.gguf");
    let runtime = Runtime::new(Backend::Flex, "f32").unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(20261202);
    let started = Instant::now();
    let (mut run, mut loaded, mut ran) = (0, 0, 0);
    let mut stdout = std::io::stdout();
    // Panics are counted, not printed by the default hook.
    std::panic::set_hook(Box::new(|_| {}));
    for case in 0..CASES {
        if started.elapsed() > BUDGET {
            break;
        }
        let mut metadata = base_metadata.clone();
        let mut tensors = base_tensors.clone();
        let what = mutate(&mut metadata, &mut tensors, &mut rng);
        let keys: Vec<(&str, Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let mut bytes = to_bytes(&keys, &tensors);
        let raw = raw_damage(&mut bytes, &mut rng);
        writeln!(stdout, "case {case}: {what}{raw}").unwrap();
        stdout.flush().unwrap();
        std::fs::write(&path, &bytes).unwrap();
        match catch_unwind(AssertUnwindSafe(|| exercise(&path, &runtime))) {
            Ok(progress) => {
                loaded += usize::from(progress != Progress::Refused);
                ran += usize::from(progress == Progress::Ran);
            }
            Err(payload) => {
                let message = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                writeln!(stdout, "PANIC case {case} ({what}{raw}): {message}").unwrap();
            }
        }
        run += 1;
    }
    writeln!(
        stdout,
        "done {run} cases in {:.0} s: {loaded} loaded, {ran} of them ran a forward; the rest refused with an error",
        started.elapsed().as_secs_f64()
    )
    .unwrap();
}

/// Loads the file as a model and runs what a user would: tokenize, render the chat template,
/// one forward. Says how far it got.
fn exercise(path: &std::path::Path, runtime: &Runtime) -> Progress {
    let Ok(model) = LoadedModel::load(&ModelSpec::Gguf(path.to_path_buf()), runtime, 0) else {
        return Progress::Refused;
    };
    let _ = model.tokenizer.render_chat("Write a haiku.");
    let Ok(ids) = model.tokenizer.encode_prompt("def parse(text):\n    return", false) else {
        return Progress::Loaded;
    };
    let ids: Vec<u32> = ids.into_iter().take(8).collect();
    match !ids.is_empty() && model.model.forward_ids(&ids, &mut model.model.new_cache()).is_ok() {
        true => Progress::Ran,
        false => Progress::Loaded,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Progress {
    /// An error at load.
    Refused,
    Loaded,
    /// Loaded, tokenized, and a forward returned logits.
    Ran,
}

const NASTY_COUNTS: &[u64] = &[0, 1, 3, 255, 65_535, 4_294_967_295, 4_294_967_296, u64::MAX];

fn nasty_number(rng: &mut ChaCha8Rng) -> Value {
    let n = NASTY_COUNTS[rng.gen_range(0..NASTY_COUNTS.len())];
    match rng.gen_range(0..5) {
        0 => Value::U32(n as u32),
        1 => Value::U64(n),
        2 => Value::I32(-(n as i32).abs().max(1)),
        3 => Value::F32([f32::NAN, f32::INFINITY, -1.0, 0.0, 1e30][rng.gen_range(0..5)]),
        _ => Value::String("x".into()),
    }
}

const TEMPLATES: &[&str] = &[
    "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
    "{% for i in range(100000) %}{{ 'x' * 90000000 }}{% endfor %}",
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "{% for m in messages %}{{ m.content",
    "{{ raise_exception('no') }}",
    "{{ messages[0]['content'] * 99999999 }}",
];

/// Damages the decoded file in one or two places; says where.
fn mutate(metadata: &mut Vec<(String, Value)>, tensors: &mut Vec<Tensor>, rng: &mut ChaCha8Rng) -> String {
    let mut what = Vec::new();
    for _ in 0..rng.gen_range(1..3) {
        let k = rng.gen_range(0..metadata.len());
        let t = rng.gen_range(0..tensors.len());
        what.push(match rng.gen_range(0..16) {
            0 => {
                metadata[k].1 = nasty_number(rng);
                format!("`{}` = {:?}", metadata[k].0, metadata[k].1)
            }
            1 => format!("`{}` removed", metadata.remove(k).0),
            2 => {
                metadata.push((metadata[k].0.clone(), Value::U8(1)));
                format!("`{}` twice", metadata[k].0)
            }
            3 | 4 => tokenizer_damage(metadata, rng),
            5 => {
                let template = TEMPLATES[rng.gen_range(0..TEMPLATES.len())];
                set(metadata, "tokenizer.chat_template", Value::String(template.into()));
                format!("chat template {template:?}")
            }
            6 => {
                let key = ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id"][rng.gen_range(0..2)];
                set(metadata, key, nasty_number(rng));
                format!("`{key}` nasty")
            }
            7 => {
                let value = [0u64, 3, 1 << 40, 64][rng.gen_range(0..4)];
                set(metadata, "general.alignment", Value::U64(value));
                format!("alignment {value}")
            }
            8 => {
                let d = rng.gen_range(0..tensors[t].dims.len());
                tensors[t].dims[d] = NASTY_COUNTS[rng.gen_range(0..NASTY_COUNTS.len())];
                format!("`{}` dims {:?}", tensors[t].name, tensors[t].dims)
            }
            9 => {
                tensors[t].dims.reverse();
                tensors[t].dims.push(1);
                format!("`{}` dims {:?}", tensors[t].name, tensors[t].dims)
            }
            10 => {
                tensors[t].ggml_type = [0, 1, 2, 3, 6, 7, 8, 10, 12, 13, 14, 30, 99][rng.gen_range(0..13)];
                format!("`{}` type {}", tensors[t].name, tensors[t].ggml_type)
            }
            11 => {
                let keep = rng.gen_range(0..tensors[t].data.len().max(1));
                tensors[t].data.truncate(keep);
                format!("`{}` data cut to {keep} bytes", tensors[t].name)
            }
            12 => {
                // A scale or value of NaN or infinity somewhere in the tensor.
                let data = &mut tensors[t].data;
                if data.len() >= 4 {
                    let at = rng.gen_range(0..data.len() - 3) & !1;
                    let bits = [0x7e00u16, 0x7c00, 0xfc00][rng.gen_range(0..3)];
                    data[at..at + 2].copy_from_slice(&bits.to_le_bytes());
                }
                format!("`{}` NaN/inf bytes", tensors[t].name)
            }
            13 => {
                let name = tensors[rng.gen_range(0..tensors.len())].name.clone();
                tensors[t].name = name.clone();
                format!("two tensors named `{name}`")
            }
            14 => format!("`{}` removed", tensors.remove(t).name),
            _ => {
                tensors[t].name.push_str(["\0", "x", "\u{202e}", ".weight"][rng.gen_range(0..4)]);
                format!("`{}` renamed", tensors[t].name.escape_debug())
            }
        });
        if tensors.is_empty() || metadata.is_empty() {
            break;
        }
    }
    what.join("; ")
}

fn set(metadata: &mut Vec<(String, Value)>, key: &str, value: Value) {
    match metadata.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = value,
        None => metadata.push((key.into(), value)),
    }
}

fn array<'a>(metadata: &'a mut [(String, Value)], key: &str) -> Option<&'a mut Vec<Value>> {
    metadata.iter_mut().find(|(k, _)| k == key).and_then(|(_, v)| match v {
        Value::Array(items) => Some(items),
        _ => None,
    })
}

/// Damage to the vocabulary, merges, token types or scores, or another tokenizer kind.
fn tokenizer_damage(metadata: &mut Vec<(String, Value)>, rng: &mut ChaCha8Rng) -> String {
    match rng.gen_range(0..8) {
        0 => {
            let items = array(metadata, "tokenizer.ggml.tokens").unwrap();
            let at = rng.gen_range(0..items.len());
            items[at] = Value::String("ab".repeat(rng.gen_range(1..200_000)));
            format!("token {at} very long")
        }
        1 => {
            let items = array(metadata, "tokenizer.ggml.tokens").unwrap();
            let keep = rng.gen_range(0..items.len());
            items.truncate(keep);
            format!("tokens cut to {keep}")
        }
        2 => {
            let items = array(metadata, "tokenizer.ggml.tokens").unwrap();
            let (a, b) = (rng.gen_range(0..items.len()), rng.gen_range(0..items.len()));
            items[a] = items[b].clone();
            format!("token {a} = token {b}")
        }
        3 => {
            let Some(items) = array(metadata, "tokenizer.ggml.merges") else { return "no merges".into() };
            let at = rng.gen_range(0..items.len().max(1)).min(items.len().saturating_sub(1));
            if !items.is_empty() {
                items[at] = Value::String(["zz qq", "a", "", " ", "a b c"][rng.gen_range(0..5)].into());
            }
            format!("merge {at} broken")
        }
        4 => {
            let n = array(metadata, "tokenizer.ggml.tokens").map_or(0, |t| t.len());
            let types =
                (0..n + rng.gen_range(0..2)).map(|i| Value::I32([1, 2, 3, 4, 5, 6, -1][i % 7])).collect();
            set(metadata, "tokenizer.ggml.token_type", Value::Array(types));
            "token types odd".into()
        }
        5 => {
            // SentencePiece, with scores that are NaN, missing or one short.
            set(metadata, "tokenizer.ggml.model", Value::String("llama".into()));
            let n = array(metadata, "tokenizer.ggml.tokens").map_or(0, |t| t.len());
            match rng.gen_range(0..3) {
                0 => set(metadata, "tokenizer.ggml.scores", Value::Array(vec![Value::F32(f32::NAN); n])),
                1 => set(
                    metadata,
                    "tokenizer.ggml.scores",
                    Value::Array(vec![Value::F32(0.0); n.saturating_sub(1)]),
                ),
                _ => {}
            }
            "SentencePiece with odd scores".into()
        }
        6 => {
            // A SentencePiece vocabulary of long repeated pieces.
            set(metadata, "tokenizer.ggml.model", Value::String("llama".into()));
            let pieces: Vec<Value> =
                (1..4000).map(|n| Value::String("a".repeat(n % 120 + 1) + &"b".repeat(n / 120))).collect();
            let n = pieces.len();
            set(metadata, "tokenizer.ggml.tokens", Value::Array(pieces));
            set(metadata, "tokenizer.ggml.scores", Value::Array(vec![Value::F32(0.0); n]));
            "long repeated SentencePiece pieces".into()
        }
        _ => {
            set(
                metadata,
                "tokenizer.ggml.pre",
                Value::String(["smollm", "llama-bpe", "qwen2", ""][rng.gen_range(0..4)].into()),
            );
            "another pre-tokenizer".into()
        }
    }
}

/// Sometimes damage the encoded bytes as well: a count, or a few bytes of the header.
fn raw_damage(bytes: &mut [u8], rng: &mut ChaCha8Rng) -> String {
    match rng.gen_range(0..8) {
        0 => {
            // The tensor count (8..16) or the metadata count (16..24).
            let at = [8, 16][rng.gen_range(0..2)];
            let n = NASTY_COUNTS[rng.gen_range(0..NASTY_COUNTS.len())];
            bytes[at..at + 8].copy_from_slice(&n.to_le_bytes());
            format!(" + count at {at} = {n}")
        }
        1 => {
            let header = bytes.len().min(4096);
            let mut flipped = Vec::new();
            for _ in 0..rng.gen_range(1..4) {
                let at = rng.gen_range(0..header);
                bytes[at] ^= 1 << rng.gen_range(0..8);
                flipped.push(at);
            }
            format!(" + bits flipped at {flipped:?}")
        }
        _ => String::new(),
    }
}
