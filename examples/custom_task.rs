//! The seed tutorial's "Defining a custom Task", line for line: a quadratic with noisy
//! targets, parameters 4x2, data from a four-split dataset. Then what `#[task]` adds:
//! the gradient, and 100 Adam steps.
//!
//! Run with `cargo run --release --example custom_task`.

use lopt::prelude::*;

type Target = SMatrix<f32, 4, 2>;

// def noise_datasets():
//   def _fn():
//     while True:
//       yield np.random.normal(size=[4, 2]).astype(dtype=np.float32)
//   return datasets_base.Datasets(
//       train=_fn(), inner_valid=_fn(), outer_valid=_fn(), test=_fn())
//
// numpy's global RNG becomes an explicit key per split; batch i uses key.fold_in(i).
fn noise_datasets() -> Datasets<Target> {
    let stream = |key: Key| {
        (0u64..).map(move |i| {
            let mut m = Target::zeros();
            key.fold_in(i).fill_normal(m.as_mut_slice());
            m
        })
    };
    let k = Key::new(1234).split_n(4);
    Datasets::new(stream(k[0]), stream(k[1]), stream(k[2]), stream(k[3]))
}

// class MyTask(tasks_base.Task):
//   datasets = noise_datasets()
struct MyTask {
    datasets: Datasets<Target>,
}

#[task]
impl Task for MyTask {
    type Params<S: Real> = SMatrix<S, 4, 2>;
    type Batch = Target;

    //   def init(self, key):
    //     return jax.random.normal(key, shape=(4, 2))
    fn init<S: Real>(&self, key: Key) -> SMatrix<S, 4, 2> {
        let mut p = SMatrix::<S, 4, 2>::zeros();
        key.fill_normal(p.as_mut_slice());
        p
    }

    //   def loss(self, params, rng, data):
    //     return jnp.sum(jnp.square(params - data))
    fn loss<S: Real>(&self, params: &SMatrix<S, 4, 2>, _key: S::Key, data: &Target) -> S {
        sum(square(params - data))
    }

    fn datasets(&self) -> Option<Datasets<Target>> {
        Some(self.datasets.clone())
    }
}

/// Errors print as their message (`Display`), not in `Debug` form.
fn main() -> std::process::ExitCode {
    lopt::exit_code(run())
}

fn run() -> lopt::Result<()> {
    // task = MyTask()
    let task = MyTask {
        datasets: noise_datasets(),
    };
    // key = jax.random.PRNGKey(0)
    // key1, key = jax.random.split(key)
    // params = task.init(key)
    let key = Key::new(0);
    let (key1, key) = key.split();
    let params = task.init::<f32>(key);

    // task.loss(params, key1, next(task.datasets.train))
    let ds = task.datasets().expect("MyTask has datasets");
    let batch = ds.train()?;
    let loss = task.loss(&params, key1, &batch);
    println!("loss: {loss}");

    // What #[task] generated: the gradient (reverse mode) of the same loss.
    let (value, grad) = task.value_and_grad(&params, key1, &batch);
    assert_eq!(value, loss);
    println!("gradient (4x2): {}", grad.transpose());

    // 100 Adam steps (the JAX library's Adam defaults), each on a fresh training batch.
    let opt = Adam::default();
    let mut state = opt.init(params, None);
    let mut last = loss;
    for _ in 0..100 {
        let batch = ds.train()?;
        let (l, g) = task.value_and_grad(opt.get_params(&state), key1, &batch);
        opt.update(&mut state, &g, l);
        last = l;
    }
    println!("loss after 100 Adam steps: {last}");
    // The noise has variance 1 per element, so the best expected loss is 8 (4x2 targets).
    println!("(the expected loss at the optimum, params = 0, is 8: one unit of noise per element)");
    Ok(())
}
