//! The `f32` tile paths (AVX2) of [`lstm_embedded()`](super::lstm_embedded())'s gather and
//! scatter-add: each step's gate block (`n × 4H`, column-major) is gathered from, and its
//! cotangent scattered into, the table held as blocks of 8 columns, each a row-major
//! `V × 8` panel ([`Blocked`]): 8 looked-up rows of a block are 8 vector loads (or 8
//! vector adds), and one in-register 8 × 8 transpose turns them into 8 pieces of 8 gate
//! columns (or back). Element by element, with a bounds check each, the gather and the
//! scatter were a tenth of the RNN LM's gradient.
//!
//! Same values as the element loops bit for bit: a gather only moves values, and each
//! scatter sum adds its terms in the same order (`k` ascending within a step, steps in the
//! order they are added), starting from zero.

use std::any::TypeId;

use crate::kernels::cpu::has_avx2;
use crate::scalar::Real;

/// A `V × d` table as `d / 8` blocks of 8 columns (block `q` at `q·8·V`, row `i`'s 8
/// entries at `8·i` in it), the last `d % 8` columns column-major after them: the layout
/// of both the gather's copy of the table and the scatter's sums.
pub(super) struct Blocked {
    data: Vec<f32>,
    v: usize,
    d: usize,
}

impl Blocked {
    /// The columns in whole blocks of 8.
    fn d8(&self) -> usize {
        self.d / 8 * 8
    }

    /// Whether the tile path runs for a table of `S` with `d` columns: `f32`, a CPU with
    /// AVX2 (not capped to `portable`), at least one whole block.
    pub(super) fn applies<S: Real>(d: usize) -> bool {
        cfg!(target_arch = "x86_64")
            && TypeId::of::<S>() == TypeId::of::<f32>()
            && d >= 8
            && has_avx2()
    }

    /// Zeros in the layout of a `v × d` table of `S` (the scatter's sums), when the tile
    /// path [`applies`](Blocked::applies).
    pub(super) fn sums<S: Real>(v: usize, d: usize) -> Option<Blocked> {
        Self::applies::<S>(d).then(|| Self::zeros(v, d))
    }

    fn zeros(v: usize, d: usize) -> Blocked {
        Blocked {
            data: vec![0.0; v * d],
            v,
            d,
        }
    }

    /// The column-major `v × d` table `t` in this layout (for the gather), when the tile
    /// path [`applies`](Blocked::applies).
    pub(super) fn of<S: Real>(t: &[S], v: usize, d: usize) -> Option<Blocked> {
        if !Self::applies::<S>(d) {
            return None;
        }
        assert_eq!(t.len(), v * d);
        // SAFETY: `S` is `f32` (`applies`): the same layout.
        let t = unsafe { std::slice::from_raw_parts(t.as_ptr() as *const f32, t.len()) };
        let mut out = Blocked::zeros(v, d);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 (`applies`); `t` holds `v·d` elements.
        unsafe {
            x86::to_blocked(t, &mut out)
        };
        Some(out)
    }

