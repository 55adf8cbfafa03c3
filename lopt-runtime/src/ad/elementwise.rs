//! Elementwise primitives on vectors and matrices, with scalar and bias broadcasting.
//!
//! The rules declared in `primitives/declared.rs` applied element by element: matrix∘matrix
//! (same type), matrix∘scalar, scalar∘matrix, and a vector broadcast over the rows of a
//! `DMatrix` (numpy's last-axis rule: `x * w + b` with one example per row).
//!
//! Every loop runs over contiguous column-major slices, so it vectorizes.

use nalgebra::allocator::Allocator;
use nalgebra::{DMatrix, DVector, DefaultAllocator, Dim, OMatrix, RowDVector};

use super::op;
use super::pointwise::Pointwise2;
use super::reduce::{sum, sum_by, sum_zip3};
use super::shape::{build_like, shape_panic, zeros_like};
use super::Binary;
use crate::scalar::Real;

/// `o[i] = f(o[i], a[i], b[i], c[i])` for every element (the shortest length): the
/// in-place update every rule that writes into a buffer it owns goes through.
///
/// `o` is read through a copy of its pointer that the optimizer cannot prove equal to the
/// one it is written through ([`black_box`](std::hint::black_box)), eight elements at a
/// time. Otherwise an update that keeps some elements unchanged (`relu`'s derivative:
/// `if x > 0 { t } else { 0 }`) drops the store of the unchanged ones and is vectorized
/// as a store under a mask (`vmaskmovps`), microcoded and several times slower than the
/// load, blend and store this gives.
#[inline(always)]
pub(crate) fn update<S: Real>(o: &mut [S], a: &[S], b: &[S], c: &[S], f: impl Fn(S, S, S, S) -> S) {
    let n = o.len().min(a.len()).min(b.len()).min(c.len());
    let (a, b, c) = (&a[..n], &b[..n], &c[..n]);
    let dst = o.as_mut_ptr();
    let src = std::hint::black_box(dst as *const S);
    let (mut ac, mut bc, mut cc) = (a.chunks_exact(8), b.chunks_exact(8), c.chunks_exact(8));
    let mut i = 0;
    for ((a, b), c) in (&mut ac).zip(&mut bc).zip(&mut cc) {
        // SAFETY: `i + 8 <= n <= o.len()`, and `src == dst` point into `o`, which no
        // reference is used to access while these run; each block is read whole before
        // it is written.
        let t: [S; 8] = unsafe { src.add(i).cast::<[S; 8]>().read() };
        let r: [S; 8] = std::array::from_fn(|l| f(t[l], a[l], b[l], c[l]));
        unsafe { dst.add(i).cast::<[S; 8]>().write(r) };
        i += 8;
    }
    for ((&a, &b), &c) in ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .zip(cc.remainder())
    {
        // SAFETY: `i < n <= o.len()`, as above.
        unsafe { dst.add(i).write(f(src.add(i).read(), a, b, c)) };
        i += 1;
    }
}

/// Floats from which an elementwise pass called from outside the thread pool runs in
/// chunks on it: 1 MB of `f32`. The conv family's activations, 2048 × 32 packets of
/// `Lanes<8>` (2 MB), were passed over by one thread between convolutions that use every
/// core (measured: a third of the family's training step ran on the calling thread
/// alone). Inside the pool (a data-parallel chunk, a lane group) the work is already
/// split. Each element is computed as on one thread, so the split changes no value.
const PAR_MIN_FLOATS: usize = 1 << 18;

/// The elements per chunk of an elementwise pass over `n` elements of `S` on the thread
/// pool ([`PAR_MIN_FLOATS`]), or `None` to run it on this thread.
fn par_chunk<S: Real>(n: usize) -> Option<usize> {
    (n.saturating_mul(S::LANES) >= PAR_MIN_FLOATS && crate::kernels::pool_is_free()).then(|| {
        n.div_ceil(2 * rayon::current_num_threads())
            .next_multiple_of(8)
    })
}

/// `g[i] = f(a[i], b[i], g[i])` for every element: a cotangent computed in the buffer of
/// the output cotangent it replaces (same shape), so the reverse sweep allocates nothing.
/// Large passes run on the pool ([`par_chunk`]).
#[inline]
pub(crate) fn map_into<S: Real, R: Dim, C: Dim>(
    mut g: OMatrix<S, R, C>,
    a: &[S],
    b: &[S],
    f: impl Fn(S, S, S) -> S + Sync,
) -> OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    match par_chunk::<S>(g.len()) {
        Some(c) => map_into_chunks(g.as_mut_slice(), a, b, &f, c),
        None => update(g.as_mut_slice(), a, b, b, |t, a, b, _| f(a, b, t)),
    }
    g
}

/// [`map_into`]'s pass in chunks of `c` elements on the thread pool.
fn map_into_chunks<S: Real>(
    g: &mut [S],
    a: &[S],
    b: &[S],
    f: &(impl Fn(S, S, S) -> S + Sync),
    c: usize,
) {
    use rayon::prelude::*;
    g.par_chunks_mut(c)
        .zip(a.par_chunks(c))
        .zip(b.par_chunks(c))
        .for_each(|((g, a), b)| update(g, a, b, b, |t, a, b, _| f(a, b, t)));
}

/// `f` of every element of `x` in chunks of `c` elements on the thread pool.
fn map_chunks<S: Real, R: Dim, C: Dim>(
    x: &OMatrix<S, R, C>,
    f: impl Fn(S) -> S + Sync,
    c: usize,
) -> OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    use rayon::prelude::*;
    let n = x.len();
    let mut v: Vec<S> = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n]
        .par_chunks_mut(c)
        .zip(x.as_slice().par_chunks(c))
        .for_each(|(o, xs)| {
            for (o, &x) in o.iter_mut().zip(xs) {
                o.write(f(x));
            }
        });
    // SAFETY: the chunks of `v`'s first `n` slots and of `x` pair up one to one and
    // every slot was written.
    unsafe { v.set_len(n) };
    let (rows, cols) = x.shape_generic();
    OMatrix::from_vec_generic(rows, cols, v)
}

/// [`map_into`] with three operand slices: `g[i] = f(a[i], b[i], y[i], g[i])`.
#[inline]
fn map3_into<S: Real, R: Dim, C: Dim>(
    mut g: OMatrix<S, R, C>,
    a: &[S],
    b: &[S],
    y: &[S],
    f: impl Fn(S, S, S, S) -> S,
) -> OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    update(g.as_mut_slice(), a, b, y, |t, a, b, y| f(a, b, y, t));
    g
}

