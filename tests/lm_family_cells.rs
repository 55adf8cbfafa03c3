//! The RNN LM family for every cell the JAX library's `sample_lm_rnn` draws (LSTM,
//! vanilla RNN, GRU; IRNN too), and the family-level samplers `sample_lm_rnn` and
//! `sample_lm_transformer` (`tasks::lm_samplers`).
//!
//! The LSTM family's own tests are in `tests/lm_families.rs`; `tests/lm_tasks.rs` checks
//! each fixed cell task against plain-f64 definitions, which the families here are tied to.

use lopt::datasets::text::{lm_datasets, ByteVocab, LmBatch, LmOptions, SequenceCut, TextCorpus};
use lopt::datasets::{Datasets, Split};
use lopt::eval_training::{multi_task_training_curves, MultiTaskConfig, NoAux};
use lopt::prelude::*;
use lopt::tasks::lm_samplers::{
    sample_lm_rnn, sample_lm_transformer, LmFamilyRanges, LmRnnFamily, LmTransformerFamily,
};
use lopt::tasks::rnn_lm::{Cell, ParametricLmRnn, ParametricLmRnnCfg, TeacherForcedRnnLm};
use lopt::vmap::Width;

/// LM datasets of the embedded text, batch `b`, length `t`, seqio's byte vocabulary.
fn embedded(b: usize, t: usize) -> Datasets<LmBatch> {
    let opts = LmOptions {
        vocab: ByteVocab::Seqio,
        cut: SequenceCut::Chunks,
    };
    lm_datasets(&TextCorpus::embedded(), b, t, opts, Key::new(5)).unwrap()
}

/// A unit-scale configuration of `h` hidden units and embedding `e`.
fn unit_cfg<F: TaskFamily<Cfg<f32> = ParametricLmRnnCfg<f32>>>(
    family: &F,
    h: usize,
    e: usize,
) -> ParametricLmRnnCfg<f32> {
    let mut cfg = family.sample(Key::new(1));
    cfg.hidden = h;
    cfg.embed_dim = e;
    cfg.init_scale = 1.0;
    cfg
}

/// The family instance at unit scale and the fixed task of the same sizes: equal inits,
/// and the same value and gradient bit for bit (both run the one loss body the macro
/// transcribes into the task and the family). A macro: the family's task type is only
/// known per family.
macro_rules! assert_family_is_fixed_task {
    ($family:expr, $fixed:expr, $batch:expr) => {{
        let (family, fixed, batch) = (&$family, &$fixed, $batch);
        let cfg = unit_cfg(family, 5, 4);
        let p = fixed.init::<f32>(Key::new(7));
        assert!(
            family.init(&cfg, Key::new(7)) == p,
            "the family's init differs from the fixed task's"
        );
        let (l1, g1) = family.task_fn(&cfg).value_and_grad(&p, Key::new(0), batch);
        let (l2, g2) = fixed.value_and_grad(&p, Key::new(0), batch);
        assert!(l1.is_finite() && l1 > 0.0);
        assert_eq!((l1, g1.flatten()), (l2, g2.flatten()));
    }};
}

/// Catches: a GRU, vanilla or IRNN family whose init or loss drifts from its fixed task
/// (tried: the family's embedding drawn with `fold_in(5)`: the inits differ, fails; the
/// IRNN family built as `Cell::VanillaRnn`: fails).
#[test]
fn every_cell_family_at_unit_scale_is_its_fixed_task() {
    let ds = embedded(3, 6);
    let batch = ds.batches(Split::Train, 1).unwrap().remove(0);
    let gru = ParametricLmRnn::gru(ds.clone(), (2, 8)).unwrap();
    assert_eq!(gru.cell(), Cell::Gru);
    let fixed = TeacherForcedRnnLm::gru(5, 4, ds.clone()).unwrap();
    assert_family_is_fixed_task!(gru, fixed, &batch);

    let vanilla = ParametricLmRnn::vanilla(ds.clone(), (2, 8)).unwrap();
    let fixed = TeacherForcedRnnLm::vanilla(5, 4, ds.clone()).unwrap();
    assert_family_is_fixed_task!(vanilla, fixed, &batch);

    let irnn = ParametricLmRnn::irnn(ds.clone(), (2, 8)).unwrap();
    assert_eq!(irnn.cell(), Cell::Irnn);
    let fixed = TeacherForcedRnnLm::irnn(5, 4, ds.clone()).unwrap();
    assert_family_is_fixed_task!(irnn, fixed, &batch);
    let p = irnn.init(&unit_cfg(&irnn, 5, 4), Key::new(2));
    assert_eq!(p.w_h, nalgebra::DMatrix::identity(5, 5));

    // The names say the cell.
    assert!(gru.name().contains("GRU") && vanilla.name().contains("VanillaRNN"));
}

