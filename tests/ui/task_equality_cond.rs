use lopt::prelude::*;

#[task]
fn loss<S: Real>(p: &S, x: &f32) -> S {
    if p == 1.0 {
        p * 2.0
    } else {
        p * 3.0
    }
}

fn main() {}
