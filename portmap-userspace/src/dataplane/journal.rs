//! A record of the map writes an apply makes, in order, for the unit tests
//! that check make-before-break (a prefix allowed before the flag that
//! enforces it, a frontend rewritten before the prefixes it no longer needs
//! go, ...). Compiled into test builds only: the daemon pays nothing.

/// What was done to a map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Written (inserted or overwritten).
    Write,
    /// Deleted.
    Remove,
}

/// One map operation: the map's name, what was done, and which entry (a
/// human-readable key, e.g. the frontend or the prefix).
#[cfg(test)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapOp {
    pub map: &'static str,
    pub op: Op,
    pub key: String,
}

#[cfg(test)]
impl std::fmt::Display for MapOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} {}[{}]", self.op, self.map, self.key)
    }
}

/// The operations since the journal was last taken.
#[derive(Debug, Default)]
pub struct Journal {
    #[cfg(test)]
    ops: Vec<MapOp>,
}

impl Journal {
    /// Records an operation (test builds only; `key` is not even evaluated
    /// otherwise).
    #[cfg_attr(not(test), allow(unused_variables))]
    pub fn note(&mut self, map: &'static str, op: Op, key: impl FnOnce() -> String) {
        #[cfg(test)]
        self.ops.push(MapOp {
            map,
            op,
            key: key(),
        });
    }

    /// The operations recorded so far, leaving the journal empty.
    #[cfg(test)]
    pub fn take(&mut self) -> Vec<MapOp> {
        std::mem::take(&mut self.ops)
    }
}
