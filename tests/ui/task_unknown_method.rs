use lopt::prelude::*;

#[task]
fn loss<S: Real>(p: &S, x: &f32) -> S {
    p.floor() * 2.0
}

fn main() {}
