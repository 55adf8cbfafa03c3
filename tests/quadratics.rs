//! The quadratic task library (`lopt::tasks::quadratics`): gradients against finite
//! differences, loss values against closed forms written out here, init statistics,
//! datasets, normalizer and aux, and batched == serial for the families.

use lopt::datasets::Split;
use lopt::gradcheck::{check_gradient, check_task, GradCheck};
use lopt::prelude::*;
use lopt::tasks::quadratics::{
    batch_datasets, noise_datasets, BatchQuadraticTask, FixedDimQuadraticFamily,
    FixedDimQuadraticFamilyData, LogQuadraticTask, NoiseBatch, NoisyMeanQuadraticTask,
    NoisyQuadraticCfg, NoisyQuadraticFamily, QuadraticTask, SumQuadraticParams, SumQuadraticTask,
};
use lopt::vmap::{vmap, VmapFn, Width};

// ----- helpers -----

/// Fixed, hand-picked parameter values (not tuned to anything): `x_i = 1.7·sin(1.3 i + 0.4) + 0.1 i`.
fn given(n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| 1.7 * (1.3 * i as f64 + 0.4).sin() + 0.1 * i as f64)
        .collect()
}

fn dvec(v: &[f64]) -> DVector<f64> {
    DVector::from_column_slice(v)
}

fn assert_rel(a: f64, b: f64, rtol: f64, what: &str) {
    let scale = a.abs().max(b.abs()).max(1e-30);
    assert!(
        (a - b).abs() <= rtol * scale,
        "{what}: {a} vs {b} (relative error {:.3e})",
        (a - b).abs() / scale
    );
}

/// Sample mean and standard deviation.
fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    let v = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0);
    (m, v.sqrt())
}

/// Asserts draws look like N(0, std²): the mean within 5 standard errors of 0 and the
/// sample standard deviation within 5 standard errors of `std` (se ≈ std/√(2n)).
fn assert_normal(xs: &[f64], std: f64, what: &str) {
    let n = xs.len() as f64;
    let (m, s) = mean_std(xs);
    assert!(
        m.abs() < 5.0 * std / n.sqrt(),
        "{what}: mean {m} for std {std}, n {n}"
    );
    assert!(
        (s - std).abs() < 5.0 * std / (2.0 * n).sqrt(),
        "{what}: std {s}, expected {std}, n {n}"
    );
}

fn check(report: lopt::gradcheck::GradReport, what: &str) {
    assert!(report.passed(), "{what}:\n{report}");
}

/// The generated gradient and JVP of `task` at its own init and at three random points.
fn gradcheck_task<T: Task>(task: &T, key: Key, batch: &T::Batch, what: &str)
where
    T::Params<f64>: Params<Scalar = f64>,
{
    let c = GradCheck::default();
    let p0 = task.cast_params::<f32, f64>(&task.init::<f32>(Key::new(11)));
    check(
        check_task(task, &p0, key, batch, &c),
        &format!("{what} at init"),
    );
    for i in 0..3u64 {
        let p = Key::new(100 + i).normal_params(&p0, 2.0);
        check(
            check_task(task, &p, key, batch, &c),
            &format!("{what} at random point {i}"),
        );
    }
}

// ----- gradients -----

#[test]
fn gradients_of_every_task() {
    gradcheck_task(&QuadraticTask::default(), Key::new(1), &(), "QuadraticTask");
    gradcheck_task(&LogQuadraticTask, Key::new(1), &(), "LogQuadraticTask");
    gradcheck_task(&SumQuadraticTask, Key::new(1), &(), "SumQuadraticTask");
    let batch = batch_datasets().train().unwrap();
    gradcheck_task(
        &BatchQuadraticTask,
        Key::new(1),
        &batch,
        "BatchQuadraticTask",
    );
    for key in [Key::new(1), Key::new(2)] {
        gradcheck_task(
            &NoisyMeanQuadraticTask::default(),
            key,
            &(),
            "NoisyMeanQuadraticTask",
        );
        gradcheck_task(
            &NoisyMeanQuadraticTask::new(5, 0.3),
            key,
            &(),
            "NoisyMeanQuadraticTask(5, 0.3)",
        );
    }
}

