//! `Store`: where every tensor of a graph lives, addressed by `Var` handles.
//!
//! Floats live in two buffers: `values` and `grads`. Parameters sit at the front of both,
//! `[0, param_len)`, and persist; activations follow and form the per-step arena that `reset`
//! rewinds. A tensor has a value slot, a gradient slot, or both: what an op saves only for its
//! backward pass (statistics, masks) has no gradient, and backward's scratch space has no value.
//! Integer tensors (token ids, targets) live in `ids`, also rewound.
//!
//! Values are bump-allocated in creation order, so an op's output lies above all of its inputs
//! and a forward kernel borrows inputs and outputs disjointly without `unsafe`. Gradient slots
//! of activations are placed by `GradPlan` when backward starts: a gradient lives only from its
//! first use to its producer's backward, so slots are shared and the gradient part of the arena
//! is a fraction of the value part. The buffers only grow while the first step reaches its
//! high-water mark; after that a step allocates nothing. They grow through `memory::grow`, so a
//! step too large for the machine is an `Error::OutOfMemory` (and the arena is released), never
//! an abort.

use crate::error::{shape_err, Error, Result};
use crate::memory;
use crate::parallel::{for_each_chunk, rows_per_task};
use crate::real::Real;
use std::sync::atomic::{AtomicU32, Ordering};

/// The target id that cross-entropy does not count (PyTorch's and Hugging Face's `ignore_index`),
/// as callers write it; the store keeps it as `IGNORE`, which no real id can equal.
pub const IGNORE_ID: i64 = -100;
pub const IGNORE: u32 = u32::MAX;

/// An id as callers wrote it (`IGNORE` back to `IGNORE_ID`), for error messages.
pub(crate) fn id_as_written(id: u32) -> i64 {
    if id == IGNORE { IGNORE_ID } else { id as i64 }
}

/// Up to 4 dimensions; enough for (B, H, T, T).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shape {
    dims: [usize; 4],
    ndim: u8,
}

impl Shape {
    pub fn new(dims: &[usize]) -> Result<Shape> {
        if dims.len() > 4 {
            return shape_err!("at most 4 dimensions are supported, got {}", dims.len());
        }
        let mut s = Shape { dims: [0; 4], ndim: dims.len() as u8 };
        s.dims[..dims.len()].copy_from_slice(dims);
        s.checked_numel().ok_or_else(|| Error::Shape(format!("{dims:?} has too many elements")))?;
        Ok(s)
    }
    pub fn dims(&self) -> &[usize] {
        &self.dims[..self.ndim as usize]
    }
    pub fn ndim(&self) -> usize {
        self.ndim as usize
    }
    fn checked_numel(&self) -> Option<usize> {
        self.dims().iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }
    pub fn numel(&self) -> usize {
        self.dims().iter().product()
    }
    /// Size of the last dimension (1 for a scalar).
    pub fn last(&self) -> usize {
        self.dims().last().copied().unwrap_or(1)
    }
    /// Product of all but the last dimension: the number of rows when seen as a matrix.
    pub fn rows(&self) -> usize {
        self.dims().split_last().map_or(1, |(_, rest)| rest.iter().product())
    }
    /// The shape with one more dimension at the end.
    pub fn appended(&self, last: usize) -> Result<Shape> {
        if self.ndim == 4 {
            return shape_err!("cannot add a dimension to {:?}: at most 4 are supported", self.dims());
        }
        let mut s = *self;
        s.dims[s.ndim as usize] = last;
        s.ndim += 1;
        Ok(s)
    }
    /// The same shape with the last dimension replaced.
    pub fn with_last(&self, last: usize) -> Shape {
        let mut s = *self;
        if s.ndim == 0 {
            s.ndim = 1;
        }
        s.dims[s.ndim as usize - 1] = last;
        s
    }
}

/// A typed handle to a tensor: an index into the store's table, the store it belongs to, and the
/// arena generation it was made in. `Copy`, no lifetimes, no pointers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Var {
    pub(crate) index: u32,
    store: u32,
    generation: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    Float,
    Ids,
}

