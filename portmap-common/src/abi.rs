//! Map keys and values, in the layout the kernel stores them.
//!
//! Conventions:
//! - Addresses and ports are kept in network byte order exactly as they appear in
//!   the packet ([`RawAddr`], `*_port: u16` read with `from_ne_bytes`), so the
//!   dataplane copies them without swapping. Userspace converts at the edge.
//! - IPv4 addresses occupy the first word of a [`RawAddr`]; the rest is zero.
//! - `family` is [`FAMILY_V4`] or [`FAMILY_V6`] (the IP version number).

/// IP version 4, as stored in `family` fields.
pub const FAMILY_V4: u8 = 4;
/// IP version 6, as stored in `family` fields.
pub const FAMILY_V6: u8 = 6;

/// IANA protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IANA protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

/// Version of the map layout below. A daemon that finds pinned maps of another
/// version must migrate or refuse them, never read them as its own.
pub const MAP_LAYOUT_VERSION: u32 = 5;

/// High bit of a `FRONTEND_GEN` entry: the id is free. The low bits keep the
/// last generation, so generations only grow, across restarts too.
pub const FRONTEND_GEN_FREE: u32 = 1 << 31;

/// An IPv4 or IPv6 address in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RawAddr(pub [u32; 4]);

impl RawAddr {
    pub const UNSPECIFIED: RawAddr = RawAddr([0; 4]);

    #[inline(always)]
    pub fn is_unspecified(&self) -> bool {
        self.0[0] | self.0[1] | self.0[2] | self.0[3] == 0
    }

    /// The address's bytes as on the wire (an IPv4 address in the first 4).
    #[inline(always)]
    pub fn octets(&self) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        for (i, word) in self.0.iter().enumerate() {
            bytes[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
        }
        bytes
    }
}

/// Key of the `FRONTENDS` map: where a client sends to.
///
/// A frontend published on every node address has an unspecified `addr`; the
/// dataplane only matches it when the destination is in `NODE_ADDRS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FrontendKey {
    pub addr: RawAddr,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// Flag in [`FrontendValue::flags`]: with no backend, answer new flows (TCP
/// and UDP alike) with an ICMP or ICMPv6 port unreachable, as kube-proxy's
/// `REJECT` does, instead of passing them to the stack.
pub const FE_REJECT_NO_BACKENDS: u32 = 1 << 0;
/// Flag in [`FrontendValue::flags`]: with no backend, drop new flows (e.g.
/// `externalTrafficPolicy: Local` with no endpoint on this node).
pub const FE_DROP_NO_BACKENDS: u32 = 1 << 2;
/// Flag in [`FrontendValue::flags`]: only sources in the frontend's allowed
/// ranges (`SOURCE_RANGES`) may reach it; others are dropped.
pub const FE_SOURCE_RANGES: u32 = 1 << 3;
/// Flag in [`FrontendValue::flags`]: the frontend is on a loopback address,
/// reachable from this host only; XDP never translates to it.
pub const FE_HOST_ONLY: u32 = 1 << 4;
/// Flag in [`FrontendValue::flags`]: keep a client on one backend
/// (`sessionAffinity: ClientIP`) for `affinity_timeout_s`.
pub const FE_AFFINITY_CLIENT_IP: u32 = 1 << 1;

/// Value of the `FRONTENDS` map: what a frontend translates to.
///
/// The backend set is a Maglev lookup table of `table_size` backend ids at
/// `table_offset` in the `MAGLEV` pool. Userspace builds a new table aside and
/// then replaces this whole value (hash map updates are atomic), so the
/// dataplane never sees a half-written backend set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrontendValue {
    /// Index into `FRONTEND_STATS` and `FRONTEND_GEN`.
    pub frontend_id: u32,
    /// Equals `FRONTEND_GEN[frontend_id]` while this frontend exists;
    /// conntrack entries carrying an older value are stale.
    pub generation: u32,
    /// Identifies the service port (backend set) for session affinity.
    pub service_id: u32,
    pub table_offset: u32,
    /// 0 when the frontend has no usable backend.
    pub table_size: u32,
    pub flags: u32,
    pub affinity_timeout_s: u32,
    pub _reserved: u32,
}

/// Slots per value of the `MAGLEV` pool array. Array elements are padded to 8
/// bytes, so single `u32` slots would waste half the pool; a cache line of 16
/// packs them, and userspace sees the pool as one flat run of `u32` slots.
pub const MAGLEV_BLOCK_SLOTS: u32 = 16;

