//! What one forward computes: the rows it feeds, where they sit, which earlier rows each one
//! sees, which logits and which hidden states come back. Decoding, verification, tree
//! verification and feature-level drafters all ask for a `Step`; the model body runs it once,
//! whatever the executor.

use crate::error::{Error, Result};

/// One forward over `ids`, which follow the positions held in the cache.
#[derive(Debug, Clone, Copy, Default)]
pub struct Step<'a> {
    pub ids: &'a [u32],
    /// Logits are returned for the last `logits_rows` rows (at most `ids.len()`; 0 for none, a
    /// prefill that only fills the cache). The LM head is the largest product of a step.
    pub logits_rows: usize,
    /// Layer `i` is left out wherever `skip[i]` is true (layers past the end run): the residual
    /// stream passes it unchanged and its cache stays empty.
    pub skip: &'a [bool],
    /// A tree of rows instead of a chain. `parents` lists the tree's rows in order: the last
    /// `parents.len() - ids.len()` cached positions (earlier rows of the same tree, fed by
    /// earlier steps), then this step's rows. `parents[t]` is the tree row that row `t` follows
    /// (always an earlier one), or `None` for a row that follows the positions before the tree.
    /// A row sits at the position after its parent and sees the positions before the tree, its
    /// ancestors and itself. `None` is the chain: row `i` follows row `i - 1`.
    pub parents: Option<&'a [Option<usize>]>,
    /// The residual stream entering each of these layers (Hugging Face's `hidden_states[l]`;
    /// `l = num_hidden_layers` is the last layer's output, before the final norm), for every
    /// row, as feature-level drafters read it.
    pub capture: &'a [usize],
}

impl<'a> Step<'a> {
    /// The chain of `ids` with logits for the last `rows`.
    pub fn new(ids: &'a [u32], logits_rows: usize) -> Self {
        Self { ids, logits_rows, ..Self::default() }
    }
}

/// Where the rows of a step sit and what each sees, derived once per forward.
#[derive(Debug, Clone)]
pub struct Geometry {
    /// Positions held in the cache before the step.
    pub start: usize,
    /// Where the tree begins: `start` less the cached rows of the step's tree (`start` for a
    /// chain, or a tree fed in one step).
    pub tree_start: usize,
    /// Each row's position (RoPE angle).
    pub positions: Vec<usize>,
    /// `[rows, start - tree_start + rows]`, row-major: whether row `i` sees tree row `c` (the
    /// cached tree rows, then this step's). `None` for the chain, where row `i` sees rows
    /// `0..=i`.
    pub visible: Option<Vec<bool>>,
}

impl Geometry {
    /// The geometry of `step` after `start` cached positions; a parent that is not an earlier
    /// row, or a tree longer than the cache holds, is an error naming it.
    pub fn of(step: &Step, start: usize) -> Result<Self> {
        let rows = step.ids.len();
        let Some(parents) = step.parents else {
            return Ok(Self {
                start,
                tree_start: start,
                positions: (start..start + rows).collect(),
                visible: None,
            });
        };
        let Some(cached) = parents.len().checked_sub(rows).filter(|&cached| cached <= start) else {
            return Err(Error::InvalidConfig(format!(
                "a tree step gives {} parents for {rows} rows after {start} cached positions",
                parents.len()
            )));
        };
        let (tree_start, width) = (start - cached, parents.len());
        let mut positions = Vec::with_capacity(width);
        // Ancestors of every tree row, itself included: `[width, width]`.
        let mut ancestors = vec![false; width * width];
        for (t, parent) in parents.iter().enumerate() {
            match *parent {
                Some(p) if p >= t => {
                    return Err(Error::InvalidConfig(format!(
                        "tree row {t} names row {p} as its parent; a parent must come before its child"
                    )));
                }
                Some(p) => {
                    positions.push(positions[p] + 1);
                    let (above, row) = ancestors.split_at_mut(t * width);
                    row[..width].copy_from_slice(&above[p * width..(p + 1) * width]);
                }
                None => positions.push(tree_start),
            }
            ancestors[t * width + t] = true;
        }
        Ok(Self {
            start,
            tree_start,
            positions: positions.split_off(cached),
            visible: Some(ancestors.split_off(cached * width)),
        })
    }

    pub fn rows(&self) -> usize {
        self.positions.len()
    }

    /// Tree rows held in the cache before the step.
    pub fn cached_tree_rows(&self) -> usize {
        self.start - self.tree_start
    }

    /// Whether row `i` sees tree row `c`: a cached tree row for `c < cached_tree_rows()`, else
    /// row `c - cached_tree_rows()` of this step (for a chain, where the tree is this step:
    /// row `c`).
    pub fn sees(&self, i: usize, c: usize) -> bool {
        match &self.visible {
            None => c <= i,
            Some(visible) => visible[i * (self.cached_tree_rows() + self.rows()) + c],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_sees_every_earlier_row_at_consecutive_positions() {
        let ids = [1, 2, 3];
        let geometry = Geometry::of(&Step::new(&ids, 1), 5).unwrap();
        assert_eq!(geometry.positions, vec![5, 6, 7]);
        assert!(geometry.sees(2, 0) && geometry.sees(1, 1) && !geometry.sees(0, 1));
    }

    #[test]
    fn a_tree_row_sees_its_ancestors_only_at_its_depth() {
        // 0 ─ 1 ─ 3
        //   └ 2
        let ids = [1, 2, 3, 4];
        let parents = [None, Some(0), Some(0), Some(1)];
        let step = Step { parents: Some(&parents), ..Step::new(&ids, 4) };
        let geometry = Geometry::of(&step, 10).unwrap();
        assert_eq!(geometry.positions, vec![10, 11, 11, 12]);
        assert!(geometry.sees(3, 1) && geometry.sees(3, 0) && !geometry.sees(3, 2));
        assert!(geometry.sees(2, 0) && !geometry.sees(2, 1));
    }

    #[test]
    fn a_tree_continued_from_the_cache_sees_its_cached_ancestors() {
        // Cached tree rows 0 ─ 1, 0 ─ 2 (after 10 positions before the tree, 13 cached); this
        // step feeds row 3 under 1 and row 4 under 2.
        let ids = [7, 8];
        let parents = [None, Some(0), Some(0), Some(1), Some(2)];
        let step = Step { parents: Some(&parents), ..Step::new(&ids, 2) };
        let geometry = Geometry::of(&step, 13).unwrap();
        assert_eq!((geometry.tree_start, geometry.positions.clone()), (10, vec![12, 12]));
        assert!(geometry.sees(0, 0) && geometry.sees(0, 1) && !geometry.sees(0, 2) && geometry.sees(0, 3));
        assert!(geometry.sees(1, 2) && !geometry.sees(1, 1) && !geometry.sees(1, 3) && geometry.sees(1, 4));
        // More tree rows than the cache holds.
        assert!(Geometry::of(&step, 2).is_err());
    }

    #[test]
    fn a_parent_after_its_child_is_an_error() {
        let ids = [1, 2];
        let parents = [Some(1), None];
        let step = Step { parents: Some(&parents), ..Step::new(&ids, 1) };
        let err = Geometry::of(&step, 0).unwrap_err().to_string();
        assert!(err.contains("parent"), "{err}");
    }
}
