//! `#[derive(Params)]`: leaf enumeration, names, flatten order, tree operations against
//! plain loops over the flattened vector, scalar rebinding and checkpoint records.

use lopt::params::{ParamsRecord, Rebind};
use lopt::prelude::*;

#[derive(Params, Clone, Debug, PartialEq)]
struct Layer {
    w: DMatrix<f32>,
    b: DVector<f32>,
}

#[derive(Params, Clone, Debug, PartialEq)]
struct Net {
    layer: Layer,
    m: DMatrix<f32>,
    v: DVector<f32>,
    sm: SMatrix<f32, 2, 3>,
    #[params(skip)]
    width: usize,
    list: Vec<f32>,
    arr: [f32; 3],
    scale: f32,
}

// Shapes of `Net`, written once so the expected counts below are computed by hand from
// them and not by the code under test.
const W: (usize, usize) = (3, 2);
const B: usize = 3;
const M: (usize, usize) = (2, 4);
const V: usize = 5;
const SM: (usize, usize) = (2, 3);
const LIST: usize = 4;
const ARR: usize = 3;

/// Element `idx` (column-major within its leaf) of leaf `k`.
fn value(k: usize, idx: usize) -> f32 {
    (100 * k + idx) as f32 * 0.25 - 7.0
}

/// Column-major index of (row `i`, column `j`) in a matrix of `rows` rows.
fn cm(rows: usize, i: usize, j: usize) -> usize {
    i + rows * j
}

/// A `Net` whose leaf `k` holds `value(k, idx)` at column-major position `idx`, built from
/// explicit (row, column) positions so a wrong flatten order shows.
fn net_with(m_shape: (usize, usize)) -> Net {
    Net {
        layer: Layer {
            w: DMatrix::from_fn(W.0, W.1, |i, j| value(0, cm(W.0, i, j))),
            b: DVector::from_fn(B, |i, _| value(1, i)),
        },
        m: DMatrix::from_fn(m_shape.0, m_shape.1, |i, j| value(2, cm(m_shape.0, i, j))),
        v: DVector::from_fn(V, |i, _| value(3, i)),
        sm: SMatrix::from_fn(|i, j| value(4, cm(SM.0, i, j))),
        width: 17,
        list: (0..LIST).map(|i| value(5, i)).collect(),
        arr: std::array::from_fn(|i| value(6, i)),
        scale: value(7, 0),
    }
}

fn net() -> Net {
    net_with(M)
}

/// Leaf sizes of `Net` in field order, by hand.
fn leaf_sizes() -> Vec<usize> {
    vec![W.0 * W.1, B, M.0 * M.1, V, SM.0 * SM.1, LIST, ARR, 1]
}

/// The flattened `Net` by the formula: leaf after leaf, each in column-major order.
fn expected_flat() -> Vec<f32> {
    leaf_sizes()
        .iter()
        .enumerate()
        .flat_map(|(k, &n)| (0..n).map(move |idx| value(k, idx)))
        .collect()
}

#[test]
fn counts_names_and_shapes() {
    let p = net();
    assert_eq!(p.num_leaves(), 8);
    assert_eq!(
        p.num_elements(),
        W.0 * W.1 + B + M.0 * M.1 + V + SM.0 * SM.1 + LIST + ARR + 1
    );
    assert_eq!(
        p.leaf_names(),
        ["layer.w", "layer.b", "m", "v", "sm", "list", "arr", "scale"]
    );
    let shapes: Vec<Vec<usize>> = (0..p.num_leaves()).map(|i| p.leaf_shape(i)).collect();
    assert_eq!(
        shapes,
        vec![
            vec![W.0, W.1],
            vec![B],
            vec![M.0, M.1],
            vec![V],
            vec![SM.0, SM.1],
            vec![LIST],
            vec![ARR],
            vec![],
        ]
    );
    let sizes: Vec<usize> = (0..p.num_leaves()).map(|i| p.leaf(i).len()).collect();
    assert_eq!(sizes, leaf_sizes());
}

