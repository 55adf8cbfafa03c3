//! Gathers by integer ids and their derivatives (scatter-adds): embedding lookup
//! (`hk.Embed`, `jnp.take(table, ids, axis=0)`) and one entry per row
//! (`jnp.take_along_axis(x, idx[:, None], axis=1)`).
//!
//! Ids are integers of any type that converts to `usize` ([`Id`]: `u8`, `u16`, `u32`,
//! `u64`, `usize`, `i32`, `i64`); a negative or out-of-range id panics with the id, its
//! position and the range.

use nalgebra::{DMatrix, DVector};

use crate::scalar::Real;

use super::Unary;

/// An integer id or label.
#[diagnostic::on_unimplemented(
    message = "ids and labels are integers (u8, u16, u32, u64, usize, i32 or i64), not `{Self}`",
    label = "not integer ids or labels"
)]
pub trait Id: Copy + Send + Sync + std::fmt::Debug + 'static {
    /// The id as an index, `None` when negative.
    fn index(self) -> Option<usize>;
}

macro_rules! ids {
    ($($t:ty),*) => {$(
        impl Id for $t {
            #[inline]
            #[allow(unused_comparisons)]
            fn index(self) -> Option<usize> {
                if self < 0 { None } else { usize::try_from(self).ok() }
            }
        }
    )*};
}
ids!(u8, u16, u32, u64, usize, i32, i64);

/// `ids[k]` as an index below `n`, or a panic naming it.
#[inline]
#[track_caller]
fn checked<I: Id>(ids: &[I], k: usize, n: usize, what: &str) -> usize {
    match ids[k].index() {
        Some(i) if i < n => i,
        _ => panic!("{what}: id {:?} at position {k} is outside 0..{n}", ids[k]),
    }
}

/// The op of `embed(&table, &ids)`: row `k` of the output is row `ids[k]` of the table.
#[derive(Debug, Clone, Copy)]
pub struct Embed<'a, I: Id>(pub &'a [I]);

impl<'a, I: Id> Embed<'a, I> {
    /// The op for `ids` (a `Vec`, slice or array of integers: what `#[task]` builds for
    /// `embed(&table, &ids)`).
    pub fn new<V: AsRef<[I]> + ?Sized>(ids: &'a V) -> Self {
        Embed(ids.as_ref())
    }
}

impl<S: Real, I: Id> Unary<Embed<'_, I>> for DMatrix<S> {
    type Out = DMatrix<S>;
    fn eval(&self, op: &Embed<'_, I>) -> DMatrix<S> {
        let n = self.nrows();
        let rows: Vec<usize> = (0..op.0.len())
            .map(|k| checked(op.0, k, n, "embed"))
            .collect();
        let mut out = Vec::with_capacity(rows.len() * self.ncols());
        for col in self.as_slice().chunks_exact(n.max(1)).take(self.ncols()) {
            out.extend(rows.iter().map(|&r| col[r]));
        }
        DMatrix::from_vec(rows.len(), self.ncols(), out)
    }
    fn jvp(&self, op: &Embed<'_, I>, _out: &DMatrix<S>, dx: &DMatrix<S>) -> DMatrix<S> {
        dx.eval(op)
    }
    /// Scatter-add: every looked-up row's cotangent adds into the table row it came from.
    fn vjp(&self, op: &Embed<'_, I>, _out: &DMatrix<S>, g: DMatrix<S>) -> DMatrix<S> {
        let n = self.nrows();
        let rows: Vec<usize> = (0..op.0.len())
            .map(|k| checked(op.0, k, n, "embed"))
            .collect();
        let mut dt = DMatrix::<S>::zeros(n, self.ncols());
        // Column by column: each cotangent column is read once, in order, and its table
        // column stays in cache.
        for (dcol, gcol) in dt
            .as_mut_slice()
            .chunks_exact_mut(n)
            .zip(g.as_slice().chunks_exact(rows.len().max(1)))
        {
            for (&r, &v) in rows.iter().zip(gcol) {
                dcol[r] += v;
            }
        }
        dt
    }
}

/// The op of `take_along(x, &idx)`: entry `idx[r]` of each row `r`, a vector (e.g. the
/// label's log-probability).
#[derive(Debug, Clone, Copy)]
pub struct TakeAlong<'a, I: Id>(pub &'a [I]);

impl<'a, I: Id> TakeAlong<'a, I> {
    /// The op for one index per row (what `#[task]` builds for `take_along(x, &idx)`).
    pub fn new<V: AsRef<[I]> + ?Sized>(idx: &'a V) -> Self {
        TakeAlong(idx.as_ref())
    }
}

