//! Every map of the dataplane, declared once. Sizes here are defaults; the
//! daemon sets the real ones from its flags before loading.
//!
//! | map | type | key → value | written by |
//! |-----|------|-------------|------------|
//! | `FRONTENDS` | hash | (addr, port, proto) → backend table and ids | userspace |
//! | `FRONTEND_GEN` | array | frontend id → generation | userspace |
//! | `BACKENDS` | array | backend id → address, port, state, generation | userspace |
//! | `BACKEND_NAT` | array | backend id → local, or SNAT from which address | userspace |
//! | `MAGLEV` | array (mmap) | pool of Maglev tables of backend ids | userspace |
//! | `CONNTRACK` | LRU hash | flow → translation, state, last seen | dataplane; GC by userspace |
//! | `SNAT` | hash | SNATed flow's reply → its client (the port's allocation) | dataplane; GC by userspace |
//! | `NODE_ADDRS` | hash | this node's addresses | userspace |
//! | `FRONTEND_STATS`, `BACKEND_STATS` | per-CPU array | id → packets, bytes | dataplane |
//! | `EVENTS` | per-CPU array | `DatapathEvent` → count | dataplane |
//! | `CONFIG` | array of 1 | layout version, flags, conntrack timeouts, node netns | userspace |
//! | `AFFINITY` | LRU hash | (service, client) → backend, last used | dataplane |
//! | `SOURCE_RANGES` | LPM trie | (service, source prefix) → allowed | userspace |
//! | `SOCK_REVNAT` | LRU hash | (socket, backend) → frontend the socket addressed | socket programs |
//! | `DEVMAP` | devmap hash | interfaces the fast path redirects into | userspace |
//! | `HOP_EPOCH` | array of 1 | generation of the routes and neighbours cached next hops must match; 0: no caching | userspace, on netlink events |
//! | `HOP_CACHE` | per-CPU array | backend id → the next hop of its requests | dataplane |
//! | `FIB_SCRATCH`, `SNAT_SCRATCH`, `CT_SCRATCH` | per-CPU array | `bpf_fib_lookup` parameters, SNAT keys tried, new conntrack entries: off the stack | dataplane |

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, bpf_fib_lookup as FibParams},
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use portmap_common::abi::{
    AffinityKey, AffinityValue, Backend, BackendNat, CtKey, CtValue, DatapathConfig, EVENT_SLOTS,
    FrontendKey, FrontendValue, HOP_SLOTS, HopSlot, MaglevBlock, NodeAddrKey, SnatValue,
    SockRevKey, SockRevValue, SourceRangeKey, TrafficCounters,
};

/// Frontends: where clients send. A frontend on all node addresses has an
/// unspecified address in its key.
#[map]
pub static FRONTENDS: HashMap<FrontendKey, FrontendValue> = HashMap::with_max_entries(65536, 0);

/// Current generation of each frontend id; a conntrack entry whose
/// generation differs belongs to a frontend that was removed or replaced.
#[map]
pub static FRONTEND_GEN: Array<u32> = Array::with_max_entries(65536, 0);

/// Backends by id. The id also indexes `BACKEND_STATS`.
#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(65536, 0);

/// How flows reach each backend (by backend id, as `BACKENDS`): directly,
/// or SNATed from this node's address towards it.
#[map]
pub static BACKEND_NAT: Array<BackendNat> = Array::with_max_entries(65536, 0);

/// Pool of Maglev lookup tables, each a run of backend ids that a frontend
/// points into, packed 16 to a value. Memory-mappable, so userspace writes
/// whole tables at memcpy speed.
#[map]
pub static MAGLEV: Array<MaglevBlock> = Array::with_max_entries(1 << 16, BPF_F_MMAPABLE);

/// Connection tracking: two entries per translated flow (see `CtKey`).
#[map]
pub static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::with_max_entries(262_144, 0);

/// SNAT port allocations: each SNATed flow's reply as it arrives (backend →
/// this node's address and port) → the client it goes back to. Inserted with
/// `BPF_NOEXIST` to take a port; freed by garbage collection once the flow is
/// gone, never evicted (a port reused while its flow lives would send one
/// client's replies to another).
#[map]
pub static SNAT: HashMap<CtKey, SnatValue> = HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);

