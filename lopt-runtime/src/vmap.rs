//! `vmap`: a function of one task instance run over many at once, the Rust form of
//! `jax.vmap` over a task family (lane groups from [`crate::lane_groups`]).
//!
//! Instances are packed into lane groups: every scalar of a group's parameters,
//! configurations and optimizer states is a [`Lanes<W>`] whose lane `i` belongs to
//! instance `i` of the group, so one instruction advances `W` instances. Instances whose
//! configurations have different shapes (a sampled hidden width) go to different groups;
//! groups run side by side on Rayon threads. Each group computes exactly what its
//! instances compute alone, in the same order, so results do not depend on the lane width
//! or the number of threads.
//!
//! The function to run is written once, generic over the scalar type ([`VmapFn`]), like
//! the seed's `train_task(cfg, key)`; [`vmap`] runs it over many configurations and keys.

use crate::error::{Error, Result};
use crate::key::{Key, KeyOps};
pub use crate::lane_groups::Width;
use crate::lane_groups::{map_groups, LaneGroups};
use crate::lanes::Lanes;
use crate::params::Params;
use crate::scalar::Real;
pub use crate::task::FamilyLanes;
use crate::task::TaskFamily;

/// A function of one task instance, written once for every scalar type, that [`vmap`]
/// runs over many instances at once (the seed's `train_task(cfg, key)`).
pub trait VmapFn<F: TaskFamily>: Sync {
    /// Runs on the instances packed in `cfg` (one per lane of `S`) with one key per lane
    /// (`S::Key`: a plain [`Key`] when `S` is `f32`).
    fn call<S: Real>(&self, family: &F, cfg: &F::Cfg<S>, keys: S::Key) -> S;
}

/// The lane groups [`vmap`] forms at `width`: indices into `cfgs`, each group holding
/// instances of one shape, in order of first appearance, at most `width.lanes()` per
/// group (so as few groups as possible).
///
/// Two configurations have one shape when their leaves have the same shapes and their
/// skipped (`#[params(skip)]`) fields are equal ([`Params::same_structure`]).
pub fn lane_groups<P: Params>(cfgs: &[P], width: Width) -> Vec<Vec<usize>> {
    LaneGroups::by_structure(cfgs, width.lanes()).to_vecs()
}

fn run_groups<F, Fun, S>(family: &F, f: &Fun, cfgs: &[F::Cfg<f32>], keys: &[Key]) -> Vec<f32>
where
    F: TaskFamily,
    Fun: VmapFn<F>,
    S: Real,
{
    let groups = LaneGroups::by_structure(cfgs, S::LANES);
    let vals = map_groups(groups.len(), |k| {
        let g = groups.get(k);
        let refs: Vec<&F::Cfg<f32>> = g.iter().map(|&i| &cfgs[i]).collect();
        let cfg = family.pack_cfg::<S>(&refs);
        // Unused lanes repeat the last instance, as `pack_cfg` does.
        let lane_keys: Vec<Key> = (0..S::LANES).map(|l| keys[groups.member(k, l)]).collect();
        f.call::<S>(family, &cfg, S::Key::from_lane_keys(&lane_keys))
    });
    let mut out = vec![0.0f32; cfgs.len()];
    for (g, v) in groups.iter().zip(vals) {
        for (lane, &i) in g.iter().enumerate() {
            out[i] = v.lane(lane) as f32;
        }
    }
    out
}

/// Runs `f` over every (configuration, key) pair, batched `width` instances per lane
/// group ([`lane_groups`]), lane groups spread over the current Rayon pool (or run on the
/// calling thread when they are too quick to be worth it). Returns one value per
/// instance, in order. The same instance gives the same value at every width and thread
/// count.
///
/// Errors when `cfgs` and `keys` differ in length.
pub fn vmap<F, Fun>(
    family: &F,
    f: &Fun,
    cfgs: &[F::Cfg<f32>],
    keys: &[Key],
    width: Width,
) -> Result<Vec<f32>>
where
    F: TaskFamily,
    Fun: VmapFn<F>,
{
    if cfgs.len() != keys.len() {
        return Err(Error::ShapeMismatch {
            what: "vmap: configurations and keys".into(),
            expected: vec![cfgs.len()],
            got: vec![keys.len()],
        });
    }
    if cfgs.is_empty() {
        return Ok(Vec::new());
    }
    Ok(match width {
        Width::Serial => run_groups::<F, Fun, f32>(family, f, cfgs, keys),
        Width::W8 => run_groups::<F, Fun, Lanes<8>>(family, f, cfgs, keys),
        Width::W16 => run_groups::<F, Fun, Lanes<16>>(family, f, cfgs, keys),
    })
}
