//! Prompts: a JSONL file (`id`, `category` and `prompt` or `turns` per line), the built-in set
//! (written for this project with Spec-Bench's task mix), or Spec-Bench's own 480 questions
//! (embedded; `assets/spec-bench/`). A prompt is one or more user turns: each later turn is
//! asked after the model's own answer to the ones before, as Spec-Bench runs MT-Bench.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tokenizer::Message;

/// The most user turns one prompt may have (MT-Bench's have two).
pub const MAX_TURNS: usize = 16;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "PromptLine", into = "PromptLine")]
pub struct Prompt {
    pub id: String,
    pub category: String,
    /// The user turns, at least one.
    pub turns: Vec<String>,
}

impl Prompt {
    pub fn single(id: &str, category: &str, prompt: &str) -> Self {
        Self { id: id.into(), category: category.into(), turns: vec![prompt.into()] }
    }

    pub fn first_turn(&self) -> &str {
        &self.turns[0]
    }

    /// The conversation that asks turn `answers.len() + 1`: each earlier turn followed by the
    /// model's answer to it.
    pub fn conversation<'a>(&'a self, answers: &'a [String]) -> Vec<Message<'a>> {
        let asked = &self.turns[..=answers.len()];
        let replies = answers.iter().map(|a| Some(Message::assistant(a))).chain([None]);
        asked
            .iter()
            .zip(replies)
            .flat_map(|(turn, reply)| std::iter::once(Message::user(turn)).chain(reply))
            .collect()
    }

    /// The text that identifies it in a run's fingerprint: the prompt of a single-turn prompt
    /// (as before turns existed, so earlier folders still resume), else the turns.
    pub fn fingerprint(&self) -> String {
        match self.turns.as_slice() {
            [one] => format!("{:?}\u{1f}{:?}\u{1f}{one:?}", self.id, self.category),
            turns => format!("{:?}\u{1f}{:?}\u{1f}{turns:?}", self.id, self.category),
        }
    }
}

/// A prompt as a JSONL line holds it: `prompt` for one turn, `turns` for several (both may be
/// given when they agree, as `specbench prompts` writes them).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptLine {
    id: String,
    category: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    turns: Option<Vec<String>>,
}

impl TryFrom<PromptLine> for Prompt {
    type Error = String;

    fn try_from(line: PromptLine) -> std::result::Result<Self, String> {
        let turns = match (line.prompt, line.turns) {
            (Some(prompt), None) => vec![prompt],
            (None, Some(turns)) if turns.is_empty() => return Err("`turns` is empty".into()),
            (None, Some(turns)) => turns,
            (Some(prompt), Some(turns)) if turns.first() == Some(&prompt) => turns,
            (Some(_), Some(_)) => return Err("`prompt` differs from the first of `turns`".into()),
            (None, None) => return Err("missing field `prompt` (or `turns`)".into()),
        };
        if turns.len() > MAX_TURNS {
            return Err(format!("{} turns; at most {MAX_TURNS}", turns.len()));
        }
        Ok(Self { id: line.id, category: line.category, turns })
    }
}

impl From<Prompt> for PromptLine {
    fn from(prompt: Prompt) -> Self {
        let multi = prompt.turns.len() > 1;
        Self {
            id: prompt.id,
            category: prompt.category,
            prompt: prompt.turns.first().cloned(),
            turns: multi.then_some(prompt.turns),
        }
    }
}

/// A prompt set that ships with specbench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PromptSet {
    /// 16 prompts in Spec-Bench's six tasks, written for this project.
    Builtin,
    /// Spec-Bench's 480 questions (Xia et al. 2024).
    SpecBench,
}

impl PromptSet {
    pub fn prompts(self) -> Vec<Prompt> {
        match self {
            Self::Builtin => builtin(),
            Self::SpecBench => spec_bench(),
        }
    }
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
    BUILTIN.iter().map(|&(id, category, prompt)| Prompt::single(id, category, prompt)).collect()
}

const SPEC_BENCH: &str = include_str!("../../assets/spec-bench/question.jsonl");

/// Spec-Bench's task of each of MT-Bench's eight categories: its multi-turn conversation.
const MT_BENCH: &str = "mt_bench";
const MT_BENCH_CATEGORIES: &[&str] =
    &["writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"];

/// Spec-Bench's six tasks: category, the leaderboard's column title, the paper's short name;
/// in the leaderboard's column order.
pub const SPEC_BENCH_TASKS: &[(&str, &str, &str)] = &[
    (MT_BENCH, "Multi-turn Conversation", "MT"),
    ("translation", "Translation", "Trans."),
    ("summarization", "Summarization", "Sum."),
    ("qa", "Question Answering", "QA"),
    ("math_reasoning", "Mathematical Reasoning", "Math"),
    ("rag", "Retrieval-aug. Generation", "RAG"),
];