/// The generation of the node's routing state that a cached next hop
/// (`HOP_CACHE`) must have been looked up under; 0: cache nothing. Userspace
/// changes it on every route, neighbour, address, rule and link event
/// netlink reports, on changes of `DEVMAP`, and at start.
#[map]
pub static HOP_EPOCH: Array<u32> = Array::with_max_entries(1, 0);

/// The next hop of requests to each backend, direct-mapped by backend id
/// (`HopSlot`). Per CPU: a slot never has two writers, and is never read
/// half-written.
#[map]
pub static HOP_CACHE: PerCpuArray<HopSlot> = PerCpuArray::with_max_entries(HOP_SLOTS, 0);

/// Scratch space for `bpf_fib_lookup`'s parameters (one slot per CPU), so
/// the fast path's 64-byte struct stays off the programs' stack.
#[map]
pub static FIB_SCRATCH: PerCpuArray<FibParams> = PerCpuArray::with_max_entries(1, 0);

/// A SNAT key and value being tried, per CPU: off the programs' stack.
#[repr(C)]
pub struct SnatScratch {
    pub key: CtKey,
    pub value: SnatValue,
}

#[map]
pub static SNAT_SCRATCH: PerCpuArray<SnatScratch> = PerCpuArray::with_max_entries(1, 0);

/// The conntrack entries of a flow being created, per CPU: off the stack.
#[repr(C)]
pub struct CtScratch {
    pub key: CtKey,
    pub value: CtValue,
}

#[map]
pub static CT_SCRATCH: PerCpuArray<CtScratch> = PerCpuArray::with_max_entries(1, 0);

/// Addresses of this node, for frontends published on all of them.
#[map]
pub static NODE_ADDRS: HashMap<NodeAddrKey, u32> = HashMap::with_max_entries(1024, 0);

/// Packets and bytes per frontend id.
#[map]
pub static FRONTEND_STATS: PerCpuArray<TrafficCounters> = PerCpuArray::with_max_entries(65536, 0);

/// Packets and bytes per backend id.
#[map]
pub static BACKEND_STATS: PerCpuArray<TrafficCounters> = PerCpuArray::with_max_entries(65536, 0);

/// Counts of `DatapathEvent`s.
#[map]
pub static EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_SLOTS, 0);

/// The map layout version, `DP_*` flags, conntrack timeouts and the node's
/// network namespace (`DatapathConfig`).
#[map]
pub static CONFIG: Array<DatapathConfig> = Array::with_max_entries(1, 0);

/// Session affinity: the backend each client of a `ClientIP` service had.
#[map]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::with_max_entries(65536, 0);

/// Interfaces the fast path may redirect into: the published and backend
/// interfaces portmap runs on (ifindex → ifindex).
#[map]
pub static DEVMAP: DevMapHash = DevMapHash::with_max_entries(64, 0);

/// Allowed source prefixes of services that restrict their sources.
#[map]
pub static SOURCE_RANGES: LpmTrie<SourceRangeKey, u8> =
    LpmTrie::with_max_entries(16384, BPF_F_NO_PREALLOC);

/// Socket-level reverse translation: for each socket the socket programs
/// sent to a backend, the frontend it addressed (UDP reply sources,
/// `getpeername`). Least recently used entries go first.
#[map]
pub static SOCK_REVNAT: LruHashMap<SockRevKey, SockRevValue> =
    LruHashMap::with_max_entries(65536, 0);

/// Set by the loader to tell program builds apart in upgrade tests; 0 normally.
#[unsafe(no_mangle)]
static PROGRAM_VARIANT: u32 = 0;

#[inline(always)]
pub fn program_variant() -> u32 {
    // SAFETY: a plain read of a global the loader may have set before load;
    // volatile so the compiler does not fold it to its initial value.
    unsafe { core::ptr::read_volatile(&PROGRAM_VARIANT) }
}
