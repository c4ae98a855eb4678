//! Draft trees: their shape (`tree = "budget:16,depth:5"`), how a drafter grows one (EAGLE-2's
//! expansion of the most probable nodes, Li et al. 2024), and how one target forward verifies
//! it (recursive rejection sampling over each node's children, drawn without replacement:
//! SpecInfer's multi-step speculative sampling in the form of Jeon et al. 2024 and Sequoia).
//! A chain is the tree of one child per node, and goes through the same walk.
//!
//! Exactness at T > 0 asks that every candidate be a draw from its parent's distribution with
//! the earlier siblings removed, and that whether a candidate is drawn at all be decided before
//! it is drawn. Growth therefore never prunes a drawn node: it decides each next draw from
//! what it has already drawn (EAGLE-2 reranks after drawing, which keeps the target
//! distribution only at T = 0).

use std::borrow::Cow;
use std::ops::Range;

use rand_chacha::ChaCha8Rng;

use super::acceptance::{AcceptanceRule, DraftDistribution, Verdict, overlap, residual};
use crate::error::{Error, Result};
use crate::metrics::Timings;
use crate::sampling::{SamplingConfig, sample};

/// How large a tree a step drafts: at most `budget` nodes, `depth` levels below the committed
/// tokens, and `width` children per node and new nodes per level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeShape {
    pub budget: usize,
    pub depth: usize,
    pub width: usize,
}

/// Children per node and nodes per level when a shape does not say.
pub const DEFAULT_WIDTH: usize = 4;
/// The most nodes a tree may hold: its verify feeds them all as rows of one forward.
pub const MAX_BUDGET: usize = 256;

impl TreeShape {
    /// `budget:B,depth:D[,width:W]`, in any order.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let (mut budget, mut depth, mut width) = (None, None, None);
        for part in text.split(',') {
            let (key, value) = part.split_once(':').ok_or_else(|| {
                format!("`{text}`: write `budget:NODES,depth:LEVELS` with an optional `,width:CHILDREN`")
            })?;
            let value: usize =
                value.trim().parse().map_err(|_| format!("`{text}`: `{key}` must be a whole number"))?;
            let slot = match key.trim() {
                "budget" => &mut budget,
                "depth" => &mut depth,
                "width" => &mut width,
                other => {
                    return Err(format!(
                        "`{text}`: unknown key `{other}`; a tree has budget, depth and width"
                    ));
                }
            };
            if slot.replace(value).is_some() {
                return Err(format!("`{text}`: `{key}` is given twice"));
            }
        }
        let (Some(budget), Some(depth)) = (budget, depth) else {
            return Err(format!("`{text}`: a tree needs both `budget` and `depth`"));
        };
        let shape = Self { budget, depth, width: width.unwrap_or(DEFAULT_WIDTH) };
        if !(1..=MAX_BUDGET).contains(&budget) {
            return Err(format!("`{text}`: the budget must be in 1..={MAX_BUDGET} nodes"));
        }
        if !(1..=budget).contains(&depth) {
            return Err(format!("`{text}`: the depth must be in 1..={budget} (at most the budget)"));
        }
        if shape.width == 0 {
            return Err(format!("`{text}`: the width must be at least 1"));
        }
        Ok(shape)
    }

    /// As a config writes it, every key given.
    pub fn name(&self) -> String {
        format!("budget:{},depth:{},width:{}", self.budget, self.depth, self.width)
    }
}

/// A draft tree. Node `i` is `tokens[i]` after node `parents[i]` (`None`: after the committed
/// tokens). Nodes come level by level; siblings in the order they were drawn.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DraftTree {
    pub tokens: Vec<u32>,
    pub parents: Vec<Option<usize>>,
    /// The distribution each context's children were drawn from (without replacement):
    /// `[0]` after the committed tokens, `[i + 1]` after node `i`; `None` for a leaf.
    pub qs: Vec<Option<DraftDistribution>>,
}