#[test]
fn gradients_of_every_family() {
    let f = FixedDimQuadraticFamily::default();
    let fd = FixedDimQuadraticFamilyData::new(7);
    let nq0 = NoisyQuadraticFamily::new(6, 0.0);
    for s in 0..3u64 {
        let cfg = f.sample(Key::new(s));
        gradcheck_task(
            &f.task_fn(&cfg),
            Key::new(1),
            &(),
            "FixedDimQuadraticFamily",
        );
        let cfg = fd.sample(Key::new(s));
        gradcheck_task(
            &fd.task_fn(&cfg),
            Key::new(1),
            &0.37,
            "FixedDimQuadraticFamilyData",
        );
        // Without gradient noise the loss is an ordinary function of the parameters.
        let cfg = nq0.sample(Key::new(s));
        gradcheck_task(
            &nq0.task_fn(&cfg),
            Key::new(1),
            &(),
            "NoisyQuadraticFamily(cov 0)",
        );
    }
}

/// With gradient noise, the generated derivatives are those of the surrogate
/// `Q(p) + ⟨w, p⟩ − ⟨w, p₀⟩` (the stop-gradient term frozen at the evaluation point
/// `p₀`), whose value at `p₀` is the loss itself. Checked by finite differences of that
/// surrogate, written out here, at the init and at random points.
#[test]
fn noisy_quadratic_family_gradient_is_the_stop_gradient_surrogate() {
    let fam = NoisyQuadraticFamily::new(6, 0.8);
    let c = GradCheck::default();
    for s in 0..3u64 {
        let cfg32 = fam.sample(Key::new(s));
        let cfg: NoisyQuadraticCfg<f64> = cfg32.cast::<f64>();
        let task = fam.task_fn(&cfg32);
        let key = Key::new(50 + s);
        let w: Vec<f64> = fam.gradient_noise::<f64>(key).iter().copied().collect();
        let q = |p: &DVector<f64>| -> f64 {
            (0..6)
                .map(|i| (cfg.scale[i] * (cfg.center[i] - p[i])).powi(2))
                .sum()
        };
        let p0 = task.cast_params::<f32, f64>(&task.init::<f32>(Key::new(9 + s)));
        let points = [p0.clone(), Key::new(200 + s).normal_params(&p0, 2.0)];
        for (j, x0) in points.iter().enumerate() {
            let w0: f64 = (0..6).map(|i| w[i] * x0[i]).sum();
            let surrogate = |p: &DVector<f64>| q(p) + (0..6).map(|i| w[i] * p[i]).sum::<f64>() - w0;
            let report = check_gradient(
                x0,
                surrogate,
                |p| task.value_and_grad(p, key, &()),
                |p, t| task.value_and_jvp(p, t, key, &()),
                &c,
            );
            check(
                report,
                &format!("NoisyQuadraticFamily sample {s} point {j}"),
            );
            // The value carries no noise: it is Q(p) exactly as computed here.
            let (v, g) = task.value_and_grad(x0, key, &());
            assert_rel(v, q(x0), 1e-12, "NoisyQuadraticFamily value");
            // The gradient is 2 s² (p − c) + w, in closed form.
            for i in 0..6 {
                let want = 2.0 * cfg.scale[i].powi(2) * (x0[i] - cfg.center[i]) + w[i];
                assert_rel(g[i], want, 1e-10, "NoisyQuadraticFamily gradient");
            }
        }
    }
}

// ----- loss values against closed forms -----

