use lopt::prelude::*;

#[derive(Params, Clone, Debug)]
struct Unit;

#[derive(Params, Clone, Debug)]
struct Empty {}

#[derive(Params, Clone, Debug)]
struct OnlySkipped {
    #[params(skip)]
    width: usize,
    #[params(skip)]
    depth: usize,
}

fn main() {}
