//! GEMM against a plain loop, for every variant this CPU runs.

use super::*;

const SIZES: [usize; 8] = [1, 5, 7, 17, 33, 64, 128, 129];

/// Deterministic values in [-1, 1) (a 64-bit LCG's high bits).
fn values(len: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect()
}

/// A logical `rows x cols` matrix stored column-major, or stored as its transpose
/// (row-major) and viewed through `t()`.
struct Stored {
    data: Vec<f64>,
    rows: usize,
    cols: usize,
    transposed: bool,
}

impl Stored {
    fn new(rows: usize, cols: usize, transposed: bool, seed: u64) -> Self {
        Stored {
            data: values(rows * cols, seed),
            rows,
            cols,
            transposed,
        }
    }
    /// Logical element `(i, j)`.
    fn get(&self, i: usize, j: usize) -> f64 {
        if self.transposed {
            self.data[j + i * self.cols]
        } else {
            self.data[i + j * self.rows]
        }
    }
    fn view<'a, S: Copy>(&self, data: &'a [S]) -> MatRef<'a, S> {
        if self.transposed {
            MatRef::col_major(data, self.cols, self.rows).unwrap().t()
        } else {
            MatRef::col_major(data, self.rows, self.cols).unwrap()
        }
    }
    fn f32s(&self) -> Vec<f32> {
        self.data.iter().map(|&x| x as f32).collect()
    }
}

/// The f64 reference `c0 + a·b` by a plain triple loop, and the error scale
/// `|c0| + Σ_p |a_ip b_pj|` of each element.
fn reference(a: &Stored, b: &Stored, c0: Option<&[f64]>) -> (Vec<f64>, Vec<f64>) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let mut want = vec![0.0; m * n];
    let mut scale = vec![0.0; m * n];
    for j in 0..n {
        for i in 0..m {
            let (mut s, mut t) = c0.map_or((0.0, 0.0), |c| (c[i + j * m], c[i + j * m].abs()));
            for p in 0..k {
                s += a.get(i, p) * b.get(p, j);
                t += (a.get(i, p) * b.get(p, j)).abs();
            }
            want[i + j * m] = s;
            scale[i + j * m] = t;
        }
    }
    (want, scale)
}

/// Every element within the classic bound `(k + 2) u Σ|a b|` of a k-term dot product
/// in precision `u` (plus the reference's own, much smaller, f64 error).
#[track_caller]
fn check(got: &[f64], want: &[f64], scale: &[f64], k: usize, u: f64, what: &str) {
    assert_eq!(got.len(), want.len());
    for (idx, ((&g, &w), &s)) in got.iter().zip(want).zip(scale).enumerate() {
        let tol = (k as f64 + 2.0) * u * s + 1e-300;
        assert!(
            (g - w).abs() <= tol,
            "{what}: element {idx}: got {g}, want {w}, |error| {:e} > {tol:e}",
            (g - w).abs()
        );
    }
}

/// Shapes: every combination of the sizes up to 2^14 multiply-adds, and every size in
/// each dimension with the other two at 7 and 33.
fn shapes() -> Vec<(usize, usize, usize)> {
    let mut v = Vec::new();
    for &m in &SIZES {
        for &k in &SIZES {
            for &n in &SIZES {
                let others = [(m, k), (k, n), (m, n)].contains(&(7, 33));
                if m * k * n <= 1 << 14 || others {
                    v.push((m, k, n));
                }
            }
        }
    }
    // k beyond one packed chunk (256 or 512 elements)
    v.extend([(17, 600, 5), (40, 1100, 4)]);
    v.extend([
        (128, 64, 32),
        (64, 128, 32),
        (128, 32, 10),
        (32, 128, 10),
        (128, 10, 32),
    ]);
    v
}

fn run<S: Real>(isa: Isa, a: MatRef<'_, S>, b: MatRef<'_, S>, c: &mut [S], acc: bool) {
    assert!(isa.supported());
    assert_eq!((a.cols(), c.len()), (b.rows(), a.rows() * b.cols()));
    // SAFETY: shapes checked above, `c` initialized, `isa` supported.
    unsafe { gemm_with(isa, a, b, c.as_mut_ptr(), acc) }
}