#[inline]
#[track_caller]
fn check_same<S: Real, R: Dim, C: Dim>(what: &str, a: &OMatrix<S, R, C>, b: &OMatrix<S, R, C>)
where
    DefaultAllocator: Allocator<R, C>,
{
    if a.shape() != b.shape() {
        shape_panic(
            what,
            a.shape(),
            b.shape(),
            "elementwise operands must have equal shapes",
        );
    }
}

/// `gelu_tanh`'s constants as `primitives` converts them to `f32` (`S::c` of √(2/π), and of
/// 3 × 0.044715 for the derivative).
const GELU_K: f32 = 0.797_884_560_802_865_4_f64 as f32;
const GELU_A: f32 = 0.044_715_f64 as f32;
const GELU_3A: f32 = (3.0 * 0.044_715_f64) as f32;

/// `½(1 + tanh u) = σ(2u)`, `u = √(2/π)(x + 0.044715 x³)`: `primitives`' `gelu_tanh_cdf`
/// on `f32` with the packets' `exp`, the same operations in the same order.
#[inline(always)]
fn gelu_tanh_cdf_f32(x: f32) -> f32 {
    let u = GELU_K * (x + GELU_A * (x * x * x));
    1.0 / (1.0 + crate::kernels::vecmath::exp_f32(-(u + u)))
}

/// `gelu_tanh'(x)` on `f32` as [`lift::vjp`]'s fast path computes it (`primitives`'
/// derivative with the packets' `exp`), from `cdf = gelu_tanh_cdf_f32(x)`.
#[inline(always)]
fn gelu_tanh_d_f32(x: f32, cdf: f32) -> f32 {
    let du = GELU_K * (1.0 + GELU_3A * x * x);
    cdf + x * (2.0 * cdf * (1.0 - cdf)) * du
}

/// [`gelu_tanh_cdf_f32`] and [`gelu_tanh_d_f32`] on AVX-512 registers, 16 elements at a time:
/// LLVM vectorizes the scalar loop 8 lanes wide only (the build's 256-bit preference),
/// and this loop is arithmetic, not memory, bound (`exp`'s polynomial, a division).
/// Lane for lane the scalar functions' operations in their order (see
/// [`avx512`](crate::kernels::vecmath::avx512)), so the same bits.
#[cfg(target_arch = "x86_64")]
mod gelu512 {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    use super::{GELU_3A, GELU_A, GELU_K};
    use crate::kernels::vecmath::avx512::exp16;

    /// `(x · cdf, gelu_tanh'(x))` of [`gelu_tanh_cdf_f32`](super::gelu_tanh_cdf_f32) and
    /// [`gelu_tanh_d_f32`](super::gelu_tanh_d_f32) on 16 lanes.
    ///
    /// # Safety
    /// AVX-512F (the caller's target features).
    #[inline(always)]
    unsafe fn gelu16(x: __m512) -> (__m512, __m512) {
        let s = _mm512_set1_ps;
        let (mul, add, sub) = (_mm512_mul_ps, _mm512_add_ps, _mm512_sub_ps);
        let x3 = mul(mul(x, x), x);
        let u = mul(s(GELU_K), add(x, mul(s(GELU_A), x3)));
        let z = add(u, u);
        // `-z` flips the sign bit (an integer xor: `_mm512_xor_ps` needs AVX-512DQ).
        let neg = _mm512_castsi512_ps(_mm512_xor_si512(
            _mm512_castps_si512(z),
            _mm512_set1_epi32(i32::MIN),
        ));
        let cdf = _mm512_div_ps(s(1.0), add(s(1.0), exp16(neg)));
        let du = mul(s(GELU_K), add(s(1.0), mul(mul(s(GELU_3A), x), x)));
        let q = mul(mul(s(2.0), cdf), sub(s(1.0), cdf));
        let d = add(cdf, mul(mul(x, q), du));
        (mul(x, cdf), d)
    }

    /// The lanes below `n` (`n < 16`): the loop's tail, loaded and stored under a mask
    /// (a plain masked access on AVX-512, no microcode).
    #[inline(always)]
    fn lanes(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    /// `y[i] = gelu_tanh(x[i])` and `d[i] = gelu_tanh'(x[i])` for every `i` (all three
    /// the same length).
    ///
    /// Measured on the transformer LM's training step, one thread: this loop 18% faster
    /// than the scalar one. Aligning the stores to cache lines (a masked head) and two
    /// registers per step measured no faster; nor did `g · d` on AVX-512 in the reverse
    /// rule (a pass over memory, not arithmetic).
    ///
    /// # Safety
    /// The CPU has AVX-512F, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn value_and_d(
        xs: &[f32],
        y: &mut [MaybeUninit<f32>],
        d: &mut [MaybeUninit<f32>],
    ) {
        let n = xs.len();
        assert!(y.len() == n && d.len() == n);
        let (xp, yp, dp) = (
            xs.as_ptr(),
            y.as_mut_ptr() as *mut f32,
            d.as_mut_ptr() as *mut f32,
        );
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: `i + 16 <= n`, the length of all three.
            let (v, g) = gelu16(_mm512_loadu_ps(xp.add(i)));
            _mm512_storeu_ps(yp.add(i), v);
            _mm512_storeu_ps(dp.add(i), g);
            i += 16;
        }
        if i < n {
            // SAFETY: the mask covers elements `i..n` only.
            let m = lanes(n - i);
            let (v, g) = gelu16(_mm512_maskz_loadu_ps(m, xp.add(i)));
            _mm512_mask_storeu_ps(yp.add(i), m, v);
            _mm512_mask_storeu_ps(dp.add(i), m, g);
        }
    }
}

/// Whether the `f32` `gelu_tanh` loops run on AVX-512 ([`gelu512`]): the CPU has it and
/// `LOPT_MAX_ISA` allows it.
#[cfg(target_arch = "x86_64")]
#[inline]
fn gelu_wide() -> bool {
    crate::kernels::cpu::isa() == crate::kernels::cpu::Isa::Avx512
}

