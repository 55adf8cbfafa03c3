//! Matrix products for scalars other than `f32`/`f64` (SIMD-lane packets): a
//! register-blocked loop. Each element of a packet matrix is a whole SIMD register (or
//! two), so the vector width comes from the scalar; what matters here is keeping a block of
//! `C` in registers across the `k` loop instead of loading and storing it for every
//! multiply-add.

use crate::scalar::Real;

/// A strided read-only view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Strided<'a, S> {
    pub data: &'a [S],
    pub rs: usize,
    pub cs: usize,
}

impl<S: Copy> Strided<'_, S> {
    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> S {
        self.data[i * self.rs + j * self.cs]
    }
}

/// `c = a·b` (or `c += a·b` with `accumulate`), `a` is `m × k`, `b` is `k × n`, `c` is
/// column-major `m × n` and contiguous. Each element of `c` sums its `k` products in
/// order into a fresh accumulator (then adds the old value when accumulating).
pub(crate) fn gemm_packets<S: Real>(
    m: usize,
    k: usize,
    n: usize,
    a: Strided<'_, S>,
    b: Strided<'_, S>,
    c: &mut [S],
    accumulate: bool,
) {
    assert_eq!(c.len(), m * n, "gemm_packets: output size");
    let mut j = 0;
    while j + 2 <= n {
        let mut i = 0;
        while i + 2 <= m {
            let (mut c00, mut c10, mut c01, mut c11) = (S::zero(), S::zero(), S::zero(), S::zero());
            for p in 0..k {
                let (a0, a1) = (a.at(i, p), a.at(i + 1, p));
                let (b0, b1) = (b.at(p, j), b.at(p, j + 1));
                c00 += a0 * b0;
                c10 += a1 * b0;
                c01 += a0 * b1;
                c11 += a1 * b1;
            }
            store(c, i + j * m, c00, accumulate);
            store(c, i + 1 + j * m, c10, accumulate);
            store(c, i + (j + 1) * m, c01, accumulate);
            store(c, i + 1 + (j + 1) * m, c11, accumulate);
            i += 2;
        }
        if i < m {
            let (mut c0, mut c1) = (S::zero(), S::zero());
            for p in 0..k {
                let a0 = a.at(i, p);
                c0 += a0 * b.at(p, j);
                c1 += a0 * b.at(p, j + 1);
            }
            store(c, i + j * m, c0, accumulate);
            store(c, i + (j + 1) * m, c1, accumulate);
        }
        j += 2;
    }
    if j < n {
        let mut i = 0;
        while i + 2 <= m {
            let (mut c0, mut c1) = (S::zero(), S::zero());
            for p in 0..k {
                let b0 = b.at(p, j);
                c0 += a.at(i, p) * b0;
                c1 += a.at(i + 1, p) * b0;
            }
            store(c, i + j * m, c0, accumulate);
            store(c, i + 1 + j * m, c1, accumulate);
            i += 2;
        }
        if i < m {
            let mut c0 = S::zero();
            for p in 0..k {
                c0 += a.at(i, p) * b.at(p, j);
            }
            store(c, i + j * m, c0, accumulate);
        }
    }
}

#[inline(always)]
fn store<S: Real>(c: &mut [S], idx: usize, v: S, accumulate: bool) {
    if accumulate {
        c[idx] += v;
    } else {
        c[idx] = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lanes::Lanes;

    #[test]
    fn packet_products_match_lane_by_lane_f64_sums() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (2, 3, 2),
            (3, 4, 5),
            (5, 1, 3),
            (7, 9, 4),
            (4, 6, 1),
        ] {
            for (ta, tb) in [(false, false), (true, false), (false, true)] {
                let av: Vec<Lanes<8>> = (0..m * k)
                    .map(|x| Lanes::from_lanes(|l| ((x * 7 + l * 3) % 11) as f64 * 0.25 - 1.0))
                    .collect();
                let bv: Vec<Lanes<8>> = (0..k * n)
                    .map(|x| Lanes::from_lanes(|l| ((x * 5 + l) % 13) as f64 * 0.5 - 2.0))
                    .collect();
                // Column-major, or the transpose's storage read with swapped strides.
                let a = if ta {
                    Strided {
                        data: &av,
                        rs: k,
                        cs: 1,
                    }
                } else {
                    Strided {
                        data: &av,
                        rs: 1,
                        cs: m,
                    }
                };
                let b = if tb {
                    Strided {
                        data: &bv,
                        rs: n,
                        cs: 1,
                    }
                } else {
                    Strided {
                        data: &bv,
                        rs: 1,
                        cs: k,
                    }
                };
                let init: Vec<Lanes<8>> = (0..m * n).map(|x| Lanes::splat(x as f32)).collect();
                for acc in [false, true] {
                    let mut c = init.clone();
                    gemm_packets(m, k, n, a, b, &mut c, acc);
                    for i in 0..m {
                        for j in 0..n {
                            for l in 0..8 {
                                let mut s = if acc { (i + j * m) as f64 } else { 0.0 };
                                for p in 0..k {
                                    s += a.at(i, p).0[l] as f64 * b.at(p, j).0[l] as f64;
                                }
                                let got = c[i + j * m].0[l] as f64;
                                assert!(
                                    (got - s).abs() <= 1e-5 * s.abs().max(1.0),
                                    "{m}x{k}x{n} ({i},{j}) lane {l}: {got} vs {s}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