/// All four transposition variants, `=` and `+=`, f32 and f64, against the f64 loop.
fn check_variant(isa: Isa) {
    for (m, k, n) in shapes() {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let seed = (m * 1_000_000 + k * 1000 + n) as u64 * 4 + (ta as u64) * 2 + tb as u64;
            let a = Stored::new(m, k, ta, seed);
            let b = Stored::new(k, n, tb, seed + 7);
            let c0 = values(m * n, seed + 11);
            let what = format!("{isa:?} {m}x{k}x{n} ta={ta} tb={tb}");
            // f64; the output starts as NaN so any element read before written shows.
            let (want, scale) = reference(&a, &b, None);
            let mut c = vec![f64::NAN; m * n];
            run(isa, a.view(&a.data), b.view(&b.data), &mut c, false);
            check(&c, &want, &scale, k, f64::EPSILON, &what);
            let (want_acc, scale_acc) = reference(&a, &b, Some(&c0));
            let mut c = c0.clone();
            run(isa, a.view(&a.data), b.view(&b.data), &mut c, true);
            check(&c, &want_acc, &scale_acc, k + 1, f64::EPSILON, &what);
            // f32 (the inputs are rounded to f32 first, so the reference is exact
            // for the f32 operands up to f64 rounding)
            let (a32, b32) = (a.f32s(), b.f32s());
            let a_r = Stored {
                data: a32.iter().map(|&x| x as f64).collect(),
                ..a
            };
            let b_r = Stored {
                data: b32.iter().map(|&x| x as f64).collect(),
                ..b
            };
            let (want, scale) = reference(&a_r, &b_r, None);
            let mut c = vec![f32::NAN; m * n];
            run(isa, a_r.view(&a32), b_r.view(&b32), &mut c, false);
            let c: Vec<f64> = c.iter().map(|&x| x as f64).collect();
            check(&c, &want, &scale, k, f32::EPSILON as f64, &what);
        }
    }
}

#[test]
fn portable_kernels_match_f64_loop_for_all_transpositions_and_odd_shapes() {
    check_variant(Isa::Portable);
}

#[test]
fn dispatched_kernels_match_f64_loop_and_portable() {
    for isa in [Isa::Avx2, Isa::Avx512] {
        if !isa.supported() {
            eprintln!("{isa:?} not supported by this CPU: skipped");
            continue;
        }
        check_variant(isa);
        // and against the portable variant directly
        for (m, k, n) in [(128, 64, 32), (128, 32, 10), (33, 129, 17), (1, 64, 10)] {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let a = Stored::new(m, k, ta, 3);
                let b = Stored::new(k, n, tb, 4);
                let (want, scale) = reference(&a, &b, None);
                let (a32, b32) = (a.f32s(), b.f32s());
                let mut x = vec![0f32; m * n];
                let mut y = vec![0f32; m * n];
                run(isa, a.view(&a32), b.view(&b32), &mut x, false);
                run(Isa::Portable, a.view(&a32), b.view(&b32), &mut y, false);
                let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
                let y: Vec<f64> = y.iter().map(|&v| v as f64).collect();
                // two f32 results, each within (k+2)u Σ|ab| of the exact f32-operand
                // product, are within twice that of each other; the f32 inputs
                // differ from `a` by 2^-24 relative, covered by one more u
                check(
                    &x,
                    &y,
                    &scale,
                    2 * k + 6,
                    f32::EPSILON as f64,
                    "vs portable",
                );
                let _ = want;
            }
        }
    }
}

