//! The parametric language-model families (`tasks::rnn_lm::ParametricLmRnn`, the JAX
//! library's `ParametricLMRNN` restricted to LSTMs, and
//! `tasks::transformer_lm::ParametricLmTransformer`, its `ParametricLMTransformer` at a
//! fixed depth): the samplers' ranges, the normalizer, families of mixed shapes trained
//! batched equal to each instance trained alone, and `MlpLOpt` meta-trained on the RNN
//! family (the path of `meta_train --family lm`).

use lopt::datasets::text::{lm_datasets, ByteVocab, LmBatch, LmOptions, SequenceCut, TextCorpus};
use lopt::datasets::{Datasets, Split};
use lopt::eval_training::{multi_task_training_curves, sample_instances, MultiTaskConfig, NoAux};
use lopt::outer_trainers::{
    ConstantTruncationSchedule, GradientLearner, LOptTruncatedStep, SingleMachineGradientLearner,
    TruncatedPes,
};
use lopt::prelude::*;
use lopt::tasks::rnn_lm::{LstmLm, ParametricLmRnn, ParametricLmRnnCfg, TeacherForcedRnnLm};
use lopt::tasks::transformer_lm::{
    ParametricLmTransformer, ParametricLmTransformerCfg, Tlm2, TransformerLm,
};
use lopt::vmap::Width;

/// LM datasets of the embedded text, batch `b`, length `t`, seqio's byte vocabulary.
fn embedded(b: usize, t: usize) -> Datasets<LmBatch> {
    let opts = LmOptions {
        vocab: ByteVocab::Seqio,
        cut: SequenceCut::Chunks,
    };
    lm_datasets(&TextCorpus::embedded(), b, t, opts, Key::new(5)).unwrap()
}

/// Catches: a sampler outside the library's ranges (tried: the embedding size drawn
/// with `fold_in(0)`, the hidden size's key: the two are then always equal, fails; and
/// `log_int` drawing uniformly instead of log-uniformly: fails on the count below 46).
#[test]
fn rnn_family_samples_the_librarys_ranges() {
    let family = ParametricLmRnn::new(embedded(2, 4), (8, 256)).unwrap();
    assert_eq!(family.vocab_size(), 259);
    let cfgs: Vec<ParametricLmRnnCfg<f32>> = (0..400).map(|i| family.sample(Key::new(i))).collect();
    assert!(cfgs.iter().all(|c| (8..256).contains(&c.hidden)));
    assert!(cfgs.iter().all(|c| (8..256).contains(&c.embed_dim)));
    assert!(cfgs.iter().all(|c| (0.5..=2.0).contains(&c.init_scale)));
    // Both ends reached, and the two sizes drawn independently.
    assert!(cfgs.iter().any(|c| c.hidden < 10) && cfgs.iter().any(|c| c.hidden > 200));
    assert!(cfgs.iter().any(|c| c.embed_dim < 10) && cfgs.iter().any(|c| c.embed_dim > 200));
    let same = cfgs.iter().filter(|c| c.hidden == c.embed_dim).count();
    assert!(same < 40, "{same} of 400 with equal sizes");
    // Log-uniform: about half below √(8·256) ≈ 45.3.
    for size in [
        |c: &ParametricLmRnnCfg<f32>| c.hidden,
        |c: &ParametricLmRnnCfg<f32>| c.embed_dim,
    ] {
        let below = cfgs.iter().filter(|c| size(c) <= 45).count();
        assert!((140..260).contains(&below), "{below} of 400 below 46");
    }
    let lo = cfgs.iter().filter(|c| c.init_scale < 1.25).count();
    assert!((140..260).contains(&lo), "{lo} of 400 scales below 1.25");
    // The parameters have the sampled shapes.
    let c = &cfgs[0];
    let p = family.init(c, Key::new(1));
    assert_eq!(p.embed.shape(), (259, c.embed_dim));
    assert_eq!(p.w.shape(), (c.embed_dim + c.hidden, 4 * c.hidden));
    assert_eq!(p.wo.shape(), (c.hidden, 259));
    assert!(ParametricLmRnn::new(embedded(2, 4), (8, 8)).is_err());
    assert!(ParametricLmRnn::new(embedded(2, 4), (0, 8)).is_err());
}

