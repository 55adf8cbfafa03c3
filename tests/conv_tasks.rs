//! The conv-net tasks and family (`tasks::conv`) and the MLP autoencoder
//! (`tasks::image_mlp_ae`): values equal to the JAX library's own task code, gradients
//! and JVPs against central differences of the same models written a second time as plain
//! f64 loops, parameter counts equal to haiku's, init statistics, learning on real
//! Fashion-MNIST, and a family of mixed shapes trained batched equal to each instance
//! trained alone.

use lopt::ad::conv::{Conv2dGeometry, Padding};
use lopt::datasets::{fashion_mnist_datasets, Datasets, ExtraInfo, ImageBatch, Split};
use lopt::eval_training::{multi_task_training_curves, sample_instances, MultiTaskConfig};
use lopt::gradcheck::{check_gradient, GradCheck};
use lopt::prelude::*;
use lopt::tasks::conv::{
    pixel_rows, Conv2, Conv3, ConvAccuracy, ConvParams, ConvTask, Conv_Cifar10_32x64x64,
    Conv_FashionMnist28_32x64x64, Conv_FashionMnist8_16x32, ParametricImageConv,
    ParametricImageConvCfg, CONV_FAMILY_ACTIVATIONS,
};
use lopt::tasks::image_mlp::accuracy;
use lopt::tasks::image_mlp_ae::{
    reconstruct, Ae4, ImageMLPAE_FashionMnist_128x32x128_bs128, ImageMlpAeTask,
};
use lopt::vmap::Width;

/// Whether Fashion-MNIST is installed; missing, the parts that need it are skipped with
/// a note, except in CI (`CI` set to anything but `false`/`0`), where it is a failure.
///
/// Catches (tried with `LOPT_DATA_DIR=/nonexistent CI=true`): a CI run that lost the
/// dataset and would otherwise pass while testing less.
fn fashion_mnist_present() -> bool {
    match fashion_mnist_datasets(128, (8, 8), None) {
        Ok(_) => true,
        Err(Error::DatasetMissing { help, .. }) => {
            let ci = std::env::var("CI").is_ok_and(|v| v != "false" && v != "0");
            assert!(
                !ci,
                "Fashion-MNIST is missing in CI (CI is set): .ci/run must install \
                 dataset-fashion-mnist. {help}"
            );
            eprintln!("note: Fashion-MNIST not installed: skipping its part of this test");
            false
        }
        Err(e) => panic!("Fashion-MNIST files exist but fail to load: {e}"),
    }
}

/// Datasets repeating `batch` in every split, declaring 10 classes.
fn repeating(batch: &ImageBatch) -> Datasets<ImageBatch> {
    let r = || std::iter::repeat(batch.clone());
    Datasets::new(r(), r(), r(), r()).with_extra_info(ExtraInfo::with_num_classes(10))
}

/// `n` images of `(h, w, c)` whose pixel `k` (row-major over `[n, h, w, c]`) is
/// `0.5 + 0.5 sin(0.37 k + 0.1)`, with `labels`: the batch the JAX values were made with.
fn sine_batch((h, w, c): (usize, usize, usize), labels: Vec<i32>) -> ImageBatch {
    let n = labels.len();
    let f = h * w * c;
    ImageBatch {
        image: DMatrix::from_fn(n, f, |i, j| {
            (0.5 + 0.5 * (0.37 * (i * f + j) as f64 + 0.1).sin()) as f32
        }),
        label: labels,
        height: h,
        width: w,
        channels: c,
    }
}

/// `0.3 sin(1.7 k + phase)` for the row-major index `k` of an `r × c` array.
fn sine_mat(r: usize, c: usize, phase: f64) -> DMatrix<f64> {
    DMatrix::from_fn(r, c, |i, j| 0.3 * (1.7 * (i * c + j) as f64 + phase).sin())
}
fn sine_vec(n: usize, phase: f64) -> DVector<f64> {
    sine_mat(n, 1, phase).column(0).into_owned()
}

// ---------------------------------------------------------------- f64 reference

