//! `GradPlan`: where each activation's gradient lives during backward.
//!
//! Walking the tape in reverse, a gradient is first written by its last consumer's backward and
//! last read by its producer's backward; outside that interval its memory is free. The plan
//! gives every interval a slot by first-fit over a free list, so tensors that are never live
//! together share memory. The tape has the same shape every step, so the plan (and the memory
//! it needs) is the same every step, and its vectors keep their capacity: no allocation after
//! the first step. Backward zeroes each slot at the start of its interval.
//!
//! Positions: the node at tape index i runs at backward position p = len - 1 - i.

use crate::error::Result;
use crate::op::Op;
use crate::real::Real;
use crate::store::{Store, Var};

/// Position of slots that stay live to the end (inputs' gradients, which the caller reads).
const FOREVER: usize = usize::MAX;
const UNSET: usize = usize::MAX - 1;

#[derive(Default)]
pub(crate) struct GradPlan {
    start: Vec<usize>,
    end: Vec<usize>,
    /// Entries with a slot, ordered by start position: backward zeroes them in this order.
    pub(crate) by_start: Vec<u32>,
    by_end: Vec<u32>,
    /// Free blocks (offset, len) past the parameters, sorted by offset, never adjacent.
    free: Vec<(usize, usize)>,
}

impl GradPlan {
    pub(crate) fn start_of(&self, entry: u32) -> usize {
        self.start[entry as usize]
    }

    /// Place every activation gradient for a backward pass from `root` over `tape`.
    pub(crate) fn place<F: Real>(&mut self, store: &mut Store<F>, tape: &[Op], root: Var) -> Result<()> {
        let n = store.entry_count();
        self.start.clear();
        self.start.resize(n, UNSET);
        self.end.clear();
        self.end.resize(n, UNSET);
        let last = tape.len().saturating_sub(1);
        for (i, op) in tape.iter().enumerate() {
            let p = last - i;
            for v in op.grad_inputs().into_iter().flatten() {
                let e = v.index as usize;
                self.start[e] = self.start[e].min(p);
            }
            for v in op.grad_outputs().into_iter().flatten() {
                let e = v.index as usize;
                self.start[e] = self.start[e].min(p);
                self.end[e] = p;
            }
        }
        self.start[root.index as usize] = 0;
        self.by_start.clear();
        self.by_end.clear();
        for e in 0..n {
            if store.plannable_grad(e).is_some() && self.start[e] != UNSET {
                if store.is_leaf(e) || self.end[e] == UNSET {
                    self.end[e] = FOREVER;
                }
                self.by_start.push(e as u32);
                self.by_end.push(e as u32);
            }
        }
        let (start, end) = (&self.start, &self.end);
        self.by_start.sort_by_key(|&e| (start[e as usize], e));
        self.by_end.sort_by_key(|&e| (end[e as usize], e));

        // Sweep positions in order: at each, first place the intervals that start there, then
        // free those that end there (a node's inputs must not reuse its output's slot).
        self.free.clear();
        let mut top = 0;
        let (mut s, mut f) = (0, 0);
        while s < self.by_start.len() {
            let p = self.start[self.by_start[s] as usize];
            while s < self.by_start.len() && self.start[self.by_start[s] as usize] == p {
                let e = self.by_start[s] as usize;
                let len = store.plannable_grad(e).expect("planned entries have slots");
                let offset = take_first_fit(&mut self.free, len).unwrap_or_else(|| {
                    top += len;
                    top - len
                });
                store.place_grad(e, offset);
                s += 1;
            }
            while f < self.by_end.len() && self.end[self.by_end[f] as usize] <= p {
                let e = self.by_end[f] as usize;
                let len = store.plannable_grad(e).expect("planned entries have slots");
                let offset = store.grad_offset(e);
                give_back(&mut self.free, offset, len);
                f += 1;
            }
        }
        store.reserve_grads(top)
    }
}

/// Take `len` floats from the first free block big enough; its offset.
fn take_first_fit(free: &mut Vec<(usize, usize)>, len: usize) -> Option<usize> {
    let i = free.iter().position(|&(_, l)| l >= len)?;
    let (offset, l) = free[i];
    if l == len {
        free.remove(i);
    } else {
        free[i] = (offset + len, l - len);
    }
    Some(offset)
}

/// Return a block to the free list, merging it with its neighbours.
fn give_back(free: &mut Vec<(usize, usize)>, offset: usize, len: usize) {
    let i = free.partition_point(|&(o, _)| o < offset);
    free.insert(i, (offset, len));
    if i + 1 < free.len() && free[i].0 + free[i].1 == free[i + 1].0 {
        free[i].1 += free[i + 1].1;
        free.remove(i + 1);
    }
    if i > 0 && free[i - 1].0 + free[i - 1].1 == free[i].0 {
        free[i - 1].1 += free[i].1;
        free.remove(i);
    }
}
