//! The baseline optimizers and schedules against optax and the JAX library, step by step.
//!
//! `tests/reference/baselines.json` is written by `scripts/make_reference_optimizers.py`,
//! which runs optax and the JAX library (versions and commit recorded in the file's
//! `versions` entry: jax 0.10.2, optax 0.2.8, library commit 32186aa) on fixed `f32`
//! gradients for 50 steps. Every step of every trajectory must match within a relative
//! error of 1e-5 (relative to `max(|reference|, 1e-3)`, since parameters cross zero).

use lopt::optimizers::{
    AdamW, GradientAccumulation, NAdamW, OptListEntry, Schedule, WeightDecay, OPT_LIST_HEAD,
};
use lopt::{Adam, Optimizer, Sgd};
use serde_json::Value;

const TOL: f64 = 1e-5;

fn reference() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/reference/baselines.json"
    );
    let text = std::fs::read_to_string(path).expect("tests/reference/baselines.json");
    serde_json::from_str(&text).expect("valid JSON")
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("number `{k}` in {v}"))
}

fn int(v: &Value, k: &str) -> usize {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("integer `{k}` in {v}")) as usize
}

/// The relative error of `got` against `want`, each element scaled by `max(|want|, 1e-3)`.
fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w as f64).abs() / (w as f64).abs().max(1e-3))
        .fold(0.0, f64::max)
}

fn schedule(v: &Value) -> Schedule {
    match v["type"].as_str().expect("type") {
        "constant" => Schedule::try_constant(num(v, "value")).unwrap(),
        "linear" => Schedule::try_linear(
            num(v, "init_value"),
            num(v, "end_value"),
            int(v, "transition_steps"),
            int(v, "transition_begin"),
        )
        .unwrap(),
        "cosine_decay" => Schedule::try_cosine_decay(
            num(v, "init_value"),
            int(v, "decay_steps"),
            num(v, "alpha"),
            num(v, "exponent"),
        )
        .unwrap(),
        "warmup_cosine_decay" => {
            assert_eq!(num(v, "exponent"), 1.0);
            Schedule::try_warmup_cosine_decay(
                num(v, "init_value"),
                num(v, "peak_value"),
                int(v, "warmup_steps"),
                int(v, "decay_steps"),
                num(v, "end_value"),
            )
            .unwrap()
        }
        "exponential_decay" => Schedule::try_exponential_decay(
            num(v, "init_value"),
            int(v, "transition_steps"),
            num(v, "decay_rate"),
            int(v, "transition_begin"),
            v["staircase"].as_bool().unwrap(),
            v["end_value"].as_f64(),
        )
        .unwrap(),
        "library_cosine" => Schedule::try_library_cosine(
            num(v, "learning_rate"),
            num(v, "min_learning_rate_mult"),
            num(v, "constant_fraction"),
            num(v, "warmup_fraction"),
        )
        .unwrap(),
        "library_exponential" => Schedule::LibraryExponential {
            base_lr: num(v, "base_lr"),
            decay_amount: num(v, "decay_amount"),
        },
        t => panic!("unknown schedule {t}"),
    }
}

/// Runs `opt` from the reference's initial params over its gradients and losses and
/// returns the worst relative error over all steps.
fn run<O: Optimizer<Vec<f32>>>(opt: &O, r: &Value, name: &str, traj: &Value) -> f64 {
    let p0 = f32s(&r["params0"]);
    let grads: Vec<Vec<f32>> = r["grads"].as_array().unwrap().iter().map(f32s).collect();
    let losses = f32s(&r["losses"]);
    let want: Vec<Vec<f32>> = traj.as_array().unwrap().iter().map(f32s).collect();
    assert_eq!(want.len(), grads.len());
    assert!(want.len() >= 50, "{name}: a short trajectory");
    let mut state = opt.init(p0, Some(grads.len()));
    let mut worst: f64 = 0.0;
    for (t, ((g, &l), w)) in grads.iter().zip(&losses).zip(&want).enumerate() {
        opt.try_update(&mut state, g, l).unwrap();
        let e = rel_err(opt.get_params(&state), w);
        assert!(
            e <= TOL,
            "{name}: step {t}: relative error {e:.2e} > {TOL:e}\n got {:?}\nwant {w:?}",
            opt.get_params(&state)
        );
        worst = worst.max(e);
    }
    worst
}

