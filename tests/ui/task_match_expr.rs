use lopt::prelude::*;

#[task]
fn loss<S: Real>(p: &S, x: &f32) -> S {
    match 1 {
        _ => p * 2.0,
    }
}

fn main() {}
