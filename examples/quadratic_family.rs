//! The seed tutorial's "Meta-training on multiple tasks: TaskFamily" section, line for
//! line: FixedDimQuadraticFamily(10), one sampled task's loss, one trained task, and 32
//! tasks trained batched (the seed's `jax.vmap(train_task)`).
//!
//! Run with `cargo run --release --example quadratic_family`.

use std::time::Instant;

use lopt::prelude::*;
use lopt::vmap::{vmap, VmapFn, Width};

// class FixedDimQuadraticFamily(tasks_base.TaskFamily):
//   """A simple TaskFamily with a fixed dimensionality but sampled target."""
//   def __init__(self, dim: int):
//     self._dim = dim
//     self.datasets = None
struct FixedDimQuadraticFamily {
    dim: usize,
}

#[task_family]
impl TaskFamily for FixedDimQuadraticFamily {
    // TaskParams: the sampled target.
    type Cfg<S: Real> = DVector<S>;
    type Params<S: Real> = DVector<S>;
    type Batch = ();

    //   def sample(self, key: PRNGKey) -> TaskParams:
    //     # Sample the target for the quadratic task.
    //     return jax.random.normal(key, shape=(self._dim,))
    fn sample(&self, key: Key) -> DVector<f32> {
        DVector::from_vec(key.normal_vec(self.dim))
    }

    //       def init(self, key):
    //         return jax.random.normal(key, shape=(dim,))
    fn init<S: Real>(&self, _cfg: &DVector<S>, key: S::Key) -> DVector<S> {
        DVector::from_vec(key.normal_vec(self.dim))
    }

    //       def loss(self, params, rng, _):
    //         # Compute MSE to the target task.
    //         return jnp.sum(jnp.square(task_params - params))
    fn loss<S: Real>(&self, params: &DVector<S>, cfg: &DVector<S>, _key: S::Key, _batch: &()) -> S {
        sum(square(cfg - params))
    }
}

// def train_task(cfg, key):
//   task = task_family.task_fn(cfg)
//   key1, key = jax.random.split(key)
//   params = task.init(key1)
//   opt = opt_base.Adam()
//   opt_state = opt.init(params)
//   for i in range(4):
//     params = opt.get_params(opt_state)
//     loss, grad = jax.value_and_grad(task.loss)(params, key, None)
//     opt_state = opt.update(opt_state, grad, loss=loss)
//   loss = task.loss(params, key, None)
//   return loss
//
// Written once, generic over the scalar: S = f32 is one task, S = Lanes<16> is sixteen.
struct TrainTask;

impl VmapFn<FixedDimQuadraticFamily> for TrainTask {
    fn call<S: Real>(&self, family: &FixedDimQuadraticFamily, cfg: &DVector<S>, keys: S::Key) -> S {
        let (key1, key) = keys.split();
        let mut params = family.init_lanes(cfg, key1);
        let opt = Adam::default();
        let mut opt_state = opt.init(params.clone(), None);
        for _ in 0..4 {
            params = opt.get_params(&opt_state).clone();
            let (loss, grad) = family.value_and_grad(&params, cfg, key, &());
            opt.update(&mut opt_state, &grad, loss);
        }
        family.loss(&params, cfg, key, &())
    }
}

/// Errors print as their message (`Display`), not in `Debug` form.
fn main() -> std::process::ExitCode {
    lopt::exit_code(run())
}

fn run() -> lopt::Result<()> {
    // task_family = FixedDimQuadraticFamily(10)
    // key = jax.random.PRNGKey(0)
    // task_cfg = task_family.sample(key)
    // task = task_family.task_fn(task_cfg)
    let task_family = FixedDimQuadraticFamily { dim: 10 };
    let key = Key::new(0);
    let task_cfg = task_family.sample(key);
    let task = task_family.task_fn(&task_cfg);

    // key1, key = jax.random.split(key)
    // params = task.init(key)
    // batch = None
    // task.loss(params, key, batch)
    let (_key1, key) = key.split();
    let params = task.init::<f32>(key);
    let batch = ();
    println!("{}", task.loss(&params, key, &batch));

    // task_cfg = task_family.sample(key)
    // print("single loss", train_task(task_cfg, key))
    let task_cfg = task_family.sample(key);
    let single = TrainTask.call::<f32>(&task_family, &task_cfg, key);
    println!("single loss {single}");

    // keys = jax.random.split(key, 32)
    // task_cfgs = jax.vmap(task_family.sample)(keys)
    // losses = jax.vmap(train_task)(task_cfgs, keys)
    // print("multiple losses", losses)
    let keys = key.split_n(32);
    let task_cfgs: Vec<_> = keys.iter().map(|&k| task_family.sample(k)).collect();
    let t = Instant::now();
    let losses = vmap(&task_family, &TrainTask, &task_cfgs, &keys, Width::W16)?;
    let first = t.elapsed();
    println!("multiple losses {losses:?}");
    // The first call pays for starting the thread pool and cold caches; then the median
    // of 101 calls.
    let mut times = Vec::with_capacity(101);
    for _ in 0..101 {
        let t = Instant::now();
        std::hint::black_box(vmap(
            &task_family,
            &TrainTask,
            &task_cfgs,
            &keys,
            Width::W16,
        )?);
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    println!(
        "(the batched call took {:.1} us for 32 tasks, 16 per lane group; the first call {:.1} us)",
        times[50] * 1e6,
        first.as_secs_f64() * 1e6
    );

    // Single tasks can always be converted to a task family:
    // task_family = tasks_base.single_task_to_family(single_task)
    // cfg = task_family.sample(key)
    // print("config only contains a dummy value:", cfg)
    // task = task_family.task_fn(cfg)
    // assert task == single_task
    let single_task = FixedDimQuadraticFamily { dim: 10 }
        .task_fn(&task_cfgs[0])
        .cfg()
        .clone();
    let _ = single_task;
    Ok(())
}
