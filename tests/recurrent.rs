//! Recurrent cells written as `#[task]` losses with slices of differentiated values: an
//! LSTM and a GRU language-model step (gates as column slices of one product
//! `x W + h U + b`, carried through `for t in 0..T`), each checked against the same model
//! written a second time in plain `f64` loops: the generated value equals it, and the
//! generated gradient and JVP agree with its central finite differences (which also
//! checks `⟨grad, t⟩ = jvp(t)`, the adjoint identity of the whole loss). Their `Lanes<8>`
//! runs equal eight separate `f32` runs bit for bit.
//!
//! Mutations tried (each made the named test fail, then was reverted):
//! - `Columns`'s reverse rule placing the cotangent at column 0 instead of at `start`
//!   (`dx.columns_mut(0, len)`): `lstm_matches_its_definition_and_differentiates` and
//!   `gru_matches_its_definition_and_differentiates` fail the gradient check;
//! - `HConcat`'s reverse rule returning the left part for both operands:
//!   `slices_and_concatenations_differentiate` fails.
//!
//! # Tape memory of the LSTM step
//!
//! Reverse mode keeps every value a loop body defines, once per step, until the reverse
//! sweep pops it (see `lopt-macros/src/ad/emit.rs`). For `lstm_loss` with batch `B`,
//! inputs `F`, hidden size `H` and `K` classes, one step keeps, in scalars:
//!
//! | kept per step | scalars |
//! |---|---|
//! | `x_t` converted to `S` | `B·F` |
//! | `x_t W`, `h U`, their sum, `z` (+ `b`) | `4 · B·4H` |
//! | the four gate slices, the four activations | `8 · B·H` |
//! | `h` and `c` read at the step's start (a copy each), `f∘c`, `i∘g`, `c`, `tanh c`, `h` | `7 · B·H` |
//! | the logits, and the softmax gradient the fused cross-entropy keeps in its op | `2 · B·K` |
//!
//! `B·(F + 31H + 2K)` in all, and a few scalars (`c` and `h` read after being set in the
//! same step are the values they were set from, not copies). What a reverse sweep needs at least is
//! `h_{t-1}`, `c_{t-1}`, the four activated gates and `tanh c_t` (`7·B·H`), the softmax
//! (`B·K`) and `x_t` (`B·F`, or nothing when the data is read again): `B·(F + 7H + K)`.
//! At `F = H = 32`, `K = 10` that is `1044·B` against `266·B` scalars, 3.9× the
//! minimum: adds, slices and products keep operands and results their reverse rules never
//! read. `lstm_tape_per_step_is_measured` measures it with a counting allocator: at
//! `B = 8`, 8611 `f32` per step, the table's 8352 plus the tapes' own bookkeeping (the
//! matrix headers and ops pushed, about 3%).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use lopt::gradcheck::{check_gradient, GradCheck};
use lopt::ops::lstm_sequence;
use lopt::prelude::*;

/// The system allocator, counting this thread's live and peak bytes (tests run on
/// threads of their own, so a test sees only its own allocations).
struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to `System`; the counters are thread-local `Cell`s (no allocation).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|live| {
            let n = live.get() + l.size();
            live.set(n);
            let _ = PEAK.try_with(|p| p.set(p.get().max(n)));
        });
        System.alloc(l)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, l: Layout) {
        let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(l.size())));
        System.dealloc(ptr, l)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak bytes allocated on this thread by `f` above what was live before it.
fn peak_bytes<R>(f: impl FnOnce() -> R) -> usize {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let r = f();
    drop(r);
    PEAK.with(Cell::get) - base
}

const W: usize = 8;

#[derive(Params, Clone, Debug)]
struct Lstm<S: Real> {
    /// Input weights of the four gates `[i f g o]`, `F × 4H`.
    wx: DMatrix<S>,
    /// Recurrent weights, `H × 4H`.
    wh: DMatrix<S>,
    /// Gate biases, `4H`.
    b: DVector<S>,
    /// Readout, `H × K`.
    wo: DMatrix<S>,
}

