use lopt::prelude::*;

#[derive(Params, Clone, Debug)]
struct Layer32 {
    w: DMatrix<f32>,
}

#[derive(Params, Clone, Debug)]
struct Layer64 {
    w: DMatrix<f64>,
}

// No field shows its scalar, so the scalar is that of `Layer32`; `Layer64` is caught in
// the generated methods, still pointing at its field.
#[derive(Params, Clone, Debug)]
struct Stack {
    first: Layer32,
    second: Layer64,
}

fn main() {}
