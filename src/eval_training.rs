//! Training curves (the JAX library's `eval_training`): train a task with an optimizer
//! and record the training loss at every step and evaluation losses on several splits.
//!
//! - [`single_task_training_curves`] follows the library's function step for step: the
//!   loop runs `i = 0..=num_steps` (so `num_steps + 1` updates); when
//!   `i % eval_every == 0` it first evaluates on `train`, `outer_valid` and `test`
//!   (`eval_batches` batches each, `last_eval_batches` when `i == num_steps`, a fresh key
//!   per batch), recording the mean loss, the mean of the task's normalizer of each
//!   batch's loss, and the mean of every [`Aux`] metric; then it takes one training step
//!   on the next `train` batch and records that step's loss (before the update).
//! - [`multi_task_training_curves`] trains many instances of a family batched across
//!   SIMD lanes (see [`multi`]).
//!
//! Results are plain data ([`TrainingCurves`]) that save as CSV or JSON and plot to PNG
//! ([`plot`]).
//!
//! ```
//! use lopt::eval_training::{single_task_training_curves, CurvesConfig};
//! use lopt::prelude::*;
//! use lopt::tasks::image_mlp::image_mlp_digits8;
//!
//! let task = image_mlp_digits8(32, 16)?;
//! let cfg = CurvesConfig { eval_every: 5, eval_batches: 2, last_eval_batches: 3 };
//! let curves = single_task_training_curves(&task, &Adam::new(1e-2), 10, Key::new(0), &cfg)?;
//! assert_eq!(curves.train_xs, (0..=10).collect::<Vec<_>>());
//! assert_eq!(curves.eval_xs, vec![0, 5, 10]);
//! assert_eq!(curves.eval["test"].loss.len(), 3);
//! let back = lopt::eval_training::TrainingCurves::from_csv(&curves.to_csv())?;
//! assert_eq!(back, curves);
//! # Ok::<(), lopt::Error>(())
//! ```

use std::any::Any;
use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::datasets::{Datasets, Split};
use crate::{Error, Key, Optimizer, Result, Task};

pub mod multi;
pub mod plot;

pub use multi::{
    multi_task_training_curves, sample_instances, LaneOptimizer, MultiSplitCurves, MultiTaskConfig,
    MultiTaskCurves,
};

/// The splits evaluated by [`single_task_training_curves`], in order (the library's
/// `["train", "outer_valid", "test"]`; `inner_valid` is not evaluated).
pub const EVAL_SPLITS: [Split; 3] = [Split::Train, Split::OuterValid, Split::Test];

/// Extra metrics of a task's parameters on a batch (the JAX library's `aux`), averaged
/// over evaluation batches like the loss, e.g. an image classifier's accuracy.
pub trait Aux<P, B>: Sync {
    /// The metric names, in the order [`Aux::eval`] returns them. `loss` and
    /// `loss_normalized` are taken.
    fn names(&self) -> Vec<String>;
    /// The metrics of `params` on `batch`.
    fn eval(&self, params: &P, batch: &B) -> Vec<f64>;
}

/// No extra metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAux;

impl<P, B> Aux<P, B> for NoAux {
    fn names(&self) -> Vec<String> {
        Vec::new()
    }
    fn eval(&self, _params: &P, _batch: &B) -> Vec<f64> {
        Vec::new()
    }
}

/// How often and on how much data [`single_task_training_curves`] evaluates; the
/// defaults are the library's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurvesConfig {
    /// Evaluate when the step is a multiple of this (default 10).
    pub eval_every: usize,
    /// Batches per split and evaluation (default 5).
    pub eval_batches: usize,
    /// Batches per split at the last step (default 20).
    pub last_eval_batches: usize,
}

impl Default for CurvesConfig {
    fn default() -> Self {
        CurvesConfig {
            eval_every: 10,
            eval_batches: 5,
            last_eval_batches: 20,
        }
    }
}

impl CurvesConfig {
    fn check(&self) -> Result<()> {
        if self.eval_every == 0 || self.eval_batches == 0 || self.last_eval_batches == 0 {
            return Err(Error::InvalidArgument(format!(
                "eval_every, eval_batches and last_eval_batches must be positive: {self:?}"
            )));
        }
        Ok(())
    }
}

