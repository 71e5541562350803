use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A priority lane. Workers take `high` before `normal` before `low`, except for the
/// guaranteed shares of the lower lanes ([`LaneShares`]), so that no lane starves.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    High,
    #[default]
    Normal,
    Low,
}

impl Lane {
    pub const ALL: [Lane; 3] = [Lane::High, Lane::Normal, Lane::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::High => "high",
            Self::Normal => "normal",
            Self::Low => "low",
        }
    }

    pub fn is_normal(&self) -> bool {
        *self == Self::Normal
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Lane {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "high" => Ok(Self::High),
            "normal" => Ok(Self::Normal),
            "low" => Ok(Self::Low),
            other => Err(format!(
                "unknown priority {other:?}: expected high, normal or low"
            )),
        }
    }
}

/// The share of a role's fetches (in percent) guaranteed to the `normal` and `low` lanes
/// whenever they have entries waiting, however many `high` entries wait: what keeps bulk
/// work moving under a steady stream of urgent work. The rest goes in priority order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneShares {
    pub normal: u8,
    pub low: u8,
}

impl Default for LaneShares {
    fn default() -> Self {
        Self { normal: 10, low: 5 }
    }
}

impl fmt::Display for LaneShares {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "normal={},low={}", self.normal, self.low)
    }
}

impl FromStr for LaneShares {
    type Err = String;
    /// `normal=10,low=5` (either may be left out: it keeps its default).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut shares = Self::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (lane, pct) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected LANE=PERCENT"))?;
            let pct: u8 = pct
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: the share is a whole percent, 0-100"))?;
            match lane.trim() {
                "normal" => shares.normal = pct,
                "low" => shares.low = pct,
                other => {
                    return Err(format!(
                        "{other:?}: shares are set for the lower lanes, normal and low (high takes the rest)"
                    ));
                }
            }
        }
        if u16::from(shares.normal) + u16::from(shares.low) > 100 {
            return Err(format!("{shares}: the shares add up to more than 100%"));
        }
        Ok(shares)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_parse_and_refuse_nonsense() {
        assert_eq!(
            "normal=20,low=1".parse::<LaneShares>().unwrap(),
            LaneShares { normal: 20, low: 1 }
        );
        assert_eq!("low=0".parse::<LaneShares>().unwrap().normal, 10);
        assert!("high=5".parse::<LaneShares>().is_err());
        assert!("normal=80,low=30".parse::<LaneShares>().is_err());
        assert!("normal".parse::<LaneShares>().is_err());
        assert!("urgent".parse::<Lane>().unwrap_err().contains("high"));
    }
}