/// Broadcast-kernel products (at least one vector of rows and `PACK_MIN_N` columns)
/// compute every element as one multiply-add chain in order of `k`: bit for bit the
/// scalar chain, whatever the layout of the operands. `k = 300, 600` take several
/// chunks of `k` in both the packed and the in-place path (mutation tried: a chunk
/// after the first starting from zero instead of continuing from `C`, in the in-place
/// path: this and three other tests fail). Every shape has at least 16 rows, one
/// AVX-512 vector (a transposed `A` of 8 rows takes the dot kernel there).
#[test]
fn broadcast_products_are_the_sequential_chain_bit_for_bit() {
    fn chain<M: Madd>(a: &Stored, b: &Stored, a32: &[f32], b32: &[f32], acc: &[f32]) -> Vec<f32> {
        let (m, k, n) = (a.rows, a.cols, b.cols);
        let (va, vb) = (a.view(a32), b.view(b32));
        let mut c = acc.to_vec();
        for j in 0..n {
            for i in 0..m {
                let mut s = c[i + j * m];
                for p in 0..k {
                    s = M::madd(va.at(i, p), vb.at(p, j), s);
                }
                c[i + j * m] = s;
            }
        }
        c
    }
    for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
        if !isa.supported() {
            continue;
        }
        for (m, k, n) in [
            (128, 64, 32),
            (33, 129, 7),
            (16, 300, 4),
            (20, 600, 5),
            (17, 5, 17),
        ] {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let a = Stored::new(m, k, ta, 5);
                let b = Stored::new(k, n, tb, 6);
                let (a32, b32) = (a.f32s(), b.f32s());
                let c0: Vec<f32> = values(m * n, 7).iter().map(|&x| x as f32).collect();
                for acc in [false, true] {
                    let start = if acc { c0.clone() } else { vec![0.0; m * n] };
                    let want = if isa == Isa::Portable {
                        chain::<PortableMadd>(&a, &b, &a32, &b32, &start)
                    } else {
                        chain::<Fused>(&a, &b, &a32, &b32, &start)
                    };
                    let mut c = if acc {
                        c0.clone()
                    } else {
                        vec![f32::NAN; m * n]
                    };
                    run(isa, a.view(&a32), b.view(&b32), &mut c, acc);
                    let same = c.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "{isa:?} {m}x{k}x{n} ta={ta} tb={tb} acc={acc}");
                }
            }
        }
    }
}

/// The AVX-512 blocking (16-lane vectors; `f32` 64 x 6 broadcast blocks, `f64` 16 x 12;
/// 4 x 4 dot blocks), run with portable vectors of the same width, so the driver logic
/// those entry points use is checked on any CPU: `n` = 3, 9, 10 (narrower than a 12-wide
/// block), 8, 13, 17 and 33 (the 6-wide blocks' last 8, 7, 11 and 9 columns split in two,
/// `block_width`), `m` = 150 (two 64-row blocks, one of 16, one shifted back). Mutations
/// tried: the remainder block's `B` one column off (`col - 1`, again on the split tail's
/// loop), the remainder arms only up to 7 columns (as for 8-wide blocks): each fails here
/// (and in `dispatched_kernels_match_f64_loop_and_portable` on an AVX-512 CPU).
#[test]
fn wide_vector_blocking_matches_f64_loop() {
    unsafe fn go(a: MatRef<'_, f32>, b: MatRef<'_, f32>, c: &mut [f32], acc: bool) {
        let j = Job::new(a, b, c.as_mut_ptr(), acc);
        drive::<Arr<f32, Fused, 16>, Arr<f32, Fused, 1>, 4, 6, 4, 4>(&j)
    }
    unsafe fn go64(a: MatRef<'_, f64>, b: MatRef<'_, f64>, c: &mut [f64], acc: bool) {
        let j = Job::new(a, b, c.as_mut_ptr(), acc);
        drive::<Arr<f64, Fused, 8>, Arr<f64, Fused, 1>, 2, 12, 4, 4>(&j)
    }
    let shapes = [
        (1, 33, 17),
        (15, 7, 9),
        (17, 129, 3),
        (33, 64, 10),
        (47, 300, 9),
        (64, 600, 33),
        (40, 20, 17),
        (150, 40, 8),
        (150, 70, 13),
    ];
    for (m, k, n) in shapes {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let a = Stored::new(m, k, ta, 8);
            let b = Stored::new(k, n, tb, 9);
            let what = format!("wide {m}x{k}x{n} ta={ta} tb={tb}");
            let (want, scale) = reference(&a, &b, None);
            let mut c = vec![f64::NAN; m * n];
            // SAFETY: shapes agree, `c` holds m * n elements; portable vectors only.
            unsafe { go64(a.view(&a.data), b.view(&b.data), &mut c, false) };
            check(&c, &want, &scale, k, f64::EPSILON, &what);
            let (a32, b32) = (a.f32s(), b.f32s());
            let a_r = Stored {
                data: a32.iter().map(|&x| x as f64).collect(),
                ..a
            };
            let b_r = Stored {
                data: b32.iter().map(|&x| x as f64).collect(),
                ..b
            };
            // `+=` onto f32 start values (exactly representable in the reference)
            let mut c: Vec<f32> = values(m * n, 10).iter().map(|&x| x as f32).collect();
            let c0: Vec<f64> = c.iter().map(|&x| x as f64).collect();
            let (want, scale) = reference(&a_r, &b_r, Some(&c0));
            // SAFETY: as above.
            unsafe { go(a_r.view(&a32), b_r.view(&b32), &mut c, true) };
            let c: Vec<f64> = c.iter().map(|&x| x as f64).collect();
            check(&c, &want, &scale, k + 1, f32::EPSILON as f64, &what);
        }
    }
}