impl DraftTree {
    /// A chain: each token the only child of the one before, drawn from `qs[i]`.
    pub fn chain(tokens: Vec<u32>, qs: Vec<DraftDistribution>) -> Self {
        let n = tokens.len();
        let mut qs: Vec<_> = qs.into_iter().map(Some).collect();
        qs.push(None);
        Self { tokens, parents: (0..n).map(|i| i.checked_sub(1)).collect(), qs }
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Whether every node is the only child of the one before it.
    pub fn is_chain(&self) -> bool {
        self.parents.iter().enumerate().all(|(i, &p)| p == i.checked_sub(1))
    }

    /// The number of levels: the longest branch.
    pub fn depth(&self) -> usize {
        self.depths().into_iter().max().unwrap_or(0)
    }

    /// Each node's level, 1 for children of the committed tokens.
    pub fn depths(&self) -> Vec<usize> {
        let mut depths = Vec::with_capacity(self.len());
        for &parent in &self.parents {
            depths.push(parent.map_or(1, |p| depths[p] + 1));
        }
        depths
    }

    /// The children of context `c` (0: the committed tokens; `i + 1`: node `i`) in draw order.
    fn children(&self, c: usize) -> impl Iterator<Item = usize> + '_ {
        let parent = c.checked_sub(1);
        self.parents.iter().enumerate().filter(move |&(_, &p)| p == parent).map(|(i, _)| i)
    }

    fn push(&mut self, token: u32, context: usize) {
        self.tokens.push(token);
        self.parents.push(context.checked_sub(1));
        self.qs.push(None);
    }
}

/// What verifying a tree decided.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeOutcome {
    /// The accepted branch, nodes from the first level down.
    pub path: Vec<usize>,
    /// The token after it: drawn from the residual at the first context whose children were
    /// all rejected, or from the target's distribution after a leaf (the bonus token).
    pub next: u32,
    /// β = Σ min(p, q) at each context where the acceptance test ran.
    pub overlaps: Vec<f64>,
}

/// Walks `tree` from the committed tokens: at each context, tests its children in draw order
/// against the target's distribution there (`target(c)`, asked only for contexts the walk
/// reaches); the first accepted child becomes the next context. After a rejection, the target
/// distribution becomes the residual norm(max(0, p − q)) and the draft distribution loses the
/// rejected token, as drawing without replacement left it for the next sibling; when every
/// child is rejected, the rule's resample from the last residual ends the walk. With one
/// child per node this is Leviathan et al.'s Algorithm 1, draw for draw.
pub fn verify_tree<P: AsRef<[f64]>>(
    rule: &(impl AcceptanceRule + ?Sized),
    mut target: impl FnMut(usize) -> Result<P>,
    tree: &DraftTree,
    rng: &mut ChaCha8Rng,
) -> Result<TreeOutcome> {
    let (mut path, mut overlaps, mut context) = (Vec::new(), Vec::new(), 0);
    'walk: loop {
        let p = target(context)?;
        let children: Vec<usize> = tree.children(context).collect();
        let Some(q) = tree.qs[context].as_ref().filter(|_| !children.is_empty()) else {
            return Ok(TreeOutcome { path, next: sample(p.as_ref(), rng), overlaps });
        };
        overlaps.push(overlap(p.as_ref(), q));
        let (mut p, mut q) = (Cow::Borrowed(p.as_ref()), Cow::Borrowed(q));
        for (i, &child) in children.iter().enumerate() {
            let token = tree.tokens[child];
            match rule.verify(&p, &q, token, rng) {
                Verdict::Accepted => {
                    path.push(child);
                    context = child + 1;
                    continue 'walk;
                }
                Verdict::Rejected { token: next } if i + 1 == children.len() => {
                    return Ok(TreeOutcome { path, next, overlaps });
                }
                Verdict::Rejected { .. } => {
                    p = Cow::Owned(residual(&p, &q));
                    q = Cow::Owned(q.without(token, p.len()));
                }
            }
        }
    }
}