/// Floats from which zeroing a gradient slot is split across the threads.
const ZERO_SPLIT_MIN: usize = 1 << 16;

/// Marks a tensor without a value or without a gradient slot.
pub(crate) const NONE: usize = usize::MAX;
/// A gradient slot that backward has not placed yet.
pub(crate) const PENDING: usize = usize::MAX - 1;

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Offset in `values` (or `ids` for an ids tensor), or NONE.
    value: usize,
    /// Offset in `grads`, PENDING until backward places it, or NONE.
    grad: usize,
    /// An input made from data (not by an op): its gradient is kept after backward.
    leaf: bool,
    shape: Shape,
    dtype: Dtype,
}

/// Which slots a new float tensor gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slots {
    /// An activation: a value and its gradient.
    Both,
    /// Saved for backward only (statistics, masks): no gradient.
    ValueOnly,
    /// Backward's scratch space: a gradient-sized slot and no value.
    GradOnly,
}

/// A named parameter: its place in the persistent front of the buffers.
#[derive(Debug, Clone)]
pub struct ParamInfo {
    pub name: String,
    pub var: Var,
    pub offset: usize,
    pub shape: Shape,
    /// Whether AdamW applies weight decay to it (2-D weights only).
    pub decay: bool,
    /// Muon orthogonalises its update as this many equal row blocks; None: AdamW's.
    pub muon_blocks: Option<usize>,
}

static NEXT_STORE_ID: AtomicU32 = AtomicU32::new(1);

pub struct Store<F: Real> {
    id: u32,
    pub(crate) values: Vec<F>,
    pub(crate) grads: Vec<F>,
    pub(crate) ids: Vec<u32>,
    entries: Vec<Entry>,
    params: Vec<ParamInfo>,
    param_len: usize,
    values_used: usize,
    /// Floats of activation gradients the last backward needed (after `param_len`).
    grads_planned: usize,
    ids_used: usize,
    generation: u64,
    high_water: usize,
    /// Arena bytes needed at most since the last reset, and in the step before it.
    step_peak: usize,
    last_step_peak: usize,
}