/// Spec-Bench's questions in its file order. The category is Spec-Bench's task (MT-Bench's
/// eight categories are its `mt_bench`); the id keeps the question's own category and number,
/// e.g. `writing-81`, `rag-521`.
pub fn spec_bench() -> Vec<Prompt> {
    #[derive(Deserialize)]
    struct Question {
        question_id: u64,
        category: String,
        turns: Vec<String>,
    }
    SPEC_BENCH
        .lines()
        .map(|line| {
            let q: Question = serde_json::from_str(line).expect("the embedded Spec-Bench file parses");
            let task =
                if MT_BENCH_CATEGORIES.contains(&q.category.as_str()) { MT_BENCH } else { &q.category };
            Prompt { id: format!("{}-{}", q.category, q.question_id), category: task.into(), turns: q.turns }
        })
        .collect()
}

/// Keeps the prompts of `categories` (all when empty; an unknown one is an error that lists
/// the set's), and of each category at most `per_category`, evenly spaced through the
/// category in file order: a stratified subset (MT-Bench's eight sub-categories of ten
/// questions each are equally represented at 8 per category).
pub fn select(
    prompts: Vec<Prompt>,
    categories: &[String],
    per_category: Option<usize>,
) -> Result<Vec<Prompt>> {
    let mut known: Vec<&str> = Vec::new();
    for p in &prompts {
        if !known.contains(&p.category.as_str()) {
            known.push(&p.category);
        }
    }
    if let Some(unknown) = categories.iter().find(|c| !known.contains(&c.as_str())) {
        return Err(Error::InvalidConfig(format!(
            "`prompts.categories`: no prompt has category `{unknown}`; the prompts' categories are {}",
            known.join(", ")
        )));
    }
    let kept = |p: &Prompt| categories.is_empty() || categories.contains(&p.category);
    let mut by_category: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, p) in prompts.iter().enumerate().filter(|(_, p)| kept(p)) {
        by_category.entry(&p.category).or_default().push(i);
    }
    let mut chosen: Vec<usize> = by_category
        .values()
        .flat_map(|indices| {
            let n = per_category.map_or(indices.len(), |limit| limit.min(indices.len()));
            (0..n).map(move |j| indices[j * indices.len() / n])
        })
        .collect();
    chosen.sort_unstable();
    let mut prompts: Vec<Option<Prompt>> = prompts.into_iter().map(Some).collect();
    Ok(chosen.into_iter().filter_map(|i| prompts[i].take()).collect())
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
        std::fs::write(&file, "{\"id\":\"a\",\"category\":\"qa\",\"turns\":[]}\n").unwrap();
        let err = from_jsonl(&file).unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("empty"), "{err}");
    }

    #[test]
    fn a_later_turn_is_asked_after_the_answers_to_the_earlier_ones() {
        let prompt =
            Prompt { id: "a".into(), category: "mt_bench".into(), turns: vec!["Q1".into(), "Q2".into()] };
        assert_eq!(prompt.conversation(&[]), [Message::user("Q1")]);
        let answers = ["A1".to_string()];
        assert_eq!(
            prompt.conversation(&answers),
            [Message::user("Q1"), Message::assistant("A1"), Message::user("Q2")]
        );
    }

    #[test]
    fn prompts_round_trip_through_their_jsonl_form() {
        for prompt in [Prompt::single("a", "qa", "x"), spec_bench().remove(0)] {
            let line = serde_json::to_string(&prompt).unwrap();
            assert_eq!(serde_json::from_str::<Prompt>(&line).unwrap(), prompt, "{line}");
        }
    }

    #[test]
    fn spec_bench_has_its_six_tasks_and_mt_bench_two_turns() {
        let prompts = spec_bench();
        assert_eq!(prompts.len(), 480);
        for (task, ..) in SPEC_BENCH_TASKS {
            assert_eq!(prompts.iter().filter(|p| p.category == *task).count(), 80, "{task}");
        }
        assert!(prompts.iter().all(|p| p.turns.len() == if p.category == MT_BENCH { 2 } else { 1 }));
        let ids: std::collections::HashSet<_> = prompts.iter().map(|p| &p.id).collect();
        assert_eq!(ids.len(), 480);
    }

    #[test]
    fn a_stratified_subset_spreads_over_each_category() {
        let chosen = select(spec_bench(), &[], Some(8)).unwrap();
        assert_eq!(chosen.len(), 48);
        let mt: Vec<&str> = chosen.iter().filter(|p| p.category == MT_BENCH).map(|p| p.id.as_str()).collect();
        for sub in MT_BENCH_CATEGORIES {
            assert_eq!(mt.iter().filter(|id| id.starts_with(&format!("{sub}-"))).count(), 1, "{mt:?}");
        }
        let some = select(spec_bench(), &["rag".into(), "qa".into()], Some(3)).unwrap();
        assert_eq!(some.len(), 6);
        assert!(some.iter().all(|p| p.category == "rag" || p.category == "qa"));
        let err = select(spec_bench(), &["poetry".into()], None).unwrap_err().to_string();
        assert!(err.contains("poetry") && err.contains("mt_bench"), "{err}");
    }
}
