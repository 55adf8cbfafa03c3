//! Nonsense is refused with a clear message. The README's table of refusals is the
//! specification: this test reads it, runs every row's case and compares the message it
//! gets with the row's (a row ending in `…` gives the message's beginning), and fails on a
//! row without a case or a case without a row. Mutation it catches: any one refusal removed (the
//! case is then accepted, and the test names it).

use std::collections::BTreeMap;

use lopt::learned_optimizers::{LearnedOptimizer, MlpLOpt};
use lopt::outer_trainers::{
    Checkpoint, ConstantTruncationSchedule, GradientLearner, LOptTruncatedStep,
    LogUniformLengthSchedule, SingleMachineGradientLearner, TruncatedPes,
};
use lopt::prelude::*;
use lopt::tasks::quadratics::FixedDimQuadraticFamily;
use lopt::GradientClip;

type Case = fn() -> Option<lopt::Error>;

fn quad() -> &'static FixedDimQuadraticFamily {
    Box::leak(Box::new(FixedDimQuadraticFamily { dim: 3 }))
}

fn lopt() -> &'static MlpLOpt {
    Box::leak(Box::new(MlpLOpt::default()))
}

type QuadPes = TruncatedPes<'static, FixedDimQuadraticFamily, MlpLOpt, ConstantTruncationSchedule>;

fn pes(tasks: usize) -> QuadPes {
    let step = LOptTruncatedStep::new(
        quad(),
        lopt(),
        ConstantTruncationSchedule { total_length: 20 },
        tasks,
    )
    .unwrap();
    TruncatedPes::new(step, 4, 0.01).unwrap()
}

fn learner(
    estimators: Vec<QuadPes>,
) -> SingleMachineGradientLearner<'static, MlpLOpt, Adam, QuadPes> {
    SingleMachineGradientLearner {
        learner: GradientLearner {
            lopt: lopt(),
            theta_opt: Adam::new(1e-3),
        },
        estimators,
    }
}

/// A one-step run's checkpoint.
fn checkpoint(tasks: usize) -> Checkpoint {
    let l = learner(vec![pes(tasks)]);
    let mut s = l.init(Key::new(0)).unwrap();
    l.update(&mut s, Key::new(1)).unwrap();
    l.checkpoint(&s).unwrap()
}

fn cases() -> BTreeMap<&'static str, Case> {
    let mut c: BTreeMap<&'static str, Case> = BTreeMap::new();
    c.insert("adam_nan", || Adam::try_new(f64::NAN).err());
    c.insert("sgd_negative", || Sgd::try_new(-1.0).err());
    c.insert("clip_zero", || {
        GradientClip::try_with_clip(Sgd::default(), 0.0).err()
    });
    c.insert("constant_zero", || {
        let s = ConstantTruncationSchedule { total_length: 0 };
        LOptTruncatedStep::new(quad(), lopt(), s, 4).err()
    });
    c.insert("log_uniform_min_above_max", || {
        let s = LogUniformLengthSchedule {
            min_length: 200,
            max_length: 50,
        };
        LOptTruncatedStep::new(quad(), lopt(), s, 4).err()
    });
    c.insert("pes_zero_truncation", || {
        let s = ConstantTruncationSchedule { total_length: 5 };
        let step = LOptTruncatedStep::new(quad(), lopt(), s, 4).unwrap();
        TruncatedPes::new(step, 0, 0.01).err()
    });
    c.insert("pes_zero_std", || {
        let s = ConstantTruncationSchedule { total_length: 5 };
        let step = LOptTruncatedStep::new(quad(), lopt(), s, 4).unwrap();
        TruncatedPes::new(step, 5, 0.0).err()
    });
    c.insert("no_estimators", || learner(vec![]).init(Key::new(0)).err());
    c.insert("update_transposed", || {
        let opt = Sgd::new(0.1);
        let mut state = opt.init(DMatrix::<f32>::zeros(3, 2), None);
        opt.try_update(&mut state, &DMatrix::zeros(2, 3), 0.0).err()
    });
    c.insert("save_nan_theta", || {
        let l = learner(vec![pes(2)]);
        let mut s = l.init(Key::new(0)).unwrap();
        s.learner.theta_opt_state.params.leaf_mut(1)[3] = f32::NAN;
        l.checkpoint(&s).err()
    });
    c.insert("resume_other_tasks", || {
        learner(vec![pes(4)]).restore(&checkpoint(2)).err()
    });
    c.insert("resume_other_network", || {
        let small: &'static MlpLOpt = Box::leak(Box::new(MlpLOpt {
            hidden_size: 8,
            ..MlpLOpt::default()
        }));
        let step = LOptTruncatedStep::new(
            quad(),
            small,
            ConstantTruncationSchedule { total_length: 20 },
            2,
        )
        .unwrap();
        let l = SingleMachineGradientLearner {
            learner: GradientLearner {
                lopt: small,
                theta_opt: Adam::new(1e-3),
            },
            estimators: vec![TruncatedPes::new(step, 4, 0.01).unwrap()],
        };
        l.restore(&checkpoint(2)).err()
    });
    c.insert("load_truncated", || {
        let b = checkpoint(2).to_bytes().unwrap();
        Checkpoint::from_bytes(&b[..b.len() - 1], "meta.ckpt").err()
    });
    c.insert("load_json", || {
        Checkpoint::from_bytes(br#"{"outer_iteration": 3}"#, "meta.ckpt").err()
    });
    c.insert("load_absurd_iteration", || {
        let mut ck = checkpoint(2);
        ck.remove("outer_iteration");
        ck.put_u64("outer_iteration", vec![1 << 62]).unwrap();
        let ck = Checkpoint::from_bytes(&ck.to_bytes().unwrap(), "meta.ckpt").unwrap();
        learner(vec![pes(2)]).restore(&ck).err()
    });
    c.insert("data_behind", || {
        let ds = Datasets::new(0.., 0.., 0.., 0..);
        ds.train().unwrap();
        ds.advance_to([0; 4]).err()
    });
    c
}

