//! Byte ranges as sorted, disjoint, non-empty `(start, end)` pairs (end exclusive).

/// A set of byte ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ranges(Vec<(u64, u64)>);

impl Ranges {
    /// The empty set.
    pub fn new() -> Ranges {
        Ranges(Vec::new())
    }

    /// One range.
    pub fn single(start: u64, end: u64) -> Ranges {
        Ranges::from_unsorted(vec![(start, end)])
    }

    /// Normalises any list of ranges (sorts, drops empty ones, merges overlaps and neighbours).
    pub fn from_unsorted(mut v: Vec<(u64, u64)>) -> Ranges {
        v.retain(|(a, b)| a < b);
        v.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
        for (a, b) in v {
            match out.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => out.push((a, b)),
            }
        }
        Ranges(out)
    }

    /// The ranges.
    pub fn as_slice(&self) -> &[(u64, u64)] {
        &self.0
    }

    /// Total bytes.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|(a, b)| b - a).sum()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds ranges.
    pub fn union(&self, other: &Ranges) -> Ranges {
        let mut v = self.0.clone();
        v.extend_from_slice(&other.0);
        Ranges::from_unsorted(v)
    }

    /// The part of `self` inside `other`.
    pub fn intersect(&self, other: &Ranges) -> Ranges {
        let (mut i, mut j, mut out) = (0, 0, Vec::new());
        while i < self.0.len() && j < other.0.len() {
            let (a, b) = self.0[i];
            let (c, d) = other.0[j];
            let (s, e) = (a.max(c), b.min(d));
            if s < e {
                out.push((s, e));
            }
            if b < d {
                i += 1;
            } else {
                j += 1;
            }
        }
        Ranges(out)
    }

    /// The part of `self` outside `other`.
    pub fn subtract(&self, other: &Ranges) -> Ranges {
        let mut out = Vec::new();
        let mut j = 0;
        for &(a, b) in &self.0 {
            let mut cur = a;
            while j < other.0.len() && other.0[j].1 <= cur {
                j += 1;
            }
            let mut k = j;
            while k < other.0.len() && other.0[k].0 < b {
                let (c, d) = other.0[k];
                if c > cur {
                    out.push((cur, c.min(b)));
                }
                cur = cur.max(d);
                if cur >= b {
                    break;
                }
                k += 1;
            }
            if cur < b {
                out.push((cur, b));
            }
        }
        Ranges(out)
    }

    /// The ranges that overlap `[start, end)`, clipped to it.
    pub fn clip(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let i = self.0.partition_point(|&(_, b)| b <= start);
        self.0[i..]
            .iter()
            .take_while(|&&(a, _)| a < end)
            .map(|&(a, b)| (a.max(start), b.min(end)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algebra() {
        let a = Ranges::from_unsorted(vec![(10, 20), (0, 5), (4, 8), (30, 40), (40, 45), (50, 50)]);
        assert_eq!(a.as_slice(), &[(0, 8), (10, 20), (30, 45)]);
        let b = Ranges::from_unsorted(vec![(6, 12), (15, 35)]);
        assert_eq!(
            a.intersect(&b).as_slice(),
            &[(6, 8), (10, 12), (15, 20), (30, 35)]
        );
        assert_eq!(a.subtract(&b).as_slice(), &[(0, 6), (12, 15), (35, 45)]);
        assert_eq!(a.union(&b).as_slice(), &[(0, 45)]);
        assert_eq!(a.clip(5, 32), vec![(5, 8), (10, 20), (30, 32)]);
        assert_eq!(a.total(), 8 + 10 + 15);
        // Brute force against a bitmap.
        let bits = |r: &Ranges| {
            (0..50)
                .map(|x| r.as_slice().iter().any(|&(s, e)| s <= x && x < e))
                .collect::<Vec<_>>()
        };
        let (ba, bb) = (bits(&a), bits(&b));
        let sub: Vec<bool> = ba.iter().zip(&bb).map(|(x, y)| *x && !*y).collect();
        assert_eq!(bits(&a.subtract(&b)), sub);
    }
}
