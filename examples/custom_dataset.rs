//! The seed tutorial's "Defining a custom Dataset", line for line.
//!
//! A dataset is four iterators of batches (`train`, `inner_valid`, `outer_valid`, `test`).
//! Creating them must be cheap, so constructors are cached: every task built with the same
//! arguments shares one set of iterators (and so one stream of data).
//!
//! Run with `cargo run --example custom_dataset`.

use lopt::datasets::{cached_datasets, Datasets};
use nalgebra::DMatrix;

/// One batch. Python's `{"data": np.zeros([bs, 5])}` becomes a struct with a `data` field.
#[derive(Debug, Clone)]
struct Batch {
    data: DMatrix<f32>,
}

// def data_iterator():
//   bs = 3
//   while True:
//     batch = {"data": np.zeros([bs, 5])}
//     yield batch
fn data_iterator() -> impl Iterator<Item = Batch> + Send + 'static {
    let bs = 3;
    std::iter::repeat_with(move || Batch {
        data: DMatrix::zeros(bs, 5),
    })
}

// @datasets_base.dataset_lru_cache
// def get_datasets():
//   return datasets_base.Datasets(
//       train=data_iterator(),
//       inner_valid=data_iterator(),
//       outer_valid=data_iterator(),
//       test=data_iterator())
//
// The cache key names the constructor and holds its arguments (here: none).
fn get_datasets() -> Datasets<Batch> {
    cached_datasets("get_datasets", || {
        Datasets::new(
            data_iterator(), // train
            data_iterator(), // inner_valid
            data_iterator(), // outer_valid
            data_iterator(), // test
        )
    })
}

/// Errors print as their message (`Display`), not in `Debug` form.
fn main() -> std::process::ExitCode {
    lopt::exit_code(run())
}

fn run() -> lopt::Result<()> {
    // ds = get_datasets()
    let ds = get_datasets();
    // next(ds.train)
    let batch = ds.train()?;
    // Printed like the seed's output: {'data': array([[0., 0., 0., 0., 0.], ...])}
    let rows: Vec<Vec<f32>> = batch
        .data
        .row_iter()
        .map(|r| r.iter().copied().collect())
        .collect();
    println!("{{'data': {rows:?}}}");
    assert_eq!(batch.data.shape(), (3, 5));

    // The cache hands every caller the same streams, as dataset_lru_cache does.
    assert!(get_datasets().shares_streams_with(&ds));
    Ok(())
}