/// One 3×3 `SAME` convolution with `stride` by its definition, then `act`, on images
/// `x[n][h][w][c]`: TensorFlow's padding, the smaller half before.
fn conv_ref(
    x: &[Vec<Vec<Vec<f64>>>],
    w: &DMatrix<f64>,
    b: &DVector<f64>,
    stride: usize,
    act: &dyn Fn(f64) -> f64,
) -> Vec<Vec<Vec<Vec<f64>>>> {
    let (hi, wi, ci) = (x[0].len(), x[0][0].len(), x[0][0][0].len());
    let pad = |input: usize| {
        let out = input.div_ceil(stride);
        (out, (((out - 1) * stride + 3).max(input) - input) / 2)
    };
    let ((ho, pt), (wo, pl)) = (pad(hi), pad(wi));
    x.iter()
        .map(|img| {
            (0..ho)
                .map(|oh| {
                    (0..wo)
                        .map(|ow| {
                            (0..w.ncols())
                                .map(|o| {
                                    let mut s = b[o];
                                    for i in 0..3 {
                                        for j in 0..3 {
                                            let hh = (oh * stride + i) as isize - pt as isize;
                                            let ww = (ow * stride + j) as isize - pl as isize;
                                            if hh < 0
                                                || ww < 0
                                                || hh >= hi as isize
                                                || ww >= wi as isize
                                            {
                                                continue;
                                            }
                                            for c in 0..ci {
                                                s += img[hh as usize][ww as usize][c]
                                                    * w[((i * 3 + j) * ci + c, o)];
                                            }
                                        }
                                    }
                                    act(s)
                                })
                                .collect()
                        })
                        .collect()
                })
                .collect()
        })
        .collect()
}

/// The conv net on `batch` in f64: `layers` (kernel, bias, stride), `act` after each,
/// mean over positions, the head, mean softmax cross-entropy.
fn conv_net_ref(
    layers: &[(&DMatrix<f64>, &DVector<f64>, usize)],
    head: (&DMatrix<f64>, &DVector<f64>),
    act: &dyn Fn(f64) -> f64,
    batch: &ImageBatch,
) -> f64 {
    let (h, w, c) = (batch.height, batch.width, batch.channels);
    let mut x: Vec<Vec<Vec<Vec<f64>>>> = (0..batch.label.len())
        .map(|n| {
            (0..h)
                .map(|y| {
                    (0..w)
                        .map(|xx| {
                            (0..c)
                                .map(|k| f64::from(batch.image[(n, (y * w + xx) * c + k)]))
                                .collect()
                        })
                        .collect()
                })
                .collect()
        })
        .collect();
    for (kw, kb, s) in layers {
        x = conv_ref(&x, kw, kb, *s, act);
    }
    let mut total = 0.0;
    for (n, img) in x.iter().enumerate() {
        let positions = (img.len() * img[0].len()) as f64;
        let channels = img[0][0].len();
        let pooled: Vec<f64> = (0..channels)
            .map(|k| img.iter().flatten().map(|px| px[k]).sum::<f64>() / positions)
            .collect();
        let logits: Vec<f64> = (0..head.0.ncols())
            .map(|o| {
                head.1[o]
                    + (0..channels)
                        .map(|k| pooled[k] * head.0[(k, o)])
                        .sum::<f64>()
            })
            .collect();
        let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + logits.iter().map(|z| (z - m).exp()).sum::<f64>().ln();
        total += lse - logits[batch.label[n] as usize];
    }
    total / batch.label.len() as f64
}

fn relu_f64(v: f64) -> f64 {
    v.max(0.0)
}

fn conv2_ref(p: &Conv2<f64>, strides: [usize; 2], act: &dyn Fn(f64) -> f64, b: &ImageBatch) -> f64 {
    conv_net_ref(
        &[(&p.w1, &p.b1, strides[0]), (&p.w2, &p.b2, strides[1])],
        (&p.w3, &p.b3),
        act,
        b,
    )
}

fn conv3_ref(p: &Conv3<f64>, b: &ImageBatch) -> f64 {
    conv_net_ref(
        &[(&p.w1, &p.b1, 2), (&p.w2, &p.b2, 1), (&p.w3, &p.b3, 1)],
        (&p.w4, &p.b4),
        &relu_f64,
        b,
    )
}

/// The autoencoder's loss in f64 loops: mean over examples of the mean over features of
/// `(x − sigmoid(mlp(x)))²`.
fn ae_ref(p: &Ae4<f64>, b: &ImageBatch) -> f64 {
    let dense = |x: &[f64], w: &DMatrix<f64>, bias: &DVector<f64>, relu: bool| -> Vec<f64> {
        (0..w.ncols())
            .map(|o| {
                let s = bias[o]
                    + x.iter()
                        .enumerate()
                        .map(|(i, v)| v * w[(i, o)])
                        .sum::<f64>();
                if relu {
                    s.max(0.0)
                } else {
                    s
                }
            })
            .collect()
    };
    let mut total = 0.0;
    for n in 0..b.label.len() {
        let x: Vec<f64> = b.image.row(n).iter().map(|&v| f64::from(v)).collect();
        let h = dense(&x, &p.w1, &p.b1, true);
        let h = dense(&h, &p.w2, &p.b2, true);
        let h = dense(&h, &p.w3, &p.b3, true);
        let z = dense(&h, &p.w4, &p.b4, false);
        let per: f64 = x
            .iter()
            .zip(&z)
            .map(|(xi, zi)| (xi - 1.0 / (1.0 + (-zi).exp())).powi(2))
            .sum::<f64>()
            / x.len() as f64;
        total += per;
    }
    total / b.label.len() as f64
}

