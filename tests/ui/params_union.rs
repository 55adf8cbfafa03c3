use lopt::prelude::*;

#[derive(Params, Clone, Copy)]
union Bits {
    f: f32,
    u: u32,
}

fn main() {}