/// Grows a tree after the committed tokens (`position` of them) from the drafter's logits
/// there (`root`, over the shared vocabulary). Level by level, it draws up to `width` new
/// nodes, each time for the context whose next child is worth most: the context's value times
/// the probability of its next-ranked token (EAGLE-2's cumulative probability, known before the
/// draw). At T = 0 a context's children are its tokens by descending probability at temperature
/// 1; at T > 0 draws without replacement from its processed distribution, the i-th valued as the
/// i-th most probable token (see `Context::top`).
/// `expand(tree, nodes, timings)` gives the drafter's logits after each node of the range
/// (the level just drawn, the tree's last nodes).
pub fn grow(
    shape: &TreeShape,
    draws: &Draws,
    position: usize,
    root: Vec<f32>,
    rng: &mut ChaCha8Rng,
    timings: &mut Timings,
    mut expand: impl FnMut(&DraftTree, Range<usize>, &mut Timings) -> Result<Vec<Vec<f32>>>,
) -> Result<DraftTree> {
    let mut tree = DraftTree { qs: vec![None], ..DraftTree::default() };
    let mut scores = vec![1.0];
    let mut level: Vec<(usize, Vec<f32>)> = vec![(0, root)];
    for depth in 0..shape.depth {
        let start = std::time::Instant::now();
        let mut contexts = level
            .iter()
            .map(|(c, logits)| Context::new(*c, scores[*c], logits, draws, position + depth, shape.width))
            .collect::<Result<Vec<_>>>()?;
        let first = tree.len();
        let room = shape.width.min(shape.budget - first);
        for _ in 0..room {
            let best = contexts
                .iter_mut()
                .filter(|c| c.drawn.len() < shape.width)
                .map(|c| (c.worth(), c))
                .filter(|(worth, _)| *worth > 0.0)
                .max_by(|a, b| a.0.total_cmp(&b.0));
            let Some((_, context)) = best else { break };
            let (token, weight) = context.draw(rng);
            tree.push(token, context.index);
            scores.push(context.score * weight);
        }
        for context in contexts.into_iter().filter(|c| !c.drawn.is_empty()) {
            let index = context.index;
            tree.qs[index] = Some(context.distribution());
        }
        timings.sampling += start.elapsed();
        if tree.len() == first || depth + 1 == shape.depth || tree.len() == shape.budget {
            break;
        }
        let rows = expand(&tree, first..tree.len(), timings)?;
        level = (first..tree.len()).map(|i| i + 1).zip(rows).collect();
    }
    Ok(tree)
}

/// How nodes are drawn: the step's sampling, and the tokens never drafted.
#[derive(Debug, Clone, Copy)]
pub struct Draws<'a> {
    pub sampling: &'a SamplingConfig,
    pub banned: &'a [u32],
}

/// A context of the level being drawn.
struct Context {
    /// 0 for the committed tokens, `i + 1` after node `i`.
    index: usize,
    /// The value of reaching it: the product of its ancestors' child values.
    score: f64,
    /// At T > 0 the processed distribution its children are drawn from; empty at T = 0, where
    /// that distribution is one-hot on the most probable token.
    q: Vec<f64>,
    /// Its `width` most probable tokens, best first (the lowest id first among equals, as the
    /// greedy sampler), by `q`, or at T = 0 by the drafter's probabilities at temperature 1. The
    /// i-th child's value is the i-th probability: at T = 0 it is that child's; at T > 0, where
    /// the walk tests children in draw order and reaches a later one only after the earlier are
    /// rejected, the drawn token's own probability would overrate a late draw.
    top: Vec<(u32, f64)>,
    /// At T > 0 from the second draw on: `q` without the tokens drawn.
    left: Option<Vec<f64>>,
    drawn: Vec<u32>,
}

impl Context {
    fn new(
        index: usize,
        score: f64,
        logits: &[f32],
        draws: &Draws,
        position: usize,
        width: usize,
    ) -> Result<Self> {
        let (q, top) = if draws.sampling.is_greedy() {
            (Vec::new(), most_probable_logits(logits, draws.banned, width, position)?)
        } else {
            let q = draws.sampling.probabilities_banning(logits, draws.banned, "draft", position)?;
            let top = most_probable(&q, width);
            (q, top)
        };
        Ok(Self { index, score, q, top, left: None, drawn: Vec::new() })
    }

    /// The value of its next child (0 once it has as many as tokens it can draw).
    fn worth(&self) -> f64 {
        self.top.get(self.drawn.len()).map_or(0.0, |&(_, weight)| self.score * weight)
    }

    /// Its next child and that child's value.
    fn draw(&mut self, rng: &mut ChaCha8Rng) -> (u32, f64) {
        let (best, weight) = self.top[self.drawn.len()];
        let token = if self.q.is_empty() {
            best
        } else if self.drawn.is_empty() {
            sample(&self.q, rng)
        } else {
            let (q, drawn) = (&self.q, &self.drawn);
            let left = self.left.get_or_insert_with(|| {
                let mut left = q.clone();
                drawn.iter().for_each(|&t| left[t as usize] = 0.0);
                left
            });
            sample(left, rng)
        };
        if let Some(left) = &mut self.left {
            left[token as usize] = 0.0;
        }
        self.drawn.push(token);
        (token, weight)
    }

    /// What its children were drawn from, for the verify.
    fn distribution(self) -> DraftDistribution {
        if self.q.is_empty() {
            DraftDistribution::Certain(self.top[0].0)
        } else {
            DraftDistribution::Dense(self.q)
        }
    }
}