/// The evaluation series of one split.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SplitCurves {
    /// Mean loss at each evaluation step (`eval/<split>/loss`).
    #[serde(with = "floats")]
    pub loss: Vec<f64>,
    /// Mean normalized loss (`eval/<split>/loss_normalized`).
    #[serde(with = "floats")]
    pub loss_normalized: Vec<f64>,
    /// Mean of each [`Aux`] metric (`eval/<split>/<name>`).
    #[serde(with = "float_map")]
    pub aux: BTreeMap<String, Vec<f64>>,
}

/// What [`single_task_training_curves`] returns: the JAX library's dictionary as fields.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TrainingCurves {
    /// The task's name.
    pub task: String,
    /// The optimizer's name.
    pub optimizer: String,
    /// Steps at which the training loss was recorded (`train/xs`: 0..=num_steps).
    pub train_xs: Vec<usize>,
    /// Training loss of each step, before its update (`train/loss`).
    #[serde(with = "floats")]
    pub train_loss: Vec<f64>,
    /// Evaluation steps (`eval/xs`).
    pub eval_xs: Vec<usize>,
    /// Evaluation series by split name (`train`, `outer_valid`, `test`).
    pub eval: BTreeMap<String, SplitCurves>,
    /// Batches per evaluation (`eval/eval_batches`).
    pub eval_batches: usize,
    /// Batches at the last evaluation (`eval/last_eval_batches`).
    pub last_eval_batches: usize,
}

/// A batch for a task without datasets: `()` when that is its batch type.
fn unit_batch<B: 'static>() -> Option<B> {
    let unit: Box<dyn Any> = Box::new(());
    unit.downcast::<B>().ok().map(|b| *b)
}

/// The next batch of `split`, or `()` for a task without data.
pub(crate) fn next_batch<B: 'static>(
    datasets: &Option<Datasets<B>>,
    split: Split,
    owner: &dyn Fn() -> String,
) -> Result<B> {
    match datasets {
        Some(ds) => ds.next(split),
        None => unit_batch().ok_or_else(|| Error::NoDatasets(owner())),
    }
}

/// Trains `task` with `opt` for `num_steps + 1` steps from `key` and records training
/// and evaluation curves (the JAX library's `single_task_training_curves`; see the
/// [module docs](self) for the exact schedule). Training runs in `f32`.
///
/// Keys, as in the library: `(key, k) = key.split()` initializes; then each evaluation
/// of a split takes `(key, k) = key.split()` and batch `j` of it uses `k.fold_in(j)`;
/// each training step takes `(key, k) = key.split()` for the loss and
/// `(key, _) = key.split()` for the (key-less) update.
///
/// Errors: [`Error::NonFinite`] when a training loss is NaN or infinite (with its step);
/// [`Error::NoDatasets`] for a task without datasets whose batch type is not `()`;
/// [`Error::InvalidArgument`] for a zero in `config`; data errors from the datasets.
pub fn single_task_training_curves<T, O>(
    task: &T,
    opt: &O,
    num_steps: usize,
    key: Key,
    config: &CurvesConfig,
) -> Result<TrainingCurves>
where
    T: Task,
    O: Optimizer<T::Params<f32>>,
{
    single_task_training_curves_with_aux(task, opt, num_steps, key, config, &NoAux)
}