/// [`gelu512::value_and_d`] where [`gelu_wide`]; `false` (nothing written) elsewhere.
#[inline]
fn gelu_value_and_d_wide(
    xs: &[f32],
    y: &mut [std::mem::MaybeUninit<f32>],
    d: &mut [std::mem::MaybeUninit<f32>],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if gelu_wide() {
        // SAFETY: `gelu_wide`: the CPU has AVX-512F, AVX2 and FMA.
        unsafe { gelu512::value_and_d(xs, y, d) };
        return true;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (xs, y, d);
    false
}

/// What [`op::GeluTanhKeep`]'s `eval` keeps: the derivative at every element, and the
/// addresses and length of the input and output it belongs to (only compared).
struct KeptGeluD {
    x: usize,
    y: usize,
    len: usize,
    d: Vec<f32>,
}

/// `gelu_tanh` keeping its derivative for the reverse sweep (see [`op::GeluTanhKeep`]).
impl<S: Real> super::Unary<op::GeluTanhKeep> for DMatrix<S> {
    type Out = DMatrix<S>;
    /// The value, [`op::GeluTanh`]'s; on `f32` the derivative is computed alongside (one
    /// `exp` per element for both) and kept in `op`.
    fn eval(&self, op: &op::GeluTanhKeep) -> DMatrix<S> {
        use std::any::TypeId;
        if TypeId::of::<S>() != TypeId::of::<f32>() {
            return super::Unary::<op::GeluTanh>::eval(self, &op::GeluTanh);
        }
        // SAFETY: `S` is `f32` (the TypeId test): the same layout.
        let xs: &[f32] =
            unsafe { std::slice::from_raw_parts(self.as_ptr() as *const f32, self.len()) };
        let n = xs.len();
        let (mut y, mut d) = (Vec::<f32>::with_capacity(n), Vec::<f32>::with_capacity(n));
        let (ys, ds) = (
            &mut y.spare_capacity_mut()[..n],
            &mut d.spare_capacity_mut()[..n],
        );
        if !gelu_value_and_d_wide(xs, ys, ds) {
            // One plain loop over the three slices (it vectorizes; `push` did not).
            for ((y, d), &x) in ys.iter_mut().zip(ds.iter_mut()).zip(xs) {
                let cdf = gelu_tanh_cdf_f32(x);
                y.write(x * cdf);
                d.write(gelu_tanh_d_f32(x, cdf));
            }
        }
        // SAFETY: `value_and_d` or the loop wrote all `n` elements of both.
        unsafe {
            y.set_len(n);
            d.set_len(n);
        }
        let mut y = std::mem::ManuallyDrop::new(y);
        // SAFETY: `S` is `f32`: the same allocation, length and capacity.
        let y: Vec<S> =
            unsafe { Vec::from_raw_parts(y.as_mut_ptr() as *mut S, y.len(), y.capacity()) };
        let y = DMatrix::from_vec(self.nrows(), self.ncols(), y);
        op.0.set(Some(Box::new(KeptGeluD {
            x: self.as_ptr() as usize,
            y: y.as_ptr() as usize,
            len: self.len(),
            d,
        })));
        y
    }

    /// [`op::GeluTanh`]'s tangent.
    fn jvp(&self, _op: &op::GeluTanhKeep, out: &DMatrix<S>, dx: &DMatrix<S>) -> DMatrix<S> {
        super::Unary::<op::GeluTanh>::jvp(self, &op::GeluTanh, out, dx)
    }

    /// `g ⊙ gelu_tanh'(x)`, with the derivative `eval` kept when it was computed from this
    /// input and output (the first call takes it), else [`op::GeluTanh`]'s rule.
    fn vjp(&self, op: &op::GeluTanhKeep, out: &DMatrix<S>, mut g: DMatrix<S>) -> DMatrix<S> {
        let kept = op.0.take().and_then(|k| k.downcast::<KeptGeluD>().ok());
        match kept {
            Some(k)
                if std::any::TypeId::of::<S>() == std::any::TypeId::of::<f32>()
                    && k.x == self.as_ptr() as usize
                    && k.y == out.as_ptr() as usize
                    && k.len == self.len()
                    && g.len() == k.len =>
            {
                // SAFETY: `S` is `f32` (the TypeId test): the same layout.
                let gs: &mut [f32] =
                    unsafe { std::slice::from_raw_parts_mut(g.as_mut_ptr() as *mut f32, g.len()) };
                gs.iter_mut().zip(&k.d).for_each(|(t, &d)| *t *= d);
                g
            }
            _ => super::Unary::<op::GeluTanh>::vjp(self, &op::GeluTanh, out, g),
        }
    }
}

/// The rules of a unary elementwise primitive (a
/// [`Pointwise`](crate::ad::Pointwise)) on any owned nalgebra matrix or vector,
/// element by element: what `primitives/` lifts every one of them with.
pub(crate) mod lift {
    use super::*;
    use crate::ad::Pointwise;

    /// The value: `f` on every element.
    ///
    /// On `f32` matrices and vectors, `exp`, `tanh`, `sigmoid` and `gelu_tanh` run the
    /// branch-free polynomials of `kernels::vecmath` (Cephes', within 3 ulp, as on
    /// packets), so the loop vectorizes; libm's are opaque scalar calls (measured: 10% of
    /// the LSTM language model's gradient, a third of the transformer's). The packets
    /// ([`Lanes`](crate::lanes::Lanes)) compute the same functions lane by lane, so for
    /// these four a matrix of lanes equals separate `f32` matrices bit for bit. A scalar
    /// `f32` keeps the platform's `exp` and `tanh` (within 1e-6 of these).
    #[inline(always)]
    pub(crate) fn eval<S: Real, R: Dim, C: Dim, P: Pointwise<S> + 'static>(
        x: &OMatrix<S, R, C>,
        op: &P,
    ) -> OMatrix<S, R, C>
    where
        DefaultAllocator: Allocator<R, C>,
    {
        if let Some(y) = eval_f32_poly::<S, R, C, P>(x) {
            return y;
        }
        if let Some(c) = par_chunk::<S>(x.len()) {
            return map_chunks(x, |x| op.f(x), c);
        }
        build_like(x, x.as_slice().iter().map(|&x| op.f(x)))
    }

    /// `exp`, `tanh` or `sigmoid` of an `f32` matrix through the vectorizing polynomials;
    /// `None` for another op or scalar type.
    #[inline(always)]
    fn eval_f32_poly<S: Real, R: Dim, C: Dim, P: 'static>(
        x: &OMatrix<S, R, C>,
    ) -> Option<OMatrix<S, R, C>>
    where
        DefaultAllocator: Allocator<R, C>,
    {
        use crate::kernels::vecmath::{exp_f32, tanh_f32};
        use std::any::TypeId;
        if TypeId::of::<S>() != TypeId::of::<f32>() {
            return None;
        }
        // SAFETY: `S` is `f32` (the TypeId test): the same layout.
        let xs: &[f32] =
            unsafe { std::slice::from_raw_parts(x.as_slice().as_ptr() as *const f32, x.len()) };
        let p = TypeId::of::<P>();
        let v: Vec<f32> = if p == TypeId::of::<op::Tanh>() {
            xs.iter().map(|&x| tanh_f32(x)).collect()
        } else if p == TypeId::of::<op::Sigmoid>() {
            // The packets' `1 / (1 + exp(-x))`, with the same `exp`.
            xs.iter().map(|&x| 1.0 / (1.0 + exp_f32(-x))).collect()
        } else if p == TypeId::of::<op::Exp>() {
            xs.iter().map(|&x| exp_f32(x)).collect()
        } else if p == TypeId::of::<op::GeluTanh>() {
            xs.iter().map(|&x| x * gelu_tanh_cdf_f32(x)).collect()
        } else {
            return None;
        };
        let mut v = std::mem::ManuallyDrop::new(v);
        // SAFETY: `S` is `f32`: the same allocation, length and capacity.
        let v: Vec<S> =
            unsafe { Vec::from_raw_parts(v.as_mut_ptr() as *mut S, v.len(), v.capacity()) };
        let (r, c) = x.shape_generic();
        Some(OMatrix::from_vec_generic(r, c, v))
    }

    /// The tangent: `f'(x) dx` on every element.
    #[inline(always)]
    pub(crate) fn jvp<S: Real, R: Dim, C: Dim, P: Pointwise<S>>(
        x: &OMatrix<S, R, C>,
        op: &P,
        out: &OMatrix<S, R, C>,
        dx: &OMatrix<S, R, C>,
    ) -> OMatrix<S, R, C>
    where
        DefaultAllocator: Allocator<R, C>,
    {
        let it = x.as_slice().iter().zip(out.as_slice()).zip(dx.as_slice());
        build_like(x, it.map(|((&x, &y), &t)| op.d(x, y, t)))
    }

    /// The cotangent `f'(x) g`, written into `g`'s buffer.
    ///
    /// `gelu_tanh`'s derivative (an `exp` polynomial, a division and a dozen more
    /// operations per element) runs as one plain loop, which inlines and vectorizes;
    /// through [`update`]'s blocks of eight it stayed a call per element (measured: 15% of
    /// the transformer LM's gradient).
    #[inline(always)]
    pub(crate) fn vjp<S: Real, R: Dim, C: Dim, P: Pointwise<S> + 'static>(
        x: &OMatrix<S, R, C>,
        op: &P,
        out: &OMatrix<S, R, C>,
        mut g: OMatrix<S, R, C>,
    ) -> OMatrix<S, R, C>
    where
        DefaultAllocator: Allocator<R, C>,
    {
        use std::any::TypeId;
        if TypeId::of::<P>() == TypeId::of::<op::GeluTanh>()
            && TypeId::of::<S>() == TypeId::of::<f32>()
        {
            // SAFETY: `S` is `f32` (the TypeId test): the same layout.
            let (gs, xs) = unsafe {
                (
                    std::slice::from_raw_parts_mut(
                        g.as_mut_slice().as_mut_ptr() as *mut f32,
                        g.len(),
                    ),
                    std::slice::from_raw_parts(x.as_slice().as_ptr() as *const f32, x.len()),
                )
            };
            for (t, &x) in gs.iter_mut().zip(xs) {
                // `primitives`' derivative of `gelu_tanh`, with the packets' `exp`.
                let cdf = gelu_tanh_cdf_f32(x);
                *t *= gelu_tanh_d_f32(x, cdf);
            }
            return g;
        }
        if TypeId::of::<P>() == TypeId::of::<op::GeluTanh>() {
            let it = g
                .as_mut_slice()
                .iter_mut()
                .zip(x.as_slice())
                .zip(out.as_slice());
            for ((t, &x), &y) in it {
                *t = op.d(x, y, *t);
            }
            return g;
        }
        map_into(g, x.as_slice(), out.as_slice(), |x, y, t| op.d(x, y, t))
    }
}