fn strict() -> GradCheck {
    GradCheck {
        max_elements: 300,
        ..GradCheck::default()
    }
}

// ---------------------------------------------------------------- the JAX library's values

/// The JAX library's task code (`_cross_entropy_pool_loss` in `tasks/fixed/conv.py` and
/// `_fc_ae_loss_fn` in `tasks/fixed/image_mlp_ae.py`, haiku 0.0.17, jax 0.10.2 with
/// `jax_enable_x64`) evaluated on [`sine_batch`] with every parameter leaf set to
/// `0.3 sin(1.7 k + phase)` (k row-major in haiku's shape; phase `2·layer + (0 for w,
/// 1 for b)`): computed by `scripts/jax/conv_reference_values.py`.
///
/// Catches: any layout or padding difference from XLA's, which the f64 reference below
/// (written by the same hand) could share. Tried: `pixel_rows` taking each image's
/// pixels from the next example (2.33766 instead of 2.33794), and the first bias dropped
/// from `ConvTask<2>`'s loss: both fail.
#[test]
fn values_equal_the_jax_library_tasks() {
    // [16, 32] on 8×8×3 (stride 2 pads 0 before, 1 after).
    let b = sine_batch((8, 8, 3), vec![3, 7]);
    let task = ConvTask::<2>::new(repeating(&b), (8, 8, 3), vec![16, 32]).unwrap();
    let p = conv_params2(3, 16, 32);
    let got = task.loss(&p, Key::new(0), &b);
    assert!(
        (got - 2.3379439332408616).abs() < 1e-12,
        "conv 16x32: {got}"
    );

    // [4, 6, 5] on 7×6×2: odd height, stride 2 pads 1 and 1; width 6 pads 0 and 1.
    let b = sine_batch((7, 6, 2), vec![3, 7]);
    let task = ConvTask::<3>::new(repeating(&b), (7, 6, 2), vec![4, 6, 5]).unwrap();
    let p = Conv3 {
        w1: sine_mat(18, 4, 0.0),
        b1: sine_vec(4, 1.0),
        w2: sine_mat(36, 6, 2.0),
        b2: sine_vec(6, 3.0),
        w3: sine_mat(54, 5, 4.0),
        b3: sine_vec(5, 5.0),
        w4: sine_mat(5, 10, 6.0),
        b4: sine_vec(10, 7.0),
        strides: vec![2, 1, 1],
    };
    let got = task.loss(&p, Key::new(0), &b);
    assert!((got - 2.344026967233657).abs() < 1e-12, "conv 4x6x5: {got}");

    // The autoencoder 784 → 128 → 32 → 128 → 784 on two 28×28 images.
    let b = sine_batch((28, 28, 1), vec![3, 7]);
    let task = ImageMlpAeTask::new(repeating(&b), 784, [128, 32, 128]).unwrap();
    let p = Ae4 {
        w1: sine_mat(784, 128, 0.0),
        b1: sine_vec(128, 1.0),
        w2: sine_mat(128, 32, 2.0),
        b2: sine_vec(32, 3.0),
        w3: sine_mat(32, 128, 4.0),
        b3: sine_vec(128, 5.0),
        w4: sine_mat(128, 784, 6.0),
        b4: sine_vec(784, 7.0),
    };
    let got = task.loss(&p, Key::new(0), &b);
    assert!(
        (got - 0.12925442597124578).abs() < 1e-12,
        "autoencoder: {got}"
    );
}

/// [`Conv2`] of the `[16, 32]`-style net with every leaf a sine (see above).
fn conv_params2(c: usize, h1: usize, h2: usize) -> Conv2<f64> {
    Conv2 {
        w1: sine_mat(9 * c, h1, 0.0),
        b1: sine_vec(h1, 1.0),
        w2: sine_mat(9 * h1, h2, 2.0),
        b2: sine_vec(h2, 3.0),
        w3: sine_mat(h2, 10, 4.0),
        b3: sine_vec(10, 5.0),
        strides: vec![2, 1],
    }
}

// ---------------------------------------------------------------- gradients

/// Small random parameters for `task`, in f64, nudged off ReLU kinks by a non-zero bias.
fn init64<T: Task>(task: &T, seed: u64) -> T::Params<f64> {
    task.cast_params::<f32, f64>(&task.init::<f32>(Key::new(seed)))
}

