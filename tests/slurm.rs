//! The README's Slurm recipe on a real cluster: a one-node Slurm (munged, slurmctld, slurmd on
//! localhost; `experiments/slurm_local_cluster.sh`, which installs Debian's slurm-wlm and munge)
//! runs a sweep as a job array of 4 shards (`experiments/slurm_sweep.sh`), and the merged folder
//! must hold exactly the rows of the same sweep run in one process, with the same acceptance
//! counts at T = 0. Skipped, saying why, without root or without apt-get and Slurm.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use specbench::experiment::rows::{RowKey, RunRow, read_rows};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const SHARDS: usize = 4;

/// Why this machine cannot run the test, if it cannot.
fn skip_reason() -> Option<String> {
    if std::env::var("SPECBENCH_SKIP_SLURM").is_ok_and(|v| !v.is_empty()) {
        return Some("SPECBENCH_SKIP_SLURM is set".into());
    }
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("starting Slurm's daemons needs root".into());
    }
    let has = |program: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has("slurmctld") && !has("apt-get") {
        return Some("Slurm is not installed and there is no apt-get to install it".into());
    }
    None
}

/// Stops the cluster however the test ends.
struct Cluster(PathBuf);

impl Cluster {
    fn start(dir: &Path) -> Self {
        let out = Command::new(format!("{ROOT}/experiments/slurm_local_cluster.sh"))
            .arg("start")
            .arg(dir)
            .output()
            .unwrap();
        let log = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        assert!(
            out.status.success(),
            "the local cluster did not start:\n{}{}\nslurmctld.log:\n{}\nslurmd.log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            log("slurmctld.log"),
            log("slurmd.log")
        );
        Self(dir.to_path_buf())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(format!("{ROOT}/experiments/slurm_local_cluster.sh"))
            .arg("stop")
            .arg(&self.0)
            .status();
    }
}

/// A sweep of 6 cells (baseline and k = 1, 3 at T = 0 and 1) over 3 prompts on the fixture pair.
fn config(dir: &Path) -> PathBuf {
    let fixture = |name: &str| common::fixture_dir(name).display().to_string();
    let text = format!(
        "[experiment]\nname = \"slurm\"\nseed = 3\nmax_new_tokens = 8\n\
         [models.target]\npath = {:?}\n[models.draft]\npath = {:?}\n\
         [sweep]\nk = [1, 3]\nbackends = [\"ndarray\"]\ntemperatures = [0.0, 1.0]\n[prompts]\nlimit = 3\n",
        fixture("tiny-gqa"),
        fixture("tiny-untied-bf16")
    );
    let path = dir.join("slurm.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn rows_by_key(folder: &Path) -> BTreeMap<RowKey, RunRow> {
    read_rows(&folder.join("runs.csv")).unwrap().into_iter().map(|r| (r.key(), r)).collect()
}

#[test]
fn a_job_array_on_a_local_slurm_cluster_merges_into_the_rows_of_one_process() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let _cluster = Cluster::start(&tmp.path().join("cluster"));
    let config = config(tmp.path());
    let sweep = tmp.path().join("sweep");
    let out = Command::new(format!("{ROOT}/experiments/slurm_sweep.sh"))
        .arg(&config)
        .arg(SHARDS.to_string())
        .arg(&sweep)
        .env("SLURM_CONF", tmp.path().join("cluster/slurm.conf"))
        .env("SPECBENCH", env!("CARGO_BIN_EXE_specbench"))
        .output()
        .unwrap();
    let logs: String = (0..SHARDS)
        .map(|i| std::fs::read_to_string(sweep.join(format!("shard{i}.log"))).unwrap_or_default())
        .collect();
    assert!(
        out.status.success(),
        "slurm_sweep.sh failed:\n{}{}\ntask logs:\n{logs}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 0..SHARDS {
        assert!(sweep.join(format!("shard{i}/runs.csv")).is_file(), "shard {i} wrote no rows:\n{logs}");
    }

    let single = tmp.path().join("single");
    let done = Command::new(env!("CARGO_BIN_EXE_specbench"))
        .arg("run")
        .arg(&config)
        .arg("--out")
        .arg(&single)
        .output()
        .unwrap();
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));

    let (merged, alone) = (rows_by_key(&sweep.join("all")), rows_by_key(&single));
    // 6 cells × 3 prompts × 1 repeat, each row once.
    assert_eq!(alone.len(), 18);
    assert_eq!(merged.keys().collect::<Vec<_>>(), alone.keys().collect::<Vec<_>>());
    for (key, row) in alone.iter().filter(|(key, _)| key.cell.temperature == 0.0) {
        let other = &merged[key];
        let counts = |r: &RunRow| {
            (
                r.new_tokens,
                r.target_calls,
                r.proposed,
                r.accepted,
                r.position_accepted.clone(),
                r.accepted_len_hist.clone(),
            )
        };
        assert_eq!(counts(other), counts(row), "{}", key.cell.label());
    }
    let manifest = std::fs::read_to_string(sweep.join("all/manifest.json")).unwrap();
    assert!(manifest.contains("\"finished\": \"") || manifest.contains("\"finished\":\""), "{manifest}");
}