/// A value of the `MAGLEV` pool: slot `i` of the pool is `block[i / 16][i % 16]`.
pub type MaglevBlock = [u32; MAGLEV_BLOCK_SLOTS as usize];

/// [`Backend::state`]: slot unused, or backend removed.
pub const BACKEND_UNUSED: u8 = 0;
/// [`Backend::state`]: ready; takes new flows.
pub const BACKEND_ACTIVE: u8 = 1;
/// [`Backend::state`]: terminating; keeps its flows, gets new ones only when
/// it is in a table because nothing better exists.
pub const BACKEND_TERMINATING: u8 = 2;

/// [`BackendNat::mode`]: the backend is on this node (or masquerading is
/// off for it): the client's address reaches it.
pub const NAT_LOCAL: u8 = 0;
/// [`BackendNat::mode`]: the backend is on another node; new flows to it are
/// SNATed to [`BackendNat::snat_addr`] and a port of `--snat-port-range`, so
/// its replies come back through this node (kube-proxy's masquerade).
pub const NAT_SNAT: u8 = 1;
/// [`BackendNat::mode`]: the backend is on another node and new flows to it
/// go there by direct server return (`--lb-mode dsr`, or `hybrid` for TCP):
/// the client's address is kept, the frontend travels in an IP option (see
/// `dsr`), and portmap on the backend's node sends the replies straight
/// to the client, from the frontend.
pub const NAT_DSR: u8 = 2;

/// Value of the `BACKEND_NAT` array, indexed by backend id like `BACKENDS`:
/// how flows reach the backend. Written with the backend, before any table
/// lists it; a change of it is a new backend generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendNat {
    /// With `NAT_SNAT`: this node's address towards the backend (the source
    /// of the route to it), which SNATed flows come from.
    pub snat_addr: RawAddr,
    /// One of `NAT_*`.
    pub mode: u8,
    pub _pad: [u8; 3],
}

/// Value of the `BACKENDS` array, indexed by backend id: one per endpoint of
/// a service in userspace's desired state (`model::Endpoint`). The id is also
/// the index of the backend's counters in `BACKEND_STATS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: RawAddr,
    /// Network byte order.
    pub port: u16,
    pub family: u8,
    pub state: u8,
    /// Bumped each time the slot is given to another backend; conntrack entries
    /// carrying an older value are stale. Kept when the slot is freed, so
    /// generations only grow, across restarts too.
    pub generation: u32,
    /// The service the backend belongs to (lets a restarted daemon adopt
    /// backends that are in no table, e.g. terminating ones).
    pub service_id: u32,
}

/// [`CtKey::direction`] of the entry a client's packets (requests) hit: the
/// same direction as [`DIR_REQUEST`], and as `direction="request"` in the
/// metrics.
pub const CT_REQUEST: u8 = 0;
/// [`CtKey::direction`] of the entry a backend's replies hit.
pub const CT_REPLY: u8 = 1;

/// Key of the `CONNTRACK` map: a flow as seen on the wire.
///
/// Each translated flow has two entries: `CT_REQUEST` keyed by
/// client → frontend, whose value holds the backend, and `CT_REPLY` keyed by
/// backend → client, whose value holds the frontend the client used.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub src: RawAddr,
    pub dst: RawAddr,
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub direction: u8,
    pub _pad: u8,
}

/// [`CtValue::flags`]: the flow is SNATed towards a backend on another node.
/// Its request entry holds the source port; its reply entry is keyed by the
/// reply as it arrives (backend → this node's address and that port), and
/// the `SNAT` map holds the client to send it back to.
pub const CT_F_SNAT: u8 = 1 << 0;
/// [`CtValue::flags`] on the node a client talked to: the flow goes to a
/// backend on another node by direct server return. Its opening packets
/// (a TCP SYN, every UDP datagram) carry the frontend in a DSR option; its
/// replies never come back here.
pub const CT_F_DSR: u8 = 1 << 1;
/// [`CtValue::flags`] on the backend's node: a reply entry learned from a
/// DSR option (backend → client, holding the frontend the client used on
/// another node). It has no request twin here, and no backend id
/// ([`NO_BACKEND_ID`]): the backend's counters are the other node's.
pub const CT_F_DSR_REPLY: u8 = 1 << 2;
/// [`CtValue::backend_id`] of an entry that has no backend on this node.
pub const NO_BACKEND_ID: u32 = u32::MAX;