/// Catches: a wrong rule anywhere in the generated code of the two- and three-layer
/// nets, or a model that differs from the definition (tried: the `+ b1` of
/// `ConvTask<2>`'s loss dropped, and `pixel_rows` reading the next example's pixels:
/// both fail).
#[test]
fn conv_tasks_gradients_match_their_definition() {
    // 2-layer: 9×7×2 images (odd sizes), batch 3, labels spread.
    let b = sine_batch((9, 7, 2), vec![1, 8, 4]);
    let task = ConvTask::<2>::new(repeating(&b), (9, 7, 2), vec![5, 4]).unwrap();
    let mut p = init64(&task, 3);
    p.b1 = sine_vec(5, 0.3);
    p.b2 = sine_vec(4, 0.6);
    let indep = |p: &Conv2<f64>| conv2_ref(p, [2, 1], &relu_f64, &b);
    let got = task.loss(&p, Key::new(0), &b);
    assert!((got - indep(&p)).abs() < 1e-12, "{got} vs {}", indep(&p));
    let report = check_gradient(
        &p,
        indep,
        |p| task.value_and_grad(p, Key::new(0), &b),
        |p, t| task.value_and_jvp(p, t, Key::new(0), &b),
        &strict(),
    );
    assert!(report.passed(), "{report}");

    // 3-layer: 8×8×3, batch 2.
    let b = sine_batch((8, 8, 3), vec![0, 9]);
    let task = ConvTask::<3>::new(repeating(&b), (8, 8, 3), vec![4, 5, 3]).unwrap();
    let mut p = init64(&task, 4);
    p.b2 = sine_vec(5, 0.2);
    let indep = |p: &Conv3<f64>| conv3_ref(p, &b);
    let got = task.loss(&p, Key::new(0), &b);
    assert!((got - indep(&p)).abs() < 1e-12, "{got} vs {}", indep(&p));
    let report = check_gradient(
        &p,
        indep,
        |p| task.value_and_grad(p, Key::new(0), &b),
        |p, t| task.value_and_jvp(p, t, Key::new(0), &b),
        &strict(),
    );
    assert!(report.passed(), "{report}");
}

/// The family's activation `which` in f64, written again.
fn family_act(which: usize) -> impl Fn(f64) -> f64 {
    move |v: f64| match CONV_FAMILY_ACTIVATIONS[which] {
        "relu" => v.max(0.0),
        "tanh" => v.tanh(),
        "cos" => v.cos(),
        "sin" => v.sin(),
        "sigmoid" => 1.0 / (1.0 + (-v).exp()),
        "silu" => v / (1.0 + (-v).exp()),
        "leaky_relu(-0.5)" => {
            if v >= 0.0 {
                v
            } else {
                -0.5 * v
            }
        }
        other => panic!("unknown activation {other}"),
    }
}

/// Catches: an activation branch wired to the wrong function (tried: `sin` and `cos`
/// swapped in `activation`: fails) and a stride count ignored (tried: the loss's
/// geometries always with strides `[2, 1]`: fails at no stride-2 convolution).
#[test]
fn family_gradients_match_their_definition_for_every_activation_and_stride() {
    let b = sine_batch((6, 6, 1), vec![2, 5]);
    let family = ParametricImageConv::new(repeating(&b), (6, 6, 1), (4, 64)).unwrap();
    for (act, name) in CONV_FAMILY_ACTIVATIONS.iter().enumerate() {
        for num_stride in 0..3 {
            let cfg = family.cfg(3, num_stride, act, 1.3);
            let p32 = family.init(&cfg, Key::new(act as u64));
            assert_eq!(p32.strides, ParametricImageConv::strides(&cfg));
            let mut p = family.cast_params::<f32, f64>(&p32);
            // Non-zero biases: a pre-activation that is exactly a zero bias (a patch of
            // zeros) would sit on ReLU's kink.
            p.b1 = sine_vec(3, 0.4);
            p.b2 = sine_vec(3, 0.7);
            let cfg64 = family.cast_cfg::<f32, f64>(&cfg);
            let strides = [
                if num_stride >= 1 { 2 } else { 1 },
                if num_stride >= 2 { 2 } else { 1 },
            ];
            let f = family_act(act);
            let indep = |p: &Conv2<f64>| conv2_ref(p, strides, &f, &b);
            let got = family.loss(&p, &cfg64, Key::new(0), &b);
            assert!(
                (got - indep(&p)).abs() < 1e-12,
                "{} stride-2 x{num_stride}: {got} vs {}",
                name,
                indep(&p)
            );
            let report = check_gradient(
                &p,
                indep,
                |p| family.value_and_grad(p, &cfg64, Key::new(0), &b),
                |p, t| family.value_and_jvp(p, t, &cfg64, Key::new(0), &b),
                &strict(),
            );
            assert!(report.passed(), "{} x{num_stride}: {report}", name);
        }
    }
}

