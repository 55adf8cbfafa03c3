//! A family whose configuration picks one of two activation functions (the seed's
//! "Limitations of TaskFamily" example). Batched, lanes that pick differently each get
//! their own branch's loss and gradient.

use lopt::key::KeyOps;
use lopt::lanes::LaneKeys;
use lopt::prelude::*;
use lopt::vmap::FamilyLanes;

#[derive(Params, Clone, Debug)]
struct ActCfg<S: Real> {
    /// 1.0: relu, 0.0: tanh.
    act: S,
    target: DVector<S>,
}

#[derive(Params, Clone, Debug)]
struct Net<S: Real> {
    w: DMatrix<S>,
    b: DVector<S>,
}

struct ActivationFamily {
    x: DMatrix<f32>,
}

#[task_family]
impl TaskFamily for ActivationFamily {
    type Cfg<S: Real> = ActCfg<S>;
    type Params<S: Real> = Net<S>;
    type Batch = ();
    fn sample(&self, key: Key) -> ActCfg<f32> {
        let (a, t) = key.split();
        ActCfg {
            act: if a.uniform::<f32>() < 0.5 { 1.0 } else { 0.0 },
            target: DVector::from_vec(t.normal_vec(3)),
        }
    }
    fn init(&self, _cfg: &ActCfg<f32>, key: Key) -> Net<f32> {
        let (kw, kb) = key.split();
        Net {
            w: kw.normal_matrix(4, 3),
            b: DVector::from_vec(kb.normal_vec(3)),
        }
    }
    fn loss<S: Real>(&self, params: &Net<S>, cfg: &ActCfg<S>, _key: S::Key, _batch: &()) -> S {
        let z = self.x * params.w + params.b;
        let h = if cfg.act > 0.5 { relu(z) } else { tanh(z) };
        let mut total = params.b[0] * 0.0;
        for r in 0..h.nrows() {
            for c in 0..h.ncols() {
                total += square(h[(r, c)] - cfg.target[c]);
            }
        }
        total / 10.0
    }
}

#[test]
fn lanes_choosing_different_activations_match_serial() {
    let family = ActivationFamily {
        x: DMatrix::from_fn(5, 4, |i, j| ((i * 4 + j) as f32 * 0.37).sin()),
    };
    let keys = Key::new(9).split_n(8);
    let cfgs: Vec<ActCfg<f32>> = keys.iter().map(|&k| family.sample(k)).collect();
    let acts: Vec<f32> = cfgs.iter().map(|c| c.act).collect();
    assert!(
        acts.contains(&1.0) && acts.contains(&0.0),
        "lanes must disagree: {acts:?}"
    );
    let refs: Vec<&ActCfg<f32>> = cfgs.iter().collect();
    let cfg = family.pack_cfg::<Lanes<8>>(&refs);
    let lane_keys = LaneKeys::<8>::from_lane_keys(&keys);
    let params = family.init_lanes(&cfg, lane_keys);
    let (loss, grad) = family.value_and_grad(&params, &cfg, lane_keys, &());
    let tangent = params.map(|v| v * Lanes::splat(0.5) + Lanes::splat(0.1));
    let (_, jvp) = family.value_and_jvp(&params, &tangent, &cfg, lane_keys, &());
    for (l, cfg_l) in cfgs.iter().enumerate() {
        let p = family.unpack_params(&params, l);
        let t = family.unpack_params(&tangent, l);
        let (ls, gs) = family.value_and_grad(&p, cfg_l, keys[l], &());
        let (_, js) = family.value_and_jvp(&p, &t, cfg_l, keys[l], &());
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * a.abs().max(b.abs()).max(1.0);
        assert!(close(loss.0[l], ls), "loss lane {l}");
        assert!(close(jvp.0[l], js), "jvp lane {l}");
        let gl = family.unpack_params(&grad, l);
        for (a, b) in gl.flatten().iter().zip(gs.flatten()) {
            assert!(close(*a, b), "grad lane {l}: {a} vs {b}");
        }
    }
}

#[test]
fn activation_family_gradients_in_f64() {
    let family = ActivationFamily {
        x: DMatrix::from_fn(5, 4, |i, j| ((i * 4 + j) as f32 * 0.37).sin()),
    };
    for seed in 0..6 {
        let (kc, kp) = Key::new(seed).split();
        let cfg = family.sample(kc);
        let task = family.task_fn(&cfg);
        let p = task.init::<f64>(kp);
        let r = lopt::gradcheck::check_task(&task, &p, kp, &(), &Default::default());
        assert!(r.passed(), "seed {seed} act {}: {r}", cfg.act);
    }
}
