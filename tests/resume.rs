//! Exact resume: meta-training stopped after `k` outer steps, written to a checkpoint's
//! bytes, read back and continued is the uninterrupted run bit for bit — θ, its Adam
//! moments, every task in training, the PES accumulators, the data streams, the meta-loss
//! history — for PES and FullEs, in SIMD lanes and in `f32` groups, on one and two
//! threads. And every part of the checkpoint matters: a resume with any one section
//! altered ends elsewhere (or is refused).
//!
//! Mutation tried: loading the PES accumulators as zeros fails the exact-resume test.

use lopt::datasets::{digits::load_digits, image_datasets, ImageBatch};
use lopt::learned_optimizers::MlpLOpt;
use lopt::outer_trainers::{
    Checkpoint, ConstantTruncationSchedule, FullEs, GradientEstimator, GradientLearner,
    LOptTruncatedStep, LogUniformLengthSchedule, NeverEndingTruncationSchedule,
    SingleMachineGradientLearner, TruncatedPes,
};
use lopt::prelude::*;
use lopt::tasks::image_mlp::ImageMlpFamily;
use lopt::tasks::quadratics::FixedDimQuadraticFamily;

/// Outer steps of every run, and where the interrupted one stops.
const STEPS: usize = 6;
const STOP: usize = 3;

/// The key of outer step `i` (child `i` of one key: the same whatever the run's length).
fn step_key(i: usize) -> Key {
    Key::new(1).split_n(i + 1)[i]
}

/// An image-MLP family on the embedded digits with streams of its own (not the shared
/// cache), so that two runs in one process read the same batches.
fn digits_family(widths: Vec<usize>) -> ImageMlpFamily {
    let all = load_digits().unwrap();
    let n = all.count;
    let (train, test) = (
        all.slice(0..n - 200).unwrap(),
        all.slice(n - 200..n).unwrap(),
    );
    let ds: Datasets<ImageBatch> = image_datasets(&train, &test, 16, (8, 8), Key::new(3)).unwrap();
    ImageMlpFamily::new(ds, 64, widths, (0.5, 2.0)).unwrap()
}

/// Runs `STEPS` outer steps of `learner` from scratch; with `stop = Some(k)` it stops after
/// `k`, goes through the checkpoint's bytes, resumes with `resumed` (the same setup built
/// anew, fresh data streams included) and finishes. Returns the final checkpoint's bytes.
fn run<E: GradientEstimator<MlpLOpt>>(
    learner: &SingleMachineGradientLearner<'_, MlpLOpt, Adam, E>,
    resumed: Option<(usize, &SingleMachineGradientLearner<'_, MlpLOpt, Adam, E>)>,
    alter: impl Fn(&mut Checkpoint),
) -> lopt::Result<Vec<u8>> {
    let mut state = learner.init(Key::new(0))?;
    let stop = resumed.map_or(STEPS, |(k, _)| k);
    for i in 0..stop {
        learner.update(&mut state, step_key(i))?;
    }
    let Some((_, again)) = resumed else {
        return learner.checkpoint(&state)?.to_bytes();
    };
    let mut ck = Checkpoint::from_bytes(&learner.checkpoint(&state)?.to_bytes()?, "test")?;
    alter(&mut ck);
    let mut state = again.restore(&ck)?;
    for i in stop..STEPS {
        again.update(&mut state, step_key(i))?;
    }
    again.checkpoint(&state)?.to_bytes()
}

fn learner<E: GradientEstimator<MlpLOpt>>(
    lopt: &MlpLOpt,
    e: E,
) -> SingleMachineGradientLearner<'_, MlpLOpt, Adam, E> {
    SingleMachineGradientLearner {
        learner: GradientLearner {
            lopt,
            theta_opt: Adam::new(3e-3),
        },
        estimators: vec![e],
    }
}

/// The quadratic family's PES with runs that end inside the truncations (log-uniform
/// lengths, random offsets), 5 tasks: lanes of 4 leave padding lanes.
fn quad_pes<'a, S: Real>(
    family: &'a FixedDimQuadraticFamily,
    lopt: &'a MlpLOpt,
) -> TruncatedPes<'a, FixedDimQuadraticFamily, MlpLOpt, LogUniformLengthSchedule, S> {
    let schedule = LogUniformLengthSchedule {
        min_length: 4,
        max_length: 12,
    };
    let mut step = LOptTruncatedStep::new(family, lopt, schedule, 5).unwrap();
    step.random_initial_iteration_offset = 6;
    TruncatedPes::new(step, 3, 0.01).unwrap().batched::<S>()
}

/// `MlpLOpt` with a narrow network: the same code paths at a fraction of the cost.
fn small_lopt() -> MlpLOpt {
    MlpLOpt {
        hidden_size: 8,
        ..MlpLOpt::default()
    }
}

fn on_threads<T: Send>(n: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .unwrap()
        .install(f)
}

fn assert_resume_is_exact<E: GradientEstimator<MlpLOpt>>(
    what: &str,
    make: impl Fn() -> SingleMachineGradientLearner<'static, MlpLOpt, Adam, E> + Sync,
) {
    let whole = on_threads(1, || run(&make(), None, |_| {}).unwrap());
    // Stopped early, midway and at the last step; resumed on one thread or two.
    for (stop, threads) in [(1, 2), (STOP, 1), (STEPS - 1, 2)] {
        let resumed = on_threads(threads, || {
            run(&make(), Some((stop, &make())), |_| {}).unwrap()
        });
        assert!(
            whole == resumed,
            "{what}: stopped after {stop} of {STEPS} steps and resumed on {threads} threads, the run differs"
        );
    }
}

