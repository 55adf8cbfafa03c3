//! MLP autoencoders of images (the JAX library's `tasks/fixed/image_mlp_ae.py`).
//!
//! `_fc_ae_loss_fn(hidden, relu)`: the image is flattened to `F` features
//! (`hk.Flatten`), then `hk.nets.MLP(hidden + [F], activation=relu)` (ReLU between the
//! layers, none after the last), and the loss is
//! `mean_batch(mean_features((x − sigmoid(logits))²))`, which is the mean over all
//! elements since every row has `F` features. Initialization is haiku's `Linear`
//! default (`1/√fan_in` times a normal truncated at ±2 without variance correction,
//! biases 0). The normalizer is `clip(L, 0, 1)` (a NaN stays NaN, as `jnp.clip` keeps
//! it).
//!
//! [`ImageMLPAE_FashionMnist_128x32x128_bs128`]: Fashion-MNIST 28×28, batch 128,
//! 784 → 128 → 32 → 128 → 784, 209,968 parameters (as the library's).
//!
//! ```
//! use lopt::prelude::*;
//! use lopt::tasks::image_mlp_ae::{Ae4, ImageMlpAeTask};
//! use lopt::datasets::digits_datasets;
//!
//! let task = ImageMlpAeTask::new(digits_datasets(32)?, 64, [16, 4, 16])?;
//! let params: Ae4<f32> = task.init(Key::new(0));
//! assert_eq!(params.num_elements(), 64 * 16 + 16 + 16 * 4 + 4 + 4 * 16 + 16 + 16 * 64 + 64);
//! let batch = task.datasets().unwrap().train()?;
//! let (loss, _grad) = task.value_and_grad(&params, Key::new(1), &batch);
//! assert!(loss > 0.0 && loss < 1.0);
//! # Ok::<(), lopt::Error>(())
//! ```

use nalgebra::{DMatrix, DVector};

use crate::datasets::{fashion_mnist_datasets, Datasets, ImageBatch};
use crate::params::Rebind;
use crate::prelude::{task, Params};
use crate::tasks::image_mlp::init_weight;
use crate::{Error, Key, Real, Result, Task};

/// Parameters of an autoencoder with three hidden layers: `F → h1 → h2 → h3 → F`.
#[derive(Params, Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Ae4<S: Real> {
    /// `[F, h1]`.
    pub w1: DMatrix<S>,
    /// `[h1]`.
    pub b1: DVector<S>,
    /// `[h1, h2]`.
    pub w2: DMatrix<S>,
    /// `[h2]`.
    pub b2: DVector<S>,
    /// `[h2, h3]`.
    pub w3: DMatrix<S>,
    /// `[h3]`.
    pub b3: DVector<S>,
    /// `[h3, F]`.
    pub w4: DMatrix<S>,
    /// `[F]`.
    pub b4: DVector<S>,
}

/// The reconstruction of `x` by `p` in `f32`: `sigmoid` of the MLP's output.
pub fn reconstruct(p: &Ae4<f32>, x: &DMatrix<f32>) -> DMatrix<f32> {
    let layer = |x: &DMatrix<f32>, w: &DMatrix<f32>, b: &DVector<f32>, relu: bool| {
        let mut y = x * w;
        for (mut col, &bj) in y.column_iter_mut().zip(b.iter()) {
            for v in col.iter_mut() {
                *v += bj;
                if relu && *v < 0.0 {
                    *v = 0.0;
                }
            }
        }
        y
    };
    let h = layer(x, &p.w1, &p.b1, true);
    let h = layer(&h, &p.w2, &p.b2, true);
    let h = layer(&h, &p.w3, &p.b3, true);
    layer(&h, &p.w4, &p.b4, false).map(|v| 1.0 / (1.0 + (-v).exp()))
}

/// A fully connected autoencoder with three hidden layers of ReLU (the JAX library's
/// `_fc_ae_loss_fn`); see the [module docs](self).
#[derive(Debug, Clone)]
pub struct ImageMlpAeTask {
    datasets: Datasets<ImageBatch>,
    features: usize,
    hidden: [usize; 3],
    name: String,
}

impl ImageMlpAeTask {
    /// An autoencoder of `features` inputs (`H·W·C`) with `hidden` widths on `datasets`.
    ///
    /// Errors: [`Error::InvalidArgument`] for a zero size.
    pub fn new(
        datasets: Datasets<ImageBatch>,
        features: usize,
        hidden: [usize; 3],
    ) -> Result<Self> {
        if features == 0 || hidden.contains(&0) {
            return Err(Error::InvalidArgument(format!(
                "ImageMlpAeTask needs positive sizes; got features {features}, hidden {hidden:?}"
            )));
        }
        Ok(ImageMlpAeTask {
            datasets,
            features,
            hidden,
            name: format!("ImageMLPAE_{}x{}x{}", hidden[0], hidden[1], hidden[2]),
        })
    }

    /// The same task under another name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Features per example (`F`).
    pub fn features(&self) -> usize {
        self.features
    }
}

#[task]
impl Task for ImageMlpAeTask {
    type Params<S: Real> = Ae4<S>;
    type Batch = ImageBatch;

    /// Haiku's `Linear` init, layer `i` from `key.fold_in(i)`, drawn in `f32`.
    fn init<S: Real>(&self, key: Key) -> Ae4<S> {
        let [h1, h2, h3] = self.hidden;
        let f = self.features;
        Ae4 {
            w1: init_weight(key.fold_in(0), f, h1, 1.0),
            b1: DVector::zeros(h1),
            w2: init_weight(key.fold_in(1), h1, h2, 1.0),
            b2: DVector::zeros(h2),
            w3: init_weight(key.fold_in(2), h2, h3, 1.0),
            b3: DVector::zeros(h3),
            w4: init_weight(key.fold_in(3), h3, f, 1.0),
            b4: DVector::zeros(f),
        }
        .cast::<S>()
    }

    fn loss<S: Real>(&self, params: &Ae4<S>, _key: S::Key, batch: &ImageBatch) -> S {
        let h1 = relu(batch.image * params.w1 + params.b1);
        let h2 = relu(h1 * params.w2 + params.b2);
        let h3 = relu(h2 * params.w3 + params.b3);
        let logits = h3 * params.w4 + params.b4;
        let err = batch.image - sigmoid(logits);
        mean(square(err))
    }

    /// `clip(L, 0, 1)`; NaN stays NaN.
    fn normalizer<S: Real>(&self, loss: S) -> S {
        S::from_lanes(|i| {
            let l = loss.lane(i);
            if l.is_nan() {
                l
            } else {
                l.clamp(0.0, 1.0)
            }
        })
    }

    fn datasets(&self) -> Option<Datasets<ImageBatch>> {
        Some(self.datasets.clone())
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}

/// `ImageMLPAE_FashionMnist_128x32x128_bs128`: Fashion-MNIST 28×28 (784 features in
/// `[0, 1]`), batch 128, 784 → 128 → 32 → 128 → 784 (209,968 parameters).
///
/// Errors: [`Error::DatasetMissing`] (with instructions) when Fashion-MNIST is not
/// installed.
#[allow(non_snake_case)]
pub fn ImageMLPAE_FashionMnist_128x32x128_bs128() -> Result<ImageMlpAeTask> {
    let ds = fashion_mnist_datasets(128, (28, 28), None)?;
    Ok(ImageMlpAeTask::new(ds, 784, [128, 32, 128])?
        .with_name("ImageMLPAE_FashionMnist_128x32x128_bs128"))
}