/// [`single_task_training_curves`] that also evaluates the metrics of `aux` (for
/// example [`Accuracy`](crate::tasks::image_mlp::Accuracy)) on every evaluation batch.
pub fn single_task_training_curves_with_aux<T, O, A>(
    task: &T,
    opt: &O,
    num_steps: usize,
    key: Key,
    config: &CurvesConfig,
    aux: &A,
) -> Result<TrainingCurves>
where
    T: Task,
    O: Optimizer<T::Params<f32>>,
    A: Aux<T::Params<f32>, T::Batch> + ?Sized,
{
    config.check()?;
    let aux_names = aux.names();
    if let Some(bad) = aux_names
        .iter()
        .find(|n| *n == "loss" || *n == "loss_normalized")
    {
        return Err(Error::InvalidArgument(format!(
            "aux metric name `{bad}` is taken"
        )));
    }
    let datasets = task.datasets();
    let owner = || task.name();
    // The library initializes with the key it goes on splitting; a separate child is
    // cleaner and no less faithful (bit parity with JAX's Threefry is out of reach).
    let (mut key, k_init) = key.split();
    let mut state = opt.init(task.init::<f32>(k_init), Some(num_steps));

    let mut curves = TrainingCurves {
        task: task.name(),
        optimizer: opt.name(),
        eval_batches: config.eval_batches,
        last_eval_batches: config.last_eval_batches,
        ..TrainingCurves::default()
    };
    for split in EVAL_SPLITS {
        curves.eval.insert(
            split.name().to_string(),
            SplitCurves {
                aux: aux_names.iter().map(|n| (n.clone(), Vec::new())).collect(),
                ..SplitCurves::default()
            },
        );
    }

    for i in 0..=num_steps {
        if i % config.eval_every == 0 {
            let n = if i == num_steps {
                config.last_eval_batches
            } else {
                config.eval_batches
            };
            for split in EVAL_SPLITS {
                let (next, k_eval) = key.split();
                key = next;
                let params = opt.get_params(&state);
                let (mut loss, mut norm) = (0.0f64, 0.0f64);
                let mut aux_sum = vec![0.0f64; aux_names.len()];
                for j in 0..n {
                    let batch = next_batch(&datasets, split, &owner)?;
                    let l = task.loss(params, k_eval.fold_in(j as u64), &batch);
                    loss += f64::from(l);
                    norm += f64::from(task.normalizer(l));
                    for (s, v) in aux_sum.iter_mut().zip(aux.eval(params, &batch)) {
                        *s += v;
                    }
                }
                let sc = curves
                    .eval
                    .get_mut(split.name())
                    .expect("every split was inserted");
                sc.loss.push(loss / n as f64);
                sc.loss_normalized.push(norm / n as f64);
                for (name, s) in aux_names.iter().zip(&aux_sum) {
                    sc.aux
                        .get_mut(name)
                        .expect("every name was inserted")
                        .push(s / n as f64);
                }
            }
            curves.eval_xs.push(i);
        }
        let batch = next_batch(&datasets, Split::Train, &owner)?;
        let (next, k_loss) = key.split();
        let (l, grad) = task.value_and_grad(opt.get_params(&state), k_loss, &batch);
        if !l.is_finite() {
            return Err(Error::NonFinite {
                what: format!("training loss of {} ({l})", task.name()),
                step: i,
            });
        }
        // The library splits once more for the optimizer's key; built-in optimizers
        // take none, but the key stream stays the library's.
        key = next.split().0;
        opt.update(&mut state, &grad, l);
        curves.train_xs.push(i);
        curves.train_loss.push(f64::from(l));
    }
    Ok(curves)
}

impl TrainingCurves {
    /// Every series under the JAX library's key (`train/loss`, `eval/test/loss`,
    /// `eval/test/loss_normalized`, `eval/test/accuracy`, ...) with its steps.
    pub fn series(&self) -> Vec<(String, &[usize], &[f64])> {
        let mut out: Vec<(String, &[usize], &[f64])> =
            vec![("train/loss".into(), &self.train_xs, &self.train_loss)];
        for (split, sc) in &self.eval {
            out.push((format!("eval/{split}/loss"), &self.eval_xs, &sc.loss));
            out.push((
                format!("eval/{split}/loss_normalized"),
                &self.eval_xs,
                &sc.loss_normalized,
            ));
            for (name, v) in &sc.aux {
                out.push((format!("eval/{split}/{name}"), &self.eval_xs, v));
            }
        }
        out
    }

