//! `LearnableAdam`: Adam whose four hyperparameters are meta-parameters (the JAX
//! library's `LearnableAdam`).

use crate::key::Key;
use crate::optimizers::adam::AdamStep;
use crate::optimizers::AdamState;
use crate::params::Params;
use crate::scalar::Real;
use num_traits::One;

use super::LearnedOptimizer;

/// Adam with θ = `[log_lr, log(1 − β1), log(1 − β2), log eps]`, mapped to
/// `Adam(e^log_lr, 1 − e^·, 1 − e^·, e^log_eps)` with `eps_root = 1e-8`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LearnableAdam {
    /// The learning rate θ starts from (default 1e-3).
    pub initial_lr: f64,
    /// β1 θ starts from (default 0.9).
    pub initial_beta1: f64,
    /// β2 θ starts from (default 0.999).
    pub initial_beta2: f64,
    /// eps θ starts from (default 1e-8).
    pub initial_epsilon: f64,
}

impl Default for LearnableAdam {
    fn default() -> Self {
        LearnableAdam {
            initial_lr: 1e-3,
            initial_beta1: 0.9,
            initial_beta2: 0.999,
            initial_epsilon: 1e-8,
        }
    }
}

impl LearnedOptimizer for LearnableAdam {
    type Theta<S: Real> = [S; 4];
    type State<P: Params> = AdamState<P>;

    fn init(&self, _key: Key) -> [f32; 4] {
        [
            self.initial_lr.ln() as f32,
            (1.0 - self.initial_beta1).ln() as f32,
            (1.0 - self.initial_beta2).ln() as f32,
            self.initial_epsilon.ln() as f32,
        ]
    }
    fn cast_theta<T: Real, S: Real>(&self, theta: &[T; 4]) -> [S; 4] {
        std::array::from_fn(|i| S::from_f64(theta[i].lane(0)))
    }
    fn init_state<P: Params>(
        &self,
        _theta: &[P::Scalar; 4],
        params: P,
        _n: Option<usize>,
    ) -> AdamState<P> {
        AdamState {
            mu: params.zeros_like(),
            nu: params.zeros_like(),
            params,
            iteration: 0,
        }
    }
    /// optax's Adam with the hyperparameters of θ, lane by lane when θ is a packet.
    fn update<P: Params>(
        &self,
        theta: &[P::Scalar; 4],
        state: &mut AdamState<P>,
        grad: &P,
        _loss: P::Scalar,
    ) {
        crate::optimizers::assert_leaf_lengths(
            "LearnableAdam::update: gradient vs params",
            &state.params,
            grad,
        );
        let one = P::Scalar::one();
        let (b1, b2) = (one - theta[1].exp(), one - theta[2].exp());
        let t = state.iteration as i32 + 1;
        AdamStep {
            b1,
            one_minus_b1: theta[1].exp(),
            b2,
            one_minus_b2: theta[2].exp(),
            step_scale: -theta[0].exp() / (one - b1.powi(t)),
            inv_bc2: one / (one - b2.powi(t)),
            eps: theta[3].exp(),
            eps_root: P::Scalar::from_f64(1e-8),
        }
        .apply(state, grad);
        state.iteration += 1;
    }
    fn params<'s, P: Params>(&self, state: &'s AdamState<P>) -> &'s P {
        &state.params
    }
    fn set_params<P: Params>(&self, state: &mut AdamState<P>, params: P) {
        state.params = params;
    }
    fn iteration<P: Params>(&self, state: &AdamState<P>) -> usize {
        state.iteration
    }
    fn set_iteration<P: Params>(
        &self,
        state: &mut AdamState<P>,
        iteration: usize,
    ) -> crate::error::Result<()> {
        state.iteration = iteration;
        Ok(())
    }
    fn name(&self) -> String {
        "LearnableAdam".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optimizers::{Adam, Optimizer};

    /// θ from the defaults steps exactly as `Adam` with the same hyperparameters (f64).
    #[test]
    fn matches_adam_with_the_same_hyperparameters() {
        let la = LearnableAdam {
            initial_lr: 0.05,
            ..LearnableAdam::default()
        };
        let theta: [f64; 4] = la.cast_theta::<f32, f64>(&la.init(Key::new(0)));
        // f32 θ: compare with Adam at the hyperparameters θ actually holds.
        let adam = Adam {
            lr: theta[0].exp(),
            beta1: 1.0 - theta[1].exp(),
            beta2: 1.0 - theta[2].exp(),
            epsilon: theta[3].exp(),
            epsilon_root: 1e-8,
        };
        let p0: Vec<f64> = Key::new(1).normal_vec(7);
        let opt = la.opt_fn(&theta);
        let (mut a, mut b) = (opt.init(p0.clone(), None), adam.init(p0.clone(), None));
        for t in 0..5 {
            let g: Vec<f64> = Key::new(10 + t).normal_vec(7);
            opt.update(&mut a, &g, 0.0);
            adam.update(&mut b, &g, 0.0);
        }
        for (x, y) in a.params.iter().zip(&b.params) {
            assert!((x - y).abs() < 1e-12 * y.abs().max(1.0), "{x} vs {y}");
        }
        assert!(a.params.iter().zip(&p0).all(|(x, y)| (x - y).abs() > 1e-3));
    }
}