/// Catches: a sum instead of a mean over the elements (tried: `sum(square(err))`:
/// fails), or the sigmoid left out of the reconstruction.
#[test]
fn autoencoder_gradient_matches_its_definition() {
    let b = sine_batch((8, 8, 1), vec![0, 1, 2]);
    let task = ImageMlpAeTask::new(repeating(&b), 64, [6, 3, 5]).unwrap();
    let mut p = init64(&task, 7);
    p.b2 = sine_vec(3, 0.5);
    let indep = |p: &Ae4<f64>| ae_ref(p, &b);
    let got = task.loss(&p, Key::new(0), &b);
    assert!((got - indep(&p)).abs() < 1e-12, "{got} vs {}", indep(&p));
    let report = check_gradient(
        &p,
        indep,
        |p| task.value_and_grad(p, Key::new(0), &b),
        |p, t| task.value_and_jvp(p, t, Key::new(0), &b),
        &strict(),
    );
    assert!(report.passed(), "{report}");
    // The f32 reconstruction helper agrees with the loss.
    let p32 = task.init::<f32>(Key::new(7));
    let r = reconstruct(&p32, &b.image);
    let mse = (&b.image - r).map(|v| v * v).mean();
    assert!((mse - task.loss(&p32, Key::new(0), &b)).abs() < 1e-6);
}

// ---------------------------------------------------------------- counts, init, metrics

/// No data: only `extra_info` is read.
fn no_data() -> Datasets<ImageBatch> {
    Datasets::new(
        std::iter::empty(),
        std::iter::empty(),
        std::iter::empty(),
        std::iter::empty(),
    )
    .with_extra_info(ExtraInfo::with_num_classes(10))
}

/// Counts printed by haiku for the library's networks on each input shape (see
/// `scripts/jax/conv_reference_values.py`). Catches: a kernel of the wrong size (tried:
/// kernels of `C_in` rows instead of `9·C_in`: fails the count).
#[test]
fn parameter_counts_equal_the_jax_library() {
    let n2 = |shape, h: Vec<usize>| {
        ConvTask::<2>::new(no_data(), shape, h)
            .unwrap()
            .init::<f32>(Key::new(0))
            .num_elements()
    };
    let n3 = |shape, h: Vec<usize>| {
        ConvTask::<3>::new(no_data(), shape, h)
            .unwrap()
            .init::<f32>(Key::new(0))
            .num_elements()
    };
    assert_eq!(n2((8, 8, 3), vec![16, 32]), 5_418); // Conv_Cifar10_8_16x32
    assert_eq!(n3((16, 16, 3), vec![32, 64, 64]), 56_970); // Conv_Cifar10_16_32x64x64
    assert_eq!(n3((32, 32, 3), vec![32, 64, 64]), 56_970); // Conv_Cifar10_32x64x64
    assert_eq!(n3((28, 28, 1), vec![32, 64, 64]), 56_394); // Conv_FashionMnist28_32x64x64
    assert_eq!(n3((16, 16, 1), vec![32, 64, 64]), 56_394); // Conv_FashionMnist16_32x64x64
    assert_eq!(n2((8, 8, 1), vec![16, 32]), 5_130); // Conv_FashionMnist8_16x32
    let ae = ImageMlpAeTask::new(no_data(), 784, [128, 32, 128]).unwrap();
    assert_eq!(ae.init::<f32>(Key::new(0)).num_elements(), 209_968);
    if fashion_mnist_present() {
        let t = Conv_FashionMnist28_32x64x64().unwrap();
        assert_eq!(t.init::<f32>(Key::new(0)).num_elements(), 56_394);
        assert_eq!(t.name(), "Conv_FashionMnist28_32x64x64");
        let t = Conv_FashionMnist8_16x32().unwrap();
        assert_eq!(t.init::<f32>(Key::new(0)).num_elements(), 5_130);
        let t = ImageMLPAE_FashionMnist_128x32x128_bs128().unwrap();
        assert_eq!(t.init::<f32>(Key::new(0)).num_elements(), 209_968);
        assert_eq!(t.name(), "ImageMLPAE_FashionMnist_128x32x128_bs128");
    }
}

