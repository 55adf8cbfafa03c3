use lopt::prelude::*;

#[task]
fn loss<S: Real>(p: &S, x: &f32) -> S {
    let n = p as f32;
    p * n
}

fn main() {}
