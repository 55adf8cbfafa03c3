//! `cargo bench --bench branching`: what a configuration that selects between two
//! implementations costs when batched. One family picks per instance between two losses
//! with an `if` on a configuration leaf; lanes that agree run one branch, lanes that
//! disagree run both and blend. Compared with the same family without the `if`.
//!
//! Cases (1024 instances × dim 64 × 20 Adam steps, 16-lane groups, per call):
//! - `branch.none`: no `if` (every instance uses the first loss),
//! - `branch.uniform`: the `if`, every instance choosing the first loss,
//! - `branch.other`: the `if`, every instance choosing the second loss,
//! - `branch.mixed`: the `if`, instances choosing at random (lanes disagree).

mod common;

use std::time::Duration;

use common::{keep, median, Case};
use lopt::lanes::LaneKeys;
use lopt::prelude::*;
use lopt::vmap::FamilyLanes;

const DIM: usize = 64;
const STEPS: usize = 20;

#[derive(Params, Clone, Debug)]
struct Cfg<S: Real> {
    /// > 0.5: quadratic loss; else a log-cosh-like smooth loss.
    choice: S,
    target: DVector<S>,
}

struct Choosing {
    branch: bool,
}

#[task_family]
impl TaskFamily for Choosing {
    type Cfg<S: Real> = Cfg<S>;
    type Params<S: Real> = DVector<S>;
    type Batch = ();
    fn sample(&self, key: Key) -> Cfg<f32> {
        let (a, b) = key.split();
        Cfg {
            choice: a.uniform::<f32>(),
            target: DVector::from_vec(b.normal_vec(DIM)),
        }
    }
    fn init(&self, _cfg: &Cfg<f32>, key: Key) -> DVector<f32> {
        DVector::from_vec(key.normal_vec(DIM))
    }
    fn loss<S: Real>(&self, p: &DVector<S>, cfg: &Cfg<S>, _key: S::Key, _b: &()) -> S {
        let d = cfg.target - p;
        if self.branch {
            if cfg.choice > 0.5 {
                sum(square(d))
            } else {
                sum(softplus(d) + softplus(-d))
            }
        } else {
            sum(square(d))
        }
    }
}

type L = Lanes<16>;

fn groups(f: &Choosing, choose: impl Fn(usize) -> f32) -> Vec<(Cfg<L>, DVector<L>)> {
    let keys = Key::new(3).split_n(1024);
    let mut cfgs: Vec<Cfg<f32>> = keys.iter().map(|&k| f.sample(k)).collect();
    for (i, c) in cfgs.iter_mut().enumerate() {
        c.choice = choose(i);
    }
    cfgs.chunks(16)
        .zip(keys.chunks(16))
        .map(|(cs, ks)| {
            let refs: Vec<&Cfg<f32>> = cs.iter().collect();
            let cfg = f.pack_cfg::<L>(&refs);
            let p = f.init_lanes(&cfg, LaneKeys::from_lane_keys(ks));
            (cfg, p)
        })
        .collect()
}

fn train(f: &Choosing, groups: &[(Cfg<L>, DVector<L>)]) -> f32 {
    use rayon::prelude::*;
    let key = LaneKeys::<16>::from_lane_keys(&[Key::new(0)]);
    groups
        .par_iter()
        .map(|(cfg, p)| {
            let opt = Adam::default();
            let mut state = opt.init(p.clone(), None);
            for _ in 0..STEPS {
                let (l, g) = f.value_and_grad(&state.params, cfg, key, &());
                opt.update(&mut state, &g, l);
            }
            f.loss(&state.params, cfg, key, &()).0[0]
        })
        .sum()
}

fn main() {
    let plain = Choosing { branch: false };
    let branchy = Choosing { branch: true };
    let g_none = groups(&plain, |_| 1.0);
    let g_uniform = groups(&branchy, |_| 1.0);
    let g_other = groups(&branchy, |_| 0.0);
    let g_mixed = groups(&branchy, |i| if (i * 7919) % 13 < 6 { 1.0 } else { 0.0 });
    let mut cases = vec![
        Case::new("branch.none", || {
            keep(train(&plain, &g_none));
        }),
        Case::new("branch.uniform", || {
            keep(train(&branchy, &g_uniform));
        }),
        Case::new("branch.other", || {
            keep(train(&branchy, &g_other));
        }),
        Case::new("branch.mixed", || {
            keep(train(&branchy, &g_mixed));
        }),
    ];
    let s = common::run(&mut cases, 9, Duration::from_millis(60));
    let none = median(&s, "branch.none");
    println!(
        "ratio branch.uniform / branch.none = {:.2}",
        median(&s, "branch.uniform") / none
    );
    let (other, mixed) = (median(&s, "branch.other"), median(&s, "branch.mixed"));
    println!("ratio branch.other / branch.none = {:.2}", other / none);
    println!("ratio branch.mixed / branch.none = {:.2}", mixed / none);
    println!(
        "ratio branch.mixed / (branch.uniform + branch.other) = {:.2}  (both branches, plus the blend)",
        mixed / (median(&s, "branch.uniform") + other)
    );
}