// ---- matrix ∘ matrix (same type) ----

#[inline]
#[track_caller]
fn mm_eval<S: Real, Op: Pointwise2<S>, R: Dim, C: Dim>(
    a: &OMatrix<S, R, C>,
    b: &OMatrix<S, R, C>,
) -> OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    check_same(Op::NAME, a, b);
    build_like(
        a,
        a.as_slice()
            .iter()
            .zip(b.as_slice())
            .map(|(&a, &b)| Op::f(a, b)),
    )
}

#[inline]
fn mm_jvp<S: Real, Op: Pointwise2<S>, R: Dim, C: Dim>(
    a: &OMatrix<S, R, C>,
    b: &OMatrix<S, R, C>,
    y: &OMatrix<S, R, C>,
    da: Option<&OMatrix<S, R, C>>,
    db: Option<&OMatrix<S, R, C>>,
) -> OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    let ab = a.as_slice().iter().zip(b.as_slice()).zip(y.as_slice());
    match (da, db) {
        (Some(da), Some(db)) => build_like(
            a,
            ab.zip(da.as_slice())
                .zip(db.as_slice())
                .map(|((((&a, &b), &y), &ta), &tb)| Op::da(a, b, y, ta) + Op::db(a, b, y, tb)),
        ),
        (Some(da), None) => build_like(
            a,
            ab.zip(da.as_slice())
                .map(|(((&a, &b), &y), &t)| Op::da(a, b, y, t)),
        ),
        (None, Some(db)) => build_like(
            a,
            ab.zip(db.as_slice())
                .map(|(((&a, &b), &y), &t)| Op::db(a, b, y, t)),
        ),
        (None, None) => zeros_like(a),
    }
}

type Pair<T> = (Option<T>, Option<T>);

/// `Op::da` written over `g` (nothing to do when it is `g` itself).
#[inline]
fn da_into<S: Real, Op: Pointwise2<S>, R: Dim, C: Dim>(
    g: OMatrix<S, R, C>,
    a: &[S],
    b: &[S],
    y: &[S],
) -> OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    if Op::DA_IS_T {
        g
    } else {
        map3_into(g, a, b, y, Op::da)
    }
}

