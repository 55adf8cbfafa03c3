use lopt::prelude::*;

#[task]
fn loss<S: Real>(p: &S, x: &f32) -> S {
    let mut s = *p;
    for v in [1.0, 2.0] {
        s = s * v;
    }
    s
}

fn main() {}
