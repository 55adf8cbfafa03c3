//! Training many instances of a task family at once, batched across SIMD lanes (the JAX
//! library's `multi_task_training_curves`, with a hand-designed optimizer).
//!
//! Instances of equal shape (equal `#[params(skip)]` fields of their configurations,
//! e.g. a hidden width) are packed into lane groups of [`Width`]: every parameter and
//! optimizer moment of a group is a [`Lanes`] packet, so one pass of the generated loss,
//! gradient and optimizer code advances the whole group. Groups run side by side on the
//! Rayon pool. Each lane computes what its instance computes alone (up to the summation
//! order of matrix products), so results agree with [`Width::Serial`] to f32 rounding.
//!
//! Schedule (the library's): `num_steps` training steps `t = 0..num_steps`; before step
//! `t` when `t % eval_every == 0`, and once more after the last step (at
//! `t = num_steps`, with `last_eval_batches`), every instance is evaluated on each of
//! `splits`. All instances see the same batches: one `train` batch per step and the same
//! evaluation batches (a lane group shares its data, as a vmapped batch would if it were
//! broadcast).
//!
//! Keys of instance `i` with key `k`: `(k_init, rest) = k.split()`,
//! `(k_train, k_eval) = rest.split()`; parameters start at `family.init(cfg, k_init)`;
//! step `t`'s loss gets `k_train.fold_in(t)` and evaluation batch `j` of split `s` at step
//! `t` gets `k_eval.fold_in(t).fold_in(s).fold_in(j)`. The family's loss takes one key,
//! so inside a lane group it receives **lane 0's** key; a family whose loss draws from
//! its key (dropout) should be run [`Width::Serial`] when per-instance randomness matters.

use crate::key::KeyOps;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{next_batch, Aux};
use crate::datasets::Split;
use crate::lane_groups::{map_groups, map_groups_mut, LaneGroups, Width};
use crate::lanes::Lanes;
use crate::task::FamilyLanes;
use crate::{Error, Key, Optimizer, Real, Result, TaskFamily};

/// An optimizer that can step a family's parameters one instance at a time (`f32`) and
/// in lane groups of 8 and 16. Every built-in optimizer is one.
pub trait LaneOptimizer<F: TaskFamily + ?Sized>:
    Optimizer<F::Params<f32>> + Optimizer<F::Params<Lanes<8>>> + Optimizer<F::Params<Lanes<16>>>
{
}

impl<F, O> LaneOptimizer<F> for O
where
    F: TaskFamily + ?Sized,
    O: Optimizer<F::Params<f32>> + Optimizer<F::Params<Lanes<8>>> + Optimizer<F::Params<Lanes<16>>>,
{
}

/// Settings of [`multi_task_training_curves`].
#[derive(Debug, Clone, PartialEq)]
pub struct MultiTaskConfig {
    /// Training steps (default 1000).
    pub num_steps: usize,
    /// Evaluate before every step that is a multiple of this (default 100).
    pub eval_every: usize,
    /// Batches per split and evaluation (default 1, the library's).
    pub eval_batches: usize,
    /// Batches per split at the final evaluation (default 5).
    pub last_eval_batches: usize,
    /// The splits to evaluate (default `[Test]`).
    pub splits: Vec<Split>,
    /// Instances per lane group (default [`Width::W16`]).
    pub width: Width,
}

impl Default for MultiTaskConfig {
    fn default() -> Self {
        MultiTaskConfig {
            num_steps: 1000,
            eval_every: 100,
            eval_batches: 1,
            last_eval_batches: 5,
            splits: vec![Split::Test],
            width: Width::W16,
        }
    }
}

/// The evaluation series of one split, `[instance][evaluation]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MultiSplitCurves {
    /// Mean loss.
    #[serde(with = "super::floats::nested")]
    pub loss: Vec<Vec<f64>>,
    /// Mean normalized loss.
    #[serde(with = "super::floats::nested")]
    pub loss_normalized: Vec<Vec<f64>>,
    /// Mean of each [`Aux`] metric.
    pub aux: BTreeMap<String, Vec<Vec<f64>>>,
}

