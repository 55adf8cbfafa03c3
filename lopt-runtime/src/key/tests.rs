//! Known-answer, determinism and distribution tests of keys and their draws.

use super::philox::*;
use super::*;
use crate::scalar::erf_f64;
use rayon::prelude::*;

fn philox_ref(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    philox4x32_10(ctr, key)
}

/// Random123 `kat_vectors`, `philox4x32 10` lines.
#[test]
fn philox_known_answers() {
    assert_eq!(
        philox_ref([0; 4], [0; 2]),
        [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
    );
    assert_eq!(
        philox_ref([0xffffffff; 4], [0xffffffff; 2]),
        [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
    );
    assert_eq!(
        philox_ref(
            [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
            [0xa4093822, 0x299f31d0]
        ),
        [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
    );
}

#[test]
fn bits_and_wide_blocks_agree() {
    let key = Key::new(0x0123_4567_89ab_cdef);
    assert_eq!(key.k, [0x89ab_cdef, 0x0123_4567]);
    assert_eq!(key.bits(0), philox_ref([0, 0, 0, 0], key.k));
    let start = u32::MAX as u64 - 3; // crosses into the high counter word
    let w = key.blocks::<CHUNK>(start);
    for (j, c) in (start..start + CHUNK as u64).enumerate() {
        assert_eq!([w[0][j], w[1][j], w[2][j], w[3][j]], key.bits(c));
    }
    assert_eq!(key.bits(1 << 32), philox_ref([0, 1, 0, 0], key.k));
}

#[test]
fn derivation_counters_are_documented_ones() {
    let key = Key::new(42);
    let b = philox_ref([5, 0, DOMAIN_SPLIT, 0], key.k);
    assert_eq!(key.split_n(6)[5].k, [b[0], b[1]]);
    let b = philox_ref([7, 0, DOMAIN_FOLD, 0], key.k);
    assert_eq!(key.fold_in(7).k, [b[0], b[1]]);
    let (a, c) = key.split();
    assert_eq!(vec![a, c], key.split_n(2));
    assert_eq!(key.split_n(3)[..2], key.split_n(2)[..]);
}

#[test]
fn derived_keys_are_distinct_streams() {
    let key = Key::new(1);
    let mut all = key.split_n(1000);
    all.extend((0..1000).map(|i| key.fold_in(i)));
    all.push(key);
    let set: std::collections::HashSet<_> = all.iter().collect();
    assert_eq!(set.len(), all.len());

    // Two children's normal streams are uncorrelated: |corr| within 5 standard errors.
    let n = 20_000;
    let (a, b) = key.split();
    let (x, y) = (a.normal_vec::<f64>(n), b.normal_vec::<f64>(n));
    let corr = x.iter().zip(&y).map(|(p, q)| p * q).sum::<f64>() / n as f64;
    assert!(corr.abs() < 5.0 / (n as f64).sqrt(), "corr {corr}");
    let z = key.fold_in(0).normal_vec::<f64>(n);
    let corr = x.iter().zip(&z).map(|(p, q)| p * q).sum::<f64>() / n as f64;
    assert!(corr.abs() < 5.0 / (n as f64).sqrt(), "corr {corr}");
}

#[test]
fn fills_are_prefixes_and_single_draws_are_first_values() {
    let key = Key::new(9);
    let long = key.normal_vec::<f32>(100);
    for n in [0, 1, 3, 4, 5, 31, 32, 33, 70] {
        assert_eq!(key.normal_vec::<f32>(n)[..], long[..n]);
    }
    let long = key.normal_vec::<f64>(100);
    for n in [1, 15, 16, 17, 33] {
        assert_eq!(key.normal_vec::<f64>(n)[..], long[..n]);
    }
    assert_eq!(key.normal::<f32>(), key.normal_vec::<f32>(1)[0]);
    let mut u = vec![0f32; 50];
    key.fill_uniform(&mut u);
    assert_eq!(key.uniform::<f32>(), u[0]);
    assert_eq!(u[0], uniform_f32(key.bits(0)[0]));
    assert_eq!(u[37], uniform_f32(key.bits(9)[1]));
    let mut t = vec![0f64; 60];
    key.fill_truncated_normal(&mut t, 1.0);
    let mut t2 = vec![0f64; 25];
    key.fill_truncated_normal(&mut t2, 1.0);
    assert_eq!(t2[..], t[..25]);
    let m = key.normal_matrix::<f64>(3, 4);
    assert_eq!(m.as_slice(), &key.normal_vec::<f64>(12)[..]);
}

/// The f32 fast path against the same Box-Muller in f64 with `std` math.
#[test]
fn box_muller_f32_matches_f64_reference() {
    let mut rng = Key::new(5).rng();
    let edges = [
        0,
        1,
        255,
        256,
        0x4000_0000,
        0x8000_0000,
        0xc000_0000,
        u32::MAX,
    ];
    let mut pairs: Vec<(u32, u32)> = edges
        .iter()
        .flat_map(|&a| edges.iter().map(move |&b| (a, b)))
        .collect();
    pairs.extend((0..100_000).map(|_| (rng.next_u32(), rng.next_u32())));
    for (a, b) in pairs {
        let u = ((a >> 8) + 1) as f64 / (1u64 << 24) as f64;
        let r = (-2.0 * u.ln()).sqrt();
        let q = (b >> 30) as f64;
        let v = ((b >> 8) & 0x3f_ffff) as f64 / (1u64 << 22) as f64;
        let t = (q + v - 0.5) * std::f64::consts::FRAC_PI_2;
        let (z0, z1) = box_muller_f32(a, b);
        let tol = 4.0 * f32::EPSILON as f64 * (1.0 + r); // a few f32 ulps
        assert!((z0 as f64 - r * t.cos()).abs() < tol, "{a:x} {b:x}: {z0}");
        assert!((z1 as f64 - r * t.sin()).abs() < tol, "{a:x} {b:x}: {z1}");
    }
}

/// The AVX2 build must give the baseline build's numbers bit for bit (meaningful in
/// release builds, where the two are vectorized differently).
#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_build_matches_baseline() {
    if !crate::kernels::cpu::has_avx2() {
        return;
    }
    let key = Key::new(77);
    for d in [Dist::Uniform, Dist::Normal, Dist::TruncatedNormal] {
        let (mut a, mut b) = (vec![0f32; 1003], vec![0f32; 1003]);
        key.fill_scalar(&mut a, d);
        crate::kernels::cpu::with_avx2(|| key.fill_scalar(&mut b, d));
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        let (mut a, mut b) = (vec![0f64; 1003], vec![0f64; 1003]);
        key.fill_scalar(&mut a, d);
        crate::kernels::cpu::with_avx2(|| key.fill_scalar(&mut b, d));
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}

fn draws_for(key: Key) -> (Vec<u32>, Vec<u64>, Vec<usize>, i64) {
    let k = key.split_n(4);
    let mut u = vec![0f64; 9];
    k[1].fill_uniform(&mut u);
    let mut t = vec![0f32; 21];
    k[2].fill_truncated_normal(&mut t, 0.3);
    let f32s = k[0].normal_vec::<f32>(77).into_iter().chain(t);
    (
        f32s.map(f32::to_bits).collect(),
        u.into_iter().map(f64::to_bits).collect(),
        k[3].permutation(13),
        key.fold_in(3).randint(-50, 50),
    )
}

#[test]
fn same_draws_on_any_thread_count() {
    let keys = Key::new(2024).split_n(300);
    let serial: Vec<_> = keys.iter().map(|&k| draws_for(k)).collect();
    for threads in [1, 2] {
        let par: Vec<_> =
            crate::on_threads(threads, || keys.par_iter().map(|&k| draws_for(k)).collect());
        assert_eq!(par, serial, "{threads} threads");
        // Reverse order of evaluation too.
        let mut rev: Vec<_> = crate::on_threads(threads, || {
            keys.par_iter().rev().map(|&k| draws_for(k)).collect()
        });
        rev.reverse();
        assert_eq!(rev, serial, "{threads} threads, reversed");
    }
}

/// Mean and variance within 5 standard errors of the closed forms; `m4` is the
/// fourth central moment, for the standard error of the sample variance.
fn check_moments(x: &[f64], mean: f64, var: f64, m4: f64) {
    let n = x.len() as f64;
    let m = x.iter().sum::<f64>() / n;
    let v = x.iter().map(|y| (y - mean) * (y - mean)).sum::<f64>() / n;
    assert!(
        (m - mean).abs() < 5.0 * (var / n).sqrt(),
        "mean {m} vs {mean}"
    );
    let se_v = ((m4 - var * var) / n).sqrt();
    assert!((v - var).abs() < 5.0 * se_v, "variance {v} vs {var}");
}

#[test]
fn uniform_moments() {
    let n = 200_000;
    let mut x32 = vec![0f32; n];
    Key::new(11).fill_uniform(&mut x32);
    assert!(x32.iter().all(|&u| (0.0..1.0).contains(&u)));
    let x: Vec<f64> = x32.iter().map(|&u| u as f64).collect();
    // U(0,1): variance 1/12, fourth central moment 1/80.
    check_moments(&x, 0.5, 1.0 / 12.0, 1.0 / 80.0);
    let mut x = vec![0f64; n];
    Key::new(12).fill_uniform(&mut x);
    assert!(x.iter().all(|&u| (0.0..1.0).contains(&u)));
    check_moments(&x, 0.5, 1.0 / 12.0, 1.0 / 80.0);
    let y: Vec<f64> = (0..2000u64)
        .map(|i| Key::new(13).fold_in(i).uniform_range(-3.0, 5.0))
        .collect();
    assert!(y.iter().all(|&u| (-3.0..5.0).contains(&u)));
    check_moments(&y, 1.0, 64.0 / 12.0, 8f64.powi(4) / 80.0);
}

#[test]
fn normal_moments() {
    let n = 200_000;
    let x: Vec<f64> = Key::new(21)
        .normal_vec::<f32>(n)
        .iter()
        .map(|&z| z as f64)
        .collect();
    check_moments(&x, 0.0, 1.0, 3.0);
    check_moments(&Key::new(22).normal_vec::<f64>(n), 0.0, 1.0, 3.0);
    // Single draws from many keys follow the same law.
    let y: Vec<f64> = (0..20_000u64)
        .map(|i| Key::new(23).fold_in(i).normal())
        .collect();
    check_moments(&y, 0.0, 1.0, 3.0);
    // The tail beyond 2 sigma: P(|Z| > 2) = 1 - erf(sqrt 2), binomial standard error.
    let p = 1.0 - erf_f64(std::f64::consts::SQRT_2);
    let frac = x.iter().filter(|z| z.abs() > 2.0).count() as f64 / n as f64;
    assert!(
        (frac - p).abs() < 5.0 * (p * (1.0 - p) / n as f64).sqrt(),
        "{frac}"
    );
}

#[test]
fn truncated_normal_moments() {
    // N(0,1) restricted to [-2, 2]: with P = erf(sqrt 2) and phi = phi(2),
    // E z^2 = 1 - 2*2*phi/P and E z^4 = 3 - (6*2 + 2*2^3)*phi/P.
    let phi = (-2.0f64).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let p = erf_f64(std::f64::consts::SQRT_2);
    let var = 1.0 - 4.0 * phi / p;
    let m4 = 3.0 - 28.0 * phi / p;
    let (n, std) = (200_000, 0.5);
    let mut x32 = vec![0f32; n];
    Key::new(31).fill_truncated_normal(&mut x32, std as f32);
    assert!(x32.iter().all(|&z| z.abs() <= 2.0 * std as f32));
    let x: Vec<f64> = x32.iter().map(|&z| z as f64 / std).collect();
    check_moments(&x, 0.0, var, m4);
    let mut x = vec![0f64; n];
    Key::new(32).fill_truncated_normal(&mut x, std);
    assert!(x.iter().all(|&z| z.abs() <= 2.0 * std));
    x.iter_mut().for_each(|z| *z /= std);
    check_moments(&x, 0.0, var, m4);
}

/// Chi-square over `k` equiprobable bins below mean + 5 sd (df = k - 1).
fn check_chi_square(counts: &[usize]) {
    let n: usize = counts.iter().sum();
    let e = n as f64 / counts.len() as f64;
    let chi2: f64 = counts.iter().map(|&c| (c as f64 - e).powi(2) / e).sum();
    let df = (counts.len() - 1) as f64;
    assert!(
        chi2 < df + 5.0 * (2.0 * df).sqrt(),
        "chi2 {chi2}, counts {counts:?}"
    );
}

#[test]
fn randint_range_and_uniformity() {
    let mut counts = [0usize; 10];
    for i in 0..100_000 {
        let v = Key::new(41).fold_in(i).randint(-3, 7);
        assert!((-3..7).contains(&v));
        counts[(v + 3) as usize] += 1;
    }
    check_chi_square(&counts);

    // A range of 3 * 2^62: a modulo reduction would put half the mass in the first
    // third; Lemire's method must not.
    let (lo, hi) = (i64::MIN, 1i64 << 62);
    let mut counts = [0usize; 3];
    for i in 0..30_000 {
        let v = Key::new(42).fold_in(i).randint(lo, hi);
        assert!((lo..hi).contains(&v));
        counts[((v as i128 - lo as i128) >> 62) as usize] += 1;
    }
    check_chi_square(&counts);
    let full: Vec<i64> = (0..100)
        .map(|i| Key::new(i).randint(i64::MIN, i64::MAX))
        .collect();
    assert!(full.iter().any(|&v| v < 0) && full.iter().any(|&v| v > 0));
    assert_eq!(Key::new(1).randint(5, 6), 5);
}

#[test]
#[should_panic(expected = "empty range")]
fn randint_empty_range_panics() {
    Key::new(0).randint(3, 3);
}

#[test]
fn permutations() {
    let p = Key::new(51).permutation(1000);
    let mut s = p.clone();
    s.sort_unstable();
    assert_eq!(s, (0..1000).collect::<Vec<_>>());
    assert_ne!(p, Key::new(52).permutation(1000));
    assert_ne!(p, s);
    assert!(Key::new(0).permutation(0).is_empty());
    assert_eq!(Key::new(0).permutation(1), vec![0]);

    // All 6 orders of 3 elements equally likely.
    let orders = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    let mut counts = [0usize; 6];
    for i in 0..60_000 {
        let p = Key::new(53).fold_in(i).permutation(3);
        counts[orders.iter().position(|o| o[..] == p[..]).unwrap()] += 1;
    }
    check_chi_square(&counts);
}

#[test]
fn key_rng_reads_the_sample_stream() {
    use rand::Rng;
    let key = Key::new(61);
    let mut rng = key.rng();
    let words: Vec<u32> = (0..12).map(|_| rng.next_u32()).collect();
    let expect: Vec<u32> = (0..3).flat_map(|c| key.bits(c)).collect();
    assert_eq!(words, expect);
    let mut rng = key.rng();
    assert_eq!(rng.next_u64(), (expect[1] as u64) << 32 | expect[0] as u64);
    let mut bytes = [0u8; 6];
    rng.fill_bytes(&mut bytes);
    assert_eq!(bytes[..4], expect[2].to_le_bytes());
    assert_eq!(bytes[4..], expect[3].to_le_bytes()[..2]);
    let x: f64 = key.rng().gen();
    assert!((0.0..1.0).contains(&x));
}

#[derive(Clone, Debug, PartialEq)]
struct Two {
    a: Vec<f32>,
    b: Vec<f32>,
}

impl Params for Two {
    type Scalar = f32;
    fn num_leaves(&self) -> usize {
        2
    }
    fn leaf(&self, i: usize) -> &[f32] {
        [&self.a, &self.b][i]
    }
    fn leaf_mut(&mut self, i: usize) -> &mut [f32] {
        if i == 0 {
            &mut self.a
        } else {
            &mut self.b
        }
    }
    fn write_leaf_name(&self, i: usize, out: &mut String) {
        out.push_str(["a", "b"][i]);
    }
    fn leaf_shape(&self, i: usize) -> Vec<usize> {
        vec![self.leaf(i).len()]
    }
}

#[test]
fn params_leaves_use_folded_keys() {
    let key = Key::new(71);
    let t = Two {
        a: vec![0.0; 5],
        b: vec![0.0; 7],
    };
    let p = key.normal_params(&t, 0.5);
    let scaled = |v: Vec<f32>| v.into_iter().map(|x| x * 0.5).collect::<Vec<_>>();
    assert_eq!(p.a, scaled(key.fold_in(0).normal_vec(5)));
    assert_eq!(p.b, scaled(key.fold_in(1).normal_vec(7)));
    // Leaf b does not depend on the size of leaf a.
    let q = key.normal_params(
        &Two {
            a: vec![0.0; 50],
            b: vec![0.0; 7],
        },
        0.5,
    );
    assert_eq!(q.b, p.b);
    let tr = key.truncated_normal_params(&t, 0.1);
    let mut b = vec![0f32; 7];
    key.fold_in(1).fill_truncated_normal(&mut b, 0.1);
    assert_eq!(tr.b, b);
    assert!(tr.a.iter().chain(&tr.b).all(|x| x.abs() <= 0.2));
}

#[test]
fn serde_round_trip() {
    let key = Key::new(u64::MAX - 5).fold_in(3);
    let s = serde_json::to_string(&key).unwrap();
    assert_eq!(serde_json::from_str::<Key>(&s).unwrap(), key);
}
