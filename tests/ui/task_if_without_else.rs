use lopt::prelude::*;

#[task]
fn loss<S: Real>(p: &S, x: &f32) -> S {
    let y = if p > 0.0 { p * 2.0 };
    y
}

fn main() {}