#[test]
fn quadratic_task_losses_in_closed_form() {
    let x = given(10);
    let sq: f64 = x.iter().map(|v| v * v).sum();
    let p = dvec(&x);
    let k = Key::new(3);
    assert_rel(
        QuadraticTask::default().loss(&p, k, &()),
        sq,
        1e-14,
        "QuadraticTask",
    );
    assert_rel(
        LogQuadraticTask.loss(&p, k, &()),
        sq.ln(),
        1e-14,
        "LogQuadraticTask",
    );
    let batch = NoiseBatch::from_element(5.0);
    assert_rel(
        BatchQuadraticTask.loss(&p, k, &batch),
        sq,
        1e-14,
        "BatchQuadraticTask",
    );
    // In f32 too.
    let p32 = p.map(|v| v as f32);
    assert_rel(
        QuadraticTask::default().loss(&p32, k, &()) as f64,
        sq,
        1e-6,
        "QuadraticTask f32",
    );
    // A different dimension.
    let x3 = given(3);
    let s3: f64 = x3.iter().map(|v| v * v).sum();
    assert_rel(
        QuadraticTask::new(3).loss(&dvec(&x3), k, &()),
        s3,
        1e-14,
        "dim 3",
    );

    let a = given(10);
    let b: Vec<f64> = given(20)[10..].to_vec();
    let want: f64 = (0..10).map(|i| (a[i] + b[i]).powi(2)).sum();
    let params = SumQuadraticParams {
        a: dvec(&a),
        b: dvec(&b),
    };
    assert_rel(
        SumQuadraticTask.loss(&params, k, &()),
        want,
        1e-14,
        "SumQuadraticTask",
    );
}

#[test]
fn batch_quadratic_task_ignores_its_data() {
    let p = dvec(&given(10));
    let ds = BatchQuadraticTask.datasets().expect("has datasets");
    let b1 = ds.train().unwrap();
    let b2 = ds.train().unwrap();
    assert_ne!(b1, b2);
    let (l1, g1) = BatchQuadraticTask.value_and_grad(&p, Key::new(0), &b1);
    let (l2, g2) = BatchQuadraticTask.value_and_grad(&p, Key::new(0), &b2);
    assert_eq!(l1, l2);
    assert_eq!(g1, g2);
}

/// `H = A·Aᵀ`, `A` from `Key::new(7)` (column-major, as `normal_matrix` documents), in
/// plain loops.
fn hessian_by_loops(dim: usize) -> Vec<Vec<f64>> {
    let a: Vec<f64> = Key::new(7)
        .normal_vec::<f32>(dim * dim)
        .into_iter()
        .map(f64::from)
        .collect();
    let at = |i: usize, j: usize| a[i + j * dim];
    (0..dim)
        .map(|i| {
            (0..dim)
                .map(|j| (0..dim).map(|k| at(i, k) * at(j, k)).sum())
                .collect()
        })
        .collect()
}

#[test]
fn noisy_mean_quadratic_loss_in_closed_form() {
    for (dim, sigma) in [(2usize, 1.0f32), (4, 0.5)] {
        let task = NoisyMeanQuadraticTask::new(dim, sigma);
        let h = hessian_by_loops(dim);
        for (i, row) in h.iter().enumerate() {
            for (j, &hij) in row.iter().enumerate() {
                assert_rel(task.hessian()[(i, j)] as f64, hij, 1e-5, "hessian");
            }
        }
        let x: Vec<f64> = given(dim).iter().map(|v| 10.0 * v).collect();
        for seed in 0..4u64 {
            let key = Key::new(seed);
            // n = σ · N(0, 1) from the second half of the loss key's split.
            let n: Vec<f64> = key
                .split()
                .1
                .normal_vec::<f32>(dim)
                .into_iter()
                .map(|z| f64::from(sigma * z))
                .collect();
            let d: Vec<f64> = (0..dim).map(|i| x[i] - n[i]).collect();
            let mut want = 0.0;
            for i in 0..dim {
                for j in 0..dim {
                    want += d[i] * h[i][j] * d[j];
                }
            }
            let got = task.loss(&dvec(&x), key, &());
            assert_rel(got, want, 1e-5, "NoisyMeanQuadraticTask loss");
            // The loss is stochastic: another key moves the center.
            let other = task.loss(&dvec(&x), Key::new(seed + 1000), &());
            assert_ne!(got, other);
        }
    }
}

