//! A small benchmark harness: interleaved cases, warm-up, median of repeats, and one
//! `bench <id> median_s=<f> min_s=<f> max_s=<f> n=<int>` line per case.
#![allow(dead_code)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use lopt::datasets::ImageBatch;
use lopt::prelude::DMatrix;
use rand::{Rng, SeedableRng};

/// One case: an id and a closure that runs the measured work once.
pub struct Case<'a> {
    pub id: String,
    pub run: Box<dyn FnMut() + 'a>,
    /// Calls per sample (chosen by calibration).
    reps: u64,
    /// Work units per call: reported times are per unit (e.g. per training step).
    units: f64,
    samples: Vec<f64>,
}

impl<'a> Case<'a> {
    pub fn new(id: impl Into<String>, run: impl FnMut() + 'a) -> Self {
        Case {
            id: id.into(),
            run: Box::new(run),
            reps: 1,
            units: 1.0,
            samples: Vec::new(),
        }
    }

    /// Reports times per unit of work when one call does `units` of them (e.g. 1000
    /// training steps of 8 instances: 8000 instance-steps).
    pub fn per(mut self, units: f64) -> Self {
        self.units = units;
        self
    }
}

/// The measured seconds per call (per unit, see [`Case::per`]) of each case, in order.
pub struct Summary {
    pub id: String,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

/// Seconds on the benchmark's clock: wall time, or with `LOPT_BENCH_CLOCK=cpu` the CPU time
/// of the whole process (all threads; on a loaded machine it leaves out the time the
/// process waits for a core, so it measures a single-threaded case's efficiency).
fn clock() -> f64 {
    static CPU: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *CPU.get_or_init(|| std::env::var("LOPT_BENCH_CLOCK").is_ok_and(|v| v == "cpu")) {
        if let Some(s) = process_cpu_seconds() {
            return s;
        }
    }
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// Seconds the threads of this process have spent on a CPU (`CLOCK_PROCESS_CPUTIME_ID`),
/// which unlike wall time does not grow while other processes hold the cores; `None`
/// where that clock is not available.
pub fn process_cpu_seconds() -> Option<f64> {
    #[cfg(target_os = "linux")]
    {
        #[repr(C)]
        struct Timespec {
            sec: i64,
            nsec: i64,
        }
        extern "C" {
            fn clock_gettime(clock: i32, t: *mut Timespec) -> i32;
        }
        const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
        let mut t = Timespec { sec: 0, nsec: 0 };
        // SAFETY: `t` is a valid `struct timespec` (two 64-bit fields on 64-bit Linux).
        let rc = unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut t) };
        (rc == 0).then_some(t.sec as f64 + t.nsec as f64 * 1e-9)
    }
    #[cfg(not(target_os = "linux"))]
    None
}

/// Runs the cases interleaved: calibrate each to about `target` per sample, warm up, then
/// `rounds` rounds in which every case takes one sample. Prints one line per case.
pub fn run(cases: &mut [Case<'_>], rounds: usize, target: Duration) -> Vec<Summary> {
    for c in cases.iter_mut() {
        // Warm up and calibrate.
        let t = clock();
        (c.run)();
        let mut one = (clock() - t).max(1e-9);
        let t = clock();
        let k = ((0.02 / one).ceil() as u64).clamp(1, 1_000_000);
        for _ in 0..k {
            (c.run)();
        }
        one = (clock() - t) / k as f64;
        c.reps = ((target.as_secs_f64() / one).ceil() as u64).max(1);
    }
    for _ in 0..rounds {
        for c in cases.iter_mut() {
            let t = clock();
            for _ in 0..c.reps {
                (c.run)();
            }
            c.samples.push((clock() - t) / (c.reps as f64 * c.units));
        }
    }
    cases
        .iter_mut()
        .map(|c| {
            c.samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let n = c.samples.len();
            let s = Summary {
                id: c.id.clone(),
                median: c.samples[n / 2],
                min: c.samples[0],
                max: c.samples[n - 1],
                n,
            };
            println!(
                "bench {} median_s={:.9} min_s={:.9} max_s={:.9} n={}",
                s.id, s.median, s.min, s.max, s.n
            );
            s
        })
        .collect()
}

/// Keeps the cases whose id contains one of the command-line arguments that are not
/// flags (`cargo bench --bench X -- <substring>...`), or equals one ending in `$`
/// (`pes.mlp$`); all of them when there is none.
pub fn select(cases: &mut Vec<Case<'_>>) {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let hit = |id: &str, f: &str| f.strip_suffix('$').map_or(id.contains(f), |e| id == e);
    cases.retain(|c| filters.is_empty() || filters.iter().any(|f| hit(&c.id, f)));
}

/// Prevents the optimizer from discarding a value.
pub fn keep<T>(x: T) -> T {
    black_box(x)
}

/// Median of a summary list by id.
pub fn median(s: &[Summary], id: &str) -> f64 {
    s.iter()
        .find(|x| x.id == id)
        .map(|x| x.median)
        .unwrap_or(f64::NAN)
}

/// `n` random 8x8 image batches of `batch` examples from `seed`: images ~ U[0,1), labels
/// ~ U{0..9} (the anchors' fixed random data).
pub fn random_image_batches(seed: u64, n: usize, batch: usize) -> Vec<ImageBatch> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| ImageBatch {
            image: DMatrix::from_fn(batch, 64, |_, _| rng.gen::<f32>()),
            label: (0..batch).map(|_| rng.gen_range(0..10)).collect(),
            height: 8,
            width: 8,
            channels: 1,
        })
        .collect()
}