    /// Rows `ids` of the table (every id below `v`, checked by the caller) as the
    /// column-major `ids.len() × d` block at `out` (every element written).
    ///
    /// # Safety
    /// `out` is valid for `ids.len()·d` writes of `S`, which is `f32` (this value exists
    /// only then); every id is below `v`.
    pub(super) unsafe fn gather<S: Real>(&self, ids: &[u32], out: *mut S) {
        debug_assert_eq!(TypeId::of::<S>(), TypeId::of::<f32>());
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller's promises; AVX2 (this value exists only with it).
        unsafe {
            x86::gather(self, ids, out as *mut f32)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (ids, out);
    }

    /// Adds the rows of the column-major `ids.len() × d` block `g` to rows `ids` (every id
    /// below `v`), in the order of `k`.
    pub(super) fn scatter_add<S: Real>(&mut self, ids: &[u32], g: &[S]) {
        assert_eq!(TypeId::of::<S>(), TypeId::of::<f32>());
        assert_eq!(g.len(), ids.len() * self.d);
        // The unchecked accesses below rely on it.
        assert!(ids.iter().all(|&i| (i as usize) < self.v));
        // SAFETY: `S` is `f32` (asserted).
        let g = unsafe { std::slice::from_raw_parts(g.as_ptr() as *const f32, g.len()) };
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 (this value exists only with it); the ids and `g` are checked.
        unsafe {
            x86::scatter_add(self, ids, g)
        };
    }

    /// The sums as the column-major `v × d` table: the gather of every row in order.
    pub(super) fn into_table<S: Real>(self) -> Vec<S> {
        assert_eq!(TypeId::of::<S>(), TypeId::of::<f32>());
        let ids: Vec<u32> = (0..self.v)
            .map(|i| u32::try_from(i).expect("a table's rows are u32 ids"))
            .collect();
        let mut out = vec![0.0f32; self.v * self.d];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 (this value exists only with it); `out` holds `v·d` elements and
        // every id is below `v`.
        unsafe {
            x86::gather(&self, &ids, out.as_mut_ptr())
        };
        crate::kernels::tile8::from_f32(out)
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Blocked;
    use crate::kernels::tile8::tr8;

    /// `b` = the column-major table `t` in the blocked layout.
    ///
    /// # Safety
    /// AVX2; `t.len() == b.v·b.d == b.data.len()`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn to_blocked(t: &[f32], b: &mut Blocked) {
        let (v, d, d8) = (b.v, b.d, b.d8());
        assert!(t.len() == v * d && b.data.len() == v * d);
        let v8 = v / 8 * 8;
        let (s, o) = (t.as_ptr(), b.data.as_mut_ptr());
        for c in (0..d8).step_by(8) {
            let (s, o) = (s.add(c * v), o.add(c * v));
            for i in (0..v8).step_by(8) {
                let mut x = [_mm256_setzero_ps(); 8];
                for (j, x) in x.iter_mut().enumerate() {
                    *x = _mm256_loadu_ps(s.add(j * v + i));
                }
                tr8(&mut x);
                for (q, x) in x.iter().enumerate() {
                    _mm256_storeu_ps(o.add((i + q) * 8), *x);
                }
            }
            for i in v8..v {
                for j in 0..8 {
                    *o.add(i * 8 + j) = *s.add(j * v + i);
                }
            }
        }
        // The last columns as they are.
        b.data[d8 * v..].copy_from_slice(&t[d8 * v..]);
    }

    /// Rows `ids` of the blocked table `b` as the column-major `ids.len() × d` block at
    /// `out`: per block of 8 columns, 8 ids at a time, 8 row loads transposed into 8
    /// column pieces; the last ids (fewer than 8) and the last columns element by element.
    ///
    /// # Safety
    /// AVX2; `out` valid for `ids.len()·d` writes; every id below `b.v`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn gather(b: &Blocked, ids: &[u32], out: *mut f32) {
        let (v, d, d8) = (b.v, b.d, b.d8());
        let n = ids.len();
        let n8 = n / 8 * 8;
        let s = b.data.as_ptr();
        for c in (0..d8).step_by(8) {
            let (s, o) = (s.add(c * v), out.add(c * n));
            for k in (0..n8).step_by(8) {
                let mut x = [_mm256_setzero_ps(); 8];
                for (q, x) in x.iter_mut().enumerate() {
                    *x = _mm256_loadu_ps(s.add(*ids.get_unchecked(k + q) as usize * 8));
                }
                tr8(&mut x);
                for (j, x) in x.iter().enumerate() {
                    _mm256_storeu_ps(o.add(j * n + k), *x);
                }
            }
            for k in n8..n {
                let row = s.add(*ids.get_unchecked(k) as usize * 8);
                for j in 0..8 {
                    o.add(j * n + k).write(*row.add(j));
                }
            }
        }
        for c in d8..d {
            let (s, o) = (s.add(c * v), out.add(c * n));
            for (k, &i) in ids.iter().enumerate() {
                o.add(k).write(*s.add(i as usize));
            }
        }
    }

    /// `b[ids[k], :] += g[k, :]` (`g` column-major, `ids.len()` rows), each entry's terms
    /// in the order of `k`: per block of 8 columns, 8 rows of `g` at a time transposed
    /// into 8 row pieces, added one after another (a repeated id adds to the sum its
    /// earlier row left).
    ///
    /// # Safety
    /// AVX2; `g.len() == ids.len()·b.d`; every id below `b.v`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn scatter_add(b: &mut Blocked, ids: &[u32], g: &[f32]) {
        let (v, d, d8) = (b.v, b.d, b.d8());
        let n = ids.len();
        let n8 = n / 8 * 8;
        let (s, o) = (g.as_ptr(), b.data.as_mut_ptr());
        for c in (0..d8).step_by(8) {
            let (s, o) = (s.add(c * n), o.add(c * v));
            for k in (0..n8).step_by(8) {
                let mut x = [_mm256_setzero_ps(); 8];
                for (j, x) in x.iter_mut().enumerate() {
                    *x = _mm256_loadu_ps(s.add(j * n + k));
                }
                tr8(&mut x);
                for (q, x) in x.iter().enumerate() {
                    let p = o.add(*ids.get_unchecked(k + q) as usize * 8);
                    _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), *x));
                }
            }
            for k in n8..n {
                let p = o.add(*ids.get_unchecked(k) as usize * 8);
                for j in 0..8 {
                    *p.add(j) += *s.add(j * n + k);
                }
            }
        }
        for c in d8..d {
            let (s, o) = (s.add(c * n), o.add(c * v));
            for (k, &i) in ids.iter().enumerate() {
                *o.add(i as usize) += *s.add(k);
            }
        }
    }
}
