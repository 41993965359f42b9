//! Allocation of map slots: ids (frontends, backends, services) and regions of
//! the Maglev pool.
//!
//! A freed slot is not handed out again for [`GRACE`]: a packet that read the
//! old value just before it was freed may still be using it on another CPU.

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, Instant},
};

/// How long a freed slot stays unused before it may be reused.
pub const GRACE: Duration = Duration::from_secs(2);

/// Ids `0..capacity`, with a generation per id that grows on each reuse (never
/// 0, so 0 can mean "no such id" in the maps).
#[derive(Debug)]
pub struct IdAllocator {
    capacity: u32,
    next_unused: u32,
    free: VecDeque<u32>,
    cooling: VecDeque<(u32, Instant)>,
    generations: Vec<u32>,
}

impl IdAllocator {
    pub fn new(capacity: u32) -> Self {
        Self {
            capacity,
            next_unused: 0,
            free: VecDeque::new(),
            cooling: VecDeque::new(),
            generations: Vec::new(),
        }
    }

    /// Resumes after another process: `generations[id]` is the last
    /// generation given to each id (0: never used) and `in_use` the ids still
    /// held. The next generation of every id is higher than its last.
    pub fn resume(
        capacity: u32,
        mut generations: Vec<u32>,
        in_use: &std::collections::BTreeSet<u32>,
    ) -> Self {
        let last_used = generations
            .iter()
            .rposition(|g| *g != 0)
            .map_or(0, |i| i + 1);
        let next_unused = (last_used as u32)
            .max(in_use.last().map_or(0, |id| id + 1))
            .min(capacity);
        generations.truncate(next_unused as usize);
        Self {
            capacity,
            next_unused,
            free: (0..next_unused).filter(|id| !in_use.contains(id)).collect(),
            cooling: VecDeque::new(),
            generations,
        }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Ids handed out and not freed.
    pub fn in_use(&self) -> u32 {
        self.next_unused - self.free.len() as u32 - self.cooling.len() as u32
    }

    fn warm_up(&mut self, now: Instant) {
        while let Some((id, since)) = self.cooling.front() {
            if now.duration_since(*since) < GRACE {
                break;
            }
            self.free.push_back(*id);
            self.cooling.pop_front();
        }
    }

    /// Ids that [`IdAllocator::alloc`] can hand out now.
    pub fn available(&mut self, now: Instant) -> u32 {
        self.warm_up(now);
        self.free.len() as u32 + (self.capacity - self.next_unused)
    }

    /// An id and its new generation.
    pub fn alloc(&mut self, now: Instant) -> Option<(u32, u32)> {
        self.warm_up(now);
        let id = match self.free.pop_front() {
            Some(id) => id,
            None if self.next_unused < self.capacity => {
                self.next_unused += 1;
                self.next_unused - 1
            }
            None => return None,
        };
        let idx = id as usize;
        if self.generations.len() <= idx {
            self.generations.resize(idx + 1, 0);
        }
        let generation = self.generations[idx].wrapping_add(1).max(1);
        self.generations[idx] = generation;
        Some((id, generation))
    }

    pub fn free(&mut self, id: u32, now: Instant) {
        self.cooling.push_back((id, now));
    }
}

/// A run of slots in the Maglev pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Region {
    pub offset: u32,
    pub len: u32,
}

/// First-fit allocator of regions of `0..capacity`, merging neighbours on free.
#[derive(Debug)]
pub struct RegionAllocator {
    capacity: u32,
    /// offset → length of each free run.
    free: BTreeMap<u32, u32>,
    cooling: VecDeque<(Region, Instant)>,
}

