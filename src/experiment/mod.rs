//! Experiments: the TOML config, prompts, the sweep runner and its result folder.

pub mod config;
pub mod lock;
pub mod manifest;
pub mod prompts;
pub mod rows;
pub mod runner;