/// What [`multi_task_training_curves`] returns; every series has a leading instance
/// axis, in the order of the configurations passed in.
#[derive(Debug, Clone)]
pub struct MultiTaskCurves<P> {
    /// The family's name.
    pub family: String,
    /// The optimizer's name.
    pub optimizer: String,
    /// Training steps `0..num_steps`.
    pub train_xs: Vec<usize>,
    /// Training loss of every instance at every step, before the update.
    pub train_loss: Vec<Vec<f32>>,
    /// Evaluation steps (the last is `num_steps`).
    pub eval_xs: Vec<usize>,
    /// Evaluation series by split name.
    pub eval: BTreeMap<String, MultiSplitCurves>,
    /// The first step at which each instance's training loss was NaN or infinite, if
    /// any. Training goes on (the bad values stay in that instance's lanes), as the
    /// library's vectorized training does.
    pub non_finite_at: Vec<Option<usize>>,
    /// Every instance's final parameters.
    pub params: Vec<P>,
}

impl<P> MultiTaskCurves<P> {
    /// Number of instances.
    pub fn len(&self) -> usize {
        self.params.len()
    }

    /// Whether there are no instances.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// The final evaluation of every instance on `split` for `series` (`loss`,
    /// `loss_normalized` or an aux name), or `None` if that was not evaluated.
    pub fn final_eval(&self, split: &str, series: &str) -> Option<Vec<f64>> {
        let sc = self.eval.get(split)?;
        let rows = match series {
            "loss" => &sc.loss,
            "loss_normalized" => &sc.loss_normalized,
            name => sc.aux.get(name)?,
        };
        rows.iter().map(|r| r.last().copied()).collect()
    }
}

/// `n` instances of `family`: instance `i` takes child `i` of `key`, splits it, samples
/// its configuration from the first half and keeps the second as its training key.
pub fn sample_instances<F: TaskFamily>(
    family: &F,
    n: usize,
    key: Key,
) -> (Vec<F::Cfg<f32>>, Vec<Key>) {
    key.split_n(n)
        .into_iter()
        .map(|k| {
            let (k_cfg, k_run) = k.split();
            (family.sample(k_cfg), k_run)
        })
        .unzip()
}

/// Trains instance `i` (configuration `cfgs[i]`, key `keys[i]`) of `family` with `opt`,
/// all instances batched in lane groups, and records their curves (see the
/// [module docs](self) for the schedule and keys). `aux` adds metrics such as
/// [`Accuracy`](crate::tasks::image_mlp::Accuracy); `progress` is called with the number
/// of steps done after every step.
///
/// Errors: [`Error::ShapeMismatch`] when `cfgs` and `keys` differ in length;
/// [`Error::InvalidArgument`] for no instances, a zero `eval_every` or batch count, or an
/// aux name that is taken; [`Error::NoDatasets`] for a family without datasets whose
/// batch type is not `()`; data errors from the datasets.
pub fn multi_task_training_curves<F, O, A>(
    family: &F,
    opt: &O,
    cfgs: &[F::Cfg<f32>],
    keys: &[Key],
    config: &MultiTaskConfig,
    aux: &A,
    progress: &mut dyn FnMut(usize),
) -> Result<MultiTaskCurves<F::Params<f32>>>
where
    F: TaskFamily,
    O: LaneOptimizer<F>,
    A: Aux<F::Params<f32>, F::Batch> + ?Sized,
{
    if cfgs.len() != keys.len() {
        return Err(Error::ShapeMismatch {
            what: "multi_task_training_curves: configurations and keys".into(),
            expected: vec![cfgs.len()],
            got: vec![keys.len()],
        });
    }
    if cfgs.is_empty()
        || config.eval_every == 0
        || config.eval_batches == 0
        || config.last_eval_batches == 0
    {
        return Err(Error::InvalidArgument(format!(
            "multi_task_training_curves needs instances and positive eval_every and batch \
             counts: {} instances, {config:?}",
            cfgs.len()
        )));
    }
    let names = aux.names();
    if let Some(bad) = names
        .iter()
        .find(|n| *n == "loss" || *n == "loss_normalized")
    {
        return Err(Error::InvalidArgument(format!(
            "aux metric name `{bad}` is taken"
        )));
    }
    let run = Run {
        family,
        opt,
        aux,
        aux_names: names,
        config,
    };
    match config.width {
        Width::Serial => run.run::<f32>(cfgs, keys, progress),
        Width::W8 => run.run::<Lanes<8>>(cfgs, keys, progress),
        Width::W16 => run.run::<Lanes<16>>(cfgs, keys, progress),
    }
}