impl RegionAllocator {
    pub fn new(capacity: u32) -> Self {
        let mut free = BTreeMap::new();
        if capacity > 0 {
            free.insert(0, capacity);
        }
        Self {
            capacity,
            free,
            cooling: VecDeque::new(),
        }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Resumes after another process, with `used` regions handed out.
    pub fn resume(capacity: u32, used: &[Region]) -> Self {
        let mut pool = Self::new(0);
        pool.capacity = capacity;
        let mut sorted = used.to_vec();
        sorted.sort_by_key(|r| r.offset);
        let mut at = 0;
        for r in sorted {
            if r.offset > at {
                pool.free.insert(at, r.offset - at);
            }
            at = at.max(r.offset + r.len);
        }
        if at < capacity {
            pool.free.insert(at, capacity - at);
        }
        pool
    }

    /// Slots in regions handed out and not yet reusable.
    pub fn in_use(&self) -> u32 {
        self.capacity - self.free.values().sum::<u32>()
    }

    fn warm_up(&mut self, now: Instant) {
        while let Some((region, since)) = self.cooling.front().copied() {
            if now.duration_since(since) < GRACE {
                break;
            }
            self.cooling.pop_front();
            self.release(region);
        }
    }

    fn release(&mut self, region: Region) {
        let mut offset = region.offset;
        let mut len = region.len;
        if let Some((&prev, &prev_len)) = self.free.range(..offset).next_back()
            && prev + prev_len == offset
        {
            self.free.remove(&prev);
            offset = prev;
            len += prev_len;
        }
        if let Some(&next_len) = self.free.get(&(offset + len)) {
            self.free.remove(&(offset + len));
            len += next_len;
        }
        self.free.insert(offset, len);
    }

    /// Whether regions of all these lengths can be allocated now.
    pub fn can_fit(&mut self, lens: &[u32], now: Instant) -> bool {
        self.warm_up(now);
        let mut runs: Vec<u32> = self.free.values().copied().collect();
        let mut sorted = lens.to_vec();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        // Largest first into the first run that holds it, as `alloc` would.
        for len in sorted {
            match runs.iter_mut().find(|r| **r >= len) {
                Some(run) => *run -= len,
                None => return false,
            }
        }
        true
    }

    pub fn alloc(&mut self, len: u32, now: Instant) -> Option<Region> {
        self.warm_up(now);
        let (&offset, &run) = self.free.iter().find(|(_, run)| **run >= len)?;
        self.free.remove(&offset);
        if run > len {
            self.free.insert(offset + len, run - len);
        }
        Some(Region { offset, len })
    }

    pub fn free(&mut self, region: Region, now: Instant) {
        self.cooling.push_back((region, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_reused_only_after_grace_with_a_new_generation() {
        let t0 = Instant::now();
        let mut ids = IdAllocator::new(2);
        assert_eq!(ids.alloc(t0), Some((0, 1)));
        assert_eq!(ids.alloc(t0), Some((1, 1)));
        assert_eq!(ids.alloc(t0), None);
        ids.free(0, t0);
        assert_eq!(ids.available(t0), 0);
        assert_eq!(ids.alloc(t0 + GRACE / 2), None);
        assert_eq!(ids.alloc(t0 + GRACE), Some((0, 2)));
        assert_eq!(ids.in_use(), 2);
    }

    #[test]
    fn resumed_allocators_keep_generations_growing() {
        let t0 = Instant::now();
        let in_use = [1u32, 3].into_iter().collect();
        let mut ids = IdAllocator::resume(8, vec![5, 2, 0, 7], &in_use);
        assert_eq!(ids.in_use(), 2);
        assert_eq!(ids.alloc(t0), Some((0, 6)), "free id 0 was at generation 5");
        assert_eq!(ids.alloc(t0), Some((2, 1)));
        assert_eq!(ids.alloc(t0), Some((4, 1)));
        let mut pool = RegionAllocator::resume(
            100,
            &[
                Region {
                    offset: 10,
                    len: 20,
                },
                Region {
                    offset: 50,
                    len: 10,
                },
            ],
        );
        assert_eq!(pool.in_use(), 30);
        assert!(pool.can_fit(&[40, 20, 10], t0));
        assert!(!pool.can_fit(&[41], t0));
    }

    #[test]
    fn regions_merge_when_freed() {
        let t0 = Instant::now();
        let mut pool = RegionAllocator::new(100);
        let a = pool.alloc(30, t0).unwrap();
        let b = pool.alloc(30, t0).unwrap();
        let c = pool.alloc(40, t0).unwrap();
        assert_eq!((a.offset, b.offset, c.offset), (0, 30, 60));
        assert!(pool.alloc(1, t0).is_none());
        pool.free(a, t0);
        pool.free(c, t0);
        assert!(!pool.can_fit(&[30], t0), "freed regions cool down first");
        let later = t0 + GRACE;
        assert!(pool.can_fit(&[40, 30], later));
        assert!(!pool.can_fit(&[50], later));
        pool.free(b, later);
        assert!(pool.can_fit(&[100], later + GRACE));
        assert_eq!(
            pool.alloc(100, later + GRACE),
            Some(Region {
                offset: 0,
                len: 100
            })
        );
    }
}
