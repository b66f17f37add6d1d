//! RFC 2782 ordering of SRV records (RFC 6120 §3.2.1, XEP-0368 §3: one set for
//! `xmpp-` and `xmpps-` records).

use ring::rand::{SecureRandom, SystemRandom};

use super::SrvRecord;

/// Uniform value in `0..=n` from the system CSPRNG (modulo bias < 2^-31).
pub fn system_rand(n: u32) -> u32 {
    let mut b = [0u8; 8];
    if SystemRandom::new().fill(&mut b).is_err() {
        return 0;
    }
    (u64::from_be_bytes(b) % (u64::from(n) + 1)) as u32
}

/// RFC 2782 ordering, pure: sort by priority ascending; within a priority,
/// weighted random selection (weight-0 records first in the list, running
/// sums, uniform random in `[0, total]`, pick the first with sum >= r, remove
/// it, repeat). `rand(n)` returns a uniform value in `0..=n`. Records with
/// target `"."` are dropped.
pub fn order_srv(records: Vec<SrvRecord>, rand: &mut dyn FnMut(u32) -> u32) -> Vec<SrvRecord> {
    order_by(records, |r| r, rand)
}

/// [`order_srv`] over any items that carry an [`SrvRecord`].
pub(super) fn order_by<T>(
    items: Vec<T>,
    rec: impl Fn(&T) -> &SrvRecord,
    rand: &mut dyn FnMut(u32) -> u32,
) -> Vec<T> {
    let mut items: Vec<T> = items.into_iter().filter(|i| rec(i).target != ".").collect();
    // Stable sort: priority, then weight 0 before the others.
    items.sort_by_key(|i| (rec(i).priority, rec(i).weight != 0));
    let mut out = Vec::with_capacity(items.len());
    let mut rest = items.into_iter().peekable();
    while let Some(first) = rest.next() {
        let prio = rec(&first).priority;
        let mut group = vec![first];
        while let Some(next) = rest.next_if(|i| rec(i).priority == prio) {
            group.push(next);
        }
        while !group.is_empty() {
            let total = group
                .iter()
                .fold(0u32, |s, i| s.saturating_add(u32::from(rec(i).weight)));
            let r = rand(total).min(total);
            let mut sum = 0u32;
            let pick = group
                .iter()
                .position(|i| {
                    sum = sum.saturating_add(u32::from(rec(i).weight));
                    sum >= r
                })
                .unwrap_or(0);
            out.push(group.remove(pick));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(priority: u16, weight: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port: 5269,
            target: target.to_string(),
        }
    }

    /// Deterministic xorshift64* mapped to 0..=n.
    fn seeded(mut state: u64) -> impl FnMut(u32) -> u32 {
        move |n| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let v = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
            ((v >> 16) % (u64::from(n) + 1)) as u32
        }
    }

    fn targets(v: &[SrvRecord]) -> Vec<&str> {
        v.iter().map(|r| r.target.as_str()).collect()
    }

    #[test]
    fn srv01_priority_ascending() {
        let recs = vec![rec(30, 5, "c"), rec(10, 5, "a"), rec(20, 5, "b")];
        let mut r = seeded(1);
        assert_eq!(targets(&order_srv(recs, &mut r)), ["a", "b", "c"]);
    }

    #[test]
    fn srv01_weight_zero_listed_first() {
        // rand always 0: the first record with running sum >= 0 is picked,
        // which must be the weight-0 one even though it was listed last.
        let recs = vec![rec(10, 5, "w5"), rec(10, 0, "w0")];
        let out = order_srv(recs, &mut |_| 0);
        assert_eq!(targets(&out), ["w0", "w5"]);
        // With a maximal rand the weighted record is picked first.
        let recs = vec![rec(10, 5, "w5"), rec(10, 0, "w0")];
        let out = order_srv(recs, &mut |n| n);
        assert_eq!(targets(&out), ["w5", "w0"]);
    }

    #[test]
    fn srv01_weighted_distribution() {
        let mut rand = seeded(0x5eed_1234_abcd_0001);
        let mut first = std::collections::HashMap::new();
        let runs = 10_000;
        for _ in 0..runs {
            let recs = vec![rec(1, 60, "a"), rec(1, 30, "b"), rec(1, 10, "c")];
            let out = order_srv(recs, &mut rand);
            assert_eq!(out.len(), 3);
            *first.entry(out[0].target.clone()).or_insert(0u32) += 1;
        }
        for (t, want) in [("a", 60.0), ("b", 30.0), ("c", 10.0)] {
            let pct = f64::from(first[t]) * 100.0 / f64::from(runs);
            assert!((pct - want).abs() <= 3.0, "{t}: {pct}% vs {want}%");
        }
    }

    #[test]
    fn srv02_root_target_dropped() {
        let recs = vec![rec(1, 0, "."), rec(2, 0, "b")];
        assert_eq!(targets(&order_srv(recs, &mut |_| 0)), ["b"]);
        assert!(order_srv(vec![rec(1, 0, ".")], &mut |_| 0).is_empty());
    }

    #[test]
    fn order_is_total_with_misbehaving_rand() {
        let recs = vec![rec(1, 1, "a"), rec(1, 1, "b"), rec(1, 0, "c")];
        let out = order_srv(recs, &mut |_| u32::MAX);
        assert_eq!(out.len(), 3);
    }
}