#[test]
fn family_losses_in_closed_form() {
    let p = given(10);
    let c: Vec<f64> = given(13)[3..].to_vec();
    let sq: f64 = (0..10).map(|i| (c[i] - p[i]).powi(2)).sum();

    let f = FixedDimQuadraticFamily::default();
    assert_rel(
        f.loss(&dvec(&p), &dvec(&c), Key::new(0), &()),
        sq,
        1e-14,
        "FixedDimQuadraticFamily",
    );

    let fd = FixedDimQuadraticFamilyData::new(10);
    assert_rel(
        fd.loss(&dvec(&p), &dvec(&c), Key::new(0), &-0.625),
        sq - 0.625,
        1e-14,
        "FixedDimQuadraticFamilyData",
    );

    // Through task_fn (an f32 configuration) the loss is the same function.
    let cfg32 = DVector::from_iterator(10, c.iter().map(|&v| v as f32));
    let task = f.task_fn(&cfg32);
    let want: f64 = (0..10).map(|i| (f64::from(cfg32[i]) - p[i]).powi(2)).sum();
    assert_rel(
        task.loss(&dvec(&p), Key::new(0), &()),
        want,
        1e-14,
        "task_fn",
    );

    let nq = NoisyQuadraticFamily::new(10, 2.0);
    let scale: Vec<f64> = given(17)[7..].iter().map(|v| v.abs() * 10.0).collect();
    let cfg = NoisyQuadraticCfg {
        center: dvec(&c),
        scale: dvec(&scale),
    };
    let want: f64 = (0..10).map(|i| (scale[i] * (c[i] - p[i])).powi(2)).sum();
    for seed in 0..3 {
        assert_rel(
            nq.loss(&dvec(&p), &cfg, Key::new(seed), &()),
            want,
            1e-14,
            "NoisyQuadraticFamily",
        );
    }
}

// ----- inits, shapes, determinism -----

fn draws<P: Params<Scalar = f32>>(f: impl Fn(Key) -> P, n: u64) -> Vec<f64> {
    (0..n)
        .flat_map(|s| f(Key::new(s)).flatten())
        .map(f64::from)
        .collect()
}

#[test]
fn init_shapes_statistics_and_determinism() {
    let t = QuadraticTask::default();
    assert_eq!(t.init::<f32>(Key::new(0)).len(), 10);
    assert_eq!(QuadraticTask::new(4).init::<f32>(Key::new(0)).len(), 4);
    assert_normal(&draws(|k| t.init::<f32>(k), 500), 1.0, "QuadraticTask init");
    assert_normal(
        &draws(|k| LogQuadraticTask.init::<f32>(k), 500),
        1.0,
        "LogQuadraticTask init",
    );
    assert_normal(
        &draws(|k| BatchQuadraticTask.init::<f32>(k), 500),
        1.0,
        "BatchQuadraticTask init",
    );
    assert_normal(
        &draws(|k| SumQuadraticTask.init::<f32>(k), 500),
        1.0,
        "SumQuadraticTask init",
    );

    let s = SumQuadraticTask.init::<f32>(Key::new(4));
    assert_eq!((s.a.len(), s.b.len()), (10, 10));
    assert_eq!(s.leaf_names(), vec!["a".to_string(), "b".to_string()]);
    assert_ne!(s.a, s.b);

    // NoisyMeanQuadraticTask: p ~ 10·N(0, 1), a column of `dim`.
    let nm = NoisyMeanQuadraticTask::new(3, 1.0);
    let p = nm.init::<f32>(Key::new(0));
    assert_eq!(p.shape(), (3, 1));
    assert_normal(
        &draws(|k| nm.init::<f32>(k), 1000),
        10.0,
        "NoisyMeanQuadraticTask init",
    );
    // Its noise: σ·N(0, 1).
    let nm2 = NoisyMeanQuadraticTask::new(4, 0.25);
    assert_normal(
        &draws(|k| nm2.noise(k), 1000),
        0.25,
        "NoisyMeanQuadraticTask noise",
    );

    // Same key, same init; other key, other init; f64 init is the f32 init widened.
    assert_eq!(t.init::<f32>(Key::new(5)), t.init::<f32>(Key::new(5)));
    assert_ne!(t.init::<f32>(Key::new(5)), t.init::<f32>(Key::new(6)));
    assert_eq!(
        t.init::<f64>(Key::new(5)),
        t.init::<f32>(Key::new(5)).cast::<f64>()
    );
    assert_eq!(
        nm.init::<f64>(Key::new(5)),
        nm.init::<f32>(Key::new(5)).cast::<f64>()
    );
    assert_eq!(
        SumQuadraticTask.init::<f32>(Key::new(5)),
        SumQuadraticTask.init::<f32>(Key::new(5))
    );

    // The Hessian is fixed by key 7: two instances agree, and it is symmetric PSD-looking.
    assert_eq!(
        NoisyMeanQuadraticTask::default().hessian(),
        NoisyMeanQuadraticTask::new(2, 5.0).hessian()
    );
    let h = NoisyMeanQuadraticTask::new(4, 1.0).hessian().clone();
    assert_eq!(h, h.transpose());
    assert!((0..4).all(|i| h[(i, i)] >= 0.0));
    let d = NoisyMeanQuadraticTask::default();
    assert_eq!((d.dim(), d.noise_stdev()), (2, 1.0));
}

