//! Traffic routing: which arm serves a request. Sticky and monotone with a unit id,
//! weighted random without one.

use std::sync::Mutex;

use afs_store::Experiment;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{AbTestError, Result};

/// One side of an experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arm {
    /// The serving model.
    Champion,
    /// The model under test.
    Challenger,
}

impl Arm {
    /// `champion` or `challenger`.
    pub fn as_str(self) -> &'static str {
        match self {
            Arm::Champion => "champion",
            Arm::Challenger => "challenger",
        }
    }
}

/// What a router needs to know: the models, the challenger's weight and the routing seed.
/// A snapshot: build it once per configuration change, not per request.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingTable {
    champion: String,
    challenger: Option<String>,
    challenger_weight: f64,
    seed: u64,
}

impl RoutingTable {
    /// Every request to `champion`.
    pub fn champion_only(champion: impl Into<String>) -> Self {
        RoutingTable {
            champion: champion.into(),
            challenger: None,
            challenger_weight: 0.0,
            seed: 0,
        }
    }

    /// A split: `challenger` gets share `challenger_weight` (in [0, 1]) of traffic, and
    /// units hash with `seed`.
    pub fn split(
        champion: impl Into<String>,
        challenger: impl Into<String>,
        challenger_weight: f64,
        seed: u64,
    ) -> Result<Self> {
        if !challenger_weight.is_finite() || !(0.0..=1.0).contains(&challenger_weight) {
            return Err(AbTestError::invalid(
                "weight",
                format!("{challenger_weight} is not within [0, 1]"),
            ));
        }
        Ok(RoutingTable {
            champion: champion.into(),
            challenger: Some(challenger.into()),
            challenger_weight,
            seed,
        })
    }

    /// The split of a running experiment (its current weight and its seed).
    pub fn from_experiment(experiment: &Experiment) -> Self {
        RoutingTable {
            champion: experiment.champion.clone(),
            challenger: Some(experiment.challenger.clone()),
            challenger_weight: experiment.challenger_weight.clamp(0.0, 1.0),
            seed: experiment.seed,
        }
    }

    /// The champion's name.
    pub fn champion(&self) -> &str {
        &self.champion
    }

    /// The challenger's name, when an experiment runs.
    pub fn challenger(&self) -> Option<&str> {
        self.challenger.as_deref()
    }

    /// The challenger's share of traffic (0 without a challenger).
    pub fn challenger_weight(&self) -> f64 {
        if self.challenger.is_some() {
            self.challenger_weight
        } else {
            0.0
        }
    }

    /// The routing seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The model serving `arm` (the champion when there is no challenger).
    pub fn model(&self, arm: Arm) -> &str {
        match arm {
            Arm::Challenger => self.challenger.as_deref().unwrap_or(&self.champion),
            Arm::Champion => &self.champion,
        }
    }
}

/// Chooses the arm of each request.
///
/// # Contract
///
/// * Without a challenger in `table`, every request goes to [`Arm::Champion`].
/// * With a unit id (user or session) the answer is a pure function of the table's seed,
///   the unit and the weight, and is *monotone* in the weight: a unit routed to the
///   challenger at weight `w` is routed to the challenger at every weight above `w`.
/// * Without a unit id each request is an independent draw: challenger with probability
///   equal to the weight.
/// * `route` is called on the serving path: it must not block on I/O.
pub trait Router: Send + Sync {
    /// The arm that serves one request.
    fn route(&self, table: &RoutingTable, unit: Option<&str>) -> Arm;
}

/// The position of `unit` in [0, 1) for an experiment with routing `seed`: the first 53
/// bits of BLAKE3(seed as 8 little-endian bytes ‖ unit). The challenger owns [0, w).
pub fn unit_position(seed: u64, unit: &str) -> f64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&seed.to_le_bytes());
    hasher.update(unit.as_bytes());
    let hash = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    (u64::from_le_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// The default router: sticky BLAKE3 hashing for units, a random draw otherwise.
#[derive(Debug)]
pub struct HashRouter {
    rng: Mutex<StdRng>,
}

impl Default for HashRouter {
    fn default() -> Self {
        HashRouter {
            rng: Mutex::new(StdRng::from_entropy()),
        }
    }
}

impl HashRouter {
    /// The arm [`Router::route`] gives a unit at `position` (its [`unit_position`] under
    /// the table's seed): the challenger owns [0, weight). For callers that route the same
    /// units many times (the simulator) and keep their positions.
    pub fn arm_at(table: &RoutingTable, position: f64) -> Arm {
        if position < table.challenger_weight() {
            Arm::Challenger
        } else {
            Arm::Champion
        }
    }

    /// A router whose requests without a unit draw from the operating system's entropy.
    pub fn new() -> Self {
        Self::default()
    }

    /// A router whose unit-less draws repeat for a given seed (tests, simulations).
    pub fn seeded(seed: u64) -> Self {
        HashRouter {
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        }
    }
}

impl Router for HashRouter {
    fn route(&self, table: &RoutingTable, unit: Option<&str>) -> Arm {
        if table.challenger_weight() <= 0.0 {
            return Arm::Champion;
        }
        let position = match unit {
            Some(unit) => unit_position(table.seed, unit),
            None => self
                .rng
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .gen::<f64>(),
        };
        HashRouter::arm_at(table, position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_challenger_means_champion() {
        let router = HashRouter::seeded(1);
        let table = RoutingTable::champion_only("v1");
        assert_eq!(router.route(&table, Some("u")), Arm::Champion);
        assert_eq!(router.route(&table, None), Arm::Champion);
        assert_eq!(table.model(Arm::Challenger), "v1");
        assert!(RoutingTable::split("a", "b", 1.2, 0).is_err());
        assert!(RoutingTable::split("a", "b", f64::NAN, 0).is_err());
    }

    #[test]
    fn positions_depend_on_seed_and_unit() {
        assert_eq!(unit_position(7, "alice"), unit_position(7, "alice"));
        assert_ne!(unit_position(7, "alice"), unit_position(8, "alice"));
        assert_ne!(unit_position(7, "alice"), unit_position(7, "bob"));
        let p = unit_position(7, "alice");
        assert!((0.0..1.0).contains(&p));
    }

    #[test]
    fn weight_one_and_zero_are_absolute() {
        let router = HashRouter::seeded(3);
        let all = RoutingTable::split("a", "b", 1.0, 9).unwrap();
        let none = RoutingTable::split("a", "b", 0.0, 9).unwrap();
        for i in 0..1000 {
            let unit = format!("u{i}");
            assert_eq!(router.route(&all, Some(&unit)), Arm::Challenger);
            assert_eq!(router.route(&none, Some(&unit)), Arm::Champion);
        }
        assert!((0..1000).all(|_| router.route(&all, None) == Arm::Challenger));
    }
}
