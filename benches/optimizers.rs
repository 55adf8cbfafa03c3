//! What the full shape check of `Optimizer::try_update` costs beside `update` (which, in
//! release builds, checks leaf counts and lengths only): Adam on the image MLP's 2,410
//! parameters (`ImageMLP_Digits8_Relu32`'s tree).
//!
//! `cargo bench --bench optimizers`

mod common;

use std::cell::RefCell;
use std::time::Duration;

use common::{run, select, Case};
use lopt::prelude::*;
use lopt::tasks::image_mlp::ImageMLP_Digits8_Relu32;

fn main() -> lopt::Result<()> {
    let task = ImageMLP_Digits8_Relu32()?;
    let params = task.init::<f32>(Key::new(0));
    let grad = params.map(|x| 1e-3 * x);
    let opt = Adam::new(1e-3);
    let plain = RefCell::new(opt.init(params.clone(), None));
    let checked = RefCell::new(opt.init(params, None));
    let mut cases = vec![
        Case::new("adam.update.mlp2410", || {
            opt.update(&mut plain.borrow_mut(), &grad, 0.0)
        }),
        Case::new("adam.try_update.mlp2410", || {
            opt.try_update(&mut checked.borrow_mut(), &grad, 0.0)
                .unwrap()
        }),
    ];
    select(&mut cases);
    let s = run(&mut cases, 9, Duration::from_millis(200));
    println!(
        "try_update / update: {:.3}",
        common::median(&s, "adam.try_update.mlp2410") / common::median(&s, "adam.update.mlp2410")
    );
    Ok(())
}