#[inline]
fn mm_vjp<S: Real, Op: Pointwise2<S>, R: Dim, C: Dim>(
    a: &OMatrix<S, R, C>,
    b: &OMatrix<S, R, C>,
    y: &OMatrix<S, R, C>,
    g: OMatrix<S, R, C>,
    need_a: bool,
    need_b: bool,
) -> Pair<OMatrix<S, R, C>>
where
    DefaultAllocator: Allocator<R, C>,
{
    let (xa, xb, xy) = (a.as_slice(), b.as_slice(), y.as_slice());
    let aby = || xa.iter().zip(xb).zip(xy);
    // One cotangent is written over `g` (each element read before it is overwritten);
    // only when both are needed is a second buffer allocated, first.
    match (need_a, need_b) {
        (true, true) => {
            let db = build_like(
                a,
                aby()
                    .zip(g.as_slice())
                    .map(|(((&a, &b), &y), &t)| Op::db(a, b, y, t)),
            );
            (Some(da_into::<S, Op, R, C>(g, xa, xb, xy)), Some(db))
        }
        (true, false) => (Some(da_into::<S, Op, R, C>(g, xa, xb, xy)), None),
        (false, true) if Op::DB_IS_T => (None, Some(g)),
        (false, true) => (None, Some(map3_into(g, xa, xb, xy, Op::db))),
        (false, false) => (None, None),
    }
}

macro_rules! matrix_matrix {
    ($($op:ty),* $(,)?) => {$(
        impl<S: Real, R: Dim, C: Dim> Binary<$op, OMatrix<S, R, C>> for OMatrix<S, R, C>
        where
            DefaultAllocator: Allocator<R, C>,
        {
            type Out = Self;
            #[inline]
            #[track_caller]
            fn eval(&self, b: &Self) -> Self {
                mm_eval::<S, $op, R, C>(self, b)
            }
            #[inline]
            fn jvp(&self, b: &Self, out: &Self, da: Option<&Self>, db: Option<&Self>) -> Self {
                mm_jvp::<S, $op, R, C>(self, b, out, da, db)
            }
            #[inline]
            fn vjp(
                &self,
                b: &Self,
                out: &Self,
                g: Self,
                need_a: bool,
                need_b: bool,
            ) -> (Option<Self>, Option<Self>) {
                mm_vjp::<S, $op, R, C>(self, b, out, g, need_a, need_b)
            }
        }
    )*};
}

// ---- matrix ∘ scalar and scalar ∘ matrix ----
//
// `SWAP = false`: the matrix is the left operand, `f(m_i, s)`; `true`: `f(s, m_i)`.

/// `(left, right)` operands in the order the op sees them.
#[inline(always)]
fn ord<S, const SWAP: bool>(m: S, s: S) -> (S, S) {
    if SWAP {
        (s, m)
    } else {
        (m, s)
    }
}

/// Whether the matrix side's partial derivative passes the cotangent through unchanged.
#[inline(always)]
fn m_side_is_t<S: Real, Op: Pointwise2<S>, const SWAP: bool>() -> bool {
    if SWAP {
        Op::DB_IS_T
    } else {
        Op::DA_IS_T
    }
}

/// The partial derivatives with respect to the matrix side and the scalar side.
#[inline(always)]
fn d_sides<S: Real, Op: Pointwise2<S>, const SWAP: bool>(m: S, s: S, y: S, tm: S, ts: S) -> (S, S) {
    let (a, b) = ord::<S, SWAP>(m, s);
    if SWAP {
        (Op::db(a, b, y, tm), Op::da(a, b, y, ts))
    } else {
        (Op::da(a, b, y, tm), Op::db(a, b, y, ts))
    }
}

#[inline]
fn ms_eval<S: Real, Op: Pointwise2<S>, const SWAP: bool, R: Dim, C: Dim>(
    m: &OMatrix<S, R, C>,
    s: S,
) -> OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    build_like(
        m,
        m.as_slice().iter().map(|&x| {
            let (a, b) = ord::<S, SWAP>(x, s);
            Op::f(a, b)
        }),
    )
}

#[inline]
fn ms_jvp<S: Real, Op: Pointwise2<S>, const SWAP: bool, R: Dim, C: Dim>(
    m: &OMatrix<S, R, C>,
    s: S,
    y: &OMatrix<S, R, C>,
    dm: Option<&OMatrix<S, R, C>>,
    ds: Option<&S>,
) -> OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    let my = m.as_slice().iter().zip(y.as_slice());
    let z = S::zero();
    match (dm, ds) {
        (Some(dm), Some(&ds)) => build_like(
            m,
            my.zip(dm.as_slice()).map(|((&x, &y), &t)| {
                let (pm, ps) = d_sides::<S, Op, SWAP>(x, s, y, t, ds);
                pm + ps
            }),
        ),
        (Some(dm), None) => build_like(
            m,
            my.zip(dm.as_slice())
                .map(|((&x, &y), &t)| d_sides::<S, Op, SWAP>(x, s, y, t, z).0),
        ),
        (None, Some(&ds)) => build_like(
            m,
            my.map(|(&x, &y)| d_sides::<S, Op, SWAP>(x, s, y, z, ds).1),
        ),
        (None, None) => zeros_like(m),
    }
}

/// Cotangents of the matrix side and of the scalar side (a sum over elements).
#[inline]
fn ms_vjp<S: Real, Op: Pointwise2<S>, const SWAP: bool, R: Dim, C: Dim>(
    m: &OMatrix<S, R, C>,
    s: S,
    y: &OMatrix<S, R, C>,
    g: OMatrix<S, R, C>,
    need_m: bool,
    need_s: bool,
) -> (Option<OMatrix<S, R, C>>, Option<S>)
where
    DefaultAllocator: Allocator<R, C>,
{
    let z = S::zero();
    // The scalar's sum reads `g` before the matrix's cotangent overwrites it.
    let ds = need_s.then(|| {
        let (x, y, g) = (m.as_slice(), y.as_slice(), g.as_slice());
        let n = x.len().min(y.len()).min(g.len());
        sum_by(n, |i| d_sides::<S, Op, SWAP>(x[i], s, y[i], z, g[i]).1)
    });
    let dm = need_m.then(|| {
        if m_side_is_t::<S, Op, SWAP>() {
            return g;
        }
        map_into(g, m.as_slice(), y.as_slice(), |x, y, g| {
            d_sides::<S, Op, SWAP>(x, s, y, g, z).0
        })
    });
    (dm, ds)
}

