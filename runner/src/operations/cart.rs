//! A CART classification tree (Gini impurity, binary splits on one numeric feature), fitted
//! deterministically, for operation 300's `decision_tree`.
//!
//! Why not linfa-trees' `DecisionTree` (0.8): it sums class frequencies kept in hash maps as
//! `f32`, so the Gini scores of candidate splits — and with them the chosen split among near
//! ties and the reported feature importances — change from run to run with the maps' random
//! order; when scanning a feature's globally sorted values it skips a candidate split whenever
//! the next value belongs to another node and equals the current one, so deeper nodes miss
//! splits; and its thresholds are midpoints to values outside the node. Against scikit-learn on
//! the wine data that cost 3.7 points of test accuracy (see `tests/golden.rs`).
//!
//! What this tree does, like scikit-learn's `DecisionTreeClassifier` with `criterion="gini"`,
//! `min_samples_split=2`, `min_samples_leaf=1`: a node is split unless it is pure, has fewer than
//! two rows or is at `max_depth`; the split is the one with the lowest weighted Gini impurity of
//! the two children over every feature and every threshold between two adjacent distinct values
//! of the node's rows (the midpoint; rows with `value <= threshold` go left); a split must lower
//! the impurity, or the node stays a leaf. Ties between equally good splits go to the lower
//! feature index, then the lower threshold (scikit-learn draws the feature order at random). A
//! leaf predicts its most frequent training class, ties to the smallest class id. Feature
//! importances are scikit-learn's: the total impurity decrease weighted by the share of rows at
//! each node, per feature, normalised to sum to 1 (all 0 for a tree without splits).
//! All arithmetic is on integer counts and `f64`, in a fixed order, so one input gives one tree.
//!
//! It does not do regression, sample weights, pruning, entropy, or missing values (the caller
//! drops rows with nulls).

use ndarray::{Array2, ArrayView1};

/// One node of a fitted tree (an index into [`ClassificationTree::nodes`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Leaf {
        class: usize,
    },
    Split {
        feature: usize,
        threshold: f64,
        left: usize,
        right: usize,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClassificationTree {
    /// The nodes; the root is `nodes[0]`.
    pub nodes: Vec<Node>,
    /// Depth of the deepest leaf (0 for a tree that is one leaf).
    pub depth: usize,
    pub leaves: usize,
    /// Per feature, its share of the total weighted impurity decrease.
    pub feature_importances: Vec<f64>,
}

/// Why fitting stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FitError {
    /// `keep_going` returned false (the task was cancelled).
    Stopped,
    /// Rows and labels differ in number, or there are no rows.
    Shape(String),
}

fn gini(counts: &[u64], n: u64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let n = n as f64;
    1.0 - counts
        .iter()
        .map(|&c| {
            let p = c as f64 / n;
            p * p
        })
        .sum::<f64>()
}

/// Most frequent class in `counts`, ties to the smallest id.
fn majority(counts: &[u64]) -> usize {
    let best = counts.iter().copied().max().unwrap_or(0);
    counts.iter().position(|&c| c == best).unwrap_or(0)
}

struct BestSplit {
    feature: usize,
    threshold: f64,
    /// Weighted child impurity: `(n_left · gini_left + n_right · gini_right) / n`.
    impurity: f64,
    /// How many of the node's rows (sorted by `feature`) go left.
    n_left: usize,
}

/// The best split of `rows` (positions into `x`), or `None` if every feature is constant on them.
fn best_split(
    x: &Array2<f64>,
    y: &[usize],
    n_classes: usize,
    rows: &mut [usize],
    parent: &[u64],
) -> Option<BestSplit> {
    let n = rows.len() as u64;
    let mut best: Option<BestSplit> = None;
    let mut left = vec![0u64; n_classes];
    let mut right = vec![0u64; n_classes];
    for feature in 0..x.ncols() {
        // Stable on the row positions, so equal values keep a fixed order.
        rows.sort_by(|&a, &b| x[[a, feature]].total_cmp(&x[[b, feature]]).then(a.cmp(&b)));
        left.iter_mut().for_each(|c| *c = 0);
        right.copy_from_slice(parent);
        for i in 0..rows.len() - 1 {
            let class = y[rows[i]];
            left[class] += 1;
            right[class] -= 1;
            let (v, next) = (x[[rows[i], feature]], x[[rows[i + 1], feature]]);
            if v == next {
                continue; // equal values stay on one side
            }
            let n_left = (i + 1) as u64;
            let n_right = n - n_left;
            let impurity = (n_left as f64 * gini(&left, n_left)
                + n_right as f64 * gini(&right, n_right))
                / n as f64;
            if best.as_ref().is_none_or(|b| impurity < b.impurity) {
                // The midpoint, unless rounding puts it on `next` (then `v`: still between).
                let mid = v / 2.0 + next / 2.0;
                let threshold = if mid >= next || !mid.is_finite() {
                    v
                } else {
                    mid
                };
                best = Some(BestSplit {
                    feature,
                    threshold,
                    impurity,
                    n_left: i + 1,
                });
            }
        }
    }
    best
}

