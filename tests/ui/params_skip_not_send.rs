use std::rc::Rc;

use lopt::prelude::*;

#[derive(Params, Clone, Debug)]
struct Shared {
    w: DMatrix<f32>,
    #[params(skip)]
    names: Rc<Vec<String>>,
}

fn main() {}