    /// The series under `key` (see [`TrainingCurves::series`]).
    pub fn get(&self, key: &str) -> Option<&[f64]> {
        self.series()
            .into_iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, _, v)| v)
    }

    /// The curves as CSV: `# name=value` lines for the task, optimizer and batch counts,
    /// then `series,step,value` rows in long format, one per recorded value (values in
    /// Rust's shortest round-trip notation; non-finite ones as `NaN`, `inf`, `-inf`).
    pub fn to_csv(&self) -> String {
        let one_line = |s: &str| s.replace(['\n', '\r'], " ");
        let mut out = String::new();
        out.push_str(&format!("# task={}\n", one_line(&self.task)));
        out.push_str(&format!("# optimizer={}\n", one_line(&self.optimizer)));
        out.push_str(&format!("# eval_batches={}\n", self.eval_batches));
        out.push_str(&format!("# last_eval_batches={}\n", self.last_eval_batches));
        out.push_str("series,step,value\n");
        for (key, xs, vs) in self.series() {
            for (x, v) in xs.iter().zip(vs) {
                out.push_str(&format!("{key},{x},{v}\n"));
            }
        }
        out
    }

    /// Reads what [`TrainingCurves::to_csv`] wrote.
    ///
    /// Errors: [`Error::Data`] for a malformed line, or evaluation series whose steps
    /// disagree.
    pub fn from_csv(text: &str) -> Result<TrainingCurves> {
        let bad = |line: usize, what: &str| Error::Data(format!("curves CSV line {line}: {what}"));
        let mut c = TrainingCurves::default();
        let mut eval_steps: Option<Vec<usize>> = None;
        // Steps of the eval series being read, keyed by series.
        let mut steps_of: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut header = false;
        for (n, line) in text.lines().enumerate().map(|(n, l)| (n + 1, l)) {
            if let Some(meta) = line.strip_prefix("# ") {
                let (k, v) = meta
                    .split_once('=')
                    .ok_or_else(|| bad(n, "expected `# name=value`"))?;
                let count = || v.parse::<usize>().map_err(|_| bad(n, "expected a count"));
                match k {
                    "task" => c.task = v.to_string(),
                    "optimizer" => c.optimizer = v.to_string(),
                    "eval_batches" => c.eval_batches = count()?,
                    "last_eval_batches" => c.last_eval_batches = count()?,
                    _ => return Err(bad(n, "unknown metadata")),
                }
                continue;
            }
            if !header {
                if line != "series,step,value" {
                    return Err(bad(n, "expected the header `series,step,value`"));
                }
                header = true;
                continue;
            }
            let mut f = line.split(',');
            let (key, step, value) = match (f.next(), f.next(), f.next(), f.next()) {
                (Some(k), Some(s), Some(v), None) => (k, s, v),
                _ => return Err(bad(n, "expected three fields")),
            };
            let step: usize = step.parse().map_err(|_| bad(n, "bad step"))?;
            let value: f64 = value.parse().map_err(|_| bad(n, "bad value"))?;
            if key == "train/loss" {
                c.train_xs.push(step);
                c.train_loss.push(value);
                continue;
            }
            let rest = key
                .strip_prefix("eval/")
                .ok_or_else(|| bad(n, "unknown series"))?;
            let (split, name) = rest
                .split_once('/')
                .ok_or_else(|| bad(n, "expected eval/<split>/<name>"))?;
            let sc = c.eval.entry(split.to_string()).or_default();
            let v = match name {
                "loss" => &mut sc.loss,
                "loss_normalized" => &mut sc.loss_normalized,
                other => sc.aux.entry(other.to_string()).or_default(),
            };
            v.push(value);
            steps_of.entry(key.to_string()).or_default().push(step);
        }
        if !header {
            return Err(Error::Data("curves CSV: no header".into()));
        }
        for (key, steps) in steps_of {
            match &eval_steps {
                None => eval_steps = Some(steps),
                Some(s) if *s == steps => {}
                Some(_) => {
                    return Err(Error::Data(format!(
                        "curves CSV: series {key} has other steps than the other eval series"
                    )))
                }
            }
        }
        c.eval_xs = eval_steps.unwrap_or_default();
        Ok(c)
    }

    /// The curves as pretty JSON (non-finite values as the strings `NaN`, `inf`, `-inf`,
    /// so they survive the round trip).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::Data(format!("curves JSON: {e}")))
    }

    /// Reads what [`TrainingCurves::to_json`] wrote.
    pub fn from_json(text: &str) -> Result<TrainingCurves> {
        serde_json::from_str(text).map_err(|e| Error::Data(format!("curves JSON: {e}")))
    }

    /// Writes [`TrainingCurves::to_csv`] to `path` (creating parent directories).
    pub fn write_csv(&self, path: impl AsRef<Path>) -> Result<()> {
        write_file(path.as_ref(), &self.to_csv())
    }

    /// Reads a file written by [`TrainingCurves::write_csv`].
    pub fn read_csv(path: impl AsRef<Path>) -> Result<TrainingCurves> {
        TrainingCurves::from_csv(&read_file(path.as_ref())?)
    }

    /// Writes [`TrainingCurves::to_json`] to `path` (creating parent directories).
    pub fn write_json(&self, path: impl AsRef<Path>) -> Result<()> {
        write_file(path.as_ref(), &self.to_json()?)
    }

    /// Reads a file written by [`TrainingCurves::write_json`].
    pub fn read_json(path: impl AsRef<Path>) -> Result<TrainingCurves> {
        TrainingCurves::from_json(&read_file(path.as_ref())?)
    }

    /// Draws the curves to a PNG at `path`: losses (training, and evaluation per split)
    /// on the left, each [`Aux`] metric per split on the right. See [`plot`].
    pub fn plot_png(&self, path: impl AsRef<Path>) -> Result<()> {
        let f = |v: &[usize]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
        let mut losses = vec![plot::Line::new(
            "train/loss",
            f(&self.train_xs),
            self.train_loss.clone(),
        )];
        let mut metrics: BTreeMap<&str, Vec<plot::Line>> = BTreeMap::new();
        for (split, sc) in &self.eval {
            losses.push(plot::Line::new(
                format!("eval/{split}/loss"),
                f(&self.eval_xs),
                sc.loss.clone(),
            ));
            for (name, v) in &sc.aux {
                metrics.entry(name).or_default().push(plot::Line::new(
                    format!("eval/{split}/{name}"),
                    f(&self.eval_xs),
                    v.clone(),
                ));
            }
        }
        let mut panels = vec![plot::Panel::new(
            format!("{} — {}", self.task, self.optimizer),
            "loss",
            losses,
        )];
        for (name, lines) in metrics {
            panels.push(plot::Panel::new(name.to_string(), name, lines));
        }
        plot::plot_png(path.as_ref(), &panels)
    }
}