/// The rows of the README's refusals table: (case, message).
fn readme_rows() -> Vec<(String, String)> {
    let readme = include_str!("../README.md");
    let start = readme
        .find("<!-- refusals -->")
        .expect("README has a refusals table");
    let end = readme[start..]
        .find("<!-- /refusals -->")
        .expect("the table ends")
        + start;
    readme[start..end]
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cols: Vec<&str> = l.split(" | ").collect();
            let id = cols[0].trim_start_matches("| `").trim_end_matches('`');
            let msg = cols.last().unwrap().trim_end_matches(" |").trim();
            (id.to_string(), msg.to_string())
        })
        .collect()
}

#[test]
fn every_refusal_in_the_readme_is_what_the_code_says() {
    let cases = cases();
    let rows = readme_rows();
    for (id, msg) in &rows {
        let case = cases
            .get(id.as_str())
            .unwrap_or_else(|| panic!("README row `{id}` has no case"));
        let got = case()
            .unwrap_or_else(|| panic!("`{id}` was accepted"))
            .to_string();
        match msg.strip_suffix('…') {
            Some(prefix) => assert!(got.starts_with(prefix), "`{id}`: got {got:?}"),
            None => assert_eq!(&got, msg, "`{id}`"),
        }
    }
    for id in cases.keys() {
        assert!(
            rows.iter().any(|(r, _)| r == id),
            "case `{id}` is not in the README's table"
        );
    }
}

/// The MlpLOpt's θ leaf that `save_nan_theta` poisons has a name the message can give.
#[test]
fn theta_leaf_names_are_known() {
    let theta = lopt().init(Key::new(0));
    assert!(theta.num_leaves() > 1);
}

/// `update` itself refuses a gradient of another shape with the same number of elements
/// (in every build: the check allocates nothing).
#[test]
#[should_panic(expected = "try_update reports this")]
fn update_panics_on_a_transposed_gradient_in_debug_builds() {
    let opt = Sgd::new(0.1);
    let mut state = opt.init(DMatrix::<f32>::zeros(3, 2), None);
    opt.update(&mut state, &DMatrix::zeros(2, 3), 0.0);
}

/// Prints the table's rows from the code (how the README's table was made):
/// `cargo test --test refusals -- --ignored --nocapture print_refusal_table`.
#[test]
#[ignore = "prints the README's refusals table; run by hand"]
fn print_refusal_table() {
    for (id, case) in cases() {
        let msg = case().map(|e| e.to_string()).unwrap_or_default();
        println!("| `{id}` | {msg} |");
    }
}
