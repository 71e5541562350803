//! The limits file shared by the fleet, and how flags and file combine (the tightest
//! applicable limit wins).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{LimitArgs, LimitError};

/// One limit key's limits in the limits file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    #[serde(default)]
    pub rpm: Option<u64>,
    #[serde(default)]
    pub tpm: Option<u64>,
    #[serde(default)]
    pub max_concurrent_requests: Option<u64>,
}

/// Spending caps in USD (`None`: no cap).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budgets {
    #[serde(default)]
    pub fleet_daily_usd: Option<f64>,
    /// Every tenant's daily cap, unless `tenants` names its own.
    #[serde(default)]
    pub tenant_daily_usd: Option<f64>,
    /// Daily caps of named tenants.
    #[serde(default)]
    pub tenants: BTreeMap<String, f64>,
    #[serde(default)]
    pub task_usd: Option<f64>,
}

impl Budgets {
    pub fn any(&self) -> bool {
        self.fleet_daily_usd.is_some()
            || self.tenant_daily_usd.is_some()
            || !self.tenants.is_empty()
            || self.task_usd.is_some()
    }

    /// The cap that applies to `tenant`: its own, else every tenant's.
    pub fn tenant_cap(&self, tenant: &str) -> Option<f64> {
        self.tenants.get(tenant).copied().or(self.tenant_daily_usd)
    }
}

/// The limits file: `{"limits": {"<limit key>": {...}, "<limit key>/<model>": {...}},
/// "budgets": {...}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    #[serde(default)]
    pub limits: BTreeMap<String, FileLimits>,
    #[serde(default)]
    pub budgets: Budgets,
}

impl LimitsFile {
    pub fn read(path: &Path) -> Result<Self, LimitError> {
        let text = std::fs::read_to_string(path).map_err(|source| LimitError::Read {
            what: "limits file",
            path: path.display().to_string(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| LimitError::Parse {
            what: "limits file",
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }
}

/// What one worker enforces.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedLimits {
    /// The Redis limit key: the account, or `account/model` when the file limits the model.
    pub key: String,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_concurrent: Option<u64>,
    pub budgets: Budgets,
}

fn tightest(values: impl IntoIterator<Item = Option<u64>>) -> Option<u64> {
    values.into_iter().flatten().min()
}

fn tightest_f(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl ResolvedLimits {
    /// Combines the flags, the file's entry for the account and the file's entry for the
    /// account's `model`: every limit given anywhere applies, so the smallest wins.
    pub fn resolve(
        args: &LimitArgs,
        file: &LimitsFile,
        account: &str,
        model: &str,
    ) -> Result<Self, LimitError> {
        let model_key = format!("{account}/{model}");
        let per_account = file.limits.get(account).copied().unwrap_or_default();
        let per_model = file.limits.get(&model_key).copied();
        let key = if per_model.is_some() {
            model_key
        } else {
            account.to_owned()
        };
        let per_model = per_model.unwrap_or_default();
        let budgets = Budgets {
            fleet_daily_usd: tightest_f(args.budget_daily_usd, file.budgets.fleet_daily_usd),
            tenant_daily_usd: tightest_f(
                args.budget_tenant_daily_usd,
                file.budgets.tenant_daily_usd,
            ),
            tenants: file.budgets.tenants.clone(),
            task_usd: tightest_f(args.budget_task_usd, file.budgets.task_usd),
        };
        for (flag, v) in [
            ("--budget-daily-usd", budgets.fleet_daily_usd),
            ("--budget-tenant-daily-usd", budgets.tenant_daily_usd),
            ("--budget-task-usd", budgets.task_usd),
        ] {
            if let Some(v) = v
                && !(v.is_finite() && v >= 0.0)
            {
                return Err(LimitError::Value {
                    flag,
                    expected: "a non-negative number of USD",
                    value: v.to_string(),
                });
            }
        }
        let limits = Self {
            key,
            rpm: tightest([args.rpm, per_account.rpm, per_model.rpm]),
            tpm: tightest([args.tpm, per_account.tpm, per_model.tpm]),
            max_concurrent: tightest([
                args.max_concurrent_requests,
                per_account.max_concurrent_requests,
                per_model.max_concurrent_requests,
            ]),
            budgets,
        };
        for (flag, v) in [
            ("--rpm", limits.rpm),
            ("--tpm", limits.tpm),
            ("--max-concurrent-requests", limits.max_concurrent),
        ] {
            if v == Some(0) {
                return Err(LimitError::Value {
                    flag,
                    expected: "at least 1",
                    value: "0".to_owned(),
                });
            }
        }
        Ok(limits)
    }

    pub fn any_rate(&self) -> bool {
        self.rpm.is_some() || self.tpm.is_some() || self.max_concurrent.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        limits: LimitArgs,
    }

    fn args(flags: &[&str]) -> LimitArgs {
        let mut argv = vec!["x"];
        argv.extend(flags);
        Cli::parse_from(argv).limits
    }

    #[test]
    fn the_tightest_of_flags_account_and_model_wins() {
        let file: LimitsFile = serde_json::from_str(
            r#"{"limits": {"openai:api.openai.com": {"rpm": 500, "tpm": 9000},
                           "openai:api.openai.com/gpt-4o": {"rpm": 100}},
                "budgets": {"fleet_daily_usd": 20, "tenants": {"acme": 5}}}"#,
        )
        .unwrap();
        let r = ResolvedLimits::resolve(
            &args(&["--rpm", "300", "--budget-daily-usd", "50"]),
            &file,
            "openai:api.openai.com",
            "gpt-4o",
        )
        .unwrap();
        assert_eq!(r.key, "openai:api.openai.com/gpt-4o");
        assert_eq!(
            (r.rpm, r.tpm, r.max_concurrent),
            (Some(100), Some(9000), None)
        );
        assert_eq!(r.budgets.fleet_daily_usd, Some(20.0));
        assert_eq!(r.budgets.tenant_cap("acme"), Some(5.0));
        assert_eq!(r.budgets.tenant_cap("other"), None);
        let r = ResolvedLimits::resolve(&args(&[]), &file, "openai:api.openai.com", "gpt-4o-mini")
            .unwrap();
        assert_eq!(r.key, "openai:api.openai.com");
        assert_eq!(r.rpm, Some(500));
    }

    #[test]
    fn zero_limits_and_bad_files_are_refused() {
        let file = LimitsFile::default();
        assert!(ResolvedLimits::resolve(&args(&["--rpm", "0"]), &file, "a", "m").is_err());
        assert!(
            ResolvedLimits::resolve(&args(&["--budget-daily-usd=-1"]), &file, "a", "m").is_err()
        );
        assert!(serde_json::from_str::<LimitsFile>(r#"{"limits": {"a": {"rmp": 1}}}"#).is_err());
    }
}