impl ClassificationTree {
    /// Fit on the rows of `x` with class ids `y` (each `< n_classes`). `keep_going` is asked
    /// before each node is split; `false` stops with [`FitError::Stopped`].
    pub fn fit(
        x: &Array2<f64>,
        y: &[usize],
        n_classes: usize,
        max_depth: Option<usize>,
        keep_going: &dyn Fn() -> bool,
    ) -> Result<Self, FitError> {
        let n = x.nrows();
        if n == 0 || y.len() != n || y.iter().any(|&c| c >= n_classes) {
            return Err(FitError::Shape(format!(
                "{n} rows, {} labels, {n_classes} classes",
                y.len()
            )));
        }
        let mut nodes: Vec<Node> = Vec::new();
        let mut importances = vec![0.0; x.ncols()];
        let (mut depth, mut leaves) = (0, 0);
        // Work list of (node index, its rows, its depth): explicit, so a deep tree cannot
        // overflow the stack.
        nodes.push(Node::Leaf { class: 0 });
        let mut work = vec![(0usize, (0..n).collect::<Vec<usize>>(), 0usize)];
        while let Some((at, mut rows, node_depth)) = work.pop() {
            if !keep_going() {
                return Err(FitError::Stopped);
            }
            let mut counts = vec![0u64; n_classes];
            for &r in &rows {
                counts[y[r]] += 1;
            }
            let count = rows.len() as u64;
            let impurity = gini(&counts, count);
            let may_split =
                rows.len() >= 2 && impurity > 0.0 && max_depth.is_none_or(|d| node_depth < d);
            let split = if may_split {
                best_split(x, y, n_classes, &mut rows, &counts).filter(|s| s.impurity < impurity)
            } else {
                None
            };
            let Some(split) = split else {
                nodes[at] = Node::Leaf {
                    class: majority(&counts),
                };
                depth = depth.max(node_depth);
                leaves += 1;
                continue;
            };
            importances[split.feature] += count as f64 / n as f64 * (impurity - split.impurity);
            let f = split.feature;
            rows.sort_by(|&a, &b| x[[a, f]].total_cmp(&x[[b, f]]).then(a.cmp(&b)));
            let right_rows = rows.split_off(split.n_left);
            let (left, right) = (nodes.len(), nodes.len() + 1);
            nodes.push(Node::Leaf { class: 0 });
            nodes.push(Node::Leaf { class: 0 });
            nodes[at] = Node::Split {
                feature: f,
                threshold: split.threshold,
                left,
                right,
            };
            // Right first, so the left subtree is built (and numbered) first.
            work.push((right, right_rows, node_depth + 1));
            work.push((left, rows, node_depth + 1));
        }
        let total: f64 = importances.iter().sum();
        if total > 0.0 {
            importances.iter_mut().for_each(|v| *v /= total);
        }
        Ok(Self {
            nodes,
            depth,
            leaves,
            feature_importances: importances,
        })
    }

