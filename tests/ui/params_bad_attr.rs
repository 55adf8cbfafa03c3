use lopt::prelude::*;

#[derive(Params, Clone, Debug)]
#[params(frozen)]
struct A {
    w: DMatrix<f32>,
}

#[derive(Params, Clone, Debug)]
struct B {
    #[params(skip, skip)]
    n: usize,
    #[params(ignore)]
    w: DMatrix<f32>,
}

fn main() {}
