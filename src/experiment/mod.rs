//! Experiments: the TOML config, prompts, the sweep runner and its result folder, and the one
//! generation of `specbench generate`.

pub mod config;
pub mod generate;
pub mod lock;
pub mod manifest;
pub mod prompts;
pub mod rows;
pub mod runner;