/// Value of the `SNAT` map, keyed by a SNATed flow's reply as it arrives
/// (a [`CtKey`] with direction `CT_REPLY`: backend → this node's address and
/// the allocated port). An entry is the port's allocation; it holds who the
/// flow belongs to, so the reply can go back to the client and a missing
/// conntrack half can be rebuilt. Not an LRU: a port stays taken until its
/// flow is gone (garbage collection), never evicted under pressure.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnatValue {
    pub client: RawAddr,
    pub frontend: RawAddr,
    /// Network byte order.
    pub client_port: u16,
    /// Network byte order.
    pub frontend_port: u16,
}

/// Flow that has seen no reply yet: a TCP flow after its SYN (or after
/// whatever packet opened its entry, e.g. one of a connection older than the
/// entry), a UDP flow before its first reply.
pub const CT_STATE_NEW: u8 = 0;
/// Flow that has seen traffic both ways.
pub const CT_STATE_ESTABLISHED: u8 = 1;
/// TCP flow that has seen a FIN or RST.
pub const CT_STATE_CLOSING: u8 = 2;

/// Value of the `CONNTRACK` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    /// Request entry: the backend address. Reply entry: the frontend address.
    pub nat_addr: RawAddr,
    /// Network byte order; pairs with `nat_addr`.
    pub nat_port: u16,
    /// One of `CT_STATE_*`.
    pub state: u8,
    /// `CT_F_*` flags.
    pub flags: u8,
    pub frontend_id: u32,
    pub frontend_generation: u32,
    pub backend_id: u32,
    pub backend_generation: u32,
    /// With `CT_F_SNAT`: the source port the flow was given towards its
    /// backend (network byte order; the address is the backend's
    /// `BackendNat::snat_addr`).
    pub snat_port: u16,
    pub _reserved: u16,
    /// `bpf_ktime_get_coarse_ns` of the last refresh (refreshed at most once
    /// every [`REFRESH_INTERVAL_NS`] per entry, or at a change of state).
    pub last_seen_ns: u64,
}

/// An entry whose state a packet leaves unchanged is rewritten (its
/// `last_seen_ns`, and its twin's) only when its last write is at least this
/// old, so hot flows do not bounce its cache line. The twin of a flow's
/// entry is checked, and recreated if the LRU evicted it, at those writes.
pub const REFRESH_INTERVAL_NS: u64 = 1_000_000_000;

/// A slot of the per-CPU `HOP_CACHE`: the next hop `bpf_fib_lookup` gave a
/// request translated to backend `backend_id`, so that the next requests to
/// that backend on this CPU need no lookup (see `hopcache` in the
/// dataplane). Slots are direct-mapped by backend id. A slot is used only
/// while all of these hold; otherwise the lookup is made again:
/// - it is the backend's: same id and generation;
/// - `epoch` is `HOP_EPOCH`'s, which is not 0. Userspace changes it on every
///   route, neighbour, address, rule or link event netlink reports, on
///   changes of the fast path's interfaces, and at each start; it sets 0
///   (nothing cached) while policy rules, multipath or source-specific
///   routes could make the answer depend on more than the backend;
/// - it is younger than [`HOP_MAX_AGE_NS`], which bounds how stale an answer
///   gets while no daemon follows netlink (during a restart);
/// - the packet came in on `in_ifindex` and is at most `checked_len` bytes
///   (the largest the lookup checked against the egress MTU).
///
/// Per backend, not per flow: a node's backends are few and their slots stay
/// in cache, where a flow's slot would miss it as often as the lookup costs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HopSlot {
    /// `bpf_ktime_get_coarse_ns` when looked up.
    pub at_ns: u64,
    pub backend_id: u32,
    pub backend_generation: u32,
    pub epoch: u32,
    pub in_ifindex: u32,
    pub out_ifindex: u32,
    /// IP length (header included) checked against the egress MTU; 0 while
    /// the slot is being filled.
    pub checked_len: u16,
    /// Destination MAC, then source MAC.
    pub macs: [u8; 12],
    pub _pad: [u8; 6],
}

/// How long a next hop stays in a [`HopSlot`] without being looked up again,
/// whatever netlink says.
pub const HOP_MAX_AGE_NS: u64 = 1_000_000_000;

/// Slots of the per-CPU `HOP_CACHE` (a power of two): 48 KiB a CPU.
pub const HOP_SLOTS: u32 = 1024;

/// Index into [`TrafficCounters`]: client → backend.
pub const DIR_REQUEST: usize = 0;
/// Index into [`TrafficCounters`]: backend → client.
pub const DIR_REPLY: usize = 1;