#[test]
fn flatten_is_field_order_then_column_major() {
    let p = net();
    assert_eq!(p.flatten(), expected_flat());
}

#[test]
fn unflatten_round_trip_keeps_skipped_fields() {
    let p = net();
    let mut z = p.zeros_like();
    assert!(z.flatten().iter().all(|&x| x == 0.0));
    assert_eq!(z.width, 17);
    z.unflatten_from(&expected_flat()).unwrap();
    assert_eq!(z, p);
    assert_eq!(p.zeros_like().with_flat(&p.flatten()).unwrap(), p);
}

#[test]
fn leaf_mut_writes_the_named_field() {
    let mut p = net();
    p.leaf_mut(4)
        .copy_from_slice(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    // Column-major: (row 1, column 0) is the second element.
    assert_eq!(p.sm[(1, 0)], 2.0);
    assert_eq!(p.sm[(0, 2)], 5.0);
    *p.leaf_mut(7).first_mut().unwrap() = 9.5;
    assert_eq!(p.scale, 9.5);
    p.leaf_mut(1)[2] = -1.0;
    assert_eq!(p.layer.b[2], -1.0);
}

#[test]
fn with_flat_of_wrong_length_is_shape_mismatch() {
    let p = net();
    let n = expected_flat().len();
    let short = vec![0.0f32; n - 1];
    match p.with_flat(&short) {
        Err(Error::ShapeMismatch { expected, got, .. }) => {
            assert_eq!(expected, vec![n]);
            assert_eq!(got, vec![n - 1]);
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
    assert!(matches!(
        p.clone().unflatten_from(&vec![0.0; n + 1]),
        Err(Error::ShapeMismatch { .. })
    ));
}

/// A second tree of the same structure with different values.
fn other() -> Net {
    net().map(|x| 0.5 - 0.125 * x)
}

#[test]
fn tree_ops_match_loops_over_the_flat_vector() {
    let (p, q) = (net(), other());
    let (fp, fq) = (p.flatten(), q.flatten());

    let f = |x: f32| x * x - 3.0;
    let mapped: Vec<f32> = fp.iter().map(|&x| f(x)).collect();
    assert_eq!(p.map(f).flatten(), mapped);

    let g = |a: f32, b: f32| a * 2.0 - b;
    let zipped: Vec<f32> = fp.iter().zip(&fq).map(|(&a, &b)| g(a, b)).collect();
    assert_eq!(p.zip_map(&q, g).flatten(), zipped);

    let mut r = p.clone();
    r.axpy(-0.75, &q);
    let axpy: Vec<f32> = fp.iter().zip(&fq).map(|(&a, &b)| a + -0.75 * b).collect();
    assert_eq!(r.flatten(), axpy);
    assert_eq!(r.width, 17);

    let mut s = p.clone();
    s.scale(1.5);
    let scaled: Vec<f32> = fp.iter().map(|&x| x * 1.5).collect();
    assert_eq!(s.flatten(), scaled);

    // Reductions: reference in f64, compared with a relative tolerance.
    let dot: f64 = fp.iter().zip(&fq).map(|(&a, &b)| a as f64 * b as f64).sum();
    let got = p.dot(&q) as f64;
    assert!((got - dot).abs() <= 1e-5 * dot.abs(), "{got} vs {dot}");
    let norm: f64 = fp.iter().map(|&a| a as f64 * a as f64).sum::<f64>().sqrt();
    let got = p.norm() as f64;
    assert!((got - norm).abs() <= 1e-5 * norm, "{got} vs {norm}");
    assert!(p.all_finite());
}

#[test]
fn check_same_shape_detects_a_different_matrix_shape() {
    let p = net();
    assert_eq!(p.check_same_shape(&other()), Ok(()));
    let q = net_with((M.1, M.0));
    assert_eq!(p.num_elements(), q.num_elements());
    assert_eq!(
        p.check_same_shape(&q),
        Err(Error::ShapeMismatch {
            what: "leaf `m`".into(),
            expected: vec![M.0, M.1],
            got: vec![M.1, M.0],
        })
    );
}

#[test]
#[should_panic(expected = "leaf index 8 out of range for `Net` with 8 leaves")]
fn leaf_index_past_the_end_panics() {
    let _ = net().leaf(8);
}

// ---- generic structs and Rebind ----

#[derive(Params, Clone, Debug, PartialEq)]
struct Mlp<S: Real> {
    w1: DMatrix<S>,
    b1: DVector<S>,
    w2: RowDVector<S>,
    b2: S,
    #[params(skip)]
    hidden: usize,
}

impl<S: Real> Mlp<S> {
    fn new(inputs: usize, hidden: usize) -> Self {
        let v = |k: usize| S::from_f64(0.1 * k as f64 - 0.3);
        Mlp {
            w1: DMatrix::from_fn(hidden, inputs, |i, j| v(i + 7 * j)),
            b1: DVector::from_fn(hidden, |i, _| v(2 * i + 1)),
            w2: RowDVector::from_fn(hidden, |_, j| v(3 * j)),
            b2: v(5),
            hidden,
        }
    }
}

#[derive(Params, Clone, Debug, PartialEq)]
struct Outer<S, const N: usize>
where
    S: lopt::Real,
{
    mlp: Mlp<S>,
    stat: SVector<S, N>,
    arr: [S; N],
    list: Vec<S>,
    pair: Pair<S>,
}

#[derive(Params, Clone, Debug, PartialEq)]
struct Pair<S: Real>(DVector<S>, S);

/// A generic consumer: works for any scalar.
fn sum_of_squares<P: Params>(p: &P) -> P::Scalar {
    p.dot(p)
}

#[test]
fn generic_struct_in_f32_and_f64() {
    let p32 = Mlp::<f32>::new(3, 4);
    let p64 = Mlp::<f64>::new(3, 4);
    assert_eq!(p32.leaf_names(), ["w1", "b1", "w2", "b2"]);
    assert_eq!(p32.num_elements(), 4 * 3 + 4 + 4 + 1);
    assert_eq!(p64.num_elements(), p32.num_elements());
    let s32 = sum_of_squares(&p32) as f64;
    let s64 = sum_of_squares(&p64);
    let by_hand: f64 = p64.flatten().iter().map(|x| x * x).sum();
    assert!((s64 - by_hand).abs() < 1e-12);
    assert!((s32 - s64).abs() < 1e-5 * s64);
}

#[test]
fn cast_to_f64_and_back() {
    let p = Mlp::<f32>::new(2, 3);
    let q: Mlp<f64> = p.cast::<f64>();
    assert_eq!(q.hidden, 3);
    let widened: Vec<f64> = p.flatten().iter().map(|&x| x as f64).collect();
    assert_eq!(q.flatten(), widened);
    // f32 -> f64 -> f32 is exact.
    assert_eq!(q.cast::<f32>(), p);
    // Same shapes as a natively built f64 tree.
    assert_eq!(q.check_same_shape(&Mlp::<f64>::new(2, 3)), Ok(()));
}

#[test]
fn cast_nested_generic_tuple_and_const_generic() {
    let o = Outer::<f32, 2> {
        mlp: Mlp::new(2, 2),
        stat: SVector::from([1.5, -2.0]),
        arr: [0.25, 4.0],
        list: vec![1.0, 2.0, 3.0],
        pair: Pair(DVector::from_vec(vec![7.0, 8.0]), -1.0),
    };
    assert_eq!(
        o.leaf_names(),
        ["mlp.w1", "mlp.b1", "mlp.w2", "mlp.b2", "stat", "arr", "list", "pair.0", "pair.1"]
    );
    let d: Outer<f64, 2> = o.cast();
    let widened: Vec<f64> = o.flatten().iter().map(|&x| x as f64).collect();
    assert_eq!(d.flatten(), widened);
    assert_eq!(d.leaf_names(), o.leaf_names());
    assert_eq!(d.cast::<f32>(), o);
}

// ---- checkpoint records ----

#[test]
fn record_round_trips_through_json() {
    let p = net();
    let rec = p.to_record().unwrap();
    assert_eq!(rec.names, p.leaf_names());
    assert_eq!(rec.values.concat(), {
        let v: Vec<f64> = expected_flat().iter().map(|&x| x as f64).collect();
        v
    });
    let json = serde_json::to_string(&rec).unwrap();
    let back: ParamsRecord = serde_json::from_str(&json).unwrap();
    assert_eq!(back, rec);
    let mut z = p.zeros_like();
    z.from_record(&back).unwrap();
    assert_eq!(z, p);
}

#[test]
fn f32_record_loads_into_f64_twin() {
    let p = Mlp::<f32>::new(2, 3);
    let json = serde_json::to_string(&p.to_record().unwrap()).unwrap();
    let rec: ParamsRecord = serde_json::from_str(&json).unwrap();
    let mut q = Mlp::<f64>::new(2, 3).zeros_like();
    q.from_record(&rec).unwrap();
    assert_eq!(q, p.cast::<f64>());
}

#[test]
fn record_with_other_shape_is_rejected_and_leaves_params_unchanged() {
    let rec = net_with((M.1, M.0)).to_record().unwrap();
    let mut p = other();
    let before = p.clone();
    assert_eq!(
        p.from_record(&rec),
        Err(Error::ShapeMismatch {
            what: "leaf `m` in ParamsRecord".into(),
            expected: vec![M.0, M.1],
            got: vec![M.1, M.0],
        })
    );
    // Leaves before `m` matched but were not written.
    assert_eq!(p, before);
}

#[derive(Params, Clone, Debug, PartialEq)]
struct Renamed {
    layer: Layer,
    mm: DMatrix<f32>,
}

#[test]
fn record_mismatches_are_typed_errors() {
    let rec = net().to_record().unwrap();

    // Fewer leaves.
    let mut small = Layer {
        w: DMatrix::zeros(W.0, W.1),
        b: DVector::zeros(B),
    };
    assert_eq!(
        small.from_record(&rec),
        Err(Error::ShapeMismatch {
            what: "number of leaves in ParamsRecord".into(),
            expected: vec![2],
            got: vec![8],
        })
    );

    // Same leaf count and shapes, different name.
    let mut renamed = Renamed {
        layer: small.clone(),
        mm: DMatrix::zeros(M.0, M.1),
    };
    let mut rec3 = rec.clone();
    rec3.names.truncate(3);
    rec3.shapes.truncate(3);
    rec3.values.truncate(3);
    assert_eq!(
        renamed.from_record(&rec3),
        Err(Error::LeafNameMismatch {
            index: 2,
            expected: "mm".into(),
            got: "m".into(),
        })
    );

    // Right shape, wrong number of values.
    let mut short = rec.clone();
    short.values[1].pop();
    assert_eq!(
        net().from_record(&short),
        Err(Error::ShapeMismatch {
            what: "number of values of leaf `layer.b` in ParamsRecord".into(),
            expected: vec![B],
            got: vec![B - 1],
        })
    );

    // A record whose lists disagree with each other.
    let mut broken = rec.clone();
    broken.shapes.pop();
    assert!(matches!(net().from_record(&broken), Err(Error::Data(_))));

    // Malformed JSON is serde's error, before any Params code runs.
    assert!(serde_json::from_str::<ParamsRecord>("{\"names\": [1]}").is_err());
}

// A public struct with a private nested field type must not trip `private_bounds`
// (the crate is compiled with clippy's `-D warnings`).
#[allow(dead_code)]
mod visibility {
    use lopt::prelude::*;

    #[derive(Params, Clone, Debug)]
    pub struct Public {
        inner: Private,
        pub v: Vec<f64>,
    }

    #[derive(Params, Clone, Debug)]
    struct Private {
        x: f64,
    }
}

#[allow(dead_code)]
mod visibility_generic {
    use lopt::prelude::*;

    #[derive(Params, Clone, Debug)]
    pub struct Public<S: Real> {
        inner: Private<S>,
        pub v: Vec<S>,
    }

    #[derive(Params, Clone, Debug)]
    struct Private<S: Real> {
        x: DVector<S>,
    }
}

// No field shows its scalar: `Scalar` is taken from the first nested struct.
#[derive(Params, Clone, Debug, PartialEq)]
struct Stack(Layer, Layer);

#[test]
fn struct_of_nested_structs_only() {
    let l = net().layer;
    let s = Stack(l.clone(), l.map(|x| -x));
    assert_eq!(s.leaf_names(), ["0.w", "0.b", "1.w", "1.b"]);
    let half = l.flatten();
    let neg: Vec<f32> = half.iter().map(|&x| -x).collect();
    assert_eq!(s.flatten(), [half, neg].concat());
    let x: f32 = s.dot(&s); // `Scalar` is `f32`
    assert!(x > 0.0);
}

#[test]
fn rebind_every_leaf_type() {
    use nalgebra::{Dyn, OMatrix, U3};
    let sm = SMatrix::<f32, 2, 3>::from_fn(|i, j| (i * 3 + j) as f32 - 2.5);
    let sm64: SMatrix<f64, 2, 3> = Rebind::cast(&sm);
    assert_eq!(
        sm64,
        SMatrix::<f64, 2, 3>::from_fn(|i, j| (i * 3 + j) as f64 - 2.5)
    );

    let om = OMatrix::<f64, Dyn, U3>::from_fn(2, |i, j| 0.1 * (i + 10 * j) as f64);
    let om32: OMatrix<f32, Dyn, U3> = Rebind::cast(&om);
    assert_eq!(om32.shape(), (2, 3));
    assert_eq!(om32[(1, 2)], (0.1 * 21.0f64) as f32);

    let row = RowDVector::<f32>::from_vec(vec![1.0, -2.0]);
    let row64: RowDVector<f64> = Rebind::cast(&row);
    assert_eq!(row64.leaf_shape(0), vec![1, 2]); // a row vector is a 1 x n matrix
    assert_eq!(row64[1], -2.0);

    let x: f64 = 0.1f32.cast();
    assert_eq!(x, 0.1f32 as f64);
    let v: Vec<f64> = vec![0.5f32, 1.5].cast();
    assert_eq!(v, vec![0.5, 1.5]);
    let a: [f32; 2] = [0.1f64, 0.2].cast();
    assert_eq!(a, [0.1f64 as f32, 0.2f64 as f32]);
}

#[test]
fn hollow_like_allocates_no_dynamic_leaf_and_fill_hollow_restores_zeros() {
    let p = net();
    let mut h = p.hollow_like();
    // Dynamic leaves empty, static ones zeros, the skipped field carried along.
    assert!(h.layer.w.is_empty() && h.layer.b.is_empty() && h.m.is_empty());
    assert!(h.v.is_empty() && h.list.is_empty());
    assert_eq!(h.sm, SMatrix::<f32, 2, 3>::zeros());
    assert_eq!((h.arr, h.scale, h.width), ([0.0; 3], 0.0, 17));
    // Overwrite some leaves (a gradient), leave the others hollow (fields never read).
    let w = DMatrix::from_fn(W.0, W.1, |i, j| (i + 10 * j) as f32);
    let list = vec![1.0, 2.0, 3.0, 4.0];
    h.layer.w = w.clone();
    h.list = list.clone();
    h.scale = 2.5;
    h.fill_hollow(&p);
    let mut want = p.zeros_like();
    want.layer.w = w;
    want.list = list;
    want.scale = 2.5;
    assert_eq!(h, want);
    assert!(h.same_shape(&p));
    // Nothing overwritten: the same as `zeros_like`.
    let mut z = p.hollow_like();
    z.fill_hollow(&p);
    assert_eq!(z, p.zeros_like());
}

#[test]
fn fill_hollow_keeps_legitimately_empty_leaves_and_their_shapes() {
    let p = net_with((0, 4)); // `m` is 0 x 4
    let mut h = p.hollow_like();
    h.fill_hollow(&p);
    assert_eq!(h.m.shape(), (0, 4));
    assert_eq!(h, p.zeros_like());
}
