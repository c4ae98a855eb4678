//! Model-free drafting from the context's own n-grams: copy what followed the latest earlier
//! occurrence of the context's last n tokens (prompt lookup), looking up again past the end of a
//! copy, or propose the continuation seen most often after them (llama.cpp's `llama-lookup`).
//! Its proposals are certain (one-hot `q`).

use std::collections::HashMap;
use std::ops::Range;

use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{Describe, DraftContext, DrafterKind, LoadedDrafter};
use crate::decoding::acceptance::DraftDistribution;
use crate::decoding::draft::{DraftRequest, Drafter, MAX_K, Proposal};
use crate::decoding::pairing::shared_vocab;
use crate::decoding::timed_host;
use crate::error::{Error, Result};
use crate::metrics::Timings;
use crate::model::Llama;

/// `kind = "ngram"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NgramSettings {
    /// The shortest and longest suffix looked up (1 and 3 when absent).
    #[serde(default)]
    pub min_n: Option<usize>,
    #[serde(default)]
    pub max_n: Option<usize>,
    /// `latest` (copy what followed the latest occurrence; the default) or `counts` (the
    /// continuation seen most often, as llama.cpp's `llama-lookup`).
    #[serde(default)]
    pub lookup: Option<String>,
}

impl NgramSettings {
    /// `MIN-MAX` with an optional `:counts` or `:latest`; `None` when it is not that.
    pub(super) fn from_short(text: &str) -> Option<Self> {
        let (sizes, lookup) = text.split_once(':').unwrap_or((text, ""));
        let (min_n, max_n) = sizes.split_once('-').unwrap_or((sizes, sizes));
        let lookup = (!lookup.is_empty()).then(|| lookup.to_string());
        Some(Self { min_n: Some(min_n.parse().ok()?), max_n: Some(max_n.parse().ok()?), lookup })
    }

    fn sizes(&self) -> (usize, usize) {
        (self.min_n.unwrap_or(1), self.max_n.unwrap_or(3))
    }

    /// The lookup rule; a name other than `latest` or `counts` is an error naming `key`.
    pub fn lookup(&self, key: &str) -> Result<NgramLookup> {
        match self.lookup.as_deref() {
            None | Some("latest") => Ok(NgramLookup::Latest),
            Some("counts") => Ok(NgramLookup::Counts),
            Some(other) => {
                Err(Error::InvalidConfig(format!("`{key}` is `{other}`; choose latest or counts")))
            }
        }
    }
}

impl DrafterKind for NgramSettings {
    fn check(&self, key: &dyn Fn(&str) -> String) -> Result<()> {
        let (min_n, max_n) = self.sizes();
        if min_n == 0 || min_n > max_n || max_n > MAX_K {
            return Err(Error::InvalidConfig(format!(
                "`{}`/`{}` are {min_n} and {max_n}; they need 1 ≤ min_n ≤ max_n ≤ {MAX_K}",
                key("min_n"),
                key("max_n")
            )));
        }
        self.lookup(&key("lookup")).map(drop)
    }

    fn describe(&self, _: &Describe) -> String {
        let (min_n, max_n) = self.sizes();
        match self.lookup("lookup").expect("checked when loaded") {
            NgramLookup::Latest => format!("ngram {min_n}..={max_n}"),
            lookup => format!("ngram {} {min_n}..={max_n}", lookup.name()),
        }
    }

    fn load(&self, context: &DraftContext) -> Result<Box<dyn LoadedDrafter>> {
        let (min_n, max_n) = self.sizes();
        let drafter = NgramDrafter::new(min_n, max_n, self.lookup("lookup")?)?;
        Ok(Box::new(LoadedNgram { drafter, vocab: shared_vocab(context.target, context.target)? }))
    }

    /// A lookup has one continuation per context, not a distribution to draw siblings from.
    fn drafts_trees(&self) -> bool {
        false
    }
}

struct LoadedNgram {
    drafter: NgramDrafter,
    vocab: usize,
}

impl LoadedDrafter for LoadedNgram {
    fn vocab(&self) -> usize {
        self.vocab
    }

    fn drafter<'a>(&'a self, _: &'a Llama) -> Result<Box<dyn Drafter + 'a>> {
        Ok(Box::new(self.drafter.clone()))
    }
}

/// How an n-gram drafter picks what follows the context's last n tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NgramLookup {
    /// Copy what followed the latest earlier occurrence (prompt lookup).
    Latest,
    /// The continuation seen most often after it, one token at a time, when enough occurrences
    /// agree (llama.cpp's `llama-lookup`, see [`NgramCounts`]).
    Counts,
}

impl NgramLookup {
    /// Its name in configs and results.
    pub fn name(self) -> &'static str {
        match self {
            Self::Latest => "latest",
            Self::Counts => "counts",
        }
    }
}

