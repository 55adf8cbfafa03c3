use lopt::prelude::*;

#[task]
fn loss<S: Real>(p: &S, x: &f32) -> S {
    let f = |v: S| v * 2.0;
    f(*p)
}

fn main() {}