#[test]
fn large_products_go_through_matrixmultiply_correctly() {
    // above the threshold for a transposed B (an untransposed one needs 2^26, too
    // slow for the f64 reference in a debug build), with fewer rows than a packed B
    // keeps on the broadcast kernels and more columns than the chunks-outermost loop
    let (m, k, n) = (64, 64, 2100);
    assert!(m * k * n > LARGE_STRIDED_B && m * k * n < LARGE && m < PACKED_B_MIN_ROWS);
    assert!(n > K_OUTER_MAX_N);
    for (ta, tb) in [(false, true), (true, true)] {
        let a = Stored::new(m, k, ta, 1);
        let b = Stored::new(k, n, tb, 2);
        let (want, scale) = reference(&a, &b, None);
        let mut c = vec![f64::NAN; m * n];
        let job = Job::new(a.view(&a.data), b.view(&b.data), c.as_mut_ptr(), false);
        assert!(large(&job));
        gemm(a.view(&a.data), b.view(&b.data), &mut c, false).unwrap();
        check(&c, &want, &scale, k, f64::EPSILON, "large");
    }
}

/// A large product with a long `k` and an `A` of contiguous columns goes through
/// matrixmultiply in blocks of rows copied out of `A` (the last block partial), written
/// and accumulated. Mutation tried: copying each block from row 0 of `A` fails.
#[test]
fn blocked_large_products_are_exact_too() {
    // B too large to pack (`PACKED_B_MAX`), so the product stays on matrixmultiply
    let (m, k, n) = (600, 260, 520);
    assert!(m * k * n > LARGE_STRIDED_B && k > 256 && m % 256 != 0 && k * n > PACKED_B_MAX);
    let a = Stored::new(m, k, false, 3);
    let b = Stored::new(k, n, true, 4);
    let job = Job::new(
        a.view(&a.data),
        b.view(&b.data),
        std::ptr::null_mut(),
        false,
    );
    assert!(large(&job));
    let (want, scale) = reference(&a, &b, None);
    let mut c = vec![f64::NAN; m * n];
    gemm(a.view(&a.data), b.view(&b.data), &mut c, false).unwrap();
    check(&c, &want, &scale, k, f64::EPSILON, "blocked");
    let c0: Vec<f64> = values(m * n, 5);
    let (want, scale) = reference(&a, &b, Some(&c0));
    let mut c = c0.clone();
    gemm(a.view(&a.data), b.view(&b.data), &mut c, true).unwrap();
    check(
        &c,
        &want,
        &scale,
        k + 1,
        f64::EPSILON,
        "blocked, accumulated",
    );
}

