use lopt::prelude::*;

#[task]
fn loss<S: Real>(p: &S, x: &f32) -> S {
    let (a, b) = (p * 2.0, p * 3.0);
    a + b
}

fn main() {}
