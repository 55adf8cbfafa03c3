//! Learning-rate schedules: optax's (`constant_schedule`, `linear_schedule`,
//! `cosine_decay_schedule`, `warmup_cosine_decay_schedule`, `exponential_decay`) and the
//! JAX library's (`CosineLearningRateSchedule`, used by `OptList`, and `ExponentialDecay`).
//!
//! A schedule maps the update count `step` (0 for the first update, as optax's
//! `scale_by_schedule` counts) and, for the library's cosine schedule, the planned number
//! of steps to a learning rate. Values are computed in `f64` (optax computes in `f32`;
//! the two agree to about one `f32` ulp, checked in `tests/optimizers_reference.rs`),
//! except where the library compares `f32` step counts, which is done in `f32` as there.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A learning-rate schedule. Build one with the `try_*` constructors, which refuse
/// non-finite or negative values (a schedule built field by field is not checked).
///
/// ```
/// use lopt_runtime::optimizers::Schedule;
///
/// let s = Schedule::try_warmup_cosine_decay(0.0, 0.1, 10, 50, 0.01).unwrap();
/// assert_eq!(s.value(0, None), 0.0);
/// assert!((s.value(10, None) - 0.1).abs() < 1e-12);
/// assert!((s.value(50, None) - 0.01).abs() < 1e-12);
/// assert!(Schedule::try_constant(f64::NAN).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Schedule {
    /// `optax.constant_schedule(value)`.
    Constant(f64),
    /// `optax.polynomial_schedule` (power 1 is `optax.linear_schedule`): with
    /// `c = clip(step − transition_begin, 0, transition_steps)`,
    /// `(init − end)·(1 − c/transition_steps)^power + end`; constant `init` when
    /// `transition_steps = 0`.
    Polynomial {
        /// Value before the transition.
        init_value: f64,
        /// Value after it.
        end_value: f64,
        /// Exponent (1 for linear).
        power: f64,
        /// Length of the transition.
        transition_steps: usize,
        /// Step at which it starts.
        transition_begin: usize,
    },
    /// `optax.cosine_decay_schedule`: with `c = min(step, decay_steps)`,
    /// `init·((1 − α)·(½(1 + cos(π c/decay_steps)))^exponent + α)`.
    CosineDecay {
        /// Initial value.
        init_value: f64,
        /// Steps over which to decay (positive).
        decay_steps: usize,
        /// Final value as a fraction of `init_value`.
        alpha: f64,
        /// Exponent of the cosine factor (optax default 1).
        exponent: f64,
    },
    /// `optax.warmup_cosine_decay_schedule`: linear from `init_value` to `peak_value` over
    /// `warmup_steps`, then cosine decay to `end_value` at `decay_steps` (which counts the
    /// warmup), i.e. `join_schedules` of a linear and a cosine-decay schedule.
    WarmupCosineDecay {
        /// Value at step 0.
        init_value: f64,
        /// Value at the end of the warmup.
        peak_value: f64,
        /// Length of the warmup.
        warmup_steps: usize,
        /// Total length of warmup and decay (greater than `warmup_steps`).
        decay_steps: usize,
        /// Final value.
        end_value: f64,
        /// Exponent of the cosine factor (optax default 1).
        exponent: f64,
    },
    /// `optax.exponential_decay`: with `d = step − transition_begin`,
    /// `init` for `d ≤ 0`, else `init·rate^(d/transition_steps)` (the exponent floored when
    /// `staircase`), then bounded by `end_value` (below when `rate < 1`, above otherwise).
    ExponentialDecay {
        /// Initial value.
        init_value: f64,
        /// Steps per factor of `decay_rate`; constant `init_value` when 0.
        transition_steps: usize,
        /// Factor per `transition_steps`; constant `init_value` when 0.
        decay_rate: f64,
        /// Step at which decay starts.
        transition_begin: usize,
        /// Decay in whole factors.
        staircase: bool,
        /// Bound on the value, if any.
        end_value: Option<f64>,
    },
    /// The JAX library's `CosineLearningRateSchedule(learning_rate,
    /// min_learning_rate_mult, constant_fraction, warmup_fraction)` (`OptList`'s schedule):
    /// linear warmup from 0 over `max(warmup_fraction, constant_fraction)·max_steps` steps,
    /// constant `learning_rate` to `constant_fraction·max_steps`, then half a cosine
    /// period down to `min_learning_rate_mult·learning_rate` at `max_steps`. It needs the
    /// planned number of steps (`num_steps` of [`Optimizer::init`](super::Optimizer::init)).
    LibraryCosine {
        /// Peak learning rate.
        learning_rate: f64,
        /// Final value as a fraction of `learning_rate`.
        min_learning_rate_mult: f64,
        /// Fraction of the steps before the decay starts (includes the warmup).
        constant_fraction: f64,
        /// Fraction of the steps of warmup (none when 0).
        warmup_fraction: f64,
    },
    /// The JAX library's `ExponentialDecay(base_lr, decay_amount)`:
    /// `base_lr·(1 − decay_amount)^step`.
    LibraryExponential {
        /// Value at step 0.
        base_lr: f64,
        /// Fraction lost per step.
        decay_amount: f64,
    },
}