macro_rules! matrix_scalar {
    ($($op:ty),* $(,)?) => {$(
        impl<S: Real, R: Dim, C: Dim> Binary<$op, S> for OMatrix<S, R, C>
        where
            DefaultAllocator: Allocator<R, C>,
        {
            type Out = Self;
            #[inline]
            fn eval(&self, b: &S) -> Self {
                ms_eval::<S, $op, false, R, C>(self, *b)
            }
            #[inline]
            fn jvp(&self, b: &S, out: &Self, da: Option<&Self>, db: Option<&S>) -> Self {
                ms_jvp::<S, $op, false, R, C>(self, *b, out, da, db)
            }
            #[inline]
            fn vjp(
                &self,
                b: &S,
                out: &Self,
                g: Self,
                need_a: bool,
                need_b: bool,
            ) -> (Option<Self>, Option<S>) {
                ms_vjp::<S, $op, false, R, C>(self, *b, out, g, need_a, need_b)
            }
        }
    )*};
}

macro_rules! scalar_matrix {
    ($($op:ty),* $(,)?) => {$(
        impl<S: Real, R: Dim, C: Dim> Binary<$op, OMatrix<S, R, C>> for S
        where
            DefaultAllocator: Allocator<R, C>,
        {
            type Out = OMatrix<S, R, C>;
            #[inline]
            fn eval(&self, b: &OMatrix<S, R, C>) -> Self::Out {
                ms_eval::<S, $op, true, R, C>(b, *self)
            }
            #[inline]
            fn jvp(
                &self,
                b: &OMatrix<S, R, C>,
                out: &Self::Out,
                da: Option<&S>,
                db: Option<&OMatrix<S, R, C>>,
            ) -> Self::Out {
                ms_jvp::<S, $op, true, R, C>(b, *self, out, db, da)
            }
            #[inline]
            fn vjp(
                &self,
                b: &OMatrix<S, R, C>,
                out: &Self::Out,
                g: Self::Out,
                need_a: bool,
                need_b: bool,
            ) -> (Option<S>, Option<OMatrix<S, R, C>>) {
                let (dm, ds) = ms_vjp::<S, $op, true, R, C>(b, *self, out, g, need_b, need_a);
                (ds, dm)
            }
        }
    )*};
}

// ---- a vector broadcast over the rows of a DMatrix ----
//
// `m[(i, j)] ∘ v[j]` for every row i; the vector's length must equal the matrix's number
// of columns. `SWAP = true` when the vector is the left operand.

#[inline]
#[track_caller]
fn bias_check<S: Real>(what: &str, m: &DMatrix<S>, v: (usize, usize), swap: bool) {
    if v.0 * v.1 != m.ncols() {
        let (a, b) = if swap { (v, m.shape()) } else { (m.shape(), v) };
        shape_panic(
            what,
            a,
            b,
            "a vector broadcast over the rows of a matrix must have one entry per column",
        );
    }
}

/// Elements from which a bias pass over a matrix runs in chunks of columns on the thread
/// pool (4 MB of `f32`: the LSTM layer's `x·W_x + b`, 4096 × 512, would otherwise be a
/// serial pass between two threaded products). Each element, and each column's sum, is
/// computed as on one thread, so the results do not depend on the split.
const BIAS_PAR_MIN: usize = 1 << 20;

/// Whether a bias pass over `m` runs on the pool ([`BIAS_PAR_MIN`] elements, or what
/// [`par_chunk`] splits), and then the columns per chunk.
fn bias_par<S: Real>(m: &DMatrix<S>) -> Option<usize> {
    let large = m.len() >= BIAS_PAR_MIN || par_chunk::<S>(m.len()).is_some();
    (large && m.nrows() > 0 && rayon::current_num_threads() > 1)
        .then(|| m.ncols().div_ceil(2 * rayon::current_num_threads()).max(1))
}

#[inline]
fn bias_eval<S: Real, Op: Pointwise2<S>, const SWAP: bool>(m: &DMatrix<S>, v: &[S]) -> DMatrix<S> {
    let r = m.nrows();
    let f = |o: &mut [std::mem::MaybeUninit<S>], col: &[S], vj: S| {
        for (o, &x) in o.iter_mut().zip(col) {
            let (a, b) = ord::<S, SWAP>(x, vj);
            o.write(Op::f(a, b));
        }
    };
    let mut out = Vec::with_capacity(m.len());
    if let Some(per) = bias_par(m) {
        use rayon::prelude::*;
        let n = m.len();
        out.spare_capacity_mut()[..n]
            .par_chunks_mut(r * per)
            .zip(m.as_slice().par_chunks(r * per))
            .zip(v.par_chunks(per))
            .for_each(|((o, mc), vc)| {
                for ((o, col), &vj) in o.chunks_mut(r).zip(mc.chunks(r)).zip(vc) {
                    f(o, col, vj);
                }
            });
        // SAFETY: the chunks cover all `n` elements (`r · per` each, the last cut short,
        // as the matrix's and the vector's chunks) and each element was written.
        unsafe { out.set_len(n) };
        return DMatrix::from_vec(r, m.ncols(), out);
    }
    for (col, &vj) in m.as_slice().chunks_exact(r.max(1)).zip(v) {
        out.extend(col.iter().map(|&x| {
            let (a, b) = ord::<S, SWAP>(x, vj);
            Op::f(a, b)
        }));
    }
    DMatrix::from_vec(r, m.ncols(), out)
}

#[inline]
fn bias_jvp<S: Real, Op: Pointwise2<S>, const SWAP: bool>(
    m: &DMatrix<S>,
    v: &[S],
    y: &DMatrix<S>,
    dm: Option<&DMatrix<S>>,
    dv: Option<&[S]>,
) -> DMatrix<S> {
    let r = m.nrows().max(1);
    let z = S::zero();
    let mut out = Vec::with_capacity(m.len());
    for (j, (col, ycol)) in m
        .as_slice()
        .chunks_exact(r)
        .zip(y.as_slice().chunks_exact(r))
        .enumerate()
    {
        let (vj, tv) = (v[j], dv.map_or(z, |d| d[j]));
        let cy = col.iter().zip(ycol);
        match dm {
            Some(dm) => out.extend(cy.zip(&dm.as_slice()[j * r..(j + 1) * r]).map(
                |((&x, &y), &t)| {
                    let (pm, pv) = d_sides::<S, Op, SWAP>(x, vj, y, t, tv);
                    pm + pv
                },
            )),
            None => out.extend(cy.map(|(&x, &y)| d_sides::<S, Op, SWAP>(x, vj, y, z, tv).1)),
        }
    }
    DMatrix::from_vec(m.nrows(), m.ncols(), out)
}

