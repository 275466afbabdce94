//! A bounded union of half-open byte ranges.

/// Union of `[start, end)` ranges, sorted and disjoint (touching ranges are merged). When it
/// would hold more than `limit` ranges, the two neighbours with the smallest gap are merged
/// (the gap is then counted as covered: distinct bytes are over-estimated, never under) and
/// `coarsened` counts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeSet {
    ranges: Vec<(u64, u64)>,
    limit: usize,
    /// Merges done to stay within the limit.
    pub coarsened: u64,
}

impl Default for RangeSet {
    fn default() -> Self {
        Self::with_limit(1024)
    }
}

impl RangeSet {
    pub fn with_limit(limit: usize) -> Self {
        Self { ranges: Vec::new(), limit: limit.max(1), coarsened: 0 }
    }

    /// Adds `[start, end)`; empty ranges are ignored.
    pub fn insert(&mut self, start: u64, end: u64) {
        if end <= start {
            return;
        }
        // First range whose end reaches `start` (touching counts as overlapping).
        let i = self.ranges.partition_point(|&(_, e)| e < start);
        let mut j = i;
        let (mut s, mut e) = (start, end);
        while j < self.ranges.len() && self.ranges[j].0 <= end {
            s = s.min(self.ranges[j].0);
            e = e.max(self.ranges[j].1);
            j += 1;
        }
        self.ranges.splice(i..j, [(s, e)]);
        while self.ranges.len() > self.limit {
            let k = (0..self.ranges.len() - 1)
                .min_by_key(|&k| self.ranges[k + 1].0 - self.ranges[k].1)
                .expect("at least two ranges");
            self.ranges[k].1 = self.ranges[k + 1].1;
            self.ranges.remove(k + 1);
            self.coarsened += 1;
        }
    }

    /// Adds every range of `other`.
    pub fn union(&mut self, other: &RangeSet) {
        for &(s, e) in &other.ranges {
            self.insert(s, e);
        }
        self.coarsened += other.coarsened;
    }

    /// Bytes covered.
    pub fn covered(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }

    /// Bytes of `other` that are also covered here.
    pub fn overlap(&self, other: &RangeSet) -> u64 {
        let mut n = 0;
        for &(s, e) in &other.ranges {
            for &(a, b) in &self.ranges {
                let (lo, hi) = (s.max(a), e.min(b));
                if hi > lo {
                    n += hi - lo;
                }
            }
        }
        n
    }

    /// End of the last range (0 when empty).
    pub fn max_end(&self) -> u64 {
        self.ranges.last().map_or(0, |r| r.1)
    }

    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_and_touching_ranges_merge() {
        let mut r = RangeSet::default();
        r.insert(10, 20);
        r.insert(30, 40);
        r.insert(15, 32); // bridges both
        assert_eq!(r.ranges(), &[(10, 40)]);
        r.insert(40, 50); // touching
        r.insert(0, 5);
        r.insert(12, 13); // inside
        r.insert(7, 7); // empty
        assert_eq!(r.ranges(), &[(0, 5), (10, 50)]);
        assert_eq!(r.covered(), 45);
    }

    #[test]
    fn limit_merges_smallest_gap_and_counts() {
        let mut r = RangeSet::with_limit(2);
        r.insert(0, 10);
        r.insert(100, 110);
        r.insert(12, 20); // gap 2 to the first: merged
        assert_eq!(r.ranges(), &[(0, 20), (100, 110)]);
        assert_eq!(r.coarsened, 1);
        assert_eq!(r.covered(), 30);
    }

    #[test]
    fn union_and_overlap() {
        let mut a = RangeSet::default();
        a.insert(0, 100);
        let mut b = RangeSet::default();
        b.insert(50, 150);
        b.insert(200, 210);
        assert_eq!(a.overlap(&b), 50);
        a.union(&b);
        assert_eq!(a.covered(), 160);
        assert_eq!(a.max_end(), 210);
    }
}
