//! The moved service's data in the simulated world: one store per region (the region's writer
//! and the followers behind it, which pass writes on to it, count as one, as clients see
//! them), whether it accepts writes, which region's store it follows, and the client writes it
//! holds. The world moves the stores only as the agents carry out the replication commands the
//! product's controller sends (a follow, a fence, a promotion, a stop); clients' writes are
//! acknowledged by the store that accepts writes, and replication carries them at once to the
//! stores that follow it (the simulated agent's replication is always caught up).
//!
//! It must stay a plain, deterministic model: no randomness, no clock, nothing but what the
//! world hands it.

/// What a region's store does with a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// It applies writes: the service's writer.
    Writer,
    /// It refuses them: never written to, or no longer following.
    ReadOnly,
    /// It refuses them: the writer, fenced for a move; lifting the fence makes it the writer
    /// again.
    Fenced,
    /// It replicates region `.0`'s store and passes writes on to the writer.
    Follows(usize),
}

#[derive(Debug, Clone)]
struct Store {
    mode: Mode,
    /// Ids of the acknowledged writes it holds, ascending (ids only grow).
    held: Vec<u64>,
}

/// Every region's store and the writes acknowledged so far. See the module docs.
#[derive(Debug, Clone)]
pub(crate) struct Data {
    stores: Vec<Store>,
    /// Ids of every acknowledged write, ascending.
    acknowledged: Vec<u64>,
    next_write: u64,
}

impl Data {
    /// `regions` stores, of which `writer`'s accepts writes and the others hold nothing.
    pub fn new(regions: usize, writer: usize) -> Self {
        let stores = (0..regions)
            .map(|r| Store {
                mode: if r == writer {
                    Mode::Writer
                } else {
                    Mode::ReadOnly
                },
                held: Vec::new(),
            })
            .collect();
        Self {
            stores,
            acknowledged: Vec::new(),
            next_write: 0,
        }
    }

    /// The regions whose store accepts writes now (more than one: two writers).
    pub fn writers(&self) -> Vec<usize> {
        (0..self.stores.len())
            .filter(|&r| self.stores[r].mode == Mode::Writer)
            .collect()
    }

    /// Region `r`'s store starts following region `source`'s: it stops accepting writes and
    /// holds what the source holds (a follower takes the source's log as it is).
    pub fn handle_follow(&mut self, r: usize, source: usize) {
        self.stores[r].mode = Mode::Follows(source);
        self.stores[r].held = self.stores[source].held.clone();
    }

    /// Region `r`'s store is fenced: a writer stops accepting writes (a follower already
    /// does not).
    pub fn handle_fence(&mut self, r: usize) {
        if self.stores[r].mode == Mode::Writer {
            self.stores[r].mode = Mode::Fenced;
        }
    }

    /// Region `r`'s fence is lifted: a fenced writer accepts writes again, with what it holds.
    pub fn handle_unfence(&mut self, r: usize) {
        if self.stores[r].mode == Mode::Fenced {
            self.stores[r].mode = Mode::Writer;
        }
    }

    /// Whether region `r`'s store is a writer fenced for a move.
    pub fn fenced(&self, r: usize) -> bool {
        self.stores[r].mode == Mode::Fenced
    }

    /// Region `r`'s store is promoted: it accepts writes, with what it holds.
    pub fn handle_promote(&mut self, r: usize) {
        self.stores[r].mode = Mode::Writer;
    }

    /// Region `r`'s store stops following: read-only, keeping what it holds.
    pub fn handle_unfollow(&mut self, r: usize) {
        if matches!(self.stores[r].mode, Mode::Follows(_)) {
            self.stores[r].mode = Mode::ReadOnly;
        }
    }

    /// A client write reaches region `r`: applied there if its store is the writer, else passed
    /// on to the writer, else (nobody accepts writes: the fence window) refused. The region
    /// that acknowledged it, if one did; the stores following it receive it too.
    pub fn handle_write(&mut self, r: usize) -> Option<usize> {
        let writer = if self.stores[r].mode == Mode::Writer {
            r
        } else {
            *self.writers().first()?
        };
        self.next_write += 1;
        let id = self.next_write;
        self.acknowledged.push(id);
        for store in &mut self.stores {
            if store.mode == Mode::Follows(writer) {
                store.held.push(id);
            }
        }
        self.stores[writer].held.push(id);
        Some(writer)
    }

    /// Acknowledged writes region `r`'s store does not hold.
    pub fn missing(&self, r: usize) -> Vec<u64> {
        let held = &self.stores[r].held;
        self.acknowledged
            .iter()
            .copied()
            .filter(|id| held.binary_search(id).is_err())
            .collect()
    }

    /// How many writes were acknowledged.
    pub fn acknowledged(&self) -> usize {
        self.acknowledged.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_moves_by_follow_fence_promote_and_back_without_losing_a_write() {
        let mut data = Data::new(2, 0);
        assert_eq!(data.handle_write(1), Some(0), "passed on to the writer");
        data.handle_follow(1, 0);
        assert_eq!(data.handle_write(0), Some(0));
        data.handle_fence(0);
        assert_eq!(data.writers(), Vec::<usize>::new());
        assert_eq!(data.handle_write(0), None, "refused in the fence window");
        data.handle_promote(1);
        assert_eq!(data.writers(), vec![1]);
        assert_eq!(data.handle_write(0), Some(1));
        assert_eq!(data.missing(1), Vec::<u64>::new());
        // The rollback after the promotion: the mirror image.
        data.handle_follow(0, 1);
        data.handle_fence(1);
        data.handle_promote(0);
        assert_eq!(data.handle_write(1), Some(0));
        assert_eq!((data.writers(), data.missing(0)), (vec![0], Vec::new()));
        assert_eq!(data.acknowledged(), 4);
    }

    #[test]
    fn a_lifted_fence_makes_the_fenced_writer_the_writer_again_and_nothing_else() {
        let mut data = Data::new(2, 0);
        data.handle_follow(1, 0);
        data.handle_write(0);
        data.handle_fence(0);
        assert!(data.fenced(0));
        assert_eq!(
            data.handle_write(1),
            None,
            "nobody writes while the move waits"
        );
        data.handle_unfence(1);
        assert_eq!(
            data.writers(),
            Vec::<usize>::new(),
            "a follower is not lifted"
        );
        data.handle_unfence(0);
        assert_eq!((data.writers(), data.fenced(0)), (vec![0], false));
        assert_eq!(data.handle_write(1), Some(0));
        assert_eq!(data.missing(0), Vec::<u64>::new());
    }

    #[test]
    fn a_promotion_without_a_fence_makes_two_writers_and_loses_what_the_old_one_takes() {
        let mut data = Data::new(2, 0);
        data.handle_follow(1, 0);
        data.handle_promote(1);
        assert_eq!(data.writers(), vec![0, 1]);
        assert_eq!(data.handle_write(0), Some(0));
        assert_eq!(data.handle_write(1), Some(1));
        assert_eq!(data.missing(1), vec![1]);
    }

    #[test]
    fn a_stopped_follower_is_read_only_and_a_fence_does_not_stop_a_follow() {
        let mut data = Data::new(2, 0);
        data.handle_follow(1, 0);
        data.handle_fence(1);
        data.handle_write(0);
        assert_eq!(data.missing(1), Vec::<u64>::new(), "still following");
        data.handle_unfollow(1);
        data.handle_write(0);
        assert_eq!(data.missing(1), vec![2]);
        assert_eq!(data.writers(), vec![0]);
    }
}