impl<F: Real> Default for Store<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Real> Store<F> {
    pub fn new() -> Self {
        Store {
            id: NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed),
            values: Vec::new(),
            grads: Vec::new(),
            ids: Vec::new(),
            entries: Vec::new(),
            params: Vec::new(),
            param_len: 0,
            values_used: 0,
            grads_planned: 0,
            ids_used: 0,
            generation: 0,
            high_water: 0,
            step_peak: 0,
            last_step_peak: 0,
        }
    }

    /// Rewind the arena: every activation handle made so far becomes stale.
    pub fn reset(&mut self) {
        self.last_step_peak = std::mem::take(&mut self.step_peak);
        self.entries.truncate(self.params.len());
        self.values_used = self.param_len;
        self.grads_planned = 0;
        self.ids_used = 0;
        self.generation += 1;
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Bytes the arena (activations, their gradients, ids) has ever needed at once.
    pub fn high_water_bytes(&self) -> usize {
        self.high_water
    }

    /// Bytes reserved by all buffers (parameters included).
    pub fn capacity_bytes(&self) -> usize {
        (self.values.capacity() + self.grads.capacity()) * std::mem::size_of::<F>()
            + self.ids.capacity() * 4
            + self.entries.capacity() * std::mem::size_of::<Entry>()
    }

    fn note_high_water(&mut self) {
        let bytes = self.arena_bytes();
        self.high_water = self.high_water.max(bytes);
        self.step_peak = self.step_peak.max(bytes);
    }

    /// Bytes the arena needed at most in the step before the last reset.
    pub(crate) fn last_step_bytes(&self) -> usize {
        self.last_step_peak
    }

    fn push_entry(&mut self, entry: Entry) -> Result<Var> {
        if self.entries.len() >= u32::MAX as usize {
            return Err(Error::Invalid("a graph holds at most 2^32 tensors".into()));
        }
        self.entries.try_reserve(1).map_err(|_| self.arena_out_of_memory(size_of::<Entry>()))?;
        self.entries.push(entry);
        Ok(Var { index: (self.entries.len() - 1) as u32, store: self.id, generation: self.generation })
    }

    /// Bytes the arena holds in use now (activations, their gradients, ids).
    fn arena_bytes(&self) -> usize {
        (self.values_used - self.param_len + self.grads_planned) * size_of::<F>() + self.ids_used * 4
    }

    /// The arena could not take `extra` more bytes: give back all of its memory (its handles go
    /// stale, as after a reset) and say how much it needed at least.
    fn arena_out_of_memory(&mut self, extra: usize) -> Error {
        let bytes = self.arena_bytes().saturating_add(extra);
        self.reset();
        self.values.truncate(self.param_len);
        self.values.shrink_to_fit();
        self.grads.truncate(self.param_len);
        self.grads.shrink_to_fit();
        self.ids = Vec::new();
        let available = memory::available_bytes();
        Error::OutOfMemory { what: "the activation arena".into(), bytes, available, hint: String::new() }
    }

    /// Grow one of the arena's buffers to `len`, or release the arena and fail.
    fn grow_arena<T: Clone>(&mut self, pick: fn(&mut Self) -> &mut Vec<T>, len: usize, fill: T) -> Result<()> {
        let buf = pick(self);
        let extra = len.saturating_sub(buf.len()).saturating_mul(size_of::<T>());
        match memory::grow(buf, len, fill, "the activation arena") {
            Ok(()) => Ok(()),
            Err(_) => Err(self.arena_out_of_memory(extra)),
        }
    }

    /// Bump-allocate `n` floats at the end of the values, growing them only past the high-water mark.
    fn bump(&mut self, n: usize) -> Result<usize> {
        let offset = self.values_used;
        let used = offset.checked_add(n).ok_or_else(|| self.arena_out_of_memory(usize::MAX))?;
        self.grow_arena(|s| &mut s.values, used, F::ZERO)?;
        self.values_used = used;
        Ok(offset)
    }

    /// A new activation (value and gradient). Its values are unspecified until a kernel writes them.
    pub fn alloc(&mut self, shape: Shape) -> Result<Var> {
        self.alloc_slots(shape, Slots::Both)
    }

    /// A new float tensor with the given slots.
    pub fn alloc_slots(&mut self, shape: Shape, slots: Slots) -> Result<Var> {
        let n = shape.numel();
        let value = if slots == Slots::GradOnly { NONE } else { self.bump(n)? };
        let grad = if slots == Slots::ValueOnly { NONE } else { PENDING };
        self.note_high_water();
        self.push_entry(Entry { value, grad, leaf: false, shape, dtype: Dtype::Float })
    }

    /// A new float tensor in the arena holding `data`.
    pub fn alloc_from(&mut self, shape: Shape, data: &[F]) -> Result<Var> {
        if data.len() != shape.numel() {
            return shape_err!("{} values given for shape {:?}", data.len(), shape.dims());
        }
        let v = self.alloc(shape)?;
        self.values_mut(v).copy_from_slice(data);
        self.entries[v.index as usize].leaf = true;
        Ok(v)
    }

    /// A new integer tensor (token ids) in the arena; every id must be below `limit`.
    pub fn alloc_ids(&mut self, shape: Shape, data: impl ExactSizeIterator<Item = i64>, limit: usize) -> Result<Var> {
        self.alloc_ids_or_ignore(shape, data, limit, false)
    }

    /// Like `alloc_ids`, but `IGNORE_ID` (-100) is also accepted and stored as `IGNORE`: targets
    /// that cross-entropy does not count.
    pub fn alloc_targets(&mut self, shape: Shape, data: impl ExactSizeIterator<Item = i64>, limit: usize) -> Result<Var> {
        self.alloc_ids_or_ignore(shape, data, limit, true)
    }

    fn alloc_ids_or_ignore(&mut self, shape: Shape, data: impl ExactSizeIterator<Item = i64>, limit: usize, ignore: bool) -> Result<Var> {
        // A real id is below `limit` <= u32::MAX, so the sentinel can never be one.
        let limit = limit.min(IGNORE as usize);
        if data.len() != shape.numel() {
            return shape_err!("{} ids given for shape {:?}", data.len(), shape.dims());
        }
        let offset = self.ids_used;
        let end = offset.checked_add(shape.numel()).ok_or_else(|| self.arena_out_of_memory(usize::MAX))?;
        self.grow_arena(|s| &mut s.ids, end, 0)?;
        for (slot, id) in self.ids[offset..end].iter_mut().zip(data) {
            *slot = if ignore && id == IGNORE_ID {
                IGNORE
            } else if id < 0 || id >= limit as i64 {
                return Err(Error::TokenOutOfRange { id, limit });
            } else {
                id as u32
            };
        }
        self.ids_used = end;
        self.note_high_water();
        self.push_entry(Entry { value: offset, grad: NONE, leaf: true, shape, dtype: Dtype::Ids })
    }

    /// Register a persistent parameter. Only allowed before any activation exists.
    pub fn add_param(&mut self, name: &str, shape: Shape, decay: bool, muon_blocks: Option<usize>) -> Result<Var> {
        if self.entries.len() != self.params.len() || self.values_used != self.param_len {
            return Err(Error::Invalid("parameters must be added before any activation".into()));
        }
        if self.params.iter().any(|p| p.name == name) {
            return Err(Error::Invalid(format!("duplicate parameter name {name:?}")));
        }
        let var = self.alloc(shape)?;
        let offset = self.param_len;
        self.param_len = self.values_used;
        // Parameter gradients are persistent: they sit at the front of `grads` like the values.
        memory::grow(&mut self.grads, self.param_len, F::ZERO, "the parameters' gradients")?;
        let e = &mut self.entries[var.index as usize];
        (e.grad, e.leaf) = (offset, true);
        self.high_water = 0;
        self.params.push(ParamInfo { name: name.to_string(), var, offset, shape, decay, muon_blocks });
        Ok(var)
    }

    pub fn params(&self) -> &[ParamInfo] {
        &self.params
    }

    pub fn param_len(&self) -> usize {
        self.param_len
    }

    pub fn param(&self, name: &str) -> Result<&ParamInfo> {
        self.params.iter().find(|p| p.name == name).ok_or_else(|| Error::UnknownParam(name.to_string()))
    }

    fn entry(&self, v: Var) -> Result<&Entry> {
        if v.store != self.id {
            return Err(Error::ForeignHandle("it belongs to another graph".into()));
        }
        let persistent = (v.index as usize) < self.params.len();
        if !persistent && v.generation != self.generation {
            return Err(Error::StaleHandle { handle_generation: v.generation, arena_generation: self.generation });
        }
        self.entries.get(v.index as usize).ok_or_else(|| Error::ForeignHandle("unknown index".into()))
    }

    /// Check a handle and return its shape.
    pub fn shape(&self, v: Var) -> Result<Shape> {
        self.entry(v).map(|e| e.shape)
    }

    /// Check a handle is a float tensor with a value and return its shape.
    pub fn float_shape(&self, v: Var) -> Result<Shape> {
        let e = self.entry(v)?;
        match e.dtype {
            Dtype::Float if e.value != NONE => Ok(e.shape),
            Dtype::Float => Err(Error::Invalid("this tensor is scratch space and has no value".into())),
            Dtype::Ids => Err(Error::Invalid("expected a float tensor, got an integer (ids) tensor".into())),
        }
    }

    /// Check a handle is a float tensor with a gradient slot and return its shape.
    pub fn grad_shape(&self, v: Var) -> Result<Shape> {
        let shape = self.float_shape(v)?;
        match self.entry(v)?.grad {
            NONE => Err(Error::Invalid("this tensor was saved for backward and has no gradient".into())),
            _ => Ok(shape),
        }
    }

    /// Check that `v`'s gradient can be read after backward: only inputs' and parameters' are
    /// kept (intermediate gradients share slots and are overwritten as backward proceeds).
    pub fn kept_grad_shape(&self, v: Var) -> Result<Shape> {
        let shape = self.grad_shape(v)?;
        let e = self.entry(v)?;
        if !e.leaf {
            return Err(Error::Invalid("only the gradients of inputs and parameters are kept after backward".into()));
        }
        if e.grad == PENDING {
            return Err(Error::Invalid("no gradient yet: call backward first".into()));
        }
        Ok(shape)
    }

    // What `GradPlan` needs to place gradient slots.
    pub(crate) fn entry_count(&self) -> usize {
        self.entries.len()
    }
    /// Floats in entry `i`'s gradient slot if it is an activation's slot to be placed, else None.
    pub(crate) fn plannable_grad(&self, i: usize) -> Option<usize> {
        let e = &self.entries[i];
        (i >= self.params.len() && e.grad != NONE).then(|| e.shape.numel())
    }
    pub(crate) fn is_leaf(&self, i: usize) -> bool {
        self.entries[i].leaf
    }
    /// Offset of entry `i`'s gradient slot past the parameters.
    pub(crate) fn grad_offset(&self, i: usize) -> usize {
        self.entries[i].grad - self.param_len
    }
    /// Put entry `i`'s gradient at `offset` past the parameters.
    pub(crate) fn place_grad(&mut self, i: usize, offset: usize) {
        self.entries[i].grad = self.param_len + offset;
    }
    /// Make room for `floats` floats of activation gradients.
    pub(crate) fn reserve_grads(&mut self, floats: usize) -> Result<()> {
        let len = self.param_len.saturating_add(floats);
        self.grow_arena(|s| &mut s.grads, len, F::ZERO)?;
        self.grads_planned = floats;
        self.note_high_water();
        Ok(())
    }
    /// Zero entry `i`'s gradient slot (a large one split across the threads: one thread alone
    /// does not reach the memory's bandwidth).
    pub(crate) fn zero_grad_of(&mut self, i: usize) {
        let e = &self.entries[i];
        let slot = &mut self.grads[e.grad..e.grad + e.shape.numel()];
        if slot.len() >= ZERO_SPLIT_MIN {
            for_each_chunk(slot, rows_per_task(slot.len()), |_, part| part.fill(F::ZERO));
        } else {
            slot.fill(F::ZERO);
        }
    }

    /// Check a handle is an ids tensor and return its shape.
    pub fn ids_shape(&self, v: Var) -> Result<Shape> {
        let e = self.entry(v)?;
        match e.dtype {
            Dtype::Ids => Ok(e.shape),
            Dtype::Float => Err(Error::Invalid("expected an integer (ids) tensor, got a float tensor".into())),
        }
    }

    // The accessors below take handles that the graph already validated; an invalid one here is
    // an engine bug, so they index directly. Crate-private: outside the engine, every access goes
    // through `Graph`, which checks the handle's generation first.
    pub(crate) fn shape_of(&self, v: Var) -> Shape {
        self.entries[v.index as usize].shape
    }
    fn value_range(&self, v: Var) -> std::ops::Range<usize> {
        slot_range(&self.entries, v, Slot::Value, 0)
    }
    fn grad_range(&self, v: Var) -> std::ops::Range<usize> {
        slot_range(&self.entries, v, Slot::Grad, 0)
    }
    pub(crate) fn values(&self, v: Var) -> &[F] {
        &self.values[self.value_range(v)]
    }
    pub(crate) fn values_mut(&mut self, v: Var) -> &mut [F] {
        let r = self.value_range(v);
        &mut self.values[r]
    }
    pub(crate) fn grads(&self, v: Var) -> &[F] {
        &self.grads[self.grad_range(v)]
    }
    pub(crate) fn grads_mut(&mut self, v: Var) -> &mut [F] {
        let r = self.grad_range(v);
        &mut self.grads[r]
    }
    pub(crate) fn id_values(&self, v: Var) -> &[u32] {
        &self.ids[self.value_range(v)]
    }

    /// For a forward kernel: read access to everything below `out`, and write access to `out`
    /// and whatever the op allocated after it (its saved statistics). Ops allocate `out` first.
    pub fn forward_io(&mut self, out: Var) -> (Reader<'_, F>, Writer<'_, F>) {
        let split = self.value_range(out).start;
        let (below, above) = self.values.split_at_mut(split);
        let reader = Reader { floats: below, ids: &self.ids, entries: &self.entries };
        (reader, Writer { buf: above, base: split, entries: &self.entries })
    }

    /// For a backward kernel: read access to all values, and the gradient slots of `vars` (the
    /// op's output, its inputs, its scratch). `GradPlan` gives tensors that are live together
    /// distinct slots, and `Graph` checks an op's inputs are distinct when it records it.
    pub fn backward_io<const N: usize>(&mut self, vars: [Var; N]) -> (Reader<'_, F>, [&mut [F]; N]) {
        let ranges = vars.map(|v| self.grad_range(v));
        let grads = self.grads.get_disjoint_mut(ranges).expect("an op's gradient slots are disjoint");
        (Reader { floats: &self.values, ids: &self.ids, entries: &self.entries }, grads)
    }

    /// Zero the gradients of the parameters.
    pub fn zero_param_grads(&mut self) {
        self.grads[..self.param_len].fill(F::ZERO);
    }

    /// Every parameter's value as one flat buffer, in registration order.
    pub fn param_values(&self) -> &[F] {
        &self.values[..self.param_len]
    }

    /// The parameters' gradients as one flat buffer, in registration order.
    pub fn param_grads_mut(&mut self) -> &mut [F] {
        &mut self.grads[..self.param_len]
    }

    /// Flat views of every parameter and its gradient, in registration order.
    pub fn param_buffers_mut(&mut self) -> (&mut [F], &[F]) {
        let p = self.param_len;
        (&mut self.values[..p], &self.grads[..p])
    }
}