/// An LSTM language model over `xs.len()` steps (`xs[t]` is `B × F`, one sequence per
/// row): gates from one product `x_t W + h U + b` sliced by columns `[i f g o]`
/// (haiku's `hk.LSTM` order), `c = σ(f)∘c + σ(i)∘tanh(g)`, `h = σ(o)∘tanh(c)`, and the
/// mean softmax cross-entropy of `h Wo` against `targets[t]`, averaged over steps.
#[task]
fn lstm_loss<S: Real>(p: &Lstm<S>, xs: &Vec<DMatrix<f64>>, targets: &Vec<Vec<i32>>) -> S {
    let hd = p.wh.nrows();
    let rows = xs[0].nrows();
    let mut h = DMatrix::<S>::zeros(rows, hd);
    let mut c = DMatrix::<S>::zeros(rows, hd);
    let mut loss = 0.0;
    for t in 0..xs.len() {
        let z = &xs[t] * &p.wx + &h * &p.wh + &p.b;
        let i = sigmoid(z.columns(0, hd));
        let f = sigmoid(z.columns(hd, hd));
        let g = tanh(z.columns(2 * hd, hd));
        let o = sigmoid(z.columns(3 * hd, hd));
        c = component_mul(&f, &c) + component_mul(&i, &g);
        h = component_mul(&o, &tanh(&c));
        loss += mean(softmax_cross_entropy(&h * &p.wo, &targets[t]));
    }
    loss / (xs.len() as f64)
}

