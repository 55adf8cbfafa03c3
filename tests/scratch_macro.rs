use lopt::prelude::*;

#[task]
fn f<S: Real>(x: &S, c: &f64) -> S {
    let mut s = x * 2.0;
    for i in 0..3 {
        s += sin(s) * x + c;
        if s > 1.0 {
            s = s / 2.0;
        }
    }
    let y = if x > 0.5 { exp(x) } else { -x };
    s * y + powi(x, 3)
}

#[test]
fn scratch() {
    let x = 0.7f64;
    let (v, g) = f::value_and_grad(&x, &0.3);
    let h = 1e-6;
    let fd = (f(&(x + h), &0.3) - f(&(x - h), &0.3)) / (2.0 * h);
    let (v2, j) = f::value_and_jvp(&x, &1.0, &0.3);
    println!("{v} {g} {fd} {v2} {j}");
    assert!((g - fd).abs() < 1e-6);
    assert!((j - fd).abs() < 1e-6);
}

#[differentiable]
fn sq<S: Real>(a: &S, k: f64) -> S {
    let mut acc = a * 0.0;
    for _j in 0..2 {
        acc += a * a * k;
    }
    acc
}

#[differentiable]
fn twice<S: Real>(a: S) -> S {
    sq(&a, 1.0) + sin(a)
}

#[task]
fn g<S: Real>(x: &S, _c: &f64) -> S {
    let z = sq(x, 0.5) * twice(*x);
    z + twice(z)
}

#[test]
fn scratch_helpers() {
    let x = 0.7f64;
    let (v, gr) = g::value_and_grad(&x, &0.3);
    let h = 1e-6;
    let fd = (g(&(x + h), &0.3) - g(&(x - h), &0.3)) / (2.0 * h);
    let (_, j) = g::value_and_jvp(&x, &1.0, &0.3);
    println!("{v} {gr} {fd} {j}");
    assert!((gr - fd).abs() < 1e-6);
    assert!((j - fd).abs() < 1e-6);
}