/// Value of the per-CPU counter arrays (`FRONTEND_STATS`,
/// `BACKEND_STATS`). Bytes are IP bytes (header included), as iptables
/// counts them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
}

/// Key of the `NODE_ADDRS` map: an address of this node. A frontend published
/// on all addresses matches only packets sent to one of these.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeAddrKey {
    pub addr: RawAddr,
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Key of the `AFFINITY` map: a client of a service with
/// `sessionAffinity: ClientIP`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub client: RawAddr,
    pub service_id: u32,
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Bit of [`AffinityKey::family`]: the client is a network namespace, not an
/// address. The socket programs know a socket's namespace (its cookie, in the
/// first two words of `client`) but not the source address an unbound socket
/// will get; all sockets of a namespace (the node, a pod) are one client.
pub const AFFINITY_BY_NETNS: u8 = 0x80;

/// Value of the `AFFINITY` map: the backend the client was last sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub backend_generation: u32,
    pub last_used_ns: u64,
}

/// Data of an LPM key of the `SOURCE_RANGES` trie: an allowed source prefix of
/// one service. The trie matches bits from the start, so the prefix length
/// counts [`SOURCE_RANGE_KEY_BITS`] (service id in network byte order, family,
/// padding) before the address bits: the two families never match each other.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceRangeKey {
    pub service_id_be: u32,
    pub family: u8,
    pub _pad: [u8; 3],
    pub addr: RawAddr,
}

/// Bits of a [`SourceRangeKey`] before its address.
pub const SOURCE_RANGE_KEY_BITS: u32 = 64;

/// Key of the `SOCK_REVNAT` map: a socket the socket programs sent to a
/// backend, and that backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevKey {
    /// `bpf_get_socket_cookie` of the socket.
    pub cookie: u64,
    pub addr: RawAddr,
    /// Network byte order.
    pub port: u16,
    pub family: u8,
    pub _pad: [u8; 5],
}

/// Value of the `SOCK_REVNAT` map: the frontend the application addressed,
/// shown as the source of UDP replies (`recvmsg`) and by `getpeername`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevValue {
    pub addr: RawAddr,
    /// Network byte order.
    pub port: u16,
    pub _pad: u16,
    pub frontend_id: u32,
    /// The entry is stale once `FRONTEND_GEN[frontend_id]` differs.
    pub frontend_generation: u32,
}

/// [`DatapathConfig::flags`]: forward translated packets in XDP (the fast
/// path) when the egress interface is in `DEVMAP`.
pub const DP_FAST_PATH: u32 = 1 << 0;

/// The single value of the `CONFIG` array: the map layout version, `DP_*`
/// flags, conntrack timeouts in nanoseconds and the node's network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatapathConfig {
    pub layout_version: u32,
    /// `DP_*` flags.
    pub flags: u32,
    pub tcp_new_timeout_ns: u64,
    pub tcp_established_timeout_ns: u64,
    pub tcp_closing_timeout_ns: u64,
    pub udp_timeout_ns: u64,
    /// Cookie of the daemon's network namespace (the node's): the socket
    /// programs translate loopback destinations and host-only frontends only
    /// for sockets in it. 0: unknown, no socket is the node's.
    pub host_netns_cookie: u64,
    /// The source ports SNAT allocates from (`--snat-port-range`), host
    /// order, inclusive; 0..0 while nothing is SNATed.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    pub _reserved: u32,
}

const SECOND_NS: u64 = 1_000_000_000;

impl Default for DatapathConfig {
    fn default() -> Self {
        Self {
            layout_version: MAP_LAYOUT_VERSION,
            flags: 0,
            tcp_new_timeout_ns: 60 * SECOND_NS,
            tcp_established_timeout_ns: 6 * 3600 * SECOND_NS,
            tcp_closing_timeout_ns: 10 * SECOND_NS,
            udp_timeout_ns: 60 * SECOND_NS,
            host_netns_cookie: 0,
            snat_port_min: 0,
            snat_port_max: 0,
            _reserved: 0,
        }
    }
}

