use lopt::prelude::*;

#[derive(Params, Clone, Debug)]
struct Cell<S: Real> {
    wx: DMatrix<S>,
    b: DVector<S>,
    wh: DMatrix<S>,
}

// `lstm_projected` with the initial cell state left out.
#[task]
fn loss<S: Real>(p: &Cell<S>, x: &DMatrix<S>, s0: &DMatrix<S>) -> S {
    sum(lstm_projected(x, &p.wx, &p.b, &p.wh, s0))
}

fn main() {}
