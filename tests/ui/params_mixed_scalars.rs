use lopt::prelude::*;

#[derive(Params, Clone, Debug)]
struct Mixed {
    w: DMatrix<f32>,
    b: DVector<f64>,
}

#[derive(Params, Clone, Debug)]
struct MixedGeneric<S: Real> {
    w: DMatrix<S>,
    b: Vec<f32>,
}

fn takes_params<P: Params>(_: &P) {}

fn main() {
    // The generic struct is Params only where its scalars agree: not for S = f64.
    let p = MixedGeneric::<f64> {
        w: DMatrix::zeros(1, 1),
        b: vec![0.0],
    };
    takes_params(&p);
}