/// One lane group: its instances, packed configuration, keys and optimizer state.
struct Group<C, K, St> {
    idx: Vec<usize>,
    cfg: C,
    /// One key per lane, from each instance's own key.
    train_key: K,
    eval_key: K,
    state: St,
}

/// The lane group of family `F` at scalar `S` trained with optimizer `O`.
type GroupOf<F, S, O> = Group<
    <F as TaskFamily>::Cfg<S>,
    <S as Real>::Key,
    <O as Optimizer<<F as TaskFamily>::Params<S>>>::State,
>;

/// The per-lane sums of one group's evaluation: loss, normalized loss, aux metrics.
type EvalSums = (Vec<f64>, Vec<f64>, Vec<Vec<f64>>);

struct Run<'a, F, O, A: ?Sized> {
    family: &'a F,
    opt: &'a O,
    aux: &'a A,
    aux_names: Vec<String>,
    config: &'a MultiTaskConfig,
}

impl<F, O, A> Run<'_, F, O, A>
where
    F: TaskFamily,
    A: Aux<F::Params<f32>, F::Batch> + ?Sized,
{
    fn run<S: Real>(
        &self,
        cfgs: &[F::Cfg<f32>],
        keys: &[Key],
        progress: &mut dyn FnMut(usize),
    ) -> Result<MultiTaskCurves<F::Params<f32>>>
    where
        O: Optimizer<F::Params<S>>,
    {
        let (family, opt, config) = (self.family, self.opt, self.config);
        let n = cfgs.len();
        let datasets = family.datasets();
        let owner = || family.name();
        let lane_groups = LaneGroups::by_structure(cfgs, S::LANES);
        let mut groups: Vec<GroupOf<F, S, O>> = (0..lane_groups.len())
            .map(|k| {
                let idx = lane_groups.get(k).to_vec();
                let lanes = |l: usize| lane_groups.member(k, l);
                let cfg_refs: Vec<&F::Cfg<f32>> = idx.iter().map(|&i| &cfgs[i]).collect();
                let inits: Vec<F::Params<f32>> = idx
                    .iter()
                    .map(|&i| family.init(&cfgs[i], keys[i].split().0))
                    .collect();
                let refs: Vec<&F::Params<f32>> = inits.iter().collect();
                let lane_keys: Vec<Key> = (0..S::LANES).map(|l| keys[lanes(l)].split().1).collect();
                let (train_key, eval_key) = S::Key::from_lane_keys(&lane_keys).split();
                Group {
                    cfg: family.pack_cfg::<S>(&cfg_refs),
                    state: opt.init(family.pack_params::<S>(&refs), Some(config.num_steps)),
                    train_key,
                    eval_key,
                    idx,
                }
            })
            .collect();

        let mut out = MultiTaskCurves {
            family: family.name(),
            optimizer: Optimizer::<F::Params<S>>::name(opt),
            train_xs: (0..config.num_steps).collect(),
            train_loss: vec![Vec::with_capacity(config.num_steps); n],
            eval_xs: Vec::new(),
            eval: BTreeMap::new(),
            non_finite_at: vec![None; n],
            params: Vec::new(),
        };
        for split in &config.splits {
            out.eval.insert(
                split.name().to_string(),
                MultiSplitCurves {
                    loss: vec![Vec::new(); n],
                    loss_normalized: vec![Vec::new(); n],
                    aux: self
                        .aux_names
                        .iter()
                        .map(|a| (a.clone(), vec![Vec::new(); n]))
                        .collect(),
                },
            );
        }

        for t in 0..config.num_steps {
            if t % config.eval_every == 0 {
                self.evaluate(&groups, t, config.eval_batches, &mut out)?;
            }
            let batch = next_batch(&datasets, Split::Train, &owner)?;
            let losses: Vec<S> = map_groups_mut(&mut groups, |_, g| {
                let key = g.train_key.fold_in(t as u64);
                let (l, grad) =
                    family.value_and_grad(opt.get_params(&g.state), &g.cfg, key, &batch);
                opt.update(&mut g.state, &grad, l);
                l
            });
            for (g, l) in groups.iter().zip(&losses) {
                for (lane, &i) in g.idx.iter().enumerate() {
                    let v = l.lane(lane) as f32;
                    if !v.is_finite() && out.non_finite_at[i].is_none() {
                        out.non_finite_at[i] = Some(t);
                    }
                    out.train_loss[i].push(v);
                }
            }
            progress(t + 1);
        }
        self.evaluate(
            &groups,
            config.num_steps,
            config.last_eval_batches,
            &mut out,
        )?;

        let mut params: Vec<Option<F::Params<f32>>> = vec![None; n];
        for g in &groups {
            let p = opt.get_params(&g.state);
            for (lane, &i) in g.idx.iter().enumerate() {
                params[i] = Some(family.unpack_params(p, lane));
            }
        }
        out.params = params
            .into_iter()
            .map(|p| p.expect("every instance is in a group"))
            .collect();
        Ok(out)
    }

    /// Evaluates every group on `n_batches` fresh batches of each split and appends the
    /// means to `out`.
    fn evaluate<S: Real>(
        &self,
        groups: &[GroupOf<F, S, O>],
        t: usize,
        n_batches: usize,
        out: &mut MultiTaskCurves<F::Params<f32>>,
    ) -> Result<()>
    where
        O: Optimizer<F::Params<S>>,
    {
        let (family, opt) = (self.family, self.opt);
        let datasets = family.datasets();
        let owner = || family.name();
        for (si, split) in self.config.splits.iter().enumerate() {
            let batches = (0..n_batches)
                .map(|_| next_batch(&datasets, *split, &owner))
                .collect::<Result<Vec<_>>>()?;
            let sums: Vec<EvalSums> = map_groups(groups.len(), |k| {
                let g = &groups[k];
                let lanes = g.idx.len();
                let params = opt.get_params(&g.state);
                let unpacked: Vec<F::Params<f32>> = if self.aux_names.is_empty() {
                    Vec::new()
                } else {
                    (0..lanes)
                        .map(|l| family.unpack_params(params, l))
                        .collect()
                };
                let mut loss = vec![0.0; lanes];
                let mut norm = vec![0.0; lanes];
                let mut aux = vec![vec![0.0; self.aux_names.len()]; lanes];
                for (j, b) in batches.iter().enumerate() {
                    let key = g
                        .eval_key
                        .fold_in(t as u64)
                        .fold_in(si as u64)
                        .fold_in(j as u64);
                    let l = family.loss(params, &g.cfg, key, b);
                    let nl = family.normalizer(l);
                    for lane in 0..lanes {
                        // Through f32, as a lone f32 instance would have it.
                        loss[lane] += f64::from(l.lane(lane) as f32);
                        norm[lane] += f64::from(nl.lane(lane) as f32);
                    }
                    for (lane, p) in unpacked.iter().enumerate() {
                        for (s, v) in aux[lane].iter_mut().zip(self.aux.eval(p, b)) {
                            *s += v;
                        }
                    }
                }
                (loss, norm, aux)
            });
            let sc = out
                .eval
                .get_mut(split.name())
                .expect("every split was inserted");
            let k = n_batches as f64;
            for (g, (loss, norm, aux)) in groups.iter().zip(sums) {
                for (lane, &i) in g.idx.iter().enumerate() {
                    sc.loss[i].push(loss[lane] / k);
                    sc.loss_normalized[i].push(norm[lane] / k);
                    for (a, name) in self.aux_names.iter().enumerate() {
                        let series = sc.aux.get_mut(name).expect("every name was inserted");
                        series[i].push(aux[lane][a] / k);
                    }
                }
            }
        }
        out.eval_xs.push(t);
        Ok(())
    }
}
