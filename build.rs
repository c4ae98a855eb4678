//! Records what the binary is built from, so that a manifest says it whatever directory
//! `specbench run` is started in: the git commit and whether the tree had changes, the cargo
//! features, the rustc version and the profile.

use std::process::Command;

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok().filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit = output("git", &["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    // Tracked files only: results and scratch files beside the sources do not make a build dirty.
    let dirty = match output("git", &["status", "--porcelain", "--untracked-files=no"]) {
        Some(changes) => (!changes.is_empty()).to_string(),
        None => "unknown".into(),
    };
    let mut features: Vec<String> = std::env::vars()
        .filter_map(|(key, _)| key.strip_prefix("CARGO_FEATURE_").map(|f| f.to_lowercase().replace('_', "-")))
        .collect();
    features.sort();
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = output(&rustc, &["--version"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SPECBENCH_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=SPECBENCH_GIT_DIRTY={dirty}");
    println!("cargo:rustc-env=SPECBENCH_FEATURES={}", features.join(","));
    println!("cargo:rustc-env=SPECBENCH_RUSTC={rustc_version}");
    println!("cargo:rustc-env=SPECBENCH_PROFILE={}", std::env::var("PROFILE").unwrap_or_default());
    // A new commit, a staged or edited file, or another checkout re-runs this script.
    for path in [".git/HEAD", ".git/index", "src", "Cargo.toml", "Cargo.lock", "build.rs"] {
        println!("cargo:rerun-if-changed={path}");
    }
    if let Some(reference) = output("git", &["symbolic-ref", "-q", "HEAD"]) {
        println!("cargo:rerun-if-changed=.git/{reference}");
    }
}