/// Catches: a fan-in of `C_in` instead of `9·C_in` for the kernels (tried: draws exceed
/// the ±2σ bound, fails), a variance correction applied (std 1/√fan_in instead of
/// 0.88/√fan_in), non-zero biases.
#[test]
fn init_is_haikus_uncorrected_truncated_normal() {
    let task = ConvTask::<3>::new(no_data(), (28, 28, 1), vec![32, 64, 64]).unwrap();
    let p = task.init::<f32>(Key::new(5));
    // Standard deviation of a unit normal truncated to ±2.
    let trunc = 0.879_625_661_034_239_8;
    for (w, fan_in) in [(&p.w1, 9.0), (&p.w2, 288.0), (&p.w3, 576.0), (&p.w4, 64.0)] {
        let sigma = 1.0 / f64::sqrt(fan_in);
        let v: Vec<f64> = w.iter().map(|&x| f64::from(x)).collect();
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!(v.iter().all(|x| x.abs() <= 2.0 * sigma * (1.0 + 1e-6)));
        // The sample std of n draws is within ~5/√(2n) of its value (relative).
        let tol = 5.0 / (2.0 * n).sqrt();
        assert!(
            (std / (trunc * sigma) - 1.0).abs() < tol.max(0.02),
            "fan_in {fan_in}: std {std} vs {}",
            trunc * sigma
        );
    }
    assert!([&p.b1, &p.b2, &p.b3, &p.b4]
        .iter()
        .all(|b| b.iter().all(|&x| x == 0.0)));
}

/// Catches: `pixel_rows` mixing examples (tried: each image's pixels taken from the next
/// example: the round trip fails), and the f32 forward of `ConvParams::logits`
/// disagreeing with the loss (tried: no ReLU in `conv_logits`: fails).
#[test]
fn pixel_layout_and_f32_forward_agree_with_the_loss() {
    let b = sine_batch((5, 4, 3), vec![1, 2]);
    let x = pixel_rows(&b.image, 3);
    for n in 0..2 {
        for p in 0..20 {
            for c in 0..3 {
                assert_eq!(x[(n * 20 + p, c)], b.image[(n, p * 3 + c)]);
            }
        }
    }
    let task = ConvTask::<2>::new(repeating(&b), (5, 4, 3), vec![4, 3]).unwrap();
    let mut p = task.init::<f32>(Key::new(2));
    p.b1 = sine_vec(4, 0.1).cast::<f32>();
    let logits = p.logits(&b);
    let ce: f64 = (0..2)
        .map(|n| {
            let row: Vec<f64> = logits.row(n).iter().map(|&v| f64::from(v)).collect();
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            m + row.iter().map(|z| (z - m).exp()).sum::<f64>().ln() - row[b.label[n] as usize]
        })
        .sum::<f64>()
        / 2.0;
    assert!((ce - f64::from(task.loss(&p, Key::new(0), &b))).abs() < 1e-5);
    let acc = task.accuracy(&p, &b).unwrap();
    assert!(acc == 0.0 || acc == 0.5 || acc == 1.0);
    // A batch of another shape is refused, not mis-read.
    let other = sine_batch((4, 5, 3), vec![1, 2]);
    assert!(matches!(
        task.accuracy(&p, &other),
        Err(Error::ShapeMismatch { .. })
    ));
}

/// Catches: the family normalizer's clip bound or shift (tried: `ln K` instead of
/// `ln 2K` as the bound: the value at 100 fails), NaN not mapped.
#[test]
fn normalizers_follow_the_library() {
    let k = 10.0f64;
    let max = (2.0 * k).ln();
    let f = |l| ParametricImageConv::normalize(l, 10);
    assert!((f(100.0) - (max - 2f64.ln()) * 10.0 / k.ln()).abs() < 1e-12);
    assert!((f(f64::NAN) - f(100.0)).abs() < 1e-12);
    assert!((f(-1.0) - (-(2f64.ln()) * 10.0 / k.ln())).abs() < 1e-12);
    assert!((f(1.0) - (1.0 - 2f64.ln()) * 10.0 / k.ln()).abs() < 1e-12);
    // The fixed tasks: clip(L, 0, 1.5 ln 10); the autoencoder: clip(L, 0, 1).
    let b = sine_batch((8, 8, 1), vec![0]);
    let task = ConvTask::<2>::new(repeating(&b), (8, 8, 1), vec![2, 2]).unwrap();
    assert_eq!(task.normalizer(100.0f64), 1.5 * k.ln());
    assert_eq!(task.normalizer(f64::NAN), 1.5 * k.ln());
    let ae = ImageMlpAeTask::new(repeating(&b), 64, [2, 2, 2]).unwrap();
    assert_eq!(ae.normalizer(3.0f64), 1.0);
    assert_eq!(ae.normalizer(0.25f64), 0.25);
    assert!(ae.normalizer(f64::NAN).is_nan());
}