/// The GRU and vanilla families train instances of mixed shapes in lane groups of 8 as
/// each instance trained alone (serial `f32`), within `f32` rounding. Catches: instances
/// of different shapes sharing a lane group, or a family loss not reading its sizes from
/// the configuration (the LSTM's twin in `tests/lm_families.rs` tried both).
#[test]
fn mixed_shape_gru_and_vanilla_families_train_batched_as_serially() {
    let batches: Vec<LmBatch> = embedded(3, 5).batches(Split::Train, 6).unwrap();
    let fresh = || {
        let r = |v: Vec<LmBatch>| v.into_iter().cycle();
        let info = embedded(3, 5).extra_info().clone();
        Datasets::new(
            r(batches.clone()),
            r(batches.clone()),
            r(batches.clone()),
            r(batches.clone()),
        )
        .with_extra_info(info)
    };
    let config = |width| MultiTaskConfig {
        num_steps: 3,
        eval_every: 3,
        eval_batches: 1,
        last_eval_batches: 1,
        splits: vec![Split::Test],
        width,
    };
    fn run<F>(family: &F, config: &MultiTaskConfig) -> Vec<Vec<f32>>
    where
        F: TaskFamily<Cfg<f32> = ParametricLmRnnCfg<f32>, Batch = LmBatch>,
    {
        let cfgs: Vec<ParametricLmRnnCfg<f32>> = (0..10)
            .map(|i| {
                let mut c = family.sample(Key::new(40 + i as u64));
                c.hidden = 2 + i % 3;
                c.embed_dim = 3 + i % 2;
                c
            })
            .collect();
        let keys: Vec<Key> = (0..10).map(|i| Key::new(90 + i)).collect();
        let out = multi_task_training_curves(
            family,
            &Adam::new(1e-2),
            &cfgs,
            &keys,
            config,
            &NoAux,
            &mut |_| {},
        )
        .unwrap();
        assert!(out.non_finite_at.iter().all(Option::is_none));
        out.params.iter().map(|p| p.flatten()).collect()
    }
    for cell in [Cell::Gru, Cell::VanillaRnn] {
        let mut runs = Vec::new();
        for width in [Width::Serial, Width::W8] {
            let flat = match cell {
                Cell::Gru => run(
                    &ParametricLmRnn::gru(fresh(), (2, 6)).unwrap(),
                    &config(width),
                ),
                _ => run(
                    &ParametricLmRnn::vanilla(fresh(), (2, 6)).unwrap(),
                    &config(width),
                ),
            };
            runs.push(flat);
        }
        for (i, (a, b)) in runs[0].iter().zip(&runs[1]).enumerate() {
            let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() <= 1e-5 * scale,
                    "{cell:?} instance {i}: serial {x} vs lanes {y}"
                );
            }
        }
    }
}