fn case<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no case {name}"))
}

/// `optax.adamw`, constant and warmup-cosine learning rates. Catches: weight decay not
/// multiplied by the learning rate, bias corrections off by one step, the schedule read
/// at `t` instead of `t − 1`, `eps_root` ignored.
#[test]
fn adamw_matches_optax() {
    let r = reference();
    for name in ["optax_adamw", "optax_adamw_warmup_cosine"] {
        let c = case(&r, name);
        let cfg = &c["config"];
        let lr = match cfg.get("lr") {
            Some(lr) => Schedule::try_constant(lr.as_f64().unwrap()).unwrap(),
            None => schedule(&cfg["lr_schedule"]),
        };
        let opt = AdamW {
            lr,
            b1: num(cfg, "b1"),
            b2: num(cfg, "b2"),
            eps: num(cfg, "eps"),
            eps_root: num(cfg, "eps_root"),
            weight_decay: num(cfg, "weight_decay"),
        };
        opt.validate().unwrap();
        let e = run(&opt, &r, name, &c["trajectory"]);
        eprintln!("{name}: max relative error {e:.2e}");
    }
}

fn nadamw_from(cfg: &Value) -> NAdamW {
    let lr = match &cfg["learning_rate"] {
        Value::Number(n) => Schedule::try_constant(n.as_f64().unwrap()).unwrap(),
        s => schedule(s),
    };
    let opt = NAdamW {
        lr,
        beta1: num(cfg, "beta1"),
        beta2: num(cfg, "beta2"),
        epsilon: num(cfg, "epsilon"),
        adamw_weight_decay: num(cfg, "adamw_weight_decay"),
        l2_weight_decay: num(cfg, "l2_weight_decay"),
        use_nesterov: cfg["use_nesterov"].as_bool().unwrap(),
    };
    opt.validate().unwrap();
    opt
}

/// The library's NAdamW, Nesterov on and off, with both decays and with its cosine
/// schedule. Catches: the L2 term added instead of subtracted (as the library does), the
/// decoupled decay scaled by `lr` instead of `lr_t`, Nesterov's look-ahead dropped.
#[test]
fn nadamw_matches_library() {
    let r = reference();
    for name in [
        "nadamw_nesterov_True",
        "nadamw_nesterov_False",
        "nadamw_library_cosine",
    ] {
        let c = case(&r, name);
        let e = run(&nadamw_from(&c["config"]), &r, name, &c["trajectory"]);
        eprintln!("{name}: max relative error {e:.2e}");
    }
}

/// `OptList(idx)` for the first entries, and lopt's copy of the list's head against the
/// library's file. Catches: a mistyped table entry, hyperparameters not rounded to `f32`
/// as the library reads them, the schedule not given `num_steps`.
#[test]
fn opt_list_matches_library() {
    let r = reference();
    let head = r["opt_list_head"].as_array().unwrap();
    assert_eq!(head.len(), OPT_LIST_HEAD.len());
    for (mine, theirs) in OPT_LIST_HEAD.iter().zip(head) {
        let theirs: OptListEntry = serde_json::from_value(theirs.clone()).unwrap();
        assert_eq!(*mine, theirs);
    }
    for idx in 0..4 {
        let name = format!("opt_list_{idx}");
        let c = case(&r, &name);
        assert_eq!(int(&c["config"], "num_steps"), 50);
        let opt = NAdamW::opt_list(idx).unwrap();
        let e = run(&opt, &r, &name, &c["trajectory"]);
        eprintln!("{name}: max relative error {e:.2e}");
    }
}

/// Every schedule at steps 0..59 against optax / the library. Catches: the linear
/// schedule's `transition_begin` ignored, the cosine exponent applied outside `(1 − α)`,
/// staircase not floored, `end_value` not bounding, the library's warmup boundary.
#[test]
fn schedules_match_optax_and_library() {
    let r = reference();
    for s in r["schedules"].as_array().unwrap() {
        let cfg = &s["config"];
        let sch = schedule(cfg);
        let max_steps = cfg
            .get("max_steps")
            .and_then(|m| m.as_u64())
            .map(|m| m as usize);
        let want = f32s(&s["values"]);
        assert_eq!(want.len(), 60);
        let got: Vec<f32> = (0..want.len())
            .map(|t| sch.value(t, max_steps) as f32)
            .collect();
        // Absolute floor 1e-3·(scale of the schedule) for values decayed to ~0.
        let e = rel_err(&got, &want);
        assert!(
            e <= TOL,
            "{cfg}: relative error {e:.2e}\n got {got:?}\nwant {want:?}"
        );
        eprintln!("{}: max relative error {e:.2e}", cfg["type"]);
    }
}

