use lopt::prelude::*;

#[task]
fn loss<S: Real>(p: &S, x: &f32) -> S {
    let mut s = *p;
    while s < 1.0 {
        s = s * 2.0;
    }
    s
}

fn main() {}