/// At T = 0, where they only rank children: the `n` most probable tokens at temperature 1 and
/// their probabilities, read off the logits without a softmax over the vocabulary (a token more
/// than `NEGLIGIBLE` below the best adds under e^-40 of it to the normaliser and is left out).
fn most_probable_logits(
    logits: &[f32],
    banned: &[u32],
    n: usize,
    position: usize,
) -> Result<Vec<(u32, f64)>> {
    const NEGLIGIBLE: f32 = 40.0;
    if !logits.iter().all(|x| x.is_finite()) {
        return Err(Error::NonFiniteLogits { model: "draft", position });
    }
    let allowed = |token: usize| !banned.contains(&(token as u32));
    let best = (0..logits.len()).filter(|&t| allowed(t)).map(|t| logits[t]).fold(f32::NEG_INFINITY, f32::max);
    if best == f32::NEG_INFINITY {
        return Err(Error::InvalidSampling("every token is banned".into()));
    }
    let mut normaliser = 0.0f64;
    let mut weights = Vec::new();
    for (token, &logit) in logits.iter().enumerate() {
        if logit >= best - NEGLIGIBLE && allowed(token) {
            let weight = f64::from(logit - best).exp();
            normaliser += weight;
            weights.push((token, weight));
        }
    }
    Ok(best_of(weights.into_iter().map(|(token, weight)| (token as u32, weight / normaliser)), n))
}

/// The `n` most probable tokens of `p` with positive probability, best first, the lowest id
/// first among equals.
fn most_probable(p: &[f64], n: usize) -> Vec<(u32, f64)> {
    best_of(p.iter().enumerate().map(|(token, &weight)| (token as u32, weight)), n)
}

