use lopt::prelude::*;

#[task]
fn loss<S: Real>(p: &S, x: &f32) -> S {
    let v = vec![1.0f32, 2.0];
    let i = p * 1.0;
    p * v[i]
}

fn main() {}
