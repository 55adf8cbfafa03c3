//! What a new user writes first and plain Rust accepts, accepted by `#[task]` too (issue
//! 13's friction list), each grad-checked against the same loss written separately in
//! plain `f64`:
//! - a loop-carried value started as `DVector::zeros(n)`, without `::<S>`;
//! - a temporary as the labels argument (`softmax_cross_entropy(z, &labels_from(..))`);
//! - labels of every integer type (`u8`, `u16`, `u32`, `i32`, `i64`, `usize`);
//! - slicing a differentiated value (`x.columns(j, n)`; more in `tests/recurrent.rs`).
//!
//! The compile errors of the list are in `tests/ui`: labels of a float type
//! (`task_float_labels.rs`, one error at the argument listing the integer types) and an
//! `if` on a vector condition (`task_vector_if.rs`, one error naming `select`).
//!
//! Mutations tried (each made the named test fail, then was reverted): the macro no
//! longer adding `::<S>` to `DVector::zeros` (`loop_carried_zeros_need_no_turbofish` no
//! longer compiles: E0283); temporaries borrowed like places
//! (`temporary_labels_and_every_label_type` no longer compiles: E0716); the rewrite also
//! applied to `from_element` (`carried_values_from_element_keep_their_type` no longer
//! compiles: E0308).

use lopt::gradcheck::{check_gradient, GradCheck};
use lopt::prelude::*;

fn rand_mat(r: usize, c: usize, seed: u64, scale: f64) -> DMatrix<f64> {
    let mut v = vec![0.0f32; r * c];
    Key::new(seed).fill_normal(&mut v);
    DMatrix::from_iterator(r, c, v.into_iter().map(|x| f64::from(x) * scale))
}

/// `h ← tanh(W h + x_t)` from `h = 0`, then `Σ h`: the carried value starts as
/// `DVector::zeros(n)`, with no type written.
#[task]
fn rnn_sum<S: Real>(w: &DMatrix<S>, xs: &Vec<DVector<f64>>) -> S {
    let n = w.nrows();
    let mut h = DVector::zeros(n);
    for t in 0..xs.len() {
        h = tanh(w * h + &xs[t]);
    }
    sum(h)
}

fn rnn_sum_f64(w: &DMatrix<f64>, xs: &[DVector<f64>]) -> f64 {
    let n = w.nrows();
    let mut h = vec![0.0; n];
    for x in xs {
        h = (0..n)
            .map(|i| ((0..n).map(|k| w[(i, k)] * h[k]).sum::<f64>() + x[i]).tanh())
            .collect();
    }
    h.iter().sum()
}

#[test]
fn loop_carried_zeros_need_no_turbofish() {
    let w = rand_mat(3, 3, 1, 0.6);
    let xs: Vec<DVector<f64>> = (0..4)
        .map(|t| rand_mat(3, 1, 10 + t, 1.0).column(0).into_owned())
        .collect();
    let got = rnn_sum(&w, &xs);
    assert!((got - rnn_sum_f64(&w, &xs)).abs() < 1e-12);
    let report = check_gradient(
        &w,
        |w| rnn_sum_f64(w, &xs),
        |w| rnn_sum::value_and_grad(w, &xs),
        |w, t| rnn_sum::value_and_jvp(w, t, &xs),
        &GradCheck::default(),
    );
    assert!(report.passed(), "{report}");
}

/// Labels as the batch gives them (`u8` bytes) converted by a helper: a temporary in the
/// call.
fn labels_from(raw: &[u8]) -> Vec<u8> {
    raw.iter().map(|b| b % 3).collect()
}

/// The mean cross-entropy of the first three columns of `x W` against labels made in
/// the call, plus the same against labels of another integer type `L`.
#[task]
fn ce_loss<S: Real, L>(w: &DMatrix<S>, x: &DMatrix<f64>, raw: &Vec<u8>, other: &Vec<L>) -> S
where
    L: lopt::ad::gather::Id,
{
    let z = (x * w).columns(0, 3);
    mean(softmax_cross_entropy(z, &labels_from(raw))) + mean(softmax_cross_entropy(x * w, other))
}

fn ce_f64(w: &DMatrix<f64>, x: &DMatrix<f64>, a: &[usize], b: &[usize]) -> f64 {
    let z = x * w;
    let ce = |cols: usize, labels: &[usize]| {
        let mut s = 0.0;
        for (i, &l) in labels.iter().enumerate() {
            let row: Vec<f64> = (0..cols).map(|j| z[(i, j)]).collect();
            let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
            s += lse - row[l];
        }
        s / labels.len() as f64
    };
    ce(3, a) + ce(z.ncols(), b)
}

fn check_labels<L: lopt::ad::gather::Id>(other: Vec<L>, as_usize: &[usize]) {
    let x = rand_mat(4, 3, 21, 1.0);
    let w = rand_mat(3, 5, 22, 0.7);
    let raw: Vec<u8> = vec![7, 2, 9, 4];
    let a: Vec<usize> = labels_from(&raw).iter().map(|&l| l as usize).collect();
    let got = ce_loss(&w, &x, &raw, &other);
    let want = ce_f64(&w, &x, &a, as_usize);
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    let report = check_gradient(
        &w,
        |w| ce_f64(w, &x, &a, as_usize),
        |w| ce_loss::value_and_grad(w, &x, &raw, &other),
        |w, t| ce_loss::value_and_jvp(w, t, &x, &raw, &other),
        &GradCheck::default(),
    );
    assert!(report.passed(), "{report}");
}

#[test]
fn temporary_labels_and_every_label_type() {
    let l = [4usize, 0, 2, 1];
    check_labels(l.iter().map(|&v| v as u8).collect(), &l);
    check_labels(l.iter().map(|&v| v as u16).collect(), &l);
    check_labels(l.iter().map(|&v| v as u32).collect(), &l);
    check_labels(l.iter().map(|&v| v as i32).collect(), &l);
    check_labels(l.iter().map(|&v| v as i64).collect(), &l);
    check_labels(l.to_vec(), &l);
}

/// A carried value started from a constructor that takes its element
/// (`DMatrix::from_element(r, c, 0.5)`): the element's type (`f64` data) is kept and
/// converted, as before the `zeros` rewrite.
#[task]
fn from_element_start<S: Real>(w: &DMatrix<S>, steps: &usize) -> S {
    let mut acc = DMatrix::from_element(w.nrows(), w.ncols(), 0.5);
    for _ in 0..*steps {
        acc = component_mul(&acc, w) + 0.1;
    }
    sum(acc)
}

#[test]
fn carried_values_from_element_keep_their_type() {
    let w = rand_mat(2, 3, 5, 0.8);
    let reference = |w: &DMatrix<f64>| {
        w.iter()
            .map(|&x| (0..3).fold(0.5, |a, _| a * x + 0.1))
            .sum::<f64>()
    };
    assert!((from_element_start(&w, &3) - reference(&w)).abs() < 1e-12);
    let report = check_gradient(
        &w,
        reference,
        |w| from_element_start::value_and_grad(w, &3),
        |w, t| from_element_start::value_and_jvp(w, t, &3),
        &GradCheck::default(),
    );
    assert!(report.passed(), "{report}");
}
