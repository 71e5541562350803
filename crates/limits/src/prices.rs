//! Model prices: USD per million input and output tokens. Shipped defaults for common
//! OpenAI and Anthropic models (list prices when this was written: check yours), overridden
//! or extended by `--prices-file`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::LimitError;

/// A model's price in USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

impl Price {
    /// The cost in USD of `input` and `output` tokens.
    pub fn cost(&self, input: u64, output: u64) -> f64 {
        (input as f64 * self.input_per_mtok + output as f64 * self.output_per_mtok) / 1e6
    }
}

const DEFAULTS: &[(&str, f64, f64)] = &[
    ("gpt-4o", 2.50, 10.00),
    ("gpt-4o-mini", 0.15, 0.60),
    ("gpt-4.1", 2.00, 8.00),
    ("gpt-4.1-mini", 0.40, 1.60),
    ("gpt-4.1-nano", 0.10, 0.40),
    ("o3", 2.00, 8.00),
    ("o3-mini", 1.10, 4.40),
    ("o4-mini", 1.10, 4.40),
    ("claude-opus-4-1", 15.00, 75.00),
    ("claude-opus-4", 15.00, 75.00),
    ("claude-sonnet-4-5", 3.00, 15.00),
    ("claude-sonnet-4", 3.00, 15.00),
    ("claude-3-7-sonnet", 3.00, 15.00),
    ("claude-haiku-4-5", 1.00, 5.00),
    ("claude-3-5-haiku", 0.80, 4.00),
    ("mock-1", 0.0, 0.0),
];

/// The price table: `{"models": {"<model>": {"input_per_mtok": 0.15, "output_per_mtok":
/// 0.6}}}`. A model is looked up by its exact name, else by the longest name it starts with
/// (`gpt-4o-mini-2024-07-18` → `gpt-4o-mini`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceTable {
    pub models: BTreeMap<String, Price>,
}

impl Default for PriceTable {
    fn default() -> Self {
        Self {
            models: DEFAULTS
                .iter()
                .map(|(m, i, o)| {
                    (
                        (*m).to_owned(),
                        Price {
                            input_per_mtok: *i,
                            output_per_mtok: *o,
                        },
                    )
                })
                .collect(),
        }
    }
}

impl PriceTable {
    /// The shipped prices, with `path`'s entries added or replacing them.
    pub fn load(path: Option<&Path>) -> Result<Self, LimitError> {
        let mut table = Self::default();
        if let Some(path) = path {
            let text = std::fs::read_to_string(path).map_err(|source| LimitError::Read {
                what: "price table",
                path: path.display().to_string(),
                source,
            })?;
            let file: PriceTable = serde_json::from_str(&text).map_err(|e| LimitError::Parse {
                what: "price table",
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            for (model, price) in file.models {
                let ok = [price.input_per_mtok, price.output_per_mtok]
                    .iter()
                    .all(|p| p.is_finite() && *p >= 0.0);
                if !ok {
                    return Err(LimitError::Parse {
                        what: "price table",
                        path: path.display().to_string(),
                        reason: format!("{model}: prices must be non-negative numbers"),
                    });
                }
                table.models.insert(model, price);
            }
        }
        Ok(table)
    }

    pub fn price(&self, model: &str) -> Option<Price> {
        if let Some(p) = self.models.get(model) {
            return Some(*p);
        }
        self.models
            .iter()
            .filter(|(name, _)| model.starts_with(name.as_str()))
            .max_by_key(|(name, _)| name.len())
            .map(|(_, p)| *p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dated_models_take_the_longest_prefix() {
        let t = PriceTable::default();
        assert_eq!(
            t.price("gpt-4o-mini-2024-07-18").map(|p| p.input_per_mtok),
            Some(0.15)
        );
        assert_eq!(
            t.price("gpt-4o-2024-08-06").map(|p| p.input_per_mtok),
            Some(2.5)
        );
        assert_eq!(t.price("llama3"), None);
        let p = t.price("claude-sonnet-4-5").unwrap();
        assert!((p.cost(1_000_000, 1_000_000) - 18.0).abs() < 1e-9);
    }
}
