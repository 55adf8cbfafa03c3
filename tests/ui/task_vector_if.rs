use lopt::prelude::*;

#[task]
fn loss<S: Real>(p: &DVector<S>, x: &f32) -> S {
    let y = if p > 0.0 { p * 2.0 } else { p * 3.0 };
    sum(y)
}

fn main() {}

// An `if` on a vector condition is one error at the condition naming `select`. Mutation
// tried: the condition emitted as `::lopt::Real::gt(a, b)` again gives a dozen errors at
// `#[task]` (trait bounds on `Matrix`) and fails this case.
