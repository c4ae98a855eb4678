//! The step interface the next drafters build on, on both executors: a tree of rows verified in
//! one forward gives each row the logits its own branch gives as a chain, and the hidden states a
//! step captures are the residual stream the executors agree on.

mod common;

use specbench::backend::{Backend, ExecutorKind, Runtime};
use specbench::model::{Llama, Step};

const DIMS: &str = "vocab=96,hidden=64,intermediate=128,layers=3,heads=4,kv_heads=2,head_dim=16";

fn executors() -> Vec<(ExecutorKind, Runtime)> {
    [ExecutorKind::Host, ExecutorKind::Tensor]
        .into_iter()
        .map(|kind| (kind, Runtime::new(Backend::Flex, "f32").unwrap().with_executor(kind).unwrap()))
        .collect()
}

/// Random weights come from the device's one seeded generator: tests running at once would
/// interleave their draws, so models are built one at a time.
fn model(runtime: &Runtime) -> Llama {
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    common::random_model_on(DIMS, 7, 0.1, runtime)
}

/// Logits of `branch` fed as a chain after `prefix`, last row only.
fn chain_logits(model: &Llama, prefix: &[u32], branch: &[u32]) -> Vec<f32> {
    let mut cache = model.new_cache();
    model.step(&Step::new(prefix, 0), &mut cache, 96).unwrap();
    model.step(&Step::new(branch, 1), &mut cache, 96).unwrap().logits.remove(0)
}

#[test]
fn a_tree_step_gives_each_row_what_its_branch_gives_as_a_chain() {
    let prefix = [3, 14, 15, 92, 65];
    // Rows:  0 ─ 1 ─ 3 ─ 5
    //          └ 2 ─ 4
    let ids = [35, 89, 79, 32, 38, 46];
    let parents = [None, Some(0), Some(0), Some(1), Some(2), Some(3)];
    let branches: [&[usize]; 6] = [&[0], &[0, 1], &[0, 2], &[0, 1, 3], &[0, 2, 4], &[0, 1, 3, 5]];
    for (kind, runtime) in executors() {
        let model = model(&runtime);
        let mut cache = model.new_cache();
        model.step(&Step::new(&prefix, 0), &mut cache, 96).unwrap();
        let tree = Step { parents: Some(&parents), ..Step::new(&ids, ids.len()) };
        let out = model.step(&tree, &mut cache, 96).unwrap();
        assert_eq!(cache.len(), prefix.len() + ids.len());
        for (row, branch) in branches.iter().enumerate() {
            let branch_ids: Vec<u32> = branch.iter().map(|&r| ids[r]).collect();
            let expected = chain_logits(&model, &prefix, &branch_ids);
            let diff = common::max_abs_diff(&out.logits[row], &expected);
            assert!(diff < 1e-4, "{kind}: tree row {row} differs from its branch by {diff}");
        }
    }
}

/// After a tree step, keeping one branch's rows leaves the cache a chain of that branch would:
/// the next token's logits agree with the chain's, on both executors, for a branch that moves
/// rows down (0, 2, 4) and one that does not (0, 1, 3, 5).
#[test]
fn keeping_a_branch_leaves_the_cache_its_chain_leaves() {
    let prefix = [3, 14, 15, 92, 65];
    let ids = [35, 89, 79, 32, 38, 46];
    let parents = [None, Some(0), Some(0), Some(1), Some(2), Some(3)];
    for (kind, runtime) in executors() {
        let model = model(&runtime);
        for branch in [&[0usize, 2, 4][..], &[0, 1, 3, 5], &[0, 2]] {
            let mut cache = model.new_cache();
            model.step(&Step::new(&prefix, 0), &mut cache, 96).unwrap();
            let tree = Step { parents: Some(&parents), ..Step::new(&ids, 1) };
            model.step(&tree, &mut cache, 96).unwrap();
            cache.keep(prefix.len(), branch);
            assert_eq!(cache.len(), prefix.len() + branch.len());
            let next = [7];
            let kept = model.step(&Step::new(&next, 1), &mut cache, 96).unwrap().logits.remove(0);
            let mut chain: Vec<u32> = branch.iter().map(|&r| ids[r]).collect();
            chain.push(7);
            let expected = chain_logits(&model, &prefix, &chain);
            let diff = common::max_abs_diff(&kept, &expected);
            assert!(diff < 1e-4, "{kind}: after keeping {branch:?} the next row differs by {diff}");
        }
    }
}