/// Indexes of the per-CPU `EVENTS` array: things the dataplane did or
/// declined to do, exported as `portmap_datapath_events_total{event=...}`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatapathEvent {
    /// A new flow got a backend and conntrack entries.
    FlowCreated = 0,
    /// A flow's backend or frontend went away; the flow was given a new backend.
    FlowReselected = 1,
    /// A new flow hit a frontend with no usable backend.
    NoBackend = 2,
    /// A packet too short or inconsistent to parse; passed untouched.
    Malformed = 3,
    /// An IP fragment; passed untouched.
    Fragment = 4,
    /// A conntrack insert failed (map full of non-evictable entries); the
    /// packet was passed untranslated.
    ConntrackInsertFailed = 5,
    /// A reply was translated back to its frontend.
    ReplyTranslated = 6,
    /// A new flow to a frontend with no backend was answered with ICMP port
    /// unreachable.
    Rejected = 7,
    /// A new flow to a frontend with no backend was dropped (traffic policy
    /// Local with no local endpoint).
    DroppedNoBackend = 8,
    /// A new flow from a source outside the frontend's allowed ranges was dropped.
    DroppedSourceRange = 9,
    /// A new flow kept its client's backend (session affinity).
    AffinityHit = 10,
    /// A packet translated by a program loaded with a non-zero variant (tests
    /// of program upgrades tell the programs apart by it).
    VariantTranslated = 11,
    /// A translated packet was forwarded by XDP_REDIRECT (the fast path).
    FastPathRedirected = 12,
    /// Fast path fallback to the kernel: the next hop's MAC is not known yet.
    FastPathNoNeighbour = 13,
    /// Fast path fallback to the kernel: the packet exceeds the egress MTU.
    FastPathFragNeeded = 14,
    /// Fast path fallback to the kernel: no route, local delivery, TTL spent,
    /// VLAN tag, or an egress interface the fast path does not use.
    FastPathOther = 15,
    /// An ICMP error about a translated flow was translated too (its quote
    /// back to the frontend towards a client, or on to the backend).
    IcmpTranslated = 16,
    /// One entry of a live flow was missing (the LRU evicted it under
    /// pressure) and was recreated from its twin, so the flow carries on.
    ConntrackEntryRestored = 17,
    /// A packet's headers did not all lie in the part of it a program can
    /// read directly (an XDP buffer's first fragment, or an skb whose headers
    /// could not be made linear); passed untouched.
    HeadersNotLinear = 18,
    /// A translation could not be written into the packet (a kernel helper
    /// failed, or a byte to rewrite lay beyond what the program can reach);
    /// the packet was passed on untranslated (an ICMP error about a flow
    /// may keep its rewritten outer destination).
    RewriteFailed = 19,
    /// As `RewriteFailed`, for a GSO super-packet.
    GsoRewriteFailed = 20,
    /// XDP could not tell the packet's L4 checksum from a partial one (an
    /// offloaded checksum, as veth passes them on) and left the rewrite to the
    /// tc ingress program, which can.
    ChecksumDeferred = 21,
    /// XDP completed a partial L4 checksum before redirecting the packet
    /// (the fast path), since no one would complete it after.
    ChecksumCompleted = 22,
    /// Fast path fallback to the kernel: a multi-buffer frame (jumbo MTU).
    FastPathMultiBuffer = 23,
    /// A new flow to a backend on another node found no free SNAT port
    /// (`--snat-port-range`) and was dropped.
    SnatExhausted = 24,
    /// A DSR option (the frontend) was added to a request sent to a backend
    /// on another node.
    DsrOptionAdded = 25,
    /// A DSR request could not carry its option (no room under the MTU, a
    /// GSO packet, extension headers in the way) and went without it.
    DsrOptionSkipped = 26,
    /// A request with a DSR option reached a backend on this node: its reply
    /// entry was recorded, so the replies go straight to the client.
    DsrLearned = 27,
    /// A request carried a DSR option for a frontend this node does not
    /// publish; nothing was recorded.
    DsrUnknownFrontend = 28,
    /// The fast path looked up a request's next hop (`bpf_fib_lookup`):
    /// none was cached for its backend (see `HopSlot`), or it was stale, or
    /// caching is off.
    FastPathHopLookedUp = 29,
}

/// Slots of the `EVENTS` map: more than there are events, so that adding one
/// does not change the map's size (and a pinned map stays adoptable).
pub const EVENT_SLOTS: u32 = 64;

