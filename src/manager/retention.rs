//! Retention (FORMAT.md 12.4): a pure function of a series' checkpoints
//! and the policy, returning the rules that keep each checkpoint.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use super::{Mode, Policy};

/// A rule that keeps a checkpoint (FORMAT.md 12.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// The newest checkpoint, always.
    Latest,
    /// A pinned checkpoint.
    Pinned,
    /// One of the `keep_last` newest.
    Last,
    /// One of the `keep_best` best by the policy's metric.
    Best,
    /// A step that is a multiple of `keep_every_steps`.
    Every,
    /// Every checkpoint, when the policy limits nothing.
    All,
}

impl Rule {
    /// The rule's name as FORMAT.md writes it (`"latest"`, `"pinned"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Latest => "latest",
            Rule::Pinned => "pinned",
            Rule::Last => "last",
            Rule::Best => "best",
            Rule::Every => "every",
            Rule::All => "all",
        }
    }
}

/// A checkpoint of the series, as retention sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The file name (not the path).
    pub name: String,
    pub step: u64,
    pub timestamp: u64,
    /// The manager block's metrics.
    pub metrics: Map<String, Value>,
    pub pinned: bool,
}

/// "Newest" order (FORMAT.md 12.4): by step, then timestamp, then the
/// name's collision number (`-9` before `-10`; none is 0), then file name
/// bytes.
pub fn newer(a: &Candidate, b: &Candidate) -> Ordering {
    (a.step, a.timestamp, collision_number(&a.name), a.name.as_bytes()).cmp(&(
        b.step,
        b.timestamp,
        collision_number(&b.name),
        b.name.as_bytes(),
    ))
}

/// The `n` of a file named `{stem}-{n}.zip` (a same-second collision,
/// FORMAT.md 7); 0 for a name without one.
pub fn collision_number(name: &str) -> u64 {
    name.strip_suffix(".zip")
        .and_then(|stem| stem.rsplit_once('-'))
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(0)
}

/// For each candidate (in the order given), the rules that keep it, in
/// [`Rule`]'s order; an empty list means retention deletes it.
pub fn decide(candidates: &[Candidate], policy: &Policy) -> Vec<Vec<Rule>> {
    let mut rules = vec![Vec::new(); candidates.len()];
    // Indices newest first.
    let mut by_age: Vec<usize> = (0..candidates.len()).collect();
    by_age.sort_by(|&a, &b| newer(&candidates[b], &candidates[a]));
    if let Some(&newest) = by_age.first() {
        rules[newest].push(Rule::Latest);
    }
    for (i, c) in candidates.iter().enumerate() {
        if c.pinned {
            rules[i].push(Rule::Pinned);
        }
    }
    if let Some(n) = policy.keep_last {
        for &i in by_age.iter().take(n) {
            rules[i].push(Rule::Last);
        }
    }
    if let (Some(k), Some(metric)) = (policy.keep_best, &policy.metric) {
        // Newest first, then a stable sort by value: ties go to the newer.
        let mut scored: Vec<(usize, f64)> = by_age
            .iter()
            .filter_map(|&i| metric_value(&candidates[i], metric).map(|v| (i, v)))
            .collect();
        scored.sort_by(|a, b| match policy.mode {
            Mode::Min => a.1.total_cmp(&b.1),
            Mode::Max => b.1.total_cmp(&a.1),
        });
        for &(i, _) in scored.iter().take(k) {
            rules[i].push(Rule::Best);
        }
    }
    if let Some(s) = policy.keep_every_steps {
        for (i, c) in candidates.iter().enumerate() {
            if c.step % s == 0 {
                rules[i].push(Rule::Every);
            }
        }
    }
    if policy.keep_last.is_none() && policy.keep_best.is_none() && policy.keep_every_steps.is_none() {
        for r in &mut rules {
            r.push(Rule::All);
        }
    }
    rules
}

/// The candidate's value of `metric`, when it has a finite one.
pub fn metric_value(c: &Candidate, metric: &str) -> Option<f64> {
    c.metrics.get(metric).and_then(Value::as_f64).filter(|v| v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(name: &str, step: u64, loss: Option<f64>, pinned: bool) -> Candidate {
        let mut metrics = Map::new();
        if let Some(l) = loss {
            metrics.insert("loss".into(), Value::from(l));
        }
        Candidate {
            name: name.into(),
            step,
            timestamp: 100,
            metrics,
            pinned,
        }
    }

    fn kept(rules: &[Vec<Rule>]) -> Vec<bool> {
        rules.iter().map(|r| !r.is_empty()).collect()
    }

    #[test]
    fn each_rule_keeps_what_the_table_says() {
        let c = vec![
            cand("a", 0, Some(0.5), false),
            cand("b", 10, Some(0.1), false),
            cand("c", 20, Some(0.1), true),
            cand("d", 30, None, false),
            cand("e", 40, Some(0.9), false),
        ];
        let all = decide(&c, &Policy::new("p"));
        assert!(all.iter().all(|r| r.contains(&Rule::All)));
        let last = Policy {
            keep_last: Some(2),
            ..Policy::new("p")
        };
        let r = decide(&c, &last);
        assert_eq!(kept(&r), [false, false, true, true, true]);
        assert_eq!(r[4], [Rule::Latest, Rule::Last]);
        assert_eq!(r[2], [Rule::Pinned]);
        let best = Policy {
            keep_best: Some(1),
            metric: Some("loss".into()),
            ..Policy::new("p")
        };
        // 0.1 twice: the newer (c, step 20) wins the tie.
        assert_eq!(decide(&c, &best)[2], [Rule::Pinned, Rule::Best]);
        assert!(decide(&c, &best)[1].is_empty());
        let max = Policy {
            mode: Mode::Max,
            ..best
        };
        assert_eq!(decide(&c, &max)[4], [Rule::Latest, Rule::Best]);
        let every = Policy {
            keep_every_steps: Some(20),
            ..Policy::new("p")
        };
        assert_eq!(kept(&decide(&c, &every)), [true, false, true, false, true]);
        assert!(decide(&[], &every).is_empty());
    }

    #[test]
    fn newest_orders_by_step_then_timestamp_then_name() {
        let mut a = cand("x_checkpoint_5.zip", 3, None, false);
        let mut b = cand("x_checkpoint_4.zip", 3, None, false);
        assert_eq!(newer(&a, &b), Ordering::Greater);
        b.timestamp = 101;
        assert_eq!(newer(&a, &b), Ordering::Less);
        a.step = 4;
        assert_eq!(newer(&a, &b), Ordering::Greater);
        // Same step and second: the later collision number is newer.
        let nine = cand("x_checkpoint_5-9.zip", 3, None, false);
        let ten = cand("x_checkpoint_5-10.zip", 3, None, false);
        let plain = cand("x_checkpoint_5.zip", 3, None, false);
        assert_eq!(newer(&ten, &nine), Ordering::Greater);
        assert_eq!(newer(&nine, &plain), Ordering::Greater);
    }
}