/// The library's `WeightDecayWrapper` around its `Adam`. Catches: `2·wd·p` instead of
/// `wd·p`, decay from the parameters after instead of before the step.
#[test]
fn weight_decay_matches_library() {
    let r = reference();
    let c = case(&r, "weight_decay_adam");
    let opt = WeightDecay::try_new(
        Adam::new(num(&c["config"], "lr")),
        num(&c["config"], "weight_decay"),
    )
    .unwrap();
    let e = run(&opt, &r, "weight_decay_adam", &c["trajectory"]);
    eprintln!("weight_decay_adam: max relative error {e:.2e}");
}

/// The library's `GradientAccumulator` and `optax.MultiSteps` around Adam. Catches: the
/// sum passed instead of the mean, the inner step on the wrong call, the accumulator not
/// cleared after an inner step.
#[test]
fn gradient_accumulation_matches_library_and_optax() {
    let r = reference();
    for name in [
        "grad_accum_library_adam",
        "grad_accum_optax_multisteps_adam",
    ] {
        let c = case(&r, name);
        let opt = GradientAccumulation::try_new(
            Adam::new(num(&c["config"], "lr")),
            int(&c["config"], "every"),
        )
        .unwrap();
        let e = run(&opt, &r, name, &c["trajectory"]);
        eprintln!("{name}: max relative error {e:.2e}");
    }
    // Around SGD, where a sum passed for the mean shows (Adam normalizes it away).
    for name in ["grad_accum_library_sgd", "grad_accum_optax_multisteps_sgd"] {
        let c = case(&r, name);
        let opt = GradientAccumulation::try_new(
            Sgd::new(num(&c["config"], "lr")),
            int(&c["config"], "every"),
        )
        .unwrap();
        let e = run(&opt, &r, name, &c["trajectory"]);
        eprintln!("{name}: max relative error {e:.2e}");
    }
}

/// Constructors refuse nonsense with typed errors.
#[test]
fn constructors_refuse_nonsense() {
    use lopt::Error;
    let bad = [f64::NAN, f64::INFINITY, -0.1];
    for x in bad {
        assert!(matches!(
            Schedule::try_constant(x),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            AdamW::try_new(Schedule::Constant(x)),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            NAdamW::try_new(Schedule::Constant(x)),
            Err(Error::InvalidArgument(_))
        ));
        assert!(WeightDecay::try_new(Adam::default(), x).is_err());
        assert!(Schedule::try_linear(0.1, x, 10, 0).is_err());
        assert!(Schedule::try_library_cosine(x, 0.0, 0.5, 0.1).is_err());
    }
    let mut a = AdamW::try_new(Schedule::Constant(0.1)).unwrap();
    a.b1 = 1.0;
    assert!(a.validate().is_err());
    assert!(Schedule::try_cosine_decay(0.1, 0, 0.0, 1.0).is_err());
    assert!(Schedule::try_warmup_cosine_decay(0.0, 0.1, 10, 10, 0.0).is_err());
    assert!(Schedule::try_library_cosine(0.1, 0.0, 1.5, 0.1).is_err());
    assert!(GradientAccumulation::try_new(Adam::default(), 0).is_err());
    assert!(NAdamW::opt_list(OPT_LIST_HEAD.len()).is_err());
    let opt = NAdamW::opt_list(0).unwrap();
    assert!(opt.try_init(vec![0.0f32], None).is_err());
    // A gradient of the wrong shape is an error, not a panic.
    let w = GradientAccumulation::try_new(Adam::default(), 2).unwrap();
    let mut s = w.init(vec![0.0f32; 3], None);
    assert!(w.try_update(&mut s, &vec![0.0; 2], 0.0).is_err());
}
