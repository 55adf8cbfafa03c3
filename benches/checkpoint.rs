//! Checkpoint I/O at VeLO's size: saving and loading a θ of 2.3 million `f32` values
//! (`Checkpoint::save` / `Checkpoint::load`, raw little-endian sections, fsync'd), beside
//! the same values as JSON text (`serde_json`, exact round trip) to show why the payload
//! is binary.
//!
//! `cargo bench --bench checkpoint`

mod common;

use std::time::Duration;

use common::{keep, run, select, Case};
use lopt::outer_trainers::Checkpoint;
use lopt::prelude::*;

/// VeLO's θ has about this many values.
const N: usize = 2_300_000;

fn main() {
    let mut values = vec![0.0f32; N];
    Key::new(7).fill_normal(&mut values);
    let dir = std::env::temp_dir().join(format!("lopt-bench-ck-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (bin, json) = (dir.join("theta.ckpt"), dir.join("theta.json"));
    let mut ck = Checkpoint::new();
    ck.set_setup("bench", "2.3M values".into());
    ck.put_f32("theta", values.clone()).unwrap();
    ck.save(&bin).unwrap();
    std::fs::write(&json, serde_json::to_vec(&values).unwrap()).unwrap();
    let back = Checkpoint::load(&bin).unwrap();
    assert!(back
        .f32s("theta", N)
        .unwrap()
        .iter()
        .zip(&values)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    let mut cases = vec![
        Case::new("checkpoint.save.2300000", || ck.save(&bin).unwrap()),
        Case::new("checkpoint.load.2300000", || {
            keep(Checkpoint::load(&bin).unwrap());
        }),
        Case::new("checkpoint.json_save.2300000", || {
            std::fs::write(&json, serde_json::to_vec(&values).unwrap()).unwrap()
        }),
        Case::new("checkpoint.json_load.2300000", || {
            let text = std::fs::read(&json).unwrap();
            keep(serde_json::from_slice::<Vec<f32>>(&text).unwrap());
        }),
    ];
    select(&mut cases);
    run(&mut cases, 7, Duration::from_millis(300));
    println!(
        "file sizes: binary {} bytes, JSON {} bytes",
        std::fs::metadata(&bin).unwrap().len(),
        std::fs::metadata(&json).unwrap().len()
    );
    std::fs::remove_dir_all(&dir).ok();
}
