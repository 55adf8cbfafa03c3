use lopt::prelude::*;

#[task]
fn loss<S: Real>(p: &S, x: &f32) -> S {
    if p > 0.0 {
        return p * 2.0;
    }
    p * 3.0
}

fn main() {}
