//! Retention policies, GFS style: which backups of one source a policy keeps.
//!
//! Rules are applied to the backups newest first; a backup kept by several rules is kept once.
//! - `keep_last = N`: the N newest backups.
//! - `keep_daily/weekly/monthly/yearly = N`: the newest backup of each of the N most recent
//!   days / weeks (Monday to Sunday) / calendar months / years that have backups, in UTC.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// A retention policy. All zero keeps nothing by itself (see [`Policy::is_empty`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Newest backups kept regardless of date.
    pub keep_last: u32,
    /// Days with a kept backup.
    pub keep_daily: u32,
    /// Weeks with a kept backup.
    pub keep_weekly: u32,
    /// Months with a kept backup.
    pub keep_monthly: u32,
    /// Years with a kept backup.
    pub keep_yearly: u32,
}

impl Policy {
    /// Whether the policy has no rule at all (such a policy is never applied: it would delete everything).
    pub fn is_empty(&self) -> bool {
        self == &Policy::default()
    }
}

/// The ids among `backups` (id, creation time in Unix ms; any order) that `policy` keeps.
pub fn keep(policy: &Policy, backups: &[(String, i64)]) -> BTreeSet<String> {
    let mut sorted: Vec<&(String, i64)> = backups.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    let mut kept = BTreeSet::new();
    for (id, _) in sorted.iter().take(policy.keep_last as usize) {
        kept.insert(id.clone());
    }
    let day = |ms: i64| ms.div_euclid(86_400_000);
    // 1970-01-01 was a Thursday: shifting by 3 days makes weeks start on Monday.
    let week = |ms: i64| (day(ms) + 3).div_euclid(7);
    let month = |ms: i64| {
        let (y, m, _) = crate::time::civil(ms);
        y * 12 + m
    };
    let year = |ms: i64| crate::time::civil(ms).0;
    let rules: [(u32, &dyn Fn(i64) -> i64); 4] = [
        (policy.keep_daily, &day),
        (policy.keep_weekly, &week),
        (policy.keep_monthly, &month),
        (policy.keep_yearly, &year),
    ];
    for (count, bucket) in rules {
        let mut last: Option<i64> = None;
        let mut n = 0;
        for (id, ms) in &sorted {
            if n >= count {
                break;
            }
            let b = bucket(*ms);
            if last != Some(b) {
                kept.insert(id.clone());
                last = Some(b);
                n += 1;
            }
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_combine_and_overlap() {
        let day = 86_400_000i64;
        // Ten daily backups, 2026-01-01 .. 2026-01-10 (a Thursday .. a Saturday), at noon.
        let base = crate::time::parse_rfc3339("2026-01-01T12:00:00Z").unwrap_or(0);
        let b: Vec<(String, i64)> = (0..10)
            .map(|i| (format!("d{:02}", i + 1), base + i * day))
            .collect();
        let ids = |p: &Policy| keep(p, &b).into_iter().collect::<Vec<_>>();
        assert_eq!(
            ids(&Policy {
                keep_last: 2,
                ..Policy::default()
            }),
            ["d09", "d10"]
        );
        assert_eq!(
            ids(&Policy {
                keep_daily: 3,
                ..Policy::default()
            }),
            ["d08", "d09", "d10"]
        );
        // Weeks (Mon-Sun): Jan 5-11 -> d10; Dec 29-Jan 4 -> d04.
        assert_eq!(
            ids(&Policy {
                keep_weekly: 5,
                ..Policy::default()
            }),
            ["d04", "d10"]
        );
        assert_eq!(
            ids(&Policy {
                keep_monthly: 1,
                keep_last: 1,
                ..Policy::default()
            }),
            ["d10"]
        );
        assert!(Policy::default().is_empty());
        assert!(keep(&Policy::default(), &b).is_empty());
    }
}
