//! NAdamW and `OptList`, as the JAX library's `optimizers/nadamw.py` and `opt_list.py`.

use serde::{Deserialize, Serialize};

use super::adamw::{moments_init, nonneg, pow_t, validate_betas_eps, AdamWState};
use super::{assert_leaf_lengths, Optimizer, Schedule};
use crate::error::{Error, Result};
use crate::params::Params;
use crate::scalar::Real;

/// Nesterov Adam with AdamW-style weight decay, exactly the JAX library's `NAdamW`
/// (<https://arxiv.org/abs/2002.11887>). With `t` the update count from 1 and `lr` the
/// schedule's value at `t − 1` (given the `num_steps` passed to `init`):
///
/// ```text
/// g' = g − l2_weight_decay·p          (sic: the library subtracts; see below)
/// m ← β1·m + (1 − β1)·g'
/// v ← β2·v + (1 − β2)·g'²
/// lr_t = lr·√(1 − β2ᵗ) / (1 − β1ᵗ)
/// step = lr_t·(β1·m + (1 − β1)·g') / (√v + eps)     (Nesterov; plain: lr_t·m / (√v + eps))
/// p ← p − step − lr_t·adamw_weight_decay·p
/// ```
///
/// Two things are as the library has them although they may surprise: the L2 term is
/// *subtracted* from the gradient (`grad = grad - param * l2_weight_decay`), so a positive
/// `l2_weight_decay` pushes weights away from 0 (every `OptList` entry has it 0); and the
/// decoupled decay is scaled by the bias-corrected `lr_t`, not by `lr`. Bias correction is
/// always on (the library forces it). Defaults: `lr = 1e-4, β1 = 0.9, β2 = 0.999,
/// eps = 1e-8`, no decay, Nesterov on. The loss is ignored.
///
/// ```
/// use lopt_runtime::optimizers::{NAdamW, Schedule};
/// use lopt_runtime::Optimizer;
///
/// let opt = NAdamW::opt_list(0).unwrap();
/// let mut s = opt.try_init(vec![1.0f32, -1.0], Some(100)).unwrap();
/// opt.update(&mut s, &vec![0.1, -0.1], 0.0);
/// // OptList schedules need the planned number of steps.
/// assert!(opt.try_init(vec![1.0f32], None).is_err());
/// assert!(NAdamW::opt_list(10).is_err());
/// assert!(NAdamW::try_new(Schedule::Constant(f64::INFINITY)).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NAdamW {
    /// Learning rate schedule.
    pub lr: Schedule,
    /// `β1` (default 0.9).
    pub beta1: f64,
    /// `β2` (default 0.999).
    pub beta2: f64,
    /// `eps`, outside the square root (default 1e-8).
    pub epsilon: f64,
    /// Decoupled weight decay, scaled by `lr_t` (default 0).
    pub adamw_weight_decay: f64,
    /// L2 term, subtracted from the gradient as in the library (default 0).
    pub l2_weight_decay: f64,
    /// Nesterov momentum (default true).
    pub use_nesterov: bool,
}

/// One entry of the JAX library's `opt_list.json`: NAdamW hyperparameters and a
/// [`Schedule::LibraryCosine`], sorted so that trying entries 0, 1, 2, … in order is a good
/// hyperparameter search (<https://arxiv.org/abs/2002.11887>).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OptListEntry {
    /// Peak learning rate.
    pub learning_rate: f64,
    /// `β1`.
    pub beta1: f64,
    /// `β2`.
    pub beta2: f64,
    /// `eps`.
    pub epsilon: f64,
    /// Nesterov momentum.
    pub use_nesterov: bool,
    /// Decoupled weight decay.
    pub adamw_weight_decay: f64,
    /// L2 weight decay.
    pub l2_weight_decay: f64,
    /// Warmup fraction of the schedule.
    pub warmup_fraction: f64,
    /// Final learning rate as a fraction of the peak.
    pub min_learning_rate_mult: f64,
    /// Fraction of training before the cosine decay.
    pub constant_fraction: f64,
}