/// Catches: a sampler that never draws a cell, or draws batch and length from one key,
/// or outside the library's ranges (tried: the cell picked with `randint(0, 2)`: GRU never
/// drawn, fails; the sequence length drawn with `fold_in(0)`: always equal to the batch,
/// fails the independence count).
#[test]
fn sample_lm_rnn_draws_the_librarys_family_configurations() {
    let ranges = LmFamilyRanges::default();
    assert_eq!((ranges.batch, ranges.sequence), ((4, 512), (4, 512)));
    let draws: Vec<_> = (0..600)
        .map(|i| sample_lm_rnn(Key::new(i), &ranges).unwrap())
        .collect();
    for cell in [Cell::Lstm, Cell::VanillaRnn, Cell::Gru] {
        let n = draws.iter().filter(|d| d.cell == cell).count();
        // Uniform over three: 200 expected, σ ≈ 11.5.
        assert!((150..250).contains(&n), "{cell:?} drawn {n} of 600");
    }
    assert!(draws.iter().all(|d| d.cell != Cell::Irnn));
    assert!(draws
        .iter()
        .all(|d| (4..512).contains(&d.batch_size) && (4..512).contains(&d.sequence_length)));
    // Log-uniform: about half below √(4·512) ≈ 45.3.
    let below = draws.iter().filter(|d| d.batch_size <= 45).count();
    assert!(
        (220..380).contains(&below),
        "{below} of 600 batches below 46"
    );
    let same = draws
        .iter()
        .filter(|d| d.batch_size == d.sequence_length)
        .count();
    assert!(same < 60, "{same} of 600 with batch = length");
    // Refusals.
    let bad = LmFamilyRanges {
        batch: (8, 8),
        ..ranges
    };
    assert!(sample_lm_rnn(Key::new(0), &bad).is_err());
    assert!(sample_lm_transformer(Key::new(0), &bad).is_err());
}

/// A draw builds the family it names, on datasets of the drawn batch and length.
/// Catches: `build` ignoring the drawn cell or depth, or passing batch and length swapped
/// (tried: `datasets(sequence_length, batch_size)`: the batch shape check fails; the cell
/// picked with `randint(0, 2)`: fails here and in the sampler test).
#[test]
fn draws_build_the_families_they_name() {
    let small = LmFamilyRanges {
        batch: (2, 5),
        sequence: (3, 9),
    };
    let mut seen = [false; 3];
    for i in 0..40 {
        let draw = sample_lm_rnn(Key::new(i), &small).unwrap();
        let family = draw.build(|b, t| Ok(embedded(b, t)), (2, 6)).unwrap();
        let (cell, batch) = match &family {
            LmRnnFamily::Lstm(f) => (f.cell(), f.datasets().unwrap().batches(Split::Train, 1)),
            LmRnnFamily::Gru(f) => (f.cell(), f.datasets().unwrap().batches(Split::Train, 1)),
            LmRnnFamily::Vanilla(f) => (f.cell(), f.datasets().unwrap().batches(Split::Train, 1)),
        };
        assert_eq!(cell, draw.cell);
        seen[[Cell::Lstm, Cell::VanillaRnn, Cell::Gru]
            .iter()
            .position(|c| *c == cell)
            .unwrap()] = true;
        let batch = batch.unwrap().remove(0);
        assert_eq!(
            (batch.batch_size(), batch.seq_len()),
            (draw.batch_size, draw.sequence_length)
        );
    }
    assert_eq!(seen, [true; 3]);

    let mut depths = [0usize; 3];
    for i in 0..300 {
        let draw = sample_lm_transformer(Key::new(i), &small).unwrap();
        depths[draw.num_layers - 1] += 1;
    }
    // log_int(1, 4): P(1) = ln 2 / ln 4 = 1/2, P(2) = ln 1.5 / ln 4 ≈ 0.29, P(3) ≈ 0.21.
    assert!((120..180).contains(&depths[0]), "{depths:?}");
    assert!((60..115).contains(&depths[1]), "{depths:?}");
    assert!((40..95).contains(&depths[2]), "{depths:?}");
    for i in 0..12 {
        let draw = sample_lm_transformer(Key::new(i), &small).unwrap();
        let family = draw
            .build(|b, t| Ok(embedded(b, t)), (1, 3), (2, 4))
            .unwrap();
        let layers = match family {
            LmTransformerFamily::L1(_) => 1,
            LmTransformerFamily::L2(_) => 2,
            LmTransformerFamily::L3(_) => 3,
        };
        assert_eq!(layers, draw.num_layers);
    }
    let mut deep = sample_lm_transformer(Key::new(0), &small).unwrap();
    deep.num_layers = 4;
    assert!(deep
        .build(|b, t| Ok(embedded(b, t)), (1, 3), (2, 4))
        .is_err());
}