/// Catches: a sampler outside the library's ranges (tried: `randint(0, 2)` for the
/// stride count: 2 never appears and the test fails).
#[test]
fn family_samples_the_librarys_ranges() {
    let b = sine_batch((8, 8, 1), vec![0]);
    let family = ParametricImageConv::new(repeating(&b), (8, 8, 1), (4, 64)).unwrap();
    let cfgs: Vec<ParametricImageConvCfg<f32>> =
        (0..400).map(|i| family.sample(Key::new(i))).collect();
    assert!(cfgs.iter().all(|c| (4..64).contains(&c.hidden)));
    assert!(cfgs.iter().all(|c| (0.5..=2.0).contains(&c.init_scale)));
    for s in 0..3 {
        assert!(cfgs.iter().any(|c| c.num_stride == s), "stride count {s}");
    }
    for a in 0..CONV_FAMILY_ACTIVATIONS.len() {
        assert!(cfgs.iter().any(|c| c.activation == a), "activation {a}");
    }
    // Log-uniform: about half below √(4·64) = 16.
    let below = cfgs.iter().filter(|c| c.hidden < 16).count();
    assert!((140..260).contains(&below), "{below} of 400 below 16");
    assert!(ParametricImageConv::new(repeating(&b), (8, 8, 1), (4, 4)).is_err());
    assert!(ConvTask::<2>::new(repeating(&b), (8, 8, 1), vec![3]).is_err());
    assert!(ConvTask::<2>::new(repeating(&b), (0, 8, 1), vec![3, 3]).is_err());
}

// ---------------------------------------------------------------- batched family training

