use lopt::prelude::*;

#[task]
struct NotALoss;

fn main() {}
