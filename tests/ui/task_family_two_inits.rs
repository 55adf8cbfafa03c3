use lopt::prelude::*;

struct Family;

#[task_family]
impl TaskFamily for Family {
    type Cfg<S: Real> = DVector<S>;
    type Params<S: Real> = DVector<S>;
    type Batch = ();
    fn sample(&self, key: Key) -> DVector<f32> {
        DVector::from_vec(key.normal_vec(3))
    }
    fn init<S: Real>(&self, _cfg: &DVector<S>, key: S::Key) -> DVector<S> {
        DVector::from_vec(key.normal_vec(3))
    }
    fn init_lanes<S: Real>(&self, _cfg: &DVector<S>, key: S::Key) -> DVector<S> {
        DVector::from_vec(key.normal_vec(3))
    }
    fn loss<S: Real>(&self, p: &DVector<S>, c: &DVector<S>, _key: S::Key, _b: &()) -> S {
        sum(square(c - p))
    }
}

fn main() {}