/// Cotangents of the matrix and of the vector (column sums).
#[inline]
fn bias_vjp<S: Real, Op: Pointwise2<S>, const SWAP: bool>(
    m: &DMatrix<S>,
    v: &[S],
    y: &DMatrix<S>,
    mut g: DMatrix<S>,
    need_m: bool,
    need_v: bool,
) -> (Option<DMatrix<S>>, Option<Vec<S>>) {
    let r = m.nrows().max(1);
    let z = S::zero();
    // The matrix's cotangent, written over `g` a column at a time; `each` sees every
    // finished column while it is in cache.
    let write_dm = |g: &mut DMatrix<S>, each: &mut dyn FnMut(&[S])| {
        let cols = m
            .as_slice()
            .chunks_exact(r)
            .zip(y.as_slice().chunks_exact(r))
            .zip(g.as_mut_slice().chunks_exact_mut(r))
            .zip(v);
        for (((col, ycol), gcol), &vj) in cols {
            update(gcol, col, ycol, ycol, |t, x, y, _| {
                d_sides::<S, Op, SWAP>(x, vj, y, t, z).0
            });
            each(gcol);
        }
    };
    if Op::DB_IS_DA && need_m && need_v && m.nrows() > 0 {
        // The vector's cotangent is the column sums of the matrix's: one sweep writes a
        // column of it over `g` and sums it (the same sums, in the same order, as below).
        let mut dv = Vec::with_capacity(v.len());
        write_dm(&mut g, &mut |gcol| dv.push(sum(gcol)));
        return (Some(g), Some(dv));
    }
    // The vector's column sums read `g` before the matrix's cotangent overwrites it.
    let dv = need_v.then(|| {
        if m.nrows() == 0 {
            return vec![z; v.len()];
        }
        let col_sum = |j: usize| {
            let cols = j * r..(j + 1) * r;
            let (x, yc, gc) = (
                &m.as_slice()[cols.clone()],
                &y.as_slice()[cols.clone()],
                &g.as_slice()[cols],
            );
            let vj = v[j];
            sum_zip3(x, yc, gc, |x, y, g| {
                d_sides::<S, Op, SWAP>(x, vj, y, z, g).1
            })
        };
        if let Some(per) = bias_par(m) {
            use rayon::prelude::*;
            return (0..v.len())
                .into_par_iter()
                .with_min_len(per)
                .map(col_sum)
                .collect();
        }
        (0..v.len()).map(col_sum).collect()
    });
    let dm = need_m.then(|| {
        if !m_side_is_t::<S, Op, SWAP>() {
            write_dm(&mut g, &mut |_| {});
        }
        g
    });
    (dm, dv)
}