impl<S: Real, I: Id> Unary<TakeAlong<'_, I>> for DMatrix<S> {
    type Out = DVector<S>;
    fn eval(&self, op: &TakeAlong<'_, I>) -> DVector<S> {
        assert_eq!(
            op.0.len(),
            self.nrows(),
            "take_along: {} indices for {} rows",
            op.0.len(),
            self.nrows()
        );
        let m = self.ncols();
        DVector::from_fn(self.nrows(), |r, _| {
            self[(r, checked(op.0, r, m, "take_along"))]
        })
    }
    fn jvp(&self, op: &TakeAlong<'_, I>, _out: &DVector<S>, dx: &DMatrix<S>) -> DVector<S> {
        dx.eval(op)
    }
    fn vjp(&self, op: &TakeAlong<'_, I>, _out: &DVector<S>, g: DVector<S>) -> DMatrix<S> {
        let m = self.ncols();
        let mut dx = DMatrix::<S>::zeros(self.nrows(), m);
        for r in 0..self.nrows() {
            dx[(r, checked(op.0, r, m, "take_along"))] = g[r];
        }
        dx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Key;
    use crate::lanes::Lanes;

    fn normal_matrix(r: usize, c: usize, seed: u64) -> DMatrix<f64> {
        let mut v = vec![0.0f32; r * c];
        Key::new(seed).fill_normal(&mut v);
        DMatrix::from_iterator(r, c, v.into_iter().map(f64::from))
    }

    /// Lookup by the definition; the reverse rule is the adjoint of the forward one, with
    /// repeated ids adding up (a mutation that assigns instead of adding fails).
    #[test]
    fn embed_looks_up_and_scatter_adds() {
        let table = normal_matrix(5, 3, 1);
        let ids: Vec<u8> = vec![4, 0, 4, 2];
        let op = Embed(&ids);
        let y = table.eval(&op);
        for (k, &i) in ids.iter().enumerate() {
            assert_eq!(y.row(k), table.row(i as usize));
        }
        let u = normal_matrix(4, 3, 2);
        let t = normal_matrix(5, 3, 3);
        let lhs = table.vjp(&op, &y, u.clone()).dot(&t);
        let rhs = u.dot(&table.jvp(&op, &y, &t));
        assert!((lhs - rhs).abs() < 1e-12);
        let g = table.vjp(&op, &y, DMatrix::from_element(4, 3, 1.0));
        assert_eq!((g[(4, 0)], g[(0, 0)], g[(1, 0)]), (2.0, 1.0, 0.0));
        // Every integer type says the same.
        let wide: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        assert_eq!(table.eval(&Embed(&wide)), y);
    }

    #[test]
    fn take_along_picks_one_entry_per_row() {
        let x = normal_matrix(3, 4, 4);
        let idx: Vec<usize> = vec![3, 0, 2];
        let op = TakeAlong(&idx);
        let y = x.eval(&op);
        assert_eq!(y, DVector::from_vec(vec![x[(0, 3)], x[(1, 0)], x[(2, 2)]]));
        let u = DVector::from_vec(vec![0.5, -1.0, 2.0]);
        let t = normal_matrix(3, 4, 5);
        let lhs = x.vjp(&op, &y, u.clone()).dot(&t);
        assert!((lhs - u.dot(&x.jvp(&op, &y, &t))).abs() < 1e-12);
    }

    #[test]
    fn lanes_look_up_as_their_instances() {
        let lanes: Vec<DMatrix<f64>> = (0..8).map(|l| normal_matrix(6, 2, 10 + l)).collect();
        let packed =
            DMatrix::<Lanes<8>>::from_fn(6, 2, |r, c| Lanes::from_lanes(|l| lanes[l][(r, c)]));
        let ids = [5u32, 1, 1];
        let y = packed.eval(&Embed(&ids));
        for (l, t) in lanes.iter().enumerate() {
            let want = t.map(|v| v as f32).eval(&Embed(&ids));
            assert!(y
                .iter()
                .zip(want.iter())
                .all(|(a, b)| a.lane(l) as f32 == *b));
        }
    }

    #[test]
    #[should_panic(expected = "id -1 at position 1 is outside 0..5")]
    fn negative_ids_panic_with_their_position() {
        normal_matrix(5, 2, 0).eval(&Embed(&[0i32, -1]));
    }

    #[test]
    #[should_panic(expected = "id 7 at position 0 is outside 0..4")]
    fn out_of_range_labels_panic() {
        normal_matrix(2, 4, 0).eval(&TakeAlong(&[7u16, 0]));
    }
}