fn check(what: &str, x: f64) -> Result<()> {
    if x.is_finite() && x >= 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{what} must be finite and non-negative, got {x}"
        )))
    }
}

impl Schedule {
    /// [`Schedule::Constant`]; `Err` unless `value` is finite and ≥ 0.
    pub fn try_constant(value: f64) -> Result<Self> {
        check("constant schedule value", value)?;
        Ok(Schedule::Constant(value))
    }

    /// `optax.linear_schedule` ([`Schedule::Polynomial`] with power 1); `Err` unless both
    /// values are finite and ≥ 0.
    pub fn try_linear(
        init_value: f64,
        end_value: f64,
        transition_steps: usize,
        transition_begin: usize,
    ) -> Result<Self> {
        check("linear schedule init_value", init_value)?;
        check("linear schedule end_value", end_value)?;
        Ok(Schedule::Polynomial {
            init_value,
            end_value,
            power: 1.0,
            transition_steps,
            transition_begin,
        })
    }

    /// `optax.cosine_decay_schedule`; `Err` unless `init_value ≥ 0`, `alpha ≥ 0`,
    /// `exponent ≥ 0` are finite and `decay_steps > 0` (optax raises too).
    pub fn try_cosine_decay(
        init_value: f64,
        decay_steps: usize,
        alpha: f64,
        exponent: f64,
    ) -> Result<Self> {
        check("cosine schedule init_value", init_value)?;
        check("cosine schedule alpha", alpha)?;
        check("cosine schedule exponent", exponent)?;
        if decay_steps == 0 {
            return Err(Error::InvalidArgument(
                "cosine schedule decay_steps must be positive".into(),
            ));
        }
        Ok(Schedule::CosineDecay {
            init_value,
            decay_steps,
            alpha,
            exponent,
        })
    }

    /// `optax.warmup_cosine_decay_schedule` with exponent 1; `Err` unless the values are
    /// finite and ≥ 0 and `decay_steps > warmup_steps`.
    pub fn try_warmup_cosine_decay(
        init_value: f64,
        peak_value: f64,
        warmup_steps: usize,
        decay_steps: usize,
        end_value: f64,
    ) -> Result<Self> {
        check("warmup-cosine init_value", init_value)?;
        check("warmup-cosine peak_value", peak_value)?;
        check("warmup-cosine end_value", end_value)?;
        if decay_steps <= warmup_steps {
            return Err(Error::InvalidArgument(format!(
                "warmup-cosine decay_steps ({decay_steps}) must exceed warmup_steps ({warmup_steps})"
            )));
        }
        Ok(Schedule::WarmupCosineDecay {
            init_value,
            peak_value,
            warmup_steps,
            decay_steps,
            end_value,
            exponent: 1.0,
        })
    }

    /// `optax.exponential_decay`; `Err` unless the values are finite and ≥ 0.
    pub fn try_exponential_decay(
        init_value: f64,
        transition_steps: usize,
        decay_rate: f64,
        transition_begin: usize,
        staircase: bool,
        end_value: Option<f64>,
    ) -> Result<Self> {
        check("exponential schedule init_value", init_value)?;
        check("exponential schedule decay_rate", decay_rate)?;
        if let Some(e) = end_value {
            check("exponential schedule end_value", e)?;
        }
        Ok(Schedule::ExponentialDecay {
            init_value,
            transition_steps,
            decay_rate,
            transition_begin,
            staircase,
            end_value,
        })
    }

    /// The library's `CosineLearningRateSchedule`; `Err` unless `learning_rate` and
    /// `min_learning_rate_mult` are finite and ≥ 0 and both fractions lie in `[0, 1]`.
    pub fn try_library_cosine(
        learning_rate: f64,
        min_learning_rate_mult: f64,
        constant_fraction: f64,
        warmup_fraction: f64,
    ) -> Result<Self> {
        check("learning_rate", learning_rate)?;
        check("min_learning_rate_mult", min_learning_rate_mult)?;
        for (w, f) in [
            ("constant_fraction", constant_fraction),
            ("warmup_fraction", warmup_fraction),
        ] {
            if !(0.0..=1.0).contains(&f) {
                return Err(Error::InvalidArgument(format!(
                    "{w} must lie in [0, 1], got {f}"
                )));
            }
        }
        Ok(Schedule::LibraryCosine {
            learning_rate,
            min_learning_rate_mult,
            constant_fraction,
            warmup_fraction,
        })
    }