/// The first ten entries of the JAX library's `optimizers/data/opt_list.json` (commit
/// 32186aa; the file has 1000). The library's docs: sweeping indices `[0, 10)` captures
/// most of the potential improvement. Checked against the file by
/// `tests/optimizers_reference.rs`; for later entries build an [`OptListEntry`] and call
/// [`NAdamW::from_opt_list_entry`].
pub const OPT_LIST_HEAD: [OptListEntry; 10] = [
    OptListEntry {
        learning_rate: 0.0011948335721160095,
        beta1: 0.9360043452616368,
        beta2: 0.9989497406214962,
        epsilon: 5.875814422073298e-06,
        use_nesterov: false,
        adamw_weight_decay: 0.010141964334059882,
        l2_weight_decay: 0.0,
        warmup_fraction: 0.0,
        min_learning_rate_mult: 0.0,
        constant_fraction: 0.747304046223346,
    },
    OptListEntry {
        learning_rate: 0.4060109803507517,
        beta1: 0.9972408031165986,
        beta2: 0.9868027286692506,
        epsilon: 107.85861559302559,
        use_nesterov: true,
        adamw_weight_decay: 0.015620239959742821,
        l2_weight_decay: 0.0,
        warmup_fraction: 2.289161370180122e-05,
        min_learning_rate_mult: 0.0,
        constant_fraction: 0.3241485833861578,
    },
    OptListEntry {
        learning_rate: 0.0002118527403995637,
        beta1: 0.6229650835415205,
        beta2: 0.9727800493920264,
        epsilon: 1.5402357939162808e-07,
        use_nesterov: false,
        adamw_weight_decay: 0.05360756231092083,
        l2_weight_decay: 0.0,
        warmup_fraction: 1.139506043021826e-05,
        min_learning_rate_mult: 0.0013864545078620433,
        constant_fraction: 0.2099310299628817,
    },
    OptListEntry {
        learning_rate: 0.007531482507067026,
        beta1: 0.6919155876981923,
        beta2: 0.984342979679972,
        epsilon: 3.592713026359696e-08,
        use_nesterov: false,
        adamw_weight_decay: 0.0003059674479201108,
        l2_weight_decay: 0.0,
        warmup_fraction: 0.0,
        min_learning_rate_mult: 0.0009554387155165385,
        constant_fraction: 0.4224892293642567,
    },
    OptListEntry {
        learning_rate: 0.05569700266024712,
        beta1: 0.9742164724896906,
        beta2: 0.999980948972404,
        epsilon: 4.2139276965284695,
        use_nesterov: false,
        adamw_weight_decay: 0.00022331133037191596,
        l2_weight_decay: 0.0,
        warmup_fraction: 0.0,
        min_learning_rate_mult: 0.0,
        constant_fraction: 0.5209910283942752,
    },
    OptListEntry {
        learning_rate: 0.006954992428540949,
        beta1: 0.9941177962325759,
        beta2: 0.9930455329766189,
        epsilon: 4.3517153884397565e-07,
        use_nesterov: false,
        adamw_weight_decay: 3.142332648519505e-05,
        l2_weight_decay: 0.0,
        warmup_fraction: 0.0,
        min_learning_rate_mult: 0.0,
        constant_fraction: 0.013619134087588858,
    },
    OptListEntry {
        learning_rate: 0.020526066283142113,
        beta1: 0.3573051949320971,
        beta2: 0.8604303237563932,
        epsilon: 8.87354819497349e-05,
        use_nesterov: true,
        adamw_weight_decay: 0.07217167553538734,
        l2_weight_decay: 0.0,
        warmup_fraction: 0.0,
        min_learning_rate_mult: 1.566669185534864e-05,
        constant_fraction: 0.8851679138723282,
    },
    OptListEntry {
        learning_rate: 0.0005950867356750683,
        beta1: 0.8912956998774763,
        beta2: 0.9998316947284045,
        epsilon: 1.4834761018841103e-07,
        use_nesterov: true,
        adamw_weight_decay: 0.04087020908564961,
        l2_weight_decay: 0.0,
        warmup_fraction: 0.008212683099401206,
        min_learning_rate_mult: 0.0,
        constant_fraction: 0.37760078274486286,
    },
    OptListEntry {
        learning_rate: 0.005328687277638261,
        beta1: 0.960474459618098,
        beta2: 0.9992247804716405,
        epsilon: 8.665059017026017e-08,
        use_nesterov: true,
        adamw_weight_decay: 0.005563237041504353,
        l2_weight_decay: 0.0,
        warmup_fraction: 0.0,
        min_learning_rate_mult: 0.0,
        constant_fraction: 0.17233141309625333,
    },
    OptListEntry {
        learning_rate: 0.0012415879131444274,
        beta1: 0.9466569269853439,
        beta2: 0.9406663837522827,
        epsilon: 8.113630827139477e-08,
        use_nesterov: false,
        adamw_weight_decay: 7.25772958596056e-05,
        l2_weight_decay: 0.0,
        warmup_fraction: 0.0,
        min_learning_rate_mult: 0.0010075665692423708,
        constant_fraction: 0.47695142196433893,
    },
];

impl Default for NAdamW {
    fn default() -> Self {
        NAdamW {
            lr: Schedule::Constant(1e-4),
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            adamw_weight_decay: 0.0,
            l2_weight_decay: 0.0,
            use_nesterov: true,
        }
    }
}

/// `x` rounded to `f32`, as the library's `jnp.asarray(x)[idx]` reads opt_list values.
fn f32r(x: f64) -> f64 {
    x as f32 as f64
}

impl NAdamW {
    /// NAdamW on schedule `lr` with the library's other defaults; `Err` as
    /// [`NAdamW::validate`].
    pub fn try_new(lr: Schedule) -> Result<Self> {
        let opt = NAdamW {
            lr,
            ..Self::default()
        };
        opt.validate()?;
        Ok(opt)
    }

