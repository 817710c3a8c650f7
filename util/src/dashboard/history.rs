//! The last minutes of per-second figures, kept by the daemon so a page opened during an
//! incident shows what led to it.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

/// A ring of samples, one per second, each a set of named figures.
#[derive(Debug)]
pub struct History {
    /// This ring's identity: a restarted daemon numbers its samples afresh.
    boot: u64,
    capacity: usize,
    next_seq: u64,
    samples: VecDeque<Sample>,
    /// Each series name once, shared by the samples that carry it.
    names: HashMap<String, Arc<str>>,
}

#[derive(Debug)]
struct Sample {
    seq: u64,
    unix_ms: u64,
    values: Vec<(Arc<str>, f64)>,
}

/// The samples after a given one, by series: what a page appends to what it has.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryView {
    /// The ring's identity: when it changes, the page's samples are another daemon's.
    pub boot: u64,
    /// The sequence number of the last sample here (or of the last one the page had).
    pub last_seq: u64,
    /// Whether these follow the page's last sample directly. False after a gap (the page
    /// fell further behind than the ring holds) or a restart (sequence numbers went back):
    /// the page then replaces what it has rather than appending.
    pub contiguous: bool,
    /// Each sample's time, in milliseconds since the Unix epoch.
    pub t: Vec<u64>,
    /// Each series' values, one per sample (`None` where a sample lacks it).
    pub series: BTreeMap<String, Vec<Option<f64>>>,
}

impl History {
    /// A ring of `capacity` samples (at least one).
    pub fn new(capacity: usize) -> Self {
        // Nanoseconds of the wall clock at creation: different for every daemon start.
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        History {
            boot,
            capacity: capacity.max(1),
            next_seq: 1,
            samples: VecDeque::new(),
            names: HashMap::new(),
        }
    }

    /// Adds a sample taken at `unix_ms`; the oldest goes when the ring is full.
    pub fn push<'a>(&mut self, unix_ms: u64, values: impl IntoIterator<Item = (&'a str, f64)>) {
        let values = values
            .into_iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(name, v)| {
                let name = match self.names.get(name) {
                    Some(n) => n.clone(),
                    None => {
                        let n: Arc<str> = Arc::from(name);
                        self.names.insert(name.to_string(), n.clone());
                        n
                    }
                };
                (name, v)
            })
            .collect();
        self.samples.push_back(Sample {
            seq: self.next_seq,
            unix_ms,
            values,
        });
        self.next_seq += 1;
        if self.samples.len() > self.capacity {
            self.samples.pop_front();
            // Names of series no sample carries any more (a backend removed) are dropped
            // once a ring's worth of samples has passed.
            if self.next_seq.is_multiple_of(self.capacity as u64) {
                // Only the ring's own references remain: one here, one per sample.
                self.names.retain(|_, n| Arc::strong_count(n) > 1);
            }
        }
    }

    /// The samples after `after` (all of them when `None`).
    pub fn since(&self, after: Option<u64>) -> HistoryView {
        let last_seq = self.next_seq - 1;
        let first_held = self.samples.front().map(|s| s.seq);
        let after = after.filter(|a| *a <= last_seq);
        let contiguous = match (after, first_held) {
            (None, _) => false,
            (Some(a), Some(first)) => a + 1 >= first,
            (Some(_), None) => true,
        };
        let start = after.unwrap_or(0);
        let taken: Vec<&Sample> = self.samples.iter().filter(|s| s.seq > start).collect();
        let mut series: BTreeMap<String, Vec<Option<f64>>> = BTreeMap::new();
        for (i, s) in taken.iter().enumerate() {
            for (name, v) in &s.values {
                series
                    .entry(name.to_string())
                    .or_insert_with(|| vec![None; taken.len()])[i] = Some(*v);
            }
        }
        HistoryView {
            boot: self.boot,
            last_seq,
            contiguous,
            t: taken.iter().map(|s| s.unix_ms).collect(),
            series,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_gets_only_what_it_has_not_seen() {
        let mut h = History::new(3);
        h.push(1000, [("a", 1.0)]);
        h.push(2000, [("a", 2.0), ("b", 5.0)]);
        let all = h.since(None);
        assert_eq!(all.last_seq, 2);
        assert!(!all.contiguous, "a first answer replaces");
        assert_eq!(all.t, vec![1000, 2000]);
        assert_eq!(all.series["a"], vec![Some(1.0), Some(2.0)]);
        assert_eq!(all.series["b"], vec![None, Some(5.0)]);

        h.push(3000, [("a", 3.0)]);
        let next = h.since(Some(2));
        assert!(next.contiguous);
        assert_eq!(next.t, vec![3000]);
        assert_eq!(next.series["a"], vec![Some(3.0)]);
        assert!(!next.series.contains_key("b"));
        // Nothing new: contiguous and empty.
        let none = h.since(Some(3));
        assert!(none.contiguous && none.t.is_empty());
    }

    #[test]
    fn a_page_too_far_behind_or_from_before_a_restart_starts_over() {
        let mut h = History::new(2);
        for i in 0..5 {
            h.push(i * 1000, [("a", i as f64)]);
        }
        // Samples 4 and 5 are held; a page at 1 missed 2 and 3.
        let behind = h.since(Some(1));
        assert!(!behind.contiguous);
        assert_eq!(behind.t, vec![3000, 4000]);
        // A page that saw sample 9 talks to a restarted daemon: it gets everything.
        let ahead = h.since(Some(9));
        assert!(!ahead.contiguous);
        assert_eq!(ahead.t.len(), 2);
    }

    #[test]
    fn names_of_series_gone_are_forgotten_and_odd_values_skipped() {
        let mut h = History::new(2);
        h.push(0, [("gone", 1.0), ("nan", f64::NAN)]);
        for i in 1..10 {
            h.push(i, [("kept", 1.0)]);
        }
        assert!(!h.names.contains_key("gone"));
        assert!(!h.names.contains_key("nan"));
        assert!(h.names.contains_key("kept"));
    }
}