    /// Whether [`Schedule::value`] needs `max_steps`.
    pub fn needs_max_steps(&self) -> bool {
        matches!(self, Schedule::LibraryCosine { .. })
    }

    /// The value at update count `step` (0 first). `max_steps` is used only by
    /// [`Schedule::LibraryCosine`], which reads a missing one as `step` itself (use
    /// [`Schedule::needs_max_steps`] to require it; the optimizers here do).
    pub fn value(&self, step: usize, max_steps: Option<usize>) -> f64 {
        let t = step as f64;
        match *self {
            Schedule::Constant(v) => v,
            Schedule::Polynomial {
                init_value,
                end_value,
                power,
                transition_steps,
                transition_begin,
            } => {
                if transition_steps == 0 {
                    return init_value;
                }
                let c = step.saturating_sub(transition_begin).min(transition_steps) as f64;
                let frac = 1.0 - c / transition_steps as f64;
                (init_value - end_value) * frac.powf(power) + end_value
            }
            Schedule::CosineDecay {
                init_value,
                decay_steps,
                alpha,
                exponent,
            } => cosine(init_value, decay_steps, alpha, exponent, t),
            Schedule::WarmupCosineDecay {
                init_value,
                peak_value,
                warmup_steps,
                decay_steps,
                end_value,
                exponent,
            } => {
                if step < warmup_steps {
                    // linear_schedule(init, peak, warmup_steps); warmup_steps > 0 here.
                    let frac = 1.0 - t / warmup_steps as f64;
                    (init_value - peak_value) * frac + peak_value
                } else {
                    let alpha = if peak_value == 0.0 {
                        0.0
                    } else {
                        end_value / peak_value
                    };
                    let s = (step - warmup_steps) as f64;
                    cosine(peak_value, decay_steps - warmup_steps, alpha, exponent, s)
                }
            }
            Schedule::ExponentialDecay {
                init_value,
                transition_steps,
                decay_rate,
                transition_begin,
                staircase,
                end_value,
            } => {
                if transition_steps == 0 || decay_rate == 0.0 {
                    return init_value;
                }
                let d = t - transition_begin as f64;
                let v = if d <= 0.0 {
                    init_value
                } else {
                    let mut p = d / transition_steps as f64;
                    if staircase {
                        p = p.floor();
                    }
                    init_value * decay_rate.powf(p)
                };
                match end_value {
                    Some(e) if decay_rate < 1.0 => v.max(e),
                    Some(e) => v.min(e),
                    None => v,
                }
            }
            Schedule::LibraryCosine {
                learning_rate,
                min_learning_rate_mult,
                constant_fraction,
                warmup_fraction,
            } => library_cosine(
                learning_rate,
                min_learning_rate_mult,
                constant_fraction,
                warmup_fraction,
                step,
                max_steps.unwrap_or(step),
            ),
            Schedule::LibraryExponential {
                base_lr,
                decay_amount,
            } => base_lr * (1.0 - decay_amount).powf(t),
        }
    }
}

fn cosine(init_value: f64, decay_steps: usize, alpha: f64, exponent: f64, t: f64) -> f64 {
    let d = decay_steps as f64;
    let c = t.min(d);
    let decay = 0.5 * (1.0 + (std::f64::consts::PI * c / d).cos());
    init_value * ((1.0 - alpha) * decay.powf(exponent) + alpha)
}

/// The library's cosine schedule. Step counts and the warmup test are in `f32` as in the
/// library (so a warmup boundary falls where it falls there); the value is in `f64`.
fn library_cosine(
    lr: f64,
    min_mult: f64,
    constant_fraction: f64,
    warmup_fraction: f64,
    step: usize,
    max_steps: usize,
) -> f64 {
    let total = max_steps as f32;
    let step = (step as f32).min(total);
    let constant_steps = total * constant_fraction as f32;
    let x = step.max(constant_steps);
    let min_lr = min_mult * lr;
    let (is_warmup, warmup_lr) = if warmup_fraction > 0.0 {
        let warmup_steps = total * warmup_fraction.max(constant_fraction) as f32;
        let is = if warmup_steps > step { 1.0 } else { 0.0 };
        (is, (step as f64 / warmup_steps as f64) * lr)
    } else {
        (0.0, lr)
    };
    let s = (x - constant_steps) as f64;
    let span = (total - constant_steps) as f64;
    // With no decay phase (`constant_fraction = 1`) the library computes cos(0/0) = NaN;
    // here the phase is empty and the value stays at `lr`.
    let angle = if span > 0.0 {
        s * std::f64::consts::PI / span
    } else {
        0.0
    };
    let decay = (lr - min_lr) * (angle.cos() / 2.0 + 0.5) + min_lr;
    decay * (1.0 - is_warmup) + is_warmup * warmup_lr
}