pub(crate) fn write_file(path: &Path, text: &str) -> Result<()> {
    let io = |e: std::io::Error| Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::write(path, text).map_err(io)
}

fn read_file(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Serde for `Vec<f64>` that keeps non-finite values: JSON has no NaN or infinity, so
/// they are written as strings (`"NaN"`, `"inf"`, `"-inf"`); `null` reads as NaN.
pub(crate) mod floats {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Float {
        Num(f64),
        Text(String),
    }

    fn to_float(x: f64) -> Float {
        if x.is_finite() {
            Float::Num(x)
        } else {
            Float::Text(x.to_string())
        }
    }

    fn from_float<E: serde::de::Error>(f: Option<Float>) -> Result<f64, E> {
        match f {
            None => Ok(f64::NAN),
            Some(Float::Num(x)) => Ok(x),
            Some(Float::Text(t)) => t
                .parse()
                .map_err(|_| E::custom(format!("`{t}` is not a number"))),
        }
    }

    pub fn serialize<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|&x| to_float(x)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        Vec::<Option<Float>>::deserialize(d)?
            .into_iter()
            .map(from_float::<D::Error>)
            .collect()
    }

    /// Nested vectors (`[instance][step]`).
    pub mod nested {
        use super::*;

        pub fn serialize<S: Serializer>(v: &[Vec<f64>], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(
                v.iter()
                    .map(|row| row.iter().map(|&x| to_float(x)).collect::<Vec<_>>()),
            )
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<f64>>, D::Error> {
            Vec::<Vec<Option<Float>>>::deserialize(d)?
                .into_iter()
                .map(|row| row.into_iter().map(from_float::<D::Error>).collect())
                .collect()
        }
    }
}

/// [`floats`] for the values of a map.
pub(crate) mod float_map {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Values(#[serde(with = "super::floats")] Vec<f64>);

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<String, Vec<f64>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(m.iter().map(|(k, v)| (k, Values(v.clone()))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Vec<f64>>, D::Error> {
        Ok(BTreeMap::<String, Values>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect())
    }
}