#[test]
fn family_samples_shapes_statistics_and_determinism() {
    let f = FixedDimQuadraticFamily::default();
    assert_eq!(f.sample(Key::new(0)).len(), 10);
    assert_normal(
        &draws(|k| f.sample(k), 500),
        1.0,
        "FixedDimQuadraticFamily sample",
    );
    let cfg = f.sample(Key::new(0));
    assert_normal(
        &draws(|k| f.init(&cfg, k), 500),
        1.0,
        "FixedDimQuadraticFamily init",
    );
    assert_eq!(f.sample(Key::new(3)), f.sample(Key::new(3)));
    assert_ne!(f.sample(Key::new(3)), f.sample(Key::new(4)));
    let task = f.task_fn(&cfg);
    assert_eq!(task.init::<f32>(Key::new(2)), f.init(&cfg, Key::new(2)));

    let fd = FixedDimQuadraticFamilyData::new(5);
    assert_eq!(fd.sample(Key::new(0)).len(), 5);
    assert_normal(
        &draws(|k| fd.sample(k), 500),
        1.0,
        "FixedDimQuadraticFamilyData sample",
    );

    let nq = NoisyQuadraticFamily::new(8, 0.5);
    let c = nq.sample(Key::new(1));
    assert_eq!((c.center.len(), c.scale.len()), (8, 8));
    assert_eq!(
        c.leaf_names(),
        vec!["center".to_string(), "scale".to_string()]
    );
    assert_eq!(nq.sample(Key::new(1)), c);
    // center from split().0, scale = 25·U[0, 1) from split().1.
    let (k, sub) = Key::new(1).split();
    assert_eq!(c.center.as_slice(), k.normal_vec::<f32>(8).as_slice());
    let mut u = vec![0.0f32; 8];
    sub.fill_uniform(&mut u);
    for (s, u) in c.scale.iter().zip(&u) {
        assert_eq!(*s, 25.0 * u);
    }
    let centers = draws(|k| nq.sample(k).center, 500);
    assert_normal(&centers, 1.0, "NoisyQuadraticFamily center");
    let scales = draws(|k| nq.sample(k).scale, 500);
    assert!(scales.iter().all(|&s| (0.0..25.0).contains(&s)));
    let (m, sd) = mean_std(&scales);
    let n = scales.len() as f64;
    let sd_u = 25.0 / 12f64.sqrt();
    assert!((m - 12.5).abs() < 5.0 * sd_u / n.sqrt(), "scale mean {m}");
    assert!((sd - sd_u).abs() < 0.05 * sd_u, "scale std {sd}");
    assert_normal(
        &draws(|k| nq.init(&c, k), 500),
        1.0,
        "NoisyQuadraticFamily init",
    );
    // The gradient noise is cov·N(0, 1).
    assert_normal(
        &draws(|k| nq.gradient_noise(k), 500),
        0.5,
        "NoisyQuadraticFamily noise",
    );
}

