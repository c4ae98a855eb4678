//! Prompts: a JSONL file (`id`, `category`, `prompt` per line) or the built-in set, written for
//! this project with Spec-Bench's task mix.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prompt {
    pub id: String,
    pub category: String,
    pub prompt: String,
}

const BUILTIN: &[(&str, &str, &str)] = &[
    (
        "conv-1",
        "conversation",
        "I just moved to a new city and do not know anyone yet. What are a few easy ways to meet people?",
    ),
    (
        "conv-2",
        "conversation",
        "My sourdough bread keeps coming out flat. What could be going wrong, and what should I try first?",
    ),
    (
        "conv-3",
        "conversation",
        "Write a short, friendly reply to a colleague who asked whether we can move our meeting to Thursday.",
    ),
    (
        "trans-1",
        "translation",
        "Translate into French: The train leaves at seven in the morning, so we should pack our bags tonight.",
    ),
    (
        "trans-2",
        "translation",
        "Translate into German: Please remember to water the plants while I am away next week.",
    ),
    (
        "trans-3",
        "translation",
        "Translate into Spanish: The library will be closed on Monday because of the public holiday.",
    ),
    (
        "sum-1",
        "summarization",
        "Summarize in one sentence: The town council met on Tuesday to discuss the new bicycle lanes. Residents praised the safer routes to school, while shop owners worried about losing parking spaces. The council agreed to test the lanes for six months and then review traffic and sales figures.",
    ),
    (
        "sum-2",
        "summarization",
        "Summarize in two sentences: A small robotics club at the local school built a machine that sorts recycling by colour and shape. The students spent three months on the project, learning to program cameras and motors. Their robot won second place at the regional science fair.",
    ),
    ("qa-1", "qa", "Why does the sky look blue during the day but red and orange at sunset?"),
    ("qa-2", "qa", "What is the difference between a virus and a bacterium?"),
    ("qa-3", "qa", "How does a refrigerator keep food cold?"),
    (
        "math-1",
        "math_reasoning",
        "A shop sells pencils in packs of 12. If a class of 30 students needs 3 pencils each, how many packs must the teacher buy? Explain step by step.",
    ),
    (
        "math-2",
        "math_reasoning",
        "A train travels 180 km in 2 hours and then 120 km in 1.5 hours. What is its average speed for the whole trip? Show your reasoning.",
    ),
    ("math-3", "math_reasoning", "If 3x + 7 = 25, what is x? Solve it step by step."),
    (
        "rag-1",
        "rag",
        "Context: The Amberline bridge opened in 1932 and is 1.2 km long. It was repainted in 1998 and again in 2019. Question: How many years passed between the two repaintings?",
    ),
    (
        "rag-2",
        "rag",
        "Context: Our office is open Monday to Friday from 9:00 to 17:30 and on Saturday from 10:00 to 14:00. It is closed on Sunday. Question: Can I visit on Saturday afternoon at 15:00?",
    ),
];

pub fn builtin() -> Vec<Prompt> {
    BUILTIN
        .iter()
        .map(|&(id, category, prompt)| Prompt {
            id: id.into(),
            category: category.into(),
            prompt: prompt.into(),
        })
        .collect()
}

/// Reads a JSONL prompt file; errors name the line. Ids must be unique (rows are keyed by them).
pub fn from_jsonl(path: &Path) -> Result<Vec<Prompt>> {
    let text = crate::files::read_text(path)?;
    let mut prompts: Vec<Prompt> = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let prompt: Prompt = serde_json::from_str(line).map_err(|e| Error::MalformedFile {
            path: path.to_path_buf(),
            message: format!("line {}: {e}", n + 1),
        })?;
        if prompts.iter().any(|p| p.id == prompt.id) {
            return Err(Error::MalformedFile {
                path: path.to_path_buf(),
                message: format!("line {}: duplicate prompt id `{}`", n + 1, prompt.id),
            });
        }
        prompts.push(prompt);
    }
    if prompts.is_empty() {
        return Err(Error::MalformedFile { path: path.to_path_buf(), message: "no prompts".into() });
    }
    Ok(prompts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_covers_the_spec_bench_task_mix_with_unique_ids() {
        let prompts = builtin();
        for category in ["conversation", "translation", "summarization", "qa", "math_reasoning", "rag"] {
            assert!(prompts.iter().any(|p| p.category == category), "{category}");
        }
        let ids: std::collections::HashSet<_> = prompts.iter().map(|p| &p.id).collect();
        assert_eq!(ids.len(), prompts.len(), "a prompt id appears twice");
    }

    #[test]
    fn jsonl_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.jsonl");
        std::fs::write(&file, "{\"id\":\"a\",\"category\":\"qa\",\"prompt\":\"x\"}\n{\"id\":\"b\"}\n")
            .unwrap();
        let err = from_jsonl(&file).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("category"), "{err}");
    }
}