#[derive(Clone, Copy)]
enum Slot {
    Value,
    Grad,
}

/// Where tensor `v`'s slot lies in its buffer, relative to `base`.
fn slot_range(entries: &[Entry], v: Var, slot: Slot, base: usize) -> std::ops::Range<usize> {
    let e = &entries[v.index as usize];
    let start = match slot {
        Slot::Value => e.value,
        Slot::Grad => e.grad,
    };
    debug_assert!(start < PENDING, "tensor has no such slot (or it is not placed yet)");
    start - base..start - base + e.shape.numel()
}

/// Read access to values lying below an output (forward) or to all values (backward).
pub struct Reader<'a, F> {
    floats: &'a [F],
    ids: &'a [u32],
    entries: &'a [Entry],
}

impl<'a, F> Reader<'a, F> {
    pub fn f(&self, v: Var) -> &'a [F] {
        &self.floats[slot_range(self.entries, v, Slot::Value, 0)]
    }
    pub fn ids(&self, v: Var) -> &'a [u32] {
        &self.ids[slot_range(self.entries, v, Slot::Value, 0)]
    }
}

/// Write access to the part of the values buffer that starts at `base`.
pub struct Writer<'a, F> {
    buf: &'a mut [F],
    base: usize,
    entries: &'a [Entry],
}

impl<'a, F> Writer<'a, F> {
    pub fn one(&mut self, v: Var) -> &mut [F] {
        let r = slot_range(self.entries, v, Slot::Value, self.base);
        &mut self.buf[r]
    }
    pub fn many<const N: usize>(&mut self, vars: [Var; N]) -> [&mut [F]; N] {
        let ranges = vars.map(|v| slot_range(self.entries, v, Slot::Value, self.base));
        self.buf.get_disjoint_mut(ranges).expect("an op's tensors were checked to be distinct when recorded")
    }
}