fn leak<T>(x: T) -> &'static T {
    Box::leak(Box::new(x))
}

#[test]
fn pes_resumes_bit_for_bit_in_lanes_and_in_f32() {
    let (family, lopt) = (leak(FixedDimQuadraticFamily { dim: 4 }), leak(small_lopt()));
    assert_resume_is_exact("PES, quadratics, Lanes<4>", || {
        learner(lopt, quad_pes::<Lanes<4>>(family, lopt))
    });
    assert_resume_is_exact("PES, quadratics, f32", || {
        learner(lopt, quad_pes::<f32>(family, lopt))
    });
}

/// On data: the image-MLP family (hidden widths of three shapes, so f32 groups whose task
/// changes shape at a restart), whose batches come from streams the checkpoint must put
/// back where they were.
#[test]
fn pes_on_image_data_resumes_bit_for_bit() {
    let lopt = leak(small_lopt());
    assert_resume_is_exact("PES, image MLPs, f32", || {
        let family = leak(digits_family(vec![4, 6, 8]));
        let schedule = ConstantTruncationSchedule { total_length: 5 };
        let step = LOptTruncatedStep::new(family, lopt, schedule, 3).unwrap();
        learner(lopt, TruncatedPes::new(step, 2, 0.01).unwrap())
    });
    assert_resume_is_exact("PES, image MLPs, Lanes<4>", || {
        let family = leak(digits_family(vec![6]));
        let schedule = ConstantTruncationSchedule { total_length: 5 };
        let step = LOptTruncatedStep::new(family, lopt, schedule, 3).unwrap();
        learner(
            lopt,
            TruncatedPes::new(step, 2, 0.01)
                .unwrap()
                .batched::<Lanes<4>>(),
        )
    });
}

#[test]
fn full_es_on_image_data_resumes_bit_for_bit() {
    let lopt = leak(small_lopt());
    let make = || {
        let family = leak(digits_family(vec![6]));
        let step = LOptTruncatedStep::new(family, lopt, NeverEndingTruncationSchedule, 3).unwrap();
        FullEs::new(step, ConstantTruncationSchedule { total_length: 3 }, 0.01).unwrap()
    };
    assert_resume_is_exact("FullEs, image MLPs, f32", || learner(lopt, make()));
    assert_resume_is_exact("FullEs, image MLPs, Lanes<4>", || {
        learner(lopt, make().batched::<Lanes<4>>())
    });
}

/// Each section of the checkpoint, altered alone, changes where the resumed run ends (or
/// is refused): leaving any part of the state out of the checkpoint fails this test, as
/// a resume would then start that part afresh.
///
/// Not checked this way: `non_finite_streak`, which a finite step resets to 0, and the
/// groups' `iteration` counts, which `MlpLOpt`'s update does not read (its time features
/// read each lane's `step` leaf; `LearnableAdam`'s bias correction reads it). Both round
/// trips are compared in the final bytes of the exact-resume tests.
#[test]
fn every_section_of_the_checkpoint_matters() {
    let lopt = leak(small_lopt());
    let make = || {
        let family = leak(digits_family(vec![4, 6]));
        // Runs of 8 to 11 steps end after the resume (at inner step 6), so both what
        // comes before a reset and the reset itself read the restored state.
        let schedule = LogUniformLengthSchedule {
            min_length: 8,
            max_length: 12,
        };
        let step = LOptTruncatedStep::new(family, lopt, schedule, 3).unwrap();
        learner(lopt, TruncatedPes::new(step, 2, 0.01).unwrap())
    };
    let whole = run(&make(), None, |_| {}).unwrap();
    let names: Vec<String> = {
        let l = make();
        let mut s = l.init(Key::new(0)).unwrap();
        l.update(&mut s, step_key(0)).unwrap();
        let ck = l.checkpoint(&s).unwrap();
        ck.section_names().into_iter().map(String::from).collect()
    };
    assert!(names.iter().any(|n| n.ends_with("accumulator")));
    assert!(names.iter().any(|n| n.ends_with("data_positions")));
    let mut refused = 0;
    let skipped = |n: &str| n == "non_finite_streak" || n.ends_with(".iteration");
    for name in names.iter().filter(|n| !skipped(n)) {
        let alter = |ck: &mut Checkpoint| {
            if let Ok(v) = ck.f32s_any(name) {
                // Every value altered: one element alone can change a loss by less than
                // its last bit.
                let v: Vec<f32> = v.iter().map(|x| 0.5 * x + 0.125).collect();
                ck.remove(name);
                ck.put_f32(name, v).unwrap();
            } else {
                let mut v = ck.u64s_any(name).unwrap().to_vec();
                // Counters one up; booleans flipped; keys altered in one bit.
                let i = v.len() / 2;
                v[i] = if name.ends_with(".lanes") && i % 5 == 2 {
                    v[i] ^ 1
                } else {
                    v[i] + 1
                };
                ck.remove(name);
                ck.put_u64(name, v).unwrap();
            }
        };
        match run(&make(), Some((STOP, &make())), alter) {
            Ok(bytes) => assert!(bytes != whole, "altering `{name}` changed nothing"),
            Err(_) => refused += 1,
        }
    }
    // Task keys and configurations that do not match are refused, not resumed.
    assert!(refused >= 1, "nothing was refused");
}