/// Catches: instances of different shapes put in one lane group, or lanes of a group
/// mixed up, or the family's loss reading the wrong sizes from the configuration (tried:
/// temporarily in lopt-runtime, `LaneGroups::by_structure` grouping in order regardless
/// of structure: fails, `set_lane: leaf 0 differs in size`; the loss's
/// `hd = cfg.embed_dim`: panics on a shape mismatch; and the init scale not applied to
/// the read-out in `init`: the check of `init` against the scale fails).
#[test]
fn mixed_shape_rnn_family_trains_batched_as_each_instance_alone() {
    const STEPS: usize = 3;
    let batches: Vec<LmBatch> = embedded(3, 5).batches(Split::Train, 8).unwrap();
    let fresh = || {
        let tr = batches.clone();
        let r = |v: Vec<LmBatch>| v.into_iter().cycle();
        let info = embedded(3, 5).extra_info().clone();
        Datasets::new(r(tr.clone()), r(tr.clone()), r(tr.clone()), r(tr)).with_extra_info(info)
    };
    let probe = ParametricLmRnn::new(fresh(), (2, 6)).unwrap();
    let (mut cfgs, keys) = sample_instances(&probe, 12, Key::new(9));
    // Several shapes whatever the sample.
    for (i, c) in cfgs.iter_mut().enumerate() {
        c.hidden = 2 + i % 3;
        c.embed_dim = 3 + i % 2;
    }
    // The init scale multiplies the embedding and read-out spreads.
    let (c0, k0) = (&cfgs[0], Key::new(3));
    let mut big = c0.clone();
    big.init_scale = 2.0 * c0.init_scale;
    let (a, b) = (probe.init(c0, k0), probe.init(&big, k0));
    for (x, y) in a.embed.iter().zip(b.embed.iter()) {
        assert!((2.0 * x - y).abs() <= 1e-6 * y.abs().max(1.0));
    }
    for (x, y) in a.wo.iter().zip(b.wo.iter()) {
        assert!((2.0 * x - y).abs() <= 1e-6 * y.abs().max(1.0));
    }
    assert_eq!(a.w, b.w);
    let config = |width| MultiTaskConfig {
        num_steps: STEPS,
        eval_every: STEPS,
        eval_batches: 1,
        last_eval_batches: 1,
        splits: vec![Split::Test],
        width,
    };
    let mut results = Vec::new();
    for width in [Width::Serial, Width::W8] {
        let family = ParametricLmRnn::new(fresh(), (2, 6)).unwrap();
        let out = multi_task_training_curves(
            &family,
            &Adam::new(1e-2),
            &cfgs,
            &keys,
            &config(width),
            &NoAux,
            &mut |_| {},
        )
        .unwrap();
        assert!(out.non_finite_at.iter().all(Option::is_none));
        results.push(out);
    }
    // The serial run against each instance trained alone with the plain Task API on the
    // same stream.
    for (i, (cfg, key)) in cfgs.iter().zip(&keys).enumerate() {
        let task = probe.task_fn(cfg);
        let opt = Adam::new(1e-2);
        let init = probe.init(cfg, key.split().0);
        let mut state = opt.init(init.clone(), None);
        for t in 0..STEPS {
            let b = &batches[t % batches.len()];
            let (l, g) = task.value_and_grad(opt.get_params(&state), Key::new(0), b);
            opt.update(&mut state, &g, l);
        }
        let want = opt.get_params(&state);
        // Training moved the parameters (the comparison is not of two inits).
        assert!(want.wo != init.wo);
        for (w, r) in results.iter().enumerate() {
            let s = &r.params[i];
            assert_eq!(s.w.shape(), want.w.shape());
            let scale = want.flatten().iter().fold(0f32, |m, v| m.max(v.abs()));
            let tol = if w == 0 { 0.0 } else { 1e-5 * scale };
            for (a, bb) in s.flatten().iter().zip(want.flatten()) {
                assert!(
                    (a - bb).abs() <= tol,
                    "width {w} instance {i} ({cfg:?}): {a} vs alone {bb}"
                );
            }
        }
    }
}