impl DatapathEvent {
    pub const COUNT: u32 = 30;
    pub const ALL: [DatapathEvent; Self::COUNT as usize] = [
        Self::FlowCreated,
        Self::FlowReselected,
        Self::NoBackend,
        Self::Malformed,
        Self::Fragment,
        Self::ConntrackInsertFailed,
        Self::ReplyTranslated,
        Self::Rejected,
        Self::DroppedNoBackend,
        Self::DroppedSourceRange,
        Self::AffinityHit,
        Self::VariantTranslated,
        Self::FastPathRedirected,
        Self::FastPathNoNeighbour,
        Self::FastPathFragNeeded,
        Self::FastPathOther,
        Self::IcmpTranslated,
        Self::ConntrackEntryRestored,
        Self::HeadersNotLinear,
        Self::RewriteFailed,
        Self::GsoRewriteFailed,
        Self::ChecksumDeferred,
        Self::ChecksumCompleted,
        Self::FastPathMultiBuffer,
        Self::SnatExhausted,
        Self::DsrOptionAdded,
        Self::DsrOptionSkipped,
        Self::DsrLearned,
        Self::DsrUnknownFrontend,
        Self::FastPathHopLookedUp,
    ];

    /// The `event` label of the metric.
    pub const fn name(self) -> &'static str {
        match self {
            Self::FlowCreated => "flow_created",
            Self::FlowReselected => "flow_reselected",
            Self::NoBackend => "no_backend",
            Self::Malformed => "malformed",
            Self::Fragment => "fragment",
            Self::ConntrackInsertFailed => "conntrack_insert_failed",
            Self::ReplyTranslated => "reply_translated",
            Self::Rejected => "rejected",
            Self::DroppedNoBackend => "dropped_no_backend",
            Self::DroppedSourceRange => "dropped_source_range",
            Self::AffinityHit => "affinity_hit",
            Self::VariantTranslated => "variant_translated",
            Self::FastPathRedirected => "fast_path_redirected",
            Self::FastPathNoNeighbour => "fast_path_fallback_no_neighbour",
            Self::FastPathFragNeeded => "fast_path_fallback_frag_needed",
            Self::FastPathOther => "fast_path_fallback_other",
            Self::IcmpTranslated => "icmp_translated",
            Self::ConntrackEntryRestored => "conntrack_entry_restored",
            Self::HeadersNotLinear => "headers_not_linear",
            Self::RewriteFailed => "rewrite_failed",
            Self::GsoRewriteFailed => "gso_rewrite_failed",
            Self::ChecksumDeferred => "checksum_deferred_to_tc",
            Self::ChecksumCompleted => "checksum_completed",
            Self::FastPathMultiBuffer => "fast_path_fallback_multi_buffer",
            Self::SnatExhausted => "snat_exhausted",
            Self::DsrOptionAdded => "dsr_option_added",
            Self::DsrOptionSkipped => "dsr_option_skipped",
            Self::DsrLearned => "dsr_learned",
            Self::DsrUnknownFrontend => "dsr_unknown_frontend",
            Self::FastPathHopLookedUp => "fast_path_hop_looked_up",
        }
    }
}

// The dataplane and userspace must agree on these sizes; implicit padding would
// also make `aya::Pod` unsound. A change here is a map layout change.
const _: () = {
    assert!(size_of::<RawAddr>() == 16);
    assert!(size_of::<FrontendKey>() == 20);
    assert!(size_of::<FrontendValue>() == 32);
    assert!(size_of::<Backend>() == 28);
    assert!(size_of::<CtKey>() == 40);
    assert!(size_of::<CtValue>() == 48);
    assert!(size_of::<HopSlot>() == 48);
    assert!(size_of::<TrafficCounters>() == 32);
    assert!(size_of::<NodeAddrKey>() == 20);
    assert!(size_of::<DatapathConfig>() == 56);
    assert!(size_of::<BackendNat>() == 20);
    assert!(size_of::<SnatValue>() == 36);
    assert!(size_of::<AffinityKey>() == 24);
    assert!(size_of::<AffinityValue>() == 16);
    assert!(size_of::<SourceRangeKey>() == 24);
    assert!(size_of::<SockRevKey>() == 32);
    assert!(size_of::<SockRevValue>() == 28);
    assert!(DatapathEvent::COUNT <= EVENT_SLOTS);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octets_are_the_wire_bytes() {
        let wire = [
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
        ];
        let word = |i: usize| u32::from_ne_bytes([wire[i], wire[i + 1], wire[i + 2], wire[i + 3]]);
        let v6 = RawAddr([word(0), word(4), word(8), word(12)]);
        assert_eq!(v6.octets(), wire);
        let v4 = RawAddr([u32::from_ne_bytes([198, 18, 0, 1]), 0, 0, 0]);
        assert_eq!(v4.octets()[..4], [198, 18, 0, 1]);
        assert_eq!(v4.octets()[4..], [0; 12]);
    }
}