    /// `Ok` when `β1, β2 ∈ [0, 1)`, `epsilon` and both decays are finite and ≥ 0, and
    /// the schedule's first value is finite and ≥ 0.
    pub fn validate(&self) -> Result<()> {
        validate_betas_eps("NAdamW", self.beta1, self.beta2, self.epsilon)?;
        nonneg("NAdamW adamw_weight_decay", self.adamw_weight_decay)?;
        nonneg("NAdamW l2_weight_decay", self.l2_weight_decay)?;
        nonneg("NAdamW learning rate", self.lr.value(0, Some(1)))
    }

    /// The library's `OptList(idx)` for `idx < 10` ([`OPT_LIST_HEAD`]); `Err` otherwise.
    /// Its schedule needs `num_steps` at init (use [`NAdamW::try_init`]).
    pub fn opt_list(idx: usize) -> Result<Self> {
        let e = OPT_LIST_HEAD.get(idx).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "opt_list index {idx}: lopt carries the first {} entries",
                OPT_LIST_HEAD.len()
            ))
        })?;
        Self::from_opt_list_entry(e)
    }

    /// NAdamW with an `opt_list.json` entry's hyperparameters, each rounded to `f32` as
    /// the library reads them; `Err` on invalid values.
    pub fn from_opt_list_entry(e: &OptListEntry) -> Result<Self> {
        let lr = Schedule::try_library_cosine(
            f32r(e.learning_rate),
            f32r(e.min_learning_rate_mult),
            f32r(e.constant_fraction),
            f32r(e.warmup_fraction),
        )?;
        let opt = NAdamW {
            lr,
            beta1: f32r(e.beta1),
            beta2: f32r(e.beta2),
            epsilon: f32r(e.epsilon),
            adamw_weight_decay: f32r(e.adamw_weight_decay),
            l2_weight_decay: f32r(e.l2_weight_decay),
            use_nesterov: e.use_nesterov,
        };
        opt.validate()?;
        Ok(opt)
    }

    /// [`Optimizer::init`], but `Err` when the schedule needs the planned number of steps
    /// ([`Schedule::needs_max_steps`]) and `num_steps` is `None` (the library fails
    /// then too). `init` itself falls back as [`Schedule::value`] describes.
    pub fn try_init<P: Params>(
        &self,
        params: P,
        num_steps: Option<usize>,
    ) -> Result<AdamWState<P>> {
        if self.lr.needs_max_steps() && num_steps.is_none() {
            return Err(Error::InvalidArgument(
                "NAdamW: this learning-rate schedule needs num_steps at init".into(),
            ));
        }
        Ok(moments_init(params, num_steps))
    }
}

impl<P: Params> Optimizer<P> for NAdamW {
    type State = AdamWState<P>;

    fn init(&self, params: P, num_steps: Option<usize>) -> AdamWState<P> {
        moments_init(params, num_steps)
    }

    fn update(&self, state: &mut AdamWState<P>, grad: &P, _loss: P::Scalar) {
        assert_leaf_lengths("NAdamW::update: gradient vs params", &state.params, grad);
        assert_leaf_lengths("NAdamW::update: mu vs params", &state.params, &state.mu);
        assert_leaf_lengths("NAdamW::update: nu vs params", &state.params, &state.nu);
        let c = P::Scalar::from_f64;
        let t = state.iteration + 1;
        let lr = self.lr.value(state.iteration, state.num_steps);
        let lr_t = lr * (1.0 - pow_t(self.beta2, t)).sqrt() / (1.0 - pow_t(self.beta1, t));
        let (b1, omb1) = (c(self.beta1), c(1.0 - self.beta1));
        let (b2, omb2) = (c(self.beta2), c(1.0 - self.beta2));
        let (eps, l2, lr_t_s, wd_step) = (
            c(self.epsilon),
            c(self.l2_weight_decay),
            c(lr_t),
            c(lr_t * self.adamw_weight_decay),
        );
        let nesterov = self.use_nesterov;
        let AdamWState { params, mu, nu, .. } = state;
        for i in 0..grad.num_leaves() {
            let (p, m, v, g) = (
                params.leaf_mut(i),
                mu.leaf_mut(i),
                nu.leaf_mut(i),
                grad.leaf(i),
            );
            for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
                let g = g - *p * l2;
                *m = b1 * *m + omb1 * g;
                *v = b2 * *v + omb2 * (g * g);
                let num = if nesterov { b1 * *m + omb1 * g } else { *m };
                let step = lr_t_s * num / (v.sqrt() + eps) + wd_step * *p;
                *p -= step;
            }
        }
        state.iteration += 1;
    }

    fn get_params<'a>(&self, state: &'a AdamWState<P>) -> &'a P {
        &state.params
    }

    fn set_params(&self, state: &mut AdamWState<P>, params: P) {
        state.params = params;
    }

    fn iteration(&self, state: &AdamWState<P>) -> usize {
        state.iteration
    }

    fn name(&self) -> String {
        "NAdamW".into()
    }
}