/// `most_probable` over `(token, probability)` pairs in id order.
fn best_of(p: impl IntoIterator<Item = (u32, f64)>, n: usize) -> Vec<(u32, f64)> {
    let mut top: Vec<(u32, f64)> = Vec::with_capacity(n + 1);
    for (token, weight) in p {
        if weight <= 0.0 || (top.len() == n && weight <= top[n - 1].1) {
            continue;
        }
        let at = top.partition_point(|&(_, w)| w >= weight);
        top.insert(at, (token, weight));
        top.truncate(n);
    }
    top
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decoding::acceptance::RejectionSampling;
    use rand::SeedableRng;

    fn dense(q: &[f64]) -> DraftDistribution {
        DraftDistribution::Dense(q.to_vec())
    }

    #[test]
    fn shapes_parse_and_name_themselves() {
        let shape = TreeShape::parse("depth:5,budget:16").unwrap();
        assert_eq!(shape, TreeShape { budget: 16, depth: 5, width: DEFAULT_WIDTH });
        assert_eq!(TreeShape::parse(&shape.name()).unwrap(), shape);
        assert_eq!(TreeShape::parse("budget:8,depth:3,width:2").unwrap().width, 2);
        for bad in [
            "",
            "budget:16",
            "budget:0,depth:1",
            "budget:4,depth:5",
            "budget:8,depth:2,width:0",
            "budget:x,depth:2",
            "budget:8,depth:2,size:3",
            "budget:8,budget:9,depth:2",
            "budget:999,depth:3",
        ] {
            assert!(TreeShape::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_chain_proposal_is_a_tree_of_single_children() {
        let chain = DraftTree::chain(vec![3, 1], vec![dense(&[1.0]), dense(&[1.0])]);
        assert!(chain.is_chain());
        assert_eq!((chain.depth(), chain.parents.clone(), chain.qs.len()), (2, vec![None, Some(0)], 3));
        assert!(chain.qs[2].is_none());
    }

    #[test]
    fn a_block_stops_at_the_first_rejection_or_adds_a_bonus_token() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let certain = vec![0.0, 1.0];
        let never = vec![1.0, 0.0];
        // Position 1 agrees, position 2 proposes a token the target forbids.
        let ps = [certain.clone(), certain.clone(), certain.clone()];
        let chain = DraftTree::chain(vec![1, 0], vec![dense(&certain), dense(&never)]);
        let out = verify_tree(&RejectionSampling, |i| Ok(&ps[i]), &chain, &mut rng).unwrap();
        assert_eq!((out.path, out.next), (vec![0], 1));
        assert_eq!(out.overlaps, vec![1.0, 0.0]);
        // Everything agrees: both kept, bonus drawn from the last target row.
        let ps = [certain.clone(), certain.clone(), never.clone()];
        let chain = DraftTree::chain(vec![1, 1], vec![dense(&certain), dense(&certain)]);
        let out = verify_tree(&RejectionSampling, |i| Ok(&ps[i]), &chain, &mut rng).unwrap();
        assert_eq!((out.path, out.next), (vec![0, 1], 0));
    }

    #[test]
    fn a_rejected_first_child_hands_over_to_its_sibling() {
        // Greedy target on token 2; the draft's first child 0, its second 2, whose child 1 the
        // target takes after 2.
        let tree = DraftTree {
            tokens: vec![0, 2, 1],
            parents: vec![None, None, Some(1)],
            qs: vec![Some(dense(&[1.0, 0.0, 0.0])), None, Some(dense(&[0.0, 1.0, 0.0])), None],
        };
        let ps = [vec![0.0, 0.0, 1.0], vec![1.0, 0.0, 0.0], vec![0.0, 1.0, 0.0], vec![0.0, 0.0, 1.0]];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let out = verify_tree(&RejectionSampling, |c| Ok(&ps[c]), &tree, &mut rng).unwrap();
        assert_eq!((out.path, out.next), (vec![1, 2], 2));
    }

    #[test]
    fn greedy_growth_takes_the_most_probable_branches_within_the_budget() {
        // Logits over 4 tokens: after the committed tokens 3 ≫ 2 > the rest; every node then
        // prefers token 0.
        let root = vec![0.0, 0.0, 2.0, 4.0];
        let draws = Draws { sampling: &SamplingConfig::greedy(), banned: &[] };
        let shape = TreeShape { budget: 5, depth: 3, width: 2 };
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let tree = grow(&shape, &draws, 7, root, &mut rng, &mut Timings::default(), |tree, nodes, _| {
            assert_eq!(nodes.end, tree.len());
            Ok(nodes.map(|_| vec![3.0, 0.0, 0.0, 0.0]).collect())
        })
        .unwrap();
        assert_eq!(tree.tokens[..2], [3, 2]);
        assert_eq!(tree.parents[..2], [None, None]);
        // Level 2: the best two are the first child of each level-1 node.
        assert_eq!((tree.tokens[2], tree.parents[2]), (0, Some(0)));
        assert_eq!(tree.len(), 5);
        assert!(tree.depth() <= 3);
        // At T = 0 the root's children were drawn from its arg-max, one-hot.
        assert_eq!(tree.qs[0], Some(DraftDistribution::Certain(3)));
    }

    #[test]
    fn the_most_probable_come_first_and_the_lowest_id_among_equals() {
        let p = [0.1, 0.3, 0.0, 0.3, 0.2, 0.1];
        assert_eq!(most_probable(&p, 3), vec![(1, 0.3), (3, 0.3), (4, 0.2)]);
        assert_eq!(most_probable(&p, 9).len(), 5);
        assert_eq!(most_probable(&[0.0, 1.0], 2), vec![(1, 1.0)]);
        // From logits: softmax order and values, banned tokens left out.
        let logits = [1.0, 3.0, 3.0, 2.0];
        let top = most_probable_logits(&logits, &[2], 2, 0).unwrap();
        let z = 1f64.exp() + 3f64.exp() + 2f64.exp();
        assert_eq!((top[0].0, top[1].0), (1, 3));
        assert!((top[0].1 - 3f64.exp() / z).abs() < 1e-12 && (top[1].1 - 2f64.exp() / z).abs() < 1e-12);
        assert!(most_probable_logits(&[f32::NAN, 0.0], &[], 2, 0).is_err());
        assert!(most_probable_logits(&[0.0], &[0], 1, 0).is_err());
    }

    #[test]
    fn no_context_is_drawn_past_its_support() {
        // At T = 1 with top-k 1 each context has one token: a width of 3 still draws one child.
        let sampling = SamplingConfig { top_k: 1, ..SamplingConfig::with_temperature(1.0) };
        let draws = Draws { sampling: &sampling, banned: &[] };
        let shape = TreeShape { budget: 9, depth: 3, width: 3 };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let tree =
            grow(&shape, &draws, 0, vec![0.0, 1.0, 0.5], &mut rng, &mut Timings::default(), |_, nodes, _| {
                Ok(nodes.map(|_| vec![1.0, 0.0, 0.5]).collect())
            })
            .unwrap();
        assert!(tree.is_chain());
        assert_eq!(tree.tokens, vec![1, 0, 0]);
    }
}
