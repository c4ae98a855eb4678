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
    /// A tree of rows instead of a chain: `parents[i]` is the row of this step that row `i`
    /// follows (always an earlier row), or `None` for a row that follows the cached positions
    /// directly. Row `i` sits at the position after its parent and sees the cached positions,
    /// its ancestors and itself. `None` is the chain: row `i` follows row `i - 1`.
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
    /// Each row's position (RoPE angle).
    pub positions: Vec<usize>,
    /// `[rows, rows]`, row-major: whether row `i` sees row `j` of this step. `None` for the
    /// chain, where row `i` sees rows `0..=i`.
    pub visible: Option<Vec<bool>>,
}

impl Geometry {
    /// The geometry of `step` after `start` cached positions; a parent that is not an earlier
    /// row is an error naming it.
    pub fn of(step: &Step, start: usize) -> Result<Self> {
        let rows = step.ids.len();
        let Some(parents) = step.parents else {
            return Ok(Self { start, positions: (start..start + rows).collect(), visible: None });
        };
        if parents.len() != rows {
            return Err(Error::InvalidConfig(format!(
                "a tree step gives {} parents for {rows} rows",
                parents.len()
            )));
        }
        let mut positions = Vec::with_capacity(rows);
        let mut visible = vec![false; rows * rows];
        for (i, parent) in parents.iter().enumerate() {
            match *parent {
                Some(p) if p >= i => {
                    return Err(Error::InvalidConfig(format!(
                        "tree row {i} names row {p} as its parent; a parent must come before its child"
                    )));
                }
                Some(p) => {
                    positions.push(positions[p] + 1);
                    let (above, row) = visible.split_at_mut(i * rows);
                    row[..rows].copy_from_slice(&above[p * rows..(p + 1) * rows]);
                }
                None => positions.push(start),
            }
            visible[i * rows + i] = true;
        }
        Ok(Self { start, positions, visible: Some(visible) })
    }

    pub fn rows(&self) -> usize {
        self.positions.len()
    }

    /// Whether row `i` sees row `j` of this step.
    pub fn sees(&self, i: usize, j: usize) -> bool {
        match &self.visible {
            None => j <= i,
            Some(visible) => visible[i * self.rows() + j],
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
    fn a_parent_after_its_child_is_an_error() {
        let ids = [1, 2];
        let parents = [Some(1), None];
        let step = Step { parents: Some(&parents), ..Step::new(&ids, 1) };
        let err = Geometry::of(&step, 0).unwrap_err().to_string();
        assert!(err.contains("parent"), "{err}");
    }
}