    /// The class the tree predicts for one row of features.
    pub fn predict(&self, row: ArrayView1<'_, f64>) -> usize {
        let mut at = 0;
        loop {
            match &self.nodes[at] {
                Node::Leaf { class } => return *class,
                Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } => {
                    // A NaN feature (never passed by the caller) goes right.
                    at = if row[*feature] <= *threshold {
                        *left
                    } else {
                        *right
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn fit(x: Array2<f64>, y: &[usize], max_depth: Option<usize>) -> ClassificationTree {
        let k = y.iter().max().map_or(1, |m| m + 1);
        ClassificationTree::fit(&x, y, k, max_depth, &|| true).unwrap()
    }

    #[test]
    fn gini_of_counts() {
        assert_eq!(gini(&[6, 2, 0], 8), 0.375);
        assert_eq!(gini(&[4, 0], 4), 0.0);
        assert_eq!(gini(&[], 0), 0.0);
    }

    #[test]
    fn splits_at_the_midpoint_between_the_nodes_own_values() {
        let t = fit(array![[1.0], [2.0], [10.0], [12.0]], &[0, 0, 1, 1], None);
        assert_eq!(
            t.nodes[0],
            Node::Split {
                feature: 0,
                threshold: 6.0,
                left: 1,
                right: 2
            }
        );
        assert_eq!((t.depth, t.leaves), (1, 2));
        assert_eq!(t.feature_importances, vec![1.0]);
        assert_eq!(t.predict(array![5.9].view()), 0);
        assert_eq!(t.predict(array![6.0].view()), 0, "<= threshold goes left");
        assert_eq!(t.predict(array![6.1].view()), 1);
    }

    /// The case linfa-trees 0.8 gets wrong: in the second level, the rows of one node are
    /// {0: x=1 (a), 2: x=3 (b)} while a row of the other node also has x=1; linfa's scan over the
    /// globally sorted values sees "next value equal" and never tries the split between 1 and
    /// 3, leaving a mixed leaf.
    #[test]
    fn finds_splits_whose_value_repeats_in_another_node() {
        // Feature 0 separates {rows 0, 1, 2} from {3, 4}; inside the first group only feature 1
        // separates the classes, and its value 1.0 also occurs in row 3 of the other group.
        let x = array![[0.0, 1.0], [0.0, 3.0], [0.0, 3.0], [5.0, 1.0], [5.0, 1.0]];
        let y = [0, 1, 1, 2, 2];
        let t = fit(x.clone(), &y, None);
        for (row, &class) in x.rows().into_iter().zip(&y) {
            assert_eq!(t.predict(row), class, "{row}");
        }
        assert_eq!(t.leaves, 3);
    }

    #[test]
    fn max_depth_and_majority_with_ties_to_the_smallest_class() {
        // Depth 0: one leaf; 2–2 tie → class 0.
        let t = fit(array![[1.0], [2.0], [3.0], [4.0]], &[1, 0, 1, 0], Some(0));
        assert_eq!(t.nodes, vec![Node::Leaf { class: 0 }]);
        assert_eq!((t.depth, t.leaves), (0, 1));
        assert_eq!(t.feature_importances, vec![0.0]);
        // Identical rows with different classes cannot be split.
        let t = fit(array![[1.0], [1.0], [1.0]], &[1, 1, 0], None);
        assert_eq!(t.nodes, vec![Node::Leaf { class: 1 }]);
    }

    #[test]
    fn ties_between_features_go_to_the_lower_index_and_importances_are_weighted() {
        // Both features separate the classes perfectly: feature 0 wins.
        let t = fit(
            array![[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0]],
            &[0, 0, 1, 1],
            None,
        );
        assert!(matches!(t.nodes[0], Node::Split { feature: 0, .. }));
        assert_eq!(t.feature_importances, vec![1.0, 0.0]);
        // Two levels: root on feature 1 (decrease 0.5·… ), then feature 0 in one child.
        // Rows: class = 2 if f1 > 0 else (f0 > 0 ? 1 : 0).
        let x = array![
            [0.0, 0.0],
            [1.0, 0.0],
            [0.0, 1.0],
            [1.0, 1.0],
            [0.0, 1.0],
            [1.0, 1.0]
        ];
        let y = [0, 1, 2, 2, 2, 2];
        let t = fit(x.clone(), &y, None);
        // Root: gini 1 − (1/36 + 1/36 + 16/36) = 18/36; split f1 → {0,1} (gini 0.5), {2..5} (0).
        // Decrease at root: 0.5 − (2/6)·0.5 = 1/3; at the left child: (2/6)·0.5 = 1/6.
        let imp = &t.feature_importances;
        assert!((imp[1] - (1.0 / 3.0) / 0.5).abs() < 1e-12, "{imp:?}");
        assert!((imp[0] - (1.0 / 6.0) / 0.5).abs() < 1e-12, "{imp:?}");
        for (row, &class) in x.rows().into_iter().zip(&y) {
            assert_eq!(t.predict(row), class);
        }
        assert_eq!((t.depth, t.leaves), (2, 3));
    }

    #[test]
    fn same_input_same_tree_and_cancel_stops() {
        let x = Array2::from_shape_fn((200, 3), |(i, j)| ((i * (j + 3)) % 17) as f64 * 0.37);
        let y: Vec<usize> = (0..200).map(|i| (i * 7 + i / 13) % 3).collect();
        let a = fit(x.clone(), &y, Some(6));
        for _ in 0..5 {
            assert_eq!(fit(x.clone(), &y, Some(6)), a);
        }
        assert_eq!(
            ClassificationTree::fit(&x, &y, 3, None, &|| false),
            Err(FitError::Stopped)
        );
        assert!(matches!(
            ClassificationTree::fit(&x, &y[..10], 3, None, &|| true),
            Err(FitError::Shape(_))
        ));
    }
}