#[test]
fn names_follow_the_jax_library() {
    assert_eq!(QuadraticTask::default().name(), "QuadraticTask");
    assert_eq!(LogQuadraticTask.name(), "LogQuadraticTask");
    assert_eq!(SumQuadraticTask.name(), "SumQuadraticTask");
    assert_eq!(BatchQuadraticTask.name(), "BatchQuadraticTask");
    assert_eq!(
        NoisyMeanQuadraticTask::default().name(),
        "NoisyMeanQuadraticTask"
    );
    assert_eq!(
        FixedDimQuadraticFamily::default().name(),
        "FixedDimQuadraticFamily"
    );
    assert_eq!(
        FixedDimQuadraticFamilyData::new(3).name(),
        "FixedDimQuadraticFamilyData"
    );
    assert_eq!(
        NoisyQuadraticFamily::new(3, 1.0).name(),
        "NoisyQuadraticFamily"
    );
}

// ----- datasets, normalizer, aux -----

#[test]
fn datasets_are_cached_noise() {
    let a = BatchQuadraticTask.datasets().unwrap();
    let b = batch_datasets();
    assert!(a.shares_streams_with(&b));
    let batches = a.batches(Split::Test, 200).unwrap();
    let xs: Vec<f64> = batches
        .iter()
        .flat_map(|m| m.iter().map(|&v| f64::from(v)))
        .collect();
    assert_normal(&xs, 1.0, "batch_datasets");

    let fam = FixedDimQuadraticFamilyData::new(4);
    let d1 = fam.datasets().unwrap();
    let d2 = fam.task_fn(&fam.sample(Key::new(0))).datasets().unwrap();
    assert!(d1.shares_streams_with(&d2));
    assert!(d1.shares_streams_with(&noise_datasets()));
    let xs: Vec<f64> = d1
        .batches(Split::OuterValid, 2000)
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect();
    assert_normal(&xs, 1.0, "noise_datasets");
    // Splits are different streams.
    let t: Vec<f32> = d1.batches(Split::Train, 5).unwrap();
    let v: Vec<f32> = d1.batches(Split::InnerValid, 5).unwrap();
    assert_ne!(t, v);
}

#[test]
fn data_family_normalizer_clips_and_keeps_nan() {
    let fam = FixedDimQuadraticFamilyData::new(3);
    assert_eq!(fam.normalizer(-3.5f32), 0.0);
    assert_eq!(fam.normalizer(0.0f32), 0.0);
    assert_eq!(fam.normalizer(12.25f32), 12.25);
    assert_eq!(fam.normalizer(1000.0f64), 1000.0);
    assert_eq!(fam.normalizer(1e6f64), 1000.0);
    assert_eq!(fam.normalizer(f32::INFINITY), 1000.0);
    assert_eq!(fam.normalizer(f32::NEG_INFINITY), 0.0);
    assert!(fam.normalizer(f32::NAN).is_nan());
    // On lane packets, lane by lane.
    let x = Lanes::<8>::from_lanes(|i| [-1.0, 5.0, 2000.0, f64::NAN, 0.5, 999.0, 1001.0, -0.0][i]);
    let y = fam.normalizer(x);
    let want = [0.0, 5.0, 1000.0, f64::NAN, 0.5, 999.0, 1000.0, 0.0];
    for (i, w) in want.iter().enumerate() {
        if w.is_nan() {
            assert!(y.lane(i).is_nan());
        } else {
            assert_eq!(y.lane(i), *w, "lane {i}");
        }
    }
    // The task of the family uses it; the families without one are the identity.
    let task = fam.task_fn(&fam.sample(Key::new(0)));
    assert_eq!(task.normalizer(5000.0f32), 1000.0);
    assert_eq!(FixedDimQuadraticFamily::default().normalizer(-5.0f32), -5.0);
}

