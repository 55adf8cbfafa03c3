use lopt::prelude::*;

#[task]
fn loss<S: Real>(w: &DMatrix<S>, x: &DMatrix<f32>, labels: &Vec<f32>) -> S {
    mean(softmax_cross_entropy(x * w, labels))
}

fn main() {}

// Labels of a float type are one error at the argument, listing the integer types that
// work. Mutation tried: the label reader emitted without the argument's span puts the
// error at `#[task]` and fails this case.