/// Catches: a transformer sampler outside the library's ranges or `D` not
/// `heads · d_model_per_head` (tried: `heads * per_head` replaced by `heads * 32`: every
/// width is a multiple of 32 and the test fails; heads drawn with `fold_in(0)`, the
/// per-head key: fails on the independence count).
#[test]
fn transformer_family_samples_the_librarys_ranges() {
    let family = ParametricLmTransformer::<1>::new(embedded(2, 4), (8, 128), (8, 128)).unwrap();
    let cfgs: Vec<ParametricLmTransformerCfg<f32>> =
        (0..400).map(|i| family.sample(Key::new(i))).collect();
    assert!(cfgs.iter().all(|c| (8..128).contains(&c.heads)));
    assert!(cfgs.iter().all(|c| c.d_model % c.heads == 0));
    let per = |c: &ParametricLmTransformerCfg<f32>| c.d_model / c.heads;
    assert!(cfgs.iter().all(|c| (8..128).contains(&per(c))));
    assert!(cfgs.iter().any(|c| per(c) < 10) && cfgs.iter().any(|c| per(c) > 100));
    assert!(cfgs.iter().any(|c| c.heads < 10) && cfgs.iter().any(|c| c.heads > 100));
    assert!(cfgs.iter().any(|c| c.d_model % 32 != 0));
    let same = cfgs.iter().filter(|c| c.heads == per(c)).count();
    assert!(same < 40, "{same} of 400 with heads = per-head width");
    // Log-uniform: about half below √(8·128) = 32.
    let below = cfgs.iter().filter(|c| c.heads < 32).count();
    assert!((140..260).contains(&below), "{below} of 400 below 32");
    let below = cfgs.iter().filter(|c| per(c) < 32).count();
    assert!((140..260).contains(&below), "{below} of 400 below 32");
    assert!(cfgs.iter().all(|c| c.floats.is_empty()));
    assert!(ParametricLmTransformer::<1>::new(embedded(2, 4), (8, 8), (8, 128)).is_err());
    assert!(ParametricLmTransformer::<1>::new(embedded(2, 4), (8, 128), (0, 128)).is_err());
    assert!(ParametricLmTransformer::<4>::new(embedded(2, 4), (8, 128), (8, 128)).is_err());
}

/// Catches: a normalizer other than the library's
/// `(clip(nan_to_num(L, ln 2V), 0, ln 2V) − ln(V/5)) · 10 / ln V` (tried: the clip's upper
/// end `ln V` instead of `ln 2V`: the value at `L = 7` changes and the test fails).
#[test]
fn transformer_family_normalizer_is_the_librarys() {
    let family = ParametricLmTransformer::<1>::new(embedded(2, 4), (2, 4), (2, 4)).unwrap();
    let v = 259f64;
    let lib = |l: f64| (l.clamp(0.0, (2.0 * v).ln()) - (v / 5.0).ln()) * 10.0 / v.ln();
    for l in [0.0, 1.0, 3.9, 6.0, 7.0, 100.0, -1.0] {
        let got: f64 = family.normalizer(l);
        assert!((got - lib(l)).abs() < 1e-12, "{l}: {got} vs {}", lib(l));
    }
    for l in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let got: f64 = family.normalizer(l);
        assert!((got - lib(100.0)).abs() < 1e-12, "{l}: {got}");
    }
}