#[test]
fn data_family_aux() {
    let fam = FixedDimQuadraticFamilyData::new(6);
    let x = given(6);
    let aux = fam.aux(&dvec(&x));
    let l2 = x.iter().map(|v| v * v).sum::<f64>() / 6.0;
    let l1 = x.iter().map(|v| v.abs()).sum::<f64>() / 6.0;
    assert_rel(aux.l2, l2, 1e-14, "aux l2");
    assert_rel(aux.l1, l1, 1e-14, "aux l1");
    let c = dvec(&given(12)[6..]);
    let (loss, aux2) = fam.loss_and_aux(&dvec(&x), &c, Key::new(0), &0.5);
    assert_eq!(aux2, aux);
    assert_eq!(loss, fam.loss(&dvec(&x), &c, Key::new(0), &0.5));
}

// ----- batched == serial -----

/// The seed's `train_task`: init from the instance's key, 5 Adam steps, the final loss
/// (or, with `params_sum`, the sum of the final parameters, which reacts to every bit of
/// gradient noise while the loss is dominated by the distance still to go).
/// Each instance's loss keys (which only `NoisyQuadraticFamily` reads) come from its own
/// key, lane by lane, as they would alone.
struct Train5 {
    params_sum: bool,
}

impl<F: TaskFamily<Batch = ()>> VmapFn<F> for Train5 {
    fn call<S: Real>(&self, family: &F, cfg: &F::Cfg<S>, keys: S::Key) -> S {
        let (key1, loss_key) = keys.split();
        let params = family.init_lanes(cfg, key1);
        let opt = Adam::default();
        let mut state = opt.init(params, None);
        for step in 0..5 {
            let k = loss_key.fold_in(step);
            let (loss, grad) = family.value_and_grad(opt.get_params(&state), cfg, k, &());
            opt.update(&mut state, &grad, loss);
        }
        let p = opt.get_params(&state);
        if self.params_sum {
            (0..p.num_leaves())
                .flat_map(|i| p.leaf(i).iter().copied())
                .fold(S::c(0.0), |a, x| a + x)
        } else {
            family.loss(p, cfg, loss_key.fold_in(5), &())
        }
    }
}

fn batched_equals_serial<F: TaskFamily<Batch = ()>>(family: &F, what: &str) {
    let keys = Key::new(77).split_n(20);
    let cfgs: Vec<F::Cfg<f32>> = keys.iter().map(|&k| family.sample(k.fold_in(1))).collect();
    for params_sum in [false, true] {
        let train = Train5 { params_sum };
        let serial = vmap(family, &train, &cfgs, &keys, Width::Serial).unwrap();
        // The serial run is the plain one-instance function.
        for i in [0, 19] {
            let one = train.call::<f32>(family, &cfgs[i], keys[i]);
            assert_eq!(
                one, serial[i],
                "{what}: vmap Serial vs direct call, instance {i}"
            );
        }
        // Distinct instances train to distinct values (the comparison below is not vacuous).
        assert_ne!(serial[0], serial[1]);
        for width in [Width::W8, Width::W16] {
            let batched = vmap(family, &train, &cfgs, &keys, width).unwrap();
            assert_eq!(batched.len(), 20);
            for i in 0..20 {
                let (b, s) = (f64::from(batched[i]), f64::from(serial[i]));
                // Relative 1e-5 (absolute near zero for the parameter sums).
                assert!(
                    (b - s).abs() <= 1e-5 * b.abs().max(s.abs()).max(1.0),
                    "{what} {width:?} instance {i} (params_sum {params_sum}): {b} vs {s}"
                );
            }
        }
    }
}

#[test]
fn fixed_dim_family_batched_equals_serial() {
    batched_equals_serial(
        &FixedDimQuadraticFamily::default(),
        "FixedDimQuadraticFamily",
    );
}

#[test]
fn noisy_quadratic_family_batched_equals_serial() {
    batched_equals_serial(&NoisyQuadraticFamily::new(10, 1.5), "NoisyQuadraticFamily");
}