/// A tree fed level by level, each step after the earlier levels in the cache, gives each row
/// what the whole tree in one step gives it.
#[test]
fn a_tree_fed_level_by_level_is_the_tree_fed_at_once() {
    let prefix = [3, 14, 15, 92, 65];
    let ids = [35, 89, 79, 32, 38, 46];
    let parents = [None, Some(0), Some(0), Some(1), Some(2), Some(3)];
    for (kind, runtime) in executors() {
        let model = model(&runtime);
        let mut cache = model.new_cache();
        model.step(&Step::new(&prefix, 0), &mut cache, 96).unwrap();
        let whole = Step { parents: Some(&parents), ..Step::new(&ids, ids.len()) };
        let expected = model.step(&whole, &mut cache.clone(), 96).unwrap().logits;
        let mut levels = Vec::new();
        for level in [0..1, 1..3, 3..5, 5..6] {
            let step =
                Step { parents: Some(&parents[..level.end]), ..Step::new(&ids[level.clone()], level.len()) };
            levels.extend(model.step(&step, &mut cache, 96).unwrap().logits);
        }
        for (row, (got, want)) in levels.iter().zip(&expected).enumerate() {
            let diff = common::max_abs_diff(got, want);
            assert!(diff < 1e-4, "{kind}: row {row} fed by level differs by {diff}");
        }
    }
}

#[test]
fn a_chain_given_as_a_tree_is_the_chain() {
    let ids = [1, 2, 3, 4, 5];
    let parents = [None, Some(0), Some(1), Some(2), Some(3)];
    for (kind, runtime) in executors() {
        let model = model(&runtime);
        let chain = model.step(&Step::new(&ids, 5), &mut model.new_cache(), 96).unwrap();
        let tree =
            model.step(&Step { parents: Some(&parents), ..Step::new(&ids, 5) }, &mut model.new_cache(), 96);
        assert_eq!(tree.unwrap().logits, chain.logits, "{kind}");
    }
}

#[test]
fn captured_hidden_states_agree_across_executors_and_start_at_the_embedding() {
    let ids = [9, 8, 7, 6];
    let capture = [0, 2, 3];
    let captured: Vec<Vec<Vec<f32>>> = executors()
        .into_iter()
        .map(|(_, runtime)| {
            let model = model(&runtime);
            let step = Step { capture: &capture, ..Step::new(&ids, 1) };
            model.step(&step, &mut model.new_cache(), 96).unwrap().hidden
        })
        .collect();
    let (host, tensor) = (&captured[0], &captured[1]);
    assert_eq!(host.len(), 3);
    for (layer, (h, t)) in capture.iter().zip(host.iter().zip(tensor)) {
        assert_eq!(h.len(), ids.len() * 64, "layer {layer}");
        let diff = common::max_abs_diff(h, t);
        assert!(diff < 1e-4, "hidden states entering layer {layer} differ by {diff}");
    }
    // Layer 0's input is the embedding, exactly.
    assert_eq!(host[0], tensor[0]);
}

#[test]
fn bad_steps_are_errors_naming_what_is_wrong() {
    let (_, runtime) = executors().remove(0);
    let model = model(&runtime);
    let ids = [1, 2];
    let err = model.step(&Step { capture: &[4], ..Step::new(&ids, 1) }, &mut model.new_cache(), 96);
    assert!(err.unwrap_err().to_string().contains("layer 4"));
    let parents = [Some(1), None];
    let err = model.step(&Step { parents: Some(&parents), ..Step::new(&ids, 1) }, &mut model.new_cache(), 96);
    assert!(err.unwrap_err().to_string().contains("parent"));
    // A cache made by the other executor.
    let (_, tensor) = executors().remove(1);
    let mut foreign = self::model(&tensor).new_cache();
    let err = model.step(&Step::new(&ids, 1), &mut foreign, 96).unwrap_err().to_string();
    assert!(err.contains("another executor"), "{err}");
}