/// Model-free drafting from the context's own n-grams, for n from `max_n` down to `min_n`:
/// prompt lookup (Saxena 2023; transformers' `prompt_lookup_num_tokens`, vLLM's `ngram`) or
/// llama.cpp's n-gram statistics. No model, so proposals are certain and cost only the search.
#[derive(Debug, Clone, PartialEq)]
pub struct NgramDrafter {
    min_n: usize,
    max_n: usize,
    /// `Some` for [`NgramLookup::Counts`].
    counts: Option<NgramCounts>,
}

impl NgramDrafter {
    pub fn new(min_n: usize, max_n: usize, lookup: NgramLookup) -> Result<Self> {
        if min_n == 0 || min_n > max_n {
            return Err(Error::InvalidConfig(format!(
                "n-gram sizes {min_n}..={max_n}: need 1 ≤ min_n ≤ max_n"
            )));
        }
        let counts = (lookup == NgramLookup::Counts).then(NgramCounts::default);
        Ok(Self { min_n, max_n, counts })
    }

    /// Up to `limit` tokens after `context`: what followed the latest earlier occurrence of its
    /// longest matching suffix, and where that copy reaches the end of the context, what
    /// followed the suffix of the context with the copy appended, and so on. Without the second
    /// lookup a match near the end (a period-3 repetition, say) could only propose up to the end
    /// (on SmolLM2 it proposed 0.5–2.4 tokens per step at k = 6; llama-lookup looks up again
    /// after every drafted token).
    fn draft_latest(&self, context: &[u32], limit: usize) -> Vec<u32> {
        let mut extended = context.to_vec();
        let end = context.len() + limit;
        while extended.len() < end {
            let more = self.continuation(&extended, end - extended.len());
            if more.is_empty() {
                break;
            }
            extended.extend_from_within(more);
        }
        extended.split_off(context.len())
    }

    /// Where in `context` what followed the latest earlier occurrence of its longest matching
    /// suffix lies (at most `limit` tokens; empty without a match).
    fn continuation(&self, context: &[u32], limit: usize) -> Range<usize> {
        let len = context.len();
        for n in (self.min_n..=self.max_n.min(len.saturating_sub(1))).rev() {
            let suffix = &context[len - n..];
            // Latest first: nearby repetitions (a loop body, a list) predict best.
            if let Some(start) = (0..len - n).rev().find(|&s| &context[s..s + n] == suffix) {
                let from = start + n;
                return from..(from + limit).min(len);
            }
        }
        0..0
    }

    /// Up to `limit` tokens after `context`, each the confident continuation (by `counts`) of
    /// the longest suffix that has one, the drafted tokens included in the suffix.
    fn draft_counted(&self, counts: &NgramCounts, context: &[u32], limit: usize) -> Vec<u32> {
        let mut extended = context.to_vec();
        while extended.len() < context.len() + limit {
            let len = extended.len();
            let next = (self.min_n..=self.max_n.min(len))
                .rev()
                .find_map(|n| counts.confident_next(&extended[len - n..]));
            match next {
                Some(token) => extended.push(token),
                None => break,
            }
        }
        extended.split_off(context.len())
    }
}

/// How often each token followed each n-gram of the tokens committed so far, as llama.cpp's
/// `common_ngram_cache` counts them for `llama-lookup`. A continuation is proposed when the
/// n-gram was seen often enough and the most frequent continuation holds a large enough share:
/// llama.cpp's "lax" thresholds for its context cache (at least 2, 2, 1, 1 occurrences and a 66,
/// 50, 50, 50% share for n = 1, 2, 3, 4; n > 4 as 4). llama.cpp breaks ties between equally
/// frequent continuations by hash-map order; here the latest seen wins.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NgramCounts {
    /// n-gram → continuation → (count, position last seen).
    table: HashMap<Vec<u32>, HashMap<u32, (u32, usize)>>,
    /// How many committed tokens have been counted.
    counted: usize,
}

impl NgramCounts {
    const MIN_OCCURRENCES: [u32; 4] = [2, 2, 1, 1];
    const MIN_PERCENT: [u32; 4] = [66, 50, 50, 50];

    /// Counts the continuations of `committed` not counted yet, for n-grams of `sizes`.
    fn observe(&mut self, committed: &[u32], sizes: std::ops::RangeInclusive<usize>) {
        if committed.len() < self.counted {
            // Another context than the one counted: start over.
            *self = Self::default();
        }
        for at in self.counted.max(1)..committed.len() {
            for n in sizes.clone().filter(|&n| n <= at) {
                let seen = self.table.entry(committed[at - n..at].to_vec()).or_default();
                let entry = seen.entry(committed[at]).or_insert((0, at));
                *entry = (entry.0 + 1, at);
            }
        }
        self.counted = committed.len();
    }

    /// The most frequent continuation of `ngram`, if it passes the thresholds for its size.
    fn confident_next(&self, ngram: &[u32]) -> Option<u32> {
        let seen = self.table.get(ngram)?;
        let total: u32 = seen.values().map(|&(count, _)| count).sum();
        let (&token, &(count, _)) = seen.iter().max_by_key(|&(_, &(count, last))| (count, last))?;
        let size = ngram.len().min(4) - 1;
        (total >= Self::MIN_OCCURRENCES[size] && 100 * count >= Self::MIN_PERCENT[size] * total)
            .then_some(token)
    }
}