#[test]
fn bad_views_and_shapes_are_errors() {
    let d = [0.0f32; 6];
    assert!(MatRef::col_major(&d, 2, 3).is_ok());
    assert!(matches!(
        MatRef::col_major(&d, 3, 3),
        Err(Error::InvalidArgument(_))
    ));
    assert!(MatRef::new(&d, 2, 2, 1, 5).is_err());
    assert!(MatRef::new(&d, 2, 2, usize::MAX, 1).is_err());
    assert!(MatRef::new(&d[..0], 0, 5, 1, 0).is_ok());
    let a = MatRef::col_major(&d, 2, 3).unwrap();
    let mut c = [0.0f32; 4];
    assert!(matches!(
        gemm(a, a, &mut c, false),
        Err(Error::ShapeMismatch { .. })
    ));
    let mut c = [0.0f32; 3];
    assert!(matches!(
        gemm(a, a.t(), &mut c, false),
        Err(Error::ShapeMismatch { .. })
    ));
    let mut c = [7.0f32; 4];
    gemm(a, a.t(), &mut c, false).unwrap();
    assert_eq!(c, [0.0; 4]);
}

#[test]
fn empty_inner_dimension_gives_zeros_or_leaves_c() {
    let e: [f64; 0] = [];
    let a = MatRef::col_major(&e, 3, 0).unwrap();
    let b = MatRef::col_major(&e, 0, 2).unwrap();
    let mut c = [5.0; 6];
    gemm(a, b, &mut c, true).unwrap();
    assert_eq!(c, [5.0; 6]);
    gemm(a, b, &mut c, false).unwrap();
    assert_eq!(c, [0.0; 6]);
}

/// A product into a block of a larger column-major matrix (`gemm_raw_ldc`) is the
/// contiguous product bit for bit, and leaves every element outside the block alone, for
/// `f32`, `f64` (the kernels' own `ldc`), `Lanes<8>` and `Lanes<16>` (the packet kernels'
/// own `ldc`) and `Lanes<4>` (the generic loop, through a contiguous buffer), with and
/// without accumulation. Mutations tried (each fails): the broadcast kernel's column
/// stride taken as `m` instead of `ldc`; the AVX-512 packet kernel's (`cs: m · lanes`).
#[test]
fn products_into_a_block_of_a_larger_matrix() {
    fn check<S: Real>(m: usize, k: usize, n: usize, seed: u64) {
        let a: Vec<S> = values(m * k, seed)
            .iter()
            .map(|&x| S::from_f64(x))
            .collect();
        let b: Vec<S> = values(k * n, seed + 1)
            .iter()
            .map(|&x| S::from_f64(x))
            .collect();
        let c0: Vec<S> = values(m * n, seed + 2)
            .iter()
            .map(|&x| S::from_f64(x))
            .collect();
        let (av, bv) = (
            MatRef::col_major(&a, m, k).unwrap(),
            MatRef::col_major(&b, k, n).unwrap(),
        );
        let (ldc, off) = (m + 5, 3);
        let sentinel = S::from_f64(7.5);
        for acc in [false, true] {
            let mut want = c0.clone();
            gemm(av, bv, &mut want, acc).unwrap();
            let mut big = vec![sentinel; off + ldc * n];
            for j in 0..n {
                big[off + j * ldc..off + j * ldc + m].copy_from_slice(&c0[j * m..(j + 1) * m]);
            }
            // SAFETY: every column's m elements lie inside `big`.
            unsafe { gemm_raw_ldc(av, bv, big.as_mut_ptr().add(off), ldc, acc) };
            for (i, x) in big.iter().enumerate() {
                let (j, r) = ((i.wrapping_sub(off)) / ldc, (i.wrapping_sub(off)) % ldc);
                if i >= off && j < n && r < m {
                    assert!(
                        *x == want[r + j * m],
                        "{m}x{k}x{n} acc={acc} element ({r}, {j})"
                    );
                } else {
                    assert!(
                        *x == sentinel,
                        "{m}x{k}x{n} acc={acc}: {i} outside the block written"
                    );
                }
            }
        }
    }
    for (m, k, n) in [(37, 20, 9), (80, 300, 13), (3, 4, 2)] {
        check::<f32>(m, k, n, 11);
        check::<f64>(m, k, n, 12);
        check::<crate::lanes::Lanes<4>>(m, k, n, 13);
        check::<crate::lanes::Lanes<8>>(m, k, n, 14);
        check::<crate::lanes::Lanes<16>>(m, k, n, 15);
    }
}