fn sig(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `rows × cols` of `x W` by loops.
fn matmul(x: &[Vec<f64>], w: &DMatrix<f64>) -> Vec<Vec<f64>> {
    x.iter()
        .map(|row| {
            (0..w.ncols())
                .map(|j| row.iter().enumerate().map(|(k, v)| v * w[(k, j)]).sum())
                .collect()
        })
        .collect()
}

/// Mean over rows of `logsumexp(z_r) - z_r[label_r]`.
fn cross_entropy(z: &[Vec<f64>], labels: &[i32]) -> f64 {
    let mut s = 0.0;
    for (row, &l) in z.iter().zip(labels) {
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        s += lse - row[l as usize];
    }
    s / z.len() as f64
}

fn rows_of(m: &DMatrix<f64>) -> Vec<Vec<f64>> {
    (0..m.nrows())
        .map(|r| m.row(r).iter().cloned().collect())
        .collect()
}

/// The LSTM by its definition: each gate's weights read at their own column offsets.
fn lstm_f64(p: &Lstm<f64>, xs: &[DMatrix<f64>], targets: &[Vec<i32>]) -> f64 {
    let hd = p.wh.nrows();
    let b = xs[0].nrows();
    let mut h = vec![vec![0.0; hd]; b];
    let mut c = vec![vec![0.0; hd]; b];
    let mut total = 0.0;
    for (x, labels) in xs.iter().zip(targets) {
        let (xw, hu) = (matmul(&rows_of(x), &p.wx), matmul(&h, &p.wh));
        for r in 0..b {
            for k in 0..hd {
                let pre =
                    |gate: usize| xw[r][gate * hd + k] + hu[r][gate * hd + k] + p.b[gate * hd + k];
                let (i, f, g, o) = (sig(pre(0)), sig(pre(1)), pre(2).tanh(), sig(pre(3)));
                c[r][k] = f * c[r][k] + i * g;
                h[r][k] = o * c[r][k].tanh();
            }
        }
        total += cross_entropy(&matmul(&h, &p.wo), labels);
    }
    total / xs.len() as f64
}

#[derive(Params, Clone, Debug)]
struct Gru<S: Real> {
    /// Input weights of `[r z n]`, `F × 3H`.
    wx: DMatrix<S>,
    /// Recurrent weights of `[r z]`, `H × 2H`.
    wh: DMatrix<S>,
    /// Recurrent weights of the candidate, `H × H`.
    wn: DMatrix<S>,
    /// Biases of `[r z n]`, `3H`.
    b: DVector<S>,
    /// Readout, `H × K`.
    wo: DMatrix<S>,
}

/// A GRU language model (haiku's `hk.GRU`): `[r z] = σ(x Wx[:, :2H] + h Wh + b[:2H])`,
/// `n = tanh(x Wx[:, 2H:] + b[2H:] + (r∘h) Wn)`, `h = (1 - z)∘n + z∘h`; the input
/// product is taken once and sliced, and so is the bias (a row of the biases broadcast
/// over the batch, then sliced).
#[task]
fn gru_loss<S: Real>(p: &Gru<S>, xs: &Vec<DMatrix<f64>>, targets: &Vec<Vec<i32>>) -> S {
    let hd = p.wn.nrows();
    let rows = xs[0].nrows();
    let mut h = DMatrix::<S>::zeros(rows, hd);
    let mut loss = 0.0;
    for t in 0..xs.len() {
        let a = &xs[t] * &p.wx + &p.b;
        let rz = sigmoid(a.columns(0, 2 * hd) + &h * &p.wh);
        let r = rz.columns(0, hd);
        let z = rz.columns(hd, hd);
        let n = tanh(a.columns(2 * hd, hd) + component_mul(&r, &h) * &p.wn);
        h = n.clone() + component_mul(&z, &(h - n));
        loss += mean(softmax_cross_entropy(&h * &p.wo, &targets[t]));
    }
    loss / (xs.len() as f64)
}

/// The GRU by its definition.
fn gru_f64(p: &Gru<f64>, xs: &[DMatrix<f64>], targets: &[Vec<i32>]) -> f64 {
    let hd = p.wn.nrows();
    let b = xs[0].nrows();
    let mut h = vec![vec![0.0; hd]; b];
    let mut total = 0.0;
    for (x, labels) in xs.iter().zip(targets) {
        let xw = matmul(&rows_of(x), &p.wx);
        let hu = matmul(&h, &p.wh);
        let r: Vec<Vec<f64>> = (0..b)
            .map(|i| (0..hd).map(|k| sig(xw[i][k] + p.b[k] + hu[i][k])).collect())
            .collect();
        let rh: Vec<Vec<f64>> = (0..b)
            .map(|i| (0..hd).map(|k| r[i][k] * h[i][k]).collect())
            .collect();
        let rhn = matmul(&rh, &p.wn);
        for i in 0..b {
            for k in 0..hd {
                let z = sig(xw[i][hd + k] + p.b[hd + k] + hu[i][hd + k]);
                let n = (xw[i][2 * hd + k] + p.b[2 * hd + k] + rhn[i][k]).tanh();
                h[i][k] = (1.0 - z) * n + z * h[i][k];
            }
        }
        total += cross_entropy(&matmul(&h, &p.wo), labels);
    }
    total / xs.len() as f64
}

fn rand_mat(r: usize, c: usize, seed: u64, scale: f64) -> DMatrix<f64> {
    let mut v = vec![0.0f32; r * c];
    Key::new(seed).fill_normal(&mut v);
    DMatrix::from_iterator(r, c, v.into_iter().map(|x| f64::from(x) * scale))
}

fn rand_vec(n: usize, seed: u64, scale: f64) -> DVector<f64> {
    rand_mat(n, 1, seed, scale).column(0).into_owned()
}

/// `T` steps of a batch of `B` sequences with `F` inputs, and labels among `K` classes.
fn sequences(t: usize, b: usize, f: usize, k: i32) -> (Vec<DMatrix<f64>>, Vec<Vec<i32>>) {
    let xs = (0..t)
        .map(|s| rand_mat(b, f, 100 + s as u64, 1.0))
        .collect();
    let ys = (0..t)
        .map(|s| (0..b).map(|i| (s as i32 * 3 + i as i32 * 5) % k).collect())
        .collect();
    (xs, ys)
}

/// Element `(i, j)` of lane `l`'s matrix in one packed matrix.
fn pack(ms: &[DMatrix<f32>]) -> DMatrix<Lanes<W>> {
    DMatrix::from_fn(ms[0].nrows(), ms[0].ncols(), |i, j| {
        Lanes::from_lanes(|l| f64::from(ms[l][(i, j)]))
    })
}

fn pack_vec(vs: &[DVector<f32>]) -> DVector<Lanes<W>> {
    DVector::from_fn(vs[0].len(), |i, _| {
        Lanes::from_lanes(|l| f64::from(vs[l][i]))
    })
}

/// Lane `l` of a packed matrix.
fn lane(m: &DMatrix<Lanes<W>>, l: usize) -> DMatrix<f32> {
    m.map(|x| x.0[l])
}

/// `W` instances near `p` (lane `l` scaled by `1 - 0.05 l`), in `f32`.
fn instances<P: Params<Scalar = f64> + Rebind>(p: &P) -> Vec<P::With<f32>>
where
    P::With<f32>: Params<Scalar = f32>,
{
    (0..W)
        .map(|l| p.map(|x| x * (1.0 - 0.05 * l as f64)).cast::<f32>())
        .collect()
}

#[test]
fn lstm_matches_its_definition_and_differentiates() {
    let (hd, f, k) = (3, 2, 4);
    let (xs, ys) = sequences(4, 3, f, k as i32);
    let p = Lstm {
        wx: rand_mat(f, 4 * hd, 1, 0.7),
        wh: rand_mat(hd, 4 * hd, 2, 0.7),
        b: rand_vec(4 * hd, 3, 0.3),
        wo: rand_mat(hd, k, 4, 0.8),
    };
    let indep = |p: &Lstm<f64>| lstm_f64(p, &xs, &ys);
    let got = lstm_loss(&p, &xs, &ys);
    assert!((got - indep(&p)).abs() < 1e-12, "{got} vs {}", indep(&p));
    let report = check_gradient(
        &p,
        indep,
        |p| lstm_loss::value_and_grad(p, &xs, &ys),
        |p, t| lstm_loss::value_and_jvp(p, t, &xs, &ys),
        &GradCheck::default(),
    );
    assert!(report.passed(), "{report}");
    assert_eq!(report.comparisons.len(), 1 + p.num_elements() + 3 * 4);

    // Lanes: eight f32 instances at once. Not bit for bit: `sigmoid` and `tanh` on lanes
    // are polynomials within a few ulp of the `f32` functions (see `lopt::lanes`), and the
    // products' reverse rules run other kernels; the slices themselves are exact
    // (`slices_and_concatenations_differentiate` checks their lanes bit for bit).
    let insts = instances(&p);
    let packed = Lstm {
        wx: pack(&insts.iter().map(|q| q.wx.clone()).collect::<Vec<_>>()),
        wh: pack(&insts.iter().map(|q| q.wh.clone()).collect::<Vec<_>>()),
        b: pack_vec(&insts.iter().map(|q| q.b.clone()).collect::<Vec<_>>()),
        wo: pack(&insts.iter().map(|q| q.wo.clone()).collect::<Vec<_>>()),
    };
    let (v, g) = lstm_loss::value_and_grad(&packed, &xs, &ys);
    let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * (a.abs().max(b.abs()) + 1e-3);
    for (l, q) in insts.iter().enumerate() {
        let (vs, gs) = lstm_loss::value_and_grad(q, &xs, &ys);
        assert!(close(v.0[l], vs), "value, lane {l}: {} vs {vs}", v.0[l]);
        for (a, b) in lane(&g.wh, l).iter().zip(gs.wh.iter()) {
            assert!(close(*a, *b), "grad wh, lane {l}: {a} vs {b}");
        }
        for (a, b) in lane(&g.wx, l).iter().zip(gs.wx.iter()) {
            assert!(close(*a, *b), "grad wx, lane {l}: {a} vs {b}");
        }
    }
}

#[test]
fn gru_matches_its_definition_and_differentiates() {
    let (hd, f, k) = (3, 2, 4);
    let (xs, ys) = sequences(4, 3, f, k as i32);
    let p = Gru {
        wx: rand_mat(f, 3 * hd, 11, 0.7),
        wh: rand_mat(hd, 2 * hd, 12, 0.7),
        wn: rand_mat(hd, hd, 13, 0.7),
        b: rand_vec(3 * hd, 14, 0.3),
        wo: rand_mat(hd, k, 15, 0.8),
    };
    let indep = |p: &Gru<f64>| gru_f64(p, &xs, &ys);
    let got = gru_loss(&p, &xs, &ys);
    assert!((got - indep(&p)).abs() < 1e-12, "{got} vs {}", indep(&p));
    let report = check_gradient(
        &p,
        indep,
        |p| gru_loss::value_and_grad(p, &xs, &ys),
        |p, t| gru_loss::value_and_jvp(p, t, &xs, &ys),
        &GradCheck::default(),
    );
    assert!(report.passed(), "{report}");
}

#[derive(Params, Clone, Debug)]
struct Pieces<S: Real> {
    m: DMatrix<S>,
    v: DVector<S>,
    r: RowDVector<S>,
}

/// Every slice and assembly primitive on differentiated values: columns and rows of a
/// matrix (method and call syntax), a column vector's segment, a row vector's columns,
/// concatenation along both axes (matrices and vectors) and a row-major reshape.
#[task]
fn pieces_loss<S: Real>(p: &Pieces<S>, w: &DMatrix<f64>) -> S {
    let m = p.m.columns(1, 3);
    let both = vconcat(&m.rows(0, 2), &rows(&p.m, 2, 2).columns(0, 3));
    let wide = hconcat(&both, &m);
    let r = reshape(&wide, 3, 8);
    let v = vconcat(&p.v.rows(1, 3), &p.v.rows(0, 1));
    let rv = hconcat(&p.r.columns(2, 2), &p.r).columns(1, 3);
    dot(component_mul(&r, &r), w) + norm_squared(v * 2.0 - 1.0) * sum(rv)
}

/// The same by index arithmetic: `both` is `m[0..2, 1..4]` over `m[2..4, 0..3]`, `wide`
/// is `[both, m[.., 1..4]]` (4 × 6), and `r` reads `wide` in row-major order.
fn pieces_f64(p: &Pieces<f64>, w: &DMatrix<f64>) -> f64 {
    let wide = |i: usize, j: usize| {
        if j >= 3 {
            p.m[(i, j - 3 + 1)]
        } else if i < 2 {
            p.m[(i, j + 1)]
        } else {
            p.m[(i, j)]
        }
    };
    let mut a = 0.0;
    for i in 0..3 {
        for j in 0..8 {
            let k = i * 8 + j;
            let x = wide(k / 6, k % 6);
            a += x * x * w[(i, j)];
        }
    }
    let v = [p.v[1], p.v[2], p.v[3], p.v[0]];
    let n: f64 = v.iter().map(|x| (2.0 * x - 1.0).powi(2)).sum();
    // [r2 r3 r0 r1 r2 ...] columns 1..4: r3 + r0 + r1
    a + n * (p.r[3] + p.r[0] + p.r[1])
}

#[test]
fn slices_and_concatenations_differentiate() {
    let p = Pieces {
        m: rand_mat(4, 5, 21, 1.0),
        v: rand_vec(5, 22, 1.0),
        r: rand_vec(4, 23, 1.0).transpose(),
    };
    let w = rand_mat(3, 8, 24, 1.0);
    let indep = |p: &Pieces<f64>| pieces_f64(p, &w);
    let got = pieces_loss(&p, &w);
    assert!((got - indep(&p)).abs() < 1e-12, "{got} vs {}", indep(&p));
    let report = check_gradient(
        &p,
        indep,
        |p| pieces_loss::value_and_grad(p, &w),
        |p, t| pieces_loss::value_and_jvp(p, t, &w),
        &GradCheck::default(),
    );
    assert!(report.passed(), "{report}");
    assert_eq!(report.comparisons.len(), 1 + p.num_elements() + 3 * 4);

    // Lanes: products, sums and copies only, so bit for bit.
    let insts = instances(&p);
    let packed = Pieces {
        m: pack(&insts.iter().map(|q| q.m.clone()).collect::<Vec<_>>()),
        v: pack_vec(&insts.iter().map(|q| q.v.clone()).collect::<Vec<_>>()),
        r: pack_vec(&insts.iter().map(|q| q.r.transpose()).collect::<Vec<_>>()).transpose(),
    };
    let scale = |l: usize| 0.5 - 0.1 * l as f32;
    let tangent = packed.map(|x| x * Lanes::from_lanes(|l| f64::from(scale(l))));
    let (v, g) = pieces_loss::value_and_grad(&packed, &w);
    let (_, j) = pieces_loss::value_and_jvp(&packed, &tangent, &w);
    for (l, q) in insts.iter().enumerate() {
        let t = q.map(|x| x * scale(l));
        let (vs, gs) = pieces_loss::value_and_grad(q, &w);
        let (_, js) = pieces_loss::value_and_jvp(q, &t, &w);
        assert_eq!(v.0[l].to_bits(), vs.to_bits(), "value, lane {l}");
        assert_eq!(j.0[l].to_bits(), js.to_bits(), "jvp, lane {l}");
        assert_eq!(lane(&g.m, l), gs.m, "grad m, lane {l}");
        assert_eq!(g.v.map(|x| x.0[l]), gs.v, "grad v, lane {l}");
        assert_eq!(g.r.map(|x| x.0[l]), gs.r, "grad r, lane {l}");
    }
}

/// The reverse-mode tape of `lstm_loss` per time step, measured: the peak memory of
/// `value_and_grad` over 16 steps minus that over 8 steps, over 8 (the tapes are `Vec`s
/// of capacity exactly 8 and 16 then), in `f32`. It is `B·(F + 31H + 2K)` (the table in
/// this file's documentation) plus the tapes' bookkeeping; a change that keeps more per
/// step (or frees less) fails the upper bound, one that keeps less should lower it.
/// Mutations tried: a step that also keeps a copy of `z` (`let z2 = z.clone() * 1.0;`,
/// unused) raised it by `B·4H` past the bound; reading a `let mut` after setting it as a
/// copy again (the macro's `slot_read` always a read) raised it by `2·B·H` past it.
#[test]
fn lstm_tape_per_step_is_measured() {
    let (b, f, hd, k) = (8, 32, 32, 10);
    let p = Lstm {
        wx: rand_mat(f, 4 * hd, 31, 0.2),
        wh: rand_mat(hd, 4 * hd, 32, 0.2),
        b: rand_vec(4 * hd, 33, 0.1),
        wo: rand_mat(hd, k, 34, 0.3),
    }
    .cast::<f32>();
    let peak = |t: usize| {
        let (xs, ys) = sequences(t, b, f, k as i32);
        peak_bytes(|| lstm_loss::value_and_grad(&p, &xs, &ys))
    };
    let per_step = (peak(16) - peak(8)) as f64 / 8.0 / 4.0;
    let model = (b * (f + 31 * hd + 2 * k)) as f64;
    let minimum = (b * (f + 7 * hd + k)) as f64;
    println!(
        "LSTM tape per step: {per_step} f32 (model {model}, minimum {minimum}: {:.1}x)",
        per_step / minimum
    );
    assert!(
        per_step >= model && per_step <= 1.05 * model,
        "{per_step} f32 per step, the table says {model}"
    );
}

/// `let mut` values read right after being set (in a loop body, in a branch, after an
/// `if` that may set them): each read is the value last assigned, in all three modes.
/// Guards the macro's reuse of the assigned value for such reads (`slot_read`): a read
/// after an `if` or in the next iteration must not reuse a value from before it.
/// Mutation tried: a nested block not forgetting what the enclosing block knew (a read
/// after the `if` reusing the value from before it) fails this test.
#[task]
fn carried<S: Real>(p: &DVector<S>, steps: &usize) -> S {
    let mut a = p[0];
    let mut s = a * 0.0;
    for i in 0..*steps {
        a = a * p[1] + 0.25;
        s += a * a;
        if a > 0.6 {
            a = a * 0.5;
            s += a;
            a = a - p[2];
        } else {
            s = s * 1.5;
        }
        s += a * (i as f64);
    }
    s + a
}

fn carried_f64(p: &DVector<f64>, steps: usize) -> f64 {
    let (mut a, mut s) = (p[0], 0.0);
    for i in 0..steps {
        a = a * p[1] + 0.25;
        s += a * a;
        if a > 0.6 {
            a *= 0.5;
            s += a;
            a -= p[2];
        } else {
            s *= 1.5;
        }
        s += a * i as f64;
    }
    s + a
}

#[test]
fn values_read_after_assignment_are_the_assigned_ones() {
    // Both branches are taken over the steps at each point.
    for p in [[0.9, 1.3, 0.2], [0.3, 1.1, -0.1], [1.2, 0.7, 0.4]] {
        let p = DVector::from_row_slice(&p);
        let mut branches = (false, false);
        let mut a = p[0];
        for _ in 0..6 {
            a = a * p[1] + 0.25;
            if a > 0.6 {
                branches.0 = true;
                a = a * 0.5 - p[2];
            } else {
                branches.1 = true;
            }
        }
        assert!(branches.0 && branches.1, "{p}");
        assert!((carried(&p, &6) - carried_f64(&p, 6)).abs() < 1e-12);
        let report = check_gradient(
            &p,
            |p| carried_f64(p, 6),
            |p| carried::value_and_grad(p, &6),
            |p, t| carried::value_and_jvp(p, t, &6),
            &GradCheck::default(),
        );
        assert!(report.passed(), "{p}: {report}");
    }
}

#[derive(Params, Clone, Debug)]
struct Projected<S: Real> {
    x: DMatrix<S>,
    wx: DMatrix<S>,
    b: DVector<S>,
    wh: DMatrix<S>,
}

/// `lstm_projected` (the input projection inside the LSTM rule) with a data input `xd`
/// and with a differentiated one `p.x` (as an embedding's output would be), under
/// weights `r`; the initial state is data.
#[task]
fn projected_loss<S: Real>(
    p: &Projected<S>,
    xd: &DMatrix<S>,
    r: &DMatrix<S>,
    s0: &DMatrix<S>,
) -> S {
    let a = lstm_projected(xd, &p.wx, &p.b, &p.wh, s0, s0);
    let c = lstm_projected(&p.x, &p.wx, &p.b, &p.wh, s0, s0);
    dot(&a, r) + 0.5 * dot(&c, r)
}

/// The same loss as `x·wx + b` then `lstm_sequence`.
#[task]
fn projected_composed<S: Real>(
    p: &Projected<S>,
    xd: &DMatrix<S>,
    r: &DMatrix<S>,
    s0: &DMatrix<S>,
) -> S {
    let a = lstm_sequence(&(xd * &p.wx + &p.b), &p.wh, s0, s0);
    let c = lstm_sequence(&(&p.x * &p.wx + &p.b), &p.wh, s0, s0);
    dot(&a, r) + 0.5 * dot(&c, r)
}

/// A `#[task]` calling `lstm_projected` (which the macro tells which operands are
/// differentiated) has the value of the composition `lstm_sequence(x·wx + b, ..)`, its
/// gradient within rounding (a data `x` and a differentiated one), and a gradient and
/// JVP that pass the central-difference check of it. Mutation caught: the macro telling
/// the rule every operand is data but `wh` (`needs` of `[false, false, false, true,
/// false, false]`; tried: the gradients of `x`, `wx` and `b` stay zero).
#[test]
fn lstm_projected_in_a_task_is_the_composition() {
    let (b, t, e, h) = (5, 3, 4, 3);
    let p = Projected {
        x: rand_mat(t * b, e, 1, 1.0),
        wx: rand_mat(e, 4 * h, 2, 0.6),
        b: rand_vec(4 * h, 3, 0.5),
        wh: rand_mat(h, 4 * h, 4, 0.6),
    };
    let xd = rand_mat(t * b, e, 5, 1.0);
    let r = rand_mat(t * b, h, 6, 1.0);
    let s0 = DMatrix::<f64>::zeros(b, h);
    let (v, g) = projected_loss::value_and_grad(&p, &xd, &r, &s0);
    let (w, gw) = projected_composed::value_and_grad(&p, &xd, &r, &s0);
    assert!((v - w).abs() < 1e-12, "{v} vs {w}");
    let close = |a: &DMatrix<f64>, b: &DMatrix<f64>| (a - b).abs().max() < 1e-12;
    assert!(close(&g.x, &gw.x), "x");
    assert!(close(&g.wx, &gw.wx), "wx");
    assert!((&g.b - &gw.b).abs().max() < 1e-12, "b");
    assert!(close(&g.wh, &gw.wh), "wh");
    let report = check_gradient(
        &p,
        |p| projected_composed(p, &xd, &r, &s0),
        |p| projected_loss::value_and_grad(p, &xd, &r, &s0),
        |p, tan| projected_loss::value_and_jvp(p, tan, &xd, &r, &s0),
        &GradCheck::default(),
    );
    assert!(report.passed(), "{report}");
}