macro_rules! bias {
    ($op:ty, $V:ident) => {
        impl<S: Real> Binary<$op, $V<S>> for DMatrix<S> {
            type Out = DMatrix<S>;
            #[inline]
            #[track_caller]
            fn eval(&self, b: &$V<S>) -> DMatrix<S> {
                bias_check(<$op as Pointwise2<S>>::NAME, self, b.shape(), false);
                bias_eval::<S, $op, false>(self, b.as_slice())
            }
            #[inline]
            fn jvp(
                &self,
                b: &$V<S>,
                out: &DMatrix<S>,
                da: Option<&Self>,
                db: Option<&$V<S>>,
            ) -> DMatrix<S> {
                bias_jvp::<S, $op, false>(self, b.as_slice(), out, da, db.map(|d| d.as_slice()))
            }
            #[inline]
            fn vjp(
                &self,
                b: &$V<S>,
                out: &DMatrix<S>,
                g: DMatrix<S>,
                need_a: bool,
                need_b: bool,
            ) -> (Option<Self>, Option<$V<S>>) {
                let (dm, dv) =
                    bias_vjp::<S, $op, false>(self, b.as_slice(), out, g, need_a, need_b);
                (dm, dv.map($V::from_vec))
            }
        }

        impl<S: Real> Binary<$op, DMatrix<S>> for $V<S> {
            type Out = DMatrix<S>;
            #[inline]
            #[track_caller]
            fn eval(&self, b: &DMatrix<S>) -> DMatrix<S> {
                bias_check(<$op as Pointwise2<S>>::NAME, b, self.shape(), true);
                bias_eval::<S, $op, true>(b, self.as_slice())
            }
            #[inline]
            fn jvp(
                &self,
                b: &DMatrix<S>,
                out: &DMatrix<S>,
                da: Option<&Self>,
                db: Option<&DMatrix<S>>,
            ) -> DMatrix<S> {
                bias_jvp::<S, $op, true>(b, self.as_slice(), out, db, da.map(|d| d.as_slice()))
            }
            #[inline]
            fn vjp(
                &self,
                b: &DMatrix<S>,
                out: &DMatrix<S>,
                g: DMatrix<S>,
                need_a: bool,
                need_b: bool,
            ) -> (Option<Self>, Option<DMatrix<S>>) {
                let (dm, dv) = bias_vjp::<S, $op, true>(b, self.as_slice(), out, g, need_b, need_a);
                (dv.map($V::from_vec), dm)
            }
        }
    };
}
/// The rules of each elementwise binary primitive on the shapes its declaration names
/// (`on: [..]` in `crate::primitives::declared`; `scalars` is `pointwise.rs`'s).
macro_rules! lift_binary {
    ($op:ty: [$($form:ident),*]) => { $( lift_binary!(@$form $op); )* };
    (@scalars $op:ty) => {};
    (@matrices $op:ty) => { matrix_matrix!($op); };
    (@matrix_scalar $op:ty) => { matrix_scalar!($op); };
    (@scalar_matrix $op:ty) => { scalar_matrix!($op); };
    (@bias $op:ty) => {
        bias!($op, DVector);
        bias!($op, RowDVector);
    };
}
crate::primitives::declared::for_each_elementwise_binary!(lift_binary);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ad::pointwise::Pointwise;
    use crate::lanes::Lanes;

    /// The chunked passes on the pool give every element exactly what one pass gives
    /// (`Lanes<8>` and `f32`, chunk sizes that do and do not divide the length, 1 and 3
    /// threads), and the calling thread of a pool never splits again. Catches (tried):
    /// the output's chunks paired with the input's one chunk late (`skip(1)`), and the
    /// operands' chunks cut at another size than the output's.
    #[test]
    fn chunked_elementwise_passes_equal_one_pass() {
        let x = DMatrix::from_fn(37, 5, |i, j| {
            Lanes::<8>::from_lanes(|l| ((i * 7 + j * 3 + l) as f64 * 0.37).sin() * 3.0)
        });
        let g = x.map(|v| v * Lanes::splat(0.5) + Lanes::splat(1.0));
        let op = op::Tanh;
        let one_eval = build_like(&x, x.as_slice().iter().map(|&v| op.f(v)));
        let mut one_vjp = g.clone();
        update(
            one_vjp.as_mut_slice(),
            x.as_slice(),
            one_eval.as_slice(),
            one_eval.as_slice(),
            |t, x, y, _| op.d(x, y, t),
        );
        for threads in [1, 3] {
            for c in [8, 24, 64, 185, 400] {
                let got = crate::on_threads(threads, || map_chunks(&x, |v| op.f(v), c));
                assert_eq!(got, one_eval, "value, chunks of {c}, {threads} threads");
                let mut gv = g.clone();
                crate::on_threads(threads, || {
                    map_into_chunks(
                        gv.as_mut_slice(),
                        x.as_slice(),
                        one_eval.as_slice(),
                        &|x, y, t| op.d(x, y, t),
                        c,
                    )
                });
                assert_eq!(gv, one_vjp, "cotangent, chunks of {c}, {threads} threads");
            }
        }
        let xf = x.map(|v| v.lane(3) as f32);
        let want = xf.map(|v| v.max(0.0));
        assert_eq!(
            crate::on_threads(3, || map_chunks(&xf, |v| v.max(0.0), 16)),
            want
        );
        // A pool's own threads already share the work: no further split from inside.
        assert_eq!(crate::on_threads(3, || par_chunk::<f32>(1 << 22)), None);
        assert_eq!(par_chunk::<Lanes<8>>(100), None);
    }

    /// `f32` arguments for the bit-equality tests of the `gelu_tanh` loops: every 2003rd
    /// bit pattern (all exponents: subnormals, NaNs of both signs and several payloads,
    /// both infinities), a sweep of [−16, 16] by 2⁻¹² (where `σ(2u)` leaves 0 and 1 and
    /// its `exp` saturates), and ±0, ±∞, NaN, the extreme finite and the
    /// smallest subnormal values; an odd count, so the loops' masked tail runs.
    fn gelu_arguments() -> Vec<f32> {
        let mut xs: Vec<f32> = (0..=u32::MAX).step_by(2003).map(f32::from_bits).collect();
        xs.extend((-(16 << 12)..=(16 << 12)).map(|i| i as f32 / 4096.0));
        xs.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::MAX,
            f32::MIN,
            f32::from_bits(1),
            -f32::from_bits(1),
        ]);
        if xs.len().is_multiple_of(16) {
            xs.push(0.3);
        }
        xs
    }

    /// The first `x` where `got` and `want` differ in any bit.
    fn first_difference(xs: &[f32], got: &[f32], want: &[f32]) -> Option<(f32, f32, f32)> {
        let i = (0..xs.len()).find(|&i| got[i].to_bits() != want[i].to_bits())?;
        Some((xs[i], got[i], want[i]))
    }

    /// The AVX-512 `gelu_tanh` loop gives the scalar functions' bits (the value and the
    /// derivative) for every argument of [`gelu_arguments`], NaNs included, and
    /// `GeluTanhKeep` on `f32` (its value, and the cotangent from the kept derivative)
    /// does under whatever `LOPT_MAX_ISA` selects (AVX-512, or the scalar loop under
    /// `avx2` and `portable`).
    ///
    /// Catches: a fused multiply-add where the scalar code rounds twice or the reverse
    /// (tried: the derivative's last multiply and add as one fused multiply-add, and the
    /// polynomial of `exp16` with separate multiplies and adds, which fail here), and a
    /// tail left unwritten (tried: fails on the last arguments).
    #[test]
    fn gelu_loops_are_the_scalar_functions_bit_for_bit() {
        use std::mem::MaybeUninit;
        let xs = gelu_arguments();
        let n = xs.len();
        let (mut yw, mut dw) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for &x in &xs {
            let cdf = gelu_tanh_cdf_f32(x);
            yw.push(x * cdf);
            dw.push(gelu_tanh_d_f32(x, cdf));
        }
        // Cotangents: the arguments themselves reversed (all kinds of values again).
        let g: Vec<f32> = xs.iter().rev().copied().collect();
        let gw: Vec<f32> = g.iter().zip(&dw).map(|(&g, &d)| g * d).collect();
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::cpu::Isa::Avx512.supported() {
            let mut y = vec![MaybeUninit::new(f32::NAN); n];
            let mut d = vec![MaybeUninit::new(f32::NAN); n];
            // SAFETY: the CPU has AVX-512F (and with it AVX2 and FMA).
            unsafe { gelu512::value_and_d(&xs, &mut y, &mut d) };
            // SAFETY: initialized above (and every element written).
            let (y, d): (Vec<f32>, Vec<f32>) = unsafe {
                (
                    y.iter().map(|v| v.assume_init()).collect(),
                    d.iter().map(|v| v.assume_init()).collect(),
                )
            };
            assert_eq!(first_difference(&xs, &y, &yw), None, "value (x, got, want)");
            assert_eq!(
                first_difference(&xs, &d, &dw),
                None,
                "derivative (x, got, want)"
            );
        } else {
            eprintln!("no AVX-512 on this CPU: only the dispatched path is compared");
        }
        // Through the rule, on whatever path this run dispatches to.
        let x = DMatrix::from_vec(n, 1, xs.clone());
        let keep = op::GeluTanhKeep::new();
        let y = super::super::Unary::eval(&x, &keep);
        assert_eq!(
            first_difference(&xs, y.as_slice(), &yw),
            None,
            "rule's value"
        );
        let gm = DMatrix::from_vec(n, 1, g);
        let gx = super::super::Unary::vjp(&x, &keep, &y, gm);
        assert_eq!(
            first_difference(&xs, gx.as_slice(), &gw),
            None,
            "rule's cotangent"
        );
    }
}
