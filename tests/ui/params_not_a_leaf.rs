use lopt::prelude::*;

#[derive(Params, Clone, Debug)]
struct NotAParam {
    w: DMatrix<f32>,
    count: usize,
}

fn main() {}