/// Catches: transformer instances of different widths or head counts put in one lane
/// group, or the family's loss reading the wrong sizes (tried: the loss's attention
/// geometry with `heads + 1` heads: panics on a shape mismatch in the attention; and
/// the init's widths swapped with `d_model = heads`: fails on the parameter shapes).
#[test]
fn mixed_shape_transformer_family_trains_batched_as_each_instance_alone() {
    const STEPS: usize = 3;
    let batches: Vec<LmBatch> = embedded(2, 4).batches(Split::Train, 8).unwrap();
    let fresh = || {
        let tr = batches.clone();
        let r = |v: Vec<LmBatch>| v.into_iter().cycle();
        let info = embedded(2, 4).extra_info().clone();
        Datasets::new(r(tr.clone()), r(tr.clone()), r(tr.clone()), r(tr)).with_extra_info(info)
    };
    let probe = ParametricLmTransformer::<2>::new(fresh(), (1, 3), (3, 5)).unwrap();
    let (mut cfgs, keys) = sample_instances(&probe, 8, Key::new(4));
    // Widths of at least 3: a layer norm over 2 features is ±1 whatever its input, so its
    // input's gradient is rounding noise, which Adam's g/√v turns into full steps.
    for (i, c) in cfgs.iter_mut().enumerate() {
        *c = ParametricLmTransformerCfg::new(1 + i % 2, (1 + i % 2) * (3 + (i / 2) % 2));
    }
    let config = |width| MultiTaskConfig {
        num_steps: STEPS,
        eval_every: STEPS,
        eval_batches: 1,
        last_eval_batches: 1,
        splits: vec![Split::Test],
        width,
    };
    let mut results = Vec::new();
    for width in [Width::Serial, Width::W8] {
        let family = ParametricLmTransformer::<2>::new(fresh(), (1, 3), (3, 5)).unwrap();
        let out = multi_task_training_curves(
            &family,
            &Adam::new(1e-2),
            &cfgs,
            &keys,
            &config(width),
            &NoAux,
            &mut |_| {},
        )
        .unwrap();
        assert!(out.non_finite_at.iter().all(Option::is_none));
        results.push(out);
    }
    for (i, (cfg, key)) in cfgs.iter().zip(&keys).enumerate() {
        let task = probe.task_fn(cfg);
        let opt = Adam::new(1e-2);
        let init = probe.init(cfg, key.split().0);
        assert_eq!(init.embed.shape(), (259, cfg.d_model));
        assert_eq!(init.l0.wqkv.shape(), (cfg.d_model, 3 * 32 * cfg.heads));
        let mut state = opt.init(init.clone(), None);
        for t in 0..STEPS {
            let b = &batches[t % batches.len()];
            let (l, g) = task.value_and_grad(opt.get_params(&state), Key::new(0), b);
            opt.update(&mut state, &g, l);
        }
        let want = opt.get_params(&state);
        assert!(want.wout != init.wout);
        for (w, r) in results.iter().enumerate() {
            let s = &r.params[i];
            let scale = want.flatten().iter().fold(0f32, |m, v| m.max(v.abs()));
            let tol = if w == 0 { 0.0 } else { 1e-5 * scale };
            assert_eq!(s.flatten().len(), want.flatten().len());
            for (a, bb) in s.flatten().iter().zip(want.flatten()) {
                assert!(
                    (a - bb).abs() <= tol,
                    "width {w} instance {i} ({cfg:?}): {a} vs alone {bb}"
                );
            }
        }
    }
}

