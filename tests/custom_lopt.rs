//! A learned optimizer written by a user, in the spirit of the JAX library's tutorial: SGD with a
//! learned log learning rate and a learned momentum, its state a derived parameter tree.

use lopt::learned_optimizers::LearnedOptimizer;
use lopt::outer_trainers::{
    ConstantTruncationSchedule, GradientEstimator, GradientLearner, LOptTruncatedStep,
    SingleMachineGradientLearner, TruncatedPes,
};
use lopt::prelude::*;
use lopt::tasks::quadratics::FixedDimQuadraticFamily;

/// θ = [log lr, logit of the momentum].
struct LearnedMomentum;

/// The inner state: parameters, momentum (both trees of the task's scalar) and the step.
#[derive(Params, Clone, Debug)]
struct MomentumState<P: Params> {
    params: P,
    momentum: P,
    #[params(skip)]
    iteration: usize,
}

impl LearnedOptimizer for LearnedMomentum {
    type Theta<S: Real> = [S; 2];
    type State<P: Params> = MomentumState<P>;

    fn init(&self, _key: Key) -> [f32; 2] {
        [(1e-3f32).ln(), 0.0]
    }
    fn cast_theta<T: Real, S: Real>(&self, t: &[T; 2]) -> [S; 2] {
        [S::from_f64(t[0].lane(0)), S::from_f64(t[1].lane(0))]
    }
    fn init_state<P: Params>(
        &self,
        _t: &[P::Scalar; 2],
        params: P,
        _n: Option<usize>,
    ) -> MomentumState<P> {
        MomentumState {
            momentum: params.zeros_like(),
            params,
            iteration: 0,
        }
    }
    fn update<P: Params>(
        &self,
        t: &[P::Scalar; 2],
        s: &mut MomentumState<P>,
        grad: &P,
        _loss: P::Scalar,
    ) {
        let lr = t[0].exp();
        let mu = P::Scalar::c(1.0) / (P::Scalar::c(1.0) + (-t[1]).exp()); // sigmoid
        s.momentum.map_inplace(|m| m * mu);
        s.momentum.axpy(P::Scalar::c(1.0) - mu, grad);
        s.params.axpy(-lr, &s.momentum);
        s.iteration += 1;
    }
    fn params<'s, P: Params>(&self, s: &'s MomentumState<P>) -> &'s P {
        &s.params
    }
    fn set_params<P: Params>(&self, s: &mut MomentumState<P>, params: P) {
        s.params = params;
    }
    fn iteration<P: Params>(&self, s: &MomentumState<P>) -> usize {
        s.iteration
    }
    fn name(&self) -> String {
        "LearnedMomentum".into()
    }
}

#[test]
fn a_user_learned_optimizer_meta_trains_in_lanes() {
    let family = FixedDimQuadraticFamily { dim: 10 };
    let lopt = LearnedMomentum;
    let step = LOptTruncatedStep::new(
        &family,
        &lopt,
        ConstantTruncationSchedule { total_length: 40 },
        16,
    )
    .unwrap();
    let serial = TruncatedPes::new(step, 10, 0.01).unwrap();
    // Lanes and serial agree on the first estimate.
    let theta = lopt.init(Key::new(0));
    let step8 = LOptTruncatedStep::new(
        &family,
        &lopt,
        ConstantTruncationSchedule { total_length: 40 },
        16,
    )
    .unwrap();
    let lanes = TruncatedPes::new(step8, 10, 0.01)
        .unwrap()
        .batched::<Lanes<8>>();
    let (mut a, mut b) = (
        serial.init_worker_state(&theta, Key::new(1), 0).unwrap(),
        lanes.init_worker_state(&theta, Key::new(1), 0).unwrap(),
    );
    let ga = serial
        .compute_gradient_estimate(&theta, &mut a, Key::new(2), 0)
        .unwrap()
        .grad;
    let gb = lanes
        .compute_gradient_estimate(&theta, &mut b, Key::new(2), 0)
        .unwrap()
        .grad;
    for (x, y) in ga.iter().zip(&gb) {
        assert!((x - y).abs() <= 1e-4 * x.abs().max(1e-3), "{x} vs {y}");
    }
    // Meta-training raises the too-small learning rate.
    let learner = SingleMachineGradientLearner {
        learner: GradientLearner {
            lopt: &lopt,
            theta_opt: Adam::new(0.05),
        },
        estimators: vec![lanes],
    };
    let mut state = learner.init(Key::new(0)).unwrap();
    for k in Key::new(3).split_n(30) {
        learner.update(&mut state, k).unwrap();
    }
    assert!(learner.learner.theta(&state.learner)[0] > theta[0] + 0.5);
}