impl Drafter for NgramDrafter {
    fn start(&mut self, _: &[u32], _: &mut Timings) -> Result<()> {
        if let Some(counts) = &mut self.counts {
            *counts = NgramCounts::default();
        }
        Ok(())
    }

    fn propose(
        &mut self,
        committed: &[u32],
        request: &DraftRequest,
        _: &mut ChaCha8Rng,
        timings: &mut Timings,
    ) -> Result<Proposal> {
        let (tokens, search) = timed_host(|| {
            if let Some(counts) = &mut self.counts {
                counts.observe(committed, self.min_n..=self.max_n);
            }
            match &self.counts {
                None => self.draft_latest(committed, request.limit),
                Some(counts) => self.draft_counted(counts, committed, request.limit),
            }
        });
        timings.draft += search;
        let qs = tokens.iter().map(|&t| DraftDistribution::Certain(t)).collect();
        Ok(Proposal { tokens, qs })
    }

    fn rollback(&mut self, _: usize) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngram_lookup_copies_what_followed_the_latest_longest_match() {
        let drafter = NgramDrafter::new(1, 3, NgramLookup::Latest).unwrap();
        let copied = |drafter: &NgramDrafter, context: &[u32], limit| {
            context[drafter.continuation(context, limit)].to_vec()
        };
        // "1 2 3" occurred twice; the latest occurrence (followed by 9 8) wins.
        let context = [1, 2, 3, 4, 5, 1, 2, 3, 9, 8, 7, 1, 2, 3];
        assert_eq!(copied(&drafter, &context, 2), [9, 8]);
        assert_eq!(copied(&drafter, &context, 10), [9, 8, 7, 1, 2, 3]);
        // No 3-gram or 2-gram match: falls back to the last token alone.
        assert_eq!(copied(&drafter, &[5, 6, 7, 5, 8, 6, 9, 7], 3), [5, 8, 6]);
        // Below min_n nothing is proposed.
        assert!(
            copied(&NgramDrafter::new(2, 3, NgramLookup::Latest).unwrap(), &[5, 6, 7, 5, 8, 6, 9, 7], 3)
                .is_empty()
        );
        assert!(copied(&drafter, &[4], 3).is_empty());
        assert!(
            NgramDrafter::new(0, 2, NgramLookup::Latest).is_err()
                && NgramDrafter::new(3, 2, NgramLookup::Counts).is_err()
        );
    }

    #[test]
    fn ngram_drafts_look_up_again_past_the_end_of_a_copy() {
        let drafter = NgramDrafter::new(1, 2, NgramLookup::Latest).unwrap();
        // The latest "1 2" is followed only by "3 1 2" before the end; the lookup continues
        // from the drafted suffix.
        let context = [1, 2, 3, 1, 2, 3, 1, 2];
        assert_eq!(context[drafter.continuation(&context, 6)], [3, 1, 2]);
        assert_eq!(drafter.draft_latest(&context, 6), [3, 1, 2, 3, 1, 2]);
        assert_eq!(drafter.draft_latest(&context, 2), [3, 1]);
        // Nothing matches: nothing proposed.
        assert!(drafter.draft_latest(&[7, 8, 9], 4).is_empty());
    }

    /// Drafts with counts over `context`, as a step of a generation that committed it would.
    fn counted(drafter: &mut NgramDrafter, context: &[u32], limit: usize) -> Vec<u32> {
        let counts = drafter.counts.as_mut().unwrap();
        counts.observe(context, drafter.min_n..=drafter.max_n);
        let counts = drafter.counts.as_ref().unwrap();
        drafter.draft_counted(counts, context, limit)
    }

    #[test]
    fn ngram_counts_propose_the_most_frequent_continuation_that_passes_llama_cpps_thresholds() {
        let mut drafter = NgramDrafter::new(1, 2, NgramLookup::Counts).unwrap();
        // After 5: 6 twice, 7 once (67% ≥ 66% of 3 for a 1-gram); after 6: 5 twice; then the
        // 2-gram "5 6" (followed by 5 both times) decides, not the 1-gram "6".
        let context = [5, 6, 5, 7, 5, 6, 5];
        assert_eq!(counted(&mut drafter, &context, 4), [6, 5, 6, 5]);
        // Counting is incremental: one more "5 7" makes 6 vs 7 a 50% share, below 66% for a
        // 1-gram, and "7 5" was seen once, below the two occurrences a 2-gram needs.
        let more = [5, 6, 5, 7, 5, 6, 5, 7, 5];
        assert!(counted(&mut drafter, &more, 4).is_empty());
        // A 1-gram seen once is not enough either; a different context starts over.
        assert!(counted(&mut drafter, &[1, 2, 1], 3).is_empty());
        assert_eq!(counted(&mut drafter, &[1, 2, 1, 2, 1], 3), [2, 1, 2]);
    }
}