/// The families at unit scale are the fixed tasks: the same init, and (their losses being
/// the fixed tasks' own loss bodies, transcribed into both) the
/// same value and gradient bit for bit; `tests/lm_tasks.rs` checks both against the
/// plain-f64 definitions. Catches: an init drifting from the fixed task's, and a family
/// passing other sizes than its configuration's to the shared loss (tried: the RNN
/// family's init with the embedding's `fold_in(0)` as `fold_in(5)`: the inits differ;
/// the RNN family passing `embed_dim, hidden` swapped, and the transformer family passing
/// 1 head for `cfg.heads`: both panic on shapes).
#[test]
fn families_at_unit_scale_are_the_fixed_tasks() {
    let ds = embedded(3, 6);
    let batch = ds.batches(Split::Train, 1).unwrap().remove(0);
    let rnn = ParametricLmRnn::new(ds.clone(), (2, 8)).unwrap();
    let mut cfg = rnn.sample(Key::new(1));
    cfg.hidden = 5;
    cfg.embed_dim = 4;
    cfg.init_scale = 1.0;
    let fixed = TeacherForcedRnnLm::lstm(5, 4, ds.clone()).unwrap();
    let p: LstmLm<f32> = fixed.init(Key::new(7));
    assert_eq!(rnn.init(&cfg, Key::new(7)), p);
    let (l1, g1) = rnn.task_fn(&cfg).value_and_grad(&p, Key::new(0), &batch);
    let (l2, g2) = fixed.value_and_grad(&p, Key::new(0), &batch);
    assert_eq!((l1, g1.flatten()), (l2, g2.flatten()));

    let tf = ParametricLmTransformer::<2>::new(ds.clone(), (1, 3), (3, 5)).unwrap();
    let cfg = ParametricLmTransformerCfg::new(2, 6);
    let fixed = TransformerLm::<2>::new(2, 6, ds).unwrap();
    let p: Tlm2<f32> = fixed.init(Key::new(8));
    assert_eq!(tf.init(&cfg, Key::new(8)), p);
    let (l1, g1) = tf.task_fn(&cfg).value_and_grad(&p, Key::new(0), &batch);
    let (l2, g2) = fixed.value_and_grad(&p, Key::new(0), &batch);
    assert_eq!((l1, g1.flatten()), (l2, g2.flatten()));
    assert!(l1.is_finite() && l1 > 0.0);
}

// ------------------------------------------------- meta-training (`meta_train --family lm`)

/// The path of `meta_train --family lm` at a test's size: `MlpLOpt` meta-trained with
/// `TruncatedPes` on a tiny `ParametricLmRnn` (LSTMs of 2–4 units and embeddings of 2–4 on
/// the embedded text, batch 4, length 8; 4 tasks of mixed shapes, one per `f32` group,
/// truncations of 10 in runs of 20) for two outer steps. The meta-losses must be finite
/// and near the loss of an untrained byte model (between 0 and `2·ln 259`: at init the
/// read-out is small, so the loss starts near `ln 259 ≈ 5.56`), and θ must move.
/// Catches: an estimate that is NaN (a group's loss not reaching the estimator) or zero
/// (θ unchanged), a family whose instances cannot train side by side in groups, and
/// diverging tasks (tried: the family's read-out initialized with σ = 10³⁰: the
/// meta-loss is 1.07e30, above the bound).
#[test]
fn lm_family_meta_training_runs() {
    let family = ParametricLmRnn::new(embedded(4, 8), (2, 5)).unwrap();
    let lopt = MlpLOpt::default();
    let sched = ConstantTruncationSchedule { total_length: 20 };
    let step = LOptTruncatedStep::new(&family, &lopt, sched, 4).unwrap();
    let learner = SingleMachineGradientLearner {
        learner: GradientLearner {
            lopt: &lopt,
            theta_opt: Adam::new(1e-2),
        },
        estimators: vec![TruncatedPes::new(step, 10, 0.01).unwrap()],
    };
    let mut state = learner.init(Key::new(0)).unwrap();
    let theta0 = learner.learner.theta(&state.learner).flatten();
    let max = 2.0 * (259f32).ln();
    for k in Key::new(1).split_n(2) {
        let l = learner.update(&mut state, k).unwrap();
        assert!(l.is_finite() && l > 0.0 && l < max, "meta-loss {l}");
    }
    assert_ne!(learner.learner.theta(&state.learner).flatten(), theta0);
}