/// Catches: instances of different shapes put in one lane group, or lanes of a group
/// mixed up (tried, temporarily in lopt-runtime: `LaneGroups::by_structure` grouping in
/// order regardless of structure: fails, `set_lane: leaf 0 differs in size`).
#[test]
fn mixed_shape_family_trains_batched_as_each_instance_alone() {
    const STEPS: usize = 4;
    let batches: Vec<ImageBatch> = (0..16)
        .map(|i| {
            let mut b = sine_batch(
                (6, 6, 1),
                (0..8).map(|k| ((k * 3 + i) % 10) as i32).collect(),
            );
            b.image.iter_mut().enumerate().for_each(|(j, v)| {
                *v = (*v + 0.1 * ((j * 7 + i * 13) % 11) as f32) % 1.0;
            });
            b
        })
        .collect();
    let fresh = || {
        let tr = batches.clone();
        let r = |v: Vec<ImageBatch>| v.into_iter().cycle();
        Datasets::new(r(tr.clone()), r(tr.clone()), r(tr.clone()), r(tr))
            .with_extra_info(ExtraInfo::with_num_classes(10))
    };
    let probe = ParametricImageConv::new(fresh(), (6, 6, 1), (4, 8)).unwrap();
    let (mut cfgs, keys) = sample_instances(&probe, 11, Key::new(9));
    // Several shapes whatever the sample: widths 4..7, stride counts 0..2, activations.
    for (i, c) in cfgs.iter_mut().enumerate() {
        c.hidden = 4 + i % 2;
        c.num_stride = i % 3;
        c.activation = [0, 1, 5][i % 3];
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
        let family = ParametricImageConv::new(fresh(), (6, 6, 1), (4, 8)).unwrap();
        let out = multi_task_training_curves(
            &family,
            &Adam::new(1e-2),
            &cfgs,
            &keys,
            &config(width),
            &ConvAccuracy,
            &mut |_| {},
        )
        .unwrap();
        assert!(out.non_finite_at.iter().all(Option::is_none));
        results.push(out);
    }
    // The serial run against each instance trained alone with the plain Task API on the
    // same stream (train: one eval batch, then STEPS batches).
    for (i, (cfg, key)) in cfgs.iter().zip(&keys).enumerate() {
        let task = probe.task_fn(cfg);
        let opt = Adam::new(1e-2);
        let mut state = opt.init(probe.init(cfg, key.split().0), None);
        for t in 0..STEPS {
            let b = &batches[t % 16];
            let (l, g) = task.value_and_grad(opt.get_params(&state), Key::new(0), b);
            opt.update(&mut state, &g, l);
        }
        let want = opt.get_params(&state);
        for (w, r) in results.iter().enumerate() {
            let s = &r.params[i];
            assert_eq!(s.strides, want.strides);
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

// ---------------------------------------------------------------- learning on real data

#[derive(Params, Clone, Debug)]
struct SmallConv<S: Real> {
    w1: DMatrix<S>,
    b1: DVector<S>,
    w2: DMatrix<S>,
    b2: DVector<S>,
}

/// conv 3×3 stride 2 `SAME` → ReLU → a `VALID` convolution as large as its input (a
/// dense layer over every position and channel) to the logits; mean softmax
/// cross-entropy.
#[task]
fn small_conv<S: Real>(
    p: &SmallConv<S>,
    x: &DMatrix<f32>,
    labels: &Vec<i32>,
    g1: &Conv2dGeometry,
    g2: &Conv2dGeometry,
) -> S {
    let h = relu(im2col(x, g1) * &p.w1 + &p.b1);
    let logits = im2col(h, g2) * &p.w2 + &p.b2;
    mean(softmax_cross_entropy(logits, labels))
}

/// The geometries of [`small_conv`] for `n` images of 28×28 and `c` channels.
fn small_conv_geometries(n: usize, c: usize) -> (Conv2dGeometry, Conv2dGeometry) {
    let g1 = Conv2dGeometry::new((n, 28, 28, 1), (3, 3), (2, 2), Padding::Same).unwrap();
    let g2 = Conv2dGeometry::new((n, 14, 14, c), (14, 14), (1, 1), Padding::Valid).unwrap();
    (g1, g2)
}

/// A small conv net (above, 12 channels, 23,650 parameters) trained with Adam(3e-3) for
/// 400 steps of 64 Fashion-MNIST images (28×28) must beat 80% accuracy on 4,096 test
/// images.
///
/// Why 80% follows from the data and not from a run: with at least 9 channels the
/// network contains every linear classifier of the image (a channel whose kernel is 1 at
/// one of the 9 taps and 0 elsewhere passes that pixel through the ReLU unchanged, since
/// pixels are in `[0, 1]`, and the stride-2 windows cover every pixel, so the dense head
/// sees them all), and a linear classifier (logistic regression) reaches 84% on
/// Fashion-MNIST (Zalando's benchmark in the dataset's README); chance is 10%. Failing
/// 80% means the task does not learn (a wrong gradient, layout or data), not that it
/// learns a little slower. (It runs in the debug build of `cargo test`: about 0.1 s a
/// step there.)
///
/// Catches: a network that does not learn from the data (tried: `pixel_rows` taking each
/// image's pixels from the next example, so images and labels disagree: accuracy 0.10).
#[test]
fn small_conv_net_beats_80_percent_on_fashion_mnist() {
    if !fashion_mnist_present() {
        return;
    }
    const C: usize = 12;
    let ds = fashion_mnist_datasets(64, (28, 28), None).unwrap();
    let (g1, g2) = small_conv_geometries(64, C);
    let key = Key::new(0);
    let mut p = SmallConv {
        w1: DMatrix::zeros(9, C),
        b1: DVector::zeros(C),
        w2: DMatrix::zeros(14 * 14 * C, 10),
        b2: DVector::zeros(10),
    };
    key.fold_in(0)
        .fill_truncated_normal(p.w1.as_mut_slice(), 1.0 / 3.0);
    let std2 = 1.0 / ((14 * 14 * C) as f32).sqrt();
    key.fold_in(1)
        .fill_truncated_normal(p.w2.as_mut_slice(), std2);
    assert_eq!(p.num_elements(), 23_650);
    let opt = Adam::new(3e-3);
    let mut state = opt.init(p, None);
    for step in 0..400 {
        let b = ds.train().unwrap();
        let x = pixel_rows(&b.image, 1);
        let (l, g) = small_conv::value_and_grad(opt.get_params(&state), &x, &b.label, &g1, &g2);
        assert!(l.is_finite(), "step {step}: loss {l}");
        opt.update(&mut state, &g, l);
    }
    let p = opt.get_params(&state);
    let test = ds.batches(Split::Test, 64).unwrap();
    let mut acc = 0.0;
    for b in &test {
        let x = pixel_rows(&b.image, 1);
        let mut h = g1.im2col(&x) * &p.w1;
        for (mut col, &bj) in h.column_iter_mut().zip(p.b1.iter()) {
            col.iter_mut().for_each(|v| *v = (*v + bj).max(0.0));
        }
        let mut logits = g2.im2col(&h) * &p.w2;
        for (mut col, &bj) in logits.column_iter_mut().zip(p.b2.iter()) {
            col.iter_mut().for_each(|v| *v += bj);
        }
        acc += accuracy(&logits, &b.label).unwrap() / test.len() as f64;
    }
    eprintln!(
        "small conv net on Fashion-MNIST, Adam(3e-3), 400 steps of 64: test accuracy {acc:.4}"
    );
    assert!(acc > 0.80, "test accuracy {acc}");
}

/// The CIFAR-10 constructors need the user's directory: without files they are a typed
/// `DatasetMissing`, never a panic.
#[test]
fn cifar_tasks_without_files_are_a_typed_error() {
    let dir = std::env::temp_dir().join("lopt_no_cifar_here");
    let _ = std::fs::create_dir_all(&dir);
    match Conv_Cifar10_32x64x64(Some(&dir)) {
        Err(Error::DatasetMissing { .. }) => {}
        other => panic!("expected DatasetMissing, got {:?}", other.map(|t| t.name())),
    }
}