/// `f32` lanes of the widest FMA vectors this CPU has: 16 with AVX-512, 8 with AVX2 and
/// FMA, 0 without (no FMA loop then).
#[allow(dead_code)]
pub fn fma_lanes() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return if is_x86_feature_detected!("avx512f") {
                16
            } else {
                8
            };
        }
    }
    0
}

/// FLOP of one [`fma_loop`] of `iters` steps: 12 chains × [`fma_lanes`] lanes × 2 FLOP a
/// step.
#[allow(dead_code)]
pub fn fma_loop_flop(iters: usize) -> f64 {
    (iters * 12 * fma_lanes() * 2) as f64
}

/// 12 independent FMA chains of the widest vectors ([`fma_lanes`]) run for `iters` steps:
/// what one core can do at most (its FMA pipes kept busy; on an AVX-512 CPU the 512-bit
/// ones, which the GEMM's kernels use there). NaN on a CPU without AVX2 and FMA. Timed as
/// a case interleaved with the others, it measures the peak under the same load they run
/// in.
#[allow(dead_code)]
pub fn fma_loop(iters: usize) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        #[target_feature(enable = "avx2,fma")]
        unsafe fn run(iters: usize) -> f32 {
            let mut acc = [_mm256_set1_ps(0.0); 12];
            let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
            for _ in 0..iters {
                for v in acc.iter_mut() {
                    *v = _mm256_fmadd_ps(*v, a, b);
                }
            }
            let mut out = [0.0f32; 8];
            let s = acc
                .iter()
                .fold(_mm256_set1_ps(0.0), |s, v| _mm256_add_ps(s, *v));
            _mm256_storeu_ps(out.as_mut_ptr(), s);
            out.iter().sum()
        }
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn run512(iters: usize) -> f32 {
            let mut acc = [_mm512_set1_ps(0.0); 12];
            let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
            for _ in 0..iters {
                for v in acc.iter_mut() {
                    *v = _mm512_fmadd_ps(*v, a, b);
                }
            }
            let s = acc
                .iter()
                .fold(_mm512_set1_ps(0.0), |s, v| _mm512_add_ps(s, *v));
            _mm512_reduce_add_ps(s)
        }
        match fma_lanes() {
            // SAFETY: the CPU has AVX-512F, AVX2 and FMA (fma_lanes checked).
            16 => return unsafe { run512(keep(iters)) },
            // SAFETY: the CPU has AVX2 and FMA (fma_lanes checked).
            8 => return unsafe { run(keep(iters)) },
            _ => {}
        }
    }
    f32::NAN
}

/// This core's measured f32 FMA peak in FLOP/s: the best of 5 [`fma_loop`]s; `None` on a
/// CPU without AVX2 and FMA.
#[allow(dead_code)]
pub fn measured_peak() -> Option<f64> {
    if fma_loop(1).is_nan() {
        return None;
    }
    let iters = 20_000_000;
    let best = (0..5)
        .map(|_| {
            let t = std::time::Instant::now();
            keep(fma_loop(iters));
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    Some(fma_loop_flop(iters) / best)
}

/// One core's f32 peak, the number of cores, and how the peak was found: measured by
/// [`measured_peak`] where the CPU has AVX2 and FMA (the clock `/proc/cpuinfo` reports is
/// the base clock, well below what a core runs at: 2.6 against about 4.7 GHz here),
/// else nominal (2 FMA pipes × f32 lanes × 2 FLOP × that clock).
#[allow(dead_code)]
pub fn core_peak() -> (f64, f64, String) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    if let Some(p) = measured_peak() {
        let how = format!(
            "measured: an FMA loop of {} f32 lanes; {cores} cores",
            fma_lanes()
        );
        return (p, cores, how);
    }
    let lanes = if std::arch::is_x86_feature_detected!("avx512f") {
        16.0
    } else if std::arch::is_x86_feature_detected!("avx2") {
        8.0
    } else {
        4.0
    };
    let ghz = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("cpu MHz"))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .map(|mhz| mhz / 1e3)
        .unwrap_or(2.5);
    (
        2.0 * lanes * 2.0 * ghz * 1e9,
        cores,
        format!("2 FMA x {lanes} f32 lanes x 2 FLOP x {ghz:.2} GHz per core, {cores} cores"),
    )
}