/// `B` packed (`with_packed_b`: products of at least eight row blocks) changes no bit: a
/// product equals the same product computed in pieces of 24 rows (too few to pack), for
/// every variant this CPU runs, `f32` and `f64`, all four layouts, written and
/// accumulated, with `k` over several chunks and a narrower last column block, and with
/// the chunks of `k` outermost. Also the f64 loop's bound. Mutations tried: a chunk's packed rows at `p0` instead of `p0·NR`;
/// the last block's rows `NR` apart instead of `nr`; the chunks-outermost loop's last
/// (shifted) row block without its `skip`; each fails here.
#[test]
fn packed_b_products_equal_unpacked_ones() {
    fn pieces<S: Real + std::fmt::Debug>(
        isa: Isa,
        a: &Stored,
        b: &Stored,
        ad: &[S],
        bd: &[S],
        c0: &[S],
        acc: bool,
    ) {
        let (m, k, n) = (a.rows, a.cols, b.cols);
        let mut whole = c0.to_vec();
        run(isa, a.view(ad), b.view(bd), &mut whole, acc);
        for r0 in (0..m).step_by(24) {
            let rows = 24.min(m - r0);
            let av = if a.transposed {
                MatRef::new(&ad[r0 * k..], rows, k, k, 1).unwrap()
            } else {
                MatRef::new(&ad[r0..], rows, k, 1, m).unwrap()
            };
            let mut c: Vec<S> = (0..rows * n)
                .map(|q| c0[r0 + q % rows + q / rows * m])
                .collect();
            run(isa, av, b.view(bd), &mut c, acc);
            for (q, x) in c.iter().enumerate() {
                let y = whole[r0 + q % rows + q / rows * m];
                assert!(
                    x.lane(0).to_bits() == y.lane(0).to_bits(),
                    "{isa:?} {m}x{k}x{n} ta={} tb={} acc={acc}: row {} col {}: {x:?} vs {y:?}",
                    a.transposed,
                    b.transposed,
                    r0 + q % rows,
                    q / rows
                );
            }
        }
    }
    // 280 rows: the last piece keeps 16 (a transposed `A` with fewer takes dot products);
    // 212 rows and a long `k`: chunks of `k` outermost (`K_OUTER_ROWS`), on every variant,
    // with a shifted last row block; 520 rows: `B` packed for AVX-512's 64-row blocks too,
    // its last 8 columns as two blocks of 4 (mutations tried: packing those columns as
    // 6 + 2 while the kernels read 4 + 4, and the split blocks read with a row stride of 6:
    // both fail here)
    for (isa, (m, k, n)) in [Isa::Portable, Isa::Avx2, Isa::Avx512]
        .into_iter()
        .flat_map(|isa| {
            [
                (isa, (280, 300, 29)),
                (isa, (212, 600, 29)),
                (isa, (520, 40, 26)),
            ]
        })
    {
        if !isa.supported() {
            continue;
        }
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let a = Stored::new(m, k, ta, 21);
            let b = Stored::new(k, n, tb, 22);
            let c0 = values(m * n, 23);
            let c32: Vec<f32> = c0.iter().map(|&x| x as f32).collect();
            let (a32, b32) = (a.f32s(), b.f32s());
            for acc in [false, true] {
                pieces(isa, &a, &b, &a.data, &b.data, &c0, acc);
                pieces(isa, &a, &b, &a32, &b32, &c32, acc);
            }
            let (want, scale) = reference(&a, &b, Some(&c0));
            let mut c = c0.clone();
            run(isa, a.view(&a.data), b.view(&b.data), &mut c, true);
            check(&c, &want, &scale, k + 1, f64::EPSILON, "packed B");
        }
    }
}
