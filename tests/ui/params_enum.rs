use lopt::prelude::*;

#[derive(Params, Clone, Debug)]
enum Layer {
    Dense(DMatrix<f32>),
    Bias(DVector<f32>),
}

fn main() {}
